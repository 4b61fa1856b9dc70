//! Dependencies: when a container may start (its declared dependencies'
//! conditions, the order of `once` containers, services after them), when
//! it never will, and the reverse order at shutdown.

use hafen_proto::control::{EventKind, ExitStatus, HealthStatus};
use hafen_proto::supervision::{Condition, Prerequisite, RestartPolicy};

use super::{Container, State, Supervisor};

/// Where a prerequisite stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Readiness {
    Ready,
    /// Not yet: what it waits for (`db to be healthy`).
    Waiting(String),
    /// Never: why, naming the dependency.
    Never(String),
}

impl Container {
    /// Ended, with no restart coming.
    pub(super) fn finished(&self) -> bool {
        matches!(self.state, State::Exited | State::Failed) && self.restarts.due.is_none()
    }
}

/// Where `p` stands, given every container.
pub(super) fn readiness(p: Prerequisite, containers: &[Container]) -> Readiness {
    let dep = &containers[p.on()];
    let name = &dep.bundle.name;
    let failed = || {
        Readiness::Never(match &dep.error {
            Some(e) => format!("{name} failed: {e}"),
            None => format!("{name} failed"),
        })
    };
    let ended = |what: &str| match &dep.exit {
        Some(exit) => Readiness::Never(format!("{name} {} {what}", exit.status)),
        None => Readiness::Never(format!("{name} ended {what}")),
    };
    let Prerequisite::Ready { condition, .. } = p else {
        return if dep.finished() {
            Readiness::Ready
        } else {
            Readiness::Waiting(format!("{name} to finish"))
        };
    };
    let gave_up = dep.finished();
    match condition {
        Condition::Started if dep.starts > 0 => Readiness::Ready,
        Condition::Started if gave_up => failed(),
        Condition::Started => Readiness::Waiting(format!("{name} to start")),
        Condition::Healthy => match &dep.health {
            None => Readiness::Never(format!("{name} has no health check")),
            Some(h) if h.status == HealthStatus::Healthy && dep.pid().is_some() => Readiness::Ready,
            Some(_) if dep.state == State::Failed && gave_up => failed(),
            Some(_) if gave_up && dep.starts > 0 => ended("before it was healthy"),
            Some(h)
                if h.status == HealthStatus::Unhealthy
                    && dep.bundle.restart == RestartPolicy::No =>
            {
                Readiness::Never(format!("{name} is unhealthy"))
            }
            Some(_) => Readiness::Waiting(format!("{name} to be healthy")),
        },
        Condition::Completed => match &dep.exit {
            Some(exit) if dep.state == State::Exited && exit.status == ExitStatus::Code(0) => {
                Readiness::Ready
            }
            _ if dep.state == State::Failed && gave_up => failed(),
            Some(_) if gave_up => ended("(completed means exit code 0)"),
            _ => Readiness::Waiting(format!("{name} to complete")),
        },
    }
}

impl Supervisor {
    /// Where container `i` stands: ready when every prerequisite is, never
    /// when one will never be, else what it waits for first.
    pub(super) fn start_readiness(&self, i: usize) -> Readiness {
        let mut waiting = None;
        for &p in &self.containers[i].prerequisites {
            match readiness(p, &self.containers) {
                Readiness::Ready => {}
                never @ Readiness::Never(_) => return never,
                Readiness::Waiting(what) => {
                    waiting.get_or_insert(what);
                }
            }
        }
        match waiting {
            Some(what) => Readiness::Waiting(what),
            None => Readiness::Ready,
        }
    }

    /// Starts every container whose prerequisites are met, and fails those
    /// whose never will be; repeats while that changes anything (a failure
    /// may finish the next `once` container's wait).
    pub(super) fn start_ready(&mut self) {
        let waiting = |c: &Container| c.state == State::NotStarted && !c.held;
        if !self.containers.iter().any(waiting) {
            return;
        }
        loop {
            let mut changed = false;
            for i in 0..self.containers.len() {
                let c = &self.containers[i];
                // One whose volume is being imported waits (an import
                // refuses to begin while such a container could start;
                // this only keeps the loop from spinning on it).
                if c.state != State::NotStarted || c.held || self.importing(i).is_some() {
                    continue;
                }
                match self.start_readiness(i) {
                    Readiness::Ready => {
                        let _ = self.start(i);
                        changed = true;
                    }
                    Readiness::Never(reason) => {
                        self.dependency_failed(i, reason);
                        changed = true;
                    }
                    Readiness::Waiting(_) => {}
                }
                if self.shutdown.is_some() {
                    return;
                }
            }
            if !changed {
                return;
            }
        }
    }

    /// Container `i` will never start: `reason` names the dependency.
    pub(super) fn dependency_failed(&mut self, i: usize, reason: String) {
        let c = &mut self.containers[i];
        warn!("{} will not start: {reason}", c.bundle.name);
        c.state = State::Failed;
        c.error = Some(format!("dependency not met: {reason}"));
        self.emit(i, EventKind::DependencyFailed { reason });
        self.gave_up(i, ExitStatus::Code(1));
    }

    /// Containers nothing can start any more although they wait: their
    /// dependencies ended without a verdict. Fails them, so the machine
    /// does not wait forever.
    pub(super) fn fail_stuck(&mut self) {
        for i in 0..self.containers.len() {
            let c = &self.containers[i];
            if c.state == State::NotStarted && !c.held {
                let what = match self.start_readiness(i) {
                    Readiness::Waiting(what) | Readiness::Never(what) => what,
                    Readiness::Ready => continue,
                };
                self.dependency_failed(i, format!("waited for {what}, which can no longer happen"));
            }
        }
    }

    /// At shutdown: sends the stop signal to every running container none
    /// of whose dependents is still running (dependents stop first;
    /// independent branches stop together).
    pub(super) fn stop_in_order(&mut self) {
        for i in 0..self.containers.len() {
            let c = &self.containers[i];
            let State::Running {
                stop_deadline: None,
                ..
            } = c.state
            else {
                continue;
            };
            let dependent_running = self
                .containers
                .iter()
                .any(|d| d.pid().is_some() && d.prerequisites.iter().any(|p| p.on() == i));
            if !dependent_running {
                self.stop(i, None);
            }
        }
    }
}
