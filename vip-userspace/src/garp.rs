//! Announcing a takeover: gratuitous ARP (IPv4) and unsolicited neighbour
//! advertisements (IPv6), sent through a raw AF_PACKET socket on the VIP's interface.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
};

use crate::{config::Garp, frames, mac::Mac};

/// A send-only raw socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl PacketSocket {
    pub fn open(ifindex: u32) -> io::Result<Self> {
        // Protocol 0: the socket receives nothing, it only sends.
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PacketSocket { fd, ifindex })
    }

    /// Sends one complete Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < 14 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame shorter than an Ethernet header",
            ));
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_protocol = u16::from_be_bytes([frame[12], frame[13]]).to_be();
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: buffer and address are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The announcement frame for one VIP.
pub fn announcement(mac: Mac, addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => frames::gratuitous_arp(mac, a),
        IpAddr::V6(a) => frames::unsolicited_na(mac, a),
    }
}

/// Sends `garp.count` rounds of announcements for `addrs`, the first at once, then one
/// every `garp.interval`. Runs until done or aborted (a demotion aborts it).
pub async fn burst(
    socket: Arc<PacketSocket>,
    mac: Mac,
    addrs: Vec<IpAddr>,
    garp: Garp,
    label: String,
) {
    let frames: Vec<_> = addrs.iter().map(|a| announcement(mac, *a)).collect();
    for round in 0..garp.count {
        if round > 0 {
            tokio::time::sleep(garp.interval).await;
        }
        for f in &frames {
            if let Err(e) = socket.send(f) {
                log::warn!("group {label}: sending announcement: {e}");
            }
        }
    }
}
