//! IPv6 VIPs against real kernels: the client's own neighbour discovery resolves the
//! VIP to the active, ping -6, TCP and UDP reach the active's sockets, and the active's
//! own connections keep its real address; every solicitation is answered exactly once,
//! by the active only, and only when well-formed (crafted frames, ndisc6 and the
//! client's DAD, with per-frame proof that the data plane saw and refused the others);
//! a takeover's unsolicited NAs (count and interval of the garp settings) move the
//! silent client's IPv4 and IPv6 entries together, and nothing else does; the new
//! active joins the VIP's solicited-node group, so an MLD-snooping switch delivers
//! solicitations to it. Two ignored tests reproduce known limits of the agent
//! (docs/IPV6.md): a redirected VIP's group is never joined, and an interface down/up
//! loses the VIP's address.

mod common;

use std::{
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use common::*;
use lab::{frames, privileged, wait_for, Agent, Capture, Lan, Netns};
use vip::mac::Mac;

const VIP6: &str = "2001:db8::50";
const VIP6_ADDR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x50);
const ALL_NODES_MAC: &str = "33:33:00:00:00:01";

/// A neighbour advertisement, as it was on the wire.
#[derive(Debug, PartialEq)]
struct Na {
    from: Mac,
    eth_to: Mac,
    to: Ipv6Addr,
    solicited: bool,
    overrides: bool,
    /// The target link-layer address option.
    tlla: Option<Mac>,
    /// Hop limit 255, code 0, router flag clear, checksum right, 32 bytes.
    valid: bool,
}

impl Na {
    /// The answer to a solicitation from `to` (at `eth_to`), from `from`.
    fn solicited(from: &str, eth_to: &str, to: Ipv6Addr) -> Na {
        Na {
            from: mac(from),
            eth_to: mac(eth_to),
            to,
            solicited: true,
            overrides: true,
            tlla: Some(mac(from)),
            valid: true,
        }
    }

    /// An advertisement to all nodes: a takeover's, or the defence against a DAD probe.
    fn to_all_nodes(from: &str) -> Na {
        Na {
            solicited: false,
            ..Na::solicited(from, ALL_NODES_MAC, frames::ALL_NODES)
        }
    }
}

/// The neighbour advertisements for `target` among `frames_in`.
fn advertisements(frames_in: &[Vec<u8>], target: Ipv6Addr) -> Vec<Na> {
    frames_in
        .iter()
        .filter(|f| {
            f.len() >= 78
                && f[12..14] == [0x86, 0xdd]
                && f[20] == 58
                && f[54] == 136
                && f[62..78] == target.octets()
        })
        .map(|f| {
            let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[at..at + 16]).unwrap());
            let len = u16::from_be_bytes([f[18], f[19]]) as usize;
            let msg = &f[54..(54 + len).min(f.len())];
            let tlla = (msg.len() >= 32 && msg[24..26] == [2, 1])
                .then(|| Mac(msg[26..32].try_into().unwrap()));
            Na {
                from: Mac(f[6..12].try_into().unwrap()),
                eth_to: Mac(f[0..6].try_into().unwrap()),
                to: addr(38),
                solicited: f[58] & 0x40 != 0,
                overrides: f[58] & 0x20 != 0,
                tlla,
                valid: f[21] == 255
                    && f[55] == 0
                    && f[58] & 0x80 == 0
                    && len == 32
                    && frames::icmpv6_checksum(addr(22), addr(38), msg) == 0,
            }
        })
        .collect()
}

/// Whether `f` asks for one of the VIPs: an ARP request or a neighbour solicitation,
/// what a client sends when it (re)resolves an address.
fn asks_for_a_vip(f: &[u8]) -> bool {
    let arp = f.len() >= 42 && f[12..14] == [8, 6] && f[38..42] == VIP4.octets();
    let ns = f.len() >= 78
        && f[12..14] == [0x86, 0xdd]
        && f[20] == 58
        && f[54] == 135
        && f[62..78] == VIP6_ADDR.octets();
    arp || ns
}

/// A neighbour solicitation message for the VIP with `options` after its 24 bytes.
fn ns_msg(options: &[u8]) -> Vec<u8> {
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&VIP6_ADDR.octets());
    m.extend_from_slice(options);
    m
}

/// A source link-layer address option.
fn slla(m: Mac) -> Vec<u8> {
    [&[1u8, 1][..], &m.0].concat()
}

/// Sends `frame` from the client's `cap` and returns the advertisements for the VIP
/// that come back within the window.
fn ask(cap: &Capture, frame: &[u8]) -> Vec<Na> {
    cap.clear();
    cap.send(frame).unwrap();
    advertisements(&cap.collect(WINDOW, |_| true), VIP6_ADDR)
}

/// A nonce option (RFC 7527), as Linux puts in its DAD probes.
const NONCE: [u8; 8] = [14, 1, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6];
/// An option of a type no one knows: receivers must skip it.
const UNKNOWN_OPTION: [u8; 8] = [200, 1, 0, 0, 0, 0, 0, 0];

fn cli(agent: &Agent, args: &[&str]) {
    let out = agent.cli(args).expect("vip CLI");
    assert!(
        out.status.success(),
        "vip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A counter of /proc/net/snmp6 in `ns`.
fn snmp6(ns: &Netns, name: &str) -> u64 {
    let text = ns.exec(&["cat", "/proc/net/snmp6"]).expect("snmp6");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in snmp6"))
}

/// The flags `ip` shows for one address of `ns` (any interface: a VIP lives on lo),
/// if it is there.
fn address_line(ns: &Netns, prefix: &str) -> Option<String> {
    let out = ns.ip(&["-6", "-o", "addr", "show"]).ok()?;
    out.lines()
        .find(|l| l.split_whitespace().nth(3) == Some(prefix))
        .map(str::to_string)
}

/// The MAC `ndisc6` resolves the VIP to from `ns`, sending one solicitation.
fn ndisc6(ns: &Netns) -> Option<String> {
    let out = ns
        .output(&["ndisc6", "-1", "-r", "1", "-w", "1000", VIP6, "eth0"])
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let line = text.lines().find(|l| l.contains("link-layer address"))?;
    line.split_whitespace().last().map(str::to_string)
}

/// Frames received by `cap` during `window`, each with its arrival time since `t0`.
fn timed(cap: &Capture, t0: Instant, window: Duration) -> Vec<(Duration, Vec<u8>)> {
    let mut out = Vec::new();
    while t0.elapsed() < window {
        for f in cap.collect(Duration::from_millis(5), |_| true) {
            out.push((t0.elapsed(), f));
        }
    }
    out
}

/// The client's kernel entries for both VIPs point at `mac` within 2 s.
fn entries_move_to(c: &Netns, mac: &str) -> bool {
    wait_for(Duration::from_secs(2), || {
        (kernel_neighbour(c, VIP).as_deref() == Some(mac)
            && kernel_neighbour(c, VIP6).as_deref() == Some(mac))
        .then_some(())
    })
    .is_some()
}

/// Agents on a (active) and b (standby) for one group holding `vips`, each with its
/// extra group lines.
fn servers(lan: &Lan, vips: &[&str], extra_a: &str, extra_b: &str) -> (Agent, Agent) {
    let a = agent(lan, "a", &config("a", vips, "active", extra_a));
    let b = agent(lan, "b", &config("b", vips, "standby", extra_b));
    (a, b)
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn ping_tcp_udp_reach_the_active_and_its_own_traffic_keeps_its_address() {
    privileged();
    let lan = lan();
    let (a, c) = (lan.host("a"), lan.host("c"));
    let (active, standby) = servers(&lan, &["2001:db8::50/64"], "", "");
    // Takeover added the VIP as a /128 without DAD and deprecated, so it is usable at
    // once and never the source the kernel picks for connections of its own.
    let line = address_line(&a.ns, "2001:db8::50/128").expect("the VIP on the active");
    for flag in ["nodad", "noprefixroute", "deprecated"] {
        assert!(line.contains(flag), "no {flag}: {line}");
    }
    assert!(!line.contains("tentative"), "{line}");
    assert!(address_line(&lan.host("b").ns, "2001:db8::50/128").is_none());
    // Let the takeover's unsolicited NAs go by (the client has no entry to update).
    std::thread::sleep(Duration::from_millis(300));

    let (ns0, na0) = (
        snmp6(&c.ns, "Icmp6OutNeighborSolicits"),
        snmp6(&c.ns, "Icmp6InNeighborAdvertisements"),
    );
    assert!(ping(&c.ns, VIP6), "ping -6 to the VIP failed");
    assert_eq!(
        kernel_neighbour(&c.ns, VIP6).as_deref(),
        Some(a.mac.as_str())
    );

    let to: SocketAddr = (VIP6_ADDR, 8080).into();
    let listener =
        a.ns.run_in(|| TcpListener::bind(to))
            .expect("bind TCP on the VIP");
    assert_eq!(tcp_round_trip(&c.ns, listener, to), "hello vip");
    let before = active.vip_status(VIP6).unwrap();
    let to: SocketAddr = (VIP6_ADDR, 5000).into();
    let sock = udp_bind(&a.ns, to);
    udp_send(&c.ns, to, 50, 40);
    assert_eq!(udp_count(&sock, 50), 50);
    let after = active.vip_status(VIP6).unwrap();
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(delta("rx_packets"), 50);
    assert_eq!(delta("passed"), 50);
    assert_eq!(delta("rx_bytes"), 50 * (14 + 40 + 8 + 40));

    // Every solicitation the client's kernel sent was answered, exactly once, by the
    // data plane of the active (its kernel holds the VIP but never answers).
    let sent = snmp6(&c.ns, "Icmp6OutNeighborSolicits") - ns0;
    let answers = snmp6(&c.ns, "Icmp6InNeighborAdvertisements") - na0;
    assert!(sent >= 1);
    assert_eq!(
        (answers, counter(&active, VIP6, "nd_replies")),
        (sent, sent)
    );
    assert_eq!(counter(&standby, VIP6, "nd_replies"), 0);
    assert_eq!(counter(&standby, VIP6, "rx_packets"), 0);

    // The active's own connections into the subnet leave from its real address (a
    // /128 VIP would win the longest-match rule of source address selection).
    let server = c.ns.run_in(|| TcpListener::bind((c.ip6, 7000))).unwrap();
    let accepted = std::thread::spawn(move || server.accept().map(|(_, peer)| peer.ip()));
    a.ns.run_in(|| TcpStream::connect_timeout(&(c.ip6, 7000).into(), Duration::from_secs(3)))
        .expect("the active connects to the client");
    assert_eq!(accepted.join().unwrap().unwrap(), a.ip6);
    let route = a.ns.ip(&["-6", "route", "get", "2001:db8::51"]).unwrap();
    assert!(route.contains(&format!("src {} ", a.ip6)), "{route}");
    drop((active, standby));
    teardown(lan);
}

/// `ip link set br0 type bridge OPTIONS` on the switch.
fn set_bridge(lan: &Lan, options: &str) {
    let mut args = vec!["link", "set", "br0", "type", "bridge"];
    args.extend(options.split_whitespace());
    lan.switch.ip(&args).expect("bridge options");
}

/// A plain switch: the bridge's netfilter hook and multicast snooping parse IPv6
/// themselves and drop a frame shorter than its payload length before any server.
fn plain_switch(lan: &Lan) {
    let sw = &lan.switch;
    sw.sysctl("net.bridge.bridge-nf-call-ip6tables", "0")
        .unwrap();
    set_bridge(lan, "mcast_snooping 0");
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn well_formed_solicitations_are_answered_once_by_the_active_and_no_other_ever() {
    privileged();
    let lan = lan();
    plain_switch(&lan);
    let (a, c) = (lan.host("a"), lan.host("c"));
    let (active, standby) = servers(&lan, &["2001:db8::50/64"], "", "");
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    // Let the takeover's unsolicited NAs go by (a bounded schedule that no status
    // reports the end of), so that only answers to the solicitations below are seen.
    std::thread::sleep(Duration::from_millis(300));
    let me = mac(&c.mac);
    let (sn, sn_mac) = vip::frames::solicited_node(VIP6_ADDR);
    let link_local: Ipv6Addr = "fe80::c".parse().unwrap();
    let to_c = |to: Ipv6Addr| vec![Na::solicited(&a.mac, &c.mac, to)];
    // An NS message from `src` to the VIP's solicited-node group.
    let group = |src: Ipv6Addr, msg: Vec<u8>| frames::icmpv6(sn_mac, me, src, sn, 255, msg);
    // An NS from the client, with a source link-layer option, to `dst` at `eth_dst`.
    let to = |eth_dst: &str, dst: Ipv6Addr| {
        frames::icmpv6(mac(eth_dst), me, c.ip6, dst, 255, ns_msg(&slla(me)))
    };
    let with_options = |options: &[&[u8]]| ns_msg(&options.concat());

    // Well-formed: multicast (solicited-node) and unicast (unreachability detection),
    // with and without a source link-layer option, with a nonce (RFC 7527) or an
    // unknown option (ignored, RFC 4861 4.6), from a link-local source; a DAD probe as
    // Linux sends it (nonce) is answered to all nodes, defending the address.
    let good = [
        ("multicast NS", to(&sn_mac.to_string(), sn), to_c(c.ip6)),
        (
            "multicast NS without options",
            group(c.ip6, ns_msg(&[])),
            to_c(c.ip6),
        ),
        ("unicast NS", to(&a.mac, VIP6_ADDR), to_c(c.ip6)),
        (
            "NS with a nonce",
            group(c.ip6, with_options(&[&slla(me), &NONCE])),
            to_c(c.ip6),
        ),
        (
            "NS with an unknown option",
            group(c.ip6, with_options(&[&UNKNOWN_OPTION, &slla(me)])),
            to_c(c.ip6),
        ),
        (
            "NS from a link-local address",
            group(link_local, ns_msg(&slla(me))),
            to_c(link_local),
        ),
        (
            "DAD probe",
            group(Ipv6Addr::UNSPECIFIED, ns_msg(&NONCE)),
            vec![Na::to_all_nodes(&a.mac)],
        ),
    ];
    for (i, (what, frame, want)) in good.iter().enumerate() {
        assert_eq!(&ask(&cap, frame), want, "{what}");
        assert_eq!(counter(&active, VIP6, "nd_replies"), i as u64 + 1, "{what}");
    }

    // Malformed, or not addressed to the VIP as RFC 4861 says: never answered. Each
    // reached the active's data plane, which refused it (`not_answered`), or found it
    // too short to name a target and left it to the kernel (`parse_errors`).
    let multicast = &good[0].1;
    let with = |i: usize, v: u8| {
        let mut f = multicast.clone();
        f[i] = v;
        f
    };
    let mut code_1 = ns_msg(&slla(me));
    code_1[1] = 1;
    let long = with_options(&[&slla(me), &UNKNOWN_OPTION.repeat(5)]);
    let bad = [
        ("hop limit 254", with(21, 254), "not_answered"),
        (
            "bad checksum",
            with(56, multicast[56] ^ 0xff),
            "not_answered",
        ),
        ("code 1", group(c.ip6, code_1), "not_answered"),
        ("truncated", multicast[..70].to_vec(), "parse_errors"),
        (
            "16-byte message",
            group(c.ip6, ns_msg(&[])[..16].to_vec()),
            "parse_errors",
        ),
        (
            "zero-length option",
            group(c.ip6, ns_msg(&[1, 0, 2, 0, 0, 0, 0, 0])),
            "not_answered",
        ),
        (
            "option past the end",
            group(c.ip6, ns_msg(&[200, 2, 0, 0, 0, 0, 0, 0])),
            "not_answered",
        ),
        (
            "16-byte source link-layer option",
            group(c.ip6, with_options(&[&[1, 2], &me.0, &[0; 8]])),
            "not_answered",
        ),
        ("longer than 64 bytes", group(c.ip6, long), "not_answered"),
        (
            "another solicited-node group",
            to("33:33:ff:00:00:99", "ff02::1:ff00:99".parse().unwrap()),
            "not_answered",
        ),
        (
            "the group at another MAC",
            to("33:33:ff:00:00:99", sn),
            "not_answered",
        ),
        (
            "to all nodes",
            to(ALL_NODES_MAC, frames::ALL_NODES),
            "not_answered",
        ),
        (
            "unicast to another MAC",
            to("02:00:00:00:00:99", VIP6_ADDR),
            "not_answered",
        ),
        (
            "unicast to the broadcast MAC",
            to("ff:ff:ff:ff:ff:ff", VIP6_ADDR),
            "not_answered",
        ),
        (
            "DAD probe with a source link-layer option",
            group(Ipv6Addr::UNSPECIFIED, ns_msg(&slla(me))),
            "not_answered",
        ),
        (
            "DAD probe sent unicast",
            frames::icmpv6(
                mac(&a.mac),
                me,
                Ipv6Addr::UNSPECIFIED,
                VIP6_ADDR,
                255,
                ns_msg(&NONCE),
            ),
            "not_answered",
        ),
        (
            "multicast source",
            group(frames::ALL_NODES, ns_msg(&slla(me))),
            "not_answered",
        ),
        (
            "loopback source",
            group(Ipv6Addr::LOCALHOST, ns_msg(&slla(me))),
            "not_answered",
        ),
    ];
    for (what, frame, refused_as) in &bad {
        let before = global(&active, refused_as);
        let got = ask(&cap, frame);
        assert!(got.is_empty(), "{what}: answered {got:?}");
        assert_eq!(
            global(&active, refused_as),
            before + 1,
            "{what}: never reached the active's data plane as expected"
        );
    }

    // The kernel's own tool, and the client kernel's duplicate address detection
    // (which sends a nonce): the active defends its VIP.
    assert_eq!(ndisc6(&c.ns).as_deref(), Some(a.mac.as_str()));
    // (The lab's hosts skip DAD; this client runs it for the address it claims.)
    c.ns.sysctl("net.ipv6.conf.eth0.accept_dad", "1").unwrap();
    c.ns.ip(&["addr", "add", "2001:db8::50/64", "dev", "eth0"])
        .unwrap();
    let dad = wait_for(Duration::from_secs(4), || {
        address_line(&c.ns, "2001:db8::50/64").filter(|l| l.contains("dadfailed"))
    });
    assert!(
        dad.is_some(),
        "the client's DAD succeeded: {:?}",
        address_line(&c.ns, "2001:db8::50/64")
    );
    c.ns.ip(&["addr", "del", "2001:db8::50/64", "dev", "eth0"])
        .unwrap();
    let answered = good.len() as u64 + 2;
    assert_eq!(counter(&active, VIP6, "nd_replies"), answered);
    assert_eq!(counter(&standby, VIP6, "nd_replies"), 0);
    drop(active);

    // Nobody active: the standby answers nothing, and does not defend the VIP.
    for (what, frame, _) in &good {
        let got = ask(&cap, frame);
        assert!(got.is_empty(), "{what}: answered by {got:?} with no active");
    }
    assert_eq!(ndisc6(&c.ns), None);
    c.ns.ip(&["addr", "add", "2001:db8::50/64", "dev", "eth0"])
        .unwrap();
    let done = wait_for(Duration::from_secs(4), || {
        address_line(&c.ns, "2001:db8::50/64").filter(|l| !l.contains("tentative"))
    });
    assert!(
        done.is_some_and(|l| !l.contains("dadfailed")),
        "{:?}",
        address_line(&c.ns, "2001:db8::50/64")
    );
    assert_eq!(counter(&standby, VIP6, "nd_replies"), 0);
    drop(standby);
    teardown(lan);
}

/// Both VIPs of one group on a and b; the client has resolved both to a and stays
/// silent from here on.
fn dual_stack(lan: &Lan, extra_a: &str, extra_b: &str) -> (Agent, Agent) {
    let agents = servers(lan, &["10.0.0.50/24", "2001:db8::50/64"], extra_a, extra_b);
    // a's own takeover announcements (up to 3, 100 ms apart here) go by first.
    std::thread::sleep(Duration::from_millis(500));
    let c = lan.host("c");
    assert!(ping(&c.ns, VIP) && ping(&c.ns, VIP6));
    assert!(entries_move_to(&c.ns, &lan.host("a").mac));
    agents
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn unsolicited_nas_move_the_silent_client_with_both_families() {
    privileged();
    let lan = lan();
    let (a, b, c) = (lan.host("a"), lan.host("b"), lan.host("c"));
    let garp = "garp_count = 3\ngarp_interval_ms = 100";
    let (na, nb) = dual_stack(&lan, garp, garp);
    // What the client sends (its switch port receives it) and what it receives.
    let sent = Capture::open(&lan.switch, &c.port).unwrap();
    let heard = Capture::open(&c.ns, "eth0").unwrap();
    sent.clear();
    heard.clear();

    let t0 = Instant::now();
    let frames_heard = std::thread::scope(|s| {
        let listen = s.spawn(|| timed(&heard, t0, Duration::from_millis(1200)));
        cli(&nb, &["promote", "web"]);
        cli(&na, &["demote", "web", "--forward-to", &b.mac]);
        assert!(
            entries_move_to(&c.ns, &b.mac),
            "entries: v4 {:?} v6 {:?}",
            kernel_neighbour(&c.ns, VIP),
            kernel_neighbour(&c.ns, VIP6)
        );
        listen.join().unwrap()
    });
    // The client asked nothing: only the announcements can have moved its entries.
    let asked = sent.collect(Duration::from_millis(50), asks_for_a_vip);
    assert!(asked.is_empty(), "the client resolved again: {asked:?}");

    // garp_count unsolicited NAs (override, to all nodes, b's link-layer address) and
    // as many gratuitous ARPs, garp_interval_ms apart, from b and from no one else.
    let (times, nas): (Vec<Duration>, Vec<Vec<u8>>) = frames_heard
        .iter()
        .filter(|(_, f)| !advertisements(std::slice::from_ref(f), VIP6_ADDR).is_empty())
        .cloned()
        .unzip();
    assert_eq!(
        advertisements(&nas, VIP6_ADDR),
        (0..3).map(|_| Na::to_all_nodes(&b.mac)).collect::<Vec<_>>()
    );
    let spread = times[2] - times[0];
    assert!(
        spread >= Duration::from_millis(150) && spread < Duration::from_millis(600),
        "NAs at {times:?}"
    );
    let all: Vec<Vec<u8>> = frames_heard.into_iter().map(|(_, f)| f).collect();
    let garps = gratuitous_arps(&all);
    assert_eq!(garps, vec![mac(&b.mac); 3]);

    // Both families are b's now; a received none of it.
    let a_rx = |v: &str| counter(&na, v, "rx_packets");
    let (a4, a6) = (a_rx(VIP), a_rx(VIP6));
    assert!(ping(&c.ns, VIP) && ping(&c.ns, VIP6));
    assert_eq!((a_rx(VIP), a_rx(VIP6)), (a4, a6));
    assert!(counter(&nb, VIP, "rx_packets") >= 1 && counter(&nb, VIP6, "rx_packets") >= 1);

    // And back, in the other order of commands.
    cli(&nb, &["demote", "web", "--forward-to", &a.mac]);
    cli(&na, &["promote", "web"]);
    assert!(entries_move_to(&c.ns, &a.mac));
    drop((na, nb));
    teardown(lan);
}

/// Gratuitous ARPs for the IPv4 VIP among `frames_in`, by sender MAC.
fn gratuitous_arps(frames_in: &[Vec<u8>]) -> Vec<Mac> {
    frames_in
        .iter()
        .filter(|f| {
            f.len() >= 42
                && f[12..14] == [8, 6]
                && f[28..32] == VIP4.octets()
                && f[38..42] == VIP4.octets()
        })
        .map(|f| Mac(f[22..28].try_into().unwrap()))
        .collect()
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn without_announcements_the_entry_stays_and_the_old_active_forwards() {
    privileged();
    let lan = lan();
    let (a, b, c) = (lan.host("a"), lan.host("b"), lan.host("c"));
    // The same handover with no announcement: the control for the test above.
    let (na, nb) = dual_stack(&lan, "drain_ms = 10000", "garp_count = 0");
    cli(&nb, &["promote", "web"]);
    cli(&na, &["demote", "web", "--forward-to", &b.mac]);
    // Deliberate: nothing may move the client's entries, so time has to pass.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        kernel_neighbour(&c.ns, VIP6).as_deref(),
        Some(a.mac.as_str())
    );
    assert_eq!(
        kernel_neighbour(&c.ns, VIP).as_deref(),
        Some(a.mac.as_str())
    );

    // The stale client keeps sending to a, which forwards to b.
    let to: SocketAddr = (VIP6_ADDR, 5000).into();
    let sock = udp_bind(&b.ns, to);
    udp_send(&c.ns, to, 50, 32);
    assert_eq!(udp_count(&sock, 50), 50);
    let va = na.vip_status(VIP6).unwrap();
    assert_eq!(
        (va["action"].as_str(), va["forwarded"].as_u64()),
        (Some("forward"), Some(50)),
        "{va}"
    );
    assert_eq!(counter(&nb, VIP6, "rx_packets"), 50);
    assert_eq!(
        kernel_neighbour(&c.ns, VIP6).as_deref(),
        Some(a.mac.as_str())
    );
    drop((na, nb));
    teardown(lan);
}

/// Ports of the switch that the bridge's MLD snooping lists for `group`.
fn members(lan: &Lan, group: &str) -> Vec<String> {
    let out = lan
        .switch
        .exec(&["bridge", "mdb", "show", "dev", "br0"])
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.split_whitespace().any(|w| w == group))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.position(|x| x == "port")?;
            w.next().map(str::to_string)
        })
        .collect()
}

/// Whether the switch lists `port` for `group` within 8 s.
fn joined(lan: &Lan, group: &str, port: &str) -> bool {
    wait_for(Duration::from_secs(8), || {
        members(lan, group).iter().any(|p| p == port).then_some(())
    })
    .is_some()
}

/// Makes the switch an MLD-snooping one with a querier, as many are: multicast goes
/// only to the ports that reported its group (the bridge then sends unregistered
/// groups to multicast routers only). Returns once the querier is in charge: a
/// solicitation for a's own address reaches a (the bridge takes some 10 s here).
fn mld_snooping(lan: &Lan) {
    lan.switch
        .sysctl("net.ipv6.conf.br0.accept_dad", "0")
        .unwrap();
    lan.switch
        .sysctl("net.ipv6.conf.br0.disable_ipv6", "0")
        .unwrap();
    set_bridge(
        lan,
        "mcast_snooping 1 mcast_querier 1 mcast_startup_query_interval 50 \
         mcast_query_interval 200 mcast_query_response_interval 50",
    );
    let (a, c) = (lan.host("a"), lan.host("c"));
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    let ns = frames::neighbour_solicitation(mac(&c.mac), c.ip6, a.ip6, None);
    let ready = wait_for(Duration::from_secs(30), || {
        cap.clear();
        cap.send(&ns).unwrap();
        let got = advertisements(&cap.collect(Duration::from_millis(100), |_| true), a.ip6);
        (!got.is_empty()).then_some(())
    });
    assert!(
        ready.is_some(),
        "the snooping switch never delivered a's group"
    );
}

const SOLICITED_NODE: &str = "ff02::1:ff00:50";

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn the_new_active_joins_the_solicited_node_group_behind_mld_snooping() {
    privileged();
    let lan = lan();
    mld_snooping(&lan);
    let (a, b, c) = (lan.host("a"), lan.host("b"), lan.host("c"));
    let (na, nb) = servers(&lan, &["2001:db8::50/64"], "", "");
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    let ns = frames::neighbour_solicitation(mac(&c.mac), c.ip6, VIP6_ADDR, None);
    assert!(
        joined(&lan, SOLICITED_NODE, &a.port),
        "{:?}",
        members(&lan, SOLICITED_NODE)
    );
    assert!(!members(&lan, SOLICITED_NODE).contains(&b.port));
    // Past the takeover's announcements (a bounded schedule, no event), so that only
    // the answer to this solicitation is seen.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ask(&cap, &ns), vec![Na::solicited(&a.mac, &c.mac, c.ip6)]);

    cli(&nb, &["promote", "web"]);
    cli(&na, &["demote", "web"]);
    assert!(
        joined(&lan, SOLICITED_NODE, &b.port),
        "{:?}",
        members(&lan, SOLICITED_NODE)
    );
    let maddr = |ns: &Netns| ns.ip(&["-6", "maddr", "show", "dev", "eth0"]).unwrap();
    assert!(maddr(&b.ns).contains(SOLICITED_NODE));
    // Left by a's address worker, in order after its other changes.
    let left = lab::wait_for(Duration::from_secs(2), || {
        (!maddr(&a.ns).contains(SOLICITED_NODE)).then_some(())
    });
    assert!(left.is_some(), "a still holds {SOLICITED_NODE}");
    // Past the takeover's announcements, a solicitation reaches the new active through
    // the snooping switch, and only it answers.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ask(&cap, &ns), vec![Na::solicited(&b.mac, &c.mac, c.ip6)]);
    assert_eq!(counter(&nb, VIP6, "nd_replies"), 1);
    drop((na, nb));
    teardown(lan);
}

/// The same with a VIP redirected into a container: the node does not hold the
/// address, so its kernel never joins the solicited-node group and nothing delivers
/// multicast solicitations to it (here the snooping switch; on hardware the NIC's
/// multicast filter). Needs the agent to join the group itself while it owns the VIP.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_redirected_ipv6_vip_is_reachable_behind_mld_snooping() {
    privileged();
    let mut lan = lan();
    let ctr = Netns::new("ctr").unwrap();
    lab::veth(&lan.host("a").ns, "svc", &ctr, "eth0").unwrap();
    lan.host("a").ns.ip(&["link", "set", "svc", "up"]).unwrap();
    ctr.ip(&["link", "set", "eth0", "up"]).unwrap();
    lan.xdp_pass(&ctr.name.clone(), &["eth0".to_string()])
        .unwrap();
    mld_snooping(&lan);
    let (a, c) = (lan.host("a"), lan.host("c"));
    let extra = "redirect_to = \"svc\"";
    let na = agent(
        &lan,
        "a",
        &config("a", &["2001:db8::50/64"], "active", extra),
    );
    assert_eq!(na.vip_status(VIP6).unwrap()["action"], "redirect");
    let joined = joined(&lan, SOLICITED_NODE, &a.port);
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    // Past the takeover's announcements (a bounded schedule, no event).
    std::thread::sleep(Duration::from_millis(300));
    let ns = frames::neighbour_solicitation(mac(&c.mac), c.ip6, VIP6_ADDR, None);
    let got = ask(&cap, &ns);
    let want = vec![Na::solicited(&a.mac, &c.mac, c.ip6)];
    drop((na, cap));
    drop(lan);
    drop(ctr);
    assert!(joined, "a never reported {SOLICITED_NODE}");
    assert_eq!(got, want);
}

/// An administrative down/up of the interface makes the kernel flush its IPv6
/// addresses (unless `keep_addr_on_down`), the VIP's /128 included, while IPv4 ones
/// stay. The data plane keeps answering for the VIP, so clients resolve it to a node
/// whose kernel no longer accepts its traffic. Needs the agent to add the addresses of
/// its active groups again when the link comes back (or when one is deleted).
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn an_ipv6_vip_survives_an_interface_down_and_up() {
    privileged();
    let lan = lan();
    let (a, c) = (lan.host("a"), lan.host("c"));
    let agents = dual_stack(&lan, "", "");
    a.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    a.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    // The host's own network configuration brings its address back.
    let own = format!("{}/64", a.ip6);
    a.ns.ip(&["addr", "replace", &own, "dev", "eth0", "nodad"])
        .unwrap();
    let both = wait_for(Duration::from_secs(5), || {
        (ping(&c.ns, VIP) && ping(&c.ns, VIP6)).then_some(())
    });
    let vip6 = address_line(&a.ns, "2001:db8::50/128");
    drop(agents);
    teardown(lan);
    assert!(
        both.is_some(),
        "the VIPs are not both reachable; a has {vip6:?}"
    );
}

/// An elected group with an IPv4 and an IPv6 VIP: the active's link goes down, the
/// standby takes both over and the client's neighbour entries of both families move
/// to it (gratuitous ARP and unsolicited NA).
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn an_elected_dual_stack_group_fails_over_as_one() {
    privileged();
    let lan = lan();
    let both = |me: &str, p: u8| {
        elected(&lan, me, &["a", "b"], p, "", "").replace(
            "vips = [\"10.0.0.50/24\"]",
            "vips = [\"10.0.0.50/24\", \"2001:db8::50/64\"]",
        )
    };
    let a = Agent::start(&lan.host("a").ns, "a", &both("a", 200)).unwrap();
    let b = Agent::start(&lan.host("b").ns, "b", &both("b", 100)).unwrap();
    assert!(wait_for(Duration::from_secs(5), || (state(&a) == "active"
        && state(&b) == "standby")
        .then_some(()))
    .is_some());
    let c = lan.host("c");
    assert!(ping(&c.ns, VIP) && ping(&c.ns, VIP6));
    assert!(entries_move_to(&c.ns, &lan.host("a").mac));
    lan.host("a")
        .ns
        .ip(&["link", "set", "eth0", "down"])
        .unwrap();
    assert!(wait_for(Duration::from_secs(3), || (state(&b) == "active")
        .then_some(()))
    .is_some());
    assert!(
        entries_move_to(&c.ns, &lan.host("b").mac),
        "the client's entries did not both move to b"
    );
    assert!(ping(&c.ns, VIP) && ping(&c.ns, VIP6));
    for v in [VIP, VIP6] {
        assert_eq!(b.vip_status(v).unwrap()["action"], "local");
    }
    drop((a, b));
    teardown(lan);
}
