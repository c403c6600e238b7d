//! A `[[group]]` as the TOML holds it, before any check: the group's raw table and
//! the raw tables nested in it (`balance`, `track_script` / `track_tcp`). The
//! section rooms (`group`, `election`, `balance`, `track`) all read it, so it sits
//! below them.

use std::path::PathBuf;

use serde::Deserialize;

/// A `[[group]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub(super) name: String,
    pub(super) vips: Vec<String>,
    pub(super) role: Option<String>,
    pub(super) redirect_to: Option<String>,
    pub(super) redirect_mac: Option<String>,
    pub(super) forward_to: Option<String>,
    pub(super) garp_count: Option<u32>,
    pub(super) garp_interval_ms: Option<u64>,
    pub(super) garp_refresh_ms: Option<u64>,
    pub(super) drain_ms: Option<u64>,
    pub(super) addresses: Option<String>,
    pub(super) ipv6_local: Option<String>,
    pub(super) mac: Option<String>,
    pub(super) announce: Option<String>,
    pub(super) peers: Option<Vec<String>>,
    pub(super) priority: Option<i64>,
    pub(super) advert_interval_ms: Option<u64>,
    pub(super) preempt: Option<bool>,
    pub(super) preempt_delay_ms: Option<u64>,
    pub(super) auth_key_file: Option<PathBuf>,
    pub(super) lease_ms: Option<u64>,
    pub(super) echo_interval_ms: Option<u64>,
    pub(super) echo_misses: Option<u32>,
    pub(super) balance: Option<RawBalance>,
    pub(super) keepalived_instance: Option<String>,
    pub(super) track_interface: Option<bool>,
    pub(super) track_script: Option<RawCheck>,
    pub(super) track_tcp: Option<RawCheck>,
}

/// A group's `balance` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBalance {
    pub(super) ports: Option<Vec<String>>,
    pub(super) udp: Option<String>,
}

/// A group's `track_script` or `track_tcp` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub(super) command: Option<Vec<String>>,
    pub(super) address: Option<String>,
    pub(super) interval_ms: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
}
