//! The container's side of [`super::spawn`]: the numbered steps between
//! clone and exec. Each returns the failing step, the path or value it
//! concerned and the errno; the caller sends that to the parent.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use rustix::fs::{FileType, Mode};
use rustix::mount::{mount, MountFlags, MountPropagationFlags, UnmountFlags};

use super::{console, hooks, procfs, Plan, RootMount, Step, HOOKS_REQUEST, READY};
use crate::sys;

/// Descriptors the child works with (numbers valid in the child).
#[derive(Debug)]
pub(super) struct Fds<'a> {
    pub null: RawFd,
    /// The stdio pipes' ends; `None` keeps the caller's stdio.
    pub stdio: Option<super::ChildStdio>,
    /// Read end of the sync pipe, when the parent has work to do first.
    pub sync: Option<RawFd>,
    /// Read end of the start gate, for OCI `create`.
    pub gate: Option<RawFd>,
    /// Write end of the error pipe.
    pub err: RawFd,
    /// Read end of the pipe the parent sends the hooks' state on.
    pub hooks: Option<RawFd>,
    /// The console socket, when the process gets a terminal.
    pub console: Option<BorrowedFd<'a>>,
}

/// A failed step: the step, the path or value it concerned, the errno.
pub(super) type Failure = (Step, String, i32);

pub(super) fn fail(step: Step, path: &str) -> impl FnOnce(rustix::io::Errno) -> Failure + '_ {
    move |e| (step, path.to_owned(), e.raw_os_error())
}

pub(super) fn fail_io(step: Step, path: &str) -> impl FnOnce(io::Error) -> Failure + '_ {
    move |e| (step, path.to_owned(), e.raw_os_error().unwrap_or(libc::EIO))
}

fn remount_flags(extra: MountFlags) -> MountFlags {
    MountFlags::from_bits_retain(libc::MS_REMOUNT as u32) | MountFlags::BIND | extra
}

/// Runs every step, then execs. Returns only on failure.
pub(super) fn run(
    plan: &Plan,
    fds: &Fds,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> Failure {
    if let Err(failure) = steps(plan, fds) {
        return failure;
    }
    plan.process.exec(argv, envp)
}

fn steps(plan: &Plan, fds: &Fds) -> Result<(), Failure> {
    // 1. A clean signal state (the parent may block signals for a signalfd),
    //    our own session, and stdio.
    sys::SigSet::of(&[])
        .set_mask()
        .map_err(fail_io(Step::Stdio, "signal mask"))?;
    sys::reset_signal_dispositions();
    sys::setsid().map_err(fail_io(Step::Stdio, "setsid"))?;
    if let Some(stdio) = fds.stdio {
        stdio.install(fds.null)?;
    }

    // 2. Wait for the parent: user namespace maps, oom score.
    if let Some(sync) = fds.sync {
        let mut byte = [0u8; 1];
        match sys::read(sync, &mut byte) {
            Ok(Some(1)) => {}
            _ => return Err((Step::Sync, "parent".into(), libc::EPIPE)),
        }
    }

    // In a new user namespace we still carry the host's ids, which the map
    // does not cover: become the namespace's root so files we create are owned.
    if plan.userns {
        sys::set_identity(0, 0, &[])
            .map_err(fail_io(Step::Sync, "become root of the user namespace"))?;
    }

    // 3. Join existing namespaces.
    for (fd, flag, path) in &plan.joins {
        use std::os::fd::AsRawFd;
        sys::setns(fd.as_raw_fd(), *flag).map_err(fail_io(Step::JoinNamespace, path))?;
    }

    // 4. Nothing we mount may propagate back to the parent's namespace
    //    (unless we share it: then the mounts are ours to detach later).
    if let Some(propagation) = plan.setup_propagation {
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::from_bits_retain(propagation.bits()),
        )
        .map_err(fail(Step::Propagation, "/"))?;
    }

    // 5. The root filesystem.
    match &plan.root {
        RootMount::Overlay {
            scratch,
            upper,
            work,
            data,
        } => {
            // A private tmpfs for the overlay's upper and work directories;
            // it disappears with the mount namespace.
            mount(
                "tmpfs",
                scratch.as_str(),
                "tmpfs",
                MountFlags::NOSUID | MountFlags::NODEV,
                Some(c"mode=0700"),
            )
            .map_err(fail(Step::Scratch, scratch))?;
            for dir in [upper, work] {
                rustix::fs::mkdir(dir.as_str(), Mode::from_raw_mode(0o755))
                    .map_err(fail(Step::Scratch, dir))?;
            }
            mount(
                "overlay",
                plan.rootfs_c.as_c_str(),
                "overlay",
                MountFlags::empty(),
                Some(data.as_c_str()),
            )
            .map_err(fail(Step::Root, &plan.rootfs))?;
        }
        RootMount::Bind => {
            rustix::mount::mount_bind_recursive(plan.rootfs_c.as_c_str(), plan.rootfs_c.as_c_str())
                .map_err(fail(Step::Root, &plan.rootfs))?;
        }
    }

    // 6. The spec's mounts, in order.
    for m in &plan.mounts {
        make_mount_point(&plan.rootfs, &m.destination, m.file_target)?;
        let fstype = m.fstype.as_deref().unwrap_or(c"");
        let mounted = mount(
            m.source.as_c_str(),
            m.target.as_c_str(),
            fstype,
            m.flags,
            m.data.as_deref(),
        );
        match mounted {
            Err(rustix::io::Errno::PERM) if m.sysfs_fallback => {
                rustix::mount::mount_bind_recursive("/sys", m.target.as_c_str())
                    .map_err(fail(Step::Mount, &m.destination))?;
                let ro = MountFlags::RDONLY
                    | MountFlags::NOSUID
                    | MountFlags::NODEV
                    | MountFlags::NOEXEC;
                mount(c"", m.target.as_c_str(), c"", remount_flags(ro), None)
                    .map_err(fail(Step::Mount, &m.destination))?;
            }
            other => other.map_err(fail(Step::Mount, &m.destination))?,
        }
        if let Some(extra) = m.remount_flags {
            mount(c"", m.target.as_c_str(), c"", remount_flags(extra), None)
                .map_err(fail(Step::Mount, &m.destination))?;
        }
        if let Some(p) = m.propagation {
            rustix::mount::mount_change(
                m.target.as_c_str(),
                MountPropagationFlags::from_bits_retain(p.bits()),
            )
            .map_err(fail(Step::Mount, &m.destination))?;
        }
    }

    // 7. Devices, when /dev is the container's own tmpfs.
    if plan.make_dev {
        make_devices(plan)?;
    }

    // 8. Hostname and domain name, in the container's UTS namespace.
    if let Some(name) = &plan.hostname {
        rustix::system::sethostname(name).map_err(fail(Step::Hostname, "hostname"))?;
    }
    if let Some(name) = &plan.domainname {
        sys::setdomainname(name).map_err(fail_io(Step::Domainname, "domainname"))?;
    }

    // 8b. Hooks: the parent runs the runtime's (prestart, createRuntime)
    //     while we wait, then sends the state for ours; createContainer
    //     hooks run here, in our namespaces but before pivot_root.
    let mut start_state = Vec::new();
    if let Some(channel) = fds.hooks {
        sys::write_all(fds.err, &[HOOKS_REQUEST]).map_err(fail_io(Step::Hook, "request"))?;
        let creating = read_frame(channel)?;
        start_state = read_frame(channel)?;
        run_hooks(
            hooks::Kind::CreateContainer,
            &plan.create_container_hooks,
            &creating,
        )?;
    }

    // 9. pivot_root into the new root, stacking the old root on top of it,
    //    then detach the old root: nothing of the parent's tree stays
    //    reachable. Sharing our mount namespace, there is no old root to
    //    detach and the container only chroots, as runc does.
    rustix::process::chdir(plan.rootfs_c.as_c_str())
        .map_err(fail(Step::PivotRoot, &plan.rootfs))?;
    if plan.shares_mounts {
        rustix::process::chroot(".").map_err(fail(Step::PivotRoot, &plan.rootfs))?;
    } else {
        rustix::process::pivot_root(".", ".").map_err(fail(Step::PivotRoot, &plan.rootfs))?;
        rustix::mount::unmount(".", UnmountFlags::DETACH)
            .map_err(fail(Step::DetachOldRoot, "/"))?;
    }
    rustix::process::chdir("/").map_err(fail(Step::PivotRoot, "/"))?;
    // The spec's rootfsPropagation (shared, slave...), now that it only
    // concerns the container's own root.
    if let Some(propagation) = plan.root_propagation {
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::from_bits_retain(propagation.bits()),
        )
        .map_err(fail(Step::Propagation, "/"))?;
    }

    // 9b. The terminal, from the container's own devpts, before the root
    //     may turn read-only (/dev/console is bound to it).
    if let Some(socket) = fds.console {
        console::attach(socket, plan.process.console_size, plan.make_dev)?;
    }

    // 10. sysctls, through a verified handle on the container's own /proc,
    //     before /proc/sys is made read-only.
    if !plan.sysctl.is_empty() {
        let proc = procfs::ProcFs::open("/proc").map_err(fail_io(Step::Sysctl, "/proc"))?;
        for (path, value) in &plan.sysctl {
            proc.write(path, value)
                .map_err(fail_io(Step::Sysctl, path))?;
        }
    }

    // 11. Read-only root, masked and read-only paths.
    if plan.readonly_root {
        mount(c"", c"/", c"", remount_flags(MountFlags::RDONLY), None)
            .map_err(fail(Step::ReadonlyRoot, "/"))?;
    }
    for path in &plan.masked {
        mask_path(path)?;
    }
    for path in &plan.readonly_paths {
        readonly_path(path)?;
    }

    // 12. The process: limits, working directory, privileges, and a
    //     program that can run.
    plan.process.become_it()?;

    // 13. Created: wait to be started.
    if let Some(gate) = fds.gate {
        sys::write_all(fds.err, &[READY]).map_err(fail_io(Step::Gate, "ready"))?;
        let mut byte = [0u8; 1];
        loop {
            match sys::read(gate, &mut byte) {
                Ok(Some(1)) => break,
                Ok(None) => continue,
                _ => return Err((Step::Gate, "start".into(), libc::EPIPE)),
            }
        }
    }

    // 14. startContainer hooks, inside the container, just before exec.
    run_hooks(
        hooks::Kind::StartContainer,
        &plan.start_container_hooks,
        &start_state,
    )
}

/// Runs our own hooks of `kind`; a failure carries the hook's message.
fn run_hooks(
    kind: hooks::Kind,
    list: &[hafen_proto::spec::Hook],
    state: &[u8],
) -> Result<(), Failure> {
    if list.is_empty() {
        return Ok(());
    }
    // A hook that exits without reading its state must not kill us.
    let _ = sys::set_signal_ignored(libc::SIGPIPE, true);
    let result = hooks::run(kind, list, state);
    let _ = sys::set_signal_ignored(libc::SIGPIPE, false);
    result.map_err(|e| (Step::Hook, e.to_string(), 0))
}

/// Reads one length-prefixed message (at most 1 MiB) from the parent.
fn read_frame(fd: RawFd) -> Result<Vec<u8>, Failure> {
    let broken = || (Step::Hook, "state from the runtime".to_owned(), libc::EPIPE);
    let mut len = [0u8; 4];
    read_exact(fd, &mut len).map_err(|()| broken())?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 1 << 20 {
        return Err((Step::Hook, "state from the runtime".into(), libc::E2BIG));
    }
    let mut buf = vec![0u8; len];
    read_exact(fd, &mut buf).map_err(|()| broken())?;
    Ok(buf)
}

fn read_exact(fd: RawFd, mut buf: &mut [u8]) -> Result<(), ()> {
    while !buf.is_empty() {
        match sys::read(fd, buf) {
            Ok(Some(0)) | Err(_) => return Err(()),
            Ok(Some(n)) => buf = &mut buf[n..],
            Ok(None) => {}
        }
    }
    Ok(())
}

/// Creates the mount point `destination` under `root` without following
/// symlinks the image may have planted on the way.
fn make_mount_point(root: &str, destination: &str, file: bool) -> Result<(), Failure> {
    let mut path = root.to_owned();
    let parts: Vec<&str> = destination.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        path.push('/');
        path.push_str(part);
        let last = i + 1 == parts.len();
        match rustix::fs::lstat(path.as_str()) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                return Err((Step::MountPoint, destination.to_owned(), libc::ELOOP));
            }
            Ok(_) => {}
            Err(rustix::io::Errno::NOENT) if last && file => {
                let flags = rustix::fs::OFlags::CREATE
                    | rustix::fs::OFlags::WRONLY
                    | rustix::fs::OFlags::CLOEXEC;
                rustix::fs::open(path.as_str(), flags, Mode::from_raw_mode(0o644))
                    .map_err(fail(Step::MountPoint, destination))?;
            }
            Err(rustix::io::Errno::NOENT) => {
                rustix::fs::mkdir(path.as_str(), Mode::from_raw_mode(0o755))
                    .map_err(fail(Step::MountPoint, destination))?;
            }
            Err(e) => return Err(fail(Step::MountPoint, destination)(e)),
        }
    }
    Ok(())
}

const DEV_LINKS: &[(&str, &str)] = &[
    ("pts/ptmx", "ptmx"),
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("/proc/kcore", "core"),
];

/// Creates the device nodes. In a user namespace mknod is not allowed, so
/// the host's nodes are bind-mounted instead.
fn make_devices(plan: &Plan) -> Result<(), Failure> {
    for d in &plan.devices {
        let path = format!("{}/dev/{}", plan.rootfs, d.name);
        let shown = format!("/dev/{}", d.name);
        if let Some(parent) = path.rsplit_once('/').map(|(p, _)| p) {
            crate::mount::mkdir_all(parent, 0o755).map_err(fail_io(Step::Device, &shown))?;
        }
        if plan.userns {
            let flags = rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::WRONLY
                | rustix::fs::OFlags::CLOEXEC;
            rustix::fs::open(path.as_str(), flags, Mode::from_raw_mode(0o644))
                .map_err(fail(Step::Device, &shown))?;
            rustix::mount::mount_bind(shown.as_str(), path.as_str())
                .map_err(fail(Step::Device, &shown))?;
            continue;
        }
        let dev = rustix::fs::makedev(d.major, d.minor);
        match rustix::fs::mknodat(
            rustix::fs::CWD,
            path.as_str(),
            d.kind,
            Mode::from_raw_mode(d.mode),
            dev,
        ) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(fail(Step::Device, &shown)(e)),
        }
        // mknod applies the umask; the spec's modes are exact.
        rustix::fs::chmod(path.as_str(), Mode::from_raw_mode(d.mode))
            .map_err(fail(Step::Device, &shown))?;
        if d.uid != 0 || d.gid != 0 {
            let owner = (
                rustix::fs::Uid::from_raw(d.uid),
                rustix::fs::Gid::from_raw(d.gid),
            );
            rustix::fs::chown(path.as_str(), Some(owner.0), Some(owner.1))
                .map_err(fail(Step::Device, &shown))?;
        }
    }
    for &(target, name) in DEV_LINKS {
        let path = format!("{}/dev/{name}", plan.rootfs);
        match rustix::fs::symlink(target, path.as_str()) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err((Step::Device, format!("/dev/{name}"), e.raw_os_error())),
        }
    }
    Ok(())
}

fn mask_path(path: &str) -> Result<(), Failure> {
    let st = match rustix::fs::lstat(path) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(fail(Step::MaskPath, path)(e)),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        mount("tmpfs", path, "tmpfs", MountFlags::RDONLY, None).map_err(fail(Step::MaskPath, path))
    } else {
        rustix::mount::mount_bind("/dev/null", path).map_err(fail(Step::MaskPath, path))
    }
}

fn readonly_path(path: &str) -> Result<(), Failure> {
    match rustix::mount::mount_bind_recursive(path, path) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(fail(Step::ReadonlyPath, path)(e)),
    }
    let ro = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount(c"", path, c"", remount_flags(ro), None).map_err(fail(Step::ReadonlyPath, path))
}
