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
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use vip_common::{
    flags,
    xdp::{XDP_PASS, XDP_TX},
    VipEntry, VipStats,
};

use crate::packet::{self, ptr_at, Error, Frame, Mac, ETH_HLEN};

const TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// `TCP_LISTEN` of the kernel's socket states.
const TCP_LISTEN: u32 = 10;
/// The IPv4 fragment offset bits of `frags`.
const FRAG_OFFSET: u16 = 0x1fff;
/// Sizes of `bpf_sock_tuple`'s IPv4 and IPv6 parts (what the helper wants).
const TUPLE4: u32 = 12;
const TUPLE6: u32 = 36;

/// The handover's decision for a packet to a VIP whose entry has `GRACE` or `KEEP`:
/// Some(action) when it applies, None when the entry's action applies as usual.
#[inline(always)]
pub fn steer(
    ctx: &XdpContext,
    frame: &Frame,
    entry: &VipEntry,
    stats: &mut VipStats,
) -> Result<Option<u32>, Error> {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let (size, tcp_off) = match frame.ethertype {
        packet::ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
            // SAFETY: bounds checked by ptr_at.
            let ip = unsafe { &*ip };
            // Only the first fragment carries the TCP header.
            if ip.proto != TCP || u16::from_be_bytes(ip.frags) & FRAG_OFFSET != 0 {
                return Ok(None);
            }
            // SAFETY: writing plain integers into the union's IPv4 part.
            let t = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
            t.saddr = u32::from_ne_bytes(ip.src_addr);
            t.daddr = u32::from_ne_bytes(ip.dst_addr);
            // IHL >= 5 was checked by the caller; options are skipped.
            (TUPLE4, ETH_HLEN + ((ip.vihl & 0x0f) as usize) * 4)
        }
        packet::ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN)?;
            // SAFETY: bounds checked by ptr_at.
            let ip = unsafe { &*ip };
            // TCP right after the fixed header only (no extension headers).
            if ip.next_hdr != TCP {
                return Ok(None);
            }
            // SAFETY: writing plain integers into the union's IPv6 part.
            let t = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
            for i in 0..4 {
                t.saddr[i] = u32::from_ne_bytes([
                    ip.src_addr[4 * i],
                    ip.src_addr[4 * i + 1],
                    ip.src_addr[4 * i + 2],
                    ip.src_addr[4 * i + 3],
                ]);
                t.daddr[i] = u32::from_ne_bytes([
                    ip.dst_addr[4 * i],
                    ip.dst_addr[4 * i + 1],
                    ip.dst_addr[4 * i + 2],
                    ip.dst_addr[4 * i + 3],
                ]);
            }
            (TUPLE6, ETH_HLEN + Ipv6Hdr::LEN)
        }
        _ => return Ok(None),
    };
    // Ports (0..4) and flags (13) of the TCP header.
    let tcp: *const [u8; 14] = ptr_at(ctx, tcp_off)?;
    // SAFETY: bounds checked by ptr_at.
    let tcp = unsafe { &*tcp };
    if tcp[13] & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A new connection: the new active takes it, the old one forwards it.
        return Ok(None);
    }
    let (sport, dport) = (
        u16::from_ne_bytes([tcp[0], tcp[1]]),
        u16::from_ne_bytes([tcp[2], tcp[3]]),
    );
    if size == TUPLE4 {
        // SAFETY: writing plain integers into the union's IPv4 part.
        let t = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
        t.sport = sport;
        t.dport = dport;
    } else {
        // SAFETY: writing plain integers into the union's IPv6 part.
        let t = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
        t.sport = sport;
        t.dport = dport;
    }
    let ours = if size == TUPLE4 {
        has_socket(ctx, &mut tuple, TUPLE4)
    } else {
        has_socket(ctx, &mut tuple, TUPLE6)
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
    let eth_src: *const Mac = ptr_at(ctx, 6)?;
    // SAFETY: bounds checked by ptr_at.
    let from_peer = unsafe { *eth_src } == entry.dst_mac;
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
    packet::set_macs(ctx, &entry.dst_mac, &entry.own_mac)?;
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
