//! A group of more than 64 VIPs, whose addresses the agent's worker adds and removes
//! in the background (a change of its state does not wait for them), is accepted by
//! the kernel only where it is served. Judged from the kernels and the wire: which
//! stack delivers a VIP locally (`ip route get`), where the addresses are, a client's
//! UDP probes and TCP connection across a failover, and what a killed or stopped
//! agent leaves behind. A resident group (`addresses = "resident"`) holds its
//! addresses on every node: there only the data plane keeps a standby's stack from
//! accepting, so the client sends to the standby's MAC on purpose and sees who
//! answers.

mod common;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use common::*;
use lab::{privileged, wait_for, Agent, Capture, Netns, Responder};

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

/// The client `cn` probes `to` every millisecond, answered by a, until a's link
/// (`an`) goes down and b answers: the outage between them.
fn link_down_failover(an: &Netns, cn: &Netns, to: SocketAddr) -> lab::Outage {
    let prober = lab::Prober::start(cn, to, Duration::from_millis(1)).unwrap();
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(3)),
        "a never answered {to}"
    );
    an.ip(&["link", "set", "eth0", "down"]).unwrap();
    assert!(
        prober.wait_answers("b", 100, Duration::from_secs(3)),
        "b never answered for {to}"
    );
    lab::outage(&prober.finish(), "a", "b").expect("the client never moved to b")
}

/// Stops b, then a; neither stack accepts any of the group's VIPs afterwards.
fn stop_both(lan: &lab::Lan, mut a: Agent, mut b: Agent) {
    assert!(b.stop().unwrap().success());
    assert!(a.stop().unwrap().success());
    for node in ["a", "b"] {
        let lo = lan.host(node).ns.vips_on_lo();
        assert!(
            vips().iter().all(|v| !lo.contains(v)),
            "{node}: VIPs left behind: {lo:?}"
        );
    }
}

/// vip's local routes in `ns` (`ip route` lines of protocol 99 in the local table).
fn local_routes(ns: &Netns) -> Vec<String> {
    ns.ip(&["-4", "-o", "route", "show", "table", "local", "proto", "99"])
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Asserts how `ns` holds the group: every VIP on lo and delivered locally exactly
/// when `serving`, none otherwise (waited for: the worker is asynchronous).
fn assert_holds(ns: &Netns, node: &str, serving: bool) {
    let all = vips();
    let ok = wait_for(Duration::from_secs(5), || {
        let on = ns.vips_on_lo();
        all.iter().all(|v| on.contains(v) == serving).then_some(())
    });
    let on = ns.vips_on_lo();
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
    // The 100 IPv4 VIPs are one run, .100 to .199: its exact cover is five routes
    // (/30, /29, /28, /26, /29), and the addresses just outside it are not accepted.
    assert_eq!(local_routes(an).len(), 5, "{:?}", local_routes(an));
    for outside in ["10.0.0.99", "10.0.0.200"] {
        assert!(
            !an.delivers_locally(outside.parse().unwrap()),
            "a accepts {outside}, which is no VIP"
        );
    }
    // An operator deletes the route that carries .128 to .191: the agent puts it
    // back.
    an.ip(&[
        "route",
        "del",
        "local",
        "10.0.0.128/26",
        "dev",
        "lo",
        "table",
        "local",
        "proto",
        "99",
    ])
    .unwrap();
    let back = wait_for(Duration::from_secs(3), || {
        an.delivers_locally("10.0.0.150".parse().unwrap())
            .then_some(())
    });
    assert!(back.is_some(), "a's deleted route never came back");
    assert!(a
        .log_text()
        .contains("the local route of VIP 10.0.0.128/26 was removed"));
    // And an IPv6 VIP's address on lo: it comes back too.
    let six: IpAddr = vips()[104];
    an.ip(&["addr", "del", &format!("{six}/128"), "dev", "lo"])
        .unwrap();
    let back = wait_for(Duration::from_secs(3), || {
        an.addresses_on("lo").contains(&six).then_some(())
    });
    assert!(back.is_some(), "a's deleted address {six} never came back");
    assert!(a
        .log_text()
        .contains(&format!("VIP address {six} was removed from lo")));

    // The client's probes to the last VIP, and TCP to an IPv6 one, across a's link
    // going down.
    let last: SocketAddr = (vips()[99], 7007).into();
    let _ra = Responder::start(an, last, "a").unwrap();
    let _rb = Responder::start(bn, last, "b").unwrap();
    let o = link_down_failover(an, cn, last);
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

    // A reload that takes 10.0.0.150 out of the middle of the run splits its /26
    // (new routes first, the old one last): the VIP goes, and the last VIP's
    // probes, through the routes that stay, lose nothing.
    let prober = lab::Prober::start(cn, last, Duration::from_millis(1)).unwrap();
    assert!(prober.wait_answers("b", 50, Duration::from_secs(3)));
    let fewer = config(&lan, "b", 100).replacen("\"10.0.0.150/24\", ", "", 1);
    b.write_config(&fewer).unwrap();
    let out = b.cli(&["reload"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone: IpAddr = "10.0.0.150".parse().unwrap();
    let split = wait_for(Duration::from_secs(3), || {
        (!bn.delivers_locally(gone)).then_some(())
    });
    assert!(split.is_some(), "b still accepts {gone}");
    std::thread::sleep(Duration::from_millis(50));
    let lost = prober
        .finish()
        .iter()
        .filter(|p| p.answered_by.is_none())
        .count();
    assert_eq!(lost, 0, "probes to {last} lost while the route split");
    let on = bn.vips_on_lo();
    let kept: Vec<IpAddr> = vips().into_iter().filter(|v| *v != gone).collect();
    assert!(kept.iter().all(|v| on.contains(v)), "b lost a VIP: {on:?}");
    assert!(!on.contains(&gone));
    assert!(kept.iter().all(|v| bn.delivers_locally(*v)));
    // Two runs now: .100 to .149 in six routes, .151 to .199 in four.
    assert_eq!(local_routes(bn).len(), 6 + 4, "{:?}", local_routes(bn));

    // Stopped agents take the addresses with them.
    assert!(b.stop().unwrap().success());
    assert!(a.stop().unwrap().success());
    for (ns, node) in [(an, "a"), (bn, "b")] {
        let all = ns.ip(&["-o", "addr", "show"]).unwrap();
        let lo = ns.vips_on_lo();
        assert!(
            vips()
                .iter()
                .all(|v| !all.contains(&format!(" {v}/")) && !lo.contains(v)),
            "{node}: VIPs left behind"
        );
    }
    drop((a, b));
    teardown(lan);
}

/// `ipv6_local = "route"`: the group's IPv6 VIPs are local routes as its IPv4 ones
/// are, no address on lo. The stack accepts them only where the group is served, a
/// service listening on `[::]` answers on them across a failover, and bind() to the
/// VIP itself needs IPV6_FREEBIND (or ip_nonlocal_bind), as the README says.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn ipv6_vips_as_routes_are_accepted_only_where_served() {
    privileged();
    let lan = lan();
    let (an, bn, cn) = (&lan.host("a").ns, &lan.host("b").ns, &lan.host("c").ns);
    let routed = |me, prio| config(&lan, me, prio) + "ipv6_local = \"route\"\n";
    let a = Agent::start(an, "a", &routed("a", 200)).unwrap();
    let b = Agent::start(bn, "b", &routed("b", 100)).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    assert_holds(an, "a", true);
    assert_holds(bn, "b", false);
    let six: Vec<IpAddr> = vips().into_iter().filter(IpAddr::is_ipv6).collect();
    let on_lo = an.addresses_on("lo");
    assert!(
        six.iter().all(|v| !on_lo.contains(v)),
        "a has IPv6 VIP addresses on lo: {on_lo:?}"
    );
    // 2001:db8::2:1 to ::2:a: /128, /127, /126, /127, /128.
    let routes6 = an
        .ip(&["-6", "-o", "route", "show", "table", "local", "proto", "99"])
        .unwrap();
    assert_eq!(routes6.lines().count(), 5, "{routes6}");
    let v6: SocketAddr = (six[5], 8080).into();
    assert!(
        an.run_in(|| TcpListener::bind(v6)).is_err(),
        "bind() to a routed IPv6 VIP worked without IPV6_FREEBIND"
    );
    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let listener = an.run_in(|| TcpListener::bind(any)).unwrap();
    assert_eq!(tcp_round_trip(cn, listener, v6), "hello vip");

    // A failover: b's stack takes the VIPs, a's lets them go.
    let last: SocketAddr = (vips()[99], 7007).into();
    let _ra = Responder::start(an, last, "a").unwrap();
    let _rb = Responder::start(bn, last, "b").unwrap();
    let o = link_down_failover(an, cn, last);
    eprintln!("110-VIP group, IPv6 as routes, last VIP: {o:?}");
    assert_holds(bn, "b", true);
    assert_holds(an, "a", false);
    let listener = bn.run_in(|| TcpListener::bind(any)).unwrap();
    assert_eq!(tcp_round_trip(cn, listener, v6), "hello vip");

    stop_both(&lan, a, b);
    teardown(lan);
}

/// 3,000 IPv6 VIPs: the active joins every one's solicited-node group on its
/// interface (a socket holds about 2,300; the kernel refused the rest before the
/// memberships were spread over several), and its stop leaves them all. On the
/// switch, no MLD report for a VIP's group comes before a's last unsolicited NA (the
/// joins wait for the takeover's first round: beside it, their CPU, MLD and snooping
/// slowed a 10,000-VIP round by a quarter on a 2-CPU host). At 3,000 VIPs the kernel
/// sends its reports after the round with the joins beside it too, so this guards
/// the order on the wire; the deferral itself is the address worker's unit test and
/// the size bench's.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_big_ipv6_group_joins_every_solicited_node_group() {
    privileged();
    let lan = lan();
    let an = &lan.host("a").ns;
    let vips: Vec<String> = (1..=3000u32)
        .map(|i| format!("\"2001:db8::3:{i:x}/64\""))
        .collect();
    let cfg = format!(
        "[node]\nname = \"a\"\ninterface = \"eth0\"\nmax_vips = 4096\n\n[[group]]\nname = \"many\"\nvips = [{}]\nrole = \"active\"\ngarp_count = 1\nipv6_local = \"route\"\n",
        vips.join(", ")
    );
    let groups = || {
        an.ip(&["-6", "maddr", "show", "dev", "eth0"])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ff02::1:ff03:"))
            .count()
    };
    let wire = Capture::open(&lan.switch, &lan.host("a").port).unwrap();
    wire.receive_buffer(32 << 20).unwrap();
    let mut a = Agent::start(an, "a", &cfg).unwrap();
    let all = wait_for(Duration::from_secs(10), || (groups() == 3000).then_some(()));
    assert!(
        all.is_some(),
        "{} of 3,000 solicited-node groups joined",
        groups()
    );
    // a's NAs (ICMPv6 136) and the MLDv2 reports (143, after a hop-by-hop header)
    // that name a VIP's group (ff02::1:ff03:*; the kernel also repeats reports of the
    // interface's own link-local groups for a while after the link came up), in wire
    // order.
    let a_mac = mac(&lan.host("a").mac).0;
    const VIP_GROUPS: [u8; 14] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 3];
    let names_a_vip = |f: &[u8]| f[62..].windows(VIP_GROUPS.len()).any(|w| w == VIP_GROUPS);
    let kinds: Vec<u8> = wire
        .collect(Duration::from_millis(300), |f| {
            f.len() > 62 && f[6..12] == a_mac && f[12..14] == [0x86, 0xdd]
        })
        .iter()
        .filter_map(|f| match f[20] {
            58 => Some(f[54]),
            0 if f[54] == 58 && names_a_vip(f) => Some(f[62]),
            _ => None,
        })
        .filter(|t| [136, 143].contains(t))
        .collect();
    let nas = kinds.iter().filter(|&&t| t == 136).count();
    let last_na = kinds.iter().rposition(|&t| t == 136);
    let first_report = kinds.iter().position(|&t| t == 143);
    assert!(nas >= 3000, "{nas} NAs from a on the wire");
    assert!(
        first_report.is_some() && first_report > last_na,
        "a's first MLD report at {first_report:?}, its last NA at {last_na:?} of {}",
        kinds.len()
    );
    assert!(
        !a.log_text().contains("solicited-node groups:"),
        "{}",
        a.log_text()
    );
    assert!(a.stop().unwrap().success());
    assert_eq!(groups(), 0, "groups left after the stop");
    drop(a);
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

/// Every VIP on lo in `ns`, waited for (the worker adds them in the background).
fn assert_resident(ns: &Netns, node: &str) {
    let all = vips();
    let ok = wait_for(Duration::from_secs(5), || {
        let on = ns.vips_on_lo();
        all.iter().all(|v| on.contains(v)).then_some(())
    });
    let on = ns.vips_on_lo();
    assert!(
        ok.is_some(),
        "{node}: {} of {} resident VIPs on lo",
        all.iter().filter(|v| on.contains(v)).count(),
        all.len()
    );
}

/// Accepts TCP connections on `addr` in `ns`, writing `name` to each and counting
/// them; the thread ends with the test's process (the listener is never closed).
fn name_server(
    ns: &Netns,
    addr: SocketAddr,
    name: &'static str,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let listener = ns
        .run_in(|| TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("{name} binds {addr}: {e}"));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = conn.write_all(name.as_bytes());
        }
    });
    accepted
}

/// Connects from `ns` to `to` and reads who answered (None: no connection).
fn who_serves_tcp(ns: &Netns, to: SocketAddr) -> Option<String> {
    ns.run_in(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
}

/// Points the client's neighbour entry for `vip` at `mac` (a stale cache, or a
/// client that ignores the announcements), or back to what ARP/ND resolve.
fn pin_neighbour(ns: &Netns, vip: IpAddr, mac: Option<&str>) {
    let v = vip.to_string();
    match mac {
        Some(m) => ns
            .ip(&[
                "neigh",
                "replace",
                &v,
                "lladdr",
                m,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])
            .map(|_| ()),
        None => ns.ip(&["neigh", "del", &v, "dev", "eth0"]).map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("neighbour entry for {v}: {e}"));
}

/// A resident group keeps every address on both nodes, and still only the owner's
/// stack accepts: UDP and TCP sent to the standby's MAC are forwarded to the active
/// (the standby's own sockets, bound to the same VIPs, get nothing), a standby whose
/// agent is stopped past its lease drops them, and a failover moves every VIP with
/// no address to add.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_resident_group_is_accepted_only_where_it_is_served() {
    privileged();
    let lan = lan();
    let (an, bn, cn) = (&lan.host("a").ns, &lan.host("b").ns, &lan.host("c").ns);
    let resident = |me, prio| config(&lan, me, prio) + "addresses = \"resident\"\n";
    let a = Agent::start(an, "a", &resident("a", 200)).unwrap();
    let b = Agent::start(bn, "b", &resident("b", 100)).unwrap();
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    assert_resident(an, "a");
    assert_resident(bn, "b");
    let status = b.status().unwrap();
    assert_eq!(status["groups"][0]["addresses"], "resident", "{status}");

    // Both stacks could accept every VIP: both nodes serve the same ports on them.
    let (last4, v6) = (vips()[99], vips()[105]);
    let udp4: SocketAddr = (last4, 7007).into();
    let udp6: SocketAddr = (v6, 7007).into();
    let tcp4: SocketAddr = (last4, 8080).into();
    let _r = [
        Responder::start(an, udp4, "a").unwrap(),
        Responder::start(bn, udp4, "b").unwrap(),
        Responder::start(an, udp6, "a").unwrap(),
        Responder::start(bn, udp6, "b").unwrap(),
    ];
    let tcp_a = name_server(an, tcp4, "a");
    let tcp_b = name_server(bn, tcp4, "b");

    // The client sends to the standby's MAC: the standby forwards to the active.
    let b_mac = bn.mac("eth0").unwrap();
    pin_neighbour(cn, last4, Some(&b_mac));
    pin_neighbour(cn, v6, Some(&b_mac));
    for to in [udp4, udp6] {
        let prober = lab::Prober::start(cn, to, Duration::from_millis(1)).unwrap();
        assert!(
            prober.wait_answers("a", 100, Duration::from_secs(3)),
            "{to} through b's MAC: the active never answered"
        );
        let probes = prober.finish();
        let by_b = probes
            .iter()
            .filter(|p| p.answered_by.as_deref() == Some("b"))
            .count();
        assert_eq!(by_b, 0, "{to}: the standby's stack answered {by_b} probes");
    }
    for _ in 0..5 {
        assert_eq!(
            who_serves_tcp(cn, tcp4).as_deref(),
            Some("a"),
            "TCP via b's MAC"
        );
    }
    assert_eq!(tcp_b.load(std::sync::atomic::Ordering::SeqCst), 0);

    // The standby's agent stopped past its lease: its data plane drops, its stack
    // (which holds the address) still sees nothing.
    b.proc.signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let prober = lab::Prober::start(cn, udp4, Duration::from_millis(1)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let probes = prober.finish();
    b.proc.signal(nix::sys::signal::Signal::SIGCONT).unwrap();
    let by_b = probes
        .iter()
        .filter(|p| p.answered_by.as_deref() == Some("b"))
        .count();
    assert_eq!(
        by_b,
        0,
        "a stopped standby's stack answered {by_b} of {} probes",
        probes.len()
    );
    assert!(who_serves_tcp(cn, tcp4).as_deref() != Some("b"));
    assert_eq!(tcp_b.load(std::sync::atomic::Ordering::SeqCst), 0);
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);

    // A failover: the client follows the announcements again. The switch sees
    // each VIP announced exactly `garp_count` (3) times by b: the first ones from
    // the loop, the rest of the round and the other rounds from its task.
    pin_neighbour(cn, last4, None);
    pin_neighbour(cn, v6, None);
    let b_port = &lan.host("b").port;
    let cap = lab::Capture::open(&lan.switch, b_port).expect("capture on b's port");
    cap.receive_buffer(8 << 20)
        .expect("a capture buffer for every round");
    let o = link_down_failover(an, cn, udp4);
    eprintln!("110-VIP resident group, last VIP: {o:?}");
    let b_mac_bytes = mac(&b_mac).0;
    let mut seen: std::collections::BTreeMap<IpAddr, usize> = Default::default();
    for f in cap.collect(Duration::from_millis(500), |f| announced(f).is_some()) {
        if let Some((ip, _)) = announced(&f).filter(|(_, m)| *m == b_mac_bytes) {
            *seen.entry(ip).or_default() += 1;
        }
    }
    let wrong: Vec<String> = vips()
        .iter()
        .filter(|v| seen.get(v) != Some(&3))
        .map(|v| format!("{v}: {}", seen.get(v).copied().unwrap_or(0)))
        .collect();
    assert!(
        wrong.is_empty() && seen.len() == vips().len(),
        "VIPs not announced exactly 3 times by b: {wrong:?}"
    );
    assert_eq!(who_serves_tcp(cn, tcp4).as_deref(), Some("b"));
    assert!(tcp_a.load(std::sync::atomic::Ordering::SeqCst) >= 5);
    // Both still hold every address: a's link going down moved no address.
    assert_resident(an, "a");
    assert_resident(bn, "b");

    // Stopped agents take the addresses with them.
    stop_both(&lan, a, b);
    teardown(lan);
}
