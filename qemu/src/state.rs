//! Where a running VM keeps its sockets and pid: the per-VM state directory
//! `${XDG_RUNTIME_DIR:-/run}/hafen/vms/NAME-PID/`.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use hafen_proto::net::PublishedPort;

/// File name of QEMU's QMP socket in a state directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// File name of QEMU's pid in a state directory.
pub const QEMU_PID: &str = "qemu.pid";
/// File name of the host end of the guest's control port (QEMU serves it;
/// one client at a time: the monitor).
pub const CONTROL_SOCKET: &str = "control.sock";
/// File name of the monitor's socket for the CLI.
pub const API_SOCKET: &str = "api.sock";
/// File name of the guest console's copy when the VM runs detached.
pub const CONSOLE_LOG: &str = "console.log";
/// Directory of the containers' logs kept on the host.
pub const LOGS_DIR: &str = "logs";
/// File name of the ports the run forwards (JSON, a list of
/// [`PublishedPort`]), written before QEMU starts so that `hafen port` and
/// `hafen ps` show them without asking the guest.
pub const PORTS_FILE: &str = "ports.json";

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

    /// Records the ports this run forwards ([`PORTS_FILE`]); written under
    /// a temporary name and renamed, so a reader never sees half of it.
    pub fn write_ports(&self, ports: &[PublishedPort]) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(ports).map_err(io::Error::other)?;
        let tmp = self.path.join(format!(".{PORTS_FILE}.tmp"));
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, self.path.join(PORTS_FILE))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running VM, as found in the state directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir {
    /// Its name (the state directory's name without the pid).
    pub name: String,
    /// The pid of the `hafen run` that owns it (the monitor).
    pub pid: u32,
    /// Its state directory.
    pub path: PathBuf,
}

impl VmDir {
    /// The monitor's socket for the CLI.
    pub fn api_socket(&self) -> PathBuf {
        self.path.join(API_SOCKET)
    }

    /// The ports the run forwards, as it recorded them before QEMU
    /// started; none when it recorded nothing (a `hafen run` from before
    /// networking, or one still starting).
    pub fn ports(&self) -> io::Result<Vec<PublishedPort>> {
        match std::fs::read(self.path.join(PORTS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// Every VM whose monitor is still running, by name.
pub fn list_vms(vms: &Path) -> Vec<VmDir> {
    let Ok(entries) = std::fs::read_dir(vms) else {
        return Vec::new();
    };
    let mut found: Vec<VmDir> = entries
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name();
            let file = file.to_str()?;
            let (name, pid) = file.rsplit_once('-')?;
            let pid: u32 = pid.parse().ok()?;
            Path::new("/proc")
                .join(pid.to_string())
                .exists()
                .then(|| VmDir {
                    name: name.to_owned(),
                    pid,
                    path: entry.path(),
                })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name).then(a.pid.cmp(&b.pid)));
    found
}

/// Finding a VM by name failed.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// No running VM has the name.
    #[error("no running VM named {name:?} (`hafen ls` lists them)")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// Several do (started without `--name`, from the same image).
    #[error(
        "{count} running VMs are named {name:?}; stop the extra ones or use `hafen run --name`"
    )]
    Ambiguous {
        /// The name asked for.
        name: String,
        /// How many.
        count: usize,
    },
}

/// The running VM called `name`.
pub fn find_vm(vms: &Path, name: &str) -> Result<VmDir, FindError> {
    let mut matches: Vec<VmDir> = list_vms(vms)
        .into_iter()
        .filter(|vm| vm.name == name)
        .collect();
    match matches.len() {
        0 => Err(FindError::NotFound {
            name: name.to_owned(),
        }),
        1 => Ok(matches.remove(0)),
        count => Err(FindError::Ambiguous {
            name: name.to_owned(),
            count,
        }),
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

    #[test]
    fn the_recorded_ports_are_read_back_and_none_is_no_ports() {
        let root = tempfile::tempdir().expect("tempdir");
        let state = StateDir::create(root.path(), "web", std::process::id()).expect("create");
        let vm = find_vm(root.path(), "web").expect("found");
        assert_eq!(vm.ports().expect("no file yet"), []);
        let ports = vec![PublishedPort {
            container: "web".into(),
            address: "10.0.2.40".parse().expect("ip"),
            port: "8080:80".parse().expect("port"),
        }];
        state.write_ports(&ports).expect("write");
        assert_eq!(vm.ports().expect("read"), ports);
        std::fs::write(state.path().join(PORTS_FILE), b"{not json").expect("write");
        let err = vm.ports().expect_err("garbage");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn vms_are_found_by_name_among_live_owners() {
        let root = tempfile::tempdir().expect("tempdir");
        let me = std::process::id();
        for d in [
            format!("web-{me}"),
            "web-4294967295".to_owned(),
            format!("db-x-{me}"),
        ] {
            std::fs::create_dir_all(root.path().join(d)).expect("mkdir");
        }
        let all = list_vms(root.path());
        let names: Vec<&str> = all.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["db-x", "web"], "the dead run is not listed");
        let web = find_vm(root.path(), "web").expect("found");
        assert_eq!(web.pid, me);
        assert_eq!(
            web.api_socket(),
            root.path().join(format!("web-{me}/api.sock"))
        );
        let err = find_vm(root.path(), "nope").expect_err("absent");
        assert!(err.to_string().contains("hafen ls"), "{err}");
        std::fs::create_dir_all(root.path().join("web-1")).expect("mkdir");
        assert!(matches!(
            find_vm(root.path(), "web"),
            Err(FindError::Ambiguous { count: 2, .. })
        ));
    }
}
