//! One replayed datagram must not split the brain. With `auth_key_file`, both agents
//! restarted, a single recorded advert of a's *previous* epoch replayed to b made b
//! accept the "new" epoch and retire a's live one: from then on it refused every
//! genuine advert of a as a replay, took over, and both answered ARP. Now an epoch b
//! does not know must answer a challenge before it counts, and the live one never
//! stops counting.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::*;
use lab::{frames, privileged, Agent, Capture, Lan};

fn election(a: &Agent) -> serde_json::Value {
    a.status().unwrap()["groups"][0]["election"].clone()
}

/// A datagram from `src`'s address to `dst`'s election port, sent by the client from
/// its own MAC. The data plane lets one such datagram through per 100 ms (a peer whose
/// MAC changed must be heard again), so some of a burst reach the replay protection;
/// sending from `src`'s MAC instead would steal it on the switch, which is another
/// attack (see README, Security).
fn spoofed(lan: &Lan, src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let (s, d, c) = (lan.host(src), lan.host(dst), lan.host("c"));
    frames::udp4(mac(&d.mac), mac(&c.mac), s.ip4, d.ip4, 4112, 4112, payload)
}

/// The MACs that answered ARP for the VIP on the client's wire over `n` requests.
fn answerers(lan: &Lan, n: usize) -> BTreeSet<String> {
    let c = lan.host("c");
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    cap.clear();
    let mut macs = BTreeSet::new();
    for _ in 0..n {
        cap.send(&frames::arp_request(mac(&c.mac), c.ip4, VIP4))
            .unwrap();
        for m in arp_replies_for(&cap.collect(Duration::from_millis(20), |_| true), VIP4) {
            macs.insert(m.to_string());
        }
    }
    macs
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_replayed_advert_of_an_earlier_epoch_never_locks_a_live_peer_out() {
    privileged();
    let lan = lan();
    let dir = std::env::temp_dir().join(format!("vip-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("web.key");
    std::fs::write(&key, "correct horse battery staple\n").unwrap();
    let extra = format!("auth_key_file = \"{}\"", key.display());
    let all = ["a", "b"];
    let start = |n: &str, p: u8| start_elected(&lan, n, &all, p, &extra);
    let mut a = start("a", 200);
    let mut b = start("b", 100);
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);

    // Record a genuine advert of a (this epoch) on b's wire.
    let on_b = Capture::open(&lan.host("b").ns, "eth0").unwrap();
    let recorded = on_b
        .collect(Duration::from_millis(INTERVAL * 5), |f| {
            f.len() > 42
                && f[23] == 17
                && f[36..38] == [0x10, 0x10]
                && f[26..30] == lan.host("a").ip4.octets()
        })
        .pop()
        .expect("no advertisement of a seen on b")[42..]
        .to_vec();
    drop(on_b);

    // Both agents restart: new epochs, and b's replay state is gone with it.
    a.stop();
    b.stop();
    drop((a, b));
    let a = start("a", 200);
    let b = start("b", 100);
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    let before = election(&b);
    let transitions = b.status().unwrap()["groups"][0]["transitions"].clone();

    // The attack: the recorded advert of a's previous epoch, replayed to b, a few
    // times over a second.
    let c = Capture::open(&lan.host("c").ns, "eth0").unwrap();
    for _ in 0..10 {
        c.send(&spoofed(&lan, "a", "b", &recorded)).unwrap();
        // Deliberate: spread over 10 intervals, between a's genuine adverts.
        std::thread::sleep(Duration::from_millis(INTERVAL));
    }
    // b keeps hearing a: genuine adverts are not refused as replays, b stays standby.
    // Deliberate: long enough for a wrong takeover (3 intervals) many times over.
    std::thread::sleep(Duration::from_millis(INTERVAL * 25));
    let after = election(&b);
    let refused = after["replays"].as_u64().unwrap() - before["replays"].as_u64().unwrap();
    assert!(
        refused <= 10,
        "b refused {refused} datagrams as replays: the live epoch was locked out ({after})"
    );
    assert!(
        after["adverts_received"].as_u64().unwrap()
            > before["adverts_received"].as_u64().unwrap() + 10,
        "b no longer hears a: {after}"
    );
    assert_eq!(
        b.status().unwrap()["groups"][0]["transitions"],
        transitions,
        "b moved"
    );
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    assert_eq!(answerers(&lan, 10), [lan.host("a").mac.clone()].into());
    // The replayed epoch was never taken: it was only ever asked about.
    assert!(after["unverified"].as_u64().unwrap() >= 1, "{after}");
    let _ = std::fs::remove_dir_all(&dir);
    drop((a, b, c));
    teardown(lan);
}

/// Defect: without a key, 5,000 spoofed hellos in about a second made the active send
/// 3,395 adverts, one to every peer per hello. Now a hello is answered at most once an
/// interval, whoever sends it.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_flood_of_hellos_costs_the_active_at_most_one_advert_an_interval() {
    privileged();
    let lan = lan();
    let (a, b) = (
        start_elected(&lan, "a", &["a", "b"], 200, ""),
        start_elected(&lan, "b", &["a", "b"], 100, ""),
    );
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    let hello = vip::advert::Advert {
        kind: vip::advert::Kind::Hello,
        priority: 50,
        interval_ms: INTERVAL as u16,
        hold_ms: 0,
        mac: mac(&lan.host("b").mac),
        addr: lan.host("b").ip4.into(),
        seq: 1,
        epoch: 42,
        group: "web".into(),
        handshakes: true,
        nonce: None,
    };
    let c = Capture::open(&lan.host("c").ns, "eth0").unwrap();
    let sent_before = election(&a)["adverts_sent"].as_u64().unwrap();
    let t0 = std::time::Instant::now();
    for i in 0..5000u64 {
        let mut h = hello.clone();
        h.seq = i + 1;
        c.send(&spoofed(&lan, "b", "a", &h.encode(None))).unwrap();
    }
    let spent = t0.elapsed();
    // Deliberate: a's loop works the queue off.
    std::thread::sleep(Duration::from_millis(INTERVAL * 5));
    let sent = election(&a)["adverts_sent"].as_u64().unwrap() - sent_before;
    // Its own adverts (one an interval) plus at most one answer an interval.
    let intervals = (spent + Duration::from_millis(INTERVAL * 5)).as_millis() as u64 / INTERVAL + 2;
    assert!(
        sent <= 2 * intervals,
        "{sent} adverts sent over {intervals} intervals of hellos"
    );
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    drop((a, b, c));
    teardown(lan);
}
