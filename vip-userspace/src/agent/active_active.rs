//! Active/active groups in the loop: the VIP on lo of every member, and the director's
//! table kept in step with who is heard
//! (`crate::membership` holds the membership and the table's arithmetic).

use std::time::Instant;

use anyhow::{Context, Result};

use super::{group::GroupRuntime, Agent};
use crate::{dataplane::VipMaps, state::State};

impl Agent {
    /// Due work of a balanced group: the membership's expiry (a standby's member
    /// advertisement is its election's presence, `Kind::Standby`, every interval).
    pub(super) fn balance_tick(&mut self, gi: usize) {
        if self.groups[gi].balance.is_some() {
            self.balance_sync(gi);
        }
    }

    /// Members hold the VIP on lo (the director hands them packets for it); the
    /// director's table, and every node's list of node MACs, follow the membership.
    pub(super) fn balance_sync(&mut self, gi: usize) {
        if self.groups[gi].balance.is_none() {
            return;
        }
        if let Err(e) = program_nodes(&mut self.dp, &mut self.groups[gi]) {
            log::error!("group {}: {e:#}", self.groups[gi].cfg.name);
        }
        let state = self.groups[gi].state;
        let member = matches!(state, State::Standby | State::Active);
        if member {
            let (name, vips) = (
                self.groups[gi].cfg.name.clone(),
                self.groups[gi].vips.clone(),
            );
            let missing: Vec<_> = vips
                .iter()
                .map(|v| v.vip.addr)
                .filter(|a| !self.addrs.holds(*a))
                .collect();
            if !missing.is_empty() {
                self.addrs.add_all(&name, missing);
            }
        } else if !self.groups[gi].own.draining() {
            let holds = self.groups[gi]
                .vips
                .iter()
                .any(|v| self.addrs.holds(v.vip.addr));
            if holds {
                self.release_addresses(gi);
            }
        }
        if state != State::Active {
            if let Some(b) = &mut self.groups[gi].balance {
                b.programmed = None;
            }
            return;
        }
        if let Err(e) = program_table(&mut self.dp, &mut self.groups[gi]) {
            log::error!("group {}: {e:#}", self.groups[gi].cfg.name);
        }
    }
}

/// Writes the director's members and table if the member set (or the ports, or a
/// member's MAC) changed since the last time.
pub(super) fn program_table(maps: &mut impl VipMaps, g: &mut GroupRuntime) -> Result<()> {
    let now = Instant::now();
    let Some(b) = &g.balance else { return Ok(()) };
    let up = b.up(now, true);
    let rows = b.rows(&up);
    if b.programmed.as_ref() == Some(&up)
        && b.programmed_ports == b.ports
        && b.programmed_rows == rows
    {
        return Ok(());
    }
    let table = b
        .table(&up)
        .with_context(|| format!("group {}: building the balance table", g.cfg.name))?;
    let (slot, ports, old) = (b.slot, b.ports.clone(), b.programmed_ports.clone());
    let members: Vec<String> = b
        .nodes
        .iter()
        .zip(&up)
        .filter(|(_, u)| **u)
        .map(|(n, _)| n.addr.to_string())
        .collect();
    // Anycast (announced over BGP only): the router's ECMP spreads the flows, and a
    // flow stays on the member the router first handed it to.
    let placement = crate::dataplane::Placement {
        all_ports: ports.is_empty(),
        first_hop: g.cfg.announce == crate::config::Announce::Bgp,
    };
    maps.set_balance(slot, placement, &old, &ports, &rows, &table)
        .with_context(|| format!("group {}: programming the balance table", g.cfg.name))?;
    log::info!(
        "group {}: balancing over {} member(s): {}",
        g.cfg.name,
        members.len(),
        members.join(", ")
    );
    if let Some(b) = &mut g.balance {
        b.programmed = Some(up);
        b.programmed_ports = ports;
        b.programmed_rows = rows;
    }
    Ok(())
}

/// Writes the group's node MACs (`BALANCE_NODES`) if a node's MAC was learned or
/// changed: a member's forward entry delivers what they send it locally.
pub(super) fn program_nodes(maps: &mut impl VipMaps, g: &mut GroupRuntime) -> Result<()> {
    let Some(b) = &mut g.balance else {
        return Ok(());
    };
    let macs = b.node_macs();
    if macs == b.programmed_nodes {
        return Ok(());
    }
    maps.set_balance_nodes(b.slot, &b.programmed_nodes, &macs)
        .with_context(|| format!("group {}: programming the balance nodes", g.cfg.name))?;
    b.programmed_nodes = macs;
    Ok(())
}
