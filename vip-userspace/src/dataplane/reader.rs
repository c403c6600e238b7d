//! [`Reader`]: the read-only handles (their own file descriptors) that status and
//! metrics are read through on another thread than the agent's loop, so a scrape of
//! 20k VIPs never delays an advertisement.

use std::net::IpAddr;

use aya::maps::{MapData, PerCpuArray};
use vip_common::{BalanceStats, EipStats, Owner, Route6Stats, VipEntry, VipStats};

use super::{
    eips::EipReads,
    handles::{global_stats, Counters},
    vips::VipTables,
    Result,
};

/// Read-only handles on the data plane's entries and counters (their own file
/// descriptors), so status and metrics are read on another thread than the agent's
/// loop: a scrape of 20k VIPs never delays an advertisement.
pub struct Reader {
    pub(super) vips: VipTables,
    pub(super) global: PerCpuArray<MapData, u64>,
    pub(super) eips: EipReads,
    pub(super) balance_stats: Counters<BalanceStats>,
}

impl Reader {
    /// What the director sent to member `index` of balance slot `slot`.
    pub fn balance_stats(&self, slot: u32, index: u32) -> Result<BalanceStats> {
        self.balance_stats
            .get(super::director::member_slot(slot, index))
    }

    /// The entry the data plane holds for a VIP, if any.
    pub fn vip(&self, addr: IpAddr) -> Option<VipEntry> {
        self.vips.get(addr)
    }

    /// A VIP's counters, summed over CPUs.
    pub fn stats(&self, index: u32) -> Result<VipStats> {
        self.vips.stats(index)
    }

    /// Program-wide counters, by name, summed over CPUs (an older pin's missing ones
    /// read 0).
    pub fn global_stats(&self) -> Result<Vec<(&'static str, u64)>> {
        global_stats(&self.global)
    }

    /// The owner the gateway learned for a VIP.
    pub fn owner(&self, vip: std::net::Ipv4Addr) -> Option<Owner> {
        self.eips.owner(vip)
    }

    pub fn eip_stats(&self, index: u32) -> Result<EipStats> {
        self.eips.stats(index)
    }

    /// The owner the gateway learned for a routed IPv6 VIP.
    pub fn route6_owner(&self, vip: std::net::Ipv6Addr) -> Option<Owner> {
        self.eips.route6_owner(vip)
    }

    pub fn route6_stats(&self, index: u32) -> Result<Route6Stats> {
        self.eips.route6_stats(index)
    }
}
