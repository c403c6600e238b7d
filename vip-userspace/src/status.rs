//! What `vip status` shows: the agent's state and counters, as JSON for scripts and
//! as a table for people.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

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
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
    /// Translated but handed to the kernel to route (next hop not known yet).
    pub to_kernel: u64,
    pub owner_changes: u64,
    pub arp_replies: u64,
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
    pub flows: u64,
    pub packets: u64,
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
    pub probes: u64,
    pub replies: u64,
    pub longest_streak: u64,
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
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub split_brains: u64,
    pub auth_failures: u64,
    pub replays: u64,
    pub malformed: u64,
    pub unknown_peers: u64,
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
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub arp_replies: u64,
    pub nd_replies: u64,
    pub passed: u64,
    pub redirected: u64,
    pub forwarded: u64,
    pub lease_expired: u64,
}

/// "850 ms", "12.3 s", "4 min 5 s", "3 h 2 min".
pub fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
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
        let _ = writeln!(
            s,
            "{:<12} {:<8} {:<26} {:<9} {:>10} {:>12} {:>8} {:>8} {:>10} {:>10}",
            "GROUP",
            "STATE",
            "VIP",
            "ACTION",
            "RX_PKTS",
            "RX_BYTES",
            "ARP",
            "ND",
            "REDIRECT",
            "FORWARD"
        );
        for g in &self.groups {
            for (i, v) in g.vips.iter().enumerate() {
                let (name, state) = if i == 0 {
                    (g.name.as_str(), g.state.as_str())
                } else {
                    ("", "")
                };
                let _ = writeln!(
                    s,
                    "{:<12} {:<8} {:<26} {:<9} {:>10} {:>12} {:>8} {:>8} {:>10} {:>10}",
                    name,
                    state,
                    format!("{}/{}", v.address, v.prefix),
                    v.action,
                    v.rx_packets,
                    v.rx_bytes,
                    v.arp_replies,
                    v.nd_replies,
                    v.redirected,
                    v.forwarded
                );
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
                    "{:<12} priority {}{}  active: {active}  adverts sent {} received {}  rejected: auth {} replay {} malformed {} unknown-peer {}  split-brains {}",
                    "",
                    e.effective_priority,
                    e.pinned.as_ref().map(|p| format!(" (pinned {p})")).unwrap_or_default(),
                    e.adverts_sent,
                    e.adverts_received,
                    e.auth_failures,
                    e.replays,
                    e.malformed,
                    e.unknown_peers,
                    e.split_brains
                );
            }
            if !g.health.is_empty() {
                let _ = writeln!(s, "{:<12} health: {}", "", g.health);
            }
        }
        for e in &self.eips {
            let _ = writeln!(
                s,
                "eip {} -> {}  owner {}  in {} pkts / {} B  out {} pkts / {} B  via kernel {}  owner changes {}",
                e.address,
                e.vip,
                e.owner.as_deref().unwrap_or("unknown"),
                e.in_packets,
                e.in_bytes,
                e.out_packets,
                e.out_bytes,
                e.to_kernel,
                e.owner_changes
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
