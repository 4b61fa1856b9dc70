//! User and group names as a stage's own `/etc/passwd` and `/etc/group`
//! define them: USER for RUN steps, `--chown` for COPY and ADD, the owner
//! of a directory WORKDIR makes.
//!
//! The two lookups follow BuildKit, which differs between them: USER is
//! resolved like runc's `GetExecUser` (a numeric uid that passwd lacks gets
//! gid 0; supplementary groups from `/etc/group`), while `--chown` and
//! WORKDIR go through BuildKit's file-operation lookup (a number alone is
//! both uid and gid; `root` is 0 without a lookup). Where BuildKit silently
//! falls back to root for a name the image does not define (`--chown`),
//! Hafen reports it instead: files owned by root that were meant for
//! `app` are a bug found only at run time.

use super::rootpath::{self, Look, Lookup};
use crate::dockerfile::expand::{Chown, IdOrName};
use crate::tree::Tree;

/// The largest id runc and BuildKit accept (`math.MaxInt32`).
const MAX_ID: u32 = i32::MAX as u32;

/// The process identity a RUN step gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Every group the process is in, the primary one first (what
    /// BuildKit puts into the OCI spec's `additionalGids`).
    pub additional_gids: Vec<u32>,
}

/// A user or group that cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// A user name that the stage's passwd file does not define.
    #[error("user {name:?} is not defined in the image: {}; create the user in an earlier step (RUN adduser ...) or give a numeric uid", if *passwd_exists { "/etc/passwd has no such user" } else { "it has no /etc/passwd" })]
    UnknownUser {
        /// The name.
        name: String,
        /// Whether there is a passwd file at all.
        passwd_exists: bool,
    },
    /// A group name that the stage's group file does not define.
    #[error("group {name:?} is not defined in the image: {}; create the group in an earlier step or give a numeric gid", if *group_exists { "/etc/group has no such group" } else { "it has no /etc/group" })]
    UnknownGroup {
        /// The name.
        name: String,
        /// Whether there is a group file at all.
        group_exists: bool,
    },
    /// An id above 2147483647.
    #[error("id {0} is out of range (at most 2147483647)")]
    OutOfRange(u64),
    /// Text that is no `user[:group]`.
    #[error("{0}")]
    Invalid(String),
}

impl From<UserError> for String {
    fn from(e: UserError) -> String {
        e.to_string()
    }
}

/// One line of `/etc/passwd`.
#[derive(Debug)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// One line of `/etc/group`.
#[derive(Debug)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Reads a file of the tree by its absolute path, following links inside
/// the tree; `None` when it is missing or no regular file (BuildKit then
/// treats it as empty).
fn read_etc(root: &Tree, path: &str) -> Option<String> {
    let real = rootpath::resolve(root, "", path, true).ok()?;
    match root.look(&real) {
        Some(Look::Other) => root.read_text(&real),
        _ => None,
    }
}

/// Fields split at `:`, lines trimmed; blank lines and comments skipped,
/// and lines whose numbers do not parse too (runc reads those as id 0,
/// which only ever hands out root by mistake).
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

fn passwd(text: &str) -> Vec<PasswdEntry> {
    records(text)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn groups(text: &str) -> Vec<GroupEntry> {
    records(text)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// A decimal id within range, `None` when `text` is not a number.
fn number(text: &str) -> Result<Option<u32>, UserError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match text.parse::<u64>() {
        Ok(n) if n <= u64::from(MAX_ID) => Ok(Some(n as u32)),
        Ok(n) => Err(UserError::OutOfRange(n)),
        Err(_) => Err(UserError::OutOfRange(u64::MAX)),
    }
}

/// An id of the `uid:gid` fast path: a number, or `root`.
fn fast_id(text: &str) -> Result<Option<u32>, UserError> {
    if text == "root" {
        return Ok(Some(0));
    }
    number(text)
}

/// Resolves USER (`""`, `name`, `uid`, `name:group`, `uid:gid`) as the
/// user a RUN step runs as, against the stage's root filesystem.
pub fn resolve_user(root: &Tree, user: &str) -> Result<ResolvedUser, UserError> {
    // An empty USER is uid 0, looked up like any uid (its group comes from
    // passwd when the image lists root).
    let spec = if user.is_empty() { "0" } else { user };
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // Both numeric (or root): no lookup at all.
    if let Some(g) = group_arg {
        if let (Some(uid), Some(gid)) = (fast_id(user_arg)?, fast_id(g)?) {
            return Ok(ResolvedUser {
                uid,
                gid,
                additional_gids: vec![gid],
            });
        }
    }
    let passwd_text = read_etc(root, "etc/passwd");
    let users = passwd_text.as_deref().map(passwd).unwrap_or_default();
    let uid_arg = number(user_arg)?;
    let found = users.iter().find(|u| match uid_arg {
        Some(uid) => u.uid == uid,
        None => u.name == user_arg,
    });
    let (uid, mut gid, matched) = match (found, uid_arg) {
        (Some(u), _) => (u.uid, u.gid, Some(u.name.as_str())),
        // A uid the image does not list runs with group 0.
        (None, Some(uid)) => (uid, 0, None),
        (None, None) => {
            return Err(UserError::UnknownUser {
                name: user_arg.to_owned(),
                passwd_exists: passwd_text.is_some(),
            })
        }
    };
    let group_text = read_etc(root, "etc/group");
    let all_groups = group_text.as_deref().map(groups).unwrap_or_default();
    let mut supplementary = Vec::new();
    match group_arg {
        Some(g) => {
            let gid_arg = number(g)?;
            let found = all_groups.iter().find(|e| match gid_arg {
                Some(gid) => e.gid == gid,
                None => e.name == g,
            });
            gid = match (found, gid_arg) {
                (Some(e), _) => e.gid,
                (None, Some(gid)) => gid,
                (None, None) => {
                    return Err(UserError::UnknownGroup {
                        name: g.to_owned(),
                        group_exists: group_text.is_some(),
                    })
                }
            };
        }
        None => {
            if let Some(name) = matched {
                supplementary = all_groups
                    .iter()
                    .filter(|e| e.members.iter().any(|m| m == name))
                    .map(|e| e.gid)
                    .collect();
            }
        }
    }
    let mut additional_gids = supplementary;
    if !additional_gids.contains(&gid) {
        additional_gids.insert(0, gid);
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

fn is_root(id: &IdOrName) -> bool {
    matches!(id, IdOrName::Name(n) if n == "root")
}

/// Resolves `--chown=user[:group]` to the owner copied files get: a name
/// from the stage's `/etc/passwd` (its primary group unless one is
/// given), a number alone as both uid and gid, a group from
/// `/etc/group`. `root` is 0 without a lookup.
pub fn resolve_chown(root: &Tree, chown: &Chown) -> Result<(u32, u32), UserError> {
    let (uid, mut gid) = match &chown.user {
        IdOrName::Id(id) => (*id, *id),
        user if is_root(user) => (0, 0),
        IdOrName::Name(name) => {
            let text = read_etc(root, "etc/passwd");
            let users = text.as_deref().map(passwd).unwrap_or_default();
            match users.iter().find(|u| &u.name == name) {
                Some(u) => (u.uid, u.gid),
                None => {
                    return Err(UserError::UnknownUser {
                        name: name.clone(),
                        passwd_exists: text.is_some(),
                    })
                }
            }
        }
    };
    match &chown.group {
        None => {}
        Some(IdOrName::Id(id)) => gid = *id,
        Some(group) if is_root(group) => gid = 0,
        Some(IdOrName::Name(name)) => {
            let text = read_etc(root, "etc/group");
            let all = text.as_deref().map(groups).unwrap_or_default();
            match all.iter().find(|g| &g.name == name) {
                Some(g) => gid = g.gid,
                None => {
                    return Err(UserError::UnknownGroup {
                        name: name.clone(),
                        group_exists: text.is_some(),
                    })
                }
            }
        }
    }
    for id in [uid, gid] {
        if id > MAX_ID {
            return Err(UserError::OutOfRange(u64::from(id)));
        }
    }
    Ok((uid, gid))
}

/// The owner of the directories WORKDIR makes: BuildKit passes the
/// stage's USER through the same lookup as `--chown` (so `USER 1000`
/// makes them 1000:1000 while RUN runs as 1000:0).
pub fn workdir_owner(root: &Tree, user: &str) -> Result<(u32, u32), UserError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let chown = Chown::parse(user).map_err(UserError::Invalid)?;
    resolve_chown(root, &chown)
}

/// Whether `--chown` names a user or group that needs a lookup (BuildKit
/// cannot look names up for `COPY --link`).
pub(crate) fn chown_needs_lookup(chown: &Chown) -> bool {
    let named = |id: &IdOrName| matches!(id, IdOrName::Name(_)) && !is_root(id);
    named(&chown.user) || chown.group.as_ref().is_some_and(named)
}
