//! `hafen-init runtime exec` and terminals through the console socket, on
//! the host's hybrid cgroup layout and in a pure cgroup2 namespace.

mod support;

use std::io::{IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

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
);

/// A created and started container whose init sleeps.
fn sleeping(layout: Layout) -> (Bundle, String) {
    let mut b = Bundle::new(
        layout,
        &["/bin/sh", "-c", "touch /tmp/ready; exec sleep 1000"],
    );
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

fn exec_into_a_stopped_or_unknown_container_fails_clearly(layout: Layout) {
    let b = Bundle::new(layout, &["/bin/true"]);
    let id = b.id("gone");
    let out = exec(&b, &[&id, "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let (ok, err) = b.create(&id, &[]);
    assert!(ok, "create: {err}");
    assert!(b.cmd(&["start", &id]).status.success());
    b.wait_status(&id, "stopped");
    let out = exec(&b, &[&id, "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("stopped"), "{}", stderr(&out));
    let (b, id) = sleeping(layout);
    let out = exec(&b, &[&id, "/no/such/program"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/no/such/program: not found in the container"),
        "{}",
        stderr(&out)
    );
}

/// Receives one descriptor sent with SCM_RIGHTS on the first connection.
fn receive_fd(listener: &UnixListener) -> (String, OwnedFd) {
    let (conn, _) = listener.accept().expect("accept");
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 256];
    let got = rustix::net::recvmsg(
        &conn,
        &mut [IoSliceMut::new(&mut name)],
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
    (String::from_utf8_lossy(&name[..got.bytes]).into_owned(), fd)
}

/// Reads the terminal until the process closes it (EIO) or 20 s pass.
fn read_terminal(master: OwnedFd) -> String {
    let mut file = std::fs::File::from(master);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
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
    let runner = b
        .runtime(&[
            "run",
            "--console-socket",
            &socket,
            "--bundle",
            b.path_str(),
            &id,
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("run");
    let (name, master) = receive_fd(&listener);
    let seen = read_terminal(master);
    let status = runner.wait_with_output().expect("wait for run").status;
    assert!(status.success(), "run: {status}");
    assert!(name.starts_with("/dev/pts/"), "{name}");
    assert_eq!(seen, format!("{name}\n33 101\nall-tty\n"), "{seen}");

    // exec -t into a running container.
    let (b, id) = sleeping(layout);
    let (listener, socket) = listen(b.path(), "exec.sock");
    let runner = b
        .runtime(&[
            "exec",
            "--tty",
            "--console-socket",
            &socket,
            &id,
            "sh",
            "-c",
            "tty; [ -t 0 ] && echo in-tty",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("exec");
    let (name, master) = receive_fd(&listener);
    let seen = read_terminal(master);
    let status = runner.wait_with_output().expect("wait for exec").status;
    assert!(status.success(), "exec: {status}");
    assert_eq!(seen, format!("{name}\nin-tty\n"), "{seen}");
}

fn a_terminal_needs_a_console_socket(layout: Layout) {
    let mut b = Bundle::new(layout, &["tty"]);
    b.set("/process/terminal", json!(true));
    let out = b.run(&b.id("nosock"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--console-socket"),
        "{}",
        stderr(&out)
    );
}
