//! `cargo xtask demo`: the main job on its embedded default.
//!
//! A bridge ("the switch") with two servers and a client, each in its own network
//! namespace; an elected agent on each server; the client probes the VIP every 5 ms.
//! Server a loses its link, b takes over; a comes back and preempts without a loss.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use lab::{outage, Agent, Lan, Prober, Responder};

const VIP: &str = "10.0.0.50";
const PORT: u16 = 7007;

/// Elected with the defaults (100 ms adverts), a preferred over b.
fn config(lan: &Lan, node: &str, peer: &str, priority: u8) -> String {
    format!(
        "[node]\nname = \"{node}\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"{VIP}/24\"]\npeers = [\"{}\"]\npriority = {priority}\n",
        lan.host(peer).ip4
    )
}

pub fn run(vip: &Path) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    std::env::set_var("VIP_BIN", vip);
    say("building the lab: switch (bridge), servers a and b, client c; VIP {VIP}");
    let mut lan = Lan::new(&["a", "b", "c"]).context("building the namespace lab")?;
    lan.enable_xdp_tx(&["a", "b"])?;
    let (a, b, c) = (lan.host("a"), lan.host("b"), lan.host("c"));
    println!(
        "    a  {}  {}\n    b  {}  {}\n    c  {}  {}",
        a.ip4, a.mac, b.ip4, b.mac, c.ip4, c.mac
    );

    say("starting the agents: elected (unicast adverts every 100 ms), a priority 200, b priority 100");
    let agent_a = Agent::start(&a.ns, "a", &config(&lan, "a", "b", 200))?;
    let agent_b = Agent::start(&b.ns, "b", &config(&lan, "b", "a", 100))?;
    let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let _ra = Responder::start(&a.ns, to, "a")?;
    let _rb = Responder::start(&b.ns, to, "b")?;
    wait_state(&agent_a, "active")?;

    say("the client probes the VIP every 5 ms (UDP; the answer names the server)");
    let prober = Prober::start(&c.ns, to, Duration::from_millis(5))?;
    std::thread::sleep(Duration::from_millis(1000));
    show_neighbour(&lan)?;
    table("a", &agent_a)?;
    table("b", &agent_b)?;

    say("failure: server a loses its link (ip link set eth0 down)");
    lan.host("a").ns.ip(&["link", "set", "eth0", "down"])?;
    wait_state(&agent_b, "active")?;
    std::thread::sleep(Duration::from_millis(1000));
    let probes = prober.finish();
    show_neighbour(&lan)?;
    report(&probes, "a", "b")?;
    table("b", &agent_b)?;

    say("repair: a's link comes back; a (priority 200) preempts, b hands its stale-cache traffic over");
    let prober = Prober::start(&c.ns, to, Duration::from_millis(5))?;
    std::thread::sleep(Duration::from_millis(300));
    lan.host("a").ns.ip(&["link", "set", "eth0", "up"])?;
    wait_state(&agent_a, "active")?;
    std::thread::sleep(Duration::from_millis(1000));
    let probes = prober.finish();
    show_neighbour(&lan)?;
    report(&probes, "b", "a")?;
    table("a", &agent_a)?;
    table("b", &agent_b)?;

    say("cleaning up: agents stopped, namespaces deleted");
    drop((agent_a, agent_b));
    drop(lan);
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
