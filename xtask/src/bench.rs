//! `cargo xtask bench`: runs the benchmarks, prints one table, writes the results as
//! JSON, and with `--compare BASE.json` flags what got slower than an earlier run.
//!
//! `paths`, `throughput`, `scale`, `control`, `stall` and `hostile` need the XDP
//! object and run as the `perf` benchmark of the tests crate; `failover`, `bgp`,
//! `soak` and `chaos` run here (agents, keepalived, BIRD and FRR as processes in the
//! namespace lab).
//! `--baseline BIN` (an older vip) gives `paths`, `hostile`, `chaos` and the
//! multi-standby `failover` rows its figures too, in the same run.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{bgp, chaos, failover, failover_sizes, root, status};

pub const ALL: [&str; 8] = [
    "paths",
    "throughput",
    "scale",
    "control",
    "stall",
    "hostile",
    "failover",
    "bgp",
];

/// Asked for by name only: `soak` takes `soak_secs` twice (vip, then keepalived),
/// `chaos` some 9 minutes per mode and binary at its 200 faults; `failover-sizes` is
/// `failover`'s size axis alone (which `failover` runs too).
pub const EXPLICIT: [&str; 3] = ["soak", "chaos", "failover-sizes"];

pub struct Options {
    pub which: Vec<String>,
    pub quick: bool,
    pub runs: usize,
    /// Seconds each implementation is soaked (`soak`).
    pub soak_secs: u64,
    pub out: Option<PathBuf>,
    pub compare: Option<PathBuf>,
    /// A figure worse than the base by more than this fraction is flagged.
    pub threshold: f64,
    /// Faults per mode and binary (`chaos`).
    pub faults: usize,
    /// The fault sequence's seed (`chaos`).
    pub seed: Option<u64>,
    /// An older `vip` binary measured in the same run: `paths` (interleaved), `hostile`,
    /// `chaos` (same seed) and the multi-standby `failover` rows.
    pub baseline: Option<PathBuf>,
}

pub fn run(vip: &Path, o: Options) -> Result<()> {
    for w in &o.which {
        if !ALL.contains(&w.as_str()) && !EXPLICIT.contains(&w.as_str()) {
            bail!(
                "unknown benchmark `{w}` (choose from {}, {})",
                ALL.join(", "),
                EXPLICIT.join(", ")
            );
        }
    }
    let which: Vec<&str> = if o.which.is_empty() {
        ALL.to_vec()
    } else {
        o.which.iter().map(String::as_str).collect()
    };
    let mut results: Vec<Value> = Vec::new();
    let perf: Vec<&str> = which
        .iter()
        .copied()
        .filter(|w| !["failover", "failover-sizes", "soak", "chaos", "bgp"].contains(w))
        .collect();
    if !perf.is_empty() {
        let tmp = root().join("target/bench/perf.json");
        std::fs::create_dir_all(tmp.parent().unwrap_or(Path::new(".")))
            .context("creating target/bench")?;
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(root())
            .args(["bench", "-q", "-p", "vip-tests", "--bench", "perf", "--"])
            .args(&perf);
        if o.quick {
            c.arg("--quick");
        }
        if let Some(b) = &o.baseline {
            let b =
                std::fs::canonicalize(b).with_context(|| format!("--baseline {}", b.display()))?;
            c.arg("--baseline").arg(b);
        }
        c.arg("--json").arg(&tmp);
        status(&mut c)?;
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&tmp)?)
            .context("reading the perf results")?;
        results.extend(doc["results"].as_array().cloned().unwrap_or_default());
    }
    if which.contains(&"failover") {
        let f = failover::run(vip, o.quick, o.runs, o.baseline.as_deref())?;
        for row in f["rows"].as_array().into_iter().flatten() {
            let case = format!(
                "{}: {}",
                row["config"].as_str().unwrap_or(""),
                row["fault"].as_str().unwrap_or("")
            );
            results.push(json!({
                "bench": "failover",
                "case": case,
                "value": row["outage_ms"]["median"],
                "unit": "ms outage (median)",
                "lost_probes_median": row["lost"]["median"],
                "min": row["outage_ms"]["min"],
                "max": row["outage_ms"]["max"],
                "detection_ms": row["detection_ms"],
                "announce_us": row["announce_us"],
                "takeover_reasons": row["takeover_reasons"],
                "lower_is_better": true,
            }));
            if let Some(p50) = row["detection_ms"]["p50"].as_f64() {
                results.push(json!({
                    "bench": "failover",
                    "case": format!("{case}: detection"),
                    "value": p50,
                    "unit": "ms detection (p50)",
                    "detection_ms": row["detection_ms"],
                    "lower_is_better": true,
                }));
            }
        }
        pair_baselines(&mut results, f["baseline"].as_str());
        for c in f["cpu"].as_array().into_iter().flatten() {
            for (node, key) in [
                ("a (active)", "a_active_cpu_ms_per_s"),
                ("b (standby)", "b_standby_cpu_ms_per_s"),
            ] {
                results.push(json!({
                    "bench": "failover",
                    "case": format!("CPU of {}: {node}", c["config"].as_str().unwrap_or("")),
                    "value": c[key],
                    "unit": "CPU ms per s",
                    "seconds": c["seconds"],
                    "host_softirq_ms_per_s": c["host_softirq_ms_per_s"],
                    "lower_is_better": true,
                }));
            }
        }
    }
    if which.contains(&"failover") || which.contains(&"failover-sizes") {
        let (rows, table) = failover_sizes::run(vip, o.quick, o.runs, o.baseline.as_deref())?;
        print!("{table}");
        for row in rows {
            let bin = row["binary"].as_str().unwrap_or("");
            for which in ["first", "middle", "last"] {
                // A row whose runs all failed has no figure (its table says so).
                if row["outage_ms_p50"][which].is_null() {
                    continue;
                }
                results.push(json!({
                    "bench": "failover",
                    "case": format!("{} VIPs, link down ({bin}): {which} VIP", row["size"]),
                    "value": row["outage_ms_p50"][which],
                    "unit": "ms outage (median)",
                    "detection_ms_p50": row["detection_ms_p50"],
                    "announce_ms_p50": row["announce_ms_p50"],
                    "start_s_p50": row["start_s_p50"],
                    "samples": row["samples"],
                    "lower_is_better": true,
                }));
            }
        }
    }
    if which.contains(&"bgp") {
        let (rows, table) = bgp::run(vip, o.quick, o.runs)?;
        print!("{table}");
        results.extend(rows);
    }
    if which.contains(&"soak") {
        let f = failover::soak(vip, o.soak_secs, o.baseline.as_deref())?;
        for row in f["rows"].as_array().into_iter().flatten() {
            results.push(json!({
                "bench": "soak",
                "case": format!("{} ({} ms adverts), {} s, CPU hogs + 2 % loss between the nodes: false takeovers", row["config"].as_str().unwrap_or(""), row["advert_interval_ms"], o.soak_secs),
                "value": row["false_takeovers"],
                "unit": "takeovers",
                "lost_probes": row["lost_probes"],
                "answered_by_b": row["answered_by_b"],
                "echo_b": row["echo_b"],
                "lower_is_better": true,
            }));
        }
    }
    if which.contains(&"chaos") {
        results.extend(chaos::run(
            vip,
            o.quick,
            o.faults,
            o.seed,
            o.baseline.as_deref(),
        )?);
    }
    let doc = json!({ "machine": machine(), "quick": o.quick, "results": results });
    print!("{}", table(&doc));
    let out = o
        .out
        .unwrap_or_else(|| root().join("target/bench/latest.json"));
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\nresults written to {}", out.display());
    if let Some(base) = o.compare {
        let b: Value = serde_json::from_str(
            &std::fs::read_to_string(&base)
                .with_context(|| format!("reading {}", base.display()))?,
        )
        .with_context(|| format!("{} is not a bench result", base.display()))?;
        let (text, slower) = compare(&b, &doc, o.threshold);
        print!("{text}");
        if slower > 0 {
            bail!(
                "{slower} figure(s) slower than {} by more than {:.0}%",
                base.display(),
                o.threshold * 100.0
            );
        }
    }
    Ok(())
}

/// Gives each failover figure that the baseline binary also measured (its config
/// labelled "... (baseline)") that figure as its same-run baseline and ratio.
fn pair_baselines(results: &mut [Value], binary: Option<&str>) {
    let Some(binary) = binary else {
        return;
    };
    let name = Path::new(binary)
        .file_name()
        .map_or_else(|| binary.to_string(), |n| n.to_string_lossy().into_owned());
    let base: Vec<(String, f64)> = results
        .iter()
        .filter(|r| r["bench"] == "failover")
        .filter_map(|r| {
            let case = r["case"].as_str()?;
            case.contains(" (baseline)")
                .then(|| Some((case.replace(" (baseline)", ""), r["value"].as_f64()?)))?
        })
        .collect();
    for r in results.iter_mut().filter(|r| r["bench"] == "failover") {
        let Some((_, b)) = base.iter().find(|(c, _)| r["case"] == c.as_str()) else {
            continue;
        };
        r["baseline"] = json!(name);
        r["baseline_value"] = json!(b);
        if let Some(v) = r["value"].as_f64().filter(|_| *b > 0.0) {
            r["ratio"] = json!(v / b);
        }
    }
}

/// What the figures were measured on.
fn machine() -> Value {
    let sh = |c: &str, a: &[&str]| {
        Command::new(c)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    json!({ "cpus": sh("nproc", &[]), "kernel": sh("uname", &["-r"]), "cpu": cpu })
}

fn table(doc: &Value) -> String {
    let mut t = String::new();
    let m = &doc["machine"];
    let _ = writeln!(
        t,
        "\nmachine: {} CPUs, {}, kernel {}",
        m["cpus"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?")
    );
    let mut bench = String::new();
    for r in doc["results"].as_array().into_iter().flatten() {
        let b = r["bench"].as_str().unwrap_or("");
        if b != bench {
            bench = b.to_string();
            let _ = writeln!(t, "\n== {b}");
        }
        let v = r["value"].as_f64().unwrap_or(0.0);
        let unit = r["unit"].as_str().unwrap_or("");
        let mut line = format!(
            "  {:<78} {:>9.2} {unit}",
            r["case"].as_str().unwrap_or(""),
            v
        );
        if let Some(bv) = r["baseline_value"].as_f64() {
            let _ = write!(
                line,
                "   vs {:.2} ({})",
                bv,
                r["baseline"].as_str().unwrap_or("")
            );
            if let Some(ratio) = r["ratio"].as_f64() {
                let _ = write!(line, "  ratio {ratio:.2}");
            }
        }
        if let (Some(max), None) = (r["max"].as_f64(), r["lost_probes_median"].as_u64()) {
            let _ = write!(line, "   max {max:.1}");
            if let Some(bmax) = r["baseline_max"].as_f64() {
                let _ = write!(line, " (baseline {bmax:.1})");
            }
        }
        if let Some(l) = r["lost_probes_median"].as_u64() {
            let _ = write!(
                line,
                "   lost {l} (min {:.1}, max {:.1} ms)",
                r["min"].as_f64().unwrap_or(0.0),
                r["max"].as_f64().unwrap_or(0.0)
            );
        }
        t.push_str(&line);
        t.push('\n');
    }
    t
}

/// Compares two runs figure by figure; returns the report and how many got slower.
pub fn compare(base: &Value, new: &Value, threshold: f64) -> (String, usize) {
    let mut t = String::from("\n== compared with the base run (ratio new/base; >1 is worse)\n");
    let mut slower = 0;
    let key = |r: &Value| {
        format!(
            "{}/{}",
            r["bench"].as_str().unwrap_or(""),
            r["case"].as_str().unwrap_or("")
        )
    };
    let base_rows: Vec<&Value> = base["results"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    for r in new["results"].as_array().into_iter().flatten() {
        let Some(b) = base_rows.iter().find(|b| key(b) == key(r)) else {
            continue;
        };
        let (Some(nv), Some(bv)) = (r["value"].as_f64(), b["value"].as_f64()) else {
            continue;
        };
        if bv <= 0.0 || nv <= 0.0 {
            continue;
        }
        let lower_better = r["lower_is_better"].as_bool().unwrap_or(true);
        let worse = if lower_better { nv / bv } else { bv / nv };
        let flag = if worse > 1.0 + threshold {
            slower += 1;
            "  SLOWER"
        } else {
            ""
        };
        let _ = writeln!(
            t,
            "  {:<78} {:>9.2} -> {:>9.2}   x{:.2}{flag}",
            key(r),
            bv,
            nv,
            worse
        );
    }
    (t, slower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baselines_figures_pair_with_the_same_case() {
        let mut r = vec![
            json!({"bench": "failover", "case": "vip defaults, 3 nodes: link down", "value": 24.0}),
            json!({"bench": "failover", "case": "vip defaults, 3 nodes (baseline): link down", "value": 12.0}),
            json!({"bench": "failover", "case": "vip defaults: link down", "value": 15.0}),
        ];
        pair_baselines(&mut r, Some("/opt/old/vip-old"));
        assert_eq!(r[0]["baseline"], "vip-old");
        assert_eq!(r[0]["baseline_value"], 12.0);
        assert_eq!(r[0]["ratio"], 2.0);
        assert!(r[1]["baseline_value"].is_null() && r[2]["baseline_value"].is_null());
        let mut r2 = r.clone();
        pair_baselines(&mut r2, None);
        assert_eq!(r, r2);
    }

    #[test]
    fn compare_flags_slowdowns_both_ways() {
        let base = json!({"results": [
            {"bench": "paths", "case": "a", "value": 50.0, "lower_is_better": true},
            {"bench": "throughput", "case": "b", "value": 3.0, "lower_is_better": false},
            {"bench": "paths", "case": "c", "value": 50.0, "lower_is_better": true}
        ]});
        let new = json!({"results": [
            {"bench": "paths", "case": "a", "value": 60.0, "lower_is_better": true},
            {"bench": "throughput", "case": "b", "value": 2.0, "lower_is_better": false},
            {"bench": "paths", "case": "c", "value": 51.0, "lower_is_better": true}
        ]});
        let (text, n) = compare(&base, &new, 0.10);
        assert_eq!(n, 2, "{text}");
        assert!(text.contains("paths/a") && text.contains("SLOWER"));
    }
}
