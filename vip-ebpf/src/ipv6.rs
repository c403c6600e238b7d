//! IPv6: neighbour solicitations for the VIPs we own, answered in place with a
//! neighbour advertisement; other packets addressed to a VIP are steered.
//!
//! An NS is answered only when RFC 4861 7.1.1 holds: hop limit 255, ICMPv6 code 0,
//! valid checksum, length >= 24, a unicast target we own, options of non-zero length,
//! and, from the unspecified address (a DAD probe), a solicited-node destination and no
//! source link-layer option. It must arrive either for the solicited-node group of the
//! target (multicast) or unicast to the VIP and our MAC (unreachability detection).
//! As the kernel does, a multicast or loopback source (RFC 4291 2.7, 2.5.3) and a
//! source link-layer option that is not one unit long (an Ethernet address) make the
//! NS invalid.
//!
//! As for ARP, the data plane is the only thing that answers an NS for a VIP in the
//! table: one it does not answer (malformed, longer than `MAX_NS_LEN`, for a VIP we
//! do not own now, lease expired) is dropped so the kernel cannot answer it either.
//! An NS behind extension headers is not answered: it is steered like any other
//! packet to its destination.

use aya_ebpf::programs::XdpContext;
use network_types::ip::Ipv6Hdr;
use vip_common::{
    csum::{csum_finish, csum_fold},
    global,
    xdp::{XDP_DROP, XDP_PASS, XDP_TX},
};

use crate::{
    echo, maps,
    packet::{self, hdr, hdr_mut, Error, Frame, Mac, ETH_HLEN},
    parse::{Addrs, Packet, ICMPV6, UDP},
    steer,
};

const IPV6_HLEN: usize = 40;
const NS: u8 = 135;
const NA: u8 = 136;
const NS_MIN_LEN: usize = 24;
/// NS + source link-layer option + nonce + room for one more option.
const MAX_NS_LEN: usize = 64;
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
const NA_LEN: usize = 32;
const NA_FRAME_LEN: usize = ETH_HLEN + IPV6_HLEN + NA_LEN;
const NA_FLAG_SOLICITED: u8 = 0x40;
const NA_FLAG_OVERRIDE: u8 = 0x20;
/// ff02::1 as [`words`] loads it.
const ALL_NODES_WORDS: [u64; 2] = [
    u64::from_ne_bytes([0xff, 2, 0, 0, 0, 0, 0, 0]),
    u64::from_ne_bytes([0, 0, 0, 0, 0, 0, 0, 1]),
];

const _: () = assert!(Ipv6Hdr::LEN == IPV6_HLEN);

#[inline(always)]
pub fn handle(ctx: &mut XdpContext, frame: &Frame, pkt: &mut Packet) -> Result<u32, Error> {
    let l = pkt.layout(ctx);
    if l.proto == ICMPV6 && l.plain() {
        let icmp_type = pkt.icmp_type(ctx).ok_or(Error::Truncated)?;
        if icmp_type == NS {
            return solicitation(ctx, frame);
        }
    }
    let Addrs::V6 { dst, .. } = pkt.addrs(ctx) else {
        return Ok(XDP_PASS);
    };
    match maps::vip_v6(dst) {
        Some(entry) => steer::vip_action(ctx, frame, entry, pkt),
        // Behind up to three extension headers and in a first fragment too, so that
        // none of them is a way past the election port's checks; a later fragment
        // has no UDP header to judge (and without its first one the kernel drops it).
        None if l.truncated() => Err(Error::Truncated),
        None if l.proto == UDP && l.first_fragment() => echo::handle(ctx, frame, pkt),
        None => Ok(XDP_PASS),
    }
}

#[inline(always)]
fn solicitation(ctx: &mut XdpContext, frame: &Frame) -> Result<u32, Error> {
    const BASE: usize = ETH_HLEN + IPV6_HLEN;
    let ip = hdr::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    let ns = hdr::<[u8; NS_MIN_LEN]>(ctx, BASE)?;
    let in_packet = <&[u8; 16]>::try_from(&ns[8..24]).map_err(|_| Error::Truncated)?;
    let Some(entry) = maps::vip_v6(in_packet) else {
        return Ok(XDP_PASS);
    };
    let len = u16::from_be_bytes(ip.payload_len) as usize;
    // The addresses compared as two 8-byte words each (see `maps::packet_u64`), and
    // kept so for the answer, across the resize.
    let (src, dst, tgt) = (words(&ip.src_addr), words(&ip.dst_addr), words(in_packet));
    let from_unspecified = src == [0, 0];
    let to_target = dst == tgt;
    let shape_ok = ip.hop_limit == 255
        && ip.src_addr[0] != 0xff
        && src != LOOPBACK
        && ns[1] == 0
        && (NS_MIN_LEN..=MAX_NS_LEN).contains(&len)
        && len.is_multiple_of(8)
        && (frame.len as usize) >= BASE + len
        && addressed_to_us(frame, &ip.dst_addr, to_target, in_packet, &entry.own_mac)
        && (!from_unspecified || !to_target);
    if !shape_ok || !maps::answers(entry) {
        return not_answered();
    }
    let Ok(has_source_ll) = options(ctx, BASE, len) else {
        return not_answered();
    };
    if (from_unspecified && has_source_ll) || !checksum_ok(ctx, ip, BASE, len)? {
        return not_answered();
    }

    // Everything the answer needs, before the frame is resized; the addresses' part
    // of the NA's checksum (the target twice, the destination) from the packet.
    let requester = packet::src_mac(ctx)?;
    let (dst_words, dst_mac, flags, addr_sum) = if from_unspecified {
        // Defend the address against a DAD probe: tell all nodes.
        (
            ALL_NODES_WORDS,
            [0x33, 0x33, 0, 0, 0, 1],
            NA_FLAG_OVERRIDE,
            network_order(2 * loaded_sum(in_packet)) + ALL_NODES_SUM,
        )
    } else {
        (
            src,
            requester,
            NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE,
            network_order(2 * loaded_sum(in_packet) + loaded_sum(&ip.src_addr)),
        )
    };
    let own_mac = entry.own_mac;
    let stats_entry = *entry;

    // An NS with a source link-layer option is as long as the NA: no helper call.
    if frame.len as usize != NA_FRAME_LEN {
        packet::adjust_tail(ctx, NA_FRAME_LEN as i32 - frame.len as i32)?;
    }
    let mut sum = addr_sum + NA_LEN as u32 + ICMPV6 as u32;
    sum += (NA as u32) << 8;
    sum += (flags as u32) << 8;
    sum += ((OPT_TARGET_LL as u32) << 8) | 1;
    sum += mac_sum(&own_mac);
    let csum = csum_finish(sum).to_be_bytes();
    let (m, d) = (own_mac, dst_mac);
    // The 86 bytes as twelve stores (byte stores were most of the answer's cost):
    // Ethernet, the IPv6 header's first 8 bytes, its addresses, the NA's first 8
    // bytes, its target, its option. The addresses are the words loaded from the NS.
    let out = hdr_mut::<[u8; NA_FRAME_LEN]>(ctx, 0)?;
    let p = out.as_mut_ptr();
    let u64_of = u64::from_ne_bytes;
    // SAFETY: every store is inside the 86 bytes `hdr_mut` checked.
    unsafe {
        maps::packet_store::<8>(p, u64_of([d[0], d[1], d[2], d[3], d[4], d[5], m[0], m[1]]));
        maps::packet_store::<4>(
            p.add(8),
            u32::from_ne_bytes([m[2], m[3], m[4], m[5]]) as u64,
        );
        maps::packet_store::<2>(p.add(12), u16::from_ne_bytes([0x86, 0xdd]) as u64);
        maps::packet_store::<8>(
            p.add(ETH_HLEN),
            u64_of([0x60, 0, 0, 0, 0, NA_LEN as u8, ICMPV6, 255]),
        );
        maps::packet_store::<8>(p.add(ETH_HLEN + 8), tgt[0]);
        maps::packet_store::<8>(p.add(ETH_HLEN + 16), tgt[1]);
        maps::packet_store::<8>(p.add(ETH_HLEN + 24), dst_words[0]);
        maps::packet_store::<8>(p.add(ETH_HLEN + 32), dst_words[1]);
        maps::packet_store::<8>(
            p.add(BASE),
            u64_of([NA, 0, csum[0], csum[1], flags, 0, 0, 0]),
        );
        maps::packet_store::<8>(p.add(BASE + 8), tgt[0]);
        maps::packet_store::<8>(p.add(BASE + 16), tgt[1]);
        maps::packet_store::<8>(
            p.add(BASE + 24),
            u64_of([OPT_TARGET_LL, 1, m[0], m[1], m[2], m[3], m[4], m[5]]),
        );
    }

    // SAFETY: the packet's one reference to the VIP's stats.
    if let Some(stats) = unsafe { maps::stats(&stats_entry) } {
        stats.nd_replies += 1;
    }
    Ok(XDP_TX)
}

#[inline(always)]
fn not_answered() -> Result<u32, Error> {
    maps::count_global(global::NOT_ANSWERED);
    Ok(XDP_DROP)
}

/// `::1` as [`words`] loads it. A source must be neither multicast (RFC 4291 2.7)
/// nor loopback (2.5.3): the kernel drops such packets on input, and an answer
/// would go to a group (with the solicited flag, which receivers reject) or to
/// `::1` on the wire.
const LOOPBACK: [u64; 2] = [0, u64::from_ne_bytes([0, 0, 0, 0, 0, 0, 0, 1])];

/// 16 bytes of the packet as two native-endian u64, each one load.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u64; 2] {
    let p = a.as_ptr();
    // SAFETY: 16 bytes of the packet (callers pass its addresses).
    unsafe { [maps::packet_u64(p), maps::packet_u64(p.add(8))] }
}

/// The NS must reach us either as the target's solicited-node multicast or unicast
/// to the VIP at our MAC.
#[inline(always)]
fn addressed_to_us(
    frame: &Frame,
    dst: &[u8; 16],
    to_target: bool,
    target: &[u8; 16],
    own_mac: &Mac,
) -> bool {
    if to_target {
        return frame.dst == *own_mac;
    }
    let solicited_node = dst[0] == 0xff
        && dst[1] == 0x02
        && dst[2..11] == [0, 0, 0, 0, 0, 0, 0, 0, 0]
        && dst[11] == 0x01
        && dst[12] == 0xff
        && dst[13..16] == target[13..16];
    solicited_node && frame.dst == [0x33, 0x33, 0xff, target[13], target[14], target[15]]
}

/// Walks the options; returns whether a source link-layer option is present, or an
/// error for a zero-length or overrunning option, or a source link-layer option that
/// does not hold exactly an Ethernet address (the NS must then be ignored).
#[inline(always)]
fn options(ctx: &XdpContext, base: usize, len: usize) -> Result<bool, Error> {
    let mut off = NS_MIN_LEN;
    let mut has_source_ll = false;
    for _ in 0..(MAX_NS_LEN - NS_MIN_LEN) / 8 {
        if off >= len {
            // An option that runs past the message makes the NS invalid.
            return if off == len {
                Ok(has_source_ll)
            } else {
                Err(Error::Aborted)
            };
        }
        let opt = hdr::<[u8; 2]>(ctx, base + (off & (MAX_NS_LEN - 1)))?;
        let (kind, units) = (opt[0], opt[1] as usize);
        if units == 0 {
            return Err(Error::Aborted);
        }
        if kind == OPT_SOURCE_LL {
            if units != 1 {
                return Err(Error::Aborted);
            }
            has_source_ll = true;
        }
        off += units * 8;
    }
    if off == len {
        Ok(has_source_ll)
    } else {
        Err(Error::Aborted)
    }
}

/// Verifies the ICMPv6 checksum over the pseudo-header and `len` bytes of message.
#[inline(always)]
fn checksum_ok(ctx: &XdpContext, ip: &Ipv6Hdr, base: usize, len: usize) -> Result<bool, Error> {
    let mut loaded = loaded_sum(&ip.src_addr) + loaded_sum(&ip.dst_addr);
    let mut chunk = 0;
    while chunk < MAX_NS_LEN / 8 {
        if chunk * 8 >= len {
            break;
        }
        let b = hdr::<[u8; 8]>(ctx, base + chunk * 8)?;
        // SAFETY: 8 bytes of the packet, bounds checked just above.
        loaded += halves(unsafe { maps::packet_u64(b.as_ptr()) });
        chunk += 1;
    }
    Ok(csum_fold(network_order(loaded) + len as u32 + ICMPV6 as u32) == 0xffff)
}

/// ff02::1's part of a checksum (0xff02 + 0x0001).
const ALL_NODES_SUM: u32 = 0xff03;

/// The sum of a u64's two halves: a one's-complement sum of its four 16-bit words
/// (in the order they were loaded, little-endian), carries kept above bit 16.
#[inline(always)]
fn halves(w: u64) -> u64 {
    (w & 0xffff_ffff) + (w >> 32)
}

/// 16 bytes of the packet summed as loaded: two 8-byte loads instead of 16 byte
/// loads (see [`network_order`]).
#[inline(always)]
fn loaded_sum(a: &[u8; 16]) -> u64 {
    let w = words(a);
    halves(w[0]) + halves(w[1])
}

/// A sum of little-endian loads as the network-order 16-bit sum: the one's-complement
/// sum of byte-swapped words is the byte-swapped sum (RFC 1071 2.B), so fold, then
/// swap. Exact for sums below 2^63: the first fold leaves less than 2^32 + 2^31.
#[inline(always)]
fn network_order(sum: u64) -> u32 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff_ffff) + (s >> 32);
    csum_fold(s as u32).swap_bytes() as u32
}

#[inline(always)]
fn mac_sum(m: &Mac) -> u32 {
    u16::from_be_bytes([m[0], m[1]]) as u32
        + u16::from_be_bytes([m[2], m[3]]) as u32
        + u16::from_be_bytes([m[4], m[5]]) as u32
}
