//! Processes the lab starts, stopped by PID when dropped, and the vip agent.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::Netns;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The `vip` binary under test: `$VIP_BIN`, else the workspace's release build.
pub fn vip_bin() -> PathBuf {
    let p = std::env::var_os("VIP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/vip"));
    assert!(
        p.is_file(),
        "{} does not exist: build it with `cargo build --release` (`cargo xtask test` does) or set VIP_BIN",
        p.display()
    );
    p
}

/// Debian's libfaketime (package `faketime`, which `cargo xtask setup` installs),
/// wherever the architecture puts it: preloaded through `env` (which execs; the
/// `faketime` wrapper forks, and the lab could not stop the agent by its PID).
pub fn libfaketime() -> Result<PathBuf> {
    fs::read_dir("/usr/lib")?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .context(
            "libfaketime is missing (Debian package faketime; `cargo xtask setup` installs it)",
        )
}

/// A child process; SIGTERM then SIGKILL on drop, always reaped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.into(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal by PID.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .with_context(|| format!("signalling {} ({})", self.name, self.pid()))
    }

    /// Exit status if the process has ended.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// A `vip agent` running in a namespace with a config of the test's making.
pub struct Agent {
    pub proc: Proc,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    dir: PathBuf,
}

impl Agent {
    /// Writes `config` (its `control_socket` is set here) and starts the agent; returns
    /// once the agent answers on its socket.
    pub fn start(ns: &Netns, name: &str, config: &str) -> Result<Self> {
        Self::start_with(ns, name, config, &[])
    }

    pub fn start_with(ns: &Netns, name: &str, config: &str, extra: &[&str]) -> Result<Self> {
        Self::start_wrapped(ns, name, config, &[], extra)
    }

    /// Starts the agent under a wrapper command (e.g. `faketime -f -1h`).
    pub fn start_wrapped(
        ns: &Netns,
        name: &str,
        config: &str,
        wrapper: &[&str],
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_full(ns, name, config, &vip_bin(), wrapper, extra)
    }

    /// Starts the agent from the binary `bin` (an upgrade test replaces it on disk).
    pub fn start_full(
        ns: &Netns,
        name: &str,
        config: &str,
        bin: &std::path::Path,
        wrapper: &[&str],
        extra: &[&str],
    ) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "vip-lab-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir)?;
        let socket = dir.join("vip.sock");
        let log = dir.join("agent.log");
        let cfg_path = dir.join("vip.toml");
        let config = config.replacen(
            "[node]",
            &format!("[node]\ncontrol_socket = \"{}\"", socket.display()),
            1,
        );
        fs::write(&cfg_path, config)?;
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.extend([
            bin.to_str().unwrap_or("vip"),
            "agent",
            "--config",
            cfg_path.to_str().unwrap_or(""),
        ]);
        let mut cmd = ns.command(&argv);
        cmd.args(extra);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd.stdout(Stdio::null()).stderr(fs::File::create(&log)?);
        let proc = Proc::spawn(&format!("agent {name}"), cmd)?;
        let mut agent = Agent {
            proc,
            socket,
            log,
            config: cfg_path,
            dir,
        };
        // Generous: a node with 20,000 VIPs adds as many addresses, which the kernel keeps
        // in a list (quadratic); the loop returns as soon as the agent answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = agent.proc.try_status() {
                bail!(
                    "agent {name} exited ({st}) during start:\n{}",
                    agent.log_text()
                );
            }
            if agent
                .cli(&["status", "--json"])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {name} did not answer within 60 s:\n{}",
                    agent.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `text` as this agent's config file (for `vip reload` or SIGHUP), with
    /// the control socket line the lab gave it.
    pub fn write_config(&self, text: &str) -> Result<()> {
        let line = format!("[node]\ncontrol_socket = \"{}\"", self.socket.display());
        std::fs::write(&self.config, text.replacen("[node]", &line, 1))?;
        Ok(())
    }

    /// Runs `vip ARGS --socket SOCKET` (from the root namespace: the socket is a file).
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Command::new(vip_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .context("running the vip CLI")
    }

    /// `vip status --json`, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.cli(&["status", "--json"])?;
        if !out.status.success() {
            bail!(
                "vip status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// One VIP's entry in the status, as JSON.
    pub fn vip_status(&self, address: &str) -> Result<serde_json::Value> {
        let s = self.status()?;
        for g in s["groups"].as_array().into_iter().flatten() {
            for v in g["vips"].as_array().into_iter().flatten() {
                if v["address"] == address {
                    return Ok(v.clone());
                }
            }
        }
        bail!("no VIP {address} in status {s}")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the agent (SIGTERM) and returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.stop(Duration::from_secs(5))
    }
}

/// Stops `agents` together: SIGTERM to all at once, then waits up to `grace` for every
/// one (agents that would hand over to each other stop in one handover time, not one
/// each); any still running is killed. Returns why each agent that did not stop
/// cleanly (in time, with success) did not.
pub fn stop_together(agents: &mut [Agent], grace: Duration) -> Vec<String> {
    for a in agents.iter() {
        let _ = a.proc.signal(nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && agents.iter_mut().any(|a| a.proc.try_status().is_none()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut bad = Vec::new();
    for a in agents.iter_mut() {
        match a.proc.try_status() {
            None => {
                bad.push(format!(
                    "{}: still running {} ms after SIGTERM",
                    a.proc.name,
                    grace.as_millis()
                ));
                let _ = a.proc.signal(nix::sys::signal::Signal::SIGKILL);
            }
            Some(st) if !st.success() => bad.push(format!("{}: {st} after SIGTERM", a.proc.name)),
            Some(_) => {}
        }
    }
    bad
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.proc.name, self.log_text());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
