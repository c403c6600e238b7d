//! Fast failure detection: one thread that probes, for every standby group, the
//! active's data plane (`vip_common::echo`, BFD's echo function) and tells the loop
//! when it has stopped answering.
//!
//! Why this cannot cause a false takeover where advertisements would not:
//! * the active's XDP program reflects a probe only while it answers ARP/NS for the
//!   probed VIP, lease included, so a stalled agent is seen as gone exactly when its
//!   data plane stops answering, never before;
//! * nobody's userspace is on the reflection path, so the active's scheduling does
//!   not matter at all;
//! * our own scheduling only delays detection: a probe counts as missed only after
//!   it was sent and a full interval went by, so a thread that did not run sent
//!   nothing it could miss.
//!
//! Until a first reply arrives from an active (an older vip, a data plane without the
//! echo) nothing is concluded, and advertisement silence alone detects a failure.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use aya::maps::{Array, MapData};
use serde::Serialize;
use vip_common::{echo, EchoSeen};

use crate::host::monotonic_ns;

/// What one standby group probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub group: String,
    /// The group's slot: its index into `ECHO_SEEN`.
    pub slot: u32,
    /// A VIP of the group: the active reflects a probe only while it answers for it.
    pub vip: IpAddr,
    /// The active node (its election address; probes go to its election port).
    pub peer: IpAddr,
    pub interval: Duration,
    pub misses: u32,
}

/// The active stopped answering: the prober's decision, for the loop.
#[derive(Debug, Clone)]
pub struct Lost {
    pub group: String,
    pub peer: IpAddr,
    pub missed: u32,
    /// Since the last reply was seen.
    pub silent: Duration,
    /// CLOCK_MONOTONIC of the decision.
    pub decided_ns: u64,
}

/// A group's probing, for status and metrics.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// `probing` (no reply yet: nothing is concluded), `armed`, or `lost`.
    pub state: &'static str,
    pub peer: Option<IpAddr>,
    pub probes: u64,
    pub replies: u64,
    /// The longest run of consecutive unanswered probes (a takeover needs `misses`).
    pub longest_streak: u64,
}

/// The handle the loop keeps: publish targets, read stats.
pub struct Prober {
    shared: Arc<Shared>,
}

struct Shared {
    targets: Mutex<Vec<Target>>,
    generation: AtomicU64,
    stats: Mutex<HashMap<String, Stats>>,
    /// CLOCK_MONOTONIC ns of each group's last reply, published as it is seen (the
    /// stats only every 50 ms): the loop's election asks it before it takes advert
    /// silence for a failure.
    answered: Mutex<HashMap<String, u64>>,
    realtime: std::sync::atomic::AtomicBool,
}

/// One target's probing state, on the thread.
struct Probe {
    target: Target,
    token: u64,
    /// Last sequence sent (probes are numbered from 1).
    sent: u64,
    /// Highest sequence answered.
    answered: u64,
    /// Replies counted by the data plane for this token, as last read.
    counted: u64,
    /// When `answered` last moved (or probing began).
    progress_ns: u64,
    next_ns: u64,
    lost: bool,
    stats: Stats,
}

impl Prober {
    /// Starts the thread. `seen` is its own handle on `ECHO_SEEN`; `port` the
    /// election port; `lost` is called (on the prober's thread) with each decision.
    pub fn spawn(
        seen: Array<MapData, EchoSeen>,
        port: u16,
        lost: Box<dyn Fn(Lost) + Send>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            targets: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            stats: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
            realtime: std::sync::atomic::AtomicBool::new(false),
        });
        let sockets = Sockets::open()?;
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("vip-echo".into())
            .spawn(move || run(sh, seen, sockets, port, lost))?;
        Ok(Prober { shared })
    }

    /// Replaces the targets (the same target keeps its state and counters).
    pub fn set_targets(&self, targets: Vec<Target>) {
        if let Ok(mut t) = self.shared.targets.lock() {
            if *t != targets {
                *t = targets;
                self.shared.generation.fetch_add(1, Ordering::Release);
            }
        }
    }

    pub fn stats(&self, group: &str) -> Option<Stats> {
        self.shared.stats.lock().ok()?.get(group).cloned()
    }

    /// When the group's current target last answered a probe (CLOCK_MONOTONIC ns).
    pub fn last_answer_ns(&self, group: &str) -> Option<u64> {
        self.shared.answered.lock().ok()?.get(group).copied()
    }

    /// True when the thread runs at a real-time priority (SCHED_FIFO).
    pub fn realtime(&self) -> bool {
        self.shared.realtime.load(Ordering::Relaxed)
    }
}

struct Sockets {
    v4: UdpSocket,
    v6: Option<UdpSocket>,
}

impl Sockets {
    fn open() -> std::io::Result<Self> {
        let v4 = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
        v4.set_nonblocking(true)?;
        // A host without IPv6 still probes its IPv4 peers.
        let v6 = UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .ok();
        Ok(Sockets { v4, v6 })
    }

    /// False when the probe could not leave this host (no route: our own interface
    /// is down), which is no evidence about the peer. A full queue counts as sent:
    /// a probe lost on the way, the same evidence as one lost on the wire.
    fn send(&self, to: SocketAddr, b: &[u8]) -> bool {
        let s = match to {
            SocketAddr::V4(_) => Some(&self.v4),
            SocketAddr::V6(_) => self.v6.as_ref(),
        };
        let Some(s) = s else { return false };
        match s.send_to(b, to) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

/// The probe's bytes (see `vip_common::echo`).
pub fn encode(slot: u32, token: u64, seq: u64, vip: IpAddr) -> [u8; echo::LEN] {
    let mut b = [0u8; echo::LEN];
    b[0..4].copy_from_slice(&echo::MAGIC);
    b[4] = echo::VERSION;
    b[echo::OFF_KIND] = echo::PROBE;
    b[echo::OFF_SLOT..echo::OFF_SLOT + 4].copy_from_slice(&slot.to_be_bytes());
    b[echo::OFF_TOKEN..echo::OFF_TOKEN + 8].copy_from_slice(&token.to_be_bytes());
    b[echo::OFF_SEQ..echo::OFF_SEQ + 8].copy_from_slice(&seq.to_be_bytes());
    match vip {
        IpAddr::V4(a) => {
            b[echo::OFF_FAMILY] = 4;
            b[echo::OFF_VIP..echo::OFF_VIP + 4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            b[echo::OFF_FAMILY] = 6;
            b[echo::OFF_VIP..echo::OFF_VIP + 16].copy_from_slice(&a.octets());
        }
    }
    b
}

/// The decision rule, on one probe's bookkeeping: true when the last `misses`
/// probes sent all went unanswered for at least an interval each, and the active
/// had answered before (armed).
pub fn gone(sent: u64, answered: u64, misses: u32) -> bool {
    answered > 0 && sent.saturating_sub(answered) >= misses as u64
}

/// Asks for SCHED_FIFO at the lowest real-time priority: the thread runs for a few
/// microseconds per interval, and a loaded host then delays our probes (hence the
/// detection) by microseconds instead of a scheduler slice. Without the capability
/// it runs as a normal thread: detection is slower under load, never falser.
fn go_realtime() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: plain syscall on the calling thread with a valid, initialised param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

fn run(
    shared: Arc<Shared>,
    mut seen: Array<MapData, EchoSeen>,
    sockets: Sockets,
    port: u16,
    lost: Box<dyn Fn(Lost) + Send>,
) {
    let rt = go_realtime();
    shared.realtime.store(rt, Ordering::Relaxed);
    if !rt {
        log::info!(
            "echo prober: no real-time priority (CAP_SYS_NICE?); probing as a normal thread"
        );
    }
    let mut generation = u64::MAX;
    let mut probes: Vec<Probe> = Vec::new();
    let mut published_ns = 0u64;
    loop {
        let g = shared.generation.load(Ordering::Acquire);
        if g != generation {
            generation = g;
            let targets = shared.targets.lock().map(|t| t.clone()).unwrap_or_default();
            let totals = shared.stats.lock().map(|s| s.clone()).unwrap_or_default();
            probes = retarget(std::mem::take(&mut probes), targets, &totals, &mut seen);
            // A new target has answered nothing yet.
            if let Ok(mut a) = shared.answered.lock() {
                a.retain(|g, _| {
                    probes
                        .iter()
                        .any(|p| &p.target.group == g && p.answered > 0)
                });
            }
            publish(&shared, &probes);
        }
        if probes.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let now = monotonic_ns();
        for p in probes.iter_mut().filter(|p| now >= p.next_ns) {
            if let Ok(s) = seen.get(&p.target.slot, 0) {
                if s.token == p.token && s.replies > p.counted {
                    p.stats.replies += s.replies - p.counted;
                    p.counted = s.replies;
                }
                if s.token == p.token && s.seq > p.answered {
                    p.answered = s.seq;
                    p.progress_ns = now;
                    if let Ok(mut a) = shared.answered.lock() {
                        a.insert(p.target.group.clone(), now);
                    }
                    // Answering again (the loop kept us standby): watch afresh.
                    p.lost = false;
                    p.stats.state = "armed";
                }
            }
            let streak = p.sent.saturating_sub(p.answered);
            p.stats.longest_streak = p.stats.longest_streak.max(streak);
            if !p.lost && gone(p.sent, p.answered, p.target.misses) {
                // Said once; the probes go on, so a peer that answers again re-arms.
                p.lost = true;
                p.stats.state = "lost";
                lost(Lost {
                    group: p.target.group.clone(),
                    peer: p.target.peer,
                    missed: streak as u32,
                    silent: Duration::from_nanos(now.saturating_sub(p.progress_ns)),
                    decided_ns: now,
                });
            }
            let b = encode(p.target.slot, p.token, p.sent + 1, p.target.vip);
            if sockets.send(SocketAddr::new(p.target.peer, port), &b) {
                p.sent += 1;
                p.stats.probes += 1;
            }
            // Never catch up in a burst after a delay: each probe gets its interval.
            p.next_ns = now + p.target.interval.as_nanos() as u64;
        }
        if now.saturating_sub(published_ns) >= 50_000_000 {
            published_ns = now;
            publish(&shared, &probes);
        }
        let next = probes
            .iter()
            .map(|p| p.next_ns)
            .min()
            .unwrap_or(now + 5_000_000);
        let wait = next.saturating_sub(monotonic_ns()).max(50_000);
        std::thread::sleep(Duration::from_nanos(wait));
    }
}

/// New targets keep the state of identical old ones; others start afresh with a new
/// token, written to their slot before the first probe.
/// A new probe's counters continue the group's totals (they are counters in metrics).
fn retarget(
    old: Vec<Probe>,
    targets: Vec<Target>,
    totals: &HashMap<String, Stats>,
    seen: &mut Array<MapData, EchoSeen>,
) -> Vec<Probe> {
    let mut old: Vec<Option<Probe>> = old.into_iter().map(Some).collect();
    let now = monotonic_ns();
    targets
        .into_iter()
        .map(|t| {
            if let Some(p) = old
                .iter_mut()
                .find(|p| p.as_ref().is_some_and(|p| p.target == t))
                .and_then(Option::take)
            {
                return p;
            }
            let token = crate::advert::new_epoch();
            let fresh = EchoSeen {
                token,
                ..EchoSeen::default()
            };
            if let Err(e) = seen.set(t.slot, fresh, 0) {
                log::error!("group {}: preparing the echo: {e}", t.group);
            }
            let before = totals.get(&t.group).cloned().unwrap_or_default();
            Probe {
                stats: Stats {
                    state: "probing",
                    peer: Some(t.peer),
                    ..before
                },
                target: t,
                token,
                sent: 0,
                answered: 0,
                counted: 0,
                progress_ns: now,
                next_ns: now,
                lost: false,
            }
        })
        .collect()
}

/// Groups not probed now keep their totals, shown as idle.
fn publish(shared: &Shared, probes: &[Probe]) {
    if let Ok(mut s) = shared.stats.lock() {
        for v in s.values_mut() {
            v.state = "idle";
            v.peer = None;
        }
        for p in probes {
            s.insert(p.target.group.clone(), p.stats.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_encodes_the_documented_layout() {
        let b = encode(7, 0x0102_0304_0506_0708, 9, "10.0.0.50".parse().unwrap());
        assert_eq!(&b[0..4], b"VIPE");
        assert_eq!((b[4], b[5], b[6]), (1, echo::PROBE, 4));
        assert_eq!(&b[8..12], &[0, 0, 0, 7]);
        assert_eq!(&b[12..20], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b[27], 9);
        assert_eq!(&b[28..32], &[10, 0, 0, 50]);
        let b = encode(1, 1, 1, "2001:db8::50".parse().unwrap());
        assert_eq!(b[6], 6);
        assert_eq!(&b[28..30], &[0x20, 0x01]);
        assert_eq!(b[43], 0x50);
    }

    #[test]
    fn only_an_armed_probe_with_a_full_run_of_misses_concludes() {
        // Never answered: an old peer, or no echo in its data plane.
        assert!(!gone(100, 0, 6));
        // Answered up to 10, then 5 more sent: one short.
        assert!(!gone(15, 10, 6));
        assert!(gone(16, 10, 6));
        // A thread that did not run sent nothing: no streak grows while it sleeps.
        assert!(!gone(10, 10, 6));
    }
}
