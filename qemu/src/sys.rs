//! The few system calls this crate needs beyond std: signal handlers that
//! feed a self-pipe, the QEMU child's set-up between fork and exec, a pidfd
//! to wait for QEMU in `poll`, and the host TSC rate. Every `unsafe` block of
//! this crate is here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The write end of the live [`SignalPipe`], or -1. A signal handler can
/// only reach global state, and an atomic load is async-signal-safe.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    // SAFETY: __errno_location returns this thread's errno slot; the handler
    // must leave errno as the interrupted code saw it.
    let errno = unsafe { *libc::__errno_location() };
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe and `byte` outlives the call. A
    // full pipe drops the byte, which is harmless: the reader is already
    // behind on signals of its own.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Catches some signals for as long as it lives and queues them on a pipe
/// that `poll` can watch.
///
/// Handlers rather than a blocked mask and a signalfd: a mask is per thread,
/// so in a multi-threaded caller (a test harness) a process-directed SIGTERM
/// could land in a thread that does not block it and kill the process. A
/// handler catches it in whichever thread it lands. Only one may exist per
/// process at a time.
#[derive(Debug)]
pub struct SignalPipe {
    read: OwnedFd,
    write: OwnedFd,
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalPipe {
    /// Installs handlers for `signals`, except those the process ignores
    /// (under `nohup`, SIGHUP stays ignored). Fails with
    /// [`io::ErrorKind::AlreadyExists`] when another one is alive.
    pub fn install(signals: &[libc::c_int]) -> io::Result<SignalPipe> {
        let mut fds = [-1; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
        // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if WAKE_FD
            .compare_exchange(-1, write.as_raw_fd(), Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "another VM run in this process is already catching signals",
            ));
        }
        let mut pipe = SignalPipe {
            read,
            write,
            previous: Vec::new(),
        };
        for &sig in signals {
            // SAFETY: sigaction is plain data; all-zero is a valid value
            // (SIG_DFL, empty mask, no flags) that sigaction overwrites.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: a null new action only queries; old is writable.
            check(unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) })?;
            if old.sa_sigaction == libc::SIG_IGN {
                continue;
            }
            // SAFETY: as above, all-zero is a valid sigaction.
            let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
            new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // Restart other threads' system calls rather than fail them with EINTR.
            new.sa_flags = libc::SA_RESTART;
            // SAFETY: new is initialised and the handler only makes
            // async-signal-safe calls; old is writable. Drop restores it.
            check(unsafe { libc::sigaction(sig, &new, &mut old) })?;
            pipe.previous.push((sig, old));
        }
        Ok(pipe)
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The signals caught since the last call, in order.
    pub fn take(&self) -> io::Result<Vec<libc::c_int>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: buf is writable for buf.len() bytes.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => return Ok(out),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(err),
                }
            }
            if n == 0 {
                return Ok(out);
            }
            out.extend(buf[..n as usize].iter().map(|&b| libc::c_int::from(b)));
        }
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        // Restore the handlers first so no new handler invocation sees our
        // descriptor, then retire it.
        for (sig, old) in self.previous.drain(..).rev() {
            // SAFETY: old is the action sigaction reported for this signal.
            unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
        }
        let _ = WAKE_FD.compare_exchange(
            self.write.as_raw_fd(),
            -1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

/// Starts `command` as a QEMU we own: in its own process group (so the
/// terminal's Ctrl-C reaches `hafen run`, which shuts the guest down
/// gracefully, and not QEMU, which would quit at once), killed by the kernel
/// if the thread that started it dies, with an empty signal mask, and with
/// `inherit` (a descriptor QEMU is told about on its command line) left open
/// across exec.
///
/// The parent-death signal is tied to the calling thread: call this from a
/// thread that outlives QEMU.
pub fn spawn_qemu(command: &mut Command, inherit: Option<RawFd>) -> io::Result<Child> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only async-signal-safe calls (setpgid, prctl, getppid, sigemptyset,
    // sigprocmask, signal, fcntl) on values prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            // 1. Own process group: terminal signals go to our group, not QEMU's.
            check(libc::setpgid(0, 0))?;
            // 2. SIGKILL QEMU when we die, even by SIGKILL.
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            // 3. We may have died between fork and prctl; then nobody would
            //    kill QEMU, so do not start it.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            // 4. A caller's blocked signals must not stay blocked in QEMU.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::sigprocmask(
                libc::SIG_SETMASK,
                &empty,
                std::ptr::null_mut(),
            ))?;
            // 5. QEMU writes the console to our terminal from a background
            //    process group; with `stty tostop` that would stop it.
            libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            // 6. Keep the inherited descriptor open across exec.
            if let Some(fd) = inherit {
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
            Ok(())
        })
    };
    command.spawn()
}

/// Has the kernel send this process SIGTERM (a first shutdown request
/// once the run's handlers are in) when `parent`, the process that forked
/// it, ends; if it has ended already, sends it now.
pub fn stop_with_parent(parent: u32) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) with a valid signal number.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u32 != parent {
        // SAFETY: raise with a valid signal number.
        unsafe { libc::raise(libc::SIGTERM) };
    }
}

/// A pidfd for our child `pid`: readable once it has exited. `None` on
/// kernels without pidfd_open (before 5.3); callers then poll on a timer.
pub fn pidfd(child: &Child) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(child.id()).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1. The pid is our unreaped child, so it cannot name another process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the kernel returned a fresh descriptor (close-on-exec) that
    // nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until one of `fds` is readable (or hung up) or `timeout` passes
/// (`None`: no limit). A signal interrupting the wait counts as a wake-up.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<()> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_ms = match timeout {
        None => -1,
        // Round up so a deadline is never polled for a moment early in a busy loop.
        Some(d) => libc::c_int::try_from(d.as_millis() + 1).unwrap_or(libc::c_int::MAX),
    };
    // SAFETY: pfds is a valid array of pfds.len() pollfd structs.
    match check(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) }) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        other => other.map(drop),
    }
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we borrow; F_GETFL takes no argument.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above; F_SETFL takes an int of flags.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// The host's time-stamp counter frequency in kHz, measured over `window`,
/// when the CPU says its TSC runs at a constant rate.
pub fn host_tsc_khz(window: Duration) -> Option<u64> {
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
    let micros = u64::try_from(start.elapsed().as_micros()).ok()?;
    (micros > 0).then(|| t1.saturating_sub(t0) * 1000 / micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_signal_reaches_the_pipe_and_only_one_pipe_may_exist() {
        let pipe = SignalPipe::install(&[libc::SIGUSR2]).expect("install");
        let second = SignalPipe::install(&[libc::SIGUSR2]).expect_err("second");
        assert_eq!(second.kind(), io::ErrorKind::AlreadyExists);
        // SAFETY: raise sends SIGUSR2 to this thread; the handler is installed.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        assert_eq!(pipe.take().expect("take"), vec![libc::SIGUSR2]);
        assert!(pipe.take().expect("take").is_empty());
    }
}
