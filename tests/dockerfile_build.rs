//! `hafen image build`: Dockerfiles built for real, RUN steps in a builder
//! VM (the kernel from kernel-config/, the static hafen-init), layers and
//! images in a private local store, and the cache checked by whether a RUN
//! that writes random bytes ran again.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hafen_image_build::store::Store;
use hafen_image_build::tree::{Kind, Tree};
use serde_json::Value;

/// A private store with a busybox base image (`busybox:test`, with
/// /etc/passwd naming `app` 1000:1000), and the real kernel and init.
struct Env {
    dir: tempfile::TempDir,
    kernel: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let (kernel, _) = hafen_image_build::locate_kernel(None)
            .expect("the guest kernel (kernel-config/build.sh; scripts/test.sh builds it)");
        let env = Env { dir, kernel };
        let rootfs = env.path("base");
        for d in ["bin", "etc", "tmp", "home/app"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
        }
        common::busybox_applets(&rootfs);
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            rootfs.join("etc/group"),
            "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
        )
        .expect("group");
        std::fs::write(rootfs.join("etc/motd"), "base motd\n").expect("motd");
        let out = env
            .command(&["image", "import"])
            .arg(&rootfs)
            .args([
                "--tag",
                "busybox:test",
                "--env",
                "PATH=/bin",
                "--cmd",
                "/bin/sh",
            ])
            .output()
            .expect("hafen image import");
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(common::hafen());
        c.args(args)
            .current_dir(self.dir.path())
            .env("HAFEN_CACHE", self.path("store"))
            .env("HAFEN_KERNEL", &self.kernel)
            .env("HAFEN_INIT", common::init_binary())
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env_remove("SOURCE_DATE_EPOCH")
            .stdin(Stdio::null());
        c
    }

    /// Writes a context directory `name` with `files` (path, content).
    fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.path(name);
        for (path, content) in files {
            let p = ctx.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, content).expect("write");
        }
        ctx
    }

    fn build(&self, ctx: &Path, args: &[&str]) -> Output {
        self.command(&["image", "build"])
            .args(args)
            .arg(ctx)
            .output()
            .expect("hafen image build")
    }

    /// Builds; asserts success; returns (digest, stderr).
    fn built(&self, ctx: &Path, args: &[&str]) -> (String, String) {
        let out = self.build(ctx, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "hafen image build {args:?} failed:\n{stderr}"
        );
        let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(digest.starts_with("sha256:"), "stdout: {digest}");
        (digest, stderr)
    }

    fn store(&self) -> Store {
        Store::open(&self.path("store")).expect("store")
    }

    /// The image's root filesystem, flattened.
    fn tree(&self, name: &str) -> Tree {
        let store = self.store();
        let reference = name.parse().expect("reference");
        let opened = hafen_image_build::stored_image(&store, &reference, name).expect("image");
        hafen_image_build::flatten_image(&opened).expect("flatten")
    }

    /// The image's config JSON.
    fn config(&self, name: &str) -> Value {
        let store = self.store();
        let reference = name.parse().expect("reference");
        let opened = hafen_image_build::stored_image(&store, &reference, name).expect("image");
        let bytes = store
            .read_blob(&opened.image.manifest.config.digest)
            .expect("config");
        serde_json::from_slice(&bytes).expect("json")
    }
}

fn file(tree: &Tree, path: &str) -> String {
    match tree.nodes.get(path).map(|n| &n.kind) {
        Some(Kind::File { data, .. }) => String::from_utf8_lossy(data).into_owned(),
        other => panic!("{path}: not a file: {other:?}"),
    }
}

const MULTI_STAGE: &str = r#"# syntax=docker/dockerfile:1
FROM busybox:test AS build
WORKDIR /src
COPY app/ ./
RUN echo built > out.txt && cat hello.txt >> out.txt && rm /etc/motd && mkdir -p /opt/x && echo y > /opt/x/y
RUN <<EOF
set -e
echo "heredoc ran as $(id -u)" > /src/heredoc.txt
EOF

FROM scratch AS bare
COPY --from=build /src/out.txt /out.txt

FROM busybox:test
COPY --from=build /src/out.txt /src/heredoc.txt /srv/
COPY --from=bare /out.txt /srv/bare.txt
COPY --chown=app:staff --chmod=640 app/hello.txt /srv/owned.txt
USER app
WORKDIR /home/app/work
RUN id -u > uid && id -G > groups && pwd > pwd && echo "$GREETING" > greeting && echo "$HOME" > home && grep Seccomp: /proc/self/status | tr -d '\t ' > seccomp
ENV GREETING=hello
RUN echo "$GREETING" > greeting2
VOLUME /data
EXPOSE 8080/tcp
LABEL org.example.role="test image"
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s --timeout=2s --retries=2 CMD test -f /srv/out.txt
ENTRYPOINT ["/bin/cat"]
CMD ["/srv/out.txt"]
"#;

#[test]
fn a_multi_stage_dockerfile_builds_in_a_vm_with_every_setting() {
    let env = Env::new();
    let ctx = env.context(
        "multi",
        &[
            ("Dockerfile", MULTI_STAGE),
            ("app/hello.txt", "hello from the context\n"),
        ],
    );
    let (digest, stderr) = env.built(&ctx, &["-t", "multi:1"]);
    assert!(stderr.contains("booting the build VM"), "{stderr}");

    let tree = env.tree("multi:1");
    assert_eq!(
        file(&tree, "srv/out.txt"),
        "built\nhello from the context\n"
    );
    assert_eq!(file(&tree, "srv/heredoc.txt"), "heredoc ran as 0\n");
    assert_eq!(
        file(&tree, "srv/bare.txt"),
        "built\nhello from the context\n"
    );
    let owned = &tree.nodes["srv/owned.txt"];
    assert_eq!(
        (owned.uid, owned.gid, owned.mode & 0o7777),
        (1000, 50, 0o640)
    );
    // RUN as USER app in WORKDIR, which was made for app.
    assert_eq!(file(&tree, "home/app/work/uid"), "1000\n");
    assert_eq!(file(&tree, "home/app/work/groups"), "1000 50\n");
    assert_eq!(file(&tree, "home/app/work/pwd"), "/home/app/work\n");
    assert_eq!(file(&tree, "home/app/work/greeting"), "\n");
    assert_eq!(
        file(&tree, "home/app/work/home"),
        "/home/app\n",
        "HOME from passwd"
    );
    // The default seccomp profile every appliance container gets (mode 2: a filter).
    assert_eq!(file(&tree, "home/app/work/seccomp"), "Seccomp:2\n");
    assert_eq!(file(&tree, "home/app/work/greeting2"), "hello\n");
    let work = &tree.nodes["home/app/work"];
    assert_eq!((work.uid, work.gid), (1000, 1000));
    // The final stage starts from the base again: the first stage's
    // deletion is not here, and its files are only where copied.
    assert_eq!(file(&tree, "etc/motd"), "base motd\n");
    assert!(!tree.nodes.contains_key("src"));

    let config = env.config("multi:1");
    let c = &config["config"];
    assert_eq!(c["User"], "app");
    assert_eq!(c["WorkingDir"], "/home/app/work");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/cat"]));
    assert_eq!(c["Cmd"], serde_json::json!(["/srv/out.txt"]));
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(c["Labels"]["org.example.role"], "test image");
    assert_eq!(c["StopSignal"], "SIGQUIT");
    assert_eq!(
        c["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "test -f /srv/out.txt"])
    );
    assert_eq!(c["Healthcheck"]["Interval"], 5_000_000_000u64);
    assert_eq!(c["Healthcheck"]["Retries"], 2);
    assert!(c["Env"]
        .as_array()
        .expect("Env")
        .contains(&Value::from("GREETING=hello")));
    // One history entry per instruction of the final stage, after the base's.
    let history = config["history"].as_array().expect("history");
    let ours: Vec<&Value> = history
        .iter()
        .filter(|h| h["comment"] == "hafen image build")
        .collect();
    assert_eq!(ours.len(), 15, "{history:#?}");
    let layers = config["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff ids")
        .len();
    let non_empty = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(layers, non_empty, "a layer per non-empty history entry");

    // The first stage's whiteout is a real layer entry: build it alone.
    let (_, _) = env.built(&ctx, &["--target", "build", "-t", "stage:build"]);
    let build = env.tree("stage:build");
    assert!(
        !build.nodes.contains_key("etc/motd"),
        "rm in RUN is a whiteout"
    );
    assert_eq!(file(&build, "opt/x/y"), "y\n");

    // A second build of the same input is the same image, and boots no VM.
    let (again, stderr) = env.built(&ctx, &["-t", "multi:2"]);
    assert_eq!(again, digest);
    assert!(!stderr.contains("booting the build VM"), "{stderr}");
    assert!(stderr.contains("no VM booted"), "{stderr}");
}

const RANDOM: &str = "FROM busybox:test
COPY dir/ /dir/
RUN head -c 16 /dev/urandom | od -An -tx1 > /r1
ARG V=1
RUN head -c 16 /dev/urandom | od -An -tx1 > /r2 && echo $V > /v
";

/// (r1, r2) of the image `hafen image build ARGS` makes.
fn randoms(env: &Env, ctx: &Path, args: &[&str]) -> (String, String, String) {
    let mut all = vec!["-t", "random:x"];
    all.extend_from_slice(args);
    let (_, stderr) = env.built(ctx, &all);
    let tree = env.tree("random:x");
    (file(&tree, "r1"), file(&tree, "r2"), stderr)
}

#[test]
fn the_cache_is_keyed_by_content_and_metadata_never_mtime() {
    let env = Env::new();
    let ctx = env.context(
        "random",
        &[
            ("Dockerfile", RANDOM),
            ("dir/a.txt", "aaaa\n"),
            ("dir/sub/b.txt", "bbbb\n"),
        ],
    );
    let (r1, r2, _) = randoms(&env, &ctx, &[]);
    assert_ne!(r1, r2);

    // Unchanged: everything cached, no VM.
    let (h1, h2, stderr) = randoms(&env, &ctx, &[]);
    assert_eq!((&h1, &h2), (&r1, &r2));
    assert!(stderr.contains("no VM booted"), "{stderr}");

    // touch: a new mtime only; still a hit.
    let a = ctx.join("dir/a.txt");
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&a)
        .expect("open")
        .set_modified(later)
        .expect("touch");
    let (t1, t2, stderr) = randoms(&env, &ctx, &[]);
    assert_eq!((&t1, &t2), (&r1, &r2), "touch must hit the cache");
    assert!(stderr.contains("no VM booted"), "{stderr}");

    // The same size, other content: this step and every later one miss.
    std::fs::write(&a, "AAAA\n").expect("write");
    let (c1, c2, _) = randoms(&env, &ctx, &[]);
    assert_ne!(c1, r1, "a content change must re-run");
    assert_ne!(c2, r2, "and every later step");

    // chmod: a miss.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (m1, _, _) = randoms(&env, &ctx, &[]);
    assert_ne!(m1, c1, "chmod must re-run");

    // Renaming a file inside the copied directory: a miss.
    std::fs::rename(ctx.join("dir/sub/b.txt"), ctx.join("dir/sub/c.txt")).expect("rename");
    let (n1, n2, _) = randoms(&env, &ctx, &[]);
    assert_ne!(n1, m1, "a rename must re-run");

    // A build arg: earlier steps hit, later RUNs re-run.
    let (b1, b2, _) = randoms(&env, &ctx, &["--build-arg", "V=2"]);
    assert_eq!(b1, n1, "steps before the ARG hit");
    assert_ne!(b2, n2, "steps after it re-run");
    assert_eq!(file(&env.tree("random:x"), "v"), "2\n");

    // --no-cache: everything re-runs.
    let (f1, f2, _) = randoms(&env, &ctx, &["--build-arg", "V=2", "--no-cache"]);
    assert_ne!(f1, b1);
    assert_ne!(f2, b2);
}

#[test]
fn a_failing_run_names_its_line_shows_its_output_and_stores_nothing() {
    let env = Env::new();
    let ctx = env.context(
        "failing",
        &[(
            "Dockerfile",
            "FROM busybox:test\nRUN echo fine\nRUN echo oops-on-stderr >&2; exit 3\nRUN echo never\n",
        )],
    );
    let out = env.build(&ctx, &["-t", "failing:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("oops-on-stderr"), "{stderr}");
    assert!(
        stderr.contains("Dockerfile:3") && stderr.contains("exit code 3"),
        "{stderr}"
    );
    assert!(!stderr.contains("never\n"), "{stderr}");
    let images = env
        .store()
        .images()
        .expect("images")
        .into_iter()
        .filter_map(|i| i.name)
        .collect::<Vec<_>>();
    assert!(!images.iter().any(|n| n.contains("failing")), "{images:?}");
    // Nothing of the VM is left.
    let vms = env.path("run/hafen/vms");
    let left: Vec<_> = std::fs::read_dir(&vms)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn steps_have_no_network_and_the_build_is_reproducible() {
    let env = Env::new();
    let ctx = env.context(
        "repro",
        &[
            (
                "Dockerfile",
                "FROM busybox:test\nCOPY f /f\nRUN ip -o link | cut -d: -f2 | tr -d ' ' > /links && date +%s > /stamp && touch /new\n",
            ),
            ("f", "content\n"),
        ],
    );
    let (first, _) = env.built(&ctx, &["-t", "repro:1"]);
    let tree = env.tree("repro:1");
    assert_eq!(file(&tree, "links"), "lo\n", "only a loopback interface");
    // Every made file's mtime is the build's epoch (0 without
    // SOURCE_DATE_EPOCH), so a second machine gets the same layers.
    let config = env.config("repro:1");
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    // --no-cache reruns the steps; the `date` output differs, so compare
    // a build without it: the COPY alone, with a new mtime on the source.
    let ctx2 = env.context(
        "repro2",
        &[
            (
                "Dockerfile",
                "FROM busybox:test\nCOPY f /f\nRUN touch /new\n",
            ),
            ("f", "content\n"),
        ],
    );
    let (a, _) = env.built(&ctx2, &["-t", "repro:2"]);
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(ctx2.join("f"))
        .expect("open")
        .set_modified(later)
        .expect("touch");
    let (b, _) = env.built(&ctx2, &["-t", "repro:3", "--no-cache"]);
    assert_eq!(a, b, "the same inputs give the same image digest");
    // --output: an OCI layout (replacing an older one) and a tar of one,
    // both naming the same manifest.
    let layout = env.path("out-layout");
    std::fs::create_dir_all(layout.join("stale")).expect("mkdir");
    let archive = env.path("out.tar");
    for output in [
        format!("oci:{}", layout.display()),
        format!("oci-archive:{}", archive.display()),
    ] {
        let (digest, _) = env.built(&ctx2, &["-t", "repro:4", "--output", &output]);
        assert_eq!(digest, a);
    }
    let index = std::fs::read_to_string(layout.join("index.json")).expect("index.json");
    assert!(index.contains(&a), "{index}");
    assert!(
        !layout.join("stale").exists(),
        "the old layout was replaced"
    );
    let hex = a.trim_start_matches("sha256:");
    assert!(layout.join("blobs/sha256").join(hex).is_file());
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("index.json") && listing.contains(hex),
        "{listing}"
    );
    assert_ne!(first, a);
}

/// Compares hafen's build of `dockerfile` with buildah's: the same files
/// (kind, mode, owner, content, link target) and the same config fields.
#[test]
fn buildah_builds_the_same_tree_and_config() {
    let env = Env::new();
    // buildah needs the base in a form it reads: an OCI archive of it.
    let archive = env.path("busybox.tar");
    let out = env
        .command(&[
            "image",
            "save",
            "busybox:test",
            "--format",
            "oci-archive",
            "-o",
        ])
        .arg(&archive)
        .output()
        .expect("save");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dockerfile = "ARG BASE=busybox:test
FROM ${BASE} AS build
WORKDIR /w
COPY src/ ./
RUN mkdir -p out && cp -a *.txt out/ && ln -s out/a.txt link && rm b.txt && chmod 700 out
FROM ${BASE}
COPY --from=build /w /app
RUN rm -f /etc/motd && mkdir -p /var/empty && echo x > /var/x
ENV A=1 B=two
USER 1000:1000
WORKDIR /app
EXPOSE 80 53/udp
VOLUME [\"/data\"]
LABEL k=v
STOPSIGNAL SIGINT
CMD [\"sh\"]
";
    let ctx = env.context(
        "oracle",
        &[
            ("Dockerfile", dockerfile),
            ("src/a.txt", "a\n"),
            ("src/b.txt", "b\n"),
            ("src/sub/c.txt", "c\n"),
        ],
    );
    env.built(&ctx, &["-t", "oracle:hafen"]);
    let ours = env.tree("oracle:hafen");

    // buildah, rootless-free: root here, vfs storage in the scratch dir.
    let storage = env.path("buildah");
    let buildah = |args: &[&str]| -> Output {
        Command::new("buildah")
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("BUILDAH_ISOLATION", "chroot")
            .output()
            .expect("buildah (scripts/setup.sh installs it)")
    };
    let base = format!("oci-archive:{}", archive.display());
    let out = buildah(&[
        "bud",
        "--isolation",
        "chroot",
        "--layers",
        "--build-arg",
        &format!("BASE={base}"),
        "-t",
        "oracle:buildah",
        ctx.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "buildah bud: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layout = env.path("buildah-out");
    let out = buildah(&[
        "push",
        "oracle:buildah",
        &format!("oci:{}", layout.display()),
    ]);
    assert!(
        out.status.success(),
        "buildah push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs_layout = hafen_image_build::oci::Layout::open(&layout, "buildah's").expect("layout");
    let image = theirs_layout.resolve(None).expect("resolve");
    let opened = hafen_image_build::OpenedImage {
        layout: theirs_layout,
        image,
    };
    let theirs = hafen_image_build::flatten_image(&opened).expect("flatten");

    let describe = |t: &Tree| -> BTreeMap<String, String> {
        t.nodes
            .iter()
            .map(|(p, n)| {
                let kind = match &n.kind {
                    Kind::Dir => "dir".to_owned(),
                    Kind::File { data, .. } => format!("file {:?}", String::from_utf8_lossy(data)),
                    Kind::Symlink(t) => format!("link {t}"),
                    other => format!("{other:?}"),
                };
                let mode = if matches!(n.kind, Kind::Symlink(_)) {
                    0
                } else {
                    n.mode
                };
                (p.clone(), format!("{kind} {:o} {}:{}", mode, n.uid, n.gid))
            })
            .collect()
    };
    let (a, mut b) = (describe(&ours), describe(&theirs));
    // buildah leaves the mount points of its RUN containers in the image
    // (empty files and directories the base did not have); BuildKit and
    // hafen leave no trace of them.
    for stub in [
        "dev",
        "proc",
        "sys",
        "run",
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
    ] {
        if !a.contains_key(stub) {
            b.remove(stub);
        }
    }
    let differ: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: hafen {:?} buildah {:?}", a.get(k), b.get(k)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(differ.is_empty(), "trees differ:\n{}", differ.join("\n"));

    let ours = env.config("oracle:hafen");
    let theirs: Value = serde_json::from_slice(
        &opened
            .layout
            .read_blob(&opened.image.manifest.config)
            .expect("config"),
    )
    .expect("json");
    for field in [
        "User",
        "Env",
        "Entrypoint",
        "Cmd",
        "WorkingDir",
        "ExposedPorts",
        "Volumes",
        "Labels",
        "StopSignal",
    ] {
        let (o, t) = (&ours["config"][field], &theirs["config"][field]);
        // buildah adds its own label; compare ours within theirs.
        if field == "Labels" {
            for (k, v) in o.as_object().expect("labels") {
                assert_eq!(&t[k], v, "label {k}");
            }
            continue;
        }
        assert_eq!(o, t, "config field {field}");
    }
}

#[test]
fn a_killed_build_leaves_no_vm_behind() {
    let env = Env::new();
    let ctx = env.context(
        "killed",
        &[(
            "Dockerfile",
            "FROM busybox:test\nRUN echo step-started && sleep 600\n",
        )],
    );
    let mut child = env
        .command(&["image", "build"])
        .arg(&ctx)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("hafen image build");
    let mut stderr = child.stderr.take().expect("stderr");
    // Read until the step runs in the VM.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !String::from_utf8_lossy(&seen).contains("step-started") {
        use std::io::Read;
        let n = stderr.read(&mut buf).expect("read");
        assert!(
            n > 0 && std::time::Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    // SIGKILL: no handler of ours runs; the VM must still go.
    child.kill().expect("kill");
    child.wait().expect("wait");
    let vms = env.path("run/hafen/vms");
    common::eventually(
        "the build VM stops with its build",
        std::time::Duration::from_secs(30),
        || {
            let left: Vec<_> = std::fs::read_dir(&vms)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {left:?}"))
            }
        },
    );
}
