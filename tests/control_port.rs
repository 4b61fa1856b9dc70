//! The guest's control port, driven straight through QEMU's `control.sock`
//! with no monitor attached (`hafen run --no-control`): the handshake, the verbs PID 1 answers, and
//! what hostile bytes do (garbage, an oversized frame, a truncated frame, a
//! frame that is not a message, a client vanishing mid-stream) — after
//! which the channel still answers and PID 1 is alive.

mod common;

use std::time::{Duration, Instant};

use common::port::Port;
use common::{build_image, Scratch, Vm};
use hafen_proto::control::{Body, Envelope, ErrorCode, ExecRequest, ExitStatus};
use hafen_proto::frame;

/// An exec request with the container's own user, environment and cwd.
fn exec_request(
    container: &str,
    args: Vec<String>,
    tty: bool,
    stdin: bool,
    size: Option<(u16, u16)>,
) -> Body {
    Body::Exec(ExecRequest {
        container: container.into(),
        args,
        env: vec![],
        user: None,
        cwd: None,
        tty,
        stdin,
        size,
    })
}

fn names(body: &Body) -> Vec<String> {
    match body {
        Body::Containers(list) => list.iter().map(|c| c.name.clone()).collect(),
        other => panic!("expected the container list, got {other:?}"),
    }
}

#[test]
fn the_port_answers_verbs_and_survives_hostile_bytes_and_vanishing_clients() {
    let scratch = Scratch::new("port");
    let image = build_image(
        &scratch,
        r#"
name = "port"
[[container]]
name = "web"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; while true; do sleep 1 & wait $!; done"]
[[container]]
name = "job"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "exit 3"]
phase = "once"
"#,
    );
    let mut vm = Vm::boot_with(&image, &["--no-control"]);
    vm.wait_for("web | oops");
    let mut port = Port::connect(&vm);

    // The verbs.
    let list = port.ask(1, Body::List);
    assert_eq!(names(&list), ["web", "job"]);
    let Body::Containers(infos) = &list else {
        unreachable!()
    };
    assert_eq!(infos[0].image, "oci:busybox:1");
    assert_eq!(
        infos[1].exit.as_ref().map(|e| e.status),
        Some(ExitStatus::Code(3))
    );
    port.send(
        2,
        Body::Logs {
            container: Some("web".into()),
            follow: false,
            tail: Some(2),
            since_ns: None,
            after_seq: None,
        },
    );
    let logs = port.collect(2, |b| matches!(b, Body::End | Body::Error { .. }));
    let text: Vec<u8> = logs
        .iter()
        .flat_map(|b| match b {
            Body::Log { entries, .. } => entries.iter().flat_map(|e| e.line.clone()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(String::from_utf8_lossy(&text), "line 5\noops\n");
    port.send(
        3,
        exec_request(
            "web",
            vec![
                "sh".into(),
                "-c".into(),
                "echo in $(hostname); exit 7".into(),
            ],
            false,
            false,
            None,
        ),
    );
    let exec = port.collect(3, |b| {
        matches!(b, Body::ExecExit { .. } | Body::Error { .. })
    });
    assert!(
        exec.contains(&Body::ExecExit {
            status: ExitStatus::Code(7)
        }),
        "{exec:?}"
    );
    assert!(
        exec.iter()
            .any(|b| matches!(b, Body::Output { data, .. } if data == b"in web\n")),
        "{exec:?}"
    );
    // The port is PID 1's alone: not in a container's /dev, and no
    // process in a container holds it (the exec'd one included).
    port.send(
        11,
        exec_request(
            "web",
            vec![
                "sh".into(),
                "-c".into(),
                "ls /dev; ls -l /proc/[0-9]*/fd/ 2>/dev/null; echo checked".into(),
            ],
            false,
            false,
            None,
        ),
    );
    let seen = port.collect(11, |b| {
        matches!(b, Body::ExecExit { .. } | Body::Error { .. })
    });
    let text: String = seen
        .iter()
        .filter_map(|b| match b {
            Body::Output { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
            _ => None,
        })
        .collect();
    assert!(text.contains("checked") && text.contains("null"), "{text}");
    assert!(
        !text.contains("vport"),
        "the control port is visible: {text}"
    );
    // A terminal: made in the container's devpts, the size we asked for,
    // Ctrl-C reaches the foreground process as SIGINT.
    port.send(
        9,
        exec_request(
            "web",
            vec![
                "sh".into(),
                "-c".into(),
                "tty; stty size; echo ready; sleep 60; echo not interrupted".into(),
            ],
            true,
            true,
            Some((30, 100)),
        ),
    );
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains("ready") {
        for e in port.read_some() {
            if let (9, Body::Output { data, .. }) = (e.id, &e.body) {
                seen.push_str(&String::from_utf8_lossy(data));
            }
        }
        assert!(
            Instant::now() < deadline,
            "no ready from the terminal: {seen:?}"
        );
    }
    assert!(seen.contains("/dev/pts/"), "{seen:?}");
    assert!(seen.contains("30 100"), "{seen:?}");
    port.send(
        9,
        Body::Resize {
            rows: 40,
            cols: 120,
        },
    );
    port.send(9, Body::Input { data: vec![3] });
    let end = port.collect(9, |b| {
        matches!(b, Body::ExecExit { .. } | Body::Error { .. })
    });
    assert!(
        matches!(
            end.last(),
            Some(Body::ExecExit {
                status: ExitStatus::Code(130) | ExitStatus::Signal(2)
            })
        ),
        "{end:?}"
    );
    let missing = port.ask(
        4,
        Body::Top {
            container: "nope".into(),
        },
    );
    assert!(
        matches!(&missing, Body::Error { code: ErrorCode::NotFound, message } if message.contains("web, job")),
        "{missing:?}"
    );

    match port.ask(10, Body::GetGuest) {
        Body::Guest(g) => {
            assert!(
                g.init_rss_bytes > 0 && g.init_rss_bytes < g.memory_total_bytes,
                "{g:?}"
            );
            assert!(g.log_bytes > 0, "web's lines are in its ring: {g:?}");
        }
        other => panic!("expected the guest's figures, got {other:?}"),
    }

    // Hostile bytes: garbage, false starts, an oversized frame, a frame
    // whose payload is not a message, and a truncated frame; each costs
    // only itself.
    port.raw(b"garbage HFHFHF \x00\xff more garbage");
    let mut oversized = frame::header(&[0u8; 16]).expect("header").to_vec();
    oversized[2..6].copy_from_slice(&(1u32 << 20).to_le_bytes());
    let check = frame::crc32(&oversized[..6]) as u16;
    oversized[6..8].copy_from_slice(&check.to_le_bytes());
    port.raw(&oversized);
    let mut not_a_message = vec![0u8; 64];
    let n = frame::encode(b"\xff\xff\xff\xff\xff", &mut not_a_message).expect("fits");
    port.raw(&not_a_message[..n]);
    let whole = Envelope {
        id: 5,
        body: Body::List,
    }
    .to_frame()
    .expect("encode");
    port.raw(&whole[..whole.len() - 3]);
    let after = port.ask(6, Body::List);
    assert_eq!(names(&after), ["web", "job"]);
    assert!(
        port.bad_frames.len() >= 3,
        "each bad input is answered: {:?}",
        port.bad_frames
    );

    // A client that vanishes mid-stream; the next one is served.
    port.send(
        7,
        Body::Logs {
            container: None,
            follow: true,
            tail: None,
            since_ns: None,
            after_seq: None,
        },
    );
    port.send(8, Body::Events);
    drop(port);
    let mut next = Port::connect(&vm);
    assert_eq!(names(&next.ask(1, Body::List)), ["web", "job"]);

    // Input faster than the process reads it: the host is held back, not
    // refused, and every byte arrives.
    next.send(
        3,
        exec_request(
            "web",
            vec!["sh".into(), "-c".into(), "sleep 2; wc -c".into()],
            false,
            true,
            None,
        ),
    );
    next.collect(3, |b| matches!(b, Body::ExecStarted { .. }));
    let chunk = vec![b'x'; 32 * 1024];
    for _ in 0..96 {
        next.send(
            3,
            Body::Input {
                data: chunk.clone(),
            },
        );
    }
    next.send(3, Body::Input { data: Vec::new() });
    let done = next.collect(3, |b| {
        matches!(b, Body::ExecExit { .. } | Body::Error { .. })
    });
    let out: Vec<u8> = done
        .iter()
        .flat_map(|b| match b {
            Body::Output { data, .. } => data.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        (96 * 32 * 1024).to_string(),
        "{done:?}"
    );

    // PID 1 is alive and shuts down cleanly when asked.
    assert_eq!(next.ask(2, Body::Shutdown { reboot: false }), Body::Done);
    let status = vm.wait_exit();
    vm.assert_console("web exited with code 0");
    assert_eq!(status.code(), Some(0), "{}", vm.console());
}

/// The `main` container's end shuts the machine down, and the guest says
/// so with its status before it powers off: 3 for `exit 3`, SIGKILL (137
/// to a shell) for a kill.
#[test]
fn the_main_containers_end_is_announced_with_its_status_before_power_off() {
    for (signal, expected) in [
        (libc::SIGUSR1, ExitStatus::Code(3)),
        (libc::SIGKILL, ExitStatus::Signal(libc::SIGKILL)),
    ] {
        let scratch = Scratch::new(&format!("main-{signal}"));
        let image = build_image(
            &scratch,
            r#"
name = "mainexit"
main = "app"
[[container]]
name = "app"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'exit 3' USR1; echo ready; while true; do sleep 1 & wait $!; done"]
[[container]]
name = "side"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo ready; while true; do sleep 1 & wait $!; done"]
"#,
        );
        let mut vm = Vm::boot_with(&image, &["--no-control"]);
        vm.wait_for("app | ready");
        vm.wait_for("side | ready");
        let mut port = Port::connect(&vm);
        port.send(1, Body::Events);
        let answer = port.ask(
            2,
            Body::Kill {
                container: "app".into(),
                signal,
            },
        );
        assert_eq!(answer, Body::Done);
        let events = port.collect(1, |b| {
            matches!(
                b,
                Body::Event(hafen_proto::control::Event {
                    kind: hafen_proto::control::EventKind::Shutdown { .. },
                    ..
                })
            )
        });
        let kinds: Vec<&hafen_proto::control::EventKind> = events
            .iter()
            .filter_map(|b| match b {
                Body::Event(e) => Some(&e.kind),
                _ => None,
            })
            .collect();
        assert!(
            kinds.iter().any(|k| matches!(k, hafen_proto::control::EventKind::Die(exit) if exit.status == expected)),
            "{kinds:?}"
        );
        assert_eq!(
            kinds.last(),
            Some(&&hafen_proto::control::EventKind::Shutdown {
                main_exit: Some(expected),
                held: Vec::new(),
            })
        );
        vm.wait_exit();
        vm.assert_console("main container app");
        vm.assert_console("side exited with code 0");
        vm.assert_console("powering off");
    }
}

/// An OOM kill inside a container is an event while it happens, not only
/// when the container's init dies of it: here the init lives on.
#[test]
fn an_oom_kill_inside_a_running_container_is_an_event() {
    let scratch = Scratch::new("oom");
    let image = build_image(
        &scratch,
        r#"
name = "oom"
[[container]]
name = "hog"
image = "oci:busybox:1"
memory = "16M"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo ready; while true; do sleep 1 & wait $!; done"]
"#,
    );
    let mut vm = Vm::boot_with(&image, &["--no-control"]);
    vm.wait_for("hog | ready");
    let mut port = Port::connect(&vm);
    port.send(1, Body::Events);
    // A command substitution keeps all its input in the shell's memory:
    // 64 MiB does not fit in 16.
    port.send(
        2,
        exec_request(
            "hog",
            vec![
                "sh".into(),
                "-c".into(),
                "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}".into(),
            ],
            false,
            false,
            None,
        ),
    );
    let events = port.collect(1, |b| {
        matches!(
            b,
            Body::Event(hafen_proto::control::Event {
                kind: hafen_proto::control::EventKind::Oom,
                ..
            })
        )
    });
    assert!(!events.is_empty());
    let list = port.ask(3, Body::List);
    let Body::Containers(infos) = list else {
        panic!("expected the list, got {list:?}")
    };
    assert_eq!(
        infos[0].state,
        hafen_proto::control::State::Running,
        "the init survived"
    );
    vm.assert_console("hog: the OOM killer killed a process");
    assert_eq!(port.ask(4, Body::Shutdown { reboot: false }), Body::Done);
    vm.wait_exit();
}

/// A host that asks for a flood of logs and then does not read stalls only
/// its own stream: PID 1 goes on reaping and reporting, and the stream
/// resumes when the host reads again.
#[test]
fn a_host_that_does_not_read_never_stalls_pid_1() {
    let scratch = Scratch::new("stall");
    let image = build_image(
        &scratch,
        r#"
name = "stall"
[[container]]
name = "flood"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "echo ready; yes 0123456789012345678901234567890123456789"]
# PID 1 of its namespace ignores SIGTERM without a handler.
stop_timeout = 1
[[container]]
name = "ticker"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "sleep 2; exit 4"]
"#,
    );
    let mut vm = Vm::boot_with(&image, &["--no-control"]);
    vm.wait_for("flood | ready");
    let mut port = Port::connect(&vm);
    port.send(
        1,
        Body::Logs {
            container: Some("flood".into()),
            follow: true,
            tail: None,
            since_ns: None,
            after_seq: None,
        },
    );
    // Not reading: the channel fills, PID 1's queue reaches its limit.
    vm.wait_for("ticker exited with code 4");
    // Reading again: the stream goes on, in order.
    let mut last = 0;
    let mut got = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < 1 << 20 {
        for e in port.read_some() {
            if let (1, Body::Log { entries, .. }) = (e.id, &e.body) {
                for entry in entries {
                    assert!(entry.seq > last, "sequence goes backwards");
                    last = entry.seq;
                    got += entry.line.len();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the stream did not resume ({got} bytes)"
        );
    }
    port.send(1, Body::Cancel);
    assert_eq!(port.ask(2, Body::Shutdown { reboot: false }), Body::Done);
    vm.wait_exit();
}

/// A container's last lines reach a log follower before its `die` event
/// (the monitor ends `hafen logs -f` on that event). The window where PID 1
/// read the last lines and reaped the init in one turn, then sent the event
/// before the lines, is narrow: this run does not hit it every time, CI's
/// `hafen stop` of a container echoing from its trap did once.
#[test]
fn a_containers_last_lines_come_before_its_die_event() {
    let scratch = Scratch::new("lastlines");
    let image = build_image(
        &scratch,
        r#"
name = "lastlines"
[[container]]
name = "burst"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "echo ready; until [ -e /dev/shm/go ]; do sleep 0.1; done; seq 1 20000"]
[[container]]
name = "idle"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"]
"#,
    );
    let mut vm = Vm::boot_with(&image, &["--no-control"]);
    vm.wait_for("burst | ready");
    let mut port = Port::connect(&vm);
    vm.checked(|| {
        port.send(1, Body::Events);
        port.send(
            2,
            Body::Logs {
                container: Some("burst".into()),
                follow: true,
                tail: Some(0),
                since_ns: None,
                after_seq: None,
            },
        );
        port.send(
            3,
            exec_request(
                "burst",
                vec!["touch".into(), "/dev/shm/go".into()],
                false,
                false,
                None,
            ),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut text = Vec::new();
        loop {
            assert!(Instant::now() < deadline, "no die event for burst");
            let frames = port.read_some();
            let mut died = false;
            for envelope in frames {
                match envelope.body {
                    Body::Log { entries, .. } if envelope.id == 2 => {
                        for e in entries {
                            text.extend_from_slice(&e.line);
                        }
                    }
                    Body::Event(hafen_proto::control::Event {
                        container,
                        kind: hafen_proto::control::EventKind::Die(_),
                        ..
                    }) if container == "burst" => died = true,
                    _ => {}
                }
                if died {
                    break;
                }
            }
            if died {
                break;
            }
        }
        let text = String::from_utf8_lossy(&text);
        let last = text.lines().last().unwrap_or_default().to_owned();
        assert_eq!(
            last, "20000",
            "lines before the die event end with {last:?}"
        );
        assert_eq!(text.lines().count(), 20000);
        assert_eq!(port.ask(9, Body::Shutdown { reboot: false }), Body::Done);
    });
    vm.wait_exit();
}
