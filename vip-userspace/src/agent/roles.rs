//! Taking and giving up a group's VIPs: the driver's actions are carried out through
//! the group's `Ownership` (`crate::ownership`), which decides what the data plane
//! must hold and in which order; `effects` carries them out (map writes, the lease,
//! addresses, announcements), and this room keeps the group's state for status.
//!
//! The loop asks every group first, each time it wakes up, whether its serving lease
//! still runs (`check_leases`): a node that was stopped past its lease learns it
//! before it acts on anything that arrived meanwhile, and goes back to listening.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    effects::{self, Writes as _},
    Agent,
};
use crate::{
    election::Action,
    host,
    mac::Mac,
    ownership::{Effect, Entries, Expired, Holding},
    reason::Reason,
    state::State,
};

impl Agent {
    /// Carries out what a group's driver decided, logging a failed step (the others
    /// still run: a failed address never stops an announcement).
    pub(super) fn apply(&mut self, gi: usize, actions: Vec<Action>) {
        for a in actions {
            if let Err(e) = self.carry_out(gi, vec![a]) {
                log::error!("group {}: {e:#}", self.groups[gi].cfg.name);
            }
        }
    }

    /// Carries out a driver's actions, stopping at the first that fails.
    pub(super) fn carry_out(&mut self, gi: usize, actions: Vec<Action>) -> Result<()> {
        for a in actions {
            self.act(gi, a)?;
        }
        Ok(())
    }

    fn act(&mut self, gi: usize, a: Action) -> Result<()> {
        let (now, boot) = (Instant::now(), host::boottime_ns());
        match a {
            Action::TakeOver { reason } => self.activate(gi, reason),
            Action::StepDown { forward_to, reason } => {
                self.deactivate(gi, State::Standby, forward_to, reason)
            }
            Action::Fault { reason } => self.deactivate(gi, State::Fault, None, reason),
            Action::Wait { reason } => self.deactivate(gi, State::Init, None, reason),
            Action::Recover { reason } | Action::Listen { reason } => {
                self.groups[gi].set_state(State::Standby, reason);
                Ok(())
            }
            Action::Quiesce => {
                let fx = self.groups[gi].own.quiesce();
                self.exec(gi, fx)
            }
            Action::ForwardTo(mac) => {
                if self.groups[gi].state != State::Standby {
                    return Ok(());
                }
                let fx = self.groups[gi].own.forward(now, boot, mac);
                self.exec(gi, fx)
            }
            Action::Send(kind) => {
                self.send_advert(gi, kind);
                Ok(())
            }
            Action::Reannounce => {
                if self.groups[gi].own.holding() == Holding::Serving {
                    self.announce(gi);
                }
                Ok(())
            }
        }
    }

    /// Performs a group's effects in order, stopping at the first that fails (see
    /// `effects`). A lease the kernel refused to extend is lost: the election hears it
    /// once they are done.
    pub(super) fn exec(&mut self, gi: usize, effects: Vec<Effect>) -> Result<()> {
        let mac = self.iface.mac;
        let (mut kernel, groups) = self.kernel();
        let (result, lost) = effects::perform(&mut kernel, &mut groups[gi], mac, effects);
        if let Some(expired) = lost {
            self.lease_lost(gi, expired);
        }
        result
    }

    /// Programs every VIP of the group (or only `only`) for `plan`.
    pub(super) fn program_entries(
        &mut self,
        gi: usize,
        plan: Entries,
        only: Option<&[IpAddr]>,
    ) -> Result<()> {
        effects::program_entries(&mut self.dp, &self.groups[gi], self.iface.mac, plan, only)
    }

    /// Before anything else each time the loop wakes up: a serving lease that ran out
    /// (we were stopped past it) is lost.
    pub(super) fn check_leases(&mut self) {
        let boot = host::boottime_ns();
        for gi in 0..self.groups.len() {
            if let Some(expired) = self.groups[gi].own.check(boot) {
                effects::update_gate(&self.groups[gi]);
                self.lease_lost(gi, expired);
            }
        }
    }

    /// Our serving lease ran out: we are not the owner any more; the election listens
    /// again and may claim the VIPs only by itself.
    fn lease_lost(&mut self, gi: usize, expired: Expired) {
        let reason = Reason::LeaseExpired {
            stalled: expired.stalled(),
            late: expired.late(),
        };
        log::warn!("group {}: {reason}", self.groups[gi].cfg.name);
        self.withdraw_routes(gi);
        let now = Instant::now();
        let actions = match self.groups[gi].election_mut() {
            Some(e) => e.lost(now, reason),
            None => return,
        };
        self.apply(gi, actions);
    }

    /// Renews the group's lease now (after an advertisement, or when it is due).
    pub(super) fn renew(&mut self, gi: usize) {
        let (now, boot) = (Instant::now(), host::boottime_ns());
        let fx = self.groups[gi].own.renew(now, boot);
        if let Err(e) = self.exec(gi, fx) {
            log::error!(
                "group {}: renewing the lease: {e:#}",
                self.groups[gi].cfg.name
            );
        }
    }

    /// Joins (or leaves) the solicited-node groups of the group's IPv6 VIPs.
    pub(super) fn join_solicited_nodes(&mut self, gi: usize, join: bool) {
        let (mut kernel, groups) = self.kernel();
        kernel.solicited_nodes(&mut groups[gi], join);
    }

    /// Takes the group's VIPs, in `Ownership::take`'s order.
    pub fn activate(&mut self, gi: usize, reason: Reason) -> Result<()> {
        let decided_mono_ns = self.groups[gi]
            .decided_ns
            .take()
            .unwrap_or_else(host::monotonic_ns);
        self.groups[gi].takeover = Some(crate::status::TakeoverStatus {
            reason_kind: reason.kind().into(),
            decided_mono_ns,
            announced_mono_ns: None,
        });
        // A planned handover (the old active released the VIPs, or we preempted it):
        // its established connections stay with it while it drains (`flags::GRACE`
        // here, `flags::KEEP` there).
        let predecessor = self.groups[gi].election().and_then(|e| e.predecessor());
        let (now, boot) = (Instant::now(), host::boottime_ns());
        if let Some(e) = self.groups[gi].election() {
            let heard: Vec<String> = e
                .standbys_heard(now)
                .iter()
                .map(|(a, p, ago)| format!("{a} ({p}, {} ms ago)", ago.as_millis()))
                .collect();
            log::info!(
                "group {}: taking over ({reason}); standbys heard: {}",
                self.groups[gi].cfg.name,
                if heard.is_empty() {
                    "none".to_string()
                } else {
                    heard.join(", ")
                }
            );
        }
        let fx = self.groups[gi].own.take(now, boot, predecessor);
        if let Some(old_active) = self.groups[gi].own.grace() {
            log::info!(
                "group {}: TCP connections of the old active ({old_active}) stay with it for {} ms",
                self.groups[gi].cfg.name,
                self.groups[gi].cfg.drain.as_millis()
            );
        }
        self.exec(gi, fx)?;
        self.groups[gi].set_state(State::Active, reason);
        Ok(())
    }

    /// Gives the group's VIPs up, in `Ownership::give_up`'s order: stop answering (or
    /// forward to `forward_to`), then the addresses.
    pub fn deactivate(
        &mut self,
        gi: usize,
        state: State,
        forward_to: Option<Mac>,
        reason: Reason,
    ) -> Result<()> {
        let (now, boot) = (Instant::now(), host::boottime_ns());
        let fx = self.groups[gi].own.give_up(now, boot, state, forward_to);
        let result = self.exec(gi, fx);
        self.groups[gi].set_state(state, reason);
        result
    }

    /// Removes the group's VIP addresses (the group no longer holds its VIPs).
    pub(super) fn release_addresses(&mut self, gi: usize) {
        let (mut kernel, groups) = self.kernel();
        kernel.remove_addresses(&mut groups[gi]);
    }

    /// Starts (or restarts) the group's gratuitous ARP / unsolicited NA burst, and the
    /// periodic refresh if configured; every round leaves only while the group's
    /// announcement gate is open (its serving lease runs).
    pub(super) fn announce(&mut self, gi: usize) {
        let (mut kernel, groups) = self.kernel();
        let g = &mut groups[gi];
        if g.cfg.announce.bgp() && (!g.leased() || g.gate.is_open()) {
            kernel.routes(g, true);
        }
        if g.cfg.announce.arp() {
            kernel.announce(g);
        }
    }

    /// How long a restarting agent's peers hold, as the lease must cover it.
    pub(super) fn hold_leases(&mut self, gi: usize, hold: Duration) {
        let boot = host::boottime_ns();
        let fx = self.groups[gi].own.hold(boot, hold);
        if let Err(e) = self.exec(gi, fx) {
            log::error!(
                "group {}: extending the lease for the restart: {e:#}",
                self.groups[gi].cfg.name
            );
        }
    }
}
