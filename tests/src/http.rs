//! HTTP/1.1 keep-alive load through a VIP: a small server that answers each request
//! after a delay and closes a connection after a number of requests (as nginx's
//! `keepalive_requests` does, so every connection ends within a drain), and clients
//! that keep connections open, one request at a time, recording what happened to each
//! (which server answered, requests sent and answered, the error that ended it). The
//! handover tests on one segment and over BGP judge a planned handover by them.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::Netns;

/// How the load is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// How long the server takes to answer: requests are in flight most of the time.
    pub delay: Duration,
    /// Requests per connection, the last one answered with `Connection: close`.
    pub per_connection: usize,
    /// Client connections running at once, on each client host.
    pub clients: usize,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            delay: Duration::from_millis(200),
            per_connection: 3,
            clients: 10,
        }
    }
}

/// An HTTP server on `addr` in a namespace, until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Serves on `addr` (bound before this node holds the VIP, as a load balancer
    /// is), answering with `name`.
    pub fn start(ns: &Netns, addr: SocketAddr, name: &'static str, load: Load) -> Server {
        let key = if addr.is_ipv4() {
            "net.ipv4.ip_nonlocal_bind"
        } else {
            "net.ipv6.ip_nonlocal_bind"
        };
        ns.sysctl(key, "1").expect("ip_nonlocal_bind");
        let listener = ns
            .run_in(|| TcpListener::bind(addr))
            .expect("binding the VIP");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let accept = thread::spawn(move || {
            let mut conns = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => conns.push(thread::spawn(move || serve(s, name, load))),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Server {
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// One connection: up to `per_connection` requests, each answered after `delay`
/// with the server's name as the body.
fn serve(mut s: TcpStream, name: &str, load: Load) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    for i in 1..=load.per_connection {
        if read_head(&mut s, &mut buf).is_err() {
            return;
        }
        thread::sleep(load.delay);
        let connection = if i == load.per_connection {
            "close"
        } else {
            "keep-alive"
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{name}",
            name.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads up to the end of a message head ("\r\n\r\n"); what follows stays in `buf`.
/// Returns the head.
fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Ok(head);
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What happened on one client connection.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The server that answered first ("a" or "b").
    pub server: Option<String>,
    pub sent: usize,
    pub answered: usize,
    /// When it was opened and when it ended (closed or failed).
    pub opened: Instant,
    pub ended: Instant,
    pub error: Option<(ErrorKind, String)>,
}

impl Conn {
    fn new() -> Conn {
        let now = Instant::now();
        Conn {
            server: None,
            sent: 0,
            answered: 0,
            opened: now,
            ended: now,
            error: None,
        }
    }

    /// Open across `t`, to `server`.
    pub fn across(&self, t: Instant, server: &str) -> bool {
        self.server.as_deref() == Some(server) && self.opened < t && self.ended > t
    }
}

/// One client: keep-alive connections to `to`, one request at a time, until
/// `stop`; a new connection when the server closes one.
pub fn client(to: SocketAddr, stop: &AtomicBool) -> Vec<Conn> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut conn = Conn::new();
        let mut s = match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => {
                conn.error = Some((e.kind(), format!("connect: {e}")));
                conn.ended = Instant::now();
                out.push(conn);
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            conn.sent += 1;
            if let Err(e) = s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n") {
                conn.error = Some((e.kind(), format!("request {}: {e}", conn.sent)));
                break;
            }
            let head = match read_head(&mut s, &mut buf) {
                Ok(h) => h,
                Err(e) => {
                    conn.error = Some((e.kind(), format!("response {}: {e}", conn.sent)));
                    break;
                }
            };
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < len {
                let mut chunk = [0u8; 64];
                match s.read(&mut chunk) {
                    Ok(0) => {
                        conn.error = Some((ErrorKind::UnexpectedEof, "body cut".into()));
                        break;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => {
                        conn.error = Some((e.kind(), format!("body {}: {e}", conn.sent)));
                        break;
                    }
                }
            }
            if conn.error.is_some() {
                break;
            }
            let body: Vec<u8> = buf.drain(..len).collect();
            conn.answered += 1;
            conn.server
                .get_or_insert_with(|| String::from_utf8_lossy(&body).into_owned());
            if head.contains("Connection: close") {
                break;
            }
        }
        conn.ended = Instant::now();
        out.push(conn);
    }
    out
}

/// Clients on `hosts`, `load.clients` connections at a time on each, to `to`, until
/// `stop`.
pub fn clients_on(
    hosts: &[&Netns],
    to: SocketAddr,
    load: Load,
    stop: &AtomicBool,
) -> Vec<Vec<Conn>> {
    thread::scope(|s| {
        let per_host: Vec<_> = hosts
            .iter()
            .map(|ns| {
                s.spawn(move || {
                    ns.run_in(|| {
                        thread::scope(|s| {
                            let workers: Vec<_> = (0..load.clients)
                                .map(|i| {
                                    s.spawn(move || {
                                        // Spread the clients over a connection's life: at
                                        // any instant, connections are at every request.
                                        let life = load.delay * load.per_connection as u32;
                                        thread::sleep(life * i as u32 / load.clients as u32);
                                        client(to, stop)
                                    })
                                })
                                .collect();
                            workers
                                .into_iter()
                                .flat_map(|w| w.join().unwrap())
                                .collect::<Vec<Conn>>()
                        })
                    })
                })
            })
            .collect();
        per_host.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Sums over client connections.
#[derive(Debug, Default)]
pub struct Tally {
    pub conns: usize,
    pub to_a: usize,
    pub to_b: usize,
    pub requests: usize,
    pub answered: usize,
    pub failed: usize,
    pub resets: usize,
    /// Per handover (a -> b, b -> a): connections to the old active open across it,
    /// and how many of them completed every request.
    pub across: [(usize, usize); 2],
}

impl Tally {
    pub fn of(conns: &[Conn], demoted: Instant, resumed: Instant) -> Tally {
        let mut t = Tally {
            conns: conns.len(),
            ..Tally::default()
        };
        for c in conns {
            t.requests += c.sent;
            t.answered += c.answered;
            match c.server.as_deref() {
                Some("a") => t.to_a += 1,
                Some("b") => t.to_b += 1,
                _ => {}
            }
            for (i, (at, old)) in [(demoted, "a"), (resumed, "b")].into_iter().enumerate() {
                if c.across(at, old) {
                    t.across[i].0 += 1;
                    t.across[i].1 += usize::from(c.error.is_none());
                }
            }
            if let Some((kind, _)) = &c.error {
                t.failed += 1;
                t.resets += usize::from(matches!(
                    kind,
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                ));
            }
        }
        t
    }

    /// The verdict on two planned handovers (a to b, then b to a): connections to the
    /// old active lived across each, and none failed, lost a request or was reset;
    /// at least 99 % of those across a handover completed every request.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert!(
            self.across[0].0 > 0,
            "no connection to a lived across the demote"
        );
        assert!(
            self.across[1].0 > 0,
            "no connection to b lived across the preemption"
        );
        assert_eq!(self.failed, 0, "failed connections");
        assert_eq!(self.requests - self.answered, 0, "failed requests");
        assert_eq!(self.resets, 0, "resets");
        for (i, (across, complete)) in self.across.iter().enumerate() {
            assert!(
                complete * 100 >= across * 99,
                "handover {}: only {complete} of {across} connections to the old active completed",
                i + 1
            );
        }
    }

    pub fn add(&mut self, o: &Tally) {
        self.conns += o.conns;
        self.to_a += o.to_a;
        self.to_b += o.to_b;
        self.requests += o.requests;
        self.answered += o.answered;
        self.failed += o.failed;
        self.resets += o.resets;
        for i in 0..2 {
            self.across[i].0 += o.across[i].0;
            self.across[i].1 += o.across[i].1;
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections ({} to a, {} to b), {} requests, {} unanswered, {} failed \
             connections ({} resets); connections to the old active across the demote \
             (a -> b): {}/{} complete, across the preemption (b -> a): {}/{} complete",
            self.conns,
            self.to_a,
            self.to_b,
            self.requests,
            self.requests - self.answered,
            self.failed,
            self.resets,
            self.across[0].1,
            self.across[0].0,
            self.across[1].1,
            self.across[1].0
        )
    }
}
