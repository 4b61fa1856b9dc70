//! The container runtime: turns an OCI runtime bundle into a running process
//! in new namespaces, with its own root, mounts, devices, limits and
//! privileges. System mode (PID 1) and `hafen-init runtime` share it.
//!
//! Everything that can be prepared is prepared in the parent ([`Plan`]); the
//! cloned child runs the numbered steps in [`child`] and, on failure, sends a
//! structured [`StartError`] (step, path, errno) back over a close-on-exec
//! pipe. End of file on that pipe without a message means exec succeeded.

pub mod caps;
pub mod cgroup;
mod child;
pub mod console;
pub mod devices;
pub mod exec;
pub mod hooks;
mod process;
pub mod procfs;
pub mod seccomp;

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use hafen_proto::annotations;
use hafen_proto::spec::{IdMapping, Linux, Spec};
use rustix::mount::MountFlags;

use crate::bundle::Bundle;
use crate::sys::{self, CloneResult};
use process::ProcessPlan;

/// The step of container start-up that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// Setting up stdin, stdout and stderr.
    Stdio = 1,
    /// Waiting for the parent (user namespace maps, oom score).
    Sync,
    /// Joining an existing namespace.
    JoinNamespace,
    /// Setting the root mount's propagation.
    Propagation,
    /// Mounting the tmpfs that holds the overlay's upper layer.
    Scratch,
    /// Mounting the root filesystem.
    Root,
    /// Creating a mount point inside the root.
    MountPoint,
    /// Mounting one of the spec's mounts.
    Mount,
    /// Creating a device node or /dev link.
    Device,
    /// Setting the hostname.
    Hostname,
    /// Setting the domain name.
    Domainname,
    /// pivot_root into the new root.
    PivotRoot,
    /// Detaching the old root.
    DetachOldRoot,
    /// Writing a sysctl.
    Sysctl,
    /// Remounting the root read-only.
    ReadonlyRoot,
    /// Masking a path.
    MaskPath,
    /// Making a path read-only.
    ReadonlyPath,
    /// Setting a resource limit.
    Rlimit,
    /// Changing to the working directory.
    Cwd,
    /// Dropping capabilities from the bounding set.
    Bounding,
    /// Switching user and groups.
    Identity,
    /// Setting the capability sets.
    Capabilities,
    /// Setting no_new_privs.
    NoNewPrivs,
    /// Installing the seccomp filter.
    Seccomp,
    /// Waiting to be started (`runtime start`).
    Gate,
    /// Executing the command.
    Exec,
    /// Running a `createContainer` or `startContainer` hook.
    Hook,
    /// Making the terminal and sending it over the console socket.
    Console,
}

impl Step {
    const ALL: [Step; 28] = [
        Step::Stdio,
        Step::Sync,
        Step::JoinNamespace,
        Step::Propagation,
        Step::Scratch,
        Step::Root,
        Step::MountPoint,
        Step::Mount,
        Step::Device,
        Step::Hostname,
        Step::Domainname,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::Sysctl,
        Step::ReadonlyRoot,
        Step::MaskPath,
        Step::ReadonlyPath,
        Step::Rlimit,
        Step::Cwd,
        Step::Bounding,
        Step::Identity,
        Step::Capabilities,
        Step::NoNewPrivs,
        Step::Seccomp,
        Step::Gate,
        Step::Exec,
        Step::Hook,
        Step::Console,
    ];

    fn from_u8(value: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u8 == value)
    }

    /// A short description used in error messages ("mount /proc: ...").
    pub fn describe(self) -> &'static str {
        match self {
            Step::Stdio => "set up stdio",
            Step::Sync => "wait for the parent",
            Step::JoinNamespace => "join namespace",
            Step::Propagation => "set root propagation",
            Step::Scratch => "mount scratch tmpfs",
            Step::Root => "mount root",
            Step::MountPoint => "create mount point",
            Step::Mount => "mount",
            Step::Device => "create device",
            Step::Hostname => "set hostname",
            Step::Domainname => "set domain name",
            Step::PivotRoot => "pivot_root",
            Step::DetachOldRoot => "detach old root",
            Step::Sysctl => "set sysctl",
            Step::ReadonlyRoot => "make root read-only",
            Step::MaskPath => "mask",
            Step::ReadonlyPath => "make read-only",
            Step::Rlimit => "set rlimit",
            Step::Cwd => "change directory to",
            Step::Bounding => "drop bounding capability",
            Step::Identity => "switch to user",
            Step::Capabilities => "set capabilities",
            Step::NoNewPrivs => "set no_new_privs",
            Step::Seccomp => "install seccomp filter",
            Step::Gate => "wait for start",
            Step::Exec => "exec",
            Step::Hook => "run hook",
            Step::Console => "set up the terminal",
        }
    }
}

/// Why a container did not start.
#[derive(Debug)]
pub enum StartError {
    /// The bundle asks for something invalid or that this runtime cannot do.
    Spec(String),
    /// A system call in the parent failed.
    Parent {
        /// What the parent was doing.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The container's cgroup could not be set up.
    Cgroup(cgroup::CgroupError),
    /// A `prestart` or `createRuntime` hook failed.
    Hook(hooks::HookError),
    /// A step in the container's child process failed.
    Child {
        /// The step.
        step: Step,
        /// The path, name or value it concerned.
        path: String,
        /// The errno.
        source: io::Error,
    },
    /// A volume it mounts could not be made ready (PID 1's data disk).
    Volume(String),
}

impl StartError {
    /// Exit status conventions: 127 for a command that does not exist, 126 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Child {
                step: Step::Exec,
                source,
                ..
            } if source.raw_os_error() == Some(libc::ENOENT) => 127,
            _ => 126,
        }
    }

    fn parent(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
        let what = what.into();
        move |source| StartError::Parent { what, source }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Spec(msg) => write!(f, "invalid or unsupported config: {msg}"),
            StartError::Parent { what, source } => write!(f, "{what}: {source}"),
            StartError::Cgroup(e) => write!(f, "{e}"),
            StartError::Hook(e) => write!(f, "{e}"),
            StartError::Volume(msg) => f.write_str(msg),
            // A hook's failure in the child is fully described by its message.
            StartError::Child {
                step: Step::Hook,
                path,
                ..
            } => f.write_str(path),
            StartError::Child {
                step: Step::Exec,
                path,
                source,
            } if source.raw_os_error() == Some(libc::ENOENT) => {
                // The words podman and other callers look for.
                write!(
                    f,
                    "exec {path}: not found in the container (no such file or directory)"
                )
            }
            StartError::Child {
                step: Step::Exec,
                path,
                source,
            } => {
                // "permission denied", in the lower case callers match on.
                let cause = source.to_string();
                let mut chars = cause.chars();
                let first = chars.next().map(|c| c.to_ascii_lowercase());
                write!(f, "exec {path}: {}{}", first.unwrap_or(' '), chars.as_str())
            }
            StartError::Child { step, path, source } => {
                write!(f, "{} {path}: {source}", step.describe())
            }
        }
    }
}

impl std::error::Error for StartError {}

/// Where the container's stdio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdioMode {
    /// stdout and stderr into two pipes returned in [`Spawned::output`];
    /// stdin from a pipe whose write end is [`Spawned::stdin`] with `stdin`,
    /// else from /dev/null.
    Pipe {
        /// Give the process a stdin pipe.
        stdin: bool,
    },
    /// The caller's stdin, stdout and stderr.
    Inherit,
}

/// The pipes of a [`StdioMode::Pipe`] process, made before clone.
#[derive(Debug)]
pub(crate) struct StdioPipes {
    stdin: Option<(OwnedFd, OwnedFd)>,
    stdout: (OwnedFd, OwnedFd),
    stderr: (OwnedFd, OwnedFd),
}

impl StdioPipes {
    /// The pipes `mode` asks for; `None` for [`StdioMode::Inherit`].
    pub(crate) fn new(mode: StdioMode) -> Result<Option<StdioPipes>, StartError> {
        let StdioMode::Pipe { stdin } = mode else {
            return Ok(None);
        };
        let pipe =
            |what: &str| sys::pipe().map_err(StartError::parent(format!("create {what} pipe")));
        Ok(Some(StdioPipes {
            stdin: if stdin { Some(pipe("stdin")?) } else { None },
            stdout: pipe("stdout")?,
            stderr: pipe("stderr")?,
        }))
    }

    /// The child's ends: (stdin, stdout, stderr); stdin `None` means /dev/null.
    pub(crate) fn child_ends(&self) -> ChildStdio {
        ChildStdio {
            stdin: self.stdin.as_ref().map(|(r, _)| r.as_raw_fd()),
            stdout: self.stdout.1.as_raw_fd(),
            stderr: self.stderr.1.as_raw_fd(),
        }
    }

    /// After clone, in the parent: closes the child's ends, makes ours
    /// non-blocking and returns them.
    pub(crate) fn into_parent_ends(self) -> Result<ProcessIo, StartError> {
        let nonblocking = |fd: OwnedFd| {
            sys::set_nonblocking(fd.as_raw_fd())
                .map(|()| fd)
                .map_err(StartError::parent("set a stdio pipe non-blocking"))
        };
        Ok(ProcessIo {
            stdin: self.stdin.map(|(_, w)| nonblocking(w)).transpose()?,
            stdout: nonblocking(self.stdout.0)?,
            stderr: nonblocking(self.stderr.0)?,
        })
    }
}

/// The child's stdio descriptors (numbers valid in the child).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildStdio {
    /// Read end of the stdin pipe; `None`: /dev/null.
    pub stdin: Option<RawFd>,
    /// Write end of the stdout pipe.
    pub stdout: RawFd,
    /// Write end of the stderr pipe.
    pub stderr: RawFd,
}

impl ChildStdio {
    /// In the child: makes the pipes (and /dev/null for a stdin without
    /// one) descriptors 0, 1 and 2.
    pub(crate) fn install(self, null: RawFd) -> Result<(), child::Failure> {
        let stdin = self.stdin.unwrap_or(null);
        sys::dup2(stdin, 0).map_err(child::fail_io(Step::Stdio, "stdin"))?;
        sys::dup2(self.stdout, 1).map_err(child::fail_io(Step::Stdio, "stdout"))?;
        sys::dup2(self.stderr, 2).map_err(child::fail_io(Step::Stdio, "stderr"))?;
        Ok(())
    }
}

/// The parent's ends of a process's stdio pipes, all non-blocking.
#[derive(Debug)]
pub struct ProcessIo {
    /// Write end of its stdin, when it has a pipe.
    pub stdin: Option<OwnedFd>,
    /// Read end of its stdout.
    pub stdout: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
}

/// How to spawn a container.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// The container's id (names its scratch directory and default cgroup).
    pub id: String,
    /// Where stdio goes.
    pub stdio: StdioMode,
    /// Stop just before exec until [`start_gated`] releases it (OCI `create`).
    pub gate: bool,
    /// Where cgroup v2 is mounted.
    pub cgroup_root: PathBuf,
    /// Directory for each container's private overlay scratch tmpfs.
    pub scratch_root: String,
    /// Run the spec's `prestart`, `createRuntime`, `createContainer` and
    /// `startContainer` hooks (the OCI runtime does; PID 1 does not block
    /// its event loop on them).
    pub hooks: bool,
    /// Where to send the terminal's master when `process.terminal` is set.
    pub console_socket: Option<PathBuf>,
    /// How many descriptors from 3 up the process keeps (`--preserve-fds`);
    /// every other one above stdio is closed at exec.
    pub preserve_fds: u32,
    /// Which controllers the cgroups above the container's get enabled.
    pub controllers: cgroup::Controllers,
    /// The spec's `linux.seccomp`, compiled ahead (PID 1's bundles carry
    /// it); used only when the spec has a profile.
    pub compiled_seccomp: Option<seccomp::Program>,
}

impl SpawnOptions {
    /// Options for system mode: output captured, no gate, the guest's cgroup2.
    pub fn system(id: &str) -> SpawnOptions {
        SpawnOptions {
            id: id.to_owned(),
            stdio: StdioMode::Pipe { stdin: false },
            gate: false,
            cgroup_root: PathBuf::from(cgroup::CGROUP_ROOT),
            scratch_root: "/run/hafen/containers".to_owned(),
            hooks: false,
            console_socket: None,
            preserve_fds: 0,
            controllers: cgroup::Controllers::Needed,
            compiled_seccomp: None,
        }
    }
}

/// A created container.
#[derive(Debug)]
pub struct Spawned {
    /// Its init process, as seen from the caller.
    pub pid: libc::pid_t,
    /// Its stdio pipes ([`StdioMode::Pipe`]).
    pub io: Option<ProcessIo>,
    /// With a gate: descriptor numbers, in the child, of the gate's write end
    /// and the error pipe's read end, which [`start_gated`] opens through /proc.
    pub gate_fds: Option<(RawFd, RawFd)>,
    /// Its cgroup directory, when one was made.
    pub cgroup: Option<PathBuf>,
    /// When it shares our mount namespace: its root, with the mounts made
    /// for it, to detach once it is gone ([`release_shared_root`]).
    pub shared_root: Option<PathBuf>,
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
    /// sysfs in a user namespace without its own network namespace cannot be
    /// mounted; bind the host's instead.
    sysfs_fallback: bool,
}

/// A device node to create (or, in a user namespace, bind from the host).
#[derive(Debug)]
struct PlannedDevice {
    name: String,
    kind: rustix::fs::FileType,
    major: u32,
    minor: u32,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// How the root filesystem is mounted.
#[derive(Debug)]
enum RootMount {
    /// Overlay of read-only image directories under a private tmpfs upper layer.
    Overlay {
        scratch: String,
        upper: String,
        work: String,
        data: CString,
    },
    /// The bundle's rootfs directory, bind-mounted (the OCI default).
    Bind,
}

/// Everything the child needs, prepared in the parent.
#[derive(Debug)]
struct Plan {
    clone_flags: libc::c_int,
    joins: Vec<(OwnedFd, libc::c_int, String)>,
    /// Namespaces the parent joins around the clone, for the child to
    /// inherit: with a new user namespace, the child could not join those
    /// our own user namespace owns (setns needs CAP_SYS_ADMIN over the
    /// owner), such as the network namespace PID 1 prepares.
    inherited_joins: Vec<(OwnedFd, libc::c_int, String)>,
    pid_join: Option<OwnedFd>,
    userns: bool,
    uid_mappings: Vec<IdMapping>,
    gid_mappings: Vec<IdMapping>,
    oom_score_adj: Option<i32>,
    /// Propagation of every mount while the root is set up; `None` when the
    /// container shares our mount namespace.
    setup_propagation: Option<MountFlags>,
    /// The spec's `rootfsPropagation` for the new root, when not private.
    root_propagation: Option<MountFlags>,
    /// No mount namespace of its own: chroot instead of pivot_root.
    shares_mounts: bool,
    rootfs: String,
    rootfs_c: CString,
    root: RootMount,
    mounts: Vec<PlannedMount>,
    make_dev: bool,
    devices: Vec<PlannedDevice>,
    hostname: Option<Vec<u8>>,
    domainname: Option<Vec<u8>>,
    sysctl: Vec<(String, String)>,
    readonly_root: bool,
    masked: Vec<String>,
    readonly_paths: Vec<String>,
    process: ProcessPlan,
    cgroup: Option<PlannedCgroup>,
    device_filter: Option<devices::Filter>,
    /// The hooks the child runs itself.
    create_container_hooks: Vec<hafen_proto::spec::Hook>,
    start_container_hooks: Vec<hafen_proto::spec::Hook>,
    /// The child asks the parent to run the runtime-side hooks, and gets
    /// the state JSON for its own, before pivot_root.
    hook_channel: bool,
}

/// The container's cgroup: a cgroup v2 hierarchy, a path in it, its limits.
#[derive(Debug)]
struct PlannedCgroup {
    root: PathBuf,
    path: String,
    settings: Vec<cgroup::Setting>,
}

impl PlannedCgroup {
    fn dir(&self) -> PathBuf {
        self.root.join(self.path.trim_start_matches('/'))
    }
}

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

/// The device nodes every container gets in its /dev (the OCI default set).
const DEFAULT_DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

impl Plan {
    fn new(spec: &Spec, bundle_dir: &Path, opts: &SpawnOptions) -> Result<Plan, StartError> {
        let process = spec
            .process
            .as_ref()
            .ok_or_else(|| spec_error("config.json has no process"))?;
        let root = spec
            .root
            .as_ref()
            .ok_or_else(|| spec_error("config.json has no root"))?;
        let rootfs_path = if Path::new(&root.path).is_absolute() {
            PathBuf::from(&root.path)
        } else {
            bundle_dir.join(&root.path)
        };
        let rootfs = rootfs_path
            .to_str()
            .ok_or_else(|| spec_error("root.path is not UTF-8"))?
            .trim_end_matches('/')
            .to_owned();

        // Namespaces: create those without a path, join those with one.
        let mut clone_flags = 0;
        let mut joins = Vec::new();
        let mut pid_join = None;
        // Borrowed: a clone would copy the seccomp profile and every list.
        let no_linux = Linux::default();
        let linux = spec.linux.as_ref().unwrap_or(&no_linux);
        for ns in &linux.namespaces {
            let flag = match ns.kind.as_str() {
                "pid" => libc::CLONE_NEWPID,
                "mount" => libc::CLONE_NEWNS,
                "uts" => libc::CLONE_NEWUTS,
                "ipc" => libc::CLONE_NEWIPC,
                "network" => libc::CLONE_NEWNET,
                "cgroup" => libc::CLONE_NEWCGROUP,
                "user" => libc::CLONE_NEWUSER,
                other => {
                    return Err(spec_error(format!(
                        "unknown namespace type {other:?} in linux.namespaces"
                    )))
                }
            };
            match &ns.path {
                None => clone_flags |= flag,
                Some(path) => {
                    if flag == libc::CLONE_NEWUSER {
                        return Err(spec_error(format!(
                            "joining an existing user namespace ({path}) is not supported: \
                             give linux.uidMappings and linux.gidMappings for a new one instead"
                        )));
                    }
                    let fd = rustix::fs::open(
                        path.as_str(),
                        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    )
                    .map_err(|e| StartError::Parent {
                        what: format!("open {} namespace {path}", ns.kind),
                        source: e.into(),
                    })?;
                    if flag == libc::CLONE_NEWPID {
                        pid_join = Some(fd);
                    } else {
                        joins.push((fd, flag, path.clone()));
                    }
                }
            }
        }
        // Without a mount namespace of its own (none listed), the container
        // shares ours, like runc: its root and mounts are made here and it
        // chroots; whoever deletes it detaches them again.
        let shares_mounts = clone_flags & libc::CLONE_NEWNS == 0
            && !joins.iter().any(|(_, flag, _)| *flag == libc::CLONE_NEWNS);
        let userns = clone_flags & libc::CLONE_NEWUSER != 0;
        let (inherited_joins, joins): (Vec<_>, Vec<_>) =
            joins.into_iter().partition(|(_, flag, _)| {
                userns
                    && matches!(
                        *flag,
                        libc::CLONE_NEWNET
                            | libc::CLONE_NEWIPC
                            | libc::CLONE_NEWUTS
                            | libc::CLONE_NEWCGROUP
                    )
            });
        if userns && (linux.uid_mappings.is_empty() || linux.gid_mappings.is_empty()) {
            return Err(spec_error(
                "a user namespace needs linux.uidMappings and linux.gidMappings",
            ));
        }

        // Root: overlay over image directories (Hafen images), or the bundle's rootfs.
        let root_mount = match spec.annotation(annotations::LOWER_DIRS) {
            Some(lower) if !lower.is_empty() => {
                if shares_mounts {
                    return Err(spec_error(
                        "a root made of image layers needs a mount namespace: add \
                         {\"type\": \"mount\"} to linux.namespaces",
                    ));
                }
                for dir in lower.split(':') {
                    if !Path::new(dir).is_dir() {
                        return Err(spec_error(format!("image directory {dir} does not exist")));
                    }
                }
                let scratch = format!("{}/{}", opts.scratch_root, opts.id);
                let upper = format!("{scratch}/upper");
                let work = format!("{scratch}/work");
                let data = cstring(
                    "lower dirs",
                    format!("lowerdir={lower},upperdir={upper},workdir={work}"),
                )?;
                RootMount::Overlay {
                    scratch,
                    upper,
                    work,
                    data,
                }
            }
            _ => {
                if !rootfs_path.is_dir() {
                    return Err(spec_error(format!(
                        "root filesystem {} does not exist",
                        rootfs_path.display()
                    )));
                }
                RootMount::Bind
            }
        };
        // While the root is set up, nothing may propagate back to the
        // namespace we came from, and pivot_root refuses shared parents:
        // everything is private, or a slave when the spec wants the root to
        // take part in propagation, which is applied to the new root after
        // pivot_root.
        let root_propagation = match linux.rootfs_propagation.as_deref() {
            None | Some("") => None,
            Some(p) => Some(
                propagation_option(p)
                    .ok_or_else(|| spec_error(format!("unknown linux.rootfsPropagation {p:?}")))?,
            ),
        };
        let private = MountFlags::from_bits_retain(libc::MS_PRIVATE as u32);
        let setup_propagation = if shares_mounts {
            None
        } else if root_propagation.is_some_and(|p| !p.contains(private)) {
            Some(MountFlags::from_bits_retain(
                (libc::MS_SLAVE | libc::MS_REC) as u32,
            ))
        } else {
            Some(MountFlags::from_bits_retain(
                (libc::MS_PRIVATE | libc::MS_REC) as u32,
            ))
        };
        let root_propagation = root_propagation.filter(|p| !p.contains(private));

        // cgroup: the spec's path, or hafen/ID; limits need cgroup v2.
        let settings = match &linux.resources {
            Some(r) => {
                cgroup::settings(r).map_err(|e| spec_error(format!("linux.resources: {e}")))?
            }
            None => Vec::new(),
        };
        let cgroup = match cgroup::find_v2(&opts.cgroup_root) {
            Some(root) => {
                cgroup::check_controllers(&root, &settings)
                    .map_err(|e| spec_error(format!("linux.resources: {e}")))?;
                let path = linux
                    .cgroups_path
                    .clone()
                    .unwrap_or_else(|| format!("hafen/{}", opts.id));
                Some(PlannedCgroup {
                    root,
                    path,
                    settings,
                })
            }
            None if !settings.is_empty() => {
                return Err(spec_error(format!(
                    "linux.resources needs cgroup v2, but neither {} nor {}/unified is a \
                     cgroup2 mount: mount one there (mount -t cgroup2 none {0}) or leave \
                     out the limits",
                    opts.cgroup_root.display(),
                    opts.cgroup_root.display()
                )));
            }
            None => None,
        };

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
            // A cgroup mount is the container's own cgroup directory, bound
            // read-only: mounting a fresh cgroup2 costs far more (8-15 ms for
            // the first in a new mount namespace) and shows the whole tree.
            let cgroup_bind = kind == "cgroup" || kind == "cgroup2";
            if cgroup_bind && cgroup.is_none() {
                continue;
            }
            let bind = cgroup_bind || kind == "bind" || flags.contains(MountFlags::BIND);
            let mut source = m.source.clone().unwrap_or_else(|| kind.to_owned());
            let mut file_target = false;
            if let (true, Some(cg)) = (cgroup_bind, &cgroup) {
                flags |= MountFlags::BIND;
                source = cg.dir().to_string_lossy().into_owned();
            } else if bind {
                let src = if Path::new(&source).is_absolute() {
                    PathBuf::from(&source)
                } else {
                    bundle_dir.join(&source)
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
            let extra = flags - MountFlags::BIND - MountFlags::REC;
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
                remount_flags: (bind && !extra.is_empty()).then_some(extra),
                propagation,
                file_target,
                sysfs_fallback: userns && kind == "sysfs" && clone_flags & libc::CLONE_NEWNET == 0,
            });
        }

        // Devices: the default set, then the spec's.
        let mut devices: Vec<PlannedDevice> = DEFAULT_DEVICES
            .iter()
            .map(|&(name, major, minor)| PlannedDevice {
                name: name.to_owned(),
                kind: rustix::fs::FileType::CharacterDevice,
                major,
                minor,
                mode: 0o666,
                uid: 0,
                gid: 0,
            })
            .collect();
        for d in &linux.devices {
            let name = d
                .path
                .strip_prefix("/dev/")
                .filter(|n| !n.is_empty() && !n.split('/').any(|c| c == ".." || c.is_empty()))
                .ok_or_else(|| spec_error(format!("device path {:?} is not under /dev", d.path)))?;
            let kind = match d.kind.as_str() {
                "c" | "u" => rustix::fs::FileType::CharacterDevice,
                "b" => rustix::fs::FileType::BlockDevice,
                "p" => rustix::fs::FileType::Fifo,
                other => {
                    return Err(spec_error(format!(
                        "device {}: unknown type {other:?}",
                        d.path
                    )))
                }
            };
            devices.retain(|existing| existing.name != name);
            devices.push(PlannedDevice {
                name: name.to_owned(),
                kind,
                major: u32::try_from(d.major)
                    .map_err(|_| spec_error(format!("device {}: bad major", d.path)))?,
                minor: u32::try_from(d.minor)
                    .map_err(|_| spec_error(format!("device {}: bad minor", d.path)))?,
                mode: d.file_mode.unwrap_or(0o666) & 0o7777,
                uid: d.uid.unwrap_or(0),
                gid: d.gid.unwrap_or(0),
            });
        }

        let sysctl = linux
            .sysctl
            .iter()
            .map(|(k, v)| {
                procfs::sysctl_path(k)
                    .map(|p| (p, v.clone()))
                    .ok_or_else(|| spec_error(format!("bad sysctl name {k:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        // The device filter needs the container's cgroup; without cgroup v2
        // (a hybrid host) the rules cannot be enforced and are left out.
        let device_filter = match linux.resources.as_ref().map(|r| r.devices.as_slice()) {
            Some(rules) if !rules.is_empty() && cgroup.is_some() => Some(
                devices::compile(&devices::with_defaults(rules, &linux.devices))
                    .map_err(|e| spec_error(format!("linux.resources.{e}")))?,
            ),
            _ => None,
        };
        let hook_kinds = [
            hooks::Kind::Prestart,
            hooks::Kind::CreateRuntime,
            hooks::Kind::CreateContainer,
            hooks::Kind::StartContainer,
        ];
        let (create_container_hooks, start_container_hooks, hook_channel) = if opts.hooks {
            (
                hooks::Kind::CreateContainer.of(spec).to_vec(),
                hooks::Kind::StartContainer.of(spec).to_vec(),
                hook_kinds.iter().any(|k| !k.of(spec).is_empty()),
            )
        } else {
            (Vec::new(), Vec::new(), false)
        };
        for hook in hook_kinds.iter().flat_map(|k| k.of(spec)) {
            if !hook.path.starts_with('/') {
                return Err(spec_error(format!(
                    "hook path {:?} is not absolute",
                    hook.path
                )));
            }
        }

        let filter = match (&opts.compiled_seccomp, linux.seccomp.as_ref()) {
            (Some(program), Some(_)) => Some(seccomp::Filter::Compiled(program)),
            (None, Some(profile)) => Some(seccomp::Filter::Profile(profile)),
            (_, None) => None,
        };
        let mut process_plan = ProcessPlan::new(process, filter)?;
        process_plan.preserve_fds = opts.preserve_fds;
        check_console(process_plan.terminal, opts.console_socket.as_deref())?;

        Ok(Plan {
            clone_flags,
            joins,
            inherited_joins,
            pid_join,
            userns,
            uid_mappings: linux.uid_mappings.clone(),
            gid_mappings: linux.gid_mappings.clone(),
            oom_score_adj: process.oom_score_adj,
            setup_propagation,
            root_propagation,
            shares_mounts,
            rootfs_c: cstring("root.path", &rootfs)?,
            rootfs,
            root: root_mount,
            mounts,
            make_dev,
            devices,
            hostname: spec.hostname.as_ref().map(|h| h.clone().into_bytes()),
            domainname: spec.domainname.as_ref().map(|d| d.clone().into_bytes()),
            sysctl,
            readonly_root: root.readonly,
            masked: linux.masked_paths.clone(),
            readonly_paths: linux.readonly_paths.clone(),
            process: process_plan,
            device_filter,
            cgroup,
            create_container_hooks,
            start_container_hooks,
            hook_channel,
        })
    }

    /// Whether the child must wait for the parent after clone.
    fn needs_sync(&self) -> bool {
        self.userns || self.oom_score_adj.is_some()
    }
}

/// A terminal needs a console socket to send it to, and a console socket a
/// terminal to send (runc refuses both mismatches, too).
fn check_console(terminal: bool, socket: Option<&Path>) -> Result<(), StartError> {
    match (terminal, socket) {
        (true, None) => Err(spec_error(
            "process.terminal is set but no --console-socket was given: the runtime sends \
             the terminal's master to that socket (or set process.terminal to false)",
        )),
        (false, Some(path)) => Err(spec_error(format!(
            "--console-socket {} was given but process.terminal is false",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// The first byte a gated child writes on the error pipe: "set up, waiting".
const READY: u8 = 0xff;
/// A byte the child writes on the error pipe before pivot_root: "run the
/// runtime's hooks, then send me the state for mine".
const HOOKS_REQUEST: u8 = 0xfe;

/// Creates the container `spec` describes and, without a gate, starts it.
pub fn spawn(spec: &Spec, bundle_dir: &Path, opts: &SpawnOptions) -> Result<Spawned, StartError> {
    let plan = Plan::new(spec, bundle_dir, opts)?;
    tracing::debug!("{}: spawn planned", opts.id);
    if let RootMount::Overlay { scratch, .. } = &plan.root {
        crate::mount::mkdir_all(scratch, 0o755)
            .map_err(StartError::parent("create scratch directory"))?;
        crate::mount::mkdir_all(&plan.rootfs, 0o755)
            .map_err(StartError::parent("create root directory"))?;
    }
    let cgroup_fd = match &plan.cgroup {
        Some(cg) => Some(
            cgroup::create(&cg.root, &cg.path, &cg.settings, opts.controllers)
                .map_err(StartError::Cgroup)?,
        ),
        None => None,
    };
    tracing::debug!("{}: cgroup made", opts.id);
    if let (Some(filter), Some(fd)) = (&plan.device_filter, &cgroup_fd) {
        devices::attach(filter, fd).map_err(StartError::parent(
            "attach the device filter to the container's cgroup",
        ))?;
        tracing::debug!("{}: device filter attached", opts.id);
    }
    let null = std::fs::File::open("/dev/null").map_err(StartError::parent("open /dev/null"))?;
    let stdio = StdioPipes::new(opts.stdio)?;
    let (err_r, err_w) = sys::pipe().map_err(StartError::parent("create error pipe"))?;
    let sync = if plan.needs_sync() {
        Some(sys::pipe().map_err(StartError::parent("create sync pipe"))?)
    } else {
        None
    };
    let gate = if opts.gate {
        Some(sys::pipe().map_err(StartError::parent("create start gate"))?)
    } else {
        None
    };
    let console = match (&opts.console_socket, plan.process.terminal) {
        (Some(path), true) => Some(console::connect(path).map_err(StartError::parent(format!(
            "connect to the console socket {}",
            path.display()
        )))?),
        _ => None,
    };
    let hook_pipe = if plan.hook_channel {
        Some(sys::pipe().map_err(StartError::parent("create hook pipe"))?)
    } else {
        None
    };

    let (argv, envp) = plan.process.exec_arrays();

    let inherited = JoinedForClone::enter(&plan.inherited_joins)?;
    // SAFETY: hafen-init is single-threaded; the child below only makes
    // system calls on data prepared above, then execs or exits.
    let cloned = unsafe {
        clone_child(
            plan.clone_flags,
            cgroup_fd.as_ref().map(|fd| fd.as_raw_fd()),
            plan.pid_join.as_ref().map(|fd| fd.as_raw_fd()),
        )
    };
    // Back in our own namespaces before anything else (the child keeps the
    // joined ones; it returns from the clone with a copy of this guard and
    // must not undo anything).
    if matches!(cloned, Ok(CloneResult::Child)) {
        std::mem::forget(inherited);
    } else {
        drop(inherited);
    }
    match cloned.map_err(StartError::parent("clone"))? {
        CloneResult::Child => {
            // Before the parent may write the spec's own score (after sync).
            if plan.oom_score_adj.is_none() {
                sys::reset_oom_score_in_child();
            }
            // Holding the sync pipe's write end ourselves would keep its read
            // from ever seeing the parent go away.
            let sync = sync.map(|(r, w)| {
                drop(w);
                r
            });
            let hook_pipe = hook_pipe.map(|(r, w)| {
                drop(w);
                r
            });
            let ends = child::Fds {
                null: null.as_raw_fd(),
                stdio: stdio.as_ref().map(StdioPipes::child_ends),
                sync: sync.as_ref().map(|r| r.as_raw_fd()),
                gate: gate.as_ref().map(|(r, _)| r.as_raw_fd()),
                err: err_w.as_raw_fd(),
                hooks: hook_pipe.as_ref().map(|r| r.as_raw_fd()),
                console: console.as_ref().map(|c| c.as_fd()),
            };
            let (step, path, errno) = child::run(&plan, &ends, &argv, &envp);
            report_and_exit(err_w.as_raw_fd(), step, &path, errno)
        }
        CloneResult::Parent(pid) => {
            tracing::debug!("{}: cloned (pid {pid})", opts.id);
            drop(err_w);
            drop(null);
            let io = stdio.map(StdioPipes::into_parent_ends).transpose()?;
            if let Some((sync_r, sync_w)) = sync {
                drop(sync_r);
                if let Err(e) = parent_setup(&plan, pid) {
                    // The child sees the sync pipe close and exits; the reaper collects it.
                    drop(sync_w);
                    let _ = sys::kill(pid, libc::SIGKILL);
                    return Err(e);
                }
                sys::write_all(sync_w.as_raw_fd(), &[1])
                    .map_err(StartError::parent("release the container"))?;
            }
            // The gate's ends stay open in the child only (we drop ours); the
            // child's descriptors have the numbers ours had at clone time.
            let gate_fds = gate
                .as_ref()
                .map(|(_, w)| (w.as_raw_fd(), err_r.as_raw_fd()));
            drop(gate);
            let hook_pipe = hook_pipe.map(|(r, w)| {
                drop(r);
                w
            });
            let mut on_hooks = || match &hook_pipe {
                Some(w) => runtime_hooks(spec, bundle_dir, opts, pid, w),
                None => Err(StartError::Parent {
                    what: "the container asked for hooks it does not have".into(),
                    source: io::Error::from(io::ErrorKind::InvalidData),
                }),
            };
            let report = read_child_error(&err_r, opts.gate, &mut on_hooks);
            tracing::debug!("{}: set up, exec'd or failed", opts.id);
            if matches!(report, Some(StartError::Hook(_))) {
                // Its own hooks never ran: it must not go on to exec.
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            match report {
                None => Ok(Spawned {
                    pid,
                    io,
                    gate_fds,
                    cgroup: plan.cgroup.as_ref().map(PlannedCgroup::dir),
                    shared_root: plan.shares_mounts.then(|| PathBuf::from(&plan.rootfs)),
                }),
                // The child has exited (or is about to); the caller's reaper collects it.
                Some(err) => Err(err),
            }
        }
    }
}

/// The namespaces the caller joined for a clone, and its own to return to
/// when dropped.
struct JoinedForClone(Vec<(OwnedFd, libc::c_int)>);

impl JoinedForClone {
    fn enter(joins: &[(OwnedFd, libc::c_int, String)]) -> Result<JoinedForClone, StartError> {
        let mut own = JoinedForClone(Vec::with_capacity(joins.len()));
        for (fd, flag, path) in joins {
            let name = match *flag {
                libc::CLONE_NEWNET => "net",
                libc::CLONE_NEWIPC => "ipc",
                libc::CLONE_NEWUTS => "uts",
                _ => "cgroup",
            };
            let ours = rustix::fs::open(
                format!("/proc/thread-self/ns/{name}").as_str(),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| StartError::Parent {
                what: format!("open our own {name} namespace"),
                source: e.into(),
            })?;
            sys::setns(fd.as_raw_fd(), *flag).map_err(|e| StartError::Parent {
                what: format!("join {path} for the container to inherit"),
                source: e,
            })?;
            own.0.push((ours, *flag));
        }
        Ok(own)
    }
}

impl Drop for JoinedForClone {
    fn drop(&mut self) {
        for (fd, flag) in self.0.iter().rev() {
            if let Err(e) = sys::setns(fd.as_raw_fd(), *flag) {
                error!("cannot return to our own namespace after starting a container: {e}");
            }
        }
    }
}

/// Clones a container's process: in the new namespaces `flags` names, in the
/// cgroup `cgroup` and, when `pidns` is given, inside that existing pid
/// namespace.
///
/// Joining a pid namespace only applies to a process's later children and
/// cannot be undone (a process may not return to an ancestor namespace), so
/// that case goes through a short-lived intermediate: it joins, clones with
/// `CLONE_PARENT` and reports the new pid. The caller's own namespace for
/// later children never changes (PID 1 spawns many containers and execs),
/// and the new process is still the caller's child, owned by its reaper.
///
/// # Safety
/// The same rules as [`sys::clone_process`]: a single-threaded caller, and a
/// child that only makes raw system calls before exec or exit.
pub unsafe fn clone_child(
    flags: libc::c_int,
    cgroup: Option<RawFd>,
    pidns: Option<RawFd>,
) -> io::Result<CloneResult> {
    let Some(pidns) = pidns else {
        // SAFETY: the caller upholds clone_process's rules.
        return unsafe {
            match cgroup {
                Some(fd) => sys::clone_into_cgroup(flags, fd),
                None => sys::clone_process(flags),
            }
        };
    };
    let (report_r, report_w) = sys::pipe()?;
    // SAFETY: the caller upholds clone_process's rules; the intermediate
    // only makes system calls and exits.
    match unsafe { sys::clone_process(0) }? {
        CloneResult::Child => {
            let cloned = match sys::setns(pidns, libc::CLONE_NEWPID) {
                // SAFETY: as above, for the final child.
                Ok(()) => unsafe { sys::clone_sibling(flags, cgroup) },
                Err(e) => Err(e),
            };
            let report = match cloned {
                Ok(CloneResult::Child) => {
                    drop(report_r);
                    drop(report_w);
                    return Ok(CloneResult::Child);
                }
                Ok(CloneResult::Parent(pid)) => pid,
                Err(e) => -e.raw_os_error().unwrap_or(libc::EINVAL),
            };
            let _ = sys::write_all(report_w.as_raw_fd(), &report.to_le_bytes());
            sys::exit_now(0)
        }
        CloneResult::Parent(intermediate) => {
            drop(report_w);
            let mut buf = [0u8; 4];
            let mut got = 0;
            while got < buf.len() {
                match sys::read(report_r.as_raw_fd(), &mut buf[got..]) {
                    Ok(Some(0)) => break,
                    Ok(Some(n)) => got += n,
                    Ok(None) => {}
                    Err(e) => {
                        let _ = sys::wait_child(intermediate);
                        return Err(e);
                    }
                }
            }
            // Nobody else waits for the intermediate: it exits right after its report.
            let _ = sys::wait_child(intermediate);
            if got < buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the clone intermediate exited without reporting",
                ));
            }
            match i32::from_le_bytes(buf) {
                pid if pid > 0 => Ok(CloneResult::Parent(pid)),
                errno => Err(io::Error::from_raw_os_error(-errno)),
            }
        }
    }
}

/// Detaches the root and every mount made for a container that shared our
/// mount namespace ([`Spawned::shared_root`]), once it has exited.
pub fn release_shared_root(root: &Path) -> io::Result<()> {
    match rustix::mount::unmount(root, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Work the parent does for the child between clone and the child's go-ahead.
fn parent_setup(plan: &Plan, pid: libc::pid_t) -> Result<(), StartError> {
    let proc = procfs::ProcFs::open("/proc").map_err(StartError::parent("open /proc"))?;
    if plan.userns {
        let map = |m: &[IdMapping]| {
            m.iter()
                .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
                .collect::<String>()
        };
        proc.write(&format!("{pid}/uid_map"), &map(&plan.uid_mappings))
            .map_err(StartError::parent(format!("write /proc/{pid}/uid_map")))?;
        proc.write(&format!("{pid}/gid_map"), &map(&plan.gid_mappings))
            .map_err(StartError::parent(format!("write /proc/{pid}/gid_map")))?;
    }
    if let Some(score) = plan.oom_score_adj {
        proc.write(&format!("{pid}/oom_score_adj"), &score.to_string())
            .map_err(StartError::parent(format!(
                "write /proc/{pid}/oom_score_adj"
            )))?;
    }
    Ok(())
}

/// Runs the `prestart` and `createRuntime` hooks for the container `pid`
/// and sends the child the state JSON its own hooks read (creating, then
/// created), each length-prefixed.
fn runtime_hooks(
    spec: &Spec,
    bundle_dir: &Path,
    opts: &SpawnOptions,
    pid: libc::pid_t,
    reply: &OwnedFd,
) -> Result<(), StartError> {
    let bundle = bundle_dir.to_string_lossy();
    let container = hooks::Container {
        oci_version: &spec.oci_version,
        id: &opts.id,
        bundle: &bundle,
        annotations: &spec.annotations,
    };
    let state = |kind| container.state(pid, kind);
    for kind in [hooks::Kind::Prestart, hooks::Kind::CreateRuntime] {
        hooks::run(kind, kind.of(spec), &state(kind)).map_err(StartError::Hook)?;
    }
    let mut msg = Vec::new();
    for kind in [hooks::Kind::CreateContainer, hooks::Kind::StartContainer] {
        let json = state(kind);
        msg.extend_from_slice(&(json.len() as u32).to_le_bytes());
        msg.extend_from_slice(&json);
    }
    sys::write_all(reply.as_raw_fd(), &msg).map_err(StartError::parent("send the hook state"))
}

/// Releases a container stopped at its gate (OCI `start`): opens the gate
/// and the error pipe through /proc, lets it exec, and reports whether exec
/// succeeded.
pub fn start_gated(pid: libc::pid_t, gate_w: RawFd, err_r: RawFd) -> Result<(), StartError> {
    let open = |fd: RawFd, flags: rustix::fs::OFlags| {
        let path = format!("/proc/{pid}/fd/{fd}");
        rustix::fs::open(
            path.as_str(),
            flags | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| StartError::Parent {
            what: format!("open {path} (is the container still created?)"),
            source: e.into(),
        })
    };
    let err = open(err_r, rustix::fs::OFlags::RDONLY)?;
    let gate = open(gate_w, rustix::fs::OFlags::WRONLY)?;
    sys::write_all(gate.as_raw_fd(), &[1]).map_err(StartError::parent("open the start gate"))?;
    drop(gate);
    let mut no_hooks = || Ok(());
    match read_child_error(&err, false, &mut no_hooks) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Sends a failed step to the parent and exits with 126/127.
fn report_and_exit(fd: RawFd, step: Step, path: &str, errno: i32) -> ! {
    let mut msg = Vec::with_capacity(8 + path.len());
    msg.push(step as u8);
    msg.extend_from_slice(&errno.to_le_bytes());
    let len = path.len().min(u16::MAX as usize);
    msg.extend_from_slice(&(len as u16).to_le_bytes());
    msg.extend_from_slice(&path.as_bytes()[..len]);
    let _ = sys::write_all(fd, &msg);
    let code = if step == Step::Exec && errno == libc::ENOENT {
        127
    } else {
        126
    };
    sys::exit_now(code)
}

/// Reads the child's report. `None` means success: the pipe closed empty
/// (exec happened) or, with `gated`, the child said it is ready. When the
/// child asks for the runtime's hooks, `on_hooks` runs them.
fn read_child_error(
    fd: &OwnedFd,
    gated: bool,
    on_hooks: &mut dyn FnMut() -> Result<(), StartError>,
) -> Option<StartError> {
    let mut msg = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        if msg.first() == Some(&HOOKS_REQUEST) {
            msg.remove(0);
            if let Err(e) = on_hooks() {
                return Some(e);
            }
            continue;
        }
        if gated && msg.first() == Some(&READY) {
            return None;
        }
        match sys::read(fd.as_raw_fd(), &mut buf) {
            Ok(Some(0)) => break,
            Ok(Some(n)) => msg.extend_from_slice(&buf[..n]),
            Ok(None) => continue,
            Err(source) => {
                return Some(StartError::Parent {
                    what: "read from the container's error pipe".into(),
                    source,
                })
            }
        }
    }
    if gated && msg.is_empty() {
        return Some(StartError::Parent {
            what: "the container exited before it was ready".into(),
            source: io::Error::from(io::ErrorKind::UnexpectedEof),
        });
    }
    decode_child_error(&msg)
}

fn decode_child_error(msg: &[u8]) -> Option<StartError> {
    let (&step, rest) = msg.split_first()?;
    let malformed = || StartError::Parent {
        what: "decode the container's error report".into(),
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

/// Starts a system-mode container (PID 1): output captured, no gate.
pub fn start(bundle: &Bundle) -> Result<Spawned, StartError> {
    if bundle.spec.hooks.is_some() {
        // A hook without a timeout could stall the whole machine's event loop.
        warn!(
            "{}: OCI hooks are only run by `hafen-init runtime`; ignored at boot",
            bundle.name
        );
    }
    let opts = SpawnOptions {
        compiled_seccomp: bundle.seccomp_program.clone(),
        ..SpawnOptions::system(&bundle.name)
    };
    spawn(&bundle.spec, &bundle.dir, &opts)
}

/// The name shown for a container's command in messages.
pub fn display_command(bundle: &Bundle) -> String {
    let full = bundle
        .spec
        .process
        .as_ref()
        .map(|p| p.args.join(" "))
        .unwrap_or_default();
    // One console line: a multi-line script shows its first line.
    match full.split_once('\n') {
        Some((first, _)) => format!("{first} ..."),
        None => full,
    }
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
            "exec /bin/no: not found in the container (no such file or directory)"
        );
        assert_eq!(err.exit_code(), 127);
        assert!(
            decode_child_error(&[]).is_none(),
            "empty pipe means exec succeeded"
        );
        let truncated = decode_child_error(&[Step::Mount as u8, 1]).expect("an error");
        assert!(truncated.to_string().contains("decode"), "{truncated}");
        for step in Step::ALL {
            assert_eq!(Step::from_u8(step as u8), Some(step));
        }
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
