//! Volumes: a named volume on the VM's data disk keeps its data across a
//! power-off and the next boot (which mounts the disk clean, no journal
//! replay), `volumes_from` shares another container's volumes, a
//! read-only volume refuses writes, a tmpfs has its size limit, and the
//! disk image on the host passes `e2fsck -n` afterwards.

mod common;

use std::process::Command;

use common::{build_image, Scratch, Vm, VmData};

/// How long a `hafen` verb may take.
const CLI: std::time::Duration = std::time::Duration::from_secs(60);

const MANIFEST: &str = r#"
name = "volumes"
data_size = "64M"

[[volume]]
name = "db"

[[volume]]
name = "shared"

[[container]]
name = "writer"
image = "oci:busybox:1"
phase = "once"
volumes = ["db:/data", "shared:/shared"]
command = ["/bin/sh", "-c", """
if [ -e /data/value ]; then echo "found $(cat /data/value)"; else echo "first boot $$" > /data/value; sync; echo wrote; fi
echo "from the writer" > /shared/note
"""]

[[volume]]
name = "mapped"

[[volume]]
name = "owned"

[[container]]
name = "mapped"
image = "oci:busybox:1"
phase = "once"
userns = true
volumes = ["mapped:/m"]
command = ["/bin/sh", "-c", "echo x > /m/f && echo \"userns root wrote as $(stat -c %u /m/f)\""]

[[container]]
name = "owned"
image = "oci:busybox:1"
phase = "once"
user = "1000:1000"
volumes = ["owned:/o"]
command = ["/bin/sh", "-c", "echo x > /o/f && echo \"user wrote as $(stat -c %u:%g /o/f)\""]

[[container]]
name = "anon"
image = "oci:withvol:1"
phase = "once"
command = ["/bin/sh", "-c", "if [ -e /data/kept ]; then echo \"image volume kept $(cat /data/kept)\"; else echo first > /data/kept; echo 'image volume written'; fi"]

[[container]]
name = "reader"
image = "oci:busybox:1"
phase = "once"
volumes_from = ["writer:ro"]
tmpfs = ["/scratch:size=1m"]
command = ["/bin/sh", "-c", """
echo "reader sees: $(cat /shared/note)"
touch /data/nope 2>/dev/null && echo "ro volume WRITABLE" || echo "ro volume refused a write"
dd if=/dev/zero of=/scratch/big bs=1k count=2048 2>/dev/null && echo "tmpfs UNLIMITED" || echo "tmpfs full at $(du -k /scratch/big | cut -f1)k"
"""]
"#;

#[test]
fn a_named_volume_survives_a_power_off_and_is_shared_read_only_and_tmpfs_is_bounded() {
    let scratch = Scratch::new("volumes");
    // An image that declares a volume (Dockerfile's VOLUME /data).
    let rootfs = common::busybox_layout()
        .parent()
        .expect("layout dir")
        .join("rootfs");
    let import = Command::new(common::hafen())
        .args(["image", "import"])
        .arg(&rootfs)
        .arg("-o")
        .arg(scratch.0.join("withvol"))
        .args(["--tag", "1", "--env", "PATH=/bin", "--volume", "/data"])
        .output()
        .expect("hafen image import");
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let image = build_image(&scratch, MANIFEST);
    let name = format!("volumes-{}", std::process::id());
    let data = VmData::new(&name);

    let mut first = Vm::boot_with(&image, &["--name", &name]);
    first.checked(|| {
        first.wait_for("writer | wrote");
        first.wait_for("anon | image volume written");
        // New volumes belong to the container's user, as its userns maps it.
        first.wait_for("mapped | userns root wrote as 0");
        first.wait_for("owned | user wrote as 1000:1000");
        first.wait_for("reader | reader sees: from the writer");
        first.wait_for("reader | ro volume refused a write");
        let full = first.wait_for("reader | tmpfs full at");
        let kib: u32 = full
            .rsplit("at ")
            .next()
            .and_then(|k| k.trim_end_matches('k').parse().ok())
            .unwrap_or(u32::MAX);
        assert!(kib <= 1024, "{full}");
    });
    assert_eq!(first.wait_exit().code(), Some(0), "{}", first.console());
    first.assert_console("data disk unmounted cleanly");
    let disk = data.0.join("data.img");
    assert!(disk.is_file(), "no {}", disk.display());
    let fsck = Command::new("/usr/sbin/e2fsck")
        .args(["-f", "-n"])
        .arg(&disk)
        .output()
        .expect("run e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck -n after a clean power-off: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );

    let mut second = Vm::boot_with(&image, &["--name", &name]);
    second.checked(|| {
        let found = second.wait_for("writer | found");
        assert!(found.contains("found first boot"), "{found}");
        second.wait_for("anon | image volume kept first");
        second.assert_console("clean, mounted on");
    });
    assert_eq!(second.wait_exit().code(), Some(0), "{}", second.console());
    assert!(!second.console().contains("journal was replayed"));
}

#[test]
fn bad_volume_declarations_are_build_errors_naming_the_container() {
    let scratch = Scratch::new("badvolumes");
    for (manifest, words) in [
        (
            "[[container]]\nname = \"a\"\nimage = \"oci:busybox:1\"\nvolumes = [\"ghost:/data\"]\n",
            &["ghost", "a"][..],
        ),
        (
            "[[volume]]\nname = \"v\"\n[[container]]\nname = \"a\"\nimage = \"oci:busybox:1\"\nvolumes = [\"v:data\"]\n",
            &["absolute", "a"][..],
        ),
        (
            "[[volume]]\nname = \"v\"\n[[container]]\nname = \"a\"\nimage = \"oci:busybox:1\"\nvolumes = [\"v:/d\"]\ntmpfs = [\"/d\"]\n",
            &["/d", "a"][..],
        ),
        (
            "[[container]]\nname = \"a\"\nimage = \"oci:busybox:1\"\nvolumes_from = [\"b\"]\n[[container]]\nname = \"b\"\nimage = \"oci:busybox:1\"\nvolumes_from = [\"a\"]\n",
            &["cycle", "a", "b"][..],
        ),
    ] {
        let path = scratch.0.join("hafen.toml");
        std::fs::write(&path, format!("name = \"bad\"\n{manifest}")).expect("write manifest");
        let _ = std::os::unix::fs::symlink(common::busybox_layout(), scratch.0.join("busybox"));
        let out = Command::new(common::hafen())
            .arg("build")
            .arg(&path)
            .arg("-o")
            .arg(scratch.0.join("out"))
            .arg("--init")
            .arg(common::init_binary())
            .output()
            .expect("run hafen build");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{manifest} built");
        for word in words {
            assert!(stderr.contains(word), "{manifest}: {stderr} lacks {word}");
        }
        assert!(!scratch.0.join("out").exists(), "no half-written output");
    }
}

/// The crash test: a container appends numbered records to a file on a
/// volume, fsyncs each and only then prints its number; the host kills
/// QEMU with SIGKILL at a random moment; the next boot's first container
/// checks that the file holds every record up to the last number the host
/// saw printed, contiguous and none torn, and the appending goes on until
/// the next kill. Twenty kills, then a clean power-off and `e2fsck -f -n`
/// of the disk on the host.
#[test]
fn fsynced_records_survive_a_killed_hypervisor() {
    const TRIALS: usize = 20;
    let scratch = Scratch::new("crash");
    let image = build_image(
        &scratch,
        r#"
name = "crash"
data_size = "64M"

[[volume]]
name = "log"

[[container]]
name = "check"
image = "oci:busybox:1"
phase = "once"
volumes = ["log:/log"]
command = ["/bin/sh", "-c", """
touch /log/records
bad=$(grep -cv '^rec [0-9]\\{8\\} xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx$' /log/records)
gap=$(awk '$2 != sprintf("%08d", NR) { print NR; exit }' /log/records)
echo "check lines=$(wc -l < /log/records) last=$(tail -n 1 /log/records | cut -d ' ' -f 2) bad=$bad gap=${gap:-none}"
"""]

[[container]]
name = "append"
image = "oci:busybox:1"
volumes = ["log:/log"]
command = ["/bin/sh", "-c", """
trap 'exit 0' TERM
n=$(wc -l < /log/records)
while true; do
  n=$((n + 1))
  printf 'rec %08d %s\\n' $n xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx >> /log/records
  sync -d /log/records
  echo "synced $n"
  [ -e /log/stop ] && exit 0
done
"""]
"#,
    );
    let name = format!("crash-{}", std::process::id());
    let data = VmData::new(&name);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut random = move |below: u64| {
        // xorshift64: enough to spread the kills.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let synced =
        |line: &str| -> Option<u64> { line.split_once("append | synced ")?.1.trim().parse().ok() };
    let mut last_seen = 0u64;
    let mut report: Vec<(usize, u64, u64, u64)> = Vec::new();
    for trial in 0..=TRIALS {
        let vm = Vm::boot_with(&image, &["--name", &name]);
        let check = vm.wait_for("check | check lines=");
        vm.checked(|| {
            let field = |key: &str| {
                check
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .unwrap_or_default()
                    .to_owned()
            };
            let lines: u64 = field("lines=").parse().expect("a line count");
            assert_eq!(
                field("bad="),
                "0",
                "torn records after trial {trial}: {check}"
            );
            assert_eq!(field("gap="), "none", "a gap after trial {trial}: {check}");
            assert!(
                lines >= last_seen,
                "trial {trial}: the host saw record {last_seen} synced, the file has {lines}"
            );
            if trial > 0 {
                vm.assert_console("its journal was replayed");
            }
            if let Some(last) = report.last_mut() {
                last.3 = lines;
            }
        });
        vm.wait_for("append | synced");
        if trial == TRIALS {
            // What `hafen volume` says of it, then the last boot powers
            // off cleanly and the disk is checked.
            vm.checked(|| {
                let ls = common::eventually("hafen volume ls", common::BOOT_TIMEOUT, || {
                    let ran = common::hafen_cli(&["volume", "ls", &name], None, CLI);
                    match ran.code() {
                        Some(0) => Ok(ran.stdout()),
                        _ => Err(ran.stderr),
                    }
                });
                let row = ls
                    .lines()
                    .find(|l| l.starts_with("log "))
                    .unwrap_or_default();
                assert!(row.contains("disk") && row.contains("check,append"), "{ls}");
                let inspect = common::hafen_cli(&["volume", "inspect", &name, "log"], None, CLI)
                    .ok("volume inspect");
                let v: serde_json::Value = serde_json::from_str(&inspect).expect("JSON");
                assert!(v["used_bytes"].as_u64().unwrap_or(0) > 0, "{inspect}");
                let missing = common::hafen_cli(&["volume", "inspect", &name, "nope"], None, CLI);
                assert_eq!(missing.code(), Some(1));
                assert!(
                    missing.stderr.contains("no volume \"nope\""),
                    "{}",
                    missing.stderr
                );
            });
            let mut vm = vm;
            vm.signal(libc::SIGTERM);
            assert_eq!(vm.wait_exit().code(), Some(0), "{}", vm.console());
            vm.assert_console("data disk unmounted cleanly");
            break;
        }
        // Kill QEMU 0 to 1500 ms into the appending.
        let delay = random(1500);
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let qemu = qemu_pid(&vm);
        // SAFETY: kill takes plain integers; the pid is the QEMU our
        // `hafen run` child started.
        assert_eq!(unsafe { libc::kill(qemu, libc::SIGKILL) }, 0, "kill QEMU");
        let mut vm = vm;
        vm.wait_exit();
        last_seen = vm
            .console()
            .lines()
            .filter_map(synced)
            .max()
            .unwrap_or(last_seen);
        report.push((trial + 1, delay, last_seen, 0));
    }
    eprintln!(
        "crash trials: trial, QEMU killed after ms of appending, last record the host saw synced, records in the file at the next boot"
    );
    for (trial, delay, seen, lines) in &report {
        eprintln!("  {trial:2}  {delay:4} ms  {seen:6}  {lines:6}");
    }
    let disk = data.0.join("data.img");
    let fsck = Command::new("/usr/sbin/e2fsck")
        .args(["-f", "-n"])
        .arg(&disk)
        .output()
        .expect("run e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck -f -n after {TRIALS} kills: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// The QEMU of the `hafen run` child `vm`, from its state directory.
fn qemu_pid(vm: &Vm) -> libc::pid_t {
    let vms = hafen_qemu::state::vms_dir(&hafen_qemu::state::runtime_dir());
    let dir = hafen_qemu::state::list_vms(&vms)
        .into_iter()
        .find(|v| v.pid == vm.pid() as u32)
        .expect("the VM's state directory");
    std::fs::read_to_string(dir.path.join(hafen_qemu::state::QEMU_PID))
        .expect("qemu.pid")
        .trim()
        .parse()
        .expect("a pid")
}

/// `hafen run -v HOSTDIR:VOLUME` as an ordinary user (nobody): the guest
/// reads what the host put there and what it writes appears on the host,
/// owned by that user; the data disk is made in the user's own data
/// directory, a read-only one refuses writes, and the user exports and
/// imports a volume.
#[test]
fn a_host_directory_backs_a_volume_for_an_ordinary_user() {
    use common::NOBODY;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let scratch = Scratch::new("hostdir");
    let image = build_image(
        &scratch,
        r#"
name = "hostdir"

[[volume]]
name = "share"

[[volume]]
name = "docs"

[[volume]]
name = "db"

[[container]]
name = "guest"
image = "oci:busybox:1"
phase = "once"
volumes = ["share:/share", "docs:/docs", "db:/db"]
command = ["/bin/sh", "-c", """
echo "host says: $(cat /share/from-host)"
echo "written in the guest" > /share/from-guest
echo "docs say: $(cat /docs/readme)"
touch /docs/nope 2>/dev/null && echo "docs WRITABLE" || echo "docs refused a write"
echo kept > /db/kept && echo "db written"
"""]

[[container]]
name = "stay"
image = "oci:busybox:1"
volumes = ["db:/db"]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo staying; while true; do sleep 1 & wait $!; done"]
"#,
    );
    let home = scratch.0.join("home");
    let share = scratch.0.join("share");
    let docs = scratch.0.join("docs");
    for dir in [&home, &share, &docs] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(share.join("from-host"), "hello from the host\n").expect("write");
    std::fs::write(docs.join("readme"), "read only\n").expect("write");
    for path in [&home, &share] {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    // nobody must reach the image and the directories.
    for dir in [&scratch.0, &image] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let name = format!("hostdir-{}", std::process::id());
    let mut command = common::hafen_as_nobody(&home);
    command
        .args(["run", "--accel", "tcg", "--name", &name, "-v"])
        .arg(format!("{}:share", share.display()))
        .arg("-v")
        .arg(format!("{}:docs:ro", docs.display()))
        .arg(&image);
    let as_nobody = |args: &[&str]| {
        let out = common::hafen_as_nobody(&home)
            .args(args)
            .output()
            .expect("hafen as nobody");
        assert!(
            out.status.success(),
            "hafen {args:?} as nobody: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut vm = Vm::spawn(command);
    vm.checked(|| {
        vm.wait_for("guest | host says: hello from the host");
        vm.wait_for("guest | docs say: read only");
        vm.wait_for("guest | docs refused a write");
        vm.wait_for("guest | db written");
        vm.wait_for("stay | staying");
        // Volume export and import need no privilege either.
        let archive = home.join("db.tar");
        let archive = archive.to_str().expect("utf-8");
        as_nobody(&["volume", "export", &name, "db", "-o", archive]);
        as_nobody(&["volume", "import", &name, "copy", "-i", archive]);
        let listing = Command::new("tar")
            .args(["-tf", archive])
            .output()
            .expect("tar");
        assert!(String::from_utf8_lossy(&listing.stdout).contains("./kept"));
        assert_eq!(
            std::fs::metadata(archive).expect("the archive").uid(),
            NOBODY
        );
    });
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait_exit().code(), Some(0), "{}", vm.console());
    let written = share.join("from-guest");
    assert_eq!(
        std::fs::read_to_string(&written).expect("the guest's file on the host"),
        "written in the guest\n"
    );
    let meta = std::fs::metadata(&written).expect("stat");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (NOBODY, NOBODY),
        "owned by the user"
    );
    assert!(!docs.join("nope").exists());
    let disk = home.join("data/hafen/vms").join(&name).join("data.img");
    let meta = std::fs::metadata(&disk).expect("the data disk in the user's data directory");
    assert_eq!(meta.uid(), NOBODY);
}

/// A full data disk fails the container that writes, not PID 1: the
/// writer sees ENOSPC, a service using the same volume runs on, and the
/// machine still powers off with the disk unmounted cleanly.
#[test]
fn a_full_data_disk_fails_the_writer_not_pid_1() {
    let scratch = Scratch::new("fulldisk");
    let image = build_image(
        &scratch,
        r#"
name = "fulldisk"
data_size = "16M"

[[volume]]
name = "d"

[[container]]
name = "filler"
image = "oci:busybox:1"
phase = "once"
volumes = ["d:/d"]
command = ["/bin/sh", "-c", "dd if=/dev/zero of=/d/fill bs=1M count=64 2>/dev/null && echo 'disk NEVER full' || echo \"write refused: $(df -k /d | tail -1)\""]

[[container]]
name = "steady"
image = "oci:busybox:1"
volumes = ["d:/d"]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo steady up; while true; do sleep 1 & wait $!; done"]
"#,
    );
    let name = format!("fulldisk-{}", std::process::id());
    let _data = VmData::new(&name);
    let mut vm = Vm::boot_with(&image, &["--name", &name]);
    vm.checked(|| {
        vm.wait_for("filler | write refused");
        vm.wait_for("steady | steady up");
    });
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait_exit().code(), Some(0), "{}", vm.console());
    vm.assert_console("data disk unmounted cleanly");
    assert!(!vm.console().contains("filler | disk NEVER full"));
}

/// `hafen volume export|import`: an export taken while the container that
/// writes the volume runs (it is paused meanwhile, and runs on after), a
/// tar GNU tar reads with every owner, link and FIFO; imported into a new
/// volume and exported again it gives the same bytes. An import into a
/// volume a running container mounts is refused naming it; a truncated
/// or garbage archive changes nothing; after `hafen stop` an import
/// replaces the volume and the container starts on it.
#[test]
fn volumes_export_and_import_round_trip_and_bad_archives_change_nothing() {
    use std::io::Write;
    let scratch = Scratch::new("volcopy");
    let image = build_image(
        &scratch,
        r#"
name = "volcopy"
data_size = "64M"

[[volume]]
name = "db"

[[container]]
name = "db"
image = "oci:busybox:1"
volumes = ["db:/data"]
command = ["/bin/sh", "-c", """
trap 'exit 0' TERM
if [ ! -e /data/seeded ]; then
  mkdir -p /data/sub/deeper
  echo hello > /data/sub/file
  ln /data/sub/file /data/hard
  ln -s sub/file /data/soft
  mkfifo /data/pipe
  dd if=/dev/urandom of=/data/random bs=1k count=300 2>/dev/null
  chown -R 1000:1000 /data/sub
  chmod 4750 /data/sub/file
  touch /data/seeded
fi
echo "db ready $(cat /data/sub/file)"
i=0
while true; do i=$((i+1)); echo $i > /data/count; sleep 0.05 & wait $!; done
"""]
"#,
    );
    let name = format!("volcopy-{}", std::process::id());
    let _data = VmData::new(&name);
    let a = scratch.0.join("a.tar");
    let (a_str, vm_name) = (a.to_str().expect("utf-8"), name.as_str());
    let mut vm = Vm::boot_with(&image, &["--name", &name]);
    vm.checked(|| {
        vm.wait_for("db | db ready hello");
        let mut events = Command::new(common::hafen())
            .args(["events", vm_name])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("hafen events");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let export =
            common::hafen_cli(&["volume", "export", vm_name, "db", "-o", a_str], None, CLI);
        export.ok("export db");
        assert!(
            export.stderr.contains("exported volume db"),
            "{}",
            export.stderr
        );
        // The container was paused for the copy and runs on afterwards.
        let paused = common::eventually("pause and unpause events", CLI, || {
            let ps = common::hafen_cli(&["ps", vm_name], None, CLI).ok("ps");
            if ps.contains("Paused") {
                return Err(format!("still paused: {ps}"));
            }
            Ok(ps)
        });
        assert!(paused.contains("Up"), "{paused}");
        let _ = events.kill();
        let out = events.wait_with_output().expect("events output");
        let seen = String::from_utf8_lossy(&out.stdout).into_owned();
        let pause = seen
            .find(" db pause")
            .unwrap_or_else(|| panic!("no pause: {seen}"));
        let unpause = seen
            .find(" db unpause")
            .unwrap_or_else(|| panic!("no unpause: {seen}"));
        assert!(pause < unpause, "{seen}");

        // GNU tar is the oracle for the format.
        let listing = Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&a)
            .output()
            .expect("tar -tvf");
        assert!(listing.status.success());
        let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
        for want in [
            "-rwsr-x--- 1000/1000",
            "./sub/file",
            "./sub/file link to ./hard",
            "./soft -> sub/file",
            "prw-r--r--",
            "./random",
            "drwxr-xr-x 1000/1000",
        ] {
            assert!(listing.contains(want), "no {want:?} in\n{listing}");
        }

        // Into a new volume and out again: the same bytes.
        common::hafen_cli(
            &["volume", "import", vm_name, "copy", "-i", a_str],
            None,
            CLI,
        )
        .ok("import into a new volume");
        let original = std::fs::read(&a).expect("a.tar");
        let again = common::hafen_cli(&["volume", "export", vm_name, "copy"], None, CLI);
        again.ok("export copy to stdout");
        assert!(again.stdout == original, "export, import, export differ");

        // Refused or bad imports leave the volume as it was.
        let busy = common::hafen_cli(&["volume", "import", vm_name, "db", "-i", a_str], None, CLI);
        assert_ne!(busy.code(), Some(0));
        assert!(
            busy.stderr.contains("mounted by container db") && busy.stderr.contains("hafen stop"),
            "{}",
            busy.stderr
        );
        let cut = common::hafen_cli(
            &["volume", "import", vm_name, "copy"],
            Some(&original[..original.len() / 2]),
            CLI,
        );
        assert_ne!(cut.code(), Some(0));
        assert!(
            cut.stderr.contains("truncated") && cut.stderr.contains("unchanged"),
            "{}",
            cut.stderr
        );
        let mut garbage = b"this is not a tar archive\n".to_vec();
        garbage.resize(4096, b'x');
        let bad = common::hafen_cli(&["volume", "import", vm_name, "copy"], Some(&garbage), CLI);
        assert!(bad.stderr.contains("not a tar archive"), "{}", bad.stderr);
        let still = common::hafen_cli(&["volume", "export", vm_name, "copy"], None, CLI);
        assert!(
            still.stdout == original,
            "a failed import changed the volume"
        );

        // Stopped, the volume takes an import and the container starts on it.
        let other = {
            // The same archive with one more file, written by GNU tar.
            let dir = scratch.0.join("extra");
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("added"), b"from the host\n").expect("write");
            let tar = Command::new("tar")
                .args(["-cf", "-", "-C"])
                .arg(&dir)
                .arg("added")
                .output()
                .expect("tar -cf");
            assert!(tar.status.success());
            [&original[..original.len() - 1024], &tar.stdout[..]].concat()
        };
        let extra = scratch.0.join("b.tar");
        std::fs::File::create(&extra)
            .and_then(|mut f| f.write_all(&other))
            .expect("b.tar");
        common::hafen_cli(&["stop", vm_name, "db"], None, CLI).ok("stop db");
        common::hafen_cli(
            &[
                "volume",
                "import",
                vm_name,
                "db",
                "-i",
                extra.to_str().expect("utf-8"),
            ],
            None,
            CLI,
        )
        .ok("import into the stopped container's volume");
        common::hafen_cli(&["start", vm_name, "db"], None, CLI).ok("start db");
        let seen = common::eventually("the imported file in the container", CLI, || {
            let out = common::hafen_cli(&["exec", vm_name, "db", "cat", "/data/added"], None, CLI);
            match out.code() {
                Some(0) => Ok(out.stdout()),
                _ => Err(out.stderr),
            }
        });
        assert_eq!(seen, "from the host\n");
        let ls = common::hafen_cli(&["volume", "ls", vm_name], None, CLI).ok("volume ls");
        assert!(ls.contains("copy") && ls.contains("db"), "{ls}");
        assert!(!ls.contains(".import"), "{ls}");
    });
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait_exit().code(), Some(0), "{}", vm.console());
}
