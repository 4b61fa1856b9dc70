//! System mode: PID 1 of a Hafen guest. Brings the machine up, hands the
//! containers to the supervisor, and powers off or reboots when it returns.
//! Nothing here exits or panics: a failed step is reported and boot goes on.

use std::path::Path;

use hafen_proto::build::LAYERS_DIR;
use hafen_proto::layout;

use crate::bringup::Bringup;
use crate::supervisor::{self, BootClock, PowerAction, Supervisor};
use crate::{build, bundle, log, mount, sys};

/// Boots the guest. Returns only when not running as PID 1 (an error for the caller to print).
pub fn main() -> ! {
    let init_start_ns = sys::boottime_ns();
    if std::process::id() != 1 {
        eprintln!(
            "hafen-init: system mode runs only as PID 1 of a Hafen guest.\n\
             To use hafen-init as a container's init, give it a command: hafen-init -- CMD [ARGS...]"
        );
        std::process::exit(2);
    }

    // Signals first: until the supervisor reads them, they stay pending.
    let signals = match supervisor::signal_fd() {
        Ok(fd) => Some(fd),
        Err(e) => {
            error!("cannot set up signal handling: {e}; the machine cannot be shut down by signal");
            None
        }
    };

    if let Err(e) = mount::reroot() {
        error!("cannot leave the initramfs root ({e}); containers will fail to pivot_root");
    }
    for e in mount::early_mounts() {
        error!("{e}");
    }
    let held = apply_kernel_cmdline();
    debug!(
        "early mounts done (hafen-init started at {} ms)",
        init_start_ns / 1_000_000
    );
    let builder = build::is_builder();
    let bundles = if builder {
        // A builder runs build steps for the host, never containers of its own.
        match build::mount_storage() {
            Ok(()) => info!("builder: serving build steps, layers in {LAYERS_DIR}"),
            Err(e) => error!("builder: {e}; build steps will fail"),
        }
        Vec::new()
    } else {
        let (bundles, errors) = bundle::discover(Path::new(layout::CONTAINERS_DIR));
        for e in &errors {
            error!("skipping a container: {e}");
        }
        info!(
            "{} container{} found in {}",
            bundles.len(),
            if bundles.len() == 1 { "" } else { "s" },
            layout::CONTAINERS_DIR
        );
        bundles
    };
    debug!("bundles read");
    // The rest waits for the first container's start (see bringup).
    let bringup = Bringup::new(crate::net::Network::load());

    let action = match signals
        .map(|fd| Supervisor::new(bundles, fd, BootClock { init_start_ns }, bringup))
    {
        Some(Ok(mut supervisor)) => {
            supervisor.hold_from_last_run(&held);
            if builder {
                supervisor.serve_builds();
            }
            supervisor.run()
        }
        Some(Err(e)) => {
            error!("cannot start the supervisor: {e}");
            idle_forever()
        }
        None => idle_forever(),
    };
    power(action)
}

/// Applies the kernel command line's `hafen.*` options; returns
/// `hafen.held=a,b`: the `unless-stopped` containers `hafen stop` held down
/// when this VM last ran (`hafen run` passes them on).
fn apply_kernel_cmdline() -> Vec<String> {
    let mut held = Vec::new();
    let Ok(cmdline) = std::fs::read_to_string("/proc/cmdline") else {
        return held;
    };
    for word in cmdline.split_whitespace() {
        if let Some(level) = word.strip_prefix("hafen.log=") {
            match log::parse_level(level) {
                Some(level) => log::set_max_level(level),
                None => {
                    warn!("unknown hafen.log level {level:?}: expected error, warn, info or debug")
                }
            }
        } else if let Some(list) = word.strip_prefix("hafen.held=") {
            held.extend(list.split(',').filter(|n| !n.is_empty()).map(str::to_owned));
        }
    }
    held
}

/// Stops whatever is left, flushes and unmounts filesystems, and powers off
/// or reboots. If the kernel refuses, PID 1 stays alive doing nothing.
fn power(action: PowerAction) -> ! {
    debug!("supervisor done");
    // Anything still alive outside the containers' own namespaces.
    let _ = sys::kill(-1, libc::SIGKILL);
    while let Ok(Some(_)) = sys::reap_one() {}
    crate::volume::release();
    sys::sync();
    debug!("volumes released");
    mount::unmount_all();
    sys::sync();
    debug!("unmounted");
    match action {
        PowerAction::PowerOff => info!("powering off"),
        PowerAction::Reboot => info!("rebooting"),
    }
    let err = sys::power(action == PowerAction::Reboot);
    error!(
        "the kernel refused to {}: {err}",
        if action == PowerAction::Reboot {
            "reboot"
        } else {
            "power off"
        }
    );
    idle_forever()
}

/// PID 1 must never exit: wait forever, still reaping orphans.
fn idle_forever() -> ! {
    loop {
        // SAFETY: pause only suspends until a signal arrives.
        unsafe { libc::pause() };
        while let Ok(Some(_)) = sys::reap_one() {}
    }
}
