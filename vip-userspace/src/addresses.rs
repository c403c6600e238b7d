//! The VIPs the local stack accepts, and the one rule that keeps the kernel from ever
//! answering for them: only the XDP program answers ARP/NS for a VIP.
//!
//! The LVS direct-routing convention, never the interface the clients reach: the
//! IPv4 VIPs held are `local` routes through `lo` in the kernel's local table
//! (protocol 99, see `Netlink::add_local_route`), each change's VIPs in as few
//! routes as cover exactly them ([`cover`]: a run of 256 is one /24); an IPv6 VIP is
//! a /128 address on `lo`, or, in a group with `ipv6_local = "route"`, covered by
//! routes too. The interface gets `arp_ignore = 1` (answer ARP only for addresses
//! configured on it) and `arp_announce = 2` (never use a VIP as the sender of our own
//! ARP requests). The kernel's IPv6 neighbour code answers solicitations only for
//! addresses on the receiving interface, so an IPv6 VIP on `lo` is never answered by
//! the kernel either. Both stacks still deliver packets to such a VIP whatever
//! interface they arrive on and reply from it.
//!
//! Why a route for IPv4 and, by default, an address for IPv6: an address costs a
//! time that grows with the device's list (adding 20,000 IPv4 addresses to lo took
//! 9.6 s in the lab, 20,000 local /32 routes 0.24 s), and a route does the same for
//! the stack. A route also covers a prefix: an exact cover needs one route per
//! aligned block of a run, so a takeover of 10,000 VIPs numbered in runs is a few
//! hundred requests, not 10,000, and never makes the stack accept an address that is
//! not a held VIP. IPv6 gains as much (10,000: 4.05 s against 0.14 s), but its bind()
//! accepts only addresses on a device (a service bound to the VIP itself needs
//! `IPV6_FREEBIND` or `ip_nonlocal_bind`), so routes are the group's choice.
//!
//! The worker also joins the solicited-node groups of the IPv6 VIPs served
//! (`solicited`), in order with their routes and addresses.
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
    collections::{BTreeMap, BTreeSet, HashSet},
    io,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::sync::Notify;

use crate::{
    config::Ipv6Local,
    host::{self, Interface},
    netlink::Netlink,
    solicited::SolicitedNodes,
};

/// `arp_ignore` and `arp_announce` for the VIP interface (LVS-DR values).
const SYSCTLS: [(&str, &str); 2] = [("arp_ignore", "1"), ("arp_announce", "2")];

/// A local route's destination: a prefix (network address, length), of either
/// family.
pub type Prefix = (IpAddr, u8);

/// An address as a number in its family's space: (IPv6, value).
type Key = (bool, u128);

fn key(a: IpAddr) -> Key {
    match a {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn addr((v6, n): Key) -> IpAddr {
    if v6 {
        IpAddr::V6(n.into())
    } else {
        IpAddr::V4((n as u32).into())
    }
}

fn bits(v6: bool) -> u32 {
    if v6 {
        128
    } else {
        32
    }
}

/// The fewest prefixes whose union is exactly `addrs`, in ascending order (IPv4
/// first): each maximal run of consecutive addresses split into its largest aligned
/// blocks (10.0.0.1 to 10.0.0.250 is 13 prefixes, 10.0.0.0 to 10.0.0.255 one /24).
/// Exact, so a route of the cover never makes the stack accept an address that is
/// not a VIP.
pub fn cover(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<Prefix> {
    let mut sorted: Vec<Key> = addrs.into_iter().map(key).collect();
    // A group's VIPs usually come sorted: then this is one pass.
    if !sorted.is_sorted() {
        sorted.sort_unstable();
    }
    sorted.dedup();
    let mut out = Vec::new();
    let mut emit = |v6: bool, start: u128, end: u128| {
        // [start, end] inclusive; a block is at most 2^(bits - 1) (a VIP set never
        // spans half an address space).
        let max = 1u128 << (bits(v6) - 1);
        let mut at = start;
        loop {
            let align = if at == 0 {
                max
            } else {
                (at & at.wrapping_neg()).min(max)
            };
            let mut size = align;
            while size - 1 > end - at {
                size >>= 1;
            }
            out.push((addr((v6, at)), (bits(v6) - size.trailing_zeros()) as u8));
            if end - at < size {
                break;
            }
            at += size;
        }
    };
    let mut run: Option<(bool, u128, u128)> = None;
    for (v6, a) in sorted {
        run = match run {
            Some((f, s, e)) if f == v6 && e.checked_add(1) == Some(a) => Some((f, s, a)),
            Some((f, s, e)) => {
                emit(f, s, e);
                Some((v6, a, a))
            }
            None => Some((v6, a, a)),
        };
    }
    if let Some((f, s, e)) = run {
        emit(f, s, e);
    }
    out
}

/// The first and last address of `p`, as numbers.
fn bounds((net, len): Prefix) -> (Key, u128) {
    let (v6, n) = key(net);
    let host = bits(v6) - u32::from(len).min(bits(v6));
    let span = if host == 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    let first = n & !span;
    ((v6, first), first | span)
}

/// True if `p` contains `a`.
fn contains(p: Prefix, a: IpAddr) -> bool {
    let ((v6, first), last) = bounds(p);
    let (f, n) = key(a);
    f == v6 && (first..=last).contains(&n)
}

/// What a change of the held set asks of the local table: `add` first, then `del`,
/// so a VIP that stays is never without a route.
#[derive(Debug, Default, PartialEq, Eq)]
struct RouteChange {
    add: Vec<Prefix>,
    del: Vec<Prefix>,
}

/// The local routes asked for: disjoint prefixes whose union is exactly the VIPs
/// held as routes. A change costs what it changes, not what is held (a takeover's
/// first announcement must not wait for the loop to go over 20,000 other VIPs):
/// VIPs added get their own cover beside the routes there (two groups of adjacent
/// runs keep a route each), and a VIP removed splits only the route that carried it.
#[derive(Debug, Default)]
struct Routes(BTreeMap<Key, Prefix>);

impl Routes {
    /// The route that carries `a`, if any (the last one starting at or below it).
    fn carrier(&self, a: IpAddr) -> Option<Prefix> {
        self.0
            .range(..=key(a))
            .next_back()
            .map(|(_, &p)| p)
            .filter(|&p| contains(p, a))
    }

    /// Takes in `routes`, disjoint from those there.
    fn insert(&mut self, routes: &[Prefix]) {
        self.0.extend(routes.iter().map(|&p| (bounds(p).0, p)));
    }

    /// Takes out the route that carries `a`, if any.
    fn take(&mut self, a: IpAddr) -> Option<Prefix> {
        let p = self.carrier(a)?;
        self.0.remove(&bounds(p).0)
    }

    /// Routes for `addrs`, none of which a route carries yet.
    fn add(&mut self, addrs: impl IntoIterator<Item = IpAddr>) -> RouteChange {
        let add = cover(addrs);
        self.insert(&add);
        RouteChange {
            add,
            del: Vec::new(),
        }
    }

    /// Takes `addrs` out: each route that carries one is replaced by the cover of
    /// what else it carries.
    fn remove(&mut self, addrs: impl IntoIterator<Item = IpAddr>) -> RouteChange {
        let gone: BTreeSet<Key> = addrs.into_iter().map(key).collect();
        let hit: BTreeSet<Prefix> = gone.iter().filter_map(|&k| self.carrier(addr(k))).collect();
        let mut change = RouteChange::default();
        for p in hit {
            let ((v6, first), last) = bounds(p);
            let rest = cover(
                (first..=last)
                    .filter(|&n| !gone.contains(&(v6, n)))
                    .map(|n| addr((v6, n))),
            );
            self.0.remove(&(v6, first));
            self.insert(&rest);
            change.add.extend(rest);
            change.del.push(p);
        }
        change
    }

    fn all(&self) -> Vec<Prefix> {
        self.0.values().copied().collect()
    }

    fn holds(&self, p: Prefix) -> bool {
        self.0.get(&bounds(p).0) == Some(&p)
    }
}

/// Whether a VIP is made accepted by a local route (every IPv4 one, the IPv6 ones
/// of `ipv6_local = "route"` groups) rather than an address on lo.
fn routed_as(a: IpAddr, v6: Ipv6Local) -> bool {
    a.is_ipv4() || v6 == Ipv6Local::Route
}

fn add_route(nl: &Netlink, lo: u32, (a, len): Prefix) -> io::Result<()> {
    nl.add_local_route(lo, a, len)
}

fn del_route(nl: &Netlink, lo: u32, (a, len): Prefix) -> io::Result<()> {
    nl.del_local_route(lo, a, len).map(|_| ())
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

/// Set once a takeover's first announcement round has left (or was given up, or its
/// burst stopped): the solicited-node joins that wait for it go then (see
/// [`Addresses::solicited_nodes`]).
#[derive(Debug, Clone, Default)]
pub struct RoundDone(Arc<AtomicBool>);

impl RoundDone {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// How long a join waits for its round at most: a burst that never ends its first
/// round (a stuck task) must not keep the groups unjoined.
const JOIN_WAIT: Duration = Duration::from_secs(1);

/// What the worker does, in the order asked.
enum Job {
    /// Makes the stack accept `addrs`, in their order (the routes that carry them,
    /// or the address of those held as addresses), then removes the routes the
    /// change drops.
    Add {
        group: String,
        addrs: Vec<IpAddr>,
        plan: Plan,
        progress: Option<Arc<Progress>>,
    },
    /// Adds `routes.add`, removes `addresses`, then `routes.del`; `n` VIPs in all.
    Remove {
        group: String,
        addresses: Vec<IpAddr>,
        routes: RouteChange,
        progress: Arc<Progress>,
        n: usize,
    },
    /// Remove addresses from an interface (an earlier version's, or a killed
    /// agent's).
    RemoveFrom { ifindex: u32, addrs: Vec<IpAddr> },
    /// Remove a killed agent's local routes (held by no group now).
    RemoveRoutes(Vec<Prefix>),
    /// Join (or leave) the solicited-node groups of IPv6 VIPs on `ifindex`; a join
    /// with `after` waits for that round while no other job comes.
    SolicitedNodes {
        group: String,
        ifindex: u32,
        join: bool,
        vips: Vec<std::net::Ipv6Addr>,
        after: Option<RoundDone>,
    },
    /// Answers once every job before it is done.
    Flush(mpsc::Sender<()>),
}

/// How an [`Job::Add`] makes its addresses accepted.
enum Plan {
    /// The loop worked it out: `routes.add` carry the VIPs held as routes, the ones
    /// in `addresses` go on lo.
    Given {
        routes: RouteChange,
        addresses: HashSet<IpAddr>,
    },
    /// None of the addresses was held (a takeover's): the worker covers the routed
    /// ones itself (every IPv4 one, the IPv6 ones with `Ipv6Local::Route`) and puts
    /// the other IPv6 ones on lo, so that its first route does not wait for the
    /// loop's bookkeeping of 10,000 VIPs (see [`Addresses::add_all`]).
    New(Ipv6Local),
}

impl Plan {
    /// The routes the job adds and drops for `addrs` (taken out of a given plan).
    fn routes(&mut self, addrs: &[IpAddr]) -> RouteChange {
        match self {
            Plan::Given { routes, .. } => std::mem::take(routes),
            Plan::New(v6) => {
                let v6 = *v6;
                RouteChange {
                    add: cover(addrs.iter().copied().filter(|&a| routed_as(a, v6))),
                    del: Vec::new(),
                }
            }
        }
    }

    /// Whether `a` goes on lo as an address rather than under a route.
    fn on_lo(&self, a: IpAddr) -> bool {
        match self {
            Plan::Given { addresses, .. } => addresses.contains(&a),
            Plan::New(v6) => !routed_as(a, *v6),
        }
    }
}

/// A change the loop asked the worker for before recording it (`Addresses::add_all`
/// of addresses none held): recorded by [`Addresses::record`] before anything reads
/// what is held.
type Unrecorded = (Vec<IpAddr>, Ipv6Local);

/// Owner of the VIPs the local stack accepts (local routes and addresses on `lo`).
///
/// The rtnetlink requests are made by a worker thread of its own, in the order they
/// are asked for: an IPv6 address takes a time that grows with the addresses already
/// on the device (about 0.4 ms each with 10,000 on lo), a local route some 12 µs, and
/// the agent's loop must not wait for a big group's (it would delay the adverts). What
/// the loop keeps is the set it holds and the routes that cover it (a takeover's
/// recorded after its job has left: [`Self::add_all`]); a takeover's announcer
/// follows the worker through [`Progress`]. A change of up to [`SYNC_MAX`]
/// addresses is still waited for (bounded), so a small group's addresses are in place
/// when its change of state is done.
pub struct Addresses {
    jobs: mpsc::Sender<Job>,
    lo: u32,
    /// Addresses we added (and keep restoring). Hashed with foldhash rather than
    /// SipHash: a takeover of 10,000 VIPs looks each one up and inserts it on the
    /// loop, before its first announcement, and the addresses come from the config,
    /// not from the network (no flooding to defend against).
    held: HashSet<IpAddr, foldhash::fast::RandomState>,
    /// The local routes asked for: their union is the addresses of `held` made
    /// routes (every IPv4 one, the IPv6 ones of `ipv6_local = "route"` groups).
    routes: Routes,
    /// Takeovers' additions the worker already has but `held` and `routes` do not
    /// yet (see [`Self::add_all`]); every reader records them first.
    unrecorded: Vec<Unrecorded>,
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
            held: HashSet::default(),
            routes: Routes::default(),
            unrecorded: Vec::new(),
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
    ///
    /// When none of them is held (a takeover's, a reload's new VIPs), the worker gets
    /// them first and covers them itself ([`Plan::New`]), and the loop records them
    /// in `held` and `routes` later, before anything reads those: at 10,000 VIPs the
    /// recording costs the loop 0.3-0.6 ms (a hash insert each, the cover), which
    /// came before the worker's first route and so before the first announcement.
    /// The worker covers the same addresses the same way, so both agree on the
    /// routes (the cover is a function of the set).
    pub fn add_all(&mut self, group: &str, addrs: Vec<IpAddr>, v6: Ipv6Local) -> Arc<Progress> {
        self.record();
        let progress = Arc::new(Progress::default());
        let n = addrs.len();
        if !addrs.iter().any(|a| self.held.contains(a)) {
            // A group's VIPs are unique; a repeated one would only be added twice by
            // the worker (idempotent) and held once.
            self.send(Job::Add {
                group: group.into(),
                addrs: addrs.clone(),
                plan: Plan::New(v6),
                progress: Some(progress.clone()),
            });
            self.unrecorded.push((addrs, v6));
            settle(&progress, n);
            return progress;
        }
        let routes = self.hold(&addrs, v6);
        let addresses = self.as_addresses(&addrs);
        self.send(Job::Add {
            group: group.into(),
            addrs,
            plan: Plan::Given { routes, addresses },
            progress: Some(progress.clone()),
        });
        settle(&progress, n);
        progress
    }

    /// Puts `addrs` in `held`, and those newly held that are routed in `routes`:
    /// what the routes must change.
    fn hold(&mut self, addrs: &[IpAddr], v6: Ipv6Local) -> RouteChange {
        self.held.reserve(addrs.len());
        let mut routed = Vec::new();
        for &a in addrs {
            if self.held.insert(a) && routed_as(a, v6) {
                routed.push(a);
            }
        }
        self.routes.add(routed)
    }

    /// Records what [`Self::add_all`] left unrecorded: called first by everything
    /// that reads or changes `held` and `routes`.
    fn record(&mut self) {
        for (addrs, v6) in std::mem::take(&mut self.unrecorded) {
            self.hold(&addrs, v6);
        }
    }

    /// Those of `addrs` that are IPv6 addresses on lo, not carried by a route.
    fn as_addresses(&self, addrs: &[IpAddr]) -> HashSet<IpAddr> {
        addrs
            .iter()
            .copied()
            .filter(|a| a.is_ipv6() && self.routes.carrier(*a).is_none())
            .collect()
    }

    /// Removes a VIP address (absent already is fine).
    pub fn remove(&mut self, group: &str, addr: IpAddr) {
        self.remove_all(group, vec![addr]);
    }

    /// Removes `addrs` (absent already is fine).
    pub fn remove_all(&mut self, group: &str, addrs: Vec<IpAddr>) {
        self.record();
        let addresses = self.as_addresses(&addrs);
        let gone: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|a| self.held.remove(a) && !addresses.contains(a))
            .collect();
        let routes = self.routes.remove(gone);
        let progress = Arc::new(Progress::default());
        let n = addrs.len();
        self.send(Job::Remove {
            group: group.into(),
            addresses: addrs
                .into_iter()
                .filter(|a| addresses.contains(a))
                .collect(),
            routes,
            progress: progress.clone(),
            n,
        });
        settle(&progress, n);
    }

    /// True if we hold (and keep restoring) this address.
    pub fn holds(&mut self, addr: IpAddr) -> bool {
        self.record();
        self.held.contains(&addr)
    }

    /// True if we hold `addr` as an address on lo (an IPv6 VIP not made a route).
    pub fn holds_address(&mut self, addr: IpAddr) -> bool {
        addr.is_ipv6() && self.holds(addr) && self.routes.carrier(addr).is_none()
    }

    /// True if one of the local routes we hold is exactly `p`.
    pub fn holds_route(&mut self, p: Prefix) -> bool {
        self.record();
        self.routes.holds(p)
    }

    /// Adds back every address and route we hold (after lost notifications, when
    /// what went is not known).
    pub fn restore(&mut self) {
        self.record();
        let addrs: Vec<IpAddr> = self.held.iter().copied().collect();
        let routes = self.routes.all();
        self.add_back(addrs, routes);
    }

    /// Adds back one address we hold (an operator deleted it): the worker redoes
    /// only that, not every VIP of a big group.
    pub fn restore_address(&mut self, addr: IpAddr) {
        self.add_back(vec![addr], Vec::new());
    }

    /// Adds back one of our local routes (an operator deleted it), as
    /// [`Self::restore_address`].
    pub fn restore_route(&mut self, p: Prefix) {
        self.add_back(Vec::new(), vec![p]);
    }

    /// Asks the worker for `addrs` (the IPv6 ones held as addresses go on lo) and
    /// `routes` again; both are idempotent.
    fn add_back(&mut self, addrs: Vec<IpAddr>, routes: Vec<Prefix>) {
        self.record();
        let addresses = self.as_addresses(&addrs);
        self.send(Job::Add {
            group: "(restoring)".into(),
            addrs,
            plan: Plan::Given {
                routes: RouteChange {
                    add: routes,
                    del: Vec::new(),
                },
                addresses,
            },
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

    /// Joins (or leaves) the solicited-node groups of `vips` on `ifindex`, after the
    /// changes asked for before (see `solicited`). A join `after` a takeover's first
    /// announcement round waits for it (at most [`JOIN_WAIT`]), unless another job
    /// comes first, which it still goes before: 10,000 joins cost the worker's CPU,
    /// and the kernel's MLD and the switch's snooping more, which the round needs on
    /// a small host (the last of 10,000 IPv6 VIPs was served 73 ms after the fault
    /// with the joins beside the round, 57 ms with them after it: 2 CPUs, medians of
    /// 5 interleaved runs).
    /// Clients that have the VIP's neighbour entry take the announcement and send to
    /// it; only a new client's multicast solicitation needs the group, and it waits
    /// for the round at most.
    pub fn solicited_nodes(
        &mut self,
        group: &str,
        ifindex: u32,
        join: bool,
        vips: Vec<std::net::Ipv6Addr>,
        after: Option<RoundDone>,
    ) {
        if !vips.is_empty() {
            self.send(Job::SolicitedNodes {
                group: group.into(),
                ifindex,
                join,
                vips,
                after: after.filter(|_| join),
            });
        }
    }

    /// Removes the local routes a killed agent left (see `Netlink::local_routes`).
    pub fn remove_routes(&mut self, routes: Vec<Prefix>) {
        if !routes.is_empty() {
            self.send(Job::RemoveRoutes(routes));
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

/// The worker's jobs in the order asked, where a join that waits for its round
/// ([`Job::SolicitedNodes`] `after`) is held back while nothing comes after it.
#[derive(Default)]
struct Queue {
    /// Jobs to do now, in order.
    ready: std::collections::VecDeque<Job>,
    /// Joins waiting for their round, in order, with the round and when they go
    /// anyway.
    waiting: std::collections::VecDeque<(Job, RoundDone, std::time::Instant)>,
}

/// How often the worker looks at a waiting join's round.
const JOIN_POLL: Duration = Duration::from_millis(1);

impl Queue {
    /// The next job to do; None once the channel is closed and nothing is left.
    fn next(&mut self, jobs: &mpsc::Receiver<Job>) -> Option<Job> {
        loop {
            if let Some(job) = self.ready.pop_front() {
                return Some(job);
            }
            // The waiting joins go in order: the first once its round is done.
            if let Some((_, round, by)) = self.waiting.front() {
                if round.is_set() || std::time::Instant::now() >= *by {
                    return self.waiting.pop_front().map(|(job, ..)| job);
                }
            }
            let got = if self.waiting.is_empty() {
                jobs.recv().ok()
            } else {
                match jobs.recv_timeout(JOIN_POLL) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                }
            };
            let Some(job) = got else {
                // Closed: what waits goes now, then the worker ends.
                return self.waiting.pop_front().map(|(job, ..)| job);
            };
            let round = match &job {
                Job::SolicitedNodes { after: Some(d), .. } if !d.is_set() => Some(d.clone()),
                _ => None,
            };
            if let Some(round) = round {
                let by = std::time::Instant::now() + JOIN_WAIT;
                self.waiting.push_back((job, round, by));
            } else {
                // Whatever waits goes before the job that came after it.
                self.ready
                    .extend(self.waiting.drain(..).map(|(job, ..)| job));
                self.ready.push_back(job);
            }
        }
    }
}

/// The worker: one job at a time, in order, a chunk of addresses at a time.
fn work(nl: Netlink, lo: u32, jobs: mpsc::Receiver<Job>, errors: Arc<AtomicU64>) {
    let fail = |what: String| {
        errors.fetch_add(1, Ordering::Relaxed);
        log::error!("{what}");
    };
    // Adds (or removes) local routes, each failure logged and counted.
    let change_routes = |group: &str, routes: &[Prefix], add: bool| {
        for &p in routes {
            let r = if add {
                add_route(&nl, lo, p)
            } else {
                del_route(&nl, lo, p)
            };
            if let Err(e) = r {
                let verb = if add { "adding" } else { "removing" };
                fail(format!(
                    "group {group}: {verb} the local route of {}/{} (lo): {e}",
                    p.0, p.1
                ));
            }
        }
    };
    let add_routes = |group: &str, routes: &[Prefix]| change_routes(group, routes, true);
    let del_routes = |group: &str, routes: &[Prefix]| change_routes(group, routes, false);
    let mut solicited: Option<SolicitedNodes> = None;
    let mut queue = Queue::default();
    while let Some(job) = queue.next(&jobs) {
        match job {
            Job::SolicitedNodes {
                group,
                ifindex,
                join,
                vips,
                after: _,
            } => {
                let s = solicited.get_or_insert_with(|| SolicitedNodes::new(ifindex));
                let out = if join { s.join(&vips) } else { s.leave(&vips) };
                if let Some(e) = out.last_error {
                    fail(format!(
                        "group {group}: {} {} of {} solicited-node groups: {e}",
                        if join { "joining" } else { "leaving" },
                        out.failed,
                        vips.len()
                    ));
                }
            }
            Job::Add {
                group,
                addrs,
                mut plan,
                progress,
            } => {
                let routes = plan.routes(&addrs);
                // Each new route is added when the first address it carries comes up
                // in `addrs`' order, so the announcer's first VIPs wait for theirs
                // only.
                let mut pending = Routes::default();
                pending.insert(&routes.add);
                let mut chunk = CHUNK_FIRST;
                let mut rest = &addrs[..];
                while !rest.is_empty() {
                    let (now, later) = rest.split_at(chunk.min(rest.len()));
                    for &addr in now {
                        if plan.on_lo(addr) {
                            if let Err(e) = nl.add_address(lo, addr, host_prefix(addr)) {
                                fail(format!(
                                    "group {group}: adding VIP {addr} to lo (address): {e}"
                                ));
                            }
                            continue;
                        }
                        if let Some(p) = pending.take(addr) {
                            add_routes(&group, &[p]);
                        }
                    }
                    if let Some(p) = &progress {
                        p.advance(now.len());
                    }
                    rest = later;
                    chunk = (chunk * 2).min(CHUNK_MAX);
                }
                let left = pending.all();
                add_routes(&group, &left);
                del_routes(&group, &routes.del);
            }
            Job::Remove {
                group,
                addresses,
                routes,
                progress,
                n,
            } => {
                add_routes(&group, &routes.add);
                for addr in addresses {
                    if let Err(e) = nl.del_address(lo, addr, host_prefix(addr)) {
                        fail(format!(
                            "group {group}: removing VIP {addr} from lo (address): {e}"
                        ));
                    }
                }
                del_routes(&group, &routes.del);
                progress.advance(n);
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
            Job::RemoveRoutes(routes) => del_routes("(stale)", &routes),
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(group: &str, after: Option<RoundDone>) -> Job {
        Job::SolicitedNodes {
            group: group.into(),
            ifindex: 2,
            join: true,
            vips: vec!["2001:db8::1".parse().unwrap()],
            after,
        }
    }

    fn name(job: &Job) -> String {
        match job {
            Job::SolicitedNodes { group, .. } => format!("join {group}"),
            Job::RemoveRoutes(_) => "remove".into(),
            _ => "other".into(),
        }
    }

    /// A join that waits for its round goes once the round is done, and before any
    /// job that came after it (the order asked is the order done); nothing waits
    /// once the channel closes.
    #[test]
    fn a_join_waits_for_its_round_but_never_behind_a_later_job() {
        let (tx, rx) = mpsc::channel();
        let mut q = Queue::default();
        // Waits: its round is not over, and nothing comes after it.
        let round = RoundDone::default();
        tx.send(join("web", Some(round.clone()))).unwrap();
        let t0 = std::time::Instant::now();
        let setter = {
            let round = round.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                round.set();
            })
        };
        assert_eq!(q.next(&rx).as_ref().map(name).as_deref(), Some("join web"));
        assert!(
            t0.elapsed() >= Duration::from_millis(30),
            "it went before its round"
        );
        assert!(
            t0.elapsed() < JOIN_WAIT,
            "it waited for the time limit, not the round"
        );
        setter.join().unwrap();
        // A later job takes the waiting join with it, first.
        tx.send(join("db", Some(RoundDone::default()))).unwrap();
        tx.send(Job::RemoveRoutes(Vec::new())).unwrap();
        assert_eq!(q.next(&rx).as_ref().map(name).as_deref(), Some("join db"));
        assert_eq!(q.next(&rx).as_ref().map(name).as_deref(), Some("remove"));
        // A join without a round, or whose round is over, does not wait.
        let over = RoundDone::default();
        over.set();
        tx.send(join("a", None)).unwrap();
        tx.send(join("b", Some(over))).unwrap();
        assert_eq!(q.next(&rx).as_ref().map(name).as_deref(), Some("join a"));
        assert_eq!(q.next(&rx).as_ref().map(name).as_deref(), Some("join b"));
        // Closed: what waits goes, then nothing.
        tx.send(join("last", Some(RoundDone::default()))).unwrap();
        drop(tx);
        assert_eq!(q.next(&rx).as_ref().map(name).as_deref(), Some("join last"));
        assert!(q.next(&rx).is_none());
    }

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

    /// Addresses whose jobs stay in `rx`, for the test to read (no worker, no
    /// netlink: nothing reaches the host's stack).
    fn detached() -> (Addresses, mpsc::Receiver<Job>) {
        let (jobs, rx) = mpsc::channel();
        let a = Addresses {
            jobs,
            lo: 1,
            held: HashSet::default(),
            routes: Routes::default(),
            unrecorded: Vec::new(),
            errors: Arc::new(AtomicU64::new(0)),
        };
        (a, rx)
    }

    /// A takeover's addresses (none held) go to the worker before the loop records
    /// them, and are recorded before anything reads what is held: the routes the
    /// worker covers them with are the ones the loop holds. Addresses already held
    /// take the loop's plan.
    #[test]
    fn new_addresses_reach_the_worker_first_and_are_recorded_before_any_read() {
        let (mut a, rx) = detached();
        let mut vips = range("10.9.0.0", 300);
        vips.push(v4("2001:db8::1"));
        vips.push(v4("2001:db8::2"));
        let _ = a.add_all("g", vips.clone(), Ipv6Local::Address);
        assert!(
            a.held.is_empty(),
            "recorded on the loop before the job left"
        );
        let Ok(Job::Add {
            plan: Plan::New(Ipv6Local::Address),
            addrs,
            ..
        }) = rx.try_recv()
        else {
            panic!("not a new addresses' job");
        };
        assert_eq!(addrs, vips);
        // The first read records them: the worker's cover is what is held.
        let worker_cover = cover(vips.iter().copied().filter(|x| x.is_ipv4()));
        assert!(vips.iter().all(|&x| a.holds(x)));
        assert!(
            worker_cover.iter().all(|&p| a.holds_route(p)),
            "{worker_cover:?}"
        );
        assert_eq!(a.routes.all(), worker_cover);
        assert!(a.holds_address(v4("2001:db8::1")));
        assert!(!a.holds_address(v4("10.9.0.1")));
        // One of them held already: the loop works the change out itself.
        let _ = a.add_all(
            "g",
            vec![v4("10.9.0.5"), v4("10.9.9.9")],
            Ipv6Local::Address,
        );
        let Ok(Job::Add {
            plan: Plan::Given { routes, .. },
            ..
        }) = rx.try_recv()
        else {
            panic!("not the loop's plan");
        };
        assert_eq!(routes.add, [(v4("10.9.9.9"), 32)]);
        // Removing records first too (nothing unrecorded is lost).
        let _ = a.add_all("h", vec![v4("10.8.0.1")], Ipv6Local::Address);
        a.remove_all("h", vec![v4("10.8.0.1")]);
        assert!(!a.holds(v4("10.8.0.1")));
        assert!(a.unrecorded.is_empty());
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

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(first: &str, n: u32) -> Vec<IpAddr> {
        let (v6, start) = key(v4(first));
        (0..n).map(|i| addr((v6, start + u128::from(i)))).collect()
    }

    fn expand(c: &[Prefix]) -> BTreeSet<IpAddr> {
        c.iter()
            .flat_map(|&p| {
                let ((v6, first), last) = bounds(p);
                (first..=last).map(move |n| addr((v6, n)))
            })
            .collect()
    }

    /// The cover is exact and as small as aligned blocks allow: a whole /24 is one
    /// route, the bench's .1 to .250 thirteen, scattered addresses one each.
    #[test]
    fn cover_is_exact_and_small() {
        assert_eq!(cover(range("10.9.1.0", 256)), [(v4("10.9.1.0"), 24)]);
        let bench = range("10.9.1.1", 250);
        let c = cover(bench.iter().copied());
        assert_eq!(c.len(), 13, "{c:?}");
        assert_eq!(expand(&c), bench.iter().copied().collect());
        let scattered = [v4("10.0.0.1"), v4("10.0.0.3"), v4("192.0.2.7")];
        assert_eq!(cover(scattered).len(), 3);
        // The edges of the address space, and duplicates.
        assert_eq!(
            cover([v4("0.0.0.1"), v4("0.0.0.0"), v4("0.0.0.1")]),
            [(v4("0.0.0.0"), 31)]
        );
        assert_eq!(
            cover(range("255.255.255.252", 4)),
            [(v4("255.255.255.252"), 30)]
        );
        assert!(cover([]).is_empty());
        // Any set: its cover expands back to itself.
        let mut seed = 7u32;
        let mut set = BTreeSet::new();
        for _ in 0..2000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            set.insert(addr((false, u128::from(0x0a00_0000 | (seed >> 20)))));
            // And IPv6 beside them: a family never merges with the other.
            set.insert(addr((
                true,
                (0x2001_0db8u128 << 96) | u128::from(seed >> 20),
            )));
        }
        assert_eq!(expand(&cover(set.iter().copied())), set);
        // IPv6 runs as IPv4 ones: 2001:db8::9:1 to 2001:db8::9:2710 (the bench's
        // 10,000) in few prefixes.
        let six = range("2001:db8::9:1", 10_000);
        let c = cover(six.iter().copied());
        assert!(c.len() < 30, "{c:?}");
        assert_eq!(expand(&c), six.into_iter().collect());
        assert_eq!(
            cover(range("2001:db8::9:0", 65_536)),
            [(v4("2001:db8::9:0"), 112)]
        );
    }

    /// Added VIPs get their own cover; a removed one splits only the route that
    /// carried it, whose other VIPs get routes before it goes; what the routes carry
    /// is exactly what is held, all along.
    #[test]
    fn routes_change_only_what_changes() {
        let mut r = Routes::default();
        let c = r.add(range("10.0.0.0", 4));
        assert_eq!(
            c,
            RouteChange {
                add: vec![(v4("10.0.0.0"), 30)],
                del: vec![]
            }
        );
        // An adjacent group's run: a route of its own.
        let c = r.add(range("10.0.0.4", 4));
        assert_eq!(c.add, [(v4("10.0.0.4"), 30)]);
        assert_eq!(r.carrier(v4("10.0.0.6")), Some((v4("10.0.0.4"), 30)));
        assert_eq!(r.carrier(v4("10.0.0.8")), None);
        let c = r.remove([v4("10.0.0.3")]);
        assert_eq!(c.add, [(v4("10.0.0.0"), 31), (v4("10.0.0.2"), 32)]);
        assert_eq!(c.del, [(v4("10.0.0.0"), 30)]);
        assert!(r.holds((v4("10.0.0.4"), 30)) && !r.holds((v4("10.0.0.0"), 30)));
        // Removing what no route carries changes nothing.
        assert_eq!(r.remove([v4("192.0.2.1")]), RouteChange::default());
        let mut held: BTreeSet<IpAddr> = range("10.0.0.0", 8).into_iter().collect();
        held.remove(&v4("10.0.0.3"));
        assert_eq!(expand(&r.all()), held);
        // A random walk of adds and removes: the routes always carry the held set.
        let (mut r, mut held) = (Routes::default(), BTreeSet::new());
        let mut seed = 11u32;
        for _ in 0..300 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let a = if seed & 1 == 0 {
                addr((false, u128::from(0x0a00_0000 | (seed >> 26))))
            } else {
                addr((true, (0x2001_0db8u128 << 96) | u128::from(seed >> 26)))
            };
            if held.insert(a) {
                r.add([a]);
            } else {
                held.remove(&a);
                r.remove([a]);
            }
            assert_eq!(expand(&r.all()), held);
        }
        assert!(contains((v4("0.0.0.0"), 0), v4("203.0.113.9")));
        assert!(!contains((v4("10.0.0.0"), 31), v4("10.0.0.2")));
        assert!(!contains((v4("0.0.0.0"), 0), v4("::1")));
        assert!(contains((v4("::"), 0), v4("2001:db8::1")));
    }
}
