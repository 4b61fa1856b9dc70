//! The example a newcomer runs first must build.

mod common;

use std::process::Command;

#[test]
fn the_hello_example_builds() {
    let scratch = common::Scratch::new("example");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
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
    for file in ["image.json", "vmlinux", "initramfs.cpio.lz4"] {
        assert!(scratch.0.join("out").join(file).is_file(), "{file} missing");
    }
}
