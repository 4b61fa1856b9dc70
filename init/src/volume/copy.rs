//! The volume copier behind `hafen volume export|import`: hafen-init run as
//! [`PROGRAM_NAME`], a short-lived child of PID 1 with the archive on its
//! stdout (export) or stdin (import) and its messages on stderr. Walking a
//! large tree or unpacking a hostile archive happens here, never in PID 1.
//!
//! **Export** writes the volume as a pax archive (see [`super::archive`]):
//! every file's data, owner, mode, nanosecond mtime and extended
//! attributes, symlinks, hard links, devices and FIFOs, in name order, so
//! the same content always gives the same bytes. PID 1 freezes the running
//! containers that mount the volume first (their cgroups), and the copier
//! waits until the kernel says they are frozen, so the copy is consistent.
//!
//! **Import** unpacks into `.import-NAME` beside the volume, resolving
//! every path with `openat2(RESOLVE_BENEATH)` from that directory (a
//! symlink in the archive can never lead a later entry out of it), syncs
//! the file system, and only then swaps it with the volume in one
//! `renameat2(RENAME_EXCHANGE)`; the old content is removed afterwards. A
//! bad or truncated archive, or a full disk, leaves the volume as it was.

use std::ffi::{CString, OsString};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;

use super::archive::{self, Entry, Kind};
use hafen_proto::layout::{valid_volume_name, VOLUMES_DIR};

/// The program name (argv[0]) that selects the copier.
pub const PROGRAM_NAME: &str = "hafen-volume-copy";
/// How long export waits for the containers to freeze.
const FREEZE_WAIT: Duration = Duration::from_secs(10);
/// The staging directory's prefix; PID 1 removes leftovers at boot.
pub const STAGING_PREFIX: &str = ".import-";

/// The copier's entry point: `export NAME [--frozen CGROUP_DIR]...` or
/// `import NAME`. Returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let result = match args.as_slice() {
        [verb, name, rest @ ..] if verb == "export" => {
            let frozen: Vec<&str> = rest
                .chunks(2)
                .filter_map(|pair| match pair {
                    [flag, dir] if flag == "--frozen" => Some(dir.as_str()),
                    _ => None,
                })
                .collect();
            checked(name).and_then(|()| export(name, &frozen))
        }
        [verb, name] if verb == "import" => checked(name).and_then(|()| import(name)),
        _ => Err(format!(
            "usage: {PROGRAM_NAME} export NAME [--frozen CGROUP]... | import NAME"
        )),
    };
    match result {
        Ok(summary) => {
            eprintln!("{summary}");
            0
        }
        Err(e) => {
            eprintln!("hafen: {e}");
            1
        }
    }
}

fn checked(name: &str) -> Result<(), String> {
    if valid_volume_name(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a volume name"))
    }
}

fn errno(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

/// `/proc/self/fd/DIR/NAME`: `name` in `dir`, as a path the `l*xattr`
/// calls take without following a symlink at the end.
fn fd_path(dir: BorrowedFd<'_>, name: &[u8]) -> CString {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    // Names from a directory or a normalized archive path hold no NUL.
    CString::new(path).unwrap_or_default()
}

/// Waits until each cgroup in `dirs` reports `frozen 1` (or is gone).
fn wait_frozen(dirs: &[&str]) -> Result<(), String> {
    let deadline = Instant::now() + FREEZE_WAIT;
    for dir in dirs {
        // Gone (the container ended meanwhile): nothing of it runs.
        while let Ok(events) = std::fs::read_to_string(Path::new(dir).join("cgroup.events")) {
            if events.lines().any(|l| l == "frozen 1") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{dir} did not freeze within {} s; nothing was exported",
                    FREEZE_WAIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// Sorted names in `dir`, without `.` and `..`.
fn names(dir: &OwnedFd) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(errno)? {
        let entry = entry.map_err(errno)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// Extended attributes of `path` (an `l*xattr` path) or of `fd`, sorted.
fn read_xattrs(target: XattrTarget<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut list = vec![0u8; 64 * 1024];
    let listed = match &target {
        XattrTarget::Path(p) => rustix::fs::llistxattr(p.as_c_str(), &mut list[..]),
        XattrTarget::Fd(fd) => rustix::fs::flistxattr(fd, &mut list[..]),
    };
    let Ok(len) = listed else {
        return Vec::new();
    };
    let mut value = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    for name in list[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(c_name) = CString::new(name) else {
            continue;
        };
        let got = match &target {
            XattrTarget::Path(p) => rustix::fs::lgetxattr(p.as_c_str(), &c_name, &mut value[..]),
            XattrTarget::Fd(fd) => rustix::fs::fgetxattr(fd, &c_name, &mut value[..]),
        };
        if let Ok(n) = got {
            out.push((name.to_vec(), value[..n].to_vec()));
        }
    }
    out.sort();
    out
}

enum XattrTarget<'a> {
    Path(CString),
    Fd(BorrowedFd<'a>),
}

fn entry_from(stat: &rustix::fs::Stat, path: Vec<u8>) -> Option<Entry> {
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::CharacterDevice => Kind::Char,
        FileType::BlockDevice => Kind::Block,
        FileType::Fifo => Kind::Fifo,
        _ => return None,
    };
    let device = rustix::fs::Dev::from(stat.st_rdev);
    Some(Entry {
        path,
        kind,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        size: if kind == Kind::File {
            stat.st_size as u64
        } else {
            0
        },
        mtime: (stat.st_mtime, stat.st_mtime_nsec as u32),
        link: Vec::new(),
        device: (rustix::fs::major(device), rustix::fs::minor(device)),
        xattrs: Vec::new(),
    })
}

/// How [`pack_with`] writes a tree; the default is a volume export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackOptions {
    /// The tree is an image layer in overlayfs form, written as an OCI
    /// layer: a whiteout (a 0/0 character device `NAME`) becomes an empty
    /// file `.wh.NAME`, an opaque directory (`trusted.overlay.opaque=y`) is
    /// followed by an empty `DIR/.wh..wh..opq`, no `trusted.overlay.*`
    /// attribute is written, and the root itself is no entry.
    pub layer: bool,
    /// Every modification time later than this (seconds) is written as it.
    pub clamp_mtime: Option<i64>,
}

/// The prefix OCI layers mark whiteouts with.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name of an OCI layer's opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The extended attribute that makes an overlayfs directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The attributes overlayfs keeps for itself; never part of a layer.
const OVERLAY_XATTRS: &[u8] = b"trusted.overlay.";

/// Whether `stat` is an overlayfs whiteout: a character device 0/0.
fn is_whiteout(stat: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice && stat.st_rdev == 0
}

/// `rel/name` (or `name` at the top).
fn child_path(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = rel.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// An empty root-owned file with mode 0: how an OCI layer writes a whiteout
/// or an opaque marker.
fn marker_entry(path: Vec<u8>, mtime: (i64, u32)) -> Entry {
    Entry {
        path,
        kind: Kind::File,
        mode: 0,
        uid: 0,
        gid: 0,
        size: 0,
        mtime,
        link: Vec::new(),
        device: (0, 0),
        xattrs: Vec::new(),
    }
}

struct Exporter<W: Write> {
    tar: archive::Writer<W>,
    opts: PackOptions,
    /// The first path of each multiply-linked inode.
    links: std::collections::HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    bytes: u64,
}

impl<W: Write> Exporter<W> {
    fn write(&mut self, e: &Entry) -> Result<(), String> {
        self.entries += 1;
        let adjusted;
        let e = if self.opts == PackOptions::default() {
            e
        } else {
            let mut copy = e.clone();
            if let Some(epoch) = self.opts.clamp_mtime {
                if copy.mtime > (epoch, 0) {
                    copy.mtime = (epoch, 0);
                }
            }
            if self.opts.layer {
                copy.xattrs
                    .retain(|(name, _)| !name.starts_with(OVERLAY_XATTRS));
            }
            adjusted = copy;
            &adjusted
        };
        self.tar
            .header(e)
            .map_err(|err| format!("write the archive (at {}): {err}", e.display()))
    }

    /// In a layer: the opaque marker for the directory at `rel` whose
    /// attributes are `xattrs`, when it is opaque.
    fn opaque_marker(
        &mut self,
        rel: &[u8],
        xattrs: &[(Vec<u8>, Vec<u8>)],
        mtime: (i64, u32),
    ) -> Result<(), String> {
        let opaque = xattrs
            .iter()
            .any(|(name, value)| name == OPAQUE_XATTR.as_bytes() && value == b"y");
        if self.opts.layer && opaque {
            self.write(&marker_entry(child_path(rel, OPAQUE_MARKER), mtime))?;
        }
        Ok(())
    }

    /// Archives what `dir` (at `rel` in the volume) holds, depth first.
    fn walk(&mut self, dir: &OwnedFd, rel: &[u8]) -> Result<(), String> {
        let shown = |name: &[u8]| String::from_utf8_lossy(name).into_owned();
        let mut names = names(dir).map_err(|e| format!("read directory ./{}: {e}", shown(rel)))?;
        if self.opts.layer {
            // Whiteouts are written as `.wh.NAME`, in the order of the
            // written names (a real `.wh.` name would be taken for one).
            for name in &mut names {
                let stat = rustix::fs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| format!("stat ./{}: {e}", shown(&child_path(rel, name))))?;
                if is_whiteout(&stat) {
                    name.splice(0..0, WHITEOUT_PREFIX.iter().copied());
                } else if name.starts_with(WHITEOUT_PREFIX) {
                    return Err(format!(
                        "./{} has a name OCI layers reserve for whiteouts (.wh.*)",
                        shown(&child_path(rel, name))
                    ));
                }
            }
            names.sort();
        }
        for written in names {
            let whiteout = self.opts.layer && written.starts_with(WHITEOUT_PREFIX);
            let name = if whiteout {
                &written[WHITEOUT_PREFIX.len()..]
            } else {
                &written[..]
            };
            let path = child_path(rel, name);
            let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| format!("stat ./{}: {e}", shown(&path)))?;
            if whiteout {
                // Its own marker, never a hard link (overlayfs links its
                // whiteouts to one inode).
                let mtime = (stat.st_mtime, stat.st_mtime_nsec as u32);
                self.write(&marker_entry(child_path(rel, &written), mtime))?;
                continue;
            }
            let Some(mut e) = entry_from(&stat, path) else {
                eprintln!("hafen: skipped ./{} (a socket)", shown(name));
                continue;
            };
            e.xattrs = read_xattrs(XattrTarget::Path(fd_path(dir.as_fd(), name)));
            if e.kind != Kind::Dir && stat.st_nlink > 1 {
                let key = (stat.st_dev, stat.st_ino);
                if let Some(first) = self.links.get(&key) {
                    e.kind = Kind::HardLink;
                    e.link = first.clone();
                    e.size = 0;
                    e.xattrs.clear();
                    self.write(&e)?;
                    continue;
                }
                self.links.insert(key, e.path.clone());
            }
            match e.kind {
                Kind::Symlink => {
                    e.link = rustix::fs::readlinkat(dir, name, Vec::new())
                        .map_err(|err| format!("read symlink ./{}: {err}", e.display()))?
                        .into_bytes();
                    self.write(&e)?;
                }
                Kind::File => {
                    let fd = rustix::fs::openat(
                        dir,
                        name,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|err| format!("open ./{}: {err}", e.display()))?;
                    self.write(&e)?;
                    let mut file = std::fs::File::from(fd);
                    let copied = self
                        .tar
                        .data(&mut file, e.size)
                        .map_err(|err| format!("copy ./{}: {err}", e.display()))?;
                    if copied != e.size {
                        eprintln!(
                            "hafen: ./{} changed size while it was read; archived {} bytes",
                            e.display(),
                            e.size
                        );
                    }
                    self.bytes += e.size;
                }
                Kind::Dir => {
                    let sub = rustix::fs::openat(
                        dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|err| format!("open directory ./{}: {err}", e.display()))?;
                    self.write(&e)?;
                    self.opaque_marker(&e.path, &e.xattrs, e.mtime)?;
                    self.walk(&sub, &e.path)?;
                }
                _ => self.write(&e)?,
            }
        }
        Ok(())
    }
}

fn open_volume(name: &str) -> Result<OwnedFd, String> {
    rustix::fs::open(
        super::volume_dir(name).as_path(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => format!(
            "volume {name} does not exist yet (no container that mounts it has started, and nothing was imported)"
        ),
        e => format!("open volume {name}: {e}"),
    })
}

/// Writes the tree under `root` to `out` as an archive; returns the
/// entries and file bytes.
pub fn pack(root: &OwnedFd, out: impl Write) -> Result<(u64, u64), String> {
    pack_with(root, out, PackOptions::default())
}

/// [`pack`] as `opts` say (an OCI layer, clamped times).
pub fn pack_with(root: &OwnedFd, out: impl Write, opts: PackOptions) -> Result<(u64, u64), String> {
    let stat = rustix::fs::fstat(root).map_err(|e| format!("stat the volume: {e}"))?;
    let mut exporter = Exporter {
        tar: archive::Writer::new(BufWriter::with_capacity(64 * 1024, out)),
        opts,
        links: Default::default(),
        entries: 0,
        bytes: 0,
    };
    let mut top = entry_from(&stat, Vec::new()).ok_or("the volume is not a directory")?;
    top.xattrs = read_xattrs(XattrTarget::Fd(root.as_fd()));
    if opts.layer {
        exporter.opaque_marker(b"", &top.xattrs, top.mtime)?;
    } else {
        exporter.write(&top)?;
    }
    exporter.walk(root, b"")?;
    let Exporter {
        tar,
        entries,
        bytes,
        ..
    } = exporter;
    tar.finish()
        .map_err(|e| format!("write the archive: {e}"))?;
    Ok((entries, bytes))
}

fn export(name: &str, frozen: &[&str]) -> Result<String, String> {
    wait_frozen(frozen)?;
    let root = open_volume(name)?;
    let stdout = rustix::stdio::stdout()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| format!("stdout: {e}"))?;
    let (entries, bytes) = pack(&root, stdout)?;
    Ok(format!(
        "exported volume {name}: {entries} entries, {bytes} bytes of file data"
    ))
}

/// Unpacks archive entries beneath one directory.
struct Extractor {
    root: OwnedFd,
    /// The last parent directory opened, by path (archives are ordered).
    parent: Option<(Vec<u8>, OwnedFd)>,
    /// Directories' mtimes, set once nothing more is made in them.
    dir_times: Vec<(Vec<u8>, (i64, u32))>,
    root_seen: bool,
    warnings: u32,
    /// Unpacking an OCI layer ([`UnpackOptions::layer`]).
    layer: bool,
}

fn timestamps((secs, nanos): (i64, u32)) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nanos.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn beneath(dir: BorrowedFd<'_>, path: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        dir,
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
}

impl Extractor {
    /// `path`'s directory (made when missing) and its last component.
    fn parent<'p>(&mut self, path: &'p [u8]) -> Result<(OwnedFd, &'p [u8]), String> {
        let (dir, leaf) = match path.iter().rposition(|&b| b == b'/') {
            Some(slash) => (&path[..slash], &path[slash + 1..]),
            None => (&b""[..], path),
        };
        if let Some((cached, fd)) = &self.parent {
            if cached == dir {
                return fd
                    .try_clone()
                    .map(|fd| (fd, leaf))
                    .map_err(|e| e.to_string());
            }
        }
        let shown = String::from_utf8_lossy(path).into_owned();
        let mut fd = beneath(self.root.as_fd(), b".", OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| format!("open the staging directory: {e}"))?;
        for part in dir.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            let next = match beneath(fd.as_fd(), part, OFlags::PATH | OFlags::DIRECTORY) {
                Err(Errno::NOENT) => rustix::fs::mkdirat(&fd, part, Mode::from_raw_mode(0o755))
                    .and_then(|()| beneath(fd.as_fd(), part, OFlags::PATH | OFlags::DIRECTORY)),
                other => other,
            };
            fd = next.map_err(|e| match e {
                Errno::XDEV | Errno::LOOP => format!(
                    "entry {shown:?}: its directory is reached through a symlink that leads out of the volume"
                ),
                Errno::NOTDIR => format!("entry {shown:?}: a part of its directory is not a directory"),
                e => format!("entry {shown:?}: open its directory: {e}"),
            })?;
        }
        let copy = fd.try_clone().map_err(|e| e.to_string())?;
        self.parent = Some((dir.to_vec(), copy));
        Ok((fd, leaf))
    }

    /// Removes what is at `leaf` unless `e` is a directory landing on one.
    fn make_room(&self, parent: &OwnedFd, leaf: &[u8], e: &Entry) -> Result<bool, String> {
        let existing = match rustix::fs::statat(parent, leaf, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => FileType::from_raw_mode(stat.st_mode),
            Err(Errno::NOENT) => return Ok(false),
            Err(err) => return Err(format!("entry {}: {err}", e.display())),
        };
        if existing == FileType::Directory {
            if e.kind == Kind::Dir {
                return Ok(true);
            }
            rustix::fs::unlinkat(parent, leaf, AtFlags::REMOVEDIR).map_err(|err| {
                format!(
                    "entry {} would replace a directory of the same name: {err}",
                    e.display()
                )
            })?;
        } else {
            rustix::fs::unlinkat(parent, leaf, AtFlags::empty())
                .map_err(|err| format!("entry {}: replace the earlier one: {err}", e.display()))?;
        }
        Ok(false)
    }

    /// Unpacks `e`, whose data (for a file) `data` yields.
    fn extract(&mut self, e: &Entry, data: &mut dyn Read) -> Result<u64, String> {
        let fail = |what: &str, err: &dyn std::fmt::Display| {
            let hint = if err.to_string().contains("No space left") {
                " (the data disk is full; the volume is unchanged)"
            } else {
                ""
            };
            format!("entry {}: {what}: {err}{hint}", e.display())
        };
        if e.path.is_empty() {
            if e.kind != Kind::Dir {
                return Err("the archive's root entry is not a directory".into());
            }
            self.root_seen = true;
            rustix::fs::fchown(&self.root, Some(uid(e.uid)), Some(gid(e.gid)))
                .map_err(|err| fail("chown", &err))?;
            rustix::fs::fchmod(&self.root, Mode::from_raw_mode(e.mode))
                .map_err(|err| fail("chmod", &err))?;
            for (name, value) in &e.xattrs {
                set_xattr(
                    XattrTarget::Fd(self.root.as_fd()),
                    name,
                    value,
                    e,
                    &mut self.warnings,
                );
            }
            self.dir_times.push((Vec::new(), e.mtime));
            return Ok(0);
        }
        let (parent, leaf) = self.parent(&e.path)?;
        let is_dir = self.make_room(&parent, leaf, e)?;
        let mode = Mode::from_raw_mode(e.mode);
        let mut written = 0;
        match e.kind {
            Kind::File => {
                let fd = rustix::fs::openat(
                    &parent,
                    leaf,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|err| fail("create", &err))?;
                let mut file = std::fs::File::from(fd);
                written = std::io::copy(&mut data.take(e.size), &mut file)
                    .map_err(|err| fail("write", &err))?;
                if written != e.size {
                    return Err(fail("write", &"the archive ended inside the file"));
                }
                rustix::fs::fchown(&file, Some(uid(e.uid)), Some(gid(e.gid)))
                    .map_err(|err| fail("chown", &err))?;
                rustix::fs::fchmod(&file, mode).map_err(|err| fail("chmod", &err))?;
                rustix::fs::futimens(&file, &timestamps(e.mtime))
                    .map_err(|err| fail("set its mtime", &err))?;
            }
            Kind::HardLink => {
                let (target_dir, target) = self.parent(&e.link)?;
                rustix::fs::linkat(&target_dir, target, &parent, leaf, AtFlags::empty()).map_err(
                    |err| {
                        fail(
                            &format!("link to {}", String::from_utf8_lossy(&e.link)),
                            &err,
                        )
                    },
                )?;
                return Ok(0);
            }
            Kind::Symlink => {
                rustix::fs::symlinkat(e.link.as_slice(), &parent, leaf)
                    .map_err(|err| fail("make the symlink", &err))?;
            }
            Kind::Dir => {
                if !is_dir {
                    rustix::fs::mkdirat(&parent, leaf, Mode::from_raw_mode(0o700))
                        .map_err(|err| fail("make the directory", &err))?;
                }
                self.dir_times.push((e.path.clone(), e.mtime));
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (file_type, dev) = match e.kind {
                    Kind::Char => (
                        FileType::CharacterDevice,
                        rustix::fs::makedev(e.device.0, e.device.1),
                    ),
                    Kind::Block => (
                        FileType::BlockDevice,
                        rustix::fs::makedev(e.device.0, e.device.1),
                    ),
                    _ => (FileType::Fifo, 0),
                };
                rustix::fs::mknodat(&parent, leaf, file_type, Mode::from_raw_mode(0o600), dev)
                    .map_err(|err| fail("make the node", &err))?;
            }
        }
        if e.kind != Kind::File {
            rustix::fs::chownat(
                &parent,
                leaf,
                Some(uid(e.uid)),
                Some(gid(e.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|err| fail("chown", &err))?;
            if e.kind != Kind::Symlink {
                rustix::fs::chmodat(&parent, leaf, mode, AtFlags::empty())
                    .map_err(|err| fail("chmod", &err))?;
            }
            if e.kind != Kind::Dir {
                rustix::fs::utimensat(
                    &parent,
                    leaf,
                    &timestamps(e.mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|err| fail("set its mtime", &err))?;
            }
        }
        for (name, value) in &e.xattrs {
            let target = XattrTarget::Path(fd_path(parent.as_fd(), leaf));
            set_xattr(target, name, value, e, &mut self.warnings);
        }
        Ok(written)
    }

    /// In a layer: turns the OCI whiteout entry `e` into its overlayfs
    /// form; false when `e` is no whiteout.
    fn whiteout(&mut self, e: &Entry) -> Result<bool, String> {
        let leaf = match e.path.iter().rposition(|&b| b == b'/') {
            Some(slash) => &e.path[slash + 1..],
            None => &e.path[..],
        };
        let Some(name) = leaf.strip_prefix(WHITEOUT_PREFIX) else {
            return Ok(false);
        };
        let fail = |why: &dyn std::fmt::Display| format!("entry {}: {why}", e.display());
        if e.kind == Kind::Dir {
            return Err(fail(&"a whiteout (.wh.*) must not be a directory"));
        }
        if leaf == OPAQUE_MARKER {
            let (dir, _) = self.parent(&e.path)?;
            let path = fd_path(dir.as_fd(), b".");
            rustix::fs::lsetxattr(
                path.as_c_str(),
                OPAQUE_XATTR,
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|err| {
                fail(&format_args!(
                    "make its directory opaque ({OPAQUE_XATTR}): {err}"
                ))
            })?;
            return Ok(true);
        }
        if name.is_empty() || name == b"." || name == b".." || name.starts_with(WHITEOUT_PREFIX) {
            return Err(fail(&"not a whiteout of a name (.wh..wh.* is reserved)"));
        }
        let mut target = e.path[..e.path.len() - leaf.len()].to_vec();
        target.extend_from_slice(name);
        let (parent, leaf) = self.parent(&target)?;
        let device = Entry {
            path: target.clone(),
            kind: Kind::Char,
            ..marker_entry(Vec::new(), e.mtime)
        };
        self.make_room(&parent, leaf, &device)?;
        rustix::fs::mknodat(&parent, leaf, FileType::CharacterDevice, Mode::empty(), 0)
            .map_err(|err| fail(&format_args!("make the whiteout: {err}")))?;
        rustix::fs::utimensat(
            &parent,
            leaf,
            &timestamps(e.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|err| fail(&format_args!("set the whiteout's mtime: {err}")))?;
        Ok(true)
    }

    /// Sets the directories' mtimes, deepest first (making their entries
    /// changed them).
    fn finish(&mut self) -> Result<(), String> {
        for (path, mtime) in self.dir_times.iter().rev() {
            let fd = if path.is_empty() {
                self.root.try_clone().map_err(|e| e.to_string())?
            } else {
                beneath(self.root.as_fd(), path, OFlags::RDONLY | OFlags::DIRECTORY)
                    .map_err(|e| format!("open ./{}: {e}", String::from_utf8_lossy(path)))?
            };
            rustix::fs::futimens(&fd, &timestamps(*mtime)).map_err(|e| {
                format!("set the mtime of ./{}: {e}", String::from_utf8_lossy(path))
            })?;
        }
        Ok(())
    }
}

fn set_xattr(target: XattrTarget<'_>, name: &[u8], value: &[u8], e: &Entry, warnings: &mut u32) {
    let Ok(c_name) = CString::new(name) else {
        return;
    };
    let flags = rustix::fs::XattrFlags::empty();
    let set = match &target {
        XattrTarget::Path(p) => rustix::fs::lsetxattr(p.as_c_str(), &c_name, value, flags),
        XattrTarget::Fd(fd) => rustix::fs::fsetxattr(fd, &c_name, value, flags),
    };
    if let Err(err) = set {
        // As tar does: the data matter more than an attribute the
        // file system refuses.
        *warnings += 1;
        if *warnings <= 10 {
            eprintln!(
                "hafen: entry {}: extended attribute {} not set: {err}",
                e.display(),
                String::from_utf8_lossy(name)
            );
        }
    }
}

fn uid(id: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(id)
}

fn gid(id: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(id)
}

/// Unpacks the archive `input` into the directory `root`; returns the
/// entries and file bytes.
pub fn unpack(root: OwnedFd, input: impl Read) -> Result<(u64, u64, bool), String> {
    unpack_with(root, input, UnpackOptions::default())
}

/// How [`unpack_with`] reads an archive; the default is a volume import.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// The archive is an OCI layer, unpacked into overlayfs form: an entry
    /// `DIR/.wh.NAME` becomes a 0/0 character device `DIR/NAME`, an entry
    /// `DIR/.wh..wh..opq` makes `DIR` opaque (`trusted.overlay.opaque=y`),
    /// and `trusted.overlay.*` attributes in the archive are dropped (a
    /// layer must not steer overlayfs).
    pub layer: bool,
}

/// [`unpack`] as `opts` say; returns the entries, the file bytes and
/// whether the archive had a root entry.
pub fn unpack_with(
    root: OwnedFd,
    input: impl Read,
    opts: UnpackOptions,
) -> Result<(u64, u64, bool), String> {
    let mut reader = archive::Reader::new(input);
    let mut x = Extractor {
        root,
        parent: None,
        dir_times: Vec::new(),
        root_seen: false,
        warnings: 0,
        layer: opts.layer,
    };
    let (mut entries, mut bytes) = (0, 0);
    while let Some(mut e) = reader.next_entry()? {
        entries += 1;
        if x.layer {
            if x.whiteout(&e)? {
                continue;
            }
            e.xattrs
                .retain(|(name, _)| !name.starts_with(OVERLAY_XATTRS));
        }
        bytes += x.extract(&e, &mut reader)?;
    }
    x.finish()?;
    Ok((entries, bytes, x.root_seen))
}

fn import(name: &str) -> Result<String, String> {
    let volumes = rustix::fs::open(
        VOLUMES_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open {VOLUMES_DIR}: {e}"))?;
    let volumes_stat = rustix::fs::fstat(&volumes).map_err(|e| e.to_string())?;
    let old = match rustix::fs::statat(&volumes, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if stat.st_dev != volumes_stat.st_dev => {
            return Err(format!(
            "volume {name} is a host directory (hafen run -v): copy the files into it on the host"
        ))
        }
        Ok(stat) => Some(stat),
        Err(Errno::NOENT) => None,
        Err(e) => return Err(format!("stat volume {name}: {e}")),
    };
    let staging = format!("{STAGING_PREFIX}{name}");
    let staging_path = Path::new(VOLUMES_DIR).join(&staging);
    if staging_path.exists() {
        std::fs::remove_dir_all(&staging_path)
            .map_err(|e| format!("remove {}: {e}", staging_path.display()))?;
    }
    rustix::fs::mkdirat(&volumes, staging.as_str(), Mode::from_raw_mode(0o755))
        .map_err(|e| format!("create {}: {e}", staging_path.display()))?;
    let result = (|| {
        let root = rustix::fs::openat(
            &volumes,
            staging.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open {}: {e}", staging_path.display()))?;
        let keep = root.try_clone().map_err(|e| e.to_string())?;
        let input = BufReader::with_capacity(64 * 1024, std::io::stdin().lock());
        let (entries, bytes, root_seen) = unpack(root, input)?;
        if let (false, Some(old)) = (root_seen, &old) {
            // No root entry: the volume keeps its owner and mode.
            rustix::fs::fchown(&keep, Some(uid(old.st_uid)), Some(gid(old.st_gid)))
                .and_then(|()| rustix::fs::fchmod(&keep, Mode::from_raw_mode(old.st_mode & 0o7777)))
                .map_err(|e| format!("keep the volume's owner and mode: {e}"))?;
        }
        rustix::fs::syncfs(&keep).map_err(|e| format!("sync the data disk: {e}"))?;
        Ok::<_, String>((entries, bytes))
    })();
    let (entries, bytes) = match result {
        Ok(counts) => counts,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging_path);
            return Err(format!("{e}; volume {name} is unchanged"));
        }
    };
    let swap = if old.is_some() {
        RenameFlags::EXCHANGE
    } else {
        RenameFlags::NOREPLACE
    };
    if let Err(e) = rustix::fs::renameat_with(&volumes, staging.as_str(), &volumes, name, swap) {
        let _ = std::fs::remove_dir_all(&staging_path);
        return Err(format!(
            "swap the import into volume {name}: {e}; the volume is unchanged"
        ));
    }
    rustix::fs::fsync(&volumes).map_err(|e| format!("sync {VOLUMES_DIR}: {e}"))?;
    if old.is_some() {
        // The old content now sits at the staging name.
        if let Err(e) = std::fs::remove_dir_all(&staging_path) {
            eprintln!(
                "hafen: the old content of volume {name} was not removed ({e}); the next boot removes it"
            );
        }
    }
    Ok(format!(
        "imported into volume {name}: {entries} entries, {bytes} bytes of file data"
    ))
}

/// Removes what an interrupted import left on the data disk (a staging
/// directory, or the replaced content not yet removed).
pub fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(VOLUMES_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .as_bytes()
            .starts_with(STAGING_PREFIX.as_bytes())
        {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => info!(
                    "removed {} (an interrupted volume import)",
                    entry.path().display()
                ),
                Err(e) => warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn dir_fd(path: &Path) -> OwnedFd {
        rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open directory")
    }

    fn set_mtime(path: &Path, secs: i64, nanos: u32) {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &timestamps((secs, nanos)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .expect("utimensat");
    }

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// A tree with one of each kind, odd modes, owners and times.
    fn sample(top: &Path) {
        std::fs::create_dir_all(top.join("etc/deep/er")).expect("test step");
        std::fs::write(top.join("etc/config"), b"key = value\n").expect("test step");
        std::fs::write(top.join("etc/deep/er/big"), vec![0xa5u8; 70_000]).expect("test step");
        std::fs::write(top.join("empty"), b"").expect("test step");
        std::fs::hard_link(top.join("etc/config"), top.join("config.link")).expect("test step");
        symlink("etc/config", top.join("cfg")).expect("test step");
        symlink("/nowhere/at/all", top.join("dangling")).expect("test step");
        std::fs::write(top.join(format!("long-{}", "x".repeat(120))), b"long").expect("test step");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o640),
            0,
        )
        .expect("test step");
        if root() {
            std::os::unix::fs::lchown(top.join("etc/config"), Some(1234), Some(5678))
                .expect("test step");
            std::os::unix::fs::lchown(top.join("cfg"), Some(77), Some(88)).expect("test step");
            rustix::fs::mknodat(
                rustix::fs::CWD,
                top.join("null"),
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o666),
                rustix::fs::makedev(1, 3),
            )
            .expect("test step");
        }
        // After the chown, which clears setuid.
        std::fs::set_permissions(
            top.join("etc/config"),
            std::fs::Permissions::from_mode(0o4750),
        )
        .expect("test step");
        let _ = rustix::fs::setxattr(
            top.join("empty"),
            "user.hafen",
            b"\x00\x01v",
            rustix::fs::XattrFlags::empty(),
        );
        for (i, p) in [
            "etc/config",
            "empty",
            "cfg",
            "fifo",
            "etc/deep/er/big",
            "etc/deep/er",
            "etc/deep",
            "etc",
            "",
        ]
        .iter()
        .enumerate()
        {
            set_mtime(
                &top.join(p),
                1_600_000_000 + i as i64,
                123_456_789 * (i as u32 % 3),
            );
        }
    }

    #[test]
    fn export_import_export_gives_the_same_bytes() {
        let tmp = tempfile::tempdir().expect("test step");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).expect("test step");
        std::fs::create_dir(&b).expect("test step");
        sample(&a);
        let mut first = Vec::new();
        pack(&dir_fd(&a), &mut first).expect("pack");
        let (entries, bytes, root_seen) = unpack(dir_fd(&b), &first[..]).expect("unpack");
        assert!(root_seen);
        assert!(entries >= 12, "{entries}");
        assert_eq!(bytes, 12 + 70_000 + 4);
        let mut second = Vec::new();
        pack(&dir_fd(&b), &mut second).expect("pack again");
        assert!(first == second, "the archives differ");
        // What the archive says came back, checked on the files themselves.
        let config = std::fs::symlink_metadata(b.join("etc/config")).expect("test step");
        let link = std::fs::symlink_metadata(b.join("config.link")).expect("test step");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(config.ino(), link.ino(), "hard link kept");
        assert_eq!(config.mode() & 0o7777, 0o4750);
        assert_eq!((config.mtime(), config.mtime_nsec()), (1_600_000_000, 0));
        assert_eq!(
            std::fs::read_link(b.join("dangling")).expect("test step"),
            Path::new("/nowhere/at/all")
        );
        assert_eq!(
            std::fs::read(b.join("etc/deep/er/big")).expect("test step"),
            vec![0xa5u8; 70_000]
        );
        if root() {
            assert_eq!((config.uid(), config.gid()), (1234, 5678));
            let null = std::fs::symlink_metadata(b.join("null")).expect("test step");
            assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        }
    }

    fn hostile(entries: &[(&str, Kind, &str)]) -> Vec<u8> {
        let mut w = archive::Writer::new(Vec::new());
        for (path, kind, link) in entries {
            let e = Entry {
                path: path.as_bytes().to_vec(),
                kind: *kind,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: if *kind == Kind::File { 3 } else { 0 },
                mtime: (0, 0),
                link: link.as_bytes().to_vec(),
                device: (0, 0),
                xattrs: Vec::new(),
            };
            w.header(&e).expect("test step");
            if *kind == Kind::File {
                w.data(&mut &b"bad"[..], 3).expect("test step");
            }
        }
        w.finish().expect("test step")
    }

    #[test]
    fn symlinks_in_an_archive_cannot_lead_entries_out_of_the_volume() {
        let tmp = tempfile::tempdir().expect("test step");
        let (volume, outside) = (tmp.path().join("v"), tmp.path().join("outside"));
        std::fs::create_dir(&volume).expect("test step");
        std::fs::create_dir(&outside).expect("test step");
        let cases = [
            hostile(&[
                ("evil", Kind::Symlink, outside.to_str().expect("test step")),
                ("evil/x", Kind::File, ""),
            ]),
            hostile(&[
                ("up", Kind::Symlink, "../outside"),
                ("up/x", Kind::File, ""),
            ]),
            hostile(&[
                ("d", Kind::Dir, ""),
                ("d/up", Kind::Symlink, "../../outside"),
                ("d/up/x", Kind::File, ""),
            ]),
            hostile(&[
                ("up", Kind::Symlink, "../outside"),
                ("up/x", Kind::HardLink, "up/y"),
            ]),
        ];
        for (i, archive) in cases.iter().enumerate() {
            let e = unpack(dir_fd(&volume), &archive[..]).expect_err("escapes");
            assert!(
                e.contains("leads out of the volume") || e.contains("entry"),
                "case {i}: {e}"
            );
            assert_eq!(
                std::fs::read_dir(&outside).expect("test step").count(),
                0,
                "case {i} wrote outside"
            );
        }
        // A file entry on a symlink's name replaces the link, never writes through it.
        let target = outside.join("victim");
        std::fs::write(&target, b"safe").expect("test step");
        let archive = hostile(&[
            ("s", Kind::Symlink, target.to_str().expect("test step")),
            ("s", Kind::File, ""),
        ]);
        unpack(dir_fd(&volume), &archive[..]).expect("replaces the link");
        assert_eq!(std::fs::read(&target).expect("test step"), b"safe");
        assert_eq!(std::fs::read(volume.join("s")).expect("test step"), b"bad");
    }

    #[test]
    fn missing_parent_directories_are_made_and_later_entries_replace_earlier_ones() {
        let tmp = tempfile::tempdir().expect("test step");
        let archive = hostile(&[
            ("a/b/c", Kind::File, ""),
            ("a/b/c", Kind::Dir, ""),
            ("a/b/c/d", Kind::File, ""),
        ]);
        unpack(dir_fd(tmp.path()), &archive[..]).expect("unpacks");
        assert_eq!(
            std::fs::read(tmp.path().join("a/b/c/d")).expect("test step"),
            b"bad"
        );
        let archive = hostile(&[("a/b/c", Kind::File, "")]);
        let e = unpack(dir_fd(tmp.path()), &archive[..]).expect_err("non-empty directory");
        assert!(e.contains("replace a directory"), "{e}");
    }

    #[test]
    fn gnu_tar_unpacks_our_archives_and_we_unpack_its() {
        let tmp = tempfile::tempdir().expect("test step");
        let (a, b, c) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("c"),
        );
        for d in [&a, &b, &c] {
            std::fs::create_dir(d).expect("test step");
        }
        sample(&a);
        let mut ours = Vec::new();
        pack(&dir_fd(&a), &mut ours).expect("pack");
        // GNU tar unpacks ours exactly: packing its result gives the same bytes.
        let mut tar = std::process::Command::new("tar")
            .args([
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-xpf",
                "-",
                "-C",
            ])
            .arg(&b)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("GNU tar is installed");
        tar.stdin
            .take()
            .expect("test step")
            .write_all(&ours)
            .expect("test step");
        assert!(tar.wait().expect("test step").success());
        let mut again = Vec::new();
        pack(&dir_fd(&b), &mut again).expect("pack GNU tar's tree");
        assert!(ours == again, "GNU tar's unpacking differs from ours");
        // And we unpack what GNU tar writes (its own pax flavour).
        let theirs = std::process::Command::new("tar")
            .args([
                "--xattrs",
                "--format=pax",
                "--numeric-owner",
                "-cf",
                "-",
                "-C",
            ])
            .arg(&a)
            .arg(".")
            .output()
            .expect("GNU tar");
        assert!(theirs.status.success());
        unpack(dir_fd(&c), &theirs.stdout[..]).expect("unpack GNU tar's archive");
        assert_eq!(
            std::fs::read(c.join("etc/deep/er/big")).expect("test step"),
            vec![0xa5u8; 70_000]
        );
        assert_eq!(
            std::fs::read_link(c.join("cfg")).expect("test step"),
            Path::new("etc/config")
        );
    }
}
