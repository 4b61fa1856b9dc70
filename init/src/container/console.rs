//! Terminals for containers (`process.terminal`): the pseudo-terminal is
//! made inside the container, from its own devpts instance, and its master
//! sent to whoever manages the console (conmon, containerd's shim, a test)
//! over the unix socket given as `--console-socket`, with SCM_RIGHTS — the
//! OCI runtime's console-socket protocol. The peer becomes the process's
//! stdin, stdout, stderr and controlling terminal.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use rustix::pty::OpenptFlags;

use super::child::{fail, Failure};
use super::Step;
use crate::sys;

/// Connects to the console socket at `path` (in the parent, before clone:
/// the path is the caller's, not the container's).
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let addr = SocketAddrUnix::new(path)?;
    rustix::net::connect(&socket, &addr)?;
    Ok(socket)
}

/// A connected pair of sockets: the first for the child (a
/// [`super::exec::ConsoleTarget::Socket`]), the second for [`receive`].
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Ok((a, b))
}

/// Takes the terminal's master that a child sent over `socket` (after the
/// child has exec'd, so it is already there).
pub fn receive(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 128];
    rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut name)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    control
        .drain()
        .find_map(|message| match message {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no terminal was sent"))
}

/// In the child, inside the container's root: makes a pty, sends its master
/// over `socket`, makes the peer our stdio and controlling terminal and,
/// with `console_node`, binds it over /dev/console. Needs a session of our
/// own (the child has called setsid).
pub(super) fn attach(
    socket: BorrowedFd<'_>,
    size: Option<(u16, u16)>,
    console_node: bool,
) -> Result<(), Failure> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags).map_err(fail(Step::Console, "/dev/ptmx"))?;
    rustix::pty::unlockpt(&master).map_err(fail(Step::Console, "unlockpt"))?;
    if let Some((rows, cols)) = size {
        let winsize = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&master, winsize)
            .map_err(fail(Step::Console, "window size"))?;
    }
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(fail(Step::Console, "ptsname"))?;
    let shown = name.to_string_lossy().into_owned();
    // The peer by handle, not by the name a container could have swapped.
    let peer =
        rustix::pty::ioctl_tiocgptpeer(&master, flags).map_err(fail(Step::Console, &shown))?;

    // A message needs a payload: the peer's name, for whoever logs it
    // (runc sends "/dev/ptmx"; receivers ignore it).
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [master.as_fd()];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err((Step::Console, "console socket".into(), libc::ENOBUFS));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(name.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(fail(Step::Console, "console socket"))?;
    drop(master);
    // Done with the socket: its peer sees the end now, not only when we
    // exec (a created container holds it until `start`). The terminal is
    // already sent, so a failure here changes nothing for it.
    let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Both);

    if console_node {
        let flags = rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::CLOEXEC
            | rustix::fs::OFlags::NOFOLLOW;
        rustix::fs::open(
            "/dev/console",
            flags,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .map_err(fail(Step::Console, "/dev/console"))?;
        rustix::mount::mount_bind(name.as_c_str(), c"/dev/console")
            .map_err(fail(Step::Console, "/dev/console"))?;
    }
    for target in 0..3 {
        sys::dup2(peer.as_raw_fd(), target).map_err(|e| {
            (
                Step::Console,
                shown.clone(),
                e.raw_os_error().unwrap_or(libc::EBADF),
            )
        })?;
    }
    rustix::process::ioctl_tiocsctty(&peer).map_err(fail(Step::Console, &shown))?;
    Ok(())
}
