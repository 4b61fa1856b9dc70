//! `hafen-init runtime exec` and terminals through the console socket, on
//! the host's hybrid cgroup layout and in a pure cgroup2 namespace.

mod support;

use std::io::{IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde_json::json;
use support::{layout_tests, stderr, stdout, Bundle, Layout};

layout_tests!(
    exec_runs_in_the_containers_namespaces_root_and_cgroup,
    exec_flags_shape_the_process_and_its_status_comes_back,
    exec_takes_a_process_file_and_detaches_with_a_pid_file,
    exec_into_a_stopped_or_unknown_container_fails_clearly,
    a_terminal_reaches_the_console_socket_for_run_and_exec,
    a_terminal_needs_a_console_socket,
    create_sends_the_terminal_and_lets_go_of_the_socket_before_start,
    the_callers_descriptors_reach_a_container_only_when_preserved,
    run_detach_returns_while_the_container_runs,
    exec_forwards_signals_to_its_process,
);

/// How long a test waits for the runtime or the container.
const PATIENCE: Duration = Duration::from_secs(20);

/// A created and started container whose init (uid 0, gid 2) sleeps.
fn sleeping(layout: Layout) -> (Bundle, String) {
    let mut b = Bundle::new(
        layout,
        &["/bin/sh", "-c", "touch /tmp/ready; exec sleep 1000"],
    );
    b.set("/process/user/gid", json!(2));
    b.tag();
    let id = b.id("x");
    let (ok, err) = b.create(&id, &[]);
    assert!(ok, "create: {err}");
    let out = b.cmd(&["start", &id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    b.wait_ready();
    (b, id)
}

fn exec(b: &Bundle, args: &[&str]) -> std::process::Output {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    b.cmd(&all)
}

fn exec_runs_in_the_containers_namespaces_root_and_cgroup(layout: Layout) {
    let (b, id) = sleeping(layout);
    let script = "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; \
        for ns in mnt pid uts ipc net; do \
          [ \"$(readlink /proc/self/ns/$ns)\" = \"$(readlink /proc/1/ns/$ns)\" ] && echo same-$ns; done; \
        [ \"$(cat /proc/self/cgroup)\" = \"$(cat /proc/1/cgroup)\" ] && echo same-cgroup; \
        ls /tmp/ready";
    let out = exec(&b, &[&id, "sh", "-c", script]);
    assert!(out.status.success(), "exec: {}", stderr(&out));
    let got = stdout(&out);
    let want = "box\nsh -c touch /tmp/ready; exec sleep 1000 \n";
    assert!(
        got.starts_with(want) || got.starts_with("box\nsleep 1000 \n"),
        "{got}"
    );
    for ns in ["mnt", "pid", "uts", "ipc", "net", "cgroup"] {
        assert!(got.contains(&format!("same-{ns}\n")), "{ns}: {got}");
    }
    assert!(got.ends_with("/tmp/ready\n"), "the container's root: {got}");
}

fn exec_flags_shape_the_process_and_its_status_comes_back(layout: Layout) {
    let (b, id) = sleeping(layout);
    let out = exec(
        &b,
        &[
            "--cwd",
            "/tmp",
            "--env",
            "GREETING=hi",
            "--user",
            "1000:1001",
            &id,
            "sh",
            "-c",
            "echo $(pwd) $GREETING $(id -u) $(id -g); exit 5",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stdout(&out), "/tmp hi 1000 1001\n");
    // A UID alone keeps the container's GID (2 here), as runc does.
    let out = exec(
        &b,
        &["--user", "1000", &id, "sh", "-c", "echo $(id -u):$(id -g)"],
    );
    assert!(out.status.success(), "exec: {}", stderr(&out));
    assert_eq!(stdout(&out), "1000:2\n");
    let out = exec(&b, &[&id, "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137), "killed by SIGKILL");
}

fn exec_takes_a_process_file_and_detaches_with_a_pid_file(layout: Layout) {
    let (b, id) = sleeping(layout);
    // The process runs as uid 7: let it leave its marker.
    std::fs::set_permissions(
        b.path().join("rootfs/tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("chmod /tmp");
    let process = b.path().join("process.json");
    std::fs::write(
        &process,
        json!({
            "args": ["sh", "-c", "echo $WHO in $(pwd) as $(id -u); touch /tmp/detached; exec sleep 1000"],
            "env": ["PATH=/bin", "WHO=file"],
            "cwd": "/proc",
            "user": {"uid": 7, "gid": 7}
        })
        .to_string(),
    )
    .expect("process file");
    let pid_file = b.path().join("exec.pid");
    // Files, not pipes: the detached process keeps its stdio open.
    let log = b.path().join("detached.out");
    let errors = b.path().join("detached.err");
    let status = b
        .runtime(&[
            "exec",
            "--process",
            process.to_str().expect("utf8"),
            "--detach",
            "--pid-file",
            pid_file.to_str().expect("utf8"),
            &id,
        ])
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(&errors).expect("log"))
        .status()
        .expect("exec");
    assert!(
        status.success(),
        "exec --detach: {}",
        std::fs::read_to_string(&errors).unwrap_or_default()
    );
    b.wait_file("rootfs/tmp/detached");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .parse()
        .expect("a pid");
    let init = b.state(&id)["pid"].as_i64().expect("pid");
    let ns = |pid: i64| std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("ns");
    assert_eq!(
        ns(i64::from(pid)),
        ns(init),
        "the detached process is in the container"
    );
    assert_eq!(
        std::fs::read_to_string(&log).expect("output"),
        "file in /proc as 7\n"
    );
}

/// exec's own failures exit 255 (runc's code), so they cannot be taken for
/// the exit status 1 of the process.
fn exec_into_a_stopped_or_unknown_container_fails_clearly(layout: Layout) {
    let b = Bundle::new(layout, &["/bin/true"]);
    let id = b.id("gone");
    let out = exec(&b, &[&id, "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let (ok, err) = b.create(&id, &[]);
    assert!(ok, "create: {err}");
    assert!(b.cmd(&["start", &id]).status.success());
    b.wait_status(&id, "stopped");
    let out = exec(&b, &[&id, "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("stopped"), "{}", stderr(&out));
    let (b, id) = sleeping(layout);
    let out = exec(&b, &[&id, "/no/such/program"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("/no/such/program")
            && stderr(&out).contains("no such file or directory"),
        "{}",
        stderr(&out)
    );
    let out = exec(&b, &[&id, "sh", "-c", "exit 1"]);
    assert_eq!(out.status.code(), Some(1), "the process's own status");
}

/// Receives the pty master sent with SCM_RIGHTS on the first connection,
/// while `runner` (the runtime) is alive (killed when nothing comes), and
/// its peer's name in the container's devpts (not the message's payload,
/// which runtimes fill differently: runc sends "/dev/ptmx").
fn receive_fd(listener: &UnixListener, runner: &mut Child) -> (String, OwnedFd) {
    listener.set_nonblocking(true).expect("non-blocking");
    let deadline = Instant::now() + PATIENCE;
    let conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if let Some(status) = runner.try_wait().expect("try_wait") {
            let mut why = String::new();
            if let Some(mut err) = runner.stderr.take() {
                let _ = err.read_to_string(&mut why);
            }
            panic!("the runtime exited ({status}) without connecting: {why}");
        }
        if Instant::now() > deadline {
            let _ = runner.kill();
            let _ = runner.wait();
            panic!("the runtime never connected to the console socket");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    conn.set_nonblocking(false).expect("blocking");
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut payload = [0u8; 256];
    let got = rustix::net::recvmsg(
        &conn,
        &mut [IoSliceMut::new(&mut payload)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .expect("recvmsg");
    let fd = control
        .drain()
        .find_map(|m| match m {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .expect("a descriptor");
    assert!(got.bytes > 0, "a payload comes with the descriptor");
    // Then the runtime lets go of the socket: the end of it comes soon.
    let mut fds = [PollFd::new(&conn, PollFlags::IN)];
    let wait = Timespec {
        tv_sec: PATIENCE.as_secs() as i64,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&wait)).expect("poll");
    let mut rest = [0u8; 16];
    conn.set_nonblocking(true).expect("non-blocking");
    assert_eq!(
        rustix::io::read(&conn, &mut rest).ok(),
        Some(0),
        "the console socket is closed once the terminal is sent"
    );
    let peer = rustix::pty::ptsname(&fd, Vec::new()).expect("a pty master");
    (peer.to_string_lossy().into_owned(), fd)
}

/// Reads the terminal until the process closes it (EIO) or PATIENCE is up.
fn read_terminal(master: OwnedFd) -> String {
    let mut file = std::fs::File::from(master);
    let mut out = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        let mut fds = [PollFd::new(&file, PollFlags::IN)];
        let wait = Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        if rustix::event::poll(&mut fds, Some(&wait)).expect("poll") == 0 {
            continue;
        }
        match file.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).replace('\r', "")
}

fn listen(dir: &Path, name: &str) -> (UnixListener, String) {
    let path = dir.join(name);
    let listener = UnixListener::bind(&path).expect("bind console socket");
    (listener, path.to_str().expect("utf8").to_owned())
}

/// Runs the runtime with `args`, takes the terminal it sends to `listener`
/// and reads it to the end: (the pts name, what it showed, the runtime's
/// exit status).
fn on_terminal(
    b: &Bundle,
    listener: &UnixListener,
    args: &[&str],
) -> (String, String, std::process::ExitStatus) {
    let mut runner = b
        .runtime(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runtime");
    let (name, master) = receive_fd(listener, &mut runner);
    let seen = read_terminal(master);
    let status = runner
        .wait_with_output()
        .expect("wait for the runtime")
        .status;
    (name, seen, status)
}

/// Detached, as runc allows a console socket only then (hafen also takes
/// one in the foreground: the last part checks that exec's status comes back).
fn a_terminal_reaches_the_console_socket_for_run_and_exec(layout: Layout) {
    // run: the container's own process on a terminal of the given size.
    let mut b = Bundle::new(
        layout,
        &[
            "sh",
            "-c",
            "tty; stty size; [ -t 0 ] && [ -t 1 ] && echo all-tty",
        ],
    );
    b.set("/process/terminal", json!(true));
    b.set("/process/consoleSize", json!({"height": 33, "width": 101}));
    let (listener, socket) = listen(b.path(), "run.sock");
    let id = b.id("tty");
    let (name, seen, status) = on_terminal(
        &b,
        &listener,
        &[
            "run",
            "--detach",
            "--console-socket",
            &socket,
            "--bundle",
            b.path_str(),
            &id,
        ],
    );
    assert!(status.success(), "run: {status}");
    assert!(name.starts_with("/dev/pts/"), "{name}");
    assert_eq!(seen, format!("{name}\n33 101\nall-tty\n"), "{seen}");

    // exec -t into a running container: a pty of the container's devpts.
    let (b, id) = sleeping(layout);
    let script = "tty; [ -t 0 ] && echo in-tty; ls /dev/pts | grep -c '^[0-9]'";
    let (listener, socket) = listen(b.path(), "exec.sock");
    let (name, seen, status) = on_terminal(
        &b,
        &listener,
        &[
            "exec",
            "--detach",
            "--tty",
            "--console-socket",
            &socket,
            &id,
            "sh",
            "-c",
            script,
        ],
    );
    assert!(status.success(), "exec: {status}");
    assert!(name.starts_with("/dev/pts/"), "{name}");
    // Only its own pty in the container's devpts, none of the host's.
    assert_eq!(seen, format!("{name}\nin-tty\n1\n"), "{seen}");

    if Layout::oracle() {
        return;
    }
    let (name, seen, status) = on_terminal(
        &b,
        &listener,
        &[
            "exec",
            "--tty",
            "--console-socket",
            &socket,
            &id,
            "sh",
            "-c",
            "tty; exit 3",
        ],
    );
    assert_eq!(
        status.code(),
        Some(3),
        "the process's status, in the foreground"
    );
    assert_eq!(seen, format!("{name}\n"));
}

/// conmon's way: `create --console-socket`, then `start`; the terminal
/// arrives at create and the socket is closed then, not at start.
fn create_sends_the_terminal_and_lets_go_of_the_socket_before_start(layout: Layout) {
    let mut b = Bundle::new(layout, &["sh", "-c", "tty; stty size"]);
    b.set("/process/terminal", json!(true));
    b.set("/process/consoleSize", json!({"height": 10, "width": 20}));
    let (listener, socket) = listen(b.path(), "create.sock");
    let id = b.id("created-tty");
    let mut runner = b
        .runtime(&[
            "create",
            "--console-socket",
            &socket,
            "--bundle",
            b.path_str(),
            &id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("create");
    let (name, master) = receive_fd(&listener, &mut runner);
    let out = runner.wait_with_output().expect("wait for create");
    assert!(out.status.success(), "create: {}", stderr(&out));
    assert_eq!(b.state(&id)["status"], "created");
    let out = b.cmd(&["start", &id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(read_terminal(master), format!("{name}\n10 20\n"));
}

/// A detached terminal needs somewhere to send it: `create`, `exec -d -t`.
fn a_terminal_needs_a_console_socket(layout: Layout) {
    let says_so = |out: &std::process::Output| {
        let text = stderr(out);
        !out.status.success()
            && (text.contains("console socket") || text.contains("--console-socket"))
    };
    let mut b = Bundle::new(layout, &["tty"]);
    b.set("/process/terminal", json!(true));
    let id = b.id("nosock");
    let out = b.cmd(&["create", "--bundle", b.path_str(), &id]);
    assert!(says_so(&out), "create: {}", stderr(&out));
    assert!(!b.root().join(&id).exists(), "nothing left of {id}");

    let (b, id) = sleeping(layout);
    let out = exec(&b, &["--detach", "--tty", &id, "tty"]);
    assert!(says_so(&out), "exec: {}", stderr(&out));
}

/// The runtime command line through `sh`, holding a file open as
/// descriptors 3, 4 and 9 (a caller's stray descriptors, or ones to pass).
fn runtime_with_fds(b: &Bundle, args: &[&str]) -> Command {
    b.write();
    let file = b.path().join("passed");
    std::fs::write(&file, "passed-file").expect("write the file to pass");
    let (program, mut all) = match std::env::var("HAFEN_TEST_ORACLE") {
        Ok(oracle) if !oracle.is_empty() => (oracle, Vec::new()),
        _ => (support::hafen_init().to_owned(), vec!["runtime".to_owned()]),
    };
    all.push("--root".to_owned());
    all.push(b.root().to_str().expect("utf8").to_owned());
    all.extend(args.iter().map(|a| a.to_string()));
    let mut cmd = b.layout.command("/bin/sh");
    cmd.arg("-c")
        .arg(format!(
            "exec \"$0\" \"$@\" 3<'{f}' 4<'{f}' 9<'{f}'",
            f = file.display()
        ))
        .arg(program)
        .args(all);
    cmd
}

/// Which of descriptors 3, 4 and 9 the process has, and what 3 reads.
const SHOW_FDS: &str = "for n in 3 4 9; do [ -e /proc/self/fd/$n ] && echo has-$n; done; \
    cat 2>/dev/null <&3; echo";

/// A regression test: the runtime handed every descriptor its caller left
/// open to the container's process (a directory of the host would let it
/// out of its root); runc passes stdio and `--preserve-fds N` only.
fn the_callers_descriptors_reach_a_container_only_when_preserved(layout: Layout) {
    let b = Bundle::new(layout, &["sh", "-c", SHOW_FDS]);
    let out = runtime_with_fds(&b, &["run", "--bundle", b.path_str(), &b.id("fds")])
        .output()
        .expect("run");
    assert!(out.status.success(), "run: {}", stderr(&out));
    assert_eq!(stdout(&out), "\n", "nothing beyond stdio");
    let out = runtime_with_fds(
        &b,
        &[
            "run",
            "--preserve-fds",
            "1",
            "--bundle",
            b.path_str(),
            &b.id("fds"),
        ],
    )
    .output()
    .expect("run");
    assert!(out.status.success(), "run: {}", stderr(&out));
    assert_eq!(stdout(&out), "has-3\npassed-file\n", "descriptor 3 only");

    let (b, id) = sleeping(layout);
    let out = runtime_with_fds(&b, &["exec", &id, "sh", "-c", SHOW_FDS])
        .output()
        .expect("exec");
    assert!(out.status.success(), "exec: {}", stderr(&out));
    assert_eq!(stdout(&out), "\n", "nothing beyond stdio");
    let out = runtime_with_fds(
        &b,
        &["exec", "--preserve-fds", "2", &id, "sh", "-c", SHOW_FDS],
    )
    .output()
    .expect("exec");
    assert!(out.status.success(), "exec: {}", stderr(&out));
    assert_eq!(stdout(&out), "has-3\nhas-4\npassed-file\n");
}

/// `run --detach` returns once the process runs, which goes on without it.
fn run_detach_returns_while_the_container_runs(layout: Layout) {
    let mut b = Bundle::new(
        layout,
        &["/bin/sh", "-c", "touch /tmp/ready; exec sleep 1000"],
    );
    b.tag();
    let id = b.id("detached");
    let mut runner = b
        .runtime(&["run", "--detach", "--bundle", b.path_str(), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run --detach");
    let status = wait_within(&mut runner, "run --detach waited for the container");
    assert!(status.success(), "run --detach: {status}");
    b.wait_ready();
    assert_eq!(b.state(&id)["status"], "running");
    assert!(b.cmd(&["kill", &id, "KILL"]).status.success());
    b.wait_status(&id, "stopped");
    assert!(b.cmd(&["delete", &id]).status.success());
}

/// Waits up to PATIENCE for `runner` to exit; kills it and fails with
/// `what` when it does not.
fn wait_within(runner: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = runner.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = runner.kill();
            let _ = runner.wait();
            panic!("{what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A foreground exec passes the signals it gets on to its process (as
/// `run` does), so stopping the caller stops the process.
fn exec_forwards_signals_to_its_process(layout: Layout) {
    let (b, id) = sleeping(layout);
    let script = "trap 'exit 7' TERM; touch /tmp/exec-ready; while :; do sleep 0.1; done";
    let mut runner = b
        .runtime(&["exec", &id, "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec");
    b.wait_file("rootfs/tmp/exec-ready");
    let pid = rustix::process::Pid::from_raw(runner.id() as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
    let status = wait_within(&mut runner, "exec did not end after SIGTERM");
    assert_eq!(status.code(), Some(7), "the process's TERM trap ran");
}
