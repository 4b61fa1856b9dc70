//! An image's root filesystem in memory: layers applied in order with
//! whiteouts honoured, and every path checked so that no entry can land
//! outside the image or write through a link.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file; hard links share `inode` and the data.
    File {
        /// The contents.
        data: Arc<Vec<u8>>,
        /// Identity shared by hard links to the same file.
        inode: u64,
    },
    /// A symbolic link (never followed on the host).
    Symlink(String),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The layer that last wrote it.
    pub layer: usize,
}

/// A layer entry that cannot be applied safely.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The tar stream itself is broken.
    #[error("layer {layer}: not a valid tar archive")]
    Tar {
        /// Layer index.
        layer: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An entry's path is hostile or invalid.
    #[error("layer {layer}: refusing {path:?}: {reason}")]
    Unsafe {
        /// Layer index.
        layer: usize,
        /// The entry's path as stored.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A flattened root filesystem. Paths are relative, without a leading `/`;
/// the root itself is implied.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    /// Entries by path; `BTreeMap` order puts parents before children.
    pub nodes: BTreeMap<String, Node>,
    next_inode: u64,
}

/// Normalises a tar path: strips `./` and trailing `/`, refuses absolute
/// paths, `..` and empty or NUL-containing names.
pub fn clean_path(raw: &str) -> Result<String, String> {
    if raw.starts_with('/') {
        return Err("absolute path".into());
    }
    if raw.contains('\0') {
        return Err("NUL byte in path".into());
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("\"..\" in path".into()),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn parent_of(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Removes `path` and everything below it.
    fn remove_subtree(&mut self, path: &str) {
        self.nodes.remove(path);
        let prefix = format!("{path}/");
        let doomed: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// Checks that every ancestor of `path` is a directory (creating missing
    /// ones), so nothing is ever written through a symlink.
    fn ensure_parents(&mut self, path: &str, layer: usize, raw: &str) -> Result<(), LayerError> {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let ancestor = &path[..end + pos];
            match self.nodes.get(ancestor) {
                Some(Node { kind: Kind::Dir, .. }) => {}
                Some(Node { kind: Kind::Symlink(target), .. }) => {
                    return Err(LayerError::Unsafe {
                        layer,
                        path: raw.to_owned(),
                        reason: format!("{ancestor:?} is a symlink to {target:?}; writing through links is not allowed"),
                    })
                }
                Some(_) => {
                    return Err(LayerError::Unsafe { layer, path: raw.to_owned(), reason: format!("{ancestor:?} is not a directory") })
                }
                None => {
                    self.nodes.insert(ancestor.to_owned(), Node { kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, layer });
                }
            }
            end += pos + 1;
        }
        Ok(())
    }

    /// Applies one uncompressed layer (a tar stream) on top of the tree.
    pub fn apply_layer(&mut self, layer: usize, tar: impl Read) -> Result<(), LayerError> {
        let mut archive = tar::Archive::new(tar);
        let entries = archive
            .entries()
            .map_err(|source| LayerError::Tar { layer, source })?;
        for entry in entries {
            let mut entry = entry.map_err(|source| LayerError::Tar { layer, source })?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let unsafe_entry = |reason: String| LayerError::Unsafe {
                layer,
                path: raw.clone(),
                reason,
            };
            let header = entry.header();
            let entry_type = header.entry_type();
            if entry_type.is_pax_global_extensions()
                || entry_type.is_pax_local_extensions()
                || entry_type.is_gnu_longname()
                || entry_type.is_gnu_longlink()
            {
                continue;
            }
            let path = clean_path(&raw).map_err(unsafe_entry)?;
            if path.is_empty() {
                continue; // the root directory itself
            }
            let name = path.rsplit('/').next().unwrap_or(&path);
            let parent = parent_of(&path);
            self.ensure_parents(&path, layer, &raw)?;

            // Whiteouts: an opaque marker hides what lower layers put in its
            // directory; `.wh.NAME` deletes NAME.
            if name == ".wh..wh..opq" {
                let prefix = parent.map(|p| format!("{p}/")).unwrap_or_default();
                let hidden: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|(k, n)| {
                        k.starts_with(&prefix) && k.len() > prefix.len() && n.layer < layer
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in hidden {
                    self.nodes.remove(&k);
                }
                continue;
            }
            if let Some(victim) = name.strip_prefix(".wh.") {
                if victim.is_empty() || victim == "." || victim == ".." {
                    return Err(unsafe_entry("whiteout names nothing".into()));
                }
                let target = match parent {
                    Some(p) => format!("{p}/{victim}"),
                    None => victim.to_owned(),
                };
                self.remove_subtree(&target);
                continue;
            }

            let mode = header
                .mode()
                .map_err(|source| LayerError::Tar { layer, source })?
                & 0o7777;
            let uid = header
                .uid()
                .ok()
                .and_then(|u| u32::try_from(u).ok())
                .unwrap_or(0);
            let gid = header
                .gid()
                .ok()
                .and_then(|g| u32::try_from(g).ok())
                .unwrap_or(0);
            let device = |h: &tar::Header| -> (u32, u32) {
                (
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                )
            };
            let kind = if entry_type.is_dir() {
                Kind::Dir
            } else if entry_type.is_file() || entry_type == tar::EntryType::Continuous {
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry
                    .read_to_end(&mut data)
                    .map_err(|source| LayerError::Tar { layer, source })?;
                self.next_inode += 1;
                Kind::File {
                    data: Arc::new(data),
                    inode: self.next_inode,
                }
            } else if entry_type.is_symlink() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                if target.is_empty() || target.contains('\0') {
                    return Err(unsafe_entry("symlink without a valid target".into()));
                }
                Kind::Symlink(target)
            } else if entry_type.is_hard_link() {
                let raw_target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let target = clean_path(&raw_target)
                    .map_err(|r| unsafe_entry(format!("hard link target {raw_target:?}: {r}")))?;
                match self.nodes.get(&target) {
                    Some(Node {
                        kind: kind @ Kind::File { .. },
                        ..
                    }) => kind.clone(),
                    Some(_) => {
                        return Err(unsafe_entry(format!(
                            "hard link target {raw_target:?} is not a regular file"
                        )))
                    }
                    None => {
                        return Err(unsafe_entry(format!(
                            "hard link target {raw_target:?} does not exist in the image"
                        )))
                    }
                }
            } else if entry_type.is_character_special() {
                let (ma, mi) = device(header);
                Kind::Char(ma, mi)
            } else if entry_type.is_block_special() {
                let (ma, mi) = device(header);
                Kind::Block(ma, mi)
            } else if entry_type.is_fifo() {
                Kind::Fifo
            } else {
                return Err(unsafe_entry(format!(
                    "unsupported tar entry type {:?}",
                    entry_type
                )));
            };
            let is_dir = kind == Kind::Dir;
            match self.nodes.get_mut(&path) {
                // A directory over a directory keeps what is below it.
                Some(existing) if is_dir && existing.kind == Kind::Dir => {
                    existing.mode = mode;
                    existing.uid = uid;
                    existing.gid = gid;
                    existing.layer = layer;
                }
                _ => {
                    self.remove_subtree(&path);
                    self.nodes.insert(
                        path,
                        Node {
                            kind,
                            mode,
                            uid,
                            gid,
                            layer,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Reads a small text file of the tree (such as etc/passwd), not following links.
    pub fn read_text(&self, path: &str) -> Option<String> {
        match &self.nodes.get(path)?.kind {
            Kind::File { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a tar in memory from (path, kind) pairs, writing raw header names
    /// so hostile paths can be expressed.
    pub(crate) enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Char(&'a str, u32, u32),
    }

    pub(crate) fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let mut h = tar::Header::new_gnu();
            let (name, data): (&str, &[u8]) = match e {
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    (p, b"")
                }
                E::File(p, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    (p, d)
                }
                E::Symlink(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_link_name_literal(t).expect("link");
                    h.set_mode(0o777);
                    (p, b"")
                }
                E::Hardlink(p, t) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_link_name_literal(t).expect("link");
                    h.set_mode(0o644);
                    (p, b"")
                }
                E::Char(p, ma, mi) => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_device_major(*ma).expect("major");
                    h.set_device_minor(*mi).expect("minor");
                    h.set_mode(0o666);
                    (p, b"")
                }
            };
            // Raw name bytes: the tar crate's set_path would refuse hostile paths.
            let gnu = h.as_gnu_mut().expect("gnu header");
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn apply(tree: &mut Tree, layer: usize, entries: &[E]) -> Result<(), LayerError> {
        tree.apply_layer(layer, tar_of(entries).as_slice())
    }

    fn refused(entries: &[E], needle: &str) {
        let mut tree = Tree::new();
        let err = apply(&mut tree, 0, entries)
            .expect_err("must be refused")
            .to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }

    #[test]
    fn hostile_archives_are_refused() {
        refused(&[E::File("/etc/passwd", b"x")], "absolute path");
        refused(&[E::File("../escape", b"x")], "\"..\"");
        refused(&[E::File("a/../../escape", b"x")], "\"..\"");
        refused(
            &[E::Symlink("etc", "/host/etc"), E::File("etc/passwd", b"x")],
            "symlink",
        );
        refused(&[E::Symlink("d", "../../.."), E::Dir("d/sub")], "symlink");
        refused(&[E::Hardlink("h", "/etc/shadow")], "absolute path");
        refused(&[E::Hardlink("h", "../outside")], "\"..\"");
        refused(&[E::Hardlink("h", "missing")], "does not exist");
        refused(&[E::Dir("d"), E::Hardlink("h", "d")], "not a regular file");
        refused(
            &[E::File("f", b"x"), E::File("f/child", b"y")],
            "not a directory",
        );
    }

    #[test]
    fn links_and_devices_inside_the_image_are_kept() {
        let mut tree = Tree::new();
        apply(
            &mut tree,
            0,
            &[
                E::Dir("./bin"),
                E::File("./bin/busybox", b"elf"),
                E::Hardlink("bin/sh", "./bin/busybox"),
                E::Symlink("bin/ls", "/bin/busybox"),
                E::Char("dev/null", 1, 3),
            ],
        )
        .expect("safe");
        let (Kind::File { inode: a, .. }, Kind::File { inode: b, .. }) =
            (&tree.nodes["bin/busybox"].kind, &tree.nodes["bin/sh"].kind)
        else {
            panic!("files expected")
        };
        assert_eq!(a, b, "hard links share an inode");
        assert_eq!(
            tree.nodes["bin/ls"].kind,
            Kind::Symlink("/bin/busybox".into())
        );
        assert_eq!(tree.nodes["dev/null"].kind, Kind::Char(1, 3));
        assert_eq!(
            tree.nodes["dev"].kind,
            Kind::Dir,
            "missing parents are made"
        );
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers() {
        let mut tree = Tree::new();
        apply(
            &mut tree,
            0,
            &[
                E::File("etc/a", b"1"),
                E::File("etc/b", b"2"),
                E::Dir("opt/x"),
                E::File("opt/x/f", b"3"),
                E::File("keep", b"k"),
            ],
        )
        .expect("layer 0");
        apply(
            &mut tree,
            1,
            &[
                E::File("etc/.wh.a", b""),
                E::File("opt/x/new", b"n"),
                E::File("opt/x/.wh..wh..opq", b""),
                E::File(".wh.keepnot", b""),
            ],
        )
        .expect("layer 1");
        assert!(
            !tree.nodes.contains_key("etc/a"),
            "whiteout removes the file"
        );
        assert!(tree.nodes.contains_key("etc/b"));
        assert!(
            !tree.nodes.contains_key("opt/x/f"),
            "opaque dir hides lower entries"
        );
        assert!(
            tree.nodes.contains_key("opt/x/new"),
            "opaque dir keeps its own layer's entries, whatever the order"
        );
        assert!(tree.nodes.contains_key("keep"));
        assert!(
            !tree.nodes.keys().any(|k| k.contains(".wh.")),
            "markers are not content"
        );
        // A whiteout of a directory removes its subtree; a file may replace a directory.
        apply(
            &mut tree,
            2,
            &[E::File("opt/.wh.x", b""), E::File("etc", b"now a file")],
        )
        .expect("layer 2");
        assert!(!tree.nodes.keys().any(|k| k.starts_with("opt/x")));
        assert!(!tree.nodes.contains_key("etc/b"));
        assert!(matches!(tree.nodes["etc"].kind, Kind::File { .. }));
    }

    #[test]
    fn garbage_is_a_tar_error_not_a_panic() {
        let mut tree = Tree::new();
        let mut junk = vec![0x41u8; 512];
        junk.extend_from_slice(&[0; 1024]);
        assert!(tree.apply_layer(0, junk.as_slice()).is_err());
    }
}
