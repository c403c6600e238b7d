//! IPv6 VIPs routed by a gateway (`[[route6]]`) end to end: an "internet" host
//! reaches a TCP and a UDP service on an elected group's IPv6 VIP through the
//! gateway, whose data plane sends the VIP's packets to the owner it learned from the
//! group's neighbour advertisements; the active's link goes down and the service is
//! reached through the new active at once. A host on the internal segment forges
//! neighbour advertisements (and solicitations from the VIP): the VIP's traffic keeps
//! reaching the real active. Judged by real sockets (which node answered), the wires
//! and the gateway's kernel neighbour table. Documentation ranges only, inside the
//! test's own namespaces.

mod common;

use std::{
    net::{Ipv6Addr, SocketAddr, TcpListener},
    time::Duration,
};

use common::*;
use lab::{frames, outage, privileged, wait_for, Agent, Capture, Lan, Netns, Prober, Responder};

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x60);
/// The internet host, and the gateway's address on its side.
const INET6: &str = "2001:db8:ff::10";
const GW_EXT6: &str = "2001:db8:ff::1";
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// Servers a and b and gateway g on the internal bridge (and `more` hosts, with no
/// XDP); internet host i behind g, with IPv6 on both sides: g forwards IPv6, i routes
/// the internal /64 via g, the servers' default IPv6 route is g.
fn topology(more: &[&str]) -> (Lan, Netns) {
    let names: Vec<&str> = ["a", "b", "g"].iter().chain(more).copied().collect();
    let mut lan = Lan::new(&names).unwrap();
    lan.enable_xdp_tx(&["a", "b", "g"]).unwrap();
    let i = lan.internet("g", &["a", "b"]).unwrap();
    let g = &lan.host("g").ns;
    g.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{GW_EXT6}/64"),
        "dev",
        "eth1",
        "nodad",
    ])
    .unwrap();
    g.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    i.sysctl("net.ipv6.conf.eth0.accept_dad", "0").unwrap();
    i.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{INET6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])
    .unwrap();
    i.ip(&["-6", "route", "add", "2001:db8::/64", "via", GW_EXT6])
        .unwrap();
    let gw = lan.host("g").ip6.to_string();
    for s in ["a", "b"] {
        lan.host(s)
            .ns
            .ip(&["-6", "route", "add", "default", "via", &gw])
            .unwrap();
    }
    (lan, i)
}

/// The gateway's config: the route of the VIP, whose owner is learned from the
/// neighbour advertisements of the servers `nodes` only.
fn gateway(lan: &Lan, nodes: &[&str]) -> String {
    let macs: Vec<String> = nodes
        .iter()
        .map(|n| format!("\"{}\"", lan.host(n).mac))
        .collect();
    format!(
        "[node]\nname = \"g\"\ninterface = \"eth0\"\n\n[[route6]]\nvip = \"{VIP6}\"\nexternal_interface = \"eth1\"\ninternal_interface = \"eth0\"\nnodes = [{}]\n",
        macs.join(", ")
    )
}

/// An elected server holding the IPv6 VIP.
fn server(lan: &Lan, me: &str, priority: u8) -> Agent {
    let cfg = elected(lan, me, &["a", "b"], priority, "", "").replace(
        "vips = [\"10.0.0.50/24\"]",
        &format!("vips = [\"{VIP6}/64\"]"),
    );
    Agent::start(&lan.host(me).ns, me, &cfg).expect("starting the agent")
}

/// The gateway's status of its one route.
fn route_status(g: &Agent) -> serde_json::Value {
    g.status().unwrap()["routes6"][0].clone()
}

fn owner(g: &Agent) -> String {
    route_status(g)["owner"].as_str().unwrap_or("").to_string()
}

/// The gateway kernel's neighbour entry for the VIP, as `ip` shows it (empty: none).
/// The kernel makes one only when it routes a packet to the VIP itself, so while it
/// stays empty every packet to the VIP went by the data plane.
fn kernel_entry(lan: &Lan) -> String {
    lan.host("g")
        .ns
        .ip(&["-6", "neigh", "show", &VIP6.to_string(), "dev", "eth0"])
        .unwrap()
        .trim()
        .to_string()
}

fn listen(ns: &Netns, port: u16) -> TcpListener {
    ns.run_in(|| TcpListener::bind(SocketAddr::from((VIP6, port))))
        .expect("listen")
}

/// Waits until the gateway names `host` as the owner.
fn wait_owner(g: &Agent, lan: &Lan, host: &str) {
    let want = lan.host(host).mac.clone();
    assert!(
        wait_for(Duration::from_secs(3), || (owner(g) == want).then_some(())).is_some(),
        "the gateway never learned {host} ({want}): {}\n{}",
        route_status(g),
        g.log_text()
    );
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn the_internet_reaches_an_ipv6_vip_through_the_gateway_across_a_failover() {
    privileged();
    let (lan, inet) = topology(&[]);
    // The gateway first: the takeover's unsolicited advertisements teach it the owner,
    // so its kernel never has to resolve the VIP.
    let g = Agent::start(&lan.host("g").ns, "g", &gateway(&lan, &["a", "b"])).unwrap();
    let a = server(&lan, "a", 200);
    let b = server(&lan, "b", 100);
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    wait_owner(&g, &lan, "a");

    // ping, TCP and UDP to the VIP from the internet, answered by a.
    assert!(
        ping(&inet, &VIP6.to_string()),
        "ping -6 through the gateway failed: {}\n{}",
        route_status(&g),
        g.log_text()
    );
    assert_eq!(
        tcp_round_trip(&inet, listen(&lan.host("a").ns, 8080), (VIP6, 8080).into()),
        "hello vip"
    );
    let _ra = Responder::start(&lan.host("a").ns, (VIP6, 7007).into(), "a").unwrap();
    let _rb = Responder::start(&lan.host("b").ns, (VIP6, 7007).into(), "b").unwrap();
    let prober = Prober::start(&inet, (VIP6, 7007).into(), Duration::from_millis(1)).unwrap();
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(3)),
        "the internet client never reached a through the gateway: {}",
        route_status(&g)
    );
    assert_eq!(
        kernel_entry(&lan),
        "",
        "the gateway's kernel routed the VIP's packets"
    );

    // Failover under probes: a loses its link; b takes over; the gateway follows.
    lan.host("a")
        .ns
        .ip(&["link", "set", "eth0", "down"])
        .unwrap();
    assert!(wait_for(Duration::from_secs(3), || (state(&b) == "active")
        .then_some(()))
    .is_some());
    assert!(
        prober.wait_answers("b", 200, Duration::from_secs(3)),
        "the internet client never reached b through the gateway: {}",
        route_status(&g)
    );
    let probes = prober.finish();
    let o = outage(&probes, "a", "b").expect("the internet client never reached b");
    eprintln!(
        "route6 failover (link down, {INTERVAL} ms adverts): outage {:.1} ms, {} probes lost",
        o.outage.as_secs_f64() * 1e3,
        o.lost
    );
    assert!(
        o.outage < Duration::from_millis(INTERVAL * 4 + 200),
        "{o:?}"
    );
    // TCP through the new active.
    assert_eq!(
        tcp_round_trip(&inet, listen(&lan.host("b").ns, 8081), (VIP6, 8081).into()),
        "hello vip"
    );
    assert_eq!(
        kernel_entry(&lan),
        "",
        "the gateway's kernel routed the VIP's packets"
    );
    let r = route_status(&g);
    assert_eq!(r["owner"], lan.host("b").mac.as_str(), "{r}");
    assert!(r["in_packets"].as_u64().unwrap() > 300, "{r}");
    assert!(r["owner_changes"].as_u64().unwrap() >= 2, "{r}");
    // The servers' own neighbour discovery is never refused.
    assert_eq!(r["owner_refused"], 0, "{r}");
    drop((a, b, g));
    drop(lan);
    drop(inet);
}

/// An IPv6 UDP datagram to the VIP's `port`.
fn to_vip(f: &[u8], port: u16) -> bool {
    f.len() >= 58
        && f[12..14] == [0x86, 0xdd]
        && f[20] == 17
        && f[38..54] == VIP6.octets()
        && f[56..58] == port.to_be_bytes()
}

/// The owner is one of the group's nodes, never any sender of an NA: host x on the
/// internal segment claims the VIP with unsolicited and solicited advertisements and
/// with solicitations sent from the VIP, once and as a flood while the internet's
/// datagrams flow. Every one of them reaches a (its socket and its wire), none x's
/// wire; neither the gateway's data plane nor its kernel learns x; and a real failover
/// still moves the VIP's traffic at once.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_forged_neighbour_advertisement_never_takes_the_vips_traffic() {
    privileged();
    const PORT: u16 = 7009;
    const DATAGRAMS: usize = 200;
    let (lan, inet) = topology(&["x"]);
    let g = Agent::start(&lan.host("g").ns, "g", &gateway(&lan, &["a", "b"])).unwrap();
    let a = server(&lan, "a", 200);
    let b = server(&lan, "b", 100);
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    wait_owner(&g, &lan, "a");
    let (amac, xmac) = (lan.host("a").mac.clone(), mac(&lan.host("x").mac));
    let gmac = mac(&lan.host("g").mac);
    let sink = udp_bind(&lan.host("a").ns, (VIP6, PORT).into());
    // Room for a whole round queued before it is read: an IPv6 datagram's buffer
    // outgrows the default's share (the lab's loss, Udp6RcvbufErrors, not the gateway's).
    nix::sys::socket::setsockopt(&sink, nix::sys::socket::sockopt::RcvBuf, &(1 << 20))
        .expect("SO_RCVBUF");
    let changes = route_status(&g)["owner_changes"].as_u64().unwrap();
    let on_a = Capture::open(&lan.host("a").ns, "eth0").unwrap();
    let on_x = Capture::open(&lan.host("x").ns, "eth0").unwrap();
    let attacker = Capture::open(&lan.host("x").ns, "eth0").unwrap();
    // A's socket is the verdict (the gateway sends each datagram once, so all of them
    // there means none went elsewhere); under a flood a capture may miss a frame, so
    // a's wire must then show at least 95 %.
    let round = |what: &str, flooded: bool| {
        let (got, wires) = datagram_round(
            &inet,
            &sink,
            &[&on_a, &on_x],
            DATAGRAMS,
            (VIP6, PORT).into(),
            |f| to_vip(f, PORT),
        );
        let (wire_a, wire_x) = (wires[0], wires[1]);
        eprintln!("{what}: a's socket {got}, a's wire {wire_a}, x's wire {wire_x} of {DATAGRAMS}");
        let seen_a = if flooded {
            wire_a * 100 >= DATAGRAMS * 95
        } else {
            wire_a == DATAGRAMS
        };
        assert!(
            got == DATAGRAMS && seen_a && wire_x == 0,
            "{what}: a's socket got {got}, a's wire {wire_a}, the attacker's wire {wire_x} of \
             {DATAGRAMS} datagrams; gateway: {}",
            route_status(&g)
        );
    };
    round("before any forgery", false);

    // One unsolicited NA: "2001:db8::60 is at x".
    attacker
        .send(&frames::neighbour_advertisement(
            ALL_NODES_MAC,
            xmac,
            VIP6,
            frames::ALL_NODES,
            false,
        ))
        .unwrap();
    let mut forged = 1u64;
    // Deliberate: the gateway's data plane acts on the frame as it arrives; this only
    // lets it cross the bridge.
    std::thread::sleep(Duration::from_millis(20));
    round("after one unsolicited NA", false);

    // A flood while the datagrams flow, at the gateway's MAC (multicast, it would load
    // every server's kernel, and on this shared machine the election's timing with
    // it): unsolicited NAs, NAs as if the gateway had asked, solicitations from the
    // VIP (which would teach the kernel x's MAC).
    let flood = [
        frames::neighbour_advertisement(gmac, xmac, VIP6, frames::ALL_NODES, false),
        frames::neighbour_advertisement(gmac, xmac, VIP6, lan.host("g").ip6, true),
        frames::neighbour_solicitation(xmac, VIP6, lan.host("g").ip6, None),
        frames::neighbour_solicitation(xmac, VIP6, lan.host("g").ip6, Some(gmac.0)),
    ];
    const FLOOD: usize = 2000;
    let before = transitions(&[("a", &a), ("b", &b)]);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..FLOOD {
                attacker.send(&flood[i % flood.len()]).unwrap();
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        round("during a flood of forged neighbour discovery", true);
    });
    assert_no_transitions(&[("a", &a), ("b", &b)], &before, "the flood");
    forged += FLOOD as u64;
    round("after the flood", false);

    // Every forgery was seen and refused; the owner never moved; the gateway's kernel
    // did not learn the forger either.
    let r = route_status(&g);
    assert_eq!(r["owner"], amac.as_str(), "{r}");
    assert_eq!(r["owner_changes"].as_u64().unwrap(), changes, "{r}");
    assert_eq!(r["owner_refused"].as_u64().unwrap(), forged, "{r}");
    assert!(
        !kernel_entry(&lan).contains(&lan.host("x").mac),
        "the gateway's kernel learned the forger: {}",
        kernel_entry(&lan)
    );

    // A real failover still moves the VIP's traffic at once: a's link goes down.
    let _ra = Responder::start(&lan.host("a").ns, (VIP6, 7007).into(), "a").unwrap();
    let _rb = Responder::start(&lan.host("b").ns, (VIP6, 7007).into(), "b").unwrap();
    let prober = Prober::start(&inet, (VIP6, 7007).into(), Duration::from_millis(1)).unwrap();
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(3)),
        "the internet client never reached a"
    );
    lan.host("a")
        .ns
        .ip(&["link", "set", "eth0", "down"])
        .unwrap();
    assert!(
        prober.wait_answers("b", 200, Duration::from_secs(3)),
        "the internet client never reached b: {}",
        route_status(&g)
    );
    let probes = prober.finish();
    let o = outage(&probes, "a", "b").expect("the internet client never reached b");
    eprintln!(
        "route6 failover after the forgeries (link down, {INTERVAL} ms adverts): outage {:.1} ms, {} probes lost",
        o.outage.as_secs_f64() * 1e3,
        o.lost
    );
    assert!(
        o.outage < Duration::from_millis(INTERVAL * 4 + 200),
        "{o:?}"
    );
    let r = route_status(&g);
    assert_eq!(r["owner"], lan.host("b").mac.as_str(), "{r}");
    assert_eq!(r["owner_refused"].as_u64().unwrap(), forged, "{r}");
    drop((a, b, g));
    drop(lan);
    drop(inet);
}
