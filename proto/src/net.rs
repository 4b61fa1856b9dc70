//! Networking as `hafen build` plans it and PID 1 carries it out: the
//! subnet's fixed addresses, each container's mode, address, names and
//! published ports, and the `/etc/hosts` and `/etc/resolv.conf` each
//! container sees.
//!
//! The VM's NIC sits on QEMU's user networking (slirp), whose addresses are
//! fixed by the subnet: the gateway is `.2`, the DNS forwarder `.3`, and the
//! VM takes `.15`. Containers get addresses in the same subnet, so a host
//! forward can point straight at a container.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where [`NetworkConfig`] lives in the guest, as JSON (written by
/// `hafen build` into the initramfs).
pub const NETWORK_CONFIG: &str = "/etc/hafen/network.json";

/// Per-container network files, `NET_DIR/NAME/{hosts,resolv.conf,hostname}`
/// ([`container_files`]), written by `hafen build` into the initramfs and
/// bind-mounted into the container.
pub const NET_DIR: &str = "/etc/hafen/net";

/// `NETNS_DIR/NAME` is a container's network namespace, made by PID 1.
pub const NETNS_DIR: &str = "/run/hafen/netns";

/// The subnet slirp uses unless the manifest says otherwise.
pub const DEFAULT_SUBNET: Subnet = Subnet {
    network: Ipv4Addr::new(10, 0, 2, 0),
    prefix: 24,
};

/// The MTU of the VM's NIC and the containers' interfaces unless the
/// manifest says otherwise: slirp's own.
pub const DEFAULT_MTU: u32 = 1500;

/// The smallest MTU accepted (IPv4's minimum).
pub const MIN_MTU: u32 = 68;

/// The largest MTU accepted: slirp's interface MTU, which a larger guest
/// MTU would only make the guest send frames slirp drops.
pub const MAX_MTU: u32 = 1500;

/// The address a `none` container's own hostname resolves to (Debian's
/// convention for a host without a network address).
pub const NO_NETWORK_HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);

/// Offsets from the network address that containers never get: slirp's
/// gateway (.2), DNS (.3), the VM (.15) and the rest of slirp's DHCP range
/// up to .30, plus the network address itself.
const RESERVED_LOW: u32 = 31;

/// Offset of the gateway (the host, as slirp presents it).
const GATEWAY_OFFSET: u32 = 2;
/// Offset of slirp's DNS forwarder.
const DNS_OFFSET: u32 = 3;
/// Offset of the VM's own address (slirp's first DHCP address).
const GUEST_OFFSET: u32 = 15;

/// The most specific prefix accepted: a /24 leaves 224 container addresses
/// after the reserved ones; a /25 would leave 96, a /27 none.
pub const MAX_PREFIX: u8 = 24;
/// The least specific prefix accepted.
pub const MIN_PREFIX: u8 = 8;

/// Everything PID 1 needs to set up the VM's and the containers' networking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The network address of slirp's subnet.
    pub subnet: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The VM's own address on its NIC.
    pub guest: Ipv4Addr,
    /// The default gateway (slirp's host side).
    pub gateway: Ipv4Addr,
    /// Slirp's DNS forwarder, used only when `outbound`.
    pub dns: Ipv4Addr,
    /// Whether the guest may open connections beyond the host.
    pub outbound: bool,
    /// MTU of the NIC and of every container's interface.
    pub mtu: u32,
    /// Every container, in the manifest's order.
    pub containers: Vec<ContainerNet>,
}

/// One container's networking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerNet {
    /// The container's name (also a name others reach it by).
    pub name: String,
    /// Which network stack it uses.
    pub mode: NetworkMode,
    /// Its own address: set for `bridge` containers only (a `host`
    /// container has the VM's, a `none` container none).
    pub address: Option<Ipv4Addr>,
    /// Its hostname (the manifest's `hostname`, default its name).
    pub hostname: String,
    /// Extra names other containers reach it by.
    pub aliases: Vec<String>,
    /// Ports published on the host.
    pub ports: Vec<PortMapping>,
}

impl ContainerNet {
    /// The address other containers and the host's forwards reach it at:
    /// its own for `bridge`, the VM's for `host`, none for `none`.
    pub fn reachable_at(&self, config: &NetworkConfig) -> Option<Ipv4Addr> {
        match self.mode {
            NetworkMode::Bridge => self.address,
            NetworkMode::Host => Some(config.guest),
            NetworkMode::None => None,
        }
    }
}

/// Which network stack a container uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own network namespace, with an address in the subnet.
    #[default]
    Bridge,
    /// The VM's network namespace.
    Host,
    /// Its own network namespace with loopback only.
    None,
}

impl NetworkMode {
    /// The manifest's word for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetworkMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bridge" => Ok(NetworkMode::Bridge),
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            _ => Err(format!(
                "unknown network mode {s:?}: expected \"bridge\", \"host\" or \"none\""
            )),
        }
    }
}

/// A transport protocol a port is published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The lowercase name docker and QEMU use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!(
                "unknown protocol {s:?}: expected \"tcp\" or \"udp\""
            )),
        }
    }
}

/// A port published on the host and forwarded to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// The host address the forward listens on (127.0.0.1 unless given).
    pub host_ip: Ipv4Addr,
    /// The host port.
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

/// The host address a published port binds to unless the spec gives one.
pub const DEFAULT_HOST_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// What a port spec is expected to look like.
pub const PORT_EXPECTED: &str =
    "[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], e.g. \"8080:80\" or \"127.0.0.1:5353:53/udp\"";

impl PortMapping {
    /// Whether the two cannot both be bound on the host: the same protocol
    /// and port on the same address, or on any address when either is the
    /// wildcard 0.0.0.0.
    pub fn clashes_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip == other.host_ip
                || self.host_ip.is_unspecified()
                || other.host_ip.is_unspecified())
    }
}

impl fmt::Display for PortMapping {
    /// Docker's `ps` form: `127.0.0.1:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}->{}/{}",
            self.host_ip, self.host_port, self.container_port, self.protocol
        )
    }
}

fn parse_port(s: &str, what: &str, spec: &str) -> Result<u16, String> {
    if s.contains('-') {
        return Err(format!(
            "{spec:?}: port ranges are not supported: publish each port on its own"
        ));
    }
    match s.parse::<u16>() {
        Ok(0) => Err(format!("{spec:?}: the {what} must be 1-65535, not 0")),
        Ok(port) => Ok(port),
        Err(_) => Err(format!(
            "{spec:?}: the {what} {s:?} is not a number from 1 to 65535 (expected {PORT_EXPECTED})"
        )),
    }
}

impl FromStr for PortMapping {
    type Err = String;

    /// Docker's `-p` forms, with a host port always given.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (ports, protocol) = match spec.rsplit_once('/') {
            Some((ports, proto)) => (
                ports,
                proto
                    .parse()
                    .map_err(|e: String| format!("{spec:?}: {e}"))?,
            ),
            None => (spec, Protocol::Tcp),
        };
        if ports.contains('[') || ports.matches(':').count() > 2 {
            return Err(format!(
                "{spec:?}: IPv6 host addresses are not supported (the VM's network is IPv4 only)"
            ));
        }
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host_port, container_port) = match parts[..] {
            [single] => {
                return Err(format!(
                "{spec:?} gives no host port: write HOST_PORT:{single} (e.g. \"8080:{single}\"); \
                     Hafen does not pick host ports"
            ))
            }
            [host_port, container_port] => (DEFAULT_HOST_IP, host_port, container_port),
            [ip, host_port, container_port] => {
                let ip = ip.parse::<Ipv4Addr>().map_err(|_| {
                    format!("{spec:?}: {ip:?} is not an IPv4 address (expected {PORT_EXPECTED})")
                })?;
                (ip, host_port, container_port)
            }
            _ => {
                return Err(format!(
                    "{spec:?} is not a port spec: expected {PORT_EXPECTED}"
                ))
            }
        };
        if host_port.is_empty() {
            return Err(format!(
                "{spec:?} gives no host port: write one before the container port; \
                 Hafen does not pick host ports"
            ));
        }
        Ok(PortMapping {
            host_ip,
            host_port: parse_port(host_port, "host port", spec)?,
            container_port: parse_port(container_port, "container port", spec)?,
            protocol,
        })
    }
}

/// A subnet for the VM's user networking, and the fixed addresses in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// A subnet from its network address and prefix length; refuses host
    /// bits in the address and prefixes outside /8../24 (a longer one
    /// leaves too few addresses for containers).
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(format!(
                "{network}/{prefix}: the prefix must be from /{MIN_PREFIX} to /{MAX_PREFIX} \
                 (addresses .0-.30 are slirp's, so a longer prefix leaves too few for containers)"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        let bits = u32::from(network);
        if bits & !mask != 0 {
            return Err(format!(
                "{network}/{prefix} has host bits set: did you mean {}/{prefix}?",
                Ipv4Addr::from(bits & mask)
            ));
        }
        Ok(Subnet { network, prefix })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + offset)
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// The gateway: the host as slirp presents it (`.2`).
    pub fn gateway(&self) -> Ipv4Addr {
        self.at(GATEWAY_OFFSET)
    }

    /// Slirp's DNS forwarder (`.3`).
    pub fn dns(&self) -> Ipv4Addr {
        self.at(DNS_OFFSET)
    }

    /// The VM's own address (`.15`).
    pub fn guest(&self) -> Ipv4Addr {
        self.at(GUEST_OFFSET)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        self.at(self.size() - 1)
    }

    /// How many addresses containers can get: all but `.0`-`.30` and the
    /// broadcast.
    pub fn container_capacity(&self) -> u32 {
        self.size() - RESERVED_LOW - 1
    }

    /// The `index`th container address (`index < container_capacity()`).
    fn container_address(&self, index: u32) -> Ipv4Addr {
        self.at(RESERVED_LOW + index)
    }

    /// Whether `addr` is one containers may get.
    pub fn is_container_address(&self, addr: Ipv4Addr) -> bool {
        let offset = u32::from(addr).wrapping_sub(u32::from(self.network));
        (RESERVED_LOW..self.size() - 1).contains(&offset)
    }
}

impl Default for Subnet {
    fn default() -> Self {
        DEFAULT_SUBNET
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    /// `A.B.C.D/P`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} is not a subnet: expected A.B.C.D/PREFIX, e.g. \"10.0.2.0/24\"")
        })?;
        let network = addr
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix = prefix
            .parse::<u8>()
            .map_err(|_| format!("{s:?}: {prefix:?} is not a prefix length"))?;
        Subnet::new(network, prefix)
    }
}

/// FNV-1a, 32 bits: a hash fixed by its definition, so an address derived
/// from it is the same on every host and every build of Hafen (std's
/// hasher promises neither).
fn name_hash(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Gives every `bridge` container an address in `subnet` and clears the
/// others'.
///
/// A container's address comes from a hash of its name, so it is the same on
/// every boot of the same manifest, and adding, removing or reordering
/// other containers does not move it — unless their names land on the same
/// address: then the one declared first keeps it and the next takes the
/// following free address (linear probing in declared order), so removing
/// the first moves the second back to its own. Fails only when there are
/// more bridge containers than addresses.
pub fn assign_addresses(subnet: &Subnet, containers: &mut [ContainerNet]) -> Result<(), String> {
    let capacity = subnet.container_capacity();
    let mut taken = HashSet::new();
    for container in containers.iter_mut() {
        container.address = None;
        if container.mode != NetworkMode::Bridge {
            continue;
        }
        if taken.len() as u64 >= u64::from(capacity) {
            return Err(format!(
                "subnet {subnet} has room for {capacity} containers with their own address; \
                 {:?} would be one more (choose a shorter prefix)",
                container.name
            ));
        }
        let mut index = name_hash(&container.name) % capacity;
        while !taken.insert(index) {
            index = (index + 1) % capacity;
        }
        container.address = Some(subnet.container_address(index));
    }
    Ok(())
}

impl NetworkConfig {
    /// The plan for `containers` on `subnet`: slirp's fixed addresses, and
    /// each bridge container's address ([`assign_addresses`]).
    pub fn new(
        subnet: Subnet,
        outbound: bool,
        mtu: u32,
        mut containers: Vec<ContainerNet>,
    ) -> Result<Self, String> {
        assign_addresses(&subnet, &mut containers)?;
        Ok(NetworkConfig {
            subnet: subnet.network(),
            prefix: subnet.prefix(),
            guest: subnet.guest(),
            gateway: subnet.gateway(),
            dns: subnet.dns(),
            outbound,
            mtu,
            containers,
        })
    }

    /// The container called `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerNet> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Every published port with the address its forward points at, in
    /// declared order (a `none` container publishes nothing).
    pub fn published(&self) -> Vec<PublishedPort> {
        self.containers
            .iter()
            .filter_map(|c| c.reachable_at(self).map(|address| (c, address)))
            .flat_map(|(c, address)| {
                c.ports.iter().map(move |port| PublishedPort {
                    container: c.name.clone(),
                    address,
                    port: *port,
                })
            })
            .collect()
    }
}

/// A port `hafen run` forwards: the container it belongs to, the guest
/// address the forward points at and the mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    /// The container's name.
    pub container: String,
    /// The container's address (the VM's for a `host` container).
    pub address: Ipv4Addr,
    /// Host address and port, container port and protocol.
    pub port: PortMapping,
}

fn hosts_line(out: &mut String, addr: Ipv4Addr, names: &[&str]) {
    let mut seen: Vec<&str> = Vec::with_capacity(names.len());
    for name in names {
        if !seen.contains(name) {
            seen.push(name);
        }
    }
    out.push_str(&format!("{addr}\t{}\n", seen.join(" ")));
}

/// The `/etc/hosts` container `name` sees: localhost; its own hostname and
/// name on its own address; every other reachable container's name and
/// aliases on the address it is reached at (`host` containers on the
/// VM's). A `none` container sees only localhost and its own hostname and
/// name on 127.0.1.1; `none` containers are in nobody else's file.
pub fn hosts_file(config: &NetworkConfig, name: &str) -> String {
    let mut out = String::new();
    hosts_line(&mut out, Ipv4Addr::LOCALHOST, &["localhost"]);
    let Some(me) = config.container(name) else {
        return out;
    };
    let own = me.reachable_at(config).unwrap_or(NO_NETWORK_HOST_ADDRESS);
    hosts_line(&mut out, own, &[&me.hostname, &me.name]);
    if me.mode == NetworkMode::None {
        return out;
    }
    for other in config.containers.iter().filter(|c| c.name != name) {
        if let Some(addr) = other.reachable_at(config) {
            let mut names = vec![other.name.as_str()];
            names.extend(other.aliases.iter().map(String::as_str));
            hosts_line(&mut out, addr, &names);
        }
    }
    out
}

/// The files container `container` finds at `/etc/NAME` for each NAME here:
/// its `hosts`, `resolv.conf` and `hostname`.
pub fn container_files(
    config: &NetworkConfig,
    container: &ContainerNet,
) -> [(&'static str, String); 3] {
    [
        ("hosts", hosts_file(config, &container.name)),
        ("resolv.conf", resolv_conf(config)),
        ("hostname", [&container.hostname, "\n"].concat()),
    ]
}

/// The `/etc/resolv.conf` every container sees: slirp's DNS forwarder when
/// outbound traffic is allowed; otherwise no nameserver at all, as the
/// only names there are come from `/etc/hosts`.
pub fn resolv_conf(config: &NetworkConfig) -> String {
    if config.outbound {
        format!("nameserver {}\n", config.dns)
    } else {
        "# no outbound network: names come from /etc/hosts only\n".to_owned()
    }
}

/// Whether `name` is a valid hostname (RFC 1123): dot-separated labels of
/// 1-63 letters, digits and '-', not starting or ending with '-', 253
/// characters at most.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(s: &str) -> PortMapping {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bridge(name: &str) -> ContainerNet {
        ContainerNet {
            name: name.to_owned(),
            mode: NetworkMode::Bridge,
            address: None,
            hostname: name.to_owned(),
            aliases: vec![],
            ports: vec![],
        }
    }

    fn with_mode(name: &str, mode: NetworkMode) -> ContainerNet {
        ContainerNet {
            mode,
            ..bridge(name)
        }
    }

    fn addresses(subnet: &Subnet, names: &[&str]) -> Vec<(String, Ipv4Addr)> {
        let mut containers: Vec<_> = names.iter().map(|n| bridge(n)).collect();
        assign_addresses(subnet, &mut containers).expect("assign");
        containers
            .into_iter()
            .map(|c| (c.name, c.address.expect("bridge has an address")))
            .collect()
    }

    #[test]
    fn port_specs_in_dockers_forms_parse() {
        assert_eq!(
            port("8080:80"),
            PortMapping {
                host_ip: Ipv4Addr::LOCALHOST,
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(
            port("127.0.0.1:5353:53/udp"),
            PortMapping {
                host_ip: Ipv4Addr::LOCALHOST,
                host_port: 5353,
                container_port: 53,
                protocol: Protocol::Udp
            }
        );
        assert_eq!(
            port("0.0.0.0:80:80/tcp"),
            PortMapping {
                host_ip: Ipv4Addr::UNSPECIFIED,
                host_port: 80,
                container_port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(port("65535:1/udp").host_port, 65535);
    }

    #[test]
    fn port_mappings_display_as_docker_ps_does_and_parse_back() {
        let p = port("5353:53/udp");
        assert_eq!(p.to_string(), "127.0.0.1:5353->53/udp");
        assert_eq!(port("0.0.0.0:80:8080").to_string(), "0.0.0.0:80->8080/tcp");
        let again = format!(
            "{}:{}:{}/{}",
            p.host_ip, p.host_port, p.container_port, p.protocol
        );
        assert_eq!(port(&again), p);
    }

    #[test]
    fn bad_port_specs_are_refused_with_the_reason() {
        let cases = [
            ("80", "no host port"),
            ("80/udp", "no host port"),
            ("127.0.0.1::80", "no host port"),
            (":80", "no host port"),
            ("", "no host port"),
            ("8080:", "container port"),
            ("0:80", "not 0"),
            ("8080:0", "not 0"),
            ("65536:80", "not a number"),
            ("http:80", "not a number"),
            ("-1:80", "ranges"),
            ("8000-8010:80-90", "ranges"),
            ("8080:80/sctp", "unknown protocol"),
            ("8080:80/", "unknown protocol"),
            ("8080:80/TCP", "unknown protocol"),
            ("localhost:8080:80", "not an IPv4 address"),
            ("1.2.3:8080:80", "not an IPv4 address"),
            ("[::1]:8080:80", "IPv6"),
            ("::1:8080:80", "IPv6"),
            ("a:b:c:d", "IPv6"),
            (" 8080:80", "not a number"),
        ];
        for (spec, want) in cases {
            let err = spec.parse::<PortMapping>().expect_err(spec);
            assert!(err.contains(want), "{spec:?}: {err:?} lacks {want:?}");
            assert!(
                err.contains(&format!("{spec:?}")),
                "{spec:?}: {err:?} does not quote it"
            );
        }
    }

    #[test]
    fn port_clashes_include_the_wildcard_address() {
        let a = port("8080:80");
        assert!(a.clashes_with(&port("127.0.0.1:8080:81")));
        assert!(a.clashes_with(&port("0.0.0.0:8080:80")));
        assert!(port("0.0.0.0:8080:80").clashes_with(&port("10.1.1.1:8080:80")));
        assert!(!a.clashes_with(&port("8080:80/udp")));
        assert!(!a.clashes_with(&port("8081:80")));
        assert!(!a.clashes_with(&port("127.0.0.2:8080:80")));
    }

    #[test]
    fn modes_and_protocols_round_trip_through_their_names() {
        for mode in [NetworkMode::Bridge, NetworkMode::Host, NetworkMode::None] {
            assert_eq!(mode.to_string().parse::<NetworkMode>(), Ok(mode));
            let json = serde_json::to_string(&mode).expect("json");
            assert_eq!(json, format!("\"{mode}\""));
        }
        assert!("Bridge".parse::<NetworkMode>().is_err());
        assert_eq!(
            serde_json::to_string(&Protocol::Udp).expect("json"),
            "\"udp\""
        );
    }

    #[test]
    fn subnet_gives_slirps_fixed_addresses() {
        let s: Subnet = "10.0.2.0/24".parse().expect("subnet");
        assert_eq!(s, DEFAULT_SUBNET);
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(s.dns(), Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(s.guest(), Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 0, 2, 255));
        assert_eq!(s.container_capacity(), 224);
        let s: Subnet = "192.168.0.0/16".parse().expect("subnet");
        assert_eq!(s.guest(), Ipv4Addr::new(192, 168, 0, 15));
        assert_eq!(s.broadcast(), Ipv4Addr::new(192, 168, 255, 255));
        assert_eq!(s.to_string(), "192.168.0.0/16");
    }

    #[test]
    fn bad_subnets_are_refused() {
        for (text, want) in [
            ("10.0.2.0/25", "prefix"),
            ("10.0.2.0/32", "prefix"),
            ("10.0.0.0/7", "prefix"),
            ("10.0.2.1/24", "did you mean 10.0.2.0/24"),
            ("10.0.2.0", "expected A.B.C.D/PREFIX"),
            ("10.0.2/24", "not an IPv4 address"),
            ("10.0.2.0/x", "not a prefix length"),
            ("10.0.2.0/300", "not a prefix length"),
        ] {
            let err = text.parse::<Subnet>().expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn container_addresses_avoid_slirps_and_the_broadcast() {
        let s = DEFAULT_SUBNET;
        let names: Vec<String> = (0..224).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let got = addresses(&s, &refs);
        let distinct: HashSet<_> = got.iter().map(|(_, a)| *a).collect();
        assert_eq!(distinct.len(), 224, "every address used once");
        for (_, addr) in &got {
            let last = addr.octets()[3];
            assert!((31..=254).contains(&last), "{addr}");
            assert!(s.is_container_address(*addr));
        }
        assert!(!s.is_container_address(s.guest()));
        assert!(!s.is_container_address(s.broadcast()));
        assert!(!s.is_container_address(Ipv4Addr::new(10, 0, 3, 40)));

        let mut one_too_many: Vec<_> = refs.iter().map(|n| bridge(n)).collect();
        one_too_many.push(bridge("extra"));
        let err = assign_addresses(&s, &mut one_too_many).expect_err("full");
        assert!(err.contains("\"extra\"") && err.contains("224"), "{err}");
    }

    #[test]
    fn addresses_stay_put_when_another_container_is_added_or_removed() {
        let s = DEFAULT_SUBNET;
        let before = addresses(&s, &["web", "api", "db"]);
        let added = addresses(&s, &["cache", "web", "api", "worker", "db"]);
        for (name, addr) in &before {
            let again = added.iter().find(|(n, _)| n == name).expect("still there");
            assert_eq!(again.1, *addr, "{name} moved when others were added");
        }
        let removed = addresses(&s, &["db", "web"]);
        for (name, addr) in &removed {
            let was = before.iter().find(|(n, _)| n == name).expect("was there");
            assert_eq!(was.1, *addr, "{name} moved when api was removed");
        }
        // Addresses are a function of the name, fixed across builds: this
        // guards against a change of hash moving every container.
        assert_eq!(
            addresses(&s, &["web"])[0].1,
            s.container_address(name_hash("web") % 224)
        );
        assert_eq!(name_hash(""), 0x811c_9dc5);
        assert_eq!(name_hash("a"), 0xe40c_292c);
    }

    #[test]
    fn colliding_names_probe_to_the_next_address_in_declared_order() {
        let s = DEFAULT_SUBNET;
        // Find two names landing on the same address.
        let home = |n: &str| name_hash(n) % s.container_capacity();
        let first = "c0";
        let second = (1..10_000)
            .map(|i| format!("c{i}"))
            .find(|n| home(n) == home(first))
            .expect("a collision among 10000 names");
        let both = addresses(&s, &[first, &second]);
        assert_eq!(both[0].1, s.container_address(home(first)));
        assert_eq!(both[1].1, s.container_address((home(first) + 1) % 224));
        let alone = addresses(&s, &[&second]);
        assert_eq!(
            alone[0].1, both[0].1,
            "without the first, the second takes its own"
        );
    }

    #[test]
    fn only_bridge_containers_get_an_address() {
        let mut containers = vec![
            bridge("a"),
            with_mode("b", NetworkMode::Host),
            ContainerNet {
                address: Some(Ipv4Addr::new(1, 2, 3, 4)),
                ..with_mode("c", NetworkMode::None)
            },
        ];
        assign_addresses(&DEFAULT_SUBNET, &mut containers).expect("assign");
        assert!(containers[0].address.is_some());
        assert_eq!(containers[1].address, None);
        assert_eq!(containers[2].address, None);
    }

    fn sample() -> NetworkConfig {
        let mut web = bridge("web");
        web.hostname = "www-1".into();
        web.aliases = vec!["www".into(), "frontend".into()];
        let mut proxy = with_mode("proxy", NetworkMode::Host);
        proxy.aliases = vec!["edge".into()];
        NetworkConfig::new(
            DEFAULT_SUBNET,
            false,
            DEFAULT_MTU,
            vec![
                web,
                bridge("api"),
                proxy,
                with_mode("batch", NetworkMode::None),
            ],
        )
        .expect("config")
    }

    #[test]
    fn hosts_files_list_every_reachable_container() {
        let c = sample();
        let web = c.container("web").and_then(|w| w.address).expect("web");
        let api = c.container("api").and_then(|w| w.address).expect("api");
        assert_eq!(
            hosts_file(&c, "web"),
            format!("127.0.0.1\tlocalhost\n{web}\twww-1 web\n{api}\tapi\n10.0.2.15\tproxy edge\n")
        );
        assert_eq!(
            hosts_file(&c, "api"),
            format!(
                "127.0.0.1\tlocalhost\n{api}\tapi\n{web}\tweb www frontend\n10.0.2.15\tproxy edge\n"
            )
        );
        assert_eq!(
            hosts_file(&c, "proxy"),
            format!(
                "127.0.0.1\tlocalhost\n10.0.2.15\tproxy\n{web}\tweb www frontend\n{api}\tapi\n"
            )
        );
    }

    #[test]
    fn none_containers_see_only_themselves_and_nobody_sees_them() {
        let c = sample();
        assert_eq!(
            hosts_file(&c, "batch"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tbatch\n"
        );
        for name in ["web", "api", "proxy"] {
            assert!(!hosts_file(&c, name).contains("batch"), "{name}");
        }
        assert_eq!(hosts_file(&c, "nobody"), "127.0.0.1\tlocalhost\n");
    }

    #[test]
    fn resolv_conf_names_slirps_dns_only_when_outbound() {
        let mut c = sample();
        let closed = resolv_conf(&c);
        assert!(!closed.contains("nameserver"), "{closed}");
        assert!(closed.starts_with('#'));
        c.outbound = true;
        assert_eq!(resolv_conf(&c), "nameserver 10.0.2.3\n");
    }

    #[test]
    fn published_ports_point_at_the_container_or_the_vm() {
        let mut c = sample();
        c.containers[0].ports = vec![port("8080:80"), port("5353:53/udp")];
        c.containers[2].ports = vec![port("9000:9000")];
        let web = c.containers[0].address.expect("web");
        let got = c.published();
        assert_eq!(
            got.iter()
                .map(|p| (p.container.as_str(), p.address, p.port.to_string()))
                .collect::<Vec<_>>(),
            [
                ("web", web, "127.0.0.1:8080->80/tcp".to_owned()),
                ("web", web, "127.0.0.1:5353->53/udp".to_owned()),
                ("proxy", c.guest, "127.0.0.1:9000->9000/tcp".to_owned()),
            ]
        );
    }

    #[test]
    fn network_config_round_trips_through_json() {
        let mut c = sample();
        c.containers[0].ports = vec![port("8080:80"), port("0.0.0.0:5353:53/udp")];
        let json = serde_json::to_string(&c).expect("json");
        assert!(json.contains("\"mode\":\"bridge\""), "{json}");
        assert!(json.contains("\"protocol\":\"udp\""), "{json}");
        assert!(json.contains("\"subnet\":\"10.0.2.0\""), "{json}");
        let back: NetworkConfig = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, c);
    }

    #[test]
    fn hostnames_follow_rfc_1123() {
        for good in [
            "web",
            "a",
            "web-1",
            "www.example.org",
            "0web",
            &"a".repeat(63),
        ] {
            assert!(valid_hostname(good), "{good}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "we_b",
            "web.",
            ".web",
            "a..b",
            "wéb",
            &"a".repeat(64),
        ] {
            assert!(!valid_hostname(bad), "{bad}");
        }
    }
}
