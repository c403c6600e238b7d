//! IPv4 packets addressed to a VIP.

use aya_ebpf::programs::XdpContext;
use network_types::ip::Ipv4Hdr;
use vip_common::xdp::XDP_PASS;

use crate::{
    echo::{self, Family},
    maps,
    packet::{ptr_at, Error, Frame, ETH_HLEN},
};

#[inline(always)]
pub fn handle(ctx: &XdpContext, frame: &Frame) -> Result<u32, Error> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 || ip.vihl & 0x0f < 5 {
        return Ok(XDP_PASS);
    }
    let dst = u32::from_ne_bytes(ip.dst_addr);
    let Some(entry) = maps::vip_v4(dst) else {
        // Options and first fragments too, so that neither is a way past the
        // election port's checks; a later fragment has no UDP header to judge (and
        // without its first one the kernel drops it).
        let frags = u16::from_be_bytes(ip.frags);
        if ip.proto == echo::UDP && frags & 0x1fff == 0 {
            let ihl = (ip.vihl & 0x0f) as usize * 4;
            let plain = ihl == Ipv4Hdr::LEN && frags & 0x2000 == 0;
            return echo::handle(ctx, frame, Family::V4, ETH_HLEN + ihl, plain);
        }
        return Ok(XDP_PASS);
    };
    maps::steer(ctx, frame, entry, Family::V4)
}
