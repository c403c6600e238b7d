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

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use vip_common::global;

use crate::{
    maps::{self, VIPS_V4},
    packet::{is_multicast, ptr_at, Error, Frame, Mac, BROADCAST, ETH_HLEN},
};

/// The Ethernet/IPv4 ARP body, all fields in network order.
#[repr(C)]
struct ArpEthIpv4 {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    op: [u8; 2],
    sha: Mac,
    spa: [u8; 4],
    tha: Mac,
    tpa: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<ArpEthIpv4>() == 28);

const OP_REQUEST: [u8; 2] = [0, 1];
const OP_REPLY: [u8; 2] = [0, 2];

#[inline(always)]
pub fn handle(ctx: &XdpContext, frame: &Frame) -> Result<u32, Error> {
    let arp: *mut ArpEthIpv4 = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at; the frame is ours until we return.
    let arp = unsafe { &mut *arp };
    let tpa = u32::from_ne_bytes(arp.tpa);
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    let Some(entry) = (unsafe { VIPS_V4.get(tpa) }) else {
        return Ok(xdp_action::XDP_PASS);
    };
    // Replies and gratuitous announcements are the kernel's to learn from.
    if arp.op != OP_REQUEST || arp.spa == arp.tpa {
        return Ok(xdp_action::XDP_PASS);
    }
    let well_formed = arp.htype == [0, 1]
        && arp.ptype == [0x08, 0x00]
        && arp.hlen == 6
        && arp.plen == 4
        && !is_multicast(&arp.sha)
        && (frame.dst == BROADCAST || frame.dst == entry.own_mac);
    if !well_formed || !maps::answers(entry) {
        maps::count_global(global::NOT_ANSWERED);
        return Ok(xdp_action::XDP_DROP);
    }

    let requester = arp.sha;
    let requester_ip = arp.spa;
    arp.op = OP_REPLY;
    arp.tha = requester;
    arp.tpa = requester_ip;
    arp.sha = entry.own_mac;
    arp.spa = tpa.to_ne_bytes();
    crate::packet::set_macs(ctx, &requester, &entry.own_mac)?;
    if let Some(stats) = maps::stats(entry) {
        stats.arp_replies += 1;
    }
    Ok(xdp_action::XDP_TX)
}
