//! Raw frames in and out of an interface (AF_PACKET), for the checks that need
//! byte-exact control: malformed ARP/NS, and counting every answer on the wire (with
//! the kernel's arrival time of each frame, for the wire recorder).

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::Netns;

/// A packet socket bound to one interface of one namespace; sees every frame the
/// interface receives (not the ones it sends).
pub struct Capture {
    fd: OwnedFd,
    ifindex: i32,
}

impl Capture {
    pub fn open(ns: &Netns, iface: &str) -> Result<Self> {
        let iface = iface.to_string();
        ns.run_in(move || Self::open_here(&iface))
    }

    fn open_here(iface: &str) -> Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(iface)? as i32;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto as i32,
            )
        };
        if fd < 0 {
            bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd, owned from here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: valid address and length.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            bail!(
                "bind packet socket to {iface}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Capture { fd, ifindex })
    }

    /// Sends one frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            bail!("sending a frame: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Drops what has been received so far.
    pub fn clear(&self) {
        while self.recv(Duration::ZERO).is_some() {}
    }

    /// Every received frame matching `keep` during `window`.
    pub fn collect(&self, window: Duration, keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            if let Some(f) = self.recv(left) {
                if keep(&f) {
                    out.push(f);
                }
            }
        }
    }

    /// Makes the kernel stamp each frame with its arrival time (SO_TIMESTAMPNS): taken
    /// when the interface received it, so frames of several sockets can be put in
    /// wire order whenever their reader gets to run.
    pub fn stamp_arrivals(&self) -> Result<()> {
        self.set_int(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS")
    }

    /// A receive queue of at least `bytes` (SO_RCVBUFFORCE, as root): a reader that is
    /// not scheduled for a while loses nothing.
    pub fn receive_buffer(&self, bytes: usize) -> Result<()> {
        let n = i32::try_from(bytes).unwrap_or(i32::MAX);
        self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, n, "SO_RCVBUFFORCE")
    }

    /// Keeps only the frames the classic BPF program `prog` accepts, in the kernel.
    pub fn filter(&self, prog: &[libc::sock_filter]) -> Result<()> {
        let fprog = libc::sock_fprog {
            len: u16::try_from(prog.len())?,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the program outlives the call (the kernel copies it).
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &fprog as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        if r < 0 {
            bail!("SO_ATTACH_FILTER: {}", std::io::Error::last_os_error());
        }
        // Frames queued before the filter was attached were not filtered.
        self.clear();
        Ok(())
    }

    /// Frames the kernel dropped because this socket's queue was full, since the last
    /// call (PACKET_STATISTICS).
    pub fn drops(&self) -> Result<u32> {
        // SAFETY: zeroed tpacket_stats is valid.
        let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as u32;
        // SAFETY: valid buffer and length.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut st as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if r < 0 {
            bail!("PACKET_STATISTICS: {}", std::io::Error::last_os_error());
        }
        Ok(st.tp_drops)
    }

    /// The socket, to wait on several captures at once with poll(2).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// One frame that is already waiting (not one we sent), with its arrival time in
    /// CLOCK_REALTIME nanoseconds if the kernel stamped it ([`Capture::stamp_arrivals`]).
    /// Never blocks.
    pub fn recv_stamped(&self) -> Option<(Option<u64>, Vec<u8>)> {
        let mut buf = vec![0u8; 65536];
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            // SAFETY: zeroed sockaddr_ll and msghdr are valid; pointers set below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            // u64 words keep the control buffer aligned for cmsghdr.
            let mut control = [0u64; 16];
            // SAFETY: as above.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = &mut sll as *mut _ as *mut libc::c_void;
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = std::mem::size_of_val(&control);
            // SAFETY: every pointer in msg is valid for its length.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
            if n < 0 {
                return None;
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let mut at = None;
            // SAFETY: the CMSG macros walk the control buffer recvmsg filled in.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS
                    {
                        let ts =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                        at = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            buf.truncate(n as usize);
            return Some((at, buf));
        }
    }

    fn set_int(&self, level: i32, name: i32, value: i32, what: &str) -> Result<()> {
        // SAFETY: a valid int and its length.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                &value as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as u32,
            )
        };
        if r < 0 {
            bail!("{what}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// One received frame (not one we sent), waiting at most `timeout`.
    fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if r <= 0 {
                return None;
            }
            let mut buf = vec![0u8; 65536];
            // SAFETY: zeroed sockaddr_ll is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: valid buffers.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                return None;
            }
            if sll.sll_pkttype != libc::PACKET_OUTGOING {
                buf.truncate(n as usize);
                return Some(buf);
            }
        }
    }
}
