//! The appliance's defaults, seen from inside real containers in a VM:
//! capabilities, no_new_privs, seccomp, masked and read-only paths, cgroup
//! limits, read-only root, users and user namespaces.

mod common;

use common::{build_image, Scratch, Vm};

const MANIFEST: &str = r#"
name = "isolation"

[[container]]
name = "defaults"
image = "oci:busybox:1"
phase = "once"
command = ["/bin/sh", "-c", """
grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status
echo "firmware entries: $(ls /sys/firmware | wc -l)"
echo 1 > /proc/sys/kernel/printk 2>/dev/null && echo "proc sys: writable" || echo "proc sys: read-only"
unshare -m true 2>/dev/null && echo "unshare: allowed" || echo "unshare: refused"
echo "cgroup: $(cat /proc/self/cgroup)"
echo "pids.max: $(cat /sys/fs/cgroup/pids.max)"
echo "id: $(id -u):$(id -g) host: $(hostname)"
mknod /dev/disk b 8 0 2>/dev/null && echo "mknod disk: allowed" || echo "mknod disk: refused"
head -c 3 /dev/zero | wc -c | sed 's/^/zero bytes: /'
"""]

[[container]]
name = "checked"
image = "oci:busybox:1"
phase = "once"
command = ["/bin/hafen-check", "/sys/firmware", "/proc/sys", "/dev/shm"]

[[container]]
name = "limited"
image = "oci:busybox:1"
phase = "once"
memory = "32M"
pids = 16
cpus = 0.5
read_only = true
user = "1000:1000"
cap_drop = ["ALL"]
command = ["/bin/sh", "-c", """
grep -E '^(CapBnd|CapEff):' /proc/self/status
echo "memory.max: $(cat /sys/fs/cgroup/memory.max) swap: $(cat /sys/fs/cgroup/memory.swap.max)"
echo "pids.max: $(cat /sys/fs/cgroup/pids.max) cpu.max: $(cat /sys/fs/cgroup/cpu.max)"
touch /probe 2>/dev/null && echo "root: writable" || echo "root: read-only"
echo "id: $(id -u):$(id -g)"
"""]

[[container]]
name = "privileged"
image = "oci:busybox:1"
phase = "once"
privileged = true
command = ["/bin/sh", "-c", """
grep -E '^(CapBnd|NoNewPrivs|Seccomp):' /proc/self/status
unshare -m true && echo "unshare: allowed" || echo "unshare: refused"
mknod /dev/disk b 8 0 && echo "mknod disk: allowed" || echo "mknod disk: refused"
"""]

[[container]]
name = "userns"
image = "oci:busybox:1"
phase = "once"
userns = true
command = ["/bin/sh", "-c", """
echo "uid_map: $(awk '{print $1, $2, $3}' /proc/self/uid_map)"
echo "id: $(id -u)"
touch /probe && echo "root: writable by container root" || echo "root: not writable"
echo "bin owner: $(stat -c %u /bin/busybox)"
"""]
"#;

#[test]
fn the_appliance_defaults_hold_inside_containers() {
    let scratch = Scratch::new("isolation");
    let image = build_image(&scratch, MANIFEST);
    let mut vm = Vm::boot(&image);
    // Every container is `once`: the machine powers off by itself.
    let status = vm.wait_exit();
    for line in [
        // Docker's default capabilities, no_new_privs, a seccomp filter.
        "defaults | CapBnd:\t00000000a80425fb",
        "defaults | NoNewPrivs:\t1",
        "defaults | Seccomp:\t2",
        "defaults | firmware entries: 0",
        "defaults | proc sys: read-only",
        "defaults | unshare: refused",
        "defaults | cgroup: 0::/hafen/defaults",
        "defaults | pids.max: max",
        "defaults | id: 0:0 host: defaults",
        "defaults | mknod disk: refused",
        "defaults | zero bytes: 3",
        "limited | CapBnd:\t0000000000000000",
        "limited | memory.max: 33554432 swap: 0",
        "limited | pids.max: 16 cpu.max: 50000 100000",
        "limited | root: read-only",
        "limited | id: 1000:1000",
        "privileged | CapBnd:\t000001ffffffffff",
        "privileged | NoNewPrivs:\t0",
        "privileged | Seccomp:\t0",
        "privileged | unshare: allowed",
        "privileged | mknod disk: allowed",
        "userns | uid_map: 0 100000 65536",
        "userns | id: 0",
        "userns | root: writable by container root",
        "userns | bin owner: 0",
    ] {
        vm.assert_console(line);
    }
    // The static checker's report, as JSON on one console line.
    let line = vm.wait_for("checked | {");
    let report: serde_json::Value =
        serde_json::from_str(line.trim_start_matches("checked | ")).expect("checker JSON");
    assert_eq!(report["capabilities"]["bounding"], "00000000a80425fb");
    assert_eq!(report["capabilities"]["ambient"], "0000000000000000");
    assert_eq!(report["no_new_privs"], "1");
    assert_eq!(report["seccomp"], "2");
    assert_eq!(report["hostname"], "checked");
    assert_eq!(report["cgroup"], "0::/hafen/checked");
    assert_eq!(report["root_read_only"], false);
    assert_eq!(report["paths"]["/sys/firmware"], "masked");
    assert_eq!(report["paths"]["/proc/sys"], "read-only");
    assert_eq!(report["paths"]["/dev/shm"], "writable");
    assert_eq!(
        report["devices"]["null"],
        serde_json::json!({"type": "c", "major": 1, "minor": 3, "mode": "666"})
    );
    assert_eq!(report["devices"]["ptmx"]["type"], "l");
    let mounts = report["mounts"].as_array().expect("mounts");
    let mount = |target: &str| {
        mounts
            .iter()
            .find(|m| m["target"] == target)
            .unwrap_or_else(|| panic!("no {target} mount"))
    };
    assert_eq!(mount("/")["type"], "overlay");
    assert!(mount("/sys")["options"]
        .as_str()
        .expect("opts")
        .starts_with("ro,"));
    assert!(mount("/sys/fs/cgroup")["options"]
        .as_str()
        .expect("opts")
        .starts_with("ro,"));
    assert_eq!(
        mount("/sys/fs/cgroup")["type"],
        "cgroup2",
        "the container's own cgroup, bound"
    );
    assert_eq!(
        report["rlimits"]["RLIMIT_NOFILE"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(status.code(), Some(0), "{}", vm.console());
}
