//! The agent: owns the data plane and the VIP addresses, moves groups between roles,
//! announces takeovers and answers the control socket.
//!
//! Order of a takeover: the map entries first (the data plane answers ARP/NS from that
//! instant), then the addresses (local sockets accept the VIP), then the gratuitous
//! ARP / unsolicited NA burst. A demotion reverses it: entries first (we stop answering
//! at once), then the addresses.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    task::JoinHandle,
};
use vip_common::{action, VipEntry};

use crate::{
    config::{self, Config, Group, Role, XdpMode},
    control::{self, Envelope, Request, Response},
    dataplane::Dataplane,
    garp::{self, PacketSocket},
    host::{self, Interface},
    mac::Mac,
    netlink::Netlink,
    status::{GroupStatus, Status, VipStatus},
};

/// What the command line may override in the config.
#[derive(Debug, Default, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub xdp_mode: Option<XdpMode>,
    pub interface: Option<String>,
}

/// A group's state, VRRP-style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Init,
    Standby,
    Active,
    Fault,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Init => "init",
            State::Standby => "standby",
            State::Active => "active",
            State::Fault => "fault",
        }
    }
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
}

/// The running agent. Every method runs on the agent's single task.
pub struct Agent {
    cfg: Config,
    iface: Interface,
    dp: Dataplane,
    nl: Netlink,
    socket: Arc<PacketSocket>,
    groups: Vec<GroupRuntime>,
    warnings: Vec<String>,
}

/// Runs the agent until SIGTERM/SIGINT, then removes everything it added.
pub async fn run(opts: Options) -> Result<()> {
    let mut cfg = config::load(&opts.config)?;
    if let Some(m) = opts.xdp_mode {
        cfg.node.xdp_mode = m;
    }
    if let Some(i) = opts.interface {
        cfg.node.interface = i;
    }
    let iface =
        host::interface(&cfg.node.interface).with_context(|| "node.interface".to_string())?;
    let all = host::all_addresses().context("listing host addresses")?;
    let report = config::check_host(&cfg, &|n| host::interface(n).ok(), &all)?;
    for w in &report.warnings {
        log::warn!("{w}");
    }
    let listener = control::bind(&cfg.node.control_socket)?;
    let socket_path = cfg.node.control_socket.clone();
    let mut agent = Agent::start(cfg, iface, report.warnings)?;

    let (tx, mut rx) = mpsc::channel::<Envelope>(64);
    let server = tokio::spawn(control::serve(listener, tx));
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    log::info!("agent ready: control socket {}", socket_path.display());
    loop {
        tokio::select! {
            Some((req, reply)) = rx.recv() => {
                let resp = agent.handle(req);
                let _ = reply.send(resp);
            }
            _ = term.recv() => { log::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { log::info!("SIGINT: shutting down"); break; }
        }
    }
    server.abort();
    agent.shutdown();
    let _ = std::fs::remove_file(&socket_path);
    log::info!("agent stopped; data plane detached, addresses removed");
    Ok(())
}

impl Agent {
    /// Loads and attaches the data plane and puts every group in its configured role.
    pub fn start(cfg: Config, iface: Interface, mut warnings: Vec<String>) -> Result<Self> {
        let mut dp = Dataplane::load(cfg.node.max_vips).context("loading the XDP data plane")?;
        dp.attach(&iface.name, cfg.node.xdp_mode)?;
        log::info!(
            "XDP attached to {} ({} mode)",
            iface.name,
            cfg.node.xdp_mode.as_str()
        );
        if iface.kind.as_deref() == Some("veth") {
            let w = format!(
                "{} is a veth: ARP/NS answers and forwarded frames (XDP_TX) reach its peer only if \
                 the peer has NAPI, i.e. an XDP program on it (`vip xdp-pass PEER`); otherwise \
                 the kernel drops them silently",
                iface.name
            );
            log::warn!("{w}");
            warnings.push(w);
        }
        let nl = Netlink::open().context("opening rtnetlink")?;
        let socket = Arc::new(
            PacketSocket::open(iface.index).context("opening a packet socket for announcements")?,
        );

        let mut groups = Vec::new();
        let mut slot = 0u32;
        for (gi, g) in cfg.groups.iter().enumerate() {
            let redirect = match &g.redirect {
                Some(r) => Some(redirect_target(&nl, &mut dp, &g.name, r, &mut warnings)?),
                None => None,
            };
            let mut vips = Vec::new();
            for v in &g.vips {
                dp.reset_stats(slot)?;
                vips.push(VipRuntime { vip: *v, slot });
                slot += 1;
            }
            groups.push(GroupRuntime {
                cfg: g.clone(),
                index: gi as u32,
                state: State::Init,
                reason: "starting".into(),
                since: SystemTime::now(),
                transitions: 0,
                forward_to: g.forward_to,
                redirect,
                vips,
                announcer: None,
            });
        }
        let mut agent = Agent {
            cfg,
            iface,
            dp,
            nl,
            socket,
            groups,
            warnings,
        };
        for gi in 0..agent.groups.len() {
            let g = &agent.groups[gi];
            match g.cfg.role {
                Role::Active => agent.activate(gi, "configured role: active")?,
                Role::Standby => {
                    let fwd = g.forward_to;
                    agent.deactivate(gi, State::Standby, fwd, "configured role: standby")?
                }
            }
        }
        Ok(agent)
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

    /// Answers one control request.
    pub fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status => Response {
                ok: true,
                status: Some(Box::new(self.status())),
                ..Default::default()
            },
            Request::Promote { group } => {
                let gi = match self.group_index(&group) {
                    Ok(gi) => gi,
                    Err(e) => return Response::error(e),
                };
                match self.activate(gi, "promoted by `vip promote`") {
                    Ok(()) => Response::ok(format!("group {group} is active")),
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
            Request::Demote { group, forward_to } => {
                let gi = match self.group_index(&group) {
                    Ok(gi) => gi,
                    Err(e) => return Response::error(e),
                };
                if let Some(m) = forward_to {
                    if !m.is_unicast() {
                        return Response::error(format!("forward_to {m} is not a unicast MAC"));
                    }
                }
                let fwd = forward_to.or(self.groups[gi].cfg.forward_to);
                match self.deactivate(gi, State::Standby, fwd, "demoted by `vip demote`") {
                    Ok(()) => Response::ok(match fwd {
                        Some(m) => format!("group {group} is standby, forwarding to {m}"),
                        None => format!("group {group} is standby"),
                    }),
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
        }
    }

    fn entry(&self, g: &GroupRuntime, v: &VipRuntime, act: u32) -> VipEntry {
        let mut e = VipEntry {
            action: act,
            flags: 0,
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
            action::FORWARD => e.dst_mac = g.forward_to.unwrap_or_default().0,
            _ => {}
        }
        e
    }

    fn set_state(&mut self, gi: usize, state: State, reason: &str) {
        let g = &mut self.groups[gi];
        if g.state != state {
            g.transitions += 1;
            g.since = SystemTime::now();
        }
        let vips: Vec<String> = g.vips.iter().map(|v| v.vip.to_string()).collect();
        log::info!(
            "group {}: {} -> {} ({reason}); VIPs {}",
            g.cfg.name,
            g.state.as_str(),
            state.as_str(),
            vips.join(", ")
        );
        g.state = state;
        g.reason = reason.to_string();
    }

    /// Takes the group's VIPs: entries, then addresses, then the announcement burst.
    pub fn activate(&mut self, gi: usize, reason: &str) -> Result<()> {
        let g = &self.groups[gi];
        let act = if g.redirect.is_some() {
            action::REDIRECT
        } else {
            action::LOCAL
        };
        let entries: Vec<(IpAddr, VipEntry)> = g
            .vips
            .iter()
            .map(|v| (v.vip.addr, self.entry(g, v, act)))
            .collect();
        for (addr, e) in &entries {
            self.dp
                .set_vip(*addr, e)
                .with_context(|| format!("group {}: programming VIP {addr}", g.cfg.name))?;
        }
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
        self.set_state(gi, State::Active, reason);
        self.announce(gi);
        Ok(())
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
        self.groups[gi].forward_to = forward_to;
        let g = &self.groups[gi];
        let act = if forward_to.is_some() {
            action::FORWARD
        } else {
            action::NONE
        };
        let entries: Vec<(IpAddr, VipEntry)> = g
            .vips
            .iter()
            .map(|v| (v.vip.addr, self.entry(g, v, act)))
            .collect();
        for (addr, e) in &entries {
            self.dp
                .set_vip(*addr, e)
                .with_context(|| format!("group {}: programming VIP {addr}", g.cfg.name))?;
        }
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
        self.set_state(gi, state, reason);
        Ok(())
    }

    /// Starts (or restarts) the group's gratuitous ARP / unsolicited NA burst.
    fn announce(&mut self, gi: usize) {
        let g = &mut self.groups[gi];
        if let Some(h) = g.announcer.take() {
            h.abort();
        }
        let addrs = g.vips.iter().map(|v| v.vip.addr).collect();
        g.announcer = Some(tokio::spawn(garp::burst(
            self.socket.clone(),
            self.iface.mac,
            addrs,
            g.cfg.garp,
            g.cfg.name.clone(),
        )));
    }

    pub fn status(&self) -> Status {
        let groups = self
            .groups
            .iter()
            .map(|g| GroupStatus {
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
                forward_to: g
                    .forward_to
                    .filter(|_| g.state != State::Active)
                    .map(|m| m.to_string()),
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
        let global: BTreeMap<String, u64> = self
            .dp
            .global_stats()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("reserved"))
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        Status {
            node: self.cfg.node.name.clone(),
            interface: self.iface.name.clone(),
            xdp_mode: self.cfg.node.xdp_mode.as_str().into(),
            groups,
            global,
            warnings: self.warnings.clone(),
        }
    }

    /// Removes every entry and address this agent added; the data plane detaches when
    /// the agent is dropped.
    pub fn shutdown(&mut self) {
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
                format!("{key}: cannot discover the MAC behind `{}` (not a veth, or its peer is unreachable); set redirect_mac", r.interface)
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
