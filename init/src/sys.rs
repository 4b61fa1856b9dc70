//! Thin, safe wrappers over the Linux calls hafen-init needs that rustix does
//! not cover in the shape we want (raw clone, signalfd, epoll with our own
//! tokens, wait statuses). Every `unsafe` block in system mode lives here.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Converts a `-1`-on-error return value into an `io::Result`.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Which side of a [`clone_process`] we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneResult {
    /// In the parent; the child's pid (as seen from the parent's namespace).
    Parent(libc::pid_t),
    /// In the child.
    Child,
}

/// Creates a child process like `fork`, in the new namespaces named by `flags`
/// (`CLONE_NEW*`). The child gets `SIGCHLD` as its exit signal.
///
/// # Safety
/// The caller must be single-threaded (hafen-init is), and the child must
/// only make raw system calls and then `exec` or [`exit_now`]: the C
/// library's cached thread id is stale in the child, so it must not call
/// functions that rely on it (pthread, `raise`).
pub unsafe fn clone_process(flags: libc::c_int) -> io::Result<CloneResult> {
    // SAFETY: a null stack makes the kernel reuse the caller's stack
    // copy-on-write, exactly like fork; the remaining arguments are unused
    // without CLONE_*TID/CLONE_SETTLS. The caller upholds the rules above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match check(ret)? {
        0 => Ok(CloneResult::Child),
        pid => Ok(CloneResult::Parent(pid as libc::pid_t)),
    }
}

/// clone3's flag to start the child in a cgroup (not in libc yet).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` for clone3(2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Like [`clone_process`], but the child starts inside the cgroup `cgroup`
/// (a directory handle), so none of its work runs outside its limits.
///
/// # Safety
/// The same rules as [`clone_process`].
pub unsafe fn clone_into_cgroup(flags: libc::c_int, cgroup: RawFd) -> io::Result<CloneResult> {
    let mut args = CloneArgs {
        flags: flags as u32 as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup as u64,
        ..CloneArgs::default()
    };
    // SAFETY: the caller upholds the rules for the child.
    unsafe { clone3(&mut args) }
}

/// clone3(2) with `args`.
///
/// # Safety
/// The same rules as [`clone_process`].
unsafe fn clone3(args: &mut CloneArgs) -> io::Result<CloneResult> {
    // SAFETY: args is a valid clone_args of the size we pass; a zero stack
    // makes the child run on a copy of ours, like fork. The caller upholds
    // the rules for the child.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match check(ret)? {
        0 => Ok(CloneResult::Child),
        pid => Ok(CloneResult::Parent(pid as libc::pid_t)),
    }
}

/// Like [`clone_into_cgroup`] (with `cgroup`) or [`clone_process`], but the
/// child becomes our parent's child (`CLONE_PARENT`), not ours. This is how a
/// short-lived intermediate that has joined another pid namespace hands the
/// new process to its caller, whose reaper then owns it.
///
/// # Safety
/// The same rules as [`clone_process`].
pub unsafe fn clone_sibling(flags: libc::c_int, cgroup: Option<RawFd>) -> io::Result<CloneResult> {
    let mut args = CloneArgs {
        flags: flags as u32 as u64 | libc::CLONE_PARENT as u64,
        // With CLONE_PARENT the kernel takes the exit signal from the caller
        // (SIGCHLD for our processes) and clone3 insists on zero here.
        exit_signal: 0,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // SAFETY: the caller upholds the rules for the child.
    unsafe { clone3(&mut args) }
}

/// Waits (blocking) for any child to exit; `None` when there are none left.
pub fn wait_any() -> io::Result<Option<libc::pid_t>> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid > 0 {
            return Ok(Some(pid));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// Joins the namespace `fd` refers to.
pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag.
    check(unsafe { libc::setns(fd, nstype) } as libc::c_long).map(drop)
}

/// Moves the calling thread into a new network namespace of its own (the
/// rest of the process stays where it was).
pub fn unshare_netns() -> io::Result<()> {
    // SAFETY: CLONE_NEWNET only changes the calling thread's network
    // namespace; no memory or descriptor table is split from other threads,
    // which is what makes unshare unsafe in general.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
    Ok(())
}

/// Moves the calling process into a new mount namespace of its own (a copy
/// of the current one). For single-threaded helpers only.
pub fn unshare_mountns() -> io::Result<()> {
    // SAFETY: CLONE_NEWNS also unshares the filesystem context (root, cwd,
    // umask), which is what makes unshare unsafe with other threads sharing
    // it; the callers (the build helper) are single-threaded.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
    Ok(())
}

/// Sets a resource limit of the calling process.
pub fn setrlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: limit is a valid rlimit; prlimit(0) addresses the caller.
    check(unsafe { libc::prlimit(0, resource as _, &limit, std::ptr::null_mut()) } as libc::c_long)
        .map(drop)
}

/// Sets the NIS domain name of the caller's UTS namespace.
pub fn setdomainname(name: &[u8]) -> io::Result<()> {
    // SAFETY: name is valid for name.len() bytes.
    check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) } as libc::c_long)
        .map(drop)
}

/// Ends the current process at once, without running destructors or atexit
/// handlers (for a cloned child whose setup failed).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and takes any status.
    unsafe { libc::_exit(code) }
}

/// Replaces the process image. Returns only on failure.
pub fn execve(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: path is NUL-terminated; argv and envp are null-terminated arrays
    // of pointers into CStrings the caller keeps alive across this call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// Duplicates `fd` onto `target` (clearing CLOEXEC on the copy).
pub fn dup2(fd: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only manipulates the descriptor table.
    check(unsafe { libc::dup2(fd, target) } as libc::c_long).map(drop)
}

/// Starts a new session with the caller as leader.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no pointers.
    check(unsafe { libc::setsid() } as libc::c_long).map(drop)
}

/// Sets supplementary groups, gid and uid, in that order.
pub fn set_identity(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: groups points at groups.len() valid gid_t values.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } as libc::c_long)?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresgid(gid, gid, gid) } as libc::c_long)?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(uid, uid, uid) } as libc::c_long).map(drop)
}

/// Sends `signal` to `pid` (a negative pid addresses a process group, -1 everyone).
pub fn kill(pid: libc::pid_t, signal: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::kill(pid, signal) } as libc::c_long).map(drop)
}

/// How a reaped child ended: the control protocol's type, so what the
/// reaper sees goes to the host as it is.
pub use hafen_proto::control::ExitStatus;

/// Decodes a wait status from waitpid(2).
fn exit_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

/// Reaps one exited child without blocking; `None` when no child has exited.
pub fn reap_one() -> io::Result<Option<(libc::pid_t, ExitStatus)>> {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        -1 => {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ECHILD) {
                Ok(None)
            } else {
                Err(err)
            }
        }
        0 => Ok(None),
        pid => Ok(Some((pid, exit_status(status)))),
    }
}

/// A signal set.
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl std::fmt::Debug for SigSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigSet")
    }
}

impl SigSet {
    /// A set holding `signals`.
    pub fn of(signals: &[i32]) -> SigSet {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it fully.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: set is a valid sigset_t.
        unsafe { libc::sigemptyset(&mut set) };
        for &sig in signals {
            // SAFETY: set is valid; an invalid number only makes sigaddset fail.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
        SigSet(set)
    }

    /// Blocks these signals for the calling thread (so a signalfd receives them).
    pub fn block(&self) -> io::Result<()> {
        self.mask(libc::SIG_BLOCK)
    }

    /// Makes this set the whole signal mask (used before exec to hand a clean mask on).
    pub fn set_mask(&self) -> io::Result<()> {
        self.mask(libc::SIG_SETMASK)
    }

    fn mask(&self, how: libc::c_int) -> io::Result<()> {
        // SAFETY: both pointers are valid or null.
        let ret = unsafe { libc::sigprocmask(how, &self.0, std::ptr::null_mut()) };
        check(ret as libc::c_long).map(drop)
    }

    /// A non-blocking, close-on-exec signalfd for this set.
    pub fn signalfd(&self) -> io::Result<OwnedFd> {
        self.signalfd_with(libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
    }

    /// A blocking, close-on-exec signalfd: one read per signal, no poll.
    pub fn signalfd_blocking(&self) -> io::Result<OwnedFd> {
        self.signalfd_with(libc::SFD_CLOEXEC)
    }

    fn signalfd_with(&self, flags: libc::c_int) -> io::Result<OwnedFd> {
        // SAFETY: -1 asks for a new descriptor; the set pointer is valid.
        let fd = unsafe { libc::signalfd(-1, &self.0, flags) };
        check(fd as libc::c_long)?;
        // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Resets every catchable signal's disposition to the default (for a child before exec).
pub fn reset_signal_dispositions() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; failures (for
        // numbers the C library reserves) are harmless and ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// Reads one pending signal from a signalfd; `None` when none is pending.
pub fn read_signal(fd: &OwnedFd) -> io::Result<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: info is a writable buffer of `size` bytes.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    match n {
        -1 => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(err)
            }
        }
        n if n as usize == size => Ok(Some(info.ssi_signo as i32)),
        _ => Ok(None),
    }
}

/// An epoll instance whose events carry tokens we allocate, never raw fds.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    /// Creates a close-on-exec epoll instance.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes only flags.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        check(fd as libc::c_long)?;
        // SAFETY: fresh descriptor owned by nobody else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for input (and hang-up) under `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, EPOLL_INPUT)
    }

    /// Watches `fd` for `events` (EPOLLIN, EPOLLOUT; hang-up and errors
    /// are always reported) under `token`.
    pub fn add_with(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: events | (libc::EPOLLHUP | libc::EPOLLERR) as u32,
            u64: token,
        };
        // SAFETY: event is a valid epoll_event; fd validity is checked by the kernel.
        let ret = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut event) };
        check(ret as libc::c_long).map(drop)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in add; the event is ignored for DEL on current kernels.
        let ret =
            unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut event) };
        check(ret as libc::c_long).map(drop)
    }

    /// Waits up to `timeout_ms` (-1: forever) and appends ready tokens
    /// with their events (`EPOLLIN`, `EPOLLOUT`, `EPOLLHUP`...) to `out`.
    pub fn wait(&self, timeout_ms: i32, out: &mut Vec<(u64, u32)>) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        // SAFETY: events is a writable array of the length we pass.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        if n == -1 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        out.extend(events.iter().take(n as usize).map(|e| (e.u64, e.events)));
        Ok(())
    }
}

/// Input readiness, for [`Epoll::add_with`].
pub const EPOLL_INPUT: u32 = libc::EPOLLIN as u32;
/// Output readiness, for [`Epoll::add_with`].
pub const EPOLL_OUTPUT: u32 = libc::EPOLLOUT as u32;
/// Hang-up, as [`Epoll::wait`] reports it.
pub const EPOLL_HANGUP: u32 = (libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// Asks the kernel to send us SIGIO when `fd` becomes readable or its
/// peer connects (O_ASYNC with us as the owner).
pub fn signal_io(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments.
    check(unsafe { libc::fcntl(fd, libc::F_SETOWN, libc::getpid()) } as libc::c_long)?;
    // SAFETY: as above.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) } as libc::c_long)?;
    // SAFETY: as above.
    check(
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags as libc::c_int | libc::O_ASYNC) }
            as libc::c_long,
    )
    .map(drop)
}

/// Writes what `fd` takes now; `Ok(None)` when it would block.
pub fn write_some(fd: RawFd, buf: &[u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: buf is readable for buf.len() bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a writable array of two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes `fd` non-blocking.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL takes integers only.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) } as libc::c_long)?;
    // SAFETY: as above.
    check(
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags as libc::c_int | libc::O_NONBLOCK) }
            as libc::c_long,
    )
    .map(drop)
}

/// Reads into `buf`; `Ok(None)` when the read would block.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: buf is writable for buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n == -1 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            // Level-triggered epoll reports the fd again after an interruption.
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(n as usize))
}

/// Writes all of `buf`, retrying on partial writes and EINTR.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is readable for buf.len() bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Nanoseconds since boot, including suspend (CLOCK_BOOTTIME).
pub fn boottime_ns() -> u64 {
    // SAFETY: timespec is plain data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid out-pointer; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Set once PID 1 has made itself the OOM killer's last choice: the
/// processes it starts must not inherit that.
static CHILDREN_RESET_OOM_SCORE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Makes this process the OOM killer's last choice (`oom_score_adj`
/// -1000), and every child started through the container runtime go back
/// to 0 ([`reset_oom_score_in_child`]).
pub fn protect_from_oom() -> io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", "-1000")?;
    CHILDREN_RESET_OOM_SCORE.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// In a child between clone and exec: undoes [`protect_from_oom`] (raising
/// the score needs no privilege). Only raw system calls; best effort.
pub fn reset_oom_score_in_child() {
    if CHILDREN_RESET_OOM_SCORE.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(fd) = rustix::fs::open(
            c"/proc/self/oom_score_adj",
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            let _ = rustix::io::write(&fd, b"0");
        }
    }
}

/// CPU time this process has used, user and system, in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds on the monotonic clock, for deadlines.
pub fn monotonic_ns() -> u64 {
    // SAFETY: as in boottime_ns.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as in boottime_ns.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sets the `IFF_UP` flag on a network interface (used for `lo`).
pub fn interface_up(name: &str) -> io::Result<()> {
    // SAFETY: socket takes integers only.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(sock as libc::c_long)?;
    // SAFETY: fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq for SIOCGIFFLAGS.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) };
    check(ret as libc::c_long)?;
    // SAFETY: the kernel filled ifru_flags for SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: req is a valid ifreq for SIOCSIFFLAGS.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } as libc::c_long)
        .map(drop)
}

/// Makes Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
pub fn disable_ctrl_alt_del() -> io::Result<()> {
    // SAFETY: reboot with RB_DISABLE_CAD only flips a kernel flag.
    check(unsafe { libc::reboot(libc::RB_DISABLE_CAD) } as libc::c_long).map(drop)
}

/// Powers the machine off (`reboot == false`) or restarts it. Returns only on failure.
pub fn power(reboot: bool) -> io::Error {
    let cmd = if reboot {
        libc::RB_AUTOBOOT
    } else {
        libc::RB_POWER_OFF
    };
    // SAFETY: reboot takes an integer command; on success it does not return.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

/// Flushes every filesystem.
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

// Tiny init (`tiny.rs`): the signal state a child inherits, as tini hands it on.

/// Whether `signal` is set to be ignored in the calling process.
pub fn signal_ignored(signal: i32) -> io::Result<bool> {
    // SAFETY: sigaction is plain data; a null new action only queries.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: old is a valid out-pointer.
    check(unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) } as libc::c_long)?;
    Ok(old.sa_sigaction == libc::SIG_IGN)
}

/// Sets `signal` to be ignored, or to its default action. Async-signal-safe,
/// so a child may call it between fork and exec.
pub fn set_signal_ignored(signal: i32, ignored: bool) -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero is an empty mask and no flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = if ignored {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };
    // SAFETY: action is a valid sigaction; the old one is not asked for.
    check(unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } as libc::c_long)
        .map(drop)
}

impl SigSet {
    /// Makes this set the whole signal mask; returns the mask it replaces.
    pub fn swap_mask(&self) -> io::Result<SigSet> {
        // SAFETY: sigset_t is plain data, filled by sigprocmask.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid.
        let ret = unsafe { libc::sigprocmask(libc::SIG_SETMASK, &self.0, &mut old) };
        check(ret as libc::c_long)?;
        Ok(SigSet(old))
    }

    /// Whether `signal` is in the set.
    pub fn contains(&self, signal: i32) -> bool {
        // SAFETY: the set is a valid sigset_t; an invalid number yields -1.
        unsafe { libc::sigismember(&self.0, signal) == 1 }
    }
}

/// SIGPIPE's disposition when the process started: 0 unknown, 1 default, 2 ignored.
static SIGPIPE_AT_START: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Records SIGPIPE's inherited disposition. It runs from `.init_array`, before
/// Rust's runtime sets SIGPIPE to ignored (which would hide the caller's choice).
extern "C" fn record_sigpipe_at_start() {
    let state = match signal_ignored(libc::SIGPIPE) {
        Ok(true) => 2,
        Ok(false) => 1,
        Err(_) => 0,
    };
    SIGPIPE_AT_START.store(state, std::sync::atomic::Ordering::Relaxed);
}

#[used]
#[link_section = ".init_array"]
static RECORD_SIGPIPE_AT_START: extern "C" fn() = record_sigpipe_at_start;

/// Whether SIGPIPE was ignored when this process was executed (before Rust's
/// runtime changed it); `None` if that could not be recorded.
pub fn sigpipe_ignored_at_start() -> Option<bool> {
    // Referencing the constructor keeps the linker from dropping it with an
    // otherwise unused object file.
    std::hint::black_box(&RECORD_SIGPIPE_AT_START);
    match SIGPIPE_AT_START.load(std::sync::atomic::Ordering::Relaxed) {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

/// Registers the caller as a child subreaper: orphans below it become its children.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } as libc::c_long)
        .map(drop)
}

/// Whether the caller is a child subreaper (the flag survives exec).
pub fn is_child_subreaper() -> io::Result<bool> {
    let mut flag: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer.
    check(unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            &mut flag as *mut libc::c_int,
            0,
            0,
            0,
        )
    } as libc::c_long)?;
    Ok(flag != 0)
}

/// Asks for `signal` when the parent dies.
pub fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) }
            as libc::c_long,
    )
    .map(drop)
}

/// The parent's pid.
pub fn parent_pid() -> libc::pid_t {
    // SAFETY: getppid takes no arguments and cannot fail.
    unsafe { libc::getppid() }
}

/// Blocks until the child `pid` ends (retrying on EINTR).
pub fn wait_child(pid: libc::pid_t) -> io::Result<ExitStatus> {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } == -1 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(exit_status(status))
}

/// Waits up to `timeout_ms` for `fd` to be readable; whether it is.
pub fn poll_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd.
    let n = check(unsafe { libc::poll(&mut pfd, 1, timeout_ms) } as libc::c_long)?;
    Ok(n > 0)
}

/// What a tiny init's child gets between fork and exec, in tini's order: its
/// own process group, the terminal's foreground when stdin is one, then the
/// signal mask and dispositions the init itself was started with.
#[derive(Debug, Clone)]
pub struct JobChild {
    /// The signal mask to hand on.
    pub mask: SigSet,
    /// Signals whose disposition to set: (signal, ignored).
    pub dispositions: Vec<(i32, bool)>,
}

/// Arranges for `cmd`'s child to be set up as `setup` says.
pub fn set_up_job_child(cmd: &mut std::process::Command, setup: JobChild) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only makes async-signal-safe calls (setpgid,
    // getpgrp, tcsetpgrp, sigprocmask, sigaction) on data prepared before
    // fork; iterating the Vec does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::setpgid(0, 0) as libc::c_long)?;
            // The init ignores SIGTTOU, and the child still does, so taking
            // the terminal from a background group cannot stop it. No
            // terminal (ENOTTY) is the usual case and not an error.
            libc::tcsetpgrp(0, libc::getpgrp());
            setup.mask.set_mask()?;
            for &(signal, ignored) in &setup.dispositions {
                set_signal_ignored(signal, ignored)?;
            }
            Ok(())
        });
    }
}

/// Arranges for `cmd`'s child, a helper PID 1 starts outside any
/// container, to begin with an empty signal mask (PID 1 blocks the signals
/// its signalfd reads) and the default OOM score (PID 1's protection is
/// its own).
pub fn set_up_helper_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let empty = SigSet::of(&[]);
    // SAFETY: the closure makes only async-signal-safe calls (sigprocmask,
    // open, write, close) on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            empty.set_mask()?;
            reset_oom_score_in_child();
            Ok(())
        });
    }
}

/// Marks every descriptor from `first` up close-on-exec, so a program we
/// exec keeps only the ones below `first` (stdio and those a caller asked
/// to pass on). Between clone and exec: raw system calls only.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes integers only; with CLOSE_RANGE_CLOEXEC it
    // closes nothing and only sets a flag.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    match check(ret) {
        Ok(_) => Ok(()),
        // Before Linux 5.11: one fcntl per possible descriptor.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: limit is a valid out-pointer; prlimit(0) addresses the caller.
            let got =
                unsafe { libc::prlimit(0, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) };
            check(got as libc::c_long)?;
            let end = limit.rlim_cur.min(1 << 20) as libc::c_int;
            for fd in (first as libc::c_int)..end {
                // SAFETY: F_SETFD takes an integer; a closed fd only fails with EBADF.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}
