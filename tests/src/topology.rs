//! The standard lab: hosts on one bridge ("the switch"), each with `eth0`.
//!
//! Host i gets 10.0.0.(10+i)/24 and 2001:db8::(10+i)/64 (documentation ranges, only
//! inside these namespaces). Frames that a host's XDP program sends back out (XDP_TX)
//! reach the bridge only if the bridge port has NAPI, so `Lan` runs `vip xdp-pass` on
//! the switch ports of the hosts that will run vip. Switch ports put VLAN tags back
//! into frames (`txvlan off`) so tagged frames reach the hosts as on a trunk.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Stdio,
};

use anyhow::{Context, Result};

use crate::{process::vip_bin, Netns, Proc};

pub struct Host {
    pub name: String,
    pub ns: Netns,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub mac: String,
    /// The bridge port (in the switch namespace) this host is plugged into.
    pub port: String,
}

pub struct Lan {
    // Field order is drop order: helpers first, then hosts, then the switch.
    helpers: Vec<Proc>,
    pub hosts: Vec<Host>,
    pub switch: Netns,
}

impl Lan {
    /// A bridge with one host per name; hosts send full checksums (TX offload off).
    pub fn new(names: &[&str]) -> Result<Self> {
        Self::build(names, true)
    }

    /// A lab as containers have it: every veth keeps its default TX checksum offload
    /// (partial checksums), and no switch port gets an XDP helper unless a test calls
    /// [`Lan::enable_xdp_tx`].
    pub fn with_offloads(names: &[&str]) -> Result<Self> {
        Self::build(names, false)
    }

    fn build(names: &[&str], tx_off: bool) -> Result<Self> {
        let switch = Netns::new("switch")?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        // The switch must not answer anything itself.
        switch.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        let mut lan = Lan {
            helpers: Vec::new(),
            hosts: Vec::new(),
            switch,
        };
        for (i, name) in names.iter().enumerate() {
            lan.add_host(name, 10 + i as u8, tx_off)?;
        }
        Ok(lan)
    }

    fn add_host(&mut self, name: &str, n: u8, tx_off: bool) -> Result<()> {
        let ns = Netns::new(name)?;
        let port = format!("p-{name}");
        crate::netns::run(std::process::Command::new("ip").args([
            "link",
            "add",
            "eth0",
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.switch.name,
        ]))
        .with_context(|| format!("creating the veth of {name}"))?;
        self.switch.ip(&["link", "set", &port, "master", "br0"])?;
        // Put VLAN tags back into the frame on the way out, as a trunk without VLAN
        // offload does: an XDP program cannot see a tag that travels as skb metadata.
        self.switch
            .exec(&["ethtool", "-K", &port, "txvlan", "off"])?;
        self.switch.ip(&["link", "set", &port, "up"])?;
        let ip4 = Ipv4Addr::new(10, 0, 0, n);
        let ip6: Ipv6Addr = format!("2001:db8::{n}").parse()?;
        ns.ip(&["addr", "add", &format!("{ip4}/24"), "dev", "eth0"])?;
        ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
        // Hosts that have been up a while: their link-local address has passed DAD.
        // (The kernel solicits a neighbour from it when a reply's source, such as a
        // VIP on lo, is not an address of the interface; while it is tentative, such
        // replies wait.)
        ns.sysctl("net.ipv6.conf.eth0.accept_dad", "0")?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        // Real checksums in every frame, as on a wire: a veth otherwise hands the peer
        // partial checksums, which XDP_TX/REDIRECT turn into corrupt ones.
        if tx_off {
            ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        let mac = ns.mac("eth0")?;
        self.hosts.push(Host {
            name: name.into(),
            ns,
            ip4,
            ip6,
            mac,
            port,
        });
        Ok(())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Lets XDP_TX from these hosts reach the bridge (NAPI on their switch ports).
    pub fn enable_xdp_tx(&mut self, names: &[&str]) -> Result<()> {
        let ports: Vec<String> = names.iter().map(|n| self.host(n).port.clone()).collect();
        self.xdp_pass(&self.switch.name.clone(), &ports)
    }

    /// Runs `vip xdp-pass IFACES` in namespace `ns` until the lab is dropped.
    pub fn xdp_pass(&mut self, ns: &str, ifaces: &[String]) -> Result<()> {
        let bin = vip_bin();
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(&bin)
            .arg("xdp-pass")
            .args(ifaces);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut p = Proc::spawn("xdp-pass", cmd)?;
        // It prints one line once attached.
        let ok = crate::wait_for(std::time::Duration::from_secs(10), || {
            if p.try_status().is_some() {
                return Some(false);
            }
            let out = self_ip_link(ns, &ifaces[0]);
            out.contains("xdp").then_some(true)
        });
        anyhow::ensure!(
            ok == Some(true),
            "vip xdp-pass did not attach to {ifaces:?} in {ns}"
        );
        self.helpers.push(p);
        Ok(())
    }

    /// An "internet" host behind `gateway` (documentation ranges only): the gateway's
    /// `eth1` is 198.51.100.1/24 and forwards, the internet host is 198.51.100.10 and
    /// routes 203.0.113.0/24 (elastic IPs) via the gateway; `servers` route their
    /// default via the gateway. XDP_TX/REDIRECT towards the internet host work (NAPI).
    pub fn internet(&mut self, gateway: &str, servers: &[&str]) -> Result<Netns> {
        let i = Netns::new("inet")?;
        let g = self.host(gateway);
        crate::veth(&g.ns, "eth1", &i, "eth0")?;
        g.ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "eth1"])?;
        g.ns.ip(&["link", "set", "eth1", "up"])?;
        g.ns.sysctl("net.ipv4.ip_forward", "1")?;
        i.ip(&["addr", "add", "198.51.100.10/24", "dev", "eth0"])?;
        i.ip(&["link", "set", "eth0", "up"])?;
        i.ip(&["route", "add", "203.0.113.0/24", "via", "198.51.100.1"])?;
        i.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        let gw = g.ip4.to_string();
        for s in servers {
            self.host(s)
                .ns
                .ip(&["route", "add", "default", "via", &gw])?;
        }
        let name = i.name.clone();
        self.xdp_pass(&name, &["eth0".to_string()])?;
        Ok(i)
    }

    /// Keeps a helper process alive as long as the lab.
    pub fn keep(&mut self, p: Proc) {
        self.helpers.push(p);
    }

    /// Names of every namespace of the lab, to check they are gone afterwards.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.hosts.iter().map(|h| h.ns.name.clone()).collect();
        v.push(self.switch.name.clone());
        v
    }
}

fn self_ip_link(ns: &str, iface: &str) -> String {
    std::process::Command::new("ip")
        .args(["-n", ns, "link", "show", "dev", iface])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
