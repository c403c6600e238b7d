//! A local user must not be able to force a failover. An unprivileged process on the
//! active node (`nobody`) opens more than a thousand idle TCP connections to the
//! agent's metrics endpoint and holds them. Judged from outside the agent: `vip
//! status` still answers at once, neither node changes state, the client's ARP for
//! the VIP is answered by the active alone, and the agent does not burn a core.
//!
//! Two cases: the descriptor limits systemd gives a service that does not set its own
//! (soft 1,024, hard 524,288: the agent raises its soft limit), and a hard limit of
//! 128 that it cannot raise, where its descriptor table really fills (`EMFILE`).

mod common;

use std::{
    fs,
    io::{Read, Write},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use lab::{frames, privileged, vip_bin, wait_for, Agent, Capture, Lan, Netns, Proc};

/// Where a's agent serves metrics: loopback of a's namespace, where any local user
/// can connect.
const METRICS: &str = "127.0.0.1:9477";
/// Connections the attacker opens and holds.
const CONNECTIONS: usize = 1100;
/// How long `vip status` may take while the connections are held.
const STATUS_BOUND: Duration = Duration::from_secs(2);
/// The agent's CPU use over the measuring window, as a share of one core, above which
/// it is taken to spin.
const MAX_CPU_SHARE: f64 = 0.2;

/// An elected pair (a active with the metrics endpoint, started under `wrapper`;
/// b standby) and the client c.
fn elected_pair(wrapper: &[&str]) -> (Lan, Agent, Agent) {
    let lan = lan();
    let all = ["a", "b"];
    // The default advert interval: this is not a timing test, and the machine may be
    // loaded (20 ms, the other suites' interval, flaps at a load of 7 on 2 cores).
    let cfg = |me: &str, prio: u8, node: &str| {
        elected(&lan, me, &all, prio, node, "").replace(
            &format!("advert_interval_ms = {INTERVAL}"),
            "advert_interval_ms = 100",
        )
    };
    let a = Agent::start_wrapped(
        &lan.host("a").ns,
        "a",
        &cfg("a", 200, &format!("metrics_listen = \"{METRICS}\"")),
        wrapper,
        &[],
    )
    .expect("starting a");
    let b = Agent::start(&lan.host("b").ns, "b", &cfg("b", 100, "")).expect("starting b");
    expect_states(&[("a", &a), ("b", &b)], &["active", "standby"]);
    (lan, a, b)
}

/// The attacker: a shell running as `nobody` in `ns` that opens `n` TCP connections
/// to `addr` (bash's /dev/tcp: a blocking connect each), says `ready`, and holds them
/// until it is stopped. Its output goes to a file the test reads.
struct Flood {
    proc: Proc,
    out: PathBuf,
}

impl Flood {
    fn start(ns: &Netns, addr: &str, n: usize) -> Flood {
        let (host, port) = addr.split_once(':').unwrap();
        let out =
            std::env::temp_dir().join(format!("vip-flood-{}-{}", std::process::id(), ns.name));
        let script = r#"for i in $(seq 1 "$3"); do
  exec {fd}<>"/dev/tcp/$1/$2" || { echo "failed at $i"; exit 1; }
done
echo "ready $(ls /proc/$$/fd | wc -l) uid=$(id -u)"
read -r _"#;
        let mut cmd = ns.command(&[
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            "bash",
            "-c",
            script,
            "flood",
            host,
            port,
            &n.to_string(),
        ]);
        // Held open by the test: `read` returns only when the test is gone.
        cmd.stdin(Stdio::piped())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(Stdio::null());
        let proc = Proc::spawn("flood (nobody)", cmd).unwrap();
        Flood { proc, out }
    }

    /// Waits until every connection is open: the shell's report, or why not.
    fn wait_ready(&mut self, timeout: Duration) -> Result<String, String> {
        let text = wait_for(timeout, || {
            let text = fs::read_to_string(&self.out).unwrap_or_default();
            if text.contains("ready") || text.contains("failed") {
                return Some(text);
            }
            self.proc
                .try_status()
                .map(|st| format!("exited {st}: {text}"))
        })
        .unwrap_or_else(|| format!("not all connected after {timeout:?}"));
        if text.starts_with("ready") && text.contains("uid=65534") {
            Ok(text.trim().to_string())
        } else {
            Err(text)
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(3));
        let _ = fs::remove_file(&self.out);
    }
}

/// `vip status --json` on `agent`, or why not within `bound` (the CLI is killed then).
fn status_within(agent: &Agent, bound: Duration) -> Result<(serde_json::Value, Duration), String> {
    let t0 = Instant::now();
    let mut child = Command::new(vip_bin())
        .args(["status", "--json", "--socket"])
        .arg(&agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            let took = t0.elapsed();
            let mut out = String::new();
            let mut err = String::new();
            child.stdout.take().unwrap().read_to_string(&mut out).ok();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            if !st.success() {
                return Err(format!("vip status failed after {took:?}: {err}"));
            }
            return serde_json::from_str(&out)
                .map(|v| (v, took))
                .map_err(|e| format!("{e}: {out}"));
        }
        if t0.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("vip status did not answer within {bound:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn transitions(status: &serde_json::Value) -> u64 {
    status["groups"][0]["transitions"].as_u64().unwrap()
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is the first;
    // utime and stime are fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64((f[0] + f[1]) as f64 / hz)
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soft and hard "Max open files" of a process.
fn nofile(pid: u32) -> (String, String) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let l = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let v: Vec<&str> = l.split_whitespace().collect();
    (v[3].to_string(), v[4].to_string())
}

/// Who answers an ARP request for the VIP, as seen on the client's wire.
fn answerers(lan: &Lan) -> Vec<vip::mac::Mac> {
    let c = lan.host("c");
    let cap = Capture::open(&c.ns, "eth0").unwrap();
    cap.clear();
    cap.send(&frames::arp_request(mac(&c.mac), c.ip4, VIP4))
        .unwrap();
    arp_replies_for(&cap.collect(Duration::from_millis(150), |_| true), VIP4)
}

/// One scrape of a's metrics endpoint, from a's namespace: the response's first line
/// and body, or the error.
fn scrape(ns: &Netns) -> Result<String, String> {
    ns.run_in(|| {
        let addr = METRICS.parse().unwrap();
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

/// What the agent counted of its own shortages (`exhaustion::counters`).
fn counters(status: &serde_json::Value) -> String {
    [
        "accept_errors",
        "connections_shed",
        "health_checks_unchecked",
    ]
    .map(|k| format!("{k} {}", status["global"][k]))
    .join(", ")
}

fn global(status: &serde_json::Value, key: &str) -> u64 {
    status["global"][key].as_u64().unwrap_or(0)
}

/// Watches a and b for a few seconds while the attack goes on: `vip status` on a
/// answers within the bound and a stays active and healthy, a does not spin, the
/// client's ARP for the VIP is answered by a alone, neither node changed state. What
/// went wrong, all of it.
fn hold_steady(lan: &Lan, a: &Agent, b: &Agent, before: (u64, u64), phase: &str) -> Vec<String> {
    let pid = a.proc.pid();
    let mut problems = Vec::new();
    let window = Duration::from_secs(4);
    let cpu0 = cpu_time(pid);
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut unanswered = 0;
    while t0.elapsed() < window {
        match status_within(a, STATUS_BOUND) {
            Ok((s, took)) => {
                slowest = slowest.max(took);
                if s["groups"][0]["state"] != "active" {
                    problems.push(format!(
                        "{phase}: a is {}: {}",
                        s["groups"][0]["state"], s["groups"][0]["reason"]
                    ));
                }
            }
            Err(e) => {
                unanswered += 1;
                if unanswered == 1 {
                    problems.push(format!("{phase}: {e}"));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let share = (cpu_time(pid) - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    eprintln!(
        "{phase}: status answered within {slowest:?} at worst ({unanswered} unanswered); a used {:.1} % of a core; {} descriptors",
        share * 100.0,
        fds(pid)
    );
    if share >= MAX_CPU_SHARE {
        problems.push(format!(
            "{phase}: a used {:.0} % of a core (an accept loop spinning?)",
            share * 100.0
        ));
    }
    let who = answerers(lan);
    if who != vec![mac(&lan.host("a").mac)] {
        problems.push(format!(
            "{phase}: the client's ARP for the VIP was answered by {who:?}, not by a ({}) alone",
            lan.host("a").mac
        ));
    }
    match status_within(a, STATUS_BOUND) {
        Ok((sa, _)) => {
            if transitions(&sa) != before.0 {
                problems.push(format!(
                    "{phase}: a changed state: {}",
                    sa["groups"][0]["transition_reasons"]
                ));
            }
            if sa["groups"][0]["healthy"] != true {
                problems.push(format!(
                    "{phase}: a is unhealthy: {}",
                    sa["groups"][0]["health"]
                ));
            }
            eprintln!("{phase}: a counted {}", counters(&sa));
        }
        Err(e) => problems.push(format!("{phase}, at the end: {e}")),
    }
    let (sb, _) = status_within(b, STATUS_BOUND).unwrap();
    if transitions(&sb) != before.1 || sb["groups"][0]["state"] != "standby" {
        problems.push(format!(
            "{phase}: b is {} after {}",
            sb["groups"][0]["state"], sb["groups"][0]["transition_reasons"]
        ));
    }
    problems
}

/// Sets the soft descriptor limit of a process (the hard one is kept).
fn set_soft_fd_limit(pid: u32, soft: u64, hard: u64) {
    let l = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit reads the struct it is given and writes nothing (no old limit).
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &l,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The lowest descriptor number a process does not use: the one the kernel hands
/// out next.
fn lowest_free_fd(pid: u32) -> u64 {
    let used: std::collections::BTreeSet<u64> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

/// The highest descriptor of a process open on /dev/null: the agent's spare (see
/// `vip::exhaustion::Gate::with_spare`), opened after its standard streams.
fn spare_fd(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = fs::read_link(e.path()).ok()?;
            (target == std::path::Path::new("/dev/null"))
                .then(|| e.file_name().to_str()?.parse().ok())
                .flatten()
        })
        .max()
        .expect("the agent holds no spare descriptor on /dev/null")
}

/// Keeps a process's descriptor table full: its soft limit is set to the lowest
/// descriptor it does not use, again every 50 ms, so every descriptor it tries to
/// open fails with EMFILE, and one it closes is taken away at the next turn. Only its
/// spare descriptor's number stays below the limit: the one thing the agent keeps for
/// itself (nothing in another process can take a descriptor from it; this stands for
/// everything in the agent using them up). The limit is restored on drop.
struct TableFull {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pid: u32,
    limit: u64,
}

impl TableFull {
    fn start(pid: u32, limit: u64) -> TableFull {
        let spare = spare_fd(pid);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                set_soft_fd_limit(pid, lowest_free_fd(pid).max(spare + 1), limit);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        TableFull {
            stop,
            thread: Some(thread),
            pid,
            limit,
        }
    }
}

impl Drop for TableFull {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        set_soft_fd_limit(self.pid, self.limit, self.limit);
    }
}

/// The attack and every assertion, for an agent `a` started under some limits; with
/// `fill` (a's hard limit), a second phase keeps a's descriptor table full while the
/// connections are held, so that EMFILE really happens. The agent's status at the end.
fn attack_changes_nothing(lan: &Lan, a: &Agent, b: &Agent, fill: Option<u64>) -> serde_json::Value {
    let pid = a.proc.pid();
    let before = (
        transitions(&a.status().unwrap()),
        transitions(&b.status().unwrap()),
    );
    eprintln!(
        "a at rest: {} descriptors, limits {:?}",
        fds(pid),
        nofile(pid)
    );

    let mut flood = Flood::start(&lan.host("a").ns, METRICS, CONNECTIONS);
    // Connections past the agent's cap and the kernel's backlog of 1,024 get in as
    // the agent closes idle ones. If they never do (an agent that stopped accepting),
    // the checks below say what that cost; the attack's success is asserted with them.
    let ready = flood.wait_ready(Duration::from_secs(30));
    eprintln!("attacker: {ready:?}; a: {} descriptors", fds(pid));
    let mut problems = hold_steady(lan, a, b, before, "under attack");
    if let Some(limit) = fill {
        let s0 = status_within(a, STATUS_BOUND).ok().map(|(s, _)| s);
        let full = TableFull::start(pid, limit);
        problems.extend(hold_steady(lan, a, b, before, "with its table full"));
        drop(full);
        let s1 = status_within(a, STATUS_BOUND).ok().map(|(s, _)| s);
        if let (Some(s0), Some(s1)) = (s0, s1) {
            for k in ["accept_errors", "health_checks_unchecked"] {
                if global(&s1, k) <= global(&s0, k) {
                    problems.push(format!(
                        "with its table full: {k} did not grow ({} -> {}): did EMFILE happen?",
                        global(&s0, k),
                        global(&s1, k)
                    ));
                }
            }
        }
    }
    if let Err(e) = ready {
        problems.push(format!(
            "the attacker did not open its {CONNECTIONS} connections: {e}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The connections close: metrics serves again.
    drop(flood);
    let served = wait_for(Duration::from_secs(10), || {
        scrape(&lan.host("a").ns)
            .ok()
            .filter(|r| r.starts_with("HTTP/1.1 200") && r.contains("vip_group_active"))
    });
    assert!(
        served.is_some(),
        "the metrics endpoint does not serve after the connections closed: {:?}",
        scrape(&lan.host("a").ns)
    );
    let end = a.status().unwrap();
    assert_eq!(transitions(&end), before.0);
    assert_eq!(transitions(&b.status().unwrap()), before.1);
    // No key in these configs: the agent said at start what that gives away.
    assert!(
        a.log_text().contains("group[web] has no auth_key_file"),
        "{}",
        a.log_text()
    );
    end
}

/// The hard descriptor limit of this process (systemd's default is 524,288; raising
/// a hard limit needs CAP_SYS_RESOURCE, which a test may not have).
fn hard_fd_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    l.rlim_max
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn idle_connections_under_systemd_default_limits_move_nothing() {
    privileged();
    // systemd's default for a service: a soft limit of 1,024 under a higher hard one.
    let hard = hard_fd_limit();
    assert!(
        hard > 4096,
        "this test needs a hard descriptor limit above 4,096, not {hard}"
    );
    let limits = format!("--nofile=1024:{hard}");
    let (lan, a, b) = elected_pair(&["prlimit", &limits, "--"]);
    attack_changes_nothing(&lan, &a, &b, None);
    // The agent raised its soft limit (to the hard one, at most 65,536) and said so.
    let want = hard.min(65_536).to_string();
    assert_eq!(nofile(a.proc.pid()), (want.clone(), hard.to_string()));
    assert!(
        a.log_text()
            .contains(&format!("descriptor limit raised from 1024 to {want}")),
        "{}",
        a.log_text()
    );
    drop((a, b));
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn idle_connections_that_exhaust_descriptors_move_nothing() {
    privileged();
    // A hard limit the agent cannot raise; then, while the connections are held, a
    // table kept full.
    let (lan, a, b) = elected_pair(&["prlimit", "--nofile=128:128", "--"]);
    let end = attack_changes_nothing(&lan, &a, &b, Some(128));
    assert_eq!(nofile(a.proc.pid()), ("128".into(), "128".into()));
    // The table really was full up to the metrics server's reserve: it shed
    // connections rather than take the descriptors the rest of the agent needs.
    assert!(
        end["global"]["connections_shed"].as_u64().unwrap() > 0,
        "the limit never bit: {}",
        counters(&end)
    );
    drop((a, b));
    teardown(lan);
}
