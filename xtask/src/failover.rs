//! `cargo xtask bench failover`: how long clients lose the VIP when the active server
//! fails, for vip (in several configurations) and for keepalived (VRRP unicast) in the
//! same run; how fast vip's standby decides; what the HA processes cost in CPU.
//!
//! The demo's topology: servers a (priority 200) and b (100) on a bridge, a client c
//! probing the VIP every millisecond over UDP; whichever server is active answers with
//! its name. Faults on a: SIGKILL of the HA process, SIGSTOP of it (hung), its link
//! down, and a planned handover (`vip demote` / SIGTERM of keepalived). The outage is
//! the time from the last answer by a to the first by b; lost probes are those sent in
//! between that nobody answered.
//!
//! The vip configurations ([`VipConfig`]): its defaults (peers and priority only: 100 ms
//! adverts and the echo, a probe every 2 ms, 6 misses), an aggressive one (a 1 ms
//! echo, 4 misses; the adverts stay at 100 ms, so a stalled agent's lease still
//! runs 300 ms: with 10 ms adverts a loaded lab host took over falsely), advert-only detection (echo off) at 100 and 10 ms
//! for comparison, and 1000 ms adverts with the default echo (detection no longer
//! depends on the advert interval); keepalived at 1000 ms and at its 10 ms minimum.
//!
//! Multi-standby rows: 3 and 5 nodes at the defaults (priorities 200/180/160 and
//! 200/180/160/140/120; a fresh lab with hosts a, b, d, e, f and the client c), a's
//! link down, the outage from a's last answer to the first answer by any other node
//! (the row's reasons name who took over: the best standby should). With
//! `--baseline BIN`, each run is followed by one of that binary, reported as the
//! row's same-run baseline.
//!
//! Before any fault, b's (every standby's) echo must be armed within 2 s, or the run
//! fails: a run whose echo never armed would measure the adverts' timeout instead.
//!
//! Detection: b's status reports, per group, the CLOCK_MONOTONIC instant it decided to
//! take over and the instant it sent the first gratuitous ARP / unsolicited NA
//! (`last_takeover`); the bench reads its own CLOCK_MONOTONIC (shared by every
//! namespace) when it injects the fault, so detection = decision − injection, and
//! announce = first announcement − decision. Reported per configuration and fault as
//! min / p50 / p90 / max; the headline row (vip defaults, link down) takes at least 20
//! samples. An agent whose status lacks these fields gets "n/a".
//!
//! CPU: with a active and b standby, each node's HA processes' utime + stime over 10 s
//! (`/proc/PID/stat`), as CPU ms per second (1 ms/s = 0.1 % of a core), for vip at its
//! defaults, with the echo off, aggressive, and keepalived at 10 ms (parent + VRRP
//! child). Work done in softirq context (a's XDP program reflecting the echo) is not a
//! process's time: the host's softirq time over the same 10 s is shown beside it.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lab::{outage, wait_for, Agent, Lan, Prober, Proc, Responder};
use nix::{sys::signal::Signal, time::ClockId};
use serde_json::{json, Value};

const VIP: &str = "10.0.0.50";
const PORT: u16 = 7007;
const PROBE: Duration = Duration::from_millis(1);
/// Samples of the headline row (vip defaults, link down), whatever `--runs` says.
const HEADLINE_SAMPLES: usize = 20;
/// How long the CPU of each pair is measured.
const CPU_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Vip,
    Keepalived,
}

/// One vip configuration under test: every config has the peers and the priority;
/// `keys` are the group keys it adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VipConfig {
    label: &'static str,
    /// The advert interval these keys give (the agent's default when they set none).
    advert_ms: u64,
    keys: &'static str,
}

impl VipConfig {
    const DEFAULTS: VipConfig = VipConfig {
        label: "vip defaults",
        advert_ms: 100,
        keys: "",
    };
    const AGGRESSIVE: VipConfig = VipConfig {
        label: "vip aggressive",
        advert_ms: 100,
        keys: "echo_interval_ms = 1\necho_misses = 4\n",
    };
    const ADVERTS_100: VipConfig = VipConfig {
        label: "vip 100 ms, echo off",
        advert_ms: 100,
        keys: "advert_interval_ms = 100\necho_interval_ms = 0\n",
    };
    const ADVERTS_10: VipConfig = VipConfig {
        label: "vip 10 ms, echo off",
        advert_ms: 10,
        keys: "advert_interval_ms = 10\necho_interval_ms = 0\n",
    };
    const ADVERTS_1000_ECHO: VipConfig = VipConfig {
        label: "vip 1000 ms adverts, echo default",
        advert_ms: 1000,
        keys: "advert_interval_ms = 1000\n",
    };
}

/// What runs on the servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Vip(VipConfig),
    Keepalived {
        advert_ms: u64,
    },
    /// `nodes` vip nodes at the defaults (priorities [`STANDBYS`]), the baseline binary
    /// or the one under test ([`standbys_once`]).
    Standbys {
        nodes: usize,
        baseline: bool,
    },
}

/// The multi-standby rows' nodes: host, priority; the first `nodes` of them run.
const STANDBYS: [(&str, u8); 5] = [("a", 200), ("b", 180), ("d", 160), ("e", 140), ("f", 120)];

impl Setup {
    fn imp(self) -> Impl {
        match self {
            Setup::Vip(_) | Setup::Standbys { .. } => Impl::Vip,
            Setup::Keepalived { .. } => Impl::Keepalived,
        }
    }

    fn advert_ms(self) -> u64 {
        match self {
            Setup::Vip(c) => c.advert_ms,
            Setup::Keepalived { advert_ms } => advert_ms,
            Setup::Standbys { .. } => VipConfig::DEFAULTS.advert_ms,
        }
    }

    fn label(self) -> String {
        match self {
            Setup::Vip(c) => c.label.to_string(),
            Setup::Keepalived { advert_ms } => format!("keepalived {advert_ms} ms"),
            Setup::Standbys { nodes, baseline } => format!(
                "vip defaults, {nodes} nodes{}",
                if baseline { " (baseline)" } else { "" }
            ),
        }
    }

    fn start(self, lan: &Lan) -> Result<Nodes> {
        match self {
            Setup::Vip(c) => Nodes::vip(lan, c),
            Setup::Keepalived { advert_ms } => Nodes::keepalived(lan, advert_ms),
            Setup::Standbys { .. } => bail!("the multi-standby rows run in standbys_once"),
        }
    }

    /// How long a fresh pair may take to elect a.
    fn settle(self) -> Duration {
        Duration::from_millis(self.advert_ms() * 5 + 2000)
    }
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
    /// b's decision to take over, after the fault's injection (vip, when reported).
    detection_ms: Option<f64>,
    /// The first gratuitous ARP / unsolicited NA, after the decision.
    announce_us: Option<f64>,
    /// Why b took over (`reason_kind`).
    reason: Option<String>,
    /// b's echo state when the fault was injected.
    echo_state: Option<String>,
}

impl Sample {
    fn json(&self) -> Value {
        json!({
            "outage_ms": self.outage_ms,
            "lost": self.lost,
            "detection_ms": self.detection_ms,
            "announce_us": self.announce_us,
            "reason_kind": self.reason,
            "echo_state_at_fault": self.echo_state,
        })
    }
}

/// One line of the plan and its samples.
struct Row {
    setup: Setup,
    fault: Fault,
    samples: Vec<Sample>,
}

impl Row {
    fn json(&self) -> Value {
        let (o, l) = stats(&self.samples);
        let detection: Vec<f64> = self.samples.iter().filter_map(|s| s.detection_ms).collect();
        let announce: Vec<f64> = self.samples.iter().filter_map(|s| s.announce_us).collect();
        json!({
            "impl": format!("{:?}", self.setup.imp()).to_lowercase(),
            "config": self.setup.label(),
            "advert_interval_ms": self.setup.advert_ms(),
            "fault": self.fault.name(),
            "outage_ms": {"min": o.0, "median": o.1, "max": o.2},
            "lost": {"min": l.0, "median": l.1, "max": l.2},
            "detection_ms": quantiles_json(&detection),
            "announce_us": quantiles_json(&announce),
            "takeover_reasons": self.reasons(),
            "samples": self.samples.iter().map(Sample::json).collect::<Vec<_>>(),
        })
    }

    /// How many samples each takeover reason explains.
    fn reasons(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.samples.iter().filter_map(|s| s.reason.as_ref()) {
            *m.entry(r.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// The failover plan: (setup, fault, runs).
fn plan(quick: bool, runs: usize) -> Vec<(Setup, Fault, usize)> {
    let mut plan = Vec::new();
    if quick {
        plan.push((Setup::Vip(VipConfig::DEFAULTS), Fault::Planned, 1));
        plan.push((Setup::Vip(VipConfig::DEFAULTS), Fault::Kill, 1));
        return plan;
    }
    for c in [
        VipConfig::DEFAULTS,
        VipConfig::AGGRESSIVE,
        VipConfig::ADVERTS_100,
        VipConfig::ADVERTS_10,
    ] {
        for f in Fault::ALL {
            let n = if c == VipConfig::DEFAULTS && f == Fault::LinkDown {
                runs.max(HEADLINE_SAMPLES)
            } else {
                runs
            };
            plan.push((Setup::Vip(c), f, n));
        }
    }
    for f in [Fault::LinkDown, Fault::Kill] {
        plan.push((Setup::Vip(VipConfig::ADVERTS_1000_ECHO), f, runs));
    }
    for advert_ms in [1000, 10] {
        for f in Fault::ALL {
            plan.push((Setup::Keepalived { advert_ms }, f, runs));
        }
    }
    plan
}

/// Runs the benchmark; returns its JSON record. `quick`: vip defaults, planned and
/// SIGKILL, one run each, one 3-node link down and no CPU figures, for CI smoke.
/// `baseline`: another binary that the multi-standby rows also run, interleaved.
pub fn run(vip: &Path, quick: bool, runs: usize, baseline: Option<&Path>) -> Result<Value> {
    std::env::set_var("VIP_BIN", vip);
    let mut lan = Lan::new(&["a", "b", "c"]).context("building the lab")?;
    lan.enable_xdp_tx(&["a", "b"])?;
    let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let _ra = Responder::start(&lan.host("a").ns, to, "a")?;
    let _rb = Responder::start(&lan.host("b").ns, to, "b")?;

    let runs = if quick { 1 } else { runs.max(1) };
    let mut rows = Vec::new();
    for (setup, fault, n) in plan(quick, runs) {
        let mut samples = Vec::new();
        for i in 0..n {
            let s = run_once(&lan, setup, fault)
                .with_context(|| format!("{} {} run {}", setup.label(), fault.name(), i + 1))?;
            eprintln!(
                "[bench failover] {:<34} {:<15} run {:>2}/{n}: outage {:>8.1} ms, lost {:>4}, detection {} ({}), announce {}",
                setup.label(),
                fault.name(),
                i + 1,
                s.outage_ms,
                s.lost,
                unit(s.detection_ms, 1, "ms"),
                s.reason.as_deref().unwrap_or("reason n/a"),
                unit(s.announce_us, 0, "µs"),
            );
            samples.push(s);
        }
        rows.push(Row {
            setup,
            fault,
            samples,
        });
    }
    let cpu = if quick {
        Vec::new()
    } else {
        let mut cpu = Vec::new();
        for setup in [
            Setup::Vip(VipConfig::DEFAULTS),
            Setup::Vip(VipConfig::ADVERTS_100),
            Setup::Vip(VipConfig::AGGRESSIVE),
            Setup::Keepalived { advert_ms: 10 },
        ] {
            let c = cpu_once(&lan, setup).with_context(|| format!("CPU of {}", setup.label()))?;
            eprintln!(
                "[bench failover] CPU of {:<34} a {:>5.1} ms/s, b {:>5.1} ms/s, host softirq {:>5.1} ms/s",
                c.label, c.a_ms_per_s, c.b_ms_per_s, c.softirq_ms_per_s
            );
            cpu.push(c);
        }
        cpu
    };
    drop(lan);
    rows.extend(standbys(vip, quick, runs, baseline)?);
    print!("{}", table(&rows));
    print!("{}", detection_table(&rows));
    print!("{}", cpu_table(&cpu));
    Ok(json!({
        "benchmark": "failover",
        "probe_interval_ms": PROBE.as_millis() as u64,
        "runs": runs,
        "headline_samples": if quick { 1 } else { runs.max(HEADLINE_SAMPLES) },
        "baseline": baseline.map(|b| b.display().to_string()),
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "cpu": cpu.iter().map(Cpu::json).collect::<Vec<_>>(),
    }))
}

/// The multi-standby rows: with 3 and with 5 nodes at the defaults ([`STANDBYS`]; with
/// a baseline also 2, a and b: the default link down, old against new), a
/// (the best) active, its link down; the outage runs from a's last answer to the first
/// answer by any other node (the best standby should be it). With `baseline`, each
/// run of the binary under test is followed by one of the baseline, so both see the
/// same machine. The headline's sample count (20) for each; `quick`: one 3-node run.
fn standbys(vip: &Path, quick: bool, runs: usize, baseline: Option<&Path>) -> Result<Vec<Row>> {
    let names: Vec<&str> = STANDBYS.iter().map(|n| n.0).collect();
    let mut all = names.clone();
    all.insert(2, "c");
    let mut lan = Lan::new(&all).context("building the multi-standby lab")?;
    lan.enable_xdp_tx(&names)?;
    let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let _responders: Vec<Responder> = names
        .iter()
        .map(|n| Responder::start(&lan.host(n).ns, to, n))
        .collect::<Result<_>>()?;
    let bins: Vec<(bool, &Path)> = [(false, vip)]
        .into_iter()
        .chain(baseline.map(|b| (true, b)))
        .collect();
    let mut rows = Vec::new();
    // Two nodes too when there is a baseline: the default link-down figure, old and
    // new binary interleaved.
    let sizes = match (quick, baseline) {
        (true, _) => vec![3],
        (false, Some(_)) => vec![2, 3, 5],
        (false, None) => vec![3, 5],
    };
    for nodes in sizes {
        let n = if quick { 1 } else { runs.max(HEADLINE_SAMPLES) };
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); bins.len()];
        for i in 0..n {
            for (k, &(is_base, bin)) in bins.iter().enumerate() {
                let setup = Setup::Standbys {
                    nodes,
                    baseline: is_base,
                };
                let s = standbys_once(&lan, nodes, bin)
                    .with_context(|| format!("{} run {}", setup.label(), i + 1))?;
                eprintln!(
                    "[bench failover] {:<34} {:<15} run {:>2}/{n}: outage {:>8.1} ms, lost {:>4}, detection {} ({}), announce {}",
                    setup.label(),
                    Fault::LinkDown.name(),
                    i + 1,
                    s.outage_ms,
                    s.lost,
                    unit(s.detection_ms, 1, "ms"),
                    s.reason.as_deref().unwrap_or("reason n/a"),
                    unit(s.announce_us, 0, "µs"),
                );
                samples[k].push(s);
            }
        }
        for ((is_base, _), samples) in bins.iter().zip(samples) {
            rows.push(Row {
                setup: Setup::Standbys {
                    nodes,
                    baseline: *is_base,
                },
                fault: Fault::LinkDown,
                samples,
            });
        }
    }
    Ok(rows)
}

/// One multi-standby run: `nodes` agents of `bin`, a active and every standby's echo
/// armed, the client probing, a's link down; the sample's reason names the node that
/// took over (`b: echo_lost`).
fn standbys_once(lan: &Lan, nodes: usize, bin: &Path) -> Result<Sample> {
    start_clean(lan)?;
    let members = &STANDBYS[..nodes];
    let mut agents = Vec::new();
    for &(me, prio) in members {
        let peers: Vec<String> = members
            .iter()
            .filter(|n| n.0 != me)
            .map(|n| format!("\"{}\"", lan.host(n.0).ip4))
            .collect();
        let cfg = format!(
            "[node]\nname = \"{me}\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"{VIP}/24\"]\npeers = [{}]\npriority = {prio}\n",
            peers.join(", ")
        );
        agents.push(Agent::start_full(
            &lan.host(me).ns,
            me,
            &cfg,
            bin,
            &[],
            &[],
        )?);
    }
    let result = standbys_measure(lan, &agents, members);
    // Stopped together: one by one, each would wait for a successor in turn.
    lab::stop_together(&mut agents, Duration::from_secs(8));
    drop(agents);
    let up = lan.host("a").ns.ip(&["link", "set", "eth0", "up"]);
    let sample = result?;
    up?;
    Ok(sample)
}

fn standbys_measure(lan: &Lan, agents: &[Agent], members: &[(&str, u8)]) -> Result<Sample> {
    let states = || -> Vec<String> { agents.iter().map(|a| state(Some(a))).collect() };
    let settled = wait_for(Duration::from_secs(5), || {
        let st = states();
        (st[0] == "active" && st[1..].iter().all(|s| s == "standby")).then_some(())
    });
    if settled.is_none() {
        bail!("a never became the only active: {:?}", states());
    }
    for a in &agents[1..] {
        wait_echo_armed(a, Duration::from_secs(2))?;
    }
    let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let prober = Prober::start(&lan.host("c").ns, to, PROBE)?;
    std::thread::sleep(Duration::from_millis(300));
    let echo_state = agents[1]
        .status()
        .ok()
        .and_then(|s| s["groups"][0]["echo"]["state"].as_str().map(str::to_string));
    let before = mono_ns()?;
    lan.host("a").ns.ip(&["link", "set", "eth0", "down"])?;
    let injected = mono_ns()?;
    let t0 = Instant::now();
    let limit = Duration::from_millis(VipConfig::DEFAULTS.advert_ms * 6 + 3000);
    while t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
        if states()[1..].iter().any(|s| s == "active") && t0.elapsed() > Duration::from_millis(400)
        {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let probes = prober.finish();
    let taker = probes
        .iter()
        .find_map(|p| p.answered_by.clone().filter(|n| n != "a"))
        .context("no other node ever answered")?;
    let o = outage(&probes, "a", &taker).context("the client never moved from a")?;
    let i = members
        .iter()
        .position(|m| m.0 == taker)
        .context("an unknown node answered")?;
    let g = agents[i].status()?["groups"][0].clone();
    let t = &g["last_takeover"];
    let decided = t["decided_mono_ns"].as_u64().filter(|d| *d >= before);
    Ok(Sample {
        outage_ms: o.outage.as_secs_f64() * 1e3,
        lost: o.lost,
        detection_ms: decided.map(|d| (d as i128 - injected as i128) as f64 / 1e6),
        announce_us: decided.and_then(|d| {
            t["announced_mono_ns"]
                .as_u64()
                .map(|a| (a as i128 - d as i128) as f64 / 1e3)
        }),
        reason: Some(format!(
            "{taker}: {}",
            t["reason_kind"].as_str().unwrap_or("?")
        )),
        echo_state,
    })
}

/// `x` with `digits` decimals, or "n/a".
fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}

/// `x` with `digits` decimals and its unit, or "n/a".
fn unit(x: Option<f64>, digits: usize, unit: &str) -> String {
    x.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$} {unit}"))
}

fn stats(s: &[Sample]) -> ((f64, f64, f64), (usize, usize, usize)) {
    let mut o: Vec<f64> = s.iter().map(|x| x.outage_ms).collect();
    let mut l: Vec<usize> = s.iter().map(|x| x.lost).collect();
    if o.is_empty() {
        return ((0.0, 0.0, 0.0), (0, 0, 0));
    }
    o.sort_by(|a, b| a.total_cmp(b));
    l.sort();
    let mid = s.len() / 2;
    (
        (o[0], o[mid], o[o.len() - 1]),
        (l[0], l[mid], l[l.len() - 1]),
    )
}

/// min, p50, p90, max (nearest rank); None without samples.
pub(crate) fn quantiles(v: &[f64]) -> Option<[f64; 4]> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| -> Option<f64> {
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v.get(i - 1).copied()
    };
    Some([*v.first()?, rank(0.5)?, rank(0.9)?, *v.last()?])
}

fn quantiles_json(v: &[f64]) -> Value {
    match quantiles(v) {
        Some([min, p50, p90, max]) => {
            json!({"n": v.len(), "min": min, "p50": p50, "p90": p90, "max": max})
        }
        None => Value::Null,
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n{:<34} {:<15} {:>3} {:>28}  {:>14}",
        "config", "fault", "n", "outage ms (min / med / max)", "lost (med/max)"
    );
    for r in rows {
        let (o, l) = stats(&r.samples);
        let _ = writeln!(
            t,
            "{:<34} {:<15} {:>3} {:>8.1} / {:>7.1} / {:>7.1}  {:>7} / {:<5}",
            r.setup.label(),
            r.fault.name(),
            r.samples.len(),
            o.0,
            o.1,
            o.2,
            l.1,
            l.2
        );
    }
    t
}

/// vip's own view: fault injected → b decides (detection) → b announces.
fn detection_table(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\ndetection: fault → b decides (ms), b decides → first GARP/NA (µs)\n{:<34} {:<15} {:>3} {:>33}  {:>29}  reasons",
        "config", "fault", "n", "detection ms (min/p50/p90/max)", "announce µs (min/p50/p90/max)"
    );
    let q = |v: Vec<f64>, digits: usize, w: usize| match quantiles(&v) {
        Some(q) => q
            .iter()
            .map(|x| format!("{x:>w$.digits$}"))
            .collect::<Vec<_>>()
            .join(" / "),
        None => format!(
            "{:>w$} / {:>w$} / {:>w$} / {:>w$}",
            "n/a", "n/a", "n/a", "n/a"
        ),
    };
    for r in rows.iter().filter(|r| r.setup.imp() == Impl::Vip) {
        let d: Vec<f64> = r.samples.iter().filter_map(|s| s.detection_ms).collect();
        let a: Vec<f64> = r.samples.iter().filter_map(|s| s.announce_us).collect();
        let reasons = r.reasons();
        let reasons = if reasons.is_empty() {
            "n/a".to_string()
        } else {
            reasons
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            t,
            "{:<34} {:<15} {:>3} {:>33}  {:>29}  {reasons}",
            r.setup.label(),
            r.fault.name(),
            d.len(),
            q(d, 1, 6),
            q(a, 0, 5),
        );
    }
    t
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock the agent's `*_mono_ns` use).
pub(crate) fn mono_ns() -> Result<u64> {
    let t = nix::time::clock_gettime(ClockId::CLOCK_MONOTONIC).context("clock_gettime")?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
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

/// Starts the pair and waits until a is active, b standby and (where the agent has
/// one) b's echo armed.
fn start_pair(lan: &Lan, setup: Setup) -> Result<Nodes> {
    start_clean(lan)?;
    let nodes = setup.start(lan)?;
    if wait_for(setup.settle(), || nodes.a_active(lan).then_some(())).is_none() {
        bail!("a never became active");
    }
    nodes.wait_echo_armed(Duration::from_secs(2))?;
    Ok(nodes)
}

/// Brings a up as active and b as standby, probes, injects the fault, measures.
fn run_once(lan: &Lan, setup: Setup, fault: Fault) -> Result<Sample> {
    let c = lan.host("c");
    let mut nodes = start_pair(lan, setup)?;
    let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let prober = Prober::start(&c.ns, to, PROBE)?;
    std::thread::sleep(Duration::from_millis(300));
    let echo_state = nodes
        .b_echo()
        .and_then(|e| e["state"].as_str().map(str::to_string));
    let t0 = Instant::now();
    let before = mono_ns()?;
    nodes.inject(lan, fault)?;
    let after = mono_ns()?;
    // A planned handover: b may decide before `vip demote` returns, so the fault is
    // the command's start; otherwise the instant the kill / ip command returned.
    let injected = if fault == Fault::Planned {
        before
    } else {
        after
    };
    // Wait until b has answered for a while (or give up).
    let limit = Duration::from_millis(setup.advert_ms() * 6 + 3000);
    while t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
        if nodes.b_active(lan) && t0.elapsed() > Duration::from_millis(400) {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let probes = prober.finish();
    // b's takeover of this run (one from before the fault does not count).
    let takeover = nodes.b_takeover().filter(|t| t.decided_ns >= before);
    nodes.restore(lan)?;
    drop(nodes);
    let o = outage(&probes, "a", "b").context("the client never reached b")?;
    Ok(Sample {
        outage_ms: o.outage.as_secs_f64() * 1e3,
        lost: o.lost,
        detection_ms: takeover
            .as_ref()
            .map(|t| (t.decided_ns as i128 - injected as i128) as f64 / 1e6),
        announce_us: takeover.as_ref().and_then(|t| {
            t.announced_ns
                .map(|a| (a as i128 - t.decided_ns as i128) as f64 / 1e3)
        }),
        reason: takeover.map(|t| t.reason),
        echo_state,
    })
}

/// Waits (up to `limit`) until `agent`'s echo has seen the active's replies (state
/// "armed"), so that a fault is detected by the echo, not by the adverts' silence.
/// An echo that is off, or an agent whose status has none (an older vip), passes at
/// once; an echo that never arms, or an agent that stops answering, fails the run
/// instead of letting it measure the adverts' timeout as if it were the echo's.
fn wait_echo_armed(agent: &Agent, limit: Duration) -> Result<()> {
    let echo = || -> Option<Value> {
        let s = agent.status().ok()?;
        Some(s["groups"][0]["echo"].clone())
    };
    let ready = wait_for(limit, || {
        let e = echo()?;
        (!e.is_object() || matches!(e["state"].as_str(), Some("armed" | "off"))).then_some(())
    });
    if ready.is_none() {
        bail!(
            "{}: the echo did not arm within {} ms: {}",
            agent.proc.name,
            limit.as_millis(),
            echo().map_or_else(|| "no status".into(), |e| e.to_string())
        );
    }
    Ok(())
}

/// b's last takeover, as its status reports it.
struct Takeover {
    reason: String,
    decided_ns: u64,
    announced_ns: Option<u64>,
}

/// CPU used by each node's HA processes while a is active and b standby.
struct Cpu {
    label: String,
    a_ms_per_s: f64,
    b_ms_per_s: f64,
    softirq_ms_per_s: f64,
    b_echo: Option<Value>,
}

impl Cpu {
    fn json(&self) -> Value {
        json!({
            "config": self.label,
            "seconds": CPU_WINDOW.as_secs(),
            "a_active_cpu_ms_per_s": self.a_ms_per_s,
            "b_standby_cpu_ms_per_s": self.b_ms_per_s,
            "host_softirq_ms_per_s": self.softirq_ms_per_s,
            "b_echo": self.b_echo,
        })
    }
}

/// Clock ticks per second, the unit of `/proc/PID/stat`'s times.
fn clk_tck() -> f64 {
    // SAFETY: sysconf takes a constant and touches no memory of ours. (nix's sysconf
    // needs nix's "feature" feature, which the workspace does not enable: enabling it
    // for xtask alone would split vip's build between two nix feature sets.)
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of the processes `pids` (all their threads), in clock ticks.
fn cpu_ticks(pids: &[i32]) -> Result<u64> {
    let mut sum = 0;
    for p in pids {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .with_context(|| format!("reading /proc/{p}/stat"))?;
        // Fields 14 and 15; the name (field 2) is parenthesised and may hold spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("unexpected /proc/PID/stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        for i in [14, 15] {
            sum += f
                .get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .with_context(|| format!("no field {i} in /proc/{p}/stat"))?;
        }
    }
    Ok(sum)
}

/// The host's softirq time (all CPUs), in clock ticks.
fn softirq_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("cpu "))?;
            l.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Starts the pair, lets it settle, and measures its CPU over `CPU_WINDOW`.
fn cpu_once(lan: &Lan, setup: Setup) -> Result<Cpu> {
    let nodes = start_pair(lan, setup)?;
    std::thread::sleep(Duration::from_secs(2));
    if !nodes.a_active(lan) {
        bail!("a is no longer active");
    }
    let (pa, pb) = (nodes.pids("a"), nodes.pids("b"));
    let (a0, b0, s0) = (cpu_ticks(&pa)?, cpu_ticks(&pb)?, softirq_ticks());
    let t0 = Instant::now();
    std::thread::sleep(CPU_WINDOW);
    let (a1, b1, s1) = (cpu_ticks(&pa)?, cpu_ticks(&pb)?, softirq_ticks());
    let secs = t0.elapsed().as_secs_f64();
    if !nodes.a_active(lan) {
        bail!("a lost the VIP during the measurement");
    }
    let per_s = |ticks: u64| ticks as f64 / clk_tck() * 1e3 / secs;
    Ok(Cpu {
        label: setup.label(),
        a_ms_per_s: per_s(a1.saturating_sub(a0)),
        b_ms_per_s: per_s(b1.saturating_sub(b0)),
        softirq_ms_per_s: per_s(s1.saturating_sub(s0)),
        b_echo: nodes.b_echo(),
    })
}

fn cpu_table(cpu: &[Cpu]) -> String {
    if cpu.is_empty() {
        return String::new();
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nCPU over {} s, a active, b standby (ms per s; 10 = 1 % of a core; resolution {:.1})\n{:<34} {:>10} {:>10} {:>14}  b's echo",
        CPU_WINDOW.as_secs(),
        1e3 / clk_tck() / CPU_WINDOW.as_secs_f64(),
        "config",
        "a",
        "b",
        "host softirq"
    );
    for c in cpu {
        let echo = c.b_echo.as_ref().map_or_else(
            || "n/a".to_string(),
            |e| match e["state"].as_str().unwrap_or("?") {
                "off" => "off".to_string(),
                st => format!(
                    "{st}, every {} ms, {} misses{}",
                    e["interval_ms"],
                    e["misses"],
                    if e["realtime"] == json!(true) {
                        ", real-time prober"
                    } else {
                        ""
                    }
                ),
            },
        );
        let _ = writeln!(
            t,
            "{:<34} {:>10.1} {:>10.1} {:>14.1}  {echo}",
            c.label, c.a_ms_per_s, c.b_ms_per_s, c.softirq_ms_per_s
        );
    }
    t
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
    fn vip(lan: &Lan, c: VipConfig) -> Result<Self> {
        let cfg = |me: &str, peer: &str, prio: u8| {
            format!(
                "[node]\nname = \"{me}\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"{VIP}/24\"]\npeers = [\"{}\"]\npriority = {prio}\n{}",
                lan.host(peer).ip4,
                c.keys
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

    /// PIDs of a node's HA processes ("a" or "b"): the agent, or keepalived and its
    /// VRRP child.
    fn pids(&self, host: &str) -> Vec<i32> {
        match self.imp {
            Impl::Vip => {
                let agent = if host == "a" { &self.a } else { &self.b };
                agent.iter().map(|a| a.proc.pid() as i32).collect()
            }
            Impl::Keepalived => {
                let parent = self.ka.get(usize::from(host != "a"));
                let mut p: Vec<i32> = parent.iter().map(|k| k.pid() as i32).collect();
                if let Ok(s) = std::fs::read_to_string(self.dir.join(format!("vrrp-{host}.pid"))) {
                    if let Ok(child) = s.trim().parse() {
                        p.push(child);
                    }
                }
                p
            }
        }
    }

    /// b's `groups[0]` in its status (vip only).
    fn b_group(&self) -> Option<Value> {
        let s = self.b.as_ref()?.status().ok()?;
        Some(s["groups"][0].clone())
    }

    /// b's echo figures (`groups[0].echo`), where its agent reports them.
    fn b_echo(&self) -> Option<Value> {
        self.b_group()
            .map(|g| g["echo"].clone())
            .filter(Value::is_object)
    }

    /// b's last takeover (`groups[0].last_takeover`), where its agent reports one.
    fn b_takeover(&self) -> Option<Takeover> {
        let g = self.b_group()?;
        let t = &g["last_takeover"];
        Some(Takeover {
            reason: t["reason_kind"].as_str().unwrap_or("?").to_string(),
            decided_ns: t["decided_mono_ns"].as_u64()?,
            announced_ns: t["announced_mono_ns"].as_u64(),
        })
    }

    /// Waits (up to `limit`) until b's echo has seen a's replies (see
    /// [`wait_echo_armed`]); keepalived has no echo.
    fn wait_echo_armed(&self, limit: Duration) -> Result<()> {
        match (self.imp, self.b.as_ref()) {
            (Impl::Vip, Some(b)) => wait_echo_armed(b, limit),
            _ => Ok(()),
        }
    }

    fn inject(&mut self, lan: &Lan, fault: Fault) -> Result<()> {
        let signal = |pids: &[i32], sig| {
            for p in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig);
            }
        };
        match fault {
            Fault::Kill => signal(&self.pids("a"), Signal::SIGKILL),
            Fault::Stop => {
                self.stopped = self.pids("a");
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
                Impl::Keepalived => {
                    let parent: Vec<i32> = self
                        .ka
                        .first()
                        .map(|k| k.pid() as i32)
                        .into_iter()
                        .collect();
                    signal(&parent, Signal::SIGTERM)
                }
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

/// b's echo figures for the soak report: probes, replies, loss, longest run of misses.
fn echo_summary(e: Option<&Value>) -> (Value, String) {
    let Some(e) = e else {
        return (Value::Null, "echo on b n/a".into());
    };
    let probes = e["probes"].as_u64();
    let replies = e["replies"].as_u64();
    let loss = match (probes, replies) {
        (Some(p), Some(r)) if p > 0 => Some(p.saturating_sub(r) as f64 * 100.0 / p as f64),
        _ => None,
    };
    let n = |v: Option<u64>| v.map_or_else(|| "n/a".into(), |v| v.to_string());
    let text = format!(
        "echo on b every {} ms{}: {} probes, {} replies ({} % unanswered), longest streak {} of {} misses",
        n(e["interval_ms"].as_u64()),
        match e["realtime"].as_bool() {
            Some(true) => " (real-time prober)",
            _ => "",
        },
        n(probes),
        n(replies),
        opt(loss, 2),
        n(e["longest_streak"].as_u64()),
        n(e["misses"].as_u64()),
    );
    let v = json!({
        "interval_ms": e["interval_ms"],
        "misses": e["misses"],
        "state": e["state"],
        "probes": probes,
        "replies": replies,
        "loss_percent": loss,
        "longest_streak": e["longest_streak"],
        "realtime": e["realtime"],
    });
    (v, text)
}

/// `cargo xtask bench soak`: no false takeover under load and loss. Both nodes' CPUs
/// are saturated (two busy loops per core, in the nodes' namespaces) and the switch
/// drops 2 % of the frames between the two nodes at random (an nftables bridge rule:
/// this kernel has no netem), for `secs` seconds each: vip at its defaults (100 ms
/// adverts and the echo), then keepalived at its 10 ms minimum, in the same run.
/// Counted: b's takeovers (none is expected: a never fails), the client's lost 1 ms
/// probes, and for vip b's echo at the end (probes, replies, longest run of misses
/// against the misses that would take over): proof the echo ran through the loss.
/// `baseline`: another vip binary soaked the same way right after the one under test.
pub fn soak(vip: &Path, secs: u64, baseline: Option<&Path>) -> Result<Value> {
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
    let runs = [
        (Setup::Vip(VipConfig::DEFAULTS), Some(vip)),
        (Setup::Vip(VipConfig::DEFAULTS), baseline),
        (Setup::Keepalived { advert_ms: 10 }, None),
    ];
    for (setup, bin) in runs {
        let label = match (setup, bin) {
            (Setup::Vip(_), None) => continue,
            (Setup::Vip(_), Some(b)) if b != vip => format!("{} (baseline)", setup.label()),
            _ => setup.label(),
        };
        if let Some(b) = bin {
            std::env::set_var("VIP_BIN", b);
        }
        let (mut row, echo) = soak_one(&lan, &switch, setup, Duration::from_secs(secs))
            .with_context(|| format!("soak of {label}"))?;
        row["config"] = json!(label);
        eprintln!(
            "[bench soak] {:<16} {:>4} ms adverts, {secs} s, CPU hogs + 2 % loss between the nodes ({} frames dropped): {} false takeovers, {} probes lost{}",
            label,
            setup.advert_ms(),
            row["frames_dropped_between_nodes"],
            row["false_takeovers"],
            row["lost_probes"],
            echo.map(|e| format!("; {e}")).unwrap_or_default()
        );
        rows.push(row);
    }
    Ok(json!({ "benchmark": "soak", "seconds": secs, "loss_percent": 2, "hogs": 4, "rows": rows }))
}

/// One soak; its JSON row, and for vip the echo's line for the report.
fn soak_one(
    lan: &Lan,
    switch: &str,
    setup: Setup,
    secs: Duration,
) -> Result<(Value, Option<String>)> {
    let c = lan.host("c");
    let imp = setup.imp();
    let nodes = start_pair(lan, setup)?;
    let takeovers = |nodes: &Nodes| -> usize {
        match imp {
            Impl::Vip => nodes
                .b_group()
                .and_then(|g| {
                    g["transition_reasons"].as_object().map(|m| {
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
    // The echo's counters from here on: the soak's own probes and replies.
    let echo_before = nodes.b_echo();
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
    let echo_after = nodes.b_echo();
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
    // Probes and replies during the soak (the counters at the end minus those at its
    // start); the longest streak is the agent's over its life, which the soak bounds.
    let echo = echo_after.map(|mut e| {
        for k in ["probes", "replies"] {
            if let (Some(a), Some(b)) = (
                e[k].as_u64(),
                echo_before.as_ref().and_then(|x| x[k].as_u64()),
            ) {
                e[k] = json!(a.saturating_sub(b));
            }
        }
        e
    });
    let (echo_json, echo_text) = echo_summary(echo.as_ref());
    Ok((
        json!({
            "impl": format!("{imp:?}").to_lowercase(),
            "config": setup.label(),
            "advert_interval_ms": setup.advert_ms(),
            "false_takeovers": after.saturating_sub(before),
            "probes": probes.len(),
            "lost_probes": lost,
            "answered_by_b": by_b,
            "frames_dropped_between_nodes": dropped,
            "echo_b": echo_json,
        }),
        (imp == Impl::Vip).then_some(echo_text),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        assert_eq!(quantiles(&[]), None);
        assert_eq!(quantiles(&[3.0]), Some([3.0; 4]));
        let v: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(quantiles(&v), Some([1.0, 10.0, 18.0, 20.0]));
    }

    #[test]
    fn cpu_ticks_of_this_process() {
        let me = std::process::id() as i32;
        let t0 = cpu_ticks(&[me]).unwrap();
        let end = Instant::now() + Duration::from_millis(100);
        let mut x = 0u64;
        while Instant::now() < end {
            x = x.wrapping_add(1);
        }
        assert!(x > 0 && cpu_ticks(&[me]).unwrap() >= t0);
        assert!(cpu_ticks(&[i32::MAX]).is_err());
        assert!(clk_tck() > 0.0);
    }

    #[test]
    fn echo_summary_tolerates_missing_fields() {
        let (v, t) = echo_summary(None);
        assert!(v.is_null() && t.contains("n/a"));
        let e = json!({"interval_ms": 2, "misses": 6, "state": "armed", "probes": 1000, "replies": 960, "longest_streak": 3});
        let (v, t) = echo_summary(Some(&e));
        assert_eq!(v["loss_percent"], json!(4.0));
        assert!(t.contains("1000 probes, 960 replies (4.00 % unanswered), longest streak 3 of 6"));
        let (v, t) = echo_summary(Some(&json!({"state": "off"})));
        assert!(v["loss_percent"].is_null() && t.contains("n/a probes"));
    }

    #[test]
    fn row_json_keeps_the_fields_and_adds_config_and_detection() {
        let sample = |d: Option<f64>| Sample {
            outage_ms: 14.0,
            lost: 13,
            detection_ms: d,
            announce_us: d.map(|_| 400.0),
            reason: d.map(|_| "echo_lost".to_string()),
            echo_state: Some("armed".into()),
        };
        let row = Row {
            setup: Setup::Vip(VipConfig::DEFAULTS),
            fault: Fault::LinkDown,
            samples: vec![sample(Some(12.0)), sample(None)],
        };
        let j = row.json();
        assert_eq!(j["impl"], "vip");
        assert_eq!(j["config"], "vip defaults");
        assert_eq!(j["advert_interval_ms"], 100);
        assert_eq!(j["fault"], "link down");
        assert_eq!(j["outage_ms"]["median"], 14.0);
        assert_eq!(j["detection_ms"]["n"], 1);
        assert_eq!(j["announce_us"]["p90"], 400.0);
        assert_eq!(j["takeover_reasons"]["echo_lost"], 1);
        assert!(j["samples"][1]["detection_ms"].is_null());
        let ka = Row {
            setup: Setup::Keepalived { advert_ms: 10 },
            fault: Fault::Kill,
            samples: vec![sample(None)],
        };
        assert!(ka.json()["detection_ms"].is_null());
        assert_eq!(ka.json()["config"], "keepalived 10 ms");
    }

    #[test]
    fn plan_rows() {
        let quick = plan(true, 5);
        assert_eq!(quick.len(), 2);
        assert!(quick
            .iter()
            .all(|(s, _, n)| *s == Setup::Vip(VipConfig::DEFAULTS) && *n == 1));
        let full = plan(false, 3);
        assert_eq!(full.len(), 4 * 4 + 2 + 2 * 4);
        let headline = full
            .iter()
            .find(|(s, f, _)| *s == Setup::Vip(VipConfig::DEFAULTS) && *f == Fault::LinkDown);
        assert_eq!(headline.map(|h| h.2), Some(HEADLINE_SAMPLES));
        assert!(VipConfig::DEFAULTS.keys.is_empty());
    }
}
