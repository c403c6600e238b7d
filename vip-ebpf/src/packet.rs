//! Bounds-checked access to the frame, and the Ethernet header.
//!
//! Every header is read through [`hdr`] and written through [`hdr_mut`]: the one
//! bounds check ([`ptr_at`]) and the one argument for why the reference they return
//! is sound. The types they hand out are [`Plain`]: network-types' `#[repr(C)]`
//! headers (`EthHdr`, `Ipv4Hdr`, `Ipv6Hdr`, `ArpHdr`, `TcpHdr`, `UdpHdr`,
//! `Icmpv4Hdr`), byte arrays, and the program's own layouts of several headers.
//! (Two reads go around them, each with its own argument: the parser's later reads
//! of the IP header `hdr` checked, `parse::checked`, and the lease request, which is
//! not a header, `lease::extend`.)
//!
//! Writes take the context mutably, reads share it: the borrow checker then keeps
//! a reference to a header from outliving a write into the frame, or a resize
//! ([`adjust_tail`], which moves the frame's end, and [`adjust_head`], its start:
//! only `tunnel` calls it).

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use network_types::{
    arp::ArpHdr,
    eth::EthHdr,
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

pub use vip_common::ether::{ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6};

pub type Mac = [u8; 6];

const _: () = assert!(EthHdr::LEN == ETH_HLEN);

#[derive(Clone, Copy)]
pub enum Error {
    /// The frame is shorter than the headers it announces.
    Truncated,
    /// We gave up on a frame we meant to act on (a helper failed).
    Aborted,
}

/// Types that may be read from and written into a frame as they are.
///
/// # Safety
///
/// An implementor is `#[repr(C)]` (or an array) of integers and byte arrays only, so
/// that every bit pattern is a valid value and there is no padding, and is aligned
/// to at most 2 bytes ([`hdr`] checks that at compile time).
pub unsafe trait Plain {}

// SAFETY: an integer: every bit pattern is valid, alignment 1.
unsafe impl Plain for u8 {}
// SAFETY: an array of `Plain` values is `Plain` (no padding between elements).
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}
// SAFETY: network-types' headers are `#[repr(C)]` byte arrays and integers (EthHdr's
// `ether_type` is a u16: alignment 2; the others have alignment 1).
unsafe impl Plain for EthHdr {}
// SAFETY: as above.
unsafe impl Plain for ArpHdr {}
// SAFETY: as above.
unsafe impl Plain for Ipv4Hdr {}
// SAFETY: as above.
unsafe impl Plain for Ipv6Hdr {}
// SAFETY: as above.
unsafe impl Plain for TcpHdr {}
// SAFETY: as above.
unsafe impl Plain for UdpHdr {}
// SAFETY: as above.
unsafe impl Plain for Icmpv4Hdr {}

/// The one bounds check: a pointer to a `T` at `offset`, if the frame holds it whole.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Error> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Error::Truncated);
    }
    Ok((start + offset) as *mut T)
}

/// The `T` at `offset` of the frame, if the frame holds it whole.
#[inline(always)]
pub fn hdr<T: Plain>(ctx: &XdpContext, offset: usize) -> Result<&T, Error> {
    let p = aligned::<T>(ctx, offset)?;
    // SAFETY: see `aligned`; the shared borrow of the context keeps every `hdr_mut`
    // (which borrows it mutably) from writing the frame while this reference lives.
    Ok(unsafe { &*p })
}

/// The `T` at `offset` of the frame, to rewrite in place.
#[inline(always)]
pub fn hdr_mut<T: Plain>(ctx: &mut XdpContext, offset: usize) -> Result<&mut T, Error> {
    let p = aligned::<T>(ctx, offset)?;
    // SAFETY: see `aligned`; the mutable borrow of the context is the only way to the
    // frame while this reference lives (the program has one context per run, and XDP
    // hands the frame to one program run at a time).
    Ok(unsafe { &mut *p })
}

/// `ptr_at`, for a `Plain` type at an offset aligned for it. What makes a reference
/// from the pointer sound: `ptr_at` checked that the frame holds the whole `T`; any
/// bytes are a valid `T` (`Plain`); and the frame's start is 2-byte aligned (the
/// kernel starts it at its headroom, XDP_PACKET_HEADROOM = 256, plus the driver's
/// NET_IP_ALIGN of 0 or 2, and this program moves it only by even deltas,
/// `tunnel`), so an offset that is
/// a multiple of the type's alignment (at most 2) is aligned. The offset check
/// folds away: it is constant for the one type aligned to 2 (`EthHdr`, at 0), and
/// always true for the others.
#[inline(always)]
fn aligned<T: Plain>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Error> {
    const { assert!(core::mem::align_of::<T>() <= 2) };
    if !offset.is_multiple_of(core::mem::align_of::<T>()) {
        return Err(Error::Truncated);
    }
    ptr_at(ctx, offset)
}

/// What every path needs from the Ethernet header.
pub struct Frame {
    pub dst: Mac,
    pub ethertype: u16,
    /// Total frame length in bytes.
    pub len: u64,
    /// The outer source address (network order as a native-endian u32) of a packet
    /// `tunnel::decap` took out of IPIP; 0 for every other frame.
    pub tunnel: u32,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Result<Self, Error> {
        let eth = hdr::<EthHdr>(ctx, 0)?;
        Ok(Frame {
            dst: eth.dst_addr,
            // The field holds the wire's bytes: big endian.
            ethertype: u16::from_be(eth.ether_type),
            len: (ctx.data_end() - ctx.data()) as u64,
            tunnel: 0,
        })
    }
}

/// The frame's Ethernet source.
#[inline(always)]
pub fn src_mac(ctx: &XdpContext) -> Result<Mac, Error> {
    Ok(hdr::<EthHdr>(ctx, 0)?.src_addr)
}

/// Rewrites the Ethernet addresses in place.
#[inline(always)]
pub fn set_macs(ctx: &mut XdpContext, dst: &Mac, src: &Mac) -> Result<(), Error> {
    let eth = hdr_mut::<EthHdr>(ctx, 0)?;
    // Not an assignment, which compiles to a memmove (a BPF-to-BPF call copying a
    // byte per round); a copy that may not overlap compiles to twelve moves.
    eth.dst_addr.copy_from_slice(dst);
    eth.src_addr.copy_from_slice(src);
    Ok(())
}

/// Rewrites the Ethernet destination in place.
#[inline(always)]
pub fn set_dst_mac(ctx: &mut XdpContext, dst: &Mac) -> Result<(), Error> {
    hdr_mut::<EthHdr>(ctx, 0)?.dst_addr.copy_from_slice(dst);
    Ok(())
}

/// Grows or shrinks the frame at its end by `delta` bytes (`bpf_xdp_adjust_tail`).
/// Through a mutable borrow: every reference into the frame is dead by then.
#[inline(always)]
pub fn adjust_tail(ctx: &mut XdpContext, delta: i32) -> Result<(), Error> {
    // SAFETY: the helper checks the new size itself; no reference into the frame
    // outlives the call (the context is borrowed mutably).
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(Error::Aborted);
    }
    Ok(())
}

/// Moves the frame's start by `delta` bytes (`bpf_xdp_adjust_head`): into the
/// headroom when negative. Through a mutable borrow, as [`adjust_tail`]. An even
/// delta keeps the frame's start 2-aligned (see `aligned`).
#[inline(always)]
pub fn adjust_head(ctx: &mut XdpContext, delta: i32) -> Result<(), Error> {
    // SAFETY: the helper checks the new start itself (within the headroom, at least
    // an Ethernet header left); no reference into the frame outlives the call.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(Error::Aborted);
    }
    Ok(())
}

#[inline(always)]
pub fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

pub const BROADCAST: Mac = [0xff; 6];
