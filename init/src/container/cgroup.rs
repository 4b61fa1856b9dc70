//! A container's cgroup v2 directory and its resource limits.
//!
//! Limits are written through a directory handle (`openat` with
//! `O_NOFOLLOW`), never by re-resolving path strings, and the process joins
//! the cgroup at clone time (`CLONE_INTO_CGROUP`), so nothing of the
//! container ever runs outside its limits.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use hafen_proto::spec::Resources;
use rustix::fs::{Mode, OFlags};

/// Where cgroup v2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup operation failed.
#[derive(Debug)]
pub struct CgroupError {
    /// The cgroup directory.
    pub dir: PathBuf,
    /// The file or step.
    pub what: String,
    /// The cause.
    pub source: io::Error,
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cgroup {}: {}: {}",
            self.dir.display(),
            self.what,
            self.source
        )
    }
}

impl std::error::Error for CgroupError {}

/// One file to write and its value.
pub type Setting = (String, String);

/// Translates the spec's resources into cgroup v2 files. Pure, for testing.
pub fn settings(resources: &Resources) -> Result<Vec<Setting>, String> {
    let mut out = Vec::new();
    let max_or = |v: i64| {
        if v < 0 {
            "max".to_owned()
        } else {
            v.to_string()
        }
    };
    if let Some(m) = &resources.memory {
        if let Some(limit) = m.limit {
            out.push(("memory.max".into(), max_or(limit)));
        }
        if let Some(swap) = m.swap {
            // The spec's swap is memory+swap; cgroup v2 counts swap alone.
            let value = match (swap, m.limit) {
                (s, _) if s < 0 => "max".to_owned(),
                (s, Some(l)) if l >= 0 => {
                    if s < l {
                        return Err(format!(
                            "memory.swap ({s}) is smaller than memory.limit ({l})"
                        ));
                    }
                    (s - l).to_string()
                }
                (s, _) => s.to_string(),
            };
            out.push(("memory.swap.max".into(), value));
        }
        if let Some(low) = m.reservation {
            out.push(("memory.low".into(), max_or(low)));
        }
    }
    if let Some(cpu) = &resources.cpu {
        if let Some(shares) = cpu.shares {
            if shares > 0 {
                let shares = shares.clamp(2, 262_144);
                out.push((
                    "cpu.weight".into(),
                    (1 + (shares - 2) * 9999 / 262_142).to_string(),
                ));
            }
        }
        if cpu.quota.is_some() || cpu.period.is_some() {
            let period = cpu.period.unwrap_or(100_000);
            let quota = match cpu.quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_owned(),
            };
            out.push(("cpu.max".into(), format!("{quota} {period}")));
        }
        if let Some(cpus) = &cpu.cpus {
            out.push(("cpuset.cpus".into(), cpus.clone()));
        }
    }
    // 0 means "no limit given" (runc and crun write nothing); negative is unlimited.
    match resources.pids.as_ref().map(|p| p.limit) {
        Some(limit) if limit > 0 => out.push(("pids.max".into(), limit.to_string())),
        Some(limit) if limit < 0 => out.push(("pids.max".into(), "max".into())),
        _ => {}
    }
    if let Some(weight) = resources.block_io.as_ref().and_then(|b| b.weight) {
        out.push(("io.weight".into(), format!("default {weight}")));
    }
    for (key, value) in &resources.unified {
        if key.contains('/') || key.starts_with('.') || !key.contains('.') {
            return Err(format!("unified key {key:?} is not a cgroup file name"));
        }
        out.push((key.clone(), value.clone()));
    }
    Ok(out)
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn is_cgroup2(path: &Path) -> bool {
    rustix::fs::statfs(path)
        .map(|st| super::procfs::fs_magic(&st) == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// The cgroup v2 hierarchy to use: `root` itself, or on a hybrid host (v1
/// controllers, v2 beside them) its `unified` directory, where the device
/// filter and whatever controllers v2 has still apply.
pub fn find_v2(root: &Path) -> Option<PathBuf> {
    if is_cgroup2(root) {
        return Some(root.to_owned());
    }
    let unified = root.join("unified");
    is_cgroup2(&unified).then_some(unified)
}

/// The controller a cgroup file belongs to (`memory` for `memory.max`);
/// `None` for the core `cgroup.*` files every cgroup has.
fn controller_of(file: &str) -> Option<&str> {
    let (controller, _) = file.split_once('.')?;
    (controller != "cgroup").then_some(controller)
}

/// Checks that the hierarchy at `root` offers every controller `settings`
/// need, so a limit that cannot be applied is a clear error up front.
pub fn check_controllers(root: &Path, settings: &[Setting]) -> Result<(), String> {
    if !settings
        .iter()
        .any(|(file, _)| controller_of(file).is_some())
    {
        // Nothing to check: no read of cgroup.controllers on the boot path.
        return Ok(());
    }
    let mut missing: Vec<&str> = Vec::new();
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    for (file, _) in settings {
        if let Some(c) = controller_of(file) {
            if !available.split_whitespace().any(|a| a == c) && !missing.contains(&c) {
                missing.push(c);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the {} controller{} not available in the cgroup v2 hierarchy at {} (it offers: {}); \
         on a host that binds {} to cgroup v1 (a hybrid layout), boot with \
         systemd.unified_cgroup_hierarchy=1 or leave those limits out",
        missing.join(", "),
        if missing.len() == 1 { " is" } else { "s are" },
        root.display(),
        if available.trim().is_empty() {
            "none"
        } else {
            available.trim()
        },
        if missing.len() == 1 { "it" } else { "them" },
    ))
}

/// Which controllers [`create`] enables in the cgroups above a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controllers {
    /// Every controller each level has (as runc does): the OCI runtime.
    All,
    /// Only those the settings write to. PID 1 enables the rest for all its
    /// containers once the first has started ([`enable_all`]): each enabled
    /// controller costs every cgroup made below it (about 10 ms of the
    /// first container's start under TCG), and a controller enabled later
    /// still reaches the cgroups made before.
    Needed,
}

/// Creates the cgroup `path` (relative to `root`), enabling `controllers`
/// on the way, writes `settings`, and returns a handle to it.
pub fn create(
    root: &Path,
    path: &str,
    settings: &[Setting],
    controllers: Controllers,
) -> Result<OwnedFd, CgroupError> {
    let rel = path.trim_start_matches('/');
    let dir = root.join(rel);
    let err = |what: &str| {
        let dir = dir.clone();
        let what = what.to_owned();
        move |e: rustix::io::Errno| CgroupError {
            dir,
            what,
            source: e.into(),
        }
    };
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty())
    {
        return Err(CgroupError {
            dir,
            what: "path".into(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    let mut current = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err("open cgroup root"))?;
    let needed: Vec<&str> = match controllers {
        Controllers::All => Vec::new(),
        Controllers::Needed => {
            let mut needed: Vec<&str> = settings
                .iter()
                .filter_map(|(file, _)| controller_of(file))
                .collect();
            needed.sort_unstable();
            needed.dedup();
            needed
        }
    };
    for component in rel.split('/') {
        match controllers {
            Controllers::All => {
                let _ = enable_controllers(&current);
            }
            Controllers::Needed => enable_some(&current, &needed),
        }
        match rustix::fs::mkdirat(&current, component, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(err("create")(e)),
        }
        current = rustix::fs::openat(
            &current,
            component,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err("open"))?;
    }
    for (file, value) in settings {
        write_at(&current, file, value).map_err(|source| CgroupError {
            dir: dir.clone(),
            what: format!("write {value:?} to {file}"),
            source,
        })?;
    }
    Ok(current)
}

/// Enables in `dir`'s children every controller `dir` has; returns them.
/// Enabling is best effort: a controller that cannot be enabled just
/// leaves its limits unwritable, which the write of that limit then
/// reports. The error is reading `cgroup.controllers`.
fn enable_controllers(dir: &OwnedFd) -> io::Result<String> {
    let fd = rustix::fs::openat(
        dir,
        "cgroup.controllers",
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    let mut buf = [0u8; 512];
    let n = rustix::io::read(&fd, &mut buf)?;
    let available = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
    enable_some(dir, &available.split_whitespace().collect::<Vec<_>>());
    Ok(available)
}

/// Enables `wanted` in `dir`'s children. Best effort, as [`enable_controllers`].
fn enable_some(dir: &OwnedFd, wanted: &[&str]) {
    if wanted.is_empty() {
        return;
    }
    let line: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
    let _ = write_at(dir, "cgroup.subtree_control", &line.join(" "));
}

/// Enables every controller `root` offers in its children, and in those of
/// each directory of `path` below it that exists (PID 1's `hafen`), so
/// cgroups made with [`Controllers::Needed`] get them all. Returns the
/// controllers the root offers.
pub fn enable_all(root: &Path, path: &str) -> io::Result<String> {
    let mut current = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let available = enable_controllers(&current)?;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        match rustix::fs::openat(
            &current,
            component,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => current = fd,
            Err(rustix::io::Errno::NOENT) => break,
            Err(e) => return Err(e.into()),
        }
        enable_controllers(&current)?;
    }
    Ok(available)
}

/// Writes `value` to the file `name` under the directory handle `dir`.
pub fn write_at(dir: &impl AsFd, name: &str, value: &str) -> io::Result<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    let mut bytes = value.as_bytes();
    while !bytes.is_empty() {
        let n = rustix::io::write(&fd, bytes)?;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Removes a container's cgroup directory once it is empty (best effort).
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use hafen_proto::spec::{BlockIo, Cpu, Memory, Pids};

    use super::*;

    #[test]
    fn spec_resources_become_cgroup_v2_files() {
        let resources = Resources {
            memory: Some(Memory {
                limit: Some(64 << 20),
                swap: Some(96 << 20),
                reservation: None,
            }),
            cpu: Some(Cpu {
                shares: Some(1024),
                quota: Some(50_000),
                period: Some(100_000),
                cpus: None,
            }),
            pids: Some(Pids { limit: 32 }),
            block_io: Some(BlockIo { weight: Some(300) }),
            ..Resources::default()
        };
        let got = settings(&resources).expect("valid");
        let want = [
            ("memory.max", "67108864"),
            ("memory.swap.max", "33554432"),
            ("cpu.weight", "39"),
            ("cpu.max", "50000 100000"),
            ("pids.max", "32"),
            ("io.weight", "default 300"),
        ];
        assert_eq!(got, want.map(|(a, b)| (a.to_owned(), b.to_owned())));
    }

    #[test]
    fn unlimited_values_and_bad_input() {
        let resources = Resources {
            memory: Some(Memory {
                limit: Some(-1),
                swap: Some(-1),
                reservation: None,
            }),
            pids: Some(Pids { limit: 0 }),
            ..Resources::default()
        };
        let got = settings(&resources).expect("valid");
        assert!(got.contains(&("memory.max".into(), "max".into())));
        assert!(got.contains(&("memory.swap.max".into(), "max".into())));
        assert!(
            !got.iter().any(|(file, _)| file == "pids.max"),
            "pids.limit 0 means no limit: nothing is written"
        );
        let unlimited = Resources {
            pids: Some(Pids { limit: -1 }),
            ..Resources::default()
        };
        assert_eq!(
            settings(&unlimited).expect("valid"),
            [("pids.max".to_owned(), "max".to_owned())]
        );
        let bad = Resources {
            memory: Some(Memory {
                limit: Some(100),
                swap: Some(50),
                reservation: None,
            }),
            ..Resources::default()
        };
        assert!(settings(&bad)
            .expect_err("swap < limit")
            .contains("smaller"));
        let mut evil = Resources::default();
        evil.unified.insert("../../etc/passwd".into(), "x".into());
        assert!(settings(&evil).is_err());
    }

    #[test]
    fn a_limit_whose_controller_is_missing_is_a_clear_error() {
        let root = tempfile_dir("controllers");
        std::fs::write(root.join("cgroup.controllers"), "hugetlb\n").expect("write");
        let memory = [("memory.max".to_owned(), "1048576".to_owned())];
        let err = check_controllers(&root, &memory).expect_err("no memory controller");
        assert!(
            err.contains("memory controller is not available") && err.contains("hugetlb"),
            "{err}"
        );
        let core = [("cgroup.max.depth".to_owned(), "2".to_owned())];
        assert_eq!(check_controllers(&root, &core), Ok(()));
        std::fs::write(root.join("cgroup.controllers"), "memory pids\n").expect("write");
        assert_eq!(check_controllers(&root, &memory), Ok(()));
        let _ = std::fs::remove_dir_all(&root);
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hafen-cgroup-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn creates_nested_directories_through_handles_and_refuses_dotdot() {
        let root = std::env::temp_dir().join(format!("hafen-cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("mkdir");
        let fd = create(&root, "hafen/c1", &[], Controllers::All).expect("create");
        drop(fd);
        assert!(root.join("hafen/c1").is_dir());
        assert!(create(&root, "hafen/../../escape", &[], Controllers::All).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }
}
