//! Builders for the frames the tests and benchmarks feed the data plane and send on
//! the lab's wire: ARP, neighbour discovery, UDP and TCP over IPv4 and IPv6. Plain
//! byte layouts, no parsing. The agent keeps only the ones it sends itself
//! (`vip::frames`: gratuitous ARP, unsolicited NA, the solicited-node group);
//! `tests/tests/wire.rs` checks that these build the same bytes.
//!
//! The lab does not depend on vip (xtask runs it before vip is built), so a MAC is
//! anything that is six bytes: vip's `Mac`, the lab's [`crate::wire::Mac`], `[u8; 6]`.

use std::net::{Ipv4Addr, Ipv6Addr};

pub use vip_common::{
    csum::csum_finish,
    ether::{ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6},
};

/// A MAC address as the builders take it.
pub trait MacBytes: Into<[u8; 6]> {}
impl<T: Into<[u8; 6]>> MacBytes for T {}

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
/// Ethernet's minimum frame (without FCS): shorter frames are padded to it on the wire.
pub const ETH_MIN_LEN: usize = 60;
pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const ICMPV6: u8 = 58;

pub fn ethernet(dst: impl MacBytes, src: impl MacBytes, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&dst.into());
    f.extend_from_slice(&src.into());
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An Ethernet/IPv4 ARP frame, padded to the Ethernet minimum.
pub fn arp(
    eth_dst: impl MacBytes,
    op: u16,
    sha: impl MacBytes,
    spa: Ipv4Addr,
    tha: impl MacBytes,
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let sha = sha.into();
    let mut f = ethernet(eth_dst, sha, ETH_P_ARP);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha.into());
    f.extend_from_slice(&tpa.octets());
    f.resize(ETH_MIN_LEN, 0);
    f
}

/// A broadcast ARP request for `tpa`, as a client's kernel sends it.
pub fn arp_request(sha: impl MacBytes, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    arp(BROADCAST, ARP_REQUEST, sha, spa, [0; 6], tpa)
}

/// Adds `data` to an internet-checksum accumulator (16-bit big-endian words, an odd
/// last byte padded with zero); finish with [`csum_finish`] (vip-common).
pub fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

/// The ICMPv6 checksum of `msg` between `src` and `dst`: the value for its checksum
/// field when that is zero, 0 when the field already holds the right one.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum = csum_add(0, &src.octets());
    sum = csum_add(sum, &dst.octets());
    sum = csum_add(sum, &(msg.len() as u32).to_be_bytes());
    sum = csum_add(sum, &[0, 0, 0, ICMPV6]);
    csum_finish(csum_add(sum, msg))
}

/// An Ethernet/IPv6 frame around an ICMPv6 message whose checksum is filled in.
pub fn icmpv6(
    eth_dst: impl MacBytes,
    eth_src: impl MacBytes,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    mut msg: Vec<u8>,
) -> Vec<u8> {
    msg[2] = 0;
    msg[3] = 0;
    let c = icmpv6_checksum(src, dst, &msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = ethernet(eth_dst, eth_src, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    f.push(ICMPV6);
    f.push(hop_limit);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&msg);
    f
}

/// The solicited-node multicast address of `ip` and its Ethernet group.
fn solicited_node(ip: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let o = ip.octets();
    let addr = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        u16::from_be_bytes([o[14], o[15]]),
    );
    (addr, [0x33, 0x33, 0xff, o[13], o[14], o[15]])
}

/// A neighbour solicitation for `target`, to its solicited-node group or unicast to
/// `unicast_to` (NUD); `src` unspecified makes it a DAD probe (then no source
/// link-layer option is included).
pub fn neighbour_solicitation(
    eth_src: impl MacBytes,
    src: Ipv6Addr,
    target: Ipv6Addr,
    unicast_to: Option<[u8; 6]>,
) -> Vec<u8> {
    let eth_src = eth_src.into();
    let mut msg = vec![135, 0, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&target.octets());
    if !src.is_unspecified() {
        msg.extend_from_slice(&[1, 1]);
        msg.extend_from_slice(&eth_src);
    }
    let (dst, eth_dst) = match unicast_to {
        Some(mac) => (target, mac),
        None => solicited_node(target),
    };
    icmpv6(eth_dst, eth_src, src, dst, 255, msg)
}

/// A neighbour advertisement with the override flag and `mac` as the target's
/// link-layer address.
pub fn neighbour_advertisement(
    eth_dst: impl MacBytes,
    mac: impl MacBytes,
    ip: Ipv6Addr,
    dst: Ipv6Addr,
    solicited: bool,
) -> Vec<u8> {
    let mac = mac.into();
    let flags = 0x20 | if solicited { 0x40 } else { 0 };
    let mut msg = vec![136, 0, 0, 0, flags, 0, 0, 0];
    msg.extend_from_slice(&ip.octets());
    msg.extend_from_slice(&[2, 1]);
    msg.extend_from_slice(&mac);
    icmpv6(eth_dst, mac, ip, dst, 255, msg)
}

/// An IPv4 header (checksum filled in) + UDP (checksum 0, allowed for IPv4).
pub fn udp4(
    eth_dst: impl MacBytes,
    eth_src: impl MacBytes,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = ethernet(eth_dst, eth_src, ETH_P_IP);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = csum_finish(csum_add(0, &ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    if f.len() < ETH_MIN_LEN {
        f.resize(ETH_MIN_LEN, 0);
    }
    f
}

/// An IPv6 header + UDP with its (mandatory) checksum.
pub fn udp6(
    eth_dst: impl MacBytes,
    eth_src: impl MacBytes,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut sum = csum_add(0, &src.octets());
    sum = csum_add(sum, &dst.octets());
    sum = csum_add(sum, &(len as u32).to_be_bytes());
    sum = csum_add(sum, &[0, 0, 0, 17]);
    let c = csum_finish(csum_add(sum, &udp));
    udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    let mut f = ethernet(eth_dst, eth_src, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.push(17);
    f.push(64);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&udp);
    f
}

/// TCP flag bits (byte 13 of the header).
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// A 20-byte TCP header (no options) + payload, checksum over `pseudo` (the
/// pseudo-header's sum).
fn tcp(pseudo: u32, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1000u32.to_be_bytes());
    t.extend_from_slice(&(if flags & TCP_ACK != 0 { 2000u32 } else { 0 }).to_be_bytes());
    t.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let c = csum_finish(csum_add(pseudo + t.len() as u32 + 6, &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// An IPv4 header with `options` (a multiple of 4 bytes; checksum filled in) + TCP.
#[allow(clippy::too_many_arguments)]
pub fn tcp4(
    eth_dst: impl MacBytes,
    eth_src: impl MacBytes,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let seg = tcp(
        csum_add(csum_add(0, &src.octets()), &dst.octets()),
        sport,
        dport,
        flags,
        payload,
    );
    let ihl = 5 + options.len() / 4;
    let mut ip = vec![0x40 | ihl as u8, 0];
    ip.extend_from_slice(&((ihl * 4 + seg.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(options);
    let c = csum_finish(csum_add(0, &ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = ethernet(eth_dst, eth_src, ETH_P_IP);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&seg);
    if f.len() < ETH_MIN_LEN {
        f.resize(ETH_MIN_LEN, 0);
    }
    f
}

/// An IPv6 header + TCP.
#[allow(clippy::too_many_arguments)]
pub fn tcp6(
    eth_dst: impl MacBytes,
    eth_src: impl MacBytes,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let seg = tcp(
        csum_add(csum_add(0, &src.octets()), &dst.octets()),
        sport,
        dport,
        flags,
        payload,
    );
    let mut f = ethernet(eth_dst, eth_src, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    f.push(6);
    f.push(64);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&seg);
    f
}

// Reshaping a built frame: the parser's odd shapes.

/// IPv4 with 4 bytes of options (NOP NOP NOP EOL) in front of the payload.
pub fn with_ip_options(f: &[u8]) -> Vec<u8> {
    let mut out = f[..34].to_vec();
    out.extend_from_slice(&[1, 1, 1, 0]);
    out.extend_from_slice(&f[34..]);
    out[14] = 0x46;
    let total = u16::from_be_bytes([out[16], out[17]]) + 4;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    ipv4_checksum(&mut out);
    out
}

/// IPv4 with its fragment field set (offset in 8-byte units, more fragments).
pub fn fragment(f: &[u8], offset: u16, more: bool) -> Vec<u8> {
    let mut out = f.to_vec();
    let v = offset | if more { 0x2000 } else { 0 };
    out[20..22].copy_from_slice(&v.to_be_bytes());
    ipv4_checksum(&mut out);
    out
}

/// An IPv4 frame from `src` instead (its header checksum recomputed; a UDP checksum
/// must be 0, as [`udp4`]'s is): a flood's frames from many sources.
pub fn with_ipv4_source(f: &[u8], src: Ipv4Addr) -> Vec<u8> {
    let mut out = f.to_vec();
    out[26..30].copy_from_slice(&src.octets());
    ipv4_checksum(&mut out);
    out
}

/// Recomputes the IPv4 header checksum of an Ethernet frame (options included).
pub fn ipv4_checksum(f: &mut [u8]) {
    let ihl = (f[14] & 0x0f) as usize * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum_finish(csum_add(0, &f[14..14 + ihl]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// IPv6 with one 8-byte extension header (its next header: the frame's own) of `kind` (0, 43, 60; or 44, a fragment
/// header at `offset` 8-byte units) between the fixed header and the L4 header.
pub fn with_extension(f: &[u8], kind: u8, offset: u16) -> Vec<u8> {
    let mut out = f[..54].to_vec();
    let next = f[20];
    let ext = if kind == 44 {
        let o = (offset << 3).to_be_bytes();
        [next, 0, o[0], o[1] | 1, 0, 0, 0, 7]
    } else {
        [next, 0, 1, 4, 0, 0, 0, 0]
    };
    out.extend_from_slice(&ext);
    out.extend_from_slice(&f[54..]);
    out[20] = kind;
    let len = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&len.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn na_checksum_verifies() {
        let mac = [2, 0, 0, 0, 0, 0xa];
        let ip: Ipv6Addr = "2001:db8::50".parse().unwrap();
        let f = neighbour_advertisement(ALL_NODES_MAC, mac, ip, ALL_NODES, false);
        assert_eq!(f.len(), 14 + 40 + 32);
        // Summing a message including its checksum gives 0 after folding.
        assert_eq!(icmpv6_checksum(ip, ALL_NODES, &f[54..]), 0);
    }

    #[test]
    fn tcp_checksums_verify() {
        let (m, n) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
        let (s4, d4) = (Ipv4Addr::new(10, 0, 0, 12), Ipv4Addr::new(10, 0, 0, 50));
        let f = tcp4(m, n, s4, d4, 40000, 80, TCP_ACK, &[1, 1, 1, 1], b"GET");
        assert_eq!(f[14], 0x46);
        assert_eq!(csum_finish(csum_add(0, &f[14..38])), 0, "IPv4 header");
        let seg = &f[38..38 + 23];
        let sum = csum_add(csum_add(0, &s4.octets()), &d4.octets()) + 6 + seg.len() as u32;
        assert_eq!(csum_finish(csum_add(sum, seg)), 0, "TCP over IPv4");
        let (s6, d6): (Ipv6Addr, Ipv6Addr) = (
            "2001:db8::12".parse().unwrap(),
            "2001:db8::50".parse().unwrap(),
        );
        let f = tcp6(m, n, s6, d6, 40000, 80, TCP_SYN, b"");
        let seg = &f[54..];
        let sum = csum_add(csum_add(0, &s6.octets()), &d6.octets()) + 6 + seg.len() as u32;
        assert_eq!(csum_finish(csum_add(sum, seg)), 0, "TCP over IPv6");
    }

    #[test]
    fn a_solicitation_goes_to_the_solicited_node_group() {
        let f = neighbour_solicitation(
            [2, 0, 0, 0, 0, 0xc],
            "2001:db8::12".parse().unwrap(),
            "2001:db8::12:3456".parse().unwrap(),
            None,
        );
        assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0x12, 0x34, 0x56]);
        assert_eq!(
            Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()),
            "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap()
        );
    }
}
