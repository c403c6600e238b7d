//! IPv6 VIPs with the client's real kernel neighbour code: ping -6, TCP and UDP reach
//! the active; the client's neighbour entry points at the active and moves to the new
//! active by the unsolicited NA of a takeover; malformed solicitations are never
//! answered, well-formed ones exactly once by the active only; IPv4 and IPv6 VIPs of
//! one group fail over together.

mod common;

use std::{
    net::{Ipv6Addr, SocketAddr, TcpListener},
    time::Duration,
};

use common::*;
use lab::{privileged, wait_for, Agent, Capture};
use vip::{frames, mac::Mac};

const VIP6: &str = "2001:db8::50";

fn vip6() -> Ipv6Addr {
    VIP6.parse().unwrap()
}

/// Neighbour advertisements on the wire for `target`, as (sender MAC, solicited flag).
fn advertisements(frames_in: &[Vec<u8>], target: Ipv6Addr) -> Vec<(Mac, bool)> {
    frames_in
        .iter()
        .filter(|f| {
            f.len() >= 78
                && f[12..14] == [0x86, 0xdd]
                && f[20] == 58
                && f[54] == 136
                && f[62..78] == target.octets()
        })
        .map(|f| (Mac(f[6..12].try_into().unwrap()), f[58] & 0x40 != 0))
        .collect()
}

fn neighbour6(ns: &lab::Netns, ip: &str) -> Option<String> {
    let out = ns.ip(&["-6", "neigh", "show", ip, "dev", "eth0"]).ok()?;
    let mut it = out.split_whitespace();
    it.position(|w| w == "lladdr")?;
    it.next().map(str::to_string)
}

fn ping6(ns: &lab::Netns, ip: &str) -> bool {
    ns.output(&["ping", "-6", "-c", "1", "-W", "2", ip])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn ping_tcp_udp_reach_the_active_and_its_mac_is_learned() {
    if !privileged() {
        return;
    }
    let lan = lan();
    let (a, c) = (lan.host("a"), lan.host("c"));
    let active = agent(&lan, "a", &config("a", &["2001:db8::50/64"], "active", ""));
    let _standby = agent(&lan, "b", &config("b", &["2001:db8::50/64"], "standby", ""));
    assert!(ping6(&c.ns, VIP6), "ping -6 to the VIP failed");
    assert_eq!(neighbour6(&c.ns, VIP6).as_deref(), Some(a.mac.as_str()));
    let addrs =
        a.ns.ip(&["-6", "-o", "addr", "show", "dev", "eth0"])
            .unwrap();
    let line = addrs
        .lines()
        .find(|l| l.contains("2001:db8::50/128"))
        .unwrap_or_else(|| panic!("{addrs}"));
    assert!(
        line.contains("nodad") && !line.contains("tentative"),
        "{line}"
    );

    let to: SocketAddr = (vip6(), 8080).into();
    let listener = a.ns.run_in(|| TcpListener::bind(to)).unwrap();
    assert_eq!(tcp_round_trip(&c.ns, listener, to), "hello vip");
    let before = active.vip_status(VIP6).unwrap();
    let sock = udp_bind(&a.ns, (vip6(), 5000).into());
    udp_send(&c.ns, (vip6(), 5000).into(), 50, 40);
    assert_eq!(udp_count(&sock, 50), 50);
    let after = active.vip_status(VIP6).unwrap();
    let d = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(d("rx_packets"), 50);
    assert_eq!(d("rx_bytes"), 50 * (14 + 40 + 8 + 40));
    assert!(after["nd_replies"].as_u64().unwrap() >= 1);
    drop((active, _standby));
    teardown(lan);
}

#[test]
fn only_well_formed_solicitations_are_answered_and_only_by_the_active() {
    if !privileged() {
        return;
    }
    let lan = lan();
    let (a, c) = (lan.host("a"), lan.host("c"));
    let active = agent(&lan, "a", &config("a", &["2001:db8::50/64"], "active", ""));
    let standby = agent(&lan, "b", &config("b", &["2001:db8::50/64"], "standby", ""));
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    let me = mac(&c.mac);
    let target = vip6();
    // Let the takeover's unsolicited NAs go by first.
    std::thread::sleep(Duration::from_millis(300));
    let ask = |frame: &[u8]| {
        cap.clear();
        cap.send(frame).unwrap();
        advertisements(&cap.collect(WINDOW, |_| true), target)
    };

    // Well-formed: multicast (solicited-node), unicast (NUD), DAD probe: exactly one
    // answer each, from the active; solicited except for DAD.
    let good = frames::neighbour_solicitation(me, c.ip6, target, None);
    assert_eq!(ask(&good), vec![(mac(&a.mac), true)]);
    assert_eq!(
        ask(&frames::neighbour_solicitation(
            me,
            c.ip6,
            target,
            Some(mac(&a.mac))
        )),
        vec![(mac(&a.mac), true)]
    );
    assert_eq!(
        ask(&frames::neighbour_solicitation(
            me,
            Ipv6Addr::UNSPECIFIED,
            target,
            None
        )),
        vec![(mac(&a.mac), false)]
    );

    // Malformed or not for us: never answered, by anyone.
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut f = good.clone();
    f[21] = 64;
    cases.push(("hop limit 64", f));
    let mut f = good.clone();
    f[57] ^= 0x55;
    cases.push(("bad checksum", f));
    let mut f = good.clone();
    f[55] = 1;
    cases.push(("code 1", f));
    cases.push(("truncated", good[..70].to_vec()));
    let (sn, _) = frames::solicited_node(target);
    let mut msg = good[54..].to_vec();
    msg[25] = 0;
    cases.push((
        "zero-length option",
        frames::icmpv6(mac("33:33:ff:00:00:50"), me, c.ip6, sn, 255, msg),
    ));
    cases.push((
        "wrong solicited-node group",
        frames::icmpv6(
            mac("33:33:ff:00:00:99"),
            me,
            c.ip6,
            "ff02::1:ff00:99".parse().unwrap(),
            255,
            good[54..].to_vec(),
        ),
    ));
    cases.push((
        "unicast NS to another MAC",
        frames::neighbour_solicitation(me, c.ip6, target, Some(mac("02:00:00:00:00:99"))),
    ));
    let mut dad = frames::neighbour_solicitation(me, c.ip6, target, None)[54..].to_vec();
    dad.truncate(32);
    cases.push((
        "DAD probe with a source link-layer option",
        frames::icmpv6(
            mac("33:33:ff:00:00:50"),
            me,
            Ipv6Addr::UNSPECIFIED,
            sn,
            255,
            dad,
        ),
    ));
    for (what, frame) in &cases {
        let got = ask(frame);
        assert!(got.is_empty(), "{what}: answered by {got:?}");
    }
    // The kernel's own tool agrees.
    let out =
        c.ns.output(&["ndisc6", "-1", "-r", "2", VIP6, "eth0"])
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        text.contains(&a.mac),
        "ndisc6 did not get the active's MAC:\n{text}"
    );
    assert_eq!(counter(&active, VIP6, "nd_replies"), 4);
    assert_eq!(counter(&standby, VIP6, "nd_replies"), 0);
    drop((active, standby));

    // A VIP nobody owns (standby only): a DAD probe and solicitations go unanswered.
    let standby = agent(&lan, "b", &config("b", &["2001:db8::50/64"], "standby", ""));
    assert!(ask(&frames::neighbour_solicitation(
        me,
        Ipv6Addr::UNSPECIFIED,
        target,
        None
    ))
    .is_empty());
    assert!(ask(&good).is_empty());
    drop(standby);
    teardown(lan);
}

#[test]
fn v4_and_v6_vips_fail_over_together_and_na_moves_the_client() {
    if !privileged() {
        return;
    }
    let lan = lan();
    let both = |me: &str, p: u8| {
        elected(&lan, me, &["a", "b"], p, "", "").replace(
            "vips = [\"10.0.0.50/24\"]",
            "vips = [\"10.0.0.50/24\", \"2001:db8::50/64\"]",
        )
    };
    let a = Agent::start(&lan.host("a").ns, "a", &both("a", 200)).unwrap();
    let b = Agent::start(&lan.host("b").ns, "b", &both("b", 100)).unwrap();
    assert!(wait_for(Duration::from_secs(5), || (state(&a) == "active"
        && state(&b) == "standby")
        .then_some(()))
    .is_some());
    let c = lan.host("c");
    assert!(ping(&c.ns, VIP) && ping6(&c.ns, VIP6));
    assert_eq!(
        kernel_neighbour(&c.ns, VIP).as_deref(),
        Some(lan.host("a").mac.as_str())
    );
    assert_eq!(
        neighbour6(&c.ns, VIP6).as_deref(),
        Some(lan.host("a").mac.as_str())
    );

    // Planned handover; the client sends nothing meanwhile: only b's gratuitous ARP and
    // unsolicited NA (override flag) can move its entries.
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    cap.clear();
    assert!(a.cli(&["demote", "web"]).unwrap().status.success());
    assert!(wait_for(Duration::from_secs(3), || (state(&b) == "active")
        .then_some(()))
    .is_some());
    let b_mac = lan.host("b").mac.clone();
    let moved = wait_for(Duration::from_secs(2), || {
        (kernel_neighbour(&c.ns, VIP).as_deref() == Some(b_mac.as_str())
            && neighbour6(&c.ns, VIP6).as_deref() == Some(b_mac.as_str()))
        .then_some(())
    });
    assert!(
        moved.is_some(),
        "entries: v4 {:?} v6 {:?}",
        kernel_neighbour(&c.ns, VIP),
        neighbour6(&c.ns, VIP6)
    );
    let nas = advertisements(&cap.collect(Duration::from_millis(200), |_| true), vip6());
    assert!(
        nas.iter()
            .any(|(m, solicited)| *m == mac(&b_mac) && !solicited),
        "no unsolicited NA from b: {nas:?}"
    );
    // Both families answer from b now.
    assert!(ping(&c.ns, VIP) && ping6(&c.ns, VIP6));
    for v in [VIP, VIP6] {
        assert_eq!(b.vip_status(v).unwrap()["action"], "local");
        assert_eq!(a.vip_status(v).unwrap()["action"], "forward");
    }
    drop((a, b));
    teardown(lan);
}
