//! One group's runtime: its configuration, its state and reason, its VIPs and their
//! counter slots, its election (for elected groups), its health checks.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use vip_common::{action, flags, VipEntry};

use crate::{
    advert::ReplayGuard,
    driver::Driver,
    config::{self, Group},
    election::{Election, State},
    health::Tracker,
    host,
    mac::Mac,
    netlink::Netlink,
    reason::Reason,
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

/// Advertisement problems, counted per group.
#[derive(Debug, Default, Clone)]
pub(super) struct AdvertErrors {
    pub auth_failures: u64,
    pub replays: u64,
    pub malformed: u64,
    pub unknown_peers: u64,
}

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
    pub forward_to: Option<Mac>,
    pub redirect: Option<RedirectTarget>,
    /// Shared with status snapshots (cloned on write, which only a reload does).
    pub vips: Arc<Vec<VipRuntime>>,
    /// The announcement burst (and periodic refresh) of a takeover.
    pub announcer: Option<JoinHandle<()>>,
    /// Bursts for VIPs added by a reload while active; stopped with the announcer.
    pub bursts: Vec<JoinHandle<()>>,
    /// What moves the group: its election, its configured role, or keepalived.
    pub driver: Driver,
    pub key: Option<Vec<u8>>,
    pub replay: ReplayGuard,
    pub errors: AdvertErrors,
    pub checks: Vec<(&'static str, Tracker, String)>,
    /// Until when a drained step-down keeps forwarding (static/keepalived groups).
    pub drain_until: Option<Instant>,
    pub lease_deadline: Option<u64>,
    /// Transitions by "state/reason kind", for metrics.
    pub transition_reasons: BTreeMap<String, u64>,
    /// Health-check tasks, aborted when the group goes away.
    pub tasks: Vec<JoinHandle<()>>,
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
            forward_to: cfg.forward_to,
            redirect,
            vips: Arc::new(vips),
            announcer: None,
            bursts: Vec::new(),
            driver,
            key,
            replay: ReplayGuard::default(),
            errors: AdvertErrors::default(),
            checks: trackers(&cfg.track),
            drain_until: None,
            lease_deadline: None,
            transition_reasons: BTreeMap::new(),
            tasks: Vec::new(),
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
        if let Some(h) = self.announcer.take() {
            h.abort();
        }
        for h in self.bursts.drain(..) {
            h.abort();
        }
    }

    /// Records a state change and its reason.
    pub fn set_state(&mut self, state: State, reason: Reason) {
        if self.state != state {
            self.transitions += 1;
            let at = SystemTime::now();
            self.since = at;
            *self
                .transition_reasons
                .entry(format!("{}/{}", state.as_str(), reason.kind()))
                .or_default() += 1;
            let vips: Vec<String> = self.vips.iter().map(|v| v.vip.to_string()).collect();
            log::info!(
                "group {}: {} -> {} ({reason}); VIPs {}",
                self.cfg.name,
                self.state.as_str(),
                state.as_str(),
                vips.join(", ")
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

    /// The data-plane entry for one of our VIPs under `act`.
    pub fn entry(&self, mac: Mac, v: &VipRuntime, act: u32, forward_to: Option<Mac>) -> VipEntry {
        let mut e = VipEntry {
            action: act,
            flags: if self.leased() { flags::LEASED } else { 0 },
            stats_index: v.slot,
            group_index: self.index,
            own_mac: mac.0,
            src_mac: mac.0,
            ..Default::default()
        };
        match act {
            action::REDIRECT => {
                if let Some(r) = self.redirect {
                    e.ifindex = r.ifindex;
                    e.src_mac = r.src_mac.0;
                    e.dst_mac = r.dst_mac.0;
                }
            }
            action::FORWARD => e.dst_mac = forward_to.unwrap_or_default().0,
            _ => {}
        }
        e
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

/// One rise/fall tracker per configured health check, none reported yet.
pub(super) fn trackers(track: &config::Track) -> Vec<(&'static str, Tracker, String)> {
    let mut checks = Vec::new();
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

/// Resolves a redirect interface: its ifindex, its MAC (our source) and the MAC frames
/// are addressed to (configured, or the veth peer's). Changes nothing: the caller
/// makes it a redirect target when it applies the group.
pub(super) fn redirect_target(
    nl: &Netlink,
    group: &str,
    r: &config::Redirect,
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
    if iface.kind.as_deref() == Some("veth") {
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
