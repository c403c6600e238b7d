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
    counters::{Counted, Counts, Kind},
    exhaustion::Gate,
    status::Status,
};

type Labels = Vec<(String, String)>;

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

/// Renders a status as OpenMetrics text; every name starts with `vip_`. The records'
/// counters come from their tables (`counters`), one family per entry; the groups'
/// states, the VIPs' actions, the lease and the priority are gauges of their own.
pub fn render(s: &Status) -> String {
    let mut reg = Registry::with_prefix("vip");
    let vips: Vec<_> = s
        .groups
        .iter()
        .flat_map(|g| {
            g.vips
                .iter()
                .map(move |v| (labels(&[("group", &g.name), ("vip", &v.address)]), &v.stats))
        })
        .collect();
    table(&mut reg, &vips);
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
    let routes = gauge(
        &mut reg,
        "group_routes_announced",
        "1 while a routed group's host routes are announced over BGP",
    );
    let bgp_up = gauge(
        &mut reg,
        "bgp_session_established",
        "1 while the BGP session to the neighbour is Established",
    );
    let bfd_up = gauge(
        &mut reg,
        "bgp_bfd_up",
        "1 while the BFD session to the neighbour is up",
    );
    if let Some(b) = &s.bgp {
        for x in &b.sessions {
            let l = labels(&[("neighbor", &x.neighbor)]);
            bgp_up.get_or_create(&l).set(x.established as i64);
            if x.bfd.is_some() {
                bfd_up.get_or_create(&l).set(x.bfd_up as i64);
            }
        }
    }
    for g in &s.groups {
        let gl = labels(&[("group", &g.name)]);
        if let Some(r) = &g.routes {
            routes.get_or_create(&gl).set(r.announced as i64);
        }
        active.get_or_create(&gl).set((g.state == "active") as i64);
        healthy.get_or_create(&gl).set(g.healthy as i64);
        state
            .get_or_create(&labels(&[("group", &g.name), ("state", &g.state)]))
            .set(1);
        for v in &g.vips {
            let l = labels(&[
                ("group", &g.name),
                ("vip", &v.address),
                ("action", &v.action),
            ]);
            action.get_or_create(&l).set(1);
        }
        for (k, n) in &g.transition_reasons {
            let (to, why) = k.split_once('/').unwrap_or((k.as_str(), "other"));
            let l = labels(&[("group", &g.name), ("to", to), ("reason", why)]);
            transitions.get_or_create(&l).inc_by(*n);
        }
        if let Some(ms) = g.election.as_ref().and_then(|e| e.lease_remaining_ms) {
            lease.get_or_create(&gl).set(ms as i64);
        }
    }
    let elected: Vec<_> = s
        .groups
        .iter()
        .filter_map(|g| Some((labels(&[("group", &g.name)]), g.election.as_ref()?)))
        .collect();
    table(
        &mut reg,
        &elected
            .iter()
            .map(|(l, e)| (l.clone(), &e.counters))
            .collect::<Vec<_>>(),
    );
    table(
        &mut reg,
        &elected
            .iter()
            .map(|(l, e)| (l.clone(), &e.errors))
            .collect::<Vec<_>>(),
    );
    let priority = gauge(&mut reg, "group_priority", "Effective election priority");
    for (l, e) in &elected {
        priority.get_or_create(l).set(e.effective_priority as i64);
    }
    let echoes: Vec<_> = s
        .groups
        .iter()
        .filter_map(|g| Some((labels(&[("group", &g.name)]), &g.echo.as_ref()?.counters)))
        .collect();
    table(&mut reg, &echoes);
    let members: Vec<_> = s
        .groups
        .iter()
        .filter_map(|g| Some((g, g.balance.as_ref()?)))
        .flat_map(|(g, b)| {
            b.members
                .iter()
                .map(move |m| (labels(&[("group", &g.name), ("member", &m.address)]), m))
        })
        .collect();
    table(
        &mut reg,
        &members
            .iter()
            .map(|(l, m)| (l.clone(), &m.stats))
            .collect::<Vec<_>>(),
    );
    let member_up = gauge(
        &mut reg,
        "balance_member_up",
        "1 while the member is in the table",
    );
    for (l, m) in &members {
        member_up.get_or_create(l).set(m.healthy as i64);
    }
    let eips: Vec<_> = s
        .eips
        .iter()
        .map(|e| (labels(&[("eip", &e.address), ("vip", &e.vip)]), &e.stats))
        .collect();
    table(&mut reg, &eips);
    let routes6: Vec<_> = s
        .routes6
        .iter()
        .map(|r| (labels(&[("vip", &r.vip)]), &r.stats))
        .collect();
    table(&mut reg, &routes6);
    let dp = counter(
        &mut reg,
        "dataplane_events",
        "Program-wide data-plane counters, by kind",
    );
    for (k, v) in &s.global {
        dp.get_or_create(&labels(&[("kind", k)])).inc_by(*v);
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn counter(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

/// One family per entry of `T`'s table, in table order, with a sample per record.
fn table<T: Counted>(reg: &mut Registry, records: &[(Labels, &Counts<T>)]) {
    for c in T::COUNTERS {
        match c.kind {
            Kind::Counter => {
                let f = counter(reg, c.metric, c.help);
                for (l, r) in records {
                    f.get_or_create(l).inc_by((c.get)(r));
                }
            }
            Kind::Gauge => {
                let f = gauge(reg, c.metric, c.help);
                for (l, r) in records {
                    f.get_or_create(l).set((c.get)(r) as i64);
                }
            }
        }
    }
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

    /// The families of `text`, in order, with their help and type.
    fn families(text: &str) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let mut help = String::new();
        for l in text.lines() {
            if let Some(h) = l.strip_prefix("# HELP ") {
                help = h.split_once(' ').map_or("", |(_, h)| h).to_string();
            } else if let Some(t) = l.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap();
                out.push((name.to_string(), kind.to_string(), help.clone()));
            }
        }
        out
    }

    #[test]
    fn every_table_entry_is_a_family_with_its_help_and_samples() {
        use crate::counters::{AdvertErrors, EchoCounters, ElectionCounters};
        use vip_common::{BalanceStats, EipStats, Route6Stats, VipStats};
        let text = render(&crate::status::example());
        let fams = families(&text);
        // Counter i of a table holds base + i in the example.
        fn check<T: Counted>(
            text: &str,
            fams: &[(String, String, String)],
            labels: &str,
            base: u64,
        ) {
            for (i, c) in T::COUNTERS.iter().enumerate() {
                let name = format!("vip_{}", c.metric);
                let kind = match c.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                assert!(
                    fams.contains(&(name.clone(), kind.into(), format!("{}.", c.help))),
                    "{name}: {fams:?}"
                );
                let sample = match c.kind {
                    Kind::Counter => format!("{name}_total{{{labels}}} {}", base + i as u64),
                    Kind::Gauge => format!("{name}{{{labels}}} {}", base + i as u64),
                };
                assert!(
                    text.lines().any(|l| l == sample),
                    "no `{sample}` in\n{text}"
                );
            }
        }
        check::<VipStats>(&text, &fams, r#"group="web",vip="10.0.0.50""#, 100);
        check::<ElectionCounters>(&text, &fams, r#"group="web""#, 200);
        check::<AdvertErrors>(&text, &fams, r#"group="web""#, 300);
        check::<EchoCounters>(&text, &fams, r#"group="web""#, 400);
        check::<BalanceStats>(&text, &fams, r#"group="web",member="10.0.0.11""#, 600);
        check::<EipStats>(&text, &fams, r#"eip="203.0.113.10",vip="10.0.0.50""#, 700);
        check::<Route6Stats>(&text, &fams, r#"vip="2001:db8::60""#, 800);
        // Every family once: each table's in its order, between the state gauges.
        fn of<T: Counted>() -> Vec<String> {
            crate::counters::families::<T>().map(|f| f.0).collect()
        }
        let gauges = |names: &[&str]| names.iter().map(|n| format!("vip_{n}")).collect();
        let want: Vec<String> = [
            of::<VipStats>(),
            gauges(&[
                "vip_action",
                "group_active",
                "group_state",
                "group_healthy",
                "group_transitions",
                "lease_remaining_milliseconds",
                "group_routes_announced",
                "bgp_session_established",
                "bgp_bfd_up",
            ]),
            of::<ElectionCounters>(),
            of::<AdvertErrors>(),
            gauges(&["group_priority"]),
            of::<EchoCounters>(),
            of::<BalanceStats>(),
            gauges(&["balance_member_up"]),
            of::<EipStats>(),
            of::<Route6Stats>(),
            gauges(&["dataplane_events"]),
        ]
        .concat();
        let names: Vec<String> = fams.iter().map(|f| f.0.clone()).collect();
        assert_eq!(names, want);
        for want in [
            r#"vip_vip_action{group="web",vip="10.0.0.50",action="local"} 1"#,
            r#"vip_group_active{group="web"} 1"#,
            r#"vip_group_state{group="web",state="active"} 1"#,
            r#"vip_group_healthy{group="web"} 1"#,
            r#"vip_bgp_session_established{neighbor="10.0.0.1"} 1"#,
            r#"vip_bgp_bfd_up{neighbor="10.0.0.1"} 1"#,
            r#"vip_group_transitions_total{group="web",to="active",reason="peer_silent"} 1"#,
            r#"vip_lease_remaining_milliseconds{group="web"} 45"#,
            r#"vip_group_priority{group="web"} 200"#,
            r#"vip_balance_member_up{group="web",member="10.0.0.11"} 1"#,
            r#"vip_balance_member_up{group="web",member="10.0.0.10"} 0"#,
            r#"vip_dataplane_events_total{kind="echo_answered"} 7"#,
            r#"vip_dataplane_events_total{kind="parse_errors"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == want), "no `{want}` in\n{text}");
        }
    }
}
