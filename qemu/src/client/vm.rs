//! The verbs about whole VMs: `hafen ls`, `inspect VM`, `stop VM` and
//! `kill VM`.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use hafen_proto::control::{Body, ErrorCode, GuestInfo, VmInfo};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags};
use serde_json::{json, Value};

use super::format;
use super::{now_unix_ns, out, Client, Error};
use crate::state::{self, VmDir};

/// How long `hafen ls` waits for each monitor.
const LS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forced power-off may take before we give up waiting.
const FORCE_GRACE: Duration = Duration::from_secs(10);

/// One line of `hafen ls`: what the monitor said, or why it said nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The VM's name and monitor pid, from its state directory.
    pub name: String,
    /// The monitor's pid.
    pub pid: u32,
    /// The monitor's answer, or the reason there is none.
    pub info: Result<VmInfo, String>,
}

/// The `hafen ls` table.
pub fn ls_table(vms: &[Listed], now_unix_ns: u64) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| match &vm.info {
            Ok(info) => vec![
                vm.name.clone(),
                info.image.clone(),
                info.state.clone(),
                uptime(info, now_unix_ns),
                vm.pid.to_string(),
            ],
            Err(_) => vec![
                vm.name.clone(),
                "-".to_owned(),
                "not responding".to_owned(),
                "-".to_owned(),
                vm.pid.to_string(),
            ],
        })
        .collect();
    format::table(&["NAME", "IMAGE", "STATE", "UPTIME", "PID"], &rows)
}

fn uptime(info: &VmInfo, now_unix_ns: u64) -> String {
    format::human_duration(Duration::from_nanos(
        now_unix_ns.saturating_sub(info.started_unix_ns),
    ))
}

/// The VMs as `hafen ls --format json` shows them.
pub fn ls_json(vms: &[Listed], now_unix_ns: u64) -> Value {
    Value::Array(
        vms.iter()
            .map(|vm| match &vm.info {
                Ok(info) => json!({
                    "name": vm.name,
                    "image": info.image,
                    "state": info.state,
                    "pid": vm.pid,
                    "qemu_pid": info.qemu_pid,
                    "started_at": format::rfc3339(info.started_unix_ns),
                    "uptime_secs": now_unix_ns.saturating_sub(info.started_unix_ns) / 1_000_000_000,
                }),
                Err(why) => json!({
                    "name": vm.name,
                    "state": "not responding",
                    "pid": vm.pid,
                    "error": why,
                }),
            })
            .collect(),
    )
}

/// Asks one VM's monitor what it is, briefly.
fn ask(vm: &VmDir) -> Result<VmInfo, String> {
    let mut client = Client::connect_to(vm).map_err(|e| chain(&e))?;
    client.set_timeout(Some(LS_TIMEOUT));
    client.vm_info().map_err(|e| chain(&e))
}

/// An error and its causes on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `hafen ls`: the running VMs.
pub fn ls(json: bool) -> Result<i32, Error> {
    let vms = state::list_vms(&state::vms_dir(&state::runtime_dir()));
    let listed: Vec<Listed> = vms
        .iter()
        .map(|vm| Listed {
            name: vm.name.clone(),
            pid: vm.pid,
            info: ask(vm),
        })
        .collect();
    let now = now_unix_ns();
    let text = if json {
        format!("{}\n", ls_json(&listed, now))
    } else {
        ls_table(&listed, now)
    };
    out(std::io::stdout().lock().write_all(text.as_bytes()))?;
    Ok(0)
}

/// A VM as `hafen inspect VM` shows it.
pub fn inspect_json(info: &VmInfo, guest: Option<&GuestInfo>) -> Value {
    json!({
        "name": info.name,
        "image": info.image,
        "state": info.state,
        "monitor_pid": info.monitor_pid,
        "qemu_pid": info.qemu_pid,
        "started_at": format::rfc3339(info.started_unix_ns),
        "guest_booted_at": info.guest_boot_unix_ns.map(format::rfc3339),
        "guest": guest.map(|g| json!({
            "init_rss_bytes": g.init_rss_bytes,
            "init_cpu_ns": g.init_cpu_ns,
            "log_bytes": g.log_bytes,
            "memory_total_bytes": g.memory_total_bytes,
            "memory_available_bytes": g.memory_available_bytes,
        })),
    })
}

/// `hafen inspect VM`.
pub fn inspect(name: &str) -> Result<i32, Error> {
    let mut client = Client::connect(name)?;
    let info = client.vm_info()?;
    // The guest's own figures when it is up (and serves them).
    let guest = match client.request(Body::GetGuest) {
        Ok(Body::Guest(g)) => Some(g),
        _ => None,
    };
    let value = inspect_json(&info, guest.as_ref());
    let text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
    out(writeln!(std::io::stdout().lock(), "{text}"))?;
    Ok(0)
}

/// A handle on the monitor process, readable once it has exited; `None`
/// when it is gone already.
fn watch_monitor(vm: &VmDir) -> Result<Option<OwnedFd>, Error> {
    let wait_error = |source: std::io::Error| Error::WaitMonitor {
        vm: vm.name.clone(),
        pid: vm.pid,
        source,
    };
    let pid = i32::try_from(vm.pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| wait_error(std::io::ErrorKind::InvalidInput.into()))?;
    match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::SRCH) => Ok(None),
        Err(e) => Err(wait_error(e.into())),
    }
}

/// Waits up to `limit` for the process behind `pidfd` to exit.
fn exited_within(pidfd: &OwnedFd, limit: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::from_borrowed_fd(pidfd.as_fd(), PollFlags::IN)];
        let timeout = Timespec::try_from(left).ok();
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) | Err(rustix::io::Errno::INTR) => {}
            Ok(_) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks the monitor to power off; a monitor already gone counts as done.
fn power_off(vm: &VmDir, force: bool) -> Result<(), Error> {
    let mut client = match Client::connect_to(vm) {
        Ok(c) => c,
        Err(Error::Connect { .. }) if !std::path::Path::new(&vm.path).exists() => return Ok(()),
        Err(e) => return Err(e),
    };
    match client.request(Body::PowerOff { force }) {
        // Failed: the VM is already on its way down; the wait that
        // follows says whether it gets there.
        Ok(Body::Done)
        | Err(Error::Closed { .. })
        | Err(Error::Refused {
            code: ErrorCode::Failed,
            ..
        }) => Ok(()),
        Ok(other) => Err(client.unexpected("PowerOff", &other)),
        Err(e) => Err(e),
    }
}

/// `hafen stop VM --time S`: the power button, then up to `time` for the
/// machine to shut down, then forced off. Prints the VM's name.
pub fn stop(name: &str, time: Duration) -> Result<i32, Error> {
    shut_down(name, time)?;
    out(writeln!(std::io::stdout().lock(), "{name}"))?;
    Ok(0)
}

/// Presses the VM's power button and waits up to `time` for its monitor
/// to exit, then forces it off; quietly, for callers that started the VM
/// themselves (a build's VM). A VM that is already gone is no error.
pub fn shut_down(name: &str, time: Duration) -> Result<(), Error> {
    let vm = state::find_vm(&state::vms_dir(&state::runtime_dir()), name)?;
    let Some(pidfd) = watch_monitor(&vm)? else {
        return Ok(());
    };
    let waited = |limit| {
        exited_within(&pidfd, limit).map_err(|source| Error::WaitMonitor {
            vm: vm.name.clone(),
            pid: vm.pid,
            source,
        })
    };
    power_off(&vm, false)?;
    if !waited(time)? {
        eprintln!(
            "hafen: VM {name} did not stop within {} s; forcing it off",
            time.as_secs_f32()
        );
        power_off(&vm, true)?;
        if !waited(FORCE_GRACE)? {
            return Err(Error::Timeout {
                vm: vm.name.clone(),
                after: time + FORCE_GRACE,
            });
        }
    }
    Ok(())
}

/// `hafen kill VM`: forces the VM off at once. Prints the VM's name once
/// its monitor has exited.
pub fn kill(name: &str) -> Result<i32, Error> {
    let vm = state::find_vm(&state::vms_dir(&state::runtime_dir()), name)?;
    let Some(pidfd) = watch_monitor(&vm)? else {
        out(writeln!(std::io::stdout().lock(), "{name}"))?;
        return Ok(0);
    };
    power_off(&vm, true)?;
    let exited = exited_within(&pidfd, FORCE_GRACE).map_err(|source| Error::WaitMonitor {
        vm: vm.name.clone(),
        pid: vm.pid,
        source,
    })?;
    if !exited {
        return Err(Error::Timeout {
            vm: vm.name.clone(),
            after: FORCE_GRACE,
        });
    }
    out(writeln!(std::io::stdout().lock(), "{name}"))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn info() -> VmInfo {
        VmInfo {
            name: "web".into(),
            image: "/srv/images/web".into(),
            monitor_pid: 10,
            qemu_pid: 11,
            started_unix_ns: 1_000 * S,
            guest_boot_unix_ns: Some(1_001 * S),
            state: "running".into(),
        }
    }

    #[test]
    fn ls_shows_each_vm_and_a_silent_monitor_as_not_responding() {
        let vms = [
            Listed {
                name: "web".into(),
                pid: 10,
                info: Ok(info()),
            },
            Listed {
                name: "stuck".into(),
                pid: 20,
                info: Err("timed out".into()),
            },
        ];
        let text = ls_table(&vms, 1_180 * S);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0], ["NAME", "IMAGE", "STATE", "UPTIME", "PID"]);
        assert_eq!(
            lines[1],
            ["web", "/srv/images/web", "running", "3", "minutes", "10"]
        );
        assert_eq!(lines[2], ["stuck", "-", "not", "responding", "-", "20"]);
        let v = ls_json(&vms, 1_180 * S);
        assert_eq!(v[0]["uptime_secs"], 180);
        assert_eq!(v[0]["started_at"], "1970-01-01T00:16:40.000000000Z");
        assert_eq!(v[1]["state"], "not responding");
        assert_eq!(v[1]["error"], "timed out");
    }

    #[test]
    fn inspect_vm_gives_times_as_rfc3339() {
        let v = inspect_json(&info(), None);
        assert_eq!(v["guest_booted_at"], "1970-01-01T00:16:41.000000000Z");
        assert_eq!(v["qemu_pid"], 11);
        assert!(v["guest"].is_null());
    }

    #[test]
    fn a_process_that_exits_is_seen_through_its_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("spawn sleep");
        let vm = VmDir {
            name: "t".into(),
            pid: child.id(),
            path: std::env::temp_dir(),
        };
        let fd = watch_monitor(&vm).expect("pidfd").expect("running");
        assert!(!exited_within(&fd, Duration::ZERO).expect("poll"));
        assert!(exited_within(&fd, Duration::from_secs(30)).expect("poll"));
        child.wait().expect("reap");
    }
}
