//! The director of a balanced group: picks a member for each TCP/UDP packet to the
//! VIP and hands it over by rewriting the Ethernet destination (the member holds the
//! VIP on lo and answers the client directly).
//!
//! * A flow is keyed as the client sends it; the connection table keeps a flow on
//!   the member it started on while the member set changes, and the Maglev table
//!   (the same on every node) places new flows, and all flows after a director
//!   change.
//! * An ICMP error about a packet a member sent (fragmentation needed, unreachable,
//!   time exceeded) quotes that packet: the quoted header, swapped, is the client's
//!   flow, so the error reaches the member that holds it.
//! * Fragments carry no ports after the first: every fragment of a protocol we
//!   balance is hashed by addresses only (ports zero), so all fragments of a
//!   datagram reach one member. With a list of ports they cannot be told apart and
//!   stay local.
//! * A member's entry forwards to the director what a client sends it directly
//!   (its ARP cache names the member after a failover churned); see [`from_node`].

use aya_ebpf::programs::XdpContext;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use vip_common::{
    balance::{self, MAX_MEMBERS, TCP, UDP, WORDS},
    flow::{flow_hash_v4, flow_hash_v6},
    maglev::TABLE_SIZE,
    xdp::XDP_TX,
    FlowKey, FlowKeyV4, FlowValue, VipEntry,
};

use crate::{
    echo::Family,
    maps::{
        BALANCE_CONF, BALANCE_FLOWS, BALANCE_FLOWS_V4, BALANCE_MEMBERS, BALANCE_NODES,
        BALANCE_PORTS, BALANCE_STATS, BALANCE_TABLE,
    },
    packet::{self, ptr_at, Error, Mac, ETH_HLEN},
};

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const IPV6_FRAGMENT: u8 = 44;

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
/// node's share, or not a balanced packet).
#[inline(always)]
pub fn steer(ctx: &XdpContext, entry: &VipEntry, family: Family) -> Result<Option<u32>, Error> {
    let slot = entry.ifindex;
    if slot >= balance::MAX_GROUPS {
        return Ok(None);
    }
    let flow = match family {
        Family::V4 => flow_v4(ctx)?,
        Family::V6 => flow_v6(ctx)?,
    };
    let Some(flow) = flow else {
        return Ok(None);
    };
    let Some(conf) = BALANCE_CONF.get(slot) else {
        return Ok(None);
    };
    if conf.all_ports == 0 {
        let (proto, port) = flow.key.proto_dport();
        // SAFETY: hash-map values are replaced under RCU, never written in place.
        if flow.frag
            || unsafe { BALANCE_PORTS.get(&balance::port_key(slot, proto, port)) }.is_none()
        {
            return Ok(None);
        }
    }
    let (index, new) = match pinned(slot, &flow) {
        Some(i) => (i, false),
        None => {
            let Some(i) = table(slot, &flow) else {
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
            Key::V4(k) => BALANCE_FLOWS_V4.insert(k, &v, 0),
            Key::V6(k) => BALANCE_FLOWS.insert(k, &v, 0),
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
    packet::set_macs(ctx, &member.mac, &entry.own_mac)?;
    Ok(Some(XDP_TX))
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
#[inline(always)]
pub fn from_node(ctx: &XdpContext, entry: &VipEntry) -> Result<bool, Error> {
    let src: *const Mac = ptr_at(ctx, 6)?;
    // SAFETY: bounds checked by ptr_at.
    let src = unsafe { *src };
    if src == entry.dst_mac {
        return Ok(true);
    }
    let key = balance::node_key(entry.ifindex, &src);
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    Ok(unsafe { BALANCE_NODES.get(&key) }.is_some())
}

/// The member the connection table holds for the flow, if it is still up.
#[inline(always)]
fn pinned(slot: u32, flow: &Flow) -> Option<u32> {
    if flow.frag {
        return None;
    }
    // SAFETY: LRU values are replaced under RCU, never written in place.
    let index = match &flow.key {
        Key::V4(k) => unsafe { BALANCE_FLOWS_V4.get(k) },
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
    let s = h % TABLE_SIZE as u32;
    let word = BALANCE_TABLE.get(slot * WORDS + s / 4)?;
    let index = ((*word >> (16 * (s % 4))) & 0xffff) as u32;
    (index < MAX_MEMBERS).then_some(index)
}

#[inline(always)]
fn ports_at(ctx: &XdpContext, off: usize) -> Result<([u8; 2], [u8; 2]), Error> {
    let p: *const [u8; 4] = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    let p = unsafe { &*p };
    Ok(([p[0], p[1]], [p[2], p[3]]))
}

#[inline(always)]
fn v4_key(src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2], proto: u8) -> Key {
    Key::V4(FlowKeyV4 {
        src,
        dst,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    })
}

#[inline(always)]
fn flow_v4(ctx: &XdpContext) -> Result<Option<Flow>, Error> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let l4 = ETH_HLEN + ihl;
    let frags = u16::from_be_bytes(ip.frags);
    let frag = frags & 0x3fff != 0;
    match ip.proto {
        TCP | UDP if frag => Ok(Some(Flow {
            key: v4_key(ip.src_addr, ip.dst_addr, [0; 2], [0; 2], ip.proto),
            frag: true,
        })),
        TCP | UDP => {
            let (sport, dport) = ports_at(ctx, l4)?;
            Ok(Some(Flow {
                key: v4_key(ip.src_addr, ip.dst_addr, sport, dport, ip.proto),
                frag: false,
            }))
        }
        ICMP if !frag => {
            // The whole ICMP header: a 1-byte read at a variable offset is bounds
            // checked in a form the verifier does not follow (`p >= end`).
            let h: *const [u8; 8] = ptr_at(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            if !matches!(unsafe { (*h)[0] }, 3 | 11 | 12) {
                return Ok(None);
            }
            // The quoted header (without options): what a member sent to the client.
            let inner: *const Ipv4Hdr = ptr_at(ctx, l4 + 8)?;
            // SAFETY: bounds checked by ptr_at.
            let inner = unsafe { &*inner };
            if inner.vihl != 0x45 || !matches!(inner.proto, TCP | UDP) {
                return Ok(None);
            }
            let (isport, idport) = ports_at(ctx, l4 + 8 + Ipv4Hdr::LEN)?;
            Ok(Some(Flow {
                key: v4_key(inner.dst_addr, inner.src_addr, idport, isport, inner.proto),
                frag: false,
            }))
        }
        _ => Ok(None),
    }
}

#[inline(always)]
fn v6_key(src: &[u8; 16], dst: &[u8; 16], sport: [u8; 2], dport: [u8; 2], proto: u8) -> Key {
    Key::V6(FlowKey {
        src: *src,
        dst: *dst,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    })
}

#[inline(always)]
fn flow_v6(ctx: &XdpContext) -> Result<Option<Flow>, Error> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let l4 = ETH_HLEN + Ipv6Hdr::LEN;
    match ip.next_hdr {
        TCP | UDP => {
            let (sport, dport) = ports_at(ctx, l4)?;
            Ok(Some(Flow {
                key: v6_key(&ip.src_addr, &ip.dst_addr, sport, dport, ip.next_hdr),
                frag: false,
            }))
        }
        IPV6_FRAGMENT => {
            let next: *const u8 = ptr_at(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            let next = unsafe { *next };
            if !matches!(next, TCP | UDP) {
                return Ok(None);
            }
            Ok(Some(Flow {
                key: v6_key(&ip.src_addr, &ip.dst_addr, [0; 2], [0; 2], next),
                frag: true,
            }))
        }
        ICMPV6 => {
            let t: *const u8 = ptr_at(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            if !matches!(unsafe { *t }, 1..=4) {
                return Ok(None);
            }
            let inner: *const Ipv6Hdr = ptr_at(ctx, l4 + 8)?;
            // SAFETY: bounds checked by ptr_at.
            let inner = unsafe { &*inner };
            if !matches!(inner.next_hdr, TCP | UDP) {
                return Ok(None);
            }
            let (isport, idport) = ports_at(ctx, l4 + 8 + Ipv6Hdr::LEN)?;
            Ok(Some(Flow {
                key: v6_key(
                    &inner.dst_addr,
                    &inner.src_addr,
                    idport,
                    isport,
                    inner.next_hdr,
                ),
                frag: false,
            }))
        }
        _ => Ok(None),
    }
}
