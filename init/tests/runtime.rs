//! `hafen-init runtime` on this host (as root): the OCI lifecycle, kill,
//! delete, run's exit status and signal forwarding, what a container sees
//! under many configs, and clear errors for bad bundles. Every test runs on
//! both cgroup layouts (`host::*` and `cgroup2::*`, see support/mod.rs).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{host_ns, layout_tests, stderr, stdout, Bundle, Layout};

layout_tests!(
    lifecycle_create_start_kill_delete,
    kill_takes_names_with_and_without_sig_and_numbers,
    run_exits_with_the_containers_status,
    run_forwards_sigterm_to_the_container,
    the_container_sees_its_config,
    user_namespaces_map_ids,
    an_existing_namespace_is_joined_by_path,
    bad_bundles_give_clear_errors,
    the_checker_reports_what_the_config_asks_for,
);

fn lifecycle_create_start_kill_delete(layout: Layout) {
    let b = Bundle::new(
        layout,
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; touch /tmp/ready; while true; do sleep 1 & wait $!; done",
        ],
    );
    let c1 = b.id("c1");
    let pid_file = b.dir.path().join("pid");
    let (ok, err) = b.create(&c1, &["--pid-file", pid_file.to_str().expect("utf8")]);
    assert!(ok, "create: {err}");
    let state = b.state(&c1);
    assert_eq!(state["status"], "created");
    assert_eq!(state["ociVersion"], "1.0.2");
    assert_eq!(state["id"], c1);
    let pid = state["pid"].as_i64().expect("pid");
    assert!(pid > 0);
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("pid file"),
        pid.to_string()
    );
    assert!(state["bundle"].as_str().expect("bundle").ends_with(
        b.dir
            .path()
            .file_name()
            .expect("name")
            .to_str()
            .expect("utf8")
    ));

    let (ok, err) = b.create(&c1, &[]);
    assert!(!ok && err.contains("already exists"), "{err}");

    let out = b.runtime(&["start", &c1]).output().expect("start");
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(b.state(&c1)["status"], "running");
    b.wait_ready();
    let out = b.runtime(&["start", &c1]).output().expect("start twice");
    assert!(
        !out.status.success() && stderr(&out).contains("not created"),
        "{}",
        stderr(&out)
    );

    let out = b.runtime(&["delete", &c1]).output().expect("delete");
    assert!(
        !out.status.success() && stderr(&out).contains("running"),
        "delete of a running container is refused: {}",
        stderr(&out)
    );

    let out = b.runtime(&["kill", &c1, "TERM"]).output().expect("kill");
    assert!(out.status.success(), "kill: {}", stderr(&out));
    b.wait_status(&c1, "stopped");
    assert_eq!(b.state(&c1)["pid"], 0);
    let out = b.runtime(&["kill", &c1]).output().expect("kill stopped");
    assert!(!out.status.success() && stderr(&out).contains("not running"));
    let out = b.runtime(&["delete", &c1]).output().expect("delete");
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert!(!b.root().join(&c1).exists(), "state removed");
    let out = b.runtime(&["state", &c1]).output().expect("state");
    assert!(!out.status.success() && stderr(&out).contains("does not exist"));
}

fn kill_takes_names_with_and_without_sig_and_numbers(layout: Layout) {
    for (i, signal) in ["SIGUSR1", "USR1", "10"].iter().enumerate() {
        let b = Bundle::new(
            layout,
            &[
                "/bin/sh",
                "-c",
                "trap 'exit 5' USR1; touch /tmp/ready; while true; do sleep 1 & wait $!; done",
            ],
        );
        let id = b.id(&format!("k{i}"));
        let (ok, err) = b.create(&id, &[]);
        assert!(ok, "{err}");
        assert!(b
            .runtime(&["start", &id])
            .output()
            .expect("start")
            .status
            .success());
        b.wait_ready();
        let out = b.runtime(&["kill", &id, signal]).output().expect("kill");
        assert!(out.status.success(), "kill {signal}: {}", stderr(&out));
        b.wait_status(&id, "stopped");
        assert!(b
            .runtime(&["delete", &id])
            .output()
            .expect("delete")
            .status
            .success());
    }
    let b = Bundle::new(layout, &["/bin/sleep", "100"]);
    let x = b.id("x");
    let (ok, err) = b.create(&x, &[]);
    assert!(ok, "{err}");
    let out = b.runtime(&["kill", &x, "SIGNOPE"]).output().expect("kill");
    assert!(!out.status.success() && stderr(&out).contains("unknown signal"));
    let out = b
        .runtime(&["delete", "--force", &x])
        .output()
        .expect("delete --force");
    assert!(out.status.success(), "{}", stderr(&out));
}

fn run_exits_with_the_containers_status(layout: Layout) {
    for (script, code) in [("exit 0", 0), ("exit 3", 3), ("exit 255", 255)] {
        let b = Bundle::new(layout, &["/bin/sh", "-c", script]);
        let r = b.id("r");
        let out = b.run(&r);
        assert_eq!(out.status.code(), Some(code), "{script}: {}", stderr(&out));
        assert!(!b.root().join(&r).exists(), "run cleans up");
    }
    // Killed from outside: 128 + the signal.
    let b = Bundle::new(layout, &["/bin/sleep", "100"]);
    let killed = b.id("killed");
    let mut child = b
        .runtime(&["run", "--bundle", b.path_str(), &killed])
        .spawn()
        .expect("spawn run");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.root().join(&killed).join("state.json").exists() {
        assert!(Instant::now() < deadline, "run never created its container");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = b
        .runtime(&["kill", &killed, "KILL"])
        .output()
        .expect("kill");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(child.wait().expect("wait").code(), Some(128 + 9));

    let b = Bundle::new(layout, &["/bin/definitely-not-here"]);
    let out = b.run(&b.id("r"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/bin/definitely-not-here") && stderr(&out).contains("not found"),
        "{}",
        stderr(&out)
    );
}

fn run_forwards_sigterm_to_the_container(layout: Layout) {
    let b = Bundle::new(
        layout,
        &[
            "/bin/sh",
            "-c",
            "trap 'echo bye; exit 7' TERM; echo ready; while true; do sleep 1 & wait $!; done",
        ],
    );
    let fwd = b.id("fwd");
    let mut child = b
        .runtime(&["run", "--bundle", b.path_str(), &fwd])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("ready") {
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut out, &mut buf).expect("read");
        assert!(
            n > 0 && Instant::now() < deadline,
            "container never got ready"
        );
        seen.extend_from_slice(&buf[..n]);
    }
    // SAFETY: kill takes plain integers; the pid is our own child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(7));
}

/// Runs `script` in a container built from `b` and returns its stdout.
fn see(b: &Bundle) -> String {
    let out = b.run(&b.id("see"));
    assert!(
        out.status.success(),
        "run failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn the_container_sees_its_config(layout: Layout) {
    let script =
        "readlink /proc/self/ns/pid /proc/self/ns/net /proc/self/ns/cgroup /proc/self/ns/mnt; \
        echo host=$(hostname) dom=$(cat /proc/sys/kernel/domainname); \
        grep -E '^(CapBnd|CapEff|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
        echo nofile=$(ulimit -n); echo oom=$(cat /proc/self/oom_score_adj); \
        echo id=$(id -u):$(id -g):$(id -G); echo cwd=$(pwd); echo env=$GREETING; \
        echo fwd=$(cat /proc/sys/net/ipv4/ip_forward); \
        echo timers=$(wc -c < /proc/timer_list); \
        (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo procsys=rw || echo procsys=ro; \
        touch /rootprobe 2>/dev/null && echo root=rw || echo root=ro; \
        mkdir /tmp/blocked 2>/dev/null && echo mkdir=ok || echo mkdir=denied; \
        ls -l /dev/null /dev/zero /dev/extra | awk '{print $1, $5, $6, $NF}'; \
        grep ' /data ' /proc/self/mounts; grep ' /scratch ' /proc/self/mounts";
    let mut b = Bundle::new(layout, &["/bin/sh", "-c", script]);
    std::fs::create_dir_all(b.dir.path().join("host-data")).expect("mkdir");
    b.set("/linux/namespaces", json!([{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}, {"type": "cgroup"}]))
        .set("/domainname", json!("example.test"))
        .set("/process/user", json!({"uid": 1000, "gid": 1000, "additionalGids": [20, 30]}))
        .set("/process/cwd", json!("/tmp"))
        .set("/process/env", json!(["PATH=/bin", "GREETING=hello"]))
        .set("/process/noNewPrivileges", json!(true))
        .set("/process/oomScoreAdj", json!(500))
        .set("/process/rlimits", json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]))
        .set(
            "/process/capabilities",
            json!({"bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"], "effective": ["CAP_NET_BIND_SERVICE"], "permitted": ["CAP_NET_BIND_SERVICE"], "inheritable": ["CAP_NET_BIND_SERVICE"], "ambient": ["CAP_NET_BIND_SERVICE"]}),
        )
        .set("/linux/sysctl", json!({"net.ipv4.ip_forward": "1"}))
        .set("/linux/maskedPaths", json!(["/proc/timer_list"]))
        .set("/linux/readonlyPaths", json!(["/proc/sys"]))
        .set("/linux/devices", json!([{"path": "/dev/extra", "type": "c", "major": 1, "minor": 7, "fileMode": 0o600, "uid": 0, "gid": 0}]))
        .set("/linux/seccomp", json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18}]}))
        .set("/root/readonly", json!(true));
    let mounts = b.config["mounts"].as_array_mut().expect("mounts");
    mounts.push(json!({"destination": "/data", "type": "bind", "source": "host-data", "options": ["rbind", "ro"]}));
    mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]}));
    mounts.push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]}));
    let seen = see(&b);
    let line = |prefix: &str| {
        seen.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{seen}"))
            .to_owned()
    };
    let ns: Vec<&str> = seen.lines().take(4).collect();
    assert_ne!(ns[0], host_ns("pid"), "new pid namespace");
    assert_ne!(ns[1], host_ns("net"), "new network namespace");
    assert_ne!(ns[2], host_ns("cgroup"), "new cgroup namespace");
    assert_ne!(ns[3], host_ns("mnt"), "new mount namespace");
    assert_eq!(line("host="), "host=box dom=example.test");
    // Non-root: the bounding set stays, the rest is the ambient cap only.
    assert_eq!(line("CapBnd:"), "CapBnd:\t0000000000000420");
    assert_eq!(line("CapEff:"), "CapEff:\t0000000000000400");
    assert_eq!(line("CapAmb:"), "CapAmb:\t0000000000000400");
    assert_eq!(line("NoNewPrivs:"), "NoNewPrivs:\t1");
    assert_eq!(line("Seccomp:"), "Seccomp:\t2");
    assert_eq!(line("nofile="), "nofile=123");
    assert_eq!(line("oom="), "oom=500");
    assert_eq!(line("id="), "id=1000:1000:1000 20 30");
    assert_eq!(line("cwd="), "cwd=/tmp");
    assert_eq!(line("env="), "env=hello");
    assert_eq!(
        line("fwd="),
        "fwd=1",
        "sysctl in the container's network namespace"
    );
    assert_eq!(
        line("timers="),
        "timers=0",
        "masked: /dev/null, readable by anyone"
    );
    assert_eq!(line("procsys="), "procsys=ro");
    assert_eq!(line("root="), "root=ro");
    assert_eq!(line("mkdir="), "mkdir=denied", "seccomp rule");
    assert!(
        seen.contains("crw-rw-rw- 1, 3 /dev/null") && seen.contains("crw-rw-rw- 1, 5 /dev/zero"),
        "{seen}"
    );
    assert!(seen.contains("crw------- 1, 7 /dev/extra"), "{seen}");
    assert!(
        line("/").contains(" /data ") || seen.contains(" /data ro,"),
        "{seen}"
    );
    assert!(
        seen.lines()
            .any(|l| l.contains(" /data ") && l.contains(" ro,")),
        "bind ro: {seen}"
    );
    assert!(
        seen.lines().any(|l| l.contains(" /scratch tmpfs ")
            && l.contains("nosuid")
            && l.contains("size=1024k")),
        "tmpfs options: {seen}"
    );
}

fn user_namespaces_map_ids(layout: Layout) {
    let mut b = Bundle::new(
        layout,
        &[
            "/bin/sh",
            "-c",
            "awk '{print $1, $2, $3}' /proc/self/uid_map; id -u; touch /owned && echo writable",
        ],
    );
    // The rootfs must belong to the mapped root to be writable by it.
    let status = Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(b.dir.path().join("rootfs"))
        .status()
        .expect("chown");
    assert!(status.success());
    b.set("/linux/namespaces", json!([{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}, {"type": "user"}]))
        .set("/linux/uidMappings", json!([{"containerID": 0, "hostID": 100000, "size": 65536}]))
        .set("/linux/gidMappings", json!([{"containerID": 0, "hostID": 100000, "size": 65536}]));
    let seen = see(&b);
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["0 100000 65536", "0", "writable"],
        "{seen}"
    );
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(b.dir.path().join("rootfs/owned")).expect("created"),
    );
    assert_eq!(owner, 100000, "container root is host uid 100000");
}

fn an_existing_namespace_is_joined_by_path(layout: Layout) {
    let mut b = Bundle::new(layout, &["/bin/readlink", "/proc/self/ns/net"]);
    let mut holder = Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .expect("unshare --net");
    let net = format!("/proc/{}/ns/net", holder.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&net)
        .map(|l| l.to_string_lossy() == host_ns("net"))
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "unshare never entered its namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let wanted = std::fs::read_link(&net)
        .expect("ns")
        .to_string_lossy()
        .into_owned();
    b.set(
        "/linux/namespaces",
        json!([{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": net}]),
    );
    let out = b.run(&b.id("j"));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), wanted);
}

fn expect_error(b: &Bundle, needle: &str) {
    let bad = b.id("bad");
    let out = b.run(&bad);
    assert_eq!(out.status.code(), Some(1), "{needle}: {}", stderr(&out));
    assert!(
        stderr(&out).contains(needle),
        "error should mention {needle:?}: {}",
        stderr(&out)
    );
    assert!(!b.root().join(&bad).exists(), "no state left behind");
}

fn bad_bundles_give_clear_errors(layout: Layout) {
    let mut b = Bundle::new(layout, &["/bin/true"]);
    b.set("/root/path", json!("missing-rootfs"));
    expect_error(&b, "missing-rootfs");
    let mut b = Bundle::new(layout, &["/bin/true"]);
    b.set(
        "/linux/namespaces",
        json!([{"type": "mount"}, {"type": "time-travel"}]),
    );
    expect_error(&b, "unknown namespace type \"time-travel\"");
    let mut b = Bundle::new(layout, &["/bin/true"]);
    b.set("/process/cwd", json!("relative"));
    expect_error(&b, "process.cwd");
    let mut b = Bundle::new(layout, &["/bin/true"]);
    b.set(
        "/process/capabilities",
        json!({"bounding": ["CAP_TELEPORT"]}),
    );
    expect_error(&b, "CAP_TELEPORT");
    let mut b = Bundle::new(layout, &["/bin/true"]);
    b.config.as_object_mut().expect("object").remove("process");
    expect_error(&b, "no process");
    let b = Bundle::new(layout, &["/bin/true"]);
    let bad = b.id("bad");
    std::fs::write(b.dir.path().join("config.json"), "{ \"ociVersion\": ").expect("write");
    let out = b
        .runtime_raw(&["run", "--bundle", b.path_str(), &bad])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a valid OCI runtime config"),
        "{}",
        stderr(&out)
    );
    assert!(!Path::new(&b.root().join(&bad)).exists());
}

/// The static checker next to the hafen-init under test (scripts/build-init.sh builds it).
fn checker() -> PathBuf {
    let candidates = [
        std::env::var_os("HAFEN_INIT").map(|p| PathBuf::from(p).with_file_name("hafen-check")),
        Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/x86_64-unknown-linux-musl/release/hafen-check"),
        ),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .expect("no static hafen-check: run scripts/build-init.sh (scripts/test.sh does)")
}

fn the_checker_reports_what_the_config_asks_for(layout: Layout) {
    let mut b = Bundle::new(
        layout,
        &[
            "/bin/hafen-check",
            "/proc/timer_list",
            "/proc/sys",
            "/tmp",
            "/data",
        ],
    );
    std::fs::copy(checker(), b.dir.path().join("rootfs/bin/hafen-check")).expect("copy checker");
    std::fs::create_dir_all(b.dir.path().join("host-data")).expect("mkdir");
    std::fs::write(b.dir.path().join("host-data/file"), "data").expect("write");
    b.set("/process/capabilities", json!({"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"], "inheritable": [], "ambient": []}))
        .set("/process/noNewPrivileges", json!(true))
        .set("/process/rlimits", json!([{"type": "RLIMIT_NOFILE", "soft": 64, "hard": 128}, {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]))
        .set("/process/cwd", json!("/tmp"))
        .set("/domainname", json!("checked.test"))
        .set("/linux/maskedPaths", json!(["/proc/timer_list"]))
        .set("/linux/readonlyPaths", json!(["/proc/sys"]))
        .set("/linux/seccomp", json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["reboot"], "action": "SCMP_ACT_ERRNO"}]}));
    let mounts = b.config["mounts"].as_array_mut().expect("mounts");
    mounts.push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}));
    mounts.push(json!({"destination": "/data", "type": "bind", "source": "host-data", "options": ["rbind", "ro"]}));
    let report: Value = serde_json::from_str(&see(&b)).expect("checker JSON");
    // Root: exec recomputes effective and permitted from the bounding set.
    assert_eq!(report["capabilities"]["bounding"], "0000000000000021");
    assert_eq!(report["capabilities"]["ambient"], "0000000000000000");
    assert_eq!(report["no_new_privs"], "1");
    assert_eq!(report["seccomp"], "2");
    assert_eq!(report["rlimits"]["RLIMIT_NOFILE"], json!([64, 128]));
    assert_eq!(report["rlimits"]["RLIMIT_CORE"], json!([0, 0]));
    assert_eq!(report["cwd"], "/tmp");
    assert_eq!(report["hostname"], "box");
    assert_eq!(report["domainname"], "checked.test");
    assert_eq!(report["paths"]["/proc/timer_list"], "masked");
    assert_eq!(report["paths"]["/proc/sys"], "read-only");
    assert_eq!(report["paths"]["/tmp"], "writable");
    assert_eq!(report["paths"]["/data"], "read-only");
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        assert_eq!(
            report["devices"][name],
            json!({"type": "c", "major": major, "minor": minor, "mode": "666"}),
            "{name}"
        );
    }
    for (kind, ours) in [
        ("pid", "pid"),
        ("net", "net"),
        ("ipc", "ipc"),
        ("uts", "uts"),
        ("mnt", "mnt"),
    ] {
        assert_ne!(
            report["namespaces"][kind],
            host_ns(ours),
            "{kind} namespace is the container's own"
        );
    }
    assert_eq!(
        report["namespaces"]["user"],
        host_ns("user"),
        "no user namespace was asked for"
    );
    let mounts = report["mounts"].as_array().expect("mounts");
    let tmp = mounts
        .iter()
        .find(|m| m["target"] == "/tmp")
        .expect("/tmp mount");
    assert_eq!(tmp["type"], "tmpfs");
    assert!(tmp["options"].as_str().expect("options").contains("nosuid"));
}
