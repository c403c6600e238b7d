//! A small rtnetlink client: exactly the requests the agent needs (addresses, link
//! facts, neighbours) and a notification monitor, in-process, so a takeover never
//! waits for a fork/exec of `ip`.
//!
//! Messages are built and parsed by `netlink-packet-route`/`netlink-packet-core`, sent
//! on a `netlink-sys` socket, synchronously: the agent calls this from its loop and from
//! a std thread. Every reply is awaited with a timeout ([`REPLY_TIMEOUT`]): a kernel that
//! does not answer is an error, never a hang. (The kernel handles a request inside
//! send(2) itself, under the RTNL lock, so the send is not bounded by the timeout; the
//! answer is queued by the time it returns.) Errors the kernel reports carry its
//! extended-ack text when it gives one (see [`KernelError`]).

use std::{
    fmt, io,
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use netlink_packet_core::{
    DecodeError, DoneBuffer, DoneMessage, ErrorBuffer, ErrorMessage, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlasIterator, Parseable, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressMessage, CacheInfo},
    link::{LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage, LinkXdp, XdpAttached},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sys::{socket::sockopt::ReceiveTimeout, time::TimeVal};

use crate::mac::Mac;

/// How long one request waits for each of the kernel's replies.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one request may take in all (a dump is many replies).
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(5);
/// Enough for any one datagram the kernel sends on a route socket.
const RECV_BUFFER: usize = 64 * 1024;
/// NLMSGERR_ATTR_MSG: the kernel's text in an extended ack.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Length of struct nlmsghdr.
const NLMSG_HDRLEN: usize = 16;
/// RTNLGRP_LINK (1), RTNLGRP_IPV4_IFADDR (5), RTNLGRP_IPV4_ROUTE (7),
/// RTNLGRP_IPV6_IFADDR (9), RTNLGRP_IPV6_ROUTE (11), as a bind mask.
const MONITOR_GROUPS: u32 = (1 << 0) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 10);
/// The lifetime the kernel reads as "forever".
const INFINITY_LIFE_TIME: u32 = u32::MAX;

static SEQ: AtomicU32 = AtomicU32::new(1);

/// What the agent needs to know of a link.
#[derive(Debug, Clone, Default)]
pub struct LinkInfo {
    pub name: String,
    pub mac: Option<Mac>,
    /// Driver kind from IFLA_LINKINFO ("veth", "bridge", ...); None for physical NICs.
    pub kind: Option<String>,
    /// IFLA_LINK: for a veth, the peer's ifindex (in `link_netnsid`'s namespace).
    pub link: Option<u32>,
    pub link_netnsid: Option<i32>,
    /// RFC 2863 operational state (6 = up).
    pub operstate: Option<u8>,
    /// IFLA_XDP: a program is attached in native (driver) mode.
    pub xdp_native: bool,
    /// IFLA_XDP: a program is attached in generic (skb) mode.
    pub xdp_generic: bool,
    /// IFLA_MTU.
    pub mtu: Option<u32>,
}

/// An error the kernel answered a request with: the errno and, when the kernel gave one,
/// the text of its extended ack ("ipv4: Invalid prefix length", ...).
///
/// Requests return it inside an `io::Error` whose kind is the errno's; use [`errno`] to
/// read the errno back (`io::Error::raw_os_error` is None for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    pub errno: i32,
    pub message: Option<String>,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = io::Error::from_raw_os_error(self.errno);
        match &self.message {
            Some(m) => write!(f, "{os}: {m}"),
            None => write!(f, "{os}"),
        }
    }
}

impl std::error::Error for KernelError {}

impl From<KernelError> for io::Error {
    fn from(e: KernelError) -> io::Error {
        io::Error::new(io::Error::from_raw_os_error(e.errno).kind(), e)
    }
}

/// The errno of an error from this module: the kernel's answer, or the socket's.
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<KernelError>())
            .map(|k| k.errno)
    })
}

/// One netlink request/response exchange at a time, on its own socket.
pub struct Netlink {
    sock: Socket,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        Self::open_with_timeout(REPLY_TIMEOUT)
    }

    fn open_with_timeout(timeout: Duration) -> io::Result<Self> {
        let sock = route_socket()?;
        // Ask for extended acks so errors carry the kernel's reason when it has one.
        sock.set_ext_ack(true)?;
        nix::sys::socket::setsockopt(&sock, ReceiveTimeout, &TimeVal::from(timeval(timeout)))?;
        Ok(Netlink { sock })
    }

    /// Adds `addr/prefix` to the interface; idempotent (replaces an identical address).
    /// IPv6 addresses are added without duplicate address detection so a takeover is
    /// not delayed, and no prefix route is created for either family. IPv6 ones are
    /// also deprecated (preferred lifetime 0, valid forever): the kernel's source
    /// address selection (RFC 6724 rule 8, longest match) would otherwise pick the
    /// /128 VIP as the source of every connection the node opens into the subnet, and
    /// those connections would break at the next failover. A deprecated address still
    /// takes incoming traffic and is the source of the replies, as a /32 IPv4 VIP is.
    pub fn add_address(&self, ifindex: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let msg = RouteNetlinkMessage::NewAddress(addr_msg(ifindex, addr, prefix));
        self.exchange(msg, NLM_F_CREATE | NLM_F_REPLACE).map(|_| ())
    }

    /// Removes `addr/prefix` from the interface; absent already is not an error.
    pub fn del_address(&self, ifindex: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let msg = RouteNetlinkMessage::DelAddress(addr_msg(ifindex, addr, prefix));
        match self.exchange(msg, 0) {
            Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT)) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Puts the host route `addr/prefix` into `table` as a blackhole of protocol
    /// [`ROUTE_PROTOCOL`]; idempotent. Such a route only marks what the BGP speaker
    /// exports: no rule points at the table, so it never forwards on this host.
    pub fn add_route(&self, table: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let msg = RouteNetlinkMessage::NewRoute(route_msg(table, addr, prefix));
        self.exchange(msg, NLM_F_CREATE | NLM_F_REPLACE).map(|_| ())
    }

    /// Takes the host route `addr/prefix` out of `table`; absent already is not an
    /// error.
    pub fn del_route(&self, table: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let msg = RouteNetlinkMessage::DelRoute(route_msg(table, addr, prefix));
        match self.exchange(msg, 0) {
            Err(e) if matches!(errno(&e), Some(libc::ESRCH) | Some(libc::ENOENT)) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Every route of `table` (both families): (destination, prefix length).
    pub fn routes(&self, table: u32) -> io::Result<Vec<(IpAddr, u8)>> {
        self.dump_routes(|r| {
            let t = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(r.header.table as u32);
            t == table
        })
    }

    /// The destinations of the routes of both families that `keep` takes.
    fn dump_routes(&self, keep: impl Fn(&RouteMessage) -> bool) -> io::Result<Vec<(IpAddr, u8)>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = family;
            let replies = self.exchange(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
            out.extend(replies.into_iter().filter_map(|r| match r {
                Ok(RouteNetlinkMessage::NewRoute(r)) if keep(&r) => destination(&r),
                _ => None,
            }));
        }
        Ok(out)
    }

    /// Makes the stack accept every address of `addr/len` as its own without an
    /// address on any device: a `local` route of protocol [`ROUTE_PROTOCOL`] in the
    /// local table, through `ifindex` (lo), as `ip route add local ADDR/LEN dev lo
    /// table local proto 99` does ("AnyIP"). The kernel delivers packets to it and
    /// sends from it as from an address; IPv4 binds to it, IPv6 only with
    /// `IPV6_FREEBIND` (or `net.ipv6.ip_nonlocal_bind`): its bind checks addresses.
    /// Its ARP code (with `arp_ignore = 1`) and its neighbour discovery answer only
    /// for addresses on the receiving interface, so never for this. Unlike an
    /// address, it is one FIB insert whatever the number already there (an address
    /// costs time growing with the device's list: 9.6 s for 20,000 on lo against
    /// 0.24 s as /32 routes), and one route carries a whole run of VIPs
    /// (`addresses::cover`). Added beside the kernel's own local route of an
    /// address (an earlier version's), never over it; idempotent.
    pub fn add_local_route(&self, ifindex: u32, addr: IpAddr, len: u8) -> io::Result<()> {
        let msg = RouteNetlinkMessage::NewRoute(local_route_msg(ifindex, addr, len));
        match self.exchange(msg, NLM_F_CREATE) {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Undoes [`Self::add_local_route`] of exactly `addr/len` (the kernel's route of an
    /// address, of another protocol, stays); absent already is not an error. True if
    /// it was there.
    pub fn del_local_route(&self, ifindex: u32, addr: IpAddr, len: u8) -> io::Result<bool> {
        let msg = RouteNetlinkMessage::DelRoute(local_route_msg(ifindex, addr, len));
        match self.exchange(msg, 0) {
            Err(e) if matches!(errno(&e), Some(libc::ESRCH) | Some(libc::ENOENT)) => Ok(false),
            r => r.map(|_| true),
        }
    }

    /// The prefixes of our local routes ([`Self::add_local_route`]) in the local
    /// table, both families: what a killed agent left. Protocol 99 in the local table
    /// is vip's alone.
    pub fn local_routes(&self) -> io::Result<Vec<(IpAddr, u8)>> {
        self.dump_routes(is_ours)
    }

    /// Empties `table` (both families); returns how many routes it removed.
    pub fn flush_routes(&self, table: u32) -> io::Result<usize> {
        let routes = self.routes(table)?;
        for (a, p) in &routes {
            self.del_route(table, *a, *p)?;
        }
        Ok(routes.len())
    }

    /// Facts about a link, in our namespace or (with `netnsid`) in a peer namespace.
    pub fn link(&self, ifindex: u32, netnsid: Option<i32>) -> io::Result<LinkInfo> {
        let replies = self.exchange(
            RouteNetlinkMessage::GetLink(link_request(ifindex, netnsid)),
            0,
        )?;
        let mut undecodable = None;
        for r in replies {
            match r {
                Ok(RouteNetlinkMessage::NewLink(m)) => return Ok(link_info(&m)),
                Ok(_) => {}
                Err(e) => undecodable = Some(e),
            }
        }
        Err(match undecodable {
            Some(e) => io::Error::new(io::ErrorKind::InvalidData, format!("link {ifindex}: {e}")),
            None => io::Error::new(io::ErrorKind::NotFound, "no link in reply"),
        })
    }

    /// Where the kernel sends a packet to `addr` (`ip route get`): the output
    /// interface and the gateway (None: `addr` is on-link there). None when there
    /// is no route.
    pub fn route_to(&self, addr: IpAddr) -> io::Result<Option<(u32, Option<IpAddr>)>> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(addr);
        m.header.destination_prefix_length = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(addr)));
        let replies = match self.exchange(RouteNetlinkMessage::GetRoute(m), 0) {
            Err(e)
                if matches!(
                    errno(&e),
                    Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)
                ) =>
            {
                return Ok(None)
            }
            r => r?,
        };
        for r in replies.into_iter().filter_map(Result::ok) {
            let RouteNetlinkMessage::NewRoute(r) = r else {
                continue;
            };
            let mut oif = None;
            let mut gateway = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => {
                        gateway = Some(IpAddr::V4(*g))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => {
                        gateway = Some(IpAddr::V6(*g))
                    }
                    _ => {}
                }
            }
            if let Some(oif) = oif {
                return Ok(Some((oif, gateway)));
            }
        }
        Ok(None)
    }

    /// The usable IPv4 neighbours on `ifindex` (address and MAC), in one dump: the
    /// kernel's neighbour table, as `ip neigh show dev` lists it.
    pub fn neighbours_v4(&self, ifindex: u32) -> io::Result<Vec<(IpAddr, Mac)>> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Inet;
        req.header.ifindex = ifindex;
        let replies = self.exchange(RouteNetlinkMessage::GetNeighbour(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in replies.into_iter().filter_map(Result::ok) {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            // NUD_INCOMPLETE | NUD_FAILED | NUD_NOARP carry no usable address.
            let state = u16::from(n.header.state);
            if n.header.ifindex != ifindex || state & (0x01 | 0x20 | 0x40) != 0 {
                continue;
            }
            let mut dst = None;
            let mut ll = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        dst = Some(IpAddr::V4(*a))
                    }
                    NeighbourAttribute::LinkLayerAddress(v) if v.len() == 6 => {
                        ll = Mac::try_from(&v[..]).ok()
                    }
                    _ => {}
                }
            }
            if let (Some(dst), Some(ll)) = (dst, ll) {
                out.push((dst, ll));
            }
        }
        Ok(out)
    }

    /// Has the interface take frames to `mac` besides its own (`bridge fdb add MAC dev
    /// IF self permanent`: the kernel adds it to the device's unicast filter, or puts
    /// a device without one in promiscuous mode); idempotent. A group's virtual MAC
    /// needs it: a NIC drops the frames to it before XDP sees them otherwise.
    pub fn add_unicast_mac(&self, ifindex: u32, mac: Mac) -> io::Result<()> {
        let msg = RouteNetlinkMessage::NewNeighbour(fdb_msg(ifindex, mac));
        match self.exchange(msg, NLM_F_CREATE) {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Undoes [`Self::add_unicast_mac`]; absent already is not an error. True if
    /// it was there (what `vip agent --cleanup` reports).
    pub fn del_unicast_mac(&self, ifindex: u32, mac: Mac) -> io::Result<bool> {
        let msg = RouteNetlinkMessage::DelNeighbour(fdb_msg(ifindex, mac));
        match self.exchange(msg, 0) {
            Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::EADDRNOTAVAIL)) => {
                Ok(false)
            }
            r => r.map(|_| true),
        }
    }

    /// Sends one request and collects the replies up to the ack (or DONE for dumps).
    /// A reply that does not decode is kept as its decode error.
    fn exchange(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<Result<RouteNetlinkMessage, DecodeError>>> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let buf = encode(msg, NLM_F_REQUEST | NLM_F_ACK | flags, seq);
        loop {
            match self.sock.send(&buf, 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map(|_| ())?,
            }
        }
        self.replies(seq, flags & NLM_F_DUMP == NLM_F_DUMP)
    }

    /// Receives the replies to request `seq`; each recv waits at most the socket's
    /// receive timeout, the whole exchange at most [`EXCHANGE_DEADLINE`].
    fn replies(
        &self,
        seq: u32,
        dump: bool,
    ) -> io::Result<Vec<Result<RouteNetlinkMessage, DecodeError>>> {
        let deadline = Instant::now() + EXCHANGE_DEADLINE;
        let mut out = Vec::new();
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            if Instant::now() > deadline {
                return Err(timed_out());
            }
            let n = match self.sock.recv(&mut &mut buf[..], 0) {
                Ok(n) => n.min(buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
                Err(e) => return Err(e),
            };
            for (header, raw) in messages(&buf[..n])? {
                if header.sequence_number != seq {
                    continue; // a late answer to an earlier, abandoned request
                }
                match header.message_type {
                    NLMSG_ERROR => match parse_error(&header, raw)? {
                        None if dump => continue,
                        None => return Ok(out),
                        Some(e) => return Err(e.into()),
                    },
                    NLMSG_DONE => {
                        return match parse_done(&header, raw) {
                            Some(e) => Err(e.into()),
                            None => Ok(out),
                        }
                    }
                    _ => out.push(
                        NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw).and_then(
                            |m| match m.payload {
                                NetlinkPayload::InnerMessage(inner) => Ok(inner),
                                other => Err(format!("unexpected payload {other:?}").into()),
                            },
                        ),
                    ),
                }
            }
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "rtnetlink: the kernel did not answer in time",
    )
}

fn timeval(d: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    }
}

/// The routing protocol number vip's announced routes carry (`ip route show proto
/// 99`): not one of the kernel's or a known daemon's, so no other daemon takes them
/// for its own.
pub const ROUTE_PROTOCOL: u8 = 99;

/// The kernel's local table (`ip route show table local`): where its own routes of
/// local addresses live, and where it looks to tell a local address.
const RT_TABLE_LOCAL: u8 = 255;

/// A device's own forwarding entry for `mac` (AF_BRIDGE, NTF_SELF, permanent): its
/// unicast address list.
fn fdb_msg(ifindex: u32, mac: Mac) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    m
}

fn route_msg(table: u32, addr: IpAddr, prefix: u8) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.destination_prefix_length = prefix;
    // Tables above 255 go in the attribute; the header's byte says "see it".
    m.header.table = if table < 256 {
        table as u8
    } else {
        RouteHeader::RT_TABLE_UNSPEC
    };
    m.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    m.header.kind = RouteType::BlackHole;
    m.attributes.push(RouteAttribute::Table(table));
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(addr)));
    m
}

/// True if `r` is one of our local routes (protocol 99 in the local table).
fn is_ours(r: &RouteMessage) -> bool {
    r.header.table == RT_TABLE_LOCAL
        && r.header.kind == RouteType::Local
        && r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
}

/// A route's destination prefix.
fn destination(r: &RouteMessage) -> Option<(IpAddr, u8)> {
    let len = r.header.destination_prefix_length;
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some((IpAddr::V4(*a), len)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some((IpAddr::V6(*a), len)),
        _ => None,
    })
}

/// Our local route for `addr/len` (see [`Netlink::add_local_route`]).
fn local_route_msg(ifindex: u32, addr: IpAddr, len: u8) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(addr);
    m.header.destination_prefix_length = len;
    m.header.table = RT_TABLE_LOCAL;
    m.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    m.header.scope = RouteScope::Host;
    m.header.kind = RouteType::Local;
    m.attributes.push(RouteAttribute::Destination(match addr {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }));
    m.attributes.push(RouteAttribute::Oif(ifindex));
    m
}

/// A NETLINK_ROUTE socket (close-on-exec, as netlink-sys opens them).
fn route_socket() -> io::Result<Socket> {
    Socket::new(NETLINK_ROUTE)
}

/// One request, serialized.
fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// Splits a datagram into its messages: each header with its whole message's bytes.
fn messages(mut data: &[u8]) -> io::Result<Vec<(NetlinkHeader, &[u8])>> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let nb = NetlinkBuffer::new_checked(data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}")))?;
        let len = nb.length() as usize;
        let header = NetlinkHeader::parse(&nb)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}")))?;
        out.push((header, &data[..len]));
        data = &data[align4(len).min(data.len())..];
    }
    Ok(out)
}

/// An NLMSG_ERROR message: None for an ack, else the kernel's error.
fn parse_error(header: &NetlinkHeader, raw: &[u8]) -> io::Result<Option<KernelError>> {
    let body = &raw[NLMSG_HDRLEN..];
    let err = ErrorBuffer::new_checked(&body)
        .and_then(|b| ErrorMessage::parse(&b))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}")))?;
    Ok(err.code.map(|code| KernelError {
        errno: -code.get(),
        message: ext_ack_message(header.flags, &err.header),
    }))
}

/// An NLMSG_DONE closing a dump: Some error if the dump failed part-way.
fn parse_done(header: &NetlinkHeader, raw: &[u8]) -> Option<KernelError> {
    let body = &raw[NLMSG_HDRLEN..];
    if body.len() < 4 {
        return None;
    }
    let done = DoneBuffer::new_checked(&body)
        .and_then(|b| DoneMessage::parse(&b))
        .ok()?;
    (done.code < 0).then(|| KernelError {
        errno: -done.code,
        message: (header.flags & NLM_F_ACK_TLVS != 0)
            .then(|| ack_tlv_message(&done.extended_ack))
            .flatten(),
    })
}

/// The text of an extended ack: after the error code, struct nlmsgerr holds the
/// request's header (and its payload unless the kernel capped it), then the TLVs.
fn ext_ack_message(flags: u16, echoed: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let len = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes(echoed.get(0..4)?.try_into().ok()?) as usize
    };
    ack_tlv_message(echoed.get(align4(len)..)?)
}

fn ack_tlv_message(tlvs: &[u8]) -> Option<String> {
    NlasIterator::new(tlvs)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let v = nla.value();
            String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(&[])).into_owned()
        })
        .filter(|s| !s.is_empty())
}

/// What the kernel reports about the interfaces the monitor watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An address was removed from one of the watched interfaces (by us, an operator,
    /// or the kernel flushing IPv6 addresses when the link goes down).
    AddressRemoved { ifindex: u32, addr: IpAddr },
    /// One of vip's local routes (protocol 99 in the local table) was removed, by us
    /// or an operator.
    LocalRouteRemoved { addr: IpAddr, len: u8 },
    /// The main link's state: carrier, and its MAC (when the notification has it).
    Link { up: bool, mac: Option<Mac> },
    /// Notifications were lost (a burst, or one that did not decode): everything may
    /// have changed.
    Resync,
}

/// A subscription to the kernel's link notifications for one interface and address
/// notifications for a set of interfaces (the main one, `lo` where VIPs live, ...).
///
/// Unlike [`Netlink`], its socket has no receive timeout: [`Monitor::next`] is meant to
/// block a thread of its own until something happens.
pub struct Monitor {
    sock: Socket,
    link_ifindex: u32,
    addr_ifindexes: Vec<u32>,
}

impl Monitor {
    /// Watches `link_ifindex`'s up/down state and the addresses removed from any of
    /// `addr_ifindexes`.
    pub fn open(link_ifindex: u32, addr_ifindexes: &[u32]) -> io::Result<Self> {
        let mut sock = route_socket()?;
        sock.bind(&SocketAddr::new(0, MONITOR_GROUPS))?;
        Ok(Monitor {
            sock,
            link_ifindex,
            addr_ifindexes: addr_ifindexes.to_vec(),
        })
    }

    /// Blocks until the kernel reports something; returns what concerns our interfaces
    /// (possibly nothing). Lost notifications (ENOBUFS) are reported as a Resync.
    pub fn next(&self) -> io::Result<Vec<Change>> {
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            match self.sock.recv(&mut &mut buf[..], 0) {
                Ok(n) => {
                    return Ok(parse_changes(
                        &buf[..n.min(buf.len())],
                        self.link_ifindex,
                        &self.addr_ifindexes,
                    ))
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(vec![Change::Resync])
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn parse_changes(data: &[u8], link_ifindex: u32, addr_ifindexes: &[u32]) -> Vec<Change> {
    let mut out = Vec::new();
    let Ok(msgs) = messages(data) else {
        return vec![Change::Resync];
    };
    for (header, raw) in msgs {
        let ty = header.message_type;
        if ty != libc::RTM_NEWLINK && ty != libc::RTM_DELADDR && ty != libc::RTM_DELROUTE {
            continue;
        }
        let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) {
            Ok(m) => m,
            Err(e) => {
                // It may have been about us: treat it as lost.
                log::debug!("undecodable rtnetlink notification (type {ty}): {e}");
                if out.last() != Some(&Change::Resync) {
                    out.push(Change::Resync);
                }
                continue;
            }
        };
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => {
                let ifindex = m.header.index;
                if !addr_ifindexes.contains(&ifindex) {
                    continue;
                }
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(a) | AddressAttribute::Address(a) => Some(*a),
                    _ => None,
                });
                if let Some(addr) = addr {
                    out.push(Change::AddressRemoved { ifindex, addr });
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(m)) if is_ours(&m) => {
                if let Some((addr, len)) = destination(&m) {
                    out.push(Change::LocalRouteRemoved { addr, len });
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m))
                if m.header.index == link_ifindex =>
            {
                // IFF_UP and IFF_LOWER_UP (carrier).
                let f = m.header.flags;
                let mac = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(v) if v.len() == 6 => Mac::try_from(&v[..]).ok(),
                    _ => None,
                });
                out.push(Change::Link {
                    up: f.contains(LinkFlags::Up) && f.contains(LinkFlags::LowerUp),
                    mac,
                });
            }
            _ => {}
        }
    }
    out
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn addr_msg(ifindex: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(addr);
    m.header.prefix_len = prefix;
    m.header.index = ifindex;
    m.attributes.push(AddressAttribute::Local(addr));
    m.attributes.push(AddressAttribute::Address(addr));
    m.attributes.push(AddressAttribute::Flags(
        AddressFlags::Nodad | AddressFlags::Noprefixroute,
    ));
    if addr.is_ipv6() {
        // Preferred 0 (deprecated), valid forever.
        let mut info = CacheInfo::default();
        info.ifa_preferred = 0;
        info.ifa_valid = INFINITY_LIFE_TIME;
        m.attributes.push(AddressAttribute::CacheInfo(info));
    }
    m
}

fn link_request(ifindex: u32, netnsid: Option<i32>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    if let Some(id) = netnsid {
        // IFLA_TARGET_NETNSID (the uapi's IFLA_IF_NETNSID).
        m.attributes.push(LinkAttribute::IfNetnsId(id));
    }
    m
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo::default();
    for a in &m.attributes {
        match a {
            LinkAttribute::Address(v) if v.len() == 6 => info.mac = Mac::try_from(&v[..]).ok(),
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Mtu(m) => info.mtu = Some(*m),
            LinkAttribute::Link(l) => info.link = Some(*l),
            LinkAttribute::LinkNetNsId(id) => info.link_netnsid = Some(*id),
            LinkAttribute::OperState(s) => info.operstate = Some(u8::from(*s)),
            LinkAttribute::Xdp(xdp) => {
                for x in xdp {
                    match x {
                        LinkXdp::Attached(XdpAttached::Driver) | LinkXdp::DrvProgId(_) => {
                            info.xdp_native = true
                        }
                        LinkXdp::Attached(XdpAttached::SocketBuffer) | LinkXdp::SkbProgId(_) => {
                            info.xdp_generic = true
                        }
                        _ => {}
                    }
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(k) = i {
                        info.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    info
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rtattrs of a message body, raw: (type, value).
    fn attrs(data: &[u8]) -> Vec<(u16, Vec<u8>)> {
        NlasIterator::new(data)
            .map(|n| n.unwrap())
            .map(|n| (n.kind(), n.value().to_vec()))
            .collect()
    }

    /// A request's body (after struct nlmsghdr), as the kernel receives it.
    fn body(msg: RouteNetlinkMessage) -> Vec<u8> {
        encode(msg, NLM_F_REQUEST | NLM_F_ACK, 9)[NLMSG_HDRLEN..].to_vec()
    }

    /// A message as the kernel sends it: nlmsghdr + body.
    fn kernel_msg(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m.resize(align4(m.len()), 0);
        m
    }

    fn nla(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut m = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(v);
        m.resize(align4(m.len()), 0);
        m
    }

    #[test]
    fn request_header() {
        let m = encode(
            RouteNetlinkMessage::NewAddress(addr_msg(7, "10.0.0.50".parse().unwrap(), 32)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            42,
        );
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), libc::RTM_NEWADDR);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 0x1 | 0x4 | 0x400 | 0x100);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 42);
    }

    #[test]
    fn addr_message_layout() {
        let m = body(RouteNetlinkMessage::NewAddress(addr_msg(
            7,
            "10.0.0.50".parse().unwrap(),
            32,
        )));
        assert_eq!(&m[0..4], &[libc::AF_INET as u8, 32, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[4..8].try_into().unwrap()), 7);
        let a = attrs(&m[8..]);
        assert_eq!(a[0], (libc::IFA_LOCAL, vec![10, 0, 0, 50]));
        assert_eq!(a[1], (libc::IFA_ADDRESS, vec![10, 0, 0, 50]));
        let flags = &a.iter().find(|(t, _)| *t == libc::IFA_FLAGS).unwrap().1;
        assert_eq!(
            u32::from_ne_bytes(flags[..].try_into().unwrap()),
            libc::IFA_F_NODAD | libc::IFA_F_NOPREFIXROUTE
        );
        assert!(a.iter().all(|(t, _)| *t != libc::IFA_CACHEINFO), "{a:?}");
        assert_eq!(a.len(), 3);
    }

    /// struct rtmsg of a run of IPv4 VIPs' local route: family, its prefix length,
    /// no source prefix, no TOS, table 255 (local), protocol 99, scope host (254),
    /// type local (2); then its destination and its device.
    #[test]
    fn local_route_layout() {
        let m = body(RouteNetlinkMessage::NewRoute(local_route_msg(
            1,
            "10.0.0.48".parse().unwrap(),
            29,
        )));
        assert_eq!(
            &m[0..8],
            &[libc::AF_INET as u8, 29, 0, 0, 255, ROUTE_PROTOCOL, 254, 2]
        );
        let a = attrs(&m[12..]);
        assert_eq!(
            a,
            [
                (libc::RTA_DST, vec![10, 0, 0, 48]),
                (libc::RTA_OIF, 1u32.to_ne_bytes().to_vec()),
            ]
        );
    }

    #[test]
    fn ipv6_vip_is_deprecated_and_valid_forever() {
        let m = body(RouteNetlinkMessage::NewAddress(addr_msg(
            7,
            "2001:db8::50".parse().unwrap(),
            128,
        )));
        assert_eq!(&m[0..4], &[libc::AF_INET6 as u8, 128, 0, 0]);
        let a = attrs(&m[8..]);
        let flags = &a.iter().find(|(t, _)| *t == libc::IFA_FLAGS).unwrap().1;
        let flags = u32::from_ne_bytes(flags[..].try_into().unwrap());
        assert_eq!(flags, libc::IFA_F_NODAD | libc::IFA_F_NOPREFIXROUTE);
        let info = &a.iter().find(|(t, _)| *t == libc::IFA_CACHEINFO).unwrap().1;
        let word = |i: usize| u32::from_ne_bytes(info[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(
            (info.len(), word(0), word(1), word(2), word(3)),
            (16, 0, u32::MAX, 0, 0)
        );
    }

    #[test]
    fn link_request_layout() {
        let m = body(RouteNetlinkMessage::GetLink(link_request(5, Some(3))));
        // struct ifinfomsg: family, pad, type, index, flags, change
        assert_eq!(m[0], libc::AF_UNSPEC as u8);
        assert_eq!(i32::from_ne_bytes(m[4..8].try_into().unwrap()), 5);
        assert_eq!(&m[8..16], &[0; 8]);
        assert_eq!(attrs(&m[16..]), vec![(46, 3i32.to_ne_bytes().to_vec())]);
        let m = body(RouteNetlinkMessage::GetLink(link_request(5, None)));
        assert_eq!(m.len(), 16);
    }

    #[test]
    fn link_reply_is_parsed() {
        // An RTM_NEWLINK for a veth whose peer is ifindex 9 in netns 2.
        let mut b = vec![libc::AF_UNSPEC as u8, 0];
        b.extend_from_slice(&1u16.to_ne_bytes()); // ARPHRD_ETHER
        b.extend_from_slice(&4i32.to_ne_bytes());
        b.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend(nla(libc::IFLA_IFNAME, b"eth0\0"));
        b.extend(nla(libc::IFLA_ADDRESS, &[2, 0, 0, 0, 0, 0xaa]));
        b.extend(nla(libc::IFLA_LINK, &9u32.to_ne_bytes()));
        b.extend(nla(libc::IFLA_LINK_NETNSID, &2i32.to_ne_bytes()));
        b.extend(nla(libc::IFLA_OPERSTATE, &[6]));
        // IFLA_XDP { IFLA_XDP_ATTACHED = XDP_ATTACHED_DRV, IFLA_XDP_PROG_ID = 42 }
        let mut xdp = nla(2, &[1]);
        xdp.extend(nla(4, &42u32.to_ne_bytes()));
        b.extend(nla(libc::IFLA_XDP, &xdp));
        b.extend(nla(
            libc::IFLA_LINKINFO,
            &nla(libc::IFLA_INFO_KIND, b"veth\0"),
        ));
        let raw = kernel_msg(libc::RTM_NEWLINK, 0, 1, &b);
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&raw).unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = m.payload else {
            panic!("{m:?}")
        };
        let info = link_info(&l);
        assert_eq!(info.name, "eth0");
        assert_eq!(
            info.mac,
            Some(Mac::try_from(&[2, 0, 0, 0, 0, 0xaa][..]).unwrap())
        );
        assert_eq!(info.kind.as_deref(), Some("veth"));
        assert_eq!(
            (info.link, info.link_netnsid, info.operstate),
            (Some(9), Some(2), Some(6))
        );
        assert!(info.xdp_native && !info.xdp_generic);
    }

    fn error_reply(code: i32, flags: u16, seq: u32, tlvs: &[u8]) -> Vec<u8> {
        // The request we "sent", echoed back whole (not capped).
        let request = encode(
            RouteNetlinkMessage::NewAddress(addr_msg(7, "10.0.0.50".parse().unwrap(), 33)),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
        );
        let mut b = code.to_ne_bytes().to_vec();
        b.extend_from_slice(&request);
        b.extend_from_slice(tlvs);
        kernel_msg(NLMSG_ERROR, flags, seq, &b)
    }

    #[test]
    fn extended_ack_text_goes_into_the_error() {
        let mut tlvs = nla(NLMSGERR_ATTR_MSG, b"ipv4: Invalid prefix length\0");
        tlvs.extend(nla(2, &20u32.to_ne_bytes())); // NLMSGERR_ATTR_OFFS
        let raw = error_reply(-libc::EINVAL, NLM_F_ACK_TLVS, 5, &tlvs);
        let msgs = messages(&raw).unwrap();
        assert_eq!(msgs.len(), 1);
        let e = parse_error(&msgs[0].0, msgs[0].1).unwrap().unwrap();
        assert_eq!(e.errno, libc::EINVAL);
        assert_eq!(e.message.as_deref(), Some("ipv4: Invalid prefix length"));
        let io: io::Error = e.into();
        assert_eq!(errno(&io), Some(libc::EINVAL));
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
        assert!(io.to_string().contains("Invalid prefix length"), "{io}");
    }

    #[test]
    fn capped_extended_ack_and_plain_errors() {
        // Capped: only the request's header is echoed.
        let mut b = (-libc::ENODEV).to_ne_bytes().to_vec();
        b.extend_from_slice(&kernel_msg(libc::RTM_NEWADDR, 5, 5, &[])[..NLMSG_HDRLEN]);
        b.extend(nla(NLMSGERR_ATTR_MSG, b"no such device\0"));
        let raw = kernel_msg(NLMSG_ERROR, NLM_F_ACK_TLVS | NLM_F_CAPPED, 5, &b);
        let (h, r) = messages(&raw).unwrap()[0];
        let e = parse_error(&h, r).unwrap().unwrap();
        assert_eq!(
            (e.errno, e.message.as_deref()),
            (libc::ENODEV, Some("no such device"))
        );
        // No TLVs: the errno alone, displayed as the OS error.
        let raw = error_reply(-libc::EEXIST, 0, 5, &[]);
        let (h, r) = messages(&raw).unwrap()[0];
        let e = parse_error(&h, r).unwrap().unwrap();
        assert_eq!(
            e,
            KernelError {
                errno: libc::EEXIST,
                message: None
            }
        );
        assert_eq!(
            e.to_string(),
            io::Error::from_raw_os_error(libc::EEXIST).to_string()
        );
        // An ack.
        let raw = error_reply(0, NLM_F_CAPPED, 5, &[]);
        let (h, r) = messages(&raw).unwrap()[0];
        assert_eq!(parse_error(&h, r).unwrap(), None);
    }

    fn deladdr(ifindex: u32, addr: IpAddr) -> Vec<u8> {
        let mut m = addr_msg(ifindex, addr, 32);
        m.attributes
            .retain(|a| matches!(a, AddressAttribute::Address(_)));
        let mut raw = encode(RouteNetlinkMessage::DelAddress(m), 0, 0);
        raw.truncate(u32::from_ne_bytes(raw[0..4].try_into().unwrap()) as usize);
        raw
    }

    fn newlink(ifindex: u32, flags: u32) -> Vec<u8> {
        let mut b = vec![libc::AF_UNSPEC as u8, 0];
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend(nla(libc::IFLA_IFNAME, b"x\0"));
        kernel_msg(libc::RTM_NEWLINK, 0, 0, &b)
    }

    #[test]
    fn monitor_reports_watched_interfaces_only() {
        let up = (libc::IFF_UP | libc::IFF_LOWER_UP) as u32;
        let v4: IpAddr = "10.0.0.50".parse().unwrap();
        let v6: IpAddr = "2001:db8::50".parse().unwrap();
        let mut data = Vec::new();
        data.extend(newlink(4, up));
        data.extend(newlink(5, up)); // not the main link
        data.extend(newlink(4, libc::IFF_UP as u32)); // up, no carrier
        data.extend(deladdr(1, v4)); // lo
        data.extend(deladdr(4, v6)); // main
        data.extend(deladdr(6, v4)); // unwatched
        let route = |m: RouteMessage| {
            let mut raw = encode(RouteNetlinkMessage::DelRoute(m), 0, 0);
            raw.truncate(u32::from_ne_bytes(raw[0..4].try_into().unwrap()) as usize);
            raw
        };
        data.extend(route(local_route_msg(1, "10.0.0.48".parse().unwrap(), 29)));
        let mut other = local_route_msg(1, "10.0.0.52".parse().unwrap(), 32);
        other.header.protocol = RouteProtocol::Kernel; // an address's own: not ours
        data.extend(route(other));
        data.extend(route(local_route_msg(
            1,
            "2001:db8::9:0".parse().unwrap(),
            112,
        )));
        assert_eq!(
            parse_changes(&data, 4, &[4, 1]),
            vec![
                Change::Link {
                    up: true,
                    mac: None
                },
                Change::Link {
                    up: false,
                    mac: None
                },
                Change::AddressRemoved {
                    ifindex: 1,
                    addr: v4
                },
                Change::AddressRemoved {
                    ifindex: 4,
                    addr: v6
                },
                Change::LocalRouteRemoved {
                    addr: "10.0.0.48".parse().unwrap(),
                    len: 29
                },
                Change::LocalRouteRemoved {
                    addr: "2001:db8::9:0".parse().unwrap(),
                    len: 112
                },
            ]
        );
    }

    #[test]
    fn undecodable_notifications_are_a_resync() {
        // An RTM_DELADDR too short for its struct ifaddrmsg.
        let data = kernel_msg(libc::RTM_DELADDR, 0, 0, &[libc::AF_INET as u8, 32]);
        assert_eq!(parse_changes(&data, 4, &[4]), vec![Change::Resync]);
        // A message claiming more bytes than the datagram holds.
        let mut data = newlink(4, 0);
        data[0] = 200;
        assert_eq!(parse_changes(&data, 4, &[4]), vec![Change::Resync]);
    }

    #[test]
    fn a_silent_kernel_is_a_timeout_not_a_hang() {
        // Nothing was sent, so nothing comes: the receive must give up.
        let nl = Netlink::open_with_timeout(Duration::from_millis(50)).unwrap();
        let t = Instant::now();
        let e = nl.replies(u32::MAX, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn loopback_link_is_read_from_the_kernel() {
        // RTM_GETLINK needs no privilege; lo exists in every namespace.
        let index = nix::net::if_::if_nametoindex("lo").unwrap();
        let info = Netlink::open().unwrap().link(index, None).unwrap();
        assert_eq!(info.name, "lo");
        assert_eq!(info.mac, Some(Mac::ZERO));
    }

    #[test]
    fn kernel_errors_carry_the_extended_ack() {
        // An impossible request, rejected before it touches anything: an IPv4 /33 on a
        // link that does not exist. Unprivileged, it is EPERM (no text) instead.
        let e = Netlink::open()
            .unwrap()
            .add_address(u32::MAX / 2, "192.0.2.1".parse().unwrap(), 33)
            .unwrap_err();
        eprintln!("kernel said: {e}");
        let k = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<KernelError>())
            .unwrap();
        if k.errno != libc::EPERM {
            assert!(k.message.is_some(), "{k:?}");
        }
    }
}
