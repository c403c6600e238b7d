//! A group with a virtual MAC (`mac = "..."`): clients' neighbour entries name the
//! group's MAC, not a node's, so a failover moves the switch's entry for that MAC
//! instead of every client's entry for every VIP. Judged from the wire and the
//! client: the client's kernel resolves the VIPs (IPv4 and IPv6) to the virtual MAC
//! and still does after the failover, with the new active serving; on the switch's
//! ports, only the active ever sends from the virtual MAC; a frame flooded to it
//! (the switch forgot where it is) is served once, by the active, never by the
//! standby; and the standby's echo probes still find the active's data plane (no
//! takeover while it serves). Exactly one owner with the MAC shared: every ARP
//! request is answered from one switch port only, through an active stopped past its
//! lease, its preemptions back and two nodes started at once. A planned handover of
//! a big group whose addresses come at the takeover: the client's probes of its last
//! VIP are answered throughout.

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use common::*;
use lab::{privileged, Agent, Capture, Netns, Prober, Responder};
use nix::sys::signal::Signal;

const VMAC: [u8; 6] = [0x02, 0x76, 0x69, 0x70, 0x00, 0x01];
const VMAC_STR: &str = "02:76:69:70:00:01";
const VIP6: &str = "2001:db8::50";

fn config(lan: &lab::Lan, me: &str, priority: u8) -> String {
    elected(
        lan,
        me,
        &["a", "b"],
        priority,
        "",
        &format!("mac = \"{VMAC_STR}\"\naddresses = \"resident\""),
    )
    .replacen(
        "vips = [\"10.0.0.50/24\"]",
        &format!("vips = [\"10.0.0.50/24\", \"{VIP6}/64\"]"),
        1,
    )
}

/// The MAC `cn`'s kernel resolved `vip` to (`ip neigh`), if any.
fn resolved(cn: &Netns, vip: &str) -> Option<String> {
    let out = cn.ip(&["neigh", "show", vip, "dev", "eth0"]).ok()?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "lladdr")?;
    words.get(i + 1).map(|s| s.to_string())
}

/// Frames a switch port received (its host sent) from the virtual MAC, so far.
fn from_vmac(port: &Capture) -> usize {
    port.collect(Duration::from_millis(50), |f| {
        f.len() >= 12 && f[6..12] == VMAC
    })
    .len()
}

fn open_port(lan: &lab::Lan, name: &str) -> Capture {
    let c = Capture::open(&lan.switch, &lan.host(name).port).expect("capture on the switch");
    c.receive_buffer(64 << 20).expect("a big receive buffer");
    c
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_virtual_mac_moves_with_the_group_and_only_the_active_sends_from_it() {
    privileged();
    let lan = lan();
    let (an, bn, cn) = (&lan.host("a").ns, &lan.host("b").ns, &lan.host("c").ns);
    let (pa, pb) = (open_port(&lan, "a"), open_port(&lan, "b"));
    let a = Agent::start(an, "a", &config(&lan, "a", 200)).unwrap();
    let b = Agent::start(bn, "b", &config(&lan, "b", 100)).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    let text = String::from_utf8_lossy(&a.cli(&["status"]).unwrap().stdout).into_owned();
    assert!(
        text.contains(&format!("virtual MAC: {VMAC_STR}")),
        "a's status names the virtual MAC: {text}"
    );
    assert_eq!(a.status().unwrap()["groups"][0]["virtual_mac"], VMAC_STR);

    let v4: SocketAddr = (VIP4, 7007).into();
    let v6: SocketAddr = (VIP6.parse::<IpAddr>().unwrap(), 7007).into();
    let _r = [
        Responder::start(an, v4, "a").unwrap(),
        Responder::start(bn, v4, "b").unwrap(),
        Responder::start(an, v6, "a").unwrap(),
        Responder::start(bn, v6, "b").unwrap(),
    ];
    let p4 = Prober::start(cn, v4, Duration::from_millis(1)).unwrap();
    let p6 = Prober::start(cn, v6, Duration::from_millis(1)).unwrap();
    for (p, to) in [(&p4, v4), (&p6, v6)] {
        assert!(
            p.wait_answers("a", 100, Duration::from_secs(3)),
            "a never answered {to}: {:?} {}",
            resolved(cn, VIP),
            a.status().unwrap()
        );
    }
    // The client's kernel resolved both VIPs to the group's MAC (a's data plane
    // answered its ARP and NS with it).
    for vip in [VIP, VIP6] {
        assert_eq!(
            resolved(cn, vip).as_deref(),
            Some(VMAC_STR),
            "{vip} resolved"
        );
    }
    // b's echo probes go to a's own MAC: they must find a's data plane serving, or
    // b would take over from a healthy active.
    let before = transitions(&[("a", &a), ("b", &b)]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        transitions(&[("a", &a), ("b", &b)]),
        before,
        "no takeover while a serves"
    );
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);

    // A switch that forgot the MAC floods its frames to every port: a serves them,
    // the standby (which holds the addresses too, resident) takes none.
    let b_before = p4.answers_from("b") + p6.answers_from("b");
    let a_before = p4.answers_from("a") + p6.answers_from("a");
    lan.switch
        .ip(&["link", "set", "br0", "type", "bridge", "ageing_time", "0"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lan.switch
        .ip(&[
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "ageing_time",
            "30000",
        ])
        .unwrap();
    assert_eq!(
        p4.answers_from("b") + p6.answers_from("b"),
        b_before,
        "the standby answered frames flooded to the virtual MAC"
    );
    assert!(
        p4.answers_from("a") + p6.answers_from("a") > a_before + 500,
        "a did not serve the flooded frames"
    );

    // Only the active sent from the virtual MAC.
    assert!(from_vmac(&pa) > 0, "a never sent from the virtual MAC");
    assert_eq!(from_vmac(&pb), 0, "the standby sent from the virtual MAC");

    // a fails: b serves both VIPs, and the client's entries still name the group's
    // MAC (the switch moved, not the clients).
    an.ip(&["link", "set", "eth0", "down"]).unwrap();
    for (p, to) in [(&p4, v4), (&p6, v6)] {
        assert!(
            p.wait_answers("b", 100, Duration::from_secs(3)),
            "b never answered {to}"
        );
    }
    for vip in [VIP, VIP6] {
        assert_eq!(
            resolved(cn, vip).as_deref(),
            Some(VMAC_STR),
            "{vip} after the failover"
        );
    }
    assert!(from_vmac(&pb) > 0, "b never sent from the virtual MAC");
    for (p, name) in [(p4, "IPv4"), (p6, "IPv6")] {
        let o = lab::outage(&p.finish(), "a", "b").expect("the client never moved to b");
        eprintln!("virtual MAC, {name}: {o:?}");
    }
    drop((a, b));
    teardown(lan);
}

/// One ARP request for the VIP every 5 ms from the client, for `span`, while `during`
/// runs; for each, the switch ports (a, b) an answer came in on before the next
/// request left. Every answer names the virtual MAC, so only the port tells who
/// answered: two ports answering one request is two owners on the wire.
fn ports_answering(
    lan: &lab::Lan,
    ports: &[(&'static str, &Capture)],
    span: Duration,
    during: impl FnOnce() + Send,
) -> Vec<BTreeSet<&'static str>> {
    let c = lan.host("c");
    let client = Capture::open(&c.ns, "eth0").unwrap();
    let req = lab::frames::arp_request(mac(&c.mac), c.ip4, VIP4);
    for (_, p) in ports {
        p.clear();
    }
    std::thread::scope(|s| {
        s.spawn(during);
        let end = Instant::now() + span;
        let mut answers = Vec::new();
        while Instant::now() < end {
            client.send(&req).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            let mut who = BTreeSet::new();
            for (name, p) in ports {
                if !arp_replies_for(&p.collect(Duration::from_millis(1), |_| true), VIP4).is_empty()
                {
                    who.insert(*name);
                }
            }
            answers.push(who);
        }
        answers
    })
}

/// What the client's requests got: how many were answered by both ports, and by none.
fn tally(answers: &[BTreeSet<&str>]) -> (usize, usize) {
    (
        answers.iter().filter(|a| a.len() > 1).count(),
        answers.iter().filter(|a| a.is_empty()).count(),
    )
}

/// Defect class: with the MAC shared, a woken or preempted old active answering
/// beside the new one would not show as two MACs in the client's replies, and each
/// of its frames would pull the switch's entry for the MAC back to it. a (200) is
/// stopped (SIGSTOP) for 10 leases, wakes up and takes the group back; then it
/// steps back and preempts b three times. Judged on the switch's ports.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn with_a_virtual_mac_a_woken_or_preempting_node_never_answers_beside_the_active() {
    privileged();
    let lan = lan();
    let (pa, pb) = (open_port(&lan, "a"), open_port(&lan, "b"));
    let ports = [("a", &pa), ("b", &pb)];
    let a = Agent::start(&lan.host("a").ns, "a", &config(&lan, "a", 200)).unwrap();
    let b = Agent::start(&lan.host("b").ns, "b", &config(&lan, "b", 100)).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    let lease_ms = 3 * INTERVAL;
    let mut answers = ports_answering(&lan, &ports, Duration::from_millis(1500), || {
        std::thread::sleep(Duration::from_millis(200));
        a.proc.signal(Signal::SIGSTOP).unwrap();
        // Deliberate: the stop is the fault, 10 leases long.
        std::thread::sleep(Duration::from_millis(10 * lease_ms));
        a.proc.signal(Signal::SIGCONT).unwrap();
    });
    // b served while a was stopped.
    assert!(
        answers.iter().any(|w| w.len() == 1 && w.contains("b")),
        "b never answered while a was stopped"
    );
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    for _ in 0..3 {
        answers.extend(ports_answering(
            &lan,
            &ports,
            Duration::from_millis(600),
            || {
                assert!(a.cli(&["demote", "web"]).unwrap().status.success());
                // Deliberate: b holds the group a while before the preemption.
                std::thread::sleep(Duration::from_millis(250));
                assert!(a.cli(&["resume", "web"]).unwrap().status.success());
            },
        ));
        expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    }
    let (both, none) = tally(&answers);
    eprintln!(
        "virtual MAC, a stop and 6 handovers: {both} of {} requests answered from both ports, {none} unanswered",
        answers.len()
    );
    assert_eq!(
        both,
        0,
        "{both} of {} requests answered from both ports",
        answers.len()
    );
    // In the end a alone answers, and b no longer sends from the MAC.
    let last = ports_answering(&lan, &ports, Duration::from_millis(200), || {});
    assert!(
        last.iter().all(|w| w.iter().eq(["a"].iter())),
        "after the handovers: {last:?}"
    );
    assert_eq!(from_vmac(&pb), 0, "the standby sent from the virtual MAC");
    drop((a, b));
    teardown(lan);
}

/// Two nodes of a group with a virtual MAC started at once: only the better one ever
/// sends from the MAC (the switch's entry never visits the other), and the other
/// never goes active. At the default interval, as a user starts them.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn with_a_virtual_mac_two_nodes_started_at_once_only_one_sends_from_it() {
    privileged();
    for round in 0..3 {
        let lan = lan();
        let (pa, pb) = (open_port(&lan, "a"), open_port(&lan, "b"));
        let cfg = |me: &str, prio: u8| {
            config(&lan, me, prio).replace(&format!("advert_interval_ms = {INTERVAL}\n"), "")
        };
        let (a, b) = std::thread::scope(|s| {
            let ta = s.spawn(|| Agent::start(&lan.host("a").ns, "a", &cfg("a", 200)).unwrap());
            let tb = s.spawn(|| Agent::start(&lan.host("b").ns, "b", &cfg("b", 100)).unwrap());
            (ta.join().unwrap(), tb.join().unwrap())
        });
        expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            from_vmac(&pa) > 0,
            "round {round}: a never sent from the MAC"
        );
        assert_eq!(
            from_vmac(&pb),
            0,
            "round {round}: b sent from the virtual MAC"
        );
        assert_eq!(
            b.status().unwrap()["groups"][0]["transitions"],
            1,
            "round {round}: b went active"
        );
        drop((a, b, pa, pb));
        teardown(lan);
    }
}

/// The group's MAC in a's unicast filter (`bridge fdb show dev eth0`: self permanent).
fn in_unicast_filter(ns: &Netns) -> bool {
    ns.output(&["bridge", "fdb", "show", "dev", "eth0"])
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(VMAC_STR))
        .unwrap_or(false)
}

/// The group's MAC is in the interface's unicast filter while the agent runs and is
/// gone after a stop; an agent killed (SIGKILL) cannot remove it, and `vip agent
/// --cleanup` does, and says so.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn the_virtual_mac_leaves_the_unicast_filter_on_stop_and_on_cleanup() {
    privileged();
    let lan = lan();
    let an = &lan.host("a").ns;
    let cfg = format!(
        "[node]\nname = \"a\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"10.0.0.50/24\"]\nrole = \"active\"\nmac = \"{VMAC_STR}\"\n"
    );
    let mut a = Agent::start(an, "a", &cfg).unwrap();
    assert!(in_unicast_filter(an), "the MAC is not in eth0's filter");
    assert!(a.stop().is_some_and(|s| s.success()));
    assert!(!in_unicast_filter(an), "a stopped agent left the MAC");
    drop(a);

    let mut a = Agent::start(an, "a", &cfg).unwrap();
    a.proc.signal(Signal::SIGKILL).unwrap();
    lab::wait_for(Duration::from_secs(5), || a.proc.try_status()).expect("a's exit");
    assert!(
        in_unicast_filter(an),
        "nothing left to clean up: the test proves nothing"
    );
    let out = an
        .output(&[
            lab::vip_bin().to_str().unwrap(),
            "agent",
            "--cleanup",
            "--config",
            a.config.to_str().unwrap(),
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("virtual MAC {VMAC_STR}")),
        "--cleanup said: {text}"
    );
    assert!(!in_unicast_filter(an), "--cleanup left the MAC");
    drop(a);
    teardown(lan);
}

/// A planned handover (`vip demote`) of a group with a virtual MAC whose VIPs are
/// added at the takeover (the default `addresses`): the new active's first frame
/// brings every VIP's traffic at once, and the old active, stepping down on the new
/// one's next advert, forwards the rest to it. So the new active's stack must accept
/// every VIP before that frame: the first announcement waits for every address
/// (the address worker adds them while the entries are written). 600 VIPs, each its
/// own local route (every other address: no run to cover), so the routes take some
/// ms; the client probes the last one every millisecond. Judged at the client: at
/// most 3 probes lost (the build before lost 7 in a row, every run; 10,000 VIPs in
/// runs lost 7-12 of the last one's in the bench).
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_planned_handover_with_a_virtual_mac_keeps_a_big_groups_last_vip_answered() {
    privileged();
    let lan = lan();
    let (an, bn, cn) = (&lan.host("a").ns, &lan.host("b").ns, &lan.host("c").ns);
    for (ns, last) in [(an, 1), (bn, 2), (cn, 3)] {
        ns.ip(&["addr", "add", &format!("10.9.0.{last}/16"), "dev", "eth0"])
            .unwrap();
    }
    let vips: Vec<String> = (0..600)
        .map(|i| format!("10.9.{}.{}", 1 + i / 100, 1 + 2 * (i % 100)))
        .collect();
    let list: Vec<String> = vips.iter().map(|v| format!("\"{v}/16\"")).collect();
    // At the default advert interval, as the bench: 20 ms adverts and their 60 ms
    // lease are the lab's stress setting, not this test's subject.
    let config = |me: &str, priority: u8| {
        elected(
            &lan,
            me,
            &["a", "b"],
            priority,
            "",
            &format!("mac = \"{VMAC_STR}\""),
        )
        .replacen(&format!("advert_interval_ms = {INTERVAL}\n"), "", 1)
        .replacen(
            "vips = [\"10.0.0.50/24\"]",
            &format!("vips = [{}]", list.join(", ")),
            1,
        )
    };
    let mut a = Agent::start(an, "a", &config("a", 200)).unwrap();
    let mut b = Agent::start(bn, "b", &config("b", 100)).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    let last: SocketAddr = (vips[599].parse::<IpAddr>().unwrap(), 7007).into();
    let _r = [
        Responder::start(an, last, "a").unwrap(),
        Responder::start(bn, last, "b").unwrap(),
    ];
    let prober = Prober::start(cn, last, Duration::from_millis(1)).unwrap();
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(5)),
        "a never answered {last}"
    );
    let out = a.cli(&["demote", "web"]).unwrap();
    assert!(
        out.status.success(),
        "vip demote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        prober.wait_answers("b", 200, Duration::from_secs(5)),
        "b never answered {last}"
    );
    let probes = prober.finish();
    let lost: Vec<u64> = probes
        .iter()
        .filter(|p| p.answered_by.is_none())
        .map(|p| p.seq)
        .collect();
    let by_b = probes
        .iter()
        .filter(|p| p.answered_by.as_deref() == Some("b"))
        .count();
    eprintln!(
        "planned handover of 600 VIPs with a virtual MAC: {} probes, {by_b} answered by b, lost {lost:?}",
        probes.len()
    );
    // Before the first announcement waited for every route, 7 or more in a row were
    // lost here; 1 or 2 are still lost in about one run in fifteen, at the
    // handover itself (not understood yet).
    assert!(lost.len() <= 3, "probes to {last} lost: {lost:?}");
    assert!(b.stop().unwrap().success());
    assert!(a.stop().unwrap().success());
    drop((a, b));
    teardown(lan);
}
