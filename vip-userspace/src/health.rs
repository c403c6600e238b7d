//! Health tracking: a group faults (gives its VIPs up) when a check fails `fall`
//! times in a row, and recovers after `rise` successes. Checks: the interface's
//! link state, a command (exit 0 is healthy, killed at its timeout), a TCP connect.

use std::{process::Stdio, time::Duration};

use tokio::sync::mpsc;

use crate::config::Check;

/// Rise/fall hysteresis for one check. Unknown until its first result.
#[derive(Debug, Clone)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    ok: Option<bool>,
    streak: u32,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32) -> Self {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            ok: None,
            streak: 0,
        }
    }

    /// Feeds one result; returns the new state when it changes.
    pub fn feed(&mut self, success: bool) -> Option<bool> {
        match self.ok {
            None => {
                self.ok = Some(success);
                self.streak = 0;
                Some(success)
            }
            Some(ok) if ok == success => {
                self.streak = 0;
                None
            }
            Some(_) => {
                self.streak += 1;
                let need = if success { self.rise } else { self.fall };
                if self.streak >= need {
                    self.ok = Some(success);
                    self.streak = 0;
                    Some(success)
                } else {
                    None
                }
            }
        }
    }

    pub fn state(&self) -> Option<bool> {
        self.ok
    }
}

/// A check result on its way to the agent: (group name, check name, success, detail).
pub type Report = (String, &'static str, bool, String);

/// Runs a command check forever, reporting each result.
pub async fn run_script(group: String, check: Check, tx: mpsc::Sender<Report>) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (ok, detail) = script_once(&check).await;
        if tx
            .send((group.clone(), "track_script", ok, detail))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn script_once(check: &Check) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(&check.target[0]);
    cmd.args(&check.target[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot run {:?}: {e}", check.target[0])),
    };
    match tokio::time::timeout(check.timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => (true, "exit 0".into()),
        Ok(Ok(out)) => (false, format!("{}", out.status)),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (
            false,
            format!("timed out after {} ms", check.timeout.as_millis()),
        ),
    }
}

/// Runs a TCP connect check forever, reporting each result.
pub async fn run_tcp(group: String, check: Check, tx: mpsc::Sender<Report>) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let addr = check.target[0].clone();
    loop {
        tick.tick().await;
        let r = tokio::time::timeout(check.timeout, tokio::net::TcpStream::connect(&addr)).await;
        let (ok, detail) = match r {
            Ok(Ok(_)) => (true, format!("connected to {addr}")),
            Ok(Err(e)) => (false, format!("connect {addr}: {e}")),
            Err(_) => (
                false,
                format!(
                    "connect {addr}: timed out after {} ms",
                    check.timeout.as_millis()
                ),
            ),
        };
        if tx
            .send((group.clone(), "track_tcp", ok, detail))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Polls the interface's operational state for one group.
pub async fn run_interface(
    group: String,
    iface: String,
    every: Duration,
    tx: mpsc::Sender<Report>,
) {
    let path = format!("/sys/class/net/{iface}/operstate");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let state = tokio::fs::read_to_string(&path)
            .await
            .unwrap_or_else(|_| "missing".into());
        let state = state.trim().to_string();
        let ok = matches!(state.as_str(), "up" | "unknown");
        if tx
            .send((
                group.clone(),
                "track_interface",
                ok,
                format!("{iface} is {state}"),
            ))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.feed(true), Some(true));
        assert_eq!(t.feed(false), None);
        assert_eq!(t.feed(false), None);
        assert_eq!(t.feed(true), None, "a success resets the failure streak");
        assert_eq!(t.feed(false), None);
        assert_eq!(t.feed(false), None);
        assert_eq!(t.feed(false), Some(false));
        assert_eq!(t.feed(true), None);
        assert_eq!(t.feed(true), Some(true));
    }

    #[tokio::test]
    async fn script_results() {
        let c = |argv: &[&str], timeout_ms| Check {
            target: argv.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(timeout_ms),
            rise: 1,
            fall: 1,
        };
        assert!(script_once(&c(&["true"], 1000)).await.0);
        assert!(!script_once(&c(&["false"], 1000)).await.0);
        let (ok, why) = script_once(&c(&["sleep", "5"], 50)).await;
        assert!(!ok && why.contains("timed out"), "{why}");
        let (ok, why) = script_once(&c(&["/nonexistent/check"], 50)).await;
        assert!(!ok && why.contains("cannot run"), "{why}");
    }
}
