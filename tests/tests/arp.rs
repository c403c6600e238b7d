//! ARP for VIPs, with the client's real kernel neighbour code and arping: only the
//! active answers, exactly once; standbys are silent; malformed requests are never
//! answered; non-VIP ARP is the kernel's.

mod common;

use std::net::Ipv4Addr;

use common::*;
use lab::{frames, privileged, Capture};

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn client_kernel_learns_the_active_mac_and_arping_gets_one_answer() {
    privileged();
    let lan = lan();
    let (a, b, c) = (lan.host("a"), lan.host("b"), lan.host("c"));
    let _active = agent(&lan, "a", &config("a", &["10.0.0.50/24"], "active", ""));
    let standby = agent(&lan, "b", &config("b", &["10.0.0.50/24"], "standby", ""));

    // The kernel's own neighbour code resolves the VIP to the active's MAC.
    assert!(ping(&c.ns, VIP), "client cannot ping the VIP");
    assert_eq!(
        kernel_neighbour(&c.ns, VIP).as_deref(),
        Some(a.mac.as_str())
    );

    // arping: one answer per request, every one from the active.
    let out =
        c.ns.output(&["arping", "-c", "3", "-i", "eth0", VIP])
            .expect("arping");
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = text.lines().filter(|l| l.contains("bytes from")).collect();
    assert_eq!(answers.len(), 3, "arping output:\n{text}");
    assert!(
        answers.iter().all(|l| l.contains(&a.mac)),
        "an answer not from the active:\n{text}"
    );
    assert!(!text.contains(&b.mac));

    // On the wire: exactly one reply to one request.
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    cap.clear();
    cap.send(&frames::arp_request(mac(&c.mac), c.ip4, VIP4))
        .unwrap();
    let replies = arp_replies_for(&cap.collect(WINDOW, |_| true), VIP4);
    assert_eq!(replies, vec![mac(&a.mac)]);
    assert_eq!(counter(&standby, VIP, "arp_replies"), 0);
    drop((_active, standby));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn standby_stays_silent() {
    privileged();
    let lan = lan();
    let c = lan.host("c");
    let standby = agent(&lan, "b", &config("b", &["10.0.0.50/24"], "standby", ""));
    let out =
        c.ns.output(&["arping", "-c", "2", "-i", "eth0", VIP])
            .expect("arping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("bytes from"), "a standby answered:\n{text}");
    assert!(!ping(&c.ns, VIP));
    assert_eq!(counter(&standby, VIP, "arp_replies"), 0);
    let not_answered = standby.status().unwrap()["global"]["not_answered"]
        .as_u64()
        .unwrap();
    assert!(
        not_answered >= 2,
        "requests were not seen by the data plane: {not_answered}"
    );
    drop(standby);
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn malformed_arp_is_never_answered() {
    privileged();
    let lan = lan();
    let c = lan.host("c");
    let a = lan.host("a");
    let active = agent(&lan, "a", &config("a", &["10.0.0.50/24"], "active", ""));
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    let me = mac(&c.mac);
    let good = frames::arp_request(me, c.ip4, VIP4);

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("truncated before the target IP", good[..34].to_vec()));
    let mut f = good.clone();
    f[18] = 5;
    cases.push(("hardware length 5", f));
    let mut f = good.clone();
    f[19] = 6;
    cases.push(("protocol length 6", f));
    let mut f = good.clone();
    f[14..16].copy_from_slice(&[1, 0]);
    cases.push(("hardware type 256", f));
    let mut f = good.clone();
    f[16..18].copy_from_slice(&[0x86, 0xdd]);
    cases.push(("protocol type IPv6", f));
    cases.push((
        "a reply",
        frames::arp(
            mac("ff:ff:ff:ff:ff:ff"),
            frames::ARP_REPLY,
            me,
            c.ip4,
            vip::mac::Mac::ZERO,
            VIP4,
        ),
    ));
    let mut f = good.clone();
    f[20..22].copy_from_slice(&[0, 3]);
    cases.push(("opcode 3 (RARP)", f));
    cases.push((
        "gratuitous (sender IP = VIP)",
        vip::frames::gratuitous_arp(me, VIP4),
    ));
    let mut f = good.clone();
    f[22..28].copy_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
    cases.push(("multicast sender MAC", f));
    let mut f = good.clone();
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    cases.push(("unicast to another MAC", f));
    let mut f = good[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    f.extend_from_slice(&good[12..]);
    cases.push(("802.1Q tagged", f));

    for (what, frame) in &cases {
        cap.clear();
        cap.send(frame).unwrap();
        let replies = arp_replies_for(&cap.collect(WINDOW, |_| true), VIP4);
        assert!(replies.is_empty(), "{what}: answered by {replies:?}");
    }
    assert_eq!(
        counter(&active, VIP, "arp_replies"),
        0,
        "the data plane answered a malformed request"
    );

    // Well-formed variants are answered: trailing padding, and an ARP probe (RFC 5227,
    // sender 0.0.0.0), which is answered to defend the address.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0u8; 100]);
    let probe = frames::arp_request(me, Ipv4Addr::UNSPECIFIED, VIP4);
    for (what, frame) in [("padded request", padded), ("ARP probe", probe)] {
        cap.clear();
        cap.send(&frame).unwrap();
        let replies = arp_replies_for(&cap.collect(WINDOW, |_| true), VIP4);
        assert_eq!(replies, vec![mac(&a.mac)], "{what}");
    }
    assert_eq!(counter(&active, VIP, "arp_replies"), 2);
    drop(active);
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn non_vip_arp_and_traffic_are_the_kernels() {
    privileged();
    let lan = lan();
    let (a, c) = (lan.host("a"), lan.host("c"));
    let active = agent(&lan, "a", &config("a", &["10.0.0.50/24"], "active", ""));
    // The kernel answers for a's real address and carries its traffic.
    let real = a.ip4.to_string();
    assert!(ping(&c.ns, &real));
    assert_eq!(
        kernel_neighbour(&c.ns, &real).as_deref(),
        Some(a.mac.as_str())
    );
    assert!(c
        .ns
        .output(&["ping", "-6", "-c", "1", "-W", "2", &a.ip6.to_string()])
        .unwrap()
        .status
        .success());
    let sock = udp_bind(&a.ns, (a.ip4, 5001).into());
    udp_send(&c.ns, (a.ip4, 5001).into(), 20, 100);
    assert_eq!(udp_count(&sock, 20), 20);
    // None of it touched the VIP's counters.
    let v = active.vip_status(VIP).unwrap();
    assert_eq!(v["rx_packets"], 0);
    assert_eq!(v["arp_replies"], 0);
    drop(active);
    teardown(lan);
}
