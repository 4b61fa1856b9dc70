//! `hafen-check [PATH...]`: runs inside a container and prints, as one JSON
//! object, what the container sees: namespaces, ids and id maps, capability
//! sets, no_new_privs and seccomp, rlimits, mounts, devices, its cgroup and
//! limits, and for each PATH whether it is masked, read-only or writable.
//! Static (musl), with no files of its own, so any root filesystem can run it.
//! `hafen-check udp-echo PORT` is a UDP echo server instead.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use serde_json::{json, Map, Value};

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_owned())
}

fn status_fields() -> BTreeMap<String, String> {
    read("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn rlimits() -> Value {
    let mut out = Map::new();
    for (i, name) in hafen_proto::rlimit::NAMES.iter().enumerate() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: lim is a valid out-pointer; i is a valid resource number.
        if unsafe { libc::getrlimit(i as _, &mut lim) } == 0 {
            let show = |v: libc::rlim_t| {
                if v == libc::RLIM_INFINITY {
                    json!("unlimited")
                } else {
                    json!(v)
                }
            };
            out.insert(
                format!("RLIMIT_{name}"),
                json!([show(lim.rlim_cur), show(lim.rlim_max)]),
            );
        }
    }
    Value::Object(out)
}

fn mounts() -> Value {
    let text = read("/proc/self/mountinfo").unwrap_or_default();
    let list: Vec<Value> = text
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(json!({"target": f.get(4)?, "options": f.get(5)?, "type": r.first()?, "super": r.get(2).unwrap_or(&"")}))
        })
        .collect();
    Value::Array(list)
}

fn devices() -> Value {
    let mut out = Map::new();
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return Value::Object(out);
    };
    for e in entries.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let ft = m.file_type();
        let kind = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else if ft.is_symlink() {
            "l"
        } else if ft.is_dir() {
            "d"
        } else {
            "f"
        };
        let rdev = m.rdev();
        let (major, minor) = (
            ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff),
            (rdev & 0xff) | ((rdev >> 12) & !0xff),
        );
        out.insert(e.file_name().to_string_lossy().into_owned(), json!({"type": kind, "major": major, "minor": minor, "mode": format!("{:o}", m.mode() & 0o7777)}));
    }
    Value::Object(out)
}

fn read_only(path: &str) -> Option<bool> {
    let c = CString::new(path).ok()?;
    // SAFETY: statvfs is plain data; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid.
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_flag & libc::ST_RDONLY != 0)
}

/// `absent`, `masked` (a /dev/null bind or an empty read-only tmpfs), `read-only` or `writable`.
fn path_state(path: &str) -> &'static str {
    let Ok(m) = std::fs::metadata(path) else {
        return "absent";
    };
    let masked_file = m.file_type().is_char_device() && m.rdev() == libc::makedev(1, 3);
    let masked_dir = m.is_dir()
        && read_only(path) == Some(true)
        && std::fs::read_dir(path)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if masked_file || masked_dir {
        "masked"
    } else if read_only(path) == Some(true) {
        "read-only"
    } else {
        "writable"
    }
}

/// `hafen-check udp-echo PORT`: answers each UDP datagram on PORT with
/// `echo: ` and the datagram, for as long as it runs (busybox has no UDP
/// server for the network tests).
fn udp_echo(port: &str) -> ! {
    let socket = std::net::UdpSocket::bind(format!("0.0.0.0:{port}")).expect("bind the UDP port");
    println!("udp echo on {port}");
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let reply = [&b"echo: "[..], &buf[..n]].concat();
            let _ = socket.send_to(&reply, from);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, port] = args.as_slice() {
        if mode == "udp-echo" {
            udp_echo(port);
        }
    }
    let status = status_fields();
    let field = |k: &str| status.get(k).cloned().unwrap_or_default();
    let ns: Map<String, Value> = ["pid", "net", "mnt", "uts", "ipc", "user", "cgroup"]
        .iter()
        .map(|k| {
            (
                k.to_string(),
                json!(std::fs::read_link(format!("/proc/self/ns/{k}"))
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default()),
            )
        })
        .collect();
    let cgroup_files: Map<String, Value> = [
        "memory.max",
        "memory.swap.max",
        "pids.max",
        "cpu.max",
        "cpu.weight",
    ]
    .iter()
    .filter_map(|f| read(&format!("/sys/fs/cgroup/{f}")).map(|v| (f.to_string(), json!(v))))
    .collect();
    let paths: Map<String, Value> = std::env::args()
        .skip(1)
        .map(|p| {
            let s = path_state(&p);
            (p, json!(s))
        })
        .collect();
    let report = json!({
        "namespaces": ns,
        "hostname": read("/proc/sys/kernel/hostname"),
        "domainname": read("/proc/sys/kernel/domainname"),
        "uid": field("Uid"), "gid": field("Gid"), "groups": field("Groups"),
        "uid_map": read("/proc/self/uid_map"), "gid_map": read("/proc/self/gid_map"),
        "capabilities": {"inheritable": field("CapInh"), "permitted": field("CapPrm"), "effective": field("CapEff"), "bounding": field("CapBnd"), "ambient": field("CapAmb")},
        "no_new_privs": field("NoNewPrivs"), "seccomp": field("Seccomp"),
        "rlimits": rlimits(),
        "root_read_only": read_only("/"),
        "cwd": std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
        "oom_score_adj": read("/proc/self/oom_score_adj"),
        "cgroup": read("/proc/self/cgroup"),
        "cgroup_limits": cgroup_files,
        "mounts": mounts(),
        "devices": devices(),
        "paths": paths,
    });
    // A closed stdout is the reader's business, not a reason to panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), format!("{report}\n").as_bytes());
}
