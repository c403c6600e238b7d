//! The built-in election in namespaces: three nodes elect the highest priority; a
//! killed active is replaced by the next; it comes back and preempts (or not); forged,
//! replayed and malformed advertisements change nothing; a split brain heals; a failing
//! health check gives the VIP up; a stopped agent's lease stops ARP answers.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use lab::{frames, privileged, wait_for, Agent, Capture, Lan, Responder};
use nix::sys::signal::Signal;
use vip::{advert::Advert, host::monotonic_ns};

fn servers_lan(names: &[&str]) -> Lan {
    let mut all: Vec<&str> = names.to_vec();
    all.push("c");
    let mut lan = Lan::new(&all).expect("lab");
    lan.enable_xdp_tx(names).expect("xdp-pass");
    lan
}

fn election(a: &Agent) -> serde_json::Value {
    a.status().unwrap()["groups"][0]["election"].clone()
}

/// The client's kernel ends up with `mac` for the VIP (it keeps talking to it).
fn client_reaches(lan: &Lan, mac: &str) {
    let c = lan.host("c");
    let ok = wait_for(Duration::from_secs(3), || {
        ping(&c.ns, VIP);
        (kernel_neighbour(&c.ns, VIP).as_deref() == Some(mac)).then_some(())
    });
    assert!(
        ok.is_some(),
        "client's neighbour entry is {:?}, wanted {mac}",
        kernel_neighbour(&c.ns, VIP)
    );
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn three_nodes_elect_fail_over_and_preempt() {
    privileged();
    let lan = servers_lan(&["a", "b", "e"]);
    let all = ["a", "b", "e"];
    let a = start_elected(&lan, "a", &all, 200, "");
    let b = start_elected(&lan, "b", &all, 150, "");
    let e = start_elected(&lan, "e", &all, 100, "");
    expect_states(
        &[("a", &a), ("b", &b), ("e", &e)],
        &["active", "standby", "standby"],
    );
    // Each step below moves b exactly once and e never: a takeover by e, or a flap of
    // b, that healed before the states were looked at still moves the counters.
    let start = transitions(&[("b", &b), ("e", &e)]);
    let moved = |steps: u64| vec![("b".to_string(), start[0].1 + steps), start[1].clone()];
    client_reaches(&lan, &lan.host("a").mac);
    let eb = election(&b);
    assert_eq!(
        eb["current_active"]["address"],
        lan.host("a").ip4.to_string()
    );
    assert!(eb["adverts_received"].as_u64().unwrap() > 0);

    // The active dies: the next priority takes over, the client follows.
    a.proc.signal(Signal::SIGKILL).unwrap();
    expect_states(&[("b", &b), ("e", &e)], &["active", "standby"]);
    client_reaches(&lan, &lan.host("b").mac);
    assert_eq!(
        transitions(&[("b", &b), ("e", &e)]),
        moved(1),
        "b took over once, e stayed"
    );
    // The killed agent's data plane went with it (unpinned): the echo saw it first.
    let g = b.status().unwrap()["groups"][0].clone();
    assert_eq!(g["reason_kind"], "echo_lost", "{}", g["reason"]);
    drop(a);

    // It comes back with the highest priority and preempts.
    let a = start_elected(&lan, "a", &all, 200, "");
    expect_states(
        &[("a", &a), ("b", &b), ("e", &e)],
        &["active", "standby", "standby"],
    );
    client_reaches(&lan, &lan.host("a").mac);
    let reason = a.status().unwrap()["groups"][0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("preempting"), "{reason}");
    assert_eq!(
        transitions(&[("b", &b), ("e", &e)]),
        moved(2),
        "b yielded once, e stayed"
    );
    // b yielded and forwards stale-cache traffic to a.
    assert_eq!(
        b.status().unwrap()["groups"][0]["forward_to"],
        lan.host("a").mac
    );
    drop((a, b, e));
    teardown(lan);
}

fn echo(a: &Agent) -> serde_json::Value {
    a.status().unwrap()["groups"][0]["echo"].clone()
}

fn armed(b: &Agent) {
    let ok = wait_for(Duration::from_secs(3), || {
        (echo(b)["state"] == "armed").then_some(())
    });
    assert!(ok.is_some(), "the echo never armed: {}", echo(b));
}

/// The echo: b probes a's data plane; a's link going down, a killed agent, a stopped
/// agent (only once its lease ran out) are all seen by the probes, before any
/// advertisement silence could be; with the echo off, silence still works.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn the_echo_detects_a_dead_data_plane_before_silence() {
    privileged();
    let lan = servers_lan(&["a", "b"]);
    let all = ["a", "b"];
    let a = start_elected(&lan, "a", &all, 200, "");
    let b = start_elected(&lan, "b", &all, 100, "");
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    armed(&b);
    let e = echo(&b);
    assert_eq!(e["peer"], lan.host("a").ip4.to_string());
    assert!(e["replies"].as_u64().unwrap() > 0, "{e}");
    // a's data plane answered them, and its agent never saw one.
    let g = &a.status().unwrap()["global"];
    assert!(g["echo_answered"].as_u64().unwrap() > 0, "{g}");
    assert_eq!(a.status().unwrap()["groups"][0]["election"]["malformed"], 0);

    // Link down: the probes go unanswered.
    lan.host("a")
        .ns
        .ip(&["link", "set", "eth0", "down"])
        .unwrap();
    expect_states(&[("b", &b)], &["active"]);
    let g = b.status().unwrap()["groups"][0].clone();
    assert_eq!(g["reason_kind"], "echo_lost", "{}", g["reason"]);
    let t = &g["last_takeover"];
    let (decided, announced) = (
        t["decided_mono_ns"].as_u64().unwrap(),
        t["announced_mono_ns"].as_u64().unwrap(),
    );
    assert!(announced >= decided, "{t}");
    lan.host("a").ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    armed(&b);

    // With the echo off, advertisement silence detects the failure as before.
    drop(b);
    let b = start_elected(&lan, "b", &all, 100, "echo_interval_ms = 0");
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    assert_eq!(echo(&b)["state"], "off");
    a.proc.signal(Signal::SIGKILL).unwrap();
    expect_states(&[("b", &b)], &["active"]);
    let g = b.status().unwrap()["groups"][0].clone();
    assert_eq!(g["reason_kind"], "peer_silent", "{}", g["reason"]);
    drop((a, b));

    // A stopped agent: its data plane answers probes while its lease runs (600 ms at
    // 200 ms adverts), so the probes see it go when it stops serving, never before.
    let slow = |me: &str, prio: u8| {
        let cfg = elected(&lan, me, &all, prio, "", "").replace(
            &format!("advert_interval_ms = {INTERVAL}"),
            "advert_interval_ms = 200",
        );
        Agent::start(&lan.host(me).ns, me, &cfg).expect("starting the agent")
    };
    let a = slow("a", 200);
    let b = slow("b", 100);
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    armed(&b);
    let stopped = monotonic_ns();
    a.proc.signal(Signal::SIGSTOP).unwrap();
    expect_states(&[("b", &b)], &["active"]);
    let g = b.status().unwrap()["groups"][0].clone();
    assert_eq!(g["reason_kind"], "echo_lost", "{}", g["reason"]);
    let decided = g["last_takeover"]["decided_mono_ns"].as_u64().unwrap();
    // The lease had at least 600 - 200 ms left when a stopped (renewed every tick).
    assert!(
        decided - stopped >= 400_000_000,
        "b took over {} ms after a stopped, before a's lease ran out",
        (decided - stopped) / 1_000_000
    );
    a.proc.signal(Signal::SIGCONT).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    drop((a, b));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn without_preempt_a_returning_node_stays_standby() {
    privileged();
    let lan = servers_lan(&["a", "b"]);
    let all = ["a", "b"];
    let b = start_elected(&lan, "b", &all, 100, "");
    expect_states(&[("b", &b)], &["active"]);
    let a = start_elected(&lan, "a", &all, 200, "preempt = false");
    expect_states(&[("a", &a), ("b", &b)], &["standby", "active"]);
    let pair = [("a", &a), ("b", &b)];
    let before = transitions(&pair);
    // Deliberate: nothing may change for 20 intervals (a must not preempt), so time
    // has to pass; there is no event to wait for. A preemption that b undid within the
    // period would still have moved the counters.
    std::thread::sleep(Duration::from_millis(INTERVAL * 20));
    assert_no_transitions(&pair, &before, "without preempt");
    assert_eq!((state(&a), state(&b)), ("standby".into(), "active".into()));
    // Nor did a go active on its way to standby.
    let reasons = a.status().unwrap()["groups"][0]["transition_reasons"].clone();
    assert!(
        reasons
            .as_object()
            .is_some_and(|m| !m.keys().any(|k| k.starts_with("active/"))),
        "a went active: {reasons}"
    );
    client_reaches(&lan, &lan.host("b").mac);
    drop((a, b));
    teardown(lan);
}

/// Sends `dst` a UDP datagram on the advert port that claims to be from `src`,
/// address and MAC (`dst`'s data plane admits a peer's datagrams from its own MAC
/// only), straight out of `dst`'s switch port, so that the switch keeps learning the
/// real ports.
fn spoofed(lan: &Lan, src: &str, dst: &str, payload: &[u8]) {
    let (s, d) = (lan.host(src), lan.host(dst));
    let f = frames::udp4(mac(&d.mac), mac(&s.mac), s.ip4, d.ip4, 4112, 4112, payload);
    Capture::open(&lan.switch, &d.port)
        .and_then(|port| port.send(&f))
        .expect("injecting a datagram");
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn forged_replayed_and_malformed_adverts_change_nothing() {
    privileged();
    let lan = servers_lan(&["a", "b"]);
    let dir = std::env::temp_dir().join(format!("vip-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("web.key");
    std::fs::write(&key, "correct horse battery staple\n").unwrap();
    let extra = format!("auth_key_file = \"{}\"", key.display());
    let all = ["a", "b"];
    let a = start_elected(&lan, "a", &all, 200, &extra);
    let b = start_elected(&lan, "b", &all, 100, &extra);
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    // Nothing below may move either node, not even for a moment.
    let pair = [("a", &a), ("b", &b)];
    let before = transitions(&pair);

    // Capture a genuine advertisement from a to b, to replay it later.
    let on_b = Capture::open(&lan.host("b").ns, "eth0").unwrap();
    let genuine = on_b
        .collect(Duration::from_millis(INTERVAL * 5), |f| {
            f.len() > 42 && f[23] == 17 && f[36..38] == [0x10, 0x10]
        })
        .pop()
        .expect("no advertisement seen on b");
    let payload = genuine[42..].to_vec();
    let ad =
        Advert::decode(&payload, Some(b"correct horse battery staple")).expect("a real advert");
    assert_eq!(ad.priority, 200);

    let c = Capture::open(&lan.host("c").ns, "eth0").unwrap();
    // Forged: a wrong key, no key at all, claiming priority 254 from b's address to a.
    let mut forged = ad.clone();
    forged.addr = lan.host("b").ip4.into();
    forged.priority = 254;
    forged.seq = u64::MAX - 1;
    for (i, (what, bytes)) in [
        ("wrong key", forged.encode(Some(b"not the key at all!!"))),
        ("no key", forged.encode(None)),
    ]
    .into_iter()
    .enumerate()
    {
        for _ in 0..5 {
            spoofed(&lan, "b", "a", &bytes);
        }
        // a has judged all five before the states are looked at.
        let want = 5 * (i + 1);
        assert!(
            wait_for(Duration::from_secs(2), || (election(&a)["auth_failures"]
                == want)
                .then_some(()))
            .is_some(),
            "{what}: {}",
            election(&a)
        );
        expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    }
    // Replayed: the genuine advertisement again, spoofed from a to b. Deliberate: two
    // intervals pass so that b has seen newer genuine adverts than the captured one.
    std::thread::sleep(Duration::from_millis(INTERVAL * 2));
    for _ in 0..5 {
        spoofed(&lan, "a", "b", &payload);
    }
    // Malformed: garbage and truncations from a's address.
    spoofed(
        &lan,
        "a",
        "b",
        b"hello, this is not an advertisement at all",
    );
    spoofed(&lan, "a", "b", &payload[..20]);
    // From a host that is not a peer: b's data plane drops it before the socket.
    let from_c = frames::udp4(
        mac(&lan.host("b").mac),
        mac(&lan.host("c").mac),
        lan.host("c").ip4,
        lan.host("b").ip4,
        4112,
        4112,
        &payload,
    );
    c.send(&from_c).unwrap();
    // Wait until b has judged every one of them.
    let judged = wait_for(Duration::from_secs(2), || {
        let eb = election(&b);
        let dropped = &b.status().unwrap()["global"]["election_not_peer"];
        (eb["replays"] == 5 && eb["malformed"] == 2 && *dropped == 1).then_some(())
    });
    assert!(judged.is_some(), "{}", election(&b));

    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    assert_no_transitions(&pair, &before, "forged, replayed and malformed adverts");
    let ea = election(&a);
    let eb = election(&b);
    assert_eq!(ea["auth_failures"], 10, "{ea}");
    assert_eq!(eb["replays"], 5, "{eb}");
    assert_eq!(eb["malformed"], 2, "{eb}");
    assert_eq!(eb["unknown_peers"], 0, "{eb}");
    assert_eq!(ea["split_brains"], 0);
    assert!(a.log_text().contains("failed authentication"));
    std::fs::remove_dir_all(&dir).unwrap();
    drop((a, b));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn split_brain_heals_lower_priority_yields() {
    privileged();
    let lan = servers_lan(&["a", "b"]);
    let all = ["a", "b"];
    // Partition a and b from each other's adverts (the client still sees both).
    for n in ["a", "b"] {
        lan.host(n)
            .ns
            .exec(&["nft", "add table inet part"])
            .unwrap();
        lan.host(n)
            .ns
            .exec(&[
                "nft",
                "add chain inet part in { type filter hook input priority 0 ; }",
            ])
            .unwrap();
        lan.host(n)
            .ns
            .exec(&["nft", "add rule inet part in udp dport 4112 drop"])
            .unwrap();
    }
    let a = start_elected(&lan, "a", &all, 200, "");
    let b = start_elected(&lan, "b", &all, 100, "");
    expect_states(&[("a", &a), ("b", &b)], &["active", "active"]);
    // Heal.
    for n in ["a", "b"] {
        lan.host(n)
            .ns
            .exec(&["nft", "delete table inet part"])
            .unwrap();
    }
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    assert!(
        election(&b)["split_brains"].as_u64().unwrap()
            + election(&a)["split_brains"].as_u64().unwrap()
            >= 1
            || b.status().unwrap()["groups"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("yielding")
    );
    assert!(b.log_text().contains("yielding"), "{}", b.log_text());
    client_reaches(&lan, &lan.host("a").mac);
    drop((a, b));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_failing_health_check_gives_the_vip_up() {
    privileged();
    let lan = servers_lan(&["a", "b"]);
    let all = ["a", "b"];
    let flag = std::env::temp_dir().join(format!("vip-healthy-{}", std::process::id()));
    std::fs::write(&flag, "").unwrap();
    let check = format!(
        "track_script = {{ command = [\"test\", \"-e\", \"{}\"], interval_ms = 20, timeout_ms = 20, rise = 2, fall = 2 }}",
        flag.display()
    );
    let a = start_elected(&lan, "a", &all, 200, &check);
    let b = start_elected(&lan, "b", &all, 100, "");
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    std::fs::remove_file(&flag).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["fault", "active"]);
    client_reaches(&lan, &lan.host("b").mac);
    let sa = a.status().unwrap();
    assert_eq!(sa["groups"][0]["healthy"], false);
    assert!(
        sa["groups"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("track_script"),
        "{sa}"
    );
    assert_eq!(sa["groups"][0]["vips"][0]["action"], "none");
    // Recovery: standby again, then preempts (higher priority).
    std::fs::write(&flag, "").unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    std::fs::remove_file(&flag).unwrap();
    drop((a, b));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn lease_expiry_stops_arp_answers_of_a_stopped_agent() {
    privileged();
    let lan = servers_lan(&["a", "b"]);
    // b never runs: a is active alone.
    let a = start_elected(&lan, "a", &["a", "b"], 200, "");
    expect_states(&[("a", &a)], &["active"]);
    let c = lan.host("c");
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    let ask = || {
        cap.clear();
        cap.send(&frames::arp_request(mac(&c.mac), c.ip4, VIP4))
            .unwrap();
        arp_replies_for(&cap.collect(Duration::from_millis(100), |_| true), VIP4).len()
    };
    assert_eq!(ask(), 1);
    a.proc.signal(Signal::SIGSTOP).unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || (ask() == 0).then_some(())).is_some(),
        "a stopped agent's node kept answering ARP"
    );
    // Neither the data plane (lease expired) nor the kernel (request dropped) answers.
    for _ in 0..3 {
        assert_eq!(ask(), 0, "a stopped agent's node still answers ARP");
    }
    a.proc.signal(Signal::SIGCONT).unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || (ask() == 1).then_some(())).is_some(),
        "answers did not resume"
    );
    drop(a);
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn planned_handover_loses_nothing() {
    privileged();
    let lan = servers_lan(&["a", "b"]);
    let all = ["a", "b"];
    let a = start_elected(&lan, "a", &all, 200, "");
    let b = start_elected(&lan, "b", &all, 100, "");
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    let before = transitions(&[("a", &a), ("b", &b)]);
    let to: SocketAddr = (VIP4, 7007).into();
    let _ra = Responder::start(&lan.host("a").ns, to, "a").unwrap();
    let _rb = Responder::start(&lan.host("b").ns, to, "b").unwrap();
    let prober = lab::Prober::start(&lan.host("c").ns, to, Duration::from_millis(1)).unwrap();
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(3)),
        "a never answered"
    );
    let out = a.cli(&["demote", "web"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_states(&[("a", &a), ("b", &b)], &["standby", "active"]);
    assert!(
        prober.wait_answers("b", 200, Duration::from_secs(3)),
        "b never answered"
    );
    let probes = prober.finish();
    // One step each: a to standby, b to active; no flap on the way.
    let once: Vec<_> = before.iter().map(|(n, t)| (n.clone(), t + 1)).collect();
    assert_eq!(transitions(&[("a", &a), ("b", &b)]), once);
    let o = lab::outage(&probes, "a", "b").expect("the client never moved to b");
    assert_eq!(o.lost, 0, "probes lost in a planned handover: {o:?}");
    assert_eq!(o.unanswered_total, 0, "{o:?}");
    assert_eq!(
        a.status().unwrap()["groups"][0]["election"]["pinned"],
        "standby"
    );
    drop((a, b));
    teardown(lan);
}
