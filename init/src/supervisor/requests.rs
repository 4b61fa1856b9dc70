//! What the host asks over the control channel, and the streams it
//! follows. Every request is answered in the event loop's turn that read
//! it, except those that wait for a container (stop, restart, wait) and
//! the streams (logs, events, exec), which are [`Session`]s the loop
//! advances as things happen, and only while the channel has room.

use std::path::Path;

use hafen_proto::control::{
    self as proto, Body, ErrorCode, LogEntry, CAPABILITIES, PROTOCOL_VERSION,
};

use super::depends::Readiness;
use super::{Container, PowerAction, State, Supervisor};
use crate::control::{Incoming, HARD_LIMIT};
use crate::logs::trim_to_lines;
use crate::sys;

/// The most sessions (streams and waiting requests) at once.
const MAX_SESSIONS: usize = 64;
/// Log bytes per frame, well under the frame limit.
const LOG_BATCH: usize = 48 * 1024;
/// The most processes `hafen top` lists.
const MAX_PROCESSES: usize = 256;

/// A request that outlives the turn that read it.
#[derive(Debug)]
pub(super) enum Session {
    /// A logs request, following or catching up.
    Logs(LogStream),
    /// The event stream.
    Events { id: u32 },
    /// `hafen wait`: answered when the container stops.
    Wait { id: u32, container: usize },
    /// `hafen stop` or `restart`: answered when it stopped (and started again).
    Stop {
        id: u32,
        container: usize,
        restart: bool,
    },
}

impl Session {
    fn id(&self) -> u32 {
        match self {
            Session::Logs(s) => s.id,
            Session::Events { id } | Session::Wait { id, .. } | Session::Stop { id, .. } => *id,
        }
    }
}

/// Where a logs request has got to.
#[derive(Debug)]
pub(super) struct LogStream {
    id: u32,
    /// One container, or all of them.
    container: Option<usize>,
    /// Per container: the last sequence number sent.
    cursors: Vec<u64>,
    follow: bool,
    /// `--tail`: the first entry sent keeps only this many lines.
    trim_first: Option<u64>,
}

/// A request refused: becomes a [`Body::Error`] answer.
#[derive(Debug)]
pub(super) struct Refusal {
    code: ErrorCode,
    message: String,
}

impl From<Refusal> for Body {
    fn from(r: Refusal) -> Body {
        Body::Error {
            code: r.code,
            message: r.message,
        }
    }
}

/// A refusal with `code` and `message`.
pub(super) fn error(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl Supervisor {
    /// The control port is ready (`events`): read, answer, write.
    pub(super) fn control_ready(&mut self, events: u32) {
        let Some(channel) = self.channel.as_mut() else {
            return;
        };
        let mut incoming = std::mem::take(&mut self.incoming);
        let hung_up = channel.ready(&self.epoll, events, &mut incoming);
        if hung_up {
            incoming.clear();
            self.host_gone();
        }
        for item in incoming.drain(..) {
            match item {
                Incoming::Message(envelope) => self.handle(envelope.id, envelope.body),
                Incoming::Bad(what) => self.bad_frames.write(
                    crate::log::Level::Warn,
                    format_args!("control channel: dropped {what}"),
                ),
            }
        }
        self.incoming = incoming;
        self.pump();
    }

    /// The host went away (or a new one synced): its streams end; exec'd
    /// processes lose their terminal and pipes but run on.
    fn host_gone(&mut self) {
        self.sessions.clear();
        self.cancel_builds();
        self.detach_execs();
    }

    pub(super) fn reply(&mut self, id: u32, body: Body) {
        if let Some(channel) = self.channel.as_mut() {
            channel.send(id, body);
        }
    }

    pub(super) fn find(&self, name: &str) -> Result<usize, Refusal> {
        self.containers
            .iter()
            .position(|c| c.bundle.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .containers
                    .iter()
                    .map(|c| c.bundle.name.as_str())
                    .collect();
                error(
                    ErrorCode::NotFound,
                    format!(
                        "no container {name:?} in this machine (it has: {})",
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                )
            })
    }

    fn add_session(&mut self, id: u32, session: Session) -> Result<(), Refusal> {
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(error(
                ErrorCode::Busy,
                format!("{MAX_SESSIONS} requests are already being served; try again later"),
            ));
        }
        self.sessions.retain(|s| s.id() != id);
        self.sessions.push(session);
        Ok(())
    }

    /// Answers one request.
    fn handle(&mut self, id: u32, body: Body) {
        let answer = match body {
            Body::Sync { nonce } => {
                // A new connection: whatever the last one asked for is void.
                self.host_gone();
                Some(Body::Hello {
                    nonce,
                    version: PROTOCOL_VERSION,
                    capabilities: CAPABILITIES
                        .iter()
                        .copied()
                        .chain(self.builder.then_some("build"))
                        .map(str::to_owned)
                        .collect(),
                    boottime_ns: sys::boottime_ns(),
                })
            }
            Body::List => Some(Body::Containers(
                (0..self.containers.len()).map(|i| self.info(i)).collect(),
            )),
            Body::Inspect { container } => {
                Some(self.inspect(&container).unwrap_or_else(Body::from))
            }
            Body::Logs {
                container,
                follow,
                tail,
                since_ns,
                after_seq,
            } => self
                .open_logs(id, container.as_deref(), follow, tail, since_ns, after_seq)
                .err()
                .map(Body::from),
            Body::Kill { container, signal } => {
                Some(self.kill(&container, signal).unwrap_or_else(Body::from))
            }
            Body::Stop {
                container,
                timeout_secs,
            } => self
                .stop_request(id, &container, timeout_secs, false)
                .err()
                .map(Body::from),
            Body::Restart {
                container,
                timeout_secs,
            } => self
                .stop_request(id, &container, timeout_secs, true)
                .err()
                .map(Body::from),
            Body::Start { container } => {
                Some(self.start_request(&container).unwrap_or_else(Body::from))
            }
            Body::Wait { container } => self.wait_request(id, &container).err().map(Body::from),
            Body::Top { container } => Some(self.top(&container).unwrap_or_else(Body::from)),
            Body::GetStats { container } => {
                Some(self.stats(container.as_deref()).unwrap_or_else(Body::from))
            }
            Body::Events => match self.add_session(id, Session::Events { id }) {
                Ok(()) => {
                    self.events_heard = true;
                    if self.shutdown.is_some() {
                        // It missed the announcement: repeat it.
                        let event = proto::Event {
                            time_ns: sys::boottime_ns(),
                            container: String::new(),
                            kind: proto::EventKind::Shutdown {
                                main_exit: self.main_exit,
                                held: self.held_unless_stopped(),
                            },
                        };
                        self.reply(id, Body::Event(event));
                    }
                    None
                }
                Err(e) => Some(Body::from(e)),
            },
            Body::Exec(request) => self.exec_start(id, request).err().map(Body::from),
            Body::Input { data } => self.exec_input(id, data).err().map(Body::from),
            Body::Resize { rows, cols } => self.exec_resize(id, rows, cols).err().map(Body::from),
            Body::Cancel => {
                self.sessions.retain(|s| s.id() != id);
                self.build_cancel(id);
                self.exec_cancel(id);
                None
            }
            Body::VolumeCopy { volume, direction } => self
                .volume_copy(id, volume, direction)
                .err()
                .map(Body::from),
            Body::Build(op) => self.build_start(id, op).err().map(Body::from),
            Body::GetGuest => Some(Body::Guest(self.guest_info())),
            Body::GetVolumes => {
                let mounts: Vec<(String, Vec<String>)> = self
                    .containers
                    .iter()
                    .map(|c| (c.bundle.name.clone(), c.bundle.volumes.clone()))
                    .collect();
                Some(Body::Volumes(crate::volume::list(&mounts)))
            }
            Body::Shutdown { reboot } => {
                self.request_shutdown(if reboot {
                    PowerAction::Reboot
                } else {
                    PowerAction::PowerOff
                });
                Some(Body::Done)
            }
            other => Some(Body::from(error(
                ErrorCode::Unsupported,
                format!("the guest does not serve {}", variant_name(&other)),
            ))),
        };
        if let Some(answer) = answer {
            self.reply(id, answer);
        }
    }

    fn info(&self, i: usize) -> proto::ContainerInfo {
        let restarting = self.sessions.iter().any(
            |s| matches!(s, Session::Stop { container, restart: true, .. } if *container == i),
        );
        let mut info = self.containers[i].info(restarting);
        if self.containers[i].state == State::NotStarted && !self.containers[i].held {
            if let Readiness::Waiting(what) = self.start_readiness(i) {
                info.waiting_for = Some(what);
            }
        }
        info
    }

    fn inspect(&self, name: &str) -> Result<Body, Refusal> {
        let i = self.find(name)?;
        let path = self.containers[i].bundle.dir.join("config.json");
        let config_json = std::fs::read_to_string(&path).map_err(|e| {
            error(
                ErrorCode::Failed,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Ok(Body::Inspected {
            info: Box::new(self.info(i)),
            config_json,
        })
    }

    fn running_pid(&self, i: usize) -> Result<libc::pid_t, Refusal> {
        self.containers[i].pid().ok_or_else(|| {
            error(
                ErrorCode::Conflict,
                format!(
                    "container {} is not running",
                    self.containers[i].bundle.name
                ),
            )
        })
    }

    fn kill(&mut self, name: &str, signal: i32) -> Result<Body, Refusal> {
        let i = self.find(name)?;
        let pid = self.running_pid(i)?;
        if !(1..=64).contains(&signal) {
            return Err(error(
                ErrorCode::Failed,
                format!("{signal} is not a signal number"),
            ));
        }
        sys::kill(pid, signal).map_err(|e| {
            error(
                ErrorCode::Failed,
                format!(
                    "cannot send {} to {name}: {e}",
                    hafen_proto::signal::name(signal)
                ),
            )
        })?;
        self.emit(i, proto::EventKind::Kill { signal });
        Ok(Body::Done)
    }

    fn stop_request(
        &mut self,
        id: u32,
        name: &str,
        timeout_secs: Option<u32>,
        restart: bool,
    ) -> Result<(), Refusal> {
        let i = self.find(name)?;
        if self.shutdown.is_some() {
            return Err(error(ErrorCode::Conflict, "the machine is shutting down"));
        }
        self.containers[i].restarts.cancel();
        if self.containers[i].pid().is_none() {
            if restart {
                self.containers[i].restarts.reset();
                self.start(i).map_err(|m| error(ErrorCode::Failed, m))?;
            } else {
                self.containers[i].held = true;
            }
            self.reply(id, Body::Done);
            return Ok(());
        }
        self.add_session(
            id,
            Session::Stop {
                id,
                container: i,
                restart,
            },
        )?;
        self.containers[i].held = true;
        self.stop(i, timeout_secs);
        Ok(())
    }

    fn start_request(&mut self, name: &str) -> Result<Body, Refusal> {
        let i = self.find(name)?;
        if self.shutdown.is_some() {
            return Err(error(ErrorCode::Conflict, "the machine is shutting down"));
        }
        if self.containers[i].pid().is_some() {
            return Err(error(
                ErrorCode::Conflict,
                format!("container {name} is already running"),
            ));
        }
        self.containers[i].restarts.reset();
        self.start(i)
            .map(|()| Body::Done)
            .map_err(|m| error(ErrorCode::Failed, m))
    }

    fn wait_request(&mut self, id: u32, name: &str) -> Result<(), Refusal> {
        let i = self.find(name)?;
        let c = &self.containers[i];
        match c.state {
            State::Exited if c.exit.is_some() => {
                let exit = c.exit.clone().map(Body::Exited);
                if let Some(body) = exit {
                    self.reply(id, body);
                }
                Ok(())
            }
            State::Failed => Err(error(
                ErrorCode::Failed,
                format!(
                    "container {name} failed to start: {}",
                    c.error.as_deref().unwrap_or("unknown error")
                ),
            )),
            _ => self.add_session(id, Session::Wait { id, container: i }),
        }
    }

    /// Container `i` stopped: answers those waiting for it, starts it
    /// again for a restart. True when it was restarted (or tried to be).
    pub(super) fn container_stopped(&mut self, i: usize) -> bool {
        let mut restarted = false;
        let mut answers = Vec::new();
        let exit = self.containers[i].exit.clone();
        let mut restart_ids = Vec::new();
        self.sessions.retain(|s| match s {
            Session::Wait { id, container } if *container == i => {
                if let Some(exit) = &exit {
                    answers.push((*id, Body::Exited(exit.clone())));
                }
                false
            }
            Session::Stop {
                id,
                container,
                restart,
            } if *container == i => {
                if *restart {
                    restart_ids.push(*id);
                } else {
                    answers.push((*id, Body::Done));
                }
                false
            }
            _ => true,
        });
        if !restart_ids.is_empty() && self.shutdown.is_none() {
            restarted = true;
            self.containers[i].restarts.reset();
            let result = self.start(i);
            for id in restart_ids {
                let body = match &result {
                    Ok(()) => Body::Done,
                    Err(m) => error(ErrorCode::Failed, m.clone()).into(),
                };
                answers.push((id, body));
            }
        }
        for (id, body) in answers {
            self.reply(id, body);
        }
        restarted
    }

    fn open_logs(
        &mut self,
        id: u32,
        container: Option<&str>,
        follow: bool,
        tail: Option<u32>,
        since_ns: Option<u64>,
        after_seq: Option<u64>,
    ) -> Result<(), Refusal> {
        let only = container.map(|name| self.find(name)).transpose()?;
        let mut cursors = vec![after_seq.unwrap_or(0); self.containers.len()];
        let mut trim_first = None;
        for (i, c) in self.containers.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            if let Some(since) = since_ns {
                cursors[i] = cursors[i].max(c.ring.since_start(since));
            }
            if let Some(n) = tail {
                let start = c.ring.tail_start(n).max(cursors[i]);
                cursors[i] = start;
                // Lines from `start` on, minus the wanted ones: the excess
                // is at the front of the first entry.
                let total: u64 = c.ring.after(start).map(|e| e.line_count()).sum();
                if total > u64::from(n) {
                    if let Some(first) = c.ring.after(start).next() {
                        trim_first = Some(first.line_count() - (total - u64::from(n)));
                    }
                }
            }
        }
        self.add_session(
            id,
            Session::Logs(LogStream {
                id,
                container: only,
                cursors,
                follow,
                trim_first,
            }),
        )
    }

    /// Moves the streams along while the channel has room, then writes.
    pub(super) fn pump(&mut self) {
        self.echo.flush();
        let mut finished = Vec::new();
        // Each pump starts at the next stream: the first one must not take
        // all the channel's room every time while another waits.
        let count = self.sessions.len();
        self.pump_turn = self.pump_turn.wrapping_add(1);
        for k in 0..count {
            let s = (self.pump_turn + k) % count;
            if let Session::Logs(_) = &self.sessions[s] {
                if self.pump_logs(s) {
                    finished.push(self.sessions[s].id());
                }
            }
        }
        for id in finished {
            self.sessions.retain(|s| s.id() != id);
            self.reply(id, Body::End);
        }
        self.exec_resume();
        if let Some(channel) = self.channel.as_mut() {
            if channel.queued() > 0 && channel.flush(&self.epoll) {
                self.host_gone();
            }
        }
    }

    /// Sends what log session `s` has not seen yet, while there is room;
    /// true when the session is complete.
    fn pump_logs(&mut self, s: usize) -> bool {
        let Session::Logs(stream) = &mut self.sessions[s] else {
            return false;
        };
        let Some(channel) = self.channel.as_mut() else {
            return false;
        };
        for (i, c) in self.containers.iter().enumerate() {
            if stream.container.is_some_and(|o| o != i) {
                continue;
            }
            loop {
                if !channel.has_room() {
                    // The loop comes back when the host has read.
                    return false;
                }
                let mut entries: Vec<LogEntry> = Vec::new();
                let mut size = 0;
                for entry in c.ring.after(stream.cursors[i]) {
                    if size + entry.len() > LOG_BATCH && !entries.is_empty() {
                        break;
                    }
                    size += entry.len();
                    let mut entry = entry.to_entry();
                    if let Some(keep) = stream.trim_first.take() {
                        entry.line = trim_to_lines(&entry.line, keep).to_vec();
                    }
                    entries.push(entry);
                }
                let Some(last) = entries.last() else {
                    break;
                };
                stream.cursors[i] = last.seq;
                channel.send(
                    stream.id,
                    Body::Log {
                        container: c.bundle.name.clone(),
                        entries,
                    },
                );
                if !channel.has_room() {
                    // More may be waiting: the loop comes back when the host reads.
                    return false;
                }
            }
        }
        if !stream.follow {
            return true;
        }
        // Following one container ends when it has stopped and its output closed.
        match stream.container {
            Some(i) => {
                let c: &Container = &self.containers[i];
                c.pid().is_none() && !c.output_open() && c.state != State::NotStarted
            }
            None => false,
        }
    }

    /// Sends `event` to every events stream.
    pub(super) fn broadcast(&mut self, event: proto::Event) {
        let Some(channel) = self.channel.as_mut() else {
            return;
        };
        for session in &self.sessions {
            if let Session::Events { id } = session {
                if channel.queued() < HARD_LIMIT {
                    channel.send(*id, Body::Event(event.clone()));
                } else {
                    debug!("control: event for a stream that does not read dropped");
                }
            }
        }
    }

    fn top(&self, name: &str) -> Result<Body, Refusal> {
        let i = self.find(name)?;
        let pid = self.running_pid(i)?;
        let pids = match &self.containers[i].cgroup {
            Some(dir) => read_pids(&dir.join("cgroup.procs")),
            None => descendants(pid),
        };
        let ticks = rustix::param::clock_ticks_per_second().max(1);
        let page = rustix::param::page_size() as u64;
        let processes = pids
            .into_iter()
            .take(MAX_PROCESSES)
            .filter_map(|p| process_info(p, ticks, page))
            .collect();
        Ok(Body::Processes(processes))
    }

    fn guest_info(&self) -> proto::GuestInfo {
        let kib = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        proto::GuestInfo {
            init_rss_bytes: kib(&status, "VmRSS:"),
            log_bytes: self.containers.iter().map(|c| c.ring.used() as u64).sum(),
            memory_total_bytes: kib(&meminfo, "MemTotal:"),
            memory_available_bytes: kib(&meminfo, "MemAvailable:"),
            boottime_ns: sys::boottime_ns(),
            init_cpu_ns: sys::process_cpu_ns(),
        }
    }

    fn stats(&self, name: Option<&str>) -> Result<Body, Refusal> {
        let only = name.map(|n| self.find(n)).transpose()?;
        let now = sys::boottime_ns();
        let stats = self
            .containers
            .iter()
            .enumerate()
            .filter(|(i, c)| only.map_or(c.pid().is_some(), |o| o == *i))
            .map(|(_, c)| container_stats(c, now))
            .collect();
        Ok(Body::Stats(stats))
    }
}

/// The variant's name, for "not served" errors.
fn variant_name(body: &Body) -> String {
    let debug = format!("{body:?}");
    let end = debug
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(debug.len());
    debug[..end].to_owned()
}

fn read_pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `pid` and every process below it, from /proc (containers without a cgroup).
fn descendants(pid: libc::pid_t) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1)?.parse().ok()) {
                parents.push((p, ppid));
            }
        }
    }
    let mut found = vec![pid as u32];
    let mut i = 0;
    while i < found.len() && found.len() < MAX_PROCESSES {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found
}

/// /proc/PID/stat's fields after the command name (state is the first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn process_info(pid: u32, ticks: u64, page: u64) -> Option<proto::ProcessInfo> {
    let fields = stat_fields(pid)?;
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let command = if cmdline.is_empty() {
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("")
            .trim();
        format!("[{name}]")
    } else {
        String::from_utf8_lossy(cmdline.strip_suffix(&[0]).unwrap_or(&cmdline)).replace('\0', " ")
    };
    Some(proto::ProcessInfo {
        pid,
        ppid: num(1) as u32,
        uid,
        // utime and stime are fields 14 and 15 of stat, 11 and 12 here.
        cpu_usec: (num(11) + num(12)) * 1_000_000 / ticks,
        rss_bytes: num(21) * page,
        command,
    })
}

fn container_stats(c: &Container, now: u64) -> proto::ContainerStats {
    let read = |name: &str| {
        c.cgroup
            .as_ref()
            .and_then(|dir| std::fs::read_to_string(dir.join(name)).ok())
            .unwrap_or_default()
    };
    let keyed = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (mut io_read, mut io_write) = (0, 0);
    for line in read("io.stat").lines() {
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("rbytes=") {
                io_read += v.parse::<u64>().unwrap_or(0);
            } else if let Some(v) = field.strip_prefix("wbytes=") {
                io_write += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    proto::ContainerStats {
        name: c.bundle.name.clone(),
        time_ns: now,
        cpu_usec: keyed(&read("cpu.stat"), "usage_usec "),
        memory_bytes: read("memory.current").trim().parse().unwrap_or(0),
        memory_limit: read("memory.max").trim().parse().ok(),
        pids: read("pids.current").trim().parse().unwrap_or(0),
        io_read_bytes: io_read,
        io_write_bytes: io_write,
    }
}
