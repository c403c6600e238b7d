//! Active/active groups: who the members are, and the director's table.
//!
//! Every node of a balanced group is a member while it is heard: the active by its
//! advertisements, the standbys by the *member* advertisements they send every
//! interval while healthy. There is no second list to keep in sync. A member not
//! heard for 3 intervals, or that released, leaves; the director (the active, which
//! holds the VIP) then rebuilds its Maglev table without it. An active that released
//! to hand over or yield and stays a standby sends its member advertisement as it
//! steps down (`election`): it is back within a round trip, not an interval.
//!
//! A member's index is its place in the group's node list (itself and its peers)
//! sorted by address, the same on every node; the table is built from the members'
//! addresses alone, so every node that hears the same members computes the same
//! table, and a new director keeps the old one's choices for the surviving members.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use vip_common::{
    balance_maps,
    maglev::{self, Member, TABLE_SIZE},
    BalanceMember, BalanceNode,
};

use crate::mac::Mac;

/// One node of the group, as this node knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub addr: IpAddr,
    pub mac: Option<Mac>,
    pub this_node: bool,
    /// When it was last heard (None: never, or it released).
    pub heard: Option<Instant>,
    /// On another segment (behind a router): reached through the tunnel
    /// (`vip_common::BalanceNode`), at its IPv4 address.
    pub routed: bool,
}

/// The way to a node on another segment: the next hop's MAC on our segment (None
/// while the kernel has none) and the MTU of the path (the interface's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    pub mac: Option<Mac>,
    pub mtu: u16,
}

/// A balanced group's membership and what was last programmed from it.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Sorted by address: the index is the member index.
    pub nodes: Vec<Node>,
    pub interval: Duration,
    /// The group's rows in the balance maps.
    pub slot: u32,
    /// (protocol, port); empty: all TCP and UDP.
    pub ports: Vec<(u8, u16)>,
    /// The member set the data plane holds now (None: not programmed).
    pub programmed: Option<Vec<bool>>,
    /// The ports the data plane holds now.
    pub programmed_ports: Vec<(u8, u16)>,
    /// The member rows (MACs) the data plane holds now: a member whose MAC changed
    /// is reprogrammed, or its flows would go on to the old MAC.
    pub programmed_rows: Vec<BalanceMember>,
    /// The nodes the data plane holds now (`BALANCE_NODES`).
    pub programmed_nodes: Vec<(u64, BalanceNode)>,
    /// The ways to the routed nodes, as last resolved (`resolved_at`).
    pub hops: HashMap<IpAddr, Hop>,
    pub resolved_at: Option<Instant>,
}

pub fn member_id(addr: IpAddr) -> u64 {
    match addr {
        IpAddr::V4(a) => maglev::id_v4(a.octets()),
        IpAddr::V6(a) => maglev::id_v6(&a.octets()),
    }
}

impl Membership {
    pub fn new(
        me: IpAddr,
        my_mac: Mac,
        peers: &[IpAddr],
        interval: Duration,
        slot: u32,
        ports: Vec<(u8, u16)>,
    ) -> Self {
        let mut nodes: Vec<Node> = peers
            .iter()
            .map(|&addr| Node {
                addr,
                mac: None,
                this_node: false,
                heard: None,
                routed: false,
            })
            .collect();
        nodes.push(Node {
            addr: me,
            mac: Some(my_mac),
            this_node: true,
            heard: None,
            routed: false,
        });
        nodes.sort_by_key(|n| n.addr);
        nodes.dedup_by_key(|n| n.addr);
        Membership {
            nodes,
            interval,
            slot,
            ports,
            programmed: None,
            programmed_ports: Vec::new(),
            programmed_rows: Vec::new(),
            programmed_nodes: Vec::new(),
            hops: HashMap::new(),
            resolved_at: None,
        }
    }

    /// Marks the peers `routed` says are on another segment (not on-link here).
    pub fn with_routed(mut self, routed: impl Fn(IpAddr) -> bool) -> Self {
        for n in self.nodes.iter_mut().filter(|n| !n.this_node) {
            n.routed = routed(n.addr);
        }
        self
    }

    /// The routed nodes' addresses (the ones [`Membership::hops`] is for).
    pub fn routed(&self) -> Vec<IpAddr> {
        self.nodes
            .iter()
            .filter(|n| n.routed)
            .map(|n| n.addr)
            .collect()
    }

    /// This node's own MAC changed (its interface's).
    pub fn set_own_mac(&mut self, mac: Mac) {
        for n in self.nodes.iter_mut().filter(|n| n.this_node) {
            n.mac = Some(mac);
        }
    }

    /// A peer's advertisement or member advertisement.
    pub fn heard(&mut self, addr: IpAddr, mac: Mac, now: Instant) {
        if let Some(n) = self
            .nodes
            .iter_mut()
            .find(|n| n.addr == addr && !n.this_node)
        {
            n.mac = Some(mac);
            n.heard = Some(now);
        }
    }

    /// A peer released (planned handover, stop) or faulted: it leaves at once.
    pub fn left(&mut self, addr: IpAddr) {
        if let Some(n) = self
            .nodes
            .iter_mut()
            .find(|n| n.addr == addr && !n.this_node)
        {
            n.heard = None;
        }
    }

    /// Who is a member now; `self_up`: this node serves (active or healthy standby).
    pub fn up(&self, now: Instant, self_up: bool) -> Vec<bool> {
        self.nodes
            .iter()
            .map(|n| {
                if n.this_node {
                    self_up
                } else {
                    n.mac.is_some()
                        && n.heard
                            .is_some_and(|t| now.saturating_duration_since(t) <= self.interval * 3)
                }
            })
            .collect()
    }

    /// The `BALANCE_NODES` entries of every node ever heard, this one included, up
    /// or not: a member delivers what they send it rather than forward it to the
    /// director (a node that left may still be handing over flows it thinks it
    /// directs). Each under its MAC; a routed one also under its tunnel address,
    /// with the way to it (all zero while unresolved: the data plane then serves its
    /// packets where they are). Sorted by key.
    pub fn node_entries(&self) -> Vec<(u64, BalanceNode)> {
        let mut out = Vec::new();
        for (row, n) in self.nodes.iter().enumerate() {
            let Some(mac) = n.mac else { continue };
            let mut v = BalanceNode {
                row: row as u8,
                ..Default::default()
            };
            if let (true, IpAddr::V4(a)) = (n.routed, n.addr) {
                v.tunnel = a.octets();
                if let Some(h) = self.hops.get(&n.addr) {
                    v.next_hop = h.mac.map(|m| m.0).unwrap_or_default();
                    v.mtu = h.mtu;
                }
                out.push((
                    balance_maps::tunnel_key(self.slot, u32::from_ne_bytes(v.tunnel)),
                    v,
                ));
            }
            out.push((balance_maps::node_key(self.slot, &mac.0), v));
        }
        out.sort_by_key(|(k, _)| *k);
        out.dedup_by_key(|(k, _)| *k);
        out
    }

    /// The data plane's member rows for `up`.
    pub fn rows(&self, up: &[bool]) -> Vec<BalanceMember> {
        self.nodes
            .iter()
            .zip(up)
            .map(|(n, &u)| BalanceMember {
                mac: n.mac.map(|m| m.0).unwrap_or_default(),
                up: u as u8,
                this_node: n.this_node as u8,
            })
            .collect()
    }

    /// The Maglev table for `up` (every slot a member index; all `NO_MEMBER` when
    /// nobody is up).
    pub fn table(&self, up: &[bool]) -> Result<Vec<u16>, maglev::Error> {
        let mut table = vec![maglev::NO_MEMBER; TABLE_SIZE];
        if !up.iter().any(|u| *u) {
            return Ok(table);
        }
        let members: Vec<Member> = self
            .nodes
            .iter()
            .zip(up)
            .map(|(n, &u)| Member::new(member_id(n.addr), u as u16))
            .collect();
        maglev::build(&members, &mut table)?;
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(me: &str, all: &[&str]) -> Membership {
        let peers: Vec<IpAddr> = all.iter().filter(|a| **a != me).map(|a| ip(a)).collect();
        Membership::new(
            ip(me),
            Mac([2, 0, 0, 0, 0, 1]),
            &peers,
            Duration::from_millis(100),
            0,
            Vec::new(),
        )
    }

    #[test]
    fn every_node_computes_the_same_table() {
        let all = ["10.0.0.13", "10.0.0.11", "10.0.0.12"];
        let t0 = Instant::now();
        let tables: Vec<Vec<u16>> = all
            .iter()
            .map(|me| {
                let mut m = node(me, &all);
                for a in all {
                    m.heard(ip(a), Mac([2, 0, 0, 0, 0, 9]), t0);
                }
                assert_eq!(m.nodes[0].addr, ip("10.0.0.11"), "sorted by address");
                m.table(&m.up(t0, true)).unwrap()
            })
            .collect();
        assert!(tables.windows(2).all(|w| w[0] == w[1]));
        let share =
            |i: u16| tables[0].iter().filter(|&&x| x == i).count() as f64 / TABLE_SIZE as f64;
        for i in 0..3 {
            assert!((share(i) - 1.0 / 3.0).abs() < 0.01, "{}", share(i));
        }
    }

    #[test]
    fn a_silent_member_leaves_after_three_intervals_and_a_release_at_once() {
        let all = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];
        let mut m = node("10.0.0.11", &all);
        let t0 = Instant::now();
        m.heard(ip("10.0.0.12"), Mac([2, 0, 0, 0, 0, 2]), t0);
        m.heard(ip("10.0.0.13"), Mac([2, 0, 0, 0, 0, 3]), t0);
        assert_eq!(
            m.up(t0 + Duration::from_millis(300), true),
            [true, true, true]
        );
        assert_eq!(
            m.up(t0 + Duration::from_millis(301), true),
            [true, false, false]
        );
        m.left(ip("10.0.0.12"));
        assert_eq!(m.up(t0, true), [true, false, true]);
        // Unknown addresses and our own are never changed by what is heard.
        m.heard(ip("10.0.0.99"), Mac([2, 0, 0, 0, 0, 4]), t0);
        m.left(ip("10.0.0.11"));
        assert_eq!(m.up(t0, true), [true, false, true]);
        assert_eq!(m.up(t0, false), [false, false, true]);
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_slots_and_a_sliver() {
        let all = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];
        let mut m = node("10.0.0.11", &all);
        let t0 = Instant::now();
        m.heard(ip("10.0.0.12"), Mac([2, 0, 0, 0, 0, 2]), t0);
        m.heard(ip("10.0.0.13"), Mac([2, 0, 0, 0, 0, 3]), t0);
        let before = m.table(&[true, true, true]).unwrap();
        let after = m.table(&[true, true, false]).unwrap();
        let moved_others = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 2 && b != a)
            .count();
        assert!(
            (moved_others as f64) < 0.01 * TABLE_SIZE as f64,
            "{moved_others}"
        );
        assert!(after.iter().all(|&x| x != 2));
        let rows = m.rows(&[true, true, false]);
        // Every node heard is a node for the member's forward check, up or not.
        assert_eq!(m.node_entries().len(), 3);
        assert_eq!((rows[0].this_node, rows[2].up, rows[2].mac[5]), (1, 0, 3));
        // Nobody up: an empty table, never an error.
        assert!(m
            .table(&[false, false, false])
            .unwrap()
            .iter()
            .all(|&x| x == maglev::NO_MEMBER));
    }

    /// A node on another segment is in `BALANCE_NODES` twice, under its MAC and its
    /// tunnel address, both with its row and the way to it (unresolved: zeros);
    /// one on this segment once, with no tunnel.
    #[test]
    fn a_routed_node_is_listed_under_its_mac_and_its_tunnel_address() {
        let all = ["10.0.0.11", "10.0.0.12", "10.0.1.10"];
        let mut m = node("10.0.0.11", &all).with_routed(|a| a == ip("10.0.1.10"));
        assert_eq!(m.routed(), [ip("10.0.1.10")]);
        let t0 = Instant::now();
        m.heard(ip("10.0.0.12"), Mac([2, 0, 0, 0, 0, 2]), t0);
        m.heard(ip("10.0.1.10"), Mac([2, 0, 0, 0, 0, 3]), t0);
        let e = m.node_entries();
        assert_eq!(e.len(), 4, "{e:?}");
        let routed = u32::from_ne_bytes([10, 0, 1, 10]);
        let by_mac = e
            .iter()
            .find(|(k, _)| *k == balance_maps::node_key(0, &[2, 0, 0, 0, 0, 3]))
            .map(|(_, v)| *v);
        let by_addr = e
            .iter()
            .find(|(k, _)| *k == balance_maps::tunnel_key(0, routed))
            .map(|(_, v)| *v);
        assert_eq!(by_mac, by_addr);
        let v = by_mac.expect("the routed node by its MAC");
        assert_eq!(
            (v.tunnel, v.row, v.next_hop, v.mtu),
            ([10, 0, 1, 10], 2, [0; 6], 0)
        );
        // The way to it, once resolved, is in both entries.
        m.hops.insert(
            ip("10.0.1.10"),
            Hop {
                mac: Some(Mac([2, 0, 0, 0, 0, 0x20])),
                mtu: 1500,
            },
        );
        let e = m.node_entries();
        assert!(e
            .iter()
            .filter(|(_, v)| v.tunnel != [0; 4])
            .all(|(_, v)| v.next_hop == [2, 0, 0, 0, 0, 0x20] && v.mtu == 1500));
        // The one on this segment: no tunnel.
        let b = e
            .iter()
            .find(|(k, _)| *k == balance_maps::node_key(0, &[2, 0, 0, 0, 0, 2]))
            .expect("b by its MAC");
        assert_eq!((b.1.tunnel, b.1.row), ([0; 4], 1));
    }
}
