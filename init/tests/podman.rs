//! podman (Debian's 4.3, through conmon) drives hafen-init as its OCI
//! runtime: `podman info`, `run --rm` with output, stdin and exit codes,
//! errors podman must classify (127, 126), a detached container through
//! `ps`, `kill`, `stop` and `rm`, `exec` (output, exit code, cwd, env,
//! user, `-t`), and `run -t` through the console socket; and nothing is
//! left behind afterwards (containers, processes, runtime state, cgroups,
//! storage). Each test has its own podman, so one missing runtime feature
//! fails only the tests that need it.
//!
//! The runtime is a `hafen-runtime` symlink to hafen-init in a temp dir,
//! behind `tests/podman-runtime-log.sh`, which records every command line
//! podman and conmon run and keeps the runtime's `--log` files; a failing
//! step prints both with podman's output.
//!
//! `HAFEN_PODMAN_RUNTIME=/usr/sbin/runc cargo test -p hafen-init --test podman`
//! runs the same steps with another runtime, to check the test itself.
//!
//! Every podman command runs inside one private mount namespace per test
//! with a pure cgroup2 mount on /sys/fs/cgroup, /var/lib read-only
//! (podman 4.3 creates a blob cache in /var/lib/containers whatever its
//! storage root is, and keeps it in memory when it cannot) and a /tmp of
//! its own (conmon makes its console sockets in /tmp, and leaves them when
//! the runtime fails); the test's files are under /var/tmp (podman refuses
//! a runroot longer than 50 characters, which a checkout's target/tmp easily
//! is), with copies of the runtime and its logging wrapper.
//! podman's storage, state, configuration, events and the runtime's state
//! all live in the test's temp dir; containers.conf, registries.conf and
//! storage.conf are the test's own, so the host's configuration is never
//! read and no registry is ever asked; containers run with `--network none`.
//! Containers go under a cgroup of the test's own, removed at the end.
//! Every run needs `--ulimit nofile=1024:1024 --ulimit nproc=4096:4096`:
//! this host's root cannot raise rlimits above the current hard limits.

mod support;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

const IMAGE: &str = "localhost/hafen-busybox:test";
/// Longest any single podman command may take before the test gives up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long conmon and `podman container cleanup` get to finish after the
/// last container is gone.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The runtime under test: `HAFEN_PODMAN_RUNTIME`, or a `hafen-runtime`
/// symlink to hafen-init.
fn runtime_under_test() -> (String, PathBuf) {
    match std::env::var_os("HAFEN_PODMAN_RUNTIME") {
        Some(path) => {
            let path = PathBuf::from(path);
            let name = path
                .file_name()
                .expect("HAFEN_PODMAN_RUNTIME names a file")
                .to_string_lossy()
                .into_owned();
            (name, path)
        }
        None => (
            "hafen-runtime".to_owned(),
            PathBuf::from(env!("CARGO_BIN_EXE_hafen-init")),
        ),
    }
}

/// Where the tests' files go: /var/tmp, a short path on the host's disk.
/// Not Cargo's target/tmp: podman refuses a runroot longer than 50
/// characters, and the checkout may be under /tmp, which the namespace
/// replaces with a /tmp of its own (conmon makes its console sockets there).
fn files_base() -> PathBuf {
    PathBuf::from("/var/tmp")
}

/// What one podman command did.
struct Run {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `cmd` with `stdin` as its input, kills it after `timeout`.
fn run_with_timeout(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<(ExitStatus, String, String, Duration), String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(input);
    }
    let readers = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .map(|pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}"));
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    let elapsed = start.elapsed();
    let [out, err] = readers.map(|r| r.join().unwrap_or_default());
    Ok((status, out, err, elapsed))
}

static FIXTURES: AtomicUsize = AtomicUsize::new(0);

/// A private podman (storage, state, config) in a temp dir, with the
/// busybox image imported, run inside a mount namespace held by `holder`.
struct Podman {
    dir: tempfile::TempDir,
    holder: Child,
    runtime: PathBuf,
    /// The containers' cgroup parent, relative to the cgroup2 root.
    cgroup_parent: String,
}

impl Podman {
    fn new() -> Podman {
        assert!(
            Path::new("/usr/bin/podman").exists(),
            "podman is missing: run scripts/setup.sh"
        );
        let dir = tempfile::Builder::new()
            .prefix("hafen-podman-")
            .tempdir_in(files_base())
            .expect("tempdir");
        let root = dir.path();
        for d in ["rt/real", "tmp", "net", "hooks", "home", "rootfs/bin"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        // The runtime: the logging wrapper under the runtime's own name, in
        // front of the real one. Copies, not links: the checkout may be under
        // /tmp, which the namespace does not see.
        let (name, real) = runtime_under_test();
        let runtime = root.join("rt").join(&name);
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/podman-runtime-log.sh"),
            &runtime,
        )
        .expect("copy the wrapper");
        std::fs::copy(&real, root.join("rt/real").join(&name)).expect("copy the runtime");
        let cgroup_parent = format!(
            "/hafen-podman-test-{}-{}",
            std::process::id(),
            FIXTURES.fetch_add(1, Ordering::Relaxed)
        );
        let p = root.display();
        write(
            &root.join("containers.conf"),
            &format!(
                r#"[containers]
netns = "none"
# The pids controller is not on this host's cgroup2 (podman's default is 2048).
pids_limit = 0
[network]
network_backend = "cni"
network_config_dir = "{p}/net"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{p}/events.log"
hooks_dir = ["{p}/hooks"]
tmp_dir = "{p}/tmp"
image_copy_tmp_dir = "{p}/tmp"
volume_path = "{p}/volumes"
# podman passes --log and --log-format=json only to runtimes named here.
runtime_supports_json = ["runc", "crun", "hafen-runtime"]
"#
            ),
        );
        write(
            &root.join("registries.conf"),
            "unqualified-search-registries = []\n",
        );
        write(
            &root.join("storage.conf"),
            &format!("[storage]\ndriver = \"vfs\"\ngraphroot = \"{p}/root\"\nrunroot = \"{p}/runroot\"\n"),
        );

        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mount -t cgroup2 none /sys/fs/cgroup \
                 && mount --bind /var/lib /var/lib \
                 && mount -o remount,bind,ro /var/lib \
                 && mount -t tmpfs -o mode=1777 hafen-podman-tmp /tmp \
                 && echo ready && exec sleep 600",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unshare");
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().expect("stdout")).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let out = holder.wait_with_output().expect("wait holder");
            panic!(
                "the mount namespace holder failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let podman = Podman {
            dir,
            holder,
            runtime,
            cgroup_parent,
        };
        podman.import_busybox();
        podman
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The cgroup2 root as the holder's namespace sees it.
    fn cgroup_root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root/sys/fs/cgroup", self.holder.id()))
    }

    fn import_busybox(&self) {
        support::busybox_rootfs(&self.path("rootfs"));
        let tar = self.path("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(self.path("rootfs"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success(), "tar of the busybox rootfs failed");
        let tar = tar.to_string_lossy().into_owned();
        let run = self.podman(&["import", &tar, IMAGE]);
        self.expect("import the busybox image", &run, run.status.success());
    }

    /// A podman command line in the holder's namespace with our state and config.
    fn command(&self, args: &[&str]) -> Command {
        let p = |rel: &str| self.path(rel).into_os_string();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .args(["--", "podman", "--root"])
            .arg(p("root"))
            .arg("--runroot")
            .arg(p("runroot"))
            .arg("--tmpdir")
            .arg(p("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
            ])
            .arg("--network-config-dir")
            .arg(p("net"))
            .arg("--runtime")
            .arg(&self.runtime)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH")
                    .unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin:/sbin:/bin")),
            )
            .env("HOME", p("home"))
            .env("TMPDIR", p("tmp"))
            .env("CONTAINERS_CONF", p("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", p("registries.conf"))
            .env("CONTAINERS_STORAGE_CONF", p("storage.conf"));
        cmd
    }

    fn podman(&self, args: &[&str]) -> Run {
        self.podman_with_input(args, None)
    }

    fn podman_with_input(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        match run_with_timeout(self.command(&refs), stdin, COMMAND_TIMEOUT) {
            Ok((status, stdout, stderr, elapsed)) => Run {
                args,
                status,
                stdout,
                stderr,
                elapsed,
            },
            Err(e) => panic!("podman {}: {e}\n{}", args.join(" "), self.runtime_report()),
        }
    }

    /// `podman run` with the options every container here needs, then `args`.
    fn run(&self, args: &[&str]) -> Run {
        self.run_with_input(args, None)
    }

    fn run_with_input(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut all = vec![
            "run",
            "--network",
            "none",
            "--cgroup-parent",
            &self.cgroup_parent,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
        ];
        all.extend_from_slice(args);
        self.podman_with_input(&all, stdin)
    }

    /// Fails the test at `step` unless `ok`, with everything podman and the runtime said.
    #[track_caller]
    fn expect(&self, step: &str, run: &Run, ok: bool) {
        if !ok {
            panic!(
                "step failed: {step}\n$ podman {}\nexit: {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}\n{}",
                run.args.join(" "),
                run.status,
                run.elapsed,
                run.stdout,
                run.stderr,
                self.runtime_report()
            );
        }
    }

    /// Every runtime command line podman and conmon ran, and the runtime's logs.
    fn runtime_report(&self) -> String {
        let mut report = format!(
            "--- runtime calls ({})\n{}",
            self.runtime.display(),
            std::fs::read_to_string(self.path("rt/calls.log")).unwrap_or_default()
        );
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.path("rt/logs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if !text.is_empty() {
                report += &format!(
                    "--- runtime log {}\n{text}",
                    log.file_name().unwrap_or_default().to_string_lossy()
                );
            }
        }
        report
    }

    /// PIDs other than the holder in the holder's mount namespace (conmon,
    /// `podman container cleanup`) and in the containers' cgroups.
    fn leftover_pids(&self) -> Vec<i32> {
        let holder = self.holder.id() as i32;
        let ns = std::fs::read_link(format!("/proc/{holder}/ns/mnt")).ok();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if pid != holder
                && ns.is_some()
                && std::fs::read_link(entry.path().join("ns/mnt")).ok() == ns
            {
                pids.push(pid);
            }
        }
        for cgroup in cgroup_dirs(
            &self
                .cgroup_root()
                .join(self.cgroup_parent.trim_start_matches('/')),
        ) {
            let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.parse::<i32>().ok()));
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Waits for conmon and podman's cleanup to finish, then checks that
    /// no container, process, runtime state, cgroup or storage is left.
    fn assert_nothing_left(&self) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut pids = self.leftover_pids();
        while !pids.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            pids = self.leftover_pids();
        }
        let described: Vec<String> = pids
            .iter()
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!(
                    "{pid}: {}",
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                )
            })
            .collect();
        assert!(
            pids.is_empty(),
            "processes left behind:\n{}\n{}",
            described.join("\n"),
            self.runtime_report()
        );

        let ps = self.podman(&["ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Status}}"]);
        self.expect(
            "no containers left (podman ps -a)",
            &ps,
            ps.status.success() && ps.stdout.trim().is_empty(),
        );

        // No containers.json at all when no container was ever created.
        let containers = std::fs::read_to_string(self.path("root/vfs-containers/containers.json"))
            .unwrap_or_else(|_| "[]".to_owned());
        let containers: Value = serde_json::from_str(&containers).unwrap_or(Value::Null);
        assert_eq!(
            containers,
            Value::Array(Vec::new()),
            "container storage left behind"
        );
        let runroot = entries(&self.path("runroot/vfs-containers"));
        assert!(
            runroot.is_empty(),
            "container run state left behind: {runroot:?}"
        );
        let state = entries(&self.path("rt/state"));
        assert!(
            state.is_empty(),
            "runtime state left behind: {state:?}\n{}",
            self.runtime_report()
        );

        // podman puts conmon in PARENT/conmon; the runtime must remove each container's cgroup.
        let parent = self
            .cgroup_root()
            .join(self.cgroup_parent.trim_start_matches('/'));
        let cgroups: Vec<String> = entries(&parent)
            .into_iter()
            .filter(|name| parent.join(name).is_dir() && name != "conmon")
            .collect();
        assert!(
            cgroups.is_empty(),
            "container cgroups left under {}: {cgroups:?}\n{}",
            self.cgroup_parent,
            self.runtime_report()
        );
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Best effort after a failed step: remove every container, then end
        // whatever podman or the runtime left running, by PID.
        let mut rm = self.command(&["rm", "--all", "--force", "--time", "0"]);
        rm.stdout(Stdio::null()).stderr(Stdio::null());
        let _ = run_with_timeout(rm, None, COMMAND_TIMEOUT);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let pids = self.leftover_pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            // Only this test's processes: read from its own namespace and cgroups just now.
            for pid in pids.into_iter().filter_map(Pid::from_raw) {
                let _ = kill_process(pid, Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let parent = self
            .cgroup_root()
            .join(self.cgroup_parent.trim_start_matches('/'));
        let mut dirs = cgroup_dirs(&parent);
        dirs.reverse();
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// `dir` and every directory below it, parents first.
fn cgroup_dirs(dir: &Path) -> Vec<PathBuf> {
    if !dir.is_dir() {
        return Vec::new();
    }
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let children: Vec<PathBuf> = std::fs::read_dir(&out[i])
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        out.extend(children);
        i += 1;
    }
    out
}

/// The names in `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn podman_info_reports_the_runtime() {
    let podman = Podman::new();
    let info = podman.podman(&["info", "--format", "json"]);
    let parsed: Value = serde_json::from_str(&info.stdout).unwrap_or(Value::Null);
    let runtime = &parsed["host"]["ociRuntime"];
    podman.expect(
        "podman info describes our runtime (it calls `RUNTIME --version`)",
        &info,
        info.status.success()
            && runtime["path"].as_str() == Some(podman.runtime.to_string_lossy().as_ref())
            && runtime["version"]
                .as_str()
                .is_some_and(|v| !v.trim().is_empty())
            && !info.stderr.contains("level=error"),
    );
    podman.assert_nothing_left();
}

#[test]
fn podman_run_prints_output_and_reads_stdin() {
    let podman = Podman::new();
    let echo = podman.run(&["--rm", IMAGE, "echo", "hi"]);
    podman.expect(
        "run --rm echo hi prints hi",
        &echo,
        echo.status.success() && echo.stdout == "hi\n",
    );

    let cat = podman.run_with_input(&["--rm", "-i", IMAGE, "cat"], Some(b"piped in\n"));
    podman.expect(
        "run --rm -i cat copies stdin",
        &cat,
        cat.status.success() && cat.stdout == "piped in\n",
    );

    let err = podman.run(&["--rm", IMAGE, "sh", "-c", "echo to-stderr >&2"]);
    podman.expect(
        "run --rm passes the container's stderr",
        &err,
        err.status.success() && err.stdout.is_empty() && err.stderr.contains("to-stderr"),
    );
    podman.assert_nothing_left();
}

#[test]
fn podman_run_returns_the_container_exit_code() {
    let podman = Podman::new();
    let exit = podman.run(&["--rm", IMAGE, "sh", "-c", "exit 3"]);
    podman.expect(
        "run --rm sh -c 'exit 3' exits 3",
        &exit,
        exit.code() == Some(3),
    );

    let run = podman.run(&["-d", "--name", "victim", IMAGE, "sleep", "600"]);
    podman.expect("run -d sleep", &run, run.status.success());
    let kill = podman.podman(&["kill", "victim"]);
    podman.expect(
        "kill (SIGKILL) a running container",
        &kill,
        kill.status.success(),
    );
    let wait = podman.podman(&["wait", "victim"]);
    podman.expect(
        "a container killed by SIGKILL exits 137",
        &wait,
        wait.status.success() && wait.stdout.trim() == "137",
    );
    let rm = podman.podman(&["rm", "victim"]);
    podman.expect("rm the killed container", &rm, rm.status.success());
    podman.assert_nothing_left();
}

/// podman turns a runtime's `create` error into 127 or 126 by its words
/// ("no such file or directory", "executable file not found in",
/// "permission denied"); an error from `start` is always 126.
#[test]
fn podman_run_reports_a_command_that_cannot_run() {
    let podman = Podman::new();
    let missing = podman.run(&["--rm", IMAGE, "/nonexistent"]);
    podman.expect(
        "a missing command fails create, exits 127 and names the command",
        &missing,
        missing.code() == Some(127)
            && missing.stderr.contains("/nonexistent")
            && missing
                .stderr
                .contains("OCI runtime attempted to invoke a command that was not found"),
    );

    let directory = podman.run(&["--rm", IMAGE, "/etc"]);
    podman.expect(
        "a command that cannot be executed fails create and exits 126",
        &directory,
        directory.code() == Some(126) && directory.stderr.contains("OCI permission denied"),
    );
    podman.assert_nothing_left();
}

/// Starts `sleeper`, a container whose PID 1 runs `SLEEPER` (it exits 7 on
/// SIGTERM: PID 1 ignores SIGTERM unless it handles it), and returns its id.
fn start_sleeper(podman: &Podman) -> String {
    let run = podman.run(&["-d", "--name", "sleeper", IMAGE, "sh", "-c", SLEEPER]);
    podman.expect(
        "run -d prints the container id",
        &run,
        run.status.success() && run.stdout.trim().len() == 64,
    );
    run.stdout.trim().to_owned()
}

const SLEEPER: &str = "trap 'exit 7' TERM; sleep 600 & wait";

#[test]
fn podman_detached_container_is_listed_stopped_and_removed() {
    let podman = Podman::new();
    let id = start_sleeper(&podman);

    let ps = podman.podman(&["ps", "--format", "json"]);
    let listed: Value = serde_json::from_str(&ps.stdout).unwrap_or(Value::Null);
    let entry = &listed[0];
    let pid = entry["Pid"].as_i64().unwrap_or(0);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    podman.expect(
        "ps lists the container as running, with its init's pid",
        &ps,
        ps.status.success()
            && listed.as_array().map(Vec::len) == Some(1)
            && entry["Id"].as_str() == Some(id.as_str())
            && entry["State"] == "running"
            && pid > 0
            && String::from_utf8_lossy(&cmdline).contains(SLEEPER),
    );

    let stop = podman.podman(&["stop", "--time", "20", "sleeper"]);
    podman.expect(
        "stop ends the container with SIGTERM well within its timeout",
        &stop,
        stop.status.success()
            && stop.elapsed < Duration::from_secs(10)
            && !stop.stderr.contains("SIGKILL"),
    );
    let inspect = podman.podman(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        "sleeper",
    ]);
    podman.expect(
        "the stopped container exited 7 from its TERM trap",
        &inspect,
        inspect.status.success() && inspect.stdout.trim() == "exited 7",
    );

    let rm = podman.podman(&["rm", "sleeper"]);
    podman.expect("rm removes the stopped container", &rm, rm.status.success());
    podman.assert_nothing_left();
}

#[test]
fn podman_exec_runs_in_a_running_container() {
    let podman = Podman::new();
    let id = start_sleeper(&podman);

    let exec = podman.podman(&[
        "exec",
        "sleeper",
        "sh",
        "-c",
        "hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; echo to-stderr >&2; exit 5",
    ]);
    let lines: Vec<&str> = exec.stdout.lines().collect();
    podman.expect(
        "exec runs in the container's namespaces, with its output and exit code",
        &exec,
        exec.code() == Some(5)
            && lines.len() == 2
            && lines[0] == &id[..12]
            && lines[1].contains(SLEEPER)
            && exec.stderr.contains("to-stderr"),
    );

    let as_user = podman.podman(&[
        "exec",
        "--workdir",
        "/tmp",
        "--env",
        "GREETING=hello",
        "--user",
        "1000:1001",
        "sleeper",
        "sh",
        "-c",
        "pwd; echo $GREETING; id -u; id -g",
    ]);
    podman.expect(
        "exec honours the process's cwd, env and user",
        &as_user,
        as_user.status.success() && as_user.stdout == "/tmp\nhello\n1000\n1001\n",
    );

    let exec_tty = podman.podman(&["exec", "-t", "sleeper", "tty"]);
    podman.expect(
        "exec -t gets a terminal through the console socket",
        &exec_tty,
        exec_tty.status.success() && exec_tty.stdout.trim_end().starts_with("/dev/pts/"),
    );

    let rm = podman.podman(&["rm", "--force", "--time", "0", "sleeper"]);
    podman.expect(
        "rm --force removes the running container",
        &rm,
        rm.status.success(),
    );
    podman.assert_nothing_left();
}

#[test]
fn podman_run_t_gets_a_terminal_through_the_console_socket() {
    let podman = Podman::new();
    let tty = podman.run(&["--rm", "-t", IMAGE, "tty"]);
    podman.expect(
        "run --rm -t tty prints a /dev/pts path",
        &tty,
        tty.status.success() && tty.stdout.trim_end().starts_with("/dev/pts/"),
    );
    let size = podman.run(&[
        "--rm",
        "-t",
        IMAGE,
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo both",
    ]);
    podman.expect(
        "run -t gives the terminal as stdin and stdout",
        &size,
        size.status.success() && size.stdout.trim_end() == "both",
    );
    podman.assert_nothing_left();
}
