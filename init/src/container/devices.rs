//! The cgroup v2 device filter: `linux.resources.devices` compiled to an
//! eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE` and attached to the
//! container's cgroup, so even a process that may call mknod cannot open a
//! device the rules do not allow.
//!
//! The rules are tried last first (the last matching rule wins, as in the
//! OCI spec); no match denies.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use hafen_proto::spec::{Device, DeviceRule};

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One eBPF instruction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0xf),
        off,
        imm,
    }
}

// Opcodes.
const LDX_MEM_W: u8 = 0x61;
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU64_MOV_K: u8 = 0xb7;
const JMP_JNE_K: u8 = 0x55;
const JMP_JSET_K: u8 = 0x45;
const EXIT: u8 = 0x95;

/// A compiled filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    insns: Vec<Insn>,
}

/// Device rules every container with a device policy gets after the spec's
/// own (so they win, as the last matching rule decides): the nodes the
/// runtime creates in every container's /dev and a terminal needs.
/// (type, major, minor, access); -1 is any.
const DEFAULT_RULES: &[(&str, i64, i64, &str)] = &[
    ("c", 1, 3, "rwm"),    // null
    ("c", 1, 5, "rwm"),    // zero
    ("c", 1, 7, "rwm"),    // full
    ("c", 1, 8, "rwm"),    // random
    ("c", 1, 9, "rwm"),    // urandom
    ("c", 5, 0, "rwm"),    // tty
    ("c", 5, 1, "rwm"),    // console
    ("c", 5, 2, "rwm"),    // ptmx
    ("c", 136, -1, "rwm"), // /dev/pts/*
];

/// The spec's rules followed by [`DEFAULT_RULES`] and, for each of the
/// spec's `linux.devices` nodes, the right to create it (`m`): the runtime
/// makes them from inside the container's cgroup. Whether one may be
/// opened stays the spec's rules' call. (runc and crun let a container
/// create any node; this keeps `mknod` of anything else refused.)
pub fn with_defaults(rules: &[DeviceRule], nodes: &[Device]) -> Vec<DeviceRule> {
    let rule = |kind: &str, major: i64, minor: i64, access: &str| DeviceRule {
        allow: true,
        kind: Some(kind.to_owned()),
        major: Some(major),
        minor: Some(minor),
        access: Some(access.to_owned()),
    };
    let defaults = DEFAULT_RULES
        .iter()
        .map(|&(kind, major, minor, access)| rule(kind, major, minor, access));
    let creatable = nodes.iter().filter_map(|d| {
        let kind = match d.kind.as_str() {
            "c" | "u" => "c",
            "b" => "b",
            _ => return None,
        };
        Some(rule(kind, d.major, d.minor, "m"))
    });
    rules
        .iter()
        .cloned()
        .chain(defaults)
        .chain(creatable)
        .collect()
}

/// Compiles device rules; an error names the rule.
pub fn compile(rules: &[DeviceRule]) -> Result<Filter, String> {
    // r1 = ctx: r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut out = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for (i, rule) in rules.iter().enumerate().rev() {
        let kind = match rule.kind.as_deref() {
            None | Some("a") => None,
            Some("c") => Some(DEV_CHAR),
            Some("b") => Some(DEV_BLOCK),
            Some(other) => return Err(format!("devices[{i}]: unknown type {other:?}")),
        };
        let mut access = 0;
        for c in rule.access.as_deref().unwrap_or("rwm").chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                other => return Err(format!("devices[{i}]: unknown access {other:?}")),
            };
        }
        let number = |n: Option<i64>, what: &str| match n {
            None | Some(-1) => Ok(None),
            Some(n) => i32::try_from(n)
                .map(Some)
                .map_err(|_| format!("devices[{i}]: {what} {n} is out of range")),
        };
        let (major, minor) = (number(rule.major, "major")?, number(rule.minor, "minor")?);
        // Checks that skip this rule when they fail, then the verdict.
        let mut checks = Vec::new();
        if let Some(k) = kind {
            checks.push((JMP_JNE_K, 2u8, k));
        }
        if access != ACC_READ | ACC_WRITE | ACC_MKNOD {
            // Any requested access outside the rule's: not this rule.
            checks.push((JMP_JSET_K, 3u8, !access & 7));
        }
        if let Some(m) = major {
            checks.push((JMP_JNE_K, 4u8, m));
        }
        if let Some(m) = minor {
            checks.push((JMP_JNE_K, 5u8, m));
        }
        let block_len = checks.len() + 2;
        for (j, (code, reg, imm)) in checks.iter().enumerate() {
            // Skip to the end of this rule's block.
            let skip = (block_len - j - 1) as i16;
            out.push(insn(*code, *reg, 0, skip, *imm));
        }
        out.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(rule.allow)));
        out.push(insn(EXIT, 0, 0, 0, 0));
        if checks.is_empty() {
            // A rule that matches everything ends the program: older
            // verifiers (6.1) refuse the unreachable code after it.
            return Ok(Filter { insns: out });
        }
    }
    out.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    out.push(insn(EXIT, 0, 0, 0, 0));
    Ok(Filter { insns: out })
}

fn bpf(cmd: libc::c_int, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zeroed, 128-byte bpf_attr the kernel reads (and for
    // PROG_LOAD may write the log into, which we do not ask for).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Programs this process has loaded, by filter, for the next cgroup with
/// the same rules: PID 1 starts and restarts many containers with the
/// default ones, and the kernel's verifier is the larger part of attaching
/// (about 4 ms a container under TCG once its code is translated). A
/// program stays loaded while listed here; the list is bounded.
static LOADED: Mutex<Vec<(Filter, OwnedFd)>> = Mutex::new(Vec::new());
/// How many distinct rule sets [`LOADED`] keeps.
const LOADED_MAX: usize = 8;

/// Attaches the filter to the cgroup directory `cgroup`, loading it unless
/// this process already has.
pub fn attach(filter: &Filter, cgroup: &OwnedFd) -> io::Result<()> {
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, prog)) = loaded.iter().find(|(f, _)| f == filter) {
        return match attach_loaded(prog.as_fd(), cgroup) {
            // A cgroup kept from an earlier start (its removal failed)
            // already has this very program: its rules are in force.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        };
    }
    let prog = load(filter)?;
    attach_loaded(prog.as_fd(), cgroup)?;
    if loaded.len() < LOADED_MAX {
        loaded.push((filter.clone(), prog));
    }
    Ok(())
}

/// Loads the filter into the kernel; the program's descriptor.
fn load(filter: &Filter) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut attr = [0u64; 16];
    // prog_type (u32) | insn_cnt (u32), insns, license.
    attr[0] = u64::from(BPF_PROG_TYPE_CGROUP_DEVICE) | ((filter.insns.len() as u64) << 32);
    attr[1] = filter.insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let prog = match bpf(BPF_PROG_LOAD, &mut attr.clone()) {
        Ok(prog) => prog,
        Err(e) => {
            // Load again with the verifier's log, only to explain the refusal
            // (a log that is too small for the whole trace fails with ENOSPC,
            // so it is never asked for on the way that works).
            let mut log = vec![0u8; 64 * 1024];
            attr[3] = 1 | ((log.len() as u64) << 32);
            attr[4] = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(4).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(io::Error::new(
                e.kind(),
                format!("load: {e}: {}", tail.join("; ")),
            ));
        }
    };
    // SAFETY: BPF_PROG_LOAD returned a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(prog as libc::c_int) })
}

/// Attaches the loaded program `prog` to the cgroup directory `cgroup`.
fn attach_loaded(prog: BorrowedFd<'_>, cgroup: &OwnedFd) -> io::Result<()> {
    let mut attr = [0u64; 16];
    // target_fd (u32) | attach_bpf_fd (u32), attach_type (u32) | attach_flags (u32).
    attr[0] = (cgroup.as_raw_fd() as u32 as u64) | ((prog.as_raw_fd() as u32 as u64) << 32);
    attr[1] = u64::from(BPF_CGROUP_DEVICE) | (u64::from(BPF_F_ALLOW_MULTI) << 32);
    bpf(BPF_PROG_ATTACH, &mut attr)
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("attach: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        allow: bool,
        kind: Option<&str>,
        major: Option<i64>,
        minor: Option<i64>,
        access: Option<&str>,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind: kind.map(String::from),
            major,
            minor,
            access: access.map(String::from),
        }
    }

    /// Runs the program on a device request, as the kernel would.
    fn verdict(filter: &Filter, kind: i32, access: i32, major: u32, minor: u32) -> i64 {
        let ctx = [((access as u32) << 16) | kind as u32, major, minor];
        let mut regs = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = filter.insns[pc];
            let dst = (i.regs & 0xf) as usize;
            pc += 1;
            match i.code {
                LDX_MEM_W => regs[dst] = u64::from(ctx[(i.off / 4) as usize]),
                ALU32_AND_K => regs[dst] = (regs[dst] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => regs[dst] = ((regs[dst] as u32) >> i.imm) as u64,
                ALU64_MOV_K => regs[dst] = i.imm as i64 as u64,
                JMP_JNE_K if regs[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                JMP_JSET_K if regs[dst] & i.imm as i64 as u64 != 0 => pc += i.off as usize,
                JMP_JNE_K | JMP_JSET_K => {}
                EXIT => return regs[0] as i64,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn nothing_follows_a_catch_all_rule_which_older_verifiers_reject_as_unreachable() {
        let deny_all = rule(false, Some("a"), None, None, Some("rwm"));
        let alone = compile(std::slice::from_ref(&deny_all)).expect("compiles");
        let with_more = compile(&[
            deny_all,
            rule(true, Some("c"), Some(1), Some(3), Some("rwm")),
        ])
        .expect("compiles");
        assert_eq!(alone.insns.last().map(|i| i.code), Some(EXIT));
        assert_eq!(
            alone.insns[alone.insns.len() - 2],
            insn(ALU64_MOV_K, 0, 0, 0, 0)
        );
        assert_eq!(
            with_more.insns.len(),
            alone.insns.len() + 5,
            "three checks and a verdict for the later rule, no trailing default"
        );
    }

    #[test]
    fn the_last_matching_rule_wins_and_nothing_matching_is_denied() {
        let rules = [
            rule(false, None, None, None, Some("rwm")),
            rule(true, Some("c"), Some(1), Some(3), Some("rwm")),
            rule(true, Some("c"), Some(136), None, Some("rw")),
            rule(false, Some("c"), Some(1), Some(3), Some("m")),
        ];
        let f = compile(&rules).expect("compiles");
        assert_eq!(
            verdict(&f, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3),
            1,
            "/dev/null read-write"
        );
        assert_eq!(
            verdict(&f, DEV_CHAR, ACC_MKNOD, 1, 3),
            0,
            "the later deny of mknod wins"
        );
        assert_eq!(verdict(&f, DEV_CHAR, ACC_READ, 136, 7), 1, "any pts");
        assert_eq!(
            verdict(&f, DEV_CHAR, ACC_MKNOD, 136, 7),
            0,
            "mknod is outside rw"
        );
        assert_eq!(verdict(&f, DEV_BLOCK, ACC_READ, 8, 0), 0, "a disk");
        assert_eq!(
            verdict(&compile(&[]).expect("empty"), DEV_CHAR, ACC_READ, 1, 3),
            0
        );
        assert!(compile(&[rule(true, Some("x"), None, None, None)]).is_err());
        assert!(compile(&[rule(true, None, None, None, Some("rwz"))]).is_err());
    }

    #[test]
    fn a_deny_all_rule_still_leaves_the_default_devices_usable() {
        let deny_all = [rule(false, None, None, None, Some("rwm"))];
        let loop0 = Device {
            path: "/dev/loop0".into(),
            kind: "b".into(),
            major: 7,
            minor: 0,
            file_mode: None,
            uid: None,
            gid: None,
        };
        let f = compile(&with_defaults(&deny_all, &[loop0])).expect("compiles");
        let rw = ACC_READ | ACC_WRITE;
        for (major, minor, name) in [
            (1, 3, "null"),
            (1, 5, "zero"),
            (1, 7, "full"),
            (1, 8, "random"),
            (1, 9, "urandom"),
            (5, 0, "tty"),
            (5, 1, "console"),
            (5, 2, "ptmx"),
            (136, 4, "pts/4"),
        ] {
            assert_eq!(verdict(&f, DEV_CHAR, rw, major, minor), 1, "{name}");
        }
        assert_eq!(verdict(&f, DEV_CHAR, rw, 1, 1), 0, "/dev/mem stays denied");
        assert_eq!(verdict(&f, DEV_BLOCK, ACC_READ, 7, 0), 0, "a loop device");
        assert_eq!(
            verdict(&f, DEV_BLOCK, ACC_MKNOD, 7, 0),
            1,
            "a linux.devices node may be created"
        );
        assert_eq!(verdict(&f, DEV_BLOCK, ACC_MKNOD, 8, 0), 0, "others may not");
        let deny_null = [
            rule(false, None, None, None, Some("rwm")),
            rule(false, Some("c"), Some(1), Some(3), Some("rwm")),
        ];
        let f = compile(&with_defaults(&deny_null, &[])).expect("compiles");
        assert_eq!(
            verdict(&f, DEV_CHAR, rw, 1, 3),
            1,
            "the defaults come last, so they win"
        );
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;

    /// Loads and attaches a real filter to a fresh cgroup v2 directory, where
    /// this host has one (a hybrid host mounts it at /sys/fs/cgroup/unified).
    #[test]
    fn the_kernel_accepts_the_program() {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .find(|p| std::path::Path::new(&format!("{p}/cgroup.procs")).exists())
            .expect("a cgroup v2 hierarchy");
        let dir = format!("{root}/hafen-devices-test-{}", std::process::id());
        std::fs::create_dir(&dir).expect("mkdir cgroup");
        let fd = rustix::fs::open(
            dir.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .expect("open");
        let filter = compile(&[DeviceRule {
            allow: true,
            kind: Some("c".into()),
            major: Some(1),
            minor: Some(3),
            access: Some("rw".into()),
        }])
        .expect("compile");
        let result = attach(&filter, &fd);
        drop(fd);
        let _ = std::fs::remove_dir(&dir);
        result.expect("load and attach");
    }
}
