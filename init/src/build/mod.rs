//! The guest half of `hafen image build` ([`hafen_proto::build`]): a
//! builder VM's storage and the helper PID 1 starts for each build op.
//!
//! PID 1 writes the op to a file under [`Storage::ops`] and starts itself
//! as [`HELPER_NAME`]` OPFILE` (chosen by argv[0], like the volume copier),
//! with stdout and stderr streamed to the host and stdin piped only for
//! `PutLayer`. The helper reads and removes the file, does the op and
//! exits with [`SETUP_FAILED`] when it could not (its stderr says why), or
//! for `Run` with the step's own status. Unpacking, packing and running
//! happen here, never in PID 1.
//!
//! Everything lives on one tmpfs PID 1 mounts at boot ([`STORAGE`]):
//! ```text
//! layers/N        layer N in overlayfs form (proto's LAYERS_DIR)
//! staging/N       a PutLayer being unpacked, renamed to layers/N when whole
//! steps/N         a Run's private files: overlay work dir, merged root, /dev/pipes, hosts
//! stubs/          the bottom-most lower: empty mount points (proc, dev, sys,
//!                 etc/hosts, etc/resolv.conf), so the runtime makes none in a layer
//! ops/SLOT        ops on their way from PID 1 to a helper
//! ```

pub mod layer;
pub mod step;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use hafen_proto::build::HELPER_NAME;
use hafen_proto::build::{BuildOp, BUILDER_MARKER, SETUP_FAILED};
use hafen_proto::control::{Body, Envelope};
use hafen_proto::frame;

/// The builder's tmpfs; [`LAYERS_DIR`] is its `layers`.
pub const STORAGE: &str = "/run/hafen/build";

/// The cgroup (under the guest's cgroup2) that holds each step's cgroup.
pub const CGROUP_PARENT: &str = "hafen";

/// Whether this machine was booted as a builder.
pub fn is_builder() -> bool {
    Path::new(BUILDER_MARKER).exists()
}

/// Where a builder keeps its work (see the module's documentation).
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    /// The guest's: [`STORAGE`].
    pub fn guest() -> Storage {
        Storage::at(STORAGE)
    }

    /// One rooted at `root` (tests).
    pub fn at(root: impl Into<PathBuf>) -> Storage {
        Storage { root: root.into() }
    }

    /// The directory holding the layers.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// Layer `n`.
    pub fn layer(&self, n: u32) -> PathBuf {
        self.layers().join(n.to_string())
    }

    /// Where layer `n` is unpacked before it is renamed into place.
    pub fn staging(&self, n: u32) -> PathBuf {
        self.root.join("staging").join(n.to_string())
    }

    /// The private files of the step that makes layer `n`.
    pub fn step_dir(&self, n: u32) -> PathBuf {
        self.root.join("steps").join(n.to_string())
    }

    /// The mount-point stubs under every step's root.
    pub fn stubs(&self) -> PathBuf {
        self.root.join("stubs")
    }

    /// Ops on their way to helpers.
    pub fn ops(&self) -> PathBuf {
        self.root.join("ops")
    }

    /// Makes the directories PID 1 needs.
    pub fn create(&self) -> std::io::Result<()> {
        for dir in [self.layers(), self.ops()] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }
}

/// The cgroup of the step that makes layer `n`, relative to the cgroup2
/// root: what PID 1 kills when the op is cancelled.
pub fn step_cgroup(parent: &str, n: u32) -> String {
    format!("{parent}/build-{n}")
}

/// PID 1's part at boot: a fresh tmpfs for the build's storage, most of
/// the memory (the layers are the build), with trusted.* attributes
/// (CONFIG_TMPFS_XATTR) for opaque directories.
pub fn mount_storage() -> Result<(), String> {
    use rustix::mount::MountFlags;
    crate::mount::mkdir_all(STORAGE, 0o700).map_err(|e| format!("create {STORAGE}: {e}"))?;
    rustix::mount::mount(
        "hafen-build",
        STORAGE,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"size=90%,mode=0700"),
    )
    .map_err(|e| format!("mount a tmpfs on {STORAGE}: {e}"))?;
    Storage::guest()
        .create()
        .map_err(|e| format!("create the directories under {STORAGE}: {e}"))
}

/// Writes `op` to `path` for a helper to read ([`read_op`]).
pub fn write_op(path: &Path, op: &BuildOp) -> Result<(), String> {
    let envelope = Envelope {
        id: 0,
        body: Body::Build(op.clone()),
    };
    let frame = envelope
        .to_frame()
        .map_err(|e| format!("encode the build op: {e}"))?;
    std::fs::write(path, &frame[frame::HEADER..])
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// Reads and removes the op file `path`.
pub fn read_op(path: &Path) -> Result<BuildOp, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let _ = std::fs::remove_file(path);
    match Envelope::from_payload(&bytes) {
        Ok(Envelope {
            body: Body::Build(op),
            ..
        }) => Ok(op),
        Ok(_) => Err(format!("{} holds no build op", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Where the helper works: the storage and the step cgroups' parent.
#[derive(Debug, Clone)]
pub struct Place {
    /// The storage.
    pub storage: Storage,
    /// Where cgroup v2 is mounted.
    pub cgroup_root: PathBuf,
    /// The cgroup (relative to `cgroup_root`) that holds each step's.
    pub cgroup_parent: String,
}

/// The helper's entry point: `[--storage DIR] [--cgroup-parent PATH] OPFILE`
/// (PID 1 passes only the op file; tests root the rest elsewhere).
/// Returns the exit status.
pub fn main(args: Vec<OsString>) -> i32 {
    let mut place = Place {
        storage: Storage::guest(),
        cgroup_root: PathBuf::from(crate::container::cgroup::CGROUP_ROOT),
        cgroup_parent: CGROUP_PARENT.to_owned(),
    };
    let mut args = args.into_iter();
    let mut files = Vec::new();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--storage") => place.storage = Storage::at(args.next().unwrap_or_default()),
            Some("--cgroup-parent") => {
                place.cgroup_parent = args
                    .next()
                    .map(|a| a.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }
            _ => files.push(PathBuf::from(arg)),
        }
    }
    let [op_file] = files.as_slice() else {
        eprintln!(
            "usage: {HELPER_NAME} [--storage DIR] [--cgroup-parent PATH] OPFILE \
             (PID 1 of a builder VM starts it)"
        );
        return SETUP_FAILED;
    };
    let op = match read_op(op_file) {
        Ok(op) => op,
        Err(e) => {
            eprintln!("hafen: {e}");
            return SETUP_FAILED;
        }
    };
    run_op(&place, &op)
}

/// Does `op`; returns the exit status.
pub fn run_op(place: &Place, op: &BuildOp) -> i32 {
    let result = match op {
        BuildOp::PutLayer { layer } => layer::put(&place.storage, *layer, std::io::stdin().lock()),
        BuildOp::GetLayer { layer, epoch } => {
            // As a File, like the volume export's: one copy of the packer.
            match rustix::stdio::stdout().try_clone_to_owned() {
                Ok(fd) => layer::get(&place.storage, *layer, *epoch, std::fs::File::from(fd)),
                Err(e) => Err(format!("stdout: {e}")),
            }
        }
        BuildOp::DropLayers { layers } => layer::drop_layers(place, layers),
        BuildOp::Run(step) => return step::run(place, step),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hafen: {e}");
            SETUP_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use hafen_proto::build::LAYERS_DIR;

    use super::*;

    #[test]
    fn the_guest_storage_holds_the_layers_dir_the_host_knows() {
        assert_eq!(Storage::guest().layers(), Path::new(LAYERS_DIR));
        assert_eq!(Storage::guest().layer(7), Path::new(LAYERS_DIR).join("7"));
    }

    #[test]
    fn ops_survive_the_file_and_the_file_is_gone_after() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("op");
        let op = BuildOp::DropLayers {
            layers: vec![1, 2, 300],
        };
        write_op(&path, &op).expect("write");
        assert_eq!(read_op(&path).expect("read"), op);
        assert!(!path.exists());
        std::fs::write(&path, b"garbage").expect("write");
        assert!(read_op(&path).is_err());
    }
}
