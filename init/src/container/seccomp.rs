//! Seccomp: compiles the runtime spec's `linux.seccomp` into a classic BPF
//! program, in pure Rust (C libseccomp would break the static build), and
//! installs it.
//!
//! Program shape:
//! 1. Calls from another architecture, or through the x32 ABI (numbers with
//!    bit 30 set), cannot be matched by x86_64 numbers: they get the default
//!    action, or are killed when the default would allow them.
//! 2. A binary search over the syscall numbers that have rules.
//! 3. Per syscall, its rules in the profile's order: the first whose
//!    argument conditions all hold decides; none does, the default does.
//!
//! Conditional BPF jumps reach only 255 instructions, so every branch is a
//! conditional skip over an unconditional `ja`, whose reach is 32 bits.

use std::fmt;
use std::io;

use hafen_proto::spec::{Seccomp, SeccompArg};

use super::syscalls::SYSCALLS;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

// Offsets in struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

/// A compiled filter, ready to install.
#[derive(Debug, Clone)]
pub struct Program {
    filter: Vec<libc::sock_filter>,
}

impl Program {
    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.filter.len()
    }

    /// Whether the program is empty (never, for a compiled profile).
    pub fn is_empty(&self) -> bool {
        self.filter.is_empty()
    }
}

/// A profile that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompError(pub String);

impl fmt::Display for SeccompError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SeccompError {}

/// The number of an x86_64 system call.
pub fn syscall_number(name: &str) -> Option<u32> {
    SYSCALLS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| SYSCALLS[i].1)
}

fn action(name: &str, errno: Option<u32>, default_errno: u32) -> Result<u32, SeccompError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => RET_ALLOW,
        "SCMP_ACT_ERRNO" => RET_ERRNO | (errno.unwrap_or(default_errno) & 0xffff),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => RET_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS" => RET_KILL_PROCESS,
        "SCMP_ACT_TRAP" => RET_TRAP,
        "SCMP_ACT_LOG" => RET_LOG,
        // Without a tracer attached the kernel fails the call with ENOSYS.
        "SCMP_ACT_TRACE" => RET_TRACE | (errno.unwrap_or(0) & 0xffff),
        other => return Err(SeccompError(format!("unsupported action {other:?}"))),
    })
}

/// A jump target, resolved to an offset by [`Emitter::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Label(usize);

#[derive(Debug, Clone, Copy)]
enum Op {
    Raw(libc::sock_filter),
    Ja(Label),
    /// The label points at the next instruction.
    At(Label),
}

/// Builds a program with symbolic jumps.
#[derive(Debug, Default)]
struct Emitter {
    ops: Vec<Op>,
    labels: usize,
}

impl Emitter {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels)
    }

    fn stmt(&mut self, code: u16, k: u32) {
        self.ops.push(Op::Raw(libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        }));
    }

    fn mark(&mut self, label: Label) {
        self.ops.push(Op::At(label));
    }

    fn jump(&mut self, label: Label) {
        self.ops.push(Op::Ja(label));
    }

    /// "if (A <code> k) goto yes else goto no", as a conditional skip over two `ja`s.
    fn branch(&mut self, code: u16, k: u32, yes: Label, no: Label) {
        self.ops.push(Op::Raw(libc::sock_filter {
            code,
            jt: 1,
            jf: 0,
            k,
        }));
        self.jump(no);
        self.jump(yes);
    }

    /// Resolves labels into offsets.
    fn finish(self) -> Result<Program, SeccompError> {
        let mut positions = std::collections::HashMap::new();
        let mut pc = 0u32;
        for op in &self.ops {
            match op {
                Op::At(label) => {
                    positions.insert(*label, pc);
                }
                _ => pc += 1,
            }
        }
        if pc > 4096 {
            return Err(SeccompError(format!(
                "the profile compiles to {pc} instructions; the kernel takes at most 4096"
            )));
        }
        let mut filter = Vec::with_capacity(pc as usize);
        for op in &self.ops {
            match op {
                Op::Raw(f) => filter.push(*f),
                Op::Ja(label) => {
                    let here = filter.len() as u32;
                    let target = *positions.get(label).ok_or_else(|| {
                        SeccompError(format!("internal: unresolved label {label:?}"))
                    })?;
                    filter.push(libc::sock_filter {
                        code: JMP_JA,
                        jt: 0,
                        jf: 0,
                        k: target - here - 1,
                    });
                }
                Op::At(_) => {}
            }
        }
        Ok(Program { filter })
    }

    /// The check of one 64-bit argument condition: falls through when it
    /// holds, jumps to `fail` when not.
    fn condition(&mut self, arg: &SeccompArg, fail: Label) -> Result<(), SeccompError> {
        if arg.index > 5 {
            return Err(SeccompError(format!(
                "argument index {} is out of range 0-5",
                arg.index
            )));
        }
        let lo_off = OFF_ARGS + arg.index * 8;
        let hi_off = lo_off + 4;
        let (v_lo, v_hi) = (arg.value as u32, (arg.value >> 32) as u32);
        let ok = self.label();
        match arg.op.as_str() {
            "SCMP_CMP_EQ" | "SCMP_CMP_NE" | "SCMP_CMP_MASKED_EQ" => {
                let masked = arg.op == "SCMP_CMP_MASKED_EQ";
                let (want_lo, want_hi) = if masked {
                    (arg.value_two as u32, (arg.value_two >> 32) as u32)
                } else {
                    (v_lo, v_hi)
                };
                let (equal, differ) = if arg.op == "SCMP_CMP_NE" {
                    (fail, ok)
                } else {
                    (ok, fail)
                };
                // The high words first: a mismatch there decides.
                let low = self.label();
                self.stmt(LD_W_ABS, hi_off);
                if masked {
                    self.stmt(ALU_AND_K, v_hi);
                }
                self.branch(JMP_JEQ_K, want_hi, low, differ);
                self.mark(low);
                self.stmt(LD_W_ABS, lo_off);
                if masked {
                    self.stmt(ALU_AND_K, v_lo);
                }
                self.branch(JMP_JEQ_K, want_lo, equal, differ);
            }
            "SCMP_CMP_GT" | "SCMP_CMP_GE" | "SCMP_CMP_LT" | "SCMP_CMP_LE" => {
                // Unsigned 64-bit: the high words decide unless they are equal.
                let greater = matches!(arg.op.as_str(), "SCMP_CMP_GT" | "SCMP_CMP_GE");
                let (hi_above, hi_below) = if greater { (ok, fail) } else { (fail, ok) };
                let (not_above, same_hi) = (self.label(), self.label());
                self.stmt(LD_W_ABS, hi_off);
                self.branch(JMP_JGT_K, v_hi, hi_above, not_above);
                self.mark(not_above);
                self.branch(JMP_JEQ_K, v_hi, same_hi, hi_below);
                self.mark(same_hi);
                self.stmt(LD_W_ABS, lo_off);
                match arg.op.as_str() {
                    "SCMP_CMP_GT" => self.branch(JMP_JGT_K, v_lo, ok, fail),
                    "SCMP_CMP_GE" => self.branch(JMP_JGE_K, v_lo, ok, fail),
                    "SCMP_CMP_LT" => self.branch(JMP_JGE_K, v_lo, fail, ok),
                    _ => self.branch(JMP_JGT_K, v_lo, fail, ok),
                }
            }
            other => {
                return Err(SeccompError(format!(
                    "unsupported argument operator {other:?}"
                )))
            }
        }
        self.mark(ok);
        Ok(())
    }

    /// A balanced search over `numbers` (A holds the syscall number): small
    /// ranges compare one by one and jump to the matching block.
    fn search(&mut self, numbers: &[u32], blocks: &[Label], default: Label) {
        if numbers.len() <= 3 {
            for (nr, block) in numbers.iter().zip(blocks) {
                let next = self.label();
                self.branch(JMP_JEQ_K, *nr, *block, next);
                self.mark(next);
            }
            self.jump(default);
            return;
        }
        let mid = numbers.len() / 2;
        let (left, right) = (self.label(), self.label());
        self.branch(JMP_JGE_K, numbers[mid], right, left);
        self.mark(left);
        self.search(&numbers[..mid], &blocks[..mid], default);
        self.mark(right);
        self.search(&numbers[mid..], &blocks[mid..], default);
    }
}

/// Compiles a profile for x86_64.
pub fn compile(profile: &Seccomp) -> Result<Program, SeccompError> {
    let default_errno = profile.default_errno_ret.unwrap_or(libc::EPERM as u32);
    let default = action(
        &profile.default_action,
        profile.default_errno_ret,
        default_errno,
    )
    .map_err(|e| SeccompError(format!("defaultAction: {e}")))?;
    // A call we cannot filter by number must not slip through an allowing default.
    let foreign = if default == RET_ALLOW || default == RET_LOG {
        RET_KILL_PROCESS
    } else {
        default
    };

    // Rules per syscall number, in profile order. Names this architecture
    // lacks (32-bit calls, newer calls) are skipped, as libseccomp does.
    let mut per_nr: std::collections::BTreeMap<u32, Vec<(u32, &[SeccompArg])>> =
        std::collections::BTreeMap::new();
    for (i, rule) in profile.syscalls.iter().enumerate() {
        let act = action(&rule.action, rule.errno_ret, default_errno)
            .map_err(|e| SeccompError(format!("syscalls[{i}]: {e}")))?;
        for arg in &rule.args {
            if !matches!(
                arg.op.as_str(),
                "SCMP_CMP_EQ"
                    | "SCMP_CMP_NE"
                    | "SCMP_CMP_LT"
                    | "SCMP_CMP_LE"
                    | "SCMP_CMP_GT"
                    | "SCMP_CMP_GE"
                    | "SCMP_CMP_MASKED_EQ"
            ) || arg.index > 5
            {
                return Err(SeccompError(format!(
                    "syscalls[{i}]: unsupported argument condition {:?} on argument {}",
                    arg.op, arg.index
                )));
            }
        }
        for name in &rule.names {
            if let Some(nr) = syscall_number(name) {
                per_nr.entry(nr).or_default().push((act, &rule.args));
            }
        }
    }

    let mut e = Emitter::default();
    let default_label = e.label();
    // 1. Architecture and ABI.
    let (arch_ok, foreign_label, native, x32) = (e.label(), e.label(), e.label(), e.label());
    e.stmt(LD_W_ABS, OFF_ARCH);
    e.branch(JMP_JEQ_K, AUDIT_ARCH_X86_64, arch_ok, foreign_label);
    e.mark(foreign_label);
    e.stmt(RET_K, foreign);
    e.mark(arch_ok);
    e.stmt(LD_W_ABS, OFF_NR);
    e.branch(JMP_JGE_K, X32_SYSCALL_BIT, x32, native);
    e.mark(x32);
    e.stmt(RET_K, foreign);
    e.mark(native);

    // 2. The search.
    let numbers: Vec<u32> = per_nr.keys().copied().collect();
    let blocks: Vec<Label> = numbers.iter().map(|_| e.label()).collect();
    e.search(&numbers, &blocks, default_label);

    // 3. One block per syscall: its rules in order, then the default.
    for (nr, block) in numbers.iter().zip(&blocks) {
        e.mark(*block);
        for (act, args) in &per_nr[nr] {
            let next_rule = e.label();
            for arg in args.iter() {
                e.condition(arg, next_rule)?;
            }
            e.stmt(RET_K, *act);
            e.mark(next_rule);
        }
        e.jump(default_label);
    }
    e.mark(default_label);
    e.stmt(RET_K, default);
    e.finish()
}

/// Installs the filter on the calling thread (it is inherited across exec).
/// Needs no_new_privs or CAP_SYS_ADMIN.
pub fn apply(program: &Program) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.filter.len() as libc::c_ushort,
        filter: program.filter.as_ptr() as *mut libc::sock_filter,
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
    use hafen_proto::spec::SeccompRule;

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
