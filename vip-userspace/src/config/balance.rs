//! `balance` of an elected group (active/active): the ports it spreads over the group's
//! nodes, each balanced by one group only, within the data plane's limits, and where
//! an anycast group's UDP datagrams are served.

use super::{bgp::Announce, raw::RawGroup};

/// `balance = {}` (all TCP and UDP) or `balance = { ports = ["tcp/443", ...] }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Balance {
    /// (IP protocol, port); empty: every TCP and UDP port.
    pub ports: Vec<(u8, u16)>,
    /// `udp`: where an anycast group's UDP datagrams are served.
    pub udp: Udp,
}

/// `balance.udp` of an anycast group (`announce = "bgp"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Udp {
    /// "pinned" (the default): a UDP flow stays on the member it started on, as a TCP
    /// connection does: a datagram the router hands another member goes through the
    /// director to it. For UDP with a session (QUIC, WireGuard, RTP).
    #[default]
    Pinned,
    /// "as_routed": every datagram is served by the member the router hands it to,
    /// with no hop through the director and no entry in its connection table: for
    /// request/response UDP (DNS, NTP, syslog), where no datagram needs the member
    /// of the one before. What plain ECMP gives, for UDP only; TCP keeps its
    /// connections either way.
    AsRouted,
}

impl Balance {
    pub fn port_label((proto, port): (u8, u16)) -> String {
        format!("{}/{port}", if proto == 6 { "tcp" } else { "udp" })
    }
}

/// `balance`: elected groups only; ports as "tcp/N" or "udp/N", each balanced by one
/// group only (`taken` holds the ports of the groups before this one), since a
/// member runs one service per port and the director sends it all of that port.
pub(super) fn balance(
    gkey: &str,
    g: &RawGroup,
    announce: Announce,
    taken: &mut Vec<((u8, u16), String)>,
    p: &mut impl FnMut(String, String),
) -> Option<Balance> {
    let raw = g.balance.as_ref()?;
    if g.peers.is_none() {
        p(
            format!("{gkey}.balance"),
            "only applies to elected groups (with `peers`): the active spreads flows over the nodes it hears".into(),
        );
        return None;
    }
    let peers = g.peers.as_ref().map_or(0, Vec::len);
    if peers + 1 > vip_common::balance_maps::MAX_MEMBERS as usize {
        p(
            format!("{gkey}.balance"),
            format!(
                "{} nodes; a balanced group has at most {}",
                peers + 1,
                vip_common::balance_maps::MAX_MEMBERS
            ),
        );
    }
    let mut ports = Vec::new();
    for (i, spec) in raw.ports.iter().flatten().enumerate() {
        let key = format!("{gkey}.balance.ports[{i}]");
        let parsed = spec.split_once('/').and_then(|(proto, port)| {
            let proto = match proto.trim().to_ascii_lowercase().as_str() {
                "tcp" => 6u8,
                "udp" => 17u8,
                _ => return None,
            };
            port.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .map(|p| (proto, p))
        });
        let Some(pp) = parsed else {
            p(
                key,
                format!("`{spec}` is not PROTOCOL/PORT (\"tcp/443\", \"udp/53\"; port 1..=65535)"),
            );
            continue;
        };
        if ports.contains(&pp) {
            p(key, format!("`{spec}` is listed twice"));
            continue;
        }
        if let Some((_, other)) = taken.iter().find(|(q, _)| *q == pp) {
            p(
                key,
                format!(
                    "`{spec}` is also balanced by group {other}; a port is balanced by one group"
                ),
            );
            continue;
        }
        ports.push(pp);
    }
    if raw.ports.as_ref().is_some_and(Vec::is_empty) {
        p(
            format!("{gkey}.balance.ports"),
            "is empty: leave it out to balance every TCP and UDP port".into(),
        );
    }
    taken.extend(ports.iter().map(|pp| (*pp, g.name.clone())));
    let udp = udp(gkey, raw.udp.as_deref(), announce, p);
    Some(Balance { ports, udp })
}

/// `balance.udp`: "pinned" (the default) or "as_routed", which only an anycast group
/// has a use for (on one segment every datagram reaches the director first).
fn udp(
    gkey: &str,
    value: Option<&str>,
    announce: Announce,
    p: &mut impl FnMut(String, String),
) -> Udp {
    let key = format!("{gkey}.balance.udp");
    let choices = [("pinned", Udp::Pinned), ("as_routed", Udp::AsRouted)];
    let udp = super::choice(&key, value, &choices, p);
    if udp == Udp::AsRouted && announce != Announce::Bgp {
        p(
            key,
            "\"as_routed\" is for anycast groups (announce = \"bgp\"), where the router picks a member for each datagram; on the segment every datagram reaches the director first".into(),
        );
        return Udp::Pinned;
    }
    udp
}
