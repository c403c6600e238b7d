//! IPv4 packets addressed to a VIP.

use aya_ebpf::programs::XdpContext;
use vip_common::xdp::XDP_PASS;

use crate::{
    maps::{self, VIPS_V4},
    packet::{ptr_at, Error, Frame, ETH_HLEN},
};

const IPV4_MIN_HLEN: usize = 20;
const DST_OFFSET: usize = 16;

#[inline(always)]
pub fn handle(ctx: &XdpContext, frame: &Frame) -> Result<u32, Error> {
    let ip: *const [u8; IPV4_MIN_HLEN] = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return Ok(XDP_PASS);
    }
    let dst = u32::from_ne_bytes([
        ip[DST_OFFSET],
        ip[DST_OFFSET + 1],
        ip[DST_OFFSET + 2],
        ip[DST_OFFSET + 3],
    ]);
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    let Some(entry) = (unsafe { VIPS_V4.get(dst) }) else {
        return Ok(XDP_PASS);
    };
    maps::steer(ctx, frame, entry)
}
