//! `hafen volume export|import`: PID 1's half. The copying itself is the
//! copier process's ([`crate::volume::copy`]), run as an exec session with
//! no container, so its archive streams over the channel with the exec
//! sessions' back-pressure. PID 1 decides whether the copy may happen,
//! freezes the running containers that mount the volume for an export
//! (thawed when the copier ends, however it ends), and keeps containers
//! off a volume being imported.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use hafen_proto::control::{CopyDirection, ErrorCode, EventKind};
use hafen_proto::layout::valid_volume_name;

use super::exec::{ExecSession, MAX_EXECS};
use super::requests::{error, Refusal};
use super::{State, Supervisor};
use crate::sys;
use crate::volume::{self, copy};

/// A running copy: what to undo when it ends.
#[derive(Debug)]
pub(super) struct CopyJob {
    volume: String,
    direction: CopyDirection,
    /// Containers frozen for an export.
    frozen: Vec<usize>,
}

/// Writes `1` (freeze) or `0` (thaw) to a cgroup's `cgroup.freeze`.
fn set_frozen(dir: &Path, frozen: bool) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })
}

impl Supervisor {
    /// The containers that mount `name`.
    fn mounters(&self, name: &str) -> Vec<usize> {
        (0..self.containers.len())
            .filter(|&i| self.containers[i].bundle.volumes.iter().any(|v| v == name))
            .collect()
    }

    /// The volume being imported that container `i` mounts, if any.
    pub(super) fn importing(&self, i: usize) -> Option<&str> {
        let volumes = &self.containers.get(i)?.bundle.volumes;
        self.execs.iter().find_map(|e| {
            let job = e.copy()?;
            (job.direction == CopyDirection::Import && volumes.contains(&job.volume))
                .then_some(job.volume.as_str())
        })
    }

    /// Starts copying `name` in `direction`; answers ExecStarted itself.
    pub(super) fn volume_copy(
        &mut self,
        id: u32,
        name: String,
        direction: CopyDirection,
    ) -> Result<(), Refusal> {
        if !valid_volume_name(&name) {
            return Err(error(
                ErrorCode::Failed,
                format!("{name:?} is not a volume name ([a-z0-9][a-z0-9_.-]*, at most 64 bytes)"),
            ));
        }
        if !volume::has_data_disk() {
            return Err(error(
                ErrorCode::Failed,
                "this machine has no data disk: boot the image with `hafen run`, which attaches one",
            ));
        }
        if self.execs.len() >= MAX_EXECS {
            return Err(error(
                ErrorCode::Busy,
                format!("{MAX_EXECS} exec'd processes and copies are running already"),
            ));
        }
        if self
            .execs
            .iter()
            .any(|e| e.copy().is_some_and(|job| job.volume == name))
        {
            return Err(error(
                ErrorCode::Busy,
                format!("volume {name} is being exported or imported already"),
            ));
        }
        let mounters = self.mounters(&name);
        let exists = volume::volume_dir(&name).is_dir();
        let mut frozen = Vec::new();
        match direction {
            CopyDirection::Export => {
                if !exists {
                    let message = if mounters.is_empty() {
                        format!("there is no volume {name}")
                    } else {
                        format!(
                            "volume {name} does not exist yet: no container that mounts it has started"
                        )
                    };
                    return Err(error(ErrorCode::NotFound, message));
                }
                frozen = self.freeze(&name, &mounters)?;
            }
            CopyDirection::Import => {
                if let Some(&i) = mounters.iter().find(|&&i| self.may_use(i)) {
                    let c = &self.containers[i];
                    return Err(error(
                        ErrorCode::Conflict,
                        format!(
                            "volume {name} is mounted by container {0}, which is {1}: \
                             stop it first (hafen stop VM {0}) and start it after the import",
                            c.bundle.name,
                            if c.pid().is_some() {
                                "running"
                            } else {
                                "about to start"
                            }
                        ),
                    ));
                }
            }
        }
        let spawned = self.spawn_copier(&name, direction, &frozen);
        let (pid, stdout, stderr, stdin) = match spawned {
            Ok(parts) => parts,
            Err(e) => {
                self.thaw(&frozen);
                return Err(error(
                    ErrorCode::Failed,
                    format!("cannot start the volume copier: {e}"),
                ));
            }
        };
        let job = CopyJob {
            volume: name,
            direction,
            frozen,
        };
        let slot = self.exec_slot();
        let mut session = ExecSession::new(id, slot, pid, None, Some(job));
        session.set_pipes(stdout, stderr, stdin);
        self.add_exec_session(session);
        Ok(())
    }

    /// Whether container `i` runs or may start on its own (a copy into its
    /// volume must wait for it to be stopped and stay so).
    fn may_use(&self, i: usize) -> bool {
        let c = &self.containers[i];
        c.pid().is_some()
            || c.restarts.due.is_some()
            || (c.state == State::NotStarted && !c.held && self.shutdown.is_none())
    }

    /// Freezes the running containers among `mounters`; all or none.
    fn freeze(&mut self, name: &str, mounters: &[usize]) -> Result<Vec<usize>, Refusal> {
        let mut frozen = Vec::new();
        for &i in mounters {
            let c = &self.containers[i];
            if c.pid().is_none() {
                continue;
            }
            let result = match &c.cgroup {
                Some(dir) => set_frozen(dir, true).map_err(|e| e.to_string()),
                None => Err("it has no cgroup of its own".to_owned()),
            };
            if let Err(e) = result {
                let message = format!(
                    "cannot pause container {} to export volume {name} consistently: {e}; \
                     stop it first (hafen stop VM {})",
                    c.bundle.name, c.bundle.name
                );
                self.thaw(&frozen);
                return Err(error(ErrorCode::Failed, message));
            }
            self.containers[i].frozen = true;
            self.emit(i, EventKind::Pause);
            frozen.push(i);
        }
        Ok(frozen)
    }

    fn thaw(&mut self, frozen: &[usize]) {
        for &i in frozen {
            let c = &mut self.containers[i];
            if !c.frozen {
                continue;
            }
            c.frozen = false;
            if let Some(dir) = &c.cgroup {
                if let Err(e) = set_frozen(dir, false) {
                    error!("cannot thaw {} after a volume export: {e}", c.bundle.name);
                }
            }
            self.emit(i, EventKind::Unpause);
        }
    }

    /// A copier ended: its frozen containers run again.
    pub(super) fn copy_ended(&mut self, job: CopyJob) {
        self.thaw(&job.frozen);
    }

    /// The machine is ending: volume copies still running are killed (an
    /// import leaves its volume as it was). True while one is left.
    pub(super) fn end_copies(&mut self) -> bool {
        let mut left = false;
        for e in &self.execs {
            if let (Some(job), Some(pid)) = (e.copy(), e.running_pid()) {
                if !left {
                    warn!(
                        "the machine is ending: the {} of volume {} is cut short",
                        match job.direction {
                            CopyDirection::Export => "export",
                            CopyDirection::Import => "import",
                        },
                        job.volume
                    );
                }
                let _ = sys::kill(pid, libc::SIGKILL);
                left = true;
            }
        }
        left
    }

    /// Starts the copier: hafen-init itself under [`copy::PROGRAM_NAME`].
    #[allow(clippy::type_complexity)]
    fn spawn_copier(
        &self,
        name: &str,
        direction: CopyDirection,
        frozen: &[usize],
    ) -> std::io::Result<(libc::pid_t, OwnedFd, OwnedFd, Option<OwnedFd>)> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0(copy::PROGRAM_NAME);
        match direction {
            CopyDirection::Export => {
                cmd.arg("export").arg(name).stdin(Stdio::null());
                for dir in frozen
                    .iter()
                    .filter_map(|&i| self.containers[i].cgroup.as_ref())
                {
                    cmd.arg("--frozen").arg(dir);
                }
            }
            CopyDirection::Import => {
                cmd.arg("import").arg(name).stdin(Stdio::piped());
            }
        }
        super::exec::spawn_helper_session(&mut cmd)
    }
}
