//! A raw client of a VM's control port (`control.sock`, with `hafen run
//! --no-control`): frames in and out, nothing of the monitor.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hafen_proto::control::{check_hello, Body, Envelope};
use hafen_proto::frame::Decoder;

use super::{Vm, BOOT_TIMEOUT};

/// A raw client of the port.
pub struct Port {
    stream: UnixStream,
    decoder: Box<Decoder>,
    /// Error frames with id 0 seen (answers to bad input).
    pub bad_frames: Vec<String>,
    /// Frames read while waiting for another request's.
    pending: VecDeque<Envelope>,
}

impl Port {
    /// Connects to the VM's control.sock and completes the handshake
    /// (retrying the Sync while the guest boots).
    pub fn connect(vm: &Vm) -> Port {
        let socket = control_socket(vm);
        // QEMU binds the socket a moment before it listens on it.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connect {}: {e}", socket.display()),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut port = Port {
            stream,
            decoder: Box::default(),
            bad_frames: Vec::new(),
            pending: VecDeque::new(),
        };
        let nonce = u64::from(std::process::id()) << 16 | u64::from(rand_u16());
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            port.send(0, Body::Sync { nonce });
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                for envelope in port.read_some() {
                    if check_hello(&envelope.body, nonce).is_ok() {
                        return port;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the guest never answered the Sync"
            );
        }
    }

    pub fn send(&mut self, id: u32, body: Body) {
        let frame = Envelope { id, body }.to_frame().expect("encode");
        self.stream
            .write_all(&frame)
            .expect("write to control.sock");
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to control.sock");
    }

    /// What arrives within one read timeout.
    pub fn read_some(&mut self) -> Vec<Envelope> {
        let mut buf = [0u8; 65536];
        let mut out = Vec::new();
        match self.stream.read(&mut buf) {
            Ok(0) => panic!("QEMU closed control.sock"),
            Ok(n) => {
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let k = self.decoder.feed(rest);
                    rest = &rest[k..];
                    while let Some(frame) = self.decoder.next_frame() {
                        let payload = frame.expect("the guest sends well-formed frames");
                        let envelope = Envelope::from_payload(payload).expect("a message");
                        if let (0, Body::Error { message, .. }) = (envelope.id, &envelope.body) {
                            self.bad_frames.push(message.clone());
                        }
                        out.push(envelope);
                    }
                }
            }
            Err(_) => {}
        }
        out
    }

    /// Every frame for request `id` until `done` says the last one came;
    /// frames for other requests are kept for their own `collect`.
    pub fn collect(&mut self, id: u32, done: impl Fn(&Body) -> bool) -> Vec<Body> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        loop {
            let mut fresh: VecDeque<Envelope> = std::mem::take(&mut self.pending);
            fresh.extend(self.read_some());
            while let Some(envelope) = fresh.pop_front() {
                if envelope.id != id {
                    self.pending.push_back(envelope);
                    continue;
                }
                let last = done(&envelope.body);
                got.push(envelope.body);
                if last {
                    self.pending.extend(fresh);
                    return got;
                }
            }
            assert!(Instant::now() < deadline, "no end to request {id}: {got:?}");
        }
    }

    /// A single answer to `body`.
    pub fn ask(&mut self, id: u32, body: Body) -> Body {
        self.send(id, body);
        self.collect(id, |_| true).remove(0)
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("urandom");
    u16::from_le_bytes(b)
}

/// The VM's control.sock, under its state directory (named after its
/// `hafen run`'s pid).
pub fn control_socket(vm: &Vm) -> PathBuf {
    let vms = hafen_qemu::state::vms_dir(&hafen_qemu::state::runtime_dir());
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if let Some(dir) = hafen_qemu::state::list_vms(&vms)
            .into_iter()
            .find(|v| v.pid == vm.pid() as u32)
        {
            let socket = dir.path.join(hafen_qemu::state::CONTROL_SOCKET);
            if socket.exists() {
                return socket;
            }
        }
        assert!(Instant::now() < deadline, "no control.sock appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}
