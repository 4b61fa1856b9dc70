//! Layers in and out of a builder: `PutLayer` unpacks an OCI layer into
//! overlayfs form, `GetLayer` writes one back, `DropLayers` removes them.
//! The archive work is the volume copier's ([`crate::volume::copy`]) with
//! its layer options: the same confinement of paths on the way in, the
//! same deterministic pax form on the way out.

use std::io::{BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::{step_cgroup, Place, Storage};
use crate::container::cgroup;
use crate::volume::copy::{self, PackOptions, UnpackOptions};

fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Whether something (even a dangling symlink) is at `path`.
pub(super) fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Removes the tree at `path` if there is one, never following symlinks.
pub(super) fn remove_tree(path: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", path.display())),
    }
}

/// Unpacks the OCI layer `input` (a plain tar) as layer `n`. The layer
/// appears whole or not at all: it is unpacked under another name and
/// renamed into place at the end.
pub fn put(storage: &Storage, n: u32, input: impl Read) -> Result<(), String> {
    let target = storage.layer(n);
    if exists(&target) {
        return Err(format!("layer {n} exists already"));
    }
    let staging = storage.staging(n);
    remove_tree(&staging)?;
    let made = staging
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::create_dir(&staging));
    made.map_err(|e| format!("create {}: {e}", staging.display()))?;
    let result = (|| {
        let root = open_dir(&staging).map_err(|e| format!("open {}: {e}", staging.display()))?;
        // A layer's root is the image's root where no lower one says
        // otherwise: 0755, whatever the umask.
        rustix::fs::fchmod(&root, Mode::from_raw_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", staging.display()))?;
        let input = BufReader::with_capacity(64 * 1024, input);
        copy::unpack_with(root, input, UnpackOptions { layer: true })?;
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &staging,
            rustix::fs::CWD,
            &target,
            RenameFlags::NOREPLACE,
        )
        .map_err(|e| format!("rename {} to {}: {e}", staging.display(), target.display()))
    })();
    if let Err(e) = result {
        let _ = remove_tree(&staging);
        return Err(format!("layer {n} was not unpacked: {e}"));
    }
    Ok(())
}

/// Writes layer `n` to `out` as an OCI layer (whiteouts as `.wh.` entries,
/// times after `epoch` clamped to it).
pub fn get(storage: &Storage, n: u32, epoch: i64, out: impl Write) -> Result<(), String> {
    let path = storage.layer(n);
    let root = open_dir(&path).map_err(|e| match e {
        Errno::NOENT => format!("there is no layer {n}"),
        e => format!("open {}: {e}", path.display()),
    })?;
    let opts = PackOptions {
        layer: true,
        clamp_mtime: Some(epoch),
    };
    copy::pack_with(&root, out, opts).map(drop)
}

/// Removes layers `layers` and whatever a step into them left (unknown
/// numbers are nothing to remove). Each failure is reported on stderr; the
/// others are still removed.
pub fn drop_layers(place: &Place, layers: &[u32]) -> Result<(), String> {
    let storage = &place.storage;
    let mut failed = 0;
    for &n in layers {
        for path in [storage.layer(n), storage.staging(n), storage.step_dir(n)] {
            if let Err(e) = remove_tree(&path) {
                eprintln!("hafen: {e}");
                failed += 1;
            }
        }
        // Left by a step that was killed; empty by now.
        if let Some(root) = cgroup::find_v2(&place.cgroup_root) {
            let _ = std::fs::remove_dir(root.join(step_cgroup(&place.cgroup_parent, n)));
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(format!(
            "{n} director{} not removed",
            if n == 1 { "y was" } else { "ies were" }
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    use super::*;
    use crate::volume::archive::{self, Entry, Kind};

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn set_mtime(path: &Path, secs: i64) {
        let t = rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .expect("utimensat");
    }

    fn opaque(path: &Path) -> Option<Vec<u8>> {
        let mut value = [0u8; 16];
        rustix::fs::lgetxattr(path, copy::OPAQUE_XATTR, &mut value)
            .ok()
            .map(|n| value[..n].to_vec())
    }

    fn is_whiteout(path: &Path) -> bool {
        use std::os::unix::fs::FileTypeExt;
        std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
    }

    /// An upper directory as a RUN step leaves it: files, a directory, a
    /// symlink, hard links, an opaque directory and a whiteout.
    fn upper(top: &Path) {
        std::fs::create_dir_all(top.join("etc/app")).expect("mkdir");
        std::fs::write(top.join("etc/app/conf"), b"x = 1\n").expect("write");
        std::fs::set_permissions(
            top.join("etc/app/conf"),
            std::fs::Permissions::from_mode(0o640),
        )
        .expect("chmod");
        std::fs::hard_link(top.join("etc/app/conf"), top.join("etc/conf.link")).expect("link");
        std::os::unix::fs::symlink("app/conf", top.join("etc/current")).expect("symlink");
        std::fs::create_dir(top.join("var")).expect("mkdir");
        std::fs::write(top.join("var/new"), b"fresh").expect("write");
        rustix::fs::setxattr(
            top.join("var"),
            copy::OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("opaque xattr (needs root and trusted xattrs)");
        // Two whiteouts, linked to one inode as overlayfs makes them.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.join("etc/gone"),
            rustix::fs::FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .expect("mknod");
        std::fs::hard_link(top.join("etc/gone"), top.join("removed")).expect("link");
        for (p, t) in [
            ("etc/app/conf", 1_000),
            ("etc/current", 1_100),
            ("etc/gone", 1_200),
            ("var/new", 2_000_000_000),
            ("var", 1_300),
            ("etc/app", 1_400),
            ("etc", 1_500),
        ] {
            set_mtime(&top.join(p), t);
        }
    }

    fn names(tar: &[u8]) -> Vec<(String, Kind, u32, (i64, u32))> {
        let mut r = archive::Reader::new(tar);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry().expect("reads") {
            out.push((e.display(), e.kind, e.mode, e.mtime));
        }
        out
    }

    fn storage() -> (tempfile::TempDir, Storage) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let storage = Storage::at(tmp.path());
        storage.create().expect("create");
        (tmp, storage)
    }

    #[test]
    fn layers_pack_whiteouts_and_opaque_dirs_as_oci_entries_and_unpack_them_back() {
        if !root() {
            eprintln!("skipped: needs root (mknod, trusted xattrs)");
            return;
        }
        let (_tmp, storage) = storage();
        let first = storage.layer(1);
        std::fs::create_dir(&first).expect("mkdir");
        upper(&first);
        let mut tar = Vec::new();
        get(&storage, 1, 1_700_000_000, &mut tar).expect("pack");
        let listed = names(&tar);
        let shown: Vec<&str> = listed.iter().map(|(n, ..)| n.as_str()).collect();
        assert_eq!(
            shown,
            [
                ".wh.removed",
                "etc",
                "etc/.wh.gone",
                "etc/app",
                "etc/app/conf",
                "etc/conf.link",
                "etc/current",
                "var",
                "var/.wh..wh..opq",
                "var/new",
            ],
            "no root entry, whiteouts under their OCI names, in name order"
        );
        for (name, kind, mode, mtime) in &listed {
            if name.contains(".wh.") {
                assert_eq!((*kind, *mode), (Kind::File, 0), "{name}");
            }
            assert!(mtime.0 <= 1_700_000_000, "{name} not clamped: {mtime:?}");
        }
        let link = listed.iter().find(|(n, ..)| n == "etc/conf.link");
        assert_eq!(link.map(|l| l.1), Some(Kind::HardLink));
        assert!(
            !String::from_utf8_lossy(&tar).contains("trusted.overlay"),
            "overlayfs attributes stay out of layers"
        );

        // Back in: overlayfs form again, and the same bytes out.
        put(&storage, 2, &tar[..]).expect("unpack");
        let second = storage.layer(2);
        assert!(is_whiteout(&second.join("removed")));
        assert!(is_whiteout(&second.join("etc/gone")));
        assert!(!second.join(".wh.removed").exists());
        assert_eq!(opaque(&second.join("var")), Some(b"y".to_vec()));
        assert!(!exists(&second.join("var/.wh..wh..opq")));
        let conf = std::fs::metadata(second.join("etc/app/conf")).expect("conf");
        let linked = std::fs::metadata(second.join("etc/conf.link")).expect("link");
        assert_eq!(conf.ino(), linked.ino());
        assert_eq!(conf.mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::read(second.join("var/new")).expect("read"),
            b"fresh"
        );
        let mut again = Vec::new();
        get(&storage, 2, 1_700_000_000, &mut again).expect("pack again");
        assert!(tar == again, "a round trip changes the layer's bytes");
    }

    /// A layer written by another tool: plain files named `.wh.*`.
    fn foreign_layer(entries: &[(&str, Kind)]) -> Vec<u8> {
        let mut w = archive::Writer::new(Vec::new());
        for (path, kind) in entries {
            let e = Entry {
                path: path.as_bytes().to_vec(),
                kind: *kind,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: (1_000, 0),
                link: Vec::new(),
                device: (0, 0),
                xattrs: vec![(b"trusted.overlay.redirect".to_vec(), b"/etc".to_vec())],
            };
            w.header(&e).expect("header");
        }
        w.finish().expect("finish")
    }

    #[test]
    fn oci_whiteouts_become_devices_and_opaque_xattrs_and_overlay_xattrs_are_dropped() {
        if !root() {
            eprintln!("skipped: needs root (mknod, trusted xattrs)");
            return;
        }
        let (_tmp, storage) = storage();
        let tar = foreign_layer(&[
            ("a", Kind::Dir),
            ("a/.wh..wh..opq", Kind::File),
            ("a/.wh.old", Kind::File),
            ("b/c/.wh.deep", Kind::File),
            (".wh.top", Kind::File),
            ("a/kept", Kind::File),
        ]);
        put(&storage, 5, &tar[..]).expect("unpack");
        let layer = storage.layer(5);
        assert_eq!(opaque(&layer.join("a")), Some(b"y".to_vec()));
        for w in ["a/old", "b/c/deep", "top"] {
            assert!(is_whiteout(&layer.join(w)), "{w}");
        }
        let mut value = [0u8; 64];
        assert!(
            rustix::fs::lgetxattr(layer.join("a/kept"), "trusted.overlay.redirect", &mut value)
                .is_err(),
            "a layer must not set overlayfs attributes"
        );
        assert_eq!(
            std::fs::metadata(&layer).expect("layer").mode() & 0o7777,
            0o755
        );
    }

    #[test]
    fn a_bad_layer_leaves_nothing_and_names_the_entry() {
        let (_tmp, storage) = storage();
        for (tar, words) in [
            (
                foreign_layer(&[("x/.wh..wh..odd", Kind::File)]),
                "x/.wh..wh..odd",
            ),
            (foreign_layer(&[("x/.wh.d", Kind::Dir)]), "x/.wh.d"),
            (
                foreign_layer(&[("ok", Kind::File)])[..512].to_vec(),
                "truncated",
            ),
        ] {
            let e = put(&storage, 3, &tar[..]).expect_err("refused");
            assert!(e.contains(words) && e.contains("layer 3"), "{e}");
            assert!(!exists(&storage.layer(3)), "{e}");
            assert!(!exists(&storage.staging(3)), "{e}");
        }
        // An existing layer is never replaced.
        std::fs::create_dir(storage.layer(4)).expect("mkdir");
        let e = put(&storage, 4, &foreign_layer(&[("f", Kind::File)])[..]).expect_err("exists");
        assert!(e.contains("exists"), "{e}");
        assert_eq!(std::fs::read_dir(storage.layer(4)).expect("ls").count(), 0);
    }

    #[test]
    fn a_file_named_like_a_whiteout_cannot_be_written_into_a_layer() {
        let (_tmp, storage) = storage();
        std::fs::create_dir_all(storage.layer(1)).expect("mkdir");
        std::fs::write(storage.layer(1).join(".wh.sneaky"), b"").expect("write");
        let e = get(&storage, 1, 0, Vec::new()).expect_err("reserved");
        assert!(e.contains(".wh.sneaky"), "{e}");
        let e = get(&storage, 9, 0, Vec::new()).expect_err("missing");
        assert!(e.contains("no layer 9"), "{e}");
    }

    #[test]
    fn dropping_layers_removes_them_and_ignores_unknown_numbers() {
        let (tmp, storage) = storage();
        for n in [1, 2] {
            std::fs::create_dir_all(storage.layer(n).join("d")).expect("mkdir");
            std::os::unix::fs::symlink(tmp.path(), storage.layer(n).join("d/out"))
                .expect("symlink");
        }
        std::fs::create_dir_all(storage.step_dir(2).join("work")).expect("mkdir");
        let place = Place {
            storage: storage.clone(),
            cgroup_root: PathBuf::from("/nonexistent"),
            cgroup_parent: "x".into(),
        };
        drop_layers(&place, &[2, 77]).expect("drop");
        assert!(!exists(&storage.layer(2)));
        assert!(!exists(&storage.step_dir(2)));
        assert!(exists(&storage.layer(1)));
        assert!(tmp.path().join("layers").exists(), "a symlink was followed");
    }
}
