//! The verbs that operate a running VM (`hafen ps`, `logs`, `exec`,
//! `stop`, ...), run as a user runs them: the `hafen` binary against a VM
//! booted by `hafen run`, through its monitor's api.sock. One VM serves
//! many verbs, so the suite boots few machines.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    build_image, eventually, hafen, hafen_cli, wait_child, Ran, Scratch, Vm, BOOT_TIMEOUT,
};
use hafen_qemu::client::format::parse_rfc3339;
use serde_json::Value;

/// A verb's whole run, generous for a loaded two-core machine under TCG.
const VERB: Duration = Duration::from_secs(60);

const MANIFEST: &str = r#"
name = "ctlverbs"

[[container]]
name = "job"
image = "oci:busybox:1"
phase = "once"
command = ["/bin/sh", "-c", "seq 1 50; echo job failing >&2; exit 3"]

[[container]]
name = "web"
image = "oci:busybox:1"
stop_timeout = 5
command = ["/bin/sh", "-c", """
trap 'echo web stopping; exit 0' TERM
echo web ready
echo web warming >&2
while true; do sleep 1 & wait $!; done
"""]

[[container]]
name = "nobody"
image = "oci:busybox:1"
user = "65534:65534"
command = ["/bin/sh", "-c", "while true; do sleep 1; done"]

[[container]]
name = "locked"
image = "oci:busybox:1"
read_only = true
cap_drop = ["ALL"]
command = ["/bin/sh", "-c", "while true; do sleep 1; done"]
"#;

/// `hafen ARGS` with no input.
fn cli(args: &[&str]) -> Ran {
    hafen_cli(args, None, VERB)
}

/// A name no other test run on this machine uses.
fn vm_name(group: &str) -> String {
    format!("ctl-{group}-{}", std::process::id())
}

/// Boots `image` in the foreground as VM `name` and waits until its
/// control channel answers (`hafen ps` succeeds).
fn boot(image: &std::path::Path, name: &str) -> Vm {
    let vm = Vm::boot_with(image, &["--accel", "tcg", "--name", name]);
    vm.checked(|| {
        eventually("the VM's control channel answers", BOOT_TIMEOUT, || {
            let ran = cli(&["ps", name]);
            match ran.code() {
                Some(0) => Ok(()),
                _ => Err(ran.stderr),
            }
        })
    });
    vm
}

/// Lines of a child's stdout as they come.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects lines from `rx` until one contains `needle`.
fn read_until(rx: &Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + VERB;
    while !seen.iter().any(|l| l.contains(needle)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {needle:?}; got {seen:?}"),
        }
    }
}

/// A background `hafen` whose stdout is read line by line.
fn spawn_cli(args: &[&str]) -> (Child, Receiver<String>) {
    let mut child = Command::new(hafen())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hafen");
    let rx = lines_of(&mut child);
    (child, rx)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill takes plain integers; the pid is our own unreaped child.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill {}", child.id());
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Every verb against one booted VM, in an order that lets each build on
/// the last; ends with `hafen stop VM`, which shuts the machine down.
#[test]
fn the_verbs_operate_a_running_vm() {
    let scratch = Scratch::new("control-verbs");
    let image = build_image(&scratch, MANIFEST);
    let name = vm_name("verbs");
    let mut vm = boot(&image, &name);
    vm.checked(|| {
        not_found_errors(&name);
        ls_lists_the_vm(&name);
        ps_shows_containers_and_exits(&name);
        logs_after_exit_with_tail_since_and_timestamps(&name);
        inspect_top_and_stats(&name);
        exec_runs_inside_the_container(&name);
        exec_pipes_stdin_through_cat_to_eof(&name);
        exec_keeps_the_containers_user_and_restrictions(&name);
        exec_on_a_terminal(&name);
        followers_and_execs_share_the_channel(&name);
        lifecycle_and_events(&name);
    });
    let stopped = cli(&["stop", &name]);
    vm.checked(|| assert_eq!(stopped.ok("hafen stop VM").trim(), name));
    let status = vm.wait_exit();
    vm.assert_console("web stopping");
    vm.assert_console("powering off");
    assert_eq!(status.code(), Some(0), "hafen run after hafen stop");
    let gone = cli(&["ps", &name]);
    assert_eq!(gone.code(), Some(1), "{gone:?}");
}

fn not_found_errors(vm: &str) {
    let ran = cli(&["ps", "no-such-vm-anywhere"]);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("no running VM named"), "{}", ran.stderr);
    for args in [
        vec!["logs", vm, "nope"],
        vec!["exec", vm, "nope", "true"],
        vec!["stop", vm, "nope"],
        vec!["inspect", vm, "nope"],
    ] {
        let ran = cli(&args);
        assert_eq!(ran.code(), Some(1), "{args:?}: {ran:?}");
        assert!(
            ran.stderr.contains("no container \"nope\""),
            "{args:?}: {}",
            ran.stderr
        );
    }
    // A usage error is clap's 2, not a failure of the VM.
    assert_eq!(cli(&["kill", "-s", "NOSIG", vm, "web"]).code(), Some(2));
}

fn ls_lists_the_vm(vm: &str) {
    let text = cli(&["ls"]).ok("hafen ls");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(vm))
        .unwrap_or_else(|| panic!("{vm} not in:\n{text}"));
    assert!(line.contains(" running "), "{line}");
    let all = json(&cli(&["ls", "--format", "json"]).ok("hafen ls json"));
    let me = all
        .as_array()
        .expect("array")
        .iter()
        .find(|v| v["name"] == vm)
        .expect("listed");
    assert_eq!(me["state"], "running");
    assert!(me["pid"].as_u64().is_some_and(|p| p > 0), "{me}");
}

fn ps_shows_containers_and_exits(vm: &str) {
    let text = cli(&["ps", vm]).ok("hafen ps");
    let names: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["web", "nobody", "locked"], "{text}");
    assert!(text.starts_with("CONTAINER "), "{text}");
    let web = text.lines().find(|l| l.starts_with("web ")).expect("web");
    assert!(web.contains(" running ") && web.contains(" Up "), "{web}");
    let all = cli(&["ps", "-a", vm]).ok("hafen ps -a");
    let job = all.lines().find(|l| l.starts_with("job ")).expect("job");
    assert!(
        job.contains(" exited ") && job.contains("Exited (3) "),
        "{job}"
    );
    let listed = json(&cli(&["ps", "-a", "--format", "json", vm]).ok("ps json"));
    let by_name = |n: &str| {
        listed
            .as_array()
            .expect("array")
            .iter()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing: {listed}"))
    };
    assert_eq!(by_name("job")["exit_code"], 3);
    assert_eq!(by_name("web")["state"], "running");
    assert!(by_name("web")["pid"].as_u64().is_some_and(|p| p > 1));
    assert_eq!(by_name("web")["image"], "oci:busybox:1");
}

fn logs_after_exit_with_tail_since_and_timestamps(vm: &str) {
    // The once container exited at boot: its output is still there,
    // stdout and stderr apart.
    let all = cli(&["logs", vm, "job"]);
    let expected: String = (1..=50).map(|i| format!("{i}\n")).collect();
    assert_eq!(all.ok("logs job"), expected);
    assert_eq!(all.stderr, "job failing\n");
    // The last five lines: four of stdout, then the stderr one.
    let tail = cli(&["logs", "--tail", "5", vm, "job"]);
    assert_eq!(tail.ok("logs --tail"), "47\n48\n49\n50\n");
    assert_eq!(tail.stderr, "job failing\n");
    let stamped = cli(&["logs", "-t", "--tail", "2", vm, "job"]).ok("logs -t");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    for line in stamped.lines() {
        let (time, rest) = line.split_once(' ').expect("time, then the line");
        let t = parse_rfc3339(time).unwrap_or_else(|| panic!("not RFC 3339: {line}"));
        assert!(
            now.abs_diff(t) < 3_600 * 1_000_000_000,
            "{line}: far from now"
        );
        assert!(rest == "49" || rest == "50", "{line}");
    }
    assert_eq!(
        cli(&["logs", "--since", "1h", vm, "job"]).ok("since 1h"),
        expected
    );
    let future = cli(&["logs", "--since", "2500-01-01T00:00:00Z", vm, "job"]);
    assert_eq!(future.ok("since the future"), "");
}

fn inspect_top_and_stats(vm: &str) {
    let machine = json(&cli(&["inspect", vm]).ok("inspect VM"));
    assert_eq!(machine["name"], vm);
    assert_eq!(machine["state"], "running");
    assert!(machine["started_at"]
        .as_str()
        .and_then(parse_rfc3339)
        .is_some());
    let job = json(&cli(&["inspect", vm, "job"]).ok("inspect job"));
    assert_eq!(job["state"]["status"], "exited");
    assert_eq!(job["state"]["exit_code"], 3);
    assert_eq!(job["state"]["oom_killed"], false);
    assert!(job["state"]["finished_at"]
        .as_str()
        .and_then(parse_rfc3339)
        .is_some());
    assert_eq!(job["config"]["process"]["args"][0], "/bin/sh");
    assert_eq!(job["config"]["annotations"]["org.hafen.phase"], "once");
    let top = cli(&["top", vm, "web"]).ok("top");
    let header: Vec<&str> = top
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["PID", "PPID", "UID", "TIME", "RSS", "CMD"]);
    assert!(
        top.lines()
            .any(|l| l.contains("/bin/sh -c") && l.contains("web ready")),
        "{top}"
    );
    let stats = cli(&["stats", "--no-stream", vm]).ok("stats");
    let names: Vec<&str> = stats
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["web", "nobody", "locked"], "{stats}");
    assert!(stats.starts_with("NAME "), "{stats}");
    let one = cli(&["stats", "--no-stream", vm, "web"]).ok("stats web");
    assert_eq!(one.lines().count(), 2, "{one}");
    assert!(
        one.lines()
            .nth(1)
            .is_some_and(|l| l.contains('%') && l.contains("iB / ")),
        "{one}"
    );
}

fn exec_runs_inside_the_container(vm: &str) {
    let ran = cli(&[
        "exec",
        vm,
        "web",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(ran.code(), Some(7), "{ran:?}");
    assert_eq!(ran.stdout(), "out\n");
    assert_eq!(ran.stderr, "err\n");
    // Its namespaces: uts (hostname) and pid (/proc/self resolves only
    // for a process in the pid namespace the container's /proc shows).
    let inside = cli(&[
        "exec",
        vm,
        "web",
        "sh",
        "-c",
        "hostname; readlink /proc/self",
    ]);
    let text = inside.ok("exec hostname");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("web"));
    assert!(
        lines.next().is_some_and(|p| p.parse::<u32>().is_ok()),
        "{text}"
    );
    // -e, -w, -u.
    let env = cli(&[
        "exec",
        "-e",
        "GREETING=hi there",
        "-w",
        "/bin",
        "-u",
        "65534",
        vm,
        "web",
        "sh",
        "-c",
        "echo \"$GREETING|$(pwd)|$(id -u)\"",
    ]);
    assert_eq!(env.ok("exec -e -w -u"), "hi there|/bin|65534\n");
    // No terminal without -t.
    let tty = cli(&["exec", vm, "web", "tty"]);
    assert_eq!(tty.code(), Some(1));
    assert_eq!(tty.stdout(), "not a tty\n");
    // Cannot run: 127 when not found, 126 otherwise; the reason on stderr.
    let missing = cli(&["exec", vm, "web", "/bin/no-such-command"]);
    assert_eq!(missing.code(), Some(127), "{missing:?}");
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);
    let not_exec = cli(&["exec", vm, "web", "/bin"]);
    assert_eq!(not_exec.code(), Some(126), "{not_exec:?}");
    // A container that is not running.
    let stopped = cli(&["exec", vm, "job", "true"]);
    assert_eq!(stopped.code(), Some(1), "{stopped:?}");
    assert!(stopped.stderr.contains("not running"), "{}", stopped.stderr);
}

fn exec_pipes_stdin_through_cat_to_eof(vm: &str) {
    // Binary data, more than one frame's worth, then EOF: cat must see the
    // end of its input for the shell to go on to the marker.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let ran = hafen_cli(
        &["exec", "-i", vm, "web", "sh", "-c", "cat; echo EOF-SEEN"],
        Some(&data),
        VERB,
    );
    assert_eq!(ran.code(), Some(0), "{}", ran.stderr);
    let mut expected = data.clone();
    expected.extend_from_slice(b"EOF-SEEN\n");
    assert!(
        ran.stdout == expected,
        "{} bytes back, {} expected",
        ran.stdout.len(),
        expected.len()
    );
    // Without -i the process's stdin is /dev/null.
    let closed = hafen_cli(&["exec", vm, "web", "wc", "-c"], Some(b"ignored"), VERB);
    assert_eq!(closed.ok("exec without -i").trim(), "0");
}

fn exec_keeps_the_containers_user_and_restrictions(vm: &str) {
    assert_eq!(
        cli(&["exec", vm, "nobody", "id", "-u"]).ok("nobody").trim(),
        "65534"
    );
    let report = json(&cli(&["exec", vm, "locked", "/bin/hafen-check", "/tmp"]).ok("hafen-check"));
    assert_eq!(report["root_read_only"], true, "{report}");
    assert_eq!(report["no_new_privs"], "1");
    assert_eq!(report["seccomp"], "2");
    assert_eq!(report["capabilities"]["bounding"], "0000000000000000");
    assert_eq!(report["capabilities"]["effective"], "0000000000000000");
    assert_eq!(report["hostname"], "locked");
    assert_eq!(report["cgroup"], "0::/hafen/locked");
    // Even as root by -u 0: the root stays read-only, no capability back.
    let write = cli(&["exec", "-u", "0", vm, "locked", "sh", "-c", "touch /probe"]);
    assert_ne!(write.code(), Some(0), "{write:?}");
    let caps = cli(&[
        "exec",
        "-u",
        "0",
        vm,
        "locked",
        "grep",
        "CapEff",
        "/proc/self/status",
    ]);
    assert_eq!(caps.ok("caps").trim(), "CapEff:\t0000000000000000");
}

/// A pseudo-terminal pair; the test holds the master.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    fn open(rows: u16, cols: u16) -> Pty {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the out-pointers are valid; name and termios may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two fresh descriptors that we now own.
        unsafe {
            Pty {
                master: OwnedFd::from_raw_fd(master),
                slave: OwnedFd::from_raw_fd(slave),
            }
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; the
        // kernel then sends SIGWINCH to the terminal's foreground group.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "TIOCSWINSZ");
    }

    fn local_flags(&self) -> libc::tcflag_t {
        // SAFETY: termios is plain data, filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and out-pointer.
        let rc = unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut t) };
        assert_eq!(rc, 0, "tcgetattr");
        t.c_lflag
    }
}

/// Everything read from a pty master, shared with the reader thread.
struct Screen(Arc<Mutex<Vec<u8>>>);

impl Screen {
    fn read_from(master: &OwnedFd) -> Screen {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let mut file = std::fs::File::from(master.try_clone().expect("dup master"));
        let sink = Arc::clone(&bytes);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the slave side is closed everywhere.
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("screen").extend_from_slice(&buf[..n]);
            }
        });
        Screen(bytes)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("screen")).into_owned()
    }

    fn len(&self) -> usize {
        self.0.lock().expect("screen").len()
    }

    fn text_between(&self, from: usize, to: usize) -> String {
        let bytes = self.0.lock().expect("screen");
        String::from_utf8_lossy(&bytes[from.min(bytes.len())..to.min(bytes.len())]).into_owned()
    }

    /// Waits until the screen, after `from` bytes, shows `needle`;
    /// returns where it ends.
    fn wait_for(&self, from: usize, needle: &str) -> usize {
        eventually(&format!("the terminal shows {needle:?}"), VERB, || {
            let bytes = self.0.lock().expect("screen");
            let tail = String::from_utf8_lossy(&bytes[from.min(bytes.len())..]).into_owned();
            match tail.find(needle) {
                Some(at) => Ok(from + at + needle.len()),
                None => Err(tail),
            }
        })
    }
}

fn exec_on_a_terminal(vm: &str) {
    let pty = Pty::open(33, 101);
    let before = pty.local_flags();
    let mut shell = {
        let stdio = || Stdio::from(pty.slave.try_clone().expect("dup slave"));
        let mut command = Command::new(hafen());
        command
            .args(["exec", "-it", vm, "web", "sh"])
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio());
        // SAFETY: between fork and exec the closure makes only
        // async-signal-safe calls: a new session whose controlling
        // terminal is the pty (fd 0), as a login shell would have it.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn().expect("spawn hafen exec -it")
    };
    let screen = Screen::read_from(&pty.master);
    let type_line = |line: &str| {
        type_keys(&pty, line.as_bytes());
        type_keys(&pty, b"\r");
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Each answer ends with a marker the echoed command line does not
        // contain (the shell computes it).
        let ask = |line: &str, marker: &str| {
            let from = screen.len();
            type_line(line);
            let end = screen.wait_for(from, marker);
            screen.text_between(from, end)
        };
        // 1. A terminal of its own, as big as ours.
        let shown = ask("tty; stty size; echo =$((1+1))=", "=2=");
        assert!(shown.contains("/dev/pts/"), "{shown}");
        assert!(shown.contains("33 101"), "{shown}");
        // 2. Our window grows: SIGWINCH, a Resize, the guest's size follows.
        pty.resize(40, 120);
        eventually("the guest terminal is resized", VERB, || {
            let shown = ask("stty size; echo =$((3*4))=", "=12=");
            if shown.contains("40 120") {
                Ok(())
            } else {
                Err(shown)
            }
        });
        // 3. Ctrl-C is a key like any other: it reaches the guest's
        //    foreground process, not us.
        type_line("sleep 1000");
        eventually("sleep 1000 runs", VERB, || {
            let top = cli(&["top", vm, "web"]).stdout();
            if top.contains("sleep 1000") {
                Ok(())
            } else {
                Err(top)
            }
        });
        type_keys(&pty, &[0x03]);
        let shown = ask("echo code=$?", "code=130");
        assert!(
            !cli(&["top", vm, "web"]).stdout().contains("sleep 1000"),
            "{shown}"
        );
        // 4. The shell's exit status is ours; our terminal is restored.
        type_line("exit 3");
    }));
    let status = wait_child(&mut shell, VERB);
    if let Err(panic) = result {
        eprintln!("----- terminal -----\n{}", screen.text());
        std::panic::resume_unwind(panic);
    }
    assert_eq!(status.and_then(|s| s.code()), Some(3), "{}", screen.text());
    assert_eq!(pty.local_flags(), before, "terminal modes restored");
    assert!(before & libc::ECHO != 0 && before & libc::ICANON != 0);
}

/// Types `keys` on the terminal.
fn type_keys(pty: &Pty, keys: &[u8]) {
    let mut master = std::fs::File::from(pty.master.try_clone().expect("dup master"));
    master.write_all(keys).expect("type on the terminal");
}

fn followers_and_execs_share_the_channel(vm: &str) {
    // Two clients follow web's log while a third runs execs that write
    // into it (through the container init's stdout).
    let (mut first, first_rx) = spawn_cli(&["logs", "-f", "--tail", "0", vm, "web"]);
    let (mut second, second_rx) = spawn_cli(&["logs", "-f", "--since", "1s", vm, "web"]);
    // Both are subscribed once they see a line written after they started.
    let (mut seen1, mut seen2) = (Vec::new(), Vec::new());
    eventually("both followers are subscribed", VERB, || {
        cli(&["exec", vm, "web", "sh", "-c", "echo ping > /proc/1/fd/1"]).ok("ping");
        let got = |rx: &Receiver<String>, seen: &mut Vec<String>| {
            while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
                seen.push(l);
            }
            seen.iter().any(|l| l == "ping")
        };
        let (a, b) = (got(&first_rx, &mut seen1), got(&second_rx, &mut seen2));
        if a && b {
            Ok(())
        } else {
            Err(format!("{seen1:?} {seen2:?}"))
        }
    });
    seen1.clear();
    seen2.clear();
    for i in 0..10 {
        let line = format!("echo marker-{i} > /proc/1/fd/1; echo exec-{i}");
        let out = cli(&["exec", vm, "web", "sh", "-c", &line]).ok("exec while following");
        assert_eq!(out, format!("exec-{i}\n"));
    }
    read_until(&first_rx, "marker-9", &mut seen1);
    read_until(&second_rx, "marker-9", &mut seen2);
    let markers = |seen: &[String]| -> Vec<String> {
        seen.iter()
            .filter(|l| l.starts_with("marker-"))
            .cloned()
            .collect()
    };
    let expected: Vec<String> = (0..10).map(|i| format!("marker-{i}")).collect();
    assert_eq!(markers(&seen1), expected);
    assert_eq!(markers(&seen2), expected);
    // Ctrl-C ends a follower cleanly; the other goes on.
    signal(&first, libc::SIGINT);
    let status = wait_child(&mut first, VERB).expect("the follower ends on SIGINT");
    assert_eq!(status.code(), Some(0));
    cli(&[
        "exec",
        vm,
        "web",
        "sh",
        "-c",
        "echo after-ctrl-c > /proc/1/fd/1",
    ])
    .ok("poke");
    read_until(&second_rx, "after-ctrl-c", &mut seen2);
    // The container stopping ends the follow.
    assert_eq!(cli(&["stop", vm, "web"]).ok("stop web").trim(), "web");
    read_until(&second_rx, "web stopping", &mut seen2);
    let status = wait_child(&mut second, VERB).expect("the follow ends with the container");
    assert_eq!(status.code(), Some(0));
    assert_eq!(cli(&["start", vm, "web"]).ok("start web").trim(), "web");
}

fn lifecycle_and_events(vm: &str) {
    let (mut events, rx) = spawn_cli(&["events", "--format", "json", vm]);
    let mut seen = Vec::new();
    // Subscribed once an exec's events show.
    eventually("the event stream is subscribed", VERB, || {
        cli(&["exec", vm, "nobody", "true"]).ok("exec true");
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
            seen.push(l);
        }
        if seen.iter().any(|l| l.contains("exec_die")) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    // restart: stopped (its trap says so), started again with a new pid.
    let pid_of = |name: &str| {
        let all = json(&cli(&["ps", "--format", "json", vm]).ok("ps"));
        all.as_array()
            .expect("array")
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["pid"].as_u64())
    };
    let old = pid_of("web").expect("web runs");
    assert_eq!(
        cli(&["restart", "-t", "5", vm, "web"]).ok("restart").trim(),
        "web"
    );
    let new = pid_of("web").expect("web runs again");
    assert_ne!(old, new);
    // kill (SIGKILL by default), then wait says 137.
    let waiter = std::thread::spawn({
        let vm = vm.to_owned();
        move || cli(&["wait", &vm, "web"])
    });
    assert_eq!(cli(&["kill", vm, "web"]).ok("kill").trim(), "web");
    let waited = waiter.join().expect("wait thread");
    assert_eq!(waited.ok("wait").trim(), "137");
    let ps = cli(&["ps", "-a", vm, "--format", "json"]).ok("ps -a");
    assert!(ps.contains("\"exit_code\":137"), "{ps}");
    assert_eq!(cli(&["start", vm, "web"]).ok("start").trim(), "web");
    // A named signal to a container that traps it.
    assert_eq!(
        cli(&["kill", "-s", "TERM", vm, "web"])
            .ok("kill -s TERM")
            .trim(),
        "web"
    );
    assert_eq!(cli(&["wait", vm, "web"]).ok("wait").trim(), "0");
    assert_eq!(cli(&["start", vm, "web"]).ok("start").trim(), "web");
    // Three starts since the stream began: the restart's and two starts.
    let starts = |seen: &[String]| {
        seen.iter()
            .filter(|l| l.contains("\"event\":\"start\""))
            .count()
    };
    while starts(&seen) < 3 {
        let line = rx
            .recv_timeout(VERB)
            .unwrap_or_else(|_| panic!("no third start event: {seen:?}"));
        seen.push(line);
    }
    // Each event once, in order, with its details.
    let kinds: Vec<(String, Value)> = seen
        .iter()
        .map(|l| json(l))
        .filter(|e| e["container"] == "web")
        .map(|e| (e["event"].as_str().unwrap_or("").to_owned(), e))
        .collect();
    let names: Vec<&str> = kinds.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["stop", "die", "start", "kill", "die", "start", "kill", "die", "start"],
        "{seen:?}"
    );
    assert_eq!(kinds[1].1["exitCode"], 0, "the trap exits 0");
    assert_eq!(kinds[3].1["signal"], "SIGKILL");
    assert_eq!(kinds[4].1["exitCode"], 137);
    assert_eq!(kinds[6].1["signal"], "SIGTERM");
    assert!(kinds
        .iter()
        .all(|(_, e)| e["time"].as_str().and_then(parse_rfc3339).is_some()));
    signal(&events, libc::SIGTERM);
    let status = wait_child(&mut events, VERB).expect("events ends on SIGTERM");
    assert_eq!(status.code(), Some(0));
}

/// `hafen run -d` returns once the VM answers, prints its name, and the VM
/// keeps running without us; `hafen kill VM` forces it off.
#[test]
fn a_detached_vm_is_listed_and_killed() {
    let scratch = Scratch::new("control-detached");
    let image = build_image(
        &scratch,
        r#"
name = "ctldetached"
[[container]]
name = "svc"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "echo up; while true; do sleep 1; done"]
"#,
    );
    let name = vm_name("detached");
    let started = hafen_cli(
        &[
            "run",
            "-d",
            "--accel",
            "tcg",
            "--name",
            &name,
            image.to_str().expect("utf-8"),
        ],
        None,
        BOOT_TIMEOUT,
    );
    let guard = Detached::find(&name);
    assert_eq!(
        started.ok("hafen run -d").trim(),
        name,
        "{}",
        started.stderr
    );
    guard.checked(|| {
        // Answering already: no waiting needed.
        let ps = cli(&["ps", &name]).ok("ps right after -d");
        assert!(ps.lines().any(|l| l.starts_with("svc ")), "{ps}");
        assert!(cli(&["logs", &name, "svc"]).ok("logs").contains("up\n"));
        let ls = cli(&["ls"]).ok("ls");
        assert!(
            ls.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{ls}"
        );
        assert_eq!(cli(&["kill", &name]).ok("kill VM").trim(), name);
        // Gone: its monitor exited, and the verbs say so.
        let ls = cli(&["ls"]).ok("ls after kill");
        assert!(
            !ls.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{ls}"
        );
        let ps = cli(&["ps", &name]);
        assert_eq!(ps.code(), Some(1), "{ps:?}");
        assert!(ps.stderr.contains("no running VM"), "{}", ps.stderr);
    });
}

/// A detached VM's monitor, killed (with its QEMU) when dropped.
struct Detached {
    pid: u32,
    path: std::path::PathBuf,
}

impl Detached {
    fn find(name: &str) -> Detached {
        let vms = hafen_qemu::state::vms_dir(&hafen_qemu::state::runtime_dir());
        let vm = hafen_qemu::state::find_vm(&vms, name).expect("the detached VM is running");
        Detached {
            pid: vm.pid,
            path: vm.path,
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.path.join(hafen_qemu::state::CONSOLE_LOG)).unwrap_or_default()
    }

    fn checked(&self, steps: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(steps)) {
            eprintln!(
                "----- guest console -----\n{}\n-------------------------",
                self.console()
            );
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
            // SAFETY: kill takes plain integers. The monitor is not our
            // child, so its pid could be reused only after it exited,
            // which the check above just ruled out moments ago. QEMU dies
            // with it (its parent-death signal).
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}
