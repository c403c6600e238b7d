//! The benchmarks' XDP programs (`tests/benches/perf`), a separate object so that
//! the agent never loads them or creates their maps.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use vip_common::{
    csum::csum_finish,
    xdp::{XDP_DROP, XDP_TX},
};
use vip_ebpf::packet::hdr_mut;

/// The frame the generator sends (60 bytes used).
#[map]
static BENCH_FRAME: Array<[u8; 64]> = Array::with_max_entries(1, 0);

/// Frames counted by the sink.
#[map]
static BENCH_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Flows the generator spreads its frames over (0 or 1: every frame is the template).
#[map]
static BENCH_FLOWS: Array<u32> = Array::with_max_entries(1, 0);

/// The generator's frame counter, per CPU (the flow of the next frame).
#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Sources the generator spreads its frames over (0 or 1: the template's): frame k
/// gets the template's IPv4 source address + k mod N (in its last 16 bits).
#[map]
static BENCH_SOURCES: Array<u32> = Array::with_max_entries(1, 0);

/// The UDP source port of an IPv4 frame without options: where flows differ.
const SPORT: usize = 34;
/// The last 16 bits of the IPv4 source address, and the header checksum.
const SRC_LOW: usize = 28;
const IP_CHECK: usize = 24;

/// Generator: run in live-frames mode (BPF_PROG_TEST_RUN), it transmits every frame
/// out of the interface it is told it arrived on. Live frames recycle their pages
/// without restoring them, and the path under test rewrites frames in place (an ARP
/// request becomes a reply), so each frame is rewritten from the template in
/// `BENCH_FRAME` first. With `BENCH_FLOWS` = N > 1, frame k gets the template's UDP
/// source port + k mod N (the template is IPv4/UDP without options and without a UDP
/// checksum, so the frame stays valid), for paths that keep per-flow state; with
/// `BENCH_SOURCES` = M > 1, also the template's source address + k mod M (the IPv4
/// header checksum patched, RFC 1624), for floods from many sources. Frames longer
/// than 60 bytes keep the rest of the bytes they were given. Never attached.
#[xdp]
pub fn vip_bench_tx(mut ctx: XdpContext) -> u32 {
    let (Some(t), Ok(f)) = (BENCH_FRAME.get(0), hdr_mut::<[u8; 60]>(&mut ctx, 0)) else {
        return XDP_TX;
    };
    f.copy_from_slice(&t[..60]);
    let n = BENCH_FLOWS.get(0).copied().unwrap_or(0);
    let m = BENCH_SOURCES.get(0).copied().unwrap_or(0);
    if n > 1 || m > 1 {
        if let Some(seq) = BENCH_SEQ.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, nobody else writes it concurrently.
            let k = unsafe {
                let k = *seq;
                *seq = k.wrapping_add(1);
                k
            };
            if n > 1 {
                let base = u16::from_be_bytes([t[SPORT], t[SPORT + 1]]);
                let sport = base.wrapping_add((k % n) as u16).to_be_bytes();
                f[SPORT] = sport[0];
                f[SPORT + 1] = sport[1];
            }
            if m > 1 {
                let old = u16::from_be_bytes([t[SRC_LOW], t[SRC_LOW + 1]]);
                let new = old.wrapping_add((k % m) as u16);
                let check = u16::from_be_bytes([t[IP_CHECK], t[IP_CHECK + 1]]);
                let sum = (!check) as u32 + (!old) as u32 + new as u32;
                f[SRC_LOW..SRC_LOW + 2].copy_from_slice(&new.to_be_bytes());
                f[IP_CHECK..IP_CHECK + 2].copy_from_slice(&csum_finish(sum).to_be_bytes());
            }
        }
    }
    XDP_TX
}

/// Sink: counts and drops what arrives (attached on the generator's side to count
/// the answers, and behind the device under test).
#[xdp]
pub fn vip_bench_sink(_ctx: XdpContext) -> u32 {
    if let Some(c) = BENCH_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, nobody else writes it concurrently.
        unsafe { *c += 1 };
    }
    XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
