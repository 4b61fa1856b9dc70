//! Whether KVM works here, found out by booting the image's kernel under it.
//!
//! `/dev/kvm` existing and opening proves little: under nested
//! virtualisation KVM may accept a VM and then fail it. On the machine this
//! was written on, `-cpu host` makes QEMU abort while setting up the vCPU
//! (`failed to set MSR 0x10a`, SIGABRT within 50 ms), and other CPU models
//! boot partway before KVM stops the guest with an internal error, after
//! which QEMU pauses the VM and waits forever. So the probe boots the real
//! kernel with the real CPU flags, with no root file system, until it
//! panics: reaching the panic proves a whole kernel boot works. A QEMU
//! failure or a "KVM internal error" on QEMU's stderr ends the probe at once;
//! a time limit covers anything else.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::command::{self, Accelerator, Machine};
use crate::{describe_exit, sys};

/// How long a probe boot may take. A working KVM reaches the panic in well
/// under a second; the limit is for a loaded host.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The console line the probe waits for.
const PANIC_MARKER: &str = "Kernel panic";
/// What QEMU prints on stderr when KVM fails a running guest.
const INTERNAL_ERROR_MARKER: &str = "KVM internal error";
/// Where KVM lives.
const KVM_DEVICE: &str = "/dev/kvm";

/// Why KVM was found not to work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// `/dev/kvm` cannot be opened for reading and writing.
    #[error("cannot open {path}")]
    Device {
        /// The device.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// QEMU could not be started.
    #[error("cannot start {program} for the KVM probe")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// QEMU failed before the guest got anywhere.
    #[error("QEMU {status} when starting a guest under KVM: {detail}")]
    QemuFailed {
        /// How QEMU exited.
        status: String,
        /// QEMU's first error line.
        detail: String,
    },
    /// KVM stopped the guest partway (QEMU would wait forever).
    #[error("KVM stopped the probe guest with an internal error")]
    InternalError,
    /// QEMU exited cleanly but the guest never reached its panic.
    #[error("QEMU {status} before the probe guest finished booting")]
    Incomplete {
        /// How QEMU exited.
        status: String,
    },
    /// The probe guest did not finish in time.
    #[error("the probe guest did not finish booting within {} s", .limit.as_secs())]
    Timeout {
        /// The limit.
        limit: Duration,
    },
    /// Watching the probe failed.
    #[error("watching the KVM probe (QEMU pid {pid}) failed")]
    Watch {
        /// QEMU's pid.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An earlier probe in this host boot failed.
    #[error("{detail} (found by an earlier probe this boot; delete {} to probe again)", .path.display())]
    Cached {
        /// What that probe found.
        detail: String,
        /// The cache file.
        path: PathBuf,
    },
}

impl ProbeError {
    /// Whether the failure says something lasting about this host boot;
    /// a timeout or a spawn failure may not happen again.
    fn is_lasting(&self) -> bool {
        matches!(
            self,
            ProbeError::QemuFailed { .. }
                | ProbeError::InternalError
                | ProbeError::Incomplete { .. }
        )
    }
}

/// Probes KVM once per host boot and remembers the answer in `cache`.
///
/// The device is checked every time (cheap, and permissions can change);
/// only lasting probe results are remembered.
pub fn probe_cached(kernel: &Path, cache: &Path) -> Result<(), ProbeError> {
    open_device()?;
    let key = cache_key();
    if let Some(answer) = std::fs::read_to_string(cache)
        .ok()
        .and_then(|text| parse_cache(&text, &key))
    {
        return answer.map_err(|detail| ProbeError::Cached {
            detail,
            path: cache.to_owned(),
        });
    }
    let result = probe_after_open(kernel);
    let answer = match &result {
        Ok(()) => Some(Ok(())),
        Err(e) if e.is_lasting() => Some(Err(e.to_string())),
        Err(_) => None,
    };
    if let Some(answer) = answer {
        // Best effort: without a cache the next run probes again.
        let _ = write_cache(cache, &format_cache(&key, &answer));
    }
    result
}

/// Boots `kernel` under KVM to see whether KVM works, without the cache.
pub fn probe(kernel: &Path) -> Result<(), ProbeError> {
    open_device()?;
    probe_after_open(kernel)
}

fn open_device() -> Result<(), ProbeError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
        .map(drop)
        .map_err(|source| ProbeError::Device {
            path: KVM_DEVICE.into(),
            source,
        })
}

/// What the cache is valid for: this host boot and this QEMU.
fn cache_key() -> String {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!(
        "boot {} qemu {}",
        boot_id.trim(),
        command::qemu_binary().display()
    )
}

fn format_cache(key: &str, answer: &Result<(), String>) -> String {
    match answer {
        Ok(()) => format!("{key}\nok\n"),
        // One line: the detail is read back as the rest of the line.
        Err(detail) => format!("{key}\nfail {}\n", detail.replace('\n', " ")),
    }
}

/// The remembered answer, if `text` was written for `key`.
fn parse_cache(text: &str, key: &str) -> Option<Result<(), String>> {
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    match lines.next()? {
        "ok" => Some(Ok(())),
        line => line.strip_prefix("fail ").map(|d| Err(d.to_owned())),
    }
}

fn write_cache(path: &Path, text: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write then rename, so a concurrent run never reads half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The probe's QEMU; killed and reaped however the probe ends.
struct ProbeChild(Child);

impl Drop for ProbeChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // Child::kill only signals a child it has not reaped, so this
            // can only hit our own QEMU.
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn probe_after_open(kernel: &Path) -> Result<(), ProbeError> {
    let machine = Machine {
        kernel: kernel.to_owned(),
        initrd: None,
        // No initramfs and no root device: the kernel boots, fails to mount
        // a root and panics, and `panic=-1` with `-no-reboot` ends QEMU.
        cmdline: "console=ttyS0 panic=-1 quiet".into(),
        memory_mib: 128,
        cpus: 1,
        accel: Accelerator::Kvm,
        qmp_fd: None,
        control_socket: None,
        data_disk: None,
        host_volumes: Vec::new(),
        nic: None,
    };
    let program = command::qemu_binary();
    let mut cmd = Command::new(&program);
    cmd.args(command::arguments(&machine))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ProbeChild(
        sys::spawn_qemu(&mut cmd, None).map_err(|source| ProbeError::Spawn { program, source })?,
    );
    let pid = child.0.id();
    let watch = |source| ProbeError::Watch { pid, source };
    let mut console = Output::new(child.0.stdout.take()).map_err(watch)?;
    let mut errors = Output::new(child.0.stderr.take()).map_err(watch)?;
    let exited = sys::pidfd(&child.0);
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        console.read().map_err(watch)?;
        errors.read().map_err(watch)?;
        if console.text().contains(PANIC_MARKER) {
            return Ok(());
        }
        if errors.text().contains(INTERNAL_ERROR_MARKER) {
            return Err(ProbeError::InternalError);
        }
        if let Some(status) = child.0.try_wait().map_err(watch)? {
            // Take what QEMU wrote just before it exited.
            console.read().map_err(watch)?;
            errors.read().map_err(watch)?;
            return judge(status, &console.text(), &errors.text());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ProbeError::Timeout {
                limit: PROBE_TIMEOUT,
            });
        }
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        fds.extend(console.fd());
        fds.extend(errors.fd());
        fds.extend(exited.as_ref().map(|fd| fd.as_fd()));
        let mut wait = deadline - now;
        if exited.is_none() {
            // No pidfd: notice QEMU's exit on a short timer instead.
            wait = wait.min(Duration::from_millis(20));
        }
        sys::poll_readable(&fds, Some(wait)).map_err(watch)?;
    }
}

/// The verdict once the probe's QEMU has exited.
fn judge(status: ExitStatus, console: &str, errors: &str) -> Result<(), ProbeError> {
    if console.contains(PANIC_MARKER) {
        Ok(())
    } else if errors.contains(INTERNAL_ERROR_MARKER) {
        Err(ProbeError::InternalError)
    } else if status.success() {
        Err(ProbeError::Incomplete {
            status: describe_exit(status),
        })
    } else {
        Err(ProbeError::QemuFailed {
            status: describe_exit(status),
            detail: first_error(errors),
        })
    }
}

/// The line of QEMU's stderr that says what went wrong.
fn first_error(errors: &str) -> String {
    let lines = || errors.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .find(|l| l.contains("error"))
        .or_else(|| lines().next())
        .unwrap_or("no message")
        .to_owned()
}

/// One of the probe QEMU's output pipes, read without blocking.
struct Output<R> {
    pipe: Option<R>,
    text: Vec<u8>,
}

/// Keep this much of each stream: enough for the first error and the panic line.
const OUTPUT_LIMIT: usize = 256 * 1024;

impl<R: Read + AsFd> Output<R> {
    fn new(pipe: Option<R>) -> io::Result<Self> {
        if let Some(p) = &pipe {
            sys::set_nonblocking(p.as_fd())?;
        }
        Ok(Output {
            pipe,
            text: Vec::new(),
        })
    }

    /// Reads what is there; forgets the pipe at end of file.
    fn read(&mut self) -> io::Result<()> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(());
        };
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => {
                    self.pipe = None;
                    return Ok(());
                }
                Ok(n) => {
                    if self.text.len() < OUTPUT_LIMIT {
                        self.text.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|p| p.as_fd())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn the_cache_answers_only_for_its_own_boot_and_qemu() {
        let ok = format_cache("boot A qemu q", &Ok(()));
        assert_eq!(parse_cache(&ok, "boot A qemu q"), Some(Ok(())));
        assert_eq!(parse_cache(&ok, "boot B qemu q"), None);
        let fail = format_cache("boot A qemu q", &Err("QEMU died:\nMSR".into()));
        assert_eq!(
            parse_cache(&fail, "boot A qemu q"),
            Some(Err("QEMU died: MSR".into()))
        );
        assert_eq!(
            parse_cache("boot A qemu q\ngarbage\n", "boot A qemu q"),
            None
        );
        assert_eq!(parse_cache("", "boot A qemu q"), None);
    }

    #[test]
    fn a_qemu_abort_at_vcpu_setup_is_a_lasting_failure_naming_the_error() {
        // What QEMU 7.2 prints with -cpu host under the nested KVM of the
        // machine this was written on.
        let stderr = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n\
            qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: \
            Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n";
        let err = judge(ExitStatus::from_raw(libc::SIGABRT), "", stderr).expect_err("fails");
        assert!(err.is_lasting());
        let text = err.to_string();
        assert!(text.contains("failed to set MSR 0x10a"), "{text}");
        assert!(text.contains("signal 6"), "{text}");
    }

    #[test]
    fn reaching_the_panic_is_success_and_an_internal_error_is_not() {
        assert!(judge(
            ExitStatus::from_raw(0),
            "Kernel panic - not syncing: VFS",
            ""
        )
        .is_ok());
        assert!(matches!(
            judge(
                ExitStatus::from_raw(0),
                "",
                "KVM internal error. Suberror: 1\n"
            ),
            Err(ProbeError::InternalError)
        ));
        assert!(matches!(
            judge(ExitStatus::from_raw(0), "Linux version", ""),
            Err(ProbeError::Incomplete { .. })
        ));
        assert!(!ProbeError::Timeout {
            limit: PROBE_TIMEOUT
        }
        .is_lasting());
    }
}
