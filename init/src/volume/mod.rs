//! The data disk and the volumes on it. `hafen run` attaches a raw disk
//! formatted ext4 and labelled [`DATA_LABEL`]; PID 1 finds it by that label
//! (not by device order), mounts it at [`DATA_DIR`] with ordered data
//! journaling, makes each volume's directory the first time a container
//! needs it, and unmounts it cleanly after the last container stopped.
//!
//! A disk that was not unmounted cleanly (a killed hypervisor) is not
//! checked with fsck: the kernel replays ext4's journal when it mounts it,
//! which restores the file system's consistency with no e2fsck in the
//! guest; with `data=ordered` no file's metadata points at blocks whose
//! data never reached the disk, and what a container fsync'ed is there.

pub mod archive;
pub mod copy;

use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use hafen_proto::layout::{
    self, DATA_DIR, DATA_LABEL, HOST_VOLUME_RO_TAG, HOST_VOLUME_TAG, VOLUMES_DIR,
};
use hafen_proto::spec::{IdMapping, Spec};
use rustix::mount::{MountFlags, UnmountFlags};

/// ext4's incompatible feature "the journal needs recovery".
const INCOMPAT_RECOVER: u32 = 0x4;

/// Finds the data disk and mounts it at [`DATA_DIR`]; `Ok(None)` when the
/// machine has none.
pub fn mount_data_disk() -> Result<Option<PathBuf>, String> {
    let Some((device, superblock)) = find_by_label(DATA_LABEL) else {
        return Ok(None);
    };
    let incompat = u32::from_le_bytes([
        superblock[1024 + 96],
        superblock[1024 + 97],
        superblock[1024 + 98],
        superblock[1024 + 99],
    ]);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(DATA_DIR)
        .map_err(|e| format!("create {DATA_DIR}: {e}"))?;
    rustix::mount::mount(
        device.as_path(),
        DATA_DIR,
        "ext4",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOATIME,
        c"data=ordered,errors=remount-ro",
    )
    .map_err(|e| {
        format!(
            "mount the data disk {} on {DATA_DIR}: {e} (is it corrupt? `e2fsck -f data.img` on the host)",
            device.display()
        )
    })?;
    copy::remove_leftovers();
    if incompat & INCOMPAT_RECOVER != 0 {
        warn!(
            "data disk {}: not unmounted cleanly last time; its journal was replayed",
            device.display()
        );
    } else {
        info!(
            "data disk {}: clean, mounted on {DATA_DIR}",
            device.display()
        );
    }
    Ok(Some(device))
}

/// Mounts each volume the host backs with one of its directories (a
/// virtio-9p device tagged [`HOST_VOLUME_TAG`]`NAME`) over that volume's
/// directory, so the containers' bind mounts pick it up.
pub fn mount_host_volumes() {
    let Ok(devices) = std::fs::read_dir("/sys/bus/virtio/drivers/9pnet_virtio") else {
        return;
    };
    for device in devices.flatten() {
        let Ok(tag) = std::fs::read_to_string(device.path().join("mount_tag")) else {
            continue;
        };
        let tag = tag.trim_end_matches(['\0', '\n']);
        let (name, readonly) = match (
            tag.strip_prefix(HOST_VOLUME_RO_TAG),
            tag.strip_prefix(HOST_VOLUME_TAG),
        ) {
            (Some(name), _) => (name, true),
            (None, Some(name)) => (name, false),
            (None, None) => continue,
        };
        let dir = volume_dir(name);
        let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
        if readonly {
            flags |= MountFlags::RDONLY;
        }
        let mounted = std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                rustix::mount::mount(
                    tag,
                    &dir,
                    "9p",
                    flags,
                    c"trans=virtio,version=9p2000.L,msize=524288,cache=none",
                )
                .map_err(|e| e.to_string())
            });
        match mounted {
            Ok(()) => info!(
                "volume {name}: a host directory{}",
                if readonly { ", read-only" } else { "" }
            ),
            Err(e) => error!("volume {name}: cannot mount the host directory ({tag}): {e}"),
        }
    }
}

/// The block device whose ext4 label is `label`, with its first 2 KiB.
fn find_by_label(label: &str) -> Option<(PathBuf, [u8; 2048])> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let device = Path::new("/dev").join(&name);
        let mut start = [0u8; 2048];
        let mut file = std::fs::File::open(&device).ok()?;
        file.read_exact(&mut start).ok()?;
        (layout::ext4_label(&start).as_deref() == Some(label)).then_some((device, start))
    })
}

/// Where volume `name` lives.
pub fn volume_dir(name: &str) -> PathBuf {
    Path::new(VOLUMES_DIR).join(name)
}

/// Makes the directories of the volumes container `container` mounts,
/// owned by its user as its user namespace maps it; those that exist are
/// left as they are (their data and owner are the container's business).
pub fn prepare(container: &str, spec: &Spec, volumes: &[String]) -> Result<(), String> {
    if volumes.is_empty() {
        return Ok(());
    }
    if !is_mounted(Path::new(DATA_DIR)) {
        return Err(format!(
            "container {container} mounts volume {}, but this machine has no data disk \
             (an ext4 disk labelled {DATA_LABEL}): boot the image with `hafen run`, which attaches one",
            volumes[0]
        ));
    }
    let user = spec.process.as_ref().map(|p| &p.user);
    let (uid, gid) = user.map_or((0, 0), |u| (u.uid, u.gid));
    let linux = spec.linux.as_ref();
    let host_uid = map_id(uid, linux.map_or(&[][..], |l| &l.uid_mappings));
    let host_gid = map_id(gid, linux.map_or(&[][..], |l| &l.gid_mappings));
    std::fs::create_dir_all(VOLUMES_DIR).map_err(|e| {
        format!(
            "container {container}: create {VOLUMES_DIR}: {e}{}",
            full_hint(&e)
        )
    })?;
    for name in volumes {
        let dir = volume_dir(name);
        let made = std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .and_then(|()| std::os::unix::fs::chown(&dir, Some(host_uid), Some(host_gid)));
        match made {
            Ok(()) => {}
            // Its data and owner are the containers' business from now on.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(format!(
                    "container {container}: volume {name}: create {}: {e}{}",
                    dir.display(),
                    full_hint(&e)
                ))
            }
        }
    }
    Ok(())
}

/// Files a volume's size count visits at most: a listing must not stall
/// PID 1's loop on a huge tree.
const SIZE_WALK_LIMIT: usize = 100_000;

/// Every volume: those the containers mount (`(container, volumes)`) and
/// any other directory on the data disk, with what they use.
pub fn list(mounts: &[(String, Vec<String>)]) -> Vec<hafen_proto::control::VolumeInfo> {
    let mut names: Vec<String> = mounts.iter().flat_map(|(_, v)| v.iter().cloned()).collect();
    if let Ok(entries) = std::fs::read_dir(VOLUMES_DIR) {
        names.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| layout::valid_volume_name(name)),
        );
    }
    names.sort();
    names.dedup();
    let host_mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    names
        .into_iter()
        .map(|name| {
            let dir = volume_dir(&name);
            let target = dir.to_string_lossy().into_owned();
            let mount = host_mounts.lines().find(|l| {
                let mut fields = l.split(' ');
                fields.nth(1) == Some(target.as_str()) && fields.next() == Some("9p")
            });
            let readonly = mount.is_some_and(|l| {
                l.split(' ')
                    .nth(3)
                    .is_some_and(|o| o.split(',').any(|o| o == "ro"))
            });
            let (used_bytes, used_partial) = match dir.is_dir() {
                true => {
                    let (bytes, partial) = disk_usage(&dir);
                    (Some(bytes), partial)
                }
                false => (None, false),
            };
            hafen_proto::control::VolumeInfo {
                containers: mounts
                    .iter()
                    .filter(|(_, v)| v.contains(&name))
                    .map(|(c, _)| c.clone())
                    .collect(),
                name,
                host_dir: mount.is_some(),
                readonly,
                used_bytes,
                used_partial,
            }
        })
        .collect()
}

/// Bytes the files under `dir` take on disk (blocks, like du), and whether
/// the walk stopped at its bound. Does not cross into other file systems.
fn disk_usage(dir: &Path) -> (u64, bool) {
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, false);
    };
    let mut total = 0;
    let mut visited = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > SIZE_WALK_LIMIT {
                return (total, true);
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != top.dev() {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (total, false)
}

/// What to do about a full data disk, when that is the error.
fn full_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        " (the data disk is full: free space in a volume; hafen run --data-size only sizes a new disk)"
    } else {
        ""
    }
}

/// `id` inside a user namespace as the host sees it (itself without one).
fn map_id(id: u32, mappings: &[IdMapping]) -> u32 {
    if mappings.is_empty() {
        return id;
    }
    mappings
        .iter()
        .find(|m| id >= m.container_id && id - m.container_id < m.size)
        .map_or(id, |m| m.host_id + (id - m.container_id))
}

/// Whether the data disk is mounted.
pub fn has_data_disk() -> bool {
    is_mounted(Path::new(DATA_DIR))
}

fn is_mounted(path: &Path) -> bool {
    let (Ok(dir), Ok(parent)) = (std::fs::metadata(path), std::fs::metadata(path.join("..")))
    else {
        return false;
    };
    dir.dev() != parent.dev()
}

/// Unmounts the data disk after the last container: a clean unmount (no
/// journal replay at the next boot). While something still holds it (a
/// mount namespace being torn down), retries briefly, then at least
/// remounts it read-only, which also writes it out clean.
pub fn release() {
    if !is_mounted(Path::new(DATA_DIR)) {
        return;
    }
    crate::sys::sync();
    // Host directories mounted over volumes first.
    let inner = format!("{DATA_DIR}/");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let nested: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|t| t.starts_with(&inner))
        .collect();
    for target in nested.iter().rev() {
        if rustix::mount::unmount(*target, UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(*target, UnmountFlags::DETACH);
        }
    }
    for _ in 0..50 {
        match rustix::mount::unmount(DATA_DIR, UnmountFlags::empty()) {
            Ok(()) => {
                info!("data disk unmounted cleanly");
                return;
            }
            Err(rustix::io::Errno::BUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => {
                warn!("cannot unmount the data disk: {e}");
                break;
            }
        }
    }
    match rustix::mount::mount_remount(
        DATA_DIR,
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    ) {
        Ok(()) => warn!("the data disk is still in use; remounted read-only"),
        Err(e) => error!("the data disk is still in use and cannot be remounted read-only: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_through_the_user_namespace() {
        let maps = [IdMapping {
            container_id: 0,
            host_id: 100_000,
            size: 65_536,
        }];
        assert_eq!(map_id(0, &maps), 100_000);
        assert_eq!(map_id(1000, &maps), 101_000);
        assert_eq!(map_id(70_000, &maps), 70_000);
        assert_eq!(map_id(1000, &[]), 1000);
    }
}
