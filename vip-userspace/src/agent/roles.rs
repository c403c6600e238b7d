//! Taking and giving up a group's VIPs: the driver's actions are carried out through
//! the group's `Ownership` (`crate::ownership`), which decides what the data plane
//! must hold and in which order; this room performs its effects (map writes, the
//! lease, addresses, announcements) and keeps the group's state for status.
//!
//! The loop asks every group first, each time it wakes up, whether its serving lease
//! still runs (`check_leases`): a node that was stopped past its lease learns it
//! before it acts on anything that arrived meanwhile, and goes back to listening.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use vip_common::VipEntry;

use super::Agent;
use crate::{
    dataplane::Extension,
    election::Action,
    garp, host,
    mac::Mac,
    ownership::{Effect, Entries, Expired, Holding, LeaseWrite},
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

    /// Performs a group's effects in order, stopping at the first that fails. A lease
    /// the kernel refused to extend is lost: the election hears it once they are done.
    pub(super) fn exec(&mut self, gi: usize, effects: Vec<Effect>) -> Result<()> {
        let mut lost = None;
        let mut result = Ok(());
        for fx in effects {
            result = self.effect(gi, fx, &mut lost);
            if result.is_err() {
                break;
            }
        }
        self.update_gate(gi);
        if let Some(expired) = lost {
            self.lease_lost(gi, expired);
        }
        result
    }

    fn effect(&mut self, gi: usize, fx: Effect, lost: &mut Option<Expired>) -> Result<()> {
        let name = self.groups[gi].cfg.name.clone();
        let index = self.groups[gi].index;
        match fx {
            Effect::StopAnnouncing => self.groups[gi].stop_announcing(),
            Effect::SolicitedNodes(join) => self.join_solicited_nodes(gi, join),
            Effect::BalanceTable => self.program_balance(gi)?,
            Effect::BalanceNodes => {
                if let Err(e) = self.program_balance_nodes(gi) {
                    log::error!("group {name}: {e:#}");
                }
            }
            Effect::Entries(plan) => self.program_entries(gi, plan, None)?,
            Effect::Lease(LeaseWrite::Grant(deadline)) => {
                self.dp
                    .grant_lease(index, deadline)
                    .with_context(|| format!("group {name}: granting the lease"))?;
                self.update_gate(gi);
            }
            Effect::Lease(LeaseWrite::Revoke) => {
                // Closed first: no announcement may leave once we stop answering.
                self.update_gate(gi);
                self.dp
                    .revoke_lease(index)
                    .with_context(|| format!("group {name}: revoking the lease"))?;
            }
            Effect::Lease(LeaseWrite::Extend { expect, deadline }) => {
                let answer = self
                    .dp
                    .extend_lease(index, expect, deadline)
                    .with_context(|| format!("group {name}: extending the lease"))?;
                let (took, found) = match answer {
                    Extension::Extended => (true, deadline),
                    Extension::Expired { found, .. } | Extension::Changed { found } => {
                        (false, found)
                    }
                };
                let (now, boot) = (Instant::now(), host::boottime_ns());
                match self.groups[gi].own.extension(now, boot, took, found) {
                    Ok(None) => {}
                    Ok(Some(LeaseWrite::Grant(d))) => self
                        .dp
                        .grant_lease(index, d)
                        .with_context(|| format!("group {name}: granting the lease"))?,
                    Ok(Some(_)) => {}
                    Err(expired) => *lost = Some(expired),
                }
                self.update_gate(gi);
            }
            Effect::Quiet(quiet) => {
                // Closed first: no announcement may leave once we stop answering.
                self.update_gate(gi);
                self.dp
                    .set_quiet(index, quiet)
                    .with_context(|| format!("group {name}: setting its answers"))?;
            }
            Effect::AddAddresses => {
                let vips = self.groups[gi].vips.clone();
                for v in vips.iter() {
                    if !self.addrs.holds(v.vip.addr) {
                        self.addrs.add(&name, v.vip.addr);
                    }
                }
            }
            Effect::RemoveAddresses => self.release_addresses(gi),
            Effect::Announce => self.announce(gi),
        }
        Ok(())
    }

    /// Programs every VIP of the group (or only `only`) for `plan`.
    pub(super) fn program_entries(
        &mut self,
        gi: usize,
        plan: Entries,
        only: Option<&[IpAddr]>,
    ) -> Result<()> {
        let g = &self.groups[gi];
        let entries: Vec<(IpAddr, VipEntry)> = g
            .vips
            .iter()
            .filter(|v| only.is_none_or(|o| o.contains(&v.vip.addr)))
            .map(|v| (v.vip.addr, g.entry(self.iface.mac, v, plan)))
            .collect();
        self.dp
            .set_vips_batch(&entries)
            .with_context(|| format!("group {}: programming its VIPs", g.cfg.name))
    }

    /// The announcements may leave while the serving lease runs (elected groups), or
    /// always (the others).
    fn update_gate(&mut self, gi: usize) {
        let g = &self.groups[gi];
        if !g.leased() {
            return;
        }
        let open = match g.own.holding() {
            Holding::Serving => g.own.lease().deadline().unwrap_or(0),
            _ => 0,
        };
        g.gate.set(open);
    }

    /// Before anything else each time the loop wakes up: a serving lease that ran out
    /// (we were stopped past it) is lost.
    pub(super) fn check_leases(&mut self) {
        let boot = host::boottime_ns();
        for gi in 0..self.groups.len() {
            if let Some(expired) = self.groups[gi].own.check(boot) {
                self.update_gate(gi);
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

    /// An IPv6 VIP's address is on `lo` (or, redirected, nowhere), so the interface
    /// does not join its solicited-node group by itself: join it, or NICs that filter
    /// multicast and switches that snoop MLD never deliver the solicitations for it.
    pub(super) fn join_solicited_nodes(&mut self, gi: usize, join: bool) {
        let addrs: Vec<std::net::Ipv6Addr> = self.groups[gi]
            .vips
            .iter()
            .filter_map(|v| match v.vip.addr {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            })
            .collect();
        if addrs.is_empty() {
            return;
        }
        if self.mcast.is_none() {
            match std::net::UdpSocket::bind("[::]:0") {
                Ok(s) => self.mcast = Some(s),
                Err(e) => {
                    log::error!("opening a socket for multicast membership: {e}");
                    return;
                }
            }
        }
        let Some(sock) = &self.mcast else { return };
        for a in addrs {
            let (group, _) = crate::frames::solicited_node(a);
            let r = if join {
                sock.join_multicast_v6(&group, self.iface.index)
            } else {
                sock.leave_multicast_v6(&group, self.iface.index)
            };
            match r {
                Ok(()) => {}
                // Joining twice or leaving what was never joined: nothing to do.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EADDRINUSE) | Some(libc::EADDRNOTAVAIL) | Some(libc::EINVAL)
                    ) => {}
                Err(e) => log::error!(
                    "group {}: {} solicited-node group {group}: {e}",
                    self.groups[gi].cfg.name,
                    if join { "joining" } else { "leaving" }
                ),
            }
        }
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
        let (name, vips) = (
            self.groups[gi].cfg.name.clone(),
            self.groups[gi].vips.clone(),
        );
        for v in vips.iter() {
            if self.addrs.holds(v.vip.addr) {
                self.addrs.remove(&name, v.vip.addr);
            }
        }
    }

    /// Starts (or restarts) the group's gratuitous ARP / unsolicited NA burst, and the
    /// periodic refresh if configured; every round leaves only while the group's
    /// announcement gate is open (its serving lease runs).
    pub(super) fn announce(&mut self, gi: usize) {
        let g = &mut self.groups[gi];
        g.stop_announcing();
        let addrs: Vec<IpAddr> = g.vips.iter().map(|v| v.vip.addr).collect();
        let (sock, mac, garp, name, refresh, gate) = (
            self.socket.clone(),
            self.iface.mac,
            g.cfg.garp,
            g.cfg.name.clone(),
            g.cfg.garp_refresh,
            g.gate.clone(),
        );
        // The first round leaves from here, now (the socket never blocks); the
        // rest of the burst is timed by a task.
        let frames = garp::frames(mac, &addrs);
        if garp.count > 0 && gate.is_open() {
            garp::send_round(&sock, &frames, &name, &gate);
            if let Some(t) = g
                .takeover
                .as_mut()
                .filter(|t| t.announced_mono_ns.is_none())
            {
                t.announced_mono_ns = Some(host::monotonic_ns());
            }
        }
        g.announcer = Some(tokio::spawn(async move {
            garp::burst_rest(sock.clone(), frames, garp, name.clone(), gate.clone()).await;
            if let Some(every) = refresh {
                loop {
                    tokio::time::sleep(every).await;
                    garp::send_round(&sock, &garp::frames(mac, &addrs), &name, &gate);
                }
            }
        }));
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
