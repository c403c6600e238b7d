//! `[bgp]`: announcing VIPs as host routes over BGP, through a speaker vip runs (BIRD,
//! see `crate::speaker`), and a group's `announce` (ARP/NDP, BGP, or both). The
//! neighbours, the AS numbers, BFD and the BGP timers are read here; the speaker's own
//! config is generated from them.

use std::{net::IpAddr, net::Ipv4Addr, path::PathBuf, time::Duration};

use serde::Deserialize;

/// The kernel routing table vip keeps the routes it announces in, by default: no
/// `ip rule` points at it, so it never forwards anything on this host; the speaker
/// exports exactly what is in it.
pub const DEFAULT_ROUTE_TABLE: u32 = 1699;
pub const DEFAULT_BFD_INTERVAL_MS: u64 = 10;
pub const DEFAULT_BFD_MULTIPLIER: u32 = 3;
pub const DEFAULT_HOLD_TIME_S: u64 = 3;
pub const DEFAULT_SPEAKER_BIN: &str = "/usr/sbin/bird";
pub const DEFAULT_SPEAKER_DIR: &str = "/run/vip/bird";

/// `[bgp]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Bgp {
    pub local_as: u32,
    /// None: the interface's first IPv4 address (resolved at start).
    pub router_id: Option<Ipv4Addr>,
    pub neighbors: Vec<Neighbor>,
    pub bfd: Bfd,
    pub hold_time: Duration,
    pub graceful_restart: bool,
    /// The kernel table the announced routes are kept in (`route_table`).
    pub route_table: u32,
    /// The speaker's binary (`speaker_bin`) and its run directory (config, control
    /// socket, log): `speaker_dir`.
    pub speaker_bin: PathBuf,
    pub speaker_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    pub address: IpAddr,
    pub remote_as: u32,
    pub bfd: bool,
    /// The session's TCP-MD5 key (RFC 2385), read from `password_file`: without it,
    /// any host that can reach the router's port 179 from the neighbour's address
    /// could speak for this node.
    pub password: Option<Password>,
}

/// A TCP-MD5 key: printable ASCII, 1 to 80 bytes (the kernel's TCP_MD5SIG_MAXKEYLEN),
/// without `"` or `\` (it is written into the speaker's config as a string). Its
/// `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// The longest TCP-MD5 key the kernel takes.
pub const MAX_PASSWORD_LEN: usize = 80;

/// Reads a neighbour's `password_file` (its bytes, surrounding whitespace trimmed);
/// the error says what is wrong without showing the key.
fn read_password(path: &std::path::Path) -> Result<Password, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let key = bytes.trim_ascii();
    if key.is_empty() || key.len() > MAX_PASSWORD_LEN {
        return Err(format!(
            "{}: the key has {} bytes; TCP-MD5 takes 1 to {MAX_PASSWORD_LEN}",
            path.display(),
            key.len()
        ));
    }
    if !key.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
        || key.contains(&b'"')
        || key.contains(&b'\\')
    {
        return Err(format!(
            "{}: the key must be printable ASCII without `\"` or `\\`",
            path.display()
        ));
    }
    // Checked ASCII above.
    Ok(Password(String::from_utf8_lossy(key).into_owned()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bfd {
    pub interval: Duration,
    pub multiplier: u32,
}

/// What a group's ownership is declared with (`announce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Announce {
    /// Gratuitous ARP / unsolicited NA on the segment, answers to ARP/NS (the default).
    #[default]
    Arp,
    /// Host routes (/32, /128) over BGP: the active announces (with `balance`, every
    /// member that forwards to the director too: anycast); the VIPs need not be
    /// on-link, and no gratuitous ARP or NA is sent for them.
    Bgp,
    /// Both: on the segment and over BGP.
    Both,
}

impl Announce {
    pub fn arp(self) -> bool {
        matches!(self, Announce::Arp | Announce::Both)
    }
    pub fn bgp(self) -> bool {
        matches!(self, Announce::Bgp | Announce::Both)
    }
    pub fn name(self) -> &'static str {
        match self {
            Announce::Arp => "arp",
            Announce::Bgp => "bgp",
            Announce::Both => "both",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    local_as: Option<i64>,
    router_id: Option<String>,
    #[serde(default)]
    neighbors: Vec<RawNeighbor>,
    bfd: Option<RawBfd>,
    hold_time_s: Option<u64>,
    graceful_restart: Option<bool>,
    route_table: Option<i64>,
    speaker_bin: Option<PathBuf>,
    speaker_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNeighbor {
    address: String,
    #[serde(rename = "as")]
    remote_as: Option<i64>,
    bfd: Option<bool>,
    password_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBfd {
    interval_ms: Option<u64>,
    multiplier: Option<u32>,
}

/// An AS number: 1..=4294967295, not AS_TRANS (23456, a 2-byte speaker's stand-in).
fn as_number(key: String, v: Option<i64>, p: &mut impl FnMut(String, String)) -> u32 {
    match v {
        None => {
            p(key, "is required".into());
            0
        }
        Some(n) if !(1..=u32::MAX as i64).contains(&n) => {
            p(key, format!("{n} is not an AS number (1 to 4294967295)"));
            0
        }
        Some(23456) => {
            p(
                key,
                "23456 is AS_TRANS, reserved for 2-byte speakers; it cannot be a real AS".into(),
            );
            0
        }
        Some(n) => n as u32,
    }
}

/// `[bgp]`, if present.
pub(super) fn bgp(raw: Option<&RawBgp>, p: &mut impl FnMut(String, String)) -> Option<Bgp> {
    let raw = raw?;
    let local_as = as_number("bgp.local_as".into(), raw.local_as, p);
    let router_id = raw
        .router_id
        .as_deref()
        .and_then(|s| match s.parse::<Ipv4Addr>() {
            Ok(a) if !a.is_unspecified() => Some(a),
            _ => {
                p(
                    "bgp.router_id".into(),
                    format!("`{s}` is not an IPv4 address (a BGP router ID is one)"),
                );
                None
            }
        });
    if raw.neighbors.is_empty() {
        p(
            "bgp.neighbors".into(),
            "is empty: a speaker with no neighbour announces nothing".into(),
        );
    }
    let mut neighbors: Vec<Neighbor> = Vec::new();
    for (i, n) in raw.neighbors.iter().enumerate() {
        let key = format!("bgp.neighbors[{i}]");
        let remote_as = as_number(format!("{key}.as"), n.remote_as, p);
        let Ok(address) = n.address.parse::<IpAddr>() else {
            p(
                format!("{key}.address"),
                format!("`{}` is not an IP address", n.address),
            );
            continue;
        };
        if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
            p(
                format!("{key}.address"),
                format!("{address} cannot be a BGP neighbour"),
            );
            continue;
        }
        if neighbors.iter().any(|m| m.address == address) {
            p(
                format!("{key}.address"),
                format!("{address} is listed twice"),
            );
            continue;
        }
        let password = match &n.password_file {
            None => None,
            Some(f) => match read_password(f) {
                Ok(k) => Some(k),
                Err(e) => {
                    p(format!("{key}.password_file"), e);
                    None
                }
            },
        };
        neighbors.push(Neighbor {
            address,
            remote_as,
            bfd: n.bfd.unwrap_or(true),
            password,
        });
    }
    let rb = raw.bfd.as_ref();
    let interval_ms = rb
        .and_then(|b| b.interval_ms)
        .unwrap_or(DEFAULT_BFD_INTERVAL_MS);
    // BIRD's BFD runs its own thread with a millisecond timer: below 10 ms its
    // sessions flap on a loaded host; above 10 s it is no faster than BGP's timers.
    if !(10..=10_000).contains(&interval_ms) {
        p(
            "bgp.bfd.interval_ms".into(),
            format!("{interval_ms} is outside 10..=10000 (the speaker's BFD timers)"),
        );
    }
    let multiplier = rb
        .and_then(|b| b.multiplier)
        .unwrap_or(DEFAULT_BFD_MULTIPLIER);
    if !(2..=255).contains(&multiplier) {
        p(
            "bgp.bfd.multiplier".into(),
            format!("{multiplier} is outside 2..=255"),
        );
    }
    let hold = raw.hold_time_s.unwrap_or(DEFAULT_HOLD_TIME_S);
    // RFC 4271 allows 0 (no keepalives): a neighbour that died would then never be
    // seen without BFD, and its routes would stay. At least 3 s, as the RFC says.
    if !(3..=65_535).contains(&hold) {
        p(
            "bgp.hold_time_s".into(),
            format!("{hold} is not a hold time vip uses (3 to 65535; 0 would never notice a dead neighbour)"),
        );
    }
    let route_table = match raw.route_table {
        None => DEFAULT_ROUTE_TABLE,
        // 253-255 are the kernel's default, main and local tables; 0 is unspecified.
        Some(t) if (1..=252).contains(&t) || (256..=u32::MAX as i64).contains(&t) => t as u32,
        Some(t) => {
            p(
                "bgp.route_table".into(),
                format!("{t} is not a table of vip's own (not 0, nor default/main/local 253-255)"),
            );
            DEFAULT_ROUTE_TABLE
        }
    };
    let dir = |key: &str, v: &Option<PathBuf>, default: &str, p: &mut dyn FnMut(String, String)| {
        match v {
            Some(d) if !d.is_absolute() => {
                p(
                    format!("bgp.{key}"),
                    format!("{} is not an absolute path", d.display()),
                );
                PathBuf::from(default)
            }
            Some(d) => d.clone(),
            None => PathBuf::from(default),
        }
    };
    let mut pd = |k: String, m: String| p(k, m);
    let speaker_bin = dir(
        "speaker_bin",
        &raw.speaker_bin,
        DEFAULT_SPEAKER_BIN,
        &mut pd,
    );
    let speaker_dir = dir(
        "speaker_dir",
        &raw.speaker_dir,
        DEFAULT_SPEAKER_DIR,
        &mut pd,
    );
    Some(Bgp {
        local_as,
        router_id,
        neighbors,
        bfd: Bfd {
            interval: Duration::from_millis(interval_ms),
            multiplier,
        },
        hold_time: Duration::from_secs(hold),
        graceful_restart: raw.graceful_restart.unwrap_or(false),
        route_table,
        speaker_bin,
        speaker_dir,
    })
}

/// A group's `announce`: "arp" (the default), "bgp" or "both"; BGP needs `[bgp]`.
pub(super) fn announce(
    gkey: &str,
    value: Option<&str>,
    has_bgp: bool,
    p: &mut impl FnMut(String, String),
) -> Announce {
    let key = format!("{gkey}.announce");
    let choices = [
        ("arp", Announce::Arp),
        ("bgp", Announce::Bgp),
        ("both", Announce::Both),
    ];
    let a = super::choice(&key, value, &choices, p);
    if a != Announce::Arp && !has_bgp {
        p(
            key,
            format!(
                "\"{}\" needs a [bgp] section (local_as and neighbors)",
                a.name()
            ),
        );
        return Announce::Arp;
    }
    // With `balance`, every healthy member announces (anycast, see `ownership`).
    a
}

/// The host route a VIP is announced as: /32 or /128.
pub fn host_route(addr: IpAddr) -> (IpAddr, u8) {
    (addr, if addr.is_ipv4() { 32 } else { 128 })
}
