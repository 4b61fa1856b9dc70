//! End-to-end: build an image from a manifest, boot it in QEMU, watch the
//! containers on the console, and shut it down from the host.

mod common;

use common::{build_image, Scratch, Vm};

/// The whole spine: once container, then a service; SIGTERM to `hafen run`
/// becomes an ACPI power-button press, the service gets its stop signal, the
/// guest powers off cleanly and `hafen run` exits 0.
#[test]
fn boots_into_containers_and_powers_off_gracefully_on_sigterm() {
    let scratch = Scratch::new("spine");
    let image = build_image(
        &scratch,
        r#"
name = "spine"
hostname = "spine-host"
[[container]]
name = "greet"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "echo hello from $(hostname) as pid $$ with GREETING=$GREETING"]
env = ["GREETING=hi"]
phase = "once"
[[container]]
name = "svc"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'echo stop signal received; exit 0' TERM; echo ready; while true; do sleep 1 & wait $!; done"]
"#,
    );
    let mut vm = Vm::boot(&image);
    vm.wait_for("svc | ready");
    // The once container ran first, in its own pid and uts namespaces.
    vm.assert_console("greet | hello from greet as pid 1 with GREETING=hi");
    vm.assert_console("greet exited with code 0");
    vm.assert_console("first container (greet) started");
    vm.signal(libc::SIGTERM);
    vm.wait_for("svc | stop signal received");
    let status = vm.wait_exit();
    vm.assert_console("svc exited with code 0");
    vm.assert_console("powering off");
    assert_eq!(
        status.code(),
        Some(0),
        "hafen run exit status\n{}",
        vm.console()
    );
}

/// A container whose command does not exist is reported with its name and
/// the command, and the other containers still run.
#[test]
fn a_missing_command_is_reported_and_the_others_still_run() {
    let scratch = Scratch::new("missing");
    let image = build_image(
        &scratch,
        r#"
name = "missing"
[[container]]
name = "broken"
image = "oci:busybox:1"
command = ["/bin/does-not-exist", "--flag"]
phase = "once"
[[container]]
name = "after"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo still running; while true; do sleep 1 & wait $!; done"]
"#,
    );
    let mut vm = Vm::boot(&image);
    let line = vm.wait_for("container broken failed to start");
    assert!(
        line.contains("/bin/does-not-exist"),
        "error names the command: {line}"
    );
    assert!(
        line.contains("not found"),
        "error says what is wrong: {line}"
    );
    vm.wait_for("after | still running");
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait_exit().code(), Some(0), "{}", vm.console());
}

/// A service that ignores its stop signal is killed when its stop timeout
/// runs out, and the machine still powers off cleanly.
#[test]
fn a_container_ignoring_sigterm_is_killed_at_its_stop_timeout() {
    let scratch = Scratch::new("stubborn");
    let image = build_image(
        &scratch,
        r#"
name = "stubborn"
[[container]]
name = "stubborn"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'echo ignoring TERM' TERM; echo ready; while true; do sleep 1 & wait $!; done"]
stop_timeout = 2
"#,
    );
    let mut vm = Vm::boot(&image);
    vm.wait_for("stubborn | ready");
    vm.signal(libc::SIGTERM);
    vm.wait_for("stubborn | ignoring TERM");
    vm.wait_for("stubborn did not stop within 2 s; sending SIGKILL");
    let status = vm.wait_exit();
    vm.assert_console("stubborn killed by SIGKILL");
    assert_eq!(status.code(), Some(0), "{}", vm.console());
}

/// A second SIGTERM forces QEMU off without waiting for the guest, and
/// `hafen run` then reports failure.
#[test]
fn a_second_signal_forces_the_vm_off() {
    let scratch = Scratch::new("force");
    let image = build_image(
        &scratch,
        r#"
name = "force"
[[container]]
name = "stubborn"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1 & wait $!; done"]
stop_timeout = 600
"#,
    );
    let mut vm = Vm::boot(&image);
    vm.wait_for("stubborn | ready");
    vm.signal(libc::SIGTERM);
    vm.wait_for("power-off requested");
    vm.signal(libc::SIGTERM);
    let status = vm.wait_exit();
    assert_ne!(
        status.code(),
        Some(0),
        "a forced stop is not a clean power-off\n{}",
        vm.console()
    );
}
