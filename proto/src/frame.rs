//! Framing for the control channel: length-prefixed, checksummed frames
//! that a reader can find again after garbage, a truncated frame or a
//! reconnect that delivers a previous client's stale bytes.
//!
//! A frame on the wire:
//! ```text
//! 0  2  magic "HF"
//! 2  4  payload length, little endian, at most MAX_PAYLOAD
//! 6  2  check: the low 16 bits of CRC-32 over bytes 0..6
//! 8  4  CRC-32 of the payload
//! 12 .. payload (a postcard-encoded message, see `control`)
//! ```
//! The header check lets a reader reject a false start (two bytes that
//! happen to read "HF") at once instead of waiting for a length's worth of
//! bytes that may never come; the payload CRC catches corruption. Either
//! failure drops one byte and the search for the next magic goes on.
//!
//! [`Decoder`] works in a fixed buffer, never allocates, and never needs
//! more than one frame's worth of memory: what PID 1 needs from a channel a
//! misbehaving host writes into.

use core::fmt;

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"HF";
/// Bytes before the payload.
pub const HEADER: usize = 12;
/// The largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The largest frame.
pub const MAX_FRAME: usize = HEADER + MAX_PAYLOAD;

/// CRC-32 (IEEE, the one zlib and Ethernet use), a byte at a time through
/// a 1 KiB table the compiler computes: log streams pass through here, and
/// under TCG the bit-by-bit loop cost more than the copy.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = CRC_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

/// `CRC_TABLE[i]` is the CRC register after shifting the byte `i` through it.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// A payload too large for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// Its length.
    pub len: usize,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} byte message does not fit a frame (at most {MAX_PAYLOAD})",
            self.len
        )
    }
}

/// Writes the header for `payload` into the first [`HEADER`] bytes of `out`.
pub fn header(payload: &[u8]) -> Result<[u8; HEADER], TooLarge> {
    if payload.len() > MAX_PAYLOAD {
        return Err(TooLarge { len: payload.len() });
    }
    let mut h = [0u8; HEADER];
    h[..2].copy_from_slice(&MAGIC);
    h[2..6].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let check = crc32(&h[..6]) as u16;
    h[6..8].copy_from_slice(&check.to_le_bytes());
    h[8..12].copy_from_slice(&crc32(payload).to_le_bytes());
    Ok(h)
}

/// Encodes `payload` as one frame into `out`; returns the frame's length.
pub fn encode(payload: &[u8], out: &mut [u8]) -> Result<usize, TooLarge> {
    let h = header(payload)?;
    let total = HEADER + payload.len();
    if out.len() < total {
        return Err(TooLarge { len: total });
    }
    out[..HEADER].copy_from_slice(&h);
    out[HEADER..total].copy_from_slice(payload);
    Ok(total)
}

/// Something in the byte stream that was not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Bytes that did not start a frame were dropped.
    Garbage {
        /// How many.
        bytes: usize,
    },
    /// A well-formed header announced more than [`MAX_PAYLOAD`]; it was dropped.
    TooLarge {
        /// The announced length.
        len: u32,
    },
    /// A frame's payload did not match its checksum; one byte was dropped.
    Corrupt {
        /// The announced length.
        len: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Garbage { bytes } => write!(f, "{bytes} bytes that are not a frame"),
            FrameError::TooLarge { len } => {
                write!(f, "a frame of {len} bytes (at most {MAX_PAYLOAD})")
            }
            FrameError::Corrupt { len } => {
                write!(f, "a frame of {len} bytes whose checksum does not match")
            }
        }
    }
}

/// Finds frames in a byte stream, in a buffer of `CAP` bytes (at least
/// [`MAX_FRAME`]). Feed it with [`Decoder::spare`] + [`Decoder::filled`]
/// (straight from read(2)) or [`Decoder::feed`], then take what it found
/// with [`Decoder::next_frame`] until that returns `None`.
pub struct Decoder<const CAP: usize = MAX_FRAME> {
    buf: [u8; CAP],
    len: usize,
    /// Bytes at the front already dealt with (returned frames, garbage);
    /// reclaimed when more space is needed.
    consumed: usize,
    /// Garbage dropped since the last frame, reported once a frame starts.
    skipped: usize,
}

impl<const CAP: usize> Default for Decoder<CAP> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const CAP: usize> fmt::Debug for Decoder<CAP> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &self.len)
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl<const CAP: usize> Decoder<CAP> {
    /// An empty decoder.
    pub const fn new() -> Self {
        assert!(CAP >= MAX_FRAME, "a decoder must hold the largest frame");
        Decoder {
            buf: [0; CAP],
            len: 0,
            consumed: 0,
            skipped: 0,
        }
    }

    /// Forgets everything buffered (a new connection starts clean).
    pub fn reset(&mut self) {
        self.len = 0;
        self.consumed = 0;
        self.skipped = 0;
    }

    fn compact(&mut self) {
        if self.consumed > 0 {
            self.buf.copy_within(self.consumed..self.len, 0);
            self.len -= self.consumed;
            self.consumed = 0;
        }
    }

    /// The free space to read into; call [`Decoder::filled`] after.
    pub fn spare(&mut self) -> &mut [u8] {
        self.compact();
        &mut self.buf[self.len..]
    }

    /// Records that `n` bytes were read into [`Decoder::spare`].
    pub fn filled(&mut self, n: usize) {
        self.len = (self.len + n).min(CAP);
    }

    /// Copies in as much of `bytes` as fits; returns how much that was.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare();
        let n = spare.len().min(bytes.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        self.filled(n);
        n
    }

    /// Drops `n` bytes at the front as garbage. Only moves an offset: a
    /// stream of false starts (`HFHFHF...`) costs one pass, not one copy
    /// of the buffer per byte.
    fn drop_front(&mut self, n: usize) {
        self.consumed += n;
        self.skipped += n;
    }

    /// The next frame's payload, or what was dropped on the way to it;
    /// `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<&[u8], FrameError>> {
        loop {
            let live = &self.buf[self.consumed..self.len];
            // 1. Find the magic; everything before it is garbage.
            let start =
                live.windows(2)
                    .position(|w| w == MAGIC)
                    .unwrap_or(live.len().saturating_sub(usize::from(
                        !live.is_empty() && live[live.len() - 1] == MAGIC[0],
                    )));
            if start > 0 {
                self.drop_front(start);
            }
            let at = self.consumed;
            if self.len - at < HEADER {
                return None;
            }
            // 2. A false start fails the header check: drop a byte, search on.
            let check = u16::from_le_bytes([self.buf[at + 6], self.buf[at + 7]]);
            if crc32(&self.buf[at..at + 6]) as u16 != check {
                self.drop_front(1);
                continue;
            }
            // Garbage is reported once a real frame starts after it.
            if self.skipped > 0 {
                let bytes = core::mem::take(&mut self.skipped);
                return Some(Err(FrameError::Garbage { bytes }));
            }
            let h = &self.buf[at..at + HEADER];
            let len = u32::from_le_bytes([h[2], h[3], h[4], h[5]]);
            if len as usize > MAX_PAYLOAD {
                self.drop_front(HEADER);
                self.skipped = 0;
                return Some(Err(FrameError::TooLarge { len }));
            }
            // 3. Wait for the whole payload, then check it.
            let total = HEADER + len as usize;
            if self.len - at < total {
                return None;
            }
            let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
            if crc32(&self.buf[at + HEADER..at + total]) != crc {
                self.drop_front(1);
                self.skipped = 0;
                return Some(Err(FrameError::Corrupt { len }));
            }
            self.consumed = at + total;
            return Some(Ok(&self.buf[at + HEADER..at + total]));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; MAX_FRAME];
        let n = encode(payload, &mut out).expect("fits");
        out.truncate(n);
        out
    }

    /// Everything the decoder reports, fed `bytes` in `chunk`-sized pieces.
    fn decode_all(bytes: &[u8], chunk: usize) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut d: Decoder = Decoder::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                let n = d.feed(rest);
                rest = &rest[n..];
                while let Some(r) = d.next_frame() {
                    out.push(r.map(<[u8]>::to_vec));
                }
            }
        }
        out
    }

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn frames_come_back_whole_however_the_bytes_are_split() {
        let mut stream = frame(b"one");
        stream.extend(frame(b""));
        stream.extend(frame(&[7u8; 5000]));
        for chunk in [1, 2, 5, 11, 4096, stream.len()] {
            let got = decode_all(&stream, chunk);
            assert_eq!(
                got,
                [
                    Ok(b"one".to_vec()),
                    Ok(Vec::new()),
                    Ok(std::vec![7u8; 5000])
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_buffer_full_of_false_starts_is_crossed_in_one_pass() {
        // 64 KiB of "HF" with bad header checks, then a real frame: once
        // cost one copy of the buffer per dropped byte (seconds under TCG).
        let mut bytes: Vec<u8> = b"HF".iter().copied().cycle().take(MAX_PAYLOAD).collect();
        bytes.extend(frame(b"after"));
        let started = std::time::Instant::now();
        let got = decode_all(&bytes, 4096);
        assert_eq!(
            got,
            [
                Err(FrameError::Garbage { bytes: MAX_PAYLOAD }),
                Ok(b"after".to_vec())
            ]
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn garbage_before_a_frame_is_dropped_and_reported_once() {
        let mut stream = b"HFHF junk \x00\xffHF".to_vec();
        stream.extend(frame(b"after"));
        let got = decode_all(&stream, 3);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(got[0], Err(FrameError::Garbage { bytes }) if bytes == 14));
        assert_eq!(got[1], Ok(b"after".to_vec()));
    }

    #[test]
    fn an_oversized_or_corrupt_frame_is_skipped_and_the_next_one_read() {
        let mut big = [0u8; HEADER];
        big[..2].copy_from_slice(&MAGIC);
        big[2..6].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let check = crc32(&big[..6]) as u16;
        big[6..8].copy_from_slice(&check.to_le_bytes());
        let mut stream = big.to_vec();
        let mut bad = frame(b"payload");
        *bad.last_mut().expect("byte") ^= 1;
        stream.extend(&bad);
        stream.extend(frame(b"good"));
        let got = decode_all(&stream, 7);
        assert_eq!(
            got.first(),
            Some(&Err(FrameError::TooLarge {
                len: MAX_PAYLOAD as u32 + 1
            }))
        );
        assert!(
            got.contains(&Err(FrameError::Corrupt { len: 7 })),
            "{got:?}"
        );
        assert_eq!(got.last(), Some(&Ok(b"good".to_vec())));
    }

    #[test]
    fn a_truncated_frame_does_not_hide_the_next_one_for_long() {
        // A client died after half a frame; the next one's frames follow.
        let mut stream = frame(&[1u8; 100]);
        stream.truncate(60);
        stream.extend(frame(b"next"));
        stream.extend(frame(&[2u8; 200]));
        let got = decode_all(&stream, 13);
        assert!(
            got.contains(&Ok(std::vec![2u8; 200])),
            "the stream is readable again: {got:?}"
        );
        assert!(got
            .iter()
            .all(|r| r.as_ref().map_or(true, |p| p != &[1u8; 100])));
    }

    #[test]
    fn random_noise_between_frames_never_loses_a_later_frame() {
        // xorshift: a fixed, reproducible sequence of noise.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200 {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for i in 0..5 {
                let noise = (rand() % 300) as usize;
                stream.extend((0..noise).map(|_| rand() as u8));
                let payload: Vec<u8> = (0..(rand() % 400)).map(|_| rand() as u8).collect();
                stream.extend(frame(&payload));
                want.push((i, payload));
            }
            let chunk = (rand() % 64) as usize + 1;
            let got: Vec<Vec<u8>> = decode_all(&stream, chunk)
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            // Noise may swallow the frame right after it (a false header
            // whose length covers it), never more than that one.
            let found = want.iter().filter(|(_, p)| got.contains(p)).count();
            assert!(found >= 4, "round {round}: {found} of 5 frames");
            assert!(got.contains(&want[4].1), "round {round}: the last frame");
        }
    }

    #[test]
    fn payloads_too_large_for_a_frame_are_refused() {
        let mut out = std::vec![0u8; MAX_FRAME + 10];
        assert_eq!(
            encode(&std::vec![0u8; MAX_PAYLOAD + 1], &mut out),
            Err(TooLarge {
                len: MAX_PAYLOAD + 1
            })
        );
        assert!(encode(&[0u8; MAX_PAYLOAD], &mut out).is_ok());
    }
}
