//! The local image store: one content-addressed OCI image layout that every
//! build and every `hafen image` command shares.
//!
//! ```text
//! ROOT/oci-layout            {"imageLayoutVersion":"1.0.0"}
//! ROOT/index.json            one descriptor per name, ref.name = the full reference
//! ROOT/blobs/sha256/HEX      every blob, verified before it got its name
//! ROOT/blobs/sha256/.tmp-*   blobs being written (renamed once verified)
//! ROOT/index.lock            flock: one index.json writer at a time
//! ROOT/gc.lock               flock: shared by every open store, exclusive for prune
//! ```
//!
//! ROOT is `$HAFEN_CACHE`, else `$XDG_CACHE_HOME/hafen`, else
//! `/var/cache/hafen` for root and `~/.cache/hafen` for anyone else.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hafen_registry::Reference;
use rustix::fs::{flock, FlockOperation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::oci::{self, media, Descriptor, Index, REF_NAME};

/// Names of files being written start with this; prune removes old ones.
pub const TMP_PREFIX: &str = ".tmp-";
/// A temporary file older than this belongs to a process that died.
pub const STALE_TMP: Duration = Duration::from_secs(3600);
const INDEX: &str = "index.json";
const INDEX_LOCK: &str = "index.lock";
const GC_LOCK: &str = "gc.lock";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Manifests and indexes are small; anything bigger is not one.
const MAX_MANIFEST: u64 = 4 << 20;

/// The store cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No image of that name is in the store (the caller may pull it).
    #[error("image {} is not in the local store: hafen image pull {}", .reference.familiar(), .reference.familiar())]
    NotFound {
        /// The reference looked up.
        reference: Reference,
    },
    /// No image matches a name or id given on the command line.
    #[error("no image {name:?} in the local store (see hafen image ls)")]
    NoSuchImage {
        /// What was given.
        name: String,
    },
    /// An id prefix matches more than one image.
    #[error("{name:?} matches {count} images in the local store: give more of the id, or a name")]
    Ambiguous {
        /// What was given.
        name: String,
        /// How many images it matches.
        count: usize,
    },
    /// No directory to keep the store in.
    #[error("no place for the local image store: set XDG_CACHE_HOME or HOME")]
    NoRoot,
    /// A file of the store could not be read or written.
    #[error("local image store: cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the content to store failed.
    #[error("blob {digest}: cannot read its content")]
    Source {
        /// The blob being stored.
        digest: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Content does not match the digest or size it was announced with; it
    /// was not stored.
    #[error("blob {digest}: {detail}; it was not stored")]
    Mismatch {
        /// The expected digest.
        digest: String,
        /// What differs.
        detail: String,
    },
    /// Only `sha256:` and 64 lowercase hex digits are supported.
    #[error("unsupported digest {0:?}: only sha256:HEX is supported")]
    Digest(String),
    /// index.json is not an image index.
    #[error("local image store: {} is not a valid image index", path.display())]
    IndexJson {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A name would point at content the store does not have.
    #[error("cannot tag {reference}: blob {digest} is not in the local store")]
    Missing {
        /// The name.
        reference: String,
        /// The absent blob.
        digest: String,
    },
    /// A digest reference names other content than it would be given.
    #[error("cannot tag {reference} with {digest}: the name pins another digest")]
    DigestMismatch {
        /// The name.
        reference: String,
        /// The content's digest.
        digest: String,
    },
    /// Another command holds the store open, so prune cannot tell which
    /// blobs it is about to use.
    #[error("the local image store {} is in use by another hafen command; prune when it has finished", root.display())]
    Busy {
        /// The store.
        root: PathBuf,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// The hex of a `sha256:HEX` digest, or an error naming it.
fn hex_of(digest: &str) -> Result<&str, StoreError> {
    oci::digest_hex(digest).ok_or_else(|| StoreError::Digest(digest.to_owned()))
}

/// The store's directory for this user, from the environment.
pub fn default_root() -> Result<PathBuf, StoreError> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HAFEN_CACHE") {
        return Ok(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return Ok(dir.join("hafen"));
    }
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/cache/hafen"));
    }
    var("HOME")
        .map(|home| home.join(".cache/hafen"))
        .ok_or(StoreError::NoRoot)
}

/// One named (or, after `load` of an unnamed image, unnamed) image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// The `org.opencontainers.image.ref.name` annotation, if any.
    pub name: Option<String>,
    /// The image's manifest or index, as index.json holds it.
    pub descriptor: Descriptor,
}

impl StoredImage {
    /// The name as a reference, when it is one.
    pub fn reference(&self) -> Option<Reference> {
        self.name.as_deref().and_then(|n| n.parse().ok())
    }
}

/// What `prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Digests of unnamed images dropped from the index.
    pub untagged: Vec<String>,
    /// Blobs no named image reaches.
    pub blobs: usize,
    /// Temporary files left by processes that died.
    pub temp_files: usize,
    /// Bytes freed by both.
    pub bytes: u64,
}

/// The local image store. Each handle holds a shared lock that keeps
/// `prune` away while it is open.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    gc: File,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a new temporary file in `dir`, named so prune recognises it.
fn create_tmp(dir: &Path) -> Result<(File, PathBuf), StoreError> {
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "{TMP_PREFIX}{}-{n}-{nanos:08x}",
            std::process::id()
        ));
        match File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(StoreError::Io {
                    action: "create a temporary file in",
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (mut file, tmp) = create_tmp(dir)?;
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        });
    }
    sync_dir(dir)
}

impl Store {
    /// Opens (creating it when needed) the store at [`default_root`].
    pub fn open_default() -> Result<Store, StoreError> {
        Store::open(&default_root()?)
    }

    /// Opens (creating it when needed) the store at `root`. Waits while a
    /// prune runs.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let blobs = root.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
        let gc_path = root.join(GC_LOCK);
        let gc = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&gc_path)
            .map_err(io_err("open", &gc_path))?;
        flock(&gc, FlockOperation::LockShared).map_err(|e| io_err("lock", &gc_path)(e.into()))?;
        let store = Store {
            root: root.to_owned(),
            gc,
        };
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            replace_file(&marker, OCI_LAYOUT)?;
        }
        if !root.join(INDEX).is_file() {
            // Written once, so other OCI tools see a complete layout.
            store.update_index(|_| Ok(()))?;
        }
        Ok(store)
    }

    /// The store's directory: an OCI image layout.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// An OCI layout reader over the store; `image` names it in errors.
    pub fn layout(&self, image: &str) -> Result<oci::Layout, oci::OciError> {
        oci::Layout::open(&self.root, image)
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    /// Whether the store holds the blob `digest` (only verified blobs are
    /// ever given their name).
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Opens a stored blob.
    pub fn open_blob(&self, digest: &str) -> Result<File, StoreError> {
        let path = self.blob_path(digest)?;
        File::open(&path).map_err(io_err("open", &path))
    }

    /// Reads a stored blob whole.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest)?;
        std::fs::read(&path).map_err(io_err("read", &path))
    }

    /// Starts writing the blob `digest` of `size` bytes; it gets its name
    /// only on [`BlobWriter::commit`], after its size and digest are checked.
    pub fn blob_writer(&self, digest: &str, size: u64) -> Result<BlobWriter, StoreError> {
        let dest = self.blob_path(digest)?;
        let dir = self.root.join("blobs/sha256");
        let (file, tmp) = create_tmp(&dir)?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            dir,
            dest,
            digest: digest.to_owned(),
            size,
            len: 0,
            hasher: Sha256::new(),
        })
    }

    /// Stores `bytes` (when not there yet); returns their descriptor.
    pub fn put_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, StoreError> {
        let digest = oci::digest_of(bytes);
        if !self.has_blob(&digest) {
            let mut w = self.blob_writer(&digest, bytes.len() as u64)?;
            w.write_all(bytes).map_err(|source| StoreError::Io {
                action: "write",
                path: w.tmp.clone(),
                source,
            })?;
            w.commit()?;
        }
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        })
    }

    /// Copies `size` bytes from `source` into the blob `digest`, verified;
    /// does not read `source` when the blob is already stored.
    pub fn copy_blob(
        &self,
        digest: &str,
        size: u64,
        mut source: impl Read,
    ) -> Result<(), StoreError> {
        if self.has_blob(digest) {
            return Ok(());
        }
        let mut w = self.blob_writer(digest, size)?;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(StoreError::Source {
                        digest: digest.to_owned(),
                        source,
                    })
                }
            };
            w.write_all(&buf[..n]).map_err(|e| match w.overflow() {
                Some(detail) => StoreError::Mismatch {
                    digest: digest.to_owned(),
                    detail,
                },
                None => StoreError::Io {
                    action: "write",
                    path: w.tmp.clone(),
                    source: e,
                },
            })?;
        }
        w.commit()
    }

    /// Every entry of index.json.
    pub fn images(&self) -> Result<Vec<StoredImage>, StoreError> {
        Ok(self
            .read_index()?
            .manifests
            .into_iter()
            .map(|d| StoredImage {
                name: d.annotations.get(REF_NAME).cloned(),
                descriptor: d,
            })
            .collect())
    }

    /// The image `reference` names: by its full name, or for a digest
    /// reference, any name of the same repository with that digest.
    /// [`StoreError::NotFound`] when there is none.
    pub fn find(&self, reference: &Reference) -> Result<Descriptor, StoreError> {
        let full = reference.to_string();
        let repo = reference.name();
        self.images()?
            .into_iter()
            .find(|image| match &reference.digest {
                Some(digest) => {
                    &image.descriptor.digest == digest
                        && image.reference().is_some_and(|r| r.name() == repo)
                }
                None => image.name.as_deref() == Some(full.as_str()),
            })
            .map(|image| image.descriptor)
            .ok_or_else(|| StoreError::NotFound {
                reference: reference.clone(),
            })
    }

    /// Names `descriptor` (a manifest or index already in the store)
    /// `reference`, replacing what the name pointed at before.
    pub fn tag(&self, reference: &Reference, descriptor: &Descriptor) -> Result<(), StoreError> {
        let name = reference.to_string();
        if reference
            .digest
            .as_ref()
            .is_some_and(|d| d != &descriptor.digest)
        {
            return Err(StoreError::DigestMismatch {
                reference: name,
                digest: descriptor.digest.clone(),
            });
        }
        if !self.has_blob(&descriptor.digest) {
            return Err(StoreError::Missing {
                reference: name,
                digest: descriptor.digest.clone(),
            });
        }
        let mut entry = descriptor.clone();
        entry.annotations = BTreeMap::from([(REF_NAME.to_owned(), name.clone())]);
        self.update_index(|index| {
            index.manifests.retain(|d| {
                let same_name = d.annotations.get(REF_NAME) == Some(&name);
                let unnamed_same =
                    !d.annotations.contains_key(REF_NAME) && d.digest == entry.digest;
                !same_name && !unnamed_same
            });
            index.manifests.push(entry);
            Ok(())
        })
    }

    /// Keeps `descriptor` in the index without a name (an image loaded from
    /// an archive that names none), unless some entry already holds it.
    pub fn add_unnamed(&self, descriptor: &Descriptor) -> Result<(), StoreError> {
        if !self.has_blob(&descriptor.digest) {
            return Err(StoreError::Missing {
                reference: "(unnamed)".into(),
                digest: descriptor.digest.clone(),
            });
        }
        let mut entry = descriptor.clone();
        entry.annotations.clear();
        self.update_index(|index| {
            if !index.manifests.iter().any(|d| d.digest == entry.digest) {
                index.manifests.push(entry);
            }
            Ok(())
        })
    }

    /// Removes the name `name` (a full reference as index.json holds it);
    /// returns what it pointed at. The blobs stay until prune.
    pub fn untag(&self, name: &str) -> Result<Option<Descriptor>, StoreError> {
        self.update_index(|index| {
            let at = index
                .manifests
                .iter()
                .position(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(name));
            Ok(at.map(|i| index.manifests.remove(i)))
        })
    }

    /// Removes every entry for `digest` that has no name.
    pub fn remove_unnamed(&self, digest: &str) -> Result<bool, StoreError> {
        self.update_index(|index| {
            let before = index.manifests.len();
            index
                .manifests
                .retain(|d| d.digest != digest || d.annotations.contains_key(REF_NAME));
            Ok(index.manifests.len() != before)
        })
    }

    fn read_index(&self) -> Result<Index, StoreError> {
        let path = self.root.join(INDEX);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::IndexJson { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index {
                schema_version: 2,
                media_type: Some(media::INDEX.into()),
                manifests: Vec::new(),
            }),
            Err(source) => Err(StoreError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Read-modify-write of index.json under the index lock: two writers
    /// never lose each other's changes, and readers see one version or the
    /// other (rename), never a mix.
    fn update_index<T>(
        &self,
        change: impl FnOnce(&mut Index) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock_path = self.root.join(INDEX_LOCK);
        let lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock", &lock_path)(e.into()))?;
        let path = self.root.join(INDEX);
        let exists = path.is_file();
        let mut index = self.read_index()?;
        let before = index.clone();
        let out = change(&mut index)?;
        if index != before || !exists {
            index.manifests.sort_by(|a, b| {
                let name = |d: &Descriptor| d.annotations.get(REF_NAME).cloned();
                (name(a), &a.digest).cmp(&(name(b), &b.digest))
            });
            let mut json = serde_json::to_vec_pretty(&index).map_err(|e| StoreError::Io {
                action: "encode",
                path: path.clone(),
                source: e.into(),
            })?;
            json.push(b'\n');
            replace_file(&path, &json)?;
        }
        drop(lock);
        Ok(out)
    }

    /// Removes unnamed images, every blob no named image reaches, and
    /// temporary files older than [`STALE_TMP`]. Refuses while another
    /// handle on the store is open.
    pub fn prune(&mut self) -> Result<PruneReport, StoreError> {
        match flock(&self.gc, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                // The failed conversion may have dropped our shared lock.
                let _ = flock(&self.gc, FlockOperation::LockShared);
                return Err(StoreError::Busy {
                    root: self.root.clone(),
                });
            }
            Err(e) => return Err(io_err("lock", &self.root.join(GC_LOCK))(e.into())),
        }
        let result = self.prune_locked();
        let _ = flock(&self.gc, FlockOperation::LockShared);
        result
    }

    fn prune_locked(&self) -> Result<PruneReport, StoreError> {
        let mut report = PruneReport::default();
        let roots = self.update_index(|index| {
            index.manifests.retain(|d| {
                let named = d.annotations.contains_key(REF_NAME);
                if !named {
                    report.untagged.push(d.digest.clone());
                }
                named
            });
            Ok(index.manifests.clone())
        })?;
        let live = self.reachable(roots);
        let now = SystemTime::now();
        let stale = |meta: &std::fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= STALE_TMP)
        };
        let blobs = self.root.join("blobs/sha256");
        for dir in [&blobs, &self.root] {
            let entries = std::fs::read_dir(dir).map_err(io_err("list", dir))?;
            for entry in entries {
                let entry = entry.map_err(io_err("list", dir))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let doomed = if name.starts_with(TMP_PREFIX) {
                    let old = stale(&meta);
                    report.temp_files += usize::from(old);
                    old
                } else if dir == &blobs && oci::digest_hex(&format!("sha256:{name}")).is_some() {
                    let dead = !live.contains(name);
                    report.blobs += usize::from(dead);
                    dead
                } else {
                    false
                };
                if doomed {
                    let path = entry.path();
                    std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    report.bytes += meta.len();
                }
            }
        }
        Ok(report)
    }

    /// The hex of every blob the descriptors reach: indexes' children,
    /// manifests' configs and layers. Missing blobs are skipped.
    fn reachable(&self, roots: Vec<Descriptor>) -> BTreeSet<String> {
        #[derive(Deserialize)]
        struct Links {
            #[serde(default)]
            manifests: Vec<Descriptor>,
            #[serde(default)]
            config: Option<Descriptor>,
            #[serde(default)]
            layers: Vec<Descriptor>,
        }
        let mut live = BTreeSet::new();
        let mut queue = roots;
        while let Some(desc) = queue.pop() {
            let Some(hex) = oci::digest_hex(&desc.digest) else {
                continue;
            };
            if !live.insert(hex.to_owned()) || !is_manifest_like(&desc.media_type) {
                continue;
            }
            if desc.size > MAX_MANIFEST {
                continue;
            }
            let Ok(bytes) = self.read_blob(&desc.digest) else {
                continue;
            };
            if let Ok(links) = serde_json::from_slice::<Links>(&bytes) {
                queue.extend(links.manifests);
                queue.extend(links.config);
                queue.extend(links.layers);
            }
        }
        live
    }
}

/// Whether a descriptor of this media type points at other blobs.
pub fn is_manifest_like(media_type: &str) -> bool {
    matches!(
        media_type,
        media::INDEX | media::MANIFEST | media::DOCKER_LIST | media::DOCKER_MANIFEST
    )
}

/// A blob being written: bytes go to a temporary file in the blob
/// directory; [`BlobWriter::commit`] checks size and digest, syncs and
/// renames it to its name. Dropped without a commit, the file is removed.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<File>,
    tmp: PathBuf,
    dir: PathBuf,
    dest: PathBuf,
    digest: String,
    size: u64,
    len: u64,
    hasher: Sha256,
}

impl BlobWriter {
    /// The digest the content must have.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The size the content must have.
    pub fn expected_size(&self) -> u64 {
        self.size
    }

    /// Bytes written so far (where a resumed download continues).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets what was written, to start over (a server that ignored a
    /// `Range` request sends the whole blob again).
    pub fn reset(&mut self) -> Result<(), StoreError> {
        if let Some(file) = &mut self.file {
            file.set_len(0)
                .and_then(|()| file.rewind())
                .map_err(io_err("truncate", &self.tmp))?;
        }
        self.len = 0;
        self.hasher = Sha256::new();
        Ok(())
    }

    /// What is wrong when more was written than announced.
    fn overflow(&self) -> Option<String> {
        (self.len > self.size)
            .then(|| format!("more than the {} bytes announced were received", self.size))
    }

    /// Checks size and digest, then gives the blob its name. A mismatch
    /// removes the temporary file and stores nothing.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let Some(file) = self.file.take() else {
            return Err(StoreError::Mismatch {
                digest: self.digest.clone(),
                detail: "the writer was already committed".into(),
            });
        };
        let hex: String = self
            .hasher
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mismatch = if self.len != self.size {
            Some(format!(
                "received {} bytes, the descriptor says {}",
                self.len, self.size
            ))
        } else if Some(hex.as_str()) != oci::digest_hex(&self.digest) {
            Some(format!("the content hashes to sha256:{hex}"))
        } else {
            None
        };
        if let Some(detail) = mismatch {
            drop(file);
            let _ = std::fs::remove_file(&self.tmp);
            return Err(StoreError::Mismatch {
                digest: self.digest.clone(),
                detail,
            });
        }
        let result = file
            .sync_all()
            .and_then(|()| std::fs::rename(&self.tmp, &self.dest));
        drop(file);
        if let Err(source) = result {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(StoreError::Io {
                action: "store",
                path: self.dest.clone(),
                source,
            });
        }
        sync_dir(&self.dir)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already committed"))?;
        if self.len + buf.len() as u64 > self.size {
            self.len += buf.len() as u64;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {}: more than the {} bytes announced",
                    self.digest, self.size
                ),
            ));
        }
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The registry client downloads straight into the store: it verifies
/// what it wrote, then the caller commits.
impl hafen_registry::BlobSink for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn reset(&mut self) -> io::Result<()> {
        BlobWriter::reset(self).map_err(io::Error::other)
    }

    fn existing(&mut self) -> io::Result<Option<Box<dyn Read + '_>>> {
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("blob writer already committed"))?;
        Ok(Some(Box::new(crate::archive::MemberReader::new(
            file, 0, self.len,
        ))))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        (dir, store)
    }

    fn tmp_files(root: &Path) -> Vec<String> {
        let mut found = Vec::new();
        for dir in [root.to_owned(), root.join("blobs/sha256")] {
            for e in std::fs::read_dir(dir).expect("list").flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(TMP_PREFIX) {
                    found.push(name);
                }
            }
        }
        found
    }

    fn reference(s: &str) -> Reference {
        s.parse().expect("reference")
    }

    /// A manifest with a config and one layer, stored; returns its descriptor.
    fn image(store: &Store, seed: &str) -> Descriptor {
        let layer = store
            .put_blob(media::LAYER_TAR, format!("layer {seed}").as_bytes())
            .expect("layer");
        let config = store
            .put_blob(media::CONFIG, format!("{{\"seed\":\"{seed}\"}}").as_bytes())
            .expect("config");
        let manifest = oci::ImageManifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.into()),
            config,
            layers: vec![layer],
        };
        store
            .put_blob(
                media::MANIFEST,
                &serde_json::to_vec(&manifest).expect("json"),
            )
            .expect("manifest")
    }

    #[test]
    fn a_new_store_is_an_oci_layout_with_an_empty_index() {
        let (dir, store) = store();
        assert_eq!(
            std::fs::read(dir.path().join("oci-layout")).expect("marker"),
            OCI_LAYOUT
        );
        let index: Index =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).expect("index"))
                .expect("json");
        assert!(index.manifests.is_empty());
        assert!(store.images().expect("images").is_empty());
    }

    #[test]
    fn a_blob_with_the_wrong_digest_or_size_never_appears() {
        let (dir, store) = store();
        let good = b"hello";
        let digest = oci::digest_of(good);
        // Wrong content, right size.
        let mut w = store.blob_writer(&digest, 5).expect("writer");
        w.write_all(b"jello").expect("write");
        let err = w.commit().expect_err("digest mismatch").to_string();
        assert!(err.contains("hashes to") && err.contains(&digest), "{err}");
        // Truncated.
        let mut w = store.blob_writer(&digest, 5).expect("writer");
        w.write_all(b"hell").expect("write");
        let err = w.commit().expect_err("short").to_string();
        assert!(err.contains("received 4 bytes"), "{err}");
        // Too long: refused while writing.
        let err = store
            .copy_blob(&digest, 5, &b"hello, world"[..])
            .expect_err("long")
            .to_string();
        assert!(err.contains("more than the 5 bytes"), "{err}");
        // Dropped mid-way.
        let mut w = store.blob_writer(&digest, 5).expect("writer");
        w.write_all(b"he").expect("write");
        drop(w);
        assert!(!store.has_blob(&digest));
        assert!(
            tmp_files(dir.path()).is_empty(),
            "{:?}",
            tmp_files(dir.path())
        );
        // A reset starts over, as after a refused Range request.
        let mut w = store.blob_writer(&digest, 5).expect("writer");
        w.write_all(b"xx").expect("write");
        w.reset().expect("reset");
        assert!(w.is_empty());
        w.write_all(good).expect("write");
        assert_eq!(w.len(), 5);
        w.commit().expect("commit");
        assert!(store.has_blob(&digest));
        assert_eq!(store.read_blob(&digest).expect("read"), good);
        assert!(tmp_files(dir.path()).is_empty());
        assert!(matches!(
            store.blob_writer("sha256:abc", 1),
            Err(StoreError::Digest(_))
        ));
    }

    #[test]
    fn the_registry_client_can_write_resume_and_reset_a_blob_writer() {
        use hafen_registry::BlobSink;
        let (_dir, store) = store();
        let content = b"downloaded blob";
        let digest = oci::digest_of(content);
        let mut w = store
            .blob_writer(&digest, content.len() as u64)
            .expect("writer");
        BlobSink::write(&mut w, b"junk").expect("write");
        BlobSink::reset(&mut w).expect("reset");
        BlobSink::write(&mut w, &content[..5]).expect("write");
        let mut seen = Vec::new();
        w.existing()
            .expect("existing")
            .expect("readable")
            .read_to_end(&mut seen)
            .expect("read");
        assert_eq!(seen, &content[..5], "what a resumed download hashes first");
        BlobSink::write(&mut w, &content[5..]).expect("write");
        assert_eq!(BlobSink::len(&w), content.len() as u64);
        w.commit().expect("commit");
        assert_eq!(store.read_blob(&digest).expect("read"), content);
    }

    #[test]
    fn names_are_full_references_and_digest_references_find_them() {
        let (_dir, store) = store();
        let a = image(&store, "a");
        let b = image(&store, "b");
        store.tag(&reference("busybox:1.36"), &a).expect("tag");
        store
            .tag(&reference("localhost:5000/app:2"), &b)
            .expect("tag");
        let names: Vec<_> = store
            .images()
            .expect("images")
            .into_iter()
            .filter_map(|i| i.name)
            .collect();
        assert_eq!(
            names,
            ["docker.io/library/busybox:1.36", "localhost:5000/app:2"]
        );
        assert_eq!(
            store
                .find(&reference("docker.io/library/busybox:1.36"))
                .expect("find")
                .digest,
            a.digest
        );
        let pinned = reference(&format!("localhost:5000/app@{}", b.digest));
        assert_eq!(store.find(&pinned).expect("by digest").digest, b.digest);
        // Another repository with the same digest is not the same image.
        let other = reference(&format!("localhost:5000/other@{}", b.digest));
        assert!(matches!(
            store.find(&other),
            Err(StoreError::NotFound { .. })
        ));
        let err = store.find(&reference("busybox:1.37")).expect_err("absent");
        assert_eq!(
            err.to_string(),
            "image busybox:1.37 is not in the local store: hafen image pull busybox:1.37"
        );
        // Retagging moves the name; untag removes it.
        store.tag(&reference("busybox:1.36"), &b).expect("retag");
        assert_eq!(
            store.find(&reference("busybox:1.36")).expect("find").digest,
            b.digest
        );
        assert_eq!(store.images().expect("images").len(), 2);
        let gone = store
            .untag("docker.io/library/busybox:1.36")
            .expect("untag");
        assert_eq!(gone.map(|d| d.digest), Some(b.digest.clone()));
        assert!(store
            .untag("docker.io/library/busybox:1.36")
            .expect("again")
            .is_none());
        // A name for content the store lacks, or a digest name for other content, is refused.
        let mut ghost = a.clone();
        ghost.digest = oci::digest_of(b"ghost");
        assert!(matches!(
            store.tag(&reference("ghost:1"), &ghost),
            Err(StoreError::Missing { .. })
        ));
        assert!(matches!(
            store.tag(&pinned, &a),
            Err(StoreError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn prune_keeps_what_names_reach_and_frees_the_rest() {
        let (dir, mut store) = store();
        let kept = image(&store, "kept");
        let dropped = image(&store, "dropped");
        let unnamed = image(&store, "unnamed");
        store.tag(&reference("kept:1"), &kept).expect("tag");
        store.tag(&reference("dropped:1"), &dropped).expect("tag");
        store.add_unnamed(&unnamed).expect("unnamed");
        store.untag("docker.io/library/dropped:1").expect("untag");
        // A temporary file of a dead writer, old and young.
        let blobs = dir.path().join("blobs/sha256");
        let old = blobs.join(format!("{TMP_PREFIX}old"));
        std::fs::write(&old, b"12345").expect("write");
        let an_hour_ago = SystemTime::now() - STALE_TMP - Duration::from_secs(5);
        File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(an_hour_ago))
            .expect("age");
        let young = blobs.join(format!("{TMP_PREFIX}young"));
        std::fs::write(&young, b"1").expect("write");

        let before: u64 = std::fs::read_dir(&blobs)
            .expect("list")
            .flatten()
            .map(|e| e.metadata().expect("meta").len())
            .sum();
        let report = store.prune().expect("prune");
        assert_eq!(report.untagged, vec![unnamed.digest.clone()]);
        assert_eq!(report.blobs, 6, "two images of three blobs each");
        assert_eq!(report.temp_files, 1);
        let after: u64 = std::fs::read_dir(&blobs)
            .expect("list")
            .flatten()
            .map(|e| e.metadata().expect("meta").len())
            .sum();
        assert_eq!(report.bytes, before - after);
        assert!(!old.exists() && young.exists());
        let layout = store.layout("kept").expect("layout");
        let resolved = layout
            .resolve_descriptor(kept.clone())
            .expect("kept image is whole");
        assert_eq!(resolved.digest, kept.digest);
        assert!(!store.has_blob(&dropped.digest) && !store.has_blob(&unnamed.digest));
        // Nothing left to do the second time.
        std::fs::remove_file(&young).expect("rm");
        let again = store.prune().expect("prune");
        assert_eq!((again.blobs, again.bytes), (0, 0));
    }

    #[test]
    fn prune_waits_for_no_one_and_refuses_while_another_handle_is_open() {
        let (dir, mut store) = store();
        let other = Store::open(dir.path()).expect("second handle");
        assert!(matches!(store.prune(), Err(StoreError::Busy { .. })));
        drop(other);
        store.prune().expect("alone now");
        // The refused prune kept its shared lock: a third handle's prune is busy.
        let mut third = Store::open(dir.path()).expect("third");
        assert!(matches!(third.prune(), Err(StoreError::Busy { .. })));
    }

    /// Two builds or pulls at once must never lose a tag or leave a
    /// temporary file: many threads, each with its own handle (its own
    /// open file descriptions, as separate processes would have), write
    /// blobs and tag concurrently.
    #[test]
    fn concurrent_writers_lose_no_tag_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        const THREADS: usize = 6;
        const ROUNDS: usize = 40;
        let root = dir.path().to_owned();
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let store = Store::open(&root).expect("open");
                    for round in 0..ROUNDS {
                        // Shared content (every thread writes it) and content of its own.
                        let shared = image(&store, &format!("shared{}", round % 5));
                        let own = image(&store, &format!("t{t}r{round}"));
                        store
                            .tag(&reference(&format!("shared:{round}")), &shared)
                            .expect("tag shared");
                        store
                            .tag(&reference(&format!("t{t}:{round}")), &own)
                            .expect("tag own");
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        let store = Store::open(&root).expect("open");
        let images = store.images().expect("images");
        assert_eq!(
            images.len(),
            THREADS * ROUNDS + ROUNDS,
            "every tag is there"
        );
        for t in 0..THREADS {
            for round in 0..ROUNDS {
                let found = store
                    .find(&reference(&format!("t{t}:{round}")))
                    .expect("own tag");
                let layout = store.layout("t").expect("layout");
                layout.resolve_descriptor(found).expect("whole image");
            }
        }
        assert!(tmp_files(&root).is_empty(), "{:?}", tmp_files(&root));
    }
}
