//! The lease's one writer that can refuse: `vip_lease`, run by the agent with
//! BPF_PROG_TEST_RUN to extend a group's lease (see `vip_common::lease`). The check of
//! the kernel's clock against the deadline and the write of the new deadline happen in
//! one program run, which no signal interrupts and no scheduler stalls for longer than
//! it stalls the data plane itself: a lease that ran out, even by a nanosecond, stays
//! out, so a node that was stopped past its lease cannot start answering again on
//! its own. Only a new grant (the election deciding to take the VIPs) revives it.

use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, programs::XdpContext};
use vip_common::lease::{Request, CHANGED, EXPIRED, EXTENDED, MAGIC, REFUSED};

use crate::{
    maps::{self, LEASES},
    packet::{ptr_at, Error},
};

/// The loopback device: BPF_PROG_TEST_RUN without a context runs an XDP program on
/// it. A real frame on a real interface is never a request.
const LOOPBACK_IFINDEX: u32 = 1;

#[inline(always)]
pub fn extend(ctx: &mut XdpContext) -> Result<u32, Error> {
    if ctx.ingress_ifindex() as u32 != LOOPBACK_IFINDEX {
        return Ok(REFUSED);
    }
    // Not a `packet::hdr_mut`: a Request holds u64s (alignment 8), not a header.
    let req: *mut Request = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the buffer holds a whole Request, which any bytes
    // are; the test run's buffer is ours alone (the context is borrowed mutably) and
    // 8-aligned (the kernel copies it into a fresh allocation, XDP_PACKET_HEADROOM
    // bytes in).
    let req = unsafe { &mut *req };
    if req.magic != MAGIC || req.key != maps::lease_key() {
        return Ok(REFUSED);
    }
    let Some(cur) = LEASES.get_ptr_mut(req.group) else {
        return Ok(REFUSED);
    };
    // SAFETY: a valid array slot; an aligned 8-byte load and store, never torn.
    let found = unsafe { core::ptr::read_volatile(cur) };
    // SAFETY: a helper without side effects.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    req.found = found;
    req.now = now;
    if found != req.expect {
        return Ok(CHANGED);
    }
    if now >= found {
        return Ok(EXPIRED);
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(cur, req.deadline) };
    Ok(EXTENDED)
}
