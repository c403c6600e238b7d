//! One group's runtime: its configuration, its state and reason, its VIPs and their
//! counter slots, its driver (its election, for elected groups), its hold on the VIPs
//! (`crate::ownership`: what the data plane holds, the lease, the drains), its health
//! checks and its announcement tasks.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use vip_common::{action, flags, VipEntry};

use super::adverts;
use crate::{
    advert::{Kind, ReplayGuard},
    config::{self, Group},
    driver::Driver,
    election::{Election, Params},
    garp::Gate,
    health::{self, Tracker},
    host,
    mac::Mac,
    netlink::Netlink,
    ownership::{Entries, Holding, Ownership, Terms},
    reason::Reason,
    state::State,
};

/// Where redirected frames go.
#[derive(Debug, Clone, Copy)]
pub(super) struct RedirectTarget {
    pub ifindex: u32,
    pub src_mac: Mac,
    pub dst_mac: Mac,
}

#[derive(Debug, Clone)]
pub(super) struct VipRuntime {
    pub vip: config::Vip,
    pub slot: u32,
}

/// Advertisement problems, counted per group (declared in `counters`).
pub(super) use crate::counters::AdvertErrors;

/// The last transition, for status.
#[derive(Debug, Clone)]
pub(super) struct Transition {
    pub from: State,
    pub reason: Reason,
    pub at: SystemTime,
}

pub(super) struct GroupRuntime {
    pub cfg: Group,
    pub index: u32,
    pub state: State,
    pub reason: Reason,
    pub since: SystemTime,
    pub transitions: u64,
    pub last_transition: Option<Transition>,
    pub redirect: Option<RedirectTarget>,
    /// Shared with status snapshots (cloned on write, which only a reload does).
    pub vips: Arc<Vec<VipRuntime>>,
    /// The announcement burst (and periodic refresh) of a takeover.
    pub announcer: Option<JoinHandle<()>>,
    /// Bursts for VIPs added by a reload while active; stopped with the announcer.
    pub bursts: Vec<JoinHandle<()>>,
    /// Open while the announcements may leave (the serving lease runs).
    pub gate: Gate,
    /// The addresses a takeover asked the address worker for, in the order it adds
    /// them, and how far it is: the announcement of each waits for its address.
    pub pending_addresses: Option<(Vec<std::net::IpAddr>, Arc<crate::addresses::Progress>)>,
    /// When the current takeover's first announcement left.
    pub announced: crate::garp::Stamp,
    /// Announcements a takeover sent ahead of its burst (`Effect::AnnounceFirst`):
    /// the burst's first round goes on from there.
    pub first_announced: usize,
    /// Set once the burst `announce` started has sent its first round: the
    /// solicited-node joins that follow a takeover wait for it
    /// (`Effect::SolicitedNodes`, `Addresses::solicited_nodes`).
    pub first_round: Option<crate::addresses::RoundDone>,
    /// What this node holds of the VIPs, its lease and its timers: every change of
    /// the data plane's view of the group goes through it.
    pub own: Ownership,
    /// What moves the group: its election, its configured role, or keepalived.
    pub driver: Driver,
    pub key: Option<Vec<u8>>,
    pub replay: ReplayGuard,
    pub errors: AdvertErrors,
    pub checks: Vec<(&'static str, Tracker, String)>,
    /// Transitions by "state/reason kind", for metrics.
    pub transition_reasons: BTreeMap<String, u64>,
    /// Health-check tasks, aborted when the group goes away.
    pub tasks: Vec<JoinHandle<()>>,
    /// Active/active: the members and the director's table (`crate::membership`).
    pub balance: Option<crate::membership::Membership>,
    /// The last takeover's timing, for status and the failover benchmark.
    pub takeover: Option<crate::status::TakeoverStatus>,
    /// When the decision that the next takeover carries out was made, if before the
    /// loop saw it (the echo prober decides on its own thread).
    pub decided_ns: Option<u64>,
    /// A routed group's host routes are in vip's table (announced), since then.
    pub routes: Option<SystemTime>,
}

impl GroupRuntime {
    pub fn new(
        cfg: &Group,
        index: u32,
        redirect: Option<RedirectTarget>,
        vips: Vec<VipRuntime>,
        driver: Driver,
        key: Option<Vec<u8>>,
    ) -> Self {
        GroupRuntime {
            cfg: cfg.clone(),
            index,
            state: State::Init,
            reason: Reason::Starting,
            since: SystemTime::now(),
            transitions: 0,
            last_transition: None,
            own: Ownership::new(terms(cfg, redirect.is_some(), driver.election().is_some())),
            gate: if driver.election().is_some() {
                Gate::closed()
            } else {
                Gate::open()
            },
            redirect,
            vips: Arc::new(vips),
            announcer: None,
            pending_addresses: None,
            first_announced: 0,
            first_round: None,
            announced: Default::default(),
            bursts: Vec::new(),
            driver,
            key,
            replay: ReplayGuard::default(),
            errors: AdvertErrors::default(),
            checks: trackers(cfg),
            transition_reasons: BTreeMap::new(),
            tasks: Vec::new(),
            balance: None,
            takeover: None,
            decided_ns: None,
            routes: None,
        }
    }

    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|(_, t, _)| t.state() != Some(false))
    }

    pub fn election(&self) -> Option<&Election> {
        self.driver.election()
    }

    pub fn election_mut(&mut self) -> Option<&mut Election> {
        self.driver.election_mut()
    }

    /// Elected groups hold a data-plane lease (a stalled agent stops answering).
    pub fn leased(&self) -> bool {
        self.election().is_some()
    }

    /// How the group is driven, as status shows it.
    pub fn mode(&self) -> &'static str {
        match self.driver {
            Driver::Elected(_) => "elected",
            Driver::Keepalived(_) => "keepalived",
            Driver::Static(_) => "static",
        }
    }

    /// Stops every announcement in flight (a step-down must not be followed by one).
    pub fn stop_announcing(&mut self) {
        self.first_announced = 0;
        if let Some(h) = self.announcer.take() {
            h.abort();
        }
        for h in self.bursts.drain(..) {
            h.abort();
        }
    }

    /// Records a state change and its reason (logged with the group's first VIPs).
    pub fn set_state(&mut self, state: State, reason: Reason) {
        if self.state != state {
            self.transitions += 1;
            let at = SystemTime::now();
            self.since = at;
            *self
                .transition_reasons
                .entry(format!("{}/{}", state.as_str(), reason.kind()))
                .or_default() += 1;
            log::info!(
                "group {}: {} -> {} ({reason}); VIPs {}",
                self.cfg.name,
                self.state.as_str(),
                state.as_str(),
                vip_list(&self.vips)
            );
            self.last_transition = Some(Transition {
                from: self.state,
                reason: reason.clone(),
                at,
            });
        }
        self.state = state;
        self.reason = reason;
    }

    /// One line per health check, for status and refusals.
    pub fn health_detail(&self) -> String {
        let parts: Vec<String> = self
            .checks
            .iter()
            .map(|(n, t, d)| {
                let s = match t.state() {
                    Some(true) => "ok",
                    Some(false) => "failing",
                    None => "pending",
                };
                if d.is_empty() {
                    format!("{n} {s}")
                } else {
                    format!("{n} {s} ({d})")
                }
            })
            .collect();
        parts.join("; ")
    }

    /// The data-plane entry for one of our VIPs under `plan`, with the handover's
    /// flags (local VIPs only: the sockets of redirected ones live in another
    /// namespace).
    pub fn entry(&self, mac: Mac, v: &VipRuntime, plan: Entries) -> VipEntry {
        let act = match plan {
            Entries::Active { .. } => self.active_action(),
            Entries::Forward { .. } => action::FORWARD,
            Entries::Inert => action::NONE,
        };
        let mut e = VipEntry {
            action: act,
            flags: if self.leased() { flags::LEASED } else { 0 }
                | if self.own.terms().resident {
                    flags::RESIDENT
                } else {
                    0
                },
            stats_index: v.slot,
            group_index: self.index,
            own_mac: mac.0,
            src_mac: mac.0,
            ..Default::default()
        };
        match plan {
            Entries::Active { grace } => {
                if let Some(r) = self.redirect {
                    e.ifindex = r.ifindex;
                    e.src_mac = r.src_mac.0;
                    e.dst_mac = r.dst_mac.0;
                } else {
                    if let Some(b) = &self.balance {
                        e.flags |= self.balanced_flags();
                        e.ifindex = b.slot;
                    }
                    if let Some(old_active) = grace {
                        e.flags |= flags::GRACE;
                        e.dst_mac = old_active.0;
                    }
                }
            }
            Entries::Forward { to, keep } => {
                e.dst_mac = to.0;
                if keep && self.redirect.is_none() {
                    e.flags |= flags::KEEP;
                }
                // A balanced group's member (it holds the VIP on lo) delivers what
                // the group's nodes send it, and forwards to the director only what
                // a client sent it directly (see `flags::BALANCED`).
                if let Some(b) = &self.balance {
                    e.flags |= self.balanced_flags();
                    e.ifindex = b.slot;
                }
            }
            Entries::Inert => {}
        }
        // The group's virtual MAC is the active's, and the draining old active's,
        // which the switch may still send it frames for (see `flags::VIRTUAL_MAC`).
        if let Some(vmac) = self.cfg.virtual_mac {
            if matches!(plan, Entries::Active { .. }) || e.flags & flags::KEEP != 0 {
                e.own_mac = vmac.0;
                e.flags |= flags::VIRTUAL_MAC;
            }
        }
        e
    }

    /// The flags of a balanced group's entries, on the director and the members alike.
    fn balanced_flags(&self) -> u32 {
        let udp = self.cfg.balance.as_ref().map(|b| b.udp);
        flags::BALANCED
            | if udp == Some(crate::config::Udp::AsRouted) {
                flags::UDP_AS_ROUTED
            } else {
                0
            }
    }

    /// The MAC the group's announcements name and come from: its virtual MAC if it
    /// has one, else the node's (`node`).
    pub fn announce_mac(&self, node: Mac) -> Mac {
        self.cfg.virtual_mac.unwrap_or(node)
    }

    /// The entries the group's VIPs should have now (for VIPs a reload adds).
    pub fn current_entries(&self) -> Entries {
        match self.own.holding() {
            Holding::Serving | Holding::Quiet | Holding::Adopted => Entries::Active {
                grace: self.own.grace(),
            },
            Holding::Forwarding(to) => Entries::Forward {
                to,
                keep: self.own.draining(),
            },
            Holding::Nothing => Entries::Inert,
        }
    }

    /// The active we forward to, if we do.
    pub fn forward_to(&self) -> Option<Mac> {
        self.own.forward_to()
    }

    /// The action an active group's VIPs take.
    pub fn active_action(&self) -> u32 {
        if self.redirect.is_some() {
            action::REDIRECT
        } else {
            action::LOCAL
        }
    }
}

/// How a group holds its VIPs, from its config.
pub(super) fn terms(cfg: &Group, redirect: bool, elected: bool) -> Terms {
    let e = cfg.election.as_ref().filter(|_| elected);
    Terms {
        leased: e.is_some(),
        lease: e.map_or(Duration::from_secs(1), |e| e.lease),
        interval: e.map_or(Duration::from_millis(100), |e| e.advert_interval),
        drain: cfg.drain,
        redirect,
        balanced: cfg.balance.is_some(),
        resident: cfg.addresses.is_resident() && elected && !redirect,
        forward_for_drain: !elected && cfg.forward_to.is_none(),
        routed: cfg.announce.bgp(),
        virtual_mac: cfg.virtual_mac.is_some(),
    }
}

/// One rise/fall tracker per configured health check, none reported yet.
pub(super) fn trackers(cfg: &Group) -> Vec<(&'static str, Tracker, String)> {
    let track = &cfg.track;
    let mut checks = Vec::new();
    if bgp_only(cfg) {
        checks.push(("track_bgp", Tracker::new(1, 1), String::new()));
    }
    if track.interface {
        checks.push(("track_interface", Tracker::new(1, 1), String::new()));
    }
    if let Some(c) = &track.script {
        checks.push(("track_script", Tracker::new(c.rise, c.fall), String::new()));
    }
    if let Some(c) = &track.tcp {
        checks.push(("track_tcp", Tracker::new(c.rise, c.fall), String::new()));
    }
    checks
}

/// A group declared only over BGP depends on its sessions (`track_bgp`); one that
/// also announces by ARP is still reachable on its segment without them.
fn bgp_only(cfg: &Group) -> bool {
    cfg.announce == config::Announce::Bgp
}

/// Resolves a redirect interface: its ifindex, its MAC (our source) and the MAC frames
/// are addressed to (configured, or the veth peer's). Changes nothing: the caller
/// makes it a redirect target when it applies the group.
pub(super) fn redirect_target(
    nl: &Netlink,
    group: &str,
    r: &config::Redirect,
    native: bool,
    warnings: &mut Vec<String>,
) -> Result<RedirectTarget> {
    let key = format!("group[{group}].redirect_to");
    let iface = host::interface(&r.interface).with_context(|| key.clone())?;
    let dst_mac = match r.mac {
        Some(m) => m,
        None => {
            let link = nl.link(iface.index, None).with_context(|| key.clone())?;
            let peer = match (link.kind.as_deref(), link.link) {
                (Some("veth"), Some(peer)) => {
                    nl.link(peer, link.link_netnsid).ok().and_then(|l| l.mac)
                }
                _ => None,
            };
            peer.with_context(|| {
                format!(
                    "{key}: cannot discover the MAC behind `{}` (not a veth, or its peer is unreachable); set redirect_mac",
                    r.interface
                )
            })?
        }
    };
    // Generic mode transmits through the stack, which delivers into a veth; only a
    // native data plane needs the peer's XDP program.
    if native && iface.kind.as_deref() == Some("veth") {
        warnings.push(format!(
            "redirect target {} is a veth: redirected frames reach its peer only if the peer has an XDP program (`vip xdp-pass PEER`)",
            iface.name
        ));
    }
    Ok(RedirectTarget {
        ifindex: iface.index,
        src_mac: iface.mac,
        dst_mac,
    })
}

/// A group's life in the agent: created in its starting state, removed with its VIPs.
impl super::Agent {
    /// Entries an earlier agent left for VIPs this config no longer has.
    pub(super) fn remove_stale_entries(&mut self, groups: &[Group]) {
        let wanted: BTreeSet<IpAddr> = groups
            .iter()
            .flat_map(|g| g.vips.iter().map(|v| v.addr))
            .collect();
        for addr in self.dp.vip_addrs() {
            if !wanted.contains(&addr) {
                log::info!("removing the entry for {addr}, which is no longer configured");
                if let Err(e) = self.dp.remove_vip(addr) {
                    log::warn!("removing the stale entry for {addr}: {e:#}");
                }
                self.addrs.remove("(no longer configured)", addr);
            }
        }
    }

    /// A free counter slot, searched from after the last one given (so a group of
    /// 20,000 VIPs takes linear, not quadratic, time).
    pub(super) fn alloc_slot(&mut self) -> Result<u32> {
        let max = self.cfg.node.max_vips;
        let hint = self.slot_hint.min(max);
        let slot = (hint..max)
            .chain(0..hint)
            .find(|s| !self.slots.contains(s))
            .context("no free counter slot (node.max_vips)")?;
        self.slots.insert(slot);
        self.slot_hint = slot + 1;
        Ok(slot)
    }

    pub(super) fn alloc_balance_slot(&self) -> Result<u32> {
        let used: BTreeSet<u32> = self
            .groups
            .iter()
            .filter_map(|g| g.balance.as_ref().map(|b| b.slot))
            .collect();
        (0..vip_common::balance_maps::MAX_BALANCED_GROUPS)
            .find(|i| !used.contains(i))
            .context("too many balanced groups")
    }

    /// A free group index (its lease and echo slot), `preferred` if it is free.
    pub(super) fn alloc_group_index(&self, preferred: Option<u32>) -> Result<u32> {
        let used: BTreeSet<u32> = self.groups.iter().map(|g| g.index).collect();
        preferred
            .filter(|p| *p < vip_common::MAX_GROUPS && !used.contains(p))
            .into_iter()
            .chain(0..vip_common::MAX_GROUPS)
            .find(|i| !used.contains(i))
            .context("too many groups")
    }

    /// Creates a group's runtime and puts it in its starting state. `previous` holds
    /// the entries an adopted data plane had for its VIPs.
    pub(super) fn add_group(
        &mut self,
        g: &Group,
        key: Option<Vec<u8>>,
        previous: &HashMap<IpAddr, VipEntry>,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        let now = Instant::now();
        let redirect = match &g.redirect {
            Some(r) => {
                let native = self
                    .dp
                    .xdp_choice()
                    .is_none_or(|c| c.mode == config::XdpMode::Native);
                let t = redirect_target(&self.nl, &g.name, r, native, warnings)?;
                self.dp
                    .add_redirect_target(t.ifindex)
                    .with_context(|| format!("group[{}].redirect_to", g.name))?;
                Some(t)
            }
            None => None,
        };
        let mut vips = Vec::new();
        let mut was_active = !g.vips.is_empty();
        for v in &g.vips {
            let slot = match previous.get(&v.addr) {
                Some(e) => e.stats_index,
                None => {
                    let slot = self.alloc_slot()?;
                    self.dp.reset_stats(slot)?;
                    slot
                }
            };
            was_active &= previous
                .get(&v.addr)
                .is_some_and(|e| e.action == action::LOCAL || e.action == action::REDIRECT);
            vips.push(VipRuntime { vip: *v, slot });
        }
        let driver = match &g.election {
            Some(e) => Driver::Elected(Box::new(Election::new(self.election_params(g, e)?))),
            None => Driver::for_group(g),
        };
        // An adopted group keeps the lease slot its entries use.
        let adopted_index = g
            .vips
            .first()
            .and_then(|v| previous.get(&v.addr))
            .map(|e| e.group_index)
            .filter(|i| {
                g.vips
                    .iter()
                    .all(|v| previous.get(&v.addr).is_some_and(|e| e.group_index == *i))
            });
        let index = self.alloc_group_index(adopted_index)?;
        // An elected group was the owner only if its lease still runs: one that ran
        // out (the agent was killed, or stopped, past it) was perhaps taken by a
        // standby meanwhile, and the data plane already stopped answering.
        let adopted_lease = match (&driver, was_active) {
            // A quiet one had begun a handover: not ours to resume either.
            (Driver::Elected(_), true) if !self.dp.quiet(index).unwrap_or(true) => self
                .dp
                .lease(index)
                .ok()
                .filter(|d| *d > host::boottime_ns()),
            _ => None,
        };
        if matches!(driver, Driver::Elected(_)) {
            was_active &= adopted_lease.is_some();
        }
        let membership = match (&g.balance, &g.election, driver.election()) {
            (Some(b), Some(e), Some(el)) => Some(
                crate::membership::Membership::new(
                    el.params().me,
                    self.iface.mac,
                    &e.peers,
                    e.advert_interval,
                    self.alloc_balance_slot()?,
                    b.ports.clone(),
                )
                .with_routed(|a| !super::peers::on_link(&self.iface, a)),
            ),
            _ => None,
        };
        if let Some(vmac) = g.virtual_mac {
            if self
                .dp
                .xdp_choice()
                .is_some_and(crate::xdpmode::Choice::classifies_before_xdp)
            {
                self.dp
                    .readdress_by_cpu()
                    .with_context(|| format!("group[{}].mac", g.name))?;
            }
            // Taken whatever the role: a NIC's filter has it before a takeover needs it.
            self.nl
                .add_unicast_mac(self.iface.index, vmac)
                .with_context(|| {
                    format!(
                        "group[{}].mac: adding {vmac} to {}",
                        g.name, self.iface.name
                    )
                })?;
        }
        let mut runtime = GroupRuntime::new(g, index, redirect, vips, driver, key);
        runtime.balance = membership;
        self.groups.push(runtime);
        let gi = self.groups.len() - 1;
        self.spawn_checks(gi);
        if let Some(deadline) = adopted_lease {
            log::info!(
                "group {}: adopted its serving data plane, lease {} ms left: listening for the current owner before renewing it",
                g.name,
                deadline.saturating_sub(host::boottime_ns()) / 1_000_000
            );
            let fx = self.groups[gi].own.adopt(deadline, host::boottime_ns());
            self.exec(gi, fx)?;
        }
        let actions = self.groups[gi].driver.start(was_active, now);
        self.carry_out(gi, actions)
    }

    /// Takes a group's virtual MAC off the interface's unicast filter (what
    /// `add_group` put there); a failure is logged.
    pub(super) fn drop_virtual_mac(&self, g: &Group) {
        let Some(vmac) = g.virtual_mac else { return };
        if let Err(e) = self.nl.del_unicast_mac(self.iface.index, vmac) {
            log::warn!(
                "group {}: removing {vmac} from {}: {e}",
                g.name,
                self.iface.name
            );
        }
    }

    pub(super) fn election_params(&self, g: &Group, e: &config::Election) -> Result<Params> {
        let me =
            adverts::primary_address(&self.iface, e.peers[0].is_ipv4()).with_context(|| {
                format!(
                    "group[{}].peers: interface {} has no address of the peers' family",
                    g.name, self.iface.name
                )
            })?;
        Ok(Params {
            priority: e.priority,
            interval: e.advert_interval,
            preempt: e.preempt,
            preempt_delay: e.preempt_delay,
            me,
            echo_skew: Params::echo_skew_for(e.priority, e.echo_interval, e.peers.len()),
            echo_window: e.echo_interval * e.echo_misses,
        })
    }

    /// Removes a group: gives its VIPs up (a release lets a standby take over at once),
    /// frees its slots and stops its tasks.
    pub(super) fn remove_group(&mut self, gi: usize) {
        if self.groups[gi].state == State::Active && self.groups[gi].election().is_some() {
            // Stop answering before the standbys hear they may take over.
            let fx = self.groups[gi].own.quiesce();
            if let Err(e) = self.exec(gi, fx) {
                log::error!("group {}: {e:#}", self.groups[gi].cfg.name);
            }
            self.send_advert(gi, Kind::Release);
        }
        // Its routes go before its entries stop serving.
        self.withdraw_routes(gi);
        if self.groups[gi].leased() {
            if let Err(e) = self.dp.revoke_lease(self.groups[gi].index) {
                log::warn!(
                    "group {}: revoking its lease: {e:#}",
                    self.groups[gi].cfg.name
                );
            }
        }
        let mut g = self.groups.remove(gi);
        g.stop_announcing();
        self.drop_virtual_mac(&g.cfg);
        // Its balance slot may go to another group: its nodes must not stay nodes.
        if let Some(b) = &g.balance {
            if let Err(e) = self.dp.set_balance_nodes(b.slot, &b.programmed_nodes, &[]) {
                log::warn!("group {}: removing its balance nodes: {e:#}", g.cfg.name);
            }
        }
        for t in g.tasks.drain(..) {
            t.abort();
        }
        for v in g.vips.iter() {
            if let Err(e) = self.dp.remove_vip(v.vip.addr) {
                log::warn!(
                    "group {}: removing map entry {}: {e:#}",
                    g.cfg.name,
                    v.vip.addr
                );
            }
            self.addrs.remove(&g.cfg.name, v.vip.addr);
            self.slots.remove(&v.slot);
        }
        log::info!("group {}: removed", g.cfg.name);
    }

    /// Starts the health-check tasks of one group (none before `spawn_helpers`).
    pub(super) fn spawn_checks(&mut self, gi: usize) {
        let Some(htx) = self.health_tx.clone() else {
            return;
        };
        let g = &mut self.groups[gi];
        for t in g.tasks.drain(..) {
            t.abort();
        }
        let name = g.cfg.name.clone();
        if g.cfg.track.interface {
            let poll = g
                .cfg
                .election
                .as_ref()
                .map(|e| e.advert_interval)
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            g.tasks.push(tokio::spawn(health::run_interface(
                name.clone(),
                self.iface.name.clone(),
                poll,
                htx.clone(),
            )));
        }
        if let Some(c) = &g.cfg.track.script {
            g.tasks.push(tokio::spawn(health::run_script(
                name.clone(),
                c.clone(),
                htx.clone(),
            )));
        }
        if let (true, Some(src)) = (bgp_only(&g.cfg), self.speaker_status.clone()) {
            // As often as the interface's state: a dead speaker is a dead link.
            let every = g
                .cfg
                .election
                .as_ref()
                .map_or(Duration::from_millis(100), |e| e.advert_interval)
                .min(Duration::from_millis(100));
            g.tasks.push(tokio::spawn(health::run_bgp(
                name.clone(),
                src,
                every,
                htx.clone(),
            )));
        }
        if let Some(c) = &g.cfg.track.tcp {
            g.tasks
                .push(tokio::spawn(health::run_tcp(name, c.clone(), htx)));
        }
    }

    pub(super) fn group_index(&self, name: &str) -> Result<usize, String> {
        self.groups
            .iter()
            .position(|g| g.cfg.name == name)
            .ok_or_else(|| {
                let names: Vec<_> = self.groups.iter().map(|g| g.cfg.name.as_str()).collect();
                format!("no group named `{name}` (groups: {})", names.join(", "))
            })
    }
}

/// How many VIPs a state change's log line names: a line per transition must stay a
/// line (10,000 VIPs would be 170 KB, formatted on the loop).
const LOGGED_VIPS: usize = 8;

/// The group's first [`LOGGED_VIPS`] VIPs, and how many more there are.
fn vip_list(vips: &[VipRuntime]) -> String {
    let mut s: Vec<String> = vips
        .iter()
        .take(LOGGED_VIPS)
        .map(|v| v.vip.to_string())
        .collect();
    if vips.len() > LOGGED_VIPS {
        s.push(format!("and {} more", vips.len() - LOGGED_VIPS));
    }
    s.join(", ")
}
