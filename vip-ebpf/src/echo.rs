//! The election's UDP port and the echo on it (`vip_common::echo`). Every datagram to
//! the port goes through `peers::admit` first: only peers reach it. A peer's probe for
//! a VIP this node answers for is reflected in place (the same test as ARP: entry, our
//! MAC, lease); a reply to one of our own probes is recorded in `ECHO_SEEN` if it is
//! the active's answer to a probe we sent. Both are consumed here, so neither node's
//! userspace wakes up per probe. Anything else a peer sends to the port (the
//! advertisements) passes.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};
use vip_common::{
    csum::csum_finish,
    echo, flags, global,
    xdp::{XDP_DROP, XDP_PASS, XDP_TX},
};

use crate::{
    maps::{self, ECHO_SEEN},
    packet::{hdr, hdr_mut, src_mac, Error, Frame, Plain},
    parse::{Addrs, Family, Packet},
    peers,
};

/// A plain probe, as [`reflect`] rewrites it: every header at a fixed offset.
#[repr(C)]
struct ProbeV4 {
    eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
    body: [u8; echo::LEN],
}
#[repr(C)]
struct ProbeV6 {
    eth: EthHdr,
    ip: Ipv6Hdr,
    udp: UdpHdr,
    body: [u8; echo::LEN],
}
const _: () = assert!(
    core::mem::size_of::<ProbeV4>() == EthHdr::LEN + Ipv4Hdr::LEN + UdpHdr::LEN + echo::LEN
        && core::mem::size_of::<ProbeV6>() == EthHdr::LEN + Ipv6Hdr::LEN + UdpHdr::LEN + echo::LEN
);
// SAFETY: `#[repr(C)]` of `Plain` headers, without padding (the sizes add up).
unsafe impl Plain for ProbeV4 {}
// SAFETY: as above.
unsafe impl Plain for ProbeV6 {}

/// A UDP datagram not addressed to a VIP, on a first fragment. Only a plain one
/// (see `parse::Layout::plain`) is answered or recorded as a probe or a reply.
#[inline(always)]
pub fn handle(ctx: &mut XdpContext, frame: &Frame, pkt: &mut Packet) -> Result<u32, Error> {
    let port = maps::echo_port();
    if port == 0 {
        return Ok(XDP_PASS);
    }
    let l = pkt.layout(ctx);
    // A datagram cut inside its UDP header is a parse error here (as it always was),
    // even where the ports are whole.
    let t = pkt.transport(ctx);
    let (Some(ports), true) = (t.ports(), t.udp_header()) else {
        return Err(Error::Truncated);
    };
    let (sport, dport) = (
        u16::from_be_bytes(ports.src) as u32,
        u16::from_be_bytes(ports.dst) as u32,
    );
    if dport != port && sport != port {
        // Neither the election's nor a reply from it: most datagrams.
        return Ok(XDP_PASS);
    }
    let plain = l.plain();
    if dport == port {
        let body = if plain { echo_body(ctx, l.l4) } else { None };
        let probe = body.is_some_and(|b| b[echo::OFF_KIND] == echo::PROBE);
        if !peers::admit(ctx, pkt, probe)? {
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
        reflect(ctx, pkt.family)?;
        maps::count_global(global::ECHO_ANSWERED);
        return Ok(XDP_TX);
    }
    if sport != port || !plain {
        return Ok(XDP_PASS);
    }
    match echo_body(ctx, l.l4) {
        Some(body) if body[echo::OFF_KIND] == echo::REPLY => {
            if !record(ctx, pkt, body)? {
                maps::count_global(global::ECHO_REPLY_REFUSED);
            }
            Ok(XDP_DROP)
        }
        _ => Ok(XDP_PASS),
    }
}

/// The datagram's payload if it is an echo message of our version. Shorter
/// datagrams on the port are not ours to judge (the agent counts them).
#[inline(always)]
fn echo_body(ctx: &XdpContext, l4: usize) -> Option<&[u8; echo::LEN]> {
    let body = hdr::<[u8; echo::LEN]>(ctx, l4 + UdpHdr::LEN).ok()?;
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
            // In the packet, as `vip_v6` wants it.
            <&[u8; 16]>::try_from(&body[at..at + 16])
                .ok()
                .and_then(maps::vip_v6)
        }
        _ => None,
    };
    // Probes come to the node's MAC, which is `own_mac` unless the group has a
    // virtual one (`flags::VIRTUAL_MAC`: then `src_mac`).
    entry.is_some_and(|e| {
        (frame.dst == e.own_mac || (e.flags & flags::VIRTUAL_MAC != 0 && frame.dst == e.src_mac))
            && maps::answers(e)
    })
}

/// Sends the (plain) probe back where it came from, as a reply.
#[inline(always)]
fn reflect(ctx: &mut XdpContext, family: Family) -> Result<(), Error> {
    match family {
        Family::V4 => {
            let p = hdr_mut::<ProbeV4>(ctx, 0)?;
            core::mem::swap(&mut p.ip.src_addr, &mut p.ip.dst_addr);
            reply(&mut p.eth, &mut p.udp, &mut p.body);
        }
        Family::V6 => {
            let p = hdr_mut::<ProbeV6>(ctx, 0)?;
            core::mem::swap(&mut p.ip.src_addr, &mut p.ip.dst_addr);
            reply(&mut p.eth, &mut p.udp, &mut p.body);
        }
    }
    Ok(())
}

/// What a reply changes besides the IP addresses.
#[inline(always)]
fn reply(eth: &mut EthHdr, udp: &mut UdpHdr, body: &mut [u8; echo::LEN]) {
    core::mem::swap(&mut eth.src_addr, &mut eth.dst_addr);
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
}

/// A reply to one of our probes: recorded (the slot's sequence raised) only if it
/// comes from the slot's active (address, and MAC unless unknown), for a sequence
/// above the slot's, with that sequence's token. False when refused.
#[inline(always)]
fn record(ctx: &XdpContext, pkt: &Packet, body: &[u8; echo::LEN]) -> Result<bool, Error> {
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
    let from_peer = match pkt.addrs(ctx) {
        Addrs::V4 { src, .. } => {
            seen.family == 4 && *src == [seen.peer[0], seen.peer[1], seen.peer[2], seen.peer[3]]
        }
        Addrs::V6 { src, .. } => seen.family == 6 && *src == seen.peer,
    };
    let mac_ok = seen.peer_mac == [0u8; 6] || src_mac(ctx)? == seen.peer_mac;
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
