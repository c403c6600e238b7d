//! The director's rows of the active/active groups (`vip_common::balance_maps`), one slot
//! per balanced group: its Maglev table (`BALANCE_TABLE`), members (`BALANCE_MEMBERS`),
//! ports (`BALANCE_CONF`, `BALANCE_PORTS`), node MACs (`BALANCE_NODES`) and what it
//! sent each member (`BALANCE_STATS`). Not pinned: a director's table is rebuilt from
//! the membership at every start.

use std::os::fd::AsFd as _;

use aya::{
    maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray},
    Ebpf,
};
use vip_common::{balance_maps, maps, BalanceConf, BalanceMember, BalanceNode, BalanceStats};

use super::{handles::Counters, io_err, map_err, sys, Dataplane, DataplaneError, Result};

/// How a balance slot places flows (`BalanceConf`): which ports it balances (all, or
/// the listed ones), and whether a new flow stays on the member the router handed it
/// to (`first_hop`, anycast) rather than the Maglev table's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub all_ports: bool,
    pub first_hop: bool,
}

impl Placement {
    /// Every port, placed by the Maglev table: a balanced group on one segment.
    pub const ALL_PORTS: Placement = Placement {
        all_ports: true,
        first_hop: false,
    };
}

/// The director's part of the data plane.
pub(super) struct Director {
    table: Array<MapData, u64>,
    members: Array<MapData, BalanceMember>,
    conf: Array<MapData, BalanceConf>,
    ports: HashMap<MapData, u64, u32>,
    nodes: HashMap<MapData, u64, BalanceNode>,
    stats: Counters<BalanceStats>,
}

/// Member `index` of slot `slot`, in `BALANCE_MEMBERS` and `BALANCE_STATS`.
pub(super) fn member_slot(slot: u32, index: u32) -> u32 {
    slot * balance_maps::MAX_MEMBERS + index
}

impl Director {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let stats: PerCpuArray<MapData, BalanceStats> = super::take(ebpf, maps::BALANCE_STATS)?;
        Ok(Director {
            table: super::take(ebpf, maps::BALANCE_TABLE)?,
            members: super::take(ebpf, maps::BALANCE_MEMBERS)?,
            conf: super::take(ebpf, maps::BALANCE_CONF)?,
            ports: super::take(ebpf, maps::BALANCE_PORTS)?,
            nodes: super::take(ebpf, maps::BALANCE_NODES)?,
            stats: Counters::new(stats, maps::BALANCE_STATS, BalanceStats::add),
        })
    }

    pub(super) fn stats(&self) -> &Counters<BalanceStats> {
        &self.stats
    }
}

impl Dataplane {
    /// Programs balance slot `slot`: its ports (`all` or the listed (protocol, port)
    /// pairs, replacing `old_ports`, with `placement.all_ports`), how it places new
    /// flows ([`Placement`]), its members (by index) and its Maglev table.
    /// The table is written with one batch: each word is replaced atomically, the
    /// table as a whole is not (a flow whose slot moves may see either member once).
    pub fn set_balance(
        &mut self,
        slot: u32,
        placement: Placement,
        old_ports: &[(u8, u16)],
        ports: &[(u8, u16)],
        members: &[BalanceMember],
        table: &[u16],
    ) -> Result<()> {
        if slot >= balance_maps::MAX_BALANCED_GROUPS
            || members.len() > balance_maps::MAX_MEMBERS as usize
        {
            return Err(DataplaneError::Missing("a balance slot"));
        }
        let d = &mut self.director;
        for (p, port) in old_ports {
            if !ports.contains(&(*p, *port)) {
                let _ = d.ports.remove(&balance_maps::port_key(slot, *p, *port));
            }
        }
        for (p, port) in ports {
            d.ports
                .insert(balance_maps::port_key(slot, *p, *port), 1, 0)
                .map_err(map_err(maps::BALANCE_PORTS))?;
        }
        d.conf
            .set(
                slot,
                BalanceConf {
                    all_ports: placement.all_ports as u32,
                    first_hop: placement.first_hop as u8,
                    rows: members.len() as u8,
                    _pad: [0; 2],
                },
                0,
            )
            .map_err(map_err(maps::BALANCE_CONF))?;
        for i in 0..balance_maps::MAX_MEMBERS {
            let m = members.get(i as usize).copied().unwrap_or_default();
            d.members
                .set(member_slot(slot, i), m, 0)
                .map_err(map_err(maps::BALANCE_MEMBERS))?;
        }
        let words = balance_maps::WORDS as usize;
        let (mut keys, mut values) = (Vec::with_capacity(words * 4), Vec::with_capacity(words * 8));
        for w in 0..words {
            let mut word = 0u64;
            for j in 0..4 {
                let v = table
                    .get(w * 4 + j)
                    .copied()
                    .unwrap_or(vip_common::maglev::NO_MEMBER);
                word |= (v as u64) << (16 * j);
            }
            keys.extend_from_slice(&(slot * balance_maps::WORDS + w as u32).to_ne_bytes());
            values.extend_from_slice(&word.to_ne_bytes());
        }
        sys::update_batch(d.table.map().fd().as_fd(), &keys, &values, words as u32)
            .map_err(io_err(maps::BALANCE_TABLE))
    }

    /// Replaces balance slot `slot`'s node MACs, `old` (as last written), with `new`:
    /// a member delivers locally what these send it (see `vip_common::flags::BALANCED`).
    /// The new ones go in first, so a node that stays is never missing.
    /// A balance slot's nodes (`Membership::node_entries`: keys of this slot), from
    /// `old` to `new`: the changed and new entries written first, then the keys that
    /// went removed.
    pub fn set_balance_nodes(
        &mut self,
        slot: u32,
        old: &[(u64, BalanceNode)],
        new: &[(u64, BalanceNode)],
    ) -> Result<()> {
        if slot >= balance_maps::MAX_BALANCED_GROUPS
            || new.len() > 2 * balance_maps::MAX_MEMBERS as usize
        {
            return Err(DataplaneError::Missing("a balance slot"));
        }
        let nodes = &mut self.director.nodes;
        for (key, node) in new.iter().filter(|e| !old.contains(e)) {
            nodes
                .insert(key, node, 0)
                .map_err(map_err(maps::BALANCE_NODES))?;
        }
        for (key, _) in old.iter().filter(|(k, _)| !new.iter().any(|(n, _)| n == k)) {
            let _ = nodes.remove(key);
        }
        Ok(())
    }

    /// What the director sent to member `index` of slot `slot`, summed over CPUs.
    pub fn balance_stats(&self, slot: u32, index: u32) -> Result<BalanceStats> {
        self.director.stats.get(member_slot(slot, index))
    }
}
