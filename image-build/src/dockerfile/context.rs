//! The build context: the directory COPY and ADD read from, seen through
//! its `.dockerignore`.
//!
//! Sources are resolved inside the context only: a source path that
//! climbs out of it (`../x`) is refused (Docker would quietly read `x`
//! instead), and symbolic links are followed inside the context (an
//! absolute target counts from the context's root) and refused when they
//! lead out of it. Walking a directory never follows links: they are
//! copied as links.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::expand::CopyStep;
use super::ignore::IgnoreRules;
use super::pattern::{clean, has_wildcard, Glob, IgnorePattern};
use super::ErrorKind;

/// What a context entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link and its target.
    Symlink(String),
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
    /// A character device.
    Char,
    /// A block device.
    Block,
}

/// A file of the context and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its path, `/`-separated, relative to what was selected (a copied
    /// directory's entries) or to the context root.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (no type bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (files).
    pub size: u64,
    /// Device number (devices).
    pub rdev: u64,
    /// Device and inode: entries with equal pairs are hard links.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Link count.
    pub nlink: u64,
    /// Modification time, seconds and nanoseconds (informational: a cache
    /// key must not use it).
    pub mtime: (i64, i64),
}

impl Entry {
    fn from_metadata(path: String, full: &Path, meta: &fs::Metadata) -> Result<Entry, ErrorKind> {
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            let target = fs::read_link(full).map_err(|source| ErrorKind::Io {
                path: full.to_owned(),
                source,
            })?;
            EntryKind::Symlink(target.to_string_lossy().into_owned())
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_socket() {
            EntryKind::Socket
        } else if ft.is_char_device() {
            EntryKind::Char
        } else {
            EntryKind::Block
        };
        Ok(Entry {
            path,
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: if ft.is_file() { meta.size() } else { 0 },
            rdev: meta.rdev(),
            dev: meta.dev(),
            ino: meta.ino(),
            nlink: meta.nlink(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        })
    }
}

/// The archive formats ADD recognises by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// An uncompressed tar.
    Tar,
    /// A gzip-compressed tar.
    TarGzip,
    /// A zstd-compressed tar.
    TarZstd,
}

/// One match of a COPY or ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The path the source names (relative to the context), before links
    /// were followed: its last name is the name the copy gets.
    pub path: String,
    /// The real path inside the context, after links were followed.
    pub real: String,
    /// The real file's metadata (its `path` is `real`).
    pub entry: Entry,
    /// For a directory: everything in it that is copied, paths relative
    /// to the directory, parents before children, sorted.
    pub tree: Vec<Entry>,
    /// ADD: the file is a local archive to unpack.
    pub archive: Option<ArchiveKind>,
}

/// What one source of a COPY or ADD selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// The source as expanded.
    pub source: String,
    /// What it matched (one entry unless it is a wildcard).
    pub matches: Vec<Matched>,
}

/// A build context directory and its ignore rules.
#[derive(Debug, Clone)]
pub struct Context {
    root: PathBuf,
    ignore: IgnoreRules,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ErrorKind + '_ {
    move |source| ErrorKind::Io {
        path: path.to_owned(),
        source,
    }
}

fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_owned()
    } else {
        format!("{base}/{name}")
    }
}

/// Why a path could not be resolved.
enum Unresolved {
    Missing { at: String },
    Ignored { at: String },
    Outside { link: String },
    NotDir { at: String },
    Io(ErrorKind),
}

/// Links followed before resolution gives up (Linux's limit).
const MAX_LINKS: usize = 40;

impl Context {
    /// The context at `root` with `ignore`.
    pub fn new(root: &Path, ignore: IgnoreRules) -> Result<Context, ErrorKind> {
        let meta = fs::metadata(root).map_err(io(root))?;
        if !meta.is_dir() {
            return Err(ErrorKind::Io {
                path: root.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    "the build context must be a directory",
                ),
            });
        }
        Ok(Context {
            root: root.to_owned(),
            ignore,
        })
    }

    /// The context directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ignore rules.
    pub fn ignore(&self) -> &IgnoreRules {
        &self.ignore
    }

    fn full(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// Follows `rel` inside the context: every symbolic link on the way
    /// (the last one too when `follow_last`). Returns the real relative path.
    fn resolve(&self, rel: &str, follow_last: bool) -> Result<String, Unresolved> {
        let mut todo: Vec<String> = rel
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .rev()
            .map(str::to_owned)
            .collect();
        let mut real: Vec<String> = Vec::new();
        let mut links = 0;
        // The link whose target is being followed, for the error.
        let mut last_link = rel.to_owned();
        while let Some(name) = todo.pop() {
            if name == ".." {
                // A `..` above the context's root leaves it.
                if real.pop().is_none() {
                    return Err(Unresolved::Outside { link: last_link });
                }
                continue;
            }
            real.push(name);
            let here = real.join("/");
            let full = self.full(&here);
            let meta = match fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Unresolved::Missing { at: here })
                }
                Err(e) if e.raw_os_error() == Some(20) => {
                    // ENOTDIR: a file where a directory was expected.
                    return Err(Unresolved::NotDir { at: here });
                }
                Err(source) => return Err(Unresolved::Io(ErrorKind::Io { path: full, source })),
            };
            let last = todo.is_empty();
            if meta.file_type().is_symlink() && (!last || follow_last) {
                if self.ignore.excluded(&here) {
                    return Err(Unresolved::Ignored { at: here });
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(Unresolved::Io(ErrorKind::Io {
                        path: full,
                        source: std::io::Error::other("too many levels of symbolic links"),
                    }));
                }
                let target = fs::read_link(&full).map_err(|source| {
                    Unresolved::Io(ErrorKind::Io {
                        path: full.clone(),
                        source,
                    })
                })?;
                let target = target.to_string_lossy().into_owned();
                real.pop();
                if target.starts_with('/') {
                    real.clear();
                }
                for c in target
                    .split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .rev()
                {
                    todo.push(c.to_owned());
                }
                last_link = here;
            } else if !last && !meta.is_dir() {
                return Err(Unresolved::NotDir { at: here });
            }
        }
        Ok(real.join("/"))
    }

    /// The entries of a directory (real relative path) that the ignore
    /// rules keep, with their metadata, sorted by name.
    fn list(&self, dir: &str) -> Result<Vec<(String, fs::Metadata)>, ErrorKind> {
        let full = self.full(dir);
        let mut out = Vec::new();
        for item in fs::read_dir(&full).map_err(io(&full))? {
            let item = item.map_err(io(&full))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(item.path()).map_err(io(&item.path()))?;
            out.push((name, meta));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Walks the directory at `dir` (real, relative to the context):
    /// entries relative to it, parents first. Ignored entries are left out
    /// (an ignored directory is still entered when exceptions may keep
    /// something in it); so are those `excludes` match.
    fn walk_dir(&self, dir: &str, excludes: &[IgnorePattern]) -> Result<Vec<Entry>, ErrorKind> {
        let mut out = Vec::new();
        self.walk_into(dir, "", excludes, &mut out)?;
        Ok(out)
    }

    fn walk_into(
        &self,
        base: &str,
        rel: &str,
        excludes: &[IgnorePattern],
        out: &mut Vec<Entry>,
    ) -> Result<bool, ErrorKind> {
        let mut any = false;
        for (name, meta) in self.list(&join(base, rel))? {
            let inner = join(rel, &name);
            let ctx_path = join(base, &inner);
            if excludes.iter().any(|p| p.matches_or_parent(&inner)) {
                continue;
            }
            let ignored = self.ignore.excluded(&ctx_path);
            if ignored && !(meta.is_dir() && self.ignore.has_exceptions()) {
                continue;
            }
            let entry = Entry::from_metadata(inner.clone(), &self.full(&ctx_path), &meta)?;
            let at = out.len();
            out.push(entry);
            let kept_inside = if meta.is_dir() {
                self.walk_into(base, &inner, excludes, out)?
            } else {
                false
            };
            if ignored && !kept_inside {
                // Only there for what the exceptions keep inside it.
                out.truncate(at);
                continue;
            }
            any = true;
        }
        Ok(any)
    }

    /// Every file the ignore rules keep, relative to the context root.
    pub fn walk(&self) -> Result<Vec<Entry>, ErrorKind> {
        self.walk_dir("", &[])
    }

    /// Selects the files of a COPY or ADD from the context (a step whose
    /// `from` is the context). `keyword` names the instruction in errors.
    pub fn select(&self, step: &CopyStep, keyword: &str) -> Result<Vec<Selected>, ErrorKind> {
        let excludes = step
            .excludes
            .iter()
            .map(|e| {
                IgnorePattern::new(&clean(e.trim_start_matches('/')), false).map_err(|err| {
                    ErrorKind::Invalid {
                        instruction: keyword.to_owned(),
                        message: format!("--exclude: {err}"),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut selected = Vec::new();
        for source in &step.sources {
            selected.push(self.select_one(source, step, &excludes, keyword)?);
        }
        let count: usize =
            selected.iter().map(|s| s.matches.len()).sum::<usize>() + step.inline.len();
        if count > 1 && !step.dest_is_dir() {
            return Err(ErrorKind::Invalid {
                instruction: keyword.to_owned(),
                message: format!(
                    "the sources match {count} files, so the destination must be a directory ending with /: write {}/",
                    step.dest
                ),
            });
        }
        Ok(selected)
    }

    fn missing(&self, keyword: &str, source: &str, hint: Option<String>) -> ErrorKind {
        ErrorKind::SourceMissing {
            instruction: keyword.to_owned(),
            path: source.to_owned(),
            context: self.root.clone(),
            hint,
        }
    }

    fn select_one(
        &self,
        source: &str,
        step: &CopyStep,
        excludes: &[IgnorePattern],
        keyword: &str,
    ) -> Result<Selected, ErrorKind> {
        let cleaned = clean(source.trim_start_matches('/'));
        if cleaned == ".." || cleaned.starts_with("../") {
            let inside = clean(&format!("/{source}"));
            return Err(ErrorKind::OutsideContext {
                instruction: keyword.to_owned(),
                path: source.to_owned(),
                context: self.root.clone(),
                inside: inside.trim_start_matches('/').to_owned(),
            });
        }
        let rel = if cleaned == "." {
            String::new()
        } else {
            cleaned
        };
        let candidates = if has_wildcard(&rel) {
            let found = self.glob(&rel).map_err(|e| match e {
                GlobError::Pattern(m) => ErrorKind::Invalid {
                    instruction: keyword.to_owned(),
                    message: format!("source {source:?}: {m}"),
                },
                GlobError::Io(e) => e,
                GlobError::Outside(link) => ErrorKind::LinkOutsideContext {
                    instruction: keyword.to_owned(),
                    path: source.to_owned(),
                    link,
                },
            })?;
            if found.is_empty() {
                return Err(self.missing(
                    keyword,
                    source,
                    Some("no file in the context matches the pattern".into()),
                ));
            }
            found
        } else {
            vec![rel]
        };
        let mut matches = Vec::new();
        for path in candidates {
            let real = match self.resolve(&path, true) {
                Ok(r) => r,
                Err(Unresolved::Missing { at } | Unresolved::NotDir { at }) => {
                    let hint = (at != path).then(|| format!("{at} does not exist"));
                    return Err(self.missing(keyword, source, hint));
                }
                Err(Unresolved::Ignored { at }) => {
                    return Err(self.missing(keyword, source, self.ignored_hint(&at)))
                }
                Err(Unresolved::Outside { link }) => {
                    return Err(ErrorKind::LinkOutsideContext {
                        instruction: keyword.to_owned(),
                        path: source.to_owned(),
                        link,
                    })
                }
                Err(Unresolved::Io(e)) => return Err(e),
            };
            let full = self.full(&real);
            let meta = fs::symlink_metadata(&full).map_err(io(&full))?;
            let ignored = self.ignore.excluded(&real) || self.ignore.excluded(&path);
            if ignored && !(meta.is_dir() && self.ignore.has_exceptions()) {
                let at = if self.ignore.excluded(&path) {
                    &path
                } else {
                    &real
                };
                return Err(self.missing(keyword, source, self.ignored_hint(at)));
            }
            let name = path.rsplit('/').next().unwrap_or_default();
            if !name.is_empty() && excludes.iter().any(|p| p.matches_or_parent(name)) {
                continue;
            }
            let entry = Entry::from_metadata(real.clone(), &full, &meta)?;
            let tree = if meta.is_dir() {
                self.walk_dir(&real, excludes)?
            } else {
                Vec::new()
            };
            if ignored && tree.is_empty() {
                return Err(self.missing(keyword, source, self.ignored_hint(&real)));
            }
            let archive = if step.add && step.unpack && meta.is_file() {
                sniff_archive(&full, keyword, source)?
            } else {
                None
            };
            matches.push(Matched {
                path,
                real,
                entry,
                tree,
                archive,
            });
        }
        Ok(Selected {
            source: source.to_owned(),
            matches,
        })
    }

    fn ignored_hint(&self, at: &str) -> Option<String> {
        let file = self
            .ignore
            .file()
            .map_or_else(|| ".dockerignore".to_owned(), |f| f.display().to_string());
        self.ignore
            .excluded_by(at)
            .map(|(line, pattern)| format!("{at} is excluded by {file} line {line}: {pattern}"))
    }

    /// Matches a wildcard path component by component.
    fn glob(&self, pattern: &str) -> Result<Vec<String>, GlobError> {
        let mut current = vec![String::new()];
        for component in pattern.split('/') {
            let mut next = Vec::new();
            if !has_wildcard(component) {
                for c in current {
                    next.push(join(&c, component));
                }
                current = next;
                continue;
            }
            let glob = Glob::new(component).map_err(|e| GlobError::Pattern(e.to_string()))?;
            for c in current {
                let dir = match self.resolve(&c, true) {
                    Ok(d) => d,
                    Err(Unresolved::Outside { link }) => return Err(GlobError::Outside(link)),
                    Err(Unresolved::Io(e)) => return Err(GlobError::Io(e)),
                    Err(_) => continue,
                };
                if !fs::metadata(self.full(&dir)).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                for (name, _) in self.list(&dir).map_err(GlobError::Io)? {
                    // The rules name real paths, which a link on the way changes.
                    if glob.matches(&name) && !self.ignore.excluded(&join(&dir, &name)) {
                        next.push(join(&c, &name));
                    }
                }
            }
            current = next;
        }
        Ok(current)
    }
}

enum GlobError {
    Pattern(String),
    Io(ErrorKind),
    Outside(String),
}

/// Whether a 512-byte block is a tar header (its checksum adds up).
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 || block.iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .map(|&b| b as char)
        .filter(|c| c.is_ascii_digit())
        .collect();
    let Ok(stored) = u32::from_str_radix(&text, 8) else {
        return false;
    };
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    sum == stored
}

/// The first 512 bytes of `r`, fewer when it ends (or breaks) sooner: a
/// stream that is not what its magic promised is simply no archive.
fn read_block(r: impl Read) -> Vec<u8> {
    let mut block = Vec::with_capacity(512);
    if r.take(512).read_to_end(&mut block).is_err() {
        block.clear();
    }
    block
}

/// What ADD makes of a local file: an archive to unpack, or `None` to copy
/// it as is (Docker decides by content, not by name).
fn sniff_archive(
    path: &Path,
    keyword: &str,
    source: &str,
) -> Result<Option<ArchiveKind>, ErrorKind> {
    let mut head = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(6).read_to_end(&mut head))
        .map_err(io(path))?;
    let open = || fs::File::open(path).map_err(io(path));
    let kind = if head.starts_with(&[0x1f, 0x8b]) {
        is_tar_header(&read_block(flate2::read::GzDecoder::new(open()?)))
            .then_some(ArchiveKind::TarGzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        match zstd::stream::read::Decoder::new(open()?) {
            Ok(d) => is_tar_header(&read_block(d)).then_some(ArchiveKind::TarZstd),
            Err(_) => None,
        }
    } else if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(ErrorKind::Unsupported {
            what: format!("{keyword} of the bzip2 or xz archive {source}"),
            hint:
                "recompress it with gzip or zstd, or add --unpack=false to copy the file as it is"
                    .into(),
        });
    } else {
        is_tar_header(&read_block(open()?)).then_some(ArchiveKind::Tar)
    };
    Ok(kind)
}
