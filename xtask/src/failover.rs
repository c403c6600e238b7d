//! `cargo xtask bench failover`: how long clients lose the VIP when the active server
//! fails, for vip and for keepalived (VRRP unicast) in the same run.
//!
//! The demo's topology: servers a (priority 200) and b (100) on a bridge, a client c
//! probing the VIP every millisecond over UDP; whichever server is active answers with
//! its name. Faults on a: SIGKILL of the HA process, SIGSTOP of it (hung), its link
//! down, and a planned handover (`vip demote` / SIGTERM of keepalived). The outage is
//! the time from the last answer by a to the first by b; lost probes are those sent in
//! between that nobody answered.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lab::{outage, wait_for, Agent, Lan, Prober, Proc, Responder};
use nix::sys::signal::Signal;
use serde_json::json;

const VIP: &str = "10.0.0.50";
const PORT: u16 = 7007;
const PROBE: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Vip,
    Keepalived,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
    LinkDown,
    Planned,
}

impl Fault {
    const ALL: [Fault; 4] = [Fault::Kill, Fault::Stop, Fault::LinkDown, Fault::Planned];

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL",
            Fault::Stop => "SIGSTOP (hung)",
            Fault::LinkDown => "link down",
            Fault::Planned => "planned",
        }
    }
}

/// One measured failover.
#[derive(Debug, Clone)]
struct Sample {
    outage_ms: f64,
    lost: usize,
}

/// Runs the benchmark; returns its JSON record. `quick`: one vip run, for CI smoke.
pub fn run(vip: &Path, quick: bool, runs: usize) -> Result<serde_json::Value> {
    std::env::set_var("VIP_BIN", vip);
    let mut lan = Lan::new(&["a", "b", "c"]).context("building the lab")?;
    lan.enable_xdp_tx(&["a", "b"])?;
    let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let _ra = Responder::start(&lan.host("a").ns, to, "a")?;
    let _rb = Responder::start(&lan.host("b").ns, to, "b")?;

    let mut plan: Vec<(Impl, u64, Fault)> = Vec::new();
    if quick {
        plan.push((Impl::Vip, 10, Fault::Planned));
        plan.push((Impl::Vip, 10, Fault::Kill));
    } else {
        for interval in [1000, 100, 10] {
            for f in Fault::ALL {
                plan.push((Impl::Vip, interval, f));
            }
        }
        for interval in [1000, 10] {
            for f in Fault::ALL {
                plan.push((Impl::Keepalived, interval, f));
            }
        }
    }
    let runs = if quick { 1 } else { runs.max(1) };
    let mut rows = Vec::new();
    for (imp, interval, fault) in plan {
        let mut samples = Vec::new();
        for i in 0..runs {
            let s = run_once(&lan, imp, interval, fault)
                .with_context(|| format!("{imp:?} {interval} ms {} run {}", fault.name(), i + 1))?;
            eprintln!(
                "[bench failover] {:<10} {:>5} ms  {:<15} run {}: outage {:>8.1} ms, lost {}",
                format!("{imp:?}").to_lowercase(),
                interval,
                fault.name(),
                i + 1,
                s.outage_ms,
                s.lost
            );
            samples.push(s);
        }
        rows.push((imp, interval, fault, samples));
    }
    drop(lan);
    print!("{}", table(&rows));
    Ok(json!({
        "benchmark": "failover",
        "probe_interval_ms": PROBE.as_millis() as u64,
        "runs": runs,
        "rows": rows.iter().map(|(imp, interval, fault, s)| {
            let (o, l) = stats(s);
            json!({
                "impl": format!("{imp:?}").to_lowercase(),
                "advert_interval_ms": interval,
                "fault": fault.name(),
                "outage_ms": {"min": o.0, "median": o.1, "max": o.2},
                "lost": {"min": l.0, "median": l.1, "max": l.2},
                "samples": s.iter().map(|x| json!({"outage_ms": x.outage_ms, "lost": x.lost})).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
    }))
}

fn stats(s: &[Sample]) -> ((f64, f64, f64), (usize, usize, usize)) {
    let mut o: Vec<f64> = s.iter().map(|x| x.outage_ms).collect();
    let mut l: Vec<usize> = s.iter().map(|x| x.lost).collect();
    o.sort_by(|a, b| a.total_cmp(b));
    l.sort();
    let mid = s.len() / 2;
    (
        (o[0], o[mid], o[o.len() - 1]),
        (l[0], l[mid], l[l.len() - 1]),
    )
}

fn table(rows: &[(Impl, u64, Fault, Vec<Sample>)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n{:<11} {:>9}  {:<15} {:>28}  {:>14}",
        "impl", "advert", "fault", "outage ms (min / med / max)", "lost (med/max)"
    );
    for (imp, interval, fault, s) in rows {
        let (o, l) = stats(s);
        let _ = writeln!(
            t,
            "{:<11} {:>6} ms  {:<15} {:>8.1} / {:>7.1} / {:>7.1}  {:>7} / {:<5}",
            format!("{imp:?}").to_lowercase(),
            interval,
            fault.name(),
            o.0,
            o.1,
            o.2,
            l.1,
            l.2
        );
    }
    t
}

/// Every run starts clean: the client knows no MAC for the VIP, and the address a
/// killed keepalived left on a server's interface is gone.
fn start_clean(lan: &Lan) -> Result<()> {
    lan.host("c").ns.ip(&["neigh", "flush", "dev", "eth0"])?;
    for h in ["a", "b"] {
        let _ = lan
            .host(h)
            .ns
            .ip(&["addr", "del", &format!("{VIP}/32"), "dev", "eth0"]);
    }
    Ok(())
}

/// Brings a up as active and b as standby, probes, injects the fault, measures.
fn run_once(lan: &Lan, imp: Impl, interval: u64, fault: Fault) -> Result<Sample> {
    let c = lan.host("c");
    start_clean(lan)?;
    let mut nodes = match imp {
        Impl::Vip => Nodes::vip(lan, interval)?,
        Impl::Keepalived => Nodes::keepalived(lan, interval)?,
    };
    let settle = Duration::from_millis(interval * 5 + 2000);
    if wait_for(settle, || nodes.a_active(lan).then_some(())).is_none() {
        bail!("a never became active");
    }
    let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let prober = Prober::start(&c.ns, to, PROBE)?;
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    nodes.inject(lan, fault)?;
    // Wait until b has answered for a while (or give up).
    let limit = Duration::from_millis(interval * 6 + 3000);
    while t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
        if nodes.b_active(lan) && t0.elapsed() > Duration::from_millis(400) {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let probes = prober.finish();
    nodes.restore(lan)?;
    drop(nodes);
    let o = outage(&probes, "a", "b").context("the client never reached b")?;
    Ok(Sample {
        outage_ms: o.outage.as_secs_f64() * 1e3,
        lost: o.lost,
    })
}

/// The two HA nodes of one run.
struct Nodes {
    imp: Impl,
    a: Option<Agent>,
    b: Option<Agent>,
    ka: Vec<Proc>,
    dir: std::path::PathBuf,
    stopped: Vec<i32>,
    link_down: bool,
}

impl Nodes {
    fn vip(lan: &Lan, interval: u64) -> Result<Self> {
        let cfg = |me: &str, peer: &str, prio: u8| {
            format!(
                "[node]\nname = \"{me}\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"{VIP}/24\"]\npeers = [\"{}\"]\npriority = {prio}\nadvert_interval_ms = {interval}\n",
                lan.host(peer).ip4
            )
        };
        let a = Agent::start(&lan.host("a").ns, "a", &cfg("a", "b", 200))?;
        let b = Agent::start(&lan.host("b").ns, "b", &cfg("b", "a", 100))?;
        Ok(Nodes {
            imp: Impl::Vip,
            a: Some(a),
            b: Some(b),
            ka: Vec::new(),
            dir: Default::default(),
            stopped: Vec::new(),
            link_down: false,
        })
    }

    fn keepalived(lan: &Lan, interval: u64) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("vip-bench-ka-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut ka = Vec::new();
        for (me, peer, prio) in [("a", "b", 200), ("b", "a", 100)] {
            let conf = format!(
                "global_defs {{\n router_id {me}\n vrrp_version 3\n}}\nvrrp_instance VI_1 {{\n state BACKUP\n interface eth0\n virtual_router_id 51\n priority {prio}\n advert_int {}\n unicast_src_ip {}\n unicast_peer {{\n  {}\n }}\n virtual_ipaddress {{\n  {VIP}/32 dev eth0\n }}\n}}\n",
                interval as f64 / 1000.0,
                lan.host(me).ip4,
                lan.host(peer).ip4
            );
            let path = dir.join(format!("{me}.conf"));
            std::fs::write(&path, conf)?;
            let pid = |k: &str| dir.join(format!("{k}-{me}.pid")).display().to_string();
            let mut cmd = lan.host(me).ns.command(&[
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--vrrp",
                "--no-syslog",
                "-f",
                path.to_str().unwrap_or(""),
                "-p",
                &pid("ka"),
                "-r",
                &pid("vrrp"),
            ]);
            let log = std::fs::File::create(dir.join(format!("{me}.log")))?;
            cmd.stdout(Stdio::null()).stderr(log);
            ka.push(Proc::spawn(&format!("keepalived {me}"), cmd)?);
        }
        Ok(Nodes {
            imp: Impl::Keepalived,
            a: None,
            b: None,
            ka,
            dir,
            stopped: Vec::new(),
            link_down: false,
        })
    }

    fn has_vip(lan: &Lan, host: &str) -> bool {
        lan.host(host)
            .ns
            .ip(&["-4", "addr", "show", "dev", "eth0"])
            .is_ok_and(|o| o.contains(&format!("{VIP}/32")))
    }

    fn a_active(&self, lan: &Lan) -> bool {
        match self.imp {
            Impl::Vip => state(self.a.as_ref()) == "active" && state(self.b.as_ref()) == "standby",
            Impl::Keepalived => Self::has_vip(lan, "a") && !Self::has_vip(lan, "b"),
        }
    }

    fn b_active(&self, lan: &Lan) -> bool {
        match self.imp {
            Impl::Vip => state(self.b.as_ref()) == "active",
            Impl::Keepalived => Self::has_vip(lan, "b"),
        }
    }

    /// PIDs of a's HA processes: the agent, or keepalived and its VRRP child.
    fn a_pids(&self) -> Vec<i32> {
        match self.imp {
            Impl::Vip => self.a.iter().map(|a| a.proc.pid() as i32).collect(),
            Impl::Keepalived => {
                let mut p = vec![self.ka[0].pid() as i32];
                if let Ok(s) = std::fs::read_to_string(self.dir.join("vrrp-a.pid")) {
                    if let Ok(child) = s.trim().parse() {
                        p.push(child);
                    }
                }
                p
            }
        }
    }

    fn inject(&mut self, lan: &Lan, fault: Fault) -> Result<()> {
        let signal = |pids: &[i32], sig| {
            for p in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig);
            }
        };
        match fault {
            Fault::Kill => signal(&self.a_pids(), Signal::SIGKILL),
            Fault::Stop => {
                self.stopped = self.a_pids();
                signal(&self.stopped, Signal::SIGSTOP);
            }
            Fault::LinkDown => {
                lan.host("a").ns.ip(&["link", "set", "eth0", "down"])?;
                self.link_down = true;
            }
            Fault::Planned => match self.imp {
                Impl::Vip => {
                    let out = self
                        .a
                        .as_ref()
                        .context("no agent a")?
                        .cli(&["demote", "web"])?;
                    if !out.status.success() {
                        bail!("vip demote: {}", String::from_utf8_lossy(&out.stderr));
                    }
                }
                Impl::Keepalived => signal(&[self.ka[0].pid() as i32], Signal::SIGTERM),
            },
        }
        Ok(())
    }

    fn restore(&mut self, lan: &Lan) -> Result<()> {
        for p in self.stopped.drain(..) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), Signal::SIGCONT);
        }
        if self.link_down {
            lan.host("a").ns.ip(&["link", "set", "eth0", "up"])?;
            self.link_down = false;
        }
        Ok(())
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for p in self.stopped.drain(..) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), Signal::SIGCONT);
        }
        self.a.take();
        self.b.take();
        let child = std::fs::read_to_string(self.dir.join("vrrp-a.pid")).ok();
        self.ka.clear();
        // A VRRP child orphaned by a SIGKILLed parent.
        if let Some(pid) = child.and_then(|s| s.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn state(a: Option<&Agent>) -> String {
    a.and_then(|a| a.status().ok())
        .and_then(|s| s["groups"][0]["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `cargo xtask bench soak`: no false takeover under load and loss. Both nodes' CPUs
/// are saturated (two busy loops per core, in the nodes' namespaces) and the switch
/// drops 2 % of the frames between the two nodes at random (an nftables bridge rule:
/// this kernel has no netem), for `secs` seconds each: vip at its defaults (100 ms
/// adverts), then keepalived at its 10 ms minimum, in the same run. Counted: b's
/// takeovers (none is expected: a never fails) and the client's lost 1 ms probes.
pub fn soak(vip: &Path, secs: u64) -> Result<serde_json::Value> {
    std::env::set_var("VIP_BIN", vip);
    let mut lan = Lan::new(&["a", "b", "c"]).context("building the lab")?;
    lan.enable_xdp_tx(&["a", "b"])?;
    let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let _ra = Responder::start(&lan.host("a").ns, to, "a")?;
    let _rb = Responder::start(&lan.host("b").ns, to, "b")?;
    let switch = lan
        .namespaces()
        .into_iter()
        .find(|n| n.ends_with("-switch"))
        .context("the lab has no switch")?;
    let mut rows = Vec::new();
    for (imp, interval) in [(Impl::Vip, 100u64), (Impl::Keepalived, 10)] {
        let row = soak_one(&lan, &switch, imp, interval, Duration::from_secs(secs))
            .with_context(|| format!("soak of {imp:?} at {interval} ms"))?;
        eprintln!(
            "[bench soak] {:<10} {:>4} ms adverts, {secs} s, CPU hogs + 2 % loss between the nodes ({} frames dropped): {} false takeovers, {} probes lost",
            format!("{imp:?}").to_lowercase(),
            interval,
            row["frames_dropped_between_nodes"],
            row["false_takeovers"],
            row["lost_probes"]
        );
        rows.push(row);
    }
    Ok(json!({ "benchmark": "soak", "seconds": secs, "loss_percent": 2, "hogs": 4, "rows": rows }))
}

fn soak_one(
    lan: &Lan,
    switch: &str,
    imp: Impl,
    interval: u64,
    secs: Duration,
) -> Result<serde_json::Value> {
    let c = lan.host("c");
    start_clean(lan)?;
    let nodes = match imp {
        Impl::Vip => Nodes::vip(lan, interval)?,
        Impl::Keepalived => Nodes::keepalived(lan, interval)?,
    };
    let settle = Duration::from_millis(interval * 5 + 2000);
    if wait_for(settle, || nodes.a_active(lan).then_some(())).is_none() {
        bail!("a never became active");
    }
    let takeovers = |nodes: &Nodes| -> usize {
        match imp {
            Impl::Vip => nodes
                .b
                .as_ref()
                .and_then(|b| b.status().ok())
                .and_then(|s| {
                    s["groups"][0]["transition_reasons"].as_object().map(|m| {
                        m.iter()
                            .filter(|(k, _)| k.starts_with("active/"))
                            .filter_map(|(_, v)| v.as_u64())
                            .sum::<u64>() as usize
                    })
                })
                .unwrap_or(0),
            Impl::Keepalived => std::fs::read_to_string(nodes.dir.join("b.log"))
                .map(|l| l.matches("Entering MASTER STATE").count())
                .unwrap_or(0),
        }
    };
    let before = takeovers(&nodes);
    let nft = |args: &str| -> Result<()> {
        let st = std::process::Command::new("ip")
            .args(["netns", "exec", switch, "nft", args])
            .status()
            .context("running nft")?;
        if !st.success() {
            bail!("nft {args} failed");
        }
        Ok(())
    };
    nft("add table bridge vipsoak")?;
    nft(
        "add chain bridge vipsoak lossy { type filter hook forward priority 0 ; policy accept ; }",
    )?;
    nft("add rule bridge vipsoak lossy iifname { \"p-a\", \"p-b\" } oifname { \"p-a\", \"p-b\" } numgen random mod 100 < 2 counter drop")?;
    let mut hogs = Vec::new();
    for h in ["a", "a", "b", "b"] {
        let mut cmd = lan.host(h).ns.command(&["sh", "-c", "while :; do :; done"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        hogs.push(Proc::spawn(&format!("CPU hog on {h}"), cmd)?);
    }
    let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let prober = Prober::start(&c.ns, to, PROBE)?;
    std::thread::sleep(secs);
    let probes = prober.finish();
    drop(hogs);
    // Proof that the loss happened: the rule's counter.
    let dropped = std::process::Command::new("ip")
        .args(["netns", "exec", switch, "nft", "list table bridge vipsoak"])
        .output()
        .ok()
        .and_then(|o| {
            let t = String::from_utf8_lossy(&o.stdout).to_string();
            let i = t.find("packets ")?;
            t[i + 8..].split_whitespace().next()?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    let _ = nft("delete table bridge vipsoak");
    let after = takeovers(&nodes);
    let lost = probes.iter().filter(|p| p.answered_by.is_none()).count();
    let by_b = probes
        .iter()
        .filter(|p| p.answered_by.as_deref() == Some("b"))
        .count();
    drop(nodes);
    Ok(json!({
        "impl": format!("{imp:?}").to_lowercase(),
        "advert_interval_ms": interval,
        "false_takeovers": after.saturating_sub(before),
        "probes": probes.len(),
        "lost_probes": lost,
        "answered_by_b": by_b,
        "frames_dropped_between_nodes": dropped,
    }))
}
