//! Boots a Hafen image in QEMU: `-M microvm` with the image's PVH kernel,
//! KVM when a probe boot works and TCG otherwise, the serial console on our
//! stdout, and a QMP socket through which a signal to `hafen run` becomes a
//! press of the guest's ACPI power button.

pub mod command;
pub mod qmp;
mod sys;

use std::fmt;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hafen_proto::image::{ImageInfo, IMAGE_INFO_FILE};

pub use command::Accelerator;
use command::Machine;
use qmp::{Message, Qmp, ShutdownReason};

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when a probe boot works, TCG otherwise.
    Auto,
    /// KVM, or fail.
    Kvm,
    /// Software emulation.
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
    /// The guest powered itself off.
    PoweredOff,
    /// The guest asked to reboot (Ctrl-Alt-Del, or a reboot request).
    Rebooted,
    /// The guest kernel panicked.
    Panicked,
    /// A second signal forced QEMU off before the guest finished.
    Forced,
    /// QEMU exited without the guest shutting down.
    QemuExited(String),
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
            RunOutcome::QemuExited(how) => write!(f, "QEMU {how} before the guest shut down"),
        }
    }
}

/// Running the VM failed.
#[derive(Debug)]
pub enum Error {
    /// `image.json` could not be read.
    ReadImage {
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `image.json` is malformed.
    ParseImage {
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A file the image names is missing.
    MissingFile {
        /// Which file.
        path: PathBuf,
    },
    /// KVM was required and does not work here.
    KvmUnavailable {
        /// What the probe saw.
        detail: String,
    },
    /// The state directory could not be made.
    StateDir {
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// QEMU could not be started.
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The QMP connection failed.
    Qmp {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Waiting for signals or QEMU failed.
    Wait(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ReadImage { path, .. } => {
                write!(
                    f,
                    "cannot read {}: is it an image directory written by `hafen build`?",
                    path.display()
                )
            }
            Error::ParseImage { path, .. } => write!(
                f,
                "{} is malformed; rebuild the image with `hafen build`",
                path.display()
            ),
            Error::MissingFile { path } => write!(
                f,
                "{} is missing; rebuild the image with `hafen build`",
                path.display()
            ),
            Error::KvmUnavailable { detail } => write!(
                f,
                "KVM does not work on this machine ({detail}); use --accel tcg or auto"
            ),
            Error::StateDir { path, .. } => {
                write!(f, "cannot create the VM state directory {}", path.display())
            }
            Error::Spawn { program, .. } => {
                write!(
                    f,
                    "cannot start {} (install it with scripts/setup.sh)",
                    program.display()
                )
            }
            Error::Qmp { socket, .. } => write!(f, "cannot talk to QEMU over {}", socket.display()),
            Error::Wait(_) => f.write_str("waiting for QEMU failed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ReadImage { source, .. }
            | Error::StateDir { source, .. }
            | Error::Spawn { source, .. } => Some(source),
            Error::Qmp { source, .. } | Error::Wait(source) => Some(source),
            Error::ParseImage { source, .. } => Some(source),
            Error::MissingFile { .. } | Error::KvmUnavailable { .. } => None,
        }
    }
}

/// Reads and checks an image directory's `image.json`.
pub fn read_image(dir: &Path) -> Result<ImageInfo, Error> {
    let path = dir.join(IMAGE_INFO_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::ReadImage {
        path: path.clone(),
        source,
    })?;
    let info: ImageInfo = serde_json::from_str(&text).map_err(|source| Error::ParseImage {
        path: path.clone(),
        source,
    })?;
    for file in std::iter::once(&info.kernel).chain(std::iter::once(&info.initrd)) {
        let p = dir.join(file);
        if !p.is_file() {
            return Err(Error::MissingFile { path: p });
        }
    }
    Ok(info)
}

/// The per-VM state directory: `$XDG_RUNTIME_DIR/hafen/vms/NAME-PID` (or under /run).
fn state_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run"));
    base.join("hafen/vms")
        .join(format!("{name}-{}", std::process::id()))
}

/// Removes state directories left by runs that were killed (their pid is gone).
fn remove_stale_state_dirs(vms: &Path) {
    let Ok(entries) = std::fs::read_dir(vms) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .rsplit_once('-')
            .and_then(|(_, p)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes the state directory when the run ends, however it ends.
struct StateDir(PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Boots the image and blocks until QEMU has exited.
pub fn run(opts: &RunOptions) -> Result<RunOutcome, Error> {
    let info = read_image(&opts.image)?;
    let kernel = opts.image.join(&info.kernel);
    let accel = match opts.accel {
        Accel::Tcg => Accelerator::Tcg,
        Accel::Kvm => match probe_kvm(&kernel) {
            Ok(()) => Accelerator::Kvm,
            Err(detail) => return Err(Error::KvmUnavailable { detail }),
        },
        Accel::Auto => match probe_kvm_cached(&kernel) {
            Ok(()) => Accelerator::Kvm,
            Err(_) => Accelerator::Tcg,
        },
    };
    eprintln!(
        "hafen: booting {} (accelerator: {}); Ctrl-C shuts it down",
        info.name,
        accel.name()
    );

    let state = StateDir(state_dir(&info.name));
    if let Some(vms) = state.0.parent() {
        remove_stale_state_dirs(vms);
    }
    std::fs::create_dir_all(&state.0).map_err(|source| Error::StateDir {
        path: state.0.clone(),
        source,
    })?;
    let qmp_socket = state.0.join("qmp.sock");
    // Under TCG the guest's TSC ticks at the host's rate, but calibrating it
    // against the emulated PIT fails now and then on a busy host, and the
    // guest then hangs at boot. Telling the kernel the rate avoids both the
    // hang and the calibration time.
    let mut extra = info.cmdline.clone();
    if accel == Accelerator::Tcg && !opts.append.iter().any(|w| w.starts_with("tsc_early_khz=")) {
        if let Some(khz) = sys::host_tsc_khz(Duration::from_millis(20)) {
            extra.push(format!("tsc_early_khz={khz}"));
        }
    }
    let machine = Machine {
        kernel,
        initrd: Some(opts.image.join(&info.initrd)),
        cmdline: command::kernel_cmdline(opts.verbose, &extra, &opts.append),
        memory_mib: opts.memory_mib.unwrap_or(info.memory_mib),
        cpus: opts.cpus.max(1),
        accel,
        qmp: Some(qmp_socket.clone()),
    };

    // Block the signals before QEMU exists, so none is lost in between.
    let signals = sys::block_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD])
        .map_err(Error::Wait)?;
    let program = command::qemu_binary();
    let mut cmd = Command::new(&program);
    cmd.args(command::arguments(&machine)).stdin(Stdio::null());
    let mut child = sys::spawn_qemu(&mut cmd).map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    let _ = std::fs::write(state.0.join("qemu.pid"), child.id().to_string());

    let mut qemu_status: Option<ExitStatus> = None;
    let connect_deadline = Instant::now() + Duration::from_secs(30);
    let mut qmp = match Qmp::connect(&qmp_socket, connect_deadline, || {
        matches!(child.try_wait(), Ok(None))
    }) {
        Ok(q) => Some(q),
        Err(source) => {
            // QEMU may have failed at start (it printed why on stderr).
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(RunOutcome::QemuExited(describe_exit(status)));
            }
            sys::kill(child.id());
            let _ = child.wait();
            return Err(Error::Qmp {
                socket: qmp_socket,
                source,
            });
        }
    };

    let mut shutdown: Option<ShutdownReason> = None;
    let mut requests = 0;
    let mut kill_at: Option<Instant> = None;
    while qemu_status.is_none() {
        let mut fds = vec![signals.as_raw_fd()];
        if let Some(q) = &qmp {
            fds.push(q.stream().as_raw_fd());
        }
        let timeout = kill_at
            .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as i32 + 1)
            .unwrap_or(-1);
        sys::poll_readable(&fds, timeout).map_err(Error::Wait)?;

        while let Some(sig) = sys::read_signal(&signals).map_err(Error::Wait)? {
            if sig == libc::SIGCHLD {
                continue;
            }
            requests += 1;
            if requests == 1 {
                eprintln!("hafen: shutting the guest down (press Ctrl-C again to force it off)");
                if let Some(q) = qmp.as_mut() {
                    if q.execute("system_powerdown").is_err() {
                        kill_at = Some(Instant::now());
                    }
                }
            } else if requests == 2 {
                eprintln!("hafen: forcing the VM off");
                if let Some(q) = qmp.as_mut() {
                    let _ = q.execute("quit");
                }
                kill_at = Some(Instant::now() + Duration::from_secs(3));
            }
        }
        if let Some(q) = qmp.as_mut() {
            match q.read_messages() {
                Ok(Some(messages)) => {
                    for m in messages {
                        match m {
                            Message::Shutdown(reason) => shutdown = shutdown.or(Some(reason)),
                            Message::Error(desc) => eprintln!("hafen: QEMU: {desc}"),
                            Message::Powerdown | Message::Other => {}
                        }
                    }
                }
                // QEMU closed QMP: it is exiting; stop polling the socket.
                Ok(None) | Err(_) => qmp = None,
            }
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            sys::kill(child.id());
            kill_at = None;
        }
        match child.try_wait() {
            Ok(Some(status)) => qemu_status = Some(status),
            Ok(None) if qmp.is_none() && kill_at.is_none() => {
                // QMP is gone; QEMU exits momentarily. Wait for it.
                qemu_status = Some(child.wait().map_err(Error::Wait)?);
            }
            Ok(None) => {}
            Err(e) => return Err(Error::Wait(e)),
        }
    }
    let status = qemu_status.map(describe_exit).unwrap_or_default();
    Ok(if requests >= 2 {
        RunOutcome::Forced
    } else {
        match shutdown {
            Some(ShutdownReason::GuestShutdown) => RunOutcome::PoweredOff,
            Some(ShutdownReason::GuestReset) => RunOutcome::Rebooted,
            Some(ShutdownReason::GuestPanic) => RunOutcome::Panicked,
            Some(ShutdownReason::HostQuit) => RunOutcome::Forced,
            Some(ShutdownReason::Other(reason)) => {
                RunOutcome::QemuExited(format!("stopped ({reason}), {status}"))
            }
            None => RunOutcome::QemuExited(status),
        }
    })
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "exited".to_owned(),
    }
}

/// Probes KVM once per host boot and remembers the answer under the runtime directory.
fn probe_kvm_cached(kernel: &Path) -> Result<(), String> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run"));
    let cache = base
        .join("hafen")
        .join(format!("kvm-probe-{}", boot_id.trim()));
    if let Ok(answer) = std::fs::read_to_string(&cache) {
        return match answer.strip_prefix("ok") {
            Some(_) => Ok(()),
            None => Err(answer),
        };
    }
    let result = probe_kvm(kernel);
    let _ = std::fs::create_dir_all(base.join("hafen"));
    let _ = std::fs::write(
        &cache,
        match &result {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.clone(),
        },
    );
    result
}

/// Boots the image's kernel under KVM with no init: if the guest runs, the
/// kernel reaches "no working init" and panics, which (with `panic=-1` and
/// `-no-reboot`) ends QEMU cleanly. Broken nested KVM fails at once instead.
pub fn probe_kvm(kernel: &Path) -> Result<(), String> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Err("/dev/kvm cannot be opened".into());
    }
    let machine = Machine {
        kernel: kernel.to_owned(),
        initrd: None,
        cmdline: "console=ttyS0 panic=-1 rdinit=/hafen-kvm-probe".into(),
        memory_mib: 128,
        cpus: 1,
        accel: Accelerator::Kvm,
        qmp: None,
    };
    let mut cmd = Command::new(command::qemu_binary());
    cmd.args(command::arguments(&machine))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = sys::spawn_qemu(&mut cmd).map_err(|e| format!("cannot start QEMU: {e}"))?;
    let read_all = |stream: Option<Box<dyn io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut s) = stream {
                let _ = s.read_to_end(&mut text);
            }
            text
        })
    };
    let stdout = read_all(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
    );
    let stderr = read_all(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
    );
    // A hung probe must not hang `hafen run`.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                sys::kill(child.id());
                let _ = child.wait();
                return Err("the probe boot hung".into());
            }
            Err(e) => return Err(format!("probe: {e}")),
        }
    };
    let output = std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    let console = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && console.contains("Kernel panic") {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .next()
            .unwrap_or("the probe boot failed")
            .trim()
            .to_owned();
        Err(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_json_errors_say_what_to_do() {
        let dir = std::env::temp_dir().join(format!("hafen-qemu-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let missing = read_image(&dir).expect_err("no image.json");
        assert!(missing.to_string().contains("hafen build"), "{missing}");
        std::fs::write(dir.join("image.json"), "{ nope").expect("write");
        let bad = read_image(&dir).expect_err("malformed");
        assert!(bad.to_string().contains("malformed"), "{bad}");
        std::fs::write(
            dir.join("image.json"),
            r#"{"name":"x","kernel":"vmlinux","initrd":"i.gz","memory_mib":64}"#,
        )
        .expect("write");
        let absent = read_image(&dir).expect_err("no kernel");
        assert!(
            absent.to_string().contains("vmlinux is missing"),
            "{absent}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
