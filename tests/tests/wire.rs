//! Exactly one owner per VIP, judged from the wire: three elected nodes at the default
//! timers, a client asking for the IPv4 and the IPv6 VIP every 5 ms, every frame the
//! hosts send recorded on the switch, and a seeded random sequence of faults on
//! whichever node is active (see `lab::chaos`). It fails if any request is answered by
//! two MACs or any announcement overlaps another node's answers, and prints, per
//! fault kind, what the client saw. `VIP_CHAOS_SEED=N` replays a sequence,
//! `VIP_CHAOS_FAULTS=N` sets its length (default 8 per mode: one of each kind).

mod common;

use std::time::Duration;

use common::*;
use lab::{
    chaos::{self, Mode},
    privileged,
    wire::{self, Asker, Family, Mac, Recorder, Watch},
};

/// The faults per mode when `VIP_CHAOS_FAULTS` is not set: one of each kind.
const FAULTS: usize = 8;

fn env_number(key: &str) -> Option<u64> {
    let v = std::env::var(key).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a number")),
    )
}

fn wmac(m: vip::mac::Mac) -> Mac {
    Mac(m.0)
}

/// The asker's requests are the ones the lab's builders make (which the fixtures feed
/// the data plane), the ARP request's padding aside: that is where the asker's
/// sequence number travels. And the lab builds the agent's own announcements byte for
/// byte as the agent does (`vip::frames` keeps a copy of the layouts it sends).
#[test]
fn the_askers_requests_are_the_real_ones() {
    let client = mac("02:00:00:00:00:0c");
    let node = mac("02:00:00:00:00:0a");
    let ip4 = "10.0.0.12".parse().unwrap();
    let ip6 = "2001:db8::12".parse().unwrap();
    let vip6 = "2001:db8::50".parse().unwrap();
    assert_eq!(
        wire::arp_request(wmac(client), ip4, VIP4, None),
        lab::frames::arp_request(client, ip4, VIP4)
    );
    let tagged = wire::arp_request(wmac(client), ip4, VIP4, Some(9));
    let plain = lab::frames::arp_request(client, ip4, VIP4);
    assert_eq!(tagged[..42], plain[..42]);
    assert_eq!(tagged.len(), plain.len());
    assert_eq!(
        wire::neighbour_solicitation(wmac(client), ip6, vip6),
        lab::frames::neighbour_solicitation(client, ip6, vip6, None)
    );
    assert_eq!(
        lab::frames::arp(
            lab::frames::BROADCAST,
            lab::frames::ARP_REQUEST,
            node,
            VIP4,
            [0; 6],
            VIP4
        ),
        vip::frames::gratuitous_arp(node, VIP4)
    );
    assert_eq!(
        lab::frames::neighbour_advertisement(
            lab::frames::ALL_NODES_MAC,
            node,
            vip6,
            lab::frames::ALL_NODES,
            false
        ),
        vip::frames::unsolicited_na(node, vip6)
    );
    let (group, group_mac) = vip::frames::solicited_node(vip6);
    let ns = lab::frames::neighbour_solicitation(client, ip6, vip6, None);
    assert_eq!(
        (&ns[0..6], &ns[38..54]),
        (&group_mac.0[..], &group.octets()[..])
    );
    // And what vip sends is read as it is meant.
    let w = Watch {
        client_mac: wmac(client),
        client4: ip4,
        client6: ip6,
        vip4: VIP4,
        vip6,
    };
    assert_eq!(
        wire::classify(&vip::frames::gratuitous_arp(node, VIP4), &w),
        Some(wire::Kind::Announcement {
            family: Family::Arp,
            mac: wmac(node)
        })
    );
    assert_eq!(
        wire::classify(&vip::frames::unsolicited_na(node, vip6), &w),
        Some(wire::Kind::Announcement {
            family: Family::Nd,
            mac: wmac(node)
        })
    );
    assert_eq!(
        wire::classify(
            &lab::frames::neighbour_advertisement(client, node, vip6, ip6, true),
            &w
        ),
        Some(wire::Kind::Answer {
            family: Family::Nd,
            mac: wmac(node),
            tag: None
        })
    );
}

/// The instrument on a quiet lab: one static active, the asker for half a second.
/// Every request reaches the recorder and is answered once, by the active's MAC,
/// through the active's port, well within an interval; the standby is silent; no
/// frame is dropped. (A socket on `br0` would not even see these unicast replies
/// unless the bridge were promiscuous.)
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn the_recorder_sees_every_answer_on_the_switch() {
    privileged();
    let lan = lan();
    let vips = ["10.0.0.50/24", "2001:db8::50/64"];
    let a = agent(&lan, "a", &config("a", &vips, "active", "garp_count = 1"));
    let b = agent(&lan, "b", &config("b", &vips, "standby", ""));
    let c = lan.host("c");
    let w = Watch {
        client_mac: c.mac.parse().unwrap(),
        client4: c.ip4,
        client6: c.ip6,
        vip4: VIP4,
        vip6: "2001:db8::50".parse().unwrap(),
    };
    let ports: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| lan.host(n).port.clone())
        .collect();
    let rec = Recorder::start(&lan.switch, &ports, w).unwrap();
    let asker = Asker::start(&c.ns, "eth0", w, Duration::from_millis(5)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let sent = asker.finish();
    std::thread::sleep(Duration::from_millis(20));
    let got = rec.finish().unwrap();
    assert_eq!((got.drops, got.unstamped), (0, 0), "dropped, unstamped");
    let an = wire::analyse(&got.seen, &[]);
    let a_mac: Mac = lan.host("a").mac.parse().unwrap();
    for f in Family::BOTH {
        let fa = an.family(f);
        let n = sent.iter().filter(|s| s.family == f && s.ok).count();
        assert!(n >= 50, "{} {f:?} requests sent", n);
        assert_eq!(
            fa.requests.len(),
            n,
            "{f:?}: every request reaches the switch"
        );
        for r in &fa.requests {
            assert_eq!(r.by.len(), 1, "{f:?} request at {}: {:?}", r.at_ns, r.by);
            assert_eq!(r.by[0].mac, a_mac);
            assert_eq!(r.by[0].in_place, f == Family::Arp, "answered by XDP");
        }
        assert!(
            fa.max_delay_ns < 5_000_000,
            "{f:?}: an answer took {} µs",
            fa.max_delay_ns / 1000
        );
        assert_eq!(fa.late + fa.orphans + fa.malformed, 0, "{f:?}");
    }
    // Answers came in through a's port (0), requests through c's (2).
    for s in &got.seen {
        match s.kind {
            wire::Kind::Answer { .. } => assert_eq!(s.port, 0, "{s:?}"),
            wire::Kind::Request { .. } => assert_eq!(s.port, 2, "{s:?}"),
            _ => {}
        }
    }
    assert!(an.verdict().one_owner());
    drop((a, b));
    teardown(lan);
}

fn one_owner(mode: Mode) {
    privileged();
    let seed = env_number("VIP_CHAOS_SEED").unwrap_or_else(chaos::fresh_seed);
    let faults = env_number("VIP_CHAOS_FAULTS").map_or(FAULTS, |n| n as usize);
    let o = chaos::Options {
        seed,
        faults,
        mode,
        bin: lab::vip_bin(),
        progress: false,
    };
    let run = chaos::run(&o).unwrap_or_else(|e| {
        panic!(
            "{} mode, seed {seed} (replay: VIP_CHAOS_SEED={seed}): {e:#}",
            mode.name()
        )
    });
    eprint!("{}{}", run.table(), run.faults_text());
    let problems = run.problems();
    assert!(
        problems.is_empty(),
        "seed {seed}: the run itself is not sound: {problems:?}"
    );
    assert!(
        run.one_owner(),
        "{} mode, seed {seed} (replay: VIP_CHAOS_SEED={seed} cargo xtask test --test wire): \
         two owners on the wire\n{}{}\n{}",
        mode.name(),
        run.table(),
        run.faults_text(),
        run.episodes_text()
    );
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn one_owner_on_the_wire_native() {
    one_owner(Mode::Native);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn one_owner_on_the_wire_skb() {
    one_owner(Mode::Skb);
}
