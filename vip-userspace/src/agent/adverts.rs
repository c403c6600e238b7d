//! The election's datagrams: the sockets, receiving (authenticate, check sender and
//! replay, feed the election) and sending (in each peer's own format version).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::{net::UdpSocket, sync::mpsc};

use super::{Agent, Event, GroupRuntime};
use crate::{
    advert::{self, Advert, Kind, Verdict},
    config::Config,
    host::Interface,
};

/// Datagram sockets of the election, one per address family in use.
pub(super) struct AdvertSockets {
    pub v4: Option<Arc<UdpSocket>>,
    pub v6: Option<Arc<UdpSocket>>,
}

/// Our side of replay protection: a random epoch per start, a counter within it.
pub(super) struct Sequence {
    pub epoch: u64,
    pub seq: u64,
    /// For peers that speak version 1: wall-clock based, as version 1 expects.
    pub legacy_seq: u64,
    /// Peers heard speaking version 1 (answered in version 1).
    pub legacy_peers: HashMap<IpAddr, ()>,
}

impl Sequence {
    pub fn new() -> Self {
        Sequence {
            epoch: advert::new_epoch(),
            seq: 0,
            legacy_seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
            legacy_peers: HashMap::new(),
        }
    }
}

/// Logs a class of bad datagrams at most once per interval, with how many were
/// left out; the counters carry every one.
#[derive(Default)]
pub(super) struct LogLimiter {
    last: HashMap<(String, &'static str), (Instant, u64)>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl LogLimiter {
    /// Some(suppressed since the last line) if this line may be logged now.
    pub fn allow(&mut self, group: &str, what: &'static str) -> Option<u64> {
        let now = Instant::now();
        let e = self
            .last
            .entry((group.to_string(), what))
            .or_insert((now - LOG_EVERY * 2, 0));
        if now.duration_since(e.0) >= LOG_EVERY {
            let skipped = e.1;
            *e = (now, 0);
            Some(skipped)
        } else {
            e.1 += 1;
            None
        }
    }
}

/// How long a datagram may have waited in our socket and still count: past it, the
/// agent was stopped or starved, and the sender has said something newer since (it
/// speaks every interval; a lease never outlives three of them).
const STALE: Duration = Duration::from_millis(100);

/// CLOCK_REALTIME in ns, the clock of the kernel's arrival timestamps.
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// IPv4-mapped IPv6 sources (from a dual-stack socket) as plain IPv4.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    }
}

/// The address we speak for ourselves in adverts: the first subnet address of the
/// interface in that family (not a VIP-shaped /32 or /128, not link-local).
pub(super) fn primary_address(iface: &Interface, v4: bool) -> Option<IpAddr> {
    iface
        .addrs
        .iter()
        .find(|(a, p)| {
            a.is_ipv4() == v4
                && match a {
                    IpAddr::V4(x) => *p < 32 && !x.is_link_local(),
                    IpAddr::V6(x) => *p < 128 && !x.is_unicast_link_local(),
                }
        })
        .map(|(a, _)| *a)
}

/// Binds the election's sockets on our primary addresses (so adverts leave from them).
pub(super) async fn bind(cfg: &Config, iface: &Interface) -> Result<AdvertSockets> {
    let port = cfg.node.advert_port;
    let mut out = AdvertSockets { v4: None, v6: None };
    for v4 in [true, false] {
        let needed = cfg
            .groups
            .iter()
            .filter_map(|g| g.election.as_ref())
            .any(|e| e.peers.iter().any(|p| p.is_ipv4() == v4));
        if !needed {
            continue;
        }
        let Some(me) = primary_address(iface, v4) else {
            bail!(
                "interface {} has no {} address to send advertisements from",
                iface.name,
                if v4 { "IPv4" } else { "IPv6" }
            );
        };
        let sock = UdpSocket::bind(SocketAddr::new(me, port))
            .await
            .with_context(|| {
                format!("binding the advertisement socket {me}:{port} (node.advert_port)")
            })?;
        receive_buffer(&sock);
        if v4 {
            out.v4 = Some(Arc::new(sock));
        } else {
            out.v6 = Some(Arc::new(sock));
        }
    }
    Ok(out)
}

/// The advertisement sockets' receive buffer: room for a burst that the data plane
/// let through (peers within their budgets) while the loop was busy, instead of the
/// default ~200 kB that a flood once overran.
const RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// Raises a socket's receive buffer to [`RECEIVE_BUFFER`]: SO_RCVBUFFORCE (past
/// `net.core.rmem_max`, with CAP_NET_ADMIN), else SO_RCVBUF (up to rmem_max).
fn receive_buffer(sock: &UdpSocket) {
    use std::os::fd::AsRawFd as _;
    let set = |opt: libc::c_int| {
        // SAFETY: a valid socket and an int option of the right size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &RECEIVE_BUFFER as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    if !set(libc::SO_RCVBUFFORCE) && !set(libc::SO_RCVBUF) {
        log::warn!(
            "advertisement socket: cannot raise its receive buffer: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Receives datagrams into the loop, each with the kernel's word on when it arrived
/// (SO_TIMESTAMPNS): a datagram that waited in the socket while the agent was stopped
/// says nothing about now (see `Agent::datagram`). A receive error (e.g. an ICMP error
/// reported on the socket) is logged, rate-limited, and followed by a short pause, so
/// a socket in a bad state never spins.
pub(super) fn spawn_receivers(sockets: &AdvertSockets, tx: &mpsc::Sender<Event>) {
    for sock in [&sockets.v4, &sockets.v6].into_iter().flatten() {
        let (sock, tx) = (sock.clone(), tx.clone());
        if let Err(e) = nix::sys::socket::setsockopt(
            &*sock,
            nix::sys::socket::sockopt::ReceiveTimestampns,
            &true,
        ) {
            log::warn!("advertisement socket: no arrival timestamps ({e}); a datagram queued while the agent was stopped is taken as fresh");
        }
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut errors = 0u64;
            loop {
                let got = sock
                    .async_io(tokio::io::Interest::READABLE, || receive(&sock, &mut buf))
                    .await;
                match got {
                    Ok((n, from, arrived)) => {
                        errors = 0;
                        if tx
                            .send(Event::Datagram(buf[..n].to_vec(), from, arrived))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if errors.is_power_of_two() {
                            log::warn!("receiving advertisements: {e} ({errors} in a row)");
                        }
                        let pause = Duration::from_millis((errors * 2).min(100));
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        });
    }
}

/// One datagram, its sender, and when the kernel received it (CLOCK_REALTIME ns).
fn receive(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<u64>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd as _;
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let arrived = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => {
                Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
            }
            _ => None,
        })
    });
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from((v4.ip(), v4.port())))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
                })
        })
        .ok_or_else(|| std::io::Error::other("a datagram without a sender address"))?;
    Ok((msg.bytes, from, arrived))
}

impl Agent {
    /// One advertisement from the network: check the sender is a peer, authenticate,
    /// check the replay state (challenging an epoch we do not know), then feed the
    /// group's election. Anything wrong is counted and dropped (logged at most once per
    /// 10 s per kind and group). The work per datagram is bounded: one name lookup,
    /// at most one HMAC, one map lookup.
    pub(super) fn datagram(&mut self, b: &[u8], from: SocketAddr, arrived: Option<u64>) {
        let from_ip = canonical(from.ip());
        // Queued while we were stopped (or far behind): stale news. Acting on it, a
        // woken node would follow an active that is gone, or take a release that was
        // meant for another as its own.
        if let Some(at) = arrived {
            let age = Duration::from_nanos(realtime_ns().saturating_sub(at));
            if age > STALE {
                self.stale_adverts += 1;
                if self.stale_adverts.is_power_of_two() {
                    log::info!(
                        "advertisement from {from_ip} waited {} ms in the socket: dropped as stale ({} so far)",
                        age.as_millis(),
                        self.stale_adverts
                    );
                }
                return;
            }
        }
        let is_peer = |g: &GroupRuntime| {
            g.cfg
                .election
                .as_ref()
                .is_some_and(|e| e.peers.contains(&from_ip))
        };
        // A stranger costs no HMAC: it is refused before anything is verified.
        if !self.groups.iter().any(is_peer) {
            match self.groups.iter().position(|g| g.election().is_some()) {
                Some(gi) => {
                    self.groups[gi].errors.unknown_peers += 1;
                    self.warn_ignored(
                        gi,
                        "stranger",
                        format!("advertisement from {from_ip}, which is not a peer"),
                    );
                }
                None => self.unknown_group_adverts += 1,
            }
            return;
        }
        let mut group = None;
        let decoded = Advert::decode_with(b, |name| {
            group = self
                .groups
                .iter()
                .position(|g| g.cfg.name == name && g.election().is_some());
            // A stranger's datagram is refused below: no HMAC is computed for it.
            match group.filter(|&gi| is_peer(&self.groups[gi])) {
                Some(gi) => {
                    let g = &self.groups[gi];
                    (g.key.as_deref(), g.replay.awaited(&from_ip))
                }
                None => (None, None),
            }
        });
        let gi = match group {
            Some(gi) => gi,
            // Not attributable by its name: charge it to a group the sender is a peer of.
            None => match self.groups.iter().position(is_peer) {
                Some(gi) if decoded.is_err() => gi,
                _ => {
                    self.unknown_group_adverts += 1;
                    log::debug!("advertisement from {from_ip} for no elected group of ours");
                    return;
                }
            },
        };
        if !is_peer(&self.groups[gi]) {
            self.groups[gi].errors.unknown_peers += 1;
            self.warn_ignored(
                gi,
                "stranger",
                format!("advertisement from {from_ip}, which is not a peer"),
            );
            return;
        }
        let ad = match decoded {
            Ok(ad) => ad,
            Err(e) => {
                let (what, line) = if e.is_auth() {
                    self.groups[gi].errors.auth_failures += 1;
                    (
                        "auth",
                        format!("advertisement from {from_ip} failed authentication ({e})"),
                    )
                } else {
                    self.groups[gi].errors.malformed += 1;
                    (
                        "malformed",
                        format!("malformed advertisement from {from_ip} ({e})"),
                    )
                };
                self.warn_ignored(gi, what, line);
                return;
            }
        };
        if ad.addr != from_ip {
            self.groups[gi].errors.malformed += 1;
            self.warn_ignored(
                gi,
                "spoofed",
                format!("advertisement from {from_ip} claims to be from {}", ad.addr),
            );
            return;
        }
        let now = Instant::now();
        // Without a key there is nothing to protect against replays with: anyone can
        // forge any datagram, and refusing some would only let a forger lock a peer out.
        if self.groups[gi].key.is_some() {
            if ad.kind == Kind::Challenge {
                // Answered whatever our view of its epoch (both sides may have just
                // restarted); an answer is unicast to the peer, at most one an interval
                // for each.
                self.answer_challenge(gi, from_ip, (ad.epoch, ad.seq), now);
                return;
            }
            let interval = self.groups[gi]
                .cfg
                .election
                .as_ref()
                .map_or(Duration::from_millis(100), |e| e.advert_interval);
            let verdict = self.groups[gi].replay.check(&ad, now, interval);
            match verdict {
                Verdict::Fresh => {}
                Verdict::Replay => {
                    self.groups[gi].errors.replays += 1;
                    self.warn_ignored(
                        gi,
                        "replay",
                        format!(
                            "replayed advertisement from {from_ip} (epoch {:x}, sequence {})",
                            ad.epoch, ad.seq
                        ),
                    );
                    return;
                }
                Verdict::Unverified { challenge } => {
                    self.groups[gi].errors.unverified += 1;
                    if challenge {
                        self.challenge(gi, from_ip, now);
                    }
                    return;
                }
            }
        }
        if ad.kind == Kind::Answer || ad.kind == Kind::Challenge {
            // Their work is done (the epoch is verified); no election news in them.
            return;
        }
        // Authenticated (if the group has a key) and fresh: its frames carry this MAC.
        self.learn_peer_mac(from_ip, ad.mac);
        if advert::version_of(b) == Some(1) {
            self.seq.legacy_peers.insert(from_ip, ());
        } else {
            self.seq.legacy_peers.remove(&from_ip);
        }
        log::trace!(
            "group {}: {:?} from {from_ip} priority {}",
            self.groups[gi].cfg.name,
            ad.kind,
            ad.priority
        );
        if let Some(b) = &mut self.groups[gi].balance {
            match ad.kind {
                Kind::Advert | Kind::Standby => b.heard(from_ip, ad.mac, now),
                Kind::Release => b.left(from_ip),
                Kind::Hold | Kind::Hello | Kind::Claim | Kind::Challenge | Kind::Answer => {}
            }
        }
        let actions = match self.groups[gi].election_mut() {
            Some(e) => e.receive(&ad, now),
            None => return,
        };
        self.apply(gi, actions);
        self.balance_sync(gi);
    }

    /// Logs one line for a dropped datagram, at most once per 10 s per kind and group.
    fn warn_ignored(&mut self, gi: usize, what: &'static str, line: String) {
        let name = &self.groups[gi].cfg.name;
        if let Some(skipped) = self.log_limiter.allow(name, what) {
            let more = if skipped > 0 {
                format!(" ({skipped} more since the last report)")
            } else {
                String::new()
            };
            log::warn!("group {name}: {line}; ignored{more}");
        }
    }

    /// Asks `peer` to prove its epoch: a challenge whose nonce is its own (epoch,
    /// sequence), unicast.
    fn challenge(&mut self, gi: usize, peer: IpAddr, now: Instant) {
        let Some(seq) = self.send_to(gi, Kind::Challenge, 0, &[peer], None) else {
            return;
        };
        self.groups[gi]
            .replay
            .challenged(peer, (self.seq.epoch, seq), now);
    }

    /// Answers `peer`'s challenge `nonce`, at most once an interval.
    fn answer_challenge(&mut self, gi: usize, peer: IpAddr, nonce: advert::Nonce, now: Instant) {
        let interval = self.groups[gi]
            .cfg
            .election
            .as_ref()
            .map_or(Duration::from_millis(100), |e| e.advert_interval);
        let key = (self.groups[gi].index, peer);
        let last = self.answered.get(&key).copied();
        if last.is_some_and(|t| now.saturating_duration_since(t) < interval / 4) {
            return;
        }
        self.answered.insert(key, now);
        self.send_to(gi, Kind::Answer, 0, &[peer], Some(nonce));
    }

    pub(super) fn send_hold(&mut self, gi: usize, hold: Duration) {
        self.send_advert_with(
            gi,
            Kind::Hold,
            hold.as_millis().min(u16::MAX as u128) as u16,
        );
    }

    pub(super) fn send_advert(&mut self, gi: usize, kind: Kind) {
        self.send_advert_with(gi, kind, 0);
    }

    /// Sends to every peer without waiting (see `send_to`), then keeps the lease in step
    /// with what the peers heard.
    fn send_advert_with(&mut self, gi: usize, kind: Kind, hold_ms: u16) {
        let peers = match self.groups[gi].cfg.election.as_ref() {
            Some(cfg) => cfg.peers.clone(),
            None => return,
        };
        if self.send_to(gi, kind, hold_ms, &peers, None).is_none() {
            return;
        }
        // The lease follows what the peers heard: "active" anchors a serving lease
        // (it never outlasts a standby's patience from now on), a standby's presence
        // keeps its forwarding lease.
        match kind {
            Kind::Advert => {
                self.groups[gi].own.advertised(crate::host::boottime_ns());
                self.renew(gi);
            }
            Kind::Standby => self.renew(gi),
            _ => {}
        }
    }

    /// Sends one datagram of `kind` to `peers` without waiting: a full socket buffer
    /// drops it (the next one follows an interval later), it never stalls the loop.
    /// Returns its sequence number (None for a group without an election).
    fn send_to(
        &mut self,
        gi: usize,
        kind: Kind,
        hold_ms: u16,
        peers: &[IpAddr],
        nonce: Option<advert::Nonce>,
    ) -> Option<u64> {
        self.seq.seq += 1;
        self.seq.legacy_seq += 1;
        let g = &self.groups[gi];
        let (Some(e), Some(cfg)) = (g.election(), g.cfg.election.as_ref()) else {
            return None;
        };
        let mut ad = Advert {
            kind,
            priority: e.priority_for(kind, Instant::now()),
            interval_ms: cfg.advert_interval.as_millis().min(u16::MAX as u128) as u16,
            hold_ms,
            mac: self.iface.mac,
            addr: e.params().me,
            seq: self.seq.seq,
            epoch: self.seq.epoch,
            group: g.cfg.name.clone(),
            handshakes: true,
            nonce,
        };
        let bytes = ad.encode(g.key.as_deref());
        ad.seq = self.seq.legacy_seq;
        let legacy = ad.encode_version(1, g.key.as_deref());
        for peer in peers {
            let old = self.seq.legacy_peers.contains_key(peer);
            // Version 1 has none of the kinds that came after it.
            if old
                && matches!(
                    kind,
                    Kind::Hello | Kind::Standby | Kind::Claim | Kind::Challenge | Kind::Answer
                )
            {
                continue;
            }
            let sock = if peer.is_ipv4() {
                &self.adverts.v4
            } else {
                &self.adverts.v6
            };
            if let Some(s) = sock {
                let data = if old { &legacy } else { &bytes };
                if let Err(err) =
                    s.try_send_to(data, SocketAddr::new(*peer, self.cfg.node.advert_port))
                {
                    log::debug!("group {}: advertisement to {peer}: {err}", g.cfg.name);
                }
            }
        }
        Some(self.seq.seq)
    }
}
