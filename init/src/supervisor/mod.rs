//! The supervisor: one event loop that owns every child's wait status, every
//! container's output, the signals sent to PID 1 and the power button, and
//! drives boot (once containers in order, then services) and shutdown.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};

use hafen_proto::annotations::Phase;

use crate::bundle::Bundle;
use crate::container::{self, cgroup, Spawned};
use crate::input;
use crate::sys::{self, Epoll, ExitStatus, SigSet};

/// Signals PID 1 handles; all are blocked and read from a signalfd.
pub const HANDLED_SIGNALS: &[i32] = &[
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGPWR,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGHUP,
];

/// What the machine does once every container has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Power off.
    PowerOff,
    /// Restart.
    Reboot,
}

/// Longest partial line kept before it is printed anyway.
const MAX_LINE: usize = 4096;
/// How long to keep reading output after the last container exited.
const OUTPUT_GRACE_NS: u64 = 2_000_000_000;

const TOKEN_SIGNALS: u64 = 0;
const TOKEN_BUTTON_BASE: u64 = 1 << 32;

#[derive(Debug)]
enum State {
    NotStarted,
    Running {
        pid: libc::pid_t,
        stop_deadline: Option<u64>,
    },
    Exited,
    Failed,
}

#[derive(Debug)]
struct Output {
    fd: OwnedFd,
    pending: Vec<u8>,
}

#[derive(Debug)]
struct Container {
    bundle: Bundle,
    state: State,
    output: Option<Output>,
    /// Its cgroup directory, removed when it exits.
    cgroup: Option<std::path::PathBuf>,
    /// Its root, when it shares PID 1's mount namespace: detached when it exits.
    shared_root: Option<std::path::PathBuf>,
}

/// Timing of the first container start, for the boot measurement.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// CLOCK_BOOTTIME when hafen-init started.
    pub init_start_ns: u64,
}

/// The event loop and everything it owns.
#[derive(Debug)]
pub struct Supervisor {
    epoll: Epoll,
    signals: OwnedFd,
    buttons: Vec<(String, OwnedFd)>,
    containers: Vec<Container>,
    once_queue: VecDeque<usize>,
    services_started: bool,
    shutdown: Option<PowerAction>,
    all_exited_at: Option<u64>,
    clock: BootClock,
    first_exec_reported: bool,
    console: libc::c_int,
}

impl Supervisor {
    /// Sets up the event loop. `signals` must already be blocked.
    pub fn new(
        bundles: Vec<Bundle>,
        signals: OwnedFd,
        clock: BootClock,
    ) -> std::io::Result<Supervisor> {
        let epoll = Epoll::new()?;
        epoll.add(signals.as_raw_fd(), TOKEN_SIGNALS)?;
        let buttons = input::open_event_devices();
        for (i, (path, fd)) in buttons.iter().enumerate() {
            if let Err(e) = epoll.add(fd.as_raw_fd(), TOKEN_BUTTON_BASE + i as u64) {
                warn!("cannot watch {path} for the power button: {e}");
            }
        }
        let once_queue = bundles
            .iter()
            .enumerate()
            .filter(|(_, b)| b.phase == Phase::Once)
            .map(|(i, _)| i)
            .collect();
        let containers = bundles
            .into_iter()
            .map(|bundle| Container {
                bundle,
                state: State::NotStarted,
                output: None,
                cgroup: None,
                shared_root: None,
            })
            .collect();
        Ok(Supervisor {
            epoll,
            signals,
            buttons,
            containers,
            once_queue,
            services_started: false,
            shutdown: None,
            all_exited_at: None,
            clock,
            first_exec_reported: false,
            console: 1,
        })
    }

    /// Runs until every container has stopped after a shutdown request (or
    /// all have exited on their own) and returns what to do with the machine.
    pub fn run(mut self) -> PowerAction {
        let mut ready = Vec::new();
        loop {
            self.advance();
            if let Some(action) = self.finished() {
                return action;
            }
            ready.clear();
            let timeout = self.next_timeout_ms();
            if let Err(e) = self.epoll.wait(timeout, &mut ready) {
                error!("event loop: {e}");
                continue;
            }
            for &token in &ready {
                self.dispatch(token);
            }
            self.enforce_deadlines();
        }
    }

    fn running(&self) -> impl Iterator<Item = &Container> {
        self.containers
            .iter()
            .filter(|c| matches!(c.state, State::Running { .. }))
    }

    /// Starts whatever is due: the next `once` container, or the services.
    fn advance(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let once_running = self.running().any(|c| c.bundle.phase == Phase::Once);
        if once_running {
            return;
        }
        while let Some(i) = self.once_queue.pop_front() {
            if self.start(i) {
                return;
            }
        }
        if !self.services_started {
            self.services_started = true;
            for i in 0..self.containers.len() {
                if self.containers[i].bundle.phase == Phase::Service {
                    self.start(i);
                }
            }
        }
    }

    /// Starts container `i`; false when it could not be started.
    fn start(&mut self, i: usize) -> bool {
        let Some(c) = self.containers.get_mut(i) else {
            return false;
        };
        debug!("starting {}", c.bundle.name);
        match container::start(&c.bundle) {
            Ok(Spawned {
                pid,
                output,
                cgroup,
                shared_root,
                ..
            }) => {
                if !self.first_exec_reported {
                    self.first_exec_reported = true;
                    let now = sys::boottime_ns();
                    info!(
                        "first container ({}) started {} ms after kernel start (hafen-init's share: {} ms)",
                        c.bundle.name,
                        now / 1_000_000,
                        now.saturating_sub(self.clock.init_start_ns) / 1_000_000
                    );
                }
                info!(
                    "started {} (pid {pid}): {}",
                    c.bundle.name,
                    container::display_command(&c.bundle)
                );
                let token = i as u64 + 1;
                if let Some(output) = output {
                    if let Err(e) = self.epoll.add(output.as_raw_fd(), token) {
                        warn!("cannot watch the output of {}: {e}", c.bundle.name);
                    }
                    c.output = Some(Output {
                        fd: output,
                        pending: Vec::new(),
                    });
                }
                c.cgroup = cgroup;
                c.shared_root = shared_root;
                c.state = State::Running {
                    pid,
                    stop_deadline: None,
                };
                true
            }
            Err(e) => {
                error!("container {} failed to start: {e}", c.bundle.name);
                c.state = State::Failed;
                false
            }
        }
    }

    fn dispatch(&mut self, token: u64) {
        if token == TOKEN_SIGNALS {
            self.handle_signals();
        } else if token >= TOKEN_BUTTON_BASE {
            let pressed = self
                .buttons
                .get((token - TOKEN_BUTTON_BASE) as usize)
                .is_some_and(|(_, fd)| input::power_pressed(fd));
            if pressed {
                info!("power button pressed");
                self.request_shutdown(PowerAction::PowerOff);
            }
        } else if let Some(i) = (token as usize).checked_sub(1) {
            self.pump_output(i);
        }
    }

    fn handle_signals(&mut self) {
        loop {
            match sys::read_signal(&self.signals) {
                Ok(Some(libc::SIGCHLD)) => self.reap(),
                Ok(Some(sig @ (libc::SIGTERM | libc::SIGPWR | libc::SIGUSR2 | libc::SIGUSR1))) => {
                    info!("received {}", hafen_proto::signal::name(sig));
                    self.request_shutdown(PowerAction::PowerOff);
                }
                Ok(Some(libc::SIGINT)) => {
                    info!("received SIGINT (Ctrl-Alt-Del)");
                    self.request_shutdown(PowerAction::Reboot);
                }
                Ok(Some(other)) => info!("ignoring {}", hafen_proto::signal::name(other)),
                Ok(None) => break,
                Err(e) => {
                    error!("reading signals: {e}");
                    break;
                }
            }
        }
        // A SIGCHLD may coalesce with others; reaping is cheap, so always try.
        self.reap();
    }

    /// The one place that waits for children: every exit goes through here.
    fn reap(&mut self) {
        loop {
            match sys::reap_one() {
                Ok(Some((pid, status))) => self.on_exit(pid, status),
                Ok(None) => break,
                Err(e) => {
                    error!("waitpid: {e}");
                    break;
                }
            }
        }
    }

    fn on_exit(&mut self, pid: libc::pid_t, status: ExitStatus) {
        let Some(c) = self
            .containers
            .iter_mut()
            .find(|c| matches!(c.state, State::Running { pid: p, .. } if p == pid))
        else {
            // A start that failed after clone, or an orphan: nothing to report.
            return;
        };
        let clean = status == ExitStatus::Code(0);
        if clean || self.shutdown.is_some() {
            info!("{} {status}", c.bundle.name);
        } else {
            warn!("{} {status}", c.bundle.name);
        }
        c.state = State::Exited;
        if let Some(dir) = c.cgroup.take() {
            cgroup::remove(&dir);
        }
        if let Some(root) = c.shared_root.take() {
            if let Err(e) = container::release_shared_root(&root) {
                warn!("{}: cannot detach {}: {e}", c.bundle.name, root.display());
            }
        }
    }

    fn pump_output(&mut self, i: usize) {
        let console = self.console;
        let Some(c) = self.containers.get_mut(i) else {
            return;
        };
        let Some(out) = c.output.as_mut() else { return };
        let mut buf = [0u8; 4096];
        let mut closed = false;
        loop {
            match sys::read(out.fd.as_raw_fd(), &mut buf) {
                Ok(Some(0)) => {
                    closed = true;
                    break;
                }
                Ok(Some(n)) => out.pending.extend_from_slice(&buf[..n]),
                Ok(None) => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        write_lines(console, &c.bundle.name, &mut out.pending, closed);
        if closed {
            let _ = self.epoll.delete(out.fd.as_raw_fd());
            c.output = None;
        }
    }

    fn request_shutdown(&mut self, action: PowerAction) {
        if let Some(current) = self.shutdown {
            // A reboot request while powering off (or vice versa) changes only the end.
            if current != action {
                self.shutdown = Some(action);
            }
            return;
        }
        self.shutdown = Some(action);
        self.once_queue.clear();
        let running = self.running().count();
        info!(
            "{} requested; stopping {running} container{}",
            if action == PowerAction::Reboot {
                "reboot"
            } else {
                "power-off"
            },
            if running == 1 { "" } else { "s" }
        );
        let now = sys::monotonic_ns();
        for c in &mut self.containers {
            if let State::Running { pid, stop_deadline } = &mut c.state {
                let sig = c.bundle.stop_signal;
                if let Err(e) = sys::kill(*pid, sig) {
                    warn!(
                        "cannot send {} to {}: {e}",
                        hafen_proto::signal::name(sig),
                        c.bundle.name
                    );
                }
                *stop_deadline = Some(now + u64::from(c.bundle.stop_timeout_secs) * 1_000_000_000);
            }
        }
    }

    fn enforce_deadlines(&mut self) {
        let now = sys::monotonic_ns();
        for c in &mut self.containers {
            if let State::Running {
                pid,
                stop_deadline: Some(deadline),
            } = &mut c.state
            {
                if now >= *deadline {
                    warn!(
                        "{} did not stop within {} s; sending SIGKILL",
                        c.bundle.name, c.bundle.stop_timeout_secs
                    );
                    let _ = sys::kill(*pid, libc::SIGKILL);
                    // Never again: the reaper will see it go.
                    *deadline = u64::MAX;
                }
            }
        }
    }

    fn next_timeout_ms(&self) -> i32 {
        let now = sys::monotonic_ns();
        let deadlines = self.running().filter_map(|c| match c.state {
            State::Running {
                stop_deadline: Some(d),
                ..
            } if d != u64::MAX => Some(d),
            _ => None,
        });
        let grace = self.all_exited_at.map(|t| t + OUTPUT_GRACE_NS);
        match deadlines.chain(grace).min() {
            None => -1,
            Some(d) => (d.saturating_sub(now) / 1_000_000).min(i32::MAX as u64) as i32 + 1,
        }
    }

    /// `Some(action)` once nothing is left to wait for.
    fn finished(&mut self) -> Option<PowerAction> {
        let pending =
            !self.once_queue.is_empty() || (!self.services_started && self.shutdown.is_none());
        if self.running().next().is_some() || pending {
            self.all_exited_at = None;
            return None;
        }
        let action = match self.shutdown {
            Some(action) => action,
            None => {
                info!("all containers have exited");
                self.shutdown = Some(PowerAction::PowerOff);
                PowerAction::PowerOff
            }
        };
        let now = sys::monotonic_ns();
        let since = *self.all_exited_at.get_or_insert(now);
        let output_open = self.containers.iter().any(|c| c.output.is_some());
        if output_open && now < since + OUTPUT_GRACE_NS {
            return None;
        }
        // Print what is left of partial lines.
        for c in &mut self.containers {
            if let Some(out) = c.output.as_mut() {
                write_lines(self.console, &c.bundle.name, &mut out.pending, true);
            }
        }
        Some(action)
    }
}

/// Writes every complete line in `pending` as `NAME | line`; with `flush`,
/// also what remains. Over-long lines are cut at [`MAX_LINE`].
fn write_lines(console: libc::c_int, name: &str, pending: &mut Vec<u8>, flush: bool) {
    let mut start = 0;
    let mut out = Vec::new();
    while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
        push_line(&mut out, name, &pending[start..start + pos]);
        start += pos + 1;
    }
    while pending.len() - start >= MAX_LINE {
        push_line(&mut out, name, &pending[start..start + MAX_LINE]);
        start += MAX_LINE;
    }
    if flush && start < pending.len() {
        push_line(&mut out, name, &pending[start..]);
        start = pending.len();
    }
    pending.drain(..start);
    if !out.is_empty() {
        let _ = sys::write_all(console, &out);
    }
}

fn push_line(out: &mut Vec<u8>, name: &str, line: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b" | ");
    out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
    out.push(b'\n');
}

/// Blocks the handled signals and returns a signalfd for them.
pub fn signal_fd() -> std::io::Result<OwnedFd> {
    let set = SigSet::of(HANDLED_SIGNALS);
    set.block()?;
    set.signalfd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_and_partial_lines_wait_for_more() {
        let (r, w) = sys::pipe().expect("pipe");
        let mut pending = b"hello\nwor".to_vec();
        write_lines(w.as_raw_fd(), "greet", &mut pending, false);
        assert_eq!(pending, b"wor");
        pending.extend_from_slice(b"ld\r\nlast");
        write_lines(w.as_raw_fd(), "greet", &mut pending, true);
        assert!(pending.is_empty());
        drop(w);
        let mut buf = [0u8; 256];
        let n = sys::read(r.as_raw_fd(), &mut buf)
            .expect("read")
            .expect("data");
        assert_eq!(
            std::str::from_utf8(&buf[..n]).expect("utf8"),
            "greet | hello\ngreet | world\ngreet | last\n"
        );
    }
}
