//! The one parser of IP packets.
//!
//! [`ipv4`] and [`ipv6`] check the IP header once and start one [`Packet`]; the
//! description grows from there, each part read at most once per packet and only on
//! the paths that ask for it:
//! * [`Packet::layout`]: the transport protocol, the L4 offset (IPv4's IHL honoured
//!   and masked once, IPv6's extension headers walked), options, fragment, first
//!   fragment;
//! * [`Packet::transport`]: what the transport header holds: ports, TCP flags, the
//!   ICMP type.
//!
//! Echo, the director, the handover and the elastic IPs consume that description;
//! none of them looks at an IP header's version, length, protocol or fragment field
//! again. The protocol numbers, the fragment masks and the ICMP error types are
//! declared here, once.
//!
//! Why in parts: most packets to an IPv4 VIP need nothing past its address (local,
//! redirect, forward), and whatever is read before the VIP lookup is paid by all of
//! them (a BPF program has four callee-saved registers: what crosses a map lookup is
//! spilled to the stack and loaded back). Reading the layout before the lookup cost
//! those paths 6 to 11 ns (`bench paths`). IPv6's layout is read up front: a neighbour
//! solicitation is told apart by it before any lookup.
//!
//! Only a frame too short for the fixed IP header is an error. A frame that ends
//! inside a header the description would go on to read is described as far as it
//! goes (`truncated`, a `None` in [`Transport`]); each consumer decides what that
//! means for it, as it did before there was one parser.

use aya_ebpf::programs::XdpContext;
use network_types::{
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::packet::{hdr, Error, ETH_HLEN};

/// IP protocol numbers (the IPv4 protocol field, the IPv6 next header).
pub const ICMP: u8 = 1;
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
#[derive(Clone, Copy)]
pub struct Packet {
    pub family: Family,
    /// Offset of the IP header: right after an untagged Ethernet header.
    pub l3: usize,
    /// IPv4: the destination, network order as a native-endian u32 (the key of the
    /// VIP and EIP maps); 0 for IPv6 (see [`Packet::addrs_v6`]).
    pub dst_v4: u32,
    layout: Option<Layout>,
    transport: Option<Transport>,
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
    /// IPv4 options (an IHL above 5), or an IPv6 extension header other than a
    /// fragment header, in front of the transport header.
    pub options: bool,
    /// IPv4: more fragments follow or the offset is not 0. IPv6: a fragment header.
    pub fragment: bool,
    /// The fragment that carries the transport header (offset 0): every packet that
    /// is not a fragment, too.
    pub first_fragment: bool,
    /// IPv6: the frame ends inside an extension header (`proto` names it).
    pub truncated: bool,
}

/// What the transport header holds, for the protocols the program looks into.
#[derive(Clone, Copy)]
pub struct Transport {
    /// TCP and UDP on a first fragment, when the frame holds them.
    pub ports: Option<Ports>,
    /// TCP, when the frame holds the header up to its flags (14 bytes).
    pub tcp_flags: Option<u8>,
    /// ICMP on a first fragment, when the frame holds its header (8 bytes); ICMPv6
    /// only right behind the fixed header (neither an option nor a fragment), when
    /// the frame holds its type.
    pub icmp_type: Option<u8>,
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
        layout: None,
        transport: None,
    }))
}

/// An IPv6 packet, its extension headers walked (up to three: hop-by-hop, routing,
/// destination options, fragment), so that none of them hides the transport
/// protocol; None when the version is not 6.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext) -> Result<Option<Packet>, Error> {
    let ip = hdr::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    if ip.vcf[0] >> 4 != 6 {
        return Ok(None);
    }
    let mut l = Layout {
        proto: ip.next_hdr,
        l4: ETH_HLEN + Ipv6Hdr::LEN,
        options: false,
        fragment: false,
        first_fragment: true,
        truncated: false,
    };
    for _ in 0..MAX_EXTENSION_HEADERS {
        match l.proto {
            HOP_BY_HOP | ROUTING | DESTINATION => {
                l.options = true;
                let Ok(h) = hdr::<[u8; 2]>(ctx, l.l4) else {
                    l.truncated = true;
                    break;
                };
                l.proto = h[0];
                l.l4 += (h[1] as usize + 1) * 8;
            }
            FRAGMENT => {
                l.fragment = true;
                let Ok(h) = hdr::<[u8; 4]>(ctx, l.l4) else {
                    l.truncated = true;
                    break;
                };
                l.proto = h[0];
                l.l4 += 8;
                if u16::from_be_bytes([h[2], h[3]]) & IPV6_OFFSET != 0 {
                    // A later fragment: no transport header follows.
                    l.first_fragment = false;
                    break;
                }
            }
            _ => break,
        }
    }
    Ok(Some(Packet {
        family: Family::V6,
        l3: ETH_HLEN,
        dst_v4: 0,
        layout: Some(l),
        transport: None,
    }))
}

impl Layout {
    /// A whole datagram right behind the fixed IP header: no options, no extension
    /// headers, not a fragment.
    #[inline(always)]
    pub fn plain(&self) -> bool {
        !self.options && !self.fragment
    }

    /// Offset of the header an ICMP error quotes.
    #[inline(always)]
    pub fn quoted(&self) -> usize {
        self.l4 + ICMP_HLEN
    }
}

impl Packet {
    /// IPv4 only: (source, destination), as on the wire.
    #[inline(always)]
    pub fn addrs_v4<'a>(&self, ctx: &'a XdpContext) -> Result<&'a [[u8; 4]; 2], Error> {
        hdr(ctx, self.l3 + 12)
    }

    /// IPv6 only: (source, destination), as on the wire.
    #[inline(always)]
    pub fn addrs_v6<'a>(&self, ctx: &'a XdpContext) -> Result<&'a [[u8; 16]; 2], Error> {
        hdr(ctx, self.l3 + 8)
    }

    /// The packet's layout, read the first time it is asked for (IPv6's was read
    /// with the header).
    #[inline(always)]
    pub fn layout(&mut self, ctx: &XdpContext) -> Result<Layout, Error> {
        if let Some(l) = self.layout {
            return Ok(l);
        }
        // The header `ipv4` checked; the frame has not changed size since.
        let ip = hdr::<Ipv4Hdr>(ctx, self.l3)?;
        let frags = u16::from_be_bytes(ip.frags);
        let l = Layout {
            proto: ip.proto,
            l4: self.l3 + ihl(ip.vihl) * 4,
            options: ihl(ip.vihl) > 5,
            fragment: frags & (IPV4_MORE_FRAGMENTS | IPV4_OFFSET) != 0,
            first_fragment: frags & IPV4_OFFSET == 0,
            truncated: false,
        };
        self.layout = Some(l);
        Ok(l)
    }

    /// The transport header's fields, read the first time they are asked for.
    #[inline(always)]
    pub fn transport(&mut self, ctx: &XdpContext) -> Result<Transport, Error> {
        if let Some(t) = self.transport {
            return Ok(t);
        }
        let l = self.layout(ctx)?;
        let mut t = Transport {
            ports: None,
            tcp_flags: None,
            icmp_type: None,
        };
        if l.first_fragment {
            match l.proto {
                TCP => match hdr::<[u8; TCP_FLAGS_AT + 1]>(ctx, l.l4) {
                    Ok(h) => {
                        t.ports = Some(Ports {
                            src: [h[0], h[1]],
                            dst: [h[2], h[3]],
                        });
                        t.tcp_flags = Some(h[TCP_FLAGS_AT]);
                    }
                    Err(_) => t.ports = ports_at(ctx, l.l4),
                },
                UDP => t.ports = ports_at(ctx, l.l4),
                // The whole ICMP header: a 1-byte read at a variable offset compiles to
                // a bounds check the verifier cannot follow.
                ICMP if self.family == Family::V4 => {
                    t.icmp_type = hdr::<Icmpv4Hdr>(ctx, l.l4).ok().map(|h| h.type_);
                }
                // Right behind the fixed header, a constant offset.
                ICMPV6 if self.family == Family::V6 && l.plain() => {
                    t.icmp_type = hdr::<u8>(ctx, ETH_HLEN + Ipv6Hdr::LEN).ok().copied();
                }
                _ => {}
            }
        }
        self.transport = Some(t);
        Ok(t)
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
