//! Starting one container: new namespaces, an overlay root over the image,
//! the spec's mounts, a minimal /dev, pivot_root, then exec.
//!
//! Everything that can be prepared is prepared in the parent ([`Plan`]); the
//! cloned child runs the numbered steps in [`child`] and, on failure, sends a
//! structured [`StartError`] (step, path, errno) back over a close-on-exec
//! pipe. End of file on that pipe without a message means exec succeeded.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use hafen_proto::annotations;
use rustix::fs::{FileType, Mode};
use rustix::mount::{mount, MountFlags};

use crate::bundle::Bundle;
use crate::sys::{self, CloneResult};

/// The step of container start-up that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// Setting up stdin, stdout and stderr.
    Stdio = 1,
    /// Making every mount private to the container.
    MakePrivate,
    /// Mounting the tmpfs that holds the overlay's upper layer.
    Scratch,
    /// Mounting the overlay root.
    Overlay,
    /// Creating a mount point inside the root.
    MountPoint,
    /// Mounting one of the spec's mounts.
    Mount,
    /// Creating a device node or /dev link.
    Device,
    /// Setting the hostname.
    Hostname,
    /// pivot_root into the new root.
    PivotRoot,
    /// Detaching the old root.
    DetachOldRoot,
    /// Remounting the root read-only.
    ReadonlyRoot,
    /// Masking a path.
    MaskPath,
    /// Making a path read-only.
    ReadonlyPath,
    /// Changing to the working directory.
    Cwd,
    /// Switching user and groups.
    Identity,
    /// Executing the command.
    Exec,
}

impl Step {
    fn from_u8(value: u8) -> Option<Step> {
        const ALL: [Step; 16] = [
            Step::Stdio,
            Step::MakePrivate,
            Step::Scratch,
            Step::Overlay,
            Step::MountPoint,
            Step::Mount,
            Step::Device,
            Step::Hostname,
            Step::PivotRoot,
            Step::DetachOldRoot,
            Step::ReadonlyRoot,
            Step::MaskPath,
            Step::ReadonlyPath,
            Step::Cwd,
            Step::Identity,
            Step::Exec,
        ];
        ALL.into_iter().find(|s| *s as u8 == value)
    }

    fn describe(self) -> &'static str {
        match self {
            Step::Stdio => "set up stdio",
            Step::MakePrivate => "make mounts private",
            Step::Scratch => "mount scratch tmpfs",
            Step::Overlay => "mount overlay root",
            Step::MountPoint => "create mount point",
            Step::Mount => "mount",
            Step::Device => "create device",
            Step::Hostname => "set hostname",
            Step::PivotRoot => "pivot_root",
            Step::DetachOldRoot => "detach old root",
            Step::ReadonlyRoot => "make root read-only",
            Step::MaskPath => "mask",
            Step::ReadonlyPath => "make read-only",
            Step::Cwd => "change directory to",
            Step::Identity => "switch to user",
            Step::Exec => "exec",
        }
    }
}

/// Why a container did not start.
#[derive(Debug)]
pub enum StartError {
    /// The bundle asks for something this runtime cannot do.
    Spec(String),
    /// A system call in the parent failed.
    Parent {
        what: &'static str,
        source: io::Error,
    },
    /// A step in the container's child process failed.
    Child {
        step: Step,
        path: String,
        source: io::Error,
    },
}

impl StartError {
    /// Exit status conventions: 127 for a command that does not exist, 126 otherwise.
    fn exit_code(step: Step, errno: i32) -> i32 {
        if step == Step::Exec && errno == libc::ENOENT {
            127
        } else {
            126
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Spec(msg) => write!(f, "unsupported config: {msg}"),
            StartError::Parent { what, source } => write!(f, "{what}: {source}"),
            StartError::Child {
                step: Step::Exec,
                path,
                source,
            } if source.raw_os_error() == Some(libc::ENOENT) => {
                write!(f, "exec {path}: command not found in the container")
            }
            StartError::Child { step, path, source } => {
                write!(f, "{} {path}: {source}", step.describe())
            }
        }
    }
}

impl std::error::Error for StartError {}

/// A container that has been created and exec'd.
#[derive(Debug)]
pub struct Started {
    /// Its init process, as seen from PID 1.
    pub pid: libc::pid_t,
    /// Read end of the pipe that carries its stdout and stderr.
    pub output: OwnedFd,
}

/// One mount, fully resolved before clone.
#[derive(Debug)]
struct PlannedMount {
    destination: String,
    target: CString,
    source: CString,
    fstype: Option<CString>,
    flags: MountFlags,
    data: Option<CString>,
    /// A bind mount with flags (ro, nosuid...) needs a second, remounting call.
    remount_flags: Option<MountFlags>,
    propagation: Option<MountFlags>,
    file_target: bool,
}

/// Everything the child needs, prepared in the parent.
#[derive(Debug)]
struct Plan {
    clone_flags: libc::c_int,
    rootfs: String,
    rootfs_c: CString,
    scratch: String,
    upper: String,
    work: String,
    overlay_data: CString,
    mounts: Vec<PlannedMount>,
    make_dev: bool,
    hostname: Option<Vec<u8>>,
    readonly_root: bool,
    masked: Vec<String>,
    readonly_paths: Vec<String>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    exec_candidates: Vec<CString>,
    program: String,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// Where each container's private scratch tmpfs (overlay upper and work dirs) is mounted.
const SCRATCH_ROOT: &str = "/run/hafen/containers";

fn spec_error(msg: impl Into<String>) -> StartError {
    StartError::Spec(msg.into())
}

fn cstring(what: &str, s: impl AsRef<[u8]>) -> Result<CString, StartError> {
    CString::new(s.as_ref()).map_err(|_| spec_error(format!("{what} contains a NUL byte")))
}

/// Maps a spec mount option to a flag; `Err(())` means it is filesystem data.
fn mount_option(option: &str) -> Result<(MountFlags, bool), ()> {
    // (flag, set?) — `false` clears the flag.
    let pair = match option {
        "ro" => (MountFlags::RDONLY, true),
        "rw" => (MountFlags::RDONLY, false),
        "nosuid" => (MountFlags::NOSUID, true),
        "suid" => (MountFlags::NOSUID, false),
        "nodev" => (MountFlags::NODEV, true),
        "dev" => (MountFlags::NODEV, false),
        "noexec" => (MountFlags::NOEXEC, true),
        "exec" => (MountFlags::NOEXEC, false),
        "sync" => (MountFlags::SYNCHRONOUS, true),
        "async" => (MountFlags::SYNCHRONOUS, false),
        "dirsync" => (MountFlags::DIRSYNC, true),
        "noatime" => (MountFlags::NOATIME, true),
        "atime" => (MountFlags::NOATIME, false),
        "nodiratime" => (MountFlags::NODIRATIME, true),
        "diratime" => (MountFlags::NODIRATIME, false),
        "relatime" => (MountFlags::RELATIME, true),
        "norelatime" => (MountFlags::RELATIME, false),
        "strictatime" => (MountFlags::STRICTATIME, true),
        "nostrictatime" => (MountFlags::STRICTATIME, false),
        "bind" => (MountFlags::BIND, true),
        "rbind" => (MountFlags::BIND.union(MountFlags::REC), true),
        _ => return Err(()),
    };
    Ok(pair)
}

fn propagation_option(option: &str) -> Option<MountFlags> {
    let bits = match option {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    };
    Some(MountFlags::from_bits_retain(bits as u32))
}

/// Joins an absolute in-container path onto the root, refusing `..`.
fn under_root(root: &str, path: &str, what: &str) -> Result<String, StartError> {
    if !path.starts_with('/') {
        return Err(spec_error(format!(
            "{what} {path:?} is not an absolute path"
        )));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(spec_error(format!("{what} {path:?} contains \"..\"")));
    }
    Ok(format!(
        "{}{}",
        root.trim_end_matches('/'),
        path.trim_end_matches('/')
    ))
}

impl Plan {
    fn new(bundle: &Bundle) -> Result<Plan, StartError> {
        let spec = &bundle.spec;
        let process = spec
            .process
            .as_ref()
            .ok_or_else(|| spec_error("config.json has no process"))?;
        if process.args.is_empty() {
            return Err(spec_error("process.args is empty"));
        }
        if process.terminal {
            return Err(spec_error("process.terminal = true is not supported yet"));
        }
        let root = spec
            .root
            .as_ref()
            .ok_or_else(|| spec_error("config.json has no root"))?;
        let rootfs_path = if Path::new(&root.path).is_absolute() {
            PathBuf::from(&root.path)
        } else {
            bundle.dir.join(&root.path)
        };
        let rootfs = rootfs_path
            .to_str()
            .ok_or_else(|| spec_error("root.path is not UTF-8"))?
            .trim_end_matches('/')
            .to_owned();

        // Namespaces.
        let mut clone_flags = 0;
        let linux = spec.linux.clone().unwrap_or_default();
        for ns in &linux.namespaces {
            if ns.path.is_some() {
                return Err(spec_error(format!(
                    "joining an existing {} namespace is not supported yet",
                    ns.kind
                )));
            }
            clone_flags |= match ns.kind.as_str() {
                "pid" => libc::CLONE_NEWPID,
                "mount" => libc::CLONE_NEWNS,
                "uts" => libc::CLONE_NEWUTS,
                "ipc" => libc::CLONE_NEWIPC,
                "network" => libc::CLONE_NEWNET,
                "cgroup" => libc::CLONE_NEWCGROUP,
                "user" => return Err(spec_error("user namespaces are not supported yet")),
                other => return Err(spec_error(format!("unknown namespace type {other:?}"))),
            };
        }
        if clone_flags & libc::CLONE_NEWNS == 0 {
            return Err(spec_error(
                "a mount namespace is required (linux.namespaces has no \"mount\")",
            ));
        }

        // Overlay root: image layers (read-only) under a per-start tmpfs upper layer.
        let lower = match spec.annotation(annotations::LOWER_DIRS) {
            Some(dirs) if !dirs.is_empty() => dirs.to_owned(),
            _ => rootfs.clone(),
        };
        for dir in lower.split(':') {
            if !Path::new(dir).is_dir() {
                return Err(spec_error(format!("image directory {dir} does not exist")));
            }
        }
        let scratch = format!("{SCRATCH_ROOT}/{}", bundle.name);
        let upper = format!("{scratch}/upper");
        let work = format!("{scratch}/work");
        let overlay_data = cstring(
            "lower dirs",
            format!("lowerdir={lower},upperdir={upper},workdir={work}"),
        )?;

        // Mounts.
        let mut mounts = Vec::new();
        let mut make_dev = false;
        for m in &spec.mounts {
            let target = under_root(&rootfs, &m.destination, "mount destination")?;
            let mut flags = MountFlags::empty();
            let mut data = Vec::new();
            let mut propagation = None;
            for option in &m.options {
                if let Some(p) = propagation_option(option) {
                    propagation = Some(p);
                } else {
                    match mount_option(option) {
                        Ok((flag, true)) => flags |= flag,
                        Ok((flag, false)) => flags &= !flag,
                        Err(()) => data.push(option.as_str()),
                    }
                }
            }
            let kind = m.kind.as_deref().unwrap_or("");
            let bind = kind == "bind" || flags.contains(MountFlags::BIND);
            if bind {
                flags |= MountFlags::BIND;
            }
            let mut source = m.source.clone().unwrap_or_else(|| kind.to_owned());
            let mut file_target = false;
            if bind {
                let src = if Path::new(&source).is_absolute() {
                    PathBuf::from(&source)
                } else {
                    bundle.dir.join(&source)
                };
                let meta = std::fs::metadata(&src).map_err(|e| {
                    spec_error(format!(
                        "bind source {} for {}: {e}",
                        src.display(),
                        m.destination
                    ))
                })?;
                file_target = !meta.is_dir();
                source = src.to_string_lossy().into_owned();
            }
            if m.destination == "/dev" && kind == "tmpfs" {
                make_dev = true;
            }
            let remount_flags = (bind && !(flags - MountFlags::BIND - MountFlags::REC).is_empty())
                .then(|| flags - MountFlags::REC);
            mounts.push(PlannedMount {
                destination: m.destination.clone(),
                target: cstring("mount destination", &target)?,
                source: cstring("mount source", &source)?,
                fstype: if bind {
                    None
                } else {
                    Some(cstring("mount type", kind)?)
                },
                flags: if bind {
                    MountFlags::BIND | (flags & MountFlags::REC)
                } else {
                    flags
                },
                data: if data.is_empty() || bind {
                    None
                } else {
                    Some(cstring("mount options", data.join(","))?)
                },
                remount_flags,
                propagation,
                file_target,
            });
        }

        // Process.
        let cwd = cstring("process.cwd", &process.cwd)?;
        if !process.cwd.starts_with('/') {
            return Err(spec_error(format!(
                "process.cwd {:?} is not absolute",
                process.cwd
            )));
        }
        let program = process.args[0].clone();
        let path_var = process
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let exec_candidates = if program.contains('/') {
            vec![cstring("process.args[0]", &program)?]
        } else {
            path_var
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cstring("PATH", format!("{}/{program}", d.trim_end_matches('/'))))
                .collect::<Result<_, _>>()?
        };
        let argv = process
            .args
            .iter()
            .map(|a| cstring("process.args", a))
            .collect::<Result<_, _>>()?;
        let envp = process
            .env
            .iter()
            .map(|e| cstring("process.env", e))
            .collect::<Result<_, _>>()?;

        Ok(Plan {
            clone_flags,
            rootfs_c: cstring("root.path", &rootfs)?,
            rootfs,
            scratch,
            upper,
            work,
            overlay_data,
            mounts,
            make_dev,
            hostname: (clone_flags & libc::CLONE_NEWUTS != 0).then(|| {
                spec.hostname
                    .clone()
                    .unwrap_or_else(|| bundle.name.clone())
                    .into_bytes()
            }),
            readonly_root: root.readonly,
            masked: linux.masked_paths.clone(),
            readonly_paths: linux.readonly_paths.clone(),
            cwd,
            uid: process.user.uid,
            gid: process.user.gid,
            groups: process.user.additional_gids.clone(),
            exec_candidates,
            program,
            argv,
            envp,
        })
    }
}

/// Creates and starts the container described by `bundle`.
pub fn start(bundle: &Bundle) -> Result<Started, StartError> {
    let plan = Plan::new(bundle)?;
    let parent = |what: &'static str| move |source: io::Error| StartError::Parent { what, source };
    crate::mount::mkdir_all(&plan.scratch, 0o700).map_err(parent("create scratch directory"))?;
    crate::mount::mkdir_all(&plan.rootfs, 0o755).map_err(parent("create root directory"))?;
    let null = std::fs::File::open("/dev/null").map_err(parent("open /dev/null"))?;
    let (out_r, out_w) = sys::pipe().map_err(parent("create output pipe"))?;
    let (err_r, err_w) = sys::pipe().map_err(parent("create error pipe"))?;

    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp: Vec<*const libc::c_char> = plan
        .envp
        .iter()
        .map(|e| e.as_ptr())
        .chain([std::ptr::null()])
        .collect();

    // SAFETY: hafen-init is single-threaded; the child below only makes
    // system calls on data prepared above, then execs or exits.
    match unsafe { sys::clone_process(plan.clone_flags) }.map_err(parent("clone"))? {
        CloneResult::Child => {
            drop(out_r);
            drop(err_r);
            let (step, path, errno) =
                child(&plan, null.as_raw_fd(), out_w.as_raw_fd(), &argv, &envp);
            report_and_exit(err_w.as_raw_fd(), step, &path, errno)
        }
        CloneResult::Parent(pid) => {
            drop(out_w);
            drop(err_w);
            drop(null);
            match read_child_error(&err_r) {
                None => {
                    sys::set_nonblocking(out_r.as_raw_fd())
                        .map_err(parent("set output pipe non-blocking"))?;
                    Ok(Started { pid, output: out_r })
                }
                // The child has exited (or is about to); the reaper collects it.
                Some(err) => Err(err),
            }
        }
    }
}

/// Sends a failed step to the parent and exits with 126/127.
fn report_and_exit(fd: libc::c_int, step: Step, path: &str, errno: i32) -> ! {
    let mut msg = Vec::with_capacity(8 + path.len());
    msg.push(step as u8);
    msg.extend_from_slice(&errno.to_le_bytes());
    let len = path.len().min(u16::MAX as usize);
    msg.extend_from_slice(&(len as u16).to_le_bytes());
    msg.extend_from_slice(&path.as_bytes()[..len]);
    let _ = sys::write_all(fd, &msg);
    sys::exit_now(StartError::exit_code(step, errno))
}

/// Reads the child's error message; `None` means the pipe closed empty, i.e. exec succeeded.
fn read_child_error(fd: &OwnedFd) -> Option<StartError> {
    let mut msg = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match sys::read(fd.as_raw_fd(), &mut buf) {
            Ok(Some(0)) => break,
            Ok(Some(n)) => msg.extend_from_slice(&buf[..n]),
            Ok(None) => continue,
            Err(source) => {
                return Some(StartError::Parent {
                    what: "read from the container's error pipe",
                    source,
                })
            }
        }
    }
    decode_child_error(&msg)
}

fn decode_child_error(msg: &[u8]) -> Option<StartError> {
    let (&step, rest) = msg.split_first()?;
    let malformed = || StartError::Parent {
        what: "decode the container's error report",
        source: io::Error::from(io::ErrorKind::InvalidData),
    };
    let (Some(errno), Some(len)) = (rest.get(..4), rest.get(4..6)) else {
        return Some(malformed());
    };
    let errno = i32::from_le_bytes([errno[0], errno[1], errno[2], errno[3]]);
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    let path = rest
        .get(6..6 + len)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let Some(step) = Step::from_u8(step) else {
        return Some(malformed());
    };
    Some(StartError::Child {
        step,
        path,
        source: io::Error::from_raw_os_error(errno),
    })
}

type ChildResult = (Step, String, i32);

fn fail(step: Step, path: &str) -> impl FnOnce(rustix::io::Errno) -> ChildResult + '_ {
    move |e| (step, path.to_owned(), e.raw_os_error())
}

fn fail_io(step: Step, path: &str) -> impl FnOnce(io::Error) -> ChildResult + '_ {
    move |e| (step, path.to_owned(), e.raw_os_error().unwrap_or(libc::EIO))
}

/// Creates the mount point `target` under `root` without following symlinks
/// the image may have planted on the way.
fn make_mount_point(root: &str, destination: &str, file: bool) -> Result<(), ChildResult> {
    let mut path = root.to_owned();
    let parts: Vec<&str> = destination.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        path.push('/');
        path.push_str(part);
        let last = i + 1 == parts.len();
        match rustix::fs::lstat(path.as_str()) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                return Err((Step::MountPoint, destination.to_owned(), libc::ELOOP));
            }
            Ok(_) => {}
            Err(rustix::io::Errno::NOENT) if last && file => {
                rustix::fs::open(
                    path.as_str(),
                    rustix::fs::OFlags::CREATE
                        | rustix::fs::OFlags::WRONLY
                        | rustix::fs::OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )
                .map_err(fail(Step::MountPoint, destination))?;
            }
            Err(rustix::io::Errno::NOENT) => {
                rustix::fs::mkdir(path.as_str(), Mode::from_raw_mode(0o755))
                    .map_err(fail(Step::MountPoint, destination))?;
            }
            Err(e) => return Err(fail(Step::MountPoint, destination)(e)),
        }
    }
    Ok(())
}

/// The device nodes every container gets in its /dev tmpfs.
const DEVICES: &[(&str, u32, u32, u32)] = &[
    ("null", 1, 3, 0o666),
    ("zero", 1, 5, 0o666),
    ("full", 1, 7, 0o666),
    ("random", 1, 8, 0o666),
    ("urandom", 1, 9, 0o666),
    ("tty", 5, 0, 0o666),
];

const DEV_LINKS: &[(&str, &str)] = &[
    ("pts/ptmx", "ptmx"),
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("/proc/kcore", "core"),
];

fn make_devices(rootfs: &str) -> Result<(), ChildResult> {
    for &(name, major, minor, mode) in DEVICES {
        let path = format!("{rootfs}/dev/{name}");
        match rustix::fs::mknodat(
            rustix::fs::CWD,
            path.as_str(),
            FileType::CharacterDevice,
            Mode::from_raw_mode(mode),
            rustix::fs::makedev(major, minor),
        ) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err((Step::Device, format!("/dev/{name}"), e.raw_os_error())),
        }
        // mknod applies the umask; the spec's modes are exact.
        rustix::fs::chmod(path.as_str(), Mode::from_raw_mode(mode))
            .map_err(|e| (Step::Device, format!("/dev/{name}"), e.raw_os_error()))?;
    }
    for &(target, name) in DEV_LINKS {
        let path = format!("{rootfs}/dev/{name}");
        match rustix::fs::symlink(target, path.as_str()) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err((Step::Device, format!("/dev/{name}"), e.raw_os_error())),
        }
    }
    Ok(())
}

/// The container's side of [`start`]: runs the steps in order and returns
/// only when one failed.
fn child(
    plan: &Plan,
    null: libc::c_int,
    out: libc::c_int,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ChildResult {
    match child_steps(plan, null, out) {
        Err(failure) => failure,
        Ok(()) => {
            // Step 16: exec, trying each PATH candidate like execvp does.
            let mut first_error = libc::ENOENT;
            for candidate in &plan.exec_candidates {
                let err = sys::execve(candidate, argv, envp)
                    .raw_os_error()
                    .unwrap_or(libc::ENOENT);
                if err != libc::ENOENT && err != libc::ENOTDIR && first_error == libc::ENOENT {
                    first_error = err;
                }
            }
            (Step::Exec, plan.program.clone(), first_error)
        }
    }
}

fn child_steps(plan: &Plan, null: libc::c_int, out: libc::c_int) -> Result<(), ChildResult> {
    // 1. A clean signal state (PID 1 blocks signals for its signalfd), our
    //    own session, stdin from /dev/null, stdout and stderr to PID 1's pipe.
    sys::SigSet::of(&[])
        .set_mask()
        .map_err(fail_io(Step::Stdio, "signal mask"))?;
    sys::reset_signal_dispositions();
    sys::setsid().map_err(fail_io(Step::Stdio, "setsid"))?;
    sys::dup2(null, 0).map_err(fail_io(Step::Stdio, "stdin"))?;
    sys::dup2(out, 1).map_err(fail_io(Step::Stdio, "stdout"))?;
    sys::dup2(out, 2).map_err(fail_io(Step::Stdio, "stderr"))?;

    // 2. Nothing we mount may propagate back to PID 1's namespace.
    let private = MountFlags::from_bits_retain((libc::MS_PRIVATE | libc::MS_REC) as u32);
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::from_bits_retain(private.bits()),
    )
    .map_err(fail(Step::MakePrivate, "/"))?;

    // 3. A private tmpfs for the overlay's upper and work directories; it
    //    disappears with the mount namespace.
    mount(
        "tmpfs",
        plan.scratch.as_str(),
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"mode=0700"),
    )
    .map_err(fail(Step::Scratch, &plan.scratch))?;
    for dir in [&plan.upper, &plan.work] {
        rustix::fs::mkdir(dir.as_str(), Mode::from_raw_mode(0o755))
            .map_err(fail(Step::Scratch, dir))?;
    }

    // 4. The overlay root.
    mount(
        "overlay",
        plan.rootfs_c.as_c_str(),
        "overlay",
        MountFlags::empty(),
        Some(plan.overlay_data.as_c_str()),
    )
    .map_err(fail(Step::Overlay, &plan.rootfs))?;

    // 5. The spec's mounts, in order.
    for m in &plan.mounts {
        make_mount_point(&plan.rootfs, &m.destination, m.file_target)?;
        let fstype = m.fstype.as_deref().unwrap_or(c"");
        mount(
            m.source.as_c_str(),
            m.target.as_c_str(),
            fstype,
            m.flags,
            m.data.as_deref(),
        )
        .map_err(fail(Step::Mount, &m.destination))?;
        if let Some(flags) = m.remount_flags {
            let remount =
                MountFlags::from_bits_retain(libc::MS_REMOUNT as u32) | flags | MountFlags::BIND;
            mount(c"", m.target.as_c_str(), c"", remount, None)
                .map_err(fail(Step::Mount, &m.destination))?;
        }
        if let Some(p) = m.propagation {
            rustix::mount::mount_change(
                m.target.as_c_str(),
                rustix::mount::MountPropagationFlags::from_bits_retain(p.bits()),
            )
            .map_err(fail(Step::Mount, &m.destination))?;
        }
    }

    // 6. A minimal /dev when the spec mounts a tmpfs there.
    if plan.make_dev {
        make_devices(&plan.rootfs)?;
    }

    // 7. Hostname, in the container's UTS namespace.
    if let Some(name) = &plan.hostname {
        rustix::system::sethostname(name).map_err(fail(Step::Hostname, "hostname"))?;
    }

    // 8. pivot_root into the overlay, stacking the old root on top of the
    //    new one, then detach it: nothing of PID 1's tree stays reachable.
    rustix::process::chdir(plan.rootfs_c.as_c_str())
        .map_err(fail(Step::PivotRoot, &plan.rootfs))?;
    rustix::process::pivot_root(".", ".").map_err(fail(Step::PivotRoot, &plan.rootfs))?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)
        .map_err(fail(Step::DetachOldRoot, "/"))?;
    rustix::process::chdir("/").map_err(fail(Step::PivotRoot, "/"))?;

    // 9. Read-only root, masked and read-only paths.
    if plan.readonly_root {
        let flags = MountFlags::from_bits_retain(libc::MS_REMOUNT as u32)
            | MountFlags::BIND
            | MountFlags::RDONLY;
        mount(c"", c"/", c"", flags, None).map_err(fail(Step::ReadonlyRoot, "/"))?;
    }
    for path in &plan.masked {
        mask_path(path)?;
    }
    for path in &plan.readonly_paths {
        readonly_path(path)?;
    }

    // 10. Working directory, then identity (last: it drops privileges).
    rustix::process::chdir(plan.cwd.as_c_str()).map_err(|e| {
        (
            Step::Cwd,
            plan.cwd.to_string_lossy().into_owned(),
            e.raw_os_error(),
        )
    })?;
    sys::set_identity(plan.uid, plan.gid, &plan.groups).map_err(|e| {
        (
            Step::Identity,
            format!("{}:{}", plan.uid, plan.gid),
            e.raw_os_error().unwrap_or(libc::EPERM),
        )
    })?;
    Ok(())
}

fn mask_path(path: &str) -> Result<(), ChildResult> {
    let st = match rustix::fs::lstat(path) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(fail(Step::MaskPath, path)(e)),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        mount("tmpfs", path, "tmpfs", MountFlags::RDONLY, None).map_err(fail(Step::MaskPath, path))
    } else {
        rustix::mount::mount_bind("/dev/null", path).map_err(fail(Step::MaskPath, path))
    }
}

fn readonly_path(path: &str) -> Result<(), ChildResult> {
    match rustix::mount::mount_bind_recursive(path, path) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(fail(Step::ReadonlyPath, path)(e)),
    }
    let flags = MountFlags::from_bits_retain(libc::MS_REMOUNT as u32)
        | MountFlags::BIND
        | MountFlags::RDONLY
        | MountFlags::NOSUID
        | MountFlags::NODEV
        | MountFlags::NOEXEC;
    mount(c"", path, c"", flags, None).map_err(fail(Step::ReadonlyPath, path))
}

/// The name shown for a container's command in messages.
pub fn display_command(bundle: &Bundle) -> String {
    bundle
        .spec
        .process
        .as_ref()
        .map(|p| p.args.join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_error_round_trips_through_the_wire_format() {
        let mut msg = vec![Step::Exec as u8];
        msg.extend_from_slice(&libc::ENOENT.to_le_bytes());
        msg.extend_from_slice(&(7u16).to_le_bytes());
        msg.extend_from_slice(b"/bin/no");
        let err = decode_child_error(&msg).expect("an error");
        assert_eq!(
            err.to_string(),
            "exec /bin/no: command not found in the container"
        );
        assert!(
            decode_child_error(&[]).is_none(),
            "empty pipe means exec succeeded"
        );
        let truncated = decode_child_error(&[Step::Mount as u8, 1]).expect("an error");
        assert!(truncated.to_string().contains("decode"), "{truncated}");
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        assert_eq!(mount_option("nosuid"), Ok((MountFlags::NOSUID, true)));
        assert_eq!(mount_option("rw"), Ok((MountFlags::RDONLY, false)));
        assert_eq!(mount_option("mode=755"), Err(()));
        assert!(propagation_option("rprivate").is_some());
    }

    #[test]
    fn destinations_must_be_absolute_and_free_of_dotdot() {
        assert_eq!(under_root("/r", "/proc", "d").expect("ok"), "/r/proc");
        assert!(under_root("/r", "proc", "d").is_err());
        assert!(under_root("/r", "/a/../../etc", "d").is_err());
    }
}
