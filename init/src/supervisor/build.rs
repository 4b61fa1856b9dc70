//! `hafen image build` in a builder VM: PID 1's half. Each
//! [`BuildOp`] is an exec session without a container, like a volume copy:
//! PID 1 writes the op to a file, starts itself as the build helper
//! ([`crate::build`]) with that file, and the session streams the helper's
//! stdout and stderr (and, for `PutLayer`, the layer into its stdin) with
//! the exec sessions' back-pressure, answering `ExecExit` when it ends.
//!
//! PID 1 refuses what would clash (a layer that exists or is being made,
//! dropping one being made) and ends what the host let go of: a cancelled
//! op, or every op when the host's connection goes, kills the helper and
//! the step's cgroup, so nothing of a step outlives its session.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use hafen_proto::build::{BuildOp, HELPER_NAME};
use hafen_proto::control::ErrorCode;

use super::exec::{ExecSession, MAX_EXECS};
use super::requests::{error, Refusal};
use super::Supervisor;
use crate::build::{self, Storage, CGROUP_PARENT};
use crate::container::cgroup::CGROUP_ROOT;
use crate::sys;

/// A build op's helper, while it runs.
#[derive(Debug)]
pub(super) struct BuildJob {
    /// The request it answers.
    id: u32,
    /// The helper.
    pid: libc::pid_t,
    /// The layer it makes (`PutLayer`, `Run`).
    making: Option<u32>,
    /// A `Run`: its step has a cgroup to kill.
    step: bool,
    /// Killed already (the reaper has yet to see it go).
    killed: bool,
}

impl BuildJob {
    /// Ends it: the helper, then whatever of its step runs (a step the
    /// helper started just before dying is caught too).
    fn kill(&mut self) {
        let _ = sys::kill(self.pid, libc::SIGKILL);
        self.kill_step();
        self.killed = true;
    }

    fn kill_step(&self) {
        if let (true, Some(n)) = (self.step, self.making) {
            build::step::kill_step(Path::new(CGROUP_ROOT), CGROUP_PARENT, n);
        }
    }
}

impl Supervisor {
    /// Makes this PID 1 a builder: it serves [`BuildOp`]s and stays up
    /// without containers until it is told to power off.
    pub fn serve_builds(&mut self) {
        self.builder = true;
    }

    /// Starts the helper for `op`; answers ExecStarted itself.
    pub(super) fn build_start(&mut self, id: u32, op: BuildOp) -> Result<(), Refusal> {
        if !self.builder {
            return Err(error(
                ErrorCode::Unsupported,
                "this machine is not a builder: only a VM booted for `hafen image build` \
                 runs build steps",
            ));
        }
        if self.shutdown.is_some() {
            return Err(error(ErrorCode::Conflict, "the machine is shutting down"));
        }
        if self.execs.len() >= MAX_EXECS {
            return Err(error(
                ErrorCode::Busy,
                format!("{MAX_EXECS} exec'd processes and build ops are running already"),
            ));
        }
        let storage = Storage::guest();
        let being_made = |n: &u32| self.builds.iter().any(|b| b.making == Some(*n));
        let making = match &op {
            BuildOp::PutLayer { layer } => Some(*layer),
            BuildOp::Run(step) => Some(step.layer),
            BuildOp::GetLayer { .. } | BuildOp::DropLayers { .. } => None,
        };
        let busy = match &op {
            BuildOp::GetLayer { layer, .. } => Some(layer),
            BuildOp::DropLayers { layers } => layers.iter().find(|n| being_made(n)),
            _ => making.as_ref(),
        };
        if let Some(n) = busy.filter(|n| being_made(n)) {
            return Err(error(
                ErrorCode::Conflict,
                format!("layer {n} is being made by another build op"),
            ));
        }
        if let Some(n) = making {
            if std::fs::symlink_metadata(storage.layer(n)).is_ok() {
                return Err(error(
                    ErrorCode::Conflict,
                    format!("layer {n} exists already"),
                ));
            }
        }
        let slot = self.exec_slot();
        let op_file = storage.ops().join(slot.to_string());
        build::write_op(&op_file, &op).map_err(|e| error(ErrorCode::Failed, e))?;
        let put = matches!(op, BuildOp::PutLayer { .. });
        let (pid, stdout, stderr, stdin) = spawn_helper(&op_file, put).map_err(|e| {
            let _ = std::fs::remove_file(&op_file);
            error(
                ErrorCode::Failed,
                format!("cannot start the build helper: {e}"),
            )
        })?;
        self.builds.push(BuildJob {
            id,
            pid,
            making,
            step: matches!(op, BuildOp::Run(_)),
            killed: false,
        });
        let mut session = ExecSession::new(id, slot, pid, None, None);
        session.set_pipes(stdout, stderr, stdin);
        self.add_exec_session(session);
        Ok(())
    }

    /// The host cancelled request `id`: if it is a build op, it ends.
    pub(super) fn build_cancel(&mut self, id: u32) {
        if let Some(job) = self.builds.iter_mut().find(|b| b.id == id) {
            job.kill();
        }
    }

    /// The host went away: nothing waits for the build ops' results.
    pub(super) fn cancel_builds(&mut self) {
        for job in &mut self.builds {
            job.kill();
        }
    }

    /// The reaper's hook: a build helper ended (its session reports it).
    /// A step it left running is killed.
    pub(super) fn build_exited(&mut self, pid: libc::pid_t) {
        if let Some(i) = self.builds.iter().position(|b| b.pid == pid) {
            let job = self.builds.remove(i);
            job.kill_step();
        }
    }

    /// The machine is ending: build ops still running are killed. True
    /// while one is left.
    pub(super) fn end_builds(&mut self) -> bool {
        let running = self.builds.iter().filter(|b| !b.killed).count();
        if running > 0 {
            warn!(
                "the machine is ending: {running} build op{} cut short",
                if running == 1 { " is" } else { "s are" }
            );
        }
        self.cancel_builds();
        !self.builds.is_empty()
    }
}

/// Starts hafen-init as the build helper for the op in `op_file`, with a
/// stdin pipe when `input` (else /dev/null). Returns its pid and PID 1's
/// ends of its pipes, non-blocking.
#[allow(clippy::type_complexity)]
fn spawn_helper(
    op_file: &Path,
    input: bool,
) -> std::io::Result<(libc::pid_t, OwnedFd, OwnedFd, Option<OwnedFd>)> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(HELPER_NAME)
        .arg(op_file)
        .stdin(if input { Stdio::piped() } else { Stdio::null() });
    super::exec::spawn_helper_session(&mut cmd)
}
