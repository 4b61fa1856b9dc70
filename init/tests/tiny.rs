//! `hafen-init [OPTIONS] [--] CMD`: tini's job, tested with real processes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn init() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hafen-init"))
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
    cmd.stderr(Stdio::null()).status().expect("run").code()
}

/// Reads lines from `child`'s stdout until one contains `needle`.
fn wait_line(reader: &mut impl BufRead, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read");
        assert!(n > 0, "output ended before {needle:?}");
        if line.contains(needle) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {needle:?}"
        );
    }
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill takes plain integers; the pid is a process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn exit_codes_are_the_childs() {
    assert_eq!(code(init().args(["sh", "-c", "exit 0"])), Some(0));
    assert_eq!(code(init().args(["sh", "-c", "exit 3"])), Some(3));
    assert_eq!(code(init().args(["sh", "-c", "exit 255"])), Some(255));
    assert_eq!(
        code(init().args(["sh", "-c", "kill -USR1 $$"])),
        Some(128 + libc::SIGUSR1)
    );
    assert_eq!(
        code(init().args(["-e", "3", "sh", "-c", "exit 3"])),
        Some(0)
    );
    assert_eq!(
        code(init().args(["-e", "3", "sh", "-c", "exit 4"])),
        Some(4)
    );
    let out = init().args(["/no/such/program"]).output().expect("run");
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/program: command not found"));
    let not_executable =
        std::env::temp_dir().join(format!("hafen-tiny-noexec-{}", std::process::id()));
    std::fs::write(&not_executable, "plain text").expect("write");
    let out = init().arg(&not_executable).output().expect("run");
    let _ = std::fs::remove_file(&not_executable);
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot execute"));
    // Option parsing stops at the command: its own options are its own.
    assert_eq!(
        code(init().args(["sh", "-c", "exit 5", "-e", "5"])),
        Some(5)
    );
    assert_eq!(code(init().args(["--version"])), Some(0));
    assert_eq!(code(init().args(["-z", "true"])), Some(2));
}

#[test]
fn every_catchable_signal_is_forwarded() {
    // Signals the shell can trap; SIGCHLD is handled by the init itself.
    let names = [
        "HUP", "INT", "QUIT", "USR1", "USR2", "PIPE", "ALRM", "TERM", "CONT", "TSTP", "TTIN",
        "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR",
    ];
    let traps: String = names
        .iter()
        .map(|n| format!("trap 'echo got {n}' {n}; "))
        .collect();
    let script = format!("{traps} echo ready; while true; do sleep 1 & wait $!; done");
    let mut child = Reaped(
        init()
            .args(["sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let mut out = BufReader::new(child.0.stdout.take().expect("stdout"));
    wait_line(&mut out, "ready");
    for name in names {
        let sig = hafen_proto::signal::parse(name).expect("signal");
        kill(child.0.id(), sig);
        wait_line(&mut out, &format!("got {name}"));
    }
    kill(child.0.id(), libc::SIGKILL);
}

#[test]
fn with_g_signals_reach_the_whole_process_group() {
    // The parent's trap goes in first: the grandchild's "ready" must mean both are.
    let script = "trap 'wait; exit 0' TERM; \
        sh -c 'trap \"echo grandchild got TERM; exit 0\" TERM; echo grandchild ready; while true; do sleep 1 & wait $!; done' & \
        wait";
    let mut child = Reaped(
        init()
            .args(["-g", "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let mut out = BufReader::new(child.0.stdout.take().expect("stdout"));
    wait_line(&mut out, "grandchild ready");
    kill(child.0.id(), libc::SIGTERM);
    wait_line(&mut out, "grandchild got TERM");
    assert_eq!(child.0.wait().expect("wait").code(), Some(0));
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
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "no warning with -s"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hafen-init"))
        .env("TINI_SUBREAPER", "1")
        .args(["true"])
        .output()
        .expect("run");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "TINI_SUBREAPER works like -s"
    );
    let out = init().args(["true"]).output().expect("run");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not PID 1 and not a subreaper"),
        "warns once without -s"
    );
}

#[test]
fn p_sets_the_parent_death_signal() {
    // Our parent is a shell that exits after starting us; -p KILL must end us.
    // The shell lingers a moment so hafen-init has set -p before it exits (a
    // parent that dies first cannot be noticed by anyone). The child records
    // its pid so the test can end it afterwards.
    let child_pid_file = std::env::temp_dir().join(format!("hafen-tiny-p-{}", std::process::id()));
    let script = format!(
        "{} -p SIGKILL sh -c 'echo $$ > {}; exec sleep 30' >/dev/null 2>&1 & echo $!; sleep 0.5; exit 0",
        env!("CARGO_BIN_EXE_hafen-init"),
        child_pid_file.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .stderr(Stdio::null())
        .output()
        .expect("run");
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if state.is_empty() || state.contains("State:\tZ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hafen-init outlived its parent despite -p"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The orphaned child is ours to clean up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let child: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&child_pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the child never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    kill(child, libc::SIGKILL);
    let _ = std::fs::remove_file(&child_pid_file);
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
