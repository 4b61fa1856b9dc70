//! Supervision in the guest, driven through the raw control port (`hafen
//! run --no-control`) so that every time compared is the guest's own:
//! restart policies and their back-off, `hafen stop` against `always`,
//! OOM kills, dependencies and health checks (order proven by event
//! timestamps), a hanging health check, shutdown in reverse dependency
//! order, and a `required` boot step that fails.

mod common;

use std::time::Duration;

use common::port::Port;
use common::{build_image, Scratch, Vm};
use hafen_proto::control::{
    Body, ContainerInfo, Event, EventKind, ExitStatus, HealthStatus, State,
};

/// Events received so far on stream `id`, until `done` matches one.
fn events_until(port: &mut Port, id: u32, done: impl Fn(&Event) -> bool) -> Vec<Event> {
    port.collect(id, |b| matches!(b, Body::Event(e) if done(e)))
        .into_iter()
        .filter_map(|b| match b {
            Body::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn list(port: &mut Port, id: u32) -> Vec<ContainerInfo> {
    match port.ask(id, Body::List) {
        Body::Containers(list) => list,
        other => panic!("expected the container list, got {other:?}"),
    }
}

fn info<'a>(list: &'a [ContainerInfo], name: &str) -> &'a ContainerInfo {
    list.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} in {list:?}"))
}

fn guest_cpu_ns(port: &mut Port, id: u32) -> (u64, u64) {
    match port.ask(id, Body::GetGuest) {
        Body::Guest(g) => (g.init_cpu_ns, g.boottime_ns),
        other => panic!("expected the guest's info, got {other:?}"),
    }
}

fn is(e: &Event, container: &str, kind: fn(&EventKind) -> bool) -> bool {
    e.container == container && kind(&e.kind)
}

#[test]
fn restart_policies_back_off_and_respect_a_stop_and_oom_kills_are_reported() {
    let scratch = Scratch::new("restarts");
    let image = build_image(
        &scratch,
        r#"
name = "restarts"
[[container]]
name = "crash"
image = "oci:busybox:1"
restart = "always"
command = ["/bin/sh", "-c", "exit 1"]
[[container]]
name = "twice"
image = "oci:busybox:1"
restart = "on-failure:2"
command = ["/bin/sh", "-c", "echo twice ran; exit 2"]
[[container]]
name = "stoppable"
image = "oci:busybox:1"
restart = "always"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo up; while true; do sleep 1 & wait $!; done"]
[[container]]
name = "steady"
image = "oci:busybox:1"
healthcheck = { test = ["CMD", "cat", "/proc/self/oom_score_adj"], interval = "1s" }
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo score $(cat /proc/self/oom_score_adj); while true; do sleep 1 & wait $!; done"]
[[container]]
name = "hog"
image = "oci:busybox:1"
memory = "32M"
command = ["/bin/sh", "-c", "echo hogging; x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#x}"]
"#,
    );
    let mut vm = Vm::boot_with(&image, &["--no-control"]);
    let mut port = Port::connect(&vm);
    vm.checked(|| {
        port.send(1, Body::Events);

        // The crash loop: every restart an event with its back-off, which
        // doubles from 100 ms. PID 1's CPU time over one back-off.
        let mut cpu = Vec::new();
        let mut delays = Vec::new();
        let mut starts = Vec::new();
        let mut id = 10;
        let mut seen = Vec::new();
        while delays.len() < 6 {
            for e in events_until(&mut port, 1, |e| {
                is(e, "crash", |k| matches!(k, EventKind::Restart { .. }))
            }) {
                if e.container != "crash" {
                    seen.push(e);
                    continue;
                }
                match e.kind {
                    EventKind::Restart { count, delay_ms } => {
                        delays.push((count, delay_ms));
                        id += 1;
                        cpu.push(guest_cpu_ns(&mut port, id));
                    }
                    EventKind::Start { .. } => starts.push(e.time_ns),
                    _ => {}
                }
            }
        }
        for pair in delays.windows(2) {
            let ((c0, d0), (c1, d1)) = (pair[0], pair[1]);
            assert_eq!(c1, c0 + 1, "{delays:?}");
            assert_eq!(d1, (d0 * 2).min(30_000), "back-off doubles: {delays:?}");
        }
        for (count, delay) in &delays {
            assert_eq!(*delay, 100 << (count - 1), "{delays:?}");
        }
        for pair in starts.windows(2) {
            assert!(pair[1] > pair[0], "{starts:?}");
        }
        // Over the last back-off (at least 1.6 s) PID 1 did one restart and
        // otherwise slept: per restart it must cost well under 1% of the
        // 30 s the back-off settles at.
        let (cpu0, t0) = cpu[cpu.len() - 2];
        let (cpu1, t1) = cpu[cpu.len() - 1];
        let share_now = (cpu1 - cpu0) as f64 / (t1 - t0) as f64;
        let per_restart_ms = (cpu1 - cpu0) as f64 / 1e6;
        eprintln!(
            "PID 1 over a {:.1} s back-off: {per_restart_ms:.1} ms CPU ({:.2}%); at the 30 s cap: {:.3}%",
            (t1 - t0) as f64 / 1e9,
            share_now * 100.0,
            per_restart_ms / 30_000.0 * 100.0
        );
        assert!(
            per_restart_ms / 30_000.0 < 0.01,
            "a crash-looping container costs PID 1 {per_restart_ms:.1} ms a restart"
        );

        // on-failure:2: two restarts, then it stays down.
        let now = list(&mut port, 2);
        let twice = info(&now, "twice");
        assert_eq!(twice.restarts, 2, "{twice:?}");
        assert_eq!(twice.state, State::Exited, "{twice:?}");
        assert_eq!(twice.restart_policy, "on-failure:2");
        assert_eq!(
            twice.exit.as_ref().map(|e| e.status),
            Some(ExitStatus::Code(2))
        );
        assert_eq!(vm.console().matches("twice | twice ran").count(), 3);

        // OOM: reported as such (an event, the exit), and the others run on.
        let hog_died = |e: &Event| is(e, "hog", |k| matches!(k, EventKind::Die(_)));
        if !seen.iter().any(hog_died) {
            seen.extend(events_until(&mut port, 1, hog_died));
        }
        assert!(
            seen.iter()
                .any(|e| is(e, "hog", |k| matches!(k, EventKind::Oom))),
            "{seen:?}"
        );
        let now = list(&mut port, 8);
        let hog = info(&now, "hog");
        assert_eq!(hog.state, State::Exited, "{hog:?}");
        assert!(
            hog.exit.as_ref().is_some_and(|e| e.oom_killed),
            "{hog:?}"
        );
        assert_eq!(info(&now, "steady").state, State::Running);
        vm.assert_console("hog: the OOM killer killed a process");
        // PID 1 is the OOM killer's last choice; what it starts (a
        // container, a health check) is not.
        assert!(!vm.console().contains("cannot protect PID 1"));
        vm.assert_console("steady | score 0");
        let steady = info(&now, "steady").health.clone().expect("steady's health");
        assert_eq!(steady.status, HealthStatus::Healthy, "{steady:?}");
        assert!(steady.log.iter().all(|r| r.output == "0"), "{steady:?}");

        // `hafen stop` holds an `always` container down until `hafen start`.
        let stop = Body::Stop {
            container: "stoppable".into(),
            timeout_secs: Some(5),
        };
        assert_eq!(port.ask(3, stop), Body::Done);
        std::thread::sleep(Duration::from_millis(1500));
        let after = list(&mut port, 4);
        let stoppable = info(&after, "stoppable");
        assert_eq!(stoppable.state, State::Exited, "{stoppable:?}");
        assert_eq!(stoppable.next_restart_ns, None);
        assert_eq!(stoppable.restarts, 0);
        let start = Body::Start {
            container: "stoppable".into(),
        };
        assert_eq!(port.ask(5, start), Body::Done);
        assert_eq!(info(&list(&mut port, 6), "stoppable").state, State::Running);

        assert_eq!(port.ask(7, Body::Shutdown { reboot: false }), Body::Done);
    });
    vm.wait_exit();
}

#[test]
fn dependencies_and_health_order_the_start_and_reverse_the_stop() {
    let scratch = Scratch::new("depends");
    let image = build_image(
        &scratch,
        r#"
name = "depends"
[[container]]
name = "broken"
image = "oci:busybox:1"
phase = "once"
# Fails only once the test's event subscription (sent during the boot) is
# surely read: events reach those subscribed when they happen.
command = ["/bin/sh", "-c", "sleep 1; exit 3"]
[[container]]
name = "a"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"]
[[container]]
name = "b"
image = "oci:busybox:1"
depends_on = ["a"]
stop_timeout = 2
healthcheck = { test = ["CMD-SHELL", "test -e /dev/shm/ready"], interval = "500ms", timeout = "2s", retries = 20 }
command = ["/bin/sh", "-c", "trap 'echo b ignores TERM' TERM; sleep 2; touch /dev/shm/ready; while true; do sleep 1 & wait $!; done"]
[[container]]
name = "c"
image = "oci:busybox:1"
depends_on = { b = "healthy" }
command = ["/bin/sh", "-c", "trap 'sleep 1; exit 0' TERM; while true; do sleep 1 & wait $!; done"]
[[container]]
name = "orphan"
image = "oci:busybox:1"
depends_on = { broken = "completed" }
command = ["/bin/sh", "-c", "echo orphan must not run"]
[[container]]
name = "hang"
image = "oci:busybox:1"
healthcheck = { test = ["CMD-SHELL", "sleep 1000 & sleep 1000"], interval = "500ms", timeout = "1s", retries = 2 }
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"]
[[container]]
name = "slow"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'sleep 2; exit 0' TERM; while true; do sleep 1 & wait $!; done"]
"#,
    );
    let mut vm = Vm::boot_with(&image, &["--no-control"]);
    let mut port = Port::connect(&vm);
    vm.checked(|| {
        port.send(1, Body::Events);
        let mut seen = events_until(&mut port, 1, |e| {
            is(e, "c", |k| matches!(k, EventKind::Start { .. }))
        });
        let now = list(&mut port, 2);
        let started = |name: &str| info(&now, name).started_ns.expect("started");
        let healthy = seen
            .iter()
            .find(|e| {
                is(e, "b", |k| {
                    matches!(
                        k,
                        EventKind::HealthStatus {
                            status: HealthStatus::Healthy
                        }
                    )
                })
            })
            .map(|e| e.time_ns)
            .expect("b became healthy");
        assert!(started("a") < started("b"), "{now:?}");
        assert!(started("b") + 2_000_000_000 <= healthy, "b is healthy late");
        assert!(healthy <= started("c"), "c waited for b's health: {now:?}");

        // A dependency that failed fails its dependent, with the reason.
        let orphan = info(&now, "orphan");
        assert_eq!(orphan.state, State::Failed, "{orphan:?}");
        let reason = orphan.error.clone().unwrap_or_default();
        assert!(
            reason.contains("broken") && reason.contains("code 3"),
            "{reason}"
        );
        assert!(!vm.console().contains("orphan | orphan must not run"));

        // The hanging check: killed at its timeout, `hang` unhealthy, and
        // nothing it started left behind.
        seen.extend(events_until(&mut port, 1, |e| {
            is(e, "hang", |k| {
                matches!(
                    k,
                    EventKind::HealthStatus {
                        status: HealthStatus::Unhealthy
                    }
                )
            })
        }));
        assert!(seen.iter().any(|e| is(e, "orphan", |k| matches!(
            k,
            EventKind::DependencyFailed { .. }
        ))));
        let inspected = match port.ask(
            3,
            Body::Inspect {
                container: "hang".into(),
            },
        ) {
            Body::Inspected { info, .. } => info,
            other => panic!("expected inspect, got {other:?}"),
        };
        let health = inspected.health.expect("hang has a health check");
        assert_eq!(health.status, HealthStatus::Unhealthy);
        assert!(health.failing_streak >= 2, "{health:?}");
        assert!(
            health
                .log
                .iter()
                .all(|r| r.exit_code == -1 && r.output.contains("timeout")),
            "{health:?}"
        );
        // Give a leak the time to show (the next check has begun by now,
        // so at most that one's processes may be there).
        std::thread::sleep(Duration::from_millis(300));
        let processes = match port.ask(
            4,
            Body::Top {
                container: "hang".into(),
            },
        ) {
            Body::Processes(p) => p,
            other => panic!("expected processes, got {other:?}"),
        };
        let leaked = processes
            .iter()
            .filter(|p| p.command == "sleep 1000")
            .count();
        assert!(leaked <= 2, "health checks leaked: {processes:?}");

        // Shutdown: c, then b (killed at its 2 s timeout), then a; slow in
        // parallel. The longest chain is 1 + 2 s, not the 5 s sum.
        assert_eq!(port.ask(5, Body::Shutdown { reboot: false }), Body::Done);
        let end = events_until(&mut port, 1, |e| {
            is(e, "a", |k| matches!(k, EventKind::Die(_)))
        });
        let at = |name: &str, kind: fn(&EventKind) -> bool| {
            end.iter()
                .find(|e| is(e, name, kind))
                .map(|e| e.time_ns)
                .unwrap_or_else(|| panic!("no such event of {name}: {end:?}"))
        };
        let died = |k: &EventKind| matches!(k, EventKind::Die(_));
        let stopped = |k: &EventKind| matches!(k, EventKind::Stop);
        let began = end
            .iter()
            .find(|e| matches!(e.kind, EventKind::Shutdown { .. }))
            .map(|e| e.time_ns)
            .expect("shutdown event");
        assert!(at("c", died) <= at("b", stopped), "{end:?}");
        assert!(at("b", died) <= at("a", stopped), "{end:?}");
        assert!(at("slow", stopped) < at("c", died), "independent: {end:?}");
        let total = at("a", died) - began;
        assert!(
            (2_900_000_000..4_800_000_000).contains(&total),
            "shutdown took {} ms",
            total / 1_000_000
        );
        vm.assert_console("b did not stop within 2 s");
    });
    vm.wait_exit();
}

#[test]
fn a_required_boot_step_that_fails_powers_off_with_its_status() {
    let scratch = Scratch::new("required");
    let image = build_image(
        &scratch,
        r#"
name = "required"
[[container]]
name = "setup"
image = "oci:busybox:1"
phase = "once"
required = true
command = ["/bin/sh", "-c", "echo setting up; exit 4"]
[[container]]
name = "web"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "echo web must not run"]
"#,
    );
    let mut vm = Vm::boot(&image);
    let status = vm.wait_exit();
    vm.assert_console("setup | setting up");
    vm.assert_console("required container setup exited with code 4");
    assert!(
        !vm.console().contains("web | web must not run"),
        "{}",
        vm.console()
    );
    assert_eq!(status.code(), Some(4), "{}", vm.console());
}

/// Docker keeps an `unless-stopped` container stopped across a daemon
/// restart and starts an `always` one again; a VM's next run is that
/// restart here: the first stays down (until `hafen start`), the second
/// runs.
#[test]
fn unless_stopped_remembers_a_stop_into_the_next_run_and_always_does_not() {
    let scratch = Scratch::new("held");
    let image = build_image(
        &scratch,
        r#"
name = "held"
[[container]]
name = "a"
image = "oci:busybox:1"
restart = "unless-stopped"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo up; while true; do sleep 1 & wait $!; done"]
[[container]]
name = "b"
image = "oci:busybox:1"
restart = "always"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo up; while true; do sleep 1 & wait $!; done"]
"#,
    );
    let name = format!("held-{}", std::process::id());
    let data = common::VmData::new(&name);
    let persistent = &data.0;
    let cli = |args: &[&str]| {
        common::eventually("the monitor answers", common::BOOT_TIMEOUT, || {
            let ran = common::hafen_cli(args, None, Duration::from_secs(60));
            match ran.code() {
                Some(0) => Ok(()),
                _ => Err(ran.stderr),
            }
        })
    };

    let mut first = Vm::boot_with(&image, &["--name", &name]);
    first.checked(|| {
        first.wait_for("a | up");
        first.wait_for("b | up");
        cli(&["stop", &name, "a"]);
        cli(&["stop", &name, "b"]);
    });
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit().code(), Some(0), "{}", first.console());
    let held = persistent.join(hafen_qemu::disk::HELD_FILE);
    assert_eq!(
        std::fs::read_to_string(&held).unwrap_or_default(),
        "a\n",
        "only the unless-stopped one is recorded"
    );

    let mut second = Vm::boot_with(&image, &["--name", &name]);
    second.checked(|| {
        second.wait_for("a stays stopped");
        second.wait_for("b | up");
        assert!(!second.console().contains("a | up"), "{}", second.console());
        cli(&["start", &name, "a"]);
        second.wait_for("a | up");
    });
    second.signal(libc::SIGTERM);
    assert_eq!(second.wait_exit().code(), Some(0), "{}", second.console());
    assert!(!held.exists(), "a ran again: nothing is held any more");
}
