//! The parser's shapes through every consumer, run with BPF_PROG_TEST_RUN: IPv4 with
//! options (IHL 6 and 7) and IPv6 behind an extension header or in fragments for the
//! director, the elastic IP's NAT, the echo's port and the handover, and headers cut
//! short. Each row holds on the program before "parse once" and after it; the
//! director's and the EIP's rows fail if the program ignores the IHL.

mod common;

use common::*;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lab::frames;
use lab::{privileged, Netns};
use vip::{
    dataplane::{action_name, Dataplane},
    mac::Mac,
};
use vip_common::{action, flags, VipEntry};

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn entry(act: u32, slot: u32) -> VipEntry {
    VipEntry {
        action: act,
        stats_index: slot,
        own_mac: OWN.0,
        src_mac: OWN.0,
        dst_mac: ACTIVE.0,
        ..Default::default()
    }
}

fn parse_errors(dp: &Dataplane) -> u64 {
    dp.global_stats()
        .unwrap()
        .into_iter()
        .find(|(n, _)| *n == "parse_errors")
        .unwrap()
        .1
}

/// For `run_director_odd_packets`: the director honours IPv4's IHL, sends an IPv6
/// datagram behind a hop-by-hop header to the local stack (only a fragment header
/// may stand between the fixed header and the ports), hashes both IPv6 fragments
/// by addresses, and counts a UDP header cut short as a parse error.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn director_shapes() {
    privileged();
    let ns = Netns::new("parse-rows-dir").unwrap();
    ns.run_in(|| {
        use vip_common::{maglev::TABLE_SIZE, BalanceMember, Settings};
        let settings = Settings {
            balance_enabled: 1,
            ..Settings::default()
        };
        let mut dp = Dataplane::open(64, None, settings).unwrap();
        let mut e = entry(action::LOCAL, 0);
        e.flags = flags::BALANCED;
        e.ifindex = 0;
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
        let table: Vec<u16> = (0..TABLE_SIZE).map(|i| 1 + (i % 3) as u16).collect();
        dp.set_balance(
            0,
            vip::dataplane::Placement::ALL_PORTS,
            &[],
            &[],
            &rows,
            &table,
        )
        .unwrap();
        let go = |f: &[u8]| {
            let r = dp.test_run(f).unwrap();
            (r.action, Mac(r.frame[0..6].try_into().unwrap()))
        };
        let client6 = v6("2001:db8:1::12");
        for i in 0..20u16 {
            let client = Ipv4Addr::new(198, 51, 100, 1 + (i % 7) as u8);
            let cport = 40_000 + i * 13;
            let plain = frames::udp4(OWN, CLIENT, client, VIP4, cport, 53, b"query");
            let (a, m) = go(&plain);
            assert_eq!(action_name(a), action_name(XDP_TX));
            assert_eq!(
                go(&frames::with_ip_options(&plain)),
                (XDP_TX, m),
                "IHL 6: the ports are read at the IHL"
            );
            let t = frames::tcp4(
                OWN,
                CLIENT,
                client,
                VIP4,
                cport,
                80,
                frames::TCP_ACK,
                &[],
                b"x",
            );
            let t_opt = frames::tcp4(
                OWN,
                CLIENT,
                client,
                VIP4,
                cport,
                80,
                frames::TCP_ACK,
                &[1; 8],
                b"x",
            );
            assert_eq!(go(&t), go(&t_opt), "TCP behind IPv4 options (IHL 7)");

            let u6 = frames::udp6(OWN, CLIENT, client6, vip6, cport, 53, b"query");
            let (a, _) = go(&u6);
            assert_eq!(action_name(a), action_name(XDP_TX));
            let (a, _) = go(&frames::with_extension(&u6, 0, 0));
            assert_eq!(
                action_name(a),
                action_name(XDP_PASS),
                "behind a hop-by-hop header: delivered locally"
            );
            let first = go(&frames::with_extension(&u6, 44, 0));
            let later = go(&frames::with_extension(&u6, 44, 8));
            assert_eq!(action_name(first.0), action_name(XDP_TX));
            assert_eq!(first, later, "both IPv6 fragments: one member");
        }
        // A UDP header cut after its ports (the frame ends 6 bytes into it): a parse
        // error, passed.
        let cut = frames::udp4(OWN, CLIENT, CLIENT4_, VIP4, 40000, 53, b"")[..40].to_vec();
        let before = parse_errors(&dp);
        let (a, _) = go(&cut);
        assert_eq!(
            action_name(a),
            action_name(XDP_TX),
            "ports are all it reads"
        );
        let cut = cut[..36].to_vec();
        let (a, _) = go(&cut);
        assert_eq!(action_name(a), action_name(XDP_PASS));
        assert_eq!(
            parse_errors(&dp),
            before + 1,
            "a UDP header without its ports"
        );
    });
}

const CLIENT4_: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);

/// For the EIP tables: inbound translation with IPv4 options rewrites the UDP
/// checksum at the IHL offset; a later fragment gets only its IP header rewritten;
/// an ICMP error to the EIP has its quoted source rewritten too.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn eip_shapes() {
    privileged();
    let ns = Netns::new("parse-rows-eip").unwrap();
    ns.run_in(|| {
        use vip_common::{eip_flags, EipEntry, Settings};
        const LO: u32 = 1;
        let inet4 = Ipv4Addr::new(198, 51, 100, 10);
        let (ext_mac, inet_mac) = (Mac([2, 0, 0, 0, 1, 1]), Mac([2, 0, 0, 0, 1, 2]));
        let (eip, vip) = (Ipv4Addr::new(203, 0, 113, 10), Ipv4Addr::new(10, 0, 0, 60));
        let settings = Settings {
            eip_enabled: 1,
            ..Settings::default()
        };
        let mut dp = Dataplane::open(64, None, settings).unwrap();
        dp.add_redirect_target(LO).unwrap();
        dp.set_eip(&EipEntry {
            eip: eip.octets(),
            vip: vip.octets(),
            ext_ifindex: LO,
            int_ifindex: LO,
            ext_mac: ext_mac.0,
            int_mac: OWN.0,
            stats_index: 0,
            flags: eip_flags::ANY_SENDER,
        })
        .unwrap();
        dp.set_owner(vip, ACTIVE.0).unwrap();
        // A UDP datagram with a checksum (as IPv6-style senders set it), options.
        let with_sum = |src: Ipv4Addr, dst: Ipv4Addr| {
            let mut f = frames::udp4(ext_mac, inet_mac, src, dst, 40000, 7007, b"payload!");
            let mut sum = frames::csum_add(0, &src.octets());
            sum = frames::csum_add(sum, &dst.octets());
            sum = frames::csum_add(sum, &[0, 17, 0, 16]);
            let c = vip_common::csum::csum_finish(frames::csum_add(sum, &f[34..50]));
            f[40..42].copy_from_slice(&c.to_be_bytes());
            f
        };
        let expect = |f: &[u8]| -> Vec<u8> {
            // To the owner, from our internal MAC, TTL 63, the VIP as the destination,
            // every checksum valid.
            let mut t = f.to_vec();
            t[0..6].copy_from_slice(&ACTIVE.0);
            t[6..12].copy_from_slice(&OWN.0);
            t[22] -= 1;
            t[30..34].copy_from_slice(&vip.octets());
            frames::ipv4_checksum(&mut t);
            t
        };
        let valid_udp = |f: &[u8]| {
            let ihl = (f[14] & 0x0f) as usize * 4;
            let (ip, udp) = (&f[14..14 + ihl], &f[14 + ihl..14 + ihl + 16]);
            let mut sum = frames::csum_add(0, &ip[12..20]);
            sum = frames::csum_add(sum, &[0, 17, 0, 16]);
            vip_common::csum::csum_fold(frames::csum_add(sum, udp)) == 0xffff
        };
        let plain = with_sum(inet4, eip);
        let r = dp.test_run(&plain).unwrap();
        assert_eq!(action_name(r.action), action_name(XDP_REDIRECT));
        assert!(valid_udp(&r.frame), "UDP checksum updated");
        let opt = frames::with_ip_options(&plain);
        let r = dp.test_run(&opt).unwrap();
        assert_eq!(action_name(r.action), action_name(XDP_REDIRECT));
        assert!(
            valid_udp(&r.frame),
            "IHL 6: the UDP checksum at the IHL offset"
        );
        let mut want = expect(&opt);
        want[44..46].copy_from_slice(&r.frame[44..46]);
        assert_eq!(r.frame, want, "IHL 6: translated");
        // A later fragment: the IP header only (its payload is not a UDP header).
        let later = frames::fragment(&plain, 2, false);
        let r = dp.test_run(&later).unwrap();
        assert_eq!(action_name(r.action), action_name(XDP_REDIRECT));
        assert_eq!(r.frame, expect(&later), "a later fragment: IP header only");
        // An ICMP error to the EIP quoting the packet the VIP sent (translated on the
        // way out, so it quotes the EIP as the source): the quote gets the VIP back.
        let quoted = frames::udp4(inet_mac, ext_mac, eip, inet4, 7007, 40000, b"answer");
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[14..14 + 28]);
        let c = vip_common::csum::csum_finish(frames::csum_add(0, &icmp));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut err = frames::ethernet(ext_mac, inet_mac, 0x0800);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 9, 0, 0, 64, 1, 0, 0]);
        ip.extend_from_slice(&Ipv4Addr::new(192, 0, 2, 1).octets());
        ip.extend_from_slice(&eip.octets());
        let c = vip_common::csum::csum_finish(frames::csum_add(0, &ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        err.extend_from_slice(&ip);
        err.extend_from_slice(&icmp);
        let r = dp.test_run(&err).unwrap();
        assert_eq!(action_name(r.action), action_name(XDP_REDIRECT));
        assert_eq!(
            &r.frame[34 + 8 + 12..34 + 8 + 16],
            &vip.octets(),
            "quote's source"
        );
        let inner = &r.frame[42..62];
        assert_eq!(
            vip_common::csum::csum_fold(frames::csum_add(0, inner)),
            0xffff,
            "the quoted header's checksum"
        );
        assert_eq!(
            vip_common::csum::csum_fold(frames::csum_add(0, &r.frame[34..])),
            0xffff,
            "the ICMP checksum still holds"
        );
    });
}

/// For the echo table: a datagram to the election port cut inside its UDP header
/// (after the ports) is a parse error, passed, whoever sent it; and for the
/// handover table: an IPv6 TCP segment in a first fragment takes the entry's action.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn echo_and_handover_shapes() {
    privileged();
    let ns = Netns::new("parse-rows-echo").unwrap();
    ns.run_in(|| {
        use vip_common::Settings;
        let settings = Settings {
            echo_port: 4112,
            ..Settings::default()
        };
        let mut dp = Dataplane::open(64, None, settings).unwrap();
        let stranger = Ipv4Addr::new(10, 0, 0, 99);
        let to_port = frames::udp4(OWN, CLIENT, stranger, VIP4, 4112, 4112, b"");
        let before = parse_errors(&dp);
        let r = dp.test_run(&to_port[..40]).unwrap();
        assert_eq!(action_name(r.action), action_name(XDP_PASS));
        assert_eq!(parse_errors(&dp), before + 1);
        let r = dp.test_run(&to_port).unwrap();
        assert_eq!(
            action_name(r.action),
            action_name(XDP_DROP),
            "whole: a stranger's"
        );

        // GRACE on an IPv6 VIP: a non-SYN segment no socket knows goes to the old
        // active; in a first fragment (a fragment header in front) it is not
        // judged: the entry's action (local).
        let grace6 = v6("2001:db8::55");
        let mut grace = entry(action::LOCAL, 1);
        grace.flags = flags::GRACE;
        dp.set_vip(IpAddr::V6(grace6), &grace).unwrap();
        let seg = frames::tcp6(
            OWN,
            CLIENT,
            v6("2001:db8::12"),
            grace6,
            40002,
            80,
            frames::TCP_ACK,
            b"GET",
        );
        let r = dp.test_run(&seg).unwrap();
        assert_eq!(action_name(r.action), action_name(XDP_TX));
        let r = dp.test_run(&frames::with_extension(&seg, 44, 0)).unwrap();
        assert_eq!(action_name(r.action), action_name(XDP_PASS));
        // An NS behind a hop-by-hop header is not answered: the data plane parses
        // none; it passes (its destination is no VIP).
        let local6 = v6("2001:db8::50");
        dp.set_vip(IpAddr::V6(local6), &entry(action::LOCAL, 2))
            .unwrap();
        let ns_ = frames::neighbour_solicitation(CLIENT, v6("2001:db8::12"), local6, None);
        let r = dp.test_run(&ns_).unwrap();
        assert_eq!(action_name(r.action), action_name(XDP_TX));
        let r = dp.test_run(&frames::with_extension(&ns_, 0, 0)).unwrap();
        assert_eq!(action_name(r.action), action_name(XDP_PASS));
    });
}
