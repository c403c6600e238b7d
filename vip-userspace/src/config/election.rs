//! An elected group's keys (`peers` and what goes with them): its peers, priority
//! and preemption, the advertisements' interval, the data-plane lease, the echo's
//! timing and the shared key; a group without `peers` may not set them.

use std::{collections::HashMap, net::IpAddr, path::PathBuf, time::Duration};

use super::{
    raw::RawGroup, Config, ConfigError, Problem, DEFAULT_ADVERT_INTERVAL_MS,
    DEFAULT_ECHO_INTERVAL_MS, DEFAULT_ECHO_MISSES, MIN_ADVERT_INTERVAL_MS, MIN_ECHO_MISSES,
    MIN_KEY_LEN,
};

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

/// The election settings of a group with `peers`.
pub(super) fn election(
    gkey: &str,
    g: &RawGroup,
    p: &mut impl FnMut(String, String),
) -> Option<Election> {
    let Some(peers_raw) = g.peers.as_ref() else {
        only_when_elected(gkey, g, p);
        return None;
    };
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

/// The keys that only an elected group may set, refused in any other.
fn only_when_elected(gkey: &str, g: &RawGroup, p: &mut impl FnMut(String, String)) {
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
