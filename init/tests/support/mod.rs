//! The harness the runtime test files share: a busybox bundle in a temp
//! dir, driven through `hafen-init runtime` on one of two cgroup layouts.
//!
//! Not every test file uses every helper.
#![allow(dead_code, unused_macros, unused_imports)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The hafen-init binary under test.
pub fn hafen_init() -> &'static str {
    env!("CARGO_BIN_EXE_hafen-init")
}

/// Where the runtime finds cgroup v2 when it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// This machine as it is: v1 controllers with v2 at
    /// /sys/fs/cgroup/unified, /sys/fs/cgroup a tmpfs.
    Host,
    /// Each command in a private mount namespace with cgroup2 mounted at
    /// /sys/fs/cgroup. It is the same v2 hierarchy as the host's unified
    /// one, so a container's cgroup outlives the command that made it.
    Cgroup2,
}

impl Layout {
    /// A short name for container ids and messages.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Host => "host",
            Layout::Cgroup2 => "cg2",
        }
    }

    /// `PROGRAM ARGS...` as run on this layout. The wrapper execs (no
    /// fork), so the child's pid is the program's and its status is too.
    pub fn command(self, program: &str) -> Command {
        match self {
            Layout::Host => Command::new(program),
            Layout::Cgroup2 => {
                let mut cmd = Command::new("unshare");
                cmd.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "sh",
                    "-c",
                    "mount -t cgroup2 none /sys/fs/cgroup && exec \"$0\" \"$@\"",
                    program,
                ]);
                cmd
            }
        }
    }

    /// The OCI runtime command line on this layout: `hafen-init runtime`,
    /// or the runtime named by `HAFEN_TEST_ORACLE` (e.g. /usr/sbin/runc) to
    /// check what a test expects against another runtime.
    pub fn runtime(self) -> Command {
        match std::env::var("HAFEN_TEST_ORACLE") {
            Ok(oracle) if !oracle.is_empty() => self.command(&oracle),
            _ => {
                let mut cmd = self.command(hafen_init());
                cmd.arg("runtime");
                cmd
            }
        }
    }

    /// Whether the tests drive another runtime than hafen-init.
    pub fn oracle() -> bool {
        std::env::var_os("HAFEN_TEST_ORACLE").is_some_and(|o| !o.is_empty())
    }
}

/// Generates one `#[test]` per layout for each `fn name(layout: Layout)`
/// listed: `host::name` and `cgroup2::name`.
macro_rules! layout_tests {
    ($($name:ident),* $(,)?) => {
        mod host {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::support::Layout::Host)
                }
            )*
        }
        mod cgroup2 {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::support::Layout::Cgroup2)
                }
            )*
        }
    };
}
pub(crate) use layout_tests;

/// Fills `root` with Debian's static busybox, a link per applet in /bin,
/// and the empty directories a container's mounts need.
pub fn busybox_rootfs(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("symlink");
    }
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
}

/// This host's cgroup v2 hierarchy as the test process sees it: the
/// hybrid layout's /sys/fs/cgroup/unified, or /sys/fs/cgroup itself.
pub fn cgroup_v2_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.controllers").exists() {
        unified.to_owned()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// Whether the v2 hierarchy offers `controller` (memory, pids, ...).
pub fn v2_has_controller(controller: &str) -> bool {
    std::fs::read_to_string(cgroup_v2_root().join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == controller)
}

/// The v2 directory of the container `id`'s default cgroup (hafen/ID).
pub fn cgroup_dir(id: &str) -> PathBuf {
    cgroup_v2_root().join("hafen").join(id)
}

/// The pids of every process whose environment holds `HAFEN_TEST_TAG=tag`.
pub fn tagged_processes(tag: &str) -> Vec<i32> {
    let needle = format!("HAFEN_TEST_TAG={tag}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

/// Kills (SIGKILL) every process tagged `tag`, and says whether there was any.
pub fn kill_tagged(tag: &str) -> bool {
    let pids = tagged_processes(tag);
    for pid in &pids {
        // SAFETY: kill takes plain integers; the tag is unique to this test,
        // so these are processes it started.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    !pids.is_empty()
}

/// Mount points at or below `dir` in this process's mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(str::to_owned)
        .collect()
}

/// A bundle with a busybox root in a temp dir, and a state root of its own.
/// When it is dropped, every container named by [`Bundle::id`] is
/// force-deleted (and its empty cgroup removed) and every process tagged by
/// [`Bundle::tag`] killed, so a failed test leaves no process or cgroup
/// behind.
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub config: Value,
    pub layout: Layout,
    ids: RefCell<Vec<String>>,
    tags: RefCell<Vec<String>>,
}

impl Bundle {
    pub fn new(layout: Layout, args: &[&str]) -> Bundle {
        let dir = tempfile::tempdir().expect("tempdir");
        busybox_rootfs(&dir.path().join("rootfs"));
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "hostname": "box",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]}
        });
        Bundle {
            dir,
            config,
            layout,
            ids: RefCell::new(Vec::new()),
            tags: RefCell::new(Vec::new()),
        }
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The bundle directory as a string, for command lines.
    pub fn path_str(&self) -> &str {
        self.dir.path().to_str().expect("utf8 temp dir")
    }

    /// A container id unique to this test process, this layout and `name`
    /// (cgroups are named after ids, and both layouts and concurrent test
    /// binaries share one v2 hierarchy). Remembered for clean-up on drop.
    pub fn id(&self, name: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{name}-{}-{}-{}",
            self.layout.name(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.ids.borrow_mut().push(id.clone());
        id
    }

    /// Adds `HAFEN_TEST_TAG=TAG` to the container's environment, TAG unique
    /// to this bundle, so a test can find (and kill) its processes by it.
    pub fn tag(&mut self) -> String {
        let tag = format!(
            "{}-{}",
            std::process::id(),
            self.path().file_name().expect("name").to_string_lossy()
        );
        self.config["process"]["env"]
            .as_array_mut()
            .expect("process.env")
            .push(json!(format!("HAFEN_TEST_TAG={tag}")));
        self.tags.borrow_mut().push(tag.clone());
        tag
    }

    /// Sets the config value at the JSON pointer `pointer` (its parent must exist).
    pub fn set(&mut self, pointer: &str, value: Value) -> &mut Bundle {
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        let target = self.config.pointer_mut(parent).expect("parent exists");
        target[key] = value;
        self
    }

    pub fn write(&self) {
        std::fs::write(self.dir.path().join("config.json"), self.config.to_string())
            .expect("write config");
    }

    /// The runtime's state root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `hafen-init runtime --root ROOT ARGS...` on this layout, without
    /// writing the config first.
    pub fn runtime_raw(&self, args: &[&str]) -> Command {
        let mut cmd = self.layout.runtime();
        // Set so tests can tell that this environment does not leak into
        // what the runtime runs (hooks get exactly the spec's env).
        cmd.env("HAFEN_TEST_RUNTIME_ENV", "leaked");
        cmd.arg("--root").arg(self.root()).args(args);
        cmd
    }

    /// Writes the config, then `hafen-init runtime --root ROOT ARGS...`.
    pub fn runtime(&self, args: &[&str]) -> Command {
        self.write();
        self.runtime_raw(args)
    }

    /// `run` and its output.
    pub fn run(&self, id: &str) -> Output {
        self.runtime(&["run", "--bundle", self.path_str(), id])
            .output()
            .expect("run")
    }

    /// `create` with the container's stdio in files: a created container
    /// keeps its stdio open, so piping it would never reach end of file.
    pub fn create(&self, id: &str, extra: &[&str]) -> (bool, String) {
        let err_path = self.dir.path().join(format!("create-{id}.err"));
        let err = std::fs::File::create(&err_path).expect("stderr file");
        let mut args = vec!["create", "--bundle", self.path_str()];
        args.extend_from_slice(extra);
        args.push(id);
        let status = self
            .runtime(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .expect("create");
        (
            status.success(),
            std::fs::read_to_string(&err_path).unwrap_or_default(),
        )
    }

    /// `hafen-init runtime CMD ID` (start, kill, delete, ...), its output.
    pub fn cmd(&self, args: &[&str]) -> Output {
        self.runtime(args).output().expect("runtime command")
    }

    /// Waits until the container has touched /tmp/ready (its traps are set:
    /// a container's PID 1 ignores signals it has no handler for).
    pub fn wait_ready(&self) {
        self.wait_file("rootfs/tmp/ready");
    }

    /// Waits until `rel` (relative to the bundle) exists.
    pub fn wait_file(&self, rel: &str) {
        let marker = self.dir.path().join(rel);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !marker.exists() {
            assert!(Instant::now() < deadline, "{rel} never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn state(&self, id: &str) -> Value {
        let out = self.runtime(&["state", id]).output().expect("state");
        assert!(
            out.status.success(),
            "state: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("state JSON")
    }

    pub fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.state(id);
            if state["status"] == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} never became {want}: {state}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts that nothing of the container `id` is left: no state, and no
    /// cgroup directory.
    pub fn assert_gone(&self, id: &str) {
        let out = self.cmd(&["state", id]);
        assert!(
            !out.status.success() && stderr(&out).contains("does not exist"),
            "state of {id} after it should be gone: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(!self.root().join(id).exists(), "state dir of {id} left");
        assert!(!cgroup_dir(id).exists(), "cgroup of {id} left");
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            if self.root().join(id).exists() {
                let _ = self
                    .runtime_raw(&["delete", "--force", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            // A runtime that failed before saving its state may still have
            // made the cgroup; the id is ours alone, so its dir is too.
            let _ = std::fs::remove_dir(cgroup_dir(id));
        }
        for tag in self.tags.borrow().iter() {
            kill_tagged(tag);
        }
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The namespace link of `kind` of this test process.
pub fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .expect("ns")
        .to_string_lossy()
        .into_owned()
}
