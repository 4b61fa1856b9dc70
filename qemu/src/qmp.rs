//! A minimal QMP (QEMU Machine Protocol) client: the handshake, commands
//! without waiting for their replies, and the events we act on.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

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
        _ => Message::Other,
    }
}

/// A connected QMP session in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `socket`, retrying until `deadline` while `alive()` says
    /// QEMU is still starting, then negotiates capabilities.
    pub fn connect(
        socket: &Path,
        deadline: Instant,
        mut alive: impl FnMut() -> bool,
    ) -> io::Result<Qmp> {
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline && alive() => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let mut greeting = String::new();
        qmp.reader.read_line(&mut greeting)?;
        if !greeting.contains("\"QMP\"") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected QMP greeting: {greeting}"),
            ));
        }
        qmp.execute("qmp_capabilities")?;
        let mut reply = String::new();
        qmp.reader.read_line(&mut reply)?;
        if let Message::Error(desc) = parse(&reply) {
            return Err(io::Error::other(format!("qmp_capabilities: {desc}")));
        }
        qmp.reader.get_ref().set_read_timeout(None)?;
        qmp.reader.get_ref().set_nonblocking(true)?;
        Ok(qmp)
    }

    /// Sends a command; its reply arrives later through [`Qmp::read_messages`].
    pub fn execute(&mut self, command: &str) -> io::Result<()> {
        let line = serde_json::json!({ "execute": command }).to_string();
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")
    }

    /// The socket, for polling.
    pub fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }

    /// Reads every complete message available now. `Ok(None)` means QEMU closed the connection.
    pub fn read_messages(&mut self) -> io::Result<Option<Vec<Message>>> {
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Ok(if out.is_empty() { None } else { Some(out) }),
                Ok(_) => out.push(parse(&line)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(out)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
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
}
