//! VIPs announced over BGP (`announce = "bgp"`), end to end: two nodes run the agent,
//! whose own BIRD peers with a router running FRR (a different implementation, as in
//! the field) with BFD at 10 ms x 3; a client behind the router reaches the VIP, which
//! is on no subnet of the lab, only through the route the active announces.
//!
//! Judged from outside the agents: the router's kernel FIB (what forwards the
//! client's packets), FRR's view of the sessions, and the client's UDP probes (which
//! node answered each). The rules under test:
//! * only the active announces; a node whose link dies leaves the router's FIB within
//!   BFD's detection time, and the standby's route takes over;
//! * a planned handover (`vip demote`) loses no probe: the successor announces
//!   before the old active withdraws, and the old active forwards meanwhile;
//! * a route never outlives the data plane that serves it: an agent stopped
//!   (SIGSTOP) or killed (SIGKILL) past its lease has its routes withdrawn by the
//!   speaker's guard, while its BIRD and its session stay up;
//! * a node whose speaker dies gives the VIP up (`track_bgp`), so the standby, which
//!   can announce, takes it.
//!
//! Documentation ranges only, inside the test's own namespaces.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lab::{privileged, wait_for, Agent, Bpffs, Frr, FrrOptions, Lan, Netns, Prober, Responder};

/// Outside the lab's subnets: reachable only over BGP.
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
const PREFIX: &str = "203.0.113.80/32";
const ROUTER_AS: u32 = 65000;
const PORT: u16 = 7007;

/// The routed lab: router r (FRR), nodes a and b (the agent and its BIRD), client c
/// behind r. Dropped in order: agents (and their speakers), FRR, the lab.
struct Routed {
    agents: Vec<(String, Agent, Speaker)>,
    _responders: Vec<Responder>,
    frr: Frr,
    client: Netns,
    lan: Lan,
}

/// A node's speaker directory: the guard and its BIRD are killed by PID (from their
/// pid files) and the directory removed on drop, whatever the test did to the agent.
struct Speaker {
    dir: PathBuf,
}

impl Speaker {
    fn pid(&self, file: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn kill(&self, file: &str) {
        if let Some(p) = self.pid(file) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.kill("guard.pid");
        self.kill("bird.pid");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Node `me`'s config: AS 65001 + i, the router as its one neighbour (BFD on), the
/// group `web` with the VIP, announced over BGP only.
fn node_config(
    lan: &Lan,
    me: &str,
    other: &str,
    asn: u32,
    priority: u8,
    dir: &Path,
    node_extra: &str,
) -> String {
    format!(
        "[node]\nname = \"{me}\"\ninterface = \"eth0\"\n{node_extra}\n\n\
         [bgp]\nlocal_as = {asn}\nneighbors = [{{ address = \"{}\", as = {ROUTER_AS} }}]\nspeaker_dir = \"{}\"\n\n\
         [[group]]\nname = \"web\"\nvips = [\"{VIP}/32\"]\npeers = [\"{}\"]\npriority = {priority}\n\
         advert_interval_ms = {}\nannounce = \"bgp\"\n",
        lan.host("r").ip4,
        dir.display(),
        lan.host(other).ip4,
        common::INTERVAL,
    )
}

fn routed(opts: FrrOptions) -> Routed {
    routed_with(opts, "")
}

/// The routed lab, with `a_extra` in a's `[node]`.
fn routed_with(opts: FrrOptions, a_extra: &str) -> Routed {
    let mut lan = Lan::new(&["r", "a", "b"]).expect("building the lab");
    lan.enable_xdp_tx(&["a", "b"]).expect("xdp-pass");
    let client = lan.routed("r", "c").expect("the client network");
    let r = lan.host("r").ip4;
    for n in ["a", "b"] {
        lan.host(n)
            .ns
            .ip(&["route", "add", "default", "via", &r.to_string()])
            .expect("default route");
    }
    let nodes = [
        (IpAddr::V4(lan.host("a").ip4), 65001, true),
        (IpAddr::V4(lan.host("b").ip4), 65002, true),
    ];
    let frr = Frr::start(&lan.host("r").ns, ROUTER_AS, r, &nodes, opts).expect("starting FRR");
    let mut responders = Vec::new();
    let mut agents = Vec::new();
    for (i, (me, other, prio)) in [("a", "b", 150), ("b", "a", 100)].into_iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("vip-bgp-{}-{me}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let speaker = Speaker { dir: dir.clone() };
        let extra = if me == "a" { a_extra } else { "" };
        let cfg = node_config(&lan, me, other, 65001 + i as u32, prio, &dir, extra);
        responders.push(
            Responder::start(&lan.host(me).ns, SocketAddr::new(VIP.into(), PORT), me)
                .expect("responder"),
        );
        let agent = Agent::start(&lan.host(me).ns, me, &cfg).expect("starting the agent");
        agents.push((me.to_string(), agent, speaker));
    }
    let lab = Routed {
        agents,
        _responders: responders,
        frr,
        client,
        lan,
    };
    lab.wait_routed(&["a"], "the active alone announces");
    lab
}

impl Routed {
    fn agent(&self, name: &str) -> &Agent {
        &self
            .agents
            .iter()
            .find(|(n, _, _)| n == name)
            .expect("agent")
            .1
    }

    fn speaker(&self, name: &str) -> &Speaker {
        &self
            .agents
            .iter()
            .find(|(n, _, _)| n == name)
            .expect("agent")
            .2
    }

    fn hops(&self) -> Vec<IpAddr> {
        self.frr.next_hops(PREFIX)
    }

    fn node_ip(&self, name: &str) -> IpAddr {
        IpAddr::V4(self.lan.host(name).ip4)
    }

    /// Waits (10 s: sessions come up first) until the router's FIB routes the VIP to
    /// exactly `nodes`.
    fn wait_routed(&self, nodes: &[&str], what: &str) {
        let mut want: Vec<IpAddr> = nodes.iter().map(|n| self.node_ip(n)).collect();
        want.sort();
        if wait_for(Duration::from_secs(10), || {
            (self.hops() == want).then_some(())
        })
        .is_none()
        {
            panic!(
                "{what}: the router routes {PREFIX} to {:?}, wanted {want:?}\nsessions: {:?}, BFD up: {:?}\n{}\n--- a\n{}\n--- b\n{}",
                self.hops(),
                self.frr.established(),
                self.frr.bfd_up(),
                self.frr.logs(),
                self.agent("a").log_text(),
                self.agent("b").log_text(),
            );
        }
    }

    fn probe(&self) -> Prober {
        let p = Prober::start(
            &self.client,
            SocketAddr::new(VIP.into(), PORT),
            Duration::from_millis(1),
        )
        .expect("prober");
        assert!(
            p.wait_answers("a", 20, Duration::from_secs(5)),
            "the client reaches the active through the router"
        );
        p
    }

    fn log(&self, name: &str) -> String {
        self.agent(name).log_text()
    }
}

/// The first group's state in `a`'s status.
fn state(a: &Agent) -> String {
    common::state(a)
}

/// The active announces (status says to whom, Established, BFD up), the standby does
/// not; the active's link goes down and the router drops its next hop within BFD's
/// time (it would keep it for the 3 s hold time without BFD), and the client is
/// answered by the new active.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn the_active_alone_announces_and_a_dead_link_leaves_the_router_within_bfd_time() {
    if !privileged() {
        return;
    }
    let lab = routed(FrrOptions::default());
    // Status: what is announced, to whom, in what state.
    let st = lab.agent("a").status().expect("status");
    let g = &st["groups"][0];
    assert_eq!(g["announce"], "bgp");
    assert_eq!(g["routes"]["announced"], true, "{g}");
    let s = &st["bgp"]["sessions"][0];
    assert_eq!(s["neighbor"], lab.lan.host("r").ip4.to_string(), "{st}");
    assert_eq!(s["established"], true, "{st}");
    assert_eq!(s["bfd"], "up", "{st}");
    let text = String::from_utf8_lossy(&lab.agent("a").cli(&["status"]).expect("status").stdout)
        .into_owned();
    assert!(
        text.contains("BGP: announced") && text.contains("(Established, BFD up"),
        "{text}"
    );
    let sb = lab.agent("b").status().expect("status");
    assert_eq!(sb["groups"][0]["routes"]["announced"], false, "{sb}");

    let prober = lab.probe();
    let down = Instant::now();
    lab.lan
        .host("a")
        .ns
        .ip(&["link", "set", "eth0", "down"])
        .expect("link down");
    // BFD (30 ms) and the router's FIB update; without BFD this takes the hold time.
    let b = lab.node_ip("b");
    let gone = wait_for(Duration::from_secs(2), || {
        (!lab.hops().contains(&lab.node_ip("a"))).then(|| down.elapsed())
    });
    assert!(
        prober.wait_answers("b", 20, Duration::from_secs(5)),
        "the new active answers through the router\n{}",
        lab.log("b")
    );
    let probes = prober.finish();
    let gone = gone.expect("the dead node's route left the router's FIB");
    assert!(
        gone < Duration::from_millis(500),
        "the router kept the dead node's route for {gone:?} (BFD at 10 ms x 3 sees it in 30 ms)"
    );
    assert_eq!(lab.hops(), vec![b]);
    let o = lab::outage(&probes, "a", "b").expect("a failover a -> b");
    eprintln!(
        "link down over BGP: route gone from the router's FIB after {gone:?}; client outage {:?} ({} lost)",
        o.outage, o.lost
    );
    assert!(
        o.outage < Duration::from_millis(1000),
        "outage {:?}",
        o.outage
    );
}

/// `vip demote` on the active: the standby announces, the old active forwards what
/// still reaches it and withdraws only at the end of its drain; no probe is lost.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn a_planned_handover_over_bgp_loses_no_probe() {
    if !privileged() {
        return;
    }
    let lab = routed(FrrOptions::default());
    let prober = lab.probe();
    let out = lab.agent("a").cli(&["demote", "web"]).expect("demote");
    assert!(out.status.success(), "{out:?}");
    // The router's FIB through the handover: never empty; both nodes for the drain
    // (the successor has announced, the old active has not withdrawn: it forwards
    // what still reaches it), then the successor alone. A withdrawal at the handover
    // itself could reach the router before the successor's route does.
    let (a, b) = (lab.node_ip("a"), lab.node_ip("b"));
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let h = lab.hops();
        if seen.last() != Some(&h) {
            seen.push(h.clone());
        }
        if h == [b] {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        !seen.iter().any(|h| h.is_empty()),
        "the router had no route for the VIP during the handover: {seen:?}"
    );
    assert!(
        seen.contains(&vec![a, b]),
        "the old active withdrew before its drain ended: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&vec![b]), "{seen:?}");
    assert!(prober.wait_answers("b", 200, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(100));
    let probes = prober.finish();
    // The last few may still be in flight when the prober stopped.
    let settled: Vec<_> = probes
        .iter()
        .filter(|p| {
            p.sent + Duration::from_millis(50) < probes.last().map_or(Duration::ZERO, |l| l.sent)
        })
        .collect();
    let lost = settled.iter().filter(|p| p.answered_by.is_none()).count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} probes lost across a planned handover\n{}\n{}",
        settled.len(),
        lab.log("a"),
        lab.log("b")
    );
    assert_eq!(state(lab.agent("a")), "standby");
}

/// An agent that stops renewing (SIGSTOP, then SIGKILL) while its BIRD runs: the
/// guard withdraws its routes before its lease ends, although its BGP session stays
/// Established; the standby takes over and is the only next hop. Without the guard,
/// the router would route to a node whose data plane no longer serves.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn a_stalled_or_killed_agent_has_its_routes_withdrawn_by_the_guard() {
    if !privileged() {
        return;
    }
    let mut lab = routed(FrrOptions::default());
    let a_ip = lab.node_ip("a");
    lab.agent("a")
        .proc
        .signal(nix::sys::signal::Signal::SIGSTOP)
        .expect("SIGSTOP");
    let stopped = Instant::now();
    let gone = wait_for(Duration::from_secs(3), || {
        (!lab.hops().contains(&a_ip)).then(|| stopped.elapsed())
    })
    .unwrap_or_else(|| panic!("a stopped agent's route stayed: {:?}", lab.hops()));
    assert!(
        lab.frr.established().contains(&a_ip),
        "the session stayed up: only the guard can have withdrawn the route"
    );
    lab.wait_routed(&["b"], "the standby took over and announces");
    eprintln!("SIGSTOP: route withdrawn from the router's FIB after {gone:?}");
    assert!(gone < Duration::from_secs(1), "{gone:?}");
    lab.agent("a")
        .proc
        .signal(nix::sys::signal::Signal::SIGCONT)
        .expect("SIGCONT");
    // It lost its lease, listens, and (higher priority, preempting) takes the VIP back.
    lab.wait_routed(&["a"], "the resumed agent took the VIP back");
    // Killed: its data plane goes, its speaker stays, and so would the route.
    let (_, a, _) = lab
        .agents
        .iter_mut()
        .find(|(n, _, _)| n == "a")
        .expect("agent a");
    a.proc
        .signal(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL");
    let killed = Instant::now();
    let gone = wait_for(Duration::from_secs(3), || {
        (!lab.hops().contains(&a_ip)).then(|| killed.elapsed())
    })
    .unwrap_or_else(|| panic!("a killed agent's route stayed: {:?}", lab.hops()));
    assert!(
        lab.speaker("a").pid("bird.pid").is_some() && lab.frr.established().contains(&a_ip),
        "BIRD outlived the agent, with its session"
    );
    lab.wait_routed(&["b"], "after the kill, only the standby");
    eprintln!("SIGKILL: route withdrawn from the router's FIB after {gone:?}");
}

/// The active's BIRD is killed: the node cannot announce any more, so it gives the
/// VIP up (`track_bgp`) and the standby takes it; the guard starts BIRD again.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn a_node_whose_speaker_dies_gives_the_vip_up() {
    if !privileged() {
        return;
    }
    let lab = routed(FrrOptions::default());
    let prober = lab.probe();
    lab.speaker("a").kill("bird.pid");
    lab.wait_routed(&["b"], "the standby announces once a's speaker is gone");
    assert!(
        prober.wait_answers("b", 50, Duration::from_secs(5)),
        "the client is answered by the new active"
    );
    drop(prober);
    let ok = wait_for(Duration::from_secs(10), || {
        (state(lab.agent("a")) == "fault").then_some(())
    });
    let st = lab.agent("a").status().expect("status");
    assert!(
        ok.is_some() || st["groups"][0]["state"] != "active",
        "a still claims the VIP without a speaker: {st}"
    );
    // BIRD is back (the guard restarted it) and the session with it.
    let a_ip = lab.node_ip("a");
    assert!(
        wait_for(Duration::from_secs(15), || lab
            .frr
            .established()
            .contains(&a_ip)
            .then_some(()))
        .is_some(),
        "the guard restarted BIRD\n{}",
        lab.log("a")
    );
}

/// An upgrade (`vip reload`, the pinned data plane adopted by the re-executed binary)
/// withdraws nothing: the router routes to a throughout, a's session never drops, its
/// BIRD is the same process, and no probe is lost. Then SIGTERM: a hands over (the
/// successor announces, a withdraws after its drain) and no probe is lost either.
#[test]
#[ignore = "privileged: namespaces, XDP, BIRD and FRR (run by cargo xtask test)"]
fn an_upgrade_withdraws_nothing_and_a_stop_hands_over_without_loss() {
    if !privileged() {
        return;
    }
    let bpffs = Bpffs::mount().expect("bpffs");
    let pin = format!("pin_dir = \"{}/bgp-a\"", bpffs.dir.display());
    let mut lab = routed_with(FrrOptions::default(), &pin);
    let a_ip = lab.node_ip("a");
    let bird = lab.speaker("a").pid("bird.pid");
    let prober = lab.probe();
    let out = lab.agent("a").cli(&["reload"]).expect("reload");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("re-executing"),
        "{text}"
    );
    // Watched from the router until the new image has adopted the data plane.
    let end = Instant::now() + Duration::from_secs(10);
    let mut adopted = false;
    while Instant::now() < end {
        let (h, up) = (lab.hops(), lab.frr.established());
        assert_eq!(h, vec![a_ip], "the router's route moved during the upgrade");
        assert!(up.contains(&a_ip), "a's session dropped during the upgrade");
        if lab
            .agent("a")
            .status()
            .is_ok_and(|s| s["groups"][0]["reason_kind"] == "adopted")
        {
            adopted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(adopted, "not re-executed:\n{}", lab.log("a"));
    assert_eq!(lab.speaker("a").pid("bird.pid"), bird, "BIRD was restarted");
    let st = lab.agent("a").status().expect("status");
    assert_eq!(st["groups"][0]["routes"]["announced"], true, "{st}");
    assert!(prober.wait_answers("a", 100, Duration::from_secs(3)));
    // SIGTERM: a planned handover.
    let (_, a, _) = lab
        .agents
        .iter_mut()
        .find(|(n, _, _)| n == "a")
        .expect("agent a");
    let stopped = a.stop();
    assert!(
        stopped.is_some_and(|s| s.success()),
        "a did not stop cleanly: {stopped:?}"
    );
    assert!(prober.wait_answers("b", 100, Duration::from_secs(5)));
    lab.wait_routed(&["b"], "after a's stop, b alone");
    let probes = prober.finish();
    let last = probes.last().map_or(Duration::ZERO, |l| l.sent);
    let lost = probes
        .iter()
        .filter(|p| p.sent + Duration::from_millis(50) < last && p.answered_by.is_none())
        .count();
    assert_eq!(
        lost,
        0,
        "probes lost across the upgrade and the stop\n{}",
        lab.log("b")
    );
    // A clean stop stopped its speaker too.
    assert!(
        wait_for(Duration::from_secs(3), || lab
            .speaker("a")
            .pid("guard.pid")
            .is_none()
            .then_some(()))
        .is_some(),
        "a's guard outlived a clean stop"
    );
}
