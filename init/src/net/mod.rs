//! The guest's networking: the VM's NIC (the uplink to QEMU's user
//! networking) and each container's network namespace, made by PID 1
//! before the container starts and kept at [`NETNS_DIR`]`/NAME` across its
//! restarts (the `hosts`, `resolv.conf` and `hostname` files it sees are
//! made by `hafen build`, at [`NET_DIR`]`/NAME`).
//!
//! There is no bridge and no netfilter: containers have addresses in the
//! NIC's own subnet, the VM routes each one's /32 to its veth and answers
//! ARP for the others on both sides (proxy ARP), and forwards between them.
//!
//! Everything here works on the calling thread's namespaces (PID 1 has one
//! thread; tests have many), which is why namespace files are reached
//! through `/proc/thread-self`.

mod netlink;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use hafen_proto::net::{
    ContainerNet, NetworkConfig, NetworkMode, NETNS_DIR, NETWORK_CONFIG, NET_DIR,
};
use rustix::io::Errno;
use rustix::mount::{self, UnmountFlags};
use rustix::thread::{self as rthread, LinkNameSpaceType};

pub use self::netlink::{Netlink, Route};
use crate::sys;

/// The calling thread's own network namespace.
const OWN_NETNS: &str = "/proc/thread-self/ns/net";
/// The container's end of its veth pair.
const CONTAINER_IFACE: &str = "eth0";
/// `lo` has this index in every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_INDEX: u32 = 1;
/// `ARPHRD_ETHER`, an ethernet interface's `type` in sysfs.
const ARPHRD_ETHER: &str = "1";

/// A network setup step failed.
#[derive(Debug)]
pub struct NetError {
    /// The container it was for; `None` for the VM's own NIC.
    pub container: Option<String>,
    /// The operation, with the interface and values it concerned
    /// (`RTM_NEWADDR 10.0.2.15/24 on eth0`).
    pub what: String,
    /// The system call's error.
    pub source: io::Error,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.container {
            Some(name) => write!(f, "network of container {name}: ")?,
            None => f.write_str("network uplink: ")?,
        }
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for NetError {}

/// The `map_err` closure for one step of `container`'s setup (`None`: the
/// uplink). `what` is only formatted when the step fails, so a call site
/// costs little more than the pointers to its pieces.
fn step<'a>(
    container: Option<&'a str>,
    what: fmt::Arguments<'a>,
) -> impl FnOnce(io::Error) -> NetError + 'a {
    move |source| NetError {
        container: container.map(str::to_owned),
        what: what.to_string(),
        source,
    }
}

/// Configures the VM's NIC: up with the MTU, the guest's address, the
/// default route via the gateway, forwarding on and proxy ARP on it (so the
/// gateway's ARP for a container's address is answered). Returns the
/// interface's name.
pub fn configure_uplink(config: &NetworkConfig) -> Result<String, NetError> {
    let iface = find_uplink(Path::new("/sys/class/net")).map_err(step(
        None,
        format_args!("find an ethernet interface in /sys/class/net"),
    ))?;
    let mut nl = Netlink::open().map_err(step(None, format_args!("open NETLINK_ROUTE")))?;
    let index = nl
        .index(&iface)
        .map_err(step(None, format_args!("SIOCGIFINDEX {iface}")))?;
    let mtu = config.mtu;
    nl.set_link(index, true, Some(mtu)).map_err(step(
        None,
        format_args!("RTM_SETLINK up mtu {mtu} on {iface}"),
    ))?;
    let (guest, prefix, gateway) = (config.guest, config.prefix, config.gateway);
    nl.add_address(index, guest, prefix).map_err(step(
        None,
        format_args!("RTM_NEWADDR {guest}/{prefix} on {iface}"),
    ))?;
    nl.add_route(&default_route(config, index)).map_err(step(
        None,
        format_args!("RTM_NEWROUTE default via {gateway} on {iface}"),
    ))?;
    sysctl("ipv4/ip_forward", "1")
        .map_err(step(None, format_args!("write {PROC_NET}ipv4/ip_forward")))?;
    proxy_arp(&iface).map_err(step(None, format_args!("proxy ARP on {iface}")))?;
    Ok(iface)
}

/// The first ethernet interface (by name) among `class_net`'s entries.
fn find_uplink(class_net: &Path) -> io::Result<String> {
    let mut first: Option<String> = None;
    for entry in fs::read_dir(class_net)? {
        let entry = entry?;
        let kind = fs::read_to_string(entry.path().join("type")).unwrap_or_default();
        if kind.trim() != ARPHRD_ETHER {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            if first.as_ref().is_none_or(|f| name < *f) {
                first = Some(name);
            }
        }
    }
    first.ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))
}

fn default_route(config: &NetworkConfig, oif: u32) -> Route {
    Route {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
        gateway: Some(config.gateway),
        oif,
    }
}

/// Where the calling thread's network namespace has its sysctls.
const PROC_NET: &str = "/proc/sys/net/";

/// Writes `value` to the sysctl [`PROC_NET`]`NAME`.
fn sysctl(name: &str, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open([PROC_NET, name].concat())?
        .write_all(value.as_bytes())
}

/// Answers ARP on `iface` for addresses routed through other interfaces,
/// at once (the kernel otherwise delays proxy answers by up to 0.8 s).
fn proxy_arp(iface: &str) -> io::Result<()> {
    sysctl(&["ipv4/conf/", iface, "/proxy_arp"].concat(), "1")?;
    sysctl(&["ipv4/neigh/", iface, "/proxy_delay"].concat(), "0")
}

/// The VM's end of a bridge container's veth pair: `vh-NAME`, or, for a
/// name too long for an interface (15 bytes), `vh-`, its first four bytes
/// and a hash of the whole name.
pub fn peer_name(container: &str) -> String {
    let mut peer = String::from("vh-");
    match container.get(..4) {
        Some(head) if container.len() > 12 => {
            let hash = container.bytes().fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            peer.push_str(head);
            for shift in (0..32).step_by(4).rev() {
                peer.push(char::from(
                    b"0123456789abcdef"[(hash >> shift) as usize & 15],
                ));
            }
        }
        _ => peer.push_str(container),
    }
    peer
}

/// PID 1's network, from the plan `hafen build` wrote to
/// [`NETWORK_CONFIG`]: the VM's NIC, then each container's namespace,
/// whose path goes into its bundle's `network` namespace entry
/// (the runtime joins it there). An image without a plan keeps only `lo`.
///
/// Nothing is made before a container needs it: the NIC before the first
/// container that uses it starts, a container's namespace before its own
/// first start; [`Network::finish`] makes the rest once the first container
/// runs, so no container's start waits for another's network.
/// Failures are logged with the container, interface and operation; a
/// container whose namespace could not be made starts in a fresh one with
/// only `lo`, rather than not at all.
#[derive(Debug)]
pub struct Network {
    config: NetworkConfig,
    /// The NIC has been configured (or failed to be: once is enough).
    uplink: bool,
    /// Containers whose namespace is made (or failed to be).
    prepared: Vec<String>,
}

impl Network {
    /// Reads the plan; `None` (with the reason logged when it is not just
    /// absent) leaves the VM with only `lo`.
    pub fn load() -> Option<Network> {
        let text = match fs::read(NETWORK_CONFIG) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                error!("network: cannot read {NETWORK_CONFIG}: {e}");
                return None;
            }
        };
        match serde_json::from_slice(&text) {
            Ok(config) => Some(Network {
                config,
                uplink: false,
                prepared: Vec::new(),
            }),
            Err(e) => {
                error!(
                    "network: {NETWORK_CONFIG} is malformed ({e}); rebuild the image with this hafen"
                );
                None
            }
        }
    }

    /// Configures the VM's NIC, once.
    pub fn uplink(&mut self) {
        if std::mem::replace(&mut self.uplink, true) {
            return;
        }
        let config = &self.config;
        match configure_uplink(config) {
            Ok(iface) => info!(
                "network: {iface} {}/{} via {}{}",
                config.guest,
                config.prefix,
                config.gateway,
                if config.outbound {
                    ", outbound allowed"
                } else {
                    ""
                }
            ),
            Err(e) => warn!("{e}; containers reach only each other"),
        }
    }

    /// Makes what `bundle` needs before its first start: the NIC unless it
    /// has no network, and its namespace (its `hosts`, `resolv.conf` and
    /// `hostname` are in the image, at [`NET_DIR`]). Once per container;
    /// later calls do nothing.
    pub fn prepare(&mut self, bundle: &mut crate::bundle::Bundle) {
        if self.prepared.contains(&bundle.name) {
            return;
        }
        self.prepared.push(bundle.name.clone());
        let Some(index) = self
            .config
            .containers
            .iter()
            .position(|n| n.name == bundle.name)
        else {
            return;
        };
        if self.config.containers[index].mode != NetworkMode::None {
            self.uplink();
        }
        let (config, net) = (&self.config, &self.config.containers[index]);
        match prepare_container(config, net) {
            Ok(Some(path)) => {
                let joined =
                    bundle.spec.linux.as_mut().and_then(|linux| {
                        linux.namespaces.iter_mut().find(|n| n.kind == "network")
                    });
                if let Some(ns) = joined {
                    ns.path = Some(path.to_string_lossy().into_owned());
                }
            }
            Ok(None) => {}
            Err(e) => error!("{e}"),
        }
    }

    /// Makes everything not made yet: the NIC and every container's network.
    pub fn finish<'a>(&mut self, bundles: impl IntoIterator<Item = &'a mut crate::bundle::Bundle>) {
        self.uplink();
        for bundle in bundles {
            self.prepare(bundle);
        }
    }
}

/// The path of `container`'s network namespace.
pub fn netns_path(container: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(container)
}

/// Makes `container`'s network namespace before its first start: for
/// `bridge`, a veth pair (`eth0` inside, [`peer_name`] in the VM) with its
/// address, MTU and default route, and the VM's route and proxy ARP for
/// it; for `none`, only `lo`. Returns the namespace's path for the
/// container to join, `None` for `host` (it shares the VM's). On any
/// failure the calling thread is back in its own namespace and nothing
/// half-made is left.
pub fn prepare_container(
    config: &NetworkConfig,
    container: &ContainerNet,
) -> Result<Option<PathBuf>, NetError> {
    let name = Some(container.name.as_str());
    let address = match (container.mode, container.address) {
        (NetworkMode::Host, _) => return Ok(None),
        (NetworkMode::None, _) => None,
        (NetworkMode::Bridge, Some(address)) => Some(address),
        (NetworkMode::Bridge, None) => {
            return Err(step(name, format_args!("bridge network"))(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the network plan gives the container no address",
            )))
        }
    };

    // 1. The file the namespace is bound to; its existence is the claim.
    let path = netns_path(&container.name);
    let shown = path.display();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(NETNS_DIR)
        .and_then(|()| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&path)
        })
        .map_err(step(name, format_args!("create {shown}")))?;
    let mut made = HalfMade {
        path: path.clone(),
        mounted: false,
        peer: None,
    };

    // 2. A handle on our own namespace, to return to and to put the
    //    veth's peer in; a socket of our own namespace for the VM's side.
    let own = File::open(OWN_NETNS).map_err(step(name, format_args!("open {OWN_NETNS}")))?;
    let mut vm = Netlink::open().map_err(step(name, format_args!("open NETLINK_ROUTE")))?;

    // 3. Inside the new namespace.
    let peer = peer_name(&container.name);
    {
        sys::unshare_netns().map_err(step(name, format_args!("unshare(CLONE_NEWNET)")))?;
        let back = Return(Some(own.as_fd()));
        made.build(config, name, address, &peer, own.as_fd())?;
        back.restore().map_err(step(
            name,
            format_args!("setns back to PID 1's network namespace"),
        ))?;
    }

    // 4. The VM's side: its end up, proxy ARP, the /32 route to the container.
    if let Some(address) = address {
        let index = vm
            .index(&peer)
            .map_err(step(name, format_args!("SIOCGIFINDEX {peer}")))?;
        vm.set_link(index, true, None)
            .map_err(step(name, format_args!("RTM_SETLINK up on {peer}")))?;
        proxy_arp(&peer).map_err(step(name, format_args!("proxy ARP on {peer}")))?;
        let route = Route {
            dst: address,
            prefix: 32,
            gateway: None,
            oif: index,
        };
        vm.add_route(&route).map_err(step(
            name,
            format_args!("RTM_NEWROUTE {address}/32 on {peer}"),
        ))?;
    }
    made.keep();
    Ok(Some(path))
}

/// What [`prepare_container`] has made so far, undone when dropped (after
/// the thread is back in its own namespace).
struct HalfMade {
    path: PathBuf,
    mounted: bool,
    peer: Option<String>,
}

impl HalfMade {
    /// Everything is made: nothing to undo.
    fn keep(&mut self) {
        self.path = PathBuf::new();
        self.mounted = false;
        self.peer = None;
    }

    /// Inside the new namespace: binds it to `self.path`, brings `lo` up
    /// and, with an `address`, makes the veth pair and configures `eth0`.
    fn build(
        &mut self,
        config: &NetworkConfig,
        name: Option<&str>,
        address: Option<Ipv4Addr>,
        peer: &str,
        own: BorrowedFd<'_>,
    ) -> Result<(), NetError> {
        let shown = self.path.display();
        mount::mount_bind(OWN_NETNS, &self.path)
            .map_err(io::Error::from)
            .map_err(step(
                name,
                format_args!("bind-mount {OWN_NETNS} on {shown}"),
            ))?;
        self.mounted = true;
        // This socket holds a reference to the namespace: it is dropped on
        // return, so the mount is then the only one.
        let mut nl = Netlink::open().map_err(step(name, format_args!("open NETLINK_ROUTE")))?;
        nl.set_link(LOOPBACK_INDEX, true, None)
            .map_err(step(name, format_args!("RTM_SETLINK up on lo")))?;
        let Some(address) = address else {
            return Ok(());
        };
        let iface = CONTAINER_IFACE;
        nl.new_veth(iface, peer, own, config.mtu).map_err(step(
            name,
            format_args!("RTM_NEWLINK veth {iface} and {peer}"),
        ))?;
        self.peer = Some(peer.to_owned());
        let index = nl
            .index(iface)
            .map_err(step(name, format_args!("SIOCGIFINDEX {iface}")))?;
        nl.set_link(index, true, None)
            .map_err(step(name, format_args!("RTM_SETLINK up on {iface}")))?;
        let (prefix, gateway) = (config.prefix, config.gateway);
        nl.add_address(index, address, prefix).map_err(step(
            name,
            format_args!("RTM_NEWADDR {address}/{prefix} on {iface}"),
        ))?;
        nl.add_route(&default_route(config, index)).map_err(step(
            name,
            format_args!("RTM_NEWROUTE default via {gateway} on {iface}"),
        ))
    }
}

impl Drop for HalfMade {
    fn drop(&mut self) {
        if let Some(peer) = &self.peer {
            if let Err(e) = Netlink::open().and_then(|mut nl| nl.delete_link(peer)) {
                warn!("undo a half-made network: RTM_DELLINK {peer}: {e}");
            }
        }
        let shown = self.path.display();
        if self.mounted {
            if let Err(e) = mount::unmount(&self.path, UnmountFlags::DETACH) {
                warn!("undo a half-made network: unmount {shown}: {e}");
            }
        }
        if !self.path.as_os_str().is_empty() {
            if let Err(e) = fs::remove_file(&self.path) {
                warn!("undo a half-made network: remove {shown}: {e}");
            }
        }
    }
}

/// Puts the calling thread back into the network namespace it holds, on
/// [`Return::restore`] or, on an early return, when dropped.
struct Return<'a>(Option<BorrowedFd<'a>>);

impl Return<'_> {
    fn restore(mut self) -> io::Result<()> {
        match self.0.take() {
            Some(fd) => Ok(rthread::move_into_link_name_space(
                fd,
                Some(LinkNameSpaceType::Network),
            )?),
            None => Ok(()),
        }
    }
}

impl Drop for Return<'_> {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            if let Err(e) = rthread::move_into_link_name_space(fd, Some(LinkNameSpaceType::Network))
            {
                error!("cannot return to PID 1's network namespace: {e}");
            }
        }
    }
}

/// Removes `container`'s network namespace and the VM's end of its veth
/// pair (which takes the container's end with it). What is already gone is
/// no error, so it is safe for `host` containers and twice.
pub fn release_container(container: &str) -> Result<(), NetError> {
    let name = Some(container);
    let peer = peer_name(container);
    let path = netns_path(container);
    let shown = path.display();
    // Every step is tried; the first failure is the one reported.
    let deleted = match Netlink::open().and_then(|mut nl| nl.delete_link(&peer)) {
        Err(e) if e.raw_os_error() != Some(libc::ENODEV) => {
            Err(step(name, format_args!("RTM_DELLINK {peer}"))(e))
        }
        _ => Ok(()),
    };
    let unmounted = match mount::unmount(&path, UnmountFlags::DETACH) {
        Err(e) if e != Errno::INVAL && e != Errno::NOENT => {
            Err(step(name, format_args!("unmount {shown}"))(e.into()))
        }
        _ => Ok(()),
    };
    let removed = match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(step(name, format_args!("remove {shown}"))(e))
        }
        _ => Ok(()),
    };
    deleted.and(unmounted).and(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names_fit_an_interface_name_and_stay_distinct() {
        assert_eq!(peer_name("web"), "vh-web");
        assert_eq!(peer_name("twelve-chars"), "vh-twelve-chars");
        let long = peer_name("database-primary");
        let other = peer_name("database-replica");
        assert_eq!(long.len(), 15, "{long}");
        assert!(long.starts_with("vh-data"), "{long}");
        assert!(long[7..].bytes().all(|b| b.is_ascii_hexdigit()), "{long}");
        assert_ne!(long, other);
        // Fixed by the name alone (release_container recomputes it).
        assert_eq!(peer_name("database-primary"), long);
    }

    #[test]
    fn uplink_is_the_first_ethernet_interface_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, kind) in [
            ("lo", "772"),
            ("eth1", "1"),
            ("eth0", "1\n"),
            ("sit0", "776"),
        ] {
            fs::create_dir(dir.path().join(name)).expect("mkdir");
            fs::write(dir.path().join(name).join("type"), kind).expect("write");
        }
        assert_eq!(find_uplink(dir.path()).expect("found"), "eth0");
        fs::remove_dir_all(dir.path().join("eth0")).expect("rm");
        fs::remove_dir_all(dir.path().join("eth1")).expect("rm");
        let err = find_uplink(dir.path()).expect_err("no ethernet");
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }

    #[test]
    fn errors_name_the_container_and_the_operation() {
        let (addr, prefix) = (Ipv4Addr::new(10, 0, 2, 31), 24);
        let e = step(
            Some("web"),
            format_args!("RTM_NEWADDR {addr}/{prefix} on eth0"),
        )(io::Error::from_raw_os_error(libc::EEXIST));
        let text = e.to_string();
        assert!(
            text.starts_with(
                "network of container web: RTM_NEWADDR 10.0.2.31/24 on eth0: File exists"
            ),
            "{text}"
        );
        let e = step(None, format_args!("SIOCGIFINDEX eth0"))(io::Error::from_raw_os_error(
            libc::ENODEV,
        ));
        assert!(e
            .to_string()
            .starts_with("network uplink: SIOCGIFINDEX eth0: No such device"));
    }
}
