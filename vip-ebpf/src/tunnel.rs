//! IPIP between the nodes of a balanced group on different segments (anycast over
//! BGP across racks). On one segment the director and its members hand a packet
//! over by rewriting the Ethernet destination; a node behind a router has no MAC
//! on this segment, so the packet travels inside an outer IPv4 header (protocol 4)
//! from this node's `TUNNEL_SRC` to the node's address, in a frame to the router,
//! and the node's own program takes the outer header off again ([`decap`]): the
//! kernel needs no ipip module, and nothing but the two programs sees the tunnel.
//!
//! * **What may come out of the tunnel:** an IPv4 packet to a balanced VIP, from a
//!   node of that VIP's group, in a frame to our MAC (`steer` checks the outer
//!   source against `BALANCE_NODES`); anything else that was decapsulated, an inner
//!   packet the parser or the steering cannot make sense of included, is dropped
//!   (`TUNNEL_REFUSED`, [`refused`]). The tunnel is no way into the host.
//! * **MTU:** the outer header costs 20 bytes. A packet that would no longer fit the
//!   path's MTU (`BalanceNode::mtu`, the interface's) is not fragmented: with DF set
//!   (TCP always, UDP by default on Linux) the client gets ICMP "fragmentation
//!   needed" for `mtu - 20`, from the VIP, through the router, and sends smaller segments
//!   ([`frag_needed`]); without DF it is dropped. Both are counted in
//!   `TUNNEL_TOO_BIG`. No MSS clamping: the client's MSS is set by the server's SYN-ACK,
//!   which leaves through the member's stack, out of an XDP program's reach.
//! * IPv4 only: an IPv6 packet for a node on another segment is served where it is.
//!
//! Every function that moves the frame's start (`bpf_xdp_adjust_head`) consumes or
//! comes after the last use of the packet's description (`parse::Packet` points
//! into the frame): the callers parse again.

use aya_ebpf::programs::XdpContext;
use network_types::eth::EthHdr;
use vip_common::{
    csum::csum_finish,
    global,
    xdp::{XDP_DROP, XDP_TX},
    BalanceNode,
};

use crate::{
    maps,
    packet::{self, adjust_head, hdr, hdr_mut, Error, Frame, Mac, ETH_HLEN, ETH_P_IP},
    parse::{Addrs, Family, Packet, ICMP, IPIP},
};

/// The outer IPv4 header: no options.
const OUTER: usize = 20;
/// A frame with the outer header and the Ethernet header in front of it.
const HEAD: usize = ETH_HLEN + OUTER;
/// The outer header's TTL: it crosses the routers between the segments.
const TTL: u8 = 64;
/// IPv4's "don't fragment" bit, in the first byte of the fragment field.
const DF: u8 = 0x40;

/// This node's tunnel address (`Settings::tunnel_src`); 0: no tunnel, and the
/// verifier drops every path behind a test of it.
#[inline(always)]
pub fn src() -> u32 {
    maps::tunnel_src()
}

/// Whether the frame is a packet [`decap`] took out of the tunnel: the one test of
/// `Frame::tunnel`, behind `src()` so that a node without a tunnel pays a constant.
#[inline(always)]
pub fn decapsulated(frame: &Frame) -> bool {
    src() != 0 && frame.tunnel != 0
}

/// Whether the packet is IPIP to this node's tunnel address: a whole datagram (no
/// options, not a fragment; the sender never fragments, see the MTU above).
#[inline(always)]
pub fn for_us(ctx: &XdpContext, pkt: &mut Packet) -> bool {
    let me = src();
    if me == 0 || pkt.family != Family::V4 || pkt.dst_v4 != me {
        return false;
    }
    let l = pkt.layout(ctx);
    l.proto == IPIP && l.plain()
}

/// Takes the outer header off a packet [`for_us`] accepted: the frame becomes the
/// inner packet behind the same Ethernet addresses. The description it returns
/// carries the outer source in `tunnel` (what `steer` checks against the group's
/// nodes). Consumes the packet's description: the header it points at moved.
#[inline(always)]
pub fn decap(ctx: &mut XdpContext, pkt: Packet) -> Result<Frame, Error> {
    let from = match pkt.addrs(ctx) {
        Addrs::V4 { src, .. } => u32::from_ne_bytes(*src),
        Addrs::V6 { .. } => return Err(Error::Truncated),
    };
    let eth = hdr::<EthHdr>(ctx, 0)?;
    let (dst, src) = (eth.dst_addr, eth.src_addr);
    adjust_head(ctx, OUTER as i32)?;
    packet::set_macs(ctx, &dst, &src)?;
    hdr_mut::<EthHdr>(ctx, 0)?.ether_type = ETH_P_IP.to_be();
    let mut frame = Frame::new(ctx)?;
    frame.tunnel = from;
    maps::count_global(global::TUNNEL_DECAPSULATED);
    Ok(frame)
}

/// A decapsulated packet refused (`TUNNEL_REFUSED`): dropped.
#[inline(always)]
pub fn refused() -> u32 {
    maps::count_global(global::TUNNEL_REFUSED);
    XDP_DROP
}

/// Sends the IP packet in the frame to `node` inside IPIP, with `own_mac` as the
/// Ethernet source: the action, or None when it cannot go (an IPv6 packet, or the
/// next hop not resolved yet), and the caller serves it here instead. A packet too
/// big for the tunnel is answered or dropped here (see the module's MTU).
///
/// Builds the headers in the frame itself, from scalars: whatever stack it needs
/// adds to the director's.
#[inline(always)]
pub fn send(
    ctx: &mut XdpContext,
    family: Family,
    node: &BalanceNode,
    own_mac: &Mac,
) -> Result<Option<u32>, Error> {
    if family != Family::V4 || node.next_hop == [0; 6] {
        return Ok(None);
    }
    let ip = hdr::<[u8; OUTER]>(ctx, ETH_HLEN)?;
    let inner = u16::from_be_bytes([ip[2], ip[3]]) as u32;
    let (tos, df) = (ip[1], ip[6] & DF != 0);
    let total = inner + OUTER as u32;
    if total > node.mtu as u32 {
        maps::count_global(global::TUNNEL_TOO_BIG);
        // Without DF it may not be answered; with IPv4 options its quote would not
        // be the header and 8 bytes.
        if !df || ip[0] != 0x45 {
            return Ok(Some(XDP_DROP));
        }
        let mtu = node.mtu.saturating_sub(OUTER as u16);
        return frag_needed(ctx, mtu, &node.next_hop, own_mac).map(Some);
    }
    adjust_head(ctx, -(OUTER as i32))?;
    let me = src().to_ne_bytes();
    let h = hdr_mut::<[u8; HEAD]>(ctx, 0)?;
    h[0..6].copy_from_slice(&node.next_hop);
    h[6..12].copy_from_slice(own_mac);
    let t = (total as u16).to_be_bytes();
    let outer = [
        [0x08, 0x00],
        [0x45, tos],
        t,
        [0, 0],
        [DF, 0],
        [TTL, IPIP],
        [0, 0],
        [me[0], me[1]],
        [me[2], me[3]],
        [node.tunnel[0], node.tunnel[1]],
        [node.tunnel[2], node.tunnel[3]],
    ];
    ip_header(h, outer);
    maps::count_global(global::TUNNEL_ENCAPSULATED);
    Ok(Some(XDP_TX))
}

/// The quoted part of an ICMP error: the client's IPv4 header (no options) and the
/// first 8 bytes behind it (the ports, and TCP's sequence number, which the
/// client's stack checks).
const QUOTE: usize = 20 + 8;
/// ICMP's header: type, code, checksum, unused, next-hop MTU (RFC 1191).
const ICMP_HLEN: usize = 8;
/// What goes in front of the quote: a new IPv4 header and the ICMP header.
const ERROR_HEAD: usize = OUTER + ICMP_HLEN;
/// The whole error frame.
const ERROR_LEN: usize = ETH_HLEN + ERROR_HEAD + QUOTE;
/// Where the packet's own IPv4 header (the quote) is once the new headers are in
/// front of its Ethernet header.
const OLD_IP: usize = ERROR_HEAD + ETH_HLEN;

/// Turns the frame into ICMP "fragmentation needed" (type 3, code 4) for `mtu`, from
/// the VIP to the client, in a frame from `own_mac` to `router` (the tunnel's next
/// hop, which routes it to the client): the client's stack lowers its path MTU to
/// the VIP and resends in smaller segments. Not back to the frame's source: on the
/// director that is often a member that handed over a packet the router brought it,
/// and a member's kernel does not forward. The quoted
/// header is the packet's own, left where it is: the new headers go in front
/// (`bpf_xdp_adjust_head`), the frame is cut behind the quote, and the addresses
/// are copied from the old headers before the new ones cover them.
#[inline(always)]
fn frag_needed(ctx: &mut XdpContext, mtu: u16, router: &Mac, own_mac: &Mac) -> Result<u32, Error> {
    let len = ctx.data_end() - ctx.data();
    if len < ETH_HLEN + QUOTE {
        return Ok(XDP_DROP);
    }
    adjust_head(ctx, -(ERROR_HEAD as i32))?;
    // The frame was too big for the tunnel: far longer than the error. Past the
    // moved start, a failure leaves no frame worth passing.
    if packet::adjust_tail(ctx, -((len + ERROR_HEAD - ERROR_LEN) as i32)).is_err() {
        return Ok(XDP_DROP);
    }
    let Ok(h) = hdr_mut::<[u8; ERROR_LEN]>(ctx, 0) else {
        return Ok(XDP_DROP);
    };
    h[0..6].copy_from_slice(router);
    h[6..12].copy_from_slice(own_mac);
    // Byte by byte at constant offsets: the new headers lie in front of the old
    // ones they copy from, and each old byte is read before a new one covers it.
    for i in 0..4 {
        // From the VIP (the quote's destination) to the client (its source).
        h[ETH_HLEN + 12 + i] = h[OLD_IP + 16 + i];
        h[ETH_HLEN + 16 + i] = h[OLD_IP + 12 + i];
    }
    let t = ((ERROR_HEAD + QUOTE) as u16).to_be_bytes();
    let m = mtu.to_be_bytes();
    let head = [
        [0x08, 0x00],
        [0x45, 0xc0],
        t,
        [0, 0],
        [0, 0],
        [TTL, ICMP],
        [0, 0],
    ];
    ip_header(h, head);
    let icmp = [3, 4, 0, 0, 0, 0, m[0], m[1]];
    for (i, b) in icmp.iter().enumerate() {
        h[HEAD + i] = *b;
    }
    let c = checksum(h, HEAD, ERROR_LEN);
    h[HEAD + 2] = c[0];
    h[HEAD + 3] = c[1];
    Ok(XDP_TX)
}

// Both moves keep the frame's start 2-aligned.
const _: () = assert!(OUTER.is_multiple_of(2) && ERROR_HEAD.is_multiple_of(2));

/// Writes the EtherType and the first words of an IPv4 header behind it from
/// `words` (the EtherType first), at constant offsets, then the header's checksum
/// (the addresses already in place where `words` stops short of them).
#[inline(always)]
fn ip_header<const N: usize, const W: usize>(h: &mut [u8; N], words: [[u8; 2]; W]) {
    for (i, w) in words.iter().enumerate() {
        h[12 + 2 * i] = w[0];
        h[13 + 2 * i] = w[1];
    }
    let c = checksum(h, ETH_HLEN, ETH_HLEN + OUTER);
    h[ETH_HLEN + 10] = c[0];
    h[ETH_HLEN + 11] = c[1];
}

/// The Internet checksum of `h[from..to]` (an even length; its checksum field
/// zero), at constant offsets.
#[inline(always)]
fn checksum<const N: usize>(h: &[u8; N], from: usize, to: usize) -> [u8; 2] {
    let mut sum = 0u32;
    let mut i = from;
    while i + 1 < to && i + 1 < N {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    csum_finish(sum).to_be_bytes()
}
