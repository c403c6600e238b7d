//! `[[eip]]`: elastic IPs a gateway maps 1:1 onto VIPs, and the nodes whose ARP may
//! name a VIP's owner.

use std::net::IpAddr;

use serde::Deserialize;

use crate::mac::Mac;

/// A public IPv4 address mapped 1:1 onto a VIP by this node (a gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eip {
    pub address: std::net::Ipv4Addr,
    pub vip: std::net::Ipv4Addr,
    pub external_interface: String,
    pub internal_interface: String,
    /// The MACs of the VIP's nodes: the only senders whose ARP can make one of them
    /// the VIP's owner. None (the key absent): any sender can, as before the key
    /// existed; one forged ARP then takes the EIP's traffic (see [`super::eip_warnings`]).
    pub nodes: Option<Vec<Mac>>,
}

impl Eip {
    /// How validation and the agent name this EIP: `eip[203.0.113.10]`.
    pub fn key(&self) -> String {
        format!("eip[{}]", self.address)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEip {
    pub(super) address: String,
    pub(super) vip: String,
    pub(super) external_interface: String,
    pub(super) internal_interface: String,
    pub(super) nodes: Option<Vec<String>>,
}

/// Elastic IPs, with the seed's limits: IPv4 only, one EIP per VIP, one VIP per EIP,
/// and an IPv6 VIP cannot bind an elastic IP. Each is named by its address as
/// written (`eip[203.0.113.10]`), as groups are by name.
pub(super) fn eips(raw: &[RawEip], p: &mut impl FnMut(String, String)) -> Vec<Eip> {
    let mut out: Vec<Eip> = Vec::new();
    for e in raw {
        let key = format!("eip[{}]", e.address.trim());
        let address = match e.address.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(a))
                if !(a.is_unspecified()
                    || a.is_loopback()
                    || a.is_multicast()
                    || a.is_broadcast()) =>
            {
                Some(a)
            }
            Ok(IpAddr::V4(a)) => {
                p(
                    format!("{key}.address"),
                    format!("{a} is not a unicast address"),
                );
                None
            }
            Ok(IpAddr::V6(a)) => {
                p(
                    format!("{key}.address"),
                    format!("{a}: elastic IPs are IPv4 addresses"),
                );
                None
            }
            Err(_) => {
                p(
                    format!("{key}.address"),
                    format!("`{}` is not an IP address", e.address),
                );
                None
            }
        };
        let vip = match e.vip.split('/').next().unwrap_or("").parse::<IpAddr>() {
            Ok(IpAddr::V4(v)) => Some(v),
            Ok(IpAddr::V6(v)) => {
                p(
                    format!("{key}.vip"),
                    format!("{v} is an IPv6 VIP: an IPv6 VIP cannot bind an elastic IP"),
                );
                None
            }
            Err(_) => {
                p(
                    format!("{key}.vip"),
                    format!("`{}` is not an IP address", e.vip),
                );
                None
            }
        };
        for (k, v) in [
            ("external_interface", &e.external_interface),
            ("internal_interface", &e.internal_interface),
        ] {
            if v.trim().is_empty() {
                p(format!("{key}.{k}"), "must not be empty".into());
            }
        }
        if e.external_interface == e.internal_interface {
            p(
                format!("{key}.internal_interface"),
                "must differ from external_interface".into(),
            );
        }
        let nodes = e
            .nodes
            .as_ref()
            .map(|n| eip_nodes(&format!("{key}.nodes"), n, p));
        let (Some(address), Some(vip)) = (address, vip) else {
            continue;
        };
        if out.iter().any(|o| o.address == address) {
            p(
                format!("{key}.address"),
                format!(
                    "{address} is the elastic IP of an earlier [[eip]] too: one VIP per elastic IP"
                ),
            );
            continue;
        }
        if let Some(o) = out.iter().find(|o| o.vip == vip) {
            p(
                format!("{key}.vip"),
                format!(
                    "{vip} is already bound to {}: a VIP binds to at most one elastic IP",
                    o.key()
                ),
            );
            continue;
        }
        out.push(Eip {
            address,
            vip,
            external_interface: e.external_interface.clone(),
            internal_interface: e.internal_interface.clone(),
            nodes,
        });
    }
    if out.len() > vip_common::MAX_EIPS as usize {
        p(
            "eip".into(),
            format!("at most {} elastic IPs", vip_common::MAX_EIPS),
        );
    }
    out
}

/// An `[[eip]]`'s (or a `[[route6]]`'s) `nodes`: the MACs of the VIP's nodes (each node's `node.interface`),
/// unicast, each once.
pub(super) fn eip_nodes(key: &str, raw: &[String], p: &mut impl FnMut(String, String)) -> Vec<Mac> {
    if raw.is_empty() {
        p(
            key.into(),
            "must list the MACs of the VIP's nodes (the gateway learns the VIP's owner only \
             from them; an empty list would never learn one)"
                .into(),
        );
    }
    let max = vip_common::MAX_EIP_NODES_PER_EIP as usize;
    if raw.len() > max {
        p(
            key.into(),
            format!(
                "{} nodes; a VIP's owner is learned from at most {max}",
                raw.len()
            ),
        );
    }
    let mut out: Vec<Mac> = Vec::new();
    for s in raw {
        match s.trim().parse::<Mac>() {
            Err(e) => p(key.into(), e.to_string()),
            Ok(m) if !m.is_unicast() => p(
                key.into(),
                format!("{m} is not a unicast MAC: list each node's interface MAC"),
            ),
            Ok(m) if out.contains(&m) => p(key.into(), format!("{m} is listed twice")),
            Ok(m) => out.push(m),
        }
    }
    out
}
