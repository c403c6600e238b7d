//! `cargo xtask bench chaos`: the "one owner on the wire" run of `lab::chaos` at
//! length (200 faults per mode by default, `--faults N`), in native and in skb mode,
//! judged from the switch only. Per mode and fault kind: how many events, how many
//! ARP requests and NS were answered by two MACs, how many announcements overlapped
//! another node's answers, and the longest unanswered stretch per event (p50 and
//! max). With `--baseline BIN` the same seed runs on that binary too, right after, so
//! that a fix is shown against the binary it fixes.
//!
//! Asked for by name only (like `soak`): at ~2.5 s per fault, 200 faults are about
//! 9 minutes per mode and binary. `--quick` runs 4 faults per mode as a smoke test.

use std::path::Path;

use anyhow::{Context, Result};
use lab::{
    chaos::{self, KindFigures, Mode, Run},
    wire::Family,
};
use serde_json::{json, Value};

/// Faults per mode and binary with `--quick`.
const QUICK_FAULTS: usize = 4;

/// A label for a binary in the table: its file name.
fn label(bin: &Path) -> String {
    bin.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| bin.display().to_string())
}

/// Runs the benchmark; returns its result rows (the bench's `results`).
pub fn run(
    vip: &Path,
    quick: bool,
    faults: usize,
    seed: Option<u64>,
    baseline: Option<&Path>,
) -> Result<Vec<Value>> {
    std::env::set_var("VIP_BIN", vip);
    let faults = if quick { QUICK_FAULTS } else { faults.max(1) };
    let seed = seed.unwrap_or_else(chaos::fresh_seed);
    eprintln!(
        "[bench chaos] seed {seed} (replay with --seed {seed}), {faults} faults per mode{}",
        baseline.map_or(String::new(), |b| format!(", baseline {}", b.display()))
    );
    let mut rows = Vec::new();
    for mode in [Mode::Native, Mode::Skb] {
        let one = |bin: &Path| -> Result<Run> {
            let r = chaos::run(&chaos::Options {
                seed,
                faults,
                mode,
                bin: bin.to_path_buf(),
                progress: true,
            })
            .with_context(|| {
                format!(
                    "chaos, {} mode, {}, seed {seed}",
                    mode.name(),
                    bin.display()
                )
            })?;
            eprint!("{}", r.table());
            let problems = r.problems();
            if !problems.is_empty() {
                eprintln!("[bench chaos] the run was not sound: {problems:?}");
            }
            Ok(r)
        };
        let new = one(vip)?;
        let base = baseline.map(one).transpose()?;
        rows.extend(mode_rows(&new, base.as_ref()));
    }
    Ok(rows)
}

/// The rows of one mode: a summary with the whole run, then per fault kind the
/// double answers and the outages; each with the baseline's figure where there is one.
fn mode_rows(new: &Run, base: Option<&Run>) -> Vec<Value> {
    let mode = new.mode.name();
    let mut rows = Vec::new();
    let with_base = |mut row: Value, b: Option<f64>| {
        if let (Some(b), Some(bin)) = (b, base.map(|r| label(&r.bin))) {
            row["baseline"] = json!(bin);
            row["baseline_value"] = json!(b);
            if let Some(v) = row["value"].as_f64().filter(|_| b > 0.0) {
                row["ratio"] = json!(v / b);
            }
        }
        row
    };
    let total = |r: &Run| {
        let v = r.analysis.verdict();
        (v.doubles_arp + v.doubles_nd) as f64
    };
    rows.push(with_base(
        json!({
            "bench": "chaos",
            "case": format!("{mode}: requests answered by two MACs over {} faults", new.faults.len()),
            "value": total(new),
            "unit": "requests",
            "seed": new.seed,
            "binary": new.bin.display().to_string(),
            "run": new.json(),
            "baseline_run": base.map(Run::json),
            "lower_is_better": true,
        }),
        base.map(total),
    ));
    let base_kinds = base.map(Run::per_kind).unwrap_or_default();
    for (kind, f) in new.per_kind() {
        let b = base_kinds.get(&kind);
        let doubles = |k: &KindFigures| (k.doubles[0] + k.doubles[1]) as f64;
        rows.push(with_base(
            json!({
                "bench": "chaos",
                "case": format!("{mode}, {}: requests answered by two MACs", kind.name()),
                "value": doubles(&f),
                "unit": "requests",
                "events": f.events,
                "arp": f.doubles[0],
                "ns": f.doubles[1],
                "overlaps": f.overlaps,
                "baseline_arp": b.map(|b| b.doubles[0]),
                "baseline_ns": b.map(|b| b.doubles[1]),
                "baseline_overlaps": b.map(|b| b.overlaps),
                "lower_is_better": true,
            }),
            b.map(doubles),
        ));
        for family in Family::BOTH {
            let (p50, max) = f.outage_ms(family);
            rows.push(with_base(
                json!({
                    "bench": "chaos",
                    "case": format!("{mode}, {}: longest unanswered {} stretch (p50)", kind.name(), family.name()),
                    "value": p50,
                    "unit": "ms",
                    "max": max,
                    "events": f.events,
                    "baseline_max": b.map(|b| b.outage_ms(family).1),
                    "lower_is_better": true,
                }),
                b.map(|b| b.outage_ms(family).0),
            ));
        }
    }
    rows
}
