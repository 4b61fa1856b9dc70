//! The newc cpio format the kernel unpacks into its initramfs, written
//! deterministically: the caller supplies sorted entries, every mtime is 0,
//! and inode numbers count up from 1 in write order.

use std::io::{self, Write};

/// File type bits (as in `st_mode`).
pub mod kind {
    /// The bits of a mode that give the kind.
    pub const MASK: u32 = 0o170000;
    /// Directory.
    pub const DIR: u32 = 0o040000;
    /// Regular file.
    pub const FILE: u32 = 0o100000;
    /// Symbolic link.
    pub const SYMLINK: u32 = 0o120000;
    /// Character device.
    pub const CHAR: u32 = 0o020000;
    /// Block device.
    pub const BLOCK: u32 = 0o060000;
    /// Named pipe.
    pub const FIFO: u32 = 0o010000;
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Path without a leading `/`.
    pub path: &'a str,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count (more than one for hard links).
    pub nlink: u32,
    /// Device numbers, for device nodes.
    pub rdev: (u32, u32),
    /// Contents (file data, or a symlink's target).
    pub data: &'a [u8],
    /// Inode; hard links share one. 0 assigns a fresh number.
    pub ino: u32,
}

/// Writes newc entries to `W`.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> Writer<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> Writer<W> {
        // Inode numbers below this are left for callers' hard-link groups.
        Writer {
            out,
            next_ino: 1 << 24,
            written: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    /// Appends one entry.
    pub fn entry(&mut self, e: &Entry<'_>) -> io::Result<()> {
        let ino = if e.ino == 0 {
            self.next_ino += 1;
            self.next_ino
        } else {
            e.ino
        };
        let name_size = e.path.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino,
            e.mode,
            e.uid,
            e.gid,
            e.nlink,
            0, // mtime: fixed, for reproducible images
            e.data.len(),
            0,
            0,
            e.rdev.0,
            e.rdev.1,
            name_size,
            0
        );
        self.put(header.as_bytes())?;
        self.put(e.path.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(e.data)?;
        self.pad()
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(&Entry {
            path: "TRAILER!!!",
            mode: 0,
            uid: 0,
            gid: 0,
            nlink: 1,
            rdev: (0, 0),
            data: b"",
            ino: 0,
        })?;
        Ok(self.out)
    }
}

/// The kernel's "legacy" LZ4 framing for an initramfs: a magic number,
/// then chunks of at most 8 MiB, each its compressed size (u32, little
/// endian) and one LZ4 block. The guest decompresses it several times faster
/// than gzip, which under emulation is a large part of boot time.
pub fn lz4_legacy(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 16);
    out.extend_from_slice(&LZ4_LEGACY_MAGIC.to_le_bytes());
    for chunk in data.chunks(LZ4_LEGACY_CHUNK) {
        let block = lz4_flex::block::compress(chunk);
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        out.extend_from_slice(&block);
    }
    out
}

const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
const LZ4_LEGACY_CHUNK: usize = 8 << 20;

/// Undoes [`lz4_legacy`] (for tests and inspection).
pub fn unlz4_legacy(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let word = |d: &[u8]| {
        d.get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if word(data) != Some(LZ4_LEGACY_MAGIC) {
        return Err("not a legacy LZ4 stream".into());
    }
    data = &data[4..];
    let mut out = Vec::new();
    while let Some(size) = word(data) {
        let block = data
            .get(4..4 + size as usize)
            .ok_or("truncated LZ4 block")?;
        out.extend(
            lz4_flex::block::decompress(block, LZ4_LEGACY_CHUNK).map_err(|e| e.to_string())?,
        );
        data = &data[4 + size as usize..];
    }
    Ok(out)
}

/// A parsed archive member (for tests and inspection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Path.
    pub path: String,
    /// Inode.
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Device numbers.
    pub rdev: (u32, u32),
    /// Contents.
    pub data: Vec<u8>,
}

/// Parses a newc archive up to its trailer.
pub fn parse(mut bytes: &[u8]) -> Result<Vec<Parsed>, String> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    let align = |n: usize| n.div_ceil(4) * 4;
    loop {
        let header = bytes.get(..110).ok_or("truncated header")?;
        if &header[..6] != b"070701" {
            return Err(format!("bad magic at offset {offset}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let s = std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .map_err(|_| "non-ASCII header")?;
            u32::from_str_radix(s, 16).map_err(|_| format!("bad header field {s:?}"))
        };
        let (ino, mode, uid, gid, nlink) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let (size, rmaj, rmin, namesize) = (
            field(6)? as usize,
            field(9)?,
            field(10)?,
            field(11)? as usize,
        );
        let name_end = 110 + namesize;
        let name = bytes.get(110..name_end - 1).ok_or("truncated name")?;
        let path = String::from_utf8_lossy(name).into_owned();
        let data_start = align(offset + name_end) - offset;
        let data = bytes
            .get(data_start..data_start + size)
            .ok_or("truncated data")?
            .to_vec();
        let next = align(offset + data_start + size) - offset;
        if path == "TRAILER!!!" {
            return Ok(out);
        }
        out.push(Parsed {
            path,
            ino,
            mode,
            uid,
            gid,
            nlink,
            rdev: (rmaj, rmin),
            data,
        });
        bytes = bytes.get(next..).ok_or("truncated padding")?;
        offset += next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_entries_the_parser_reads_back_with_alignment() {
        let mut w = Writer::new(Vec::new());
        let entries = [
            Entry {
                path: "dev",
                mode: kind::DIR | 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                rdev: (0, 0),
                data: b"",
                ino: 0,
            },
            Entry {
                path: "dev/console",
                mode: kind::CHAR | 0o600,
                uid: 0,
                gid: 0,
                nlink: 1,
                rdev: (5, 1),
                data: b"",
                ino: 0,
            },
            Entry {
                path: "init",
                mode: kind::FILE | 0o755,
                uid: 0,
                gid: 0,
                nlink: 1,
                rdev: (0, 0),
                data: b"abcde",
                ino: 0,
            },
            Entry {
                path: "sh",
                mode: kind::SYMLINK | 0o777,
                uid: 0,
                gid: 0,
                nlink: 1,
                rdev: (0, 0),
                data: b"init",
                ino: 0,
            },
        ];
        for e in &entries {
            w.entry(e).expect("write");
        }
        let bytes = w.finish().expect("finish");
        assert_eq!(bytes.len() % 4, 0);
        let parsed = parse(&bytes).expect("parses");
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed[1].rdev, (5, 1));
        assert_eq!(parsed[2].data, b"abcde");
        assert_eq!(parsed[3].data, b"init");
        assert!(parsed.windows(2).all(|w| w[0].ino < w[1].ino));
    }

    #[test]
    fn lz4_legacy_round_trips_across_chunks() {
        let data: Vec<u8> = (0..(9 << 20)).map(|i: u32| (i % 251) as u8).collect();
        let packed = lz4_legacy(&data);
        assert_eq!(
            &packed[..4],
            &[0x02, 0x21, 0x4c, 0x18],
            "the magic the kernel looks for"
        );
        assert!(packed.len() < data.len() / 4);
        assert_eq!(unlz4_legacy(&packed).expect("unpacks"), data);
    }

    #[test]
    fn identical_input_gives_identical_bytes() {
        let write = || {
            let mut w = Writer::new(Vec::new());
            w.entry(&Entry {
                path: "a",
                mode: kind::FILE | 0o644,
                uid: 1,
                gid: 2,
                nlink: 1,
                rdev: (0, 0),
                data: b"x",
                ino: 0,
            })
            .expect("w");
            w.finish().expect("finish")
        };
        assert_eq!(write(), write());
    }
}
