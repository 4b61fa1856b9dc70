//! VM tests for `hafen_qemu::run`: each boots a tiny busybox initramfs made
//! here under TCG with the kernel kernel-config/build.sh builds.
//!
//! `run` must run in a process of its own: QEMU writes the console to that
//! process's stdout, which the test reads line by line, and the signal tests
//! signal that process as a user would signal `hafen run`. So this file has
//! its own `main` (no libtest threads in the child) and re-executes itself
//! with `HAFEN_QEMU_TEST_IMAGE` set to run one VM, exiting as the `hafen`
//! CLI does: 0 after a clean power-off, 1 for other outcomes, 2 on errors.
//!
//! Run with `cargo test -p hafen-qemu --test vm [-- FILTER]`. Tests wait for
//! console lines (never fixed sleeps) within a generous time limit, always
//! kill their VM, and print the console and stderr when they fail.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hafen_qemu::{Accel, RunOptions};

/// Set in the re-executed child: the image directory to run.
const CHILD_ENV: &str = "HAFEN_QEMU_TEST_IMAGE";
/// Set in the re-executed child: `auto`, `kvm` or (the default) `tcg`.
const ACCEL_ENV: &str = "HAFEN_QEMU_TEST_ACCEL";
/// Every test ends within this, on a loaded 2-core machine under TCG.
const TIME_LIMIT: Duration = Duration::from_secs(180);

fn main() {
    if let Some(image) = std::env::var_os(CHILD_ENV) {
        child(PathBuf::from(image));
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    macro_rules! tests {
        ($($name:ident),* $(,)?) => { [$((stringify!($name), $name as fn())),*] };
    }
    let tests = tests![
        boots_and_reports_a_clean_power_off,
        a_guest_reboot_ends_the_run_as_a_failure,
        sigterm_presses_the_power_button,
        a_second_signal_forces_the_vm_off,
        sigkill_to_hafen_run_takes_qemu_with_it,
        auto_boots_on_whatever_this_host_supports,
        kvm_boots_or_says_why_not,
        a_published_port_reaches_a_guest_address_that_cannot_reach_out,
    ];
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        eprintln!("test {name} ...");
        let started = Instant::now();
        match std::panic::catch_unwind(test) {
            Ok(()) => eprintln!(
                "test {name} ... ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(_) => {
                eprintln!("test {name} ... FAILED");
                failed.push(name);
            }
        }
    }
    eprintln!("{ran} VM tests, {} failed {failed:?}", failed.len());
    std::process::exit(if failed.is_empty() { 0 } else { 101 });
}

/// The re-executed child: one `run`, exit status as the CLI's.
fn child(image: PathBuf) -> ! {
    let result = hafen_qemu::run(&RunOptions {
        image,
        memory_mib: None,
        cpus: 1,
        accel: match std::env::var(ACCEL_ENV).as_deref() {
            Ok("auto") => Accel::Auto,
            Ok("kvm") => Accel::Kvm,
            _ => Accel::Tcg,
        },
        verbose: false,
        append: Vec::new(),
        name: None,
        control: true,
        data_size: None,
        host_volumes: Vec::new(),
        stop_with_caller: false,
    });
    match result {
        Ok(outcome) => {
            eprintln!("hafen: {outcome}");
            std::process::exit(outcome.exit_code());
        }
        Err(err) => {
            eprintln!("hafen: error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            std::process::exit(2);
        }
    }
}

// ---- the tests ---------------------------------------------------------

fn boots_and_reports_a_clean_power_off() {
    let image = Image::new(
        "boot",
        "/bin/busybox echo HAFEN-TEST-BOOTED\n\
         /bin/busybox poweroff -f\n",
    );
    let mut vm = Vm::start(&image);
    vm.console_line("HAFEN-TEST-BOOTED");
    let status = vm.exit();
    vm.check(
        status.code() == Some(0),
        "exit status 0 after a clean power-off",
    );
    vm.stderr_line("guest powered off");
    vm.check(
        !vm.state_dir().exists(),
        "the state directory is removed when the run ends",
    );
}

fn a_guest_reboot_ends_the_run_as_a_failure() {
    let image = Image::new(
        "reboot",
        "/bin/busybox echo HAFEN-TEST-BOOTED\n\
         /bin/busybox reboot -f\n",
    );
    let mut vm = Vm::start(&image);
    vm.console_line("HAFEN-TEST-BOOTED");
    let status = vm.exit();
    vm.check(status.code() == Some(1), "exit status 1 after a reboot");
    vm.stderr_line("guest rebooted");
}

/// The guest waits for the ACPI power button on its evdev device (what
/// hafen-init does) and powers off when it is pressed. The device is opened
/// before the ready line, so the press cannot come before anyone listens.
fn sigterm_presses_the_power_button() {
    let image = Image::new(
        "button",
        "/bin/busybox mount -t devtmpfs dev /dev\n\
         exec 3</dev/input/event0\n\
         /bin/busybox echo HAFEN-TEST-READY\n\
         /bin/busybox dd bs=24 count=1 of=/dev/null <&3 2>/dev/null\n\
         /bin/busybox echo HAFEN-TEST-BUTTON\n\
         /bin/busybox poweroff -f\n",
    );
    let mut vm = Vm::start(&image);
    vm.console_line("HAFEN-TEST-READY");
    let qemu = vm.qemu_pid();
    vm.signal(libc::SIGTERM);
    vm.stderr_line("Ctrl-C again forces it off");
    vm.console_line("HAFEN-TEST-BUTTON");
    let status = vm.exit();
    vm.check(
        status.code() == Some(0),
        "exit status 0 after the guest powered off",
    );
    vm.stderr_line("guest powered off");
    vm.check(!alive(qemu), "QEMU is gone");
}

/// A guest that ignores the power button: the second signal forces QEMU
/// off, `hafen run` exits 1 and no QEMU is left.
fn a_second_signal_forces_the_vm_off() {
    let image = Image::new(
        "stubborn",
        "/bin/busybox echo HAFEN-TEST-READY\n\
         while :; do /bin/busybox sleep 1000; done\n",
    );
    let mut vm = Vm::start(&image);
    vm.console_line("HAFEN-TEST-READY");
    let qemu = vm.qemu_pid();
    // What a terminal's Ctrl-C sends, then what a service manager sends.
    vm.signal(libc::SIGINT);
    vm.stderr_line("Ctrl-C again forces it off");
    vm.signal(libc::SIGTERM);
    vm.stderr_line("forcing the VM off");
    let status = vm.exit();
    vm.check(status.code() == Some(1), "exit status 1 when forced");
    vm.stderr_line("VM forced off");
    vm.check(!alive(qemu), "QEMU is gone");
    vm.check(!vm.state_dir().exists(), "the state directory is removed");
}

/// `hafen run` killed outright cannot clean up; the parent-death signal
/// must still take its QEMU down.
fn sigkill_to_hafen_run_takes_qemu_with_it() {
    let image = Image::new(
        "orphan",
        "/bin/busybox echo HAFEN-TEST-READY\n\
         while :; do /bin/busybox sleep 1000; done\n",
    );
    let mut vm = Vm::start(&image);
    vm.console_line("HAFEN-TEST-READY");
    let qemu = vm.qemu_pid();
    vm.signal(libc::SIGKILL);
    let status = vm.exit();
    vm.check(status.code().is_none(), "hafen run was killed");
    // QEMU is not our child; a pidfd still says when it exits.
    wait_for_exit(qemu, Duration::from_secs(30));
    vm.check(!alive(qemu), "QEMU died with hafen run");
}

/// KVM or not, `Accel::Auto` boots: with KVM when the probe works, TCG
/// otherwise. On a nested host where KVM is broken this is the regression
/// test for a probe that hangs or misjudges.
fn auto_boots_on_whatever_this_host_supports() {
    let image = Image::new(
        "auto",
        "/bin/busybox echo HAFEN-TEST-BOOTED\n\
         /bin/busybox poweroff -f\n",
    );
    let mut vm = Vm::start_with(&image, "auto");
    vm.console_line("HAFEN-TEST-BOOTED");
    let status = vm.exit();
    vm.check(
        status.code() == Some(0),
        "exit status 0 after a clean power-off",
    );
    let kvm = vm.stderr.iter().any(|l| l.contains("(kvm)"));
    let tcg = vm
        .stderr
        .iter()
        .any(|l| l.contains("KVM does not work here"));
    vm.check(
        kvm != tcg,
        "either KVM, or TCG with the reason KVM was not used",
    );
    eprintln!("  accelerator here: {}", if kvm { "kvm" } else { "tcg" });
}

/// `Accel::Kvm` boots with KVM or fails at once with an error saying so
/// (exit 2), never falls back and never hangs.
fn kvm_boots_or_says_why_not() {
    let image = Image::new(
        "kvm",
        "/bin/busybox echo HAFEN-TEST-BOOTED\n\
         /bin/busybox poweroff -f\n",
    );
    let mut vm = Vm::start_with(&image, "kvm");
    let status = vm.exit();
    match status.code() {
        Some(0) => {
            vm.console_line("HAFEN-TEST-BOOTED");
            vm.stderr_line("(kvm)");
        }
        Some(2) => {
            vm.stderr_line("KVM does not work on this machine");
            vm.stderr_line("caused by:");
            vm.check(
                !vm.console.iter().any(|l| l.contains("HAFEN-TEST-BOOTED")),
                "no fallback to TCG",
            );
        }
        _ => vm.fail("exit status 0 (KVM works) or 2 (it does not)"),
    }
}

/// The NIC `hafen run` gives every VM: a forward published to a guest
/// address other than the VM's own (a container's, in Hafen) reaches it
/// from the host, while `restrict=on` keeps the guest from opening
/// connections of its own, even to the host behind the gateway. The guest
/// here configures the NIC with busybox, as PID 1 does with netlink.
fn a_published_port_reaches_a_guest_address_that_cannot_reach_out() {
    let host_service = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    host_service.set_nonblocking(true).expect("nonblocking");
    let service_port = host_service.local_addr().expect("addr").port();
    let published = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let network = hafen_proto::image::ImageNetwork {
        ports: vec![hafen_proto::net::PublishedPort {
            container: "web".into(),
            address: "10.0.2.40".parse().expect("ip"),
            port: format!("{published}:80").parse().expect("spec"),
        }],
        ..Default::default()
    };
    let image = Image::with_network(
        "net",
        &format!(
            "B=/bin/busybox\n\
             $B mount -t devtmpfs dev /dev\n\
             $B ip link set lo up\n\
             $B ip link set eth0 up\n\
             $B ip addr add 10.0.2.15/24 dev eth0\n\
             $B ip addr add 10.0.2.40/24 dev eth0\n\
             $B ip route add default via 10.0.2.2\n\
             $B mkdir /www\n\
             echo HAFEN-TEST-SERVED > /www/index.html\n\
             $B httpd -p 10.0.2.40:80 -h /www\n\
             if $B wget -q -T 5 -O - http://10.0.2.2:{service_port}/; then\n\
               echo HAFEN-TEST-REACHED-THE-HOST\n\
             else\n\
               echo HAFEN-TEST-HOST-UNREACHABLE\n\
             fi\n\
             echo HAFEN-TEST-READY\n\
             while :; do $B sleep 1000; done\n"
        ),
        network,
    );
    let mut vm = Vm::start(&image);
    vm.console_line("HAFEN-TEST-READY");
    vm.check(
        vm.console
            .iter()
            .any(|l| l.contains("HAFEN-TEST-HOST-UNREACHABLE")),
        "restrict=on: the guest cannot open a connection to the host",
    );
    vm.check(
        host_service.accept().is_err(),
        "nothing reached the host's service",
    );
    let mut page = String::new();
    let fetched = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", published))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        stream.read_to_string(&mut page)?;
        Ok(())
    })();
    vm.check(
        fetched.is_ok() && page.contains("HAFEN-TEST-SERVED"),
        &format!("the published port serves the guest's page: {fetched:?} {page:?}"),
    );
}

// ---- the image ---------------------------------------------------------

/// The kernel kernel-config/build.sh builds (a PVH vmlinux for microvm).
fn kernel() -> PathBuf {
    let cache = std::env::var_os("HAFEN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hafen")))
        .expect("HOME or HAFEN_CACHE is set");
    let vmlinux = cache.join("kernel/default/vmlinux");
    assert!(
        vmlinux.is_file(),
        "{} is missing: build the kernel with kernel-config/build.sh first",
        vmlinux.display()
    );
    vmlinux
}

fn busybox() -> Vec<u8> {
    let path = Path::new("/bin/busybox");
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}; install busybox-static", path.display()));
    // A dynamic busybox would need a libc the initramfs does not have.
    assert!(
        !bytes.windows(16).any(|w| w == b"/lib64/ld-linux-"),
        "{} is dynamically linked; install busybox-static",
        path.display()
    );
    bytes
}

/// An image directory holding the kernel (a symlink), a newc initramfs
/// whose /init is `script` run by busybox sh, and image.json.
struct Image {
    dir: tempfile::TempDir,
    name: String,
}

impl Image {
    fn new(name: &str, script: &str) -> Image {
        Image::with_network(name, script, Default::default())
    }

    /// An image whose image.json describes `network` (ports to forward).
    fn with_network(name: &str, script: &str, network: hafen_proto::image::ImageNetwork) -> Image {
        let kernel = kernel();
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(&kernel, dir.path().join("vmlinux")).expect("symlink");
        let init = format!("#!/bin/busybox sh\n{script}");
        let mut cpio = Newc::default();
        for d in ["bin", "dev", "proc", "sys"] {
            cpio.entry(d, 0o040755, 0, &[]);
        }
        // The kernel opens /dev/console for init's stdio before init runs.
        cpio.entry("dev/console", 0o020600, libc::makedev(5, 1), &[]);
        cpio.entry("bin/busybox", 0o100755, 0, &busybox());
        cpio.entry("init", 0o100755, 0, init.as_bytes());
        std::fs::write(dir.path().join("initramfs.cpio"), cpio.finish()).expect("write cpio");
        let info = hafen_proto::image::ImageInfo {
            name: format!("qemu-test-{name}"),
            kernel: "vmlinux".into(),
            bzimage: None,
            initrd: "initramfs.cpio".into(),
            cmdline: Vec::new(),
            memory_mib: 128,
            volumes: Vec::new(),
            data_size: None,
            network,
        };
        std::fs::write(
            dir.path().join("image.json"),
            serde_json::to_vec_pretty(&info).expect("json"),
        )
        .expect("write image.json");
        Image {
            dir,
            name: info.name,
        }
    }

    /// The child's XDG_RUNTIME_DIR.
    fn runtime(&self) -> PathBuf {
        self.dir.path().join("run")
    }
}

/// A minimal writer of the kernel's initramfs format (cpio "newc").
#[derive(Default)]
struct Newc {
    out: Vec<u8>,
    ino: u32,
}

impl Newc {
    fn entry(&mut self, name: &str, mode: u32, rdev: libc::dev_t, data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            u32::try_from(data.len()).expect("file under 4 GiB"),
            0, // dev major
            0, // dev minor
            libc::major(rdev),
            libc::minor(rdev),
            u32::try_from(name.len() + 1).expect("short name"),
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, &[]);
        self.out
    }
}

// ---- the VM under test -------------------------------------------------

enum Line {
    Console(String),
    Stderr(String),
    ConsoleClosed,
    StderrClosed,
}

/// This test binary re-executed to run one image, its console and stderr
/// read line by line. Dropping it kills it (and so its QEMU).
struct Vm<'a> {
    image: &'a Image,
    child: Child,
    lines: Receiver<Line>,
    console: Vec<String>,
    stderr: Vec<String>,
    open_streams: u32,
    deadline: Instant,
}

impl<'a> Vm<'a> {
    fn start(image: &'a Image) -> Vm<'a> {
        Vm::start_with(image, "tcg")
    }

    fn start_with(image: &'a Image, accel: &str) -> Vm<'a> {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .env(CHILD_ENV, image.dir.path())
            // Its own runtime directory: no shared KVM-probe cache or
            // state directories with real runs or other tests.
            .env("XDG_RUNTIME_DIR", image.runtime())
            .env(ACCEL_ENV, accel)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the child");
        let (tx, lines) = mpsc::channel();
        let forward = |stream: Box<dyn Read + Send>, wrap: fn(String) -> Line, end: Line| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n') {
                    let Ok(line) = line else { break };
                    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                    if tx.send(wrap(text)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(end);
            });
        };
        forward(
            Box::new(child.stdout.take().expect("stdout")),
            Line::Console,
            Line::ConsoleClosed,
        );
        forward(
            Box::new(child.stderr.take().expect("stderr")),
            Line::Stderr,
            Line::StderrClosed,
        );
        Vm {
            image,
            child,
            lines,
            console: Vec::new(),
            stderr: Vec::new(),
            open_streams: 2,
            deadline: Instant::now() + TIME_LIMIT,
        }
    }

    /// Takes the next line; false when both streams are closed.
    fn next(&mut self) -> bool {
        if self.open_streams == 0 {
            return false;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(Line::Console(l)) => self.console.push(l),
            Ok(Line::Stderr(l)) => self.stderr.push(l),
            Ok(Line::ConsoleClosed | Line::StderrClosed) => self.open_streams -= 1,
            Err(RecvTimeoutError::Timeout) => self.fail("timed out"),
            Err(RecvTimeoutError::Disconnected) => self.open_streams = 0,
        }
        true
    }

    fn console_line(&mut self, needle: &str) {
        while !self.console.iter().any(|l| l.contains(needle)) {
            if !self.next() {
                self.fail(&format!(
                    "the run ended before the console printed {needle:?}"
                ));
            }
        }
    }

    fn stderr_line(&mut self, needle: &str) {
        while !self.stderr.iter().any(|l| l.contains(needle)) {
            if !self.next() {
                self.fail(&format!("the run ended before stderr said {needle:?}"));
            }
        }
    }

    /// Waits for the run to end: both streams closed (QEMU holds the
    /// console too, so it is gone as well), then the exit status.
    fn exit(&mut self) -> ExitStatus {
        while self.next() {}
        self.child.wait().expect("wait for the child")
    }

    fn signal(&mut self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill with our own unreaped child's pid.
        if unsafe { libc::kill(pid, sig) } != 0 {
            self.fail(&format!("kill({pid}, {sig}) failed"));
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.image.runtime().join("hafen/vms").join(format!(
            "{}-{}",
            self.image.name,
            self.child.id()
        ))
    }

    /// QEMU's pid from the state directory (written before QEMU can print).
    fn qemu_pid(&mut self) -> u32 {
        let file = self.state_dir().join("qemu.pid");
        match std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            Some(pid) => pid,
            None => self.fail(&format!("no pid in {}", file.display())),
        }
    }

    fn check(&mut self, ok: bool, what: &str) {
        if !ok {
            self.fail(what);
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        // Collect what is still in flight, briefly.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            match line {
                Line::Console(l) => self.console.push(l),
                Line::Stderr(l) => self.stderr.push(l),
                _ => {}
            }
        }
        eprintln!("---- console ----\n{}", self.console.join("\n"));
        eprintln!("---- stderr ----\n{}", self.stderr.join("\n"));
        panic!("{what}");
    }
}

impl Drop for Vm<'_> {
    fn drop(&mut self) {
        // SIGKILL: its QEMU dies with it (parent-death signal).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `pid` (any process) exits or `limit` passes.
fn wait_for_exit(pid: u32, limit: Duration) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor
    // or -1 (ESRCH when the process is already gone).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(fd) = libc::c_int::try_from(fd) else {
        return;
    };
    if fd < 0 {
        return;
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: pfd is one valid pollfd; fd is ours and closed right after.
    unsafe {
        libc::poll(&mut pfd, 1, ms);
        libc::close(fd);
    }
}

/// Whether `pid` is a live process (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}
