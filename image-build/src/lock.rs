//! `hafen.lock`: the digest each registry image of a manifest resolved to,
//! written next to the manifest by `hafen build`. Later builds use the
//! pinned digests, from the local store when it has them, so a tag that
//! moves in the registry changes nothing until `hafen build --pull`; the
//! same lock and inputs give the same image, offline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The lock's file name, next to the manifest.
pub const LOCK_FILE: &str = "hafen.lock";
/// The format version this build writes and reads.
const VERSION: u32 = 1;
const HEADER: &str = "# Written by `hafen build`: the digest each registry image resolved to.\n\
# Keep it with the manifest; `hafen build --pull` moves the pins.\n";

/// The lock cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Reading or writing failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a lock this hafen understands.
    #[error("{} is not a hafen lock ({message}): fix it, or delete it and build with --pull", path.display())]
    Malformed {
        /// The lock file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A manifest's pins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    version: u32,
    /// The image as the manifest writes it -> the full reference pinned to
    /// its digest (`docker.io/library/busybox:1.36@sha256:…`).
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

impl Lock {
    /// The lock next to `manifest`.
    pub fn path_for(manifest: &Path) -> PathBuf {
        manifest.parent().unwrap_or(Path::new(".")).join(LOCK_FILE)
    }

    /// Reads `path`; an absent file is an empty lock.
    pub fn load(path: &Path) -> Result<Lock, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Lock {
                    version: VERSION,
                    images: BTreeMap::new(),
                })
            }
            Err(source) => {
                return Err(LockError::Io {
                    action: "read",
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let lock: Lock = toml::from_str(&text).map_err(|e| LockError::Malformed {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        if lock.version != VERSION {
            return Err(LockError::Malformed {
                path: path.to_owned(),
                message: format!("version {} (this hafen writes {VERSION})", lock.version),
            });
        }
        Ok(lock)
    }

    /// Writes the lock to `path` (temporary file and rename) when it
    /// differs from what is there; true when it wrote.
    pub fn save(&self, path: &Path) -> Result<bool, LockError> {
        let body = toml::to_string(&Lock {
            version: VERSION,
            images: self.images.clone(),
        })
        .map_err(|e| LockError::Malformed {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let text = format!("{HEADER}{body}");
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        let io = |action| {
            move |source| LockError::Io {
                action,
                path: path.to_owned(),
                source,
            }
        };
        let tmp = path.with_extension(format!("lock.tmp-{}", std::process::id()));
        std::fs::write(&tmp, text.as_bytes()).map_err(io("write"))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("write")(e)
        })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_round_trips_and_is_written_only_when_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(LOCK_FILE);
        let mut lock = Lock::load(&path).expect("absent is empty");
        assert!(lock.images.is_empty());
        lock.images.insert(
            "busybox:1.36".into(),
            format!("docker.io/library/busybox:1.36@sha256:{}", "a".repeat(64)),
        );
        assert!(lock.save(&path).expect("save"));
        assert!(
            !lock.save(&path).expect("unchanged"),
            "rewrote an unchanged lock"
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# Written by `hafen build`"), "{text}");
        assert_eq!(Lock::load(&path).expect("load"), lock);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "temporary file left"
        );
    }

    #[test]
    fn a_malformed_lock_names_the_file_and_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(LOCK_FILE);
        for bad in ["version = 7\n", "images = 3\nversion = 1\n", "garbage ["] {
            std::fs::write(&path, bad).expect("write");
            let e = Lock::load(&path).expect_err(bad).to_string();
            assert!(e.contains("hafen.lock") && e.contains("--pull"), "{e}");
        }
    }
}
