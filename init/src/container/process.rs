//! The process a container runs, and each process exec'd into it later:
//! its argv and environment, working directory, limits, identity,
//! capabilities, no_new_privs and seccomp filter, prepared in the parent
//! ([`ProcessPlan::new`]) and applied in the child between clone and exec
//! ([`ProcessPlan::become_it`], [`ProcessPlan::exec`]).

use std::ffi::CString;

use hafen_proto::spec::Process;
use rustix::fs::FileType;

use super::caps::{self, CapSet, Caps};
use super::child::{fail_io, Failure};
use super::{cstring, seccomp, spec_error, StartError, Step};
use crate::sys;

/// Everything about the process that can be prepared before clone.
#[derive(Debug)]
pub(super) struct ProcessPlan {
    rlimits: Vec<(u32, u64, u64)>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    caps: Option<Caps>,
    last_cap: u32,
    no_new_privs: bool,
    seccomp: Option<seccomp::Program>,
    exec_candidates: Vec<CString>,
    /// `args[0]` as given, for messages.
    pub program: String,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// A pseudo-terminal, made inside the container, is its stdio.
    pub terminal: bool,
    /// The terminal's rows and columns, when given.
    pub console_size: Option<(u16, u16)>,
    /// Descriptors above stdio the process keeps (3 up to 3 + N - 1); every
    /// other one the caller left open is closed at exec.
    pub preserve_fds: u32,
}

impl ProcessPlan {
    /// Checks `process` and prepares it; `seccomp` is the container's filter.
    pub fn new(
        process: &Process,
        seccomp: Option<seccomp::Filter<'_>>,
    ) -> Result<ProcessPlan, StartError> {
        if process.args.is_empty() {
            return Err(spec_error("process.args is empty"));
        }
        if !process.cwd.starts_with('/') {
            return Err(spec_error(format!(
                "process.cwd {:?} is not absolute",
                process.cwd
            )));
        }
        let rlimits = process
            .rlimits
            .iter()
            .map(|r| {
                hafen_proto::rlimit::parse(&r.kind)
                    .map(|n| (n, r.soft, r.hard))
                    .ok_or_else(|| spec_error(format!("unknown rlimit {:?}", r.kind)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let caps = match &process.capabilities {
            None => None,
            Some(c) => {
                let set = |names: &[String], which: &str| {
                    CapSet::from_names(names).map_err(|n| {
                        spec_error(format!(
                            "unknown capability {n:?} in process.capabilities.{which}"
                        ))
                    })
                };
                Some(Caps {
                    bounding: set(&c.bounding, "bounding")?,
                    effective: set(&c.effective, "effective")?,
                    permitted: set(&c.permitted, "permitted")?,
                    inheritable: set(&c.inheritable, "inheritable")?,
                    ambient: set(&c.ambient, "ambient")?,
                })
            }
        };
        let seccomp = match seccomp {
            Some(filter) => Some(
                filter
                    .program()
                    .map_err(|e| spec_error(format!("linux.seccomp: {e}")))?,
            ),
            None => None,
        };
        let program = process.args[0].clone();
        let path_var = process
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let exec_candidates = if program.contains('/') {
            vec![cstring("process.args[0]", &program)?]
        } else {
            path_var
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cstring("PATH", format!("{}/{program}", d.trim_end_matches('/'))))
                .collect::<Result<_, _>>()?
        };
        Ok(ProcessPlan {
            rlimits,
            cwd: cstring("process.cwd", &process.cwd)?,
            uid: process.user.uid,
            gid: process.user.gid,
            groups: process.user.additional_gids.clone(),
            caps,
            last_cap: caps::last_cap(),
            no_new_privs: process.no_new_privileges,
            seccomp,
            exec_candidates,
            program,
            argv: process
                .args
                .iter()
                .map(|a| cstring("process.args", a))
                .collect::<Result<_, _>>()?,
            envp: process
                .env
                .iter()
                .map(|e| cstring("process.env", e))
                .collect::<Result<_, _>>()?,
            terminal: process.terminal,
            console_size: process
                .console_size
                .as_ref()
                .map(|s| (s.height as u16, s.width as u16)),
            preserve_fds: 0,
        })
    }

    /// The NULL-terminated argv and envp arrays exec takes; built before
    /// clone, they point into `self`.
    pub fn exec_arrays(&self) -> (Vec<*const libc::c_char>, Vec<*const libc::c_char>) {
        let list = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain([std::ptr::null()])
                .collect()
        };
        (list(&self.argv), list(&self.envp))
    }

    /// In the child: limits, working directory, then privileges, ending
    /// with the program checked, so a command that cannot run is reported
    /// before the process is reported ready.
    pub fn become_it(&self) -> Result<(), Failure> {
        // 1. Only stdio and the descriptors asked for reach the program, not
        //    what our caller left open (a directory of the host, say); before
        //    a seccomp filter could refuse the call. Then resource limits and
        //    working directory.
        sys::cloexec_from(self.preserve_fds.saturating_add(3))
            .map_err(fail_io(Step::Stdio, "descriptors above 2"))?;
        for &(resource, soft, hard) in &self.rlimits {
            sys::setrlimit(resource, soft, hard).map_err(fail_io(
                Step::Rlimit,
                hafen_proto::rlimit::NAMES[resource as usize],
            ))?;
        }
        rustix::process::chdir(self.cwd.as_c_str()).map_err(|e| {
            (
                Step::Cwd,
                self.cwd.to_string_lossy().into_owned(),
                e.raw_os_error(),
            )
        })?;

        // 2. Privileges: bounding set (needs CAP_SETPCAP, so first), identity
        //    (keeping permitted caps across setuid), then the capability sets.
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it
        // while we still have it (the default profile allows what follows).
        if !self.no_new_privs {
            if let Some(program) = &self.seccomp {
                seccomp::apply(program).map_err(fail_io(Step::Seccomp, "filter"))?;
            }
        }
        if let Some(c) = &self.caps {
            caps::drop_bounding(c.bounding, self.last_cap)
                .map_err(fail_io(Step::Bounding, "bounding set"))?;
            caps::keep_caps_on_setuid().map_err(fail_io(Step::Bounding, "keepcaps"))?;
        }
        sys::set_identity(self.uid, self.gid, &self.groups).map_err(|e| {
            (
                Step::Identity,
                format!("{}:{}", self.uid, self.gid),
                e.raw_os_error().unwrap_or(libc::EPERM),
            )
        })?;
        if let Some(c) = &self.caps {
            caps::set(c).map_err(fail_io(Step::Capabilities, "capability sets"))?;
        }
        if self.no_new_privs {
            caps::set_no_new_privs().map_err(fail_io(Step::NoNewPrivs, "prctl"))?;
            // As late as possible, so set-up calls need not be allowed.
            if let Some(program) = &self.seccomp {
                seccomp::apply(program).map_err(fail_io(Step::Seccomp, "filter"))?;
            }
        }

        // 3. The program must exist and be executable now, so `create` (not
        //    only `start`) reports a command that cannot run, as runc does.
        self.check_executable()
    }

    /// Finds the first PATH candidate that exists, as exec will, and checks
    /// it is a file we may execute.
    fn check_executable(&self) -> Result<(), Failure> {
        for candidate in &self.exec_candidates {
            let st = match rustix::fs::stat(candidate.as_c_str()) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => continue,
                Err(e) => return Err((Step::Exec, self.program.clone(), e.raw_os_error())),
            };
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                return Err((Step::Exec, self.program.clone(), libc::EACCES));
            }
            return rustix::fs::access(candidate.as_c_str(), rustix::fs::Access::EXEC_OK)
                .map_err(|e| (Step::Exec, self.program.clone(), e.raw_os_error()));
        }
        Err((Step::Exec, self.program.clone(), libc::ENOENT))
    }

    /// Execs the program, trying each PATH candidate like execvp does.
    /// Returns only on failure.
    pub fn exec(&self, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> Failure {
        let mut first_error = libc::ENOENT;
        for candidate in &self.exec_candidates {
            let err = sys::execve(candidate, argv, envp)
                .raw_os_error()
                .unwrap_or(libc::ENOENT);
            if err != libc::ENOENT && err != libc::ENOTDIR && first_error == libc::ENOENT {
                first_error = err;
            }
        }
        (Step::Exec, self.program.clone(), first_error)
    }
}
