//! Chaos under traffic: agents killed during a takeover, a flapping link, a thousand
//! promote/demote cycles, ten thousand VIPs. Afterwards exactly one node answers for
//! the VIP, nothing leaked (pins, namespaces, file descriptors, memory), and the
//! client lost no more than a failover costs.

mod common;

use std::{net::SocketAddr, path::Path, time::Duration};

use common::*;
use lab::{frames, privileged, wait_for, Agent, Bpffs, Capture, Lan, Prober, Responder};
use nix::sys::signal::Signal;

/// A node config with its data plane pinned under `pin`.
fn pinned(lan: &Lan, me: &str, all: &[&str], priority: u8, pin: &Path) -> String {
    elected(
        lan,
        me,
        all,
        priority,
        &format!("pin_dir = \"{}/{me}\"", pin.display()),
        "",
    )
}

/// Who answers an ARP request for the VIP, as seen on the client's wire.
fn answerers(lan: &Lan) -> Vec<vip::mac::Mac> {
    let c = lan.host("c");
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    cap.clear();
    cap.send(&frames::arp_request(mac(&c.mac), c.ip4, VIP4))
        .unwrap();
    arp_replies_for(&cap.collect(Duration::from_millis(150), |_| true), VIP4)
}

fn exactly_one_answers(lan: &Lan, who: &str) {
    let want = vec![mac(&lan.host(who).mac)];
    let ok = wait_for(Duration::from_secs(3), || {
        (answerers(lan) == want).then_some(())
    });
    assert!(
        ok.is_some(),
        "ARP for the VIP answered by {:?}, wanted only {who}",
        answerers(lan)
    );
}

/// Open descriptors of a process, at rest (the least of a few samples: a control
/// connection may be closing when one is taken).
fn fds(pid: u32) -> usize {
    (0..5)
        .map(|_| {
            // Deliberate: samples spread over time, see above.
            std::thread::sleep(Duration::from_millis(20));
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .min()
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn agents_killed_during_a_takeover() {
    privileged();
    let bpffs = Bpffs::mount().unwrap();
    let mut lan = Lan::new(&["a", "b", "e", "c"]).unwrap();
    lan.enable_xdp_tx(&["a", "b", "e"]).unwrap();
    let all = ["a", "b", "e"];
    let start = |n: &str, p: u8| {
        Agent::start(&lan.host(n).ns, n, &pinned(&lan, n, &all, p, &bpffs.dir)).unwrap()
    };
    let mut a = start("a", 200);
    let mut b = start("b", 150);
    let e = start("e", 100);
    assert!(wait_for(Duration::from_secs(5), || (state(&a) == "active")
        .then_some(()))
    .is_some());
    exactly_one_answers(&lan, "a");

    // a dies; b dies the moment it takes over; e must end up the only one answering,
    // although a's and b's programs stay attached (pinned) with the VIP on their hosts.
    a.proc.signal(Signal::SIGKILL).unwrap();
    let took = wait_for(Duration::from_secs(3), || {
        (state(&b) == "active").then_some(())
    });
    assert!(took.is_some());
    b.proc.signal(Signal::SIGKILL).unwrap();
    assert!(wait_for(Duration::from_secs(3), || (state(&e) == "active")
        .then_some(()))
    .is_some());
    exactly_one_answers(&lan, "e");
    let _ = (a.proc.try_status(), b.proc.try_status());

    // They come back (adopting their pinned data planes): a preempts, alone.
    drop((a, b));
    let a = start("a", 200);
    let b = start("b", 150);
    assert!(wait_for(Duration::from_secs(5), || (state(&a) == "active"
        && state(&b) == "standby"
        && state(&e) == "standby")
        .then_some(()))
    .is_some());
    exactly_one_answers(&lan, "a");
    drop((a, b, e));
    for n in all {
        assert!(!bpffs.dir.join(n).exists(), "pins of {n} left behind");
    }
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_flapping_link_settles_on_one_active() {
    privileged();
    let bpffs = Bpffs::mount().unwrap();
    let lan = lan();
    let all = ["a", "b"];
    let a = Agent::start(
        &lan.host("a").ns,
        "a",
        &pinned(&lan, "a", &all, 200, &bpffs.dir),
    )
    .unwrap();
    let b = Agent::start(
        &lan.host("b").ns,
        "b",
        &pinned(&lan, "b", &all, 100, &bpffs.dir),
    )
    .unwrap();
    assert!(wait_for(Duration::from_secs(5), || (state(&a) == "active")
        .then_some(()))
    .is_some());
    let to: SocketAddr = (VIP4, 7007).into();
    let _ra = Responder::start(&lan.host("a").ns, to, "a").unwrap();
    let _rb = Responder::start(&lan.host("b").ns, to, "b").unwrap();
    let prober = Prober::start(&lan.host("c").ns, to, Duration::from_millis(1)).unwrap();
    let flaps = 20;
    // Deliberate sleeps: the flaps are the test (link down 30 or 120 ms, up 150 ms).
    for i in 0..flaps {
        lan.host("a")
            .ns
            .ip(&["link", "set", "eth0", "down"])
            .unwrap();
        std::thread::sleep(Duration::from_millis(if i % 2 == 0 { 30 } else { 120 }));
        lan.host("a").ns.ip(&["link", "set", "eth0", "up"]).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(wait_for(Duration::from_secs(5), || (state(&a) == "active"
        && state(&b) == "standby")
        .then_some(()))
    .is_some());
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(3)),
        "a does not answer after the flaps"
    );
    let probes = prober.finish();
    exactly_one_answers(&lan, "a");
    // Each flap may cost at most what a failover costs: the link's down time plus the
    // takeover bound (3 intervals + skew), with a generous margin for a loaded machine.
    let lost = probes.iter().filter(|p| p.answered_by.is_none()).count();
    let bound = flaps * (120 + 4 * INTERVAL as usize + 50);
    assert!(
        lost <= bound,
        "lost {lost} probes over {flaps} flaps (bound {bound})"
    );
    eprintln!("{flaps} link flaps: {lost} of {} probes lost", probes.len());
    drop((a, b));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_thousand_promote_demote_cycles_leak_nothing() {
    privileged();
    let lan = lan();
    let a = agent(
        &lan,
        "a",
        &config("a", &["10.0.0.50/24"], "active", "garp_count = 1"),
    );
    let pid = a.proc.pid();
    let cycle = |n: usize| {
        for _ in 0..n {
            for cmd in ["demote", "promote"] {
                let r = vip::control::request(
                    &a.socket,
                    &if cmd == "demote" {
                        vip::control::Request::Demote {
                            group: "web".into(),
                            forward_to: None,
                        }
                    } else {
                        vip::control::Request::Promote {
                            group: "web".into(),
                        }
                    },
                )
                .unwrap();
                assert!(r.ok, "{r:?}");
            }
        }
    };
    cycle(50);
    let (fd0, rss0) = (fds(pid), rss_kb(pid));
    cycle(1000);
    let (fd1, rss1) = (fds(pid), rss_kb(pid));
    eprintln!("1000 promote/demote cycles: fds {fd0} -> {fd1}, RSS {rss0} -> {rss1} kB");
    assert_eq!(fd0, fd1, "file descriptors leaked");
    assert!(rss1 <= rss0 + 2048, "RSS grew from {rss0} to {rss1} kB");
    let s = a.status().unwrap();
    assert_eq!(s["groups"][0]["state"], "active");
    assert_eq!(s["groups"][0]["transitions"], 2 * 1050 + 1);
    exactly_one_answers(&lan, "a");
    let lo = lan.host("a").ns.vips_on_lo();
    assert_eq!(
        lo.iter()
            .filter(|a| **a == std::net::IpAddr::from(VIP4))
            .count(),
        1,
        "{lo:?}"
    );
    let addrs = lan.host("a").ns.ip(&["-4", "addr", "show"]).unwrap();
    assert!(
        !addrs.contains("10.0.0.50/"),
        "an address for the VIP: {addrs}"
    );
    drop(a);
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn ten_thousand_vips() {
    privileged();
    let lan = lan();
    let a_host = lan.host("a");
    a_host
        .ns
        .ip(&["addr", "add", "10.1.0.10/16", "dev", "eth0"])
        .unwrap();
    lan.host("c")
        .ns
        .ip(&["addr", "add", "10.1.0.12/16", "dev", "eth0"])
        .unwrap();
    let vips: Vec<String> = (0..10_000u32)
        .map(|i| format!("\"10.1.{}.{}/16\"", 1 + i / 250, 1 + i % 250))
        .collect();
    let cfg = format!(
        "[node]\nname = \"a\"\ninterface = \"eth0\"\nmax_vips = 10240\n\n[[group]]\nname = \"many\"\nvips = [{}]\nrole = \"active\"\ngarp_count = 1\n",
        vips.join(", ")
    );
    let t0 = std::time::Instant::now();
    let mut a = Agent::start(&a_host.ns, "a", &cfg).unwrap();
    let up = t0.elapsed();
    let s = a.status().unwrap();
    assert_eq!(s["groups"][0]["vips"].as_array().unwrap().len(), 10_000);
    assert!(
        a.log_text().contains("recommended 10"),
        "no warning above 10 VIPs"
    );
    // The agent is up before its addresses are: a worker adds them (the kernel takes
    // longer per address the more lo holds), and each VIP is announced once its own
    // is there. All of them are within a bound.
    let on_lo = || {
        a_host
            .ns
            .vips_on_lo()
            .iter()
            .filter(|a| a.is_ipv4())
            .count()
    };
    let placed = lab::wait_for(std::time::Duration::from_secs(60), || {
        (on_lo() == 10_000).then(|| t0.elapsed())
    })
    .unwrap_or_else(|| panic!("only {} of 10,000 VIPs on lo after 60 s", on_lo()));
    eprintln!(
        "10k VIPs: every VIP on lo {:.0} ms after the start",
        placed.as_secs_f64() * 1e3
    );
    // A few VIPs anywhere in the table answer, from the kernel's own neighbour code.
    let c = lan.host("c");
    for vip in ["10.1.1.1", "10.1.20.125", "10.1.40.250"] {
        assert!(ping(&c.ns, vip), "{vip} unreachable");
        assert_eq!(
            kernel_neighbour(&c.ns, vip).as_deref(),
            Some(a_host.mac.as_str())
        );
    }
    assert_eq!(on_lo(), 10_000);
    eprintln!(
        "10k VIPs: agent up in {:.0} ms, RSS {} kB",
        up.as_secs_f64() * 1e3,
        rss_kb(a.proc.pid())
    );
    let t1 = std::time::Instant::now();
    assert!(a.stop().unwrap().success());
    eprintln!(
        "10k VIPs: stopped and cleaned in {:.0} ms",
        t1.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(on_lo(), 0, "VIPs left behind");
    drop(a);
    teardown(lan);
}
