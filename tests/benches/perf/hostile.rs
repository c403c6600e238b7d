//! Floods on the election port from a host on the VIPs' subnet that has no key.
//!
//! Lab: a (priority 200, active) and b (100) elect with 100 ms advertisements and
//! the default echo (2 ms, 6 misses); x, the attacker, is a third host on the switch.
//! x floods b's election port with signed-looking hellos (a random tag where the HMAC
//! goes) from the benchmarks' XDP live-frames generator, the fastest sender here
//! (an AF_PACKET socket where the kernel refuses live frames: rows say which), for
//! 10 s: from 65,536 non-peer sources, or spoofed as the active (its address,
//! x's own MAC); with and without a key on the group; native and skb mode. The
//! flood goes through the switch as x's frames would; `direct` rows put it straight
//! into b's switch port instead (no switch in the way: the highest rate this lab can
//! put on b's link; native mode only, as live frames need NAPI at the receiver).
//!
//! Judged from the wire and the kernel: the active's advertisements to b counted as
//! they leave a (a packet socket on a's switch port) against those b's agent
//! received, false transitions (either node's state changing during the flood),
//! UdpRcvbufErrors of b's namespace; then a's link goes down during a second flood
//! and b's decision time after it (and why) is the echo's detection under attack.
//!
//! `VIP_HOSTILE_ONLY=TEXT` runs only the cases whose label contains TEXT.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lab::{frames, Agent, Capture, Lan};
use serde_json::{json, Value};
use vip::{
    advert::{Advert, Kind},
    dataplane::BenchPrograms,
    host::monotonic_ns,
    mac::Mac,
};

use crate::{median, record, Size};

const PORT: u16 = 4112;
const ADVERT_MS: u64 = 100;

#[derive(Clone, Copy, PartialEq)]
enum Flood {
    /// 65,536 sources of another subnet.
    Strangers,
    /// The active's address, the attacker's MAC.
    SpoofedPeer,
}

#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// From x, through the switch.
    Switch,
    /// Into b's switch port, bypassing the switch.
    Direct,
}

struct Case {
    bin: PathBuf,
    label: String,
    skb: bool,
    key: bool,
    flood: Flood,
    via: Via,
}

fn config(lan: &Lan, me: &str, prio: u8, skb: bool, key: Option<&Path>) -> String {
    let peer = if me == "a" { "b" } else { "a" };
    format!(
        "[node]\nname = \"{me}\"\ninterface = \"eth0\"\n{}\n\n[[group]]\nname = \"web\"\n\
         vips = [\"10.0.0.50/24\"]\npeers = [\"{}\"]\npriority = {prio}\nadvert_interval_ms = {ADVERT_MS}\n{}\n",
        if skb { "xdp_mode = \"skb\"" } else { "" },
        lan.host(peer).ip4,
        key.map(|k| format!("auth_key_file = \"{}\"", k.display()))
            .unwrap_or_default()
    )
}

fn status(a: &Agent) -> Result<Value> {
    a.status()
}

fn group(a: &Agent) -> Result<Value> {
    Ok(status(a)?["groups"][0].clone())
}

fn transitions(a: &Agent) -> Result<u64> {
    group(a)?["transitions"]
        .as_u64()
        .context("no transitions in status")
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    if lab::wait_for(timeout, || f().then_some(())).is_none() {
        bail!("timed out waiting for {what}");
    }
    Ok(())
}

/// A signed-looking hello from `from`.
fn hello(from: Ipv4Addr) -> Vec<u8> {
    Advert {
        kind: Kind::Hello,
        priority: 254,
        interval_ms: 10,
        hold_ms: 0,
        mac: Mac([2, 0, 0, 0, 0, 0x66]),
        addr: IpAddr::V4(from),
        seq: 1,
        epoch: 7,
        group: "web".into(),
        handshakes: true,
        nonce: None,
    }
    .encode(Some(b"not the group's key, not at all"))
}

/// The flood's sender: the live-frames generator in a namespace, transmitting out of
/// one of its interfaces, or an AF_PACKET socket there where the kernel refuses live
/// frames (a smaller flood: the rows say which sent it).
struct Generator {
    ns_name: String,
    progs: BenchPrograms,
    iface: String,
    ifindex: u32,
    frame: Vec<u8>,
    sources: u32,
    /// Set once the kernel refused live frames.
    refused: AtomicBool,
}

impl Generator {
    fn new(ns: &lab::Netns, iface: &str, frame: Vec<u8>, sources: u32) -> Result<Self> {
        let mut progs = ns.run_in(BenchPrograms::load)?;
        progs.set_frame(&frame[..60])?;
        progs.set_sources(sources)?;
        let ifindex = ns.run_in(|| nix::net::if_::if_nametoindex(iface))?;
        Ok(Generator {
            ns_name: ns.name.clone(),
            progs,
            iface: iface.into(),
            ifindex,
            frame,
            sources,
            refused: AtomicBool::new(false),
        })
    }

    /// Which generator sent (or will send) the flood.
    fn name(&self) -> &'static str {
        if self.refused.load(Ordering::Relaxed) {
            "AF_PACKET sendmmsg (live frames refused by this kernel)"
        } else {
            "XDP live frames"
        }
    }

    /// Sends for `secs` (or until `stop`); returns frames sent.
    fn run(&self, ns: &lab::Netns, secs: f64, stop: &AtomicBool) -> Result<u64> {
        debug_assert_eq!(ns.name, self.ns_name);
        ns.run_in(|| -> Result<u64> {
            let t0 = Instant::now();
            let mut sent = 0u64;
            while t0.elapsed().as_secs_f64() < secs && !stop.load(Ordering::Relaxed) {
                if !self.refused.load(Ordering::Relaxed)
                    && self
                        .progs
                        .live_frames(&self.frame, self.ifindex, 20_000)
                        .context("live-frames BPF_PROG_TEST_RUN")?
                {
                    sent += 20_000;
                    continue;
                }
                self.refused.store(true, Ordering::Relaxed);
                let f = &self.frame;
                let first = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
                let frames = (0..self.sources.max(1))
                    .map(|k| lab::frames::with_ipv4_source(f, Ipv4Addr::from(u32::from(first) + k)))
                    .collect();
                let left = secs - t0.elapsed().as_secs_f64();
                sent += lab::PacketFlood::open(&self.iface, frames)?.send_for(left, stop)?;
            }
            Ok(sent)
        })
    }
}

fn snmp_udp(lan: &Lan, host: &str, field: &str) -> Result<u64> {
    lan.host(host).ns.snmp("Udp", field)
}

/// Packets b's eth0 received (the kernel's count, whatever the data plane did).
fn rx_packets(lan: &Lan, host: &str) -> Result<u64> {
    let s = lan
        .host(host)
        .ns
        .exec(&["cat", "/sys/class/net/eth0/statistics/rx_packets"])?;
    Ok(s.trim().parse()?)
}

/// What one case measured.
struct Outcome {
    /// Which generator sent the flood (`Generator::name`).
    generator: &'static str,
    offered_pps: f64,
    reached_pps: f64,
    /// What a's agent sent (its counter) and what left a on the wire (a packet
    /// socket, which may miss a few on a loaded host).
    adverts_sent: u64,
    adverts_on_wire: u64,
    adverts_received: u64,
    false_transitions: u64,
    rcvbuf_errors: u64,
    detection_ms: Option<f64>,
    detection_reason: String,
    /// The false transitions' reasons ("node:state/reason_kind") and the data
    /// plane's refusals of peers' datagrams ("node:counter") during the flood.
    why: std::collections::BTreeMap<String, u64>,
    /// b's longest run of unanswered probes (a takeover needs 6, or more on a path
    /// seen slow).
    longest_streak: u64,
}

/// A node's data-plane counters, as "node:name".
fn counters(node: &str, a: &Agent) -> Result<std::collections::BTreeMap<String, u64>> {
    Ok(status(a)?["global"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (format!("{node}:{k}"), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default())
}

/// A node's transitions by reason (`transition_reasons`), as "node:reason".
fn reasons(node: &str, a: &Agent) -> Result<std::collections::BTreeMap<String, u64>> {
    let g = group(a)?;
    Ok(g["transition_reasons"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (format!("{node}:{k}"), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default())
}

fn one(case: &Case, secs: f64, det_secs: f64, dir: &Path) -> Result<Outcome> {
    let mut lan = Lan::new(&["a", "b", "x"])?;
    lan.enable_xdp_tx(&["a", "b", "x"])?;
    let key_file = dir.join("web.key");
    std::fs::write(&key_file, "correct horse battery staple\n")?;
    let key = case.key.then_some(key_file.as_path());
    let start = |me: &str, prio| {
        Agent::start_full(
            &lan.host(me).ns,
            me,
            &config(&lan, me, prio, case.skb, key),
            &case.bin,
            &[],
            &[],
        )
    };
    let a = start("a", 200)?;
    let b = start("b", 100)?;
    wait("a active, b standby", Duration::from_secs(10), || {
        group(&a).is_ok_and(|g| g["state"] == "active")
            && group(&b).is_ok_and(|g| g["state"] == "standby")
    })?;
    wait("b's echo armed", Duration::from_secs(10), || {
        group(&b).is_ok_and(|g| g["echo"]["state"] == "armed")
    })?;
    let (ha, hb, hx) = (lan.host("a"), lan.host("b"), lan.host("x"));
    let (src, sources) = match case.flood {
        Flood::Strangers => (Ipv4Addr::new(10, 1, 0, 0), 65_536),
        Flood::SpoofedPeer => (ha.ip4, 1),
    };
    let frame = frames::udp4(
        hb.mac.parse::<Mac>()?,
        hx.mac.parse::<Mac>()?,
        src,
        hb.ip4,
        PORT,
        PORT,
        &hello(src),
    );
    let (gen_ns, iface) = match case.via {
        Via::Switch => (&hx.ns, "eth0".to_string()),
        Via::Direct => (&lan.switch, hb.port.clone()),
    };
    let gen = Generator::new(gen_ns, &iface, frame, sources)?;

    // The flood, with the active's adverts counted as they leave a.
    let adverts_sent = |a: &Agent| -> Result<u64> {
        Ok(group(a)?["election"]["adverts_sent"].as_u64().unwrap_or(0))
    };
    let before = (
        transitions(&a)?,
        transitions(&b)?,
        group(&b)?["election"]["adverts_received"]
            .as_u64()
            .unwrap_or(0),
        snmp_udp(&lan, "b", "RcvbufErrors")?,
        rx_packets(&lan, "b")?,
        adverts_sent(&a)?,
    );
    let mut why_before = reasons("a", &a)?;
    why_before.extend(reasons("b", &b)?);
    why_before.extend(counters("a", &a)?);
    why_before.extend(counters("b", &b)?);
    let from_a = Capture::open(&lan.switch, &ha.port)?;
    let done = AtomicBool::new(false);
    let never = AtomicBool::new(false);
    let (on_wire, sent, spent) = std::thread::scope(|s| -> Result<(u64, u64, f64)> {
        let counter = s.spawn(|| {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                n += from_a
                    .collect(Duration::from_millis(100), |f| {
                        f.len() >= 42
                            && f[12..14] == [8, 0]
                            && f[23] == 17
                            && f[26..30] == ha.ip4.octets()
                            && f[30..34] == hb.ip4.octets()
                            && f[36..38] == PORT.to_be_bytes()
                    })
                    .len() as u64;
            }
            n
        });
        let t0 = Instant::now();
        let sent = gen.run(gen_ns, secs, &never);
        let spent = t0.elapsed().as_secs_f64();
        // What is in flight lands before the counters are read.
        std::thread::sleep(Duration::from_millis(3 * ADVERT_MS));
        done.store(true, Ordering::Relaxed);
        let n = counter
            .join()
            .map_err(|_| anyhow::anyhow!("counter thread"))?;
        Ok((n, sent?, spent))
    })?;
    let received = group(&b)?["election"]["adverts_received"]
        .as_u64()
        .unwrap_or(0)
        - before.2;
    let sent_by_a = adverts_sent(&a)? - before.5;
    let false_transitions = (transitions(&a)? - before.0) + (transitions(&b)? - before.1);
    let rcvbuf_errors = snmp_udp(&lan, "b", "RcvbufErrors")? - before.3;
    let reached = rx_packets(&lan, "b")? - before.4;
    let longest_streak = group(&b)?["echo"]["longest_streak"].as_u64().unwrap_or(0);
    let mut why = reasons("a", &a)?;
    why.extend(reasons("b", &b)?);
    // The data plane's refusals other than the flood's own.
    for (k, v) in counters("a", &a)?.into_iter().chain(counters("b", &b)?) {
        if k.contains("over_budget") || k.contains("refused") || k.starts_with("a:election") {
            why.insert(k, v);
        }
    }
    for (k, n) in why.iter_mut() {
        *n -= why_before.get(k).copied().unwrap_or(0);
    }
    why.retain(|_, n| *n > 0);

    // Then a's link goes down during a flood: how soon, and why, does b take over?
    let (mut detection_ms, mut detection_reason) = (None, String::new());
    if false_transitions == 0 {
        let stop = Arc::new(AtomicBool::new(false));
        let down_at = std::thread::scope(|s| -> Result<u64> {
            let flooding = s.spawn(|| gen.run(gen_ns, det_secs, &stop));
            std::thread::sleep(Duration::from_secs_f64(det_secs / 3.0));
            let t = monotonic_ns();
            ha.ns.ip(&["link", "set", "eth0", "down"])?;
            flooding
                .join()
                .map_err(|_| anyhow::anyhow!("flood thread"))??;
            Ok(t)
        })?;
        let taken = lab::wait_for(Duration::from_secs(5), || {
            let g = group(&b).ok()?;
            let t = g["last_takeover"]["decided_mono_ns"].as_u64()?;
            (g["state"] == "active" && t > down_at).then(|| {
                (
                    (t - down_at) as f64 / 1e6,
                    g["last_takeover"]["reason_kind"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string(),
                )
            })
        });
        if let Some((ms, why)) = taken {
            detection_ms = Some(ms);
            detection_reason = why;
        } else {
            detection_reason = "no takeover within 5 s".into();
        }
    }
    drop((a, b));
    drop(lan);
    Ok(Outcome {
        generator: gen.name(),
        offered_pps: sent as f64 / spent,
        reached_pps: reached as f64 / spent,
        adverts_sent: sent_by_a,
        adverts_on_wire: on_wire,
        adverts_received: received,
        false_transitions,
        rcvbuf_errors,
        detection_ms,
        detection_reason,
        why,
        longest_streak,
    })
}

pub fn run(size: Size, baseline: Option<&Path>) -> Result<Vec<Value>> {
    let this = lab::vip_bin();
    let (secs, det_secs) = if size.quick { (1.0, 1.5) } else { (10.0, 3.0) };
    let mut bins = vec![(this, "this vip".to_string())];
    if let Some(b) = baseline {
        let name = b
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        bins.push((b.to_path_buf(), name));
    }
    let mut cases = Vec::new();
    let shapes: Vec<(bool, bool, Via)> = if size.quick {
        vec![(false, true, Via::Switch)]
    } else {
        vec![
            (false, true, Via::Switch),
            (false, false, Via::Switch),
            (true, true, Via::Switch),
            (true, false, Via::Switch),
            (false, true, Via::Direct),
        ]
    };
    for (skb, key, via) in shapes {
        for flood in [Flood::Strangers, Flood::SpoofedPeer] {
            // Interleaved: each binary in turn on the same case.
            for (bin, name) in &bins {
                let label = format!(
                    "{name}: {}, {}, {}{}",
                    if skb { "skb" } else { "native" },
                    if key { "key" } else { "no key" },
                    match flood {
                        Flood::Strangers => "flood from 65,536 non-peers",
                        Flood::SpoofedPeer => "flood spoofed as the active (x's MAC)",
                    },
                    if via == Via::Direct {
                        ", into b's port"
                    } else {
                        ""
                    }
                );
                cases.push(Case {
                    bin: bin.clone(),
                    label,
                    skb,
                    key,
                    flood,
                    via,
                });
            }
        }
    }
    // VIP_HOSTILE_ONLY=TEXT: only the cases whose label contains TEXT.
    if let Ok(only) = std::env::var("VIP_HOSTILE_ONLY") {
        cases.retain(|c| c.label.contains(&only));
    }
    let dir = std::env::temp_dir().join(format!("vip-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut out = Vec::new();
    let mut detections = Vec::new();
    for case in &cases {
        let o = one(case, secs, det_secs, &dir).with_context(|| case.label.clone())?;
        // Of the adverts a sent: the wire count when the capture saw them all, else
        // a's own count (the capture missed some; a sends nothing it did not count).
        let sent = o.adverts_on_wire.max(o.adverts_sent);
        let pct = if sent > 0 {
            100.0 * o.adverts_received.min(sent) as f64 / sent as f64
        } else {
            0.0
        };
        eprintln!(
            "[perf]   {}: offered {:.0} kpps ({}), {:.0} kpps reached b, adverts {}/{} ({pct:.1} %; {} on the wire), \
             false transitions {} {:?}, echo's longest streak {}, UdpRcvbufErrors {}, \
             link down detected in {} ({})",
            case.label,
            o.offered_pps / 1e3,
            o.generator,
            o.reached_pps / 1e3,
            o.adverts_received,
            sent,
            o.adverts_on_wire,
            o.false_transitions,
            o.why,
            o.longest_streak,
            o.rcvbuf_errors,
            o.detection_ms
                .map(|d| format!("{d:.1} ms"))
                .unwrap_or_else(|| "-".into()),
            o.detection_reason
        );
        let mut r = record(
            "hostile",
            &format!("{}: adverts received", case.label),
            pct,
            "% of the active's",
            None,
            false,
        );
        r["adverts_sent"] = json!(o.adverts_sent);
        r["adverts_on_wire"] = json!(o.adverts_on_wire);
        r["adverts_received"] = json!(o.adverts_received);
        r["offered_kpps"] = json!(o.offered_pps / 1e3);
        r["generator"] = json!(o.generator);
        r["reached_b_kpps"] = json!(o.reached_pps / 1e3);
        r["false_transitions"] = json!(o.false_transitions);
        r["udp_rcvbuf_errors"] = json!(o.rcvbuf_errors);
        r["echo_longest_streak"] = json!(o.longest_streak);
        r["flood_seconds"] = json!(secs);
        out.push(r);
        let mut r = record(
            "hostile",
            &format!("{}: false transitions", case.label),
            o.false_transitions as f64,
            "transitions",
            None,
            true,
        );
        r["udp_rcvbuf_errors"] = json!(o.rcvbuf_errors);
        r["reasons"] = json!(o.why);
        out.push(r);
        // Not measured after a false takeover (the standby is already active).
        if let Some(d) = o.detection_ms {
            let mut r = record(
                "hostile",
                &format!("{}: link down detected", case.label),
                d,
                "ms",
                None,
                true,
            );
            r["reason_kind"] = json!(o.detection_reason);
            out.push(r);
        }
        if let Some(d) = o.detection_ms {
            detections.push(d);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !detections.is_empty() {
        eprintln!(
            "[perf]   hostile: median detection {:.1} ms",
            median(detections)
        );
    }
    Ok(out)
}
