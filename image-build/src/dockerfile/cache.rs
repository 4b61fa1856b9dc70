//! The build cache: one entry per layer-making step (RUN, COPY, ADD,
//! WORKDIR), found by a key that chains everything the step's result can
//! depend on.
//!
//! A key is the SHA-256 of the parent step's key and this step's inputs
//! ([`Key::chain`]): the stage's base image digest starts the chain, and
//! the inputs of a step are what the executor feeds in (the instruction
//! after substitution, the environment, user, working directory, shell,
//! platform, network, the builder's identity, and for COPY and ADD a
//! digest of the selected files' names, content and metadata, never their
//! modification times). Two builds reach the same key only through the
//! same inputs, so a hit cannot be wrong as long as the steps are
//! deterministic functions of those inputs.
//!
//! An entry is a small JSON file `STORE/build-cache/KEY` naming the
//! layer's blob in the store's blob directory; an entry whose blob is gone
//! (`hafen image prune` removes blobs no image uses) is a miss.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::oci::Descriptor;
use crate::store::Store;

/// Bumped whenever what a key covers or how a step is executed changes,
/// so an older builder's entries are never taken.
pub const CACHE_FORMAT: u32 = 1;

/// A step's cache key: 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// The start of a stage's chain: the builder's own version and what
    /// the stage starts from (`scratch`, or the base image's digest).
    pub fn root(platform: &str, base: &str) -> Key {
        let mut h = Sha256::new();
        field(&mut h, "hafen-build");
        field(&mut h, env!("CARGO_PKG_VERSION"));
        field(&mut h, &CACHE_FORMAT.to_string());
        field(&mut h, platform);
        field(&mut h, base);
        Key(hex(&h.finalize()))
    }

    /// The key of a step after `self` whose inputs are `parts`.
    pub fn chain(&self, parts: &[&str]) -> Key {
        let mut h = Sha256::new();
        field(&mut h, &self.0);
        for p in parts {
            field(&mut h, p);
        }
        Key(hex(&h.finalize()))
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Hashes a length-prefixed field, so no two lists of fields collide by
/// moving a boundary.
fn field(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a cached step produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The layer's blob (compressed) and its diff id; `None` when the step
    /// changed no file.
    pub layer: Option<CachedLayer>,
}

/// A layer in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLayer {
    /// The blob.
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
}

/// The cache of one store.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache beside `store`'s blobs.
    pub fn new(store: &Store) -> Cache {
        Cache {
            dir: store.root().join("build-cache"),
        }
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(key.as_str())
    }

    /// The entry for `key`, when there is one whose layer blob `store`
    /// still has. An unreadable entry is a miss.
    pub fn get(&self, store: &Store, key: &Key) -> Option<Entry> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        match &entry.layer {
            Some(l) if !store.has_blob(&l.descriptor.digest) => None,
            _ => Some(entry),
        }
    }

    /// Records `entry` for `key` (written aside and renamed into place, so
    /// a crash leaves no half entry).
    pub fn put(&self, key: &Key, entry: &Entry) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let json = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        let tmp = self
            .dir
            .join(format!(".{}.{}", key.as_str(), std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.path(key))
    }

    /// The directory, for messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_chain_every_part_and_its_boundaries() {
        let root = Key::root("linux/amd64", "sha256:aa");
        assert_ne!(root, Key::root("linux/amd64", "sha256:ab"));
        assert_ne!(root, Key::root("linux/arm64", "sha256:aa"));
        let a = root.chain(&["RUN", "echo hi"]);
        assert_eq!(a, root.chain(&["RUN", "echo hi"]));
        assert_ne!(a, root.chain(&["RUN", "echo ho"]));
        // Moving a boundary between parts changes the key.
        assert_ne!(root.chain(&["ab", "c"]), root.chain(&["a", "bc"]));
        // The parent is part of the key.
        assert_ne!(a.chain(&["x"]), root.chain(&["x"]));
        assert_eq!(a.as_str().len(), 64);
    }

    #[test]
    fn an_entry_whose_blob_is_gone_is_a_miss() {
        let dir = std::env::temp_dir().join(format!("hafen-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).expect("store");
        let cache = Cache::new(&store);
        let key = Key::root("linux/amd64", "scratch").chain(&["COPY"]);
        assert_eq!(cache.get(&store, &key), None);
        let blob = store
            .put_blob("application/vnd.oci.image.layer.v1.tar", b"layer")
            .expect("blob");
        let entry = Entry {
            layer: Some(CachedLayer {
                descriptor: blob.clone(),
                diff_id: blob.digest.clone(),
            }),
        };
        cache.put(&key, &entry).expect("put");
        assert_eq!(cache.get(&store, &key), Some(entry));
        let missing = Key::root("linux/amd64", "scratch").chain(&["RUN"]);
        let gone = Entry {
            layer: Some(CachedLayer {
                descriptor: Descriptor {
                    digest: format!("sha256:{}", "0".repeat(64)),
                    ..blob
                },
                diff_id: String::new(),
            }),
        };
        cache.put(&missing, &gone).expect("put");
        assert_eq!(cache.get(&store, &missing), None);
        let empty = Entry { layer: None };
        cache.put(&missing, &empty).expect("put");
        assert_eq!(cache.get(&store, &missing), Some(empty));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
