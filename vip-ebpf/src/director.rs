//! The director of a balanced group: picks a member for each TCP/UDP packet to the
//! VIP and hands it over by rewriting the Ethernet destination (the member holds the
//! VIP on lo and answers the client directly).
//!
//! * A flow is keyed as the client sends it; the connection table keeps a flow on
//!   the member it started on while the member set changes, and the Maglev table
//!   (the same on every node) places new flows, and all flows after a director
//!   change.
//! * An ICMP error about a packet a member sent (unreachable, fragmentation needed
//!   or packet too big, time exceeded, parameter problem: `parse::is_icmp_error`)
//!   quotes that packet: the quoted header, swapped, is the client's flow, so the
//!   error reaches the member that holds it.
//! * Fragments carry no ports after the first: every fragment of a protocol we
//!   balance is hashed by addresses only (ports zero), so all fragments of a
//!   datagram reach one member. With a list of ports they cannot be told apart and
//!   stay local.
//! * A member's entry forwards to the director what a client sends it directly
//!   (its ARP cache names the member after a failover churned); see [`from_node`].
//!   A TCP segment of a connection the member holds it serves itself
//!   ([`holds_connection`]).
//! * Anycast (`BalanceConf::first_hop`): the router spreads the flows, and a new
//!   flow is pinned to the member that forwarded its first packet (or to this node,
//!   if the router handed it here); an unpinned segment of a connection this node
//!   holds is served here before the Maglev table guesses (a new director's table is
//!   empty).
//! * A node on another segment (`BalanceNode::tunnel`) is reached through IPIP
//!   (`tunnel`), both ways: the director to such a member, a member to such a
//!   director; what comes out of the tunnel counts as sent by a node.

use aya_ebpf::{
    bindings::{
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, BPF_F_CURRENT_NETNS,
    },
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp},
    programs::XdpContext,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use vip_common::{
    balance_maps::{self, MAX_BALANCED_GROUPS, MAX_MEMBERS, WORDS},
    flags,
    flow::{flow_hash_v4, flow_hash_v6},
    maglev,
    xdp::{XDP_PASS, XDP_TX},
    BalanceNode, FlowKey, FlowKeyV4, FlowValue, VipEntry,
};

use crate::{
    maps,
    maps::{
        BALANCE_CONF, BALANCE_FLOWS, BALANCE_FLOWS_V4, BALANCE_MEMBERS, BALANCE_NODES,
        BALANCE_PORTS, BALANCE_STATS, BALANCE_TABLE,
    },
    packet::{self, hdr, Error, Frame},
    parse::{is_icmp_error, Addrs, Family, Layout, Packet, ICMP, ICMPV6, TCP, UDP},
    tunnel,
};

/// A packet's flow, as the client sends it.
struct Flow {
    key: Key,
    /// A fragment: hashed by addresses only, never in the connection table.
    frag: bool,
}

enum Key {
    V4(FlowKeyV4),
    V6(FlowKey),
}

impl Key {
    #[inline(always)]
    fn proto_dport(&self) -> (u8, u16) {
        match self {
            Key::V4(k) => (k.proto, u16::from_be_bytes(k.dport)),
            Key::V6(k) => (k.proto, u16::from_be_bytes(k.dport)),
        }
    }
}

/// Some(action) when the packet goes to another member; None: deliver locally (this
/// node's share, or not a balanced packet). The entry's `ifindex` is the group's
/// balance slot.
#[inline(always)]
pub fn member_action(
    ctx: &mut XdpContext,
    frame: &Frame,
    entry: &VipEntry,
    pkt: &mut Packet,
) -> Result<Option<u32>, Error> {
    let slot = entry.ifindex;
    if slot >= MAX_BALANCED_GROUPS {
        return Ok(None);
    }
    let Some(flow) = flow(ctx, pkt)? else {
        return Ok(None);
    };
    let Some(conf) = BALANCE_CONF.get(slot) else {
        return Ok(None);
    };
    if conf.all_ports == 0 {
        let (proto, port) = flow.key.proto_dport();
        let key = balance_maps::port_key(slot, proto, port);
        // SAFETY: hash-map values are replaced under RCU, never written in place.
        if flow.frag || unsafe { BALANCE_PORTS.get(key) }.is_none() {
            return Ok(None);
        }
    }
    let (index, new) = match pinned(slot, &flow) {
        Some(i) => (i, false),
        None => {
            let first = if conf.first_hop != 0 {
                // A segment nobody pinned (a new director's table is empty) of a
                // connection this node holds: served here, as a member would.
                if pkt.layout(ctx).proto == TCP && !flow.frag && socket_held(ctx, &flow.key) {
                    return Ok(None);
                }
                first_hop(ctx, frame, slot, conf.rows, &flow, pkt)?
            } else {
                None
            };
            let Some(i) = first.or_else(|| table(slot, &flow)) else {
                return Ok(None);
            };
            (i, !flow.frag)
        }
    };
    let row = slot * MAX_MEMBERS + index;
    let Some(member) = BALANCE_MEMBERS.get(row) else {
        return Ok(None);
    };
    if new {
        let v = FlowValue {
            member: index,
            _pad: 0,
        };
        let _ = match &flow.key {
            Key::V4(k) => BALANCE_FLOWS_V4.insert(k, v, 0),
            Key::V6(k) => BALANCE_FLOWS.insert(k, v, 0),
        };
    }
    if let Some(s) = BALANCE_STATS.get_ptr_mut(row) {
        // SAFETY: per-CPU slot, nobody else writes it concurrently.
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += (ctx.data_end() - ctx.data()) as u64;
        s.flows += new as u64;
    }
    if member.this_node != 0 || member.up == 0 {
        return Ok(None);
    }
    if tunnel::src() != 0 {
        if let Some(node) = routed_node(slot, &member.mac) {
            // None: it cannot go (IPv6, next hop unresolved); served here.
            return tunnel::send(ctx, pkt.family, node, &entry.own_mac);
        }
    }
    packet::set_macs(ctx, &member.mac, &entry.own_mac)?;
    Ok(Some(XDP_TX))
}

/// The node of slot `slot` with MAC `mac`, if it is on another segment (reached
/// through the tunnel).
#[inline(always)]
fn routed_node(slot: u32, mac: &[u8; 6]) -> Option<&'static BalanceNode> {
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    let node = unsafe { BALANCE_NODES.get(balance_maps::node_key(slot, mac)) }?;
    (node.tunnel != [0; 4]).then_some(node)
}

/// On a member's forward entry, for what goes to the director: Some(action) when the
/// director is on another segment (its MAC is not on this one): the packet goes to
/// it through the tunnel, or, when it cannot (IPv6, next hop unresolved), is served
/// here (XDP_PASS) rather than sent to a MAC nobody here has. None: the director is
/// on this segment, and the entry's MAC rewrite applies.
#[inline(always)]
pub fn to_routed_director(
    ctx: &mut XdpContext,
    entry: &VipEntry,
    pkt: &mut Packet,
) -> Result<Option<u32>, Error> {
    if tunnel::src() == 0 {
        return Ok(None);
    }
    let Some(node) = routed_node(entry.ifindex, &entry.dst_mac) else {
        return Ok(None);
    };
    Ok(Some(
        tunnel::send(ctx, pkt.family, node, &entry.own_mac)?.unwrap_or(XDP_PASS),
    ))
}

/// Whether a packet out of the tunnel (`frame.tunnel`, its outer source) came from a
/// node of the entry's balanced group: only those may hand us packets that way.
#[inline(always)]
pub fn tunneled_from_node(frame: &Frame, entry: &VipEntry) -> bool {
    if entry.flags & flags::BALANCED == 0 || !maps::balance_enabled() {
        return false;
    }
    let key = balance_maps::tunnel_key(entry.ifindex, frame.tunnel);
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    unsafe { BALANCE_NODES.get(key) }.is_some()
}

/// On a member's forward entry (`flags::BALANCED`, action FORWARD): whether the
/// frame's Ethernet source is a node of the group: the director (`dst_mac`, the
/// common case, no lookup) or any node in `BALANCE_NODES`. Those are delivered
/// locally, the rest forwarded to the director.
///
/// Why this cannot loop, even while nodes disagree on who directs: a member forwards
/// only frames from outside the group, and a forwarded frame carries the member's
/// MAC as its source, so no other member forwards it again (it delivers it); the
/// director it reaches hands it to a member with its own MAC as the source, which
/// that member delivers too. A client's packet is thus forwarded by a member at most
/// once, and handed over by a director at most once after that (unless two nodes
/// direct at once: a split election, which this check does not mend).
///
/// A packet out of the tunnel came from a node: `steer` let it through only then.
#[inline(always)]
pub fn from_node(ctx: &XdpContext, frame: &Frame, entry: &VipEntry) -> Result<bool, Error> {
    if tunnel::decapsulated(frame) {
        return Ok(true);
    }
    let src = packet::src_mac(ctx)?;
    if src == entry.dst_mac {
        return Ok(true);
    }
    let key = balance_maps::node_key(entry.ifindex, &src);
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    Ok(unsafe { BALANCE_NODES.get(key) }.is_some())
}

/// On an anycast member's forward entry, for a frame from outside the group: whether
/// this node holds the TCP connection of the segment (established, its handshake under
/// way, or in time-wait). The router's hash brought it to its holder, which serves it
/// without the hop through the director and back: one socket lookup instead of two
/// XDP passes and two frames on the wire. A listener is not a connection: a SYN, and
/// a segment of a connection another member holds, still go to the director, whose
/// connection and Maglev tables place them. Only TCP has a connection to find (a UDP
/// lookup would find the bound socket, every member's); fragments and IPv6 with
/// extension headers are left to the director.
#[inline(always)]
pub fn holds_connection(ctx: &XdpContext, pkt: &mut Packet) -> Result<bool, Error> {
    // The flow as the director would key it: TCP only, no fragment (`flow` leaves out
    // IPv6 with extension headers).
    let l = pkt.layout(ctx);
    if l.proto != TCP || l.fragment() {
        return Ok(false);
    }
    let Some(flow) = flow(ctx, pkt)? else {
        return Ok(false);
    };
    Ok(socket_held(ctx, &flow.key))
}

/// Whether this node has a TCP socket for the flow `key` (as the client sends it)
/// that is not a listener: the lookup under [`holds_connection`], also made by the
/// director on a flow it already keyed.
#[inline(always)]
fn socket_held(ctx: &XdpContext, key: &Key) -> bool {
    // SAFETY: plain integers; every bit pattern is a valid tuple.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = match key {
        Key::V4(k) => {
            t.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: u32::from_ne_bytes(k.src),
                daddr: u32::from_ne_bytes(k.dst),
                sport: u16::from_ne_bytes(k.sport),
                dport: u16::from_ne_bytes(k.dport),
            };
            core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
        }
        Key::V6(k) => {
            let word = |a: &[u8; 16], i: usize| {
                u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
            };
            t.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                saddr: [
                    word(&k.src, 0),
                    word(&k.src, 1),
                    word(&k.src, 2),
                    word(&k.src, 3),
                ],
                daddr: [
                    word(&k.dst, 0),
                    word(&k.dst, 1),
                    word(&k.dst, 2),
                    word(&k.dst, 3),
                ],
                sport: u16::from_ne_bytes(k.sport),
                dport: u16::from_ne_bytes(k.dport),
            };
            core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
        }
    };
    // SAFETY: the helper reads `size` bytes of the tuple on our stack; the socket it
    // returns (a reference the verifier makes us release) is read once, then released.
    unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.ctx as *mut _,
            &mut t,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        let state = (*sk).state;
        bpf_sk_release(sk as *mut _);
        state != TCP_LISTEN
    }
}

/// The kernel's `TCP_LISTEN` (include/net/tcp_states.h).
const TCP_LISTEN: u32 = 10;

/// The rows `first_hop` looks at, at most (a group has a few nodes; the verifier
/// needs a bound).
const FIRST_HOP_ROWS: u32 = 16;

/// With `BalanceConf::first_hop` (anycast), the member a new flow stays on: the one
/// that forwarded its first packet (the frame's source MAC, or for a member on
/// another segment the tunnel's outer source), or this node when the router handed
/// it to us directly. Only for what starts a flow: a UDP datagram, or
/// a TCP SYN. A TCP segment of a connection nobody pinned (after a director change)
/// came from a member that holds no such connection (it would have kept it), so it
/// goes by the Maglev table; so does a fragment, and anything from a member that is
/// not up.
#[inline(always)]
fn first_hop(
    ctx: &XdpContext,
    frame: &Frame,
    slot: u32,
    rows: u8,
    flow: &Flow,
    pkt: &mut Packet,
) -> Result<Option<u32>, Error> {
    if flow.frag {
        return Ok(None);
    }
    // The packet's own protocol: an ICMP error's flow (the quoted header) starts
    // nothing.
    let proto = pkt.layout(ctx).proto;
    if proto == TCP {
        let syn = pkt
            .transport(ctx)
            .tcp_flags()
            .is_some_and(|f| f & (TCP_SYN | TCP_ACK) == TCP_SYN);
        if !syn {
            return Ok(None);
        }
    } else if proto != UDP {
        return Ok(None);
    }
    if tunnel::decapsulated(frame) {
        // SAFETY: hash-map values are replaced under RCU, never written in place.
        let Some(node) =
            (unsafe { BALANCE_NODES.get(balance_maps::tunnel_key(slot, frame.tunnel)) })
        else {
            return Ok(None);
        };
        let row = node.row as u32;
        return Ok(BALANCE_MEMBERS
            .get(slot * MAX_MEMBERS + row)
            .filter(|m| m.up != 0 && m.this_node == 0)
            .map(|_| row));
    }
    let src = packet::src_mac(ctx)?;
    let mut this = None;
    let n = (rows as u32).min(FIRST_HOP_ROWS);
    for i in 0..FIRST_HOP_ROWS {
        if i >= n {
            break;
        }
        let Some(m) = BALANCE_MEMBERS.get(slot * MAX_MEMBERS + i) else {
            break;
        };
        if m.up == 0 {
            continue;
        }
        if m.this_node != 0 {
            this = Some(i);
        } else if m.mac == src {
            return Ok(Some(i));
        }
    }
    Ok(this)
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The member the connection table holds for the flow, if it is still up.
#[inline(always)]
fn pinned(slot: u32, flow: &Flow) -> Option<u32> {
    if flow.frag {
        return None;
    }
    let index = match &flow.key {
        // SAFETY: LRU values are replaced under RCU, never written in place.
        Key::V4(k) => unsafe { BALANCE_FLOWS_V4.get(k) },
        // SAFETY: as above.
        Key::V6(k) => unsafe { BALANCE_FLOWS.get(k) },
    }?
    .member;
    if index >= MAX_MEMBERS {
        return None;
    }
    let m = BALANCE_MEMBERS.get(slot * MAX_MEMBERS + index)?;
    (m.up != 0).then_some(index)
}

/// The Maglev table's member for the flow.
#[inline(always)]
fn table(slot: u32, flow: &Flow) -> Option<u32> {
    let h = match &flow.key {
        Key::V4(k) => flow_hash_v4(
            u32::from_ne_bytes(k.src),
            u32::from_ne_bytes(k.dst),
            u16::from_ne_bytes(k.sport),
            u16::from_ne_bytes(k.dport),
            k.proto,
        ),
        Key::V6(k) => flow_hash_v6(
            &k.src,
            &k.dst,
            u16::from_ne_bytes(k.sport),
            u16::from_ne_bytes(k.dport),
            k.proto,
        ),
    };
    let s = maglev::slot(h);
    let word = BALANCE_TABLE.get(slot * WORDS + s / 4)?;
    let index = ((*word >> (16 * (s % 4))) & 0xffff) as u32;
    (index < MAX_MEMBERS).then_some(index)
}

/// The flow of a packet to a balanced VIP, None when it is not one the director
/// spreads: TCP and UDP (a fragment by addresses only), and an ICMP error about a
/// packet a member sent (the quoted header, swapped). IPv6 only right behind the
/// fixed header or a fragment header.
#[inline(always)]
fn flow(ctx: &XdpContext, pkt: &mut Packet) -> Result<Option<Flow>, Error> {
    let l = pkt.layout(ctx);
    if pkt.family == Family::V6 && l.options() {
        return Ok(None);
    }
    let (family, proto) = (pkt.family, l.proto);
    match proto {
        TCP | UDP if l.fragment() => Ok(Some(Flow {
            key: key(ctx, pkt, [0; 2], [0; 2], proto)?,
            frag: true,
        })),
        TCP | UDP => {
            let p = pkt.transport(ctx).ports().ok_or(Error::Truncated)?;
            Ok(Some(Flow {
                key: key(ctx, pkt, p.src, p.dst, proto)?,
                frag: false,
            }))
        }
        ICMP | ICMPV6 if !l.fragment() && (proto == ICMP) == (family == Family::V4) => {
            let t = pkt.transport(ctx).icmp_type().ok_or(Error::Truncated)?;
            if !is_icmp_error(family, t) {
                return Ok(None);
            }
            quoted(ctx, family, &l)
        }
        _ => Ok(None),
    }
}

/// The flow an ICMP error quotes: what a member sent to the client, swapped. IPv4
/// only without options in the quoted header.
#[inline(always)]
fn quoted(ctx: &XdpContext, family: Family, l: &Layout) -> Result<Option<Flow>, Error> {
    let at = l.quoted();
    let key = match family {
        Family::V4 => {
            let inner = hdr::<Ipv4Hdr>(ctx, at)?;
            if inner.vihl != 0x45 || !matches!(inner.proto, TCP | UDP) {
                return Ok(None);
            }
            // A copy LLVM must make (`black_box`): with the tunnel's code in the
            // director it merged this read with the packet's own ports into one
            // register that held the bounds-checked pointer on this path, which the
            // verifier refuses.
            let p = core::hint::black_box(*hdr::<[[u8; 2]; 2]>(ctx, at + Ipv4Hdr::LEN)?);
            Key::V4(FlowKeyV4 {
                src: inner.dst_addr,
                dst: inner.src_addr,
                sport: p[1],
                dport: p[0],
                proto: inner.proto,
                _pad: [0; 3],
            })
        }
        Family::V6 => {
            let inner = hdr::<Ipv6Hdr>(ctx, at)?;
            if !matches!(inner.next_hdr, TCP | UDP) {
                return Ok(None);
            }
            let p = hdr::<[[u8; 2]; 2]>(ctx, at + Ipv6Hdr::LEN)?;
            Key::V6(FlowKey {
                src: inner.dst_addr,
                dst: inner.src_addr,
                sport: p[1],
                dport: p[0],
                proto: inner.next_hdr,
                _pad: [0; 3],
            })
        }
    };
    Ok(Some(Flow { key, frag: false }))
}

/// The packet's own flow key.
#[inline(always)]
fn key(
    ctx: &XdpContext,
    pkt: &Packet,
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
) -> Result<Key, Error> {
    Ok(match pkt.addrs(ctx) {
        Addrs::V4 { src, dst } => {
            let mut k = FlowKeyV4 {
                sport,
                dport,
                proto,
                ..FlowKeyV4::default()
            };
            k.src.copy_from_slice(src);
            k.dst.copy_from_slice(dst);
            Key::V4(k)
        }
        Addrs::V6 { src, dst } => {
            let mut k = FlowKey {
                sport,
                dport,
                proto,
                ..FlowKey::default()
            };
            k.src.copy_from_slice(src);
            k.dst.copy_from_slice(dst);
            Key::V6(k)
        }
    })
}
