//! Bounds-checked access to the frame and the Ethernet header.
//!
//! Headers are read through network-types' `#[repr(C)]` structs (`EthHdr`,
//! `Ipv4Hdr`, `Ipv6Hdr`, `ArpHdr`, `TcpHdr`, `UdpHdr`, `Icmpv4Hdr`), every one of
//! them behind the one bounds check, [`ptr_at`].

use aya_ebpf::programs::XdpContext;
use network_types::eth::EthHdr;

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

/// What every path needs from the Ethernet header.
pub struct Frame {
    pub dst: Mac,
    pub ethertype: u16,
    /// Total frame length in bytes.
    pub len: u64,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Result<Self, Error> {
        let eth: *const EthHdr = ptr_at(ctx, 0)?;
        // SAFETY: ptr_at checked that the header is inside the frame.
        let eth = unsafe { &*eth };
        Ok(Frame {
            dst: eth.dst_addr,
            // The field holds the wire's bytes: big endian.
            ethertype: u16::from_be(eth.ether_type),
            len: (ctx.data_end() - ctx.data()) as u64,
        })
    }
}

/// Rewrites the Ethernet addresses in place (the frame is at least ETH_HLEN long).
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, dst: &Mac, src: &Mac) -> Result<(), Error> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &mut *eth };
    eth.dst_addr = *dst;
    eth.src_addr = *src;
    Ok(())
}

#[inline(always)]
pub fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

pub const BROADCAST: Mac = [0xff; 6];
