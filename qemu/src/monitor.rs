//! The VM's monitor, inside `hafen run`: the one client of the guest's
//! control port (QEMU serves it on `control.sock` to one client at a time),
//! multiplexing every CLI request over it, keeping the containers' logs on
//! the host, and serving the CLI on `api.sock`.
//!
//! Threads, all std:
//! - the guest thread connects to `control.sock` (again after any break),
//!   syncs with a fresh nonce, subscribes to every container's logs (from
//!   the last sequence number it saw) and to the events, and dispatches
//!   each frame the guest sends: to the host log files, or to the CLI
//!   client whose request it answers;
//! - one thread accepts CLI clients on `api.sock`; each client gets a reader
//!   thread and a writer thread fed through a bounded queue (a client that
//!   does not read is dropped, never waited for).
//!
//! CLI requests get port-side ids of the monitor's own, mapped back to the
//! client's; a client that goes away has its requests cancelled in the
//! guest. `VmInfo` and `PowerOff` are answered here, and `Logs` for a
//! container the host has logs of is served from the host files, so logs
//! outlive the guest's ring.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hafen_proto::control::{
    check_hello, Body, Envelope, ErrorCode, EventKind, ExitStatus, HelloError, LogEntry, VmInfo,
};
use hafen_proto::frame::{self, Decoder};

/// The monitor's own request ids on the port; CLI requests get ids above.
const EVENTS_ID: u32 = 1;
const LOGS_ID: u32 = 2;
const FIRST_CLIENT_ID: u32 = 16;
/// Frames queued for one CLI client before it is dropped as too slow.
const CLIENT_QUEUE: usize = 1024;
/// The most CLI clients at once.
const MAX_CLIENTS: usize = 64;
/// A container's host log file is rotated (to `.1`) past this size.
const LOG_FILE_LIMIT: u64 = 8 * 1024 * 1024;
/// How often a Sync is sent while the guest does not answer.
const SYNC_EVERY: Duration = Duration::from_millis(200);

/// Locks `m`; a thread that panicked holding it left plain data behind.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A CLI client's outgoing queue.
#[derive(Debug)]
struct ClientTx {
    tx: SyncSender<Vec<u8>>,
    alive: AtomicBool,
}

impl ClientTx {
    fn send(&self, id: u32, body: Body) {
        if !self.alive.load(Ordering::Relaxed) {
            return;
        }
        let Ok(frame) = (Envelope { id, body }).to_frame() else {
            return;
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(frame)
        {
            // Too slow, or gone: it is dropped; its reader ends the session.
            self.alive.store(false, Ordering::Relaxed);
        }
    }
}

/// Where a guest answer goes.
#[derive(Debug, Clone)]
struct Route {
    client: Arc<ClientTx>,
    id: u32,
}

/// A CLI client following a container's logs from the host files.
#[derive(Debug)]
struct Follower {
    container: String,
    client: Arc<ClientTx>,
    id: u32,
}

/// What power action the run loop should take for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerRequest {
    /// Press the power button.
    Graceful,
    /// End QEMU.
    Force,
}

/// The CLI's power requests as the run loop receives them: a channel, and
/// a socket that becomes readable when a request is sent, so the loop
/// wakes at once instead of on its next tick.
#[derive(Debug)]
pub struct PowerRequests {
    rx: Receiver<PowerRequest>,
    wake: UnixStream,
}

impl PowerRequests {
    /// Readable when requests may be waiting.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.wake)
    }

    /// The requests sent since the last call.
    pub fn take(&self) -> Vec<PowerRequest> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.rx.try_iter().collect()
    }
}

/// State shared by the monitor's threads.
#[derive(Debug)]
struct Shared {
    info: Mutex<VmInfo>,
    state_dir: PathBuf,
    control: bool,
    stopping: AtomicBool,
    guest: Mutex<Option<UnixStream>>,
    /// Why the guest cannot be used, when its Hello was refused.
    refused: Mutex<Option<String>>,
    routes: Mutex<HashMap<u32, Route>>,
    next_id: AtomicU32,
    followers: Mutex<Vec<Follower>>,
    logs: Mutex<HostLogs>,
    main_exit: Mutex<Option<ExitStatus>>,
    clients: AtomicU32,
    power: Mutex<Option<mpsc::Sender<PowerRequest>>>,
    /// Written after each power request: wakes the run loop.
    power_wake: UnixStream,
}

impl Shared {
    /// Writes one message to the guest; false when there is no guest.
    fn to_guest(&self, id: u32, body: Body) -> bool {
        let Ok(frame) = (Envelope { id, body }).to_frame() else {
            return false;
        };
        let mut guest = lock(&self.guest);
        match guest.as_mut() {
            Some(stream) => stream.write_all(&frame).is_ok(),
            None => false,
        }
    }

    fn ready(&self) -> bool {
        lock(&self.guest).is_some()
    }

    fn not_ready(&self) -> Body {
        let message = match lock(&self.refused).clone() {
            Some(why) => why,
            None if !self.control => {
                "this VM runs without a control channel (hafen run --no-control)".to_owned()
            }
            None => "the VM is still booting; try again in a moment".to_owned(),
        };
        Body::Error {
            code: ErrorCode::NotReady,
            message,
        }
    }
}

/// The running monitor; ends its threads when dropped.
#[derive(Debug)]
pub struct Monitor {
    shared: Arc<Shared>,
    api_socket: PathBuf,
}

impl Monitor {
    /// Starts serving `api.sock` in `state_dir` and, with `control`,
    /// talking to the guest over `control.sock`. Power requests from the
    /// CLI arrive on the returned receiver.
    pub fn start(
        state_dir: &Path,
        info: VmInfo,
        control: bool,
    ) -> io::Result<(Monitor, PowerRequests)> {
        let api_socket = state_dir.join(crate::state::API_SOCKET);
        let listener = UnixListener::bind(&api_socket)?;
        std::fs::set_permissions(&api_socket, std::fs::Permissions::from_mode(0o600))?;
        let logs_dir = state_dir.join(crate::state::LOGS_DIR);
        std::fs::create_dir_all(&logs_dir)?;
        let (power_tx, power_rx) = mpsc::channel();
        let (power_wake, wake) = UnixStream::pair()?;
        power_wake.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            info: Mutex::new(info),
            state_dir: state_dir.to_owned(),
            control,
            stopping: AtomicBool::new(false),
            guest: Mutex::new(None),
            refused: Mutex::new(None),
            routes: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(FIRST_CLIENT_ID),
            followers: Mutex::new(Vec::new()),
            logs: Mutex::new(HostLogs::new(logs_dir)),
            main_exit: Mutex::new(None),
            clients: AtomicU32::new(0),
            power: Mutex::new(Some(power_tx)),
            power_wake,
        });
        let accept = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || serve_api(&accept, listener))?;
        if control {
            let guest = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("guest".into())
                .spawn(move || guest_loop(&guest))?;
        }
        Ok((
            Monitor { shared, api_socket },
            PowerRequests { rx: power_rx, wake },
        ))
    }

    /// Records QEMU's pid once it runs.
    pub fn set_qemu_pid(&self, pid: u32) {
        lock(&self.shared.info).qemu_pid = pid;
    }

    /// Records the VM's state for `hafen ls` (`running`, `stopping`).
    pub fn set_state(&self, state: &str) {
        lock(&self.shared.info).state = state.to_owned();
    }

    /// The main container's status, once the guest announced it.
    pub fn main_exit(&self) -> Option<ExitStatus> {
        *lock(&self.shared.main_exit)
    }

    /// Whether the guest's control channel has answered.
    pub fn guest_ready(&self) -> bool {
        self.shared.ready()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(stream) = lock(&self.shared.guest).take() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        // Wake the accepting thread so it sees `stopping`.
        let _ = UnixStream::connect(&self.api_socket);
        lock(&self.shared.power).take();
    }
}

/// Connects to the guest, again and again, until the monitor stops.
fn guest_loop(shared: &Arc<Shared>) {
    let socket = shared.state_dir.join(crate::state::CONTROL_SOCKET);
    let mut last_seq = 0u64;
    while !shared.stopping.load(Ordering::Relaxed) {
        let Ok(stream) = UnixStream::connect(&socket) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        match handshake(shared, &stream) {
            Ok(Some((decoder, boottime_ns))) => {
                let boot = unix_now_ns().saturating_sub(boottime_ns);
                {
                    let mut info = lock(&shared.info);
                    info.guest_boot_unix_ns = Some(boot);
                    if info.state == "booting" {
                        info.state = "running".to_owned();
                    }
                }
                let Ok(writer) = stream.try_clone() else {
                    continue;
                };
                *lock(&shared.guest) = Some(writer);
                shared.to_guest(EVENTS_ID, Body::Events);
                shared.to_guest(
                    LOGS_ID,
                    Body::Logs {
                        container: None,
                        follow: true,
                        tail: None,
                        since_ns: None,
                        after_seq: Some(last_seq),
                    },
                );
                read_guest(shared, stream, decoder, &mut last_seq);
                lock(&shared.guest).take();
                fail_routes(shared, "the connection to the guest was lost");
            }
            Ok(None) => return,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Syncs a fresh connection; `None` when the guest speaks another
/// protocol (recorded for the CLI's errors) or the monitor stops.
fn handshake(shared: &Shared, stream: &UnixStream) -> io::Result<Option<(Box<Decoder>, u64)>> {
    let nonce = nonce();
    let mut decoder: Box<Decoder> = Box::default();
    stream.set_read_timeout(Some(SYNC_EVERY))?;
    let mut reader = stream;
    let mut writer = stream;
    let mut buf = [0u8; 16 * 1024];
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            return Ok(None);
        }
        writer.write_all(
            &(Envelope {
                id: 0,
                body: Body::Sync { nonce },
            })
            .to_frame()
            .map_err(io::Error::other)?,
        )?;
        let until = Instant::now() + SYNC_EVERY;
        while Instant::now() < until {
            match reader.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => feed(&mut decoder, &buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
            while let Some(frame) = decoder.next_frame() {
                let Ok(payload) = frame else { continue };
                let Ok(envelope) = Envelope::from_payload(payload) else {
                    continue;
                };
                match check_hello(&envelope.body, nonce) {
                    Ok(()) => {
                        let Body::Hello { boottime_ns, .. } = envelope.body else {
                            continue;
                        };
                        stream.set_read_timeout(None)?;
                        return Ok(Some((decoder, boottime_ns)));
                    }
                    Err(HelloError::Stale) => {}
                    Err(e @ HelloError::Version { .. }) => {
                        eprintln!("hafen: {e}");
                        *lock(&shared.refused) = Some(e.to_string());
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// Feeds `bytes` into `decoder` (frames are taken by the caller).
fn feed(decoder: &mut Decoder, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = decoder.feed(bytes);
        if n == 0 {
            // Full: the caller takes frames first; drop what cannot fit.
            let _ = decoder.next_frame();
            if decoder.feed(bytes) == 0 {
                return;
            }
            continue;
        }
        bytes = &bytes[n..];
    }
}

fn nonce() -> u64 {
    let mut b = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        return unix_now_ns() ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(b)
}

/// Reads the guest until the connection breaks.
fn read_guest(
    shared: &Shared,
    mut stream: UnixStream,
    mut decoder: Box<Decoder>,
    last_seq: &mut u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        messages(&mut decoder, &buf[..n], |message| match message {
            Ok(envelope) => dispatch(shared, envelope, last_seq),
            Err(e) => eprintln!("hafen: the guest sent {e}"),
        });
    }
}

/// Feeds `bytes` to `decoder` and hands each frame it completes to `f`.
fn frames(decoder: &mut Decoder, mut bytes: &[u8], mut f: impl FnMut(Result<&[u8], String>)) {
    while !bytes.is_empty() {
        let k = decoder.feed(bytes);
        bytes = &bytes[k..];
        while let Some(frame) = decoder.next_frame() {
            f(frame.map_err(|e| e.to_string()));
        }
    }
}

/// [`frames`], decoded as messages.
fn messages(decoder: &mut Decoder, bytes: &[u8], mut f: impl FnMut(Result<Envelope, String>)) {
    frames(decoder, bytes, |frame| {
        f(frame.and_then(|p| Envelope::from_payload(p).map_err(|e| e.to_string())))
    });
}

/// Whether a guest frame ends its request.
fn is_final(body: &Body) -> bool {
    !matches!(
        body,
        Body::Log { .. } | Body::Event(_) | Body::Output { .. } | Body::ExecStarted { .. }
    )
}

fn dispatch(shared: &Shared, envelope: Envelope, last_seq: &mut u64) {
    match (envelope.id, envelope.body) {
        (EVENTS_ID, Body::Event(event)) => {
            if let EventKind::Shutdown {
                main_exit: Some(status),
                ..
            } = &event.kind
            {
                *lock(&shared.main_exit) = Some(*status);
            }
            if let EventKind::Shutdown { held, .. } = &event.kind {
                let name = lock(&shared.info).name.clone();
                if let Err(e) = crate::disk::record_held(&name, held) {
                    eprintln!("hafen: cannot record the containers hafen stop holds: {e}");
                }
            }
            if let EventKind::Die(_) = &event.kind {
                // Followers of a container that stopped are done.
                let mut followers = lock(&shared.followers);
                followers.retain(|f| {
                    if f.container == event.container {
                        f.client.send(f.id, Body::End);
                        false
                    } else {
                        true
                    }
                });
            }
            if let EventKind::Shutdown { .. } = &event.kind {
                lock(&shared.info).state = "stopping".to_owned();
            }
        }
        (LOGS_ID, Body::Log { container, entries }) => {
            if let Some(last) = entries.last() {
                *last_seq = (*last_seq).max(last.seq);
            }
            lock(&shared.logs).append(&container, &entries);
            let followers = lock(&shared.followers);
            for f in followers.iter().filter(|f| f.container == container) {
                f.client.send(
                    f.id,
                    Body::Log {
                        container: container.clone(),
                        entries: entries.clone(),
                    },
                );
            }
        }
        (0, Body::Error { message, .. }) => {
            eprintln!("hafen: the guest could not read a frame: {message}")
        }
        (EVENTS_ID | LOGS_ID, _) => {}
        (id, body) => {
            let last = is_final(&body);
            let route = {
                let mut routes = lock(&shared.routes);
                if last {
                    routes.remove(&id)
                } else {
                    routes.get(&id).cloned()
                }
            };
            if let Some(route) = route {
                route.client.send(route.id, body);
            }
        }
    }
}

/// Ends every routed request with an error (the guest went away).
fn fail_routes(shared: &Shared, why: &str) {
    let routes: Vec<Route> = lock(&shared.routes).drain().map(|(_, r)| r).collect();
    for route in routes {
        route.client.send(
            route.id,
            Body::Error {
                code: ErrorCode::NotReady,
                message: why.to_owned(),
            },
        );
    }
}

fn serve_api(shared: &Arc<Shared>, listener: UnixListener) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if shared.clients.load(Ordering::Relaxed) as usize >= MAX_CLIENTS {
            let mut s = &stream;
            let busy = Envelope {
                id: 0,
                body: Body::Error {
                    code: ErrorCode::Busy,
                    message: format!("{MAX_CLIENTS} clients are connected already"),
                },
            };
            if let Ok(frame) = busy.to_frame() {
                let _ = s.write_all(&frame);
            }
            continue;
        }
        shared.clients.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("api-client".into())
            .spawn(move || {
                serve_client(&shared, stream);
                shared.clients.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            eprintln!("hafen: cannot start a thread for a CLI client");
        }
    }
}

/// One CLI client: its requests in, its answers out.
fn serve_client(shared: &Arc<Shared>, stream: UnixStream) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(CLIENT_QUEUE);
    let client = Arc::new(ClientTx {
        tx,
        alive: AtomicBool::new(true),
    });
    let writer = std::thread::Builder::new()
        .name("api-writer".into())
        .spawn(move || {
            for frame in rx {
                if out.write_all(&frame).is_err() {
                    break;
                }
            }
            let _ = out.shutdown(std::net::Shutdown::Both);
        });
    if writer.is_err() {
        return;
    }
    // Client id -> guest id, for Input, Resize and Cancel.
    let mut mine: HashMap<u32, u32> = HashMap::new();
    let mut decoder: Box<Decoder> = Box::default();
    let mut reader = &stream;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !client.alive.load(Ordering::Relaxed) {
            break;
        }
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        messages(&mut decoder, &buf[..n], |message| match message {
            Ok(envelope) => request(shared, &client, &mut mine, envelope),
            Err(message) => client.send(
                0,
                Body::Error {
                    code: ErrorCode::BadFrame,
                    message,
                },
            ),
        });
    }
    // Gone: its requests in the guest end, its followers too.
    client.alive.store(false, Ordering::Relaxed);
    let open: Vec<u32> = {
        let mut routes = lock(&shared.routes);
        mine.values()
            .copied()
            .filter(|guest_id| routes.remove(guest_id).is_some())
            .collect()
    };
    for guest_id in open {
        shared.to_guest(guest_id, Body::Cancel);
    }
    lock(&shared.followers).retain(|f| !Arc::ptr_eq(&f.client, &client));
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Handles one CLI request.
fn request(
    shared: &Arc<Shared>,
    client: &Arc<ClientTx>,
    mine: &mut HashMap<u32, u32>,
    envelope: Envelope,
) {
    let Envelope { id, body } = envelope;
    match body {
        Body::VmInfo => client.send(id, Body::Vm(lock(&shared.info).clone())),
        Body::PowerOff { force } => {
            let power = lock(&shared.power).clone();
            let sent = power.is_some_and(|p| {
                p.send(if force {
                    PowerRequest::Force
                } else {
                    PowerRequest::Graceful
                })
                .is_ok()
            });
            if sent {
                // A full socket already says "look"; nothing is lost.
                let _ = (&shared.power_wake).write(&[1]);
            }
            client.send(
                id,
                if sent {
                    Body::Done
                } else {
                    Body::Error {
                        code: ErrorCode::Failed,
                        message: "the VM is already stopping".into(),
                    }
                },
            );
        }
        Body::Logs {
            container: Some(container),
            follow,
            tail,
            since_ns,
            after_seq: _,
        } if lock(&shared.logs).has(&container) => {
            let entries = lock(&shared.logs).read(&container, tail, since_ns);
            for batch in batches(entries) {
                client.send(
                    id,
                    Body::Log {
                        container: container.clone(),
                        entries: batch,
                    },
                );
            }
            if follow && shared.ready() {
                lock(&shared.followers).push(Follower {
                    container,
                    client: Arc::clone(client),
                    id,
                });
            } else {
                client.send(id, Body::End);
            }
        }
        Body::Cancel => {
            lock(&shared.followers).retain(|f| !(Arc::ptr_eq(&f.client, client) && f.id == id));
            if let Some(guest_id) = mine.remove(&id) {
                if lock(&shared.routes).remove(&guest_id).is_some() {
                    shared.to_guest(guest_id, Body::Cancel);
                }
            }
        }
        body @ (Body::Input { .. } | Body::Resize { .. }) => {
            if let Some(&guest_id) = mine.get(&id) {
                shared.to_guest(guest_id, body);
            }
        }
        body => {
            if !shared.ready() {
                client.send(id, shared.not_ready());
                return;
            }
            let guest_id = shared
                .next_id
                .fetch_add(1, Ordering::Relaxed)
                .max(FIRST_CLIENT_ID);
            lock(&shared.routes).insert(
                guest_id,
                Route {
                    client: Arc::clone(client),
                    id,
                },
            );
            mine.insert(id, guest_id);
            if !shared.to_guest(guest_id, body) {
                lock(&shared.routes).remove(&guest_id);
                client.send(id, shared.not_ready());
            }
        }
    }
}

/// Entries in frames of at most ~48 KiB.
fn batches(entries: Vec<LogEntry>) -> Vec<Vec<LogEntry>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut size = 0;
    for entry in entries {
        if size + entry.line.len() > 48 * 1024 && !batch.is_empty() {
            out.push(std::mem::take(&mut batch));
            size = 0;
        }
        size += entry.line.len();
        batch.push(entry);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// The containers' logs on the host: per container a file of frames, each
/// a postcard [`LogEntry`], rotated once to `.1` past [`LOG_FILE_LIMIT`].
#[derive(Debug)]
struct HostLogs {
    dir: PathBuf,
    sizes: HashMap<String, u64>,
}

impl HostLogs {
    fn new(dir: PathBuf) -> HostLogs {
        HostLogs {
            dir,
            sizes: HashMap::new(),
        }
    }

    fn path(&self, container: &str) -> PathBuf {
        // Container names are bundle directory names: one safe component.
        let safe: String = container
            .chars()
            .map(|c| if c == '/' || c == '\0' { '_' } else { c })
            .collect();
        self.dir.join(format!("{safe}.log"))
    }

    fn has(&self, container: &str) -> bool {
        self.sizes.contains_key(container)
    }

    fn append(&mut self, container: &str, entries: &[LogEntry]) {
        let path = self.path(container);
        let size = self.sizes.entry(container.to_owned()).or_insert(0);
        if *size > LOG_FILE_LIMIT {
            let mut old = path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&path, old);
            *size = 0;
        }
        let mut bytes = Vec::new();
        for entry in entries {
            if let Ok(payload) = postcard::to_allocvec(entry) {
                if let Ok(header) = frame::header(&payload) {
                    bytes.extend_from_slice(&header);
                    bytes.extend_from_slice(&payload);
                }
            }
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&bytes));
        match written {
            Ok(()) => *size += bytes.len() as u64,
            Err(e) => eprintln!("hafen: cannot keep logs in {}: {e}", path.display()),
        }
    }

    /// Everything kept for `container`, filtered like the guest does.
    fn read(&self, container: &str, tail: Option<u32>, since_ns: Option<u64>) -> Vec<LogEntry> {
        let path = self.path(container);
        let mut old = path.clone().into_os_string();
        old.push(".1");
        let mut entries = Vec::new();
        for file in [PathBuf::from(old), path] {
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            let mut decoder: Box<Decoder> = Box::default();
            frames(&mut decoder, &bytes, |frame| {
                if let Some(entry) = frame
                    .ok()
                    .and_then(|p| postcard::from_bytes::<LogEntry>(p).ok())
                {
                    entries.push(entry);
                }
            });
        }
        if let Some(since) = since_ns {
            entries.retain(|e| e.time_ns >= since);
        }
        if let Some(n) = tail {
            keep_last_lines(&mut entries, u64::from(n));
        }
        entries
    }
}

/// How many lines `bytes` holds (a last piece without newline counts).
fn line_count(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(!bytes.is_empty() && bytes.last() != Some(&b'\n'))
}

/// Keeps only the last `n` lines of `entries`.
fn keep_last_lines(entries: &mut Vec<LogEntry>, n: u64) {
    let mut wanted = n;
    let mut start = entries.len();
    while start > 0 && wanted > 0 {
        let count = line_count(&entries[start - 1].line);
        if count >= wanted {
            // Trim the front of this entry to the wanted lines.
            let entry = &mut entries[start - 1];
            let mut skip = count - wanted;
            let mut cut = 0;
            for (i, &b) in entry.line.iter().enumerate() {
                if skip == 0 {
                    break;
                }
                if b == b'\n' {
                    skip -= 1;
                    cut = i + 1;
                }
            }
            entry.line.drain(..cut);
            start -= 1;
            wanted = 0;
        } else {
            wanted -= count;
            start -= 1;
        }
    }
    entries.drain(..start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hafen_proto::control::Stream;

    fn entry(seq: u64, time_ns: u64, line: &str) -> LogEntry {
        LogEntry {
            seq,
            time_ns,
            stream: Stream::Stdout,
            line: line.as_bytes().to_vec(),
        }
    }

    fn text(entries: &[LogEntry]) -> String {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.line).into_owned())
            .collect()
    }

    #[test]
    fn host_logs_keep_entries_and_answer_tail_and_since() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut logs = HostLogs::new(dir.path().to_owned());
        assert!(!logs.has("web"));
        logs.append("web", &[entry(1, 10, "a\nb\n"), entry(3, 20, "c\n")]);
        logs.append("db", &[entry(2, 15, "x\n")]);
        logs.append("web", &[entry(4, 30, "d\ne")]);
        assert!(logs.has("web"));
        assert_eq!(text(&logs.read("web", None, None)), "a\nb\nc\nd\ne");
        assert_eq!(text(&logs.read("web", Some(2), None)), "d\ne");
        assert_eq!(text(&logs.read("web", Some(4), None)), "b\nc\nd\ne");
        assert_eq!(text(&logs.read("web", None, Some(20))), "c\nd\ne");
        assert_eq!(text(&logs.read("db", None, None)), "x\n");
    }

    #[test]
    fn host_log_files_are_rotated_and_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut logs = HostLogs::new(dir.path().to_owned());
        let line = "y".repeat(40_000) + "\n";
        for seq in 0..600 {
            logs.append("big", &[entry(seq, seq, &line)]);
        }
        let total: u64 = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(
            total <= 2 * LOG_FILE_LIMIT + 2 * 41_000,
            "{total} bytes kept"
        );
        let kept = logs.read("big", None, None);
        assert_eq!(kept.last().map(|e| e.seq), Some(599), "the newest is kept");
    }

    #[test]
    fn only_stream_frames_keep_a_route_open() {
        assert!(!is_final(&Body::Output {
            stream: Stream::Stdout,
            data: vec![]
        }));
        assert!(!is_final(&Body::ExecStarted { pid: 1 }));
        assert!(is_final(&Body::End));
        assert!(is_final(&Body::Done));
        assert!(is_final(&Body::ExecExit {
            status: ExitStatus::Code(0)
        }));
    }
}
