//! Paths inside an image's root resolved the way a process chrooted into
//! it would see them: symbolic links are followed, an absolute target
//! counts from the root, and `..` never climbs above it (BuildKit resolves
//! COPY destinations, `/etc/passwd` and WORKDIR with continuity's
//! `fs.RootPath`, which behaves the same).

use crate::tree::{Kind, Tree};

/// Links followed before resolution gives up (continuity's limit).
const MAX_LINKS: usize = 255;

/// What a path is, as far as resolving paths goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Look {
    /// A directory.
    Dir,
    /// A symbolic link and its target.
    Symlink(String),
    /// Anything else.
    Other,
}

/// A filesystem that paths can be resolved in: relative, `/`-separated
/// paths, `""` for the root.
pub(crate) trait Lookup {
    /// What `path` is, `None` when nothing is there.
    fn look(&self, path: &str) -> Option<Look>;
}

impl Lookup for Tree {
    fn look(&self, path: &str) -> Option<Look> {
        if path.is_empty() {
            return Some(Look::Dir);
        }
        Some(match &self.nodes.get(path)?.kind {
            Kind::Dir => Look::Dir,
            Kind::Symlink(target) => Look::Symlink(target.clone()),
            _ => Look::Other,
        })
    }
}

/// Why a path cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// A name on the way is neither a directory nor a link to one.
    NotDir {
        /// The real path of that name.
        at: String,
    },
    /// A loop of symbolic links (or a very long chain).
    TooManyLinks {
        /// The link where resolution gave up.
        at: String,
    },
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::NotDir { at } => write!(f, "/{at} is not a directory"),
            Unresolved::TooManyLinks { at } => {
                write!(f, "too many levels of symbolic links at /{at}")
            }
        }
    }
}

/// Joins two relative paths, either of which may be empty.
pub(crate) fn join(base: &str, name: &str) -> String {
    match (base.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (false, true) => base.to_owned(),
        (false, false) => format!("{base}/{name}"),
    }
}

/// The parent of a relative path (`""` for a top-level name).
pub(crate) fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// The last name of a relative path.
pub(crate) fn file_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

/// Resolves `path` (relative to `jail`) inside `jail`, a real directory
/// of `view` (`""`: the root) that nothing may leave: links on the way
/// are followed (the last one too when `follow_last`), absolute targets
/// start again at `jail`, and `..` stops there. Names that do not exist
/// are kept as they are, so the result may name something to create.
pub(crate) fn resolve(
    view: &impl Lookup,
    jail: &str,
    path: &str,
    follow_last: bool,
) -> Result<String, Unresolved> {
    let mut real: Vec<String> = jail
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let floor = real.len();
    let mut todo: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .rev()
        .map(str::to_owned)
        .collect();
    let mut links = 0;
    // Once a name is missing nothing below it can exist: the rest is lexical.
    let mut missing = false;
    while let Some(name) = todo.pop() {
        if name == "." {
            continue;
        }
        if name == ".." {
            if real.len() > floor {
                real.pop();
            }
            continue;
        }
        real.push(name);
        if missing {
            continue;
        }
        let here = real.join("/");
        let last = todo.is_empty();
        match view.look(&here) {
            None => missing = true,
            Some(Look::Dir) => {}
            Some(Look::Symlink(target)) if !last || follow_last => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Unresolved::TooManyLinks { at: here });
                }
                real.pop();
                if target.starts_with('/') {
                    real.truncate(floor);
                }
                todo.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty() && *c != ".")
                        .rev()
                        .map(str::to_owned),
                );
            }
            Some(_) if !last => return Err(Unresolved::NotDir { at: here }),
            Some(_) => {}
        }
    }
    Ok(real.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::{tar_of, E};

    fn tree(entries: &[E]) -> Tree {
        let mut t = Tree::new();
        t.apply_layer(0, tar_of(entries).as_slice())
            .expect("test layer");
        t
    }

    #[test]
    fn links_resolve_inside_the_root_and_never_above_it() {
        let t = tree(&[
            E::Dir("usr/lib"),
            E::Symlink("lib", "usr/lib"),
            E::Symlink("abs", "/usr"),
            E::Symlink("up", "../../../../usr"),
            E::Symlink("loop", "loop"),
            E::File("file", b"x"),
            E::Symlink("dangling", "/nowhere/deep"),
            E::Symlink("usr/l2", "/lib"),
        ]);
        assert_eq!(resolve(&t, "", "lib/x.so", true), Ok("usr/lib/x.so".into()));
        assert_eq!(resolve(&t, "", "abs/lib", true), Ok("usr/lib".into()));
        assert_eq!(resolve(&t, "", "up/lib", true), Ok("usr/lib".into()));
        assert_eq!(resolve(&t, "", "../../etc", true), Ok("etc".into()));
        assert_eq!(resolve(&t, "", "lib", false), Ok("lib".into()));
        assert_eq!(
            resolve(&t, "", "dangling/x", true),
            Ok("nowhere/deep/x".into())
        );
        assert!(matches!(
            resolve(&t, "", "loop/x", true),
            Err(Unresolved::TooManyLinks { .. })
        ));
        assert_eq!(
            resolve(&t, "", "file/x", true),
            Err(Unresolved::NotDir { at: "file".into() })
        );
        // A jail: an absolute target starts again at the jail, not the root.
        assert_eq!(resolve(&t, "usr", "l2/x", true), Ok("usr/lib/x".into()));
        assert_eq!(resolve(&t, "usr", "../../x", true), Ok("usr/x".into()));
    }
}
