//! Tar archives in the POSIX pax format, for `hafen volume export|import`.
//!
//! The writer emits ustar headers, preceded by a pax extended header only
//! when an entry needs one (a long path or link, a large id or size, a
//! sub-second or negative mtime, extended attributes), with fixed bytes for
//! everything that is not the entry's own (no user names, no header
//! mtimes), so the same tree always gives the same archive.
//!
//! The reader takes what other tools write as well: ustar, pax (`x`, and
//! `g` ignored), GNU long names (`L`, `K`) and base-256 numbers. It checks
//! every header's checksum, bounds what it holds in memory, insists on the
//! end-of-archive marker (a backup cut short is refused, not half-restored)
//! and turns every name into a relative path without `..`.

use std::io::{self, Read, Write};

/// Tar's unit.
pub const BLOCK: usize = 512;
/// The largest pax or GNU long-name payload read into memory.
const MAX_EXTENSION: u64 = 1 << 20;
/// The longest path or link accepted.
const MAX_PATH: usize = 4096;
/// The name of the pax headers this writer makes (as GNU tar names them).
const PAX_NAME: &[u8] = b"././@PaxHeader";

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file; its data follows.
    File,
    /// Another name for an earlier entry ([`Entry::link`]).
    HardLink,
    /// A symbolic link to [`Entry::link`].
    Symlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A directory.
    Dir,
    /// A named pipe.
    Fifo,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, `/`-separated, no `.` or `..` components; empty: the root.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: Kind,
    /// Permission bits, with setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Bytes of data ([`Kind::File`] only).
    pub size: u64,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// A symlink's target, or the path a hard link names.
    pub link: Vec<u8>,
    /// A device's major and minor numbers.
    pub device: (u32, u32),
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The path for messages.
    pub fn display(&self) -> String {
        if self.path.is_empty() {
            "./".to_owned()
        } else {
            String::from_utf8_lossy(&self.path).into_owned()
        }
    }
}

/// Writes `value` as zero-padded octal filling `field` but its last byte (a
/// NUL); false when it does not fit.
fn put_octal(field: &mut [u8], value: u64) -> bool {
    let digits = field.len() - 1;
    if digits < 22 && value >> (3 * digits) != 0 {
        return false;
    }
    for (i, byte) in field[..digits].iter_mut().enumerate() {
        let shift = 3 * (digits - 1 - i);
        *byte = b'0' + ((value >> shift) & 7) as u8;
    }
    field[digits] = 0;
    true
}

/// Appends one pax record, `LEN KEY=VALUE\n`, where LEN counts itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A pax time: `SECONDS[.NANOSECONDS]`, exact for times before 1970 too.
fn pax_time((secs, nanos): (i64, u32)) -> String {
    if nanos == 0 {
        secs.to_string()
    } else if secs >= 0 {
        format!("{secs}.{nanos:09}")
    } else {
        // -1.25 s is secs -2, nanos 750_000_000.
        let whole = -(secs + 1);
        format!("-{whole}.{:09}", 1_000_000_000 - nanos)
    }
}

/// Parses [`pax_time`]'s form (any number of fraction digits).
fn parse_pax_time(text: &str) -> Option<(i64, u32)> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let whole: i64 = whole.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = fraction
        .as_bytes()
        .iter()
        .take(9)
        .copied()
        .collect::<Vec<u8>>();
    digits.resize(9, b'0');
    let nanos: u32 = std::str::from_utf8(&digits).ok()?.parse().ok()?;
    Some(match (negative, nanos) {
        (false, _) => (whole, nanos),
        (true, 0) => (-whole, 0),
        (true, n) => (-whole - 1, 1_000_000_000 - n),
    })
}

/// A header block: `name` in the name field (cut at 100 bytes; a pax
/// record carries the whole), the rest from `e` except what `pax` holds.
fn header(
    name: &[u8],
    link: &[u8],
    e: &Entry,
    flag: u8,
    size: u64,
    pax: &mut Vec<u8>,
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let cut = name.len().min(100);
    h[..cut].copy_from_slice(&name[..cut]);
    if name.len() > 100 {
        pax_record(pax, b"path", name);
    }
    put_octal(&mut h[100..108], u64::from(e.mode & 0o7777));
    if !put_octal(&mut h[108..116], u64::from(e.uid)) {
        put_octal(&mut h[108..116], 0);
        pax_record(pax, b"uid", e.uid.to_string().as_bytes());
    }
    if !put_octal(&mut h[116..124], u64::from(e.gid)) {
        put_octal(&mut h[116..124], 0);
        pax_record(pax, b"gid", e.gid.to_string().as_bytes());
    }
    if !put_octal(&mut h[124..136], size) {
        put_octal(&mut h[124..136], 0);
        pax_record(pax, b"size", size.to_string().as_bytes());
    }
    let (secs, nanos) = e.mtime;
    let fits = secs >= 0 && put_octal(&mut h[136..148], secs as u64);
    if !fits || nanos != 0 {
        if !fits {
            put_octal(&mut h[136..148], 0);
        }
        pax_record(pax, b"mtime", pax_time(e.mtime).as_bytes());
    }
    h[156] = flag;
    let cut = link.len().min(100);
    h[157..157 + cut].copy_from_slice(&link[..cut]);
    if link.len() > 100 {
        pax_record(pax, b"linkpath", link);
    }
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    put_octal(&mut h[329..337], u64::from(e.device.0));
    put_octal(&mut h[337..345], u64::from(e.device.1));
    for (name, value) in &e.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        pax_record(pax, &key, value);
    }
    seal(&mut h);
    h
}

/// Fills in the checksum: the sum of the bytes with the field as spaces.
fn seal(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    put_octal(&mut h[148..155], sum);
    h[155] = b' ';
}

/// Writes an archive.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// An archive written to `out`.
    pub fn new(out: W) -> Writer<W> {
        Writer { out }
    }

    /// Writes `e`'s header (and a pax header before it when needed); a
    /// file's data must follow through [`Writer::data`].
    pub fn header(&mut self, e: &Entry) -> io::Result<()> {
        let mut name = b"./".to_vec();
        name.extend_from_slice(&e.path);
        if e.kind == Kind::Dir && !e.path.is_empty() {
            name.push(b'/');
        }
        // A hard link names another entry, written the same way.
        let link = match e.kind {
            Kind::HardLink => [&b"./"[..], &e.link].concat(),
            _ => e.link.clone(),
        };
        let size = if e.kind == Kind::File { e.size } else { 0 };
        let mut pax = Vec::new();
        let block = header(&name, &link, e, e.kind.flag(), size, &mut pax);
        if !pax.is_empty() {
            let meta = Entry {
                path: Vec::new(),
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: (0, 0),
                link: Vec::new(),
                device: (0, 0),
                xattrs: Vec::new(),
            };
            let mut unused = Vec::new();
            let pax_header = header(PAX_NAME, b"", &meta, b'x', pax.len() as u64, &mut unused);
            self.out.write_all(&pax_header)?;
            self.out.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        self.out.write_all(&block)
    }

    /// Copies exactly `size` bytes of file data from `from`: zeros make up
    /// for a file that shrank while it was read, and the rest of one that
    /// grew is left out. Returns the bytes `from` gave, to report either.
    pub fn data(&mut self, from: &mut dyn Read, size: u64) -> io::Result<u64> {
        let copied = io::copy(&mut from.take(size), &mut self.out)?;
        io::copy(&mut io::repeat(0).take(size - copied), &mut self.out)?;
        self.pad(size)?;
        Ok(copied)
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rest = (BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64;
        self.out.write_all(&[0u8; BLOCK][..rest as usize])
    }

    /// Writes the end-of-archive marker and returns the output, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A number field: octal (spaces and NULs around it), or GNU's base-256
/// when the first byte's high bit is set.
fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut value: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text = field.split(|&b| b == 0).next().unwrap_or(&[]);
    let text = std::str::from_utf8(text).ok()?.trim_matches(' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// A NUL-terminated field's bytes.
fn field_bytes(field: &[u8]) -> &[u8] {
    field.split(|&b| b == 0).next().unwrap_or(&[])
}

/// `name` as a relative path with no `.`, `..` or empty components; a
/// leading `/` is dropped, as tar does.
pub fn normalize(name: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(name.len());
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(format!(
                    "{:?} has a \"..\" component, which would leave the volume",
                    String::from_utf8_lossy(name)
                ))
            }
            part => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    Ok(out)
}

/// What a pax or GNU extension header says about the entry after it.
#[derive(Debug, Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads an archive.
#[derive(Debug)]
pub struct Reader<R: Read> {
    input: R,
    /// Bytes consumed so far (for messages).
    offset: u64,
    /// Data of the current entry not read yet, and the padding after it.
    remaining: u64,
    padding: u64,
}

impl<R: Read> Reader<R> {
    /// An archive read from `input`.
    pub fn new(input: R) -> Reader<R> {
        Reader {
            input,
            offset: 0,
            remaining: 0,
            padding: 0,
        }
    }

    /// Bytes of the archive consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, String> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(format!(
                        "the archive ends in the middle of a block at byte {}",
                        self.offset + got as u64
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read the archive: {e}")),
            }
        }
        self.offset += got as u64;
        Ok(true)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), String> {
        let mut block = [0u8; BLOCK];
        while n > 0 {
            let step = n.min(BLOCK as u64) as usize;
            if !self.fill(&mut block[..step])? {
                return Err(self.cut_short());
            }
            n -= step as u64;
        }
        Ok(())
    }

    fn cut_short(&self) -> String {
        format!(
            "the archive ends at byte {} without tar's end-of-archive marker: \
             it is truncated (an interrupted export or copy?)",
            self.offset
        )
    }

    /// An extension header's payload of `size` bytes (and its padding).
    fn extension(&mut self, size: u64) -> Result<Vec<u8>, String> {
        if size > MAX_EXTENSION {
            return Err(format!(
                "an extended header at byte {} is {size} bytes, more than the {MAX_EXTENSION} accepted",
                self.offset
            ));
        }
        let mut data = vec![0u8; size as usize];
        if !self.fill(&mut data)? && size > 0 {
            return Err(self.cut_short());
        }
        self.skip((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64)?;
        Ok(data)
    }

    /// The next entry; `None` at the end-of-archive marker. Its data (for a
    /// file) is read with [`Reader::read_data`] before the next call, or
    /// skipped.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, String> {
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        let mut pending = Pending::default();
        let mut h = [0u8; BLOCK];
        loop {
            let at = self.offset;
            if !self.fill(&mut h)? {
                return Err(self.cut_short());
            }
            if h.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            let stored = parse_number(&h[148..156]);
            let unsigned: u64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            let signed: i64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        i64::from(b as i8)
                    }
                })
                .sum();
            if stored != Some(unsigned) && stored.map(|s| s as i64) != Some(signed) {
                return Err(format!(
                    "the header at byte {at} has a wrong checksum: this is not a tar archive, or it is damaged"
                ));
            }
            let number = |range: std::ops::Range<usize>, what: &str| {
                parse_number(&h[range])
                    .ok_or_else(|| format!("the header at byte {at} has a malformed {what} field"))
            };
            let size = pending.size.map_or_else(|| number(124..136, "size"), Ok)?;
            let flag = h[156];
            match flag {
                b'x' => {
                    let data = self.extension(size)?;
                    parse_pax(&data, &mut pending)
                        .map_err(|e| format!("the pax header at byte {at}: {e}"))?;
                    continue;
                }
                b'g' => {
                    self.extension(size)?;
                    continue;
                }
                b'L' | b'K' => {
                    let data = self.extension(size)?;
                    let name = field_bytes(&data).to_vec();
                    if flag == b'L' {
                        pending.path = Some(name);
                    } else {
                        pending.link = Some(name);
                    }
                    continue;
                }
                _ => {}
            }
            let name = match pending.path.take() {
                Some(path) => path,
                None => {
                    let mut name = Vec::new();
                    let prefix = field_bytes(&h[345..500]);
                    if &h[257..263] == b"ustar\0" && !prefix.is_empty() {
                        name.extend_from_slice(prefix);
                        name.push(b'/');
                    }
                    name.extend_from_slice(field_bytes(&h[..100]));
                    name
                }
            };
            let shown = String::from_utf8_lossy(&name).into_owned();
            let kind = match flag {
                b'0' | 0 | b'7' => Kind::File,
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                other => {
                    return Err(format!(
                        "entry {shown:?} (byte {at}) has type {:?}, which volumes cannot hold \
                         (GNU sparse or multi-volume archives are not supported)",
                        other as char
                    ))
                }
            };
            let link = pending
                .link
                .take()
                .unwrap_or_else(|| field_bytes(&h[157..257]).to_vec());
            if name.len() > MAX_PATH || link.len() > MAX_PATH {
                return Err(format!(
                    "entry {:?} (byte {at}) has a path or link longer than {MAX_PATH} bytes",
                    &shown[..shown.len().min(64)]
                ));
            }
            let path = normalize(&name).map_err(|e| format!("entry {e}"))?;
            let link = match kind {
                Kind::HardLink => normalize(&link)
                    .map_err(|e| format!("entry {shown:?} is a hard link to {e}"))?,
                _ => link,
            };
            let as_id = |value: u64, what: &str| {
                u32::try_from(value)
                    .map_err(|_| format!("entry {shown:?}: {what} {value} is out of range"))
            };
            let uid = match pending.uid {
                Some(uid) => uid,
                None => as_id(number(108..116, "uid")?, "uid")?,
            };
            let gid = match pending.gid {
                Some(gid) => gid,
                None => as_id(number(116..124, "gid")?, "gid")?,
            };
            let mtime = match pending.mtime {
                Some(t) => t,
                None => (number(136..148, "mtime")? as i64, 0),
            };
            let device = match kind {
                Kind::Char | Kind::Block => (
                    as_id(number(329..337, "devmajor")?, "device major")?,
                    as_id(number(337..345, "devminor")?, "device minor")?,
                ),
                _ => (0, 0),
            };
            self.remaining = size;
            self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
            let mut xattrs = std::mem::take(&mut pending.xattrs);
            xattrs.sort();
            return Ok(Some(Entry {
                path,
                kind,
                mode: (number(100..108, "mode")? & 0o7777) as u32,
                uid,
                gid,
                size: if kind == Kind::File { size } else { 0 },
                mtime,
                link,
                device,
                xattrs,
            }));
        }
    }

    /// Reads the current entry's data.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        loop {
            match self.input.read(&mut buf[..want]) {
                Ok(0) => return Err(self.cut_short()),
                Ok(n) => {
                    self.remaining -= n as u64;
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read the archive: {e}")),
            }
        }
    }
}

/// Reads the current entry's data through [`Read`] (errors as
/// [`io::ErrorKind::InvalidData`]).
impl<R: Read> Read for Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_data(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// Takes the records of a pax header into `pending`.
fn parse_pax(mut data: &[u8], pending: &mut Pending) -> Result<(), String> {
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a record has no length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or("a record's length is not a number")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("a record's length does not match its text".into());
        }
        let record = &data[space + 1..len - 1];
        data = &data[len..];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a record has no '='")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let text = || std::str::from_utf8(value).unwrap_or("");
        let number = |what: &str| {
            text()
                .parse::<u64>()
                .map_err(|_| format!("{what} {:?} is not a number", text()))
        };
        let id = |what: &str| {
            number(what)
                .and_then(|n| u32::try_from(n).map_err(|_| format!("{what} {n} is out of range")))
        };
        match key {
            b"path" => pending.path = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" => pending.size = Some(number("size")?),
            b"uid" => pending.uid = Some(id("uid")?),
            b"gid" => pending.gid = Some(id("gid")?),
            b"mtime" => {
                pending.mtime = Some(
                    parse_pax_time(text())
                        .ok_or_else(|| format!("mtime {:?} is malformed", text()))?,
                )
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    pending.xattrs.push((name.to_vec(), value.to_vec()));
                }
                // Other keywords (atime, ctime, uname, charset...) change nothing here.
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            size: 0,
            mtime: (1_700_000_000, 0),
            link: Vec::new(),
            device: (0, 0),
            xattrs: Vec::new(),
        }
    }

    fn archive(entries: &[(Entry, &[u8])]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        for (e, data) in entries {
            w.header(e).expect("test step");
            if e.kind == Kind::File {
                w.data(&mut &data[..], e.size).expect("test step");
            }
        }
        w.finish().expect("test step")
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, String> {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut data = Vec::new();
            r.read_to_end(&mut data).map_err(|e| e.to_string())?;
            out.push((e, data));
        }
        Ok(out)
    }

    #[test]
    fn every_kind_and_extension_survives_a_round_trip() {
        let mut file = entry("dir/file", Kind::File);
        file.size = 5;
        file.mtime = (1_700_000_000, 123_456_789);
        file.xattrs = vec![(b"user.tag".to_vec(), b"\x00bin\xffary".to_vec())];
        let mut long = entry(&format!("dir/{}", "n".repeat(150)), Kind::File);
        long.size = 600;
        long.uid = 4_000_000_000;
        long.gid = 3_000_000;
        let mut old = entry("old", Kind::Symlink);
        old.link = "t".repeat(200).into_bytes();
        old.mtime = (-3, 250_000_000);
        let mut hard = entry("hard", Kind::HardLink);
        hard.link = b"dir/file".to_vec();
        let mut dev = entry("null", Kind::Char);
        dev.device = (1, 3);
        let mut root = entry("", Kind::Dir);
        root.mode = 0o1777;
        let big = vec![7u8; 600];
        let input: Vec<(Entry, &[u8])> = vec![
            (root, b""),
            (entry("dir", Kind::Dir), b""),
            (file, b"hello"),
            (long, &big),
            (old, b""),
            (hard, b""),
            (dev, b""),
            (entry("fifo", Kind::Fifo), b""),
        ];
        let bytes = archive(&input);
        assert_eq!(bytes.len() % BLOCK, 0);
        let back = read_all(&bytes).expect("reads back");
        assert_eq!(back.len(), input.len());
        for ((want, data), (got, got_data)) in input.iter().zip(&back) {
            assert_eq!(want, got);
            assert_eq!(*data, &got_data[..]);
        }
        // The same entries give the same bytes.
        assert_eq!(bytes, archive(&input));
    }

    #[test]
    fn plain_entries_need_no_pax_header_and_names_start_with_dot_slash() {
        let bytes = archive(&[(entry("a", Kind::Dir), b"")]);
        assert_eq!(&bytes[..4], b"./a/");
        assert_eq!(bytes[156], b'5');
        assert_eq!(bytes.len(), 3 * BLOCK);
    }

    #[test]
    fn pax_records_count_their_own_length() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", &[b'x'; 93]);
        // 4 + 93 + 3 = 100 plus "100" is 103, which has three digits too.
        assert!(
            out.starts_with(b"103 path="),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(out.len(), 103);
        let mut out = Vec::new();
        pax_record(&mut out, b"a", b"b");
        assert_eq!(out, b"6 a=b\n");
    }

    #[test]
    fn times_before_1970_with_fractions_are_exact() {
        for t in [
            (0, 0),
            (5, 1),
            (-1, 0),
            (-2, 750_000_000),
            (1_700_000_000, 999_999_999),
        ] {
            assert_eq!(parse_pax_time(&pax_time(t)), Some(t), "{t:?}");
        }
        assert_eq!(parse_pax_time("1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time("x"), None);
    }

    #[test]
    fn names_are_made_relative_and_dot_dot_is_refused() {
        assert_eq!(
            normalize(b"/etc//passwd").expect("test step"),
            b"etc/passwd"
        );
        assert_eq!(normalize(b"./a/./b/").expect("test step"), b"a/b");
        assert_eq!(normalize(b"./").expect("test step"), b"");
        for bad in [&b"../x"[..], b"a/../../x", b"/.."] {
            let e = normalize(bad).expect_err("..");
            assert!(e.contains("\"..\""), "{e}");
        }
    }

    #[test]
    fn a_truncated_archive_is_refused_naming_where_it_ends() {
        let mut f = entry("f", Kind::File);
        f.size = 2000;
        let bytes = archive(&[(f, &[1u8; 2000])]);
        for cut in [BLOCK, BLOCK + 700, 5 * BLOCK, bytes.len() - 2 * BLOCK] {
            let e = read_all(&bytes[..cut]).expect_err("truncated");
            assert!(
                e.contains("truncated") || e.contains("middle"),
                "{cut}: {e}"
            );
        }
        // One zero block is enough of an end.
        assert!(read_all(&bytes[..bytes.len() - BLOCK]).is_ok());
    }

    #[test]
    fn a_damaged_header_or_garbage_is_not_an_archive() {
        let mut bytes = archive(&[(entry("a", Kind::Dir), b"")]);
        bytes[1] ^= 0x20;
        let e = read_all(&bytes).expect_err("checksum");
        assert!(e.contains("checksum") && e.contains("byte 0"), "{e}");
        let e = read_all(&[b'x'; 2048]).expect_err("garbage");
        assert!(e.contains("not a tar archive"), "{e}");
    }

    #[test]
    fn hostile_names_and_links_are_refused() {
        let mut up = entry("../../etc/passwd", Kind::File);
        up.size = 0;
        let e = read_all(&archive(&[(up, b"")])).expect_err("..");
        assert!(e.contains("etc/passwd") && e.contains(".."), "{e}");
        let mut hard = entry("h", Kind::HardLink);
        hard.link = b"../outside".to_vec();
        let e = read_all(&archive(&[(hard, b"")])).expect_err("hard link");
        assert!(e.contains("hard link"), "{e}");
        // A symlink may point anywhere: it is never followed out of the volume.
        let mut sym = entry("s", Kind::Symlink);
        sym.link = b"/etc".to_vec();
        assert!(read_all(&archive(&[(sym, b"")])).is_ok());
    }

    #[test]
    fn huge_extension_headers_are_refused_before_reading_them() {
        let mut bytes = archive(&[(entry("a", Kind::Dir), b"")]);
        let mut h = [0u8; BLOCK];
        h[..3].copy_from_slice(b"pax");
        put_octal(&mut h[100..108], 0o644);
        put_octal(&mut h[124..136], 1 << 30);
        h[156] = b'x';
        h[257..263].copy_from_slice(b"ustar\0");
        seal(&mut h);
        bytes.splice(0..0, h);
        let e = read_all(&bytes).expect_err("huge");
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn gnu_long_names_and_base_256_numbers_are_read() {
        let name = "d/".to_owned() + &"x".repeat(300);
        let mut long = [0u8; BLOCK];
        long[..13].copy_from_slice(b"././@LongLink");
        put_octal(&mut long[100..108], 0o644);
        put_octal(&mut long[124..136], name.len() as u64 + 1);
        long[156] = b'L';
        long[257..265].copy_from_slice(b"ustar  \0");
        seal(&mut long);
        let mut bytes = long.to_vec();
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.resize(2 * BLOCK, 0);
        let mut h = [0u8; BLOCK];
        h[..5].copy_from_slice(b"short");
        put_octal(&mut h[100..108], 0o600);
        // uid 2^33 in base-256.
        h[108] = 0x80;
        h[111] = 0x02;
        put_octal(&mut h[116..124], 0);
        put_octal(&mut h[124..136], 0);
        put_octal(&mut h[136..148], 1);
        h[156] = b'0';
        seal(&mut h);
        bytes.extend_from_slice(&h);
        bytes.extend_from_slice(&[0u8; 2 * BLOCK]);
        let e = read_all(&bytes).expect_err("uid too large for a u32");
        assert!(e.contains("uid"), "{e}");
        h[111] = 0;
        h[115] = 42;
        seal(&mut h);
        bytes[2 * BLOCK..3 * BLOCK].copy_from_slice(&h);
        let back = read_all(&bytes).expect("GNU forms");
        assert_eq!(back[0].0.path, name.as_bytes());
        assert_eq!((back[0].0.uid, back[0].0.mode), (42, 0o600));
    }
}
