//! The action for an IP packet addressed to a VIP, from its entry: the data path
//! shared by IPv4 and IPv6 once the VIP is found.

use aya_ebpf::programs::XdpContext;
use vip_common::{
    action, flags, global,
    xdp::{XDP_DROP, XDP_PASS, XDP_TX},
    VipEntry,
};

use crate::{
    director, handover,
    maps::{self, REDIRECT_DEVS},
    packet::{self, Error, Frame},
    parse::{Packet, UDP},
    tunnel,
};

/// What becomes of one IP packet to a VIP (counted in the VIP's stats).
#[inline(always)]
pub fn vip_action(
    ctx: &mut XdpContext,
    frame: &Frame,
    entry: &VipEntry,
    pkt: &mut Packet,
) -> Result<u32, Error> {
    // Out of the tunnel (`tunnel::decap`): only a balanced VIP's packet from a node of
    // its group, in a frame to us (a flooded one is not ours to take apart either).
    if tunnel::decapsulated(frame)
        && (frame.dst != entry.own_mac || !director::tunneled_from_node(frame, entry))
    {
        return Ok(tunnel::refused());
    }
    // A frame flooded to us for another node's MAC is not ours to act on: steering it
    // would duplicate it. With a virtual MAC (`own_mac`) a frame to the node's own
    // (`src_mac`) is ours too, and one to the virtual MAC is readdressed to the node's,
    // the only one the local stack takes (`flags::VIRTUAL_MAC`).
    if frame.dst != entry.own_mac {
        if entry.flags & flags::VIRTUAL_MAC == 0 || frame.dst != entry.src_mac {
            maps::count_global(global::NOT_OUR_MAC);
            return Ok(XDP_PASS);
        }
    } else if entry.flags & flags::VIRTUAL_MAC != 0 {
        packet::set_dst_mac(ctx, &entry.src_mac)?;
        let act = serve(ctx, frame, entry, pkt)?;
        return Ok(if act == XDP_PASS {
            maps::pass_readdressed()
        } else {
            act
        });
    }
    serve(ctx, frame, entry, pkt)
}

/// The action for a packet to one of our MACs (see [`vip_action`]).
#[inline(always)]
fn serve(
    ctx: &mut XdpContext,
    frame: &Frame,
    entry: &VipEntry,
    pkt: &mut Packet,
) -> Result<u32, Error> {
    // SAFETY: the packet's one reference to the VIP's stats.
    let Some(stats) = (unsafe { maps::stats(entry) }) else {
        return Ok(XDP_PASS);
    };
    stats.rx_packets += 1;
    stats.rx_bytes += frame.len;
    if maps::lease_expired(entry) {
        stats.lease_expired += 1;
        // A resident group's address is on `lo` here whatever our role: what we do
        // not serve must not reach the kernel, which would accept it. Its entries are
        // always leased, and an inert one's lease is revoked: this is the one place.
        return Ok(if entry.flags & flags::RESIDENT != 0 {
            XDP_DROP
        } else {
            XDP_PASS
        });
    }
    // A planned handover's drain: established TCP connections stay on the node that
    // has their sockets (see `handover`).
    if entry.flags & (flags::GRACE | flags::KEEP) != 0 {
        if let Some(act) = handover::drain_action(ctx, entry, pkt, stats)? {
            return Ok(act);
        }
    }
    if maps::balance_enabled() && entry.flags & flags::BALANCED != 0 {
        // Anycast UDP served where the router sent it (`flags::UDP_AS_ROUTED`).
        if entry.flags & flags::UDP_AS_ROUTED != 0 && pkt.layout(ctx).proto == UDP {
            stats.passed += 1;
            return Ok(XDP_PASS);
        }
        if entry.action == action::LOCAL {
            if let Some(act) = director::member_action(ctx, frame, entry, pkt)? {
                stats.forwarded += 1;
                return Ok(act);
            }
        } else if entry.action == action::FORWARD {
            if director::from_node(ctx, frame, entry)? || director::holds_connection(ctx, pkt)? {
                // A member: what a node sends us is ours, and so is a TCP connection
                // we hold (anycast: the router's hash brought it here); the rest goes
                // to the director.
                stats.passed += 1;
                return Ok(XDP_PASS);
            }
            // A director on another segment is reached through the tunnel.
            if let Some(act) = director::to_routed_director(ctx, entry, pkt)? {
                if act == XDP_PASS {
                    stats.passed += 1;
                } else {
                    stats.forwarded += 1;
                }
                return Ok(act);
            }
        }
    }
    match entry.action {
        action::REDIRECT => {
            // On a missing devmap entry the helper returns XDP_PASS (the flags' low bits).
            match REDIRECT_DEVS.redirect(entry.ifindex, XDP_PASS as u64) {
                Ok(act) => {
                    packet::set_macs(ctx, &entry.dst_mac, &entry.src_mac)?;
                    stats.redirected += 1;
                    Ok(act)
                }
                Err(_) => {
                    stats.passed += 1;
                    Err(Error::Aborted)
                }
            }
        }
        action::FORWARD => {
            packet::set_macs(ctx, &entry.dst_mac, &entry.src_mac)?;
            stats.forwarded += 1;
            Ok(XDP_TX)
        }
        _ => {
            stats.passed += 1;
            Ok(XDP_PASS)
        }
    }
}
