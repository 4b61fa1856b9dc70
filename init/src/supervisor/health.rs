//! Health checks: a command run inside a container on its interval,
//! through the same join as `hafen exec` (the container's namespaces,
//! root, cgroup, user and restrictions), killed with everything it started
//! at its timeout. The verdicts follow docker's: `starting` until a check
//! passes, `healthy` after one passes, `unhealthy` after `retries` failures
//! in a row; failures in the start period do not count.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};

use hafen_proto::control::{self as proto, EventKind, HealthResult, HealthStatus};
use hafen_proto::spec::Process;
use hafen_proto::supervision::{Healthcheck, RestartPolicy};

use super::{Supervisor, TOKEN_HEALTH};
use crate::container::exec::{self, ExecOptions, Target};
use crate::container::StdioMode;
use crate::sys::{self, ExitStatus};

/// Checks kept per container (docker keeps five).
const KEPT_RESULTS: usize = 5;
/// Output kept per check (docker keeps 4 KiB).
const KEPT_OUTPUT: usize = 4096;
/// How long after the check exited its output may stay open (something it
/// started in the background holds it).
const OUTPUT_GRACE_NS: u64 = 100_000_000;

/// A container's health check and what it found.
#[derive(Debug)]
pub(super) struct Health {
    check: Healthcheck,
    command: Vec<String>,
    pub status: HealthStatus,
    streak: u32,
    log: VecDeque<HealthResult>,
    /// When the next check is due (monotonic ns); `None` while the
    /// container is not running.
    next: Option<u64>,
    /// When the container started (monotonic ns), for the start period.
    started: u64,
    probe: Option<Probe>,
}

/// A check that is running.
#[derive(Debug)]
struct Probe {
    pid: libc::pid_t,
    start_ns: u64,
    deadline: u64,
    /// stdout, stderr while open.
    outputs: [Option<OwnedFd>; 2],
    output: Vec<u8>,
    /// How it ended, and when (monotonic ns).
    exit: Option<(ExitStatus, u64)>,
    timed_out: bool,
    /// The container it checked has ended: its result is dropped.
    abandoned: bool,
}

impl Health {
    pub fn new(check: Healthcheck, command: Vec<String>) -> Health {
        Health {
            check,
            command,
            status: HealthStatus::Starting,
            streak: 0,
            log: VecDeque::new(),
            next: None,
            started: 0,
            probe: None,
        }
    }

    /// What `ps` and `inspect` show.
    pub fn info(&self) -> proto::Health {
        proto::Health {
            status: self.status,
            failing_streak: self.streak,
            log: self.log.iter().cloned().collect(),
        }
    }

    /// The earliest moment the loop has work for this check.
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.probe {
            Some(p) if p.abandoned => None,
            Some(p) => Some(match p.exit {
                Some((_, at)) => at + OUTPUT_GRACE_NS,
                None => p.deadline,
            }),
            None => self.next,
        }
    }

    /// Records one result; returns the new status when it changed.
    fn record(&mut self, result: HealthResult, now: u64) -> Option<HealthStatus> {
        let before = self.status;
        if result.exit_code == 0 {
            self.streak = 0;
            self.status = HealthStatus::Healthy;
        } else {
            let in_start_period = now.saturating_sub(self.started) < self.check.start_period();
            if !(in_start_period && self.status == HealthStatus::Starting) {
                self.streak += 1;
                if self.streak >= self.check.retries() {
                    self.status = HealthStatus::Unhealthy;
                }
            }
        }
        if self.log.len() == KEPT_RESULTS {
            self.log.pop_front();
        }
        self.log.push_back(result);
        self.next = Some(now + self.wait(now));
        (self.status != before).then_some(self.status)
    }

    /// How long after `now` the next check is due: the start interval
    /// while in the start period and not yet healthy, else the interval.
    fn wait(&self, now: u64) -> u64 {
        let in_start_period = now.saturating_sub(self.started) < self.check.start_period();
        if in_start_period && self.status == HealthStatus::Starting {
            self.check.start_interval()
        } else {
            self.check.interval()
        }
    }
}

impl Supervisor {
    /// Container `i` started: its checks begin after one interval.
    pub(super) fn health_started(&mut self, i: usize) {
        if let Some(h) = self.containers[i].health.as_mut() {
            let now = sys::monotonic_ns();
            h.status = HealthStatus::Starting;
            h.streak = 0;
            h.started = now;
            h.next = Some(now + h.wait(now));
        }
    }

    /// Container `i` ended: no more checks, and a running one is killed.
    pub(super) fn health_stopped(&mut self, i: usize) {
        if let Some(h) = self.containers[i].health.as_mut() {
            h.next = None;
            if let Some(p) = h.probe.as_mut() {
                p.abandoned = true;
                kill_group(p.pid);
            }
        }
        self.close_probe_outputs(i);
    }

    /// Starts the checks that are due and ends those past their timeout.
    pub(super) fn health_tick(&mut self) {
        let now = sys::monotonic_ns();
        for i in 0..self.containers.len() {
            let Some(h) = self.containers[i].health.as_mut() else {
                continue;
            };
            match h.probe.as_mut() {
                Some(p) if p.abandoned => {}
                Some(p) => match p.exit {
                    None if now >= p.deadline && !p.timed_out => {
                        p.timed_out = true;
                        kill_group(p.pid);
                    }
                    Some((_, at)) if now >= at + OUTPUT_GRACE_NS => self.probe_finish(i),
                    _ => {}
                },
                None if h.next.is_some_and(|t| now >= t) && self.shutdown.is_none() => {
                    self.probe_start(i);
                }
                None => {}
            }
        }
    }

    fn probe_start(&mut self, i: usize) {
        let c = &self.containers[i];
        let (Some(pid), Some(h)) = (c.pid(), c.health.as_ref()) else {
            return;
        };
        let base = c.bundle.spec.process.clone().unwrap_or_default();
        let process = Process {
            terminal: false,
            console_size: None,
            args: h.command.clone(),
            ..base
        };
        let seccomp = c.bundle.seccomp();
        let opts = ExecOptions {
            stdio: StdioMode::Pipe { stdin: false },
            console: None,
            preserve_fds: 0,
        };
        let target = Target {
            pid,
            cgroup: c.cgroup.as_deref(),
        };
        let timeout = h.check.timeout();
        let start_ns = sys::boottime_ns();
        match exec::exec(target, &process, seccomp, &opts) {
            Ok(spawned) => {
                let now = sys::monotonic_ns();
                let mut probe = Probe {
                    pid: spawned.pid,
                    start_ns,
                    deadline: now + timeout,
                    outputs: [None, None],
                    output: Vec::new(),
                    exit: None,
                    timed_out: false,
                    abandoned: false,
                };
                if let Some(io) = spawned.io {
                    for (s, fd) in [io.stdout, io.stderr].into_iter().enumerate() {
                        let token = TOKEN_HEALTH + 2 * i as u64 + s as u64;
                        if let Err(e) = self.epoll.add(fd.as_raw_fd(), token) {
                            warn!("cannot watch a health check's output: {e}");
                        }
                        probe.outputs[s] = Some(fd);
                    }
                }
                if let Some(h) = self.containers[i].health.as_mut() {
                    h.probe = Some(probe);
                }
            }
            Err(e) => {
                let result = HealthResult {
                    start_ns,
                    end_ns: sys::boottime_ns(),
                    exit_code: -1,
                    output: format!("the health check could not run: {e}"),
                };
                self.health_result(i, result);
            }
        }
    }

    /// Reads a check's output (token `n` past [`TOKEN_HEALTH`]).
    pub(super) fn health_ready(&mut self, n: u64) {
        let (i, s) = ((n / 2) as usize, (n % 2) as usize);
        let Some(p) = self
            .containers
            .get_mut(i)
            .and_then(|c| c.health.as_mut())
            .and_then(|h| h.probe.as_mut())
        else {
            return;
        };
        let Some(fd) = p.outputs[s].as_ref() else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut closed = false;
        for _ in 0..16 {
            match sys::read(fd.as_raw_fd(), &mut buf) {
                Ok(Some(0)) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(Some(n)) => {
                    let room = KEPT_OUTPUT.saturating_sub(p.output.len());
                    p.output.extend_from_slice(&buf[..n.min(room)]);
                }
                Ok(None) => break,
            }
        }
        if closed {
            if let Some(fd) = p.outputs[s].take() {
                let _ = self.epoll.delete(fd.as_raw_fd());
            }
            let done = p.exit.is_some() && p.outputs.iter().all(Option::is_none);
            if done {
                self.probe_finish(i);
            }
        }
    }

    /// The reaper saw `pid` end: true when it was a health check.
    pub(super) fn health_exited(&mut self, pid: libc::pid_t, status: ExitStatus) -> bool {
        let Some(i) = self.containers.iter().position(|c| {
            c.health
                .as_ref()
                .and_then(|h| h.probe.as_ref())
                .is_some_and(|p| p.pid == pid)
        }) else {
            return false;
        };
        // Whatever it left running in its process group goes with it.
        kill_group(pid);
        let Some(p) = self.containers[i]
            .health
            .as_mut()
            .and_then(|h| h.probe.as_mut())
        else {
            return true;
        };
        if p.abandoned {
            self.close_probe_outputs(i);
            if let Some(h) = self.containers[i].health.as_mut() {
                h.probe = None;
            }
            return true;
        }
        p.exit = Some((status, sys::monotonic_ns()));
        if p.outputs.iter().all(Option::is_none) {
            self.probe_finish(i);
        }
        true
    }

    fn close_probe_outputs(&mut self, i: usize) {
        let Some(p) = self.containers[i]
            .health
            .as_mut()
            .and_then(|h| h.probe.as_mut())
        else {
            return;
        };
        for fd in p.outputs.iter_mut().filter_map(Option::take) {
            let _ = self.epoll.delete(fd.as_raw_fd());
        }
    }

    /// A check ended and its output is in (or its grace ran out).
    fn probe_finish(&mut self, i: usize) {
        self.close_probe_outputs(i);
        let Some(p) = self.containers[i]
            .health
            .as_mut()
            .and_then(|h| h.probe.take())
        else {
            return;
        };
        let (exit_code, mut output) = match p.exit {
            _ if p.timed_out => (
                -1,
                format!(
                    "the health check did not finish within its timeout; killed. {}",
                    String::from_utf8_lossy(&p.output)
                ),
            ),
            Some((status, _)) => (status.code(), String::from_utf8_lossy(&p.output).into()),
            None => (-1, String::from_utf8_lossy(&p.output).into()),
        };
        output.truncate(output.trim_end().len());
        let result = HealthResult {
            start_ns: p.start_ns,
            end_ns: sys::boottime_ns(),
            exit_code,
            output,
        };
        self.health_result(i, result);
    }

    fn health_result(&mut self, i: usize, result: HealthResult) {
        let now = sys::monotonic_ns();
        let c = &mut self.containers[i];
        let Some(h) = c.health.as_mut() else {
            return;
        };
        let failed = result.exit_code != 0;
        let Some(status) = h.record(result, now) else {
            return;
        };
        if failed {
            warn!("{} is {}", c.bundle.name, status.as_str());
        } else {
            info!("{} is {}", c.bundle.name, status.as_str());
        }
        self.emit(i, EventKind::HealthStatus { status });
        let c = &mut self.containers[i];
        if status == HealthStatus::Unhealthy
            && c.bundle.restart != RestartPolicy::No
            && !c.held
            && self.shutdown.is_none()
        {
            info!("restarting {}: it is unhealthy", c.bundle.name);
            c.restarts.for_health = true;
            self.stop(i, None);
        }
    }
}

/// SIGKILL to the process group `pid` leads (a check runs in its own
/// session), so that nothing it started outlives it.
fn kill_group(pid: libc::pid_t) {
    let _ = sys::kill(-pid, libc::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn health(retries: u32, start_period_ns: u64) -> Health {
        Health::new(
            Healthcheck {
                test: vec!["CMD".into(), "true".into()],
                interval_ns: S,
                retries,
                start_period_ns,
                ..Healthcheck::default()
            },
            vec!["true".into()],
        )
    }

    fn result(exit_code: i32) -> HealthResult {
        HealthResult {
            start_ns: 0,
            end_ns: 0,
            exit_code,
            output: String::new(),
        }
    }

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy_and_a_pass_heals_it() {
        let mut h = health(2, 0);
        assert_eq!(h.record(result(1), 10 * S), None);
        assert_eq!(h.record(result(1), 11 * S), Some(HealthStatus::Unhealthy));
        assert_eq!(h.record(result(1), 12 * S), None);
        assert_eq!(h.streak, 3);
        assert_eq!(h.record(result(0), 13 * S), Some(HealthStatus::Healthy));
        assert_eq!(h.streak, 0);
        assert_eq!(h.next, Some(14 * S));
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_until_a_pass() {
        let mut h = health(1, 5 * S);
        h.started = 100 * S;
        assert_eq!(h.record(result(1), 101 * S), None);
        assert_eq!(h.status, HealthStatus::Starting);
        assert_eq!(h.record(result(0), 102 * S), Some(HealthStatus::Healthy));
        // Once healthy, a failure counts even within the start period.
        assert_eq!(h.record(result(1), 103 * S), Some(HealthStatus::Unhealthy));
        // After the start period, a failure from `starting` counts too.
        // (Checks come at the start interval within it, then the interval.)
        let mut spaced = health(3, 5 * S);
        spaced.check.start_interval_ns = S / 10;
        spaced.started = 100 * S;
        assert_eq!(spaced.wait(100 * S), S / 10);
        assert_eq!(spaced.wait(105 * S), S);
        let mut late = health(1, 5 * S);
        late.started = 100 * S;
        assert_eq!(
            late.record(result(1), 106 * S),
            Some(HealthStatus::Unhealthy)
        );
    }

    #[test]
    fn only_the_last_five_results_are_kept() {
        let mut h = health(3, 0);
        for code in 0..8 {
            h.record(result(code), S);
        }
        let codes: Vec<i32> = h.log.iter().map(|r| r.exit_code).collect();
        assert_eq!(codes, [3, 4, 5, 6, 7]);
    }
}
