//! Anycast traffic for the routed lab (`crate::routed`): a TCP server on each node
//! that names itself, a client's UDP flows and TCP connections, and who answered
//! them. Shared by `tests/tests/anycast.rs`; judged from the client, as a user's
//! traffic is.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use crate::{
    routed::{Options, Routed, VIP},
    Netns,
};

pub const FLOWS: u16 = 3000;
pub const CONNECTIONS: usize = 240;
pub const TCP_PORT: u16 = 9000;

/// Answers each byte a connection sends with the node's name and a newline (the
/// lines for what one read brought in one write), until dropped (bound before the
/// node holds the VIP).
pub struct NameServer {
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl NameServer {
    pub fn start(ns: &Netns, name: &'static str) -> NameServer {
        ns.sysctl("net.ipv4.ip_nonlocal_bind", "1")
            .expect("nonlocal bind");
        let l = ns
            .run_in(|| TcpListener::bind((VIP, TCP_PORT)))
            .expect("binding the VIP");
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let accept = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let s = s.clone();
                        thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                            let mut b = [0u8; 4096];
                            let line = format!("{name}\n");
                            while !s.load(Ordering::Relaxed) {
                                match std::io::Read::read(&mut c, &mut b) {
                                    Ok(0) => return,
                                    // One write for what one read brought.
                                    Ok(n) => {
                                        if c.write_all(line.repeat(n).as_bytes()).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        NameServer {
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// The routed lab of `o`, with a name server on each of its nodes (dropped before the
/// lab: the field order of the tuple); an anycast group's director settled on every
/// node ([`Routed::wait_directed`]).
pub fn anycast_lab(o: &Options, what: &str) -> (Vec<NameServer>, Routed) {
    let lab = Routed::start(o).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    if o.group.contains("balance") {
        lab.wait_directed(&o.nodes, what)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let servers = o
        .nodes
        .iter()
        .map(|n| NameServer::start(&lab.lan.host(n).ns, n))
        .collect();
    (servers, lab)
}

/// One datagram from each of `FLOWS` source ports: who answered each (None: nobody).
pub fn udp_flows(client: &Netns) -> Vec<Option<String>> {
    client.run_in(|| {
        let to = SocketAddr::new(VIP.into(), crate::routed::PORT);
        let socks: Vec<UdpSocket> = (0..FLOWS)
            .map(|i| {
                let s = UdpSocket::bind(("0.0.0.0", 30000 + i)).expect("binding a flow");
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .collect();
        let mut out: Vec<Option<String>> = vec![None; socks.len()];
        for _ in 0..3 {
            for (i, s) in socks.iter().enumerate() {
                if out[i].is_none() {
                    let _ = s.send_to(&(i as u64).to_be_bytes(), to);
                }
            }
            thread::sleep(Duration::from_millis(300));
            let mut buf = [0u8; 64];
            for (i, s) in socks.iter().enumerate() {
                while let Ok(n) = s.recv(&mut buf) {
                    if n > 8 {
                        out[i] = Some(String::from_utf8_lossy(&buf[8..n]).into_owned());
                    }
                }
            }
        }
        out
    })
}

/// Open connections, each with the member that answered it.
pub struct Conns(pub Vec<(BufReader<TcpStream>, String)>);

impl Conns {
    pub fn open(client: &Netns) -> Conns {
        let to = SocketAddr::new(VIP.into(), TCP_PORT);
        let mut v = Vec::new();
        for _ in 0..CONNECTIONS {
            let s = client
                .run_in(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))
                .expect("connecting to the VIP");
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut r = BufReader::new(s);
            let who = ask(&mut r).expect("a first answer");
            v.push((r, who));
        }
        Conns(v)
    }

    /// Per connection: still answered by the same member.
    pub fn alive(&mut self) -> Vec<bool> {
        self.0
            .iter_mut()
            .map(|(r, who)| ask(r).as_deref() == Some(who.as_str()))
            .collect()
    }
}

pub fn ask(r: &mut BufReader<TcpStream>) -> Option<String> {
    r.get_mut().write_all(b"?").ok()?;
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim().to_string();
    (!line.is_empty()).then_some(line)
}

pub fn shares(who: &[Option<String>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for w in who {
        *m.entry(w.clone().unwrap_or_else(|| "-".into()))
            .or_insert(0) += 1;
    }
    m
}

/// A request of this many bytes: two full-size segments and a part.
pub const BIG: usize = 3000;

impl Conns {
    /// Per connection: a `len`-byte request answered in full by the same member
    /// (one line per byte). The requests go out from connection `first` on (so the
    /// first, which meet a path MTU the client has not learned yet, can differ from
    /// one call to the next), all of them before any answer is read: a client's
    /// stack that learns a smaller path MTU resends the segments it had sized before
    /// after a retransmission timeout, and the connections wait for theirs at once.
    pub fn big(&mut self, len: usize, first: usize) -> Vec<bool> {
        let n = self.0.len();
        let mut sent = vec![false; n];
        for i in (0..n).map(|i| (first + i) % n) {
            sent[i] = self.0[i].0.get_mut().write_all(&vec![b'?'; len]).is_ok();
        }
        self.0
            .iter_mut()
            .zip(sent)
            .map(|((r, who), sent)| {
                sent && (0..len).all(|_| {
                    let mut line = String::new();
                    r.read_line(&mut line).is_ok() && line.trim() == who.as_str()
                })
            })
            .collect()
    }
}
