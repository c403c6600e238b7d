//! A group of more than 64 VIPs, whose addresses the agent's worker adds and removes
//! in the background (a change of its state does not wait for them), is accepted by
//! the kernel only where it is served. Judged from the kernels and the wire: which
//! stack delivers a VIP locally (`ip route get`), where the addresses are, a client's
//! UDP probes and TCP connection across a failover, and what a killed or stopped
//! agent leaves behind.

mod common;

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    time::Duration,
};

use common::*;
use lab::{privileged, wait_for, Agent, Netns, Responder};

/// 100 IPv4 VIPs in the lab's /24 and 10 IPv6 VIPs in its /64.
fn vips() -> Vec<IpAddr> {
    let v4 = (100..200).map(|i| format!("10.0.0.{i}"));
    let v6 = (1..=10).map(|i| format!("2001:db8::2:{i:x}"));
    v4.chain(v6).map(|a| a.parse().unwrap()).collect()
}

fn config(lan: &lab::Lan, me: &str, priority: u8) -> String {
    let list: Vec<String> = vips()
        .iter()
        .map(|a| match a {
            IpAddr::V4(_) => format!("\"{a}/24\""),
            IpAddr::V6(_) => format!("\"{a}/64\""),
        })
        .collect();
    elected(lan, me, &["a", "b"], priority, "", "").replacen(
        "vips = [\"10.0.0.50/24\"]",
        &format!("vips = [{}]", list.join(", ")),
        1,
    )
}

/// Asserts how `ns` holds the group: every VIP on lo and delivered locally exactly
/// when `serving`, none otherwise (waited for: the worker is asynchronous).
fn assert_holds(ns: &Netns, node: &str, serving: bool) {
    let all = vips();
    let ok = wait_for(Duration::from_secs(5), || {
        let on = ns.addresses_on("lo");
        all.iter().all(|v| on.contains(v) == serving).then_some(())
    });
    let on = ns.addresses_on("lo");
    assert!(
        ok.is_some(),
        "{node}: {} of {} VIPs on lo, wanted {}",
        all.iter().filter(|v| on.contains(v)).count(),
        all.len(),
        if serving { "all" } else { "none" }
    );
    let local: Vec<IpAddr> = all
        .iter()
        .copied()
        .filter(|v| ns.delivers_locally(*v))
        .collect();
    if serving {
        assert_eq!(local.len(), all.len(), "{node}: VIPs delivered locally");
    } else {
        assert!(local.is_empty(), "{node} delivers {local:?} locally");
    }
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_big_group_is_accepted_only_where_it_is_served() {
    privileged();
    let lan = lan();
    let (an, bn, cn) = (&lan.host("a").ns, &lan.host("b").ns, &lan.host("c").ns);
    let mut a = Agent::start(an, "a", &config(&lan, "a", 200)).unwrap();
    let mut b = Agent::start(bn, "b", &config(&lan, "b", 100)).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    assert_holds(an, "a", true);
    assert_holds(bn, "b", false);

    // The client's probes to the last VIP, and TCP to an IPv6 one, across a's link
    // going down.
    let last: SocketAddr = (vips()[99], 7007).into();
    let _ra = Responder::start(an, last, "a").unwrap();
    let _rb = Responder::start(bn, last, "b").unwrap();
    let prober = lab::Prober::start(cn, last, Duration::from_millis(1)).unwrap();
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(3)),
        "a never answered"
    );
    an.ip(&["link", "set", "eth0", "down"]).unwrap();
    assert!(
        prober.wait_answers("b", 100, Duration::from_secs(3)),
        "b never answered for the last VIP"
    );
    let probes = prober.finish();
    let o = lab::outage(&probes, "a", "b").expect("the client never moved to b");
    eprintln!("110-VIP group, last VIP: {o:?}");
    assert_holds(bn, "b", true);
    assert_holds(an, "a", false);
    let v6: SocketAddr = (vips()[105], 8080).into();
    let listener = bn
        .run_in(|| TcpListener::bind(v6))
        .expect("b binds its VIP");
    assert_eq!(tcp_round_trip(cn, listener, v6), "hello vip");
    // A node that does not serve cannot bind the VIP either: its stack does not
    // have it.
    assert!(
        an.run_in(|| TcpListener::bind(v6)).is_err(),
        "a's stack still has {v6}"
    );

    // Stopped agents take the addresses with them.
    assert!(b.stop().unwrap().success());
    assert!(a.stop().unwrap().success());
    for (ns, node) in [(an, "a"), (bn, "b")] {
        let all = ns.ip(&["-o", "addr", "show"]).unwrap();
        assert!(
            vips().iter().all(|v| !all.contains(&format!(" {v}/"))),
            "{node}: VIP addresses left behind"
        );
    }
    drop((a, b));
    teardown(lan);
}

/// A killed agent leaves its addresses on lo; the restarted one, not serving (b
/// took over), removes them: its kernel stops accepting the VIPs.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_killed_agents_addresses_do_not_keep_accepting() {
    privileged();
    let lan = lan();
    let (an, bn) = (&lan.host("a").ns, &lan.host("b").ns);
    let a = Agent::start(an, "a", &config(&lan, "a", 200)).unwrap();
    let b = Agent::start(bn, "b", &config(&lan, "b", 100)).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    assert_holds(an, "a", true);
    a.proc.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    drop(a);
    expect_states(&[("b", &b)], &["active"]);
    assert_holds(bn, "b", true);
    // Left behind: the kernel still delivers what reaches it.
    assert!(
        an.delivers_locally(vips()[0]),
        "a killed agent's addresses are gone"
    );
    // b is active now: the restarted a (lower priority now) must not serve.
    let a = Agent::start(an, "a", &config(&lan, "a", 50)).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["standby", "active"]);
    assert_holds(an, "a", false);
    assert_holds(bn, "b", true);
    drop((a, b));
    teardown(lan);
}
