//! A group's health checks (`track_interface`, `track_script`, `track_tcp`): a
//! failing one moves the group to fault, which gives its VIPs up.

use std::time::Duration;

use super::raw::{RawCheck, RawGroup};

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

/// The group's checks; the interface is tracked by default in elected groups.
pub(super) fn track(gkey: &str, g: &RawGroup, p: &mut impl FnMut(String, String)) -> Track {
    Track {
        interface: g.track_interface.unwrap_or(g.peers.is_some()),
        script: check(gkey, "track_script", g.track_script.as_ref(), true, p),
        tcp: check(gkey, "track_tcp", g.track_tcp.as_ref(), false, p),
    }
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
