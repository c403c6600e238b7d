//! `balance` of an elected group (active/active): the ports it spreads over the group's
//! nodes, each balanced by one group only, within the data plane's limits.

use super::raw::RawGroup;

/// `balance = {}` (all TCP and UDP) or `balance = { ports = ["tcp/443", ...] }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Balance {
    /// (IP protocol, port); empty: every TCP and UDP port.
    pub ports: Vec<(u8, u16)>,
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
    Some(Balance { ports })
}
