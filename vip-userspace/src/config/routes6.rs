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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::{
        config::{check_host, parse, ConfigError, Problem},
        host::Interface,
        mac::Mac,
    };

    const GOOD: &str = "[node]\nname = \"gw\"\ninterface = \"eth0\"\n";

    fn route(vip: &str, nodes: Option<&str>) -> String {
        let nodes = nodes.map(|n| format!("nodes = {n}\n")).unwrap_or_default();
        format!(
            "{GOOD}\n[[route6]]\nvip = \"{vip}\"\nexternal_interface = \"eth1\"\ninternal_interface = \"eth0\"\n{nodes}"
        )
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn has(p: &[Problem], key: &str, words: &str) -> bool {
        p.iter().any(|p| p.key == key && p.message.contains(words))
    }

    const NODES: &str = r#"["02:00:00:00:00:0a", "02:00:00:00:00:0b"]"#;

    #[test]
    fn a_route_parses_with_its_nodes() {
        let c = parse(&route("2001:db8::60", Some(NODES))).unwrap();
        let r = &c.routes6[0];
        assert_eq!(r.vip.to_string(), "2001:db8::60");
        assert_eq!(r.key(), "route6[2001:db8::60]");
        assert_eq!(
            r.nodes,
            vec![Mac([2, 0, 0, 0, 0, 0x0a]), Mac([2, 0, 0, 0, 0, 0x0b])]
        );
        assert_eq!(
            (r.external_interface.as_str(), r.internal_interface.as_str()),
            ("eth1", "eth0")
        );
    }

    #[test]
    fn bad_routes_name_their_key() {
        let p = problems(&route("2001:db8::60", None));
        assert!(has(&p, "route6[2001:db8::60].nodes", "missing"), "{p:?}");
        let p = problems(&route("2001:db8::60", Some("[]")));
        assert!(
            p.iter().any(|p| p.key == "route6[2001:db8::60].nodes"),
            "{p:?}"
        );
        let p = problems(&route("2001:db8::60", Some(r#"["33:33:00:00:00:01"]"#)));
        assert!(
            p.iter().any(|p| p.key == "route6[2001:db8::60].nodes"),
            "{p:?}"
        );
        let p = problems(&route("10.0.0.50", Some(NODES)));
        assert!(has(&p, "route6[10.0.0.50].vip", "IPv4"), "{p:?}");
        let p = problems(&route("fe80::1", Some(NODES)));
        assert!(
            has(&p, "route6[fe80::1].vip", "not a global unicast"),
            "{p:?}"
        );
        let p = problems(&route("ff02::1", Some(NODES)));
        assert!(
            has(&p, "route6[ff02::1].vip", "not a global unicast"),
            "{p:?}"
        );
        let p = problems(&route("nonsense", Some(NODES)));
        assert!(
            has(&p, "route6[nonsense].vip", "not an IP address"),
            "{p:?}"
        );
        let twice = format!(
            "{}{}",
            route("2001:db8::60", Some(NODES)),
            &route("2001:db8::60", Some(NODES))[GOOD.len()..]
        );
        let p = problems(&twice);
        assert!(has(&p, "route6[2001:db8::60].vip", "earlier"), "{p:?}");
        let same = route("2001:db8::60", Some(NODES)).replace(
            "external_interface = \"eth1\"",
            "external_interface = \"eth0\"",
        );
        let p = problems(&same);
        assert!(
            has(&p, "route6[2001:db8::60].internal_interface", "must differ"),
            "{p:?}"
        );
    }

    fn iface(name: &str, index: u32, addrs: &[(&str, u8)]) -> Interface {
        Interface {
            name: name.into(),
            index,
            mac: Mac([2, 0, 0, 0, 0, index as u8]),
            addrs: addrs
                .iter()
                .map(|(a, p)| (a.parse().unwrap(), *p))
                .collect(),
            kind: None,
            up: true,
        }
    }

    #[test]
    fn host_checks_name_the_key() {
        let eth0 = iface("eth0", 2, &[("2001:db8::1", 64), ("fe80::1", 64)]);
        let eth1 = iface("eth1", 3, &[("2001:db8:ff::1", 64)]);
        let all: HashMap<_, _> = [
            ("eth0".to_string(), eth0.addrs.clone()),
            ("eth1".to_string(), eth1.addrs.clone()),
        ]
        .into();
        let both = |n: &str| {
            [eth0.clone(), eth1.clone()]
                .into_iter()
                .find(|i| i.name == n)
        };
        let only_eth0 = |n: &str| (n == "eth0").then(|| eth0.clone());
        let c = parse(&route("2001:db8::60", Some(NODES))).unwrap();
        check_host(&c, &both, &all).unwrap();
        let ConfigError::Invalid(p) = check_host(&c, &only_eth0, &all).unwrap_err() else {
            panic!("expected Invalid");
        };
        assert!(
            has(
                &p,
                "route6[2001:db8::60].external_interface",
                "does not exist"
            ),
            "{p:?}"
        );
        // Off the internal interface's subnet (its link-local prefix does not count).
        let c = parse(&route("2001:db8:1::60", Some(NODES))).unwrap();
        let ConfigError::Invalid(p) = check_host(&c, &both, &all).unwrap_err() else {
            panic!("expected Invalid");
        };
        assert!(
            has(&p, "route6[2001:db8:1::60].vip", "not in a subnet"),
            "{p:?}"
        );
        // The gateway's own address.
        let c = parse(&route("2001:db8::1", Some(NODES))).unwrap();
        let ConfigError::Invalid(p) = check_host(&c, &both, &all).unwrap_err() else {
            panic!("expected Invalid");
        };
        assert!(
            has(&p, "route6[2001:db8::1].vip", "an address of this host"),
            "{p:?}"
        );
    }
}
