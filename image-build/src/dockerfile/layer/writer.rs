//! A layer being made: the entries it adds, seen over the root it will be
//! applied to (so later entries of the same step see earlier ones), and
//! turned into a tar at the end with every parent directory included.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::rootpath::{self, file_name, parent, Look, Lookup, Unresolved};
use super::tarball::{self, EntryType, TarEntry};
use super::LayerTar;
use crate::tree::{Kind, Tree};

/// What an entry of the layer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutKind {
    Dir,
    File(Arc<Vec<u8>>),
    Symlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// Identity of files that are hard links to each other within one step:
/// (source index, archive match + 1 or 0 for files, number).
pub(crate) type LinkKey = (usize, usize, u64);

/// One entry of the layer.
#[derive(Debug, Clone)]
pub(crate) struct Out {
    pub kind: OutKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch (already clamped).
    pub mtime: i64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub link: Option<LinkKey>,
}

impl Out {
    /// A directory made by the step.
    pub(crate) fn dir(mode: u32, owner: (u32, u32), mtime: i64) -> Out {
        Out {
            kind: OutKind::Dir,
            mode,
            uid: owner.0,
            gid: owner.1,
            mtime,
            xattrs: Vec::new(),
            link: None,
        }
    }

    fn is_dir(&self) -> bool {
        self.kind == OutKind::Dir
    }
}

/// The entries of a layer over the root they go onto.
#[derive(Debug)]
pub(crate) struct Layer<'a> {
    root: &'a Tree,
    added: BTreeMap<String, Out>,
    /// Paths where an entry replaced what the root had (its subtree is
    /// gone from the view).
    replaced: BTreeSet<String>,
    epoch: i64,
}

impl Lookup for Layer<'_> {
    fn look(&self, path: &str) -> Option<Look> {
        if path.is_empty() {
            return Some(Look::Dir);
        }
        if let Some(out) = self.added.get(path) {
            return Some(match &out.kind {
                OutKind::Dir => Look::Dir,
                OutKind::Symlink(t) => Look::Symlink(t.clone()),
                _ => Look::Other,
            });
        }
        if self.hidden(path) {
            return None;
        }
        self.root.look(path)
    }
}

/// The proper ancestors of a relative path, nearest last.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

impl<'a> Layer<'a> {
    pub(crate) fn new(root: &'a Tree, epoch: i64) -> Layer<'a> {
        Layer {
            root,
            added: BTreeMap::new(),
            replaced: BTreeSet::new(),
            epoch,
        }
    }

    /// A time as the layer records it: never after the build's epoch (so
    /// checkouts made at different times give the same bytes), never
    /// before 1970; unknown times are the epoch.
    pub(crate) fn clamp(&self, mtime: Option<i64>) -> i64 {
        mtime.map_or(self.epoch, |m| m.min(self.epoch)).max(0)
    }

    /// Whether a path of the root is hidden by an entry of this layer.
    fn hidden(&self, path: &str) -> bool {
        if self.replaced.contains(path) {
            return true;
        }
        ancestors(path)
            .any(|a| self.replaced.contains(a) || self.added.get(a).is_some_and(|o| !o.is_dir()))
    }

    /// The entry the layer made at `path`, if any.
    pub(crate) fn added_mut(&mut self, path: &str) -> Option<&mut Out> {
        self.added.get_mut(path)
    }

    /// What the root has at `path` (unless the layer hid it).
    pub(crate) fn root_node(&self, path: &str) -> Option<&'a crate::tree::Node> {
        if self.hidden(path) {
            return None;
        }
        self.root.nodes.get(path)
    }

    /// Puts an entry at `path` (real, its parent a directory in the view):
    /// a directory over a directory keeps what is in it, anything else
    /// replaces what was there. The caller decides whether replacing is
    /// allowed.
    pub(crate) fn put(&mut self, path: &str, out: Out) -> Result<(), String> {
        let name = file_name(path);
        if name.starts_with(".wh.") {
            return Err(format!(
                "/{path}: a name starting with .wh. cannot be put into an image layer (layers use such names to delete files)"
            ));
        }
        let existing = self.look(path);
        let merge = existing == Some(Look::Dir) && out.is_dir();
        if existing.is_some() && !merge {
            let prefix = format!("{path}/");
            let below: Vec<String> = self
                .added
                .range(prefix.clone()..)
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            for k in below {
                self.added.remove(&k);
            }
            if self.root_node(path).is_some() {
                self.replaced.insert(path.to_owned());
            }
        }
        self.added.insert(path.to_owned(), out);
        Ok(())
    }

    /// Makes the directory `path` and its missing parents (BuildKit's
    /// `MkdirAll`: links on the way are followed inside the root; only the
    /// directories made get `mode` and `owner`). Returns the real path.
    pub(crate) fn mkdir_all(
        &mut self,
        path: &str,
        mode: u32,
        owner: (u32, u32),
    ) -> Result<String, Unresolved> {
        let real = rootpath::resolve(self, "", path, true)?;
        if real.is_empty() {
            return Ok(real);
        }
        for p in ancestors(&real).chain(std::iter::once(real.as_str())) {
            match self.look(p) {
                Some(Look::Dir) => {}
                Some(_) => return Err(Unresolved::NotDir { at: p.to_owned() }),
                None => {
                    let dir = Out::dir(mode, owner, self.epoch);
                    self.put(p, dir)
                        .map_err(|_| Unresolved::NotDir { at: p.to_owned() })?;
                }
            }
        }
        Ok(real)
    }

    /// Sets the time of the directory `path` (which exists in the view),
    /// keeping the rest of its metadata.
    pub(crate) fn set_dir_time(&mut self, path: &str, mtime: i64) {
        if path.is_empty() {
            return;
        }
        if let Some(out) = self.added.get_mut(path) {
            out.mtime = mtime;
            return;
        }
        if let Some(node) = self.root_node(path) {
            let dir = Out::dir(node.mode, (node.uid, node.gid), mtime);
            self.added.insert(path.to_owned(), dir);
        }
    }

    /// The tar: entries in name order (parents first), every parent
    /// directory included (as the root has it, at the epoch), hard links
    /// within a step written as links to the first path.
    pub(crate) fn finish(self) -> LayerTar {
        let mut all = self.added.clone();
        for path in self.added.keys() {
            for a in ancestors(path) {
                if all.contains_key(a) {
                    continue;
                }
                let (mode, owner) = match self.root.nodes.get(a) {
                    Some(n) if n.kind == Kind::Dir => (n.mode, (n.uid, n.gid)),
                    _ => (0o755, (0, 0)),
                };
                all.insert(a.to_owned(), Out::dir(mode, owner, self.epoch));
            }
        }
        let mut tar = Vec::new();
        let mut first: HashMap<LinkKey, String> = HashMap::new();
        for (path, out) in &all {
            let mtime = u64::try_from(out.mtime).unwrap_or(0);
            let dir_path;
            let link_to;
            let mut entry = TarEntry {
                path,
                kind: EntryType::File,
                mode: out.mode,
                uid: out.uid,
                gid: out.gid,
                mtime,
                link: None,
                device: (0, 0),
                xattrs: &out.xattrs,
                data: &[],
            };
            match &out.kind {
                OutKind::Dir => {
                    dir_path = format!("{path}/");
                    entry.path = &dir_path;
                    entry.kind = EntryType::Dir;
                }
                OutKind::File(data) => {
                    let linked = out.link.and_then(|key| match first.get(&key) {
                        Some(to) => Some(to.clone()),
                        None => {
                            first.insert(key, path.clone());
                            None
                        }
                    });
                    match linked {
                        Some(to) => {
                            entry.kind = EntryType::HardLink;
                            link_to = to;
                            entry.link = Some(&link_to);
                            entry.xattrs = &[];
                        }
                        None => entry.data = data,
                    }
                }
                OutKind::Symlink(target) => {
                    entry.kind = EntryType::Symlink;
                    entry.link = Some(target);
                    entry.mode = 0o777;
                }
                OutKind::Char(a, b) => {
                    entry.kind = EntryType::Char;
                    entry.device = (*a, *b);
                }
                OutKind::Block(a, b) => {
                    entry.kind = EntryType::Block;
                    entry.device = (*a, *b);
                }
                OutKind::Fifo => entry.kind = EntryType::Fifo,
            }
            tarball::write_entry(&mut tar, &entry);
            // A directory that replaced one of the root's after something
            // else had replaced it: what the root had in it is gone.
            if out.is_dir()
                && self.replaced.contains(path)
                && self
                    .root
                    .nodes
                    .get(path)
                    .is_some_and(|n| n.kind == Kind::Dir)
            {
                let marker = format!("{path}/.wh..wh..opq");
                tarball::write_entry(
                    &mut tar,
                    &TarEntry {
                        path: &marker,
                        kind: EntryType::File,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        mtime,
                        link: None,
                        device: (0, 0),
                        xattrs: &[],
                        data: &[],
                    },
                );
            }
        }
        tarball::finish(&mut tar);
        let diff_id = format!("sha256:{:x}", Sha256::digest(&tar));
        LayerTar { tar, diff_id }
    }
}

/// The real parent of `path` in the view must be a directory.
pub(crate) fn parent_is_dir(layer: &Layer<'_>, path: &str) -> bool {
    layer.look(parent(path)) == Some(Look::Dir)
}
