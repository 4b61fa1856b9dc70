//! Boots a Hafen image in QEMU: `-M microvm` with the image's PVH kernel,
//! KVM when a probe boot works and TCG otherwise, the serial console on our
//! stdout, and a QMP socket through which a signal to `hafen run` becomes a
//! press of the guest's ACPI power button.
//!
//! [`run`] is `hafen run DIR`. While it runs, SIGINT, SIGTERM and SIGHUP are
//! caught: the first presses the power button, the second forces QEMU off.

pub mod client;
pub mod command;
pub mod disk;
pub mod kvm;
pub mod monitor;
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
use hafen_proto::net::{PortMapping, Protocol};

pub use command::{Accelerator, HostVolume};
use command::{Machine, Nic};
pub use kvm::ProbeError;
use qmp::{Message, Qmp, ShutdownReason};
use state::StateDir;

/// How long a graceful shutdown waits before pressing the power button again.
const REPRESS_AFTER: Duration = Duration::from_secs(1);

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
    /// The VM's name for the other verbs; the image's name when `None`.
    pub name: Option<String>,
    /// Talk to the guest's control port (the monitor); without it,
    /// `control.sock` is left to another client.
    pub control: bool,
    /// Size in bytes of the data disk when this run creates it; the
    /// image's `data_size` (else 1 GiB) when `None`.
    pub data_size: Option<u64>,
    /// Volumes backed by host directories instead of the data disk.
    pub host_volumes: Vec<HostVolume>,
    /// With [`run_detached`]: shut the VM down when the process that
    /// started it ends, however it ends (a build's VM must not outlive an
    /// interrupted or killed build).
    pub stop_with_caller: bool,
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
    /// The manifest's main container ended and the guest powered off.
    MainExited {
        /// Its status as a shell shows it (128+N for signal N).
        code: i32,
    },
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
        matches!(self, RunOutcome::PoweredOff | RunOutcome::MainExited { .. })
    }

    /// What `hafen run` exits with: the main container's status, 0 after
    /// another clean power-off, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunOutcome::MainExited { code } => *code,
            RunOutcome::PoweredOff => 0,
            _ => 1,
        }
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunOutcome::PoweredOff => f.write_str("guest powered off"),
            RunOutcome::Rebooted => f.write_str("guest rebooted (the run ends on a reboot)"),
            RunOutcome::Panicked => f.write_str("guest kernel panicked"),
            RunOutcome::Forced => f.write_str("VM forced off"),
            RunOutcome::MainExited { code } => write!(
                f,
                "main container exited with status {code}; guest powered off"
            ),
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
    /// `image.json`'s network settings are unusable.
    #[error("{}: network: {message}; rebuild the image with `hafen build`", .path.display())]
    Network {
        /// `image.json`'s path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A published port cannot be bound on the host; nothing was booted.
    #[error(
        "cannot publish host port {}:{}/{} for container {container} ({port}): {}",
        .port.host_ip, .port.host_port, .port.protocol, port_hint(.source)
    )]
    PortUnavailable {
        /// The container publishing it.
        container: String,
        /// The mapping.
        port: PortMapping,
        /// Why binding it failed.
        #[source]
        source: io::Error,
    },
    /// A `-v HOSTDIR:VOLUME` cannot be used.
    #[error("-v ...:{volume}: {why}")]
    HostVolume {
        /// The volume.
        volume: String,
        /// Why.
        why: String,
    },
    /// The VM's data disk could not be made ready.
    #[error("VM {vm}: {source}")]
    DataDisk {
        /// The VM's name.
        vm: String,
        /// Why.
        source: disk::DiskError,
    },
    /// The VM name is not one path component of letters, digits, `_.-`.
    #[error("{name:?} is not a VM name: use letters, digits, '_', '.' and '-', starting with a letter or digit")]
    BadName {
        /// The name.
        name: String,
    },
    /// A running VM has the name already.
    #[error("a VM named {name:?} is already running (hafen run pid {pid}); stop it (hafen stop {name}) or choose another --name")]
    NameInUse {
        /// The name.
        name: String,
        /// Its monitor's pid.
        pid: u32,
    },
    /// `hafen run -d` could not bring the VM up.
    #[error("hafen run -d: {message}")]
    Detach {
        /// What went wrong.
        message: String,
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
    let nic = network_card(&opts.image, &info)?;
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
    let name = vm_name(opts, &info)?;
    // `unless-stopped` containers stopped by hand when it last ran stay down.
    let held = disk::held(&name);
    if !held.is_empty() {
        extra.push(format!("hafen.held={}", held.join(",")));
    }
    let state = StateDir::create(&vms, &name, std::process::id())
        .map_err(|source| Error::StateDir { path: vms, source })?;
    state
        .write_ports(&nic.forwards)
        .map_err(|source| Error::StateDir {
            path: state.path().to_owned(),
            source,
        })?;
    let started_unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let (monitor, power) = monitor::Monitor::start(
        state.path(),
        hafen_proto::control::VmInfo {
            name: name.clone(),
            image: opts.image.display().to_string(),
            monitor_pid: std::process::id(),
            qemu_pid: 0,
            started_unix_ns,
            guest_boot_unix_ns: None,
            state: "booting".into(),
        },
        opts.control,
    )
    .map_err(|source| Error::StateDir {
        path: state.path().to_owned(),
        source,
    })?;
    let data_disk = if info.volumes.is_empty() {
        None
    } else {
        let size = opts
            .data_size
            .or(info.data_size)
            .unwrap_or(hafen_proto::layout::DEFAULT_DATA_SIZE);
        Some(
            disk::vm_dir(&name)
                .and_then(|dir| disk::prepare(&dir, size))
                .map_err(|source| Error::DataDisk {
                    vm: name.clone(),
                    source,
                })?,
        )
    };
    let host_volumes = check_host_volumes(&opts.host_volumes, &info)?;
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
        data_disk,
        host_volumes,
        nic: Some(nic),
    };
    let program = command::qemu_binary();
    let mut cmd = Command::new(&program);
    cmd.args(command::arguments(&machine))
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!(
        "hafen: booting {} ({}); Ctrl-C shuts it down",
        info.name,
        accel.name()
    );
    let mut child = sys::spawn_qemu(&mut cmd, Some(listener.as_raw_fd()))
        .map_err(|source| Error::Spawn { program, source })?;
    let qemu_stderr = child.stderr.take().map(QemuStderr::forward);
    let mut vm = Vm::new(child);
    monitor.set_qemu_pid(vm.pid);
    // Best effort: the pid file is for people and tools looking in.
    let _ = std::fs::write(state.pid_file(), format!("{}\n", vm.pid));
    let qmp = Qmp::connect(&socket).map_err(|source| Error::Qmp {
        pid: vm.pid,
        socket: socket.clone(),
        source,
    })?;
    // Our copy of the listener is no longer needed; QEMU holds its own.
    drop(listener);
    let outcome = vm.supervise(qmp, &signals, &power);
    let outcome = match (outcome, &qemu_stderr) {
        (Ok(o), Some(stderr)) => Ok(with_qemu_words(o, stderr.last_line())),
        (outcome, _) => outcome,
    };
    let main_exit = monitor.main_exit();
    drop(monitor);
    drop(state);
    match (outcome, main_exit) {
        (Ok(RunOutcome::PoweredOff), Some(status)) => Ok(RunOutcome::MainExited {
            code: status.code(),
        }),
        (outcome, _) => outcome,
    }
}

/// How long `hafen run -d` waits for the guest's control channel.
const DETACH_TIMEOUT: Duration = Duration::from_secs(180);

/// `hafen run -d`: starts the run in a background process of its own (the
/// VM's monitor, in a new session, its console in the state directory's
/// `console.log`) and returns the VM's name once the guest's control
/// channel answers.
///
/// Call it before any thread is started: it forks.
pub fn run_detached(opts: &RunOptions) -> Result<String, Error> {
    let info = read_image(&opts.image)?;
    // Refuse a taken port here, where the error reaches the terminal;
    // the detached run checks again before it starts QEMU.
    network_card(&opts.image, &info)?;
    let name = vm_name(opts, &info)?;
    let vms = state::vms_dir(&state::runtime_dir());
    let caller = std::process::id();
    // SAFETY: the caller has no other threads (documented); the child only
    // sets itself up and runs the monitor, as a fresh process would.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Detach {
            message: format!("fork: {}", io::Error::last_os_error()),
        });
    }
    if pid == 0 {
        if opts.stop_with_caller {
            sys::stop_with_parent(caller);
        }
        let code = detached_child(opts, &name, &vms);
        std::process::exit(code);
    }
    let deadline = Instant::now() + DETACH_TIMEOUT;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if done == pid {
            return Err(Error::Detach {
                message: format!(
                    "the VM stopped while booting ({}); run it in the foreground to see its console",
                    describe_exit(ExitStatus::from_raw(status))
                ),
            });
        }
        if let Ok(vm) = state::find_vm(&vms, &name) {
            if vm.pid == pid as u32 && client_ready(&vm) {
                return Ok(name);
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Detach {
                message: format!(
                    "the guest's control channel did not answer within {} s; the VM (hafen run pid {pid}) is still running: hafen kill {name}",
                    DETACH_TIMEOUT.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the VM's monitor says the guest has answered.
fn client_ready(vm: &state::VmDir) -> bool {
    client::Client::connect_to(vm)
        .and_then(|mut c| c.request(hafen_proto::control::Body::VmInfo))
        .is_ok_and(|body| {
            matches!(body, hafen_proto::control::Body::Vm(info) if info.guest_boot_unix_ns.is_some())
        })
}

/// The detached run, in the forked child: a session of its own, no
/// terminal, the console into the state directory.
fn detached_child(opts: &RunOptions, name: &str, vms: &Path) -> i32 {
    // SAFETY: setsid takes no arguments.
    unsafe { libc::setsid() };
    let dir = vms.join(state::dir_name(name, std::process::id()));
    let console = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(state::CONSOLE_LOG))
    });
    let null = std::fs::File::open("/dev/null");
    if let (Ok(console), Ok(null)) = (console, null) {
        // SAFETY: dup2 onto the standard descriptors with descriptors we own.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(console.as_raw_fd(), 1);
            libc::dup2(console.as_raw_fd(), 2);
        }
    }
    let mut opts = opts.clone();
    opts.name = Some(name.to_owned());
    match run(&opts) {
        Ok(outcome) => {
            eprintln!("hafen: {outcome}");
            outcome.exit_code()
        }
        Err(e) => {
            eprintln!("hafen: error: {e}");
            2
        }
    }
}

/// The VM's network card as the image describes it, once every published
/// port has been found free: each is bound on the host and let go again
/// before QEMU starts, so a taken one is an error naming it and its
/// container before anything boots (QEMU itself would only warn or fail
/// after the VM's state exists).
fn network_card(dir: &Path, info: &ImageInfo) -> Result<Nic, Error> {
    let subnet = info.network.subnet().map_err(|message| Error::Network {
        path: dir.join(IMAGE_INFO_FILE),
        message,
    })?;
    for published in &info.network.ports {
        check_port_free(&published.port).map_err(|source| Error::PortUnavailable {
            container: published.container.clone(),
            port: published.port,
            source,
        })?;
    }
    Ok(Nic {
        subnet,
        outbound: info.network.outbound,
        forwards: info.network.ports.clone(),
    })
}

/// Binds the host side of `port` and closes it again.
fn check_port_free(port: &PortMapping) -> io::Result<()> {
    let addr = std::net::SocketAddr::from((port.host_ip, port.host_port));
    match port.protocol {
        Protocol::Tcp => std::net::TcpListener::bind(addr).map(drop),
        Protocol::Udp => std::net::UdpSocket::bind(addr).map(drop),
    }
}

/// What to do about a host port that cannot be bound.
fn port_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            "another program uses it; stop that program or publish another host port, then rebuild"
        }
        io::ErrorKind::PermissionDenied => {
            "ports below 1024 need root (or CAP_NET_BIND_SERVICE); publish a higher host port"
        }
        io::ErrorKind::AddrNotAvailable => "this machine has no such address",
        _ => "it cannot be bound",
    }
}

/// The VM's name: `--name`, or the image's; one a running VM has is refused.
/// Each `-v` names a volume of the image and an existing host directory
/// (made absolute, as QEMU resolves it from its own directory).
fn check_host_volumes(given: &[HostVolume], info: &ImageInfo) -> Result<Vec<HostVolume>, Error> {
    let mut out: Vec<HostVolume> = Vec::new();
    for v in given {
        let bad = |why: String| Error::HostVolume {
            volume: v.name.clone(),
            why,
        };
        if !info.volumes.contains(&v.name) {
            return Err(bad(format!(
                "image {} has no such volume (its volumes: {})",
                info.name,
                if info.volumes.is_empty() {
                    "none".to_owned()
                } else {
                    info.volumes.join(", ")
                }
            )));
        }
        if out.iter().any(|o| o.name == v.name) {
            return Err(bad("given twice".to_owned()));
        }
        let dir =
            std::fs::canonicalize(&v.dir).map_err(|e| bad(format!("{}: {e}", v.dir.display())))?;
        if !dir.is_dir() {
            return Err(bad(format!("{} is not a directory", dir.display())));
        }
        out.push(HostVolume {
            dir,
            name: v.name.clone(),
            readonly: v.readonly,
        });
    }
    Ok(out)
}

fn vm_name(opts: &RunOptions, info: &ImageInfo) -> Result<String, Error> {
    let name = opts.name.clone().unwrap_or_else(|| info.name.clone());
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Err(Error::BadName { name });
    }
    let vms = state::vms_dir(&state::runtime_dir());
    // (A detached run made its own state directory already.)
    let others = state::list_vms(&vms)
        .into_iter()
        .find(|vm| vm.name == name && vm.pid != std::process::id());
    if let Some(running) = others {
        return Err(Error::NameInUse {
            name,
            pid: running.pid,
        });
    }
    Ok(name)
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
    fn supervise(
        &mut self,
        qmp: Qmp,
        signals: &sys::SignalPipe,
        power: &monitor::PowerRequests,
    ) -> Result<RunOutcome, Error> {
        let mut qmp = Some(qmp);
        let mut events = Events::default();
        let mut requests = 0u32;
        let mut kill_at: Option<Instant> = None;
        // When the power button was last pressed for a graceful shutdown.
        let mut pressed_at: Option<Instant> = None;
        loop {
            let caught = signals.take().map_err(|e| self.wait_error(e))?;
            // A CLI's `hafen stop VM` is a first signal, `hafen kill VM` a second.
            let asked: u32 = power
                .take()
                .into_iter()
                .map(|p| match p {
                    monitor::PowerRequest::Graceful => u32::from(requests == 0),
                    monitor::PowerRequest::Force => 2u32.saturating_sub(requests).max(1),
                })
                .sum();
            for _ in 0..caught.len() as u32 + asked {
                requests += 1;
                let now = Instant::now();
                match requests {
                    1 => {
                        eprintln!("hafen: shutting the guest down (Ctrl-C again forces it off)");
                        if send(&mut qmp, "system_powerdown") {
                            pressed_at = Some(now);
                        } else {
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
            // A press before the guest's PID 1 watches the button (the
            // kernel still booting, or PID 1 starting its first container)
            // is lost, so it is pressed again until the guest goes; PID 1
            // takes later presses as the same request.
            if requests == 1 && pressed_at.is_some_and(|t| t.elapsed() >= REPRESS_AFTER) {
                send(&mut qmp, "system_powerdown");
                pressed_at = Some(Instant::now());
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

            let mut fds: Vec<BorrowedFd<'_>> = vec![signals.fd(), power.fd()];
            fds.extend(qmp.as_ref().map(|q| q.stream().as_fd()));
            fds.extend(self.exited.as_ref().map(|fd| fd.as_fd()));
            let mut timeout = kill_at.map(|t| t.saturating_duration_since(Instant::now()));
            // No pidfd: notice QEMU's exit on a short timer. (The CLI's
            // power requests wake the loop through `power.fd()`.)
            let tick = if self.exited.is_none() {
                Duration::from_millis(50)
            } else {
                Duration::from_millis(100)
            };
            timeout = Some(timeout.map_or(tick, |t| t.min(tick)));
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

/// QEMU's stderr, passed on to ours line by line; the last line is kept,
/// so that a QEMU that fails on its own (a host forward it could not set
/// up) is reported in its own words.
struct QemuStderr {
    last: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl QemuStderr {
    fn forward(pipe: std::process::ChildStderr) -> QemuStderr {
        use std::io::{BufRead, Write};
        let last = std::sync::Arc::new(std::sync::Mutex::new(None));
        let keep = std::sync::Arc::clone(&last);
        let thread = std::thread::spawn(move || {
            let mut lines = io::BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match lines.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = io::stderr().lock().write_all(&line);
                        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                        if !text.is_empty() {
                            let mut slot = keep.lock().unwrap_or_else(|p| p.into_inner());
                            *slot = Some(text);
                        }
                    }
                }
            }
        });
        QemuStderr { last, thread }
    }

    /// The last line QEMU wrote, once it has exited: the pipe's end is
    /// awaited for at most a second (a process QEMU started could hold it).
    fn last_line(&self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A failure of QEMU's own, with nothing else to explain it, gets QEMU's
/// last words: "Could not set up host forwarding rule ..." when a
/// published port was taken between our check and QEMU's bind.
fn with_qemu_words(outcome: RunOutcome, last_line: Option<String>) -> RunOutcome {
    match (outcome, last_line) {
        (
            RunOutcome::QemuFailed {
                reason: None,
                status,
            },
            Some(line),
        ) => {
            let hint = if line.contains("host forwarding rule") {
                "; a published host port was taken after hafen run found it free: free it and run again"
            } else {
                ""
            };
            RunOutcome::QemuFailed {
                reason: Some(format!("{line}{hint}")),
                status,
            }
        }
        (outcome, _) => outcome,
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

    fn image_with_ports(ports: &[(&str, &str)]) -> ImageInfo {
        let mut info: ImageInfo =
            serde_json::from_str(r#"{"name":"x","kernel":"vmlinux","initrd":"i","memory_mib":64}"#)
                .expect("image.json");
        info.network.ports = ports
            .iter()
            .map(|(container, spec)| hafen_proto::net::PublishedPort {
                container: (*container).into(),
                address: "10.0.2.40".parse().expect("ip"),
                port: spec.parse().expect("spec"),
            })
            .collect();
        info
    }

    #[test]
    fn a_taken_host_port_is_refused_naming_it_and_its_container() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let free_udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let udp_port = free_udp.local_addr().expect("addr").port();
        drop(free_udp);
        // The same number over UDP is another port: free.
        let info = image_with_ports(&[("dns", &format!("{port}:53/udp"))]);
        let nic = network_card(Path::new("/img"), &info).expect("udp port is free");
        assert_eq!(nic.forwards.len(), 1);
        assert!(!nic.outbound);
        let info = image_with_ports(&[
            ("dns", &format!("{udp_port}:53/udp")),
            ("web", &format!("{port}:80")),
        ]);
        let err = network_card(Path::new("/img"), &info).expect_err("taken");
        let text = err.to_string();
        assert!(
            text.contains(&format!("host port 127.0.0.1:{port}/tcp for container web"))
                && text.contains("another program uses it"),
            "{text}"
        );
        assert!(matches!(
            err,
            Error::PortUnavailable { ref source, .. } if source.kind() == io::ErrorKind::AddrInUse
        ));
        // The wildcard address overlaps the taken loopback port.
        let info = image_with_ports(&[("web", &format!("0.0.0.0:{port}:80"))]);
        assert!(network_card(Path::new("/img"), &info).is_err());
        drop(taken);
        let info = image_with_ports(&[("web", &format!("{port}:80"))]);
        network_card(Path::new("/img"), &info).expect("free again");
    }

    #[test]
    fn a_bad_subnet_in_image_json_is_an_error_saying_to_rebuild() {
        let mut info = image_with_ports(&[]);
        info.network.prefix = 30;
        let err = network_card(Path::new("/img"), &info).expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("/img/image.json: network: 10.0.2.0/30")
                && err.to_string().contains("hafen build"),
            "{err}"
        );
    }

    #[test]
    fn qemus_own_failure_is_reported_in_its_words() {
        let line = "qemu-system-x86_64: -netdev user,...: Could not set up host forwarding rule 'tcp:127.0.0.1:8080-10.0.2.40:80'";
        let outcome = with_qemu_words(
            RunOutcome::QemuFailed {
                reason: None,
                status: exit(1),
            },
            Some(line.into()),
        );
        let text = outcome.to_string();
        assert!(
            text.starts_with("QEMU exited with status 1 (qemu-system-x86_64: -netdev")
                && text.contains("taken after hafen run found it free"),
            "{text}"
        );
        // Other outcomes, and failures explained otherwise, keep their words.
        assert_eq!(
            with_qemu_words(RunOutcome::PoweredOff, Some(line.into())),
            RunOutcome::PoweredOff
        );
        let explained = RunOutcome::QemuFailed {
            reason: Some("after the guest rebooted".into()),
            status: exit(1),
        };
        assert_eq!(
            with_qemu_words(explained.clone(), Some(line.into())),
            explained
        );
        let plain = RunOutcome::QemuFailed {
            reason: None,
            status: exit(1),
        };
        assert_eq!(with_qemu_words(plain.clone(), None), plain);
    }
}
