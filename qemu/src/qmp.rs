//! A minimal QMP (QEMU Machine Protocol) client: the handshake, commands
//! without waiting for their replies, and the events and replies we act on.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::Value;

/// Why the guest stopped, from QEMU's `SHUTDOWN` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownReason {
    /// The guest powered itself off.
    GuestShutdown,
    /// The guest asked for a reset (with `-no-reboot`, QEMU exits).
    GuestReset,
    /// The guest panicked.
    GuestPanic,
    /// QEMU was told to quit (by us, forcing).
    HostQuit,
    /// Anything else QEMU reports.
    Other(String),
}

/// A QMP message we care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The `SHUTDOWN` event.
    Shutdown(ShutdownReason),
    /// The `POWERDOWN` event: the power button was pressed.
    Powerdown,
    /// The `STOP` event: the VM paused, which in a run without `-S` or
    /// `-no-shutdown` means something went wrong; ask `query-status` why.
    Stop,
    /// A `query-status` reply: the run state (`running`, `internal-error`, ...).
    Status(String),
    /// A command's error reply.
    Error(String),
    /// Anything else (greetings, returns, other events).
    Other,
}

/// Parses one QMP line.
pub fn parse(line: &str) -> Message {
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        return Message::Other;
    };
    if let Some(desc) = value.pointer("/error/desc").and_then(Value::as_str) {
        return Message::Error(desc.to_owned());
    }
    if let Some(status) = value.pointer("/return/status").and_then(Value::as_str) {
        return Message::Status(status.to_owned());
    }
    match value.get("event").and_then(Value::as_str) {
        Some("SHUTDOWN") => {
            let reason = value
                .pointer("/data/reason")
                .and_then(Value::as_str)
                .unwrap_or("");
            Message::Shutdown(match reason {
                "guest-shutdown" => ShutdownReason::GuestShutdown,
                "guest-reset" => ShutdownReason::GuestReset,
                "guest-panic" => ShutdownReason::GuestPanic,
                "host-qmp-quit" => ShutdownReason::HostQuit,
                other => ShutdownReason::Other(other.to_owned()),
            })
        }
        Some("POWERDOWN") => Message::Powerdown,
        Some("STOP") => Message::Stop,
        _ => Message::Other,
    }
}

/// The line QMP expects for `command` (no arguments).
pub fn command_line(command: &str) -> String {
    let mut line = serde_json::json!({ "execute": command }).to_string();
    line.push('\n');
    line
}

/// A non-blocking QMP session.
///
/// Commands are pipelined: `qmp_capabilities` is written at connect time
/// and QEMU reads its input in order, so a later command runs in command
/// mode even when it is sent before the greeting has been read.
#[derive(Debug)]
pub struct Qmp {
    stream: UnixStream,
    pending: Vec<u8>,
}

impl Qmp {
    /// Connects to a listening QMP socket and asks for command mode.
    pub fn connect(socket: &Path) -> io::Result<Qmp> {
        let stream = UnixStream::connect(socket)?;
        stream.set_nonblocking(true)?;
        let mut qmp = Qmp {
            stream,
            pending: Vec::new(),
        };
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    /// Sends a command; its reply arrives later through [`Qmp::read_messages`].
    pub fn execute(&mut self, command: &str) -> io::Result<()> {
        // A few dozen bytes into an empty socket buffer: a short or blocked
        // write would mean QEMU stopped reading, which we report as an error.
        let line = command_line(command);
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("QEMU did not take the whole {command} command"),
            )),
            Err(e) => Err(e),
        }
    }

    /// The socket, for polling.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Reads every complete message available now. `Ok(None)` means QEMU
    /// closed the connection (after the messages it sent before that were
    /// returned by earlier calls).
    pub fn read_messages(&mut self) -> io::Result<Option<Vec<Message>>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // QEMU died with our bytes unread: the same as closing.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break true,
                Err(e) => return Err(e),
            }
        };
        out.extend(split_lines(&mut self.pending).iter().map(|l| parse(l)));
        if closed && out.is_empty() {
            Ok(None)
        } else {
            Ok(Some(out))
        }
    }
}

/// Removes and returns the complete lines at the front of `pending`.
fn split_lines(pending: &mut Vec<u8>) -> Vec<String> {
    let Some(last) = pending.iter().rposition(|&b| b == b'\n') else {
        return Vec::new();
    };
    let rest = pending.split_off(last + 1);
    let done = std::mem::replace(pending, rest);
    done.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shutdown_reasons_powerdown_and_errors() {
        let shutdown = |reason: &str| {
            parse(&format!(
                r#"{{"timestamp": {{"seconds": 1, "microseconds": 2}}, "event": "SHUTDOWN", "data": {{"guest": true, "reason": "{reason}"}}}}"#
            ))
        };
        assert_eq!(
            shutdown("guest-shutdown"),
            Message::Shutdown(ShutdownReason::GuestShutdown)
        );
        assert_eq!(
            shutdown("guest-reset"),
            Message::Shutdown(ShutdownReason::GuestReset)
        );
        assert_eq!(
            shutdown("guest-panic"),
            Message::Shutdown(ShutdownReason::GuestPanic)
        );
        assert_eq!(
            shutdown("host-qmp-quit"),
            Message::Shutdown(ShutdownReason::HostQuit)
        );
        assert_eq!(
            shutdown("host-signal"),
            Message::Shutdown(ShutdownReason::Other("host-signal".into()))
        );
        assert_eq!(
            parse(r#"{"event": "POWERDOWN", "timestamp": {}}"#),
            Message::Powerdown
        );
        assert_eq!(
            parse(
                r#"{"error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}}"#
            ),
            Message::Error("The command foo has not been found".into())
        );
        assert_eq!(parse(r#"{"return": {}}"#), Message::Other);
        assert_eq!(parse("not json"), Message::Other);
    }

    #[test]
    fn parses_stop_and_the_run_state() {
        assert_eq!(
            parse(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#),
            Message::Stop
        );
        assert_eq!(
            parse(
                r#"{"return": {"status": "internal-error", "singlestep": false, "running": false}}"#
            ),
            Message::Status("internal-error".into())
        );
    }

    #[test]
    fn commands_are_one_json_line() {
        assert_eq!(
            command_line("system_powerdown"),
            "{\"execute\":\"system_powerdown\"}\n"
        );
    }

    #[test]
    fn partial_lines_wait_for_the_rest() {
        let mut pending = b"{\"a\":1}\n{\"b\"".to_vec();
        assert_eq!(split_lines(&mut pending), vec!["{\"a\":1}".to_owned()]);
        assert_eq!(pending, b"{\"b\"");
        assert!(split_lines(&mut pending).is_empty());
        pending.extend_from_slice(b":2}\n\n");
        assert_eq!(split_lines(&mut pending), vec!["{\"b\":2}".to_owned()]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_session_pipelines_capabilities_and_reads_events_across_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let mut qmp = Qmp::connect(&path).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let mut first = [0u8; 64];
        let n = server.read(&mut first).expect("read");
        assert_eq!(&first[..n], command_line("qmp_capabilities").as_bytes());
        assert_eq!(qmp.read_messages().expect("read"), Some(vec![]));
        server
            .write_all(b"{\"QMP\": {}}\n{\"return\": {}}\n{\"event\": \"SHUT")
            .expect("write");
        assert_eq!(
            qmp.read_messages().expect("read"),
            Some(vec![Message::Other, Message::Other])
        );
        server
            .write_all(b"DOWN\", \"data\": {\"reason\": \"guest-reset\"}}\n")
            .expect("write");
        drop(server);
        assert_eq!(
            qmp.read_messages().expect("read"),
            Some(vec![Message::Shutdown(ShutdownReason::GuestReset)])
        );
        assert_eq!(qmp.read_messages().expect("read"), None);
    }
}
