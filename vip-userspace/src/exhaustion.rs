//! The agent's own resources running out, and what it does so that a client cannot make
//! them run out: the descriptor limit raised at start, a gate in front of each server
//! (the control socket, the metrics endpoint), and the one rule for telling "we ran
//! out" from "the world said no".
//!
//! What happened without this (found by attacking a release build): 1,100 idle TCP
//! connections to the metrics port, which any local user may open, used up the
//! agent's 1,024 descriptors (systemd's default soft limit); `accept` then failed with
//! EMFILE and was retried at once, 29,000 times a second on a busy core; `vip status`
//! went unanswered; and the interface check, unable to open sysfs, reported the
//! interface missing, so the group faulted and the standby took over. Hence:
//!
//! * [`raise_fd_limit`] at start: the soft RLIMIT_NOFILE up to the hard limit, at most
//!   [`FD_LIMIT_MAX`] (the units in dist/ and the Debian package also set
//!   `LimitNOFILE=`). Programs the agent runs get a soft limit of at most 1,024 back
//!   ([`fd_limit_for_child`]): a program using select() cannot handle more.
//! * [`Gate`], in front of each server: a cap on concurrent connections, a descriptor
//!   reserve the server keeps off, and a pause after accept errors (see its doc).
//! * [`ran_out`]: the errors that mean this process or host is out of descriptors,
//!   memory, processes or local ports. A health check that fails with one of them
//!   says nothing about the service (see `health`).
//!
//! Every such event is counted here, once: [`counters`] (in `vip status`'s `global`).

use std::{
    future::Future,
    io,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most the agent raises its soft descriptor limit to: far more than its servers
/// at their caps, thousands of VIPs and a reload need, and what the units ask for.
pub const FD_LIMIT_MAX: u64 = 65_536;
/// The soft limit programs the agent runs start with, at most (FD_SETSIZE, and what
/// systemd gives services): select() cannot watch a descriptor above it.
pub const CHILD_FD_LIMIT: u64 = 1024;

/// The longest pause between accept attempts after errors.
pub const MAX_PAUSE: Duration = Duration::from_millis(100);
/// Repeated failures of one kind are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

static ACCEPT_ERRORS: AtomicU64 = AtomicU64::new(0);
static CONNECTIONS_SHED: AtomicU64 = AtomicU64::new(0);
static HEALTH_UNCHECKED: AtomicU64 = AtomicU64::new(0);

/// The counters of this module, for `vip status` (`global`) and the metrics
/// (`vip_dataplane_events_total{kind}`): accept calls that failed for another reason
/// than the one connection (EMFILE...); connections closed at once to keep
/// descriptors for the rest of the agent (one in the server's reserve, or taken by a
/// yielding server while the table was full); health-check runs that could not find
/// out (see `health`).
pub fn counters() -> [(&'static str, u64); 3] {
    [
        ("accept_errors", ACCEPT_ERRORS.load(Ordering::Relaxed)),
        ("connections_shed", CONNECTIONS_SHED.load(Ordering::Relaxed)),
        (
            "health_checks_unchecked",
            HEALTH_UNCHECKED.load(Ordering::Relaxed),
        ),
    ]
}

/// Counts a health-check run that could not find out.
pub fn count_unchecked() {
    HEALTH_UNCHECKED.fetch_add(1, Ordering::Relaxed);
}

/// Whether an error means this process or host ran out of something (descriptors,
/// kernel memory, processes, local ports), rather than that the other side refused or
/// the thing asked about does not exist.
pub fn ran_out(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EAGAIN
                | libc::EADDRNOTAVAIL
        )
    )
}

/// Accept errors that concern one incoming connection only (it was aborted, or a
/// network error pending on it, as accept(2) reports them): the next one is taken at
/// once. Each consumes that connection, so retrying cannot spin.
fn one_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EINTR
                | libc::EPERM
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// The process's descriptor limit, before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft descriptor limit to the hard one, at most [`FD_LIMIT_MAX`]; never
/// lowers it. (Raising the hard limit needs CAP_SYS_RESOURCE: that is the unit's
/// `LimitNOFILE=`.)
pub fn raise_fd_limit() -> nix::Result<FdLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = hard.min(FD_LIMIT_MAX).max(soft);
    if want > soft {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard)?;
    }
    Ok(FdLimit {
        before: soft,
        now: want,
        hard,
    })
}

/// The soft descriptor limit now (1,024 if it cannot be read).
pub fn fd_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(s, _)| s)
        .unwrap_or(CHILD_FD_LIMIT)
}

/// Makes `cmd` start with a soft descriptor limit of at most [`CHILD_FD_LIMIT`] (the
/// hard limit is kept, so a program that wants more may raise it itself).
pub fn fd_limit_for_child(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec. It only makes two
    // system calls through nix (getrlimit, setrlimit: async-signal-safe, on stack
    // values) and allocates nothing; an error is returned as a plain errno.
    unsafe {
        cmd.pre_exec(|| {
            let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
            if soft > CHILD_FD_LIMIT {
                setrlimit(Resource::RLIMIT_NOFILE, CHILD_FD_LIMIT, hard)?;
            }
            Ok(())
        });
    }
}

/// Whether descriptor `fd` lies in the top `1/share` of a limit of `limit`. The
/// kernel hands out the lowest free descriptor, so a descriptor that high means every
/// one below it is in use.
pub fn in_reserve(fd: i32, limit: u64, share: u64) -> bool {
    let Ok(fd) = u64::try_from(fd) else {
        return false;
    };
    share > 0 && fd >= limit - limit / share
}

/// Whether an error says the descriptor table (this process's or the system's) is full.
fn table_is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// How long yielding gates give way after the table was last found full.
const YIELD_FOR: Duration = Duration::from_secs(1);

/// When a gate last found the descriptor table full: milliseconds since [`epoch`],
/// plus one (0: never). One per process, shared by its gates.
#[derive(Debug, Default)]
pub struct FullAt(AtomicU64);

static TABLE_FULL_AT: FullAt = FullAt(AtomicU64::new(0));

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn ms_since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

impl FullAt {
    fn now(&self) {
        self.0.store(ms_since_epoch(), Ordering::Relaxed);
    }

    fn note(&self, e: &io::Error) {
        if table_is_full(e) {
            self.now();
        }
    }

    /// Whether a gate found the table full within the last [`YIELD_FOR`].
    fn lately(&self) -> bool {
        let at = self.0.load(Ordering::Relaxed);
        at != 0 && ms_since_epoch().saturating_sub(at) < YIELD_FOR.as_millis() as u64
    }
}

/// The pause after one more failure: 1 ms, doubling, at most [`MAX_PAUSE`].
pub fn next_pause(p: Duration) -> Duration {
    if p.is_zero() {
        Duration::from_millis(1)
    } else {
        (p * 2).min(MAX_PAUSE)
    }
}

/// Logs a repeated failure at most once per [`LOG_EVERY`], with how many were left
/// out; the counters carry every one.
#[derive(Debug, Default)]
pub struct LogEvery {
    last: Option<Instant>,
    skipped: u64,
}

impl LogEvery {
    /// Some(failures left out since the last line) if this one may be logged now.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < LOG_EVERY => {
                self.skipped += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.skipped))
            }
        }
    }
}

/// A gate's spare descriptor: held, or lent to the connection that needed it.
type Spare = Arc<std::sync::Mutex<Option<std::fs::File>>>;

/// Opens the spare if it is not held (fails quietly while the table is full).
fn hold(spare: &Spare) {
    if let Ok(mut s) = spare.lock() {
        if s.is_none() {
            *s = std::fs::File::open("/dev/null").ok();
        }
    }
}

/// A connection's place under its server's cap; dropping it frees the place and,
/// if the connection took its gate's spare descriptor, holds the spare again (the
/// connection's own descriptor, just closed, is the lowest free one).
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    spare: Option<Spare>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(s) = &self.spare {
            hold(s);
        }
    }
}

/// The gate in front of one server's listener.
///
/// * At most `max` connections at a time: at the cap the listener is not polled, so
///   further clients wait in the kernel's backlog, which costs the agent no
///   descriptor, until a connection ends (each server bounds how long one may idle).
/// * A reserve at the top of the descriptor table the server keeps off: a connection
///   that arrives on a descriptor in the top `1/reserve_share` of the limit is closed
///   at once (counted in `connections_shed`), leaving those descriptors to the health
///   checks, netlink, a reload and the other server.
/// * After an accept error that is not about one connection (EMFILE, ENFILE, ENOBUFS,
///   ENOMEM, or anything unexpected) or a shed connection, a pause: 1 ms, doubling up
///   to 100 ms, none again once a connection is taken. Logged at most once per 10 s
///   with the number left out, and counted (`accept_errors`).
/// * Optionally ([`Gate::with_spare`]) one spare descriptor, held open for the day the
///   table is full: when accept fails with EMFILE or ENFILE, the spare is closed and
///   accept tried again at once, so this server still takes one connection at a time
///   (the control socket: `vip status` answers while the agent is out of
///   descriptors). When that connection ends, its descriptor becomes the spare again.
/// * Optionally ([`Gate::yielding`]) giving way to that spare: for a second after any
///   gate last found the table full, a connection it accepts is closed at once
///   (counted as shed), so that it cannot keep the descriptor a spare was just given
///   up for (the metrics endpoint yields to the control socket).
pub struct Gate {
    server: &'static str,
    slots: Arc<Semaphore>,
    reserve_share: u64,
    pause: Duration,
    log: LogEvery,
    spare: Option<Spare>,
    yields: bool,
    table: &'static FullAt,
}

impl Gate {
    pub fn new(server: &'static str, max: usize, reserve_share: u64) -> Self {
        Gate {
            server,
            slots: Arc::new(Semaphore::new(max.max(1))),
            reserve_share,
            pause: Duration::ZERO,
            log: LogEvery::default(),
            spare: None,
            yields: false,
            table: &TABLE_FULL_AT,
        }
    }

    /// The same gate, giving way while the table is full (see the type's doc).
    pub fn yielding(mut self) -> Self {
        self.yields = true;
        self
    }

    /// The same gate, holding a spare descriptor (see the type's doc).
    pub fn with_spare(mut self) -> Self {
        let spare = Spare::default();
        hold(&spare);
        self.spare = Some(spare);
        self
    }

    /// Closes the spare, if held, to make room for one connection.
    fn release_spare(&self) -> bool {
        self.spare
            .as_ref()
            .and_then(|s| s.lock().ok().and_then(|mut s| s.take()))
            .is_some()
    }

    /// The next connection `accept` yields, with its slot; waits while the server is
    /// at its cap, and never returns an error.
    pub async fn accept<S, A, F, Fut>(&mut self, mut accept: F) -> (S, Slot)
    where
        S: AsRawFd,
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<(S, A)>>,
    {
        loop {
            if let Some(s) = &self.spare {
                hold(s);
            }
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                // The semaphore is never closed; should it be, nothing is accepted.
                return std::future::pending().await;
            };
            let mut result = accept().await;
            let mut spare_given_up = false;
            if matches!(&result, Err(e) if table_is_full(e)) && self.release_spare() {
                spare_given_up = true;
                ACCEPT_ERRORS.fetch_add(1, Ordering::Relaxed);
                self.table.now();
                result = accept().await;
                if let Ok((stream, _)) = result {
                    if self.log.allow().is_some() {
                        log::warn!(
                            "{}: out of descriptors; this connection takes the spare one",
                            self.server
                        );
                    }
                    let slot = Slot {
                        _permit: permit,
                        spare: self.spare.clone(),
                    };
                    return (stream, slot);
                }
            }
            let failure = match result {
                Ok((stream, _)) => {
                    let fd = stream.as_raw_fd();
                    let limit = fd_limit();
                    if self.yields && self.table.lately() {
                        drop(stream);
                        CONNECTIONS_SHED.fetch_add(1, Ordering::Relaxed);
                        "the descriptor table was full a moment ago: connection closed, leaving its descriptor to the rest of the agent".to_string()
                    } else if !in_reserve(fd, limit, self.reserve_share) {
                        self.pause = Duration::ZERO;
                        let slot = Slot {
                            _permit: permit,
                            spare: None,
                        };
                        return (stream, slot);
                    } else {
                        drop(stream);
                        CONNECTIONS_SHED.fetch_add(1, Ordering::Relaxed);
                        format!(
                            "descriptor {fd} is in the last 1/{} of the limit ({limit}), kept for the rest of the agent: connection closed",
                            self.reserve_share
                        )
                    }
                }
                Err(e) if one_connection(&e) => {
                    log::debug!("{}: accept: {e}", self.server);
                    continue;
                }
                Err(e) => {
                    ACCEPT_ERRORS.fetch_add(1, Ordering::Relaxed);
                    self.table.note(&e);
                    let spare = if spare_given_up {
                        " (even with the spare descriptor given up)"
                    } else if self.spare.is_some() {
                        " (no spare descriptor held)"
                    } else {
                        ""
                    };
                    format!("accept: {e}{spare}")
                }
            };
            drop(permit);
            self.pause = next_pause(self.pause);
            if let Some(skipped) = self.log.allow() {
                let more = if skipped > 0 {
                    format!(" ({skipped} more since the last report)")
                } else {
                    String::new()
                };
                log::warn!(
                    "{}: {failure}{more}; pausing before the next connection (up to {} ms)",
                    self.server,
                    MAX_PAUSE.as_millis()
                );
            }
            tokio::time::sleep(self.pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Fake(i32);
    impl AsRawFd for Fake {
        fn as_raw_fd(&self) -> i32 {
            self.0
        }
    }

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn running_out_is_told_from_refusals() {
        for c in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EAGAIN,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(ran_out(&os(c)), "{}", os(c));
        }
        for c in [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::ENOENT,
            libc::ENODEV,
            libc::EACCES,
            libc::EHOSTUNREACH,
        ] {
            assert!(!ran_out(&os(c)), "{}", os(c));
        }
        assert!(!ran_out(&io::Error::other("no errno")));
        assert!(one_connection(&os(libc::ECONNABORTED)));
        assert!(!one_connection(&os(libc::EMFILE)));
    }

    #[test]
    fn pauses_grow_to_100_ms() {
        let mut p = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            p = next_pause(p);
            seen.push(p.as_millis());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 64, 100, 100, 100]);
    }

    #[test]
    fn the_reserve_is_the_top_of_the_table() {
        assert!(!in_reserve(95, 128, 4));
        assert!(in_reserve(96, 128, 4));
        assert!(!in_reserve(119, 128, 16));
        assert!(in_reserve(120, 128, 16));
        assert!(!in_reserve(5, 1024, 4));
        assert!(!in_reserve(-1, 128, 4));
        assert!(!in_reserve(100, 128, 0));
    }

    #[test]
    fn log_lines_are_limited() {
        let mut l = LogEvery::default();
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        l.last = Instant::now().checked_sub(LOG_EVERY);
        assert_eq!(l.allow(), Some(2), "the lines left out are counted");
    }

    /// EMFILE over and over: a handful of attempts, not a spin; the first connection
    /// after it is returned.
    /// A gate of its own table: the fake EMFILEs of these tests must not make the
    /// process's real gates (the metrics tests') yield.
    fn test_gate(max: usize) -> Gate {
        let mut g = Gate::new("test", max, 4);
        g.table = Box::leak(Box::default());
        g
    }

    #[tokio::test]
    async fn accept_errors_pause_instead_of_spinning() {
        let calls = AtomicUsize::new(0);
        let t0 = Instant::now();
        let mut gate = test_gate(4);
        let (s, _slot) = gate
            .accept(|| {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if t0.elapsed() < Duration::from_millis(500) {
                        Err(os(libc::EMFILE))
                    } else {
                        Ok((Fake(3 + n as i32 % 2), ()))
                    }
                }
            })
            .await;
        let n = calls.load(Ordering::Relaxed);
        // 1+2+4+...+64 ms, then every 100 ms: about 10 attempts in 500 ms.
        assert!((5..=20).contains(&n), "{n} accept calls in 500 ms");
        assert!(s.0 == 3 || s.0 == 4);
        assert_eq!(gate.pause, Duration::ZERO, "a success ends the pauses");
    }

    /// With the table full, a gate with a spare still takes a connection: the spare
    /// makes room for it, and is held again afterwards.
    #[tokio::test]
    async fn the_spare_makes_room_for_one_connection() {
        let mut gate = test_gate(4).with_spare();
        let held = |g: &Gate| g.spare.as_ref().unwrap().lock().unwrap().is_some();
        assert!(held(&gate));
        let full = AtomicUsize::new(1);
        let (s, slot) = gate
            .accept(|| {
                // Full until the spare is given up: the next call succeeds.
                let still_full = full.fetch_sub(1, Ordering::Relaxed) > 0;
                async move {
                    if still_full {
                        Err(os(libc::EMFILE))
                    } else {
                        Ok((Fake(7), ()))
                    }
                }
            })
            .await;
        assert_eq!(s.0, 7);
        assert!(!held(&gate), "the spare was not used");
        drop(slot);
        assert!(held(&gate), "the spare was not held again");
        // Without a spare the same failure only pauses.
        let mut plain = test_gate(4);
        let r = tokio::time::timeout(
            Duration::from_millis(50),
            plain.accept(|| async { Err::<(Fake, ()), _>(os(libc::EMFILE)) }),
        )
        .await;
        assert!(r.is_err());
    }

    /// Once one gate found the table full, a yielding gate of the same table closes
    /// what it accepts for a while; a gate that does not yield keeps it.
    #[tokio::test]
    async fn a_yielding_gate_gives_way_while_the_table_is_full() {
        let mut control = test_gate(4).with_spare();
        let mut metrics = test_gate(4).yielding();
        let mut other = test_gate(4);
        metrics.table = control.table;
        other.table = control.table;
        let full = AtomicUsize::new(1);
        let _ = control
            .accept(|| {
                let still_full = full.fetch_sub(1, Ordering::Relaxed) > 0;
                async move {
                    if still_full {
                        Err(os(libc::EMFILE))
                    } else {
                        Ok((Fake(7), ()))
                    }
                }
            })
            .await;
        let shed = CONNECTIONS_SHED.load(Ordering::Relaxed);
        let r = tokio::time::timeout(
            Duration::from_millis(100),
            metrics.accept(|| async { Ok::<_, io::Error>((Fake(8), ())) }),
        )
        .await;
        assert!(r.is_err(), "the yielding gate kept a connection");
        assert!(CONNECTIONS_SHED.load(Ordering::Relaxed) > shed);
        let (s, _) = other
            .accept(|| async { Ok::<_, io::Error>((Fake(9), ())) })
            .await;
        assert_eq!(s.0, 9);
    }

    /// At the cap nothing is accepted until a slot is given back; a connection on a
    /// reserved descriptor is closed and the next one taken.
    #[tokio::test]
    async fn the_cap_and_the_reserve_hold() {
        let calls = AtomicUsize::new(0);
        let mut gate = test_gate(2);
        let low = || {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, io::Error>((Fake(3), ())) }
        };
        let (_, a) = gate.accept(low).await;
        let (_, b) = gate.accept(low).await;
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        let third = tokio::time::timeout(Duration::from_millis(50), gate.accept(low)).await;
        assert!(third.is_err(), "a third connection over a cap of 2");
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "the listener was polled at the cap"
        );
        drop(a);
        let (_, _c) = gate.accept(low).await;
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        drop(b);

        let limit = fd_limit();
        let high = i32::try_from(limit - 1).unwrap_or(i32::MAX);
        let shed = CONNECTIONS_SHED.load(Ordering::Relaxed);
        let n = AtomicUsize::new(0);
        let (s, _d) = gate
            .accept(|| {
                let first = n.fetch_add(1, Ordering::Relaxed) == 0;
                async move { Ok::<_, io::Error>((Fake(if first { high } else { 5 }), ())) }
            })
            .await;
        assert_eq!(s.0, 5, "the connection on a reserved descriptor was kept");
        assert!(CONNECTIONS_SHED.load(Ordering::Relaxed) > shed);
    }
}
