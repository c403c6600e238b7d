//! UDP probes across a failover: servers answer "who am I", a client probes the VIP at
//! a fixed interval and records who answered each probe.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::Netns;

/// Answers every datagram on `addr` (in its namespace) with `name` and the probe's
/// sequence number. Binds even while the VIP is not assigned (ip_nonlocal_bind).
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    pub fn start(ns: &Netns, addr: SocketAddr, name: &str) -> Result<Self> {
        let key = if addr.is_ipv4() {
            "net.ipv4.ip_nonlocal_bind"
        } else {
            "net.ipv6.ip_nonlocal_bind"
        };
        ns.sysctl(key, "1")?;
        let sock = ns
            .run_in(|| UdpSocket::bind(addr))
            .with_context(|| format!("binding {addr} in {}", ns.name))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let name = name.as_bytes().to_vec();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if n >= 8 {
                        let mut reply = buf[..8].to_vec();
                        reply.extend_from_slice(&name);
                        let _ = sock.send_to(&reply, from);
                    }
                }
            }
        });
        Ok(Responder {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One probe and its fate.
#[derive(Debug, Clone)]
pub struct Probe {
    pub seq: u64,
    pub sent: Duration,
    pub answered_by: Option<String>,
    pub received: Option<Duration>,
}

/// A client sending a probe every `interval` until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    sending: Arc<AtomicBool>,
    /// Answers so far per responder name, for tests to wait on while probing.
    answers: Arc<Mutex<HashMap<String, usize>>>,
    thread: Option<JoinHandle<Vec<Probe>>>,
    pub start: Instant,
}

impl Prober {
    pub fn start(ns: &Netns, to: SocketAddr, interval: Duration) -> Result<Self> {
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let sock = ns.run_in(|| UdpSocket::bind(bind))?;
        sock.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let sending = Arc::new(AtomicBool::new(true));
        let send_on = sending.clone();
        let answers = Arc::new(Mutex::new(HashMap::new()));
        let count = answers.clone();
        let start = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut probes: Vec<Probe> = Vec::new();
            let mut next = Instant::now();
            let mut buf = [0u8; 128];
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next && send_on.load(Ordering::Relaxed) {
                    let _ = sock.send_to(&seq.to_be_bytes(), to);
                    probes.push(Probe {
                        seq,
                        sent: now - start,
                        answered_by: None,
                        received: None,
                    });
                    seq += 1;
                    next += interval;
                }
                while let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if n < 8 {
                        continue;
                    }
                    let q = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                    if let Some(p) = probes.get_mut(q as usize) {
                        if p.answered_by.is_none() {
                            let by = String::from_utf8_lossy(&buf[8..n]).into_owned();
                            if let Ok(mut c) = count.lock() {
                                *c.entry(by.clone()).or_insert(0) += 1;
                            }
                            p.answered_by = Some(by);
                            p.received = Some(Instant::now() - start);
                        }
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            probes
        });
        Ok(Prober {
            stop,
            sending,
            answers,
            thread: Some(thread),
            start,
        })
    }

    /// How many probes `name` has answered so far.
    pub fn answers_from(&self, name: &str) -> usize {
        self.answers
            .lock()
            .map(|c| c.get(name).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Waits (up to `timeout`) until `name` answered `more` probes beyond those it had
    /// answered when called: traffic is seen flowing, instead of assumed after a sleep.
    pub fn wait_answers(&self, name: &str, more: usize, timeout: Duration) -> bool {
        let want = self.answers_from(name) + more;
        crate::wait_for(timeout, || (self.answers_from(name) >= want).then_some(())).is_some()
    }

    /// Stops probing, then waits a grace period for the answers in flight.
    pub fn finish(mut self) -> Vec<Probe> {
        self.sending.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a failover looked like from the client.
#[derive(Debug, Clone)]
pub struct Outage {
    /// Last answer from `from` to the first answer from `to` (by send time).
    pub outage: Duration,
    /// Probes sent in between that nobody answered.
    pub lost: usize,
    /// Probes answered by neither (over the whole run).
    pub unanswered_total: usize,
}

/// Measures the switch from `from` to `to` in a probe record; None if it never happened.
pub fn outage(probes: &[Probe], from: &str, to: &str) -> Option<Outage> {
    let first_new = probes
        .iter()
        .position(|p| p.answered_by.as_deref() == Some(to))?;
    let last_old = probes[..first_new]
        .iter()
        .rposition(|p| p.answered_by.as_deref() == Some(from))?;
    let lost = probes[last_old + 1..first_new]
        .iter()
        .filter(|p| p.answered_by.is_none())
        .count();
    Some(Outage {
        outage: probes[first_new].sent.saturating_sub(probes[last_old].sent),
        lost,
        unanswered_total: probes.iter().filter(|p| p.answered_by.is_none()).count(),
    })
}

/// Probes nobody answered, leaving out those sent in the last 50 ms of the record
/// (still in flight when the prober stopped).
pub fn unanswered(probes: &[Probe]) -> usize {
    let last = probes.last().map_or(Duration::ZERO, |p| p.sent);
    probes
        .iter()
        .filter(|p| p.sent + Duration::from_millis(50) < last && p.answered_by.is_none())
        .count()
}
