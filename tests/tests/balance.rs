//! Active/active (`balance = {}`): three members behind one VIP, real UDP and TCP
//! clients. The director spreads flows evenly and keeps each on its member; replies
//! leave the members from the VIP without touching the director; a member that
//! stops loses only its own flows; a new director keeps the surviving members'
//! connections; fragments reach one member.

mod common;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use common::*;
use lab::{privileged, wait_for, Agent, Capture, Lan, Netns, Responder};
use nix::sys::signal::Signal;

const SERVERS: [&str; 3] = ["a", "b", "e"];
const UDP_PORT: u16 = 7007;
const TCP_PORT: u16 = 8080;

fn balanced_lan() -> Lan {
    let mut lan = Lan::new(&["a", "b", "e", "c"]).expect("lab");
    lan.enable_xdp_tx(&SERVERS).expect("xdp-pass");
    lan
}

fn start(lan: &Lan, me: &str, prio: u8) -> Agent {
    start_elected(lan, me, &SERVERS, prio, "balance = {}")
}

/// Waits until the director's table holds `n` members.
fn members_up(director: &Agent, n: usize) {
    let ok = wait_for(Duration::from_secs(5), || {
        let s = director.status().ok()?;
        let up = s["groups"][0]["balance"]["members"]
            .as_array()?
            .iter()
            .filter(|m| m["healthy"] == true)
            .count();
        (up == n).then_some(())
    });
    assert!(
        ok.is_some(),
        "the director never had {n} members: {}",
        director.status().unwrap()["groups"][0]["balance"]
    );
}

/// One datagram (at least 8 bytes) from source port `sport` (a flow); who answered.
fn ask(ns: &Netns, sport: u16, payload: &[u8]) -> Option<String> {
    let vip: SocketAddr = (VIP4, UDP_PORT).into();
    let s = ns
        .run_in(|| UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, sport)))
        .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    for _ in 0..2 {
        s.send_to(payload, vip).ok()?;
        let mut buf = [0u8; 64];
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            assert_eq!(from, vip, "the reply did not come from the VIP");
            // The lab's responder echoes 8 bytes, then says its name.
            return Some(String::from_utf8_lossy(&buf[8.min(n)..n]).into_owned());
        }
    }
    None
}

/// Who answers each of `flows` flows (source ports 20000..).
fn spread(ns: &Netns, flows: u16) -> Vec<Option<String>> {
    (0..flows)
        .map(|i| ask(ns, 20_000 + i, b"12345678"))
        .collect()
}

fn shares(answers: &[Option<String>]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for a in answers.iter().flatten() {
        *m.entry(a.clone()).or_default() += 1;
    }
    m
}

/// A TCP server on the VIP that answers every line with its name.
fn tcp_server(ns: &Netns, name: &'static str) {
    let l = ns
        .run_in(|| TcpListener::bind((VIP4, TCP_PORT)))
        .expect("binding the TCP server");
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = c.try_clone().expect("clone");
                for line in BufReader::new(c).lines() {
                    if line.is_err() || writeln!(w, "{name}").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn round_trip(c: &mut (TcpStream, BufReader<TcpStream>)) -> Option<String> {
    writeln!(c.0, "ping").ok()?;
    let mut s = String::new();
    c.1.read_line(&mut s).ok()?;
    (!s.is_empty()).then(|| s.trim().to_string())
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn three_members_share_flows_keep_them_and_survive_failures() {
    privileged();
    let lan = balanced_lan();
    let a = start(&lan, "a", 200);
    let b = start(&lan, "b", 150);
    let e = start(&lan, "e", 100);
    expect_states(
        &[("a", &a), ("b", &b), ("e", &e)],
        &["active", "standby", "standby"],
    );
    members_up(&a, 3);
    // Members hold the VIP but never answer for it: one ARP reply, the director's.
    let cl = lan.host("c");
    let cap = Capture::open(&cl.ns, "eth0").unwrap();
    cap.send(&vip::frames::arp_request(mac(&cl.mac), cl.ip4, VIP4))
        .unwrap();
    let replies = arp_replies_for(&cap.collect(Duration::from_millis(200), |_| true), VIP4);
    assert_eq!(
        replies,
        [mac(&lan.host("a").mac)],
        "ARP replies for the VIP"
    );
    let to: SocketAddr = (VIP4, UDP_PORT).into();
    let _r: Vec<Responder> = SERVERS
        .iter()
        .map(|h| Responder::start(&lan.host(h).ns, to, h).expect("responder"))
        .collect();
    for h in SERVERS {
        tcp_server(&lan.host(h).ns, h);
    }
    let c = &lan.host("c").ns;

    // A first few flows, to say what is wrong if anything is.
    let first = spread(c, 30);
    assert!(
        first.iter().all(Option::is_some),
        "unanswered flows: {first:?}\na {}\nb {}\ne {}",
        a.status().unwrap()["groups"][0],
        b.status().unwrap()["groups"][0],
        e.status().unwrap()["groups"][0]
    );
    // 3,000 flows: a third each (± 8 %), every one answered from the VIP.
    let before = spread(c, 3000);
    assert!(before.iter().all(Option::is_some), "unanswered flows");
    let s = shares(&before);
    for h in SERVERS {
        let share = s.get(h).copied().unwrap_or(0) as f64 / 3000.0;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.08,
            "{h} got {share:.3}: {s:?}"
        );
    }
    eprintln!("3,000 flows over 3 members: {s:?}");
    // The same flow lands on the same member every time.
    let again = spread(c, 300);
    assert_eq!(&again[..], &before[..300], "flows changed member");
    // The director's counters agree, per member.
    let st = a.status().unwrap();
    let flows: u64 = st["groups"][0]["balance"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["flows"].as_u64().unwrap())
        .sum();
    assert_eq!(flows, 3000, "{}", st["groups"][0]["balance"]);

    // A fragmented datagram (3,000 bytes over a 1,500 MTU) reaches one member whole.
    let big = vec![b'f'; 3000];
    assert!(
        ask(c, 40_000, &big).is_some(),
        "the fragments were not reassembled"
    );

    // 60 long-lived TCP connections, spread over the members.
    type Conn = ((TcpStream, BufReader<TcpStream>), String);
    let mut conns: Vec<Conn> = (0..60)
        .map(|_| {
            let s = c
                .run_in(|| {
                    TcpStream::connect_timeout(&(VIP4, TCP_PORT).into(), Duration::from_secs(2))
                })
                .expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let r = BufReader::new(s.try_clone().unwrap());
            let mut pair = (s, r);
            let who = round_trip(&mut pair).expect("first round trip");
            (pair, who)
        })
        .collect();

    // e stops: only e's flows move.
    e.proc.signal(Signal::SIGKILL).unwrap();
    members_up(&a, 2);
    let after = spread(c, 3000);
    let moved_others = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b.as_deref() != Some("e") && b != a)
        .count();
    assert_eq!(moved_others, 0, "flows of surviving members moved");
    let s = shares(&after);
    assert!(
        after.iter().all(|a| a.as_deref().is_some_and(|h| h != "e")),
        "{s:?}, {} unanswered",
        after.iter().filter(|a| a.is_none()).count()
    );
    eprintln!("e stopped: {s:?}");
    drop(e);

    // The director's link goes down: b directs with the same table (minus a), and
    // the connections to the surviving member (b) keep working.
    lan.host("a")
        .ns
        .ip(&["link", "set", "eth0", "down"])
        .unwrap();
    expect_states(&[("b", &b)], &["active"]);
    members_up(&b, 1);
    let (mut kept, mut total) = (0, 0);
    for (pair, who) in conns.iter_mut() {
        if who == "b" {
            total += 1;
            if round_trip(pair).as_deref() == Some("b") {
                kept += 1;
            }
        }
    }
    eprintln!("director failover: {kept} of {total} connections to b continued");
    assert!(total > 0 && kept * 100 >= total * 99, "{kept} of {total}");
    lan.host("a").ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    drop((a, b));
    teardown(lan);
}
