//! Exactly one owner per VIP, driven from outside as a user would: a peer restarted
//! with its clock an hour back, a SIGKILLed unpinned active, two nodes started at
//! once, the reason a standby gives after a release, and a reload that fails while
//! applying.

mod common;

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use common::*;
use lab::{privileged, Agent, Capture, Lan};
use nix::sys::signal::Signal;

fn servers_lan() -> Lan {
    let mut lan = Lan::new(&["a", "b", "c"]).expect("lab");
    lan.enable_xdp_tx(&["a", "b"]).expect("xdp-pass");
    lan
}

/// The MACs that answer `arping -c 3` for the VIP from the client.
fn arping_macs(lan: &Lan) -> BTreeSet<String> {
    let c = lan.host("c");
    let out =
        c.ns.output(&["arping", "-c", "3", "-w", "3", "-i", "eth0", VIP])
            .expect("arping");
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    [&lan.host("a").mac, &lan.host("b").mac]
        .into_iter()
        .filter(|m| text.contains(&m.to_lowercase()))
        .cloned()
        .collect()
}

/// a (priority 200) active and b (100) standby, elected at the tests' interval.
fn elected_pair(lan: &Lan) -> (Agent, Agent) {
    let a = start_elected(lan, "a", &["a", "b"], 200, "");
    let b = start_elected(lan, "b", &["a", "b"], 100, "");
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    (a, b)
}

/// Gratuitous ARPs for `ip` (sender IP = target IP) on the wire, by sender MAC.
fn garp_senders(frames: &[Vec<u8>], ip: Ipv4Addr) -> BTreeSet<String> {
    frames
        .iter()
        .filter(|f| {
            f.len() >= 42
                && f[12..14] == [8, 6]
                && f[28..32] == ip.octets()
                && f[38..42] == ip.octets()
        })
        .map(|f| vip::mac::Mac(f[22..28].try_into().unwrap()).to_string())
        .collect()
}

/// Defect: a peer restarted with its wall clock an hour back was locked out as a
/// replay (its sequence came from the clock), and both nodes stayed active.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_peer_restarted_with_its_clock_back_is_heard() {
    privileged();
    let lan = servers_lan();
    let key = std::env::temp_dir().join(format!("vip-key-{}", std::process::id()));
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let extra = format!("auth_key_file = \"{}\"", key.display());
    let cfg = |me: &str, prio: u8| elected(&lan, me, &["a", "b"], prio, "", &extra);
    let a = Agent::start(&lan.host("a").ns, "a", &cfg("a", 150)).unwrap();
    let mut b = Agent::start(&lan.host("b").ns, "b", &cfg("b", 200)).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["standby", "active"]);
    b.stop();
    expect_states(&[("a", &a)], &["active"]);
    drop(b);
    // A wall-clock step (as NTP makes one): the monotonic clock, which the lease
    // uses with the kernel, is not stepped.
    // libfaketime is preloaded through `env` (which execs), not the `faketime`
    // wrapper (which forks: the lab could not stop the agent by its PID).
    let preload = format!(
        "LD_PRELOAD={}",
        lab::libfaketime().expect("libfaketime").display()
    );
    let b = Agent::start_wrapped(
        &lan.host("b").ns,
        "b",
        &cfg("b", 200),
        &[
            "env",
            &preload,
            "FAKETIME=-1h",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
        ],
        &[],
    )
    .expect("starting b under libfaketime");
    // Its log's timestamps (UTC, wall clock) say an hour earlier than ours.
    let now_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
        % 24;
    let log = b.log_text();
    let hour = log
        .find('T')
        .and_then(|k| log.get(k + 1..k + 3))
        .and_then(|h| h.parse::<u64>().ok());
    assert_eq!(
        hour,
        Some((now_hour + 23) % 24),
        "b's clock is not an hour back:\n{log}"
    );
    expect_states(&[("a", &a), ("b", &b)], &["standby", "active"]);
    // And it stays so: a hears b, neither changes state (a takeover that heals within
    // the period still counts), one MAC answers.
    let pair = [("a", &a), ("b", &b)];
    let before = transitions(&pair);
    std::thread::sleep(Duration::from_millis(300)); // time for a wrong takeover to show
    assert_no_transitions(&pair, &before, "a peer with its clock back");
    assert_eq!((state(&a), state(&b)), ("standby".into(), "active".into()));
    assert_eq!(
        arping_macs(&lan),
        [lan.host("b").mac.clone()].into(),
        "only b may answer"
    );
    let replays = a.status().unwrap()["groups"][0]["election"]["replays"]
        .as_u64()
        .unwrap();
    assert_eq!(replays, 0, "a refused b's adverts as replays");
    let _ = std::fs::remove_file(&key);
    drop((a, b));
    teardown(lan);
}

/// Defect: with no bpffs (unpinned), a SIGKILLed active left its VIP address on its
/// interface, and its kernel kept answering ARP next to the new active.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_killed_unpinned_active_leaves_only_the_new_active_answering() {
    privileged();
    let lan = servers_lan();
    let (a, b) = elected_pair(&lan);
    assert!(
        a.status().unwrap()["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap_or("").contains("not pinned")),
        "this test needs an unpinned data plane"
    );
    // The VIP lives on lo, where the kernel does not announce it.
    let lo = lan.host("a").ns.vips_on_lo();
    assert!(lo.contains(&VIP4.into()), "{lo:?}");
    let eth = lan
        .host("a")
        .ns
        .ip(&["-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(!eth.contains("10.0.0.50"), "{eth}");
    // Local delivery from the VIP still works.
    assert!(ping(&lan.host("c").ns, VIP));

    a.proc.signal(Signal::SIGKILL).unwrap();
    expect_states(&[("b", &b)], &["active"]);
    // And b stays so while the client asks.
    let b_only = [("b", &b)];
    let taken = transitions(&b_only);
    // The dead agent's address is still on a's lo: its kernel must stay silent.
    let lo = lan.host("a").ns.vips_on_lo();
    assert!(lo.contains(&VIP4.into()), "{lo:?}");
    for _ in 0..2 {
        assert_eq!(
            arping_macs(&lan),
            [lan.host("b").mac.clone()].into(),
            "only the new active may answer"
        );
    }
    assert_no_transitions(&b_only, &taken, "the new active");
    drop((a, b));
    teardown(lan);
}

/// Defect: two agents started at once both went active (the worse one first) and
/// both sent gratuitous ARP.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn two_nodes_started_at_once_only_one_ever_announces() {
    privileged();
    for round in 0..3 {
        let lan = servers_lan();
        let cap = Capture::open(&lan.host("c").ns, "eth0").unwrap();
        cap.clear();
        // At the default interval (100 ms), as a user starts them: the detection time
        // (~330 ms) is what a starting node listens for; the processes themselves may
        // be ready tens of milliseconds apart.
        let cfg = |me: &str, prio: u8| {
            elected(&lan, me, &["a", "b"], prio, "", "")
                .replace(&format!("advert_interval_ms = {INTERVAL}\n"), "")
        };
        let (a, b) = std::thread::scope(|s| {
            let ta = s.spawn(|| Agent::start(&lan.host("a").ns, "a", &cfg("a", 200)).unwrap());
            let tb = s.spawn(|| Agent::start(&lan.host("b").ns, "b", &cfg("b", 100)).unwrap());
            (ta.join().unwrap(), tb.join().unwrap())
        });
        expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
        let frames = cap.collect(Duration::from_millis(500), |_| true);
        let senders = garp_senders(&frames, VIP4);
        assert_eq!(
            senders,
            [lan.host("a").mac.clone()].into(),
            "round {round}: gratuitous ARP from {senders:?}"
        );
        assert_eq!(
            b.status().unwrap()["groups"][0]["transitions"],
            1,
            "b went active"
        );
        drop((a, b, cap));
        teardown(lan);
    }
}

/// Defect: after `vip demote` on the active, the standby said it took over because
/// the active was silent; it took over because the active released.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn the_reason_after_a_release_says_so() {
    privileged();
    let lan = servers_lan();
    let (a, b) = elected_pair(&lan);
    let out = a.cli(&["demote", "web"]).unwrap();
    assert!(out.status.success());
    expect_states(&[("a", &a), ("b", &b)], &["standby", "active"]);
    let g = &b.status().unwrap()["groups"][0];
    assert_eq!(g["reason_kind"], "release", "{g}");
    assert!(g["reason"].as_str().unwrap().contains("released"), "{g}");
    assert_eq!(g["last_transition"]["to"], "active", "{g}");
    assert_eq!(g["transition_reasons"]["active/release"], 1, "{g}");
    let a_g = &a.status().unwrap()["groups"][0];
    assert_eq!(a_g["reason_kind"], "handover", "{a_g}");
    drop((a, b));
    teardown(lan);
}

/// A reload whose apply step fails rolls back: the groups and VIPs are as before.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_reload_that_fails_while_applying_rolls_back() {
    privileged();
    let lan = servers_lan();
    let before = "[node]\nname = \"a\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"10.0.0.50/24\"]\nrole = \"active\"\n";
    let a = Agent::start_wrapped(
        &lan.host("a").ns,
        "a",
        before,
        &["env", "VIP_FAILPOINTS=reload-apply"],
        &[],
    )
    .unwrap();
    let status_before = a.status().unwrap();
    // Adds a group and changes one: the failure comes after the first change.
    let after = format!(
        "{}\n[[group]]\nname = \"api\"\nvips = [\"10.0.0.60/24\"]\nrole = \"active\"\n",
        std::fs::read_to_string(&a.config)
            .unwrap()
            .replace("10.0.0.50/24\"]", "10.0.0.50/24\", \"10.0.0.51/24\"]")
    );
    std::fs::write(&a.config, after).unwrap();
    let out = a.cli(&["reload"]).unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("rolled back"), "{text}");
    let s = a.status().unwrap();
    assert_eq!(s["groups"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["groups"][0]["vips"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["groups"][0]["state"], status_before["groups"][0]["state"]);
    let lo = lan.host("a").ns.vips_on_lo();
    let has = |a: &str| lo.contains(&a.parse().unwrap());
    assert!(
        has("10.0.0.50") && !has("10.0.0.60") && !has("10.0.0.51"),
        "{lo:?}"
    );
    assert!(ping(&lan.host("c").ns, VIP));
    drop(a);
    teardown(lan);
}

/// One ARP request for the VIP every 5 ms from the client, for `span`; for each, the
/// MACs that answered it before the next request left (what the client got).
fn ask_arp(lan: &Lan, span: Duration, during: impl FnOnce() + Send) -> Vec<BTreeSet<String>> {
    let c = lan.host("c");
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    cap.clear();
    let req = lab::frames::arp_request(mac(&c.mac), c.ip4, VIP4);
    std::thread::scope(|s| {
        s.spawn(during);
        let end = std::time::Instant::now() + span;
        let mut answers = Vec::new();
        while std::time::Instant::now() < end {
            cap.send(&req).unwrap();
            let got = cap.collect(Duration::from_millis(5), |_| true);
            answers.push(
                arp_replies_for(&got, VIP4)
                    .into_iter()
                    .map(|m| m.to_string())
                    .collect(),
            );
        }
        answers
    })
}

fn answered_twice(answers: &[BTreeSet<String>]) -> usize {
    answers.iter().filter(|a| a.len() > 1).count()
}

/// Defect: an agent stopped past its lease (SIGSTOP) woke up, renewed the lease that
/// had run out and answered ARP beside the node that had taken over meanwhile, until
/// the election sorted it out (15-74 requests answered by two MACs per event).
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_node_stopped_past_its_lease_never_answers_beside_the_new_active() {
    privileged();
    let lan = servers_lan();
    let (a, b) = elected_pair(&lan);
    let lease_ms = 3 * INTERVAL;
    let answers = ask_arp(&lan, Duration::from_millis(1500), || {
        std::thread::sleep(Duration::from_millis(200));
        a.proc.signal(Signal::SIGSTOP).unwrap();
        // Deliberate: the stop is the fault, 10 leases long.
        std::thread::sleep(Duration::from_millis(10 * lease_ms));
        a.proc.signal(Signal::SIGCONT).unwrap();
    });
    let both = answered_twice(&answers);
    assert_eq!(
        both,
        0,
        "{both} of {} requests answered by two MACs",
        answers.len()
    );
    // The woken node said why it stopped answering, and counted it.
    let ok = lab::wait_for(Duration::from_secs(3), || {
        a.log_text().contains("lease expired").then_some(())
    });
    assert!(ok.is_some(), "{}", a.log_text());
    assert!(a.log_text().contains("stalled for"), "{}", a.log_text());
    assert_eq!(
        a.status().unwrap()["groups"][0]["election"]["leases_lost"],
        1
    );
    // a (200) is the better node: it claims the VIPs back, without overlap; in the
    // end exactly one MAC answers.
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    assert_eq!(arping_macs(&lan), [lan.host("a").mac.clone()].into());
    drop((a, b));
    teardown(lan);
}

/// Defect: a preempting node answered ARP before the old active had stopped (up to 2
/// requests answered by both per preemption). Now the old active stops answering,
/// releases, and only then does the claimant take over.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_preemption_never_has_two_nodes_answering() {
    privileged();
    let lan = servers_lan();
    let (a, b) = elected_pair(&lan);
    let mut answers = Vec::new();
    for _ in 0..5 {
        // a steps back, b serves; then a resumes and preempts b.
        answers.extend(ask_arp(&lan, Duration::from_millis(600), || {
            assert!(a.cli(&["demote", "web"]).unwrap().status.success());
            // Deliberate: b holds the VIP a while before the preemption.
            std::thread::sleep(Duration::from_millis(250));
            assert!(a.cli(&["resume", "web"]).unwrap().status.success());
        }));
        expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    }
    let both = answered_twice(&answers);
    assert_eq!(
        both,
        0,
        "{both} of {} requests answered by two MACs",
        answers.len()
    );
    // How long each handover left the VIP unanswered is the benchmarks' business
    // (`cargo xtask bench chaos`); on a loaded machine a starved agent also loses its
    // lease now and then, which is a failover of its own. Shown, not asserted.
    let unanswered = answers.iter().filter(|a| a.is_empty()).count();
    eprintln!(
        "10 handovers: {unanswered} of {} requests unanswered",
        answers.len()
    );
    let reason = a.status().unwrap()["groups"][0]["reason_kind"].clone();
    assert_eq!(reason, "preempt");
    drop((a, b));
    teardown(lan);
}
