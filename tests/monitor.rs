//! The VM's monitor (`hafen run`): the main container's status becomes
//! `hafen run`'s exit code; `-d` returns once the guest answers; a VM name
//! is unique; `api.sock` survives garbage from a client and a client that
//! vanishes mid-stream; `hafen stop VM` ends a detached run.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{build_image, eventually, hafen_cli, Scratch, Vm};
use hafen_proto::control::{Body, Envelope};
use hafen_proto::frame;

const CLI: Duration = Duration::from_secs(60);

#[test]
fn hafen_run_exits_with_the_main_containers_status() {
    // `app` waits for a go from the test so that `side` has set its trap
    // before the power-off's SIGTERM: a container's PID 1 ignores a signal
    // it has no handler for. (A namespace's PID 1 cannot SIGKILL itself:
    // the host does it.)
    for (name, command, expected) in [
        ("zero", "exit 0", 0),
        ("three", "exit 3", 3),
        ("killed", "while true; do sleep 1; done", 137),
    ] {
        let scratch = Scratch::new(&format!("main-{name}"));
        let image = build_image(
            &scratch,
            &format!(
                r#"
name = "main{name}"
main = "app"
[[container]]
name = "app"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "echo started; until [ -e /dev/shm/go ]; do sleep 1; done; {command}"]
[[container]]
name = "side"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo ready; while true; do sleep 1 & wait $!; done"]
"#
            ),
        );
        let mut vm = Vm::boot(&image);
        vm.wait_for("side | ready");
        vm.wait_for("app | started");
        let vm_name = format!("main{name}");
        let go: &[&str] = if expected == 137 {
            &["kill", "-s", "KILL", &vm_name, "app"]
        } else {
            &["exec", &vm_name, "app", "touch", "/dev/shm/go"]
        };
        eventually("the go reaches app", CLI, || {
            let ran = hafen_cli(go, None, CLI);
            match ran.code() {
                Some(0) => Ok(()),
                _ => Err(ran.stderr),
            }
        });
        let status = vm.wait_exit();
        vm.assert_console("app | started");
        vm.assert_console("side exited with code 0");
        assert_eq!(status.code(), Some(expected), "{name}: {}", vm.console());
    }
}

#[test]
fn a_signal_during_the_kernels_boot_still_shuts_the_vm_down() {
    // QEMU's power button press is lost while no one in the guest watches
    // it (the kernel booting, PID 1 starting its first container): the
    // monitor presses it again until the guest goes.
    let scratch = Scratch::new("early-signal");
    let image = build_image(
        &scratch,
        r#"
name = "earlysignal"
[[container]]
name = "svc"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'echo bye; exit 0' TERM; while true; do sleep 1 & wait $!; done"]
"#,
    );
    let mut vm = Vm::boot(&image);
    vm.wait_for("booting earlysignal");
    vm.signal(libc::SIGTERM);
    let status = vm.wait_exit();
    vm.assert_console("guest powered off");
    assert_eq!(status.code(), Some(0), "{}", vm.console());
}

/// Runs `hafen ARGS`, asserting success; returns stdout.
fn ok(args: &[&str]) -> String {
    hafen_cli(args, None, CLI).ok(&args.join(" "))
}

#[test]
fn a_detached_vm_is_served_through_garbage_and_vanishing_clients_then_stopped() {
    let scratch = Scratch::new("detached");
    let image = build_image(
        &scratch,
        r#"
name = "detached"
[[container]]
name = "web"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2 & wait $!; done"]
"#,
    );
    let vm_name = format!("det-{}", std::process::id());
    let image_arg = image.to_string_lossy().into_owned();
    // -d returns once the guest's control channel answers: ps works at once.
    let printed = ok(&[
        "run", "-d", "--accel", "tcg", "--name", &vm_name, &image_arg,
    ]);
    assert_eq!(printed.trim(), vm_name);
    let stop_on_failure = StopOnDrop(vm_name.clone());
    let ps = ok(&["ps", &vm_name]);
    assert!(ps.contains("web") && ps.contains("running"), "{ps}");
    let ls = ok(&["ls"]);
    assert!(ls.contains(&vm_name), "{ls}");

    // The name is taken while it runs.
    let again = hafen_cli(&["run", "-d", "--name", &vm_name, &image_arg], None, CLI);
    assert_ne!(again.code(), Some(0));
    assert!(again.stderr.contains("already running"), "{}", again.stderr);

    // Garbage, an oversized frame and a truncated one on api.sock: the
    // client gets errors, the monitor goes on serving everyone.
    let vms = hafen_qemu::state::vms_dir(&hafen_qemu::state::runtime_dir());
    let dir = hafen_qemu::state::find_vm(&vms, &vm_name).expect("found");
    let mut raw = UnixStream::connect(dir.api_socket()).expect("connect api.sock");
    raw.write_all(b"not a frame at all HFHF").expect("write");
    let mut oversized = frame::header(&[0u8; 4]).expect("header").to_vec();
    oversized[2..6].copy_from_slice(&(1u32 << 24).to_le_bytes());
    let check = frame::crc32(&oversized[..6]) as u16;
    oversized[6..8].copy_from_slice(&check.to_le_bytes());
    raw.write_all(&oversized).expect("write");
    let list = Envelope {
        id: 9,
        body: Body::List,
    }
    .to_frame()
    .expect("encode");
    raw.write_all(&list[..list.len() - 2]).expect("write");
    raw.write_all(&list).expect("write");
    raw.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("web") {
        let n = raw.read(&mut buf).expect("the monitor answers");
        assert!(n > 0, "the monitor hung up on a garbage-sending client");
        got.extend_from_slice(&buf[..n]);
    }
    drop(raw);
    let ps = ok(&["ps", &vm_name]);
    assert!(ps.contains("running"), "{ps}");

    // A client following logs is killed mid-stream; the next one is served.
    let mut follower = std::process::Command::new(common::hafen())
        .args(["logs", "-f", &vm_name, "web"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn logs -f");
    let mut out = follower.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("tick") {
        let n = out.read(&mut buf).expect("read logs -f");
        assert!(n > 0, "logs -f ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    follower.kill().expect("kill logs -f");
    follower.wait().expect("reap logs -f");
    let tail = eventually("a new client is served", CLI, || {
        let ran = hafen_cli(&["logs", "--tail", "2", &vm_name, "web"], None, CLI);
        let text = ran.stdout();
        if ran.code() == Some(0) && text.lines().count() == 2 {
            Ok(text)
        } else {
            Err(format!("{:?} {text:?} {}", ran.code(), ran.stderr))
        }
    });
    assert!(tail.lines().all(|l| l.starts_with("tick ")), "{tail}");

    // hafen stop VM: a graceful power-off; the monitor is gone after.
    ok(&["stop", &vm_name]);
    std::mem::forget(stop_on_failure);
    eventually("the monitor exits", CLI, || {
        if hafen_qemu::state::find_vm(&vms, &vm_name).is_err() {
            Ok(())
        } else {
            Err("still listed".into())
        }
    });
    let gone = hafen_cli(&["ps", &vm_name], None, CLI);
    assert_eq!(gone.code(), Some(1));
    assert!(gone.stderr.contains("no running VM"), "{}", gone.stderr);
}

/// Forces a detached VM off when a test fails before stopping it.
struct StopOnDrop(String);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = hafen_cli(&["kill", &self.0], None, CLI);
    }
}
