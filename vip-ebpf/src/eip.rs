//! Elastic IPs: a gateway maps one public IPv4 address 1:1 onto a VIP.
//!
//! * Inbound, on the external interface: a packet to the EIP gets the VIP as its
//!   destination (IPv4 and TCP/UDP checksums updated incrementally, TTL decremented as
//!   a router does) and goes to the VIP's current owner on the internal interface.
//! * Outbound, on the internal interface: a packet from the VIP, routed to us, gets the
//!   EIP as its source and goes to the external side's next hop (from the kernel's FIB
//!   and neighbour table, `bpf_fib_lookup`).
//! * The owner is learned from ARP on the internal segment (a takeover's gratuitous ARP
//!   included), in the data plane itself: the very packet that announces a failover
//!   moves the EIP's traffic. Until an owner is known, the kernel's neighbour table
//!   (through the FIB) is the fallback; without either, the translated packet is handed
//!   to the kernel, which routes it and resolves the neighbour (ip_forward must be on).
//! * Only the group's real nodes can become the owner ([`claim`]): the agent lists
//!   their MACs in `EIP_NODES` (the `[[eip]]`'s `nodes`), and ARP naming the VIP from
//!   any other sender is counted (`owner_refused`) and dropped, so that neither this
//!   program nor the kernel's neighbour table, the fallback, learns it. ARP carries no
//!   proof of who sent it; a MAC list is what the gateway can check without trusting
//!   the segment. An `[[eip]]` without `nodes` keeps the old rule (any sender,
//!   `eip_flags::ANY_SENDER`), which one forged ARP subverts.
//! * Fragments: every fragment's address is translated; only the first carries the
//!   TCP/UDP checksum, which is updated there. ICMP errors (types 3, 11, 12): the
//!   quoted header's address is translated too (its own checksum updated, which keeps
//!   the ICMP checksum valid); the quoted transport checksum is left as it is. ARP
//!   requests for the EIP on the external segment are answered like a VIP's.

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns},
    programs::XdpContext,
};
use network_types::{ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use vip_common::{
    csum::csum_finish,
    eip_flags,
    xdp::{XDP_DROP, XDP_PASS, XDP_TX},
    EipEntry, EipNodeKey, EipStats, Owner,
};

use crate::{
    arp,
    maps::{EIPS_IN, EIPS_OUT, EIP_NODES, EIP_STATS, OWNERS, REDIRECT_DEVS},
    packet::{self, hdr_mut, Error, Frame, Mac},
    parse::{is_icmp_error, Addrs, Family, Packet, ICMP, TCP, UDP},
};

const AF_INET: u8 = 2;
const FIB_SUCCESS: i64 = 0;

/// The EIP's counters on this CPU.
///
/// # Safety
///
/// The caller holds no other reference to the same slot while it uses this one: a
/// packet takes its EIP's stats once.
#[inline(always)]
unsafe fn stats(e: &EipEntry) -> Option<&'static mut EipStats> {
    EIP_STATS
        .get_ptr_mut(e.stats_index as u32)
        // SAFETY: this CPU's slot, which no other CPU writes; the caller holds no
        // other reference to it.
        .map(|p| unsafe { &mut *p })
}

/// What a gateway makes of a neighbour announcement on the internal segment that
/// names a VIP of an EIP with a link-layer address.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Claim {
    /// The sender may own the VIP: learn it.
    Learn,
    /// Nothing to learn (not a unicast MAC); the frame goes on as before.
    Ignore,
    /// Not one of the VIP's nodes: count, drop.
    Refuse,
}

/// The owner-learning rule, in one place for both families: `mac` is the MAC the
/// frame claims the VIP at (ARP's sender hardware address; for IPv6 an NA's target
/// link-layer address), `key` the VIP's node key for it (an IPv4 VIP IPv4-mapped),
/// built only when it is looked up. Only a unicast MAC can own a VIP; it must be one
/// of the VIP's nodes unless the EIP learns from any sender. Runs for such
/// announcements only, never for the EIP's traffic.
#[inline(always)]
pub(crate) fn claim(flags: u16, mac: &Mac, key: impl FnOnce() -> EipNodeKey) -> Claim {
    let unicast = !packet::is_multicast(mac) && *mac != [0; 6];
    if flags & eip_flags::ANY_SENDER != 0 {
        return if unicast { Claim::Learn } else { Claim::Ignore };
    }
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    if unicast && unsafe { EIP_NODES.get(key()) }.is_some() {
        Claim::Learn
    } else {
        Claim::Refuse
    }
}

/// ARP on a gateway: answers requests for an EIP on its external interface, learns
/// VIP owners on the internal one (from the VIP's nodes only, see [`claim`]). None:
/// not ours, continue with the VIP rules.
#[inline(always)]
pub fn arp(ctx: &mut XdpContext, frame: &Frame) -> Result<Option<u32>, Error> {
    let body = arp::body(ctx)?;
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    if let Some(e) = unsafe { EIPS_IN.get(u32::from_ne_bytes(body.tpa)) } {
        if e.ext_ifindex == ingress && body.oper == arp::OP_REQUEST && body.spa != body.tpa {
            if !arp::well_formed(body, frame, &e.ext_mac) {
                return Ok(Some(XDP_DROP));
            }
            let entry = *e;
            arp::reply(ctx, &entry.ext_mac)?;
            // SAFETY: the packet's one reference to the EIP's stats.
            if let Some(s) = unsafe { stats(&entry) } {
                s.arp_replies += 1;
            }
            return Ok(Some(XDP_TX));
        }
    }
    // SAFETY: as above.
    if let Some(e) = unsafe { EIPS_OUT.get(u32::from_ne_bytes(body.spa)) } {
        if e.int_ifindex == ingress {
            match claim(e.flags, &body.sha, || EipNodeKey::v4(body.spa, body.sha)) {
                Claim::Learn => learn(e, u32::from_ne_bytes(body.spa), body.sha),
                Claim::Ignore => {}
                Claim::Refuse => {
                    let entry = *e;
                    // SAFETY: the packet's one reference to the EIP's stats.
                    if let Some(s) = unsafe { stats(&entry) } {
                        s.owner_refused += 1;
                    }
                    return Ok(Some(XDP_DROP));
                }
            }
        }
    }
    Ok(None)
}

/// Records the VIP's owner if it changed (a map write only on a change).
#[inline(always)]
fn learn(e: &EipEntry, vip: u32, mac: Mac) {
    // SAFETY: as above.
    let known = unsafe { OWNERS.get(vip) }.map(|o| o.mac);
    if known == Some(mac) {
        return;
    }
    let owner = Owner {
        mac,
        _pad: [0; 2],
        // SAFETY: a helper without side effects.
        updated_ns: unsafe { bpf_ktime_get_ns() },
    };
    if OWNERS.insert(vip, owner, 0).is_ok() {
        let entry = *e;
        // SAFETY: the packet's one reference to the EIP's stats.
        if let Some(s) = unsafe { stats(&entry) } {
            s.owner_changes += 1;
        }
    }
}

/// IPv4 on a gateway: translates EIP traffic in either direction. None: not EIP
/// traffic, continue with the VIP rules.
#[inline(always)]
pub fn ipv4(ctx: &mut XdpContext, frame: &Frame, pkt: &mut Packet) -> Result<Option<u32>, Error> {
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    if let Some(e) = unsafe { EIPS_IN.get(pkt.dst_v4) } {
        if e.ext_ifindex == ingress && frame.dst == e.ext_mac {
            let entry = *e;
            return inbound(ctx, frame, pkt, &entry).map(Some);
        }
    }
    let Addrs::V4 { src, .. } = pkt.addrs(ctx) else {
        return Ok(None);
    };
    let src = u32::from_ne_bytes(*src);
    // SAFETY: as above.
    if let Some(e) = unsafe { EIPS_OUT.get(src) } {
        if e.int_ifindex == ingress && frame.dst == e.int_mac {
            let entry = *e;
            return outbound(ctx, frame, pkt, &entry).map(Some);
        }
    }
    Ok(None)
}

#[inline(always)]
fn inbound(
    ctx: &mut XdpContext,
    frame: &Frame,
    pkt: &mut Packet,
    e: &EipEntry,
) -> Result<u32, Error> {
    if !translate(ctx, pkt, Addr::Dst, &e.eip, &e.vip)? {
        return Ok(XDP_PASS);
    }
    let vip = u32::from_ne_bytes(e.vip);
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    let next = match unsafe { OWNERS.get(vip) } {
        Some(o) => Some((o.mac, e.int_mac)),
        None => fib(ctx, e.eip, e.vip, e.int_ifindex),
    };
    send(ctx, frame, e, next, e.int_ifindex, true)
}

#[inline(always)]
fn outbound(
    ctx: &mut XdpContext,
    frame: &Frame,
    pkt: &mut Packet,
    e: &EipEntry,
) -> Result<u32, Error> {
    if !translate(ctx, pkt, Addr::Src, &e.vip, &e.eip)? {
        return Ok(XDP_PASS);
    }
    // The source was rewritten, the destination is the packet's.
    let next = fib(ctx, e.eip, pkt.dst_v4.to_ne_bytes(), e.ext_ifindex);
    send(ctx, frame, e, next, e.ext_ifindex, false)
}

/// Sets the MACs and redirects, or hands the (translated) packet to the kernel.
#[inline(always)]
fn send(
    ctx: &mut XdpContext,
    frame: &Frame,
    e: &EipEntry,
    next: Option<(Mac, Mac)>,
    out: u32,
    inbound: bool,
) -> Result<u32, Error> {
    // SAFETY: the packet's one reference to the EIP's stats.
    let s = unsafe { stats(e) };
    let Some((dst, src)) = next else {
        if let Some(s) = s {
            s.to_kernel += 1;
        }
        return Ok(XDP_PASS);
    };
    match REDIRECT_DEVS.redirect(out, XDP_PASS as u64) {
        Ok(act) => {
            packet::set_macs(ctx, &dst, &src)?;
            if let Some(s) = s {
                if inbound {
                    s.in_packets += 1;
                    s.in_bytes += frame.len;
                } else {
                    s.out_packets += 1;
                    s.out_bytes += frame.len;
                }
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

/// The next hop towards `dst` from the kernel's FIB and neighbour table, if it leaves
/// through `want_ifindex`: (destination MAC, source MAC).
#[inline(always)]
fn fib(ctx: &XdpContext, src: [u8; 4], dst: [u8; 4], want_ifindex: u32) -> Option<(Mac, Mac)> {
    // SAFETY: bpf_fib_lookup is plain data; zero is a valid value of every field.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: the helper reads and writes `p` only.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    (r == FIB_SUCCESS && p.ifindex == want_ifindex).then_some((p.dmac, p.smac))
}

/// Which address of an IPv4 header.
#[derive(Clone, Copy, PartialEq)]
enum Addr {
    Src,
    Dst,
}

#[inline(always)]
fn addr(ip: &mut Ipv4Hdr, which: Addr) -> &mut [u8; 4] {
    match which {
        Addr::Src => &mut ip.src_addr,
        Addr::Dst => &mut ip.dst_addr,
    }
}

/// Rewrites the IPv4 address `which` from `old` to `new`, with every checksum that
/// covers it, and decrements the TTL as a router does. For an ICMP error, the quoted
/// header's address of the other direction is rewritten too. False: leave the packet
/// to the kernel (TTL expiring).
#[inline(always)]
fn translate(
    ctx: &mut XdpContext,
    pkt: &mut Packet,
    which: Addr,
    old: &[u8; 4],
    new: &[u8; 4],
) -> Result<bool, Error> {
    let l = pkt.layout(ctx);
    let ip = hdr_mut::<Ipv4Hdr>(ctx, pkt.l3)?;
    if ip.ttl <= 1 {
        return Ok(false);
    }
    let mut csum = replace4(ip.check, *old, *new);
    // TTL and protocol share a 16-bit word.
    let word = [ip.ttl, ip.proto];
    ip.ttl -= 1;
    csum = replace2(csum, word, [ip.ttl, ip.proto]);
    *addr(ip, which) = *new;
    ip.check = csum;

    // Only the first fragment carries the transport header.
    if !l.first_fragment() {
        return Ok(true);
    }
    match l.proto {
        TCP => {
            let tcp = hdr_mut::<TcpHdr>(ctx, l.l4)?;
            tcp.check = replace4(tcp.check, *old, *new);
        }
        UDP => {
            let udp = hdr_mut::<UdpHdr>(ctx, l.l4)?;
            // Zero: no checksum (IPv4). A result of zero is sent as all ones.
            if udp.check != [0, 0] {
                let n = replace4(udp.check, *old, *new);
                udp.check = if n == [0, 0] { [0xff, 0xff] } else { n };
            }
        }
        ICMP => {
            let icmp_type = pkt.transport(ctx).icmp_type().ok_or(Error::Truncated)?;
            if is_icmp_error(Family::V4, icmp_type) {
                let inner = hdr_mut::<Ipv4Hdr>(ctx, l.quoted())?;
                // The quoted packet went the other way.
                let quoted = if which == Addr::Dst {
                    Addr::Src
                } else {
                    Addr::Dst
                };
                if *addr(inner, quoted) == *old {
                    let c = replace4(inner.check, *old, *new);
                    *addr(inner, quoted) = *new;
                    inner.check = c;
                }
            }
        }
        _ => {}
    }
    Ok(true)
}

/// RFC 1624 incremental update of a checksum for a 32-bit field change.
#[inline(always)]
fn replace4(csum: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
    let mut sum = (!u16::from_be_bytes(csum)) as u32;
    sum += (!u16::from_be_bytes([old[0], old[1]])) as u32;
    sum += (!u16::from_be_bytes([old[2], old[3]])) as u32;
    sum += u16::from_be_bytes([new[0], new[1]]) as u32;
    sum += u16::from_be_bytes([new[2], new[3]]) as u32;
    csum_finish(sum).to_be_bytes()
}

/// The same for a 16-bit word.
#[inline(always)]
fn replace2(csum: [u8; 2], old: [u8; 2], new: [u8; 2]) -> [u8; 2] {
    let mut sum = (!u16::from_be_bytes(csum)) as u32;
    sum += (!u16::from_be_bytes(old)) as u32;
    sum += u16::from_be_bytes(new) as u32;
    csum_finish(sum).to_be_bytes()
}
