//! Reload: plan, then apply. Everything that can fail without touching the host is
//! resolved first (the file, host checks, keys, interfaces and MACs, election
//! parameters, capacity); then groups are added, updated, and only last removed, and
//! if an apply step still fails, what was applied is rolled back.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use super::{
    check_config, effects,
    group::{terms, trackers},
    parse_config, Agent, VipRuntime,
};
use crate::{
    config::{self, Config, Group},
    garp,
    host::{self, Interface},
    ownership::Holding,
};

/// A failure injected by the tests: `VIP_FAILPOINTS=reload-apply` makes the apply
/// step fail after its first change, to prove the rollback.
fn failpoint(name: &str) -> Result<()> {
    if std::env::var("VIP_FAILPOINTS").is_ok_and(|v| v.split(',').any(|f| f == name)) {
        bail!("failpoint {name} (VIP_FAILPOINTS)");
    }
    Ok(())
}

/// What a reload will do, resolved before anything changes.
pub(super) struct Plan {
    new: Config,
    iface: Interface,
    warnings: Vec<String>,
    keys: HashMap<String, Vec<u8>>,
    /// Groups whose name is new.
    add: Vec<Group>,
    /// Groups of the same kind whose settings or VIPs changed.
    update: Vec<Group>,
    /// Groups whose kind changed (static / elected / keepalived, redirect, role):
    /// removed, then added anew.
    replace: Vec<Group>,
    /// Groups gone from the config.
    remove: Vec<String>,
    /// Who may reach the election's port under the new config.
    peers: super::peers::Plan,
    /// A changed `[bgp]` the running speaker takes in place (BIRD checked it).
    bgp: Option<(crate::config::Bgp, std::net::Ipv4Addr)>,
}

/// A group's kind: what cannot change in place.
fn kind(g: &Group) -> impl PartialEq {
    (
        g.election.is_some(),
        g.keepalived_instance.clone(),
        g.redirect.clone(),
        g.role,
        // Announced another way: the group starts anew (its routes withdrawn with it).
        g.announce,
        // Another virtual MAC: anew too (clients learn the new one from its takeover).
        g.virtual_mac,
        // IPv6 VIPs made local another way: taken out one way, in the other.
        g.ipv6_local,
    )
}

impl Plan {
    /// A group of the new config that balances, if any.
    pub(super) fn new_balanced(&self) -> Option<String> {
        self.new
            .groups
            .iter()
            .find(|g| g.balance.is_some())
            .map(|g| g.name.clone())
    }

    /// The tunnel address the new config's data plane needs (`Settings::tunnel_src`).
    pub(super) fn tunnel_src(&self, iface: &crate::host::Interface) -> u32 {
        super::active_active::tunnel_src(&self.new, iface)
    }
}

/// A reload's config as read from its file (with the command line's overrides), and
/// the same checked against this host: the parts of a reload that take time with a
/// big config (parsing 30,000 VIPs, comparing them with the host's addresses), made
/// off the loop so the adverts do not wait for them. The loop then compares it with
/// what runs ([`Agent::plan`]).
pub(super) type Read = Result<(Config, Result<super::Checked>)>;

/// Reads and checks the config file: no state of the agent, any thread.
pub(super) fn read(opts: &super::Options) -> Read {
    let cfg = parse_config(opts)?;
    let checked = check_config(cfg.clone());
    Ok((cfg, checked))
}

impl Agent {
    /// A reload turned `addresses = "resident"` on or off for a group: the entries
    /// carry the flag that drops what they do not serve, and the addresses follow,
    /// in the order that never lets the kernel accept what the node does not serve
    /// (on: entries first, then the addresses; off: the addresses go first unless the
    /// node holds the VIPs now, then the entries).
    fn change_residence(&mut self, gi: usize, resident: bool) -> Result<()> {
        let plan = self.groups[gi].current_entries();
        let holds_vips = matches!(
            self.groups[gi].own.holding(),
            Holding::Serving | Holding::Quiet | Holding::Adopted
        ) || self.groups[gi].own.draining();
        if resident {
            self.program_entries(gi, plan, None)?;
            let (mut kernel, groups) = self.kernel();
            effects::Writes::add_addresses(&mut kernel, &mut groups[gi]);
        } else {
            if !holds_vips {
                self.release_addresses(gi);
            }
            self.program_entries(gi, plan, None)?;
        }
        Ok(())
    }

    /// Validates the new config (read and checked against the host by [`read`], off
    /// the loop) and resolves everything that can fail.
    pub(super) fn plan(&self, read: Read) -> Result<Plan> {
        let (new, checked) = read?;
        let (a, b) = (&self.cfg.node, &new.node);
        let fixed = [
            ("node.interface", a.interface != b.interface),
            ("node.xdp_mode", a.xdp_mode != b.xdp_mode),
            ("node.control_socket", a.control_socket != b.control_socket),
            ("node.control_group", a.control_group != b.control_group),
            ("node.max_vips", a.max_vips != b.max_vips),
            ("node.advert_port", a.advert_port != b.advert_port),
            ("node.pin / node.pin_dir", a.pin != b.pin),
            ("node.metrics_listen", a.metrics_listen != b.metrics_listen),
            ("eip (elastic IPs)", self.cfg.eips != new.eips),
            ("route6 (routed IPv6 VIPs)", self.cfg.routes6 != new.routes6),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
            bail!("{key} changed: that needs a restart of the agent; nothing was changed");
        }
        let (new, iface, keys, warnings) = checked?;
        let bgp = self.plan_bgp(&new, &iface)?;
        let peers = super::peers::plan(&new, &iface)?;
        let families = |c: &Config| {
            c.groups
                .iter()
                .filter_map(|g| g.election.as_ref())
                .flat_map(|e| e.peers.iter().map(|p| p.is_ipv4()))
                .collect::<BTreeSet<_>>()
        };
        let have: BTreeSet<bool> = [
            self.adverts.v4.is_some().then_some(true),
            self.adverts.v6.is_some().then_some(false),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !families(&new).is_subset(&have) {
            bail!("the config adds peers of an address family the agent has no advertisement socket for; restart the agent to apply it; nothing was changed");
        }
        // Resolve what can fail before touching anything.
        let mut scratch = Vec::new();
        for g in &new.groups {
            if let Some(r) = &g.redirect {
                host::interface(&r.interface)
                    .with_context(|| format!("group[{}].redirect_to", g.name))?;
                super::redirect_target(&self.nl, &g.name, r, true, &mut scratch)?;
            }
            if let Some(e) = &g.election {
                self.election_params(g, e)?;
            }
        }
        let total: usize = new.groups.iter().map(|g| g.vips.len()).sum();
        if total > self.cfg.node.max_vips as usize {
            bail!(
                "{total} VIPs exceed node.max_vips {}",
                self.cfg.node.max_vips
            );
        }

        if new.groups.len() > vip_common::MAX_GROUPS as usize {
            bail!(
                "{} groups exceed the data plane's {} groups",
                new.groups.len(),
                vip_common::MAX_GROUPS
            );
        }
        let mut remove = Vec::new();
        for old in &self.groups {
            if !new.groups.iter().any(|g| g.name == old.cfg.name) {
                remove.push(old.cfg.name.clone());
            }
        }
        let (mut add, mut update, mut replace) = (Vec::new(), Vec::new(), Vec::new());
        for g in &new.groups {
            let key = keys.get(&g.name).cloned();
            match self.groups.iter().find(|r| r.cfg.name == g.name) {
                None => add.push(g.clone()),
                Some(r) if kind(&r.cfg) != kind(g) => replace.push(g.clone()),
                Some(r) if r.cfg != *g || r.key != key => update.push(g.clone()),
                Some(_) => {}
            }
        }
        Ok(Plan {
            bgp,
            new,
            iface,
            warnings,
            keys,
            add,
            update,
            replace,
            remove,
            peers,
        })
    }

    /// Applies a plan: add, update, then remove and replace; rolls back on failure.
    pub(super) fn apply_plan(&mut self, mut plan: Plan) -> Result<String> {
        let now = Instant::now();
        let mut summary = Vec::new();
        let mut warnings = std::mem::take(&mut plan.warnings);
        // Transient capacity: added VIPs are programmed before removed ones go.
        let used = self.slots.len();
        let freed: usize = self
            .groups
            .iter()
            .filter(|g| plan.remove.contains(&g.cfg.name))
            .map(|g| g.vips.len())
            .sum();
        let incoming: usize = plan.add.iter().map(|g| g.vips.len()).sum::<usize>()
            + plan.update.iter().map(|g| g.vips.len()).sum::<usize>();
        if used + incoming > self.cfg.node.max_vips as usize && freed > 0 {
            // Not room for both: the groups that are gone go first (no way back for
            // them, but nothing else can fail for lack of room).
            for name in std::mem::take(&mut plan.remove) {
                if let Some(gi) = self.groups.iter().position(|g| g.cfg.name == name) {
                    self.remove_group(gi);
                    summary.push(format!("removed group {name}"));
                }
            }
        }
        let mut added: Vec<String> = Vec::new();
        let mut updated: Vec<(Group, Option<Vec<u8>>)> = Vec::new();
        let result = (|| -> Result<()> {
            for g in &plan.add {
                let key = plan.keys.get(&g.name).cloned();
                self.add_group(g, key, &HashMap::new(), &mut warnings)
                    .with_context(|| format!("adding group {}", g.name))?;
                added.push(g.name.clone());
                summary.push(format!("added group {}", g.name));
                failpoint("reload-apply")?;
            }
            for g in &plan.update {
                let gi = self.group_index(&g.name).map_err(anyhow::Error::msg)?;
                let key = plan.keys.get(&g.name).cloned();
                updated.push((self.groups[gi].cfg.clone(), self.groups[gi].key.clone()));
                let changed = self
                    .update_group(gi, g, key, now)
                    .with_context(|| format!("updating group {}", g.name))?;
                summary.push(format!("group {}: {changed}", g.name));
                failpoint("reload-apply")?;
            }
            // New peers are admitted before their groups' first datagram matters;
            // those that leave go below, with their groups.
            self.admit_peers(&plan.peers)?;
            Ok(())
        })();
        if let Err(e) = result {
            self.restore_peers(&plan.peers);
            self.roll_back(&added, updated, now);
            return Err(e.context("reload failed while applying; rolled back, running state kept"));
        }
        for name in &plan.remove {
            if let Some(gi) = self.groups.iter().position(|g| &g.cfg.name == name) {
                self.remove_group(gi);
                summary.push(format!("removed group {name}"));
            }
        }
        for g in &plan.replace {
            if let Some(gi) = self.groups.iter().position(|r| r.cfg.name == g.name) {
                self.remove_group(gi);
            }
            let key = plan.keys.get(&g.name).cloned();
            // Capacity and resolution were checked: a failure here is the kernel's.
            match self.add_group(g, key, &HashMap::new(), &mut warnings) {
                Ok(()) => summary.push(format!("replaced group {}", g.name)),
                Err(e) => {
                    log::error!("reload: re-adding group {}: {e:#}", g.name);
                    summary.push(format!("group {} could not be re-added: {e:#}", g.name));
                }
            }
        }
        if let Some((bgp, rid)) = plan.bgp.take() {
            summary.push(self.reconfigure_speaker(&bgp, rid));
        }
        if let Err(e) = self.program_peers(plan.peers) {
            // Only removals are left to do, which log their own failures.
            log::error!("reload: the election port's peers: {e:#}");
        }
        self.cfg = plan.new;
        self.iface = plan.iface;
        self.warnings = warnings;
        Ok(if summary.is_empty() {
            "reloaded: nothing changed".into()
        } else {
            format!("reloaded: {}", summary.join("; "))
        })
    }

    /// Undoes the add and update steps of a failed reload.
    fn roll_back(
        &mut self,
        added: &[String],
        updated: Vec<(Group, Option<Vec<u8>>)>,
        now: Instant,
    ) {
        for (old, key) in updated.into_iter().rev() {
            if let Ok(gi) = self.group_index(&old.name) {
                if let Err(e) = self.update_group(gi, &old, key, now) {
                    log::error!("reload rollback: restoring group {}: {e:#}", old.name);
                }
            }
        }
        for name in added.iter().rev() {
            if let Some(gi) = self.groups.iter().position(|g| &g.cfg.name == name) {
                self.remove_group(gi);
            }
        }
    }

    /// Applies a changed group of the same kind: VIPs added/removed, settings updated.
    pub(super) fn update_group(
        &mut self,
        gi: usize,
        g: &Group,
        key: Option<Vec<u8>>,
        now: Instant,
    ) -> Result<String> {
        let mut what = Vec::new();
        let old_vips: Vec<config::Vip> = self.groups[gi].vips.iter().map(|v| v.vip).collect();
        // VIPs removed.
        let mut k = 0;
        while k < self.groups[gi].vips.len() {
            let v = self.groups[gi].vips[k].vip;
            if g.vips.iter().any(|n| n.addr == v.addr) {
                k += 1;
                continue;
            }
            // Withdrawn while its entry still serves.
            self.some_routes(gi, &[v.addr], false);
            let slot = Arc::make_mut(&mut self.groups[gi].vips).remove(k).slot;
            self.dp.remove_vip(v.addr)?;
            let name = self.groups[gi].cfg.name.clone();
            self.addrs.remove(&name, v.addr);
            self.slots.remove(&slot);
            what.push(format!("-{v}"));
        }
        // VIPs added: programmed for the group's current state.
        let mut added = Vec::new();
        for v in &g.vips {
            if old_vips.iter().any(|o| o.addr == v.addr) {
                continue;
            }
            let slot = self.alloc_slot()?;
            self.dp.reset_stats(slot)?;
            Arc::make_mut(&mut self.groups[gi].vips).push(VipRuntime { vip: *v, slot });
            added.push(*v);
            what.push(format!("+{v}"));
        }
        let settings_changed = {
            let mut a = self.groups[gi].cfg.clone();
            let mut b = g.clone();
            a.vips.clear();
            b.vips.clear();
            a != b || self.groups[gi].key != key
        };
        let track_changed = self.groups[gi].cfg.track != g.track;
        let udp = |g: &Group| g.balance.as_ref().map(|b| b.udp);
        let udp_changed = udp(&self.groups[gi].cfg) != udp(g);
        let was_resident = self.groups[gi].own.terms().resident;
        self.groups[gi].cfg = g.clone();
        self.groups[gi].key = key;
        let (redirect, elected) = (
            self.groups[gi].redirect.is_some(),
            self.groups[gi].election().is_some(),
        );
        self.groups[gi].own.set_terms(terms(g, redirect, elected));
        if let Some(e) = &g.election {
            let p = self.election_params(g, e)?;
            if let Some(el) = self.groups[gi].election_mut() {
                el.set_params(p, now);
            }
        }
        if g.election.is_none() {
            // The configured role's settings (forward_to, checks) as reloaded.
            self.groups[gi].driver = crate::driver::Driver::for_group(g);
        }
        if track_changed {
            self.groups[gi].checks = trackers(g);
            self.spawn_checks(gi);
        }
        let resident = self.groups[gi].own.terms().resident;
        if resident != was_resident {
            self.change_residence(gi, resident)
                .with_context(|| format!("group[{}].addresses", g.name))?;
        }
        if udp_changed {
            // A flag of every entry (`flags::UDP_AS_ROUTED`), rewritten in place for
            // the group's current state: nothing else moves.
            let plan = self.groups[gi].current_entries();
            self.program_entries(gi, plan, None)
                .with_context(|| format!("group[{}].balance.udp", g.name))?;
        }
        if !added.is_empty() {
            let addrs: Vec<IpAddr> = added.iter().map(|v| v.addr).collect();
            let plan = self.groups[gi].current_entries();
            self.program_entries(gi, plan, Some(&addrs))
                .with_context(|| format!("group {}: programming added VIPs", g.name))?;
            if self.groups[gi].own.holding() == Holding::Serving {
                // Each announcement waits for its address (off the loop, in the
                // address worker's order).
                let ready = self.groups[gi].redirect.is_none().then(|| garp::Ready {
                    progress: self.addrs.add_all(&g.name, addrs.clone(), g.ipv6_local),
                    from: 0,
                });
                let socket = self.socket.clone();
                let mac = self.groups[gi].announce_mac(self.iface.mac);
                let (garp, name) = (g.garp, g.name.clone());
                let gate = self.groups[gi].gate.clone();
                // Tracked, so that a step-down stops it.
                self.some_routes(gi, &addrs, true);
                let burst = tokio::spawn(garp::burst(socket, mac, addrs, garp, name, gate, ready));
                self.groups[gi].bursts.push(burst);
                self.join_solicited_nodes(gi, true);
            } else if resident && self.groups[gi].redirect.is_none() {
                // In place before any takeover (the entries just written drop what
                // reaches them unserved).
                self.addrs.add_all(&g.name, addrs.clone(), g.ipv6_local);
            }
        }
        if settings_changed {
            what.push("settings updated".into());
        }
        Ok(what.join(" "))
    }
}
