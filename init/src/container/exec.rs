//! Starting another process inside a running container (`hafen-init
//! runtime exec` today, PID 1's `hafen exec` next): it joins the container
//! init's namespaces, root and cgroup, then becomes the given process with
//! exactly the steps the container's first process took
//! ([`super::process`]).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use hafen_proto::spec::Process;
use rustix::fs::{Mode, OFlags};

use super::child::{fail, fail_io, Failure};
use super::process::ProcessPlan;
use super::{
    check_console, clone_child, console, read_child_error, report_and_exit, ChildStdio, Spawned,
    StartError, StdioMode, StdioPipes, Step,
};
use crate::sys::{self, CloneResult};

/// The running container to enter.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Its init process, as we see it.
    pub pid: libc::pid_t,
    /// Its cgroup directory, when it has one.
    pub cgroup: Option<&'a Path>,
}

/// How to start the process.
#[derive(Debug)]
pub struct ExecOptions {
    /// Where its stdio goes (a terminal overrides it).
    pub stdio: StdioMode,
    /// Where to send the terminal's master when `process.terminal` is set.
    pub console: Option<ConsoleTarget>,
    /// How many descriptors from 3 up the process keeps; every other one
    /// above stdio is closed at exec.
    pub preserve_fds: u32,
}

/// Where a terminal's master goes.
#[derive(Debug)]
pub enum ConsoleTarget {
    /// A unix socket to connect to (`--console-socket`).
    Path(PathBuf),
    /// A connected socket (one end of a socketpair PID 1 holds the other of).
    Socket(OwnedFd),
}

/// Namespaces in the order they are joined: the user namespace last. The
/// runtime runs as root of the host's user namespace, which may join any
/// namespace; inside the container's user namespace it could no longer
/// join one the host's owns (the network namespace PID 1 prepares).
const NAMESPACES: [(&str, libc::c_int); 6] = [
    ("mnt", libc::CLONE_NEWNS),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("user", libc::CLONE_NEWUSER),
];

/// Opens `/proc/PID/ns/NAME`; `None` when it is the namespace we are in.
fn foreign_namespace(pid: libc::pid_t, name: &str) -> Result<Option<OwnedFd>, StartError> {
    let open = |path: &str| {
        rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
            StartError::Parent {
                what: format!("open {path} (is the container still running?)"),
                source: e.into(),
            }
        })
    };
    let theirs = open(&format!("/proc/{pid}/ns/{name}"))?;
    let ours = open(&format!("/proc/self/ns/{name}"))?;
    let id = |fd: &OwnedFd| rustix::fs::fstat(fd).map(|st| (st.st_dev, st.st_ino));
    match (id(&theirs), id(&ours)) {
        (Ok(a), Ok(b)) if a == b => Ok(None),
        _ => Ok(Some(theirs)),
    }
}

/// Starts `process` inside the container `target`; `seccomp` is the
/// container's filter. Returns once the process has exec'd (or failed to).
pub fn exec(
    target: Target<'_>,
    process: &Process,
    seccomp: Option<super::seccomp::Filter<'_>>,
    opts: &ExecOptions,
) -> Result<Spawned, StartError> {
    let mut plan = ProcessPlan::new(process, seccomp)?;
    plan.preserve_fds = opts.preserve_fds;
    let socket_path = match &opts.console {
        Some(ConsoleTarget::Path(path)) => Some(path.as_path()),
        Some(ConsoleTarget::Socket(_)) => Some(Path::new("(a socket)")),
        None => None,
    };
    check_console(plan.terminal, socket_path)?;
    let pid = target.pid;

    // 1. Everything of the container we enter, by handle.
    let mut joins = Vec::new();
    for (name, flag) in NAMESPACES {
        if let Some(fd) = foreign_namespace(pid, name)? {
            joins.push((fd, flag, name));
        }
    }
    let pidns = foreign_namespace(pid, "pid")?;
    let root_path = format!("/proc/{pid}/root");
    let root = rustix::fs::open(
        root_path.as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| StartError::Parent {
        what: format!("open {root_path}"),
        source: e.into(),
    })?;
    let cgroup = match target.cgroup {
        Some(dir) => Some(
            rustix::fs::open(
                dir,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| StartError::Parent {
                what: format!("open the container's cgroup {}", dir.display()),
                source: e.into(),
            })?,
        ),
        None => None,
    };

    // 2. Pipes, the console socket and exec's arrays, all before clone.
    let null = std::fs::File::open("/dev/null").map_err(StartError::parent("open /dev/null"))?;
    let stdio = StdioPipes::new(opts.stdio)?;
    let (err_r, err_w) = sys::pipe().map_err(StartError::parent("create error pipe"))?;
    let console = match (&opts.console, plan.terminal) {
        (Some(ConsoleTarget::Path(path)), true) => Some(console::connect(path).map_err(
            StartError::parent(format!("connect to the console socket {}", path.display())),
        )?),
        (Some(ConsoleTarget::Socket(socket)), true) => Some(
            socket
                .try_clone()
                .map_err(StartError::parent("duplicate the console socket"))?,
        ),
        _ => None,
    };
    let (argv, envp) = plan.exec_arrays();

    // SAFETY: hafen-init is single-threaded; the child only makes system
    // calls on what was prepared above, then execs or exits.
    let cloned = unsafe {
        clone_child(
            0,
            cgroup.as_ref().map(|fd| fd.as_raw_fd()),
            pidns.as_ref().map(|fd| fd.as_raw_fd()),
        )
    };
    match cloned.map_err(StartError::parent("clone"))? {
        CloneResult::Child => {
            sys::reset_oom_score_in_child();
            let ends = stdio.as_ref().map(StdioPipes::child_ends);
            let failure = enter(&joins, &root, &null, ends, console.as_ref(), &plan)
                .err()
                .unwrap_or_else(|| plan.exec(&argv, &envp));
            let (step, path, errno) = failure;
            report_and_exit(err_w.as_raw_fd(), step, &path, errno)
        }
        CloneResult::Parent(child) => {
            drop(err_w);
            let io = stdio.map(StdioPipes::into_parent_ends).transpose()?;
            let mut no_hooks = || Ok(());
            match read_child_error(&err_r, false, &mut no_hooks) {
                Some(e) => Err(e),
                None => Ok(Spawned {
                    pid: child,
                    io,
                    gate_fds: None,
                    cgroup: None,
                    shared_root: None,
                }),
            }
        }
    }
}

/// The child's steps: a clean signal state and session, stdio, the
/// container's namespaces and root, the terminal, then the process.
fn enter(
    joins: &[(OwnedFd, libc::c_int, &str)],
    root: &OwnedFd,
    null: &std::fs::File,
    stdio: Option<ChildStdio>,
    console: Option<&OwnedFd>,
    plan: &ProcessPlan,
) -> Result<(), Failure> {
    // 1. Signal state, session, stdio.
    sys::SigSet::of(&[])
        .set_mask()
        .map_err(fail_io(Step::Stdio, "signal mask"))?;
    sys::reset_signal_dispositions();
    sys::setsid().map_err(fail_io(Step::Stdio, "setsid"))?;
    if let Some(stdio) = stdio {
        stdio.install(null.as_raw_fd())?;
    }

    // 2. Namespaces, user last (the pid namespace was joined at clone).
    for (fd, flag, name) in joins {
        sys::setns(fd.as_raw_fd(), *flag).map_err(fail_io(
            Step::JoinNamespace,
            &format!("/proc/PID/ns/{name}"),
        ))?;
    }

    // 3. The container's root (after the mount namespace, whose own root
    //    may not be it when the container shares ours and chrooted).
    rustix::process::fchdir(root).map_err(fail(Step::PivotRoot, "container root"))?;
    rustix::process::chroot(".").map_err(fail(Step::PivotRoot, "container root"))?;
    rustix::process::chdir("/").map_err(fail(Step::PivotRoot, "/"))?;

    // 4. The terminal, from the container's devpts.
    if let Some(socket) = console {
        console::attach(socket.as_fd(), plan.console_size, false)?;
    }

    // 5. The process itself.
    plan.become_it()
}
