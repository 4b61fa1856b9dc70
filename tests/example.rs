//! The examples a newcomer runs must build, and the supervision one must
//! boot in the order it promises.

mod common;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_hello_example_builds() {
    build_example("hello");
}

#[test]
fn the_services_example_starts_in_dependency_order_and_stops_cleanly() {
    let (_scratch, image) = build_example("services");
    let mut vm = common::Vm::boot(&image);
    vm.wait_for("api | api: serving");
    let console = vm.console();
    assert!(
        position(&console, "db | db: accepting connections")
            < position(&console, "migrate | migrate: schema")
    );
    assert!(
        position(&console, "migrate | migrate: schema") < position(&console, "api | api: serving")
    );
    vm.signal(libc::SIGTERM);
    let status = vm.wait_exit();
    let console = vm.console();
    assert!(
        position(&console, "api | api: stopping")
            < position(&console, "db | db: flushing and stopping"),
        "dependents stop first"
    );
    assert_eq!(status.code(), Some(0), "{console}");
}

/// Where `needle` first stands in `console`; a panic showing it if nowhere.
fn position(console: &str, needle: &str) -> usize {
    console
        .find(needle)
        .unwrap_or_else(|| panic!("no {needle:?} in:\n{console}"))
}

/// Builds `examples/NAME` against the test's busybox layout; returns the
/// scratch directory (the image goes with it) and the image.
fn build_example(name: &str) -> (common::Scratch, PathBuf) {
    let scratch = common::Scratch::new(&format!("example-{name}"));
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    // Copy the manifest next to the test's busybox layout, as images/busybox.
    std::fs::create_dir_all(scratch.0.join("images")).expect("mkdir");
    std::os::unix::fs::symlink(common::busybox_layout(), scratch.0.join("images/busybox"))
        .expect("link");
    std::fs::copy(example.join("hafen.toml"), scratch.0.join("hafen.toml")).expect("copy manifest");
    let out = Command::new(common::hafen())
        .arg("build")
        .arg(scratch.0.join("hafen.toml"))
        .arg("-o")
        .arg(scratch.0.join("out"))
        .arg("--init")
        .arg(common::init_binary())
        .output()
        .expect("run hafen build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["image.json", "vmlinux"] {
        assert!(scratch.0.join("out").join(file).is_file(), "{file} missing");
    }
    assert!(common::initramfs_path(&scratch.0.join("out")).is_file());
    let image = scratch.0.join("out");
    (scratch, image)
}
