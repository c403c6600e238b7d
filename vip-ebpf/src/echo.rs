//! The echo (`vip_common::echo`), on the election's UDP port: probes for a VIP this
//! node answers for are reflected in place (the same test as ARP: entry, our MAC,
//! lease); replies to our own probes are recorded in `ECHO_SEEN`. Both are consumed
//! here, so neither node's userspace wakes up per probe. Anything else on the port
//! (the advertisements) passes.

use aya_ebpf::programs::XdpContext;
use network_types::{eth::EthHdr, udp::UdpHdr};
use vip_common::{
    csum::csum_finish,
    echo, global,
    xdp::{XDP_DROP, XDP_PASS, XDP_TX},
};

use crate::{
    maps::{self, ECHO_SEEN, VIPS_V6},
    packet::{ptr_at, Error, Frame, ETH_HLEN},
};

pub const UDP: u8 = 17;

/// Where the IP addresses are, to swap them when reflecting.
#[derive(Clone, Copy)]
pub enum Family {
    /// Offset of the IPv4 header's source address; 4 bytes, destination follows.
    V4,
    V6,
}

/// A UDP datagram not addressed to a VIP; `l4` is the UDP header's offset.
#[inline(always)]
pub fn handle(ctx: &XdpContext, frame: &Frame, family: Family, l4: usize) -> Result<u32, Error> {
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
    if sport != port && dport != port {
        return Ok(XDP_PASS);
    }
    // Shorter datagrams on the port are not ours to judge (the agent counts them).
    let Ok(body) = ptr_at::<[u8; echo::LEN]>(ctx, l4 + UdpHdr::LEN) else {
        return Ok(XDP_PASS);
    };
    // SAFETY: bounds checked by ptr_at.
    let body = unsafe { &mut *body };
    if body[0..4] != echo::MAGIC || body[4] != echo::VERSION {
        return Ok(XDP_PASS);
    }
    match body[echo::OFF_KIND] {
        echo::PROBE if dport == port => {
            if !serving(frame, body) {
                maps::count_global(global::ECHO_REFUSED);
                return Ok(XDP_DROP);
            }
            reflect(ctx, family, udp, body)?;
            maps::count_global(global::ECHO_ANSWERED);
            Ok(XDP_TX)
        }
        echo::REPLY if sport == port => {
            record(body);
            Ok(XDP_DROP)
        }
        _ => Ok(XDP_PASS),
    }
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

/// A reply to one of our probes: raise the slot's sequence if the token is current.
#[inline(always)]
fn record(body: &[u8; echo::LEN]) {
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
    let (token, seq) = (b(echo::OFF_TOKEN), b(echo::OFF_SEQ));
    if let Some(seen) = ECHO_SEEN.get_ptr_mut(slot) {
        // SAFETY: a valid array slot; a racing reply on another CPU may write a
        // slightly lower sequence (or lose a count), which only delays the prober's
        // view by a probe.
        let seen = unsafe { &mut *seen };
        if seen.token == token {
            seen.replies += 1;
            if seq > seen.seq {
                seen.seq = seq;
            }
        }
    }
}
