//! The speaker's guard (`vip speaker-guard`): a small process of its own that runs
//! BIRD and withdraws every route the moment the agent can no longer vouch for them.
//!
//! A route must never stay announced for a node whose data plane no longer serves the
//! VIP. The data plane stops serving when its lease runs out (the agent stalled, was
//! SIGSTOPped or SIGKILLed with its data plane pinned); BIRD, a process of its own,
//! would go on announcing. So the agent tells the guard, each time it renews, until
//! when its routes may stay (`hold NS`, CLOCK_BOOTTIME, some margin before the leases
//! end); if no new word comes by then, the guard empties vip's route table itself,
//! BIRD withdraws at once (netlink), and the guard tells the agent (`flushed`), which
//! announces again only from a new takeover. A process of its own, because a thread of
//! the agent stops with it.
//!
//! Its socket is a unix datagram socket in the speaker's directory (0700, root's): no
//! other local user can hold the routes up or flush them. A restarted or re-executed
//! agent finds the running guard (`hello`) and goes on with it, so an upgrade
//! withdraws nothing; `stop` (a clean agent stop, after its handover) stops BIRD and
//! the guard.

use std::{
    os::unix::net::UnixDatagram,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::{host, netlink::Netlink};

/// The guard's socket, BIRD's config, control socket, log and pid files, in the
/// speaker's directory.
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn guard(&self) -> PathBuf {
        self.dir.join("guard.sock")
    }
    pub fn agent(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("bird.log")
    }
    pub fn bird_pid(&self) -> PathBuf {
        self.dir.join("bird.pid")
    }
    pub fn guard_pid(&self) -> PathBuf {
        self.dir.join("guard.pid")
    }
}

/// "Hold until" meaning no deadline (static groups: no lease to outlive).
pub const FOREVER: u64 = u64::MAX;

/// A message from the agent to the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToGuard {
    Hello,
    /// The routes may stay until this boot-time instant (ns).
    Hold(u64),
    /// Empty the table now (the agent withdraws everything, e.g. before a fault).
    Flush,
    Stop,
}

impl ToGuard {
    pub fn encode(self) -> String {
        match self {
            ToGuard::Hello => "hello".into(),
            ToGuard::Hold(ns) => format!("hold {ns}"),
            ToGuard::Flush => "flush".into(),
            ToGuard::Stop => "stop".into(),
        }
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut w = s.split_whitespace();
        let m = match (w.next()?, w.next()) {
            ("hello", None) => ToGuard::Hello,
            ("flush", None) => ToGuard::Flush,
            ("stop", None) => ToGuard::Stop,
            ("hold", Some(n)) => ToGuard::Hold(n.parse().ok()?),
            _ => return None,
        };
        w.next().is_none().then_some(m)
    }
}

/// What the guard decides on each wake-up: pure, so its rules are unit-tested.
#[derive(Debug, Default)]
pub struct Watch {
    hold: Option<u64>,
}

impl Watch {
    pub fn hold(&mut self, until: u64) {
        self.hold = (until != FOREVER).then_some(until);
    }

    /// True when the hold has run out at `now` (the routes must go); it is cleared.
    pub fn expired(&mut self, now: u64) -> bool {
        match self.hold {
            Some(h) if now >= h => {
                self.hold = None;
                true
            }
            _ => false,
        }
    }

    /// How long to wait for the agent before looking again.
    pub fn wait(&self, now: u64) -> Duration {
        const IDLE: Duration = Duration::from_millis(500);
        match self.hold {
            Some(h) => Duration::from_nanos(h.saturating_sub(now).max(100_000)).min(IDLE),
            None => IDLE,
        }
    }
}

/// Set by SIGTERM/SIGINT: the guard then stops as on `stop` (routes withdrawn, BIRD
/// stopped), never leaving BIRD announcing without it.
static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::Relaxed);
}

/// The guard process: runs BIRD, watches the agent's holds. Returns when told to stop.
pub fn run(bird: &Path, dir: &Path, table: u32) -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_terminate),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.context("installing the guard's SIGTERM handler")?;
    }
    let paths = Paths {
        dir: dir.to_path_buf(),
    };
    let _ = std::fs::remove_file(paths.guard());
    let sock = UnixDatagram::bind(paths.guard())
        .with_context(|| format!("binding {}", paths.guard().display()))?;
    std::fs::write(paths.guard_pid(), format!("{}\n", std::process::id()))?;
    let nl = Netlink::open().context("rtnetlink")?;
    let mut watch = Watch::default();
    let mut child = start_bird(bird, &paths)?;
    let mut restart_at: Option<Instant> = None;
    let mut buf = [0u8; 256];
    loop {
        if TERMINATE.load(Ordering::Relaxed) {
            flush(&nl, table, "the guard was told to stop");
            if let Some(c) = child.as_mut() {
                stop_child(c);
            }
            let _ = std::fs::remove_file(paths.guard());
            let _ = std::fs::remove_file(paths.guard_pid());
            return Ok(());
        }
        let now = host::boottime_ns();
        if watch.expired(now) {
            flush(&nl, table, "the agent's hold ran out");
            let _ = sock.send_to(b"flushed", paths.agent());
        }
        sock.set_read_timeout(Some(watch.wait(host::boottime_ns())))?;
        match sock.recv(&mut buf) {
            Ok(n) => match std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(ToGuard::decode)
            {
                Some(ToGuard::Hello) => {
                    let _ = sock.send_to(b"ok", paths.agent());
                }
                Some(ToGuard::Hold(until)) => watch.hold(until),
                Some(ToGuard::Flush) => {
                    flush(&nl, table, "the agent asked");
                    watch.hold(FOREVER);
                }
                Some(ToGuard::Stop) => TERMINATE.store(true, Ordering::Relaxed),
                None => log::warn!("speaker guard: ignored a malformed message"),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("speaker guard socket"),
        }
        // BIRD died on its own: the router has dropped the session (and the routes);
        // start it again, no faster than once a second.
        if let Some(c) = child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                log::error!("speaker guard: BIRD exited ({st}); restarting it in 1 s");
                child = None;
                restart_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        if child.is_none() && restart_at.is_none_or(|t| Instant::now() >= t) {
            child = start_bird(bird, &paths)?;
            restart_at = None;
        }
    }
}

fn start_bird(bird: &Path, paths: &Paths) -> Result<Option<Child>> {
    let mut cmd = Command::new(bird);
    // The lowest real-time priority (SCHED_FIFO 1, as the echo prober's): BFD at 10 ms
    // declares a session down after 30 ms without a packet, and a BIRD waiting behind
    // a busy CPU's other work for that long flaps its sessions (seen in the lab under
    // a build). Refused (no CAP_SYS_NICE), BIRD runs as it would anyway.
    // SAFETY: sched_setscheduler is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            let p = libc::sched_param { sched_priority: 1 };
            libc::sched_setscheduler(0, libc::SCHED_FIFO, &p);
            Ok(())
        });
    }
    let child = cmd
        .arg("-f")
        .arg("-c")
        .arg(paths.config())
        .arg("-s")
        .arg(paths.control())
        .arg("-P")
        .arg(paths.bird_pid())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bird.display()))?;
    Ok(Some(child))
}

fn stop_child(c: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn flush(nl: &Netlink, table: u32, why: &str) {
    match nl.flush_routes(table) {
        Ok(0) => {}
        Ok(n) => log::warn!("speaker guard: withdrew {n} routes ({why})"),
        Err(e) => log::error!("speaker guard: emptying table {table} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        for m in [
            ToGuard::Hello,
            ToGuard::Hold(123),
            ToGuard::Flush,
            ToGuard::Stop,
        ] {
            assert_eq!(ToGuard::decode(&m.encode()), Some(m));
        }
        for bad in ["", "hold", "hold x", "hold 1 2", "stop now", "HELLO"] {
            assert_eq!(ToGuard::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_hold_that_runs_out_withdraws_once_and_forever_never_does() {
        let mut w = Watch::default();
        w.hold(1_000);
        assert!(!w.expired(999));
        assert!(w.expired(1_000));
        assert!(!w.expired(2_000), "once");
        w.hold(FOREVER);
        assert!(!w.expired(u64::MAX - 1));
        w.hold(5_000_000);
        assert_eq!(w.wait(4_000_000), Duration::from_millis(1));
        assert_eq!(w.wait(0), Duration::from_millis(5));
    }
}
