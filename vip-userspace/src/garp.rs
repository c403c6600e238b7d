//! Announcing a takeover: gratuitous ARP (IPv4) and unsolicited neighbour
//! advertisements (IPv6), sent through a raw AF_PACKET socket on the VIP's interface.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use nix::sys::socket::{self, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike};

use crate::{config::Garp, frames, host, mac::Mac};

/// Whether a group's announcements may leave now: an elected group announces only
/// while its serving lease runs, so a burst (or refresh) still in flight when the
/// agent was stopped past its lease stays silent when it wakes up, whatever task runs
/// first. Shared by the loop (which sets it with every lease write) and the tasks.
#[derive(Debug, Clone)]
pub struct Gate(Arc<AtomicU64>);

impl Gate {
    /// Open for ever: a group without a lease (static, keepalived).
    pub fn open() -> Self {
        Gate(Arc::new(AtomicU64::new(u64::MAX)))
    }

    /// Closed until a lease opens it: an elected group.
    pub fn closed() -> Self {
        Gate(Arc::new(AtomicU64::new(0)))
    }

    /// Open until `deadline` (CLOCK_BOOTTIME ns); 0 closes it.
    pub fn set(&self, deadline: u64) {
        self.0.store(deadline, Ordering::Release);
    }

    pub fn is_open(&self) -> bool {
        host::boottime_ns() < self.0.load(Ordering::Acquire)
    }
}

/// A send-only raw socket bound to one interface. Non-blocking: an announcement the
/// kernel cannot queue right away is dropped (and counted), never waited for.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
    dropped: AtomicU64,
}

impl PacketSocket {
    pub fn open(ifindex: u32) -> io::Result<Self> {
        // Protocol 0 (None): the socket receives nothing, it only sends.
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        Ok(PacketSocket {
            fd,
            ifindex,
            dropped: AtomicU64::new(0),
        })
    }

    /// Sends one complete Ethernet frame, without ever blocking. A full send queue
    /// (EAGAIN, or ENOBUFS from the device queue) drops the frame: the error is
    /// returned with kind `WouldBlock` and [`PacketSocket::dropped`] counts it.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < 14 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame shorter than an Ethernet header",
            ));
        }
        let addr = link_addr(self.ifindex, frame);
        match socket::sendto(self.fd.as_raw_fd(), frame, &addr, MsgFlags::MSG_DONTWAIT) {
            Ok(_) => Ok(()),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::ENOBUFS) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "send queue full: announcement dropped",
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// How many announcements were dropped because the send queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The destination of `frame` on `ifindex`: its EtherType and destination MAC.
fn link_addr(ifindex: u32, frame: &[u8]) -> LinkAddr {
    let mut sll_addr = [0u8; 8];
    sll_addr[..6].copy_from_slice(&frame[..6]);
    let sll = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: u16::from_be_bytes([frame[12], frame[13]]).to_be(),
        sll_ifindex: ifindex as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr,
    };
    // SAFETY: nix has no safe constructor for a LinkAddr; `sll` is a fully initialized
    // sockaddr_ll and the length passed is exactly its size, which from_raw checks.
    unsafe {
        LinkAddr::from_raw(
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            Some(std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t),
        )
    }
    .expect("a sockaddr_ll of the right family and size")
}

/// The announcement frame for one VIP.
pub fn announcement(mac: Mac, addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => frames::gratuitous_arp(mac, a),
        IpAddr::V6(a) => frames::unsolicited_na(mac, a),
    }
}

/// The announcement frames for `addrs`.
pub fn frames(mac: Mac, addrs: &[IpAddr]) -> Vec<Vec<u8>> {
    addrs.iter().map(|a| announcement(mac, *a)).collect()
}

/// Sends one round of announcements now, while `gate` is open.
pub fn send_round(socket: &PacketSocket, frames: &[Vec<u8>], label: &str, gate: &Gate) {
    for f in frames {
        if !gate.is_open() {
            log::debug!("group {label}: announcement withheld: the lease no longer runs");
            return;
        }
        match socket.send(f) {
            Ok(()) => {}
            // Dropped and counted; the next round (or the peers' own traffic) will
            // do. Never retried here: a burst must not stall the caller.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => log::debug!(
                "group {label}: announcement dropped, send queue full ({} so far)",
                socket.dropped()
            ),
            Err(e) => log::warn!("group {label}: sending announcement: {e}"),
        }
    }
}

/// Sends `garp.count` rounds of announcements, the first at once, then one every
/// `garp.interval`. Runs until done or aborted (a demotion aborts it).
pub async fn burst(
    socket: Arc<PacketSocket>,
    mac: Mac,
    addrs: Vec<IpAddr>,
    garp: Garp,
    label: String,
    gate: Gate,
) {
    let frames = frames(mac, &addrs);
    send_round(&socket, &frames, &label, &gate);
    burst_rest(socket, frames, garp, label, gate).await;
}

/// The rounds after the first (which the caller sent itself, at once).
pub async fn burst_rest(
    socket: Arc<PacketSocket>,
    frames: Vec<Vec<u8>>,
    garp: Garp,
    label: String,
    gate: Gate,
) {
    for _ in 1..garp.count {
        tokio::time::sleep(garp.interval).await;
        send_round(&socket, &frames, &label, &gate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_address_of_a_frame() {
        let mac = Mac::try_from(&[2, 0, 0, 0, 0, 1][..]).unwrap();
        let f = announcement(mac, "10.0.0.50".parse().unwrap());
        let a = link_addr(7, &f);
        assert_eq!(a.ifindex(), 7);
        assert_eq!(a.protocol(), 0x0806u16.to_be()); // ETH_P_ARP, network order
        assert_eq!(a.addr(), Some([0xff; 6]));
        assert_eq!(a.halen(), 6);
    }
}
