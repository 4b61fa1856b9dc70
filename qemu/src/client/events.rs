//! `hafen events VM`: what happens to the VM's containers, as it happens,
//! until Ctrl-C or the VM goes away.

use std::io::Write;

use hafen_proto::control::{Body, Event, EventKind, ExitInfo, ExitStatus};
use serde_json::{json, Map, Value};

use super::format::{self, Clock};
use super::{out, Client, Error};

/// The event's particulars as `(key, value)` pairs.
fn details(kind: &EventKind) -> Vec<(&'static str, Value)> {
    let status = |s: &ExitStatus| {
        let mut d = vec![("exitCode", json!(s.code()))];
        if let ExitStatus::Signal(n) = s {
            d.push(("signal", json!(hafen_proto::signal::name(*n))));
        }
        d
    };
    match kind {
        EventKind::Start { pid } => vec![("pid", json!(pid))],
        EventKind::StartFailed { message } => vec![("error", json!(message))],
        EventKind::Die(ExitInfo {
            status: s,
            oom_killed,
            ..
        }) => {
            let mut d = status(s);
            if *oom_killed {
                d.push(("oomKilled", json!(true)));
            }
            d
        }
        EventKind::Oom | EventKind::Stop | EventKind::Pause | EventKind::Unpause => Vec::new(),
        EventKind::Kill { signal } => vec![("signal", json!(hafen_proto::signal::name(*signal)))],
        EventKind::ExecStart { pid, command } => {
            vec![("pid", json!(pid)), ("command", json!(command.join(" ")))]
        }
        EventKind::ExecDie { pid, status: s } => {
            let mut d = vec![("pid", json!(pid))];
            d.extend(status(s));
            d
        }
        EventKind::Shutdown { main_exit, held } => {
            let mut d = Vec::new();
            if let Some(s) = main_exit {
                d.push(("mainExitCode", json!(s.code())));
            }
            if !held.is_empty() {
                d.push(("held", json!(held.join(","))));
            }
            d
        }
        EventKind::Restart { count, delay_ms } => {
            vec![("count", json!(count)), ("delayMs", json!(delay_ms))]
        }
        EventKind::HealthStatus { status } => vec![("health", json!(status.as_str()))],
        EventKind::DependencyFailed { reason } => vec![("reason", json!(reason))],
    }
}

/// One line of `hafen events`: time, container, event, details.
pub fn event_line(event: &Event, clock: &Clock) -> String {
    let container = if event.container.is_empty() {
        "-"
    } else {
        &event.container
    };
    let mut line = format!(
        "{} {container} {}",
        format::rfc3339(clock.unix_ns(event.time_ns)),
        event.kind.name()
    );
    let details: Vec<String> = details(&event.kind)
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) if s.contains(char::is_whitespace) || s.is_empty() => {
                format!("{k}={}", Value::String(s))
            }
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    if !details.is_empty() {
        line.push_str(" (");
        line.push_str(&details.join(", "));
        line.push(')');
    }
    line
}

/// One event as `--format json` prints it.
pub fn event_json(event: &Event, clock: &Clock) -> Value {
    let mut object = Map::new();
    object.insert(
        "time".into(),
        json!(format::rfc3339(clock.unix_ns(event.time_ns))),
    );
    object.insert("container".into(), json!(event.container));
    object.insert("event".into(), json!(event.kind.name()));
    for (k, v) in details(&event.kind) {
        object.insert(k.into(), v);
    }
    Value::Object(object)
}

/// `hafen events`. Returns the exit code.
pub fn events(vm: &str, json: bool) -> Result<i32, Error> {
    let mut client = Client::connect(vm)?;
    let clock = client.clock()?;
    client.catch_signals(&[])?;
    let stream = client.stream(Body::Events)?;
    let mut stdout = std::io::stdout().lock();
    for body in stream {
        let event = match body {
            Ok(Body::Event(e)) => e,
            Ok(_) => continue,
            // The VM went away: no more events.
            Err(Error::Closed { .. }) => break,
            Err(e) => return Err(e),
        };
        let line = if json {
            event_json(&event, &clock).to_string()
        } else {
            event_line(&event, &clock)
        };
        out(writeln!(stdout, "{line}").and_then(|()| stdout.flush()))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use hafen_proto::control::HealthStatus;

    use super::*;

    fn event(container: &str, kind: EventKind) -> Event {
        Event {
            time_ns: 1_000_000_000,
            container: container.into(),
            kind,
        }
    }

    #[test]
    fn lines_carry_time_container_event_and_details() {
        let clock = Clock::new(0, 5_000_000_000);
        let die = event(
            "web",
            EventKind::Die(ExitInfo {
                status: ExitStatus::Signal(9),
                finished_ns: 1,
                oom_killed: true,
            }),
        );
        assert_eq!(
            event_line(&die, &clock),
            "1970-01-01T00:00:01.000000000Z web die (exitCode=137, signal=SIGKILL, oomKilled=true)"
        );
        let exec = event(
            "web",
            EventKind::ExecStart {
                pid: 7,
                command: vec!["ls".into(), "-l".into()],
            },
        );
        assert!(event_line(&exec, &clock).ends_with("web exec_start (pid=7, command=\"ls -l\")"));
        let stop = event(
            "",
            EventKind::Shutdown {
                main_exit: None,
                held: Vec::new(),
            },
        );
        assert!(event_line(&stop, &clock).ends_with(" - shutdown"));
    }

    #[test]
    fn supervision_events_read_as_one_line_each() {
        let clock = Clock::new(0, 5_000_000_000);
        let line = |kind| event_line(&event("api", kind), &clock);
        assert_eq!(
            line(EventKind::Restart {
                count: 3,
                delay_ms: 400
            }),
            "1970-01-01T00:00:01.000000000Z api restart (count=3, delayMs=400)"
        );
        assert!(line(EventKind::HealthStatus {
            status: HealthStatus::Healthy
        })
        .ends_with(" api health_status (health=healthy)"));
        let failed = line(EventKind::DependencyFailed {
            reason: "db exited with code 3\nbefore it was healthy".into(),
        });
        assert!(
            failed.ends_with(
                " api dependency_failed (reason=\"db exited with code 3\\nbefore it was healthy\")"
            ),
            "{failed}"
        );
        assert_eq!(failed.lines().count(), 1, "{failed}");
        let v = event_json(
            &event(
                "api",
                EventKind::Restart {
                    count: 1,
                    delay_ms: 100,
                },
            ),
            &clock,
        );
        assert_eq!(
            (v["count"].clone(), v["delayMs"].clone()),
            (json!(1), json!(100))
        );
    }

    #[test]
    fn json_events_have_named_fields() {
        let clock = Clock::new(0, 5_000_000_000);
        let v = event_json(
            &event(
                "job",
                EventKind::ExecDie {
                    pid: 9,
                    status: ExitStatus::Code(3),
                },
            ),
            &clock,
        );
        assert_eq!(v["event"], "exec_die");
        assert_eq!(v["container"], "job");
        assert_eq!(v["exitCode"], 3);
        assert_eq!(v["pid"], 9);
        assert_eq!(v["time"], "1970-01-01T00:00:01.000000000Z");
        assert!(v.get("signal").is_none());
    }
}
