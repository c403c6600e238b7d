//! Announcing VIPs over BGP: the one interface the agent drives a BGP speaker through
//! ([`Speaker`]), and the speaker vip runs, BIRD 2 ([`Bird`]).
//!
//! Why BIRD: it is small, packaged (`bird2`), has BFD, learns routes from a kernel
//! table at once (netlink), and is what Calico runs. FRR would do too (the lab's
//! router is FRR, a different implementation, as in the field), but needs three
//! daemons and its own config language per daemon; GoBGP's packaged release has no
//! BFD. A GoBGP speaker driven over its gRPC API would stand behind the same trait.
//!
//! The agent decides what is announced and when (`ownership` emits
//! `Effect::Withdraw` and the agent announces with the ARP announcements); the
//! speaker only carries it out. The rules that keep a route from outliving the data
//! plane that serves it are the guard's ([`guard`]).

pub mod bird;
pub mod guard;

use std::{
    net::{IpAddr, Ipv4Addr},
    os::unix::{fs::PermissionsExt, net::UnixDatagram, process::CommandExt},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    config::{host_route, Bgp},
    netlink::Netlink,
};
use guard::{Paths, ToGuard};

/// A BGP session as the speaker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub neighbor: IpAddr,
    /// The speaker's word for the BGP state ("Established", "Active", "Connect"...).
    pub state: String,
    pub established: bool,
    /// Since when, in the speaker's words (BIRD: a time of day, or a date).
    pub since: Option<String>,
    /// The session's BFD, if it runs one.
    pub bfd: Option<Bfd>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bfd {
    pub up: bool,
    pub state: String,
    pub since: Option<String>,
}

/// What the agent needs of a BGP speaker.
pub trait Speaker: Send {
    /// Announces these VIPs as host routes (idempotent).
    fn announce(&mut self, vips: &[IpAddr]) -> Result<()>;
    /// Withdraws them (absent already is fine).
    fn withdraw(&mut self, vips: &[IpAddr]) -> Result<()>;
    /// The routes may stay announced until this boot-time instant (ns) unless told
    /// again ([`guard::FOREVER`]: no limit); past it they are withdrawn without the
    /// agent.
    fn hold(&mut self, until: u64);
    /// A reload's new `[bgp]`.
    fn reconfigure(&mut self, bgp: &Bgp, router_id: Ipv4Addr) -> Result<()>;
    /// Where status reads the sessions from, off the loop.
    fn status_source(&self) -> StatusSource;
    /// The VIPs announced now (the kernel table's word).
    fn announced(&self) -> Result<Vec<IpAddr>>;
    /// Calls `on_flush` (from a thread of its own) whenever the routes were withdrawn
    /// without the agent.
    fn watch(&self, on_flush: Box<dyn Fn() + Send>) -> Result<()>;
    /// A clean stop: everything withdrawn, the speaker stopped.
    fn stop(&mut self);
}

/// Whether BIRD takes the config vip would write for `bgp` (`bird -p`): a config it
/// would refuse is an error at start or reload, not a BIRD that exits in a loop.
pub fn check_config(bgp: &Bgp, router_id: Ipv4Addr) -> Result<()> {
    let paths = Paths {
        dir: bgp.speaker_dir.clone(),
    };
    own_dir(&paths.dir)?;
    let tmp = checked(bgp, router_id, &paths)?;
    let _ = std::fs::remove_file(tmp);
    Ok(())
}

/// The config for `bgp`, written beside the live one and parsed by BIRD; its path.
fn checked(bgp: &Bgp, router_id: Ipv4Addr, paths: &Paths) -> Result<PathBuf> {
    let text = bird::config_text(bgp, router_id, &paths.log());
    let tmp = paths.dir.join("bird.conf.new");
    std::fs::write(&tmp, text)?;
    let out = Command::new(&bgp.speaker_bin)
        .arg("-p")
        .arg("-c")
        .arg(&tmp)
        .output()
        .with_context(|| format!("bgp.speaker_bin: running {}", bgp.speaker_bin.display()))?;
    if !out.status.success() {
        bail!(
            "[bgp]: BIRD refused the config vip wrote for it ({}): {}",
            tmp.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(tmp)
}

/// The speaker's directory, made 0700 if we create it. One that exists must be
/// root's and closed to others already: its sockets hold the routes up or withdraw
/// them, and vip never changes the mode of a directory it did not make (`/tmp`...).
fn own_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(dir) {
        Ok(m) => {
            if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() || m.mode() & 0o077 != 0 {
                bail!(
                    "bgp.speaker_dir: {} must be a directory of vip's own (owned by this user, mode 0700); it is {}mode {:o}, owner {}",
                    dir.display(),
                    if m.is_dir() { "" } else { "not a directory, " },
                    m.mode() & 0o7777,
                    m.uid()
                );
            }
            Ok(())
        }
        Err(_) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("bgp.speaker_dir: creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("bgp.speaker_dir: {}", dir.display()))
        }
    }
}

/// Enough to read the sessions without the loop.
#[derive(Debug, Clone)]
pub struct StatusSource {
    pub control: PathBuf,
    pub neighbors: Vec<IpAddr>,
}

impl StatusSource {
    pub fn sessions(&self) -> Result<Vec<Session>> {
        bird::sessions(&self.control, &self.neighbors)
    }
}

/// BIRD, run by vip's guard process (`vip speaker-guard`).
pub struct Bird {
    paths: Paths,
    table: u32,
    nl: Netlink,
    /// Bound at `agent.sock`: the guard's answers and its `flushed`.
    sock: UnixDatagram,
    neighbors: Vec<IpAddr>,
    last_hold: Option<u64>,
}

impl Bird {
    /// Writes BIRD's config and starts the guard (which starts BIRD), or finds the
    /// guard a previous agent left running and reconfigures its BIRD: a restart or an
    /// upgrade withdraws nothing. `fresh`: no adopted data plane, so nothing we find in
    /// the table is served: it is withdrawn first.
    pub fn start(bgp: &Bgp, router_id: Ipv4Addr, fresh: bool) -> Result<Self> {
        let paths = Paths {
            dir: bgp.speaker_dir.clone(),
        };
        own_dir(&paths.dir)?;
        let nl = Netlink::open().context("rtnetlink")?;
        if fresh {
            let n = nl
                .flush_routes(bgp.route_table)
                .context("emptying vip's route table")?;
            if n > 0 {
                log::warn!(
                    "withdrew {n} routes an earlier agent left in table {} (nothing serves them)",
                    bgp.route_table
                );
            }
        }
        let _ = std::fs::remove_file(paths.agent());
        let sock = UnixDatagram::bind(paths.agent())
            .with_context(|| format!("binding {}", paths.agent().display()))?;
        let b = Bird {
            paths,
            table: bgp.route_table,
            nl,
            sock,
            neighbors: bgp.neighbors.iter().map(|n| n.address).collect(),
            last_hold: None,
        };
        b.write_config(bgp, router_id)?;
        if b.guard_answers() {
            log::info!("BGP: the speaker's guard is running; reconfiguring BIRD");
            b.configure_running()?;
        } else {
            b.spawn_guard(bgp)?;
        }
        Ok(b)
    }

    /// Writes BIRD's config, once BIRD itself has parsed it ([`check_config`]).
    fn write_config(&self, bgp: &Bgp, router_id: Ipv4Addr) -> Result<()> {
        let tmp = checked(bgp, router_id, &self.paths)?;
        std::fs::rename(&tmp, self.paths.config())?;
        Ok(())
    }

    /// True when a guard answers `hello` within 200 ms.
    fn guard_answers(&self) -> bool {
        if self
            .sock
            .send_to(ToGuard::Hello.encode().as_bytes(), self.paths.guard())
            .is_err()
        {
            return false;
        }
        let _ = self.sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 64];
        matches!(self.sock.recv(&mut buf), Ok(n) if &buf[..n] == b"ok")
    }

    /// Asks the running BIRD to read its config again (a reload, or a new agent).
    fn configure_running(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match bird::command(&self.paths.control(), "configure", Duration::from_secs(2)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e).context("reconfiguring BIRD"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn spawn_guard(&self, bgp: &Bgp) -> Result<()> {
        let exe = std::env::current_exe().context("finding our own binary")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.paths.dir.join("guard.log"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("speaker-guard")
            .arg("--bird")
            .arg(&bgp.speaker_bin)
            .arg("--dir")
            .arg(&self.paths.dir)
            .arg("--table")
            .arg(bgp.route_table.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own session: a signal to the agent's process group does not reach it;
        // it outlives the agent on purpose (see `guard`).
        // SAFETY: setsid is async-signal-safe, and the closure touches nothing else
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().context("starting the speaker's guard")?;
        log::info!(
            "BGP: started the speaker's guard (pid {}) running {}",
            child.id(),
            bgp.speaker_bin.display()
        );
        // Reaped by nobody on purpose: it is not our child for long (setsid), and a
        // zombie would only show while we run.
        std::mem::forget(child);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.guard_answers() {
                return Ok(());
            }
        }
        bail!(
            "the speaker's guard did not answer within 3 s (see {})",
            self.paths.dir.join("guard.log").display()
        )
    }

    /// A thread that tells `on_flush` each time the guard withdrew everything.
    fn watch_flushes(&self, on_flush: Box<dyn Fn() + Send>) -> Result<()> {
        let sock = self.sock.try_clone()?;
        sock.set_read_timeout(None)?;
        std::thread::Builder::new()
            .name("vip-speaker".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = sock.recv(&mut buf) {
                    if &buf[..n] == b"flushed" {
                        on_flush();
                    }
                }
            })?;
        Ok(())
    }

    fn send(&self, m: ToGuard) {
        if let Err(e) = self.sock.send_to(m.encode().as_bytes(), self.paths.guard()) {
            log::error!("BGP: telling the speaker's guard {m:?}: {e}");
        }
    }
}

impl Speaker for Bird {
    fn announce(&mut self, vips: &[IpAddr]) -> Result<()> {
        for v in vips {
            let (a, p) = host_route(*v);
            self.nl
                .add_route(self.table, a, p)
                .with_context(|| format!("announcing {a}/{p}"))?;
        }
        Ok(())
    }

    fn withdraw(&mut self, vips: &[IpAddr]) -> Result<()> {
        for v in vips {
            let (a, p) = host_route(*v);
            self.nl
                .del_route(self.table, a, p)
                .with_context(|| format!("withdrawing {a}/{p}"))?;
        }
        Ok(())
    }

    fn hold(&mut self, until: u64) {
        if self.last_hold != Some(until) {
            self.last_hold = Some(until);
            self.send(ToGuard::Hold(until));
        }
    }

    fn reconfigure(&mut self, bgp: &Bgp, router_id: Ipv4Addr) -> Result<()> {
        self.write_config(bgp, router_id)?;
        self.neighbors = bgp.neighbors.iter().map(|n| n.address).collect();
        self.configure_running()
    }

    fn status_source(&self) -> StatusSource {
        StatusSource {
            control: self.paths.control(),
            neighbors: self.neighbors.clone(),
        }
    }

    fn announced(&self) -> Result<Vec<IpAddr>> {
        Ok(self
            .nl
            .routes(self.table)?
            .into_iter()
            .map(|(a, _)| a)
            .collect())
    }

    fn watch(&self, on_flush: Box<dyn Fn() + Send>) -> Result<()> {
        self.watch_flushes(on_flush)
    }

    fn stop(&mut self) {
        if let Err(e) = self.nl.flush_routes(self.table) {
            log::error!("BGP: withdrawing every route: {e}");
        }
        self.send(ToGuard::Stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// vip makes its own speaker directory 0700, and never takes (nor changes the mode
    /// of) one that others can enter, such as /tmp.
    #[test]
    fn the_speaker_directory_is_vips_own_or_refused() {
        let base = std::env::temp_dir().join(format!("vip-speaker-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let fresh = base.join("bird");
        own_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        own_dir(&fresh).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = own_dir(&base).unwrap_err().to_string();
        assert!(
            e.contains("bgp.speaker_dir") && e.contains("mode 755"),
            "{e}"
        );
        assert_eq!(
            std::fs::metadata(&base).unwrap().mode() & 0o777,
            0o755,
            "left as it was"
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
