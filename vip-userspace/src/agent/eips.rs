//! Elastic IPs on a gateway: the same program on the external (and internal)
//! interfaces, and the 1:1 entries in both directions.
//!
//! Who may own the VIP. The data plane follows a failover by learning the VIP's owner
//! from ARP on the internal segment; ARP proves nothing about its sender, so an
//! `[[eip]]` lists the MACs of the VIP's nodes (`nodes`) and the program learns an
//! owner only from them (`EIP_NODES`; anything else naming the VIP is counted as
//! `owner_refused` and dropped). The gateway is configured rather than told by the
//! group's authenticated adverts because hearing those would make it a peer of every
//! group it serves, holding their keys (whoever holds a key can win the election), and
//! would tie the gateway's data plane to the election's wire format. The MAC list
//! costs the operator a line per node and the data plane one lookup per ARP naming the
//! VIP, never one per packet. A forger can still name another of the listed nodes; see
//! README "Elastic IPs".
//!
//! An `[[eip]]` without `nodes` (a config written before the key existed) still loads
//! and learns from any sender, with a warning naming the key (`config::eip_warnings`):
//! refusing it would turn an upgrade into an outage of every elastic IP.

use std::collections::{BTreeSet, HashSet};

use anyhow::{Context, Result};
use vip_common::{eip_flags, EipNodeKey};

use super::{interface_warnings, Agent};
use crate::{config, host, mac::Mac};

/// One elastic IP as the agent programmed it.
pub(super) struct EipRuntime {
    pub cfg: config::Eip,
    pub entry: vip_common::EipEntry,
}

impl Agent {
    /// Programs the elastic IPs: the same program attached to their external (and
    /// internal, if not ours already) interfaces, the nodes each VIP's owner may be
    /// learned from, entries in both directions. An adopted data plane's mappings
    /// and nodes that the config no longer has are removed first.
    pub(super) fn setup_eips(&mut self, warnings: &mut Vec<String>) -> Result<()> {
        self.remove_stale_eips();
        // The nodes before the entries: an entry is never in force without its rule.
        let nodes: HashSet<EipNodeKey> = self
            .cfg
            .eips
            .iter()
            .flat_map(|e| {
                let vip = e.vip.octets();
                e.nodes
                    .iter()
                    .flatten()
                    .map(move |m| EipNodeKey::v4(vip, m.0))
            })
            // The routed IPv6 VIPs' too: this makes the map exactly the config's.
            .chain(super::routes6::node_keys(&self.cfg))
            .collect();
        self.dp
            .set_eip_nodes(&nodes)
            .context("eip: programming the nodes")?;
        if self.cfg.eips.is_empty() {
            return Ok(());
        }
        let mut attached: BTreeSet<String> = [self.iface.name.clone()].into();
        for (i, e) in self.cfg.eips.clone().iter().enumerate() {
            let key = e.key();
            let ext = host::interface(&e.external_interface)
                .with_context(|| format!("{key}.external_interface"))?;
            let int = host::interface(&e.internal_interface)
                .with_context(|| format!("{key}.internal_interface"))?;
            for ifc in [&ext, &int] {
                if attached.insert(ifc.name.clone()) {
                    self.dp
                        .attach_extra(&ifc.name, self.cfg.node.xdp_mode)
                        .with_context(|| format!("{key}: attaching to {}", ifc.name))?;
                    log::info!("XDP attached to {} for elastic IPs", ifc.name);
                    warnings.extend(interface_warnings(ifc));
                }
                self.dp.add_redirect_target(ifc.index)?;
            }
            let entry = vip_common::EipEntry {
                eip: e.address.octets(),
                vip: e.vip.octets(),
                ext_ifindex: ext.index,
                int_ifindex: int.index,
                ext_mac: ext.mac.0,
                int_mac: int.mac.0,
                // Below MAX_EIPS (validated), which fits.
                stats_index: i as u16,
                flags: if e.nodes.is_some() {
                    0
                } else {
                    eip_flags::ANY_SENDER
                },
            };
            if !self.dp.adopted() {
                self.dp.reset_eip_stats(i as u32)?;
            }
            self.dp.set_eip(&entry)?;
            // An owner an earlier agent's data plane learned under another rule.
            if let (Some(nodes), Some(o)) = (&e.nodes, self.dp.owner(e.vip)) {
                if !nodes.contains(&Mac(o.mac)) {
                    log::warn!(
                        "{key}: forgetting {} as the owner of VIP {}: not one of {key}.nodes",
                        Mac(o.mac),
                        e.vip
                    );
                    self.dp.forget_owner(e.vip)?;
                }
            }
            log::info!(
                "elastic IP {} <-> VIP {} ({} / {}); owner learned from {}",
                e.address,
                e.vip,
                ext.name,
                int.name,
                match &e.nodes {
                    Some(n) => n.iter().map(Mac::to_string).collect::<Vec<_>>().join(", "),
                    None => "any ARP sender (no nodes)".into(),
                }
            );
            self.eips.push(EipRuntime {
                cfg: e.clone(),
                entry,
            });
        }
        if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0") {
            let w = "net.ipv4.ip_forward is 0: elastic-IP packets whose next hop is not known yet are handed to \
                     the kernel to route, which then drops them; set it to 1 on a gateway"
                .to_string();
            log::warn!("{w}");
            warnings.push(w);
        }
        Ok(())
    }

    /// Mappings an adopted data plane holds that the config no longer has (an
    /// `[[eip]]` removed or re-bound before a restart): removed with their owners and
    /// nodes, so they neither translate nor refuse ARP for a VIP nobody configured.
    fn remove_stale_eips(&mut self) {
        for old in self.dp.eips() {
            let wanted = self
                .cfg
                .eips
                .iter()
                .any(|e| e.address.octets() == old.eip && e.vip.octets() == old.vip);
            if !wanted {
                log::info!(
                    "removing elastic IP {} <-> VIP {}, which is no longer configured",
                    std::net::Ipv4Addr::from(old.eip),
                    std::net::Ipv4Addr::from(old.vip)
                );
                if let Err(e) = self.dp.remove_eip(&old) {
                    log::warn!("removing a stale elastic IP: {e:#}");
                }
            }
        }
    }
}
