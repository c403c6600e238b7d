//! The agent's TOML configuration: parsing, and validation with errors that name the
//! key at fault. Validation is in two steps: `parse` checks everything that needs no
//! host (syntax, types, ranges, duplicates); `check_host` checks the config against the
//! interfaces of this host (the VIP's subnet must be on-link, it must not be a real
//! address of the host, named interfaces must exist).
//!
//! One room per part of the file: `node` (`[node]`), `group` (each `[[group]]`: its
//! VIPs, role, redirect, forwarding and announcements), `election` (an elected group's
//! `peers`, timers, echo and keys), `balance` (`balance`), `track` (health checks),
//! `eips` (`[[eip]]`), `bgp` (`[bgp]` and a group's `announce`); then `host` (the checks against this host) and `warnings`
//! (what is valid but worth saying). The types of every room are re-exported here, so
//! the rest of vip names them `config::Group`, `config::Eip`...

mod balance;
mod bgp;
mod eips;
mod election;
mod group;
mod host;
mod node;
mod raw;
mod routes6;
#[cfg(test)]
mod tests;
mod track;
mod warnings;

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub use balance::{Balance, Udp};
pub use bgp::{host_route, Announce, Bfd, Bgp, Neighbor, Password, DEFAULT_ROUTE_TABLE};
pub use eips::Eip;
pub use election::{load_keys, Election};
pub use group::{network, parse_vip, AddressMode, Group, Ipv6Local, Redirect, Role, Vip};
pub use host::{check_host, HostReport};
pub use node::{Garp, Node, Pin, XdpMode};
pub use routes6::Route6;
pub use track::{Check, Track};
pub use warnings::{
    auth_warnings, echo_false_alarm_every, eip_warnings, file_warnings, timing_warnings,
};

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
    /// IPv6 VIPs this node routes as a gateway (`[[route6]]`).
    pub routes6: Vec<Route6>,
    /// BGP announcements through the speaker (`[bgp]`).
    pub bgp: Option<Bgp>,
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

/// The file's shape: each section's raw keys are in its room.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: node::RawNode,
    #[serde(default)]
    group: Vec<raw::RawGroup>,
    #[serde(default)]
    eip: Vec<eips::RawEip>,
    #[serde(default)]
    route6: Vec<routes6::RawRoute6>,
    bgp: Option<bgp::RawBgp>,
}

/// The value a key of fixed choices names: `choices` lists each word with its value,
/// the default first (also what a missing key means); any other word is a problem
/// under `key` (listing the choices), and the default.
fn choice<T: Copy>(
    key: &str,
    value: Option<&str>,
    choices: &[(&str, T)],
    p: &mut impl FnMut(String, String),
) -> T {
    let default = choices[0].1;
    let Some(word) = value else {
        return default;
    };
    if let Some(&(_, v)) = choices.iter().find(|(w, _)| *w == word) {
        return v;
    }
    let names: Vec<String> = choices.iter().map(|(w, _)| format!("\"{w}\"")).collect();
    let expected = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    };
    p(
        key.to_string(),
        format!("`{word}` is not a choice (expected {expected})"),
    );
    default
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
    // In the order vip has always listed the problems: the node's own keys (the groups
    // inherit its announcements), each group, then what spans them.
    let head = node::head(&raw.node, &mut p);
    let bgp = bgp::bgp(raw.bgp.as_ref(), &mut p);
    let groups = group::groups(&raw.group, head.garp, bgp.is_some(), &mut p);
    let tail = node::tail(&raw.node, &mut p);
    group::check_instances(&groups, &mut p);
    let max_vips = node::max_vips(&raw.node, &groups, &mut p);
    group::check_count(&groups, &mut p);
    let eips = eips::eips(&raw.eip, &mut p);
    let routes6 = routes6::routes6(&raw.route6, &mut p);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    Ok(Config {
        node: Node::new(raw.node, head, tail, max_vips),
        groups,
        eips,
        routes6,
        bgp,
    })
}
