//! The local terminal for `hafen exec -t`: raw mode for as long as a guard
//! lives, and the window size.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::termios::{self, OptionalActions, Termios};

/// The terminal in raw mode (no echo, no line editing, no signals from
/// keys: Ctrl-C reaches the guest as a byte); restored when dropped.
#[derive(Debug)]
pub struct RawMode {
    fd: BorrowedFd<'static>,
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on `fd` in raw mode.
    pub fn enter(fd: BorrowedFd<'static>) -> io::Result<RawMode> {
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(fd, OptionalActions::Now, &raw)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Drain: output the guest sent must not be cut off by the mode change.
        let _ = termios::tcsetattr(self.fd, OptionalActions::Drain, &self.saved);
    }
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    termios::isatty(fd)
}

/// The window size (rows, columns) of the terminal on `fd`, when it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let size = termios::tcgetwinsize(fd).ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}
