//! The host's share of `hafen image build`: the layers COPY, ADD and
//! WORKDIR make, computed as the build's ordinary user against the stage's
//! root filesystem as a [`Tree`] (its base layers and every layer made so
//! far, applied in order), plus the user and group lookups RUN and
//! `--chown` need. Nothing is written to disk and nothing is chowned:
//! owners live in the tar headers.
//!
//! # Use
//! - [`Sources::gather`] reads what a COPY or ADD selects (from the
//!   context, or from another stage's or image's flattened root with
//!   `COPY --from`), once; [`Sources::digest`] keys the cache with it and,
//!   on a miss, [`Sources::layer`] makes the layer from the same reading.
//!   [`source_digest`] and [`copy_layer`] do both steps in one call each
//!   (reading the sources twice).
//! - [`workdir_layer`] makes WORKDIR's directory, owned by
//!   [`workdir_owner`].
//! - [`resolve_user`] is a RUN step's uid, gid and groups; [`resolve_chown`]
//!   is `--chown`'s owner.
//!
//! Errors name the instruction's source or destination; the caller adds
//! the Dockerfile and line.
//!
//! # The rules (BuildKit's, checked in its source)
//! - A directory source copies its contents. A file goes into the
//!   destination when that ends with `/` or is a directory in the stage
//!   (after links), else becomes it. Several sources or a wildcard need a
//!   destination ending with `/`.
//! - Missing directories of the destination are made with mode 0755 (an
//!   octal `--chmod` as it is: BuildKit does so, even `--chmod=644`) and
//!   the `--chown` owner (root otherwise). A directory source's
//!   destination made that way keeps that mode and owner; only its time
//!   comes from the source directory.
//! - The destination is resolved in the stage's root: links are followed,
//!   an absolute target counts from the root, `..` never leaves it. Below
//!   the destination nothing is written through a link: a directory where
//!   the image has a file or link, or a file where it has a directory, is
//!   an error; a file over a file or link replaces it.
//! - Modes come from the source (`--chmod` applied to every file and
//!   directory, never to links), owners are 0:0 for context files (BuildKit
//!   resets them when it sends the context) and the source's for
//!   `COPY --from`, unless `--chown`. Links are copied as links; hard links
//!   within one source stay hard links. Extended attributes of context
//!   files are kept (BuildKit sends and copies them) except macOS ones and
//!   `security.selinux` (a host's label, which would make the same build
//!   differ between hosts); a stage's tree carries none.
//! - Times: a file's own time, but never later than the build's epoch
//!   (`SOURCE_DATE_EPOCH` or the fixed one), so checkouts made at
//!   different times give the same bytes. Directories made by the step,
//!   files from a stage's tree (which keeps no times), heredoc files and
//!   the parent directories a layer lists get the epoch.
//! - ADD unpacks a local tar (plain, gzip, zstd; [`Matched::archive`]
//!   decides) into the destination, which is always a directory (0755,
//!   `--chown` owner). Entries keep the archive's owners unless
//!   `--chown`, and their modes (`--chmod` does not apply); directories
//!   the archive implies are 0755 root:root. Links on an entry's way are
//!   followed inside the destination; `..` in a name is refused (stricter
//!   than go-archive, which allows it while it stays inside); an entry
//!   replaces what is at its path unless both are directories. A hard
//!   link to a file the image had before gets its own copy.
//! - `--link` (without `--chmod`: BuildKit ignores `--link` then) builds
//!   the layer over an empty root, so the layer does not depend on the
//!   stage: the destination is never resolved through the stage's links,
//!   and every directory up to it is listed with the made-directory mode
//!   and owner. `--link` with a user or group name in `--chown` is refused
//!   (BuildKit fails on it too).
//! - A name starting with `.wh.` is refused: in a layer it would delete a
//!   file instead of being one. Sockets are left out.
//! - `--chown` names come from the stage's `/etc/passwd` and
//!   `/etc/group` (followed through links inside the stage); a name they
//!   lack is an error, where BuildKit would silently use root.
//!
//! # The tar
//! Entries in name order (parents first), every parent directory listed
//! (with the stage's mode and owner, at the epoch), ustar headers without
//! user or group names, PAX records only for long names, extended
//! attributes and ids or sizes ustar cannot hold, hard links as links to
//! the first path in name order. The same input gives the same bytes.
//!
//! [`Matched::archive`]: super::context::Matched::archive

mod copy;
mod rootpath;
mod sources;
mod tarball;
mod users;
mod writer;

#[cfg(test)]
mod tests;

pub use sources::Sources;
pub use users::{resolve_chown, resolve_user, workdir_owner, ResolvedUser, UserError};

use super::context::Context;
use super::expand::CopyStep;
use super::ErrorKind;
use crate::tree::Tree;

/// Where a COPY or ADD reads from.
#[derive(Debug, Clone, Copy)]
pub enum CopySource<'a> {
    /// The build context.
    Context(&'a Context),
    /// Another stage's or an image's flattened root (`COPY --from`).
    Tree(&'a Tree),
}

/// A layer made on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerTar {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// `sha256:` and the hex digest of `tar` (the layer's diff ID).
    pub diff_id: String,
}

impl Sources {
    /// The layer `step` makes on `dest_root`, the stage's current root
    /// (`keyword` names the instruction in errors; `epoch` is the build's
    /// time in seconds).
    pub fn layer(
        &self,
        step: &CopyStep,
        dest_root: &Tree,
        keyword: &str,
        epoch: i64,
    ) -> Result<LayerTar, ErrorKind> {
        copy::copy(step, self, dest_root, keyword, epoch)
    }
}

/// The layer a COPY or ADD makes: [`Sources::gather`] then
/// [`Sources::layer`].
pub fn copy_layer(
    step: &CopyStep,
    source: CopySource<'_>,
    dest_root: &Tree,
    keyword: &str,
    epoch: i64,
) -> Result<LayerTar, ErrorKind> {
    Sources::gather(step, source, keyword)?.layer(step, dest_root, keyword, epoch)
}

/// The cache digest of what a COPY or ADD reads: [`Sources::gather`] then
/// [`Sources::digest`].
pub fn source_digest(
    step: &CopyStep,
    source: CopySource<'_>,
    keyword: &str,
) -> Result<String, ErrorKind> {
    Ok(Sources::gather(step, source, keyword)?.digest())
}

/// The layer WORKDIR makes: `path` (absolute) and its missing parents,
/// mode 0755, owned by `owner` (see [`workdir_owner`]), at `epoch`.
/// `None` when the directory exists (through links, too); an error when a
/// file is in the way.
pub fn workdir_layer(
    dest_root: &Tree,
    path: &str,
    owner: (u32, u32),
    epoch: i64,
) -> Result<Option<LayerTar>, String> {
    copy::workdir(dest_root, path, owner, epoch)
}
