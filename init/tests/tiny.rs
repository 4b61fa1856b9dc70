//! `hafen-init [OPTIONS] [--] CMD`: tini's job, tested with real processes.
//! Where tini's behaviour is the specification, the same test runs Debian's
//! tini (scripts/setup.sh installs it) as the oracle and compares.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hafen_init::sys::{self, SigSet};

/// The init under test.
const HAFEN: &str = env!("CARGO_BIN_EXE_hafen-init");

/// The oracle: Debian's tini.
const TINI: &str = "/usr/bin/tini";

/// The environment variables both inits read, removed so the test's own
/// environment cannot change what a test means.
const INIT_VARS: [&str; 4] = [
    "TINI_SUBREAPER",
    "HAFEN_SUBREAPER",
    "TINI_KILL_PROCESS_GROUP",
    "TINI_VERBOSITY",
];

fn clean(mut cmd: Command) -> Command {
    for var in INIT_VARS {
        cmd.env_remove(var);
    }
    cmd.env_remove("POSIXLY_CORRECT");
    // Signals the test runner ignores (nohup ignores SIGHUP) would be
    // handed on by both inits, as they should, and a shell cannot trap a
    // signal ignored at its start: every test starts from the defaults.
    // SAFETY: the closure only calls sigaction through sys's wrappers.
    unsafe {
        cmd.pre_exec(|| {
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP && sys::signal_ignored(sig)? {
                    sys::set_signal_ignored(sig, false)?;
                }
            }
            Ok(())
        });
    }
    cmd
}

fn init() -> Command {
    clean(Command::new(HAFEN))
}

fn tini_path() -> &'static str {
    assert!(
        std::path::Path::new(TINI).exists(),
        "{TINI} is the oracle for these tests: install Debian's tini (scripts/setup.sh)"
    );
    TINI
}

fn tini() -> Command {
    clean(Command::new(tini_path()))
}

/// Makes a command for one of the inits.
type Make = fn() -> Command;

/// Both inits, named for messages.
fn both() -> [(&'static str, Make); 2] {
    [("hafen-init", init), ("tini", tini)]
}

/// Both inits' paths, named for messages.
fn both_paths() -> [(&'static str, &'static str); 2] {
    [("hafen-init", HAFEN), ("tini", tini_path())]
}

/// `INIT ARGS` (args added by the caller) as the child of a hafen-init that
/// is PID 1 of a fresh pid namespace: the init under test is not PID 1, and
/// whatever it leaves behind is killed and reaped with the namespace, which
/// ends with `unshare` (`--kill-child`).
fn contained(init: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "--",
        HAFEN,
        "--",
        init,
    ]);
    clean(cmd)
}

/// `hafen-init ARGS` as PID 1 of a fresh pid namespace.
fn as_pid1(args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        env!("CARGO_BIN_EXE_hafen-init"),
    ])
    .args(args);
    cmd
}

fn code(cmd: &mut Command) -> Option<i32> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run")
        .code()
}

/// A child's stdout, read line by line on a thread of its own so a test
/// that waits for a line fails at its deadline instead of hanging.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// Reads lines until every one of `needles` has appeared; returns all
    /// lines read, one per line.
    fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = String::new();
        while !needles.iter().all(|n| seen.contains(n)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {needles:?}; read: {seen}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("output ended before {needles:?}; read: {seen}")
                }
            }
        }
        seen
    }

    fn wait_line(&self, needle: &str) -> String {
        self.wait_for(&[needle])
    }
}

fn kill(pid: u32, sig: i32) {
    sys::kill(pid as i32, sig).expect("kill");
}

/// The direct children of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A running init that is killed with everything it started when dropped:
/// both inits put their child in a process group of its own, so killing
/// each child's group leaves nothing behind, even when a test fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            for child in children_of(self.0.id()) {
                let _ = sys::kill(-(child as i32), libc::SIGKILL);
                let _ = sys::kill(child as i32, libc::SIGKILL);
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A [`contained`] init, running, with its stdout read line by line.
/// Dropped, it kills the namespace's PID 1, which takes everything in the
/// namespace along, and waits for `unshare`, which reaps it.
struct Contained {
    unshare: Child,
    /// The namespace's PID 1, by its pid outside the namespace.
    reaper: Option<u32>,
    /// The init under test, by its pid outside the namespace.
    init: u32,
    out: Lines,
}

impl Contained {
    fn start(mut cmd: Command) -> Contained {
        let mut unshare = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let out = Lines::of(&mut unshare);
        let mut contained = Contained {
            unshare,
            reaper: None,
            init: 0,
            out,
        };
        // unshare -> the namespace's PID 1 -> the init under test.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            contained.reaper = children_of(contained.unshare.id()).first().copied();
            if let Some(init) = contained
                .reaper
                .and_then(|reaper| children_of(reaper).first().copied())
            {
                contained.init = init;
                return contained;
            }
            assert!(
                Instant::now() < deadline,
                "the contained init never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `sig` to the init under test.
    fn signal(&self, sig: i32) {
        kill(self.init, sig);
    }

    /// Waits for the namespace to end; its exit code is the init's.
    fn wait(&mut self) -> Option<i32> {
        self.unshare.wait().expect("wait").code()
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if let Ok(None) = self.unshare.try_wait() {
            // Killing unshare instead would orphan the namespace's PID 1
            // (--kill-child ends it, but nobody of ours would reap it).
            match self.reaper {
                Some(reaper) => {
                    let _ = sys::kill(reaper as i32, libc::SIGKILL);
                }
                None => {
                    let _ = self.unshare.kill();
                }
            }
        }
        let _ = self.unshare.wait();
    }
}

/// Starts `cmd` with this signal mask and these signals ignored, the way
/// tini's sigconf test starts tini.
fn with_signal_state(cmd: &mut Command, blocked: &[i32], ignored: &[i32]) {
    let mask = SigSet::of(blocked);
    let ignored = ignored.to_vec();
    // SAFETY: the closure only calls sigprocmask and sigaction (through
    // sys's wrappers) on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            mask.set_mask()?;
            for &sig in &ignored {
                sys::set_signal_ignored(sig, true)?;
            }
            Ok(())
        });
    }
}

/// A signal set as /proc/PID/status shows it, from a list of signals.
fn bits(signals: &[i32]) -> u64 {
    signals.iter().fold(0, |set, sig| set | 1 << (sig - 1))
}

/// The SigBlk and SigIgn lines of a /proc/PID/status text.
fn blocked_and_ignored(status: &str) -> (u64, u64) {
    let field = |name: &str| {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"));
        u64::from_str_radix(line.trim(), 16).expect("hex")
    };
    (field("SigBlk:"), field("SigIgn:"))
}

#[test]
fn option_spellings_and_exit_codes_match_tini() {
    let not_executable =
        std::env::temp_dir().join(format!("hafen-tiny-noexec-{}", std::process::id()));
    std::fs::write(&not_executable, "plain text").expect("write");
    let noexec = not_executable.to_str().expect("utf-8 path");
    let cases: &[(&[&str], i32)] = &[
        (&["sh", "-c", "exit 0"], 0),
        (&["sh", "-c", "exit 3"], 3),
        (&["sh", "-c", "exit 255"], 255),
        (&["sh", "-c", "kill -USR1 $$"], 128 + libc::SIGUSR1),
        (&["-e", "3", "sh", "-c", "exit 3"], 0),
        (&["-e", "3", "sh", "-c", "exit 4"], 4),
        (&["-e3", "--", "sh", "-c", "exit 3"], 0),
        (&["-se3", "--", "sh", "-c", "exit 3"], 0),
        (&["-e", " 3", "--", "sh", "-c", "exit 3"], 0),
        (&["-e", "+3", "-e", "4", "--", "sh", "-c", "exit 4"], 0),
        (&["-e", "", "--", "sh", "-c", "exit 0"], 0),
        (&["-sg", "--", "sh", "-c", "exit 5"], 5),
        (&["-s", "-g", "-w", "-vvv", "--", "true"], 0),
        (&["-swgv", "true"], 0),
        (&["-pSIGKILL", "true"], 0),
        (&["-p", "SIGKILL", "true"], 0),
        (
            &["-s", "-p", "SIGTERM", "-e", "7", "--", "sh", "-c", "exit 7"],
            0,
        ),
        // Parsing stops at the command: its options are its own. (tini
        // needs POSIXLY_CORRECT for that; we always do it.)
        (&["sh", "-c", "exit 5", "-e", "5"], 5),
        (&["/no/such/program"], 127),
        (&[noexec], 126),
        // Usage errors: tini exits 1 for each.
        (&["-z", "true"], 1),
        (&["-sz", "true"], 1),
        (&["-e"], 1),
        (&["-p"], 1),
        (&["-e", "256", "true"], 1),
        (&["-e", "-1", "true"], 1),
        (&["-e", "x", "true"], 1),
        (&["-e", "3x", "true"], 1),
        (&["-p", "NOPE", "true"], 1),
        (&["-p", "-g", "true"], 1),
        (&["-s"], 1),
        (&["--"], 1),
        (&["--bogus", "true"], 1),
        (&["-h"], 0),
        (&["-sh"], 0),
        (&["-h", "-z"], 0),
        (&["-l"], 0),
        (&["--version"], 0),
    ];
    for (args, want) in cases {
        let ours = code(init().args(*args));
        let theirs = code(tini().env("POSIXLY_CORRECT", "1").args(*args));
        assert_eq!(
            (ours, theirs),
            (Some(*want), Some(*want)),
            "hafen-init and tini {args:?}"
        );
    }
    let _ = std::fs::remove_file(&not_executable);
    // Our own spellings on top of tini's.
    assert_eq!(code(init().args(["-V"])), Some(0));
    assert_eq!(code(init().args(["--help"])), Some(0));
    assert_eq!(
        code(init().args(["--wait-children=1", "sh", "-c", "exit 6"])),
        Some(6)
    );
    assert_eq!(code(init().args(["--wait-children", "x", "true"])), Some(1));
    // -h and -l print on stdout; a usage error prints the usage on stderr.
    let help = init().arg("-h").output().expect("run");
    assert!(String::from_utf8_lossy(&help.stdout).contains("usage: hafen-init"));
    let license = init().arg("-l").output().expect("run");
    assert!(String::from_utf8_lossy(&license.stdout).contains("Apache-2.0"));
    let bad = init().args(["-z", "true"]).output().expect("run");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("invalid option -- 'z'") && err.contains("usage:"),
        "{err}"
    );
    let missing = init().arg("/no/such/program").output().expect("run");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/no/such/program: command not found")
    );
}

#[test]
fn the_child_gets_the_callers_signal_mask_and_ignored_signals_like_tini() {
    // tini's sigconf test and more: signals the init ignores itself (TTIN,
    // TTOU), blocks to forward (INT, TERM, USR1, an RT signal), leaves alone
    // (BUS, ILL) and that Rust's runtime changes before main (PIPE). (tini's
    // test also ignores SEGV, but this kernel resets that on exec.)
    let rt = libc::SIGRTMIN() + 2;
    let cases: [(&[i32], &[i32]); 3] = [
        (
            &[
                libc::SIGTTIN,
                libc::SIGILL,
                libc::SIGTERM,
                libc::SIGUSR1,
                rt,
            ],
            &[libc::SIGTTOU, libc::SIGBUS, libc::SIGINT, libc::SIGPIPE],
        ),
        (
            &[libc::SIGTTOU, libc::SIGPIPE, libc::SIGCHLD],
            &[libc::SIGTTIN, libc::SIGQUIT, libc::SIGHUP],
        ),
        // A caller with a clean state gets a clean child: nothing of the
        // init's own blocking or ignoring leaks.
        (&[], &[]),
    ];
    let status = |mut cmd: Command, name: &str| {
        let out = cmd.stderr(Stdio::null()).output().expect("run");
        assert_eq!(out.status.code(), Some(0), "{name}");
        blocked_and_ignored(&String::from_utf8_lossy(&out.stdout))
    };
    for (blocked, ignored) in cases {
        // What a direct child of the caller sees (this test process may
        // itself ignore signals the C library reserves, such as 32).
        let mut direct = clean(Command::new("cat"));
        direct.arg("/proc/self/status");
        with_signal_state(&mut direct, blocked, ignored);
        let want = status(direct, "cat");
        assert_eq!(
            (want.0 & bits(blocked), want.1 & bits(ignored)),
            (bits(blocked), bits(ignored)),
            "the caller's state is set up"
        );
        for (name, make) in both() {
            let mut cmd = make();
            cmd.args(["-s", "--", "cat", "/proc/self/status"]);
            with_signal_state(&mut cmd, blocked, ignored);
            assert_eq!(
                status(cmd, name),
                want,
                "{name} {blocked:?} {ignored:?}: the child's SigBlk and SigIgn are its caller's"
            );
        }
    }
}

#[test]
fn an_ignored_sigchld_is_handed_on_without_hanging_the_init() {
    // A caller that ignores SIGCHLD would have the kernel reap the child
    // behind the init's back (tini then waits forever); we take the default
    // for ourselves and give the child the ignore it was given.
    let run = |args: &[&str]| {
        let mut cmd = init();
        cmd.args(["-s", "--"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        with_signal_state(&mut cmd, &[], &[libc::SIGCHLD]);
        let mut child = Reaped(cmd.spawn().expect("spawn"));
        let mut stdout = child.0.stdout.take().expect("stdout");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.0.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "the init hangs: {args:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).expect("read");
        (status.code(), out)
    };
    assert_eq!(run(&["sh", "-c", "exit 3"]).0, Some(3));
    let (code, out) = run(&["cat", "/proc/self/status"]);
    assert_eq!(code, Some(0));
    let (_, ignored) = blocked_and_ignored(&out);
    assert_eq!(
        ignored & bits(&[libc::SIGCHLD]),
        bits(&[libc::SIGCHLD]),
        "the child ignores SIGCHLD as its caller did: {out}"
    );
}

/// Runs a child with a grandchild that reports SIGUSR1, sends SIGUSR1 to
/// the init and says whether the grandchild got it, i.e. whether the init
/// sent it to the whole process group.
fn usr1_reaches_the_group(mut cmd: Command) -> bool {
    // Then SIGUSR2 to the init: the child's USR2 trap sends WINCH to the
    // grandchild, which acknowledges it. The init forwards USR1 before
    // USR2, so a USR1 sent to the group is pending in the grandchild before
    // the WINCH, and a shell runs pending traps in increasing signal order:
    // the grandchild's first line decides.
    let script = "trap ':' USR1; trap 'kill -WINCH $gc' USR2; \
        sh -c 'trap \"echo gc-usr1; exit 0\" USR1; trap : USR2; trap \"echo gc-ack\" WINCH; \
               echo gc-ready; while true; do sleep 1 >/dev/null & wait $!; done' & gc=$!; \
        echo child-ready; while true; do sleep 1 >/dev/null & wait $!; done";
    cmd.args(["-s", "--", "sh", "-c", script]);
    let running = Contained::start(cmd);
    // Both: the grandchild's traps are set and the child knows its pid.
    running.out.wait_for(&["gc-ready", "child-ready"]);
    running.signal(libc::SIGUSR1);
    running.signal(libc::SIGUSR2);
    let first = running.out.wait_line("gc-");
    first.contains("gc-usr1")
}

#[test]
fn tini_kill_process_group_acts_like_g_whatever_its_value() {
    type Setup = fn(&mut Command);
    let cases: [(&str, Setup, bool); 6] = [
        ("no option", |_| {}, false),
        (
            "-g",
            |c| {
                c.arg("-g");
            },
            true,
        ),
        (
            "=1",
            |c| {
                c.env("TINI_KILL_PROCESS_GROUP", "1");
            },
            true,
        ),
        (
            "empty",
            |c| {
                c.env("TINI_KILL_PROCESS_GROUP", "");
            },
            true,
        ),
        (
            "=0",
            |c| {
                c.env("TINI_KILL_PROCESS_GROUP", "0");
            },
            true,
        ),
        (
            "=no",
            |c| {
                c.env("TINI_KILL_PROCESS_GROUP", "no");
            },
            true,
        ),
    ];
    for (what, setup, group) in cases {
        for (name, path) in both_paths() {
            let mut cmd = contained(path);
            setup(&mut cmd);
            assert_eq!(
                usr1_reaches_the_group(cmd),
                group,
                "{name} with TINI_KILL_PROCESS_GROUP {what}"
            );
        }
    }
}

#[test]
fn tini_subreaper_set_but_empty_registers_a_subreaper() {
    // An orphan whose parent exits is reparented to the init only when the
    // init is a subreaper; the child reports the orphan's new parent.
    let script = "o=$(sh -c 'sleep 30 >/dev/null 2>&1 & echo $!'); \
        p=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$o/status); kill $o; \
        [ \"$p\" = \"$PPID\" ] && echo reparented=yes || echo reparented=no";
    let run = |mut cmd: Command| {
        let out = cmd.args(["--", "sh", "-c", script]).output().expect("run");
        assert_eq!(out.status.code(), Some(0));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let warned = String::from_utf8_lossy(&out.stderr).contains("zombie reaping won't work");
        (stdout.contains("reparented=yes"), warned)
    };
    for (name, path) in both_paths() {
        let make = || contained(path);
        assert_eq!(
            run(make()),
            (false, true),
            "{name} alone warns, in tini's words"
        );
        let mut quiet = make();
        quiet.env("TINI_VERBOSITY", "0");
        assert_eq!(run(quiet), (false, false), "{name} TINI_VERBOSITY=0");
        let mut dash_s = make();
        dash_s.arg("-s");
        assert_eq!(run(dash_s), (true, false), "{name} -s");
        for value in ["", "0", "1"] {
            let mut env = make();
            env.env("TINI_SUBREAPER", value);
            assert_eq!(run(env), (true, false), "{name} TINI_SUBREAPER={value:?}");
        }
    }
    let mut ours = contained(HAFEN);
    ours.env("HAFEN_SUBREAPER", "");
    assert_eq!(run(ours), (true, false), "HAFEN_SUBREAPER=\"\"");
}

#[test]
fn as_a_subreaper_it_reaps_orphans_when_not_pid1() {
    // The orphan's parent exits at once; the orphan then exits too. With -s we
    // are its new parent and must reap it: no zombie child of ours remains.
    let script = "(sleep 0.2 &) ; sleep 0.6; echo zombies=$(grep -l '^State:.Z' /proc/[0-9]*/status 2>/dev/null | xargs -r grep -l \"^PPid:.$PPID$\" | wc -l)";
    let out = init()
        .args(["-s", "sh", "-c", script])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("zombies=0"), "{text}");
}

#[test]
fn with_w_every_reaped_zombie_that_is_not_the_child_is_reported_like_tini() {
    // An orphan that exits at once; the child waits until the init has
    // reaped it (its /proc entry is gone), so the report precedes the exit.
    let script = "o=$(sh -c 'sleep 0.1 >/dev/null 2>&1 & echo $!'); \
        while [ -e /proc/$o ]; do sleep 0.01; done; echo orphan=$o";
    for (name, make) in both() {
        for (warn, args) in [(true, &["-s", "-w"][..]), (false, &["-s"][..])] {
            let out = make()
                .args(args)
                .args(["--", "sh", "-c", script])
                .output()
                .expect("run");
            assert_eq!(out.status.code(), Some(0), "{name}");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let orphan = stdout.trim().strip_prefix("orphan=").expect("orphan pid");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                stderr.contains(&format!("Reaped zombie process with pid={orphan}")),
                warn,
                "{name} {args:?}: {stderr}"
            );
        }
    }
}

#[test]
fn every_catchable_signal_is_forwarded_and_nothing_is_left_behind() {
    // Signals the shell can trap; SIGCHLD is handled by the init itself and
    // TTIN/TTOU are ignored by it (the next test).
    let names = [
        "HUP", "INT", "QUIT", "USR1", "USR2", "PIPE", "ALRM", "TERM", "CONT", "TSTP", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR",
    ];
    let traps: String = names
        .iter()
        .map(|n| format!("trap 'echo got {n}' {n}; "))
        .collect();
    let script = format!("{traps} echo ready; while true; do sleep 1 & wait $!; done");
    let mut cmd = contained(HAFEN);
    cmd.args(["sh", "-c", &script]);
    let mut running = Contained::start(cmd);
    running.out.wait_line("ready");
    let sh = children_of(running.init)[0];
    for name in names {
        let sig = hafen_proto::signal::parse(name).expect("signal");
        running.signal(sig);
        running.out.wait_line(&format!("got {name}"));
    }
    // The shell traps everything it can, so it outlives the init when the
    // init is killed (the trap loop once left behind by this test). Its pid
    // namespace ends with the init's: nothing may remain once it is waited for.
    running.signal(libc::SIGKILL);
    assert_eq!(running.wait(), Some(128 + libc::SIGKILL));
    assert!(
        !std::path::Path::new(&format!("/proc/{sh}")).exists(),
        "the trapping shell {sh} outlived the test"
    );
}

#[test]
fn ttin_and_ttou_sent_to_the_init_are_ignored_like_tini() {
    // WINCH comes after TTIN and TTOU in signal order, so had either been
    // forwarded, the shell would have reported it before WINCH.
    let script = "trap 'echo got TTIN' TTIN; trap 'echo got TTOU' TTOU; \
        trap 'echo got WINCH' WINCH; \
        echo ready; while true; do sleep 1 >/dev/null & wait $!; done";
    for (name, path) in both_paths() {
        let mut cmd = contained(path);
        cmd.args(["-s", "--", "sh", "-c", script]);
        let running = Contained::start(cmd);
        running.out.wait_line("ready");
        running.signal(libc::SIGTTIN);
        running.signal(libc::SIGTTOU);
        running.signal(libc::SIGWINCH);
        let seen = running.out.wait_line("got WINCH");
        assert!(
            !seen.contains("TTIN") && !seen.contains("TTOU"),
            "{name}: {seen}"
        );
        // The init itself was not stopped either.
        let state =
            std::fs::read_to_string(format!("/proc/{}/status", running.init)).expect("status");
        assert!(!state.contains("(stopped)"), "{name}");
    }
}

#[test]
fn with_g_signals_reach_the_whole_process_group() {
    // The parent's trap goes in first: the grandchild's "ready" must mean both are.
    let script = "trap 'wait; exit 0' TERM; \
        sh -c 'trap \"echo grandchild got TERM; exit 0\" TERM; echo grandchild ready; while true; do sleep 1 & wait $!; done' & \
        wait";
    let mut cmd = contained(HAFEN);
    cmd.args(["-g", "sh", "-c", script]);
    let mut running = Contained::start(cmd);
    running.out.wait_line("grandchild ready");
    running.signal(libc::SIGTERM);
    running.out.wait_line("grandchild got TERM");
    assert_eq!(running.wait(), Some(0));
}

#[test]
fn a_storm_of_orphans_leaves_no_zombie() {
    // 2000 grandchildren orphaned at once; then, for up to 20 s, count the
    // zombies in the namespace until there are none.
    let script = "for i in $(seq 2000); do (true &) ; done; \
        for i in $(seq 200); do z=$(grep -l '^State:.Z' /proc/[0-9]*/status 2>/dev/null | wc -l); [ $z = 0 ] && break; sleep 0.1; done; \
        echo zombies=$z";
    let out = as_pid1(&["sh", "-c", script]).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("zombies=0"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn p_sets_the_parent_death_signal_like_tini() {
    // The init's parent is a subshell that exits after starting it; -p KILL
    // must end the init. The subshell lingers a moment so the init has set -p
    // before it exits (a parent that dies first cannot be noticed by anyone).
    // The orphaned init is then reaped by the namespace's PID 1, so its /proc
    // entry goes; its own child dies with the namespace.
    for (name, path) in both_paths() {
        let script = format!(
            "p=$( ({path} -p SIGKILL -- sleep 30 >/dev/null 2>&1 & echo $!; sleep 0.5) ); \
             i=0; while [ -e /proc/$p ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; \
             [ -e /proc/$p ] && echo init=alive || echo init=gone"
        );
        let out = contained(HAFEN)
            .args(["sh", "-c", &script])
            .stderr(Stdio::null())
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("init=gone"),
            "{name} outlived its parent despite -p: {text}"
        );
    }
}

#[test]
fn wait_children_lets_grandchildren_finish_and_kills_the_stubborn() {
    // The main child exits once two grandchildren have set their traps: one
    // cleans up on TERM, one ignores it.
    let dir = tempfile_dir("wait-children");
    let script = format!(
        "sh -c 'trap \"sleep 0.2; echo polite done; exit 0\" TERM; touch {d}/polite; while true; do sleep 1 & wait $!; done' & \
         sh -c 'trap \"\" TERM; touch {d}/stubborn; while true; do sleep 1; done' & \
         while [ ! -e {d}/polite ] || [ ! -e {d}/stubborn ]; do sleep 0.05; done; exit 4",
        d = dir.display()
    );
    let start = Instant::now();
    let out = as_pid1(&["--wait-children", "2", "sh", "-c", &script])
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("polite done"),
        "the TERM-trapping grandchild finished: {text}"
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "exit status stays the main child's"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "the stubborn one was waited for"
    );
    assert!(start.elapsed() < Duration::from_secs(20), "then killed");
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hafen-tiny-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn on_a_terminal_the_child_gets_job_control() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    let (mut master, mut slave) = (0, 0);
    // SAFETY: both out-pointers are valid; name, termios and winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: openpty returned two fresh descriptors we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = init();
    cmd.args(["sh", "-c", "echo ready; read line; echo got:$line"])
        .stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave.try_clone().expect("dup"));
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY as _, 0);
            Ok(())
        });
    }
    let mut child = Reaped(cmd.spawn().expect("spawn"));
    drop(slave);
    let mut term = std::fs::File::from(master);
    let mut seen = String::new();
    let read_until = |term: &mut std::fs::File, seen: &mut String, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen.contains(needle) {
            let mut buf = [0u8; 256];
            let n = std::io::Read::read(term, &mut buf).expect("read terminal");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the terminal: {seen:?}"
            );
        }
    };
    read_until(&mut term, &mut seen, "ready");
    let init_pid = child.0.id();
    let sh: u32 = std::fs::read_to_string(format!("/proc/{init_pid}/task/{init_pid}/children"))
        .expect("children")
        .split_whitespace()
        .next()
        .expect("a child")
        .parse()
        .expect("pid");
    let state = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or_default()
            .to_owned()
    };
    // Ctrl-Z from the terminal stops the child (its group has the terminal), not the init.
    std::io::Write::write_all(&mut term, &[0x1a]).expect("ctrl-z");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state(sh).contains("T (stopped)") {
        assert!(
            Instant::now() < deadline,
            "Ctrl-Z did not stop the child: {}",
            state(sh)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !state(init_pid).contains("stopped"),
        "the init itself keeps running"
    );
    // `fg`: SIGCONT to the init reaches the child, which still owns the terminal.
    kill(init_pid, libc::SIGCONT);
    std::io::Write::write_all(&mut term, b"hello\n").expect("type");
    read_until(&mut term, &mut seen, "got:hello");
    assert_eq!(child.0.wait().expect("wait").code(), Some(0));
}
