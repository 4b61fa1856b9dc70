//! `hafen-init runtime exec`: run another process in a created or running
//! container, as conmon, podman and containerd's shims call it.

use std::path::PathBuf;

use hafen_proto::spec::Process;

use super::{
    container_id, err, load, read_spec, status, wait_forwarding, write_pid_file, Globals,
    RuntimeError, Status,
};
use crate::container::{self, exec, StdioMode};
use crate::sys;

/// `exec`'s exit code when it fails itself (runc's), so a caller can tell
/// it from an exit status of the process.
pub(super) const FAILED: i32 = 255;

/// `exec`'s options.
#[derive(Debug, Default)]
struct ExecArgs {
    process: Option<PathBuf>,
    detach: bool,
    pid_file: Option<PathBuf>,
    console_socket: Option<PathBuf>,
    tty: bool,
    cwd: Option<String>,
    env: Vec<String>,
    user: Option<String>,
    caps: Vec<String>,
    additional_gids: Vec<u32>,
    no_new_privs: bool,
    preserve_fds: u32,
    /// The id, then the command and its arguments.
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<ExecArgs, RuntimeError> {
    let mut out = ExecArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // Once the id is known, everything else is the command.
        if !out.positional.is_empty() {
            out.positional.push(arg.clone());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| err(format!("{name} needs a value")))
        };
        match name {
            "--process" | "-p" => out.process = Some(PathBuf::from(value()?)),
            "--detach" | "-d" => out.detach = true,
            "--pid-file" => out.pid_file = Some(PathBuf::from(value()?)),
            "--console-socket" => out.console_socket = Some(PathBuf::from(value()?)),
            "--tty" | "-t" => out.tty = true,
            "--cwd" => out.cwd = Some(value()?),
            "--env" | "-e" => out.env.push(value()?),
            "--user" | "-u" => out.user = Some(value()?),
            "--cap" | "-c" => out.caps.push(value()?),
            "--additional-gids" | "-g" => {
                let v = value()?;
                out.additional_gids.push(
                    v.parse()
                        .map_err(|_| err(format!("--additional-gids {v:?} is not a number")))?,
                );
            }
            "--no-new-privs" => out.no_new_privs = true,
            "--preserve-fds" => {
                let v = value()?;
                out.preserve_fds = v
                    .parse()
                    .map_err(|_| err(format!("--preserve-fds {v:?} is not a number")))?;
            }
            "--" => {}
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(err(format!("exec: unknown option {s:?}")))
            }
            _ => out.positional.push(arg.clone()),
        }
    }
    Ok(out)
}

/// Builds the process to run: `--process`'s, or the container's own with
/// the command and the flags applied (runc's rules).
fn process_for(args: &ExecArgs, container: Option<&Process>) -> Result<Process, RuntimeError> {
    let mut process = match &args.process {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
            serde_json::from_str(&text).map_err(|e| {
                err(format!(
                    "{} is not an OCI process object: {e}",
                    path.display()
                ))
            })?
        }
        None => {
            let command = args.positional.get(1..).unwrap_or_default();
            if command.is_empty() {
                return Err(err("exec needs a command (or --process FILE)"));
            }
            let mut p = container.cloned().unwrap_or_default();
            p.args = command.to_vec();
            p.terminal = false;
            p.console_size = None;
            p
        }
    };
    if args.tty {
        process.terminal = true;
    }
    if let Some(cwd) = &args.cwd {
        process.cwd = cwd.clone();
    }
    for pair in &args.env {
        let key = pair.split_once('=').map_or(pair.as_str(), |(k, _)| k);
        process
            .env
            .retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        process.env.push(pair.clone());
    }
    if let Some(user) = &args.user {
        let number = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| err(format!("--user {user:?}: use UID[:GID] with numbers")))
        };
        // Without a GID the process keeps the container's (runc's rule).
        let (uid, gid) = match user.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (user.as_str(), None),
        };
        process.user.uid = number(uid)?;
        if let Some(gid) = gid {
            process.user.gid = number(gid)?;
        }
    }
    process
        .user
        .additional_gids
        .extend_from_slice(&args.additional_gids);
    // A process without capability sets keeps all of ours: nothing to add.
    if let Some(caps) = process.capabilities.as_mut() {
        for cap in &args.caps {
            // Ambient too, so a non-root user keeps it across exec; the
            // kernel takes an ambient cap only when it is also inheritable.
            for set in [
                &mut caps.bounding,
                &mut caps.effective,
                &mut caps.permitted,
                &mut caps.ambient,
            ] {
                if !set.contains(cap) {
                    set.push(cap.clone());
                }
            }
        }
    }
    if args.no_new_privs {
        process.no_new_privileges = true;
    }
    Ok(process)
}

/// Runs `exec`; returns the exit code (the process's, without `--detach`).
pub(super) fn main(globals: &Globals, args: &[String]) -> Result<i32, RuntimeError> {
    let args = parse(args)?;
    let id = container_id(&args.positional)?;
    let saved = load(globals, id)?;
    if status(&saved) == Status::Stopped {
        return Err(err(format!(
            "container {id:?} is stopped: nothing to exec into"
        )));
    }
    let spec = read_spec(std::path::Path::new(&saved.bundle))?;
    let process = process_for(&args, spec.process.as_ref())?;
    let seccomp = spec
        .linux
        .as_ref()
        .and_then(|l| l.seccomp.as_ref())
        .map(container::seccomp::Filter::Profile);
    let target = exec::Target {
        pid: saved.pid,
        cgroup: saved.cgroup.as_deref(),
    };
    let opts = exec::ExecOptions {
        stdio: StdioMode::Inherit,
        console: args.console_socket.clone().map(exec::ConsoleTarget::Path),
        preserve_fds: args.preserve_fds,
    };
    // Block the signals we forward before the process exists, so none is lost.
    let signals = if args.detach {
        None
    } else {
        Some(super::block_forwarded()?)
    };
    let spawned = match container::exec::exec(target, &process, seccomp, &opts) {
        Ok(s) => s,
        Err(e) => {
            while let Ok(Some(_)) = sys::wait_any() {}
            return Err(err(format!("container {id}: {e}")));
        }
    };
    if let Some(path) = &args.pid_file {
        write_pid_file(path, spawned.pid)?;
    }
    match signals {
        None => Ok(0),
        Some(signals) => Ok(wait_forwarding(&signals, spawned.pid)?.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_stop_at_the_id_and_the_rest_is_the_command() {
        let parsed = parse(&strings(&[
            "--pid-file=/p",
            "-e",
            "A=1",
            "--tty",
            "--cwd",
            "/tmp",
            "c1",
            "sh",
            "-c",
            "echo -e hi",
        ]))
        .expect("parses");
        assert_eq!(parsed.pid_file, Some(PathBuf::from("/p")));
        assert!(parsed.tty);
        assert_eq!(parsed.positional, ["c1", "sh", "-c", "echo -e hi"]);
        assert!(parse(&strings(&["--bogus", "c1", "true"])).is_err());
    }

    #[test]
    fn the_containers_process_is_the_template_and_flags_override_it() {
        let base = Process {
            args: vec!["init".into()],
            env: vec!["PATH=/bin".into(), "A=old".into()],
            cwd: "/".into(),
            terminal: true,
            user: hafen_proto::spec::User {
                uid: 5,
                gid: 6,
                ..Default::default()
            },
            capabilities: Some(hafen_proto::spec::Capabilities {
                effective: vec!["CAP_KILL".into()],
                ..Default::default()
            }),
            ..Process::default()
        };
        let parsed = parse(&strings(&[
            "-e",
            "A=new",
            "-u",
            "1000:1001",
            "--cap",
            "CAP_NET_RAW",
            "c1",
            "id",
        ]))
        .expect("parses");
        let p = process_for(&parsed, Some(&base)).expect("process");
        assert_eq!(p.args, ["id"]);
        assert_eq!(p.env, ["PATH=/bin", "A=new"]);
        assert_eq!((p.user.uid, p.user.gid), (1000, 1001));
        assert!(!p.terminal, "a terminal only with --tty");
        let caps = p.capabilities.expect("caps");
        assert_eq!(caps.effective, ["CAP_KILL", "CAP_NET_RAW"]);
        assert_eq!(caps.ambient, ["CAP_NET_RAW"]);
        let uid_only = parse(&strings(&[
            "-u",
            "1000",
            "--cap",
            "CAP_NET_RAW",
            "c1",
            "id",
        ]))
        .expect("parses");
        let all_caps = Process {
            capabilities: None,
            ..base.clone()
        };
        let p = process_for(&uid_only, Some(&all_caps)).expect("process");
        assert_eq!(
            (p.user.uid, p.user.gid),
            (1000, 6),
            "the container's gid stays"
        );
        assert!(
            p.capabilities.is_none(),
            "all caps already: --cap adds none"
        );
        let none = parse(&strings(&["c1"])).expect("parses");
        assert!(process_for(&none, Some(&base)).is_err(), "no command");
    }
}
