//! An AF_PACKET traffic generator: `sendmmsg` bursts of prepared frames out of one
//! interface, bypassing the qdisc.
//!
//! The suites' and benchmarks' fast sender is the XDP live-frames generator
//! (BPF_PROG_TEST_RUN with `BPF_F_TEST_XDP_LIVE_FRAMES`, millions of frames a second).
//! Some kernels refuse that mode to root (EPERM, whatever the program: seen on this
//! project's machines with kernel 6.18 in December 2026, where plain test runs still
//! work), and only an AF_PACKET sender feeds an skb-mode receiver. It manages some 0.4-0.5 Mpps here, so a flood from it is smaller, and a
//! throughput figure measured with it is the sender's: callers say which generator
//! they used.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{bail, Result};

/// Frames sent per `sendmmsg`.
const BURST: usize = 64;

/// A packet socket on one interface of the namespace it was opened in, and the frames
/// it sends in turn.
pub struct PacketFlood {
    fd: OwnedFd,
    sll: libc::sockaddr_ll,
    frames: Vec<Vec<u8>>,
}

impl PacketFlood {
    /// Opens the socket on `iface` of the calling thread's network namespace (call it
    /// inside `Netns::run_in`; the socket stays in that namespace wherever it is used).
    pub fn open(iface: &str, frames: Vec<Vec<u8>>) -> Result<Self> {
        if frames.is_empty() || frames.iter().any(|f| f.len() < 14) {
            bail!("a flood needs Ethernet frames to send");
        }
        // SAFETY: plain socket(2); owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: a valid option and length. Without the bypass the qdisc queues
        // (and drops) what the device would take anyway; failing to set it is fine.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &one as *const _ as *const _,
                4,
            );
        }
        // SAFETY: a zeroed sockaddr_ll is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = nix::net::if_::if_nametoindex(iface)? as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frames[0][..6]);
        Ok(PacketFlood { fd, sll, frames })
    }

    /// Sends `count` frames (the prepared ones in turn); a full device queue is tried
    /// again at once. Returns the frames sent.
    pub fn send(&self, count: u64) -> Result<u64> {
        self.send_while(count, || true)
    }

    /// Sends for `secs` seconds, or until `stop` is set; returns the frames sent.
    pub fn send_for(&self, secs: f64, stop: &AtomicBool) -> Result<u64> {
        let t0 = Instant::now();
        self.send_while(u64::MAX, || {
            t0.elapsed().as_secs_f64() < secs && !stop.load(Ordering::Relaxed)
        })
    }

    fn send_while(&self, count: u64, mut more: impl FnMut() -> bool) -> Result<u64> {
        let mut sll = self.sll;
        let mut sent = 0u64;
        let mut next = 0usize;
        while sent < count && more() {
            let n = (count - sent).min(BURST as u64) as usize;
            let mut iov: Vec<libc::iovec> = (0..n)
                .map(|k| {
                    let f = &self.frames[(next + k) % self.frames.len()];
                    libc::iovec {
                        iov_base: f.as_ptr() as *mut _,
                        iov_len: f.len(),
                    }
                })
                .collect();
            // SAFETY: a zeroed mmsghdr is valid; its fields are set right below.
            let mut msgs: Vec<libc::mmsghdr> =
                (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
            for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
                m.msg_hdr.msg_name = &mut sll as *mut _ as *mut _;
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: every message points at live buffers for the call's duration.
            let r = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS)
                    || e.kind() == std::io::ErrorKind::WouldBlock
                {
                    continue;
                }
                bail!("sendmmsg: {e}");
            }
            sent += r as u64;
            next = (next + r as usize) % self.frames.len();
        }
        Ok(sent)
    }
}
