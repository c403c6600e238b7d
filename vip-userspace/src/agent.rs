//! The agent: owns the data plane and the VIP addresses, moves groups between roles
//! (statically, by its own election, or on keepalived's notifications), announces
//! takeovers and answers the control socket.
//!
//! Order of a takeover: the lease and map entries first (the data plane answers ARP/NS
//! from that instant), then the addresses (local sockets accept the VIP), then the
//! gratuitous ARP / unsolicited NA burst. A step-down reverses it: entries first (we
//! stop answering at once, or forward to the new active), then the addresses.
//!
//! Every method runs on the agent's single task; nothing here blocks for long (netlink
//! and map updates take microseconds).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use tokio::{
    net::UdpSocket,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    task::JoinHandle,
};
use vip_common::{action, flags, VipEntry};

use crate::{
    advert::{Advert, Kind},
    config::{self, Config, Group, Pin as PinConfig, Role, XdpMode},
    control::{self, Envelope, Request, Response},
    dataplane::{self, Dataplane},
    election::{Action, Election, Params, Pin, State},
    garp::{self, PacketSocket},
    health::{self, Tracker},
    host::{self, Interface},
    mac::Mac,
    netlink::Netlink,
    status::{ActivePeer, ElectionStatus, GroupStatus, Status, VipStatus},
};

/// What the command line may override in the config.
#[derive(Debug, Default, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub xdp_mode: Option<XdpMode>,
    pub interface: Option<String>,
}

/// Where redirected frames go.
#[derive(Debug, Clone, Copy)]
struct RedirectTarget {
    ifindex: u32,
    src_mac: Mac,
    dst_mac: Mac,
}

struct VipRuntime {
    vip: config::Vip,
    slot: u32,
}

/// Advertisement problems, counted per group.
#[derive(Debug, Default, Clone)]
struct AdvertErrors {
    auth_failures: u64,
    replays: u64,
    malformed: u64,
    unknown_peers: u64,
}

struct GroupRuntime {
    cfg: Group,
    index: u32,
    state: State,
    reason: String,
    since: SystemTime,
    transitions: u64,
    forward_to: Option<Mac>,
    redirect: Option<RedirectTarget>,
    vips: Vec<VipRuntime>,
    announcer: Option<JoinHandle<()>>,
    election: Option<Election>,
    key: Option<Vec<u8>>,
    /// Highest sequence number seen per peer (replay protection).
    last_seq: HashMap<IpAddr, u64>,
    errors: AdvertErrors,
    checks: Vec<(&'static str, Tracker, String)>,
    /// Until when a drained step-down keeps forwarding (static/keepalived groups).
    drain_until: Option<Instant>,
    lease_deadline: Option<u64>,
    /// Transitions by "state/reason kind", for metrics.
    transition_reasons: BTreeMap<String, u64>,
    /// Health-check tasks, aborted when the group goes away.
    tasks: Vec<JoinHandle<()>>,
}

impl GroupRuntime {
    fn healthy(&self) -> bool {
        self.checks.iter().all(|(_, t, _)| t.state() != Some(false))
    }

    fn leased(&self) -> bool {
        self.election.is_some()
    }
}

/// Datagram sockets of the election, one per address family in use.
struct AdvertSockets {
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
}

/// The running agent.
pub struct Agent {
    cfg: Config,
    iface: Interface,
    dp: Dataplane,
    nl: Netlink,
    socket: Arc<PacketSocket>,
    adverts: AdvertSockets,
    groups: Vec<GroupRuntime>,
    warnings: Vec<String>,
    /// Our sequence number for advertisements: wall-clock ns at start, then +1, so it
    /// keeps growing across restarts.
    seq: u64,
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
    eips: Vec<EipRuntime>,
}

/// One elastic IP as the agent programmed it.
struct EipRuntime {
    cfg: config::Eip,
    entry: vip_common::EipEntry,
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
                let resp = agent.handle(req);
                let _ = reply.send(resp);
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
    let mut cfg = config::load(&opts.config)?;
    if let Some(i) = &opts.interface {
        cfg.node.interface = i.clone();
    }
    let mut done = Vec::new();
    if let Some(d) = cfg.node.pin.dir() {
        let removed = dataplane::remove_pins(d)
            .with_context(|| format!("removing pins under {}", d.display()))?;
        if !removed.is_empty() {
            done.push(format!("removed {} (data plane detached)", d.display()));
        }
    }
    if let Ok(iface) = host::interface(&cfg.node.interface) {
        let nl = Netlink::open().context("opening rtnetlink")?;
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
        dp.attach(&iface.name, cfg.node.xdp_mode)?;
        let adopted = dp.adopted();
        log::info!(
            "XDP attached to {} ({} mode){}",
            iface.name,
            cfg.node.xdp_mode.as_str(),
            match (&pin, adopted) {
                (Some(d), true) =>
                    format!("; adopted the running data plane pinned at {}", d.display()),
                (Some(d), false) => format!("; pinned at {}", d.display()),
                (None, _) => String::new(),
            }
        );
        warnings.extend(interface_warnings(&iface));
        let nl = Netlink::open().context("opening rtnetlink")?;
        let socket = Arc::new(
            PacketSocket::open(iface.index).context("opening a packet socket for announcements")?,
        );
        let adverts = bind_advert_sockets(&cfg, &iface).await?;
        let seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let groups_cfg = cfg.groups.clone();
        let mut agent = Agent {
            cfg,
            iface,
            dp,
            nl,
            socket,
            adverts,
            groups: Vec::new(),
            warnings: Vec::new(),
            seq,
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
                let _ = self
                    .nl
                    .del_address(self.iface.index, addr, host_prefix(addr));
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
            Some(r) => Some(redirect_target(
                &self.nl,
                &mut self.dp,
                &g.name,
                r,
                warnings,
            )?),
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
        let checks = trackers(&g.track);
        let index = self.alloc_group_index()?;
        self.groups.push(GroupRuntime {
            cfg: g.clone(),
            index,
            state: State::Init,
            reason: "starting".into(),
            since: SystemTime::now(),
            transitions: 0,
            forward_to: g.forward_to,
            redirect,
            vips,
            announcer: None,
            election,
            key,
            last_seq: HashMap::new(),
            errors: AdvertErrors::default(),
            checks,
            drain_until: None,
            lease_deadline: None,
            transition_reasons: BTreeMap::new(),
            tasks: Vec::new(),
        });
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
            self.activate(gi, "adopted the running data plane (was active)")?;
            self.apply(gi, actions);
        } else if elected {
            if let Some(e) = self.groups[gi].election.as_mut() {
                e.start(now);
            }
            self.deactivate(gi, State::Standby, None, "electing: waiting for the active")?;
        } else if driven && was_active {
            self.activate(
                gi,
                "adopted the running data plane (keepalived's last word was MASTER)",
            )?;
        } else if driven {
            self.deactivate(gi, State::Standby, None, "waiting for keepalived")?;
        } else if g.checks.is_empty() && g.cfg.role == Role::Active {
            self.activate(gi, "configured role: active")?;
        } else if g.cfg.role == Role::Active {
            self.deactivate(
                gi,
                State::Init,
                None,
                "configured role: active, waiting for health checks",
            )?;
        } else {
            let fwd = g.forward_to;
            self.deactivate(gi, State::Standby, fwd, "configured role: standby")?;
        }
        Ok(())
    }

    fn election_params(&self, g: &Group, e: &config::Election) -> Result<Params> {
        let me = primary_address(&self.iface, e.peers[0].is_ipv4()).with_context(|| {
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
        let g = self.groups.remove(gi);
        if let Some(h) = g.announcer {
            h.abort();
        }
        for t in g.tasks {
            t.abort();
        }
        for v in &g.vips {
            if let Err(e) = self.dp.remove_vip(v.vip.addr) {
                log::warn!(
                    "group {}: removing map entry {}: {e:#}",
                    g.cfg.name,
                    v.vip.addr
                );
            }
            let _ = self
                .nl
                .del_address(self.iface.index, v.vip.addr, host_prefix(v.vip.addr));
            self.slots.remove(&v.slot);
        }
        log::info!("group {}: removed", g.cfg.name);
    }

    /// Starts the tasks that feed the loop: advert receivers and health checks.
    fn spawn_helpers(&mut self, tx: &mpsc::Sender<Event>) {
        // The kernel's word on our interface, for every group: it flushes IPv6
        // addresses when the link goes down, and an operator may delete one.
        match crate::netlink::Monitor::open(self.iface.index) {
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
        for sock in [&self.adverts.v4, &self.adverts.v6].into_iter().flatten() {
            let (sock, tx) = (sock.clone(), tx.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    match sock.recv_from(&mut buf).await {
                        Ok((n, from)) => {
                            if tx
                                .send(Event::Datagram(buf[..n].to_vec(), from))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => log::warn!("receiving advertisements: {e}"),
                    }
                }
            });
        }
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
            Event::Kernel(crate::netlink::Change::AddressRemoved(a)) => self.address_removed(a),
            Event::Kernel(crate::netlink::Change::Resync) => self.restore_addresses(),
            Event::Health((group, name, ok, detail)) => {
                if let Some(gi) = self.groups.iter().position(|g| g.cfg.name == group) {
                    self.health(gi, name, ok, detail);
                }
            }
        }
        self.renew_leases();
    }

    /// One advertisement from the network: authenticate, check the sender and the
    /// sequence, then feed the group's election. Anything wrong is counted and dropped.
    fn datagram(&mut self, b: &[u8], from: SocketAddr) {
        let from_ip = canonical(from.ip());
        let mut group = None;
        let decoded = Advert::decode_with(b, |name| {
            group = self
                .groups
                .iter()
                .position(|g| g.cfg.name == name && g.election.is_some());
            group.and_then(|gi| self.groups[gi].key.as_deref())
        });
        let is_peer = |g: &GroupRuntime| {
            g.cfg
                .election
                .as_ref()
                .is_some_and(|e| e.peers.contains(&from_ip))
        };
        let gi = match group {
            Some(gi) => gi,
            // Not attributable by its name: charge it to a group the sender is a peer of.
            None => match self.groups.iter().position(is_peer) {
                Some(gi) if decoded.is_err() => gi,
                _ => {
                    self.unknown_group_adverts += 1;
                    log::debug!("advertisement from {from_ip} for no elected group of ours");
                    return;
                }
            },
        };
        let g = &mut self.groups[gi];
        if !is_peer(g) {
            g.errors.unknown_peers += 1;
            log::warn!(
                "group {}: advertisement from {from_ip}, which is not a peer; ignored",
                g.cfg.name
            );
            return;
        }
        let ad = match decoded {
            Ok(ad) => ad,
            Err(e) => {
                if e.is_auth() {
                    g.errors.auth_failures += 1;
                    log::warn!("group {}: advertisement from {from_ip} failed authentication ({e}); ignored", g.cfg.name);
                } else {
                    g.errors.malformed += 1;
                    log::warn!(
                        "group {}: malformed advertisement from {from_ip} ({e}); ignored",
                        g.cfg.name
                    );
                }
                return;
            }
        };
        if ad.addr != from_ip {
            g.errors.malformed += 1;
            log::warn!(
                "group {}: advertisement from {from_ip} claims to be from {}; ignored",
                g.cfg.name,
                ad.addr
            );
            return;
        }
        if g.last_seq.get(&from_ip).is_some_and(|last| ad.seq <= *last) {
            g.errors.replays += 1;
            log::warn!(
                "group {}: replayed advertisement from {from_ip} (sequence {}); ignored",
                g.cfg.name,
                ad.seq
            );
            return;
        }
        g.last_seq.insert(from_ip, ad.seq);
        log::trace!(
            "group {}: {:?} from {from_ip} priority {}",
            g.cfg.name,
            ad.kind,
            ad.priority
        );
        let actions = match g.election.as_mut() {
            Some(e) => e.receive(&ad, Instant::now()),
            None => return,
        };
        self.apply(gi, actions);
    }

    fn health(&mut self, gi: usize, name: &str, ok: bool, detail: String) {
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
        let reason = format!("{name}: {detail}");
        if let Some(e) = g.election.as_mut() {
            let actions = e.set_healthy(now_healthy, &reason, Instant::now());
            self.apply(gi, actions);
            return;
        }
        // Static and keepalived-driven groups: fault gives up, recovery restores the
        // configured role (static) or waits for keepalived.
        let res = if !now_healthy {
            self.deactivate(gi, State::Fault, None, &reason)
        } else if !first_results {
            Ok(())
        } else if g.cfg.keepalived_instance.is_none() && g.cfg.role == Role::Active {
            self.activate(gi, &format!("healthy again ({reason})"))
        } else {
            let fwd = g.cfg.forward_to;
            self.deactivate(
                gi,
                State::Standby,
                fwd,
                &format!("healthy again ({reason})"),
            )
        };
        if let Err(e) = res {
            log::error!("group {}: {e:#}", self.groups[gi].cfg.name);
        }
    }

    /// Carries out what an election decided.
    fn apply(&mut self, gi: usize, actions: Vec<Action>) {
        for a in actions {
            let res = match a {
                Action::TakeOver { reason } => self.activate(gi, &reason),
                Action::StepDown { forward_to, reason } => self.step_down(gi, forward_to, &reason),
                Action::Fault { reason } => self.deactivate(gi, State::Fault, None, &reason),
                Action::Recover { reason } => {
                    self.set_state(gi, State::Standby, &format!("recovered: {reason}"));
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

    fn send_hold(&mut self, gi: usize, hold: Duration) {
        self.send_advert_with(
            gi,
            Kind::Hold,
            hold.as_millis().min(u16::MAX as u128) as u16,
        );
    }

    fn send_advert(&mut self, gi: usize, kind: Kind) {
        self.send_advert_with(gi, kind, 0);
    }

    fn send_advert_with(&mut self, gi: usize, kind: Kind, hold_ms: u16) {
        self.seq += 1;
        let g = &self.groups[gi];
        let (Some(e), Some(cfg)) = (g.election.as_ref(), g.cfg.election.as_ref()) else {
            return;
        };
        let ad = Advert {
            kind,
            priority: if kind == Kind::Release {
                0
            } else {
                e.effective_priority()
            },
            interval_ms: cfg.advert_interval.as_millis().min(u16::MAX as u128) as u16,
            hold_ms,
            mac: self.iface.mac,
            addr: e.params().me,
            seq: self.seq,
            group: g.cfg.name.clone(),
        };
        let bytes = ad.encode(g.key.as_deref());
        for peer in &cfg.peers {
            let sock = if peer.is_ipv4() {
                &self.adverts.v4
            } else {
                &self.adverts.v6
            };
            if let Some(s) = sock {
                if let Err(err) =
                    s.try_send_to(&bytes, SocketAddr::new(*peer, self.cfg.node.advert_port))
                {
                    log::debug!("group {}: advertisement to {peer}: {err}", g.cfg.name);
                }
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
                status: Some(Box::new(self.status())),
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
                    None => self.activate(gi, "promoted by `vip promote`"),
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
                        self.deactivate(gi, State::Standby, fwd, "demoted by `vip demote`")
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

    /// Re-reads the config and applies the difference: only groups and VIPs that
    /// changed are touched. Everything is validated first; a bad config changes
    /// nothing.
    pub fn reload(&mut self) -> Result<String> {
        let new = parse_config(&self.opts)?;
        let (a, b) = (&self.cfg.node, &new.node);
        let fixed = [
            ("node.interface", a.interface != b.interface),
            ("node.xdp_mode", a.xdp_mode != b.xdp_mode),
            ("node.control_socket", a.control_socket != b.control_socket),
            ("node.control_group", a.control_group != b.control_group),
            ("node.max_vips", a.max_vips != b.max_vips),
            ("node.advert_port", a.advert_port != b.advert_port),
            ("node.pin / node.pin_dir", a.pin != b.pin),
            ("node.metrics_listen", a.metrics_listen != b.metrics_listen),
            ("eip (elastic IPs)", self.cfg.eips != new.eips),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
            bail!("{key} changed: that needs a restart of the agent; nothing was changed");
        }
        let (new, iface, mut keys, warnings) = check_config(new)?;
        let families = |c: &Config| {
            c.groups
                .iter()
                .filter_map(|g| g.election.as_ref())
                .flat_map(|e| e.peers.iter().map(|p| p.is_ipv4()))
                .collect::<BTreeSet<_>>()
        };
        let have: BTreeSet<bool> = [
            self.adverts.v4.is_some().then_some(true),
            self.adverts.v6.is_some().then_some(false),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !families(&new).is_subset(&have) {
            bail!("the config adds peers of an address family the agent has no advertisement socket for; restart the agent to apply it; nothing was changed");
        }
        // Resolve what can fail before touching anything.
        for g in &new.groups {
            if let Some(r) = &g.redirect {
                host::interface(&r.interface)
                    .with_context(|| format!("group[{}].redirect_to", g.name))?;
            }
            if let Some(e) = &g.election {
                self.election_params(g, e)?;
            }
        }
        let total: usize = new.groups.iter().map(|g| g.vips.len()).sum();
        if total > self.cfg.node.max_vips as usize {
            bail!(
                "{total} VIPs exceed node.max_vips {}",
                self.cfg.node.max_vips
            );
        }

        let now = Instant::now();
        let mut summary = Vec::new();
        let mut warnings = warnings;
        // Groups gone, or changed in kind (static / elected / keepalived, redirect): removed.
        let kind = |g: &Group| {
            (
                g.election.is_some(),
                g.keepalived_instance.clone(),
                g.redirect.clone(),
                g.role,
            )
        };
        let mut gi = 0;
        while gi < self.groups.len() {
            let old = &self.groups[gi].cfg;
            match new.groups.iter().find(|g| g.name == old.name) {
                Some(g) if kind(g) == kind(old) => gi += 1,
                _ => {
                    summary.push(format!("removed group {}", old.name));
                    self.remove_group(gi);
                }
            }
        }
        for g in &new.groups {
            let key = keys.remove(&g.name);
            let Some(gi) = self.groups.iter().position(|r| r.cfg.name == g.name) else {
                self.add_group(g, key, &HashMap::new(), &mut warnings)?;
                summary.push(format!("added group {}", g.name));
                continue;
            };
            if self.groups[gi].cfg == *g && self.groups[gi].key == key {
                continue;
            }
            let changed = self.update_group(gi, g, key, now)?;
            summary.push(format!("group {}: {changed}", g.name));
        }
        self.cfg = new;
        self.iface = iface;
        self.warnings = warnings;
        self.renew_leases();
        Ok(if summary.is_empty() {
            "reloaded: nothing changed".into()
        } else {
            format!("reloaded: {}", summary.join("; "))
        })
    }

    /// Applies a changed group of the same kind: VIPs added/removed, settings updated.
    fn update_group(
        &mut self,
        gi: usize,
        g: &Group,
        key: Option<Vec<u8>>,
        now: Instant,
    ) -> Result<String> {
        let mut what = Vec::new();
        let old_vips: Vec<config::Vip> = self.groups[gi].vips.iter().map(|v| v.vip).collect();
        // VIPs removed.
        let mut k = 0;
        while k < self.groups[gi].vips.len() {
            let v = self.groups[gi].vips[k].vip;
            if g.vips.iter().any(|n| n.addr == v.addr) {
                k += 1;
                continue;
            }
            let slot = self.groups[gi].vips.remove(k).slot;
            self.dp.remove_vip(v.addr)?;
            let _ = self
                .nl
                .del_address(self.iface.index, v.addr, host_prefix(v.addr));
            self.slots.remove(&slot);
            what.push(format!("-{v}"));
        }
        // VIPs added: programmed for the group's current state.
        let mut added = Vec::new();
        for v in &g.vips {
            if old_vips.iter().any(|o| o.addr == v.addr) {
                continue;
            }
            let slot = self.alloc_slot()?;
            self.dp.reset_stats(slot)?;
            self.groups[gi].vips.push(VipRuntime { vip: *v, slot });
            added.push(*v);
            what.push(format!("+{v}"));
        }
        let settings_changed = {
            let mut a = self.groups[gi].cfg.clone();
            let mut b = g.clone();
            a.vips.clear();
            b.vips.clear();
            a != b || self.groups[gi].key != key
        };
        let track_changed = self.groups[gi].cfg.track != g.track;
        self.groups[gi].cfg = g.clone();
        self.groups[gi].key = key;
        if let Some(e) = &g.election {
            let p = self.election_params(g, e)?;
            if let Some(el) = self.groups[gi].election.as_mut() {
                el.set_params(p, now);
            }
        }
        if track_changed {
            self.groups[gi].checks = trackers(&g.track);
            self.spawn_checks(gi);
        }
        if !added.is_empty() {
            let state = self.groups[gi].state;
            if state == State::Active {
                let gr = &self.groups[gi];
                let act = if gr.redirect.is_some() {
                    action::REDIRECT
                } else {
                    action::LOCAL
                };
                let entries: Vec<(IpAddr, VipEntry)> = gr
                    .vips
                    .iter()
                    .filter(|v| added.iter().any(|a| a.addr == v.vip.addr))
                    .map(|v| (v.vip.addr, self.entry(gr, v, act, None)))
                    .collect();
                for (addr, e) in &entries {
                    self.dp.set_vip(*addr, e)?;
                    if act == action::LOCAL {
                        self.nl
                            .add_address(self.iface.index, *addr, host_prefix(*addr))?;
                    }
                }
                let socket = self.socket.clone();
                let (mac, garp, name) = (self.iface.mac, g.garp, g.name.clone());
                let addrs: Vec<IpAddr> = added.iter().map(|v| v.addr).collect();
                tokio::spawn(garp::burst(socket, mac, addrs, garp, name));
                self.join_solicited_nodes(gi, true);
            } else {
                let fwd = self.groups[gi].forward_to;
                self.set_entries(gi, fwd)?;
            }
        }
        if settings_changed {
            what.push("settings updated".into());
        }
        Ok(what.join(" "))
    }

    /// Before exiting for a restart: peers hold, leases cover the gap, pins stay.
    fn prepare_restart(&mut self, hold: Duration) {
        let deadline = host::monotonic_ns() + hold.as_nanos() as u64;
        for gi in 0..self.groups.len() {
            if let Some(h) = self.groups[gi].announcer.take() {
                h.abort();
            }
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
        let reason = format!(
            "keepalived: {kind} {name} {state}{}",
            priority
                .map(|p| format!(" (priority {p})"))
                .unwrap_or_default()
        );
        if !self.groups[gi].healthy() && state == "MASTER" {
            return Response::error(format!(
                "group {} is faulty ({}); not taking over",
                self.groups[gi].cfg.name,
                self.health_detail(gi)
            ));
        }
        let res = match state {
            "MASTER" => self.activate(gi, &reason),
            "BACKUP" | "STOP" => {
                let fwd = self.groups[gi].cfg.forward_to;
                self.deactivate(gi, State::Standby, fwd, &reason)
            }
            "FAULT" => self.deactivate(gi, State::Fault, None, &reason),
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

    fn entry(
        &self,
        g: &GroupRuntime,
        v: &VipRuntime,
        act: u32,
        forward_to: Option<Mac>,
    ) -> VipEntry {
        let mut e = VipEntry {
            action: act,
            flags: if g.leased() { flags::LEASED } else { 0 },
            stats_index: v.slot,
            group_index: g.index,
            own_mac: self.iface.mac.0,
            src_mac: self.iface.mac.0,
            ..Default::default()
        };
        match act {
            action::REDIRECT => {
                if let Some(r) = g.redirect {
                    e.ifindex = r.ifindex;
                    e.src_mac = r.src_mac.0;
                    e.dst_mac = r.dst_mac.0;
                }
            }
            action::FORWARD => e.dst_mac = forward_to.unwrap_or_default().0,
            _ => {}
        }
        e
    }

    fn set_state(&mut self, gi: usize, state: State, reason: &str) {
        let g = &mut self.groups[gi];
        if g.state != state {
            g.transitions += 1;
            g.since = SystemTime::now();
            *g.transition_reasons
                .entry(format!("{}/{}", state.as_str(), reason_kind(reason)))
                .or_default() += 1;
            let vips: Vec<String> = g.vips.iter().map(|v| v.vip.to_string()).collect();
            log::info!(
                "group {}: {} -> {} ({reason}); VIPs {}",
                g.cfg.name,
                g.state.as_str(),
                state.as_str(),
                vips.join(", ")
            );
        }
        g.state = state;
        g.reason = reason.to_string();
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
            .map(|v| (v.vip.addr, self.entry(g, v, act, mac)))
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

    /// A VIP address of an active group was removed (the kernel flushes IPv6
    /// addresses with the link, or an operator deleted it): add it back, so the data
    /// plane never answers for a VIP the kernel would not accept.
    fn address_removed(&mut self, addr: IpAddr) {
        let Some(gi) = self.groups.iter().position(|g| {
            g.state == State::Active
                && g.redirect.is_none()
                && g.vips.iter().any(|v| v.vip.addr == addr)
        }) else {
            return;
        };
        log::warn!(
            "group {}: VIP {addr} was removed from {}; adding it back",
            self.groups[gi].cfg.name,
            self.iface.name
        );
        if let Err(e) = self
            .nl
            .add_address(self.iface.index, addr, host_prefix(addr))
        {
            log::error!("group {}: re-adding {addr}: {e}", self.groups[gi].cfg.name);
        }
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
        for g in self
            .groups
            .iter()
            .filter(|g| g.state == State::Active && g.redirect.is_none())
        {
            for v in &g.vips {
                if let Err(e) =
                    self.nl
                        .add_address(self.iface.index, v.vip.addr, host_prefix(v.vip.addr))
                {
                    log::error!("group {}: restoring {}: {e}", g.cfg.name, v.vip.addr);
                }
            }
        }
    }

    /// For a redirected IPv6 VIP no address is added, so nothing joins its
    /// solicited-node group: join it, or NICs that filter multicast and switches that
    /// snoop MLD never deliver the solicitations for it.
    fn join_solicited_nodes(&mut self, gi: usize, join: bool) {
        let addrs: Vec<std::net::Ipv6Addr> = self.groups[gi]
            .vips
            .iter()
            .filter_map(|v| match v.vip.addr {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            })
            .collect();
        if addrs.is_empty() || self.groups[gi].redirect.is_none() {
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
    pub fn activate(&mut self, gi: usize, reason: &str) -> Result<()> {
        let g = &self.groups[gi];
        if g.leased() {
            let lease = self.lease_of(gi);
            self.dp
                .set_lease(g.index, host::monotonic_ns() + lease.as_nanos() as u64)?;
        }
        let act = if g.redirect.is_some() {
            action::REDIRECT
        } else {
            action::LOCAL
        };
        let entries: Vec<(IpAddr, VipEntry)> = g
            .vips
            .iter()
            .map(|v| (v.vip.addr, self.entry(g, v, act, None)))
            .collect();
        self.dp
            .set_vips_batch(&entries)
            .with_context(|| format!("group {}: programming its VIPs", g.cfg.name))?;
        if act == action::LOCAL {
            for v in &g.vips {
                if let Err(e) =
                    self.nl
                        .add_address(self.iface.index, v.vip.addr, host_prefix(v.vip.addr))
                {
                    log::error!(
                        "group {}: adding {} to {}: {e}",
                        g.cfg.name,
                        v.vip.addr,
                        self.iface.name
                    );
                }
            }
        }
        self.join_solicited_nodes(gi, true);
        self.groups[gi].forward_to = None;
        self.groups[gi].drain_until = None;
        self.set_state(gi, State::Active, reason);
        self.announce(gi);
        Ok(())
    }

    /// A step-down decided by the election: towards a known successor, forward for
    /// the drain period (and as long as it keeps advertising), else inert.
    fn step_down(&mut self, gi: usize, forward_to: Option<Mac>, reason: &str) -> Result<()> {
        self.deactivate(gi, State::Standby, forward_to, reason)
    }

    /// Gives the group's VIPs up: stop answering (or forward to `forward_to`), then
    /// remove the addresses.
    pub fn deactivate(
        &mut self,
        gi: usize,
        state: State,
        forward_to: Option<Mac>,
        reason: &str,
    ) -> Result<()> {
        if let Some(h) = self.groups[gi].announcer.take() {
            h.abort();
        }
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
        let g = &self.groups[gi];
        for v in &g.vips {
            if let Err(e) =
                self.nl
                    .del_address(self.iface.index, v.vip.addr, host_prefix(v.vip.addr))
            {
                log::error!(
                    "group {}: removing {} from {}: {e}",
                    g.cfg.name,
                    v.vip.addr,
                    self.iface.name
                );
            }
        }
        // Static groups forward only for the drain period after giving the VIP up,
        // unless the config asks for it permanently.
        if was_active && forward_to.is_some() && g.election.is_none() && g.cfg.forward_to.is_none()
        {
            self.groups[gi].drain_until = Some(Instant::now() + g.cfg.drain);
        }
        self.set_state(gi, state, reason);
        Ok(())
    }

    /// Starts (or restarts) the group's gratuitous ARP / unsolicited NA burst, and the
    /// periodic refresh if configured.
    fn announce(&mut self, gi: usize) {
        let g = &mut self.groups[gi];
        if let Some(h) = g.announcer.take() {
            h.abort();
        }
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

    fn health_detail(&self, gi: usize) -> String {
        let g = &self.groups[gi];
        let parts: Vec<String> = g
            .checks
            .iter()
            .map(|(n, t, d)| {
                let s = match t.state() {
                    Some(true) => "ok",
                    Some(false) => "failing",
                    None => "pending",
                };
                if d.is_empty() {
                    format!("{n} {s}")
                } else {
                    format!("{n} {s} ({d})")
                }
            })
            .collect();
        parts.join("; ")
    }

    pub fn status(&self) -> Status {
        let now_mono = host::monotonic_ns();
        let groups = self
            .groups
            .iter()
            .enumerate()
            .map(|(gi, g)| GroupStatus {
                name: g.cfg.name.clone(),
                role: if g.state == State::Active {
                    "active"
                } else {
                    "standby"
                }
                .into(),
                state: g.state.as_str().into(),
                reason: g.reason.clone(),
                since_unix_ms: g
                    .since
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                transitions: g.transitions,
                transition_reasons: g.transition_reasons.clone(),
                mode: if g.election.is_some() {
                    "elected"
                } else if g.cfg.keepalived_instance.is_some() {
                    "keepalived"
                } else {
                    "static"
                }
                .into(),
                forward_to: g
                    .forward_to
                    .filter(|_| g.state != State::Active)
                    .map(|m| m.to_string()),
                healthy: g.healthy(),
                health: self.health_detail(gi),
                election: g.election.as_ref().map(|e| ElectionStatus {
                    priority: e.params().priority,
                    effective_priority: e.effective_priority(),
                    pinned: match e.pin() {
                        Pin::None => None,
                        Pin::Active => Some("active".into()),
                        Pin::Standby => Some("standby".into()),
                    },
                    advert_interval_ms: e.params().interval.as_millis() as u64,
                    current_active: if g.state == State::Active {
                        Some(ActivePeer {
                            address: e.params().me.to_string(),
                            mac: self.iface.mac.to_string(),
                            priority: e.effective_priority(),
                            this_node: true,
                        })
                    } else {
                        e.active().map(|a| ActivePeer {
                            address: a.addr.to_string(),
                            mac: a.mac.to_string(),
                            priority: a.priority,
                            this_node: false,
                        })
                    },
                    adverts_sent: e.counters.adverts_sent,
                    adverts_received: e.counters.adverts_received,
                    split_brains: e.counters.split_brains,
                    auth_failures: g.errors.auth_failures,
                    replays: g.errors.replays,
                    malformed: g.errors.malformed,
                    unknown_peers: g.errors.unknown_peers,
                    lease_remaining_ms: g
                        .lease_deadline
                        .map(|d| d.saturating_sub(now_mono) / 1_000_000),
                }),
                vips: g
                    .vips
                    .iter()
                    .map(|v| {
                        let s = self.dp.stats(v.slot).unwrap_or_default();
                        let act = self
                            .dp
                            .vip(v.vip.addr)
                            .map(|e| e.action)
                            .unwrap_or(action::NONE);
                        VipStatus {
                            address: v.vip.addr.to_string(),
                            prefix: v.vip.prefix,
                            action: action::name(act).into(),
                            rx_packets: s.rx_packets,
                            rx_bytes: s.rx_bytes,
                            arp_replies: s.arp_replies,
                            nd_replies: s.nd_replies,
                            passed: s.passed,
                            redirected: s.redirected,
                            forwarded: s.forwarded,
                            lease_expired: s.lease_expired,
                        }
                    })
                    .collect(),
            })
            .collect();
        let mut global: BTreeMap<String, u64> = self
            .dp
            .global_stats()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("reserved"))
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        global.insert(
            "adverts_for_unknown_groups".into(),
            self.unknown_group_adverts,
        );
        Status {
            node: self.cfg.node.name.clone(),
            interface: self.iface.name.clone(),
            xdp_mode: self.cfg.node.xdp_mode.as_str().into(),
            groups,
            global,
            warnings: self.warnings.clone(),
            eips: self
                .eips
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let st = self.dp.eip_stats(i as u32).unwrap_or_default();
                    let owner = self.dp.owner(e.cfg.vip);
                    crate::status::EipStatus {
                        address: e.cfg.address.to_string(),
                        vip: e.cfg.vip.to_string(),
                        external_interface: e.cfg.external_interface.clone(),
                        internal_interface: e.cfg.internal_interface.clone(),
                        owner: owner.map(|o| Mac(o.mac).to_string()),
                        owner_age_ms: owner
                            .map(|o| now_mono.saturating_sub(o.updated_ns) / 1_000_000),
                        in_packets: st.in_packets,
                        in_bytes: st.in_bytes,
                        out_packets: st.out_packets,
                        out_bytes: st.out_bytes,
                        to_kernel: st.to_kernel,
                        owner_changes: st.owner_changes,
                        arp_replies: st.arp_replies,
                    }
                })
                .collect(),
        }
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

    /// Removes every entry and address this agent added; the data plane detaches when
    /// the agent is dropped.
    /// Programs the elastic IPs: the same program attached to their external (and
    /// internal, if not ours already) interfaces, entries in both directions.
    fn setup_eips(&mut self, warnings: &mut Vec<String>) -> Result<()> {
        if self.cfg.eips.is_empty() {
            return Ok(());
        }
        let mut attached: BTreeSet<String> = [self.iface.name.clone()].into();
        for (i, e) in self.cfg.eips.clone().iter().enumerate() {
            let key = format!("eip[{i}]");
            let ext = host::interface(&e.external_interface)
                .with_context(|| format!("{key}.external_interface"))?;
            let int = host::interface(&e.internal_interface)
                .with_context(|| format!("{key}.internal_interface"))?;
            for ifc in [&ext, &int] {
                if attached.insert(ifc.name.clone()) {
                    self.dp
                        .attach_extra(&ifc.name, self.cfg.node.xdp_mode)
                        .with_context(|| format!("{key}: attaching to {}", ifc.name))?;
                    log::info!("XDP attached to {} for elastic IPs", ifc.name);
                    warnings.extend(interface_warnings(ifc));
                }
                self.dp.add_redirect_target(ifc.index)?;
            }
            let entry = vip_common::EipEntry {
                eip: e.address.octets(),
                vip: e.vip.octets(),
                ext_ifindex: ext.index,
                int_ifindex: int.index,
                ext_mac: ext.mac.0,
                int_mac: int.mac.0,
                stats_index: i as u32,
            };
            if !self.dp.adopted() {
                self.dp.reset_eip_stats(i as u32)?;
            }
            self.dp.set_eip(&entry)?;
            log::info!(
                "elastic IP {} <-> VIP {} ({} / {})",
                e.address,
                e.vip,
                ext.name,
                int.name
            );
            self.eips.push(EipRuntime {
                cfg: e.clone(),
                entry,
            });
        }
        if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0") {
            let w = "net.ipv4.ip_forward is 0: elastic-IP packets whose next hop is not known yet are handed to \
                     the kernel to route, which then drops them; set it to 1 on a gateway"
                .to_string();
            log::warn!("{w}");
            warnings.push(w);
        }
        Ok(())
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
            if let Some(h) = self.groups[gi].announcer.take() {
                h.abort();
            }
            let g = &self.groups[gi];
            for v in &g.vips {
                if let Err(e) = self.dp.remove_vip(v.vip.addr) {
                    log::warn!(
                        "group {}: removing map entry {}: {e}",
                        g.cfg.name,
                        v.vip.addr
                    );
                }
                if let Err(e) =
                    self.nl
                        .del_address(self.iface.index, v.vip.addr, host_prefix(v.vip.addr))
                {
                    log::warn!("group {}: removing {}: {e}", g.cfg.name, v.vip.addr);
                }
            }
        }
    }
}

/// One rise/fall tracker per configured health check, none reported yet.
fn trackers(track: &config::Track) -> Vec<(&'static str, Tracker, String)> {
    let mut checks = Vec::new();
    if track.interface {
        checks.push(("track_interface", Tracker::new(1, 1), String::new()));
    }
    if let Some(c) = &track.script {
        checks.push(("track_script", Tracker::new(c.rise, c.fall), String::new()));
    }
    if let Some(c) = &track.tcp {
        checks.push(("track_tcp", Tracker::new(c.rise, c.fall), String::new()));
    }
    checks
}

/// A short, stable label for a transition's reason (for metrics).
fn reason_kind(reason: &str) -> &'static str {
    const KINDS: [(&str, &str); 16] = [
        ("no advertisement", "peer_silent"),
        ("preempting", "preempt"),
        ("yielding", "yield"),
        ("split brain", "split_brain"),
        ("handed over", "handover"),
        ("promoted", "promote"),
        ("demoted", "demote"),
        ("recovered", "recover"),
        ("healthy again", "recover"),
        ("track_", "health"),
        ("keepalived", "keepalived"),
        ("adopted", "adopted"),
        ("configured", "configured"),
        ("electing", "start"),
        ("waiting", "start"),
        ("starting", "start"),
    ];
    KINDS
        .iter()
        .find(|(p, _)| reason.contains(p))
        .map(|(_, k)| *k)
        .unwrap_or("other")
}

/// IPv4-mapped IPv6 sources (from a dual-stack socket) as plain IPv4.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    }
}

/// The address we speak for ourselves in adverts: the first subnet address of the
/// interface in that family (not a VIP-shaped /32 or /128, not link-local).
fn primary_address(iface: &Interface, v4: bool) -> Option<IpAddr> {
    iface
        .addrs
        .iter()
        .find(|(a, p)| {
            a.is_ipv4() == v4
                && match a {
                    IpAddr::V4(x) => *p < 32 && !x.is_link_local(),
                    IpAddr::V6(x) => *p < 128 && !x.is_unicast_link_local(),
                }
        })
        .map(|(a, _)| *a)
}

/// Binds the election's sockets on our primary addresses (so adverts leave from them).
async fn bind_advert_sockets(cfg: &Config, iface: &Interface) -> Result<AdvertSockets> {
    let port = cfg.node.advert_port;
    let mut out = AdvertSockets { v4: None, v6: None };
    for v4 in [true, false] {
        let needed = cfg
            .groups
            .iter()
            .filter_map(|g| g.election.as_ref())
            .any(|e| e.peers.iter().any(|p| p.is_ipv4() == v4));
        if !needed {
            continue;
        }
        let Some(me) = primary_address(iface, v4) else {
            bail!(
                "interface {} has no {} address to send advertisements from",
                iface.name,
                if v4 { "IPv4" } else { "IPv6" }
            );
        };
        let sock = UdpSocket::bind(SocketAddr::new(me, port))
            .await
            .with_context(|| {
                format!("binding the advertisement socket {me}:{port} (node.advert_port)")
            })?;
        if v4 {
            out.v4 = Some(Arc::new(sock));
        } else {
            out.v6 = Some(Arc::new(sock));
        }
    }
    Ok(out)
}

/// Warnings about the interface that the operator should hear at start.
fn interface_warnings(iface: &Interface) -> Vec<String> {
    let mut w = Vec::new();
    if iface.kind.as_deref() == Some("veth") {
        w.push(format!(
            "{} is a veth: ARP/NS answers and forwarded frames (XDP_TX) reach its peer only if \
             the peer has NAPI, i.e. an XDP program on it (`vip xdp-pass PEER`); otherwise \
             the kernel drops them silently",
            iface.name
        ));
    }
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

/// The prefix VIP addresses are added with: a host route's, so adding one never
/// creates or changes a subnet route.
fn host_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Resolves a redirect interface: its ifindex, its MAC (our source) and the MAC frames
/// are addressed to (configured, or the veth peer's).
fn redirect_target(
    nl: &Netlink,
    dp: &mut Dataplane,
    group: &str,
    r: &config::Redirect,
    warnings: &mut Vec<String>,
) -> Result<RedirectTarget> {
    let key = format!("group[{group}].redirect_to");
    let iface = host::interface(&r.interface).with_context(|| key.clone())?;
    let dst_mac = match r.mac {
        Some(m) => m,
        None => {
            let link = nl.link(iface.index, None).with_context(|| key.clone())?;
            let peer = match (link.kind.as_deref(), link.link) {
                (Some("veth"), Some(peer)) => {
                    nl.link(peer, link.link_netnsid).ok().and_then(|l| l.mac)
                }
                _ => None,
            };
            peer.with_context(|| {
                format!(
                    "{key}: cannot discover the MAC behind `{}` (not a veth, or its peer is unreachable); set redirect_mac",
                    r.interface
                )
            })?
        }
    };
    dp.add_redirect_target(iface.index)
        .with_context(|| key.clone())?;
    if iface.kind.as_deref() == Some("veth") {
        warnings.push(format!(
            "redirect target {} is a veth: redirected frames reach its peer only if the peer has an XDP program (`vip xdp-pass PEER`)",
            iface.name
        ));
    }
    Ok(RedirectTarget {
        ifindex: iface.index,
        src_mac: iface.mac,
        dst_mac,
    })
}
