//! Boots a Hafen image in QEMU: `-M microvm` with the image's PVH kernel,
//! KVM when a probe boot works and TCG otherwise, the serial console on our
//! stdout, and a QMP socket through which a signal to `hafen run` becomes a
//! press of the guest's ACPI power button.
//!
//! [`run`] is `hafen run DIR`. While it runs, SIGINT, SIGTERM and SIGHUP are
//! caught: the first presses the power button, the second forces QEMU off.

pub mod client;
pub mod command;
pub mod kvm;
pub mod qmp;
pub mod state;
mod sys;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hafen_proto::image::{ImageInfo, IMAGE_INFO_FILE};

pub use command::Accelerator;
use command::Machine;
pub use kvm::ProbeError;
use qmp::{Message, Qmp, ShutdownReason};
use state::StateDir;

/// How long QEMU may take to exit after a forced `quit` before it is SIGKILLed.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// The signals that shut the guest down.
const SHUTDOWN_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when a probe boot works, TCG otherwise.
    Auto,
    /// KVM, or fail.
    Kvm,
    /// Software emulation; never probes KVM.
    Tcg,
}

/// What `hafen run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Image directory written by `hafen build`.
    pub image: PathBuf,
    /// Guest memory in MiB; `None` takes the image's.
    pub memory_mib: Option<u32>,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Accelerator choice.
    pub accel: Accel,
    /// Show the kernel's messages.
    pub verbose: bool,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest powered itself off and QEMU exited cleanly.
    PoweredOff,
    /// The guest asked to reboot (Ctrl-Alt-Del, a reboot request, or a
    /// kernel panic when the kernel cannot report panics through pvpanic).
    Rebooted,
    /// The guest kernel reported a panic.
    Panicked,
    /// A second signal forced QEMU off before the guest finished.
    Forced,
    /// QEMU stopped without a clean guest shutdown.
    QemuFailed {
        /// What we know beyond the exit status (a shutdown reason, a run state).
        reason: Option<String>,
        /// QEMU's exit status.
        status: ExitStatus,
    },
}

impl RunOutcome {
    /// Whether the guest powered off cleanly.
    pub fn is_clean_power_off(&self) -> bool {
        matches!(self, RunOutcome::PoweredOff)
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunOutcome::PoweredOff => f.write_str("guest powered off"),
            RunOutcome::Rebooted => f.write_str("guest rebooted (the run ends on a reboot)"),
            RunOutcome::Panicked => f.write_str("guest kernel panicked"),
            RunOutcome::Forced => f.write_str("VM forced off"),
            RunOutcome::QemuFailed {
                reason: None,
                status,
            } => write!(
                f,
                "QEMU {} before the guest shut down",
                describe_exit(*status)
            ),
            RunOutcome::QemuFailed {
                reason: Some(reason),
                status,
            } => write!(f, "QEMU {} ({reason})", describe_exit(*status)),
        }
    }
}

/// Running the VM failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `image.json` could not be read.
    #[error(
        "cannot read {}: is {} an image directory? Run `hafen build MANIFEST -o {}` first",
        .path.display(), .dir.display(), .dir.display()
    )]
    ReadImage {
        /// The image directory.
        dir: PathBuf,
        /// `image.json`'s path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `image.json` is malformed.
    #[error("{} is malformed; rebuild the image with `hafen build`", .path.display())]
    ParseImage {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A file `image.json` names is missing.
    #[error(
        "{}, named by {}, cannot be used; rebuild the image with `hafen build`",
        .path.display(), .image_json.display()
    )]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// The `image.json` naming it.
        image_json: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// KVM was required and does not work.
    #[error("KVM does not work on this machine; use --accel tcg (or auto)")]
    KvmUnavailable {
        /// What the probe found.
        #[source]
        source: ProbeError,
    },
    /// The signal handlers could not be installed.
    #[error("cannot catch SIGINT, SIGTERM and SIGHUP for the run")]
    Signals {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A signal arrived before the VM started; nothing was booted.
    #[error("interrupted by signal {signal} before the VM started")]
    Interrupted {
        /// The signal number.
        signal: i32,
    },
    /// The state directory could not be made.
    #[error("cannot create the VM state directory under {}", .path.display())]
    StateDir {
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The QMP socket could not be made.
    #[error("cannot create the QMP socket {}", .path.display())]
    QmpSocket {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// QEMU could not be started.
    #[error("cannot start {}; is QEMU installed (Debian: apt-get install qemu-system-x86)?", .program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The QMP connection failed.
    #[error("cannot talk to QEMU (pid {pid}) over {}", .socket.display())]
    Qmp {
        /// QEMU's pid.
        pid: u32,
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Waiting for signals or QEMU failed.
    #[error("waiting for QEMU (pid {pid}) failed")]
    Wait {
        /// QEMU's pid.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Reads an image directory's `image.json` and checks the files it names.
pub fn read_image(dir: &Path) -> Result<ImageInfo, Error> {
    let path = dir.join(IMAGE_INFO_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::ReadImage {
        dir: dir.to_owned(),
        path: path.clone(),
        source,
    })?;
    let info: ImageInfo = serde_json::from_str(&text).map_err(|source| Error::ParseImage {
        path: path.clone(),
        source,
    })?;
    for file in [&info.kernel, &info.initrd] {
        let p = dir.join(file);
        let checked = std::fs::metadata(&p).and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file"))
            }
        });
        if let Err(source) = checked {
            return Err(Error::MissingFile {
                path: p,
                image_json: path,
                source,
            });
        }
    }
    Ok(info)
}

/// Boots the image and blocks until QEMU has exited.
///
/// Call it from a thread that lives until it returns (QEMU's parent-death
/// signal is tied to that thread); only one run per process at a time.
pub fn run(opts: &RunOptions) -> Result<RunOutcome, Error> {
    let info = read_image(&opts.image)?;
    // Catch the shutdown signals from the start: one that arrives during the
    // KVM probe or while QEMU starts is queued, not lost, and cannot kill us
    // halfway through setting up.
    let signals =
        sys::SignalPipe::install(&SHUTDOWN_SIGNALS).map_err(|source| Error::Signals { source })?;
    let runtime = state::runtime_dir();
    let kernel = opts.image.join(&info.kernel);
    let accel = choose_accelerator(opts.accel, &kernel, &runtime)?;
    if let Some(&signal) = signals
        .take()
        .map_err(|source| Error::Signals { source })?
        .first()
    {
        return Err(Error::Interrupted { signal });
    }

    let mut extra = info.cmdline.clone();
    // Under TCG the guest's TSC ticks at the host's rate, but calibrating it
    // against the emulated PIT fails now and then on a busy host, and the
    // guest then hangs at boot. Telling the kernel the rate avoids both the
    // hang and the calibration time.
    if accel == Accelerator::Tcg && !opts.append.iter().any(|w| w.starts_with("tsc_early_khz=")) {
        if let Some(khz) = sys::host_tsc_khz(Duration::from_millis(20)) {
            extra.push(format!("tsc_early_khz={khz}"));
        }
    }

    let vms = state::vms_dir(&runtime);
    let state = StateDir::create(&vms, &info.name, std::process::id())
        .map_err(|source| Error::StateDir { path: vms, source })?;
    let socket = state.qmp_socket();
    // We listen, QEMU inherits the socket and serves QMP on it: it exists
    // before QEMU starts, so we connect at once instead of polling for it.
    let listener = UnixListener::bind(&socket).map_err(|source| Error::QmpSocket {
        path: socket.clone(),
        source,
    })?;
    let machine = Machine {
        kernel,
        initrd: Some(opts.image.join(&info.initrd)),
        cmdline: command::kernel_cmdline(opts.verbose, &extra, &opts.append),
        memory_mib: opts.memory_mib.unwrap_or(info.memory_mib),
        cpus: opts.cpus.max(1),
        accel,
        qmp_fd: Some(listener.as_raw_fd()),
        control_socket: Some(state.path().join(state::CONTROL_SOCKET)),
    };
    let program = command::qemu_binary();
    let mut cmd = Command::new(&program);
    cmd.args(command::arguments(&machine)).stdin(Stdio::null());
    eprintln!(
        "hafen: booting {} ({}); Ctrl-C shuts it down",
        info.name,
        accel.name()
    );
    let child = sys::spawn_qemu(&mut cmd, Some(listener.as_raw_fd()))
        .map_err(|source| Error::Spawn { program, source })?;
    let mut vm = Vm::new(child);
    // Best effort: the pid file is for people and tools looking in.
    let _ = std::fs::write(state.pid_file(), format!("{}\n", vm.pid));
    let qmp = Qmp::connect(&socket).map_err(|source| Error::Qmp {
        pid: vm.pid,
        socket: socket.clone(),
        source,
    })?;
    // Our copy of the listener is no longer needed; QEMU holds its own.
    drop(listener);
    let outcome = vm.supervise(qmp, &signals);
    drop(state);
    outcome
}

/// Picks the accelerator, probing KVM when asked to.
fn choose_accelerator(accel: Accel, kernel: &Path, runtime: &Path) -> Result<Accelerator, Error> {
    let cache = runtime.join("kvm-probe");
    match accel {
        Accel::Tcg => Ok(Accelerator::Tcg),
        Accel::Kvm => match kvm::probe_cached(kernel, &cache) {
            Ok(()) => Ok(Accelerator::Kvm),
            Err(source) => Err(Error::KvmUnavailable { source }),
        },
        Accel::Auto => match kvm::probe_cached(kernel, &cache) {
            Ok(()) => Ok(Accelerator::Kvm),
            Err(e) => {
                eprintln!("hafen: KVM does not work here ({e}); using TCG");
                Ok(Accelerator::Tcg)
            }
        },
    }
}

/// A running QEMU: killed and reaped if the run ends early.
struct Vm {
    child: Child,
    pid: u32,
    /// Readable once QEMU has exited; `None` on kernels without pidfds.
    exited: Option<OwnedFd>,
}

impl Vm {
    fn new(child: Child) -> Vm {
        let exited = sys::pidfd(&child);
        Vm {
            pid: child.id(),
            child,
            exited,
        }
    }

    fn wait_error(&self, source: io::Error) -> Error {
        Error::Wait {
            pid: self.pid,
            source,
        }
    }

    /// SIGKILLs QEMU. `Child::kill` does nothing once the child is reaped,
    /// so this can never hit a process that reused its pid.
    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// The event loop: signals, QMP messages and QEMU's exit, until QEMU
    /// has exited.
    fn supervise(&mut self, qmp: Qmp, signals: &sys::SignalPipe) -> Result<RunOutcome, Error> {
        let mut qmp = Some(qmp);
        let mut events = Events::default();
        let mut requests = 0u32;
        let mut kill_at: Option<Instant> = None;
        loop {
            let caught = signals.take().map_err(|e| self.wait_error(e))?;
            for _ in caught {
                requests += 1;
                let now = Instant::now();
                match requests {
                    1 => {
                        eprintln!("hafen: shutting the guest down (Ctrl-C again forces it off)");
                        if !send(&mut qmp, "system_powerdown") {
                            events.forced = true;
                            kill_at = Some(now);
                        }
                    }
                    2 => {
                        eprintln!("hafen: forcing the VM off");
                        events.forced = true;
                        let grace = if send(&mut qmp, "quit") {
                            QUIT_GRACE
                        } else {
                            Duration::ZERO
                        };
                        kill_at = Some(now + grace);
                    }
                    _ => kill_at = Some(now),
                }
            }
            if let Some(action) = read_qmp(&mut qmp, &mut events) {
                match action {
                    Action::QueryStatus => {
                        send(&mut qmp, "query-status");
                    }
                    Action::Kill => kill_at = Some(Instant::now()),
                }
            }
            if kill_at.is_some_and(|t| Instant::now() >= t) {
                self.kill();
                kill_at = None;
            }
            if let Some(status) = self.child.try_wait().map_err(|e| self.wait_error(e))? {
                // The SHUTDOWN event may still be unread in the socket.
                while qmp.is_some() {
                    read_qmp(&mut qmp, &mut events);
                }
                return Ok(events.outcome(status));
            }

            let mut fds: Vec<BorrowedFd<'_>> = vec![signals.fd()];
            fds.extend(qmp.as_ref().map(|q| q.stream().as_fd()));
            fds.extend(self.exited.as_ref().map(|fd| fd.as_fd()));
            let mut timeout = kill_at.map(|t| t.saturating_duration_since(Instant::now()));
            if self.exited.is_none() {
                // No pidfd: notice QEMU's exit on a short timer instead.
                timeout = Some(timeout.map_or(Duration::from_millis(50), |t| {
                    t.min(Duration::from_millis(50))
                }));
            }
            sys::poll_readable(&fds, timeout).map_err(|e| Error::Wait {
                pid: self.pid,
                source: e,
            })?;
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends a QMP command; false when there is no working QMP connection.
fn send(qmp: &mut Option<Qmp>, command: &str) -> bool {
    let Some(q) = qmp.as_mut() else {
        return false;
    };
    match q.execute(command) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("hafen: cannot send {command} to QEMU: {e}");
            false
        }
    }
}

/// What the event loop must do after a QMP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Ask QEMU why the VM stopped.
    QueryStatus,
    /// The VM cannot continue; end QEMU.
    Kill,
}

/// Reads what QMP has; drops the connection when QEMU closed it.
fn read_qmp(qmp: &mut Option<Qmp>, events: &mut Events) -> Option<Action> {
    let q = qmp.as_mut()?;
    match q.read_messages() {
        Ok(Some(messages)) => {
            messages
                .into_iter()
                .filter_map(|m| events.record(m))
                .fold(None, |acc, a| match (acc, a) {
                    (Some(Action::Kill), _) | (_, Action::Kill) => Some(Action::Kill),
                    _ => Some(a),
                })
        }
        Ok(None) => {
            *qmp = None;
            None
        }
        Err(e) => {
            // QEMU's exit (seen through the pidfd) still ends the run.
            eprintln!("hafen: lost the QMP connection to QEMU: {e}");
            *qmp = None;
            None
        }
    }
}

/// Run states in which QEMU has paused a VM that cannot go on.
const FATAL_RUN_STATES: [&str; 3] = ["internal-error", "io-error", "guest-panicked"];

/// What the run has seen, from which its outcome follows.
#[derive(Debug, Default)]
struct Events {
    /// The first SHUTDOWN event's reason.
    shutdown: Option<ShutdownReason>,
    /// The run state QEMU paused the VM in, when it did.
    stopped: Option<String>,
    /// A second signal (or a broken QMP connection) forced QEMU off.
    forced: bool,
}

impl Events {
    fn record(&mut self, message: Message) -> Option<Action> {
        match message {
            Message::Shutdown(reason) => {
                self.shutdown.get_or_insert(reason);
                None
            }
            Message::Stop => Some(Action::QueryStatus),
            Message::Status(state) if FATAL_RUN_STATES.contains(&state.as_str()) => {
                eprintln!("hafen: QEMU stopped the VM ({state}); ending the run");
                self.stopped = Some(state);
                Some(Action::Kill)
            }
            Message::Error(desc) => {
                eprintln!("hafen: QEMU: {desc}");
                None
            }
            Message::Status(_) | Message::Powerdown | Message::Other => None,
        }
    }

    fn outcome(&self, status: ExitStatus) -> RunOutcome {
        let failed = |reason: &str| RunOutcome::QemuFailed {
            reason: Some(reason.to_owned()),
            status,
        };
        match &self.shutdown {
            Some(ShutdownReason::GuestShutdown) if status.success() => RunOutcome::PoweredOff,
            Some(ShutdownReason::GuestReset) if status.success() => RunOutcome::Rebooted,
            Some(ShutdownReason::GuestPanic) => RunOutcome::Panicked,
            Some(ShutdownReason::HostQuit) => RunOutcome::Forced,
            _ if self.forced => RunOutcome::Forced,
            Some(ShutdownReason::GuestShutdown) => failed("after the guest powered off"),
            Some(ShutdownReason::GuestReset) => failed("after the guest rebooted"),
            Some(ShutdownReason::Other(reason)) => failed(&format!("shutdown reason {reason}")),
            None => match &self.stopped {
                Some(state) => failed(&format!("the VM stopped in state {state}")),
                None => RunOutcome::QemuFailed {
                    reason: None,
                    status,
                },
            },
        }
    }
}

/// How a process exited, for messages.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "exited".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn killed(sig: i32) -> ExitStatus {
        ExitStatus::from_raw(sig)
    }

    fn events(shutdown: Option<ShutdownReason>, forced: bool) -> Events {
        Events {
            shutdown,
            stopped: None,
            forced,
        }
    }

    #[test]
    fn only_a_guest_power_off_with_qemu_exiting_zero_is_clean() {
        let off = events(Some(ShutdownReason::GuestShutdown), false);
        assert_eq!(off.outcome(exit(0)), RunOutcome::PoweredOff);
        assert!(off.outcome(exit(0)).is_clean_power_off());
        let bad = off.outcome(exit(1));
        assert!(!bad.is_clean_power_off());
        assert_eq!(
            bad.to_string(),
            "QEMU exited with status 1 (after the guest powered off)"
        );
    }

    #[test]
    fn reset_panic_and_forced_outcomes() {
        assert_eq!(
            events(Some(ShutdownReason::GuestReset), false).outcome(exit(0)),
            RunOutcome::Rebooted
        );
        assert_eq!(
            events(Some(ShutdownReason::GuestPanic), false).outcome(exit(0)),
            RunOutcome::Panicked
        );
        assert_eq!(
            events(Some(ShutdownReason::HostQuit), true).outcome(exit(0)),
            RunOutcome::Forced
        );
        // Quit lingered and we SIGKILLed QEMU: still the user's forcing.
        assert_eq!(events(None, true).outcome(killed(9)), RunOutcome::Forced);
        // The guest powered off before the forcing took effect: clean.
        assert_eq!(
            events(Some(ShutdownReason::GuestShutdown), true).outcome(exit(0)),
            RunOutcome::PoweredOff
        );
    }

    #[test]
    fn qemu_dying_without_a_shutdown_event_names_the_status() {
        let outcome = events(None, false).outcome(killed(11));
        assert_eq!(
            outcome,
            RunOutcome::QemuFailed {
                reason: None,
                status: killed(11)
            }
        );
        assert_eq!(
            outcome.to_string(),
            "QEMU was killed by signal 11 before the guest shut down"
        );
        let other = events(Some(ShutdownReason::Other("host-signal".into())), false);
        assert_eq!(
            other.outcome(exit(0)).to_string(),
            "QEMU exited with status 0 (shutdown reason host-signal)"
        );
    }

    #[test]
    fn a_vm_paused_by_a_kvm_internal_error_is_ended_and_reported() {
        let mut ev = Events::default();
        assert_eq!(ev.record(Message::Stop), Some(Action::QueryStatus));
        assert_eq!(ev.record(Message::Status("running".into())), None);
        assert_eq!(
            ev.record(Message::Status("internal-error".into())),
            Some(Action::Kill)
        );
        assert_eq!(
            ev.outcome(killed(9)).to_string(),
            "QEMU was killed by signal 9 (the VM stopped in state internal-error)"
        );
    }

    #[test]
    fn the_first_shutdown_reason_wins() {
        let mut ev = Events::default();
        ev.record(Message::Shutdown(ShutdownReason::GuestShutdown));
        ev.record(Message::Shutdown(ShutdownReason::HostQuit));
        assert_eq!(ev.outcome(exit(0)), RunOutcome::PoweredOff);
    }

    #[test]
    fn a_missing_image_json_says_to_run_hafen_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_image(dir.path()).expect_err("no image.json");
        let text = err.to_string();
        assert!(text.contains("image.json"), "{text}");
        assert!(text.contains("hafen build"), "{text}");
        assert!(std::error::Error::source(&err).is_some(), "cause kept");
    }

    #[test]
    fn a_malformed_image_json_names_the_file_and_says_to_rebuild() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("image.json"), "{ nope").expect("write");
        let err = read_image(dir.path()).expect_err("malformed");
        let text = err.to_string();
        assert!(text.contains("image.json is malformed"), "{text}");
        assert!(text.contains("hafen build"), "{text}");
        // Unknown fields are refused too (deny_unknown_fields).
        std::fs::write(
            dir.path().join("image.json"),
            r#"{"name":"x","kernel":"k","initrd":"i","memory_mib":64,"extra":1}"#,
        )
        .expect("write");
        assert!(matches!(
            read_image(dir.path()),
            Err(Error::ParseImage { .. })
        ));
    }

    #[test]
    fn a_missing_kernel_or_initrd_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("image.json"),
            r#"{"name":"x","kernel":"vmlinux","initrd":"initrd.lz4","memory_mib":64}"#,
        )
        .expect("write");
        let err = read_image(dir.path()).expect_err("no kernel");
        assert!(err.to_string().contains("vmlinux, named by"), "{err}");
        std::fs::write(dir.path().join("vmlinux"), "").expect("write");
        let err = read_image(dir.path()).expect_err("no initrd");
        assert!(err.to_string().contains("initrd.lz4, named by"), "{err}");
        std::fs::write(dir.path().join("initrd.lz4"), "").expect("write");
        let info = read_image(dir.path()).expect("complete");
        assert_eq!(info.memory_mib, 64);
    }
}
