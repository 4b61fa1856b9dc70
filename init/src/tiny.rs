//! Tiny-init mode: `hafen-init [OPTIONS] [--] CMD [ARGS...]` runs CMD as its
//! child, forwards the signals it receives, reaps every zombie, and exits
//! with CMD's status — the job tini, dumb-init and catatonit do for a
//! container's PID 1. It is a drop-in for tini: the same options, environment
//! variables, exit codes and signal handling, with `--wait-children` and `-V`
//! on top.
//!
//! One loop reads a signalfd: every catchable signal except the synchronous
//! ones (SEGV, BUS, ILL, FPE, TRAP, ABRT, SYS) and the terminal's TTIN and
//! TTOU is blocked before the child exists, so no exit and no signal is
//! lost, and reaping happens in the same place that forwards signals. TTIN
//! and TTOU are ignored instead, as tini does, so the init is never stopped
//! for touching a terminal whose foreground it handed to the child.
//!
//! The child gets back exactly the signal state the init was started with:
//! its mask and its ignored signals (tini's rule), not a cleared set.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sys::{self, ExitStatus, SigSet};

const USAGE: &str = "usage: hafen-init [OPTIONS] [--] CMD [ARGS...]
Runs CMD as a child, forwards signals to it, reaps zombies, exits with its status.
Options (short ones combine, as in -sg or -e3; parsing stops at CMD):
  -s                   register as a child subreaper when not PID 1
  -g                   send signals to CMD's process group, not just CMD
  -p SIGNAL            signal to receive when our parent dies, e.g. -p SIGKILL
  -e CODE              exit 0 when CMD exits with CODE, 0-255 (repeatable)
  -w                   warn about every zombie reaped that was not CMD
  -v                   more messages (repeatable, up to -vvv)
  --wait-children SECS when CMD exits, TERM what is left, wait up to SECS, then KILL
  -l                   print the license
  -V, --version        print the version
  -h, --help           print this help
Environment:
  TINI_SUBREAPER, HAFEN_SUBREAPER   set (to anything, even empty): like -s
  TINI_KILL_PROCESS_GROUP           set (to anything, even empty or 0): like -g
  TINI_VERBOSITY                    the message level (default 1: warnings)
Exit status: CMD's code, 128+N when CMD was killed by signal N, 127 when CMD
does not exist, 126 when it may not be executed, 1 on a usage error or when
CMD cannot be started for another reason.";

/// Message levels, as tini counts them: the default shows warnings.
const WARN: u32 = 1;
const INFO: u32 = 2;
const DEBUG: u32 = 3;

/// Parsed command line.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    group: bool,
    subreaper: bool,
    parent_death: Option<i32>,
    zero_codes: Vec<i32>,
    warn_on_reap: bool,
    wait_children: Option<u64>,
    verbosity: u32,
    command: Vec<OsString>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            group: false,
            subreaper: false,
            parent_death: None,
            zero_codes: Vec::new(),
            warn_on_reap: false,
            wait_children: None,
            verbosity: WARN,
            command: Vec::new(),
        }
    }
}

/// What parsing asks for instead of running a command.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Run(Options),
    Help,
    Version,
    License,
    /// A usage error: the message, then the usage, on stderr; exit 1.
    Usage(String),
    /// A bad option value: the message alone on stderr; exit 1.
    Invalid(String),
}

/// Parses options as tini's getopt does (`p:hvwgle:s`, clusters and attached
/// values) plus our own `-V` and long options, except that parsing stops at
/// the first argument that is not an option: tini permutes unless
/// POSIXLY_CORRECT is set, which would take `sh -c` for options of its own.
fn parse(args: Vec<OsString>) -> Parsed {
    let mut o = Options::default();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            i += 1;
            break;
        }
        if let Some(long) = bytes.strip_prefix(b"--") {
            let (name, inline) = match long.iter().position(|&b| b == b'=') {
                Some(eq) => (&long[..eq], Some(&long[eq + 1..])),
                None => (long, None),
            };
            match (name, inline) {
                (b"help", None) => return Parsed::Help,
                (b"version", None) => return Parsed::Version,
                (b"wait-children", _) => {
                    let value = match inline {
                        Some(v) => OsStr::from_bytes(v),
                        None => {
                            i += 1;
                            match args.get(i) {
                                Some(v) => v.as_os_str(),
                                None => {
                                    return Parsed::Usage(
                                        "option '--wait-children' requires an argument".into(),
                                    )
                                }
                            }
                        }
                    };
                    match value.to_str().and_then(|v| v.parse::<u64>().ok()) {
                        Some(secs) => o.wait_children = Some(secs),
                        None => {
                            return Parsed::Invalid(format!(
                                "not a valid option for --wait-children (whole seconds): {}",
                                value.to_string_lossy()
                            ))
                        }
                    }
                }
                _ => {
                    return Parsed::Usage(format!(
                        "unrecognized option '{}'",
                        arg.to_string_lossy()
                    ))
                }
            }
            i += 1;
            continue;
        }
        if bytes.len() < 2 || bytes[0] != b'-' {
            break;
        }
        let mut at = 1;
        while at < bytes.len() {
            let letter = bytes[at];
            at += 1;
            match letter {
                b'h' => return Parsed::Help,
                b'V' => return Parsed::Version,
                b'l' => return Parsed::License,
                b's' => o.subreaper = true,
                b'g' => o.group = true,
                b'w' => o.warn_on_reap = true,
                b'v' => o.verbosity = o.verbosity.saturating_add(1),
                b'p' | b'e' => {
                    // The value is the rest of this argument, or the next one.
                    let value = if at < bytes.len() {
                        OsStr::from_bytes(&bytes[at..])
                    } else {
                        i += 1;
                        match args.get(i) {
                            Some(v) => v.as_os_str(),
                            None => {
                                return Parsed::Usage(format!(
                                    "option requires an argument -- '{}'",
                                    letter as char
                                ))
                            }
                        }
                    };
                    at = bytes.len();
                    let text = value.to_string_lossy();
                    if letter == b'p' {
                        match value.to_str().and_then(hafen_proto::signal::parse) {
                            Some(sig) => o.parent_death = Some(sig),
                            None => {
                                return Parsed::Invalid(format!(
                                    "not a valid option for -p: {text}"
                                ))
                            }
                        }
                    } else {
                        match exit_code(value.as_bytes()) {
                            Some(code) => o.zero_codes.push(code),
                            None => {
                                return Parsed::Invalid(format!(
                                    "not a valid option for -e (an exit code, 0-255): {text}"
                                ))
                            }
                        }
                    }
                }
                other => {
                    return Parsed::Usage(format!(
                        "invalid option -- '{}'",
                        char::from(other).escape_default()
                    ))
                }
            }
        }
        i += 1;
    }
    o.command = args.into_iter().skip(i).collect();
    if o.command.is_empty() {
        return Parsed::Usage("no command given".into());
    }
    Parsed::Run(o)
}

/// C's reading of a leading integer: optional blanks, an optional sign,
/// then digits. Returns the sign, the digits and what follows them.
fn leading_integer(text: &[u8]) -> (bool, &[u8], &[u8]) {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let mut rest = &text[start..];
    let negative = rest.first() == Some(&b'-');
    if matches!(rest.first(), Some(b'-' | b'+')) {
        rest = &rest[1..];
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    (negative, &rest[..digits], &rest[digits..])
}

/// The value of decimal `digits`, saturating.
fn decimal(digits: &[u8]) -> i64 {
    digits.iter().fold(0i64, |n, &d| {
        n.saturating_mul(10).saturating_add(i64::from(d - b'0'))
    })
}

/// The leading integer of `text` as C's strtol reads it: optional blanks, an
/// optional sign, digits (none reads as 0); `None` when anything follows.
fn strtol(text: &[u8]) -> Option<i64> {
    let (negative, digits, after) = leading_integer(text);
    if digits.is_empty() {
        // strtol leaves its end pointer at the very start: only an empty
        // argument is then consumed whole.
        return text.is_empty().then_some(0);
    }
    let magnitude = decimal(digits);
    after
        .is_empty()
        .then_some(if negative { -magnitude } else { magnitude })
}

/// A `-e` value: tini takes what strtol reads whole, from 0 to 255.
fn exit_code(text: &[u8]) -> Option<i32> {
    strtol(text)
        .filter(|c| (0..=255).contains(c))
        .map(|c| c as i32)
}

/// `TINI_VERBOSITY` as tini reads it (atoi into an unsigned level): a leading
/// integer or 0; a negative level wraps around to "everything".
fn verbosity_from_env(text: &[u8]) -> u32 {
    let (negative, digits, _) = leading_integer(text);
    let value = decimal(digits).min(i64::from(i32::MAX)) as i32;
    (if negative { -value } else { value }) as u32
}

/// Applies tini's environment variables: set at all means on, whatever the value.
fn apply_env(o: &mut Options, var: impl Fn(&str) -> Option<OsString>) {
    if var("TINI_SUBREAPER").is_some() || var("HAFEN_SUBREAPER").is_some() {
        o.subreaper = true;
    }
    if var("TINI_KILL_PROCESS_GROUP").is_some() {
        o.group = true;
    }
    if let Some(level) = var("TINI_VERBOSITY") {
        o.verbosity = verbosity_from_env(level.as_bytes());
    }
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

/// Terminal signals the init ignores rather than forwards (tini's rule): it
/// gives the terminal's foreground to the child and must not be stopped for
/// writing to or reading from it.
const TERMINAL: [i32; 2] = [libc::SIGTTIN, libc::SIGTTOU];

/// The signals the init blocks, reads from its signalfd and forwards.
fn forwarded() -> Vec<i32> {
    (1..=libc::SIGRTMAX())
        .filter(|s| *s != libc::SIGKILL && *s != libc::SIGSTOP)
        .filter(|s| !SYNCHRONOUS.contains(s) && !TERMINAL.contains(s))
        // glibc and musl reserve 32-33 (or 32-34) for threads.
        .filter(|s| !(32..libc::SIGRTMIN()).contains(s))
        .collect()
}

fn say(msg: &str) {
    let _ = sys::write_all(2, format!("hafen-init: {msg}\n").as_bytes());
}

fn license() -> String {
    format!(
        "hafen-init {version} is part of Hafen, licensed under {license}\n\
         (the Apache License, Version 2.0). You may use, change and share it on that\n\
         license's terms; its full text is at https://www.apache.org/licenses/LICENSE-2.0.\n\
         It comes as it is, without warranties or conditions of any kind.",
        version = env!("CARGO_PKG_VERSION"),
        license = env!("CARGO_PKG_LICENSE"),
    )
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
        Parsed::License => {
            println!("{}", license());
            return 0;
        }
        Parsed::Usage(e) => {
            say(&format!("{e}\n{USAGE}"));
            return 1;
        }
        Parsed::Invalid(e) => {
            say(&e);
            return 1;
        }
    };
    apply_env(&mut o, |k| std::env::var_os(k));

    // Signals first, before anything can arrive (tini's order). What we
    // change here is recorded so the child gets the original back.
    let (signals, child_setup) = match take_signals() {
        Ok(taken) => taken,
        Err(e) => {
            say(&format!("cannot set up signal handling: {e}"));
            return 1;
        }
    };
    if let Some(sig) = o.parent_death {
        let parent = sys::parent_pid();
        if let Err(e) = sys::set_parent_death_signal(sig) {
            say(&format!("cannot set the parent death signal: {e}"));
            return 1;
        }
        // The parent may have died before the prctl: act as if it just did.
        if sys::parent_pid() != parent {
            let _ = sys::kill(std::process::id() as libc::pid_t, sig);
        }
    }
    let pid1 = std::process::id() == 1;
    if o.subreaper && !pid1 {
        if let Err(e) = sys::set_child_subreaper() {
            say(&format!("cannot register as a child subreaper: {e}"));
            return 1;
        }
    }
    // The subreaper flag survives exec, so a caller may have set it for us.
    if !pid1 && !sys::is_child_subreaper().unwrap_or(false) && o.verbosity >= WARN {
        say(
            "warning: not running as PID 1 and not registered as a child subreaper: \
             orphaned processes will not be reparented to hafen-init, so zombie reaping \
             won't work. Use -s, set TINI_SUBREAPER or HAFEN_SUBREAPER, or run hafen-init \
             as PID 1.",
        );
    }

    let program = o.command[0].clone();
    let mut cmd = Command::new(&program);
    cmd.args(&o.command[1..]);
    sys::set_up_job_child(&mut cmd, child_setup);
    let child = match cmd.spawn() {
        Ok(child) => child.id() as libc::pid_t,
        Err(e) => {
            let shown = program.to_string_lossy();
            // tini's codes for a failed exec.
            return match e.raw_os_error() {
                Some(libc::ENOENT) => {
                    say(&format!("{shown}: command not found"));
                    127
                }
                Some(libc::EACCES) => {
                    say(&format!("{shown}: cannot execute: {e}"));
                    126
                }
                _ => {
                    say(&format!("{shown}: cannot execute: {e}"));
                    1
                }
            };
        }
    };
    if o.verbosity >= INFO {
        say(&format!(
            "started {} as pid {child}",
            program.to_string_lossy()
        ));
    }
    supervise(&o, child, &signals, pid1)
}

/// Blocks the forwarded signals (reading them from the returned signalfd),
/// ignores the terminal's, and makes sure children can be waited for; returns
/// the signal state to give the child: the one we were started with.
fn take_signals() -> std::io::Result<(OwnedFd, sys::JobChild)> {
    let mut dispositions = Vec::new();
    for sig in TERMINAL {
        dispositions.push((sig, sys::signal_ignored(sig)?));
        sys::set_signal_ignored(sig, true)?;
    }
    // An ignored SIGCHLD makes the kernel reap our children before we can
    // read their status (tini then waits forever): take the default for
    // ourselves and hand the ignore on.
    if sys::signal_ignored(libc::SIGCHLD)? {
        dispositions.push((libc::SIGCHLD, true));
        sys::set_signal_ignored(libc::SIGCHLD, false)?;
    }
    // Rust's runtime ignores SIGPIPE before main; the child gets what our
    // caller gave us.
    dispositions.push((
        libc::SIGPIPE,
        sys::sigpipe_ignored_at_start().unwrap_or(false),
    ));
    let forwarded = SigSet::of(&forwarded());
    let mask = forwarded.swap_mask()?;
    let signals = forwarded.signalfd_blocking()?;
    Ok((signals, sys::JobChild { mask, dispositions }))
}

/// Forwards signals and reaps until the child exits; returns the exit code.
fn supervise(o: &Options, child: libc::pid_t, signals: &OwnedFd, pid1: bool) -> i32 {
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
                break sys::wait_child(child).unwrap_or(ExitStatus::Code(1));
            }
        };
        if sig != libc::SIGCHLD {
            match sys::kill(target, sig) {
                Err(e) if o.verbosity >= WARN => say(&format!(
                    "warning: cannot forward {} to {target}: {e}",
                    hafen_proto::signal::name(sig)
                )),
                Ok(()) if o.verbosity >= DEBUG => say(&format!(
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
            } else {
                reaped_other(o, pid, status);
            }
        }
        if let Some(status) = exited {
            break status;
        }
    };
    if o.verbosity >= INFO {
        say(&format!("{} {status}", o.command[0].to_string_lossy()));
    }
    if let Some(secs) = o.wait_children {
        drain_children(o, secs, signals, pid1);
    }
    let code = match status {
        ExitStatus::Code(code) => code,
        ExitStatus::Signal(sig) => 128 + sig,
    } % 256;
    if o.zero_codes.contains(&code) {
        0
    } else {
        code
    }
}

/// Reports a reaped process that was not the child (`-w`, as tini words it).
fn reaped_other(o: &Options, pid: libc::pid_t, status: ExitStatus) {
    if o.warn_on_reap && o.verbosity >= WARN {
        say(&format!(
            "warning: Reaped zombie process with pid={pid} ({status}; not the child)"
        ));
    } else if o.verbosity >= DEBUG {
        say(&format!("reaped pid {pid} ({status})"));
    }
}

/// Reaps every exited child without blocking.
fn reap_all(o: &Options) {
    while let Ok(Some((pid, status))) = sys::reap_one() {
        reaped_other(o, pid, status);
    }
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

/// `--wait-children`: TERM to what is left, up to `secs` for it to go, then KILL.
fn drain_children(o: &Options, secs: u64, signals: &OwnedFd, pid1: bool) {
    // From here on the signalfd is only polled with timeouts and drained.
    let _ = sys::set_nonblocking(signals.as_raw_fd());
    let pause = |ms: i32| {
        let _ = sys::poll_readable(signals.as_raw_fd(), ms);
        while let Ok(Some(_)) = sys::read_signal(signals) {}
    };
    reap_all(o);
    if children().is_empty() {
        return;
    }
    signal_rest(libc::SIGTERM, pid1);
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        reap_all(o);
        if children().is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        pause(left.as_millis().min(i32::MAX as u128 - 1) as i32 + 1);
    }
    if o.verbosity >= WARN {
        say("warning: children still running after --wait-children; sending SIGKILL");
    }
    signal_rest(libc::SIGKILL, pid1);
    let stop = Instant::now() + Duration::from_secs(5);
    while !children().is_empty() && Instant::now() < stop {
        reap_all(o);
        pause(10);
    }
    reap_all(o);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn run(list: &[&str]) -> Options {
        match parse(args(list)) {
            Parsed::Run(o) => o,
            other => panic!("{list:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn options_stop_at_the_first_non_option() {
        let o = run(&["-g", "-e", "3", "sh", "-c", "exit 3"]);
        assert!(o.group);
        assert_eq!(o.zero_codes, [3]);
        assert_eq!(o.command, args(&["sh", "-c", "exit 3"]));
        assert_eq!(
            run(&["--", "-weird-name", "-x"]).command,
            args(&["-weird-name", "-x"])
        );
        // A lone "-" is an operand, as for getopt.
        assert_eq!(run(&["-s", "-", "x"]).command, args(&["-", "x"]));
        let o = run(&["-p", "SIGKILL", "--wait-children", "5", "-vv", "true"]);
        assert_eq!(
            (o.parent_death, o.wait_children, o.verbosity),
            (Some(9), Some(5), WARN + 2)
        );
        assert_eq!(run(&["--wait-children=7", "true"]).wait_children, Some(7));
    }

    #[test]
    fn short_options_combine_and_take_attached_values_like_getopt() {
        let o = run(&["-sgw", "-e3", "-pSIGKILL", "--", "true"]);
        assert!(o.subreaper && o.group && o.warn_on_reap);
        assert_eq!(
            (o.zero_codes.as_slice(), o.parent_death),
            (&[3][..], Some(9))
        );
        // A value-taking letter ends the cluster: the rest is its value.
        let o = run(&["-se4", "true"]);
        assert!(o.subreaper);
        assert_eq!(o.zero_codes, [4]);
        // The next argument is the value even when it looks like an option.
        assert_eq!(
            run(&["-e", "5", "-p", "TERM", "true"]).parent_death,
            Some(15)
        );
        assert!(matches!(
            parse(args(&["-p", "-g", "true"])),
            Parsed::Invalid(_)
        ));
        assert_eq!(run(&["-vvv", "true"]).verbosity, WARN + 3);
        assert_eq!(run(&["-v", "-v", "true"]).verbosity, WARN + 2);
        assert_eq!(run(&["true"]).verbosity, WARN);
    }

    #[test]
    fn exit_codes_are_read_like_strtol() {
        for (text, code) in [("3", Some(3)), (" 3", Some(3)), ("+4", Some(4))] {
            assert_eq!(exit_code(text.as_bytes()), code, "{text:?}");
        }
        // An empty argument is read whole as 0 by strtol, so tini accepts it.
        assert_eq!(exit_code(b""), Some(0));
        for bad in ["256", "-1", "3x", " ", "x", "3 ", "99999999999999999999"] {
            assert_eq!(exit_code(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_usage_is_explained() {
        assert_eq!(
            parse(args(&["-p", "NOPE", "true"])),
            Parsed::Invalid("not a valid option for -p: NOPE".into())
        );
        assert!(
            matches!(parse(args(&["-e", "300", "true"])), Parsed::Invalid(e) if e.contains("-e"))
        );
        assert!(
            matches!(parse(args(&["-z", "true"])), Parsed::Usage(e) if e.contains("invalid option -- 'z'"))
        );
        assert!(matches!(parse(args(&["-sz", "true"])), Parsed::Usage(e) if e.contains("'z'")));
        assert!(
            matches!(parse(args(&["-e"])), Parsed::Usage(e) if e.contains("requires an argument -- 'e'"))
        );
        assert!(
            matches!(parse(args(&["--nope", "true"])), Parsed::Usage(e) if e.contains("--nope"))
        );
        assert!(matches!(parse(args(&["-g"])), Parsed::Usage(e) if e.contains("no command")));
        assert!(matches!(parse(args(&["--"])), Parsed::Usage(_)));
        assert_eq!(parse(args(&["-V"])), Parsed::Version);
        assert_eq!(parse(args(&["--version"])), Parsed::Version);
        assert_eq!(parse(args(&["-sh"])), Parsed::Help);
        assert_eq!(parse(args(&["--help"])), Parsed::Help);
        assert_eq!(parse(args(&["-l"])), Parsed::License);
        // getopt goes left to right: an error before -h wins.
        assert!(matches!(parse(args(&["-z", "-h"])), Parsed::Usage(_)));
    }

    #[test]
    fn tini_environment_variables_count_when_set_whatever_their_value() {
        let with = |vars: &[(&str, &str)]| {
            let mut o = Options::default();
            apply_env(&mut o, |k| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| OsString::from(v))
            });
            (o.subreaper, o.group, o.verbosity)
        };
        assert_eq!(with(&[]), (false, false, WARN));
        for value in ["", "0", "1"] {
            assert!(
                with(&[("TINI_SUBREAPER", value)]).0,
                "TINI_SUBREAPER={value:?}"
            );
            assert!(
                with(&[("HAFEN_SUBREAPER", value)]).0,
                "HAFEN_SUBREAPER={value:?}"
            );
            assert!(
                with(&[("TINI_KILL_PROCESS_GROUP", value)]).1,
                "TINI_KILL_PROCESS_GROUP={value:?}"
            );
        }
        assert_eq!(with(&[("TINI_VERBOSITY", "0")]).2, 0);
        assert_eq!(with(&[("TINI_VERBOSITY", " 3x")]).2, 3);
        assert_eq!(with(&[("TINI_VERBOSITY", "x")]).2, 0);
        assert_eq!(with(&[("TINI_VERBOSITY", "-1")]).2, u32::MAX);
    }

    #[test]
    fn synchronous_and_terminal_signals_are_never_blocked() {
        let set = forwarded();
        for sig in SYNCHRONOUS.iter().chain(&TERMINAL) {
            assert!(!set.contains(sig), "{sig}");
        }
        assert!(
            set.contains(&libc::SIGTERM)
                && set.contains(&libc::SIGCHLD)
                && set.contains(&libc::SIGTSTP)
                && set.contains(&libc::SIGPIPE)
        );
        assert!(set.contains(&libc::SIGRTMIN()) && set.contains(&libc::SIGRTMAX()));
    }

    #[test]
    fn the_license_is_the_workspaces() {
        assert!(license().contains("Apache-2.0"));
    }
}
