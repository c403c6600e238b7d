//! Active/active groups in the loop: the VIP on lo of every member, and the director's
//! table kept in step with who is heard
//! (`crate::membership` holds the membership and the table's arithmetic).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{group::GroupRuntime, Agent};
use crate::{
    config::Config,
    dataplane::VipMaps,
    host::Interface,
    membership::{Hop, Membership},
    netlink::Netlink,
    state::State,
};

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
        if let Some(b) = &mut self.groups[gi].balance {
            resolve_hops(&self.nl, &self.iface, b, Instant::now());
        }
        if let Err(e) = program_nodes(&mut self.dp, &mut self.groups[gi]) {
            log::error!("group {}: {e:#}", self.groups[gi].cfg.name);
        }
        let state = self.groups[gi].state;
        let member = matches!(state, State::Standby | State::Active);
        if member {
            let (name, vips, v6) = (
                self.groups[gi].cfg.name.clone(),
                self.groups[gi].vips.clone(),
                self.groups[gi].cfg.ipv6_local,
            );
            let missing: Vec<_> = vips
                .iter()
                .map(|v| v.vip.addr)
                .filter(|a| !self.addrs.holds(*a))
                .collect();
            if !missing.is_empty() {
                self.addrs.add_all(&name, missing, v6);
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

/// Writes the group's nodes (`BALANCE_NODES`) if a node's MAC was learned or changed,
/// or the way to a routed one: a member's forward entry delivers what they send it
/// locally, and the tunnel reaches the routed ones.
pub(super) fn program_nodes(maps: &mut impl VipMaps, g: &mut GroupRuntime) -> Result<()> {
    let Some(b) = &mut g.balance else {
        return Ok(());
    };
    let nodes = b.node_entries();
    if nodes == b.programmed_nodes {
        return Ok(());
    }
    maps.set_balance_nodes(b.slot, &b.programmed_nodes, &nodes)
        .with_context(|| format!("group {}: programming the balance nodes", g.cfg.name))?;
    b.programmed_nodes = nodes;
    Ok(())
}

/// How often the ways to the routed nodes are looked up again: a router replaced
/// (its MAC) is followed within this.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// Looks up the way to each routed node of the group (at most every
/// [`RESOLVE_EVERY`]): the kernel's route to it, the MAC of that route's gateway in
/// the neighbour table (one dump for all of them), and the interface's MTU. A route
/// out of another interface than the group's, or a gateway without a neighbour
/// entry yet, leaves the MAC unresolved (the data plane then serves the node's
/// packets where they arrive).
fn resolve_hops(nl: &Netlink, iface: &Interface, b: &mut Membership, now: Instant) {
    let routed = b.routed();
    if routed.is_empty() || b.resolved_at.is_some_and(|t| now < t + RESOLVE_EVERY) {
        return;
    }
    b.resolved_at = Some(now);
    let mtu = nl
        .link(iface.index, None)
        .ok()
        .and_then(|l| l.mtu)
        .unwrap_or(1500)
        .min(u16::MAX as u32) as u16;
    let neighbours = nl.neighbours_v4(iface.index).unwrap_or_default();
    for addr in routed {
        let mac = match nl.route_to(addr) {
            Ok(Some((oif, gateway))) if oif == iface.index => {
                let next = gateway.unwrap_or(addr);
                neighbours.iter().find(|(a, _)| *a == next).map(|(_, m)| *m)
            }
            _ => None,
        };
        let hop = Hop { mac, mtu };
        if b.hops.get(&addr) != Some(&hop) {
            match mac {
                Some(m) => log::info!("balanced node {addr} is on another segment: tunnelled via {m}, MTU {mtu}"),
                None => log::warn!("balanced node {addr} is on another segment, but no next hop towards it is resolved on {}: its packets are served where they arrive", iface.name),
            }
            b.hops.insert(addr, hop);
        }
    }
}

/// This node's tunnel address (`Settings::tunnel_src`): its primary IPv4 address when
/// a balanced group has an IPv4 peer on another segment, else 0 (no tunnel code in
/// the data plane).
pub(super) fn tunnel_src(cfg: &Config, iface: &Interface) -> u32 {
    let routed = cfg
        .groups
        .iter()
        .filter(|g| g.balance.is_some())
        .filter_map(|g| g.election.as_ref())
        .flat_map(|e| e.peers.iter())
        .any(|p| p.is_ipv4() && !super::peers::on_link(iface, *p));
    match (routed, super::adverts::primary_address(iface, true)) {
        (true, Some(IpAddr::V4(a))) => u32::from_ne_bytes(a.octets()),
        _ => 0,
    }
}
