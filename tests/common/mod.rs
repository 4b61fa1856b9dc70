//! Harness for tests that build an image and boot it in QEMU: builds a
//! busybox OCI image once, writes manifests, runs `hafen build` and
//! `hafen run`, waits for console lines (never fixed sleeps), and on any
//! failure prints the whole guest console. A running VM is always killed
//! when its handle is dropped.

#![allow(dead_code)]

pub mod port;
pub mod store_env;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Generous: TCG on a busy two-core machine boots in seconds, not minutes.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

pub fn hafen() -> &'static str {
    env!("CARGO_BIN_EXE_hafen")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The static hafen-init the image gets: $HAFEN_INIT (scripts/test.sh sets
/// it), else the musl release build.
pub fn init_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HAFEN_INIT") {
        return PathBuf::from(path);
    }
    let path = repo().join("target/x86_64-unknown-linux-musl/release/hafen-init");
    assert!(
        path.is_file(),
        "no static hafen-init at {}: run scripts/build-init.sh (scripts/test.sh does) or set HAFEN_INIT",
        path.display()
    );
    path
}

/// The static hafen-check built next to hafen-init (scripts/build-init.sh builds both).
pub fn checker_binary() -> PathBuf {
    let path = init_binary().with_file_name("hafen-check");
    assert!(
        path.is_file(),
        "no static hafen-check at {}: run scripts/build-init.sh",
        path.display()
    );
    path
}

/// Puts busybox-static into `rootfs/bin` with a link for every applet.
#[allow(dead_code)] // Not every test binary makes a root filesystem.
pub fn busybox_applets(rootfs: &Path) {
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir rootfs/bin");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("copy /bin/busybox (install busybox-static: scripts/setup.sh)");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("symlink applet");
        }
    }
}

/// A busybox OCI image layout shared by every test in this binary (tag `1`).
pub fn busybox_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        const PREFIX: &str = "hafen-vmtest-busybox-";
        // Layouts of test binaries that are gone (nothing removes a static's
        // files at exit), and one of an earlier process with our pid.
        for entry in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX));
            if pid.is_some_and(|p| {
                p == std::process::id().to_string() || !Path::new("/proc").join(p).exists()
            }) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir rootfs");
        busybox_applets(&rootfs);
        std::fs::copy(checker_binary(), rootfs.join("bin/hafen-check")).expect("copy hafen-check");
        let layout = dir.join("layout");
        let out = Command::new(hafen())
            .args(["image", "import"])
            .arg(&rootfs)
            .arg("-o")
            .arg(&layout)
            .args(["--tag", "1", "--env", "PATH=/bin", "--cmd", "/bin/sh"])
            .output()
            .expect("run hafen image import");
        assert!(
            out.status.success(),
            "hafen image import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        layout
    })
}

/// A scratch directory for one test, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("hafen-vmtest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir scratch");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `manifest` (which refers to the busybox image as `oci:busybox:1`)
/// next to a link to the shared layout and builds it; returns the image dir.
/// The initramfs file of the image directory `dir`: the one its image.json
/// names (small images store it as it is, large ones LZ4-compressed).
pub fn initramfs_path(dir: &Path) -> PathBuf {
    let info = std::fs::read(dir.join("image.json")).expect("read image.json");
    let info: serde_json::Value = serde_json::from_slice(&info).expect("image.json is JSON");
    let name = info["initrd"]
        .as_str()
        .expect("image.json names its initrd");
    dir.join(name)
}

pub fn build_image(scratch: &Scratch, manifest: &str) -> PathBuf {
    let link = scratch.0.join("busybox");
    if !link.exists() {
        std::os::unix::fs::symlink(busybox_layout(), &link).expect("link layout");
    }
    let manifest_path = scratch.0.join("hafen.toml");
    std::fs::write(&manifest_path, manifest).expect("write manifest");
    let out = scratch.0.join("image");
    let result = Command::new(hafen())
        .arg("build")
        .arg(&manifest_path)
        .arg("-o")
        .arg(&out)
        .arg("--init")
        .arg(init_binary())
        .output()
        .expect("run hafen build");
    assert!(
        result.status.success(),
        "hafen build failed:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// A running `hafen run` with its console captured line by line.
pub struct Vm {
    child: Option<Child>,
    lines: Receiver<String>,
    console: Arc<Mutex<Vec<String>>>,
}

impl Vm {
    pub fn boot(image: &Path) -> Vm {
        Vm::boot_with(image, &[])
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child
            .as_ref()
            .map(|c| c.id() as libc::pid_t)
            .unwrap_or(0)
    }

    /// Everything the VM printed so far.
    pub fn console(&self) -> String {
        self.console.lock().expect("console lock").join("\n")
    }

    fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\n----- guest console -----\n{}\n-------------------------",
            self.console()
        );
    }

    /// Waits for a console line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        // Lines seen before this call count too.
        if let Some(line) = self
            .console
            .lock()
            .expect("console lock")
            .iter()
            .find(|l| l.contains(needle))
        {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("timed out waiting for {needle:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("hafen run ended before printing {needle:?}"))
                }
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill takes plain integers; the pid is our own child's.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill hafen run");
    }

    /// Waits for `hafen run` to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                // Let the reader threads drain the pipes.
                while self.lines.recv_timeout(Duration::from_secs(2)).is_ok() {}
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                self.fail("hafen run did not exit");
            }
            let _ = self.lines.recv_timeout(Duration::from_millis(100));
        }
    }

    /// Asserts the console has a line containing `needle`.
    pub fn assert_console(&self, needle: &str) {
        if !self.console().contains(needle) {
            self.fail(&format!("console lacks {needle:?}"));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // hafen run's QEMU dies with it (parent-death signal).
            let _ = child.kill();
            let _ = child.wait();
            if !std::thread::panicking() {
                eprintln!("----- guest console -----\n{}", self.console());
            }
        }
    }
}

impl Vm {
    /// Boots `image` with extra `hafen run` arguments (`--name N`, ...).
    pub fn boot_with(image: &Path, args: &[&str]) -> Vm {
        let mut command = Command::new(hafen());
        command.arg("run").args(args).arg(image);
        Vm::spawn(command)
    }

    /// Starts `command` (a `hafen run`, perhaps wrapped) with its output
    /// captured as the console.
    pub fn spawn(mut command: Command) -> Vm {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hafen run");
        let (tx, lines) = mpsc::channel();
        let console = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    console.lock().expect("console lock").push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        Vm {
            child: Some(child),
            lines,
            console,
        }
    }

    /// Runs `steps`; when one of them panics, prints the guest console
    /// first (a plain assert does not), then fails the same way.
    pub fn checked<T>(&self, steps: impl FnOnce() -> T) -> T {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(steps)) {
            Ok(value) => value,
            Err(panic) => {
                eprintln!(
                    "----- guest console -----\n{}\n-------------------------",
                    self.console()
                );
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// A TCP port free on 127.0.0.1 a moment ago (the kernel picked it).
#[allow(dead_code)]
pub fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A UDP port free on 127.0.0.1 a moment ago.
#[allow(dead_code)]
pub fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

/// The uid and gid of `nobody`, the ordinary user tests run `hafen` as.
#[allow(dead_code)]
pub const NOBODY: u32 = 65534;

/// `hafen` as nobody (through setpriv), with HOME and the XDG runtime and
/// data directories under `home`, which nobody must own; add the verb.
#[allow(dead_code)]
pub fn hafen_as_nobody(home: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(hafen())
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("XDG_DATA_HOME", home.join("data"));
    command
}

/// What a `hafen` command printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Asserts it exited 0; returns stdout.
    pub fn ok(&self, what: &str) -> String {
        assert_eq!(
            self.status.code(),
            Some(0),
            "{what}: stdout {:?} stderr {:?}",
            self.stdout(),
            self.stderr
        );
        self.stdout()
    }
}

/// Runs `hafen ARGS` with `stdin` (empty: /dev/null); kills it and fails
/// when it takes longer than `limit`.
pub fn hafen_cli(args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> Ran {
    let mut child = Command::new(hafen())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hafen");
    let feeder = stdin.map(|data| {
        let data = data.to_vec();
        let mut pipe = child.stdin.take().expect("stdin");
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&data);
        })
    });
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out_pipe, &mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err_pipe, &mut buf);
        buf
    });
    let status = wait_child(&mut child, limit)
        .unwrap_or_else(|| panic!("hafen {args:?} did not finish within {limit:?}"));
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Ran {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&err.join().expect("stderr reader")).into_owned(),
    }
}

/// Waits for `child` up to `limit`; kills and reaps it and returns `None`
/// when it is still running then.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Retries `attempt` until it returns `Some`, up to `limit`; panics with
/// `what` (and the last failure) otherwise.
pub fn eventually<T>(
    what: &str,
    limit: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(20);
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(why) if Instant::now() > deadline => {
                panic!("{what}: not within {limit:?}; last: {why}")
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// The VM's persistent directory, removed when dropped.
pub struct VmData(pub PathBuf);

impl VmData {
    pub fn new(name: &str) -> VmData {
        let dir = hafen_qemu::disk::data_home()
            .expect("data home")
            .join("vms")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        VmData(dir)
    }
}

impl Drop for VmData {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
