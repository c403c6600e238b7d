//! `cargo xtask bench bgp`: VIPs announced over BGP, judged from a client behind an
//! FRR router (`lab::routed`: nodes a and b run the agent with its own BIRD, BFD at
//! 10 ms x 3 unless said otherwise).
//!
//! Cases, each run on a fresh lab, with 8 UDP flows (each its own source port, so the
//! router's L4 hash spreads them over whatever next hops it has) probing the VIP every
//! millisecond:
//! * **link down** of the active (a), with BFD, and the same lab **without BFD** (the
//!   hold timer, 3 s, as the peers' default class): per flow, the time from a's last
//!   answer to b's first; and when a's next hop left the router's kernel FIB;
//! * the same with the router's zebra not holding its work queue (`zebra work-queue
//!   0`): how much of the outage is the router's (bgpd's own 50 ms queue hold is
//!   compiled into FRR);
//! * **planned handover** (`vip demote web` on a) and **SIGTERM** of a's agent: probes
//!   lost, over all flows.
//!
//! `--quick` (CI): one run of each; otherwise `--runs` (at least 3).

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lab::{
    outage,
    routed::{Options, Routed},
    Prober,
};
use serde_json::{json, Value};

use crate::failover::quantiles;

const FLOWS: usize = 8;

/// What one run of a case gave.
#[derive(Default)]
struct Run {
    /// Per flow: a's last answer to b's first.
    outages_ms: Vec<f64>,
    lost: usize,
    /// When a's next hop left the router's FIB, after the fault.
    withdrawn_ms: Option<f64>,
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    LinkDown,
    Demote,
    Sigterm,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::LinkDown => "link down",
            Fault::Demote => "planned handover (vip demote)",
            Fault::Sigterm => "SIGTERM of the agent",
        }
    }
}

fn probers(lab: &Routed) -> Result<Vec<Prober>> {
    (0..FLOWS).map(|_| lab.probe(true)).collect()
}

fn one(fault: Fault, bfd: bool, zebra_wq: Option<u32>) -> Result<Run> {
    let mut o = Options {
        bfd,
        ..Options::default()
    };
    o.frr.zebra_work_queue_ms = zebra_wq;
    let mut lab = Routed::start(&o)?;
    let ps = probers(&lab)?;
    let t0 = Instant::now();
    match fault {
        Fault::LinkDown => {
            lab.lan.host("a").ns.ip(&["link", "set", "eth0", "down"])?;
        }
        Fault::Demote => {
            let out = lab.agent("a").cli(&["demote", "web"])?;
            if !out.status.success() {
                bail!("vip demote: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Fault::Sigterm => {
            lab.agent("a")
                .proc
                .signal(nix::sys::signal::Signal::SIGTERM)?;
        }
    }
    // Long enough for the hold timer (3 s) when there is no BFD.
    let withdrawn = lab.gone_after("a", t0, Duration::from_secs(6));
    for p in &ps {
        if !p.wait_answers("b", 50, Duration::from_secs(6)) {
            bail!(
                "a flow was not answered by b after the fault\n{}",
                lab.log("b")
            );
        }
    }
    let mut run = Run {
        withdrawn_ms: withdrawn.map(|d| d.as_secs_f64() * 1e3),
        ..Run::default()
    };
    for p in ps {
        let probes = p.finish();
        run.lost += lab::unanswered(&probes);
        if let Some(o) = outage(&probes, "a", "b") {
            run.outages_ms.push(o.outage.as_secs_f64() * 1e3);
        }
    }
    if fault == Fault::Sigterm {
        let _ = lab.agent_mut("a").stop();
    }
    Ok(run)
}

/// Runs every case; returns the result rows and the table.
pub fn run(vip: &Path, quick: bool, runs: usize) -> Result<(Vec<Value>, String)> {
    std::env::set_var("VIP_BIN", vip);
    let n = if quick { 1 } else { runs.max(3) };
    let cases = [
        ("vip over BGP, BFD 10 ms x 3", true, None, Fault::LinkDown),
        (
            "vip over BGP, no BFD (hold 3 s)",
            false,
            None,
            Fault::LinkDown,
        ),
        (
            "vip over BGP, BFD 10 ms x 3, router's zebra work-queue 0",
            true,
            Some(0),
            Fault::LinkDown,
        ),
        ("vip over BGP, BFD 10 ms x 3", true, None, Fault::Demote),
        ("vip over BGP, BFD 10 ms x 3", true, None, Fault::Sigterm),
    ];
    let mut rows = Vec::new();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n== bgp ({FLOWS} UDP flows at 1 ms from a client behind an FRR router, {n} run(s) each)"
    );
    for (config, bfd, zebra_wq, fault) in cases {
        let mut outages = Vec::new();
        let mut withdrawn = Vec::new();
        let mut lost = Vec::new();
        for i in 0..n {
            let r = one(fault, bfd, zebra_wq)
                .with_context(|| format!("{config}: {}: run {}", fault.name(), i + 1))?;
            outages.extend(r.outages_ms);
            withdrawn.extend(r.withdrawn_ms);
            lost.push(r.lost as f64);
        }
        let slow = outages.iter().filter(|o| **o > 1000.0).count();
        let o = quantiles(&outages);
        let w = quantiles(&withdrawn);
        let l = quantiles(&lost);
        let _ = writeln!(
            t,
            "  {config}: {}\n    outage per flow min/median/max {} ({slow} of {} flows over 1 s); a's route gone from the router's FIB after {}; lost probes per run (median) {}",
            fault.name(),
            o.map_or("-".into(), |[min, p50, _, max]| format!("{min:.1} / {p50:.1} / {max:.1} ms")),
            outages.len(),
            w.map_or("-".into(), |[_, p50, _, max]| format!("{p50:.1} ms (max {max:.1})")),
            l.map_or("-".into(), |q| format!("{:.0}", q[1])),
        );
        rows.push(json!({
            "bench": "bgp",
            "case": format!("{config}: {}", fault.name()),
            "value": o.map(|q| q[1]),
            "unit": "ms outage (median of flows)",
            "min": o.map(|q| q[0]),
            "max": o.map(|q| q[3]),
            "withdrawn_ms_p50": w.map(|q| q[1]),
            "flows_over_1s": slow,
            "lost_probes_median": l.map(|q| q[1]),
            "runs": n,
            "flows": FLOWS,
            "lower_is_better": true,
        }));
    }
    Ok((rows, t))
}
