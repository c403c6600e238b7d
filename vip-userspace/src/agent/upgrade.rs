//! Hitless upgrade through the service manager's reload, as HAProxy's master-worker
//! mode and nginx's binary upgrade do it: `systemctl reload vip` (SIGHUP) or
//! `vip reload` re-executes the agent's binary from disk in the same process (so the
//! service manager keeps tracking it), and the new image adopts the pinned data plane
//! as `vip restart` does, then applies the config.
//!
//! Before anything changes, the config passes the running agent's own checks and the
//! binary on disk must run `check-config` on it (off the loop); if either refuses, the
//! running agent keeps running and says why. Only then are the peers told to hold and
//! the leases extended, and the process re-executes. Without a pinned data plane a
//! re-exec would interrupt traffic, so the config is applied in place instead.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::sync::{mpsc, oneshot};

use super::{Agent, Event, Exit};
use crate::control::Response;

/// How long peers hold and leases last across the re-exec.
const HOLD: Duration = Duration::from_secs(5);
/// How long the new binary may take to check the config.
const PREFLIGHT: Duration = Duration::from_secs(10);

/// The binary this agent runs and its command line, as started.
#[derive(Debug, Clone)]
pub struct Binary {
    pub exe: PathBuf,
    pub argv: Vec<OsString>,
}

impl Binary {
    /// This process's binary path (read at start: once replaced on disk, the running
    /// image's own link says "(deleted)") and arguments.
    pub fn current() -> Option<Self> {
        Some(Binary {
            exe: std::env::current_exe().ok()?,
            argv: std::env::args_os().collect(),
        })
    }
}

/// Runs the binary on disk: `vip check-config CONFIG` must succeed.
fn preflight(bin: &Binary, config: &std::path::Path) -> Result<()> {
    let mut child = Command::new(&bin.exe)
        .arg("check-config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the new binary {}", bin.exe.display()))?;
    let deadline = Instant::now() + PREFLIGHT;
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for the new binary")? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the new binary {} did not check the config within {} s",
                bin.exe.display(),
                PREFLIGHT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        bail!(
            "the new binary {} refused to start ({status}): {}",
            bin.exe.display(),
            err.trim()
        );
    }
    Ok(())
}

/// Replaces this process with the binary on disk; returns only if that failed.
pub(super) fn exec(bin: &Binary) -> std::io::Error {
    Command::new(&bin.exe).args(bin.argv.iter().skip(1)).exec()
}

impl Agent {
    /// SIGHUP or `vip reload` (`reply` is the requester, none for a signal): the
    /// config is read and checked against the host off the loop (`reload::read`),
    /// then planned and applied on it ([`Agent::reload_read`]), in the order asked.
    pub(super) fn begin_reload(&mut self, reply: Option<oneshot::Sender<Response>>) {
        let Some(events) = self.events.clone() else {
            // Before the loop's helpers exist: here and now.
            let read = super::reload::read(&self.opts);
            return self.reload_read(read, reply);
        };
        let opts = self.opts.clone();
        tokio::task::spawn_blocking(move || {
            let read = super::reload::read(&opts);
            let _ = events.blocking_send(Event::ReloadRead(Box::new(read), reply));
        });
    }

    /// A reload's config, read and checked: planned against what runs, then applied
    /// in place or by re-executing the binary.
    pub(super) fn reload_read(
        &mut self,
        read: super::reload::Read,
        reply: Option<oneshot::Sender<Response>>,
    ) {
        let answer = |reply: Option<oneshot::Sender<Response>>, r: Response| {
            match (&r.message, &r.error) {
                (Some(m), _) => log::info!("reload: {m}"),
                (_, Some(e)) => log::error!("reload: {e}"),
                _ => {}
            }
            if let Some(tx) = reply {
                let _ = tx.send(r);
            }
        };
        // The config must pass our own checks first; a refused one changes nothing.
        let plan = match self.plan(read) {
            Ok(p) => p,
            Err(e) => {
                return answer(
                    reply,
                    Response::error(format!("reload refused, running state kept: {e:#}")),
                )
            }
        };
        let bin = match (&self.binary, self.dp.pin_dir()) {
            (Some(b), Some(_)) => b.clone(),
            _ => {
                if let Some(g) = plan.new_balanced().filter(|_| !self.balance_enabled) {
                    return answer(
                        reply,
                        Response::error(format!(
                            "reload refused, running state kept: group[{g}].balance: the running data plane was loaded without balancing; restart the agent (or pin the data plane: a reload then re-executes the binary, which loads it anew)"
                        )),
                    );
                }
                if plan.tunnel_src(&self.iface) != self.tunnel_src {
                    return answer(
                        reply,
                        Response::error(
                            "reload refused, running state kept: a balanced group's peers on another segment changed, and the running data plane's tunnel address (set when it was loaded) no longer matches; restart the agent (or pin the data plane)".to_string(),
                        ),
                    );
                }
                let r = match self.apply_plan(plan) {
                    Ok(s) => Response::ok(format!(
                        "{s} (applied in place: the data plane is not pinned, so the binary is not re-executed)"
                    )),
                    Err(e) => Response::error(format!("{e:#}")),
                };
                return answer(reply, r);
            }
        };
        drop(plan);
        // The binary on disk checks the config off the loop; `upgrade_ready` goes on.
        let (config, events) = (self.opts.config.clone(), self.events.clone());
        tokio::task::spawn_blocking(move || {
            let result = preflight(&bin, &config).map_err(|e| format!("{e:#}"));
            if let Some(tx) = events {
                let _ = tx.blocking_send(Event::Upgrade(result, reply));
            }
        });
    }

    /// The binary on disk accepted the config: peers hold, then the loop re-executes.
    pub(super) fn upgrade_ready(
        &mut self,
        result: Result<(), String>,
        reply: Option<oneshot::Sender<Response>>,
    ) {
        let r = match result {
            Err(e) => {
                let msg = format!("reload refused, the running agent continues: {e}");
                log::error!("reload: {msg}");
                Response::error(msg)
            }
            Ok(()) => {
                self.prepare_restart(HOLD);
                self.exit = Some(Exit::Reexec);
                let exe = self.binary.as_ref().map(|b| b.exe.display().to_string());
                let msg = format!(
                    "re-executing {} (peers hold up to {} ms): the new agent adopts the data plane and applies the config",
                    exe.unwrap_or_default(),
                    HOLD.as_millis()
                );
                log::info!("reload: {msg}");
                Response::ok(msg)
            }
        };
        if let Some(tx) = reply {
            let _ = tx.send(r);
        }
    }

    /// The re-exec failed: carry on as before (the peers' hold runs out by itself).
    pub(super) fn resume_after_failed_exec(&mut self, err: std::io::Error) {
        log::error!("reload: re-executing the binary failed ({err}); the running agent continues");
        self.exit = None;
        for gi in 0..self.groups.len() {
            self.renew(gi);
        }
    }

    /// Where a restarting agent leaves its peers' replay state for the next one: beside
    /// the control socket (a directory only root writes).
    fn replay_state_path(&self) -> PathBuf {
        let mut p = self.cfg.node.control_socket.clone().into_os_string();
        p.push(".replay");
        PathBuf::from(p)
    }

    /// Before a restart or a re-exec: every group's replay state (the peers' epochs),
    /// so that the next agent refuses what this one refused. Losing it costs only a
    /// challenge per peer (see `crate::advert`).
    pub(super) fn save_replay_state(&self) {
        let state: serde_json::Map<String, serde_json::Value> = self
            .groups
            .iter()
            .filter(|g| g.key.is_some())
            .map(|g| (g.cfg.name.clone(), g.replay.save()))
            .collect();
        let path = self.replay_state_path();
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(serde_json::Value::Object(state).to_string().as_bytes())
        };
        if let Err(e) = write() {
            log::warn!(
                "saving the replay state to {}: {e}; the next agent challenges its peers' epochs anew",
                path.display()
            );
        }
    }

    /// At start: the replay state a restarting predecessor left (read once, then
    /// removed; anything unreadable is ignored).
    pub(super) fn restore_replay_state(&mut self) {
        let path = self.replay_state_path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        let _ = std::fs::remove_file(&path);
        let Ok(serde_json::Value::Object(state)) = serde_json::from_str(&text) else {
            log::warn!("{}: not a replay state; ignored", path.display());
            return;
        };
        for g in self.groups.iter_mut().filter(|g| g.key.is_some()) {
            if let Some(saved) = state.get(&g.cfg.name) {
                g.replay.restore(saved);
            }
        }
        log::info!("took over the replay state of the agent before (peers' epochs)");
    }

    /// Where the loop's helpers send their events (kept for later helpers).
    pub(super) fn set_events(&mut self, tx: &mpsc::Sender<Event>) {
        self.events = Some(tx.clone());
    }
}
