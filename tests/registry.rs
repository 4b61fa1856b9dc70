//! Images from a registry, from the command line, against Debian's
//! `docker-registry` on 127.0.0.1: `hafen image push` of an imported image
//! and `hafen image pull` into another store give the same digest; a build
//! of a registry image pins it in `hafen.lock`; a tag moved in the registry
//! changes nothing until `--pull`, and with the pin a build works offline
//! and gives the same bytes; two builds pulling into one store at once
//! both succeed; a corrupted blob is refused and never enters the store.
//! No VM is booted: builds use a stand-in kernel and init.

mod common;

#[path = "../registry/tests/common/mod.rs"]
mod registry_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use registry_common::Registry;

use common::store_env::StoreEnv as Env;

impl Env {
    /// Writes a one-container manifest using `image` as `NAME.toml`.
    fn manifest(&self, name: &str, image: &str) -> PathBuf {
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"t\"\n[[container]]\nname = \"app\"\nimage = \"{image}\"\n\
                 command = [\"/bin/busybox\", \"true\"]\n"
            ),
        )
        .expect("write manifest");
        path
    }

    /// Builds and returns the initramfs.
    fn built(&self, manifest: &Path, out: &str, extra: &[&str]) -> Vec<u8> {
        let result = self
            .build_command(manifest, out)
            .args(extra)
            .output()
            .expect("hafen build");
        assert!(
            result.status.success(),
            "build {out}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        std::fs::read(common::initramfs_path(&self.path(out))).expect("initramfs")
    }

    /// Imports the root filesystem (its `version` file set to `version`)
    /// as `name` and pushes it; the pushed digest.
    fn push_version(&self, name: &str, version: &str) -> String {
        std::fs::write(self.path("rootfs/etc/version"), version).expect("write");
        self.ok(&["image", "import", "rootfs", "--tag", name]);
        let out = self.ok(&["image", "push", "--quiet", name]);
        digest_of(&out)
    }

    fn lock(&self) -> String {
        std::fs::read_to_string(self.path("hafen.lock")).expect("hafen.lock")
    }

    /// The store's files, relative to it.
    fn store_files(&self) -> Vec<String> {
        let root = self.path("cache/hafen");
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    stack.push(entry.path());
                } else if let Ok(rel) = entry.path().strip_prefix(&root) {
                    out.push(rel.display().to_string());
                }
            }
        }
        out
    }
}

/// The `sha256:…` in a `name@sha256:…` line.
fn digest_of(line: &str) -> String {
    let digest = line
        .trim()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{line:?}"
    );
    digest
}

#[test]
fn pushed_images_pull_back_with_the_same_digest_and_builds_pin_them() {
    let registry = Registry::start();
    let name = format!("{}/app:1", registry.addr());
    let publisher = Env::new();
    let first = publisher.push_version(&name, "1\n");

    // Another store pulls the same digest; a second pull fetches nothing.
    let user = Env::new();
    let pulled = user.ok(&["image", "pull", &name]);
    assert_eq!(digest_of(&pulled), first);
    let again = user.run(&["image", "pull", &name]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 blob(s) fetched"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // Pushed under another name (blobs mounted or already there) and back.
    let copy = format!("{}/copy:2", registry.addr());
    let pushed = user.ok(&["image", "push", "--quiet", &name, &copy]);
    assert_eq!(digest_of(&pushed), first);
    let third = Env::new();
    assert_eq!(
        digest_of(&third.ok(&["image", "pull", "--quiet", &copy])),
        first
    );

    // A build pins the digest in hafen.lock next to the manifest.
    let manifest = user.manifest("app", &name);
    let built = user.built(&manifest, "img1", &[]);
    assert!(
        user.lock()
            .contains(&format!("\"{name}\" = \"{name}@{first}\"")),
        "{}",
        user.lock()
    );

    // The tag moves in the registry: a build without --pull keeps the pin.
    let second = publisher.push_version(&name, "2\n");
    assert_ne!(first, second);
    assert_eq!(
        user.built(&manifest, "img2", &[]),
        built,
        "the moved tag leaked in"
    );
    // With --pull the pin moves and the image changes.
    let updated = user.built(&manifest, "img3", &["--pull"]);
    assert!(user.lock().contains(&second), "{}", user.lock());
    assert_ne!(updated, built);

    // The old lock, with the registry gone: the store has the pinned
    // digest, so the build needs no network and gives the first bytes.
    let lock = user.lock().replace(&second, &first);
    std::fs::write(user.path("hafen.lock"), lock).expect("write lock");
    drop(registry);
    assert_eq!(
        user.built(&manifest, "img4", &[]),
        built,
        "offline rebuild differs"
    );
    // Without the image in the store and no registry: a clear error.
    let stranger = Env::new();
    let manifest = stranger.manifest("app", &name);
    let out = stranger
        .build_command(&manifest, "img")
        .output()
        .expect("hafen build");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("container app") && err.contains("not reachable"),
        "{err}"
    );
}

#[test]
fn two_builds_pulling_into_one_store_at_once_both_succeed() {
    let registry = Registry::start();
    let name = format!("{}/shared:1", registry.addr());
    let publisher = Env::new();
    publisher.push_version(&name, "shared\n");
    let user = Env::new();
    let manifests = [user.manifest("a", &name), user.manifest("b", &name)];
    // Separate directories, so each build writes its own lock.
    let builds: Vec<_> = manifests
        .iter()
        .zip(["a", "b"])
        .map(|(m, out)| {
            let dir = user.path(&format!("{out}-dir"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            let moved = dir.join("hafen.toml");
            std::fs::rename(m, &moved).expect("move manifest");
            user.build_command(&moved, out)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn hafen build")
        })
        .collect();
    for build in builds {
        let out = build.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let a = std::fs::read(common::initramfs_path(&user.path("a"))).expect("a");
    let b = std::fs::read(common::initramfs_path(&user.path("b"))).expect("b");
    assert!(a == b, "two builds of one image differ");
    let leftovers: Vec<String> = user
        .store_files()
        .into_iter()
        .filter(|f| f.contains("tmp") || f.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_corrupted_blob_is_refused_and_never_enters_the_store() {
    let registry = Registry::start();
    let name = format!("{}/bad:1", registry.addr());
    let publisher = Env::new();
    publisher.push_version(&name, "corrupt me\n");
    // Flip a byte in the largest blob the registry keeps (the layer).
    let inspect = publisher.ok(&["image", "inspect", &name]);
    let json: serde_json::Value = serde_json::from_str(&inspect).expect("inspect json");
    let layer = json[0]["layers"][0]["digest"]
        .as_str()
        .or_else(|| json[0]["Layers"][0].as_str())
        .unwrap_or_else(|| panic!("no layer digest in {inspect}"))
        .to_owned();
    let file = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&file).expect("registry blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, bytes).expect("corrupt the blob");

    let user = Env::new();
    let out = user.run(&["image", "pull", "--quiet", &name]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&layer[..19]) || err.contains("digest"),
        "{err}"
    );
    let hex = layer.trim_start_matches("sha256:");
    let files = user.store_files();
    assert!(
        !files.iter().any(|f| f.contains(hex) || f.contains("tmp")),
        "the bad blob reached the store: {files:?}"
    );
    assert!(!user.ok(&["image", "ls"]).contains("bad"));
}

/// A zstd-compressed image (skopeo recompresses one on its way to the
/// registry) pulls and builds; an unknown tag is an error naming the image
/// and the registry; an ordinary user (nobody) pulls into their own store.
#[test]
fn zstd_images_pull_and_build_unknown_tags_are_named_and_nobody_pulls() {
    use std::os::unix::fs::PermissionsExt;
    let registry = Registry::start();
    let name = format!("{}/plain:1", registry.addr());
    let publisher = Env::new();
    publisher.push_version(&name, "zstd\n");
    let archive = publisher.path("plain.tar");
    publisher.ok(&[
        "image",
        "save",
        &name,
        "-o",
        archive.to_str().expect("utf-8"),
        "--format",
        "oci-archive",
    ]);
    let zstd = format!("{}/zstd:1", registry.addr());
    let copied = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .args(["--dest-compress-format", "zstd"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{zstd}"))
        .env_remove("REGISTRY_AUTH_FILE")
        .output()
        .expect("skopeo");
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );

    let user = Env::new();
    user.ok(&["image", "pull", "--quiet", &zstd]);
    let inspect = user.ok(&["image", "inspect", &zstd]);
    assert!(inspect.contains("zstd"), "not a zstd image: {inspect}");
    let manifest = user.manifest("z", &zstd);
    user.built(&manifest, "zimg", &[]);

    let missing = format!("{}/plain:nope", registry.addr());
    let out = user.run(&["image", "pull", "--quiet", &missing]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plain:nope") && err.contains(&registry.addr()),
        "{err}"
    );

    // nobody, with a home of their own, pulls into their own store.
    let home = user.path("nobody");
    std::fs::create_dir_all(&home).expect("mkdir");
    std::os::unix::fs::chown(&home, Some(common::NOBODY), Some(common::NOBODY)).expect("chown");
    std::fs::set_permissions(user.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let pulled = common::hafen_as_nobody(&home)
        .args(["image", "pull", "--quiet", &name])
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("HAFEN_CACHE")
        .output()
        .expect("hafen as nobody");
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let blobs = home.join("cache/hafen/blobs/sha256");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&blobs).expect("blobs"));
    assert_eq!(owner, common::NOBODY);
}
