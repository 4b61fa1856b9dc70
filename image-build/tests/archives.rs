//! Image archives and the local store against an oracle: Debian's
//! `skopeo` writes docker-archive (its legacy form), oci-archive and zstd
//! layouts that Hafen must read with the same layer digests and unpack to
//! the same tree; what `save` writes, skopeo must read back. The
//! Docker 25 form (an OCI layout plus manifest.json) is built here, as is
//! every hostile archive.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use hafen_image_build::archive::{self, ArchiveKind, ImageArchive, SaveFormat, SaveItem};
use hafen_image_build::manifest::parse_image_ref;
use hafen_image_build::oci::{self, media, Descriptor, ImageConfig, ImageManifest, Index};
use hafen_image_build::store::{Store, TMP_PREFIX};
use hafen_image_build::tree::Node;
use hafen_image_build::{flatten_image, import, open_image, ImportOptions};
use hafen_registry::Reference;
use serde_json::Value;

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo (apt-get install skopeo; scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A two-layer image in an OCI layout (tag `1`): busybox and a few files
/// with a hard link and a symlink, then a layer that deletes one file
/// (a whiteout) and adds another.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
        std::fs::create_dir_all(rootfs.join("etc")).expect("mkdir");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("symlink");
        std::fs::write(rootfs.join("etc/motd"), b"hello\n").expect("write");
        std::fs::write(rootfs.join("etc/gone"), b"deleted above\n").expect("write");
        std::fs::hard_link(rootfs.join("etc/motd"), rootfs.join("etc/motd2")).expect("link");
        let layout = dir.path().join("layout");
        import(&ImportOptions {
            rootfs,
            layout: layout.clone(),
            tag: Some("1".into()),
            entrypoint: None,
            cmd: Some(vec!["/bin/sh".into()]),
            env: vec!["PATH=/bin".into()],
            workdir: None,
            volumes: Vec::new(),
        })
        .expect("import");
        add_layer(
            &layout,
            &layer_tar(&[("etc/.wh.gone", b""), ("etc/added", b"new\n")]),
        );
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn layout(&self) -> PathBuf {
        self.path("layout")
    }

    fn source(&self) -> (ImageManifest, ImageConfig) {
        let opened = open_image(&self.image_ref("oci:layout:1"), &mut None).expect("source");
        (opened.image.manifest, opened.image.config)
    }

    fn image_ref(&self, text: &str) -> hafen_image_build::manifest::ImageRef {
        parse_image_ref(text, self.dir.path()).expect("image ref")
    }

    fn tree(&self, text: &str) -> BTreeMap<String, Node> {
        let opened = open_image(&self.image_ref(text), &mut None)
            .unwrap_or_else(|e| panic!("{text}: {}", hafen_image_build::error_chain(&e)));
        flatten_image(&opened)
            .unwrap_or_else(|e| panic!("{text}: {}", hafen_image_build::error_chain(&e)))
            .nodes
    }
}

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).expect("path");
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

/// Adds a gzip layer on top of the layout's only image.
fn add_layer(layout: &Path, tar: &[u8]) {
    let read = |digest: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(oci::digest_hex(digest).expect("hex")),
        )
        .expect("blob")
    };
    let mut index: Index =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
            .expect("json");
    let entry = &mut index.manifests[0];
    let mut manifest: ImageManifest = serde_json::from_slice(&read(&entry.digest)).expect("json");
    let mut config: Value = serde_json::from_slice(&read(&manifest.config.digest)).expect("json");
    let gz = hafen_image_build::import::gzip(tar).expect("gzip");
    manifest
        .layers
        .push(oci::write_blob(layout, media::LAYER_GZIP, &gz).expect("layer"));
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .expect("diff ids")
        .push(Value::String(oci::digest_of(tar)));
    let config = serde_json::to_vec(&config).expect("json");
    manifest.config = oci::write_blob(layout, media::CONFIG, &config).expect("config");
    let written = oci::write_blob(
        layout,
        media::MANIFEST,
        &serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("manifest");
    (entry.digest, entry.size) = (written.digest, written.size);
    oci::write_atomic(
        &layout.join("index.json"),
        &serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
}

fn store_is_clean(root: &Path) {
    for dir in [root.to_owned(), root.join("blobs/sha256")] {
        for e in std::fs::read_dir(&dir).expect("list").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(TMP_PREFIX), "temporary file left: {name}");
        }
    }
}

fn reference(s: &str) -> Reference {
    s.parse().expect("reference")
}

#[test]
fn skopeo_archives_build_the_same_tree_with_the_source_layer_digests() {
    let f = Fixture::new();
    let layout = format!("oci:{}:1", path_str(&f.layout()));
    let da = f.path("da.tar");
    let oa = f.path("oa.tar");
    skopeo(&[
        "copy",
        "-q",
        &layout,
        &format!("docker-archive:{}:busybox:1.36", path_str(&da)),
    ]);
    skopeo(&[
        "copy",
        "-q",
        &layout,
        &format!("oci-archive:{}:1", path_str(&oa)),
    ]);
    let (source, config) = f.source();
    assert_eq!(source.layers.len(), 2);

    let want = f.tree("oci:layout:1");
    assert!(want.contains_key("etc/added") && !want.contains_key("etc/gone"));
    for text in [
        "docker-archive:da.tar",
        "docker-archive:da.tar:busybox:1.36",
        "docker-archive:da.tar:docker.io/library/busybox:1.36",
        "docker-archive:da.tar:@0",
        "oci-archive:oa.tar:1",
        "oci-archive:oa.tar",
    ] {
        assert!(f.tree(text) == want, "{text} unpacks to another tree");
    }

    // docker-archive holds the uncompressed layers: their digests are the diff ids.
    let opened = open_image(&f.image_ref("docker-archive:da.tar"), &mut None).expect("open");
    let digests: Vec<&str> = opened
        .image
        .manifest
        .layers
        .iter()
        .map(|l| l.digest.as_str())
        .collect();
    assert_eq!(digests, config.rootfs.diff_ids);
    assert!(opened
        .image
        .manifest
        .layers
        .iter()
        .all(|l| l.media_type == media::LAYER_TAR));
    // oci-archive keeps the source's blobs.
    let opened = open_image(&f.image_ref("oci-archive:oa.tar:1"), &mut None).expect("open");
    assert_eq!(opened.image.manifest.layers, source.layers);

    let err = open_image(&f.image_ref("docker-archive:da.tar:busybox:2"), &mut None)
        .expect_err("no such name")
        .to_string();
    assert!(
        err.contains("busybox:2") && err.contains("it has: busybox:1.36"),
        "{err}"
    );

    // Loading both into a store: the names docker-archive carries, the same layers.
    let root = f.path("store");
    let store = Store::open(&root).expect("store");
    let loaded = archive::load(&store, &da).expect("load docker-archive");
    assert_eq!(loaded[0].names, [reference("busybox:1.36")]);
    let found = store.find(&reference("busybox:1.36")).expect("named");
    let layout = store.layout("busybox").expect("layout");
    let image = layout.resolve_descriptor(found).expect("whole");
    assert_eq!(
        image
            .manifest
            .layers
            .iter()
            .map(|l| l.digest.as_str())
            .collect::<Vec<_>>(),
        config.rootfs.diff_ids
    );
    let loaded = archive::load(&store, &oa).expect("load oci-archive");
    assert!(loaded[0].names.is_empty(), "a bare tag is no name");
    assert_eq!(
        loaded[0].config_digest.as_deref(),
        Some(source.config.digest.as_str())
    );
    // From the store, by name, the build sees the same tree.
    drop(store);
    let opened = hafen_image_build::stored_image(
        &Store::open(&root).expect("store"),
        &reference("busybox:1.36"),
        "busybox:1.36",
    )
    .expect("stored");
    assert!(flatten_image(&opened).expect("flatten").nodes == want);
    store_is_clean(&root);
}

#[test]
fn zstd_layers_unpack_to_the_same_tree_as_gzip() {
    let f = Fixture::new();
    skopeo(&[
        "copy",
        "-q",
        "--dest-compress-format",
        "zstd",
        &format!("oci:{}:1", path_str(&f.layout())),
        &format!("oci:{}:1", path_str(&f.path("zlayout"))),
    ]);
    let opened = open_image(&f.image_ref("oci:zlayout:1"), &mut None).expect("open");
    assert!(
        opened
            .image
            .manifest
            .layers
            .iter()
            .all(|l| l.media_type == media::LAYER_ZSTD),
        "{:?}",
        opened.image.manifest.layers
    );
    assert!(f.tree("oci:zlayout:1") == f.tree("oci:layout:1"));

    // And a zstd image saved as docker-archive is unpacked on the way, to
    // the diff ids skopeo reads back.
    let root = f.path("store");
    let store = Store::open(&root).expect("store");
    let desc = opened.image.manifest.clone();
    for blob in opened
        .layout
        .closure(&manifest_desc(&opened))
        .expect("closure")
    {
        let mut r = opened.layout.open_blob(&blob).expect("open");
        store
            .copy_blob(&blob.digest, blob.size, &mut r)
            .expect("copy");
    }
    store
        .tag(&reference("zbox:1"), &manifest_desc(&opened))
        .expect("tag");
    let out = f.path("z-docker.tar");
    archive::save(
        &store,
        &[SaveItem {
            name: Some(reference("zbox:1")),
            descriptor: store.find(&reference("zbox:1")).expect("find"),
        }],
        &out,
        SaveFormat::DockerArchive,
    )
    .expect("save");
    let inspect: Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("docker-archive:{}", path_str(&out)),
    ]))
    .expect("json");
    assert_eq!(
        inspect["Layers"],
        serde_json::json!(opened.image.config.rootfs.diff_ids)
    );
    assert_eq!(desc.layers.len(), 2);
}

/// The descriptor of a layout-backed image's manifest.
fn manifest_desc(opened: &hafen_image_build::OpenedImage) -> Descriptor {
    let oci::Files::Dir(dir) = opened.layout.files() else {
        panic!("a layout was expected")
    };
    let hex = oci::digest_hex(&opened.image.digest).expect("hex");
    let size = std::fs::metadata(dir.join("blobs/sha256").join(hex))
        .expect("manifest blob")
        .len();
    Descriptor {
        media_type: media::MANIFEST.into(),
        digest: opened.image.digest.clone(),
        size,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

/// Docker 25 writes an OCI layout plus docker's manifest.json; the OCI
/// manifest (its digest) is kept and RepoTags name it.
#[test]
fn a_docker_25_archive_keeps_its_oci_manifest_and_names() {
    let f = Fixture::new();
    // Docker 25 saves uncompressed layers (their digests are the diff ids).
    let layout = f.path("plain");
    let (source, config) = f.source();
    let opened = open_image(&f.image_ref("oci:layout:1"), &mut None).expect("source");
    let mut manifest = source.clone();
    for layer in &mut manifest.layers {
        let gz = opened.layout.read_blob(layer).expect("layer");
        let tar = hafen_image_build::import::maybe_gunzip(gz).expect("gunzip");
        *layer = oci::write_blob(&layout, media::LAYER_TAR, &tar).expect("blob");
    }
    let config_bytes = opened.layout.read_blob(&source.config).expect("config");
    oci::write_blob(&layout, media::CONFIG, &config_bytes).expect("config");
    let top = oci::write_blob(
        &layout,
        media::MANIFEST,
        &serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("manifest");
    let index = Index {
        schema_version: 2,
        media_type: Some(media::INDEX.into()),
        manifests: vec![top.clone()],
    };
    let mut docker_index = index.clone();
    docker_index.manifests[0].annotations = BTreeMap::from([
        (
            "io.containerd.image.name".to_owned(),
            "docker.io/library/busybox:1.36".to_owned(),
        ),
        (
            "org.opencontainers.image.ref.name".to_owned(),
            "1.36".to_owned(),
        ),
    ]);
    let blob_path = |d: &str| format!("blobs/sha256/{}", oci::digest_hex(d).expect("hex"));
    let docker_manifest = serde_json::json!([{
        "Config": blob_path(&manifest.config.digest),
        "RepoTags": ["busybox:1.36", "localhost:5000/app:2"],
        "Layers": manifest.layers.iter().map(|l| blob_path(&l.digest)).collect::<Vec<_>>(),
    }]);
    let path = f.path("d25.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).expect("create"));
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).expect("path");
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).expect("append");
    };
    for entry in std::fs::read_dir(layout.join("blobs/sha256"))
        .expect("list")
        .flatten()
    {
        let name = format!("blobs/sha256/{}", entry.file_name().to_string_lossy());
        add(&name, &std::fs::read(entry.path()).expect("blob"));
    }
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(
        "index.json",
        &serde_json::to_vec(&docker_index).expect("json"),
    );
    add(
        "manifest.json",
        &serde_json::to_vec(&docker_manifest).expect("json"),
    );
    b.finish().expect("finish");
    drop(b);

    let opened = ImageArchive::open(&path, "d25").expect("open");
    assert_eq!(opened.kind, ArchiveKind::DockerOci);
    assert_eq!(opened.images.len(), 1);
    assert_eq!(opened.images[0].descriptor.digest, top.digest);
    assert!(f.tree("docker-archive:d25.tar:localhost:5000/app:2") == f.tree("oci:layout:1"));
    // skopeo reads the same archive through its manifest.json.
    let inspect: Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("docker-archive:{}:busybox:1.36", path_str(&path)),
    ]))
    .expect("json");
    assert_eq!(inspect["Layers"], serde_json::json!(config.rootfs.diff_ids));
    assert_eq!(
        inspect["Layers"],
        serde_json::json!(manifest
            .layers
            .iter()
            .map(|l| &l.digest)
            .collect::<Vec<_>>())
    );
    skopeo(&[
        "copy",
        "-q",
        &format!("docker-archive:{}:busybox:1.36", path_str(&path)),
        &format!("oci:{}:x", path_str(&f.path("copied"))),
    ]);

    let root = f.path("store");
    let store = Store::open(&root).expect("store");
    archive::load(&store, &path).expect("load");
    for name in ["busybox:1.36", "localhost:5000/app:2"] {
        assert_eq!(
            store.find(&reference(name)).expect(name).digest,
            top.digest,
            "{name}"
        );
    }
    store_is_clean(&root);
}

#[test]
fn saved_archives_are_read_back_by_skopeo_and_by_load() {
    let f = Fixture::new();
    let root = f.path("store");
    let store = Store::open(&root).expect("store");
    let oa = f.path("oa.tar");
    skopeo(&[
        "copy",
        "-q",
        &format!("oci:{}:1", path_str(&f.layout())),
        &format!("oci-archive:{}:1", path_str(&oa)),
    ]);
    let loaded = archive::load(&store, &oa).expect("load");
    // A gzip image: docker-archive must hold it unpacked.
    store
        .tag(&reference("busybox:1.36"), &loaded[0].descriptor)
        .expect("tag");
    store
        .tag(&reference("localhost:5000/app:2"), &loaded[0].descriptor)
        .expect("tag");
    let (source, config) = f.source();
    let items: Vec<SaveItem> = ["busybox:1.36", "localhost:5000/app:2"]
        .iter()
        .map(|n| SaveItem {
            name: Some(reference(n)),
            descriptor: store.find(&reference(n)).expect("find"),
        })
        .collect();

    let docker = f.path("saved-docker.tar");
    archive::save(&store, &items, &docker, SaveFormat::DockerArchive).expect("save docker");
    for name in ["busybox:1.36", "localhost:5000/app:2"] {
        let inspect: Value = serde_json::from_str(&skopeo(&[
            "inspect",
            &format!("docker-archive:{}:{name}", path_str(&docker)),
        ]))
        .expect("json");
        assert_eq!(
            inspect["Layers"],
            serde_json::json!(config.rootfs.diff_ids),
            "{name}"
        );
    }
    // skopeo copies it whole (every digest checked) into a layout.
    skopeo(&[
        "copy",
        "-q",
        &format!("docker-archive:{}:busybox:1.36", path_str(&docker)),
        &format!("oci:{}:back", path_str(&f.path("back"))),
    ]);
    assert!(f.tree("oci:back:back") == f.tree("oci:layout:1"));

    let oci_out = f.path("saved-oci.tar");
    archive::save(&store, &items[..1], &oci_out, SaveFormat::OciArchive).expect("save oci");
    let inspect: Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("oci-archive:{}", path_str(&oci_out)),
    ]))
    .expect("json");
    assert_eq!(
        inspect["Layers"],
        serde_json::json!(source.layers.iter().map(|l| &l.digest).collect::<Vec<_>>())
    );
    // Saving is reproducible, and what was saved loads back under its names.
    let again = f.path("again.tar");
    archive::save(&store, &items, &again, SaveFormat::DockerArchive).expect("save again");
    assert!(std::fs::read(&again).expect("read") == std::fs::read(&docker).expect("read"));
    let other_root = f.path("other");
    let other = Store::open(&other_root).expect("store");
    let back = archive::load(&other, &docker).expect("load saved");
    assert_eq!(
        back[0].names,
        [reference("busybox:1.36"), reference("localhost:5000/app:2")]
    );
    let back = archive::load(&other, &oci_out).expect("load saved oci");
    assert_eq!(back[0].names, [reference("busybox:1.36")]);
    assert_eq!(
        other.find(&reference("busybox:1.36")).expect("find").digest,
        items[0].descriptor.digest,
        "the OCI archive keeps the manifest"
    );
    let leftovers: Vec<_> = std::fs::read_dir(f.dir.path())
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    store_is_clean(&root);
}

/// A tar with raw entry names (the tar crate's own setters refuse hostile ones).
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        let gnu = h.as_gnu_mut().expect("gnu");
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname = [0; 100];
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn hostile_archives_are_refused_naming_archive_and_entry_and_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    let store = Store::open(&root).expect("store");
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
    let manifest = |layer: &str| {
        format!(r#"[{{"Config":"c.json","RepoTags":["evil:1"],"Layers":["{layer}"]}}]"#)
    };
    use tar::EntryType::{Regular, Symlink};
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            raw_tar(&[
                ("c.json", Regular, "", config),
                (
                    "manifest.json",
                    Regular,
                    "",
                    manifest("../../etc/passwd").as_bytes(),
                ),
            ]),
            "../../etc/passwd",
            "\"..\"",
        ),
        (
            raw_tar(&[
                ("c.json", Regular, "", config),
                (
                    "manifest.json",
                    Regular,
                    "",
                    manifest("/etc/shadow").as_bytes(),
                ),
            ]),
            "/etc/shadow",
            "absolute path",
        ),
        (
            raw_tar(&[("../outside/manifest.json", Regular, "", b"[]")]),
            "../outside/manifest.json",
            "\"..\"",
        ),
        (
            raw_tar(&[
                ("c.json", Regular, "", config),
                ("l/layer.tar", Symlink, "../../../etc/passwd", b""),
                (
                    "manifest.json",
                    Regular,
                    "",
                    manifest("l/layer.tar").as_bytes(),
                ),
            ]),
            "l/layer.tar",
            "leaves the archive",
        ),
        (
            raw_tar(&[("blobs", Symlink, "/var/lib", b"")]),
            "blobs",
            "absolute path",
        ),
    ];
    for (i, (bytes, entry, reason)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("evil{i}.tar"));
        std::fs::write(&path, bytes).expect("write");
        let err =
            hafen_image_build::error_chain(&archive::load(&store, &path).expect_err("hostile"));
        assert!(
            err.contains(path_str(&path))
                && err.contains(&format!("{entry:?}"))
                && err.contains(reason),
            "case {i}: {err}"
        );
        let text = format!("docker-archive:evil{i}.tar");
        let err = open_image(&parse_image_ref(&text, dir.path()).expect("ref"), &mut None)
            .expect_err("hostile build input");
        assert!(
            hafen_image_build::error_chain(&err).contains(entry),
            "case {i}"
        );
    }
    assert!(store.images().expect("images").is_empty());
    let blobs = std::fs::read_dir(root.join("blobs/sha256"))
        .expect("list")
        .count();
    assert_eq!(blobs, 0, "nothing of a refused archive is stored");
    store_is_clean(&root);
}

/// A layer whose bytes differ from what the config says: the build says
/// which blob is corrupt, and load stores neither the bad blob nor a name.
#[test]
fn a_corrupt_layer_in_a_docker_archive_is_refused_and_never_stored() {
    let f = Fixture::new();
    let da = f.path("da.tar");
    skopeo(&[
        "copy",
        "-q",
        &format!("oci:{}:1", path_str(&f.layout())),
        &format!("docker-archive:{}:busybox:1.36", path_str(&da)),
    ]);
    let (_, config) = f.source();
    let bad_diff = config.rootfs.diff_ids[0].clone();
    // Flip one byte inside the first layer's data, in place.
    let archive = archive::Archive::open(&da).expect("open");
    let layer = format!("{}.tar", oci::digest_hex(&bad_diff).expect("hex"));
    assert!(
        archive.contains(&layer),
        "skopeo's layout changed: no {layer}"
    );
    let mut bytes = std::fs::read(&da).expect("read");
    let needle = b"hello\n";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("motd content in the archive");
    bytes[at] = b'j';
    let mut file = std::fs::File::create(&da).expect("rewrite");
    file.write_all(&bytes).expect("write");
    drop(file);

    let opened = open_image(&f.image_ref("docker-archive:da.tar"), &mut None).expect("open");
    let err = hafen_image_build::error_chain(&flatten_image(&opened).expect_err("corrupt"));
    assert!(
        err.contains(&bad_diff) && err.contains("hashes to"),
        "{err}"
    );

    let root = f.path("store");
    let store = Store::open(&root).expect("store");
    let err = hafen_image_build::error_chain(&archive::load(&store, &da).expect_err("corrupt"));
    assert!(err.contains(&bad_diff), "{err}");
    assert!(
        !store.has_blob(&bad_diff),
        "the bad blob never enters the store"
    );
    assert!(
        store.images().expect("images").is_empty(),
        "no name for a broken image"
    );
    store_is_clean(&root);
}
