//! IPv4 packets on the VIPs' interface: to a VIP, steered by its entry; any other
//! UDP datagram may be the election's (see `echo`).

use aya_ebpf::programs::XdpContext;
use vip_common::xdp::XDP_PASS;

use crate::{
    echo, maps,
    packet::{Error, Frame},
    parse::{Packet, UDP},
    steer, tunnel,
};

#[inline(always)]
pub fn handle(ctx: &mut XdpContext, frame: &Frame, pkt: &mut Packet) -> Result<u32, Error> {
    let Some(entry) = maps::vip_v4(pkt.dst_v4) else {
        // Out of the tunnel, only a balanced VIP's packet goes on.
        if tunnel::decapsulated(frame) {
            return Ok(tunnel::refused());
        }
        // Options and first fragments too, so that neither is a way past the
        // election port's checks; a later fragment has no UDP header to judge (and
        // without its first one the kernel drops it).
        let l = pkt.layout(ctx);
        if l.proto == UDP && l.first_fragment() {
            return echo::handle(ctx, frame, pkt);
        }
        return Ok(XDP_PASS);
    };
    steer::vip_action(ctx, frame, entry, pkt)
}
