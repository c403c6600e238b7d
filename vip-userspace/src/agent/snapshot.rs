//! Status and metrics from one snapshot: the loop copies what only it knows (states,
//! reasons, election facts; the VIP lists are shared, not copied), and another thread
//! reads the per-VIP entries and counters from the maps and builds the `Status`. So
//! a status call or a scrape of 20,000 VIPs costs the loop microseconds, and the
//! election's timers never wait behind it.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use vip_common::action;

use super::{group::VipRuntime, Agent};
use crate::{
    counters::Counts,
    dataplane::Reader,
    host,
    mac::Mac,
    reason::{self, Reason},
    state::State,
    status::{
        ActivePeer, BalanceStatus, EchoStatus, EipStatus, ElectionStatus, GroupStatus,
        MemberStatus, Route6Status, Status, TakeoverStatus, TransitionStatus, VipStatus,
    },
};

/// A request for a status: the loop's snapshot and where the answer goes.
pub(super) type Job = (
    Snapshot,
    tokio::sync::oneshot::Sender<crate::control::Response>,
);

/// Where the loop sends status requests.
pub(super) type Renderer = std::sync::mpsc::Sender<Job>;

/// Renders statuses on a thread of its own at a lower priority (nice 10): reading
/// 20,000 VIPs' counters takes milliseconds of CPU, which on a busy host must not
/// delay the threads that run the election's timers and sockets.
pub(super) fn spawn_renderer(reader: Arc<Reader>) -> Renderer {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("vip-status".into())
        .spawn(move || {
            // SAFETY: setpriority on the calling thread (who = 0 is this thread on
            // Linux); lowering one's own priority needs no privilege, and a failure
            // leaves it as it was.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            }
            while let Ok((snap, reply)) = rx.recv() {
                let _ = reply.send(crate::control::Response {
                    ok: true,
                    status: Some(Box::new(snap.render(&reader))),
                    ..Default::default()
                });
            }
        });
    if let Err(e) = spawned {
        log::error!("starting the status thread: {e}; status requests will not be answered");
    }
    tx
}

/// What the loop knows, at one instant.
pub struct Snapshot {
    node: String,
    interface: String,
    xdp_mode: String,
    xdp_mode_reason: String,
    warnings: Vec<String>,
    unknown_group_adverts: u64,
    stale_adverts: u64,
    address_errors: u64,
    announcement_retries: u64,
    announcements_dropped: u64,
    groups: Vec<GroupSnap>,
    eips: Vec<EipSnap>,
    routes6: Vec<Route6Snap>,
    /// The local AS and where the speaker's sessions are read (off the loop).
    bgp: Option<(u32, crate::speaker::StatusSource)>,
}

struct GroupSnap {
    name: String,
    state: State,
    reason: Reason,
    since: SystemTime,
    transitions: u64,
    last: Option<(State, State, Reason, SystemTime)>,
    transition_reasons: BTreeMap<String, u64>,
    mode: &'static str,
    forward_to: Option<Mac>,
    resident: bool,
    virtual_mac: Option<Mac>,
    announce: &'static str,
    /// A routed group's routes: announced since, or not (None: not routed).
    routes: Option<Option<SystemTime>>,
    healthy: bool,
    health: String,
    election: Option<ElectionStatus>,
    last_takeover: Option<TakeoverStatus>,
    echo: Option<EchoStatus>,
    balance: Option<BalanceSnap>,
    vips: Arc<Vec<VipRuntime>>,
}

/// A balanced group's slot, ports and members (by index: address, MAC, in the
/// table, this node); the counters are read off the loop.
struct BalanceSnap {
    slot: u32,
    ports: Vec<String>,
    members: Vec<(String, Option<String>, bool, bool)>,
}

struct EipSnap {
    cfg: crate::config::Eip,
    index: u32,
}

struct Route6Snap {
    cfg: crate::config::Route6,
    index: u32,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Agent {
    /// The loop's part of a status: cheap, whatever the number of VIPs.
    pub fn snapshot(&self) -> Snapshot {
        let now_boot = host::boottime_ns();
        let groups = self
            .groups
            .iter()
            .map(|g| GroupSnap {
                name: g.cfg.name.clone(),
                state: g.state,
                reason: g.reason.clone(),
                since: g.since,
                transitions: g.transitions,
                last: g
                    .last_transition
                    .as_ref()
                    .map(|t| (t.from, g.state, t.reason.clone(), t.at)),
                transition_reasons: g.transition_reasons.clone(),
                mode: g.mode(),
                forward_to: g.forward_to().filter(|_| g.state != State::Active),
                resident: g.own.terms().resident,
                virtual_mac: g.cfg.virtual_mac,
                announce: g.cfg.announce.name(),
                routes: g.cfg.announce.bgp().then_some(g.routes),
                healthy: g.healthy(),
                health: g.health_detail(),
                election: g.election().map(|e| ElectionStatus {
                    priority: e.params().priority,
                    effective_priority: e.effective_priority(),
                    pinned: reason::pin_label(e.pin()).map(String::from),
                    advert_interval_ms: e.params().interval.as_millis() as u64,
                    current_active: if g.state == State::Active {
                        Some(ActivePeer {
                            address: e.params().me.to_string(),
                            mac: self.iface.mac.to_string(),
                            priority: e.effective_priority(),
                            this_node: true,
                        })
                    } else {
                        e.active().map(|a| ActivePeer {
                            address: a.addr.to_string(),
                            mac: a.mac.to_string(),
                            priority: a.priority,
                            this_node: false,
                        })
                    },
                    counters: Counts(e.counters),
                    errors: Counts(g.errors),
                    lease_remaining_ms: g
                        .own
                        .lease()
                        .deadline()
                        .map(|d| d.saturating_sub(now_boot) / 1_000_000),
                }),
                last_takeover: g.takeover.clone().map(|mut t| {
                    if t.announced_mono_ns.is_none() {
                        t.announced_mono_ns = g.announced.get().filter(|&a| a >= t.decided_mono_ns);
                    }
                    t
                }),
                echo: g.cfg.election.as_ref().map(|e| {
                    let s = self.echo.as_ref().and_then(|p| p.stats(&g.cfg.name));
                    let state = if e.echo_interval.is_zero() {
                        "off"
                    } else {
                        s.as_ref().map_or("idle", |s| s.state)
                    };
                    let s = s.unwrap_or_default();
                    EchoStatus {
                        interval_ms: e.echo_interval.as_millis() as u64,
                        misses: e.echo_misses,
                        state: state.into(),
                        peer: s.peer.map(|p| p.to_string()),
                        counters: Counts(s.counters),
                        realtime: self.echo.as_ref().is_some_and(|p| p.realtime()),
                    }
                }),
                balance: g.balance.as_ref().map(|b| {
                    // The director shows what its table holds; a member what it hears.
                    let self_up = matches!(g.state, State::Active | State::Standby);
                    let up = b
                        .programmed
                        .clone()
                        .unwrap_or_else(|| b.up(std::time::Instant::now(), self_up));
                    BalanceSnap {
                        slot: b.slot,
                        ports: b
                            .ports
                            .iter()
                            .map(|p| crate::config::Balance::port_label(*p))
                            .collect(),
                        members: b
                            .nodes
                            .iter()
                            .zip(up)
                            .map(|(n, u)| {
                                (
                                    n.addr.to_string(),
                                    n.mac.map(|m| m.to_string()),
                                    u,
                                    n.this_node,
                                )
                            })
                            .collect(),
                    }
                }),
                vips: g.vips.clone(),
            })
            .collect();
        Snapshot {
            node: self.cfg.node.name.clone(),
            interface: self.iface.name.clone(),
            xdp_mode: self
                .dp
                .xdp_choice()
                .map_or(self.cfg.node.xdp_mode, |c| c.mode)
                .as_str()
                .into(),
            xdp_mode_reason: self
                .dp
                .xdp_choice()
                .map(|c| c.reason.clone())
                .unwrap_or_default(),
            warnings: self.warnings.clone(),
            unknown_group_adverts: self.unknown_group_adverts,
            stale_adverts: self.stale_adverts,
            address_errors: self.addrs.errors(),
            announcement_retries: self.socket.retried(),
            announcements_dropped: self.socket.dropped(),
            groups,
            eips: self
                .eips
                .iter()
                .enumerate()
                .map(|(i, e)| EipSnap {
                    cfg: e.cfg.clone(),
                    index: i as u32,
                })
                .collect(),
            routes6: self
                .routes6
                .iter()
                .enumerate()
                .map(|(i, r)| Route6Snap {
                    cfg: r.cfg.clone(),
                    index: i as u32,
                })
                .collect(),
            bgp: self
                .cfg
                .bgp
                .as_ref()
                .zip(self.speaker_status.clone())
                .map(|(b, s)| (b.local_as, s)),
        }
    }

    /// The handles `Snapshot::render` reads the maps with.
    pub fn reader(&self) -> Arc<Reader> {
        self.reader.clone()
    }
}

impl Snapshot {
    /// Reads the entries and counters and builds the status (off the loop).
    pub fn render(self, dp: &Reader) -> Status {
        let now_mono = host::monotonic_ns();
        let groups = self
            .groups
            .into_iter()
            .map(|g| GroupStatus {
                name: g.name,
                role: reason::role_label(g.state).into(),
                state: g.state.as_str().into(),
                reason: g.reason.to_string(),
                reason_kind: g.reason.kind().into(),
                since_unix_ms: unix_ms(g.since),
                last_transition: g.last.map(|(from, to, r, at)| TransitionStatus {
                    from: from.as_str().into(),
                    to: to.as_str().into(),
                    reason: r.to_string(),
                    reason_kind: r.kind().into(),
                    at_unix_ms: unix_ms(at),
                }),
                transitions: g.transitions,
                transition_reasons: g.transition_reasons,
                mode: g.mode.into(),
                forward_to: g.forward_to.map(|m| m.to_string()),
                addresses: if g.resident {
                    "resident"
                } else {
                    "on_takeover"
                }
                .into(),
                virtual_mac: g.virtual_mac.map(|m| m.to_string()),
                announce: g.announce.into(),
                routes: g.routes.map(|since| crate::status::RoutesStatus {
                    announced: since.is_some(),
                    since_unix_ms: since.map(unix_ms),
                }),
                healthy: g.healthy,
                health: g.health,
                election: g.election,
                last_takeover: g.last_takeover,
                echo: g.echo,
                balance: g.balance.map(
                    |BalanceSnap {
                         slot,
                         ports,
                         members,
                     }| BalanceStatus {
                        ports,
                        members: members
                            .into_iter()
                            .enumerate()
                            .map(|(i, (address, mac, healthy, this_node))| {
                                let s = dp.balance_stats(slot, i as u32).unwrap_or_default();
                                MemberStatus {
                                    address,
                                    mac,
                                    healthy,
                                    this_node,
                                    stats: Counts(s),
                                }
                            })
                            .collect(),
                    },
                ),
                vips: g
                    .vips
                    .iter()
                    .map(|v| {
                        let s = dp.stats(v.slot).unwrap_or_default();
                        let act = dp.vip(v.vip.addr).map(|e| e.action).unwrap_or(action::NONE);
                        VipStatus {
                            address: v.vip.addr.to_string(),
                            prefix: v.vip.prefix,
                            action: action::name(act).into(),
                            stats: Counts(s),
                        }
                    })
                    .collect(),
            })
            .collect();
        let mut global: BTreeMap<String, u64> = dp
            .global_stats()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("reserved"))
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        global.insert(
            "adverts_for_unknown_groups".into(),
            self.unknown_group_adverts,
        );
        global.insert("address_errors".into(), self.address_errors);
        global.insert("announcement_retries".into(), self.announcement_retries);
        global.insert("announcements_dropped".into(), self.announcements_dropped);
        global.insert("stale_adverts".into(), self.stale_adverts);
        global.extend(crate::exhaustion::counters().map(|(k, v)| (k.to_string(), v)));
        Status {
            node: self.node,
            interface: self.interface,
            xdp_mode: self.xdp_mode,
            xdp_mode_reason: self.xdp_mode_reason,
            groups,
            global,
            warnings: self.warnings,
            eips: self
                .eips
                .into_iter()
                .map(|e| {
                    let st = dp.eip_stats(e.index).unwrap_or_default();
                    let owner = dp.owner(e.cfg.vip);
                    EipStatus {
                        address: e.cfg.address.to_string(),
                        vip: e.cfg.vip.to_string(),
                        external_interface: e.cfg.external_interface,
                        internal_interface: e.cfg.internal_interface,
                        owner: owner.map(|o| Mac(o.mac).to_string()),
                        owner_age_ms: owner
                            .map(|o| now_mono.saturating_sub(o.updated_ns) / 1_000_000),
                        stats: Counts(st),
                        nodes: e
                            .cfg
                            .nodes
                            .as_ref()
                            .map(|n| n.iter().map(Mac::to_string).collect()),
                    }
                })
                .collect(),
            bgp: self.bgp.map(|(local_as, src)| bgp_status(local_as, &src)),
            routes6: self
                .routes6
                .into_iter()
                .map(|r| {
                    let owner = dp.route6_owner(r.cfg.vip);
                    Route6Status {
                        vip: r.cfg.vip.to_string(),
                        external_interface: r.cfg.external_interface,
                        internal_interface: r.cfg.internal_interface,
                        owner: owner.map(|o| Mac(o.mac).to_string()),
                        owner_age_ms: owner
                            .map(|o| now_mono.saturating_sub(o.updated_ns) / 1_000_000),
                        stats: Counts(dp.route6_stats(r.index).unwrap_or_default()),
                        nodes: r.cfg.nodes.iter().map(Mac::to_string).collect(),
                    }
                })
                .collect(),
        }
    }
}

/// The speaker's sessions, asked over its control socket (bounded by its timeout).
fn bgp_status(local_as: u32, src: &crate::speaker::StatusSource) -> crate::status::BgpStatus {
    let secs = |s: &Option<String>| s.as_deref().and_then(|t| t.parse::<u64>().ok());
    match src.sessions() {
        Ok(sessions) => crate::status::BgpStatus {
            local_as,
            sessions: sessions
                .into_iter()
                .map(|x| crate::status::BgpSession {
                    neighbor: x.neighbor.to_string(),
                    since_unix_s: secs(&x.since),
                    established: x.established,
                    state: x.state,
                    bfd_up: x.bfd.as_ref().is_some_and(|b| b.up),
                    bfd_since_unix_s: x.bfd.as_ref().and_then(|b| secs(&b.since)),
                    bfd: x.bfd.map(|b| b.state.to_lowercase()),
                })
                .collect(),
            error: None,
        },
        Err(e) => crate::status::BgpStatus {
            local_as,
            sessions: Vec::new(),
            error: Some(format!("{e:#}")),
        },
    }
}
