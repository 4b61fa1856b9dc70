//! Seccomp: compiles the runtime spec's `linux.seccomp` into a classic BPF
//! program, in pure Rust (C libseccomp would break the static build).
//! `hafen build` compiles each container's profile into its bundle
//! ([`PROGRAM_FILE`]), so PID 1 does not at boot; hafen-init installs it.
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

use crate::spec::{Seccomp, SeccompArg};
use crate::syscalls::SYSCALLS;

/// The file in a bundle directory holding its compiled filter
/// ([`Program::to_bytes`]), beside the profile in `config.json`.
pub const PROGRAM_FILE: &str = "seccomp.bpf";

/// The most instructions the kernel takes (`BPF_MAXINSNS`).
const MAX_INSNS: usize = 4096;
/// `EPERM`, the errno of `SCMP_ACT_ERRNO` without one.
const EPERM: u32 = 1;

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

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Skip when true.
    pub jt: u8,
    /// Skip when false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

/// A compiled filter, ready to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    filter: Vec<Insn>,
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

    /// Its instructions.
    pub fn instructions(&self) -> &[Insn] {
        &self.filter
    }

    /// The instructions as the kernel lays them out (little-endian x86_64),
    /// 8 bytes each: what [`PROGRAM_FILE`] holds.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.filter.len() * 8);
        for i in &self.filter {
            out.extend_from_slice(&i.code.to_le_bytes());
            out.extend_from_slice(&[i.jt, i.jf]);
            out.extend_from_slice(&i.k.to_le_bytes());
        }
        out
    }

    /// Reads [`Program::to_bytes`]'s form back; refuses a length that is
    /// not whole instructions, an empty program and one over the kernel's
    /// limit. (The kernel checks the rest when it is installed.)
    pub fn from_bytes(bytes: &[u8]) -> Result<Program, SeccompError> {
        if bytes.is_empty() || bytes.len() % 8 != 0 || bytes.len() / 8 > MAX_INSNS {
            return Err(SeccompError(format!(
                "a compiled filter is 1 to {MAX_INSNS} instructions of 8 bytes; this one has {} bytes",
                bytes.len()
            )));
        }
        let filter = bytes
            .chunks_exact(8)
            .map(|c| Insn {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(Program { filter })
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
    Raw(Insn),
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
        self.ops.push(Op::Raw(Insn {
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
        self.ops.push(Op::Raw(Insn {
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
        if pc as usize > MAX_INSNS {
            return Err(SeccompError(format!(
                "the profile compiles to {pc} instructions; the kernel takes at most {MAX_INSNS}"
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
                    filter.push(Insn {
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
    let default_errno = profile.default_errno_ret.unwrap_or(EPERM);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SeccompRule;

    #[test]
    fn a_program_survives_its_file_form() {
        let profile = Seccomp {
            default_action: "SCMP_ACT_ERRNO".into(),
            syscalls: vec![SeccompRule {
                names: vec!["read".into(), "write".into()],
                action: "SCMP_ACT_ALLOW".into(),
                errno_ret: None,
                args: vec![],
            }],
            ..Seccomp::default()
        };
        let program = compile(&profile).expect("compiles");
        let bytes = program.to_bytes();
        assert_eq!(bytes.len(), program.len() * 8);
        assert_eq!(Program::from_bytes(&bytes), Ok(program));
        for bad in [&[][..], &bytes[..bytes.len() - 1], &vec![0u8; 8 * 4097][..]] {
            assert!(Program::from_bytes(bad).is_err(), "{} bytes", bad.len());
        }
    }
}
