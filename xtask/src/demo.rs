//! `cargo xtask demo`: the main job on its embedded default.
//!
//! A bridge ("the switch") with two servers and a client, each in its own network
//! namespace; an agent on each server; the client probes the VIP every 10 ms and
//! we show who answers, fail over, and show it again with the counters.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use lab::{outage, Agent, Lan, Prober, Responder};

const VIP: &str = "10.0.0.50";
const PORT: u16 = 7007;

fn config(node: &str, role: &str) -> String {
    format!(
        "[node]\nname = \"{node}\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"{VIP}/24\"]\nrole = \"{role}\"\n"
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

    say("starting the agents: a active, b standby");
    let agent_a = Agent::start(&a.ns, "a", &config("a", "active"))?;
    let agent_b = Agent::start(&b.ns, "b", &config("b", "standby"))?;
    let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let _ra = Responder::start(&a.ns, to, "a")?;
    let _rb = Responder::start(&b.ns, to, "b")?;

    say("the client probes the VIP every 10 ms (UDP; the answer names the server)");
    let prober = Prober::start(&c.ns, to, Duration::from_millis(10))?;
    std::thread::sleep(Duration::from_millis(1500));
    show_neighbour(&lan)?;
    table("a", &agent_a)?;
    table("b", &agent_b)?;

    say("planned failover, make before break: `vip promote web` on b, then `vip demote web --forward-to <b>` on a");
    let b_mac = lan.host("b").mac.clone();
    cli(&agent_b, &["promote", "web"])?;
    cli(&agent_a, &["demote", "web", "--forward-to", &b_mac])?;
    std::thread::sleep(Duration::from_millis(1500));
    let probes = prober.finish();

    show_neighbour(&lan)?;
    let by = |n: &str| {
        probes
            .iter()
            .filter(|p| p.answered_by.as_deref() == Some(n))
            .count()
    };
    println!(
        "    probes sent {}, answered by a {}, by b {}, unanswered {}",
        probes.len(),
        by("a"),
        by("b"),
        probes.iter().filter(|p| p.answered_by.is_none()).count()
    );
    match outage(&probes, "a", "b") {
        Some(o) => println!(
            "    failover a -> b: outage {:.1} ms, {} probes lost",
            o.outage.as_secs_f64() * 1e3,
            o.lost
        ),
        None => bail!("the client never reached b after the failover"),
    }
    table("a", &agent_a)?;
    table("b", &agent_b)?;
    if by("b") == 0 {
        bail!("b never answered");
    }
    say("cleaning up: agents stopped, namespaces deleted");
    drop((agent_a, agent_b));
    drop(lan);
    say("demo done");
    Ok(())
}

fn say(s: &str) {
    println!("\n==> {}", s.replace("{VIP}", VIP));
}

fn cli(agent: &Agent, args: &[&str]) -> Result<()> {
    let out = agent.cli(args)?;
    print!(
        "    $ vip {}\n    {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    if !out.status.success() {
        bail!(
            "vip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
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
