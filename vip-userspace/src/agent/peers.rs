//! Who may reach the election's port, as the data plane knows it (`vip_common::peers`):
//! one `PEERS` entry per (peer, this node's address of the peer's family) of every
//! elected group, with the budgets of the groups that share it, and the MAC each peer
//! showed in its authenticated advertisements. Planned from the config like the
//! rest of a reload (nothing written until the plan holds), written before the
//! program is attached at start, and taught a peer's MAC only when it changes, so a
//! datagram costs the loop one comparison.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use anyhow::{bail, Context, Result};
use vip_common::{peers, Peer, PeerKey};

use super::{adverts::primary_address, Agent};
use crate::{config::Config, dataplane::Dataplane, host::Interface, mac::Mac};

/// One pair: the peer, and what its entry says apart from the MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pair {
    pub peer: IpAddr,
    /// The peer is on one of our interface's subnets, so its frames carry its own MAC
    /// (behind a router they carry the router's): only then is its MAC checked.
    pub on_link: bool,
    pub probe_gap_ns: u32,
    pub datagram_gap_ns: u32,
}

pub(super) type Plan = BTreeMap<PeerKey, Pair>;

/// What the data plane holds, and the MACs the peers taught us.
#[derive(Default)]
pub(super) struct Peers {
    pub written: Plan,
    pub learned: HashMap<IpAddr, Mac>,
}

/// The key of a datagram from `peer` to `me`.
pub(super) fn key(peer: IpAddr, me: IpAddr) -> PeerKey {
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(a) => peers::v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    };
    PeerKey {
        src: bytes(peer),
        dst: bytes(me),
    }
}

/// True when `a` lies in a subnet of one of the interface's addresses.
pub(super) fn on_link(iface: &Interface, a: IpAddr) -> bool {
    iface.addrs.iter().any(|(mine, prefix)| match (mine, a) {
        (IpAddr::V4(m), IpAddr::V4(x)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(*prefix).min(32))
                .unwrap_or(0);
            u32::from(*m) & mask == u32::from(x) & mask
        }
        (IpAddr::V6(m), IpAddr::V6(x)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(*prefix).min(128))
                .unwrap_or(0);
            u128::from(*m) & mask == u128::from(x) & mask
        }
        _ => false,
    })
}

/// The pairs of a config on this interface; fails (changing nothing) when a family
/// has no address to be reached at, or when there are more pairs than the map holds.
pub(super) fn plan(cfg: &Config, iface: &Interface) -> Result<Plan> {
    let mut groups: BTreeMap<PeerKey, (IpAddr, u32)> = BTreeMap::new();
    for e in cfg.groups.iter().filter_map(|g| g.election.as_ref()) {
        for p in &e.peers {
            let Some(me) = primary_address(iface, p.is_ipv4()) else {
                bail!(
                    "interface {} has no {} address for peer {p} to reach",
                    iface.name,
                    if p.is_ipv4() { "IPv4" } else { "IPv6" }
                );
            };
            groups.entry(key(*p, me)).or_insert((*p, 0)).1 += 1;
        }
    }
    if groups.len() > peers::MAX as usize {
        bail!(
            "{} distinct peers exceed the data plane's {}",
            groups.len(),
            peers::MAX
        );
    }
    Ok(groups
        .into_iter()
        .map(|(k, (peer, n))| {
            // Every group sharing the pair may send at its fastest.
            let gap = |per_group: u64| (per_group / u64::from(n)).max(1) as u32;
            let pair = Pair {
                peer,
                on_link: on_link(iface, peer),
                probe_gap_ns: gap(peers::PROBE_GAP_NS),
                datagram_gap_ns: gap(peers::DATAGRAM_GAP_NS),
            };
            (k, pair)
        })
        .collect())
}

/// The entry of a pair, with the MAC its peer taught us (if it is checked).
fn value(p: &Pair, learned: Option<Mac>) -> Peer {
    let mac = learned.filter(|_| p.on_link);
    Peer {
        mac: mac.unwrap_or(Mac::ZERO).0,
        mac_known: u8::from(mac.is_some()),
        probe_gap_ns: p.probe_gap_ns,
        datagram_gap_ns: p.datagram_gap_ns,
        ..Peer::default()
    }
}

/// Writes the pairs of `new` that `old` does not hold as they are (adds and
/// changes); removes nothing (see [`prune`]).
pub(super) fn write(
    dp: &mut Dataplane,
    old: &Plan,
    new: &Plan,
    learned: &HashMap<IpAddr, Mac>,
) -> Result<()> {
    for (k, p) in new {
        if old.get(k) != Some(p) {
            dp.set_peer(k, &value(p, learned.get(&p.peer).copied()))
                .with_context(|| format!("admitting peer {} to the election port", p.peer))?;
        }
    }
    Ok(())
}

/// Removes the pairs of `old` that `new` does not have.
pub(super) fn prune(dp: &mut Dataplane, old: &Plan, new: &Plan) {
    for (k, p) in old {
        if !new.contains_key(k) {
            if let Err(e) = dp.remove_peer(k) {
                log::warn!("removing peer {} from the election port: {e}", p.peer);
            }
        }
    }
}

impl Agent {
    /// Moves the data plane from the pairs it holds to `new`: adds and changes first,
    /// removals last. On an error, what was written stays (see `restore_peers`).
    pub(super) fn program_peers(&mut self, new: Plan) -> Result<()> {
        write(&mut self.dp, &self.peers.written, &new, &self.peers.learned)?;
        prune(&mut self.dp, &self.peers.written, &new);
        self.peers
            .learned
            .retain(|a, _| new.values().any(|p| p.peer == *a));
        self.peers.written = new;
        Ok(())
    }

    /// Writes `new`'s adds and changes, keeping every pair held now: the first half
    /// of a reload's change (the second is [`Agent::program_peers`]).
    pub(super) fn admit_peers(&mut self, new: &Plan) -> Result<()> {
        write(&mut self.dp, &self.peers.written, new, &self.peers.learned)
    }

    /// After a failed reload that got as far as `admit_peers(attempted)`: the pairs
    /// as they were before it.
    pub(super) fn restore_peers(&mut self, attempted: &Plan) {
        let held = self.peers.written.clone();
        // Rewrite every pair held (the attempt may have changed it), then drop the
        // attempt's own.
        if let Err(e) = write(&mut self.dp, &Plan::new(), &held, &self.peers.learned) {
            log::error!("reload rollback: restoring the election port's peers: {e:#}");
        }
        prune(&mut self.dp, attempted, &held);
    }

    /// An authenticated advertisement from `peer` says its MAC is `mac`: the data
    /// plane checks it from now on (once per change, never per datagram).
    pub(super) fn learn_peer_mac(&mut self, peer: IpAddr, mac: Mac) {
        if self.peers.learned.get(&peer) == Some(&mac) || !mac.is_unicast() {
            return;
        }
        let pairs: Vec<(PeerKey, Pair)> = self
            .peers
            .written
            .iter()
            .filter(|(_, p)| p.peer == peer && p.on_link)
            .map(|(k, p)| (*k, p.clone()))
            .collect();
        if pairs.is_empty() {
            return;
        }
        for (k, p) in pairs {
            if let Err(e) = self.dp.set_peer(&k, &value(&p, Some(mac))) {
                log::warn!("peer {peer}: teaching the data plane its MAC {mac}: {e}");
                return;
            }
        }
        if let Some(old) = self.peers.learned.insert(peer, mac) {
            log::info!("peer {peer}: its advertisements now come from {mac} (was {old})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface() -> Interface {
        Interface {
            name: "eth0".into(),
            index: 2,
            mac: Mac([2, 0, 0, 0, 0, 1]),
            addrs: vec![
                ("10.0.0.11".parse().unwrap(), 24),
                ("2001:db8::11".parse().unwrap(), 64),
                ("fe80::1".parse().unwrap(), 64),
            ],
            kind: None,
            up: true,
        }
    }

    #[test]
    fn the_plan_has_a_pair_per_peer_with_the_budgets_of_its_groups() {
        let group = |name: &str, vip: &str, peers: &str| {
            format!(
                "\n[[group]]\nname = \"{name}\"\nvips = [\"{vip}\"]\npeers = [{peers}]\npriority = 100\n"
            )
        };
        let text = format!(
            "[node]\nname = \"a\"\ninterface = \"eth0\"\n{}{}{}",
            group("web", "10.0.0.50/24", "\"10.0.0.12\", \"10.0.1.12\""),
            group("api", "10.0.0.60/24", "\"10.0.0.12\", \"2001:db8::12\""),
            "\n[[group]]\nname = \"static\"\nvips = [\"10.0.0.70/24\"]\nrole = \"active\"\n"
        );
        let cfg = crate::config::parse(&text).unwrap();
        let pairs = plan(&cfg, &iface()).unwrap();
        assert_eq!(pairs.len(), 3, "{pairs:?}");
        let me4: IpAddr = "10.0.0.11".parse().unwrap();
        let shared = &pairs[&key("10.0.0.12".parse().unwrap(), me4)];
        // Two groups share it: each may send at its fastest.
        assert_eq!(shared.probe_gap_ns as u64, peers::PROBE_GAP_NS / 2);
        assert_eq!(shared.datagram_gap_ns as u64, peers::DATAGRAM_GAP_NS / 2);
        assert!(shared.on_link);
        let routed = &pairs[&key("10.0.1.12".parse().unwrap(), me4)];
        assert_eq!(routed.probe_gap_ns as u64, peers::PROBE_GAP_NS);
        assert!(!routed.on_link);
        let v6 = key(
            "2001:db8::12".parse().unwrap(),
            "2001:db8::11".parse().unwrap(),
        );
        assert!(pairs[&v6].on_link);
        // An interface without an IPv6 address cannot be reached by an IPv6 peer.
        let mut v4_only = iface();
        v4_only.addrs.retain(|(a, _)| a.is_ipv4());
        let e = plan(&cfg, &v4_only).unwrap_err().to_string();
        assert!(e.contains("no IPv6 address"), "{e}");
    }

    #[test]
    fn peers_on_our_subnets_are_on_link() {
        let i = iface();
        for (a, want) in [
            ("10.0.0.12", true),
            ("10.0.1.12", false),
            ("2001:db8::12", true),
            ("2001:db9::12", false),
            ("fe80::2", true),
        ] {
            assert_eq!(on_link(&i, a.parse().unwrap()), want, "{a}");
        }
    }

    #[test]
    fn a_pair_is_its_peer_and_our_address_of_that_family() {
        let k = key("10.0.0.12".parse().unwrap(), "10.0.0.11".parse().unwrap());
        assert_eq!(k.src[10..], [0xff, 0xff, 10, 0, 0, 12]);
        assert_eq!(k.dst[10..], [0xff, 0xff, 10, 0, 0, 11]);
        let p = Pair {
            peer: "10.0.1.12".parse().unwrap(),
            on_link: false,
            probe_gap_ns: 1,
            datagram_gap_ns: 1,
        };
        // Behind a router its frames carry the router's MAC: never checked.
        assert_eq!(value(&p, Some(Mac([2, 0, 0, 0, 0, 9]))).mac_known, 0);
        let p = Pair { on_link: true, ..p };
        let v = value(&p, Some(Mac([2, 0, 0, 0, 0, 9])));
        assert_eq!((v.mac_known, v.mac), (1, [2, 0, 0, 0, 0, 9]));
        assert_eq!(value(&p, None).mac_known, 0);
    }
}
