//! Does anything delay the election? An agent with one elected group (100 ms adverts)
//! and a static group of many VIPs; its adverts are timestamped on the peer's side of
//! the wire, first undisturbed (the baseline), then while `vip status --json` and a
//! Prometheus scrape run in a loop, then across a reload that adds a group of half as
//! many VIPs again (10,000 beside the 20,000: entries, index and addresses). Reported:
//! the p50, p99 and maximum gap between two adverts, in intervals, and the ratio to the
//! undisturbed baseline's.

use std::{
    cell::RefCell,
    io::{Read, Write},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lab::{Agent, Capture, Lan};
use serde_json::Value;

use crate::{record, Size};

const PORT: u16 = 8207;
const METRICS: &str = "127.0.0.1:9207";
const INTERVAL_MS: f64 = 100.0;

/// Gaps (ms) between adverts reaching `cap` during `window`.
fn gaps(cap: &Capture, window: Duration) -> Vec<f64> {
    let times = RefCell::new(Vec::new());
    cap.collect(window, |f| {
        // IPv4, UDP, destination port PORT.
        let advert = f.len() > 42
            && f[12..14] == [8, 0]
            && f[23] == 17
            && u16::from_be_bytes([f[36], f[37]]) == PORT;
        if advert {
            times.borrow_mut().push(Instant::now());
        }
        false
    });
    let t = times.into_inner();
    t.windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .collect()
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn run(size: Size) -> Result<Vec<Value>> {
    let n: u32 = if size.quick { 2_000 } else { 20_000 };
    let added = n / 2;
    let window = Duration::from_secs(if size.quick { 3 } else { 10 });
    let lan = Lan::new(&["a", "b"])?;
    let (a, b) = (lan.host("a"), lan.host("b"));
    // Room for the static VIPs: a /16 next to the lab's /24.
    a.ns.ip(&["addr", "add", "10.9.0.1/16", "dev", "eth0"])?;
    let vips: Vec<String> = (0..n)
        .map(|i| format!("\"10.9.{}.{}/16\"", 1 + i / 250, 1 + i % 250))
        .collect();
    let cfg = format!(
        "[node]\nname = \"a\"\ninterface = \"eth0\"\nmax_vips = {}\nadvert_port = {PORT}\nmetrics_listen = \"{METRICS}\"\n\n\
         [[group]]\nname = \"web\"\nvips = [\"10.0.0.50/24\"]\npeers = [\"{}\"]\npriority = 200\n\n\
         [[group]]\nname = \"bulk\"\nrole = \"active\"\nvips = [{}]\n",
        n + added + 16,
        b.ip4,
        vips.join(", ")
    );
    // A listener on the peer, so its kernel does not answer with port unreachables.
    let _sink =
        b.ns.run_in(|| std::net::UdpSocket::bind((b.ip4, PORT)))
            .context("binding the peer's advert port")?;
    let agent = Agent::start(&a.ns, "a", &cfg).context("starting the agent")?;
    let cap = Capture::open(&b.ns, "eth0")?;
    // Wait until a is active and advertising.
    let t0 = Instant::now();
    while gaps(&cap, Duration::from_millis(300)).is_empty() {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("no adverts from a:\n{}", agent.log_text());
        }
    }
    let quiet = gaps(&cap, window);
    let stop = AtomicBool::new(false);
    let (loaded, calls) = std::thread::scope(|s| {
        let status = s.spawn(|| {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = agent.cli(&["status", "--json"]);
                k += 1;
            }
            k
        });
        let scrape = s.spawn(|| {
            a.ns.run_in(|| {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut c) = std::net::TcpStream::connect(METRICS) {
                        let _ = c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
                        let mut body = Vec::new();
                        let _ = c.read_to_end(&mut body);
                        k += 1;
                    }
                }
                k
            })
        });
        let g = gaps(&cap, window);
        stop.store(true, Ordering::Relaxed);
        let calls = status.join().unwrap_or(0) + scrape.join().unwrap_or(0);
        (g, calls)
    });
    // A reload that adds a static group of `added` VIPs (in the next /16's worth of
    // the same /16): the adverts are timed from just before it to `window` after.
    let more: Vec<String> = (0..added)
        .map(|i| format!("\"10.9.{}.{}/16\"", 1 + (n + i) / 250, 1 + (n + i) % 250))
        .collect();
    let text = std::fs::read_to_string(&agent.config)?;
    std::fs::write(
        &agent.config,
        format!(
            "{text}\n[[group]]\nname = \"more\"\nrole = \"active\"\nvips = [{}]\n",
            more.join(", ")
        ),
    )?;
    let (reloaded, reload_out) = std::thread::scope(|s| {
        let reload = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            agent.cli(&["reload"])
        });
        let g = gaps(&cap, window);
        (g, reload.join())
    });
    let reload_out = reload_out
        .map_err(|_| anyhow::anyhow!("the reload thread panicked"))?
        .context("vip reload")?;
    if !reload_out.status.success() {
        bail!(
            "vip reload failed: {}\n{}",
            String::from_utf8_lossy(&reload_out.stderr),
            agent.log_text()
        );
    }
    drop(agent);
    drop(lan);
    if quiet.is_empty() || loaded.is_empty() || reloaded.is_empty() {
        bail!("no adverts captured");
    }
    let per = |v: &[f64], p: f64| pct(v.to_vec(), p) / INTERVAL_MS;
    let quiet_max = per(&quiet, 1.0);
    let mut out = Vec::new();
    for (case, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        let mut r = record(
            "stall",
            &format!("advert gap {case}, {n} VIPs, status + scrape looping (intervals)"),
            per(&loaded, p),
            "intervals",
            Some(("same agent, no status load", per(&quiet, p))),
            true,
        );
        r["status_and_scrapes"] = serde_json::json!(calls);
        r["adverts"] = serde_json::json!(loaded.len() + 1);
        out.push(r);
    }
    for (case, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        out.push(record(
            "stall",
            &format!("advert gap {case}, {n} VIPs, a reload adding {added} (intervals)"),
            per(&reloaded, p),
            "intervals",
            Some(("same agent, no reload", per(&quiet, p))),
            true,
        ));
    }
    eprintln!(
        "[perf] stall: {n} VIPs, {calls} status calls + scrapes in {} s; gap max {:.2} intervals (quiet {:.2}); a reload adding {added} VIPs: gap max {:.2}",
        window.as_secs(),
        per(&loaded, 1.0),
        quiet_max,
        per(&reloaded, 1.0)
    );
    Ok(out)
}
