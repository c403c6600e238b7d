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
    /// The nodes the owner may be learned from (`nodes`); None: any ARP sender.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// ARP naming the VIP from a sender that is not one of `nodes`: not learned, dropped.
    #[serde(default)]
    pub owner_refused: u64,
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
    /// Authenticated datagrams in an epoch not verified yet (the sender was challenged).
    #[serde(default)]
    pub unverified: u64,
    /// Time left on the data plane's lease (active or forwarding), if one is held.
    pub lease_remaining_ms: Option<u64>,
    /// Times this node's lease ran out while it was active (the agent was stalled past
    /// it): each time it stopped answering and listened again.
    #[serde(default)]
    pub leases_lost: u64,
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
    let flows: u64 = b.members.iter().map(|m| m.flows).sum();
    let packets: u64 = b.members.iter().map(|m| m.packets).sum();
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
                m.flows.to_string(),
                share(m.flows, flows),
                m.packets.to_string(),
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
            let now = (v.rx_packets, v.rx_bytes, v.arp_replies + v.nd_replies);
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
                let now = (m.packets, m.flows);
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
                    "{:<12} priority {}{}  active: {active}  adverts sent {} received {}  rejected: auth {} replay {} malformed {} unknown-peer {}  split-brains {}  leases lost {}",
                    "",
                    e.effective_priority,
                    e.pinned.as_ref().map(|p| format!(" (pinned {p})")).unwrap_or_default(),
                    e.adverts_sent,
                    e.adverts_received,
                    e.auth_failures,
                    e.replays,
                    e.malformed,
                    e.unknown_peers,
                    e.split_brains,
                    e.leases_lost
                );
            }
            if !g.health.is_empty() {
                let _ = writeln!(s, "{:<12} health: {}", "", g.health);
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
                e.in_packets,
                e.in_bytes,
                e.out_packets,
                e.out_bytes,
                e.to_kernel,
                e.owner_changes,
                e.owner_refused
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(address: &str, this_node: bool, flows: u64, packets: u64) -> MemberStatus {
        MemberStatus {
            address: address.into(),
            mac: Some(format!("02:00:00:00:00:{}", &address[address.len() - 2..])),
            healthy: true,
            this_node,
            flows,
            packets,
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
                adverts_sent: 0,
                adverts_received: 0,
                split_brains: 0,
                auth_failures: 0,
                replays: 0,
                malformed: 0,
                unknown_peers: 0,
                unverified: 0,
                lease_remaining_ms: None,
                leases_lost: 0,
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
                rx_packets: 600,
                ..Default::default()
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
        second.groups[0].vips[0].rx_packets = 1100;
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
}
