//! Every VIP's announcement reaches the wire, judged on the switch: a node takes a
//! group of 1,000 IPv4 and 50 IPv6 VIPs through an uplink slower than its CPU (a
//! 5 Mbit/s token bucket with a 16 kB queue: a round of announcements overflows
//! it, as a busy NIC's queue does), and a capture on its switch port must see
//! `garp_count` gratuitous ARPs or unsolicited NAs for each of them from its MAC,
//! none missing, none extra. The agent's own counts of retried and dropped
//! announcements are read too, but the capture is the judge. (`cargo xtask bench
//! failover` takes groups up to 20,000 VIPs.)

mod common;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use common::*;
use lab::{privileged, Capture};

/// The group's IPv4 VIPs (`VIP_ANNOUNCE_V4=N` for more, up to 62,500) and IPv6 VIPs.
const V4: usize = 1000;
const V6: usize = 50;

fn v4_count() -> usize {
    std::env::var("VIP_ANNOUNCE_V4").ok().map_or(V4, |v| {
        v.trim().parse().expect("VIP_ANNOUNCE_V4 is a number")
    })
}
const ROUNDS: u64 = 3;

/// The VIPs: IPv4 in a /16 beside the lab's /24 (the node gets an address in it),
/// IPv6 in the lab's /64.
fn vips() -> Vec<String> {
    let v4 = (0..v4_count()).map(|i| format!("10.9.{}.{}/16", 1 + i / 250, 1 + i % 250));
    let v6 = (0..V6).map(|i| format!("2001:db8::1:{:x}/64", i + 1));
    v4.chain(v6).collect()
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn every_announcement_of_a_big_group_reaches_the_switch() {
    privileged();
    let lan = lan();
    let a_host = lan.host("a");
    a_host
        .ns
        .ip(&["addr", "add", "10.9.0.1/16", "dev", "eth0"])
        .expect("the VIPs' subnet on a");
    a_host
        .ns
        .run_in(|| {
            std::process::Command::new("tc")
                .args(["qdisc", "add", "dev", "eth0", "root", "tbf"])
                .args(["rate", "5mbit", "burst", "8kb", "limit", "16kb"])
                .status()
        })
        .map(|s| assert!(s.success(), "tc qdisc add: {s}"))
        .expect("running tc");
    let a_mac: [u8; 6] = mac(&a_host.mac).0;
    let cap = Capture::open(&lan.switch, &a_host.port).expect("capture on a's port");
    cap.receive_buffer(32 << 20)
        .expect("a capture buffer for every round");
    let vips = vips();
    let refs: Vec<&str> = vips.iter().map(String::as_str).collect();
    let extra = format!("garp_count = {ROUNDS}\ngarp_interval_ms = 200");
    let cfg = config("a", &refs, "active", &extra).replacen(
        "[node]\n",
        &format!("[node]\nmax_vips = {}\n", vips.len().max(4096)),
        1,
    );
    let a = agent(&lan, "a", &cfg);

    let want: Vec<IpAddr> = vips
        .iter()
        .map(|v| v.split('/').next().unwrap().parse().unwrap())
        .collect();
    let mut seen: BTreeMap<IpAddr, u64> = BTreeMap::new();
    let mut strangers = 0;
    let deadline = Instant::now() + Duration::from_secs(20 + v4_count() as u64 / 500);
    // Until every VIP has its rounds, then a second more for any extra one.
    let mut settle: Option<Instant> = None;
    while Instant::now() < deadline && settle.is_none_or(|s| Instant::now() < s) {
        for f in cap.collect(Duration::from_millis(100), |f| announced(f).is_some()) {
            let (ip, m) = announced(&f).unwrap();
            if m == a_mac {
                *seen.entry(ip).or_default() += 1;
            } else {
                strangers += 1;
            }
        }
        if settle.is_none() && want.iter().all(|v| seen.get(v) >= Some(&ROUNDS)) {
            settle = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    let missing: Vec<String> = want
        .iter()
        .filter(|v| seen.get(v).copied().unwrap_or(0) != ROUNDS)
        .map(|v| format!("{v}: {}", seen.get(v).copied().unwrap_or(0)))
        .collect();
    let status = a.status().expect("status");
    let (retried, dropped) = (
        status["global"]["announcement_retries"].as_u64(),
        status["global"]["announcements_dropped"].as_u64(),
    );
    eprintln!(
        "{} VIPs announced on the wire, {ROUNDS} rounds each expected; the agent retried \
         {retried:?} and dropped {dropped:?}",
        seen.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} VIPs were not announced exactly {ROUNDS} times (VIP: times seen): {:?}",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(20)]
    );
    assert_eq!(
        seen.len(),
        want.len(),
        "announcements for VIPs not configured"
    );
    assert_eq!(strangers, 0, "announcements from another MAC");
    assert_eq!(dropped, Some(0), "the agent gave announcements up");
    // The queue overflowed (or this test proves nothing about retries).
    assert!(
        retried.is_some_and(|r| r > 0),
        "the uplink's queue never refused an announcement: retried {retried:?}"
    );
    // Every VIP is on lo: the kernel accepts what the announcements draw.
    let lo: std::collections::HashSet<std::net::IpAddr> =
        a_host.ns.vips_on_lo().into_iter().collect();
    let on_lo = want.iter().filter(|v| lo.contains(*v)).count();
    assert_eq!(on_lo, want.len(), "VIPs on a's lo");
    drop(a);
    teardown(lan);
}
