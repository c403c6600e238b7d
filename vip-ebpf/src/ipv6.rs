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
    parse::{self, Addrs, ICMPV6, UDP},
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
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

const _: () = assert!(Ipv6Hdr::LEN == IPV6_HLEN);

#[inline(always)]
pub fn handle(ctx: &mut XdpContext, frame: &Frame) -> Result<u32, Error> {
    let Some(mut pkt) = parse::ipv6(ctx)? else {
        return Ok(XDP_PASS);
    };
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
    let dst = *dst;
    match maps::vip_v6(&dst) {
        Some(entry) => steer::vip_action(ctx, frame, entry, &mut pkt),
        // Behind up to three extension headers and in a first fragment too, so that
        // none of them is a way past the election port's checks; a later fragment
        // has no UDP header to judge (and without its first one the kernel drops it).
        None if l.truncated() => Err(Error::Truncated),
        None if l.proto == UDP && l.first_fragment() => echo::handle(ctx, frame, &mut pkt),
        None => Ok(XDP_PASS),
    }
}

#[inline(always)]
fn solicitation(ctx: &mut XdpContext, frame: &Frame) -> Result<u32, Error> {
    const BASE: usize = ETH_HLEN + IPV6_HLEN;
    let ip = hdr::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    let ns = hdr::<[u8; NS_MIN_LEN]>(ctx, BASE)?;
    // A copy without a zeroed buffer first (which LLVM made a call to memset).
    let target: [u8; 16] = *<&[u8; 16]>::try_from(&ns[8..24]).map_err(|_| Error::Truncated)?;
    let Some(entry) = maps::vip_v6(&target) else {
        return Ok(XDP_PASS);
    };
    let len = u16::from_be_bytes(ip.payload_len) as usize;
    let from_unspecified = ip.src_addr == [0u8; 16];
    let shape_ok = ip.hop_limit == 255
        && usable_source(&ip.src_addr)
        && ns[1] == 0
        && (NS_MIN_LEN..=MAX_NS_LEN).contains(&len)
        && len.is_multiple_of(8)
        && (frame.len as usize) >= BASE + len
        && addressed_to_us(frame, &ip.dst_addr, &target, &entry.own_mac)
        && (!from_unspecified || ip.dst_addr != target);
    if !shape_ok || !maps::answers(entry) {
        return not_answered();
    }
    let Ok(has_source_ll) = options(ctx, BASE, len) else {
        return not_answered();
    };
    if (from_unspecified && has_source_ll) || !checksum_ok(ctx, ip, BASE, len)? {
        return not_answered();
    }

    // Everything the answer needs, before the frame is resized.
    let requester = packet::src_mac(ctx)?;
    let (dst_ip, dst_mac, flags) = if from_unspecified {
        // Defend the address against a DAD probe: tell all nodes.
        (ALL_NODES, [0x33, 0x33, 0, 0, 0, 1], NA_FLAG_OVERRIDE)
    } else {
        (ip.src_addr, requester, NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE)
    };
    let own_mac = entry.own_mac;
    let stats_entry = *entry;

    packet::adjust_tail(ctx, NA_FRAME_LEN as i32 - frame.len as i32)?;
    let out = hdr_mut::<[u8; NA_FRAME_LEN]>(ctx, 0)?;
    out[0..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&own_mac);
    out[12] = 0x86;
    out[13] = 0xdd;
    let ip6 = &mut out[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
    ip6[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip6[4..6].copy_from_slice(&(NA_LEN as u16).to_be_bytes());
    ip6[6] = ICMPV6;
    ip6[7] = 255;
    ip6[8..24].copy_from_slice(&target);
    ip6[24..40].copy_from_slice(&dst_ip);
    let na = &mut out[BASE..BASE + NA_LEN];
    na[0] = NA;
    na[1] = 0;
    na[2] = 0;
    na[3] = 0;
    na[4] = flags;
    na[5] = 0;
    na[6] = 0;
    na[7] = 0;
    na[8..24].copy_from_slice(&target);
    na[24] = OPT_TARGET_LL;
    na[25] = 1;
    na[26..32].copy_from_slice(&own_mac);
    let mut sum = sum16(&target) + sum16(&dst_ip) + NA_LEN as u32 + ICMPV6 as u32;
    sum += (NA as u32) << 8;
    sum += (flags as u32) << 8;
    sum += sum16(&target);
    sum += ((OPT_TARGET_LL as u32) << 8) | 1;
    sum += mac_sum(&own_mac);
    let csum = csum_finish(sum);
    na[2..4].copy_from_slice(&csum.to_be_bytes());

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

/// Neither multicast (RFC 4291 2.7) nor loopback (2.5.3): the kernel drops such
/// packets on input, and an answer would go to a group (with the solicited flag,
/// which receivers reject) or to `::1` on the wire.
#[inline(always)]
fn usable_source(src: &[u8; 16]) -> bool {
    const LOOPBACK: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    src[0] != 0xff && *src != LOOPBACK
}

/// The NS must reach us either as the target's solicited-node multicast or unicast
/// to the VIP at our MAC.
#[inline(always)]
fn addressed_to_us(frame: &Frame, dst: &[u8; 16], target: &[u8; 16], own_mac: &Mac) -> bool {
    if dst == target {
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
    let mut sum = sum16(&ip.src_addr) + sum16(&ip.dst_addr) + len as u32 + ICMPV6 as u32;
    let mut chunk = 0;
    while chunk < MAX_NS_LEN / 8 {
        if chunk * 8 >= len {
            break;
        }
        let b = hdr::<[u8; 8]>(ctx, base + chunk * 8)?;
        sum += u16::from_be_bytes([b[0], b[1]]) as u32
            + u16::from_be_bytes([b[2], b[3]]) as u32
            + u16::from_be_bytes([b[4], b[5]]) as u32
            + u16::from_be_bytes([b[6], b[7]]) as u32;
        chunk += 1;
    }
    Ok(csum_fold(sum) == 0xffff)
}

#[inline(always)]
fn sum16(a: &[u8; 16]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i < 16 {
        s += u16::from_be_bytes([a[i], a[i + 1]]) as u32;
        i += 2;
    }
    s
}

#[inline(always)]
fn mac_sum(m: &Mac) -> u32 {
    u16::from_be_bytes([m[0], m[1]]) as u32
        + u16::from_be_bytes([m[2], m[3]]) as u32
        + u16::from_be_bytes([m[4], m[5]]) as u32
}
