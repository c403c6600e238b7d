//! The built-in election of one group: a VRRP-like state machine over unicast
//! advertisements, with no I/O and no clock of its own (time comes in as an argument),
//! so every rule is unit-tested.
//!
//! * The active node advertises every interval; every healthy standby says so every
//!   interval too ([`Kind::Standby`], with its priority), so the standbys know which of
//!   them is the best one alive.
//! * A standby takes over when it has heard nothing from the active for 3 of the
//!   active's intervals plus a skew, when the active's data plane stops answering its
//!   echo probes (after the echo skew), or at once after a release. The best standby
//!   alive has no skew at all; the others keep theirs (shorter for higher priorities,
//!   see [`Election::skew`] and [`Params::echo_skew_for`]), so the best wins without
//!   a vote storm and a lower one only goes when the better one did not. While the
//!   active's data plane answers our probes, advertisement silence alone never makes
//!   us take over: the active still answers for the VIPs, so taking them would make
//!   two owners (its adverts are what is lost, say in a flood).
//! * A standby with a higher priority than the active preempts it (after
//!   `preempt_delay`), unless `preempt = false`, by a *claim*: the active stops
//!   answering, releases, and only then does the claimant take over, so the two never
//!   answer at once. An active that does not say it understands claims (an older vip)
//!   is preempted the old way, by taking over.
//! * Two actives (a healed partition): the lower (priority, address) yields at once,
//!   the winner re-announces.
//! * A planned handover (demote, SIGTERM, a claim) stops answering first
//!   ([`Action::Quiesce`]), then releases; when the new active is heard, it hands its
//!   stale-cache traffic to the new active's MAC.
//! * A node whose data-plane lease ran out (its agent was stopped past it) or whose
//!   link went down is no longer the owner: it goes back to listening, as a starting
//!   node does, and claims the VIPs again only through the election.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    advert::{Advert, Kind},
    mac::Mac,
    reason::Reason,
    state::{Pin, State},
};

#[derive(Debug, Clone)]
pub struct Params {
    pub priority: u8,
    pub interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// Our primary address: identity and tie-breaker.
    pub me: IpAddr,
    /// After the active's data plane stops answering probes, how long to wait before
    /// taking over when a better standby is alive: zero with a single peer, else
    /// shorter for higher priorities (see `Params::echo_skew_for`).
    pub echo_skew: Duration,
    /// How recent an echo reply proves the active's data plane still answers: the
    /// echo's detection time (`echo_interval * echo_misses`); zero without the echo.
    pub echo_window: Duration,
}

impl Params {
    /// The echo's priority skew: an echo interval per 24 priority points below 256
    /// (priority 100: 6.5 intervals, 150: 4.4, 200: 2.3). Two standbys 50 points
    /// apart are then two intervals apart, more than the interval by which their
    /// probes' phases (hence their detections) can differ. The best standby alive
    /// does not wait it (see `Election::best_standby`).
    pub fn echo_skew_for(priority: u8, echo_interval: Duration, peers: usize) -> Duration {
        if peers <= 1 {
            return Duration::ZERO;
        }
        echo_interval * (256 - priority.max(1) as u32) / 24
    }
}

/// What the election wants the agent to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Take the VIPs (lease, entries, addresses, announcements).
    TakeOver { reason: Reason },
    /// Give them up; hand stale-cache traffic to `forward_to` if known.
    StepDown {
        forward_to: Option<Mac>,
        reason: Reason,
    },
    /// Stop answering for the VIPs now (the lease goes), but keep delivering what
    /// arrives: the first step of a planned handover, before the release is sent.
    Quiesce,
    /// Standby, listening, with the data plane left as it is (a restarted agent that
    /// adopted a serving one; the election decides after listening).
    Listen { reason: Reason },
    /// Give them up because a health check failed.
    Fault { reason: Reason },
    /// Hold nothing and wait (a static active group before its first health results).
    Wait { reason: Reason },
    /// Health is back: standby again.
    Recover { reason: Reason },
    /// As standby, the active we forward to changed (None: none known).
    ForwardTo(Option<Mac>),
    /// Send this kind of advertisement to every peer.
    Send(Kind),
    /// Send the gratuitous ARP / unsolicited NA burst again.
    Reannounce,
}

/// Why a standby's takeover timer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DownCause {
    /// Nothing heard from an active since this instant.
    Silent { since: Option<Instant> },
    /// The active released the VIPs.
    Released { by: IpAddr, mac: Mac },
    /// The active's data plane stopped answering probes.
    EchoLost {
        peer: IpAddr,
        missed: u32,
        silent: Duration,
    },
}

/// The node we believe active (not us).
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub addr: IpAddr,
    pub mac: Mac,
    pub priority: u8,
    pub last_seen: Instant,
    /// Its advertisement interval: its silence is measured in its own intervals.
    pub interval: Duration,
    /// It releases the VIPs on a claim (see [`Kind::Claim`]).
    pub handshakes: bool,
}

/// A standby (or a starting node) we heard, for knowing the best standby alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Presence {
    priority: u8,
    seen: Instant,
}

/// How many intervals a standby stays "alive" to the others after it was last heard:
/// long enough that a live better standby is never missed (that would let two claim
/// at once), short enough that a dead one soon stops costing us our skew.
const PRESENCE_INTERVALS: u32 = 10;

/// What the election counts (declared with its status keys and metrics in `counters`).
pub use crate::counters::ElectionCounters as Counters;

#[derive(Debug)]
pub struct Election {
    p: Params,
    state: State,
    pin: Pin,
    healthy: bool,
    /// Standby: when we take over if nothing is heard.
    master_down_at: Option<Instant>,
    /// Why `master_down_at` is armed: silence since an instant, or a release.
    down_cause: DownCause,
    /// Standby since start, no active heard yet: we say hello to the peers, and a
    /// better candidate's hello makes us wait for it.
    listening: bool,
    /// Listening after adopting a data plane an earlier agent left serving: a takeover
    /// at the end resumes it (reason `Adopted`).
    resuming: bool,
    /// Standby: when we preempt a lower-priority active.
    preempt_at: Option<Instant>,
    /// Standby: we claimed the VIPs from the active and wait for its release.
    claiming: bool,
    /// Active: when the next advertisement is due; standby: the next presence or hello.
    next_advert_at: Option<Instant>,
    /// Active, handing over: until when we wait for a new active before giving up.
    handover_until: Option<Instant>,
    /// Active, handing over because this peer claimed the VIPs: if it does not take
    /// them, we serve again.
    claimed_by: Option<IpAddr>,
    /// Active, handing over: the successor whose first advert (its claim) we heard.
    successor: Option<IpAddr>,
    /// The priority of the peer whose claim we answer (`claimed_by`).
    claimant_priority: u8,
    /// Active: when we last answered a hello (at most once an interval).
    hello_answered_at: Option<Instant>,
    active: Option<Peer>,
    /// Standby: a worse node that advertised itself active while we still heard a
    /// better one (see `take_contender`).
    contender: Option<Peer>,
    /// The last time the active's data plane answered our echo.
    echo_heard: Option<Instant>,
    /// The standbys and starting nodes heard, by address.
    standbys: HashMap<IpAddr, Presence>,
    /// Active after a planned handover (the active released the VIPs, or we
    /// preempted a live active): its MAC. It steps down towards us and, during its
    /// drain, still serves the connections its stack had accepted.
    predecessor: Option<Mac>,
    forwarding: Option<Mac>,
    /// Standby: the active asked us to hold (it is restarting) until then; its
    /// probes may go unanswered meanwhile, which proves nothing.
    hold_until: Option<Instant>,
    /// Our link is up: with it down we neither serve nor take over (alone on a dead
    /// link, a takeover would only make two owners when it comes back).
    link_up: bool,
    pub counters: Counters,
}

impl Election {
    pub fn new(p: Params) -> Self {
        Election {
            p,
            state: State::Init,
            pin: Pin::None,
            healthy: true,
            master_down_at: None,
            down_cause: DownCause::Silent { since: None },
            listening: false,
            resuming: false,
            preempt_at: None,
            claiming: false,
            next_advert_at: None,
            handover_until: None,
            claimed_by: None,
            successor: None,
            claimant_priority: 0,
            hello_answered_at: None,
            active: None,
            contender: None,
            echo_heard: None,
            standbys: HashMap::new(),
            predecessor: None,
            forwarding: None,
            hold_until: None,
            link_up: true,
            counters: Counters::default(),
        }
    }

    /// Arms the takeover timer for silence starting now.
    fn arm_silence(&mut self, now: Instant) {
        self.master_down_at = Some(now + self.master_down_interval_at(now));
        self.down_cause = DownCause::Silent { since: Some(now) };
    }

    /// Standby: an active better than `theirs` (priority, address) was heard within
    /// two intervals, so the advertiser of `theirs` is the loser of a split brain.
    fn worse_than_known_active(&self, theirs: (u8, IpAddr), now: Instant) -> bool {
        matches!(self.state, State::Standby | State::Init)
            && self.active.as_ref().is_some_and(|a| {
                a.addr != theirs.1
                    && (a.priority, a.addr) > theirs
                    && now.saturating_duration_since(a.last_seen) <= self.p.interval * 2
            })
    }

    /// True while a starting standby is still listening for the active.
    pub fn listening(&self) -> bool {
        self.listening
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn pin(&self) -> Pin {
        self.pin
    }

    pub fn params(&self) -> &Params {
        &self.p
    }

    /// The active node as we know it (None while we are active ourselves).
    pub fn active(&self) -> Option<&Peer> {
        self.active.as_ref()
    }

    /// Active since a planned handover (a release, a preemption, `vip promote` over a
    /// live active): the old active's MAC. None after a takeover from a node that is
    /// gone (silence, echo) or that we never heard.
    pub fn predecessor(&self) -> Option<Mac> {
        self.predecessor.filter(|_| self.state == State::Active)
    }

    /// True while we are active but waiting for a successor.
    pub fn handing_over(&self) -> bool {
        self.handover_until.is_some()
    }

    /// True while we claimed the VIPs from the active and wait for its release.
    pub fn claiming(&self) -> bool {
        self.claiming
    }

    /// The priority we advertise and compare with.
    pub fn effective_priority(&self) -> u8 {
        match self.pin {
            Pin::None => self.p.priority,
            Pin::Active => 255,
            Pin::Standby => 0,
        }
    }

    /// No better standby (or starting node) was heard within `PRESENCE_INTERVALS`:
    /// we go first, without a skew. The active itself does not count.
    pub fn best_standby(&self, now: Instant) -> bool {
        let ours = (self.effective_priority(), self.p.me);
        let alive = self.p.interval * PRESENCE_INTERVALS;
        let active = self.active.as_ref().map(|a| a.addr);
        !self.standbys.iter().any(|(addr, s)| {
            Some(*addr) != active
                && now.saturating_duration_since(s.seen) <= alive
                && (s.priority, *addr) > ours
        })
    }

    /// The priority a datagram of `kind` carries. A release says who should take over:
    /// the claimant's priority (a release answering a claim), else the best standby we
    /// heard alive (0 if none), so that a standby that missed the claimant, or a better
    /// standby, does not race it (version 1 and older vips send 0: the old rule).
    pub fn priority_for(&self, kind: Kind, now: Instant) -> u8 {
        if kind != Kind::Release {
            return self.effective_priority();
        }
        if self.claimed_by.is_some() {
            return self.claimant_priority;
        }
        let alive = self.p.interval * PRESENCE_INTERVALS;
        self.standbys
            .values()
            .filter(|s| now.saturating_duration_since(s.seen) <= alive)
            .map(|s| s.priority)
            .max()
            .unwrap_or(0)
    }

    /// The standbys (and starting nodes) heard, with their priority and how long ago,
    /// best first: who would go before us.
    pub fn standbys_heard(&self, now: Instant) -> Vec<(IpAddr, u8, Duration)> {
        let mut v: Vec<(IpAddr, u8, Duration)> = self
            .standbys
            .iter()
            .map(|(a, s)| (*a, s.priority, now.saturating_duration_since(s.seen)))
            .collect();
        v.sort_by_key(|(a, p, _)| std::cmp::Reverse((*p, *a)));
        v
    }

    /// The priority-based part of the takeover delay: a quarter of VRRP's
    /// `(256 - priority) / 256` interval. It only has to order standbys (a LAN delivers
    /// the winner's advert in microseconds), and every bit of it is outage, so the
    /// best standby alive does without it.
    fn skew(&self) -> Duration {
        let prio = self.effective_priority().max(1) as u32;
        self.p.interval * (256 - prio) / 1024
    }

    fn skew_at(&self, now: Instant) -> Duration {
        if self.best_standby(now) {
            Duration::ZERO
        } else {
            self.skew()
        }
    }

    /// How long a standby waits for an advertisement before taking over (as things
    /// stand when nothing else is known: with our skew).
    pub fn master_down_interval(&self) -> Duration {
        self.silence_limit() + self.skew()
    }

    /// 3 of the active's intervals (or ours, if longer or no active is known): its
    /// lease never runs longer than that after its last advertisement.
    fn silence_limit(&self) -> Duration {
        let theirs = self.active.as_ref().map_or(Duration::ZERO, |a| a.interval);
        self.p.interval.max(theirs) * 3
    }

    fn master_down_interval_at(&self, now: Instant) -> Duration {
        self.silence_limit() + self.skew_at(now)
    }

    /// The next instant `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.master_down_at,
            self.preempt_at,
            self.next_advert_at,
            self.handover_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// New settings from a reload; timers keep running under the new interval.
    pub fn set_params(&mut self, p: Params, now: Instant) {
        self.p = p;
        if self.master_down_at.is_some() {
            self.arm_silence(now);
        }
    }

    /// Leaves `init`: standby, listening for the active for a full detection time
    /// before it may claim the VIPs (VRRP's backup state). Meanwhile it says hello
    /// every interval, so that of two nodes started at once only the better one
    /// claims, whichever process happened to be ready first.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Standby;
        self.listen(now)
    }

    /// A restarted agent found its predecessor's data plane serving the group, with a
    /// lease that still runs: it listens as a starting node does and renews nothing;
    /// if no other active is heard in that time, it takes the VIPs again (`Adopted`),
    /// else it gives them up to the one heard.
    pub fn start_adopted(&mut self, now: Instant) -> Vec<Action> {
        let out = self.start(now);
        self.resuming = true;
        out
    }

    fn listen(&mut self, now: Instant) -> Vec<Action> {
        self.arm_silence(now);
        self.listening = true;
        self.next_advert_at = Some(now + self.p.interval);
        vec![self.send(Kind::Hello)]
    }

    /// Our data-plane lease ran out while we were active (`stalled`: how long the agent
    /// did not renew it), or our link went down: we are no longer the owner. Back to
    /// listening, as a starting node, without a word to the peers (whatever we would
    /// say comes after our silence; the one who took over tells us).
    pub fn lost(&mut self, now: Instant, reason: Reason) -> Vec<Action> {
        if !matches!(self.state, State::Active) {
            return Vec::new();
        }
        if matches!(reason, Reason::LeaseExpired { .. }) {
            self.counters.leases_lost += 1;
        }
        self.state = State::Standby;
        self.handover_until = None;
        self.claimed_by = None;
        self.predecessor = None;
        self.forwarding = None;
        self.preempt_at = None;
        self.claiming = false;
        let mut out = vec![Action::StepDown {
            forward_to: None,
            reason,
        }];
        if self.healthy && self.pin != Pin::Standby {
            out.extend(self.listen(now));
        }
        out
    }

    /// Our link went down (`up` false) or came back. Down: an active is no longer the
    /// owner (see `lost`), and nobody takes over until it is back; back: a standby
    /// listens afresh, as a starting node does.
    pub fn link(&mut self, up: bool, now: Instant) -> Vec<Action> {
        if up == self.link_up {
            return Vec::new();
        }
        self.link_up = up;
        if !up {
            let out = self.lost(now, Reason::LinkDown);
            self.master_down_at = None;
            self.preempt_at = None;
            self.claiming = false;
            self.listening = false;
            return out;
        }
        if matches!(self.state, State::Standby | State::Init)
            && self.healthy
            && self.pin != Pin::Standby
        {
            return self.listen(now);
        }
        Vec::new()
    }

    /// The echo prober saw the active's data plane answer (`crate::echo`) at `at`.
    pub fn echo_answered(&mut self, peer: IpAddr, at: Instant) {
        if self.active.as_ref().is_some_and(|a| a.addr == peer) {
            self.echo_heard = Some(self.echo_heard.map_or(at, |t| t.max(at)));
        }
    }

    /// True while the active's data plane answered our probes recently.
    fn echo_alive(&self, now: Instant) -> bool {
        !self.p.echo_window.is_zero()
            && self
                .echo_heard
                .is_some_and(|t| now.saturating_duration_since(t) <= self.p.echo_window)
    }

    /// Advances time: adverts due, timers expired.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::Active => {
                if let Some(until) = self.handover_until {
                    if now >= until {
                        self.handover_until = None;
                        if let Some(by) = self.claimed_by.take() {
                            // The claimant never took the VIPs: serve again.
                            out.extend(self.take_over(now, Reason::ClaimUnanswered { by }));
                            return out;
                        }
                        // Nobody took over: step down anyway (the operator asked us to).
                        out.extend(self.step_down(now, None, Reason::HandoverUnanswered));
                        return out;
                    }
                }
                if self.next_advert_at.is_some_and(|t| now >= t) {
                    let kind = if self.handing_over() {
                        Kind::Release
                    } else {
                        Kind::Advert
                    };
                    out.push(self.send(kind));
                    self.next_advert_at = Some(now + self.p.interval);
                }
            }
            State::Standby | State::Init => {
                if let Some(a) = &self.active {
                    // Stop forwarding to an active we no longer hear, nor see serve.
                    let silent = now.saturating_duration_since(a.last_seen) > self.silence_limit();
                    if silent && !self.echo_alive(now) {
                        self.active = None;
                        self.claiming = false;
                        out.extend(self.forward(None));
                    }
                }
                if self.next_advert_at.is_some_and(|t| now >= t) {
                    self.next_advert_at = Some(now + self.p.interval);
                    if self.listening {
                        if self.healthy && self.pin != Pin::Standby {
                            out.push(self.send(Kind::Hello));
                        }
                    } else if self.healthy {
                        out.push(self.send(Kind::Standby));
                        if self.claiming {
                            out.push(self.send(Kind::Claim));
                        }
                    }
                }
                if !self.healthy || self.pin == Pin::Standby || !self.link_up {
                    self.master_down_at = None;
                    self.preempt_at = None;
                    self.claiming = false;
                    if self.listening {
                        self.listening = false;
                        self.resuming = false;
                        self.next_advert_at = Some(now + self.p.interval);
                    }
                    return out;
                }
                if self.preempt_at.is_some_and(|t| now >= t) {
                    self.preempt_at = None;
                    match self.active.clone() {
                        // The active releases when it hears our claim; we take over
                        // on its release (see `receive`).
                        Some(a) if a.handshakes => {
                            self.claiming = true;
                            out.push(self.send(Kind::Claim));
                        }
                        // An older vip: taking over is the only way.
                        Some(a) => {
                            let why = Reason::Preempt {
                                active: a.addr,
                                priority: a.priority,
                            };
                            out.extend(self.take_over(now, why));
                            self.predecessor = Some(a.mac);
                        }
                        None => out.extend(self.take_over(now, Reason::Promoted)),
                    }
                } else if self.master_down_at.is_some_and(|t| now >= t) {
                    let silence = matches!(self.down_cause, DownCause::Silent { .. });
                    if silence && self.echo_alive(now) {
                        // Its adverts are lost, not its data plane: it still answers
                        // for the VIPs, so taking them would make two owners.
                        self.arm_silence(now);
                        return out;
                    }
                    // Another node claimed the VIPs meanwhile (it heard the release,
                    // or saw the failure, first): it is the active, not us.
                    if let Some(acts) = self.take_contender(now) {
                        out.extend(acts);
                        return out;
                    }
                    let why = match self.down_cause {
                        DownCause::Released { by, .. } => Reason::Released { by },
                        DownCause::EchoLost {
                            peer,
                            missed,
                            silent,
                        } => Reason::EchoLost {
                            peer,
                            missed,
                            silent,
                        },
                        DownCause::Silent { .. } if self.resuming => Reason::Adopted,
                        DownCause::Silent { since } => Reason::PeerSilent {
                            silent: since
                                .map(|s| now.saturating_duration_since(s))
                                .unwrap_or_else(|| self.master_down_interval()),
                        },
                    };
                    out.extend(self.take_over(now, why));
                    if let DownCause::Released { mac, .. } = self.down_cause {
                        self.predecessor = Some(mac);
                    }
                }
            }
            State::Fault => {}
        }
        out
    }

    /// An advertisement from a peer (already authenticated and checked for replay).
    pub fn receive(&mut self, ad: &Advert, now: Instant) -> Vec<Action> {
        self.counters.adverts_received += 1;
        let mut out = Vec::new();
        let theirs = (ad.priority, ad.addr);
        let ours = (self.effective_priority(), self.p.me);
        match ad.kind {
            Kind::Standby => {
                self.standbys.insert(
                    ad.addr,
                    Presence {
                        priority: ad.priority,
                        seen: now,
                    },
                );
            }
            Kind::Hello => {
                self.standbys.insert(
                    ad.addr,
                    Presence {
                        priority: ad.priority,
                        seen: now,
                    },
                );
                match self.state {
                    // A node is starting: tell it who is active (at most once an
                    // interval, whoever asks and how often).
                    State::Active
                        if !self.handing_over()
                            && self
                                .hello_answered_at
                                .is_none_or(|t| now >= t + self.p.interval) =>
                    {
                        self.hello_answered_at = Some(now);
                        out.push(self.send(Kind::Advert));
                    }
                    // Two starting nodes: the worse one waits for the better one.
                    State::Standby | State::Init
                        if self.listening && ad.priority > 0 && theirs > ours =>
                    {
                        let deadline = now + self.master_down_interval_at(now);
                        if self.master_down_at.is_some_and(|t| t < deadline) {
                            self.arm_silence(now);
                        }
                    }
                    _ => {}
                }
            }
            Kind::Claim => {
                // The claimant is a live standby too (its presence may come later).
                self.standbys.insert(
                    ad.addr,
                    Presence {
                        priority: ad.priority,
                        seen: now,
                    },
                );
                // A better peer wants the VIPs: stop answering, then release to it.
                if self.state == State::Active
                    && !self.handing_over()
                    && self.pin != Pin::Active
                    && theirs > ours
                {
                    self.claimed_by = Some(ad.addr);
                    self.claimant_priority = ad.priority;
                    out.extend(self.hand_over(now));
                }
            }
            Kind::Advert => {
                // Its presence stays: the active is excluded from the ranking by being
                // the active, and one that only claims to be (a contender, below)
                // still outranks us if it is better.
                if self.listening {
                    // An active exists: the start-up phase (and its hellos) is over.
                    self.listening = false;
                    self.next_advert_at = Some(now + self.p.interval);
                    if self.resuming {
                        // Another node serves: the data plane we adopted must not.
                        self.resuming = false;
                        out.push(Action::StepDown {
                            forward_to: Some(ad.mac),
                            reason: Reason::Electing,
                        });
                        self.forwarding = Some(ad.mac);
                    }
                }
                let peer = Peer {
                    addr: ad.addr,
                    mac: ad.mac,
                    priority: ad.priority,
                    last_seen: now,
                    interval: Duration::from_millis(ad.interval_ms as u64),
                    handshakes: ad.handshakes,
                };
                if self.worse_than_known_active(theirs, now) {
                    // Two actives (a split brain settling, say after a failure several
                    // standbys detected at once): the better one wins it, so a standby
                    // neither preempts the worse one, which would only move the clients'
                    // ARP caches once more, nor forwards to it. An active exists
                    // all the same: no takeover for silence. And if the better one is
                    // found gone, this one is the active (it took over first).
                    self.contender = Some(peer);
                    self.arm_silence(now);
                    return out;
                }
                out.extend(self.heard(peer, now));
            }
            Kind::Release => {
                let from_active = self.active.as_ref().is_none_or(|a| a.addr == ad.addr);
                if from_active
                    && matches!(self.state, State::Standby | State::Init)
                    && self.healthy
                    && self.pin != Pin::Standby
                {
                    if self.claiming {
                        // Our claim answered: the old active stopped answering first.
                        let why = match (self.pin, &self.active) {
                            (Pin::Active, _) | (_, None) => Reason::Promoted,
                            (_, Some(a)) => Reason::Preempt {
                                active: a.addr,
                                priority: a.priority,
                            },
                        };
                        out.extend(self.take_over(now, why));
                        self.predecessor = Some(ad.mac);
                        return out;
                    }
                    // Planned handover: the best standby alive goes at once, the
                    // others after their skew; so does one that the releaser says is
                    // not the best (it named a better one: a claimant, say).
                    let named_better = ad.priority > self.effective_priority();
                    let wait = if named_better {
                        self.skew()
                    } else {
                        self.skew_at(now)
                    };
                    self.master_down_at = Some(now + wait);
                    self.down_cause = DownCause::Released {
                        by: ad.addr,
                        mac: ad.mac,
                    };
                    out.extend(self.tick(now));
                }
            }
            // The agent's replay protection; nothing for the election.
            Kind::Challenge | Kind::Answer => {}
            Kind::Hold => {
                if self.active.as_ref().is_some_and(|a| a.addr == ad.addr)
                    && self.state != State::Active
                {
                    let hold = Duration::from_millis(ad.hold_ms as u64);
                    self.hold_until = Some(now + hold);
                    self.master_down_at = Some(now + hold.max(self.master_down_interval()));
                    self.down_cause = DownCause::Silent { since: Some(now) };
                    if let Some(a) = &mut self.active {
                        a.last_seen = now + hold;
                    }
                }
            }
        }
        out
    }

    /// An active advertised itself (not a split brain's loser): follow it, preempt it,
    /// yield to it, or win against it.
    fn heard(&mut self, peer: Peer, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let theirs = (peer.priority, peer.addr);
        let ours = (self.effective_priority(), self.p.me);
        let (addr, mac, priority) = (peer.addr, peer.mac, peer.priority);
        if self.contender.as_ref().is_some_and(|c| c.addr == addr) {
            self.contender = None;
        }
        if self.active.as_ref().is_none_or(|a| a.addr != addr) {
            self.echo_heard = None;
        }
        self.active = Some(peer);
        match self.state {
            State::Active if self.handing_over() => {
                // A successor's first advert is its claim, sent before its data
                // plane serves; its second follows once it does (see `take_over`).
                // Until then we keep steering (quietly), or what we forwarded to it
                // would bounce back and be lost.
                if self.successor != Some(addr) {
                    self.successor = Some(addr);
                    return out;
                }
                self.handover_until = None;
                self.claimed_by = None;
                self.successor = None;
                let why = Reason::HandedOver { to: addr, priority };
                out.extend(self.step_down(now, Some(mac), why));
            }
            State::Active if theirs > ours => {
                let why = if priority > self.effective_priority() {
                    Reason::Yield { to: addr, priority }
                } else {
                    Reason::SplitBrain { with: addr }
                };
                if priority <= self.effective_priority() {
                    self.counters.split_brains += 1;
                }
                out.extend(self.step_down(now, Some(mac), why));
            }
            State::Active => {
                // Two actives and we win: say so at once and re-announce.
                self.counters.split_brains += 1;
                self.active = None;
                out.push(self.send(Kind::Advert));
                out.push(Action::Reannounce);
            }
            State::Standby | State::Init => {
                let preempts = self.p.preempt
                    && self.pin != Pin::Standby
                    && self.healthy
                    && self.effective_priority() > priority;
                if preempts || self.pin == Pin::Active {
                    if self.preempt_at.is_none() && !self.claiming {
                        self.preempt_at = Some(
                            now + if self.pin == Pin::Active {
                                Duration::ZERO
                            } else {
                                self.p.preempt_delay
                            },
                        );
                    }
                } else {
                    self.preempt_at = None;
                    self.claiming = false;
                }
                // Heard: the silence timer starts again either way.
                self.arm_silence(now);
                out.extend(self.forward(Some(mac)));
                out.extend(self.tick(now));
            }
            State::Fault => {}
        }
        out
    }

    /// The active is found gone (silence, echo) but another node advertised itself
    /// active meanwhile (it took over first, while we still heard the old one): that
    /// one is the active now, not us.
    fn take_contender(&mut self, now: Instant) -> Option<Vec<Action>> {
        let c = self.contender.take()?;
        if now.saturating_duration_since(c.last_seen) > self.p.interval * 2 {
            return None;
        }
        self.active = None;
        self.master_down_at = None;
        Some(self.heard(c, now))
    }

    /// The prober's word: the active's data plane stopped answering (`crate::echo`).
    /// Acts like advertisement silence, only sooner: the best standby alive takes over
    /// at once, the others after their echo skew, unless an advert from an active
    /// comes first.
    pub fn echo_lost(
        &mut self,
        peer: IpAddr,
        missed: u32,
        silent: Duration,
        now: Instant,
    ) -> Vec<Action> {
        let from_active = self.active.as_ref().is_some_and(|a| a.addr == peer);
        let holding = self.hold_until.is_some_and(|t| now < t);
        if !from_active
            || holding
            || !self.link_up
            || !matches!(self.state, State::Standby | State::Init)
            || !self.healthy
            || self.pin == Pin::Standby
        {
            return Vec::new();
        }
        self.echo_heard = None;
        if let Some(out) = self.take_contender(now) {
            return out;
        }
        let skew = if self.best_standby(now) {
            Duration::ZERO
        } else {
            self.p.echo_skew
        };
        let at = now + skew;
        if self.master_down_at.is_none_or(|t| at < t) {
            self.master_down_at = Some(at);
            self.down_cause = DownCause::EchoLost {
                peer,
                missed,
                silent,
            };
        }
        self.tick(now)
    }

    /// Health of the group's checks changed.
    pub fn set_healthy(&mut self, healthy: bool, reason: Reason, now: Instant) -> Vec<Action> {
        if healthy == self.healthy {
            return Vec::new();
        }
        self.healthy = healthy;
        let mut out = Vec::new();
        if !healthy {
            if self.state == State::Active {
                // Stop answering before the standbys hear they may take over.
                out.push(Action::Quiesce);
                out.push(self.send(Kind::Release));
            }
            self.state = State::Fault;
            self.master_down_at = None;
            self.preempt_at = None;
            self.claiming = false;
            self.next_advert_at = None;
            self.handover_until = None;
            self.claimed_by = None;
            self.listening = false;
            self.resuming = false;
            // A fault gives the VIPs up with nothing to forward to (the data plane's
            // entries go inert): on recovery the active is named again.
            self.forwarding = None;
            out.push(Action::Fault { reason });
        } else if self.state == State::Fault {
            self.state = State::Standby;
            self.arm_silence(now);
            self.next_advert_at = Some(now + self.p.interval);
            out.push(Action::Recover { reason });
            // Its presence at once: the other standbys must know it is alive before it
            // claims anything (a claim may follow within the interval).
            out.push(self.send(Kind::Standby));
            out.extend(self.forward(self.active.as_ref().map(|a| a.mac)));
        }
        out
    }

    /// `vip promote`: active now, and stays so until `resume` or a restart. Over a
    /// live active that understands claims, by a claim (it stops answering and
    /// releases first); else at once.
    pub fn promote(&mut self, now: Instant) -> Vec<Action> {
        self.pin = Pin::Active;
        self.handover_until = None;
        self.claimed_by = None;
        if !self.healthy {
            return Vec::new();
        }
        if self.state == State::Active {
            return vec![self.send(Kind::Advert), Action::Reannounce];
        }
        match self.active.clone() {
            Some(a) if a.handshakes => {
                self.claiming = true;
                self.preempt_at = None;
                vec![self.send(Kind::Claim)]
            }
            active => {
                // An active we hear yields to us (priority 255) and drains.
                let out = self.take_over(now, Reason::Promoted);
                self.predecessor = active.map(|a| a.mac);
                out
            }
        }
    }

    /// `vip demote`: hand over (stop answering and release; when a successor is heard,
    /// forward to it); stays standby until `resume` or a restart. With `forward_to`,
    /// step down at once towards that MAC.
    pub fn demote(&mut self, forward_to: Option<Mac>, now: Instant) -> Vec<Action> {
        self.pin = Pin::Standby;
        self.master_down_at = None;
        self.preempt_at = None;
        self.claiming = false;
        match (self.state, forward_to) {
            (State::Active, Some(mac)) => {
                let mut out = vec![Action::Quiesce, self.send(Kind::Release)];
                out.extend(self.step_down(now, Some(mac), Reason::Demoted));
                out
            }
            (State::Active, None) => {
                self.claimed_by = None;
                self.hand_over(now)
            }
            _ => Vec::new(),
        }
    }

    /// Back to the election after promote/demote.
    pub fn resume(&mut self, now: Instant) -> Vec<Action> {
        self.pin = Pin::None;
        self.claiming = false;
        if matches!(self.state, State::Standby | State::Init) && self.healthy {
            self.arm_silence(now);
            // A better node than the active we hear preempts it again.
            if let Some(a) = &self.active {
                if self.p.preempt && self.p.priority > a.priority {
                    self.preempt_at = Some(now + self.p.preempt_delay);
                }
            }
        }
        Vec::new()
    }

    /// Planned handover for shutdown: like `demote`. A node on its way out never takes
    /// the VIPs again, however good its priority (while it drains, it would otherwise
    /// preempt its successor, then vanish with the VIPs).
    pub fn shutdown(&mut self, now: Instant) -> Vec<Action> {
        self.pin = Pin::Standby;
        self.master_down_at = None;
        self.preempt_at = None;
        self.claiming = false;
        if self.state == State::Active && !self.handing_over() {
            self.claimed_by = None;
            self.hand_over(now)
        } else {
            Vec::new()
        }
    }

    /// A restart is about to happen: tell peers to hold for `hold`.
    pub fn hold(&mut self) -> Vec<Action> {
        if self.state == State::Active {
            vec![self.send(Kind::Hold)]
        } else {
            Vec::new()
        }
    }

    /// Stop answering, then release: the successor takes over after its skew (none for
    /// the best standby alive or the claimant); allow 3 more intervals.
    fn hand_over(&mut self, now: Instant) -> Vec<Action> {
        self.handover_until = Some(now + self.p.interval * 4);
        self.successor = None;
        self.next_advert_at = Some(now + self.p.interval);
        vec![Action::Quiesce, self.send(Kind::Release)]
    }

    fn take_over(&mut self, now: Instant, reason: Reason) -> Vec<Action> {
        self.state = State::Active;
        self.listening = false;
        self.resuming = false;
        self.master_down_at = None;
        self.preempt_at = None;
        self.claiming = false;
        self.handover_until = None;
        self.claimed_by = None;
        self.active = None;
        self.contender = None;
        self.echo_heard = None;
        self.predecessor = None;
        self.forwarding = None;
        self.next_advert_at = Some(now + self.p.interval);
        // The advert first: the other standbys, whose own takeovers wait out their
        // skew, hear the claim before the data plane work (entries, the director's
        // table, the announcement) delays it by milliseconds. The second says that
        // work is done: an old active handing over to us steps down on it.
        vec![
            self.send(Kind::Advert),
            Action::TakeOver { reason },
            self.send(Kind::Advert),
        ]
    }

    fn step_down(&mut self, now: Instant, forward_to: Option<Mac>, reason: Reason) -> Vec<Action> {
        self.state = State::Standby;
        self.next_advert_at = Some(now + self.p.interval);
        self.preempt_at = None;
        self.claiming = false;
        self.master_down_at =
            (self.pin != Pin::Standby).then(|| now + self.master_down_interval_at(now));
        self.down_cause = DownCause::Silent { since: Some(now) };
        self.forwarding = forward_to;
        let mut out = vec![Action::StepDown { forward_to, reason }];
        if self.healthy && self.pin != Pin::Standby {
            // Its presence at once, as a standby: its release told every peer it
            // left (an active/active director drops a member that released from its
            // table), and a standby that stays one would otherwise be missing for an
            // interval, its new flows placed on the others. Not when pinned standby
            // (`shutdown`, `demote`): a node shutting down must stay out.
            out.push(self.send(Kind::Standby));
        }
        out
    }

    fn forward(&mut self, mac: Option<Mac>) -> Option<Action> {
        if self.forwarding == mac || self.state == State::Fault {
            return None;
        }
        self.forwarding = mac;
        Some(Action::ForwardTo(mac))
    }

    fn send(&mut self, kind: Kind) -> Action {
        self.counters.adverts_sent += 1;
        Action::Send(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn node(prio: u8, last: u8) -> Election {
        Election::new(Params {
            priority: prio,
            interval: 100 * MS,
            preempt: true,
            preempt_delay: Duration::ZERO,
            me: format!("10.0.0.{last}").parse().unwrap(),
            echo_skew: Duration::ZERO,
            echo_window: Duration::ZERO,
        })
    }

    fn advert(kind: Kind, prio: u8, last: u8) -> Advert {
        Advert {
            kind,
            priority: prio,
            interval_ms: 100,
            hold_ms: 0,
            mac: Mac([2, 0, 0, 0, 0, last]),
            addr: format!("10.0.0.{last}").parse().unwrap(),
            seq: 1,
            epoch: 1,
            group: "web".into(),
            handshakes: true,
            nonce: None,
        }
    }

    /// A standby's presence (or a starting node's hello) from 10.0.0.`last`.
    fn presence(prio: u8, last: u8) -> Advert {
        advert(Kind::Standby, prio, last)
    }

    fn old(mut ad: Advert) -> Advert {
        ad.handshakes = false;
        ad
    }

    fn health(detail: &str) -> Reason {
        Reason::Health {
            check: "track_script",
            detail: detail.into(),
        }
    }

    fn took_over_reason(a: &[Action]) -> Option<Reason> {
        a.iter().find_map(|a| match a {
            Action::TakeOver { reason } => Some(reason.clone()),
            _ => None,
        })
    }

    #[test]
    fn a_lost_echo_takes_over_at_once_with_one_peer() {
        let t0 = Instant::now();
        let mut e = node(100, 10);
        e.start(t0);
        e.receive(&advert(Kind::Advert, 200, 20), t0 + 10 * MS);
        // From someone who is not the active: ignored.
        assert!(e
            .echo_lost("10.0.0.30".parse().unwrap(), 6, 12 * MS, t0 + 20 * MS)
            .is_empty());
        let a = e.echo_lost("10.0.0.20".parse().unwrap(), 6, 12 * MS, t0 + 20 * MS);
        match took_over_reason(&a) {
            Some(Reason::EchoLost { missed, .. }) => assert_eq!(missed, 6),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.state(), State::Active);
    }

    #[test]
    fn a_lost_echo_waits_for_the_skew_and_an_advert_cancels_it() {
        let t0 = Instant::now();
        let mut e = node(100, 10);
        e.p.echo_skew = Params::echo_skew_for(100, 2 * MS, 2);
        assert!(e.p.echo_skew > Duration::ZERO);
        e.start(t0);
        e.receive(&advert(Kind::Advert, 200, 20), t0 + 10 * MS);
        // A better standby is alive: we are not the first to go.
        e.receive(&presence(150, 30), t0 + 15 * MS);
        let t1 = t0 + 20 * MS;
        assert!(
            took_over_reason(&e.echo_lost("10.0.0.20".parse().unwrap(), 6, 12 * MS, t1)).is_none()
        );
        // A better standby took over first and says so: we stay standby.
        e.receive(&advert(Kind::Advert, 150, 30), t1 + MS);
        assert!(took_over_reason(&e.tick(t1 + e.p.echo_skew)).is_none());
        assert_eq!(e.state(), State::Standby);
        // The better standby goes first: a higher priority waits less.
        assert!(Params::echo_skew_for(150, 2 * MS, 2) < Params::echo_skew_for(100, 2 * MS, 2));
    }

    #[test]
    fn a_lost_echo_is_ignored_while_the_active_asked_us_to_hold() {
        let t0 = Instant::now();
        let mut e = node(100, 10);
        e.start(t0);
        e.receive(&advert(Kind::Advert, 200, 20), t0 + 10 * MS);
        let mut hold = advert(Kind::Hold, 200, 20);
        hold.hold_ms = 5000;
        e.receive(&hold, t0 + 20 * MS);
        let peer = "10.0.0.20".parse().unwrap();
        assert!(took_over_reason(&e.echo_lost(peer, 6, 12 * MS, t0 + 40 * MS)).is_none());
        assert_eq!(e.state(), State::Standby);
        // After the hold, the echo counts again.
        let later = t0 + 5100 * MS;
        e.receive(&advert(Kind::Advert, 200, 20), later);
        assert!(took_over_reason(&e.echo_lost(peer, 6, 12 * MS, later + MS)).is_some());
    }

    #[test]
    fn a_lost_echo_is_ignored_when_demoted_or_faulty() {
        let t0 = Instant::now();
        let mut e = node(100, 10);
        e.start(t0);
        e.receive(&advert(Kind::Advert, 200, 20), t0 + 10 * MS);
        e.demote(None, t0 + 11 * MS);
        assert!(took_over_reason(&e.echo_lost(
            "10.0.0.20".parse().unwrap(),
            6,
            12 * MS,
            t0 + 20 * MS
        ))
        .is_none());
    }

    #[test]
    fn a_release_is_the_reason_not_silence() {
        let t0 = Instant::now();
        let mut e = node(150, 10);
        e.start(t0);
        e.receive(&advert(Kind::Advert, 200, 20), t0 + 10 * MS);
        // The best standby alive goes at once.
        let a = e.receive(&advert(Kind::Release, 0, 20), t0 + 50 * MS);
        let why = took_over_reason(&a).expect("takes over at once");
        assert_eq!(why.kind(), "release", "{why}");
        // Silence is reported as the silence really measured.
        let mut f = node(150, 11);
        f.start(t0);
        f.receive(&advert(Kind::Advert, 200, 20), t0 + 10 * MS);
        let at = t0 + 10 * MS + f.master_down_interval();
        match took_over_reason(&f.tick(at)) {
            Some(Reason::PeerSilent { silent }) => assert_eq!(silent, f.master_down_interval()),
            other => panic!("{other:?}"),
        }
    }

    /// Two nodes started at once: whichever process is ready first, only the better
    /// one ever takes over (the worse one hears its hello and waits).
    #[test]
    fn two_nodes_started_at_once_only_the_better_one_claims() {
        let t0 = Instant::now();
        for head_start_ms in [0u32, 1, 5, 20, 60, 150] {
            let mut b = node(100, 11); // worse, starts first
            let mut a = node(200, 10);
            let mut queue: Vec<(Instant, bool, Advert)> = Vec::new(); // (when, to_a, ad)
            let send = |q: &mut Vec<(Instant, bool, Advert)>,
                        acts: &[Action],
                        from_a: bool,
                        e: &Election,
                        at: Instant| {
                for x in acts {
                    if let Action::Send(kind) = x {
                        let (prio, last) = (e.effective_priority(), if from_a { 10 } else { 11 });
                        q.push((at + MS / 10, !from_a, advert(*kind, prio, last)));
                    }
                }
            };
            let acts = b.start(t0);
            // b's first hello is lost: a is not listening yet.
            let _ = acts;
            let ta = t0 + head_start_ms * MS;
            let (mut a_claims, mut b_claims) = (0, 0);
            let mut a_started = false;
            let mut t = t0;
            while t < t0 + 2000 * MS {
                if !a_started && t >= ta {
                    let acts = a.start(t);
                    send(&mut queue, &acts, true, &a, t);
                    a_started = true;
                }
                queue.sort_by_key(|(w, _, _)| *w);
                while queue.first().is_some_and(|(w, _, _)| *w <= t) {
                    let (_, to_a, ad) = queue.remove(0);
                    if to_a && a_started {
                        let acts = a.receive(&ad, t);
                        a_claims += acts
                            .iter()
                            .filter(|x| matches!(x, Action::TakeOver { .. }))
                            .count();
                        send(&mut queue, &acts, true, &a, t);
                    } else if !to_a {
                        let acts = b.receive(&ad, t);
                        b_claims += acts
                            .iter()
                            .filter(|x| matches!(x, Action::TakeOver { .. }))
                            .count();
                        send(&mut queue, &acts, false, &b, t);
                    }
                }
                if a_started {
                    let acts = a.tick(t);
                    a_claims += acts
                        .iter()
                        .filter(|x| matches!(x, Action::TakeOver { .. }))
                        .count();
                    send(&mut queue, &acts, true, &a, t);
                }
                let acts = b.tick(t);
                b_claims += acts
                    .iter()
                    .filter(|x| matches!(x, Action::TakeOver { .. }))
                    .count();
                send(&mut queue, &acts, false, &b, t);
                t += MS;
            }
            assert_eq!(
                (a_claims, b_claims),
                (1, 0),
                "head start {head_start_ms} ms"
            );
            assert_eq!(a.state(), State::Active);
            assert_eq!(b.state(), State::Standby);
        }
    }

    fn took_over(a: &[Action]) -> bool {
        a.iter().any(|a| matches!(a, Action::TakeOver { .. }))
    }

    #[test]
    fn standby_takes_over_after_three_intervals_plus_skew() {
        let t0 = Instant::now();
        // A better node (a hello at start) is alive: we wait our skew on top.
        let mut e = node(150, 10);
        e.start(t0);
        e.receive(&advert(Kind::Hello, 200, 11), t0);
        let md = e.master_down_interval();
        assert_eq!(md, 300 * MS + 100 * MS * 106 / 1024);
        assert!(!took_over(&e.tick(t0 + md - MS)));
        let a = e.tick(t0 + md);
        assert!(took_over(&a), "{a:?}");
        assert!(a.contains(&Action::Send(Kind::Advert)));
        assert_eq!(e.state(), State::Active);
        // The best one alive has no skew.
        let mut e = node(150, 10);
        e.start(t0);
        assert!(!took_over(&e.tick(t0 + 300 * MS - MS)));
        assert!(took_over(&e.tick(t0 + 300 * MS)));
    }

    #[test]
    fn a_standby_recovering_from_a_fault_forwards_to_the_active_again() {
        let t0 = Instant::now();
        let mut e = node(100, 11);
        e.start(t0);
        let a = e.receive(&advert(Kind::Advert, 150, 10), t0 + 200 * MS);
        let active = Mac([2, 0, 0, 0, 0, 10]);
        assert!(a.contains(&Action::ForwardTo(Some(active))), "{a:?}");
        // The fault leaves the data plane with nothing to forward to; the recovery
        // names the active again (an anycast member announces only while it does).
        e.set_healthy(false, health("failed"), t0 + 300 * MS);
        let a = e.set_healthy(true, health("ok"), t0 + 400 * MS);
        assert!(a.contains(&Action::ForwardTo(Some(active))), "{a:?}");
    }

    #[test]
    fn higher_priority_standby_waits_less() {
        assert!(node(200, 1).master_down_interval() < node(100, 2).master_down_interval());
    }

    #[test]
    fn adverts_keep_a_standby_waiting_and_it_forwards_to_the_active() {
        let t0 = Instant::now();
        let mut e = node(100, 11);
        e.start(t0);
        let a = e.receive(&advert(Kind::Advert, 150, 10), t0 + 200 * MS);
        assert_eq!(a, vec![Action::ForwardTo(Some(Mac([2, 0, 0, 0, 0, 10])))]);
        assert!(!took_over(&e.tick(t0 + 450 * MS)));
        assert!(took_over(&e.tick(t0 + 200 * MS + e.master_down_interval())));
    }

    #[test]
    fn preemption_and_no_preemption() {
        let t0 = Instant::now();
        // An older vip (no claims) is preempted by taking over.
        let mut e = node(200, 12);
        e.start(t0);
        assert!(took_over(
            &e.receive(&old(advert(Kind::Advert, 150, 10)), t0)
        ));
        // Today's vip: a claim, and the takeover on its release.
        let mut e = node(200, 12);
        e.start(t0);
        let a = e.receive(&advert(Kind::Advert, 150, 10), t0);
        assert!(
            !took_over(&a) && a.contains(&Action::Send(Kind::Claim)),
            "{a:?}"
        );
        assert!(took_over(
            &e.receive(&advert(Kind::Release, 0, 10), t0 + MS)
        ));

        let mut e = node(200, 12);
        e.p.preempt = false;
        e.start(t0);
        assert!(!took_over(&e.receive(&advert(Kind::Advert, 150, 10), t0)));
        assert!(!took_over(&e.tick(t0 + 250 * MS)));

        let mut e = node(200, 12);
        e.p.preempt_delay = 500 * MS;
        e.start(t0);
        assert!(!e
            .receive(&advert(Kind::Advert, 150, 10), t0)
            .contains(&Action::Send(Kind::Claim)));
        assert!(!took_over(
            &e.receive(&advert(Kind::Advert, 150, 10), t0 + 400 * MS)
        ));
        assert!(e.tick(t0 + 500 * MS).contains(&Action::Send(Kind::Claim)));
    }

    #[test]
    fn a_standby_hearing_two_actives_leaves_the_split_brain_to_the_better_one() {
        let t0 = Instant::now();
        let mut e = node(150, 13);
        e.start(t0);
        // b (200) and d (100) both active, as after a failure two standbys detected.
        e.receive(&advert(Kind::Advert, 200, 12), t0);
        let a = e.receive(&advert(Kind::Advert, 100, 14), t0 + 10 * MS);
        assert!(!took_over(&a), "{a:?}");
        assert!(!a.contains(&Action::ForwardTo(Some(Mac([2, 0, 0, 0, 0, 14])))));
        assert!(!took_over(&e.tick(t0 + 20 * MS)));
        assert_eq!(e.active().map(|p| p.priority), Some(200));
        // b settles it (d yields); we stay standby behind b.
        e.receive(&advert(Kind::Advert, 200, 12), t0 + 100 * MS);
        assert!(!took_over(&e.tick(t0 + 150 * MS)));
        assert_eq!(e.state(), State::Standby);
        // b gone for more than two intervals: d is the active, and we preempt it (a
        // claim, then its release).
        let a = e.receive(&advert(Kind::Advert, 100, 14), t0 + 350 * MS);
        assert!(a.contains(&Action::Send(Kind::Claim)), "{a:?}");
        assert!(took_over(
            &e.receive(&advert(Kind::Release, 0, 14), t0 + 351 * MS)
        ));
    }

    #[test]
    fn a_takeover_claims_the_vips_before_taking_them() {
        // The other standbys hear the advert before the data plane work starts.
        let t0 = Instant::now();
        let mut e = node(200, 12);
        e.start(t0);
        let a = e.tick(t0 + e.master_down_interval());
        let claim = a.iter().position(|a| *a == Action::Send(Kind::Advert));
        let take = a.iter().position(|a| matches!(a, Action::TakeOver { .. }));
        let ready = a.iter().rposition(|a| *a == Action::Send(Kind::Advert));
        assert!(claim.is_some() && claim < take && take < ready, "{a:?}");
    }

    #[test]
    fn equal_priority_never_preempts() {
        let t0 = Instant::now();
        let mut e = node(150, 99);
        e.start(t0);
        assert!(!took_over(&e.receive(&advert(Kind::Advert, 150, 10), t0)));
    }

    #[test]
    fn active_yields_to_higher_priority_and_forwards_to_it() {
        let t0 = Instant::now();
        let mut e = node(100, 10);
        e.start(t0);
        e.tick(t0 + e.master_down_interval());
        let a = e.receive(&advert(Kind::Advert, 200, 12), t0 + 1000 * MS);
        assert!(
            matches!(&a[0], Action::StepDown { forward_to: Some(m), .. } if *m == Mac([2, 0, 0, 0, 0, 12]))
        );
        assert_eq!(e.state(), State::Standby);
        assert_eq!(e.counters.split_brains, 0);
    }

    #[test]
    fn split_brain_lower_address_yields_winner_reannounces() {
        let t0 = Instant::now();
        let mut low = node(150, 10);
        let mut high = node(150, 11);
        for e in [&mut low, &mut high] {
            e.start(t0);
            e.tick(t0 + Duration::from_secs(1));
            assert_eq!(e.state(), State::Active);
        }
        let a = high.receive(&advert(Kind::Advert, 150, 10), t0 + 2000 * MS);
        assert!(
            a.contains(&Action::Reannounce) && a.contains(&Action::Send(Kind::Advert)),
            "{a:?}"
        );
        assert_eq!(high.state(), State::Active);
        let a = low.receive(&advert(Kind::Advert, 150, 11), t0 + 2000 * MS);
        assert!(matches!(a[0], Action::StepDown { .. }), "{a:?}");
        assert_eq!(
            (low.counters.split_brains, high.counters.split_brains),
            (1, 1)
        );
    }

    #[test]
    fn release_lets_the_best_standby_take_over_after_its_skew() {
        let t0 = Instant::now();
        let mut e = node(180, 12);
        e.p.preempt = false;
        e.start(t0);
        e.receive(&advert(Kind::Advert, 150, 10), t0);
        // A better standby (200) is alive: it goes first, we after our skew.
        e.receive(&presence(200, 13), t0 + 10 * MS);
        assert!(!took_over(
            &e.receive(&advert(Kind::Release, 150, 10), t0 + 50 * MS)
        ));
        assert!(!took_over(&e.tick(t0 + 50 * MS + e.skew() - MS)));
        assert!(took_over(&e.tick(t0 + 50 * MS + e.skew())));
        // The node that released is known (it drains its connections).
        assert_eq!(e.predecessor(), Some(Mac([2, 0, 0, 0, 0, 10])));
        // Alone (no better standby heard for 10 intervals), we go at once.
        let mut e = node(180, 12);
        e.p.preempt = false;
        e.start(t0);
        e.receive(&presence(200, 13), t0);
        e.receive(&advert(Kind::Advert, 150, 10), t0 + 1001 * MS);
        assert!(took_over(
            &e.receive(&advert(Kind::Release, 150, 10), t0 + 1002 * MS)
        ));
    }

    #[test]
    fn a_preemption_or_a_promotion_over_a_live_active_has_a_predecessor() {
        let t0 = Instant::now();
        let mut e = node(200, 12);
        e.start(t0);
        e.receive(&advert(Kind::Advert, 150, 10), t0);
        let a = e.receive(&advert(Kind::Release, 0, 10), t0 + MS);
        assert!(took_over(&a), "{a:?}");
        assert_eq!(took_over_reason(&a).unwrap().kind(), "preempt");
        assert_eq!(e.predecessor(), Some(Mac([2, 0, 0, 0, 0, 10])));
        let mut e = node(200, 12);
        e.start(t0);
        let a = e.receive(&old(advert(Kind::Advert, 150, 10)), t0);
        assert_eq!(took_over_reason(&a).unwrap().kind(), "preempt");
        assert_eq!(e.predecessor(), Some(Mac([2, 0, 0, 0, 0, 10])));
        let mut e = node(100, 12);
        e.start(t0);
        e.receive(&advert(Kind::Advert, 150, 10), t0);
        assert_eq!(e.promote(t0 + 10 * MS), vec![Action::Send(Kind::Claim)]);
        assert!(took_over(
            &e.receive(&advert(Kind::Release, 0, 10), t0 + 11 * MS)
        ));
        assert_eq!(e.predecessor(), Some(Mac([2, 0, 0, 0, 0, 10])));
        // Promoted with no active heard: nobody to drain.
        let mut e = node(100, 12);
        e.start(t0);
        assert!(took_over(&e.promote(t0 + 10 * MS)));
        assert_eq!(e.predecessor(), None);
    }

    #[test]
    fn a_takeover_from_a_silent_active_has_no_predecessor() {
        let t0 = Instant::now();
        let mut e = node(200, 12);
        e.p.preempt = false;
        e.start(t0);
        e.receive(&advert(Kind::Advert, 150, 10), t0);
        // Silence: the active is gone, nothing to drain.
        let a = e.tick(t0 + 50 * MS + e.master_down_interval());
        assert!(took_over(&a));
        assert_eq!(e.predecessor(), None);
        // After a release and a step-down, a takeover by silence forgets it.
        let mut e = node(200, 12);
        e.p.preempt = false;
        e.start(t0);
        e.receive(&advert(Kind::Advert, 150, 10), t0);
        assert!(took_over(
            &e.receive(&advert(Kind::Release, 150, 10), t0 + 50 * MS)
        ));
        assert!(e.predecessor().is_some());
        e.receive(&advert(Kind::Advert, 255, 11), t0 + 100 * MS);
        assert_eq!(e.state(), State::Standby);
        assert_eq!(e.predecessor(), None);
        let a = e.tick(t0 + 100 * MS + e.master_down_interval());
        assert!(took_over(&a));
        assert_eq!(e.predecessor(), None);
    }

    #[test]
    fn demote_hands_over_then_forwards_to_the_successor() {
        let t0 = Instant::now();
        let mut e = node(200, 10);
        e.start(t0);
        e.tick(t0 + Duration::from_secs(1));
        let a = e.demote(None, t0 + 2000 * MS);
        assert_eq!(a, vec![Action::Quiesce, Action::Send(Kind::Release)]);
        assert_eq!(
            e.state(),
            State::Active,
            "keeps serving until a successor is heard"
        );
        // Adverts continue as releases.
        assert_eq!(e.tick(t0 + 2100 * MS), vec![Action::Send(Kind::Release)]);
        // The successor's claim, then its second advert once it serves.
        assert!(e
            .receive(&advert(Kind::Advert, 100, 11), t0 + 2150 * MS)
            .is_empty());
        assert_eq!(
            e.state(),
            State::Active,
            "steers until the successor serves"
        );
        let a = e.receive(&advert(Kind::Advert, 100, 11), t0 + 2151 * MS);
        assert!(
            matches!(&a[0], Action::StepDown { forward_to: Some(m), .. } if *m == Mac([2, 0, 0, 0, 0, 11]))
        );
        // Pinned standby: never takes over, even alone.
        assert!(!took_over(&e.tick(t0 + Duration::from_secs(10))));
        e.resume(t0 + Duration::from_secs(10));
        assert!(took_over(&e.tick(t0 + Duration::from_secs(11))));
    }

    #[test]
    fn demote_without_successor_gives_up_after_a_while() {
        let t0 = Instant::now();
        let mut e = node(200, 10);
        e.start(t0);
        e.tick(t0 + Duration::from_secs(1));
        e.demote(None, t0 + 2000 * MS);
        let a = e.tick(t0 + 2400 * MS);
        assert!(
            matches!(
                &a[0],
                Action::StepDown {
                    forward_to: None,
                    ..
                }
            ),
            "{a:?}"
        );
    }

    #[test]
    fn promote_pins_active_against_higher_priority() {
        let t0 = Instant::now();
        let mut e = node(50, 10);
        e.start(t0);
        e.receive(&old(advert(Kind::Advert, 200, 12)), t0);
        assert!(took_over(&e.promote(t0 + 10 * MS)));
        assert_eq!(e.effective_priority(), 255);
        assert!(e
            .receive(&advert(Kind::Advert, 200, 12), t0 + 20 * MS)
            .contains(&Action::Reannounce));
        assert_eq!(e.state(), State::Active);
    }

    #[test]
    fn fault_gives_up_and_recovers_to_standby() {
        let t0 = Instant::now();
        let mut e = node(200, 10);
        e.start(t0);
        e.tick(t0 + Duration::from_secs(1));
        let a = e.set_healthy(false, health("failed"), t0 + 2000 * MS);
        assert_eq!(a[0], Action::Quiesce, "stops answering before it releases");
        assert_eq!(a[1], Action::Send(Kind::Release));
        assert!(matches!(a[2], Action::Fault { .. }));
        assert!(
            e.tick(t0 + Duration::from_secs(10)).is_empty(),
            "a faulty node never takes over"
        );
        let a = e.set_healthy(true, health("ok"), t0 + Duration::from_secs(10));
        assert!(matches!(a[0], Action::Recover { .. }));
        assert_eq!(e.state(), State::Standby);
        assert!(took_over(&e.tick(t0 + Duration::from_secs(11))));
    }

    #[test]
    fn forgets_an_active_it_no_longer_hears() {
        let t0 = Instant::now();
        let mut e = node(100, 11);
        e.p.preempt = false;
        e.start(t0);
        e.receive(&advert(Kind::Advert, 150, 10), t0);
        let a = e.tick(t0 + 301 * MS);
        assert!(a.contains(&Action::ForwardTo(None)), "{a:?}");
    }

    #[test]
    fn active_advertises_every_interval() {
        let t0 = Instant::now();
        let mut e = node(100, 10);
        e.start(t0);
        let t1 = t0 + e.master_down_interval();
        e.tick(t1);
        assert_eq!(e.next_deadline(), Some(t1 + 100 * MS));
        assert_eq!(e.tick(t1 + 100 * MS), vec![Action::Send(Kind::Advert)]);
        assert!(e.tick(t1 + 150 * MS).is_empty());
    }
    /// The active side of a claim: stop answering, then release; the claimant's
    /// advert completes the handover.
    #[test]
    fn a_claim_makes_the_active_stop_answering_then_release() {
        let t0 = Instant::now();
        let mut a = node(150, 10);
        a.start(t0);
        a.tick(t0 + Duration::from_secs(1));
        assert_eq!(a.state(), State::Active);
        // A worse claim is ignored; so is one while we are pinned active.
        assert!(a
            .receive(&advert(Kind::Claim, 100, 12), t0 + 1001 * MS)
            .is_empty());
        let out = a.receive(&advert(Kind::Claim, 200, 12), t0 + 1002 * MS);
        assert_eq!(out, vec![Action::Quiesce, Action::Send(Kind::Release)]);
        assert!(a.handing_over());
        assert!(a
            .receive(&advert(Kind::Advert, 200, 12), t0 + 1003 * MS)
            .is_empty());
        let out = a.receive(&advert(Kind::Advert, 200, 12), t0 + 1003 * MS);
        assert!(
            matches!(&out[0], Action::StepDown { forward_to: Some(m), reason: Reason::HandedOver { .. } } if *m == Mac([2, 0, 0, 0, 0, 12])),
            "{out:?}"
        );
        let mut p = node(150, 10);
        p.start(t0);
        p.tick(t0 + Duration::from_secs(1));
        p.promote(t0 + 1001 * MS);
        assert!(p
            .receive(&advert(Kind::Claim, 254, 12), t0 + 1002 * MS)
            .is_empty());
    }

    /// An active that hands over (a claim) or yields (a better active) and stays a
    /// healthy standby says so at once, right after it stepped down: its release
    /// made every peer count it gone. One shutting down does not.
    #[test]
    fn a_stepped_down_active_announces_its_presence_at_once_unless_it_leaves() {
        let t0 = Instant::now();
        let active = |t: Instant| {
            let mut a = node(150, 10);
            a.start(t);
            a.tick(t + Duration::from_secs(1));
            assert_eq!(a.state(), State::Active);
            a
        };
        let t1 = t0 + 1001 * MS;
        // Handed over to a claimant: its claim, its first and second adverts.
        let mut a = active(t0);
        a.receive(&advert(Kind::Claim, 200, 12), t1);
        a.receive(&advert(Kind::Advert, 200, 12), t1 + MS);
        let out = a.receive(&advert(Kind::Advert, 200, 12), t1 + 2 * MS);
        assert!(matches!(out[0], Action::StepDown { .. }), "{out:?}");
        assert_eq!(out.last(), Some(&Action::Send(Kind::Standby)), "{out:?}");
        assert_eq!(a.state(), State::Standby);
        // Yielded to a better active.
        let mut a = active(t0);
        let out = a.receive(&advert(Kind::Advert, 200, 12), t1);
        assert!(matches!(out[0], Action::StepDown { .. }), "{out:?}");
        assert_eq!(out.last(), Some(&Action::Send(Kind::Standby)), "{out:?}");
        // Shutting down: the release, and nothing after the step-down.
        let mut a = active(t0);
        a.receive(&advert(Kind::Standby, 100, 12), t1);
        assert_eq!(
            a.shutdown(t1 + MS),
            vec![Action::Quiesce, Action::Send(Kind::Release)]
        );
        a.receive(&advert(Kind::Advert, 100, 12), t1 + 2 * MS);
        let out = a.receive(&advert(Kind::Advert, 100, 12), t1 + 3 * MS);
        assert!(matches!(out[0], Action::StepDown { .. }), "{out:?}");
        assert!(!out.contains(&Action::Send(Kind::Standby)), "{out:?}");
    }

    /// A claimant that never takes the VIPs after our release: we serve again.
    #[test]
    fn a_claim_that_is_not_followed_by_a_takeover_is_undone() {
        let t0 = Instant::now();
        let mut a = node(150, 10);
        a.start(t0);
        a.tick(t0 + Duration::from_secs(1));
        a.receive(&advert(Kind::Claim, 200, 12), t0 + 1000 * MS);
        let out = a.tick(t0 + 1400 * MS);
        match took_over_reason(&out) {
            Some(Reason::ClaimUnanswered { by }) => assert_eq!(by.to_string(), "10.0.0.12"),
            other => panic!("{other:?}"),
        }
    }

    /// A woken node whose lease ran out is no longer the owner: it listens again.
    #[test]
    fn a_lost_lease_sends_the_node_back_to_listening() {
        let t0 = Instant::now();
        let mut e = node(200, 10);
        e.start(t0);
        e.tick(t0 + Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(2);
        let why = Reason::LeaseExpired {
            stalled: 600 * MS,
            late: 300 * MS,
        };
        let out = e.lost(t1, why);
        assert!(
            matches!(
                &out[0],
                Action::StepDown {
                    forward_to: None,
                    ..
                }
            ),
            "{out:?}"
        );
        assert!(out.contains(&Action::Send(Kind::Hello)));
        assert_eq!(e.state(), State::Standby);
        assert!(e.listening());
        assert_eq!(e.counters.leases_lost, 1);
        // The node that took over meanwhile is heard: we are worse-placed only by
        // time, not priority, so we claim the VIPs back (preemption), never take them.
        let out = e.receive(&advert(Kind::Advert, 180, 11), t1 + 5 * MS);
        assert!(!took_over(&out), "{out:?}");
        assert!(out.contains(&Action::Send(Kind::Claim)), "{out:?}");
        // Not active: nothing to lose.
        assert!(e.lost(t1 + 6 * MS, Reason::LinkDown).is_empty());
    }

    /// While the active's data plane answers our probes, advertisement silence is not
    /// a failure (its adverts are lost, say in a flood): no takeover.
    #[test]
    fn an_answering_echo_keeps_the_active_alive_through_advert_silence() {
        let t0 = Instant::now();
        let mut e = node(100, 11);
        e.p.echo_window = 12 * MS;
        e.p.preempt = false;
        e.start(t0);
        e.receive(&advert(Kind::Advert, 150, 10), t0);
        let peer = "10.0.0.10".parse().unwrap();
        let mut t = t0;
        while t < t0 + Duration::from_secs(2) {
            e.echo_answered(peer, t);
            assert!(!took_over(&e.tick(t)), "took over at {:?}", t - t0);
            t += 2 * MS;
        }
        // The echo stops too: now silence counts.
        assert!(took_over(&e.tick(t + Duration::from_secs(1))));
    }

    /// A restarted agent that adopted a serving data plane takes it back only after
    /// listening; if another active is heard, it gives the adopted entries up.
    #[test]
    fn an_adopted_data_plane_is_resumed_only_after_listening() {
        let t0 = Instant::now();
        let mut e = node(200, 10);
        assert_eq!(e.start_adopted(t0), vec![Action::Send(Kind::Hello)]);
        assert!(!took_over(&e.tick(t0 + 299 * MS)));
        assert_eq!(
            took_over_reason(&e.tick(t0 + 300 * MS)).map(|r| r.kind()),
            Some("adopted")
        );
        let mut e = node(200, 10);
        e.start_adopted(t0);
        let out = e.receive(&advert(Kind::Advert, 180, 11), t0 + 50 * MS);
        assert!(
            matches!(
                &out[0],
                Action::StepDown {
                    forward_to: Some(_),
                    ..
                }
            ),
            "{out:?}"
        );
    }

    /// A flood of hellos costs the active at most one extra advert an interval.
    #[test]
    fn hellos_are_answered_at_most_once_an_interval() {
        let t0 = Instant::now();
        let mut e = node(200, 10);
        e.start(t0);
        e.tick(t0 + Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(2);
        let mut answers = 0;
        for i in 0..1000u32 {
            let at = t1 + Duration::from_micros(i as u64 * 90);
            answers += e
                .receive(&advert(Kind::Hello, 100, 11 + (i % 50) as u8), at)
                .len();
        }
        assert_eq!(answers, 1, "90 ms of hellos");
    }

    /// Every healthy standby says so every interval; a demoted one too (priority 0:
    /// a balanced group's member), a faulty one not.
    #[test]
    fn standbys_announce_their_presence_every_interval() {
        let t0 = Instant::now();
        let mut e = node(150, 11);
        e.start(t0);
        e.receive(&advert(Kind::Advert, 200, 10), t0);
        let sent = |e: &mut Election, from: Instant| {
            (1..=10)
                .flat_map(|i| e.tick(from + i * 100 * MS))
                .filter(|a| *a == Action::Send(Kind::Standby))
                .count()
        };
        let mut n = 0;
        for i in 1..=10u32 {
            let t = t0 + i * 100 * MS;
            n += e
                .receive(&advert(Kind::Advert, 200, 10), t - MS)
                .into_iter()
                .chain(e.tick(t))
                .filter(|a| *a == Action::Send(Kind::Standby))
                .count();
        }
        assert_eq!(n, 10);
        e.set_healthy(false, health("failed"), t0 + 1100 * MS);
        assert_eq!(sent(&mut e, t0 + 1100 * MS), 0);
    }

    /// Several standbys at the defaults, the active's data plane stops answering and
    /// their probes notice within an echo interval of each other: exactly one takes
    /// over — the best — and it does without a skew.
    #[test]
    fn of_several_standbys_only_the_best_takes_over_and_without_a_skew() {
        let t0 = Instant::now();
        for n in [3usize, 5] {
            for phase_us in [0u64, 700, 1900] {
                let prios = [180u8, 160, 140, 120];
                let mut nodes: Vec<Election> = prios[..n - 1]
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let mut e = node(*p, 11 + i as u8);
                        e.p.echo_skew = Params::echo_skew_for(*p, 2 * MS, n - 1);
                        e.start(t0);
                        e
                    })
                    .collect();
                // The active (200, .10) and a settled cluster: everyone heard everyone.
                for k in 0..20u32 {
                    let t = t0 + k * 100 * MS;
                    for (i, e) in nodes.iter_mut().enumerate() {
                        e.receive(&advert(Kind::Advert, 200, 10), t);
                        for (j, p) in prios[..n - 1].iter().enumerate() {
                            if j != i {
                                e.receive(&presence(*p, 11 + j as u8), t);
                            }
                        }
                        e.tick(t);
                    }
                }
                let lost_at = t0 + 2000 * MS;
                let mut queue: Vec<(Instant, usize, Advert)> = Vec::new();
                let mut claims = vec![0usize; nodes.len()];
                let mut first: Option<Duration> = None;
                let mut t = lost_at;
                while t < lost_at + 40 * MS {
                    for (i, e) in nodes.iter_mut().enumerate() {
                        // Each notices at its own phase within an echo interval.
                        let notice = lost_at + Duration::from_micros(phase_us * i as u64 % 2000);
                        let mut acts =
                            if t == notice.max(t) && t < notice + Duration::from_micros(100) {
                                e.echo_lost("10.0.0.10".parse().unwrap(), 6, 12 * MS, t)
                            } else {
                                e.tick(t)
                            };
                        let due: Vec<Advert> = queue
                            .iter()
                            .filter(|(w, to, _)| *w <= t && *to == i)
                            .map(|(_, _, a)| a.clone())
                            .collect();
                        queue.retain(|(w, to, _)| !(*w <= t && *to == i));
                        for ad in due {
                            acts.extend(e.receive(&ad, t));
                        }
                        for a in &acts {
                            if matches!(a, Action::TakeOver { .. }) {
                                claims[i] += 1;
                                first.get_or_insert(t - lost_at);
                            }
                            if *a == Action::Send(Kind::Advert) {
                                for j in 0..n - 1 {
                                    if j != i {
                                        let ad = advert(Kind::Advert, prios[i], 11 + i as u8);
                                        queue.push((t + Duration::from_micros(50), j, ad));
                                    }
                                }
                            }
                        }
                    }
                    t += Duration::from_micros(100);
                }
                assert_eq!(claims[0], 1, "{n} nodes, phase {phase_us}: {claims:?}");
                assert_eq!(
                    claims.iter().sum::<usize>(),
                    1,
                    "{n} nodes, phase {phase_us}: {claims:?}"
                );
                assert!(
                    first.unwrap() < 2 * MS,
                    "{n} nodes: the best waited {first:?}"
                );
            }
        }
    }

    /// A few elections on one segment, a datagram taking 50 µs, time in 100 µs steps:
    /// what the agent's loop does, without the data plane.
    struct Sim {
        t0: Instant,
        t: Instant,
        nodes: Vec<Election>,
        prios: Vec<u8>,
        up: Vec<bool>,
        queue: Vec<(Instant, usize, Advert)>,
        /// Steps at which two nodes served (active, not handing over) at once.
        overlaps: usize,
        takeovers: Vec<usize>,
    }

    impl Sim {
        fn new(prios: &[u8]) -> Self {
            let t0 = Instant::now();
            let mut nodes: Vec<Election> = prios
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut e = node(*p, 10 + i as u8);
                    e.p.echo_skew = Params::echo_skew_for(*p, 2 * MS, prios.len() - 1);
                    e.p.echo_window = 12 * MS;
                    e
                })
                .collect();
            let mut sim = Sim {
                t0,
                t: t0,
                nodes: Vec::new(),
                prios: prios.to_vec(),
                up: vec![true; prios.len()],
                queue: Vec::new(),
                overlaps: 0,
                takeovers: vec![0; prios.len()],
            };
            let starts: Vec<Vec<Action>> = nodes.iter_mut().map(|e| e.start(t0)).collect();
            sim.nodes = nodes;
            for (i, acts) in starts.into_iter().enumerate() {
                sim.deliver(i, &acts);
            }
            sim
        }

        fn deliver(&mut self, from: usize, acts: &[Action]) {
            for a in acts {
                if matches!(a, Action::TakeOver { .. }) {
                    self.takeovers[from] += 1;
                }
                let Action::Send(kind) = a else { continue };
                if !self.up[from] {
                    continue;
                }
                let e = &self.nodes[from];
                let mut ad = advert(
                    *kind,
                    if *kind == Kind::Release {
                        0
                    } else {
                        e.effective_priority()
                    },
                    10 + from as u8,
                );
                ad.interval_ms = 100;
                for to in 0..self.nodes.len() {
                    if to != from && self.up[to] {
                        self.queue
                            .push((self.t + Duration::from_micros(50), to, ad.clone()));
                    }
                }
            }
        }

        /// Runs until `until` (from the start), with `each` called every step.
        fn run(&mut self, until: Duration, mut each: impl FnMut(&mut Sim)) {
            while self.t < self.t0 + until {
                self.t += Duration::from_micros(100);
                let t = self.t;
                let due: Vec<(usize, Advert)> = self
                    .queue
                    .iter()
                    .filter(|(w, _, _)| *w <= t)
                    .map(|(_, to, a)| (*to, a.clone()))
                    .collect();
                self.queue.retain(|(w, _, _)| *w > t);
                for (to, ad) in due {
                    let acts = self.nodes[to].receive(&ad, t);
                    self.deliver(to, &acts);
                }
                for i in 0..self.nodes.len() {
                    let acts = self.nodes[i].tick(t);
                    self.deliver(i, &acts);
                }
                each(self);
                let serving = self
                    .nodes
                    .iter()
                    .zip(&self.up)
                    .filter(|(e, up)| **up && e.state() == State::Active && !e.handing_over())
                    .count();
                if serving > 1 {
                    self.overlaps += 1;
                }
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }
    }

    /// What the chaos suite found on the wire with three nodes: the active's link goes
    /// down (the best standby takes over by the echo), comes back (the old active claims
    /// the VIPs back), then is demoted (a release). At no step may two nodes serve,
    /// and each handover goes to exactly one node: the claimant, or the best standby.
    #[test]
    fn three_nodes_through_a_link_flap_a_claim_and_a_demote_never_serve_twice() {
        let mut sim = Sim::new(&[200, 180, 160]);
        sim.run(Duration::from_secs(2), |_| {});
        assert_eq!(sim.nodes[0].state(), State::Active);
        assert_eq!(sim.takeovers, vec![1, 0, 0]);
        // a's link goes down at 2 s: it stops speaking; the standbys' probes fail.
        let down = sim.at(2000);
        sim.up[0] = false;
        let acts = sim.nodes[0].link(false, down);
        sim.deliver(0, &acts);
        let mut echoed = false;
        sim.run(Duration::from_millis(2400), |s| {
            if !echoed && s.t >= s.at(2012) {
                echoed = true;
                for i in 1..3 {
                    let t = s.t;
                    let acts = s.nodes[i].echo_lost("10.0.0.10".parse().unwrap(), 6, 12 * MS, t);
                    s.deliver(i, &acts);
                }
            }
        });
        assert_eq!(sim.takeovers, vec![1, 1, 0], "b, the best standby, alone");
        // The link is back: a listens, hears b, claims the VIPs back.
        sim.up[0] = true;
        let t = sim.t;
        let acts = sim.nodes[0].link(true, t);
        sim.deliver(0, &acts);
        sim.run(Duration::from_millis(3500), |_| {});
        assert_eq!(sim.nodes[0].state(), State::Active);
        assert_eq!(sim.takeovers, vec![2, 1, 0], "the claimant alone");
        // a is demoted: b, the best standby, takes over, not d.
        let t = sim.t;
        let acts = sim.nodes[0].demote(None, t);
        sim.deliver(0, &acts);
        sim.run(Duration::from_millis(4500), |_| {});
        assert_eq!(sim.takeovers, vec![2, 2, 0], "the best standby alone");
        assert_eq!(sim.overlaps, 0, "two nodes served at once");
        let _ = &sim.prios;
    }

    /// Found by the chaos suite: on a release, the best standby's claim reached the
    /// next one before the release did; the next one took the claimant for a split
    /// brain's loser, forgot it as a standby, and took over too.
    #[test]
    fn a_claim_heard_before_the_release_is_followed_not_raced() {
        let t0 = Instant::now();
        let mut d = node(160, 12);
        d.start(t0);
        d.receive(&advert(Kind::Advert, 200, 10), t0);
        d.receive(&presence(180, 11), t0 + 10 * MS);
        let t1 = t0 + 50 * MS;
        // b's claim first (it heard a's release first), then a's release.
        d.receive(&advert(Kind::Advert, 180, 11), t1);
        let out = d.receive(&advert(Kind::Release, 0, 10), t1 + MS / 10);
        assert!(!took_over(&out), "{out:?}");
        assert!(!took_over(&d.tick(t1 + 20 * MS)));
        assert_eq!(d.active().map(|a| a.priority), Some(180));
    }

    /// Found by the chaos suite: on SIGTERM the node handed over, then, while it
    /// drained, preempted its successor and left with the VIPs.
    #[test]
    fn a_node_shutting_down_never_takes_the_vips_back() {
        let t0 = Instant::now();
        let mut a = node(200, 10);
        a.start(t0);
        a.tick(t0 + Duration::from_secs(1));
        let out = a.shutdown(t0 + 2000 * MS);
        assert_eq!(out, vec![Action::Quiesce, Action::Send(Kind::Release)]);
        a.receive(&advert(Kind::Advert, 180, 11), t0 + 2001 * MS);
        a.receive(&advert(Kind::Advert, 180, 11), t0 + 2002 * MS);
        assert_eq!(a.state(), State::Standby);
        let mut t = t0 + 2002 * MS;
        while t < t0 + 4000 * MS {
            let mut out = a.receive(&advert(Kind::Advert, 180, 11), t);
            out.extend(a.tick(t));
            assert!(!took_over(&out), "{out:?}");
            assert!(!out.contains(&Action::Send(Kind::Claim)), "{out:?}");
            t += 50 * MS;
        }
    }

    /// Found by the chaos suite: a claimant's claim reached the active, whose release
    /// reached a third node before the claim did; that node, the best standby in its
    /// own view, took over beside the claimant. The release now names the claimant.
    #[test]
    fn a_release_names_who_should_take_over() {
        let t0 = Instant::now();
        let mut b = node(180, 11);
        b.start(t0);
        b.tick(t0 + Duration::from_secs(1));
        b.receive(&presence(160, 12), t0 + 1001 * MS);
        assert_eq!(b.priority_for(Kind::Release, t0 + 1002 * MS), 160);
        b.receive(&advert(Kind::Claim, 200, 10), t0 + 1003 * MS);
        assert_eq!(b.priority_for(Kind::Release, t0 + 1003 * MS), 200);
        assert_eq!(b.priority_for(Kind::Advert, t0 + 1003 * MS), 180);
        // d (160), which never heard a's claim, hears b's release naming 200.
        let mut d = node(160, 12);
        d.start(t0);
        d.receive(&advert(Kind::Advert, 180, 11), t0 + 1001 * MS);
        let out = d.receive(&advert(Kind::Release, 200, 11), t0 + 1004 * MS);
        assert!(!took_over(&out), "{out:?}");
        // The claimant's advert comes within the skew.
        d.receive(&advert(Kind::Advert, 200, 10), t0 + 1005 * MS);
        assert!(!took_over(&d.tick(t0 + 1100 * MS)));
    }
}
