//! The control channel's messages: what the host's monitor and the guest's
//! PID 1 say to each other over the virtio-serial port, one postcard-encoded
//! [`Envelope`] per frame ([`crate::frame`]).
//!
//! Every (re)connection starts with the host's [`Body::Sync`] carrying a
//! fresh nonce; the guest answers [`Body::Hello`] with the same nonce, its
//! protocol version and capabilities. Everything the host reads before that
//! Hello is stale (bytes the guest wrote for a client that went away) and is
//! dropped. Requests carry ids the host chooses, so several requests and
//! streams share the channel; every answer and stream frame names the id it
//! belongs to.
//!

use serde::{Deserialize, Serialize};

use crate::frame;

/// The protocol version this build speaks. A peer with another one is
/// refused with a message that says which side to update.
pub const PROTOCOL_VERSION: u32 = 4;

/// One message and the request it belongs to (0: the channel itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The request id, chosen by the host.
    pub id: u32,
    /// The message.
    pub body: Body,
}

/// What a frame says.
///
/// Requests go host to guest (or CLI to monitor) with a fresh id; the
/// answer is one frame with the same id ([`Body::Done`], a data body or
/// [`Body::Error`]), or, for streams (`Logs` with follow, `Events`, `Exec`),
/// any number of frames ended by [`Body::End`] (or `ExecExit`, or `Error`).
/// Times are guest `CLOCK_BOOTTIME` nanoseconds; [`Body::Hello`] carries
/// the guest's clock so the host can turn them into wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Host to guest, first on every connection: answer with this nonce.
    Sync {
        /// Chosen afresh by the host for each connection.
        nonce: u64,
    },
    /// Guest to host, the answer to [`Body::Sync`].
    Hello {
        /// The nonce of the Sync it answers.
        nonce: u64,
        /// The guest's [`PROTOCOL_VERSION`].
        version: u32,
        /// What the guest can do (verb names), for hosts newer than it.
        capabilities: Vec<String>,
        /// The guest's `CLOCK_BOOTTIME` when it answered, in nanoseconds.
        boottime_ns: u64,
    },
    /// The request `id` (or, with id 0, the frame just read) failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// For the user.
        message: String,
    },
    /// Host to guest: stop the stream or request `id`.
    Cancel,
    /// The request `id` succeeded and has nothing more to say.
    Done,
    /// The stream `id` has ended.
    End,

    // Requests, host to guest.
    /// Every container: answered by [`Body::Containers`].
    List,
    /// One container in full: answered by [`Body::Inspected`].
    Inspect {
        /// The container's name.
        container: String,
    },
    /// A container's logs (every container's when `None`): any number of
    /// [`Body::Log`] frames, then [`Body::End`] unless `follow`.
    Logs {
        /// Whose logs.
        container: Option<String>,
        /// Keep sending new lines until cancelled or the container's
        /// output closes.
        follow: bool,
        /// Only the last N lines kept.
        tail: Option<u32>,
        /// Only lines logged at or after this time.
        since_ns: Option<u64>,
        /// Only lines with a sequence number above this (a reconnecting
        /// monitor resumes where it stopped).
        after_seq: Option<u64>,
    },
    /// Send a signal to a container's init (`hafen kill`): [`Body::Done`].
    Kill {
        /// The container's name.
        container: String,
        /// The signal number.
        signal: i32,
    },
    /// Stop a container: its stop signal, then SIGKILL after the timeout.
    /// [`Body::Done`] once it has exited.
    Stop {
        /// The container's name.
        container: String,
        /// Seconds before SIGKILL; the container's own stop timeout when `None`.
        timeout_secs: Option<u32>,
    },
    /// Start a container that is not running: [`Body::Done`] once started.
    Start {
        /// The container's name.
        container: String,
    },
    /// Stop (if running) then start: [`Body::Done`] once started again.
    Restart {
        /// The container's name.
        container: String,
        /// As for [`Body::Stop`].
        timeout_secs: Option<u32>,
    },
    /// Wait until a container is not running: [`Body::Exited`].
    Wait {
        /// The container's name.
        container: String,
    },
    /// A container's processes: [`Body::Processes`].
    Top {
        /// The container's name.
        container: String,
    },
    /// Resource use of one container or all running ones: [`Body::Stats`].
    GetStats {
        /// Whose; every running container's when `None`.
        container: Option<String>,
    },
    /// The event stream: [`Body::Event`] frames until cancelled.
    Events,
    /// Run a process in a running container: [`Body::ExecStarted`], then
    /// [`Body::Output`] frames, then [`Body::ExecExit`]. The host sends
    /// [`Body::Input`] and [`Body::Resize`] with the same id.
    Exec(ExecRequest),
    /// Host to guest, for exec `id`: bytes for its stdin; empty is EOF.
    Input {
        /// The bytes.
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// Host to guest, for exec `id` with a terminal: the new window size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Shut the guest down as the power button does: [`Body::Done`] when
    /// the shutdown has begun.
    Shutdown {
        /// Reboot instead of powering off.
        reboot: bool,
    },

    // Answers and stream frames, guest to host.
    /// Answer to [`Body::List`].
    Containers(Vec<ContainerInfo>),
    /// Answer to [`Body::Inspect`].
    Inspected {
        /// Its state.
        info: Box<ContainerInfo>,
        /// Its OCI `config.json`, as the guest read it.
        config_json: String,
    },
    /// Log lines of one container, oldest first.
    Log {
        /// The container's name.
        container: String,
        /// The lines.
        entries: Vec<LogEntry>,
    },
    /// Answer to [`Body::Wait`]: how the container ended.
    Exited(ExitInfo),
    /// Answer to [`Body::Top`].
    Processes(Vec<ProcessInfo>),
    /// Answer to [`Body::GetStats`].
    Stats(Vec<ContainerStats>),
    /// One event.
    Event(Event),
    /// The exec'd process is running.
    ExecStarted {
        /// Its pid in the guest (not in the container).
        pid: u32,
    },
    /// Output of exec `id`.
    Output {
        /// Which stream (a terminal's output is [`Stream::Stdout`]).
        stream: Stream,
        /// The bytes.
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// Exec `id` has ended; its output has all been sent.
    ExecExit {
        /// How.
        status: ExitStatus,
    },

    // Between the CLI and the monitor only (api.sock); never on the port.
    /// CLI to monitor: what VM is this? Answered by [`Body::Vm`].
    VmInfo,
    /// Monitor to CLI.
    Vm(VmInfo),
    /// CLI to monitor: power the VM off; `force` ends QEMU at once.
    PowerOff {
        /// Do not wait for the guest.
        force: bool,
    },

    /// Host to guest: the guest's own figures: answered by [`Body::Guest`].
    GetGuest,
    /// Answer to [`Body::GetGuest`].
    Guest(GuestInfo),
    /// The volumes: [`Body::Volumes`].
    GetVolumes,
    /// Answer to [`Body::GetVolumes`].
    Volumes(Vec<VolumeInfo>),
    /// Copy a volume out as a tar archive, or replace its content with
    /// one; answered like [`Body::Exec`]: [`Body::ExecStarted`], then
    /// [`Body::Output`] (on export, stdout is the archive; stderr carries
    /// the copier's messages either way), then [`Body::ExecExit`]. An
    /// import's archive comes as [`Body::Input`] frames ended by an empty one.
    VolumeCopy {
        /// The volume.
        volume: String,
        /// Which way.
        direction: CopyDirection,
    },
    /// A builder VM's part of a Dockerfile build ([`crate::build`]);
    /// answered like [`Body::Exec`]. Refused by a VM that is no builder.
    Build(crate::build::BuildOp),
}

/// Which way [`Body::VolumeCopy`] copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyDirection {
    /// From the volume to the host: consistent, because the running
    /// containers that mount it are paused (cgroup freezer) meanwhile.
    Export,
    /// From the host into the volume, replacing what it held: the archive
    /// is unpacked beside it and swapped in only once complete; no running
    /// container may mount it.
    Import,
}

/// The guest machine and its PID 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// PID 1's resident memory in bytes.
    pub init_rss_bytes: u64,
    /// Bytes held in the containers' log rings (counting their bookkeeping).
    pub log_bytes: u64,
    /// The guest's memory, in bytes.
    pub memory_total_bytes: u64,
    /// Memory available to new work, in bytes.
    pub memory_available_bytes: u64,
    /// The guest's `CLOCK_BOOTTIME`.
    pub boottime_ns: u64,
    /// CPU time PID 1 has used (user and system), in nanoseconds.
    pub init_cpu_ns: u64,
}

/// A volume as the guest sees it (`hafen volume ls|inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Its name.
    pub name: String,
    /// Backed by a host directory (`hafen run -v`) rather than the data disk.
    pub host_dir: bool,
    /// Mounted read-only (a read-only host directory).
    pub readonly: bool,
    /// Bytes its files use; `None` before first use.
    pub used_bytes: Option<u64>,
    /// The count stopped at its bound: `used_bytes` is a lower bound.
    pub used_partial: bool,
    /// The containers that mount it.
    pub containers: Vec<String>,
}

/// A request to run a process in a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The container's name.
    pub container: String,
    /// The command and its arguments; `args[0]` is looked up in the
    /// container's PATH.
    pub args: Vec<String>,
    /// `KEY=VALUE` added to (or replacing in) the container's environment.
    pub env: Vec<String>,
    /// `USER`, `UID`, `USER:GROUP` or `UID:GID` inside the container; the
    /// container's own user when `None`.
    pub user: Option<String>,
    /// Working directory; the container's when `None`.
    pub cwd: Option<String>,
    /// A terminal: stdout and stderr both come as [`Stream::Stdout`].
    pub tty: bool,
    /// Keep stdin open for [`Body::Input`]; otherwise it is /dev/null.
    pub stdin: bool,
    /// The terminal's initial size (rows, cols).
    pub size: Option<(u16, u16)>,
}

/// A container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Declared, not started yet (or never, for a `once` container that
    /// is still waiting its turn).
    Created,
    /// Its init is running.
    Running,
    /// Between a stop and the next start.
    Restarting,
    /// Its init exited.
    Exited,
    /// It could not be started.
    Failed,
    /// Running, but frozen (while a volume it mounts is exported).
    Paused,
}

impl State {
    /// The word `hafen ps` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Restarting => "restarting",
            State::Exited => "exited",
            State::Failed => "failed",
            State::Paused => "paused",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The shell's number for it: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

impl core::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by {}", crate::signal::name(*s)),
        }
    }
}

/// How and when a container's init ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// How.
    pub status: ExitStatus,
    /// When.
    pub finished_ns: u64,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

/// What `hafen ps` and `hafen inspect` show of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Its name.
    pub name: String,
    /// The image it was built from, as the manifest named it.
    pub image: String,
    /// Its command and arguments.
    pub command: Vec<String>,
    /// Its state.
    pub state: State,
    /// Its init's pid in the guest, while running.
    pub pid: Option<u32>,
    /// When it last started.
    pub started_ns: Option<u64>,
    /// How it last ended.
    pub exit: Option<ExitInfo>,
    /// Why it failed to start, when it did.
    pub error: Option<String>,
    /// How many times its restart policy (or its health) started it again.
    pub restarts: u32,
    /// The machine shuts down when it ends (the manifest's `main`).
    pub main: bool,
    /// Its restart policy (`no`, `on-failure:5`, `always`, ...).
    pub restart_policy: String,
    /// When the next restart is due (guest `CLOCK_BOOTTIME`), while it
    /// waits out its back-off.
    pub next_restart_ns: Option<u64>,
    /// What it waits for before it can start (`db to be healthy`).
    pub waiting_for: Option<String>,
    /// Its health, when it has a health check.
    pub health: Option<Health>,
}

/// A container's health, as its health check finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The verdict so far.
    pub status: HealthStatus,
    /// Consecutive failed checks.
    pub failing_streak: u32,
    /// The last checks, oldest first (at most five).
    pub log: Vec<HealthResult>,
}

/// Docker's health states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthStatus {
    /// No check has passed yet, and not enough have failed.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl HealthStatus {
    /// The word `hafen ps` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// One health check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResult {
    /// When it started (guest `CLOCK_BOOTTIME`).
    pub start_ns: u64,
    /// When it ended.
    pub end_ns: u64,
    /// Its exit code: 0 passed; -1 it could not run or timed out.
    pub exit_code: i32,
    /// The start of what it printed (stdout and stderr), or why it failed.
    pub output: String,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Increases by one per line, guest-wide (across containers), from 1
    /// at boot: a reconnecting monitor resumes with `after_seq`.
    pub seq: u64,
    /// When it was read.
    pub time_ns: u64,
    /// Which stream.
    pub stream: Stream,
    /// The bytes, with the newline when the line was complete (a line
    /// longer than the guest's limit, or cut by the output closing, has none).
    #[serde(with = "crate::bytes")]
    pub line: Vec<u8>,
}

/// One process of a container (`hafen top`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its pid in the guest.
    pub pid: u32,
    /// Its parent's pid in the guest.
    pub ppid: u32,
    /// Its real uid (in the guest's user namespace).
    pub uid: u32,
    /// CPU time used, user plus system, in microseconds.
    pub cpu_usec: u64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Its command line (its name in brackets when it has none).
    pub command: String,
}

/// A container's resource use from its cgroup (`hafen stats`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// The container's name.
    pub name: String,
    /// When these were read.
    pub time_ns: u64,
    /// CPU time used since it started, in microseconds.
    pub cpu_usec: u64,
    /// Memory in use, in bytes.
    pub memory_bytes: u64,
    /// Its memory limit; `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// Processes in it.
    pub pids: u64,
    /// Bytes read from block devices.
    pub io_read_bytes: u64,
    /// Bytes written to block devices.
    pub io_write_bytes: u64,
}

/// Something that happened to a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When.
    pub time_ns: u64,
    /// To which container.
    pub container: String,
    /// What.
    pub kind: EventKind,
}

/// Kinds of [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// It started.
    Start {
        /// Its init's pid.
        pid: u32,
    },
    /// It could not be started.
    StartFailed {
        /// Why.
        message: String,
    },
    /// Its init ended.
    Die(ExitInfo),
    /// The OOM killer killed one of its processes.
    Oom,
    /// A stop was requested (`hafen stop`, a shutdown).
    Stop,
    /// A signal was sent to it (`hafen kill`).
    Kill {
        /// Which.
        signal: i32,
    },
    /// A process was exec'd in it.
    ExecStart {
        /// Its pid.
        pid: u32,
        /// Its command line.
        command: Vec<String>,
    },
    /// An exec'd process ended.
    ExecDie {
        /// Its pid.
        pid: u32,
        /// How.
        status: ExitStatus,
    },
    /// The machine is shutting down.
    Shutdown {
        /// The main container's status when its end is why.
        main_exit: Option<ExitStatus>,
        /// `unless-stopped` containers `hafen stop` holds down: the next
        /// boot of this VM keeps them stopped (docker keeps such a stop
        /// across a daemon restart).
        held: Vec<String>,
    },
    /// Its restart policy (or its failed health) started it again.
    Restart {
        /// Restarts so far, this one included.
        count: u32,
        /// How long it waited (its back-off), in milliseconds.
        delay_ms: u64,
    },
    /// Its health changed.
    HealthStatus {
        /// To what.
        status: HealthStatus,
    },
    /// It will never start: something it depends on can no longer be ready.
    DependencyFailed {
        /// Why, naming the dependency.
        reason: String,
    },
    /// It was frozen (while a volume it mounts is exported).
    Pause,
    /// It runs again.
    Unpause,
}

impl EventKind {
    /// The word `hafen events` shows (docker's names).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Start { .. } => "start",
            EventKind::StartFailed { .. } => "start_failed",
            EventKind::Die(_) => "die",
            EventKind::Oom => "oom",
            EventKind::Pause => "pause",
            EventKind::Unpause => "unpause",
            EventKind::Stop => "stop",
            EventKind::Kill { .. } => "kill",
            EventKind::ExecStart { .. } => "exec_start",
            EventKind::ExecDie { .. } => "exec_die",
            EventKind::Shutdown { .. } => "shutdown",
            EventKind::Restart { .. } => "restart",
            EventKind::HealthStatus { .. } => "health_status",
            EventKind::DependencyFailed { .. } => "dependency_failed",
        }
    }
}

/// What the monitor says about its VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM's name.
    pub name: String,
    /// The image directory it booted.
    pub image: String,
    /// The monitor's (`hafen run`'s) pid.
    pub monitor_pid: u32,
    /// QEMU's pid.
    pub qemu_pid: u32,
    /// When `hafen run` started, Unix time in nanoseconds.
    pub started_unix_ns: u64,
    /// The guest's boot time as Unix nanoseconds (guest time 0), once the
    /// guest has answered; turns guest times into wall-clock times.
    pub guest_boot_unix_ns: Option<u64>,
    /// `booting`, `running`, `stopping`.
    pub state: String,
}

/// Kinds of [`Body::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// A frame that was not a message (garbage, oversized, corrupt,
    /// undecodable); the channel goes on with the next frame.
    BadFrame,
    /// A message this side does not know (a newer peer).
    Unsupported,
    /// No such container (or exec session).
    NotFound,
    /// The request is valid but failed.
    Failed,
    /// Too many requests or streams at once; try again later.
    Busy,
    /// The guest has not answered yet (still booting) or is gone.
    NotReady,
    /// The request does not fit the container's state (stop of a stopped
    /// container, exec in one that is not running).
    Conflict,
}

/// The verbs a guest of this version serves, as listed in [`Body::Hello`].
pub const CAPABILITIES: &[&str] = &[
    "list", "inspect", "logs", "kill", "stop", "start", "restart", "wait", "top", "stats",
    "events", "exec", "shutdown", "guest", "volumes",
];

/// A message that could not be turned into a frame or back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// Encoding failed or the message is too large for a frame.
    Encode(String),
    /// The payload is not a message of this protocol.
    Decode(String),
}

impl core::fmt::Display for CodecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CodecError::Encode(e) => write!(f, "cannot encode a control message: {e}"),
            CodecError::Decode(e) => write!(f, "not a control message: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

impl Envelope {
    /// This message as one frame, ready to write.
    pub fn to_frame(&self) -> Result<Vec<u8>, CodecError> {
        let payload = postcard::to_allocvec(self).map_err(|e| CodecError::Encode(e.to_string()))?;
        let header = frame::header(&payload).map_err(|e| CodecError::Encode(e.to_string()))?;
        let mut out = Vec::with_capacity(frame::HEADER + payload.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Decodes a frame's payload; trailing bytes are an error.
    pub fn from_payload(payload: &[u8]) -> Result<Envelope, CodecError> {
        match postcard::take_from_bytes::<Envelope>(payload) {
            Ok((envelope, [])) => Ok(envelope),
            Ok((_, rest)) => Err(CodecError::Decode(format!(
                "{} bytes after the message",
                rest.len()
            ))),
            Err(e) => Err(CodecError::Decode(e.to_string())),
        }
    }
}

/// Why a guest's Hello is not the one this host can talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloError {
    /// The answer is to another Sync: stale bytes; keep reading.
    Stale,
    /// Another protocol version.
    Version {
        /// The guest's.
        guest: u32,
    },
}

impl core::fmt::Display for HelloError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HelloError::Stale => f.write_str("an answer to an earlier connection"),
            HelloError::Version { guest } if *guest < PROTOCOL_VERSION => write!(
                f,
                "the guest speaks control protocol {guest}, this hafen speaks \
                 {PROTOCOL_VERSION}: rebuild the image with this hafen (hafen build)"
            ),
            HelloError::Version { guest } => write!(
                f,
                "the guest speaks control protocol {guest}, this hafen speaks \
                 {PROTOCOL_VERSION}: use the hafen that built the image, or update this one"
            ),
        }
    }
}

/// Checks the guest's answer to the Sync with `nonce`.
pub fn check_hello(body: &Body, nonce: u64) -> Result<(), HelloError> {
    match body {
        Body::Hello {
            nonce: n, version, ..
        } if *n == nonce => {
            if *version == PROTOCOL_VERSION {
                Ok(())
            } else {
                Err(HelloError::Version { guest: *version })
            }
        }
        _ => Err(HelloError::Stale),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Decoder, FrameError};

    fn hello(nonce: u64, version: u32) -> Envelope {
        Envelope {
            id: 0,
            body: Body::Hello {
                nonce,
                version,
                capabilities: vec!["ps".into(), "logs".into()],
                boottime_ns: 1,
            },
        }
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let messages = [
            Envelope {
                id: 0,
                body: Body::Sync { nonce: 42 },
            },
            hello(42, PROTOCOL_VERSION),
            Envelope {
                id: 7,
                body: Body::Error {
                    code: ErrorCode::NotFound,
                    message: "no container \"web\"".into(),
                },
            },
            Envelope {
                id: 7,
                body: Body::Cancel,
            },
        ];
        let mut stream = Vec::new();
        for m in &messages {
            stream.extend(m.to_frame().expect("encodes"));
        }
        let mut d: Decoder = Decoder::new();
        assert_eq!(d.feed(&stream), stream.len());
        let mut got = Vec::new();
        while let Some(frame) = d.next_frame() {
            got.push(Envelope::from_payload(frame.expect("a frame")).expect("decodes"));
        }
        assert_eq!(got, messages);
    }

    #[test]
    fn a_frame_that_is_not_a_message_is_an_error_not_a_panic() {
        for payload in [&b""[..], b"\xff\xff\xff\xff\xff", b"\x00\x09"] {
            assert!(Envelope::from_payload(payload).is_err(), "{payload:?}");
        }
        let mut extra = postcard::to_allocvec(&hello(1, 1)).expect("encodes");
        extra.push(0);
        assert!(matches!(
            Envelope::from_payload(&extra),
            Err(CodecError::Decode(m)) if m.contains("after the message")
        ));
        // A frame around garbage passes the frame checks, fails decoding.
        let mut out = vec![0u8; 64];
        let n = frame::encode(b"\xff\xfe\xfd", &mut out).expect("fits");
        let mut d: Decoder = Decoder::new();
        d.feed(&out[..n]);
        let payload = d.next_frame().expect("a frame").expect("well framed");
        assert!(Envelope::from_payload(payload).is_err());
        assert_eq!(d.next_frame(), None::<Result<&[u8], FrameError>>);
    }

    #[test]
    fn the_hello_must_answer_this_sync_in_this_version() {
        assert_eq!(check_hello(&hello(5, PROTOCOL_VERSION).body, 5), Ok(()));
        assert_eq!(
            check_hello(&hello(4, PROTOCOL_VERSION).body, 5),
            Err(HelloError::Stale)
        );
        let old = check_hello(&hello(5, 0).body, 5).expect_err("older guest");
        assert!(old.to_string().contains("hafen build"), "{old}");
        let new = check_hello(&hello(5, PROTOCOL_VERSION + 1).body, 5).expect_err("newer");
        assert!(new.to_string().contains("update"), "{new}");
    }
}
