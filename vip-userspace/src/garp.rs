//! Announcing a takeover: gratuitous ARP (IPv4) and unsolicited neighbour
//! advertisements (IPv6), sent through a raw AF_PACKET socket on the VIP's interface.
//!
//! Every VIP's announcement must reach the wire: a client whose neighbour entry
//! still names the old node is not served until it ages out (a lost announcement
//! once left a VIP of a 10,000-VIP group unanswered for the rest of a run). So a
//! round is paced (it yields every [`PACE`] frames, and the socket's buffer holds a
//! whole round) and retried (a frame the queue refuses is sent again), and what it
//! had to retry or give up is counted (status and metrics:
//! `announcement_retries`, `announcements_dropped`).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use nix::sys::socket::{self, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike};

use crate::{
    addresses::{Progress, RoundDone},
    config::Garp,
    frames, host,
    mac::Mac,
};

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

/// A send-only raw socket bound to one interface. Never blocks: a frame the kernel
/// cannot queue right away comes back as `WouldBlock`, and the round sending it
/// ([`send_round`]) waits a little and tries it again.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
    /// Frames sent again after a full queue refused them.
    retried: AtomicU64,
    /// Frames given up: the queue stayed full through every retry.
    dropped: AtomicU64,
}

/// What the socket may hold queued: a 20,000-VIP round of gratuitous ARPs is about
/// 15 MB of socket buffers (an skb's truesize, not its 42 bytes), and the round
/// should be paced by the device, not cut by the socket's default (212 kB).
const SEND_BUFFER: usize = 16 << 20;

/// A frame the queue refused is tried again after this long (tokio's timer is
/// millisecond-grained), at most [`RETRIES`] times in a row before the rest of the
/// round is given up (a link that stays down): the next round sends them all again.
const RETRY_AFTER: Duration = Duration::from_millis(1);
const RETRIES: u32 = 100;

/// Frames a round sends between two yields to the runtime: a 10,000-VIP round does
/// not hold a worker the others need (adverts, health checks) for its 15 ms.
const PACE: usize = 256;

/// Frames the caller sends itself at a takeover, before the task takes over the
/// round: the first announcements leave at once, and the agent's loop is not held
/// for a big group's whole round.
pub const FIRST_FRAMES: usize = 64;

impl PacketSocket {
    pub fn open(ifindex: u32) -> io::Result<Self> {
        // Protocol 0 (None): the socket receives nothing, it only sends.
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        // The forced size needs CAP_NET_ADMIN (which the agent has); otherwise as
        // much as net.core.wmem_max allows.
        if socket::setsockopt(&fd, socket::sockopt::SndBufForce, &SEND_BUFFER).is_err() {
            let _ = socket::setsockopt(&fd, socket::sockopt::SndBuf, &SEND_BUFFER);
        }
        Ok(PacketSocket {
            fd,
            ifindex,
            retried: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Sends one complete Ethernet frame, without ever blocking. A full send queue
    /// (EAGAIN, or ENOBUFS from the device queue) returns an error of kind
    /// `WouldBlock`: the frame did not leave.
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
                Err(io::Error::new(io::ErrorKind::WouldBlock, "send queue full"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Announcements sent again after a full queue refused them.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Announcements given up after every retry.
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

/// The frames of a takeover's first round that wait for their VIP's address:
/// `frames[from + j]` leaves once `j + 1` addresses of the job are on lo.
#[derive(Debug, Clone)]
pub struct Ready {
    pub progress: Arc<Progress>,
    pub from: usize,
}

/// How long the first round waits for the address worker to make progress before
/// it sends the rest anyway (a stuck worker must not silence the takeover).
const ADDRESS_WAIT: Duration = Duration::from_secs(5);

impl Ready {
    /// How many of `len` frames may leave now.
    pub fn allowed(&self, len: usize) -> usize {
        (self.from + self.progress.done()).min(len)
    }
}

/// When a takeover's first announcement left (CLOCK_MONOTONIC ns; 0: not yet): set
/// by whichever sends it, the loop or the announcer task.
#[derive(Debug, Clone, Default)]
pub struct Stamp(Arc<AtomicU64>);

impl Stamp {
    pub fn reset(&self) {
        self.0.store(0, Ordering::Release);
    }

    fn mark(&self) {
        let _ =
            self.0
                .compare_exchange(0, host::monotonic_ns(), Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Acquire)).filter(|&t| t != 0)
    }
}

/// Sends `frames` from the caller's thread while the queue takes them, at most
/// `max`, while `gate` is open; returns how many left. What is left of the round is
/// [`send_round`]'s, from there.
pub fn send_now(
    socket: &PacketSocket,
    frames: &[Vec<u8>],
    max: usize,
    gate: &Gate,
    stamp: Option<&Stamp>,
) -> usize {
    let mut sent = 0;
    for f in frames.iter().take(max) {
        if !gate.is_open() {
            break;
        }
        match socket.send(f) {
            Ok(()) => {
                if let Some(s) = stamp {
                    s.mark();
                }
                sent += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // Not a full queue: sending it again would fail the same way.
            Err(e) => {
                log::warn!("sending announcement: {e}");
                sent += 1;
            }
        }
    }
    sent
}

/// Sends one round of announcements, paced and retried, while `gate` is open: a
/// frame the queue refuses is sent again a millisecond later (counted in
/// [`PacketSocket::retried`]), so every VIP's announcement reaches the wire; after
/// [`RETRIES`] refusals in a row the rest of the round is given up (counted in
/// [`PacketSocket::dropped`]) and left to the next round.
pub async fn send_round(socket: &PacketSocket, frames: &[Vec<u8>], label: &str, gate: &Gate) {
    send_round_stamped(socket, frames, label, gate, None).await;
}

/// How a round (or a part of one) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoundEnd {
    /// Every frame was handed to the queue (or failed for another reason, logged).
    Sent,
    /// The queue stayed full: the rest was given up (counted).
    GaveUp,
    /// The gate closed: nothing more may leave.
    Withheld,
}

async fn send_round_stamped(
    socket: &PacketSocket,
    frames: &[Vec<u8>],
    label: &str,
    gate: &Gate,
    stamp: Option<&Stamp>,
) -> RoundEnd {
    let mut since_yield = 0;
    for (i, f) in frames.iter().enumerate() {
        let mut refused = 0;
        loop {
            if !gate.is_open() {
                log::debug!("group {label}: announcement withheld: the lease no longer runs");
                return RoundEnd::Withheld;
            }
            match socket.send(f) {
                Ok(()) => {
                    if let Some(s) = stamp {
                        s.mark();
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    refused += 1;
                    if refused > RETRIES {
                        let lost = (frames.len() - i) as u64;
                        socket.dropped.fetch_add(lost, Ordering::Relaxed);
                        log::warn!(
                            "group {label}: the send queue stayed full for {RETRIES} ms: \
                             {lost} announcements of this round dropped"
                        );
                        return RoundEnd::GaveUp;
                    }
                    socket.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RETRY_AFTER).await;
                    since_yield = 0;
                }
                Err(e) => {
                    log::warn!("group {label}: sending announcement: {e}");
                    break;
                }
            }
        }
        since_yield += 1;
        if since_yield == PACE {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
    RoundEnd::Sent
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
    ready: Option<Ready>,
) {
    if garp.count == 0 {
        return;
    }
    let first = First {
        sent: 0,
        ready,
        stamp: None,
        done: None,
    };
    burst_rest(socket, frames(mac, &addrs), first, garp, label, gate).await;
}

/// Where a burst's first round stands when its task takes it over.
pub struct First {
    /// Frames the caller sent already ([`send_now`]).
    pub sent: usize,
    /// The frames that wait for their address, if any do.
    pub ready: Option<Ready>,
    /// Marked when the first frame leaves, if the caller sent none.
    pub stamp: Option<Stamp>,
    /// Set once the first round is over (sent, given up or withheld), or the burst
    /// stopped before (dropped with it).
    pub done: Option<RoundGuard>,
}

/// Sets its [`RoundDone`] when dropped: after a burst's first round, or when the
/// burst is aborted (or never starts), so that nothing waits for a round that will
/// not come.
pub struct RoundGuard(pub RoundDone);

impl Drop for RoundGuard {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// The rest of a burst whose first round the caller began itself (`garp.count` is
/// at least 1): the first round from frame `first.sent` on, each frame once its
/// address is in place, then the other rounds.
pub async fn burst_rest(
    socket: Arc<PacketSocket>,
    frames: Vec<Vec<u8>>,
    first: First,
    garp: Garp,
    label: String,
    gate: Gate,
) {
    let len = frames.len();
    let mut sent = first.sent;
    while sent < len {
        let upto = match &first.ready {
            None => len,
            Some(r) => {
                if r.allowed(len) <= sent {
                    r.progress.wait_for(sent + 1 - r.from, ADDRESS_WAIT).await;
                }
                match r.allowed(len) {
                    // No progress in ADDRESS_WAIT: the rest goes anyway.
                    a if a <= sent => len,
                    a => a,
                }
            }
        };
        let end = send_round_stamped(
            &socket,
            &frames[sent..upto],
            &label,
            &gate,
            first.stamp.as_ref(),
        )
        .await;
        match end {
            RoundEnd::Sent => sent = upto,
            // The rest of the first round is given up with the part that was
            // (the next round sends them all again).
            RoundEnd::GaveUp => {
                socket
                    .dropped
                    .fetch_add((len - upto) as u64, Ordering::Relaxed);
                break;
            }
            RoundEnd::Withheld => break,
        }
    }
    drop(first.done);
    for _ in 1..garp.count {
        tokio::time::sleep(garp.interval).await;
        send_round(&socket, &frames, &label, &gate).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_wait_for_their_addresses() {
        let r = Ready {
            progress: Arc::new(Progress::default()),
            from: 3,
        };
        // The three VIPs already on lo go at once; the others one by one.
        assert_eq!(r.allowed(10), 3);
        r.progress.advance(4);
        assert_eq!(r.allowed(10), 7);
        r.progress.advance(100);
        assert_eq!(r.allowed(10), 10);
    }

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
