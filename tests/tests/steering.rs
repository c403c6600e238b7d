//! VIP traffic: to the active's local sockets (TCP and UDP), redirected into a
//! container namespace, forwarded by a standby to the active; counters match.

mod common;

use std::net::{SocketAddr, TcpListener};

use common::*;
use lab::{privileged, Netns};

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn tcp_and_udp_reach_the_active_and_counters_match() {
    privileged();
    let lan = lan();
    let (a, c) = (lan.host("a"), lan.host("c"));
    let active = agent(&lan, "a", &config("a", &["10.0.0.50/24"], "active", ""));
    let _standby = agent(&lan, "b", &config("b", &["10.0.0.50/24"], "standby", ""));
    assert!(ping(&c.ns, VIP));

    let listener =
        a.ns.run_in(|| TcpListener::bind((VIP4, 8080)))
            .expect("bind TCP on the VIP");
    assert_eq!(
        tcp_round_trip(&c.ns, listener, (VIP4, 8080).into()),
        "hello vip"
    );

    // Counters: exactly the datagrams sent, with their frame sizes.
    let before = active.vip_status(VIP).unwrap();
    let sock = udp_bind(&a.ns, (VIP4, 5000).into());
    udp_send(&c.ns, (VIP4, 5000).into(), 100, 64);
    assert_eq!(udp_count(&sock, 100), 100);
    let after = active.vip_status(VIP).unwrap();
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(delta("rx_packets"), 100);
    assert_eq!(delta("passed"), 100);
    assert_eq!(delta("rx_bytes"), 100 * (14 + 20 + 8 + 64));
    assert_eq!(delta("forwarded") + delta("redirected"), 0);
    assert_eq!(after["action"], "local");
    drop((active, _standby));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn redirect_delivers_into_a_container_namespace() {
    privileged();
    let mut lan = lan();
    let ctr = Netns::new("ctr").unwrap();
    let a = lan.host("a");
    // A container: its eth0 holds the VIP; the host side `svc` is its gateway.
    lab::veth(&a.ns, "svc", &ctr, "eth0").unwrap();
    ctr.ip(&["addr", "add", "10.0.0.50/32", "dev", "eth0"])
        .unwrap();
    ctr.ip(&["link", "set", "eth0", "up"]).unwrap();
    ctr.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
        "onlink",
    ])
    .unwrap();
    a.ns.ip(&["addr", "add", "169.254.1.1/32", "dev", "svc"])
        .unwrap();
    a.ns.ip(&["link", "set", "svc", "up"]).unwrap();
    a.ns.ip(&["route", "add", "10.0.0.50/32", "dev", "svc"])
        .unwrap();
    a.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let ctr_name = ctr.name.clone();
    lan.xdp_pass(&ctr_name, &["eth0".to_string()]).unwrap();
    let a = lan.host("a");
    let c = lan.host("c");

    let active = agent(
        &lan,
        "a",
        &config("a", &["10.0.0.50/24"], "active", "redirect_to = \"svc\""),
    );
    assert!(ping(&c.ns, VIP), "client cannot ping the redirected VIP");
    let to: SocketAddr = (VIP4, 5000).into();
    let sock = udp_bind(&ctr, to);
    udp_send(&c.ns, to, 50, 32);
    assert_eq!(udp_count(&sock, 50), 50);
    let listener = ctr.run_in(|| TcpListener::bind((VIP4, 8080))).unwrap();
    assert_eq!(
        tcp_round_trip(&c.ns, listener, (VIP4, 8080).into()),
        "hello vip"
    );
    let v = active.vip_status(VIP).unwrap();
    assert_eq!(v["action"], "redirect");
    assert!(v["redirected"].as_u64().unwrap() >= 51, "{v}");
    assert_eq!(v["passed"], 0);
    // The VIP is not an address of the host when it is redirected.
    assert!(!a.ns.ip(&["addr", "show"]).unwrap().contains("10.0.0.50"));
    assert!(a.ns.vips_on_lo().is_empty(), "{:?}", a.ns.vips_on_lo());
    drop(active);
    drop(sock);
    drop(lan);
    drop(ctr);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_standby_forwards_stale_cache_traffic_to_the_active() {
    privileged();
    let lan = lan();
    let (a, b, c) = (lan.host("a"), lan.host("b"), lan.host("c"));
    // b is active first, so the client caches b's MAC; a will take over without
    // announcing (garp_count = 0), so the client keeps sending to b.
    let na = agent(
        &lan,
        "a",
        &config("a", &["10.0.0.50/24"], "standby", "garp_count = 0"),
    );
    let nb = agent(&lan, "b", &config("b", &["10.0.0.50/24"], "active", ""));
    assert!(ping(&c.ns, VIP));
    assert_eq!(
        kernel_neighbour(&c.ns, VIP).as_deref(),
        Some(b.mac.as_str())
    );

    let out = nb.cli(&["demote", "web", "--forward-to", &a.mac]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = na.cli(&["promote", "web"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let to: SocketAddr = (VIP4, 5000).into();
    let sock = udp_bind(&a.ns, to);
    udp_send(&c.ns, to, 50, 32);
    let got = udp_count(&sock, 50);
    assert_eq!(
        got,
        50,
        "forwarded datagrams did not reach the active: a {} b {}",
        na.status().unwrap(),
        nb.status().unwrap()
    );
    assert_eq!(
        kernel_neighbour(&c.ns, VIP).as_deref(),
        Some(b.mac.as_str()),
        "the client's cache moved; the test proves nothing"
    );
    let vb = nb.vip_status(VIP).unwrap();
    assert_eq!(vb["action"], "forward");
    assert_eq!(vb["forwarded"], 50, "{vb}");
    assert_eq!(vb["arp_replies"].as_u64().unwrap(), 1);
    let sb = nb.status().unwrap();
    assert_eq!(sb["groups"][0]["role"], "standby");
    assert_eq!(sb["groups"][0]["forward_to"], a.mac);
    assert_eq!(counter(&na, VIP, "rx_packets"), 50);
    drop((na, nb));
    teardown(lan);
}
