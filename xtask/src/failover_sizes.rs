//! `cargo xtask bench failover`'s size axis: how long clients lose a VIP when the
//! active of a group of 1, 100, 1,000, 10,000 or 20,000 VIPs loses its link, for the
//! group's first, middle and last VIP.
//!
//! The demo's topology (servers a at priority 200 and b at 100, client c), the VIPs
//! in a /16 beside the lab's /24 (every host gets an address in it), both agents at
//! the defaults. Once a serves all three probed VIPs (its start-up has put every
//! VIP on lo) and b's echo is armed, c probes the three every millisecond over
//! UDP and a's link goes down; the outage of each is the time from its last answer
//! by a to its first by b. b's status gives the decision and the first announcement
//! (`last_takeover`), so detection and decision-to-announcement are reported too.
//! Each size is run with the group's addresses added at the takeover (the default)
//! and with `addresses = "resident"` (on lo on both nodes from the start: the bench
//! waits until b holds every one before the fault), and resident with a virtual MAC
//! (`mac = "..."`: the client's neighbour entries name the group's MAC, and a
//! takeover's first frame moves the switch's entry for all the VIPs at once). With
//! `--baseline BIN`, each run
//! of the binary under test is followed by one of that binary (at its defaults, or
//! in the one variant `VIP_BENCH_VARIANTS` names), on the same lab. `--quick` (CI):
//! one 1,000-VIP run of each way. `VIP_BENCH_SIZES=1000,10000` chooses the sizes; `VIP_BENCH_FAMILY=6` makes the
//! VIPs IPv6 (in the lab's /64), and adds a variant `ipv6_routes` (on takeover,
//! `ipv6_local = "route"`); `VIP_BENCH_VARIANTS=resident,virtual_mac` runs only those
//! of `on_takeover`, `resident`, `virtual_mac`, `virtual_mac_on_takeover` (run only
//! when named) and `ipv6_routes`; `VIP_BENCH_FAULT=handover` makes
//! the fault a planned handover (`vip demote web` on a) instead of a's link going
//! down.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lab::{outage, wait_for, Agent, Lan, Prober, Responder};
use serde_json::{json, Value};

use crate::failover::{mono_ns, quantiles};

const PORT: u16 = 7008;
const PROBE: Duration = Duration::from_millis(1);
const SIZES: [usize; 5] = [1, 100, 1000, 10_000, 20_000];
/// Runs per size and binary when `--runs` asks for fewer.
const RUNS: usize = 3;

/// The group's VIPs are IPv6 (`VIP_BENCH_FAMILY=6`: in the lab's /64), not IPv4.
fn ipv6() -> bool {
    std::env::var("VIP_BENCH_FAMILY").is_ok_and(|f| f == "6")
}

/// The `i`-th VIP of a group (in the /16 10.9.0.0, beside the lab's /24, or in the
/// lab's 2001:db8::/64 from 2001:db8::9:1), with its prefix.
fn vip(i: usize) -> String {
    if ipv6() {
        format!("2001:db8::9:{:x}", i + 1)
    } else {
        format!("10.9.{}.{}", 1 + i / 250, 1 + i % 250)
    }
}

fn prefix() -> u8 {
    if ipv6() {
        64
    } else {
        16
    }
}

/// A VIP as a socket address's host part.
fn host_part(i: usize) -> String {
    if ipv6() {
        format!("[{}]", vip(i))
    } else {
        vip(i)
    }
}

/// The text every bench VIP starts with.
fn vip_mark() -> &'static str {
    if ipv6() {
        "2001:db8::9:"
    } else {
        "10.9."
    }
}

/// The probed VIPs of a group of `n`: its first, middle and last.
fn probed(n: usize) -> [usize; 3] {
    [0, n / 2, n - 1]
}

#[derive(Debug, Clone)]
struct Sample {
    /// Outage of the first, middle and last VIP (ms).
    outage_ms: [f64; 3],
    lost: [usize; 3],
    detection_ms: Option<f64>,
    announce_ms: Option<f64>,
    /// From a's start to a serving all three probed VIPs (s): b's start (after a's)
    /// and the probes' first answers included.
    start_s: f64,
    /// From a's process start to its group's active state (its status's
    /// `since_unix_ms`), b's start not included (s).
    active_s: Option<f64>,
}

/// What is run: a binary, and the way its group holds its addresses.
#[derive(Clone, Copy)]
struct Variant<'a> {
    bin: &'a Path,
    baseline: bool,
    resident: bool,
    virtual_mac: bool,
    /// `ipv6_local = "route"` (IPv6 runs only).
    routes6: bool,
}

/// The bench group's virtual MAC (the `virtual_mac` variant).
const VMAC: &str = "02:76:69:70:00:09";

impl Variant<'_> {
    fn label(&self) -> &'static str {
        if self.baseline {
            return "baseline";
        }
        if self.routes6 {
            return "this build, IPv6 as routes";
        }
        match (self.baseline, self.resident, self.virtual_mac) {
            (true, ..) => "baseline",
            (false, false, false) => "this build",
            (false, false, true) => "on takeover, virtual MAC",
            (false, true, false) => "this build, resident",
            (false, true, true) => "resident, virtual MAC",
        }
    }
}

struct Row {
    size: usize,
    label: &'static str,
    samples: Vec<Sample>,
    /// Runs that did not get to a fault, and why.
    failed: Vec<String>,
}

/// Runs the size axis: its rows as JSON, and its table.
pub fn run(
    vip: &Path,
    quick: bool,
    runs: usize,
    baseline: Option<&Path>,
) -> Result<(Vec<Value>, String)> {
    let mut lan = Lan::new(&["a", "b", "c"]).context("building the lab")?;
    lan.enable_xdp_tx(&["a", "b"])?;
    for (h, last) in [("a", 1), ("b", 2), ("c", 3)] {
        lan.host(h)
            .ns
            .ip(&["addr", "add", &format!("10.9.0.{last}/16"), "dev", "eth0"])?;
    }
    let sizes: Vec<usize> = match std::env::var("VIP_BENCH_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .context("VIP_BENCH_SIZES: comma-separated sizes")
            })
            .collect::<Result<_>>()?,
        Err(_) if quick => vec![1000],
        Err(_) => SIZES.to_vec(),
    };
    let runs = if quick { 1 } else { runs.max(RUNS) };
    let mut rows = Vec::new();
    for &size in &sizes {
        let this = |resident, virtual_mac| Variant {
            bin: vip,
            baseline: false,
            resident,
            virtual_mac,
            routes6: false,
        };
        let routes6 = Variant {
            routes6: true,
            ..this(false, false)
        };
        let mut bins: Vec<Variant> = [
            ("on_takeover", this(false, false)),
            ("resident", this(true, false)),
            ("virtual_mac", this(true, true)),
            ("virtual_mac_on_takeover", this(false, true)),
            ("ipv6_routes", routes6),
        ]
        .into_iter()
        // A virtual MAC on takeover runs only when named: the other virtual MAC row
        // is the one the README reports.
        .filter(|(name, v)| {
            chosen(name) && (!v.routes6 || ipv6()) && (!v.virtual_mac || v.resident || named(name))
        })
        .map(|(_, v)| v)
        .collect();
        if let Some(b) = baseline.filter(|_| !quick) {
            // Like for like when one variant is named: the baseline runs it too;
            // otherwise at its defaults.
            let like = match bins[..] {
                [one] if std::env::var("VIP_BENCH_VARIANTS").is_ok() => one,
                _ => this(false, false),
            };
            bins.push(Variant {
                bin: b,
                baseline: true,
                ..like
            });
        }
        let mut per: Vec<Vec<Sample>> = vec![Vec::new(); bins.len()];
        let mut failed: Vec<Vec<String>> = vec![Vec::new(); bins.len()];
        for i in 0..runs {
            for (k, &v) in bins.iter().enumerate() {
                let label = v.label();
                let s = match once(&lan, size, v) {
                    Ok(s) => s,
                    Err(e) => {
                        // Reported in the row (a binary that cannot hold the group is a
                        // result, not a broken bench).
                        eprintln!(
                            "[bench failover] {size:>6} VIPs {label:<20} run {}/{runs}: FAILED: {e:#}",
                            i + 1
                        );
                        failed[k].push(format!("{e:#}"));
                        continue;
                    }
                };
                eprintln!(
                    "[bench failover] {size:>6} VIPs {label:<20} run {}/{runs}: outage first/middle/last {:.1} / {:.1} / {:.1} ms (lost {} / {} / {}), detection {}, first announcement {} after the decision, a serving {:.2} s after its start (active after {})",
                    i + 1,
                    s.outage_ms[0],
                    s.outage_ms[1],
                    s.outage_ms[2],
                    s.lost[0],
                    s.lost[1],
                    s.lost[2],
                    opt_ms(s.detection_ms),
                    opt_ms(s.announce_ms),
                    s.start_s,
                    s.active_s.map_or("n/a".into(), |v| format!("{v:.2} s")),
                );
                per[k].push(s);
            }
        }
        for (k, (samples, failed)) in per.into_iter().zip(failed).enumerate() {
            rows.push(Row {
                size,
                label: bins[k].label(),
                samples,
                failed,
            });
        }
    }
    drop(lan);
    Ok((rows.iter().map(Row::json).collect(), table(&rows)))
}

fn once(lan: &Lan, size: usize, v: Variant) -> Result<Sample> {
    let bin = v.bin;
    lan.host("c").ns.ip(&["neigh", "flush", "dev", "eth0"])?;
    let vips: Vec<String> = (0..size)
        .map(|i| format!("\"{}/{}\"", vip(i), prefix()))
        .collect();
    let cfg = |me: &str, peer: &str, prio: u8| {
        format!(
            "[node]\nname = \"{me}\"\ninterface = \"eth0\"\nmax_vips = {}\n\n[[group]]\nname = \"web\"\nvips = [{}]\npeers = [\"{}\"]\npriority = {prio}\n{}{}",
            size.max(4096),
            vips.join(", "),
            lan.host(peer).ip4,
            if v.resident {
                "addresses = \"resident\"\n"
            } else {
                ""
            },
            if v.virtual_mac {
                format!("mac = \"{VMAC}\"\n")
            } else if v.routes6 {
                "ipv6_local = \"route\"\n".to_string()
            } else {
                String::new()
            },
        )
    };
    let targets: Vec<SocketAddr> = probed(size)
        .iter()
        .map(|&i| format!("{}:{PORT}", host_part(i)).parse())
        .collect::<std::result::Result<_, _>>()?;
    let mut responders = Vec::new();
    // A group of one VIP (or two) probes the same VIP more than once: one responder.
    let mut unique = targets.clone();
    unique.dedup();
    for to in &unique {
        for h in ["a", "b"] {
            responders.push(Responder::start(&lan.host(h).ns, *to, h)?);
        }
    }
    let started = Instant::now();
    let spawned_ms = unix_ms();
    let a = Agent::start_full(&lan.host("a").ns, "a", &cfg("a", "b", 200), bin, &[], &[])?;
    let b = Agent::start_full(&lan.host("b").ns, "b", &cfg("b", "a", 100), bin, &[], &[])?;
    let result = measure(
        lan,
        &a,
        &b,
        &targets,
        (started, spawned_ms),
        v.resident.then_some(size),
    );
    // Stopped together, with time to take thousands of addresses off lo (both
    // namespaces share the kernel's rtnetlink lock).
    let mut agents = [a, b];
    for why in lab::stop_together(&mut agents, Duration::from_secs(90)) {
        eprintln!("[bench failover] {why}");
    }
    drop(agents);
    for h in ["a", "b"] {
        let n = vips_on_lo(&lan.host(h).ns);
        if n > 0 {
            eprintln!("[bench failover] {h} left {n} VIPs on lo");
        }
    }
    let a_host = lan.host("a");
    let up = a_host.ns.ip(&["link", "set", "eth0", "up"]).and_then(|_| {
        // The kernel flushed a's IPv6 addresses when its link went down.
        let ip6 = format!("{}/64", a_host.ip6);
        a_host
            .ns
            .ip(&["-6", "addr", "replace", &ip6, "dev", "eth0", "nodad"])
    });
    drop(responders);
    let s = result?;
    up?;
    Ok(s)
}

/// Whether the variant `name` runs (`VIP_BENCH_VARIANTS=resident,virtual_mac`: only
/// those; unset: every one).
fn chosen(name: &str) -> bool {
    std::env::var("VIP_BENCH_VARIANTS").is_err() || named(name)
}

/// Whether `VIP_BENCH_VARIANTS` names the variant `name`.
fn named(name: &str) -> bool {
    std::env::var("VIP_BENCH_VARIANTS").is_ok_and(|v| v.split(',').any(|n| n.trim() == name))
}

/// The fault is a planned handover (`VIP_BENCH_FAULT=handover`), not a link down.
fn handover() -> bool {
    std::env::var("VIP_BENCH_FAULT").is_ok_and(|f| f == "handover")
}

/// How many of the bench's VIPs the stack of `ns` accepts (local routes or addresses
/// on lo: the baseline binary may use either).
fn vips_on_lo(ns: &lab::Netns) -> usize {
    let mark = vip_mark();
    ns.vips_on_lo()
        .iter()
        .filter(|a| a.to_string().starts_with(mark))
        .count()
}

/// `resident`: the group's size, when b must hold every address before the fault.
fn measure(
    lan: &Lan,
    a: &Agent,
    b: &Agent,
    targets: &[SocketAddr],
    (started, spawned_ms): (Instant, u64),
    resident: Option<usize>,
) -> Result<Sample> {
    let state = |x: &Agent| -> String {
        x.status()
            .ok()
            .and_then(|s| s["groups"][0]["state"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    // Both namespaces' address adds share the kernel's rtnetlink lock: two resident
    // 20,000-VIP nodes start in about twice one's time.
    let settle = Duration::from_secs(if resident.is_some() { 240 } else { 90 });
    if wait_for(settle, || {
        (state(a) == "active" && state(b) == "standby").then_some(())
    })
    .is_none()
    {
        bail!(
            "a never became active with b standby: {} / {}",
            state(a),
            state(b)
        );
    }
    let c = &lan.host("c").ns;
    let probers: Vec<Prober> = targets
        .iter()
        .map(|t| Prober::start(c, *t, PROBE))
        .collect::<Result<_>>()?;
    // a serves every probed VIP: its VIPs are on lo.
    for (p, t) in probers.iter().zip(targets) {
        if !p.wait_answers("a", 20, settle) {
            bail!("a never answered {t}");
        }
    }
    let start_s = started.elapsed().as_secs_f64();
    let active_s = a.status()?["groups"][0]["since_unix_ms"]
        .as_u64()
        .and_then(|t| t.checked_sub(spawned_ms))
        .map(|d| d as f64 / 1e3);
    if let Some(n) = resident {
        let b_ns = &lan.host("b").ns;
        let held = || vips_on_lo(b_ns);
        if wait_for(settle, || (held() >= n).then_some(())).is_none() {
            bail!("b holds {} of its {n} resident addresses", held());
        }
    }
    let armed = wait_for(Duration::from_secs(5), || {
        let s = b.status().ok()?;
        let e = &s["groups"][0]["echo"];
        (e.is_null() || e["state"].as_str() == Some("armed")).then_some(())
    });
    if armed.is_none() {
        bail!("b's echo never armed");
    }
    std::thread::sleep(Duration::from_millis(100));
    let injected = mono_ns()?;
    if handover() {
        let out = a.cli(&["demote", "web"])?;
        if !out.status.success() {
            bail!("vip demote: {}", String::from_utf8_lossy(&out.stderr));
        }
    } else {
        lan.host("a").ns.ip(&["link", "set", "eth0", "down"])?;
    }
    for (p, t) in probers.iter().zip(targets) {
        if !p.wait_answers("b", 20, settle) {
            bail!("b never answered {t}");
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut outage_ms = [0.0; 3];
    let mut lost = [0; 3];
    for (k, p) in probers.into_iter().enumerate() {
        let probes = p.finish();
        let o = outage(&probes, "a", "b").context("the client never went from a to b")?;
        outage_ms[k] = o.outage.as_secs_f64() * 1e3;
        lost[k] = o.lost;
    }
    let t = b.status()?["groups"][0]["last_takeover"].clone();
    let decided = t["decided_mono_ns"].as_u64().filter(|&d| d >= injected);
    let announced = t["announced_mono_ns"].as_u64();
    Ok(Sample {
        outage_ms,
        lost,
        detection_ms: decided.map(|d| (d - injected) as f64 / 1e6),
        announce_ms: decided
            .zip(announced)
            .map(|(d, a)| (a as i128 - d as i128) as f64 / 1e6),
        start_s,
        active_s,
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn opt_ms(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.2} ms"))
}

/// The median (nearest rank, as the failover bench's quantiles).
fn median(v: Vec<f64>) -> Option<f64> {
    quantiles(&v).map(|q| q[1])
}

/// A row's medians: the outages (first, middle, last VIP), detection, decision to
/// first announcement, a serving after the start, a active after its own start.
type Medians = (
    [Option<f64>; 3],
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

impl Row {
    fn medians(&self) -> Medians {
        let col = |k: usize| median(self.samples.iter().map(|s| s.outage_ms[k]).collect());
        (
            [col(0), col(1), col(2)],
            median(self.samples.iter().filter_map(|s| s.detection_ms).collect()),
            median(self.samples.iter().filter_map(|s| s.announce_ms).collect()),
            median(self.samples.iter().map(|s| s.start_s).collect()),
            median(self.samples.iter().filter_map(|s| s.active_s).collect()),
        )
    }

    fn json(&self) -> Value {
        let (o, d, a, st, act) = self.medians();
        json!({
            "size": self.size,
            "binary": self.label,
            "runs": self.samples.len(),
            "failed_runs": self.failed,
            "outage_ms_p50": { "first": o[0], "middle": o[1], "last": o[2] },
            "detection_ms_p50": d,
            "announce_ms_p50": a,
            "start_s_p50": st,
            "active_s_p50": act,
            "samples": self.samples.iter().map(|s| json!({
                "outage_ms": s.outage_ms,
                "lost": s.lost,
                "detection_ms": s.detection_ms,
                "announce_ms": s.announce_ms,
                "start_s": s.start_s,
                "active_s": s.active_s,
            })).collect::<Vec<_>>(),
        })
    }
}

fn table(rows: &[Row]) -> String {
    let fault = if handover() {
        "planned handover"
    } else {
        "link down"
    };
    let mut out = format!(
        "\nfailover by group size ({fault}, IPv{}; medians; resident: addresses = \"resident\"; virtual MAC: mac = \"{VMAC}\")\n\
         | VIPs | binary | runs (failed) | outage first / middle / last | detection | decision → first announcement | a serving after start | a active after its own start |\n\
         |---:|---|---:|---|---:|---:|---:|---:|\n",
        if ipv6() { 6 } else { 4 },
    );
    let f = |x: Option<f64>, u: &str, d: usize| x.map_or("n/a".into(), |v| format!("{v:.d$} {u}"));
    for r in rows {
        let (o, d, a, st, act) = r.medians();
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} / {} / {} | {} | {} | {} | {} |",
            r.size,
            r.label,
            r.samples.len(),
            r.failed.len(),
            f(o[0], "ms", 1),
            f(o[1], "ms", 1),
            f(o[2], "ms", 1),
            f(d, "ms", 1),
            f(a, "ms", 2),
            f(st, "s", 2),
            f(act, "s", 2),
        );
    }
    out
}
