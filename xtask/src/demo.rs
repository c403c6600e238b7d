//! `cargo xtask demo`: the main job on its embedded default.
//!
//! A bridge ("the switch") with two servers, a client and a gateway, each in its own
//! network namespace, and an "internet" host behind the gateway. The servers elect the
//! active; the gateway maps an elastic IP onto the VIP. The client probes the VIP and
//! the internet host the elastic IP, every 5 ms. Server a loses its link, b takes over;
//! a comes back and preempts without a loss.
//!
//! Act 2, active/active: the servers' agents restart with a balanced group on a
//! second VIP, over a, b and a third server d; the client's flows spread over the
//! three; d's agent is killed and only d's flows move.
//!
//! Act 3, beyond one segment: a router (FRR) between the servers and a client on
//! another subnet; the VIP is announced over BGP by the active's own BIRD, with BFD;
//! the active's link goes down and the router follows within BFD's time.
//!
//! Act 4, anycast: the same routed lab with a balanced group over a, b and d, every
//! member announcing the VIP, b on a segment of its own behind the router (reached
//! through the tunnel); the client's TCP connections spread over them by the
//! router's ECMP; d's link goes down, the router rehashes, and every connection to a
//! and b is kept.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lab::{outage, Agent, Lan, Netns, Prober, Responder};

const VIP: &str = "10.0.0.50";
const EIP: &str = "203.0.113.10";
const PORT: u16 = 7007;
/// Act 2's balanced VIP: UDP flows to PORT, TCP connections to TCP_PORT.
const VIP2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 60);
const TCP_PORT: u16 = 8080;
const FLOWS: u16 = 300;
const FIRST_SPORT: u16 = 20_000;
const CONNECTIONS: usize = 12;
/// Act 2's servers, by priority: a directs.
const MEMBERS: [(&str, u8); 3] = [("a", 200), ("b", 150), ("d", 100)];

/// The gateway: the elastic IP of the VIP, whose owner is learned from a's and b's ARP
/// only (their MACs are the lab's, known once it is built).
fn gateway_config(lan: &Lan) -> String {
    format!(
        "[node]\nname = \"g\"\ninterface = \"eth0\"\n\n[[eip]]\naddress = \"{EIP}\"\nvip = \"{VIP}\"\nexternal_interface = \"eth1\"\ninternal_interface = \"eth0\"\nnodes = [\"{}\", \"{}\"]\n",
        lan.host("a").mac,
        lan.host("b").mac
    )
}

/// Elected with the defaults (100 ms adverts), a preferred over b.
fn config(lan: &Lan, node: &str, peer: &str, priority: u8) -> String {
    format!(
        "[node]\nname = \"{node}\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"{VIP}/24\"]\npeers = [\"{}\"]\npriority = {priority}\n",
        lan.host(peer).ip4
    )
}

/// The balanced group: elected like `web` (a directs), `balance = {}` spreads every
/// TCP and UDP flow to VIP2 over every member heard.
fn balanced_config(lan: &Lan, node: &str, priority: u8) -> String {
    let peers: Vec<String> = MEMBERS
        .iter()
        .filter(|(n, _)| *n != node)
        .map(|(n, _)| format!("\"{}\"", lan.host(n).ip4))
        .collect();
    format!(
        "[node]\nname = \"{node}\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"api\"\nvips = [\"{VIP2}/24\"]\npeers = [{}]\npriority = {priority}\nbalance = {{}}\n",
        peers.join(", ")
    )
}

pub fn run(vip: &Path) -> Result<()> {
    if nix::unistd::geteuid().as_raw() != 0 {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    std::env::set_var("VIP_BIN", vip);
    say("building the lab: a switch (bridge) with servers a and b, client c and gateway g; internet host i behind g");
    // d, act 2's third server, is on the switch from the start (idle until then).
    let mut lan = Lan::new(&["a", "b", "c", "g", "d"]).context("building the namespace lab")?;
    lan.enable_xdp_tx(&["a", "b", "g", "d"])?;
    let inet = lan.internet("g", &["a", "b"])?;
    let (a, b, c, g) = (lan.host("a"), lan.host("b"), lan.host("c"), lan.host("g"));
    println!(
        "    a  {}  {}\n    b  {}  {}\n    c  {}  {}\n    g  {}  (198.51.100.1 towards i)\n    i  198.51.100.10\n    VIP {VIP}; elastic IP {EIP} on g",
        a.ip4, a.mac, b.ip4, b.mac, c.ip4, c.mac, g.ip4
    );

    say("starting the agents: a (priority 200) and b (100) elect the active with unicast adverts every 100 ms; g maps the elastic IP onto the VIP and follows a's and b's ARP only");
    let agent_a = Agent::start(&a.ns, "a", &config(&lan, "a", "b", 200))?;
    let agent_b = Agent::start(&b.ns, "b", &config(&lan, "b", "a", 100))?;
    let agent_g = Agent::start(&g.ns, "g", &gateway_config(&lan))?;
    let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let eip: SocketAddr = format!("{EIP}:{PORT}").parse()?;
    let _ra = Responder::start(&a.ns, to, "a")?;
    let _rb = Responder::start(&b.ns, to, "b")?;
    wait_state(&agent_a, "active")?;

    say("c probes the VIP and i probes the elastic IP every 5 ms (UDP; the answer names the server)");
    let prober = Prober::start(&c.ns, to, Duration::from_millis(5))?;
    let eprober = Prober::start(&inet, eip, Duration::from_millis(5))?;
    std::thread::sleep(Duration::from_millis(1000));
    show_neighbour(&lan)?;
    table("a", &agent_a)?;
    table("b", &agent_b)?;
    table("g", &agent_g)?;

    say("failure: server a loses its link (ip link set eth0 down)");
    lan.host("a").ns.ip(&["link", "set", "eth0", "down"])?;
    wait_state(&agent_b, "active")?;
    std::thread::sleep(Duration::from_millis(1000));
    let (probes, eprobes) = (prober.finish(), eprober.finish());
    show_neighbour(&lan)?;
    println!("    c -> VIP:");
    report(&probes, "a", "b")?;
    println!("    internet -> elastic IP (g learned b from its gratuitous ARP):");
    report(&eprobes, "a", "b")?;
    table("b", &agent_b)?;
    table("g", &agent_g)?;

    say("repair: a's link comes back; a (priority 200) preempts, b hands its stale-cache traffic over");
    let prober = Prober::start(&c.ns, to, Duration::from_millis(5))?;
    let eprober = Prober::start(&inet, eip, Duration::from_millis(5))?;
    std::thread::sleep(Duration::from_millis(300));
    lan.host("a").ns.ip(&["link", "set", "eth0", "up"])?;
    // Taking the link down flushed a's routes; its default route (via g) comes back
    // as a network manager would restore it.
    let gw = lan.host("g").ip4.to_string();
    lan.host("a")
        .ns
        .ip(&["route", "replace", "default", "via", &gw])?;
    wait_state(&agent_a, "active")?;
    std::thread::sleep(Duration::from_millis(1000));
    let (probes, eprobes) = (prober.finish(), eprober.finish());
    show_neighbour(&lan)?;
    println!("    c -> VIP:");
    report(&probes, "b", "a")?;
    println!("    internet -> elastic IP:");
    report(&eprobes, "b", "a")?;
    table("a", &agent_a)?;
    table("b", &agent_b)?;
    table("g", &agent_g)?;

    // The standby first: the active's handover then has no successor to wait for.
    drop(agent_b);
    drop(agent_a);
    active_active(&lan)?;

    say("cleaning up: agents stopped, namespaces deleted");
    drop(agent_g);
    drop(lan);
    drop(inet);
    beyond_one_segment()?;
    anycast()?;
    say("demo done");
    Ok(())
}

/// Act 3: a VIP on no subnet of the lab, announced over BGP by the active (its own
/// BIRD) to a router running FRR, BFD at 10 ms x 3; a client behind the router; the
/// active's link goes down and the router's BFD moves the traffic to the new active.
fn beyond_one_segment() -> Result<()> {
    use lab::routed::{Options, Routed, PREFIX, VIP};
    say("act 3, beyond one segment: a new lab with router r (FRR) between servers a, b and a client c on another subnet; the group's VIP is on no subnet of the lab and is announced over BGP (announce = \"bgp\") by the active's own BIRD, BFD at 10 ms x 3");
    let lab = Routed::start(&Options::default())?;
    println!(
        "    r  {} (AS 65000)  towards c: 198.51.100.1\n    a  {} (AS 65001)\n    b  {} (AS 65002)\n    c  198.51.100.10\n    VIP {VIP}",
        lab.lan.host("r").ip4,
        lab.lan.host("a").ip4,
        lab.lan.host("b").ip4,
    );
    let text = |name: &str| -> Result<String> {
        let out = lab.agent(name).cli(&["status"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("BGP:"))
            .map(|l| format!("    {name}: {}", l.trim()))
            .collect::<Vec<_>>()
            .join("\n"))
    };
    println!("{}\n{}", text("a")?, text("b")?);
    println!("    the router's FIB: {PREFIX} via {:?}", lab.hops());
    say("c probes the VIP every millisecond through the router; then server a loses its link");
    let prober = lab.probe(true)?;
    lab.lan.host("a").ns.ip(&["link", "set", "eth0", "down"])?;
    lab.wait_routed(&["b"], "after a's link went down")?;
    if !prober.wait_answers("b", 100, Duration::from_secs(5)) {
        bail!("the client never reached b through the router");
    }
    let probes = prober.finish();
    report(&probes, "a", "b")?;
    println!(
        "    the router's FIB: {PREFIX} via {:?} (BFD saw a go; b announced when it took over)",
        lab.hops()
    );
    println!("{}", text("b")?);
    say("cleaning up act 3: agents, BIRD, FRR, namespaces");
    drop(lab);
    Ok(())
}

/// Act 4: the VIP announced over BGP by every member of a balanced group (anycast)
/// a, b and d, b on another segment; the router spreads connections over them by
/// ECMP; d's link goes down, the router rehashes, and every connection to a and b is
/// kept.
fn anycast() -> Result<()> {
    use lab::routed::{Options, Routed, PREFIX, VIP};
    const N: usize = 60;
    say("act 4, anycast: a new routed lab; the group `web` on a, b and d has `balance = {}` with announce = \"bgp\": every member announces the VIP, and the router spreads flows over them by ECMP; b sits on a segment of its own behind the router, and it and the director (a) hand each other packets inside IPIP, which their XDP programs take apart");
    let lab = Routed::start(&Options {
        nodes: vec!["a", "b", "d"],
        segments: vec!["b"],
        group: "balance = {}".into(),
        ..Options::default()
    })?;
    println!("    the router's FIB: {PREFIX} via {:?}", lab.hops());
    for n in ["a", "b", "d"] {
        tcp_server(&lab.lan.host(n).ns, n, VIP)?;
    }
    say(&format!(
        "c opens {N} TCP connections to {VIP}:{TCP_PORT} through the router; every answer names its server"
    ));
    let mut conns = Vec::new();
    for _ in 0..N {
        let c = Conn::open(&lab.client, VIP)?;
        c.stream
            .set_read_timeout(Some(Duration::from_millis(500)))?;
        conns.push(c);
    }
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for conn in &conns {
        *by.entry(conn.server.clone()).or_default() += 1;
    }
    println!("    TCP connections per server: {}", shares(&by, N));
    let tunnelled = |n: &str| {
        lab.agent(n)
            .status()
            .ok()
            .and_then(|s| s["global"]["tunnel_encapsulated"].as_u64())
            .unwrap_or(0)
    };
    println!(
        "    through the tunnel so far: a -> b {} packets, b -> a {} (each new flow the router hands b goes to the director and back)",
        tunnelled("a"),
        tunnelled("b")
    );
    println!(
        "    each member serves its own connections in XDP (a socket lookup) without the director; what a rehash brings to a member that does not hold it goes to the director (a), whose connection table sends it on"
    );
    say("failure: server d loses its link; BFD tells the router, which rehashes the flows over a and b");
    let down = Instant::now();
    lab.lan.host("d").ns.ip(&["link", "set", "eth0", "down"])?;
    lab.wait_routed(&["a", "b"], "after d's link went down")?;
    println!(
        "    the router's FIB: {PREFIX} via {:?} after {:.0} ms",
        lab.hops(),
        down.elapsed().as_secs_f64() * 1e3
    );
    let (mut kept, mut on_d, mut broken) = (0, 0, Vec::new());
    for conn in &mut conns {
        let answer = conn.round_trip();
        if conn.server == "d" {
            on_d += 1;
        } else if answer.as_ref().ok() == Some(&conn.server) {
            kept += 1;
        } else {
            broken.push(format!("{} -> {answer:?}", conn.server));
        }
    }
    if !broken.is_empty() {
        bail!("connections to surviving members broke: {broken:?}");
    }
    println!(
        "    TCP: {kept} of {kept} connections to a and b still answered by the same server (plain ECMP kept only 72-79 % when a member left, in the anycast test); d's {on_d} went with d"
    );
    say("cleaning up act 4: agents, BIRD, FRR, namespaces");
    drop(lab);
    Ok(())
}

fn wait_state(agent: &Agent, want: &str) -> Result<()> {
    let ok = lab::wait_for(Duration::from_secs(10), || {
        let s = agent.status().ok()?;
        (s["groups"][0]["state"] == want).then_some(())
    });
    ok.with_context(|| {
        format!(
            "{} never became {want}:\n{}",
            agent.proc.name,
            agent.log_text()
        )
    })
}

fn report(probes: &[lab::Probe], from: &str, to: &str) -> Result<()> {
    let by = |n: &str| {
        probes
            .iter()
            .filter(|p| p.answered_by.as_deref() == Some(n))
            .count()
    };
    println!(
        "    probes sent {}, answered by {from} {}, by {to} {}, unanswered {}",
        probes.len(),
        by(from),
        by(to),
        probes.iter().filter(|p| p.answered_by.is_none()).count()
    );
    match outage(probes, from, to) {
        Some(o) => println!(
            "    {from} -> {to}: outage {:.1} ms, {} probes lost",
            o.outage.as_secs_f64() * 1e3,
            o.lost
        ),
        None => bail!("the client never reached {to}"),
    }
    Ok(())
}

fn say(s: &str) {
    println!("\n==> {}", s.replace("{VIP}", VIP));
}

fn table(name: &str, agent: &Agent) -> Result<()> {
    let out = agent.cli(&["status"])?;
    println!("    --- vip status on {name} ---");
    for l in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("warning"))
    {
        println!("    {l}");
    }
    Ok(())
}

fn show_neighbour(lan: &Lan) -> Result<()> {
    let c = lan.host("c");
    let n = c.ns.ip(&["neigh", "show", VIP, "dev", "eth0"])?;
    let owner = if n.contains(&lan.host("a").mac) {
        "a"
    } else if n.contains(&lan.host("b").mac) {
        "b"
    } else {
        "?"
    };
    println!(
        "    client's neighbour entry: {} (server {owner})",
        n.trim()
    );
    Ok(())
}

/// Act 2: a balanced group over a, b and d; the client's flows spread over them; d's
/// agent dies and only d's flows move.
fn active_active(lan: &Lan) -> Result<()> {
    let d = lan.host("d");
    say(&format!(
        "act 2, active/active: the agents on a and b restart with a group `api` on a second VIP, {VIP2}, with `balance = {{}}`, over a, b and a third server d ({}  {})",
        d.ip4, d.mac
    ));
    let mut agents = Vec::new();
    for (name, prio) in MEMBERS {
        agents.push(Agent::start(
            &lan.host(name).ns,
            name,
            &balanced_config(lan, name, prio),
        )?);
    }
    let director = &agents[0];
    wait_state(director, "active")?;
    members_up(director, MEMBERS.len())?;
    println!(
        "    a (priority 200) is the director: it answers ARP for {VIP2} and hands each new flow
    to a member by a Maglev hash of the 5-tuple (MAC rewrite, XDP_TX); b and d send member
    adverts every 100 ms and hold the VIP on lo; every member answers the client directly"
    );

    let udp: SocketAddr = (VIP2, PORT).into();
    let mut servers = Vec::new();
    for (name, _) in MEMBERS {
        let ns = &lan.host(name).ns;
        servers.push(Responder::start(ns, udp, name)?);
        tcp_server(ns, name, VIP2)?;
    }
    let c = &lan.host("c").ns;
    say(&format!(
        "c opens {FLOWS} UDP flows to {VIP2}:{PORT} (source ports {FIRST_SPORT}-{}) and {CONNECTIONS} TCP connections to :{TCP_PORT}; every answer names its server",
        FIRST_SPORT + FLOWS - 1
    ));
    let before = ask_flows(c)?;
    let unanswered = before.iter().filter(|a| a.is_none()).count();
    if unanswered > 0 {
        bail!(
            "{unanswered} of {FLOWS} flows were not answered; director's status:\n{}",
            director.status()?["groups"][0]
        );
    }
    let spread = count(&before);
    println!(
        "    UDP flows per server: {}",
        shares(&spread, FLOWS as usize)
    );
    for (name, _) in MEMBERS {
        if spread.get(name).copied().unwrap_or(0) == 0 {
            bail!("member {name} got none of the {FLOWS} flows: {spread:?}");
        }
    }
    let counted = director_flows(lan, director)?;
    check_counts("the director's flow counters", &counted, &spread)?;
    println!("    the director counted the same per member (vip status, below)");

    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(Conn::open(c, VIP2)?);
    }
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for conn in &conns {
        *by.entry(conn.server.clone()).or_default() += 1;
    }
    println!(
        "    TCP connections per server: {}",
        shares(&by, CONNECTIONS)
    );
    table("a (the director)", director)?;

    say("failure: d's agent dies (SIGKILL); d's server still runs, but d sends no more member adverts");
    let counted = director_flows(lan, director)?;
    let killed = Instant::now();
    agents[2].proc.signal(nix::sys::signal::Signal::SIGKILL)?;
    members_up(director, MEMBERS.len() - 1)?;
    println!(
        "    the director dropped d from its table {} ms after the kill (3 adverts missed)",
        killed.elapsed().as_millis()
    );

    say("c asks the same flows again");
    let after = ask_flows(c)?;
    let (mut kept, mut moved_to) = (0usize, BTreeMap::<String, usize>::new());
    for (i, (was, now)) in before.iter().zip(&after).enumerate() {
        let (Some(was), Some(now)) = (was, now) else {
            bail!(
                "flow {} (source port {}) was not answered after the failure",
                i,
                FIRST_SPORT as usize + i
            );
        };
        if was == "d" {
            if now == "d" {
                bail!(
                    "flow from port {} still reached d, which left",
                    FIRST_SPORT as usize + i
                );
            }
            *moved_to.entry(now.clone()).or_default() += 1;
        } else if was != now {
            bail!(
                "flow from port {} moved from {was} to {now}: only d's flows may move",
                FIRST_SPORT as usize + i
            );
        } else {
            kept += 1;
        }
    }
    let moved: usize = moved_to.values().sum();
    println!(
        "    d's {moved} flows moved: {}; of the {} flows on a and b, {kept} stayed, 0 moved",
        moved_to
            .iter()
            .map(|(n, k)| format!("{k} to {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        FLOWS as usize - moved
    );
    println!(
        "    UDP flows per server now: {}",
        shares(&count(&after), FLOWS as usize)
    );
    // d's flows are new flows for their new members; the others hit the director's
    // connection table.
    let now = director_flows(lan, director)?;
    let grew: BTreeMap<String, usize> = now
        .iter()
        .map(|(n, f)| {
            (
                n.clone(),
                f.saturating_sub(counted.get(n).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, f)| *f > 0)
        .collect();
    check_counts(
        "the director's new flows after the failure",
        &grew,
        &moved_to,
    )?;

    let (mut alive, mut on_d, mut reset, mut broken) = (0, 0, 0, Vec::new());
    for conn in &mut conns {
        let answer = conn.round_trip();
        if conn.server == "d" {
            on_d += 1;
            // Their packets now reach a member without the connection.
            if answer.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset) {
                reset += 1;
            }
        } else if answer.as_ref().ok() == Some(&conn.server) {
            alive += 1;
        } else {
            broken.push(format!("{} -> {answer:?}", conn.server));
        }
    }
    if !broken.is_empty() {
        bail!("connections to surviving members broke: {broken:?}");
    }
    println!(
        "    TCP: {alive} of {alive} connections to a and b still answered by the same server; of d's {on_d}, {reset} reset by the member that got their packets"
    );
    table("a (the director)", director)?;
    drop(servers);
    // Members first: the director then has no successor to hand over to and wait for.
    while let Some(agent) = agents.pop() {
        drop(agent);
    }
    Ok(())
}

/// Waits until the director's table holds `n` healthy members.
fn members_up(director: &Agent, n: usize) -> Result<()> {
    let ok = lab::wait_for(Duration::from_secs(5), || {
        let s = director.status().ok()?;
        let up = s["groups"][0]["balance"]["members"]
            .as_array()?
            .iter()
            .filter(|m| m["healthy"] == true)
            .count();
        (up == n).then_some(())
    });
    ok.with_context(|| {
        format!(
            "the director never had {n} members: {}",
            director
                .status()
                .map(|s| s["groups"][0]["balance"].to_string())
                .unwrap_or_default()
        )
    })
}

/// Who answers each flow (one per source port from FIRST_SPORT); None: nobody.
/// An answer must come from the VIP (direct server return).
fn ask_flows(ns: &Netns) -> Result<Vec<Option<String>>> {
    ns.run_in(|| {
        let to: SocketAddr = (VIP2, PORT).into();
        let mut answers = Vec::new();
        for i in 0..FLOWS {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, FIRST_SPORT + i))
                .with_context(|| format!("binding source port {}", FIRST_SPORT + i))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut answer = None;
            // A second try: one lost datagram is not a lost flow.
            for _ in 0..2 {
                s.send_to(&u64::from(i).to_be_bytes(), to)?;
                let mut buf = [0u8; 64];
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    if from != to {
                        bail!("flow {i} was answered from {from}, not from the VIP");
                    }
                    // The responder echoes the 8 bytes, then says its name.
                    answer = Some(String::from_utf8_lossy(&buf[8.min(n)..n]).into_owned());
                    break;
                }
            }
            answers.push(answer);
        }
        Ok(answers)
    })
}

fn count(answers: &[Option<String>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers.iter().flatten() {
        *m.entry(a.clone()).or_default() += 1;
    }
    m
}

/// "a 98 (32.7%), b 104 (34.7%), d 98 (32.7%)".
fn shares(by: &BTreeMap<String, usize>, total: usize) -> String {
    by.iter()
        .map(|(n, k)| format!("{n} {k} ({:.1}%)", *k as f64 * 100.0 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The director's flow counter per member, by server name.
fn director_flows(lan: &Lan, director: &Agent) -> Result<BTreeMap<String, usize>> {
    let s = director.status()?;
    let members = s["groups"][0]["balance"]["members"]
        .as_array()
        .context("the director's status has no balance members")?;
    let mut m = BTreeMap::new();
    for member in members {
        let address = member["address"].as_str().unwrap_or_default();
        let Some((name, _)) = MEMBERS
            .iter()
            .find(|(n, _)| lan.host(n).ip4.to_string() == address)
        else {
            bail!("the director lists an unknown member {address}");
        };
        m.insert(
            name.to_string(),
            member["flows"].as_u64().unwrap_or_default() as usize,
        );
    }
    Ok(m)
}

/// The director's counters must say what the client saw, member by member.
fn check_counts(
    what: &str,
    counted: &BTreeMap<String, usize>,
    seen: &BTreeMap<String, usize>,
) -> Result<()> {
    let counted: BTreeMap<&String, &usize> = counted.iter().filter(|(_, k)| **k > 0).collect();
    let seen: BTreeMap<&String, &usize> = seen.iter().collect();
    if counted != seen {
        bail!("{what} {counted:?} disagree with the client's answers {seen:?}");
    }
    Ok(())
}

/// A TCP server on `vip` (act 2's VIP2, act 4's routed VIP) that answers every line
/// with its name.
fn tcp_server(ns: &Netns, name: &'static str, vip: Ipv4Addr) -> Result<()> {
    let l = ns
        .run_in(|| TcpListener::bind((vip, TCP_PORT)))
        .with_context(|| format!("binding {vip}:{TCP_PORT} in {}", ns.name))?;
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut w) = c.try_clone() else { return };
                for line in BufReader::new(c).lines() {
                    if line.is_err() || writeln!(w, "{name}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(())
}

/// A long-lived TCP connection from the client and the server that answered first.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    server: String,
}

impl Conn {
    fn open(ns: &Netns, vip: Ipv4Addr) -> Result<Self> {
        let to: SocketAddr = (vip, TCP_PORT).into();
        let stream = ns
            .run_in(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))
            .with_context(|| format!("connecting to {to}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut conn = Conn {
            stream,
            reader,
            server: String::new(),
        };
        conn.server = conn
            .round_trip()
            .with_context(|| format!("no answer on a new connection to {to}"))?;
        Ok(conn)
    }

    /// One line there and back: the name of the server at the other end.
    fn round_trip(&mut self) -> std::io::Result<String> {
        writeln!(self.stream, "ping")?;
        let mut s = String::new();
        if self.reader.read_line(&mut s)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(s.trim().to_string())
    }
}
