//! A VM's persistent state and its data disk: `data.img`, a sparse raw
//! file formatted ext4 (labelled [`DATA_LABEL`]) on first use, that the
//! guest's PID 1 mounts for the volumes. It lives in the VM's persistent
//! directory, which outlives `hafen run`:
//! `$XDG_DATA_HOME/hafen/vms/NAME/` (`~/.local/share/hafen/vms/NAME/`), or
//! `/var/lib/hafen/vms/NAME/` as root.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hafen_proto::layout::DATA_LABEL;

/// File name of the data disk in a VM's persistent directory.
pub const DATA_IMAGE: &str = "data.img";

/// Hafen's persistent data directory.
pub fn data_home() -> Result<PathBuf, DiskError> {
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/hafen"));
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("hafen"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/hafen")),
        None => Err(DiskError::NoHome),
    }
}

/// The persistent directory of VM `name` (created, mode 0700).
pub fn vm_dir(name: &str) -> Result<PathBuf, DiskError> {
    let dir = data_home()?.join("vms").join(name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| DiskError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
    Ok(dir)
}

/// File in a VM's persistent directory naming the `unless-stopped`
/// containers `hafen stop` held down when it last shut down, one a line.
pub const HELD_FILE: &str = "held-containers";

/// Records `held` for VM `name`'s next boot (removes the record when empty).
pub fn record_held(name: &str, held: &[String]) -> Result<(), DiskError> {
    let path = match (held.is_empty(), data_home()) {
        // Nothing to keep: no directory made just to say so, and nowhere
        // to look is nothing to remove.
        (true, Ok(home)) => home.join("vms").join(name).join(HELD_FILE),
        (true, Err(_)) => return Ok(()),
        (false, _) => vm_dir(name)?.join(HELD_FILE),
    };
    let io = |what: String| move |source| DiskError::Io { what, source };
    if held.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io(format!("remove {}", path.display()))(e))
            }
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension("new");
    let text: String = held.iter().map(|n| format!("{n}\n")).collect();
    std::fs::write(&tmp, text).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("rename {}", tmp.display())))
}

/// The containers recorded by [`record_held`] for VM `name`.
pub fn held(name: &str) -> Vec<String> {
    let Ok(home) = data_home() else {
        return Vec::new();
    };
    std::fs::read_to_string(home.join("vms").join(name).join(HELD_FILE))
        .map(|text| {
            text.lines()
                .map(str::trim)
                .filter(|n| {
                    !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                })
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Why the data disk could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Neither XDG_DATA_HOME nor HOME is set.
    #[error("cannot place the VM's data disk: set XDG_DATA_HOME or HOME")]
    NoHome,
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// mkfs.ext4 is not installed.
    #[error("mkfs.ext4 not found (in PATH, /usr/sbin or /sbin): install e2fsprogs")]
    NoMkfs,
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 could not format {path}: {output}")]
    Mkfs {
        /// The file it formatted.
        path: PathBuf,
        /// What it printed.
        output: String,
    },
    /// An existing data disk is not one Hafen made.
    #[error(
        "{path} is not a Hafen data disk (no ext4 file system labelled {DATA_LABEL}): \
         move it away to start with an empty one"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
    },
}

/// `dir/data.img`, made (sparse, `size` bytes, ext4) when it does not exist
/// yet. A half-made disk never takes its place: it is formatted under a
/// temporary name and renamed.
pub fn prepare(dir: &Path, size: u64) -> Result<PathBuf, DiskError> {
    let path = dir.join(DATA_IMAGE);
    if path.exists() {
        return match read_label(&path) {
            Ok(Some(label)) if label == DATA_LABEL => Ok(path),
            Ok(_) => Err(DiskError::Foreign { path }),
            Err(source) => Err(DiskError::Io {
                what: format!("read {}", path.display()),
                source,
            }),
        };
    }
    let tmp = dir.join(format!("{DATA_IMAGE}.new"));
    let io = |what: String| move |source| DiskError::Io { what, source };
    let made = std::fs::File::create(&tmp)
        .map_err(io(format!("create {}", tmp.display())))
        .and_then(|file| {
            file.set_len(size)
                .map_err(io(format!("size {} to {size} bytes", tmp.display())))
        })
        .and_then(|()| format(&tmp))
        .and_then(|()| {
            std::fs::rename(&tmp, &path).map_err(io(format!(
                "rename {} to {}",
                tmp.display(),
                path.display()
            )))
        });
    if let Err(e) = made {
        // Never a half-made disk left behind (a set_len on a full disk, a
        // failed mkfs or rename).
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(path)
}

fn mkfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
}

/// Formats `path` ext4 with Hafen's label: root-owned top directory (even
/// when an ordinary user formats it), no blocks reserved for root, inode
/// tables and journal written now (no lazy initialisation competing with
/// the guest's first writes).
fn format(path: &Path) -> Result<(), DiskError> {
    let program = mkfs().ok_or(DiskError::NoMkfs)?;
    let mut args: Vec<OsString> = ["-q", "-F", "-L", DATA_LABEL, "-m", "0"]
        .iter()
        .map(OsString::from)
        .collect();
    args.extend(
        [
            "-E",
            "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
        ]
        .iter()
        .map(OsString::from),
    );
    args.push(path.as_os_str().to_owned());
    let out = Command::new(&program)
        .args(&args)
        .output()
        .map_err(|source| DiskError::Io {
            what: format!("run {}", program.display()),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DiskError::Mkfs {
            path: path.to_owned(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The label of the ext2/3/4 file system in `path`, `None` when there is none.
pub fn read_label(path: &Path) -> io::Result<Option<String>> {
    use std::io::Read;
    let mut start = Vec::with_capacity(2048);
    std::fs::File::open(path)?
        .take(2048)
        .read_to_end(&mut start)?;
    Ok(hafen_proto::layout::ext4_label(&start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hafen-disk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn a_new_disk_is_sparse_ext4_with_the_label_and_is_kept_after() {
        let dir = temp("new");
        let path = prepare(&dir, 64 << 20).expect("prepare");
        assert_eq!(
            read_label(&path).expect("read").as_deref(),
            Some(DATA_LABEL)
        );
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < meta.len() / 2, "sparse");
        // A second prepare keeps it (and its data).
        std::fs::write(dir.join("marker"), b"x").expect("marker");
        let inode = meta.ino();
        let again = prepare(&dir, 128 << 20).expect("again");
        assert_eq!(std::fs::metadata(&again).expect("stat").ino(), inode);
        assert!(!dir.join("data.img.new").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_foreign_file_is_refused_not_formatted() {
        let dir = temp("foreign");
        std::fs::write(dir.join(DATA_IMAGE), vec![7u8; 4096]).expect("write");
        let e = prepare(&dir, 64 << 20).expect_err("foreign");
        assert!(e.to_string().contains("not a Hafen data disk"), "{e}");
        assert_eq!(
            std::fs::read(dir.join(DATA_IMAGE)).expect("read"),
            vec![7u8; 4096]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
