//! The verbs about a VM's containers: `hafen ps`, `port`, `inspect VM
//! CONTAINER`, `start`, `stop`, `restart`, `kill`, `wait` and `top`.

use std::io::Write;

use hafen_proto::control::ErrorCode;
use hafen_proto::control::{
    Body, ContainerInfo, ExitInfo, ExitStatus, Health, HealthStatus, ProcessInfo, State,
};
use hafen_proto::net::PublishedPort;
use serde_json::{json, Value};

use super::format::{self, Clock};
use super::{out, Client, Error};
use crate::state::{self, VmDir};

/// `hafen ps`.
#[derive(Debug, Clone)]
pub struct PsOptions {
    /// The VM.
    pub vm: String,
    /// Every container, not only the running ones.
    pub all: bool,
    /// JSON instead of a table.
    pub json: bool,
}

/// `hafen ps`: the VM's containers. Returns the exit code.
pub fn ps(opts: &PsOptions) -> Result<i32, Error> {
    let vm = find(&opts.vm)?;
    // What `hafen run` recorded; a file it could not read shows no ports
    // rather than failing the listing.
    let ports = vm.ports().unwrap_or_default();
    let mut client = Client::connect_to(&vm)?;
    let clock = client.clock()?;
    let containers = list(&mut client)?;
    let shown: Vec<&ContainerInfo> = containers.iter().filter(|c| opts.all || is_up(c)).collect();
    let text = if opts.json {
        let all: Vec<Value> = shown
            .iter()
            .map(|c| summary_json(c, &ports, &clock))
            .collect();
        format!("{}\n", Value::Array(all))
    } else {
        ps_table(&shown, &ports, &clock)
    };
    out(std::io::stdout().lock().write_all(text.as_bytes()))?;
    Ok(0)
}

/// The running VM called `name`.
fn find(name: &str) -> Result<VmDir, Error> {
    let vms = state::vms_dir(&state::runtime_dir());
    Ok(state::find_vm(&vms, name)?)
}

/// `container`'s published ports, docker's `ps` way:
/// `127.0.0.1:8080->80/tcp, 0.0.0.0:5353->53/udp`.
pub fn ports_cell(container: &str, ports: &[PublishedPort]) -> String {
    ports
        .iter()
        .filter(|p| p.container == container)
        .map(|p| p.port.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One mapping as docker's `port` prints it: `80/tcp -> 127.0.0.1:8080`.
pub fn port_line(p: &PublishedPort) -> String {
    format!(
        "{}/{} -> {}:{}",
        p.port.container_port, p.port.protocol, p.port.host_ip, p.port.host_port
    )
}

/// The `hafen port` text: `container`'s mappings, or every container's
/// with its name in front.
pub fn port_text(ports: &[PublishedPort], container: Option<&str>) -> String {
    let mut text = String::new();
    for p in ports {
        match container {
            Some(name) if p.container != name => {}
            Some(_) => text.push_str(&format!("{}\n", port_line(p))),
            None => text.push_str(&format!("{} {}\n", p.container, port_line(p))),
        }
    }
    text
}

/// `hafen port VM [CONTAINER]`: the published ports, as `hafen run`
/// recorded them (the guest is not asked). A container with none prints
/// nothing; only then is the guest asked whether it exists at all, so a
/// misspelt name is an error while the VM answers.
pub fn port(vm: &str, container: Option<&str>) -> Result<i32, Error> {
    let dir = find(vm)?;
    let ports = dir.ports().map_err(|e| Error::Refused {
        vm: vm.to_owned(),
        code: ErrorCode::Failed,
        message: format!(
            "cannot read the ports VM {vm}'s hafen run recorded in {}: {e}",
            dir.path.join(state::PORTS_FILE).display()
        ),
    })?;
    let text = port_text(&ports, container);
    if let (Some(name), true) = (container, text.is_empty()) {
        if let Ok(mut client) = Client::connect_to(&dir) {
            client.set_timeout(Some(std::time::Duration::from_secs(5)));
            if let Ok(all) = list(&mut client) {
                if !all.iter().any(|c| c.name == name) {
                    return Err(Error::Refused {
                        vm: vm.to_owned(),
                        code: ErrorCode::NotFound,
                        message: format!("no container {name:?} in VM {vm}"),
                    });
                }
            }
        }
    }
    out(std::io::stdout().lock().write_all(text.as_bytes()))?;
    Ok(0)
}

/// Every container of the VM.
pub fn list(client: &mut Client) -> Result<Vec<ContainerInfo>, Error> {
    match client.request(Body::List)? {
        Body::Containers(c) => Ok(c),
        other => Err(client.unexpected("List", &other)),
    }
}

/// What `ps` without `-a` shows: running (or about to run again).
fn is_up(c: &ContainerInfo) -> bool {
    matches!(c.state, State::Running | State::Restarting)
}

/// How much of a failed container's error the STATUS column shows: the
/// start ("dependency not met: db ...") names what went wrong.
const STATUS_ERROR_WIDTH: usize = 60;

/// The STATUS column, in docker's words where docker has them: "Up 3
/// minutes (healthy)", "Exited (137) 2 seconds ago, OOM killed",
/// "Restarting (1) in 1.6s", "Created (waiting for db to be healthy)".
pub fn status(c: &ContainerInfo, clock: &Clock) -> String {
    match c.state {
        State::Created => match &c.waiting_for {
            Some(what) => format!("Created (waiting for {})", format::one_line(what)),
            None => "Created".to_owned(),
        },
        State::Running | State::Paused => {
            let up = match c.started_ns {
                Some(t) => format!("Up {}", format::human_duration(clock.ago(t))),
                None => "Up".to_owned(),
            };
            let up = match c.state {
                // docker's words for a frozen container.
                State::Paused => format!("{up} (Paused)"),
                _ => up,
            };
            match &c.health {
                Some(h) => format!("{up} ({})", health_words(h.status)),
                None => up,
            }
        }
        State::Restarting => restarting_status(c, clock),
        State::Exited => match &c.exit {
            Some(exit) => format!(
                "Exited ({}) {} ago{}",
                exit.status.code(),
                format::human_duration(clock.ago(exit.finished_ns)),
                oom_note(exit)
            ),
            None => "Exited".to_owned(),
        },
        State::Failed => match &c.error {
            Some(e) => format!(
                "Failed: {}",
                format::truncate(&format::one_line(e), STATUS_ERROR_WIDTH)
            ),
            None => "Failed to start".to_owned(),
        },
    }
}

/// Docker's words for a health status in `ps`.
fn health_words(status: HealthStatus) -> &'static str {
    match status {
        HealthStatus::Starting => "health: starting",
        other => other.as_str(),
    }
}

fn oom_note(exit: &ExitInfo) -> &'static str {
    if exit.oom_killed {
        ", OOM killed"
    } else {
        ""
    }
}

/// "Restarting (CODE) in 1.6s": docker's number (the last exit code, as
/// after "Exited"; the count is the RESTARTS column) and, while the
/// back-off runs, when the next start is due. Docker's "... 3 seconds
/// ago" (since the exit) when no start is scheduled (a `hafen restart`
/// stopping it).
fn restarting_status(c: &ContainerInfo, clock: &Clock) -> String {
    let mut text = "Restarting".to_owned();
    if let Some(exit) = &c.exit {
        text.push_str(&format!(" ({})", exit.status.code()));
    }
    match (c.next_restart_ns, &c.exit) {
        (Some(due), _) => {
            let left = clock.until(due);
            if left.is_zero() {
                text.push_str(" now");
            } else {
                text.push_str(&format!(" in {}", format::short_duration(left)));
            }
        }
        (None, Some(exit)) => text.push_str(&format!(
            " {} ago",
            format::human_duration(clock.ago(exit.finished_ns))
        )),
        (None, None) => {}
    }
    if let Some(exit) = &c.exit {
        text.push_str(oom_note(exit));
    }
    text
}

/// The COMMAND column: quoted, cut to a column's width.
fn command_cell(command: &[String]) -> String {
    format!(
        "\"{}\"",
        format::truncate(&format::one_line(&command.join(" ")), 30)
    )
}

/// The `hafen ps` table; PORTS comes last, where an empty cell costs
/// nothing.
pub fn ps_table(containers: &[&ContainerInfo], ports: &[PublishedPort], clock: &Clock) -> String {
    let rows: Vec<Vec<String>> = containers
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                if c.image.is_empty() {
                    "-".to_owned()
                } else {
                    c.image.clone()
                },
                command_cell(&c.command),
                c.state.as_str().to_owned(),
                c.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                status(c, clock),
                c.restarts.to_string(),
                ports_cell(&c.name, ports),
            ]
        })
        .collect();
    format::table(
        &[
            "CONTAINER",
            "IMAGE",
            "COMMAND",
            "STATE",
            "PID",
            "STATUS",
            "RESTARTS",
            "PORTS",
        ],
        &rows,
    )
}

fn exit_fields(status: Option<ExitStatus>) -> (Value, Value) {
    match status {
        Some(s @ ExitStatus::Code(_)) => (json!(s.code()), Value::Null),
        Some(s @ ExitStatus::Signal(n)) => (json!(s.code()), json!(hafen_proto::signal::name(n))),
        None => (Value::Null, Value::Null),
    }
}

/// A container as `ps --format json` shows it.
pub fn summary_json(c: &ContainerInfo, ports: &[PublishedPort], clock: &Clock) -> Value {
    let (exit_code, signal) = exit_fields(c.exit.as_ref().map(|e| e.status));
    let ports: Vec<String> = ports
        .iter()
        .filter(|p| p.container == c.name)
        .map(|p| p.port.to_string())
        .collect();
    json!({
        "name": c.name,
        "image": c.image,
        "command": c.command,
        "state": c.state.as_str(),
        "pid": c.pid,
        "status": status(c, clock),
        "restarts": c.restarts,
        "health": c.health.as_ref().map(|h| h.status.as_str()),
        "started_at": c.started_ns.map(|t| format::rfc3339(clock.unix_ns(t))),
        "exit_code": exit_code,
        "signal": signal,
        "ports": ports,
    })
}

/// A restart policy string (`no`, `on-failure`, `on-failure:5`, `always`,
/// `unless-stopped`) as docker's `RestartPolicy` shows it: its name and
/// its retry limit (0: unlimited, or not retrying).
pub fn restart_policy_json(policy: &str) -> Value {
    let (name, max) = match policy.split_once(':') {
        Some((name, max)) => (name, max.parse::<u32>().unwrap_or(0)),
        None if policy.is_empty() => ("no", 0),
        None => (policy, 0),
    };
    json!({ "name": name, "maximum_retry_count": max })
}

/// A container's health as docker's `State.Health` shows it.
fn health_json(health: &Health, clock: &Clock) -> Value {
    let log: Vec<Value> = health
        .log
        .iter()
        .map(|r| {
            json!({
                "start": format::rfc3339(clock.unix_ns(r.start_ns)),
                "end": format::rfc3339(clock.unix_ns(r.end_ns)),
                "exit_code": r.exit_code,
                "output": r.output,
            })
        })
        .collect();
    json!({
        "status": health.status.as_str(),
        "failing_streak": health.failing_streak,
        "log": log,
    })
}

/// A container as `inspect VM CONTAINER` shows it: its state, times,
/// exit, health and restarts, and its OCI config (as text when it is not
/// JSON). Docker's shapes (`State.Health`, `State.OOMKilled`,
/// `RestartCount`, `HostConfig.RestartPolicy`) with snake_case keys.
pub fn inspect_json(c: &ContainerInfo, config_json: &str, clock: &Clock) -> Value {
    let (exit_code, signal) = exit_fields(c.exit.as_ref().map(|e| e.status));
    let config: Value =
        serde_json::from_str(config_json).unwrap_or_else(|_| Value::String(config_json.into()));
    json!({
        "name": c.name,
        "image": c.image,
        "command": c.command,
        "main": c.main,
        "state": {
            "status": c.state.as_str(),
            "running": c.state == State::Running,
            "pid": c.pid,
            "started_at": c.started_ns.map(|t| format::rfc3339(clock.unix_ns(t))),
            "finished_at": c.exit.as_ref().map(|e| format::rfc3339(clock.unix_ns(e.finished_ns))),
            "exit_code": exit_code,
            "signal": signal,
            "oom_killed": c.exit.as_ref().is_some_and(|e| e.oom_killed),
            "error": c.error,
            "health": c.health.as_ref().map(|h| health_json(h, clock)),
            "waiting_for": c.waiting_for,
            "next_restart_at": c.next_restart_ns.map(|t| format::rfc3339(clock.unix_ns(t))),
        },
        "restart_count": c.restarts,
        "host_config": {
            "restart_policy": restart_policy_json(&c.restart_policy),
        },
        "config": config,
    })
}

/// `hafen inspect VM CONTAINER`.
pub fn inspect(vm: &str, container: &str) -> Result<i32, Error> {
    let mut client = Client::connect(vm)?;
    let clock = client.clock()?;
    let (info, config_json) = match client.request(Body::Inspect {
        container: container.to_owned(),
    })? {
        Body::Inspected { info, config_json } => (info, config_json),
        other => return Err(client.unexpected("Inspect", &other)),
    };
    let value = inspect_json(&info, &config_json, &clock);
    let text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
    out(writeln!(std::io::stdout().lock(), "{text}"))?;
    Ok(0)
}

/// What to do to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `hafen start`.
    Start,
    /// `hafen stop`: its stop signal, then SIGKILL after the timeout
    /// (the container's own when `None`).
    Stop(Option<u32>),
    /// `hafen restart`: a stop (with that timeout), then a start.
    Restart(Option<u32>),
    /// `hafen kill -s SIG`.
    Kill(i32),
}

/// `hafen start|stop|restart|kill VM CONTAINER`: prints the container's
/// name once done (the stop once it has exited, the restart once it runs
/// again).
pub fn act(vm: &str, container: &str, action: Action) -> Result<i32, Error> {
    let mut client = Client::connect(vm)?;
    let container = container.to_owned();
    let (name, body) = match action {
        Action::Start => ("Start", Body::Start { container }),
        Action::Stop(timeout_secs) => (
            "Stop",
            Body::Stop {
                container,
                timeout_secs,
            },
        ),
        Action::Restart(timeout_secs) => (
            "Restart",
            Body::Restart {
                container,
                timeout_secs,
            },
        ),
        Action::Kill(signal) => ("Kill", Body::Kill { container, signal }),
    };
    let target = match &body {
        Body::Start { container }
        | Body::Stop { container, .. }
        | Body::Restart { container, .. }
        | Body::Kill { container, .. } => container.clone(),
        _ => String::new(),
    };
    match client.request(body)? {
        Body::Done => {
            out(writeln!(std::io::stdout().lock(), "{target}"))?;
            Ok(0)
        }
        other => Err(client.unexpected(name, &other)),
    }
}

/// `hafen wait VM CONTAINER`: waits until it is not running and prints
/// its exit code (128+N for signal N).
pub fn wait(vm: &str, container: &str) -> Result<i32, Error> {
    let mut client = Client::connect(vm)?;
    match client.request(Body::Wait {
        container: container.to_owned(),
    })? {
        Body::Exited(exit) => {
            out(writeln!(std::io::stdout().lock(), "{}", exit.status.code()))?;
            Ok(0)
        }
        other => Err(client.unexpected("Wait", &other)),
    }
}

/// The `hafen top` table.
pub fn top_table(processes: &[ProcessInfo]) -> String {
    let rows: Vec<Vec<String>> = processes
        .iter()
        .map(|p| {
            vec![
                p.pid.to_string(),
                p.ppid.to_string(),
                p.uid.to_string(),
                format::cpu_time(p.cpu_usec),
                format::binary_size(p.rss_bytes),
                format::one_line(&p.command),
            ]
        })
        .collect();
    format::table(&["PID", "PPID", "UID", "TIME", "RSS", "CMD"], &rows)
}

/// `hafen top VM CONTAINER`: the container's processes.
pub fn top(vm: &str, container: &str) -> Result<i32, Error> {
    let mut client = Client::connect(vm)?;
    match client.request(Body::Top {
        container: container.to_owned(),
    })? {
        Body::Processes(p) => {
            out(std::io::stdout().lock().write_all(top_table(&p).as_bytes()))?;
            Ok(0)
        }
        other => Err(client.unexpected("Top", &other)),
    }
}

#[cfg(test)]
mod tests {
    use hafen_proto::control::HealthResult;

    use super::*;

    const S: u64 = 1_000_000_000;

    fn container(name: &str, state: State) -> ContainerInfo {
        ContainerInfo {
            name: name.into(),
            image: "oci:busybox:1".into(),
            command: vec!["/bin/sh".into(), "-c".into(), "sleep 1000".into()],
            state,
            pid: None,
            started_ns: None,
            exit: None,
            error: None,
            restarts: 0,
            main: false,
            restart_policy: "no".into(),
            next_restart_ns: None,
            waiting_for: None,
            health: None,
        }
    }

    /// Booted 1000 s before the epoch's 2000 s; now is 100 s after boot.
    fn clock() -> Clock {
        Clock::new(1_000 * S, 1_100 * S)
    }

    #[test]
    fn status_words_say_how_long_up_or_how_it_exited_and_when() {
        let mut web = container("web", State::Running);
        web.started_ns = Some(100 * S - 180 * S / 2);
        assert_eq!(status(&web, &clock()), "Up About a minute");
        web.started_ns = Some(99 * S);
        assert_eq!(status(&web, &clock()), "Up 1 second");
        let mut job = container("job", State::Exited);
        job.exit = Some(ExitInfo {
            status: ExitStatus::Code(3),
            finished_ns: 98 * S,
            oom_killed: false,
        });
        assert_eq!(status(&job, &clock()), "Exited (3) 2 seconds ago");
        job.exit = Some(ExitInfo {
            status: ExitStatus::Signal(9),
            finished_ns: 100 * S,
            oom_killed: true,
        });
        assert_eq!(
            status(&job, &clock()),
            "Exited (137) Less than a second ago, OOM killed"
        );
        assert_eq!(status(&container("c", State::Created), &clock()), "Created");
        assert_eq!(
            status(&container("f", State::Failed), &clock()),
            "Failed to start"
        );
    }

    fn health(status: HealthStatus) -> Health {
        Health {
            status,
            failing_streak: 0,
            log: Vec::new(),
        }
    }

    #[test]
    fn a_running_containers_status_carries_its_health_in_dockers_words() {
        let mut api = container("api", State::Running);
        api.started_ns = Some(95 * S);
        assert_eq!(status(&api, &clock()), "Up 5 seconds", "no health check");
        api.health = Some(health(HealthStatus::Healthy));
        assert_eq!(status(&api, &clock()), "Up 5 seconds (healthy)");
        api.health = Some(health(HealthStatus::Starting));
        assert_eq!(status(&api, &clock()), "Up 5 seconds (health: starting)");
        api.started_ns = Some(40 * S);
        api.health = Some(health(HealthStatus::Unhealthy));
        assert_eq!(status(&api, &clock()), "Up About a minute (unhealthy)");
        // Health is a running container's: an exited one's is stale.
        let mut gone = container("gone", State::Exited);
        gone.health = Some(health(HealthStatus::Unhealthy));
        gone.exit = Some(ExitInfo {
            status: ExitStatus::Code(1),
            finished_ns: 97 * S,
            oom_killed: false,
        });
        assert_eq!(status(&gone, &clock()), "Exited (1) 3 seconds ago");
    }

    #[test]
    fn a_restarting_container_shows_its_last_exit_and_when_it_starts_again() {
        let mut api = container("api", State::Restarting);
        api.restarts = 3;
        api.exit = Some(ExitInfo {
            status: ExitStatus::Code(1),
            finished_ns: 99 * S,
            oom_killed: false,
        });
        api.next_restart_ns = Some(100 * S + 1_600_000_000);
        assert_eq!(status(&api, &clock()), "Restarting (1) in 1.6s");
        api.next_restart_ns = Some(99 * S);
        assert_eq!(status(&api, &clock()), "Restarting (1) now", "overdue");
        // `hafen restart` stopping it: no start scheduled yet.
        api.next_restart_ns = None;
        assert_eq!(status(&api, &clock()), "Restarting (1) 1 second ago");
        let mut hog = container("hog", State::Restarting);
        hog.exit = Some(ExitInfo {
            status: ExitStatus::Signal(9),
            finished_ns: 99 * S,
            oom_killed: true,
        });
        hog.next_restart_ns = Some(130 * S);
        assert_eq!(
            status(&hog, &clock()),
            "Restarting (137) in 30s, OOM killed"
        );
        let fresh = container("fresh", State::Restarting);
        assert_eq!(status(&fresh, &clock()), "Restarting");
    }

    #[test]
    fn an_oom_kill_is_named_in_the_exit_status() {
        let mut hog = container("hog", State::Exited);
        hog.exit = Some(ExitInfo {
            status: ExitStatus::Signal(9),
            finished_ns: 97 * S,
            oom_killed: true,
        });
        assert_eq!(
            status(&hog, &clock()),
            "Exited (137) 3 seconds ago, OOM killed"
        );
    }

    #[test]
    fn waiting_and_dependency_failures_say_on_what() {
        let mut api = container("api", State::Created);
        api.waiting_for = Some("db to be healthy".into());
        assert_eq!(
            status(&api, &clock()),
            "Created (waiting for db to be healthy)"
        );
        let mut web = container("web", State::Failed);
        web.error = Some("dependency not met: db exited with code 3".into());
        assert_eq!(
            status(&web, &clock()),
            "Failed: dependency not met: db exited with code 3"
        );
        web.error = Some(format!(
            "dependency not met: db ended before it was healthy\n{}",
            "and a very long tail ".repeat(10)
        ));
        let long = status(&web, &clock());
        assert!(
            long.starts_with("Failed: dependency not met: db ended before it was healthy"),
            "{long}"
        );
        assert!(long.ends_with('…'), "{long}");
        assert_eq!(long.chars().count(), "Failed: ".len() + 60, "{long}");
        assert!(!long.contains('\n'), "one line: {long}");
    }

    #[test]
    fn the_ps_table_has_a_row_per_container_under_docker_like_columns() {
        let mut web = container("web", State::Running);
        web.pid = Some(42);
        web.started_ns = Some(40 * S);
        web.restarts = 2;
        let mut job = container("job", State::Exited);
        job.command = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo a very long command line indeed".into(),
        ];
        job.exit = Some(ExitInfo {
            status: ExitStatus::Code(0),
            finished_ns: 90 * S,
            oom_killed: false,
        });
        let text = ps_table(&[&web, &job], &[], &clock());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "CONTAINER",
                "IMAGE",
                "COMMAND",
                "STATE",
                "PID",
                "STATUS",
                "RESTARTS",
                "PORTS"
            ]
        );
        assert!(lines[1].starts_with("web "), "{text}");
        assert!(lines[1].contains("\"/bin/sh -c sleep 1000\""), "{text}");
        assert!(lines[1].contains(" running "), "{text}");
        assert!(lines[1].contains(" 42 "), "{text}");
        assert!(lines[1].contains("Up About a minute"), "{text}");
        assert!(lines[1].ends_with(" 2"), "{text}");
        assert!(
            lines[2].contains("\"/bin/sh -c echo a very long c…\""),
            "{text}"
        );
        assert!(lines[2].contains("Exited (0) 10 seconds ago"), "{text}");
        // Columns line up: STATUS starts at the same offset on every line.
        let at = |l: &str, w: &str| l[..l.find(w).expect("column")].chars().count();
        assert_eq!(at(lines[0], "STATUS"), at(lines[1], "Up "));
        assert_eq!(at(lines[0], "STATUS"), at(lines[2], "Exited"));
    }

    #[test]
    fn inspect_gives_wall_clock_times_the_exit_and_the_parsed_config() {
        let mut job = container("job", State::Exited);
        job.started_ns = Some(10 * S);
        job.exit = Some(ExitInfo {
            status: ExitStatus::Signal(9),
            finished_ns: 20 * S,
            oom_killed: true,
        });
        job.restarts = 1;
        let v = inspect_json(
            &job,
            r#"{"ociVersion":"1.0.2","process":{"args":["x"]}}"#,
            &clock(),
        );
        assert_eq!(v["state"]["status"], "exited");
        assert_eq!(v["state"]["started_at"], "1970-01-01T00:16:50.000000000Z");
        assert_eq!(v["state"]["finished_at"], "1970-01-01T00:17:00.000000000Z");
        assert_eq!(v["state"]["exit_code"], 137);
        assert_eq!(v["state"]["signal"], "SIGKILL");
        assert_eq!(v["state"]["oom_killed"], true);
        assert_eq!(v["restart_count"], 1);
        assert_eq!(v["config"]["process"]["args"][0], "x");
        let raw = inspect_json(&job, "not json", &clock());
        assert_eq!(raw["config"], "not json");
        assert_eq!(v["state"]["health"], Value::Null, "no health check");
        assert_eq!(v["host_config"]["restart_policy"]["name"], "no");
    }

    #[test]
    fn inspect_shows_health_like_dockers_state_health() {
        let mut api = container("api", State::Running);
        api.health = Some(Health {
            status: HealthStatus::Unhealthy,
            failing_streak: 3,
            log: vec![HealthResult {
                start_ns: 30 * S,
                end_ns: 32 * S,
                exit_code: -1,
                output: "timed out after 2s".into(),
            }],
        });
        api.restart_policy = "on-failure:5".into();
        api.restarts = 2;
        api.next_restart_ns = Some(101 * S);
        api.waiting_for = Some("db to be healthy".into());
        let v = inspect_json(&api, "{}", &clock());
        let h = &v["state"]["health"];
        assert_eq!(h["status"], "unhealthy");
        assert_eq!(h["failing_streak"], 3);
        assert_eq!(h["log"][0]["start"], "1970-01-01T00:17:10.000000000Z");
        assert_eq!(h["log"][0]["end"], "1970-01-01T00:17:12.000000000Z");
        assert_eq!(h["log"][0]["exit_code"], -1);
        assert_eq!(h["log"][0]["output"], "timed out after 2s");
        assert_eq!(v["restart_count"], 2);
        assert_eq!(
            v["host_config"]["restart_policy"],
            json!({ "name": "on-failure", "maximum_retry_count": 5 })
        );
        assert_eq!(
            v["state"]["next_restart_at"],
            "1970-01-01T00:18:21.000000000Z"
        );
        assert_eq!(v["state"]["waiting_for"], "db to be healthy");
        let summary = summary_json(&api, &[], &clock());
        assert_eq!(summary["health"], "unhealthy");
        assert_eq!(summary["ports"], json!([]));
    }

    fn published(container: &str, spec: &str) -> PublishedPort {
        PublishedPort {
            container: container.into(),
            address: "10.0.2.40".parse().expect("ip"),
            port: spec.parse().expect("spec"),
        }
    }

    #[test]
    fn ps_shows_each_containers_published_ports_as_docker_does() {
        let web = container("web", State::Running);
        let db = container("db", State::Running);
        let ports = [
            published("web", "8080:80"),
            published("dns", "5353:53/udp"),
            published("web", "0.0.0.0:8443:443"),
        ];
        let text = ps_table(&[&web, &db], &ports, &clock());
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].ends_with(" 127.0.0.1:8080->80/tcp, 0.0.0.0:8443->443/tcp"),
            "{text}"
        );
        assert!(lines[2].ends_with(" 0"), "no ports, no cell: {text}");
        let at = |l: &str, w: &str| l[..l.find(w).expect("column")].chars().count();
        assert_eq!(at(lines[0], "PORTS"), at(lines[1], "127.0.0.1:8080"));
        let summary = summary_json(&web, &ports, &clock());
        assert_eq!(
            summary["ports"],
            json!(["127.0.0.1:8080->80/tcp", "0.0.0.0:8443->443/tcp"])
        );
    }

    #[test]
    fn port_prints_dockers_lines_for_one_container_or_all() {
        let ports = [
            published("web", "8080:80"),
            published("dns", "0.0.0.0:5353:53/udp"),
            published("web", "127.0.0.1:8443:443/tcp"),
        ];
        assert_eq!(
            port_text(&ports, Some("web")),
            "80/tcp -> 127.0.0.1:8080\n443/tcp -> 127.0.0.1:8443\n"
        );
        assert_eq!(port_text(&ports, Some("dns")), "53/udp -> 0.0.0.0:5353\n");
        assert_eq!(port_text(&ports, Some("db")), "");
        assert_eq!(
            port_text(&ports, None),
            "web 80/tcp -> 127.0.0.1:8080\ndns 53/udp -> 0.0.0.0:5353\nweb 443/tcp -> 127.0.0.1:8443\n"
        );
        assert_eq!(port_text(&[], None), "");
    }

    #[test]
    fn restart_policies_read_as_dockers_name_and_retry_limit() {
        let policy = |p: &str| {
            let v = restart_policy_json(p);
            (
                v["name"].as_str().unwrap_or_default().to_owned(),
                v["maximum_retry_count"].as_u64(),
            )
        };
        assert_eq!(policy("no"), ("no".into(), Some(0)));
        assert_eq!(policy(""), ("no".into(), Some(0)));
        assert_eq!(policy("on-failure"), ("on-failure".into(), Some(0)));
        assert_eq!(policy("on-failure:5"), ("on-failure".into(), Some(5)));
        assert_eq!(policy("always"), ("always".into(), Some(0)));
        assert_eq!(policy("unless-stopped"), ("unless-stopped".into(), Some(0)));
    }

    #[test]
    fn top_shows_cpu_time_and_rss_per_process() {
        let text = top_table(&[ProcessInfo {
            pid: 7,
            ppid: 1,
            uid: 1000,
            cpu_usec: 61_500_000,
            rss_bytes: 3 << 20,
            command: "sleep 1000".into(),
        }]);
        let script = top_table(&[ProcessInfo {
            pid: 8,
            ppid: 1,
            uid: 0,
            cpu_usec: 0,
            rss_bytes: 0,
            command: "sh -c echo a\necho b".into(),
        }]);
        assert_eq!(script.lines().count(), 2, "one row: {script}");
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0], ["PID", "PPID", "UID", "TIME", "RSS", "CMD"]);
        assert_eq!(
            lines[1],
            ["7", "1", "1000", "00:01:01", "3MiB", "sleep", "1000"]
        );
    }
}
