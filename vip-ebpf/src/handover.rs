//! Planned handover without breaking established TCP connections.
//!
//! After a release, for `drain_ms`, two nodes serve the VIP: the new active takes
//! new connections, the old one still holds the connections its stack accepted
//! before. Clients reach either one, depending on their ARP cache. Two flags of the
//! entry route each TCP packet to the node whose kernel has a socket for its flow:
//!
//! * `GRACE` (the new active, action local): a packet that is not a SYN and that no
//!   local socket knows is sent to the old active (`dst_mac`) instead of reaching our
//!   kernel, which would reset the connection;
//! * `KEEP` (the old active, action forward): a packet that a local socket knows is
//!   passed to our stack instead of being forwarded to the new active; a non-SYN
//!   packet that no socket knows and that came from the new active (its `GRACE` sent
//!   it here) is passed too: neither node knows the flow, and our kernel resets it.
//!
//! A packet crosses between the two at most once each way: the new active never sends
//! back what came from the old one (`dst_mac`), and the old one passes what came from
//! the new one. A SYN (new connection) and anything that is not TCP take the entry's
//! action as usual. A listening socket is not a socket of the flow: only an
//! established, half-open, closing or time-wait one is.
//!
//! The sockets are looked up in the namespace of the interface (`bpf_skc_lookup_tcp`,
//! the current netns): the agent sets these flags for local VIPs only.

use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    cty::c_void,
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp},
    programs::XdpContext,
};
use vip_common::{
    flags,
    xdp::{XDP_PASS, XDP_TX},
    VipEntry, VipStats,
};

use crate::{
    packet::{self, Error},
    parse::{Addrs, Family, Packet, TCP, TCP_ACK, TCP_SYN},
};

/// `TCP_LISTEN` of the kernel's socket states.
const TCP_LISTEN: u32 = 10;
/// Sizes of `bpf_sock_tuple`'s IPv4 and IPv6 parts (what the helper wants).
const TUPLE4: u32 = 12;
const TUPLE6: u32 = 36;

/// The handover's decision for a packet to a VIP whose entry has `GRACE` or `KEEP`:
/// Some(action) when it applies, None when the entry's action applies as usual.
/// TCP only, with its header: an IPv4 first fragment (options allowed), an IPv6
/// segment right behind the fixed header.
#[inline(always)]
pub fn drain_action(
    ctx: &mut XdpContext,
    entry: &VipEntry,
    pkt: &mut Packet,
    stats: &mut VipStats,
) -> Result<Option<u32>, Error> {
    let l = pkt.layout(ctx);
    let has_header = match pkt.family {
        Family::V4 => l.first_fragment(),
        Family::V6 => l.plain(),
    };
    if l.proto != TCP || !has_header {
        return Ok(None);
    }
    let t = pkt.transport(ctx);
    let (Some(ports), Some(tcp_flags)) = (t.ports(), t.tcp_flags()) else {
        return Err(Error::Truncated);
    };
    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A new connection: the new active takes it, the old one forwards it.
        return Ok(None);
    }
    // Ports as on the wire: the tuple is in network order.
    let (sport, dport) = (u16::from_ne_bytes(ports.src), u16::from_ne_bytes(ports.dst));
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let ours = match pkt.addrs(ctx) {
        Addrs::V4 { src, dst } => {
            // SAFETY: writing plain integers into the union's IPv4 part.
            let t = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
            t.saddr = u32::from_ne_bytes(*src);
            t.daddr = u32::from_ne_bytes(*dst);
            t.sport = sport;
            t.dport = dport;
            has_socket(ctx, &mut tuple, TUPLE4)
        }
        Addrs::V6 { src, dst } => {
            let a = [src, dst];
            // SAFETY: writing plain integers into the union's IPv6 part.
            let t = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
            for i in 0..4 {
                t.saddr[i] = u32::from_ne_bytes([
                    a[0][4 * i],
                    a[0][4 * i + 1],
                    a[0][4 * i + 2],
                    a[0][4 * i + 3],
                ]);
                t.daddr[i] = u32::from_ne_bytes([
                    a[1][4 * i],
                    a[1][4 * i + 1],
                    a[1][4 * i + 2],
                    a[1][4 * i + 3],
                ]);
            }
            t.sport = sport;
            t.dport = dport;
            has_socket(ctx, &mut tuple, TUPLE6)
        }
    };
    let keep = entry.flags & flags::KEEP != 0;
    if ours {
        if keep {
            stats.passed += 1;
            return Ok(Some(XDP_PASS));
        }
        // GRACE: our own connection, the entry's action.
        return Ok(None);
    }
    let from_peer = packet::src_mac(ctx)? == entry.dst_mac;
    if keep {
        if from_peer {
            stats.passed += 1;
            return Ok(Some(XDP_PASS));
        }
        return Ok(None);
    }
    if from_peer {
        // The old active had no socket for it either: our kernel answers (a reset).
        return Ok(None);
    }
    // From the node's MAC (`src_mac`: `own_mac` but for a virtual MAC, which only
    // ARP/NS answers come from).
    packet::set_macs(ctx, &entry.dst_mac, &entry.src_mac)?;
    stats.forwarded += 1;
    Ok(Some(XDP_TX))
}

/// Whether the local stack has a socket of this flow (a listener does not count).
/// `size` must be a constant at each call (the verifier checks the tuple's size).
#[inline(always)]
fn has_socket(ctx: &XdpContext, tuple: &mut bpf_sock_tuple, size: u32) -> bool {
    // SAFETY: the tuple lives on our stack and holds `size` initialised bytes; a
    // returned socket is released below on every path.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx as *mut c_void,
            tuple,
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a non-null socket from the lookup; `state` is readable on every kind.
    let state = unsafe { core::ptr::read_volatile(&(*sk).state) };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk as *mut c_void) };
    state != TCP_LISTEN
}
