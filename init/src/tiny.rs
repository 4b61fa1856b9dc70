//! Tiny-init mode: `hafen-init [OPTIONS] [--] CMD [ARGS...]` runs CMD as its
//! child, forwards the signals it receives, reaps every zombie, and exits
//! with CMD's status — the job tini, dumb-init and catatonit do for a
//! container's PID 1.
//!
//! One loop reads a signalfd: every catchable signal except the synchronous
//! ones (SEGV, BUS, ILL, FPE, TRAP, ABRT, SYS) is blocked before the child
//! exists, so no exit and no signal is lost, and reaping happens in the
//! same place that forwards signals.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sys::{self, ExitStatus, SigSet};

const USAGE: &str = "usage: hafen-init [OPTIONS] [--] CMD [ARGS...]
Runs CMD as a child, forwards signals to it, reaps zombies, exits with its status.
options:
  -g                   forward signals to CMD's process group, not just CMD
  -s                   register as child subreaper (also: TINI_SUBREAPER, HAFEN_SUBREAPER)
  -p SIGNAL            signal to receive when our parent dies
  -e CODE              treat exit code CODE as 0 (repeatable)
  --wait-children SECS when CMD exits, send TERM to what is left, wait up to SECS, then KILL
  -v                   more messages (repeatable)
  -V, --version        print the version
  -h, --help           print this help
Option parsing stops at the first argument that is not an option.";

/// Parsed command line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    group: bool,
    subreaper: bool,
    parent_death: Option<i32>,
    zero_codes: Vec<i32>,
    wait_children: Option<u64>,
    verbosity: u8,
    command: Vec<OsString>,
}

/// What parsing asks for instead of running a command.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Run(Options),
    Help,
    Version,
    Error(String),
}

fn parse(args: Vec<OsString>) -> Parsed {
    let mut o = Options::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str() else {
            o.command.push(arg);
            break;
        };
        let mut value = |name: &str| {
            it.next()
                .and_then(|v| v.into_string().ok())
                .ok_or(format!("{name} needs a value"))
        };
        match s {
            "--" => break,
            "-h" | "--help" => return Parsed::Help,
            "-V" | "--version" => return Parsed::Version,
            "-g" => o.group = true,
            "-s" => o.subreaper = true,
            "-v" | "-vv" | "-vvv" => o.verbosity += (s.len() - 1) as u8,
            "-p" => match value("-p")
                .map(|v| hafen_proto::signal::parse(&v).ok_or(format!("-p: unknown signal {v:?}")))
            {
                Ok(Ok(sig)) => o.parent_death = Some(sig),
                Ok(Err(e)) | Err(e) => return Parsed::Error(e),
            },
            "-e" => match value("-e").map(|v| {
                v.parse::<i32>()
                    .ok()
                    .filter(|c| (0..=255).contains(c))
                    .ok_or(format!("-e: {v:?} is not an exit code (0-255)"))
            }) {
                Ok(Ok(code)) => o.zero_codes.push(code),
                Ok(Err(e)) | Err(e) => return Parsed::Error(e),
            },
            "--wait-children" => match value("--wait-children").map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("--wait-children: {v:?} is not whole seconds"))
            }) {
                Ok(Ok(secs)) => o.wait_children = Some(secs),
                Ok(Err(e)) | Err(e) => return Parsed::Error(e),
            },
            _ if s.starts_with('-') && s.len() > 1 => {
                return Parsed::Error(format!("unknown option {s:?}"))
            }
            _ => {
                o.command.push(arg);
                break;
            }
        }
    }
    o.command.extend(it);
    if o.command.is_empty() {
        return Parsed::Error("no command given".into());
    }
    Parsed::Run(o)
}

/// Signals that report a fault of the process itself: left alone so a
/// crash of the init is not hidden.
const SYNCHRONOUS: [i32; 7] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGSYS,
];

fn catchable() -> Vec<i32> {
    (1..=libc::SIGRTMAX())
        .filter(|s| *s != libc::SIGKILL && *s != libc::SIGSTOP && !SYNCHRONOUS.contains(s))
        // glibc and musl reserve 32-33 (or 32-34) for threads.
        .filter(|s| !(32..libc::SIGRTMIN()).contains(s))
        .collect()
}

fn say(msg: &str) {
    let _ = sys::write_all(2, format!("hafen-init: {msg}\n").as_bytes());
}

/// Runs the tiny init with the arguments after the program name; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let mut o = match parse(args) {
        Parsed::Run(o) => o,
        Parsed::Help => {
            println!("{USAGE}");
            return 0;
        }
        Parsed::Version => {
            println!("hafen-init {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Parsed::Error(e) => {
            say(&format!("{e}\n{USAGE}"));
            return 2;
        }
    };
    let env_set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    o.subreaper |= env_set("TINI_SUBREAPER") || env_set("HAFEN_SUBREAPER");
    let pid1 = std::process::id() == 1;
    if !pid1 {
        if o.subreaper {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
                say(&format!(
                    "cannot become a child subreaper: {}",
                    std::io::Error::last_os_error()
                ));
            }
        } else {
            say("warning: not PID 1 and not a subreaper (-s): orphaned grandchildren will not be reaped here");
        }
    }
    if let Some(sig) = o.parent_death {
        // SAFETY: getppid and prctl take no pointers.
        let parent = unsafe { libc::getppid() };
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
        // The parent may have died between our start and the prctl.
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            let _ = sys::kill(std::process::id() as libc::pid_t, sig);
        }
    }

    // Block before the child exists: nothing it does can be missed.
    let handled = SigSet::of(&catchable());
    let signals = match handled.block().and_then(|()| handled.signalfd_blocking()) {
        Ok(fd) => fd,
        Err(e) => {
            say(&format!("cannot set up signal handling: {e}"));
            return 1;
        }
    };

    let program = o.command[0].clone();
    let mut cmd = Command::new(&program);
    cmd.args(&o.command[1..]);
    // SAFETY: between fork and exec only async-signal-safe calls: setpgid,
    // isatty, tcsetpgrp, sigprocmask, signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            // Take the terminal while SIGTTOU is still blocked, so job control works.
            if libc::isatty(0) == 1 {
                libc::tcsetpgrp(0, libc::getpgrp());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for sig in 1..libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(child) => child.id() as libc::pid_t,
        Err(e) => {
            let shown = program.to_string_lossy();
            return match e.kind() {
                std::io::ErrorKind::NotFound => {
                    say(&format!("{shown}: command not found"));
                    127
                }
                _ => {
                    say(&format!("{shown}: cannot execute: {e}"));
                    126
                }
            };
        }
    };
    if o.verbosity > 0 {
        say(&format!(
            "started {} as pid {child}",
            program.to_string_lossy()
        ));
    }
    supervise(&o, child, &signals, pid1)
}

/// Forwards signals and reaps until the child exits; returns the exit code.
fn supervise(o: &Options, child: libc::pid_t, signals: &std::os::fd::OwnedFd, pid1: bool) -> i32 {
    let target = if o.group { -child } else { child };
    // One blocking read per signal: the fewest system calls between a signal
    // arriving and it being forwarded.
    let status = loop {
        let sig = match sys::read_signal(signals) {
            Ok(Some(sig)) => sig,
            Ok(None) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                say(&format!(
                    "reading signals failed: {e}; waiting for the child instead"
                ));
                break wait_for(child);
            }
        };
        if sig != libc::SIGCHLD {
            match sys::kill(target, sig) {
                Err(e) if o.verbosity > 0 => say(&format!(
                    "cannot forward {}: {e}",
                    hafen_proto::signal::name(sig)
                )),
                Ok(()) if o.verbosity > 1 => say(&format!(
                    "forwarded {} to {target}",
                    hafen_proto::signal::name(sig)
                )),
                _ => {}
            }
            continue;
        }
        let mut exited = None;
        while let Ok(Some((pid, status))) = sys::reap_one() {
            if pid == child {
                exited = Some(status);
            }
        }
        if let Some(status) = exited {
            break status;
        }
    };
    if let Some(secs) = o.wait_children {
        drain_children(secs, signals, pid1, o.verbosity);
    }
    let code = match status {
        ExitStatus::Code(code) => code,
        ExitStatus::Signal(sig) => 128 + sig,
    };
    if o.zero_codes.contains(&code) {
        0
    } else {
        code
    }
}

fn wait_readable(fd: libc::c_int, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

/// Our direct children (as a subreaper, orphans become ours).
fn children() -> Vec<libc::pid_t> {
    let me = std::process::id().to_string();
    let path = format!("/proc/{me}/task/{me}/children");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn signal_rest(sig: i32, pid1: bool) {
    if pid1 {
        // In our own pid namespace, -1 is exactly everything but us.
        let _ = sys::kill(-1, sig);
    } else {
        for pid in children() {
            let _ = sys::kill(pid, sig);
        }
    }
}

/// Blocks until `child` exits (the fallback when signals cannot be read).
fn wait_for(child: libc::pid_t) -> ExitStatus {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer.
    while unsafe { libc::waitpid(child, &mut status, 0) } == -1 {
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return ExitStatus::Code(1);
        }
    }
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

/// `--wait-children`: TERM to what is left, up to `secs` for it to go, then KILL.
fn drain_children(secs: u64, signals: &std::os::fd::OwnedFd, pid1: bool, verbosity: u8) {
    // From here on the signalfd is only polled with timeouts and drained.
    let _ = sys::set_nonblocking(signals.as_raw_fd());
    while let Ok(Some(_)) = sys::reap_one() {}
    if children().is_empty() {
        return;
    }
    signal_rest(libc::SIGTERM, pid1);
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        while let Ok(Some(_)) = sys::reap_one() {}
        if children().is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        wait_readable(
            signals.as_raw_fd(),
            left.as_millis().min(i32::MAX as u128) as i32 + 1,
        );
        while let Ok(Some(_)) = sys::read_signal(signals) {}
    }
    if verbosity > 0 {
        say("children still running after --wait-children; sending SIGKILL");
    }
    signal_rest(libc::SIGKILL, pid1);
    let stop = Instant::now() + Duration::from_secs(5);
    while !children().is_empty() && Instant::now() < stop {
        while let Ok(Some(_)) = sys::reap_one() {}
        wait_readable(signals.as_raw_fd(), 10);
        while let Ok(Some(_)) = sys::read_signal(signals) {}
    }
    while let Ok(Some(_)) = sys::reap_one() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_stop_at_the_first_non_option() {
        let Parsed::Run(o) = parse(args(&["-g", "-e", "3", "sh", "-c", "exit 3"])) else {
            panic!("run")
        };
        assert!(o.group);
        assert_eq!(o.zero_codes, [3]);
        assert_eq!(o.command, args(&["sh", "-c", "exit 3"]));
        let Parsed::Run(o) = parse(args(&["--", "-weird-name", "-x"])) else {
            panic!("run")
        };
        assert_eq!(o.command, args(&["-weird-name", "-x"]));
        let Parsed::Run(o) = parse(args(&[
            "-p",
            "SIGKILL",
            "--wait-children",
            "5",
            "-vv",
            "true",
        ])) else {
            panic!("run")
        };
        assert_eq!(
            (o.parent_death, o.wait_children, o.verbosity),
            (Some(9), Some(5), 2)
        );
    }

    #[test]
    fn bad_usage_is_explained() {
        assert_eq!(
            parse(args(&["-p", "NOPE", "true"])),
            Parsed::Error("-p: unknown signal \"NOPE\"".into())
        );
        assert!(
            matches!(parse(args(&["-e", "300", "true"])), Parsed::Error(e) if e.contains("exit code"))
        );
        assert!(matches!(parse(args(&["-z", "true"])), Parsed::Error(e) if e.contains("-z")));
        assert!(matches!(parse(args(&["-g"])), Parsed::Error(e) if e.contains("no command")));
        assert_eq!(parse(args(&["-V"])), Parsed::Version);
    }

    #[test]
    fn synchronous_signals_are_never_blocked() {
        let set = catchable();
        for sig in SYNCHRONOUS {
            assert!(!set.contains(&sig));
        }
        assert!(
            set.contains(&libc::SIGTERM)
                && set.contains(&libc::SIGCHLD)
                && set.contains(&libc::SIGTSTP)
        );
        assert!(set.contains(&libc::SIGRTMIN()) && set.contains(&libc::SIGRTMAX()));
    }
}
