//! Carrying out a group's effects (`crate::ownership::Effect`), in the order its
//! `Ownership` gave them, through one seam: [`Writes`], the data plane's maps
//! ([`VipMaps`]) and the host's side of a change of ownership (the VIP addresses on
//! lo, the solicited-node groups, the announcements). The agent's is [`Kernel`]; the
//! tests below record the writes instead, and pin the order a takeover and a release
//! reach the kernel in, announcement gate included.
//!
//! The gate (`crate::garp::Gate`) is the group's own: it opens only once the lease
//! that lets the data plane answer is written, and closes before the data plane
//! stops answering (a quiet or revoked lease), so no announcement leaves for VIPs we
//! do not answer for.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use vip_common::VipEntry;

use super::{
    active_active,
    group::{GroupRuntime, VipRuntime},
    Agent,
};
use crate::{
    addresses::Addresses,
    dataplane::{Dataplane, Extension, VipMaps},
    garp::{self, PacketSocket},
    host::{self, Interface},
    mac::Mac,
    ownership::{Effect, Entries, Expired, Holding, LeaseWrite},
    speaker::Speaker,
};

/// How long a takeover's first announcement waits, on the loop, for the address
/// worker's first VIP (its route is one request, some 30 µs): longer is left to the
/// burst, which follows the worker.
const FIRST_ADDRESS_WAIT: Duration = Duration::from_millis(1);

/// How long the first announcement of a group with a virtual MAC waits, on the loop,
/// for every VIP's address: the worker adds them while the loop writes the entries
/// (10,000 VIPs in runs, some 500 routes, take a few ms). A group whose addresses take
/// longer (20,000 VIPs scattered one per route) is announced at the bound, and its
/// last VIPs are accepted as their routes come, as without a virtual MAC.
const VIRTUAL_MAC_ADDRESS_WAIT: Duration = Duration::from_millis(50);

/// Where a group's effects are written.
pub(super) trait Writes {
    type Maps: VipMaps;
    /// The data plane's maps: leases, quiet, the director, the entries.
    fn maps(&mut self) -> &mut Self::Maps;
    /// Stops the group's announcements in flight.
    fn stop_announcing(&mut self, g: &mut GroupRuntime);
    /// Joins (or leaves) the solicited-node groups of the group's IPv6 VIPs.
    fn solicited_nodes(&mut self, g: &mut GroupRuntime, join: bool);
    /// Puts the group's VIP addresses on lo (those not there already).
    fn add_addresses(&mut self, g: &mut GroupRuntime);
    /// Takes the group's VIP addresses off lo.
    fn remove_addresses(&mut self, g: &mut GroupRuntime);
    /// Sends a takeover's first announcements at once, for the group's first VIPs,
    /// if their addresses are in place (none otherwise: the burst sends them as the
    /// address worker adds them).
    fn announce_first(&mut self, g: &mut GroupRuntime);
    /// Starts the group's announcement burst (and its refresh): every round leaves
    /// only while the group's gate is open; the first round goes on from what
    /// `announce_first` sent.
    fn announce(&mut self, g: &mut GroupRuntime);
    /// Announces (or withdraws) a routed group's host routes through the speaker.
    fn routes(&mut self, g: &mut GroupRuntime, announce: bool);
}

/// Performs `effects` in order on group `g` (our interface's MAC is `mac`), stopping
/// at the first that fails; the gate is brought up to date at the end whatever
/// happened. Returns that result, and the lease the kernel refused to extend (it is
/// lost: the caller tells the election once the effects are done).
pub(super) fn perform(
    w: &mut impl Writes,
    g: &mut GroupRuntime,
    mac: Mac,
    effects: Vec<Effect>,
) -> (Result<()>, Option<Expired>) {
    let mut lost = None;
    let mut result = Ok(());
    for fx in effects {
        result = effect(w, g, mac, fx, &mut lost);
        if result.is_err() {
            break;
        }
    }
    update_gate(g);
    (result, lost)
}

fn effect(
    w: &mut impl Writes,
    g: &mut GroupRuntime,
    mac: Mac,
    fx: Effect,
    lost: &mut Option<Expired>,
) -> Result<()> {
    let index = g.index;
    match fx {
        Effect::StopAnnouncing => w.stop_announcing(g),
        Effect::SolicitedNodes(join) => w.solicited_nodes(g, join),
        Effect::BalanceTable => active_active::program_table(w.maps(), g)?,
        Effect::BalanceNodes => {
            if let Err(e) = active_active::program_nodes(w.maps(), g) {
                log::error!("group {}: {e:#}", g.cfg.name);
            }
        }
        Effect::Entries(plan) => program_entries(w.maps(), g, mac, plan, None)?,
        Effect::FirstEntries(plan) => {
            let first = g.vips.iter().take(garp::FIRST_FRAMES);
            program(w.maps(), g, mac, plan, first)?
        }
        Effect::Lease(LeaseWrite::Grant(deadline)) => {
            w.maps()
                .grant_lease(index, deadline)
                .with_context(|| format!("group {}: granting the lease", g.cfg.name))?;
            update_gate(g);
        }
        Effect::Lease(LeaseWrite::Revoke) => {
            // Closed first: no announcement may leave once we stop answering.
            update_gate(g);
            w.maps()
                .revoke_lease(index)
                .with_context(|| format!("group {}: revoking the lease", g.cfg.name))?;
        }
        Effect::Lease(LeaseWrite::Extend { expect, deadline }) => {
            let answer = w
                .maps()
                .extend_lease(index, expect, deadline)
                .with_context(|| format!("group {}: extending the lease", g.cfg.name))?;
            let (took, found) = match answer {
                Extension::Extended => (true, deadline),
                Extension::Expired { found, .. } | Extension::Changed { found } => (false, found),
            };
            let (now, boot) = (Instant::now(), host::boottime_ns());
            match g.own.extension(now, boot, took, found) {
                Ok(None) => {}
                Ok(Some(LeaseWrite::Grant(d))) => w
                    .maps()
                    .grant_lease(index, d)
                    .with_context(|| format!("group {}: granting the lease", g.cfg.name))?,
                Ok(Some(_)) => {}
                Err(expired) => *lost = Some(expired),
            }
            update_gate(g);
        }
        Effect::Quiet(quiet) => {
            // Closed first: no announcement may leave once we stop answering.
            update_gate(g);
            w.maps()
                .set_quiet(index, quiet)
                .with_context(|| format!("group {}: setting its answers", g.cfg.name))?;
        }
        Effect::AddAddresses => w.add_addresses(g),
        Effect::RemoveAddresses => w.remove_addresses(g),
        Effect::AnnounceFirst if g.cfg.announce.arp() => w.announce_first(g),
        Effect::AnnounceFirst => {}
        Effect::Announce => {
            // The routes only while the serving lease runs, as the frames.
            if g.cfg.announce.bgp() && (!g.leased() || g.gate.is_open()) {
                w.routes(g, true);
            }
            if g.cfg.announce.arp() {
                w.announce(g);
            }
        }
        Effect::Withdraw => w.routes(g, false),
        // Forward entries never answer for a VIP: no gate to wait for.
        Effect::AnnounceRoutes => w.routes(g, true),
    }
    Ok(())
}

/// The announcements may leave while the serving lease runs (elected groups), or
/// always (the others).
pub(super) fn update_gate(g: &GroupRuntime) {
    if !g.leased() {
        return;
    }
    let open = match g.own.holding() {
        Holding::Serving => g.own.lease().deadline().unwrap_or(0),
        _ => 0,
    };
    g.gate.set(open);
}

/// Programs every VIP of the group (or only `only`) for `plan`.
pub(super) fn program_entries(
    maps: &mut impl VipMaps,
    g: &GroupRuntime,
    mac: Mac,
    plan: Entries,
    only: Option<&[IpAddr]>,
) -> Result<()> {
    let vips = g
        .vips
        .iter()
        .filter(|v| only.is_none_or(|o| o.contains(&v.vip.addr)));
    program(maps, g, mac, plan, vips)
}

/// Programs `vips` (of the group) for `plan`, in one batch.
fn program<'a>(
    maps: &mut impl VipMaps,
    g: &GroupRuntime,
    mac: Mac,
    plan: Entries,
    vips: impl Iterator<Item = &'a VipRuntime>,
) -> Result<()> {
    let entries: Vec<(IpAddr, VipEntry)> =
        vips.map(|v| (v.vip.addr, g.entry(mac, v, plan))).collect();
    maps.set_vips_batch(&entries)
        .with_context(|| format!("group {}: programming its VIPs", g.cfg.name))
}

/// The kernel: the data plane, the addresses on lo (and the solicited-node groups,
/// through the address worker), the packet socket announcements leave by.
pub(super) struct Kernel<'a> {
    pub dp: &'a mut Dataplane,
    pub speaker: Option<&'a mut (dyn Speaker + 'static)>,
    /// The loop's events: a route waiting for its addresses comes back through it.
    pub events: Option<&'a tokio::sync::mpsc::Sender<super::Event>>,
    pub addrs: &'a mut Addresses,
    pub socket: &'a Arc<PacketSocket>,
    pub iface: &'a Interface,
}

impl Agent {
    /// The kernel's side of the effects and the groups, borrowed apart.
    pub(super) fn kernel(&mut self) -> (Kernel<'_>, &mut Vec<GroupRuntime>) {
        (
            Kernel {
                dp: &mut self.dp,
                speaker: self.speaker.as_deref_mut(),
                events: self.events.as_ref(),
                addrs: &mut self.addrs,
                socket: &self.socket,
                iface: &self.iface,
            },
            &mut self.groups,
        )
    }
}

impl Writes for Kernel<'_> {
    type Maps = Dataplane;

    fn maps(&mut self) -> &mut Dataplane {
        self.dp
    }

    fn stop_announcing(&mut self, g: &mut GroupRuntime) {
        g.stop_announcing();
    }

    /// The solicited-node groups of the group's IPv6 VIPs, joined or left by the
    /// address worker (`solicited`: a big group's take the loop too long).
    fn solicited_nodes(&mut self, g: &mut GroupRuntime, join: bool) {
        // A takeover's joins follow its announcement (`Ownership::take`): they wait
        // for its first round. Any other join (an adopted group) goes at once; the
        // round of an earlier announcement is over by then.
        let after = g.first_round.take();
        let vips: Vec<std::net::Ipv6Addr> = g
            .vips
            .iter()
            .filter_map(|v| match v.vip.addr {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            })
            .collect();
        self.addrs
            .solicited_nodes(&g.cfg.name, self.iface.index, join, vips, after);
    }

    /// Asks the address worker for the addresses not on lo yet; the announcement
    /// that follows sends each VIP's once its address is there.
    fn add_addresses(&mut self, g: &mut GroupRuntime) {
        let new: Vec<IpAddr> = g
            .vips
            .iter()
            .map(|v| v.vip.addr)
            .filter(|a| !self.addrs.holds(*a))
            .collect();
        if new.is_empty() {
            return;
        }
        let progress = self
            .addrs
            .add_all(&g.cfg.name, new.clone(), g.cfg.ipv6_local);
        g.pending_addresses = Some((new, progress));
    }

    fn remove_addresses(&mut self, g: &mut GroupRuntime) {
        g.pending_addresses = None;
        let held: Vec<IpAddr> = g
            .vips
            .iter()
            .map(|v| v.vip.addr)
            .filter(|a| self.addrs.holds(*a))
            .collect();
        if !held.is_empty() {
            self.addrs.remove_all(&g.cfg.name, held);
        }
    }

    /// A takeover's first announcements, for the group's first VIPs (their entries
    /// are written: `Effect::FirstEntries`), sent from the loop now, as far as their
    /// addresses are in place: a VIP the address worker is still adding waits for it
    /// (at most [`FIRST_ADDRESS_WAIT`] for the first; with a virtual MAC, at most
    /// [`VIRTUAL_MAC_ADDRESS_WAIT`] for all of them), and the burst sends the rest as
    /// they arrive, in the worker's order.
    fn announce_first(&mut self, g: &mut GroupRuntime) {
        g.stop_announcing();
        if g.cfg.garp.count == 0 || !g.gate.is_open() {
            return;
        }
        let n = garp::FIRST_FRAMES.min(g.vips.len());
        // How many of the first `n` VIPs the stack accepts now: those the worker is
        // not adding, and of those it is (a subsequence of the group's order, in
        // that order), the first `done`.
        let ready = match &g.pending_addresses {
            None => n,
            Some((new, progress)) => {
                // A virtual MAC's first frame brings every VIP's traffic here (and
                // in a planned handover our next advert sends the old active's
                // after it): every VIP waits, for longer.
                let (want, wait) = if g.cfg.virtual_mac.is_some() {
                    (new.len(), VIRTUAL_MAC_ADDRESS_WAIT)
                } else {
                    (1, FIRST_ADDRESS_WAIT)
                };
                let deadline = Instant::now() + wait;
                while progress.done() < want && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(20));
                }
                let done = progress.done();
                let mut j = 0;
                g.vips[..n]
                    .iter()
                    .take_while(|v| {
                        if new.get(j) != Some(&v.vip.addr) {
                            return true;
                        }
                        j += 1;
                        j <= done
                    })
                    .count()
            }
        };
        if ready == 0 {
            return;
        }
        let addrs: Vec<IpAddr> = g.vips[..ready].iter().map(|v| v.vip.addr).collect();
        let frames = garp::frames(g.announce_mac(self.iface.mac), &addrs);
        let stamp = takeover_stamp(g);
        g.first_announced = garp::send_now(self.socket, &frames, ready, &g.gate, stamp.as_ref());
    }

    /// The group's host routes into (or out of) vip's route table, which the speaker
    /// exports. A failure is logged, never fails the transition: a route that did not
    /// go in is retried by the next announcement, one that did not go out is the
    /// guard's to withdraw once our lease ends.
    fn routes(&mut self, g: &mut GroupRuntime, announce: bool) {
        let Some(sp) = self.speaker.as_deref_mut() else {
            return;
        };
        if !announce && g.routes.is_none() {
            return;
        }
        // Announced once the local stack accepts every VIP: a big group's addresses
        // may still be on their way to lo (the address worker); the routes follow
        // them (`Event::RoutesReady`).
        if announce {
            if let Some((new, progress)) = g
                .pending_addresses
                .as_ref()
                .filter(|(new, p)| p.done() < new.len())
            {
                if let Some(tx) = self.events {
                    let (n, progress, tx) = (new.len(), progress.clone(), tx.clone());
                    let name = g.cfg.name.clone();
                    tokio::spawn(async move {
                        progress
                            .wait_for(n, std::time::Duration::from_secs(30))
                            .await;
                        let _ = tx.send(super::Event::RoutesReady(name)).await;
                    });
                    return;
                }
            }
        }
        let vips: Vec<IpAddr> = g.vips.iter().map(|v| v.vip.addr).collect();
        let r = if announce {
            sp.announce(&vips)
        } else {
            sp.withdraw(&vips)
        };
        match r {
            Ok(()) if announce => {
                if g.routes.is_none() {
                    g.routes = Some(std::time::SystemTime::now());
                    log::info!(
                        "group {}: announced {} routes over BGP",
                        g.cfg.name,
                        vips.len()
                    );
                }
            }
            Ok(()) => {
                g.routes = None;
                log::info!(
                    "group {}: withdrew {} routes from BGP",
                    g.cfg.name,
                    vips.len()
                );
            }
            Err(e) => log::error!("group {}: BGP: {e:#}", g.cfg.name),
        }
    }

    /// Starts (or restarts) the group's gratuitous ARP / unsolicited NA burst, and the
    /// periodic refresh if configured.
    fn announce(&mut self, g: &mut GroupRuntime) {
        // What `announce_first` sent: the first frames of this round, in the group's
        // order, as far as their addresses were in place.
        let already = g.first_announced;
        g.stop_announcing();
        // The VIPs already on lo first, then those the address worker is adding, in
        // its order: each of those waits for its address (`garp::Ready`). A job the
        // worker has finished (a resident group's, made at its start) holds nothing.
        let pending = g
            .pending_addresses
            .take()
            .filter(|(new, p)| p.done() < new.len());
        let mut addrs: Vec<IpAddr> = g.vips.iter().map(|v| v.vip.addr).collect();
        let ready = pending.map(|(new, progress)| {
            let new_set: std::collections::HashSet<IpAddr> = new.iter().copied().collect();
            addrs.retain(|a| !new_set.contains(a));
            let from = addrs.len();
            addrs.extend(new);
            garp::Ready { progress, from }
        });
        // What `announce_first` sent is the start of this order unless a VIP held
        // before comes after one the worker adds (then all goes again).
        let first_sent = g.vips.iter().take(already).map(|v| v.vip.addr);
        let already = if addrs.iter().take(already).copied().eq(first_sent) {
            already
        } else {
            0
        };
        let (sock, mac, garp, name, refresh, gate) = (
            self.socket.clone(),
            g.announce_mac(self.iface.mac),
            g.cfg.garp,
            g.cfg.name.clone(),
            g.cfg.garp_refresh,
            g.gate.clone(),
        );
        // A takeover's first announcement is stamped (status: last_takeover) by
        // whichever sends it: `announce_first`, here or the task.
        let stamp = if already > 0 { None } else { takeover_stamp(g) };
        let done = crate::addresses::RoundDone::default();
        g.first_round = Some(done.clone());
        // The first announcements leave from here, now, as far as their addresses
        // are in place (the socket never blocks); the rest of the round, paced and
        // retried, and the other rounds are timed (and their frames built) by a
        // task, so a big group's round does not hold the loop.
        let mut sent = already;
        if garp.count > 0 && gate.is_open() {
            let now = ready
                .as_ref()
                .map_or(addrs.len(), |r| r.allowed(addrs.len()));
            let max = garp::FIRST_FRAMES.min(now);
            if max > sent {
                let frames = garp::frames(mac, &addrs[sent..max]);
                sent += garp::send_now(&sock, &frames, max - sent, &gate, stamp.as_ref());
            }
        }
        g.announcer = Some(tokio::spawn(async move {
            let done = garp::RoundGuard(done);
            if garp.count > 0 {
                let first = garp::First {
                    sent,
                    ready,
                    stamp,
                    done: Some(done),
                };
                let rest = garp::burst_rest(
                    sock.clone(),
                    garp::frames(mac, &addrs),
                    first,
                    garp,
                    name.clone(),
                    gate.clone(),
                );
                rest.await;
            } else {
                drop(done);
            }
            if let Some(every) = refresh {
                loop {
                    tokio::time::sleep(every).await;
                    garp::send_round(&sock, &garp::frames(mac, &addrs), &name, &gate).await;
                }
            }
        }));
    }
}

/// The stamp a takeover's first announcement marks (status: last_takeover), if the
/// current takeover has not announced yet.
fn takeover_stamp(g: &mut GroupRuntime) -> Option<garp::Stamp> {
    g.takeover
        .as_ref()
        .filter(|t| t.announced_mono_ns.is_none())
        .map(|_| {
            g.announced.reset();
            g.announced.clone()
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vip_common::action;

    use super::*;
    use crate::{
        agent::group::VipRuntime,
        config,
        dataplane::DataplaneError,
        driver::Driver,
        election::{Election, Params},
        garp::Gate,
        membership::Membership,
        state::State,
    };

    /// One write the effects made, in a recorder's words.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum W {
        GrantLease,
        RevokeLease,
        ExtendLease,
        Quiet(bool),
        /// The entries, by the action every VIP of the group got.
        Entries(u32),
        BalanceTable,
        BalanceNodes,
        StopAnnouncing,
        SolicitedNodes(bool),
        AddAddresses,
        RemoveAddresses,
        AnnounceFirst,
        Announce,
        Routes(bool),
    }

    /// Records every write with whether the group's announcement gate was open as it
    /// was made (the gate is shared with the group, as an announcer task's is).
    struct Recorder {
        log: Vec<(W, bool)>,
        gate: Gate,
        /// What `extend_lease` answers.
        extension: Extension,
    }

    impl Recorder {
        fn new(g: &GroupRuntime) -> Self {
            Recorder {
                log: Vec::new(),
                gate: g.gate.clone(),
                extension: Extension::Extended,
            }
        }

        fn push(&mut self, w: W) {
            let open = self.gate.is_open();
            self.log.push((w, open));
        }

        /// The writes since the last call.
        fn take(&mut self) -> Vec<(W, bool)> {
            std::mem::take(&mut self.log)
        }
    }

    type Result<T> = std::result::Result<T, DataplaneError>;

    impl VipMaps for Recorder {
        fn grant_lease(&mut self, _: u32, _: u64) -> Result<()> {
            self.push(W::GrantLease);
            Ok(())
        }
        fn revoke_lease(&mut self, _: u32) -> Result<()> {
            self.push(W::RevokeLease);
            Ok(())
        }
        fn extend_lease(&mut self, _: u32, _: u64, _: u64) -> Result<Extension> {
            self.push(W::ExtendLease);
            Ok(self.extension)
        }
        fn set_quiet(&mut self, _: u32, quiet: bool) -> Result<()> {
            self.push(W::Quiet(quiet));
            Ok(())
        }
        fn set_vips_batch(&mut self, entries: &[(IpAddr, VipEntry)]) -> Result<()> {
            let act = entries.first().map_or(u32::MAX, |(_, e)| e.action);
            assert!(entries.iter().all(|(_, e)| e.action == act), "{entries:?}");
            self.push(W::Entries(act));
            Ok(())
        }
        fn set_balance(
            &mut self,
            _: u32,
            _: crate::dataplane::Placement,
            _: &[(u8, u16)],
            _: &[(u8, u16)],
            _: &[vip_common::BalanceMember],
            _: &[u16],
        ) -> Result<()> {
            self.push(W::BalanceTable);
            Ok(())
        }
        fn set_balance_nodes(
            &mut self,
            _: u32,
            _: &[(u64, vip_common::BalanceNode)],
            _: &[(u64, vip_common::BalanceNode)],
        ) -> Result<()> {
            self.push(W::BalanceNodes);
            Ok(())
        }
    }

    impl Writes for Recorder {
        type Maps = Self;
        fn maps(&mut self) -> &mut Self {
            self
        }
        fn stop_announcing(&mut self, _: &mut GroupRuntime) {
            self.push(W::StopAnnouncing);
        }
        fn solicited_nodes(&mut self, _: &mut GroupRuntime, join: bool) {
            self.push(W::SolicitedNodes(join));
        }
        fn add_addresses(&mut self, _: &mut GroupRuntime) {
            self.push(W::AddAddresses);
        }
        fn remove_addresses(&mut self, _: &mut GroupRuntime) {
            self.push(W::RemoveAddresses);
        }
        fn announce_first(&mut self, _: &mut GroupRuntime) {
            self.push(W::AnnounceFirst);
        }
        fn announce(&mut self, _: &mut GroupRuntime) {
            self.push(W::Announce);
        }
        fn routes(&mut self, _: &mut GroupRuntime, announce: bool) {
            self.push(W::Routes(announce));
        }
    }

    const MAC: Mac = Mac([2, 0, 0, 0, 0, 11]);
    const PEER_MAC: Mac = Mac([2, 0, 0, 0, 0, 12]);

    /// An elected group with an IPv4 and an IPv6 VIP (`extra`: more of its keys), as
    /// the agent builds it, and an advertisement just sent (a standby takes us for
    /// silent no earlier than 3 intervals from now: the serving lease may run).
    fn elected(extra: &str) -> GroupRuntime {
        elected_after("", extra)
    }

    /// As [`elected`], with `head` (sections) before the group.
    fn elected_after(head: &str, extra: &str) -> GroupRuntime {
        let text = format!(
            "[node]\nname = \"a\"\ninterface = \"eth0\"\n{head}\n[[group]]\nname = \"web\"\n\
             vips = [\"10.0.0.50/24\", \"2001:db8::50/64\"]\npeers = [\"10.0.0.12\"]\n\
             priority = 150\n{extra}\n"
        );
        let cfg = config::parse(&text).unwrap();
        let g = &cfg.groups[0];
        let e = g.election.as_ref().unwrap();
        let me: IpAddr = "10.0.0.11".parse().unwrap();
        let election = Election::new(Params {
            priority: e.priority,
            interval: e.advert_interval,
            preempt: e.preempt,
            preempt_delay: e.preempt_delay,
            me,
            echo_skew: Duration::ZERO,
            echo_window: Duration::ZERO,
        });
        let vips = g
            .vips
            .iter()
            .enumerate()
            .map(|(slot, vip)| VipRuntime {
                vip: *vip,
                slot: slot as u32,
            })
            .collect();
        let mut runtime =
            GroupRuntime::new(g, 3, None, vips, Driver::Elected(Box::new(election)), None);
        if let Some(b) = &g.balance {
            runtime.balance = Some(Membership::new(
                me,
                MAC,
                &e.peers,
                e.advert_interval,
                0,
                b.ports.clone(),
            ));
        }
        runtime.own.advertised(host::boottime_ns());
        runtime
    }

    /// Performs what `decide` returns for `g` through the recorder; every write
    /// succeeded, so nothing may fail and no lease be lost.
    fn run(
        g: &mut GroupRuntime,
        rec: &mut Recorder,
        decide: impl FnOnce(&mut GroupRuntime, Instant, u64) -> Vec<Effect>,
    ) -> Vec<(W, bool)> {
        let fx = decide(g, Instant::now(), host::boottime_ns());
        let (result, lost) = perform(rec, g, MAC, fx);
        result.unwrap();
        assert!(lost.is_none(), "{lost:?}");
        rec.take()
    }

    fn take(g: &mut GroupRuntime, now: Instant, boot: u64) -> Vec<Effect> {
        g.own.take(now, boot, None)
    }

    /// Each write with whether the gate was open as it was made.
    use W::*;
    const OPEN: bool = true;
    const CLOSED: bool = false;

    #[test]
    fn a_takeover_writes_the_lease_before_the_entries_and_announces_last_once_the_gate_opens() {
        let mut g = elected("");
        let mut rec = Recorder::new(&g);
        assert!(!g.gate.is_open(), "an elected group starts closed");
        assert_eq!(
            run(&mut g, &mut rec, take),
            [
                // The lease first: the data plane answers nothing for a group without
                // one, and the gate opens only once it is written.
                (GrantLease, CLOSED),
                // Answers resume only under that lease.
                (Quiet(false), OPEN),
                // The first VIPs' entries answer from here on (the index follows
                // them, `dataplane::vips`), then their addresses and announcements.
                (Entries(action::LOCAL), OPEN),
                (AddAddresses, OPEN),
                (AnnounceFirst, OPEN),
                // The whole group's entries, before the burst names them.
                (Entries(action::LOCAL), OPEN),
                // Every VIP is answered for when the announcement says so.
                (Announce, OPEN),
                // The joins wait for the announcement's first round.
                (SolicitedNodes(true), OPEN),
            ]
        );
    }

    #[test]
    fn a_routed_group_announces_its_routes_last_and_withdraws_them_before_a_fault_changes_anything()
    {
        let bgp = "[bgp]\nlocal_as = 65001\nneighbors = [{ address = \"10.0.0.1\", as = 65000 }]\n";
        // BGP only: no ARP announcement at all.
        let mut g = elected_after(bgp, "announce = \"bgp\"");
        let mut rec = Recorder::new(&g);
        let out = run(&mut g, &mut rec, take);
        // Last but the solicited-node joins, which wait for the announcement.
        let announced = |out: &[(W, bool)]| -> Vec<(W, bool)> {
            out.iter()
                .copied()
                .filter(|(w, _)| !matches!(w, SolicitedNodes(_)))
                .collect()
        };
        assert_eq!(
            announced(&out).last(),
            Some(&(Routes(true), OPEN)),
            "{out:?}"
        );
        assert!(!out
            .iter()
            .any(|(w, _)| matches!(w, Announce | AnnounceFirst)));
        let out = run(&mut g, &mut rec, |g, now, boot| {
            g.own.give_up(now, boot, State::Fault, None)
        });
        assert_eq!(out[..2], [(StopAnnouncing, OPEN), (Routes(false), OPEN)]);
        // Both: the routes, then the frames.
        let mut g = elected_after(bgp, "announce = \"both\"");
        let mut rec = Recorder::new(&g);
        let out = announced(&run(&mut g, &mut rec, take));
        assert_eq!(
            out[out.len() - 2..],
            [(Routes(true), OPEN), (Announce, OPEN)]
        );
        assert!(out.contains(&(AnnounceFirst, OPEN)));
    }

    #[test]
    fn a_planned_release_goes_quiet_behind_a_closed_gate_then_forwards_then_grants_the_lease() {
        let mut g = elected("");
        let mut rec = Recorder::new(&g);
        run(&mut g, &mut rec, take);
        // The handover's first step, before the release is sent.
        assert_eq!(
            run(&mut g, &mut rec, |g, _, _| g.own.quiesce()),
            [(StopAnnouncing, OPEN), (Quiet(true), CLOSED)]
        );
        // The successor took over: forward to it; the addresses stay for the drain.
        assert_eq!(
            run(&mut g, &mut rec, |g, now, boot| g.own.give_up(
                now,
                boot,
                State::Standby,
                Some(PEER_MAC)
            )),
            [
                (StopAnnouncing, CLOSED),
                (SolicitedNodes(false), CLOSED),
                (Entries(action::FORWARD), CLOSED),
                // Only now: a lease written while an entry still served would make it
                // answer again.
                (GrantLease, CLOSED),
            ]
        );
        assert!(!g.gate.is_open());
    }

    #[test]
    fn a_fault_closes_the_gate_goes_quiet_then_the_entries_then_the_lease_then_the_addresses() {
        let mut g = elected("");
        let mut rec = Recorder::new(&g);
        run(&mut g, &mut rec, take);
        assert_eq!(
            run(&mut g, &mut rec, |g, now, boot| g.own.give_up(
                now,
                boot,
                State::Fault,
                None
            )),
            [
                (StopAnnouncing, OPEN),
                (SolicitedNodes(false), OPEN),
                // Stops answering at once (writing every entry takes a while), behind
                // a closed gate.
                (Quiet(true), CLOSED),
                (Entries(action::NONE), CLOSED),
                (RevokeLease, CLOSED),
                (RemoveAddresses, CLOSED),
            ]
        );
    }

    #[test]
    fn a_balanced_group_writes_its_table_before_the_entries_and_its_nodes_before_forwarding() {
        let mut g = elected("balance = {}");
        let mut rec = Recorder::new(&g);
        assert_eq!(
            run(&mut g, &mut rec, take),
            [
                (GrantLease, CLOSED),
                (Quiet(false), OPEN),
                // The director's table before the entries that use it.
                (BalanceTable, OPEN),
                (Entries(action::LOCAL), OPEN),
                (AddAddresses, OPEN),
                (AnnounceFirst, OPEN),
                (Entries(action::LOCAL), OPEN),
                (Announce, OPEN),
                (SolicitedNodes(true), OPEN),
            ]
        );
        let release = run(&mut g, &mut rec, |g, now, boot| {
            let mut fx = g.own.quiesce();
            fx.extend(g.own.give_up(now, boot, State::Standby, Some(PEER_MAC)));
            fx
        });
        // The node MACs before the member's forward entries that use them; a
        // balanced standby is a member, and keeps the VIP on lo.
        let at = |w: W| release.iter().position(|(x, _)| *x == w).unwrap();
        assert!(
            at(BalanceNodes) < at(Entries(action::FORWARD)),
            "{release:?}"
        );
        assert!(at(Quiet(true)) < at(BalanceNodes), "{release:?}");
        assert!(!release.iter().any(|(w, _)| *w == RemoveAddresses));
    }

    #[test]
    fn a_renewal_the_kernel_refuses_loses_the_lease_and_closes_the_gate() {
        let mut g = elected("");
        let mut rec = Recorder::new(&g);
        run(&mut g, &mut rec, take);
        // A later advertisement lets the lease run further: a renewal is due.
        std::thread::sleep(Duration::from_millis(2));
        g.own.advertised(host::boottime_ns());
        rec.extension = Extension::Expired { found: 0, now: 0 };
        let fx = g.own.renew(Instant::now(), host::boottime_ns());
        let (result, lost) = perform(&mut rec, &mut g, MAC, fx);
        result.unwrap();
        assert!(lost.is_some(), "the lease is lost");
        // Found out as the extension was refused: the gate closed by the end.
        assert_eq!(rec.take(), [(ExtendLease, OPEN)]);
        assert!(!g.gate.is_open());
    }
}
