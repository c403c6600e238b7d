//! "One owner on the wire": three elected nodes at the default timers, a client asking
//! for both VIPs every 5 ms, the switch recorded, and a seeded random sequence of
//! faults on whichever node is active. Shared by `tests/tests/wire.rs` (a short run
//! that must find one owner throughout) and `cargo xtask bench chaos` (hundreds of
//! faults, figures per fault kind, optionally against a baseline binary).
//!
//! The nodes: a (priority 200) and b (180) with their data planes pinned on a private
//! bpffs, one directory each, so that a killed agent's program stays attached and its
//! successor adopts it; d (160) unpinned (`pin = false`: its program goes with its
//! process). One elected group `web` with 10.0.0.50/24 and 2001:db8::50/64, nothing
//! else configured (100 ms adverts, the 2 ms x 6 echo, the 300 ms lease, preemption).
//! The switch floods multicast (no MLD snooping), so every node sees every
//! solicitation and any of them could answer: nothing on the wire hides a second
//! owner.
//!
//! `vip status` is asked only *which* node to hit and whether the cluster settled
//! (exactly one active, the others standby) before the next fault; every verdict
//! comes from the recording ([`crate::wire`]). The seed fixes the sequence of faults
//! and the pauses between them; the agents' own timing is the machine's, so a replay
//! reproduces the scenario, not necessarily every frame.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::{
    wait_for,
    wire::{self, realtime_ns, Analysis, Asker, Family, Mac, Mark, MarkFigures, Recorder, Watch},
    Agent, Bpffs, Lan,
};

/// How often the client asks for each VIP.
pub const ASK_INTERVAL: Duration = Duration::from_millis(5);
/// The pause after a fault has been applied and undone, before the next one; a
/// seeded 0-250 ms is added to it, so that faults fall at every phase of the adverts.
pub const GAP: Duration = Duration::from_millis(1500);
/// How long the cluster may take to settle on one active before that is a finding.
const SETTLE: Duration = Duration::from_secs(10);

/// XDP mode of the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Driver mode, with the lab's pass-through programs on the switch ports (a veth
    /// delivers XDP_TX only to a peer that has one).
    Native,
    /// Generic mode, no helper on the switch: as in a container.
    Skb,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Skb => "skb",
        }
    }
}

/// What is done to the active node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGSTOP for 600 ms (twice the lease), then SIGCONT.
    Stop,
    /// SIGKILL, then the same agent (config, pins) started again 300 ms later: a and b
    /// adopt their pinned data planes.
    Kill,
    /// `vip demote`, another node takes over, then `vip resume` (a better node
    /// preempts).
    DemoteResume,
    /// SIGTERM (hand over, remove everything), then started again.
    Term,
    /// SIGTERM to all three at once, then all three started at once.
    RestartAll,
    /// SIGTERM, then started again with its wall clock an hour back (libfaketime;
    /// monotonic time untouched), until it is next restarted.
    Faketime,
    /// Its link down for 400 ms, then up.
    LinkDown,
    /// `vip reload` with the config unchanged (pinned: the binary re-executes and
    /// adopts its data plane; unpinned: applied in place).
    Reload,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Stop,
        FaultKind::Kill,
        FaultKind::DemoteResume,
        FaultKind::Term,
        FaultKind::RestartAll,
        FaultKind::Faketime,
        FaultKind::LinkDown,
        FaultKind::Reload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Stop => "SIGSTOP 600 ms, SIGCONT",
            FaultKind::Kill => "SIGKILL, start 300 ms later",
            FaultKind::DemoteResume => "vip demote, vip resume",
            FaultKind::Term => "SIGTERM, start again",
            FaultKind::RestartAll => "all three restarted at once",
            FaultKind::Faketime => "restart under faketime -1h",
            FaultKind::LinkDown => "link down 400 ms",
            FaultKind::Reload => "vip reload",
        }
    }

    /// A short stable label (JSON keys, bench cases).
    pub fn key(self) -> &'static str {
        match self {
            FaultKind::Stop => "sigstop",
            FaultKind::Kill => "sigkill",
            FaultKind::DemoteResume => "demote-resume",
            FaultKind::Term => "sigterm",
            FaultKind::RestartAll => "restart-all",
            FaultKind::Faketime => "faketime",
            FaultKind::LinkDown => "link-down",
            FaultKind::Reload => "reload",
        }
    }
}

/// SplitMix64: a few lines, the same sequence everywhere, for a given seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0; the modulo bias is irrelevant at these sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// `n` faults: rounds of every kind in a seeded random order, so that any 8
/// consecutive rounds' worth covers each kind equally.
pub fn plan(rng: &mut Rng, n: usize) -> Vec<FaultKind> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut round = FaultKind::ALL;
        for i in (1..round.len()).rev() {
            round.swap(i, rng.below(i as u64 + 1) as usize);
        }
        out.extend(round.iter().take(n - out.len()));
    }
    out
}

/// A seed from the clock, for runs that were given none.
pub fn fresh_seed() -> u64 {
    Rng::new(realtime_ns()).next_u64() % 1_000_000
}

#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub faults: usize,
    pub mode: Mode,
    /// The vip binary the agents run (the lab's helpers run [`crate::vip_bin`]).
    pub bin: PathBuf,
    /// A line per fault on stderr as it goes (for long runs).
    pub progress: bool,
}

/// One fault as it was applied.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// The node it hit (the active one).
    pub node: String,
    /// When it started (CLOCK_REALTIME ns, the recording's clock).
    pub at_ns: u64,
    /// When it was undone (the node running again, the link up, ...).
    pub done_ns: u64,
    /// From `done_ns` until exactly one node was active again (ms), per `vip status`;
    /// None when the cluster did not settle within 10 s.
    pub settled_ms: Option<f64>,
    /// The active node once settled and the reason its status gives (`reason_kind`):
    /// context for the report, never part of a verdict.
    pub then_active: Option<(String, String)>,
}

/// The three nodes: names, priorities, pinned or not.
const NODES: [(&str, u8, bool); 3] = [("a", 200, true), ("b", 180, true), ("d", 160, false)];
const CLIENT: &str = "c";
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x50);

struct Node {
    name: &'static str,
    config: String,
    agent: Option<Agent>,
}

/// The lab and its agents. Field order is drop order: agents, then the lab (helpers,
/// hosts, switch), then the bpffs with any pin left.
struct Cluster {
    nodes: Vec<Node>,
    lan: Lan,
    bpffs: Bpffs,
    bin: PathBuf,
    faketime: PathBuf,
    /// Agents that did not stop cleanly on SIGTERM (not within 8 s, or not with
    /// success): each a finding.
    bad_stops: Vec<String>,
    /// Every agent's log, as it stopped (written out with `VIP_CHAOS_LOGS=DIR`).
    logs: Vec<(String, String)>,
}

impl Cluster {
    fn new(mode: Mode, bin: &Path) -> Result<Self> {
        let faketime = crate::libfaketime()?;
        let bpffs = Bpffs::mount()?;
        let names: Vec<&str> = NODES.iter().map(|n| n.0).chain([CLIENT]).collect();
        let mut lan = Lan::new(&names).context("building the lab")?;
        let servers: Vec<&str> = NODES.iter().map(|n| n.0).collect();
        if mode == Mode::Native {
            lan.enable_xdp_tx(&servers)?;
        }
        // Flood multicast to every port: a node's solicitation group membership must not
        // decide who can answer. (The bridge's netfilter hook, present only with
        // br_netfilter, would also parse IPv6 itself.)
        lan.switch.ip(&[
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        let _ = lan
            .switch
            .sysctl("net.bridge.bridge-nf-call-ip6tables", "0");
        // A link down flushes an interface's IPv6 addresses otherwise, and an agent
        // started afterwards would refuse the IPv6 VIP (no address in its subnet):
        // docs/IPV6.md's advice for the VIPs' interface.
        for n in &servers {
            lan.host(n)
                .ns
                .sysctl("net.ipv6.conf.eth0.keep_addr_on_down", "1")?;
        }
        let nodes = NODES
            .iter()
            .map(|&(name, priority, pinned)| {
                let peers: Vec<String> = NODES
                    .iter()
                    .filter(|n| n.0 != name)
                    .map(|n| format!("\"{}\"", lan.host(n.0).ip4))
                    .collect();
                let pin = if pinned {
                    format!("pin_dir = \"{}/{name}\"", bpffs.dir.display())
                } else {
                    "pin = false".to_string()
                };
                let config = format!(
                    "[node]\nname = \"{name}\"\ninterface = \"eth0\"\nxdp_mode = \"{}\"\n{pin}\n\n\
                     [[group]]\nname = \"web\"\nvips = [\"{VIP4}/24\", \"{VIP6}/64\"]\npeers = [{}]\npriority = {priority}\n",
                    mode.name(),
                    peers.join(", ")
                );
                Node {
                    name,
                    config,
                    agent: None,
                }
            })
            .collect();
        Ok(Cluster {
            nodes,
            lan,
            bpffs,
            bin: bin.to_path_buf(),
            faketime,
            bad_stops: Vec::new(),
            logs: Vec::new(),
        })
    }

    fn watch(&self) -> Result<Watch> {
        let c = self.lan.host(CLIENT);
        Ok(Watch {
            client_mac: c.mac.parse()?,
            client4: c.ip4,
            client6: c.ip6,
            vip4: VIP4,
            vip6: VIP6,
        })
    }

    /// The switch ports, first the nodes', then the client's.
    fn ports(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.name)
            .chain([CLIENT])
            .map(|n| self.lan.host(n).port.clone())
            .collect()
    }

    /// Every host's MAC with its name, for the reports.
    fn names(&self) -> Vec<(Mac, String)> {
        self.lan
            .hosts
            .iter()
            .filter_map(|h| Some((h.mac.parse().ok()?, h.name.clone())))
            .collect()
    }

    /// Starts the agent of node `i` (wall clock an hour back with `faked`).
    fn start(&self, i: usize, faked: bool) -> Result<Agent> {
        let n = &self.nodes[i];
        let preload = format!("LD_PRELOAD={}", self.faketime.display());
        let wrapper: Vec<&str> = if faked {
            vec![
                "env",
                &preload,
                "FAKETIME=-1h",
                "FAKETIME_DONT_FAKE_MONOTONIC=1",
            ]
        } else {
            vec![]
        };
        Agent::start_full(
            &self.lan.host(n.name).ns,
            n.name,
            &n.config,
            &self.bin,
            &wrapper,
            &[],
        )
        .with_context(|| format!("starting the agent of {}", n.name))
    }

    /// Starts the agents of `which` at once (one thread each).
    fn start_at_once(&mut self, which: &[usize]) -> Result<()> {
        let started: Vec<(usize, Result<Agent>)> = std::thread::scope(|s| {
            let this = &*self;
            let handles: Vec<_> = which
                .iter()
                .map(|&i| (i, s.spawn(move || this.start(i, false))))
                .collect();
            handles
                .into_iter()
                .map(|(i, h)| {
                    (
                        i,
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("start thread panicked"))),
                    )
                })
                .collect()
        });
        for (i, a) in started {
            self.nodes[i].agent = Some(a?);
        }
        Ok(())
    }

    /// Stops the agents of `which` together ([`crate::stop_together`]).
    fn stop_at_once(&mut self, which: &[usize]) {
        let mut agents: Vec<Agent> = which
            .iter()
            .filter_map(|&i| self.nodes[i].agent.take())
            .collect();
        let names: Vec<String> = which
            .iter()
            .map(|&i| self.nodes[i].name.to_string())
            .collect();
        let bad = crate::stop_together(&mut agents, Duration::from_secs(8));
        for (n, a) in names.into_iter().zip(&agents) {
            self.logs.push((n, a.log_text()));
        }
        drop(agents);
        self.bad_stops.extend(bad);
    }

    fn state(&self, i: usize) -> String {
        self.nodes[i]
            .agent
            .as_ref()
            .and_then(|a| a.status().ok())
            .and_then(|s| s["groups"][0]["state"].as_str().map(str::to_string))
            .unwrap_or_else(|| "down".into())
    }

    /// The `reason_kind` of node `i`'s group.
    fn reason(&self, i: usize) -> String {
        self.nodes[i]
            .agent
            .as_ref()
            .and_then(|a| a.status().ok())
            .and_then(|s| s["groups"][0]["reason_kind"].as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    }

    fn states(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.state(i)).collect()
    }

    /// The active node, when exactly one is active and the others standby.
    fn settled(&self) -> Option<usize> {
        let st = self.states();
        let active: Vec<usize> = (0..st.len()).filter(|&i| st[i] == "active").collect();
        (active.len() == 1 && st.iter().all(|s| s == "active" || s == "standby")).then(|| active[0])
    }

    fn agent(&self, i: usize) -> Result<&Agent> {
        self.nodes[i]
            .agent
            .as_ref()
            .with_context(|| format!("{} has no agent", self.nodes[i].name))
    }

    fn cli(&self, i: usize, args: &[&str]) -> Result<()> {
        let out = self.agent(i)?.cli(args)?;
        if !out.status.success() {
            bail!(
                "vip {} on {}: {}",
                args.join(" "),
                self.nodes[i].name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Applies `kind` to node `i` and undoes it; returns (started, undone) instants.
    fn inject(&mut self, kind: FaultKind, i: usize) -> Result<(u64, u64)> {
        let at = realtime_ns();
        let t0 = Instant::now();
        match kind {
            FaultKind::Stop => {
                let a = self.agent(i)?;
                a.proc.signal(Signal::SIGSTOP)?;
                std::thread::sleep(Duration::from_millis(600));
                a.proc.signal(Signal::SIGCONT)?;
            }
            FaultKind::Kill => {
                let mut a = self.nodes[i].agent.take().context("no agent")?;
                a.proc.signal(Signal::SIGKILL)?;
                let gone = wait_for(Duration::from_secs(2), || a.proc.try_status());
                if gone.is_none() {
                    bail!("{} did not die of SIGKILL", self.nodes[i].name);
                }
                self.logs
                    .push((self.nodes[i].name.to_string(), a.log_text()));
                drop(a);
                std::thread::sleep(Duration::from_millis(300).saturating_sub(t0.elapsed()));
                self.nodes[i].agent = Some(self.start(i, false)?);
            }
            FaultKind::DemoteResume => {
                self.cli(i, &["demote", "web"])?;
                // Another node takes over (by the release), then this one is back in
                // the election.
                let other = wait_for(Duration::from_secs(3), || {
                    (0..self.nodes.len())
                        .find(|&j| j != i && self.state(j) == "active")
                        .map(|_| ())
                });
                if other.is_none() {
                    bail!(
                        "nobody took over from {} after vip demote",
                        self.nodes[i].name
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
                self.cli(i, &["resume", "web"])?;
            }
            FaultKind::Term | FaultKind::Faketime => {
                self.stop_at_once(&[i]);
                self.nodes[i].agent = Some(self.start(i, kind == FaultKind::Faketime)?);
            }
            FaultKind::RestartAll => {
                let all: Vec<usize> = (0..self.nodes.len()).collect();
                self.stop_at_once(&all);
                self.start_at_once(&all)?;
            }
            FaultKind::LinkDown => {
                let ns = &self.lan.host(self.nodes[i].name).ns;
                ns.ip(&["link", "set", "eth0", "down"])?;
                std::thread::sleep(Duration::from_millis(400));
                ns.ip(&["link", "set", "eth0", "up"])?;
            }
            FaultKind::Reload => self.cli(i, &["reload"])?,
        }
        Ok((at, realtime_ns()))
    }

    /// Pins the pinned nodes left on the bpffs (none once every agent stopped cleanly).
    fn pins_left(&self) -> Vec<String> {
        NODES
            .iter()
            .filter(|n| n.2 && self.bpffs.dir.join(n.0).exists())
            .map(|n| n.0.to_string())
            .collect()
    }
}

/// Figures of one fault kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindFigures {
    pub events: usize,
    /// Requests answered by two or more MACs: [ARP, NS].
    pub doubles: [usize; 2],
    pub overlaps: usize,
    /// Per event, the longest unanswered stretch (ms): [ARP, NS].
    pub longest_unanswered_ms: Vec<[f64; 2]>,
}

impl KindFigures {
    /// (p50, max) of the per-event longest stretch of `family`.
    pub fn outage_ms(&self, family: Family) -> (f64, f64) {
        let mut v: Vec<f64> = self
            .longest_unanswered_ms
            .iter()
            .map(|x| x[family as usize])
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let p50 = v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0);
        (p50, v.last().copied().unwrap_or(0.0))
    }
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    pub seed: u64,
    pub mode: Mode,
    pub bin: PathBuf,
    pub faults: Vec<Fault>,
    pub analysis: Analysis,
    names: Vec<(Mac, String)>,
    /// Requests the asker sent, per family [ARP, NS], and how many of them the kernel
    /// refused.
    pub sent: [usize; 2],
    pub send_errors: usize,
    /// Frames the recorder's sockets dropped, and kept frames without a kernel stamp.
    pub drops: u64,
    pub unstamped: u64,
    /// Pinned nodes whose pins were left after the agents stopped.
    pub pins_left: Vec<String>,
    /// Agents that did not stop cleanly on SIGTERM.
    pub bad_stops: Vec<String>,
    pub elapsed: Duration,
}

/// Runs the whole scenario; see the module's documentation.
pub fn run(o: &Options) -> Result<Run> {
    let t0 = Instant::now();
    let mut rng = Rng::new(o.seed);
    let plan = plan(&mut rng, o.faults);
    let mut cluster = Cluster::new(o.mode, &o.bin)?;
    let names = cluster.names();
    let recorder = Recorder::start(&cluster.lan.switch, &cluster.ports(), cluster.watch()?)?;
    let asker = Asker::start(
        &cluster.lan.host(CLIENT).ns,
        "eth0",
        cluster.watch()?,
        ASK_INTERVAL,
    )?;
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    let started_ns = realtime_ns();
    cluster.start_at_once(&all)?;
    let mut faults = Vec::new();
    let mut next = Instant::now() + GAP;
    for kind in plan {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        // Whoever is active now, once exactly one is.
        let Some(target) = wait_for(SETTLE, || cluster.settled()) else {
            bail!(
                "the cluster did not settle on one active within {} s before fault {} ({}): states {:?}",
                SETTLE.as_secs(),
                faults.len() + 1,
                kind.name(),
                cluster.states()
            );
        };
        let (at_ns, done_ns) = cluster
            .inject(kind, target)
            .with_context(|| format!("fault {} ({})", faults.len() + 1, kind.name()))?;
        let t_done = Instant::now();
        let settled = wait_for(SETTLE, || cluster.settled());
        let settled_ms = settled.map(|_| t_done.elapsed().as_secs_f64() * 1e3);
        let fault = Fault {
            kind,
            node: cluster.nodes[target].name.to_string(),
            at_ns,
            done_ns,
            settled_ms,
            then_active: settled.map(|i| (cluster.nodes[i].name.to_string(), cluster.reason(i))),
        };
        if o.progress {
            eprintln!(
                "[chaos {} {}] {:>4}/{} {:<30} on {}: settled {}",
                o.mode.name(),
                o.bin.display(),
                faults.len() + 1,
                o.faults,
                kind.name(),
                fault.node,
                match (&fault.then_active, fault.settled_ms) {
                    (Some((n, r)), Some(ms)) => format!("on {n} ({r}) {ms:.0} ms after"),
                    _ => "never".into(),
                }
            );
        }
        faults.push(fault);
        next = t_done + GAP + Duration::from_millis(rng.below(251));
    }
    std::thread::sleep(next.saturating_duration_since(Instant::now()));
    let sent = asker.finish();
    // Answers still in flight.
    std::thread::sleep(Duration::from_millis(20));
    let recording = recorder.finish()?;
    cluster.stop_at_once(&all);
    let pins_left = cluster.pins_left();
    let bad_stops = std::mem::take(&mut cluster.bad_stops);
    if let Some(dir) = std::env::var_os("VIP_CHAOS_LOGS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        for (n, text) in &cluster.logs {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{}-{n}.log", o.mode.name())))?;
            writeln!(f, "---- agent {n} ----\n{text}")?;
        }
    }
    drop(cluster);
    let marks: Vec<Mark> = [Mark {
        at_ns: started_ns,
        label: "the cluster's start".into(),
    }]
    .into_iter()
    .chain(faults.iter().map(|f| Mark {
        at_ns: f.at_ns,
        label: format!("{} on {}", f.kind.name(), f.node),
    }))
    .collect();
    let count = |fam: Family| sent.iter().filter(|s| s.family == fam).count();
    Ok(Run {
        seed: o.seed,
        mode: o.mode,
        bin: o.bin.clone(),
        analysis: wire::analyse(&recording.seen, &marks),
        faults,
        names,
        sent: [count(Family::Arp), count(Family::Nd)],
        send_errors: sent.iter().filter(|s| !s.ok).count(),
        drops: recording.drops,
        unstamped: recording.unstamped,
        pins_left,
        bad_stops,
        elapsed: t0.elapsed(),
    })
}

impl Run {
    /// Exactly one owner throughout: no request answered twice, no overlap.
    pub fn one_owner(&self) -> bool {
        self.analysis.verdict().one_owner()
    }

    /// Whether the instrument itself can be trusted: nothing dropped, every request
    /// sent, each fault followed by a settled cluster.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.drops > 0 {
            p.push(format!(
                "the recorder's sockets dropped {} frames",
                self.drops
            ));
        }
        if self.unstamped > 0 {
            p.push(format!(
                "{} frames had no kernel arrival stamp (timed when read)",
                self.unstamped
            ));
        }
        if self.send_errors > 0 {
            p.push(format!("{} requests could not be sent", self.send_errors));
        }
        for (i, f) in self.faults.iter().enumerate() {
            if f.settled_ms.is_none() {
                p.push(format!(
                    "fault {} ({} on {}): no single active within {} s",
                    i + 1,
                    f.kind.name(),
                    f.node,
                    SETTLE.as_secs()
                ));
            }
        }
        for (f, sent) in Family::BOTH.into_iter().zip(self.sent) {
            let seen = self.analysis.family(f).requests.len();
            if seen < sent {
                p.push(format!(
                    "{} of {sent} {} requests sent never reached the switch",
                    sent - seen,
                    f.name()
                ));
            }
        }
        p.extend(self.bad_stops.iter().cloned());
        if !self.pins_left.is_empty() {
            p.push(format!("pins left behind by {:?}", self.pins_left));
        }
        p
    }

    /// "a (02:..)" for a MAC of the lab.
    pub fn who(&self, m: Mac) -> String {
        match self.names.iter().find(|(x, _)| *x == m) {
            Some((_, n)) => format!("{n} ({m})"),
            None => format!("unknown ({m})"),
        }
    }

    /// The figures of each fault, in order (mark 0, the cluster's start, left out).
    pub fn fault_figures(&self) -> Vec<MarkFigures> {
        self.analysis.per_mark().into_iter().skip(1).collect()
    }

    /// The figures of the cluster's start, before the first fault.
    pub fn start_figures(&self) -> MarkFigures {
        self.analysis
            .per_mark()
            .first()
            .copied()
            .unwrap_or_default()
    }

    pub fn per_kind(&self) -> BTreeMap<FaultKind, KindFigures> {
        let mut out: BTreeMap<FaultKind, KindFigures> = BTreeMap::new();
        for (f, m) in self.faults.iter().zip(self.fault_figures()) {
            let k = out.entry(f.kind).or_default();
            k.events += 1;
            k.doubles[0] += m.doubles[0];
            k.doubles[1] += m.doubles[1];
            k.overlaps += m.overlaps;
            k.longest_unanswered_ms.push(m.longest_unanswered_ms);
        }
        out
    }

    /// The per-kind table, and what the recorder saw.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let v = self.analysis.verdict();
        let _ = writeln!(
            t,
            "one owner on the wire, {} mode, seed {}, {} faults in {:.1} s, {}: {}",
            self.mode.name(),
            self.seed,
            self.faults.len(),
            self.elapsed.as_secs_f64(),
            self.bin.display(),
            if v.one_owner() {
                "one owner throughout".to_string()
            } else {
                format!(
                    "{} ARP and {} NS requests answered by two MACs, {} overlapping announcements",
                    v.doubles_arp, v.doubles_nd, v.overlaps
                )
            }
        );
        let _ = writeln!(
            t,
            "  {:<30} {:>6} {:>18} {:>9} {:>26} {:>26}",
            "fault",
            "events",
            "answered twice",
            "overlaps",
            "longest unanswered, ARP",
            "longest unanswered, NS"
        );
        let _ = writeln!(
            t,
            "  {:<30} {:>6} {:>18} {:>9} {:>26} {:>26}",
            "", "", "ARP / NS", "", "p50 / max ms", "p50 / max ms"
        );
        for (k, f) in self.per_kind() {
            let (a50, amax) = f.outage_ms(Family::Arp);
            let (n50, nmax) = f.outage_ms(Family::Nd);
            let _ = writeln!(
                t,
                "  {:<30} {:>6} {:>18} {:>9} {:>26} {:>26}",
                k.name(),
                f.events,
                format!("{} / {}", f.doubles[0], f.doubles[1]),
                f.overlaps,
                format!("{a50:.0} / {amax:.0}"),
                format!("{n50:.0} / {nmax:.0}")
            );
        }
        let st = self.start_figures();
        let _ = writeln!(
            t,
            "  {:<30} {:>6} {:>18} {:>9}",
            "(the cluster's start)",
            1,
            format!("{} / {}", st.doubles[0], st.doubles[1]),
            st.overlaps,
        );
        let (arp, nd) = (&self.analysis.arp, &self.analysis.nd);
        let _ = writeln!(
            t,
            "  recorder: ARP {} sent, {} seen, {} late answers (max delay {:.2} ms), {} orphans; \
             NS {} sent, {} seen, max delay {:.2} ms, {} orphans, {} malformed NAs; {} frames dropped",
            self.sent[0],
            arp.requests.len(),
            arp.late,
            arp.max_delay_ns as f64 / 1e6,
            arp.orphans,
            self.sent[1],
            nd.requests.len(),
            nd.max_delay_ns as f64 / 1e6,
            nd.orphans,
            nd.malformed,
            self.drops
        );
        t
    }

    /// Each fault as applied, with its figures.
    pub fn faults_text(&self) -> String {
        let mut t = String::new();
        for (i, (f, m)) in self.faults.iter().zip(self.fault_figures()).enumerate() {
            let _ = writeln!(
                t,
                "  #{:<3} {:<30} on {}: {:>5.0} ms, settled {:>5} ms later on {:<14} answered twice {} / {}, overlaps {}, longest unanswered {:.0} / {:.0} ms (from +{:.0} / +{:.0} ms)",
                i + 1,
                f.kind.name(),
                f.node,
                (f.done_ns - f.at_ns) as f64 / 1e6,
                f.settled_ms.map_or("never".to_string(), |s| format!("{s:.0}")),
                f.then_active
                    .as_ref()
                    .map_or("-".to_string(), |(n, r)| format!("{n} ({r});")),
                m.doubles[0],
                m.doubles[1],
                m.overlaps,
                m.longest_unanswered_ms[0],
                m.longest_unanswered_ms[1],
                m.longest_unanswered_after_ms[0],
                m.longest_unanswered_after_ms[1],
            );
        }
        t
    }

    /// Every episode of two owners, with the fault it followed: for a failure report.
    pub fn episodes_text(&self) -> String {
        let mut t = String::new();
        for e in self.analysis.episodes() {
            // Mark 0 is the cluster's start, mark i the i-th fault.
            let m = e.mark.unwrap_or(0);
            let label = match m {
                0 => self.analysis.marks[0].label.clone(),
                _ => format!("#{m} {}", self.analysis.marks[m].label),
            };
            let base = self.analysis.marks[m].at_ns;
            let rel = |ns: u64| (ns as i128 - base as i128) as f64 / 1e6;
            let macs: Vec<String> = e.macs.iter().map(|m| self.who(*m)).collect();
            let _ = writeln!(
                t,
                "  after {label}: {} {}, {} requests from {:+.1} to {:+.1} ms: {}",
                e.family.name(),
                e.what,
                e.requests,
                rel(e.from_ns),
                rel(e.to_ns),
                macs.join(" and ")
            );
            if e.what.starts_with("answered") {
                let fa = self.analysis.family(e.family);
                for r in fa
                    .requests
                    .iter()
                    .filter(|r| r.at_ns >= e.from_ns && r.at_ns <= e.to_ns && r.by.len() >= 2)
                    .take(3)
                {
                    let by: Vec<String> =
                        r.by.iter()
                            .map(|b| {
                                format!(
                                    "{} after {:.2} ms{}",
                                    self.who(b.mac),
                                    b.delay_ns as f64 / 1e6,
                                    match (e.family, b.in_place) {
                                        (Family::Arp, true) => " (in place: a data plane)",
                                        (Family::Arp, false) => " (built afresh: a kernel)",
                                        (Family::Nd, _) => "",
                                    }
                                )
                            })
                            .collect();
                    let _ = writeln!(
                        t,
                        "      request at {:+.1} ms: {}",
                        rel(r.at_ns),
                        by.join(", ")
                    );
                }
            }
        }
        t
    }

    pub fn json(&self) -> Value {
        let per_kind: Vec<Value> = self
            .per_kind()
            .into_iter()
            .map(|(k, f)| {
                let (a50, amax) = f.outage_ms(Family::Arp);
                let (n50, nmax) = f.outage_ms(Family::Nd);
                json!({
                    "fault": k.key(),
                    "name": k.name(),
                    "events": f.events,
                    "answered_twice": {"arp": f.doubles[0], "ns": f.doubles[1]},
                    "overlaps": f.overlaps,
                    "longest_unanswered_ms": {
                        "arp": {"p50": a50, "max": amax},
                        "ns": {"p50": n50, "max": nmax},
                    },
                })
            })
            .collect();
        let faults: Vec<Value> = self
            .faults
            .iter()
            .zip(self.fault_figures())
            .map(|(f, m)| {
                json!({
                    "fault": f.kind.key(),
                    "node": f.node,
                    "duration_ms": (f.done_ns - f.at_ns) as f64 / 1e6,
                    "settled_ms": f.settled_ms,
                    "then_active": f.then_active.as_ref().map(|(n, _)| n),
                    "then_active_reason": f.then_active.as_ref().map(|(_, r)| r),
                    "answered_twice": {"arp": m.doubles[0], "ns": m.doubles[1]},
                    "overlaps": m.overlaps,
                    "longest_unanswered_ms": {"arp": m.longest_unanswered_ms[0], "ns": m.longest_unanswered_ms[1]},
                    "longest_unanswered_from_ms_after_fault": {"arp": m.longest_unanswered_after_ms[0], "ns": m.longest_unanswered_after_ms[1]},
                })
            })
            .collect();
        let episodes: Vec<Value> = self
            .analysis
            .episodes()
            .iter()
            .map(|e| {
                json!({
                    "family": e.family.name(),
                    "what": e.what,
                    "after_fault": e.mark.filter(|m| *m > 0),
                    "from_ms_after_mark": e.mark.map(|m| (e.from_ns as i128 - self.analysis.marks[m].at_ns as i128) as f64 / 1e6),
                    "duration_ms": (e.to_ns - e.from_ns) as f64 / 1e6,
                    "requests": e.requests,
                    "macs": e.macs.iter().map(|m| self.who(*m)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let v = self.analysis.verdict();
        json!({
            "seed": self.seed,
            "mode": self.mode.name(),
            "binary": self.bin.display().to_string(),
            "seconds": self.elapsed.as_secs_f64(),
            "one_owner": v.one_owner(),
            "answered_twice": {"arp": v.doubles_arp, "ns": v.doubles_nd},
            "overlaps": v.overlaps,
            "per_fault_kind": per_kind,
            "start": {
                "answered_twice": {"arp": self.start_figures().doubles[0], "ns": self.start_figures().doubles[1]},
                "overlaps": self.start_figures().overlaps,
            },
            "faults": faults,
            "episodes": episodes,
            "recorder": {
                "sent": {"arp": self.sent[0], "ns": self.sent[1]},
                "seen": {"arp": self.analysis.arp.requests.len(), "ns": self.analysis.nd.requests.len()},
                "late_arp_answers": self.analysis.arp.late,
                "max_answer_delay_ms": {"arp": self.analysis.arp.max_delay_ns as f64 / 1e6, "ns": self.analysis.nd.max_delay_ns as f64 / 1e6},
                "orphans": {"arp": self.analysis.arp.orphans, "ns": self.analysis.nd.orphans},
                "malformed": self.analysis.nd.malformed,
                "dropped": self.drops,
                "unstamped": self.unstamped,
            },
            "problems": self.problems(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_plan_covering_every_kind_per_round() {
        let a = plan(&mut Rng::new(7), 20);
        assert_eq!(a, plan(&mut Rng::new(7), 20));
        assert_ne!(a, plan(&mut Rng::new(8), 20));
        assert_eq!(a.len(), 20);
        for round in a.chunks(8).filter(|r| r.len() == 8) {
            let mut r = round.to_vec();
            r.sort();
            assert_eq!(r, FaultKind::ALL.to_vec());
        }
    }

    #[test]
    fn outage_quantiles_by_nearest_rank() {
        let f = KindFigures {
            events: 3,
            longest_unanswered_ms: vec![[10.0, 1.0], [30.0, 3.0], [20.0, 2.0]],
            ..Default::default()
        };
        assert_eq!(f.outage_ms(Family::Arp), (20.0, 30.0));
        assert_eq!(f.outage_ms(Family::Nd), (2.0, 3.0));
        assert_eq!(KindFigures::default().outage_ms(Family::Arp), (0.0, 0.0));
    }
}
