//! `hafen image import`: an OCI image layout from a root filesystem
//! directory or tar, so images can be made offline.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use hafen_registry::Reference;

use crate::oci::{
    self, media, Descriptor, ImageConfig, ImageManifest, Index, RootFs, RunConfig, REF_NAME,
};
use crate::store::Store;
use crate::{Error, ImportOptions, ImportSummary};

/// gzip with a fixed header (mtime 0), so equal input gives equal output.
pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes)?;
    enc.finish()
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Decompresses gzip input; other input is returned as it is.
pub fn maybe_gunzip(bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
    if !is_gzip(&bytes) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice()).read_to_end(&mut out)?;
    Ok(out)
}

fn major_minor(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

/// A deterministic tar of a directory: sorted names, mtime 0, owners and
/// modes as on disk, hard links kept as links.
pub fn tar_directory(root: &Path) -> Result<Vec<u8>, Error> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    let err = |path: &Path| {
        let path = root.join(path);
        move |source: std::io::Error| Error::Input { path, source }
    };
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(err(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(err(&rel))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel_path = rel.join(&name);
            let full = root.join(&rel_path);
            let meta = std::fs::symlink_metadata(&full).map_err(err(&rel_path))?;
            let mut h = tar::Header::new_gnu();
            h.set_mode(meta.mode() & 0o7777);
            h.set_uid(u64::from(meta.uid()));
            h.set_gid(u64::from(meta.gid()));
            h.set_mtime(0);
            let ft = meta.file_type();
            let append = |b: &mut tar::Builder<Vec<u8>>, h: &mut tar::Header, data: &[u8]| {
                b.append_data(h, &rel_path, data)
            };
            if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                append(&mut builder, &mut h, &[]).map_err(err(&rel_path))?;
                subdirs.push(rel_path.clone());
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&full).map_err(err(&rel_path))?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                builder
                    .append_link(&mut h, &rel_path, &target)
                    .map_err(err(&rel_path))?;
            } else if ft.is_file() {
                let key = (meta.dev(), meta.ino());
                if meta.nlink() > 1 {
                    if let Some(first) = seen.get(&key) {
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        builder
                            .append_link(&mut h, &rel_path, first)
                            .map_err(err(&rel_path))?;
                        continue;
                    }
                    seen.insert(key, rel_path.clone());
                }
                let data = std::fs::read(&full).map_err(err(&rel_path))?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                append(&mut builder, &mut h, &data).map_err(err(&rel_path))?;
            } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                let (major, minor) = major_minor(meta.rdev());
                h.set_entry_type(if ft.is_char_device() {
                    tar::EntryType::Char
                } else if ft.is_block_device() {
                    tar::EntryType::Block
                } else {
                    tar::EntryType::Fifo
                });
                h.set_device_major(major as u32).map_err(err(&rel_path))?;
                h.set_device_minor(minor as u32).map_err(err(&rel_path))?;
                h.set_size(0);
                append(&mut builder, &mut h, &[]).map_err(err(&rel_path))?;
            }
            // Sockets are not image content.
        }
        // Depth-first in name order: push in reverse so the first name pops first.
        stack.extend(subdirs.into_iter().rev());
    }
    builder.into_inner().map_err(err(Path::new("")))
}

/// An imported image before it is written anywhere.
struct Made {
    layer_gz: Vec<u8>,
    config_json: Vec<u8>,
}

/// Reads `opts.rootfs`, checks it as `hafen build` would, and makes the
/// layer and config.
fn make(opts: &ImportOptions) -> Result<Made, Error> {
    let input = &opts.rootfs;
    let meta = std::fs::metadata(input).map_err(|source| Error::Input {
        path: input.clone(),
        source,
    })?;
    let layer_tar = if meta.is_dir() {
        tar_directory(input)?
    } else {
        let bytes = std::fs::read(input).map_err(|source| Error::Input {
            path: input.clone(),
            source,
        })?;
        maybe_gunzip(bytes).map_err(|source| Error::Input {
            path: input.clone(),
            source,
        })?
    };
    // Refuse what `hafen build` would refuse, now rather than later.
    let mut check = crate::tree::Tree::new();
    check
        .apply_layer(0, layer_tar.as_slice())
        .map_err(|source| Error::Layer {
            image: input.display().to_string(),
            digest: "(import)".into(),
            source,
        })?;

    for kv in &opts.env {
        if !kv.contains('=') || kv.starts_with('=') {
            return Err(Error::Invalid(format!("--env {kv:?} is not KEY=VALUE")));
        }
    }
    if let Some(dir) = &opts.workdir {
        if !dir.starts_with('/') {
            return Err(Error::Invalid(format!(
                "--workdir {dir:?} is not an absolute path"
            )));
        }
    }
    if let Some(bad) = opts.volumes.iter().find(|v| !v.starts_with('/')) {
        return Err(Error::Invalid(format!(
            "--volume {bad:?} is not an absolute path"
        )));
    }
    let diff_id = oci::digest_of(&layer_tar);
    let layer_gz = gzip(&layer_tar).map_err(|source| Error::Input {
        path: input.clone(),
        source,
    })?;
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: RunConfig {
            user: None,
            env: Some(crate::bundle::merge_env(&[], &opts.env)),
            entrypoint: opts.entrypoint.clone(),
            cmd: opts.cmd.clone(),
            working_dir: opts.workdir.clone(),
            healthcheck: None,
            volumes: (!opts.volumes.is_empty()).then(|| {
                opts.volumes
                    .iter()
                    .map(|v| (v.clone(), serde_json::json!({})))
                    .collect()
            }),
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
        // Builders on top of it (buildah, hafen image build) expect a
        // history entry for every layer.
        history: Some(vec![serde_json::json!({
            "created": "1970-01-01T00:00:00Z",
            "created_by": "hafen image import",
        })]),
    };
    let config_json = serde_json::to_vec(&config)
        .map_err(|e| Error::Invalid(format!("cannot encode the image config: {e}")))?;
    Ok(Made {
        layer_gz,
        config_json,
    })
}

fn manifest_json(config: Descriptor, layer: Descriptor) -> Result<Vec<u8>, Error> {
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media::MANIFEST.into()),
        config,
        layers: vec![layer],
    };
    serde_json::to_vec(&manifest)
        .map_err(|e| Error::Invalid(format!("cannot encode the image manifest: {e}")))
}

/// Makes an image from `opts.rootfs` in the local store, named `name`
/// (unnamed when `None`); `opts.layout` and `opts.tag` are not used.
pub fn import_into_store(
    opts: &ImportOptions,
    store: &Store,
    name: Option<&Reference>,
) -> Result<ImportSummary, Error> {
    let made = make(opts)?;
    let layer = store.put_blob(media::LAYER_GZIP, &made.layer_gz)?;
    let config = store.put_blob(media::CONFIG, &made.config_json)?;
    let desc = store.put_blob(media::MANIFEST, &manifest_json(config, layer)?)?;
    match name {
        Some(name) => store.tag(name, &desc)?,
        None => store.add_unnamed(&desc)?,
    }
    Ok(ImportSummary {
        layout: store.root().to_owned(),
        digest: desc.digest,
        tag: name.map(Reference::familiar),
        layer_bytes: made.layer_gz.len() as u64,
        stored: true,
    })
}

/// Makes (or adds to) an OCI image layout from `opts.rootfs`.
pub fn import(opts: &ImportOptions) -> Result<ImportSummary, Error> {
    let made = make(opts)?;
    let layout = &opts.layout;
    std::fs::create_dir_all(layout).map_err(|source| Error::Output {
        path: layout.clone(),
        source,
    })?;
    let layer = oci::write_blob(layout, media::LAYER_GZIP, &made.layer_gz)?;
    let config_desc = oci::write_blob(layout, media::CONFIG, &made.config_json)?;
    let mut desc: Descriptor =
        oci::write_blob(layout, media::MANIFEST, &manifest_json(config_desc, layer)?)?;

    let index_path = layout.join("index.json");
    let mut index = match std::fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice::<Index>(&bytes).map_err(|e| {
            Error::Invalid(format!(
                "{} is not a valid image index: {e}",
                index_path.display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index {
            schema_version: 2,
            media_type: Some(media::INDEX.into()),
            manifests: Vec::new(),
        },
        Err(source) => {
            return Err(Error::Input {
                path: index_path,
                source,
            })
        }
    };
    if let Some(tag) = &opts.tag {
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME) != Some(tag));
        desc.annotations = BTreeMap::from([(REF_NAME.to_owned(), tag.clone())]);
    }
    let digest = desc.digest.clone();
    index.manifests.push(desc);
    let index_json = serde_json::to_vec_pretty(&index)
        .map_err(|e| Error::Invalid(format!("cannot encode index.json: {e}")))?;
    oci::write_atomic(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    oci::write_atomic(&index_path, &index_json)?;
    Ok(ImportSummary {
        layout: layout.clone(),
        digest,
        tag: opts.tag.clone(),
        layer_bytes: made.layer_gz.len() as u64,
        stored: false,
    })
}
