//! The agent: owns the data plane and the VIP addresses, moves groups between roles
//! (statically, by its own election, or on keepalived's notifications), announces
//! takeovers and answers the control socket.
//!
//! Order of a takeover: the lease and map entries first (the data plane answers ARP/NS
//! from that instant), then the addresses (local sockets accept the VIP), then the
//! gratuitous ARP / unsolicited NA burst. A step-down reverses it: entries first (we
//! stop answering at once, or forward to the new active), then the addresses.
//!
//! The loop runs on its own thread and owns every decision; nothing on it waits for
//! I/O that can take long: status and metrics are read from a snapshot on another
//! thread (`snapshot`), announcements never block (`garp`), netlink requests have a
//! timeout. Rooms: `group` (one group's runtime), `adverts` (the election's datagrams),
//! `reload` (plan, then apply), `eips` (elastic IPs), `snapshot` (status);
//! `crate::addresses` owns the VIP addresses.

mod adverts;
mod eips;
mod group;
mod reload;
mod snapshot;

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
use vip_common::{action, VipEntry};

use crate::{
    addresses::{self, host_prefix, Addresses},
    advert::Kind,
    config::{self, Config, Group, Pin as PinConfig, Role, XdpMode},
    control::{self, Envelope, Request, Response},
    dataplane::{self, Dataplane},
    election::{Action, Election, Params, State},
    garp::{self, PacketSocket},
    health,
    host::{self, Interface},
    mac::Mac,
    netlink::Netlink,
    reason::Reason,
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
    opts: Options,
    /// Counter slots in use (VIP_STATS indexes).
    slots: BTreeSet<u32>,
    health_tx: Option<mpsc::Sender<health::Report>>,
    /// Holds the solicited-node memberships of redirected IPv6 VIPs.
    mcast: Option<std::net::UdpSocket>,
    /// The interface's last known carrier state.
    link_up: bool,
    /// Set when a control request ends the main loop.
    exit: Option<Exit>,
    eips: Vec<eips::EipRuntime>,
}

/// How the agent leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Hand over, remove everything (SIGTERM/SIGINT).
    Stop,
    /// Leave the pinned data plane serving for the next agent; peers hold.
    Restart { hold: Duration },
}

/// Events from the agent's helper tasks.
enum Event {
    Datagram(Vec<u8>, SocketAddr),
    Health(health::Report),
    /// What the kernel reports about `node.interface`.
    Kernel(crate::netlink::Change),
}

/// Loads, validates and checks a config against this host, with the command line's
/// overrides; nothing is changed on the host.
/// A config ready to run: itself, its interface, its keys, its warnings.
type Checked = (Config, Interface, HashMap<String, Vec<u8>>, Vec<String>);

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
    agent.spawn_helpers(&ev_tx);

    let (tx, mut rx) = mpsc::channel::<Envelope>(64);
    let server = tokio::spawn(control::serve(listener, tx.clone()));
    let metrics = match metrics_listen {
        Some(addr) => Some(tokio::spawn(crate::metrics::serve(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("node.metrics_listen: binding {addr}"))?,
            tx,
        ))),
        None => None,
    };
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    log::info!("agent ready: control socket {}", socket_path.display());
    while agent.exit.is_none() {
        let deadline = agent.next_deadline();
        tokio::select! {
            Some((req, reply)) = rx.recv() => {
                if req == Request::Status {
                    // The loop copies its part; the maps are read on another thread.
                    let (snap, reader) = (agent.snapshot(), agent.reader());
                    tokio::task::spawn_blocking(move || {
                        let _ = reply.send(Response {
                            ok: true,
                            status: Some(Box::new(snap.render(&reader))),
                            ..Default::default()
                        });
                    });
                } else {
                    let resp = agent.handle(req);
                    let _ = reply.send(resp);
                }
            }
            Some(ev) = ev_rx.recv() => agent.event(ev),
            _ = tokio::time::sleep_until(deadline.into()) => agent.tick(),
            _ = hup.recv() => match agent.reload() {
                Ok(summary) => log::info!("SIGHUP: {summary}"),
                Err(e) => log::error!("SIGHUP: reload refused, running state kept: {e:#}"),
            },
            _ = term.recv() => { log::info!("SIGTERM: handing over and shutting down"); agent.exit = Some(Exit::Stop); }
            _ = int.recv() => { log::info!("SIGINT: handing over and shutting down"); agent.exit = Some(Exit::Stop); }
        }
    }
    if matches!(agent.exit, Some(Exit::Restart { .. })) {
        // Let the answer to the request that ended the loop reach its client (the
        // peers were told to hold when the request came in).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.abort();
    if let Some(m) = metrics {
        m.abort();
    }
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
            log::info!("agent stopped; data plane detached, addresses removed");
        }
    }
    Ok(())
}

/// `vip agent --cleanup`: removes what an agent with this config may have left (a
/// pinned data plane, VIP addresses), without starting one.
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
    // VIP addresses live on lo (and, left by an agent of an earlier version, on the
    // interface itself).
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
        // interface only, elastic-IP rules everywhere.
        let settings = if cfg.eips.is_empty() {
            vip_common::Settings::default()
        } else {
            vip_common::Settings {
                vip_ifindex: iface.index,
                eip_enabled: 1,
            }
        };
        let mut dp = Dataplane::open(cfg.node.max_vips, pin.as_deref(), settings)
            .context("loading the XDP data plane")?;
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
        // A killed agent's addresses on lo: taken again only by a takeover.
        let stale: Vec<IpAddr> = host::interface("lo")
            .map(|lo| {
                lo.addrs
                    .iter()
                    .filter(|(a, p)| all_vips.contains(a) && *p == host_prefix(*a))
                    .map(|(a, _)| *a)
                    .collect()
            })
            .unwrap_or_default();
        addrs.remove_from(addrs.ifindex(), &stale);
        let reader = Arc::new(dp.reader().context("opening the data plane for reading")?);
        let nl = Netlink::open().context("opening rtnetlink")?;
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
            eips: Vec::new(),
            opts,
            slots: BTreeSet::new(),
            health_tx: None,
            mcast: None,
            link_up: true,
            exit: None,
        };
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
        agent.setup_eips(&mut warnings)?;
        agent.warnings = warnings;
        Ok(agent)
    }

    /// Entries an earlier agent left for VIPs this config no longer has.
    fn remove_stale_entries(&mut self, groups: &[Group]) {
        let wanted: BTreeSet<IpAddr> = groups
            .iter()
            .flat_map(|g| g.vips.iter().map(|v| v.addr))
            .collect();
        for addr in self.dp.vip_addrs() {
            if !wanted.contains(&addr) {
                log::info!("removing the entry for {addr}, which is no longer configured");
                if let Err(e) = self.dp.remove_vip(addr) {
                    log::warn!("removing the stale entry for {addr}: {e:#}");
                }
                self.addrs.remove("(no longer configured)", addr);
            }
        }
    }

    fn alloc_slot(&mut self) -> Result<u32> {
        let slot = (0..self.cfg.node.max_vips)
            .find(|s| !self.slots.contains(s))
            .context("no free counter slot (node.max_vips)")?;
        self.slots.insert(slot);
        Ok(slot)
    }

    fn alloc_group_index(&self) -> Result<u32> {
        let used: BTreeSet<u32> = self.groups.iter().map(|g| g.index).collect();
        (0..vip_common::MAX_GROUPS)
            .find(|i| !used.contains(i))
            .context("too many groups")
    }

    /// Creates a group's runtime and puts it in its starting state. `previous` holds
    /// the entries an adopted data plane had for its VIPs.
    fn add_group(
        &mut self,
        g: &Group,
        key: Option<Vec<u8>>,
        previous: &HashMap<IpAddr, VipEntry>,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        let now = Instant::now();
        let redirect = match &g.redirect {
            Some(r) => {
                let t = redirect_target(&self.nl, &g.name, r, warnings)?;
                self.dp
                    .add_redirect_target(t.ifindex)
                    .with_context(|| format!("group[{}].redirect_to", g.name))?;
                Some(t)
            }
            None => None,
        };
        let mut vips = Vec::new();
        let mut was_active = !g.vips.is_empty();
        for v in &g.vips {
            let slot = match previous.get(&v.addr) {
                Some(e) => e.stats_index,
                None => {
                    let slot = self.alloc_slot()?;
                    self.dp.reset_stats(slot)?;
                    slot
                }
            };
            was_active &= previous
                .get(&v.addr)
                .is_some_and(|e| e.action == action::LOCAL || e.action == action::REDIRECT);
            vips.push(VipRuntime { vip: *v, slot });
        }
        let election = match &g.election {
            Some(e) => Some(Election::new(self.election_params(g, e)?)),
            None => None,
        };
        let index = self.alloc_group_index()?;
        self.groups
            .push(GroupRuntime::new(g, index, redirect, vips, election, key));
        let gi = self.groups.len() - 1;
        self.spawn_checks(gi);
        let g = &self.groups[gi];
        let elected = g.election.is_some();
        let driven = g.cfg.keepalived_instance.is_some();
        if elected && was_active {
            // A restart: the predecessor was active and asked the peers to hold.
            let actions = self.groups[gi]
                .election
                .as_mut()
                .map(|e| e.start_active(now))
                .unwrap_or_default();
            self.activate(gi, Reason::Adopted)?;
            self.apply(gi, actions);
        } else if elected {
            self.deactivate(gi, State::Standby, None, Reason::Electing)?;
            let actions = self.groups[gi]
                .election
                .as_mut()
                .map(|e| e.start(now))
                .unwrap_or_default();
            self.apply(gi, actions);
        } else if driven && was_active {
            self.activate(gi, Reason::Adopted)?;
        } else if driven {
            self.deactivate(gi, State::Standby, None, Reason::WaitingForKeepalived)?;
        } else if g.checks.is_empty() && g.cfg.role == Role::Active {
            self.activate(gi, Reason::Configured(Role::Active))?;
        } else if g.cfg.role == Role::Active {
            self.deactivate(gi, State::Init, None, Reason::WaitingForHealth)?;
        } else {
            let fwd = g.forward_to;
            self.deactivate(gi, State::Standby, fwd, Reason::Configured(Role::Standby))?;
        }
        Ok(())
    }

    fn election_params(&self, g: &Group, e: &config::Election) -> Result<Params> {
        let me =
            adverts::primary_address(&self.iface, e.peers[0].is_ipv4()).with_context(|| {
                format!(
                    "group[{}].peers: interface {} has no address of the peers' family",
                    g.name, self.iface.name
                )
            })?;
        Ok(Params {
            priority: e.priority,
            interval: e.advert_interval,
            preempt: e.preempt,
            preempt_delay: e.preempt_delay,
            me,
        })
    }

    /// Removes a group: gives its VIPs up (a release lets a standby take over at once),
    /// frees its slots and stops its tasks.
    fn remove_group(&mut self, gi: usize) {
        if self.groups[gi].state == State::Active && self.groups[gi].election.is_some() {
            self.send_advert(gi, Kind::Release);
        }
        let mut g = self.groups.remove(gi);
        g.stop_announcing();
        for t in g.tasks.drain(..) {
            t.abort();
        }
        for v in g.vips.iter() {
            if let Err(e) = self.dp.remove_vip(v.vip.addr) {
                log::warn!(
                    "group {}: removing map entry {}: {e:#}",
                    g.cfg.name,
                    v.vip.addr
                );
            }
            self.addrs.remove(&g.cfg.name, v.vip.addr);
            self.slots.remove(&v.slot);
        }
        log::info!("group {}: removed", g.cfg.name);
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

    /// Starts the health-check tasks of one group (none before `spawn_helpers`).
    fn spawn_checks(&mut self, gi: usize) {
        let Some(htx) = self.health_tx.clone() else {
            return;
        };
        let g = &mut self.groups[gi];
        for t in g.tasks.drain(..) {
            t.abort();
        }
        let name = g.cfg.name.clone();
        if g.cfg.track.interface {
            let poll = g
                .cfg
                .election
                .as_ref()
                .map(|e| e.advert_interval)
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            g.tasks.push(tokio::spawn(health::run_interface(
                name.clone(),
                self.iface.name.clone(),
                poll,
                htx.clone(),
            )));
        }
        if let Some(c) = &g.cfg.track.script {
            g.tasks.push(tokio::spawn(health::run_script(
                name.clone(),
                c.clone(),
                htx.clone(),
            )));
        }
        if let Some(c) = &g.cfg.track.tcp {
            g.tasks
                .push(tokio::spawn(health::run_tcp(name, c.clone(), htx)));
        }
    }

    fn group_index(&self, name: &str) -> Result<usize, String> {
        self.groups
            .iter()
            .position(|g| g.cfg.name == name)
            .ok_or_else(|| {
                let names: Vec<_> = self.groups.iter().map(|g| g.cfg.name.as_str()).collect();
                format!("no group named `{name}` (groups: {})", names.join(", "))
            })
    }

    /// The next instant something is due: an election timer, a drain, a lease renewal.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(1);
        for g in &self.groups {
            if let Some(t) = g.election.as_ref().and_then(|e| e.next_deadline()) {
                next = next.min(t);
            }
            if let Some(t) = g.drain_until {
                next = next.min(t);
            }
        }
        next.max(now)
    }

    /// Runs due timers of every group.
    fn tick(&mut self) {
        let now = Instant::now();
        for gi in 0..self.groups.len() {
            if let Some(e) = self.groups[gi].election.as_mut() {
                let actions = e.tick(now);
                self.apply(gi, actions);
            }
            if self.groups[gi].drain_until.is_some_and(|t| now >= t) {
                self.groups[gi].drain_until = None;
                if self.groups[gi].state != State::Active {
                    if let Err(e) = self.set_entries(gi, None) {
                        log::error!(
                            "group {}: ending the drain: {e:#}",
                            self.groups[gi].cfg.name
                        );
                    }
                }
            }
        }
        self.renew_leases();
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Datagram(b, from) => self.datagram(&b, from),
            Event::Kernel(crate::netlink::Change::Link { up }) => self.link(up),
            Event::Kernel(crate::netlink::Change::AddressRemoved { addr, .. }) => {
                self.address_removed(addr)
            }
            Event::Kernel(crate::netlink::Change::Resync) => self.restore_addresses(),
            Event::Health((group, name, ok, detail)) => {
                if let Some(gi) = self.groups.iter().position(|g| g.cfg.name == group) {
                    self.health(gi, name, ok, detail);
                }
            }
        }
        self.renew_leases();
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
        if let Some(e) = g.election.as_mut() {
            let actions = e.set_healthy(now_healthy, reason, Instant::now());
            self.apply(gi, actions);
            return;
        }
        // Static and keepalived-driven groups: fault gives up, recovery restores the
        // configured role (static) or waits for keepalived.
        let res = if !now_healthy {
            self.deactivate(gi, State::Fault, None, reason)
        } else if !first_results {
            Ok(())
        } else if g.cfg.keepalived_instance.is_none() && g.cfg.role == Role::Active {
            self.activate(gi, reason)
        } else {
            let fwd = g.cfg.forward_to;
            self.deactivate(gi, State::Standby, fwd, reason)
        };
        if let Err(e) = res {
            log::error!("group {}: {e:#}", self.groups[gi].cfg.name);
        }
    }

    /// Carries out what an election decided.
    fn apply(&mut self, gi: usize, actions: Vec<Action>) {
        for a in actions {
            let res = match a {
                Action::TakeOver { reason } => self.activate(gi, reason),
                Action::StepDown { forward_to, reason } => self.step_down(gi, forward_to, reason),
                Action::Fault { reason } => self.deactivate(gi, State::Fault, None, reason),
                Action::Recover { reason } => {
                    self.groups[gi].set_state(State::Standby, reason);
                    Ok(())
                }
                Action::ForwardTo(mac) => {
                    if self.groups[gi].state == State::Standby
                        && self.groups[gi].drain_until.is_none()
                    {
                        self.groups[gi].forward_to = mac;
                        self.set_entries(gi, mac)
                    } else {
                        Ok(())
                    }
                }
                Action::Send(kind) => {
                    self.send_advert(gi, kind);
                    Ok(())
                }
                Action::Reannounce => {
                    self.announce(gi);
                    Ok(())
                }
            };
            if let Err(e) = res {
                log::error!("group {}: {e:#}", self.groups[gi].cfg.name);
            }
        }
    }

    /// Answers one control request.
    pub fn handle(&mut self, req: Request) -> Response {
        let now = Instant::now();
        let named = |this: &Self, g: &str| this.group_index(g);
        match req {
            Request::Status => Response {
                ok: true,
                status: Some(Box::new(self.snapshot().render(&self.reader))),
                ..Default::default()
            },
            Request::Promote { group } => {
                let gi = match named(self, &group) {
                    Ok(gi) => gi,
                    Err(e) => return Response::error(e),
                };
                let res = match self.groups[gi].election.as_mut() {
                    Some(e) => {
                        let actions = e.promote(now);
                        self.apply(gi, actions);
                        Ok(())
                    }
                    None => self.activate(gi, Reason::Promoted),
                };
                self.renew_leases();
                match res {
                    Ok(()) => Response::ok(format!(
                        "group {group} is {}",
                        self.groups[gi].state.as_str()
                    )),
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
            Request::Demote { group, forward_to } => {
                let gi = match named(self, &group) {
                    Ok(gi) => gi,
                    Err(e) => return Response::error(e),
                };
                if let Some(m) = forward_to {
                    if !m.is_unicast() {
                        return Response::error(format!("forward_to {m} is not a unicast MAC"));
                    }
                }
                let res = match self.groups[gi].election.as_mut() {
                    Some(e) => {
                        let actions = e.demote(forward_to, now);
                        self.apply(gi, actions);
                        Ok(())
                    }
                    None => {
                        let fwd = forward_to.or(self.groups[gi].cfg.forward_to);
                        self.deactivate(gi, State::Standby, fwd, Reason::Demoted)
                    }
                };
                self.renew_leases();
                let g = &self.groups[gi];
                match res {
                    Ok(()) if g.state == State::Active => Response::ok(format!(
                        "group {group} is handing over: serving until a standby takes over, then forwarding to it"
                    )),
                    Ok(()) => Response::ok(match g.forward_to {
                        Some(m) => format!("group {group} is standby, forwarding to {m}"),
                        None => format!("group {group} is standby"),
                    }),
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
            Request::Resume { group } => {
                let gi = match named(self, &group) {
                    Ok(gi) => gi,
                    Err(e) => return Response::error(e),
                };
                match self.groups[gi].election.as_mut() {
                    Some(e) => {
                        let actions = e.resume(now);
                        self.apply(gi, actions);
                        Response::ok(format!("group {group} is back under the election"))
                    }
                    None => Response::error(format!(
                        "group {group} is not elected (no peers); nothing to resume"
                    )),
                }
            }
            Request::Notify {
                kind,
                name,
                state,
                priority,
            } => self.notify(&kind, &name, &state, priority),
            Request::Reload => match self.reload() {
                Ok(summary) => Response::ok(summary),
                Err(e) => Response::error(format!("reload refused, running state kept: {e:#}")),
            },
            Request::Restart { hold_ms } => {
                if self.dp.pin_dir().is_none() {
                    return Response::error(
                        "the data plane is not pinned (no bpf filesystem): a restart would interrupt it; \
                         mount bpffs or set node.pin_dir, or stop the agent instead",
                    );
                }
                if !(100..=60_000).contains(&hold_ms) {
                    return Response::error(format!(
                        "hold_ms {hold_ms} is out of range 100..=60000"
                    ));
                }
                let hold = Duration::from_millis(hold_ms as u64);
                // Peers hold from now on: no gap in which a standby could take over.
                self.prepare_restart(hold);
                self.exit = Some(Exit::Restart { hold });
                Response::ok(format!(
                    "exiting for a restart: the data plane keeps serving and peers hold for {hold_ms} ms; start the agent again"
                ))
            }
        }
    }

    /// Before exiting for a restart: peers hold, leases cover the gap, pins stay.
    fn prepare_restart(&mut self, hold: Duration) {
        let deadline = host::monotonic_ns() + hold.as_nanos() as u64;
        for gi in 0..self.groups.len() {
            self.groups[gi].stop_announcing();
            if self.groups[gi].state == State::Active && self.groups[gi].election.is_some() {
                self.send_hold(gi, hold);
            }
            let (leased, index) = (self.groups[gi].leased(), self.groups[gi].index);
            if leased {
                if let Err(e) = self.dp.set_lease(index, deadline) {
                    log::error!(
                        "group {}: extending the lease for the restart: {e:#}",
                        self.groups[gi].cfg.name
                    );
                }
            }
        }
    }

    /// keepalived's notify: `TYPE NAME STATE [PRIORITY]`.
    fn notify(&mut self, kind: &str, name: &str, state: &str, priority: Option<u8>) -> Response {
        if !matches!(kind, "INSTANCE" | "GROUP") {
            return Response::error(format!(
                "unknown notify type `{kind}` (expected INSTANCE or GROUP)"
            ));
        }
        let Some(gi) = self
            .groups
            .iter()
            .position(|g| g.cfg.keepalived_instance.as_deref() == Some(name))
        else {
            return Response::error(format!("no group has keepalived_instance = \"{name}\""));
        };
        let reason = Reason::Keepalived {
            kind: kind.into(),
            name: name.into(),
            state: state.into(),
            priority,
        };
        if !self.groups[gi].healthy() && state == "MASTER" {
            return Response::error(format!(
                "group {} is faulty ({}); not taking over",
                self.groups[gi].cfg.name,
                self.groups[gi].health_detail()
            ));
        }
        let res = match state {
            "MASTER" => self.activate(gi, reason),
            "BACKUP" | "STOP" => {
                let fwd = self.groups[gi].cfg.forward_to;
                self.deactivate(gi, State::Standby, fwd, reason)
            }
            "FAULT" => self.deactivate(gi, State::Fault, None, reason),
            other => {
                return Response::error(format!(
                    "unknown keepalived state `{other}` (expected MASTER, BACKUP, FAULT or STOP)"
                ))
            }
        };
        match res {
            Ok(()) => Response::ok(format!(
                "group {} is {}",
                self.groups[gi].cfg.name,
                self.groups[gi].state.as_str()
            )),
            Err(e) => Response::error(format!("{e:#}")),
        }
    }

    /// Standby entries: forward to `mac`, or inert.
    fn set_entries(&mut self, gi: usize, mac: Option<Mac>) -> Result<()> {
        let g = &self.groups[gi];
        let act = if mac.is_some() {
            action::FORWARD
        } else {
            action::NONE
        };
        let entries: Vec<(IpAddr, VipEntry)> = g
            .vips
            .iter()
            .map(|v| (v.vip.addr, g.entry(self.iface.mac, v, act, mac)))
            .collect();
        if mac.is_some() && g.leased() {
            let lease = self.lease_of(gi);
            self.dp
                .set_lease(g.index, host::monotonic_ns() + lease.as_nanos() as u64)?;
        }
        self.dp
            .set_vips_batch(&entries)
            .with_context(|| format!("group {}: programming its VIPs", g.cfg.name))?;
        Ok(())
    }

    fn lease_of(&self, gi: usize) -> Duration {
        self.groups[gi]
            .cfg
            .election
            .as_ref()
            .map(|e| e.lease)
            .unwrap_or(Duration::from_secs(1))
    }

    /// Keeps the data plane's leases alive for groups that act (active, or forwarding).
    fn renew_leases(&mut self) {
        let now = host::monotonic_ns();
        for gi in 0..self.groups.len() {
            let g = &self.groups[gi];
            if !g.leased() || !(g.state == State::Active || g.forward_to.is_some()) {
                continue;
            }
            let deadline = now + self.lease_of(gi).as_nanos() as u64;
            let index = g.index;
            if let Err(e) = self.dp.set_lease(index, deadline) {
                log::error!("group {}: renewing the lease: {e:#}", g.cfg.name);
            } else {
                self.groups[gi].lease_deadline = Some(deadline);
            }
        }
    }

    /// A VIP address we hold was removed (an operator deleted it, or the kernel flushed
    /// it): add it back, so the local stack keeps accepting what the data plane passes.
    fn address_removed(&mut self, addr: IpAddr) {
        if !self.addrs.holds(addr) {
            return;
        }
        log::warn!("VIP address {addr} was removed from lo; adding it back");
        self.addrs.restore();
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

    /// Adds back the addresses of every active local VIP (idempotent).
    fn restore_addresses(&mut self) {
        self.addrs.restore();
    }

    /// An IPv6 VIP's address is on `lo` (or, redirected, nowhere), so the interface
    /// does not join its solicited-node group by itself: join it, or NICs that filter
    /// multicast and switches that snoop MLD never deliver the solicitations for it.
    fn join_solicited_nodes(&mut self, gi: usize, join: bool) {
        let addrs: Vec<std::net::Ipv6Addr> = self.groups[gi]
            .vips
            .iter()
            .filter_map(|v| match v.vip.addr {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            })
            .collect();
        if addrs.is_empty() {
            return;
        }
        if self.mcast.is_none() {
            match std::net::UdpSocket::bind("[::]:0") {
                Ok(s) => self.mcast = Some(s),
                Err(e) => {
                    log::error!("opening a socket for multicast membership: {e}");
                    return;
                }
            }
        }
        let Some(sock) = &self.mcast else { return };
        for a in addrs {
            let (group, _) = crate::frames::solicited_node(a);
            let r = if join {
                sock.join_multicast_v6(&group, self.iface.index)
            } else {
                sock.leave_multicast_v6(&group, self.iface.index)
            };
            match r {
                Ok(()) => {}
                // Joining twice or leaving what was never joined: nothing to do.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EADDRINUSE) | Some(libc::EADDRNOTAVAIL) | Some(libc::EINVAL)
                    ) => {}
                Err(e) => log::error!(
                    "group {}: {} solicited-node group {group}: {e}",
                    self.groups[gi].cfg.name,
                    if join { "joining" } else { "leaving" }
                ),
            }
        }
    }

    /// Takes the group's VIPs: lease and entries, then addresses, then announcements.
    pub fn activate(&mut self, gi: usize, reason: Reason) -> Result<()> {
        let g = &self.groups[gi];
        if g.leased() {
            let lease = self.lease_of(gi);
            self.dp
                .set_lease(g.index, host::monotonic_ns() + lease.as_nanos() as u64)?;
        }
        let act = g.active_action();
        let entries: Vec<(IpAddr, VipEntry)> = g
            .vips
            .iter()
            .map(|v| (v.vip.addr, g.entry(self.iface.mac, v, act, None)))
            .collect();
        self.dp
            .set_vips_batch(&entries)
            .with_context(|| format!("group {}: programming its VIPs", g.cfg.name))?;
        if act == action::LOCAL {
            let (name, vips) = (g.cfg.name.clone(), g.vips.clone());
            for v in vips.iter() {
                self.addrs.add(&name, v.vip.addr);
            }
        }
        self.join_solicited_nodes(gi, true);
        self.groups[gi].forward_to = None;
        self.groups[gi].drain_until = None;
        self.groups[gi].set_state(State::Active, reason);
        self.announce(gi);
        Ok(())
    }

    /// A step-down decided by the election: towards a known successor, forward for
    /// the drain period (and as long as it keeps advertising), else inert.
    fn step_down(&mut self, gi: usize, forward_to: Option<Mac>, reason: Reason) -> Result<()> {
        self.deactivate(gi, State::Standby, forward_to, reason)
    }

    /// Gives the group's VIPs up: stop answering (or forward to `forward_to`), then
    /// remove the addresses.
    pub fn deactivate(
        &mut self,
        gi: usize,
        state: State,
        forward_to: Option<Mac>,
        reason: Reason,
    ) -> Result<()> {
        self.groups[gi].stop_announcing();
        let was_active = self.groups[gi].state == State::Active;
        if was_active {
            self.join_solicited_nodes(gi, false);
        }
        let forward_to = if state == State::Fault {
            None
        } else {
            forward_to
        };
        self.groups[gi].forward_to = forward_to;
        self.set_entries(gi, forward_to)?;
        let (name, vips) = (
            self.groups[gi].cfg.name.clone(),
            self.groups[gi].vips.clone(),
        );
        for v in vips.iter() {
            if self.addrs.holds(v.vip.addr) {
                self.addrs.remove(&name, v.vip.addr);
            }
        }
        let g = &self.groups[gi];
        // Static groups forward only for the drain period after giving the VIP up,
        // unless the config asks for it permanently.
        if was_active && forward_to.is_some() && g.election.is_none() && g.cfg.forward_to.is_none()
        {
            self.groups[gi].drain_until = Some(Instant::now() + g.cfg.drain);
        }
        self.groups[gi].set_state(state, reason);
        Ok(())
    }

    /// Starts (or restarts) the group's gratuitous ARP / unsolicited NA burst, and the
    /// periodic refresh if configured.
    fn announce(&mut self, gi: usize) {
        let g = &mut self.groups[gi];
        g.stop_announcing();
        let addrs: Vec<IpAddr> = g.vips.iter().map(|v| v.vip.addr).collect();
        let (sock, mac, garp, name, refresh) = (
            self.socket.clone(),
            self.iface.mac,
            g.cfg.garp,
            g.cfg.name.clone(),
            g.cfg.garp_refresh,
        );
        g.announcer = Some(tokio::spawn(async move {
            garp::burst(sock.clone(), mac, addrs.clone(), garp, name.clone()).await;
            if let Some(every) = refresh {
                loop {
                    tokio::time::sleep(every).await;
                    garp::burst(
                        sock.clone(),
                        mac,
                        addrs.clone(),
                        config::Garp { count: 1, ..garp },
                        name.clone(),
                    )
                    .await;
                }
            }
        }));
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
            if let Some(e) = self.groups[gi].election.as_mut() {
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
                .any(|g| g.election.as_ref().is_some_and(|e| e.handing_over()))
        };
        let limit = Instant::now() + Duration::from_secs(10);
        while handing_over(self) && Instant::now() < limit {
            self.pump(events, self.next_deadline().min(limit)).await;
        }
        let forwarding = self.groups.iter().any(|g| g.forward_to.is_some());
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
    }

    /// Processes events until `until`.
    async fn pump(&mut self, events: &mut mpsc::Receiver<Event>, until: Instant) {
        tokio::select! {
            Some(ev) = events.recv() => self.event(ev),
            _ = tokio::time::sleep_until(until.into()) => self.tick(),
        }
    }

    pub fn shutdown(&mut self) {
        for e in &self.eips {
            let _ = self.dp.remove_eip(&e.entry);
        }
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
