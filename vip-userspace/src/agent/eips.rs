//! Elastic IPs on a gateway: the same program on the external (and internal)
//! interfaces, and the 1:1 entries in both directions.

use std::collections::BTreeSet;

use anyhow::{Context, Result};

use super::{interface_warnings, Agent};
use crate::{config, host};

/// One elastic IP as the agent programmed it.
pub(super) struct EipRuntime {
    pub cfg: config::Eip,
    pub entry: vip_common::EipEntry,
}

impl Agent {
    /// Programs the elastic IPs: the same program attached to their external (and
    /// internal, if not ours already) interfaces, entries in both directions.
    pub(super) fn setup_eips(&mut self, warnings: &mut Vec<String>) -> Result<()> {
        if self.cfg.eips.is_empty() {
            return Ok(());
        }
        let mut attached: BTreeSet<String> = [self.iface.name.clone()].into();
        for (i, e) in self.cfg.eips.clone().iter().enumerate() {
            let key = format!("eip[{i}]");
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
                stats_index: i as u32,
            };
            if !self.dp.adopted() {
                self.dp.reset_eip_stats(i as u32)?;
            }
            self.dp.set_eip(&entry)?;
            log::info!(
                "elastic IP {} <-> VIP {} ({} / {})",
                e.address,
                e.vip,
                ext.name,
                int.name
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
}
