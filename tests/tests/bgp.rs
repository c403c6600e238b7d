//! VIPs announced over BGP (`announce = "bgp"`), end to end: two nodes run the agent,
//! whose own BIRD peers with a router running FRR (a different implementation, as in
//! the field) with BFD at 10 ms x 3; a client behind the router reaches the VIP, which
//! is on no subnet of the lab, only through the route the active announces.
//!
//! Judged from outside the agents: the router's kernel FIB (what forwards the
//! client's packets), FRR's view of the sessions, and the client's UDP probes (which
//! node answered each). The rules under test:
//! * only the active announces; a node whose link dies leaves the router's FIB within
//!   BFD's detection time, and the standby's route takes over;
//! * a planned handover (`vip demote`) loses no probe: the successor announces
//!   before the old active withdraws, and the old active forwards meanwhile;
//! * a route never outlives the data plane that serves it: an agent stopped
//!   (SIGSTOP) or killed (SIGKILL) past its lease has its routes withdrawn by the
//!   speaker's guard, while its BIRD and its session stay up;
//! * a node whose speaker dies gives the VIP up (`track_bgp`), so the standby, which
//!   can announce, takes it;
//! * a speaker without the session's TCP-MD5 key is never heard by the router.
//!
//! Documentation ranges only, inside the test's own namespaces.

mod common;

use std::time::{Duration, Instant};

use lab::{
    privileged,
    routed::{Options, Routed},
    wait_for, Agent, Bpffs, Prober,
};

fn routed() -> Routed {
    Routed::start(&Options::default()).expect("the routed lab")
}

/// The first group's state in `a`'s status.
fn state(a: &Agent) -> String {
    common::state(a)
}

/// The active announces (status says to whom, Established, BFD up), the standby does
/// not; the active's link goes down and the router drops its next hop within BFD's
/// time (it would keep it for the 3 s hold time without BFD), and the client is
/// answered by the new active.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn the_active_alone_announces_and_a_dead_link_leaves_the_router_within_bfd_time() {
    privileged();
    let lab = routed();
    // Status: what is announced, to whom, in what state.
    let st = lab.agent("a").status().expect("status");
    let g = &st["groups"][0];
    assert_eq!(g["announce"], "bgp");
    assert_eq!(g["routes"]["announced"], true, "{g}");
    let s = &st["bgp"]["sessions"][0];
    assert_eq!(s["neighbor"], lab.lan.host("r").ip4.to_string(), "{st}");
    assert_eq!(s["established"], true, "{st}");
    assert_eq!(s["bfd"], "up", "{st}");
    let text = String::from_utf8_lossy(&lab.agent("a").cli(&["status"]).expect("status").stdout)
        .into_owned();
    assert!(
        text.contains("BGP: announced") && text.contains("(Established, BFD up"),
        "{text}"
    );
    let sb = lab.agent("b").status().expect("status");
    assert_eq!(sb["groups"][0]["routes"]["announced"], false, "{sb}");

    // The IPv6 VIP, over the same IPv4 session.
    let v6 = lab
        .probe_to(lab::routed::VIP6.into(), true)
        .expect("the client reaches the IPv6 VIP through the router");
    drop(v6);
    let prober = lab.probe(true).expect("probing");
    let down = Instant::now();
    lab.lan
        .host("a")
        .ns
        .ip(&["link", "set", "eth0", "down"])
        .expect("link down");
    // BFD (30 ms) and the router's FIB update; without BFD this takes the hold time.
    let b = lab.node_ip("b");
    let gone = lab.gone_after("a", down, Duration::from_secs(2));
    assert!(
        prober.wait_answers("b", 20, Duration::from_secs(5)),
        "the new active answers through the router\n{}",
        lab.log("b")
    );
    let probes = prober.finish();
    let gone = gone.expect("the dead node's route left the router's FIB");
    assert!(
        gone < Duration::from_millis(500),
        "the router kept the dead node's route for {gone:?} (BFD at 10 ms x 3 sees it in 30 ms)"
    );
    assert_eq!(lab.hops(), vec![b]);
    // a's link comes back; a (priority 150, preempting) takes the VIPs back, and its
    // IPv6 VIP is announced again (its interface kept its IPv6 address).
    lab.lan
        .host("a")
        .ns
        .ip(&["link", "set", "eth0", "up"])
        .expect("link up");
    let r6 = lab.lan.host("r").ip6.to_string();
    let _ = lab
        .lan
        .host("a")
        .ns
        .ip(&["-6", "route", "replace", "default", "via", &r6]);
    let _ = lab.lan.host("a").ns.ip(&[
        "route",
        "replace",
        "default",
        "via",
        &lab.lan.host("r").ip4.to_string(),
    ]);
    lab.wait_routed(&["a"], "a took the VIPs back").unwrap();
    assert!(
        lab.probe_to(lab::routed::VIP6.into(), true).is_ok(),
        "a's IPv6 VIP is not reached after its link flapped\n{}",
        lab.log("a")
    );
    let o = lab::outage(&probes, "a", "b").expect("a failover a -> b");
    eprintln!(
        "link down over BGP: route gone from the router's FIB after {gone:?}; client outage {:?} ({} lost)",
        o.outage, o.lost
    );
    assert!(
        o.outage < Duration::from_millis(1000),
        "outage {:?}",
        o.outage
    );
}

/// `vip demote` on the active: the standby announces, the old active forwards what
/// still reaches it and withdraws only at the end of its drain; no probe is lost.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn a_planned_handover_over_bgp_loses_no_probe() {
    privileged();
    let lab = routed();
    let prober = lab.probe(true).expect("probing");
    let out = lab.agent("a").cli(&["demote", "web"]).expect("demote");
    assert!(out.status.success(), "{out:?}");
    // The router's FIB through the handover: never empty; both nodes for the drain
    // (the successor has announced, the old active has not withdrawn: it forwards
    // what still reaches it), then the successor alone. A withdrawal at the handover
    // itself could reach the router before the successor's route does.
    let (a, b) = (lab.node_ip("a"), lab.node_ip("b"));
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let h = lab.hops();
        if seen.last() != Some(&h) {
            seen.push(h.clone());
        }
        if h == [b] {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        !seen.iter().any(|h| h.is_empty()),
        "the router had no route for the VIP during the handover: {seen:?}"
    );
    assert!(
        seen.contains(&vec![a, b]),
        "the old active withdrew before its drain ended: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&vec![b]), "{seen:?}");
    assert!(prober.wait_answers("b", 200, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(100));
    let probes = prober.finish();
    let lost = lab::unanswered(&probes);
    assert_eq!(
        lost,
        0,
        "{lost} of {} probes lost across a planned handover\n{}\n{}",
        probes.len(),
        lab.log("a"),
        lab.log("b")
    );
    assert_eq!(state(lab.agent("a")), "standby");
}

/// An agent that stops renewing (SIGSTOP, then SIGKILL) while its BIRD runs: the
/// guard withdraws its routes before its lease ends, although its BGP session stays
/// Established; the standby takes over and is the only next hop. Without the guard,
/// the router would route to a node whose data plane no longer serves.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn a_stalled_or_killed_agent_has_its_routes_withdrawn_by_the_guard() {
    privileged();
    let mut lab = routed();
    let a_ip = lab.node_ip("a");
    lab.agent("a")
        .proc
        .signal(nix::sys::signal::Signal::SIGSTOP)
        .expect("SIGSTOP");
    let stopped = Instant::now();
    let gone = lab
        .gone_after("a", stopped, Duration::from_secs(3))
        .unwrap_or_else(|| panic!("a stopped agent's route stayed: {:?}", lab.hops()));
    assert!(
        lab.frr.established().contains(&a_ip),
        "the session stayed up: only the guard can have withdrawn the route"
    );
    lab.wait_routed(&["b"], "the standby took over and announces")
        .unwrap();
    eprintln!("SIGSTOP: route withdrawn from the router's FIB after {gone:?}");
    assert!(gone < Duration::from_secs(1), "{gone:?}");
    lab.agent("a")
        .proc
        .signal(nix::sys::signal::Signal::SIGCONT)
        .expect("SIGCONT");
    // It lost its lease, listens, and (higher priority, preempting) takes the VIP back.
    lab.wait_routed(&["a"], "the resumed agent took the VIP back")
        .unwrap();
    // Killed: its data plane goes, its speaker stays, and so would the route.
    lab.agent_mut("a")
        .proc
        .signal(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL");
    let killed = Instant::now();
    let gone = lab
        .gone_after("a", killed, Duration::from_secs(3))
        .unwrap_or_else(|| panic!("a killed agent's route stayed: {:?}", lab.hops()));
    assert!(
        lab.speaker("a").pid("bird.pid").is_some() && lab.frr.established().contains(&a_ip),
        "BIRD outlived the agent, with its session"
    );
    lab.wait_routed(&["b"], "after the kill, only the standby")
        .unwrap();
    eprintln!("SIGKILL: route withdrawn from the router's FIB after {gone:?}");
}

/// The active's BIRD is killed: the node cannot announce any more, so it gives the
/// VIP up (`track_bgp`) and the standby takes it; the guard starts BIRD again.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn a_node_whose_speaker_dies_gives_the_vip_up() {
    privileged();
    let lab = routed();
    let prober = lab.probe(true).expect("probing");
    lab.speaker("a").kill("bird.pid");
    lab.wait_routed(&["b"], "the standby announces once a's speaker is gone")
        .unwrap();
    assert!(
        prober.wait_answers("b", 50, Duration::from_secs(5)),
        "the client is answered by the new active"
    );
    drop(prober);
    let ok = wait_for(Duration::from_secs(10), || {
        (state(lab.agent("a")) == "fault").then_some(())
    });
    let st = lab.agent("a").status().expect("status");
    assert!(
        ok.is_some() || st["groups"][0]["state"] != "active",
        "a still claims the VIP without a speaker: {st}"
    );
    // BIRD is back (the guard restarted it) and the session with it.
    let a_ip = lab.node_ip("a");
    assert!(
        wait_for(Duration::from_secs(15), || lab
            .frr
            .established()
            .contains(&a_ip)
            .then_some(()))
        .is_some(),
        "the guard restarted BIRD\n{}",
        lab.log("a")
    );
}

/// An upgrade (`vip reload`, the pinned data plane adopted by the re-executed binary)
/// withdraws nothing: the router routes to a throughout, a's session never drops, its
/// BIRD is the same process, and no probe is lost. Then SIGTERM: a hands over (the
/// successor announces, a withdraws after its drain) and no probe is lost either.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn an_upgrade_withdraws_nothing_and_a_stop_hands_over_without_loss() {
    privileged();
    let bpffs = Bpffs::mount().expect("bpffs");
    let mut lab = Routed::start(&Options {
        a_node: format!("pin_dir = \"{}/bgp-a\"", bpffs.dir.display()),
        ..Options::default()
    })
    .expect("the routed lab");
    let a_ip = lab.node_ip("a");
    let bird = lab.speaker("a").pid("bird.pid");
    let prober = lab.probe(true).expect("probing");
    let out = lab.agent("a").cli(&["reload"]).expect("reload");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("re-executing"),
        "{text}"
    );
    // Watched from the router until the new image has adopted the data plane.
    let end = Instant::now() + Duration::from_secs(10);
    let mut adopted = false;
    while Instant::now() < end {
        let (h, up) = (lab.hops(), lab.frr.established());
        assert_eq!(h, vec![a_ip], "the router's route moved during the upgrade");
        assert!(up.contains(&a_ip), "a's session dropped during the upgrade");
        if lab
            .agent("a")
            .status()
            .is_ok_and(|s| s["groups"][0]["reason_kind"] == "adopted")
        {
            adopted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(adopted, "not re-executed:\n{}", lab.log("a"));
    assert_eq!(lab.speaker("a").pid("bird.pid"), bird, "BIRD was restarted");
    let st = lab.agent("a").status().expect("status");
    assert_eq!(st["groups"][0]["routes"]["announced"], true, "{st}");
    assert!(prober.wait_answers("a", 100, Duration::from_secs(3)));
    let probes = prober.finish();
    assert_eq!(
        lab::unanswered(&probes),
        0,
        "probes lost across the upgrade"
    );
    // SIGTERM: a planned handover, watched by 8 flows (the router hashes them over
    // both next hops while a drains): none may lose a probe, also after a withdraws.
    let flows: Vec<Prober> = (0..8).map(|_| lab.probe(true).expect("probing")).collect();
    let stopped = lab.agent_mut("a").stop();
    assert!(
        stopped.is_some_and(|s| s.success()),
        "a did not stop cleanly: {stopped:?}"
    );
    lab.wait_routed(&["b"], "after a's stop, b alone").unwrap();
    for f in &flows {
        assert!(f.wait_answers("b", 100, Duration::from_secs(5)));
    }
    let lost: usize = flows
        .into_iter()
        .map(|f| lab::unanswered(&f.finish()))
        .sum();
    assert_eq!(lost, 0, "probes lost across the stop\n{}", lab.log("b"));
    // A clean stop stopped its speaker too.
    assert!(
        wait_for(Duration::from_secs(3), || lab
            .speaker("a")
            .pid("guard.pid")
            .is_none()
            .then_some(()))
        .is_some(),
        "a's guard outlived a clean stop"
    );
}

/// HTTP keep-alive clients behind the router (10 connections, requests in flight
/// most of the time) across `vip demote` (a to b) and `vip resume` (a preempts b): the
/// router spreads the flows over both next hops for the drain; connections of the old
/// active that reach the new one go back to it (GRACE), the old active keeps serving
/// them (KEEP). No failed request, no reset, and the connections open across each
/// handover complete.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn keep_alive_http_clients_lose_no_request_across_planned_handovers() {
    use lab::http::{clients_on, Load, Server, Tally};
    use std::sync::atomic::{AtomicBool, Ordering};
    privileged();
    let lab = routed();
    let to = std::net::SocketAddr::new(lab::routed::VIP.into(), 8080);
    let load = Load::default();
    let _sa = Server::start(&lab.lan.host("a").ns, to, "a", load);
    let _sb = Server::start(&lab.lan.host("b").ns, to, "b", load);
    let cli = |args: &[&str]| {
        let before = Instant::now();
        let out = lab.agent("a").cli(args).expect("vip");
        assert!(out.status.success(), "{out:?}");
        before
    };
    let wait = |want: [&str; 2]| {
        let ok = wait_for(Duration::from_secs(5), || {
            (state(lab.agent("a")) == want[0] && state(lab.agent("b")) == want[1]).then_some(())
        });
        assert!(ok.is_some(), "states: wanted {want:?}");
    };
    let stop = AtomicBool::new(false);
    let (conns, demoted, resumed) = std::thread::scope(|s| {
        let clients = s.spawn(|| clients_on(&[&lab.client], to, load, &stop));
        // A failed step stops the clients too: the test fails, not hangs.
        let _stop = lab::StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(1200));
        let demoted = cli(&["demote", "web"]);
        wait(["standby", "active"]);
        // The drain (1 s) and the router's withdrawal.
        std::thread::sleep(Duration::from_millis(2000));
        let resumed = cli(&["resume", "web"]);
        wait(["active", "standby"]);
        std::thread::sleep(Duration::from_millis(2000));
        stop.store(true, Ordering::Relaxed);
        (clients.join().expect("clients"), demoted, resumed)
    });
    let t = Tally::of(&conns[0], demoted, resumed);
    eprintln!("planned handovers over BGP under HTTP load: {t}");
    for c in conns[0].iter().filter(|c| c.error.is_some()).take(5) {
        eprintln!("  failed: {c:?}");
    }
    t.assert_clean();
}

/// `vip reload` on the active: a VIP added to the group is announced (the router
/// routes it to a), one removed is withdrawn; the group's other route never leaves
/// the router's FIB and the session never drops (a group's change never touches
/// BIRD). BFD's timers change in place (BIRD reconfigures, the session stays up). A
/// `[bgp]` change the running speaker cannot take (its table) is refused, with
/// nothing changed.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn a_reload_announces_added_vips_and_never_drops_the_session() {
    privileged();
    let lab = routed();
    let a_ip = lab.node_ip("a");
    let path = lab.agent("a").config.clone();
    let original = std::fs::read_to_string(&path).expect("a's config");
    let reload = |text: &str| {
        std::fs::write(&path, text).expect("writing a's config");
        lab.agent("a").cli(&["reload"]).expect("vip reload")
    };
    let extra = "203.0.113.81/32";
    let watch = |what: &str, want: &dyn Fn() -> bool| {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            assert_eq!(lab.hops(), vec![a_ip], "{what}: the VIP's route moved");
            assert!(
                lab.frr.established().contains(&a_ip),
                "{what}: a's session dropped"
            );
            if want() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{what}: not seen at the router in 10 s");
    };
    let added = original.replace(
        &format!("vips = [\"{}/32\"", lab::routed::VIP),
        &format!("vips = [\"{extra}\", \"{}/32\"", lab::routed::VIP),
    );
    assert_ne!(added, original);
    let out = reload(&added);
    assert!(out.status.success(), "{out:?}");
    watch("a VIP added", &|| lab.frr.next_hops(extra) == vec![a_ip]);
    // The table cannot move under a running speaker.
    let moved = added.replace("[bgp]\n", "[bgp]\nroute_table = 1700\n");
    let out = reload(&moved);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("restart"), "{text}");
    assert_eq!(
        lab.frr.next_hops(extra),
        vec![a_ip],
        "a refused reload changed nothing"
    );
    // BFD's timers change in place: BIRD reconfigures, the sessions stay up.
    let slower = added.replace("[bgp]\n", "[bgp]\nbfd = { interval_ms = 20 }\n");
    let out = reload(&slower);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("the speaker took the new [bgp] in place"),
        "{out:?}"
    );
    let settle = Instant::now() + Duration::from_secs(1);
    watch("BFD's timers changed", &|| Instant::now() > settle);
    let out = reload(&original);
    assert!(out.status.success(), "{out:?}");
    watch("the VIP removed", &|| lab.frr.next_hops(extra).is_empty());
}

/// TCP-MD5 (`password_file`): a, with the router's key, gets its session and its
/// route into the router's FIB; b, with another key, never gets a session, so its
/// route never reaches the router (a speaker without the key cannot speak for a
/// node: the kernels drop its segments). Then b's key file gets the right key, and a
/// `vip reload` brings its session up in place and its route into the FIB.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn only_a_speaker_with_the_sessions_key_is_heard() {
    privileged();
    const KEY: &str = "lab-md5-key";
    let o = Options {
        frr: lab::FrrOptions {
            password: Some(KEY.into()),
            ..Default::default()
        },
        elected: false,
        group: "role = \"active\"".into(),
        passwords: vec![("a", KEY), ("b", "not-the-key")],
        announcing: Some(vec!["a"]),
        ..Default::default()
    };
    let lab = Routed::start(&o).expect("the routed lab, keyed");
    let (a_ip, b_ip) = (lab.node_ip("a"), lab.node_ip("b"));
    // BIRD retries every second: three tries with the wrong key.
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert!(
            !lab.frr.established().contains(&b_ip),
            "b's session came up with the wrong key"
        );
        assert_eq!(lab.hops(), vec![a_ip], "b's route reached the router");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lab.frr.established().contains(&a_ip), "a's keyed session");
    std::fs::write(lab.speaker("b").key_file(), KEY).expect("b's key file");
    let out = lab.agent("b").cli(&["reload"]).expect("vip reload on b");
    assert!(out.status.success(), "{out:?}");
    lab.wait_routed(&["a", "b"], "b, with the right key after its reload")
        .expect("b's keyed session");
}

/// `vip restart` (the agent exits, its pinned data plane serving, peers and the
/// guard holding) and a new agent started on the same config: the route never leaves
/// the router's FIB, a's session never drops, BIRD is the same process, no probe is
/// lost, and the new agent adopts the routes with the data plane.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn a_restart_withdraws_nothing() {
    privileged();
    let bpffs = Bpffs::mount().expect("bpffs");
    let mut lab = Routed::start(&Options {
        a_node: format!("pin_dir = \"{}/bgp-restart-a\"", bpffs.dir.display()),
        ..Options::default()
    })
    .expect("the routed lab");
    let a_ip = lab.node_ip("a");
    let bird = lab.speaker("a").pid("bird.pid");
    let prober = lab.probe(true).expect("probing");
    let out = lab
        .agent("a")
        .cli(&["restart", "--hold-ms", "3000"])
        .expect("vip restart");
    assert!(out.status.success(), "{out:?}");
    let st = wait_for(Duration::from_secs(5), || {
        lab.agent_mut("a").proc.try_status()
    })
    .expect("the agent did not exit");
    assert!(st.success(), "{}", lab.log("a"));
    // No agent for a while: the route stays (the data plane serves, the guard holds).
    let watch = |lab: &Routed, d: Duration| {
        let end = Instant::now() + d;
        while Instant::now() < end {
            assert_eq!(lab.hops(), vec![a_ip], "the route moved during the restart");
            assert!(lab.frr.established().contains(&a_ip), "a's session dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    watch(&lab, Duration::from_millis(500));
    lab.restart_agent("a").expect("the new agent");
    let adopted = wait_for(Duration::from_secs(5), || {
        lab.agent("a")
            .status()
            .ok()
            .filter(|s| s["groups"][0]["state"] == "active")
    })
    .expect("the new agent never became active");
    assert_eq!(
        adopted["groups"][0]["routes"]["announced"], true,
        "{adopted}"
    );
    watch(&lab, Duration::from_millis(500));
    assert_eq!(lab.speaker("a").pid("bird.pid"), bird, "BIRD was restarted");
    assert!(prober.wait_answers("a", 100, Duration::from_secs(3)));
    let lost = lab::unanswered(&prober.finish());
    assert_eq!(lost, 0, "probes lost across the restart\n{}", lab.log("a"));
}
