//! The election's UDP port and the echo on it (`vip_common::echo`). Every datagram to
//! the port goes through `peers::admit` first: only peers reach it. A peer's probe for
//! a VIP this node answers for is reflected in place (the same test as ARP: entry, our
//! MAC, lease); a reply to one of our own probes is recorded in `ECHO_SEEN` if it is
//! the active's answer to a probe we sent. Both are consumed here, so neither node's
//! userspace wakes up per probe. Anything else a peer sends to the port (the
//! advertisements) passes.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use network_types::{eth::EthHdr, udp::UdpHdr};
use vip_common::{
    csum::csum_finish,
    echo, global,
    xdp::{XDP_DROP, XDP_PASS, XDP_TX},
};

use crate::{
    maps::{self, ECHO_SEEN, VIPS_V6},
    packet::{ptr_at, Error, Frame, Mac, ETH_HLEN},
    peers,
};

pub const UDP: u8 = 17;

/// Where the IP addresses are, to swap them when reflecting.
#[derive(Clone, Copy)]
pub enum Family {
    /// Offset of the IPv4 header's source address; 4 bytes, destination follows.
    V4,
    V6,
}

/// A UDP datagram not addressed to a VIP; `l4` is the UDP header's offset. `plain`:
/// a whole datagram right behind a fixed IP header (no options, extension headers
/// or fragmentation), the only shape a probe or a reply is answered or recorded in.
#[inline(always)]
pub fn handle(
    ctx: &XdpContext,
    frame: &Frame,
    family: Family,
    l4: usize,
    plain: bool,
) -> Result<u32, Error> {
    let port = maps::settings().echo_port;
    if port == 0 {
        return Ok(XDP_PASS);
    }
    let udp: *mut UdpHdr = ptr_at(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let udp = unsafe { &mut *udp };
    let (sport, dport) = (
        u16::from_be_bytes(udp.src) as u32,
        u16::from_be_bytes(udp.dst) as u32,
    );
    if dport == port {
        let body = if plain { echo_body(ctx, l4) } else { None };
        let probe = body
            .as_ref()
            .is_some_and(|b| b[echo::OFF_KIND] == echo::PROBE);
        if !peers::admit(ctx, family, probe)? {
            return Ok(XDP_DROP);
        }
        let Some(body) = body.filter(|_| probe) else {
            // An advertisement (or anything else a peer says): the agent judges it.
            return Ok(XDP_PASS);
        };
        if !serving(frame, body) {
            maps::count_global(global::ECHO_REFUSED);
            return Ok(XDP_DROP);
        }
        reflect(ctx, family, udp, body)?;
        maps::count_global(global::ECHO_ANSWERED);
        return Ok(XDP_TX);
    }
    if sport != port || !plain {
        return Ok(XDP_PASS);
    }
    match echo_body(ctx, l4) {
        Some(body) if body[echo::OFF_KIND] == echo::REPLY => {
            if !record(ctx, family, body)? {
                maps::count_global(global::ECHO_REPLY_REFUSED);
            }
            Ok(XDP_DROP)
        }
        _ => Ok(XDP_PASS),
    }
}

/// Where the UDP header of an IPv6 packet not addressed to a VIP is, and whether it
/// is plain (see [`handle`]): behind up to three extension headers (hop-by-hop,
/// routing, destination options, a first fragment), so that none of them is a way
/// past the election port's checks. None: not UDP, or a later fragment (it has no
/// header to judge; without its first one the kernel drops it).
#[inline(always)]
pub fn udp_v6(ctx: &XdpContext, next_hdr: u8) -> Result<Option<(usize, bool)>, Error> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const DESTINATION: u8 = 60;
    let (mut next, mut off, mut plain) = (next_hdr, ETH_HLEN + 40, true);
    for _ in 0..3 {
        match next {
            HOP_BY_HOP | ROUTING | DESTINATION => {
                let h: *const [u8; 2] = ptr_at(ctx, off)?;
                // SAFETY: bounds checked by ptr_at.
                let h = unsafe { *h };
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            FRAGMENT => {
                let h: *const [u8; 4] = ptr_at(ctx, off)?;
                // SAFETY: bounds checked by ptr_at.
                let h = unsafe { *h };
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Ok(None);
                }
                next = h[0];
                off += 8;
            }
            _ => break,
        }
        plain = false;
    }
    Ok((next == UDP).then_some((off, plain)))
}

/// The datagram's payload if it is an echo message of our version. Shorter
/// datagrams on the port are not ours to judge (the agent counts them).
#[inline(always)]
fn echo_body(ctx: &XdpContext, l4: usize) -> Option<&'static mut [u8; echo::LEN]> {
    let body = ptr_at::<[u8; echo::LEN]>(ctx, l4 + UdpHdr::LEN).ok()?;
    // SAFETY: bounds checked by ptr_at.
    let body = unsafe { &mut *body };
    (body[0..4] == echo::MAGIC && body[4] == echo::VERSION).then_some(body)
}

/// True when this node answers ARP/NS for the probed VIP now.
#[inline(always)]
fn serving(frame: &Frame, body: &[u8; echo::LEN]) -> bool {
    let at = echo::OFF_VIP;
    let entry = match body[echo::OFF_FAMILY] {
        4 => maps::vip_v4(u32::from_ne_bytes([
            body[at],
            body[at + 1],
            body[at + 2],
            body[at + 3],
        ])),
        6 => {
            let mut vip = [0u8; 16];
            vip.copy_from_slice(&body[at..at + 16]);
            // SAFETY: hash-map values are replaced under RCU, never written in place.
            unsafe { VIPS_V6.get(vip) }
        }
        _ => None,
    };
    entry.is_some_and(|e| frame.dst == e.own_mac && maps::answers(e))
}

/// Sends the probe back where it came from, as a reply.
#[inline(always)]
fn reflect(
    ctx: &XdpContext,
    family: Family,
    udp: &mut UdpHdr,
    body: &mut [u8; echo::LEN],
) -> Result<(), Error> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &mut *eth };
    core::mem::swap(&mut eth.src_addr, &mut eth.dst_addr);
    match family {
        Family::V4 => {
            let a: *mut [[u8; 4]; 2] = ptr_at(ctx, ETH_HLEN + 12)?;
            // SAFETY: bounds checked by ptr_at.
            let a = unsafe { &mut *a };
            a.swap(0, 1);
        }
        Family::V6 => {
            let a: *mut [[u8; 16]; 2] = ptr_at(ctx, ETH_HLEN + 8)?;
            // SAFETY: bounds checked by ptr_at.
            let a = unsafe { &mut *a };
            a.swap(0, 1);
        }
    }
    // Swapping addresses and ports leaves the checksum as it is; the kind does not
    // (RFC 1624: HC' = ~(~HC + ~m + m')). IPv4's "no checksum" (0) stays 0.
    core::mem::swap(&mut udp.src, &mut udp.dst);
    let old = u16::from_be_bytes([echo::VERSION, echo::PROBE]);
    let new = u16::from_be_bytes([echo::VERSION, echo::REPLY]);
    body[echo::OFF_KIND] = echo::REPLY;
    let check = u16::from_be_bytes(udp.check);
    if check != 0 {
        let sum = (!check) as u32 + (!old) as u32 + new as u32;
        let mut c = csum_finish(sum);
        if c == 0 {
            c = 0xffff;
        }
        udp.check = c.to_be_bytes();
    }
    Ok(())
}

/// A reply to one of our probes: recorded (the slot's sequence raised) only if it
/// comes from the slot's active (address, and MAC unless unknown), for a sequence
/// above the slot's, with that sequence's token. False when refused.
#[inline(always)]
fn record(ctx: &XdpContext, family: Family, body: &[u8; echo::LEN]) -> Result<bool, Error> {
    let b = |o: usize| {
        u64::from_be_bytes([
            body[o],
            body[o + 1],
            body[o + 2],
            body[o + 3],
            body[o + 4],
            body[o + 5],
            body[o + 6],
            body[o + 7],
        ])
    };
    let s = echo::OFF_SLOT;
    let slot = u32::from_be_bytes([body[s], body[s + 1], body[s + 2], body[s + 3]]);
    let Some(seen) = ECHO_SEEN.get_ptr_mut(slot) else {
        return Ok(false);
    };
    // SAFETY: a valid array slot. The prober rewrites it only when it starts probing
    // another active; a racing reply on another CPU may write a slightly lower
    // sequence (or lose a count), which only delays the prober's view by a probe.
    let seen = unsafe { &mut *seen };
    let from_peer = match family {
        Family::V4 => {
            let a: *const [u8; 4] = ptr_at(ctx, ETH_HLEN + 12)?;
            // SAFETY: bounds checked by ptr_at.
            seen.family == 4
                && unsafe { *a } == [seen.peer[0], seen.peer[1], seen.peer[2], seen.peer[3]]
        }
        Family::V6 => {
            let a: *const [u8; 16] = ptr_at(ctx, ETH_HLEN + 8)?;
            // SAFETY: bounds checked by ptr_at.
            seen.family == 6 && unsafe { *a } == seen.peer
        }
    };
    let mac: *const Mac = ptr_at(ctx, 6)?;
    // SAFETY: bounds checked by ptr_at.
    let mac_ok = seen.peer_mac == [0u8; 6] || unsafe { *mac } == seen.peer_mac;
    let (token, seq) = (b(echo::OFF_TOKEN), b(echo::OFF_SEQ));
    if !from_peer || !mac_ok || seq <= seen.seq || token != echo::token(seen.key, seq) {
        return Ok(false);
    }
    seen.seq = seq;
    seen.replies += 1;
    // SAFETY: a helper without side effects.
    seen.last_ns = unsafe { bpf_ktime_get_ns() };
    Ok(true)
}
