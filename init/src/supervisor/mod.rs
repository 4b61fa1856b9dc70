//! The supervisor: one event loop that owns every child's wait status, every
//! container's output and log ring, the signals sent to PID 1, the power
//! button and the control channel, and drives boot (once containers in
//! order, then services) and shutdown.
//!
//! Its pieces, each named after what it owns:
//! - this file: the loop, the containers' lifecycle, the one reaper;
//! - [`requests`]: what the host asks over the control channel, and the
//!   streams (logs, events) it follows;
//! - [`exec`]: processes started in running containers (`hafen exec`);
//! - [`build`]: a builder VM's build ops (`hafen image build`);
//! - [`depends`]: when a container may start, and the order at shutdown;
//! - [`restart`]: restart policies and their back-off;
//! - [`health`]: health checks;
//! - [`echo`]: the containers' output on the console, never blocking;
//! - [`crate::logs`]: the log rings; [`crate::control`]: the port.

mod build;
mod depends;
mod echo;
mod exec;
mod health;
mod requests;
mod restart;
mod volume_copy;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use hafen_proto::control::{self as proto, EventKind, ExitInfo, Stream};
use hafen_proto::supervision::{self, Prerequisite, RestartPolicy};

use crate::bringup::Bringup;
use crate::bundle::Bundle;
use crate::container::{self, cgroup, Spawned};
use crate::control::{self, Channel, Incoming};
use crate::input;
use crate::log::{Level, RateLimit};
use crate::logs::{LineSplitter, LogRing, Sequence};
use crate::sys::{self, Epoll, ExitStatus, SigSet};

use echo::Echo;
use exec::ExecSession;
use health::Health;
use requests::Session;
use restart::Restarts;

/// Signals PID 1 handles; all are blocked and read from a signalfd.
pub const HANDLED_SIGNALS: &[i32] = &[
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGPWR,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGHUP,
    // The control port: a host connected or wrote.
    libc::SIGIO,
];

/// What the machine does once every container has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Power off.
    PowerOff,
    /// Restart.
    Reboot,
}

/// How long to keep reading output after the last container exited.
const OUTPUT_GRACE_NS: u64 = 2_000_000_000;
/// How long the host gets to read what is queued for it before power-off.
const CHANNEL_DRAIN_NS: u64 = 3_000_000_000;

const TOKEN_SIGNALS: u64 = 0;
const TOKEN_CONTROL: u64 = 1;
/// The inotify instance watching the containers' `memory.events`.
const TOKEN_OOM: u64 = 2;
/// Container `i`'s stdout is `TOKEN_OUTPUT + 2i`, its stderr the next.
const TOKEN_OUTPUT: u64 = 1 << 16;
/// Exec session tokens ([`exec`]).
const TOKEN_EXEC: u64 = 1 << 32;
/// Container `i`'s health check's stdout is `TOKEN_HEALTH + 2i`, its stderr the next.
const TOKEN_HEALTH: u64 = 1 << 44;
const TOKEN_BUTTON_BASE: u64 = 1 << 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotStarted,
    Running {
        pid: libc::pid_t,
        stop_deadline: Option<u64>,
    },
    Exited,
    Failed,
}

/// One output stream of a running container.
#[derive(Debug)]
struct Pipe {
    fd: OwnedFd,
    lines: LineSplitter,
}

#[derive(Debug)]
struct Container {
    bundle: Bundle,
    state: State,
    /// stdout, stderr while open.
    pipes: [Option<Pipe>; 2],
    ring: LogRing,
    /// Its cgroup directory, removed when it exits.
    cgroup: Option<PathBuf>,
    /// Its root, when it shares PID 1's mount namespace: detached when it exits.
    shared_root: Option<PathBuf>,
    started_ns: Option<u64>,
    /// When it last started, on the monotonic clock (for the back-off).
    started_mono: u64,
    exit: Option<ExitInfo>,
    error: Option<String>,
    /// Times started.
    starts: u32,
    /// What must happen before it starts ([`depends`]).
    prerequisites: Vec<Prerequisite>,
    /// Why its dependencies can never be met (unknown name, cycle).
    plan_error: Option<String>,
    restarts: Restarts,
    health: Option<Health>,
    /// Stopped on request (`hafen stop`): the machine stays up for it.
    held: bool,
    /// Frozen (its cgroup) while a volume it mounts is exported.
    frozen: bool,
    /// The stop timeout in force, for the message when it runs out.
    stop_secs: u32,
    /// Its `memory.events` watch, and the OOM kills counted so far.
    oom_watch: Option<i32>,
    oom_kills: u64,
    /// Bounds the messages its starts and exits make (a container that
    /// keeps failing must not flood the console).
    messages: RateLimit,
}

impl Container {
    fn pid(&self) -> Option<libc::pid_t> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    fn info(&self, restarting: bool) -> proto::ContainerInfo {
        let next_restart_ns = self
            .restarts
            .due
            .map(|due| sys::boottime_ns() + due.saturating_sub(sys::monotonic_ns()));
        let state = match self.state {
            State::Running { .. } if self.frozen => proto::State::Paused,
            State::Running { .. } => proto::State::Running,
            _ if restarting || next_restart_ns.is_some() => proto::State::Restarting,
            State::NotStarted => proto::State::Created,
            State::Exited => proto::State::Exited,
            State::Failed => proto::State::Failed,
        };
        proto::ContainerInfo {
            name: self.bundle.name.clone(),
            image: self.bundle.image.clone(),
            command: self
                .bundle
                .spec
                .process
                .as_ref()
                .map(|p| p.args.clone())
                .unwrap_or_default(),
            state,
            pid: self.pid().map(|p| p as u32),
            started_ns: self.started_ns,
            exit: self.exit.clone(),
            error: self.error.clone(),
            restarts: self.restarts.count,
            main: self.bundle.main,
            restart_policy: self.bundle.restart.to_string(),
            next_restart_ns,
            waiting_for: None,
            health: self.health.as_ref().map(Health::info),
        }
    }

    fn output_open(&self) -> bool {
        self.pipes.iter().any(Option::is_some)
    }
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
    shutdown: Option<PowerAction>,
    /// The main container's status, when its end shut the machine down.
    main_exit: Option<proto::ExitStatus>,
    all_exited_at: Option<u64>,
    clock: BootClock,
    first_exec_reported: bool,
    echo: Echo,
    seq: Sequence,
    channel: Option<Channel>,
    sessions: Vec<Session>,
    execs: Vec<ExecSession>,
    /// Numbers exec sessions' epoll tokens; never reused.
    next_exec_slot: u64,
    /// Watches the containers' `memory.events` for OOM kills.
    oom: Option<OwnedFd>,
    /// A host has subscribed to the events (it will hear the shutdown).
    events_heard: bool,
    /// Bounds the warnings a host sending garbage causes.
    bad_frames: RateLimit,
    /// Requests read but not yet handled (reused buffer).
    incoming: Vec<Incoming>,
    /// Which stream [`Supervisor::pump`] serves first this time.
    pump_turn: usize,
    /// A builder VM: serves build ops, stays up without containers.
    builder: bool,
    /// The build ops' helpers while they run.
    builds: Vec<build::BuildJob>,
    /// The machine's set-up that waits for the first container's start.
    bringup: Bringup,
}

impl Supervisor {
    /// Sets up the event loop (`signals` must already be blocked), with the
    /// power button and the control channel, opened before any container
    /// starts: no press of the button is lost once PID 1 runs, and the
    /// host's first requests are read in the loop's first round. The rest
    /// of `bringup` waits for the first container's start.
    pub fn new(
        bundles: Vec<Bundle>,
        signals: OwnedFd,
        clock: BootClock,
        bringup: Bringup,
    ) -> std::io::Result<Supervisor> {
        let epoll = Epoll::new()?;
        epoll.add(signals.as_raw_fd(), TOKEN_SIGNALS)?;
        let buttons = input::open_event_devices();
        for (i, (path, fd)) in buttons.iter().enumerate() {
            if let Err(e) = epoll.add(fd.as_raw_fd(), TOKEN_BUTTON_BASE + i as u64) {
                warn!("cannot watch {path} for the power button: {e}");
            }
        }
        let channel = match control::find_port(control::PORT_NAME) {
            Some(path) => match Channel::open(&path, &epoll, TOKEN_CONTROL) {
                Ok(channel) => {
                    debug!("control channel on {}", path.display());
                    Some(channel)
                }
                Err(e) => {
                    warn!("cannot open the control port {}: {e}", path.display());
                    None
                }
            },
            None => {
                info!(
                    "no control port ({}): the host cannot manage this machine",
                    control::PORT_NAME
                );
                None
            }
        };
        let nodes: Vec<supervision::Node<'_>> = bundles
            .iter()
            .map(|b| supervision::Node {
                name: &b.name,
                phase: b.phase,
                depends_on: &b.depends_on,
            })
            .collect();
        let (mut plan, plan_errors) = supervision::plan(&nodes);
        let mut plan_error: Vec<Option<String>> = vec![None; bundles.len()];
        for (i, e) in plan_errors {
            plan_error[i].get_or_insert_with(|| e.to_string());
        }
        let containers = bundles
            .into_iter()
            .zip(plan.iter_mut().map(std::mem::take))
            .zip(plan_error)
            .map(|((bundle, prerequisites), plan_error)| Container {
                ring: LogRing::new(bundle.log_size as usize),
                health: bundle
                    .healthcheck
                    .clone()
                    .map(|(check, command)| Health::new(check, command)),
                prerequisites,
                plan_error,
                restarts: Restarts::default(),
                started_mono: 0,
                bundle,
                state: State::NotStarted,
                pipes: [None, None],
                cgroup: None,
                shared_root: None,
                started_ns: None,
                exit: None,
                error: None,
                starts: 0,
                held: false,
                frozen: false,
                stop_secs: 0,
                oom_watch: None,
                oom_kills: 0,
                messages: RateLimit::new(2, 10),
            })
            .collect();
        let oom = match rustix::fs::inotify::init(
            rustix::fs::inotify::CreateFlags::CLOEXEC | rustix::fs::inotify::CreateFlags::NONBLOCK,
        ) {
            Ok(fd) => match epoll.add(fd.as_raw_fd(), TOKEN_OOM) {
                Ok(()) => Some(fd),
                Err(e) => {
                    warn!("cannot watch for OOM kills: {e}");
                    None
                }
            },
            Err(e) => {
                warn!("cannot watch for OOM kills (inotify): {e}");
                None
            }
        };
        Ok(Supervisor {
            oom,
            epoll,
            signals,
            buttons,
            containers,
            shutdown: None,
            main_exit: None,
            all_exited_at: None,
            clock,
            first_exec_reported: false,
            echo: Echo::console(),
            seq: Sequence::default(),
            channel,
            sessions: Vec::new(),
            execs: Vec::new(),
            next_exec_slot: 0,
            events_heard: false,
            bad_frames: RateLimit::new(1, 5),
            incoming: Vec::new(),
            pump_turn: 0,
            builder: false,
            builds: Vec::new(),
            bringup,
        })
    }

    /// Finishes the machine's set-up (see [`Bringup`]).
    fn finish_bringup(&mut self) {
        if self.bringup.finished() {
            return;
        }
        self.bringup
            .finish(self.containers.iter_mut().map(|c| &mut c.bundle));
        // The memory controller now reaches the cgroups made before it.
        for c in &mut self.containers {
            if let (State::Running { .. }, None, Some(dir)) = (c.state, c.oom_watch, &c.cgroup) {
                c.oom_watch = watch_oom(&self.oom, dir);
            }
        }
    }

    /// Runs until every container has stopped after a shutdown request (or
    /// all have exited on their own) and returns what to do with the machine.
    pub fn run(mut self) -> PowerAction {
        let mut ready = Vec::new();
        loop {
            self.advance();
            self.finish_bringup();
            if let Some(action) = self.finished() {
                self.drain_channel();
                return action;
            }
            self.pump();
            ready.clear();
            let timeout = self.next_timeout_ms();
            if let Err(e) = self.epoll.wait(timeout, &mut ready) {
                error!("event loop: {e}");
                continue;
            }
            for &(token, events) in &ready {
                self.dispatch(token, events);
            }
            if self.channel.as_ref().is_some_and(Channel::backlog) {
                self.control_ready(sys::EPOLL_INPUT);
            }
            self.enforce_deadlines();
        }
    }

    fn running(&self) -> impl Iterator<Item = &Container> {
        self.containers
            .iter()
            .filter(|c| matches!(c.state, State::Running { .. }))
    }

    /// Does what is due: at shutdown, the next stops in dependency order;
    /// otherwise restarts whose back-off ran out, then every container
    /// whose dependencies are met (or never will be), then health checks.
    fn advance(&mut self) {
        if self.shutdown.is_some() {
            self.stop_in_order();
            return;
        }
        for i in 0..self.containers.len() {
            if let Some(reason) = self.containers[i].plan_error.take() {
                self.dependency_failed(i, reason);
            }
        }
        let now = sys::monotonic_ns();
        for i in 0..self.containers.len() {
            let r = &mut self.containers[i].restarts;
            if r.due.is_some_and(|due| now >= due) && self.shutdown.is_none() {
                r.due = None;
                r.count += 1;
                let (count, delay_ms) = (r.count, r.pending_delay_ns / 1_000_000);
                self.emit(i, EventKind::Restart { count, delay_ms });
                let _ = self.start(i);
            }
        }
        self.start_ready();
        if self.running().next().is_none() && !self.restart_pending() {
            self.fail_stuck();
        }
        self.health_tick();
    }

    fn restart_pending(&self) -> bool {
        self.containers.iter().any(|c| c.restarts.due.is_some())
    }

    /// Container `i` ended for good (no restart coming) with `status`: a
    /// `main` container ends the machine, a `required` one that failed too.
    fn gave_up(&mut self, i: usize, status: proto::ExitStatus) {
        let c = &self.containers[i];
        if c.bundle.main {
            self.main_ended(i, status);
        } else if c.bundle.required
            && status != proto::ExitStatus::Code(0)
            && self.shutdown.is_none()
        {
            error!(
                "required container {} {status}; the boot stops",
                c.bundle.name
            );
            self.main_exit = Some(status);
            self.request_shutdown(PowerAction::PowerOff);
        }
    }

    /// Schedules container `i`'s restart when its policy (or its failed
    /// health) asks for one; true when it did.
    fn restart_by_policy(&mut self, i: usize, success: bool) -> bool {
        let c = &mut self.containers[i];
        if self.shutdown.is_some() || c.held {
            c.restarts.cancel();
            return false;
        }
        let wanted = (c.restarts.for_health && c.bundle.restart != RestartPolicy::No)
            || c.bundle.restart.restarts_after(success, c.restarts.count);
        if !wanted {
            return false;
        }
        let now = sys::monotonic_ns();
        let delay = c.restarts.schedule(now, now.saturating_sub(c.started_mono));
        c.messages.write(
            Level::Info,
            format_args!(
                "{}: restarting in {} ms ({}, restart {})",
                c.bundle.name,
                delay / 1_000_000,
                c.bundle.restart,
                c.restarts.count + 1
            ),
        );
        true
    }

    /// Starts container `i`; the error says why it could not be.
    fn start(&mut self, i: usize) -> Result<(), String> {
        if let Some(volume) = self.importing(i) {
            return Err(format!(
                "volume {volume} is being imported; start {} when the import has finished",
                self.containers[i].bundle.name
            ));
        }
        let Some(c) = self.containers.get_mut(i) else {
            return Err("no such container".into());
        };
        debug!("starting {}", c.bundle.name);
        self.bringup.before_start(&mut c.bundle);
        let started = crate::volume::prepare(&c.bundle.name, &c.bundle.spec, &c.bundle.volumes)
            .map_err(container::StartError::Volume)
            .and_then(|()| container::start(&c.bundle));
        match started {
            Ok(Spawned {
                pid,
                io,
                cgroup,
                shared_root,
                ..
            }) => {
                let now = sys::boottime_ns();
                if !self.first_exec_reported {
                    self.first_exec_reported = true;
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
                if let Some(io) = io {
                    for (s, fd) in [io.stdout, io.stderr].into_iter().enumerate() {
                        let token = TOKEN_OUTPUT + 2 * i as u64 + s as u64;
                        if let Err(e) = self.epoll.add(fd.as_raw_fd(), token) {
                            warn!("cannot watch the output of {}: {e}", c.bundle.name);
                        }
                        c.pipes[s] = Some(Pipe {
                            fd,
                            lines: LineSplitter::default(),
                        });
                    }
                }
                c.oom_kills = 0;
                c.oom_watch = cgroup.as_deref().and_then(|dir| watch_oom(&self.oom, dir));
                c.cgroup = cgroup;
                c.shared_root = shared_root;
                c.state = State::Running {
                    pid,
                    stop_deadline: None,
                };
                c.started_ns = Some(now);
                c.started_mono = sys::monotonic_ns();
                c.error = None;
                c.held = false;
                c.starts += 1;
                c.restarts.cancel();
                self.health_started(i);
                self.emit(i, EventKind::Start { pid: pid as u32 });
                self.finish_bringup();
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                c.messages.write(
                    Level::Error,
                    format_args!("container {} failed to start: {message}", c.bundle.name),
                );
                c.state = State::Failed;
                c.error = Some(message.clone());
                self.emit(
                    i,
                    EventKind::StartFailed {
                        message: message.clone(),
                    },
                );
                self.containers[i].started_mono = sys::monotonic_ns();
                if !self.restart_by_policy(i, false) {
                    self.gave_up(i, proto::ExitStatus::Code(e.exit_code()));
                }
                Err(message)
            }
        }
    }

    fn dispatch(&mut self, token: u64, events: u32) {
        if token == TOKEN_SIGNALS {
            self.handle_signals();
        } else if token == TOKEN_CONTROL {
            self.control_ready(events);
        } else if token == TOKEN_OOM {
            self.check_oom();
        } else if token >= TOKEN_BUTTON_BASE {
            let pressed = self
                .buttons
                .get((token - TOKEN_BUTTON_BASE) as usize)
                .is_some_and(|(_, fd)| input::power_pressed(fd));
            if pressed {
                // `hafen run` presses again each second until the machine
                // is off: only the first press of a shutdown is news.
                if self.shutdown.is_none() {
                    info!("power button pressed");
                    crate::debug!("power button read");
                }
                self.request_shutdown(PowerAction::PowerOff);
            }
        } else if token >= TOKEN_HEALTH {
            self.health_ready(token - TOKEN_HEALTH);
        } else if token >= TOKEN_EXEC {
            self.exec_ready(token - TOKEN_EXEC, events);
        } else if let Some(n) = token.checked_sub(TOKEN_OUTPUT) {
            self.pump_output((n / 2) as usize, (n % 2) as usize);
        }
    }

    fn handle_signals(&mut self) {
        loop {
            match sys::read_signal(&self.signals) {
                Ok(Some(libc::SIGCHLD)) => self.reap(),
                Ok(Some(libc::SIGIO)) => {
                    if let Some(channel) = self.channel.as_mut() {
                        channel.wake(&self.epoll);
                    }
                }
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
        self.build_exited(pid);
        if self.exec_exited(pid, status) || self.health_exited(pid, status) {
            return;
        }
        let Some(i) = self.containers.iter().position(|c| c.pid() == Some(pid)) else {
            // A start that failed after clone, or an orphan: nothing to report.
            return;
        };
        let shutting_down = self.shutdown.is_some();
        let c = &mut self.containers[i];
        if status == ExitStatus::Code(0) || shutting_down {
            c.messages
                .write(Level::Info, format_args!("{} {status}", c.bundle.name));
        } else {
            c.messages
                .write(Level::Warn, format_args!("{} {status}", c.bundle.name));
        }
        let oom_killed =
            c.oom_kills > 0 || c.cgroup.as_deref().and_then(cgroup_oom_kills).unwrap_or(0) > 0;
        c.oom_watch = None;
        let exit = ExitInfo {
            status,
            finished_ns: sys::boottime_ns(),
            oom_killed,
        };
        c.state = State::Exited;
        c.frozen = false;
        c.exit = Some(exit.clone());
        if let Some(dir) = c.cgroup.take() {
            cgroup::remove(&dir);
        }
        if let Some(root) = c.shared_root.take() {
            if let Err(e) = container::release_shared_root(&root) {
                warn!("{}: cannot detach {}: {e}", c.bundle.name, root.display());
            }
        }
        if oom_killed && self.containers[i].oom_kills == 0 {
            // Killed before the watch reported it.
            self.emit(i, EventKind::Oom);
        }
        self.health_stopped(i);
        // What the init wrote before it died is in its pipes: into the
        // ring and out to log followers before the `die` event, so a host
        // that ends `logs -f` on it has seen the last lines.
        self.pump_output(i, 0);
        self.pump_output(i, 1);
        self.pump();
        self.emit(i, EventKind::Die(exit));
        let restarted =
            self.container_stopped(i) || self.restart_by_policy(i, status == ExitStatus::Code(0));
        if !restarted {
            self.gave_up(i, status);
        }
    }

    /// The main container ended: the machine shuts down with its status.
    fn main_ended(&mut self, i: usize, status: proto::ExitStatus) {
        if self.shutdown.is_some() {
            return;
        }
        info!(
            "main container {} {status}; shutting down",
            self.containers[i].bundle.name
        );
        self.main_exit = Some(status);
        self.request_shutdown(PowerAction::PowerOff);
    }

    /// Reads what container `i`'s stream `s` (0 stdout, 1 stderr) has into
    /// its log ring and the console.
    fn pump_output(&mut self, i: usize, s: usize) {
        let Some(c) = self.containers.get_mut(i) else {
            return;
        };
        let Some(pipe) = c.pipes[s].as_mut() else {
            return;
        };
        let stream = if s == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        // Entries stay under 32 KiB (this plus a held-back partial line), so
        // one always fits a frame. (Measured under TCG with a container
        // writing flat out: 16 KiB reads reached 19 MB/s, 32 KiB ones 9.)
        let mut buf = [0u8; 16 * 1024];
        let mut closed = false;
        // Bounded per turn, so one chatty container cannot starve the loop.
        for _ in 0..16 {
            match sys::read(pipe.fd.as_raw_fd(), &mut buf) {
                Ok(Some(0)) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(Some(n)) => {
                    if let Some(lines) = pipe.lines.push(&buf[..n]) {
                        self.echo.lines(&c.bundle.name, &lines);
                        c.ring
                            .push(&mut self.seq, sys::boottime_ns(), stream, &lines);
                    }
                }
                Ok(None) => break,
            }
        }
        if closed {
            if let Some(rest) = pipe.lines.finish() {
                self.echo.lines(&c.bundle.name, &rest);
                c.ring
                    .push(&mut self.seq, sys::boottime_ns(), stream, &rest);
            }
            let _ = self.epoll.delete(pipe.fd.as_raw_fd());
            c.pipes[s] = None;
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
        for c in &mut self.containers {
            c.restarts.cancel();
        }
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
        self.broadcast(proto::Event {
            time_ns: sys::boottime_ns(),
            container: String::new(),
            kind: EventKind::Shutdown {
                main_exit: self.main_exit,
                held: self.held_unless_stopped(),
            },
        });
        self.stop_in_order();
    }

    /// The `unless-stopped` containers a `hafen stop` holds down.
    fn held_unless_stopped(&self) -> Vec<String> {
        self.containers
            .iter()
            .filter(|c| c.held && c.bundle.restart == RestartPolicy::UnlessStopped)
            .map(|c| c.bundle.name.clone())
            .collect()
    }

    /// Holds the `unless-stopped` containers among `names` down from the
    /// start: they were stopped with `hafen stop` when this VM last ran.
    pub fn hold_from_last_run(&mut self, names: &[String]) {
        for c in &mut self.containers {
            if names.contains(&c.bundle.name) && c.bundle.restart == RestartPolicy::UnlessStopped {
                info!(
                    "{} stays stopped: it was stopped with hafen stop when this VM last ran (hafen start {} runs it)",
                    c.bundle.name, c.bundle.name
                );
                c.held = true;
            }
        }
    }

    /// Sends container `i` its stop signal with a deadline for SIGKILL
    /// (`timeout_secs`, else its own); nothing when it is not running.
    fn stop(&mut self, i: usize, timeout_secs: Option<u32>) {
        let c = &mut self.containers[i];
        let State::Running { pid, stop_deadline } = &mut c.state else {
            return;
        };
        let sig = c.bundle.stop_signal;
        if let Err(e) = sys::kill(*pid, sig) {
            warn!(
                "cannot send {} to {}: {e}",
                hafen_proto::signal::name(sig),
                c.bundle.name
            );
        }
        let secs = timeout_secs.unwrap_or(c.bundle.stop_timeout_secs);
        let deadline = sys::monotonic_ns() + u64::from(secs) * 1_000_000_000;
        // An earlier deadline stands.
        if stop_deadline.is_none_or(|d| deadline < d) {
            *stop_deadline = Some(deadline);
            c.stop_secs = secs;
        }
        self.emit(i, EventKind::Stop);
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
                        c.bundle.name, c.stop_secs
                    );
                    let _ = sys::kill(*pid, libc::SIGKILL);
                    // Never again: the reaper will see it go.
                    *deadline = u64::MAX;
                }
            }
        }
        self.exec_deadlines();
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
        let restarts = self.containers.iter().filter_map(|c| c.restarts.due);
        let checks = self
            .containers
            .iter()
            .filter_map(|c| c.health.as_ref().and_then(Health::next_deadline));
        let mut next = deadlines
            .chain(grace)
            .chain(self.exec_next_deadline())
            .chain(restarts)
            .chain(checks)
            .min();
        if self.echo.pending() {
            // The console was full: try again shortly.
            next = Some(next.map_or(now + 10_000_000, |d| d.min(now + 10_000_000)));
        }
        if self.channel.as_ref().is_some_and(Channel::backlog) {
            return 0;
        }
        match next {
            None => -1,
            Some(d) => (d.saturating_sub(now) / 1_000_000).min(i32::MAX as u64) as i32 + 1,
        }
    }

    /// `Some(action)` once nothing is left to wait for.
    fn finished(&mut self) -> Option<PowerAction> {
        if self.builder && self.shutdown.is_none() {
            // A builder has no containers to wait for: it ends on request.
            return None;
        }
        let pending = self.shutdown.is_none()
            && self
                .containers
                .iter()
                .any(|c| c.state == State::NotStarted && !c.held);
        let held = self.shutdown.is_none() && self.containers.iter().any(|c| c.held);
        if self.running().next().is_some() || pending || held || self.restart_pending() {
            self.all_exited_at = None;
            return None;
        }
        if self.end_copies() | self.end_builds() {
            return None;
        }
        let action = match self.shutdown {
            Some(action) => action,
            None => {
                info!("all containers have exited");
                self.request_shutdown(PowerAction::PowerOff);
                PowerAction::PowerOff
            }
        };
        let now = sys::monotonic_ns();
        let since = *self.all_exited_at.get_or_insert(now);
        let output_open = self.containers.iter().any(Container::output_open);
        if output_open && now < since + OUTPUT_GRACE_NS {
            return None;
        }
        // Log what is left of partial lines.
        for c in &mut self.containers {
            for (s, pipe) in c.pipes.iter_mut().enumerate() {
                if let Some(rest) = pipe.as_mut().and_then(|p| p.lines.finish()) {
                    self.echo.lines(&c.bundle.name, &rest);
                    let stream = if s == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                    c.ring
                        .push(&mut self.seq, sys::boottime_ns(), stream, &rest);
                }
            }
        }
        self.echo.flush_blocking();
        Some(action)
    }

    /// Gives the host a bounded time to read what is queued for it (the
    /// main container's status, the last log lines) before power-off.
    fn drain_channel(&mut self) {
        self.pump();
        let start = sys::monotonic_ns();
        let deadline = start + CHANNEL_DRAIN_NS;
        let mut ready = Vec::new();
        while let Some(channel) = self.channel.as_ref() {
            // The main container's status is for a host that has not
            // subscribed yet, when it ended right after boot: give it the
            // time to connect and ask.
            let waiting_for_host = self.main_exit.is_some() && !self.events_heard;
            if !waiting_for_host && (!channel.connected() || channel.queued() == 0) {
                break;
            }
            let now = sys::monotonic_ns();
            if now >= deadline {
                if waiting_for_host {
                    warn!("no host asked for the main container's status");
                } else {
                    warn!(
                        "the host did not read the control channel's last {} bytes",
                        channel.queued()
                    );
                }
                break;
            }
            ready.clear();
            let ms = ((deadline - now) / 1_000_000) as i32 + 1;
            if self.epoll.wait(ms, &mut ready).is_err() {
                break;
            }
            for &(token, events) in &ready {
                match token {
                    TOKEN_CONTROL => self.control_ready(events),
                    TOKEN_SIGNALS => self.handle_signals(),
                    _ => {}
                }
            }
        }
    }

    /// Sends `kind` to every events stream.
    fn emit(&mut self, i: usize, kind: EventKind) {
        let event = proto::Event {
            time_ns: sys::boottime_ns(),
            container: self.containers[i].bundle.name.clone(),
            kind,
        };
        self.broadcast(event);
    }
}

/// Watches the cgroup `dir`'s `memory.events` on the inotify `oom`; `None`
/// without the memory controller there (then no OOM event either).
fn watch_oom(oom: &Option<OwnedFd>, dir: &std::path::Path) -> Option<i32> {
    rustix::fs::inotify::add_watch(
        oom.as_ref()?,
        dir.join("memory.events"),
        rustix::fs::inotify::WatchFlags::MODIFY,
    )
    .ok()
}

/// How many processes the OOM killer killed in the cgroup `dir`.
fn cgroup_oom_kills(dir: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("memory.events"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
}

impl Supervisor {
    /// A `memory.events` changed: an `oom` event for each container whose
    /// OOM kill count went up (its init may live on).
    fn check_oom(&mut self) {
        let Some(oom) = &self.oom else { return };
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        let mut reader = rustix::fs::inotify::Reader::new(oom, &mut buf);
        let mut changed = Vec::new();
        while let Ok(event) = reader.next() {
            changed.push(event.wd());
        }
        for i in 0..self.containers.len() {
            let c = &mut self.containers[i];
            if !c.oom_watch.is_some_and(|wd| changed.contains(&wd)) {
                continue;
            }
            let Some(kills) = c.cgroup.as_deref().and_then(cgroup_oom_kills) else {
                continue;
            };
            if kills > c.oom_kills {
                c.oom_kills = kills;
                warn!(
                    "{}: the OOM killer killed a process ({kills} so far)",
                    c.bundle.name
                );
                self.emit(i, EventKind::Oom);
            }
        }
    }
}

/// Blocks the handled signals and returns a signalfd for them.
pub fn signal_fd() -> std::io::Result<OwnedFd> {
    let set = SigSet::of(HANDLED_SIGNALS);
    set.block()?;
    set.signalfd()
}
