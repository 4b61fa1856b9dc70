//! A layer tar with fixed bytes: ustar headers filled field by field, PAX
//! records only where ustar cannot say it (long names, xattrs, huge ids or
//! sizes), no user or group names, no padding beyond the two closing
//! blocks. The same entries always make the same archive.

/// The kind of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryType {
    Dir,
    File,
    Symlink,
    HardLink,
    Char,
    Block,
    Fifo,
}

/// One entry to write.
#[derive(Debug)]
pub(crate) struct TarEntry<'a> {
    /// Relative path; directories end with `/`.
    pub path: &'a str,
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    /// Symlink target or hard link target path.
    pub link: Option<&'a str>,
    /// Major and minor device numbers.
    pub device: (u32, u32),
    /// Extended attributes, sorted by name.
    pub xattrs: &'a [(String, Vec<u8>)],
    /// File content.
    pub data: &'a [u8],
}

/// The largest value an octal ustar field of `width` bytes holds.
fn octal_max(width: u32) -> u64 {
    (1u64 << (3 * (width - 1))) - 1
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Splits a path into ustar's prefix (155 bytes) and name (100 bytes) at
/// a `/`, when it fits.
fn ustar_split(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    // A directory's trailing slash stays with the name part.
    let body = path.strip_suffix('/').unwrap_or(path);
    for (i, _) in body.match_indices('/') {
        let (prefix, name) = (&path[..i], &path[i + 1..]);
        if prefix.len() <= 155 && name.len() <= 100 && !name.is_empty() {
            return Some((prefix, name));
        }
    }
    None
}

fn write_field(field: &mut [u8], text: &[u8]) {
    field.fill(0);
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text[..n]);
}

/// Writes a numeric field in octal, zero-padded and NUL-terminated (the
/// caller makes sure it fits; [`numeric_field`] chooses).
fn octal_field(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    let start = text.len() - width.min(text.len());
    field[..width].copy_from_slice(&text.as_bytes()[start..]);
    field[width] = 0;
}

/// Writes a numeric field in GNU's base-256 form (for values octal cannot
/// hold; PAX records say the same for readers that prefer them).
fn binary_field(field: &mut [u8], value: u64) {
    field.fill(0);
    let bytes = value.to_be_bytes();
    let n = field.len();
    field[n - 8..].copy_from_slice(&bytes);
    field[0] |= 0x80;
}

fn numeric_field(field: &mut [u8], value: u64) {
    if value <= octal_max(field.len() as u32) {
        octal_field(field, value);
    } else {
        binary_field(field, value);
    }
}

/// A 512-byte ustar header block.
struct Block([u8; 512]);

impl Block {
    fn new() -> Block {
        let mut b = Block([0; 512]);
        b.0[257..263].copy_from_slice(b"ustar\0");
        b.0[263..265].copy_from_slice(b"00");
        b
    }

    fn finish(mut self) -> [u8; 512] {
        self.0[148..156].fill(b' ');
        let sum: u64 = self.0.iter().map(|&b| u64::from(b)).sum();
        octal_field(&mut self.0[148..155], sum);
        self.0[155] = b' ';
        self.0
    }
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Appends one entry (with a PAX header first when needed).
pub(crate) fn write_entry(out: &mut Vec<u8>, e: &TarEntry<'_>) {
    let size = if e.kind == EntryType::File {
        e.data.len() as u64
    } else {
        0
    };
    let mut pax = Vec::new();
    let split = ustar_split(e.path);
    if split.is_none() {
        pax_record(&mut pax, "path", e.path.as_bytes());
    }
    if let Some(link) = e.link {
        if link.len() > 100 {
            pax_record(&mut pax, "linkpath", link.as_bytes());
        }
    }
    if u64::from(e.uid) > octal_max(8) {
        pax_record(&mut pax, "uid", e.uid.to_string().as_bytes());
    }
    if u64::from(e.gid) > octal_max(8) {
        pax_record(&mut pax, "gid", e.gid.to_string().as_bytes());
    }
    if size > octal_max(12) {
        pax_record(&mut pax, "size", size.to_string().as_bytes());
    }
    for (name, value) in e.xattrs {
        pax_record(&mut pax, &format!("SCHILY.xattr.{name}"), value);
    }
    if !pax.is_empty() {
        // Named like Go's archive/tar names them: DIR/PaxHeaders.0/NAME.
        let trimmed = e.path.trim_end_matches('/');
        let (dir, name) = match trimmed.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), trimmed),
        };
        let pax_name = format!("{dir}PaxHeaders.0/{name}");
        let mut h = Block::new();
        write_field(&mut h.0[0..100], pax_name.as_bytes());
        octal_field(&mut h.0[100..108], 0o644);
        octal_field(&mut h.0[108..116], 0);
        octal_field(&mut h.0[116..124], 0);
        numeric_field(&mut h.0[124..136], pax.len() as u64);
        octal_field(&mut h.0[136..148], 0);
        h.0[156] = b'x';
        out.extend_from_slice(&h.finish());
        out.extend_from_slice(&pax);
        pad(out);
    }
    let mut h = Block::new();
    let (prefix, name) = split.unwrap_or(("", ""));
    if split.is_some() {
        write_field(&mut h.0[0..100], name.as_bytes());
        write_field(&mut h.0[345..500], prefix.as_bytes());
    } else {
        // Readers that ignore PAX see a truncated name.
        write_field(&mut h.0[0..100], e.path.as_bytes());
    }
    octal_field(&mut h.0[100..108], u64::from(e.mode & 0o7777));
    numeric_field(&mut h.0[108..116], u64::from(e.uid));
    numeric_field(&mut h.0[116..124], u64::from(e.gid));
    numeric_field(&mut h.0[124..136], size);
    numeric_field(&mut h.0[136..148], e.mtime);
    h.0[156] = match e.kind {
        EntryType::File => b'0',
        EntryType::HardLink => b'1',
        EntryType::Symlink => b'2',
        EntryType::Char => b'3',
        EntryType::Block => b'4',
        EntryType::Dir => b'5',
        EntryType::Fifo => b'6',
    };
    if let Some(link) = e.link {
        write_field(&mut h.0[157..257], link.as_bytes());
    }
    if matches!(e.kind, EntryType::Char | EntryType::Block) {
        numeric_field(&mut h.0[329..337], u64::from(e.device.0));
        numeric_field(&mut h.0[337..345], u64::from(e.device.1));
    }
    out.extend_from_slice(&h.finish());
    if size > 0 {
        out.extend_from_slice(e.data);
        pad(out);
    }
}

/// Ends an archive: two zero blocks.
pub(crate) fn finish(out: &mut Vec<u8>) {
    out.resize(out.len() + 1024, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for (key, value) in [
            ("path", "a".repeat(93)),
            ("path", "a".repeat(94)),
            ("x", String::new()),
        ] {
            let mut out = Vec::new();
            pax_record(&mut out, key, value.as_bytes());
            let text = String::from_utf8(out.clone()).expect("utf-8");
            let (len, _) = text.split_once(' ').expect("length");
            assert_eq!(len.parse::<usize>().expect("number"), out.len(), "{text:?}");
        }
    }

    #[test]
    fn long_paths_split_or_go_to_pax() {
        let deep = format!("{}/{}", "d".repeat(150), "f".repeat(99));
        assert_eq!(ustar_split(&deep), Some((&deep[..150], &deep[151..])));
        assert_eq!(ustar_split(&"x".repeat(101)), None);
        let dir = format!("{}/{}/", "d".repeat(120), "e".repeat(99));
        assert_eq!(ustar_split(&dir).map(|(_, n)| n.len()), Some(100));
    }

    #[test]
    fn big_numbers_use_base_256_and_read_back() {
        let mut field = [0u8; 8];
        numeric_field(&mut field, 3_000_000_000);
        let mut h = tar::Header::new_ustar();
        h.as_mut_bytes()[108..116].copy_from_slice(&field);
        assert_eq!(h.uid().expect("uid"), 3_000_000_000);
    }
}
