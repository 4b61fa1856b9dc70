//! Image archives: `oci-archive` (a tar of an OCI image layout) and
//! `docker-archive` in both forms `docker save` writes (the legacy one:
//! `manifest.json`, `<id>/layer.tar`, `repositories`; Docker 25's: an OCI
//! layout plus `manifest.json`).
//!
//! An archive is read in place: one pass over the tar headers records
//! where each member's bytes are (seeking over them), checks every path,
//! and resolves links inside the archive; blobs are then read by position
//! and verified as they are used or copied into the store. Nothing is
//! extracted. A compressed archive (`docker save | gzip`) is first
//! decompressed into an unnamed temporary file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hafen_registry::Reference;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::oci::{
    self, media, BlobAt, Compression, Descriptor, Files, ImageConfig, ImageManifest, Index, Layout,
    OciError, REF_NAME,
};
use crate::store::{Store, StoreError};
use crate::tree::clean_path;

/// containerd's (and Docker 25's) annotation for an image's full name.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The path that stands for standard input.
pub const STDIN: &str = "-";
/// How many links may lead to a member before it counts as a loop.
const MAX_LINK_HOPS: usize = 32;
/// manifest.json, index.json and configs are small.
const MAX_METADATA: u64 = 16 << 20;

/// An archive cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive file could not be read.
    #[error("cannot read archive {}", path.display())]
    Read {
        /// The archive.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry's path or link points outside the archive.
    #[error("archive {}: refusing entry {entry:?}: {reason}", path.display())]
    Hostile {
        /// The archive.
        path: PathBuf,
        /// The entry, as stored.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The archive is not one Hafen understands, or lacks what it names.
    #[error("archive {}: {message}", path.display())]
    Invalid {
        /// The archive.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// An image in it is unusable.
    #[error(transparent)]
    Image(#[from] OciError),
    /// Storing it failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A member's bytes in the archive file.
#[derive(Debug, Clone, Copy)]
struct Member {
    offset: u64,
    size: u64,
}

/// A tar archive indexed for reading members in place.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    file: File,
    members: BTreeMap<String, Member>,
    /// Links whose target the archive does not hold (an error only when used).
    dangling: BTreeMap<String, String>,
}

enum Link {
    Symbolic(String),
    Hard(String),
}

/// An unnamed temporary file in `dir` (gone when closed).
pub(crate) fn anonymous_file(dir: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => Ok(File::from(fd)),
        // File systems without O_TMPFILE: a named file, unlinked at once.
        Err(_) => {
            let path = dir.join(format!(
                ".hafen-tmp-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(file)
        }
    }
}

/// Resolves a symbolic link's target against the link's directory; `None`
/// when it leaves the archive's root.
fn resolve_symlink(link: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Reads one member by position.
#[derive(Debug)]
pub struct MemberReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> MemberReader<'a> {
    /// Reads `file` from byte `start` up to `end`, by position (the
    /// file's offset is not moved).
    pub(crate) fn new(file: &'a File, start: u64, end: u64) -> MemberReader<'a> {
        MemberReader {
            file,
            pos: start,
            end,
        }
    }
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside this entry",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Archive {
    /// Indexes the archive at `path` (`-`: standard input, spooled to an
    /// unnamed file first), refusing absolute paths, `..` and links that
    /// leave the archive, naming the entry.
    pub fn open(path: &Path) -> Result<Archive, ArchiveError> {
        let read_err = |source| ArchiveError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = if path == Path::new(STDIN) {
            let mut spool = anonymous_file(&std::env::temp_dir()).map_err(read_err)?;
            io::copy(&mut io::stdin().lock(), &mut spool).map_err(read_err)?;
            spool
        } else {
            File::open(path).map_err(read_err)?
        };
        file.rewind().map_err(read_err)?;
        let mut head = [0u8; 4];
        let n = file.read(&mut head).map_err(read_err)?;
        let compression = Compression::sniff(&head[..n]);
        if compression != Compression::None {
            file.rewind().map_err(read_err)?;
            let mut plain = anonymous_file(&std::env::temp_dir()).map_err(read_err)?;
            let mut decoder = compression
                .decoder(BufReader::new(file))
                .map_err(read_err)?;
            io::copy(&mut decoder, &mut plain).map_err(read_err)?;
            file = plain;
        }
        let file_len = file.metadata().map_err(read_err)?.len();
        file.rewind().map_err(read_err)?;

        let mut members = BTreeMap::new();
        let mut links: BTreeMap<String, Link> = BTreeMap::new();
        {
            let hostile = |entry: &str, reason: String| ArchiveError::Hostile {
                path: path.to_owned(),
                entry: entry.to_owned(),
                reason,
            };
            let mut tar = tar::Archive::new(BufReader::with_capacity(64 << 10, &file));
            let entries = tar.entries_with_seek().map_err(read_err)?;
            for entry in entries {
                let entry = entry.map_err(read_err)?;
                let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let kind = entry.header().entry_type();
                if kind.is_pax_global_extensions()
                    || kind.is_pax_local_extensions()
                    || kind.is_gnu_longname()
                    || kind.is_gnu_longlink()
                {
                    continue;
                }
                let name = clean_path(&raw).map_err(|reason| hostile(&raw, reason))?;
                if kind.is_dir() {
                    continue;
                }
                if kind.is_file() || kind == tar::EntryType::Continuous {
                    let member = Member {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    };
                    if member.offset.saturating_add(member.size) > file_len {
                        return Err(ArchiveError::Invalid {
                            path: path.to_owned(),
                            message: format!(
                                "entry {raw:?} ends past the end of the file: the archive is truncated"
                            ),
                        });
                    }
                    links.remove(&name);
                    members.insert(name, member);
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    if target.is_empty() || target.contains('\0') {
                        return Err(hostile(&raw, "a link without a valid target".into()));
                    }
                    let link = if kind.is_symlink() {
                        if target.starts_with('/') {
                            return Err(hostile(
                                &raw,
                                format!("symlink to the absolute path {target:?}"),
                            ));
                        }
                        let resolved = resolve_symlink(&name, &target).ok_or_else(|| {
                            hostile(&raw, format!("symlink to {target:?} leaves the archive"))
                        })?;
                        Link::Symbolic(resolved)
                    } else {
                        let resolved = clean_path(&target).map_err(|reason| {
                            hostile(&raw, format!("hard link to {target:?}: {reason}"))
                        })?;
                        Link::Hard(resolved)
                    };
                    members.remove(&name);
                    links.insert(name, link);
                } else {
                    return Err(hostile(
                        &raw,
                        format!("{kind:?} entries do not belong in an image archive"),
                    ));
                }
            }
        }

        // Links become members of their own; a target the archive lacks is
        // reported when the link is used.
        let mut dangling = BTreeMap::new();
        for (name, link) in &links {
            let mut target = match link {
                Link::Symbolic(t) | Link::Hard(t) => t.clone(),
            };
            let mut hops = 0;
            let found = loop {
                if let Some(member) = members.get(&target) {
                    break Some(*member);
                }
                match links.get(&target) {
                    Some(Link::Symbolic(next) | Link::Hard(next)) if hops < MAX_LINK_HOPS => {
                        target = next.clone();
                        hops += 1;
                    }
                    _ => break None,
                }
            };
            match found {
                Some(member) => {
                    members.insert(name.clone(), member);
                }
                None => {
                    dangling.insert(name.clone(), target);
                }
            }
        }
        Ok(Archive {
            path: path.to_owned(),
            file,
            members,
            dangling,
        })
    }

    /// The archive's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How a member is named in messages: `ARCHIVE:ENTRY`.
    pub fn location(&self, name: &str) -> String {
        if name.is_empty() {
            self.path.display().to_string()
        } else {
            format!("{}:{name}", self.path.display())
        }
    }

    /// Whether the archive holds a file (or a link to one) named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    fn member(&self, name: &str) -> io::Result<Member> {
        if let Some(member) = self.members.get(name) {
            return Ok(*member);
        }
        let message = match self.dangling.get(name) {
            Some(target) => format!("a link to {target:?}, which the archive does not hold"),
            None => "no such entry in the archive".to_owned(),
        };
        Err(io::Error::new(io::ErrorKind::NotFound, message))
    }

    /// A member's size.
    pub fn len(&self, name: &str) -> io::Result<u64> {
        self.member(name).map(|m| m.size)
    }

    /// Whether the archive holds no file at all.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Reads a member from its position in the archive.
    pub fn member_reader(&self, name: &str) -> io::Result<MemberReader<'_>> {
        let member = self.member(name)?;
        Ok(MemberReader {
            file: &self.file,
            pos: member.offset,
            end: member.offset + member.size,
        })
    }

    /// Reads a small member (manifest.json, index.json, a config) whole.
    fn read_metadata(&self, name: &str) -> Result<Vec<u8>, ArchiveError> {
        let invalid = |message: String| ArchiveError::Invalid {
            path: self.path.clone(),
            message,
        };
        let len = self
            .len(name)
            .map_err(|e| invalid(format!("{name}: {e}")))?;
        if len > MAX_METADATA {
            return Err(invalid(format!(
                "{name} has {len} bytes, more than metadata ever needs"
            )));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        self.member_reader(name)
            .and_then(|mut r| r.read_to_end(&mut bytes))
            .map_err(|source| ArchiveError::Read {
                path: self.path.clone(),
                source,
            })?;
        Ok(bytes)
    }
}

/// Which form an archive has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// An OCI image layout.
    Oci,
    /// `docker save` before Docker 25: `manifest.json` and `<id>/layer.tar`.
    DockerLegacy,
    /// `docker save` since Docker 25: an OCI layout plus `manifest.json`.
    DockerOci,
}

/// One image an archive holds.
#[derive(Debug, Clone)]
pub struct ArchivedImage {
    /// Its names: docker's `RepoTags`, or an OCI entry's full name.
    pub names: Vec<Reference>,
    /// An OCI entry's `org.opencontainers.image.ref.name`.
    pub ref_name: Option<String>,
    /// Its manifest or index.
    pub descriptor: Descriptor,
}

/// An archive opened for reading images.
#[derive(Debug, Clone)]
pub struct ImageArchive {
    /// Which form it has.
    pub kind: ArchiveKind,
    /// Reads its blobs, verified.
    pub layout: Layout,
    /// Its images, in the archive's order.
    pub images: Vec<ArchivedImage>,
}

/// One entry of docker's manifest.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerEntry {
    /// The config's path in the archive.
    pub config: String,
    /// Names, familiar form (`busybox:1.36`).
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Layer paths, bottom first.
    pub layers: Vec<String>,
}

/// An OCI index entry's name, when it has a full one: containerd's
/// annotation, or a ref.name that is more than a tag.
fn oci_entry_name(desc: &Descriptor) -> Option<Reference> {
    if let Some(name) = desc.annotations.get(CONTAINERD_NAME) {
        if let Ok(r) = name.parse() {
            return Some(r);
        }
    }
    desc.annotations
        .get(REF_NAME)
        .filter(|n| n.contains('/') || n.contains(':'))
        .and_then(|n| n.parse().ok())
}

impl ImageArchive {
    /// Opens an archive; `image` names it in errors (the reference as written).
    pub fn open(path: &Path, image: &str) -> Result<ImageArchive, ArchiveError> {
        let archive = Arc::new(Archive::open(path)?);
        let mut layout = Layout::from_files(Files::Archive(Arc::clone(&archive)), image);
        let has_oci = archive.contains("index.json");
        if archive.contains("manifest.json") {
            let bytes = archive.read_metadata("manifest.json")?;
            let entries: Vec<DockerEntry> =
                serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Invalid {
                    path: path.to_owned(),
                    message: format!("manifest.json is not docker's image list: {e}"),
                })?;
            // Docker 25's index.json, by config digest.
            let mut oci_by_config: BTreeMap<String, Descriptor> = BTreeMap::new();
            if has_oci {
                for desc in layout.index()?.manifests {
                    if let Ok(image) = layout.resolve_descriptor(desc.clone()) {
                        oci_by_config
                            .entry(image.manifest.config.digest)
                            .or_insert(desc);
                    }
                }
            }
            let mut images = Vec::new();
            let mut kind = ArchiveKind::DockerLegacy;
            for entry in entries {
                let names = entry
                    .repo_tags
                    .iter()
                    .flatten()
                    .map(|t| {
                        t.parse::<Reference>().map_err(|e| ArchiveError::Invalid {
                            path: path.to_owned(),
                            message: format!("manifest.json: RepoTags: {e}"),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let config_name =
                    clean_path(&entry.config).map_err(|reason| ArchiveError::Hostile {
                        path: path.to_owned(),
                        entry: entry.config.clone(),
                        reason: format!("manifest.json names it as a config: {reason}"),
                    })?;
                let config_bytes = archive.read_metadata(&config_name)?;
                let config_digest = oci::digest_of(&config_bytes);
                let descriptor = match oci_by_config.get(&config_digest) {
                    Some(desc) => {
                        kind = ArchiveKind::DockerOci;
                        desc.clone()
                    }
                    None => {
                        legacy_manifest(&archive, &mut layout, &entry, &config_name, config_bytes)?
                    }
                };
                images.push(ArchivedImage {
                    names,
                    ref_name: None,
                    descriptor,
                });
            }
            return Ok(ImageArchive {
                kind,
                layout,
                images,
            });
        }
        if has_oci {
            let images = layout
                .index()?
                .manifests
                .into_iter()
                .map(|desc| ArchivedImage {
                    names: oci_entry_name(&desc).into_iter().collect(),
                    ref_name: desc.annotations.get(REF_NAME).cloned(),
                    descriptor: desc,
                })
                .collect();
            return Ok(ImageArchive {
                kind: ArchiveKind::Oci,
                layout,
                images,
            });
        }
        Err(ArchiveError::Invalid {
            path: path.to_owned(),
            message:
                "neither manifest.json (docker save) nor index.json (an OCI layout) is in it: \
                      not an image archive"
                    .into(),
        })
    }

    /// Picks the image named `name` (compared in full: `busybox:1.36` is
    /// `docker.io/library/busybox:1.36`), or the only one.
    pub fn pick(&self, name: Option<&Reference>) -> Result<&ArchivedImage, ArchiveError> {
        let path = match self.layout.files() {
            Files::Archive(a) => a.path().to_owned(),
            Files::Dir(d) => d.clone(),
        };
        let listing = || {
            let names: Vec<String> = self
                .images
                .iter()
                .flat_map(|i| i.names.iter().map(Reference::familiar))
                .collect();
            if names.is_empty() {
                "no names".to_owned()
            } else {
                names.join(", ")
            }
        };
        match name {
            Some(name) => self
                .images
                .iter()
                .find(|i| i.names.contains(name))
                .ok_or_else(|| ArchiveError::Invalid {
                    path,
                    message: format!(
                        "no image named {} in it; it has: {}",
                        name.familiar(),
                        listing()
                    ),
                }),
            None => match self.images.as_slice() {
                [one] => Ok(one),
                [] => Err(ArchiveError::Invalid {
                    path,
                    message: "it holds no image".into(),
                }),
                many => Err(ArchiveError::Invalid {
                    path,
                    message: format!(
                        "it holds {} images ({}): name one, as in docker-archive:FILE:NAME:TAG",
                        many.len(),
                        listing()
                    ),
                }),
            },
        }
    }

    /// Picks the image at `index` in the archive's order (`@N`).
    pub fn pick_index(&self, index: usize) -> Result<&ArchivedImage, ArchiveError> {
        self.images.get(index).ok_or_else(|| ArchiveError::Invalid {
            path: match self.layout.files() {
                Files::Archive(a) => a.path().to_owned(),
                Files::Dir(d) => d.clone(),
            },
            message: format!(
                "it holds {} image(s): there is no @{index} (they count from 0)",
                self.images.len()
            ),
        })
    }
}

/// Makes an OCI manifest for a legacy docker-archive image: its config
/// and `layer.tar` files become blobs served from the archive (an
/// uncompressed layer's digest is its diff id, which reading checks).
fn legacy_manifest(
    archive: &Archive,
    layout: &mut Layout,
    entry: &DockerEntry,
    config_name: &str,
    config_bytes: Vec<u8>,
) -> Result<Descriptor, ArchiveError> {
    let path = archive.path().to_owned();
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| ArchiveError::Invalid {
            path: path.clone(),
            message: format!("{config_name} is not an image config: {e}"),
        })?;
    let config_desc = Descriptor {
        media_type: media::CONFIG.into(),
        digest: oci::digest_of(&config_bytes),
        size: config_bytes.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    };
    layout.add_alias(&config_desc.digest, BlobAt::File(config_name.to_owned()));
    if !config.rootfs.diff_ids.is_empty() && config.rootfs.diff_ids.len() != entry.layers.len() {
        return Err(ArchiveError::Invalid {
            path,
            message: format!(
                "manifest.json lists {} layers for {config_name}, whose config has {} diff ids",
                entry.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (i, raw) in entry.layers.iter().enumerate() {
        let name = clean_path(raw).map_err(|reason| ArchiveError::Hostile {
            path: path.clone(),
            entry: raw.clone(),
            reason: format!("manifest.json names it as a layer: {reason}"),
        })?;
        let read_err = |e: io::Error| ArchiveError::Invalid {
            path: path.clone(),
            message: format!("layer {name}: {e}"),
        };
        let size = archive.len(&name).map_err(read_err)?;
        let mut head = [0u8; 4];
        let n = archive
            .member_reader(&name)
            .and_then(|mut r| r.read(&mut head))
            .map_err(read_err)?;
        let compression = Compression::sniff(&head[..n]);
        let diff_id = config.rootfs.diff_ids.get(i);
        let (media_type, digest) = match (compression, diff_id) {
            (Compression::None, Some(diff_id)) => (media::LAYER_TAR, diff_id.clone()),
            (compression, _) => {
                let mut hasher = Sha256::new();
                let mut reader = archive.member_reader(&name).map_err(read_err)?;
                io::copy(&mut reader, &mut HashWriter(&mut hasher)).map_err(read_err)?;
                let hex: String = hasher
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let media_type = match compression {
                    Compression::None => media::LAYER_TAR,
                    Compression::Gzip => media::LAYER_GZIP,
                    Compression::Zstd => media::LAYER_ZSTD,
                };
                (media_type, format!("sha256:{hex}"))
            }
        };
        layout.add_alias(&digest, BlobAt::File(name));
        layers.push(Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        });
    }
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media::MANIFEST.into()),
        config: config_desc,
        layers,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| ArchiveError::Invalid {
        path: path.clone(),
        message: format!("cannot encode a manifest for {config_name}: {e}"),
    })?;
    let digest = oci::digest_of(&bytes);
    let size = bytes.len() as u64;
    layout.add_alias(&digest, BlobAt::Bytes(Arc::new(bytes)));
    Ok(Descriptor {
        media_type: media::MANIFEST.into(),
        digest,
        size,
        platform: None,
        annotations: BTreeMap::new(),
    })
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What `load` put into the store.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The names it got (none: kept unnamed).
    pub names: Vec<Reference>,
    /// Its manifest or index.
    pub descriptor: Descriptor,
    /// Its config's digest (docker's image id), when it has a linux/amd64 one.
    pub config_digest: Option<String>,
}

/// Copies every image of the archive at `path` into the store, verified,
/// then names them (docker's `RepoTags`, an OCI entry's full name).
pub fn load(store: &Store, path: &Path) -> Result<Vec<Loaded>, ArchiveError> {
    let archive = ImageArchive::open(path, &path.display().to_string())?;
    let mut loaded = Vec::new();
    for image in &archive.images {
        for desc in archive.layout.closure(&image.descriptor)? {
            if store.has_blob(&desc.digest) {
                continue;
            }
            let mut reader = archive.layout.open_blob(&desc)?;
            store.copy_blob(&desc.digest, desc.size, &mut reader)?;
        }
        let config_digest = archive
            .layout
            .resolve_descriptor(image.descriptor.clone())
            .ok()
            .map(|i| i.manifest.config.digest);
        let mut descriptor = image.descriptor.clone();
        descriptor.annotations.clear();
        loaded.push(Loaded {
            names: image.names.clone(),
            descriptor,
            config_digest,
        });
    }
    // Names only once every image is whole.
    for image in &loaded {
        if image.names.is_empty() {
            store.add_unnamed(&image.descriptor)?;
        }
        for name in &image.names {
            store.tag(name, &image.descriptor)?;
        }
    }
    Ok(loaded)
}

/// The two archive forms `save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    /// Docker's legacy form (`manifest.json` with `RepoTags`), which every
    /// docker and skopeo reads.
    DockerArchive,
    /// A tar of an OCI image layout.
    OciArchive,
}

/// One image to save: its name (if any) and its manifest or index.
#[derive(Debug, Clone)]
pub struct SaveItem {
    /// The name it is saved under.
    pub name: Option<Reference>,
    /// Its manifest or index in the store.
    pub descriptor: Descriptor,
}

/// A tar written entry by entry with fixed owners and times, so the same
/// images give the same bytes.
struct TarOut<W: Write> {
    builder: tar::Builder<W>,
}

impl<W: Write> TarOut<W> {
    fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> io::Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        h.set_path(path)?;
        h.set_size(size);
        h.set_mode(mode);
        h.set_entry_type(kind);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        Ok(h)
    }

    fn dir(&mut self, path: &str) -> io::Result<()> {
        let h = Self::header(path, 0, 0o755, tar::EntryType::Directory)?;
        self.builder.append(&h, io::empty())
    }

    fn file(&mut self, path: &str, size: u64, data: impl Read) -> io::Result<()> {
        let h = Self::header(path, size, 0o644, tar::EntryType::Regular)?;
        self.builder.append(&h, data)
    }
}

/// Writes `items` from the store as one archive at `out` (through a
/// temporary file renamed into place when complete).
pub fn save(
    store: &Store,
    items: &[SaveItem],
    out: &Path,
    format: SaveFormat,
) -> Result<(), ArchiveError> {
    let write_err = |source| ArchiveError::Write {
        path: out.to_owned(),
        source,
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| write_err(io::Error::other("not a file name")))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // One of an earlier process that had our pid and died.
    let _ = std::fs::remove_file(&tmp);
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(write_err)?;
    let result = (|| {
        let mut tar = TarOut {
            builder: tar::Builder::new(io::BufWriter::with_capacity(256 << 10, file)),
        };
        match format {
            SaveFormat::DockerArchive => write_docker(store, items, &mut tar, dir)?,
            SaveFormat::OciArchive => write_oci(store, items, &mut tar)?,
        }
        let file = tar
            .builder
            .into_inner()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, out).map_err(write_err)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_oci<W: Write>(
    store: &Store,
    items: &[SaveItem],
    tar: &mut TarOut<W>,
) -> Result<(), ArchiveError> {
    let layout = store.layout("local store")?;
    let write_err = |source| ArchiveError::Write {
        path: PathBuf::from("(archive)"),
        source,
    };
    let mut blobs: BTreeMap<String, Descriptor> = BTreeMap::new();
    let mut index = Index {
        schema_version: 2,
        media_type: Some(media::INDEX.into()),
        manifests: Vec::new(),
    };
    for item in items {
        for desc in layout.closure(&item.descriptor)? {
            blobs.entry(desc.digest.clone()).or_insert(desc);
        }
        let mut desc = item.descriptor.clone();
        desc.annotations.clear();
        if let Some(name) = &item.name {
            desc.annotations
                .insert(CONTAINERD_NAME.into(), name.to_string());
            if let Some(tag) = &name.tag {
                desc.annotations.insert(REF_NAME.into(), tag.clone());
            }
        }
        index.manifests.push(desc);
    }
    const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
    tar.file("oci-layout", OCI_LAYOUT.len() as u64, OCI_LAYOUT)
        .map_err(write_err)?;
    tar.dir("blobs/").map_err(write_err)?;
    tar.dir("blobs/sha256/").map_err(write_err)?;
    for desc in blobs.values() {
        let hex = oci::digest_hex(&desc.digest).unwrap_or_default();
        let mut reader = layout.open_blob(desc)?;
        tar.file(&format!("blobs/sha256/{hex}"), desc.size, &mut reader)
            .map_err(write_err)?;
        reader.finish()?;
    }
    let json = serde_json::to_vec(&index).map_err(|e| write_err(e.into()))?;
    tar.file("index.json", json.len() as u64, json.as_slice())
        .map_err(write_err)?;
    Ok(())
}

fn write_docker<W: Write>(
    store: &Store,
    items: &[SaveItem],
    tar: &mut TarOut<W>,
    scratch: &Path,
) -> Result<(), ArchiveError> {
    let layout = store.layout("local store")?;
    let write_err = |source| ArchiveError::Write {
        path: PathBuf::from("(archive)"),
        source,
    };
    let mut entries: Vec<DockerEntry> = Vec::new();
    let mut written: BTreeMap<String, ()> = BTreeMap::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for item in items {
        let image = layout.resolve_descriptor(item.descriptor.clone())?;
        let config_bytes = layout.read_blob(&image.manifest.config)?;
        let config_hex = oci::digest_hex(&image.manifest.config.digest)
            .unwrap_or_default()
            .to_owned();
        let config_name = format!("{config_hex}.json");
        let diff_ids = &image.config.rootfs.diff_ids;
        if diff_ids.len() != image.manifest.layers.len() {
            return Err(OciError::Unusable {
                image: item
                    .name
                    .as_ref()
                    .map_or_else(|| item.descriptor.digest.clone(), Reference::familiar),
                message: format!(
                    "{} layers but {} diff ids in its config: docker-archive cannot hold it",
                    image.manifest.layers.len(),
                    diff_ids.len()
                ),
            }
            .into());
        }
        let mut layer_names = Vec::new();
        for (layer, diff_id) in image.manifest.layers.iter().zip(diff_ids) {
            let hex = oci::digest_hex(diff_id)
                .ok_or_else(|| OciError::Unusable {
                    image: item.descriptor.digest.clone(),
                    message: format!("unsupported diff id {diff_id:?}"),
                })?
                .to_owned();
            let layer_name = format!("{hex}/layer.tar");
            if written.insert(hex.clone(), ()).is_none() {
                tar.dir(&format!("{hex}/")).map_err(write_err)?;
                write_plain_layer(&layout, layer, diff_id, &layer_name, tar, scratch)?;
            }
            layer_names.push(layer_name);
        }
        if written.insert(config_name.clone(), ()).is_none() {
            tar.file(
                &config_name,
                config_bytes.len() as u64,
                config_bytes.as_slice(),
            )
            .map_err(write_err)?;
        }
        let tag = item
            .name
            .as_ref()
            .filter(|n| n.tag.is_some() && n.digest.is_none());
        if let (Some(name), Some(top)) = (tag, diff_ids.last()) {
            let familiar = name.familiar();
            let (repo, tag) = familiar.rsplit_once(':').unwrap_or((&familiar, "latest"));
            repositories.entry(repo.to_owned()).or_default().insert(
                tag.to_owned(),
                oci::digest_hex(top).unwrap_or_default().to_owned(),
            );
        }
        // One entry per image; a second name of the same image joins it.
        match entries.iter_mut().find(|e| e.config == config_name) {
            Some(existing) => {
                if let Some(name) = tag {
                    existing
                        .repo_tags
                        .get_or_insert_with(Vec::new)
                        .push(name.familiar());
                }
            }
            None => entries.push(DockerEntry {
                config: config_name,
                repo_tags: tag.map(|n| vec![n.familiar()]),
                layers: layer_names,
            }),
        }
    }
    let manifest = serde_json::to_vec(&entries).map_err(|e| write_err(e.into()))?;
    tar.file("manifest.json", manifest.len() as u64, manifest.as_slice())
        .map_err(write_err)?;
    if !repositories.is_empty() {
        let json = serde_json::to_vec(&repositories).map_err(|e| write_err(e.into()))?;
        tar.file("repositories", json.len() as u64, json.as_slice())
            .map_err(write_err)?;
    }
    Ok(())
}

/// Writes one layer uncompressed (docker-archive's `layer.tar` is the tar
/// whose digest is the diff id), checking that digest on the way.
fn write_plain_layer<W: Write>(
    layout: &Layout,
    layer: &Descriptor,
    diff_id: &str,
    name: &str,
    tar: &mut TarOut<W>,
    scratch: &Path,
) -> Result<(), ArchiveError> {
    let write_err = |source| ArchiveError::Write {
        path: PathBuf::from(name),
        source,
    };
    let compression =
        oci::layer_compression(&layer.media_type).ok_or_else(|| OciError::Unusable {
            image: layout.image().to_owned(),
            message: format!(
                "layer {} has media type {:?}, which Hafen cannot unpack",
                layer.digest, layer.media_type
            ),
        })?;
    let mut reader = layout.open_blob(layer)?;
    if compression == Compression::None && layer.digest == diff_id {
        tar.file(name, layer.size, &mut reader).map_err(write_err)?;
        reader.finish()?;
        return Ok(());
    }
    // The size must be known before the data: unpack into an unnamed file first.
    let mut plain = anonymous_file(scratch).map_err(write_err)?;
    let mut hasher = Sha256::new();
    {
        let mut decoder = compression.decoder(&mut reader).map_err(write_err)?;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match decoder.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A corrupt blob explains a broken stream best.
                    drop(decoder);
                    reader.finish()?;
                    return Err(OciError::Unusable {
                        image: layout.image().to_owned(),
                        message: format!("layer {} does not decompress: {e}", layer.digest),
                    }
                    .into());
                }
            };
            hasher.update(&buf[..n]);
            plain.write_all(&buf[..n]).map_err(write_err)?;
        }
    }
    reader.finish()?;
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if Some(actual.as_str()) != oci::digest_hex(diff_id) {
        return Err(OciError::Unusable {
            image: layout.image().to_owned(),
            message: format!(
                "layer {} unpacks to sha256:{actual}, but the config says {diff_id}",
                layer.digest
            ),
        }
        .into());
    }
    let size = plain.stream_position().map_err(write_err)?;
    plain.seek(SeekFrom::Start(0)).map_err(write_err)?;
    tar.file(name, size, BufReader::new(plain))
        .map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::{tar_of, E};

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    #[test]
    fn hostile_archives_are_refused_naming_archive_and_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (entries, entry, reason) in [
            (vec![E::File("../evil", b"x")], "../evil", "\"..\""),
            (
                vec![E::File("/etc/evil", b"x")],
                "/etc/evil",
                "absolute path",
            ),
            (
                vec![E::Symlink("blobs", "../../etc")],
                "blobs",
                "leaves the archive",
            ),
            (vec![E::Symlink("x", "/etc/passwd")], "x", "absolute path"),
            (vec![E::Hardlink("h", "../../etc/shadow")], "h", "\"..\""),
            (vec![E::Char("dev", 1, 3)], "dev", "do not belong"),
        ] {
            let path = write(dir.path(), "evil.tar", &tar_of(&entries));
            let err = Archive::open(&path).expect_err("hostile").to_string();
            assert!(
                err.contains(&path.display().to_string())
                    && err.contains(&format!("{entry:?}"))
                    && err.contains(reason),
                "{err}"
            );
        }
    }

    #[test]
    fn links_inside_the_archive_resolve_and_dangling_ones_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "ok.tar",
            &tar_of(&[
                E::Dir("a"),
                E::File("a/layer.tar", b"layer bytes"),
                E::Symlink("b/layer.tar", "../a/layer.tar"),
                E::Hardlink("c", "a/layer.tar"),
                E::Symlink("d", "missing"),
            ]),
        );
        let archive = Archive::open(&path).expect("open");
        for name in ["a/layer.tar", "b/layer.tar", "c"] {
            let mut bytes = Vec::new();
            archive
                .member_reader(name)
                .expect("member")
                .read_to_end(&mut bytes)
                .expect("read");
            assert_eq!(bytes, b"layer bytes", "{name}");
        }
        let err = archive.len("d").expect_err("dangling").to_string();
        assert!(err.contains("\"missing\""), "{err}");
    }

    #[test]
    fn a_truncated_archive_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = tar_of(&[E::File("big", &[7u8; 4096])]);
        bytes.truncate(2048);
        let path = write(dir.path(), "cut.tar", &bytes);
        let err = Archive::open(&path).expect_err("truncated").to_string();
        assert!(
            err.contains("truncated") || err.contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn gzip_compressed_archives_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tar = tar_of(&[E::File("manifest.json", b"[]")]);
        let path = write(
            dir.path(),
            "a.tar.gz",
            &crate::import::gzip(&tar).expect("gzip"),
        );
        let archive = Archive::open(&path).expect("open");
        assert_eq!(archive.len("manifest.json").expect("len"), 2);
    }

    #[test]
    fn not_an_image_archive_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "x.tar", &tar_of(&[E::File("hello", b"x")]));
        let err = ImageArchive::open(&path, "x")
            .expect_err("no image")
            .to_string();
        assert!(err.contains("not an image archive"), "{err}");
    }
}
