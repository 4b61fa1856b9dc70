//! The machine's own set-up besides the early mounts, ordered around the
//! first container's start.
//!
//! The boot is measured to the first container's exec, and under TCG every
//! code path the guest runs for the first time costs its translation, so
//! PID 1 does before a container starts only what that container cannot
//! run without ([`Bringup::before_start`]): its volumes, its network, the
//! controllers its limits need, the VM's hostname and `lo` when it shares
//! them. Everything else ([`Bringup::finish`]) is done right after the
//! first container has started, or at once when none starts: every other
//! container's network, the remaining controllers and mounts, Ctrl-Alt-Del.
//! None of it is something a container could observe missing. (The control
//! channel and the power button are opened before the first start, by the
//! supervisor: see `Supervisor::new`.)

use std::path::Path;

use hafen_proto::layout;
use hafen_proto::spec::Spec;

use crate::bundle::Bundle;
use crate::container::cgroup;
use crate::net::Network;
use crate::{mount, sys};

/// What is still to be set up, and what already is.
#[derive(Debug)]
pub struct Bringup {
    finished: bool,
    controllers: bool,
    volumes: bool,
    hostname: bool,
    loopback: bool,
    /// The image's network plan, when it has one.
    network: Option<Network>,
}

impl Bringup {
    /// Nothing set up yet; `network` is the image's plan.
    pub fn new(network: Option<Network>) -> Bringup {
        Bringup {
            finished: false,
            controllers: false,
            volumes: false,
            hostname: false,
            loopback: false,
            network,
        }
    }

    /// Whether [`Bringup::finish`] has run.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Makes what `bundle` needs before it starts. Cheap once done.
    pub fn before_start(&mut self, bundle: &mut Bundle) {
        if self.finished {
            return;
        }
        if !bundle.volumes.is_empty() {
            self.volumes();
        }
        if needs_controllers(&bundle.spec) {
            self.controllers();
        }
        if !has_namespace(&bundle.spec, "uts") {
            self.hostname();
        }
        if !has_namespace(&bundle.spec, "network") {
            self.loopback();
            if let Some(network) = &mut self.network {
                network.uplink();
            }
        }
        if let Some(network) = &mut self.network {
            network.prepare(bundle);
        }
    }

    /// Sets up everything not set up yet, once; `bundles` are the
    /// containers, whose networks are made now.
    pub fn finish<'a>(&mut self, bundles: impl IntoIterator<Item = &'a mut Bundle>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        for e in mount::late_mounts() {
            error!("{e}");
        }
        self.controllers();
        self.hostname();
        self.loopback();
        if let Err(e) = sys::disable_ctrl_alt_del() {
            warn!("cannot route Ctrl-Alt-Del to SIGINT: {e}");
        }
        // A container that runs the guest out of memory must never take PID 1.
        if let Err(e) = sys::protect_from_oom() {
            warn!("cannot protect PID 1 from the OOM killer: {e}");
        }
        self.volumes();
        if let Some(network) = &mut self.network {
            network.finish(bundles);
        }
        debug!("boot finished");
    }

    /// Every controller for every container (those made before included).
    fn controllers(&mut self) {
        if std::mem::replace(&mut self.controllers, true) {
            return;
        }
        match cgroup::enable_all(Path::new(cgroup::CGROUP_ROOT), "hafen") {
            Ok(list) => debug!("cgroup controllers: {list}"),
            Err(e) => warn!("cannot enable cgroup controllers: {e}"),
        }
    }

    /// The data disk and the host directories mounted over volumes.
    fn volumes(&mut self) {
        if std::mem::replace(&mut self.volumes, true) {
            return;
        }
        if let Err(e) = crate::volume::mount_data_disk() {
            error!("{e}");
        }
        crate::volume::mount_host_volumes();
    }

    fn hostname(&mut self) {
        if std::mem::replace(&mut self.hostname, true) {
            return;
        }
        let name = std::fs::read_to_string(layout::HOSTNAME_FILE).unwrap_or_default();
        let name = name.trim();
        if name.is_empty() {
            return;
        }
        if let Err(e) = rustix::system::sethostname(name.as_bytes()) {
            warn!("cannot set hostname {name:?}: {e}");
        }
    }

    fn loopback(&mut self) {
        if std::mem::replace(&mut self.loopback, true) {
            return;
        }
        if let Err(e) = sys::interface_up("lo") {
            warn!("cannot bring up lo: {e}");
        }
    }
}

/// Whether `spec` lists a namespace of `kind` (new or joined); without
/// one, the container shares the VM's.
fn has_namespace(spec: &Spec, kind: &str) -> bool {
    spec.linux
        .as_ref()
        .is_some_and(|l| l.namespaces.iter().any(|n| n.kind == kind))
}

/// Whether `spec`'s limits need cgroup controllers (device rules do not:
/// they are an eBPF program).
fn needs_controllers(spec: &Spec) -> bool {
    spec.linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .is_some_and(|r| {
            r.memory.is_some()
                || r.cpu.is_some()
                || r.pids.is_some()
                || r.block_io.is_some()
                || !r.unified.is_empty()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hafen_proto::spec::{Linux, Namespace, Pids, Resources};

    fn spec(linux: Linux) -> Spec {
        Spec {
            linux: Some(linux),
            ..Spec::default()
        }
    }

    #[test]
    fn only_limits_need_controllers() {
        assert!(!needs_controllers(&Spec::default()));
        let devices_only = spec(Linux {
            resources: Some(Resources {
                devices: vec![Default::default()],
                ..Resources::default()
            }),
            ..Linux::default()
        });
        assert!(!needs_controllers(&devices_only));
        let pids = spec(Linux {
            resources: Some(Resources {
                pids: Some(Pids { limit: 10 }),
                ..Resources::default()
            }),
            ..Linux::default()
        });
        assert!(needs_controllers(&pids));
    }

    #[test]
    fn a_missing_namespace_is_shared_with_the_vm() {
        let ns = |kind: &str| Namespace {
            kind: kind.to_owned(),
            path: None,
        };
        let s = spec(Linux {
            namespaces: vec![ns("pid"), ns("network")],
            ..Linux::default()
        });
        assert!(has_namespace(&s, "network"));
        assert!(!has_namespace(&s, "uts"));
        assert!(!has_namespace(&Spec::default(), "network"));
    }
}
