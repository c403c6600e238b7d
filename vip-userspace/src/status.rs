//! What `vip status` shows: the agent's state and counters, as JSON for scripts and
//! as a table for people.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};
use vip_common::{BalanceStats, EipStats, Route6Stats, VipStats};

use crate::counters::{AdvertErrors, Counted, Counts, EchoCounters, ElectionCounters};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub node: String,
    pub interface: String,
    pub xdp_mode: String,
    /// Why the data plane runs in `xdp_mode` (auto's decision, or "configured").
    #[serde(default)]
    pub xdp_mode_reason: String,
    pub groups: Vec<GroupStatus>,
    /// Program-wide data-plane counters by name.
    pub global: BTreeMap<String, u64>,
    pub warnings: Vec<String>,
    /// Elastic IPs this node translates (a gateway).
    #[serde(default)]
    pub eips: Vec<EipStatus>,
    /// IPv6 VIPs this node routes (a gateway, `[[route6]]`).
    #[serde(default)]
    pub routes6: Vec<Route6Status>,
    /// The BGP speaker's sessions (`[bgp]`).
    #[serde(default)]
    pub bgp: Option<BgpStatus>,
}

/// The BGP speaker as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct BgpStatus {
    pub local_as: u32,
    pub sessions: Vec<BgpSession>,
    /// Set when the speaker could not be asked (it is not running, or did not answer).
    pub error: Option<String>,
}

/// One BGP neighbour's session, and its BFD.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct BgpSession {
    pub neighbor: String,
    /// The speaker's word: "Established", "Active", "Connect"...
    pub state: String,
    pub established: bool,
    pub since_unix_s: Option<u64>,
    /// "up", "down", "init"..., or None without BFD on this session.
    pub bfd: Option<String>,
    pub bfd_up: bool,
    pub bfd_since_unix_s: Option<u64>,
}

/// A routed group's announcement (`announce = "bgp"` or `"both"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RoutesStatus {
    /// Its host routes are in vip's table, exported to every established session.
    pub announced: bool,
    pub since_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Route6Status {
    pub vip: String,
    pub external_interface: String,
    pub internal_interface: String,
    /// The VIP's owner as the data plane learned it from neighbour advertisements,
    /// and how long ago.
    pub owner: Option<String>,
    pub owner_age_ms: Option<u64>,
    /// What the data plane counted for it (see `counters`).
    #[serde(flatten)]
    pub stats: Counts<Route6Stats>,
    /// The nodes the owner may be learned from.
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EipStatus {
    pub address: String,
    pub vip: String,
    pub external_interface: String,
    pub internal_interface: String,
    /// The VIP's owner as the data plane learned it from ARP, and how long ago.
    pub owner: Option<String>,
    pub owner_age_ms: Option<u64>,
    /// What the data plane counted for it (see `counters`).
    #[serde(flatten)]
    pub stats: Counts<EipStats>,
    /// The nodes the owner may be learned from (`nodes`); None: any ARP sender.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupStatus {
    pub name: String,
    /// "active" or "standby" (init and fault count as standby).
    pub role: String,
    /// init, standby, active or fault.
    pub state: String,
    /// Why the group is in this state.
    pub reason: String,
    /// The reason's stable label (as in `transition_reasons` and the metrics).
    #[serde(default)]
    pub reason_kind: String,
    /// When it entered it (Unix time, ms).
    pub since_unix_ms: u64,
    /// The last change of state, with its reason and time.
    #[serde(default)]
    pub last_transition: Option<TransitionStatus>,
    pub transitions: u64,
    /// Transitions by "state/reason kind" (e.g. "active/peer_silent").
    pub transition_reasons: BTreeMap<String, u64>,
    /// static, elected or keepalived.
    pub mode: String,
    /// MAC that standby traffic is forwarded to, if any.
    pub forward_to: Option<String>,
    /// Where the VIP addresses are kept: "on_takeover" (on lo while the node holds
    /// the VIPs) or "resident" (on lo in every role).
    #[serde(default)]
    pub addresses: String,
    /// The group's virtual MAC (`mac`), which its active answers and announces
    /// with; None: the node's own MAC.
    #[serde(default)]
    pub virtual_mac: Option<String>,
    /// How ownership is declared: "arp", "bgp" or "both".
    #[serde(default)]
    pub announce: String,
    /// A routed group's host routes.
    #[serde(default)]
    pub routes: Option<RoutesStatus>,
    /// False while a health check fails (the group is then in fault).
    pub healthy: bool,
    /// Each check and its last result.
    pub health: String,
    /// Present for elected groups.
    pub election: Option<ElectionStatus>,
    /// The last takeover's timing (since this agent started).
    #[serde(default)]
    pub last_takeover: Option<TakeoverStatus>,
    /// The standby's probing of the active's data plane (elected groups).
    #[serde(default)]
    pub echo: Option<EchoStatus>,
    /// Active/active groups: the members and what the director sent each.
    #[serde(default)]
    pub balance: Option<BalanceStatus>,
    pub vips: Vec<VipStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BalanceStatus {
    /// "tcp/443"...; empty: every TCP and UDP port.
    pub ports: Vec<String>,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberStatus {
    pub address: String,
    pub mac: Option<String>,
    /// In the table: heard within 3 intervals (this node: serving).
    pub healthy: bool,
    pub this_node: bool,
    /// New flows and packets the director (this node, while active) sent it.
    #[serde(flatten)]
    pub stats: Counts<BalanceStats>,
}

/// When a takeover was decided and announced, on the host's CLOCK_MONOTONIC (the
/// same clock for every process of the host, so a benchmark can compare).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TakeoverStatus {
    pub reason_kind: String,
    pub decided_mono_ns: u64,
    /// When the first gratuitous ARP / unsolicited NA left.
    pub announced_mono_ns: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EchoStatus {
    pub interval_ms: u64,
    pub misses: u32,
    /// off (echo_interval_ms = 0), idle (not standby, or no active known), probing
    /// (no reply yet: nothing is concluded), armed, or lost.
    pub state: String,
    pub peer: Option<String>,
    #[serde(flatten)]
    pub counters: Counts<EchoCounters>,
    /// True when the prober runs at a real-time priority.
    pub realtime: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransitionStatus {
    pub from: String,
    pub to: String,
    pub reason: String,
    pub reason_kind: String,
    pub at_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ElectionStatus {
    pub priority: u8,
    /// 255 while pinned active by `vip promote`, 0 while pinned standby by `vip demote`.
    pub effective_priority: u8,
    pub pinned: Option<String>,
    pub advert_interval_ms: u64,
    pub current_active: Option<ActivePeer>,
    #[serde(flatten)]
    pub counters: Counts<ElectionCounters>,
    #[serde(flatten)]
    pub errors: Counts<AdvertErrors>,
    /// Time left on the data plane's lease (active or forwarding), if one is held.
    pub lease_remaining_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActivePeer {
    pub address: String,
    pub mac: String,
    pub priority: u8,
    pub this_node: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct VipStatus {
    pub address: String,
    pub prefix: u8,
    /// The data plane's action now: local, redirect, forward or none.
    pub action: String,
    /// What the data plane counted for it (see `counters`).
    #[serde(flatten)]
    pub stats: Counts<VipStats>,
}

/// "850 ms", "12.3 s", "4 min 5 s", "3 h 2 min".
/// "announced to 10.0.0.1 (Established, BFD up, 12 min)", or "not announced".
fn routes_line(r: &RoutesStatus, bgp: Option<&BgpStatus>, now_ms: u64) -> String {
    if !r.announced {
        return "BGP: not announced".into();
    }
    let age = |s: Option<u64>| s.map(|s| human_ms(now_ms.saturating_sub(s * 1000)));
    let mut to = Vec::new();
    if let Some(b) = bgp {
        for x in &b.sessions {
            let mut parts = vec![x.state.clone()];
            if let Some(bfd) = &x.bfd {
                parts.push(format!("BFD {bfd}"));
            }
            if let Some(a) = age(x.since_unix_s) {
                parts.push(a);
            }
            to.push(format!("{} ({})", x.neighbor, parts.join(", ")));
        }
        if let Some(e) = &b.error {
            to.push(format!("speaker: {e}"));
        }
    }
    let since = r
        .since_unix_ms
        .map(|t| format!(" for {}", human_ms(now_ms.saturating_sub(t))))
        .unwrap_or_default();
    format!("BGP: announced{since} to {}", to.join("; "))
}

pub fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// "33.3%" of `total`; "-" when there is nothing to share.
fn share(part: u64, total: u64) -> String {
    if total == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / total as f64)
    }
}

/// "every TCP and UDP port" or "tcp/443, udp/53".
fn balanced_ports(b: &BalanceStatus) -> String {
    if b.ports.is_empty() {
        "every TCP and UDP port".into()
    } else {
        b.ports.join(", ")
    }
}

/// A member's address as the tables show it, with the "this node" marker.
fn member_label(m: &MemberStatus) -> String {
    if m.this_node {
        format!("{} (this node)", m.address)
    } else {
        m.address.clone()
    }
}

/// Width of the member column: the longest label, at least the header's.
fn member_width(b: &BalanceStatus) -> usize {
    b.members
        .iter()
        .map(|m| member_label(m).len())
        .max()
        .unwrap_or(0)
        .max("MEMBER".len())
}

/// The director's counters are only on the director: on a member they stay 0 (or
/// hold what this node counted when it last directed), so say whose they are.
fn counted_by(g: &GroupStatus, counted: bool) -> String {
    if g.state == "active" {
        return "counted by this node (the director)".into();
    }
    if counted {
        return "counted while this node directed".into();
    }
    match g.election.as_ref().and_then(|e| e.current_active.as_ref()) {
        Some(a) if !a.this_node => format!("counted by the director ({})", a.address),
        _ => "counted by the director".into(),
    }
}

/// `vip status`'s member table of a balanced group: who is in the director's table
/// and what it sent each, with each member's share of the flows.
fn member_table(g: &GroupStatus, b: &BalanceStatus) -> String {
    let mut s = String::new();
    let flows: u64 = b.members.iter().map(|m| m.stats.flows).sum();
    let packets: u64 = b.members.iter().map(|m| m.stats.packets).sum();
    // Zeros on a member are "not counted here", not "no traffic".
    let show = g.state == "active" || flows + packets > 0;
    let up = b.members.iter().filter(|m| m.healthy).count();
    let _ = writeln!(
        s,
        "{:<12} balance ({}): {up} of {} members up; flows and packets {}",
        "",
        balanced_ports(b),
        b.members.len(),
        counted_by(g, flows + packets > 0)
    );
    let w = member_width(b);
    let _ = writeln!(
        s,
        "{:<12} {:<w$}  {:<17}  {:<7} {:>9} {:>6} {:>11}",
        "", "MEMBER", "MAC", "STATE", "FLOWS", "SHARE", "PACKETS"
    );
    for m in &b.members {
        let (f, sh, p) = if show {
            (
                m.stats.flows.to_string(),
                share(m.stats.flows, flows),
                m.stats.packets.to_string(),
            )
        } else {
            ("-".into(), "-".into(), "-".into())
        };
        let _ = writeln!(
            s,
            "{:<12} {:<w$}  {:<17}  {:<7} {f:>9} {sh:>6} {p:>11}",
            "",
            member_label(m),
            m.mac.as_deref().unwrap_or("-"),
            if m.healthy { "healthy" } else { "down" },
        );
    }
    s
}

/// What `vip watch` keeps between two polls: the counters it saw last, to turn them
/// into rates.
#[derive(Debug, Default)]
pub struct WatchCounters {
    /// Per "group/VIP": packets, bytes, ARP+ND replies.
    vips: BTreeMap<String, (u64, u64, u64)>,
    /// Per "group/member": packets, flows.
    members: BTreeMap<String, (u64, u64)>,
}

/// One frame of `vip watch`: per VIP its packets/s, bits/s and ARP+ND/s, and per
/// member of a balanced group the packets/s and new flows/s the director sent it and
/// its share of the interval's packets. `elapsed_s` is the time since the previous
/// poll (None on the first: no rates yet); `last` is updated to `status`'s counters.
pub fn watch_frame(
    status: &Status,
    last: &mut WatchCounters,
    elapsed_s: Option<f64>,
    interval_ms: u64,
) -> String {
    let rate = |now: u64, prev: u64| match elapsed_s {
        Some(dt) => now.saturating_sub(prev) as f64 / dt.max(1e-3),
        None => 0.0,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vip watch: node {} on {} (every {interval_ms} ms; Ctrl-C to stop)",
        status.node, status.interface
    );
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:<26} {:<9} {:>12} {:>12} {:>10}",
        "GROUP", "STATE", "VIP", "ACTION", "PKTS/S", "BITS/S", "ARP+ND/S"
    );
    for g in &status.groups {
        for v in &g.vips {
            let now = (
                v.stats.rx_packets,
                v.stats.rx_bytes,
                v.stats.arp_replies + v.stats.nd_replies,
            );
            let prev = last
                .vips
                .insert(format!("{}/{}", g.name, v.address), now)
                .unwrap_or(now);
            let _ = writeln!(
                out,
                "{:<12} {:<8} {:<26} {:<9} {:>12.0} {:>12.0} {:>10.0}",
                g.name,
                g.state,
                format!("{}/{}", v.address, v.prefix),
                v.action,
                rate(now.0, prev.0),
                rate(now.1, prev.1) * 8.0,
                rate(now.2, prev.2)
            );
        }
        let Some(b) = &g.balance else { continue };
        // Only the director counts what it sends each member.
        let director = g.state == "active";
        let deltas: Vec<(u64, u64)> = b
            .members
            .iter()
            .map(|m| {
                let now = (m.stats.packets, m.stats.flows);
                let prev = last
                    .members
                    .insert(format!("{}/{}", g.name, m.address), now)
                    .unwrap_or(now);
                (now.0.saturating_sub(prev.0), now.1.saturating_sub(prev.1))
            })
            .collect();
        let interval_packets: u64 = deltas.iter().map(|d| d.0).sum();
        let w = member_width(b);
        let _ = writeln!(
            out,
            "{:<12} {:<w$}  {:<7} {:>12} {:>12} {:>6}{}",
            "",
            "MEMBER",
            "STATE",
            "PKTS/S",
            "NEW FLOWS/S",
            "SHARE",
            if director {
                ""
            } else {
                "  (counted by the director)"
            }
        );
        for (m, (dp, df)) in b.members.iter().zip(&deltas) {
            let (p, f, sh) = match elapsed_s {
                Some(_) if director => (
                    format!("{:.0}", rate(*dp, 0)),
                    format!("{:.0}", rate(*df, 0)),
                    share(*dp, interval_packets),
                ),
                None if director => ("0".into(), "0".into(), "-".into()),
                _ => ("-".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "{:<12} {:<w$}  {:<7} {p:>12} {f:>12} {sh:>6}",
                "",
                member_label(m),
                if m.healthy { "healthy" } else { "down" },
            );
        }
    }
    out
}

impl Status {
    /// A table readable at a glance.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "node {}  interface {} (xdp {})",
            self.node, self.interface, self.xdp_mode
        );
        if !self.xdp_mode_reason.is_empty() {
            let _ = writeln!(s, "xdp mode: {}", self.xdp_mode_reason);
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        // The VIP counters with a column, in table order (see `counters`).
        let columns: Vec<_> = VipStats::COUNTERS
            .iter()
            .filter_map(|c| c.column.map(|col| (col, c.get)))
            .collect();
        let _ = write!(
            s,
            "{:<12} {:<8} {:<26} {:<9}",
            "GROUP", "STATE", "VIP", "ACTION"
        );
        for (col, _) in &columns {
            let _ = write!(s, " {:>w$}", col.header, w = col.width);
        }
        s.push('\n');
        for g in &self.groups {
            for (i, v) in g.vips.iter().enumerate() {
                let (name, state) = if i == 0 {
                    (g.name.as_str(), g.state.as_str())
                } else {
                    ("", "")
                };
                let _ = write!(
                    s,
                    "{:<12} {:<8} {:<26} {:<9}",
                    name,
                    state,
                    format!("{}/{}", v.address, v.prefix),
                    v.action,
                );
                for (col, get) in &columns {
                    let _ = write!(s, " {:>w$}", get(&v.stats), w = col.width);
                }
                s.push('\n');
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let _ = writeln!(
                s,
                "{:<12} {} for {} ({})",
                "",
                g.state,
                human_ms(now.saturating_sub(g.since_unix_ms)),
                g.reason
            );
            if let Some(t) = &g.last_transition {
                let _ = writeln!(
                    s,
                    "{:<12} last transition {} -> {} {} ago: {}",
                    "",
                    t.from,
                    t.to,
                    human_ms(now.saturating_sub(t.at_unix_ms)),
                    t.reason
                );
            }
            if let Some(e) = &g.election {
                let active = match &e.current_active {
                    Some(a) if a.this_node => "this node".to_string(),
                    Some(a) => format!("{} ({}, priority {})", a.address, a.mac, a.priority),
                    None => "unknown".into(),
                };
                let _ = writeln!(
                    s,
                    "{:<12} priority {}{}  active: {active}  adverts sent {} received {}  rejected: auth {} replay {} malformed {} unknown-peer {}  split-brains {}  leases lost {}",
                    "",
                    e.effective_priority,
                    e.pinned.as_ref().map(|p| format!(" (pinned {p})")).unwrap_or_default(),
                    e.counters.adverts_sent,
                    e.counters.adverts_received,
                    e.errors.auth_failures,
                    e.errors.replays,
                    e.errors.malformed,
                    e.errors.unknown_peers,
                    e.counters.split_brains,
                    e.counters.leases_lost
                );
            }
            if !g.health.is_empty() {
                let _ = writeln!(s, "{:<12} health: {}", "", g.health);
            }
            if g.addresses == "resident" {
                let _ = writeln!(s, "{:<12} addresses: resident (on lo in every role)", "");
            }
            if let Some(m) = &g.virtual_mac {
                let _ = writeln!(s, "{:<12} virtual MAC: {m}", "");
            }
            if let Some(r) = &g.routes {
                let _ = writeln!(s, "{:<12} {}", "", routes_line(r, self.bgp.as_ref(), now));
            }
            if let Some(b) = &g.balance {
                s.push_str(&member_table(g, b));
            }
        }
        for e in &self.eips {
            let _ = writeln!(
                s,
                "eip {} -> {}  owner {}  in {} pkts / {} B  out {} pkts / {} B  via kernel {}  owner changes {}  refused {}",
                e.address,
                e.vip,
                e.owner.as_deref().unwrap_or("unknown"),
                e.stats.in_packets,
                e.stats.in_bytes,
                e.stats.out_packets,
                e.stats.out_bytes,
                e.stats.to_kernel,
                e.stats.owner_changes,
                e.stats.owner_refused
            );
            let _ = writeln!(
                s,
                "{:<12} owner learned from: {}",
                "",
                match &e.nodes {
                    Some(n) => n.join(", "),
                    None => "any ARP sender (no nodes: one forged ARP takes the traffic)".into(),
                }
            );
        }
        for r in &self.routes6 {
            let _ = writeln!(
                s,
                "route6 {}  owner {}  in {} pkts / {} B  via kernel {}  owner changes {}  refused {}",
                r.vip,
                r.owner.as_deref().unwrap_or("unknown"),
                r.stats.in_packets,
                r.stats.in_bytes,
                r.stats.to_kernel,
                r.stats.owner_changes,
                r.stats.owner_refused
            );
            let _ = writeln!(
                s,
                "{:<12} {} -> {}, owner learned from: {}",
                "",
                r.external_interface,
                r.internal_interface,
                r.nodes.join(", ")
            );
        }
        let nonzero: Vec<String> = self
            .global
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !nonzero.is_empty() {
            let _ = writeln!(s, "data plane: {}", nonzero.join(" "));
        }
        s
    }
}

/// A status with every optional part present and every counter distinct and non-zero
/// (counter `i` of a table holds `base + i`), for the tests of its views.
#[cfg(test)]
pub(crate) fn example() -> Status {
    fn filled<T: Counted>(base: u64) -> Counts<T> {
        let mut t = T::default();
        for (i, c) in T::COUNTERS.iter().enumerate() {
            (c.set)(&mut t, base + i as u64);
        }
        Counts(t)
    }
    let member = |address: &str, this_node: bool, base: u64| MemberStatus {
        address: address.into(),
        mac: Some("02:00:00:00:00:0b".into()),
        healthy: !this_node,
        this_node,
        stats: filled(base),
    };
    let group = GroupStatus {
        name: "web".into(),
        role: "active".into(),
        state: "active".into(),
        reason: "no advertisement from the active for 61 ms".into(),
        reason_kind: "peer_silent".into(),
        since_unix_ms: u64::MAX,
        last_transition: Some(TransitionStatus {
            from: "standby".into(),
            to: "active".into(),
            reason: "no advertisement from the active for 61 ms".into(),
            reason_kind: "peer_silent".into(),
            at_unix_ms: u64::MAX,
        }),
        transitions: 2,
        transition_reasons: [
            ("active/peer_silent".into(), 1),
            ("standby/start".into(), 1),
        ]
        .into(),
        mode: "elected".into(),
        forward_to: None,
        addresses: "on_takeover".into(),
        virtual_mac: None,
        announce: "arp".into(),
        routes: None,
        healthy: true,
        health: "track_interface ok (eth0 is up)".into(),
        election: Some(ElectionStatus {
            priority: 200,
            effective_priority: 200,
            pinned: None,
            advert_interval_ms: 20,
            current_active: Some(ActivePeer {
                address: "10.0.0.10".into(),
                mac: "02:00:00:00:00:0a".into(),
                priority: 200,
                this_node: true,
            }),
            counters: filled(200),
            errors: filled(300),
            lease_remaining_ms: Some(45),
        }),
        last_takeover: Some(TakeoverStatus {
            reason_kind: "peer_silent".into(),
            decided_mono_ns: 1,
            announced_mono_ns: Some(2),
        }),
        echo: Some(EchoStatus {
            interval_ms: 2,
            misses: 6,
            state: "idle".into(),
            peer: None,
            counters: filled(400),
            realtime: true,
        }),
        balance: Some(BalanceStatus {
            ports: vec![],
            members: vec![
                member("10.0.0.10", true, 500),
                member("10.0.0.11", false, 600),
            ],
        }),
        vips: vec![VipStatus {
            address: "10.0.0.50".into(),
            prefix: 24,
            action: "local".into(),
            stats: filled(100),
        }],
    };
    Status {
        node: "a".into(),
        interface: "eth0".into(),
        xdp_mode: "native".into(),
        xdp_mode_reason: "configured".into(),
        groups: vec![group],
        global: [("echo_answered".into(), 7), ("parse_errors".into(), 0)].into(),
        warnings: vec!["a warning".into()],
        eips: vec![EipStatus {
            address: "203.0.113.10".into(),
            vip: "10.0.0.50".into(),
            external_interface: "eth1".into(),
            internal_interface: "eth0".into(),
            owner: Some("02:00:00:00:00:0a".into()),
            owner_age_ms: Some(3),
            stats: filled(700),
            nodes: Some(vec!["02:00:00:00:00:0a".into()]),
        }],
        bgp: Some(BgpStatus {
            local_as: 65001,
            sessions: vec![BgpSession {
                neighbor: "10.0.0.1".into(),
                state: "Established".into(),
                established: true,
                since_unix_s: Some(1_700_000_000),
                bfd: Some("up".into()),
                bfd_up: true,
                bfd_since_unix_s: Some(1_700_000_000),
            }],
            error: None,
        }),
        routes6: vec![Route6Status {
            vip: "2001:db8::60".into(),
            external_interface: "eth1".into(),
            internal_interface: "eth0".into(),
            owner: Some("02:00:00:00:00:0a".into()),
            owner_age_ms: Some(4),
            stats: filled(800),
            nodes: vec!["02:00:00:00:00:0a".into(), "02:00:00:00:00:0b".into()],
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(address: &str, this_node: bool, flows: u64, packets: u64) -> MemberStatus {
        MemberStatus {
            address: address.into(),
            mac: Some(format!("02:00:00:00:00:{}", &address[address.len() - 2..])),
            healthy: true,
            this_node,
            stats: Counts(BalanceStats {
                flows,
                packets,
                ..Default::default()
            }),
        }
    }

    /// Group "api" balanced over .10 (this node), .11 and .14, in `state`.
    fn balanced(state: &str, members: Vec<MemberStatus>) -> GroupStatus {
        GroupStatus {
            name: "api".into(),
            role: if state == "active" {
                "active"
            } else {
                "standby"
            }
            .into(),
            state: state.into(),
            reason: "elected".into(),
            reason_kind: "start".into(),
            since_unix_ms: 0,
            last_transition: None,
            transitions: 1,
            transition_reasons: BTreeMap::new(),
            mode: "elected".into(),
            forward_to: None,
            addresses: "on_takeover".into(),
            virtual_mac: None,
            announce: "arp".into(),
            routes: None,
            healthy: true,
            health: String::new(),
            election: Some(ElectionStatus {
                priority: 200,
                effective_priority: 200,
                pinned: None,
                advert_interval_ms: 100,
                current_active: Some(ActivePeer {
                    address: "10.0.0.11".into(),
                    mac: "02:00:00:00:00:11".into(),
                    priority: 250,
                    this_node: state == "active",
                }),
                counters: Counts::default(),
                errors: Counts::default(),
                lease_remaining_ms: None,
            }),
            last_takeover: None,
            echo: None,
            balance: Some(BalanceStatus {
                ports: vec![],
                members,
            }),
            vips: vec![VipStatus {
                address: "10.0.0.60".into(),
                prefix: 24,
                action: "local".into(),
                stats: Counts(VipStats {
                    rx_packets: 600,
                    ..Default::default()
                }),
            }],
        }
    }

    fn status(groups: Vec<GroupStatus>) -> Status {
        Status {
            node: "a".into(),
            interface: "eth0".into(),
            xdp_mode: "native".into(),
            xdp_mode_reason: String::new(),
            groups,
            global: BTreeMap::new(),
            warnings: vec![],
            eips: vec![],
            routes6: vec![],
            bgp: None,
        }
    }

    #[test]
    fn the_director_shows_each_members_share_of_the_flows() {
        let mut down = member("10.0.0.14", false, 100, 180);
        down.healthy = false;
        down.mac = None;
        let g = balanced(
            "active",
            vec![
                member("10.0.0.10", true, 101, 202),
                member("10.0.0.11", false, 99, 198),
                down,
            ],
        );
        let want = [
            "             balance (every TCP and UDP port): 2 of 3 members up; flows and packets counted by this node (the director)",
            "             MEMBER                 MAC                STATE       FLOWS  SHARE     PACKETS",
            "             10.0.0.10 (this node)  02:00:00:00:00:10  healthy       101  33.7%         202",
            "             10.0.0.11              02:00:00:00:00:11  healthy        99  33.0%         198",
            "             10.0.0.14              -                  down          100  33.3%         180",
        ];
        let table = status(vec![g]).table();
        let lines: Vec<&str> = table.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with("balance"))
            .unwrap_or_else(|| panic!("no member table in:\n{table}"));
        assert_eq!(&lines[at..at + want.len()], &want[..], "\n{table}");
        // After the group's other lines: its VIP line comes first.
        assert!(lines[..at].iter().any(|l| l.contains("10.0.0.60/24")));
    }

    #[test]
    fn a_member_says_the_director_counts_and_shows_no_zeros() {
        let g = balanced(
            "standby",
            vec![
                member("10.0.0.10", true, 0, 0),
                member("10.0.0.11", false, 0, 0),
            ],
        );
        let t = member_table(&g, g.balance.as_ref().unwrap());
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].ends_with("flows and packets counted by the director (10.0.0.11)"),
            "{t}"
        );
        assert!(
            lines[2].ends_with("healthy         -      -           -"),
            "{t}"
        );
        // A former director keeps what it counted, and says so.
        let g = balanced("standby", vec![member("10.0.0.10", true, 3, 9)]);
        let t = member_table(&g, g.balance.as_ref().unwrap());
        assert!(t.contains("counted while this node directed"), "{t}");
        assert!(t.contains("  3 100.0%           9"), "{t}");
    }

    #[test]
    fn ports_are_named_when_listed() {
        let mut g = balanced("active", vec![member("10.0.0.10", true, 0, 0)]);
        if let Some(b) = g.balance.as_mut() {
            b.ports = vec!["tcp/443".into(), "udp/53".into()];
        }
        let t = member_table(&g, g.balance.as_ref().unwrap());
        assert!(t.starts_with("             balance (tcp/443, udp/53): 1 of 1 members up"));
        // No flows yet: zeros, and no share to speak of.
        assert!(
            t.lines().nth(2).unwrap().ends_with("0      -           0"),
            "{t}"
        );
    }

    #[test]
    fn watch_shows_member_rates_and_the_intervals_share() {
        let mut last = WatchCounters::default();
        let members = |f: [u64; 3], p: [u64; 3]| {
            vec![
                member("10.0.0.10", true, f[0], p[0]),
                member("10.0.0.11", false, f[1], p[1]),
                member("10.0.0.14", false, f[2], p[2]),
            ]
        };
        let first = status(vec![balanced(
            "active",
            members([10, 10, 10], [100, 100, 100]),
        )]);
        let f0 = watch_frame(&first, &mut last, None, 1000);
        assert!(f0.starts_with("vip watch: node a on eth0 (every 1000 ms; Ctrl-C to stop)\n"));
        assert!(
            f0.contains(
                "             10.0.0.11              healthy            0            0      -\n"
            ),
            "{f0}"
        );
        // Half a second later: 50, 100 and 350 more packets; 5, 0 and 20 more flows.
        let mut second = status(vec![balanced(
            "active",
            members([15, 10, 30], [150, 200, 450]),
        )]);
        second.groups[0].vips[0].stats.0.rx_packets = 1100;
        let f1 = watch_frame(&second, &mut last, Some(0.5), 1000);
        let want = [
            "api          active   10.0.0.60/24               local             1000            0          0",
            "             MEMBER                 STATE         PKTS/S  NEW FLOWS/S  SHARE",
            "             10.0.0.10 (this node)  healthy          100           10  10.0%",
            "             10.0.0.11              healthy          200            0  20.0%",
            "             10.0.0.14              healthy          700           40  70.0%",
        ];
        let lines: Vec<&str> = f1.lines().skip(2).collect();
        assert_eq!(lines, want, "\n{f1}");
    }

    #[test]
    fn watch_on_a_member_leaves_the_rates_to_the_director() {
        let mut last = WatchCounters::default();
        let s = status(vec![balanced(
            "standby",
            vec![member("10.0.0.10", true, 0, 0)],
        )]);
        watch_frame(&s, &mut last, None, 1000);
        let f = watch_frame(&s, &mut last, Some(1.0), 1000);
        assert!(f.contains("SHARE  (counted by the director)"), "{f}");
        assert!(
            f.contains(
                "             10.0.0.10 (this node)  healthy            -            -      -"
            ),
            "{f}"
        );
    }

    #[test]
    fn json_reads_back_and_names_every_counter_in_table_order() {
        let s = example();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let g = &v["groups"][0];
        // Each record's counters are keys of its own object, with their values.
        let check = |o: &serde_json::Value, table: &[(&str, u64)]| {
            for (k, want) in table {
                assert_eq!(o[*k], *want, "{k} in {o}");
            }
        };
        fn entries<T: Counted>(base: u64) -> Vec<(&'static str, u64)> {
            T::COUNTERS
                .iter()
                .enumerate()
                .map(|(i, c)| (c.key, base + i as u64))
                .collect()
        }
        check(&g["vips"][0], &entries::<VipStats>(100));
        check(&g["election"], &entries::<ElectionCounters>(200));
        check(&g["election"], &entries::<AdvertErrors>(300));
        check(&g["echo"], &entries::<EchoCounters>(400));
        check(&g["balance"]["members"][1], &entries::<BalanceStats>(600));
        check(&v["eips"][0], &entries::<EipStats>(700));
        check(&v["routes6"][0], &entries::<Route6Stats>(800));
        // In table order, after the record's own fields.
        let in_order = |head: &str, counters: &[(&str, u64)]| {
            let tail: Vec<String> = counters
                .iter()
                .map(|(k, v)| format!(",\"{k}\":{v}"))
                .collect();
            format!("{{{head}{}}}", tail.concat())
        };
        assert_eq!(
            serde_json::to_string(&s.groups[0].vips[0]).unwrap(),
            in_order(
                r#""address":"10.0.0.50","prefix":24,"action":"local""#,
                &entries::<VipStats>(100)
            )
        );
        let members = &s.groups[0].balance.as_ref().unwrap().members;
        assert_eq!(
            serde_json::to_string(&members[1]).unwrap(),
            in_order(
                r#""address":"10.0.0.11","mac":"02:00:00:00:00:0b","healthy":true,"this_node":false"#,
                &entries::<BalanceStats>(600)
            )
        );
    }

    #[test]
    fn the_table_shows_the_vip_counters_that_have_columns() {
        let t = example().table();
        let lines: Vec<&str> = t.lines().collect();
        let at = lines.iter().position(|l| l.starts_with("GROUP")).unwrap();
        assert_eq!(
            lines[at],
            "GROUP        STATE    VIP                        ACTION       RX_PKTS     RX_BYTES      ARP       ND   REDIRECT    FORWARD"
        );
        // rx_packets 100, rx_bytes 101, ARP 102, ND 103, (passed 104), redirected 105,
        // forwarded 106, (lease_expired 107).
        assert_eq!(
            lines[at + 1],
            "web          active   10.0.0.50/24               local            100          101      102      103        105        106"
        );
        assert!(
            t.contains("adverts sent 200 received 201  rejected: auth 300 replay 301 malformed 302 unknown-peer 303  split-brains 202  leases lost 203"),
            "{t}"
        );
        assert!(
            t.contains("in 700 pkts / 701 B  out 702 pkts / 703 B  via kernel 704  owner changes 705  refused 707"),
            "{t}"
        );
    }
}
