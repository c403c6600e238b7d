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

/// The loopback interface's index (`lo`, where VIPs live under the LVS direct-routing
/// convention).
pub fn loopback_index() -> Result<u32, HostError> {
    nix::net::if_::if_nametoindex("lo").map_err(|_| HostError::NoSuchInterface("lo".into()))
}

/// The /proc/sys path of a sysctl given as a path relative to /proc/sys
/// ("net/ipv4/conf/lo/arp_ignore") or as an absolute /proc/sys path. Dotted names are
/// not accepted: an interface name may contain dots ("eth0.100").
fn sysctl_path(path: &str) -> std::io::Result<std::path::PathBuf> {
    let rel = path.strip_prefix("/proc/sys/").unwrap_or(path);
    let ok = !rel.is_empty()
        && !rel.starts_with('/')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{path}` is not a sysctl path (like net/ipv4/conf/lo/arp_ignore)"),
        ));
    }
    Ok(std::path::Path::new("/proc/sys").join(rel))
}

/// Reads a sysctl (see [`sysctl_path`] for `path`); the value without its newline.
pub fn get_sysctl(path: &str) -> std::io::Result<String> {
    let full = sysctl_path(path)?;
    std::fs::read_to_string(&full)
        .map(|v| v.trim_end_matches('\n').to_string())
        .map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", full.display())))
}

/// Writes a sysctl (see [`sysctl_path`] for `path`).
pub fn set_sysctl(path: &str, value: &str) -> std::io::Result<()> {
    let full = sysctl_path(path)?;
    std::fs::write(&full, value).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("writing {value} to {}: {e}", full.display()),
        )
    })
}

/// The per-interface IPv4 sysctl `key` of `iface`, for [`get_sysctl`]/[`set_sysctl`]:
/// `ipv4_conf("eth0", "arp_ignore")` is "net/ipv4/conf/eth0/arp_ignore".
pub fn ipv4_conf(iface: &str, key: &str) -> String {
    format!("net/ipv4/conf/{iface}/{key}")
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

/// CLOCK_BOOTTIME in ns: the leases' clock (`bpf_ktime_get_boot_ns()` in the data
/// plane). It counts while the host is suspended, which CLOCK_MONOTONIC does not.
pub fn boottime_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .expect("CLOCK_BOOTTIME is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths() {
        let p = |s: &str| sysctl_path(s).map(|p| p.display().to_string());
        assert_eq!(
            p(&ipv4_conf("eth0.100", "arp_ignore")).unwrap(),
            "/proc/sys/net/ipv4/conf/eth0.100/arp_ignore"
        );
        assert_eq!(
            p("/proc/sys/net/ipv4/conf/lo/arp_announce").unwrap(),
            "/proc/sys/net/ipv4/conf/lo/arp_announce"
        );
        for bad in [
            "",
            "/etc/passwd",
            "net/../../etc/passwd",
            "net//ipv4",
            "/proc/sys/",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_a_sysctl_and_the_loopback_index() {
        // Readable without privilege in any namespace.
        let v = get_sysctl(&ipv4_conf("lo", "arp_ignore")).unwrap();
        assert!(v.parse::<u32>().is_ok(), "{v:?}");
        assert!(loopback_index().unwrap() > 0);
        assert!(get_sysctl(&ipv4_conf("no-such-if", "arp_ignore")).is_err());
    }
}
