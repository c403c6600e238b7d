//! `[[route6]]`: IPv6 VIPs a gateway routes, without NAT, from its external interface
//! to the VIP's current owner, and the nodes whose neighbour advertisements may name
//! that owner. An IPv6 VIP cannot bind an elastic IP; this is its way to the Internet.

use std::net::{IpAddr, Ipv6Addr};

use serde::Deserialize;

use crate::mac::Mac;

/// An IPv6 VIP routed by this node (a gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route6 {
    pub vip: Ipv6Addr,
    pub external_interface: String,
    pub internal_interface: String,
    /// The MACs of the VIP's nodes: the only senders whose NA can make one of them
    /// the VIP's owner (required: there is no legacy form to keep).
    pub nodes: Vec<Mac>,
}

impl Route6 {
    /// How validation and the agent name this route: `route6[2001:db8::50]`.
    pub fn key(&self) -> String {
        format!("route6[{}]", self.vip)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute6 {
    pub(super) vip: String,
    pub(super) external_interface: String,
    pub(super) internal_interface: String,
    pub(super) nodes: Option<Vec<String>>,
}

/// Routed IPv6 VIPs: each an IPv6 unicast VIP, once, with its nodes. Named by the VIP
/// as written (`route6[2001:db8::50]`).
pub(super) fn routes6(raw: &[RawRoute6], p: &mut impl FnMut(String, String)) -> Vec<Route6> {
    let mut out: Vec<Route6> = Vec::new();
    for r in raw {
        let written = r.vip.trim();
        let key = format!("route6[{}]", written.split('/').next().unwrap_or(""));
        let vip = match written.split('/').next().unwrap_or("").parse::<IpAddr>() {
            Ok(IpAddr::V6(v))
                if !(v.is_unspecified()
                    || v.is_loopback()
                    || v.is_multicast()
                    || v.is_unicast_link_local()
                    || v.to_ipv4_mapped().is_some()) =>
            {
                Some(v)
            }
            Ok(IpAddr::V6(v)) => {
                p(
                    format!("{key}.vip"),
                    format!("{v} is not a global unicast address"),
                );
                None
            }
            Ok(IpAddr::V4(v)) => {
                p(
                    format!("{key}.vip"),
                    format!("{v} is an IPv4 VIP: route6 is for IPv6 VIPs (an IPv4 VIP reaches the Internet through an [[eip]])"),
                );
                None
            }
            Err(_) => {
                p(
                    format!("{key}.vip"),
                    format!("`{}` is not an IP address", r.vip),
                );
                None
            }
        };
        for (k, v) in [
            ("external_interface", &r.external_interface),
            ("internal_interface", &r.internal_interface),
        ] {
            if v.trim().is_empty() {
                p(format!("{key}.{k}"), "must not be empty".into());
            }
        }
        if r.external_interface == r.internal_interface {
            p(
                format!("{key}.internal_interface"),
                "must differ from external_interface".into(),
            );
        }
        let nodes = match &r.nodes {
            Some(n) => super::eips::eip_nodes(&format!("{key}.nodes"), n, p),
            None => {
                p(
                    format!("{key}.nodes"),
                    "missing: list the MACs of the VIP's nodes (the gateway learns the VIP's \
                     owner only from their neighbour advertisements)"
                        .into(),
                );
                Vec::new()
            }
        };
        let Some(vip) = vip else {
            continue;
        };
        if out.iter().any(|o| o.vip == vip) {
            p(
                format!("{key}.vip"),
                format!("{vip} is routed by an earlier [[route6]] too"),
            );
            continue;
        }
        out.push(Route6 {
            vip,
            external_interface: r.external_interface.clone(),
            internal_interface: r.internal_interface.clone(),
            nodes,
        });
    }
    if out.len() > vip_common::MAX_ROUTES6 as usize {
        p(
            "route6".into(),
            format!("at most {} routed IPv6 VIPs", vip_common::MAX_ROUTES6),
        );
    }
    out
}
