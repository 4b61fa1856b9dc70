//! Installs a compiled seccomp filter ([`hafen_proto::seccomp`] compiles
//! the runtime spec's `linux.seccomp`).

use std::io;

use hafen_proto::spec::Seccomp;

pub use hafen_proto::seccomp::{compile, syscall_number, Program, SeccompError, PROGRAM_FILE};

/// A container's seccomp filter: the spec's profile, compiled when the
/// process starts, or the program `hafen build` compiled from it.
#[derive(Debug, Clone, Copy)]
pub enum Filter<'a> {
    /// `linux.seccomp`, still to compile.
    Profile(&'a Seccomp),
    /// Compiled already.
    Compiled(&'a Program),
}

impl Filter<'_> {
    /// The program, compiled if need be.
    pub fn program(self) -> Result<Program, SeccompError> {
        match self {
            Filter::Profile(profile) => compile(profile),
            Filter::Compiled(program) => Ok(program.clone()),
        }
    }
}

/// Installs the filter on the calling thread (it is inherited across exec).
/// Needs no_new_privs or CAP_SYS_ADMIN.
pub fn apply(program: &Program) -> io::Result<()> {
    let filter: Vec<libc::sock_filter> = program
        .instructions()
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prog points at a valid filter array that outlives the call;
    // the kernel copies it.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hafen_proto::spec::{Seccomp, SeccompArg, SeccompRule};

    use super::*;

    fn rule(
        names: &[&str],
        action: &str,
        errno: Option<u32>,
        args: Vec<SeccompArg>,
    ) -> SeccompRule {
        SeccompRule {
            names: names.iter().map(|s| s.to_string()).collect(),
            action: action.into(),
            errno_ret: errno,
            args,
        }
    }

    fn arg(index: u32, value: u64, value_two: u64, op: &str) -> SeccompArg {
        SeccompArg {
            index,
            value,
            value_two,
            op: op.into(),
        }
    }

    /// Runs `f` in a forked child under `profile`; returns the child's wait status.
    fn under(profile: &Seccomp, f: fn() -> i32) -> i32 {
        let program = compile(profile).expect("compiles");
        // SAFETY: the test harness is multi-threaded, but the child only
        // makes raw system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            if apply(&program).is_err() {
                // SAFETY: _exit never returns.
                unsafe { libc::_exit(99) };
            }
            let code = f();
            // SAFETY: _exit never returns.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: status is a valid out-pointer for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    }

    fn errno() -> i32 {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    fn profile(default: &str, rules: Vec<SeccompRule>) -> Seccomp {
        Seccomp {
            default_action: default.into(),
            syscalls: rules,
            ..Seccomp::default()
        }
    }

    #[test]
    fn names_resolve_and_unknown_ones_are_skipped() {
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("openat2"), Some(437));
        assert_eq!(syscall_number("no_such_call"), None);
        let p = profile(
            "SCMP_ACT_ALLOW",
            vec![rule(
                &["no_such_call", "socketcall"],
                "SCMP_ACT_ERRNO",
                None,
                vec![],
            )],
        );
        assert!(compile(&p).is_ok());
    }

    #[test]
    fn unknown_actions_and_operators_are_errors_naming_the_rule() {
        let bad = profile(
            "SCMP_ACT_ALLOW",
            vec![rule(&["read"], "SCMP_ACT_MAYBE", None, vec![])],
        );
        assert!(compile(&bad)
            .expect_err("bad action")
            .to_string()
            .contains("syscalls[0]"));
        let bad = profile(
            "SCMP_ACT_ALLOW",
            vec![rule(
                &["read"],
                "SCMP_ACT_ERRNO",
                None,
                vec![arg(0, 1, 0, "SCMP_CMP_ALMOST")],
            )],
        );
        assert!(compile(&bad)
            .expect_err("bad op")
            .to_string()
            .contains("SCMP_CMP_ALMOST"));
        assert!(compile(&profile("NOPE", vec![]))
            .expect_err("bad default")
            .to_string()
            .contains("defaultAction"));
    }

    #[test]
    fn errno_allow_and_kill_take_effect() {
        let p = profile(
            "SCMP_ACT_ALLOW",
            vec![rule(
                &["getppid"],
                "SCMP_ACT_ERRNO",
                Some(libc::EXDEV as u32),
                vec![],
            )],
        );
        let status = under(&p, || {
            // SAFETY: getppid and syscall take no pointers here.
            let ret = unsafe { libc::syscall(libc::SYS_getppid) };
            if ret == -1 && errno() == libc::EXDEV {
                7
            } else {
                1
            }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
            "status {status:#x}"
        );
        let p = profile(
            "SCMP_ACT_ALLOW",
            vec![rule(&["getppid"], "SCMP_ACT_KILL_PROCESS", None, vec![])],
        );
        let status = under(&p, || {
            // SAFETY: as above.
            unsafe { libc::syscall(libc::SYS_getppid) };
            0
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "status {status:#x}"
        );
    }

    #[test]
    fn argument_conditions_compare_64_bits() {
        // personality(0xffffffff) only queries; anything else is refused.
        let p = profile(
            "SCMP_ACT_ALLOW",
            vec![
                rule(
                    &["personality"],
                    "SCMP_ACT_ALLOW",
                    None,
                    vec![arg(0, 0xffff_ffff, 0, "SCMP_CMP_EQ")],
                ),
                rule(
                    &["personality"],
                    "SCMP_ACT_ERRNO",
                    Some(libc::EACCES as u32),
                    vec![],
                ),
                rule(
                    &["getpriority"],
                    "SCMP_ACT_ERRNO",
                    Some(libc::ENOTTY as u32),
                    vec![arg(1, 100, 0, "SCMP_CMP_GT")],
                ),
                rule(
                    &["dup"],
                    "SCMP_ACT_ERRNO",
                    Some(libc::ENOLINK as u32),
                    vec![arg(0, 0xff00, 0x0100, "SCMP_CMP_MASKED_EQ")],
                ),
            ],
        );
        let status = under(&p, || {
            // SAFETY: plain integer syscalls.
            let query = unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) };
            // SAFETY: as above.
            let set = unsafe { libc::syscall(libc::SYS_personality, 0u64) };
            let set_errno = errno();
            // SAFETY: as above.
            let low = unsafe { libc::syscall(libc::SYS_getpriority, 0u64, 5u64) };
            // SAFETY: as above.
            let high = unsafe { libc::syscall(libc::SYS_getpriority, 0u64, 1u64 << 33) };
            let high_errno = errno();
            // SAFETY: as above.
            let masked = unsafe { libc::syscall(libc::SYS_dup, 0x01aau64) };
            let masked_errno = errno();
            // SAFETY: as above.
            let unmasked = unsafe { libc::syscall(libc::SYS_dup, 0u64) };
            let low_errno = errno();
            let _ = low_errno;
            let low_ok = low != -1 || low_errno != libc::ENOTTY;
            let ok = query != -1 && set == -1 && set_errno == libc::EACCES && low_ok;
            let ok = ok
                && high == -1
                && high_errno == libc::ENOTTY
                && masked == -1
                && masked_errno == libc::ENOLINK
                && unmasked >= 0;
            if ok {
                7
            } else {
                1
            }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
            "status {status:#x}"
        );
    }

    #[test]
    fn x32_calls_do_not_bypass_an_allow_list() {
        let p = profile(
            "SCMP_ACT_ERRNO",
            vec![rule(
                &["exit", "exit_group", "getpid"],
                "SCMP_ACT_ALLOW",
                None,
                vec![],
            )],
        );
        let status = under(&p, || {
            // getpid through the x32 ABI: number 39 with bit 30 set.
            // SAFETY: plain integer syscall.
            let ret = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
            if ret == -1 && errno() == libc::EPERM {
                7
            } else {
                1
            }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
            "x32 gets the default action: {status:#x}"
        );
        let denied = profile(
            "SCMP_ACT_ALLOW",
            vec![rule(&["getpid"], "SCMP_ACT_ERRNO", None, vec![])],
        );
        let status = under(&denied, || {
            // SAFETY: plain integer syscall.
            unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
            0
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "x32 under an allowing default is killed: {status:#x}"
        );
    }
}
