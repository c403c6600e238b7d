//! The agent's side of BGP announcements: starting the speaker (or finding the one a
//! previous agent left), telling its guard how long the routes may stay (our leases),
//! and what happens when the guard withdrew them without us. What is announced when
//! is decided in `ownership` (`Effect::Announce`, `Effect::Withdraw`) and carried out
//! in `effects`.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use super::{effects::Writes, Agent, Event};
use crate::{
    config::Bgp,
    host::Interface,
    ownership::Holding,
    speaker::{guard::FOREVER, Bird, Speaker},
};

/// The most a route's hold ends before the lease it covers: the guard withdraws it
/// this much ahead, so the router hears the withdrawal before the data plane stops
/// serving. Half an advertisement interval at most, as leases are renewed at every
/// advertisement.
const WITHDRAW_AHEAD: Duration = Duration::from_millis(10);

/// How long a stopping agent goes on forwarding after it withdrew its routes: the
/// routers' time to act on a withdrawal (FRR took 60-100 ms in the lab: bgpd's 50 ms
/// work-queue hold, then zebra's), with a margin.
pub(super) const WITHDRAW_SETTLE: Duration = Duration::from_millis(300);

/// The router ID: `bgp.router_id`, or the interface's first IPv4 address.
pub(super) fn router_id(bgp: &Bgp, iface: &Interface) -> Result<Ipv4Addr> {
    if let Some(r) = bgp.router_id {
        return Ok(r);
    }
    iface
        .addrs
        .iter()
        .find_map(|(a, _)| match a {
            std::net::IpAddr::V4(v) => Some(*v),
            _ => None,
        })
        .with_context(|| {
            format!(
                "bgp.router_id: not set, and {} has no IPv4 address",
                iface.name
            )
        })
}

/// The interface keeps its IPv6 addresses over a link flap
/// (`net.ipv6.conf.IF.keep_addr_on_down = 1`): BIRD sends IPv6 routes with the
/// interface's global address as their next hop, and the kernel otherwise deletes it
/// when the link goes down, so after the link came back the node would announce no
/// IPv6 VIP at all (BIRD: "Missing next hop address"). A failure is logged: IPv4
/// announcements do not need it.
fn keep_ipv6_addresses(iface: &Interface) {
    let path = format!("net/ipv6/conf/{}/keep_addr_on_down", iface.name);
    match crate::host::get_sysctl(&path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(v) => match crate::host::set_sysctl(&path, "1") {
            Ok(()) => log::info!(
                "net.ipv6.conf.{}.keep_addr_on_down {} -> 1 (BGP: IPv6 routes need the interface's address as next hop)",
                iface.name,
                v.trim()
            ),
            Err(e) => log::warn!("BGP: {e}; IPv6 VIPs are not announced after a link flap"),
        },
        Err(e) => log::warn!("BGP: {e}"),
    }
}

impl Agent {
    /// Starts the speaker for `[bgp]`; `fresh`: no adopted data plane, so routes an
    /// earlier agent left are withdrawn (nothing here serves them yet).
    pub(super) fn start_speaker(&mut self, fresh: bool) -> Result<()> {
        let Some(bgp) = self.cfg.bgp.clone() else {
            return Ok(());
        };
        let rid = router_id(&bgp, &self.iface)?;
        keep_ipv6_addresses(&self.iface);
        let bird = Bird::start(&bgp, rid, fresh).context("starting the BGP speaker")?;
        log::info!(
            "BGP: AS {} (router ID {rid}), {} neighbour(s), routes in table {}",
            bgp.local_as,
            bgp.neighbors.len(),
            bgp.route_table
        );
        self.speaker_status = Some(bird.status_source());
        self.speaker = Some(Box::new(bird));
        Ok(())
    }

    /// A reload's `[bgp]`: None when it did not change; the new one (and its router
    /// ID) when the running speaker can take it in place, once BIRD has parsed the
    /// config it would get. Adding or removing `[bgp]`, or moving its table, binary
    /// or directory, needs a restart (refused, nothing changed).
    pub(super) fn plan_bgp(
        &self,
        new: &crate::config::Config,
        iface: &Interface,
    ) -> Result<Option<(Bgp, Ipv4Addr)>> {
        match (&self.cfg.bgp, &new.bgp) {
            (None, None) => Ok(None),
            (Some(a), Some(b)) if a == b => Ok(None),
            (Some(a), Some(b))
                if a.route_table == b.route_table
                    && a.speaker_bin == b.speaker_bin
                    && a.speaker_dir == b.speaker_dir =>
            {
                let rid = router_id(b, iface)?;
                crate::speaker::check_config(b, rid)?;
                Ok(Some((b.clone(), rid)))
            }
            _ => anyhow::bail!(
                "bgp changed in a way the running speaker cannot take ([bgp] added or removed, or its route_table, speaker_bin or speaker_dir): that needs a restart of the agent; nothing was changed"
            ),
        }
    }

    /// Gives the running speaker a reload's `[bgp]` (BIRD reconfigures: sessions
    /// whose settings did not change stay up); the routes are untouched. The groups
    /// announced only over BGP check the new neighbours from now on.
    pub(super) fn reconfigure_speaker(&mut self, bgp: &Bgp, rid: Ipv4Addr) -> String {
        let Some(sp) = self.speaker.as_mut() else {
            return "bgp: no speaker running".into();
        };
        let said = match sp.reconfigure(bgp, rid) {
            Ok(()) => "bgp: the speaker took the new [bgp] in place".to_string(),
            Err(e) => {
                log::error!("reload: BGP: {e:#}");
                format!("bgp: reconfiguring the speaker failed: {e:#}")
            }
        };
        self.speaker_status = Some(sp.status_source());
        for gi in 0..self.groups.len() {
            if self.groups[gi].cfg.announce == crate::config::Announce::Bgp {
                self.spawn_checks(gi);
            }
        }
        said
    }

    /// After the groups started: an adopted group that holds its VIPs keeps the
    /// routes a previous agent announced; every other route in the table that no group
    /// announced since goes.
    pub(super) fn adopt_routes(&mut self) {
        let Some(sp) = self.speaker.as_mut() else {
            return;
        };
        let Ok(announced) = sp.announced() else {
            return;
        };
        let mut stale = Vec::new();
        for a in announced {
            let owner = self
                .groups
                .iter_mut()
                .find(|g| g.cfg.announce.bgp() && g.vips.iter().any(|v| v.vip.addr == a));
            match owner {
                // Announced by this agent already (a static active group).
                Some(g) if g.routes.is_some() => {}
                Some(g) if g.own.holding() == Holding::Adopted => {
                    g.routes.get_or_insert_with(std::time::SystemTime::now);
                }
                _ => stale.push(a),
            }
        }
        if !stale.is_empty() {
            log::info!(
                "BGP: withdrawing {} routes no group here serves",
                stale.len()
            );
            if let Err(e) = sp.withdraw(&stale) {
                log::error!("BGP: {e:#}");
            }
        }
    }

    /// Starts the thread that hears the guard's `flushed`.
    pub(super) fn watch_speaker(&self, tx: &mpsc::Sender<Event>) {
        let Some(sp) = self.speaker.as_ref() else {
            return;
        };
        let tx = tx.clone();
        if let Err(e) = sp.watch(Box::new(move || {
            let _ = tx.blocking_send(Event::SpeakerFlushed);
        })) {
            log::error!("BGP: watching the speaker's guard: {e:#}");
        }
    }

    /// Tells the guard until when the announced routes may stay: the earliest end of
    /// a lease among the groups that announce (less [`WITHDRAW_AHEAD`]); no limit
    /// when only unleased (static, keepalived) groups announce.
    pub(super) fn hold_routes(&mut self) {
        let Some(sp) = self.speaker.as_mut() else {
            return;
        };
        let mut until = FOREVER;
        for g in self
            .groups
            .iter()
            .filter(|g| g.routes.is_some() && g.leased())
        {
            let ahead = g.cfg.election.as_ref().map_or(WITHDRAW_AHEAD, |e| {
                (e.advert_interval / 2).min(WITHDRAW_AHEAD)
            });
            // An announced group without a lease: nothing vouches for its routes.
            let end = g.own.lease().deadline().unwrap_or(0);
            until = until.min(end.saturating_sub(ahead.as_nanos() as u64));
        }
        sp.hold(until);
    }

    /// A stopping agent's last routes go (its drain is over); true when any routed
    /// group had been announcing since the stop began, so the routers need time.
    pub(super) fn withdraw_all_routes(&mut self) -> bool {
        let mut any = false;
        for gi in 0..self.groups.len() {
            if !self.groups[gi].cfg.announce.bgp() {
                continue;
            }
            any |= self.groups[gi].routes.is_some() || self.groups[gi].own.forward_to().is_some();
            self.withdraw_routes(gi);
        }
        any
    }

    /// The lease of a routed group was lost: its routes go now (the guard has withdrawn
    /// them already if the loop stalled past their hold).
    pub(super) fn withdraw_routes(&mut self, gi: usize) {
        if self.groups[gi].routes.is_none() {
            return;
        }
        let (mut kernel, groups) = self.kernel();
        kernel.routes(&mut groups[gi], false);
    }

    /// A takeover's addresses are in place: its routes go out, if it still serves.
    pub(super) fn routes_ready(&mut self, group: &str) {
        let Some(gi) = self.groups.iter().position(|g| g.cfg.name == group) else {
            return;
        };
        let g = &self.groups[gi];
        if g.own.holding() != Holding::Serving || (g.leased() && !g.gate.is_open()) {
            return;
        }
        let (mut kernel, groups) = self.kernel();
        kernel.routes(&mut groups[gi], true);
    }

    /// Some VIPs of a group whose routes are announced (a reload added or removed
    /// them): announced or withdrawn with the rest.
    pub(super) fn some_routes(&mut self, gi: usize, vips: &[std::net::IpAddr], announce: bool) {
        if self.groups[gi].routes.is_none() || vips.is_empty() {
            return;
        }
        let Some(sp) = self.speaker.as_mut() else {
            return;
        };
        let r = if announce {
            sp.announce(vips)
        } else {
            sp.withdraw(vips)
        };
        if let Err(e) = r {
            log::error!("group {}: BGP: {e:#}", self.groups[gi].cfg.name);
        }
    }

    /// The guard withdrew every route (our hold ran out: the loop stalled). Groups
    /// whose lease still runs announce again; the others did lose theirs, and
    /// announce only from a new takeover.
    pub(super) fn speaker_flushed(&mut self) {
        log::warn!("BGP: the speaker's guard withdrew every route (the agent missed its hold)");
        let boot = crate::host::boottime_ns();
        for gi in 0..self.groups.len() {
            if self.groups[gi].routes.take().is_none() {
                continue;
            }
            let g = &self.groups[gi];
            let serving = g.own.holding() == Holding::Serving && g.own.lease().runs(boot);
            // An anycast member announces while it forwards to the director.
            let member = g.balance.is_some() && g.own.forward_to().is_some();
            if serving || member || !g.leased() {
                let (mut kernel, groups) = self.kernel();
                kernel.routes(&mut groups[gi], true);
            }
        }
    }
}
