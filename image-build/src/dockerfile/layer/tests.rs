//! Tests of the host-side layers: real context directories, stage roots
//! made with `Tree::apply_layer`, steps from real Dockerfile text, and GNU
//! tar as an oracle for the archives.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use super::tarball::{self, EntryType, TarEntry};
use super::*;
use crate::dockerfile::expand::{BuildScope, Chown, Settings, StageState, Step};
use crate::dockerfile::ignore::IgnoreRules;
use crate::dockerfile::plan::{self, PlanOptions};
use crate::tree::Kind;

/// The build's epoch in these tests: 2001-09-09.
const EPOCH: i64 = 1_000_000_000;

/// The steps of the last stage of a Dockerfile.
fn steps(dockerfile: &str) -> Vec<Step> {
    let df = crate::dockerfile::parse(dockerfile, "Dockerfile").expect("Dockerfile parses");
    let plan = plan::plan(
        &df,
        &PlanOptions {
            build_args: BTreeMap::new(),
            target: None,
            platform: plan::supported_platform(),
        },
    )
    .expect("plan");
    let scope = BuildScope::new(&plan, &BTreeMap::new(), df.escape);
    let mut state = StageState::new(Settings::default(), scope);
    let stage = df.stages.last().expect("a stage");
    stage
        .instructions
        .iter()
        .map(|ins| state.apply(ins).expect("instruction applies").step)
        .collect()
}

/// The last COPY or ADD of `FROM scratch AS src`, `FROM scratch`, `lines`.
fn copy_step(lines: &str) -> CopyStep {
    steps(&format!("FROM scratch AS src\nFROM scratch\n{lines}\n"))
        .into_iter()
        .rev()
        .find_map(|s| match s {
            Step::Copy(c) => Some(c),
            _ => None,
        })
        .expect("a COPY or ADD")
}

/// A stage root: entries with modes and owners, written with the layer
/// writer itself and applied like any layer.
enum T<'a> {
    Dir(&'a str, u32, u32, u32),
    File(&'a str, &'a [u8], u32, u32, u32),
    Link(&'a str, &'a str),
}

fn tree(entries: &[T]) -> Tree {
    let mut tar = Vec::new();
    for e in entries {
        let dir_path;
        let (path, kind, mode, uid, gid, link, data): (&str, _, _, _, _, _, &[u8]) = match e {
            T::Dir(p, m, u, g) => {
                dir_path = format!("{p}/");
                (dir_path.as_str(), EntryType::Dir, *m, *u, *g, None, b"")
            }
            T::File(p, d, m, u, g) => (*p, EntryType::File, *m, *u, *g, None, *d),
            T::Link(p, t) => (*p, EntryType::Symlink, 0o777, 0, 0, Some(*t), b""),
        };
        tarball::write_entry(
            &mut tar,
            &TarEntry {
                path,
                kind,
                mode,
                uid,
                gid,
                mtime: 0,
                link,
                device: (0, 0),
                xattrs: &[],
                data,
            },
        );
    }
    tarball::finish(&mut tar);
    let mut t = Tree::new();
    t.apply_layer(0, tar.as_slice()).expect("test root applies");
    t
}

/// The root after a layer.
fn applied(root: &Tree, layer: &LayerTar) -> Tree {
    let mut t = root.clone();
    t.apply_layer(1, layer.tar.as_slice())
        .expect("the layer applies to its root");
    t
}

/// One entry of a layer as the tar crate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    path: String,
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    data: Vec<u8>,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn list(tar_bytes: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().expect("pax") {
            for ext in pax.flatten() {
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
        let h = entry.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
        out.push(Listed {
            path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            kind: h.entry_type().as_byte() as char,
            mode: h.mode().expect("mode"),
            uid: h.uid().expect("uid"),
            gid: h.gid().expect("gid"),
            mtime: h.mtime().expect("mtime"),
            link: entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned()),
            data,
            xattrs,
        });
    }
    out
}

fn paths(tar_bytes: &[u8]) -> Vec<String> {
    list(tar_bytes).into_iter().map(|e| e.path).collect()
}

fn entry<'a>(entries: &'a [Listed], path: &str) -> &'a Listed {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} not in {entries:#?}"))
}

/// A context directory with files (`dir/` makes a directory).
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        let full = dir.path().join(path.trim_end_matches('/'));
        if path.ends_with('/') {
            fs::create_dir_all(&full).expect("mkdir");
        } else {
            fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            fs::write(&full, content).expect("write");
            fs::set_permissions(&full, fs::Permissions::from_mode(0o644)).expect("chmod");
        }
    }
    dir
}

fn ctx(dir: &Path) -> Context {
    Context::new(dir, IgnoreRules::none()).expect("context")
}

fn set_mtime(path: &Path, secs: u64) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| fs::File::open(path))
        .expect("open")
        .set_modified(t)
        .expect("set mtime");
}

fn copy_from_context(dir: &Path, line: &str, root: &Tree) -> Result<LayerTar, ErrorKind> {
    let step = copy_step(line);
    let kw = if step.add { "ADD" } else { "COPY" };
    copy_layer(&step, CopySource::Context(&ctx(dir)), root, kw, EPOCH)
}

fn digest_of(dir: &Path, line: &str) -> String {
    source_digest(&copy_step(line), CopySource::Context(&ctx(dir)), "COPY").expect("digest")
}

/// GNU tar's listing of a layer (`tar -tv`, numeric owners, UTC).
fn gnu_tar_list(tar_bytes: &[u8]) -> Vec<String> {
    let mut child = Command::new("tar")
        .args(["--numeric-owner", "--full-time", "-tvf", "-"])
        .env("TZ", "UTC")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("GNU tar runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let write = stdin.write_all(tar_bytes);
    drop(stdin);
    let out = child.wait_with_output().expect("tar finishes");
    write.expect("tar reads the layer");
    assert!(
        out.status.success(),
        "tar -t failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n\n# comment\nbroken:x:notanumber:1:::\n";
const GROUP: &[u8] = b"root:x:0:root\nappgrp:x:1001:\nstaff:x:50:app,other\nwheel:x:10:root,app\n";

fn etc_root() -> Tree {
    tree(&[
        T::Dir("etc", 0o755, 0, 0),
        T::File("etc/passwd", PASSWD, 0o644, 0, 0),
        T::File("etc/group", GROUP, 0o644, 0, 0),
    ])
}

// ---- COPY semantics ----

#[test]
fn a_directory_source_copies_its_contents() {
    let dir = context(&[("src/a.txt", "a"), ("src/sub/b.txt", "b")]);
    let root = Tree::new();
    for line in ["COPY src /app", "COPY src/ /app/", "COPY ./src /app/"] {
        let layer = copy_from_context(dir.path(), line, &root).expect(line);
        assert_eq!(
            paths(&layer.tar),
            ["app/", "app/a.txt", "app/sub/", "app/sub/b.txt"],
            "{line}"
        );
        let t = applied(&root, &layer);
        assert!(
            !t.nodes.contains_key("app/src"),
            "{line}: the directory itself is not copied"
        );
    }
}

#[test]
fn a_file_goes_into_a_directory_destination_or_becomes_the_destination() {
    let dir = context(&[("a.txt", "a")]);
    let root = tree(&[T::Dir("etc", 0o755, 0, 0)]);
    let into = copy_from_context(dir.path(), "COPY a.txt /opt/", &root).expect("into");
    assert_eq!(paths(&into.tar), ["opt/", "opt/a.txt"]);
    let named = copy_from_context(dir.path(), "COPY a.txt /opt/b", &root).expect("named");
    assert_eq!(paths(&named.tar), ["opt/", "opt/b"]);
    // An existing directory counts even without the trailing slash.
    let existing = copy_from_context(dir.path(), "COPY a.txt /etc", &root).expect("existing");
    assert_eq!(paths(&existing.tar), ["etc/", "etc/a.txt"]);
    // WORKDIR makes a relative destination absolute.
    let step = steps("FROM scratch\nWORKDIR /srv\nCOPY a.txt rel/\n")
        .into_iter()
        .find_map(|s| match s {
            Step::Copy(c) => Some(c),
            _ => None,
        })
        .expect("copy");
    let rel = copy_layer(
        &step,
        CopySource::Context(&ctx(dir.path())),
        &root,
        "COPY",
        EPOCH,
    )
    .expect("relative");
    assert_eq!(paths(&rel.tar), ["srv/", "srv/rel/", "srv/rel/a.txt"]);
}

#[test]
fn existing_files_are_replaced_and_type_conflicts_are_errors_naming_the_paths() {
    let dir = context(&[("a.txt", "new"), ("d/x", "x")]);
    let root = tree(&[
        T::File("a.txt", b"old", 0o600, 7, 7),
        T::Dir("a.dir/a.txt", 0o755, 0, 0),
        T::File("file", b"f", 0o644, 0, 0),
        T::Dir("app", 0o755, 0, 0),
        T::Link("app/x", "/elsewhere"),
    ]);
    let layer = copy_from_context(dir.path(), "COPY a.txt /", &root).expect("replace");
    let t = applied(&root, &layer);
    let Kind::File { data, .. } = &t.nodes["a.txt"].kind else {
        panic!("a file")
    };
    assert_eq!(data.as_slice(), b"new");
    assert_eq!((t.nodes["a.txt"].uid, t.nodes["a.txt"].mode), (0, 0o644));

    let err = copy_from_context(dir.path(), "COPY a.txt /a.dir/", &root)
        .expect_err("file over directory")
        .to_string();
    assert!(
        err.contains("/a.dir/a.txt") && err.contains("directory"),
        "{err}"
    );
    let err = copy_from_context(dir.path(), "COPY d /file", &root)
        .expect_err("directory over file")
        .to_string();
    assert!(err.contains("/file") && err.contains("COPY"), "{err}");
    // A file over a link replaces the link, never writes through it.
    let layer = copy_from_context(dir.path(), "COPY d /app/", &root).expect("over a link");
    let t = applied(&root, &layer);
    assert!(matches!(t.nodes["app/x"].kind, Kind::File { .. }));
    assert!(!t.nodes.contains_key("elsewhere"));
}

#[test]
fn missing_parents_get_the_chown_owner_and_an_octal_chmod() {
    let dir = context(&[("a.txt", "a")]);
    let root = etc_root();
    let layer =
        copy_from_context(dir.path(), "COPY --chown=app a.txt /srv/data/", &root).expect("chown");
    let e = list(&layer.tar);
    for p in ["srv/", "srv/data/", "srv/data/a.txt"] {
        assert_eq!((entry(&e, p).uid, entry(&e, p).gid), (1000, 1001), "{p}");
    }
    assert_eq!(entry(&e, "srv/").mode, 0o755);
    // BuildKit makes missing parents with an octal --chmod as it is.
    let layer =
        copy_from_context(dir.path(), "COPY --chmod=640 a.txt /new/dir/", &root).expect("octal");
    let e = list(&layer.tar);
    assert_eq!(entry(&e, "new/").mode, 0o640);
    assert_eq!(entry(&e, "new/dir/a.txt").mode, 0o640);
    assert_eq!((entry(&e, "new/").uid, entry(&e, "new/").gid), (0, 0));
    let layer =
        copy_from_context(dir.path(), "COPY --chmod=u+x,g-r a.txt /sym/", &root).expect("symbolic");
    let e = list(&layer.tar);
    assert_eq!(entry(&e, "sym/").mode, 0o755);
    assert_eq!(entry(&e, "sym/a.txt").mode, 0o704);
    // Existing parents are listed as the root has them.
    let root = tree(&[T::Dir("srv", 0o700, 5, 6)]);
    let layer = copy_from_context(dir.path(), "COPY a.txt /srv/x/", &root).expect("existing");
    let e = list(&layer.tar);
    let srv = entry(&e, "srv/");
    assert_eq!(
        (srv.mode, srv.uid, srv.gid, srv.mtime),
        (0o700, 5, 6, EPOCH as u64)
    );
}

#[test]
fn the_destination_follows_links_inside_the_root_and_never_leaves_it() {
    let dir = context(&[("a.txt", "a")]);
    let root = tree(&[
        T::Dir("usr/lib", 0o755, 0, 0),
        T::Link("lib", "/usr/lib"),
        T::Link("up", "../../../../tmp"),
        T::Link("usr/rel", "../usr/lib"),
    ]);
    let layer = copy_from_context(dir.path(), "COPY a.txt /lib/", &root).expect("abs link");
    assert_eq!(paths(&layer.tar), ["usr/", "usr/lib/", "usr/lib/a.txt"]);
    let t = applied(&root, &layer);
    assert_eq!(
        t.nodes["lib"].kind,
        Kind::Symlink("/usr/lib".into()),
        "the link stays"
    );
    let layer = copy_from_context(dir.path(), "COPY a.txt /up/x", &root).expect("climbing link");
    assert_eq!(paths(&layer.tar), ["tmp/", "tmp/x"]);
    let layer = copy_from_context(dir.path(), "COPY a.txt /usr/rel/b", &root).expect("relative");
    assert_eq!(paths(&layer.tar), ["usr/", "usr/lib/", "usr/lib/b"]);
}

#[test]
fn context_files_are_root_owned_and_keep_modes_links_and_hard_links() {
    let dir = context(&[("d/a.txt", "hello"), ("d/run.sh", "#!/bin/sh\n")]);
    let d = dir.path().join("d");
    fs::set_permissions(d.join("run.sh"), fs::Permissions::from_mode(0o4750)).expect("chmod");
    symlink("a.txt", d.join("ln")).expect("symlink");
    fs::hard_link(d.join("a.txt"), d.join("z-hard")).expect("hard link");
    let root = Tree::new();
    let layer = copy_from_context(dir.path(), "COPY d /d/", &root).expect("copy");
    let e = list(&layer.tar);
    let script = entry(&e, "d/run.sh");
    assert_eq!((script.mode, script.uid, script.gid), (0o4750, 0, 0));
    let ln = entry(&e, "d/ln");
    assert_eq!((ln.kind, ln.link.as_deref()), ('2', Some("a.txt")));
    let hard = entry(&e, "d/z-hard");
    assert_eq!((hard.kind, hard.link.as_deref()), ('1', Some("d/a.txt")));
    let t = applied(&root, &layer);
    let (Kind::File { inode: a, .. }, Kind::File { inode: b, .. }) =
        (&t.nodes["d/a.txt"].kind, &t.nodes["d/z-hard"].kind)
    else {
        panic!("files")
    };
    assert_eq!(a, b, "hard links stay hard links");
    // Across two sources they are two files (BuildKit copies each source
    // with its own copier).
    let layer = copy_from_context(dir.path(), "COPY d/a.txt d/z-hard /e/", &root).expect("two");
    let e = list(&layer.tar);
    assert_eq!(entry(&e, "e/z-hard").kind, '0');
}

#[test]
fn copy_from_a_stage_keeps_its_owners_unless_chown() {
    let stage = tree(&[
        T::Dir("app", 0o750, 10, 20),
        T::File("app/bin", b"elf", 0o755, 10, 20),
        T::Link("app/current", "bin"),
        T::File("app/debug.log", b"log", 0o600, 10, 20),
    ]);
    let root = etc_root();
    let step = copy_step("COPY --from=src /app /opt/app");
    let layer = copy_layer(&step, CopySource::Tree(&stage), &root, "COPY", EPOCH).expect("copy");
    let e = list(&layer.tar);
    assert_eq!(
        (entry(&e, "opt/app/bin").uid, entry(&e, "opt/app/bin").gid),
        (10, 20)
    );
    assert_eq!(
        entry(&e, "opt/app/bin").mtime,
        EPOCH as u64,
        "a tree has no times"
    );
    assert_eq!(entry(&e, "opt/app/current").link.as_deref(), Some("bin"));
    // The destination directory is made root-owned 0755, as BuildKit does.
    assert_eq!(
        (entry(&e, "opt/app/").mode, entry(&e, "opt/app/").uid),
        (0o755, 0)
    );
    let step = copy_step("COPY --from=src --chown=app:staff --exclude=*.log /app/ /opt/app/");
    let layer = copy_layer(&step, CopySource::Tree(&stage), &root, "COPY", EPOCH).expect("chown");
    let e = list(&layer.tar);
    assert_eq!(
        (entry(&e, "opt/app/bin").uid, entry(&e, "opt/app/bin").gid),
        (1000, 50)
    );
    assert!(
        !e.iter().any(|x| x.path.ends_with(".log")),
        "--exclude applies"
    );
    // Wildcards and links inside the stage.
    let step = copy_step("COPY --from=src /app/b* /app/curr* /w/");
    let layer = copy_layer(&step, CopySource::Tree(&stage), &root, "COPY", EPOCH).expect("glob");
    assert_eq!(paths(&layer.tar), ["w/", "w/bin", "w/current"]);
    let current = entry(&list(&layer.tar), "w/current").clone();
    assert_eq!(
        (current.kind, current.data.as_slice()),
        ('0', b"elf".as_slice()),
        "a matched link is followed"
    );
    let err = copy_layer(
        &copy_step("COPY --from=src /app/nothing /x"),
        CopySource::Tree(&stage),
        &root,
        "COPY",
        EPOCH,
    )
    .expect_err("missing")
    .to_string();
    assert!(
        err.contains("/app/nothing") && err.contains("stage 0"),
        "{err}"
    );
    let err = copy_layer(
        &copy_step("COPY --from=src /app/* /x"),
        CopySource::Tree(&stage),
        &root,
        "COPY",
        EPOCH,
    )
    .expect_err("several into a file")
    .to_string();
    assert!(err.contains("/x/"), "{err}");
}

#[test]
fn heredoc_files_are_root_owned_0644_at_the_epoch() {
    let dir = context(&[]);
    let step = copy_step("COPY <<EOF /etc/motd\nhello\nEOF");
    let layer = copy_layer(
        &step,
        CopySource::Context(&ctx(dir.path())),
        &Tree::new(),
        "COPY",
        EPOCH,
    )
    .expect("heredoc");
    let e = list(&layer.tar);
    let motd = entry(&e, "etc/motd");
    assert_eq!((motd.mode, motd.uid, motd.mtime), (0o644, 0, EPOCH as u64));
    assert_eq!(motd.data, b"hello\n");
}

// ---- --link ----

#[test]
fn link_builds_the_layer_over_an_empty_root() {
    let dir = context(&[("a.txt", "a")]);
    let root = tree(&[T::Dir("usr/lib", 0o755, 0, 0), T::Link("lib", "/usr/lib")]);
    let layer =
        copy_from_context(dir.path(), "COPY --link --chown=7:8 a.txt /lib/", &root).expect("link");
    let e = list(&layer.tar);
    assert_eq!(
        paths(&layer.tar),
        ["lib/", "lib/a.txt"],
        "not resolved through the stage"
    );
    assert_eq!((entry(&e, "lib/").uid, entry(&e, "lib/").gid), (7, 8));
    // BuildKit ignores --link when --chmod is given.
    let layer = copy_from_context(dir.path(), "COPY --link --chmod=644 a.txt /lib/", &root)
        .expect("link and chmod");
    assert_eq!(paths(&layer.tar), ["usr/", "usr/lib/", "usr/lib/a.txt"]);
    let err = copy_from_context(dir.path(), "COPY --link --chown=app a.txt /x/", &etc_root())
        .expect_err("named chown")
        .to_string();
    assert!(err.contains("--link") && err.contains("numeric"), "{err}");
}

// ---- users ----

#[test]
fn chown_names_come_from_the_stages_passwd_and_group() {
    let root = etc_root();
    let chown = |t: &str| resolve_chown(&root, &Chown::parse(t).expect("parse"));
    assert_eq!(
        chown("app"),
        Ok((1000, 1001)),
        "a name takes its primary group"
    );
    assert_eq!(chown("app:staff"), Ok((1000, 50)));
    assert_eq!(chown("app:7"), Ok((1000, 7)));
    assert_eq!(
        chown("1234"),
        Ok((1234, 1234)),
        "a number alone is uid and gid"
    );
    assert_eq!(chown("root"), Ok((0, 0)));
    assert_eq!(chown("5:root"), Ok((5, 0)));
    let err = chown("nobody").expect_err("missing user").to_string();
    assert!(
        err.contains("\"nobody\"") && err.contains("/etc/passwd"),
        "{err}"
    );
    let err = chown("app:nogroup").expect_err("missing group").to_string();
    assert!(
        err.contains("\"nogroup\"") && err.contains("/etc/group"),
        "{err}"
    );
    let err = resolve_chown(&Tree::new(), &Chown::parse("app").expect("parse"))
        .expect_err("no passwd")
        .to_string();
    assert!(err.contains("no /etc/passwd"), "{err}");
    // /etc/passwd reached through links inside the stage.
    let linked = tree(&[
        T::Dir("usr/share/base", 0o755, 0, 0),
        T::File("usr/share/base/passwd", PASSWD, 0o644, 0, 0),
        T::Link("etc", "usr/share/base"),
    ]);
    assert_eq!(
        resolve_chown(&linked, &Chown::parse("app").expect("parse")),
        Ok((1000, 1001))
    );
}

#[test]
fn user_resolution_follows_runcs_rules() {
    let root = etc_root();
    let user = |u: &str| resolve_user(&root, u);
    let r = |uid, gid, groups: &[u32]| {
        Ok(ResolvedUser {
            uid,
            gid,
            additional_gids: groups.to_vec(),
        })
    };
    assert_eq!(user(""), r(0, 0, &[0, 10]), "root with its groups");
    assert_eq!(
        user("app"),
        r(1000, 1001, &[1001, 50, 10]),
        "supplementary groups"
    );
    assert_eq!(
        user("1000"),
        r(1000, 1001, &[1001, 50, 10]),
        "a listed uid is the user"
    );
    assert_eq!(
        user("4242"),
        r(4242, 0, &[0]),
        "an unlisted uid runs with group 0"
    );
    assert_eq!(user("app:staff"), r(1000, 50, &[50]));
    assert_eq!(user("app:77"), r(1000, 77, &[77]));
    assert_eq!(user("5:6"), r(5, 6, &[6]));
    assert_eq!(user("root:root"), r(0, 0, &[0]));
    let err = user("nobody").expect_err("missing").to_string();
    assert!(
        err.contains("nobody") && err.contains("/etc/passwd has no such user"),
        "{err}"
    );
    let err = user("app:nogroup").expect_err("missing group").to_string();
    assert!(err.contains("nogroup"), "{err}");
    assert!(user("3000000000").is_err(), "out of range");
    let empty = Tree::new();
    assert_eq!(resolve_user(&empty, ""), r(0, 0, &[0]));
    assert_eq!(resolve_user(&empty, "1000:1000"), r(1000, 1000, &[1000]));
    let err = resolve_user(&empty, "app")
        .expect_err("no passwd")
        .to_string();
    assert!(err.contains("no /etc/passwd"), "{err}");
    // WORKDIR's owner goes through --chown's lookup.
    assert_eq!(workdir_owner(&root, "4242"), Ok((4242, 4242)));
    assert_eq!(workdir_owner(&root, "app"), Ok((1000, 1001)));
    assert_eq!(workdir_owner(&root, ""), Ok((0, 0)));
}

// ---- WORKDIR ----

#[test]
fn workdir_makes_missing_directories_only() {
    let root = tree(&[
        T::Dir("srv", 0o700, 3, 3),
        T::Link("data", "/srv"),
        T::File("file", b"", 0o644, 0, 0),
    ]);
    assert_eq!(workdir_layer(&root, "/srv", (1, 1), EPOCH), Ok(None));
    assert_eq!(
        workdir_layer(&root, "/data", (1, 1), EPOCH),
        Ok(None),
        "through a link"
    );
    let layer = workdir_layer(&root, "/data/app/x", (1000, 1001), EPOCH)
        .expect("workdir")
        .expect("a layer");
    let e = list(&layer.tar);
    assert_eq!(paths(&layer.tar), ["srv/", "srv/app/", "srv/app/x/"]);
    let made = entry(&e, "srv/app/x/");
    assert_eq!(
        (made.mode, made.uid, made.gid, made.mtime),
        (0o755, 1000, 1001, EPOCH as u64)
    );
    assert_eq!(
        entry(&e, "srv/").uid,
        3,
        "an existing parent keeps its owner"
    );
    let err = workdir_layer(&root, "/file/x", (0, 0), EPOCH).expect_err("file in the way");
    assert!(err.contains("/file"), "{err}");
    assert!(workdir_layer(&root, "/file", (0, 0), EPOCH).is_err());
}

// ---- the cache digest ----

#[test]
fn the_digest_ignores_times_but_sees_content_modes_names_and_links() {
    let dir = context(&[("app/a.txt", "aaaa"), ("app/b.txt", "bbbb")]);
    let line = "COPY app /app/";
    let base = digest_of(dir.path(), line);
    set_mtime(&dir.path().join("app/a.txt"), 1_500_000_000);
    assert_eq!(digest_of(dir.path(), line), base, "touch keeps the cache");

    fs::write(dir.path().join("app/a.txt"), "AAAA").expect("write");
    let changed = digest_of(dir.path(), line);
    assert_ne!(changed, base, "same-size content change");
    fs::write(dir.path().join("app/a.txt"), "aaaa").expect("write");
    assert_eq!(digest_of(dir.path(), line), base, "the content is back");

    fs::set_permissions(
        dir.path().join("app/a.txt"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    assert_ne!(digest_of(dir.path(), line), base, "chmod");
    fs::set_permissions(
        dir.path().join("app/a.txt"),
        fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    assert_eq!(digest_of(dir.path(), line), base);

    fs::rename(dir.path().join("app/b.txt"), dir.path().join("app/c.txt")).expect("rename");
    assert_ne!(
        digest_of(dir.path(), line),
        base,
        "rename inside a copied directory"
    );
    fs::rename(dir.path().join("app/c.txt"), dir.path().join("app/b.txt")).expect("rename");

    symlink("a.txt", dir.path().join("app/l")).expect("symlink");
    let with_link = digest_of(dir.path(), line);
    fs::remove_file(dir.path().join("app/l")).expect("rm");
    symlink("b.txt", dir.path().join("app/l")).expect("symlink");
    assert_ne!(digest_of(dir.path(), line), with_link, "link target");
    fs::remove_file(dir.path().join("app/l")).expect("rm");

    fs::hard_link(dir.path().join("app/a.txt"), dir.path().join("app/h")).expect("link");
    let hard = digest_of(dir.path(), line);
    fs::remove_file(dir.path().join("app/h")).expect("rm");
    fs::write(dir.path().join("app/h"), "aaaa").expect("copy");
    assert_ne!(
        digest_of(dir.path(), line),
        hard,
        "a hard link is not a copy"
    );
    fs::remove_file(dir.path().join("app/h")).expect("rm");

    let path = dir.path().join("app/a.txt");
    match rustix::fs::lsetxattr(&path, "user.hafen", b"1", rustix::fs::XattrFlags::empty()) {
        Ok(()) => assert_ne!(digest_of(dir.path(), line), base, "xattr"),
        Err(e) => eprintln!("user xattrs unsupported here ({e}); xattr change not checked"),
    }
}

#[test]
fn the_digest_covers_unpacking_and_stage_trees() {
    let dir = context(&[]);
    write_tar_gz(&dir.path().join("a.tar.gz"), &[("f", b"x".as_slice())]);
    let add = source_digest(
        &copy_step("ADD a.tar.gz /x/"),
        CopySource::Context(&ctx(dir.path())),
        "ADD",
    )
    .expect("add");
    let copy = source_digest(
        &copy_step("COPY a.tar.gz /x/"),
        CopySource::Context(&ctx(dir.path())),
        "COPY",
    )
    .expect("copy");
    assert_ne!(add, copy, "the unpack decision is in the digest");

    let one = tree(&[T::File("f", b"x", 0o644, 1, 1)]);
    let other_owner = tree(&[T::File("f", b"x", 0o644, 2, 1)]);
    let step = copy_step("COPY --from=src /f /f");
    let d = |t: &Tree| source_digest(&step, CopySource::Tree(t), "COPY").expect("digest");
    assert_ne!(d(&one), d(&other_owner), "owners of a stage's files count");
    assert_eq!(d(&one), d(&one.clone()));
}

// ---- reproducible bytes ----

#[test]
fn layer_bytes_do_not_depend_on_mtimes_after_the_epoch() {
    let make = |secs: u64| {
        let dir = context(&[("app/a.txt", "a"), ("app/sub/b.txt", "b")]);
        for p in ["app/a.txt", "app/sub/b.txt", "app/sub", "app"] {
            set_mtime(&dir.path().join(p), secs);
        }
        let layer = copy_from_context(dir.path(), "COPY app /app/", &etc_root()).expect("copy");
        (dir, layer)
    };
    let (_a, first) = make(1_600_000_000);
    let (_b, second) = make(1_700_000_000);
    assert_eq!(
        first.tar, second.tar,
        "same content, later times: same bytes"
    );
    assert_eq!(first.diff_id, second.diff_id);
    assert!(list(&first.tar).iter().all(|e| e.mtime == EPOCH as u64));
    // An older time is the file's own.
    let (_c, old) = make(900_000_000);
    assert_eq!(entry(&list(&old.tar), "app/a.txt").mtime, 900_000_000);
    let again = {
        let dir = context(&[("app/a.txt", "a"), ("app/sub/b.txt", "b")]);
        copy_from_context(dir.path(), "COPY app /app/", &etc_root()).expect("copy")
    };
    assert_eq!(
        again.diff_id, first.diff_id,
        "a fresh checkout gives the same layer"
    );
    assert_eq!(
        first.diff_id,
        format!(
            "sha256:{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(&first.tar)
        )
    );
}

#[test]
fn gnu_tar_lists_the_layer_as_expected() {
    let dir = context(&[("app/run", "#!/bin/sh\n")]);
    let long = "n".repeat(120);
    fs::write(dir.path().join("app").join(&long), "long").expect("long name");
    symlink("run", dir.path().join("app/start")).expect("symlink");
    fs::set_permissions(
        dir.path().join("app/run"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let layer = copy_from_context(
        dir.path(),
        "COPY --chown=1000:1001 app /opt/app/",
        &Tree::new(),
    )
    .expect("copy");
    let lines = gnu_tar_list(&layer.tar);
    let when = "2001-09-09 01:46:40";
    assert_eq!(
        lines,
        [
            format!("drwxr-xr-x 1000/1001 0 {when} opt/"),
            format!("drwxr-xr-x 1000/1001 0 {when} opt/app/"),
            format!("-rw-r--r-- 1000/1001 4 {when} opt/app/{long}"),
            format!("-rwxr-xr-x 1000/1001 10 {when} opt/app/run"),
            format!("lrwxrwxrwx 1000/1001 0 {when} opt/app/start -> run"),
        ]
    );
}

#[test]
fn long_names_and_links_round_trip_through_the_tree() {
    let deep = format!("{}/{}", "d".repeat(90), "e".repeat(90));
    let stage = tree(&[
        T::Dir(&deep, 0o755, 0, 0),
        T::File(
            &format!("{deep}/{}", "f".repeat(150)),
            b"x",
            0o644,
            3_000_000,
            4,
        ),
        T::Link(&format!("{deep}/l"), &"/t".repeat(80)),
    ]);
    let step = copy_step("COPY --from=src / /copy/");
    let layer =
        copy_layer(&step, CopySource::Tree(&stage), &Tree::new(), "COPY", EPOCH).expect("copy");
    let t = applied(&Tree::new(), &layer);
    let f = &t.nodes[&format!("copy/{deep}/{}", "f".repeat(150))];
    assert_eq!((f.uid, f.gid), (3_000_000, 4));
    assert_eq!(
        t.nodes[&format!("copy/{deep}/l")].kind,
        Kind::Symlink("/t".repeat(80))
    );
    let lines = gnu_tar_list(&layer.tar);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("3000000/4") && l.ends_with(&"f".repeat(150))),
        "{lines:#?}"
    );
}

#[test]
fn context_xattrs_reach_the_layer_but_selinux_labels_do_not() {
    let dir = context(&[("a", "x")]);
    let path = dir.path().join("a");
    if let Err(e) =
        rustix::fs::lsetxattr(&path, "user.hafen", b"v1", rustix::fs::XattrFlags::empty())
    {
        eprintln!("user xattrs unsupported here ({e}); skipped");
        return;
    }
    let layer = copy_from_context(dir.path(), "COPY a /a", &Tree::new()).expect("copy");
    let e = list(&layer.tar);
    assert_eq!(
        entry(&e, "a").xattrs,
        [("user.hafen".to_owned(), b"v1".to_vec())]
    );
    let lines = {
        let mut child = Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "-tvvf", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&layer.tar).expect("write");
        drop(stdin);
        let out = child.wait_with_output().expect("tar");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(lines.contains("user.hafen"), "{lines}");
}

// ---- ADD ----

fn write_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o640);
        h.set_uid(5);
        h.set_gid(6);
        h.set_mtime(1_900_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, path, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

fn write_tar_gz(path: &Path, entries: &[(&str, &[u8])]) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&write_tar(entries)).expect("gzip");
    fs::write(path, gz.finish().expect("gzip")).expect("write");
}

/// A tar with raw entry names (the tar crate refuses `..` when writing).
fn raw_tar(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(0);
    {
        let gnu = h.as_gnu_mut().expect("gnu");
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    if let Some(l) = link {
        h.set_link_name_literal(l).expect("link");
    }
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn add_unpacks_local_archives_with_their_owners() {
    let dir = context(&[]);
    write_tar_gz(
        &dir.path().join("app.tar.gz"),
        &[("bin/tool", b"elf"), ("share/doc/README", b"read me")],
    );
    fs::write(dir.path().join("plain.tar"), write_tar(&[("p", b"plain")])).expect("tar");
    let zst = zstd::stream::encode_all(write_tar(&[("z", b"zstd")]).as_slice(), 3).expect("zstd");
    fs::write(dir.path().join("z.tar.zst"), zst).expect("zst");
    let root = etc_root();
    let layer = copy_from_context(dir.path(), "ADD app.tar.gz /opt/app", &root).expect("add");
    let e = list(&layer.tar);
    let tool = entry(&e, "opt/app/bin/tool");
    assert_eq!(
        (tool.mode, tool.uid, tool.gid, tool.data.as_slice()),
        (0o640, 5, 6, b"elf".as_slice())
    );
    assert_eq!(tool.mtime, EPOCH as u64, "archive times are clamped too");
    let implied = entry(&e, "opt/app/share/doc/");
    assert_eq!(
        (implied.mode, implied.uid),
        (0o755, 0),
        "implied directories"
    );
    assert_eq!(
        entry(&e, "opt/app/").mode,
        0o755,
        "the destination is a directory"
    );

    let layer = copy_from_context(
        dir.path(),
        "ADD --chown=app --chmod=600 app.tar.gz /opt/",
        &root,
    )
    .expect("chown");
    let e = list(&layer.tar);
    let tool = entry(&e, "opt/bin/tool");
    assert_eq!(
        (tool.mode, tool.uid, tool.gid),
        (0o640, 1000, 1001),
        "--chmod does not apply"
    );
    assert_eq!(
        entry(&e, "opt/").mode,
        0o755,
        "the destination is 0755 whatever --chmod says"
    );

    let layer =
        copy_from_context(dir.path(), "ADD plain.tar z.tar.zst /x/", &root).expect("plain, zstd");
    assert_eq!(paths(&layer.tar), ["x/", "x/p", "x/z"]);
    let layer = copy_from_context(dir.path(), "ADD --unpack=false plain.tar /x/", &root)
        .expect("no unpack");
    assert_eq!(paths(&layer.tar), ["x/", "x/plain.tar"]);
    let layer =
        copy_from_context(dir.path(), "COPY plain.tar /x/", &root).expect("COPY never unpacks");
    assert_eq!(paths(&layer.tar), ["x/", "x/plain.tar"]);
}

#[test]
fn add_archives_follow_links_inside_the_destination_and_replace_entries() {
    let dir = context(&[]);
    let mut tar = write_tar(&[("lib/x.so", b"so")]);
    // Append more entries before the end blocks: a file that a directory
    // then replaces, and a hard link.
    tar.truncate(tar.len() - 1024);
    let mut b = tar::Builder::new(tar);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o640);
    h.set_cksum();
    b.append_link(&mut h, "lib/y.so", "lib/x.so")
        .expect("hard link");
    let tar = b.into_inner().expect("tar");
    fs::write(dir.path().join("l.tar"), tar).expect("write");
    let root = tree(&[
        T::Dir("usr/lib", 0o755, 0, 0),
        T::Link("lib", "usr/lib"),
        T::Dir("etc/old", 0o755, 0, 0),
        T::File("etc/old/f", b"", 0o644, 0, 0),
    ]);
    let layer = copy_from_context(dir.path(), "ADD l.tar /", &root).expect("add");
    let e = list(&layer.tar);
    assert_eq!(entry(&e, "usr/lib/x.so").data, b"so");
    let y = entry(&e, "usr/lib/y.so");
    assert_eq!((y.kind, y.link.as_deref()), ('1', Some("usr/lib/x.so")));
    let t = applied(&root, &layer);
    assert_eq!(t.nodes["lib"].kind, Kind::Symlink("usr/lib".into()));

    // A file replacing an image directory, then a directory again: the
    // image's old contents must not come back.
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind) in [
        ("etc/old", tar::EntryType::Regular),
        ("etc/old", tar::EntryType::Directory),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o700);
        h.set_cksum();
        b.append_data(&mut h, name, std::io::empty())
            .expect("entry");
    }
    fs::write(dir.path().join("r.tar"), b.into_inner().expect("tar")).expect("write");
    let layer = copy_from_context(dir.path(), "ADD r.tar /", &root).expect("replace");
    let t = applied(&root, &layer);
    assert_eq!(t.nodes["etc/old"].kind, Kind::Dir);
    assert_eq!(t.nodes["etc/old"].mode, 0o700);
    assert!(
        !t.nodes.contains_key("etc/old/f"),
        "{:?}",
        paths(&layer.tar)
    );
}

#[test]
fn hostile_archives_and_whiteout_names_are_refused() {
    let dir = context(&[(".wh.secret", "x")]);
    let root = Tree::new();
    for (name, tar) in [
        (
            "up.tar",
            raw_tar("../escape", tar::EntryType::Regular, None),
        ),
        (
            "mid.tar",
            raw_tar("a/../../escape", tar::EntryType::Regular, None),
        ),
        (
            "wh.tar",
            raw_tar("dir/.wh.victim", tar::EntryType::Regular, None),
        ),
        (
            "hl.tar",
            raw_tar("h", tar::EntryType::Link, Some("../../etc/shadow")),
        ),
    ] {
        fs::write(dir.path().join(name), tar).expect("write");
        let err = copy_from_context(dir.path(), &format!("ADD {name} /x/"), &root)
            .expect_err(name)
            .to_string();
        assert!(err.contains(name) && err.contains("ADD"), "{name}: {err}");
    }
    let err = copy_from_context(dir.path(), "COPY .wh.secret /x/", &root)
        .expect_err("whiteout name")
        .to_string();
    assert!(err.contains(".wh."), "{err}");
    // An absolute entry name stays inside the destination.
    fs::write(
        dir.path().join("abs.tar"),
        raw_tar("/etc/passwd", tar::EntryType::Regular, None),
    )
    .expect("write");
    let layer = copy_from_context(dir.path(), "ADD abs.tar /x/", &root).expect("absolute name");
    assert_eq!(paths(&layer.tar), ["x/", "x/etc/", "x/etc/passwd"]);
}

#[test]
fn devices_from_a_stage_stay_devices() {
    use crate::tree::tests::{tar_of, E};
    let mut stage = Tree::new();
    stage
        .apply_layer(0, tar_of(&[E::Char("dev/null", 1, 3)]).as_slice())
        .expect("stage");
    let step = copy_step("COPY --from=src /dev/ /dev/");
    let layer =
        copy_layer(&step, CopySource::Tree(&stage), &Tree::new(), "COPY", EPOCH).expect("copy");
    let lines = gnu_tar_list(&layer.tar);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("crw-rw-rw- 0/0 1,3") && l.ends_with("dev/null")),
        "{lines:#?}"
    );
    let t = applied(&Tree::new(), &layer);
    assert_eq!(t.nodes["dev/null"].kind, Kind::Char(1, 3));
}
