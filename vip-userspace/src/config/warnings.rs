//! What is valid but worth saying: timing that risks false takeovers, elected groups
//! without a key, elastic IPs that learn their owner from anyone (`vip check-config`
//! prints these, the agent logs them at start and shows them in status).

use std::time::Duration;

use super::Config;

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
/// start and shows them in status, through [`super::check_host`]).
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

/// An elected group above this many IPv6 VIPs, with their addresses added at each
/// takeover, is warned about (the size above which the agent stops waiting for the
/// addresses). IPv4 VIPs are local routes, whose cost does not grow with their number.
const BIG_GROUP: usize = 64;

/// A group above this many VIPs, announced on the segment from the node's MAC, is
/// told about a virtual MAC: its takeover must reach every client's entry for every
/// VIP, a frame each.
const MANY_ANNOUNCEMENTS: usize = 1000;

/// Timing that is valid but risks false takeovers (or slow ones: a big group whose
/// addresses are added at each takeover), explained (`vip check-config` and
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
        let local = g.redirect.is_none() && g.balance.is_none();
        let v6 = g.vips.iter().filter(|v| v.addr.is_ipv6()).count();
        if local
            && !g.addresses.is_resident()
            && g.ipv6_local == super::Ipv6Local::Address
            && v6 > BIG_GROUP
        {
            out.push(format!(
                "{key}: {v6} IPv6 VIPs whose addresses are added to lo at each takeover: the kernel takes longer for each address already there (IPv4 VIPs are local routes, which do not), so the last one is served seconds after a takeover (about 4 s for 10,000). `addresses = \"resident\"` keeps them on lo on every node, and a takeover moves every VIP in milliseconds (a standby's own processes then reach their own stack for the VIPs); `ipv6_local = \"route\"` makes them local routes too (a service then listens on [::] or binds with IPV6_FREEBIND)."
            ));
        }
        if local
            && g.virtual_mac.is_none()
            && g.announce != super::bgp::Announce::Bgp
            && g.vips.len() > MANY_ANNOUNCEMENTS
        {
            out.push(format!(
                "{key}: {} VIPs announced from the node's MAC: a takeover sends a gratuitous ARP or NA for each, and clients reach the last VIP when its frame has reached them (some 70-100 ms after the first for 10,000 on a busy host, resident; 150-190 ms when the takeover adds them to lo). A virtual MAC (`mac = \"02:...\"`, the same on every node) is what clients resolve every VIP to: a takeover's first frame moves the switch's entry for it, and with it every VIP.",
                g.vips.len()
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
