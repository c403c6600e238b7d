//! Who may reach the election's port (`PEERS`, see `vip_common::peers`): the pairs
//! of addresses the program admits, each with its budgets and, once learned, its MAC.
//! Not pinned: the agent writes it from its config before it attaches the program,
//! so a new program never starts with it empty, and its value's layout may change
//! between versions without an old pin in the way.

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use vip_common::{maps, Peer, PeerKey};

use super::{absent_ok, map_err, Dataplane, Result};

/// The admission part of the data plane.
pub(super) struct Peers {
    peers: HashMap<MapData, PeerKey, Peer>,
}

impl Peers {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Peers {
            peers: super::take(ebpf, maps::PEERS)?,
        })
    }
}

impl Dataplane {
    /// Admits datagrams from `key.src` to `key.dst` to the election's port, on the
    /// terms of `peer` (replaced whole: its budgets start afresh).
    pub fn set_peer(&mut self, key: &PeerKey, peer: &Peer) -> Result<()> {
        self.peers
            .peers
            .insert(key, peer, 0)
            .map_err(map_err(maps::PEERS))
    }

    /// No longer admits that pair; absent already is not an error.
    pub fn remove_peer(&mut self, key: &PeerKey) -> Result<()> {
        absent_ok(self.peers.peers.remove(key), maps::PEERS)
    }

    /// Every pair admitted to the election's port, with its entry.
    pub fn peers(&self) -> Vec<(PeerKey, Peer)> {
        self.peers.peers.iter().filter_map(|r| r.ok()).collect()
    }
}
