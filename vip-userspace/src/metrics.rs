//! The Prometheus endpoint (`node.metrics_listen`, off by default): every scrape asks
//! the agent for its status over the same channel as the control socket and renders
//! it with the prometheus-client crate; served by hyper.
//!
//! Any local user can connect to it, so a client must never be able to hold on to the
//! agent's resources (see `exhaustion`): at most [`Limits::max_connections`] at a time
//! (more wait in the kernel's backlog), none on a descriptor in the top quarter of the
//! limit, none for a second after the table was found full (the control socket's
//! spare descriptor must not end up here), a pause after accept errors, and every
//! connection closed when it has not sent a complete request head within
//! [`Limits::idle`] (that is also the keep-alive idle timeout: hyper starts the clock
//! again when it waits for the next request) or has lasted [`Limits::lifetime`] (a
//! client that stops reading its response).

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use http_body_util::Full;
use hyper::{
    body::Bytes, server::conn::http1, service::service_fn, Request as HttpRequest,
    Response as HttpResponse,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{mpsc, oneshot},
};

use crate::{
    control::{Envelope, Request},
    exhaustion::Gate,
    status::Status,
};

type Labels = Vec<(String, String)>;
/// A metric: name, help, and how to read it from a status record.
type Field<T> = (&'static str, &'static str, fn(&T) -> u64);

/// How much of the agent one client may hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; a scraper needs one.
    pub max_connections: usize,
    /// Until a request head is complete, from the connection's start or the end of
    /// the previous response.
    pub idle: Duration,
    /// The longest a connection lasts, whatever it does.
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            idle: Duration::from_secs(5),
            lifetime: Duration::from_secs(60),
        }
    }
}

/// The metrics server keeps off the top quarter of the descriptor limit.
const RESERVE_SHARE: u64 = 4;

/// Clients waiting for the agent to take their connection, in the kernel: past the
/// cap they wait there at no cost to the agent, and a backlog this size leaves room
/// for a scraper behind a crowd of idle connections.
const BACKLOG: u32 = 1024;

/// The listening socket of `node.metrics_listen`.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `/metrics` until aborted.
pub async fn serve(listener: TcpListener, agent: mpsc::Sender<Envelope>) {
    serve_with(listener, agent, Limits::default()).await
}

/// Serves `/metrics` under `limits` until aborted.
pub async fn serve_with(listener: TcpListener, agent: mpsc::Sender<Envelope>, limits: Limits) {
    let mut gate = Gate::new("metrics", limits.max_connections, RESERVE_SHARE).yielding();
    loop {
        let (stream, slot) = gate.accept(|| listener.accept()).await;
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: HttpRequest<hyper::body::Incoming>| {
                let agent = agent.clone();
                async move { Ok::<_, Infallible>(respond(req.uri().path(), &agent).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(limits.lifetime, conn).await;
            drop(slot);
        });
    }
}

async fn respond(path: &str, agent: &mpsc::Sender<Envelope>) -> HttpResponse<Full<Bytes>> {
    let reply = |code: u16, ctype: &str, body: String| {
        HttpResponse::builder()
            .status(code)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if path != "/metrics" {
        return reply(404, "text/plain", "see /metrics\n".into());
    }
    let (tx, rx) = oneshot::channel();
    if agent.send((Request::Status, tx)).await.is_err() {
        return reply(503, "text/plain", "the agent is shutting down\n".into());
    }
    match rx.await.ok().and_then(|r| r.status) {
        Some(status) => reply(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(&status),
        ),
        None => reply(503, "text/plain", "no status\n".into()),
    }
}

/// Renders a status as OpenMetrics text; every name starts with `vip_`.
pub fn render(s: &Status) -> String {
    let mut reg = Registry::with_prefix("vip");
    let counter = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Counter>::default();
        reg.register(name, help, f.clone());
        f
    };
    let gauge = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Gauge>::default();
        reg.register(name, help, f.clone());
        f
    };
    let per_vip: Vec<Field<crate::status::VipStatus>> = vec![
        ("rx_packets", "IP packets addressed to the VIP", |v| {
            v.rx_packets
        }),
        ("rx_bytes", "Bytes of those packets", |v| v.rx_bytes),
        (
            "arp_replies",
            "ARP requests answered by the data plane",
            |v| v.arp_replies,
        ),
        (
            "nd_replies",
            "Neighbour solicitations answered by the data plane",
            |v| v.nd_replies,
        ),
        ("passed", "VIP packets passed to the local stack", |v| {
            v.passed
        }),
        (
            "redirected",
            "VIP packets redirected to another interface",
            |v| v.redirected,
        ),
        (
            "forwarded",
            "VIP packets forwarded to the active node",
            |v| v.forwarded,
        ),
        (
            "lease_expired",
            "VIP packets passed because the lease had expired",
            |v| v.lease_expired,
        ),
    ];
    for (name, help, get) in per_vip {
        let f = counter(&mut reg, name, help);
        for g in &s.groups {
            for v in &g.vips {
                let l = vec![
                    ("group".into(), g.name.clone()),
                    ("vip".into(), v.address.clone()),
                ];
                f.get_or_create(&l).inc_by(get(v));
            }
        }
    }
    let action = gauge(
        &mut reg,
        "vip_action",
        "1 for the data plane's current action of the VIP",
    );
    let active = gauge(
        &mut reg,
        "group_active",
        "1 while this node is active for the group",
    );
    let state = gauge(&mut reg, "group_state", "1 for the group's current state");
    let healthy = gauge(&mut reg, "group_healthy", "0 while a health check fails");
    let transitions = counter(
        &mut reg,
        "group_transitions",
        "State transitions, by new state and reason",
    );
    let lease = gauge(
        &mut reg,
        "lease_remaining_milliseconds",
        "Time left on the data plane's lease",
    );
    let election: Vec<Field<crate::status::ElectionStatus>> = vec![
        ("adverts_sent", "Advertisements sent", |e| e.adverts_sent),
        ("adverts_received", "Advertisements accepted", |e| {
            e.adverts_received
        }),
        (
            "advert_auth_failures",
            "Advertisements that failed authentication",
            |e| e.auth_failures,
        ),
        ("advert_replays", "Replayed advertisements ignored", |e| {
            e.replays
        }),
        (
            "advert_malformed",
            "Malformed advertisements ignored",
            |e| e.malformed,
        ),
        (
            "advert_unknown_peers",
            "Advertisements from addresses that are not peers",
            |e| e.unknown_peers,
        ),
        (
            "advert_unverified",
            "Authenticated advertisements in an epoch not verified yet (the sender was challenged)",
            |e| e.unverified,
        ),
        ("split_brains", "Two actives seen (partition healed)", |e| {
            e.split_brains
        }),
        (
            "leases_lost",
            "Times the lease ran out while active (the agent was stalled past it): it stopped answering and listened again",
            |e| e.leases_lost,
        ),
    ];
    let election: Vec<_> = election
        .into_iter()
        .map(|(n, h, get)| (counter(&mut reg, n, h), get))
        .collect();
    let priority = gauge(&mut reg, "group_priority", "Effective election priority");
    let echo_probes = counter(
        &mut reg,
        "echo_probes",
        "Echo probes this standby sent to the active's data plane",
    );
    let echo_replies = counter(&mut reg, "echo_replies", "Echo replies received");
    let member_packets = counter(
        &mut reg,
        "balance_member_packets",
        "Packets the director sent to each member of a balanced group",
    );
    let member_flows = counter(
        &mut reg,
        "balance_member_flows",
        "New flows the director assigned to each member",
    );
    let member_up = gauge(
        &mut reg,
        "balance_member_up",
        "1 while the member is in the table",
    );
    let echo_streak = gauge(
        &mut reg,
        "echo_longest_streak",
        "Longest run of consecutive unanswered probes (a takeover needs echo_misses)",
    );
    for g in &s.groups {
        let gl = vec![("group".to_string(), g.name.clone())];
        active.get_or_create(&gl).set((g.state == "active") as i64);
        healthy.get_or_create(&gl).set(g.healthy as i64);
        let mut sl = gl.clone();
        sl.push(("state".into(), g.state.clone()));
        state.get_or_create(&sl).set(1);
        for v in &g.vips {
            let l = vec![
                ("group".into(), g.name.clone()),
                ("vip".into(), v.address.clone()),
                ("action".into(), v.action.clone()),
            ];
            action.get_or_create(&l).set(1);
        }
        for (k, n) in &g.transition_reasons {
            let (to, why) = k.split_once('/').unwrap_or((k.as_str(), "other"));
            let l = vec![
                ("group".into(), g.name.clone()),
                ("to".into(), to.to_string()),
                ("reason".into(), why.to_string()),
            ];
            transitions.get_or_create(&l).inc_by(*n);
        }
        if let Some(e) = &g.election {
            for (f, get) in &election {
                f.get_or_create(&gl).inc_by(get(e));
            }
            priority.get_or_create(&gl).set(e.effective_priority as i64);
            if let Some(ms) = e.lease_remaining_ms {
                lease.get_or_create(&gl).set(ms as i64);
            }
        }
        if let Some(b) = &g.balance {
            for m in &b.members {
                let l = vec![
                    ("group".to_string(), g.name.clone()),
                    ("member".to_string(), m.address.clone()),
                ];
                member_packets.get_or_create(&l).inc_by(m.packets);
                member_flows.get_or_create(&l).inc_by(m.flows);
                member_up.get_or_create(&l).set(m.healthy as i64);
            }
        }
        if let Some(e) = &g.echo {
            echo_probes.get_or_create(&gl).inc_by(e.probes);
            echo_replies.get_or_create(&gl).inc_by(e.replies);
            echo_streak.get_or_create(&gl).set(e.longest_streak as i64);
        }
    }
    let eip: Vec<Field<crate::status::EipStatus>> = vec![
        (
            "eip_in_packets",
            "Packets to the elastic IP sent to the VIP's owner",
            |e| e.in_packets,
        ),
        ("eip_in_bytes", "Bytes of those packets", |e| e.in_bytes),
        (
            "eip_out_packets",
            "Packets from the VIP sent out as the elastic IP",
            |e| e.out_packets,
        ),
        ("eip_out_bytes", "Bytes of those packets", |e| e.out_bytes),
        (
            "eip_to_kernel",
            "Translated packets handed to the kernel to route",
            |e| e.to_kernel,
        ),
        (
            "eip_owner_changes",
            "VIP owner changes learned from ARP",
            |e| e.owner_changes,
        ),
        (
            "eip_arp_replies",
            "ARP requests for the elastic IP answered",
            |e| e.arp_replies,
        ),
        (
            "eip_owner_refused",
            "ARP naming the VIP from a non-node, dropped",
            |e| e.owner_refused,
        ),
    ];
    for (name, help, get) in eip {
        let f = counter(&mut reg, name, help);
        for e in &s.eips {
            f.get_or_create(&vec![
                ("eip".to_string(), e.address.clone()),
                ("vip".to_string(), e.vip.clone()),
            ])
            .inc_by(get(e));
        }
    }
    let dp = counter(
        &mut reg,
        "dataplane_events",
        "Program-wide data-plane counters, by kind",
    );
    for (k, v) in &s.global {
        dp.get_or_create(&vec![("kind".to_string(), k.clone())])
            .inc_by(*v);
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpStream},
        time::Instant,
    };

    /// A metrics server on loopback with `limits` (its agent never answers: the tests
    /// ask for other paths).
    async fn server(limits: Limits) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(async move {
            let _keep = rx;
            serve_with(listener, tx, limits).await
        });
        (addr, task)
    }

    /// Reads until the server closes the connection; how long that took and what came.
    fn until_closed(s: &mut TcpStream) -> (Duration, String) {
        let t0 = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        (t0.elapsed(), String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_closed() {
        let limits = Limits {
            max_connections: 4,
            idle: Duration::from_millis(200),
            lifetime: Duration::from_secs(30),
        };
        let (addr, task) = server(limits).await;
        tokio::task::spawn_blocking(move || {
            // Connects and sends nothing.
            let mut silent = TcpStream::connect(addr).unwrap();
            let (took, _) = until_closed(&mut silent);
            assert!(
                took < Duration::from_secs(2),
                "a silent client held on for {took:?}"
            );
            // A request, then nothing: the keep-alive idle timeout.
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let (took, text) = until_closed(&mut s);
            assert!(text.starts_with("HTTP/1.1 404"), "{text}");
            assert!(
                took < Duration::from_secs(2),
                "an idle keep-alive connection held on for {took:?}"
            );
        })
        .await
        .unwrap();
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cap_leaves_more_clients_in_the_backlog() {
        let limits = Limits {
            max_connections: 2,
            idle: Duration::from_secs(3),
            lifetime: Duration::from_secs(30),
        };
        let (addr, task) = server(limits).await;
        tokio::task::spawn_blocking(move || {
            let a = TcpStream::connect(addr).unwrap();
            let _b = TcpStream::connect(addr).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            // The kernel completes the third connection; the server does not take it.
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 64];
            assert!(c.read(&mut buf).is_err(), "served over the cap");
            drop(a);
            let (_, text) = until_closed(&mut c);
            assert!(text.starts_with("HTTP/1.1 404"), "{text}");
        })
        .await
        .unwrap();
        task.abort();
    }
}
