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
//! And a path just seen delaying replies (a run of k unanswered probes that then
//! got answers: a congested switch, a host busy with a flood) needs k more misses,
//! for 10 s: on a path that answers on time the bound stays `misses` intervals.
//!
//! And why nobody but the active can silence it (see `vip_common::echo`): probe `n`
//! carries `echo::token(key, n)` under a key of this (group, active) that only this
//! node has (drawn here, written to `ECHO_SEEN` before the first probe), and our XDP
//! program records a reply only from the active's address and MAC, for a sequence
//! above the last one answered, with that sequence's token. A probe seen on the
//! wire answers that probe and no later one, so a copy answered with a huge
//! sequence records nothing; and this thread takes as answered only sequences it
//! has sent. While the active stays silent the loss is reported again every
//! `misses` further probes, and a standby that comes back to probing an active
//! whose data plane had stopped answering it (it took over, then yielded to that
//! active's advertisement, maybe a replayed one) starts armed: that active answered
//! before and has not since.

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
use vip_common::{echo, EchoSeen};

use crate::{counters::EchoCounters, host::monotonic_ns, mac::Mac};

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
    /// The active's MAC (from its advertisements), which its replies must come
    /// from; None: not checked (a peer reached through a router).
    pub peer_mac: Option<Mac>,
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
    /// 0 for the first report of a loss; n for the n-th repetition (every `misses`
    /// further unanswered probes while the active stays silent).
    pub repeat: u32,
}

/// A group's probing, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// `probing` (no reply yet: nothing is concluded), `armed`, or `lost`.
    pub state: &'static str,
    pub peer: Option<IpAddr>,
    /// Probes, replies, the longest unanswered run (declared in `counters`).
    pub counters: EchoCounters,
}

/// The handle the loop keeps: publish targets, read stats.
pub struct Prober {
    shared: Arc<Shared>,
}

struct Shared {
    targets: Mutex<Vec<Target>>,
    generation: AtomicU64,
    stats: Mutex<HashMap<String, Stats>>,
    /// Per group: CLOCK_MONOTONIC ns of the last valid reply of its current target.
    answers: Mutex<HashMap<String, u64>>,
    realtime: std::sync::atomic::AtomicBool,
}

/// How long a standby remembers that an active's data plane stopped answering it,
/// for when it probes that active again (see the module's description). Bounded, so
/// that an active that comes back without the echo (an older vip) is, some time
/// later, watched by advertisement silence alone again.
const REMEMBER_LOST_NS: u64 = 60_000_000_000;

/// One target's probing state, on the thread.
struct Probe {
    target: Target,
    /// Of this (group, active): probe n carries `echo::token(key, n)`.
    key: [u64; 2],
    /// Last sequence sent (starts at the slot's highest so far: sequences of a slot
    /// only grow).
    sent: u64,
    /// Highest sequence answered (`base` until the first reply).
    answered: u64,
    /// The active has answered (or had answered before, and stopped): a run of
    /// `misses` unanswered probes concludes.
    armed: bool,
    /// Replies counted by the data plane for this key, as last read.
    counted: u64,
    /// When `answered` last moved (or probing began).
    progress_ns: u64,
    next_ns: u64,
    /// Reported lost: at which `sent`, and how many times.
    lost: Option<(u64, u32)>,
    /// The run of unanswered probes before the last read.
    streak: u64,
    /// The longest run of unanswered probes that then got an answer within the last
    /// `SLACK_FOR_NS`, at most `misses`, and until when it counts. A conclusion needs
    /// `misses` + this: a path that was just seen delaying (or losing) replies that
    /// long, a congested switch or a host busy with a flood, must be silent beyond
    /// that before the active counts as gone; on a path that answers on time it is 0
    /// and the bound is `misses` intervals.
    slack: (u64, u64),
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
            answers: Mutex::new(HashMap::new()),
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

    /// CLOCK_MONOTONIC ns (the data plane's clock when it recorded it) of the last
    /// valid reply from the group's current target: its active's data plane answered
    /// then. None before the first reply of that target, or when the group is not
    /// probed. Up to one probe interval old (the thread reads the map once per probe).
    pub fn last_answer_ns(&self, group: &str) -> Option<u64> {
        self.shared.answers.lock().ok()?.get(group).copied()
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
pub fn gone(sent: u64, answered: u64, armed: bool, misses: u32) -> bool {
    armed && sent.saturating_sub(answered) >= misses as u64
}

/// How long a run of unanswered probes that ended in an answer (the path was slow,
/// or lost a few) raises the bar (see [`Probe::slack`]).
const SLACK_FOR_NS: u64 = 10_000_000_000;

/// What `ECHO_SEEN` holds for a target from its first probe on: `seq` is `base`.
pub fn slot_value(t: &Target, key: [u64; 2], base: u64) -> EchoSeen {
    let (mut peer, family) = ([0u8; 16], if t.peer.is_ipv4() { 4 } else { 6 });
    match t.peer {
        IpAddr::V4(a) => peer[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => peer.copy_from_slice(&a.octets()),
    }
    EchoSeen {
        key,
        peer,
        peer_mac: t.peer_mac.unwrap_or(Mac::ZERO).0,
        family,
        seq: base,
        ..EchoSeen::default()
    }
}

/// 128 bits from the kernel's generator: the key of a (group, active).
fn secret_key() -> [u64; 2] {
    let mut b = [0u8; 16];
    // SAFETY: a valid buffer of b.len() bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, b.len(), 0) };
    if n != b.len() as isize {
        log::warn!(
            "echo: getrandom failed; the probes' key is drawn from /dev/urandom or the clock"
        );
        return [crate::advert::new_epoch(), crate::advert::new_epoch()];
    }
    let (lo, hi) = b.split_at(8);
    let word = |s: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        u64::from_ne_bytes(w)
    };
    [word(lo), word(hi)]
}

impl Probe {
    /// A new probe of `t` whose sequences start above `base`; `armed` when the
    /// active had answered before and had stopped (see `REMEMBER_LOST_NS`).
    fn new(t: Target, key: [u64; 2], base: u64, armed: bool, stats: Stats, now: u64) -> Self {
        Probe {
            stats: Stats {
                state: if armed { "armed" } else { "probing" },
                peer: Some(t.peer),
                ..stats
            },
            target: t,
            key,
            sent: base,
            answered: base,
            armed,
            counted: 0,
            progress_ns: now,
            next_ns: now,
            lost: None,
            streak: 0,
            slack: (0, 0),
        }
    }

    /// The slack now (see the field).
    fn slack(&self, now: u64) -> u64 {
        if now < self.slack.1 {
            self.slack.0
        } else {
            0
        }
    }

    /// Takes in what the data plane recorded (`seen`: the slot, if it could be read)
    /// before the next probe goes out: the replies it counted, the highest sequence
    /// answered. Returns the time of a new valid reply, and a loss to report.
    fn observe(&mut self, seen: Option<&EchoSeen>, now: u64) -> (Option<u64>, Option<Lost>) {
        let mut answer = None;
        if let Some(s) = seen.filter(|s| s.key == self.key) {
            if s.replies > self.counted {
                self.stats.counters.replies += s.replies - self.counted;
                self.counted = s.replies;
            }
            // Only a sequence we sent is an answer (the program records nothing
            // else; this keeps it so whatever the slot says).
            if s.seq > self.answered && s.seq <= self.sent {
                // A run that ended in an answer: the path's recent delay.
                let ended = self.streak.min(self.target.misses as u64);
                if ended > 0 && ended >= self.slack(now) {
                    self.slack = (ended, now + SLACK_FOR_NS);
                }
                self.answered = s.seq;
                self.progress_ns = now;
                self.armed = true;
                // Answering again (the loop kept us standby): watch afresh.
                self.lost = None;
                self.stats.state = "armed";
                answer = Some(if s.last_ns != 0 { s.last_ns } else { now });
            }
        }
        let streak = self.sent.saturating_sub(self.answered);
        self.streak = streak;
        self.stats.counters.longest_streak = self.stats.counters.longest_streak.max(streak);
        let misses = self.target.misses.saturating_add(self.slack(now) as u32);
        if !gone(self.sent, self.answered, self.armed, misses) {
            return (answer, None);
        }
        // Said once, then again every `misses` further probes while it stays silent:
        // a standby that did not take over (or yielded since) hears it again.
        let repeat = match self.lost {
            None => 0,
            Some((at, n)) if self.sent - at >= misses as u64 => n + 1,
            Some(_) => return (answer, None),
        };
        self.lost = Some((self.sent, repeat));
        self.stats.state = "lost";
        let lost = Lost {
            group: self.target.group.clone(),
            peer: self.target.peer,
            missed: streak.min(u32::MAX as u64) as u32,
            silent: Duration::from_nanos(now.saturating_sub(self.progress_ns)),
            decided_ns: now,
            repeat,
        };
        (answer, Some(lost))
    }

    /// The next probe's bytes, and its sequence.
    fn next_probe(&self) -> ([u8; echo::LEN], u64) {
        let seq = self.sent + 1;
        let token = echo::token(self.key, seq);
        (encode(self.target.slot, token, seq, self.target.vip), seq)
    }
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

/// The thread's memory across targets.
#[derive(Default)]
struct History {
    /// Per slot: the highest sequence ever sent from it.
    high: HashMap<u32, u64>,
    /// Per group: the active whose data plane had stopped answering when we stopped
    /// probing it, and until when that is remembered.
    lost: HashMap<String, (IpAddr, u64)>,
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
    let mut history = History::default();
    let mut published_ns = 0u64;
    loop {
        let g = shared.generation.load(Ordering::Acquire);
        if g != generation {
            generation = g;
            let targets = shared.targets.lock().map(|t| t.clone()).unwrap_or_default();
            let totals = shared.stats.lock().map(|s| s.clone()).unwrap_or_default();
            probes = retarget(
                std::mem::take(&mut probes),
                targets,
                &totals,
                &mut history,
                &mut seen,
            );
            if let Ok(mut a) = shared.answers.lock() {
                a.retain(|g, _| probes.iter().any(|p| &p.target.group == g && p.armed));
            }
            publish(&shared, &probes);
        }
        if probes.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let now = monotonic_ns();
        for p in probes.iter_mut().filter(|p| now >= p.next_ns) {
            let s = seen.get(&p.target.slot, 0).ok();
            let (answer, decision) = p.observe(s.as_ref(), now);
            if let Some(at) = answer {
                history.lost.remove(&p.target.group);
                if let Ok(mut a) = shared.answers.lock() {
                    a.insert(p.target.group.clone(), at);
                }
            }
            if let Some(d) = decision {
                lost(d);
            }
            let (b, seq) = p.next_probe();
            if sockets.send(SocketAddr::new(p.target.peer, port), &b) {
                p.sent = seq;
                p.stats.counters.probes += 1;
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
/// key, written to their slot before the first probe. A dropped probe leaves its
/// highest sequence, and whether its active had stopped answering, to `history`.
/// A new probe's counters continue the group's totals (they are counters in metrics).
fn retarget(
    old: Vec<Probe>,
    targets: Vec<Target>,
    totals: &HashMap<String, Stats>,
    history: &mut History,
    seen: &mut Array<MapData, EchoSeen>,
) -> Vec<Probe> {
    let now = monotonic_ns();
    let mut old: Vec<Option<Probe>> = old.into_iter().map(Some).collect();
    let new: Vec<Option<Probe>> = targets
        .iter()
        .map(|t| {
            old.iter_mut()
                .find(|p| p.as_ref().is_some_and(|p| p.target == *t))
                .and_then(Option::take)
        })
        .collect();
    for p in old.into_iter().flatten() {
        let high = history.high.entry(p.target.slot).or_default();
        *high = (*high).max(p.sent);
        if gone(p.sent, p.answered, p.armed, p.target.misses) {
            history.lost.insert(
                p.target.group.clone(),
                (p.target.peer, now + REMEMBER_LOST_NS),
            );
        }
        if !targets.iter().any(|t| t.slot == p.target.slot) {
            // Nothing probed from this slot any more: the program records nothing.
            let quiet = EchoSeen {
                seq: *high,
                ..EchoSeen::default()
            };
            if let Err(e) = seen.set(p.target.slot, quiet, 0) {
                log::warn!("group {}: clearing the echo slot: {e}", p.target.group);
            }
        }
    }
    history.lost.retain(|_, (_, until)| *until > now);
    targets
        .into_iter()
        .zip(new)
        .map(|(t, kept)| {
            if let Some(p) = kept {
                return p;
            }
            let key = secret_key();
            let base = history.high.get(&t.slot).copied().unwrap_or(0);
            let armed = history
                .lost
                .get(&t.group)
                .is_some_and(|(peer, _)| *peer == t.peer);
            if let Err(e) = seen.set(t.slot, slot_value(&t, key, base), 0) {
                log::error!("group {}: preparing the echo: {e}", t.group);
            }
            let before = totals.get(&t.group).cloned().unwrap_or_default();
            Probe::new(t, key, base, armed, before, now)
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
        assert!(!gone(100, 0, false, 6));
        // Answered up to 10, then 5 more sent: one short.
        assert!(!gone(15, 10, true, 6));
        assert!(gone(16, 10, true, 6));
        // A thread that did not run sent nothing: no streak grows while it sleeps.
        assert!(!gone(10, 10, true, 6));
    }

    fn target() -> Target {
        Target {
            group: "web".into(),
            slot: 3,
            vip: "10.0.0.50".parse().unwrap(),
            peer: "10.0.0.11".parse().unwrap(),
            peer_mac: Some(Mac([2, 0, 0, 0, 0, 0x0b])),
            interval: Duration::from_millis(2),
            misses: 6,
        }
    }

    /// Runs `n` probe rounds against a slot that answers according to `answer`
    /// (the sequence it holds after each round); returns the losses reported.
    fn rounds(p: &mut Probe, n: u64, answer: impl Fn(u64) -> u64) -> Vec<Lost> {
        let mut out = Vec::new();
        for i in 0..n {
            let s = EchoSeen {
                key: p.key,
                seq: answer(p.sent),
                last_ns: 1 + i,
                ..EchoSeen::default()
            };
            if let (_, Some(l)) = p.observe(Some(&s), i * 2_000_000) {
                out.push(l);
            }
            p.sent = p.next_probe().1;
        }
        out
    }

    #[test]
    fn tokens_are_per_probe_and_the_slot_starts_at_the_base() {
        let p = Probe::new(target(), [1, 2], 100, false, Stats::default(), 0);
        let (b, seq) = p.next_probe();
        assert_eq!(seq, 101);
        let token = u64::from_be_bytes(b[12..20].try_into().unwrap());
        assert_eq!(token, echo::token([1, 2], 101));
        assert_ne!(token, echo::token([1, 2], 102));
        let v = slot_value(&p.target, [1, 2], 100);
        assert_eq!(
            (v.seq, v.family, v.peer[..4].to_vec()),
            (100, 4, vec![10, 0, 0, 11])
        );
        assert_eq!(v.peer_mac, [2, 0, 0, 0, 0, 0x0b]);
    }

    #[test]
    fn a_sequence_never_sent_is_no_answer() {
        let mut p = Probe::new(target(), [1, 2], 0, false, Stats::default(), 0);
        // Answered normally for a while: armed.
        assert!(rounds(&mut p, 10, |sent| sent).is_empty());
        assert!(p.armed);
        // Then the slot claims 2^63 (what a stolen probe answered with would say, if
        // the program recorded it): the prober ignores it, and the silence concludes.
        let lost = rounds(&mut p, 7, |_| 1 << 63);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].missed, 6);
        assert!(p.answered < 1 << 63);
    }

    #[test]
    fn a_silent_active_is_reported_again_every_misses_probes() {
        let mut p = Probe::new(target(), [1, 2], 0, false, Stats::default(), 0);
        rounds(&mut p, 5, |sent| sent);
        let answered = p.answered;
        let lost = rounds(&mut p, 6 + 3 * 6, |_| answered);
        let repeats: Vec<u32> = lost.iter().map(|l| l.repeat).collect();
        assert_eq!(repeats, vec![0, 1, 2, 3], "{lost:?}");
        // It answers again: armed afresh, nothing more reported.
        assert!(rounds(&mut p, 10, |sent| sent).is_empty());
        assert_eq!(p.stats.state, "armed");
    }

    #[test]
    fn an_active_that_never_answered_is_not_concluded_unless_it_had_before() {
        let mut fresh = Probe::new(target(), [1, 2], 0, false, Stats::default(), 0);
        assert!(rounds(&mut fresh, 50, |_| 0).is_empty());
        // The same, remembered as answering before and then not (armed from start).
        let mut remembered = Probe::new(target(), [1, 2], 40, true, Stats::default(), 0);
        assert_eq!(rounds(&mut remembered, 7, |_| 40).len(), 1);
    }

    #[test]
    fn a_path_seen_slow_needs_that_many_more_misses_for_a_while() {
        let mut p = Probe::new(target(), [1, 2], 0, false, Stats::default(), 0);
        rounds(&mut p, 5, |sent| sent);
        // Four probes unanswered, then all answered at once: a slow path, not a loss.
        let stalled = p.answered;
        assert!(rounds(&mut p, 4, |_| stalled).is_empty());
        assert!(rounds(&mut p, 3, |sent| sent).is_empty());
        // Now the active goes silent: 6 misses are not enough, 6 + 4 are.
        let answered = p.answered;
        let lost = rounds(&mut p, 11, |_| answered);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].missed, 10);
        // The slack lasts 10 s: after it, 6 again.
        let mut q = Probe::new(target(), [1, 2], 0, false, Stats::default(), 0);
        q.slack = (4, 1);
        rounds(&mut q, 3, |sent| sent);
        let answered = q.answered;
        assert_eq!(rounds(&mut q, 7, |_| answered)[0].missed, 6);
    }

    #[test]
    fn a_slot_written_for_another_key_is_ignored() {
        let mut p = Probe::new(target(), [1, 2], 0, false, Stats::default(), 0);
        p.sent = 5;
        let other = EchoSeen {
            key: [3, 4],
            seq: 5,
            replies: 5,
            ..EchoSeen::default()
        };
        assert_eq!(p.observe(Some(&other), 1).0, None);
        assert_eq!((p.answered, p.stats.counters.replies), (0, 0));
    }
}
