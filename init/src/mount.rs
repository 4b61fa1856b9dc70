//! The guest's own filesystems: re-rooting away from the initramfs `rootfs`
//! and the early mounts every Hafen guest has.

use std::fmt;
use std::io;

use rustix::fs::Mode;
use rustix::mount::{mount, mount_bind_recursive, mount_move, MountFlags};

/// A mount step failed.
#[derive(Debug)]
pub struct MountError {
    /// What we were doing.
    pub step: &'static str,
    /// The path it was done to.
    pub path: String,
    /// The system call's error.
    pub source: io::Error,
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.step, self.path, self.source)
    }
}

impl std::error::Error for MountError {}

fn at<'a>(step: &'static str, path: &'a str) -> impl FnOnce(rustix::io::Errno) -> MountError + 'a {
    move |errno| MountError {
        step,
        path: path.to_owned(),
        source: errno.into(),
    }
}

/// Creates `path` and its parents (like `mkdir -p`), ignoring existing ones.
pub fn mkdir_all(path: &str, mode: u32) -> io::Result<()> {
    let mut prefix = String::with_capacity(path.len());
    for part in path.split('/').filter(|p| !p.is_empty()) {
        prefix.push('/');
        prefix.push_str(part);
        match rustix::fs::mkdir(prefix.as_str(), Mode::from_raw_mode(mode)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Directory used once, during [`reroot`], and removed again.
const REROOT_DIR: &str = "/.hafen-root";

/// Moves a bind mount of the initramfs over `/` and chroots into it.
///
/// The kernel's initial root (`rootfs`) has no parent mount, so `pivot_root`
/// fails anywhere beneath it. After this, `/` is a bind mount whose parent is
/// `rootfs`, and each container's `pivot_root` works. Nothing is copied.
pub fn reroot() -> Result<(), MountError> {
    // 1. A directory to build the new root on.
    rustix::fs::mkdir(REROOT_DIR, Mode::from_raw_mode(0o700))
        .or_else(|e| {
            if e == rustix::io::Errno::EXIST {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(at("create", REROOT_DIR))?;
    // 2. Bind the whole initramfs there.
    mount_bind_recursive("/", REROOT_DIR).map_err(at("bind / onto", REROOT_DIR))?;
    // 3. Enter it, move it over /, and make it our root.
    rustix::process::chdir(REROOT_DIR).map_err(at("chdir", REROOT_DIR))?;
    mount_move(".", "/").map_err(at("move mount over /", REROOT_DIR))?;
    rustix::process::chroot(".").map_err(at("chroot", REROOT_DIR))?;
    rustix::process::chdir("/").map_err(at("chdir", "/"))?;
    // 4. The directory is the same inode in the bind; remove it again.
    rustix::fs::rmdir(REROOT_DIR).map_err(at("remove", REROOT_DIR))?;
    Ok(())
}

/// One filesystem PID 1 mounts at boot.
struct EarlyMount {
    fstype: &'static str,
    source: &'static str,
    target: &'static str,
    flags: MountFlags,
    data: &'static str,
    mode: u32,
}

const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags::NOSUID
    .union(MountFlags::NODEV)
    .union(MountFlags::NOEXEC);

/// Mounted in this order; /dev first so the console nodes exist early.
const EARLY_MOUNTS: &[EarlyMount] = &[
    EarlyMount {
        fstype: "devtmpfs",
        source: "devtmpfs",
        target: "/dev",
        flags: MountFlags::NOSUID,
        data: "mode=0755",
        mode: 0o755,
    },
    EarlyMount {
        fstype: "proc",
        source: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        mode: 0o555,
    },
    EarlyMount {
        fstype: "sysfs",
        source: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        mode: 0o555,
    },
    EarlyMount {
        fstype: "tmpfs",
        source: "run",
        target: "/run",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: "mode=0755",
        mode: 0o755,
    },
    EarlyMount {
        fstype: "tmpfs",
        source: "tmp",
        target: "/tmp",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: "mode=1777",
        mode: 0o1777,
    },
    EarlyMount {
        fstype: "cgroup2",
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
        mode: 0o755,
    },
];

/// Mounted once the first container has started: no container's start
/// needs PID 1's own (each mounts its own instances), only `hafen exec -t`
/// and shared memory of processes outside containers do.
const LATE_MOUNTS: &[EarlyMount] = &[
    EarlyMount {
        fstype: "devpts",
        source: "devpts",
        target: "/dev/pts",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: "mode=0620,ptmxmode=0666",
        mode: 0o755,
    },
    EarlyMount {
        fstype: "tmpfs",
        source: "shm",
        target: "/dev/shm",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=1777",
        mode: 0o1777,
    },
];

/// Mounts /dev, /proc, /sys, /run, /tmp and cgroup2: what a container's
/// start needs. Returns one error per mount that failed; the others are
/// still made.
pub fn early_mounts() -> Vec<MountError> {
    mount_all(EARLY_MOUNTS)
}

/// Mounts /dev/pts and /dev/shm, as [`early_mounts`] does the others.
pub fn late_mounts() -> Vec<MountError> {
    mount_all(LATE_MOUNTS)
}

fn mount_all(list: &[EarlyMount]) -> Vec<MountError> {
    let mut errors = Vec::new();
    for m in list {
        if let Err(source) = mkdir_all(m.target, m.mode) {
            errors.push(MountError {
                step: "create mount point",
                path: m.target.into(),
                source,
            });
            continue;
        }
        let data = std::ffi::CString::new(m.data).unwrap_or_default();
        let data = (!m.data.is_empty()).then_some(data.as_c_str());
        match mount(m.source, m.target, m.fstype, m.flags, data) {
            // devtmpfs may already be mounted by the kernel (CONFIG_DEVTMPFS_MOUNT).
            Err(rustix::io::Errno::BUSY) if m.fstype == "devtmpfs" => {}
            Err(e) => errors.push(at("mount", m.target)(e)),
            Ok(()) => {}
        }
    }
    errors
}

/// Unmounts everything but `/` (deepest first, lazily), for shutdown.
pub fn unmount_all() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let targets: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|t| *t != "/")
        .map(unescape_mount_path)
        .collect();
    for target in targets.iter().rev() {
        let _ = rustix::mount::unmount(target.as_str(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// Undoes the octal escapes (`\040` for a space) /proc/self/mounts uses.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_spaces_and_keeps_plain_paths() {
        assert_eq!(unescape_mount_path("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_path("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_mount_path("/x\\04"), "/x\\04");
    }
}
