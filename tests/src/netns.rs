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

    /// The VIPs an agent made this namespace's stack accept: IPv4 ones are local
    /// routes through lo of vip's protocol (99) in the local table (one route per run
    /// of VIPs, expanded here), IPv6 ones (and an earlier version's IPv4 ones)
    /// addresses on lo. Not lo's own loopback addresses.
    pub fn vips_on_lo(&self) -> Vec<std::net::IpAddr> {
        let mut out: Vec<std::net::IpAddr> = self
            .addresses_on("lo")
            .into_iter()
            .filter(|a| !a.is_loopback())
            .collect();
        let routes = self
            .ip(&[
                "-4", "-o", "route", "show", "table", "local", "proto", "99", "type", "local",
            ])
            .unwrap_or_default();
        // "local 10.0.0.50 dev lo scope host", or a run: "local 10.9.1.0/24 dev lo ..."
        for l in routes.lines() {
            let Some(dst) = l.split_whitespace().nth(1) else {
                continue;
            };
            let (addr, len) = dst.split_once('/').unwrap_or((dst, "32"));
            let (Ok(addr), Ok(len)) = (addr.parse::<std::net::Ipv4Addr>(), len.parse::<u32>())
            else {
                continue;
            };
            let first = u32::from(addr);
            let n = 1u64 << (32 - len.min(32));
            out.extend((0..n).map(|i| std::net::IpAddr::V4(first.wrapping_add(i as u32).into())));
        }
        out
    }

    /// True if this namespace's kernel delivers `addr` locally (`ip route get` says
    /// "local"): what decides whether its stack accepts a packet to it.
    pub fn delivers_locally(&self, addr: std::net::IpAddr) -> bool {
        self.ip(&["route", "get", &addr.to_string()])
            .is_ok_and(|r| r.trim_start().starts_with("local "))
    }
}
