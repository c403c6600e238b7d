//! `cargo xtask demo`: the main job on its embedded default.
//!
//! A bridge ("the switch") with two servers, a client and a gateway, each in its own
//! network namespace, and an "internet" host behind the gateway. The servers elect the
//! active; the gateway maps an elastic IP onto the VIP. The client probes the VIP and
//! the internet host the elastic IP, every 5 ms. Server a loses its link, b takes over;
//! a comes back and preempts without a loss.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use lab::{outage, Agent, Lan, Prober, Responder};

const VIP: &str = "10.0.0.50";
const EIP: &str = "203.0.113.10";
const PORT: u16 = 7007;
const GATEWAY: &str = "[node]\nname = \"g\"\ninterface = \"eth0\"\n\n[[eip]]\naddress = \"203.0.113.10\"\nvip = \"10.0.0.50\"\nexternal_interface = \"eth1\"\ninternal_interface = \"eth0\"\n";

/// Elected with the defaults (100 ms adverts), a preferred over b.
fn config(lan: &Lan, node: &str, peer: &str, priority: u8) -> String {
    format!(
        "[node]\nname = \"{node}\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"{VIP}/24\"]\npeers = [\"{}\"]\npriority = {priority}\n",
        lan.host(peer).ip4
    )
}

pub fn run(vip: &Path) -> Result<()> {
    if nix::unistd::geteuid().as_raw() != 0 {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    std::env::set_var("VIP_BIN", vip);
    say("building the lab: a switch (bridge) with servers a and b, client c and gateway g; internet host i behind g");
    let mut lan = Lan::new(&["a", "b", "c", "g"]).context("building the namespace lab")?;
    lan.enable_xdp_tx(&["a", "b", "g"])?;
    let inet = lan.internet("g", &["a", "b"])?;
    let (a, b, c, g) = (lan.host("a"), lan.host("b"), lan.host("c"), lan.host("g"));
    println!(
        "    a  {}  {}\n    b  {}  {}\n    c  {}  {}\n    g  {}  (198.51.100.1 towards i)\n    i  198.51.100.10\n    VIP {VIP}; elastic IP {EIP} on g",
        a.ip4, a.mac, b.ip4, b.mac, c.ip4, c.mac, g.ip4
    );

    say("starting the agents: a (priority 200) and b (100) elect the active with unicast adverts every 100 ms; g maps the elastic IP onto the VIP");
    let agent_a = Agent::start(&a.ns, "a", &config(&lan, "a", "b", 200))?;
    let agent_b = Agent::start(&b.ns, "b", &config(&lan, "b", "a", 100))?;
    let agent_g = Agent::start(&g.ns, "g", GATEWAY)?;
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

    say("cleaning up: agents stopped, namespaces deleted");
    drop((agent_a, agent_b, agent_g));
    drop(lan);
    drop(inet);
    say("demo done");
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
