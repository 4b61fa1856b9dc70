//! `hafen image` verbs over the local image store, from the command line:
//! a round trip through every verb with skopeo reading what `save` wrote,
//! builds from store names and archives, two processes writing the store
//! at once, and an ordinary user's own store. No VM is booted: builds use a
//! stand-in kernel and init.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{hafen, NOBODY};
use serde_json::Value;

use common::store_env::StoreEnv as Env;

impl Env {
    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("json output")
    }

    /// Builds a one-container manifest using `image`; returns the build's
    /// output. Each build starts without a `hafen.lock`: these tests move
    /// names around in the store on purpose (tests/registry.rs tests the
    /// pins).
    fn build(&self, image: &str, out: &str) -> Output {
        let _ = std::fs::remove_file(self.path("hafen.lock"));
        let manifest = self.path(&format!("{out}.toml"));
        std::fs::write(
            &manifest,
            format!("name = \"t\"\n[[container]]\nname = \"app\"\nimage = \"{image}\"\n"),
        )
        .expect("write manifest");
        self.build_command(&manifest, out)
            .output()
            .expect("run hafen build")
    }

    fn built(&self, image: &str, out: &str) -> Vec<u8> {
        let result = self.build(image, out);
        assert!(
            result.status.success(),
            "build of {image}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        std::fs::read(common::initramfs_path(&self.path(out))).expect("initramfs")
    }
}

fn names(ls: &Value) -> Vec<String> {
    let mut names: Vec<String> = ls
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn skopeo_inspect(target: &str) -> Value {
    let out = Command::new("skopeo")
        .args(["inspect", target])
        .output()
        .expect("run skopeo (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo inspect {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn temp_files(root: &Path) -> Vec<String> {
    [root.to_owned(), root.join("blobs/sha256")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).expect("list").flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

#[test]
fn image_verbs_round_trip_through_the_local_store() {
    let env = Env::new();
    let imported = env.ok(&[
        "image", "import", "rootfs", "--tag", "app:1", "--cmd", "/bin/sh",
    ]);
    assert!(
        imported.contains("into the local image store as app:1"),
        "{imported}"
    );
    env.ok(&["image", "tag", "app:1", "localhost:5000/app:2"]);
    let ls = env.json(&["image", "ls", "--format", "json"]);
    assert_eq!(
        names(&ls),
        ["docker.io/library/app:1", "localhost:5000/app:2"]
    );
    let table = env.ok(&["image", "ls"]);
    let id = ls[0]["id"].as_str().expect("id").to_owned();
    let short = &id["sha256:".len().."sha256:".len() + 12];
    assert!(
        table.starts_with("REPOSITORY")
            && table.contains("localhost:5000/app")
            && table.contains(short),
        "{table}"
    );

    // inspect by name and by a prefix of the id.
    let inspect = env.json(&["image", "inspect", "app:1"]);
    let image = &inspect[0];
    assert_eq!(image["id"], id.as_str());
    assert_eq!(image["platform"]["os"], "linux");
    assert_eq!(image["config"]["Cmd"][0], "/bin/sh");
    assert_eq!(image["names"].as_array().expect("names").len(), 2);
    let diff_ids = image["diff_ids"].clone();
    assert_eq!(env.json(&["image", "inspect", short])[0]["id"], id.as_str());
    let history = env.ok(&["image", "history", "app:1"]);
    assert!(
        history.starts_with("IMAGE") && history.contains(short),
        "{history}"
    );

    // save: skopeo reads both forms.
    env.ok(&[
        "image",
        "save",
        "app:1",
        "localhost:5000/app:2",
        "-o",
        "saved.tar",
    ]);
    let docker = skopeo_inspect(&format!(
        "docker-archive:{}:localhost:5000/app:2",
        env.path("saved.tar").display()
    ));
    assert_eq!(docker["Layers"], diff_ids);
    env.ok(&[
        "image",
        "save",
        "app:1",
        "--format",
        "oci-archive",
        "-o",
        "saved-oci.tar",
    ]);
    let oci = skopeo_inspect(&format!(
        "oci-archive:{}",
        env.path("saved-oci.tar").display()
    ));
    let layers: Vec<Value> = image["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].clone())
        .collect();
    assert_eq!(oci["Layers"], Value::Array(layers));

    // Builds by either name, and from both archives.
    env.built("app:1", "out-name");
    env.built("localhost:5000/app:2", "out-other");
    env.built("docker-archive:saved.tar:app:1", "out-archive");
    env.built("oci-archive:saved-oci.tar", "out-oci-archive");

    // rm takes names away; a build then says how to get the image.
    let rm = env.ok(&["image", "rm", "app:1"]);
    assert_eq!(rm, "Untagged: app:1\n");
    // A name the store lacks is pulled: from a registry that refuses (port
    // 9 on loopback, where nothing listens), the build names image and
    // registry, and nothing leaves the machine.
    env.ok(&["image", "tag", "localhost:5000/app:2", "127.0.0.1:9/app:1"]);
    env.ok(&["image", "rm", "127.0.0.1:9/app:1"]);
    let failed = env.build("127.0.0.1:9/app:1", "out-gone");
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success()
            && err.contains("pull 127.0.0.1:9/app:1")
            && err.contains("127.0.0.1:9 is not reachable"),
        "{err}"
    );
    let err = env.fails(&["image", "rm", "nope:1", "localhost:5000/app:2"]);
    assert!(err.contains("\"nope:1\""), "{err}");
    assert_eq!(
        env.json(&["image", "ls", "--format", "json"]),
        Value::Array(vec![])
    );

    // prune frees what no name reaches; load brings the names back.
    let pruned = env.ok(&["image", "prune"]);
    assert!(pruned.contains("Removed 3 blobs"), "{pruned}");
    assert_eq!(
        std::fs::read_dir(env.store().join("blobs/sha256"))
            .expect("list")
            .count(),
        0
    );
    // (from standard input, as `docker save IMAGE | hafen image load`)
    let loaded = env
        .command(&["image", "load"])
        .stdin(std::fs::File::open(env.path("saved.tar")).expect("open"))
        .output()
        .expect("run hafen image load");
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let loaded = String::from_utf8_lossy(&loaded.stdout);
    assert_eq!(
        loaded,
        "Loaded image: app:1\nLoaded image: localhost:5000/app:2\n"
    );
    env.built("app:1", "out-loaded");
    assert!(temp_files(&env.store()).is_empty());
}

/// Two processes loading and tagging at once, many times: every name they
/// made is there and no temporary file is left.
#[test]
fn two_processes_writing_the_store_at_once_lose_no_name() {
    let env = Env::new();
    env.ok(&["image", "import", "rootfs", "--tag", "base:1"]);
    env.ok(&["image", "save", "base:1", "-o", "base.tar"]);
    env.ok(&["image", "rm", "base:1"]);
    env.ok(&["image", "prune"]);
    const ROUNDS: usize = 15;
    let script = format!(
        "for i in $(seq 1 {ROUNDS}); do \
           \"$HAFEN\" image load -i base.tar >/dev/null || exit 1; \
           \"$HAFEN\" image tag base:1 \"$WHO-$i:1\" || exit 1; \
         done"
    );
    let mut children: Vec<_> = ["a", "b"]
        .iter()
        .map(|who| {
            Command::new("sh")
                .args(["-c", &script])
                .current_dir(env.dir.path())
                .env("HAFEN", hafen())
                .env("WHO", who)
                .env("XDG_CACHE_HOME", env.path("cache"))
                .env_remove("HAFEN_CACHE")
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in &mut children {
        let status = child.wait().expect("wait");
        assert!(status.success(), "a writer failed: {status}");
    }
    let mut want = vec!["docker.io/library/base:1".to_owned()];
    for who in ["a", "b"] {
        for i in 1..=ROUNDS {
            want.push(format!("docker.io/library/{who}-{i}:1"));
        }
    }
    want.sort();
    assert_eq!(names(&env.json(&["image", "ls", "--format", "json"])), want);
    assert!(
        temp_files(&env.store()).is_empty(),
        "{:?}",
        temp_files(&env.store())
    );
}

/// An ordinary user's store is in their own cache (`~/.cache/hafen`), and
/// their build of the same import gives the same bytes as root's.
#[test]
fn a_build_as_nobody_uses_its_own_store_and_gives_the_same_bytes() {
    let env = Env::new();
    env.ok(&[
        "image", "import", "rootfs", "--tag", "app:1", "--cmd", "/bin/sh",
    ]);
    let root_build = env.built("app:1", "root-out");

    let home = env.path("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).expect("chown");
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::write(
        home.join("hafen.toml"),
        "name = \"t\"\n[[container]]\nname = \"app\"\nimage = \"app:1\"\n",
    )
    .expect("write");
    let as_nobody = |args: &[&str]| {
        let out = common::hafen_as_nobody(&home)
            .args(args)
            .current_dir(&home)
            .env_remove("XDG_CACHE_HOME")
            .env_remove("HAFEN_CACHE")
            .stdin(Stdio::null())
            .output()
            .expect("run hafen as nobody");
        assert!(
            out.status.success(),
            "hafen {args:?} as nobody: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let rootfs = env.path("rootfs");
    as_nobody(&[
        "image",
        "import",
        rootfs.to_str().expect("utf-8"),
        "--tag",
        "app:1",
        "--cmd",
        "/bin/sh",
    ]);
    let (kernel, init) = (env.path("vmlinux"), env.path("init"));
    as_nobody(&[
        "build",
        "hafen.toml",
        "-o",
        "out",
        "--kernel",
        kernel.to_str().expect("utf-8"),
        "--init",
        init.to_str().expect("utf-8"),
    ]);
    assert!(
        home.join(".cache/hafen/index.json").is_file(),
        "nobody's own store"
    );
    let nobody_build = std::fs::read(common::initramfs_path(&home.join("out"))).expect("initramfs");
    assert!(
        nobody_build == root_build,
        "nobody's build differs from root's"
    );
}

/// Images from a docker-archive (skopeo's legacy form, uncompressed
/// layers) and with zstd layers boot and run: what the tree tests compare
/// is what the guest gets.
#[test]
fn images_from_a_docker_archive_and_with_zstd_layers_boot_and_run() {
    let scratch = common::Scratch::new("images-boot");
    let layout = format!("oci:{}:1", common::busybox_layout().display());
    let skopeo = |args: &[&str]| {
        let out = Command::new("skopeo")
            .args(args)
            .output()
            .expect("run skopeo (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let zstd = scratch.0.join("zstd");
    let archive = scratch.0.join("busybox.tar");
    skopeo(&[
        "copy",
        "-q",
        "--dest-compress-format",
        "zstd",
        &layout,
        &format!("oci:{}:1", zstd.display()),
    ]);
    skopeo(&[
        "copy",
        "-q",
        &layout,
        &format!("docker-archive:{}:busybox:1.36", archive.display()),
    ]);
    let image = common::build_image(
        &scratch,
        r#"
name = "archives"
[[container]]
name = "fromzstd"
image = "oci:zstd:1"
command = ["/bin/sh", "-c", "test -x /bin/busybox && echo zstd-layers-run"]
phase = "once"
[[container]]
name = "fromarchive"
image = "docker-archive:busybox.tar:busybox:1.36"
command = ["/bin/sh", "-c", "test -x /bin/busybox && echo docker-archive-runs"]
phase = "once"
"#,
    );
    let mut vm = common::Vm::boot(&image);
    vm.wait_for("fromzstd | zstd-layers-run");
    vm.wait_for("fromarchive | docker-archive-runs");
    let status = vm.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", vm.console());
}
