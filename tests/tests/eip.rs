//! Elastic IPs end to end: an "internet" client reaches the service through the EIP
//! on a gateway; the active server fails; the client reaches the standby through the
//! same EIP. Documentation ranges only, inside the test's own namespaces.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

use common::*;
use lab::{outage, privileged, wait_for, Agent, Capture, Lan, Netns, Prober, Responder};

const EIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// Servers a and b and gateway g on the internal bridge; internet host i behind g.
fn topology() -> (Lan, Netns) {
    let mut lan = Lan::new(&["a", "b", "g"]).unwrap();
    lan.enable_xdp_tx(&["a", "b", "g"]).unwrap();
    let i = lan.internet("g", &["a", "b"]).unwrap();
    (lan, i)
}

const GATEWAY: &str = "[node]\nname = \"g\"\ninterface = \"eth0\"\n\n[[eip]]\naddress = \"203.0.113.10\"\nvip = \"10.0.0.50\"\nexternal_interface = \"eth1\"\ninternal_interface = \"eth0\"\n";

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn the_internet_reaches_the_service_through_the_eip_across_a_failover() {
    privileged();
    let (lan, inet) = topology();
    let a = start_elected(&lan, "a", &["a", "b"], 200, "");
    let b = start_elected(&lan, "b", &["a", "b"], 100, "");
    assert!(wait_for(Duration::from_secs(5), || (state(&a) == "active"
        && state(&b) == "standby")
        .then_some(()))
    .is_some());
    let g = Agent::start(&lan.host("g").ns, "g", GATEWAY).unwrap();
    let to: SocketAddr = (EIP, 7007).into();
    let _ra = Responder::start(&lan.host("a").ns, (VIP4, 7007).into(), "a").unwrap();
    let _rb = Responder::start(&lan.host("b").ns, (VIP4, 7007).into(), "b").unwrap();

    // The gateway learns the owner from ARP (here: a's kernel resolving the gateway, or
    // a's next announcement); meanwhile the kernel's neighbour table is the fallback.
    assert!(
        ping(&inet, &EIP.to_string()),
        "ping through the EIP failed:\n{}",
        g.log_text()
    );
    let cap = Capture::open(&inet, "eth0").unwrap();
    cap.clear();

    // TCP and UDP through the EIP.
    let listener = lab_listen(&lan.host("a").ns, (VIP4, 8080).into());
    assert_eq!(
        tcp_round_trip(&inet, listener, (EIP, 8080).into()),
        "hello vip"
    );

    // A datagram that must be fragmented arrives whole (every fragment translated,
    // the first one's UDP checksum updated).
    let big = udp_bind(&lan.host("a").ns, (VIP4, 7008).into());
    inet.run_in(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let payload: Vec<u8> = (0..3000u32).map(|x| x as u8).collect();
        s.send_to(&payload, (EIP, 7008)).unwrap();
    });
    let mut buf = vec![0u8; 4000];
    let (n, from) = big
        .recv_from(&mut buf)
        .expect("the fragmented datagram did not arrive");
    assert_eq!(n, 3000);
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10))
    );
    assert!(buf[..n].iter().enumerate().all(|(k, b)| *b == k as u8));

    // An ICMP error quoting the VIP reaches the client translated: its connected
    // socket sees the port unreachable.
    let refused = inet.run_in(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect((EIP, 9)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send(b"anyone?").unwrap();
        s.recv(&mut [0u8; 16]).map_err(|e| e.kind())
    });
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "the ICMP error was not translated back"
    );

    // Nothing on the internet side ever carries the VIP.
    let seen = cap.collect(Duration::from_millis(100), |_| true);
    let vip = VIP4.octets();
    assert!(
        !seen.iter().any(|f| f.windows(4).any(|w| w == vip)),
        "the VIP leaked to the internet side"
    );

    // Failover under probes: a loses its link; b takes over; the gateway follows.
    let prober = Prober::start(&inet, to, Duration::from_millis(1)).unwrap();
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(3)),
        "the internet client never reached a through the EIP"
    );
    let owner = |g: &Agent| {
        g.status().unwrap()["eips"][0]["owner"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        wait_for(Duration::from_secs(2), || (owner(&g) == lan.host("a").mac)
            .then_some(()))
        .is_some(),
        "gateway never learned a"
    );
    lan.host("a")
        .ns
        .ip(&["link", "set", "eth0", "down"])
        .unwrap();
    assert!(wait_for(Duration::from_secs(3), || (state(&b) == "active")
        .then_some(()))
    .is_some());
    assert!(
        prober.wait_answers("b", 200, Duration::from_secs(3)),
        "the internet client never reached b through the EIP"
    );
    let probes = prober.finish();
    let o = outage(&probes, "a", "b").expect("the internet client never reached b through the EIP");
    eprintln!(
        "EIP failover (link down, {INTERVAL} ms adverts): outage {:.1} ms, {} probes lost",
        o.outage.as_secs_f64() * 1e3,
        o.lost
    );
    assert!(
        o.outage < Duration::from_millis(INTERVAL * 4 + 200),
        "{o:?}"
    );
    assert_eq!(owner(&g), lan.host("b").mac);
    let e = &g.status().unwrap()["eips"][0];
    assert!(
        e["in_packets"].as_u64().unwrap() > 100 && e["out_packets"].as_u64().unwrap() > 100,
        "{e}"
    );
    assert!(e["owner_changes"].as_u64().unwrap() >= 2, "{e}");
    // On an external segment where the EIP is on-link, ARP for it is answered by the
    // gateway's external interface.
    let cap = Capture::open(&inet, "eth0").unwrap();
    cap.clear();
    let me = mac(&inet.mac("eth0").unwrap());
    cap.send(&vip::frames::arp_request(
        me,
        Ipv4Addr::new(198, 51, 100, 10),
        EIP,
    ))
    .unwrap();
    let replies = arp_replies_for(&cap.collect(WINDOW, |_| true), EIP);
    assert_eq!(replies, vec![mac(&lan.host("g").ns.mac("eth1").unwrap())]);
    assert_eq!(g.status().unwrap()["eips"][0]["arp_replies"], 1);
    drop((a, b, g));
    drop(lan);
    drop(inet);
}

fn lab_listen(ns: &Netns, addr: SocketAddr) -> TcpListener {
    ns.run_in(|| TcpListener::bind(addr)).expect("listen")
}
