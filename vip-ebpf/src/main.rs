//! The vip data plane: an XDP program that answers ARP and IPv6 neighbour
//! solicitations for the VIPs this node owns and steers VIP traffic (pass, redirect,
//! forward, or to a balanced group's member), reflects and records the echo, and, on
//! a gateway, translates elastic IPs. Everything else leaves exactly as it came:
//! XDP_PASS, untouched.
//!
//! The agent writes the maps; the program writes a few of them too, each in one
//! place (see `maps`: its counters, the owners it learns, the echo replies it
//! records, the peers' budgets, the director's connection tables; and the leases,
//! only through `vip_lease`). Each IP packet is parsed once (`parse`). Every path
//! funnels through `try_vip_xdp`, whose errors all become XDP_PASS: a frame we
//! cannot make sense of is the kernel's business, never dropped by us. The one
//! exception is a frame we took out of the tunnel (`tunnel`): its inner packet is
//! no frame that came to us, and is dropped when it makes no sense.
//!
//! Rooms: `arp`, `ipv4`, `ipv6` (neighbour solicitations) take a frame by its
//! EtherType; `steer` acts on a VIP's entry, with `handover` (a planned handover's
//! drain) and `director` (a balanced group's director) before it; `echo` and
//! `peers` guard the election's port; `tunnel` carries a balanced group's packets
//! between segments (IPIP, taken off before anything else looks); `eip` and `route6` (IPv6 VIPs routed without NAT) are the gateway's; `lease` is the
//! `vip_lease` program.
#![no_std]
#![no_main]
// One 8-byte load from a packet whatever its alignment (`maps::packet_u64`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod arp;
mod director;
mod echo;
mod eip;
mod handover;
mod ipv4;
mod ipv6;
mod lease;
mod maps;
mod parse;
mod peers;
mod route6;
mod steer;
mod tunnel;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use vip_common::{
    global,
    xdp::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

// vip-common's XDP codes are the kernel's (aya-ebpf's bindings of its UAPI).
const _: () = assert!(
    XDP_ABORTED == xdp_action::XDP_ABORTED
        && XDP_DROP == xdp_action::XDP_DROP
        && XDP_PASS == xdp_action::XDP_PASS
        && XDP_TX == xdp_action::XDP_TX
        && XDP_REDIRECT == xdp_action::XDP_REDIRECT
);

use vip_ebpf::packet::{self, Error, Frame};

/// Inlined into the entry point the macro generates: a BPF-to-BPF call per packet
/// otherwise.
#[xdp]
#[inline(always)]
pub fn vip_xdp(mut ctx: XdpContext) -> u32 {
    match try_vip_xdp(&mut ctx) {
        Ok(action) => action,
        Err(Error::Truncated) => {
            maps::count_global(global::PARSE_ERRORS);
            XDP_PASS
        }
        Err(Error::Aborted) => {
            maps::count_global(global::ABORTS);
            XDP_PASS
        }
    }
}

#[inline(always)]
fn try_vip_xdp(ctx: &mut XdpContext) -> Result<u32, Error> {
    let mut frame = Frame::new(ctx)?;
    let settings = maps::settings();
    // On a gateway the same program also runs on the external interface, where the
    // VIP rules do not apply.
    let vips = settings.vip_ifindex == 0 || settings.vip_ifindex == ctx.ingress_ifindex() as u32;
    match frame.ethertype {
        packet::ETH_P_IP => {
            // Parsed before either rule looks: an interface where neither applies
            // does not exist (the agent sets VIP_IFINDEX only with elastic IPs), and
            // its frames would pass all the same.
            let Some(mut pkt) = parse::ipv4(ctx)? else {
                return Ok(XDP_PASS);
            };
            // A balanced group's packet from a node on another segment: its inner
            // packet goes on from here, as if it had come as it is (`steer` checks
            // that it may, `frame.tunnel`).
            if vips && tunnel::for_us(ctx, &mut pkt) {
                frame = match tunnel::decap(ctx, pkt) {
                    Ok(f) => f,
                    // The helper refused: the frame is as it came.
                    Err(Error::Aborted) => return Err(Error::Aborted),
                    Err(Error::Truncated) => return Ok(tunnel::refused()),
                };
                // From here the frame is the tunnel's inner packet: what cannot be
                // made sense of is dropped, never passed (nothing else comes out of
                // the tunnel).
                pkt = match parse::ipv4(ctx) {
                    Ok(Some(p)) => p,
                    _ => return Ok(tunnel::refused()),
                };
            }
            if settings.eip_enabled != 0 && frame.tunnel == 0 {
                if let Some(act) = eip::ipv4(ctx, &frame, &mut pkt)? {
                    return Ok(act);
                }
            }
            let act = if vips {
                ipv4::handle(ctx, &frame, &mut pkt)
            } else {
                Ok(XDP_PASS)
            };
            if tunnel::decapsulated(&frame) {
                return Ok(act.unwrap_or_else(|_| tunnel::refused()));
            }
            act
        }
        packet::ETH_P_ARP => {
            if settings.eip_enabled != 0 {
                if let Some(act) = eip::arp(ctx, &frame)? {
                    return Ok(act);
                }
            }
            if vips {
                arp::handle(ctx, &frame)
            } else {
                Ok(XDP_PASS)
            }
        }
        packet::ETH_P_IPV6 => {
            // As for IPv4: one parse for the gateway's route and the VIP rules.
            let Some(mut pkt) = parse::ipv6(ctx)? else {
                return Ok(XDP_PASS);
            };
            if settings.eip_enabled != 0 {
                if let Some(act) = route6::handle(ctx, &frame, &mut pkt)? {
                    return Ok(act);
                }
            }
            if vips {
                ipv6::handle(ctx, &frame, &mut pkt)
            } else {
                Ok(XDP_PASS)
            }
        }
        packet::ETH_P_8021Q | packet::ETH_P_8021AD => {
            // VIPs are not VLAN-aware: tagged frames are the kernel's, untouched.
            maps::count_global(global::VLAN_PASSED);
            Ok(XDP_PASS)
        }
        _ => Ok(XDP_PASS),
    }
}

/// The benchmarks' floor: the cheapest program there is. Also what `vip xdp-pass`
/// attaches to give a veth NAPI. (The benchmarks' generator and sink are another
/// object, src/bench.rs.)
#[xdp]
pub fn vip_xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Extends a group's lease only while it is still valid (`lease`). Never attached:
/// the agent runs it with BPF_PROG_TEST_RUN.
#[xdp]
pub fn vip_lease(mut ctx: XdpContext) -> u32 {
    lease::extend(&mut ctx).unwrap_or(vip_common::lease::REFUSED)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
