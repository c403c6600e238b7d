//! What this node holds of one group's VIPs, and the order in which that changes: the
//! one-owner rules on this side of the election. Like `election`, it does no I/O and
//! has no clock of its own: time comes in as arguments (an `Instant` for its timers,
//! CLOCK_BOOTTIME ns for the lease, see `vip_common::lease`), and every transition
//! returns the [`Effect`]s the agent carries out, in order.
//!
//! * **Taking the VIPs**: the lease, the director's table, the entries (the data plane
//!   answers from here on), the addresses on lo, the solicited-node groups, then the
//!   announcement; the first VIPs' entries and announcements go ahead of the rest's
//!   (a VIP is announced only once it is answered for, and a big group's first
//!   announcement does not wait for its last entry).
//! * **A planned handover** (a release: demote, preemption, SIGTERM): the group goes
//!   quiet first ([`Ownership::quiesce`], `QUIET` in the data plane). It stops answering
//!   ARP/NS and probes at that instant, while its entries still steer what arrives
//!   (locally, redirected, or over the director's table), on the lease they have. Only
//!   then does the election send its release, so the successor never answers while we
//!   still do, and no packet is lost meanwhile.
//! * **Giving them up**: the announcements stop, the group goes quiet (if it served),
//!   the entries change (forward or inert), a lease is granted again only for forward
//!   entries (which never answer for a VIP), inert ones lose theirs, and the addresses
//!   go (at the end of the drain after a handover; a resident group's stay, see
//!   [`Terms::resident`]).
//! * **The lease** runs only while the agent renews it, never past the moment a standby
//!   may take our last advertisement's silence for our death
//!   ([`Ownership::advertised`]), and only while it still runs ([`Lease::extend`]; the
//!   kernel checks again as it writes). A lease that ran out is *lost*
//!   ([`Ownership::check`]): the election must go back to listening, as a starting node
//!   does, and only a new takeover grants a new one.

use std::time::{Duration, Instant};

use crate::{mac::Mac, state::State};

/// A group's lease as this node holds it (`LEASES`, boot-time ns). A value: it can be
/// extended only while it still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    /// The deadline in force; 0: none (revoked, or never granted).
    deadline: u64,
    /// When it was last granted or extended (for "stalled for N ms").
    renewed: u64,
}

/// The lease had run out when it was to be extended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// The deadline that passed (0: there was none).
    pub deadline: u64,
    /// When it was last renewed before that.
    pub renewed: u64,
    /// When this was found.
    pub now: u64,
}

impl Expired {
    /// How long the agent did not renew the lease: the stall that lost it.
    pub fn stalled(&self) -> Duration {
        Duration::from_nanos(self.now.saturating_sub(self.renewed))
    }

    /// How long ago it ran out.
    pub fn late(&self) -> Duration {
        Duration::from_nanos(self.now.saturating_sub(self.deadline))
    }
}

impl Lease {
    /// A new lease until `deadline`, granted at `now`.
    pub fn granted(now: u64, deadline: u64) -> Self {
        Lease {
            deadline,
            renewed: now,
        }
    }

    /// The deadline, if one is held.
    pub fn deadline(&self) -> Option<u64> {
        (self.deadline != 0).then_some(self.deadline)
    }

    /// True while the lease runs at `now` (the data plane's rule: until the deadline,
    /// exclusive).
    pub fn runs(&self, now: u64) -> bool {
        self.deadline != 0 && now < self.deadline
    }

    /// The same lease extended to `deadline`, if it still runs at `now`; it never
    /// shortens. The kernel repeats the check as it writes (`vip_lease`).
    pub fn extend(&self, now: u64, deadline: u64) -> Result<Lease, Expired> {
        if !self.runs(now) {
            return Err(self.expired(now));
        }
        Ok(Lease {
            deadline: deadline.max(self.deadline),
            renewed: now,
        })
    }

    fn expired(&self, now: u64) -> Expired {
        Expired {
            deadline: self.deadline,
            renewed: self.renewed,
            now,
        }
    }
}

/// How a group holds its VIPs, from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// Elected groups hold a lease; static and keepalived groups do not.
    pub leased: bool,
    pub lease: Duration,
    /// The advertisement interval: a standby takes us for silent 3 of them after our
    /// last advertisement, so no lease outlasts that.
    pub interval: Duration,
    pub drain: Duration,
    /// Active VIPs are redirected (no local addresses, no handover flags).
    pub redirect: bool,
    /// An active/active group (members keep the VIP on lo; the director's table).
    pub balanced: bool,
    /// The addresses stay on lo in every role (`addresses = "resident"`): giving the
    /// VIPs up keeps them (a standby's entries drop what they do not serve), and they
    /// are added as soon as the group starts, so a takeover finds them in place.
    pub resident: bool,
    /// A static or keepalived group without a permanent `forward_to`: after giving its
    /// VIPs up towards a successor it forwards only for the drain.
    pub forward_for_drain: bool,
    /// Announced over BGP (`announce = "bgp"` or `"both"`): the active's host routes
    /// go with [`Effect::Announce`], and are withdrawn ([`Effect::Withdraw`]) before
    /// the data plane stops serving, or, after a handover, at the end of the drain
    /// (the successor announces first; we forward to it meanwhile). A balanced
    /// group's members announce too while they forward to the director
    /// ([`Effect::AnnounceRoutes`]: anycast).
    pub routed: bool,
    /// The group has a virtual MAC (`mac`): its takeover's first frame moves the
    /// switch's entry for every VIP at once, so every entry is written before the
    /// first announcement (none may reach a node that does not take it yet).
    pub virtual_mac: bool,
}

impl Terms {
    /// How long before a standby's silence timer can run out our lease must end: the
    /// standby measures from receipt (later than our sending) with a clock of its own;
    /// a tenth of an interval also lets its echo, which sees the lease end within
    /// milliseconds, tell it first (the better-informed reason).
    fn margin(&self) -> Duration {
        (self.interval / 10).max(Duration::from_micros(100))
    }
}

/// What the data plane holds for the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Inert entries (or none) and no lease.
    Nothing,
    /// Active entries: the data plane answers for the VIPs while the lease runs.
    Serving,
    /// Active entries, quiet: a planned handover has begun (or the lease was lost):
    /// nothing is answered; what arrives is still steered while the lease runs.
    Quiet,
    /// Active entries an earlier agent left, with its lease: never renewed by us.
    /// The election decides (after listening) whether we take the VIPs or not.
    Adopted,
    /// Forward entries towards the active's MAC.
    Forwarding(Mac),
}

/// The entries every VIP of the group gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entries {
    /// Serve (local or redirect); with GRACE towards the old active's MAC.
    Active {
        grace: Option<Mac>,
    },
    /// Forward to `to`; `keep`: the drain after our handover (KEEP, addresses on lo).
    Forward {
        to: Mac,
        keep: bool,
    },
    Inert,
}

/// A write of the group's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseWrite {
    /// A new lease, whatever was there: only for a takeover or for forward entries.
    Grant(u64),
    /// From `expect` to `deadline`, only if `expect` still runs (the kernel decides:
    /// the agent reports its answer with [`Ownership::extension`]).
    Extend {
        expect: u64,
        deadline: u64,
    },
    Revoke,
}

/// One step for the agent to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Stop the announcement burst and refresh in flight.
    StopAnnouncing,
    /// Join (true) or leave the solicited-node groups of the IPv6 VIPs.
    SolicitedNodes(bool),
    /// The director's table, before the entries that use it.
    BalanceTable,
    /// The group's node MACs, before a member's forward entries that use them.
    BalanceNodes,
    /// The entries of the whole group.
    Entries(Entries),
    /// A takeover's first step of the entries: only the VIPs that the first
    /// announcements name (`garp::FIRST_FRAMES` of them), so a big group's first
    /// announcement does not wait for every entry; [`Effect::Entries`] follows.
    FirstEntries(Entries),
    Lease(LeaseWrite),
    /// Stop (true) or resume answering ARP/NS and probes, steering untouched.
    Quiet(bool),
    AddAddresses,
    RemoveAddresses,
    /// The first announcements, sent at once, for the VIPs [`Effect::FirstEntries`]
    /// wrote (whose addresses are in place; none while the address worker is still
    /// adding them). With a virtual MAC, whose first frame brings every VIP's
    /// traffic, they wait for every address (bounded).
    AnnounceFirst,
    /// The gratuitous ARP / unsolicited NA burst (its first round goes on from what
    /// [`Effect::AnnounceFirst`] sent), and a routed group's host routes.
    Announce,
    /// A routed group's host routes withdrawn ([`Terms::routed`]).
    Withdraw,
    /// A routed balanced group's member announces its routes too (anycast): it
    /// forwards what the router sends it to the director, which steers each flow to
    /// the member that holds it.
    AnnounceRoutes,
}

/// One group's hold on its VIPs.
#[derive(Debug, Clone)]
pub struct Ownership {
    t: Terms,
    holding: Holding,
    lease: Lease,
    /// The earliest boot-time instant at which a standby may take us for silent: 3
    /// intervals after our last advertisement (minus a margin), or the end of a hold
    /// we asked the peers for. A serving lease never runs past it.
    heard_until: u64,
    /// When the lease is renewed next without an advertisement (short leases).
    renew_at: Option<Instant>,
    /// After our handover: the addresses (and KEEP) stay until then.
    addrs_until: Option<Instant>,
    /// After a handover to us: GRACE towards the old active's MAC until then.
    grace: Option<(Instant, Mac)>,
    /// A static group forwards after giving its VIPs up until then.
    drain_until: Option<Instant>,
}

impl Ownership {
    pub fn new(t: Terms) -> Self {
        Ownership {
            t,
            holding: Holding::Nothing,
            lease: Lease::default(),
            heard_until: 0,
            renew_at: None,
            addrs_until: None,
            grace: None,
            drain_until: None,
        }
    }

    pub fn terms(&self) -> &Terms {
        &self.t
    }

    /// New terms from a reload; what is held stays.
    pub fn set_terms(&mut self, t: Terms) {
        self.t = t;
    }

    pub fn holding(&self) -> Holding {
        self.holding
    }

    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// The active we forward to, if we do.
    pub fn forward_to(&self) -> Option<Mac> {
        match self.holding {
            Holding::Forwarding(m) => Some(m),
            _ => None,
        }
    }

    /// After our handover, until the drain ends: the addresses stay, the entries KEEP.
    pub fn draining(&self) -> bool {
        self.addrs_until.is_some()
    }

    /// After a handover to us: the old active's MAC while its connections drain.
    pub fn grace(&self) -> Option<Mac> {
        self.grace.map(|(_, m)| m)
    }

    /// A static group's forwarding after it gave its VIPs up.
    pub fn forwarding_for_drain(&self) -> bool {
        self.drain_until.is_some()
    }

    /// The next instant [`Ownership::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.addrs_until,
            self.grace.map(|(t, _)| t),
            self.drain_until,
            self.renew_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The agent sent an advertisement saying we are active at `boot`: a standby takes
    /// us for silent no earlier than 3 intervals after it received it.
    pub fn advertised(&mut self, boot: u64) {
        let until = boot
            + (self.t.interval * 3)
                .saturating_sub(self.t.margin())
                .as_nanos() as u64;
        self.heard_until = self.heard_until.max(until);
    }

    /// The peers were asked to hold for `hold` from `boot`: none takes over before.
    pub fn held(&mut self, boot: u64, hold: Duration) {
        self.heard_until = self.heard_until.max(boot + hold.as_nanos() as u64);
    }

    /// Where a serving lease may run to, renewed at `boot`.
    fn serving_deadline(&self, boot: u64) -> u64 {
        (boot + self.t.lease.as_nanos() as u64).min(self.heard_until)
    }

    fn schedule_renewal(&mut self, now: Instant, boot: u64) {
        self.renew_at = self
            .lease
            .deadline()
            .filter(|_| self.t.leased)
            .map(|d| now + Duration::from_nanos(d.saturating_sub(boot) / 2));
    }

    /// The election decided to take the VIPs (`predecessor`: the live active we take
    /// them from, which drains its connections).
    pub fn take(&mut self, now: Instant, boot: u64, predecessor: Option<Mac>) -> Vec<Effect> {
        let t = &self.t;
        self.grace = predecessor
            .filter(|_| !t.redirect && !t.drain.is_zero() && !t.balanced)
            .map(|m| (now + t.drain, m));
        self.addrs_until = None;
        self.drain_until = None;
        let mut out = Vec::new();
        if self.t.leased {
            let deadline = self
                .serving_deadline(boot)
                .max(boot + self.t.margin().as_nanos() as u64);
            self.lease = Lease::granted(boot, deadline);
            out.push(Effect::Lease(LeaseWrite::Grant(deadline)));
            out.push(Effect::Quiet(false));
        }
        if self.t.balanced {
            out.push(Effect::BalanceTable);
        }
        // The first VIPs' entries, their addresses, their announcements; then the
        // rest: a VIP is announced only once its entry answers and its address is on
        // lo, and the first announcement of a 10,000-VIP group leaves without waiting
        // for the other 9,936 entries. A resident group's addresses are in place
        // since its start: asked again (for any an operator removed) after the first
        // announcements.
        // With a virtual MAC the first frame brings every VIP's traffic here: every
        // entry first, and every address (asked for before the entries, so that the
        // address worker adds them while the loop writes the entries; the first
        // announcement waits for them all, see `Effect::AnnounceFirst`).
        let plan = Entries::Active {
            grace: self.grace(),
        };
        let addresses = !self.t.redirect;
        if self.t.virtual_mac {
            if addresses && !self.t.resident {
                out.push(Effect::AddAddresses);
            }
            out.push(Effect::Entries(plan));
        } else {
            out.push(Effect::FirstEntries(plan));
            if addresses && !self.t.resident {
                out.push(Effect::AddAddresses);
            }
        }
        out.push(Effect::AnnounceFirst);
        if !self.t.virtual_mac {
            out.push(Effect::Entries(plan));
        }
        if addresses && self.t.resident {
            out.push(Effect::AddAddresses);
        }
        out.push(Effect::Announce);
        // After the announcement, whose first round they wait for (the worker's
        // joins cost a big group's round time on a small host).
        out.push(Effect::SolicitedNodes(true));
        self.holding = Holding::Serving;
        self.schedule_renewal(now, boot);
        out
    }

    /// A planned handover's first step: stop answering now, keep steering what
    /// arrives on the lease we have (entries and addresses stay; it is not renewed
    /// while quiet). Nothing to do unless we serve.
    pub fn quiesce(&mut self) -> Vec<Effect> {
        if self.holding != Holding::Serving && self.holding != Holding::Adopted {
            return Vec::new();
        }
        self.holding = Holding::Quiet;
        self.renew_at = None;
        let mut out = vec![Effect::StopAnnouncing];
        if self.t.leased {
            out.push(Effect::Quiet(true));
        }
        out
    }

    /// Gives the VIPs up for `state`: towards `forward_to` (the new active) if known,
    /// else inert. After serving towards a successor, the addresses stay for the drain.
    pub fn give_up(
        &mut self,
        now: Instant,
        boot: u64,
        state: State,
        forward_to: Option<Mac>,
    ) -> Vec<Effect> {
        let was = matches!(
            self.holding,
            Holding::Serving | Holding::Quiet | Holding::Adopted
        );
        let forward_to = forward_to.filter(|_| state != State::Fault);
        let drains = was && forward_to.is_some() && !self.t.drain.is_zero();
        // A balanced group's standby is a member (it keeps the VIP on lo); routed,
        // it announces as long as it forwards to a director (anycast).
        let member = self.t.balanced && state == State::Standby;
        let anycast = self.t.routed && member && forward_to.is_some();
        let mut out = vec![Effect::StopAnnouncing];
        // Withdrawn before anything stops serving, unless a successor announces and
        // we forward to it for the drain: then at its end (`tick`).
        if self.t.routed && !drains && !anycast {
            out.push(Effect::Withdraw);
        }
        if was {
            out.push(Effect::SolicitedNodes(false));
        }
        // Stop answering first (writing every VIP's entry takes a while), but keep
        // steering until the new entries are in.
        if self.t.leased && matches!(self.holding, Holding::Serving | Holding::Adopted) {
            out.push(Effect::Quiet(true));
        }
        self.renew_at = None;
        self.grace = None;
        self.addrs_until = drains.then(|| now + self.t.drain);
        out.extend(self.forward_effects(now, boot, forward_to));
        // A member keeps the VIP on lo. A resident group keeps (or, starting, adds)
        // its addresses in every role, after the entries that drop what it does not
        // serve.
        if self.t.resident {
            out.push(Effect::AddAddresses);
        } else if !drains && !member {
            out.push(Effect::RemoveAddresses);
        }
        if was && forward_to.is_some() && self.t.forward_for_drain {
            self.drain_until = Some(now + self.t.drain);
        }
        // Last: the member's forward entries and their lease are in.
        if anycast {
            out.push(Effect::AnnounceRoutes);
        }
        out
    }

    /// Entries (and their lease) for forwarding to `to`, or inert ones.
    fn forward_effects(&mut self, now: Instant, boot: u64, to: Option<Mac>) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.t.balanced {
            out.push(Effect::BalanceNodes);
        }
        match to {
            Some(m) => {
                let keep = self.addrs_until.is_some() && !self.t.redirect;
                out.push(Effect::Entries(Entries::Forward { to: m, keep }));
                self.holding = Holding::Forwarding(m);
                // Only now: a lease written while an entry still served would make
                // it answer again.
                if self.t.leased {
                    let deadline = boot + self.t.lease.as_nanos() as u64;
                    self.lease = Lease::granted(boot, deadline);
                    out.push(Effect::Lease(LeaseWrite::Grant(deadline)));
                    self.schedule_renewal(now, boot);
                }
            }
            None => {
                out.push(Effect::Entries(Entries::Inert));
                if self.t.leased && self.lease.deadline().is_some() {
                    out.push(Effect::Lease(LeaseWrite::Revoke));
                }
                self.lease = Lease::default();
                self.renew_at = None;
                self.holding = Holding::Nothing;
            }
        }
        out
    }

    /// As standby, the active we forward to changed (None: none known). Ignored while
    /// we serve, and while a static group's drain runs.
    pub fn forward(&mut self, now: Instant, boot: u64, to: Option<Mac>) -> Vec<Effect> {
        if matches!(
            self.holding,
            Holding::Serving | Holding::Quiet | Holding::Adopted
        ) || self.drain_until.is_some()
            || self.forward_to() == to && to.is_some()
        {
            return Vec::new();
        }
        if to.is_none() && self.holding == Holding::Nothing {
            return Vec::new();
        }
        // An anycast member announces while it forwards to a director, and withdraws
        // before its entries go inert.
        let anycast = self.t.routed && self.t.balanced;
        let mut out = Vec::new();
        if anycast && to.is_none() {
            out.push(Effect::Withdraw);
        }
        out.extend(self.forward_effects(now, boot, to));
        if anycast && to.is_some() {
            out.push(Effect::AnnounceRoutes);
        }
        out
    }

    /// A restarted agent found active entries with a lease that still runs: they stay
    /// as they are, never renewed, while the election listens for the current owner.
    /// The addresses are ours again (the local stack keeps delivering), and so are the
    /// solicited-node groups.
    pub fn adopt(&mut self, lease_deadline: u64, boot: u64) -> Vec<Effect> {
        self.holding = Holding::Adopted;
        self.lease = Lease::granted(boot, lease_deadline);
        self.renew_at = None;
        let mut out = Vec::new();
        if !self.t.redirect {
            out.push(Effect::AddAddresses);
        }
        out.push(Effect::SolicitedNodes(true));
        out
    }

    /// The lease's keeping: due renewals without an advertisement, the ends of drains.
    pub fn tick(&mut self, now: Instant, boot: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        let serving = matches!(self.holding, Holding::Serving | Holding::Quiet);
        if self.addrs_until.is_some_and(|t| now >= t) && !serving {
            // The drain is over: the routes go (the successor has announced since
            // our handover; we still forward whatever reaches us), plain forwarding
            // (no KEEP), then no addresses.
            self.addrs_until = None;
            // (An anycast member goes on announcing: it forwards to the director.)
            if self.t.routed && !self.t.balanced {
                out.push(Effect::Withdraw);
            }
            if let Holding::Forwarding(m) = self.holding {
                out.push(Effect::Entries(Entries::Forward { to: m, keep: false }));
            }
            if !self.t.balanced && !self.t.resident {
                out.push(Effect::RemoveAddresses);
            }
        }
        if self.grace.is_some_and(|(t, _)| now >= t) {
            self.grace = None;
            if self.holding == Holding::Serving {
                out.push(Effect::Entries(Entries::Active { grace: None }));
            }
        }
        if self.drain_until.is_some_and(|t| now >= t) {
            self.drain_until = None;
            if !serving {
                out.extend(self.forward_effects(now, boot, None));
            }
        }
        if self.renew_at.is_some_and(|t| now >= t) {
            out.extend(self.renew(now, boot));
        }
        out
    }

    /// Renews the lease now (after an advertisement, or when due): a serving lease
    /// only while it runs, to no later than a standby may take us for silent; a
    /// forwarding lease whatever happened (forwarding never answers for a VIP).
    /// Nothing when there is nothing to renew, or when [`Ownership::check`] would say
    /// the lease is lost.
    pub fn renew(&mut self, now: Instant, boot: u64) -> Vec<Effect> {
        if !self.t.leased {
            return Vec::new();
        }
        match self.holding {
            Holding::Serving => {
                let deadline = self.serving_deadline(boot);
                if !self.lease.runs(boot) || deadline <= self.lease.deadline {
                    return Vec::new();
                }
                let expect = self.lease.deadline;
                match self.lease.extend(boot, deadline) {
                    Ok(l) => {
                        self.lease = l;
                        self.schedule_renewal(now, boot);
                        vec![Effect::Lease(LeaseWrite::Extend { expect, deadline })]
                    }
                    Err(_) => Vec::new(),
                }
            }
            Holding::Forwarding(_) => {
                let deadline = boot + self.t.lease.as_nanos() as u64;
                let write = match self.lease.extend(boot, deadline) {
                    Ok(l) => {
                        let expect = self.lease.deadline;
                        self.lease = l;
                        LeaseWrite::Extend { expect, deadline }
                    }
                    Err(_) => {
                        self.lease = Lease::granted(boot, deadline);
                        LeaseWrite::Grant(deadline)
                    }
                };
                self.schedule_renewal(now, boot);
                vec![Effect::Lease(write)]
            }
            Holding::Nothing | Holding::Quiet | Holding::Adopted => Vec::new(),
        }
    }

    /// The kernel's answer to an [`LeaseWrite::Extend`]: `None` when it took it, or
    /// (serving) the lost lease; a refused forwarding lease is granted anew.
    pub fn extension(
        &mut self,
        now: Instant,
        boot: u64,
        took: bool,
        found: u64,
    ) -> Result<Option<LeaseWrite>, Expired> {
        if took {
            return Ok(None);
        }
        match self.holding {
            Holding::Serving => {
                let lost = Expired {
                    deadline: found,
                    renewed: self.lease.renewed,
                    now: boot,
                };
                self.lost();
                Err(lost)
            }
            Holding::Forwarding(_) => {
                let deadline = boot + self.t.lease.as_nanos() as u64;
                self.lease = Lease::granted(boot, deadline);
                self.schedule_renewal(now, boot);
                Ok(Some(LeaseWrite::Grant(deadline)))
            }
            _ => Ok(None),
        }
    }

    /// A serving lease that ran out (the agent was stopped past it, or lost it in the
    /// kernel's check): lost, so the group must listen again before it may answer.
    /// Checked before anything else each time the loop wakes up.
    pub fn check(&mut self, boot: u64) -> Option<Expired> {
        if self.holding != Holding::Serving || !self.t.leased || self.lease.runs(boot) {
            return None;
        }
        let lost = self.lease.expired(boot);
        self.lost();
        Some(lost)
    }

    /// The serving lease is gone: the entries still serve but answer nothing, as in a
    /// handover, until the election gives the VIPs up or takes them anew.
    fn lost(&mut self) {
        self.holding = Holding::Quiet;
        self.lease = Lease::default();
        self.renew_at = None;
    }

    /// Before exiting for a restart: a serving lease is extended to cover the hold the
    /// peers were asked for (while it still runs), a forwarding one too.
    pub fn hold(&mut self, boot: u64, hold: Duration) -> Vec<Effect> {
        self.held(boot, hold);
        let deadline = boot + hold.as_nanos() as u64;
        let mut out = vec![Effect::StopAnnouncing];
        if !self.t.leased {
            return out;
        }
        if matches!(self.holding, Holding::Serving | Holding::Forwarding(_)) {
            if let Ok(l) = self.lease.extend(boot, deadline) {
                let expect = self.lease.deadline;
                self.lease = l;
                self.renew_at = None;
                out.push(Effect::Lease(LeaseWrite::Extend { expect, deadline }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const MAC_B: Mac = Mac([2, 0, 0, 0, 0, 0xb]);

    fn terms() -> Terms {
        Terms {
            leased: true,
            lease: 300 * MS,
            interval: 100 * MS,
            drain: 1000 * MS,
            redirect: false,
            balanced: false,
            resident: false,
            forward_for_drain: false,
            routed: false,
            virtual_mac: false,
        }
    }

    fn ms(n: u64) -> u64 {
        n * 1_000_000
    }

    fn position(out: &[Effect], f: impl Fn(&Effect) -> bool) -> usize {
        out.iter()
            .position(f)
            .unwrap_or_else(|| panic!("not in {out:?}"))
    }

    #[test]
    fn a_lease_extends_only_while_it_runs_and_never_shortens() {
        let l = Lease::granted(ms(0), ms(300));
        assert!(l.runs(ms(299)) && !l.runs(ms(300)));
        assert_eq!(
            l.extend(ms(100), ms(400)).unwrap().deadline(),
            Some(ms(400))
        );
        assert_eq!(
            l.extend(ms(100), ms(200)).unwrap().deadline(),
            Some(ms(300))
        );
        let e = l.extend(ms(900), ms(1200)).unwrap_err();
        assert_eq!((e.stalled(), e.late()), (900 * MS, 600 * MS));
        assert!(Lease::default().extend(0, ms(1)).is_err());
    }

    #[test]
    fn a_takeover_grants_the_lease_and_programs_before_it_announces() {
        let t0 = Instant::now();
        let mut o = Ownership::new(terms());
        o.advertised(ms(1000));
        let out = o.take(t0, ms(1000), None);
        let lease = position(&out, |e| matches!(e, Effect::Lease(LeaseWrite::Grant(_))));
        let first = position(&out, |e| {
            matches!(e, Effect::FirstEntries(Entries::Active { .. }))
        });
        let entries = position(&out, |e| {
            matches!(e, Effect::Entries(Entries::Active { .. }))
        });
        let addrs = position(&out, |e| *e == Effect::AddAddresses);
        let announce_first = position(&out, |e| *e == Effect::AnnounceFirst);
        let announce = position(&out, |e| *e == Effect::Announce);
        assert!(
            lease < first
                && first < addrs
                && addrs < announce_first
                && announce_first < entries
                && entries < announce,
            "{out:?}"
        );
        assert_eq!(out[lease], Effect::Lease(LeaseWrite::Grant(ms(1290))));
        assert_eq!(o.holding(), Holding::Serving);
    }

    /// With a virtual MAC, every entry is written before the first announcement: its
    /// first frame moves the switch's entry for every VIP at once.
    #[test]
    fn a_virtual_mac_writes_every_entry_before_the_first_announcement() {
        let t0 = Instant::now();
        let mut o = Ownership::new(Terms {
            resident: true,
            virtual_mac: true,
            ..terms()
        });
        o.advertised(ms(1000));
        let out = o.take(t0, ms(1000), None);
        let entries = position(&out, |e| {
            matches!(e, Effect::Entries(Entries::Active { .. }))
        });
        assert!(
            entries < position(&out, |e| *e == Effect::AnnounceFirst),
            "{out:?}"
        );
        assert!(
            !out.iter().any(|e| matches!(e, Effect::FirstEntries(_))),
            "{out:?}"
        );
        assert_eq!(
            out.iter()
                .filter(|e| matches!(e, Effect::Entries(Entries::Active { .. })))
                .count(),
            1,
            "{out:?}"
        );
        // On takeover, the addresses are asked for before the entries: the worker
        // adds them while the entries are written.
        let mut o = Ownership::new(Terms {
            virtual_mac: true,
            ..terms()
        });
        o.advertised(ms(1000));
        let out = o.take(t0, ms(1000), None);
        let addresses = position(&out, |e| *e == Effect::AddAddresses);
        let entries = position(&out, |e| {
            matches!(e, Effect::Entries(Entries::Active { .. }))
        });
        assert!(addresses < entries, "{out:?}");
        assert!(
            entries < position(&out, |e| *e == Effect::AnnounceFirst),
            "{out:?}"
        );
    }

    /// A resident group's addresses are added when it starts (as it gives the VIPs up
    /// to nobody, inert), after its entries, and never removed by a change of role: not
    /// at a failure, a fault, a handover or the end of its drain.
    #[test]
    fn a_resident_group_adds_its_addresses_at_start_and_never_removes_them() {
        let t0 = Instant::now();
        let mut o = Ownership::new(Terms {
            resident: true,
            ..terms()
        });
        let start = o.give_up(t0, ms(0), State::Standby, None);
        let inert = position(&start, |e| *e == Effect::Entries(Entries::Inert));
        let addrs = position(&start, |e| *e == Effect::AddAddresses);
        assert!(inert < addrs, "{start:?}");
        o.advertised(ms(1000));
        // Its takeover announces without asking for the addresses first (they are in
        // place); asked again afterwards, for any that an operator removed.
        let out = o.take(t0, ms(1000), None);
        let first = position(&out, |e| *e == Effect::AnnounceFirst);
        assert!(
            first < position(&out, |e| *e == Effect::AddAddresses),
            "{out:?}"
        );
        // A planned handover: forward (with KEEP for the drain), then its end.
        let out = o.give_up(t0, ms(1010), State::Standby, Some(MAC_B));
        assert!(!out.contains(&Effect::RemoveAddresses), "{out:?}");
        let out = o.tick(t0 + 2000 * MS, ms(3010));
        assert!(!out.contains(&Effect::RemoveAddresses), "{out:?}");
        // A fault.
        o.advertised(ms(4000));
        o.take(t0, ms(4000), None);
        let out = o.give_up(t0, ms(4010), State::Fault, None);
        assert!(!out.contains(&Effect::RemoveAddresses), "{out:?}");
        // The same group without `resident` removes them.
        let mut plain = Ownership::new(terms());
        plain.advertised(ms(1000));
        plain.take(t0, ms(1000), None);
        let out = plain.give_up(t0, ms(1010), State::Fault, None);
        assert!(out.contains(&Effect::RemoveAddresses), "{out:?}");
    }

    #[test]
    fn the_lease_never_outlasts_three_intervals_after_the_last_advert() {
        let t0 = Instant::now();
        let mut o = Ownership::new(terms());
        o.advertised(ms(0));
        o.take(t0, ms(0), None);
        // A renewal 90 ms later without a new advert may not reach past 300 ms (less
        // the margin): a standby that heard our last advert at 0 takes over then.
        assert!(o.renew(t0 + 90 * MS, ms(90)).is_empty());
        assert!(o.lease().deadline().unwrap() <= ms(290));
        // An advert at 100: the lease follows it.
        o.advertised(ms(100));
        let out = o.renew(t0 + 100 * MS, ms(100));
        assert_eq!(
            out,
            vec![Effect::Lease(LeaseWrite::Extend {
                expect: ms(290),
                deadline: ms(390)
            })]
        );
    }

    #[test]
    fn a_node_stopped_past_its_lease_loses_it_and_never_renews_it() {
        let t0 = Instant::now();
        let mut o = Ownership::new(terms());
        o.advertised(ms(0));
        o.take(t0, ms(0), None);
        // SIGSTOP for 600 ms: the clock jumps. An advert would be sent on waking, but
        // the loop checks first.
        let lost = o.check(ms(600)).expect("lost");
        assert_eq!(lost.stalled(), 600 * MS);
        o.advertised(ms(600));
        assert!(o.renew(t0 + 600 * MS, ms(600)).is_empty(), "never renewed");
        assert!(o.check(ms(601)).is_none(), "reported once");
        // Only a takeover (the election decided again) grants a new one.
        o.advertised(ms(2000));
        let out = o.take(t0 + 2000 * MS, ms(2000), None);
        assert!(out.contains(&Effect::Lease(LeaseWrite::Grant(ms(2290)))));
    }

    #[test]
    fn a_lease_the_kernel_refused_is_lost() {
        let t0 = Instant::now();
        let mut o = Ownership::new(terms());
        o.advertised(ms(0));
        o.take(t0, ms(0), None);
        o.advertised(ms(100));
        assert!(!o.renew(t0 + 100 * MS, ms(100)).is_empty());
        // Stopped between our check and the kernel's: the kernel says it had run out.
        let lost = o
            .extension(t0 + 400 * MS, ms(400), false, ms(290))
            .unwrap_err();
        assert_eq!(lost.deadline, ms(290));
        assert_eq!(o.lease().deadline(), None);
    }

    #[test]
    fn a_short_lease_is_renewed_between_adverts() {
        let t0 = Instant::now();
        let mut o = Ownership::new(Terms {
            lease: 100 * MS,
            ..terms()
        });
        o.advertised(ms(0));
        o.take(t0, ms(0), None);
        let due = o.next_deadline().unwrap();
        assert_eq!(due, t0 + 50 * MS);
        let out = o.tick(due, ms(50));
        assert_eq!(
            out,
            vec![Effect::Lease(LeaseWrite::Extend {
                expect: ms(100),
                deadline: ms(150)
            })]
        );
    }

    #[test]
    fn a_handover_stops_answering_before_anything_else() {
        let t0 = Instant::now();
        let mut o = Ownership::new(terms());
        o.advertised(ms(0));
        o.take(t0, ms(0), None);
        assert_eq!(
            o.quiesce(),
            vec![Effect::StopAnnouncing, Effect::Quiet(true)]
        );
        assert_eq!(o.holding(), Holding::Quiet);
        // Nothing renews a quiet lease.
        o.advertised(ms(20));
        assert!(o.renew(t0 + 20 * MS, ms(20)).is_empty());
        assert!(o.check(ms(5000)).is_none());
        // The successor is heard: forward to it, KEEP for the drain, addresses kept,
        // the forwarding lease written only after the forward entries.
        let out = o.give_up(t0 + 30 * MS, ms(30), State::Standby, Some(MAC_B));
        let entries = position(&out, |e| {
            *e == Effect::Entries(Entries::Forward {
                to: MAC_B,
                keep: true,
            })
        });
        let grant = position(&out, |e| matches!(e, Effect::Lease(LeaseWrite::Grant(_))));
        assert!(entries < grant, "{out:?}");
        assert!(!out.contains(&Effect::RemoveAddresses));
        assert!(o.draining());
        // The drain ends: plain forwarding, addresses gone.
        let out = o.tick(t0 + 1031 * MS, ms(1031));
        assert!(out.contains(&Effect::Entries(Entries::Forward {
            to: MAC_B,
            keep: false
        })));
        assert!(out.contains(&Effect::RemoveAddresses));
    }

    #[test]
    fn a_routed_group_withdraws_before_it_stops_serving_or_after_its_drain() {
        let t0 = Instant::now();
        let routed = Terms {
            routed: true,
            ..terms()
        };
        // A takeover announces (routes with the announcements), last but the
        // solicited-node joins, which wait for the announcement's first round.
        let mut o = Ownership::new(routed.clone());
        o.advertised(ms(0));
        let out = o.take(t0, ms(0), None);
        assert_eq!(
            out[out.len() - 2..],
            [Effect::Announce, Effect::SolicitedNodes(true)]
        );
        assert!(!out.contains(&Effect::Withdraw));
        // A fault: withdrawn first thing, before the entries go inert.
        let out = o.give_up(t0, ms(10), State::Fault, None);
        let withdraw = position(&out, |e| *e == Effect::Withdraw);
        let entries = position(&out, |e| matches!(e, Effect::Entries(_)));
        assert!(withdraw < entries, "{out:?}");
        // A planned handover: the successor announces; we forward to it and withdraw
        // only when the drain ends, before the entries stop keeping.
        let mut o = Ownership::new(routed);
        o.advertised(ms(0));
        o.take(t0, ms(0), None);
        o.quiesce();
        let out = o.give_up(t0 + 30 * MS, ms(30), State::Standby, Some(MAC_B));
        assert!(!out.contains(&Effect::Withdraw), "{out:?}");
        assert!(!o.tick(t0 + 500 * MS, ms(500)).contains(&Effect::Withdraw));
        let out = o.tick(t0 + 1031 * MS, ms(1031));
        let withdraw = position(&out, |e| *e == Effect::Withdraw);
        let plain = position(&out, |e| {
            *e == Effect::Entries(Entries::Forward {
                to: MAC_B,
                keep: false,
            })
        });
        assert!(withdraw < plain, "{out:?}");
        // An ARP group never withdraws anything.
        let mut o = Ownership::new(terms());
        o.advertised(ms(0));
        o.take(t0, ms(0), None);
        assert!(!o
            .give_up(t0, ms(10), State::Fault, None)
            .contains(&Effect::Withdraw));
    }

    #[test]
    fn giving_up_while_serving_revokes_before_the_entries_change() {
        let t0 = Instant::now();
        let mut o = Ownership::new(terms());
        o.advertised(ms(0));
        o.take(t0, ms(0), None);
        let out = o.give_up(t0, ms(10), State::Standby, Some(MAC_B));
        let quiet = position(&out, |e| *e == Effect::Quiet(true));
        let entries = position(&out, |e| matches!(e, Effect::Entries(_)));
        let grant = position(&out, |e| matches!(e, Effect::Lease(LeaseWrite::Grant(_))));
        assert!(quiet < entries && entries < grant, "{out:?}");
        assert!(
            !out.contains(&Effect::Lease(LeaseWrite::Revoke)),
            "steering never stops"
        );
        let out = o.give_up(t0, ms(20), State::Fault, Some(MAC_B));
        assert!(
            out.contains(&Effect::Entries(Entries::Inert)),
            "a fault never forwards"
        );
    }

    #[test]
    fn an_adopted_lease_is_never_renewed_nor_lost() {
        let t0 = Instant::now();
        let mut o = Ownership::new(terms());
        let out = o.adopt(ms(5000), ms(0));
        assert!(out.contains(&Effect::AddAddresses));
        o.advertised(ms(10));
        assert!(o.renew(t0, ms(10)).is_empty());
        assert!(o.check(ms(6000)).is_none());
        // The election heard another active: give up (quiet first).
        let out = o.give_up(t0, ms(100), State::Standby, Some(MAC_B));
        assert_eq!(out[2], Effect::Quiet(true), "{out:?}");
    }

    #[test]
    fn a_forwarding_lease_is_granted_again_after_a_stall() {
        let t0 = Instant::now();
        let mut o = Ownership::new(terms());
        o.forward(t0, ms(0), Some(MAC_B));
        assert_eq!(o.forward_to(), Some(MAC_B));
        let out = o.renew(t0 + 900 * MS, ms(900));
        assert_eq!(out, vec![Effect::Lease(LeaseWrite::Grant(ms(1200)))]);
        assert!(o.check(ms(5000)).is_none(), "forwarding is not ownership");
    }

    #[test]
    fn a_hold_extends_the_lease_past_three_intervals() {
        let t0 = Instant::now();
        let mut o = Ownership::new(terms());
        o.advertised(ms(0));
        o.take(t0, ms(0), None);
        let out = o.hold(ms(10), 5000 * MS);
        assert!(out.contains(&Effect::Lease(LeaseWrite::Extend {
            expect: ms(290),
            deadline: ms(5010)
        })));
    }

    #[test]
    fn a_grace_after_a_handover_to_us_ends_with_plain_entries() {
        let t0 = Instant::now();
        let mut o = Ownership::new(terms());
        o.advertised(ms(0));
        let out = o.take(t0, ms(0), Some(MAC_B));
        assert!(out.contains(&Effect::Entries(Entries::Active { grace: Some(MAC_B) })));
        o.advertised(ms(900));
        let out = o.tick(t0 + 1000 * MS, ms(1000));
        assert!(out.contains(&Effect::Entries(Entries::Active { grace: None })));
        // Redirected and balanced groups have no grace.
        let mut r = Ownership::new(Terms {
            redirect: true,
            ..terms()
        });
        let out = r.take(t0, ms(0), Some(MAC_B));
        assert!(out.contains(&Effect::Entries(Entries::Active { grace: None })));
        assert!(!out.contains(&Effect::AddAddresses));
    }

    #[test]
    fn a_static_group_forwards_only_for_the_drain() {
        let t0 = Instant::now();
        let mut o = Ownership::new(Terms {
            leased: false,
            forward_for_drain: true,
            ..terms()
        });
        let out = o.take(t0, 0, None);
        assert!(!out.iter().any(|e| matches!(e, Effect::Lease(_))));
        o.give_up(t0, 0, State::Standby, Some(MAC_B));
        assert!(o.forwarding_for_drain());
        // A new active heard meanwhile changes nothing until the drain ends.
        assert!(o.forward(t0, 0, Some(Mac([2, 0, 0, 0, 0, 0xc]))).is_empty());
        let out = o.tick(t0 + 1000 * MS, 0);
        assert!(out.contains(&Effect::Entries(Entries::Inert)), "{out:?}");
    }
}
