//! The VIPs the local stack accepts, and the one rule that keeps the kernel from ever
//! answering for them: only the XDP program answers ARP/NS for a VIP.
//!
//! The LVS direct-routing convention, never the interface the clients reach: an
//! IPv4 VIP of a local group is a `local` route through `lo` in the kernel's local
//! table (protocol 99, see `Netlink::add_local_route`), an IPv6 VIP a /128 address on
//! `lo`. The interface gets `arp_ignore = 1` (answer ARP only for addresses
//! configured on it) and `arp_announce = 2` (never use a VIP as the sender of our own
//! ARP requests). The kernel's IPv6 neighbour code answers solicitations only for
//! addresses on the receiving interface, so an IPv6 VIP on `lo` is never answered by
//! the kernel either. Both stacks still deliver packets to such a VIP whatever
//! interface they arrive on, bind to it and reply from it.
//!
//! Why a route for IPv4 and an address for IPv6: an address costs a time that grows
//! with the device's list (adding 20,000 IPv4 addresses to lo took 9.6 s in the lab,
//! 20,000 local routes 0.24 s), and a route does the same for the stack. IPv6 would
//! gain as much (10,000: 4.05 s against 0.14 s), but its bind() accepts only addresses
//! on a device (a service listening on the VIP would need `ip_nonlocal_bind` or
//! `IP_FREEBIND`), so IPv6 VIPs stay addresses.
//!
//! So when an agent dies without cleaning up (SIGKILL, no bpffs to keep its data
//! plane), the routes and addresses it leaves behind cannot make its kernel answer for
//! the VIP while another node is active.
//!
//! A group's VIPs are here while the node holds them, or, for a resident group
//! (`addresses = "resident"`), from its start to the agent's stop whatever the node's
//! role: there it is the data plane's entries (`vip_common::flags::RESIDENT`) that
//! keep a standby's stack from accepting the VIPs' traffic, and a takeover waits for
//! nothing.
//!
//! One error policy for every change: it never fails a transition (the data plane's
//! entries decide who answers and where frames go; the route or address only lets the
//! local stack accept them), it is logged with the group and the VIP, counted, and
//! repaired by the next resync.

use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::sync::Notify;

use crate::{
    host::{self, Interface},
    netlink::Netlink,
};

/// `arp_ignore` and `arp_announce` for the VIP interface (LVS-DR values).
const SYSCTLS: [(&str, &str); 2] = [("arp_ignore", "1"), ("arp_announce", "2")];

/// Makes the local stack accept `addr` on `lo` (see the module's doc: a local route
/// for IPv4, an address for IPv6).
fn accept(nl: &Netlink, lo: u32, addr: IpAddr) -> io::Result<()> {
    match addr {
        IpAddr::V4(a) => nl.add_local_route(lo, a),
        IpAddr::V6(_) => nl.add_address(lo, addr, host_prefix(addr)),
    }
}

/// Undoes [`accept`]; absent already is fine.
fn unaccept(nl: &Netlink, lo: u32, addr: IpAddr) -> io::Result<()> {
    match addr {
        IpAddr::V4(a) => nl.del_local_route(lo, a).map(|_| ()),
        IpAddr::V6(_) => nl.del_address(lo, addr, host_prefix(addr)),
    }
}

/// What [`accept`] makes of `addr`, for the log.
fn form(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "local route"
    } else {
        "address"
    }
}

/// The prefix VIP addresses are added with: a host route's, so adding one never
/// creates or changes a subnet route.
pub fn host_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// How many addresses of a takeover the worker adds before it lets the announcer
/// send theirs: the first chunk is small, so the first announcement leaves within a
/// millisecond of the decision, and the chunks double up to [`CHUNK_MAX`].
const CHUNK_FIRST: usize = 1;
const CHUNK_MAX: usize = 256;

/// A change of at most this many addresses is waited for (at most [`SYNC_WAIT`]):
/// a group of the recommended size has its addresses on lo, or off it, when its
/// change of state is done, as when the loop made the requests itself, so a service
/// that binds the VIP once `vip status` says active finds it. A bigger one is not:
/// the loop must not wait seconds for a 10,000-VIP group.
const SYNC_MAX: usize = 64;
const SYNC_WAIT: Duration = Duration::from_millis(200);

/// How far the worker is with the addresses of one [`Addresses::add_all`]: the
/// announcer sends a VIP's announcement only once the stack accepts it (a client
/// that follows the announcement must find a stack that accepts its packets).
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicUsize,
    notify: Notify,
}

impl Progress {
    /// How many of the job's addresses are in place (or failed, counted).
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Acquire)
    }

    /// Waits until at least `n` of the job's addresses are in place, at most `limit`
    /// (a worker that never gets there must not silence the announcements).
    pub async fn wait_for(&self, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            if self.done() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    pub(crate) fn advance(&self, n: usize) {
        self.done.fetch_add(n, Ordering::AcqRel);
        self.notify.notify_waiters();
    }
}

/// What the worker does, in the order asked.
enum Job {
    Add {
        group: String,
        addrs: Vec<IpAddr>,
        progress: Option<Arc<Progress>>,
    },
    Remove {
        group: String,
        addrs: Vec<IpAddr>,
        progress: Arc<Progress>,
    },
    /// Remove addresses from an interface (an earlier version's, or a killed
    /// agent's).
    RemoveFrom { ifindex: u32, addrs: Vec<IpAddr> },
    /// Remove a killed agent's local routes (held by no group now).
    RemoveRoutes(Vec<std::net::Ipv4Addr>),
    /// Answers once every job before it is done.
    Flush(mpsc::Sender<()>),
}

/// Owner of the VIPs the local stack accepts (local routes and addresses on `lo`).
///
/// The rtnetlink requests are made by a worker thread of its own, in the order they
/// are asked for: an IPv6 address takes a time that grows with the addresses already
/// on the device (about 0.4 ms each with 10,000 on lo), a local route some 12 µs, and
/// the agent's loop must not wait for a big group's (it would delay the adverts). What the loop keeps is the
/// set it holds; a takeover's announcer follows the worker through [`Progress`]. A
/// change of up to [`SYNC_MAX`] addresses is still waited for (bounded), so a small
/// group's addresses are in place when its change of state is done.
pub struct Addresses {
    jobs: mpsc::Sender<Job>,
    lo: u32,
    /// Addresses we added (and keep restoring).
    held: BTreeSet<IpAddr>,
    /// Address changes that failed (logged, repaired by the next resync).
    errors: Arc<AtomicU64>,
}

/// Sets `arp_ignore`/`arp_announce` on the interface (raising, never lowering, a value
/// the operator set higher). Returns what changed, for the log.
pub fn quiet_kernel_arp(iface: &Interface) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    for (key, want) in SYSCTLS {
        let path = host::ipv4_conf(&iface.name, key);
        let now = host::get_sysctl(&path).with_context(|| format!("reading {path}"))?;
        let now = now.trim();
        if now.parse::<u8>().unwrap_or(0) >= want.parse::<u8>().unwrap_or(0) {
            continue;
        }
        host::set_sysctl(&path, want).with_context(|| {
            format!("setting {path} to {want} (the kernel must never answer ARP for a VIP)")
        })?;
        changed.push(format!(
            "net.ipv4.conf.{}.{key} {now} -> {want}",
            iface.name
        ));
    }
    Ok(changed)
}

impl Addresses {
    pub fn open() -> Result<Self> {
        let lo =
            nix::net::if_::if_nametoindex("lo").context("looking up the loopback interface")?;
        let nl = Netlink::open().context("opening rtnetlink")?;
        let errors = Arc::new(AtomicU64::new(0));
        let (jobs, rx) = mpsc::channel();
        let e = errors.clone();
        std::thread::Builder::new()
            .name("vip-addresses".into())
            .spawn(move || work(nl, lo, rx, e))
            .context("starting the address worker")?;
        Ok(Addresses {
            jobs,
            lo,
            held: BTreeSet::new(),
            errors,
        })
    }

    /// The interface the VIP addresses live on.
    pub fn ifindex(&self) -> u32 {
        self.lo
    }

    /// Address changes that failed.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn send(&self, job: Job) {
        if self.jobs.send(job).is_err() {
            // The worker only ends with the channel; count what it cannot do.
            self.errors.fetch_add(1, Ordering::Relaxed);
            log::error!("the address worker is gone: an address change was not made");
        }
    }

    /// Adds `addrs` (idempotent), in this order; the returned progress says how many
    /// are in place.
    pub fn add_all(&mut self, group: &str, addrs: Vec<IpAddr>) -> Arc<Progress> {
        let progress = Arc::new(Progress::default());
        let n = addrs.len();
        self.held.extend(addrs.iter().copied());
        self.send(Job::Add {
            group: group.into(),
            addrs,
            progress: Some(progress.clone()),
        });
        settle(&progress, n);
        progress
    }

    /// Removes a VIP address (absent already is fine).
    pub fn remove(&mut self, group: &str, addr: IpAddr) {
        self.remove_all(group, vec![addr]);
    }

    /// Removes `addrs` (absent already is fine).
    pub fn remove_all(&mut self, group: &str, addrs: Vec<IpAddr>) {
        for a in &addrs {
            self.held.remove(a);
        }
        let progress = Arc::new(Progress::default());
        let n = addrs.len();
        self.send(Job::Remove {
            group: group.into(),
            addrs,
            progress: progress.clone(),
        });
        settle(&progress, n);
    }

    /// True if we hold (and keep restoring) this address.
    pub fn holds(&self, addr: IpAddr) -> bool {
        self.held.contains(&addr)
    }

    /// Adds back every address we hold (after lost notifications or a removal).
    pub fn restore(&mut self) {
        self.send(Job::Add {
            group: "(restoring)".into(),
            addrs: self.held.iter().copied().collect(),
            progress: None,
        });
    }

    /// Removes `addrs` from `ifindex` where an agent of an earlier version put them
    /// (on the interface itself): there, the kernel would answer ARP for them.
    pub fn remove_from(&mut self, ifindex: u32, addrs: &[IpAddr]) {
        if addrs.is_empty() {
            return;
        }
        self.send(Job::RemoveFrom {
            ifindex,
            addrs: addrs.to_vec(),
        });
    }

    /// Removes the local routes of `addrs` a killed agent left (see
    /// `Netlink::local_routes`).
    pub fn remove_routes(&mut self, addrs: Vec<std::net::Ipv4Addr>) {
        if !addrs.is_empty() {
            self.send(Job::RemoveRoutes(addrs));
        }
    }

    /// Waits until every change asked for so far is made (at shutdown: the process
    /// must not exit with addresses still to remove).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Flush(tx));
        let _ = rx.recv();
    }
}

/// Waits, on the caller's thread, for a small change to be made (see [`SYNC_MAX`]).
fn settle(progress: &Progress, n: usize) {
    if n > SYNC_MAX {
        return;
    }
    let deadline = std::time::Instant::now() + SYNC_WAIT;
    while progress.done() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// The worker: one job at a time, in order, a chunk of addresses at a time.
fn work(nl: Netlink, lo: u32, jobs: mpsc::Receiver<Job>, errors: Arc<AtomicU64>) {
    let fail = |what: String| {
        errors.fetch_add(1, Ordering::Relaxed);
        log::error!("{what}");
    };
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Add {
                group,
                addrs,
                progress,
            } => {
                let mut chunk = CHUNK_FIRST;
                let mut rest = &addrs[..];
                while !rest.is_empty() {
                    let (now, later) = rest.split_at(chunk.min(rest.len()));
                    for &addr in now {
                        if let Err(e) = accept(&nl, lo, addr) {
                            fail(format!(
                                "group {group}: adding VIP {addr} to lo ({}): {e}",
                                form(addr)
                            ));
                        }
                    }
                    if let Some(p) = &progress {
                        p.advance(now.len());
                    }
                    rest = later;
                    chunk = (chunk * 2).min(CHUNK_MAX);
                }
            }
            Job::Remove {
                group,
                addrs,
                progress,
            } => {
                for addr in addrs {
                    if let Err(e) = unaccept(&nl, lo, addr) {
                        fail(format!(
                            "group {group}: removing VIP {addr} from lo ({}): {e}",
                            form(addr)
                        ));
                    }
                    progress.advance(1);
                }
            }
            Job::RemoveFrom { ifindex, addrs } => {
                for addr in addrs {
                    if let Err(e) = nl.del_address(ifindex, addr, host_prefix(addr)) {
                        fail(format!(
                            "removing VIP address {addr} from interface {ifindex}: {e}"
                        ));
                    }
                }
            }
            Job::RemoveRoutes(addrs) => {
                for addr in addrs {
                    if let Err(e) = nl.del_local_route(lo, addr) {
                        fail(format!("removing the local route of VIP {addr}: {e}"));
                    }
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The announcer waits for the address worker, and never for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn progress_wakes_the_waiter_and_times_out() {
        let p = Arc::new(Progress::default());
        let q = p.clone();
        let worker = std::thread::spawn(move || {
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(5));
                q.advance(1);
            }
        });
        let t = std::time::Instant::now();
        p.wait_for(3, Duration::from_secs(5)).await;
        assert_eq!(p.done(), 3);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        worker.join().unwrap();
        // Nothing more comes: the wait gives up after its limit.
        let t = std::time::Instant::now();
        p.wait_for(4, Duration::from_millis(30)).await;
        assert_eq!(p.done(), 3);
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    /// A takeover's addresses are added in chunks that start small (the first
    /// announcement waits for one address only) and double.
    #[test]
    fn chunks_start_small_and_double() {
        let mut chunk = CHUNK_FIRST;
        let mut sizes = Vec::new();
        let mut left = 600;
        while left > 0 {
            let n = chunk.min(left);
            sizes.push(n);
            left -= n;
            chunk = (chunk * 2).min(CHUNK_MAX);
        }
        assert_eq!(sizes[..4], [1, 2, 4, 8]);
        assert!(sizes.iter().all(|&n| n <= CHUNK_MAX));
        assert_eq!(sizes.iter().sum::<usize>(), 600);
    }
}
