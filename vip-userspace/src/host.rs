//! Facts about this host's interfaces, as the kernel reports them.

use std::{collections::HashMap, net::IpAddr};

use crate::{mac::Mac, netlink::Netlink};

/// One interface: what validation and the data plane need.
#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
    /// Addresses with their prefix length (IPv6 link-local ones included).
    pub addrs: Vec<(IpAddr, u8)>,
    /// Driver kind ("veth", ...); None for physical NICs.
    pub kind: Option<String>,
    pub up: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("interface `{0}` does not exist in this network namespace")]
    NoSuchInterface(String),
    #[error("reading interface `{name}`: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Looks an interface up by name.
pub fn interface(name: &str) -> Result<Interface, HostError> {
    let index =
        nix::net::if_::if_nametoindex(name).map_err(|_| HostError::NoSuchInterface(name.into()))?;
    let io = |source| HostError::Io {
        name: name.into(),
        source,
    };
    let link = Netlink::open()
        .and_then(|nl| nl.link(index, None))
        .map_err(io)?;
    let addrs = all_addresses()
        .map_err(io)?
        .remove(name)
        .unwrap_or_default();
    Ok(Interface {
        name: name.into(),
        index,
        mac: link.mac.unwrap_or(Mac::ZERO),
        addrs,
        kind: link.kind,
        // IF_OPER_UP = 6; IF_OPER_UNKNOWN (0) is what some virtual links report when up.
        up: matches!(link.operstate, Some(6) | Some(0)),
    })
}

/// Every address of every interface, by interface name.
pub fn all_addresses() -> std::io::Result<HashMap<String, Vec<(IpAddr, u8)>>> {
    let mut out: HashMap<String, Vec<(IpAddr, u8)>> = HashMap::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let entry = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            (IpAddr::V4(a.ip()), u32::from(m.ip()).count_ones() as u8)
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            (IpAddr::V6(a.ip()), u128::from(m.ip()).count_ones() as u8)
        } else {
            continue;
        };
        out.entry(ifa.interface_name).or_default().push(entry);
    }
    Ok(out)
}

/// Names of the VLAN devices stacked on `name`.
pub fn vlan_uppers(name: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/sys/class/net/{name}")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("upper_"))
                .map(str::to_string)
        })
        .filter(|upper| interface(upper).is_ok_and(|i| i.kind.as_deref() == Some("vlan")))
        .collect()
}

/// The current CLOCK_MONOTONIC time in ns: the clock bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
