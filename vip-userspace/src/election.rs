//! The built-in election of one group: a VRRP-like state machine over unicast
//! advertisements, with no I/O and no clock of its own (time comes in as an argument),
//! so every rule is unit-tested.
//!
//! * The active node advertises every interval. A standby takes over when it has heard
//!   nothing for 3 intervals plus a skew that is shorter for higher priorities, so the
//!   best standby wins without a vote storm; on a release (planned handover) it waits
//!   for the skew only. The skew is a quarter of VRRP's (see `skew`).
//! * A standby with a higher priority than the active preempts it (after
//!   `preempt_delay`), unless `preempt = false`.
//! * Two actives (a healed partition): the lower (priority, address) yields at once,
//!   the winner re-announces.
//! * A planned handover (demote, SIGTERM, being preempted) keeps serving until the new
//!   active is heard, then hands its stale-cache traffic to the new active's MAC.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    advert::{Advert, Kind},
    mac::Mac,
    reason::Reason,
};

/// A group's state, VRRP-style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Init,
    Standby,
    Active,
    Fault,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Init => "init",
            State::Standby => "standby",
            State::Active => "active",
            State::Fault => "fault",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Params {
    pub priority: u8,
    pub interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// Our primary address: identity and tie-breaker.
    pub me: IpAddr,
    /// After the active's data plane stops answering probes, how long to wait before
    /// taking over: zero with a single peer, else shorter for higher priorities (see
    /// `Params::echo_skew_for`), so that of several standbys the best goes first.
    pub echo_skew: Duration,
}

impl Params {
    /// The echo's priority skew: an echo interval per 24 priority points below 256
    /// (priority 100: 6.5 intervals, 150: 4.4, 200: 2.3). Two standbys 50 points
    /// apart are then two intervals apart, more than the interval by which their
    /// probes' phases (hence their detections) can differ.
    pub fn echo_skew_for(priority: u8, echo_interval: Duration, peers: usize) -> Duration {
        if peers <= 1 {
            return Duration::ZERO;
        }
        echo_interval * (256 - priority.max(1) as u32) / 24
    }
}

/// An operator's override of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    None,
    /// `vip promote`: active whatever the priorities (acts as priority 255).
    Active,
    /// `vip demote`: never takes over (acts as priority 0).
    Standby,
}

/// What the election wants the agent to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Take the VIPs (entries, addresses, announcements).
    TakeOver { reason: Reason },
    /// Give them up; hand stale-cache traffic to `forward_to` if known.
    StepDown {
        forward_to: Option<Mac>,
        reason: Reason,
    },
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
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub split_brains: u64,
}

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
    /// Standby: when we preempt a lower-priority active.
    preempt_at: Option<Instant>,
    /// Active: when the next advertisement is due.
    next_advert_at: Option<Instant>,
    /// Active, handing over: until when we wait for a new active before giving up.
    handover_until: Option<Instant>,
    active: Option<Peer>,
    /// Active after a planned handover (the active released the VIPs, or we
    /// preempted a live active): its MAC. It steps down towards us and, during its
    /// drain, still serves the connections its stack had accepted.
    predecessor: Option<Mac>,
    forwarding: Option<Mac>,
    /// Standby: the active asked us to hold (it is restarting) until then; its
    /// probes may go unanswered meanwhile, which proves nothing.
    hold_until: Option<Instant>,
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
            preempt_at: None,
            next_advert_at: None,
            handover_until: None,
            active: None,
            predecessor: None,
            forwarding: None,
            hold_until: None,
            counters: Counters::default(),
        }
    }

    /// Arms the takeover timer for silence starting now.
    fn arm_silence(&mut self, now: Instant) {
        self.master_down_at = Some(now + self.master_down_interval());
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

    /// The priority we advertise and compare with.
    pub fn effective_priority(&self) -> u8 {
        match self.pin {
            Pin::None => self.p.priority,
            Pin::Active => 255,
            Pin::Standby => 0,
        }
    }

    /// The priority-based part of the takeover delay: a quarter of VRRP's
    /// `(256 - priority) / 256` interval. It only has to order standbys (a LAN delivers
    /// the winner's advert in microseconds; a rare tie is a split brain that heals
    /// at the next advert, and the loser forwards meanwhile), and every bit of it is
    /// outage when a single standby takes over.
    fn skew(&self) -> Duration {
        let prio = self.effective_priority().max(1) as u32;
        self.p.interval * (256 - prio) / 1024
    }

    /// How long a standby waits for an advertisement before taking over.
    pub fn master_down_interval(&self) -> Duration {
        self.p.interval * 3 + self.skew()
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

    /// Resumes as active without an election: a restarted agent that found the data
    /// plane serving (its predecessor was active and asked peers to hold).
    pub fn start_active(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Active;
        self.master_down_at = None;
        self.next_advert_at = Some(now + self.p.interval);
        vec![self.send(Kind::Advert)]
    }

    /// Leaves `init`: standby, listening for the active for a full detection time
    /// before it may claim the VIPs (VRRP's backup state). Meanwhile it says hello
    /// every interval, so that of two nodes started at once only the better one
    /// claims, whichever process happened to be ready first.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Standby;
        self.arm_silence(now);
        self.listening = true;
        self.next_advert_at = Some(now + self.p.interval);
        vec![self.send(Kind::Hello)]
    }

    /// Advances time: adverts due, timers expired.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::Active => {
                if let Some(until) = self.handover_until {
                    if now >= until {
                        // Nobody took over: step down anyway (the operator asked us to).
                        self.handover_until = None;
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
                    // Stop forwarding to an active we no longer hear.
                    if now.saturating_duration_since(a.last_seen) > self.p.interval * 3 {
                        self.active = None;
                        out.extend(self.forward(None));
                    }
                }
                if !self.healthy || self.pin == Pin::Standby {
                    self.master_down_at = None;
                    self.preempt_at = None;
                    self.listening = false;
                    self.next_advert_at = None;
                    return out;
                }
                if self.listening && self.next_advert_at.is_some_and(|t| now >= t) {
                    out.push(self.send(Kind::Hello));
                    self.next_advert_at = Some(now + self.p.interval);
                }
                if self.preempt_at.is_some_and(|t| now >= t) {
                    let why = match &self.active {
                        Some(a) => Reason::Preempt {
                            active: a.addr,
                            priority: a.priority,
                        },
                        None => Reason::Promoted,
                    };
                    // The active we preempt is alive: it yields and drains.
                    let from = self.active.as_ref().map(|a| a.mac);
                    out.extend(self.take_over(now, why));
                    self.predecessor = from;
                } else if self.master_down_at.is_some_and(|t| now >= t) {
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
        match ad.kind {
            // Membership of a balanced group: the agent's business, not the election's.
            Kind::Member => {}
            Kind::Hello => {
                let theirs = (ad.priority, ad.addr);
                let ours = (self.effective_priority(), self.p.me);
                match self.state {
                    // A node is starting: tell it at once who is active.
                    State::Active if !self.handing_over() => out.push(self.send(Kind::Advert)),
                    // Two starting nodes: the worse one waits for the better one.
                    State::Standby | State::Init
                        if self.listening && ad.priority > 0 && theirs > ours =>
                    {
                        let deadline = now + self.master_down_interval();
                        if self.master_down_at.is_some_and(|t| t < deadline) {
                            self.arm_silence(now);
                        }
                    }
                    _ => {}
                }
            }
            Kind::Advert => {
                if self.listening {
                    // An active exists: the start-up phase (and its hellos) is over.
                    self.listening = false;
                    self.next_advert_at = None;
                }
                let theirs = (ad.priority, ad.addr);
                let ours = (self.effective_priority(), self.p.me);
                if self.worse_than_known_active(theirs, now) {
                    // Two actives (a split brain settling, say after a failure several
                    // standbys detected at once): the better one wins it, so a standby
                    // neither preempts the worse one, which would only move the clients'
                    // ARP caches once more, nor forwards to it. An active exists
                    // all the same: no takeover for silence.
                    self.arm_silence(now);
                    return out;
                }
                self.active = Some(Peer {
                    addr: ad.addr,
                    mac: ad.mac,
                    priority: ad.priority,
                    last_seen: now,
                });
                match self.state {
                    State::Active if self.handing_over() => {
                        self.handover_until = None;
                        let why = Reason::HandedOver {
                            to: ad.addr,
                            priority: ad.priority,
                        };
                        out.extend(self.step_down(now, Some(ad.mac), why));
                    }
                    State::Active if theirs > ours => {
                        let why = if ad.priority > self.effective_priority() {
                            Reason::Yield {
                                to: ad.addr,
                                priority: ad.priority,
                            }
                        } else {
                            Reason::SplitBrain { with: ad.addr }
                        };
                        if ad.priority <= self.effective_priority() {
                            self.counters.split_brains += 1;
                        }
                        out.extend(self.step_down(now, Some(ad.mac), why));
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
                            && self.effective_priority() > ad.priority;
                        if preempts || self.pin == Pin::Active {
                            if self.preempt_at.is_none() {
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
                            self.arm_silence(now);
                            self.next_advert_at = None;
                        }
                        out.extend(self.forward(Some(ad.mac)));
                        out.extend(self.tick(now));
                    }
                    State::Fault => {}
                }
            }
            Kind::Release => {
                let from_active = self.active.as_ref().is_none_or(|a| a.addr == ad.addr);
                if from_active
                    && matches!(self.state, State::Standby | State::Init)
                    && self.healthy
                    && self.pin != Pin::Standby
                {
                    // Planned handover: the best standby goes first.
                    self.master_down_at = Some(now + self.skew());
                    self.down_cause = DownCause::Released {
                        by: ad.addr,
                        mac: ad.mac,
                    };
                }
            }
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

    /// The prober's word: the active's data plane stopped answering (`crate::echo`).
    /// Acts like advertisement silence, only sooner: the best standby takes over
    /// after its echo skew, unless an advert from an active comes first.
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
            || !matches!(self.state, State::Standby | State::Init)
            || !self.healthy
            || self.pin == Pin::Standby
        {
            return Vec::new();
        }
        let at = now + self.p.echo_skew;
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
                out.push(self.send(Kind::Release));
            }
            self.state = State::Fault;
            self.master_down_at = None;
            self.preempt_at = None;
            self.next_advert_at = None;
            self.handover_until = None;
            self.listening = false;
            out.push(Action::Fault { reason });
        } else if self.state == State::Fault {
            self.state = State::Standby;
            self.arm_silence(now);
            out.push(Action::Recover { reason });
            out.extend(self.forward(self.active.as_ref().map(|a| a.mac)));
        }
        out
    }

    /// `vip promote`: active now, and stays so until `resume` or a restart.
    pub fn promote(&mut self, now: Instant) -> Vec<Action> {
        self.pin = Pin::Active;
        self.handover_until = None;
        if !self.healthy {
            return Vec::new();
        }
        if self.state == State::Active {
            return vec![self.send(Kind::Advert), Action::Reannounce];
        }
        // An active we hear yields to us (priority 255) and drains.
        let from = self.active.as_ref().map(|a| a.mac);
        let out = self.take_over(now, Reason::Promoted);
        self.predecessor = from;
        out
    }

    /// `vip demote`: hand over (keep serving until a successor is heard, then forward
    /// to it); stays standby until `resume` or a restart. With `forward_to`, step down
    /// at once towards that MAC.
    pub fn demote(&mut self, forward_to: Option<Mac>, now: Instant) -> Vec<Action> {
        self.pin = Pin::Standby;
        self.master_down_at = None;
        self.preempt_at = None;
        match (self.state, forward_to) {
            (State::Active, Some(mac)) => {
                let mut out = vec![self.send(Kind::Release)];
                out.extend(self.step_down(now, Some(mac), Reason::Demoted));
                out
            }
            (State::Active, None) => self.hand_over(now),
            _ => Vec::new(),
        }
    }

    /// Back to the election after promote/demote.
    pub fn resume(&mut self, now: Instant) -> Vec<Action> {
        self.pin = Pin::None;
        if matches!(self.state, State::Standby | State::Init) && self.healthy {
            self.arm_silence(now);
        }
        Vec::new()
    }

    /// Planned handover for shutdown: like `demote` without pinning.
    pub fn shutdown(&mut self, now: Instant) -> Vec<Action> {
        if self.state == State::Active {
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

    fn hand_over(&mut self, now: Instant) -> Vec<Action> {
        // Successors take over after their skew (< 1 interval); allow 3 more intervals.
        self.handover_until = Some(now + self.p.interval * 4);
        self.next_advert_at = Some(now + self.p.interval);
        vec![self.send(Kind::Release)]
    }

    fn take_over(&mut self, now: Instant, reason: Reason) -> Vec<Action> {
        self.state = State::Active;
        self.listening = false;
        self.master_down_at = None;
        self.preempt_at = None;
        self.handover_until = None;
        self.active = None;
        self.predecessor = None;
        self.forwarding = None;
        self.next_advert_at = Some(now + self.p.interval);
        // The advert first: the other standbys, whose own takeovers wait out their
        // skew, hear the claim before the data plane work (entries, the director's
        // table, the announcement) delays it by milliseconds.
        vec![self.send(Kind::Advert), Action::TakeOver { reason }]
    }

    fn step_down(&mut self, now: Instant, forward_to: Option<Mac>, reason: Reason) -> Vec<Action> {
        self.state = State::Standby;
        self.next_advert_at = None;
        self.preempt_at = None;
        self.master_down_at = (self.pin != Pin::Standby).then(|| now + self.master_down_interval());
        self.down_cause = DownCause::Silent { since: Some(now) };
        self.forwarding = forward_to;
        vec![Action::StepDown { forward_to, reason }]
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
        }
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
        e.receive(&advert(Kind::Release, 0, 20), t0 + 50 * MS);
        let a = e.tick(t0 + 50 * MS + e.skew());
        let why = took_over_reason(&a).expect("takes over after its skew");
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
        let mut e = node(150, 10);
        e.start(t0);
        let md = e.master_down_interval();
        assert_eq!(md, 300 * MS + 100 * MS * 106 / 1024);
        assert!(!took_over(&e.tick(t0 + md - MS)));
        let a = e.tick(t0 + md);
        assert!(took_over(&a), "{a:?}");
        assert!(a.contains(&Action::Send(Kind::Advert)));
        assert_eq!(e.state(), State::Active);
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
        let mut e = node(200, 12);
        e.start(t0);
        assert!(took_over(&e.receive(&advert(Kind::Advert, 150, 10), t0)));

        let mut e = node(200, 12);
        e.p.preempt = false;
        e.start(t0);
        assert!(!took_over(&e.receive(&advert(Kind::Advert, 150, 10), t0)));
        assert!(!took_over(&e.tick(t0 + 250 * MS)));

        let mut e = node(200, 12);
        e.p.preempt_delay = 500 * MS;
        e.start(t0);
        assert!(!took_over(&e.receive(&advert(Kind::Advert, 150, 10), t0)));
        assert!(!took_over(
            &e.receive(&advert(Kind::Advert, 150, 10), t0 + 100 * MS)
        ));
        assert!(took_over(&e.tick(t0 + 500 * MS)));
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
        // b gone for more than two intervals: d is the active, and we preempt it.
        let a = e.receive(&advert(Kind::Advert, 100, 14), t0 + 350 * MS);
        assert!(took_over(&a) || took_over(&e.tick(t0 + 350 * MS)), "{a:?}");
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
        assert!(claim.is_some() && claim < take, "{a:?}");
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
        let mut e = node(200, 12);
        e.p.preempt = false;
        e.start(t0);
        e.receive(&advert(Kind::Advert, 150, 10), t0);
        e.receive(&advert(Kind::Release, 150, 10), t0 + 50 * MS);
        assert!(!took_over(&e.tick(t0 + 50 * MS + e.skew() - MS)));
        assert!(took_over(&e.tick(t0 + 50 * MS + e.skew())));
        // The node that released is known (it drains its connections).
        assert_eq!(e.predecessor(), Some(Mac([2, 0, 0, 0, 0, 10])));
    }

    #[test]
    fn a_preemption_or_a_promotion_over_a_live_active_has_a_predecessor() {
        let t0 = Instant::now();
        let mut e = node(200, 12);
        e.start(t0);
        let a = e.receive(&advert(Kind::Advert, 150, 10), t0);
        assert!(took_over(&a), "{a:?}");
        assert_eq!(took_over_reason(&a).unwrap().kind(), "preempt");
        assert_eq!(e.predecessor(), Some(Mac([2, 0, 0, 0, 0, 10])));
        let mut e = node(100, 12);
        e.start(t0);
        e.receive(&advert(Kind::Advert, 150, 10), t0);
        assert!(took_over(&e.promote(t0 + 10 * MS)));
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
        e.receive(&advert(Kind::Release, 150, 10), t0 + 50 * MS);
        assert!(took_over(&e.tick(t0 + 50 * MS + e.skew())));
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
        assert_eq!(a, vec![Action::Send(Kind::Release)]);
        assert_eq!(
            e.state(),
            State::Active,
            "keeps serving until a successor is heard"
        );
        // Adverts continue as releases.
        assert_eq!(e.tick(t0 + 2100 * MS), vec![Action::Send(Kind::Release)]);
        let a = e.receive(&advert(Kind::Advert, 100, 11), t0 + 2150 * MS);
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
        e.receive(&advert(Kind::Advert, 200, 12), t0);
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
        assert_eq!(a[0], Action::Send(Kind::Release));
        assert!(matches!(a[1], Action::Fault { .. }));
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
}
