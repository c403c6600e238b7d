//! vip where users run it: in a container, on a veth whose peer has no XDP program and
//! whose TX checksum offload is on (the defaults). `xdp_mode = "auto"` (the default)
//! must pick generic mode there, and ARP, local delivery, a standby's forwarding and
//! redirect into a container must all work, with no lab helper.

mod common;

use std::net::{SocketAddr, TcpListener};

use common::*;
use lab::{privileged, Lan, Netns};

/// Hosts a, b (servers) and c (client); offloads on, no `vip xdp-pass` anywhere.
fn container_lan() -> Lan {
    Lan::with_offloads(&["a", "b", "c"]).expect("building the lab")
}

/// The agent chose skb mode because of the veth peer, and says so without warning
/// about a mode it does not use.
fn assert_auto_chose_skb(agent: &lab::Agent) {
    let s = agent.status().unwrap();
    assert_eq!(s["xdp_mode"], "skb", "{s}");
    let reason = s["xdp_mode_reason"].as_str().unwrap();
    assert!(reason.starts_with("auto:"), "{reason}");
    assert!(
        reason.contains("eth0 is a veth whose peer has no XDP program"),
        "{reason}"
    );
    let warnings = s["warnings"].to_string();
    assert!(!warnings.contains("eth0 is a veth:"), "{warnings}");
    let out = agent.cli(&["status"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("(xdp skb)"), "{table}");
    assert!(
        table.contains("veth whose peer has no XDP program"),
        "{table}"
    );
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn auto_mode_answers_arp_and_delivers_locally_on_a_bare_veth() {
    privileged();
    let lan = container_lan();
    let (a, b, c) = (lan.host("a"), lan.host("b"), lan.host("c"));
    let active = agent(&lan, "a", &config("a", &["10.0.0.50/24"], "active", ""));
    let standby = agent(&lan, "b", &config("b", &["10.0.0.50/24"], "standby", ""));
    assert_auto_chose_skb(&active);
    assert_auto_chose_skb(&standby);

    // arping: every answer is the active's.
    let out =
        c.ns.output(&["arping", "-c", "3", "-i", "eth0", VIP])
            .expect("arping");
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = text.lines().filter(|l| l.contains("bytes from")).collect();
    assert_eq!(answers.len(), 3, "arping output:\n{text}");
    assert!(
        answers.iter().all(|l| l.contains(&a.mac)),
        "an answer not from the active:\n{text}"
    );
    assert!(!text.contains(&b.mac));

    // Local delivery: ping and a TCP connection to a listener on the VIP.
    assert!(ping(&c.ns, VIP), "client cannot ping the VIP");
    assert_eq!(
        kernel_neighbour(&c.ns, VIP).as_deref(),
        Some(a.mac.as_str())
    );
    let listener =
        a.ns.run_in(|| TcpListener::bind((VIP4, 8080)))
            .expect("bind TCP on the VIP");
    assert_eq!(
        tcp_round_trip(&c.ns, listener, (VIP4, 8080).into()),
        "hello vip"
    );
    assert!(counter(&active, VIP, "arp_replies") >= 3);
    assert_eq!(counter(&standby, VIP, "arp_replies"), 0);
    drop((active, standby));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn auto_mode_forwards_stale_cache_traffic_on_a_bare_veth() {
    privileged();
    let lan = container_lan();
    let (a, b, c) = (lan.host("a"), lan.host("b"), lan.host("c"));
    // b is active first, so the client caches b's MAC; a takes over without announcing.
    let na = agent(
        &lan,
        "a",
        &config("a", &["10.0.0.50/24"], "standby", "garp_count = 0"),
    );
    let nb = agent(&lan, "b", &config("b", &["10.0.0.50/24"], "active", ""));
    assert_auto_chose_skb(&nb);
    assert!(ping(&c.ns, VIP));
    assert_eq!(
        kernel_neighbour(&c.ns, VIP).as_deref(),
        Some(b.mac.as_str())
    );
    // A client whose cache stays stale: a's takeover announces at once, and a
    // gratuitous ARP always overrides an existing entry.
    c.ns.ip(&[
        "neigh",
        "replace",
        VIP,
        "lladdr",
        &b.mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])
    .unwrap();
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

    // UDP (the client's partial checksums survive generic XDP_TX) and TCP.
    let to: SocketAddr = (VIP4, 5000).into();
    let sock = udp_bind(&a.ns, to);
    udp_send(&c.ns, to, 50, 32);
    assert_eq!(
        udp_count(&sock, 50),
        50,
        "forwarded datagrams did not reach the active: a {} b {}",
        na.status().unwrap(),
        nb.status().unwrap()
    );
    let listener = a.ns.run_in(|| TcpListener::bind((VIP4, 8080))).unwrap();
    assert_eq!(
        tcp_round_trip(&c.ns, listener, (VIP4, 8080).into()),
        "hello vip"
    );
    assert_eq!(
        kernel_neighbour(&c.ns, VIP).as_deref(),
        Some(b.mac.as_str()),
        "the client's cache moved; the test proves nothing"
    );
    let vb = nb.vip_status(VIP).unwrap();
    assert_eq!(vb["action"], "forward");
    assert!(vb["forwarded"].as_u64().unwrap() >= 51, "{vb}");
    drop((na, nb));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn auto_mode_redirects_into_a_container_without_a_helper() {
    privileged();
    let lan = container_lan();
    let ctr = Netns::new("ctr").unwrap();
    let a = lan.host("a");
    // A container: its eth0 holds the VIP; the host side `svc` is its gateway. No
    // XDP program on the container's eth0.
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
    let c = lan.host("c");

    let active = agent(
        &lan,
        "a",
        &config("a", &["10.0.0.50/24"], "active", "redirect_to = \"svc\""),
    );
    assert_auto_chose_skb(&active);
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
    drop(active);
    drop(sock);
    drop(lan);
    drop(ctr);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn auto_mode_is_native_where_the_peer_has_xdp_and_explicit_native_warns_on_a_bare_veth() {
    privileged();
    let mut lan = container_lan();
    lan.enable_xdp_tx(&["a"]).unwrap();
    let a = agent(&lan, "a", &config("a", &["10.0.0.50/24"], "active", ""));
    let s = a.status().unwrap();
    assert_eq!(s["xdp_mode"], "native", "{s}");
    assert!(
        s["xdp_mode_reason"]
            .as_str()
            .unwrap()
            .contains("peer has a native XDP program"),
        "{s}"
    );
    let b = lab::Agent::start_with(
        &lan.host("b").ns,
        "b",
        &config("b", &["10.0.0.50/24"], "standby", ""),
        &["--xdp-mode", "native"],
    )
    .unwrap();
    let s = b.status().unwrap();
    assert_eq!(s["xdp_mode"], "native", "{s}");
    assert!(s["xdp_mode_reason"]
        .as_str()
        .unwrap()
        .contains("configured"));
    assert!(s["warnings"].to_string().contains("eth0 is a veth:"), "{s}");
    drop((a, b));
    teardown(lan);
}
