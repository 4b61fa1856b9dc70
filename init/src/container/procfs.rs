//! Writing /proc files through handles.
//!
//! A container can replace paths under its own /proc (runc's 2025
//! advisories: a symlink or bind mount where `/proc/self/attr` or a sysctl
//! file should be). We open the procfs root once, check it really is procfs,
//! and resolve each file beneath it with `openat2` refusing symlinks, magic
//! links and mount crossings.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags, ResolveFlags};

const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// A verified handle on a procfs mount.
#[derive(Debug)]
pub struct ProcFs(OwnedFd);

impl ProcFs {
    /// Opens the procfs mounted at `path` and checks its filesystem type.
    pub fn open(path: &str) -> io::Result<ProcFs> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstatfs(&fd)?;
        if fs_magic(&st) != PROC_SUPER_MAGIC {
            return Err(io::Error::other(format!("{path} is not a procfs mount")));
        }
        Ok(ProcFs(fd))
    }

    fn open_file(&self, rel: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let resolve = ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV;
        Ok(rustix::fs::openat2(
            &self.0,
            rel,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            resolve,
        )?)
    }

    /// Writes `value` to `rel` (relative to the procfs root, e.g. `sys/kernel/domainname`).
    pub fn write(&self, rel: &str, value: &str) -> io::Result<()> {
        let fd = self.open_file(rel, OFlags::WRONLY)?;
        let mut bytes = value.as_bytes();
        while !bytes.is_empty() {
            let n = rustix::io::write(&fd, bytes)?;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Our own pid as this procfs numbers it (procfs of another pid
    /// namespace numbers us differently from getpid).
    pub fn own_pid(&self) -> io::Result<String> {
        let target = rustix::fs::readlinkat(&self.0, "self", Vec::new())?;
        Ok(target.to_string_lossy().into_owned())
    }
}

/// A filesystem's magic number (its `f_type` width differs between C libraries).
#[allow(clippy::unnecessary_cast)]
pub fn fs_magic(st: &rustix::fs::StatFs) -> i64 {
    st.f_type as i64
}

/// The path of a sysctl under /proc/sys (`net.ipv4.ip_forward` -> `sys/net/ipv4/ip_forward`).
/// Rejects names that could walk out of /proc/sys.
pub fn sysctl_path(name: &str) -> Option<String> {
    if name.is_empty() || name.split(['.', '/']).any(|c| c.is_empty() || c == "..") {
        return None;
    }
    Some(format!("sys/{}", name.replace('.', "/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_map_to_proc_sys_paths_and_escapes_are_refused() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").as_deref(),
            Some("sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("kernel/msgmax").as_deref(),
            Some("sys/kernel/msgmax")
        );
        assert_eq!(sysctl_path("net..x"), None);
        assert_eq!(sysctl_path("../../etc/passwd"), None);
        assert_eq!(sysctl_path(""), None);
    }

    #[test]
    fn opens_the_real_procfs_and_refuses_other_filesystems() {
        let proc = ProcFs::open("/proc").expect("/proc is procfs");
        assert_eq!(
            proc.own_pid().expect("self"),
            std::process::id().to_string()
        );
        assert!(ProcFs::open("/tmp").is_err());
        // `self` is a symlink: resolving through it is refused.
        assert!(proc.write("self/oom_score_adj", "0").is_err());
        let own = format!("{}/oom_score_adj", proc.own_pid().expect("self"));
        proc.write(&own, "0").expect("write own oom_score_adj");
    }
}
