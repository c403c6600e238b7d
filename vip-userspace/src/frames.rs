//! The frames vip sends: gratuitous ARP and unsolicited NA when it takes a VIP over,
//! and the solicited-node group it joins for an IPv6 VIP. Plain byte layouts, no
//! parsing. The frames the tests and benchmarks feed the data plane are built by the
//! lab (`tests/src/frames.rs`), whose test checks that it builds these the same way.

use std::net::{Ipv4Addr, Ipv6Addr};

use vip_common::{
    csum::csum_finish,
    ether::{ETH_P_ARP, ETH_P_IPV6},
};

use crate::mac::Mac;

const ARP_REQUEST: u16 = 1;
/// Ethernet's minimum frame (without FCS): shorter frames are padded to it on the wire.
const ETH_MIN_LEN: usize = 60;

fn ethernet(dst: Mac, src: Mac, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An Ethernet/IPv4 ARP frame, padded to the Ethernet minimum.
fn arp(eth_dst: Mac, op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet(eth_dst, sha, ETH_P_ARP);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha.0);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha.0);
    f.extend_from_slice(&tpa.octets());
    f.resize(ETH_MIN_LEN, 0);
    f
}

/// Gratuitous ARP in request form (sender IP == target IP), as keepalived sends it:
/// every host that has the IP cached updates its entry to `mac`.
pub fn gratuitous_arp(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    arp(Mac::BROADCAST, ARP_REQUEST, mac, ip, Mac::ZERO, ip)
}

/// Adds `data` to an internet-checksum accumulator (16-bit big-endian words, an odd
/// last byte padded with zero); finish with [`csum_finish`] (vip-common).
fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

/// ICMPv6 checksum of `msg` (checksum field zeroed) between `src` and `dst`.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum = csum_add(0, &src.octets());
    sum = csum_add(sum, &dst.octets());
    sum = csum_add(sum, &(msg.len() as u32).to_be_bytes());
    sum = csum_add(sum, &[0, 0, 0, 58]);
    csum_finish(csum_add(sum, msg))
}

/// An Ethernet/IPv6 frame around an ICMPv6 message whose checksum is filled in.
fn icmpv6(
    eth_dst: Mac,
    eth_src: Mac,
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
    f.push(58);
    f.push(hop_limit);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&msg);
    f
}

/// The solicited-node multicast address of `ip` and its Ethernet group.
pub fn solicited_node(ip: Ipv6Addr) -> (Ipv6Addr, Mac) {
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
    (addr, Mac([0x33, 0x33, 0xff, o[13], o[14], o[15]]))
}

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: Mac = Mac([0x33, 0x33, 0, 0, 0, 1]);

/// A neighbour advertisement with the override flag and our link-layer address.
fn neighbour_advertisement(
    eth_dst: Mac,
    mac: Mac,
    ip: Ipv6Addr,
    dst: Ipv6Addr,
    solicited: bool,
) -> Vec<u8> {
    let flags = 0x20 | if solicited { 0x40 } else { 0 };
    let mut msg = vec![136, 0, 0, 0, flags, 0, 0, 0];
    msg.extend_from_slice(&ip.octets());
    msg.extend_from_slice(&[2, 1]);
    msg.extend_from_slice(&mac.0);
    icmpv6(eth_dst, mac, ip, dst, 255, msg)
}

/// Unsolicited NA to all nodes (override set): IPv6's gratuitous ARP.
pub fn unsolicited_na(mac: Mac, ip: Ipv6Addr) -> Vec<u8> {
    neighbour_advertisement(ALL_NODES_MAC, mac, ip, ALL_NODES, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_layout() {
        let mac = Mac([2, 0, 0, 0, 0, 0xa]);
        let f = gratuitous_arp(mac, Ipv4Addr::new(10, 0, 0, 50));
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[28..32], &f[38..42]); // spa == tpa
    }

    #[test]
    fn na_checksum_verifies() {
        let mac = Mac([2, 0, 0, 0, 0, 0xa]);
        let ip: Ipv6Addr = "2001:db8::50".parse().unwrap();
        let f = unsolicited_na(mac, ip);
        assert_eq!(f.len(), 14 + 40 + 32);
        // Summing a message including its checksum gives 0 after folding.
        let msg = &f[54..];
        let mut sum = csum_add(0, &ip.octets());
        sum = csum_add(sum, &ALL_NODES.octets());
        sum = csum_add(sum, &(msg.len() as u32).to_be_bytes());
        sum = csum_add(sum, &[0, 0, 0, 58]);
        assert_eq!(csum_finish(csum_add(sum, msg)), 0);
    }

    #[test]
    fn solicited_node_address() {
        let (a, m) = solicited_node("2001:db8::12:3456".parse().unwrap());
        assert_eq!(a, "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap());
        assert_eq!(m, Mac([0x33, 0x33, 0xff, 0x12, 0x34, 0x56]));
    }
}
