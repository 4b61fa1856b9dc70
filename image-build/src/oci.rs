//! OCI image layouts: reading an image with every blob verified (sha256 and
//! size), and writing blobs atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use hafen_proto::supervision::Healthcheck;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Media types Hafen reads and writes.
pub mod media {
    /// OCI image index.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Uncompressed layer.
    pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// gzip layer.
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// zstd layer (not supported yet).
    pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker's manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker's manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker's gzip layer.
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// The annotation holding an image's tag in index.json.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Reading an image failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A file of the layout could not be read.
    #[error("image {image}: cannot read {}", path.display())]
    Read {
        /// The image reference.
        image: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document is malformed.
    #[error("image {image}: {} is not a valid {what}", path.display())]
    Json {
        /// The image reference.
        image: String,
        /// The file.
        path: PathBuf,
        /// What it should be.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A blob's content does not match its descriptor.
    #[error(
        "image {image}: blob {digest} is corrupt: {detail}; re-create or re-download the image"
    )]
    Corrupt {
        /// The image reference.
        image: String,
        /// The blob's digest.
        digest: String,
        /// Size or digest mismatch.
        detail: String,
    },
    /// The layout cannot be used as asked.
    #[error("image {image}: {message}")]
    Unusable {
        /// The image reference.
        image: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Writing the layout failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:HEX`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform, in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An index entry's platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
}

/// index.json, or a nested image index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Images.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// An image config (the parts Hafen uses).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// How to run it.
    #[serde(default)]
    pub config: RunConfig,
    /// Layer diff ids.
    #[serde(default)]
    pub rootfs: RootFs,
}

/// The image's defaults for running it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunConfig {
    /// `uid[:gid]` or a user name.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `KEY=value` pairs.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    /// The image's health check (docker's `Healthcheck`); an empty `Test`
    /// means none.
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<Healthcheck>,
    /// Paths the image declares as volumes (Dockerfile `VOLUME`): a map
    /// from path to an empty object. Each becomes an anonymous volume.
    #[serde(rename = "Volumes", default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
}

/// The image's layer list.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// sha256 of each uncompressed layer.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// An image resolved from a layout, every blob read so far verified.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest's digest (`sha256:HEX`): names the image in the guest.
    pub digest: String,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The config.
    pub config: ImageConfig,
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
    image: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:HEX` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// The hex part of a `sha256:HEX` digest, checked.
pub fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

impl Layout {
    /// Opens a layout; `image` is the reference, used in error messages.
    pub fn open(dir: &Path, image: &str) -> Result<Layout, OciError> {
        let layout = Layout {
            dir: dir.to_owned(),
            image: image.to_owned(),
        };
        let marker = dir.join("oci-layout");
        if !marker.is_file() {
            return Err(layout.unusable(format!(
                "{} is not an OCI image layout (no oci-layout file); make one with `hafen image import`",
                dir.display()
            )));
        }
        Ok(layout)
    }

    fn unusable(&self, message: String) -> OciError {
        OciError::Unusable {
            image: self.image.clone(),
            message,
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        bytes: &[u8],
        what: &'static str,
    ) -> Result<T, OciError> {
        serde_json::from_slice(bytes).map_err(|source| OciError::Json {
            image: self.image.clone(),
            path: path.to_owned(),
            what,
            source,
        })
    }

    /// Reads a blob and checks its size and digest against the descriptor.
    pub fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
        let hex = digest_hex(&desc.digest)
            .ok_or_else(|| self.unusable(format!("unsupported digest {:?}", desc.digest)))?;
        let path = self.dir.join("blobs/sha256").join(hex);
        let corrupt = |detail: String| OciError::Corrupt {
            image: self.image.clone(),
            digest: desc.digest.clone(),
            detail,
        };
        let meta = std::fs::metadata(&path).map_err(|source| OciError::Read {
            image: self.image.clone(),
            path: path.clone(),
            source,
        })?;
        if meta.len() != desc.size {
            return Err(corrupt(format!(
                "{} has {} bytes, the descriptor says {}",
                path.display(),
                meta.len(),
                desc.size
            )));
        }
        let bytes = std::fs::read(&path).map_err(|source| OciError::Read {
            image: self.image.clone(),
            path: path.clone(),
            source,
        })?;
        let actual = sha256_hex(&bytes);
        if actual != hex {
            return Err(corrupt(format!(
                "{} hashes to sha256:{actual}",
                path.display()
            )));
        }
        Ok(bytes)
    }

    /// Picks the image tagged `tag` (or the only image) and reads its manifest and config.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Image, OciError> {
        let index_path = self.dir.join("index.json");
        let bytes = std::fs::read(&index_path).map_err(|source| OciError::Read {
            image: self.image.clone(),
            path: index_path.clone(),
            source,
        })?;
        let index: Index = self.read_json(&index_path, &bytes, "image index")?;
        let chosen = match tag {
            Some(tag) => index
                .manifests
                .iter()
                .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
                .ok_or_else(|| {
                    let tags: Vec<&str> = index
                        .manifests
                        .iter()
                        .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
                        .collect();
                    self.unusable(format!(
                        "no image tagged {tag:?} in {}; it has: {}",
                        index_path.display(),
                        if tags.is_empty() {
                            "no tags".into()
                        } else {
                            tags.join(", ")
                        }
                    ))
                })?,
            None => match index.manifests.as_slice() {
                [one] => one,
                [] => return Err(self.unusable(format!("{} lists no image", index_path.display()))),
                _ => {
                    return Err(self.unusable(format!(
                        "{} holds {} images: name one with oci:PATH:TAG",
                        index_path.display(),
                        index.manifests.len()
                    )))
                }
            },
        };
        let mut desc = chosen.clone();
        // A nested index (multi-platform image): take linux/amd64.
        for _ in 0..4 {
            if desc.media_type != media::INDEX && desc.media_type != media::DOCKER_LIST {
                break;
            }
            let bytes = self.read_blob(&desc)?;
            let nested: Index =
                self.read_json(&self.dir.join(&desc.digest), &bytes, "image index")?;
            desc = nested
                .manifests
                .into_iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .ok_or_else(|| self.unusable("the image has no linux/amd64 variant".into()))?;
        }
        if desc.media_type != media::MANIFEST && desc.media_type != media::DOCKER_MANIFEST {
            return Err(self.unusable(format!(
                "unsupported manifest media type {:?}",
                desc.media_type
            )));
        }
        let bytes = self.read_blob(&desc)?;
        let manifest: ImageManifest =
            self.read_json(&self.dir.join(&desc.digest), &bytes, "image manifest")?;
        let config_bytes = self.read_blob(&manifest.config)?;
        let config: ImageConfig = self.read_json(
            &self.dir.join(&manifest.config.digest),
            &config_bytes,
            "image config",
        )?;
        if !config.os.is_empty() && config.os != "linux"
            || !config.architecture.is_empty() && config.architecture != "amd64"
        {
            return Err(self.unusable(format!(
                "the image is for {}/{}, not linux/amd64",
                config.os, config.architecture
            )));
        }
        Ok(Image {
            digest: desc.digest,
            manifest,
            config,
        })
    }
}

/// Writes a blob into `layout/blobs/sha256/` atomically; returns its descriptor.
pub fn write_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Result<Descriptor, OciError> {
    let hex = sha256_hex(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).map_err(|source| OciError::Write {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(&hex);
    if !path.exists() {
        write_atomic(&path, bytes)?;
    }
    Ok(Descriptor {
        media_type: media_type.to_owned(),
        digest: format!("sha256:{hex}"),
        size: bytes.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OciError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        OciError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_with(tag: &str) -> (PathBuf, Descriptor) {
        let dir = std::env::temp_dir().join(format!("hafen-oci-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
        let config = write_blob(
            &dir,
            media::CONFIG,
            br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]}}"#,
        )
        .expect("config");
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.into()),
            config,
            layers: vec![],
        };
        let mut desc = write_blob(
            &dir,
            media::MANIFEST,
            &serde_json::to_vec(&manifest).expect("json"),
        )
        .expect("manifest");
        desc.annotations.insert(REF_NAME.into(), tag.into());
        let index = Index {
            schema_version: 2,
            media_type: Some(media::INDEX.into()),
            manifests: vec![desc.clone()],
        };
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .expect("write");
        (dir, desc)
    }

    #[test]
    fn resolves_by_tag_or_alone_and_names_missing_tags() {
        let (dir, desc) = layout_with("1");
        let layout = Layout::open(&dir, "oci:test").expect("open");
        assert_eq!(layout.resolve(Some("1")).expect("tag").digest, desc.digest);
        let image = layout.resolve(None).expect("only image");
        assert_eq!(image.config.config.cmd, Some(vec!["/bin/sh".to_owned()]));
        let err = layout
            .resolve(Some("2"))
            .expect_err("no such tag")
            .to_string();
        assert!(
            err.contains("no image tagged \"2\"") && err.contains("it has: 1"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_or_truncated_blobs_are_refused() {
        let (dir, desc) = layout_with("c");
        let blob = dir
            .join("blobs/sha256")
            .join(digest_hex(&desc.digest).expect("hex"));
        let mut bytes = std::fs::read(&blob).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&blob, &bytes).expect("write");
        let err = Layout::open(&dir, "oci:test")
            .expect("open")
            .resolve(None)
            .expect_err("corrupt")
            .to_string();
        assert!(
            err.contains(&desc.digest) && err.contains("hashes to"),
            "{err}"
        );
        bytes.pop();
        std::fs::write(&blob, &bytes).expect("write");
        let err = Layout::open(&dir, "oci:test")
            .expect("open")
            .resolve(None)
            .expect_err("short")
            .to_string();
        assert!(err.contains("the descriptor says"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_without_oci_layout_is_explained() {
        let err = Layout::open(Path::new("/nonexistent-layout"), "oci:x")
            .expect_err("no layout")
            .to_string();
        assert!(
            err.contains("not an OCI image layout") && err.contains("hafen image import"),
            "{err}"
        );
    }
}
