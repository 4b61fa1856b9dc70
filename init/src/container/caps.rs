//! Linux capabilities: names, and the sets a container's process ends up with.

use std::io;

pub use hafen_proto::capability::{name, parse};

/// A set of capabilities as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

impl CapSet {
    /// Parses a list of names; unknown names are returned as the error.
    pub fn from_names(names: &[String]) -> Result<CapSet, String> {
        let mut bits = 0u64;
        for n in names {
            let cap = parse(n).ok_or_else(|| n.clone())?;
            bits |= 1 << cap;
        }
        Ok(CapSet(bits))
    }

    /// Whether `cap` is in the set.
    pub fn has(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }
}

/// The five sets a process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    /// Bounding set.
    pub bounding: CapSet,
    /// Effective set.
    pub effective: CapSet,
    /// Permitted set.
    pub permitted: CapSet,
    /// Inheritable set.
    pub inheritable: CapSet,
    /// Ambient set.
    pub ambient: CapSet,
}

/// The highest capability the running kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn check(ret: libc::c_long) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Drops every capability above the bounding set, for caps up to `last`.
pub fn drop_bounding(keep: CapSet, last: u32) -> io::Result<()> {
    for cap in 0..=last {
        if !keep.has(cap) {
            // SAFETY: prctl with integer arguments only.
            let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            match check(ret as libc::c_long) {
                // A cap the kernel does not have is already absent.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// Keeps permitted capabilities across the switch away from uid 0.
pub fn keep_caps_on_setuid() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } as libc::c_long)
}

/// Sets the effective, permitted and inheritable sets, then raises the ambient ones.
pub fn set(caps: &Caps) -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [0, 1].map(|half| {
        let part = |set: CapSet| (set.0 >> (32 * half)) as u32;
        CapData {
            effective: part(caps.effective),
            permitted: part(caps.permitted),
            inheritable: part(caps.inheritable),
        }
    });
    // SAFETY: header and data are valid, correctly sized v3 structures.
    check(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    })?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } as libc::c_long)?;
    for cap in 0..64 {
        // The kernel only allows ambient caps that are both permitted and
        // inheritable; bundles (runc's default spec among them) list others,
        // which runc and crun skip, and so do we.
        if caps.ambient.has(cap) && caps.permitted.has(cap) && caps.inheritable.has(cap) {
            // SAFETY: prctl with integer arguments only.
            let ret = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
            check(ret as libc::c_long)?;
        }
    }
    Ok(())
}

/// Sets no_new_privs: exec can no longer gain privileges (setuid bits, file caps).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_from_names_report_the_unknown_one() {
        let set = CapSet::from_names(&["CAP_KILL".into(), "CAP_CHOWN".into()]).expect("known");
        assert!(set.has(5) && set.has(0) && !set.has(1));
        assert_eq!(
            CapSet::from_names(&["CAP_KILL".into(), "CAP_NOPE".into()]),
            Err("CAP_NOPE".into())
        );
    }
}
