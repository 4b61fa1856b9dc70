//! What `hafen image build` asks of a builder VM: the guest half of a
//! Dockerfile build.
//!
//! A builder VM is a Hafen VM booted with no containers and the
//! [`BUILDER_MARKER`] file in its initramfs; only such a PID 1 accepts
//! [`BuildOp`]s (any other answers `Error { code: Unsupported }`). The guest
//! keeps numbered layers, each a directory in overlayfs form (a whiteout is
//! a 0/0 character device, an opaque directory has
//! `trusted.overlay.opaque=y`), under [`LAYERS_DIR`]; the host decides the
//! numbers and which layers a step stacks.
//!
//! Every op is answered like `Body::Exec`: `ExecStarted`, `Output` frames,
//! then `ExecExit`. The work runs in a child of PID 1 (hafen-init started as
//! [`HELPER_NAME`]), never in PID 1 itself. A helper that cannot do its
//! part says why on stderr and exits with [`SETUP_FAILED`]; for
//! [`BuildOp::Run`] every other status is the step's own.

use serde::{Deserialize, Serialize};

/// The file whose presence in the initramfs makes PID 1 a builder.
pub const BUILDER_MARKER: &str = "/etc/hafen/builder";

/// Where the guest keeps layers: `LAYERS_DIR/N`.
pub const LAYERS_DIR: &str = "/run/hafen/build/layers";

/// argv[0] that selects the build helper in hafen-init.
pub const HELPER_NAME: &str = "hafen-build";

/// The helper's exit status when it could not do its part (as `docker
/// run` uses 125 for its own failures).
pub const SETUP_FAILED: i32 = 125;

/// One thing for a builder VM to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildOp {
    /// Unpack the tar archive that follows as `Input` frames (ended by an
    /// empty one) into layer `layer`, which must not exist yet. OCI
    /// whiteouts (`.wh.NAME`, `.wh..wh..opq`) become their overlayfs form;
    /// paths are confined to the layer as a volume import confines them.
    /// A layer that fails to unpack does not exist afterwards.
    PutLayer {
        /// The new layer's number.
        layer: u32,
    },
    /// Run a process in a container whose root is an overlay of the
    /// `lowers` (top-most first) with the new layer `layer` as its upper
    /// directory. What the process changes stays in that layer.
    Run(Box<RunStep>),
    /// Write layer `layer` to stdout as an OCI layer: a tar archive in the
    /// volume export's deterministic pax form (name order, no user names),
    /// whiteouts as `.wh.` entries, no `trusted.overlay.*` xattrs, and
    /// every modification time later than `epoch` (seconds) set to `epoch`.
    GetLayer {
        /// Which layer.
        layer: u32,
        /// The clamp (`SOURCE_DATE_EPOCH`, or the build's fixed epoch).
        epoch: i64,
    },
    /// Remove layers the host no longer needs (unknown numbers are
    /// ignored).
    DropLayers {
        /// Which layers.
        layers: Vec<u32>,
    },
}

/// A RUN step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStep {
    /// The new layer that becomes the overlay's upper directory.
    pub layer: u32,
    /// Existing layers, top-most first (empty: an empty root, `FROM
    /// scratch`).
    pub lowers: Vec<u32>,
    /// argv; `args[0]` is looked up in `PATH` of `env` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Absolute working directory, made (owned by root, 0755) when missing.
    pub cwd: String,
    /// The user the process runs as (resolved by the host from the
    /// stage's /etc/passwd and /etc/group).
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Whether the step shares the VM's network (`--network=host`);
    /// otherwise it has its own namespace with only `lo`.
    pub host_network: bool,
    /// The container's hostname.
    pub hostname: String,
    /// Files the process needs outside its root (heredoc scripts at
    /// `/dev/pipes/NAME`); they are not part of the layer.
    pub files: Vec<StepFile>,
    /// The system call filter, a [`crate::spec::Seccomp`] as JSON (the
    /// host sends the default profile every container of an appliance
    /// gets); `None`: no filter. JSON because the spec types leave out
    /// empty fields, which postcard cannot carry.
    pub seccomp_json: Option<String>,
}

/// A file [`RunStep`] puts into the container, outside its layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFile {
    /// Absolute path in the container; only under `/dev/pipes/`.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// The content.
    #[serde(with = "crate::bytes")]
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Body, Envelope};

    #[test]
    fn every_op_survives_the_wire_with_every_field() {
        let run = RunStep {
            layer: 7,
            lowers: vec![6, 1],
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/src".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![50],
            host_network: false,
            hostname: "hafen-build".into(),
            files: vec![StepFile {
                path: "/dev/pipes/EOF".into(),
                mode: 0o755,
                data: b"#!/bin/sh\necho hi\n".to_vec(),
            }],
            seccomp_json: Some(r#"{"defaultAction":"SCMP_ACT_ERRNO"}"#.into()),
        };
        for op in [
            BuildOp::PutLayer { layer: 1 },
            BuildOp::Run(Box::new(run)),
            BuildOp::GetLayer { layer: 7, epoch: 0 },
            BuildOp::DropLayers { layers: vec![1, 7] },
        ] {
            let envelope = Envelope {
                id: 3,
                body: Body::Build(op),
            };
            let frame = envelope.to_frame().expect("encode");
            let back = Envelope::from_payload(&frame[crate::frame::HEADER..]).expect("decode");
            assert_eq!(back, envelope);
        }
    }
}
