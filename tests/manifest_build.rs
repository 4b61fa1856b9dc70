//! `build = "context"` in hafen.toml: `hafen build` builds the container's
//! Dockerfile (RUN steps in a builder VM) into a private local store, uses
//! the result by digest, and the image boots with what the Dockerfile
//! made, its HEALTHCHECK included. A rebuild is answered by the cache, and
//! an ordinary user's build gives root's bytes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{eventually, BOOT_TIMEOUT, NOBODY};

/// The Dockerfile's base, imported into each store under this name.
const BASE: &str = "busybox:manifest-build";

/// A COPY, a RUN that proves it ran after the COPY, a HEALTHCHECK that
/// passes only where the RUN ran, and a CMD that prints what both made.
const DOCKERFILE: &str = r#"FROM busybox:manifest-build
COPY greeting.txt /srv/greeting.txt
RUN echo "made by RUN from: $(cat /srv/greeting.txt)" > /srv/built.txt && touch /srv/healthy
HEALTHCHECK --interval=1s --timeout=5s --retries=3 CMD test -f /srv/healthy
CMD ["/bin/sh", "-c", "cat /srv/built.txt; trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"]
"#;

const MANIFEST: &str = r#"name = "mbuild"

[[container]]
name = "web"
build = "app"
"#;

/// The name `hafen build` gives the image.
const TAG: &str = "localhost/hafen-build/mbuild:web";

/// A directory nobody can read too, with the kernel and init copied in
/// (`tools/`), a busybox root (`base/`), and a project with a manifest and
/// the `app/` context.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let env = Env { dir };
        // The kernel and init nobody may read; root uses the same copies,
        // so both builders are the same builder to the cache.
        let (vmlinux, bzimage) = hafen_image_build::locate_kernel(None)
            .expect("the guest kernel (kernel-config/build.sh; scripts/test.sh builds it)");
        let tools = env.path("tools");
        std::fs::create_dir_all(&tools).expect("mkdir");
        std::fs::copy(&vmlinux, tools.join("vmlinux")).expect("copy vmlinux");
        if let Some(bzimage) = bzimage {
            std::fs::copy(&bzimage, tools.join("bzImage")).expect("copy bzImage");
        }
        std::fs::copy(common::init_binary(), tools.join("hafen-init")).expect("copy init");

        let rootfs = env.path("base");
        std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
        common::busybox_applets(&rootfs);

        let project = env.path("project");
        std::fs::create_dir_all(project.join("app")).expect("mkdir");
        std::fs::write(project.join("hafen.toml"), MANIFEST).expect("manifest");
        std::fs::write(project.join("app/Dockerfile"), DOCKERFILE).expect("Dockerfile");
        std::fs::write(project.join("app/greeting.txt"), "the context\n").expect("greeting");
        for d in [&project, &project.join("app")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `hafen ARGS` as root, with its own store, runtime and config.
    fn root(&self, args: &[&str]) -> Command {
        let mut c = Command::new(common::hafen());
        c.args(args)
            .env("HAFEN_CACHE", self.path("store"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_DATA_HOME", self.path("data"));
        self.tools(&mut c);
        c
    }

    /// `hafen ARGS` as nobody, at home in `home` (which it owns).
    fn nobody(&self, home: &Path, args: &[&str]) -> Command {
        let mut c = common::hafen_as_nobody(home);
        c.args(args)
            .env("HAFEN_CACHE", home.join("store"))
            .env("XDG_CONFIG_HOME", home.join("config"));
        self.tools(&mut c);
        c
    }

    fn tools(&self, c: &mut Command) {
        c.env("HAFEN_KERNEL", self.path("tools"))
            .env("HAFEN_INIT", self.path("tools/hafen-init"))
            .env_remove("SOURCE_DATE_EPOCH")
            .stdin(Stdio::null());
    }

    fn manifest(&self) -> PathBuf {
        self.path("project/hafen.toml")
    }
}

/// Runs `command`; asserts it succeeded; returns (stdout, stderr).
fn ok(what: &str, command: &mut Command) -> (String, String) {
    let out: Output = command.output().expect("spawn hafen");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn import_base(command: &mut Command, rootfs: &Path) {
    ok(
        "hafen image import",
        command
            .arg(rootfs)
            .args(["--tag", BASE, "--env", "PATH=/bin", "--cmd", "/bin/sh"]),
    );
}

/// The digest of the `built TAG (DIGEST): ...` line of `hafen build`'s
/// summary, and that line.
fn built_line(stdout: &str) -> (String, String) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("built {TAG} (")))
        .unwrap_or_else(|| panic!("no Dockerfile build in the summary:\n{stdout}"))
        .to_owned();
    let digest = line
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(d, _)| d.to_owned())
        .expect("a digest");
    assert!(digest.starts_with("sha256:"), "{line}");
    (digest, line)
}

fn initramfs(image: &Path) -> Vec<u8> {
    std::fs::read(common::initramfs_path(image)).expect("read initramfs")
}

/// A detached VM's monitor, killed (with its QEMU) when dropped.
struct Detached {
    pid: u32,
    path: PathBuf,
}

impl Detached {
    fn find(runtime: &Path, name: &str) -> Detached {
        let vms = hafen_qemu::state::vms_dir(&runtime.join("hafen"));
        let vm = hafen_qemu::state::find_vm(&vms, name).expect("the detached VM is running");
        Detached {
            pid: vm.pid,
            path: vm.path,
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.path.join(hafen_qemu::state::CONSOLE_LOG)).unwrap_or_default()
    }

    fn checked(&self, steps: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(steps)) {
            eprintln!(
                "----- guest console -----\n{}\n-------------------------",
                self.console()
            );
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if Path::new(&format!("/proc/{}", self.pid)).exists() {
            // SAFETY: kill takes plain integers. The monitor is not our
            // child, so its pid could be reused only after it exited,
            // which the check above just ruled out moments ago. QEMU dies
            // with it (its parent-death signal).
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

#[test]
fn a_manifest_build_is_built_in_a_vm_boots_healthy_and_is_cached_the_second_time() {
    let env = Env::new();
    import_base(&mut env.root(&["image", "import"]), &env.path("base"));
    let manifest = env.manifest();
    let manifest = manifest.to_str().expect("utf-8");
    let image = env.path("image");
    let image_arg = image.to_str().expect("utf-8");

    let (stdout, stderr) = ok(
        "hafen build",
        &mut env.root(&["build", manifest, "-o", image_arg]),
    );
    let (digest, line) = built_line(&stdout);
    assert!(line.ends_with("in a builder VM"), "{stdout}");
    assert!(
        stderr.contains(&format!("building {TAG} for container web from")),
        "{stderr}"
    );
    assert!(stdout.contains("built ") && stdout.contains("1 container (web)"));
    // The image is in the store under its name, and no lock was written:
    // a built image is not a registry image.
    let store = hafen_image_build::store::Store::open(&env.path("store")).expect("store");
    let stored = hafen_image_build::stored_image(&store, &TAG.parse().expect("tag"), TAG)
        .expect("the built image in the store");
    assert_eq!(stored.image.digest, digest);
    drop(store);
    assert!(!env.path("project/hafen.lock").exists());

    // Boot it: the container's output shows the COPY and the RUN, and the
    // image's HEALTHCHECK makes it healthy.
    let runtime = env.path("run");
    let name = format!("mbuild-{}", std::process::id());
    let (started, _) = ok(
        "hafen run -d",
        &mut env.root(&["run", "-d", "--accel", "tcg", "--name", &name, image_arg]),
    );
    assert_eq!(started.trim(), name);
    let vm = Detached::find(&runtime, &name);
    vm.checked(|| {
        let logs = eventually("the container's output", BOOT_TIMEOUT, || {
            let out = env.root(&["logs", &name, "web"]).output().expect("logs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("made by RUN") {
                Ok(text)
            } else {
                Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
            }
        });
        assert_eq!(logs, "made by RUN from: the context\n");
        let ps = eventually("web healthy in hafen ps", BOOT_TIMEOUT, || {
            let out = env.root(&["ps", &name]).output().expect("ps");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let web = text.lines().find(|l| l.starts_with("web ")).unwrap_or("");
            if web.contains("(healthy)") {
                Ok(text)
            } else {
                Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
            }
        });
        assert!(ps.contains(TAG), "ps shows where the image came from: {ps}");
        ok("hafen stop", &mut env.root(&["stop", &name]));
    });
    drop(vm);

    // Again: the cache answers every step, no VM boots, the same bytes.
    let again = env.path("image2");
    let (stdout, _) = ok(
        "hafen build (again)",
        &mut env.root(&["build", manifest, "-o", again.to_str().expect("utf-8")]),
    );
    let (digest2, line) = built_line(&stdout);
    assert_eq!(digest2, digest);
    assert!(
        line.ends_with(", 0 executed, no VM booted"),
        "a cached rebuild boots no VM: {line}"
    );
    assert!(initramfs(&image) == initramfs(&again), "initramfs differs");
}

#[test]
fn a_manifest_build_as_nobody_gives_the_same_bytes_as_roots() {
    let env = Env::new();
    import_base(&mut env.root(&["image", "import"]), &env.path("base"));
    let manifest = env.manifest();
    let manifest = manifest.to_str().expect("utf-8");
    let root_image = env.path("image");
    let (stdout, _) = ok(
        "hafen build as root",
        &mut env.root(&["build", manifest, "-o", root_image.to_str().expect("utf-8")]),
    );
    let (root_digest, _) = built_line(&stdout);

    let home = env.path("nobody");
    std::fs::create_dir_all(&home).expect("mkdir");
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).expect("chown");
    import_base(
        &mut env.nobody(&home, &["image", "import"]),
        &env.path("base"),
    );
    let image = home.join("image");
    let (stdout, stderr) = ok(
        "hafen build as nobody",
        &mut env.nobody(
            &home,
            &["build", manifest, "-o", image.to_str().expect("utf-8")],
        ),
    );
    let (digest, line) = built_line(&stdout);
    assert!(
        line.ends_with("in a builder VM"),
        "nobody's store had no cache: {line}\n{stderr}"
    );
    assert_eq!(digest, root_digest, "the same image as root's");
    assert!(
        initramfs(&image) == initramfs(&root_image),
        "initramfs differs between root's build and nobody's"
    );
}

/// `hafen build --pull` reaches the Dockerfile builder: a base the store
/// has is used as it is without it, and resolved in its registry again
/// with it (here one on loopback port 9, where nothing listens, so nothing
/// leaves the machine); the failure names the container and the line.
#[test]
fn hafen_build_pull_resolves_a_dockerfiles_base_again_and_its_failure_names_the_container() {
    let env = Env::new();
    const REMOTE: &str = "127.0.0.1:9/hafen-test/base:1";
    ok(
        "hafen image import",
        env.root(&["image", "import"])
            .arg(env.path("base"))
            .args(["--tag", REMOTE, "--cmd", "/bin/sh"]),
    );
    // No RUN: nothing here needs a VM.
    std::fs::write(
        env.path("project/app/Dockerfile"),
        format!("FROM {REMOTE}\nCOPY greeting.txt /greeting.txt\nCMD [\"/bin/cat\", \"/greeting.txt\"]\n"),
    )
    .expect("Dockerfile");
    let manifest = env.manifest();
    let manifest = manifest.to_str().expect("utf-8");
    let image = env.path("image");
    let image = image.to_str().expect("utf-8");

    let (stdout, _) = ok(
        "hafen build",
        &mut env.root(&["build", manifest, "-o", image]),
    );
    let (_, line) = built_line(&stdout);
    assert!(line.ends_with("no VM booted"), "{line}");
    assert!(!env.path("project/hafen.lock").exists());

    let out = env
        .root(&["build", "--pull", manifest, "-o", image])
        .output()
        .expect("hafen build --pull");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "--pull must ask the registry: {stderr}"
    );
    assert!(
        stderr.contains("container web: build ")
            && stderr.contains("app/Dockerfile:1: FROM")
            && stderr.contains("127.0.0.1:9 is not reachable"),
        "{stderr}"
    );
    // The failed build left the image directory of the first one alone.
    assert!(common::initramfs_path(Path::new(image)).is_file());
}
