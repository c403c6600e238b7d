//! Attacks on the election's port and the echo, from a host on the VIPs' subnet that
//! has no key (`x`, on the lab's switch), judged from the wire and by the standby's
//! takeover records:
//!
//! * a probe stolen off the wire and answered with sequence 2^63 does not silence
//!   the echo: the active's link going down is still detected by the echo, within
//!   its bound, not by advertisement silence;
//! * a standby that took over on the echo and then yielded to a forged
//!   advertisement of the dead active detects it again by the echo;
//! * the reflector answers peers only: probes from a stranger, and probes spoofed
//!   from a victim off the link, get nothing back on the wire;
//! * a flood on the election port (the benchmarks' XDP live-frames generator) from
//!   65k non-peer sources, and spoofed as the active, moves nothing: no transition,
//!   the active's advertisements keep arriving, no receive-buffer overflow.
//!
//! Frames the attacker sends with another host's MAC are put straight into the
//! target's switch port, so that the switch keeps learning the real ports (a switch
//! that learned the active's MAC on the attacker's port would blackhole it, which
//! is another attack than the one under test).

mod common;

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;
use lab::{frames, privileged, wait_for, Agent, Capture, Lan, PacketFlood};
use vip::{
    advert::{Advert, Kind},
    dataplane::BenchPrograms,
    echo::encode,
    host::monotonic_ns,
};
use vip_common::echo;

const PORT: u16 = 4112;

/// a and b elect (a preferred); x is the attacker. XDP_TX works from all three
/// (x's generator transmits with it).
fn lab() -> Lan {
    let mut lan = Lan::new(&["a", "b", "x"]).expect("building the lab");
    lan.enable_xdp_tx(&["a", "b", "x"])
        .expect("xdp-pass on the switch ports");
    lan
}

/// An elected node of a and b with `advert_ms` adverts and `group_extra` lines.
fn node(lan: &Lan, me: &str, prio: u8, advert_ms: u64, group_extra: &str) -> Agent {
    let cfg = elected(lan, me, &["a", "b"], prio, "", group_extra).replace(
        &format!("advert_interval_ms = {INTERVAL}"),
        &format!("advert_interval_ms = {advert_ms}"),
    );
    Agent::start(&lan.host(me).ns, me, &cfg).expect("starting the agent")
}

fn group(a: &Agent) -> serde_json::Value {
    a.status().expect("status")["groups"][0].clone()
}

/// A data-plane counter (0 when the agent has no such counter: an older vip, which
/// then fails on what the wire shows rather than here).
fn global(a: &Agent, name: &str) -> u64 {
    a.status().expect("status")["global"][name]
        .as_u64()
        .unwrap_or(0)
}

fn armed(b: &Agent) {
    let ok = wait_for(Duration::from_secs(5), || {
        (group(b)["echo"]["state"] == "armed").then_some(())
    });
    assert!(ok.is_some(), "the echo never armed: {}", group(b)["echo"]);
}

/// Puts `frame` straight into `host`'s switch port (it arrives at the host as if
/// switched to it; the switch learns nothing from it).
fn inject(lan: &Lan, host: &str, frame: &[u8]) {
    Capture::open(&lan.switch, &lan.host(host).port)
        .and_then(|p| p.send(frame))
        .expect("injecting a frame");
}

/// The IPv4/UDP parts of a frame: (source, destination, source port, destination
/// port, payload); None for anything else (options included: ours have none).
fn udp(f: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u16, u16, &[u8])> {
    if f.len() < 42 || f[12..14] != [8, 0] || f[14] != 0x45 || f[23] != 17 {
        return None;
    }
    let (s, d) = ipv4_addrs(f)?;
    let port = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    let len = (port(38) as usize).clamp(8, f.len() - 34);
    Some((s, d, port(34), port(36), &f[42..34 + len]))
}

/// An echo message's kind, if the payload is one.
fn echo_kind(payload: &[u8]) -> Option<u8> {
    (payload.len() >= echo::LEN && payload[0..4] == echo::MAGIC).then(|| payload[echo::OFF_KIND])
}

/// The standby's takeover after `since` (CLOCK_MONOTONIC ns): its reason and how long
/// after `since` it was decided.
fn takeover_after(b: &Agent, since: u64) -> (String, Duration) {
    let ok = wait_for(Duration::from_secs(5), || {
        let g = group(b);
        let t = g["last_takeover"]["decided_mono_ns"].as_u64()?;
        (g["state"] == "active" && t > since).then(|| {
            let kind = g["last_takeover"]["reason_kind"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            (kind, Duration::from_nanos(t - since))
        })
    });
    ok.unwrap_or_else(|| panic!("b did not take over: {}", group(b)))
}

/// The echo's bound at the defaults (6 probes of 2 ms, with one peer no skew) with
/// room for a loaded machine; advertisement silence at 100 ms adverts is three
/// intervals and a skew: over 300 ms.
const ECHO_BOUND: Duration = Duration::from_millis(150);

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_stolen_probe_cannot_silence_the_echo() {
    privileged();
    let lan = lab();
    let a = node(&lan, "a", 200, 100, "");
    let b = node(&lan, "b", 100, 100, "");
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    armed(&b);
    let (ha, hb) = (lan.host("a"), lan.host("b"));

    // A real probe, taken off the wire: what b sends into the switch.
    let from_b = Capture::open(&lan.switch, &hb.port).unwrap();
    let probe = from_b
        .collect(Duration::from_millis(100), |f| {
            udp(f).is_some_and(|(s, d, _, dp, p)| {
                s == hb.ip4 && d == ha.ip4 && dp == PORT && echo_kind(p) == Some(echo::PROBE)
            })
        })
        .pop()
        .expect("no probe from b on the wire");
    let (_, _, sport, _, payload) = udp(&probe).unwrap();
    // Answered as the active would, address and MAC, but with sequence 2^63.
    let mut answer = payload[..echo::LEN].to_vec();
    answer[echo::OFF_KIND] = echo::REPLY;
    answer[echo::OFF_SEQ..echo::OFF_SEQ + 8].copy_from_slice(&(1u64 << 63).to_be_bytes());
    let forged = frames::udp4(
        mac(&hb.mac),
        mac(&ha.mac),
        ha.ip4,
        hb.ip4,
        PORT,
        sport,
        &answer,
    );
    for _ in 0..3 {
        inject(&lan, "b", &forged);
    }
    // Deliberate: let the prober read the slot a few times before the fault.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(group(&b)["state"], "standby");

    let down = monotonic_ns();
    ha.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    let (why, after) = takeover_after(&b, down);
    assert_eq!(why, "echo_lost", "b took over on {why} after {after:?}");
    assert!(
        after < ECHO_BOUND,
        "b detected the link down after {after:?}, beyond the echo's bound"
    );
    assert!(
        global(&b, "echo_reply_refused") >= 3,
        "{}",
        b.status().unwrap()["global"]
    );
    drop((a, b));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_standby_that_yielded_to_a_forged_advert_still_detects_by_the_echo() {
    privileged();
    let lan = lab();
    let a = node(&lan, "a", 200, 100, "");
    let b = node(&lan, "b", 100, 100, "");
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    armed(&b);
    let ha = lan.host("a");

    // The echo reports the loss once: b takes over.
    let down = monotonic_ns();
    ha.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    let (why, after) = takeover_after(&b, down);
    assert_eq!(why, "echo_lost", "first takeover on {why} after {after:?}");
    let transitions = group(&b)["transitions"].as_u64().unwrap();

    // x forges the dead active's advertisement (no key: anything goes), from a's
    // address and MAC: b yields to it.
    let forged = Advert {
        kind: Kind::Advert,
        priority: 200,
        interval_ms: 100,
        hold_ms: 0,
        mac: mac(&ha.mac),
        addr: IpAddr::V4(ha.ip4),
        seq: 1,
        epoch: 0x5eed_f00d_0bad_cafe,
        group: "web".into(),
        handshakes: true,
        nonce: None,
    }
    .encode(None);
    let hb = lan.host("b");
    let frame = frames::udp4(
        mac(&hb.mac),
        mac(&ha.mac),
        ha.ip4,
        hb.ip4,
        PORT,
        PORT,
        &forged,
    );
    let forged_at = monotonic_ns();
    inject(&lan, "b", &frame);
    // It yielded, and the echo (armed: a had answered before) sees a silent again.
    let (why, after) = takeover_after(&b, forged_at);
    let now = group(&b)["transitions"].as_u64().unwrap();
    assert!(
        now >= transitions + 2,
        "b did not yield to the forged advert (transitions {transitions} -> {now})"
    );
    assert_eq!(why, "echo_lost", "second takeover on {why} after {after:?}");
    assert!(
        after < ECHO_BOUND,
        "b took over again {after:?} after the forged advert, beyond the echo's bound"
    );
    drop((a, b));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn the_reflector_answers_peers_only() {
    privileged();
    let lan = lab();
    let a = node(&lan, "a", 200, INTERVAL, "");
    let b = node(&lan, "b", 100, INTERVAL, "");
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    armed(&b);
    let (ha, hx) = (lan.host("a"), lan.host("x"));
    let victim = Ipv4Addr::new(198, 51, 100, 7);
    const MARK: u64 = 0x0bad_0bad_0bad_0bad;
    const N: u64 = 1000;

    // Everything a sends into the switch while x probes it.
    let from_a = Capture::open(&lan.switch, &ha.port).unwrap();
    let x = Capture::open(&hx.ns, "eth0").unwrap();
    let replies_before = group(&b)["echo"]["replies"].as_u64().unwrap();
    let refused_before = global(&a, "election_not_peer");
    let counter = std::thread::scope(|s| {
        let seen = s.spawn(|| {
            from_a.collect(Duration::from_millis(2500), |f| {
                udp(f)
                    .is_some_and(|(_, _, sp, _, p)| sp == PORT && echo_kind(p) == Some(echo::REPLY))
            })
        });
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..N {
            let p = encode(0, MARK, i + 1, IpAddr::V4(VIP4));
            // From x itself, and spoofed from a victim off the link (the reflection
            // would hit the victim's address from a's election port).
            for src in [hx.ip4, victim] {
                let f = frames::udp4(mac(&ha.mac), mac(&hx.mac), src, ha.ip4, 40000, PORT, &p);
                x.send(&f).unwrap();
            }
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        seen.join().unwrap()
    });
    let token = |f: &[u8]| {
        let (_, _, _, _, p) = udp(f).unwrap();
        u64::from_be_bytes(p[echo::OFF_TOKEN..echo::OFF_TOKEN + 8].try_into().unwrap())
    };
    let to_attacker: Vec<_> = counter.iter().filter(|f| token(f) == MARK).collect();
    let to_b = counter.len() - to_attacker.len();
    assert!(
        to_attacker.is_empty(),
        "a reflected {} of {} probes from a stranger or spoofed from a victim",
        to_attacker.len(),
        2 * N
    );
    // The capture saw the reflections it should: a kept answering b.
    assert!(to_b > 100, "only {to_b} replies to b seen on the wire");
    assert!(group(&b)["echo"]["replies"].as_u64().unwrap() > replies_before);
    assert_eq!(group(&b)["state"], "standby");
    let refused = global(&a, "election_not_peer") - refused_before;
    assert_eq!(refused, 2 * N, "{}", a.status().unwrap()["global"]);
    drop((a, b));
    teardown(lan);
}

/// A signed-looking hello (a random tag where the HMAC goes) from `from`.
fn hello(from: Ipv4Addr) -> Vec<u8> {
    Advert {
        kind: Kind::Hello,
        priority: 254,
        interval_ms: 10,
        hold_ms: 0,
        mac: vip::mac::Mac([2, 0, 0, 0, 0, 0x66]),
        addr: IpAddr::V4(from),
        seq: 1,
        epoch: 7,
        group: "web".into(),
        handshakes: true,
        nonce: None,
    }
    .encode(Some(b"not the group's key, not at all"))
}

/// Floods `to` from x for `secs` with `frame` (the generator's first 60 bytes, the
/// rest as given), spread over `sources` IPv4 sources (the frame's own and the ones
/// after it); returns frames offered/s and the generator that sent them: the XDP
/// live-frames generator, or an AF_PACKET socket where the kernel refuses live frames
/// (a smaller flood, still far above what b's socket could take).
fn flood(lan: &Lan, frame: &[u8], sources: u32, secs: f64) -> (f64, &'static str) {
    let x = &lan.host("x").ns;
    let mut gen = x.run_in(BenchPrograms::load).expect("the generator");
    gen.set_frame(&frame[..60]).unwrap();
    gen.set_sources(sources).unwrap();
    let ifindex = x.run_in(|| nix::net::if_::if_nametoindex("eth0")).unwrap();
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        let live = x
            .run_in(|| gen.live_frames(frame, ifindex, 50_000))
            .expect("live-frames BPF_PROG_TEST_RUN");
        if !live {
            let first = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
            let frames = (0..sources.max(1))
                .map(|k| frames::with_ipv4_source(frame, Ipv4Addr::from(u32::from(first) + k)))
                .collect();
            let left = secs - t0.elapsed().as_secs_f64();
            let sent = x
                .run_in(|| {
                    PacketFlood::open("eth0", frames)?.send_for(left, &AtomicBool::new(false))
                })
                .expect("the AF_PACKET flood");
            return (sent as f64 / t0.elapsed().as_secs_f64(), "AF_PACKET");
        }
        sent += 50_000;
    }
    (sent as f64 / t0.elapsed().as_secs_f64(), "XDP live frames")
}

/// UdpRcvbufErrors of a host's namespace.
fn rcvbuf_errors(lan: &Lan, host: &str) -> u64 {
    lan.host(host)
        .ns
        .snmp("Udp", "RcvbufErrors")
        .expect("Udp RcvbufErrors")
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_flood_on_the_election_port_moves_nothing() {
    privileged();
    let lan = lab();
    let dir = std::env::temp_dir().join(format!("vip-security-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("web.key");
    std::fs::write(&key, "correct horse battery staple\n").unwrap();
    let extra = format!("auth_key_file = \"{}\"", key.display());
    let a = node(&lan, "a", 200, INTERVAL, &extra);
    let b = node(&lan, "b", 100, INTERVAL, &extra);
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    armed(&b);
    let (ha, hb, hx) = (lan.host("a"), lan.host("b"), lan.host("x"));
    // Another subnet's 65,536 addresses: no peer among them.
    let strangers = Ipv4Addr::new(10, 1, 0, 0);
    let cases = [
        (
            "65,536 non-peer sources",
            strangers,
            65_536u32,
            "election_not_peer",
        ),
        (
            "spoofed as the active (x's MAC)",
            ha.ip4,
            1,
            "election_wrong_mac",
        ),
    ];
    for (what, src, sources, counter) in cases {
        let f = frames::udp4(
            mac(&hb.mac),
            mac(&hx.mac),
            src,
            hb.ip4,
            PORT,
            PORT,
            &hello(src),
        );
        let before = (
            group(&a)["transitions"].as_u64().unwrap(),
            group(&b)["transitions"].as_u64().unwrap(),
            group(&b)["election"]["adverts_received"].as_u64().unwrap(),
            global(&b, counter),
            rcvbuf_errors(&lan, "b"),
        );
        // The active's advertisements to b, as they leave a (the flood is not there).
        let from_a = Capture::open(&lan.switch, &ha.port).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (adverts, offered) = std::thread::scope(|s| {
            let d = done.clone();
            let seen = s.spawn(move || {
                let mut n = 0;
                while !d.load(Ordering::Relaxed) {
                    n += from_a
                        .collect(Duration::from_millis(100), |f| {
                            udp(f).is_some_and(|(s, d, sp, dp, _)| {
                                s == ha.ip4 && d == hb.ip4 && sp == PORT && dp == PORT
                            })
                        })
                        .len();
                }
                n
            });
            // A flood that fails stops the reader too: the test fails, not hangs.
            let stop = lab::StopOnDrop(&done);
            let (offered, generator) = flood(&lan, &f, sources, 2.5);
            // The wire's window lies inside the status reads': every advert counted
            // on the wire was sent after `before` and, unless lost, received before
            // `after` (deliberate: what is in flight lands first).
            drop(stop);
            let on_wire = seen.join().unwrap();
            std::thread::sleep(Duration::from_millis(3 * INTERVAL));
            let after = group(&b)["election"]["adverts_received"].as_u64().unwrap();
            ((on_wire, after), (offered, generator))
        });
        let (offered, generator) = offered;
        let (on_wire, received_after) = adverts;
        let received = received_after - before.2;
        let dropped = global(&b, counter) - before.3;
        let overflows = rcvbuf_errors(&lan, "b") - before.4;
        eprintln!(
            "{what}: offered {:.0} kpps ({generator}), {dropped} dropped by b's data plane ({counter}), \
             adverts on the wire {on_wire}, received by b {received}, receive-buffer errors {overflows}",
            offered / 1e3
        );
        expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
        assert_eq!(
            (
                group(&a)["transitions"].as_u64().unwrap(),
                group(&b)["transitions"].as_u64().unwrap()
            ),
            (before.0, before.1),
            "{what}: transitions during the flood"
        );
        assert!(
            on_wire > 50,
            "{what}: only {on_wire} adverts seen leaving a"
        );
        // At least 99 % (b may have received a few more: the windows' edges).
        assert!(
            received as usize * 100 >= on_wire * 99,
            "{what}: b received {received} of {on_wire} adverts"
        );
        assert!(
            dropped > 10_000,
            "{what}: the flood hardly reached b ({dropped})"
        );
        assert_eq!(overflows, 0, "{what}: b's sockets overflowed");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    drop((a, b));
    teardown(lan);
}
