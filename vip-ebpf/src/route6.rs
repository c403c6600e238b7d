//! IPv6 VIPs routed by a gateway, without NAT (`[[route6]]`): an IPv6 VIP cannot bind
//! an elastic IP; it reaches the Internet routed, and this is that route at XDP speed.
//!
//! * Inbound, on the external interface: a packet to the VIP, sent to the external
//!   interface's MAC, has its hop limit decremented (≤ 1: the kernel's, which answers
//!   time-exceeded) and goes to the VIP's current owner on the internal interface
//!   (XDP_REDIRECT). No owner learned yet: the kernel's FIB and neighbour table
//!   (`bpf_fib_lookup`); neither: the kernel routes it (`to_kernel`).
//! * The return path (VIP -> Internet) is the kernel's own IPv6 forwarding.
//! * The owner is learned from neighbour advertisements on the internal segment
//!   (solicited, or a takeover's unsolicited ones) with the elastic IP's rule
//!   (`eip::claim`, `EIP_NODES` keyed by the IPv6 VIP): the Ethernet source and the
//!   target link-layer address must both be listed nodes. Any other NA naming the VIP,
//!   or NS sent from the VIP, is counted (`owner_refused`) and dropped, so the
//!   kernel's neighbour table, the fallback, does not learn it either.

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns},
    programs::XdpContext,
};
use network_types::ip::Ipv6Hdr;
use vip_common::{
    xdp::{XDP_DROP, XDP_PASS},
    EipNodeKey, Owner, Route6Entry, Route6Stats,
};

use crate::{
    eip::{claim, Claim},
    maps::{OWNERS_V6, REDIRECT_DEVS, ROUTE6_STATS, ROUTES6},
    packet::{self, hdr, hdr_mut, Error, Frame, Mac, ETH_HLEN},
    parse::{Addrs, Packet, ICMPV6},
};

const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = 0;
const IPV6_HLEN: usize = 40;
const NS: u8 = 135;
const NA: u8 = 136;
/// An NS's or NA's fixed part (type, code, checksum, flags, target).
const ND_MIN_LEN: usize = 24;
/// The options walked after it: room for five 8-byte ones.
const MAX_ND_LEN: usize = 64;
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;

/// The route's counters on this CPU.
///
/// # Safety
///
/// The caller holds no other reference to the same slot: a packet takes them once.
#[inline(always)]
unsafe fn stats(e: &Route6Entry) -> Option<&'static mut Route6Stats> {
    ROUTE6_STATS
        .get_ptr_mut(e.stats_index as u32)
        // SAFETY: this CPU's slot, which no other CPU writes.
        .map(|p| unsafe { &mut *p })
}

/// IPv6 on a gateway. None: not a routed VIP's, continue with the VIP rules.
#[inline(always)]
pub fn handle(ctx: &mut XdpContext, frame: &Frame, pkt: &mut Packet) -> Result<Option<u32>, Error> {
    let ingress = ctx.ingress_ifindex() as u32;
    let l = pkt.layout(ctx);
    if l.proto == ICMPV6 && l.plain() {
        match pkt.icmp_type(ctx) {
            Some(NA) => return neighbour(ctx, ingress, true),
            Some(NS) => return neighbour(ctx, ingress, false),
            _ => {}
        }
    }
    let Addrs::V6 { dst, .. } = pkt.addrs(ctx) else {
        return Ok(None);
    };
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    if let Some(e) = unsafe { ROUTES6.get(dst) } {
        if e.ext_ifindex == ingress && frame.dst == e.ext_mac {
            let entry = *e;
            return inbound(ctx, frame, pkt, &entry).map(Some);
        }
    }
    Ok(None)
}

/// Neighbour discovery on the internal segment that claims a routed VIP at a
/// link-layer address: an NA whose target is the VIP (`na`), or an NS sent from the
/// VIP (which makes the kernel's neighbour table, the fallback, note its source
/// link-layer address, as an ARP request does). Judged by [`claim`] on the Ethernet
/// source and on the option's address: from the VIP's nodes an NA is learned (hop
/// limit 255 only, RFC 4861 7.1.2), from anyone else either is counted
/// (`owner_refused`) and dropped.
#[inline(always)]
fn neighbour(ctx: &mut XdpContext, ingress: u32, na: bool) -> Result<Option<u32>, Error> {
    const BASE: usize = ETH_HLEN + IPV6_HLEN;
    let ip = hdr::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    let hop_limit = ip.hop_limit;
    let len = u16::from_be_bytes(ip.payload_len) as usize;
    let vip: [u8; 16] = if na {
        let body = hdr::<[u8; ND_MIN_LEN]>(ctx, BASE)?;
        let mut t = [0u8; 16];
        t.copy_from_slice(&body[8..24]);
        t
    } else {
        ip.src_addr
    };
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    let Some(e) = (unsafe { ROUTES6.get(vip) }) else {
        return Ok(None);
    };
    if e.int_ifindex != ingress {
        return Ok(None);
    }
    let entry = *e;
    let src = packet::src_mac(ctx)?;
    let (ll, has_ll) = link_layer_option(
        ctx,
        BASE,
        len,
        if na { OPT_TARGET_LL } else { OPT_SOURCE_LL },
    );
    let key = |mac: Mac| EipNodeKey {
        vip,
        mac,
        _pad: [0; 2],
    };
    let by_src = claim(0, &src, || key(src));
    let by_ll = if !has_ll {
        // Nothing to learn: the kernel takes it as a confirmation only.
        Claim::Ignore
    } else if ll == src {
        by_src
    } else {
        claim(0, &ll, || key(ll))
    };
    if by_src == Claim::Refuse || by_ll == Claim::Refuse {
        // SAFETY: the packet's one reference to the route's stats.
        if let Some(s) = unsafe { stats(&entry) } {
            s.owner_refused += 1;
        }
        return Ok(Some(XDP_DROP));
    }
    if na && by_ll == Claim::Learn && hop_limit == 255 {
        learn(&entry, &vip, ll);
    }
    Ok(None)
}

/// The message's link-layer address option of `kind`, if it holds one Ethernet
/// address: (MAC, found). Plain values, not an `Option` (see ARCHITECTURE.md).
#[inline(always)]
fn link_layer_option(ctx: &XdpContext, base: usize, len: usize, kind: u8) -> (Mac, bool) {
    let mut off = ND_MIN_LEN;
    for _ in 0..(MAX_ND_LEN - ND_MIN_LEN) / 8 {
        // Within the payload and within the walked room (the mask below keeps the
        // verifier's offset bounded, so it must not wrap a real offset).
        if off + 8 > len || off + 8 > MAX_ND_LEN {
            break;
        }
        let Ok(opt) = hdr::<[u8; 8]>(ctx, base + (off & (MAX_ND_LEN - 1))) else {
            break;
        };
        let (k, units) = (opt[0], opt[1] as usize);
        if units == 0 {
            break;
        }
        if k == kind {
            if units != 1 {
                break;
            }
            return ([opt[2], opt[3], opt[4], opt[5], opt[6], opt[7]], true);
        }
        off += units * 8;
    }
    ([0; 6], false)
}

/// Records the VIP's owner if it changed (a map write only on a change).
#[inline(always)]
fn learn(e: &Route6Entry, vip: &[u8; 16], mac: Mac) {
    // SAFETY: as above.
    let known = unsafe { OWNERS_V6.get(vip) }.map(|o| o.mac);
    if known == Some(mac) {
        return;
    }
    let owner = Owner {
        mac,
        _pad: [0; 2],
        // SAFETY: a helper without side effects.
        updated_ns: unsafe { bpf_ktime_get_ns() },
    };
    if OWNERS_V6.insert(vip, owner, 0).is_ok() {
        // SAFETY: the packet's one reference to the route's stats.
        if let Some(s) = unsafe { stats(e) } {
            s.owner_changes += 1;
        }
    }
}

#[inline(always)]
fn inbound(
    ctx: &mut XdpContext,
    frame: &Frame,
    pkt: &Packet,
    e: &Route6Entry,
) -> Result<u32, Error> {
    let ip = hdr::<Ipv6Hdr>(ctx, pkt.l3)?;
    // SAFETY: the packet's one reference to the route's stats.
    let s = unsafe { stats(e) };
    if ip.hop_limit <= 1 {
        // The kernel answers time-exceeded.
        if let Some(s) = s {
            s.to_kernel += 1;
        }
        return Ok(XDP_PASS);
    }
    let src = ip.src_addr;
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    let next = match unsafe { OWNERS_V6.get(e.vip) } {
        Some(o) => Some(o.mac),
        None => fib(ctx, &src, &e.vip, e.int_ifindex),
    };
    let Some(dst) = next else {
        if let Some(s) = s {
            s.to_kernel += 1;
        }
        return Ok(XDP_PASS);
    };
    match REDIRECT_DEVS.redirect(e.int_ifindex, XDP_PASS as u64) {
        Ok(act) => {
            let ip = hdr_mut::<Ipv6Hdr>(ctx, pkt.l3)?;
            ip.hop_limit -= 1;
            packet::set_macs(ctx, &dst, &e.int_mac)?;
            if let Some(s) = s {
                s.in_packets += 1;
                s.in_bytes += frame.len;
            }
            Ok(act)
        }
        Err(_) => {
            if let Some(s) = s {
                s.to_kernel += 1;
            }
            Ok(XDP_PASS)
        }
    }
}

/// The VIP's neighbour from the kernel's FIB and neighbour table, if the route
/// leaves through `want_ifindex`.
#[inline(always)]
fn fib(ctx: &XdpContext, src: &[u8; 16], dst: &[u8; 16], want_ifindex: u32) -> Option<Mac> {
    // SAFETY: bpf_fib_lookup is plain data; zero is a valid value of every field.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET6;
    p.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: writes of plain arrays into the union's IPv6 member.
    unsafe {
        let s = &mut p.__bindgen_anon_3.ipv6_src;
        let d = &mut p.__bindgen_anon_4.ipv6_dst;
        for i in 0..4 {
            s[i] = u32::from_ne_bytes([src[4 * i], src[4 * i + 1], src[4 * i + 2], src[4 * i + 3]]);
            d[i] = u32::from_ne_bytes([dst[4 * i], dst[4 * i + 1], dst[4 * i + 2], dst[4 * i + 3]]);
        }
    }
    // SAFETY: the helper reads and writes `p` only.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    (r == FIB_SUCCESS && p.ifindex == want_ifindex).then_some(p.dmac)
}
