//! Hafen's policy for a container, carried in OCI runtime-spec annotations.
//!
//! Any OCI bundle dropped into the guest's containers directory runs; these
//! annotations are optional and default as documented on each key.

use std::fmt;
use std::str::FromStr;

/// `once` or `service` (default `service`); see [`Phase`].
pub const PHASE: &str = "org.hafen.phase";
/// Position in the manifest (a decimal number). Bundles without it start
/// after the numbered ones, in name order.
pub const ORDER: &str = "org.hafen.order";
/// Signal sent to stop the container: `SIGTERM`, `TERM` or a number (default `SIGTERM`).
pub const STOP_SIGNAL: &str = "org.hafen.stop-signal";
/// Seconds between the stop signal and SIGKILL (default 10).
pub const STOP_TIMEOUT: &str = "org.hafen.stop-timeout";
/// Read-only lower directories for the container's overlay root, colon
/// separated, top-most first (overlayfs `lowerdir` order). Without it, the
/// bundle's `root.path` is the only lower directory.
pub const LOWER_DIRS: &str = "org.hafen.lower-dirs";
/// The image the container was made from, as the manifest named it
/// (shown by `hafen ps`).
pub const IMAGE: &str = "org.hafen.image";
/// `true` on the manifest's `main` container: when it ends, the machine
/// shuts down and `hafen run` exits with its status.
pub const MAIN: &str = "org.hafen.main";
/// Bytes of output PID 1 keeps for the container (its log ring), decimal
/// (default [`DEFAULT_LOG_SIZE`]).
pub const LOG_SIZE: &str = "org.hafen.log-size";

/// Its restart policy (default `no`); see
/// [`crate::supervision::RestartPolicy`].
pub const RESTART: &str = "org.hafen.restart";
/// What it waits for before it starts: `NAME=CONDITION` items separated by
/// commas (`db=healthy,migrate=completed`); see
/// [`crate::supervision::parse_depends_on`].
pub const DEPENDS_ON: &str = "org.hafen.depends-on";
/// Its health check as JSON, in an image config's `Healthcheck` form; see
/// [`crate::supervision::Healthcheck`].
pub const HEALTHCHECK: &str = "org.hafen.healthcheck";
/// `true` on a `once` container whose failure stops the boot: the machine
/// powers off with its status.
pub const REQUIRED: &str = "org.hafen.required";

/// The data-disk volumes the container mounts, comma separated: PID 1
/// creates `layout::VOLUMES_DIR/NAME` owned by the container's user (as
/// mapped by its user namespace) before the first start. The bind mounts
/// themselves are ordinary OCI `mounts` entries.
pub const VOLUMES: &str = "org.hafen.volumes";

/// Default size of a container's log ring in the guest: 1 MiB.
pub const DEFAULT_LOG_SIZE: u32 = 1024 * 1024;
/// The smallest log ring a manifest may ask for.
pub const MIN_LOG_SIZE: u32 = 4096;
/// The largest log ring a manifest may ask for: 64 MiB.
pub const MAX_LOG_SIZE: u32 = 64 * 1024 * 1024;

/// Default seconds between the stop signal and SIGKILL.
pub const DEFAULT_STOP_TIMEOUT_SECS: u32 = 10;

/// When a container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Runs to completion at boot, one after another in declared order,
    /// before any service starts.
    Once,
    /// Long-running; started after every `once` container has finished.
    #[default]
    Service,
}

impl Phase {
    /// The name used in manifests and annotations.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Once => "once",
            Phase::Service => "service",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phase name was neither `once` nor `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPhase(pub String);

impl fmt::Display for UnknownPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown phase {:?}: expected \"once\" or \"service\"",
            self.0
        )
    }
}

impl std::error::Error for UnknownPhase {}

impl FromStr for Phase {
    type Err = UnknownPhase;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "once" => Ok(Phase::Once),
            "service" => Ok(Phase::Service),
            other => Err(UnknownPhase(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_round_trips_and_rejects_unknown_names() {
        for phase in [Phase::Once, Phase::Service] {
            assert_eq!(phase.as_str().parse::<Phase>(), Ok(phase));
        }
        assert_eq!(
            "daemon".parse::<Phase>(),
            Err(UnknownPhase("daemon".into()))
        );
    }
}
