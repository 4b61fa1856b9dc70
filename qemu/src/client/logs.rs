//! `hafen logs VM CONTAINER`: what the container wrote, stdout to our
//! stdout and stderr to our stderr, optionally following it.

use std::io::{BufWriter, Write};

use hafen_proto::control::{Body, LogEntry, Stream as Output};

use super::format::{self, Clock, Since};
use super::{out, Client, Error};

/// `hafen logs`.
#[derive(Debug, Clone)]
pub struct LogsOptions {
    /// The VM.
    pub vm: String,
    /// The container.
    pub container: String,
    /// Keep printing new lines until Ctrl-C or the container ends.
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<u32>,
    /// Only lines logged at or after this.
    pub since: Option<Since>,
    /// Prefix every line with its time.
    pub timestamps: bool,
}

/// One entry as printed: its bytes, after its time with `-t`.
pub fn render(entry: &LogEntry, timestamps: Option<&Clock>, into: &mut Vec<u8>) {
    if let Some(clock) = timestamps {
        into.extend_from_slice(format::rfc3339(clock.unix_ns(entry.time_ns)).as_bytes());
        into.push(b' ');
    }
    into.extend_from_slice(&entry.line);
}

/// `hafen logs`. Returns the exit code.
pub fn logs(opts: &LogsOptions) -> Result<i32, Error> {
    let mut client = Client::connect(&opts.vm)?;
    let clock = client.clock()?;
    if opts.follow {
        client.catch_signals(&[])?;
    }
    let since_ns = opts
        .since
        .map(|s| clock.guest_ns(s.unix_ns(clock.now_unix_ns())));
    let stream = client.stream(Body::Logs {
        container: Some(opts.container.clone()),
        follow: opts.follow,
        tail: opts.tail,
        since_ns,
        after_seq: None,
    })?;
    let stamps = opts.timestamps.then_some(&clock);
    let mut stdout = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut stderr = std::io::stderr().lock();
    let (mut to_out, mut to_err) = (Vec::new(), Vec::new());
    for body in stream {
        let entries = match body {
            Ok(Body::Log { entries, .. }) => entries,
            Ok(_) => continue,
            // The VM went away while we followed it: its logs have ended.
            Err(Error::Closed { .. }) if opts.follow => break,
            Err(e) => return Err(e),
        };
        for entry in &entries {
            match entry.stream {
                Output::Stdout => render(entry, stamps, &mut to_out),
                Output::Stderr => render(entry, stamps, &mut to_err),
            }
            // Keep the two streams' order within a batch when both are
            // the same terminal: write whenever the stream changes.
            if entry.stream == Output::Stdout && !to_err.is_empty() {
                out(stderr.write_all(&to_err))?;
                to_err.clear();
            } else if entry.stream == Output::Stderr && !to_out.is_empty() {
                out(stdout.write_all(&to_out).and_then(|()| stdout.flush()))?;
                to_out.clear();
            }
        }
        out(stdout.write_all(&to_out).and_then(|()| stdout.flush()))?;
        out(stderr.write_all(&to_err))?;
        to_out.clear();
        to_err.clear();
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_prefix_each_line_in_wall_clock_time() {
        let entry = LogEntry {
            seq: 1,
            time_ns: 2_500_000_000,
            stream: Output::Stderr,
            line: b"oops\n".to_vec(),
        };
        let clock = Clock::new(60_000_000_000, 70_000_000_000);
        let mut plain = Vec::new();
        render(&entry, None, &mut plain);
        assert_eq!(plain, b"oops\n");
        let mut stamped = Vec::new();
        render(&entry, Some(&clock), &mut stamped);
        assert_eq!(stamped, b"1970-01-01T00:01:02.500000000Z oops\n");
    }
}
