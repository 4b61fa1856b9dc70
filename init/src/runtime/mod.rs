//! `hafen-init runtime`: an OCI runtime command line (create, start, state,
//! kill, delete, run) over the same container code system mode uses, so
//! standard tools can drive it and check it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use hafen_proto::spec::{Hooks, Spec};
use serde::{Deserialize, Serialize};

mod exec;

use crate::container::{self, cgroup, hooks, SpawnOptions, StdioMode};
use crate::sys::{self, ExitStatus, SigSet};

/// Default directory holding one state directory per container.
const DEFAULT_ROOT: &str = "/run/hafen-runtime";

const USAGE: &str =
    "usage: hafen-init runtime [--root DIR] [--log FILE] [--log-format text|json] COMMAND | --version
commands:
  create [--bundle DIR] [--pid-file FILE] [--console-socket SOCK] [--preserve-fds N] ID
                         set up the container; it waits before exec
  start ID               let a created container exec its process
  state ID               print the OCI state JSON
  kill ID [SIGNAL]       send SIGNAL (name or number; default TERM)
  delete [--force] ID    remove a stopped container (--force kills it first)
  run [--bundle DIR] [--pid-file FILE] [--console-socket SOCK] [--preserve-fds N]
      [--detach] ID      create, start, wait; exit with its status (--detach: return
                         once it has started)
  exec [--process FILE] [--detach] [--pid-file FILE] [--console-socket SOCK] [--tty]
       [--cwd DIR] [--env K=V]... [--user UID[:GID]] [--additional-gids GID]...
       [--cap CAP]... [--no-new-privs] [--preserve-fds N] ID [CMD ARGS...]
                         run another process in the container; without --detach,
                         wait and exit with its status (255: exec itself failed)
a process with a terminal (process.terminal, exec --tty) needs --console-socket: its
pty master is sent there; only descriptors 0-2 and --preserve-fds N more (from 3 up),
plus systemd's LISTEN_FDS on create/run, reach the container's process";

/// A runtime command failed; the message is for the user.
#[derive(Debug)]
pub struct RuntimeError(String);

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuntimeError {}

fn err(msg: impl Into<String>) -> RuntimeError {
    RuntimeError(msg.into())
}

/// What we keep about a container between commands. The first fields are
/// the OCI state; the rest is ours.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    oci_version: String,
    id: String,
    bundle: String,
    annotations: BTreeMap<String, String>,
    pid: i32,
    /// Start time of `pid` (field 22 of /proc/PID/stat), to detect pid reuse.
    start_time: u64,
    started: bool,
    gate_fd: i32,
    err_fd: i32,
    /// Its cgroup directory, when one was made.
    cgroup: Option<PathBuf>,
    /// Its root, when it shares our mount namespace: detached on delete.
    #[serde(default)]
    shared_root: Option<PathBuf>,
    /// The spec's hooks: `start` runs poststart, `delete` poststop.
    #[serde(default)]
    hooks: Option<Hooks>,
    created: String,
}

impl Saved {
    /// Runs the hooks of `kind` (poststart, poststop); their failure is
    /// only a warning, as the spec says.
    fn run_hooks(&self, globals: &Globals, kind: hooks::Kind, pid: i32) {
        let list = kind.of_hooks(self.hooks.as_ref());
        if list.is_empty() {
            return;
        }
        let container = hooks::Container {
            oci_version: &self.oci_version,
            id: &self.id,
            bundle: &self.bundle,
            annotations: &self.annotations,
        };
        if let Err(e) = hooks::run(kind, list, &container.state(pid, kind)) {
            warn(globals, &format!("container {}: {e}", self.id));
        }
    }
}

/// The OCI state, as `state` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct State<'a> {
    oci_version: &'a str,
    id: &'a str,
    status: Status,
    pid: i32,
    bundle: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Created,
    Running,
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

struct Globals {
    root: PathBuf,
    log: Option<PathBuf>,
    json_log: bool,
}

/// Runs `hafen-init runtime ARGS...`; returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut globals = Globals {
        root: PathBuf::from(DEFAULT_ROOT),
        log: None,
        json_log: false,
    };
    let mut rest = args.as_slice();
    // Global options come before the command (containerd and podman pass some we accept and ignore).
    while let Some((first, tail)) = rest.split_first() {
        let take = |tail: &[String]| tail.first().cloned();
        match first.as_str() {
            "--root" => {
                globals.root = take(tail).map(PathBuf::from).unwrap_or(globals.root);
                rest = tail.get(1..).unwrap_or(&[]);
            }
            "--log" => {
                globals.log = take(tail).map(PathBuf::from);
                rest = tail.get(1..).unwrap_or(&[]);
            }
            "--log-format" => {
                globals.json_log = take(tail).as_deref() == Some("json");
                rest = tail.get(1..).unwrap_or(&[]);
            }
            s if s.starts_with("--root=") => {
                globals.root = PathBuf::from(&s[7..]);
                rest = tail;
            }
            s if s.starts_with("--log=") => {
                globals.log = Some(PathBuf::from(&s[6..]));
                rest = tail;
            }
            s if s.starts_with("--log-format=") => {
                globals.json_log = &s[13..] == "json";
                rest = tail;
            }
            "--debug" | "--systemd-cgroup=false" => rest = tail,
            "--systemd-cgroup" | "--systemd-cgroup=true" => {
                report(
                    &globals,
                    "--systemd-cgroup: hafen-init manages cgroups itself (cgroupfs) and does not \
                     talk to systemd; leave the flag out (podman: --cgroup-manager=cgroupfs)",
                );
                return 1;
            }
            "-v" | "--version" | "version" => {
                print_version();
                return 0;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return 0;
            }
            _ => break,
        }
    }
    let Some((command, rest)) = rest.split_first() else {
        eprintln!("{USAGE}");
        return 2;
    };
    let result = match command.as_str() {
        "create" => create(&globals, rest),
        "start" => start(&globals, rest),
        "state" => state(&globals, rest),
        "kill" => kill(&globals, rest),
        "delete" => delete(&globals, rest),
        "run" => run(&globals, rest),
        "exec" => exec::main(&globals, rest),
        other => Err(err(format!("unknown command {other:?}\n{USAGE}"))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report(&globals, &format!("{command}: {e}"));
            if command == "exec" {
                exec::FAILED
            } else {
                1
            }
        }
    }
}

/// The version lines podman and containerd parse (`NAME version X`), then
/// the runtime spec version we follow.
fn print_version() {
    println!("hafen-init version {}", env!("CARGO_PKG_VERSION"));
    println!("spec: {}", hafen_proto::spec::OCI_VERSION);
}

fn report(globals: &Globals, message: &str) {
    log_line(globals, "error", message);
}

fn warn(globals: &Globals, message: &str) {
    log_line(globals, "warning", message);
}

fn log_line(globals: &Globals, level: &str, message: &str) {
    eprintln!("hafen-init runtime: {level}: {message}");
    if let Some(path) = &globals.log {
        let line = if globals.json_log {
            serde_json::json!({"level": level, "msg": message}).to_string()
        } else {
            format!("{level}: {message}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Options after the command: flags with values, switches, then the id
/// (and, for kill, the signal).
struct CommandArgs {
    bundle: PathBuf,
    pid_file: Option<PathBuf>,
    console_socket: Option<PathBuf>,
    force: bool,
    /// `run`: return once the container has started.
    detach: bool,
    preserve_fds: u32,
    positional: Vec<String>,
}

fn parse_command_args(args: &[String]) -> Result<CommandArgs, RuntimeError> {
    let mut out = CommandArgs {
        bundle: PathBuf::from("."),
        pid_file: None,
        console_socket: None,
        force: false,
        detach: false,
        preserve_fds: 0,
        positional: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| err(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--bundle" | "-b" => out.bundle = PathBuf::from(value("--bundle")?),
            "--pid-file" => out.pid_file = Some(PathBuf::from(value("--pid-file")?)),
            "--force" | "-f" => out.force = true,
            "--console-socket" => {
                out.console_socket = Some(PathBuf::from(value("--console-socket")?))
            }
            "--detach" | "-d" => out.detach = true,
            "--preserve-fds" => {
                let v = value("--preserve-fds")?;
                out.preserve_fds = v
                    .parse()
                    .map_err(|_| err(format!("--preserve-fds {v:?} is not a number")))?;
            }
            "--no-pivot" | "--no-new-keyring" | "--all" | "-a" => {}
            s if s.starts_with("--bundle=") => out.bundle = PathBuf::from(&s[9..]),
            s if s.starts_with("--pid-file=") => out.pid_file = Some(PathBuf::from(&s[11..])),
            s if s.starts_with("--console-socket=") => {
                out.console_socket = Some(PathBuf::from(&s[17..]))
            }
            s if s.starts_with("--preserve-fds=") => {
                out.preserve_fds = s[15..]
                    .parse()
                    .map_err(|_| err(format!("{s:?}: not a number")))?;
            }
            s if s.starts_with('-')
                && s.len() > 1
                && !s[1..].chars().all(|c| c.is_ascii_digit())
                && out.positional.is_empty() =>
            {
                return Err(err(format!("unknown option {s:?}")))
            }
            _ => out.positional.push(arg.clone()),
        }
    }
    Ok(out)
}

fn container_id(positional: &[String]) -> Result<&str, RuntimeError> {
    let id = positional
        .first()
        .ok_or_else(|| err("missing container ID"))?;
    let valid = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-+".contains(c));
    if !valid {
        return Err(err(format!(
            "invalid container ID {id:?}: use letters, digits, '_', '.', '-', '+'"
        )));
    }
    Ok(id)
}

fn state_dir(globals: &Globals, id: &str) -> PathBuf {
    globals.root.join(id)
}

fn load(globals: &Globals, id: &str) -> Result<Saved, RuntimeError> {
    let path = state_dir(globals, id).join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => err(format!("container {id:?} does not exist")),
        _ => err(format!("cannot read {}: {e}", path.display())),
    })?;
    serde_json::from_str(&text).map_err(|e| err(format!("{} is corrupt: {e}", path.display())))
}

fn save(globals: &Globals, saved: &Saved) -> Result<(), RuntimeError> {
    let dir = state_dir(globals, &saved.id);
    let tmp = dir.join("state.json.tmp");
    let text =
        serde_json::to_vec_pretty(saved).map_err(|e| err(format!("cannot encode state: {e}")))?;
    std::fs::write(&tmp, text).map_err(|e| err(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join("state.json"))
        .map_err(|e| err(format!("cannot save state in {}: {e}", dir.display())))
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let after = stat.rsplit_once(')')?.1;
    let state = after.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    after.split_whitespace().nth(19)?.parse().ok()
}

fn status(saved: &Saved) -> Status {
    match start_time(saved.pid) {
        Some(t) if t == saved.start_time => {
            if saved.started {
                Status::Running
            } else {
                Status::Created
            }
        }
        _ => Status::Stopped,
    }
}

fn read_spec(bundle: &Path) -> Result<Spec, RuntimeError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        err(format!(
            "{} is not a valid OCI runtime config: {e}",
            path.display()
        ))
    })
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    hafen_proto::time::rfc3339(secs)
}

/// Creates the container; with `gate` it waits before exec.
fn create_container(
    globals: &Globals,
    args: &CommandArgs,
    gate: bool,
) -> Result<Saved, RuntimeError> {
    let id = container_id(&args.positional)?;
    let bundle = std::fs::canonicalize(&args.bundle)
        .map_err(|e| err(format!("bundle {}: {e}", args.bundle.display())))?;
    let mut spec = read_spec(&bundle)?;
    let listen_fds = socket_activation(&mut spec);
    let dir = state_dir(globals, id);
    std::fs::create_dir_all(&globals.root)
        .map_err(|e| err(format!("cannot create {}: {e}", globals.root.display())))?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(err(format!("container {id:?} already exists")))
        }
        Err(e) => return Err(err(format!("cannot create {}: {e}", dir.display()))),
    }
    let opts = SpawnOptions {
        id: id.to_owned(),
        stdio: StdioMode::Inherit,
        gate,
        cgroup_root: std::env::var_os("HAFEN_CGROUP_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(cgroup::CGROUP_ROOT)),
        scratch_root: globals.root.join(".scratch").to_string_lossy().into_owned(),
        hooks: true,
        console_socket: args.console_socket.clone(),
        preserve_fds: args.preserve_fds.saturating_add(listen_fds),
        controllers: cgroup::Controllers::All,
        compiled_seccomp: None,
    };
    let spawned = match container::spawn(&spec, &bundle, &opts) {
        Ok(s) => s,
        Err(e) => {
            // A failed start leaves no process, cgroup or state behind: the
            // child has exited or is about to (a failed hook had it killed).
            while let Ok(Some(_)) = sys::wait_any() {}
            if let Some(root) = cgroup::find_v2(&opts.cgroup_root) {
                let linux = spec.linux.as_ref();
                let path = linux
                    .and_then(|l| l.cgroups_path.clone())
                    .unwrap_or_else(|| format!("hafen/{id}"));
                cgroup::remove(&root.join(path.trim_start_matches('/')));
            }
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_dir(globals.root.join(".scratch").join(id));
            return Err(err(format!("container {id}: {e}")));
        }
    };
    let (gate_fd, err_fd) = spawned.gate_fds.unwrap_or((-1, -1));
    let saved = Saved {
        oci_version: spec.oci_version.clone(),
        id: id.to_owned(),
        bundle: bundle.to_string_lossy().into_owned(),
        annotations: spec.annotations.clone(),
        pid: spawned.pid,
        start_time: start_time(spawned.pid).unwrap_or(0),
        started: !gate,
        gate_fd,
        err_fd,
        cgroup: spawned.cgroup,
        shared_root: spawned.shared_root,
        hooks: spec.hooks.clone(),
        created: now_rfc3339(),
    };
    save(globals, &saved)?;
    if let Some(pid_file) = &args.pid_file {
        write_pid_file(pid_file, saved.pid)?;
    }
    Ok(saved)
}

/// Sockets systemd passed us (`LISTEN_FDS`, for our pid) go on to the
/// container's process, which finds them as its own, as with runc; returns
/// how many.
fn socket_activation(spec: &mut Spec) -> u32 {
    let ours = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    let count = match std::env::var("LISTEN_FDS").ok().map(|n| n.parse::<u32>()) {
        Some(Ok(n)) if ours && n > 0 => n,
        _ => return 0,
    };
    if let Some(process) = spec.process.as_mut() {
        process
            .env
            .retain(|e| !e.starts_with("LISTEN_FDS=") && !e.starts_with("LISTEN_PID="));
        process.env.push(format!("LISTEN_FDS={count}"));
        process.env.push("LISTEN_PID=1".to_owned());
    }
    count
}

/// Writes `pid` to `path` whole or not at all (callers poll for the file).
fn write_pid_file(path: &Path, pid: libc::pid_t) -> Result<(), RuntimeError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, pid.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(format!("cannot write the pid file {}: {e}", path.display()))
        })
}

fn create(globals: &Globals, args: &[String]) -> Result<i32, RuntimeError> {
    let args = parse_command_args(args)?;
    create_container(globals, &args, true)?;
    Ok(0)
}

fn start(globals: &Globals, args: &[String]) -> Result<i32, RuntimeError> {
    let args = parse_command_args(args)?;
    let id = container_id(&args.positional)?;
    let mut saved = load(globals, id)?;
    match status(&saved) {
        Status::Created => {}
        other => return Err(err(format!("container {id:?} is {other}, not created"))),
    }
    container::start_gated(saved.pid, saved.gate_fd, saved.err_fd)
        .map_err(|e| err(format!("container {id}: {e}")))?;
    saved.started = true;
    save(globals, &saved)?;
    saved.run_hooks(globals, hooks::Kind::Poststart, saved.pid);
    Ok(0)
}

fn state(globals: &Globals, args: &[String]) -> Result<i32, RuntimeError> {
    let args = parse_command_args(args)?;
    let id = container_id(&args.positional)?;
    let saved = load(globals, id)?;
    let status = status(&saved);
    let state = State {
        oci_version: &saved.oci_version,
        id: &saved.id,
        status,
        pid: if status == Status::Stopped {
            0
        } else {
            saved.pid
        },
        bundle: &saved.bundle,
        annotations: &saved.annotations,
    };
    let text = serde_json::to_string_pretty(&state)
        .map_err(|e| err(format!("cannot encode state: {e}")))?;
    println!("{text}");
    Ok(0)
}

fn kill(globals: &Globals, args: &[String]) -> Result<i32, RuntimeError> {
    let args = parse_command_args(args)?;
    let id = container_id(&args.positional)?;
    let signal = match args.positional.get(1) {
        None => libc::SIGTERM,
        Some(s) => {
            hafen_proto::signal::parse(s).ok_or_else(|| err(format!("unknown signal {s:?}")))?
        }
    };
    let saved = load(globals, id)?;
    match status(&saved) {
        Status::Stopped => Err(err(format!("container {id:?} is not running"))),
        _ => {
            sys::kill(saved.pid, signal).map_err(|e| {
                err(format!(
                    "kill {} {}: {e}",
                    saved.pid,
                    hafen_proto::signal::name(signal)
                ))
            })?;
            Ok(0)
        }
    }
}

fn delete(globals: &Globals, args: &[String]) -> Result<i32, RuntimeError> {
    let args = parse_command_args(args)?;
    let id = container_id(&args.positional)?;
    let saved = match load(globals, id) {
        // Nothing to delete is what --force asks for (runc and crun exit 0).
        Err(_) if args.force && !state_dir(globals, id).exists() => return Ok(0),
        other => other?,
    };
    match status(&saved) {
        // The spec: deleting a container that is not stopped is an error
        // and leaves it alone (runc and crun delete a created one anyway).
        status @ (Status::Running | Status::Created) if !args.force => {
            return Err(err(format!(
                "container {id:?} is {status}: stop it first (kill) or use delete --force"
            )))
        }
        Status::Running | Status::Created => {
            let _ = sys::kill(saved.pid, libc::SIGKILL);
            // Wait (bounded) until it is gone, so its cgroup can be removed.
            for _ in 0..500 {
                if start_time(saved.pid) != Some(saved.start_time) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        Status::Stopped => {}
    }
    cleanup(globals, &saved);
    saved.run_hooks(globals, hooks::Kind::Poststop, 0);
    Ok(0)
}

fn cleanup(globals: &Globals, saved: &Saved) {
    if let Some(dir) = &saved.cgroup {
        cgroup::remove(dir);
    }
    if let Some(root) = &saved.shared_root {
        if let Err(e) = container::release_shared_root(root) {
            report(
                globals,
                &format!("delete {}: cannot detach {}: {e}", saved.id, root.display()),
            );
        }
    }
    let _ = std::fs::remove_dir_all(state_dir(globals, &saved.id));
    let _ = std::fs::remove_dir(globals.root.join(".scratch").join(&saved.id));
}

/// Signals `run` forwards to the container instead of acting on.
const FORWARDED: &[i32] = &[
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];

/// Blocks the signals a foreground command forwards (and SIGCHLD) and
/// returns a signalfd for them: called before the process exists, so
/// neither its exit nor a signal meant for it is lost.
fn block_forwarded() -> Result<OwnedFd, RuntimeError> {
    let mut handled = FORWARDED.to_vec();
    handled.push(libc::SIGCHLD);
    let set = SigSet::of(&handled);
    set.block()
        .map_err(|e| err(format!("block signals: {e}")))?;
    set.signalfd().map_err(|e| err(format!("signalfd: {e}")))
}

/// Forwards signals to `pid` until it exits; reaps every child meanwhile.
fn wait_forwarding(signals: &OwnedFd, pid: libc::pid_t) -> Result<ExitStatus, RuntimeError> {
    loop {
        match sys::read_signal(signals) {
            Ok(Some(libc::SIGCHLD)) | Ok(None) => {}
            Ok(Some(sig)) => {
                let _ = sys::kill(pid, sig);
            }
            Err(e) => return Err(err(format!("read signals: {e}"))),
        }
        let mut exited = None;
        while let Ok(Some((reaped, status))) = sys::reap_one() {
            if reaped == pid {
                exited = Some(status);
            }
        }
        if let Some(status) = exited {
            return Ok(status);
        }
        sys::poll_readable(signals.as_raw_fd(), -1)
            .map_err(|e| err(format!("wait for signals: {e}")))?;
    }
}

fn run(globals: &Globals, args: &[String]) -> Result<i32, RuntimeError> {
    let args = parse_command_args(args)?;
    let signals = block_forwarded()?;
    let saved = create_container(globals, &args, false)?;
    saved.run_hooks(globals, hooks::Kind::Poststart, saved.pid);
    if args.detach {
        // Like create and start: `delete` cleans up once it has stopped.
        return Ok(0);
    }
    let status = wait_forwarding(&signals, saved.pid)?;
    cleanup(globals, &saved);
    saved.run_hooks(globals, hooks::Kind::Poststop, 0);
    Ok(status.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_args_take_bundle_pid_file_force_and_the_id() {
        let args: Vec<String> = ["--bundle", "/b", "--pid-file=/p", "-f", "c1", "KILL"]
            .map(String::from)
            .to_vec();
        let parsed = parse_command_args(&args).expect("parses");
        assert_eq!(parsed.bundle, PathBuf::from("/b"));
        assert_eq!(parsed.pid_file, Some(PathBuf::from("/p")));
        assert!(parsed.force);
        assert_eq!(parsed.positional, ["c1", "KILL"]);
        assert_eq!(container_id(&parsed.positional).expect("valid"), "c1");
    }

    #[test]
    fn ids_that_could_escape_the_state_root_are_refused() {
        for bad in ["..", "a/b", "", "x y"] {
            let parsed = parse_command_args(&[bad.to_owned()]).expect("parses");
            assert!(container_id(&parsed.positional).is_err(), "{bad:?}");
        }
        assert!(parse_command_args(&["--bogus".into()]).is_err());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
