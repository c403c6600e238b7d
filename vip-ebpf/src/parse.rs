//! The one parser of IP packets.
//!
//! [`ipv4`] and [`ipv6`] check the IP header once and start one [`Packet`]; the
//! description grows from there, each part read at most once per packet and only on
//! the paths that ask for it:
//! * [`Packet::layout`]: the transport protocol, the L4 offset (IPv4's IHL honoured
//!   and masked once, IPv6's extension headers walked), options, fragment, first
//!   fragment;
//! * [`Packet::transport`]: what the transport header holds: ports, TCP flags, the
//!   ICMP type;
//! * the addresses ([`Packet::addrs`]).
//!
//! Echo, the director, the handover and the elastic IPs consume that description;
//! none of them looks at an IP header's version, length, protocol or fragment field
//! again. The protocol numbers, the fragment masks and the ICMP error types are
//! declared here, once.
//!
//! Why lazily: most packets to an IPv4 VIP need nothing past its address (local,
//! redirect, forward), and whatever is read before the VIP lookup is paid by all of
//! them (a BPF program has four callee-saved registers: what crosses a map lookup is
//! spilled to the stack and loaded back). A first version that filled the whole
//! description up front cost those paths 6 to 11 ns in `bench paths`. So IPv4's
//! layout is read when it is first asked for, through the header the parser checked
//! (no second bounds check), and its flags are derived from the raw fragment field
//! where they are tested. IPv6's layout is walked with the header: a neighbour
//! solicitation is told apart by it before any lookup.
//!
//! Only a frame too short for the fixed IP header is an error. A frame that ends
//! inside a header the description would go on to read is described as far as it
//! goes (`truncated`, a `None` from a [`Transport`] accessor); each consumer decides what that
//! means for it, as it did before there was one parser.

use aya_ebpf::programs::XdpContext;
use network_types::{
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::packet::{hdr, Error, Plain, ETH_HLEN};

/// IP protocol numbers (the IPv4 protocol field, the IPv6 next header).
pub const ICMP: u8 = 1;
/// IPv4 in IPv4 (`tunnel`).
pub const IPIP: u8 = 4;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMPV6: u8 = 58;

/// IPv6 extension headers the parser walks (RFC 8200 4.1). Any other next header
/// ends the walk: it is the transport protocol.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DESTINATION: u8 = 60;
/// Extension headers walked at most: after three, whatever follows is the protocol
/// (no consumer accepts an extension header as one).
const MAX_EXTENSION_HEADERS: usize = 3;

/// IPv4 `frags` (host order): the more-fragments bit and the fragment offset.
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV4_OFFSET: u16 = 0x1fff;
/// The fragment offset in an IPv6 fragment header's second 16-bit word.
const IPV6_OFFSET: u16 = 0xfff8;

/// TCP flags, in the header's byte 13.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
const TCP_FLAGS_AT: usize = 13;

/// An ICMP error's header in front of the packet it quotes (type, code, checksum,
/// four bytes), in both families.
pub const ICMP_HLEN: usize = 8;
const _: () = assert!(Icmpv4Hdr::LEN == ICMP_HLEN);

/// Which ICMP types are errors that quote the packet they are about.
#[inline(always)]
pub fn is_icmp_error(family: Family, icmp_type: u8) -> bool {
    match family {
        // Destination unreachable, time exceeded, parameter problem (RFC 792).
        Family::V4 => matches!(icmp_type, 3 | 11 | 12),
        // Destination unreachable, packet too big, time exceeded, parameter problem
        // (RFC 4443).
        Family::V6 => matches!(icmp_type, 1..=4),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// One IP packet whose header the parser checked.
pub struct Packet {
    pub family: Family,
    /// Offset of the IP header: right after an untagged Ethernet header.
    pub l3: usize,
    /// IPv4: the destination, network order as a native-endian u32 (the key of the
    /// VIP and EIP maps); 0 for IPv6 (see [`Packet::addrs`]).
    pub dst_v4: u32,
    /// The fixed IP header `ipv4` or `ipv6` bounds-checked: an `Ipv4Hdr` or an
    /// `Ipv6Hdr` as `family` says (read again through [`checked`]).
    ip: *const u8,
    /// Valid when `read` has [`read::LAYOUT`]: always for IPv6 (`ipv6` walks the
    /// extension headers); for IPv4 from the first [`Packet::layout`].
    ///
    /// Why a flag and not an `Option`: a `None` leaves its payload undefined, and
    /// LLVM may carry that undefined value in a register across a branch and spill
    /// it, a store of an uninitialised register that the verifier refuses
    /// (`R4 !read_ok`). Which functions that happens in moved with nothing but the
    /// crate hashes, that is the path the tree was built at. Every field here is
    /// defined from the start.
    layout: Layout,
    /// Valid when `read` has [`read::TRANSPORT`].
    transport: Transport,
    /// Bits of `read::*`: which parts are read.
    read: u8,
}

/// Bits of [`Packet`]'s `read`.
mod read {
    pub const LAYOUT: u8 = 1 << 0;
    pub const TRANSPORT: u8 = 1 << 1;
}

/// The packet's addresses, as on the wire.
pub enum Addrs<'a> {
    V4 {
        src: &'a [u8; 4],
        dst: &'a [u8; 4],
    },
    V6 {
        src: &'a [u8; 16],
        dst: &'a [u8; 16],
    },
}

/// Where the transport header is, and whether the packet has one.
#[derive(Clone, Copy)]
pub struct Layout {
    /// The transport protocol: IPv4's protocol field; for IPv6 the next header after
    /// the extension headers walked (a later fragment's is its fragment header's; a
    /// header the walk did not get past is named by its own type).
    pub proto: u8,
    /// Offset of the transport header (meaningful on a first fragment only).
    pub l4: usize,
    /// The flags below are told from `frags` (IPv4) or `bits` (IPv6); the family is a
    /// constant on every path, so the other branch folds away.
    family: Family,
    /// IPv4: the header's `frags` (host order); the flags are derived where they are
    /// tested, which costs the paths that test none nothing.
    frags: u16,
    /// IPv6: bits of `layout::*`, found by the walk.
    bits: u8,
}

/// Bits of an IPv6 [`Layout`] (see its methods).
mod layout {
    /// An extension header other than a fragment header.
    pub const OPTIONS: u8 = 1 << 0;
    /// A fragment header.
    pub const FRAGMENT: u8 = 1 << 1;
    /// A fragment whose offset is above 0 (no transport header follows).
    pub const LATER: u8 = 1 << 2;
    /// The frame ends inside an extension header.
    pub const TRUNCATED: u8 = 1 << 3;
}

/// What the transport header holds, for the protocols the program looks into.
///
/// Every field is defined whatever the packet (zero when absent, `bits` says which
/// are there), for the reason [`Packet`]'s `layout` is not an `Option`; the
/// accessors hand out `Option`s, which fold into selects on defined values.
#[derive(Clone, Copy)]
pub struct Transport {
    ports: Ports,
    tcp_flags: u8,
    icmp_type: u8,
    /// Bits of `transport::*`.
    bits: u8,
}

/// Bits of a [`Transport`]: which of its fields the frame held.
mod transport {
    pub const PORTS: u8 = 1 << 0;
    pub const TCP_FLAGS: u8 = 1 << 1;
    pub const UDP_HEADER: u8 = 1 << 2;
    pub const ICMP_TYPE: u8 = 1 << 3;
}

impl Transport {
    const NONE: Transport = Transport {
        ports: Ports {
            src: [0; 2],
            dst: [0; 2],
        },
        tcp_flags: 0,
        icmp_type: 0,
        bits: 0,
    };

    /// TCP and UDP on a first fragment, when the frame holds them.
    #[inline(always)]
    pub fn ports(&self) -> Option<Ports> {
        (self.bits & transport::PORTS != 0).then_some(self.ports)
    }

    /// TCP, when the frame holds the header up to its flags (14 bytes).
    #[inline(always)]
    pub fn tcp_flags(&self) -> Option<u8> {
        (self.bits & transport::TCP_FLAGS != 0).then_some(self.tcp_flags)
    }

    /// UDP, when the frame holds its whole header (8 bytes).
    #[inline(always)]
    pub fn udp_header(&self) -> bool {
        self.bits & transport::UDP_HEADER != 0
    }

    /// ICMP on a first fragment, when the frame holds its header (8 bytes); ICMPv6
    /// only right behind the fixed header (neither an option nor a fragment), when
    /// the frame holds its type.
    #[inline(always)]
    pub fn icmp_type(&self) -> Option<u8> {
        (self.bits & transport::ICMP_TYPE != 0).then_some(self.icmp_type)
    }

    #[inline(always)]
    fn set_ports(&mut self, p: Option<Ports>) {
        if let Some(p) = p {
            self.ports = p;
            self.bits |= transport::PORTS;
        }
    }
}

/// Source and destination port, as on the wire.
#[derive(Clone, Copy)]
pub struct Ports {
    pub src: [u8; 2],
    pub dst: [u8; 2],
}

/// The IHL of an IPv4 header's first byte, in 32-bit words: at most 15, a bound the
/// verifier follows into every access at the L4 offset.
#[inline(always)]
fn ihl(vihl: u8) -> usize {
    (vihl & 0x0f) as usize
}

/// An IPv4 packet; None when the header is not one (version, IHL below 5).
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<Option<Packet>, Error> {
    let ip = hdr::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    if ip.vihl >> 4 != 4 || ihl(ip.vihl) < 5 {
        return Ok(None);
    }
    Ok(Some(Packet {
        family: Family::V4,
        l3: ETH_HLEN,
        dst_v4: u32::from_ne_bytes(ip.dst_addr),
        ip: (ip as *const Ipv4Hdr).cast(),
        layout: Layout::NONE,
        transport: Transport::NONE,
        read: 0,
    }))
}

/// An IPv6 packet, its layout read at once (the extension headers walked); None
/// when the version is not 6.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext) -> Result<Option<Packet>, Error> {
    let ip = hdr::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    if ip.vcf[0] >> 4 != 6 {
        return Ok(None);
    }
    Ok(Some(Packet {
        family: Family::V6,
        l3: ETH_HLEN,
        dst_v4: 0,
        ip: (ip as *const Ipv6Hdr).cast(),
        layout: walk_v6(ctx, ip),
        transport: Transport::NONE,
        read: read::LAYOUT,
    }))
}

/// The IP header of a packet, as the `T` its family says (`Ipv4Hdr` for V4,
/// `Ipv6Hdr` for V6: the callers below match on the family), without checking its
/// bounds again: a description is read across the VIP lookup, where a pointer costs
/// one spill and a second bounds check five instructions more.
///
/// What makes the reference sound: `pkt.ip` points at that `T`, which `packet::hdr`
/// checked is inside this frame (its other arguments hold here), and the header
/// stays there: the program moves the frame's start only in `tunnel`, whose
/// `decap` consumes the `Packet` (the caller parses the inner one) and whose `send`
/// is the last thing done with it, and resizes the frame only there and in
/// `ipv6::solicitation` (`packet::adjust_tail`), which reads no `Packet` after it. The shared borrow of the context that the reference keeps excludes
/// every `hdr_mut` reference (which borrows it mutably) while it lives.
#[inline(always)]
fn checked<'a, T: Plain>(pkt: &Packet, _ctx: &'a XdpContext) -> &'a T {
    // SAFETY: see above.
    unsafe { &*pkt.ip.cast::<T>() }
}

/// IPv6's extension headers walked (up to three: hop-by-hop, routing, destination
/// options, fragment), so that none of them hides the transport protocol.
#[inline(always)]
fn walk_v6(ctx: &XdpContext, ip: &Ipv6Hdr) -> Layout {
    let mut l = Layout {
        proto: ip.next_hdr,
        l4: ETH_HLEN + Ipv6Hdr::LEN,
        family: Family::V6,
        frags: 0,
        bits: 0,
    };
    for _ in 0..MAX_EXTENSION_HEADERS {
        match l.proto {
            HOP_BY_HOP | ROUTING | DESTINATION => {
                l.bits |= layout::OPTIONS;
                let Ok(h) = hdr::<[u8; 2]>(ctx, l.l4) else {
                    l.bits |= layout::TRUNCATED;
                    break;
                };
                l.proto = h[0];
                l.l4 += (h[1] as usize + 1) * 8;
            }
            FRAGMENT => {
                l.bits |= layout::FRAGMENT;
                let Ok(h) = hdr::<[u8; 4]>(ctx, l.l4) else {
                    l.bits |= layout::TRUNCATED;
                    break;
                };
                l.proto = h[0];
                l.l4 += 8;
                if u16::from_be_bytes([h[2], h[3]]) & IPV6_OFFSET != 0 {
                    // A later fragment: no transport header follows.
                    l.bits |= layout::LATER;
                    break;
                }
            }
            _ => break,
        }
    }
    l
}

impl Layout {
    /// A packet's layout before it is read: defined, never consulted.
    const NONE: Layout = Layout {
        proto: 0,
        l4: 0,
        family: Family::V4,
        frags: 0,
        bits: 0,
    };

    /// IPv4 options (an IHL above 5), or an IPv6 extension header other than a
    /// fragment header, in front of the transport header.
    #[inline(always)]
    pub fn options(&self) -> bool {
        match self.family {
            Family::V4 => self.l4 > ETH_HLEN + Ipv4Hdr::LEN,
            Family::V6 => self.bits & layout::OPTIONS != 0,
        }
    }

    /// IPv4: more fragments follow or the offset is not 0. IPv6: a fragment header.
    #[inline(always)]
    pub fn fragment(&self) -> bool {
        match self.family {
            Family::V4 => self.frags & (IPV4_MORE_FRAGMENTS | IPV4_OFFSET) != 0,
            Family::V6 => self.bits & layout::FRAGMENT != 0,
        }
    }

    /// The fragment that carries the transport header (offset 0): every packet that
    /// is not a fragment, too.
    #[inline(always)]
    pub fn first_fragment(&self) -> bool {
        match self.family {
            Family::V4 => self.frags & IPV4_OFFSET == 0,
            Family::V6 => self.bits & layout::LATER == 0,
        }
    }

    /// IPv6: the frame ends inside an extension header (`proto` names it).
    #[inline(always)]
    pub fn truncated(&self) -> bool {
        self.family == Family::V6 && self.bits & layout::TRUNCATED != 0
    }

    /// A whole datagram right behind the fixed IP header: no options, no extension
    /// headers, not a fragment.
    #[inline(always)]
    pub fn plain(&self) -> bool {
        !self.options() && !self.fragment()
    }

    /// Offset of the header an ICMP error quotes.
    #[inline(always)]
    pub fn quoted(&self) -> usize {
        self.l4 + ICMP_HLEN
    }
}

impl Packet {
    /// The source and destination addresses.
    #[inline(always)]
    pub fn addrs<'a>(&self, ctx: &'a XdpContext) -> Addrs<'a> {
        match self.family {
            Family::V4 => {
                let ip = checked::<Ipv4Hdr>(self, ctx);
                Addrs::V4 {
                    src: &ip.src_addr,
                    dst: &ip.dst_addr,
                }
            }
            Family::V6 => {
                let ip = checked::<Ipv6Hdr>(self, ctx);
                Addrs::V6 {
                    src: &ip.src_addr,
                    dst: &ip.dst_addr,
                }
            }
        }
    }

    /// The packet's layout, read the first time it is asked for.
    #[inline(always)]
    pub fn layout(&mut self, ctx: &XdpContext) -> Layout {
        if self.read & read::LAYOUT != 0 {
            return self.layout;
        }
        let l = match self.family {
            Family::V4 => {
                let ip = checked::<Ipv4Hdr>(self, ctx);
                Layout {
                    proto: ip.proto,
                    l4: self.l3 + ihl(ip.vihl) * 4,
                    family: Family::V4,
                    frags: u16::from_be_bytes(ip.frags),
                    bits: 0,
                }
            }
            // Not reached: `ipv6` reads it.
            Family::V6 => walk_v6(ctx, checked::<Ipv6Hdr>(self, ctx)),
        };
        self.layout = l;
        self.read |= read::LAYOUT;
        l
    }

    /// The transport header's fields, read the first time they are asked for.
    #[inline(always)]
    pub fn transport(&mut self, ctx: &XdpContext) -> Transport {
        if self.read & read::TRANSPORT != 0 {
            return self.transport;
        }
        let l = self.layout(ctx);
        let mut t = Transport::NONE;
        if l.first_fragment() {
            match l.proto {
                TCP => match hdr::<[u8; TCP_FLAGS_AT + 1]>(ctx, l.l4) {
                    Ok(h) => {
                        t.set_ports(Some(Ports {
                            src: [h[0], h[1]],
                            dst: [h[2], h[3]],
                        }));
                        t.tcp_flags = h[TCP_FLAGS_AT];
                        t.bits |= transport::TCP_FLAGS;
                    }
                    Err(_) => t.set_ports(ports_at(ctx, l.l4)),
                },
                UDP => match hdr::<UdpHdr>(ctx, l.l4) {
                    Ok(h) => {
                        t.set_ports(Some(Ports {
                            src: h.src,
                            dst: h.dst,
                        }));
                        t.bits |= transport::UDP_HEADER;
                    }
                    Err(_) => t.set_ports(ports_at(ctx, l.l4)),
                },
                ICMP | ICMPV6 => {
                    if let Some(ty) = self.icmp_type(ctx) {
                        t.icmp_type = ty;
                        t.bits |= transport::ICMP_TYPE;
                    }
                }
                _ => {}
            }
        }
        self.transport = t;
        self.read |= read::TRANSPORT;
        t
    }

    /// [`Transport::icmp_type`] alone, not kept: what tells a neighbour solicitation
    /// apart before the lookup, which most of them are not worth keeping for.
    #[inline(always)]
    pub fn icmp_type(&mut self, ctx: &XdpContext) -> Option<u8> {
        let l = self.layout(ctx);
        match (self.family, l.proto) {
            // The whole ICMP header: a 1-byte read at a variable offset compiles to a
            // bounds check the verifier cannot follow.
            (Family::V4, ICMP) if l.first_fragment() => {
                hdr::<Icmpv4Hdr>(ctx, l.l4).ok().map(|h| h.type_)
            }
            // Right behind the fixed header, a constant offset.
            (Family::V6, ICMPV6) if l.plain() => {
                hdr::<u8>(ctx, ETH_HLEN + Ipv6Hdr::LEN).ok().copied()
            }
            _ => None,
        }
    }
}

#[inline(always)]
fn ports_at(ctx: &XdpContext, off: usize) -> Option<Ports> {
    let p = hdr::<[[u8; 2]; 2]>(ctx, off).ok()?;
    Some(Ports {
        src: p[0],
        dst: p[1],
    })
}
