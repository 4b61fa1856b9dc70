//! The `hafen` verbs that operate a running VM (`ps`, `logs`, `exec`,
//! `stop`, ...), as a client of the VM's monitor: the `hafen run` process
//! that owns the guest's control port and serves `api.sock` in the VM's
//! state directory.
//!
//! Over `api.sock` go the control channel's frames ([`hafen_proto::frame`])
//! and messages ([`hafen_proto::control`]); this side picks the request
//! ids. The monitor answers [`Body::VmInfo`] and [`Body::PowerOff`] itself
//! and forwards everything else to the guest.
//!
//! [`Client`] is the connection; each verb family has a module of its own
//! ([`vm`], [`containers`], [`logs`], [`exec`], [`stats`], [`events`]), and
//! [`format`] turns what they receive into text without doing any I/O, so
//! it can be tested alone.

pub mod containers;
pub mod events;
pub mod exec;
pub mod format;
pub mod logs;
pub mod stats;
mod terminal;
pub mod vm;
pub mod volumes;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hafen_proto::control::{Body, CodecError, Envelope, ErrorCode, VmInfo};
use hafen_proto::frame::Decoder;
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::state::{self, FindError, VmDir};
use crate::sys::SignalPipe;

/// Signals that end a stream (the stream is cancelled, then the verb ends).
const INTERRUPTS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A verb against a VM failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such VM (or several by that name).
    #[error(transparent)]
    Find(#[from] FindError),
    /// The monitor's socket could not be reached.
    #[error(
        "VM {vm} does not answer on {}: it is still starting, was run with --no-control, or its monitor died",
        .path.display()
    )]
    Connect {
        /// The VM's name.
        vm: String,
        /// `api.sock`.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading from or writing to the monitor failed.
    #[error("the connection to VM {vm}'s monitor failed")]
    Io {
        /// The VM's name.
        vm: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The monitor closed the connection in the middle of a request.
    #[error("VM {vm}'s monitor closed the connection (the VM stopped?)")]
    Closed {
        /// The VM's name.
        vm: String,
    },
    /// The monitor did not answer in time.
    #[error("VM {vm}'s monitor did not answer within {} s", .after.as_secs_f32())]
    Timeout {
        /// The VM's name.
        vm: String,
        /// How long we waited.
        after: Duration,
    },
    /// A message this build cannot read.
    #[error("VM {vm}'s monitor sent a message this hafen cannot read")]
    Decode {
        /// The VM's name.
        vm: String,
        /// The cause.
        #[source]
        source: CodecError,
    },
    /// The monitor or the guest refused the request.
    #[error("{}", refusal(.vm, *.code, .message))]
    Refused {
        /// The VM's name.
        vm: String,
        /// What kind of refusal.
        code: ErrorCode,
        /// The peer's words.
        message: String,
    },
    /// An answer that does not fit the request.
    #[error("VM {vm} answered a {request} request with {answer}")]
    Unexpected {
        /// The VM's name.
        vm: String,
        /// What we asked.
        request: &'static str,
        /// What came back (its variant).
        answer: String,
    },
    /// Writing to our own stdout or stderr failed.
    #[error("cannot write the output")]
    Output(#[source] io::Error),
    /// The local terminal could not be set up or restored.
    #[error("cannot set up the terminal for -t")]
    Terminal(#[source] io::Error),
    /// The signal handlers could not be installed.
    #[error("cannot catch SIGINT, SIGTERM and SIGHUP")]
    Signals(#[source] io::Error),
    /// Waiting for the monitor process to exit failed.
    #[error("cannot wait for VM {vm}'s monitor (pid {pid}) to exit")]
    WaitMonitor {
        /// The VM's name.
        vm: String,
        /// The monitor's pid.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn refusal(vm: &str, code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::NotReady => format!("VM {vm} is not ready yet: {message}"),
        ErrorCode::Busy => format!("VM {vm} is busy: {message}"),
        _ => message.to_owned(),
    }
}

impl Error {
    /// Whether writing our output failed because the reader went away
    /// (`hafen logs | head`): the verb is over, not failed.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Writes to our own output, as an [`Error::Output`] on failure.
fn out<T>(result: io::Result<T>) -> Result<T, Error> {
    result.map_err(Error::Output)
}

/// The variant's name, for error messages.
fn variant(body: &Body) -> String {
    let debug = format!("{body:?}");
    let end = debug
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(debug.len());
    debug[..end].to_owned()
}

/// Now, as Unix nanoseconds.
fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What woke [`Client::wait`].
#[derive(Debug)]
enum Wake {
    /// A message from the monitor.
    Message(Box<Envelope>),
    /// One of the `also` descriptors is readable (or hung up).
    Ready,
    /// A signal was caught.
    Signal(libc::c_int),
    /// The timeout passed.
    Timeout,
}

/// How a [`Client::session`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The process exited with this code (128+N for signal N).
    Exited(i32),
    /// We caught signal N and cancelled it.
    Interrupted(i32),
}

impl SessionEnd {
    /// As a shell reports it: the exit code, or 128+N.
    pub fn code(self) -> i32 {
        match self {
            SessionEnd::Exited(code) => code,
            SessionEnd::Interrupted(sig) => 128 + sig,
        }
    }
}

/// A connection to one VM's monitor.
#[derive(Debug)]
pub struct Client {
    vm: String,
    socket: UnixStream,
    decoder: Box<Decoder>,
    /// Messages decoded but not yet taken.
    queue: VecDeque<Envelope>,
    /// Signals caught but not yet taken.
    caught: VecDeque<libc::c_int>,
    next_id: u32,
    /// How long a request may wait for its answer.
    timeout: Option<Duration>,
    signals: Option<SignalPipe>,
}

impl Client {
    /// Connects to the running VM called `name`.
    pub fn connect(name: &str) -> Result<Client, Error> {
        let vms = state::vms_dir(&state::runtime_dir());
        let vm = state::find_vm(&vms, name)?;
        Client::connect_to(&vm)
    }

    /// Connects to a VM found in the state directories.
    pub fn connect_to(vm: &VmDir) -> Result<Client, Error> {
        let path = vm.api_socket();
        let socket = UnixStream::connect(&path).map_err(|source| Error::Connect {
            vm: vm.name.clone(),
            path,
            source,
        })?;
        Ok(Client {
            vm: vm.name.clone(),
            socket,
            decoder: Box::default(),
            queue: VecDeque::new(),
            caught: VecDeque::new(),
            next_id: 1,
            timeout: None,
            signals: None,
        })
    }

    /// The VM's name.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// Limits how long [`Client::request`] waits for an answer.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Catches SIGINT, SIGTERM and SIGHUP (and `extra`) from now on, so a
    /// stream can be cancelled and the terminal restored instead of the
    /// process dying with the stream open.
    pub fn catch_signals(&mut self, extra: &[libc::c_int]) -> Result<(), Error> {
        let mut signals = INTERRUPTS.to_vec();
        signals.extend_from_slice(extra);
        self.signals = Some(SignalPipe::install(&signals).map_err(Error::Signals)?);
        Ok(())
    }

    fn io_error(&self, source: io::Error) -> Error {
        Error::Io {
            vm: self.vm.clone(),
            source,
        }
    }

    /// A fresh request id.
    fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Sends `body` for request `id`.
    pub fn send(&mut self, id: u32, body: Body) -> Result<(), Error> {
        let frame = Envelope { id, body }
            .to_frame()
            .map_err(|source| Error::Decode {
                vm: self.vm.clone(),
                source,
            })?;
        match self.socket.write_all(&frame) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Error::Closed {
                vm: self.vm.clone(),
            }),
            Err(e) => Err(self.io_error(e)),
        }
    }

    /// Sends `body` as a new request and returns its single answer; an
    /// [`Body::Error`] answer is an [`Error::Refused`].
    pub fn request(&mut self, body: Body) -> Result<Body, Error> {
        let id = self.fresh_id();
        self.send(id, body)?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        loop {
            match self.wait(&[], deadline)? {
                Wake::Message(m) if m.id == id => return self.check(m.body),
                Wake::Message(_) | Wake::Ready => {}
                Wake::Signal(_) => {
                    // Only streams catch signals; a request just goes on.
                }
                Wake::Timeout => {
                    return Err(Error::Timeout {
                        vm: self.vm.clone(),
                        after: self.timeout.unwrap_or_default(),
                    })
                }
            }
        }
    }

    /// An answer, or the error it carries.
    fn check(&self, body: Body) -> Result<Body, Error> {
        match body {
            Body::Error { code, message } => Err(Error::Refused {
                vm: self.vm.clone(),
                code,
                message,
            }),
            other => Ok(other),
        }
    }

    /// An unexpected answer to `request`.
    pub(crate) fn unexpected(&self, request: &'static str, answer: &Body) -> Error {
        Error::Unexpected {
            vm: self.vm.clone(),
            request,
            answer: variant(answer),
        }
    }

    /// Sends `body` as a new stream request; the stream's frames come from
    /// the returned iterator until `End`, `ExecExit` or an error. A caught
    /// SIGINT, SIGTERM or SIGHUP (see [`Client::catch_signals`]) cancels
    /// the stream and ends the iteration ([`Stream::interrupted`]).
    pub fn stream(&mut self, body: Body) -> Result<Stream<'_>, Error> {
        let id = self.fresh_id();
        self.send(id, body)?;
        Ok(Stream {
            client: self,
            id,
            done: false,
            interrupted: false,
        })
    }

    /// Runs a request answered like `Exec` (`ExecStarted`, `Output`,
    /// `ExecExit`): `input`'s bytes go to the process's stdin once it has
    /// started (EOF ends it), its stdout into `stdout`, its stderr into
    /// `stderr`. Returns how it ended: its exit code, or the signal
    /// (caught, see [`Client::catch_signals`]) that made us cancel it.
    pub fn session(
        &mut self,
        body: Body,
        input: Option<BorrowedFd<'_>>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<SessionEnd, Error> {
        let id = self.fresh_id();
        self.send(id, body)?;
        let mut reading = false;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let also: Vec<BorrowedFd<'_>> = input.filter(|_| reading).into_iter().collect();
            match self.wait(&also, None)? {
                Wake::Message(m) if m.id != id => {}
                Wake::Message(m) => match m.body {
                    Body::ExecStarted { .. } => reading = input.is_some(),
                    Body::Output {
                        stream: hafen_proto::control::Stream::Stdout,
                        data,
                    } => {
                        if let Err(e) = stdout.write_all(&data) {
                            let _ = self.send(id, Body::Cancel);
                            return Err(Error::Output(e));
                        }
                    }
                    Body::Output {
                        stream: hafen_proto::control::Stream::Stderr,
                        data,
                    } => {
                        let _ = stderr.write_all(&data);
                    }
                    Body::ExecExit { status } => return Ok(SessionEnd::Exited(status.code())),
                    Body::Error { code, message } => {
                        let _ = self.send(id, Body::Cancel);
                        return Err(Error::Refused {
                            vm: self.vm.clone(),
                            code,
                            message,
                        });
                    }
                    _ => {}
                },
                Wake::Ready => {
                    if let Some(fd) = input {
                        reading = self.forward_input(id, fd, &mut buf)?;
                    }
                }
                Wake::Signal(sig) => {
                    let _ = self.send(id, Body::Cancel);
                    return Ok(SessionEnd::Interrupted(sig));
                }
                Wake::Timeout => {}
            }
        }
    }

    /// The VM's monitor's description of it.
    pub fn vm_info(&mut self) -> Result<VmInfo, Error> {
        match self.request(Body::VmInfo)? {
            Body::Vm(info) => Ok(info),
            other => Err(self.unexpected("VmInfo", &other)),
        }
    }

    /// The guest's clock: turns its `CLOCK_BOOTTIME` times into wall time.
    pub fn clock(&mut self) -> Result<format::Clock, Error> {
        let info = self.vm_info()?;
        match info.guest_boot_unix_ns {
            Some(boot) => Ok(format::Clock::new(boot, now_unix_ns())),
            None => Err(Error::Refused {
                vm: self.vm.clone(),
                code: ErrorCode::NotReady,
                message: format!("the guest has not answered yet (state: {})", info.state),
            }),
        }
    }

    /// Waits `duration`, or less when SIGINT, SIGTERM or SIGHUP is caught
    /// (see [`Client::catch_signals`]): then true.
    pub fn sleep(&mut self, duration: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + duration;
        loop {
            match self.wait(&[], Some(deadline))? {
                Wake::Timeout => return Ok(false),
                Wake::Signal(sig) if INTERRUPTS.contains(&sig) => return Ok(true),
                _ => {}
            }
        }
    }

    /// Sends what `input` has as request `id`'s [`Body::Input`] (an empty
    /// one at its end); false once it has ended. An unreadable input ends
    /// like EOF does (a message says why).
    fn forward_input(
        &mut self,
        id: u32,
        input: BorrowedFd<'_>,
        buf: &mut [u8],
    ) -> Result<bool, Error> {
        let n = match rustix::io::read(input, &mut *buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => return Ok(true),
            Err(e) => {
                eprintln!("hafen: cannot read the input: {e}; ending it there");
                0
            }
        };
        self.send(
            id,
            Body::Input {
                data: buf[..n].to_vec(),
            },
        )?;
        Ok(n > 0)
    }

    /// Waits for the next message, a readable `also` descriptor, a caught
    /// signal, or `deadline`.
    fn wait(&mut self, also: &[BorrowedFd<'_>], deadline: Option<Instant>) -> Result<Wake, Error> {
        loop {
            if let Some(sig) = self.caught.pop_front() {
                return Ok(Wake::Signal(sig));
            }
            if let Some(m) = self.queue.pop_front() {
                return Ok(Wake::Message(Box::new(m)));
            }
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Wake::Timeout);
                    }
                    Some(left)
                }
                None => None,
            };
            let (socket_ready, ready, signalled) = self.poll(also, timeout)?;
            if signalled {
                if let Some(signals) = &self.signals {
                    let got = signals.take().map_err(Error::Signals)?;
                    self.caught.extend(got);
                }
            }
            if socket_ready {
                self.read_socket()?;
            }
            if ready && self.caught.is_empty() && self.queue.is_empty() {
                return Ok(Wake::Ready);
            }
        }
    }

    /// One poll over the socket, `also` and the signal pipe.
    fn poll(
        &self,
        also: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> Result<(bool, bool, bool), Error> {
        let interest = PollFlags::IN;
        let mut fds = vec![PollFd::from_borrowed_fd(self.socket.as_fd(), interest)];
        fds.extend(
            also.iter()
                .map(|fd| PollFd::from_borrowed_fd(*fd, interest)),
        );
        if let Some(signals) = &self.signals {
            fds.push(PollFd::from_borrowed_fd(signals.fd(), interest));
        }
        let timespec = timeout.and_then(|t| Timespec::try_from(t).ok());
        match rustix::event::poll(&mut fds, timespec.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok((false, false, self.signals.is_some())),
            Err(e) => return Err(self.io_error(e.into())),
        }
        let woke = |fd: &PollFd<'_>| !fd.revents().is_empty();
        let socket_ready = woke(&fds[0]);
        let ready = fds[1..=also.len()].iter().any(woke);
        let signalled = self.signals.is_some() && fds.last().is_some_and(woke);
        Ok((socket_ready, ready, signalled))
    }

    /// Reads what the socket has and decodes the frames in it.
    fn read_socket(&mut self) -> Result<(), Error> {
        let n = loop {
            match self.socket.read(self.decoder.spare()) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break 0,
                Err(e) => return Err(self.io_error(e)),
            }
        };
        if n == 0 {
            return Err(Error::Closed {
                vm: self.vm.clone(),
            });
        }
        self.decoder.filled(n);
        while let Some(frame) = self.decoder.next_frame() {
            // Garbage from the monitor is dropped like anywhere else on
            // the channel; a frame that is not a message is a version skew.
            let Ok(payload) = frame else { continue };
            let envelope = Envelope::from_payload(payload).map_err(|source| Error::Decode {
                vm: self.vm.clone(),
                source,
            })?;
            match (&envelope.id, &envelope.body) {
                // A connection-level complaint: our frame was bad.
                (0, Body::Error { code, message }) => {
                    return Err(Error::Refused {
                        vm: self.vm.clone(),
                        code: *code,
                        message: message.clone(),
                    })
                }
                (0, _) => {}
                _ => self.queue.push_back(envelope),
            }
        }
        Ok(())
    }
}

/// The frames of one stream request; see [`Client::stream`].
#[derive(Debug)]
pub struct Stream<'c> {
    client: &'c mut Client,
    id: u32,
    done: bool,
    interrupted: bool,
}

impl Stream<'_> {
    /// The request id (for [`Client::send`]-ing input to an exec).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether a signal ended the stream (it was cancelled).
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// Cancels the stream: the guest stops sending.
    pub fn cancel(&mut self) -> Result<(), Error> {
        self.done = true;
        let id = self.id;
        self.client.send(id, Body::Cancel)
    }
}

impl Iterator for Stream<'_> {
    type Item = Result<Body, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let wake = match self.client.wait(&[], None) {
                Ok(w) => w,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            match wake {
                Wake::Message(m) if m.id == self.id => match m.body {
                    Body::End => self.done = true,
                    Body::Error { code, message } => {
                        self.done = true;
                        return Some(Err(Error::Refused {
                            vm: self.client.vm.clone(),
                            code,
                            message,
                        }));
                    }
                    body => {
                        self.done = matches!(body, Body::ExecExit { .. });
                        return Some(Ok(body));
                    }
                },
                Wake::Signal(sig) if INTERRUPTS.contains(&sig) => {
                    self.interrupted = true;
                    if let Err(e) = self.cancel() {
                        return Some(Err(e));
                    }
                }
                _ => {}
            }
        }
        None
    }
}
