//! Fixture table: frame in -> expected XDP action and frame out, run through the real
//! program with BPF_PROG_TEST_RUN (Katran-style). Needs root (BPF), no traffic.

mod common;

use common::*;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lab::{privileged, Netns};
use vip::{
    dataplane::{action_name, Dataplane},
    frames::{self, ARP_REPLY},
    host::{boottime_ns, monotonic_ns},
    mac::Mac,
};
use vip_common::{action, flags, VipEntry};

const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
const REDIR4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 51);
const FWD4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 52);
const LEASED4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 53);
const EXPIRED4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 54);
const OTHER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    /// None: the frame must come back byte-identical.
    out: Option<Vec<u8>>,
}

fn case(name: &'static str, frame: Vec<u8>, action: u32, out: Option<Vec<u8>>) -> Case {
    Case {
        name,
        frame,
        action,
        out,
    }
}

fn entry(act: u32, slot: u32, group: u32) -> VipEntry {
    VipEntry {
        action: act,
        stats_index: slot,
        group_index: group,
        own_mac: OWN.0,
        src_mac: OWN.0,
        dst_mac: if act == action::FORWARD {
            ACTIVE.0
        } else {
            [0; 6]
        },
        ..Default::default()
    }
}

fn with_macs(mut f: Vec<u8>, dst: Mac, src: Mac) -> Vec<u8> {
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f
}

#[test]
fn fixture_table() {
    if !privileged() {
        return;
    }
    let ns = Netns::new("fixtures").unwrap();
    ns.ip(&[
        "link", "add", "svc", "type", "veth", "peer", "name", "svc-peer",
    ])
    .unwrap();
    ns.run_in(|| run_table(&ns));
}

fn run_table(_ns: &Netns) {
    let svc = nix::net::if_::if_nametoindex("svc").unwrap();
    let mut dp = Dataplane::load(64).expect("loading the data plane");
    dp.add_redirect_target(svc).unwrap();
    let local6 = v6("2001:db8::50");
    let fwd6 = v6("2001:db8::52");
    let client6 = v6("2001:db8::12");
    let mut redirect = entry(action::REDIRECT, 1, 0);
    redirect.ifindex = svc;
    redirect.src_mac = Mac([0x02, 0, 0, 0, 0, 0x0e]).0;
    redirect.dst_mac = TARGET.0;
    dp.set_vip(IpAddr::V4(LOCAL4), &entry(action::LOCAL, 0, 0))
        .unwrap();
    dp.set_vip(IpAddr::V4(REDIR4), &redirect).unwrap();
    dp.set_vip(IpAddr::V4(FWD4), &entry(action::FORWARD, 2, 0))
        .unwrap();
    let mut leased = entry(action::LOCAL, 3, 1);
    leased.flags = flags::LEASED;
    let mut expired = entry(action::LOCAL, 4, 2);
    expired.flags = flags::LEASED;
    dp.set_vip(IpAddr::V4(LEASED4), &leased).unwrap();
    dp.set_vip(IpAddr::V4(EXPIRED4), &expired).unwrap();
    dp.grant_lease(1, boottime_ns() + 60_000_000_000).unwrap();
    dp.grant_lease(2, boottime_ns().saturating_sub(1)).unwrap();
    dp.set_vip(IpAddr::V6(local6), &entry(action::LOCAL, 5, 0))
        .unwrap();
    dp.set_vip(IpAddr::V6(fwd6), &entry(action::FORWARD, 6, 0))
        .unwrap();
    for i in 0..8 {
        dp.reset_stats(i).unwrap();
    }

    let arp_req = |tpa| frames::arp_request(CLIENT, CLIENT4, tpa);
    let arp_reply_from_us = |vip| frames::arp(CLIENT, ARP_REPLY, OWN, vip, CLIENT, CLIENT4);
    let udp = |dst_mac, dst| frames::udp4(dst_mac, CLIENT, CLIENT4, dst, 40000, 5000, b"payload");
    let udp6 = |dst_mac, dst| frames::udp6(dst_mac, CLIENT, client6, dst, 40000, 5000, b"payload");
    let ns_multicast = frames::neighbour_solicitation(CLIENT, client6, local6, None);
    let na_solicited = frames::neighbour_advertisement(CLIENT, OWN, local6, client6, true);

    let mut cases = vec![
        case(
            "ARP request for a local VIP",
            arp_req(LOCAL4),
            XDP_TX,
            Some(arp_reply_from_us(LOCAL4)),
        ),
        case(
            "ARP request for a redirected VIP",
            arp_req(REDIR4),
            XDP_TX,
            Some(arp_reply_from_us(REDIR4)),
        ),
        case(
            "ARP request for a forwarded VIP (standby)",
            arp_req(FWD4),
            XDP_DROP,
            None,
        ),
        case(
            "ARP request for a VIP with a live lease",
            arp_req(LEASED4),
            XDP_TX,
            Some(arp_reply_from_us(LEASED4)),
        ),
        case(
            "ARP request for a VIP with an expired lease",
            arp_req(EXPIRED4),
            XDP_DROP,
            None,
        ),
        case("ARP request for a non-VIP", arp_req(OTHER4), XDP_PASS, None),
        case(
            "ARP reply about a VIP",
            frames::arp(OWN, ARP_REPLY, CLIENT, CLIENT4, OWN, LOCAL4),
            XDP_PASS,
            None,
        ),
        case(
            "gratuitous ARP for a VIP",
            frames::gratuitous_arp(ACTIVE, LOCAL4),
            XDP_PASS,
            None,
        ),
        case(
            "ARP request truncated",
            arp_req(LOCAL4)[..34].to_vec(),
            XDP_PASS,
            None,
        ),
        case("IPv4 to a local VIP", udp(OWN, LOCAL4), XDP_PASS, None),
        case(
            "IPv4 to a local VIP for another MAC (flooded)",
            udp(ACTIVE, LOCAL4),
            XDP_PASS,
            None,
        ),
        case(
            "IPv4 to a redirected VIP",
            udp(OWN, REDIR4),
            XDP_REDIRECT,
            Some(with_macs(
                udp(OWN, REDIR4),
                TARGET,
                Mac([2, 0, 0, 0, 0, 0x0e]),
            )),
        ),
        case(
            "IPv4 to a forwarded VIP",
            udp(OWN, FWD4),
            XDP_TX,
            Some(with_macs(udp(OWN, FWD4), ACTIVE, OWN)),
        ),
        case(
            "IPv4 to a VIP with an expired lease",
            udp(OWN, EXPIRED4),
            XDP_PASS,
            None,
        ),
        case("IPv4 to a non-VIP", udp(OWN, OTHER4), XDP_PASS, None),
        case(
            "IPv4 with a bad version",
            {
                let mut f = udp(OWN, LOCAL4);
                f[14] = 0x65;
                f
            },
            XDP_PASS,
            None,
        ),
        case(
            "IPv4 truncated header",
            udp(OWN, LOCAL4)[..30].to_vec(),
            XDP_PASS,
            None,
        ),
        case(
            "LLDP",
            {
                let mut f = frames::ethernet(Mac([1, 0x80, 0xc2, 0, 0, 0xe]), CLIENT, 0x88cc);
                f.resize(60, 7);
                f
            },
            XDP_PASS,
            None,
        ),
        case(
            "802.1Q tagged ARP request for a VIP",
            {
                let g = arp_req(LOCAL4);
                let mut f = g[..12].to_vec();
                f.extend_from_slice(&[0x81, 0, 0, 5]);
                f.extend_from_slice(&g[12..]);
                f
            },
            XDP_PASS,
            None,
        ),
        case(
            "Ethernet header only (the kernel refuses shorter)",
            udp(OWN, LOCAL4)[..14].to_vec(),
            XDP_PASS,
            None,
        ),
        case(
            "NS (solicited-node) for a local IPv6 VIP",
            ns_multicast.clone(),
            XDP_TX,
            Some(na_solicited.clone()),
        ),
        case(
            "NS (unicast, NUD) for a local IPv6 VIP",
            frames::neighbour_solicitation(CLIENT, client6, local6, Some(OWN)),
            XDP_TX,
            Some(na_solicited.clone()),
        ),
        case(
            "NS (DAD probe) for a local IPv6 VIP",
            frames::neighbour_solicitation(CLIENT, Ipv6Addr::UNSPECIFIED, local6, None),
            XDP_TX,
            Some(frames::unsolicited_na(OWN, local6)),
        ),
        case(
            "NS for a forwarded IPv6 VIP",
            frames::neighbour_solicitation(CLIENT, client6, fwd6, None),
            XDP_DROP,
            None,
        ),
        case(
            "NS for a non-VIP",
            frames::neighbour_solicitation(CLIENT, client6, v6("2001:db8::99"), None),
            XDP_PASS,
            None,
        ),
        case(
            "NS with hop limit 64",
            {
                let mut f = ns_multicast.clone();
                f[21] = 64;
                f
            },
            XDP_DROP,
            None,
        ),
        case(
            "NS with a bad checksum",
            {
                let mut f = ns_multicast.clone();
                f[57] ^= 0xff;
                f
            },
            XDP_DROP,
            None,
        ),
        case(
            "NS with code 1",
            {
                let mut f = ns_multicast.clone();
                f[55] = 1;
                f
            },
            XDP_DROP,
            None,
        ),
        case(
            "NS with a zero-length option",
            {
                let mut f = ns_multicast.clone();
                f[79] = 0;
                f
            },
            XDP_DROP,
            None,
        ),
        case(
            "NS to the wrong solicited-node group",
            frames::icmpv6(
                Mac([0x33, 0x33, 0xff, 0, 0, 0x99]),
                CLIENT,
                client6,
                v6("ff02::1:ff00:99"),
                255,
                ns_multicast[54..].to_vec(),
            ),
            XDP_DROP,
            None,
        ),
        case("NS truncated", ns_multicast[..70].to_vec(), XDP_PASS, None),
        case("IPv6 to a local VIP", udp6(OWN, local6), XDP_PASS, None),
        case(
            "IPv6 to a forwarded VIP",
            udp6(OWN, fwd6),
            XDP_TX,
            Some(with_macs(udp6(OWN, fwd6), ACTIVE, OWN)),
        ),
        case(
            "IPv6 to a non-VIP",
            udp6(OWN, v6("2001:db8::99")),
            XDP_PASS,
            None,
        ),
    ];
    // A DAD probe must carry no source link-layer option.
    let mut dad_with_option = frames::neighbour_solicitation(CLIENT, client6, local6, None);
    dad_with_option[22..38].copy_from_slice(&[0; 16]);
    let msg = dad_with_option[54..].to_vec();
    let (sn, sn_mac) = frames::solicited_node(local6);
    cases.push(case(
        "DAD probe with a source link-layer option",
        frames::icmpv6(sn_mac, CLIENT, Ipv6Addr::UNSPECIFIED, sn, 255, msg),
        XDP_DROP,
        None,
    ));

    run_cases(&dp, &cases);

    // Counters follow what was run.
    let s = |i| dp.stats(i).unwrap();
    assert_eq!(s(0).arp_replies, 1);
    // Only the well-formed frame to our MAC counts; flooded, bad and truncated ones do not.
    assert_eq!(s(0).rx_packets, 1);
    assert_eq!(s(0).passed, 1);
    assert_eq!(s(2).forwarded, 1);
    assert_eq!(s(1).redirected, 1);
    assert_eq!(s(4).lease_expired, 1);
    assert_eq!(s(5).nd_replies, 3);
    let g: std::collections::HashMap<_, _> = dp.global_stats().unwrap().into_iter().collect();
    assert!(g["parse_errors"] >= 3, "{g:?}");
    assert_eq!(g["vlan_passed"], 1);
    assert_eq!(g["not_our_mac"], 1);
}

/// The election's port and the echo on it (`vip_common::peers`, `vip_common::echo`)
/// through the real program: a peer's probes for a VIP we answer for are reflected,
/// all others dropped; datagrams to the port from anyone but a peer, to anything but
/// our own address of the pair, or from a peer's address with another MAC than the
/// one learned (but a trickle) are dropped, with IP options, fragments or IPv6
/// extension headers too; budgets per pair; replies count only from the active's
/// address and MAC, for a sequence above the slot's, with that sequence's token.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn echo_fixtures() {
    privileged();
    let ns = Netns::new("echo-fixtures").unwrap();
    ns.run_in(run_echo);
}

/// IPv4 with 4 bytes of options (NOP NOP NOP EOL) in front of the payload.
fn with_ip_options(f: &[u8]) -> Vec<u8> {
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
fn fragment(f: &[u8], offset: u16, more: bool) -> Vec<u8> {
    let mut out = f.to_vec();
    let v = offset | if more { 0x2000 } else { 0 };
    out[20..22].copy_from_slice(&v.to_be_bytes());
    ipv4_checksum(&mut out);
    out
}

fn ipv4_checksum(f: &mut [u8]) {
    let ihl = (f[14] & 0x0f) as usize * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = vip_common::csum::csum_finish(frames::csum_add(0, &f[14..14 + ihl]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// IPv6 with one 8-byte extension header of `kind` (0, 43, 60; or 44, a fragment
/// header at `offset` 8-byte units) between the fixed header and the UDP header.
fn with_extension(f: &[u8], kind: u8, offset: u16) -> Vec<u8> {
    let mut out = f[..54].to_vec();
    let ext = if kind == 44 {
        let o = (offset << 3).to_be_bytes();
        [17, 0, o[0], o[1] | 1, 0, 0, 0, 7]
    } else {
        [17, 0, 1, 4, 0, 0, 0, 0]
    };
    out.extend_from_slice(&ext);
    out.extend_from_slice(&f[54..]);
    out[20] = kind;
    let len = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&len.to_be_bytes());
    out
}

fn run_echo() {
    use vip::echo::encode;
    use vip_common::{echo, peers, EchoSeen, Peer, PeerKey, Settings};
    const PORT: u16 = 4112;
    let settings = Settings {
        echo_port: PORT as u32,
        ..Settings::default()
    };
    let mut dp = Dataplane::open(64, None, settings).expect("loading the data plane");
    let host4 = Ipv4Addr::new(10, 0, 0, 11);
    let (local6, host6, client6) = (v6("2001:db8::50"), v6("2001:db8::11"), v6("2001:db8::12"));
    // A peer whose MAC was learned (ACTIVE), and a stranger; off the link, a victim.
    let (learned4, stranger4, victim4) = (
        Ipv4Addr::new(10, 0, 0, 13),
        Ipv4Addr::new(10, 0, 0, 14),
        Ipv4Addr::new(198, 51, 100, 7),
    );
    dp.set_vip(IpAddr::V4(LOCAL4), &entry(action::LOCAL, 0, 0))
        .unwrap();
    dp.set_vip(IpAddr::V4(FWD4), &entry(action::FORWARD, 2, 0))
        .unwrap();
    let mut leased = entry(action::LOCAL, 3, 1);
    leased.flags = flags::LEASED;
    let mut expired = entry(action::LOCAL, 4, 2);
    expired.flags = flags::LEASED;
    dp.set_vip(IpAddr::V4(LEASED4), &leased).unwrap();
    dp.set_vip(IpAddr::V4(EXPIRED4), &expired).unwrap();
    dp.grant_lease(1, boottime_ns() + 60_000_000_000).unwrap();
    dp.grant_lease(2, boottime_ns().saturating_sub(1)).unwrap();
    dp.set_vip(IpAddr::V6(local6), &entry(action::LOCAL, 5, 0))
        .unwrap();
    let key4 = |src: Ipv4Addr, dst: Ipv4Addr| PeerKey {
        src: peers::v4_mapped(src.octets()),
        dst: peers::v4_mapped(dst.octets()),
    };
    // No budgets (a gap of 0): never in the way here (they have a test of their own below).
    let open = Peer {
        probe_gap_ns: 0,
        datagram_gap_ns: 0,
        ..Peer::default()
    };
    dp.set_peer(&key4(CLIENT4, host4), &open).unwrap();
    dp.set_peer(
        &PeerKey {
            src: client6.octets(),
            dst: host6.octets(),
        },
        &open,
    )
    .unwrap();
    dp.set_peer(
        &key4(learned4, host4),
        &Peer {
            mac: ACTIVE.0,
            mac_known: 1,
            ..open
        },
    )
    .unwrap();

    let (k, slot) = ([0x1234_5678, 0x9abc_def0], 7u32);
    let mut seen = dp.echo_seen().unwrap();
    let mut peer = [0u8; 16];
    peer[..4].copy_from_slice(&CLIENT4.octets());
    seen.set(
        slot,
        EchoSeen {
            key: k,
            peer,
            peer_mac: CLIENT.0,
            family: 4,
            seq: 3,
            ..EchoSeen::default()
        },
        0,
    )
    .unwrap();

    let probe = |vip: Ipv4Addr| encode(slot, echo::token(k, 9), 9, IpAddr::V4(vip));
    let reply_of = |mut b: [u8; echo::LEN]| {
        b[echo::OFF_KIND] = echo::REPLY;
        b
    };
    let from =
        |src: Ipv4Addr, mac: Mac, b: &[u8]| frames::udp4(OWN, mac, src, host4, 40000, PORT, b);
    let to_us = |dst_mac, b: &[u8]| frames::udp4(dst_mac, CLIENT, CLIENT4, host4, 40000, PORT, b);
    let reflected = |b: &[u8]| frames::udp4(CLIENT, OWN, host4, CLIENT4, PORT, 40000, b);
    let reply =
        |src: Ipv4Addr, mac: Mac, b: &[u8]| frames::udp4(OWN, mac, src, host4, PORT, 40000, b);
    let reply_to_us = |b: &[u8]| reply(CLIENT4, CLIENT, b);
    let p6 = encode(slot, 1, 9, IpAddr::V6(local6));
    let mut v2 = probe(LOCAL4);
    v2[4] = 2;
    let advert = b"VIPA\x02\x01rest-of-an-advert-that-is-long-enough-to-parse";
    let advert6 = |src: Ipv6Addr| frames::udp6(OWN, CLIENT, src, host6, PORT, PORT, advert);
    // The reply to the stolen probe that answers it with sequence 2^63.
    let mut stolen = reply_of(probe(LOCAL4));
    stolen[echo::OFF_SEQ..echo::OFF_SEQ + 8].copy_from_slice(&(1u64 << 63).to_be_bytes());
    let reply_seq = |seq: u64, token_seq: u64| {
        reply_of(encode(
            slot,
            echo::token(k, token_seq),
            seq,
            IpAddr::V4(LOCAL4),
        ))
    };
    let cases = vec![
        case(
            "probe for a local VIP",
            to_us(OWN, &probe(LOCAL4)),
            XDP_TX,
            Some(reflected(&reply_of(probe(LOCAL4)))),
        ),
        case(
            "probe for a VIP under a running lease",
            to_us(OWN, &probe(LEASED4)),
            XDP_TX,
            Some(reflected(&reply_of(probe(LEASED4)))),
        ),
        case(
            "probe for a VIP whose lease ran out",
            to_us(OWN, &probe(EXPIRED4)),
            XDP_DROP,
            None,
        ),
        case(
            "probe for a VIP we forward (standby)",
            to_us(OWN, &probe(FWD4)),
            XDP_DROP,
            None,
        ),
        case(
            "probe for a non-VIP",
            to_us(OWN, &probe(OTHER4)),
            XDP_DROP,
            None,
        ),
        case(
            "probe flooded to us for another MAC",
            to_us(ACTIVE, &probe(LOCAL4)),
            XDP_DROP,
            None,
        ),
        case(
            "IPv6 probe for a local VIP",
            frames::udp6(OWN, CLIENT, client6, host6, 40000, PORT, &p6),
            XDP_TX,
            Some(frames::udp6(
                CLIENT,
                OWN,
                host6,
                client6,
                PORT,
                40000,
                &reply_of(p6),
            )),
        ),
        // Only peers, only to us.
        case(
            "probe from a host that is not a peer",
            from(stranger4, CLIENT, &probe(LOCAL4)),
            XDP_DROP,
            None,
        ),
        case(
            "probe spoofed from a victim off the link",
            from(victim4, CLIENT, &probe(LOCAL4)),
            XDP_DROP,
            None,
        ),
        case(
            "probe from a peer to another address than ours",
            frames::udp4(
                OWN,
                CLIENT,
                CLIENT4,
                Ipv4Addr::new(10, 0, 0, 255),
                40000,
                PORT,
                &probe(LOCAL4),
            ),
            XDP_DROP,
            None,
        ),
        case(
            "IPv6 probe from a host that is not a peer",
            frames::udp6(OWN, CLIENT, v6("2001:db8::14"), host6, 40000, PORT, &p6),
            XDP_DROP,
            None,
        ),
        case(
            "probe from a learned peer's address and another MAC: the strangers' budget",
            from(learned4, CLIENT, &probe(LOCAL4)),
            XDP_TX,
            Some(frames::udp4(
                CLIENT,
                OWN,
                host4,
                learned4,
                PORT,
                40000,
                &reply_of(probe(LOCAL4)),
            )),
        ),
        case(
            "probe from a learned peer's own MAC",
            from(learned4, ACTIVE, &probe(LOCAL4)),
            XDP_TX,
            Some(frames::udp4(
                ACTIVE,
                OWN,
                host4,
                learned4,
                PORT,
                40000,
                &reply_of(probe(LOCAL4)),
            )),
        ),
        // Advertisements: a peer's pass to the agent, nobody else's does.
        case(
            "an advertisement from a peer",
            to_us(OWN, advert),
            XDP_PASS,
            None,
        ),
        case(
            "an advertisement from a host that is not a peer",
            from(stranger4, CLIENT, advert),
            XDP_DROP,
            None,
        ),
        case(
            "an advertisement from a learned peer's own MAC",
            from(learned4, ACTIVE, advert),
            XDP_PASS,
            None,
        ),
        case(
            "from a learned peer's address and another MAC: the trickle lets one by",
            from(learned4, CLIENT, advert),
            XDP_PASS,
            None,
        ),
        case(
            "from a learned peer's address and another MAC, right after",
            from(learned4, CLIENT, advert),
            XDP_DROP,
            None,
        ),
        case(
            "an advertisement from a peer, with IP options",
            with_ip_options(&to_us(OWN, advert)),
            XDP_PASS,
            None,
        ),
        case(
            "a datagram from a stranger, with IP options",
            with_ip_options(&from(stranger4, CLIENT, advert)),
            XDP_DROP,
            None,
        ),
        case(
            "a first fragment from a stranger",
            fragment(&from(stranger4, CLIENT, advert), 0, true),
            XDP_DROP,
            None,
        ),
        case(
            "a later fragment from a stranger (no UDP header to judge)",
            fragment(&from(stranger4, CLIENT, advert), 8, false),
            XDP_PASS,
            None,
        ),
        case(
            "a probe in a first fragment from a peer: passed to the agent, not reflected",
            fragment(&to_us(OWN, &probe(LOCAL4)), 0, true),
            XDP_PASS,
            None,
        ),
        case(
            "an IPv6 advertisement from a peer",
            advert6(client6),
            XDP_PASS,
            None,
        ),
        case(
            "an IPv6 advertisement from a peer behind a hop-by-hop header",
            with_extension(&advert6(client6), 0, 0),
            XDP_PASS,
            None,
        ),
        case(
            "an IPv6 datagram from a stranger behind a destination options header",
            with_extension(&advert6(v6("2001:db8::14")), 60, 0),
            XDP_DROP,
            None,
        ),
        case(
            "an IPv6 first fragment from a stranger",
            with_extension(&advert6(v6("2001:db8::14")), 44, 0),
            XDP_DROP,
            None,
        ),
        case(
            "an IPv6 later fragment from a stranger (no UDP header to judge)",
            with_extension(&advert6(v6("2001:db8::14")), 44, 8),
            XDP_PASS,
            None,
        ),
        case(
            "a short datagram from a peer",
            to_us(OWN, b"VIPE"),
            XDP_PASS,
            None,
        ),
        case(
            "an unknown echo version from a peer",
            to_us(OWN, &v2),
            XDP_PASS,
            None,
        ),
        case(
            "a probe to another port",
            frames::udp4(OWN, CLIENT, CLIENT4, host4, 40000, 5000, &probe(LOCAL4)),
            XDP_PASS,
            None,
        ),
        // Replies: all consumed; only the active's answer to a probe we sent counts.
        case(
            "the stolen probe answered with sequence 2^63",
            reply_to_us(&stolen),
            XDP_DROP,
            None,
        ),
        case(
            "a reply with another sequence's token",
            reply_to_us(&reply_seq(10, 9)),
            XDP_DROP,
            None,
        ),
        case(
            "a reply from another address",
            reply(stranger4, CLIENT, &reply_seq(9, 9)),
            XDP_DROP,
            None,
        ),
        case(
            "a reply from the active's address and another MAC",
            reply(CLIENT4, ACTIVE, &reply_seq(9, 9)),
            XDP_DROP,
            None,
        ),
        case(
            "the active's reply to probe 9",
            reply_to_us(&reply_seq(9, 9)),
            XDP_DROP,
            None,
        ),
        case(
            "the same reply again",
            reply_to_us(&reply_seq(9, 9)),
            XDP_DROP,
            None,
        ),
        case(
            "an older probe's reply (5), its own token",
            reply_to_us(&reply_seq(5, 5)),
            XDP_DROP,
            None,
        ),
        case(
            "a reply naming a slot out of range",
            reply_to_us(&{
                let mut b = reply_seq(10, 10);
                b[echo::OFF_SLOT..echo::OFF_SLOT + 4].copy_from_slice(&u32::MAX.to_be_bytes());
                b
            }),
            XDP_DROP,
            None,
        ),
    ];
    run_cases(&dp, &cases);
    // Only the active's answer to probe 9 moved the slot (3 -> 9).
    let s = seen.get(&slot, 0).unwrap();
    assert_eq!((s.seq, s.replies), (9, 1), "{s:?}");
    assert!(s.last_ns > 0 && s.last_ns <= monotonic_ns(), "{s:?}");
    let g: std::collections::HashMap<_, _> = dp.global_stats().unwrap().into_iter().collect();
    assert_eq!(g["echo_answered"], 5, "{g:?}");
    assert_eq!(g["echo_refused"], 4, "{g:?}");
    // Not peers: 2 probes, the one to another address, the IPv6 one, 5 datagrams.
    assert_eq!(g["election_not_peer"], 9, "{g:?}");
    assert_eq!(g["election_wrong_mac"], 1, "{g:?}");
    assert_eq!(g["election_over_budget"], 0, "{g:?}");
    assert_eq!(g["echo_reply_refused"], 7, "{g:?}");

    // Budgets: BURST back to back, then nothing until the gap has passed; probes
    // and other datagrams apart.
    let slow = Peer {
        probe_gap_ns: 1_000_000_000,
        datagram_gap_ns: 1_000_000_000,
        ..Peer::default()
    };
    let budgeted = Ipv4Addr::new(10, 0, 0, 15);
    dp.set_peer(
        &key4(budgeted, host4),
        &Peer {
            mac: ACTIVE.0,
            mac_known: 1,
            ..slow
        },
    )
    .unwrap();
    let count = |f: &[u8], want: u32| {
        (0..peers::BURST + 8)
            .filter(|_| dp.test_run(f).unwrap().action == want)
            .count() as u64
    };
    // Spoofed probes (another MAC) spend the strangers' budget, not the peer's.
    let spoofed_probe = from(budgeted, CLIENT, &probe(LOCAL4));
    assert_eq!(count(&spoofed_probe, XDP_TX), peers::BURST);
    let own_probe = from(budgeted, ACTIVE, &probe(LOCAL4));
    assert_eq!(count(&own_probe, XDP_TX), peers::BURST);
    assert_eq!(
        count(&from(budgeted, ACTIVE, advert), XDP_PASS),
        peers::BURST
    );
    let g: std::collections::HashMap<_, _> = dp.global_stats().unwrap().into_iter().collect();
    assert_eq!(g["election_over_budget"], 16, "{g:?}");
    assert_eq!(g["election_wrong_mac"], 1 + 8, "{g:?}");
    // Rewriting the entry (the agent learns a MAC) starts the budgets afresh.
    dp.set_peer(&key4(budgeted, host4), &slow).unwrap();
    let advert_from = from(budgeted, CLIENT, advert);
    assert_eq!(dp.test_run(&advert_from).unwrap().action, XDP_PASS);
    assert_eq!(dp.peers().len(), 4);
}

const GRACE4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 55);
const KEEP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 56);
const WEB: u16 = 80;

/// A TCP connection from `from` to `to` (both local to this namespace): its
/// client side and the server side the listener accepted.
fn connect_from(
    listener: &std::net::TcpListener,
    from: std::net::SocketAddr,
) -> (std::net::TcpStream, std::net::TcpStream) {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType};
    use nix::sys::socket::{setsockopt, sockopt::ReuseAddr, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let to = listener.local_addr().unwrap();
    let family = if from.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::empty(), None).unwrap();
    setsockopt(&fd, ReuseAddr, &true).unwrap();
    bind(fd.as_raw_fd(), &SockaddrStorage::from(from)).unwrap();
    connect(fd.as_raw_fd(), &SockaddrStorage::from(to)).unwrap();
    let (server, _) = listener.accept().unwrap();
    (std::net::TcpStream::from(fd), server)
}

/// The planned handover's flags (`flags::GRACE` on the new active, `flags::KEEP` on
/// the old one) against real sockets of this namespace: a listener on each VIP's
/// port 80 (which must not count as a socket of the flow) and one established
/// connection to each.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn handover_fixtures() {
    privileged();
    let ns = Netns::new("handover-fixtures").unwrap();
    for a in ["10.0.0.12/32", "10.0.0.55/32", "10.0.0.56/32"] {
        ns.ip(&["addr", "add", a, "dev", "lo"]).unwrap();
    }
    for a in ["2001:db8::12/128", "2001:db8::55/128", "2001:db8::56/128"] {
        ns.ip(&["addr", "add", a, "dev", "lo", "nodad"]).unwrap();
    }
    ns.run_in(run_handover);
}

fn run_handover() {
    use std::net::{SocketAddr, TcpListener};
    use vip::frames::{tcp4, tcp6, TCP_ACK, TCP_PSH, TCP_RST, TCP_SYN};
    let (grace6, keep6, client6) = (v6("2001:db8::55"), v6("2001:db8::56"), v6("2001:db8::12"));
    let mut dp = Dataplane::load(64).expect("loading the data plane");
    // The new active: local, sends what it does not know to the old active (ACTIVE).
    let mut grace = entry(action::LOCAL, 0, 0);
    grace.flags = flags::GRACE;
    grace.dst_mac = ACTIVE.0;
    // The old active: forwards to the new active (ACTIVE), keeps what it knows.
    let mut keep = entry(action::FORWARD, 1, 0);
    keep.flags = flags::KEEP;
    dp.set_vip(IpAddr::V4(GRACE4), &grace).unwrap();
    dp.set_vip(IpAddr::V4(KEEP4), &keep).unwrap();
    grace.stats_index = 2;
    keep.stats_index = 3;
    dp.set_vip(IpAddr::V6(grace6), &grace).unwrap();
    dp.set_vip(IpAddr::V6(keep6), &keep).unwrap();
    for i in 0..4 {
        dp.reset_stats(i).unwrap();
    }

    let listen = |ip: IpAddr| TcpListener::bind(SocketAddr::new(ip, WEB)).unwrap();
    let (l_grace4, l_keep4) = (listen(GRACE4.into()), listen(KEEP4.into()));
    let (l_grace6, l_keep6) = (listen(grace6.into()), listen(keep6.into()));
    // Established connections from the client's port 40001 to each VIP.
    let _c1 = connect_from(&l_grace4, (CLIENT4, 40001).into());
    let _c2 = connect_from(&l_keep4, (CLIENT4, 40001).into());
    let _c3 = connect_from(&l_grace6, (client6, 40001).into());
    let _c4 = connect_from(&l_keep6, (client6, 40001).into());

    let t4 =
        |src: Mac, vip, sport, flags| tcp4(OWN, src, CLIENT4, vip, sport, WEB, flags, &[], b"GET");
    let t6 = |src: Mac, vip, sport, flags| tcp6(OWN, src, client6, vip, sport, WEB, flags, b"GET");
    let to = |f: Vec<u8>| Some(with_macs(f, ACTIVE, OWN));
    let (ack, data) = (TCP_ACK, TCP_ACK | TCP_PSH);
    let with_options = tcp4(
        OWN, CLIENT, CLIENT4, GRACE4, 40002, WEB, data, &[1; 8], b"GET",
    );
    let cases = vec![
        // The new active (GRACE).
        case(
            "GRACE: data of a flow we have no socket for -> the old active",
            t4(CLIENT, GRACE4, 40002, data),
            XDP_TX,
            to(t4(CLIENT, GRACE4, 40002, data)),
        ),
        case(
            "GRACE: a reset of a flow we have no socket for -> the old active",
            t4(CLIENT, GRACE4, 40002, TCP_RST),
            XDP_TX,
            to(t4(CLIENT, GRACE4, 40002, TCP_RST)),
        ),
        case(
            "GRACE: behind IPv4 options (IHL 7)",
            with_options.clone(),
            XDP_TX,
            to(with_options),
        ),
        case(
            "GRACE: a SYN (new connection) is ours",
            t4(CLIENT, GRACE4, 40002, TCP_SYN),
            XDP_PASS,
            None,
        ),
        case(
            "GRACE: a SYN-ACK is not a new connection",
            t4(CLIENT, GRACE4, 40002, TCP_SYN | TCP_ACK),
            XDP_TX,
            to(t4(CLIENT, GRACE4, 40002, TCP_SYN | TCP_ACK)),
        ),
        case(
            "GRACE: our established connection",
            t4(CLIENT, GRACE4, 40001, ack),
            XDP_PASS,
            None,
        ),
        case(
            "GRACE: from the old active (it has no socket either) -> our kernel",
            t4(ACTIVE, GRACE4, 40002, data),
            XDP_PASS,
            None,
        ),
        case(
            "GRACE: UDP is ours",
            frames::udp4(OWN, CLIENT, CLIENT4, GRACE4, 40002, WEB, b"x"),
            XDP_PASS,
            None,
        ),
        case(
            "GRACE: TCP header truncated",
            t4(CLIENT, GRACE4, 40002, data)[..44].to_vec(),
            XDP_PASS,
            None,
        ),
        case(
            "GRACE: IPv6, no socket -> the old active",
            t6(CLIENT, grace6, 40002, data),
            XDP_TX,
            to(t6(CLIENT, grace6, 40002, data)),
        ),
        case(
            "GRACE: IPv6, our established connection",
            t6(CLIENT, grace6, 40001, data),
            XDP_PASS,
            None,
        ),
        case(
            "GRACE: IPv6 SYN",
            t6(CLIENT, grace6, 40002, TCP_SYN),
            XDP_PASS,
            None,
        ),
        // The old active (KEEP).
        case(
            "KEEP: our established connection stays here",
            t4(CLIENT, KEEP4, 40001, data),
            XDP_PASS,
            None,
        ),
        case(
            "KEEP: a flow we do not know -> the new active",
            t4(CLIENT, KEEP4, 40002, data),
            XDP_TX,
            to(t4(CLIENT, KEEP4, 40002, data)),
        ),
        case(
            "KEEP: a SYN -> the new active, though we listen",
            t4(CLIENT, KEEP4, 40002, TCP_SYN),
            XDP_TX,
            to(t4(CLIENT, KEEP4, 40002, TCP_SYN)),
        ),
        case(
            "KEEP: from the new active, unknown to both -> our kernel (a reset)",
            t4(ACTIVE, KEEP4, 40002, data),
            XDP_PASS,
            None,
        ),
        case(
            "KEEP: from the new active, our connection",
            t4(ACTIVE, KEEP4, 40001, data),
            XDP_PASS,
            None,
        ),
        case(
            "KEEP: UDP -> the new active",
            frames::udp4(OWN, CLIENT, CLIENT4, KEEP4, 40002, WEB, b"x"),
            XDP_TX,
            to(frames::udp4(OWN, CLIENT, CLIENT4, KEEP4, 40002, WEB, b"x")),
        ),
        case(
            "KEEP: IPv6, our established connection",
            t6(CLIENT, keep6, 40001, data),
            XDP_PASS,
            None,
        ),
        case(
            "KEEP: IPv6, a flow we do not know -> the new active",
            t6(CLIENT, keep6, 40002, data),
            XDP_TX,
            to(t6(CLIENT, keep6, 40002, data)),
        ),
        case(
            "KEEP: IPv6, from the new active, unknown to both",
            t6(ACTIVE, keep6, 40002, data),
            XDP_PASS,
            None,
        ),
    ];
    run_cases(&dp, &cases);
    let s = |i| dp.stats(i).unwrap();
    // Sent to the old active: 4 over IPv4, 1 over IPv6; kept: 3 and 2.
    assert_eq!(s(0).forwarded, 4, "{:?}", s(0));
    assert_eq!(s(2).forwarded, 1, "{:?}", s(2));
    assert_eq!(s(1).passed, 3, "{:?}", s(1));
    assert_eq!(s(3).passed, 2, "{:?}", s(3));
    assert_eq!(s(1).forwarded, 3, "{:?}", s(1));
}

const BAL4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 57);
/// Another node of the member's balanced group, and a node of another group.
const MEMBER: Mac = Mac([0x02, 0, 0, 0, 0, 0x10]);
const STRANGER: Mac = Mac([0x02, 0, 0, 0, 0, 0x11]);

/// A balanced group's member (`flags::BALANCED` on a forward entry to the director,
/// ACTIVE): what the group's nodes send is delivered, what a client sends directly
/// goes to the director; it never answers ARP/NS for the VIP. A plain standby's
/// forward entry still forwards everything.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn balance_member_fixtures() {
    privileged();
    let ns = Netns::new("balance-member-fixtures").unwrap();
    ns.run_in(run_balance_member);
}

fn run_balance_member() {
    use vip::frames::{tcp4, tcp6, TCP_ACK, TCP_PSH};
    use vip_common::Settings;
    let settings = Settings {
        balance_enabled: 1,
        ..Settings::default()
    };
    let mut dp = Dataplane::open(64, None, settings).expect("loading the data plane");
    let (bal6, client6) = (v6("2001:db8::57"), v6("2001:db8::12"));
    const SLOT: u32 = 3;
    let mut member = entry(action::FORWARD, 0, 0);
    member.flags = flags::BALANCED;
    member.ifindex = SLOT;
    dp.set_vip(IpAddr::V4(BAL4), &member).unwrap();
    member.stats_index = 2;
    dp.set_vip(IpAddr::V6(bal6), &member).unwrap();
    dp.set_vip(IpAddr::V4(FWD4), &entry(action::FORWARD, 1, 0))
        .unwrap();
    // The group's nodes as the agent writes them (the director, this node, another
    // member); STRANGER is a node of another balanced group only.
    let nodes = [ACTIVE.0, OWN.0, MEMBER.0];
    dp.set_balance_nodes(SLOT, &[], &nodes).unwrap();
    dp.set_balance_nodes(SLOT + 1, &[], &[STRANGER.0]).unwrap();
    for i in 0..3 {
        dp.reset_stats(i).unwrap();
    }

    let udp = |src: Mac, dst| frames::udp4(OWN, src, CLIENT4, dst, 40000, 5000, b"payload");
    let data = TCP_ACK | TCP_PSH;
    let tcp = |src: Mac| tcp4(OWN, src, CLIENT4, BAL4, 40001, 80, data, &[], b"GET");
    let udp6 = |src: Mac| frames::udp6(OWN, src, client6, bal6, 40000, 5000, b"payload");
    let to_director = |f: Vec<u8>| Some(with_macs(f, ACTIVE, OWN));
    let cases = vec![
        case(
            "member: from the director (a flow it hands us) -> delivered",
            udp(ACTIVE, BAL4),
            XDP_PASS,
            None,
        ),
        case(
            "member: from another node of the group -> delivered",
            udp(MEMBER, BAL4),
            XDP_PASS,
            None,
        ),
        case(
            "member: TCP from another node of the group -> delivered",
            tcp(MEMBER),
            XDP_PASS,
            None,
        ),
        case(
            "member: from a client (its ARP cache names us) -> the director",
            udp(CLIENT, BAL4),
            XDP_TX,
            to_director(udp(CLIENT, BAL4)),
        ),
        case(
            "member: TCP from a client -> the director",
            tcp(CLIENT),
            XDP_TX,
            to_director(tcp(CLIENT)),
        ),
        case(
            "member: from a node of another balanced group -> the director",
            udp(STRANGER, BAL4),
            XDP_TX,
            to_director(udp(STRANGER, BAL4)),
        ),
        case(
            "member: flooded to us for another MAC -> untouched",
            frames::udp4(MEMBER, CLIENT, CLIENT4, BAL4, 40000, 5000, b"payload"),
            XDP_PASS,
            None,
        ),
        case(
            "member: ARP request for the VIP -> not answered",
            frames::arp_request(CLIENT, CLIENT4, BAL4),
            XDP_DROP,
            None,
        ),
        case(
            "member: IPv6 from the director -> delivered",
            udp6(ACTIVE),
            XDP_PASS,
            None,
        ),
        case(
            "member: IPv6 from a client -> the director",
            udp6(CLIENT),
            XDP_TX,
            to_director(udp6(CLIENT)),
        ),
        case(
            "member: IPv6 TCP from another node -> delivered",
            tcp6(OWN, MEMBER, client6, bal6, 40001, 80, data, b"GET"),
            XDP_PASS,
            None,
        ),
        case(
            "member: NS for the VIP -> not answered",
            frames::neighbour_solicitation(CLIENT, client6, bal6, None),
            XDP_DROP,
            None,
        ),
        case(
            "plain standby: from the active -> forwarded all the same",
            udp(ACTIVE, FWD4),
            XDP_TX,
            to_director(udp(ACTIVE, FWD4)),
        ),
        case(
            "plain standby: from a client -> forwarded",
            udp(CLIENT, FWD4),
            XDP_TX,
            to_director(udp(CLIENT, FWD4)),
        ),
    ];
    run_cases(&dp, &cases);
    // A node that is no longer listed is a stranger.
    dp.set_balance_nodes(SLOT, &nodes, &[ACTIVE.0, OWN.0])
        .unwrap();
    run_cases(
        &dp,
        &[case(
            "member: from a node no longer listed -> the director",
            udp(MEMBER, BAL4),
            XDP_TX,
            to_director(udp(MEMBER, BAL4)),
        )],
    );
    let s = |i| dp.stats(i).unwrap();
    assert_eq!((s(0).passed, s(0).forwarded), (3, 4), "{:?}", s(0));
    assert_eq!((s(2).passed, s(2).forwarded), (2, 1), "{:?}", s(2));
    assert_eq!((s(1).passed, s(1).forwarded), (0, 2), "{:?}", s(1));
}

/// Runs each case through the program; fails with every mismatch.
fn run_cases(dp: &Dataplane, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let r = dp
            .test_run(&c.frame)
            .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN failed: {e}", c.name));
        let want = c.out.as_ref().unwrap_or(&c.frame);
        if r.action != c.action {
            failures.push(format!(
                "{}: {} (wanted {})",
                c.name,
                action_name(r.action),
                action_name(c.action)
            ));
        } else if &r.frame != want {
            failures.push(format!(
                "{}: frame out differs\n  got  {:02x?}\n  want {:02x?}",
                c.name, r.frame, want
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn vip_index_fixtures() {
    privileged();
    let ns = Netns::new("fixtures-index").unwrap();
    ns.run_in(run_vip_index);
}

/// The IPv4 VIP index in front of the hash map (`vip_common::index`): VIPs that share
/// a slot, a non-VIP whose slot holds a VIP, removals, replacements, and enough
/// updates to reuse every entry of the index: every lookup still finds exactly the
/// table's entry.
fn run_vip_index() {
    use vip_common::index;
    // 16 VIPs of capacity: 64 slots, so slots are easy to share.
    let max = 16;
    let mut dp = Dataplane::load(max).expect("loading the data plane");
    let shift = 32 - index::bits(max);
    let slot = |a: Ipv4Addr| index::slot(u32::from_ne_bytes(a.octets()), shift);
    let addrs: Vec<Ipv4Addr> = (1..=254).map(|l| Ipv4Addr::new(10, 0, 5, l)).collect();
    let a = addrs[0];
    let mut same = addrs.iter().skip(1).filter(|x| slot(**x) == slot(a));
    let (b, e) = (*same.next().unwrap(), *same.next().unwrap());
    let c = *addrs.iter().find(|x| slot(**x) != slot(a)).unwrap();
    let d = *addrs
        .iter()
        .find(|x| **x != c && slot(**x) == slot(c))
        .unwrap();
    let udp = |dst| frames::udp4(OWN, CLIENT, CLIENT4, dst, 40000, 5000, b"payload");
    let fwd = |dst| with_macs(udp(dst), ACTIVE, OWN);
    let arp_req = |tpa| frames::arp_request(CLIENT, CLIENT4, tpa);
    let answered = |vip| Some(frames::arp(CLIENT, ARP_REPLY, OWN, vip, CLIENT, CLIENT4));
    let name = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };

    // a and b share a slot (it says "collided"); c is alone in its slot, d is not a
    // VIP but hashes there; e is not a VIP and hashes to a and b's slot.
    dp.set_vip(IpAddr::V4(a), &entry(action::LOCAL, 0, 0))
        .unwrap();
    dp.set_vip(IpAddr::V4(b), &entry(action::FORWARD, 1, 0))
        .unwrap();
    dp.set_vip(IpAddr::V4(c), &entry(action::FORWARD, 2, 0))
        .unwrap();
    run_cases(
        &dp,
        &[
            case("a, sharing its slot: local", udp(a), XDP_PASS, None),
            case("a: ARP answered", arp_req(a), XDP_TX, answered(a)),
            case(
                "b, sharing its slot: forwarded",
                udp(b),
                XDP_TX,
                Some(fwd(b)),
            ),
            case("b (standby): ARP not answered", arp_req(b), XDP_DROP, None),
            case(
                "c, alone in its slot: forwarded",
                udp(c),
                XDP_TX,
                Some(fwd(c)),
            ),
            case(
                "d, not a VIP, in c's slot: untouched",
                udp(d),
                XDP_PASS,
                None,
            ),
            case("d: ARP untouched", arp_req(d), XDP_PASS, None),
            case(
                "e, not a VIP, in a and b's slot: untouched",
                udp(e),
                XDP_PASS,
                None,
            ),
        ],
    );
    // Removing a leaves b alone in the slot; c turns local (a new entry).
    dp.remove_vip(IpAddr::V4(a)).unwrap();
    dp.set_vip(IpAddr::V4(c), &entry(action::LOCAL, 2, 0))
        .unwrap();
    run_cases(
        &dp,
        &[
            case("a removed: ARP untouched", arp_req(a), XDP_PASS, None),
            case("b, now alone: forwarded", udp(b), XDP_TX, Some(fwd(b))),
            case("c, replaced: local", udp(c), XDP_PASS, None),
            case("c: ARP answered", arp_req(c), XDP_TX, answered(c)),
            case("d still untouched", arp_req(d), XDP_PASS, None),
        ],
    );
    // Enough updates to cycle through every entry of the index (capacity + 1,024),
    // alternating b and c between local and forward, then every VIP of the table.
    for i in 0..(index::entries(max) as usize + 100) {
        let (x, stats) = if i % 2 == 0 { (b, 1) } else { (c, 2) };
        let act = if i % 4 < 2 {
            action::LOCAL
        } else {
            action::FORWARD
        };
        dp.set_vip(IpAddr::V4(x), &entry(act, stats, 0)).unwrap();
    }
    let table: Vec<(IpAddr, VipEntry)> = addrs
        .iter()
        .take(max as usize)
        .enumerate()
        .map(|(i, x)| {
            let act = if i % 2 == 0 {
                action::LOCAL
            } else {
                action::FORWARD
            };
            (IpAddr::V4(*x), entry(act, i as u32, 0))
        })
        .collect();
    for x in [b, c] {
        dp.remove_vip(IpAddr::V4(x)).unwrap();
    }
    dp.set_vips_batch(&table).unwrap();
    let mut cases = Vec::new();
    for (i, x) in addrs.iter().take(max as usize).enumerate() {
        if i % 2 == 0 {
            cases.push(case(
                name(format!("{x}: local")),
                arp_req(*x),
                XDP_TX,
                answered(*x),
            ));
        } else {
            cases.push(case(
                name(format!("{x}: forwarded")),
                udp(*x),
                XDP_TX,
                Some(fwd(*x)),
            ));
        }
    }
    for x in addrs.iter().skip(max as usize).take(40) {
        cases.push(case(
            name(format!("{x}: not a VIP")),
            udp(*x),
            XDP_PASS,
            None,
        ));
    }
    run_cases(&dp, &cases);

    // A batch large enough to go through the hash map while the index catches up
    // (`Index::bypass`), twice (the second replaces every entry), then checked.
    let mut dp = Dataplane::load(4096).expect("loading the data plane");
    let many: Vec<Ipv4Addr> = (0..3000u32)
        .map(|i| Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8))
        .collect();
    for flip in [0, 1] {
        let table: Vec<(IpAddr, VipEntry)> = many
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let act = if (i + flip) % 2 == 0 {
                    action::LOCAL
                } else {
                    action::FORWARD
                };
                (IpAddr::V4(*x), entry(act, (i % 64) as u32, 0))
            })
            .collect();
        dp.set_vips_batch(&table).unwrap();
    }
    let cases: Vec<Case> = many
        .iter()
        .enumerate()
        .step_by(37)
        .map(|(i, x)| {
            if (i + 1) % 2 == 0 {
                case(
                    name(format!("{x} (batch): local")),
                    arp_req(*x),
                    XDP_TX,
                    answered(*x),
                )
            } else {
                case(
                    name(format!("{x} (batch): forwarded")),
                    udp(*x),
                    XDP_TX,
                    Some(fwd(*x)),
                )
            }
        })
        .collect();
    run_cases(&dp, &cases);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn director_odd_packets_fixtures() {
    privileged();
    let ns = Netns::new("fixtures-director").unwrap();
    ns.run_in(run_director_odd_packets);
}

/// An IPv4 frame to our MAC with `l4` after a 20-byte header (checksum filled in);
/// `frag`: the flags and fragment offset field.
fn ip4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, frag: u16, l4: &[u8]) -> Vec<u8> {
    use vip_common::csum::csum_finish;
    let mut f = frames::ethernet(OWN, CLIENT, 0x0800);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = csum_finish(frames::csum_add(0, &ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// The director's odd packets (issue 12): an ICMP error about a member's reply
/// (fragmentation needed, from a router on the way to the client) reaches the member
/// that holds the client's flow; all fragments of a datagram reach one member. Each
/// is checked over many flows against three members, so a wrong choice cannot pass
/// by chance (one in 3^n).
fn run_director_odd_packets() {
    use vip_common::{maglev::TABLE_SIZE, BalanceMember, Settings};
    let settings = Settings {
        balance_enabled: 1,
        ..Settings::default()
    };
    let mut dp = Dataplane::open(64, None, settings).expect("loading the data plane");
    let mut e = entry(action::LOCAL, 0, 0);
    e.flags = flags::BALANCED;
    e.ifindex = 0; // the balance slot
    let vip6 = v6("2001:db8::50");
    dp.set_vip(IpAddr::V4(VIP4), &e).unwrap();
    dp.set_vip(IpAddr::V6(vip6), &e).unwrap();
    let member = |last: u8| Mac([0x02, 0, 0, 0, 1, last]);
    let mut rows = vec![BalanceMember {
        mac: OWN.0,
        up: 1,
        this_node: 1,
    }];
    rows.extend((1..=3).map(|i| BalanceMember {
        mac: member(i).0,
        up: 1,
        this_node: 0,
    }));
    // Every slot names one of the three other members: every packet leaves by XDP_TX.
    let table: Vec<u16> = (0..TABLE_SIZE).map(|i| 1 + (i % 3) as u16).collect();
    dp.set_balance(0, true, &[], &[], &rows, &table).unwrap();
    // Which member a frame went to (XDP_TX, our MAC as the source).
    let to = |f: &[u8]| -> Mac {
        let r = dp.test_run(f).unwrap();
        assert_eq!(
            action_name(r.action),
            action_name(XDP_TX),
            "a balanced packet leaves for a member"
        );
        assert_eq!(&r.frame[6..12], &OWN.0, "the director's MAC is the source");
        assert_eq!(
            &r.frame[14..],
            &f[14..],
            "the packet is unchanged above Ethernet"
        );
        Mac(r.frame[0..6].try_into().unwrap())
    };
    let router = Ipv4Addr::new(192, 0, 2, 1);
    let mut members_seen = std::collections::HashSet::new();
    for i in 0..30u16 {
        let client = Ipv4Addr::new(198, 51, 100, 1 + (i % 7) as u8);
        let cport = 40_000 + i * 13;
        // The client's flow, and a router's "fragmentation needed" about the
        // member's reply to it (VIP:53 -> client:cport), quoting its headers.
        let m = to(&frames::udp4(
            OWN, CLIENT, client, VIP4, cport, 53, b"query",
        ));
        members_seen.insert(m);
        let quoted = ip4(VIP4, client, 17, 7, 0x4000, &{
            let mut u = Vec::new();
            u.extend_from_slice(&53u16.to_be_bytes());
            u.extend_from_slice(&cport.to_be_bytes());
            u.extend_from_slice(&[0, 16, 0, 0]);
            u
        });
        let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc]; // MTU 1500
        icmp.extend_from_slice(&quoted[14..14 + 28]);
        let c = vip_common::csum::csum_finish(frames::csum_add(0, &icmp));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let err = ip4(router, VIP4, 1, 9, 0, &icmp);
        assert_eq!(
            to(&err),
            m,
            "flow {client}:{cport}: the ICMP error went elsewhere"
        );
        // A datagram in two fragments: the first carries the ports, the second none.
        let mut udp = Vec::new();
        udp.extend_from_slice(&cport.to_be_bytes());
        udp.extend_from_slice(&53u16.to_be_bytes());
        udp.extend_from_slice(&[0x05, 0xc8, 0, 0]);
        udp.extend_from_slice(&[0u8; 24]);
        let first = ip4(client, VIP4, 17, 100 + i, 0x2000, &udp);
        let second = ip4(client, VIP4, 17, 100 + i, 4, &[0u8; 32]);
        assert_eq!(
            to(&first),
            to(&second),
            "{client}:{cport}: the fragments of one datagram went to different members"
        );
    }
    assert_eq!(members_seen.len(), 3, "the flows reach all three members");
    // IPv6: an ICMPv6 "packet too big" about the member's reply reaches its member.
    let client6 = v6("2001:db8:1::12");
    for i in 0..20u16 {
        let cport = 41_000 + i * 17;
        let m = to(&frames::udp6(
            OWN, CLIENT, client6, vip6, cport, 53, b"query",
        ));
        let reply = frames::udp6(CLIENT, OWN, vip6, client6, 53, cport, b"answer");
        let mut msg = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00]; // MTU 1280
        msg.extend_from_slice(&reply[14..14 + 48]);
        let err = frames::icmpv6(OWN, CLIENT, v6("2001:db8:2::1"), vip6, 64, msg);
        assert_eq!(
            to(&err),
            m,
            "[{client6}]:{cport}: the ICMPv6 error went elsewhere"
        );
    }
}

/// Who may become an elastic IP's VIP owner on a gateway (`eip::claim`): a node
/// listed in `EIP_NODES` is learned from its ARP; any other sender naming the VIP is
/// refused (counted, dropped: the kernel's neighbour table must not learn it either),
/// however the frame is dressed; an EIP without nodes learns from anyone, as before.
/// BPF_PROG_TEST_RUN delivers on `lo` (ifindex 1 in the test's namespace), which
/// plays both of the gateway's interfaces here.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn eip_owner_fixtures() {
    privileged();
    let ns = Netns::new("eip-fixtures").unwrap();
    ns.run_in(run_eip_owner);
}

fn run_eip_owner() {
    use std::collections::HashSet;
    use vip::frames::ARP_REQUEST;
    use vip_common::{eip_flags, EipEntry, EipNodeKey, Settings};
    const LO: u32 = 1;
    const ELSEWHERE: u32 = 99;
    let gw4 = Ipv4Addr::new(10, 0, 0, 1);
    let inet4 = Ipv4Addr::new(198, 51, 100, 10);
    let (ext_mac, inet_mac) = (Mac([2, 0, 0, 0, 1, 1]), Mac([2, 0, 0, 0, 1, 2]));
    let other_node = Mac([2, 0, 0, 0, 0, 0x0f]);
    let eip = |n: u8| Ipv4Addr::new(203, 0, 113, n);
    let vip = |n: u8| Ipv4Addr::new(10, 0, 0, n);
    let settings = Settings {
        eip_enabled: 1,
        ..Settings::default()
    };
    let mut dp = Dataplane::open(64, None, settings).expect("loading the data plane");
    dp.add_redirect_target(LO).unwrap();
    // (EIP, VIP, internal ifindex, flags): a strict one, one without nodes, a strict
    // one with other nodes, a strict one whose internal interface is elsewhere.
    let table = [
        (eip(10), vip(60), LO, 0),
        (eip(11), vip(61), LO, eip_flags::ANY_SENDER),
        (eip(12), vip(62), LO, 0),
        (eip(13), vip(63), ELSEWHERE, 0),
    ];
    let entries: Vec<EipEntry> = table
        .iter()
        .enumerate()
        .map(|(i, (e, v, int, flags))| EipEntry {
            eip: e.octets(),
            vip: v.octets(),
            ext_ifindex: LO,
            int_ifindex: *int,
            ext_mac: ext_mac.0,
            int_mac: OWN.0,
            stats_index: i as u16,
            flags: *flags,
        })
        .collect();
    for (i, e) in entries.iter().enumerate() {
        dp.reset_eip_stats(i as u32).unwrap();
        dp.set_eip(e).unwrap();
    }
    let nodes: HashSet<EipNodeKey> = [
        EipNodeKey::v4(vip(60).octets(), ACTIVE.0),
        EipNodeKey::v4(vip(60).octets(), other_node.0),
        EipNodeKey::v4(vip(62).octets(), TARGET.0),
        EipNodeKey::v4(vip(63).octets(), ACTIVE.0),
    ]
    .into();
    dp.set_eip_nodes(&nodes).unwrap();

    let garp = |mac: Mac, ip| frames::gratuitous_arp(mac, ip);
    let reply_to_gw = |sha: Mac, spa| frames::arp(OWN, ARP_REPLY, sha, spa, OWN, gw4);
    let mut dressed = garp(CLIENT, vip(60));
    dressed[6..12].copy_from_slice(&ACTIVE.0);
    let multicast = Mac([0x01, 0, 0x5e, 0, 0, 1]);
    let inbound = frames::udp4(ext_mac, inet_mac, inet4, eip(10), 40000, 7007, b"payload");
    // Translated towards the owner learned last (the other node): the VIP as the
    // destination, TTL 63, the IPv4 checksum redone (UDP checksum 0 stays 0).
    let mut translated = frames::udp4(other_node, OWN, inet4, vip(60), 40000, 7007, b"payload");
    translated[22] = 63;
    translated[24..26].copy_from_slice(&[0, 0]);
    let c = vip_common::csum::csum_finish(frames::csum_add(0, &translated[14..34]));
    translated[24..26].copy_from_slice(&c.to_be_bytes());

    let cases = vec![
        case(
            "a node's gratuitous ARP for the VIP: learned, passed",
            garp(ACTIVE, vip(60)),
            XDP_PASS,
            None,
        ),
        case(
            "a stranger's gratuitous ARP for the VIP",
            garp(CLIENT, vip(60)),
            XDP_DROP,
            None,
        ),
        case(
            "a stranger's ARP reply naming the VIP, to the gateway",
            reply_to_gw(CLIENT, vip(60)),
            XDP_DROP,
            None,
        ),
        case(
            "a stranger's ARP request from the VIP",
            frames::arp(Mac::BROADCAST, ARP_REQUEST, CLIENT, vip(60), Mac::ZERO, gw4),
            XDP_DROP,
            None,
        ),
        case(
            "a stranger's ARP from the VIP with a node's Ethernet source",
            dressed,
            XDP_DROP,
            None,
        ),
        case(
            "ARP naming the VIP at a multicast MAC",
            garp(multicast, vip(60)),
            XDP_DROP,
            None,
        ),
        case(
            "ARP naming the VIP at the zero MAC",
            garp(Mac::ZERO, vip(60)),
            XDP_DROP,
            None,
        ),
        case(
            "the other node's ARP reply: learned, passed",
            reply_to_gw(other_node, vip(60)),
            XDP_PASS,
            None,
        ),
        case(
            "inbound to the EIP after the forgeries: to the node learned last",
            inbound,
            XDP_REDIRECT,
            Some(translated),
        ),
        case(
            "an EIP without nodes: a stranger's gratuitous ARP is learned",
            garp(CLIENT, vip(61)),
            XDP_PASS,
            None,
        ),
        case(
            "an EIP without nodes: a multicast MAC is not learned, passed",
            garp(multicast, vip(61)),
            XDP_PASS,
            None,
        ),
        case(
            "a node of another EIP's VIP is a stranger here",
            garp(ACTIVE, vip(62)),
            XDP_DROP,
            None,
        ),
        case("this VIP's own node", garp(TARGET, vip(62)), XDP_PASS, None),
        case(
            "ARP naming a VIP whose internal interface is another one: not ours",
            garp(CLIENT, vip(63)),
            XDP_PASS,
            None,
        ),
        case(
            "ARP naming an address without an EIP",
            garp(CLIENT, vip(64)),
            XDP_PASS,
            None,
        ),
    ];
    run_cases(&dp, &cases);
    let owner = |v| dp.owner(v).map(|o| Mac(o.mac));
    assert_eq!(owner(vip(60)), Some(other_node));
    assert_eq!(owner(vip(61)), Some(CLIENT));
    assert_eq!(owner(vip(62)), Some(TARGET));
    assert_eq!(owner(vip(63)), None);
    let counts = |i| {
        let s = dp.eip_stats(i).unwrap();
        (s.owner_changes, s.owner_refused)
    };
    assert_eq!(counts(0), (2, 6), "{:?}", dp.eip_stats(0));
    assert_eq!(counts(1), (1, 0), "{:?}", dp.eip_stats(1));
    assert_eq!(counts(2), (1, 1), "{:?}", dp.eip_stats(2));
    assert_eq!(counts(3), (0, 0), "{:?}", dp.eip_stats(3));
    assert_eq!(dp.eip_stats(0).unwrap().in_packets, 1);

    // The agent's rewrite of the nodes: a node no longer listed is a stranger at once,
    // and removing an EIP takes its nodes along.
    let fewer: HashSet<EipNodeKey> = [EipNodeKey::v4(vip(60).octets(), ACTIVE.0)].into();
    dp.set_eip_nodes(&fewer).unwrap();
    assert_eq!(
        dp.eip_nodes(),
        vec![EipNodeKey::v4(vip(60).octets(), ACTIVE.0)]
    );
    run_cases(
        &dp,
        &[case(
            "a node taken off the list",
            reply_to_gw(other_node, vip(60)),
            XDP_DROP,
            None,
        )],
    );
    dp.remove_eip(&entries[0]).unwrap();
    assert!(dp.eip_nodes().is_empty());
    assert_eq!(dp.owner(vip(60)), None);
}
