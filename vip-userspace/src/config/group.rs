//! `[[group]]`: a set of VIPs that move together, its role (fixed, elected or driven
//! by keepalived), where its traffic goes (local, a redirect, forwarding while
//! standby), its announcements and drain; then the rules across groups (a VIP in one
//! group only, names and keepalived instances once each, the limits on their number).
//! The election's, balance's and health checks' keys of a group are in their rooms.

use std::{collections::HashMap, fmt, net::IpAddr, time::Duration};

use super::{
    balance, bgp, bgp::Announce, election, node::garp, raw::RawGroup, track, Balance, Election,
    Garp, Track, DEFAULT_DRAIN_MS,
};
use crate::mac::Mac;

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
    /// `addresses = "resident"`: the VIP addresses stay on `lo` in every role, so a
    /// takeover changes only the data plane's entries (see [`AddressMode`]).
    pub addresses: AddressMode,
    /// `ipv6_local = "route"`: the IPv6 VIPs are local routes, as IPv4 ones always
    /// are, instead of addresses on `lo` (see [`Ipv6Local`]).
    pub ipv6_local: Ipv6Local,
    /// How ownership is declared: on the segment (ARP/NDP), over BGP, or both.
    pub announce: Announce,
    /// `mac = "02:..."`: the group's virtual MAC (as VRRP's), which its active answers
    /// ARP/NS with and announces from, so that clients' neighbour entries never
    /// change: a takeover moves the switch's entry for the MAC with its first frame,
    /// for every VIP of the group at once. None (`mac = "node"`, the default): the
    /// node's own MAC, and a takeover must reach every client's entry for every VIP.
    pub virtual_mac: Option<Mac>,
}

/// Where a group's VIP addresses are on `lo` (`addresses`): what a takeover has to
/// change in the kernel before the local stack accepts the VIPs' traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressMode {
    /// Added at each takeover, removed when the node gives the VIPs up (the default:
    /// a standby's own processes reach the active, as on any host without the VIP).
    /// The kernel's cost grows with the addresses already on `lo`: a 10,000-VIP
    /// group's last address is in place seconds after the takeover.
    #[default]
    OnTakeover,
    /// On `lo` from start to stop on every node of the group (as an LVS-DR real
    /// server holds its VIP), so a takeover is the data plane's entries only. A
    /// standby's data plane forwards what reaches it to the active, or drops it
    /// (`vip_common::flags::RESIDENT`); only its own processes reach their own stack
    /// for the VIPs. Elected groups only (the lease is what makes a standby's entries
    /// drop), not redirected or balanced ones.
    Resident,
}

impl AddressMode {
    pub fn is_resident(self) -> bool {
        self == AddressMode::Resident
    }
}

/// How a group's IPv6 VIPs are made local (`ipv6_local`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ipv6Local {
    /// A `/128` address on `lo` each (the default): a service binds the VIP as any
    /// address. The kernel's cost grows with the addresses on the device (0.4 ms each
    /// with 10,000 on `lo`, and removing them costs more), so a big group moves in
    /// seconds.
    #[default]
    Address,
    /// Local routes in the local table, as few as cover the VIPs (as IPv4 VIPs are):
    /// some 30 µs each whatever the number. The stack accepts and answers the VIPs'
    /// traffic, but IPv6's bind() checks addresses: a service listens on `[::]`, or
    /// binds the VIP with `IPV6_FREEBIND` (or `net.ipv6.ip_nonlocal_bind = 1`).
    Route,
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

/// What the groups read so far hold, for the rules across groups.
#[derive(Default)]
struct Seen {
    names: HashMap<String, usize>,
    vips: HashMap<IpAddr, String>,
    /// Balanced ports and the group that balances each.
    ports: Vec<((u8, u16), String)>,
    /// Virtual MACs and the group that has each.
    macs: HashMap<Mac, String>,
}

/// Every `[[group]]`, in order, then the limit on balanced groups.
pub(super) fn groups(
    raw: &[RawGroup],
    node_garp: Garp,
    has_bgp: bool,
    p: &mut impl FnMut(String, String),
) -> Vec<Group> {
    let mut seen = Seen::default();
    let groups: Vec<Group> = raw
        .iter()
        .enumerate()
        .map(|(gi, g)| group(gi, g, node_garp, has_bgp, &mut seen, p))
        .collect();
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
    groups
}

/// One group, named `group[NAME]` in problems (`group[INDEX]` while it has no name).
fn group(
    gi: usize,
    g: &RawGroup,
    node_garp: Garp,
    has_bgp: bool,
    seen: &mut Seen,
    p: &mut impl FnMut(String, String),
) -> Group {
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
    } else if let Some(prev) = seen.names.insert(g.name.clone(), gi) {
        p(
            format!("{gkey}.name"),
            format!(
                "group name `{}` is used twice (groups {prev} and {gi})",
                g.name
            ),
        );
    }
    let vips = vips(&gkey, g, &mut seen.vips, p);
    let role = role(&gkey, g, p);
    let election = election::election(&gkey, g, p);
    if let Some(i) = &g.keepalived_instance {
        if i.trim().is_empty() {
            p(
                format!("{gkey}.keepalived_instance"),
                "must not be empty".into(),
            );
        }
    }
    let track = track::track(&gkey, g, p);
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
    let redirect = redirect(&gkey, g, p);
    let forward_to = parse_mac_key(&gkey, "forward_to", g.forward_to.as_deref(), p);
    let garp = garp(&gkey, g.garp_count, g.garp_interval_ms, node_garp, p);
    let announce = bgp::announce(&gkey, g.announce.as_deref(), has_bgp, p);
    let balance = balance::balance(&gkey, g, announce, &mut seen.ports, p);
    let addresses = addresses(&gkey, g, p);
    let ipv6_local = ipv6_local(&gkey, g, p);
    let virtual_mac = virtual_mac(&gkey, g, announce, &mut seen.macs, p);
    Group {
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
        addresses,
        ipv6_local,
        announce,
        virtual_mac,
    }
}

/// `mac`: "node" (the default) or the group's virtual MAC, a unicast address no
/// other group has, for groups announced on the segment whose active serves the
/// VIPs itself (its data plane answers with the MAC and takes the frames sent to it).
fn virtual_mac(
    gkey: &str,
    g: &RawGroup,
    announce: Announce,
    seen: &mut HashMap<Mac, String>,
    p: &mut impl FnMut(String, String),
) -> Option<Mac> {
    let key = format!("{gkey}.mac");
    let s = g.mac.as_deref().filter(|s| *s != "node")?;
    let mac = match s.parse::<Mac>() {
        Ok(m) if m.is_unicast() => m,
        Ok(_) => {
            p(key, format!("`{s}` is not a unicast MAC address"));
            return None;
        }
        Err(e) => {
            p(
                key,
                format!("`{s}` is neither \"node\" nor a MAC address: {e}"),
            );
            return None;
        }
    };
    let refused = if announce == Announce::Bgp {
        Some("is for groups announced on the segment: this one is announced over BGP only")
    } else if g.redirect_to.is_some() {
        Some("does not apply to a redirected group: its VIPs' frames go to another interface")
    } else if g.balance.is_some() {
        Some("does not apply to a balanced group: its members tell frames apart by the nodes' MACs")
    } else {
        None
    };
    if let Some(why) = refused {
        p(key, format!("a virtual MAC {why}"));
        return None;
    }
    if let Some(other) = seen.insert(mac, g.name.clone()) {
        p(key, format!("{mac} is group {other}'s virtual MAC already"));
        return None;
    }
    Some(mac)
}

/// `addresses`: "on_takeover" (the default) or "resident", for elected groups whose
/// VIPs are delivered locally.
fn addresses(gkey: &str, g: &RawGroup, p: &mut impl FnMut(String, String)) -> AddressMode {
    let key = format!("{gkey}.addresses");
    let choices = [
        ("on_takeover", AddressMode::OnTakeover),
        ("resident", AddressMode::Resident),
    ];
    let a = super::choice(&key, g.addresses.as_deref(), &choices, p);
    if a == AddressMode::OnTakeover {
        return a;
    }
    let refused = if g.peers.is_none() {
        Some("is for elected groups (peers): a standby's lease is what makes its data plane drop what it does not serve")
    } else if g.redirect_to.is_some() {
        Some("does not apply to a redirected group: its VIPs are never on lo")
    } else if g.balance.is_some() {
        Some("does not apply to a balanced group: its members hold the VIPs on lo already")
    } else {
        None
    };
    if let Some(why) = refused {
        p(key, format!("\"resident\" {why}"));
        return AddressMode::OnTakeover;
    }
    a
}

/// `ipv6_local`: "address" (the default) or "route", for groups whose VIPs are
/// delivered locally.
fn ipv6_local(gkey: &str, g: &RawGroup, p: &mut impl FnMut(String, String)) -> Ipv6Local {
    let key = format!("{gkey}.ipv6_local");
    let choices = [("address", Ipv6Local::Address), ("route", Ipv6Local::Route)];
    let v = super::choice(&key, g.ipv6_local.as_deref(), &choices, p);
    if v == Ipv6Local::Route && g.redirect_to.is_some() {
        p(
            key,
            "\"route\" does not apply to a redirected group: its VIPs are never local".into(),
        );
        return Ipv6Local::Address;
    }
    v
}

/// The group's VIPs: at least one, each in no other group (`seen`: the VIPs so far).
fn vips(
    gkey: &str,
    g: &RawGroup,
    seen: &mut HashMap<IpAddr, String>,
    p: &mut impl FnMut(String, String),
) -> Vec<Vip> {
    if g.vips.is_empty() {
        p(format!("{gkey}.vips"), "must list at least one VIP".into());
    }
    let mut vips = Vec::new();
    for (vi, s) in g.vips.iter().enumerate() {
        let key = format!("{gkey}.vips[{vi}]");
        match parse_vip(s) {
            Ok(v) => {
                if let Some(other) = seen.insert(v.addr, g.name.clone()) {
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
    vips
}

/// Who decides the group's role: `role` (static groups), the election (`peers`) or
/// keepalived (`keepalived_instance`), one of them only.
fn role(gkey: &str, g: &RawGroup, p: &mut impl FnMut(String, String)) -> Role {
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
    role
}

/// `redirect_to` (and its `redirect_mac`).
fn redirect(gkey: &str, g: &RawGroup, p: &mut impl FnMut(String, String)) -> Option<Redirect> {
    let redirect_mac = parse_mac_key(gkey, "redirect_mac", g.redirect_mac.as_deref(), p);
    match (&g.redirect_to, redirect_mac) {
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
    }
}

/// A keepalived instance drives one group only.
pub(super) fn check_instances(groups: &[Group], p: &mut impl FnMut(String, String)) {
    let mut instances: HashMap<&str, &str> = HashMap::new();
    for g in groups {
        if let Some(i) = &g.keepalived_instance {
            if let Some(other) = instances.insert(i.as_str(), g.name.as_str()) {
                p(
                    format!("group[{}].keepalived_instance", g.name),
                    format!("instance `{i}` already drives group `{other}`"),
                );
            }
        }
    }
}

/// At most `vip_common::MAX_GROUPS` groups (the data plane's per-group maps).
pub(super) fn check_count(groups: &[Group], p: &mut impl FnMut(String, String)) {
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
