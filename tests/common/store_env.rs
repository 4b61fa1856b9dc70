//! A scratch directory for the image tests: a local image store of its own
//! (`XDG_CACHE_HOME`), no credentials or certificates of the user's
//! (`XDG_CONFIG_HOME`), a small busybox root filesystem, and a stand-in
//! kernel and static init, so builds need no kernel build and boot nothing.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// See the module documentation.
pub struct StoreEnv {
    pub dir: tempfile::TempDir,
}

impl StoreEnv {
    pub fn new() -> StoreEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
        std::fs::create_dir_all(rootfs.join("etc")).expect("mkdir");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("symlink");
        std::fs::write(rootfs.join("etc/motd"), b"hello\n").expect("write");
        std::fs::write(dir.path().join("vmlinux"), b"not really a kernel").expect("write");
        // A 64-bit ELF header without program headers counts as static.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        std::fs::write(dir.path().join("init"), elf).expect("write");
        StoreEnv { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The store's root.
    pub fn store(&self) -> PathBuf {
        self.path("cache/hafen")
    }

    /// `hafen ARGS` in this environment (stdin from /dev/null).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(super::hafen());
        c.args(args)
            .current_dir(self.dir.path())
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env_remove("HAFEN_CACHE")
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run hafen")
    }

    /// Asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "hafen {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "hafen {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `hafen build MANIFEST -o OUT` with the stand-in kernel and init.
    pub fn build_command(&self, manifest: &std::path::Path, out: &str) -> Command {
        let mut c = self.command(&["build"]);
        c.arg(manifest)
            .arg("-o")
            .arg(self.path(out))
            .arg("--kernel")
            .arg(self.path("vmlinux"))
            .arg("--init")
            .arg(self.path("init"));
        c
    }
}
