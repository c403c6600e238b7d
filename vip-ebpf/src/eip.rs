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
use network_types::{icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use vip_common::{
    csum::csum_finish,
    eip_flags,
    xdp::{XDP_DROP, XDP_PASS, XDP_TX},
    EipEntry, EipNodeKey, EipStats, Owner,
};

use crate::{
    arp,
    maps::{EIPS_IN, EIPS_OUT, EIP_NODES, EIP_STATS, OWNERS, REDIRECT_DEVS},
    packet::{self, ptr_at, Error, Frame, Mac, ETH_HLEN},
};

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const AF_INET: u8 = 2;
const FIB_SUCCESS: i64 = 0;

#[inline(always)]
fn stats(e: &EipEntry) -> Option<&mut EipStats> {
    // SAFETY: per-CPU slot, nobody else writes it concurrently.
    EIP_STATS
        .get_ptr_mut(e.stats_index as u32)
        .map(|p| unsafe { &mut *p })
}

/// What a gateway makes of a neighbour announcement on the internal segment that
/// names a VIP of an EIP with a link-layer address.
#[derive(Clone, Copy, PartialEq)]
enum Claim {
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
fn claim(flags: u16, mac: &Mac, key: impl FnOnce() -> EipNodeKey) -> Claim {
    let unicast = !packet::is_multicast(mac) && *mac != [0; 6];
    if flags & eip_flags::ANY_SENDER != 0 {
        return if unicast { Claim::Learn } else { Claim::Ignore };
    }
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    if unicast && unsafe { EIP_NODES.get(&key()) }.is_some() {
        Claim::Learn
    } else {
        Claim::Refuse
    }
}

/// ARP on a gateway: answers requests for an EIP on its external interface, learns
/// VIP owners on the internal one (from the VIP's nodes only, see [`claim`]). None:
/// not ours, continue with the VIP rules.
#[inline(always)]
pub fn arp(ctx: &XdpContext, frame: &Frame) -> Result<Option<u32>, Error> {
    let body = arp::body(ctx)?;
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    if let Some(e) = unsafe { EIPS_IN.get(u32::from_ne_bytes(body.tpa)) } {
        if e.ext_ifindex == ingress && body.oper == arp::OP_REQUEST && body.spa != body.tpa {
            if !arp::well_formed(body, frame, &e.ext_mac) {
                return Ok(Some(XDP_DROP));
            }
            let ext_mac = e.ext_mac;
            let entry = *e;
            arp::reply(ctx, body, &ext_mac)?;
            if let Some(s) = stats(&entry) {
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
                    if let Some(s) = stats(&entry) {
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
    // SAFETY: a helper without side effects.
    let owner = Owner {
        mac,
        _pad: [0; 2],
        updated_ns: unsafe { bpf_ktime_get_ns() },
    };
    if OWNERS.insert(vip, owner, 0).is_ok() {
        let entry = *e;
        if let Some(s) = stats(&entry) {
            s.owner_changes += 1;
        }
    }
}

/// IPv4 on a gateway: translates EIP traffic in either direction. None: not EIP
/// traffic, continue with the VIP rules.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, frame: &Frame) -> Result<Option<u32>, Error> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 || ip.vihl & 0x0f < 5 {
        return Ok(None);
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let dst = u32::from_ne_bytes(ip.dst_addr);
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    if let Some(e) = unsafe { EIPS_IN.get(dst) } {
        if e.ext_ifindex == ingress && frame.dst == e.ext_mac {
            let entry = *e;
            return inbound(ctx, frame, &entry).map(Some);
        }
    }
    let src = u32::from_ne_bytes(ip.src_addr);
    // SAFETY: as above.
    if let Some(e) = unsafe { EIPS_OUT.get(src) } {
        if e.int_ifindex == ingress && frame.dst == e.int_mac {
            let entry = *e;
            return outbound(ctx, frame, &entry).map(Some);
        }
    }
    Ok(None)
}

#[inline(always)]
fn inbound(ctx: &XdpContext, frame: &Frame, e: &EipEntry) -> Result<u32, Error> {
    if !translate(ctx, Addr::Dst, &e.eip, &e.vip)? {
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
fn outbound(ctx: &XdpContext, frame: &Frame, e: &EipEntry) -> Result<u32, Error> {
    if !translate(ctx, Addr::Src, &e.vip, &e.eip)? {
        return Ok(XDP_PASS);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let dst = unsafe { (*ip).dst_addr };
    let next = fib(ctx, e.eip, dst, e.ext_ifindex);
    send(ctx, frame, e, next, e.ext_ifindex, false)
}

/// Sets the MACs and redirects, or hands the (translated) packet to the kernel.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    frame: &Frame,
    e: &EipEntry,
    next: Option<(Mac, Mac)>,
    out: u32,
    inbound: bool,
) -> Result<u32, Error> {
    let s = stats(e);
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
fn translate(ctx: &XdpContext, which: Addr, old: &[u8; 4], new: &[u8; 4]) -> Result<bool, Error> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &mut *ip };
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

    let first_fragment = u16::from_be_bytes(ip.frags) & 0x1fff == 0;
    if !first_fragment {
        return Ok(true);
    }
    let l4 = ETH_HLEN + ((ip.vihl as usize & 0x0f) * 4 & 0x3c);
    match ip.proto {
        PROTO_TCP => {
            let tcp: *mut TcpHdr = ptr_at(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            let tcp = unsafe { &mut *tcp };
            tcp.check = replace4(tcp.check, *old, *new);
        }
        PROTO_UDP => {
            let udp: *mut UdpHdr = ptr_at(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            let udp = unsafe { &mut *udp };
            // Zero: no checksum (IPv4). A result of zero is sent as all ones.
            if udp.check != [0, 0] {
                let n = replace4(udp.check, *old, *new);
                udp.check = if n == [0, 0] { [0xff, 0xff] } else { n };
            }
        }
        PROTO_ICMP => {
            // The whole ICMP header: a 1-byte read at a variable offset compiles to a
            // bounds check the verifier cannot follow.
            let icmp: *const Icmpv4Hdr = ptr_at(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            if matches!(unsafe { (*icmp).type_ }, 3 | 11 | 12) {
                let inner: *mut Ipv4Hdr = ptr_at(ctx, l4 + Icmpv4Hdr::LEN)?;
                // SAFETY: bounds checked by ptr_at.
                let inner = unsafe { &mut *inner };
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
