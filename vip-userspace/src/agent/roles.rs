//! Taking and giving up a group's VIPs, in the order that keeps one owner: a
//! takeover programs the lease and the entries first (the data plane answers from
//! that instant), then the addresses on lo, then the announcements; a step-down stops
//! the announcements and changes the entries first (we stop answering at once, or
//! forward to the new active), then removes the addresses, at the end of the drain
//! when it hands over to a successor (they are on lo, never announced).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use vip_common::{action, VipEntry};

use super::Agent;
use crate::{
    election::{Action, State},
    garp, host,
    mac::Mac,
    reason::Reason,
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
            match a {
                Action::TakeOver { reason } => self.activate(gi, reason),
                Action::StepDown { forward_to, reason } => self.step_down(gi, forward_to, reason),
                Action::Fault { reason } => self.deactivate(gi, State::Fault, None, reason),
                Action::Wait { reason } => self.deactivate(gi, State::Init, None, reason),
                Action::Recover { reason } => {
                    self.groups[gi].set_state(State::Standby, reason);
                    Ok(())
                }
                Action::ForwardTo(mac) => {
                    if self.groups[gi].state == State::Standby
                        && self.groups[gi].drain_until.is_none()
                    {
                        self.groups[gi].forward_to = mac;
                        self.set_entries(gi, mac)
                    } else {
                        Ok(())
                    }
                }
                Action::Send(kind) => {
                    self.send_advert(gi, kind);
                    Ok(())
                }
                Action::Reannounce => {
                    self.announce(gi);
                    Ok(())
                }
            }?;
        }
        Ok(())
    }

    /// Standby entries: forward to `mac`, or inert. A balanced member's forward
    /// entry needs the node MACs (what they send is delivered): written first, and
    /// a failure there never keeps the entries from following the election.
    pub(super) fn set_entries(&mut self, gi: usize, mac: Option<Mac>) -> Result<()> {
        if let Err(e) = self.program_balance_nodes(gi) {
            log::error!("group {}: {e:#}", self.groups[gi].cfg.name);
        }
        let g = &self.groups[gi];
        let act = if mac.is_some() {
            action::FORWARD
        } else {
            action::NONE
        };
        let entries: Vec<(IpAddr, VipEntry)> = g
            .vips
            .iter()
            .map(|v| (v.vip.addr, g.entry(self.iface.mac, v, act, mac)))
            .collect();
        if mac.is_some() && g.leased() {
            let lease = self.lease_of(gi);
            self.dp
                .set_lease(g.index, host::monotonic_ns() + lease.as_nanos() as u64)?;
        }
        self.dp
            .set_vips_batch(&entries)
            .with_context(|| format!("group {}: programming its VIPs", g.cfg.name))?;
        Ok(())
    }

    pub(super) fn lease_of(&self, gi: usize) -> Duration {
        self.groups[gi]
            .cfg
            .election
            .as_ref()
            .map(|e| e.lease)
            .unwrap_or(Duration::from_secs(1))
    }

    /// Keeps the data plane's leases alive for groups that act (active, or forwarding).
    pub(super) fn renew_leases(&mut self) {
        let now = host::monotonic_ns();
        for gi in 0..self.groups.len() {
            let g = &self.groups[gi];
            if !g.leased() || !(g.state == State::Active || g.forward_to.is_some()) {
                continue;
            }
            let deadline = now + self.lease_of(gi).as_nanos() as u64;
            let index = g.index;
            if let Err(e) = self.dp.set_lease(index, deadline) {
                log::error!("group {}: renewing the lease: {e:#}", g.cfg.name);
            } else {
                self.groups[gi].lease_deadline = Some(deadline);
            }
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

    /// Takes the group's VIPs: lease and entries, then addresses, then announcements.
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
        let g = &self.groups[gi];
        let act = g.active_action();
        let drain = g.cfg.drain;
        self.groups[gi].grace_until = match g.election().and_then(|e| e.predecessor()) {
            // A balanced group's director hands flows to members by its table (the
            // old director, now a member, keeps its own), never by socket lookups.
            Some(old_active) if act == action::LOCAL && !drain.is_zero() && g.balance.is_none() => {
                Some((Instant::now() + drain, old_active))
            }
            _ => None,
        };
        let g = &self.groups[gi];
        if let Some((_, old_active)) = g.grace_until {
            log::info!(
                "group {}: TCP connections of the old active ({old_active}) stay with it for {} ms",
                g.cfg.name,
                drain.as_millis()
            );
        }
        if g.leased() {
            let lease = self.lease_of(gi);
            self.dp
                .set_lease(g.index, host::monotonic_ns() + lease.as_nanos() as u64)?;
        }
        // The director's table before the entries that use it.
        self.program_balance(gi)?;
        self.set_active_entries(gi)?;
        let g = &self.groups[gi];
        let act = g.active_action();
        if act == action::LOCAL {
            let (name, vips) = (g.cfg.name.clone(), g.vips.clone());
            for v in vips.iter() {
                self.addrs.add(&name, v.vip.addr);
            }
        }
        self.join_solicited_nodes(gi, true);
        self.groups[gi].forward_to = None;
        self.groups[gi].drain_until = None;
        self.groups[gi].addrs_until = None;
        self.groups[gi].set_state(State::Active, reason);
        self.announce(gi);
        Ok(())
    }

    /// Active entries for every VIP of the group (with `GRACE` while it runs).
    pub(super) fn set_active_entries(&mut self, gi: usize) -> Result<()> {
        let g = &self.groups[gi];
        let act = g.active_action();
        let entries: Vec<(IpAddr, VipEntry)> = g
            .vips
            .iter()
            .map(|v| (v.vip.addr, g.entry(self.iface.mac, v, act, None)))
            .collect();
        self.dp
            .set_vips_batch(&entries)
            .with_context(|| format!("group {}: programming its VIPs", g.cfg.name))
    }

    /// A step-down decided by the election: towards a known successor, forward for
    /// the drain period (and as long as it keeps advertising), else inert.
    pub(super) fn step_down(
        &mut self,
        gi: usize,
        forward_to: Option<Mac>,
        reason: Reason,
    ) -> Result<()> {
        self.deactivate(gi, State::Standby, forward_to, reason)
    }

    /// Gives the group's VIPs up: stop answering (or forward to `forward_to`), then
    /// remove the addresses.
    pub fn deactivate(
        &mut self,
        gi: usize,
        state: State,
        forward_to: Option<Mac>,
        reason: Reason,
    ) -> Result<()> {
        self.groups[gi].stop_announcing();
        let was_active = self.groups[gi].state == State::Active;
        if was_active {
            self.join_solicited_nodes(gi, false);
        }
        let forward_to = if state == State::Fault {
            None
        } else {
            forward_to
        };
        self.groups[gi].forward_to = forward_to;
        self.groups[gi].grace_until = None;
        let drain = self.groups[gi].cfg.drain;
        // New traffic is forwarded to the successor from now on; what our stack
        // already accepted still finds its address until the drain ends, and the
        // data plane passes it the packets of its connections (`flags::KEEP`).
        let drains = was_active && forward_to.is_some() && !drain.is_zero();
        self.groups[gi].addrs_until = drains.then(|| Instant::now() + drain);
        self.set_entries(gi, forward_to)?;
        // A balanced group's standby is a member: it keeps the VIP on lo.
        let member = self.groups[gi].balance.is_some() && state == State::Standby;
        if !drains && !member {
            self.release_addresses(gi);
        }
        let g = &self.groups[gi];
        // Static groups forward only for the drain period after giving the VIP up,
        // unless the config asks for it permanently.
        if was_active
            && forward_to.is_some()
            && g.election().is_none()
            && g.cfg.forward_to.is_none()
        {
            self.groups[gi].drain_until = Some(Instant::now() + g.cfg.drain);
        }
        self.groups[gi].set_state(state, reason);
        Ok(())
    }

    /// Removes the group's VIP addresses (the group no longer holds its VIPs).
    pub(super) fn release_addresses(&mut self, gi: usize) {
        self.groups[gi].addrs_until = None;
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
    /// periodic refresh if configured.
    pub(super) fn announce(&mut self, gi: usize) {
        let g = &mut self.groups[gi];
        g.stop_announcing();
        let addrs: Vec<IpAddr> = g.vips.iter().map(|v| v.vip.addr).collect();
        let (sock, mac, garp, name, refresh) = (
            self.socket.clone(),
            self.iface.mac,
            g.cfg.garp,
            g.cfg.name.clone(),
            g.cfg.garp_refresh,
        );
        // The first round leaves from here, now (the socket never blocks); the
        // rest of the burst is timed by a task.
        let frames = garp::frames(mac, &addrs);
        if garp.count > 0 {
            garp::send_round(&sock, &frames, &name);
            if let Some(t) = g
                .takeover
                .as_mut()
                .filter(|t| t.announced_mono_ns.is_none())
            {
                t.announced_mono_ns = Some(host::monotonic_ns());
            }
        }
        g.announcer = Some(tokio::spawn(async move {
            garp::burst_rest(sock.clone(), frames, garp, name.clone()).await;
            if let Some(every) = refresh {
                loop {
                    tokio::time::sleep(every).await;
                    garp::send_round(&sock, &garp::frames(mac, &addrs), &name);
                }
            }
        }));
    }
}
