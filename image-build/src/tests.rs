//! Builds from real (small) OCI layouts made by `import`, on temp dirs.

use super::*;
use hafen_proto::annotations;

/// A minimal 64-bit ELF header with no program headers: "static".
fn fake_static_init() -> Vec<u8> {
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf
}

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("hafen-build-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs/bin")).expect("mkdir");
        std::fs::write(dir.join("rootfs/bin/tool"), b"#!/bin/sh\necho tool\n").expect("write");
        std::fs::hard_link(dir.join("rootfs/bin/tool"), dir.join("rootfs/bin/tool2"))
            .expect("link");
        std::os::unix::fs::symlink("tool", dir.join("rootfs/bin/sh")).expect("symlink");
        std::fs::write(dir.join("vmlinux"), b"not really a kernel").expect("write");
        std::fs::write(dir.join("init"), fake_static_init()).expect("write");
        import(&ImportOptions {
            rootfs: dir.join("rootfs"),
            layout: dir.join("images/base"),
            tag: Some("1".into()),
            entrypoint: None,
            cmd: Some(vec!["/bin/sh".into()]),
            env: vec!["PATH=/bin".into()],
            workdir: None,
            volumes: Vec::new(),
        })
        .expect("import");
        Fixture { dir }
    }

    fn manifest(&self, text: &str) -> PathBuf {
        let path = self.dir.join("hafen.toml");
        std::fs::write(&path, text).expect("write manifest");
        path
    }

    fn build(&self, manifest: &Path, out: &str) -> Result<BuildSummary, Error> {
        build(&BuildOptions {
            manifest: manifest.to_owned(),
            out: self.dir.join(out),
            kernel: Some(self.dir.join("vmlinux")),
            init: Some(self.dir.join("init")),
            pull: false,
        })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const MANIFEST: &str = r#"
name = "t"
hostname = "box"
main = "two"
[[container]]
name = "one"
image = "oci:images/base:1"
command = ["/bin/tool"]
phase = "once"
log_size = "512k"
[[container]]
name = "two"
image = "oci:images/base:1"
"#;

/// The cpio archive of the image directory `dir`: the initramfs its
/// image.json names, decompressed when it is LZ4.
fn read_initramfs(dir: &Path) -> Result<Vec<u8>, Error> {
    let input = |path: PathBuf| move |source| Error::Input { path, source };
    let info_path = dir.join(IMAGE_INFO_FILE);
    let info = std::fs::read(&info_path).map_err(input(info_path.clone()))?;
    let info: ImageInfo = serde_json::from_slice(&info)
        .map_err(|e| Error::Invalid(format!("{}: {e}", info_path.display())))?;
    let path = dir.join(&info.initrd);
    let bytes = std::fs::read(&path).map_err(input(path.clone()))?;
    if info.initrd.ends_with(".lz4") {
        cpio::unlz4_legacy(&bytes).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    } else {
        Ok(bytes)
    }
}

fn unpack(out: &Path) -> Vec<cpio::Parsed> {
    let raw = read_initramfs(out).expect("initramfs");
    cpio::parse(&raw).expect("valid cpio")
}

#[test]
fn builds_are_byte_identical_and_hold_what_the_guest_needs() {
    let f = Fixture::new("repro");
    let m = f.manifest(MANIFEST);
    let summary = f.build(&m, "a").expect("build a");
    assert_eq!(summary.containers, ["one", "two"]);
    assert_eq!(
        summary.images.len(),
        1,
        "one image shared by two containers"
    );
    f.build(&m, "b").expect("build b");
    for file in [INITRAMFS_RAW, IMAGE_INFO_FILE, "vmlinux"] {
        assert_eq!(
            std::fs::read(f.dir.join("a").join(file)).expect("a"),
            std::fs::read(f.dir.join("b").join(file)).expect("b"),
            "{file} differs"
        );
    }

    let entries = unpack(&f.dir.join("a"));
    let get = |p: &str| {
        entries
            .iter()
            .find(|e| e.path == p)
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    let console = get("dev/console");
    assert_eq!(
        (console.mode & 0o170000, console.rdev),
        (cpio::kind::CHAR, (5, 1))
    );
    assert_eq!(get("init").data, fake_static_init());
    assert_eq!(get("init").mode & 0o777, 0o755);
    assert_eq!(get("etc/hostname").data, b"box\n");
    assert!(get("etc/os-release").data.starts_with(b"NAME=\"Hafen\""));
    let config: hafen_proto::spec::Spec =
        serde_json::from_slice(&get("etc/hafen/containers/one/config.json").data).expect("spec");
    // The default profile travels compiled beside it, for PID 1 to load as is.
    let profile = config.linux.as_ref().and_then(|l| l.seccomp.as_ref());
    assert_eq!(
        get("etc/hafen/containers/one/seccomp.bpf").data,
        hafen_proto::seccomp::compile(profile.expect("the default profile"))
            .expect("compiles")
            .to_bytes()
    );
    assert_eq!(config.process.clone().expect("process").args, ["/bin/tool"]);
    let annotation =
        |a: &std::collections::BTreeMap<String, String>, key: &str| a.get(key).cloned();
    let two: hafen_proto::spec::Spec =
        serde_json::from_slice(&get("etc/hafen/containers/two/config.json").data).expect("spec");
    use hafen_proto::annotations::{IMAGE, LOG_SIZE, MAIN};
    assert_eq!(
        [IMAGE, MAIN, LOG_SIZE].map(|k| annotation(&config.annotations, k)),
        [
            Some("oci:images/base:1".into()),
            None,
            Some("524288".into())
        ],
        "one: image as written, not main, its log size in bytes"
    );
    assert_eq!(
        [IMAGE, MAIN, LOG_SIZE].map(|k| annotation(&two.annotations, k)),
        [Some("oci:images/base:1".into()), Some("true".into()), None],
        "two: main, the guest's default log size"
    );
    let lower = config.annotations["org.hafen.lower-dirs"].clone();
    let image_root = lower.trim_start_matches('/');
    assert!(
        image_root.starts_with("var/lib/hafen/images/sha256-"),
        "{lower}"
    );
    assert_eq!(
        get("etc/hafen/containers/two/rootfs").mode & 0o170000,
        cpio::kind::DIR
    );
    // Hard links share an inode, the data travels once, and nlink counts both.
    let tool = get(&format!("{image_root}/bin/tool"));
    let tool2 = get(&format!("{image_root}/bin/tool2"));
    assert_eq!(tool.ino, tool2.ino);
    assert_eq!((tool.nlink, tool2.nlink), (2, 2));
    assert_eq!(
        tool.data.len() + tool2.data.len(),
        b"#!/bin/sh\necho tool\n".len()
    );
    assert_eq!(get(&format!("{image_root}/bin/sh")).data, b"tool");
    // Parents come before children (the kernel creates them in order).
    let pos = |p: &str| entries.iter().position(|e| e.path == p).expect("present");
    assert!(
        pos("etc") < pos("etc/hafen")
            && pos("etc/hafen") < pos("etc/hafen/containers/one/config.json")
    );
    let info: ImageInfo =
        serde_json::from_slice(&std::fs::read(f.dir.join("a/image.json")).expect("read"))
            .expect("image.json");
    assert_eq!(info.name, "t");
    // Without volumes or data_size, image.json says nothing about a data disk.
    assert_eq!((info.volumes.len(), info.data_size), (0, None));
    let text = std::fs::read_to_string(f.dir.join("a/image.json")).expect("read");
    assert!(
        !text.contains("volumes") && !text.contains("data_size") && !text.contains("network"),
        "{text}"
    );
    // Every image tells PID 1 about its network, defaults included.
    let network: hafen_proto::net::NetworkConfig =
        serde_json::from_slice(&get("etc/hafen/network.json").data).expect("network.json");
    assert_eq!(
        network
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert!(!network.outbound);
    assert!(!config.annotations.contains_key(annotations::VOLUMES));
}

#[test]
fn a_failed_build_leaves_no_output_and_keeps_the_previous_one() {
    let f = Fixture::new("atomic");
    let good = f.manifest(MANIFEST);
    f.build(&good, "out").expect("first build");
    let before = std::fs::read(f.dir.join("out").join(INITRAMFS_RAW)).expect("read");
    let bad =
        f.manifest(&MANIFEST.replace("images/base:1\"\ncommand", "images/base:nope\"\ncommand"));
    let err = f.build(&bad, "out").expect_err("missing tag").to_string();
    assert!(err.contains("container one"), "{err}");
    assert_eq!(
        std::fs::read(f.dir.join("out").join(INITRAMFS_RAW)).expect("still there"),
        before
    );
    let err = f.build(&bad, "fresh").expect_err("missing tag");
    assert!(
        !f.dir.join("fresh").exists(),
        "{err}: no half-written output"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&f.dir)
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary directories removed");
}

#[test]
fn a_corrupt_layer_is_named() {
    let f = Fixture::new("corrupt");
    let m = f.manifest(MANIFEST);
    let blobs = f.dir.join("images/base/blobs/sha256");
    // The largest blob is the layer.
    let layer = std::fs::read_dir(&blobs)
        .expect("ls")
        .flatten()
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a blob")
        .path();
    let mut bytes = std::fs::read(&layer).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&layer, bytes).expect("write");
    let err = f.build(&m, "out").expect_err("corrupt layer");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(
        chain.contains("corrupt")
            && chain.contains(
                &layer
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .to_string()
            ),
        "{chain}"
    );
}

#[test]
fn a_dynamic_init_or_missing_kernel_is_explained() {
    assert_eq!(is_static_elf(&fake_static_init()), Ok(true));
    let mut dynamic = fake_static_init();
    // One program header of type PT_INTERP right after the ELF header.
    dynamic[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    dynamic[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    dynamic[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    dynamic.extend_from_slice(&[3, 0, 0, 0]);
    dynamic.resize(64 + 56, 0);
    assert_eq!(is_static_elf(&dynamic), Ok(false));
    assert!(is_static_elf(b"#!/bin/sh").is_err());
    let f = Fixture::new("init");
    std::fs::write(f.dir.join("init"), &dynamic).expect("write");
    let err = f
        .build(&f.manifest(MANIFEST), "out")
        .expect_err("dynamic")
        .to_string();
    assert!(
        err.contains("dynamically linked") && err.contains("x86_64-unknown-linux-musl"),
        "{err}"
    );
    let err = locate_kernel(Some(Path::new("/nonexistent/kernel")))
        .expect_err("missing")
        .to_string();
    assert!(err.contains("kernel-config/build.sh"), "{err}");
}

#[test]
fn import_refuses_hostile_tars_and_bad_arguments() {
    let f = Fixture::new("import");
    let evil = tree::tests::tar_of(&[tree::tests::E::File("../../etc/cron.d/evil", b"x")]);
    std::fs::write(f.dir.join("evil.tar"), evil).expect("write");
    let opts = |rootfs: PathBuf, env: Vec<String>| ImportOptions {
        rootfs,
        layout: f.dir.join("images/evil"),
        tag: None,
        entrypoint: None,
        cmd: None,
        env,
        workdir: None,
        volumes: Vec::new(),
    };
    let err = import(&opts(f.dir.join("evil.tar"), vec![])).expect_err("hostile");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(chain.contains("\"..\""), "{chain}");
    let err = import(&opts(f.dir.join("rootfs"), vec!["NOVALUE".into()]))
        .expect_err("bad env")
        .to_string();
    assert!(err.contains("NOVALUE"), "{err}");
    // Re-importing a tag replaces it rather than adding a second entry.
    let again = ImportOptions {
        layout: f.dir.join("images/base"),
        tag: Some("1".into()),
        ..opts(f.dir.join("rootfs"), vec![])
    };
    import(&again).expect("re-import");
    let index: oci::Index =
        serde_json::from_slice(&std::fs::read(f.dir.join("images/base/index.json")).expect("read"))
            .expect("json");
    assert_eq!(index.manifests.len(), 1);
}

#[test]
fn supervision_keys_reach_the_bundles_and_healthy_needs_a_check() {
    let f = Fixture::new("supervision");
    let without_check = r#"
name = "t"
[[container]]
name = "db"
image = "oci:images/base:1"
[[container]]
name = "migrate"
image = "oci:images/base:1"
phase = "once"
required = true
restart = "on-failure:3"
depends_on = { db = "healthy" }
"#;
    let m = f.manifest(without_check);
    let err = f
        .build(&m, "out")
        .expect_err("db has no health check")
        .to_string();
    assert!(
        err.contains("hafen.toml: container[1].depends_on:")
            && err.contains("db has no health check")
            && err.contains("container \"migrate\""),
        "{err}"
    );
    assert!(!f.dir.join("out").exists(), "nothing written: {err}");

    let with_check = without_check.replace(
        "name = \"db\"\n",
        "name = \"db\"\nhealthcheck = { test = [\"CMD\", \"/bin/tool\"], interval = \"2s\" }\n",
    );
    let m = f.manifest(&with_check);
    f.build(&m, "out").expect("db has a check now");
    let entries = unpack(&f.dir.join("out"));
    let annotations = |name: &str| {
        let path = format!("etc/hafen/containers/{name}/config.json");
        let entry = entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} missing"));
        serde_json::from_slice::<hafen_proto::spec::Spec>(&entry.data)
            .expect("spec")
            .annotations
    };
    use hafen_proto::annotations::{DEPENDS_ON, HEALTHCHECK, REQUIRED, RESTART};
    let db = annotations("db");
    assert_eq!(
        db.get(HEALTHCHECK).map(String::as_str),
        Some(r#"{"Test":["CMD","/bin/tool"],"Interval":2000000000}"#)
    );
    assert!(
        [DEPENDS_ON, REQUIRED, RESTART]
            .iter()
            .all(|k| !db.contains_key(*k)),
        "{db:?}"
    );
    let migrate = annotations("migrate");
    assert_eq!(
        [RESTART, DEPENDS_ON, REQUIRED].map(|k| migrate.get(k).cloned()),
        [
            Some("on-failure:3".into()),
            Some("db=healthy".into()),
            Some("true".into())
        ]
    );
    assert!(!migrate.contains_key(HEALTHCHECK), "{migrate:?}");
}

/// Gives the image in `layout` (its only one) `Volumes`, as a Dockerfile's
/// `VOLUME` lines would: a new config blob, manifest blob and index entry.
fn add_image_volumes(layout: &Path, paths: &[&str]) {
    let blob = |digest: &str| {
        let hex = oci::digest_hex(digest).expect("digest");
        std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob")
    };
    let mut index: oci::Index =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
            .expect("index json");
    let entry = &mut index.manifests[0];
    let mut manifest: oci::ImageManifest =
        serde_json::from_slice(&blob(&entry.digest)).expect("manifest");
    let mut config: oci::ImageConfig =
        serde_json::from_slice(&blob(&manifest.config.digest)).expect("config");
    config.config.volumes = Some(
        paths
            .iter()
            .map(|p| ((*p).to_owned(), serde_json::json!({})))
            .collect(),
    );
    let config = serde_json::to_vec(&config).expect("encode config");
    manifest.config = oci::write_blob(layout, oci::media::CONFIG, &config).expect("config blob");
    let manifest = serde_json::to_vec(&manifest).expect("encode manifest");
    let written = oci::write_blob(layout, oci::media::MANIFEST, &manifest).expect("manifest blob");
    (entry.digest, entry.size) = (written.digest, written.size);
    let index = serde_json::to_vec(&index).expect("encode index");
    oci::write_atomic(&layout.join("index.json"), &index).expect("index");
}

#[test]
fn volumes_tmpfs_and_image_volumes_reach_the_bundles_and_image_json() {
    let f = Fixture::new("volumes");
    add_image_volumes(
        &f.dir.join("images/base"),
        &["/var/log", "/data", "/cache/"],
    );
    let m = f.manifest(
        r#"
name = "t"
data_size = "2G"
[[volume]]
name = "db"
[[volume]]
name = "config"
[[volume]]
name = "unused"
[[container]]
name = "seed"
image = "oci:images/base:1"
volumes = ["db:/data", "config:/etc/app:ro"]
tmpfs = ["/cache:size=16m,mode=0755"]
[[container]]
name = "reader"
image = "oci:images/base:1"
read_only = true
volumes_from = ["seed:ro"]
"#,
    );
    f.build(&m, "a").expect("build a");
    f.build(&m, "b").expect("build b");
    for file in [INITRAMFS_RAW, IMAGE_INFO_FILE] {
        assert_eq!(
            std::fs::read(f.dir.join("a").join(file)).expect("a"),
            std::fs::read(f.dir.join("b").join(file)).expect("b"),
            "{file} differs between two builds"
        );
    }
    let entries = unpack(&f.dir.join("a"));
    let spec = |name: &str| {
        let path = format!("etc/hafen/containers/{name}/config.json");
        let entry = entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} missing"));
        serde_json::from_slice::<hafen_proto::spec::Spec>(&entry.data).expect("spec")
    };
    let added = |spec: &hafen_proto::spec::Spec| -> Vec<String> {
        spec.mounts[bundle::default_mounts().len()..]
            .iter()
            // The network's files, which every container gets, come last.
            .filter(|m| {
                !m.source
                    .as_deref()
                    .is_some_and(|s| s.starts_with(hafen_proto::net::NET_DIR))
            })
            .map(|m| {
                format!(
                    "{} {} {} {}",
                    m.destination,
                    m.kind.as_deref().unwrap_or("-"),
                    m.source.as_deref().unwrap_or("-"),
                    m.options.join(",")
                )
            })
            .collect()
    };
    let log = manifest::anonymous_volume_name("seed", "/var/log");
    let reader_log = manifest::anonymous_volume_name("reader", "/var/log");
    let reader_cache = manifest::anonymous_volume_name("reader", "/cache");
    let seed = spec("seed");
    assert_eq!(
        added(&seed),
        [
            "/data bind /run/hafen/data/volumes/db rbind,rprivate,nosuid,nodev".to_owned(),
            "/cache tmpfs tmpfs nosuid,nodev,noexec,mode=0755,size=16m".to_owned(),
            "/etc/app bind /run/hafen/data/volumes/config rbind,rprivate,ro,nosuid,nodev"
                .to_owned(),
            format!("/var/log bind /run/hafen/data/volumes/{log} rbind,rprivate,nosuid,nodev"),
        ],
        "the image's /data and /cache are replaced by the manifest's mounts; shallower paths first"
    );
    let mut names = ["config".to_owned(), "db".to_owned(), log.clone()];
    names.sort();
    assert_eq!(seed.annotations[annotations::VOLUMES], names.join(","));
    let reader = spec("reader");
    assert_eq!(
        added(&reader),
        [
            "/data bind /run/hafen/data/volumes/db rbind,rprivate,ro,nosuid,nodev".to_owned(),
            format!(
                "/cache bind /run/hafen/data/volumes/{reader_cache} rbind,rprivate,nosuid,nodev"
            ),
            "/etc/app bind /run/hafen/data/volumes/config rbind,rprivate,ro,nosuid,nodev"
                .to_owned(),
            format!("/var/log bind /run/hafen/data/volumes/{log} rbind,rprivate,ro,nosuid,nodev"),
        ],
        "seed's volumes read-only, not its tmpfs: the image's /cache stays an anonymous volume"
    );
    assert!(!added(&reader).iter().any(|m| m.contains(&reader_log)));
    assert!(reader.root.as_ref().expect("root").readonly);

    let info: ImageInfo =
        serde_json::from_slice(&std::fs::read(f.dir.join("a/image.json")).expect("read"))
            .expect("image.json");
    let mut all = vec![
        "config".to_owned(),
        "db".to_owned(),
        log.clone(),
        reader_cache.clone(),
    ];
    all.sort();
    assert_eq!(
        info.volumes, all,
        "every mounted data-disk volume, not the unused one"
    );
    assert_eq!(info.data_size, Some(2 << 30));
}

#[test]
fn published_ports_reach_image_json_and_the_network_plan_reaches_the_guest() {
    let f = Fixture::new("network");
    let m = f.manifest(
        r#"
name = "t"
[network]
outbound = true
subnet = "10.9.0.0/16"
[[container]]
name = "web"
image = "oci:images/base:1"
ports = ["8080:80", "0.0.0.0:5353:53/udp"]
aliases = ["www"]
[[container]]
name = "proxy"
image = "oci:images/base:1"
network = "host"
ports = ["9000:90"]
"#,
    );
    f.build(&m, "out").expect("build");
    let manifest = manifest::load(&m).expect("manifest");
    let entries = unpack(&f.dir.join("out"));
    let json = &entries
        .iter()
        .find(|e| e.path == "etc/hafen/network.json")
        .expect("network.json")
        .data;
    let network: hafen_proto::net::NetworkConfig = serde_json::from_slice(json).expect("parse");
    assert_eq!(network, manifest.network);
    let web = network.containers[0].address.expect("web's address");
    assert_eq!(web.octets()[..2], [10, 9]);
    // Each container's /etc/hosts, resolv.conf and hostname, for PID 1 to bind.
    let file = |path: String| {
        let entry = entries.iter().find(|e| e.path == path);
        String::from_utf8(
            entry
                .unwrap_or_else(|| panic!("{path} missing"))
                .data
                .clone(),
        )
        .expect("text")
    };
    let hosts = file("etc/hafen/net/proxy/hosts".into());
    assert!(hosts.contains(&format!("{web}\tweb www\n")), "{hosts}");
    assert_eq!(file("etc/hafen/net/web/hostname".into()), "web\n");
    assert_eq!(
        file("etc/hafen/net/web/resolv.conf".into()),
        format!("nameserver {}\n", network.dns)
    );

    let info: ImageInfo =
        serde_json::from_slice(&std::fs::read(f.dir.join("out/image.json")).expect("read"))
            .expect("image.json");
    let n = &info.network;
    assert_eq!(
        (n.subnet.to_string(), n.prefix, n.outbound),
        ("10.9.0.0".to_owned(), 16, true)
    );
    assert_eq!(
        n.ports
            .iter()
            .map(|p| format!("{} {} {}", p.container, p.address, p.port))
            .collect::<Vec<_>>(),
        [
            format!("web {web} 127.0.0.1:8080->80/tcp"),
            format!("web {web} 0.0.0.0:5353->53/udp"),
            "proxy 10.9.0.15 127.0.0.1:9000->90/tcp".to_owned(),
        ]
    );
}

#[test]
fn small_initramfs_is_stored_as_it_is_and_large_ones_compressed() {
    let small = b"070701 a small archive".to_vec();
    assert_eq!(initramfs_file(small.clone()), (INITRAMFS_RAW, small));
    // Over the limit: LZ4 in the kernel's legacy framing, which unpacks to
    // the same archive.
    let large: Vec<u8> = (0..RAW_INITRAMFS_MAX + 1)
        .map(|i| (i % 251) as u8)
        .collect();
    let (name, packed) = initramfs_file(large.clone());
    assert_eq!(name, INITRAMFS_LZ4);
    assert!(packed.len() < large.len());
    assert_eq!(cpio::unlz4_legacy(&packed).expect("unpacks"), large);
}

#[test]
fn the_initramfs_is_read_by_the_name_image_json_gives() {
    let f = Fixture::new("readback");
    let m = f.manifest(MANIFEST);
    f.build(&m, "out").expect("build");
    let out = f.dir.join("out");
    let info: ImageInfo =
        serde_json::from_slice(&std::fs::read(out.join(IMAGE_INFO_FILE)).expect("info"))
            .expect("image.json");
    assert_eq!(
        info.initrd, INITRAMFS_RAW,
        "a small image is stored as it is"
    );
    assert!(!out.join(INITRAMFS_LZ4).exists());
    let archive = read_initramfs(&out).expect("read");
    assert_eq!(
        archive,
        std::fs::read(out.join(INITRAMFS_RAW)).expect("raw")
    );
    // The same archive, compressed and named so, reads back the same.
    std::fs::write(out.join(INITRAMFS_LZ4), cpio::lz4_legacy(&archive)).expect("write");
    let renamed = std::fs::read_to_string(out.join(IMAGE_INFO_FILE))
        .expect("info")
        .replace(INITRAMFS_RAW, INITRAMFS_LZ4);
    std::fs::write(out.join(IMAGE_INFO_FILE), renamed).expect("write info");
    std::fs::remove_file(out.join(INITRAMFS_RAW)).expect("remove raw");
    assert_eq!(read_initramfs(&out).expect("read lz4"), archive);
}

#[test]
fn images_get_the_mount_points_every_container_mounts_over() {
    let f = Fixture::new("stubs");
    let m = f.manifest(MANIFEST);
    f.build(&m, "out").expect("build");
    let entries = unpack(&f.dir.join("out"));
    let image_root = entries
        .iter()
        .find(|e| e.path.starts_with("var/lib/hafen/images/sha256-") && e.path.ends_with("/bin"))
        .map(|e| e.path.trim_end_matches("/bin").to_owned())
        .expect("the image's directory");
    let kind = |p: &str| {
        entries
            .iter()
            .find(|e| e.path == format!("{image_root}/{p}"))
            .map(|e| (e.mode & cpio::kind::MASK, e.data.len(), e.uid))
    };
    // The image has only bin/: the container's own /proc, /dev and /sys
    // and the network files it gets are there now, empty and root's.
    for dir in ["proc", "dev", "sys", "etc"] {
        assert_eq!(kind(dir), Some((cpio::kind::DIR, 0, 0)), "{dir}");
    }
    for file in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
        assert_eq!(kind(file), Some((cpio::kind::FILE, 0, 0)), "{file}");
    }
    // ...and nothing for mounts not every container has.
    assert_eq!(kind("dev/pts"), None);
}

#[test]
fn mount_point_stubs_keep_what_the_image_has() {
    let stubs = MOUNT_POINT_STUBS;
    let mut items = BTreeMap::new();
    items.insert("img".to_owned(), Item::dir(0o755));
    let mut etc = Item::file(0o777, b"elsewhere".to_vec());
    etc.mode = cpio::kind::SYMLINK | 0o777;
    items.insert("img/etc".to_owned(), etc);
    items.insert("img/proc".to_owned(), Item::file(0o600, b"odd".to_vec()));
    add_mount_points(&mut items, "img", 100_000, &stubs);
    // A symlinked /etc gets nothing below it; an existing /proc stays as is.
    assert!(!items.contains_key("img/etc/hosts"));
    assert_eq!(items["img/proc"].data.as_slice(), b"odd");
    // The rest is added, owned by the (shifted) container root.
    for dir in ["img/dev", "img/sys"] {
        assert_eq!(items[dir].mode, cpio::kind::DIR | 0o755);
        assert_eq!((items[dir].uid, items[dir].gid), (100_000, 100_000));
    }
    // Only the stubs asked for.
    let mut none = BTreeMap::new();
    none.insert("img".to_owned(), Item::dir(0o755));
    add_mount_points(&mut none, "img", 0, &stubs[..1]);
    assert_eq!(none.keys().collect::<Vec<_>>(), ["img", "img/proc"]);
}
