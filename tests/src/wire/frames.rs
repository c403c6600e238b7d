//! The frames the wire recorder cares about: the asker's requests (as a client's
//! kernel sends them, from the lab's builders) and what the nodes send for the VIPs
//! (recognised here).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Family, Mac};
use crate::frames::{icmpv6_checksum, ETH_P_ARP, ETH_P_IPV6};

const ICMPV6: u8 = 58;
const NS: u8 = 135;
const NA: u8 = 136;
/// The NA flags byte: solicited.
const NA_SOLICITED: u8 = 0x40;
/// Marks the asker's sequence number in an ARP request's padding (bytes 42..60, which
/// no receiver reads: a NIC pads with zeros or whatever its buffer held). The XDP
/// program answers in place, so its reply carries the request's number back; a
/// reply built afresh (by a kernel) does not, and is attributed by time instead.
const TAG: &[u8; 4] = b"vipw";
const TAG_AT: usize = 42;

/// Who asks for which VIPs: what tells the asker's requests and the answers to them
/// from the rest of the traffic on the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    pub client_mac: Mac,
    pub client4: Ipv4Addr,
    pub client6: Ipv6Addr,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
}

/// What a frame on the switch is, for the watched VIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The client's ARP request or neighbour solicitation for a VIP; `tag` is the
    /// asker's sequence number where the frame carries one (ARP only).
    Request { family: Family, tag: Option<u64> },
    /// An answer to the client for a VIP (ARP reply, solicited NA) saying the VIP is at
    /// `mac` (the ARP sender / NA target link-layer address: what the client learns);
    /// `tag` copied from the request where the answer kept its padding.
    Answer {
        family: Family,
        mac: Mac,
        tag: Option<u64>,
    },
    /// An announcement nobody asked for (gratuitous ARP, unsolicited NA) that the VIP is
    /// at `mac`.
    Announcement { family: Family, mac: Mac },
    /// An NA for a VIP that a client's kernel would drop (bad checksum, hop limit not
    /// 255, truncated): counted, never an answer.
    Malformed { family: Family },
}

impl Kind {
    pub fn family(&self) -> Family {
        match *self {
            Kind::Request { family, .. }
            | Kind::Answer { family, .. }
            | Kind::Announcement { family, .. }
            | Kind::Malformed { family } => family,
        }
    }
}

fn mac_at(f: &[u8], at: usize) -> Option<Mac> {
    Some(Mac(f.get(at..at + 6)?.try_into().ok()?))
}

fn v4_at(f: &[u8], at: usize) -> Option<Ipv4Addr> {
    let b: [u8; 4] = f.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

fn v6_at(f: &[u8], at: usize) -> Option<Ipv6Addr> {
    let b: [u8; 16] = f.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

fn tag_of(f: &[u8]) -> Option<u64> {
    if f.get(TAG_AT..TAG_AT + 4)? != TAG {
        return None;
    }
    Some(u64::from_be_bytes(
        f.get(TAG_AT + 4..TAG_AT + 12)?.try_into().ok()?,
    ))
}

/// What `f` is for `w`, or None when it is not about the watched VIPs (adverts, echo
/// probes, other addresses, VLAN-tagged frames).
pub fn classify(f: &[u8], w: &Watch) -> Option<Kind> {
    match u16::from_be_bytes(f.get(12..14)?.try_into().ok()?) {
        ETH_P_ARP => classify_arp(f, w),
        ETH_P_IPV6 => classify_nd(f, w),
        _ => None,
    }
}

fn classify_arp(f: &[u8], w: &Watch) -> Option<Kind> {
    // Ethernet/IPv4 ARP only: htype 1, ptype 0x0800, hlen 6, plen 4.
    if f.get(14..20)? != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let op = f.get(20..22)?;
    let (sha, spa, tpa) = (mac_at(f, 22)?, v4_at(f, 28)?, v4_at(f, 38)?);
    let family = Family::Arp;
    if spa == w.vip4 && tpa == w.vip4 {
        // Gratuitous, in request or reply form.
        return Some(Kind::Announcement { family, mac: sha });
    }
    match op {
        [0, 1] if tpa == w.vip4 && sha == w.client_mac && spa == w.client4 => Some(Kind::Request {
            family,
            tag: tag_of(f),
        }),
        [0, 2] if spa == w.vip4 && tpa == w.client4 && mac_at(f, 0)? == w.client_mac => {
            Some(Kind::Answer {
                family,
                mac: sha,
                tag: tag_of(f),
            })
        }
        _ => None,
    }
}

fn classify_nd(f: &[u8], w: &Watch) -> Option<Kind> {
    if *f.get(20)? != ICMPV6 {
        return None;
    }
    let ty = *f.get(54)?;
    if (ty != NS && ty != NA) || v6_at(f, 62)? != w.vip6 {
        return None;
    }
    let family = Family::Nd;
    let (src, dst) = (v6_at(f, 22)?, v6_at(f, 38)?);
    if ty == NS {
        return (src == w.client6 && mac_at(f, 6)? == w.client_mac)
            .then_some(Kind::Request { family, tag: None });
    }
    let len = usize::from(u16::from_be_bytes(f.get(18..20)?.try_into().ok()?));
    let Some(msg) = f.get(54..54 + len) else {
        return Some(Kind::Malformed { family });
    };
    if f[21] != 255 || msg.len() < 24 || icmpv6_checksum(src, dst, msg) != 0 {
        return Some(Kind::Malformed { family });
    }
    // The target link-layer address option, else the frame's source.
    let mac = target_lladdr(&msg[24..]).or_else(|| mac_at(f, 6))?;
    if msg[4] & NA_SOLICITED == 0 {
        return Some(Kind::Announcement { family, mac });
    }
    (dst == w.client6).then_some(Kind::Answer {
        family,
        mac,
        tag: None,
    })
}

/// The target link-layer address option (type 2) among NA options.
fn target_lladdr(mut opts: &[u8]) -> Option<Mac> {
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == 2 && len == 8 {
            return mac_at(opts, 2);
        }
        opts = &opts[len..];
    }
    None
}

/// The broadcast ARP request a client's kernel sends to resolve `vip`, with the
/// asker's sequence number `tag` in its padding.
pub fn arp_request(mac: Mac, ip: Ipv4Addr, vip: Ipv4Addr, tag: Option<u64>) -> Vec<u8> {
    let mut f = crate::frames::arp_request(mac, ip, vip);
    if let Some(t) = tag {
        f[TAG_AT..TAG_AT + 4].copy_from_slice(TAG);
        f[TAG_AT + 4..TAG_AT + 12].copy_from_slice(&t.to_be_bytes());
    }
    f
}

/// A multicast neighbour solicitation for `target` from `src` at `mac`, as a client's
/// kernel sends it to resolve an address: to the target's solicited-node group, hop
/// limit 255, with the source link-layer address option.
pub fn neighbour_solicitation(mac: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    crate::frames::neighbour_solicitation(mac, src, target, None)
}

/// What the nodes send, for the analysis' tests: an answer built from the request the
/// way the XDP program builds it (in place, padding kept), gratuitous ARP, NAs.
#[cfg(test)]
pub(crate) mod synthetic {
    use super::*;
    use crate::frames;

    /// The lab's client (10.0.0.12, 2001:db8::12) asking for 10.0.0.50 and 2001:db8::50.
    pub fn watch() -> Watch {
        Watch {
            client_mac: Mac([2, 0, 0, 0, 0, 0x0c]),
            client4: Ipv4Addr::new(10, 0, 0, 12),
            client6: "2001:db8::12".parse().unwrap(),
            vip4: Ipv4Addr::new(10, 0, 0, 50),
            vip6: "2001:db8::50".parse().unwrap(),
        }
    }

    /// The XDP program's ARP reply to `request`: the VIP is at `mac`.
    pub fn arp_reply(request: &[u8], mac: Mac) -> Vec<u8> {
        let mut f = request.to_vec();
        let (sha, spa, tpa) = (f[22..28].to_vec(), f[28..32].to_vec(), f[38..42].to_vec());
        f[0..6].copy_from_slice(&sha);
        f[6..12].copy_from_slice(&mac.0);
        f[21] = 2;
        f[22..28].copy_from_slice(&mac.0);
        f[28..32].copy_from_slice(&tpa);
        f[32..38].copy_from_slice(&sha);
        f[38..42].copy_from_slice(&spa);
        f
    }

    /// A kernel's ARP reply: built afresh, 42 bytes, no padding.
    pub fn kernel_arp_reply(w: &Watch, mac: Mac) -> Vec<u8> {
        let mut f = frames::arp(
            w.client_mac,
            frames::ARP_REPLY,
            mac,
            w.vip4,
            w.client_mac,
            w.client4,
        );
        f.truncate(42);
        f
    }

    pub fn gratuitous_arp(mac: Mac, vip: Ipv4Addr) -> Vec<u8> {
        frames::arp(
            frames::BROADCAST,
            frames::ARP_REQUEST,
            mac,
            vip,
            [0; 6],
            vip,
        )
    }

    /// An NA for `vip` at `mac` to `dst`: solicited (an answer) or not (an
    /// announcement, to all nodes).
    pub fn neighbour_advertisement(
        mac: Mac,
        vip: Ipv6Addr,
        dst: Ipv6Addr,
        solicited: bool,
    ) -> Vec<u8> {
        let eth_dst = if solicited {
            [2, 0, 0, 0, 0, 0x0c]
        } else {
            frames::ALL_NODES_MAC
        };
        frames::neighbour_advertisement(eth_dst, mac, vip, dst, solicited)
    }
}

#[cfg(test)]
mod tests {
    use super::{synthetic::*, *};

    const A: Mac = Mac([2, 0, 0, 0, 0, 0x0a]);

    #[test]
    fn requests_answers_and_announcements_are_told_apart() {
        let w = watch();
        let req = arp_request(w.client_mac, w.client4, w.vip4, Some(7));
        assert_eq!(req.len(), 60);
        assert_eq!(
            classify(&req, &w),
            Some(Kind::Request {
                family: Family::Arp,
                tag: Some(7)
            })
        );
        assert_eq!(
            classify(&arp_reply(&req, A), &w),
            Some(Kind::Answer {
                family: Family::Arp,
                mac: A,
                tag: Some(7)
            })
        );
        assert_eq!(
            classify(&kernel_arp_reply(&w, A), &w),
            Some(Kind::Answer {
                family: Family::Arp,
                mac: A,
                tag: None
            })
        );
        assert_eq!(
            classify(&gratuitous_arp(A, w.vip4), &w),
            Some(Kind::Announcement {
                family: Family::Arp,
                mac: A
            })
        );
        let ns = neighbour_solicitation(w.client_mac, w.client6, w.vip6);
        assert_eq!(
            classify(&ns, &w),
            Some(Kind::Request {
                family: Family::Nd,
                tag: None
            })
        );
        assert_eq!(
            classify(&neighbour_advertisement(A, w.vip6, w.client6, true), &w),
            Some(Kind::Answer {
                family: Family::Nd,
                mac: A,
                tag: None
            })
        );
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        assert_eq!(
            classify(&neighbour_advertisement(A, w.vip6, all_nodes, false), &w),
            Some(Kind::Announcement {
                family: Family::Nd,
                mac: A
            })
        );
    }

    #[test]
    fn other_traffic_and_broken_answers_are_not_answers() {
        let w = watch();
        // A request for another address, one from another host, a reply to someone else.
        let other = Ipv4Addr::new(10, 0, 0, 11);
        assert_eq!(
            classify(&arp_request(w.client_mac, w.client4, other, None), &w),
            None
        );
        assert_eq!(classify(&arp_request(A, other, w.vip4, None), &w), None);
        let to_other = arp_reply(&arp_request(A, other, w.vip4, None), A);
        assert_eq!(classify(&to_other, &w), None);
        // Truncated frames parse as nothing, never panic.
        let na = neighbour_advertisement(A, w.vip6, w.client6, true);
        for n in 0..na.len() {
            let k = classify(&na[..n], &w);
            assert!(
                matches!(k, None | Some(Kind::Malformed { .. })),
                "{n} bytes: {k:?}"
            );
        }
        // A flipped bit breaks the checksum: a client's kernel would drop it.
        let mut bad = na.clone();
        bad[84] ^= 1;
        assert_eq!(
            classify(&bad, &w),
            Some(Kind::Malformed { family: Family::Nd })
        );
        let mut hop = na;
        hop[21] = 64;
        assert_eq!(
            classify(&hop, &w),
            Some(Kind::Malformed { family: Family::Nd })
        );
    }

    #[test]
    fn the_solicitation_is_a_valid_one() {
        let w = watch();
        let ns = neighbour_solicitation(w.client_mac, w.client6, w.vip6);
        assert_eq!(&ns[0..6], &[0x33, 0x33, 0xff, 0, 0, 0x50]);
        assert_eq!(ns[21], 255);
        let dst = v6_at(&ns, 38).unwrap();
        assert_eq!(dst, "ff02::1:ff00:50".parse::<Ipv6Addr>().unwrap());
        assert_eq!(icmpv6_checksum(w.client6, dst, &ns[54..]), 0);
        assert_eq!(&ns[78..86], &[1, 1, 2, 0, 0, 0, 0, 0x0c]);
    }
}
