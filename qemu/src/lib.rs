//! Boots a Hafen image in QEMU. Work in progress: see issue 2.

use std::fmt;
use std::path::PathBuf;

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when a probe boot works, TCG otherwise.
    Auto,
    /// KVM, or fail.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// What `hafen run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Image directory written by `hafen build`.
    pub image: PathBuf,
    /// Guest memory in MiB; `None` takes the image's.
    pub memory_mib: Option<u32>,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Accelerator choice.
    pub accel: Accel,
    /// Show the kernel's messages.
    pub verbose: bool,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest powered itself off.
    PoweredOff,
}

impl RunOutcome {
    /// Whether the guest powered off cleanly.
    pub fn is_clean_power_off(&self) -> bool {
        matches!(self, RunOutcome::PoweredOff)
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("guest powered off")
    }
}

/// Running the VM failed.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Boots the image and blocks until QEMU has exited.
pub fn run(_opts: &RunOptions) -> Result<RunOutcome, Error> {
    Err(Error("not implemented yet".into()))
}
