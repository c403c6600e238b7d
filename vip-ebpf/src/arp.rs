//! ARP requests for the VIPs we own, answered in place.
//!
//! Answered: Ethernet/IPv4 requests (htype 1, ptype 0x0800, hlen 6, plen 4, op 1),
//! broadcast or unicast to our MAC, from a unicast sender, whose target is a VIP we
//! own. ARP probes (sender IP 0.0.0.0, RFC 5227) are answered too, as the kernel does,
//! to defend the address.
//!
//! The data plane is the only thing that answers requests for a VIP: any other
//! request whose target is a VIP in the table (malformed, for a VIP we do not own now,
//! or whose lease has expired) is dropped, so the kernel, which may hold the VIP as an
//! address, can never answer it either. Replies and gratuitous ARP (sender IP ==
//! target IP) pass to the kernel untouched: it learns from them and never answers
//! them. Frames too short to name a target pass too.

use aya_ebpf::programs::XdpContext;
use network_types::arp::ArpHdr;
use vip_common::{
    global,
    xdp::{XDP_DROP, XDP_PASS, XDP_TX},
};

use crate::{
    maps,
    packet::{is_multicast, ptr_at, Error, Frame, Mac, BROADCAST, ETH_HLEN},
};

/// The Ethernet/IPv4 ARP body (network-types' `ArpHdr`), all fields in network order.
pub type ArpEthIpv4 = ArpHdr;
const _: () = assert!(ArpHdr::LEN == 28);

pub const OP_REQUEST: [u8; 2] = [0, 1];
const OP_REPLY: [u8; 2] = [0, 2];

/// The ARP body of the frame (the frame is ours until we return).
#[inline(always)]
pub fn body(ctx: &XdpContext) -> Result<&mut ArpEthIpv4, Error> {
    let arp: *mut ArpEthIpv4 = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(unsafe { &mut *arp })
}

/// A request we may answer: Ethernet/IPv4, from a unicast sender, broadcast or to
/// `own_mac`, and not gratuitous (the caller checked the opcode and spa != tpa).
#[inline(always)]
pub fn well_formed(arp: &ArpEthIpv4, frame: &Frame, own_mac: &Mac) -> bool {
    arp.htype == [0, 1]
        && arp.ptype == [0x08, 0x00]
        && arp.hlen == 6
        && arp.plen == 4
        && !is_multicast(&arp.sha)
        && (frame.dst == BROADCAST || frame.dst == *own_mac)
}

/// Turns the request into our reply, in place: "`tpa` is at `own_mac`".
#[inline(always)]
pub fn reply(ctx: &XdpContext, arp: &mut ArpEthIpv4, own_mac: &Mac) -> Result<(), Error> {
    let requester = arp.sha;
    let requester_ip = arp.spa;
    let ip = arp.tpa;
    arp.oper = OP_REPLY;
    arp.tha = requester;
    arp.tpa = requester_ip;
    arp.sha = *own_mac;
    arp.spa = ip;
    crate::packet::set_macs(ctx, &requester, own_mac)
}

#[inline(always)]
pub fn handle(ctx: &XdpContext, frame: &Frame) -> Result<u32, Error> {
    let arp = body(ctx)?;
    let tpa = u32::from_ne_bytes(arp.tpa);
    let Some(entry) = maps::vip_v4(tpa) else {
        return Ok(XDP_PASS);
    };
    // Replies and gratuitous announcements are the kernel's to learn from.
    if arp.oper != OP_REQUEST || arp.spa == arp.tpa {
        return Ok(XDP_PASS);
    }
    if !well_formed(arp, frame, &entry.own_mac) || !maps::answers(entry) {
        maps::count_global(global::NOT_ANSWERED);
        return Ok(XDP_DROP);
    }
    reply(ctx, arp, &entry.own_mac)?;
    if let Some(stats) = maps::stats(entry) {
        stats.arp_replies += 1;
    }
    Ok(XDP_TX)
}
