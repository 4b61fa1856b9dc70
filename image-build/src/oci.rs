//! OCI image layouts: reading an image with every blob verified (sha256 and
//! size), and writing blobs atomically.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// zstd layer.
    pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Non-distributable layers (deprecated; read like the others).
    pub const LAYER_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    /// Non-distributable gzip layer.
    pub const LAYER_NONDIST_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    /// Non-distributable zstd layer.
    pub const LAYER_NONDIST_ZSTD: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
    /// Docker's image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker's uncompressed layer.
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
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
    #[error("image {image}: cannot read {location}")]
    Read {
        /// The image reference.
        image: String,
        /// The file (or archive entry).
        location: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document is malformed.
    #[error("image {image}: {location} is not a valid {what}")]
    Json {
        /// The image reference.
        image: String,
        /// The file, archive entry or blob.
        location: String,
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

// The descriptor, index, manifest and platform types are the registry
// client's: one definition for what a registry serves and what a layout
// or the store holds.
pub use hafen_registry::manifest::{Descriptor, ImageManifest, Index, Platform};

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
    /// How each layer was made (`created_by`, `empty_layer`, ...), oldest
    /// first: one entry per layer besides the empty ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<serde_json::Value>>,
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

/// Where a layout's files are: a directory, or a tar archive of one
/// (`oci-archive:`, `docker save`).
#[derive(Debug, Clone)]
pub enum Files {
    /// An image layout directory.
    Dir(PathBuf),
    /// A tar archive, read in place.
    Archive(Arc<crate::archive::Archive>),
}

impl Files {
    /// How a file is named in messages.
    pub fn location(&self, rel: &str) -> String {
        match self {
            Files::Dir(dir) => dir.join(rel).display().to_string(),
            Files::Archive(archive) => archive.location(rel),
        }
    }

    fn len(&self, rel: &str) -> io::Result<u64> {
        match self {
            Files::Dir(dir) => std::fs::metadata(dir.join(rel)).map(|m| m.len()),
            Files::Archive(archive) => archive.len(rel),
        }
    }

    fn open(&self, rel: &str) -> io::Result<Box<dyn Read + Send + '_>> {
        match self {
            Files::Dir(dir) => Ok(Box::new(std::fs::File::open(dir.join(rel))?)),
            Files::Archive(archive) => Ok(Box::new(archive.member_reader(rel)?)),
        }
    }
}

/// Where a blob is when not at `blobs/sha256/HEX`: the configs and layers
/// of a legacy `docker save` archive, and the manifest made up for them.
#[derive(Debug, Clone)]
pub enum BlobAt {
    /// A file of the layout or archive.
    File(String),
    /// Bytes in memory.
    Bytes(Arc<Vec<u8>>),
}

/// An OCI image layout (a directory or an archive), every blob read
/// through it verified against its descriptor.
#[derive(Debug, Clone)]
pub struct Layout {
    files: Files,
    image: String,
    aliases: BTreeMap<String, BlobAt>,
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

/// The compression of a layer media type: `None` when Hafen cannot unpack it.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        media::LAYER_TAR | media::DOCKER_LAYER_TAR | media::LAYER_NONDIST_TAR => {
            Some(Compression::None)
        }
        media::LAYER_GZIP | media::DOCKER_LAYER | media::LAYER_NONDIST_GZIP => {
            Some(Compression::Gzip)
        }
        media::LAYER_ZSTD | media::LAYER_NONDIST_ZSTD => Some(Compression::Zstd),
        _ => None,
    }
}

/// How a layer (or an archive) is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Recognises gzip and zstd by their magic numbers.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// A reader of `input` decompressed.
    pub fn decoder<'a>(
        self,
        input: impl Read + Send + 'a,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(input),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
        })
    }
}

/// A blob being read: counts and hashes what passes through;
/// [`BlobReader::finish`] reads the rest and checks size and digest.
pub struct BlobReader<'a> {
    inner: Box<dyn Read + Send + 'a>,
    hasher: Sha256,
    read: u64,
    digest: String,
    size: u64,
    location: String,
    image: String,
}

impl std::fmt::Debug for BlobReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("digest", &self.digest)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {} is longer than the {} bytes its descriptor says",
                    self.digest, self.size
                ),
            ));
        }
        Ok(n)
    }
}

impl BlobReader<'_> {
    /// The blob's digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Reads what is left and checks the size and digest.
    pub fn finish(&mut self) -> Result<(), OciError> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData => break,
                Err(source) => {
                    return Err(OciError::Read {
                        image: self.image.clone(),
                        location: self.location.clone(),
                        source,
                    })
                }
            }
        }
        let corrupt = |detail: String| OciError::Corrupt {
            image: self.image.clone(),
            digest: self.digest.clone(),
            detail,
        };
        if self.read > self.size {
            return Err(corrupt(format!(
                "{} is longer than the {} bytes the descriptor says",
                self.location, self.size
            )));
        }
        if self.read < self.size {
            return Err(corrupt(format!(
                "{} has {} bytes, the descriptor says {}",
                self.location, self.read, self.size
            )));
        }
        let actual: String = self
            .hasher
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if Some(actual.as_str()) != digest_hex(&self.digest) {
            return Err(corrupt(format!(
                "{} hashes to sha256:{actual}",
                self.location
            )));
        }
        Ok(())
    }
}

impl Layout {
    /// Opens a layout directory; `image` is the reference, used in error messages.
    pub fn open(dir: &Path, image: &str) -> Result<Layout, OciError> {
        let layout = Layout::from_files(Files::Dir(dir.to_owned()), image);
        let marker = dir.join("oci-layout");
        if !marker.is_file() {
            return Err(layout.unusable(format!(
                "{} is not an OCI image layout (no oci-layout file); make one with `hafen image import`",
                dir.display()
            )));
        }
        Ok(layout)
    }

    /// A layout over `files` (not checked for an `oci-layout` file).
    pub fn from_files(files: Files, image: &str) -> Layout {
        Layout {
            files,
            image: image.to_owned(),
            aliases: BTreeMap::new(),
        }
    }

    /// Serves the blob `digest` from `at` instead of `blobs/sha256/HEX`.
    pub fn add_alias(&mut self, digest: &str, at: BlobAt) {
        self.aliases.insert(digest.to_owned(), at);
    }

    /// The image reference this layout was opened for.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// Where the files are.
    pub fn files(&self) -> &Files {
        &self.files
    }

    fn unusable(&self, message: String) -> OciError {
        OciError::Unusable {
            image: self.image.clone(),
            message,
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        location: &str,
        bytes: &[u8],
        what: &'static str,
    ) -> Result<T, OciError> {
        serde_json::from_slice(bytes).map_err(|source| OciError::Json {
            image: self.image.clone(),
            location: location.to_owned(),
            what,
            source,
        })
    }

    fn read_error(&self, location: String) -> impl FnOnce(io::Error) -> OciError + '_ {
        move |source| OciError::Read {
            image: self.image.clone(),
            location,
            source,
        }
    }

    /// Whether the blob is present (not whether it is intact).
    pub fn has_blob(&self, digest: &str) -> bool {
        if self.aliases.contains_key(digest) {
            return true;
        }
        digest_hex(digest).is_some_and(|hex| self.files.len(&format!("blobs/sha256/{hex}")).is_ok())
    }

    /// Opens a blob for reading; [`BlobReader::finish`] verifies it.
    pub fn open_blob(&self, desc: &Descriptor) -> Result<BlobReader<'_>, OciError> {
        let (inner, len, location): (Box<dyn Read + Send + '_>, u64, String) =
            match self.aliases.get(&desc.digest) {
                Some(BlobAt::Bytes(bytes)) => (
                    Box::new(io::Cursor::new(bytes.as_ref().clone())),
                    bytes.len() as u64,
                    format!("{} (made from the archive's manifest.json)", desc.digest),
                ),
                Some(BlobAt::File(rel)) => {
                    let location = self.files.location(rel);
                    let len = self
                        .files
                        .len(rel)
                        .map_err(self.read_error(location.clone()))?;
                    let file = self
                        .files
                        .open(rel)
                        .map_err(self.read_error(location.clone()))?;
                    (file, len, location)
                }
                None => {
                    let hex = digest_hex(&desc.digest).ok_or_else(|| {
                        self.unusable(format!("unsupported digest {:?}", desc.digest))
                    })?;
                    let rel = format!("blobs/sha256/{hex}");
                    let location = self.files.location(&rel);
                    let len = self
                        .files
                        .len(&rel)
                        .map_err(self.read_error(location.clone()))?;
                    let file = self
                        .files
                        .open(&rel)
                        .map_err(self.read_error(location.clone()))?;
                    (file, len, location)
                }
            };
        if len != desc.size {
            return Err(OciError::Corrupt {
                image: self.image.clone(),
                digest: desc.digest.clone(),
                detail: format!(
                    "{location} has {len} bytes, the descriptor says {}",
                    desc.size
                ),
            });
        }
        Ok(BlobReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
            digest: desc.digest.clone(),
            size: desc.size,
            location,
            image: self.image.clone(),
        })
    }

    /// Reads a blob and checks its size and digest against the descriptor.
    pub fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
        let mut reader = self.open_blob(desc)?;
        let mut bytes = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0).min(64 << 20));
        if let Err(source) = reader.read_to_end(&mut bytes) {
            if source.kind() != io::ErrorKind::InvalidData {
                let location = reader.location.clone();
                return Err(self.read_error(location)(source));
            }
        }
        reader.finish()?;
        Ok(bytes)
    }

    /// The layout's index.json.
    pub fn index(&self) -> Result<Index, OciError> {
        let location = self.files.location("index.json");
        let mut bytes = Vec::new();
        self.files
            .open("index.json")
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(self.read_error(location.clone()))?;
        self.read_json(&location, &bytes, "image index")
    }

    /// Picks the image tagged `tag` (or the only image) and reads its manifest and config.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Image, OciError> {
        let index = self.index()?;
        let index_path = self.files.location("index.json");
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
                        "no image tagged {tag:?} in {index_path}; it has: {}",
                        if tags.is_empty() {
                            "no tags".into()
                        } else {
                            tags.join(", ")
                        }
                    ))
                })?,
            None => match index.manifests.as_slice() {
                [one] => one,
                [] => return Err(self.unusable(format!("{index_path} lists no image"))),
                _ => {
                    return Err(self.unusable(format!(
                        "{index_path} holds {} images: name one with a tag",
                        index.manifests.len()
                    )))
                }
            },
        };
        self.resolve_descriptor(chosen.clone())
    }

    /// Reads the image `desc` points at: through nested indexes to the
    /// linux/amd64 manifest, then its config.
    pub fn resolve_descriptor(&self, desc: Descriptor) -> Result<Image, OciError> {
        let mut desc = desc;
        // A nested index (multi-platform image): take linux/amd64.
        for _ in 0..4 {
            if desc.media_type != media::INDEX && desc.media_type != media::DOCKER_LIST {
                break;
            }
            let bytes = self.read_blob(&desc)?;
            let nested: Index = self.read_json(&desc.digest, &bytes, "image index")?;
            let platforms: Vec<String> = nested
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            desc = nested
                .manifests
                .into_iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .ok_or_else(|| {
                    self.unusable(format!(
                        "the image has no linux/amd64 variant (it has: {})",
                        if platforms.is_empty() {
                            "none with a platform".to_owned()
                        } else {
                            platforms.join(", ")
                        }
                    ))
                })?;
        }
        if desc.media_type != media::MANIFEST && desc.media_type != media::DOCKER_MANIFEST {
            return Err(self.unusable(format!(
                "unsupported manifest media type {:?}",
                desc.media_type
            )));
        }
        let bytes = self.read_blob(&desc)?;
        let manifest: ImageManifest = self.read_json(&desc.digest, &bytes, "image manifest")?;
        let config_bytes = self.read_blob(&manifest.config)?;
        let config: ImageConfig =
            self.read_json(&manifest.config.digest, &config_bytes, "image config")?;
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

    /// Every blob `desc` reaches that this layout holds, parents before
    /// children: the index (and those of its manifests present, so an
    /// archive of one platform of a multi-platform image copies whole),
    /// each manifest, its config and layers. A manifest's config or layer
    /// that is missing is an error; an index's child that is missing is
    /// skipped.
    pub fn closure(&self, desc: &Descriptor) -> Result<Vec<Descriptor>, OciError> {
        #[derive(serde::Deserialize)]
        struct Links {
            #[serde(default)]
            manifests: Vec<Descriptor>,
            #[serde(default)]
            config: Option<Descriptor>,
            #[serde(default)]
            layers: Vec<Descriptor>,
        }
        let mut out: Vec<Descriptor> = Vec::new();
        let mut stack = vec![(desc.clone(), true)];
        while let Some((d, required)) = stack.pop() {
            if out.iter().any(|o| o.digest == d.digest) {
                continue;
            }
            if !self.has_blob(&d.digest) {
                if required {
                    return Err(self.unusable(format!(
                        "blob {} ({}) is missing from {}",
                        d.digest,
                        d.media_type,
                        self.files.location("")
                    )));
                }
                continue;
            }
            let is_index = d.media_type == media::INDEX || d.media_type == media::DOCKER_LIST;
            let is_manifest =
                d.media_type == media::MANIFEST || d.media_type == media::DOCKER_MANIFEST;
            if is_index || is_manifest {
                let bytes = self.read_blob(&d)?;
                let links: Links = self.read_json(&d.digest, &bytes, "image manifest or index")?;
                // Pushed in reverse, so they pop in order.
                for layer in links.layers.into_iter().rev() {
                    stack.push((layer, true));
                }
                if let Some(config) = links.config {
                    stack.push((config, true));
                }
                for child in links.manifests.into_iter().rev() {
                    stack.push((child, false));
                }
            }
            out.push(d);
        }
        Ok(out)
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

    /// A multi-platform index: linux/amd64 is picked, a missing platform is
    /// named with those there are, and an archive of one platform (other
    /// children absent) still copies whole.
    #[test]
    fn nested_indexes_pick_linux_amd64_and_name_the_platforms_there_are() {
        let (dir, amd64) = layout_with("multi");
        let platform = |arch: &str| Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: None,
        };
        let child = |mut d: Descriptor, arch: &str| {
            d.annotations.clear();
            d.platform = Some(platform(arch));
            d
        };
        let mut absent = amd64.clone();
        absent.digest = digest_of(b"an arm64 manifest this layout lacks");
        let index_of = |children: Vec<Descriptor>| {
            let index = Index {
                schema_version: 2,
                media_type: Some(media::INDEX.into()),
                manifests: children,
            };
            write_blob(
                &dir,
                media::INDEX,
                &serde_json::to_vec(&index).expect("json"),
            )
            .expect("index blob")
        };
        let both = index_of(vec![
            child(absent.clone(), "arm64"),
            child(amd64.clone(), "amd64"),
        ]);
        let layout = Layout::open(&dir, "oci:multi").expect("open");
        let image = layout.resolve_descriptor(both.clone()).expect("amd64");
        assert_eq!(image.digest, amd64.digest);
        let closure: Vec<String> = layout
            .closure(&both)
            .expect("closure")
            .into_iter()
            .map(|d| d.digest)
            .collect();
        assert_eq!(closure.len(), 3, "index, manifest, config: {closure:?}");
        assert!(!closure.contains(&absent.digest));

        let arm_only = index_of(vec![child(absent, "arm64")]);
        let err = layout
            .resolve_descriptor(arm_only)
            .expect_err("no amd64")
            .to_string();
        assert!(
            err.contains("no linux/amd64 variant") && err.contains("linux/arm64"),
            "{err}"
        );
        let mut odd = amd64;
        odd.media_type = "application/vnd.example.unknown+json".into();
        let err = layout
            .resolve_descriptor(odd)
            .expect_err("media type")
            .to_string();
        assert!(err.contains("unsupported manifest media type"), "{err}");
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
