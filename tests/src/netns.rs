//! Network namespaces that delete themselves.

use std::{
    fs::File,
    path::Path,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{bail, Context, Result};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace created for one test; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `vip-<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!(
            "vip-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating netns {name}"))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ip");
        c.arg("-n").arg(&self.name).args(args);
        run(&mut c)
    }

    /// Runs a command inside the namespace and returns its output whatever its status.
    pub fn output(&self, argv: &[&str]) -> Result<Output> {
        self.command(argv)
            .output()
            .with_context(|| format!("running {argv:?} in {}", self.name))
    }

    /// Runs a command inside the namespace; fails unless it succeeds.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        run(&mut self.command(argv)).with_context(|| format!("in netns {}", self.name))
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it creates belong
    /// to the namespace for their whole life.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file =
                    File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("entering netns {}: {e}", path.display()));
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// The MAC address of an interface in this namespace.
    pub fn mac(&self, iface: &str) -> Result<String> {
        let out = self.ip(&["-br", "link", "show", "dev", iface])?;
        out.split_whitespace()
            .nth(2)
            .map(str::to_string)
            .with_context(|| format!("no MAC for {iface} in `{out}`"))
    }

    /// A counter of the namespace's /proc/net/snmp (`proto` as "Udp" or "Icmp",
    /// `field` as "RcvbufErrors"): the file is per namespace, so a namespace the
    /// test made counts only the test's traffic.
    pub fn snmp(&self, proto: &str, field: &str) -> Result<u64> {
        let text = self.exec(&["cat", "/proc/net/snmp"])?;
        let head = format!("{proto}:");
        let mut rows = text.lines().filter(|l| l.starts_with(&head));
        let (names, values) = (
            rows.next().with_context(|| format!("no {proto} line"))?,
            rows.next().with_context(|| format!("no {proto} values"))?,
        );
        let i = names
            .split_whitespace()
            .position(|n| n == field)
            .with_context(|| format!("no {proto} field {field}"))?;
        values
            .split_whitespace()
            .nth(i)
            .with_context(|| format!("short {proto} line"))?
            .parse()
            .with_context(|| format!("{proto} {field}"))
    }

    pub fn exists(&self) -> bool {
        Path::new("/run/netns").join(&self.name).exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok && !std::thread::panicking() {
            panic!("could not delete netns {}", self.name);
        }
    }
}

/// Runs a command to completion; its stderr becomes the error if it fails.
pub(crate) fn run(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("spawning {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A private bpf filesystem for one test, visible inside `ip netns exec` (mounted in
/// the host's mount namespace before the agents start); unmounted on drop.
pub struct Bpffs {
    pub dir: std::path::PathBuf,
}

impl Bpffs {
    pub fn mount() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "vip-bpffs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir))
            .context("mounting a bpffs")?;
        Ok(Bpffs { dir })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A veth pair: `a_name` in `a`, `b_name` in `b`.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    run(Command::new("ip").args([
        "link", "add", a_name, "netns", &a.name, "type", "veth", "peer", "name", b_name, "netns",
        &b.name,
    ]))
    .with_context(|| format!("veth {a_name}@{} <-> {b_name}@{}", a.name, b.name))
    .map(|_| ())
}

impl Netns {
    /// The addresses (without prefix) on `dev`.
    pub fn addresses_on(&self, dev: &str) -> Vec<std::net::IpAddr> {
        self.ip(&["-o", "addr", "show", "dev", dev])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
            .collect()
    }

    /// The VIPs an agent made this namespace's stack accept: local routes through lo
    /// of vip's protocol (99) in the local table (IPv4 ones, and IPv6 ones with
    /// `ipv6_local = "route"`; one route per aligned block of VIPs, expanded here),
    /// and addresses on lo (IPv6 ones, an earlier version's IPv4 ones). Not lo's own
    /// loopback addresses.
    pub fn vips_on_lo(&self) -> Vec<std::net::IpAddr> {
        let mut out: Vec<std::net::IpAddr> = self
            .addresses_on("lo")
            .into_iter()
            .filter(|a| !a.is_loopback())
            .collect();
        for family in ["-4", "-6"] {
            let routes = self
                .ip(&[
                    family, "-o", "route", "show", "table", "local", "proto", "99", "type", "local",
                ])
                .unwrap_or_default();
            // "local 10.0.0.50 dev lo scope host", or a run: "local 10.9.1.0/24 dev
            // lo ...", "local 2001:db8::9:0/112 dev lo ..."
            for l in routes.lines() {
                let Some(dst) = l.split_whitespace().nth(1) else {
                    continue;
                };
                let (a, len) = dst.split_once('/').unwrap_or((dst, ""));
                let Ok(a) = a.parse::<std::net::IpAddr>() else {
                    continue;
                };
                let (bits, first) = match a {
                    std::net::IpAddr::V4(a) => (32u32, u128::from(u32::from(a))),
                    std::net::IpAddr::V6(a) => (128, u128::from(a)),
                };
                let len = len.parse::<u32>().unwrap_or(bits).min(bits);
                // A VIP set is at most 100,000: a route wider than that is no VIPs'.
                let n = 1u128
                    .checked_shl(bits - len)
                    .unwrap_or(u128::MAX)
                    .min(1 << 20);
                out.extend((0..n).map(|i| match a {
                    std::net::IpAddr::V4(_) => std::net::IpAddr::V4(((first + i) as u32).into()),
                    std::net::IpAddr::V6(_) => std::net::IpAddr::V6((first + i).into()),
                }));
            }
        }
        // An IPv6 VIP may be both (a route's, and a killed agent's address).
        out.sort();
        out.dedup();
        out
    }

    /// True if this namespace's kernel delivers `addr` locally (`ip route get` says
    /// "local"): what decides whether its stack accepts a packet to it.
    pub fn delivers_locally(&self, addr: std::net::IpAddr) -> bool {
        self.ip(&["route", "get", &addr.to_string()])
            .is_ok_and(|r| r.trim_start().starts_with("local "))
    }
}
