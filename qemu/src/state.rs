//! Where a running VM keeps its sockets and pid: the per-VM state directory
//! `${XDG_RUNTIME_DIR:-/run}/hafen/vms/NAME-PID/`.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// File name of QEMU's QMP socket in a state directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// File name of QEMU's pid in a state directory.
pub const QEMU_PID: &str = "qemu.pid";

/// Hafen's runtime directory: `$XDG_RUNTIME_DIR/hafen`, or `/run/hafen`.
pub fn runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run"))
        .join("hafen")
}

/// The directory of all VMs' state directories.
pub fn vms_dir(runtime: &Path) -> PathBuf {
    runtime.join("vms")
}

/// A state directory's name: the image name made safe as one path
/// component, then the pid of the `hafen run` that owns it.
pub fn dir_name(name: &str, pid: u32) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = if safe.is_empty() || safe.starts_with('.') {
        format!("vm{safe}")
    } else {
        safe
    };
    format!("{safe}-{pid}")
}

/// The owner's pid in a state directory's name.
fn owner_pid(dir_name: &str) -> Option<u32> {
    dir_name.rsplit_once('-')?.1.parse().ok()
}

/// A VM's state directory; removed when dropped, however the run ends.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Creates `vms/NAME-PID` (mode 0700) after removing the directories of
    /// runs that died without cleaning up (a SIGKILLed `hafen run`).
    pub fn create(vms: &Path, name: &str, pid: u32) -> io::Result<StateDir> {
        remove_stale(vms);
        let path = vms.join(dir_name(name, pid));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)?;
        Ok(StateDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where QEMU serves QMP.
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join(QMP_SOCKET)
    }

    /// Where QEMU's pid is recorded.
    pub fn pid_file(&self) -> PathBuf {
        self.path.join(QEMU_PID)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes state directories whose owner is no longer running.
fn remove_stale(vms: &Path) {
    let Ok(entries) = std::fs::read_dir(vms) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_safe_path_component() {
        assert_eq!(dir_name("web", 42), "web-42");
        assert_eq!(dir_name("../etc", 1), "vm.._etc-1");
        assert_eq!(dir_name("a b/c", 7), "a_b_c-7");
        assert_eq!(dir_name("", 7), "vm-7");
        assert_eq!(owner_pid("my-vm-123"), Some(123));
    }

    #[test]
    fn a_dead_runs_directory_is_cleared_and_ours_removed_on_drop() {
        let root = tempfile::tempdir().expect("tempdir");
        // pid_max is at most 2^22, so this pid cannot be running.
        let stale = root.path().join("old-4294967295");
        std::fs::create_dir_all(&stale).expect("mkdir");
        let live = root.path().join(format!("other-{}", std::process::id()));
        std::fs::create_dir_all(&live).expect("mkdir");
        let state = StateDir::create(root.path(), "vm", std::process::id()).expect("create");
        assert!(!stale.exists(), "stale directory left");
        assert!(live.exists(), "a live run's directory was removed");
        let path = state.path().to_owned();
        assert!(path.is_dir());
        drop(state);
        assert!(!path.exists());
    }
}
