//! Who may reach the election's UDP port (`vip_common::peers`). A datagram to the
//! port whose (source, destination) is not a (peer, this node) pair of the config is
//! dropped before any socket sees it, echo probes included, so the advertisement
//! socket and the reflector serve peers only; so is one from a peer's address but
//! another MAC than the one the agent learned for it (a spoofed source), except one
//! per `STRANGER_GAP_NS`, which lets a peer whose MAC really changed re-teach the
//! agent with its next authenticated advertisement, and echo probes within a budget
//! of their own (a standby that changed its MAC sends no advertisements to re-teach
//! it). What is left is rate-limited per pair, echo probes and other datagrams on
//! budgets of their own, so a flood from one source cannot crowd out the others.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use vip_common::{
    global,
    peers::{self, v4_mapped, STRANGER_GAP_NS},
    PeerKey,
};

use crate::{
    maps::{self, PEERS},
    packet::{src_mac, Error},
    parse::{Addrs, Packet},
};

/// True when the datagram to the election's port may go on (to the reflector if
/// `probe`, else to the agent's socket); false when it is to be dropped (counted).
#[inline(always)]
pub fn admit(ctx: &XdpContext, pkt: &Packet, probe: bool) -> Result<bool, Error> {
    let key = match pkt.addrs(ctx) {
        Addrs::V4 { src, dst } => PeerKey {
            src: v4_mapped(*src),
            dst: v4_mapped(*dst),
        },
        Addrs::V6 { src, dst } => {
            let mut k = PeerKey::default();
            k.src.copy_from_slice(src);
            k.dst.copy_from_slice(dst);
            k
        }
    };
    let Some(peer) = PEERS.get_ptr_mut(key) else {
        maps::count_global(global::ELECTION_NOT_PEER);
        return Ok(false);
    };
    // SAFETY: a valid value of the map; the program's writes are budgets only.
    let peer = unsafe { &mut *peer };
    let src = src_mac(ctx)?;
    // The coarse clock (a tick, a few ms): a budget allows BURST datagrams at one
    // reading and one per gap as it advances, whatever the tick; the precise one
    // would cost every datagram of a peer a third more.
    // SAFETY: a helper without side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let stranger = peer.mac_known != 0 && src != peer.mac;
    if stranger && !probe {
        if now.wrapping_sub(peer.stranger_ns) < STRANGER_GAP_NS {
            maps::count_global(global::ELECTION_WRONG_MAC);
            return Ok(false);
        }
        peer.stranger_ns = now;
    }
    let (tat, gap) = match (probe, stranger) {
        (true, false) => (&mut peer.probe_tat, peer.probe_gap_ns),
        // A budget of their own: a spoofed flood never spends the peer's.
        (true, true) => (&mut peer.stranger_probe_tat, peer.probe_gap_ns),
        (false, _) => (&mut peer.datagram_tat, peer.datagram_gap_ns),
    };
    match peers::admit(*tat, gap as u64, now) {
        Some(next) => {
            *tat = next;
            Ok(true)
        }
        None => {
            maps::count_global(if stranger {
                global::ELECTION_WRONG_MAC
            } else {
                global::ELECTION_OVER_BUDGET
            });
            Ok(false)
        }
    }
}
