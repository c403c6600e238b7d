//! The VIP addresses the local stack accepts, and the one rule that keeps the kernel
//! from ever answering for them: only the XDP program answers ARP/NS for a VIP.
//!
//! The LVS direct-routing convention: a VIP of a local group is added to `lo` (a /32
//! or a /128), never to the interface the clients reach, and the interface gets
//! `arp_ignore = 1` (answer ARP only for addresses configured on it) and
//! `arp_announce = 2` (never use a VIP as the sender of our own ARP requests). The
//! kernel's IPv6 neighbour code answers solicitations only for addresses on the
//! receiving interface, so an IPv6 VIP on `lo` is never answered by the kernel either.
//! Both stacks still deliver packets to an address on `lo` whatever interface they
//! arrive on, and reply from it.
//!
//! So when an agent dies without cleaning up (SIGKILL, no bpffs to keep its data
//! plane), the addresses it leaves behind on `lo` cannot make its kernel answer for
//! the VIP while another node is active.
//!
//! One error policy for every address change: it never fails a transition (the data
//! plane's entries decide who answers and where frames go; the address only lets the
//! local stack accept them), it is logged with the group and the address, counted, and
//! repaired by the next resync.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{Context, Result};

use crate::{
    host::{self, Interface},
    netlink::Netlink,
};

/// `arp_ignore` and `arp_announce` for the VIP interface (LVS-DR values).
const SYSCTLS: [(&str, &str); 2] = [("arp_ignore", "1"), ("arp_announce", "2")];

/// The prefix VIP addresses are added with: a host route's, so adding one never
/// creates or changes a subnet route.
pub fn host_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Owner of the VIP addresses on `lo`.
pub struct Addresses {
    nl: Netlink,
    lo: u32,
    /// Addresses we added (and keep restoring).
    held: BTreeSet<IpAddr>,
    /// Address changes that failed (logged, repaired by the next resync).
    pub errors: u64,
}

/// Sets `arp_ignore`/`arp_announce` on the interface (raising, never lowering, a value
/// the operator set higher). Returns what changed, for the log.
pub fn quiet_kernel_arp(iface: &Interface) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    for (key, want) in SYSCTLS {
        let path = host::ipv4_conf(&iface.name, key);
        let now = host::get_sysctl(&path).with_context(|| format!("reading {path}"))?;
        let now = now.trim();
        if now.parse::<u8>().unwrap_or(0) >= want.parse::<u8>().unwrap_or(0) {
            continue;
        }
        host::set_sysctl(&path, want).with_context(|| {
            format!("setting {path} to {want} (the kernel must never answer ARP for a VIP)")
        })?;
        changed.push(format!(
            "net.ipv4.conf.{}.{key} {now} -> {want}",
            iface.name
        ));
    }
    Ok(changed)
}

impl Addresses {
    pub fn open() -> Result<Self> {
        let lo =
            nix::net::if_::if_nametoindex("lo").context("looking up the loopback interface")?;
        Ok(Addresses {
            nl: Netlink::open().context("opening rtnetlink")?,
            lo,
            held: BTreeSet::new(),
            errors: 0,
        })
    }

    /// The interface the VIP addresses live on.
    pub fn ifindex(&self) -> u32 {
        self.lo
    }

    /// Adds a VIP address (idempotent).
    pub fn add(&mut self, group: &str, addr: IpAddr) {
        self.held.insert(addr);
        if let Err(e) = self.nl.add_address(self.lo, addr, host_prefix(addr)) {
            self.errors += 1;
            log::error!("group {group}: adding VIP address {addr} to lo: {e}");
        }
    }

    /// Removes a VIP address (absent already is fine).
    pub fn remove(&mut self, group: &str, addr: IpAddr) {
        self.held.remove(&addr);
        if let Err(e) = self.nl.del_address(self.lo, addr, host_prefix(addr)) {
            self.errors += 1;
            log::error!("group {group}: removing VIP address {addr} from lo: {e}");
        }
    }

    /// True if we hold (and keep restoring) this address.
    pub fn holds(&self, addr: IpAddr) -> bool {
        self.held.contains(&addr)
    }

    /// Adds back every address we hold (after lost notifications or a removal).
    pub fn restore(&mut self) {
        for addr in self.held.clone() {
            if let Err(e) = self.nl.add_address(self.lo, addr, host_prefix(addr)) {
                self.errors += 1;
                log::error!("restoring VIP address {addr} on lo: {e}");
            }
        }
    }

    /// Removes `addrs` from `ifindex` where an agent of an earlier version put them
    /// (on the interface itself): there, the kernel would answer ARP for them.
    pub fn remove_from(&mut self, ifindex: u32, addrs: &[IpAddr]) {
        for &addr in addrs {
            if let Err(e) = self.nl.del_address(ifindex, addr, host_prefix(addr)) {
                self.errors += 1;
                log::error!("removing VIP address {addr} from interface {ifindex}: {e}");
            }
        }
    }
}
