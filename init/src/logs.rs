//! Containers' output as PID 1 keeps it: each stream is cut into whole lines
//! ([`LineSplitter`]) and the lines go into a bounded ring per container
//! ([`LogRing`]) that `hafen logs` reads and follows, and to the console.
//!
//! An entry is what one read brought: one or more whole lines of one
//! stream, or a piece of a line that grew past [`MAX_PARTIAL`] or was cut
//! by the stream closing. Entries carry a sequence number that increases
//! across all containers ([`Sequence`]), so one cursor can resume them all.
//! The ring's budget counts each entry's bookkeeping too, so a flood of
//! one-byte lines cannot make it use more memory than it was given.

use std::collections::VecDeque;

use hafen_proto::control::{LogEntry, Stream};

/// The longest piece of a line kept back waiting for its newline.
pub const MAX_PARTIAL: usize = 16 * 1024;

/// What one entry costs beyond its bytes (its header and allocation), for
/// the ring's budget.
const ENTRY_OVERHEAD: usize = 48;

/// The guest-wide log sequence.
#[derive(Debug, Default)]
pub struct Sequence(u64);

impl Sequence {
    /// The next number (the first is 1).
    pub fn advance(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }

    /// The last number handed out (0 before the first).
    pub fn last(&self) -> u64 {
        self.0
    }
}

/// Collects one stream's bytes and hands out whole lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Adds `bytes`; returns what is ready to log: everything up to the
    /// last newline, or a piece of [`MAX_PARTIAL`] bytes of a longer line.
    pub fn push(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.pending.extend_from_slice(bytes);
        let cut = match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(pos) => pos + 1,
            None if self.pending.len() >= MAX_PARTIAL => MAX_PARTIAL,
            None => return None,
        };
        let rest = self.pending.split_off(cut);
        Some(std::mem::replace(&mut self.pending, rest))
    }

    /// What is left when the stream ends.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

/// One container's recent output, at most `budget` bytes.
#[derive(Debug)]
pub struct LogRing {
    entries: VecDeque<LogEntry>,
    used: usize,
    budget: usize,
    /// Entries dropped to make room, since boot.
    dropped: u64,
}

impl LogRing {
    /// An empty ring that keeps at most `budget` bytes (counting overhead).
    pub fn new(budget: usize) -> LogRing {
        LogRing {
            entries: VecDeque::new(),
            used: 0,
            budget,
            dropped: 0,
        }
    }

    fn cost(entry: &LogEntry) -> usize {
        entry.line.len() + ENTRY_OVERHEAD
    }

    /// Appends an entry, dropping the oldest ones to stay within budget.
    /// Returns its sequence number.
    pub fn push(
        &mut self,
        seq: &mut Sequence,
        time_ns: u64,
        stream: Stream,
        mut bytes: Vec<u8>,
    ) -> u64 {
        // A single entry larger than the ring keeps only its tail.
        let room = self.budget.saturating_sub(ENTRY_OVERHEAD).max(1);
        if bytes.len() > room {
            bytes.drain(..bytes.len() - room);
        }
        bytes.shrink_to_fit();
        let entry = LogEntry {
            seq: seq.advance(),
            time_ns,
            stream,
            line: bytes,
        };
        self.used += Self::cost(&entry);
        let number = entry.seq;
        self.entries.push_back(entry);
        while self.used > self.budget {
            match self.entries.pop_front() {
                Some(old) => {
                    self.used -= Self::cost(&old);
                    self.dropped += 1;
                }
                None => break,
            }
        }
        number
    }

    /// Bytes in use, counting overhead.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The sequence number of the newest entry.
    pub fn last_seq(&self) -> Option<u64> {
        self.entries.back().map(|e| e.seq)
    }

    /// Entries after `after` (a sequence number), oldest first.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &LogEntry> {
        let start = self.entries.partition_point(|e| e.seq <= after);
        self.entries.range(start..)
    }

    /// The sequence number after which the last `lines` lines begin (so
    /// `after(tail_start(n))` yields them), counting a trailing partial
    /// line as one. The first entry may hold more lines than asked for;
    /// [`trim_to_lines`] cuts it.
    pub fn tail_start(&self, lines: u32) -> u64 {
        let mut wanted = u64::from(lines);
        if wanted == 0 {
            return self.last_seq().unwrap_or(0);
        }
        for (i, entry) in self.entries.iter().enumerate().rev() {
            let n = line_count(&entry.line);
            if n >= wanted {
                return self.entries[i].seq - 1;
            }
            wanted -= n;
        }
        0
    }

    /// The sequence number after which entries logged at or after
    /// `since_ns` begin.
    pub fn since_start(&self, since_ns: u64) -> u64 {
        let start = self.entries.partition_point(|e| e.time_ns < since_ns);
        match start {
            0 => 0,
            i => self.entries[i - 1].seq,
        }
    }
}

/// How many lines `bytes` holds: its newlines, plus one for a piece
/// without a final newline.
pub fn line_count(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(!bytes.is_empty() && bytes.last() != Some(&b'\n'))
}

/// Keeps only the last `lines` lines of `bytes`.
pub fn trim_to_lines(bytes: &[u8], lines: u64) -> &[u8] {
    let total = line_count(bytes);
    if total <= lines {
        return bytes;
    }
    let mut skip = total - lines;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            skip -= 1;
            if skip == 0 {
                return &bytes[i + 1..];
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_handed_out_whole_and_long_ones_in_pieces() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"hel"), None);
        assert_eq!(s.push(b"lo\nwor"), Some(b"hello\n".to_vec()));
        assert_eq!(s.push(b"ld\nx\ny"), Some(b"world\nx\n".to_vec()));
        assert_eq!(s.finish(), Some(b"y".to_vec()));
        assert_eq!(s.finish(), None);
        let long = vec![b'a'; MAX_PARTIAL + 10];
        assert_eq!(s.push(&long).map(|v| v.len()), Some(MAX_PARTIAL));
        assert_eq!(s.finish().map(|v| v.len()), Some(10));
    }

    #[test]
    fn the_ring_stays_within_its_budget_counting_overhead() {
        let mut seq = Sequence::default();
        let mut ring = LogRing::new(4096);
        for i in 0..10_000u64 {
            ring.push(&mut seq, i, Stream::Stdout, b"x\n".to_vec());
            assert!(ring.used() <= 4096, "used {}", ring.used());
        }
        // The newest lines are the ones kept, in order.
        let kept: Vec<u64> = ring.after(0).map(|e| e.seq).collect();
        assert_eq!(kept.last(), Some(&10_000));
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(kept.len(), 4096 / (2 + ENTRY_OVERHEAD));
        // One entry larger than the whole ring keeps its tail.
        ring.push(&mut seq, 0, Stream::Stderr, vec![b'z'; 10_000]);
        assert!(ring.used() <= 4096);
        assert_eq!(ring.after(0).count(), 1);
    }

    #[test]
    fn cursors_resume_after_a_sequence_number_across_rings() {
        let mut seq = Sequence::default();
        let mut a = LogRing::new(1 << 20);
        let mut b = LogRing::new(1 << 20);
        a.push(&mut seq, 1, Stream::Stdout, b"a1\n".to_vec());
        b.push(&mut seq, 2, Stream::Stdout, b"b1\n".to_vec());
        a.push(&mut seq, 3, Stream::Stderr, b"a2\n".to_vec());
        let after: Vec<u64> = a.after(1).map(|e| e.seq).collect();
        assert_eq!(after, [3]);
        assert_eq!(b.after(1).map(|e| e.seq).collect::<Vec<_>>(), [2]);
        assert_eq!(a.after(3).count(), 0);
    }

    #[test]
    fn tail_and_since_pick_where_to_start() {
        let mut seq = Sequence::default();
        let mut ring = LogRing::new(1 << 20);
        ring.push(&mut seq, 10, Stream::Stdout, b"1\n2\n3\n".to_vec());
        ring.push(&mut seq, 20, Stream::Stdout, b"4\n".to_vec());
        ring.push(&mut seq, 30, Stream::Stdout, b"5".to_vec());
        assert_eq!(ring.tail_start(1), 2);
        assert_eq!(ring.tail_start(2), 1);
        // Three lines start inside the first entry: it comes whole, and is trimmed.
        assert_eq!(ring.tail_start(3), 0);
        let first = ring.after(ring.tail_start(3)).next().expect("entry");
        assert_eq!(trim_to_lines(&first.line, 1), b"3\n");
        assert_eq!(ring.tail_start(100), 0);
        assert_eq!(ring.tail_start(0), 3);
        assert_eq!(ring.since_start(20), 1);
        assert_eq!(ring.since_start(5), 0);
        assert_eq!(ring.since_start(31), 3);
        assert_eq!(line_count(b""), 0);
        assert_eq!(line_count(b"a\nb"), 2);
    }
}
