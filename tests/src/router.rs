//! A routed lab: a router host between the lab's bridge and a client network, FRR on
//! the router (eBGP with BFD towards the nodes, kernel ECMP), and BIRD on the nodes.
//!
//! This is the setting of VIPs announced over BGP: the nodes announce host routes,
//! the router installs one next hop per announcing node into its kernel FIB, and the
//! client reaches the VIP only through the router. What a test judges is the router's
//! kernel FIB ([`Frr::next_hops`]), because that is what forwards the client's
//! packets; FRR's own RIB can lag behind it or differ from it.
//!
//! The daemons run in the foreground (no `-d`), so the lab holds them by PID as
//! [`Proc`]s and stops them on drop; each one has its own run directory (sockets, pid
//! files, logs), which is removed on drop. Nothing here touches the root namespace's
//! routing: every daemon is started with `ip netns exec` in a namespace of the test.

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{netns::run, Lan, Netns, Proc};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// FRR's daemons, where Debian installs them.
const FRR_DIR: &str = "/usr/lib/frr";

impl Lan {
    /// A client network behind `router` (a host of this lab): the router's `eth1` is
    /// 198.51.100.1/24 and 2001:db8:c::1/64, the client (returned) is .10 / ::10 with
    /// its default routes via the router. The router forwards both families and hashes
    /// multipath flows on their ports (`fib_multipath_hash_policy = 1`), so that
    /// different flows of one client spread over the ECMP next hops as on a real
    /// router, rather than all following the source address.
    pub fn routed(&mut self, router: &str, client: &str) -> Result<Netns> {
        let c = Netns::new(client)?;
        let r = &self.host(router).ns;
        crate::veth(r, "eth1", &c, "eth0")?;
        r.ip(&["addr", "add", "198.51.100.1/24", "dev", "eth1"])?;
        r.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:c::1/64",
            "dev",
            "eth1",
            "nodad",
        ])?;
        r.ip(&["link", "set", "eth1", "up"])?;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        r.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        r.sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;
        c.sysctl("net.ipv6.conf.eth0.accept_dad", "0")?;
        c.ip(&["addr", "add", "198.51.100.10/24", "dev", "eth0"])?;
        c.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:c::10/64",
            "dev",
            "eth0",
            "nodad",
        ])?;
        c.ip(&["link", "set", "eth0", "up"])?;
        c.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        c.ip(&["-6", "route", "add", "default", "via", "2001:db8:c::1"])?;
        // Full checksums on the wire, as the lab's hosts send (see `Lan::new`).
        c.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        Ok(c)
    }
}

impl Lan {
    /// A host `name` on a segment of its own behind `router`, the lab's `k`-th such
    /// (0, 1, ...): the router's `eth{2 + k}` is 10.0.(1 + k).1/24 and
    /// 2001:db8:(1 + k)::1/64, the host's `eth0` .10 / ::10, with its default routes
    /// via the router. It joins the lab's hosts (`Lan::host`) without a switch port:
    /// the router's end of its link runs `vip xdp-pass` instead, so that what the
    /// host's XDP program sends back out (XDP_TX) reaches the router.
    pub fn segment(&mut self, router: &str, name: &str, k: u8) -> Result<()> {
        let ns = Netns::new(name)?;
        let r = &self.host(router).ns;
        let rif = format!("eth{}", 2 + k);
        crate::veth(r, &rif, &ns, "eth0")?;
        let (r4, ip4) = (
            Ipv4Addr::new(10, 0, 1 + k, 1),
            Ipv4Addr::new(10, 0, 1 + k, 10),
        );
        let (r6, ip6): (Ipv6Addr, Ipv6Addr) = (
            format!("2001:db8:{}::1", 1 + k).parse()?,
            format!("2001:db8:{}::10", 1 + k).parse()?,
        );
        r.ip(&["addr", "add", &format!("{r4}/24"), "dev", &rif])?;
        r.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{r6}/64"),
            "dev",
            &rif,
            "nodad",
        ])?;
        r.ip(&["link", "set", &rif, "up"])?;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        ns.sysctl("net.ipv6.conf.eth0.accept_dad", "0")?;
        ns.ip(&["addr", "add", &format!("{ip4}/24"), "dev", "eth0"])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &r4.to_string()])?;
        ns.ip(&["-6", "route", "add", "default", "via", &r6.to_string()])?;
        // Full checksums on the wire, as the lab's hosts send (see `Lan::new`).
        ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        r.exec(&["ethtool", "-K", &rif, "tx", "off"])?;
        let router_ns = r.name.clone();
        self.xdp_pass(&router_ns, &[rif])?;
        let mac = ns.mac("eth0")?;
        self.hosts.push(crate::Host {
            name: name.into(),
            ns,
            ip4,
            ip6,
            mac,
            port: String::new(),
        });
        Ok(())
    }

    /// The router's address on host `name`'s segment: its own segment's (see
    /// [`Lan::segment`]) or the switch's.
    pub fn gateway_of(&self, router: &str, name: &str) -> (Ipv4Addr, Ipv6Addr) {
        let h = self.host(name);
        if h.port.is_empty() {
            let o = h.ip4.octets();
            let s = h.ip6.segments();
            (
                Ipv4Addr::new(o[0], o[1], o[2], 1),
                Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 1),
            )
        } else {
            (self.host(router).ip4, self.host(router).ip6)
        }
    }
}

/// How FRR's BGP and BFD are tuned. The defaults are the lab's fast failover: BFD
/// 10 ms x 3 (a dead link is seen in 30 ms), BGP hold 3 s / keepalive 1 s (the
/// fallback when BFD is off), and up to 8 ECMP paths.
#[derive(Clone, Debug)]
pub struct FrrOptions {
    pub bfd_interval: Duration,
    pub bfd_multiplier: u8,
    pub hold: Duration,
    pub keepalive: Duration,
    pub maximum_paths: u8,
    /// Runs bfdd with real-time priority (SCHED_FIFO): at 10 ms intervals, a bfdd
    /// that waits behind a busy CPU's other work for 30 ms declares its peers down.
    pub realtime_bfd: bool,
    /// zebra's work-queue hold before it writes routes to the kernel (FRR's default,
    /// None, is 10 ms); bgpd's own 50 ms queue hold is compiled in.
    pub zebra_work_queue_ms: Option<u32>,
    /// A TCP-MD5 password (RFC 2385) on every session.
    pub password: Option<String>,
}

impl Default for FrrOptions {
    fn default() -> Self {
        FrrOptions {
            bfd_interval: Duration::from_millis(10),
            bfd_multiplier: 3,
            hold: Duration::from_secs(3),
            keepalive: Duration::from_secs(1),
            maximum_paths: 8,
            realtime_bfd: true,
            zebra_work_queue_ms: None,
            password: None,
        }
    }
}

/// One BGP neighbour of the router: its address, its AS, and whether BGP follows a
/// BFD session to it.
#[derive(Clone, Copy, Debug)]
pub struct Neighbor {
    pub addr: IpAddr,
    pub asn: u32,
    pub bfd: bool,
}

impl From<(IpAddr, u32, bool)> for Neighbor {
    fn from((addr, asn, bfd): (IpAddr, u32, bool)) -> Self {
        Neighbor { addr, asn, bfd }
    }
}

/// FRR (zebra, bfdd, bgpd) in one namespace, configured as an eBGP router.
pub struct Frr {
    /// In start order (zebra, bfdd, bgpd); stopped in reverse.
    daemons: Vec<Proc>,
    pub dir: PathBuf,
    ns: String,
}

impl Frr {
    /// Starts zebra, bfdd and bgpd in `ns` with AS `local_as`, one eBGP session per
    /// neighbour (IPv4 and IPv6 unicast on each), no policy needed to accept or send
    /// routes (`no bgp ebgp-requires-policy`), and multipath across different peer ASes
    /// (`bgp bestpath as-path multipath-relax`), so the same /32 from several nodes
    /// becomes one kernel route with several next hops. Returns once the three
    /// daemons answer on their vty sockets.
    pub fn start(
        ns: &Netns,
        local_as: u32,
        router_id: Ipv4Addr,
        neighbors: &[(IpAddr, u32, bool)],
        opts: FrrOptions,
    ) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "vip-frr-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut frr = Frr {
            daemons: Vec::new(),
            dir,
            ns: ns.name.clone(),
        };
        let neighbors: Vec<Neighbor> = neighbors.iter().map(|&n| n.into()).collect();
        frr.write_configs(local_as, router_id, &neighbors, &opts)?;
        // The daemons drop to user frr: their directory and files must be theirs.
        let user = nix::unistd::User::from_name("frr")
            .context("looking up user frr")?
            .context("no user frr: is the Debian package frr installed?")?;
        chown_tree(&frr.dir, user.uid, user.gid)?;
        // zebra first: bfdd and bgpd connect to its zserv socket when they start.
        frr.spawn("zebra", &["-s", "90000000"], false)?;
        // bfdd's control socket defaults to one path under /var/run/frr, which two
        // routers (two tests) would share: each gets its own.
        let bfdctl = frr.dir.join("bfdd.sock");
        let bfdctl = path_str(&bfdctl)?.to_string();
        frr.spawn("bfdd", &["--bfdctl", &bfdctl], opts.realtime_bfd)?;
        frr.spawn("bgpd", &[], false)?;
        Ok(frr)
    }

    fn write_configs(
        &self,
        local_as: u32,
        router_id: Ipv4Addr,
        neighbors: &[Neighbor],
        opts: &FrrOptions,
    ) -> Result<()> {
        let log = |daemon: &str| -> Result<String> {
            Ok(format!(
                "hostname router\nlog file {} informational\nlog timestamp precision 3\n",
                path_str(&self.dir.join(format!("{daemon}.log")))?
            ))
        };
        let mut zebra = log("zebra")?;
        if let Some(ms) = opts.zebra_work_queue_ms {
            writeln!(zebra, "zebra work-queue {ms}")?;
        }
        fs::write(self.dir.join("zebra.conf"), zebra)?;
        let ms = opts.bfd_interval.as_millis();
        fs::write(
            self.dir.join("bfdd.conf"),
            format!(
                "{}bfd\n profile lab\n  receive-interval {ms}\n  transmit-interval {ms}\n  detect-multiplier {}\n exit\nexit\n",
                log("bfdd")?,
                opts.bfd_multiplier
            ),
        )?;
        let (ka, hold) = (opts.keepalive.as_secs(), opts.hold.as_secs());
        let mut c = log("bgpd")?;
        writeln!(c, "router bgp {local_as}")?;
        writeln!(c, " bgp router-id {router_id}")?;
        writeln!(c, " bgp log-neighbor-changes")?;
        writeln!(c, " no bgp ebgp-requires-policy")?;
        writeln!(c, " no bgp default ipv4-unicast")?;
        writeln!(c, " bgp bestpath as-path multipath-relax")?;
        writeln!(c, " timers bgp {ka} {hold}")?;
        for n in neighbors {
            writeln!(c, " neighbor {} remote-as {}", n.addr, n.asn)?;
            writeln!(c, " neighbor {} timers {ka} {hold}", n.addr)?;
            // Retry a lost session every second rather than every 120 s.
            writeln!(c, " neighbor {} timers connect 1", n.addr)?;
            if n.bfd {
                writeln!(c, " neighbor {} bfd profile lab", n.addr)?;
            }
            if let Some(pw) = &opts.password {
                writeln!(c, " neighbor {} password {pw}", n.addr)?;
            }
        }
        for af in ["ipv4", "ipv6"] {
            writeln!(c, " address-family {af} unicast")?;
            writeln!(c, "  maximum-paths {}", opts.maximum_paths)?;
            for n in neighbors {
                writeln!(c, "  neighbor {} activate", n.addr)?;
            }
            writeln!(c, " exit-address-family")?;
        }
        writeln!(c, "exit")?;
        fs::write(self.dir.join("bgpd.conf"), c)?;
        Ok(())
    }

    /// Starts one daemon in the foreground, held by PID, and waits for its vty socket
    /// (zebra: also its zserv socket, which the others need).
    fn spawn(&mut self, daemon: &str, extra: &[&str], realtime: bool) -> Result<()> {
        let d = &self.dir;
        let conf = path_str(&d.join(format!("{daemon}.conf")))?.to_string();
        let pid = path_str(&d.join(format!("{daemon}.pid")))?.to_string();
        let zserv = path_str(&d.join("zserv.api"))?.to_string();
        let vty = path_str(d)?.to_string();
        let bin = format!("{FRR_DIR}/{daemon}");
        // `ip netns exec` and `chrt` exec in turn: the PID held is the daemon's.
        let mut argv: Vec<&str> = Vec::new();
        if realtime {
            argv.extend(["chrt", "-f", "10"]);
        }
        argv.extend([
            bin.as_str(),
            "-f",
            &conf,
            "-i",
            &pid,
            "--vty_socket",
            &vty,
            "-z",
            &zserv,
            "-u",
            "frr",
            "-g",
            "frr",
            "-A",
            "127.0.0.1",
        ]);
        argv.extend(extra);
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).args(&argv);
        let out = fs::File::create(d.join(format!("{daemon}.out")))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let mut p = Proc::spawn(daemon, cmd)?;
        let ready = d.join(if daemon == "zebra" {
            "zserv.api".to_string()
        } else {
            format!("{daemon}.vty")
        });
        let ok = crate::wait_for(Duration::from_secs(10), || {
            if p.try_status().is_some() {
                return Some(false);
            }
            ready.exists().then_some(true)
        });
        if ok != Some(true) {
            bail!(
                "FRR's {daemon} did not start in {}:\n{}",
                self.ns,
                self.logs()
            );
        }
        self.daemons.push(p);
        Ok(())
    }

    /// Runs one vtysh command against this FRR; its output.
    pub fn vtysh(&self, cmd: &str) -> Result<String> {
        let out = std::process::Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", cmd])
            .output()
            .context("running vtysh")?;
        if !out.status.success() {
            bail!(
                "vtysh -c {cmd:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn vtysh_json(&self, cmd: &str) -> Result<serde_json::Value> {
        let out = self.vtysh(cmd)?;
        serde_json::from_str(&out).with_context(|| format!("{cmd}: not JSON: {out}"))
    }

    /// The neighbours whose BGP session is Established (any address family), sorted.
    pub fn established(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .vtysh_json("show bgp summary json")
            .map(|j| established_in(&j))
            .unwrap_or_default();
        v.sort();
        v.dedup();
        v
    }

    /// The peers whose BFD session is up, sorted.
    pub fn bfd_up(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .vtysh_json("show bfd peers json")
            .map(|j| bfd_up_in(&j))
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The next hops of `prefix` (e.g. "10.99.0.50/32") in the router namespace's
    /// kernel FIB (main table), sorted; empty if there is no such route. Read from the
    /// kernel, not from FRR: the kernel is what forwards the client's packets.
    pub fn next_hops(&self, prefix: &str) -> Vec<IpAddr> {
        next_hops_in(&self.ns, prefix)
    }

    /// Every daemon's log (and what it printed), for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for d in ["zebra", "bfdd", "bgpd"] {
            for ext in ["log", "out"] {
                let p = self.dir.join(format!("{d}.{ext}"));
                if let Ok(t) = fs::read_to_string(&p) {
                    if !t.trim().is_empty() {
                        let _ = writeln!(s, "---- FRR {d}.{ext} ----\n{}", t.trim_end());
                    }
                }
            }
        }
        s
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        while let Some(mut p) = self.daemons.pop() {
            p.stop(Duration::from_secs(3));
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The next hops of `prefix` in `ns`'s kernel FIB (main table), sorted: one route's
/// `gateway`, or each of a multipath route's `nexthops`. (`ip route show PREFIX`
/// selects the route to exactly that prefix.)
pub fn next_hops(ns: &Netns, prefix: &str) -> Vec<IpAddr> {
    next_hops_in(&ns.name, prefix)
}

fn next_hops_in(ns: &str, prefix: &str) -> Vec<IpAddr> {
    let family = if prefix.contains(':') { "-6" } else { "-4" };
    let mut c = std::process::Command::new("ip");
    c.args(["-n", ns, "-j", family, "route", "show", prefix]);
    let Ok(out) = run(&mut c) else {
        return Vec::new();
    };
    let mut v = serde_json::from_str::<serde_json::Value>(&out)
        .map(|j| gateways_in(&j))
        .unwrap_or_default();
    v.sort();
    v
}

/// The gateways of `ip -j route show`'s routes (plain or multipath).
fn gateways_in(j: &serde_json::Value) -> Vec<IpAddr> {
    let gw = |o: &serde_json::Value| o["gateway"].as_str().and_then(|g| g.parse::<IpAddr>().ok());
    let mut v = Vec::new();
    for r in j.as_array().into_iter().flatten() {
        match r["nexthops"].as_array() {
            Some(hops) => v.extend(hops.iter().filter_map(gw)),
            None => v.extend(gw(r)),
        }
    }
    v
}

/// The Established peers of `show bgp summary json` (one object per address family,
/// each with `peers: { ADDR: { state } }`).
fn established_in(j: &serde_json::Value) -> Vec<IpAddr> {
    let mut v = Vec::new();
    for af in j.as_object().into_iter().flat_map(|o| o.values()) {
        for (addr, peer) in af["peers"].as_object().into_iter().flatten() {
            if peer["state"] == "Established" {
                v.extend(addr.parse::<IpAddr>().ok());
            }
        }
    }
    v
}

/// The peers of `show bfd peers json` (an array of `{ peer, status }`) that are up.
fn bfd_up_in(j: &serde_json::Value) -> Vec<IpAddr> {
    j.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"] == "up")
        .filter_map(|p| p["peer"].as_str()?.parse().ok())
        .collect()
}

/// The kernel routing table a node's VIP routes are put in (vip's own; the kernel
/// consults it for nothing unless an `ip rule` says so), which the node's BIRD learns.
pub const VIP_TABLE: u32 = 1699;

/// The protocol number of the routes the lab puts into [`VIP_TABLE`] (0x99, unknown to
/// the kernel): BIRD learns routes of any protocol but `kernel` and `bird`, and a
/// number of its own lets their owner flush exactly its routes.
pub const VIP_PROTO: &str = "0x99";

/// A node's BIRD 2 config, verified against FRR in the lab: every host route that
/// appears in kernel table [`VIP_TABLE`] is announced to the router `router` (AS
/// `router_as`) over one eBGP session from `local` (AS `local_as`), IPv4 and IPv6
/// routes alike, with the node itself as next hop; a route removed from the table
/// is withdrawn. With `bfd`, the session follows a 10 ms x 3 BFD session on `iface`.
///
/// Why each part:
/// * `kernel ... learn`: BIRD hears of routes added to the table by netlink at once
///   (measured: the UPDATE is on the wire about 2 ms after `ip route add`); `scan time`
///   is only the fallback for a missed notification. `netlink rx buffer` (8 MiB):
///   with the default buffer, 10,000 routes added at once overflowed it ("Kernel
///   dropped some netlink messages, will resync on next scan") and reached the router
///   after 1.9 s, by the next scan; with 8 MiB none was dropped and all 10,000 were in
///   the router's FIB after 0.33 s. `export none`: BIRD never writes
///   into the kernel. Routes of protocol `kernel` or `bird` are not learned; a
///   `blackhole` route or a `dev lo` one, of protocol 0x99 (or boot, static), is.
/// * own tables `vip4`/`vip6`: nothing else (no device or kernel main-table routes)
///   can leak into the announcements.
/// * `error wait time 1, 5`: when BGP comes up before its BFD session, BIRD or FRR
///   closes it ("BFD session down" / Cease 6/10), and BIRD's default wait before the
///   next attempt is 60 s; with 1 s the session is Established and stable about 2 s
///   after the start. It also bounds the return after a lost path (1 s, doubling to
///   5 s while errors repeat within `error forget time`).
/// * `connect retry time 1`, `hold time 3; keepalive time 1`: the fallback when BFD
///   is off or the peer has none (a dead path is seen in 2-3 s rather than 90-180 s).
/// * the IPv6 channel on the IPv4 session: BIRD sends the interface's global IPv6
///   address and its link-local one as next hop, so `iface` needs a global IPv6 address
///   when the session comes up ("Missing next hop address" otherwise, and no IPv6
///   route is sent); no extended next hop is needed. The router installs the
///   link-local next hop.
pub fn bird_node_config(
    log: &Path,
    iface: &str,
    local: Ipv4Addr,
    local_as: u32,
    router: Ipv4Addr,
    router_as: u32,
    bfd: bool,
) -> String {
    let bfd_on = if bfd { "on" } else { "off" };
    format!(
        r#"router id {local};
log "{log}" all;
protocol device {{ scan time 10; }}
ipv4 table vip4;
ipv6 table vip6;
protocol kernel vip_k4 {{
  ipv4 {{ table vip4; import all; export none; }};
  kernel table {VIP_TABLE};
  learn;
  netlink rx buffer 8388608;
  scan time 1;
}}
protocol kernel vip_k6 {{
  ipv6 {{ table vip6; import all; export none; }};
  kernel table {VIP_TABLE};
  learn;
  netlink rx buffer 8388608;
  scan time 1;
}}
protocol bfd {{
  interface "{iface}" {{ min rx interval 10 ms; min tx interval 10 ms; multiplier 3; }};
}}
protocol bgp uplink {{
  local {local} as {local_as};
  neighbor {router} as {router_as};
  hold time 3;
  keepalive time 1;
  connect retry time 1;
  error wait time 1, 5;
  bfd {bfd_on};
  ipv4 {{ table vip4; import none; export all; next hop self; }};
  ipv6 {{ table vip6; import none; export all; next hop self; }};
}}
"#,
        log = log.display()
    )
}

/// BIRD 2 in one namespace, held by PID (`bird -f`), with its config, control socket
/// and log in a run directory of its own that is removed on drop.
pub struct Bird {
    pub proc: Proc,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Bird {
    /// Writes the config that `config` makes from the log file's path and starts BIRD
    /// in `ns`; returns once it answers on its control socket. With `realtime`, BIRD
    /// runs with SCHED_FIFO priority (its BFD at 10 ms must not wait behind a busy CPU).
    pub fn start(
        ns: &Netns,
        name: &str,
        realtime: bool,
        config: impl FnOnce(&Path) -> String,
    ) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "vip-bird-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("bird.log");
        let socket = dir.join("bird.ctl");
        let conf = dir.join("bird.conf");
        let out = dir.join("bird.out");
        let pidfile = dir.join("bird.pid");
        // Made before anything can fail, so that drop removes the directory.
        let mut cleanup = DirGuard(Some(dir.clone()));
        fs::write(&conf, config(&log))?;
        let mut argv: Vec<&str> = Vec::new();
        if realtime {
            argv.extend(["chrt", "-f", "10"]);
        }
        argv.extend([
            "bird",
            "-f",
            "-c",
            path_str(&conf)?,
            "-s",
            path_str(&socket)?,
            "-P",
            path_str(&pidfile)?,
        ]);
        let mut cmd = ns.command(&argv);
        let outf = fs::File::create(&out)?;
        cmd.stdin(Stdio::null())
            .stdout(outf.try_clone()?)
            .stderr(outf);
        let proc = Proc::spawn(&format!("bird {name}"), cmd)?;
        cleanup.0 = None;
        let mut bird = Bird {
            proc,
            dir,
            socket,
            log,
        };
        let ok = crate::wait_for(Duration::from_secs(10), || {
            if bird.proc.try_status().is_some() {
                return Some(false);
            }
            bird.birdc("show status").is_ok().then_some(true)
        });
        if ok != Some(true) {
            bail!("BIRD {name} did not start:\n{}", bird.logs());
        }
        Ok(bird)
    }

    /// One `birdc` command on the control socket; its output.
    pub fn birdc(&self, cmd: &str) -> Result<String> {
        let mut c = std::process::Command::new("birdc");
        c.arg("-s").arg(&self.socket).args(cmd.split_whitespace());
        run(&mut c)
    }

    /// BIRD's log and anything it printed, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["bird.log", "bird.out"] {
            if let Ok(t) = fs::read_to_string(self.dir.join(f)) {
                if !t.trim().is_empty() {
                    let _ = writeln!(s, "---- {} {f} ----\n{}", self.proc.name, t.trim_end());
                }
            }
        }
        s
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(3));
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Removes a directory on drop unless disarmed (`None`): a start that failed half-way.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = fs::remove_dir_all(d);
        }
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Gives `dir` and everything directly in it to `uid:gid`.
fn chown_tree(dir: &Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> Result<()> {
    nix::unistd::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", dir.display()))?;
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        nix::unistd::chown(&p, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipath_and_single_routes_give_their_gateways() {
        let j: serde_json::Value = serde_json::from_str(
            r#"[{"dst":"10.99.0.50","nhid":12,"protocol":"bgp","metric":20,"flags":[],
                "nexthops":[{"gateway":"10.0.0.11","dev":"eth0","weight":1,"flags":[]},
                            {"gateway":"10.0.0.12","dev":"eth0","weight":1,"flags":[]}]}]"#,
        )
        .unwrap();
        assert_eq!(
            gateways_in(&j),
            [
                "10.0.0.11".parse::<IpAddr>().unwrap(),
                "10.0.0.12".parse().unwrap()
            ]
        );
        let j: serde_json::Value = serde_json::from_str(
            r#"[{"dst":"10.99.0.50","nhid":10,"gateway":"10.0.0.11","dev":"eth0","protocol":"bgp","metric":20,"flags":[]}]"#,
        )
        .unwrap();
        assert_eq!(gateways_in(&j), ["10.0.0.11".parse::<IpAddr>().unwrap()]);
        assert!(gateways_in(&serde_json::json!([])).is_empty());
    }

    #[test]
    fn established_peers_and_up_bfd_peers_are_read_from_frr_json() {
        let j = serde_json::json!({
            "ipv4Unicast": {"peers": {"10.0.0.11": {"state": "Established"}, "10.0.0.12": {"state": "Active"}}},
            "ipv6Unicast": {"peers": {"10.0.0.11": {"state": "Established"}}}
        });
        let mut v = established_in(&j);
        v.dedup();
        assert_eq!(v, ["10.0.0.11".parse::<IpAddr>().unwrap()]);
        let j = serde_json::json!([{"peer": "10.0.0.11", "status": "up"}, {"peer": "10.0.0.12", "status": "down"}]);
        assert_eq!(bfd_up_in(&j), ["10.0.0.11".parse::<IpAddr>().unwrap()]);
    }
}
