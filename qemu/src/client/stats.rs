//! `hafen stats VM [CONTAINER]`: each container's CPU, memory, processes
//! and block I/O from its cgroup; CPU % from two samples.

use std::io::Write;
use std::time::Duration;

use hafen_proto::control::{Body, ContainerStats};

use super::format;
use super::{out, Client, Error};

/// Between the samples of a streaming `hafen stats`.
const REFRESH: Duration = Duration::from_secs(1);
/// Between the two samples of `--no-stream`.
const ONE_SHOT: Duration = Duration::from_millis(500);
/// Clears the terminal and puts the cursor at the top left.
const CLEAR: &str = "\x1b[2J\x1b[H";

/// `hafen stats`.
#[derive(Debug, Clone)]
pub struct StatsOptions {
    /// The VM.
    pub vm: String,
    /// One container; every running one when `None`.
    pub container: Option<String>,
    /// Refresh every second until Ctrl-C (`false`: print once).
    pub stream: bool,
}

/// CPU use between two samples of one container, in percent of one CPU.
pub fn cpu_percent(before: &ContainerStats, after: &ContainerStats) -> Option<f64> {
    let elapsed_ns = after.time_ns.checked_sub(before.time_ns)?;
    let used_usec = after.cpu_usec.checked_sub(before.cpu_usec)?;
    (elapsed_ns > 0).then(|| used_usec as f64 * 1000.0 / elapsed_ns as f64 * 100.0)
}

/// The `hafen stats` table for `now`, with CPU % against `before`;
/// `memory_total` stands in for an unlimited container's limit.
pub fn stats_table(
    before: &[ContainerStats],
    now: &[ContainerStats],
    memory_total: Option<u64>,
) -> String {
    let rows: Vec<Vec<String>> = now
        .iter()
        .map(|s| {
            let cpu = before
                .iter()
                .find(|b| b.name == s.name)
                .and_then(|b| cpu_percent(b, s))
                .map_or_else(|| "--".to_owned(), |p| format!("{p:.2}%"));
            let limit = s
                .memory_limit
                .or(memory_total)
                .map_or_else(|| "-".to_owned(), format::binary_size);
            vec![
                s.name.clone(),
                cpu,
                format!("{} / {limit}", format::binary_size(s.memory_bytes)),
                s.pids.to_string(),
                format!(
                    "{} / {}",
                    format::decimal_size(s.io_read_bytes),
                    format::decimal_size(s.io_write_bytes)
                ),
            ]
        })
        .collect();
    format::table(
        &["NAME", "CPU %", "MEM USAGE / LIMIT", "PIDS", "BLOCK I/O"],
        &rows,
    )
}

fn sample(client: &mut Client, container: &Option<String>) -> Result<Vec<ContainerStats>, Error> {
    match client.request(Body::GetStats {
        container: container.clone(),
    })? {
        Body::Stats(s) => Ok(s),
        other => Err(client.unexpected("GetStats", &other)),
    }
}

/// `hafen stats`. Returns the exit code.
pub fn stats(opts: &StatsOptions) -> Result<i32, Error> {
    let mut client = Client::connect(&opts.vm)?;
    client.catch_signals(&[])?;
    let memory_total = match client.request(Body::GetGuest) {
        Ok(Body::Guest(g)) => Some(g.memory_total_bytes),
        _ => None,
    };
    let clear = opts.stream && super::terminal::is_terminal(rustix::stdio::stdout());
    let mut before = sample(&mut client, &opts.container)?;
    let mut stdout = std::io::stdout().lock();
    loop {
        let wait = if opts.stream { REFRESH } else { ONE_SHOT };
        if client.sleep(wait)? {
            return Ok(0);
        }
        let now = sample(&mut client, &opts.container)?;
        let table = stats_table(&before, &now, memory_total);
        let text = if clear {
            format!("{CLEAR}{table}")
        } else {
            table
        };
        out(stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush()))?;
        if !opts.stream {
            return Ok(0);
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(name: &str, time_s: u64, cpu_usec: u64) -> ContainerStats {
        ContainerStats {
            name: name.into(),
            time_ns: time_s * 1_000_000_000,
            cpu_usec,
            memory_bytes: 3 << 20,
            memory_limit: None,
            pids: 2,
            io_read_bytes: 1_500_000,
            io_write_bytes: 0,
        }
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time_between_samples() {
        let p = cpu_percent(&stats("a", 10, 1_000_000), &stats("a", 12, 2_000_000));
        assert_eq!(p, Some(50.0));
        assert_eq!(cpu_percent(&stats("a", 10, 0), &stats("a", 10, 5)), None);
        // A restarted container's counter went back: no figure, not a wrap.
        assert_eq!(cpu_percent(&stats("a", 10, 900), &stats("a", 11, 5)), None);
    }

    #[test]
    fn the_table_shows_usage_limit_pids_and_io() {
        let mut limited = stats("db", 12, 4_000_000);
        limited.memory_limit = Some(64 << 20);
        let text = stats_table(
            &[stats("web", 10, 0), stats("db", 10, 3_000_000)],
            &[stats("web", 12, 500_000), limited, stats("new", 12, 0)],
            Some(256 << 20),
        );
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[1],
            ["web", "25.00%", "3MiB", "/", "256MiB", "2", "1.5MB", "/", "0B"]
        );
        assert_eq!(lines[2][..5], ["db", "50.00%", "3MiB", "/", "64MiB"]);
        assert_eq!(lines[3][..2], ["new", "--"], "no earlier sample");
    }
}
