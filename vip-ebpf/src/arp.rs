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
use network_types::{arp::ArpHdr, eth::EthHdr};
use vip_common::{
    global,
    xdp::{XDP_DROP, XDP_PASS, XDP_TX},
};

use crate::{
    maps,
    packet::{hdr, hdr_mut, is_multicast, Error, Frame, Mac, Plain, BROADCAST, ETH_HLEN},
};

/// The Ethernet/IPv4 ARP body (network-types' `ArpHdr`), all fields in network order.
pub type ArpEthIpv4 = ArpHdr;
const _: () = assert!(ArpHdr::LEN == 28);

/// What an answer rewrites: the Ethernet header and the ARP body behind it.
#[repr(C)]
struct ArpFrame {
    eth: EthHdr,
    arp: ArpEthIpv4,
}
const _: () = assert!(core::mem::size_of::<ArpFrame>() == ETH_HLEN + ArpHdr::LEN);
// SAFETY: `#[repr(C)]` of `Plain` headers, without padding (the sizes add up).
unsafe impl Plain for ArpFrame {}

pub const OP_REQUEST: [u8; 2] = [0, 1];
const OP_REPLY: [u8; 2] = [0, 2];

/// The ARP body of the frame, to read; [`reply`] rewrites it.
#[inline(always)]
pub fn body(ctx: &XdpContext) -> Result<&ArpEthIpv4, Error> {
    hdr(ctx, ETH_HLEN)
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

/// Turns the request into our reply, in place: "`tpa` is at `own_mac`", sent back to
/// the requester.
#[inline(always)]
pub fn reply(ctx: &mut XdpContext, own_mac: &Mac) -> Result<(), Error> {
    let f = hdr_mut::<ArpFrame>(ctx, 0)?;
    let requester = f.arp.sha;
    let requester_ip = f.arp.spa;
    let ip = f.arp.tpa;
    f.arp.oper = OP_REPLY;
    f.arp.tha = requester;
    f.arp.tpa = requester_ip;
    f.arp.sha = *own_mac;
    f.arp.spa = ip;
    f.eth.dst_addr = requester;
    f.eth.src_addr = *own_mac;
    Ok(())
}

#[inline(always)]
pub fn handle(ctx: &mut XdpContext, frame: &Frame) -> Result<u32, Error> {
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
    reply(ctx, &entry.own_mac)?;
    // SAFETY: the packet's one reference to the VIP's stats.
    if let Some(stats) = unsafe { maps::stats(entry) } {
        stats.arp_replies += 1;
    }
    Ok(XDP_TX)
}
