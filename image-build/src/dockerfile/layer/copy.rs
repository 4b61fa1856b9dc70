//! COPY and ADD as BuildKit's file operations do them (tonistiigi/fsutil's
//! `copy.Copy` with `CopyDirContents` and `FollowLinks`, moby's
//! go-archive `Untar` for ADD's archives), computed against the stage's
//! tree instead of a mounted snapshot.

use std::io::Read;
use std::sync::Arc;

use super::rootpath::{self, file_name, join, parent, Look, Lookup, Unresolved};
use super::sources::{Group, Item, ItemKind, Match, Sources};
use super::users::{chown_needs_lookup, resolve_chown};
use super::writer::{parent_is_dir, Layer, LinkKey, Out, OutKind};
use super::LayerTar;
use crate::dockerfile::context::ArchiveKind;
use crate::dockerfile::expand::{Chmod, CopyStep};
use crate::dockerfile::ErrorKind;
use crate::tree::{clean_path, Kind, Tree};

/// What every entry of one COPY or ADD shares.
struct Rules<'s> {
    step: &'s CopyStep,
    /// `--chown`, resolved.
    owner: Option<(u32, u32)>,
    /// Directories the step makes: BuildKit gives them an octal `--chmod`
    /// as is (0755 otherwise) and the `--chown` owner (root otherwise).
    made_mode: u32,
    made_owner: (u32, u32),
}

impl Rules<'_> {
    fn out(&self, item: &Item, link: Option<LinkKey>, layer: &Layer<'_>) -> Out {
        let is_dir = item.kind == ItemKind::Dir;
        let mode = match (&item.kind, &self.step.chmod) {
            (ItemKind::Symlink(_), _) => 0o777,
            (_, Some(chmod)) => chmod.apply(item.mode, is_dir) & 0o7777,
            (_, None) => item.mode,
        };
        let (uid, gid) = self.owner.unwrap_or((item.uid, item.gid));
        Out {
            kind: match &item.kind {
                ItemKind::Dir => OutKind::Dir,
                ItemKind::File(d) => OutKind::File(Arc::clone(d)),
                ItemKind::Symlink(t) => OutKind::Symlink(t.clone()),
                ItemKind::Char(a, b) => OutKind::Char(*a, *b),
                ItemKind::Block(a, b) => OutKind::Block(*a, *b),
                ItemKind::Fifo => OutKind::Fifo,
            },
            mode,
            uid,
            gid,
            mtime: layer.clamp(item.mtime),
            xattrs: item.xattrs.clone(),
            link,
        }
    }

    fn mkdir_all(&self, layer: &mut Layer<'_>, path: &str) -> Result<String, String> {
        layer
            .mkdir_all(path, self.made_mode, self.made_owner)
            .map_err(|e| {
                format!(
                    "cannot make the destination {}: {e}",
                    shown(path, self.step.dest_is_dir())
                )
            })
    }
}

/// A relative path as the user would write it.
fn shown(path: &str, dir: bool) -> String {
    if dir && !path.is_empty() {
        format!("/{path}/")
    } else {
        format!("/{path}")
    }
}

/// Makes the layer of a COPY or ADD.
pub(crate) fn copy(
    step: &CopyStep,
    sources: &Sources,
    dest_root: &Tree,
    keyword: &str,
    epoch: i64,
) -> Result<LayerTar, ErrorKind> {
    let invalid = |message: String| ErrorKind::Invalid {
        instruction: keyword.to_owned(),
        message,
    };
    // BuildKit only links (copies into an empty root and merges the
    // result) when no --chmod is given.
    let link = step.link && step.chmod.is_none();
    let owner = match &step.chown {
        Some(chown) if link && chown_needs_lookup(chown) => {
            return Err(ErrorKind::Unsupported {
                what: format!("{keyword} --link with a user or group name in --chown"),
                hint: "a linked copy cannot read the stage's /etc/passwd (BuildKit refuses it too): give numeric ids (--chown=1000:1000) or drop --link".into(),
            });
        }
        Some(chown) => {
            Some(resolve_chown(dest_root, chown).map_err(|e| invalid(format!("--chown: {e}")))?)
        }
        None => None,
    };
    let rules = Rules {
        step,
        owner,
        made_mode: match &step.chmod {
            Some(Chmod::Octal(m)) => *m,
            _ => 0o755,
        },
        made_owner: owner.unwrap_or((0, 0)),
    };
    let empty = Tree::new();
    let root = if link { &empty } else { dest_root };
    let mut layer = Layer::new(root, epoch);
    let dest = step.dest.trim_matches('/');
    // The directory that must exist first: the destination itself when it
    // is one, else its parent.
    let ensure = if step.dest_is_dir() {
        dest
    } else {
        parent(dest)
    };
    for (gi, group) in sources.groups.iter().enumerate() {
        copy_group(&rules, &mut layer, gi, group, dest, ensure).map_err(invalid)?;
    }
    Ok(layer.finish())
}

fn copy_group(
    rules: &Rules<'_>,
    layer: &mut Layer<'_>,
    gi: usize,
    group: &Group,
    dest: &str,
    ensure: &str,
) -> Result<(), String> {
    for (mi, m) in group.matches.iter().enumerate() {
        // An archive makes its destination itself (BuildKit unpacks
        // before it would copy, so the copy's parent making never runs).
        if m.archive.is_none() {
            rules.mkdir_all(layer, ensure)?;
        }
        let dst = rootpath::resolve(layer, "", dest, true).map_err(|e| {
            format!(
                "cannot copy to {}: {e}",
                shown(dest, rules.step.dest_is_dir())
            )
        })?;
        if m.archive.is_some() {
            unpack(rules, layer, gi, mi, &group.source, m, &dst)?;
        } else if m.top.kind == ItemKind::Dir {
            copy_dir(rules, layer, gi, &group.source, m, &dst)?;
        } else {
            copy_file(rules, layer, gi, &group.source, m, &dst)?;
        }
    }
    Ok(())
}

/// A directory source: its contents go into the destination, which is
/// made when missing (with the step's directory mode and owner, not the
/// source directory's: BuildKit copies only the time onto it).
fn copy_dir(
    rules: &Rules<'_>,
    layer: &mut Layer<'_>,
    gi: usize,
    source: &str,
    m: &Match,
    dst: &str,
) -> Result<(), String> {
    match layer.look(dst) {
        Some(Look::Dir) => {}
        Some(_) => {
            return Err(format!(
                "cannot copy the directory {source} to /{dst}: the image has a file there, not a directory"
            ))
        }
        None => {
            rules.mkdir_all(layer, dst)?;
        }
    }
    layer.set_dir_time(dst, layer.clamp(m.top.mtime));
    for item in &m.children {
        let path = join(dst, &item.rel);
        if !parent_is_dir(layer, &path) {
            return Err(format!(
                "cannot copy {source}/{}: /{} is not a directory in the image",
                item.rel,
                parent(&path)
            ));
        }
        let existing = layer.look(&path);
        if item.kind == ItemKind::Dir {
            if existing.is_some() && existing != Some(Look::Dir) {
                return Err(format!(
                    "cannot copy the directory {source}/{} to /{path}: the image has a file or link there (a copy never writes through links)",
                    item.rel
                ));
            }
        } else if existing == Some(Look::Dir) {
            return Err(format!(
                "cannot copy {source}/{} to /{path}: the image has a directory there, which a file cannot replace",
                item.rel
            ));
        }
        let out = rules.out(item, item.inode.map(|n| (gi, 0, n)), layer);
        layer.put(&path, out)?;
    }
    Ok(())
}

/// A file, link or device source: into the destination when that is a
/// directory, else as the destination.
fn copy_file(
    rules: &Rules<'_>,
    layer: &mut Layer<'_>,
    gi: usize,
    source: &str,
    m: &Match,
    dst: &str,
) -> Result<(), String> {
    let target = if layer.look(dst) == Some(Look::Dir) {
        join(dst, &m.name)
    } else {
        dst.to_owned()
    };
    if target.is_empty() {
        return Err(format!("cannot copy {source} over the image's root"));
    }
    // A destination reached through a link whose target's parent is missing.
    if !parent_is_dir(layer, &target) {
        rules.mkdir_all(layer, parent(&target))?;
    }
    if layer.look(&target) == Some(Look::Dir) {
        return Err(format!(
            "cannot copy {source} to /{target}: the image has a directory there, which a file cannot replace"
        ));
    }
    let out = rules.out(&m.top, m.top.inode.map(|n| (gi, 0, n)), layer);
    layer.put(&target, out)
}

/// An archive's entry name as a path inside the destination: a leading
/// `/` is dropped (go-archive does the same); `..` is refused anywhere.
fn entry_path(raw: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "its name is not UTF-8".to_owned())?;
    clean_path(text.trim_start_matches('/'))
}

fn unpack(
    rules: &Rules<'_>,
    layer: &mut Layer<'_>,
    gi: usize,
    mi: usize,
    source: &str,
    m: &Match,
    dst: &str,
) -> Result<(), String> {
    let ItemKind::File(data) = &m.top.kind else {
        return Err(format!("{source} is not a file and cannot be unpacked"));
    };
    // The destination is always a directory here, made 0755 (BuildKit does
    // not give it --chmod) with the --chown owner.
    match layer.look(dst) {
        Some(Look::Dir) => {}
        Some(_) => {
            return Err(format!(
                "cannot unpack {source} into /{dst}: the image has a file there, not a directory"
            ))
        }
        None => {
            layer
                .mkdir_all(dst, 0o755, rules.made_owner)
                .map_err(|e| format!("cannot unpack {source} into /{dst}: {e}"))?;
        }
    }
    let bad = |what: String| format!("cannot unpack {source}: {what}");
    let reader: Box<dyn Read + '_> = match m.archive {
        Some(ArchiveKind::TarGzip) => Box::new(flate2::read::GzDecoder::new(data.as_slice())),
        Some(ArchiveKind::TarZstd) => Box::new(
            zstd::stream::read::Decoder::new(data.as_slice())
                .map_err(|e| bad(format!("zstd: {e}")))?,
        ),
        _ => Box::new(data.as_slice()),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a valid tar archive: {e}")))?;
    let mut next_id = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("not a valid tar archive: {e}")))?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel =
            entry_path(&entry.path_bytes()).map_err(|r| bad(format!("entry {raw:?}: {r}")))?;
        if rel.is_empty() {
            continue; // the destination itself
        }
        // Links on the way are followed inside the destination, as
        // go-archive does; the last name is replaced, never followed.
        let parent_real = rootpath::resolve(layer, dst, parent(&rel), true)
            .map_err(|e| bad(format!("entry {raw:?}: {e}")))?;
        let path = join(&parent_real, file_name(&rel));
        // Parents the archive does not list: 0755 root:root (go-archive's
        // implied directories do not take --chown).
        if !parent_is_dir(layer, &path) {
            layer
                .mkdir_all(&parent_real, 0o755, (0, 0))
                .map_err(|e| bad(format!("entry {raw:?}: {e}")))?;
        }
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| bad(format!("entry {raw:?}: {e}")))?
        {
            for ext in pax.flatten() {
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
        xattrs.sort();
        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| bad(format!("entry {raw:?}: {e}")))?
            & 0o7777;
        // An empty or unreadable id field is 0, as Go's tar reader has it.
        let id = |n: std::io::Result<u64>| -> Result<u32, String> {
            u32::try_from(n.unwrap_or(0))
                .map_err(|_| bad(format!("entry {raw:?}: its owner is out of range")))
        };
        let (uid, gid) = match rules.owner {
            Some(o) => o,
            None => (id(header.uid())?, id(header.gid())?),
        };
        let mtime = layer.clamp(header.mtime().ok().and_then(|t| i64::try_from(t).ok()));
        let device = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
        let link_name = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut link = None;
        let out_kind = if kind.is_dir() {
            OutKind::Dir
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(format!("entry {raw:?}: {e}")))?;
            next_id += 1;
            link = Some((gi, mi + 1, next_id));
            OutKind::File(Arc::new(bytes))
        } else if kind.is_symlink() {
            match link_name {
                Some(t) if !t.is_empty() && !t.contains('\0') => OutKind::Symlink(t),
                _ => return Err(bad(format!("entry {raw:?}: a link without a target"))),
            }
        } else if kind.is_hard_link() {
            let target = link_name.unwrap_or_default();
            let rel_target = clean_path(target.trim_start_matches('/'))
                .map_err(|r| bad(format!("entry {raw:?}: hard link target {target:?}: {r}")))?;
            let real_parent = rootpath::resolve(layer, dst, parent(&rel_target), true)
                .map_err(|e| bad(format!("entry {raw:?}: {e}")))?;
            let real_target = join(&real_parent, file_name(&rel_target));
            if let Some(out) = layer.added_mut(&real_target) {
                match &out.kind {
                    OutKind::File(d) => {
                        let d = Arc::clone(d);
                        next_id += 1;
                        let key = *out.link.get_or_insert((gi, mi + 1, next_id));
                        link = Some(key);
                        OutKind::File(d)
                    }
                    _ => {
                        return Err(bad(format!(
                            "entry {raw:?}: hard link target {target:?} is not a regular file"
                        )))
                    }
                }
            } else {
                // A file the image had before: a layer cannot link to it,
                // so it gets its own copy of the content.
                match layer.root_node(&real_target).map(|n| &n.kind) {
                    Some(Kind::File { data, .. }) => OutKind::File(Arc::clone(data)),
                    _ => {
                        return Err(bad(format!(
                            "entry {raw:?}: hard link target {target:?} is not a file of the archive or the image"
                        )))
                    }
                }
            }
        } else if kind.is_character_special() {
            OutKind::Char(device.0, device.1)
        } else if kind.is_block_special() {
            OutKind::Block(device.0, device.1)
        } else if kind.is_fifo() {
            OutKind::Fifo
        } else {
            return Err(bad(format!(
                "entry {raw:?}: unsupported entry type {:?}",
                kind
            )));
        };
        let out = Out {
            mode: if matches!(out_kind, OutKind::Symlink(_)) {
                0o777
            } else {
                mode
            },
            kind: out_kind,
            uid,
            gid,
            mtime,
            xattrs,
            link,
        };
        layer.put(&path, out).map_err(bad)?;
    }
    Ok(())
}

/// Makes the layer of a WORKDIR: the directory and its missing parents,
/// 0755, owned by `owner`; `None` when it already is a directory.
pub(crate) fn workdir(
    dest_root: &Tree,
    path: &str,
    owner: (u32, u32),
    epoch: i64,
) -> Result<Option<LayerTar>, String> {
    let rel = path.trim_matches('/');
    let mut layer = Layer::new(dest_root, epoch);
    let real = rootpath::resolve(&layer, "", rel, true)
        .map_err(|e| format!("cannot make the directory {path}: {e}"))?;
    match layer.look(&real) {
        Some(Look::Dir) => return Ok(None),
        Some(_) => {
            return Err(format!(
                "cannot make the directory {path}: the image has a file there"
            ))
        }
        None => {}
    }
    layer
        .mkdir_all(&real, 0o755, owner)
        .map_err(|e: Unresolved| format!("cannot make the directory {path}: {e}"))?;
    Ok(Some(layer.finish()))
}
