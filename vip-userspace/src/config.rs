//! The agent's TOML configuration: parsing, and validation with errors that name the
//! key at fault. Validation is in two steps: `parse` checks everything that needs no
//! host (syntax, types, ranges, duplicates); `check_host` checks the config against the
//! interfaces of this host (the VIP's subnet must be on-link, it must not be a real
//! address of the host, named interfaces must exist).

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{host::Interface, mac::Mac};

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/vip/vip.sock";
/// Above this many VIPs on one node the configuration is accepted with a warning.
pub const RECOMMENDED_MAX_VIPS: usize = 10;
pub const DEFAULT_GARP_COUNT: u32 = 3;
pub const DEFAULT_GARP_INTERVAL_MS: u64 = 50;
pub const MAX_VIPS_LIMIT: u32 = 1 << 20;
pub const DEFAULT_ADVERT_PORT: u16 = 4112;
pub const DEFAULT_ADVERT_INTERVAL_MS: u64 = 100;
pub const MIN_ADVERT_INTERVAL_MS: u64 = 10;
pub const DEFAULT_DRAIN_MS: u64 = 1000;
/// The standby's probe of the active's data plane (see `crate::echo`): every 2 ms,
/// and 6 unanswered in a row mean the active is gone (12 ms). At 2 % loss each way a
/// run of 6 misses happens once in about 4 * 10^8 probes: once in 9 days.
pub const DEFAULT_ECHO_INTERVAL_MS: u64 = 2;
pub const DEFAULT_ECHO_MISSES: u32 = 6;
/// Fewer misses than this and random loss alone causes false takeovers.
pub const MIN_ECHO_MISSES: u32 = 3;
/// Shortest accepted shared secret.
pub const MIN_KEY_LEN: usize = 16;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: Node,
    pub groups: Vec<Group>,
    /// Elastic IPs this node translates as a gateway.
    pub eips: Vec<Eip>,
}

/// A public IPv4 address mapped 1:1 onto a VIP by this node (a gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eip {
    pub address: std::net::Ipv4Addr,
    pub vip: std::net::Ipv4Addr,
    pub external_interface: String,
    pub internal_interface: String,
    /// The MACs of the VIP's nodes: the only senders whose ARP can make one of them
    /// the VIP's owner. None (the key absent): any sender can, as before the key
    /// existed; one forged ARP then takes the EIP's traffic (see [`eip_warnings`]).
    pub nodes: Option<Vec<Mac>>,
}

impl Eip {
    /// How validation and the agent name this EIP: `eip[203.0.113.10]`.
    pub fn key(&self) -> String {
        format!("eip[{}]", self.address)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub interface: String,
    pub control_socket: PathBuf,
    pub xdp_mode: XdpMode,
    pub max_vips: u32,
    pub garp: Garp,
    /// UDP port the election's advertisements use.
    pub advert_port: u16,
    /// Where the data plane is pinned so it outlives the agent (hitless restart).
    pub pin: Pin,
    /// Members of this group may use the control socket (mode 0660); otherwise 0600.
    pub control_group: Option<String>,
    /// Prometheus endpoint (`ADDRESS:PORT`), off by default.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// `/sys/fs/bpf/vip/<interface>` when bpffs is mounted there, else unpinned.
    Default(PathBuf),
    /// Configured: must be on a bpf filesystem.
    Dir(PathBuf),
    Off,
}

impl Pin {
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Pin::Default(p) | Pin::Dir(p) => Some(p),
            Pin::Off => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// The default: native where the frames the program sends are really delivered,
    /// generic elsewhere; the agent decides at start (see [`crate::xdpmode`]).
    Auto,
    /// Driver mode: the program runs in the NIC driver before any skb exists.
    Native,
    /// Generic mode: works on any interface, at kernel-stack speed.
    Skb,
}

impl XdpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
        }
    }
}

impl std::str::FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" | "driver" | "drv" => Ok(XdpMode::Native),
            "skb" | "generic" => Ok(XdpMode::Skb),
            _ => Err(format!(
                "`{s}` is not an XDP mode (expected \"auto\", \"native\" or \"skb\")"
            )),
        }
    }
}

/// Gratuitous ARP / unsolicited NA burst sent on takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garp {
    pub count: u32,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub vips: Vec<Vip>,
    pub role: Role,
    pub redirect: Option<Redirect>,
    /// While standby, hand VIP traffic that still reaches us to this MAC.
    pub forward_to: Option<Mac>,
    pub garp: Garp,
    /// Present when the group is elected among `peers`; `role` is then only the start.
    pub election: Option<Election>,
    /// keepalived decides: its notify events for this VRRP instance drive the group.
    pub keepalived_instance: Option<String>,
    /// Health checks; a failing one moves the group to `fault` (gives the VIPs up).
    pub track: Track,
    /// Re-send the announcements this often while active (None: only on takeover).
    pub garp_refresh: Option<Duration>,
    /// After a planned handover, forward stale-cache traffic to the new active this long.
    pub drain: Duration,
    /// Active/active: the active spreads flows over every healthy node of the group.
    pub balance: Option<Balance>,
}

/// `balance = {}` (all TCP and UDP) or `balance = { ports = ["tcp/443", ...] }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Balance {
    /// (IP protocol, port); empty: every TCP and UDP port.
    pub ports: Vec<(u8, u16)>,
}

impl Balance {
    pub fn port_label((proto, port): (u8, u16)) -> String {
        format!("{}/{port}", if proto == 6 { "tcp" } else { "udp" })
    }
}

/// Built-in election parameters (VRRP-like, unicast).
#[derive(Debug, Clone, PartialEq)]
pub struct Election {
    pub peers: Vec<IpAddr>,
    /// 1..=254; the highest wins, ties by the higher primary address.
    pub priority: u8,
    pub advert_interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub auth_key_file: Option<PathBuf>,
    /// How long the data plane keeps acting on its own if the agent stops renewing.
    pub lease: Duration,
    /// How often a standby probes the active's data plane (zero: no probes, only
    /// advertisement silence detects a failure).
    pub echo_interval: Duration,
    /// Consecutive unanswered probes that mean the active is gone.
    pub echo_misses: u32,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Track {
    /// Fault while `node.interface` is down.
    pub interface: bool,
    pub script: Option<Check>,
    pub tcp: Option<Check>,
}

/// A periodic check: a command (exit 0 is healthy) or a TCP connect.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Argv of the command, or `[address]` for a TCP check.
    pub target: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes to become healthy, failures to become faulty.
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vip {
    pub addr: IpAddr,
    /// The subnet prefix the VIP belongs to (its on-link subnet).
    pub prefix: u8,
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Active,
    Standby,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    pub interface: String,
    /// Destination MAC for redirected frames; discovered from the veth peer if absent.
    pub mac: Option<Mac>,
}

/// One thing wrong with a configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

// ---- the file's shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    group: Vec<RawGroup>,
    #[serde(default)]
    eip: Vec<RawEip>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEip {
    address: String,
    vip: String,
    external_interface: String,
    internal_interface: String,
    nodes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    interface: String,
    control_socket: Option<PathBuf>,
    xdp_mode: Option<String>,
    max_vips: Option<u32>,
    garp_count: Option<u32>,
    garp_interval_ms: Option<u64>,
    advert_port: Option<u16>,
    pin: Option<bool>,
    pin_dir: Option<PathBuf>,
    control_group: Option<String>,
    metrics_listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBalance {
    ports: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    command: Option<Vec<String>>,
    address: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    rise: Option<u32>,
    fall: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    vips: Vec<String>,
    role: Option<String>,
    redirect_to: Option<String>,
    redirect_mac: Option<String>,
    forward_to: Option<String>,
    garp_count: Option<u32>,
    garp_interval_ms: Option<u64>,
    garp_refresh_ms: Option<u64>,
    drain_ms: Option<u64>,
    peers: Option<Vec<String>>,
    priority: Option<i64>,
    advert_interval_ms: Option<u64>,
    preempt: Option<bool>,
    preempt_delay_ms: Option<u64>,
    auth_key_file: Option<PathBuf>,
    lease_ms: Option<u64>,
    echo_interval_ms: Option<u64>,
    echo_misses: Option<u32>,
    balance: Option<RawBalance>,
    keepalived_instance: Option<String>,
    track_interface: Option<bool>,
    track_script: Option<RawCheck>,
    track_tcp: Option<RawCheck>,
}

/// Reads and validates (without host checks) a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

/// Parses and validates everything that does not depend on the host.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    let mut problems = Vec::new();
    let mut p = |key: String, message: String| problems.push(Problem { key, message });

    if raw.node.name.trim().is_empty() {
        p("node.name".into(), "must not be empty".into());
    }
    if raw.node.interface.trim().is_empty() {
        p("node.interface".into(), "must not be empty".into());
    }
    let xdp_mode = match raw.node.xdp_mode.as_deref().map(str::parse::<XdpMode>) {
        None => XdpMode::Auto,
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            p("node.xdp_mode".into(), e);
            XdpMode::Auto
        }
    };
    let node_garp = garp(
        "node",
        raw.node.garp_count,
        raw.node.garp_interval_ms,
        Garp {
            count: DEFAULT_GARP_COUNT,
            interval: Duration::from_millis(DEFAULT_GARP_INTERVAL_MS),
        },
        &mut p,
    );

    let mut groups = Vec::new();
    let mut seen_groups: HashMap<String, usize> = HashMap::new();
    let mut seen_vips: HashMap<IpAddr, String> = HashMap::new();
    let mut balanced_ports: Vec<((u8, u16), String)> = Vec::new();
    for (gi, g) in raw.group.iter().enumerate() {
        let gkey = format!(
            "group[{}]",
            if g.name.is_empty() {
                gi.to_string()
            } else {
                g.name.clone()
            }
        );
        if g.name.trim().is_empty() {
            p(format!("{gkey}.name"), "must not be empty".into());
        } else if let Some(prev) = seen_groups.insert(g.name.clone(), gi) {
            p(
                format!("{gkey}.name"),
                format!(
                    "group name `{}` is used twice (groups {prev} and {gi})",
                    g.name
                ),
            );
        }
        if g.vips.is_empty() {
            p(format!("{gkey}.vips"), "must list at least one VIP".into());
        }
        let mut vips = Vec::new();
        for (vi, s) in g.vips.iter().enumerate() {
            let key = format!("{gkey}.vips[{vi}]");
            match parse_vip(s) {
                Ok(v) => {
                    if let Some(other) = seen_vips.insert(v.addr, g.name.clone()) {
                        let where_ = if other == g.name {
                            "twice in this group".to_string()
                        } else {
                            format!("also in group `{other}`")
                        };
                        p(
                            key,
                            format!(
                                "VIP {} is listed {where_}; a VIP belongs to exactly one group",
                                v.addr
                            ),
                        );
                    } else {
                        vips.push(v);
                    }
                }
                Err(e) => p(key, format!("`{s}`: {e}")),
            }
        }
        let elected = g.peers.is_some();
        let driven = g.keepalived_instance.is_some();
        let role = match g.role.as_deref() {
            Some(_) if elected || driven => {
                let by = if elected {
                    "the election (peers)"
                } else {
                    "keepalived"
                };
                p(
                    format!("{gkey}.role"),
                    format!("is for static groups; this group's role comes from {by}"),
                );
                Role::Standby
            }
            Some("active") => Role::Active,
            Some("standby") => Role::Standby,
            Some(other) => {
                p(
                    format!("{gkey}.role"),
                    format!("`{other}` is not a role (expected \"active\" or \"standby\")"),
                );
                Role::Standby
            }
            None if elected || driven => Role::Standby,
            None => {
                p(
                    format!("{gkey}.role"),
                    "is required (\"active\" or \"standby\"), or give `peers` to elect it".into(),
                );
                Role::Standby
            }
        };
        if elected && driven {
            p(
                format!("{gkey}.keepalived_instance"),
                "a group is either elected by vip (peers) or driven by keepalived, not both".into(),
            );
        }
        let election = election(&gkey, g, &mut p);
        if !elected {
            for (set, key) in [
                (g.priority.is_some(), "priority"),
                (g.advert_interval_ms.is_some(), "advert_interval_ms"),
                (g.preempt.is_some(), "preempt"),
                (g.preempt_delay_ms.is_some(), "preempt_delay_ms"),
                (g.auth_key_file.is_some(), "auth_key_file"),
                (g.lease_ms.is_some(), "lease_ms"),
                (g.echo_interval_ms.is_some(), "echo_interval_ms"),
                (g.echo_misses.is_some(), "echo_misses"),
            ] {
                if set {
                    p(
                        format!("{gkey}.{key}"),
                        "only applies to elected groups (with `peers`)".into(),
                    );
                }
            }
        }
        if let Some(i) = &g.keepalived_instance {
            if i.trim().is_empty() {
                p(
                    format!("{gkey}.keepalived_instance"),
                    "must not be empty".into(),
                );
            }
        }
        let track = Track {
            interface: g.track_interface.unwrap_or(elected),
            script: check(&gkey, "track_script", g.track_script.as_ref(), true, &mut p),
            tcp: check(&gkey, "track_tcp", g.track_tcp.as_ref(), false, &mut p),
        };
        let garp_refresh = match g.garp_refresh_ms {
            None | Some(0) => None,
            Some(ms) if ms < 100 => {
                p(
                    format!("{gkey}.garp_refresh_ms"),
                    format!("{ms} is below 100 ms"),
                );
                None
            }
            Some(ms) => Some(Duration::from_millis(ms)),
        };
        let drain = Duration::from_millis(g.drain_ms.unwrap_or(DEFAULT_DRAIN_MS));
        if drain > Duration::from_secs(60) {
            p(format!("{gkey}.drain_ms"), "is above 60000".into());
        }
        let redirect_mac = parse_mac_key(&gkey, "redirect_mac", g.redirect_mac.as_deref(), &mut p);
        let redirect = match (&g.redirect_to, redirect_mac) {
            (Some(i), mac) if !i.trim().is_empty() => Some(Redirect {
                interface: i.clone(),
                mac,
            }),
            (Some(_), _) => {
                p(format!("{gkey}.redirect_to"), "must not be empty".into());
                None
            }
            (None, Some(_)) => {
                p(format!("{gkey}.redirect_mac"), "needs redirect_to".into());
                None
            }
            (None, None) => None,
        };
        let forward_to = parse_mac_key(&gkey, "forward_to", g.forward_to.as_deref(), &mut p);
        let garp = garp(&gkey, g.garp_count, g.garp_interval_ms, node_garp, &mut p);
        let balance = balance(&gkey, g, elected, &mut balanced_ports, &mut p);
        groups.push(Group {
            name: g.name.clone(),
            vips,
            role,
            redirect,
            forward_to,
            garp,
            election,
            keepalived_instance: g.keepalived_instance.clone(),
            track,
            garp_refresh,
            drain,
            balance,
        });
    }
    let balanced = groups.iter().filter(|g| g.balance.is_some()).count();
    if balanced > vip_common::balance_maps::MAX_BALANCED_GROUPS as usize {
        p(
            "group".into(),
            format!(
                "{balanced} groups have `balance`; a node balances at most {}",
                vip_common::balance_maps::MAX_BALANCED_GROUPS
            ),
        );
    }

    let pin = match (raw.node.pin, &raw.node.pin_dir) {
        (Some(false), Some(_)) => {
            p("node.pin_dir".into(), "is set but node.pin = false".into());
            Pin::Off
        }
        (Some(false), None) => Pin::Off,
        (_, Some(d)) if !d.is_absolute() => {
            p(
                "node.pin_dir".into(),
                format!("{} is not an absolute path", d.display()),
            );
            Pin::Off
        }
        (_, Some(d)) => Pin::Dir(d.clone()),
        (_, None) => Pin::Default(Path::new("/sys/fs/bpf/vip").join(&raw.node.interface)),
    };
    let metrics_listen = match raw.node.metrics_listen.as_deref() {
        None | Some("") => None,
        Some(a) => match a.parse::<std::net::SocketAddr>() {
            Ok(sa) => Some(sa),
            Err(_) => {
                p(
                    "node.metrics_listen".into(),
                    format!("`{a}` is not ADDRESS:PORT (e.g. \"127.0.0.1:9477\")"),
                );
                None
            }
        },
    };
    if raw
        .node
        .control_group
        .as_deref()
        .is_some_and(|g| g.trim().is_empty())
    {
        p("node.control_group".into(), "must not be empty".into());
    }
    let mut instances: HashMap<&str, &str> = HashMap::new();
    for g in &groups {
        if let Some(i) = &g.keepalived_instance {
            if let Some(other) = instances.insert(i.as_str(), g.name.as_str()) {
                p(
                    format!("group[{}].keepalived_instance", g.name),
                    format!("instance `{i}` already drives group `{other}`"),
                );
            }
        }
    }
    let total: usize = groups.iter().map(|g| g.vips.len()).sum();
    let max_vips = raw.node.max_vips.unwrap_or(vip_common::DEFAULT_MAX_VIPS);
    if max_vips == 0 || max_vips > MAX_VIPS_LIMIT {
        p(
            "node.max_vips".into(),
            format!("{max_vips} is out of range 1..={MAX_VIPS_LIMIT}"),
        );
    } else if (total as u64) > max_vips as u64 {
        p(
            "node.max_vips".into(),
            format!("{total} VIPs are configured but max_vips is {max_vips}"),
        );
    }
    if groups.len() > vip_common::MAX_GROUPS as usize {
        p(
            "group".into(),
            format!(
                "{} groups; at most {} are supported",
                groups.len(),
                vip_common::MAX_GROUPS
            ),
        );
    }

    let eips = eips(&raw.eip, &mut p);

    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    Ok(Config {
        node: Node {
            name: raw.node.name,
            interface: raw.node.interface,
            control_socket: raw
                .node
                .control_socket
                .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            xdp_mode,
            max_vips,
            garp: node_garp,
            advert_port: raw.node.advert_port.unwrap_or(DEFAULT_ADVERT_PORT),
            pin,
            control_group: raw.node.control_group.clone(),
            metrics_listen,
        },
        groups,
        eips,
    })
}

/// Elastic IPs, with the seed's limits: IPv4 only, one EIP per VIP, one VIP per EIP,
/// and an IPv6 VIP cannot bind an elastic IP. Each is named by its address as
/// written (`eip[203.0.113.10]`), as groups are by name.
fn eips(raw: &[RawEip], p: &mut impl FnMut(String, String)) -> Vec<Eip> {
    let mut out: Vec<Eip> = Vec::new();
    for e in raw {
        let key = format!("eip[{}]", e.address.trim());
        let address = match e.address.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(a))
                if !(a.is_unspecified()
                    || a.is_loopback()
                    || a.is_multicast()
                    || a.is_broadcast()) =>
            {
                Some(a)
            }
            Ok(IpAddr::V4(a)) => {
                p(
                    format!("{key}.address"),
                    format!("{a} is not a unicast address"),
                );
                None
            }
            Ok(IpAddr::V6(a)) => {
                p(
                    format!("{key}.address"),
                    format!("{a}: elastic IPs are IPv4 addresses"),
                );
                None
            }
            Err(_) => {
                p(
                    format!("{key}.address"),
                    format!("`{}` is not an IP address", e.address),
                );
                None
            }
        };
        let vip = match e.vip.split('/').next().unwrap_or("").parse::<IpAddr>() {
            Ok(IpAddr::V4(v)) => Some(v),
            Ok(IpAddr::V6(v)) => {
                p(
                    format!("{key}.vip"),
                    format!("{v} is an IPv6 VIP: an IPv6 VIP cannot bind an elastic IP"),
                );
                None
            }
            Err(_) => {
                p(
                    format!("{key}.vip"),
                    format!("`{}` is not an IP address", e.vip),
                );
                None
            }
        };
        for (k, v) in [
            ("external_interface", &e.external_interface),
            ("internal_interface", &e.internal_interface),
        ] {
            if v.trim().is_empty() {
                p(format!("{key}.{k}"), "must not be empty".into());
            }
        }
        if e.external_interface == e.internal_interface {
            p(
                format!("{key}.internal_interface"),
                "must differ from external_interface".into(),
            );
        }
        let nodes = e
            .nodes
            .as_ref()
            .map(|n| eip_nodes(&format!("{key}.nodes"), n, p));
        let (Some(address), Some(vip)) = (address, vip) else {
            continue;
        };
        if out.iter().any(|o| o.address == address) {
            p(
                format!("{key}.address"),
                format!(
                    "{address} is the elastic IP of an earlier [[eip]] too: one VIP per elastic IP"
                ),
            );
            continue;
        }
        if let Some(o) = out.iter().find(|o| o.vip == vip) {
            p(
                format!("{key}.vip"),
                format!(
                    "{vip} is already bound to {}: a VIP binds to at most one elastic IP",
                    o.key()
                ),
            );
            continue;
        }
        out.push(Eip {
            address,
            vip,
            external_interface: e.external_interface.clone(),
            internal_interface: e.internal_interface.clone(),
            nodes,
        });
    }
    if out.len() > vip_common::MAX_EIPS as usize {
        p(
            "eip".into(),
            format!("at most {} elastic IPs", vip_common::MAX_EIPS),
        );
    }
    out
}

/// An `[[eip]]`'s `nodes`: the MACs of the VIP's nodes (each node's `node.interface`),
/// unicast, each once.
fn eip_nodes(key: &str, raw: &[String], p: &mut impl FnMut(String, String)) -> Vec<Mac> {
    if raw.is_empty() {
        p(
            key.into(),
            "must list the MACs of the VIP's nodes (the gateway learns the VIP's owner only \
             from them; an empty list would never learn one)"
                .into(),
        );
    }
    let max = vip_common::MAX_EIP_NODES_PER_EIP as usize;
    if raw.len() > max {
        p(
            key.into(),
            format!("{} nodes; an elastic IP follows at most {max}", raw.len()),
        );
    }
    let mut out: Vec<Mac> = Vec::new();
    for s in raw {
        match s.trim().parse::<Mac>() {
            Err(e) => p(key.into(), e.to_string()),
            Ok(m) if !m.is_unicast() => p(
                key.into(),
                format!("{m} is not a unicast MAC: list each node's interface MAC"),
            ),
            Ok(m) if out.contains(&m) => p(key.into(), format!("{m} is listed twice")),
            Ok(m) => out.push(m),
        }
    }
    out
}

/// The election settings of a group with `peers`.
fn election(gkey: &str, g: &RawGroup, p: &mut impl FnMut(String, String)) -> Option<Election> {
    let peers_raw = g.peers.as_ref()?;
    let mut peers = Vec::new();
    if peers_raw.is_empty() {
        p(
            format!("{gkey}.peers"),
            "must list at least one peer address".into(),
        );
    }
    for (i, s) in peers_raw.iter().enumerate() {
        match s.parse::<IpAddr>() {
            Ok(a) if a.is_unspecified() || a.is_multicast() || a.is_loopback() => p(
                format!("{gkey}.peers[{i}]"),
                format!("{a} is not a unicast peer address"),
            ),
            Ok(a) if peers.contains(&a) => {
                p(format!("{gkey}.peers[{i}]"), format!("{a} is listed twice"))
            }
            Ok(a) => peers.push(a),
            Err(_) => p(
                format!("{gkey}.peers[{i}]"),
                format!("`{s}` is not an IP address"),
            ),
        }
    }
    let priority = match g.priority {
        None => 100,
        Some(v @ 1..=254) => v as u8,
        Some(v) => {
            p(
                format!("{gkey}.priority"),
                format!("{v} is out of range 1..=254"),
            );
            100
        }
    };
    let interval_ms = g.advert_interval_ms.unwrap_or(DEFAULT_ADVERT_INTERVAL_MS);
    if !(MIN_ADVERT_INTERVAL_MS..=60_000).contains(&interval_ms) {
        p(
            format!("{gkey}.advert_interval_ms"),
            format!("{interval_ms} is out of range {MIN_ADVERT_INTERVAL_MS}..=60000"),
        );
    }
    let interval_ms = interval_ms.clamp(MIN_ADVERT_INTERVAL_MS, 60_000);
    // The lease must run out no later than a standby takes over (3 intervals).
    let lease_ms = g.lease_ms.unwrap_or(3 * interval_ms);
    if lease_ms < interval_ms || lease_ms > 3 * interval_ms {
        p(
            format!("{gkey}.lease_ms"),
            format!(
                "{lease_ms} must be between one and three advert intervals ({interval_ms}..={}), so the data plane stops answering before a standby takes over",
                3 * interval_ms
            ),
        );
    }
    let (echo_ms, misses) = echo(gkey, g, interval_ms, p);
    let preempt_delay_ms = g.preempt_delay_ms.unwrap_or(0);
    if preempt_delay_ms > 3_600_000 {
        p(
            format!("{gkey}.preempt_delay_ms"),
            "is above one hour".into(),
        );
    }
    Some(Election {
        peers,
        priority,
        advert_interval: Duration::from_millis(interval_ms),
        preempt: g.preempt.unwrap_or(true),
        preempt_delay: Duration::from_millis(preempt_delay_ms),
        auth_key_file: g.auth_key_file.clone(),
        lease: Duration::from_millis(lease_ms.clamp(interval_ms, 3 * interval_ms)),
        echo_interval: Duration::from_millis(echo_ms),
        echo_misses: misses,
    })
}

/// The echo's timing. Its own rule: it must detect a failure before advertisement
/// silence does (3 intervals), or it is a cost without a use. The lease needs no rule
/// of its own here: the active's data plane answers probes only while its lease runs,
/// so a standby never takes over from a data plane that still answers.
fn echo(
    gkey: &str,
    g: &RawGroup,
    advert_ms: u64,
    p: &mut impl FnMut(String, String),
) -> (u64, u32) {
    let ms = g
        .echo_interval_ms
        .unwrap_or(DEFAULT_ECHO_INTERVAL_MS.min(advert_ms));
    let misses = g.echo_misses.unwrap_or(DEFAULT_ECHO_MISSES);
    if ms > advert_ms {
        p(
            format!("{gkey}.echo_interval_ms"),
            format!("{ms} is above advert_interval_ms ({advert_ms}); probes are meant to be faster than advertisements (0 turns them off)"),
        );
        return (0, DEFAULT_ECHO_MISSES);
    }
    if !(MIN_ECHO_MISSES..=100).contains(&misses) {
        p(
            format!("{gkey}.echo_misses"),
            format!("{misses} is out of range {MIN_ECHO_MISSES}..=100"),
        );
        return (0, DEFAULT_ECHO_MISSES);
    }
    if ms > 0 && ms * misses as u64 >= 3 * advert_ms {
        p(
            format!("{gkey}.echo_interval_ms"),
            format!(
                "echo_interval_ms * echo_misses = {} ms is not below three advert intervals ({} ms, advert_interval_ms = {advert_ms}): advertisement silence would always detect first",
                ms * misses as u64,
                3 * advert_ms
            ),
        );
        return (0, DEFAULT_ECHO_MISSES);
    }
    (ms, misses)
}

/// `balance`: elected groups only; ports as "tcp/N" or "udp/N", each balanced by one
/// group only (`taken` holds the ports of the groups before this one), since a
/// member runs one service per port and the director sends it all of that port.
fn balance(
    gkey: &str,
    g: &RawGroup,
    elected: bool,
    taken: &mut Vec<((u8, u16), String)>,
    p: &mut impl FnMut(String, String),
) -> Option<Balance> {
    let raw = g.balance.as_ref()?;
    if !elected {
        p(
            format!("{gkey}.balance"),
            "only applies to elected groups (with `peers`): the active spreads flows over the nodes it hears".into(),
        );
        return None;
    }
    let peers = g.peers.as_ref().map_or(0, Vec::len);
    if peers + 1 > vip_common::balance_maps::MAX_MEMBERS as usize {
        p(
            format!("{gkey}.balance"),
            format!(
                "{} nodes; a balanced group has at most {}",
                peers + 1,
                vip_common::balance_maps::MAX_MEMBERS
            ),
        );
    }
    let mut ports = Vec::new();
    for (i, spec) in raw.ports.iter().flatten().enumerate() {
        let key = format!("{gkey}.balance.ports[{i}]");
        let parsed = spec.split_once('/').and_then(|(proto, port)| {
            let proto = match proto.trim().to_ascii_lowercase().as_str() {
                "tcp" => 6u8,
                "udp" => 17u8,
                _ => return None,
            };
            port.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .map(|p| (proto, p))
        });
        let Some(pp) = parsed else {
            p(
                key,
                format!("`{spec}` is not PROTOCOL/PORT (\"tcp/443\", \"udp/53\"; port 1..=65535)"),
            );
            continue;
        };
        if ports.contains(&pp) {
            p(key, format!("`{spec}` is listed twice"));
            continue;
        }
        if let Some((_, other)) = taken.iter().find(|(q, _)| *q == pp) {
            p(
                key,
                format!(
                    "`{spec}` is also balanced by group {other}; a port is balanced by one group"
                ),
            );
            continue;
        }
        ports.push(pp);
    }
    if raw.ports.as_ref().is_some_and(Vec::is_empty) {
        p(
            format!("{gkey}.balance.ports"),
            "is empty: leave it out to balance every TCP and UDP port".into(),
        );
    }
    taken.extend(ports.iter().map(|pp| (*pp, g.name.clone())));
    Some(Balance { ports })
}

/// A health check: `track_script` needs `command`, `track_tcp` needs `address`.
fn check(
    gkey: &str,
    name: &str,
    raw: Option<&RawCheck>,
    script: bool,
    p: &mut impl FnMut(String, String),
) -> Option<Check> {
    let r = raw?;
    let key = format!("{gkey}.{name}");
    let target = match (script, &r.command, &r.address) {
        (true, Some(c), None) if !c.is_empty() && !c[0].is_empty() => c.clone(),
        (true, _, _) => {
            p(
                key,
                "needs `command` (a non-empty argv list) and no `address`".into(),
            );
            return None;
        }
        (false, None, Some(a)) => match a.parse::<std::net::SocketAddr>() {
            Ok(_) => vec![a.clone()],
            Err(_) => {
                p(
                    format!("{key}.address"),
                    format!("`{a}` is not ADDRESS:PORT"),
                );
                return None;
            }
        },
        (false, _, _) => {
            p(
                key,
                "needs `address` (ADDRESS:PORT) and no `command`".into(),
            );
            return None;
        }
    };
    let interval = r.interval_ms.unwrap_or(1000);
    let timeout = r.timeout_ms.unwrap_or(interval.min(1000));
    let (rise, fall) = (r.rise.unwrap_or(1), r.fall.unwrap_or(1));
    let mut ok = true;
    if !(10..=3_600_000).contains(&interval) {
        p(
            format!("{key}.interval_ms"),
            format!("{interval} is out of range 10..=3600000"),
        );
        ok = false;
    }
    if timeout == 0 || timeout > interval.max(10) {
        p(
            format!("{key}.timeout_ms"),
            format!("{timeout} must be in 1..=interval_ms"),
        );
        ok = false;
    }
    for (v, n) in [(rise, "rise"), (fall, "fall")] {
        if !(1..=100).contains(&v) {
            p(format!("{key}.{n}"), format!("{v} is out of range 1..=100"));
            ok = false;
        }
    }
    ok.then(|| Check {
        target,
        interval: Duration::from_millis(interval),
        timeout: Duration::from_millis(timeout),
        rise,
        fall,
    })
}

/// Reads the shared secrets of elected groups, by group name.
pub fn load_keys(cfg: &Config) -> Result<HashMap<String, Vec<u8>>, ConfigError> {
    let mut keys = HashMap::new();
    let mut problems = Vec::new();
    for g in &cfg.groups {
        let Some(path) = g.election.as_ref().and_then(|e| e.auth_key_file.as_ref()) else {
            continue;
        };
        let key = format!("group[{}].auth_key_file", g.name);
        match std::fs::read(path) {
            Ok(bytes) => {
                let trimmed = bytes.trim_ascii().to_vec();
                if trimmed.len() < MIN_KEY_LEN {
                    problems.push(Problem {
                        key,
                        message: format!(
                            "{}: the key has {} bytes; at least {MIN_KEY_LEN} are required",
                            path.display(),
                            trimmed.len()
                        ),
                    });
                } else {
                    keys.insert(g.name.clone(), trimmed);
                }
            }
            Err(e) => problems.push(Problem {
                key,
                message: format!("reading {}: {e}", path.display()),
            }),
        }
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn garp(
    key: &str,
    count: Option<u32>,
    interval_ms: Option<u64>,
    default: Garp,
    p: &mut impl FnMut(String, String),
) -> Garp {
    let mut g = default;
    if let Some(c) = count {
        if c > 100 {
            p(
                format!("{key}.garp_count"),
                format!("{c} is out of range 0..=100"),
            );
        } else {
            g.count = c;
        }
    }
    if let Some(ms) = interval_ms {
        if !(1..=60_000).contains(&ms) {
            p(
                format!("{key}.garp_interval_ms"),
                format!("{ms} is out of range 1..=60000"),
            );
        } else {
            g.interval = Duration::from_millis(ms);
        }
    }
    g
}

fn parse_mac_key(
    gkey: &str,
    name: &str,
    v: Option<&str>,
    p: &mut impl FnMut(String, String),
) -> Option<Mac> {
    let s = v?;
    match s.parse::<Mac>() {
        Ok(m) if m.is_unicast() => Some(m),
        Ok(_) => {
            p(
                format!("{gkey}.{name}"),
                format!("`{s}` is not a unicast MAC address"),
            );
            None
        }
        Err(e) => {
            p(format!("{gkey}.{name}"), e.to_string());
            None
        }
    }
}

/// Parses `ADDRESS/PREFIX` and rejects addresses that can never be a VIP.
pub fn parse_vip(s: &str) -> Result<Vip, String> {
    let (a, p) = s
        .split_once('/')
        .ok_or("expected ADDRESS/PREFIX with the VIP's subnet prefix, like 10.0.0.50/24")?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("`{a}` is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or(format!("prefix `{p}` is not in 1..={max}"))?;
    let bad = match addr {
        IpAddr::V4(v4) => {
            if v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_link_local()
            {
                Some("not a unicast address usable as a VIP")
            } else if prefix < 31
                && (addr == network(addr, prefix) || addr == broadcast4(addr, prefix))
            {
                Some("the network or broadcast address of its subnet")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
                || v6.to_ipv4_mapped().is_some()
            {
                Some("not a global or unique-local unicast address usable as a VIP")
            } else if prefix < 127 && addr == network(addr, prefix) {
                // RFC 4291 2.6.1; point-to-point /127s have none (RFC 6164).
                Some("the subnet-router anycast address of its subnet (every router on it answers for it)")
            } else {
                None
            }
        }
    };
    match bad {
        Some(why) => Err(format!("{addr} is {why}")),
        None => Ok(Vip { addr, prefix }),
    }
}

/// The network address of `addr/prefix`.
pub fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix as u32)
            };
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

fn broadcast4(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) | (u32::MAX >> prefix as u32)).into()),
        v6 => v6,
    }
}

/// What `check_host` found that is worth saying but not fatal.
#[derive(Debug, Default)]
pub struct HostReport {
    pub warnings: Vec<String>,
}

/// Checks the configuration against this host's interfaces. `lookup` resolves an
/// interface by name; `all_addrs` lists every address on the host by interface.
pub fn check_host(
    cfg: &Config,
    lookup: &dyn Fn(&str) -> Option<Interface>,
    all_addrs: &HashMap<String, Vec<(IpAddr, u8)>>,
) -> Result<HostReport, ConfigError> {
    let mut problems = Vec::new();
    let mut report = HostReport::default();
    let Some(iface) = lookup(&cfg.node.interface) else {
        return Err(ConfigError::Invalid(vec![Problem {
            key: "node.interface".into(),
            message: format!(
                "interface `{}` does not exist on this host",
                cfg.node.interface
            ),
        }]));
    };
    let total: usize = cfg.groups.iter().map(|g| g.vips.len()).sum();
    if total > RECOMMENDED_MAX_VIPS {
        report.warnings.push(format!(
            "{total} VIPs on this node: more than the recommended {RECOMMENDED_MAX_VIPS} per server"
        ));
    }
    // Addresses that are VIP-shaped (/32, /128) on our interface are taken as leftovers
    // of an earlier run (ours or another HA tool's), not as real addresses.
    let subnets: Vec<(IpAddr, u8)> = iface
        .addrs
        .iter()
        .copied()
        .filter(|(a, p)| !is_host_prefix(*a, *p) && !is_link_local(*a))
        .collect();
    for g in &cfg.groups {
        for (vi, vip) in g.vips.iter().enumerate() {
            let key = format!("group[{}].vips[{vi}]", g.name);
            for (ifname, addrs) in all_addrs {
                for (a, p) in addrs {
                    if *a == vip.addr {
                        // The agent keeps an active VIP on lo (a host prefix, never
                        // announced by the kernel): that is ours, running.
                        if ifname == "lo" && is_host_prefix(*a, *p) {
                            continue;
                        }
                        if ifname == &iface.name && is_host_prefix(*a, *p) {
                            report.warnings.push(format!(
                                "VIP {} is already assigned on {ifname} (left over by an earlier run?); \
                                 it is removed while this node is not active",
                                vip.addr
                            ));
                        } else {
                            problems.push(Problem {
                                key: key.clone(),
                                message: format!("{} is a real address of this host (on {ifname}); a VIP must be an address no interface owns", vip.addr),
                            });
                        }
                    }
                }
            }
            let on_link = subnets.iter().any(|(a, p)| {
                *p == vip.prefix
                    && a.is_ipv4() == vip.addr.is_ipv4()
                    && network(*a, *p) == network(vip.addr, vip.prefix)
            });
            if !on_link {
                let have: Vec<String> = subnets
                    .iter()
                    .filter(|(a, _)| a.is_ipv4() == vip.addr.is_ipv4())
                    .map(|(a, p)| format!("{}/{p}", network(*a, *p)))
                    .collect();
                problems.push(Problem {
                    key,
                    message: format!(
                        "{vip} is not in a subnet of interface {} ({}); a VIP binds only to servers of its own subnet",
                        iface.name,
                        if have.is_empty() { "it has no such address".to_string() } else { have.join(", ") }
                    ),
                });
            }
        }
        if let Some(r) = &g.redirect {
            if lookup(&r.interface).is_none() {
                problems.push(Problem {
                    key: format!("group[{}].redirect_to", g.name),
                    message: format!("interface `{}` does not exist on this host", r.interface),
                });
            }
        }
    }
    for e in &cfg.eips {
        let key = e.key();
        for (k, name) in [
            ("external_interface", &e.external_interface),
            ("internal_interface", &e.internal_interface),
        ] {
            if lookup(name).is_none() {
                problems.push(Problem {
                    key: format!("{key}.{k}"),
                    message: format!("interface `{name}` does not exist on this host"),
                });
            }
        }
        if let Some(int) = lookup(&e.internal_interface) {
            let on_link = int.addrs.iter().any(|(a, p)| {
                a.is_ipv4()
                    && !is_host_prefix(*a, *p)
                    && network(*a, *p) == network(IpAddr::V4(e.vip), *p)
            });
            if !on_link {
                problems.push(Problem {
                    key: format!("{key}.vip"),
                    message: format!(
                        "{} is not in a subnet of the internal interface {}",
                        e.vip, int.name
                    ),
                });
            }
        }
        if let Some((ifname, _)) = all_addrs
            .iter()
            .find(|(_, v)| v.iter().any(|(a, _)| *a == IpAddr::V4(e.address)))
        {
            problems.push(Problem {
                key: format!("{key}.address"),
                message: format!("{} is an address of this host (on {ifname}); the elastic IP must be answered by vip, not the kernel", e.address),
            });
        }
    }
    report.warnings.extend(file_warnings(cfg));
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// How long, on average, until random loss alone fakes a failure: `misses` probes
/// lost in a row, each round trip crossing the network twice at `loss` per frame.
pub fn echo_false_alarm_every(interval: Duration, misses: u32, loss: f64) -> Duration {
    let round_trip = 1.0 - (1.0 - loss) * (1.0 - loss);
    let p = round_trip.powi(misses as i32) * (1.0 - round_trip);
    Duration::from_secs_f64((interval.as_secs_f64() / p.max(1e-300)).min(1e12))
}

/// "2.1 min", "6 days", "3 years".
fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    match s {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 2.0 * 86400.0 => format!("{:.0} h", s / 3600.0),
        s if s < 2.0 * 365.0 * 86400.0 => format!("{:.0} days", s / 86400.0),
        s => format!("{:.0} years", s / (365.0 * 86400.0)),
    }
}

/// What is worth saying about a config whatever the host: its timing and its keys
/// (`vip check-config` prints these, also with `--no-host`; the agent logs them at
/// start and shows them in status, through [`check_host`]).
pub fn file_warnings(cfg: &Config) -> Vec<String> {
    let mut out = timing_warnings(cfg);
    out.extend(auth_warnings(cfg));
    out.extend(eip_warnings(cfg));
    out
}

/// One line per elected group without `auth_key_file`: its advertisements are not
/// authenticated, so anyone on the segment can speak for a peer. Valid (keepalived
/// without authentication is the same), but the user must know what it gives up.
pub fn auth_warnings(cfg: &Config) -> Vec<String> {
    cfg.groups
        .iter()
        .filter(|g| g.election.as_ref().is_some_and(|e| e.auth_key_file.is_none()))
        .map(|g| {
            let member = if g.balance.is_some() {
                ", join its balance as a member to get a share of the flows"
            } else {
                ""
            };
            format!(
                "group[{}] has no auth_key_file: its advertisements are not authenticated, so any host on the segment can send them from a peer's address and claim the VIPs, steer their traffic to itself (a forged better peer naming its own MAC){member}, or block a failover with one forged hold. Set auth_key_file to the same key on every peer (`vip keygen` writes one).",
                g.name
            )
        })
        .collect()
}

/// Timing that is valid but risks false takeovers, explained (`vip check-config` and
/// the agent's start-up print these).
pub fn timing_warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for g in &cfg.groups {
        let Some(e) = &g.election else { continue };
        let key = format!("group[{}]", g.name);
        let advert_ms = e.advert_interval.as_millis();
        if advert_ms < 50 {
            out.push(format!(
                "{key}.advert_interval_ms = {advert_ms}: a standby takes over after {} ms without an advertisement, and the active's lease runs out after {} ms, so an active agent that is not scheduled for that long (a loaded host) loses its VIPs. The echo detects a failed node in milliseconds without depending on the agent's scheduling: with it, the default 100 ms costs no speed.",
                advert_ms * 3,
                e.lease.as_millis()
            ));
        }
        if e.echo_interval.is_zero() {
            continue;
        }
        let detect = e.echo_interval * e.echo_misses;
        let every = echo_false_alarm_every(e.echo_interval, e.echo_misses, 0.01);
        if every < Duration::from_secs(30 * 86400) {
            out.push(format!(
                "{key}.echo_misses = {} at echo_interval_ms = {}: at 1 % frame loss between the nodes, {} probes are lost in a row about every {} (at 2 %: every {}), and each time the standby takes over. The defaults (6 at 2 ms) make it once a year at 1 %.",
                e.echo_misses,
                e.echo_interval.as_millis(),
                e.echo_misses,
                human_duration(every),
                human_duration(echo_false_alarm_every(e.echo_interval, e.echo_misses, 0.02)),
            ));
        }
        if detect < Duration::from_millis(4) {
            out.push(format!(
                "{key}: echo_interval_ms * echo_misses = {} ms: a probe delayed that long (a softirq backlog under load, a busy hypervisor, a congested link) counts as lost.",
                detect.as_millis()
            ));
        }
    }
    out
}

/// Elastic IPs that learn their VIP's owner from any ARP (no `nodes`): valid, as
/// configs written before the key existed must still load, but open to anyone on the
/// internal segment (`vip check-config` and the agent's start-up print these).
pub fn eip_warnings(cfg: &Config) -> Vec<String> {
    cfg.eips
        .iter()
        .filter(|e| e.nodes.is_none())
        .map(|e| {
            format!(
                "{key}.nodes is not set: the owner of VIP {vip} is learned from any ARP on {int}, so one forged \
                 ARP from any host on that segment moves all of {eip}'s traffic to the forger's MAC, where it \
                 stays until the real owner announces again. List the MACs of the VIP's nodes (their \
                 node.interface): nodes = [\"02:..\", ...]",
                key = e.key(),
                vip = e.vip,
                int = e.internal_interface,
                eip = e.address,
            )
        })
        .collect()
}

fn is_host_prefix(a: IpAddr, p: u8) -> bool {
    (a.is_ipv4() && p == 32) || (a.is_ipv6() && p == 128)
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => v.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "a"
interface = "eth0"

[[group]]
name = "web"
vips = ["10.0.0.50/24"]
role = "active"
"#;

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn eth0(addrs: &[(&str, u8)]) -> Interface {
        Interface {
            name: "eth0".into(),
            index: 2,
            mac: Mac([2, 0, 0, 0, 0, 1]),
            addrs: addrs
                .iter()
                .map(|(a, p)| (a.parse().unwrap(), *p))
                .collect(),
            kind: None,
            up: true,
        }
    }

    fn host(cfg: &Config, iface: Interface) -> Result<HostReport, ConfigError> {
        let all: HashMap<_, _> = [(iface.name.clone(), iface.addrs.clone())].into();
        check_host(cfg, &|n| (n == iface.name).then(|| iface.clone()), &all)
    }

    #[test]
    fn good_config_has_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.node.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.node.xdp_mode, XdpMode::Auto);
        assert_eq!(c.groups[0].vips[0].to_string(), "10.0.0.50/24");
        assert_eq!(c.groups[0].role, Role::Active);
        assert_eq!(c.groups[0].garp.count, DEFAULT_GARP_COUNT);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&GOOD.replace("role = ", "rol = "))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `rol`"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let p = problems(&GOOD.replace(
            "\"10.0.0.50/24\"",
            "\"10.0.0.50\", \"10.0.0.300/24\", \"10.0.0.51/33\"",
        ));
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "group[web].vips[0]",
                "group[web].vips[1]",
                "group[web].vips[2]"
            ]
        );
        assert!(p[0].message.contains("ADDRESS/PREFIX"));
        let p = problems(&GOOD.replace("\"active\"", "\"master\""));
        assert_eq!(p[0].key, "group[web].role");
        let p = problems(&GOOD.replace("\"10.0.0.50/24\"", "\"10.0.0.255/24\""));
        assert!(p[0].message.contains("broadcast"), "{p:?}");
        let p = problems(&GOOD.replace("\"10.0.0.50/24\"", "\"fe80::1/64\""));
        assert!(p[0].message.contains("unicast"), "{p:?}");
    }

    #[test]
    fn vip_in_two_groups() {
        let text = format!(
            "{GOOD}\n[[group]]\nname = \"db\"\nvips = [\"10.0.0.50/24\"]\nrole = \"standby\"\n"
        );
        let p = problems(&text);
        assert_eq!(p[0].key, "group[db].vips[0]");
        assert!(p[0].message.contains("also in group `web`"), "{p:?}");
    }

    #[test]
    fn duplicate_group_names() {
        let text = format!(
            "{GOOD}\n[[group]]\nname = \"web\"\nvips = [\"10.0.0.51/24\"]\nrole = \"standby\"\n"
        );
        assert_eq!(problems(&text)[0].key, "group[web].name");
    }

    #[test]
    fn subnet_rule() {
        let c = parse(GOOD).unwrap();
        assert!(host(&c, eth0(&[("10.0.0.1", 24)])).is_ok());
        let e = host(&c, eth0(&[("10.1.0.1", 24)])).unwrap_err().to_string();
        assert!(
            e.contains("group[web].vips[0]") && e.contains("10.1.0.0/24"),
            "{e}"
        );
        // Same network, different prefix: not the VIP's subnet.
        assert!(host(&c, eth0(&[("10.0.0.1", 16)])).is_err());
    }

    #[test]
    fn real_address_rule() {
        let c = parse(&GOOD.replace("10.0.0.50/24", "10.0.0.1/24")).unwrap();
        let e = host(&c, eth0(&[("10.0.0.1", 24)])).unwrap_err().to_string();
        assert!(e.contains("real address"), "{e}");
        // A /32 leftover of ours is a warning, not a real address.
        let c = parse(GOOD).unwrap();
        let r = host(&c, eth0(&[("10.0.0.1", 24), ("10.0.0.50", 32)])).unwrap();
        assert!(r.warnings[0].contains("already assigned"));
    }

    #[test]
    fn echo_timing_rules_name_the_keys() {
        let elected = |extra: &str| {
            format!("{GOOD}\n[[group]]\nname = \"api\"\nvips = [\"10.0.0.60/24\"]\npeers = [\"10.0.0.12\"]\npriority = 150\n{extra}\n")
        };
        // Defaults: 2 ms, 6 misses, no warning.
        let c = parse(&elected("")).unwrap();
        let e = c.groups[1].election.clone().unwrap();
        assert_eq!(
            (e.echo_interval, e.echo_misses),
            (Duration::from_millis(2), 6)
        );
        assert!(timing_warnings(&c).is_empty(), "{:?}", timing_warnings(&c));
        // Off.
        let c = parse(&elected("echo_interval_ms = 0")).unwrap();
        assert!(c.groups[1]
            .election
            .as_ref()
            .unwrap()
            .echo_interval
            .is_zero());
        // Refused, naming the keys.
        for (extra, key, says) in [
            (
                "echo_interval_ms = 200",
                "group[api].echo_interval_ms",
                "above advert_interval_ms",
            ),
            ("echo_misses = 2", "group[api].echo_misses", "out of range"),
            (
                "advert_interval_ms = 10\necho_interval_ms = 10\necho_misses = 3",
                "group[api].echo_interval_ms",
                "echo_interval_ms * echo_misses = 30 ms is not below three advert intervals",
            ),
        ] {
            let err = parse(&elected(extra)).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{extra}: {err}");
        }
        let err = parse(&format!("{GOOD}echo_misses = 4\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("echo_misses") && err.contains("only applies to elected groups"),
            "{err}"
        );
        // Valid but risky: explained.
        let c = parse(&elected(
            "echo_interval_ms = 1\necho_misses = 3\nadvert_interval_ms = 10",
        ))
        .unwrap();
        let w = timing_warnings(&c).join("\n");
        assert!(
            w.contains("echo_misses = 3") && w.contains("about every"),
            "{w}"
        );
        assert!(w.contains("= 3 ms: a probe delayed"), "{w}");
        assert!(w.contains("advert_interval_ms = 10"), "{w}");
    }

    #[test]
    fn elected_groups_without_a_key_are_warned_about() {
        let elected = |name: &str, vip: &str, extra: &str| {
            format!("[[group]]\nname = \"{name}\"\nvips = [\"{vip}/24\"]\npeers = [\"10.0.0.12\"]\npriority = 150\n{extra}\n")
        };
        let text = format!(
            "{GOOD}\n{}{}{}",
            elected("api", "10.0.0.60", ""),
            elected("keyed", "10.0.0.61", "auth_key_file = \"/etc/vip/k\""),
            elected("lb", "10.0.0.62", "balance = {}"),
        );
        let c = parse(&text).unwrap();
        let w = auth_warnings(&c);
        // The static group `web` and the keyed group are not named.
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].starts_with("group[api] has no auth_key_file"),
            "{}",
            w[0]
        );
        for says in [
            "any host on the segment",
            "claim the VIPs",
            "its own MAC",
            "forged hold",
            "vip keygen",
        ] {
            assert!(w[0].contains(says), "{says}: {}", w[0]);
        }
        assert!(!w[0].contains("balance"), "{}", w[0]);
        assert!(
            w[1].starts_with("group[lb] has no auth_key_file")
                && w[1].contains("balance as a member"),
            "{}",
            w[1]
        );
        // Every warning is one line, and each reaches the host check's report.
        assert!(w.iter().all(|l| !l.contains('\n')));
        let r = host(&c, eth0(&[("10.0.0.1", 24)])).unwrap();
        for l in &w {
            assert!(r.warnings.contains(l), "{:?}", r.warnings);
        }
        assert_eq!(file_warnings(&c).len(), timing_warnings(&c).len() + 2);
        // keepalived groups elect elsewhere: nothing to say here.
        let ka = format!("{GOOD}\n[[group]]\nname = \"db\"\nvips = [\"10.0.0.70/24\"]\nkeepalived_instance = \"VI_1\"\n");
        assert!(auth_warnings(&parse(&ka).unwrap()).is_empty());
    }

    #[test]
    fn balance_is_for_elected_groups_with_sound_ports() {
        let grp = |name: &str, vip: &str, extra: &str| {
            format!("\n[[group]]\nname = \"{name}\"\nvips = [\"{vip}/24\"]\npeers = [\"10.0.0.12\"]\npriority = 150\n{extra}\n")
        };
        let c = parse(&format!(
            "{GOOD}{}",
            grp("api", "10.0.0.60", "balance = {}")
        ))
        .unwrap();
        assert_eq!(c.groups[1].balance, Some(Balance::default()));
        let c = parse(&format!(
            "{GOOD}{}",
            grp(
                "api",
                "10.0.0.60",
                "balance = { ports = [\"tcp/443\", \"UDP/53\"] }"
            )
        ))
        .unwrap();
        assert_eq!(
            c.groups[1].balance.as_ref().unwrap().ports,
            [(6, 443), (17, 53)]
        );
        for (text, key, says) in [
            (
                format!("{GOOD}balance = {{}}\n"),
                "group[web].balance",
                "only applies to elected groups",
            ),
            (
                format!(
                    "{GOOD}{}",
                    grp("api", "10.0.0.60", "balance = { ports = [\"tcp/0\"] }")
                ),
                "group[api].balance.ports[0]",
                "is not PROTOCOL/PORT",
            ),
            (
                format!(
                    "{GOOD}{}",
                    grp("api", "10.0.0.60", "balance = { ports = [\"sctp/9\"] }")
                ),
                "group[api].balance.ports[0]",
                "is not PROTOCOL/PORT",
            ),
            (
                format!(
                    "{GOOD}{}",
                    grp(
                        "api",
                        "10.0.0.60",
                        "balance = { ports = [\"tcp/80\", \"tcp/80\"] }"
                    )
                ),
                "group[api].balance.ports[1]",
                "listed twice",
            ),
            (
                format!(
                    "{GOOD}{}",
                    grp("api", "10.0.0.60", "balance = { ports = [] }")
                ),
                "group[api].balance.ports",
                "is empty",
            ),
            (
                format!(
                    "{GOOD}{}{}",
                    grp("api", "10.0.0.60", "balance = { ports = [\"tcp/80\"] }"),
                    grp("www", "10.0.0.61", "balance = { ports = [\"tcp/80\"] }")
                ),
                "group[www].balance.ports[0]",
                "also balanced by group api",
            ),
            (
                format!(
                    "{GOOD}{}",
                    grp("api", "10.0.0.60", "balance = { port = 1 }")
                ),
                "balance",
                "unknown field",
            ),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{key}: {err}");
        }
    }

    #[test]
    fn echo_false_alarms_follow_the_arithmetic() {
        // 2 ms, 6 misses: 2 % loss per frame is 3.96 % per round trip; 0.0396^6 per probe.
        let d = echo_false_alarm_every(Duration::from_millis(2), 6, 0.02);
        assert!((4.0..8.0).contains(&(d.as_secs_f64() / 86400.0)), "{d:?}");
        let d = echo_false_alarm_every(Duration::from_millis(2), 6, 0.01);
        assert!(d > Duration::from_secs(300 * 86400), "{d:?}");
    }

    #[test]
    fn more_than_ten_vips_warns() {
        let vips: Vec<String> = (10..22).map(|i| format!("\"10.0.0.{i}/24\"")).collect();
        let c = parse(&GOOD.replace("\"10.0.0.50/24\"", &vips.join(","))).unwrap();
        let r = host(&c, eth0(&[("10.0.0.1", 24)])).unwrap();
        assert!(
            r.warnings.iter().any(|w| w.contains("recommended")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn missing_interface() {
        let c = parse(GOOD).unwrap();
        let e = check_host(&c, &|_| None, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.interface"), "{e}");
    }

    /// 50k random mutations of valid configs: the parser never panics, and every
    /// error it returns says something.
    #[test]
    fn parser_survives_mutations() {
        let seeds = [
            GOOD.to_string(),
            format!("{GOOD}\n[[group]]\nname = \"api\"\nvips = [\"10.0.0.60/24\", \"2001:db8::60/64\"]\npeers = [\"10.0.0.12\"]\npriority = 150\nadvert_interval_ms = 10\nauth_key_file = \"/k\"\ntrack_script = {{ command = [\"true\"], interval_ms = 100 }}\ntrack_tcp = {{ address = \"127.0.0.1:80\" }}\n"),
            format!("{GOOD}\n[[group]]\nname = \"db\"\nvips = [\"10.0.0.70/24\"]\nkeepalived_instance = \"VI_1\"\n"),
        ];
        let tokens = [
            "[",
            "]",
            "=",
            "\"",
            "\n",
            "[[group]]",
            "peers",
            "priority",
            "-1",
            "99999999999",
            "\u{0}",
            "/",
            "::",
            "0x",
        ];
        let mut rng = vip_common::rng::XorShift64::new(0x1234_5678_9abc_def1);
        let mut rnd = || rng.next_u64() as usize;
        for i in 0..50_000 {
            let mut t: Vec<char> = seeds[i % seeds.len()].chars().collect();
            for _ in 0..1 + rnd() % 4 {
                let at = rnd() % (t.len() + 1);
                match rnd() % 3 {
                    0 if !t.is_empty() => {
                        t.remove(at.min(t.len() - 1));
                    }
                    1 => t
                        .splice(at..at, tokens[rnd() % tokens.len()].chars())
                        .for_each(drop),
                    _ => t.insert(at, char::from_u32((rnd() % 0x250) as u32).unwrap_or('x')),
                }
            }
            let text: String = t.into_iter().collect();
            if let Err(e) = parse(&text) {
                assert!(
                    !e.to_string().trim().is_empty(),
                    "an empty error for {text:?}"
                );
            }
        }
    }

    #[test]
    fn shipped_example_parses() {
        let c = parse(include_str!("../../dist/vip.toml")).expect("dist/vip.toml");
        assert!(c.groups[0].election.is_some());
    }

    #[test]
    fn eip_limits() {
        let eip = |a: &str, v: &str| {
            format!("\n[[eip]]\naddress = \"{a}\"\nvip = \"{v}\"\nexternal_interface = \"eth1\"\ninternal_interface = \"eth0\"\n")
        };
        let c = parse(&format!("{GOOD}{}", eip("203.0.113.10", "10.0.0.50"))).unwrap();
        assert_eq!(c.eips[0].vip.to_string(), "10.0.0.50");
        let p = problems(&format!("{GOOD}{}", eip("203.0.113.10", "2001:db8::50")));
        assert!(
            p[0].message
                .contains("an IPv6 VIP cannot bind an elastic IP"),
            "{p:?}"
        );
        let p = problems(&format!(
            "{GOOD}{}{}",
            eip("203.0.113.10", "10.0.0.50"),
            eip("203.0.113.11", "10.0.0.50")
        ));
        assert!(
            p[0].key == "eip[203.0.113.11].vip"
                && p[0].message.contains("already bound to eip[203.0.113.10]")
                && p[0].message.contains("at most one elastic IP"),
            "{p:?}"
        );
        let p = problems(&format!(
            "{GOOD}{}{}",
            eip("203.0.113.10", "10.0.0.50"),
            eip("203.0.113.10", "10.0.0.51")
        ));
        assert!(
            p[0].key == "eip[203.0.113.10].address"
                && p[0].message.contains("one VIP per elastic IP"),
            "{p:?}"
        );
        let p = problems(&format!("{GOOD}{}", eip("2001:db8::1", "10.0.0.50")));
        assert!(p[0].message.contains("IPv4"), "{p:?}");
    }

    /// An `[[eip]]` of GOOD's VIP with `nodes` set to `nodes` (TOML), or without the
    /// key when None.
    fn eip_with_nodes(nodes: Option<&str>) -> String {
        let line = nodes.map(|n| format!("nodes = {n}\n")).unwrap_or_default();
        format!(
            "{GOOD}\n[[eip]]\naddress = \"203.0.113.10\"\nvip = \"10.0.0.50\"\nexternal_interface = \"eth1\"\ninternal_interface = \"eth0\"\n{line}"
        )
    }

    #[test]
    fn eip_nodes_are_unicast_macs_each_once() {
        let c = parse(&eip_with_nodes(Some(
            r#"["02:00:00:00:00:0A", "02:00:00:00:00:0b"]"#,
        )))
        .unwrap();
        assert_eq!(
            c.eips[0].nodes,
            Some(vec![Mac([2, 0, 0, 0, 0, 0x0a]), Mac([2, 0, 0, 0, 0, 0x0b])])
        );
        let key = "eip[203.0.113.10].nodes";
        for (nodes, why) in [
            (
                r#"["01:00:5e:00:00:01"]"#,
                "01:00:5e:00:00:01 is not a unicast MAC",
            ),
            (
                r#"["ff:ff:ff:ff:ff:ff"]"#,
                "ff:ff:ff:ff:ff:ff is not a unicast MAC",
            ),
            (
                r#"["00:00:00:00:00:00"]"#,
                "00:00:00:00:00:00 is not a unicast MAC",
            ),
            (
                r#"["02:00:00:00:00:0a", "02:00:00:00:00:0A"]"#,
                "02:00:00:00:00:0a is listed twice",
            ),
            (
                r#"["02:00:00:00:00"]"#,
                "`02:00:00:00:00` is not a MAC address",
            ),
            ("[]", "must list the MACs of the VIP's nodes"),
        ] {
            let p = problems(&eip_with_nodes(Some(nodes)));
            assert!(
                p.len() == 1 && p[0].key == key && p[0].message.contains(why),
                "{nodes}: {p:?}"
            );
        }
        let many: Vec<String> = (0..=vip_common::MAX_EIP_NODES_PER_EIP)
            .map(|i| format!("\"02:00:00:00:01:{i:02x}\""))
            .collect();
        let p = problems(&eip_with_nodes(Some(&format!("[{}]", many.join(", ")))));
        assert!(
            p[0].key == key && p[0].message.contains("at most 16"),
            "{p:?}"
        );
        // Not a list of strings: the parser names the key.
        let e = parse(&eip_with_nodes(Some("\"02:00:00:00:00:0a\"")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodes"), "{e}");
    }

    /// A config written before `nodes` existed still loads, and says what it risks.
    #[test]
    fn an_eip_without_nodes_loads_with_a_warning_naming_the_key() {
        let ifaces = |n: &str| {
            let mut i = eth0(&[("10.0.0.1", 24)]);
            if n == "eth1" {
                i.name = "eth1".into();
                i.index = 3;
                i.addrs = vec![("198.51.100.1".parse().unwrap(), 24)];
            }
            (n == "eth0" || n == "eth1").then_some(i)
        };
        let all: HashMap<String, Vec<(IpAddr, u8)>> = HashMap::new();
        let c = parse(&eip_with_nodes(None)).unwrap();
        assert_eq!(c.eips[0].nodes, None);
        let r = check_host(&c, &ifaces, &all).unwrap();
        let w: Vec<&String> = r.warnings.iter().filter(|w| w.contains("eip[")).collect();
        assert!(
            w.len() == 1
                && w[0].starts_with("eip[203.0.113.10].nodes is not set")
                && w[0].contains("one forged ARP")
                && w[0].contains("on eth0"),
            "{:?}",
            r.warnings
        );
        let c = parse(&eip_with_nodes(Some(r#"["02:00:00:00:00:0a"]"#))).unwrap();
        let r = check_host(&c, &ifaces, &all).unwrap();
        assert!(
            !r.warnings.iter().any(|w| w.contains("eip[")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn ipv6_vips_follow_the_same_rules() {
        let v6 = |vip: &str| GOOD.replace("\"10.0.0.50/24\"", &format!("\"{vip}\""));
        let c = parse(&v6("2001:db8::50/64")).unwrap();
        let iface = eth0(&[("10.0.0.1", 24), ("2001:db8::1", 64), ("fe80::1", 64)]);
        assert!(host(&c, iface.clone()).is_ok());
        // Another prefix, or only a link-local subnet: not on-link.
        let e = host(&parse(&v6("2001:db8:1::50/64")).unwrap(), iface.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not in a subnet") && e.contains("2001:db8::/64"),
            "{e}"
        );
        let e = host(&c, eth0(&[("fe80::1", 64)])).unwrap_err().to_string();
        assert!(e.contains("not in a subnet"), "{e}");
        // A real address of the host, or a /128 leftover (a warning).
        let e = host(&parse(&v6("2001:db8::1/64")).unwrap(), iface)
            .unwrap_err()
            .to_string();
        assert!(e.contains("real address"), "{e}");
        let r = host(&c, eth0(&[("2001:db8::1", 64), ("2001:db8::50", 128)])).unwrap();
        assert!(r.warnings[0].contains("already assigned"));
        for bad in ["fe80::50/64", "ff02::1/64", "::1/128", "::/64"] {
            assert!(parse(&v6(bad)).is_err(), "{bad} accepted");
        }
        assert!(parse(&v6("2001:db8::50/129")).is_err());
    }

    #[test]
    fn ipv6_on_link_prefix_and_not_a_real_address() {
        let v6 = |vip: &str| GOOD.replace("\"10.0.0.50/24\"", &format!("\"{vip}\""));
        let c = parse(&v6("2001:db8::50/64")).unwrap();
        let err = |c: &Config, iface| host(c, iface).unwrap_err().to_string();
        // On-link means a subnet of the interface with the VIP's own prefix length.
        let e = err(&c, eth0(&[("2001:db8::1", 48)]));
        assert!(
            e.contains("group[web].vips[0]") && e.contains("2001:db8::/48"),
            "{e}"
        );
        let e = err(&c, eth0(&[("10.0.0.1", 24), ("fe80::1", 64)]));
        assert!(e.contains("it has no such address"), "{e}");
        // A /128 is a leftover VIP, never a subnet: alone it does not make the VIP on-link.
        let e = err(&c, eth0(&[("2001:db8::50", 128)]));
        assert!(e.contains("not in a subnet"), "{e}");
        // The VIP on another interface is a real address, even as a /128.
        let iface = eth0(&[("2001:db8::1", 64)]);
        let all: HashMap<_, _> = [
            ("eth0".to_string(), iface.addrs.clone()),
            (
                "dummy0".to_string(),
                vec![("2001:db8::50".parse().unwrap(), 128)],
            ),
        ]
        .into();
        let e = check_host(&c, &|n| (n == "eth0").then(|| iface.clone()), &all)
            .unwrap_err()
            .to_string();
        assert!(e.contains("real address of this host (on dummy0)"), "{e}");
        // On lo, a /128 is where a running agent keeps the VIP: accepted.
        let all: HashMap<_, _> = [
            ("eth0".to_string(), iface.addrs.clone()),
            (
                "lo".to_string(),
                vec![("2001:db8::50".parse().unwrap(), 128)],
            ),
        ]
        .into();
        assert!(check_host(&c, &|n| (n == "eth0").then(|| iface.clone()), &all).is_ok());
        // On the interface itself a /128 is a leftover: a warning naming the VIP.
        let r = host(&c, eth0(&[("2001:db8::1", 64), ("2001:db8::50", 128)])).unwrap();
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("VIP 2001:db8::50 is already assigned on eth0"));
        // Unique-local addresses are fine; addresses no VIP can be are named as such.
        assert!(parse(&v6("fd00::50/64")).is_ok());
        assert!(parse(&v6("2001:db8::/127")).is_ok());
        for (bad, why) in [
            ("2001:db8::/64", "subnet-router anycast"),
            ("2001:db8:0:1::/64", "subnet-router anycast"),
            ("::ffff:10.0.0.50/120", "not a global or unique-local"),
            ("fe80::50/64", "not a global or unique-local"),
            ("ff05::50/64", "not a global or unique-local"),
        ] {
            let p = problems(&v6(bad));
            assert!(
                p[0].key == "group[web].vips[0]" && p[0].message.contains(why),
                "{bad}: {p:?}"
            );
        }
    }
}
