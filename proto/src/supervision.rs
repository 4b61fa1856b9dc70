//! How PID 1 supervises containers, as the manifest states it and the
//! annotations carry it: restart policies, dependencies and health checks.
//!
//! The start plan ([`plan`]) lives here too, so that `hafen build` refuses
//! exactly the dependency graphs PID 1 could not run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::annotations::Phase;

/// What happens when a container's init ends (compose's `restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Never restarted.
    #[default]
    No,
    /// Restarted when it exits non-zero or is killed, at most `max` times
    /// in a row (no bound when `None`).
    OnFailure {
        /// The most restarts.
        max: Option<u32>,
    },
    /// Always restarted, unless stopped with `hafen stop` (until `hafen start`).
    Always,
    /// Like `always`; a container stopped with `hafen stop` stays stopped
    /// for the rest of the VM's life, whatever else happens.
    UnlessStopped,
}

impl RestartPolicy {
    /// Whether an init that ended with `success` (exit code 0) after
    /// `restarts` policy restarts is started again.
    pub fn restarts_after(self, success: bool, restarts: u32) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure { max } => !success && max.is_none_or(|m| restarts < m),
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::OnFailure { max: None } => f.write_str("on-failure"),
            RestartPolicy::OnFailure { max: Some(m) } => write!(f, "on-failure:{m}"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

/// What a restart policy is expected to look like.
pub const RESTART_EXPECTED: &str =
    "\"no\", \"on-failure\", \"on-failure:MAX\" (MAX a whole number), \"always\" or \"unless-stopped\"";

impl FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("unknown restart policy {s:?}: expected {RESTART_EXPECTED}");
        match s {
            "no" => Ok(RestartPolicy::No),
            "on-failure" => Ok(RestartPolicy::OnFailure { max: None }),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            _ => match s.strip_prefix("on-failure:") {
                Some(n) => n
                    .parse()
                    .map(|max| RestartPolicy::OnFailure { max: Some(max) })
                    .map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

/// When a dependency counts as ready (compose's `depends_on` conditions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// It has started.
    Started,
    /// Its health check has passed.
    Healthy,
    /// It exited with code 0.
    Completed,
}

impl Condition {
    /// The name used in manifests and annotations.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Healthy => "healthy",
            Condition::Completed => "completed",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Condition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "started" | "service_started" => Ok(Condition::Started),
            "healthy" | "service_healthy" => Ok(Condition::Healthy),
            "completed" | "service_completed_successfully" => Ok(Condition::Completed),
            other => Err(format!(
                "unknown condition {other:?}: expected \"started\", \"healthy\" or \"completed\""
            )),
        }
    }
}

/// One dependency of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The container depended on.
    pub name: String,
    /// When it counts as ready.
    pub condition: Condition,
}

/// Writes dependencies as the `org.hafen.depends-on` annotation does:
/// `db=healthy,migrate=completed`.
pub fn format_depends_on(deps: &[Dependency]) -> String {
    deps.iter()
        .map(|d| format!("{}={}", d.name, d.condition))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads the `org.hafen.depends-on` annotation (a bare name means `started`).
pub fn parse_depends_on(s: &str) -> Result<Vec<Dependency>, String> {
    let mut deps: Vec<Dependency> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, condition) = match item.split_once('=') {
            Some((name, condition)) => (name.trim(), condition.trim().parse()?),
            None => (item, Condition::Started),
        };
        if name.is_empty() {
            return Err(format!("{item:?} names no container"));
        }
        if deps.iter().any(|d| d.name == name) {
            return Err(format!("{name} is listed twice"));
        }
        deps.push(Dependency {
            name: name.to_owned(),
            condition,
        });
    }
    Ok(deps)
}

/// A health check, in the form of an image config's `Healthcheck` (docker's
/// field names, durations in nanoseconds, 0 meaning the default), so an
/// image's own check is carried over as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["CMD", arg...]`, `["CMD-SHELL", command]` or `["NONE"]`.
    #[serde(rename = "Test", default)]
    pub test: Vec<String>,
    /// Between checks (default 30 s).
    #[serde(rename = "Interval", default, skip_serializing_if = "is_zero")]
    pub interval_ns: u64,
    /// How long one check may take (default 30 s).
    #[serde(rename = "Timeout", default, skip_serializing_if = "is_zero")]
    pub timeout_ns: u64,
    /// Failures in this time after a start do not count (default 0).
    #[serde(rename = "StartPeriod", default, skip_serializing_if = "is_zero")]
    pub start_period_ns: u64,
    /// Consecutive failures that make it unhealthy (default 3).
    #[serde(rename = "Retries", default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Between checks during the start period, until one passes (docker
    /// 25's; default 5 s).
    #[serde(rename = "StartInterval", default, skip_serializing_if = "is_zero")]
    pub start_interval_ns: u64,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Docker's defaults.
const DEFAULT_INTERVAL_NS: u64 = 30_000_000_000;
const DEFAULT_TIMEOUT_NS: u64 = 30_000_000_000;
const DEFAULT_RETRIES: u32 = 3;
const DEFAULT_START_INTERVAL_NS: u64 = 5_000_000_000;

impl Healthcheck {
    /// The command to run, or `None` for `["NONE"]` (checks disabled).
    pub fn command(&self) -> Result<Option<Vec<String>>, String> {
        match self.test.split_first() {
            Some((kind, rest)) => match kind.as_str() {
                "NONE" if rest.is_empty() => Ok(None),
                "CMD" if !rest.is_empty() => Ok(Some(rest.to_vec())),
                "CMD-SHELL" if rest.len() == 1 => Ok(Some(vec![
                    "/bin/sh".to_owned(),
                    "-c".to_owned(),
                    rest[0].clone(),
                ])),
                _ => Err(format!(
                    "health check test {:?}: expected [\"CMD\", \"program\", args...], \
                     [\"CMD-SHELL\", \"shell command\"] or [\"NONE\"]",
                    self.test
                )),
            },
            None => Err("health check test is empty: expected [\"CMD\", ...], \
                 [\"CMD-SHELL\", \"...\"] or [\"NONE\"]"
                .to_owned()),
        }
    }

    /// Nanoseconds between checks.
    pub fn interval(&self) -> u64 {
        nonzero_or(self.interval_ns, DEFAULT_INTERVAL_NS)
    }

    /// Nanoseconds one check may take.
    pub fn timeout(&self) -> u64 {
        nonzero_or(self.timeout_ns, DEFAULT_TIMEOUT_NS)
    }

    /// Nanoseconds after a start in which failures do not count.
    pub fn start_period(&self) -> u64 {
        self.start_period_ns
    }

    /// Nanoseconds between checks in the start period.
    pub fn start_interval(&self) -> u64 {
        nonzero_or(self.start_interval_ns, DEFAULT_START_INTERVAL_NS)
    }

    /// Consecutive failures that make the container unhealthy.
    pub fn retries(&self) -> u32 {
        if self.retries == 0 {
            DEFAULT_RETRIES
        } else {
            self.retries
        }
    }
}

fn nonzero_or(v: u64, default: u64) -> u64 {
    if v == 0 {
        default
    } else {
        v
    }
}

/// What has to happen before a container may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prerequisite {
    /// A declared dependency reached its condition.
    Ready {
        /// The container depended on (an index into the plan's input).
        on: usize,
        /// Its condition.
        condition: Condition,
    },
    /// The container ran to its end, however it went (the order `once`
    /// containers run in, and services after them).
    Finished {
        /// Which (an index into the plan's input).
        on: usize,
    },
}

impl Prerequisite {
    /// The container it waits for.
    pub fn on(self) -> usize {
        match self {
            Prerequisite::Ready { on, .. } | Prerequisite::Finished { on } => on,
        }
    }
}

/// A container as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// Its name.
    pub name: &'a str,
    /// When it runs.
    pub phase: Phase,
    /// What it declared it depends on.
    pub depends_on: &'a [Dependency],
}

/// A dependency graph that cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// `container` depends on a name no container has.
    Unknown {
        /// Which container.
        container: String,
        /// The name it gave.
        missing: String,
    },
    /// These containers wait for each other: each link is (who waits,
    /// for whom, why).
    Cycle(Vec<(String, String, &'static str)>),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Unknown { container, missing } => write!(
                f,
                "container {container} depends on {missing:?}, which is no container of this image"
            ),
            PlanError::Cycle(links) => {
                f.write_str("containers wait for each other: ")?;
                for (i, (from, to, why)) in links.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{from} waits for {to} ({why})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for PlanError {}

/// Works out what each container waits for, in declared order:
/// - a `once` container waits for the `once` container declared before it
///   to finish, and for its own dependencies;
/// - a service waits for its dependencies and for every `once` container
///   to finish, unless a `once` container needs it (directly or through
///   other services): then only for its dependencies, so a migration can
///   wait for its database.
///
/// Every container with an unknown dependency or in a cycle is an error;
/// the others still get their prerequisites (PID 1 runs what it can).
pub fn plan(nodes: &[Node<'_>]) -> (Vec<Vec<Prerequisite>>, Vec<(usize, PlanError)>) {
    let index = |name: &str| nodes.iter().position(|n| n.name == name);
    let mut errors = Vec::new();
    let mut explicit: Vec<Vec<(usize, Condition)>> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let mut deps = Vec::new();
        for dep in node.depends_on {
            match index(&dep.name) {
                Some(on) => deps.push((on, dep.condition)),
                None => errors.push((
                    i,
                    PlanError::Unknown {
                        container: node.name.to_owned(),
                        missing: dep.name.clone(),
                    },
                )),
            }
        }
        explicit.push(deps);
    }

    // Services a `once` container needs, through any chain of dependencies.
    let mut needed_by_once = vec![false; nodes.len()];
    let mut stack: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].phase == Phase::Once)
        .collect();
    while let Some(i) = stack.pop() {
        for &(on, _) in &explicit[i] {
            if !needed_by_once[on] {
                needed_by_once[on] = true;
                stack.push(on);
            }
        }
    }

    let onces: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].phase == Phase::Once)
        .collect();
    let mut prerequisites: Vec<Vec<Prerequisite>> = explicit
        .iter()
        .map(|deps| {
            deps.iter()
                .map(|&(on, condition)| Prerequisite::Ready { on, condition })
                .collect()
        })
        .collect();
    for (k, &i) in onces.iter().enumerate() {
        if k > 0 {
            prerequisites[i].push(Prerequisite::Finished { on: onces[k - 1] });
        }
    }
    if let Some(&last) = onces.last() {
        for i in 0..nodes.len() {
            if nodes[i].phase == Phase::Service && !needed_by_once[i] {
                prerequisites[i].push(Prerequisite::Finished { on: last });
            }
        }
    }

    // Cycles, each reported once, on the container that closes it first.
    let mut in_cycle = vec![false; nodes.len()];
    for start in 0..nodes.len() {
        if in_cycle[start] {
            continue;
        }
        if let Some(path) = find_cycle(start, &prerequisites) {
            for &i in &path {
                in_cycle[i] = true;
            }
            let links = path
                .iter()
                .zip(path.iter().skip(1).chain(std::iter::once(&path[0])))
                .map(|(&from, &to)| {
                    let why = match prerequisites[from].iter().find(|p| p.on() == to) {
                        Some(Prerequisite::Ready { condition, .. }) => condition.as_str(),
                        Some(Prerequisite::Finished { .. }) if nodes[from].phase == Phase::Once => {
                            "once containers run in declared order"
                        }
                        _ => "services start after the once containers",
                    };
                    (nodes[from].name.to_owned(), nodes[to].name.to_owned(), why)
                })
                .collect();
            errors.push((start, PlanError::Cycle(links)));
        }
    }
    (prerequisites, errors)
}

/// A cycle through `start`, as the containers on it from `start` on.
fn find_cycle(start: usize, edges: &[Vec<Prerequisite>]) -> Option<Vec<usize>> {
    // Depth-first, iteratively: (node, next edge to try).
    let mut path: Vec<(usize, usize)> = vec![(start, 0)];
    let mut seen = vec![false; edges.len()];
    seen[start] = true;
    while let Some(&mut (node, ref mut next)) = path.last_mut() {
        let Some(p) = edges[node].get(*next) else {
            path.pop();
            continue;
        };
        *next += 1;
        let to = p.on();
        if to == start {
            return Some(path.iter().map(|&(n, _)| n).collect());
        }
        if !seen[to] {
            seen[to] = true;
            path.push((to, 0));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_round_trip_and_unknown_ones_say_what_is_expected() {
        for text in [
            "no",
            "on-failure",
            "on-failure:5",
            "always",
            "unless-stopped",
        ] {
            let policy: RestartPolicy = text.parse().expect(text);
            assert_eq!(policy.to_string(), text);
        }
        for bad in ["sometimes", "on-failure:", "on-failure:-1", "always:3", ""] {
            let e = bad.parse::<RestartPolicy>().expect_err(bad);
            assert!(e.contains("unless-stopped"), "{e}");
        }
    }

    #[test]
    fn on_failure_counts_restarts_and_ignores_success() {
        let p = RestartPolicy::OnFailure { max: Some(2) };
        assert!(p.restarts_after(false, 0));
        assert!(p.restarts_after(false, 1));
        assert!(!p.restarts_after(false, 2));
        assert!(!p.restarts_after(true, 0));
        assert!(RestartPolicy::OnFailure { max: None }.restarts_after(false, 1000));
        assert!(RestartPolicy::Always.restarts_after(true, 1000));
        assert!(!RestartPolicy::No.restarts_after(false, 0));
    }

    #[test]
    fn depends_on_round_trips_and_bare_names_mean_started() {
        let deps = parse_depends_on("db=healthy, migrate=completed,cache").expect("parse");
        assert_eq!(
            format_depends_on(&deps),
            "db=healthy,migrate=completed,cache=started"
        );
        assert!(parse_depends_on("db=ready")
            .expect_err("ready")
            .contains("ready"));
        assert!(parse_depends_on("db,db=healthy")
            .expect_err("twice")
            .contains("twice"));
        assert!(parse_depends_on("=healthy").is_err());
        assert_eq!(parse_depends_on(""), Ok(Vec::new()));
    }

    #[test]
    fn health_check_commands_and_defaults() {
        let check = |test: &[&str]| Healthcheck {
            test: test.iter().map(|s| (*s).to_owned()).collect(),
            ..Healthcheck::default()
        };
        assert_eq!(
            check(&["CMD", "wget", "-q"]).command(),
            Ok(Some(vec!["wget".into(), "-q".into()]))
        );
        assert_eq!(
            check(&["CMD-SHELL", "test -e /ok"]).command(),
            Ok(Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "test -e /ok".into()
            ]))
        );
        assert_eq!(check(&["NONE"]).command(), Ok(None));
        for bad in [&[][..], &["CMD"], &["CMD-SHELL", "a", "b"], &["RUN", "x"]] {
            assert!(check(bad).command().is_err(), "{bad:?}");
        }
        let defaults = check(&["NONE"]);
        assert_eq!(defaults.interval(), 30_000_000_000);
        assert_eq!(defaults.timeout(), 30_000_000_000);
        assert_eq!(defaults.retries(), 3);
        assert_eq!(defaults.start_period(), 0);
    }

    #[test]
    fn health_checks_read_an_image_configs_healthcheck() {
        let json = r#"{"Test":["CMD-SHELL","curl -f http://localhost/"],"Interval":5000000000,"Retries":2}"#;
        let check: Healthcheck = serde_json::from_str(json).expect("parse");
        assert_eq!(check.interval(), 5_000_000_000);
        assert_eq!(check.retries(), 2);
        assert_eq!(check.timeout(), 30_000_000_000);
        assert_eq!(serde_json::to_string(&check).expect("write"), json);
    }

    fn deps(list: &[(&str, Condition)]) -> Vec<Dependency> {
        list.iter()
            .map(|&(name, condition)| Dependency {
                name: name.to_owned(),
                condition,
            })
            .collect()
    }

    #[test]
    fn onces_run_in_order_and_services_after_them_unless_a_once_needs_them() {
        let none = deps(&[]);
        let db_healthy = deps(&[("db", Condition::Healthy)]);
        let nodes = [
            Node {
                name: "db",
                phase: Phase::Service,
                depends_on: &none,
            },
            Node {
                name: "migrate",
                phase: Phase::Once,
                depends_on: &db_healthy,
            },
            Node {
                name: "seed",
                phase: Phase::Once,
                depends_on: &none,
            },
            Node {
                name: "api",
                phase: Phase::Service,
                depends_on: &none,
            },
        ];
        let (plan, errors) = plan(&nodes);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(plan[0], []);
        assert_eq!(
            plan[1],
            [Prerequisite::Ready {
                on: 0,
                condition: Condition::Healthy
            }]
        );
        assert_eq!(plan[2], [Prerequisite::Finished { on: 1 }]);
        assert_eq!(plan[3], [Prerequisite::Finished { on: 2 }]);
    }

    #[test]
    fn cycles_and_unknown_names_are_errors_naming_the_containers() {
        let on_b = deps(&[("b", Condition::Started)]);
        let on_a = deps(&[("a", Condition::Healthy)]);
        let on_ghost = deps(&[("ghost", Condition::Started)]);
        let none = deps(&[]);
        let nodes = [
            Node {
                name: "a",
                phase: Phase::Service,
                depends_on: &on_b,
            },
            Node {
                name: "b",
                phase: Phase::Service,
                depends_on: &on_a,
            },
            Node {
                name: "c",
                phase: Phase::Service,
                depends_on: &on_ghost,
            },
            Node {
                name: "d",
                phase: Phase::Service,
                depends_on: &none,
            },
        ];
        let (plan, errors) = plan(&nodes);
        let messages: Vec<String> = errors.iter().map(|(_, e)| e.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages.contains(
            &"containers wait for each other: a waits for b (started), b waits for a (healthy)"
                .to_owned()
        ));
        assert!(messages
            .iter()
            .any(|m| m.contains("c depends on \"ghost\"")));
        assert_eq!(plan[3], []);
    }

    #[test]
    fn a_cycle_through_the_declared_order_of_onces_is_found() {
        let on_s = deps(&[("s", Condition::Started)]);
        let on_second = deps(&[("second", Condition::Completed)]);
        let none = deps(&[]);
        let nodes = [
            Node {
                name: "first",
                phase: Phase::Once,
                depends_on: &on_s,
            },
            Node {
                name: "s",
                phase: Phase::Service,
                depends_on: &on_second,
            },
            Node {
                name: "second",
                phase: Phase::Once,
                depends_on: &none,
            },
        ];
        let (_, errors) = plan(&nodes);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let message = errors[0].1.to_string();
        assert!(
            message.contains("second waits for first (once containers run in declared order)"),
            "{message}"
        );
    }
}
