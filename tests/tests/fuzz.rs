//! Fuzzing with invariants that can fail:
//!
//! * the data plane, through BPF_PROG_TEST_RUN, against a reference model written from
//!   the README's rules: for each of >100k random and mutated frames (truncations, bad
//!   lengths, odd ethertypes, VLAN stacks, ARP/NS variants, the election's port: peers
//!   and strangers, learned MACs, echo probes and replies, IP options, fragments, IPv6
//!   extension headers) the program's action and frame out must equal the model's;
//!   never XDP_ABORTED; a passed frame comes back byte-identical; only well-formed
//!   requests for owned VIPs are answered, only peers' probes reflected;
//! * the control socket of a live agent, with thousands of random and mutated
//!   messages: every one gets an answer, the agent survives, nothing changes.

mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::net::UnixStream,
};

use common::*;
use lab::{frames, privileged, Netns};
use vip::{
    dataplane::{action_name, Dataplane},
    host::boottime_ns,
    mac::Mac,
};
use vip_common::{action, flags, rng::XorShift64 as Rng, VipEntry};

const SVC: Mac = Mac([0x02, 0, 0, 0, 0, 0x0e]);

/// The table the program holds, as the model sees it.
struct Table {
    v4: HashMap<Ipv4Addr, (VipEntry, bool)>,
    v6: HashMap<Ipv6Addr, (VipEntry, bool)>,
    /// The election port's pairs (source, destination; IPv4-mapped for IPv4), with
    /// the peer's MAC once learned. No budgets here (a gap of 0).
    peers: HashMap<([u8; 16], [u8; 16]), Option<Mac>>,
}

/// The election's port.
const PORT: u16 = 4112;
const HOST4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const LEARNED4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 13);
const STRANGER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 14);

/// What the program must do with a frame: its action and frame out, or (for a
/// datagram from a learned peer's address and another MAC, which the trickle lets by
/// one per 100 ms) either passing it untouched or dropping it.
enum Verdict {
    Exactly(u32, Vec<u8>),
    PassOrDrop,
}

fn entry(act: u32, slot: u32, group: u32, ifindex: u32) -> VipEntry {
    VipEntry {
        action: act,
        stats_index: slot,
        group_index: group,
        ifindex,
        own_mac: OWN.0,
        src_mac: if act == action::REDIRECT {
            SVC.0
        } else {
            OWN.0
        },
        dst_mac: match act {
            action::FORWARD => ACTIVE.0,
            action::REDIRECT => TARGET.0,
            _ => [0; 6],
        },
        ..Default::default()
    }
}

/// What the program must do with `f`, per the README.
fn model(t: &Table, f: &[u8]) -> Verdict {
    match model_ip(t, f) {
        Some(v) => v,
        None => {
            let (a, out) = model_l2(t, f);
            Verdict::Exactly(a, out)
        }
    }
}

/// The election's port and the echo on it, for an IP packet not addressed to a VIP;
/// None for everything else.
fn model_ip(t: &Table, f: &[u8]) -> Option<Verdict> {
    let pass = || Some(Verdict::Exactly(XDP_PASS, f.to_vec()));
    // (UDP header offset, plain, source and destination as in PEERS)
    let (l4, plain, src, dst) = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            if f.len() < 34 || f[14] >> 4 != 4 || f[14] & 0xf < 5 || f[23] != 17 {
                return None;
            }
            if t.v4
                .contains_key(&Ipv4Addr::new(f[30], f[31], f[32], f[33]))
            {
                return None;
            }
            let frags = u16::from_be_bytes([f[20], f[21]]);
            if frags & 0x1fff != 0 {
                return None;
            }
            let ihl = (f[14] & 0xf) as usize * 4;
            let mapped = |o: usize| {
                let mut a = [0u8; 16];
                a[10] = 0xff;
                a[11] = 0xff;
                a[12..].copy_from_slice(&f[o..o + 4]);
                a
            };
            (
                14 + ihl,
                ihl == 20 && frags & 0x2000 == 0,
                mapped(26),
                mapped(30),
            )
        }
        0x86dd => {
            if f.len() < 54 || f[14] >> 4 != 6 {
                return None;
            }
            // NS first (the ICMPv6 path), then the VIPs.
            if f[20] == 58
                || t.v6
                    .contains_key(&Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()))
            {
                return None;
            }
            let (mut next, mut off, mut plain) = (f[20], 54usize, true);
            for _ in 0..3 {
                match next {
                    0 | 43 | 60 => {
                        if f.len() < off + 2 {
                            return pass();
                        }
                        next = f[off];
                        off += (f[off + 1] as usize + 1) * 8;
                    }
                    44 => {
                        if f.len() < off + 4 {
                            return pass();
                        }
                        if u16::from_be_bytes([f[off + 2], f[off + 3]]) & 0xfff8 != 0 {
                            return pass();
                        }
                        next = f[off];
                        off += 8;
                    }
                    _ => break,
                }
                plain = false;
            }
            if next != 17 {
                return pass();
            }
            let addr = |o: usize| <[u8; 16]>::try_from(&f[o..o + 16]).unwrap();
            (off, plain, addr(22), addr(38))
        }
        _ => return None,
    };
    if f.len() < l4 + 8 {
        return pass();
    }
    let port = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    let (sport, dport) = (port(l4), port(l4 + 2));
    let b = l4 + 8;
    let body = (plain && f.len() >= b + 44 && f[b..b + 4] == *b"VIPE" && f[b + 4] == 1)
        .then(|| &f[b..b + 44]);
    if dport == PORT {
        let probe = body.is_some_and(|m| m[5] == 1);
        let Some(mac) = t.peers.get(&(src, dst)) else {
            return Some(Verdict::Exactly(XDP_DROP, f.to_vec()));
        };
        let stranger = mac.is_some_and(|m| f[6..12] != m.0);
        if stranger && !probe {
            return Some(Verdict::PassOrDrop);
        }
        if !probe {
            return pass();
        }
        let m = body.unwrap_or_default();
        let entry = match m[6] {
            4 => t.v4.get(&Ipv4Addr::new(m[28], m[29], m[30], m[31])),
            6 => {
                t.v6.get(&Ipv6Addr::from(<[u8; 16]>::try_from(&m[28..44]).unwrap()))
            }
            _ => None,
        };
        let serving = entry.is_some_and(|(e, live)| f[0..6] == e.own_mac && answers(e, *live));
        if !serving {
            return Some(Verdict::Exactly(XDP_DROP, f.to_vec()));
        }
        // Reflected: MACs, addresses and ports swapped, kind 2, checksum patched.
        let mut out = f.to_vec();
        out[0..6].copy_from_slice(&f[6..12]);
        out[6..12].copy_from_slice(&f[0..6]);
        let (a, n) = if f[12] == 0x08 { (26, 4) } else { (22, 16) };
        out[a..a + n].copy_from_slice(&f[a + n..a + 2 * n]);
        out[a + n..a + 2 * n].copy_from_slice(&f[a..a + n]);
        out[l4..l4 + 2].copy_from_slice(&f[l4 + 2..l4 + 4]);
        out[l4 + 2..l4 + 4].copy_from_slice(&f[l4..l4 + 2]);
        out[b + 5] = 2;
        let check = port(l4 + 6);
        if check != 0 {
            // One's-complement: the word (version, kind) went from 0x0101 to 0x0102.
            let mut sum = (!check) as u32 + 0xfefe + 0x0102;
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            let c = match !(sum as u16) {
                0 => 0xffff,
                c => c,
            };
            out[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        }
        return Some(Verdict::Exactly(XDP_TX, out));
    }
    // A reply to a probe of ours: consumed, whatever it says.
    if sport == PORT && body.is_some_and(|m| m[5] == 2) {
        return Some(Verdict::Exactly(XDP_DROP, f.to_vec()));
    }
    pass()
}

/// Everything else, per the README: (action, frame out).
fn model_l2(t: &Table, f: &[u8]) -> (u32, Vec<u8>) {
    let pass = (XDP_PASS, f.to_vec());
    let eth_dst = &f[0..6];
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            if f.len() < 34 || f[14] >> 4 != 4 || f[14] & 0xf < 5 {
                return pass;
            }
            let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
            match t.v4.get(&dst) {
                Some(e) => steer(e, f),
                None => pass,
            }
        }
        0x0806 => {
            if f.len() < 42 {
                return pass;
            }
            let tpa = Ipv4Addr::new(f[38], f[39], f[40], f[41]);
            let Some((e, live)) = t.v4.get(&tpa) else {
                return pass;
            };
            let (spa, sha) = (&f[28..32], &f[22..28]);
            if f[20..22] != [0, 1] || spa == &f[38..42] {
                return pass;
            }
            let well_formed = f[14..16] == [0, 1]
                && f[16..18] == [8, 0]
                && f[18] == 6
                && f[19] == 4
                && sha[0] & 1 == 0
                && (eth_dst == [0xff; 6] || eth_dst == OWN.0);
            if !well_formed || !answers(e, *live) {
                return (XDP_DROP, f.to_vec());
            }
            let mut out = f.to_vec();
            out[0..6].copy_from_slice(sha);
            out[6..12].copy_from_slice(&OWN.0);
            out[20..22].copy_from_slice(&[0, 2]);
            out[32..38].copy_from_slice(sha);
            out[38..42].copy_from_slice(spa);
            out[22..28].copy_from_slice(&OWN.0);
            out[28..32].copy_from_slice(&tpa.octets());
            (XDP_TX, out)
        }
        0x86dd => {
            if f.len() < 54 || f[14] >> 4 != 6 {
                return pass;
            }
            if f[20] == 58 {
                if f.len() < 55 {
                    return pass;
                }
                if f[54] == 135 {
                    return solicitation(t, f);
                }
            }
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap());
            match t.v6.get(&dst) {
                Some(e) => steer(e, f),
                None => pass,
            }
        }
        _ => pass,
    }
}

fn answers(e: &VipEntry, live: bool) -> bool {
    (e.action == action::LOCAL || e.action == action::REDIRECT) && live
}

fn steer((e, live): &(VipEntry, bool), f: &[u8]) -> (u32, Vec<u8>) {
    if f[0..6] != OWN.0 || !live {
        return (XDP_PASS, f.to_vec());
    }
    let mut out = f.to_vec();
    out[0..6].copy_from_slice(&e.dst_mac);
    out[6..12].copy_from_slice(&e.src_mac);
    match e.action {
        action::REDIRECT => (XDP_REDIRECT, out),
        action::FORWARD => (XDP_TX, out),
        _ => (XDP_PASS, f.to_vec()),
    }
}

fn solicitation(t: &Table, f: &[u8]) -> (u32, Vec<u8>) {
    const BASE: usize = 54;
    if f.len() < BASE + 24 {
        return (XDP_PASS, f.to_vec());
    }
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&f[BASE + 8..BASE + 24]).unwrap());
    let Some((e, live)) = t.v6.get(&target) else {
        return (XDP_PASS, f.to_vec());
    };
    let drop = (XDP_DROP, f.to_vec());
    let len = u16::from_be_bytes([f[18], f[19]]) as usize;
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap());
    let unspecified = src.is_unspecified();
    let (sn, sn_mac) = vip::frames::solicited_node(target);
    let to_us = if dst == target {
        f[0..6] == OWN.0
    } else {
        dst == sn && f[0..6] == sn_mac.0
    };
    let shape = f[21] == 255
        && !src.is_multicast()
        && !src.is_loopback()
        && f[BASE + 1] == 0
        && (24..=64).contains(&len)
        && len.is_multiple_of(8)
        && f.len() >= BASE + len
        && to_us
        && (!unspecified || dst != target);
    if !shape || !answers(e, *live) {
        return drop;
    }
    let msg = &f[BASE..BASE + len];
    // Options: each non-empty, ending exactly at the message's end.
    let (mut off, mut sll) = (24, false);
    while off < len {
        let units = msg[off + 1] as usize;
        if units == 0 {
            return drop;
        }
        if msg[off] == 1 {
            // A source link-layer option holds exactly one Ethernet address.
            if units != 1 {
                return drop;
            }
            sll = true;
        }
        off += units * 8;
    }
    if off != len || (unspecified && sll) {
        return drop;
    }
    let mut zeroed = msg.to_vec();
    zeroed[2] = 0;
    zeroed[3] = 0;
    let stored = u16::from_be_bytes([msg[2], msg[3]]) as u32;
    let computed = !frames::icmpv6_checksum(src, dst, &zeroed) as u32;
    let mut sum = computed + stored;
    sum = (sum & 0xffff) + (sum >> 16);
    if sum & 0xffff != 0xffff {
        return drop;
    }
    let out = if unspecified {
        vip::frames::unsolicited_na(OWN, target)
    } else {
        frames::neighbour_advertisement(Mac(f[6..12].try_into().unwrap()), OWN, target, src, true)
    };
    (XDP_TX, out)
}

/// Valid frames of every kind the program handles, the seeds of the mutations.
fn seeds(t: &Table) -> Vec<Vec<u8>> {
    let c4 = Ipv4Addr::new(10, 0, 0, 12);
    let c6: Ipv6Addr = "2001:db8::12".parse().unwrap();
    let mut s = Vec::new();
    let mut v4: Vec<Ipv4Addr> = t.v4.keys().copied().collect();
    v4.push(Ipv4Addr::new(10, 0, 0, 99));
    for ip in v4 {
        s.push(frames::arp_request(CLIENT, c4, ip));
        s.push(frames::arp(
            OWN,
            frames::ARP_REQUEST,
            CLIENT,
            c4,
            Mac::ZERO,
            ip,
        ));
        s.push(frames::arp_request(CLIENT, Ipv4Addr::UNSPECIFIED, ip));
        s.push(frames::arp(OWN, frames::ARP_REPLY, CLIENT, c4, OWN, ip));
        s.push(vip::frames::gratuitous_arp(ACTIVE, ip));
        s.push(frames::udp4(OWN, CLIENT, c4, ip, 4000, 53, b"fuzz"));
        s.push(frames::udp4(ACTIVE, CLIENT, c4, ip, 4000, 53, b"fuzz"));
    }
    let mut v6: Vec<Ipv6Addr> = t.v6.keys().copied().collect();
    v6.push("2001:db8::99".parse().unwrap());
    for ip in v6 {
        s.push(frames::neighbour_solicitation(CLIENT, c6, ip, None));
        s.push(frames::neighbour_solicitation(CLIENT, c6, ip, Some(OWN.0)));
        s.push(frames::neighbour_solicitation(
            CLIENT,
            Ipv6Addr::UNSPECIFIED,
            ip,
            None,
        ));
        s.push(frames::neighbour_advertisement(OWN, CLIENT, c6, ip, true));
        s.push(frames::udp6(OWN, CLIENT, c6, ip, 4000, 53, b"fuzz"));
        // An NS with a nonce option (RFC 7527 style): 24 + 8 + 8 bytes.
        let mut msg = frames::neighbour_solicitation(CLIENT, c6, ip, None)[54..].to_vec();
        msg.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
        let (sn, sn_mac) = vip::frames::solicited_node(ip);
        s.push(frames::icmpv6(sn_mac, CLIENT, c6, sn, 255, msg));
    }
    let mut lldp = frames::ethernet(Mac([1, 0x80, 0xc2, 0, 0, 0xe]), CLIENT, 0x88cc);
    lldp.resize(60, 7);
    s.push(lldp);
    s
}

/// The election's port: from a peer (MAC unknown), a learned peer (its MAC and
/// another) and a stranger, advertisements, probes for every VIP, replies, with IP
/// options, as fragments, behind IPv6 extension headers.
fn election_seeds(t: &Table) -> Vec<Vec<u8>> {
    use vip::echo::encode;
    use vip_common::echo;
    let c4 = Ipv4Addr::new(10, 0, 0, 12);
    let (c6, h6): (Ipv6Addr, Ipv6Addr) = (
        "2001:db8::12".parse().unwrap(),
        "2001:db8::11".parse().unwrap(),
    );
    let (l6, x6): (Ipv6Addr, Ipv6Addr) = (
        "2001:db8::13".parse().unwrap(),
        "2001:db8::14".parse().unwrap(),
    );
    let advert = b"VIPA\x02\x04 a hello that the agent would judge, long enough".to_vec();
    let mut payloads = vec![advert];
    let vips: Vec<IpAddr> =
        t.v4.keys()
            .map(|a| IpAddr::V4(*a))
            .chain(t.v6.keys().map(|a| IpAddr::V6(*a)))
            .collect();
    for (i, vip) in vips.iter().enumerate() {
        payloads.push(encode(1, echo::token(ECHO_KEY, i as u64 + 1), i as u64 + 1, *vip).to_vec());
    }
    let mut s = Vec::new();
    for p in &payloads {
        let reply = {
            let mut r = p.clone();
            if r.len() > 5 {
                r[5] = 2;
            }
            r
        };
        for (src, mac) in [
            (c4, CLIENT),
            (LEARNED4, ACTIVE),
            (LEARNED4, CLIENT),
            (STRANGER4, CLIENT),
        ] {
            let f = frames::udp4(OWN, mac, src, HOST4, 40000, PORT, p);
            s.push(options(&f));
            s.push(fragmented(&f, 0, true));
            s.push(fragmented(&f, 16, false));
            s.push(f);
            s.push(frames::udp4(OWN, mac, src, HOST4, PORT, 40000, &reply));
        }
        for (src, mac) in [(c6, CLIENT), (l6, ACTIVE), (l6, CLIENT), (x6, CLIENT)] {
            let f = frames::udp6(OWN, mac, src, h6, 40000, PORT, p);
            for kind in [0, 43, 44, 60] {
                s.push(extension(&f, kind));
            }
            s.push(f);
            s.push(frames::udp6(OWN, mac, src, h6, PORT, 40000, &reply));
        }
    }
    s
}

/// IPv4 with 4 bytes of options (NOP NOP NOP EOL).
fn options(f: &[u8]) -> Vec<u8> {
    let mut out = f[..34].to_vec();
    out.extend_from_slice(&[1, 1, 1, 0]);
    out.extend_from_slice(&f[34..]);
    out[14] = 0x46;
    out
}

/// IPv4 with its fragment field set (offset in 8-byte units).
fn fragmented(f: &[u8], offset: u16, more: bool) -> Vec<u8> {
    let mut out = f.to_vec();
    let v = offset | if more { 0x2000 } else { 0 };
    out[20..22].copy_from_slice(&v.to_be_bytes());
    out
}

/// IPv6 with one 8-byte extension header of `kind` before the UDP header.
fn extension(f: &[u8], kind: u8) -> Vec<u8> {
    let mut out = f[..54].to_vec();
    out.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 0]);
    out.extend_from_slice(&f[54..]);
    out[20] = kind;
    out
}

/// The key of the echo slot the fuzzer's data plane holds (the learned peer's).
const ECHO_KEY: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];

/// One mutation of a seed, or a random frame.
fn mutate(r: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if r.below(20) == 0 {
        let n = 14 + r.below(120);
        return (0..n).map(|_| r.byte()).collect();
    }
    let mut f = seeds[r.below(seeds.len())].clone();
    for _ in 0..r.below(4) {
        match r.below(7) {
            0..=2 => {
                let i = r.below(f.len().min(96));
                f[i] = r.byte();
            }
            3 => {
                let keep = 14 + r.below(f.len() - 13);
                f.truncate(keep);
            }
            4 => {
                for _ in 0..r.below(64) {
                    f.push(r.byte());
                }
            }
            5 => {
                let et: [u8; 2] = match r.below(6) {
                    0 => [8, 0],
                    1 => [8, 6],
                    2 => [0x86, 0xdd],
                    3 => [0x81, 0],
                    4 => [0x88, 0xa8],
                    _ => [r.byte(), r.byte()],
                };
                f[12..14].copy_from_slice(&et);
            }
            _ => {
                // A stack of 1-3 VLAN tags.
                for _ in 0..1 + r.below(3) {
                    let tpid = if r.below(2) == 0 {
                        [0x81, 0]
                    } else {
                        [0x88, 0xa8]
                    };
                    let tag = [tpid[0], tpid[1], r.byte() & 0x0f, r.byte()];
                    f.splice(12..12, tag);
                }
            }
        }
    }
    if f.len() < 14 {
        f.resize(14, 0);
    }
    f
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn data_plane_matches_its_model_on_100k_frames() {
    privileged();
    let ns = Netns::new("fuzz").unwrap();
    ns.ip(&[
        "link", "add", "svc", "type", "veth", "peer", "name", "svc-peer",
    ])
    .unwrap();
    let (n, bad) = ns.run_in(|| {
        use vip_common::{peers::v4_mapped, EchoSeen, Peer, PeerKey, Settings};
        let svc = nix::net::if_::if_nametoindex("svc").unwrap();
        let settings = Settings { echo_port: PORT as u32, ..Settings::default() };
        let mut dp = Dataplane::open(64, None, settings).expect("load");
        dp.add_redirect_target(svc).unwrap();
        let mut t = Table { v4: HashMap::new(), v6: HashMap::new(), peers: HashMap::new() };
        let v6a = |s: &str| s.parse::<Ipv6Addr>().unwrap().octets();
        let (h4, h6) = (v4_mapped(HOST4.octets()), v6a("2001:db8::11"));
        t.peers.insert((v4_mapped([10, 0, 0, 12]), h4), None);
        t.peers.insert((v4_mapped(LEARNED4.octets()), h4), Some(ACTIVE));
        t.peers.insert((v6a("2001:db8::12"), h6), None);
        t.peers.insert((v6a("2001:db8::13"), h6), Some(ACTIVE));
        for ((src, dst), mac) in &t.peers {
            let p = Peer {
                mac: mac.unwrap_or(Mac::ZERO).0,
                mac_known: u8::from(mac.is_some()),
                probe_gap_ns: 0,
                datagram_gap_ns: 0,
                ..Peer::default()
            };
            dp.set_peer(&PeerKey { src: *src, dst: *dst }, &p).unwrap();
        }
        let mut peer = [0u8; 16];
        peer[..4].copy_from_slice(&LEARNED4.octets());
        let slot = EchoSeen { key: ECHO_KEY, peer, peer_mac: ACTIVE.0, family: 4, ..EchoSeen::default() };
        dp.echo_seen().unwrap().set(1, slot, 0).unwrap();
        let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        t.v4.insert(v4("10.0.0.50"), (entry(action::LOCAL, 0, 0, 0), true));
        t.v4.insert(v4("10.0.0.51"), (entry(action::REDIRECT, 1, 0, svc), true));
        t.v4.insert(v4("10.0.0.52"), (entry(action::FORWARD, 2, 0, 0), true));
        t.v4.insert(v4("10.0.0.53"), (entry(action::NONE, 3, 0, 0), true));
        let mut live = entry(action::LOCAL, 4, 1, 0);
        live.flags = flags::LEASED;
        let mut dead = entry(action::LOCAL, 5, 2, 0);
        dead.flags = flags::LEASED;
        t.v4.insert(v4("10.0.0.54"), (live, true));
        t.v4.insert(v4("10.0.0.55"), (dead, false));
        t.v6.insert(v6("2001:db8::50"), (entry(action::LOCAL, 6, 0, 0), true));
        t.v6.insert(v6("2001:db8::52"), (entry(action::FORWARD, 7, 0, 0), true));
        t.v6.insert(v6("2001:db8::51"), (entry(action::REDIRECT, 8, 0, svc), true));
        dp.grant_lease(1, boottime_ns() + 600_000_000_000).unwrap();
        dp.grant_lease(2, 1).unwrap();
        for (ip, (e, _)) in &t.v4 {
            dp.set_vip(IpAddr::V4(*ip), e).unwrap();
        }
        for (ip, (e, _)) in &t.v6 {
            dp.set_vip(IpAddr::V6(*ip), e).unwrap();
        }
        // A third of the mutations start from the election port's seeds (there are
        // many of them), the rest from the others, as before those existed.
        let (classic, election) = (seeds(&t), election_seeds(&t));
        let seeds: Vec<Vec<u8>> = classic.iter().chain(&election).cloned().collect();
        let mut r = Rng::new(0x5eed_0f51);
        let mut bad = Vec::new();
        let total = 110_000;
        let mut by_action = [0usize; 5];
        // Datagrams from a learned peer's address and another MAC: (passed, all).
        let mut trickle = (0u64, 0u64);
        let start = std::time::Instant::now();
        for i in 0..total {
            let f = if i < seeds.len() {
                seeds[i].clone()
            } else {
                let pool = if r.below(3) == 0 { &election } else { &classic };
                mutate(&mut r, pool)
            };
            let got = dp.test_run(&f).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on frame {i}: {e}"));
            assert_ne!(got.action, 0, "XDP_ABORTED on {f:02x?}");
            by_action[got.action.min(4) as usize] += 1;
            let (want_action, want_frame) = match model(&t, &f) {
                Verdict::Exactly(a, out) => (a, out),
                Verdict::PassOrDrop => {
                    trickle.1 += 1;
                    if got.action == XDP_PASS {
                        trickle.0 += 1;
                    }
                    let a = if got.action == XDP_PASS { XDP_PASS } else { XDP_DROP };
                    (a, f.clone())
                }
            };
            if got.action != want_action || got.frame != want_frame {
                if bad.len() < 5 {
                    bad.push(format!(
                        "frame {i}: got {} want {}\n  in   {f:02x?}\n  got  {:02x?}\n  want {want_frame:02x?}",
                        action_name(got.action),
                        action_name(want_action),
                        got.frame
                    ));
                } else {
                    bad.push(String::new());
                }
            }
        }
        eprintln!(
            "fuzzed {total} frames: XDP_PASS {} XDP_DROP {} XDP_TX {} XDP_REDIRECT {}",
            by_action[2], by_action[1], by_action[3], by_action[4]
        );
        // The mutations must reach every outcome, or the fuzzing proves little.
        assert!(by_action[1] > 100 && by_action[3] > 100 && by_action[4] > 10, "{by_action:?}");
        // The trickle: at most one datagram from another MAC per 100 ms passed, for
        // each of the two learned peers (IPv4 and IPv6).
        let allowed = 2 * (1 + start.elapsed().as_millis() as u64 / 100);
        eprintln!("from a learned peer's address and another MAC: {} of {} passed", trickle.0, trickle.1);
        assert!(trickle.1 > 100 && trickle.0 <= allowed, "{trickle:?}, at most {allowed}");
        let g: HashMap<_, _> = dp.global_stats().unwrap().into_iter().collect();
        eprintln!("election port: {} not peers, {} wrong MAC, {} probes reflected, {} replies refused",
            g["election_not_peer"], g["election_wrong_mac"], g["echo_answered"], g["echo_reply_refused"]);
        assert!(g["election_not_peer"] > 100 && g["echo_answered"] > 100, "{g:?}");
        (total, bad)
    });
    assert!(
        bad.is_empty(),
        "{} of {n} frames disagree with the model:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn control_socket_survives_random_messages() {
    privileged();
    let lan = lan();
    let a = agent(&lan, "a", &config("a", &["10.0.0.50/24"], "active", ""));
    let snapshot = |a: &lab::Agent| {
        let mut s = a.status().unwrap();
        s["global"] = 0.into();
        s
    };
    let before = snapshot(&a);
    let valid = [
        r#"{"command":"status"}"#,
        r#"{"command":"promote","group":"web"}"#,
        r#"{"command":"demote","group":"web","forward_to":"02:00:00:00:00:0b"}"#,
        r#"{"command":"notify","kind":"INSTANCE","name":"VI_1","state":"MASTER"}"#,
    ];
    let mut r = Rng::new(0xc0ffee);
    let mut answered = 0;
    let n = 3000;
    for i in 0..n {
        let msg: Vec<u8> = match r.below(4) {
            0 => (0..r.below(300)).map(|_| r.byte()).collect(),
            1 => {
                let mut m = valid[r.below(valid.len())].as_bytes().to_vec();
                for _ in 0..1 + r.below(3) {
                    let k = r.below(m.len());
                    m[k] = r.byte();
                }
                m
            }
            2 => {
                let m = valid[r.below(valid.len())].as_bytes();
                m[..r.below(m.len())].to_vec()
            }
            _ => format!(
                r#"{{"command":"{}","group":"{}"}}"#,
                ["promote", "demote", "resume", "x"][r.below(4)],
                ["nosuch", "", "\u{0}"][r.below(3)]
            )
            .into_bytes(),
        };
        // Random messages may not demote the only group: status and unknown groups only.
        if String::from_utf8_lossy(&msg).contains("\"web\"") {
            continue;
        }
        let mut s = UnixStream::connect(&a.socket)
            .unwrap_or_else(|e| panic!("message {i}: agent gone? {e}"));
        s.write_all(&msg).unwrap();
        let _ = s.write_all(b"\n");
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("message {i}: unreadable answer {out:?}: {e}"));
        assert!(v["ok"].is_boolean());
        answered += 1;
    }
    eprintln!("sent {answered} random control messages, each answered");
    assert!(answered > n / 2);
    assert_eq!(
        snapshot(&a),
        before,
        "random messages changed the agent's state"
    );
    drop(a);
    teardown(lan);
}

/// The tunnel under mutation: a member whose director is on another segment, and
/// 50,000 frames mutated from IPIP seeds (from the director, from a stranger, to
/// a non-VIP, with options, fragments, IPv6 inside) and from a client's datagram to
/// the VIP. Whatever a frame holds:
/// * never XDP_ABORTED;
/// * XDP_PASS hands the kernel the frame as it came, or its inner packet exactly
///   (the outer header taken off, the Ethernet header kept) and then only an IPv4
///   packet to the balanced VIP, from the director's address, to our address and
///   MAC: nothing else comes out of the tunnel;
/// * XDP_TX sends only the frame's own IP packet inside IPIP from our address to the
///   director (valid header checksum, DF), or ICMP "fragmentation needed" for it,
///   both to the router.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn the_tunnel_lets_out_only_a_balanced_vips_packets_from_its_nodes() {
    privileged();
    let ns = Netns::new("fuzz-tunnel").unwrap();
    ns.run_in(tunnel_fuzz);
}

fn tunnel_fuzz() {
    use vip_common::{balance_maps, BalanceNode};
    let me = Ipv4Addr::new(10, 0, 0, 11);
    let director = Ipv4Addr::new(10, 0, 1, 10);
    let vip = Ipv4Addr::new(203, 0, 113, 80);
    let router = Mac([0x02, 0, 0, 0, 0, 0x20]);
    let settings = vip_common::Settings {
        balance_enabled: 1,
        tunnel_src: u32::from_ne_bytes(me.octets()),
        ..vip_common::Settings::default()
    };
    let mut dp = Dataplane::open(64, None, settings).expect("loading the data plane with a tunnel");
    let mut member = entry(action::FORWARD, 0, 0, 0);
    member.flags = flags::BALANCED;
    member.ifindex = 1;
    dp.set_vip(IpAddr::V4(vip), &member).unwrap();
    let node = BalanceNode {
        tunnel: director.octets(),
        next_hop: router.0,
        mtu: 1500,
        row: 0,
        ..Default::default()
    };
    let key = u32::from_ne_bytes(director.octets());
    dp.set_balance_nodes(
        1,
        &[],
        &[
            (balance_maps::node_key(1, &ACTIVE.0), node),
            (balance_maps::tunnel_key(1, key), node),
        ],
    )
    .unwrap();
    let ipip = |inner: &[u8], src: Ipv4Addr, dst: Ipv4Addr| {
        let mut f = frames::ethernet(OWN.0, router.0, 0x0800);
        let t = (inner.len() as u16 - 14 + 20).to_be_bytes();
        f.extend_from_slice(&[0x45, 0, t[0], t[1], 0, 0, 0x40, 0, 64, 4, 0, 0]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&inner[14..]);
        frames::ipv4_checksum(&mut f);
        f
    };
    let client = Ipv4Addr::new(198, 51, 100, 10);
    let udp = |dst| frames::udp4(OWN, router, client, dst, 40000, 5000, b"payload");
    let tcp = frames::tcp4(OWN, router, client, vip, 40001, 80, 0x10, &[], b"GET");
    let seeds = vec![
        ipip(&udp(vip), director, me),
        ipip(&tcp, director, me),
        ipip(&udp(vip), Ipv4Addr::new(10, 0, 1, 99), me),
        ipip(&udp(Ipv4Addr::new(10, 0, 0, 99)), director, me),
        frames::with_ip_options(&ipip(&udp(vip), director, me)),
        frames::fragment(&ipip(&udp(vip), director, me), 0, true),
        ipip(
            &frames::udp6(
                OWN,
                router,
                "2001:db8::1".parse().unwrap(),
                "2001:db8::80".parse().unwrap(),
                1,
                2,
                b"x",
            ),
            director,
            me,
        ),
        udp(vip),
        frames::udp4(OWN, router, client, vip, 40002, 5000, &[7u8; 1472]),
    ];
    let valid_header = |h: &[u8]| {
        h.len() >= 20 && vip_common::csum::csum_fold(frames::csum_add(0, &h[..20])) == 0xffff
    };
    let mut r = Rng::new(0x7u64 << 40 | 0x7e57);
    let mut bad = Vec::new();
    let mut by = HashMap::<&str, usize>::new();
    for i in 0..50_000 {
        let f = if i < seeds.len() {
            seeds[i].clone()
        } else {
            let mut f = seeds[r.below(seeds.len())].clone();
            for _ in 0..1 + r.below(3) {
                match r.below(4) {
                    0 | 1 if f.len() > 14 => {
                        let at = 14 + r.below((f.len() - 14).min(60));
                        f[at] = r.byte();
                    }
                    2 => {
                        let keep = 14 + r.below(f.len() - 13);
                        f.truncate(keep);
                    }
                    // A mutated header made valid again, so the checks behind the
                    // checksum's (the kernel's) are reached too.
                    3 if f.len() > 14 && f.len() >= 14 + ((f[14] & 0x0f) as usize * 4).max(20) => {
                        frames::ipv4_checksum(&mut f)
                    }
                    _ => {}
                }
            }
            if f.len() < 14 {
                f.resize(14, 0);
            }
            f
        };
        let got = dp
            .test_run(&f)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on frame {i}: {e}"));
        let out = &got.frame;
        let verdict = match got.action {
            XDP_PASS if *out == f => Ok("passed untouched"),
            XDP_PASS => {
                // Only the inner packet of IPIP from the director to us, an IPv4
                // packet to the VIP, behind the frame's own Ethernet header.
                let decapsulated = f.len() >= 34
                    && out.len() + 20 == f.len()
                    && out[..14] == f[..14]
                    && out[14..] == f[34..];
                let outer_ok = f.len() >= 34
                    && f[14] == 0x45
                    && f[23] == 4
                    && f[26..30] == director.octets()
                    && f[30..34] == me.octets()
                    && f[0..6] == OWN.0;
                let inner_ok = out.len() >= 34 && out[14] >> 4 == 4 && out[30..34] == vip.octets();
                if decapsulated && outer_ok && inner_ok {
                    Ok("decapsulated, delivered")
                } else {
                    Err("passed a changed frame that is not a balanced VIP's packet out of the director's tunnel")
                }
            }
            XDP_DROP => Ok("dropped"),
            XDP_TX => {
                let tunnelled = out.len() == f.len() + 20
                    && out[0..6] == router.0
                    && out[6..12] == OWN.0
                    && valid_header(&out[14..])
                    && out[23] == 4
                    && out[20] & 0x40 != 0
                    && out[26..30] == me.octets()
                    && out[30..34] == director.octets()
                    && out[34..] == f[14..];
                let icmp = out.len() == 70
                    && out[0..6] == router.0
                    && out[6..12] == OWN.0
                    && out[23] == 1
                    && out[34] == 3
                    && out[35] == 4
                    && valid_header(&out[14..])
                    && out[42..70] == f[14..42]
                    && vip_common::csum::csum_fold(frames::csum_add(0, &out[34..70])) == 0xffff;
                if tunnelled {
                    Ok("into the tunnel")
                } else if icmp {
                    Ok("fragmentation needed")
                } else {
                    Err("sent a frame that is neither the packet in IPIP to the director nor fragmentation needed")
                }
            }
            _ => Err("an action the tunnel never takes"),
        };
        match verdict {
            Ok(what) => *by.entry(what).or_default() += 1,
            Err(why) => {
                if bad.len() < 5 {
                    bad.push(format!(
                        "{why}: {} on\n  {f:02x?}\n  out {out:02x?}",
                        action_name(got.action)
                    ));
                }
            }
        }
    }
    eprintln!("tunnel fuzz: {by:?}");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    for what in [
        "decapsulated, delivered",
        "into the tunnel",
        "fragmentation needed",
        "dropped",
    ] {
        assert!(
            by.get(what).is_some_and(|n| *n > 0),
            "no frame was {what}: {by:?}"
        );
    }
}
