//! `hafen exec`: a process started in a running container through the
//! runtime's own join ([`crate::container::exec`]), with its stdio carried
//! over the control channel. A terminal is made inside the container (from
//! its devpts) and its master handed to PID 1 over a socketpair.
//!
//! Output is read only while the channel has room (otherwise the session's
//! descriptors leave epoll until the host has read), input is buffered up
//! to a bound, and the end is reported once the process has exited and its
//! output is drained (or a short grace has passed, when something it
//! started keeps the output open).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use hafen_proto::control::{self as proto, Body, ErrorCode, ExecRequest, Stream};
use hafen_proto::spec::{ConsoleSize, Process, User};

use super::requests::{error, Refusal};
use super::volume_copy::CopyJob;
use super::{Supervisor, TOKEN_EXEC};
use crate::container::exec::{self, ConsoleTarget, ExecOptions, Target};
use crate::container::{console, StdioMode};
use crate::sys::{self, ExitStatus, EPOLL_INPUT, EPOLL_OUTPUT};

/// The most exec'd processes (and volume copiers) at once.
pub(super) const MAX_EXECS: usize = 32;
/// Input buffered for exec'd processes beyond which no more requests are
/// read until they take it (back-pressure to the host).
const MAX_INPUT: usize = 1024 * 1024;
/// How long after the process exited its output may stay open.
const OUTPUT_GRACE_NS: u64 = 250_000_000;
/// Output bytes per frame.
const OUTPUT_CHUNK: usize = 32 * 1024;

/// Token kinds within a session's four tokens.
const KIND_STDOUT: u64 = 0;
const KIND_STDERR: u64 = 1;
const KIND_STDIN: u64 = 2;

/// One exec'd process.
#[derive(Debug)]
pub(super) struct ExecSession {
    /// The request id; `None` once the host let go of it.
    id: Option<u32>,
    slot: u64,
    pid: libc::pid_t,
    /// The container it runs in; `None` for a volume copier.
    container: Option<usize>,
    /// What a volume copier must undo when it ends.
    copy: Option<CopyJob>,
    /// stdout (or the terminal's master) and stderr.
    outputs: [Option<OwnedFd>; 2],
    /// Its stdin pipe; with a terminal, input goes to the master.
    stdin: Option<OwnedFd>,
    tty: bool,
    input: Vec<u8>,
    input_eof: bool,
    /// Waiting for writability.
    input_watched: bool,
    /// Outputs are out of epoll until the channel has room.
    paused: bool,
    /// How it ended, and when (monotonic ns).
    exit: Option<(ExitStatus, u64)>,
}

impl ExecSession {
    /// A session for request `id`, with no descriptors yet.
    pub(super) fn new(
        id: u32,
        slot: u64,
        pid: libc::pid_t,
        container: Option<usize>,
        copy: Option<CopyJob>,
    ) -> ExecSession {
        ExecSession {
            id: Some(id),
            slot,
            pid,
            container,
            copy,
            outputs: [None, None],
            stdin: None,
            tty: false,
            input: Vec::new(),
            input_eof: false,
            input_watched: false,
            paused: false,
            exit: None,
        }
    }

    /// Its process's pipes: stdout, stderr and (when it reads) stdin.
    pub(super) fn set_pipes(&mut self, stdout: OwnedFd, stderr: OwnedFd, stdin: Option<OwnedFd>) {
        self.outputs = [Some(stdout), Some(stderr)];
        self.stdin = stdin;
    }

    /// Its process, until it has been reaped.
    pub(super) fn running_pid(&self) -> Option<libc::pid_t> {
        self.exit.is_none().then_some(self.pid)
    }

    /// The volume copy it is, if it is one.
    pub(super) fn copy(&self) -> Option<&CopyJob> {
        self.copy.as_ref()
    }

    fn token(&self, kind: u64) -> u64 {
        TOKEN_EXEC + self.slot * 4 + kind
    }

    /// The descriptor input is written to.
    fn input_fd(&self) -> Option<&OwnedFd> {
        if self.tty {
            self.outputs[0].as_ref()
        } else {
            self.stdin.as_ref()
        }
    }
}

/// Resolves `-u USER[:GROUP]` against the container's /etc/passwd and
/// /etc/group (read through its root, `/proc/PID/root`).
fn resolve_user(spec: &str, pid: libc::pid_t) -> Result<User, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let root = format!("/proc/{pid}/root");
    let passwd = std::fs::read_to_string(format!("{root}/etc/passwd")).unwrap_or_default();
    // name:password:uid:gid:...
    let entry = |matches: &dyn Fn(&[&str]) -> bool| {
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 4 && matches(f))
    };
    let (uid, passwd_gid) = match user.parse::<u32>() {
        Ok(uid) => (
            uid,
            entry(&|f| f[2] == user).and_then(|f| f[3].parse::<u32>().ok()),
        ),
        Err(_) => {
            let f = entry(&|f| f[0] == user)
                .ok_or_else(|| format!("no user {user:?} in the container's /etc/passwd"))?;
            let uid = f[2]
                .parse()
                .map_err(|_| format!("user {user:?} has a malformed uid in /etc/passwd"))?;
            (uid, f[3].parse().ok())
        }
    };
    let gid = match group {
        None => passwd_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups =
                    std::fs::read_to_string(format!("{root}/etc/group")).unwrap_or_default();
                groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| format!("no group {g:?} in the container's /etc/group"))?
            }
        },
    };
    Ok(User {
        uid,
        gid,
        additional_gids: Vec::new(),
    })
}

/// `env` with each of `overrides`' keys replaced or added.
fn merge_env(env: &[String], overrides: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e.len(), |(k, _)| k.len());
    let mut out: Vec<String> = env
        .iter()
        .filter(|e| !overrides.iter().any(|o| o[..key(o)] == e[..key(e)]))
        .cloned()
        .collect();
    out.extend(overrides.iter().cloned());
    out
}

impl Supervisor {
    /// Starts `request`'s process; answers ExecStarted itself.
    pub(super) fn exec_start(&mut self, id: u32, request: ExecRequest) -> Result<(), Refusal> {
        let i = self.find(&request.container)?;
        let c = &self.containers[i];
        let pid = c.pid().ok_or_else(|| {
            error(
                ErrorCode::Conflict,
                format!("container {} is not running", request.container),
            )
        })?;
        if self.execs.len() >= MAX_EXECS {
            return Err(error(
                ErrorCode::Busy,
                format!("{MAX_EXECS} exec'd processes are running already"),
            ));
        }
        if request.args.is_empty() {
            return Err(error(ErrorCode::Failed, "no command to run"));
        }
        if let Some(bad) = request
            .env
            .iter()
            .find(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(error(
                ErrorCode::Failed,
                format!("environment entry {bad:?} is not KEY=VALUE"),
            ));
        }
        let base = c.bundle.spec.process.clone().unwrap_or_default();
        let user = match &request.user {
            Some(spec) => resolve_user(spec, pid).map_err(|m| error(ErrorCode::Failed, m))?,
            None => base.user.clone(),
        };
        let process = Process {
            terminal: request.tty,
            console_size: request.size.map(|(rows, cols)| ConsoleSize {
                height: u32::from(rows),
                width: u32::from(cols),
            }),
            user,
            args: request.args.clone(),
            env: merge_env(&base.env, &request.env),
            cwd: request.cwd.clone().unwrap_or(base.cwd.clone()),
            ..base
        };
        let seccomp = c.bundle.seccomp();
        let (console, ours) = if request.tty {
            let (theirs, ours) = console::pair()
                .map_err(|e| error(ErrorCode::Failed, format!("cannot make a terminal: {e}")))?;
            (Some(ConsoleTarget::Socket(theirs)), Some(ours))
        } else {
            (None, None)
        };
        let opts = ExecOptions {
            stdio: if request.tty {
                StdioMode::Inherit
            } else {
                StdioMode::Pipe {
                    stdin: request.stdin,
                }
            },
            console,
            preserve_fds: 0,
        };
        let target = Target {
            pid,
            cgroup: c.cgroup.as_deref(),
        };
        let spawned = exec::exec(target, &process, seccomp, &opts)
            .map_err(|e| error(ErrorCode::Failed, e.to_string()))?;
        drop(opts);
        let slot = self.exec_slot();
        let mut session = ExecSession::new(id, slot, spawned.pid, Some(i), None);
        if let Some(ours) = ours {
            match console::receive(ours.as_fd()) {
                Ok(master) => {
                    if let Err(e) = sys::set_nonblocking(master.as_raw_fd()) {
                        warn!("exec terminal: {e}");
                    }
                    session.tty = true;
                    session.outputs[0] = Some(master);
                }
                Err(e) => {
                    // The process runs without our end of its terminal; end it.
                    let _ = sys::kill(spawned.pid, libc::SIGKILL);
                    return Err(error(
                        ErrorCode::Failed,
                        format!("the terminal did not arrive: {e}"),
                    ));
                }
            }
        }
        if let Some(io) = spawned.io {
            session.outputs = [Some(io.stdout), Some(io.stderr)];
            session.stdin = io.stdin;
        }
        let pid = session.pid;
        self.add_exec_session(session);
        self.emit(
            i,
            proto::EventKind::ExecStart {
                pid: pid as u32,
                command: request.args,
            },
        );
        Ok(())
    }

    /// Watches `session`'s outputs, keeps it, and answers its request.
    pub(super) fn add_exec_session(&mut self, session: ExecSession) {
        for kind in [KIND_STDOUT, KIND_STDERR] {
            if let Some(fd) = &session.outputs[kind as usize] {
                if let Err(e) = self.epoll.add(fd.as_raw_fd(), session.token(kind)) {
                    warn!("cannot watch an exec's output: {e}");
                }
            }
        }
        let (id, pid) = (session.id, session.pid);
        self.execs.push(session);
        if let Some(id) = id {
            self.reply(id, Body::ExecStarted { pid: pid as u32 });
        }
    }

    /// A fresh exec slot number.
    pub(super) fn exec_slot(&mut self) -> u64 {
        self.next_exec_slot += 1;
        self.next_exec_slot - 1
    }

    fn exec_by_id(&mut self, id: u32) -> Option<usize> {
        self.execs.iter().position(|e| e.id == Some(id))
    }

    /// Input for exec `id` (empty: end of input).
    pub(super) fn exec_input(&mut self, id: u32, data: Vec<u8>) -> Result<(), Refusal> {
        let Some(s) = self.exec_by_id(id) else {
            // The process may have ended while the input was on its way.
            return Ok(());
        };
        let e = &mut self.execs[s];
        if data.is_empty() {
            e.input_eof = true;
        } else {
            e.input.extend_from_slice(&data);
        }
        self.write_input(s);
        self.input_back_pressure();
        Ok(())
    }

    /// Holds the channel's input while too much waits for exec'd processes.
    fn input_back_pressure(&mut self) {
        let waiting: usize = self.execs.iter().map(|e| e.input.len()).sum();
        if let Some(channel) = self.channel.as_mut() {
            channel.hold_input(&self.epoll, waiting > MAX_INPUT);
        }
    }

    /// Writes what input the process takes; closes its stdin at the end.
    fn write_input(&mut self, s: usize) {
        let e = &mut self.execs[s];
        let Some(fd) = e.input_fd().map(AsRawFd::as_raw_fd) else {
            e.input.clear();
            return;
        };
        let mut done = 0;
        while done < e.input.len() {
            match sys::write_some(fd, &e.input[done..]) {
                Ok(Some(n)) if n > 0 => done += n,
                Ok(_) => break,
                Err(_) => {
                    done = e.input.len();
                    break;
                }
            }
        }
        e.input.drain(..done);
        let token = e.token(if e.tty { KIND_STDOUT } else { KIND_STDIN });
        let waiting = !e.input.is_empty();
        if e.input.is_empty() && e.input_eof {
            if e.tty {
                // End of input on a terminal is its EOF character, once.
                let _ = sys::write_some(fd, &[4]);
                e.input_eof = false;
            } else if let Some(stdin) = e.stdin.take() {
                if e.input_watched {
                    let _ = self.epoll.delete(stdin.as_raw_fd());
                    e.input_watched = false;
                }
                return;
            }
        }
        if waiting != e.input_watched {
            let result = if e.tty {
                let events = if waiting {
                    EPOLL_INPUT | EPOLL_OUTPUT
                } else {
                    EPOLL_INPUT
                };
                if e.paused {
                    Ok(())
                } else {
                    self.epoll.modify(fd, token, events)
                }
            } else if waiting {
                self.epoll.add_with(fd, token, EPOLL_OUTPUT)
            } else {
                self.epoll.delete(fd)
            };
            match result {
                Ok(()) => e.input_watched = waiting,
                Err(err) => warn!("exec input: {err}"),
            }
        }
    }

    /// New window size for exec `id`'s terminal.
    pub(super) fn exec_resize(&mut self, id: u32, rows: u16, cols: u16) -> Result<(), Refusal> {
        let Some(s) = self.exec_by_id(id) else {
            return Ok(());
        };
        let e = &self.execs[s];
        if let (true, Some(master)) = (e.tty, &e.outputs[0]) {
            let size = rustix::termios::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            rustix::termios::tcsetwinsize(master, size)
                .map_err(|err| error(ErrorCode::Failed, format!("resize the terminal: {err}")))?;
        }
        Ok(())
    }

    /// The host let go of exec `id`: the process loses its pipes (and
    /// terminal, which hangs it up) but is still reaped and reported.
    pub(super) fn exec_cancel(&mut self, id: u32) {
        if let Some(s) = self.exec_by_id(id) {
            self.detach(s);
        }
    }

    /// Every exec session loses its host.
    pub(super) fn detach_execs(&mut self) {
        for s in 0..self.execs.len() {
            self.detach(s);
        }
    }

    fn detach(&mut self, s: usize) {
        let e = &mut self.execs[s];
        e.id = None;
        for fd in e.outputs.iter_mut().chain([&mut e.stdin]) {
            if let Some(fd) = fd.take() {
                let _ = self.epoll.delete(fd.as_raw_fd());
            }
        }
        e.input.clear();
        self.input_back_pressure();
    }

    /// A token of an exec session is ready.
    pub(super) fn exec_ready(&mut self, n: u64, events: u32) {
        let (slot, kind) = (n / 4, n % 4);
        let Some(s) = self.execs.iter().position(|e| e.slot == slot) else {
            return;
        };
        if kind == KIND_STDIN || (self.execs[s].tty && events & EPOLL_OUTPUT != 0) {
            self.write_input(s);
            self.input_back_pressure();
            if kind == KIND_STDIN {
                return;
            }
        }
        if events & !EPOLL_OUTPUT != 0 {
            self.read_output(s, kind as usize);
        }
        self.exec_finish(s);
    }

    /// Forwards what output `which` has, while the channel has room.
    fn read_output(&mut self, s: usize, which: usize) {
        let Some(channel) = self.channel.as_mut() else {
            return;
        };
        let e = &mut self.execs[s];
        let Some(fd) = e.outputs[which].as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        let stream = if which == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        let mut buf = vec![0u8; OUTPUT_CHUNK];
        loop {
            if !channel.has_room() {
                // Out of epoll until the host reads (see exec_resume).
                for fd in e.outputs.iter().flatten() {
                    let _ = self.epoll.delete(fd.as_raw_fd());
                }
                e.paused = true;
                e.input_watched = e.input_watched && !e.tty;
                return;
            }
            match sys::read(fd, &mut buf) {
                Ok(Some(n)) if n > 0 => {
                    if let Some(id) = e.id {
                        channel.send(
                            id,
                            Body::Output {
                                stream,
                                data: buf[..n].to_vec(),
                            },
                        );
                    }
                }
                Ok(None) => return,
                // End of file, or EIO from a terminal whose last user left.
                Ok(Some(_)) | Err(_) => {
                    if let Some(fd) = e.outputs[which].take() {
                        let _ = self.epoll.delete(fd.as_raw_fd());
                    }
                    return;
                }
            }
        }
    }

    /// Puts paused sessions' outputs back in epoll once the channel has room.
    pub(super) fn exec_resume(&mut self) {
        if !self.channel.as_ref().is_some_and(|c| c.has_room()) {
            return;
        }
        for s in 0..self.execs.len() {
            let e = &mut self.execs[s];
            if !e.paused {
                continue;
            }
            e.paused = false;
            for kind in [KIND_STDOUT, KIND_STDERR] {
                if let Some(fd) = &e.outputs[kind as usize] {
                    let _ = self.epoll.add(fd.as_raw_fd(), e.token(kind));
                }
            }
            if e.tty && !e.input.is_empty() {
                self.write_input(s);
            }
        }
    }

    /// The reaper's hook: true when `pid` was an exec'd process.
    pub(super) fn exec_exited(&mut self, pid: libc::pid_t, status: ExitStatus) -> bool {
        let Some(s) = self.execs.iter().position(|e| e.pid == pid) else {
            return false;
        };
        self.execs[s].exit = Some((status, sys::monotonic_ns()));
        if let Some(container) = self.execs[s].container {
            self.emit(
                container,
                proto::EventKind::ExecDie {
                    pid: pid as u32,
                    status,
                },
            );
        }
        if let Some(copy) = self.execs[s].copy.take() {
            self.copy_ended(copy);
        }
        // Read what is already there before deciding.
        for which in 0..2 {
            if !self.execs[s].paused {
                self.read_output(s, which);
            }
        }
        self.exec_finish(s);
        true
    }

    /// Ends session `s` once its process has exited and its output is
    /// drained, or the grace for a lingering output has passed.
    fn exec_finish(&mut self, s: usize) {
        let e = &self.execs[s];
        let Some((status, at)) = e.exit else {
            return;
        };
        let drained = e.outputs.iter().all(Option::is_none);
        if !drained && sys::monotonic_ns() < at + OUTPUT_GRACE_NS {
            return;
        }
        let id = e.id;
        self.detach(s);
        self.execs.remove(s);
        if let Some(id) = id {
            self.reply(id, Body::ExecExit { status });
        }
    }

    /// Ends sessions whose grace has passed.
    pub(super) fn exec_deadlines(&mut self) {
        let now = sys::monotonic_ns();
        let mut s = 0;
        while s < self.execs.len() {
            let due = self.execs[s]
                .exit
                .is_some_and(|(_, at)| now >= at + OUTPUT_GRACE_NS);
            if due {
                self.exec_finish(s);
                continue;
            }
            s += 1;
        }
    }

    /// The next exec grace deadline.
    pub(super) fn exec_next_deadline(&self) -> Option<u64> {
        self.execs
            .iter()
            .filter_map(|e| e.exit.map(|(_, at)| at + OUTPUT_GRACE_NS))
            .min()
    }
}

/// Spawns a helper child of PID 1 (`cmd`, set up as every helper is) with
/// piped stdout and stderr (and stdin when `cmd` pipes it), for an exec
/// session without a container. Returns its pid and PID 1's ends of its
/// pipes, non-blocking; on failure the child is killed (the reaper
/// collects it).
#[allow(clippy::type_complexity)]
pub(super) fn spawn_helper_session(
    cmd: &mut std::process::Command,
) -> std::io::Result<(libc::pid_t, OwnedFd, OwnedFd, Option<OwnedFd>)> {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    sys::set_up_helper_child(cmd);
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let ours = |fd: Option<OwnedFd>| -> std::io::Result<OwnedFd> {
        let fd = fd.ok_or_else(|| std::io::Error::other("a pipe is missing"))?;
        sys::set_nonblocking(fd.as_raw_fd())?;
        Ok(fd)
    };
    let pipes = (|| {
        let stdout = ours(child.stdout.take().map(OwnedFd::from))?;
        let stderr = ours(child.stderr.take().map(OwnedFd::from))?;
        let stdin = match child.stdin.take() {
            Some(fd) => Some(ours(Some(OwnedFd::from(fd)))?),
            None => None,
        };
        Ok((pid, stdout, stderr, stdin))
    })();
    if pipes.is_err() {
        let _ = sys::kill(pid, libc::SIGKILL);
    }
    pipes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_environment_overrides_replace_by_key() {
        let base = vec!["PATH=/bin".to_owned(), "A=1".to_owned(), "AB=2".to_owned()];
        let merged = merge_env(&base, &["A=9".to_owned(), "NEW=x".to_owned()]);
        assert_eq!(merged, ["PATH=/bin", "AB=2", "A=9", "NEW=x"]);
    }

    #[test]
    fn users_resolve_by_number_and_name_through_the_containers_files() {
        // Our own root stands in for a container's.
        let me = std::process::id() as libc::pid_t;
        let numeric = resolve_user("1234:55", me).expect("numeric");
        assert_eq!((numeric.uid, numeric.gid), (1234, 55));
        let root = resolve_user("root", me).expect("root is in /etc/passwd");
        assert_eq!((root.uid, root.gid), (0, 0));
        let err = resolve_user("no-such-user-here", me).expect_err("unknown");
        assert!(err.contains("/etc/passwd"), "{err}");
        let err = resolve_user("0:no-such-group", me).expect_err("unknown group");
        assert!(err.contains("/etc/group"), "{err}");
    }
}
