//! The build helper (`hafen-build`) as a builder VM's PID 1 starts it, run
//! here in a pure cgroup2 mount namespace (as the guest has) over a
//! busybox layer: RUN steps write layers, whiteouts and all, layers go out
//! and come back in, a step that cannot start leaves no layer, and killing
//! a step's cgroup (what PID 1 does on cancel) leaves nothing running.

mod support;

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use hafen_init::build::{self, Storage};
use hafen_init::volume::archive;
use hafen_proto::build::{BuildOp, RunStep, StepFile, SETUP_FAILED};
use support::{busybox_rootfs, cgroup_v2_root, hafen_init, stderr, stdout, Layout};

/// How long a test waits for a step.
const PATIENCE: Duration = Duration::from_secs(20);

/// A builder's storage in a temp dir with the busybox root as layer 1, and
/// the helper (a `hafen-build` link to hafen-init). Dropping it kills and
/// removes the steps' cgroups.
struct Builder {
    tmp: tempfile::TempDir,
    storage: Storage,
    /// The cgroup, under the v2 root, holding this test's steps.
    parent: String,
    ops: std::cell::Cell<u32>,
}

impl Builder {
    fn new(name: &str) -> Builder {
        let tmp = tempfile::tempdir().expect("tempdir");
        let storage = Storage::at(tmp.path().join("storage"));
        storage.create().expect("storage");
        busybox_rootfs(&storage.layer(1));
        std::os::unix::fs::symlink(hafen_init(), tmp.path().join(build::HELPER_NAME))
            .expect("link");
        Builder {
            tmp,
            storage,
            parent: format!("hafen-test-build-{name}-{}", std::process::id()),
            ops: std::cell::Cell::new(0),
        }
    }

    /// The helper started for `op` on the guest's cgroup layout.
    fn start(&self, op: &BuildOp, stdin: Stdio) -> Child {
        let n = self.ops.get();
        self.ops.set(n + 1);
        let file = self.tmp.path().join(format!("op-{n}"));
        build::write_op(&file, op).expect("op file");
        let helper = self.tmp.path().join(build::HELPER_NAME);
        let mut cmd = Layout::Cgroup2.command(helper.to_str().expect("utf8"));
        cmd.arg("--storage")
            .arg(self.tmp.path().join("storage"))
            .arg("--cgroup-parent")
            .arg(&self.parent)
            .arg(&file)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("start the helper")
    }

    fn run(&self, op: &BuildOp) -> Output {
        self.start(op, Stdio::null())
            .wait_with_output()
            .expect("helper output")
    }

    fn step_cgroup(&self, n: u32) -> PathBuf {
        cgroup_v2_root().join(build::step_cgroup(&self.parent, n))
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        let parent = cgroup_v2_root().join(&self.parent);
        if let Ok(steps) = std::fs::read_dir(&parent) {
            for step in steps.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::write(step.path().join("cgroup.kill"), "1");
                let deadline = Instant::now() + PATIENCE;
                while std::fs::remove_dir(step.path()).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_dir(&parent);
    }
}

fn step(layer: u32, lowers: &[u32], script: &str) -> RunStep {
    RunStep {
        layer,
        lowers: lowers.to_vec(),
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into(), "HAFEN_TEST=1".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: Vec::new(),
        host_network: false,
        hostname: "builder".into(),
        files: Vec::new(),
        seccomp_json: None,
    }
}

fn is_whiteout(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// The entries of a tar archive, by name.
fn entries(tar: &[u8]) -> Vec<String> {
    let mut r = archive::Reader::new(tar);
    let mut names = Vec::new();
    while let Some(e) = r.next_entry().expect("a tar archive") {
        names.push(e.display());
    }
    names
}

#[test]
fn a_run_step_writes_its_changes_into_the_new_layer_and_streams_its_output() {
    let b = Builder::new("run");
    let mut s = step(
        2,
        &[1],
        "echo out; echo err >&2; mkdir /newdir; echo data > /newdir/f; rm /bin/ls; \
         pwd; id -u; hostname; cat /dev/pipes/note; cat /etc/hosts | grep -c builder; \
         ip -o link | wc -l; ip -o link show lo | grep -c LOWER_UP; grep -c 'no network' /etc/resolv.conf; grep -c 'CapEff:\t00000000a80425fb' /proc/self/status; \
         exit 3",
    );
    s.cwd = "/work/dir".into();
    s.files.push(StepFile {
        path: "/dev/pipes/note".into(),
        mode: 0o644,
        data: b"a note\n".to_vec(),
    });
    let out = b.run(&BuildOp::Run(Box::new(s)));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            "out",
            "/work/dir",
            "0",
            "builder",
            "a note",
            "1",
            "1",
            "1",
            "1",
            "1"
        ],
        "stdout: output, cwd, uid, hostname, /dev/pipes, /etc/hosts, only lo (up), \
         no nameserver, Docker's caps; stderr: {}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).trim(), "err");

    let layer = b.storage.layer(2);
    assert_eq!(
        std::fs::read(layer.join("newdir/f")).expect("the step's file"),
        b"data\n"
    );
    assert!(is_whiteout(&layer.join("bin/ls")), "rm left a whiteout");
    assert!(
        layer.join("work/dir").is_dir(),
        "the working directory was made"
    );
    let mut top: Vec<String> = std::fs::read_dir(&layer)
        .expect("layer")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["bin", "newdir", "work"],
        "no mount points, hosts or pipes in the layer"
    );
    assert!(
        !b.storage.step_dir(2).exists(),
        "the step's files are removed"
    );
    assert!(!b.step_cgroup(2).exists(), "the step's cgroup is removed");

    // A step on top sees it; its status is the step's own.
    let s = step(
        3,
        &[2, 1],
        "test ! -e /bin/ls && cat /newdir/f && sh -c 'kill -9 $$'; exit $?",
    );
    let out = b.run(&BuildOp::Run(Box::new(s)));
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert_eq!(stdout(&out), "data\n");

    // The layer goes out as an OCI layer and comes back in overlayfs form.
    let out = b.run(&BuildOp::GetLayer {
        layer: 2,
        epoch: 1_000,
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let names = entries(&out.stdout);
    for want in [
        "bin",
        "bin/.wh.ls",
        "newdir",
        "newdir/f",
        "work",
        "work/dir",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing in {names:?}"
        );
    }
    let mut child = b.start(&BuildOp::PutLayer { layer: 5 }, Stdio::piped());
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&out.stdout)
        .expect("send the layer");
    let put = child.wait_with_output().expect("helper");
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(is_whiteout(&b.storage.layer(5).join("bin/ls")));

    let out = b.run(&BuildOp::DropLayers {
        layers: vec![2, 3, 5, 99],
    });
    assert!(out.status.success(), "{}", stderr(&out));
    for n in [2, 3, 5] {
        assert!(!b.storage.layer(n).exists(), "layer {n} still there");
    }
    assert!(b.storage.layer(1).exists());
}

#[test]
fn a_step_that_cannot_start_says_why_and_leaves_no_layer() {
    let b = Builder::new("fail");
    let cases: [(RunStep, i32, &str); 4] = [
        (step(1, &[], "true"), SETUP_FAILED, "layer 1 exists already"),
        (step(2, &[9], "true"), SETUP_FAILED, "no layer 9"),
        (
            RunStep {
                args: vec!["/no/such/program".into()],
                ..step(2, &[1], "")
            },
            127,
            "/no/such/program",
        ),
        // An empty root (FROM scratch) has no shell.
        (step(2, &[], "true"), 127, "/bin/sh"),
    ];
    for (s, code, words) in cases {
        let out = b.run(&BuildOp::Run(Box::new(s)));
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        assert!(stderr(&out).contains(words), "{}", stderr(&out));
        assert!(!b.storage.layer(2).exists(), "{}", stderr(&out));
        assert!(!b.storage.step_dir(2).exists());
    }
    assert!(b.storage.layer(1).join("bin/sh").exists());
}

#[test]
fn a_step_runs_as_its_user_without_capabilities_and_may_share_the_network() {
    let b = Builder::new("user");
    let mut s = step(
        2,
        &[1],
        "id -u; id -g; id -G; grep CapEff /proc/self/status; ip -o link | wc -l; touch /x",
    );
    s.uid = 1000;
    s.gid = 100;
    s.additional_gids = vec![5, 7];
    s.host_network = true;
    let out = b.run(&BuildOp::Run(Box::new(s)));
    // touch / as a user fails: the step's status is the shell's.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..3], ["1000", "100", "100 5 7"], "{text}");
    assert_eq!(lines[3], "CapEff:\t0000000000000000", "{text}");
    let links: u32 = lines[4].trim().parse().expect("a count");
    assert!(links > 1, "the host's network has more than lo: {text}");
    assert!(b.storage.layer(2).is_dir(), "a failed step's layer stays");
}

#[test]
fn killing_a_steps_cgroup_ends_every_process_of_it() {
    let b = Builder::new("cancel");
    let s = step(
        2,
        &[1],
        "sleep 1000 & sleep 1000 & echo started; exec sleep 1000",
    );
    let mut helper = b.start(&BuildOp::Run(Box::new(s)), Stdio::null());
    let procs = b.step_cgroup(2).join("cgroup.procs");
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_to_string(&procs).map_or(true, |p| p.lines().count() < 3) {
        assert!(Instant::now() < deadline, "the step did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // What PID 1 does on cancel: the step's cgroup, then the helper.
    assert!(build::step::kill_step(
        Path::new("/sys/fs/cgroup"),
        &b.parent,
        2
    ));
    helper.kill().expect("kill the helper");
    let _ = helper.wait();
    let events = b.step_cgroup(2).join("cgroup.events");
    while std::fs::read_to_string(&events).is_ok_and(|e| e.contains("populated 1")) {
        assert!(Instant::now() < deadline, "the step's processes live on");
        std::thread::sleep(Duration::from_millis(20));
    }
    // What is left goes with DropLayers.
    let out = b.run(&BuildOp::DropLayers { layers: vec![2] });
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!b.storage.layer(2).exists());
    assert!(!b.storage.step_dir(2).exists());
    assert!(!b.step_cgroup(2).exists());
}
