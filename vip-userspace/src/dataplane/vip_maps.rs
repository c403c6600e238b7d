//! [`VipMaps`]: the writes a group's change of ownership makes to the data plane, one
//! seam in the spirit of `vip_index::Store`. `crate::ownership` decides their order
//! (lease, quiet, director, entries and with them the index); the agent carries them
//! out through this trait, so that order is unit-tested against a recorder instead
//! of a kernel (`crate::agent`'s effects tests).

use std::net::IpAddr;

use vip_common::{BalanceMember, BalanceNode, VipEntry};

use super::{Dataplane, Extension, Result};

/// The data plane's writes in a takeover, a release, a renewal or a drain.
pub trait VipMaps {
    /// A new lease for `group` until `deadline_ns`, whatever it held.
    fn grant_lease(&mut self, group: u32, deadline_ns: u64) -> Result<()>;
    /// No lease for `group`: its leased entries stop answering at once.
    fn revoke_lease(&mut self, group: u32) -> Result<()>;
    /// `group`'s lease from `expect` to `deadline_ns`, if `expect` still runs (the
    /// kernel checks as it writes).
    fn extend_lease(&mut self, group: u32, expect: u64, deadline_ns: u64) -> Result<Extension>;
    /// Whether `group`'s entries answer ARP/NS and probes.
    fn set_quiet(&mut self, group: u32, quiet: bool) -> Result<()>;
    /// VIP entries, and the IPv4 index after them.
    fn set_vips_batch(&mut self, entries: &[(IpAddr, VipEntry)]) -> Result<()>;
    /// A balance slot's ports, members and Maglev table.
    fn set_balance(
        &mut self,
        slot: u32,
        placement: super::Placement,
        old_ports: &[(u8, u16)],
        ports: &[(u8, u16)],
        members: &[BalanceMember],
        table: &[u16],
    ) -> Result<()>;
    /// A balance slot's nodes (`BALANCE_NODES`), from `old` to `new`.
    fn set_balance_nodes(
        &mut self,
        slot: u32,
        old: &[(u64, BalanceNode)],
        new: &[(u64, BalanceNode)],
    ) -> Result<()>;
}

/// The kernel's maps: each write is the part's own (see the module files).
impl VipMaps for Dataplane {
    fn grant_lease(&mut self, group: u32, deadline_ns: u64) -> Result<()> {
        Dataplane::grant_lease(self, group, deadline_ns)
    }

    fn revoke_lease(&mut self, group: u32) -> Result<()> {
        Dataplane::revoke_lease(self, group)
    }

    fn extend_lease(&mut self, group: u32, expect: u64, deadline_ns: u64) -> Result<Extension> {
        Dataplane::extend_lease(self, group, expect, deadline_ns)
    }

    fn set_quiet(&mut self, group: u32, quiet: bool) -> Result<()> {
        Dataplane::set_quiet(self, group, quiet)
    }

    fn set_vips_batch(&mut self, entries: &[(IpAddr, VipEntry)]) -> Result<()> {
        Dataplane::set_vips_batch(self, entries)
    }

    fn set_balance(
        &mut self,
        slot: u32,
        placement: super::Placement,
        old_ports: &[(u8, u16)],
        ports: &[(u8, u16)],
        members: &[BalanceMember],
        table: &[u16],
    ) -> Result<()> {
        Dataplane::set_balance(self, slot, placement, old_ports, ports, members, table)
    }

    fn set_balance_nodes(
        &mut self,
        slot: u32,
        old: &[(u64, BalanceNode)],
        new: &[(u64, BalanceNode)],
    ) -> Result<()> {
        Dataplane::set_balance_nodes(self, slot, old, new)
    }
}
