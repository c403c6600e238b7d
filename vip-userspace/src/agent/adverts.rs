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
    advert::{self, Advert, Kind},
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

/// Receives datagrams into the loop. A receive error (e.g. an ICMP error reported on
/// the socket) is logged, rate-limited, and followed by a short pause, so a socket in
/// a bad state never spins.
pub(super) fn spawn_receivers(sockets: &AdvertSockets, tx: &mpsc::Sender<Event>) {
    for sock in [&sockets.v4, &sockets.v6].into_iter().flatten() {
        let (sock, tx) = (sock.clone(), tx.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut errors = 0u64;
            loop {
                match sock.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        errors = 0;
                        if tx
                            .send(Event::Datagram(buf[..n].to_vec(), from))
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

impl Agent {
    /// One advertisement from the network: authenticate, check the sender and the
    /// replay state, then feed the group's election. Anything wrong is counted and
    /// dropped (logged at most once per 10 s per kind and group).
    pub(super) fn datagram(&mut self, b: &[u8], from: SocketAddr) {
        let from_ip = canonical(from.ip());
        let is_peer = |g: &GroupRuntime| {
            g.cfg
                .election
                .as_ref()
                .is_some_and(|e| e.peers.contains(&from_ip))
        };
        let mut group = None;
        let decoded = Advert::decode_with(b, |name| {
            group = self
                .groups
                .iter()
                .position(|g| g.cfg.name == name && g.election().is_some());
            // A stranger's datagram is refused below: no HMAC is computed for it.
            group
                .filter(|&gi| is_peer(&self.groups[gi]))
                .and_then(|gi| self.groups[gi].key.as_deref())
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
        let g = &mut self.groups[gi];
        let mut warn = |what: &'static str, line: String| {
            if let Some(skipped) = self.log_limiter.allow(&g.cfg.name, what) {
                let more = if skipped > 0 {
                    format!(" ({skipped} more since the last report)")
                } else {
                    String::new()
                };
                log::warn!("group {}: {line}; ignored{more}", g.cfg.name);
            }
        };
        if !is_peer(g) {
            g.errors.unknown_peers += 1;
            warn(
                "stranger",
                format!("advertisement from {from_ip}, which is not a peer"),
            );
            return;
        }
        let ad = match decoded {
            Ok(ad) => ad,
            Err(e) => {
                if e.is_auth() {
                    g.errors.auth_failures += 1;
                    warn(
                        "auth",
                        format!("advertisement from {from_ip} failed authentication ({e})"),
                    );
                } else {
                    g.errors.malformed += 1;
                    warn(
                        "malformed",
                        format!("malformed advertisement from {from_ip} ({e})"),
                    );
                }
                return;
            }
        };
        if ad.addr != from_ip {
            g.errors.malformed += 1;
            warn(
                "spoofed",
                format!("advertisement from {from_ip} claims to be from {}", ad.addr),
            );
            return;
        }
        if !g.replay.accept(from_ip, ad.epoch, ad.seq) {
            g.errors.replays += 1;
            warn(
                "replay",
                format!(
                    "replayed advertisement from {from_ip} (epoch {:x}, sequence {})",
                    ad.epoch, ad.seq
                ),
            );
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
        let now = Instant::now();
        if let Some(b) = &mut self.groups[gi].balance {
            match ad.kind {
                Kind::Advert | Kind::Member => b.heard(from_ip, ad.mac, now),
                Kind::Release => b.left(from_ip),
                Kind::Hold | Kind::Hello => {}
            }
        }
        let actions = match self.groups[gi].election_mut() {
            Some(e) => e.receive(&ad, now),
            None => return,
        };
        self.apply(gi, actions);
        self.balance_sync(gi);
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

    /// Sends to every peer without waiting: a full socket buffer drops this advert
    /// (the next one follows an interval later), it never stalls the loop.
    fn send_advert_with(&mut self, gi: usize, kind: Kind, hold_ms: u16) {
        self.seq.seq += 1;
        self.seq.legacy_seq += 1;
        let g = &self.groups[gi];
        let (Some(e), Some(cfg)) = (g.election(), g.cfg.election.as_ref()) else {
            return;
        };
        let mut ad = Advert {
            kind,
            priority: if kind == Kind::Release {
                0
            } else {
                e.effective_priority()
            },
            interval_ms: cfg.advert_interval.as_millis().min(u16::MAX as u128) as u16,
            hold_ms,
            mac: self.iface.mac,
            addr: e.params().me,
            seq: self.seq.seq,
            epoch: self.seq.epoch,
            group: g.cfg.name.clone(),
        };
        let bytes = ad.encode(g.key.as_deref());
        ad.seq = self.seq.legacy_seq;
        let legacy = ad.encode_version(1, g.key.as_deref());
        for peer in &cfg.peers {
            let old = self.seq.legacy_peers.contains_key(peer);
            if old && kind == Kind::Hello {
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
    }
}
