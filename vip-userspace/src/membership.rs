//! Active/active groups: who the members are, and the director's table.
//!
//! Every node of a balanced group is a member while it is heard: the active by its
//! advertisements, the standbys by the *member* advertisements they send every
//! interval while healthy. There is no second list to keep in sync. A member not
//! heard for 3 intervals, or that released, leaves; the director (the active, which
//! holds the VIP) then rebuilds its Maglev table without it.
//!
//! A member's index is its place in the group's node list (itself and its peers)
//! sorted by address, the same on every node; the table is built from the members'
//! addresses alone, so every node that hears the same members computes the same
//! table, and a new director keeps the old one's choices for the surviving members.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use vip_common::{
    maglev::{self, Member, TABLE_SIZE},
    BalanceMember,
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
    /// The node MACs the data plane holds now (`BALANCE_NODES`).
    pub programmed_nodes: Vec<[u8; 6]>,
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
            })
            .collect();
        nodes.push(Node {
            addr: me,
            mac: Some(my_mac),
            this_node: true,
            heard: None,
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
        }
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

    /// The MACs of every node ever heard, this one included, up or not: a member
    /// delivers what they send it rather than forward it to the director (a node
    /// that left may still be handing over flows it thinks it directs).
    pub fn node_macs(&self) -> Vec<[u8; 6]> {
        let mut macs: Vec<[u8; 6]> = self
            .nodes
            .iter()
            .filter_map(|n| n.mac)
            .map(|m| m.0)
            .collect();
        macs.sort_unstable();
        macs.dedup();
        macs
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
        assert_eq!(m.node_macs().len(), 3);
        assert_eq!((rows[0].this_node, rows[2].up, rows[2].mac[5]), (1, 0, 3));
        // Nobody up: an empty table, never an error.
        assert!(m
            .table(&[false, false, false])
            .unwrap()
            .iter()
            .all(|&x| x == maglev::NO_MEMBER));
    }
}
