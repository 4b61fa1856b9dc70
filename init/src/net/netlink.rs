//! rtnetlink by hand: the few `NETLINK_ROUTE` requests PID 1 makes (links
//! up, MTU, a veth pair with one end in another namespace, IPv4 addresses
//! and routes). A netlink crate would add hundreds of KiB to the static init
//! for this; each request here is a header, one fixed struct and a few
//! attributes, and every request asks for an acknowledgement whose errno is
//! the answer.
//!
//! A socket talks to the network namespace it was opened in, whatever the
//! calling thread joins later.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{self, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

// Message types and flags (linux/netlink.h, linux/rtnetlink.h).
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// `NLMSG_HDRLEN`: `struct nlmsghdr` (len, type, flags, seq, port id).
const HEADER: usize = 16;

// Attributes (linux/if_link.h, linux/veth.h, linux/if_addr.h).
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

const AF_INET: u8 = 2;
const IFF_UP: u32 = 1;
const RT_TABLE_MAIN: u8 = 254;
/// `RTPROT_BOOT`, what `ip route add` uses.
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// An IPv4 route in the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination network (`0.0.0.0` with `prefix` 0 for the default route).
    pub dst: Ipv4Addr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Next hop; `None` for a route straight out of `oif` (scope link).
    pub gateway: Option<Ipv4Addr>,
    /// Outgoing interface index.
    pub oif: u32,
}

/// One request under construction: header, fixed struct, attributes, each
/// padded to 4 bytes (`NLMSG_ALIGN`, `RTA_ALIGN`).
struct Message(Vec<u8>);

impl Message {
    fn new(kind: u16, flags: u16) -> Message {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&[0; 4]); // length, set by finish
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        b.extend_from_slice(&[0; 8]); // sequence number (set when sent), port id
        Message(b)
    }

    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        self.0.resize(align(self.0.len()), 0);
    }

    /// Starts an attribute whose payload follows; [`Message::end`] sets its length.
    fn begin(&mut self, kind: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&kind.to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self.0.resize(align(self.0.len()), 0);
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let at = self.begin(kind);
        self.0.extend_from_slice(data);
        self.end(at);
    }

    /// A NUL-terminated string attribute (interface names).
    fn name(&mut self, kind: u16, name: &str) {
        let at = self.begin(kind);
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0);
        self.end(at);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// `struct ifinfomsg`: family (unspec), type, index, flags, which flags change.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Sets a link up (or down) and, with `mtu`, its MTU.
pub(crate) fn set_link(index: u32, up: bool, mtu: Option<u32>) -> Vec<u8> {
    let mut m = Message::new(RTM_SETLINK, 0);
    m.push(&ifinfomsg(index, if up { IFF_UP } else { 0 }, IFF_UP));
    if let Some(mtu) = mtu {
        m.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    m.finish()
}

/// Creates a veth pair, both ends down with MTU `mtu`: `name` here, `peer`
/// in the network namespace `peer_ns` refers to. (Neither end can be
/// brought up in the same request: the kernel opens the peer before the
/// pair is linked, and a veth without its peer refuses with ENOTCONN.)
pub(crate) fn new_veth(name: &str, peer: &str, peer_ns: i32, mtu: u32) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    m.push(&ifinfomsg(0, 0, 0));
    m.name(IFLA_IFNAME, name);
    m.attr(IFLA_MTU, &mtu.to_ne_bytes());
    let info = m.begin(IFLA_LINKINFO);
    m.attr(IFLA_INFO_KIND, b"veth");
    let data = m.begin(IFLA_INFO_DATA);
    let end = m.begin(VETH_INFO_PEER);
    m.push(&ifinfomsg(0, 0, 0));
    m.name(IFLA_IFNAME, peer);
    m.attr(IFLA_MTU, &mtu.to_ne_bytes());
    m.attr(IFLA_NET_NS_FD, &peer_ns.to_ne_bytes());
    m.end(end);
    m.end(data);
    m.end(info);
    m.finish()
}

/// Deletes the link named `name` (and, for a veth, its peer).
pub(crate) fn delete_link(name: &str) -> Vec<u8> {
    let mut m = Message::new(RTM_DELLINK, 0);
    m.push(&ifinfomsg(0, 0, 0));
    m.name(IFLA_IFNAME, name);
    m.finish()
}

/// Adds `addr/prefix` to link `index`.
pub(crate) fn new_address(index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    // struct ifaddrmsg: family, prefix length, flags, scope, index.
    let mut ifa = [AF_INET, prefix, 0, RT_SCOPE_UNIVERSE, 0, 0, 0, 0];
    ifa[4..].copy_from_slice(&index.to_ne_bytes());
    m.push(&ifa);
    m.attr(IFA_LOCAL, &addr.octets());
    m.attr(IFA_ADDRESS, &addr.octets());
    m.finish()
}

/// Adds `route` to the main table.
pub(crate) fn new_route(route: &Route) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    let scope = match route.gateway {
        Some(_) => RT_SCOPE_UNIVERSE,
        None => RT_SCOPE_LINK,
    };
    // struct rtmsg: family, dst len, src len, tos, table, protocol, scope,
    // type, flags (u32).
    m.push(&[
        AF_INET,
        route.prefix,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        scope,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ]);
    if route.prefix > 0 {
        m.attr(RTA_DST, &route.dst.octets());
    }
    if let Some(gateway) = route.gateway {
        m.attr(RTA_GATEWAY, &gateway.octets());
    }
    m.attr(RTA_OIF, &route.oif.to_ne_bytes());
    m.finish()
}

/// Looks for the acknowledgement of request `seq` among the messages in
/// `buf`: `None` when it is not there (another request's answer), else the
/// request's outcome.
pub(crate) fn parse_ack(mut buf: &[u8], seq: u32) -> Option<io::Result<()>> {
    let bad = || Some(Err(io::Error::from(Errno::PROTO)));
    while buf.len() >= HEADER {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < HEADER || len > buf.len() {
            return bad();
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let got = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if kind == NLMSG_ERROR && got == seq {
            if len < HEADER + 4 {
                return bad();
            }
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return Some(match code {
                0 => Ok(()),
                _ => Err(io::Error::from_raw_os_error(code.saturating_neg())),
            });
        }
        buf = buf.get(align(len)..).unwrap_or_default();
    }
    None
}

/// A `NETLINK_ROUTE` socket in the network namespace it was opened in.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a socket to the calling thread's current network namespace.
    pub fn open() -> io::Result<Netlink> {
        // NETLINK_ROUTE is protocol 0, which rustix spells `None`.
        let fd = net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok(Netlink { fd, seq: 0 })
    }

    /// The index of the link called `name` in this socket's namespace.
    pub fn index(&self, name: &str) -> io::Result<u32> {
        // SIOCGIFINDEX on a netlink socket looks in the socket's namespace.
        Ok(net::netdevice::name_to_index(&self.fd, name)?)
    }

    /// Sets link `index` up (or down) and, with `mtu`, its MTU.
    pub fn set_link(&mut self, index: u32, up: bool, mtu: Option<u32>) -> io::Result<()> {
        self.request(set_link(index, up, mtu))
    }

    /// Creates a veth pair, both ends down: `name` in this socket's
    /// namespace, `peer` in the namespace `peer_ns` refers to.
    pub fn new_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
        mtu: u32,
    ) -> io::Result<()> {
        self.request(new_veth(name, peer, peer_ns.as_raw_fd(), mtu))
    }

    /// Deletes the link called `name`.
    pub fn delete_link(&mut self, name: &str) -> io::Result<()> {
        self.request(delete_link(name))
    }

    /// Adds the address `addr/prefix` to link `index`.
    pub fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        self.request(new_address(index, addr, prefix))
    }

    /// Adds `route` to the main routing table.
    pub fn add_route(&mut self, route: &Route) -> io::Result<()> {
        self.request(new_route(route))
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, mut msg: Vec<u8>) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        msg[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        retry(|| net::send(&self.fd, &msg, SendFlags::empty()))?;
        // An error answer quotes the request, so this is ample.
        let mut buf = [0u8; 4096];
        loop {
            let (n, _) = retry(|| net::recv(&self.fd, &mut buf[..], RecvFlags::empty()))?;
            if let Some(outcome) = parse_ack(&buf[..n], self.seq) {
                return outcome;
            }
        }
    }
}

fn retry<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the header fields (length, type, flags, seq) of `msg`.
    fn header(msg: &[u8]) -> (u32, u16, u16, u32) {
        (
            u32::from_ne_bytes(msg[0..4].try_into().expect("header field")),
            u16::from_ne_bytes(msg[4..6].try_into().expect("header field")),
            u16::from_ne_bytes(msg[6..8].try_into().expect("header field")),
            u32::from_ne_bytes(msg[8..12].try_into().expect("header field")),
        )
    }

    /// Attribute bytes: length, type, payload, padding.
    fn rta(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize(align(v.len()), 0);
        v
    }

    #[test]
    fn set_link_encodes_flags_change_and_mtu() {
        let msg = set_link(7, true, Some(1500));
        assert_eq!(
            header(&msg),
            (40, RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 0)
        );
        let mut want = vec![0, 0, 0, 0];
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&1u32.to_ne_bytes()); // IFF_UP set
        want.extend_from_slice(&1u32.to_ne_bytes()); // and only IFF_UP changes
        want.extend(rta(IFLA_MTU, &1500u32.to_ne_bytes()));
        assert_eq!(&msg[16..], &want[..]);

        // Down, without an MTU: the flag is still in the change mask.
        let msg = set_link(7, false, None);
        assert_eq!(msg.len(), 32);
        assert_eq!(&msg[24..32], &[0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn address_message_is_exact() {
        let msg = new_address(3, Ipv4Addr::new(10, 0, 2, 15), 24);
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        assert_eq!(header(&msg), (40, RTM_NEWADDR, flags, 0));
        let mut want = vec![AF_INET, 24, 0, 0];
        want.extend_from_slice(&3u32.to_ne_bytes());
        want.extend(rta(IFA_LOCAL, &[10, 0, 2, 15]));
        want.extend(rta(IFA_ADDRESS, &[10, 0, 2, 15]));
        assert_eq!(&msg[16..], &want[..]);
    }

    #[test]
    fn device_route_has_link_scope_and_no_gateway() {
        let msg = new_route(&Route {
            dst: Ipv4Addr::new(10, 0, 2, 31),
            prefix: 32,
            gateway: None,
            oif: 9,
        });
        assert_eq!(msg.len(), 16 + 12 + 8 + 8);
        assert_eq!(
            &msg[16..28],
            &[
                AF_INET,
                32,
                0,
                0,
                RT_TABLE_MAIN,
                RTPROT_BOOT,
                RT_SCOPE_LINK,
                RTN_UNICAST,
                0,
                0,
                0,
                0
            ]
        );
        assert_eq!(&msg[28..36], &rta(RTA_DST, &[10, 0, 2, 31])[..]);
        assert_eq!(&msg[36..44], &rta(RTA_OIF, &9u32.to_ne_bytes())[..]);
    }

    #[test]
    fn default_route_has_gateway_and_no_destination() {
        let msg = new_route(&Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            oif: 2,
        });
        assert_eq!(msg.len(), 16 + 12 + 8 + 8);
        assert_eq!(msg[17], 0); // dst len
        assert_eq!(msg[22], RT_SCOPE_UNIVERSE);
        assert_eq!(&msg[28..36], &rta(RTA_GATEWAY, &[10, 0, 2, 2])[..]);
        assert_eq!(&msg[36..44], &rta(RTA_OIF, &2u32.to_ne_bytes())[..]);
    }

    #[test]
    fn names_are_nul_terminated_and_padded() {
        // "eth0\0" is 5 bytes: attribute length 9, padded to 12.
        let msg = delete_link("eth0");
        assert_eq!(msg.len(), 16 + 16 + 12);
        assert_eq!(&msg[32..44], &rta(IFLA_IFNAME, b"eth0\0")[..]);
        assert_eq!(u16::from_ne_bytes([msg[32], msg[33]]), 9);
        assert_eq!(&msg[41..44], &[0, 0, 0]);
    }

    #[test]
    fn veth_nests_the_peer_inside_linkinfo() {
        let msg = new_veth("eth0", "vh-web", 5, 1400);
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let mtu = rta(IFLA_MTU, &1400u32.to_ne_bytes());
        let mut peer = ifinfomsg(0, 0, 0).to_vec();
        peer.extend(rta(IFLA_IFNAME, b"vh-web\0"));
        peer.extend(&mtu);
        peer.extend(rta(IFLA_NET_NS_FD, &5i32.to_ne_bytes()));
        let mut info = rta(IFLA_INFO_KIND, b"veth");
        info.extend(rta(IFLA_INFO_DATA, &rta(VETH_INFO_PEER, &peer)));
        let mut want = ifinfomsg(0, 0, 0).to_vec();
        want.extend(rta(IFLA_IFNAME, b"eth0\0"));
        want.extend(&mtu);
        want.extend(rta(IFLA_LINKINFO, &info));
        assert_eq!(
            header(&msg),
            (16 + want.len() as u32, RTM_NEWLINK, flags, 0)
        );
        assert_eq!(&msg[16..], &want[..]);
        // The nest lengths: peer = 4 + 16 + 12 + 8 + 8; data = 4 + peer; info = 4 + 8 + data.
        let at = 16 + 16 + 12 + 8;
        assert_eq!(
            u16::from_ne_bytes([msg[at], msg[at + 1]]),
            4 + 8 + 4 + 4 + 44
        );
    }

    fn answer(seq: u32, code: i32, quoted: usize) -> Vec<u8> {
        let len = HEADER + 4 + quoted;
        let mut v = (len as u32).to_ne_bytes().to_vec();
        v.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&code.to_ne_bytes());
        v.resize(len, 0xaa);
        v.resize(align(len), 0);
        v
    }

    /// The outcome `parse_ack` finds, errors as their errno.
    fn outcome(buf: &[u8], seq: u32) -> Option<Result<(), Option<i32>>> {
        parse_ack(buf, seq).map(|r| r.map_err(|e| e.raw_os_error()))
    }

    #[test]
    fn ack_and_errno_of_the_right_sequence_number() {
        assert_eq!(outcome(&answer(4, 0, 16), 4), Some(Ok(())));
        assert_eq!(
            outcome(&answer(4, -libc::EEXIST, 16), 4),
            Some(Err(Some(libc::EEXIST)))
        );
        // A stale answer for another request is skipped, then ours is found
        // (the stale one's odd length is padded).
        let mut two = answer(3, -libc::ENODEV, 21);
        two.extend(answer(4, -libc::EPERM, 0));
        assert_eq!(outcome(&two, 4), Some(Err(Some(libc::EPERM))));
        assert_eq!(outcome(&answer(3, 0, 0), 4), None);
        assert_eq!(outcome(&[], 4), None);
    }

    #[test]
    fn truncated_answers_are_protocol_errors() {
        let mut short = answer(4, 0, 0);
        short[0] = 200; // claims more than there is
        assert_eq!(outcome(&short, 4), Some(Err(Some(libc::EPROTO))));
        let mut tiny = answer(4, 0, 0);
        tiny[0] = 16; // an error message without its code
        assert_eq!(outcome(&tiny, 4), Some(Err(Some(libc::EPROTO))));
    }
}
