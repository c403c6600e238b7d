//! Elastic IPs: the mappings both ways (`EIPS_IN` by EIP, `EIPS_OUT` by VIP), the
//! owner the gateway learned for each VIP (`OWNERS`, which the program writes from
//! ARP), the nodes allowed to be that owner (`EIP_NODES`) and the counters
//! (`EIP_STATS`); and the IPv6 VIPs a gateway routes without NAT (`ROUTES6`, their
//! owners `OWNERS_V6`, learned from neighbour advertisements of the same `EIP_NODES`,
//! and `ROUTE6_STATS`).

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    Ebpf,
};
use vip_common::{maps, EipEntry, EipNodeKey, EipStats, Owner, Route6Entry, Route6Stats};

use super::{
    handles::{self, Counters},
    map_err, Dataplane, Result,
};

/// What status reads of the EIPs and routed IPv6 VIPs: the learned owners and the
/// counters.
pub(super) struct EipReads {
    owners: HashMap<MapData, u32, Owner>,
    stats: Counters<EipStats>,
    owners6: HashMap<MapData, [u8; 16], Owner>,
    route6_stats: Counters<Route6Stats>,
}

impl EipReads {
    /// The owner the gateway learned for a VIP.
    pub(super) fn owner(&self, vip: Ipv4Addr) -> Option<Owner> {
        self.owners.get(&u32::from_ne_bytes(vip.octets()), 0).ok()
    }

    pub(super) fn stats(&self, index: u32) -> Result<EipStats> {
        self.stats.get(index)
    }

    /// The owner the gateway learned for a routed IPv6 VIP.
    pub(super) fn route6_owner(&self, vip: Ipv6Addr) -> Option<Owner> {
        self.owners6.get(&vip.octets(), 0).ok()
    }

    pub(super) fn route6_stats(&self, index: u32) -> Result<Route6Stats> {
        self.route6_stats.get(index)
    }

    pub(super) fn dup(&self) -> Result<Self> {
        Ok(EipReads {
            owners: handles::dup_hash(&self.owners, maps::OWNERS)?,
            stats: self.stats.dup()?,
            owners6: handles::dup_hash(&self.owners6, maps::OWNERS_V6)?,
            route6_stats: self.route6_stats.dup()?,
        })
    }
}

/// The EIPs' part of the data plane.
pub(super) struct Eips {
    inbound: HashMap<MapData, u32, EipEntry>,
    outbound: HashMap<MapData, u32, EipEntry>,
    nodes: HashMap<MapData, EipNodeKey, u32>,
    routes6: HashMap<MapData, [u8; 16], Route6Entry>,
    read: EipReads,
}

impl Eips {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let stats: PerCpuArray<MapData, EipStats> = super::take(ebpf, maps::EIP_STATS)?;
        Ok(Eips {
            inbound: super::take(ebpf, maps::EIPS_IN)?,
            outbound: super::take(ebpf, maps::EIPS_OUT)?,
            nodes: super::take(ebpf, maps::EIP_NODES)?,
            routes6: super::take(ebpf, maps::ROUTES6)?,
            read: EipReads {
                owners: super::take(ebpf, maps::OWNERS)?,
                stats: Counters::new(stats, maps::EIP_STATS, EipStats::add),
                owners6: super::take(ebpf, maps::OWNERS_V6)?,
                route6_stats: Counters::new(
                    super::take(ebpf, maps::ROUTE6_STATS)?,
                    maps::ROUTE6_STATS,
                    Route6Stats::add,
                ),
            },
        })
    }

    pub(super) fn read(&self) -> &EipReads {
        &self.read
    }

    fn nodes_now(&self) -> impl Iterator<Item = EipNodeKey> + '_ {
        self.nodes.keys().filter_map(|k| k.ok())
    }
}

impl Dataplane {
    /// Installs an EIP <-> VIP mapping in both directions.
    pub fn set_eip(&mut self, e: &EipEntry) -> Result<()> {
        self.eips
            .inbound
            .insert(u32::from_ne_bytes(e.eip), e, 0)
            .map_err(map_err(maps::EIPS_IN))?;
        self.eips
            .outbound
            .insert(u32::from_ne_bytes(e.vip), e, 0)
            .map_err(map_err(maps::EIPS_OUT))
    }

    /// Removes an EIP <-> VIP mapping, the VIP's learned owner and its nodes.
    pub fn remove_eip(&mut self, e: &EipEntry) -> Result<()> {
        let x = &mut self.eips;
        let _ = x.inbound.remove(&u32::from_ne_bytes(e.eip));
        let _ = x.outbound.remove(&u32::from_ne_bytes(e.vip));
        let _ = x.read.owners.remove(&u32::from_ne_bytes(e.vip));
        let vip = EipNodeKey::v4(e.vip, [0; 6]).vip;
        let keys: Vec<EipNodeKey> = x.nodes_now().filter(|k| k.vip == vip).collect();
        for k in keys {
            let _ = x.nodes.remove(&k);
        }
        Ok(())
    }

    /// The EIP mappings the maps hold (an adopted data plane's included), from both
    /// directions' maps.
    pub fn eips(&self) -> Vec<EipEntry> {
        let x = &self.eips;
        let inbound = x.inbound.iter().filter_map(|r| r.ok()).map(|(_, e)| e);
        let outbound = x.outbound.iter().filter_map(|r| r.ok()).map(|(_, e)| e);
        let mut all: Vec<EipEntry> = Vec::new();
        for e in inbound.chain(outbound) {
            if !all.contains(&e) {
                all.push(e);
            }
        }
        all
    }

    /// Makes `EIP_NODES` exactly `wanted` (see `vip_common::EipNodeKey`): the new keys
    /// first, then the others removed, so that a node listed before and after is
    /// never missing in between (its ARP would be refused).
    pub fn set_eip_nodes(&mut self, wanted: &HashSet<EipNodeKey>) -> Result<()> {
        let x = &mut self.eips;
        for k in wanted {
            x.nodes.insert(k, 1, 0).map_err(map_err(maps::EIP_NODES))?;
        }
        let stale: Vec<EipNodeKey> = x.nodes_now().filter(|k| !wanted.contains(k)).collect();
        for k in stale {
            x.nodes.remove(&k).map_err(map_err(maps::EIP_NODES))?;
        }
        Ok(())
    }

    /// The nodes `EIP_NODES` holds.
    pub fn eip_nodes(&self) -> Vec<EipNodeKey> {
        self.eips.nodes_now().collect()
    }

    /// Forgets a VIP's learned owner (the kernel's neighbour table serves until the
    /// next owner is learned).
    pub fn forget_owner(&mut self, vip: Ipv4Addr) -> Result<()> {
        let key = u32::from_ne_bytes(vip.octets());
        forget(&mut self.eips.read.owners, key, maps::OWNERS)
    }

    /// Sets a VIP's owner as if learned from ARP (tests and benchmarks).
    #[cfg(feature = "test-run")]
    pub fn set_owner(&mut self, vip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        self.eips
            .read
            .owners
            .insert(u32::from_ne_bytes(vip.octets()), learned_now(mac), 0)
            .map_err(map_err(maps::OWNERS))
    }

    /// The owner of a VIP as the data plane learned it.
    pub fn owner(&self, vip: Ipv4Addr) -> Option<Owner> {
        self.eips.read.owner(vip)
    }

    pub fn eip_stats(&self, index: u32) -> Result<EipStats> {
        self.eips.read.stats(index)
    }

    pub fn reset_eip_stats(&mut self, index: u32) -> Result<()> {
        self.eips.read.stats.reset(index)
    }
}

impl Dataplane {
    /// Installs the route of an IPv6 VIP through this gateway.
    pub fn set_route6(&mut self, r: &Route6Entry) -> Result<()> {
        self.eips
            .routes6
            .insert(r.vip, r, 0)
            .map_err(map_err(maps::ROUTES6))
    }

    /// The routes the map holds (an adopted data plane's included).
    pub fn routes6(&self) -> Vec<Route6Entry> {
        self.eips
            .routes6
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, e)| e)
            .collect()
    }

    /// Removes a route, the VIP's learned owner and its nodes.
    pub fn remove_route6(&mut self, vip: Ipv6Addr) -> Result<()> {
        let x = &mut self.eips;
        let key = vip.octets();
        let _ = x.routes6.remove(&key);
        let _ = x.read.owners6.remove(&key);
        let keys: Vec<EipNodeKey> = x.nodes_now().filter(|k| k.vip == key).collect();
        for k in keys {
            let _ = x.nodes.remove(&k);
        }
        Ok(())
    }

    /// The owner of a routed IPv6 VIP as the data plane learned it.
    pub fn route6_owner(&self, vip: Ipv6Addr) -> Option<Owner> {
        self.eips.read.route6_owner(vip)
    }

    /// Forgets a routed VIP's learned owner (the kernel's neighbour table serves
    /// until the next owner is learned).
    pub fn forget_route6_owner(&mut self, vip: Ipv6Addr) -> Result<()> {
        forget(&mut self.eips.read.owners6, vip.octets(), maps::OWNERS_V6)
    }

    /// Sets a routed VIP's owner as if learned from an NA (tests and benchmarks).
    #[cfg(feature = "test-run")]
    pub fn set_route6_owner(&mut self, vip: Ipv6Addr, mac: [u8; 6]) -> Result<()> {
        self.eips
            .read
            .owners6
            .insert(vip.octets(), learned_now(mac), 0)
            .map_err(map_err(maps::OWNERS_V6))
    }

    pub fn route6_stats(&self, index: u32) -> Result<Route6Stats> {
        self.eips.read.route6_stats(index)
    }

    pub fn reset_route6_stats(&mut self, index: u32) -> Result<()> {
        self.eips.read.route6_stats.reset(index)
    }
}

/// Removes a learned owner from `owners` (`OWNERS` or `OWNERS_V6`, named `name`);
/// none there already is fine.
fn forget<K: aya::Pod>(
    owners: &mut HashMap<MapData, K, Owner>,
    key: K,
    name: &'static str,
) -> Result<()> {
    if owners.get(&key, 0).is_err() {
        return Ok(());
    }
    owners.remove(&key).map_err(map_err(name))
}

/// An owner as the data plane records one it learns now (tests and benchmarks).
#[cfg(feature = "test-run")]
fn learned_now(mac: [u8; 6]) -> Owner {
    Owner {
        mac,
        _pad: [0; 2],
        updated_ns: crate::host::monotonic_ns(),
    }
}
