//! Reporting blob transfers: per-blob bars redrawn in place on a
//! terminal, a line per blob start and end otherwise.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::lock;

/// How a blob transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Downloaded and verified.
    Downloaded,
    /// Uploaded.
    Uploaded,
    /// Already in the registry: nothing sent.
    Exists,
    /// Mounted from another repository of the registry: nothing sent.
    Mounted,
    /// Failed (the error is returned to the caller).
    Failed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Downloaded => "downloaded",
            Outcome::Uploaded => "pushed",
            Outcome::Exists => "already exists",
            Outcome::Mounted => "mounted",
            Outcome::Failed => "failed",
        })
    }
}

/// Receives transfer events; called from several threads at once.
pub trait Progress: Sync {
    /// A transfer of `size` bytes of blob `digest` starts.
    fn start(&self, digest: &str, size: u64);
    /// `done` bytes of `digest` have been transferred.
    fn advance(&self, digest: &str, done: u64);
    /// The transfer of `digest` ended.
    fn finish(&self, digest: &str, outcome: Outcome);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: &str, _: u64) {}
    fn finish(&self, _: &str, _: Outcome) {}
}

/// The display for stderr: bars on a terminal, lines otherwise.
pub fn stderr_progress() -> Box<dyn Progress> {
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    if std::io::stderr().is_terminal() && !dumb {
        Box::new(TerminalProgress::default())
    } else {
        Box::new(PlainProgress)
    }
}

/// `sha256:0123456789ab`: enough of a digest to tell layers apart.
fn short(digest: &str) -> &str {
    let end = digest.find(':').map_or(0, |i| i + 1) + 12;
    digest.get(..end).unwrap_or(digest)
}

/// Sizes the way people read them.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A line per blob when it starts and when it ends, on stderr.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainProgress;

impl Progress for PlainProgress {
    fn start(&self, digest: &str, size: u64) {
        eprintln!("{} {}: started", short(digest), human(size));
    }

    fn advance(&self, _: &str, _: u64) {}

    fn finish(&self, digest: &str, outcome: Outcome) {
        eprintln!("{}: {outcome}", short(digest));
    }
}

/// Per-blob bars on stderr, redrawn in place at most ten times a second.
#[derive(Debug, Default)]
pub struct TerminalProgress {
    state: Mutex<Bars>,
}

#[derive(Debug, Default)]
struct Bars {
    bars: Vec<Bar>,
    /// Lines drawn last time, to move the cursor back over.
    drawn: usize,
    last_draw: Option<Instant>,
}

#[derive(Debug)]
struct Bar {
    digest: String,
    size: u64,
    done: u64,
    outcome: Option<Outcome>,
}

const BAR_WIDTH: usize = 30;
const REDRAW_EVERY: Duration = Duration::from_millis(100);

impl Bars {
    fn bar(&mut self, digest: &str) -> Option<&mut Bar> {
        self.bars.iter_mut().find(|b| b.digest == digest)
    }

    fn draw(&mut self, force: bool) {
        let now = Instant::now();
        if !force
            && self
                .last_draw
                .is_some_and(|t| now.duration_since(t) < REDRAW_EVERY)
        {
            return;
        }
        self.last_draw = Some(now);
        let mut out = String::new();
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for bar in &self.bars {
            out.push_str("\r\x1b[2K");
            out.push_str(&bar.line());
            out.push('\n');
        }
        self.drawn = self.bars.len();
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(out.as_bytes());
        let _ = stderr.flush();
    }
}

impl Bar {
    fn line(&self) -> String {
        let name = short(&self.digest);
        if let Some(outcome) = self.outcome {
            return format!("{name}  {outcome} ({})", human(self.size));
        }
        let filled = if self.size == 0 {
            BAR_WIDTH
        } else {
            (self.done.min(self.size) as f64 / self.size as f64 * BAR_WIDTH as f64) as usize
        };
        format!(
            "{name}  [{}{}]  {} / {}",
            "=".repeat(filled),
            " ".repeat(BAR_WIDTH - filled),
            human(self.done),
            human(self.size)
        )
    }
}

impl Progress for TerminalProgress {
    fn start(&self, digest: &str, size: u64) {
        let mut state = lock(&self.state);
        state.bars.push(Bar {
            digest: digest.to_owned(),
            size,
            done: 0,
            outcome: None,
        });
        state.draw(true);
    }

    fn advance(&self, digest: &str, done: u64) {
        let mut state = lock(&self.state);
        if let Some(bar) = state.bar(digest) {
            bar.done = done;
        }
        state.draw(false);
    }

    fn finish(&self, digest: &str, outcome: Outcome) {
        let mut state = lock(&self.state);
        if let Some(bar) = state.bar(digest) {
            bar.outcome = Some(outcome);
        }
        state.draw(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_names() {
        let digest = "sha256:0123456789abcdef0123";
        assert_eq!(short(digest), "sha256:0123456789ab");
        assert_eq!(short("odd"), "odd");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
        let bar = Bar {
            digest: digest.into(),
            size: 100,
            done: 50,
            outcome: None,
        };
        let line = bar.line();
        assert!(
            line.contains(&format!("[{}{}]", "=".repeat(15), " ".repeat(15))),
            "{line}"
        );
        let done = Bar {
            outcome: Some(Outcome::Mounted),
            ..bar
        };
        assert_eq!(done.line(), "sha256:0123456789ab  mounted (100 B)");
    }
}
