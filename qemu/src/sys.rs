//! The few system calls `hafen run` needs beyond std: signal masks and a
//! signalfd, and the QEMU child's set-up between fork and exec. Every
//! `unsafe` block of this crate is here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data and sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &sig in signals {
        // SAFETY: set is valid; an invalid number only makes sigaddset fail.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

/// Blocks `signals` in the calling thread and returns a non-blocking
/// signalfd that receives them.
pub fn block_signals(signals: &[i32]) -> io::Result<OwnedFd> {
    let set = sigset(signals);
    // SAFETY: set is valid; the old mask is not wanted.
    check(unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: -1 asks for a new descriptor; set is valid.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
    // SAFETY: signalfd returned a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal; `None` when none is pending.
pub fn read_signal(fd: &OwnedFd) -> io::Result<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: info is writable for size bytes.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    if n == -1 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(err)
        };
    }
    Ok((n as usize == size).then_some(info.ssi_signo as i32))
}

/// Waits until one of `fds` is readable or `timeout_ms` passes (-1: forever).
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<()> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pfds is a valid array of pfds.len() pollfd structs.
    match check(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) }) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        other => other.map(drop),
    }
}

/// Starts `command` as QEMU: in its own process group (so the terminal's
/// Ctrl-C reaches `hafen run`, which shuts the guest down gracefully, and
/// not QEMU, which would quit at once), killed if we die, with a clean
/// signal mask.
pub fn spawn_qemu(command: &mut Command) -> io::Result<Child> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe calls (setpgid, prctl, sigprocmask, getppid).
    unsafe {
        command.pre_exec(move || {
            check(libc::setpgid(0, 0))?;
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            // We may have died between fork and prctl: then nobody would kill QEMU.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::sigprocmask(
                libc::SIG_SETMASK,
                &empty,
                std::ptr::null_mut(),
            ))?;
            Ok(())
        })
    };
    command.spawn()
}

/// Sends SIGKILL to a process we started.
pub fn kill(pid: u32) {
    // SAFETY: kill takes plain integers; the pid is our own child's.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// The host's time-stamp counter frequency in kHz, measured over `window`,
/// when the CPU says its TSC runs at a constant rate.
pub fn host_tsc_khz(window: std::time::Duration) -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    if !cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "constant_tsc"))
    {
        return None;
    }
    let start = std::time::Instant::now();
    // SAFETY: rdtsc has no preconditions on x86_64; constant_tsc was checked.
    let t0 = unsafe { std::arch::x86_64::_rdtsc() };
    std::thread::sleep(window);
    // SAFETY: as above.
    let t1 = unsafe { std::arch::x86_64::_rdtsc() };
    let micros = start.elapsed().as_micros() as u64;
    (micros > 0).then(|| (t1.saturating_sub(t0)) * 1000 / micros)
}
