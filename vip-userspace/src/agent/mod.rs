//! The agent: the loop that wires the rooms together. It owns the data plane and the
//! VIP addresses, moves groups between roles (each group's `crate::driver` decides:
//! its own election, its configured role, or keepalived's notifications), announces
//! takeovers and answers the control socket.
//!
//! The loop runs on its own thread and owns every decision; nothing on it waits for
//! I/O that can take long: status and metrics are read from a snapshot on another
//! thread (`snapshot`), announcements never block (`crate::garp`), netlink requests
//! have a timeout. Rooms: `group` (one group's runtime and its life), `roles` (taking
//! and giving up VIPs, in the order that keeps one owner), `effects` (carrying that
//! order out through one seam, the writes unit-tested without a kernel), `requests`
//! (control requests), `adverts` (the election's datagrams), `peers` (who may reach
//! the election's port), `reload` (plan, then apply), `upgrade` (re-executing the
//! binary on reload), `eips` (elastic IPs), `routes6` (routed IPv6 VIPs), `active_active` (active/active groups: the
//! VIP on every member, the director's table), `snapshot` (status);
//! `crate::addresses` owns the VIP addresses.

mod active_active;
mod adverts;
mod bgp;
mod effects;
mod eips;
mod group;
mod peers;
mod reload;
mod requests;
mod roles;
mod routes6;
mod snapshot;
mod upgrade;

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use vip_common::VipEntry;

use crate::{
    addresses::{self, host_prefix, Addresses},
    config::{self, Config, Pin as PinConfig, XdpMode},
    control::{self, Envelope, Request, Response},
    dataplane::{self, Dataplane},
    garp::PacketSocket,
    health,
    host::{self, Interface},
    netlink::Netlink,
    reason::Reason,
    state::State,
    xdpmode,
};
use adverts::AdvertSockets;
use group::{redirect_target, GroupRuntime, VipRuntime};
pub use snapshot::Snapshot;

/// What the command line may override in the config.
#[derive(Debug, Default, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub xdp_mode: Option<XdpMode>,
    pub interface: Option<String>,
}

/// The running agent.
pub struct Agent {
    cfg: Config,
    iface: Interface,
    dp: Dataplane,
    nl: Netlink,
    /// The VIP addresses (on `lo`): the one owner of every address change.
    addrs: Addresses,
    /// Read-only map handles for status built off the loop.
    reader: Arc<dataplane::Reader>,
    socket: Arc<PacketSocket>,
    adverts: AdvertSockets,
    groups: Vec<GroupRuntime>,
    warnings: Vec<String>,
    /// Our epoch and sequence numbers for advertisements.
    seq: adverts::Sequence,
    log_limiter: adverts::LogLimiter,
    unknown_group_adverts: u64,
    /// Election datagrams dropped because they had waited too long in the socket.
    stale_adverts: u64,
    opts: Options,
    /// Counter slots in use (VIP_STATS indexes), and where to look for the next.
    slots: BTreeSet<u32>,
    slot_hint: u32,
    health_tx: Option<mpsc::Sender<health::Report>>,
    /// The interface's last known carrier state.
    link_up: bool,
    /// Set when a control request ends the main loop.
    exit: Option<Exit>,
    eips: Vec<eips::EipRuntime>,
    routes6: Vec<routes6::Route6Runtime>,
    /// The binary and command line to re-execute on reload (hitless upgrade).
    binary: Option<upgrade::Binary>,
    /// The loop's event channel, for helpers started later (the upgrade preflight).
    events: Option<mpsc::Sender<Event>>,
    /// Probes the active's data plane for every standby group (`crate::echo`).
    echo: Option<crate::echo::Prober>,
    /// When we last answered each (group, peer)'s challenge (at most a few an
    /// interval, whoever asks and how often).
    answered: HashMap<(u32, IpAddr), Instant>,
    /// The program was loaded with the director's code (a balanced group existed).
    balance_enabled: bool,
    /// `Settings::tunnel_src` of the loaded data plane.
    tunnel_src: u32,
    /// Who the data plane lets reach the election's port (`peers`).
    peers: peers::Peers,
    /// The BGP speaker, when `[bgp]` is configured (`crate::speaker`).
    speaker: Option<Box<dyn crate::speaker::Speaker>>,
    /// Where status reads the speaker's sessions from.
    speaker_status: Option<crate::speaker::StatusSource>,
}

/// What woke the loop up.
enum Wake {
    Request(Request, tokio::sync::oneshot::Sender<Response>),
    Event(Event),
    Timer,
    Hup,
    Stop(&'static str),
}

/// How the agent leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Hand over, remove everything (SIGTERM/SIGINT).
    Stop,
    /// Leave the pinned data plane serving for the next agent; peers hold.
    Restart { hold: Duration },
    /// Re-execute the binary from disk, which adopts the pinned data plane.
    Reexec,
}

/// Events from the agent's helper tasks.
enum Event {
    /// An election datagram, its sender, and when the kernel received it.
    Datagram(Vec<u8>, SocketAddr, Option<u64>),
    Health(health::Report),
    /// What the kernel reports about `node.interface` and the VIP addresses on lo.
    Kernel(crate::netlink::Change),
    /// The echo prober concluded that a group's active is gone.
    EchoLost(crate::echo::Lost),
    /// The binary on disk checked the config (a reload that re-executes).
    Upgrade(
        Result<(), String>,
        Option<tokio::sync::oneshot::Sender<Response>>,
    ),
    /// The speaker's guard withdrew every route (our hold on them ran out).
    SpeakerFlushed,
    /// A takeover's addresses are on lo: the group's routes may go out.
    RoutesReady(String),
    /// A reload's config, read and checked against the host off the loop.
    ReloadRead(
        Box<reload::Read>,
        Option<tokio::sync::oneshot::Sender<Response>>,
    ),
}

/// A config ready to run: itself, its interface, its keys, its warnings.
type Checked = (Config, Interface, HashMap<String, Vec<u8>>, Vec<String>);

/// Loads, validates and checks a config against this host, with the command line's
/// overrides; nothing is changed on the host.
fn load_config(opts: &Options) -> Result<Checked> {
    check_config(parse_config(opts)?)
}

/// Host checks and keys of a parsed config.
fn check_config(cfg: Config) -> Result<Checked> {
    let iface = host::interface(&cfg.node.interface).context("node.interface")?;
    let all = host::all_addresses().context("listing host addresses")?;
    let report = config::check_host(&cfg, &|n| host::interface(n).ok(), &all)?;
    let keys = config::load_keys(&cfg)?;
    Ok((cfg, iface, keys, report.warnings))
}

/// The config file with the command line's overrides applied.
fn parse_config(opts: &Options) -> Result<Config> {
    let mut cfg = config::load(&opts.config)?;
    if let Some(m) = opts.xdp_mode {
        cfg.node.xdp_mode = m;
    }
    if let Some(i) = &opts.interface {
        cfg.node.interface = i.clone();
        if let PinConfig::Default(_) = cfg.node.pin {
            cfg.node.pin = PinConfig::Default(std::path::Path::new("/sys/fs/bpf/vip").join(i));
        }
    }
    Ok(cfg)
}

/// Where the data plane is pinned: the configured directory (which must be on bpffs),
/// or the default one when bpffs is mounted; else nowhere (with a warning).
fn pin_dir(cfg: &Config, warnings: &mut Vec<String>) -> Result<Option<PathBuf>> {
    match &cfg.node.pin {
        PinConfig::Off => Ok(None),
        PinConfig::Dir(d) => {
            if !dataplane::on_bpffs(d) {
                bail!(
                    "node.pin_dir: {} is not on a bpf filesystem (mount -t bpf bpf DIR)",
                    d.display()
                );
            }
            Ok(Some(d.clone()))
        }
        PinConfig::Default(d) => {
            if dataplane::on_bpffs(d) {
                Ok(Some(d.clone()))
            } else {
                warnings.push(format!(
                    "no bpf filesystem at {}: the data plane is not pinned, so a restart of the agent interrupts it \
                     (mount bpffs, or set node.pin_dir)",
                    d.parent().map(|p| p.display().to_string()).unwrap_or_default()
                ));
                Ok(None)
            }
        }
    }
}

/// Runs the agent until SIGTERM/SIGINT (hand over, remove everything) or a restart
/// request (leave the pinned data plane serving). SIGHUP reloads the config.
pub async fn run(opts: Options) -> Result<()> {
    // Read before anything can replace the file on disk.
    let binary = upgrade::Binary::current();
    let (cfg, iface, keys, mut warnings) = load_config(&opts)?;
    for w in &warnings {
        log::warn!("{w}");
    }
    let listener = control::bind(&cfg.node.control_socket, cfg.node.control_group.as_deref())?;
    let socket_path = cfg.node.control_socket.clone();
    let metrics_listen = cfg.node.metrics_listen;
    let pin = pin_dir(&cfg, &mut warnings)?;
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(1024);
    let mut agent = Agent::start(cfg, iface, keys, warnings, pin, opts).await?;
    agent.binary = binary;
    agent.set_events(&ev_tx);
    agent.spawn_helpers(&ev_tx);

    let (tx, mut rx) = mpsc::channel::<Envelope>(64);
    let server = tokio::spawn(control::serve(listener, tx.clone()));
    let metrics = match metrics_listen {
        Some(addr) => Some(tokio::spawn(crate::metrics::serve(
            crate::metrics::bind(addr)
                .with_context(|| format!("node.metrics_listen: binding {addr}"))?,
            tx,
        ))),
        None => None,
    };
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let renderer = snapshot::spawn_renderer(agent.reader());
    log::info!("agent ready: control socket {}", socket_path.display());
    loop {
        while agent.exit.is_none() {
            agent.update_echo();
            let deadline = agent.next_deadline();
            let wake = tokio::select! {
                Some((req, reply)) = rx.recv() => Wake::Request(req, reply),
                Some(ev) = ev_rx.recv() => Wake::Event(ev),
                _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
                _ = hup.recv() => Wake::Hup,
                _ = term.recv() => Wake::Stop("SIGTERM"),
                _ = int.recv() => Wake::Stop("SIGINT"),
            };
            // Whatever woke us (after a stall, a queued datagram may come first), a
            // lease that ran out meanwhile is lost before anything else is done.
            agent.check_leases();
            // The speaker's guard learns how long our routes may stay (our leases).
            agent.hold_routes();
            match wake {
                Wake::Request(req, reply) => agent.request(req, reply, &renderer),
                Wake::Event(ev) => agent.event(ev),
                Wake::Timer => agent.tick(),
                Wake::Hup => {
                    log::info!("SIGHUP: reloading");
                    agent.begin_reload(None);
                }
                Wake::Stop(sig) => {
                    log::info!("{sig}: handing over and shutting down");
                    agent.exit = Some(Exit::Stop);
                }
            }
            agent.hold_routes();
        }
        if matches!(agent.exit, Some(Exit::Restart { .. } | Exit::Reexec)) {
            // Let the answer to the request that ended the loop reach its client (the
            // peers were told to hold when the request came in).
            tokio::time::sleep(Duration::from_millis(50)).await;
            agent.save_replay_state();
            // The leases were extended over the peers' hold: the routes stay as long.
            agent.hold_routes();
        }
        if agent.exit != Some(Exit::Reexec) {
            break;
        }
        let Some(bin) = agent.binary.clone() else {
            break;
        };
        log::info!("re-executing {}", bin.exe.display());
        // The address changes asked for so far are made before the new image adopts.
        agent.addrs.flush();
        // Only returns if the exec failed; then this agent carries on.
        let err = upgrade::exec(&bin);
        agent.resume_after_failed_exec(err);
    }
    server.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    agent.addrs.flush();
    match agent.exit {
        Some(Exit::Restart { hold }) => {
            let _ = std::fs::remove_file(&socket_path);
            log::info!(
                "agent exiting for a restart; the data plane keeps serving (peers hold {} ms)",
                hold.as_millis()
            );
        }
        _ => {
            agent.hand_over_all(&mut ev_rx).await;
            agent.shutdown();
            let _ = std::fs::remove_file(&socket_path);
            log::info!("agent stopped; data plane detached, VIPs removed from lo");
        }
    }
    Ok(())
}

/// `vip agent --cleanup`: removes what an agent with this config may have left (a
/// pinned data plane, VIP local routes and addresses, a group's virtual MAC in the interface's unicast
/// filter), without starting one.
pub fn cleanup(opts: &Options) -> Result<Vec<String>> {
    // The same overrides as the agent's, so `--interface X` finds X's pins.
    let cfg = parse_config(opts)?;
    let mut done = Vec::new();
    if let Some(d) = cfg.node.pin.dir() {
        let removed = dataplane::remove_pins(d)
            .with_context(|| format!("removing pins under {}", d.display()))?;
        if !removed.is_empty() {
            done.push(format!("removed {} (data plane detached)", d.display()));
        }
    }
    // IPv6 VIP addresses live on lo (and, left by agents of earlier versions, IPv4
    // ones too, or on the interface itself).
    let nl = Netlink::open().context("opening rtnetlink")?;
    for name in ["lo", cfg.node.interface.as_str()] {
        let Ok(iface) = host::interface(name) else {
            continue;
        };
        for g in &cfg.groups {
            for v in &g.vips {
                if iface
                    .addrs
                    .iter()
                    .any(|(a, p)| *a == v.addr && *p == host_prefix(v.addr))
                {
                    nl.del_address(iface.index, v.addr, host_prefix(v.addr))?;
                    done.push(format!("removed address {} from {}", v.addr, iface.name));
                }
            }
        }
    }
    // IPv4 VIPs are local routes through lo: every one of protocol 99 is vip's.
    if let Ok(lo) = host::interface("lo") {
        let routes = nl
            .local_routes()
            .context("listing the local table's routes")?;
        for (a, len) in routes {
            if nl
                .del_local_route(lo.index, a, len)
                .with_context(|| format!("removing the local route of {a}/{len}"))?
            {
                done.push(format!(
                    "removed the local route of {a}/{len} (table local, dev lo)"
                ));
            }
        }
    }
    // A group's virtual MAC stays in the interface's unicast filter after an agent
    // that could not remove it (SIGKILL, a crash).
    if let Ok(iface) = host::interface(&cfg.node.interface) {
        for g in &cfg.groups {
            let Some(vmac) = g.virtual_mac else { continue };
            if nl
                .del_unicast_mac(iface.index, vmac)
                .with_context(|| format!("removing {vmac} from {}", iface.name))?
            {
                done.push(format!(
                    "removed group {}'s virtual MAC {vmac} from {}",
                    g.name, iface.name
                ));
            }
        }
    }
    let _ = std::fs::remove_file(&cfg.node.control_socket);
    Ok(done)
}

impl Agent {
    /// Loads and attaches the data plane (adopting a pinned one if an earlier agent
    /// left it) and puts every group in its starting state.
    pub async fn start(
        cfg: Config,
        iface: Interface,
        mut keys: HashMap<String, Vec<u8>>,
        mut warnings: Vec<String>,
        pin: Option<PathBuf>,
        opts: Options,
    ) -> Result<Self> {
        // A gateway runs the program on its external side too: VIP rules apply on our
        // interface only, elastic-IP and IPv6-route rules everywhere.
        let gateway = !cfg.eips.is_empty() || !cfg.routes6.is_empty();
        // Echo probes arrive on the election's port (see `crate::echo`).
        let settings = vip_common::Settings {
            vip_ifindex: if gateway { iface.index } else { 0 },
            eip_enabled: u32::from(gateway),
            echo_port: cfg.node.advert_port as u32,
            balance_enabled: u32::from(cfg.groups.iter().any(|g| g.balance.is_some())),
            tunnel_src: active_active::tunnel_src(&cfg, &iface),
        };
        let balance_enabled = settings.balance_enabled != 0;
        let tunnel_src = settings.tunnel_src;
        let mut dp = Dataplane::open(cfg.node.max_vips, pin.as_deref(), settings)
            .context("loading the XDP data plane")?;
        // Before the program is attached: it serves the election's port to peers only.
        let peer_plan = peers::plan(&cfg, &iface)?;
        peers::write(&mut dp, &Default::default(), &peer_plan, &HashMap::new())?;
        let xdp = dp.attach_chosen(&iface.name, xdpmode::choose(&cfg, &iface.name, iface.index))?;
        warnings.extend(xdp.warning.clone());
        let xdp_line = xdp.describe();
        let adopted = dp.adopted();
        log::info!(
            "XDP attached to {} ({}){}",
            iface.name,
            xdp_line,
            match (&pin, adopted) {
                (Some(d), true) =>
                    format!("; adopted the running data plane pinned at {}", d.display()),
                (Some(d), false) => format!("; pinned at {}", d.display()),
                (None, _) => String::new(),
            }
        );
        warnings.extend(interface_warnings(&iface));
        // Only the XDP program may ever answer for a VIP: the kernel must not, even
        // with our addresses left behind by a killed agent (see `addresses`).
        for line in addresses::quiet_kernel_arp(&iface).context("node.interface")? {
            log::info!("{line} (the kernel never answers ARP for a VIP)");
        }
        let mut addrs = Addresses::open()?;
        let all_vips: Vec<IpAddr> = cfg
            .groups
            .iter()
            .flat_map(|g| g.vips.iter().map(|v| v.addr))
            .collect();
        // An agent of an earlier version kept VIPs on the interface itself.
        let legacy: Vec<IpAddr> = iface
            .addrs
            .iter()
            .filter(|(a, p)| all_vips.contains(a) && *p == host_prefix(*a))
            .map(|(a, _)| *a)
            .collect();
        addrs.remove_from(iface.index, &legacy);
        // A killed agent's VIPs on lo (IPv6 addresses, local routes, and an earlier
        // version's IPv4 addresses): removed once the groups have started, unless a
        // group holds them again in that form (an adopted active one keeps serving;
        // an IPv4 address, or an IPv6 one of a group now `ipv6_local = "route"`,
        // goes anyway: the route this agent adds carries it).
        let stale: Vec<IpAddr> = host::interface("lo")
            .map(|lo| {
                lo.addrs
                    .iter()
                    .filter(|(a, p)| all_vips.contains(a) && *p == host_prefix(*a))
                    .map(|(a, _)| *a)
                    .collect()
            })
            .unwrap_or_default();

        let reader = Arc::new(dp.reader().context("opening the data plane for reading")?);
        let nl = Netlink::open().context("opening rtnetlink")?;
        // Every local route of protocol 99 is vip's (see `Netlink::local_routes`),
        // whatever VIPs it carries: one of an earlier configuration goes too.
        let stale_routes = nl
            .local_routes()
            .context("listing the local table's routes")?;
        let socket = Arc::new(
            PacketSocket::open(iface.index).context("opening a packet socket for announcements")?,
        );
        let adverts = adverts::bind(&cfg, &iface).await?;
        let groups_cfg = cfg.groups.clone();
        let mut agent = Agent {
            cfg,
            iface,
            dp,
            nl,
            addrs,
            reader,
            socket,
            adverts,
            groups: Vec::new(),
            warnings: Vec::new(),
            seq: adverts::Sequence::new(),
            log_limiter: adverts::LogLimiter::default(),
            unknown_group_adverts: 0,
            stale_adverts: 0,
            eips: Vec::new(),
            routes6: Vec::new(),
            opts,
            slots: BTreeSet::new(),
            slot_hint: 0,
            health_tx: None,
            link_up: true,
            exit: None,
            binary: None,
            events: None,
            echo: None,
            answered: HashMap::new(),
            balance_enabled,
            tunnel_src,
            peers: peers::Peers {
                written: peer_plan,
                learned: HashMap::new(),
            },
            speaker: None,
            speaker_status: None,
        };
        agent.start_speaker(!adopted)?;
        // Counter slots an adopted data plane already uses keep their VIPs (and counts).
        let mut previous: HashMap<IpAddr, VipEntry> = HashMap::new();
        if adopted {
            for g in &groups_cfg {
                for v in &g.vips {
                    if let Some(e) = agent.dp.vip(v.addr) {
                        if e.stats_index < agent.cfg.node.max_vips
                            && agent.slots.insert(e.stats_index)
                        {
                            previous.insert(v.addr, e);
                        }
                    }
                }
            }
            agent.remove_stale_entries(&groups_cfg);
        }
        for g in &groups_cfg {
            let key = keys.remove(&g.name);
            agent.add_group(g, key, &previous, &mut warnings)?;
        }
        let stale: Vec<IpAddr> = stale
            .into_iter()
            .filter(|a| !agent.addrs.holds_address(*a))
            .collect();
        let lo = agent.addrs.ifindex();
        agent.addrs.remove_from(lo, &stale);
        let stale_routes = stale_routes
            .into_iter()
            .filter(|p| !agent.addrs.holds_route(*p))
            .collect();
        agent.addrs.remove_routes(stale_routes);
        agent.adopt_routes();
        agent.setup_eips(&mut warnings)?;
        agent.setup_routes6(&mut warnings)?;
        agent.restore_replay_state();
        agent.warnings = warnings;
        Ok(agent)
    }

    /// Starts the tasks that feed the loop: advert receivers and health checks.
    fn spawn_helpers(&mut self, tx: &mpsc::Sender<Event>) {
        // The kernel's word on our interface, for every group: it flushes IPv6
        // addresses when the link goes down, and an operator may delete one.
        match crate::netlink::Monitor::open(self.iface.index, &[self.addrs.ifindex()]) {
            Ok(mon) => {
                let ktx = tx.clone();
                std::thread::spawn(move || loop {
                    match mon.next() {
                        Ok(changes) => {
                            for c in changes {
                                if ktx.blocking_send(Event::Kernel(c)).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            log::error!("watching the interface: {e}");
                            return;
                        }
                    }
                });
            }
            Err(e) => log::error!(
                "watching {}: {e}; addresses removed behind our back are not restored",
                self.iface.name
            ),
        }
        adverts::spawn_receivers(&self.adverts, tx);
        self.watch_speaker(tx);
        let etx = tx.clone();
        self.echo = match self.dp.echo_seen() {
            Ok(seen) => crate::echo::Prober::spawn(
                seen,
                self.cfg.node.advert_port,
                Box::new(move |lost| {
                    let _ = etx.try_send(Event::EchoLost(lost));
                }),
            )
            .map_err(|e| log::error!("starting the echo prober: {e}; failures are detected by advertisement silence only"))
            .ok(),
            Err(e) => {
                log::error!("echo map: {e:#}; failures are detected by advertisement silence only");
                None
            }
        };
        let (htx, mut hrx) = mpsc::channel::<health::Report>(64);
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(r) = hrx.recv().await {
                if tx.send(Event::Health(r)).await.is_err() {
                    return;
                }
            }
        });
        self.health_tx = Some(htx);
        for gi in 0..self.groups.len() {
            self.spawn_checks(gi);
        }
    }

    /// The next instant something is due: an election timer, a drain, a lease renewal.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(1);
        for g in &self.groups {
            for t in [
                g.election().and_then(|e| e.next_deadline()),
                g.own.next_deadline(),
            ]
            .into_iter()
            .flatten()
            {
                next = next.min(t);
            }
        }
        next.max(now)
    }

    /// Runs due timers of every group: its election's, then its hold's (drains, the
    /// lease's renewal).
    fn tick(&mut self) {
        let now = Instant::now();
        self.feed_echo(now);
        for gi in 0..self.groups.len() {
            if let Some(e) = self.groups[gi].election_mut() {
                let actions = e.tick(now);
                self.apply(gi, actions);
            }
            let fx = self.groups[gi].own.tick(now, host::boottime_ns());
            if let Err(e) = self.exec(gi, fx) {
                log::error!("group {}: {e:#}", self.groups[gi].cfg.name);
            }
            self.balance_tick(gi);
        }
    }

    /// Tells every standby group's election when the active's data plane last answered
    /// its probes: while it does, advertisement silence alone is no reason to take over.
    fn feed_echo(&mut self, now: Instant) {
        let Some(prober) = &self.echo else { return };
        let mono = host::monotonic_ns();
        let heard: Vec<(usize, IpAddr, Instant)> = self
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.state == State::Standby)
            .filter_map(|(gi, g)| {
                let peer = g.election()?.active()?.addr;
                let at = prober.last_answer_ns(&g.cfg.name)?;
                let ago = Duration::from_nanos(mono.saturating_sub(at));
                Some((gi, peer, now.checked_sub(ago)?))
            })
            .collect();
        for (gi, peer, at) in heard {
            if let Some(e) = self.groups[gi].election_mut() {
                e.echo_answered(peer, at);
            }
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Datagram(b, from, at) => self.datagram(&b, from, at),
            Event::Kernel(crate::netlink::Change::Link { up, mac }) => {
                if let Some(mac) = mac.filter(|m| *m != self.iface.mac) {
                    self.mac_changed(mac);
                }
                self.link(up)
            }
            Event::Kernel(crate::netlink::Change::AddressRemoved { addr, .. }) => {
                self.address_removed(addr)
            }
            Event::Kernel(crate::netlink::Change::LocalRouteRemoved { addr, len }) => {
                self.local_route_removed((addr, len))
            }
            Event::Kernel(crate::netlink::Change::Resync) => self.restore_addresses(),
            Event::Upgrade(result, reply) => self.upgrade_ready(result, reply),
            Event::ReloadRead(read, reply) => self.reload_read(*read, reply),
            Event::EchoLost(lost) => self.echo_lost(lost),
            Event::SpeakerFlushed => self.speaker_flushed(),
            Event::RoutesReady(group) => self.routes_ready(&group),
            Event::Health((group, name, ok, detail)) => {
                if let Some(gi) = self.groups.iter().position(|g| g.cfg.name == group) {
                    self.health(gi, name, ok, detail);
                }
            }
        }
    }

    fn health(&mut self, gi: usize, name: &'static str, ok: bool, detail: String) {
        let Some(g) = self.groups.get_mut(gi) else {
            return;
        };
        let was = g.healthy();
        let Some((_, tracker, last)) = g.checks.iter_mut().find(|(n, _, _)| *n == name) else {
            return;
        };
        let changed = tracker.feed(ok);
        *last = detail.clone();
        let first_results = g.checks.iter().all(|(_, t, _)| t.state().is_some());
        let now_healthy = g.healthy();
        if changed.is_some() {
            log::info!(
                "group {}: {name} {} ({detail})",
                g.cfg.name,
                if ok { "healthy" } else { "failing" }
            );
        }
        if was == now_healthy && !(now_healthy && first_results && g.state == State::Init) {
            return;
        }
        let reason = if now_healthy {
            Reason::Recovered {
                check: name,
                detail: detail.clone(),
            }
        } else {
            Reason::Health {
                check: name,
                detail: detail.clone(),
            }
        };
        // Fault gives up; recovery restores the configured role (static), waits
        // for keepalived, or rejoins the election.
        let actions = g
            .driver
            .health(now_healthy, first_results, reason, Instant::now());
        self.apply(gi, actions);
    }

    /// What the echo prober should probe: every standby group's active.
    fn update_echo(&self) {
        let Some(prober) = &self.echo else { return };
        let targets = self
            .groups
            .iter()
            .filter(|g| g.state == State::Standby)
            .filter_map(|g| {
                let e = g.cfg.election.as_ref()?;
                let active = g.election()?.active()?;
                let vip = g.vips.first()?.vip.addr;
                (!e.echo_interval.is_zero()).then(|| crate::echo::Target {
                    group: g.cfg.name.clone(),
                    slot: g.index,
                    vip,
                    peer: active.addr,
                    // Its replies carry its own MAC only when it is on our link.
                    peer_mac: peers::on_link(&self.iface, active.addr).then_some(active.mac),
                    interval: e.echo_interval,
                    misses: e.echo_misses,
                })
            })
            .collect();
        prober.set_targets(targets);
    }

    fn echo_lost(&mut self, lost: crate::echo::Lost) {
        let Some(gi) = self.groups.iter().position(|g| g.cfg.name == lost.group) else {
            return;
        };
        if !self.link_up {
            // Our own link is down: the probes never left, which says nothing about
            // the active (and the interface's health check will fault the group).
            return;
        }
        let now = Instant::now();
        let Some(e) = self.groups[gi].election_mut() else {
            return;
        };
        let actions = e.echo_lost(lost.peer, lost.missed, lost.silent, now);
        // Repeated every few probes while the active stays silent: said once.
        if actions.is_empty() && lost.repeat == 0 {
            log::info!(
                "group {}: the data plane of {} stopped answering probes; not taking over now ({})",
                lost.group,
                lost.peer,
                self.groups[gi].state.as_str()
            );
        }
        self.groups[gi].decided_ns = Some(lost.decided_ns);
        self.apply(gi, actions);
        self.groups[gi].decided_ns = None;
    }

    /// A VIP address we hold was removed (an operator deleted it, or the kernel flushed
    /// it): add it back, so the local stack keeps accepting what the data plane passes.
    /// Only IPv6 VIPs are addresses (unless `ipv6_local = "route"`): an IPv4 one
    /// removed from lo is an earlier version's (removed at start), our local route
    /// carries it.
    fn address_removed(&mut self, addr: IpAddr) {
        if !self.addrs.holds_address(addr) {
            return;
        }
        log::warn!("VIP address {addr} was removed from lo; adding it back");
        self.addrs.restore_address(addr);
    }

    /// One of our local routes was removed: if it is one we hold (not one the worker
    /// took out itself, a release's or a split's), an operator deleted it: add it
    /// back.
    fn local_route_removed(&mut self, route: crate::addresses::Prefix) {
        if !self.addrs.holds_route(route) {
            return;
        }
        log::warn!(
            "the local route of VIP {}/{} was removed; adding it back",
            route.0,
            route.1
        );
        self.addrs.restore_route(route);
    }

    /// The interface came back: restore what the kernel flushed while it was down
    /// (IPv6 addresses go with the link) and announce the active VIPs again.
    fn link(&mut self, up: bool) {
        // RTM_NEWLINK also reports unrelated changes: act on transitions only.
        if self.link_up == up {
            return;
        }
        self.link_up = up;
        log::info!("{} is {}", self.iface.name, if up { "up" } else { "down" });
        // Down: we cannot serve through a dead link, and a standby takes over
        // meanwhile: our data plane must not answer again when it comes back, and we
        // take nothing over alone. Up: we listen afresh, as a starting node.
        let now = Instant::now();
        for gi in 0..self.groups.len() {
            let actions = match self.groups[gi].election_mut() {
                Some(e) => e.link(up, now),
                None => continue,
            };
            self.apply(gi, actions);
        }
        if !up {
            return;
        }
        self.restore_addresses();
        for gi in 0..self.groups.len() {
            if self.groups[gi].state == State::Active {
                self.announce(gi);
            }
        }
    }

    /// Our interface got another MAC (a replaced NIC, a moved VM): the entries (whose
    /// answers carry it), the balance rows and the announcements follow, or the data
    /// plane would ignore every frame for the new MAC and answer with the old one.
    fn mac_changed(&mut self, mac: crate::mac::Mac) {
        log::warn!(
            "{}: its MAC changed from {} to {mac}; reprogramming every VIP",
            self.iface.name,
            self.iface.mac
        );
        self.iface.mac = mac;
        for gi in 0..self.groups.len() {
            if let Some(b) = &mut self.groups[gi].balance {
                b.set_own_mac(mac);
            }
            let plan = self.groups[gi].current_entries();
            if let Err(e) = self.program_entries(gi, plan, None) {
                log::error!("group {}: {e:#}", self.groups[gi].cfg.name);
            }
            self.balance_sync(gi);
            if self.groups[gi].own.holding() == crate::ownership::Holding::Serving {
                self.announce(gi);
            }
        }
    }

    /// Adds back the addresses of every active local VIP (idempotent).
    fn restore_addresses(&mut self) {
        self.addrs.restore();
    }

    /// Planned handover of every elected active group: release, keep serving until a
    /// successor is heard (bounded), then forward to it for the drain period.
    async fn hand_over_all(&mut self, events: &mut mpsc::Receiver<Event>) {
        let now = Instant::now();
        let mut longest_drain = Duration::ZERO;
        let mut any = false;
        for gi in 0..self.groups.len() {
            if self.groups[gi].state != State::Active {
                continue;
            }
            if let Some(e) = self.groups[gi].election_mut() {
                let actions = e.shutdown(now);
                any = true;
                longest_drain = longest_drain.max(self.groups[gi].cfg.drain);
                self.apply(gi, actions);
            }
        }
        if !any {
            return;
        }
        // Wait for successors (the elections give up on their own after 4 intervals).
        let handing_over = |a: &Agent| {
            a.groups
                .iter()
                .any(|g| g.election().is_some_and(|e| e.handing_over()))
        };
        let limit = Instant::now() + Duration::from_secs(10);
        while handing_over(self) && Instant::now() < limit {
            self.pump(events, self.next_deadline().min(limit)).await;
        }
        let forwarding = self.groups.iter().any(|g| g.forward_to().is_some());
        if forwarding {
            log::info!(
                "draining: forwarding stale-cache traffic to the new active for {} ms",
                longest_drain.as_millis()
            );
            let until = Instant::now() + longest_drain;
            while Instant::now() < until {
                self.pump(events, self.next_deadline().min(until)).await;
            }
        }
        // Routes still announced (a drain the loop had not ended) go now, and we go on
        // forwarding while the routers act on the withdrawal: the flows a router still
        // hashes to us would otherwise reach a node that no longer serves.
        if self.withdraw_all_routes() {
            let until = Instant::now() + bgp::WITHDRAW_SETTLE;
            while Instant::now() < until {
                self.pump(events, self.next_deadline().min(until)).await;
            }
        }
    }

    /// Processes events until `until`.
    async fn pump(&mut self, events: &mut mpsc::Receiver<Event>, until: Instant) {
        let ev = tokio::select! {
            Some(ev) = events.recv() => Some(ev),
            _ = tokio::time::sleep_until(until.into()) => None,
        };
        self.check_leases();
        match ev {
            Some(ev) => self.event(ev),
            None => self.tick(),
        }
        // The handover's drain: the routes stay announced (we forward) only while
        // our leases say so, as in the main loop.
        self.hold_routes();
    }

    pub fn shutdown(&mut self) {
        // The routes first: nothing may stay announced once the entries go.
        if let Some(sp) = self.speaker.as_mut() {
            sp.stop();
        }
        for e in &self.eips {
            let _ = self.dp.remove_eip(&e.entry);
        }
        self.remove_routes6();
        for g in &mut self.groups {
            for t in g.tasks.drain(..) {
                t.abort();
            }
        }
        if let Err(e) = self.dp.detach_and_unpin() {
            log::warn!("removing the pinned data plane: {e:#}");
        }
        for gi in 0..self.groups.len() {
            self.groups[gi].stop_announcing();
            self.drop_virtual_mac(&self.groups[gi].cfg);
            let (name, vips) = (
                self.groups[gi].cfg.name.clone(),
                self.groups[gi].vips.clone(),
            );
            for v in vips.iter() {
                if let Err(e) = self.dp.remove_vip(v.vip.addr) {
                    log::warn!("group {name}: removing map entry {}: {e}", v.vip.addr);
                }
                if self.addrs.holds(v.vip.addr) {
                    self.addrs.remove(&name, v.vip.addr);
                }
            }
        }
        // The process exits next: every removal must be made first.
        self.addrs.flush();
    }
}

/// Warnings about the interface that the operator should hear at start.
fn interface_warnings(iface: &Interface) -> Vec<String> {
    let mut w = Vec::new();
    let vlans = host::vlan_uppers(&iface.name);
    if !vlans.is_empty() {
        w.push(format!(
            "{} carries VLANs ({}): if its NIC strips VLAN tags (rx-vlan-offload), XDP sees tagged \
             frames as untagged and would answer for VIPs on every VLAN; turn it off with \
             `ethtool -K {} rxvlan off`",
            iface.name,
            vlans.join(", "),
            iface.name
        ));
    }
    for x in &w {
        log::warn!("{x}");
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vip agent --cleanup --interface X` and the agent find X's pins: both take the
    /// config through `parse_config`, which applies the command line's overrides.
    #[test]
    fn the_interface_override_moves_the_default_pin_dir() {
        let dir = std::env::temp_dir().join(format!("vip-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vip.toml");
        std::fs::write(
            &path,
            "[node]\nname = \"a\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"10.0.0.50/24\"]\nrole = \"active\"\n",
        )
        .unwrap();
        let opts = |interface: Option<&str>| Options {
            config: path.clone(),
            xdp_mode: None,
            interface: interface.map(String::from),
        };
        let pins = |o: &Options| parse_config(o).unwrap().node.pin.dir().map(PathBuf::from);
        assert_eq!(
            pins(&opts(None)),
            Some(PathBuf::from("/sys/fs/bpf/vip/eth0"))
        );
        assert_eq!(
            pins(&opts(Some("veth7"))),
            Some(PathBuf::from("/sys/fs/bpf/vip/veth7"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
