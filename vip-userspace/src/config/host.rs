//! The configuration against this host (`vip check-config` without `--no-host`, and
//! the agent at start): interfaces that must exist, VIPs that must be on-link and not
//! real addresses of the host, elastic IPs the kernel must not own, routed IPv6 VIPs
//! on their internal interface's subnet.

use std::{collections::HashMap, net::IpAddr};

use super::{network, warnings::file_warnings, Config, ConfigError, Problem, RECOMMENDED_MAX_VIPS};
use crate::host::Interface;

/// What `check_host` found that is worth saying but not fatal.
#[derive(Debug, Default)]
pub struct HostReport {
    pub warnings: Vec<String>,
}

/// Checks the configuration against this host's interfaces. `lookup` resolves an
/// interface by name; `all_addrs` lists every address on the host by interface.
pub fn check_host(
    cfg: &Config,
    lookup: &dyn Fn(&str) -> Option<Interface>,
    all_addrs: &HashMap<String, Vec<(IpAddr, u8)>>,
) -> Result<HostReport, ConfigError> {
    let mut problems = Vec::new();
    let mut report = HostReport::default();
    let Some(iface) = lookup(&cfg.node.interface) else {
        return Err(ConfigError::Invalid(vec![Problem {
            key: "node.interface".into(),
            message: format!(
                "interface `{}` does not exist on this host",
                cfg.node.interface
            ),
        }]));
    };
    let total: usize = cfg.groups.iter().map(|g| g.vips.len()).sum();
    if total > RECOMMENDED_MAX_VIPS {
        report.warnings.push(format!(
            "{total} VIPs on this node: more than the recommended {RECOMMENDED_MAX_VIPS} per server"
        ));
    }
    // Addresses that are VIP-shaped (/32, /128) on our interface are taken as leftovers
    // of an earlier run (ours or another HA tool's), not as real addresses.
    let subnets: Vec<(IpAddr, u8)> = iface
        .addrs
        .iter()
        .copied()
        .filter(|(a, p)| !is_host_prefix(*a, *p) && !is_link_local(*a))
        .collect();
    // Who holds each address of the host, looked up once per VIP (and per elastic IP
    // and routed VIP): a node with 20,000 VIPs on lo would otherwise compare every
    // VIP with every address (a reload that
    // took 0.7 s on the loop, which the adverts waited for).
    let mut holders: HashMap<IpAddr, Vec<(&str, u8)>> = HashMap::new();
    for (ifname, addrs) in all_addrs {
        for (a, p) in addrs {
            holders.entry(*a).or_default().push((ifname.as_str(), *p));
        }
    }
    // The interface an address is on, if the host has it (an elastic IP, a routed VIP).
    let holder = |addr: IpAddr| holders.get(&addr).and_then(|l| l.first()).map(|h| h.0);
    for g in &cfg.groups {
        for (vi, vip) in g.vips.iter().enumerate() {
            let key = format!("group[{}].vips[{vi}]", g.name);
            for &(ifname, p) in holders.get(&vip.addr).into_iter().flatten() {
                // The agent keeps an active VIP on lo (a host prefix, never announced
                // by the kernel): that is ours, running.
                if ifname == "lo" && is_host_prefix(vip.addr, p) {
                    continue;
                }
                if ifname == iface.name && is_host_prefix(vip.addr, p) {
                    report.warnings.push(format!(
                        "VIP {} is already assigned on {ifname} (left over by an earlier run?); \
                         it is removed while this node is not active",
                        vip.addr
                    ));
                } else {
                    problems.push(Problem {
                        key: key.clone(),
                        message: format!("{} is a real address of this host (on {ifname}); a VIP must be an address no interface owns", vip.addr),
                    });
                }
            }
            // A VIP announced only over BGP is routed to the node: it need not be on-link.
            let on_link = g.announce == super::Announce::Bgp
                || subnets.iter().any(|(a, p)| {
                    *p == vip.prefix
                        && a.is_ipv4() == vip.addr.is_ipv4()
                        && network(*a, *p) == network(vip.addr, vip.prefix)
                });
            if !on_link {
                let have: Vec<String> = subnets
                    .iter()
                    .filter(|(a, _)| a.is_ipv4() == vip.addr.is_ipv4())
                    .map(|(a, p)| format!("{}/{p}", network(*a, *p)))
                    .collect();
                problems.push(Problem {
                    key,
                    message: format!(
                        "{vip} is not in a subnet of interface {} ({}); a VIP binds only to servers of its own subnet",
                        iface.name,
                        if have.is_empty() { "it has no such address".to_string() } else { have.join(", ") }
                    ),
                });
            }
        }
        // A balanced group reaches a peer on another segment through IPv4 in IPv4
        // (the data plane's tunnel): such a peer is named by its IPv4 address. Other
        // groups have no tunnel: their forward entries (a planned handover's, a
        // stale client's) reach the active by its MAC, on this segment only.
        if let Some(e) = &g.election {
            for (pi, peer) in e.peers.iter().enumerate() {
                let on_segment = subnets.iter().any(|(a, p)| {
                    a.is_ipv4() == peer.is_ipv4() && network(*a, *p) == network(*peer, *p)
                });
                if g.balance.is_none() && !on_segment {
                    report.warnings.push(format!(
                        "group[{}].peers[{pi}]: {peer} is in no subnet of interface {}: what this node forwards to it as the active (during a planned handover, or a client's stale neighbour entry) is lost, since only a balanced group's nodes reach each other across segments (through the tunnel){}",
                        g.name,
                        iface.name,
                        if g.announce == super::Announce::Arp {
                            "; and a VIP announced by ARP is reachable on its own segment only"
                        } else {
                            ""
                        }
                    ));
                }
                if g.balance.is_some() && peer.is_ipv6() && !on_segment {
                    problems.push(Problem {
                        key: format!("group[{}].peers[{pi}]", g.name),
                        message: format!(
                            "{peer} is in no subnet of interface {}: a balanced group reaches a peer on another segment through an IPv4 tunnel; name it by its IPv4 address",
                            iface.name
                        ),
                    });
                }
            }
        }
        if let Some(r) = &g.redirect {
            if lookup(&r.interface).is_none() {
                problems.push(Problem {
                    key: format!("group[{}].redirect_to", g.name),
                    message: format!("interface `{}` does not exist on this host", r.interface),
                });
            }
        }
    }
    for e in &cfg.eips {
        let key = e.key();
        for (k, name) in [
            ("external_interface", &e.external_interface),
            ("internal_interface", &e.internal_interface),
        ] {
            if lookup(name).is_none() {
                problems.push(Problem {
                    key: format!("{key}.{k}"),
                    message: format!("interface `{name}` does not exist on this host"),
                });
            }
        }
        if let Some(int) = lookup(&e.internal_interface) {
            let on_link = int.addrs.iter().any(|(a, p)| {
                a.is_ipv4()
                    && !is_host_prefix(*a, *p)
                    && network(*a, *p) == network(IpAddr::V4(e.vip), *p)
            });
            if !on_link {
                problems.push(Problem {
                    key: format!("{key}.vip"),
                    message: format!(
                        "{} is not in a subnet of the internal interface {}",
                        e.vip, int.name
                    ),
                });
            }
        }
        if let Some(ifname) = holder(IpAddr::V4(e.address)) {
            problems.push(Problem {
                key: format!("{key}.address"),
                message: format!("{} is an address of this host (on {ifname}); the elastic IP must be answered by vip, not the kernel", e.address),
            });
        }
    }
    for r in &cfg.routes6 {
        let key = r.key();
        for (k, name) in [
            ("external_interface", &r.external_interface),
            ("internal_interface", &r.internal_interface),
        ] {
            if lookup(name).is_none() {
                problems.push(Problem {
                    key: format!("{key}.{k}"),
                    message: format!("interface `{name}` does not exist on this host"),
                });
            }
        }
        // The VIP's subnet must be the internal interface's: that is where the owner's
        // neighbour advertisements are heard and where the packets go.
        if let Some(int) = lookup(&r.internal_interface) {
            let on_link = int.addrs.iter().any(|(a, p)| {
                a.is_ipv6()
                    && !is_host_prefix(*a, *p)
                    && !is_link_local(*a)
                    && network(*a, *p) == network(IpAddr::V6(r.vip), *p)
            });
            if !on_link {
                problems.push(Problem {
                    key: format!("{key}.vip"),
                    message: format!(
                        "{} is not in a subnet of the internal interface {}",
                        r.vip, int.name
                    ),
                });
            }
        }
        if let Some(ifname) = holder(IpAddr::V6(r.vip)) {
            problems.push(Problem {
                key: format!("{key}.vip"),
                message: format!(
                    "{} is an address of this host (on {ifname}); a routed VIP is the group's, \
                     not the gateway's",
                    r.vip
                ),
            });
        }
    }
    if let Some(b) = &cfg.bgp {
        if !b.speaker_bin.is_file() {
            problems.push(Problem {
                key: "bgp.speaker_bin".into(),
                message: format!(
                    "{} is not there: vip runs BIRD 2 as its BGP speaker (Debian: apt install bird2)",
                    b.speaker_bin.display()
                ),
            });
        }
        if b.router_id.is_none() && !iface.addrs.iter().any(|(a, _)| a.is_ipv4()) {
            problems.push(Problem {
                key: "bgp.router_id".into(),
                message: format!(
                    "is not set and interface {} has no IPv4 address to take it from",
                    iface.name
                ),
            });
        }
        for (i, n) in b.neighbors.iter().enumerate() {
            // An eBGP session is to a directly connected neighbour (vip does not ask
            // BIRD for multihop): one on no subnet of the interface would never come
            // up, BIRD waiting for it to become its neighbour.
            let connected = subnets.iter().any(|(a, p)| {
                a.is_ipv4() == n.address.is_ipv4() && network(*a, *p) == network(n.address, *p)
            });
            if n.remote_as != b.local_as && !connected {
                problems.push(Problem {
                    key: format!("bgp.neighbors[{i}].address"),
                    message: format!(
                        "{} is on no subnet of interface {}: an eBGP neighbour must be directly connected (multihop sessions are not supported)",
                        n.address, iface.name
                    ),
                });
            }
            if let Some(ifname) = holder(n.address) {
                problems.push(Problem {
                    key: format!("bgp.neighbors[{i}].address"),
                    message: format!(
                        "{} is an address of this host (on {ifname}); a neighbour is another speaker",
                        n.address
                    ),
                });
            }
        }
    }
    report.warnings.extend(file_warnings(cfg));
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn is_host_prefix(a: IpAddr, p: u8) -> bool {
    (a.is_ipv4() && p == 32) || (a.is_ipv6() && p == 128)
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => v.is_unicast_link_local(),
    }
}
