//! IPv6 VIPs routed by a gateway (`[[route6]]`): the program on their external and
//! internal interfaces, one `ROUTES6` entry each, and the nodes each VIP's owner may
//! be learned from (`EIP_NODES`, keyed by the IPv6 VIP; programmed with the elastic
//! IPs' in `setup_eips`, which makes that map exactly the config's).
//!
//! An IPv6 VIP cannot bind an elastic IP: it is reachable as it is, routed. The
//! gateway's data plane follows a failover the way it does for an elastic IP, from
//! the neighbour advertisements of the new active (`vip-ebpf/src/route6.rs`), and
//! for the same reason as there (see `eips`) learns only from the configured nodes.

use anyhow::{Context, Result};
use vip_common::{EipNodeKey, Route6Entry};

use super::{interface_warnings, Agent};
use crate::{config, host, mac::Mac};

/// One routed IPv6 VIP as the agent programmed it.
pub(super) struct Route6Runtime {
    pub cfg: config::Route6,
}

/// The `EIP_NODES` keys of every `[[route6]]`'s nodes.
pub(super) fn node_keys(cfg: &config::Config) -> impl Iterator<Item = EipNodeKey> + '_ {
    cfg.routes6.iter().flat_map(|r| {
        let vip = r.vip.octets();
        r.nodes.iter().map(move |m| EipNodeKey {
            vip,
            mac: m.0,
            _pad: [0; 2],
        })
    })
}

impl Agent {
    /// Programs the routed IPv6 VIPs (after `setup_eips`, which programmed their
    /// nodes): an adopted data plane's routes the config no longer has are removed
    /// first, then the program is attached to each route's interfaces (if not
    /// already) and its entry installed.
    pub(super) fn setup_routes6(&mut self, warnings: &mut Vec<String>) -> Result<()> {
        self.remove_stale_routes6();
        for (i, r) in self.cfg.routes6.clone().iter().enumerate() {
            let key = r.key();
            let ext = host::interface(&r.external_interface)
                .with_context(|| format!("{key}.external_interface"))?;
            let int = host::interface(&r.internal_interface)
                .with_context(|| format!("{key}.internal_interface"))?;
            for ifc in [&ext, &int] {
                if ifc.name != self.iface.name && !self.dp.attached_extra(&ifc.name) {
                    self.dp
                        .attach_extra(&ifc.name, self.cfg.node.xdp_mode)
                        .with_context(|| format!("{key}: attaching to {}", ifc.name))?;
                    log::info!("XDP attached to {} for routed IPv6 VIPs", ifc.name);
                    warnings.extend(interface_warnings(ifc));
                }
                self.dp.add_redirect_target(ifc.index)?;
            }
            let entry = Route6Entry {
                vip: r.vip.octets(),
                ext_ifindex: ext.index,
                int_ifindex: int.index,
                ext_mac: ext.mac.0,
                int_mac: int.mac.0,
                // Below MAX_ROUTES6 (validated), which fits.
                stats_index: i as u16,
                _pad: 0,
            };
            if !self.dp.adopted() {
                self.dp.reset_route6_stats(i as u32)?;
            }
            self.dp.set_route6(&entry)?;
            // An owner an earlier agent's data plane learned from a node since removed.
            if let Some(o) = self.dp.route6_owner(r.vip) {
                if !r.nodes.contains(&Mac(o.mac)) {
                    log::warn!(
                        "{key}: forgetting {} as the owner of VIP {}: not one of {key}.nodes",
                        Mac(o.mac),
                        r.vip
                    );
                    self.dp.forget_route6_owner(r.vip)?;
                }
            }
            log::info!(
                "routing IPv6 VIP {} ({} -> {}); owner learned from {}",
                r.vip,
                ext.name,
                int.name,
                r.nodes
                    .iter()
                    .map(Mac::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.routes6.push(Route6Runtime { cfg: r.clone() });
        }
        if !self.cfg.routes6.is_empty()
            && std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
                .is_ok_and(|v| v.trim() == "0")
        {
            let w = "net.ipv6.conf.all.forwarding is 0: the routed IPv6 VIPs' replies (the kernel's \
                     path) and their packets whose owner is not known yet are dropped; set it to 1 on \
                     a gateway"
                .to_string();
            log::warn!("{w}");
            warnings.push(w);
        }
        Ok(())
    }

    /// Routes an adopted data plane holds that the config no longer has (a
    /// `[[route6]]` removed before a restart): removed with their owners and nodes.
    fn remove_stale_routes6(&mut self) {
        for old in self.dp.routes6() {
            let vip = std::net::Ipv6Addr::from(old.vip);
            if !self.cfg.routes6.iter().any(|r| r.vip == vip) {
                log::info!("removing the route of IPv6 VIP {vip}, which is no longer configured");
                if let Err(e) = self.dp.remove_route6(vip) {
                    log::warn!("removing a stale IPv6 route: {e:#}");
                }
            }
        }
    }

    /// On shutdown: the routes go with the agent, as the elastic IPs do.
    pub(super) fn remove_routes6(&mut self) {
        for r in &self.routes6 {
            let _ = self.dp.remove_route6(r.cfg.vip);
        }
    }
}
