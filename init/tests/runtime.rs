//! `hafen-init runtime` on this host (as root): the OCI lifecycle, kill,
//! delete, run's exit status and signal forwarding, what a container sees
//! under many configs, and clear errors for bad bundles. Every test runs on
//! both cgroup layouts (`host::*` and `cgroup2::*`, see support/mod.rs).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{
    host_ns, kill_tagged, layout_tests, mounts_under, stderr, stdout, tagged_processes,
    v2_has_controller, Bundle, Layout,
};

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
    // Issue 7's runtime defects (below).
    default_devices_work_under_a_deny_all_device_rule,
    the_device_filter_denies_devices_no_rule_allows,
    pids_limit_zero_means_no_limit,
    every_rootfs_propagation_runs,
    joining_a_containers_pid_namespace_shows_its_processes,
    joining_a_mount_namespace_by_path_sets_the_root_up_in_it,
    a_container_without_a_mount_namespace_chroots_and_leaves_no_mounts,
    hooks_run_in_order_where_the_spec_says_with_the_state_on_stdin,
    a_hook_past_its_timeout_is_killed_and_fails_create,
    a_failing_create_hook_fails_create_and_leaves_nothing,
    a_failing_start_container_hook_fails_start_before_the_process_runs,
    failing_poststart_and_poststop_hooks_only_warn,
    delete_force_of_an_unknown_id_succeeds,
    deleting_a_created_container_needs_force,
    a_limit_the_v2_hierarchy_lacks_is_an_error_naming_it,
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

// Regression tests for issue 7's runtime defects. What each expects is what
// Debian's runc 1.1 does with the same bundle, unless a comment says why not
// (run them against runc with HAFEN_TEST_ORACLE=/usr/sbin/runc).

const DENY_ALL: &str = r#"[{"allow": false, "access": "rwm"}]"#;

fn deny_all() -> Value {
    serde_json::from_str(DENY_ALL).expect("JSON")
}

/// runc spec's deny-all device rule used to block the runtime's own mknod of
/// /dev/null ("create device /dev/null: Operation not permitted").
fn default_devices_work_under_a_deny_all_device_rule(layout: Layout) {
    let script = "echo x > /dev/null && echo null=ok; \
        echo zero=$(head -c 4 /dev/zero | wc -c); \
        echo urandom=$(head -c 4 /dev/urandom | wc -c); \
        echo random=$(head -c 4 /dev/random | wc -c); \
        echo x 2>/tmp/full.err > /dev/full || echo full=$(cat /tmp/full.err); \
        test -c /dev/tty && echo tty=ok; \
        exec 3<>/dev/ptmx && echo ptmx=ok; \
        echo pts=$(ls /dev/pts | tr '\\n' ' '); \
        (exec 4<>/dev/pts/0) 2>/tmp/pts.err; echo pts0=$(cat /tmp/pts.err)";
    let mut b = Bundle::new(layout, &["/bin/sh", "-c", script]);
    b.set("/linux/resources", json!({"devices": deny_all()}));
    let seen = see(&b);
    for want in [
        "null=ok",
        "zero=4",
        "urandom=4",
        "random=4",
        "tty=ok",
        "ptmx=ok",
    ] {
        assert!(seen.lines().any(|l| l == want), "{want} in:\n{seen}");
    }
    assert!(
        seen.contains("No space left on device"),
        "/dev/full: {seen}"
    );
    assert!(
        seen.contains("pts=0 ptmx"),
        "opening ptmx made pts/0: {seen}"
    );
    // A locked pty slave: EIO from the driver, not EPERM from the filter.
    let pts0 = seen.lines().find(|l| l.starts_with("pts0=")).expect("pts0");
    assert!(
        (pts0.contains("I/O error") || pts0.contains("Input/output error"))
            && !pts0.contains("not permitted"),
        "{seen}"
    );
}

/// The filter is applied, not skipped: a device node the rules do not
/// allow cannot be opened, and can be once a rule allows it.
fn the_device_filter_denies_devices_no_rule_allows(layout: Layout) {
    if !Path::new("/dev/loop0").exists() {
        eprintln!("no /dev/loop0 on this host: nothing to check");
        return;
    }
    let script = "ls -l /dev/loop0 | awk '{print \"node=\" $1, $5, $6}'; \
        (exec 3</dev/loop0) 2>/tmp/err && echo open=ok || echo open=$(cat /tmp/err)";
    let mut seen = Vec::new();
    for allow in [false, true] {
        let mut b = Bundle::new(layout, &["/bin/sh", "-c", script]);
        let mut rules = deny_all();
        if allow {
            rules
                .as_array_mut()
                .expect("rules")
                .push(json!({"allow": true, "type": "b", "major": 7, "minor": 0, "access": "rw"}));
        }
        b.set("/linux/resources", json!({"devices": rules})).set(
            "/linux/devices",
            json!([{"path": "/dev/loop0", "type": "b", "major": 7, "minor": 0, "fileMode": 0o600, "uid": 0, "gid": 0}]),
        );
        seen.push(see(&b));
    }
    for out in &seen {
        assert!(
            out.contains("node=brw------- 7, 0"),
            "the node exists: {out}"
        );
    }
    assert!(
        seen[0].contains("open=") && seen[0].contains("Operation not permitted"),
        "denied: {}",
        seen[0]
    );
    assert!(seen[1].contains("open=ok"), "allowed: {}", seen[1]);
}

/// `pids.limit: 0` was written as "max" (failing where v2 has no pids
/// controller); 0 means no limit and writes nothing.
fn pids_limit_zero_means_no_limit(layout: Layout) {
    let mut b = Bundle::new(layout, &["/bin/sh", "-c", "echo ran"]);
    b.set(
        "/linux/resources",
        json!({"pids": {"limit": 0}, "devices": deny_all()}),
    );
    assert_eq!(see(&b).trim(), "ran");
    let c = b.id("c");
    let (ok, err) = b.create(&c, &[]);
    assert!(ok, "create: {err}");
    let out = b.cmd(&["delete", "--force", &c]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.assert_gone(&c);
}

/// `rootfsPropagation: shared` made pivot_root fail with EINVAL.
fn every_rootfs_propagation_runs(layout: Layout) {
    for propagation in [
        "shared", "slave", "private", "rshared", "rslave", "rprivate",
    ] {
        let mut b = Bundle::new(
            layout,
            &[
                "/bin/sh",
                "-c",
                "awk '$5 == \"/\" {print \"root=\" $4}' /proc/self/mountinfo; ls /proc/self/ns/mnt",
            ],
        );
        b.set("/linux/rootfsPropagation", json!(propagation));
        let out = b.run(&b.id("p"));
        assert!(
            out.status.success(),
            "{propagation}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("root=/") && stdout(&out).contains("/proc/self/ns/mnt"),
            "{propagation}: {}",
            stdout(&out)
        );
    }
}

/// The pid of a started container, from its state.
fn container_pid(b: &Bundle, id: &str) -> i64 {
    b.state(id)["pid"].as_i64().expect("pid")
}

/// A created container to join: started, sleeping, its mark in /tmp.
fn started_sleeper(layout: Layout) -> (Bundle, String) {
    let first = Bundle::new(
        layout,
        &["/bin/sh", "-c", "touch /tmp/ready; exec sleep 1000"],
    );
    let id = first.id("first");
    let (ok, err) = first.create(&id, &[]);
    assert!(ok, "create: {err}");
    let out = first.cmd(&["start", &id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    first.wait_ready();
    (first, id)
}

/// Joining a pid namespace by path failed with "return to own pid
/// namespace: Invalid argument".
fn joining_a_containers_pid_namespace_shows_its_processes(layout: Layout) {
    let (first, id) = started_sleeper(layout);
    let pid = container_pid(&first, &id);
    let ns = format!("/proc/{pid}/ns/pid");
    let wanted = std::fs::read_link(&ns).expect("first's pid ns");
    let mut b = Bundle::new(
        layout,
        &[
            "/bin/sh",
            "-c",
            "readlink /proc/self/ns/pid; echo one=$(tr '\\0' ' ' < /proc/1/cmdline); echo me=$$",
        ],
    );
    b.set(
        "/linux/namespaces",
        json!([{"type": "pid", "path": ns}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]),
    );
    let seen = see(&b);
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], wanted.to_string_lossy(), "{seen}");
    assert!(
        lines.contains(&"one=sleep 1000"),
        "sees first's sleep: {seen}"
    );
    assert!(!lines.contains(&"me=1"), "not the namespace's init: {seen}");
    let out = first.cmd(&["delete", "--force", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    first.assert_gone(&id);
}

/// Joining a mount namespace by path was "not supported yet". As runc does,
/// the runtime enters it and sets the container's root up there (runc
/// cannot join another container's mount namespace: its rootfs path is not
/// there, so the holder here is a plain `unshare --mount`).
fn joining_a_mount_namespace_by_path_sets_the_root_up_in_it(layout: Layout) {
    let mut holder = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sleep", "60"])
        .spawn()
        .expect("unshare --mount");
    let ns = format!("/proc/{}/ns/mnt", holder.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&ns)
        .map(|l| l.to_string_lossy() == host_ns("mnt"))
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "unshare never entered its namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let wanted = std::fs::read_link(&ns).expect("ns");
    let mut b = Bundle::new(
        layout,
        &[
            "/bin/sh",
            "-c",
            "readlink /proc/self/ns/mnt; ls /marker; echo x > /dev/null && echo null=ok",
        ],
    );
    std::fs::write(b.path().join("rootfs/marker"), "").expect("marker");
    b.set(
        "/linux/namespaces",
        json!([{"type": "pid"}, {"type": "mount", "path": ns}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]),
    );
    let out = b.run(&b.id("m"));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [&*wanted.to_string_lossy(), "/marker", "null=ok"]
    );
}

/// A config without a mount namespace was refused. runc then shares the
/// runtime's mount namespace and chroots into the root after making the
/// mounts there; we also detach them when the container is gone (runc
/// leaves them behind, and a test must not).
fn a_container_without_a_mount_namespace_chroots_and_leaves_no_mounts(layout: Layout) {
    let mut b = Bundle::new(
        layout,
        &["/bin/sh", "-c", "readlink /proc/self/ns/mnt; ls /marker; echo x > /dev/null && echo null=ok; test -e /proc/self/status && echo proc=ok"],
    );
    std::fs::write(b.path().join("rootfs/marker"), "").expect("marker");
    b.set(
        "/linux/namespaces",
        json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]),
    );
    let out = b.run(&b.id("nomnt"));
    let left = mounts_under(b.path());
    for m in left.iter().rev() {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let seen = stdout(&out);
    let lines: Vec<&str> = seen.lines().collect();
    if layout == Layout::Host {
        assert_eq!(
            lines[0],
            host_ns("mnt"),
            "shares the runtime's mount namespace"
        );
    }
    assert_eq!(lines[1..], ["/marker", "null=ok", "proc=ok"], "{seen}");
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

const HOOKS: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// A bundle whose six kinds of hooks each log a line to ROOTFS/order.log
/// and save their stdin to ROOTFS/KIND.json; the hook named `fail` exits 3.
/// The container logs "main" and runs until SIGTERM.
fn hook_bundle(layout: Layout, fail: Option<&str>) -> Bundle {
    let mut b = Bundle::new(
        layout,
        &[
            "/bin/sh",
            "-c",
            "echo main >> /order.log; trap 'exit 0' TERM; touch /tmp/ready; while true; do sleep 1 & wait $!; done",
        ],
    );
    let script = "#!/bin/sh\n\
        # hook KIND LOGDIR [STATUS]: the state to LOGDIR/KIND.json, a line to LOGDIR/order.log\n\
        cat > \"$2/$1.json\"\n\
        echo \"$1 arg2=$2 mnt=$(readlink /proc/self/ns/mnt) pid=$(readlink /proc/self/ns/pid) env=$GREETING leak=${HAFEN_TEST_RUNTIME_ENV:-none}\" >> \"$2/order.log\"\n\
        exit ${3:-0}\n";
    let host_hook = b.path().join("hook");
    let inner_hook = b.path().join("rootfs/bin/hook");
    for path in [&host_hook, &inner_hook] {
        std::fs::write(path, script).expect("hook");
        let mut perm = std::fs::metadata(path).expect("hook").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(path, perm).expect("chmod");
    }
    let log = b.path().join("rootfs");
    let mut hooks = serde_json::Map::new();
    for kind in HOOKS {
        // startContainer's path resolves in the container, the others' in
        // the runtime's mount namespace.
        let (path, dir) = if kind == "startContainer" {
            ("/bin/hook".to_owned(), "/".to_owned())
        } else {
            (
                host_hook.to_string_lossy().into_owned(),
                log.to_string_lossy().into_owned(),
            )
        };
        let mut args = vec!["hook".to_owned(), kind.to_owned(), dir];
        if fail == Some(kind) {
            args.push("3".into());
        }
        hooks.insert(
            kind.into(),
            json!([{"path": path, "args": args, "env": [format!("GREETING=hi-{kind}")], "timeout": 10}]),
        );
    }
    b.set("/hooks", Value::Object(hooks))
        .set("/annotations", json!({"org.example/key": "value"}));
    b
}

/// The hook kinds in the order their lines are in order.log ("main" for
/// the container's process).
fn hook_order(b: &Bundle) -> Vec<String> {
    std::fs::read_to_string(b.path().join("rootfs/order.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').next().unwrap_or("").to_owned())
        .collect()
}

/// The line `kind` logged.
fn hook_line(b: &Bundle, kind: &str) -> String {
    std::fs::read_to_string(b.path().join("rootfs/order.log"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.split(' ').next() == Some(kind))
        .unwrap_or_else(|| panic!("{kind} never ran"))
        .to_owned()
}

/// `word=VALUE` of a logged line.
fn field<'a>(line: &'a str, word: &str) -> &'a str {
    line.split(' ')
        .find_map(|w| w.strip_prefix(word).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {word}= in {line}"))
}

/// OCI hooks were never run.
fn hooks_run_in_order_where_the_spec_says_with_the_state_on_stdin(layout: Layout) {
    let mut b = hook_bundle(layout, None);
    let tag = b.tag();
    let id = b.id("hooks");
    let (ok, err) = b.create(&id, &[]);
    assert!(ok, "create: {err}");
    assert_eq!(
        hook_order(&b),
        ["prestart", "createRuntime", "createContainer"]
    );
    let pid = container_pid(&b, &id);
    let container_mnt = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("mnt");
    let container_pidns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("pid ns");

    let out = b.cmd(&["start", &id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    b.wait_ready();
    let order = hook_order(&b);
    assert!(
        order.contains(&"poststart".to_owned()),
        "poststart ran by the time start returned: {order:?}"
    );
    let out = b.cmd(&["kill", &id, "TERM"]);
    assert!(out.status.success(), "kill: {}", stderr(&out));
    b.wait_status(&id, "stopped");
    assert!(
        !hook_order(&b).contains(&"poststop".to_owned()),
        "poststop waits for delete"
    );
    let out = b.cmd(&["delete", &id]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    b.assert_gone(&id);
    assert!(tagged_processes(&tag).is_empty(), "no process left");

    let order = hook_order(&b);
    let at = |name: &str| {
        order
            .iter()
            .position(|o| o == name)
            .unwrap_or_else(|| panic!("{name} missing in {order:?}"))
    };
    assert_eq!(order.len(), 7, "each hook once, main once: {order:?}");
    assert!(at("prestart") < at("createRuntime"), "{order:?}");
    assert!(at("createRuntime") < at("createContainer"), "{order:?}");
    assert!(at("createContainer") < at("startContainer"), "{order:?}");
    assert!(at("startContainer") < at("main"), "{order:?}");
    assert!(at("startContainer") < at("poststart"), "{order:?}");
    assert_eq!(at("poststop"), 6, "{order:?}");

    // Where each ran: createContainer and startContainer in the container's
    // namespaces, the others in the runtime's.
    for kind in HOOKS {
        let line = hook_line(&b, kind);
        let inside = kind == "createContainer" || kind == "startContainer";
        assert_eq!(
            field(&line, "pid") == container_pidns.to_string_lossy(),
            inside,
            "{kind}'s pid namespace: {line}"
        );
        if inside {
            assert_eq!(
                field(&line, "mnt"),
                container_mnt.to_string_lossy(),
                "{line}"
            );
        } else if layout == Layout::Host {
            assert_eq!(field(&line, "mnt"), host_ns("mnt"), "{line}");
        }
        // Args and env reach it, and only the spec's env: not the runtime's.
        let dir = if kind == "startContainer" {
            "/".to_owned()
        } else {
            b.path().join("rootfs").to_string_lossy().into_owned()
        };
        assert_eq!(field(&line, "arg2"), dir, "{line}");
        assert_eq!(field(&line, "env"), format!("hi-{kind}"), "{line}");
        assert_eq!(field(&line, "leak"), "none", "{line}");

        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(b.path().join(format!("rootfs/{kind}.json")))
                .expect("state saved"),
        )
        .unwrap_or_else(|e| panic!("{kind}'s stdin is state JSON: {e}"));
        assert!(
            state["ociVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("1.")),
            "{kind}: {state}"
        );
        assert_eq!(state["id"], id, "{kind}: {state}");
        assert_eq!(
            Path::new(state["bundle"].as_str().expect("bundle")),
            b.path(),
            "{kind}: {state}"
        );
        assert_eq!(
            state["annotations"],
            json!({"org.example/key": "value"}),
            "{kind}"
        );
        let status = state["status"].as_str().expect("status");
        let expected: &[&str] = match kind {
            "prestart" | "createRuntime" | "createContainer" => &["creating"],
            "startContainer" => &["created"],
            // runc 1.1 runs poststart during create and says created.
            "poststart" => &["running", "created"],
            _ => &["stopped"],
        };
        assert!(expected.contains(&status), "{kind}: {state}");
        if kind != "poststop" {
            assert!(
                state["pid"].as_i64().is_some_and(|p| p > 0),
                "{kind}: {state}"
            );
        }
        // The runtime-side hooks see the container's pid as we do.
        if !inside && kind != "poststop" {
            assert_eq!(state["pid"], pid, "{kind}: {state}");
        }
    }
}

/// A hook that outlives its timeout is killed and fails create, with an
/// error naming the hook; nothing is left.
fn a_hook_past_its_timeout_is_killed_and_fails_create(layout: Layout) {
    let mut b = Bundle::new(layout, &["/bin/true"]);
    let tag = format!("hang-{}-{}", std::process::id(), b.path().display());
    b.set(
        "/hooks",
        json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"], "env": [format!("HAFEN_TEST_TAG={tag}")], "timeout": 1}]}),
    );
    let id = b.id("hang");
    let started = Instant::now();
    let (ok, err) = b.create(&id, &[]);
    let took = started.elapsed();
    let hung = kill_tagged(&tag);
    assert!(!ok, "create must fail");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        err.contains("createRuntime") || err.contains("/bin/sleep"),
        "names the hook: {err}"
    );
    assert!(
        err.to_lowercase().contains("time"),
        "says it timed out: {err}"
    );
    assert!(!hung, "the hook was killed");
    b.assert_gone(&id);
}

/// prestart, createRuntime and createContainer failing fail create (and
/// run): the container does not exist afterwards, no process of it is left.
fn a_failing_create_hook_fails_create_and_leaves_nothing(layout: Layout) {
    for kind in ["prestart", "createRuntime", "createContainer"] {
        let mut b = hook_bundle(layout, Some(kind));
        let tag = b.tag();
        let id = b.id("hookfail");
        let (ok, err) = b.create(&id, &[]);
        assert!(!ok, "{kind} failing must fail create");
        assert!(err.contains(kind), "the error names {kind}: {err}");
        b.assert_gone(&id);
        assert!(tagged_processes(&tag).is_empty(), "{kind}: no process left");
        assert!(!hook_order(&b).contains(&"main".to_owned()));

        let run = b.id("hookfail-run");
        let out = b.run(&run);
        assert!(!out.status.success(), "{kind} failing must fail run");
        b.assert_gone(&run);
        assert!(tagged_processes(&tag).is_empty(), "{kind}: no process left");
        assert!(!hook_order(&b).contains(&"main".to_owned()));
    }
}

/// startContainer failing fails start, and the container's process never
/// runs. (runc's start only opens the exec fifo and says 0; the spec and we
/// report the error.)
fn a_failing_start_container_hook_fails_start_before_the_process_runs(layout: Layout) {
    let mut b = hook_bundle(layout, Some("startContainer"));
    let tag = b.tag();
    let id = b.id("startfail");
    let (ok, err) = b.create(&id, &[]);
    assert!(ok, "create: {err}");
    let out = b.cmd(&["start", &id]);
    assert!(!out.status.success(), "start must fail");
    assert!(stderr(&out).contains("startContainer"), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tagged_processes(&tag).is_empty() {
        assert!(Instant::now() < deadline, "the container was not stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !hook_order(&b).contains(&"main".to_owned()),
        "{:?}",
        hook_order(&b)
    );
    let out = b.cmd(&["delete", "--force", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.assert_gone(&id);
}

/// poststart and poststop failing only warn: start and delete succeed.
fn failing_poststart_and_poststop_hooks_only_warn(layout: Layout) {
    for kind in ["poststart", "poststop"] {
        let mut b = hook_bundle(layout, Some(kind));
        let tag = b.tag();
        let id = b.id("postfail");
        let (ok, err) = b.create(&id, &[]);
        assert!(ok, "create: {err}");
        let out = b.cmd(&["start", &id]);
        assert!(
            out.status.success(),
            "{kind} failing: start {}",
            stderr(&out)
        );
        b.wait_ready();
        assert_eq!(b.state(&id)["status"], "running");
        let out = b.cmd(&["kill", &id, "TERM"]);
        assert!(out.status.success(), "{}", stderr(&out));
        b.wait_status(&id, "stopped");
        let out = b.cmd(&["delete", &id]);
        assert!(
            out.status.success(),
            "{kind} failing: delete {}",
            stderr(&out)
        );
        b.assert_gone(&id);
        assert!(tagged_processes(&tag).is_empty(), "no process left");
        let order = hook_order(&b);
        assert!(
            order.contains(&kind.to_owned()) && order.contains(&"main".to_owned()),
            "{order:?}"
        );
    }
}

/// `delete --force` of an unknown id exited 1; runc and crun exit 0.
fn delete_force_of_an_unknown_id_succeeds(layout: Layout) {
    let b = Bundle::new(layout, &["/bin/true"]);
    let id = b.id("nobody");
    let out = b.cmd(&["delete", "--force", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.cmd(&["delete", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

/// The spec: deleting a container that is not stopped is an error and has
/// no effect; a created one was deleted (as runc does) before.
fn deleting_a_created_container_needs_force(layout: Layout) {
    let b = Bundle::new(layout, &["/bin/true"]);
    let id = b.id("created");
    let (ok, err) = b.create(&id, &[]);
    assert!(ok, "create: {err}");
    let out = b.cmd(&["delete", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("created"), "{}", stderr(&out));
    assert_eq!(b.state(&id)["status"], "created", "left alone");
    let out = b.cmd(&["delete", "--force", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.assert_gone(&id);
}

/// On the hybrid host any linux.resources failed create. What the v2
/// hierarchy can apply is applied (the device filter, pids 0 is nothing);
/// a limit whose controller it lacks (memory, bound to v1 here) is an error
/// that names the controller and cgroups. (runc applies it through v1.)
fn a_limit_the_v2_hierarchy_lacks_is_an_error_naming_it(layout: Layout) {
    let mut b = Bundle::new(layout, &["/bin/sh", "-c", "echo x > /dev/null && echo ran"]);
    b.set(
        "/linux/resources",
        json!({"devices": deny_all(), "pids": {"limit": 0}}),
    );
    assert_eq!(see(&b).trim(), "ran");
    b.set(
        "/linux/resources",
        json!({"devices": deny_all(), "memory": {"limit": 64 << 20}}),
    );
    let id = b.id("mem");
    let out = b.run(&id);
    if v2_has_controller("memory") {
        assert!(out.status.success(), "{}", stderr(&out));
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("memory") && stderr(&out).contains("cgroup"),
        "{}",
        stderr(&out)
    );
    b.assert_gone(&id);
}

#[test]
fn version_prints_a_version_line() {
    let out = Layout::Host
        .runtime()
        .arg("--version")
        .output()
        .expect("--version");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).lines().any(|l| l.contains("version")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn systemd_cgroup_is_refused_naming_cgroupfs() {
    let out = Layout::Host
        .runtime()
        .args(["--systemd-cgroup", "state", "nothing"])
        .output()
        .expect("--systemd-cgroup");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cgroupfs"), "{}", stderr(&out));
}
