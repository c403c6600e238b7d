//! Health tracking: a group faults (gives its VIPs up) when a check fails `fall`
//! times in a row, and recovers after `rise` successes. Checks: the interface's
//! link state, a command (exit 0 is healthy, killed at its timeout), a TCP connect.
//!
//! **A check says what the service does, never what the agent lacks.** Each run ends
//! in a [`Verdict`]: healthy, failing, or *unchecked*: the agent could not find out,
//! because it ran out of something itself (descriptors, memory, processes, local
//! ports: `exhaustion::ran_out`) or for a reason that says nothing about the service.
//! An unchecked run is not reported to the group: the check keeps its last result and
//! its rise/fall streak. It is logged (at most once per 10 s per check, with the
//! number left out) and counted (`health_checks_unchecked` in `vip status`'s
//! `global`). Before this, 1,100 idle connections to the metrics port made the agent
//! run out of descriptors, the interface check could not open sysfs, called the
//! interface missing, and the group faulted over to the standby. Precisely:
//!
//! * `track_interface` reads `/sys/class/net/IFACE/operstate`: `up` or `unknown` is
//!   healthy, any other state failing. It is *missing* (failing) only when the kernel
//!   says the interface does not exist: the file is not there (ENOENT: sysfs has no
//!   such directory) or its device is gone (ENODEV, ENXIO). Any other error (EMFILE,
//!   ENFILE, ENOMEM, EACCES, EIO...) is unchecked.
//! * `track_script`: exit 0 is healthy; another exit status, a signal or the timeout
//!   is failing, and so is a command that cannot be run as configured (not found, not
//!   executable: ENOENT, EACCES, ENOEXEC...), since it will never pass. A command that
//!   could not be started because the agent ran out (EMFILE and ENFILE for its
//!   standard streams, EAGAIN from fork at a process limit, ENOMEM), or whose exit
//!   could not be waited for, is unchecked.
//! * `track_tcp`: a connection is healthy; refused, reset, unreachable or timed out is
//!   failing. When the agent could not make the socket or find a local port (EMFILE,
//!   ENFILE, ENOBUFS, ENOMEM, EAGAIN, EADDRNOTAVAIL), it is unchecked.

use std::{io, process::Stdio, time::Duration};

use tokio::sync::mpsc;

use crate::{
    config::Check,
    exhaustion::{self, LogEvery},
};

/// What one run of a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy(String),
    Failing(String),
    /// The agent could not find out (see the module's doc); the last result stands.
    Unchecked(String),
}

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

/// One check's results on their way to the agent: unchecked runs are logged and
/// counted here, not sent.
struct Reporter {
    group: String,
    check: &'static str,
    tx: mpsc::Sender<Report>,
    log: LogEvery,
}

impl Reporter {
    fn new(group: String, check: &'static str, tx: mpsc::Sender<Report>) -> Self {
        Reporter {
            group,
            check,
            tx,
            log: LogEvery::default(),
        }
    }

    /// Passes a result on; false once the agent is gone.
    async fn report(&mut self, v: Verdict) -> bool {
        let (ok, detail) = match v {
            Verdict::Healthy(d) => (true, d),
            Verdict::Failing(d) => (false, d),
            Verdict::Unchecked(why) => {
                exhaustion::count_unchecked();
                if let Some(skipped) = self.log.allow() {
                    let more = if skipped > 0 {
                        format!(" ({skipped} more times since the last report)")
                    } else {
                        String::new()
                    };
                    log::warn!(
                        "group {}: {} could not check: {why}{more}; its last result stands",
                        self.group,
                        self.check
                    );
                }
                return !self.tx.is_closed();
            }
        };
        self.tx
            .send((self.group.clone(), self.check, ok, detail))
            .await
            .is_ok()
    }
}

/// Runs a command check forever, reporting each result.
pub async fn run_script(group: String, check: Check, tx: mpsc::Sender<Report>) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Reporter::new(group, "track_script", tx);
    loop {
        tick.tick().await;
        if !out.report(script_once(&check).await).await {
            return;
        }
    }
}

async fn script_once(check: &Check) -> Verdict {
    let mut cmd = tokio::process::Command::new(&check.target[0]);
    cmd.args(&check.target[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    exhaustion::fd_limit_for_child(&mut cmd);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return spawn_failed(&check.target[0], &e),
    };
    match tokio::time::timeout(check.timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Verdict::Healthy("exit 0".into()),
        Ok(Ok(out)) => Verdict::Failing(format!("{}", out.status)),
        Ok(Err(e)) => Verdict::Unchecked(format!("waiting for {:?}: {e}", check.target[0])),
        Err(_) => Verdict::Failing(format!("timed out after {} ms", check.timeout.as_millis())),
    }
}

/// A command that could not be started: the agent's shortage, or a command that
/// cannot run as configured.
fn spawn_failed(program: &str, e: &io::Error) -> Verdict {
    let detail = format!("cannot run {program:?}: {e}");
    if exhaustion::ran_out(e) {
        Verdict::Unchecked(detail)
    } else {
        Verdict::Failing(detail)
    }
}

/// Runs a TCP connect check forever, reporting each result.
pub async fn run_tcp(group: String, check: Check, tx: mpsc::Sender<Report>) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let addr = check.target[0].clone();
    let mut out = Reporter::new(group, "track_tcp", tx);
    loop {
        tick.tick().await;
        let r = tokio::time::timeout(check.timeout, tokio::net::TcpStream::connect(&addr)).await;
        let verdict = match r {
            Ok(Ok(_)) => Verdict::Healthy(format!("connected to {addr}")),
            Ok(Err(e)) => connect_failed(&addr, &e),
            Err(_) => Verdict::Failing(format!(
                "connect {addr}: timed out after {} ms",
                check.timeout.as_millis()
            )),
        };
        if !out.report(verdict).await {
            return;
        }
    }
}

/// A connect that failed: the service's or the network's answer, or the agent's
/// shortage.
fn connect_failed(addr: &str, e: &io::Error) -> Verdict {
    let detail = format!("connect {addr}: {e}");
    if exhaustion::ran_out(e) {
        Verdict::Unchecked(detail)
    } else {
        Verdict::Failing(detail)
    }
}

/// Polls the BGP speaker for a group announced only over BGP (`track_bgp`, added by
/// itself): the node can declare the VIPs only while at least one session is
/// Established, so a node whose speaker is down or whose sessions all are gives the
/// VIPs up (a standby that can announce takes them). The speaker's control socket is
/// asked on a blocking thread, bounded by its timeout.
pub async fn run_bgp(
    group: String,
    source: crate::speaker::StatusSource,
    every: Duration,
    tx: mpsc::Sender<Report>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Reporter::new(group, "track_bgp", tx);
    loop {
        tick.tick().await;
        let src = source.clone();
        let verdict = match tokio::task::spawn_blocking(move || src.sessions()).await {
            Ok(r) => bgp_verdict(r),
            Err(e) => Verdict::Unchecked(format!("asking the speaker: {e}")),
        };
        if !out.report(verdict).await {
            return;
        }
    }
}

/// Healthy while at least one session is Established; a speaker that does not
/// answer is failing, unless the agent ran out of something to ask it with.
fn bgp_verdict(r: anyhow::Result<Vec<crate::speaker::Session>>) -> Verdict {
    match r {
        Ok(sessions) => {
            let up: Vec<String> = sessions
                .iter()
                .filter(|s| s.established)
                .map(|s| s.neighbor.to_string())
                .collect();
            if up.is_empty() {
                let all: Vec<String> = sessions
                    .iter()
                    .map(|s| format!("{}: {}", s.neighbor, s.state))
                    .collect();
                Verdict::Failing(format!(
                    "no BGP session is established ({})",
                    all.join(", ")
                ))
            } else {
                Verdict::Healthy(format!("established with {}", up.join(", ")))
            }
        }
        Err(e) => {
            let ran_out = e
                .chain()
                .filter_map(|c| c.downcast_ref::<io::Error>())
                .any(exhaustion::ran_out);
            let detail = format!("the speaker does not answer: {e:#}");
            if ran_out {
                Verdict::Unchecked(detail)
            } else {
                Verdict::Failing(detail)
            }
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
    let mut out = Reporter::new(group, "track_interface", tx);
    loop {
        tick.tick().await;
        let verdict = interface_state(&iface, tokio::fs::read_to_string(&path).await);
        if !out.report(verdict).await {
            return;
        }
    }
}

/// The verdict on reading an interface's operstate.
fn interface_state(iface: &str, read: io::Result<String>) -> Verdict {
    match read {
        Ok(state) => {
            let state = state.trim();
            if matches!(state, "up" | "unknown") {
                Verdict::Healthy(format!("{iface} is {state}"))
            } else {
                Verdict::Failing(format!("{iface} is {state}"))
            }
        }
        Err(e) if interface_missing(&e) => Verdict::Failing(format!("{iface} is missing")),
        Err(e) => Verdict::Unchecked(format!("reading the state of {iface}: {e}")),
    }
}

/// Whether reading an interface's sysfs attribute failed because the interface does
/// not exist: no such file (its directory is gone), or no such device.
fn interface_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENXIO))
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

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
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
        assert!(matches!(
            script_once(&c(&["true"], 1000)).await,
            Verdict::Healthy(_)
        ));
        assert!(matches!(
            script_once(&c(&["false"], 1000)).await,
            Verdict::Failing(_)
        ));
        let v = script_once(&c(&["sleep", "5"], 50)).await;
        assert!(
            matches!(&v, Verdict::Failing(why) if why.contains("timed out")),
            "{v:?}"
        );
        let v = script_once(&c(&["/nonexistent/check"], 50)).await;
        assert!(
            matches!(&v, Verdict::Failing(why) if why.contains("cannot run")),
            "{v:?}"
        );
        // The command runs with a soft descriptor limit select() can live with.
        let v = script_once(&c(&["sh", "-c", "test \"$(ulimit -Sn)\" -le 1024"], 1000)).await;
        assert!(matches!(v, Verdict::Healthy(_)), "{v:?}");
    }

    #[test]
    fn only_the_kernel_saying_so_makes_an_interface_missing() {
        let up = interface_state("eth0", Ok("up\n".into()));
        assert_eq!(up, Verdict::Healthy("eth0 is up".into()));
        assert!(matches!(
            interface_state("eth0", Ok("unknown\n".into())),
            Verdict::Healthy(_)
        ));
        let down = interface_state("eth0", Ok("down\n".into()));
        assert_eq!(down, Verdict::Failing("eth0 is down".into()));
        for code in [libc::ENOENT, libc::ENODEV, libc::ENXIO] {
            assert_eq!(
                interface_state("eth0", Err(os(code))),
                Verdict::Failing("eth0 is missing".into()),
                "{}",
                os(code)
            );
        }
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::EACCES,
            libc::EIO,
            libc::EINTR,
        ] {
            assert!(
                matches!(
                    interface_state("eth0", Err(os(code))),
                    Verdict::Unchecked(_)
                ),
                "{}",
                os(code)
            );
        }
        // The real thing: a name no interface has.
        let path = "/sys/class/net/vip-no-such-if/operstate";
        let v = interface_state("vip-no-such-if", std::fs::read_to_string(path));
        assert_eq!(v, Verdict::Failing("vip-no-such-if is missing".into()));
    }

    #[test]
    fn running_out_is_not_the_service_failing() {
        for code in [libc::EMFILE, libc::ENFILE, libc::EAGAIN, libc::ENOMEM] {
            assert!(
                matches!(spawn_failed("/c", &os(code)), Verdict::Unchecked(_)),
                "{}",
                os(code)
            );
        }
        for code in [libc::ENOENT, libc::EACCES, libc::ENOEXEC] {
            assert!(
                matches!(spawn_failed("/c", &os(code)), Verdict::Failing(_)),
                "{}",
                os(code)
            );
        }
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(
                matches!(
                    connect_failed("127.0.0.1:80", &os(code)),
                    Verdict::Unchecked(_)
                ),
                "{}",
                os(code)
            );
        }
        for code in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ETIMEDOUT,
        ] {
            assert!(
                matches!(
                    connect_failed("127.0.0.1:80", &os(code)),
                    Verdict::Failing(_)
                ),
                "{}",
                os(code)
            );
        }
    }

    /// Unchecked runs reach neither the agent nor the tracker; the next real result
    /// does, and the count went up.
    #[tokio::test]
    async fn unchecked_runs_are_counted_not_reported() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut r = Reporter::new("web".into(), "track_interface", tx);
        let count = || exhaustion::counters()[2].1;
        let before = count();
        assert!(r.report(Verdict::Unchecked("EMFILE".into())).await);
        assert!(r.report(Verdict::Unchecked("EMFILE".into())).await);
        assert!(rx.try_recv().is_err(), "an unchecked run was reported");
        assert!(count() >= before + 2);
        assert!(r.report(Verdict::Healthy("eth0 is up".into())).await);
        let got = rx.try_recv().unwrap();
        assert_eq!(
            got,
            ("web".into(), "track_interface", true, "eth0 is up".into())
        );
    }
}
