//! The routed lab with vip on the nodes: router r (FRR), nodes a and b (and d, for
//! anycast) running the agent with `[bgp]` (each its own BIRD, started by the agent's
//! speaker guard), and a client c behind r. A node named in `Options::segments` sits
//! on a segment of its own behind r instead of on the switch (`Lan::segment`). The group `web` holds one VIP outside every subnet of the lab
//! (TEST-NET-3), announced over BGP only: the client reaches it only through the
//! route the active announces. Shared by the `bgp` tests and `cargo xtask bench bgp`.
//!
//! What the tests and the benchmark judge is outside the agents: the router's kernel
//! FIB ([`Routed::hops`]), FRR's sessions, and the client's probes. Dropped in order:
//! the agents and their speakers (killed by PID from their pid files, whatever the
//! test did to the agent), FRR, then the lab's namespaces.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{wait_for, Agent, Frr, FrrOptions, Lan, Netns, Prober, Responder};

/// The VIP (outside the lab's subnets: reachable only over BGP) and its route.
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
pub const PREFIX: &str = "203.0.113.80/32";
/// The group's IPv6 VIP (outside the lab's /64), announced over the same IPv4
/// sessions (MP-BGP, the node's IPv6 addresses as next hop).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0x80);
pub const PREFIX6: &str = "2001:db8:99::80/128";
pub const ROUTER_AS: u32 = 65000;
/// The UDP port the nodes' responders answer on.
pub const PORT: u16 = 7007;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// How the routed lab is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub frr: FrrOptions,
    /// BFD on the sessions (both ends); without it, a dead node's route goes with the
    /// hold timer.
    pub bfd: bool,
    /// Lines in a's `[node]` (a pin directory, for an upgrade).
    pub a_node: String,
    /// The group's advertisement interval.
    pub advert_interval_ms: u64,
    /// The nodes (a, b, then d), by falling priority: 150, 100, 50.
    pub nodes: Vec<&'static str>,
    /// Lines added to the group (`balance = {}`: anycast; `role = ...`).
    pub group: String,
    /// An elected group among the nodes (else each node's group stands alone).
    pub elected: bool,
    /// TCP-MD5 passwords of the nodes' sessions (`password_file`), by node; the
    /// router's is `frr.password`.
    pub passwords: Vec<(&'static str, &'static str)>,
    /// The nodes the router must route the VIP to before `start` returns (None: a
    /// alone for the default elected group, else every node).
    pub announcing: Option<Vec<&'static str>>,
    /// Nodes (of `nodes`) each on a segment of its own behind the router
    /// (`Lan::segment`) rather than on the switch: their group's peers reach them
    /// routed, and an anycast group's packets through the tunnel.
    pub segments: Vec<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            frr: FrrOptions::default(),
            bfd: true,
            a_node: String::new(),
            advert_interval_ms: 20,
            nodes: vec!["a", "b"],
            group: String::new(),
            elected: true,
            passwords: Vec::new(),
            announcing: None,
            segments: Vec::new(),
        }
    }
}

/// A node's speaker directory: its guard and BIRD are killed by PID, and the
/// directory removed, on drop.
pub struct Speaker {
    pub dir: PathBuf,
}

impl Speaker {
    /// The PID in the directory's `file` (`guard.pid`, `bird.pid`), if there.
    pub fn pid(&self, file: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL to the process of `file`'s PID.
    pub fn kill(&self, file: &str) {
        if let Some(p) = self.pid(file) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Speaker {
    /// The node's TCP-MD5 key file, beside (not in) the directory the agent owns.
    pub fn key_file(&self) -> PathBuf {
        self.dir.with_extension("key")
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.kill("guard.pid");
        self.kill("bird.pid");
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.key_file());
    }
}

/// The running routed lab (field order is drop order).
pub struct Routed {
    pub agents: Vec<(String, Agent, Speaker)>,
    _responders: Vec<Responder>,
    pub frr: Frr,
    pub client: Netns,
    pub lan: Lan,
}

/// Node `me`'s config: its own AS, the router as its one neighbour, the group `web`
/// with the VIP, announced over BGP only.
fn node_config(
    lan: &Lan,
    me: &str,
    asn: u32,
    priority: u8,
    speaker: &Speaker,
    o: &Options,
) -> String {
    let extra = if me == "a" { o.a_node.as_str() } else { "" };
    let password = if o.passwords.iter().any(|(n, _)| *n == me) {
        format!(", password_file = \"{}\"", speaker.key_file().display())
    } else {
        String::new()
    };
    let peers: Vec<String> = o
        .nodes
        .iter()
        .filter(|n| **n != me)
        .map(|n| format!("\"{}\"", lan.host(n).ip4))
        .collect();
    let election = if o.elected {
        format!(
            "peers = [{}]\npriority = {priority}\nadvert_interval_ms = {}\n",
            peers.join(", "),
            o.advert_interval_ms
        )
    } else {
        String::new()
    };
    format!(
        "[node]\nname = \"{me}\"\ninterface = \"eth0\"\n{extra}\n\n\
         [bgp]\nlocal_as = {asn}\nneighbors = [{{ address = \"{}\", as = {ROUTER_AS}, bfd = {}{password} }}]\nspeaker_dir = \"{}\"\n\n\
         [[group]]\nname = \"web\"\nvips = [\"{VIP}/32\", \"{VIP6}/128\"]\n{election}announce = \"bgp\"\n{}\n",
        lan.gateway_of("r", me).0,
        o.bfd,
        speaker.dir.display(),
        o.group,
    )
}

impl Routed {
    /// Builds the lab, starts FRR and both agents (a at priority 150, b at 100), and
    /// waits until the router routes the VIP to a alone.
    pub fn start(o: &Options) -> Result<Self> {
        let switched: Vec<&str> = o
            .nodes
            .iter()
            .copied()
            .filter(|n| !o.segments.contains(n))
            .collect();
        let mut names = vec!["r"];
        names.extend(switched.iter().copied());
        let mut lan = Lan::new(&names).context("building the lab")?;
        lan.enable_xdp_tx(&switched)?;
        let client = lan.routed("r", "c")?;
        for (k, n) in o.segments.iter().enumerate() {
            lan.segment("r", n, k as u8)
                .with_context(|| format!("building {n}'s segment"))?;
        }
        let r = lan.host("r").ip4;
        let r6 = lan.host("r").ip6;
        for n in &switched {
            let ns = &lan.host(n).ns;
            ns.ip(&["route", "add", "default", "via", &r.to_string()])?;
            ns.ip(&["-6", "route", "add", "default", "via", &r6.to_string()])?;
        }
        let nodes: Vec<(IpAddr, u32, bool)> = o
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (IpAddr::V4(lan.host(n).ip4), 65001 + i as u32, o.bfd))
            .collect();
        let frr = Frr::start(&lan.host("r").ns, ROUTER_AS, r, &nodes, o.frr.clone())?;
        let mut responders = Vec::new();
        let mut agents = Vec::new();
        for (i, me) in o.nodes.iter().copied().enumerate() {
            let prio = [150u8, 100, 50].get(i).copied().unwrap_or(10);
            let dir = std::env::temp_dir().join(format!(
                "vip-bgp-{}-{}-{me}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let speaker = Speaker { dir: dir.clone() };
            if let Some((_, pw)) = o.passwords.iter().find(|(n, _)| *n == me) {
                std::fs::write(speaker.key_file(), pw).context("writing a key file")?;
            }
            let cfg = node_config(&lan, me, 65001 + i as u32, prio, &speaker, o);
            for vip in [IpAddr::V4(VIP), IpAddr::V6(VIP6)] {
                responders.push(Responder::start(
                    &lan.host(me).ns,
                    SocketAddr::new(vip, PORT),
                    me,
                )?);
            }
            let agent = Agent::start(&lan.host(me).ns, me, &cfg)?;
            agents.push((me.to_string(), agent, speaker));
        }
        let lab = Routed {
            agents,
            _responders: responders,
            frr,
            client,
            lan,
        };
        if let Some(nodes) = &o.announcing {
            lab.wait_routed(nodes, "the nodes expected to announce do")?;
        } else if o.elected && o.group.is_empty() {
            lab.wait_routed(&["a"], "the active alone announces")?;
        } else {
            lab.wait_routed(&o.nodes, "every node announces")?;
        }
        Ok(lab)
    }

    pub fn agent(&self, name: &str) -> &Agent {
        &self.entry(name).1
    }

    pub fn agent_mut(&mut self, name: &str) -> &mut Agent {
        let i = self
            .agents
            .iter()
            .position(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no agent {name}"));
        &mut self.agents[i].1
    }

    pub fn speaker(&self, name: &str) -> &Speaker {
        &self.entry(name).2
    }

    fn entry(&self, name: &str) -> &(String, Agent, Speaker) {
        self.agents
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// The next hops of the VIP's route in the router's kernel FIB, sorted.
    pub fn hops(&self) -> Vec<IpAddr> {
        self.frr.next_hops(PREFIX)
    }

    pub fn node_ip(&self, name: &str) -> IpAddr {
        IpAddr::V4(self.lan.host(name).ip4)
    }

    /// Waits (10 s: sessions come up first) until the router's FIB routes the VIP to
    /// exactly `nodes`; the error says what the router, FRR and the agents had.
    pub fn wait_routed(&self, nodes: &[&str], what: &str) -> Result<()> {
        let mut want: Vec<IpAddr> = nodes.iter().map(|n| self.node_ip(n)).collect();
        want.sort();
        if wait_for(Duration::from_secs(10), || {
            (self.hops() == want).then_some(())
        })
        .is_some()
        {
            return Ok(());
        }
        bail!(
            "{what}: the router routes {PREFIX} to {:?}, wanted {want:?}\nsessions: {:?}, BFD up: {:?}\n{}\n--- a\n{}\n--- b\n{}",
            self.hops(),
            self.frr.established(),
            self.frr.bfd_up(),
            self.frr.logs(),
            self.log("a"),
            self.log("b"),
        )
    }

    /// Waits (5 s) until an anycast group is directed by exactly one of `nodes` whose
    /// table holds every one of them: the router may route to a member before the
    /// director has heard it (a member announces once its own session is up; a
    /// director that just preempted builds its first table from the adverts of the
    /// last 3 intervals), and meanwhile the director places the new flows that member
    /// hands it on the others. A settled group is what a spread is measured on.
    pub fn wait_directed(&self, nodes: &[&str], what: &str) -> Result<()> {
        let view = |n: &str| -> Option<(String, usize)> {
            let s = self.agent(n).status().ok()?;
            let g = &s["groups"][0];
            let healthy = g["balance"]["members"]
                .as_array()?
                .iter()
                .filter(|m| m["healthy"] == true)
                .count();
            Some((g["state"].as_str()?.to_string(), healthy))
        };
        let settled = || {
            let views: Vec<Option<(String, usize)>> = nodes.iter().map(|n| view(n)).collect();
            let directors: Vec<&(String, usize)> = views
                .iter()
                .flatten()
                .filter(|(state, _)| state == "active")
                .collect();
            (views.iter().all(Option::is_some)
                && directors.len() == 1
                && directors[0].1 == nodes.len())
            .then_some(())
        };
        if wait_for(Duration::from_secs(5), settled).is_some() {
            return Ok(());
        }
        let views: Vec<String> = nodes
            .iter()
            .map(|n| format!("{n}: {:?}", view(n)))
            .collect();
        bail!(
            "{what}: no single director balancing over all of {nodes:?} (state, members healthy): {}\n--- a\n{}",
            views.join(", "),
            self.log("a"),
        )
    }

    /// Starts a new agent on `name` with the config its current one was started with
    /// (after that one exited or was stopped), in its place.
    pub fn restart_agent(&mut self, name: &str) -> Result<()> {
        let cfg: String = std::fs::read_to_string(&self.agent(name).config)?
            .lines()
            // Written by `Agent::start`, which writes its own again.
            .filter(|l| !l.starts_with("control_socket"))
            .map(|l| format!("{l}\n"))
            .collect();
        let agent = Agent::start(&self.lan.host(name).ns, name, &cfg)?;
        *self.agent_mut(name) = agent;
        Ok(())
    }

    /// How long after `since` the router's FIB stopped routing the VIP to `node`
    /// (waiting up to `limit`); None if it still does.
    pub fn gone_after(
        &self,
        node: &str,
        since: std::time::Instant,
        limit: Duration,
    ) -> Option<Duration> {
        let ip = self.node_ip(node);
        wait_for(limit, || {
            (!self.hops().contains(&ip)).then(|| since.elapsed())
        })
    }

    /// A client prober at 1 ms to the IPv4 VIP (a new source port each), once the
    /// active (`from_a`: a, else b) answers it.
    pub fn probe(&self, from_a: bool) -> Result<Prober> {
        self.probe_to(IpAddr::V4(VIP), from_a)
    }

    /// The same, to `vip` (the IPv4 or the IPv6 VIP).
    pub fn probe_to(&self, vip: IpAddr, from_a: bool) -> Result<Prober> {
        let p = Prober::start(
            &self.client,
            SocketAddr::new(vip, PORT),
            Duration::from_millis(1),
        )?;
        let first = if from_a { "a" } else { "b" };
        if !p.wait_answers(first, 20, Duration::from_secs(5)) {
            bail!("the client is not answered by {first} through the router");
        }
        Ok(p)
    }

    pub fn log(&self, name: &str) -> String {
        self.agent(name).log_text()
    }
}
