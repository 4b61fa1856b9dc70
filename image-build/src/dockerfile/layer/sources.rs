//! What a COPY or ADD reads, gathered once: every selected file with the
//! metadata the copy keeps and its content, from the build context or from
//! another stage's or image's root. The cache digest and the layer are both
//! made from this one reading, so a file that changes in between cannot
//! give a layer that its cache key does not describe.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::rootpath::{self, file_name, join, Look, Lookup, Unresolved};
use super::CopySource;
use crate::dockerfile::context::{ArchiveKind, Context, Entry, EntryKind};
use crate::dockerfile::expand::CopyStep;
use crate::dockerfile::instructions::CopyFrom;
use crate::dockerfile::pattern::{clean, has_wildcard, Glob, IgnorePattern};
use crate::dockerfile::ErrorKind;
use crate::tree::{Kind, Tree};

/// What a source file is, with what the copy needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ItemKind {
    Dir,
    File(Arc<Vec<u8>>),
    Symlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One file of a source.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// Path relative to the matched directory (`""`: the match itself).
    pub rel: String,
    pub kind: ItemKind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds; `None` when the source does not know (a stage's tree).
    pub mtime: Option<i64>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Files of one source sharing this number are hard links.
    pub inode: Option<u64>,
}

/// One match of a source path or pattern.
#[derive(Debug, Clone)]
pub(crate) struct Match {
    /// The name the copy gets when it goes into a directory.
    pub name: String,
    /// The match itself.
    pub top: Item,
    /// A directory's contents, parents before children.
    pub children: Vec<Item>,
    /// ADD: unpack this archive instead of copying the file.
    pub archive: Option<ArchiveKind>,
}

/// One source of the instruction (BuildKit copies each with its own
/// copier, so hard links are kept within a source, not across them).
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// As written (expanded); `<<NAME` for a heredoc.
    pub source: String,
    pub matches: Vec<Match>,
}

/// The files a COPY or ADD copies, read once.
///
/// Make it with [`Sources::gather`], key the cache with
/// [`Sources::digest`], and on a miss make the layer with
/// [`Sources::layer`] from the same reading.
#[derive(Debug, Clone)]
pub struct Sources {
    pub(crate) groups: Vec<Group>,
}

/// Extended attributes that are the host's, not the file's: macOS
/// metadata (BuildKit drops it too) and SELinux labels (a build on an
/// SELinux host would otherwise differ from the same build elsewhere).
fn host_xattr(name: &str) -> bool {
    name.starts_with("com.apple.") || name == "security.selinux"
}

fn io_error(path: &Path) -> impl Fn(rustix::io::Errno) -> ErrorKind + '_ {
    move |e| ErrorKind::Io {
        path: path.to_owned(),
        source: e.into(),
    }
}

/// A file's extended attributes (not following a link), sorted.
fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>, ErrorKind> {
    use rustix::io::Errno;
    let unsupported = |e: Errno| e == Errno::NOTSUP || e == Errno::OPNOTSUPP;
    // The list can grow between the size query and the read: try again.
    let mut list = Vec::new();
    for _ in 0..8 {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(n) => n,
            Err(e) if unsupported(e) => return Ok(Vec::new()),
            Err(e) => return Err(io_error(path)(e)),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        list.resize(size, 0);
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(n) => {
                list.truncate(n);
                break;
            }
            Err(Errno::RANGE) => list.clear(),
            Err(e) => return Err(io_error(path)(e)),
        }
    }
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if host_xattr(&name) {
            continue;
        }
        let mut value = Vec::new();
        for _ in 0..8 {
            let size = match rustix::fs::lgetxattr_query(path, name.as_str()) {
                Ok(n) => n,
                Err(Errno::NODATA) => break,
                Err(e) => return Err(io_error(path)(e)),
            };
            value.resize(size, 0);
            if size == 0 {
                break;
            }
            match rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]) {
                Ok(n) => {
                    value.truncate(n);
                    break;
                }
                Err(Errno::RANGE) => value.clear(),
                Err(Errno::NODATA) => break,
                Err(e) => return Err(io_error(path)(e)),
            }
        }
        out.push((name, value));
    }
    out.sort();
    Ok(out)
}

/// Numbers hard links of one source by their (device, inode) pair.
#[derive(Debug, Default)]
struct Inodes(HashMap<(u64, u64), u64>);

impl Inodes {
    fn id(&mut self, dev: u64, ino: u64) -> u64 {
        let next = self.0.len() as u64;
        *self.0.entry((dev, ino)).or_insert(next)
    }
}

/// A context file as the copy sees it. Owners are 0:0 whatever they are
/// on the host: BuildKit's client resets them when it sends the context,
/// so a build does not depend on who checked the files out.
fn context_item(
    rel: &str,
    e: &Entry,
    full: &Path,
    inodes: &mut Inodes,
) -> Result<Option<Item>, ErrorKind> {
    let io = |source| ErrorKind::Io {
        path: full.to_owned(),
        source,
    };
    let (kind, inode) = match &e.kind {
        EntryKind::File => (
            ItemKind::File(Arc::new(fs::read(full).map_err(io)?)),
            Some(inodes.id(e.dev, e.ino)),
        ),
        EntryKind::Dir => (ItemKind::Dir, None),
        EntryKind::Symlink(t) => (ItemKind::Symlink(t.clone()), None),
        EntryKind::Fifo => (ItemKind::Fifo, None),
        EntryKind::Char => (
            ItemKind::Char(rustix::fs::major(e.rdev), rustix::fs::minor(e.rdev)),
            None,
        ),
        EntryKind::Block => (
            ItemKind::Block(rustix::fs::major(e.rdev), rustix::fs::minor(e.rdev)),
            None,
        ),
        // A socket cannot be put into a layer (GNU tar and BuildKit's
        // context transfer leave them out as well).
        EntryKind::Socket => return Ok(None),
    };
    Ok(Some(Item {
        rel: rel.to_owned(),
        kind,
        mode: e.mode,
        uid: 0,
        gid: 0,
        mtime: Some(e.mtime.0),
        xattrs: read_xattrs(full)?,
        inode,
    }))
}

fn from_context(ctx: &Context, step: &CopyStep, keyword: &str) -> Result<Vec<Group>, ErrorKind> {
    let mut groups = Vec::new();
    for selected in ctx.select(step, keyword)? {
        let mut inodes = Inodes::default();
        let mut matches = Vec::new();
        for m in selected.matches {
            let base = if m.real.is_empty() {
                ctx.root().to_owned()
            } else {
                ctx.root().join(&m.real)
            };
            let Some(top) = context_item("", &m.entry, &base, &mut inodes)? else {
                continue;
            };
            let mut children = Vec::with_capacity(m.tree.len());
            for e in &m.tree {
                if let Some(item) = context_item(&e.path, e, &base.join(&e.path), &mut inodes)? {
                    children.push(item);
                }
            }
            matches.push(Match {
                name: file_name(&m.path).to_owned(),
                top,
                children,
                archive: m.archive,
            });
        }
        groups.push(Group {
            source: selected.source,
            matches,
        });
    }
    Ok(groups)
}

fn tree_item(rel: &str, tree: &Tree, real: &str) -> Option<Item> {
    if real.is_empty() {
        // The root itself has no node; a root is 0755 root:root.
        return Some(Item {
            rel: rel.to_owned(),
            kind: ItemKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: None,
            xattrs: Vec::new(),
            inode: None,
        });
    }
    let node = tree.nodes.get(real)?;
    let (kind, inode) = match &node.kind {
        Kind::Dir => (ItemKind::Dir, None),
        Kind::File { data, inode } => (ItemKind::File(Arc::clone(data)), Some(*inode)),
        Kind::Symlink(t) => (ItemKind::Symlink(t.clone()), None),
        Kind::Char(a, b) => (ItemKind::Char(*a, *b), None),
        Kind::Block(a, b) => (ItemKind::Block(*a, *b), None),
        Kind::Fifo => (ItemKind::Fifo, None),
    };
    Some(Item {
        rel: rel.to_owned(),
        kind,
        mode: node.mode,
        uid: node.uid,
        gid: node.gid,
        // A tree keeps no times: the copy gets the build's epoch.
        mtime: None,
        // Nor extended attributes (tree.rs does not read them from layers).
        xattrs: Vec::new(),
        inode,
    })
}

/// The names in the directory `dir` (real) of a tree, sorted.
fn children_of<'t>(tree: &'t Tree, dir: &'t str) -> impl Iterator<Item = &'t str> + 't {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let start = prefix.clone();
    tree.nodes
        .range(start..)
        .map(|(k, _)| k.as_str())
        .take_while(move |k| k.starts_with(&prefix))
        .filter_map(move |k| {
            let rest = &k[dir.len() + usize::from(!dir.is_empty())..];
            (!rest.contains('/')).then_some(rest)
        })
}

/// Matches a wildcard path in a tree, component by component, like the
/// context does (links on the way are followed inside the tree).
fn glob_tree(tree: &Tree, pattern: &str) -> Result<Vec<String>, String> {
    let mut current = vec![String::new()];
    for component in pattern.split('/') {
        if !has_wildcard(component) {
            current = current.iter().map(|c| join(c, component)).collect();
            continue;
        }
        let glob = Glob::new(component).map_err(|e| e.to_string())?;
        let mut next = Vec::new();
        for c in current {
            let Ok(dir) = rootpath::resolve(tree, "", &c, true) else {
                continue;
            };
            if tree.look(&dir) != Some(Look::Dir) {
                continue;
            }
            for name in children_of(tree, &dir) {
                if glob.matches(name) {
                    next.push(join(&c, name));
                }
            }
        }
        current = next;
    }
    Ok(current)
}

fn from_name(from: &CopyFrom) -> String {
    match from {
        CopyFrom::Context => "the build context".into(),
        CopyFrom::Stage(i) => format!("the stage it copies from (stage {i}, counting from 0)"),
        CopyFrom::Image(name) => format!("the image {name}"),
    }
}

fn from_tree(tree: &Tree, step: &CopyStep, keyword: &str) -> Result<Vec<Group>, ErrorKind> {
    let invalid = |message: String| ErrorKind::Invalid {
        instruction: keyword.to_owned(),
        message,
    };
    let excludes = step
        .excludes
        .iter()
        .map(|e| {
            IgnorePattern::new(&clean(e.trim_start_matches('/')), false)
                .map_err(|err| invalid(format!("--exclude: {err}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let missing = |source: &str, why: &str| {
        invalid(format!(
            "source {source:?} not found in {}{why}",
            from_name(&step.from)
        ))
    };
    let mut groups = Vec::new();
    for source in &step.sources {
        let cleaned = clean(source.trim_start_matches('/'));
        if cleaned == ".." || cleaned.starts_with("../") {
            return Err(invalid(format!(
                "source {source:?} climbs out of {}: write it from its root (/{})",
                from_name(&step.from),
                clean(&format!("/{source}")).trim_start_matches('/')
            )));
        }
        let rel = if cleaned == "." {
            String::new()
        } else {
            cleaned
        };
        let candidates = if has_wildcard(&rel) {
            let found =
                glob_tree(tree, &rel).map_err(|m| invalid(format!("source {source:?}: {m}")))?;
            if found.is_empty() {
                return Err(missing(source, " (nothing matches the pattern)"));
            }
            found
        } else {
            vec![rel]
        };
        let mut matches = Vec::new();
        for path in candidates {
            let real = match rootpath::resolve(tree, "", &path, true) {
                Ok(r) => r,
                Err(Unresolved::NotDir { at }) => {
                    return Err(missing(source, &format!(" (/{at} is not a directory)")))
                }
                Err(e @ Unresolved::TooManyLinks { .. }) => {
                    return Err(invalid(format!("source {source:?}: {e}")))
                }
            };
            let name = file_name(&path);
            if !name.is_empty() && excludes.iter().any(|p| p.matches_or_parent(name)) {
                continue;
            }
            let Some(top) = tree_item("", tree, &real) else {
                let why = if real == path {
                    String::new()
                } else {
                    format!(" (it leads to /{real}, which does not exist)")
                };
                return Err(missing(source, &why));
            };
            let mut children = Vec::new();
            if top.kind == ItemKind::Dir {
                let prefix = if real.is_empty() {
                    String::new()
                } else {
                    format!("{real}/")
                };
                for key in tree
                    .nodes
                    .range(prefix.clone()..)
                    .map(|(k, _)| k)
                    .take_while(|k| k.starts_with(&prefix))
                {
                    let rel = &key[prefix.len()..];
                    if excludes.iter().any(|p| p.matches_or_parent(rel)) {
                        continue;
                    }
                    if let Some(item) = tree_item(rel, tree, key) {
                        children.push(item);
                    }
                }
            }
            matches.push(Match {
                name: name.to_owned(),
                top,
                children,
                archive: None,
            });
        }
        groups.push(Group {
            source: source.clone(),
            matches,
        });
    }
    let count: usize = groups.iter().map(|g| g.matches.len()).sum::<usize>() + step.inline.len();
    if count > 1 && !step.dest_is_dir() {
        return Err(invalid(format!(
            "the sources match {count} files, so the destination must be a directory ending with /: write {}/",
            step.dest
        )));
    }
    Ok(groups)
}

impl Sources {
    /// Selects and reads what `step` copies from `source` (`keyword`,
    /// COPY or ADD, names the instruction in errors).
    pub fn gather(
        step: &CopyStep,
        source: CopySource<'_>,
        keyword: &str,
    ) -> Result<Sources, ErrorKind> {
        let mut groups = match source {
            CopySource::Context(ctx) => from_context(ctx, step, keyword)?,
            CopySource::Tree(tree) => from_tree(tree, step, keyword)?,
        };
        // Heredoc files: BuildKit writes each into an empty root as root,
        // mode 0644, then copies it like a file.
        for file in &step.inline {
            groups.push(Group {
                source: format!("<<{}", file.path),
                matches: vec![Match {
                    name: file.path.clone(),
                    top: Item {
                        rel: String::new(),
                        kind: ItemKind::File(Arc::new(file.data.clone().into_bytes())),
                        mode: file.mode,
                        uid: 0,
                        gid: 0,
                        mtime: None,
                        xattrs: Vec::new(),
                        inode: None,
                    },
                    children: Vec::new(),
                    archive: None,
                }],
            });
        }
        Ok(Sources { groups })
    }

    /// A digest of everything the copy takes from its sources: for each
    /// source and match, each file's path inside it, kind, mode, owner,
    /// link target or device numbers, extended attributes, size, content
    /// hash and hard links, and whether ADD unpacks it. Never times: a
    /// `touch` keeps the cache, any change the layer would show misses it.
    /// The instruction's own words (destination, flags) are not in it;
    /// the cache key adds them.
    pub fn digest(&self) -> String {
        fn field(h: &mut Sha256, bytes: &[u8]) {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        let mut h = Sha256::new();
        field(&mut h, b"hafen copy sources 1");
        for group in &self.groups {
            field(&mut h, b"source");
            field(&mut h, group.source.as_bytes());
            // Hard links: the first file of the source with that inode.
            let mut first: HashMap<u64, String> = HashMap::new();
            for (i, m) in group.matches.iter().enumerate() {
                field(&mut h, b"match");
                field(&mut h, m.name.as_bytes());
                let archive = match m.archive {
                    None => "copy",
                    Some(ArchiveKind::Tar) => "unpack tar",
                    Some(ArchiveKind::TarGzip) => "unpack tar+gzip",
                    Some(ArchiveKind::TarZstd) => "unpack tar+zstd",
                };
                field(&mut h, archive.as_bytes());
                for item in std::iter::once(&m.top).chain(&m.children) {
                    field(&mut h, item.rel.as_bytes());
                    match &item.kind {
                        ItemKind::Dir => field(&mut h, b"dir"),
                        ItemKind::File(data) => {
                            field(&mut h, b"file");
                            h.update((data.len() as u64).to_le_bytes());
                            field(&mut h, &Sha256::digest(data.as_slice()));
                        }
                        ItemKind::Symlink(t) => {
                            field(&mut h, b"symlink");
                            field(&mut h, t.as_bytes());
                        }
                        ItemKind::Char(a, b) | ItemKind::Block(a, b) => {
                            let tag: &[u8] = if matches!(item.kind, ItemKind::Char(..)) {
                                b"char"
                            } else {
                                b"block"
                            };
                            field(&mut h, tag);
                            h.update(a.to_le_bytes());
                            h.update(b.to_le_bytes());
                        }
                        ItemKind::Fifo => field(&mut h, b"fifo"),
                    }
                    h.update(item.mode.to_le_bytes());
                    h.update(item.uid.to_le_bytes());
                    h.update(item.gid.to_le_bytes());
                    h.update((item.xattrs.len() as u64).to_le_bytes());
                    for (name, value) in &item.xattrs {
                        field(&mut h, name.as_bytes());
                        field(&mut h, value);
                    }
                    let here = format!("{i}/{}", item.rel);
                    match item.inode.map(|n| first.entry(n).or_insert(here.clone())) {
                        Some(to) if *to != here => {
                            field(&mut h, b"hardlink");
                            field(&mut h, to.as_bytes());
                        }
                        _ => field(&mut h, b"own"),
                    }
                }
            }
        }
        format!("sha256:{:x}", h.finalize())
    }
}
