//! A small rtnetlink client: exactly the requests the agent needs (addresses, link
//! facts), in-process, so a takeover never waits for a fork/exec of `ip`.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::mac::Mac;

const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_CACHEINFO: u16 = 6;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const IFA_F_NOPREFIXROUTE: u32 = 0x200;
const INFINITY_LIFE_TIME: u32 = u32::MAX;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_TARGET_NETNSID: u16 = 46;

const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

const NLMSG_HDRLEN: usize = 16;

static SEQ: AtomicU32 = AtomicU32::new(1);

/// What the agent needs to know of a link.
#[derive(Debug, Clone, Default)]
pub struct LinkInfo {
    pub name: String,
    pub mac: Option<Mac>,
    /// Driver kind from IFLA_LINKINFO ("veth", "bridge", ...); None for physical NICs.
    pub kind: Option<String>,
    /// IFLA_LINK: for a veth, the peer's ifindex (in `link_netnsid`'s namespace).
    pub link: Option<u32>,
    pub link_netnsid: Option<i32>,
    /// RFC 2863 operational state (6 = up).
    pub operstate: Option<u8>,
}

/// One netlink request/response exchange at a time, on its own socket.
pub struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        let fd = route_socket()?;
        // Ask for extended acks so errors carry the kernel's reason when it has one.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_EXT_ACK,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        Ok(Netlink { fd })
    }

    /// Adds `addr/prefix` to the interface; idempotent (replaces an identical address).
    /// IPv6 addresses are added without duplicate address detection so a takeover is
    /// not delayed, and no prefix route is created for either family. IPv6 ones are
    /// also deprecated (preferred lifetime 0, valid forever): the kernel's source
    /// address selection (RFC 6724 rule 8, longest match) would otherwise pick the
    /// /128 VIP as the source of every connection the node opens into the subnet, and
    /// those connections would break at the next failover. A deprecated address still
    /// takes incoming traffic and is the source of the replies, as a /32 IPv4 VIP is.
    pub fn add_address(&self, ifindex: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let msg = addr_msg(ifindex, addr, prefix);
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &msg)
    }

    /// Removes `addr/prefix` from the interface; absent already is not an error.
    pub fn del_address(&self, ifindex: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let msg = addr_msg(ifindex, addr, prefix);
        match self.request(RTM_DELADDR, 0, &msg) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT)
                ) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// Facts about a link, in our namespace or (with `netnsid`) in a peer namespace.
    pub fn link(&self, ifindex: u32, netnsid: Option<i32>) -> io::Result<LinkInfo> {
        let mut msg = Vec::with_capacity(32);
        // struct ifinfomsg: family, pad, type, index, flags, change
        msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        if let Some(id) = netnsid {
            push_attr(&mut msg, IFLA_TARGET_NETNSID, &id.to_ne_bytes());
        }
        let replies = self.exchange(RTM_GETLINK, 0, &msg)?;
        let body = replies
            .into_iter()
            .find(|(t, _)| *t == 16) // RTM_NEWLINK
            .map(|(_, b)| b)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no link in reply"))?;
        parse_link(&body)
    }

    /// The MAC the kernel's neighbour table holds for `addr` on `ifindex`, if any.
    pub fn neighbour(&self, ifindex: u32, addr: IpAddr) -> io::Result<Option<Mac>> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // struct ndmsg: family, pad1, pad2, ifindex, state, flags, type
        let mut msg = vec![family as u8, 0, 0, 0];
        msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        msg.extend_from_slice(&[0, 0, 0, 0]);
        let replies = self.exchange(RTM_GETNEIGH, NLM_F_DUMP, &msg)?;
        let want = ip_bytes(addr);
        for (ty, body) in replies {
            if ty != 28 || body.len() < 12 {
                continue; // RTM_NEWNEIGH
            }
            let idx = i32::from_ne_bytes(body[4..8].try_into().unwrap_or_default()) as u32;
            let state = u16::from_ne_bytes([body[8], body[9]]);
            // NUD_INCOMPLETE | NUD_FAILED | NUD_NOARP carry no usable address.
            if idx != ifindex || state & (0x01 | 0x20 | 0x40) != 0 {
                continue;
            }
            let mut dst = None;
            let mut ll = None;
            for (t, v) in attrs(&body[12..]) {
                match t {
                    NDA_DST => dst = Some(v.to_vec()),
                    NDA_LLADDR if v.len() == 6 => ll = Mac::try_from(v).ok(),
                    _ => {}
                }
            }
            if dst.as_deref() == Some(&want[..]) {
                return Ok(ll);
            }
        }
        Ok(None)
    }

    fn request(&self, ty: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.exchange(ty, flags, body).map(|_| ())
    }

    /// Sends one message and collects the replies up to the ack (or DONE for dumps).
    fn exchange(&self, ty: u16, flags: u16, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
        let len = (NLMSG_HDRLEN + body.len()) as u32;
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: sending a buffer we own on our socket.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv(&self.fd, &mut buf);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut data = &buf[..n as usize];
            while data.len() >= NLMSG_HDRLEN {
                let mlen = u32::from_ne_bytes(data[0..4].try_into().unwrap_or_default()) as usize;
                let mty = u16::from_ne_bytes([data[4], data[5]]);
                let mseq = u32::from_ne_bytes(data[8..12].try_into().unwrap_or_default());
                if mlen < NLMSG_HDRLEN || mlen > data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad netlink length",
                    ));
                }
                let payload = &data[NLMSG_HDRLEN..mlen];
                data = &data[align4(mlen).min(data.len())..];
                if mseq != seq {
                    continue;
                }
                match mty {
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(
                            payload
                                .get(0..4)
                                .and_then(|b| b.try_into().ok())
                                .unwrap_or_default(),
                        );
                        if code == 0 {
                            if dump {
                                continue;
                            }
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => out.push((mty, payload.to_vec())),
                }
            }
        }
    }
}

/// recv(2) into `buf`: the byte count, or -1 with errno set.
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> isize {
    // SAFETY: receiving into a buffer we own, of its length.
    unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    }
}

/// A NETLINK_ROUTE socket.
fn route_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the kernel reports about our interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An address was removed from the interface (by us, an operator, or the kernel
    /// flushing IPv6 addresses when the link goes down).
    AddressRemoved(IpAddr),
    /// The link's carrier state changed.
    Link { up: bool },
    /// Notifications were lost (a burst): everything may have changed.
    Resync,
}

/// A subscription to the kernel's link and address notifications for one interface.
pub struct Monitor {
    fd: OwnedFd,
    ifindex: u32,
}

impl Monitor {
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let fd = route_socket()?;
        // SAFETY: zeroed sockaddr_nl is valid.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // RTNLGRP_LINK (1), RTNLGRP_IPV4_IFADDR (5), RTNLGRP_IPV6_IFADDR (9).
        sa.nl_groups = (1 << 0) | (1 << 4) | (1 << 8);
        // SAFETY: a valid address of the right length.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Monitor { fd, ifindex })
    }

    /// Blocks until the kernel reports something; returns what concerns our interface.
    pub fn next(&self) -> io::Result<Vec<Change>> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = recv(&self.fd, &mut buf);
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                return Ok(vec![Change::Resync]);
            }
            return Err(e);
        }
        Ok(parse_changes(&buf[..n as usize], self.ifindex))
    }
}

fn parse_changes(mut data: &[u8], ifindex: u32) -> Vec<Change> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap_or_default()) as usize;
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            break;
        }
        let body = &data[NLMSG_HDRLEN..len];
        data = &data[align4(len).min(data.len())..];
        match ty {
            RTM_DELADDR if body.len() >= 8 => {
                let index = u32::from_ne_bytes(body[4..8].try_into().unwrap_or_default());
                if index != ifindex {
                    continue;
                }
                let family = body[0] as i32;
                let addr = attrs(&body[8..])
                    .find(|(t, _)| *t == IFA_LOCAL || *t == IFA_ADDRESS)
                    .and_then(|(_, v)| match (family, v.len()) {
                        (libc::AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
                        (libc::AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
                        _ => None,
                    });
                if let Some(a) = addr {
                    out.push(Change::AddressRemoved(a));
                }
            }
            16 if body.len() >= 16 => {
                // RTM_NEWLINK: struct ifinfomsg { family, pad, type, index, flags, change }
                let index = i32::from_ne_bytes(body[4..8].try_into().unwrap_or_default()) as u32;
                let flags = u32::from_ne_bytes(body[8..12].try_into().unwrap_or_default());
                if index == ifindex {
                    // IFF_UP and IFF_LOWER_UP (carrier).
                    out.push(Change::Link {
                        up: flags & 0x1 != 0 && flags & 0x10000 != 0,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

fn addr_msg(ifindex: u32, addr: IpAddr, prefix: u8) -> Vec<u8> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // struct ifaddrmsg: family, prefixlen, flags, scope, index
    let mut msg = vec![family as u8, prefix, 0, 0];
    msg.extend_from_slice(&ifindex.to_ne_bytes());
    let bytes = ip_bytes(addr);
    push_attr(&mut msg, IFA_LOCAL, &bytes);
    push_attr(&mut msg, IFA_ADDRESS, &bytes);
    push_attr(
        &mut msg,
        IFA_FLAGS,
        &(IFA_F_NODAD | IFA_F_NOPREFIXROUTE).to_ne_bytes(),
    );
    if addr.is_ipv6() {
        // struct ifa_cacheinfo: preferred, valid (seconds), cstamp, tstamp.
        let mut info = Vec::with_capacity(16);
        for v in [0, INFINITY_LIFE_TIME, 0, 0] {
            info.extend_from_slice(&v.to_ne_bytes());
        }
        push_attr(&mut msg, IFA_CACHEINFO, &info);
    }
    msg
}

fn ip_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn push_attr(msg: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    msg.extend_from_slice(&(len as u16).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(data);
    msg.resize(align4(msg.len()), 0);
}

/// Iterates the rtattrs of a message body; stops at the first malformed one.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, value))
    })
}

fn parse_link(body: &[u8]) -> io::Result<LinkInfo> {
    if body.len() < 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short ifinfomsg",
        ));
    }
    let mut info = LinkInfo::default();
    for (ty, v) in attrs(&body[16..]) {
        match ty {
            IFLA_ADDRESS if v.len() == 6 => info.mac = Mac::try_from(v).ok(),
            IFLA_IFNAME => {
                info.name =
                    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(&[])).into()
            }
            IFLA_LINK if v.len() == 4 => {
                info.link = Some(u32::from_ne_bytes(v.try_into().unwrap_or_default()))
            }
            IFLA_LINK_NETNSID if v.len() == 4 => {
                info.link_netnsid = Some(i32::from_ne_bytes(v.try_into().unwrap_or_default()))
            }
            IFLA_OPERSTATE if !v.is_empty() => info.operstate = Some(v[0]),
            IFLA_LINKINFO => {
                for (t, kv) in attrs(v) {
                    if t == IFLA_INFO_KIND {
                        info.kind = Some(
                            String::from_utf8_lossy(kv.split(|b| *b == 0).next().unwrap_or(&[]))
                                .into(),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_stop_at_malformed() {
        let mut m = Vec::new();
        push_attr(&mut m, 3, b"eth0\0");
        m.extend_from_slice(&[200, 0, 1, 0]); // claims 200 bytes
        let got: Vec<_> = attrs(&m).collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 3);
    }

    #[test]
    fn addr_message_layout() {
        let m = addr_msg(7, "10.0.0.50".parse().unwrap(), 32);
        assert_eq!(&m[0..4], &[libc::AF_INET as u8, 32, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[4..8].try_into().unwrap()), 7);
        let a: Vec<_> = attrs(&m[8..]).collect();
        assert_eq!(a[0], (IFA_LOCAL, &[10, 0, 0, 50][..]));
        assert!(a.iter().all(|(t, _)| *t != IFA_CACHEINFO), "{a:?}");
    }

    #[test]
    fn ipv6_vip_is_deprecated_and_valid_forever() {
        let m = addr_msg(7, "2001:db8::50".parse().unwrap(), 128);
        assert_eq!(&m[0..4], &[libc::AF_INET6 as u8, 128, 0, 0]);
        let a: Vec<_> = attrs(&m[8..]).collect();
        let flags = a.iter().find(|(t, _)| *t == IFA_FLAGS).unwrap().1;
        let flags = u32::from_ne_bytes(flags.try_into().unwrap());
        assert_eq!(flags, IFA_F_NODAD | IFA_F_NOPREFIXROUTE);
        let info = a.iter().find(|(t, _)| *t == IFA_CACHEINFO).unwrap().1;
        let word = |i: usize| u32::from_ne_bytes(info[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!((info.len(), word(0), word(1)), (16, 0, u32::MAX));
    }
}
