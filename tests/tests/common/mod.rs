//! Helpers shared by the integration tests: configs, traffic and frame parsing.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use lab::{Agent, Lan, Netns};
use vip::mac::Mac;

pub const VIP: &str = "10.0.0.50";
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
/// XDP return codes, for BPF_PROG_TEST_RUN tables (not every test uses them).
#[allow(unused_imports)]
pub use vip_common::xdp::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};

/// MACs of the BPF_PROG_TEST_RUN tables: this node, the active, a client, a
/// redirect target.
pub const OWN: Mac = Mac([0x02, 0, 0, 0, 0, 0x0a]);
pub const ACTIVE: Mac = Mac([0x02, 0, 0, 0, 0, 0x0b]);
pub const CLIENT: Mac = Mac([0x02, 0, 0, 0, 0, 0x0c]);
pub const TARGET: Mac = Mac([0x02, 0, 0, 0, 0, 0x0d]);

pub const WINDOW: Duration = Duration::from_millis(300);
/// Advertisement interval of the elected groups in tests.
pub const INTERVAL: u64 = 20;

/// An elected node config: `me` among the servers `all` (its peers are the others);
/// `node_extra` lines go into `[node]`, `group_extra` into the group.
pub fn elected(
    lan: &Lan,
    me: &str,
    all: &[&str],
    priority: u8,
    node_extra: &str,
    group_extra: &str,
) -> String {
    let peers: Vec<String> = all
        .iter()
        .filter(|n| **n != me)
        .map(|n| format!("\"{}\"", lan.host(n).ip4))
        .collect();
    format!(
        "[node]\nname = \"{me}\"\ninterface = \"eth0\"\n{node_extra}\n\n[[group]]\nname = \"web\"\nvips = [\"10.0.0.50/24\"]\npeers = [{}]\npriority = {priority}\nadvert_interval_ms = {INTERVAL}\n{group_extra}\n",
        peers.join(", ")
    )
}

/// Starts an elected agent on `me` (see `elected`).
pub fn start_elected(lan: &Lan, me: &str, all: &[&str], priority: u8, group_extra: &str) -> Agent {
    Agent::start(
        &lan.host(me).ns,
        me,
        &elected(lan, me, all, priority, "", group_extra),
    )
    .expect("starting the agent")
}

/// Waits until `agents` show exactly the expected states of their first group.
pub fn expect_states(agents: &[(&str, &Agent)], want: &[&str]) {
    let ok = lab::wait_for(Duration::from_secs(5), || {
        let got: Vec<String> = agents.iter().map(|(_, a)| state(a)).collect();
        (got == want).then_some(())
    });
    if ok.is_none() {
        let got: Vec<String> = agents
            .iter()
            .map(|(n, a)| format!("{n}={}", state(a)))
            .collect();
        panic!("states {got:?}, wanted {want:?}");
    }
}

/// The first group's transition counter (`groups[0].transitions`) of each agent.
pub fn transitions(agents: &[(&str, &Agent)]) -> Vec<(String, u64)> {
    agents
        .iter()
        .map(|(n, a)| {
            let t = a.status().expect("status")["groups"][0]["transitions"]
                .as_u64()
                .expect("groups[0].transitions");
            (n.to_string(), t)
        })
        .collect()
}

/// Asserts that no agent's first group changed state since `before` (from
/// [`transitions`]): a wrong takeover that healed in the meantime still moved them.
pub fn assert_no_transitions(agents: &[(&str, &Agent)], before: &[(String, u64)], what: &str) {
    let after = transitions(agents);
    assert_eq!(after, before, "{what}: transitions moved");
}

/// One of the data plane's program-wide counters (`vip status`'s `global`).
pub fn global(agent: &Agent, name: &str) -> u64 {
    agent.status().expect("status")["global"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no global counter {name}"))
}

/// The first group's state, or "down" when the agent does not answer.
pub fn state(a: &Agent) -> String {
    a.status()
        .map(|s| s["groups"][0]["state"].as_str().unwrap_or("?").to_string())
        .unwrap_or_else(|_| "down".into())
}

/// A node config with one group `web` holding `vips`, in `role`, plus `extra` lines
/// appended to the group.
pub fn config(node: &str, vips: &[&str], role: &str, extra: &str) -> String {
    let vips: Vec<String> = vips.iter().map(|v| format!("\"{v}\"")).collect();
    format!(
        "[node]\nname = \"{node}\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [{}]\nrole = \"{role}\"\n{extra}\n",
        vips.join(", ")
    )
}

pub fn mac(s: &str) -> Mac {
    s.parse().expect("MAC")
}

/// A lab with hosts a, b (servers, XDP_TX enabled towards the switch) and c (client).
pub fn lan() -> Lan {
    let mut lan = Lan::new(&["a", "b", "c"]).expect("building the lab");
    lan.enable_xdp_tx(&["a", "b"])
        .expect("xdp-pass on the switch ports");
    lan
}

/// Starts an agent on `host` with `config`.
pub fn agent(lan: &Lan, host: &str, config: &str) -> Agent {
    Agent::start(&lan.host(host).ns, host, config).expect("starting the agent")
}

pub fn counter(agent: &Agent, vip: &str, name: &str) -> u64 {
    agent.vip_status(vip).expect("status")[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// ARP replies on the wire whose sender IP is `ip`, as (sender MAC, frame).
pub fn arp_replies_for(frames: &[Vec<u8>], ip: Ipv4Addr) -> Vec<Mac> {
    frames
        .iter()
        .filter(|f| {
            f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == ip.octets()
        })
        .map(|f| Mac(f[22..28].try_into().unwrap()))
        .collect()
}

/// The (source, destination) addresses of an untagged IPv4 frame.
pub fn ipv4_addrs(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if frame.len() < 34 || frame[12..14] != [8, 0] {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
    Some((ip(26), ip(30)))
}

/// The MAC the client's kernel has for `ip` (after resolving it with a ping).
pub fn kernel_neighbour(ns: &Netns, ip: &str) -> Option<String> {
    let out = ns.ip(&["neigh", "show", ip, "dev", "eth0"]).ok()?;
    let mut it = out.split_whitespace();
    it.position(|w| w == "lladdr")?;
    it.next().map(str::to_string)
}

/// Binds a UDP socket in `ns`.
pub fn udp_bind(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    let s = ns.run_in(|| UdpSocket::bind(addr)).expect("bind UDP");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Sends `n` datagrams of `size` bytes from `ns` to `to`.
pub fn udp_send(ns: &Netns, to: SocketAddr, n: usize, size: usize) {
    ns.run_in(|| {
        let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(any).expect("client socket");
        for i in 0..n {
            let mut payload = vec![0u8; size];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            s.send_to(&payload, to).expect("send");
            // Keep the veth queues from dropping a burst.
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
}

/// Receives until `n` datagrams arrived or a 2 s gap; returns how many arrived.
pub fn udp_count(s: &UdpSocket, n: usize) -> usize {
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while got < n {
        match s.recv_from(&mut buf) {
            Ok(_) => got += 1,
            Err(_) => break,
        }
    }
    got
}

/// A TCP echo round trip from `client` to `server_addr`, where `listener` lives.
pub fn tcp_round_trip(client: &Netns, listener: TcpListener, to: SocketAddr) -> String {
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).expect("server read");
        c.write_all(&buf[..n]).expect("server write");
    });
    let reply = client.run_in(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"hello vip").expect("client write");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).expect("client read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    server.join().expect("server thread");
    reply
}

pub fn ping(ns: &Netns, ip: &str) -> bool {
    ns.output(&["ping", "-c", "1", "-W", "2", ip])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Drops the lab and checks every namespace of it is gone.
pub fn teardown(lan: Lan) {
    let names = lan.namespaces();
    drop(lan);
    for n in names {
        assert!(
            !std::path::Path::new("/run/netns").join(&n).exists(),
            "namespace {n} left behind"
        );
    }
}

/// The VIP a frame announces and the MAC it names: a gratuitous ARP (sender and
/// target the VIP, request or reply) or an unsolicited NA (its target).
pub fn announced(f: &[u8]) -> Option<(IpAddr, [u8; 6])> {
    let mac_at = |o: usize| -> Option<[u8; 6]> { f.get(o..o + 6)?.try_into().ok() };
    match u16::from_be_bytes(f.get(12..14)?.try_into().ok()?) {
        0x0806 => {
            if f.get(14..20)? != [0, 1, 8, 0, 6, 4] {
                return None;
            }
            let spa: [u8; 4] = f.get(28..32)?.try_into().ok()?;
            let tpa: [u8; 4] = f.get(38..42)?.try_into().ok()?;
            (spa == tpa).then_some((IpAddr::V4(Ipv4Addr::from(spa)), mac_at(22)?))
        }
        0x86dd => {
            // ICMPv6 right behind the header, type 136 (NA), the solicited flag clear.
            if *f.get(20)? != 58 || *f.get(54)? != 136 || f.get(58)? & 0x40 != 0 {
                return None;
            }
            let target: [u8; 16] = f.get(62..78)?.try_into().ok()?;
            Some((IpAddr::V6(Ipv6Addr::from(target)), mac_at(6)?))
        }
        _ => None,
    }
}

/// Sends `n` small datagrams from `ns` to `to`, 200 us apart: a burst can overflow a
/// veth's queue in the lab, and a datagram lost there is not the gateway's doing.
pub fn paced_send(ns: &Netns, to: SocketAddr, n: usize) {
    ns.run_in(|| {
        let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(any).expect("client socket");
        for i in 0..n as u64 {
            s.send_to(&i.to_be_bytes(), to).expect("send");
            std::thread::sleep(Duration::from_micros(200));
        }
    });
}

/// Sends `n` datagrams from the internet (`inet`) to `to` through a gateway; returns
/// how many reached `sink`, and how many frames `wanted` (the datagram as it must
/// appear on a wire) each of `wires` saw, read while they arrive (a flood would
/// overflow a capture's buffer otherwise).
pub fn datagram_round(
    inet: &Netns,
    sink: &UdpSocket,
    wires: &[&lab::Capture],
    n: usize,
    to: SocketAddr,
    wanted: impl Fn(&[u8]) -> bool + Copy + Send,
) -> (usize, Vec<usize>) {
    for w in wires {
        w.clear();
    }
    let window = Duration::from_millis(500);
    std::thread::scope(|s| {
        let seen: Vec<_> = wires
            .iter()
            .map(|w| s.spawn(move || w.collect(window, wanted).len()))
            .collect();
        paced_send(inet, to, n);
        let got = udp_count(sink, n);
        (got, seen.into_iter().map(|h| h.join().unwrap()).collect())
    })
}
