//! Fuzzing with invariants that can fail:
//!
//! * the data plane, through BPF_PROG_TEST_RUN, against a reference model written from
//!   the README's rules: for each of >100k random and mutated frames (truncations, bad
//!   lengths, odd ethertypes, VLAN stacks, ARP/NS variants) the program's action and
//!   frame out must equal the model's; never XDP_ABORTED; a passed frame comes back
//!   byte-identical; only well-formed requests for owned VIPs are answered;
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
use lab::{privileged, Netns};
use vip::{
    dataplane::{action_name, Dataplane},
    frames,
    host::boottime_ns,
    mac::Mac,
};
use vip_common::{action, flags, rng::XorShift64 as Rng, VipEntry};

const SVC: Mac = Mac([0x02, 0, 0, 0, 0, 0x0e]);

/// The table the program holds, as the model sees it.
struct Table {
    v4: HashMap<Ipv4Addr, (VipEntry, bool)>,
    v6: HashMap<Ipv6Addr, (VipEntry, bool)>,
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

/// What the program must do with `f`, per the README: (action, frame out).
fn model(t: &Table, f: &[u8]) -> (u32, Vec<u8>) {
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
    let (sn, sn_mac) = frames::solicited_node(target);
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
        frames::unsolicited_na(OWN, target)
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
        s.push(frames::gratuitous_arp(ACTIVE, ip));
        s.push(frames::udp4(OWN, CLIENT, c4, ip, 4000, 53, b"fuzz"));
        s.push(frames::udp4(ACTIVE, CLIENT, c4, ip, 4000, 53, b"fuzz"));
    }
    let mut v6: Vec<Ipv6Addr> = t.v6.keys().copied().collect();
    v6.push("2001:db8::99".parse().unwrap());
    for ip in v6 {
        s.push(frames::neighbour_solicitation(CLIENT, c6, ip, None));
        s.push(frames::neighbour_solicitation(CLIENT, c6, ip, Some(OWN)));
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
        let (sn, sn_mac) = frames::solicited_node(ip);
        s.push(frames::icmpv6(sn_mac, CLIENT, c6, sn, 255, msg));
    }
    let mut lldp = frames::ethernet(Mac([1, 0x80, 0xc2, 0, 0, 0xe]), CLIENT, 0x88cc);
    lldp.resize(60, 7);
    s.push(lldp);
    s
}

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
    if !privileged() {
        return;
    }
    let ns = Netns::new("fuzz").unwrap();
    ns.ip(&[
        "link", "add", "svc", "type", "veth", "peer", "name", "svc-peer",
    ])
    .unwrap();
    let (n, bad) = ns.run_in(|| {
        let svc = nix::net::if_::if_nametoindex("svc").unwrap();
        let mut dp = Dataplane::load(64).expect("load");
        dp.add_redirect_target(svc).unwrap();
        let mut t = Table { v4: HashMap::new(), v6: HashMap::new() };
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
        let seeds = seeds(&t);
        let mut r = Rng::new(0x5eed_0f51);
        let mut bad = Vec::new();
        let total = 110_000;
        let mut by_action = [0usize; 5];
        for i in 0..total {
            let f = if i < seeds.len() { seeds[i].clone() } else { mutate(&mut r, &seeds) };
            let got = dp.test_run(&f).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on frame {i}: {e}"));
            assert_ne!(got.action, 0, "XDP_ABORTED on {f:02x?}");
            by_action[got.action.min(4) as usize] += 1;
            let (want_action, want_frame) = model(&t, &f);
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
    if !privileged() {
        return;
    }
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
