//! The solicited-node multicast groups of the IPv6 VIPs a node serves.
//!
//! An IPv6 VIP is on `lo` (or a local route, or, redirected, nowhere), so the VIP
//! interface does not join its solicited-node group by itself: the agent joins it,
//! or NICs that filter multicast and switches that snoop MLD never deliver the
//! solicitations for it.
//!
//! A socket holds as many memberships as `net.core.optmem_max` allows (about 2,300
//! with its default of 128 KiB; the next join fails with ENOMEM), so a big group's
//! are spread over as many sockets as it takes. Two VIPs may share a group (the same
//! last 24 bits): a group is left when the last VIP that needs it goes, whatever
//! order the joins and leaves come in, and a VIP joined twice counts once.
//!
//! Made by the address worker (`addresses`), in order with the VIPs' routes and
//! addresses: 20,000 joins take about 0.3 s, which the agent's loop must not spend.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{Ipv6Addr, UdpSocket},
};

use crate::frames::solicited_node;

/// Who holds which solicited-node group, for how many VIPs.
pub struct SolicitedNodes {
    ifindex: u32,
    socks: Vec<UdpSocket>,
    /// Solicited-node group: the socket that joined it, and the VIPs that need it.
    groups: HashMap<Ipv6Addr, (usize, u32)>,
    /// The VIPs whose group is joined.
    joined: HashSet<Ipv6Addr>,
}

/// How a join or leave of many VIPs went: what failed, and the last error (one log
/// line for a 20,000-VIP group, not one per VIP).
#[derive(Debug, Default)]
pub struct Outcome {
    pub failed: usize,
    pub last_error: Option<io::Error>,
}

impl SolicitedNodes {
    pub fn new(ifindex: u32) -> Self {
        SolicitedNodes {
            ifindex,
            socks: Vec::new(),
            groups: HashMap::new(),
            joined: HashSet::new(),
        }
    }

    /// Joins the groups of `vips` (idempotent per VIP).
    pub fn join(&mut self, vips: &[Ipv6Addr]) -> Outcome {
        let mut out = Outcome::default();
        for &v in vips {
            if self.joined.contains(&v) {
                continue;
            }
            let (group, _) = solicited_node(v);
            if let Some((_, n)) = self.groups.get_mut(&group) {
                *n += 1;
                self.joined.insert(v);
                continue;
            }
            match self.join_group(&group) {
                Ok(sock) => {
                    self.groups.insert(group, (sock, 1));
                    self.joined.insert(v);
                }
                Err(e) => {
                    out.failed += 1;
                    out.last_error = Some(e);
                }
            }
        }
        out
    }

    /// Leaves the groups of `vips` that no other joined VIP needs.
    pub fn leave(&mut self, vips: &[Ipv6Addr]) -> Outcome {
        let mut out = Outcome::default();
        for v in vips {
            if !self.joined.remove(v) {
                continue;
            }
            let (group, _) = solicited_node(*v);
            let Some((sock, n)) = self.groups.get_mut(&group) else {
                continue;
            };
            *n -= 1;
            if *n > 0 {
                continue;
            }
            let sock = *sock;
            self.groups.remove(&group);
            if let Err(e) = self.socks[sock].leave_multicast_v6(&group, self.ifindex) {
                // Left already (the interface went away): nothing to undo.
                if e.raw_os_error() != Some(libc::EADDRNOTAVAIL) {
                    out.failed += 1;
                    out.last_error = Some(e);
                }
            }
        }
        out
    }

    /// Joins `group` on the newest socket, or on a new one when that one is full;
    /// returns the socket's index.
    fn join_group(&mut self, group: &Ipv6Addr) -> io::Result<usize> {
        if let Some(last) = self.socks.last() {
            match last.join_multicast_v6(group, self.ifindex) {
                Ok(()) => return Ok(self.socks.len() - 1),
                // Joined already on this socket: ours.
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                    return Ok(self.socks.len() - 1)
                }
                Err(e) if !matches!(e.raw_os_error(), Some(libc::ENOMEM) | Some(libc::ENOBUFS)) => {
                    return Err(e)
                }
                Err(_) => {}
            }
        }
        let sock = UdpSocket::bind("[::]:0")?;
        sock.join_multicast_v6(group, self.ifindex)?;
        self.socks.push(sock);
        Ok(self.socks.len() - 1)
    }
}
