//! Planned handovers (`vip demote`, then a preemption) under HTTP load: keep-alive
//! connections with requests in flight on the old active finish there, new
//! connections go to the new active, and no client sees a failed request or a reset.
//!
//! Both servers run a small HTTP/1.1 server on the VIP (`lab::http`) that answers
//! each request after 200 ms (so requests are in flight when the VIP moves) and
//! closes a connection after 3 requests (as nginx's `keepalive_requests` does), so
//! every connection ends within the default `drain_ms`. Two client hosts:
//! c follows the new active's announcement, d keeps a's MAC (a stale cache).
//! Measured with the vip before GRACE/KEEP (rev 6f00f0c), per client host: 17 of
//! 270 requests reset; of the 10 connections open across each handover, 4 (demote)
//! and 0 or 1 (preemption) completed.

mod common;

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use common::*;
use lab::{
    http::{clients_on, Load, Server, Tally},
    privileged, Lan,
};

const PORT: u16 = 8080;

/// `vip demote` while keep-alive HTTP clients have requests in flight on the active
/// a (it releases, b takes over), then `vip resume` (a preempts b): c follows each
/// new active's announcement (its packets of the old active's connections reach the
/// new one, which sends them on), d keeps a's MAC for the VIP (a permanent
/// neighbour entry: its packets reach a, which keeps its own connections and
/// forwards the rest). No failed request, no reset; the connections to each old
/// active finish there.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn handovers_keep_http_connections_in_flight() {
    privileged();
    let mut lan = Lan::new(&["a", "b", "c", "d"]).expect("building the lab");
    lan.enable_xdp_tx(&["a", "b"]).expect("xdp-pass");
    handovers_under_load(lan);
}

/// The same on veths as containers have them: TX checksum offload on (partial
/// checksums), no XDP helper on the switch ports, so the agents run in skb mode.
#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn handovers_keep_http_connections_in_flight_with_offloads() {
    privileged();
    handovers_under_load(Lan::with_offloads(&["a", "b", "c", "d"]).expect("building the lab"));
}

fn handovers_under_load(lan: Lan) {
    let all = ["a", "b"];
    let a = start_elected(&lan, "a", &all, 200, "");
    let b = start_elected(&lan, "b", &all, 100, "");
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    let to: SocketAddr = (VIP4, PORT).into();
    let load = Load::default();
    let _sa = Server::start(&lan.host("a").ns, to, "a", load);
    let _sb = Server::start(&lan.host("b").ns, to, "b", load);
    let (c, d) = (&lan.host("c").ns, &lan.host("d").ns);
    d.ip(&[
        "neigh",
        "replace",
        VIP,
        "lladdr",
        &lan.host("a").mac,
        "nud",
        "permanent",
        "dev",
        "eth0",
    ])
    .unwrap();

    let cli = |args: &[&str]| {
        let before = Instant::now();
        let out = a.cli(args).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        before
    };
    let stop = AtomicBool::new(false);
    let (per_host, demoted, resumed) = thread::scope(|s| {
        let clients = s.spawn(|| clients_on(&[c, d], to, load, &stop));
        // A failed step stops the clients too: the test fails, not hangs.
        let _stop = lab::StopOnDrop(&stop);
        thread::sleep(Duration::from_millis(1200));
        // a releases, b takes over.
        let demoted = cli(&["demote", "web"]);
        expect_states(&[("a", &a), ("b", &b)], &["standby", "active"]);
        thread::sleep(Duration::from_secs(2));
        // a (priority 200) preempts b.
        let resumed = cli(&["resume", "web"]);
        expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
        thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        (clients.join().unwrap(), demoted, resumed)
    });
    assert_eq!(
        kernel_neighbour(c, VIP).as_deref(),
        Some(lan.host("a").mac.as_str()),
        "c did not follow the announcements"
    );
    assert_eq!(
        b.status().unwrap()["groups"][0]["last_takeover"]["reason_kind"],
        "release"
    );
    assert_eq!(
        a.status().unwrap()["groups"][0]["last_takeover"]["reason_kind"],
        "preempt"
    );

    let mode = a.status().unwrap()["xdp_mode"].clone();
    let mut totals = Tally::default();
    for (host, conns) in ["c", "d"].iter().zip(&per_host) {
        let t = Tally::of(conns, demoted, resumed);
        eprintln!("handovers under HTTP load (XDP {mode}), clients on {host}: {t}");
        for c in conns.iter().filter(|c| c.error.is_some()).take(5) {
            eprintln!("  failed: {c:?}");
        }
        totals.add(&t);
    }
    eprintln!(
        "forwarded (as the new active to the old one, and as standby): b {}, a {}",
        counter(&b, VIP, "forwarded"),
        counter(&a, VIP, "forwarded")
    );
    let t = totals;
    t.assert_clean();
    drop((a, b));
    teardown(lan);
}
