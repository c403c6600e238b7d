//! The routed lab works end to end: a router running FRR and two nodes running BIRD
//! with the node config vip's agent will generate (`lab::bird_node_config`), eBGP with
//! BFD at 10 ms x 3. A VIP announced by putting a host route into the nodes' VIP table
//! reaches the router's kernel FIB, from both nodes as ECMP; a node whose link goes
//! down leaves the FIB within 200 ms; and a client behind the router reaches the VIP
//! (UDP) through it. Judged on the router's kernel FIB, which is what forwards the
//! client's packets. Documentation ranges only, inside the test's own namespaces.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use lab::{privileged, wait_for, Bird, Frr, FrrOptions, Lan, Netns, Prober, Responder};

/// The VIP (TEST-NET-3): outside the lab's bridge subnet, so only BGP makes it
/// reachable from the client.
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
const VIP_PREFIX: &str = "203.0.113.80/32";
const VIP6_PREFIX: &str = "2001:db8:99::80/128";
const ROUTER_AS: u32 = 65000;
/// Each node its own AS, as vip's nodes would be numbered: the router's
/// `multipath-relax` is what lets their paths form one ECMP route.
const NODE_AS: [u32; 2] = [65001, 65002];
const PORT: u16 = 7007;

fn ip(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

/// Announces (or withdraws) the VIP from `node` the way the agent will: a host route
/// of vip's protocol number in vip's table, which BIRD learns from netlink.
fn vip_route(node: &Netns, add: bool, prefix: &str) -> Result<()> {
    let family = if prefix.contains(':') { "-6" } else { "-4" };
    let verb = if add { "add" } else { "del" };
    let table = lab::VIP_TABLE.to_string();
    node.ip(&[
        family,
        "route",
        verb,
        "blackhole",
        prefix,
        "table",
        &table,
        "proto",
        lab::VIP_PROTO,
    ])
    .map(|_| ())
}

/// Both nodes' BGP sessions Established and BFD sessions up, as the router and as
/// each node's BIRD sees them.
fn sessions_up(frr: &Frr, birds: &[&Bird], nodes: &[IpAddr]) -> bool {
    frr.established() == nodes
        && frr.bfd_up() == nodes
        && birds.iter().all(|b| {
            b.birdc("show protocols uplink")
                .is_ok_and(|o| o.contains("Established"))
                && b.birdc("show bfd sessions")
                    .is_ok_and(|o| o.lines().any(|l| l.contains(" Up ")))
        })
}

fn diagnostics(frr: &Frr, birds: &[&Bird]) -> String {
    let mut s = format!(
        "router FIB: {}\nrouter: {}\n{}",
        frr.vtysh("show ip route").unwrap_or_default(),
        frr.vtysh("show bgp summary").unwrap_or_default(),
        frr.logs()
    );
    for b in birds {
        s.push_str(&b.birdc("show protocols all uplink").unwrap_or_default());
        s.push_str(&b.logs());
    }
    s
}

#[test]
#[ignore = "privileged: needs root, namespaces, BIRD and FRR; run by `cargo xtask test`"]
fn a_vip_announced_over_bgp_is_ecmp_at_the_router_and_fails_over_with_bfd() -> Result<()> {
    privileged();
    let mut lan = Lan::new(&["router", "a", "b"])?;
    let client = lan.routed("router", "client")?;
    let router = lan.host("router").ip4;
    let (a_ip, b_ip) = (lan.host("a").ip4, lan.host("b").ip4);
    let nodes = [ip(a_ip), ip(b_ip)];

    let frr = Frr::start(
        &lan.host("router").ns,
        ROUTER_AS,
        router,
        &[(ip(a_ip), NODE_AS[0], true), (ip(b_ip), NODE_AS[1], true)],
        FrrOptions::default(),
    )?;
    let mut birds = Vec::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let h = lan.host(name);
        // The nodes answer the client through the router; the VIP is on lo, as the
        // agent puts it, so their stack accepts packets to it.
        h.ns.ip(&["route", "add", "default", "via", &router.to_string()])?;
        h.ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        let (me, asn) = (h.ip4, NODE_AS[i]);
        birds.push(Bird::start(&h.ns, name, true, |log| {
            lab::bird_node_config(log, "eth0", me, asn, router, ROUTER_AS, true)
        })?);
    }
    let (bird_a, bird_b) = (&birds[0], &birds[1]);
    let all = [bird_a, bird_b];

    // Up: BGP and BFD with both nodes (BIRD's 1 s error wait absorbs the first
    // session's teardown when BGP comes up before its BFD session).
    ensure!(
        wait_for(Duration::from_secs(15), || sessions_up(&frr, &all, &nodes)
            .then_some(()))
        .is_some(),
        "sessions not up: Established {:?}, BFD up {:?}\n{}",
        frr.established(),
        frr.bfd_up(),
        diagnostics(&frr, &all)
    );

    // a announces: the router forwards the VIP to a.
    let a_ns = &lan.host("a").ns;
    let b_ns = &lan.host("b").ns;
    vip_route(a_ns, true, VIP_PREFIX)?;
    ensure!(
        wait_for(Duration::from_secs(3), || (frr.next_hops(VIP_PREFIX)
            == [ip(a_ip)])
        .then_some(()))
        .is_some(),
        "router FIB for {VIP_PREFIX}: {:?}, wanted [{a_ip}]\n{}",
        frr.next_hops(VIP_PREFIX),
        diagnostics(&frr, &all)
    );
    // IPv6 over the same (IPv4) session: the router installs a's link-local next hop.
    vip_route(a_ns, true, VIP6_PREFIX)?;
    ensure!(
        wait_for(Duration::from_secs(3), || (!frr
            .next_hops(VIP6_PREFIX)
            .is_empty())
        .then_some(()))
        .is_some(),
        "no IPv6 route {VIP6_PREFIX} at the router\n{}",
        diagnostics(&frr, &all)
    );

    // b announces too: one kernel route with both next hops.
    vip_route(b_ns, true, VIP_PREFIX)?;
    ensure!(
        wait_for(Duration::from_secs(3), || (frr.next_hops(VIP_PREFIX)
            == nodes)
            .then_some(()))
        .is_some(),
        "no ECMP at the router for {VIP_PREFIX}: {:?}\n{}",
        frr.next_hops(VIP_PREFIX),
        diagnostics(&frr, &all)
    );

    // The client reaches the VIP through the router, answered by a or b.
    let to = SocketAddr::from((VIP, PORT));
    let _ra = Responder::start(a_ns, to, "a")?;
    let _rb = Responder::start(b_ns, to, "b")?;
    let prober = Prober::start(&client, to, Duration::from_millis(2))?;
    ensure!(
        wait_for(Duration::from_secs(3), || (prober.answers_from("a")
            + prober.answers_from("b")
            >= 20)
            .then_some(()))
        .is_some(),
        "the client's UDP to {to} through the router was not answered\n{}",
        diagnostics(&frr, &all)
    );

    // a's link goes down: BFD (30 ms) and the router take a's next hop away.
    let t0 = Instant::now();
    a_ns.ip(&["link", "set", "eth0", "down"])?;
    let gone = wait_for(Duration::from_secs(5), || {
        (frr.next_hops(VIP_PREFIX) == [ip(b_ip)]).then(|| t0.elapsed())
    })
    .with_context(|| {
        format!(
            "a's next hop never left the router's FIB: {:?}\n{}",
            frr.next_hops(VIP_PREFIX),
            diagnostics(&frr, &all)
        )
    })?;
    eprintln!(
        "a's link down -> the router's FIB has only b: {} ms",
        gone.as_millis()
    );
    ensure!(
        gone <= Duration::from_millis(200),
        "a's next hop left the router's FIB after {} ms (> 200 ms)\n{}",
        gone.as_millis(),
        diagnostics(&frr, &all)
    );
    ensure!(
        prober.wait_answers("b", 50, Duration::from_secs(3)),
        "after a's link went down, b did not answer the client\n{}",
        diagnostics(&frr, &all)
    );
    prober.finish();
    Ok(())
}
