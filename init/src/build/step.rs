//! A RUN step: a container over an overlay of the step's lower layers with
//! a new layer as its upper directory, run with the runtime's own code
//! ([`crate::container::spawn`]) and the isolation Docker gives RUN: its
//! own pid, mount, ipc, uts and cgroup namespaces, a network namespace
//! with only `lo` unless the step shares the VM's, Docker's default
//! capabilities, masked and read-only /proc paths, a device filter, no
//! user namespace.
//!
//! The helper makes the overlay in a mount namespace of its own (so it
//! disappears with the helper however that ends) and the step's network
//! namespace for itself (the container inherits it, `lo` already up). The
//! step's stdout and stderr are the helper's, so they stream to the host;
//! its stdin is the helper's /dev/null. Under the step's lowers lies a
//! layer of empty mount points ([`STUB_DIRS`], [`STUB_FILES`]): the
//! runtime finds every mount point it needs and creates none in the new
//! layer.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hafen_proto::build::{RunStep, StepFile, SETUP_FAILED};
use hafen_proto::capability;
use hafen_proto::net::{self, NetworkConfig, NETWORK_CONFIG};
use hafen_proto::spec::{
    default_mounts, Capabilities, DeviceRule, Linux, Mount, Namespace, Process, Resources, Root,
    Seccomp, Spec, User, MASKED_PATHS, OCI_VERSION, READONLY_PATHS,
};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::layer::{exists, remove_tree};
use super::{step_cgroup, Place};
use crate::container::{self, cgroup, SpawnOptions, StartError, StdioMode, Step};
use crate::sys::{self, ExitStatus};

/// PATH when the step's environment has none (Docker adds the same).
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where a step finds its [`StepFile`]s.
const PIPES: &str = "/dev/pipes/";
/// Options that keep the upper directory plain: no redirects, index,
/// metacopy or inode-number xattrs, only what an OCI layer can express.
const OVERLAY_OPTIONS: &str = "redirect_dir=off,index=off,metacopy=off,xino=off";
/// mount(2) takes one page of options.
const MOUNT_DATA_MAX: usize = 4095;
/// Directories the runtime mounts on.
const STUB_DIRS: &[&str] = &["proc", "dev", "sys", "etc"];
/// Files the step gets bound over its root's (Docker's RUN has both).
const STUB_FILES: &[&str] = &["etc/hosts", "etc/resolv.conf"];
/// How long the step's last processes get to die after its init ended.
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(10);

/// Why a step did not start, and the helper's status for it.
#[derive(Debug)]
struct Failure {
    message: String,
    status: i32,
}

fn setup(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        status: SETUP_FAILED,
    }
}

/// Runs `step`; returns the helper's exit status: the step's own (128 + N
/// for a signal), or [`SETUP_FAILED`] when it could not start, in which
/// case layer `step.layer` does not exist afterwards.
pub fn run(place: &Place, step: &RunStep) -> i32 {
    let mut run = Run {
        place,
        step,
        made_layer: false,
        merged: None,
    };
    match run.start() {
        Ok(pid) => run.finish(pid),
        Err(failure) => {
            eprintln!("hafen: RUN (layer {}): {}", step.layer, failure.message);
            run.undo();
            failure.status
        }
    }
}

/// Kills what runs in the step that makes layer `n` (its cgroup) and
/// returns whether there was such a cgroup. PID 1 does this when the op
/// is cancelled; the helper when the step's init has ended.
pub fn kill_step(cgroup_root: &Path, parent: &str, n: u32) -> bool {
    let Some(root) = cgroup::find_v2(cgroup_root) else {
        return false;
    };
    std::fs::write(root.join(step_cgroup(parent, n)).join("cgroup.kill"), "1").is_ok()
}

struct Run<'a> {
    place: &'a Place,
    step: &'a RunStep,
    /// Layer `step.layer` was made here (and goes if the step cannot start).
    made_layer: bool,
    /// The merged root, while the overlay is mounted on it.
    merged: Option<PathBuf>,
}

impl Run<'_> {
    /// Sets everything up and starts the step; its pid.
    fn start(&mut self) -> Result<libc::pid_t, Failure> {
        self.check()?;
        let spec = self.prepare()?;
        let opts = SpawnOptions {
            id: format!("build-{}", self.step.layer),
            stdio: StdioMode::Inherit,
            gate: false,
            cgroup_root: self.place.cgroup_root.clone(),
            scratch_root: String::new(),
            hooks: false,
            console_socket: None,
            preserve_fds: 0,
            controllers: crate::container::cgroup::Controllers::All,
            compiled_seccomp: None,
        };
        match container::spawn(&spec, Path::new("/"), &opts) {
            Ok(spawned) => Ok(spawned.pid),
            Err(e) => {
                // A child that failed has exited or is about to: ours to reap.
                while let Ok(Some(_)) = sys::wait_any() {}
                let status = match &e {
                    StartError::Child {
                        step: Step::Exec, ..
                    } => e.exit_code(),
                    _ => SETUP_FAILED,
                };
                Err(Failure {
                    message: e.to_string(),
                    status,
                })
            }
        }
    }

    /// What the op asks must make sense before anything is made.
    fn check(&self) -> Result<(), Failure> {
        let (step, storage) = (self.step, &self.place.storage);
        let n = step.layer;
        if step.args.is_empty() {
            return Err(setup("no command to run"));
        }
        if !step.cwd.starts_with('/') || step.cwd.split('/').any(|c| c == "..") {
            return Err(setup(format!(
                "the working directory {:?} is not an absolute path without \"..\"",
                step.cwd
            )));
        }
        if let Some(bad) = step
            .env
            .iter()
            .find(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(setup(format!("environment entry {bad:?} is not KEY=VALUE")));
        }
        for f in &step.files {
            pipe_name(f)?;
        }
        if step.lowers.contains(&n) {
            return Err(setup(format!("layer {n} cannot be its own lower layer")));
        }
        for &l in &step.lowers {
            let is_dir = std::fs::symlink_metadata(storage.layer(l)).is_ok_and(|m| m.is_dir());
            if !is_dir {
                return Err(setup(format!("there is no layer {l} (a lower layer)")));
            }
        }
        if exists(&storage.layer(n)) {
            return Err(setup(format!("layer {n} exists already")));
        }
        Ok(())
    }

    /// The namespaces, the overlay and the files the step needs; its spec.
    fn prepare(&mut self) -> Result<Spec, Failure> {
        let (step, storage) = (self.step, &self.place.storage);
        let n = step.layer;
        // 0. The system call filter the host sent.
        let seccomp = match &step.seccomp_json {
            Some(json) => Some(
                serde_json::from_str(json)
                    .map_err(|e| setup(format!("the seccomp profile is not valid: {e}")))?,
            ),
            None => None,
        };
        // 1. Modes as Docker's RUN has them (a mkdir gives 0755).
        rustix::process::umask(Mode::from_raw_mode(0o022));
        // 2. Our own mount namespace: the overlay goes when we do, and
        //    nothing we mount reaches PID 1's.
        sys::unshare_mountns().map_err(|e| setup(format!("unshare the mount namespace: {e}")))?;
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )
        .map_err(|e| setup(format!("make / private: {e}")))?;
        // 3. The step's network: the VM's, or a namespace with only lo,
        //    which the container inherits.
        if !step.host_network {
            sys::unshare_netns()
                .map_err(|e| setup(format!("unshare the network namespace: {e}")))?;
            sys::interface_up("lo").map_err(|e| setup(format!("bring up lo: {e}")))?;
        }
        // 4. The mount-point stubs and the step's own directory.
        make_stubs(&storage.stubs()).map_err(setup)?;
        let dir = storage.step_dir(n);
        remove_tree(&dir).map_err(setup)?;
        let merged = dir.join("root");
        for d in [&dir, &merged, &dir.join("work")] {
            std::fs::create_dir_all(d)
                .map_err(|e| setup(format!("create {}: {e}", d.display())))?;
        }
        let pipes = write_pipes(&dir.join("pipes"), &step.files).map_err(setup)?;
        let hosts = dir.join("hosts");
        let resolv = dir.join("resolv.conf");
        write_file(&hosts, hosts_file(&step.hostname).as_bytes()).map_err(setup)?;
        write_file(&resolv, &resolv_conf(step.host_network)).map_err(setup)?;
        // 5. The new layer and the overlay over it.
        let upper = storage.layer(n);
        rustix::fs::mkdir(&upper, Mode::from_raw_mode(0o755)).map_err(|e| match e {
            Errno::EXIST => setup(format!("layer {n} exists already")),
            e => setup(format!("create {}: {e}", upper.display())),
        })?;
        self.made_layer = true;
        mount_overlay(&storage.layers(), &merged, &step.lowers, n).map_err(setup)?;
        self.merged = Some(merged.clone());
        // 6. The working directory, as root, 0755, in the new layer.
        make_cwd(&merged, &step.cwd).map_err(setup)?;
        // 7. hosts and resolv.conf over the root's (unless the image made
        //    them symlinks, which the runtime would refuse to mount on).
        let mut binds = Vec::new();
        for (file, source) in [("etc/hosts", &hosts), ("etc/resolv.conf", &resolv)] {
            if plain_file_beneath(&merged, file) {
                binds.push(bind(
                    &format!("/{file}"),
                    source,
                    &["rbind", "nosuid", "nodev", "noexec"],
                ));
            }
        }
        if let Some(pipes) = pipes {
            binds.push(bind(
                "/dev/pipes",
                &pipes,
                &["rbind", "ro", "nosuid", "nodev"],
            ));
        }
        Ok(self.spec(&merged, binds, seccomp))
    }

    fn spec(&self, merged: &Path, binds: Vec<Mount>, seccomp: Option<Seccomp>) -> Spec {
        let step = self.step;
        let caps: Vec<String> = capability::DEFAULT
            .iter()
            .map(|c| (*c).to_owned())
            .collect();
        // As Docker: a user other than root starts with no capabilities
        // (a setuid program may still gain those of the bounding set).
        let held = if step.uid == 0 {
            caps.clone()
        } else {
            Vec::new()
        };
        let mut env = step.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(DEFAULT_PATH.to_owned());
        }
        let namespaces = ["pid", "mount", "ipc", "uts", "cgroup"]
            .map(|kind| Namespace {
                kind: kind.to_owned(),
                path: None,
            })
            .to_vec();
        let mut mounts = default_mounts();
        mounts.extend(binds);
        Spec {
            oci_version: OCI_VERSION.to_owned(),
            process: Some(Process {
                user: User {
                    uid: step.uid,
                    gid: step.gid,
                    additional_gids: step.additional_gids.clone(),
                },
                args: step.args.clone(),
                env,
                cwd: step.cwd.clone(),
                no_new_privileges: false,
                capabilities: Some(Capabilities {
                    bounding: caps,
                    effective: held.clone(),
                    permitted: held,
                    inheritable: Vec::new(),
                    ambient: Vec::new(),
                }),
                ..Process::default()
            }),
            root: Some(Root {
                path: merged.to_string_lossy().into_owned(),
                readonly: false,
            }),
            hostname: (!step.hostname.is_empty()).then(|| step.hostname.clone()),
            mounts,
            linux: Some(Linux {
                namespaces,
                masked_paths: MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect(),
                readonly_paths: READONLY_PATHS.iter().map(|p| (*p).to_owned()).collect(),
                // Nothing but the runtime's default nodes (which it adds).
                resources: Some(Resources {
                    devices: vec![DeviceRule {
                        allow: false,
                        kind: Some("a".to_owned()),
                        major: None,
                        minor: None,
                        access: Some("rwm".to_owned()),
                    }],
                    ..Resources::default()
                }),
                cgroups_path: Some(step_cgroup(&self.place.cgroup_parent, step.layer)),
                seccomp,
                ..Linux::default()
            }),
            ..Spec::default()
        }
    }

    /// Waits for the step's init and cleans up; the step's status.
    fn finish(&mut self, pid: libc::pid_t) -> i32 {
        let status = match sys::wait_child(pid) {
            Ok(ExitStatus::Code(code)) => code,
            Ok(ExitStatus::Signal(signal)) => 128 + signal,
            Err(e) => {
                eprintln!(
                    "hafen: RUN (layer {}): wait for the step: {e}",
                    self.step.layer
                );
                SETUP_FAILED
            }
        };
        self.end();
        status
    }

    /// Ends whatever of the step is left and removes its private files;
    /// the layer stays.
    fn end(&mut self) {
        self.end_cgroup();
        if let Some(merged) = self.merged.take() {
            if let Err(e) = rustix::mount::unmount(&merged, UnmountFlags::empty()) {
                if let Err(e) = rustix::mount::unmount(&merged, UnmountFlags::DETACH) {
                    eprintln!("hafen: unmount {}: {e}", merged.display());
                } else {
                    eprintln!("hafen: {} was busy ({e}); detached", merged.display());
                }
            }
        }
        if let Err(e) = remove_tree(&self.place.storage.step_dir(self.step.layer)) {
            eprintln!("hafen: {e}");
        }
    }

    /// The step did not start: nothing of it stays, not even its layer.
    fn undo(&mut self) {
        self.end();
        if self.made_layer {
            if let Err(e) = remove_tree(&self.place.storage.layer(self.step.layer)) {
                eprintln!("hafen: {e}");
            }
        }
    }

    /// Kills what is left in the step's cgroup, waits for it to empty
    /// and removes it.
    fn end_cgroup(&self) {
        let Some(root) = cgroup::find_v2(&self.place.cgroup_root) else {
            return;
        };
        let dir = root.join(step_cgroup(&self.place.cgroup_parent, self.step.layer));
        if !dir.is_dir() {
            return;
        }
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        let deadline = Instant::now() + CGROUP_EMPTY_WAIT;
        while std::fs::read_to_string(dir.join("cgroup.events"))
            .is_ok_and(|events| events.lines().any(|l| l == "populated 1"))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = std::fs::remove_dir(&dir) {
            eprintln!("hafen: remove the step's cgroup {}: {e}", dir.display());
        }
    }
}

/// The name a step file has in /dev/pipes.
fn pipe_name(f: &StepFile) -> Result<&str, Failure> {
    f.path
        .strip_prefix(PIPES)
        .filter(|name| {
            !name.is_empty() && *name != "." && *name != ".." && !name.contains(['/', '\0'])
        })
        .ok_or_else(|| {
            setup(format!(
                "step file {:?} is not a name in {PIPES} (the only place for them)",
                f.path
            ))
        })
}

/// Writes `files` into `dir` (made for them); `None` when there are none.
fn write_pipes(dir: &Path, files: &[StepFile]) -> Result<Option<PathBuf>, String> {
    if files.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    for f in files {
        let name = pipe_name(f).map_err(|f| f.message)?;
        let path = dir.join(name);
        write_file(&path, &f.data)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode & 0o7777))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    Ok(Some(dir.to_owned()))
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), String> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// The step's /etc/hosts.
fn hosts_file(hostname: &str) -> String {
    let mut text = String::from("127.0.0.1\tlocalhost");
    if !hostname.is_empty() {
        text.push('\t');
        text.push_str(hostname);
    }
    text.push_str("\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    text
}

/// The step's /etc/resolv.conf: with the VM's network, what the VM's
/// network plan gives its containers (slirp's DNS when outbound traffic is
/// allowed), else the VM's own file; without a network, no nameserver.
fn resolv_conf(host_network: bool) -> Vec<u8> {
    if !host_network {
        return b"# this build step has no network\n".to_vec();
    }
    let plan = std::fs::read(NETWORK_CONFIG)
        .ok()
        .and_then(|text| serde_json::from_slice::<NetworkConfig>(&text).ok());
    match plan {
        Some(config) => net::resolv_conf(&config).into_bytes(),
        None => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
    }
}

/// Makes the stubs layer (once; several helpers may race to).
fn make_stubs(stubs: &Path) -> Result<(), String> {
    let made = |path: &Path, r: std::io::Result<()>| match r {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(format!("create {}: {e}", path.display()))
        }
        _ => Ok(()),
    };
    made(stubs, std::fs::create_dir_all(stubs))?;
    for d in STUB_DIRS {
        let path = stubs.join(d);
        made(&path, std::fs::create_dir(&path))?;
    }
    for f in STUB_FILES {
        let path = stubs.join(f);
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map(drop);
        made(&path, created)?;
    }
    Ok(())
}

/// Mounts the overlay of `lowers` (top-most first, then the stubs) under
/// layer `n` on `merged`. The options name the layers relative to
/// `layers_dir` (our working directory meanwhile), so a deep stack fits
/// the page mount(2) takes.
fn mount_overlay(layers_dir: &Path, merged: &Path, lowers: &[u32], n: u32) -> Result<(), String> {
    let mut lower: Vec<String> = lowers.iter().map(u32::to_string).collect();
    lower.push("../stubs".to_owned());
    let data = format!(
        "lowerdir={},upperdir={n},workdir=../steps/{n}/work,{OVERLAY_OPTIONS}",
        lower.join(":")
    );
    if data.len() > MOUNT_DATA_MAX {
        return Err(format!(
            "{} lower layers do not fit one overlay mount's options ({} bytes, at most {MOUNT_DATA_MAX})",
            lowers.len(),
            data.len()
        ));
    }
    rustix::process::chdir(layers_dir)
        .map_err(|e| format!("change directory to {}: {e}", layers_dir.display()))?;
    let data = std::ffi::CString::new(data).map_err(|e| e.to_string())?;
    let mounted = rustix::mount::mount(
        "overlay",
        merged,
        "overlay",
        MountFlags::empty(),
        Some(data.as_c_str()),
    );
    let _ = rustix::process::chdir("/");
    mounted.map_err(|e| {
        format!(
            "mount the overlay on {} ({}): {e}",
            merged.display(),
            data.to_string_lossy()
        )
    })
}

fn in_root(
    root: &rustix::fd::OwnedFd,
    path: &str,
    flags: OFlags,
) -> Result<rustix::fd::OwnedFd, Errno> {
    rustix::fs::openat2(
        root,
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

fn open_root(merged: &Path) -> Result<rustix::fd::OwnedFd, String> {
    rustix::fs::open(
        merged,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open {}: {e}", merged.display()))
}

/// Makes the working directory `cwd` inside the root at `merged` where it
/// is missing, symlinks on the way resolved inside the root.
fn make_cwd(merged: &Path, cwd: &str) -> Result<(), String> {
    let root = open_root(merged)?;
    let mut dir = in_root(&root, "/", OFlags::PATH | OFlags::DIRECTORY)
        .map_err(|e| format!("open {}: {e}", merged.display()))?;
    let mut done = String::new();
    for part in cwd.split('/').filter(|p| !p.is_empty() && *p != ".") {
        done.push('/');
        done.push_str(part);
        let opened = match in_root(&root, &done, OFlags::PATH | OFlags::DIRECTORY) {
            Err(Errno::NOENT) => rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o755))
                .and_then(|()| in_root(&root, &done, OFlags::PATH | OFlags::DIRECTORY)),
            other => other,
        };
        dir = opened.map_err(|e| format!("make the working directory {cwd} (at {done}): {e}"))?;
    }
    Ok(())
}

/// Whether `rel` in the root at `merged` is a regular file reached
/// without symlinks.
fn plain_file_beneath(merged: &Path, rel: &str) -> bool {
    let Ok(root) = open_root(merged) else {
        return false;
    };
    rustix::fs::openat2(
        &root,
        rel,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
    .and_then(|fd| rustix::fs::fstat(&fd))
    .is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
    })
}

fn bind(destination: &str, source: &Path, options: &[&str]) -> Mount {
    Mount {
        destination: destination.to_owned(),
        kind: Some("bind".to_owned()),
        source: Some(source.to_string_lossy().into_owned()),
        options: options.iter().map(|o| (*o).to_owned()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> StepFile {
        StepFile {
            path: path.to_owned(),
            mode: 0o755,
            data: b"#!/bin/sh\n".to_vec(),
        }
    }

    #[test]
    fn step_files_live_only_directly_in_dev_pipes() {
        assert_eq!(pipe_name(&file("/dev/pipes/EOF")).ok(), Some("EOF"));
        for bad in [
            "/etc/passwd",
            "/dev/pipes/",
            "/dev/pipes/..",
            "/dev/pipes/a/b",
            "dev/pipes/x",
        ] {
            let e = pipe_name(&file(bad)).expect_err(bad);
            assert_eq!(e.status, SETUP_FAILED);
            assert!(e.message.contains(bad), "{}", e.message);
        }
    }

    #[test]
    fn hosts_name_the_step_and_localhost() {
        assert_eq!(
            hosts_file("b"),
            "127.0.0.1\tlocalhost\tb\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
        assert!(!hosts_file("").contains("\t\n"));
    }

    #[test]
    fn working_directories_are_made_through_symlinks_inside_the_root() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("srv")).expect("mkdir");
        // An absolute link that would leave the root if followed outside it.
        std::os::unix::fs::symlink("/srv", root.join("app")).expect("symlink");
        std::os::unix::fs::symlink(tmp.path(), root.join("escape")).expect("symlink");
        make_cwd(&root, "/app/x/y").expect("made");
        assert!(root.join("srv/x/y").is_dir());
        // A dangling link (its target is outside the root) is no directory.
        let e = make_cwd(&root, "/escape/z").expect_err("dangling");
        assert!(e.contains("/escape"), "{e}");
        assert!(!tmp.path().join("z").exists(), "left the root");
    }
}
