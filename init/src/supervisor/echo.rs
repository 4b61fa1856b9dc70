//! Containers' output on the console, as `NAME | line`. The console is a
//! serial port: far slower than a container can write, and under TCG every
//! byte sent costs the guest an emulated I/O access (measured: with every
//! line echoed, a container writing flat out reached `hafen logs -f` at
//! 0.4 MB/s; without the echo, 18.8 MB/s). So PID 1 writes it through a
//! non-blocking descriptor of its own, a bounded buffer and a byte budget
//! ([`RATE`] per second after a [`BURST`]), and drops lines beyond them,
//! saying how many: the log rings and `hafen logs` keep everything.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use rustix::fs::{Mode, OFlags};

use crate::sys;

/// The most console output held back while the console is busy.
const MAX_PENDING: usize = 64 * 1024;
/// The longest line echoed; the log ring keeps the whole of it. Room for a
/// one-line JSON report (hafen-check's is about 4.5 KiB); the byte rate
/// below bounds a flood whatever the line length.
const MAX_LINE: usize = 8192;
/// Console bytes per second for container output, after the burst.
const RATE: u64 = 16 * 1024;
/// Once lines are being dropped, echoing resumes only when the budget is
/// back to this much: a flood shows as stretches of lines between notes,
/// not one line and one note at a time.
const RESUME: u64 = 32 * 1024;
/// Console bytes that may go out at once.
const BURST: u64 = 64 * 1024;

/// The console echo.
#[derive(Debug)]
pub struct Echo {
    /// Our own non-blocking open of the console, when it could be made.
    own: Option<OwnedFd>,
    fd: RawFd,
    pending: Vec<u8>,
    dropped: u64,
    /// Bytes the budget allows now, and when it was last topped up.
    budget: u64,
    budget_at: u64,
}

impl Echo {
    /// Echoes to /dev/console through a non-blocking descriptor (stdout,
    /// blocking, when /dev/console cannot be opened).
    pub fn console() -> Echo {
        let own = rustix::fs::open(
            "/dev/console",
            OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok();
        let fd = own.as_ref().map_or(1, AsRawFd::as_raw_fd);
        Echo {
            own,
            fd,
            pending: Vec::new(),
            dropped: 0,
            budget: BURST,
            budget_at: sys::monotonic_ns(),
        }
    }

    /// Takes `bytes` from the budget; false when they do not fit (or,
    /// while dropping, until the budget is back to [`RESUME`]).
    fn spend(&mut self, bytes: usize) -> bool {
        let now = sys::monotonic_ns();
        let refill = now.saturating_sub(self.budget_at).saturating_mul(RATE) / 1_000_000_000;
        if refill > 0 {
            self.budget = (self.budget + refill).min(BURST);
            self.budget_at = now;
        }
        let bytes = bytes as u64;
        let floor = if self.dropped > 0 { RESUME } else { 0 };
        if bytes > self.budget || self.budget < floor {
            return false;
        }
        self.budget -= bytes;
        true
    }

    /// Echoes to `fd` (tests).
    #[cfg(test)]
    pub fn to_fd(fd: RawFd) -> Echo {
        Echo {
            own: None,
            fd,
            pending: Vec::new(),
            dropped: 0,
            budget: BURST,
            budget_at: sys::monotonic_ns(),
        }
    }

    /// Queues whole lines of `name`'s output (the last may lack its
    /// newline) and writes what the console takes.
    pub fn lines(&mut self, name: &str, bytes: &[u8]) {
        if self.dropped > 0 && !self.spend(0) {
            // Still dropping: count the lines and be done (a flood passes
            // here on every read; the clock is read once, not per line).
            self.dropped += crate::logs::line_count(bytes);
            return;
        }
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = &line[..line.len().min(MAX_LINE)];
            let needed = name.len() + 3 + line.len() + 1;
            if self.pending.len() + needed > MAX_PENDING || !self.spend(needed) {
                self.dropped += 1;
                continue;
            }
            if self.dropped > 0 {
                let note = format!(
                    "hafen: {} line{} of container output not shown on the console (too much too fast; `hafen logs` has them)\n",
                    self.dropped,
                    if self.dropped == 1 { "" } else { "s" }
                );
                self.pending.extend_from_slice(note.as_bytes());
                self.dropped = 0;
            }
            self.pending.extend_from_slice(name.as_bytes());
            self.pending.extend_from_slice(b" | ");
            self.pending.extend_from_slice(line);
            self.pending.push(b'\n');
        }
        self.flush();
    }

    /// Whether output waits for the console.
    pub fn pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes what the console takes now.
    pub fn flush(&mut self) {
        let mut done = 0;
        while done < self.pending.len() {
            match sys::write_some(self.fd, &self.pending[done..]) {
                Ok(Some(n)) if n > 0 => done += n,
                // Full, or broken: keep it for later (bounded), or drop it.
                Ok(_) => break,
                Err(_) => {
                    done = self.pending.len();
                    break;
                }
            }
        }
        self.pending.drain(..done);
    }

    /// Before power-off: writes everything left, waiting for the console.
    pub fn flush_blocking(&mut self) {
        // Our descriptor is non-blocking; stdout is the same console, blocking.
        let fd = if self.own.is_some() { 1 } else { self.fd };
        let _ = sys::write_all(fd, &self.pending);
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_and_carriage_returns_dropped() {
        let (r, w) = sys::pipe().expect("pipe");
        let mut echo = Echo::to_fd(w.as_raw_fd());
        echo.lines("greet", b"hello\nworld\r\nlast");
        drop(w);
        let mut buf = [0u8; 256];
        let n = sys::read(r.as_raw_fd(), &mut buf)
            .expect("read")
            .expect("data");
        assert_eq!(
            std::str::from_utf8(&buf[..n]).expect("utf8"),
            "greet | hello\ngreet | world\ngreet | last\n"
        );
    }

    #[test]
    fn a_flood_is_echoed_within_the_byte_budget() {
        let (_r, w) = sys::pipe().expect("pipe");
        sys::set_nonblocking(w.as_raw_fd()).expect("nonblocking");
        let mut echo = Echo::to_fd(w.as_raw_fd());
        let line = [b'y'; 99];
        let mut shown = 0;
        for _ in 0..10_000 {
            let before = echo.dropped;
            echo.lines("c", &line);
            if echo.dropped == before {
                shown += 1;
            }
        }
        // 104 bytes a line: the burst, plus what refilled meanwhile.
        assert!(shown < 3000, "{shown} lines echoed");
        assert!(shown >= (BURST / 104) as usize - 1, "{shown} lines echoed");
    }

    #[test]
    fn a_console_that_does_not_keep_up_loses_lines_not_memory() {
        let (r, w) = sys::pipe().expect("pipe");
        sys::set_nonblocking(w.as_raw_fd()).expect("nonblocking");
        sys::set_nonblocking(r.as_raw_fd()).expect("nonblocking");
        let mut echo = Echo::to_fd(w.as_raw_fd());
        let line = vec![b'x'; 1000];
        for _ in 0..2000 {
            echo.lines("c", &line);
            assert!(echo.pending.len() <= MAX_PENDING);
        }
        assert!(echo.dropped > 0);
        // Once the console drains, the loss is reported.
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(Some(n)) = sys::read(r.as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            echo.flush();
            if !echo.pending() {
                break;
            }
        }
        // (Refill the byte budget, which the flood used up as well.)
        echo.budget = BURST;
        echo.lines("c", b"after\n");
        let mut seen = Vec::new();
        while let Ok(Some(n)) = sys::read(r.as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            echo.flush();
        }
        let text = String::from_utf8_lossy(&seen);
        assert!(
            text.contains("of container output not shown"),
            "{}",
            &text[text.len().saturating_sub(200)..]
        );
        assert!(text.ends_with("c | after\n"));
    }
}
