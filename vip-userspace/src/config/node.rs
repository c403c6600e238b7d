//! `[node]`: this host's side of the configuration: its name, the interface XDP
//! attaches to and in which mode, the maps' capacity, where the data plane is pinned,
//! the control socket and the metrics endpoint, the election's port, and the
//! announcements every group inherits unless it says otherwise.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::{
    Group, DEFAULT_ADVERT_PORT, DEFAULT_CONTROL_SOCKET, DEFAULT_GARP_COUNT,
    DEFAULT_GARP_INTERVAL_MS, MAX_VIPS_LIMIT,
};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) name: String,
    pub(super) interface: String,
    pub(super) control_socket: Option<PathBuf>,
    pub(super) xdp_mode: Option<String>,
    pub(super) max_vips: Option<u32>,
    pub(super) garp_count: Option<u32>,
    pub(super) garp_interval_ms: Option<u64>,
    pub(super) advert_port: Option<u16>,
    pub(super) pin: Option<bool>,
    pub(super) pin_dir: Option<PathBuf>,
    pub(super) control_group: Option<String>,
    pub(super) metrics_listen: Option<String>,
}

/// What `[node]` says before the groups are read: the XDP mode, and the
/// announcements the groups inherit.
pub(super) struct Head {
    xdp_mode: XdpMode,
    pub(super) garp: Garp,
}

pub(super) fn head(raw: &RawNode, p: &mut impl FnMut(String, String)) -> Head {
    if raw.name.trim().is_empty() {
        p("node.name".into(), "must not be empty".into());
    }
    if raw.interface.trim().is_empty() {
        p("node.interface".into(), "must not be empty".into());
    }
    let xdp_mode = match raw.xdp_mode.as_deref().map(str::parse::<XdpMode>) {
        None => XdpMode::Auto,
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            p("node.xdp_mode".into(), e);
            XdpMode::Auto
        }
    };
    let garp = garp(
        "node",
        raw.garp_count,
        raw.garp_interval_ms,
        Garp {
            count: DEFAULT_GARP_COUNT,
            interval: Duration::from_millis(DEFAULT_GARP_INTERVAL_MS),
        },
        p,
    );
    Head { xdp_mode, garp }
}

/// The rest of `[node]`, read after the groups: where the data plane is pinned, the
/// metrics endpoint, the control socket's group.
pub(super) struct Tail {
    pin: Pin,
    metrics_listen: Option<SocketAddr>,
}

pub(super) fn tail(raw: &RawNode, p: &mut impl FnMut(String, String)) -> Tail {
    let pin = match (raw.pin, &raw.pin_dir) {
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
        (_, None) => Pin::Default(Path::new("/sys/fs/bpf/vip").join(&raw.interface)),
    };
    let metrics_listen = match raw.metrics_listen.as_deref() {
        None | Some("") => None,
        Some(a) => match a.parse::<SocketAddr>() {
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
        .control_group
        .as_deref()
        .is_some_and(|g| g.trim().is_empty())
    {
        p("node.control_group".into(), "must not be empty".into());
    }
    Tail {
        pin,
        metrics_listen,
    }
}

/// `max_vips`: the maps' capacity, which must hold every group's VIPs.
pub(super) fn max_vips(raw: &RawNode, groups: &[Group], p: &mut impl FnMut(String, String)) -> u32 {
    let total: usize = groups.iter().map(|g| g.vips.len()).sum();
    let max_vips = raw.max_vips.unwrap_or(vip_common::DEFAULT_MAX_VIPS);
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
    max_vips
}

impl Node {
    /// The validated `[node]` (only once every key was found sound).
    pub(super) fn new(raw: RawNode, head: Head, tail: Tail, max_vips: u32) -> Node {
        Node {
            name: raw.name,
            interface: raw.interface,
            control_socket: raw
                .control_socket
                .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            xdp_mode: head.xdp_mode,
            max_vips,
            garp: head.garp,
            advert_port: raw.advert_port.unwrap_or(DEFAULT_ADVERT_PORT),
            pin: tail.pin,
            control_group: raw.control_group,
            metrics_listen: tail.metrics_listen,
        }
    }
}

/// `garp_count` and `garp_interval_ms` of `key` (`node` or a group) over `default`.
pub(super) fn garp(
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
