//! OCI lifecycle hooks: each one a program that gets the container's state
//! JSON on stdin, runs with exactly the environment the spec gives it, and
//! is killed when it outlives its timeout.
//!
//! Where each kind runs (the spec's rules): `prestart` and `createRuntime`
//! in the runtime's namespaces once the container's exist, `createContainer`
//! inside the container's namespaces before pivot_root (so its path is
//! still the host's), `startContainer` inside the container just before the
//! process execs, `poststart` and `poststop` in the runtime's namespaces.
//! A failure of the first four fails the operation; of the last two, it is
//! only a warning.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hafen_proto::spec::{Hook, Hooks, Spec};
use serde::Serialize;

/// Which hooks: the spec's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `prestart` (deprecated, runs with `createRuntime`).
    Prestart,
    /// `createRuntime`.
    CreateRuntime,
    /// `createContainer`.
    CreateContainer,
    /// `startContainer`.
    StartContainer,
    /// `poststart`.
    Poststart,
    /// `poststop`.
    Poststop,
}

impl Kind {
    /// The spec's name of this kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prestart => "prestart",
            Kind::CreateRuntime => "createRuntime",
            Kind::CreateContainer => "createContainer",
            Kind::StartContainer => "startContainer",
            Kind::Poststart => "poststart",
            Kind::Poststop => "poststop",
        }
    }

    /// The container status the hooks of this kind are shown.
    fn status(self) -> &'static str {
        match self {
            Kind::Prestart | Kind::CreateRuntime | Kind::CreateContainer => "creating",
            Kind::StartContainer => "created",
            Kind::Poststart => "running",
            Kind::Poststop => "stopped",
        }
    }

    /// The spec's hooks of this kind.
    pub fn of(self, spec: &Spec) -> &[Hook] {
        self.of_hooks(spec.hooks.as_ref())
    }

    /// Of `hooks`, those of this kind.
    pub fn of_hooks(self, hooks: Option<&Hooks>) -> &[Hook] {
        let Some(h) = hooks else {
            return &[];
        };
        match self {
            Kind::Prestart => &h.prestart,
            Kind::CreateRuntime => &h.create_runtime,
            Kind::CreateContainer => &h.create_container,
            Kind::StartContainer => &h.start_container,
            Kind::Poststart => &h.poststart,
            Kind::Poststop => &h.poststop,
        }
    }
}

/// A hook failed.
#[derive(Debug)]
pub struct HookError {
    /// Its kind.
    pub kind: Kind,
    /// Its position among the hooks of its kind.
    pub index: usize,
    /// Its program.
    pub path: String,
    /// What went wrong.
    pub cause: HookFailure,
}

/// How a hook failed.
#[derive(Debug)]
pub enum HookFailure {
    /// It could not be started.
    Spawn(io::Error),
    /// It exited with a non-zero status, or was killed.
    Status(std::process::ExitStatus),
    /// It ran longer than its timeout and was killed.
    Timeout(u64),
    /// Waiting for it failed.
    Wait(io::Error),
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} hook {} ({}): ",
            self.kind.name(),
            self.index,
            self.path
        )?;
        match &self.cause {
            HookFailure::Spawn(e) => write!(f, "cannot run it: {e}"),
            HookFailure::Status(status) => write!(f, "it failed: {status}"),
            HookFailure::Timeout(secs) => write!(f, "killed after its timeout of {secs} s"),
            HookFailure::Wait(e) => write!(f, "cannot wait for it: {e}"),
        }
    }
}

impl std::error::Error for HookError {}

/// What the OCI state a hook reads on stdin says about its container.
#[derive(Debug, Clone, Copy)]
pub struct Container<'a> {
    /// The spec version of its bundle.
    pub oci_version: &'a str,
    /// Its id.
    pub id: &'a str,
    /// Its bundle directory.
    pub bundle: &'a str,
    /// The spec's annotations.
    pub annotations: &'a BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct State<'a> {
    oci_version: &'a str,
    id: &'a str,
    status: &'a str,
    pid: i32,
    bundle: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

impl Container<'_> {
    /// The state JSON for hooks of `kind`; `pid` is 0 once the process is gone.
    pub fn state(&self, pid: i32, kind: Kind) -> Vec<u8> {
        let state = State {
            oci_version: self.oci_version,
            id: self.id,
            status: kind.status(),
            pid,
            bundle: self.bundle,
            annotations: self.annotations,
        };
        // Serialising strings and integers cannot fail.
        serde_json::to_vec(&state).unwrap_or_default()
    }
}

/// Runs every hook of `kind` in order, stopping at the first failure.
pub fn run(kind: Kind, hooks: &[Hook], state: &[u8]) -> Result<(), HookError> {
    for (index, hook) in hooks.iter().enumerate() {
        run_one(hook, state).map_err(|cause| HookError {
            kind,
            index,
            path: hook.path.clone(),
            cause,
        })?;
    }
    Ok(())
}

fn run_one(hook: &Hook, state: &[u8]) -> Result<(), HookFailure> {
    let mut cmd = Command::new(&hook.path);
    if let Some((argv0, rest)) = hook.args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for pair in &hook.env {
        match pair.split_once('=') {
            Some((key, value)) => cmd.env(key, value),
            None => cmd.env(pair, ""),
        };
    }
    // The hook's output goes where ours goes; stdin is the state. Its own
    // process group lets a timeout kill whatever it started, too.
    let mut child = cmd
        .stdin(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(HookFailure::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state, or exits first, is its own
        // business: the write error (EPIPE) is not a failure of the hook.
        let _ = stdin.write_all(state);
    }
    let timeout = hook.timeout.filter(|t| *t > 0).map(|t| t as u64);
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(HookFailure::Status(status)),
            Ok(None) => {}
            Err(e) => return Err(HookFailure::Wait(e)),
        }
        if let (Some(deadline), Some(secs)) = (deadline, timeout) {
            if Instant::now() >= deadline {
                let _ = crate::sys::kill(-(child.id() as i32), libc::SIGKILL);
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookFailure::Timeout(secs));
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(script: &str, timeout: Option<i64>) -> Hook {
        Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["WHO=hook".into()],
            timeout,
        }
    }

    #[test]
    fn a_hook_reads_the_state_and_sees_only_its_own_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let script = format!(
            "cat > {0}; echo \" $WHO ${{HOME:-nohome}}\" >> {0}",
            out.display()
        );
        let container = Container {
            oci_version: "1.0.2",
            id: "c1",
            bundle: "/b",
            annotations: &BTreeMap::new(),
        };
        let state = container.state(42, Kind::CreateRuntime);
        run(Kind::CreateRuntime, &[hook(&script, None)], &state).expect("hook runs");
        let got = std::fs::read_to_string(&out).expect("output");
        assert!(
            got.starts_with(
                r#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b"}"#
            ),
            "{got}"
        );
        assert!(got.ends_with(" hook nohome\n"), "{got}");
    }

    #[test]
    fn failures_and_timeouts_name_the_hook() {
        let err = run(
            Kind::Prestart,
            &[hook("true", None), hook("exit 3", None)],
            b"{}",
        )
        .expect_err("fails");
        assert_eq!(err.index, 1);
        assert!(
            err.to_string()
                .starts_with("prestart hook 1 (/bin/sh): it failed"),
            "{err}"
        );
        let started = Instant::now();
        let err =
            run(Kind::CreateRuntime, &[hook("sleep 30", Some(1))], b"{}").expect_err("times out");
        assert!(matches!(err.cause, HookFailure::Timeout(1)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let missing = Hook {
            path: "/nonexistent/hook".into(),
            ..Hook::default()
        };
        let err = run(Kind::Poststop, &[missing], b"{}").expect_err("missing");
        assert!(matches!(err.cause, HookFailure::Spawn(_)), "{err}");
    }
}
