//! The guest end of the control channel: the virtio-serial port named
//! [`PORT_NAME`], which only PID 1 opens (the port's device node is not in
//! any container's /dev and the descriptor is close-on-exec).
//!
//! The port's behaviour shapes this code (measured with QEMU 7.2):
//! - with no host client it polls `POLLHUP`, level-triggered, so it is
//!   only watched while a host is there; `O_ASYNC` sends PID 1 a SIGIO
//!   when one connects or writes, and the supervisor then calls
//!   [`Channel::wake`];
//! - bytes written for a client that went away reach the next one, which
//!   is why every connection starts with a `Sync` whose nonce the host
//!   waits for, dropping everything before it.
//!
//! Everything is bounded: one frame's worth of input ([`Decoder`]), and an
//! output queue that streams stop filling at [`SOFT_LIMIT`] and past
//! [`HARD_LIMIT`] of which no further request is read, so a host that does
//! not read cannot make PID 1 grow or block.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use hafen_proto::control::{Body, Envelope, ErrorCode};
use hafen_proto::frame::Decoder;
use rustix::fs::{Mode, OFlags};

use crate::sys::{self, Epoll, EPOLL_HANGUP, EPOLL_INPUT, EPOLL_OUTPUT};

/// The port's name, as QEMU's `virtserialport,name=` gives it.
pub const PORT_NAME: &str = "org.hafen.control";

/// Streams (logs, events, exec output) add frames only below this many
/// queued bytes.
pub const SOFT_LIMIT: usize = 256 * 1024;
/// Past this many queued bytes no request is read until the host reads.
pub const HARD_LIMIT: usize = 1024 * 1024;

/// Where the virtio-serial ports list their names.
const PORTS_DIR: &str = "/sys/class/virtio-ports";

/// Finds the device node of the port called `name`.
pub fn find_port(name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(PORTS_DIR).ok()?;
    entries.flatten().find_map(|entry| {
        let found = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (found.trim_end() == name).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

/// What the channel read.
#[derive(Debug)]
pub enum Incoming {
    /// A message.
    Message(Envelope),
    /// Bytes that were not a message (already answered with an error frame).
    Bad(String),
}

/// The port, its decoder and its output queue.
pub struct Channel {
    port: OwnedFd,
    path: PathBuf,
    token: u64,
    /// Registered with epoll (a host is, as far as we know, connected).
    watched: bool,
    /// The events it is registered for.
    interest: u32,
    decoder: Box<Decoder>,
    out: Vec<u8>,
    /// Bytes at the front of `out` already written.
    written: usize,
    /// Decoded input waits in the decoder ([`Channel::backlog`]).
    backlog: bool,
    /// No request is read ([`Channel::hold_input`]).
    held: bool,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("path", &self.path)
            .field("watched", &self.watched)
            .field("queued", &self.queued())
            .finish()
    }
}

impl Channel {
    /// Opens the port at `path` (non-blocking, close-on-exec, SIGIO on
    /// activity) and watches it under `token`.
    pub fn open(path: &Path, epoll: &Epoll, token: u64) -> io::Result<Channel> {
        let port = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )?;
        sys::signal_io(port.as_raw_fd())?;
        let mut channel = Channel {
            port,
            path: path.to_owned(),
            token,
            watched: false,
            interest: 0,
            decoder: Box::default(),
            out: Vec::new(),
            written: 0,
            backlog: false,
            held: false,
        };
        channel.wake(epoll);
        Ok(channel)
    }

    /// The port's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes queued for the host.
    pub fn queued(&self) -> usize {
        self.out.len() - self.written
    }

    /// Whether streams may add frames.
    pub fn has_room(&self) -> bool {
        self.watched && self.queued() < SOFT_LIMIT
    }

    /// Whether a host is (as far as we know) connected.
    pub fn connected(&self) -> bool {
        self.watched
    }

    /// After a SIGIO: watch the port again if we had stopped.
    pub fn wake(&mut self, epoll: &Epoll) {
        if self.watched {
            return;
        }
        match epoll.add_with(self.port.as_raw_fd(), self.token, EPOLL_INPUT) {
            Ok(()) => {
                self.watched = true;
                self.interest = EPOLL_INPUT;
            }
            Err(e) => warn!("cannot watch the control port {}: {e}", self.path.display()),
        }
    }

    /// The host went away: stop watching until the next SIGIO and forget
    /// what was meant for it.
    pub fn hang_up(&mut self, epoll: &Epoll) {
        if self.watched {
            let _ = epoll.delete(self.port.as_raw_fd());
            self.watched = false;
        }
        self.out.clear();
        self.written = 0;
        self.backlog = false;
        self.held = false;
        self.decoder.reset();
    }

    /// Queues one message. Only a message too large for a frame fails; it
    /// is replaced by an error for the same id so the host is not left
    /// waiting.
    pub fn send(&mut self, id: u32, body: Body) {
        if !self.watched {
            return;
        }
        let envelope = Envelope { id, body };
        match envelope.to_frame() {
            Ok(bytes) => self.out.extend_from_slice(&bytes),
            Err(e) => {
                warn!("control: cannot send an answer to request {id}: {e}");
                let fallback = Envelope {
                    id,
                    body: Body::Error {
                        code: ErrorCode::Failed,
                        message: format!("the answer does not fit a frame: {e}"),
                    },
                };
                if let Ok(bytes) = fallback.to_frame() {
                    self.out.extend_from_slice(&bytes);
                }
            }
        }
    }

    /// Writes what the port takes now; true when the host hung up.
    pub fn flush(&mut self, epoll: &Epoll) -> bool {
        while self.written < self.out.len() {
            match sys::write_some(self.port.as_raw_fd(), &self.out[self.written..]) {
                Ok(Some(0)) | Ok(None) => break,
                Ok(Some(n)) => self.written += n,
                Err(e) => {
                    debug!("control port write: {e}");
                    self.hang_up(epoll);
                    return true;
                }
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        } else if self.written > self.out.len() / 2 {
            self.out.drain(..self.written);
            self.written = 0;
        }
        self.update_interest(epoll);
        false
    }

    /// Reads input only while the output queue is under [`HARD_LIMIT`];
    /// asks for writability while anything is queued.
    fn update_interest(&mut self, epoll: &Epoll) {
        if !self.watched {
            return;
        }
        let mut want = 0;
        if self.queued() < HARD_LIMIT && !self.held {
            want |= EPOLL_INPUT;
        }
        if self.queued() > 0 {
            want |= EPOLL_OUTPUT;
        }
        if want != self.interest {
            match epoll.modify(self.port.as_raw_fd(), self.token, want) {
                Ok(()) => self.interest = want,
                Err(e) => warn!("control port: {e}"),
            }
        }
    }

    /// Handles readiness `events`: reads and decodes what arrived (up to
    /// the output queue's hard limit), writes what is queued. Returns the
    /// messages read, in order, and whether the host hung up.
    pub fn ready(&mut self, epoll: &Epoll, events: u32, incoming: &mut Vec<Incoming>) -> bool {
        if events & EPOLL_OUTPUT != 0 && self.flush(epoll) {
            return true;
        }
        if events & EPOLL_INPUT != 0 && self.queued() < HARD_LIMIT && !self.held {
            self.backlog = false;
            loop {
                if !self.take_frames(incoming) {
                    // Answer these first; the loop comes back for the rest.
                    self.backlog = true;
                    break;
                }
                let spare = self.decoder.spare();
                if spare.is_empty() {
                    break;
                }
                match sys::read(self.port.as_raw_fd(), spare) {
                    Ok(Some(n)) if n > 0 => self.decoder.filled(n),
                    Ok(_) => break,
                    Err(e) => {
                        debug!("control port read: {e}");
                        self.hang_up(epoll);
                        return true;
                    }
                }
            }
        }
        if events & EPOLL_HANGUP != 0 && events & EPOLL_INPUT == 0 {
            debug!("control port: the host hung up (events {events:#x})");
            self.hang_up(epoll);
            return true;
        }
        self.update_interest(epoll);
        false
    }

    /// Whether decoded requests wait for the loop to come back (they were
    /// left in the decoder so that answering them stays bounded).
    pub fn backlog(&self) -> bool {
        self.backlog && self.watched && self.queued() < HARD_LIMIT && !self.held
    }

    /// Stops (or resumes) reading requests: an exec'd process that reads
    /// its input slower than the host sends it holds the host back, with
    /// what is buffered for it bounded, instead of failing.
    pub fn hold_input(&mut self, epoll: &Epoll, held: bool) {
        if self.held != held {
            self.held = held;
            // Frames may wait in the decoder with nothing new to read.
            self.backlog |= !held;
            self.update_interest(epoll);
        }
    }

    /// Moves decoded frames to `incoming`, at most [`BATCH`] in all;
    /// false when it stopped at that limit.
    fn take_frames(&mut self, incoming: &mut Vec<Incoming>) -> bool {
        loop {
            if incoming.len() >= BATCH {
                return false;
            }
            let Some(frame) = self.decoder.next_frame() else {
                return true;
            };
            let item = match frame {
                Ok(payload) => match Envelope::from_payload(payload) {
                    Ok(envelope) => Incoming::Message(envelope),
                    Err(e) => Incoming::Bad(e.to_string()),
                },
                Err(e) => Incoming::Bad(e.to_string()),
            };
            if let Incoming::Bad(message) = &item {
                self.send(
                    0,
                    Body::Error {
                        code: ErrorCode::BadFrame,
                        message: message.clone(),
                    },
                );
            }
            incoming.push(item);
        }
    }
}

/// The most requests handled per turn of the event loop.
const BATCH: usize = 32;
