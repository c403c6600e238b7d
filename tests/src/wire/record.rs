//! The recorder on the switch and the asker on the client.
//!
//! **Where the recorder listens.** One packet socket per switch port (the bridge's
//! side of each host's veth), each keeping the frames that come *in* through its port:
//! exactly what the host on that cable sends, whoever it claims to be. Checked on this
//! kernel: a packet socket on `br0` itself sees the flooded requests but not the
//! unicast replies the bridge forwards between two ports unless `br0` is promiscuous;
//! the per-port sockets see both, and say which cable a frame came from. Frames from
//! several sockets are put in order by the kernel's arrival stamps (SO_TIMESTAMPNS),
//! so the recorder's own scheduling never reorders the wire. A classic BPF filter in
//! the kernel keeps only ARP and neighbour solicitations/advertisements (the echo's
//! probes and replies, a thousand or more a second, never reach userspace), and the
//! sockets' drop counters are read at the end: a recording that lost frames, or whose
//! frames the kernel did not stamp, says so.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{classify, realtime_ns, Family, Seen, Watch};
use crate::{Capture, Netns};

/// What a recording holds once stopped.
#[derive(Debug, Default)]
pub struct Recording {
    /// The kept frames, in arrival order.
    pub seen: Vec<Seen>,
    /// Frames the kernel dropped because a socket's queue was full (0 for a sound
    /// recording).
    pub drops: u64,
    /// Kept frames the kernel did not stamp, timed when read instead (0 for a sound
    /// recording).
    pub unstamped: u64,
}

/// Captures on switch ports until finished; see the module's documentation.
pub struct Recorder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Recording>>>,
    /// The ports, in the order of [`Seen::port`].
    pub ports: Vec<String>,
}

/// Classic BPF: ARP, and ICMPv6 types 135/136 right after the IPv6 header; frames the
/// port sends (the bridge's flooding to that host) are left out in the kernel too.
fn filter() -> [libc::sock_filter; 12] {
    const SKF_AD_PKTTYPE: u32 = 0xffff_f000 + 4;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld, jmp) = (libc::BPF_LD | libc::BPF_ABS, libc::BPF_JMP | libc::BPF_K);
    [
        /* 0 */ stmt(ld | libc::BPF_W, SKF_AD_PKTTYPE),
        /* 1 */ jump(jmp | libc::BPF_JEQ, u32::from(libc::PACKET_OUTGOING), 9, 0),
        /* 2 */ stmt(ld | libc::BPF_H, 12),
        /* 3 */ jump(jmp | libc::BPF_JEQ, 0x0806, 6, 0),
        /* 4 */ jump(jmp | libc::BPF_JEQ, 0x86dd, 0, 6),
        /* 5 */ stmt(ld | libc::BPF_B, 20),
        /* 6 */ jump(jmp | libc::BPF_JEQ, 58, 0, 4),
        /* 7 */ stmt(ld | libc::BPF_B, 54),
        /* 8 */ jump(jmp | libc::BPF_JGE, 135, 0, 2),
        /* 9 */ jump(jmp | libc::BPF_JGT, 136, 1, 0),
        /* 10 */ stmt(libc::BPF_RET | libc::BPF_K, 65535),
        /* 11 */ stmt(libc::BPF_RET | libc::BPF_K, 0),
    ]
}

impl Recorder {
    /// Starts recording what comes in through `ports` (interfaces of `switch`) about
    /// the VIPs of `watch`.
    pub fn start(switch: &Netns, ports: &[String], watch: Watch) -> Result<Self> {
        let mut caps = Vec::new();
        for p in ports {
            let cap = Capture::open(switch, p).with_context(|| format!("capturing on {p}"))?;
            cap.receive_buffer(8 << 20)?;
            cap.stamp_arrivals()?;
            cap.filter(&filter())?;
            caps.push(cap);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wire-recorder".into())
            .spawn(move || record(&caps, &watch, &s))?;
        Ok(Recorder {
            stop,
            thread: Some(thread),
            ports: ports.to_vec(),
        })
    }

    /// Stops (after what is queued has been read) and returns the recording.
    pub fn finish(mut self) -> Result<Recording> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(e)) => std::panic::resume_unwind(e),
            None => Ok(Recording::default()),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn record(caps: &[Capture], watch: &Watch, stop: &AtomicBool) -> Result<Recording> {
    let mut rec = Recording::default();
    let mut pfds: Vec<libc::pollfd> = caps
        .iter()
        .map(|c| libc::pollfd {
            fd: c.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let last = stop.load(Ordering::Relaxed);
        // SAFETY: valid pollfds for the length given.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 20) };
        for (port, cap) in caps.iter().enumerate() {
            while let Some((at, f)) = cap.recv_stamped() {
                if let Some(kind) = classify(&f, watch) {
                    if at.is_none() {
                        rec.unstamped += 1;
                    }
                    let at_ns = at.unwrap_or_else(realtime_ns);
                    rec.seen.push(Seen { at_ns, port, kind });
                }
            }
        }
        if last {
            break;
        }
    }
    for c in caps {
        rec.drops += u64::from(c.drops()?);
    }
    rec.seen.sort_by_key(|s| s.at_ns);
    Ok(rec)
}

/// One request the asker sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// CLOCK_REALTIME nanoseconds just before the send.
    pub at_ns: u64,
    pub family: Family,
    pub tag: Option<u64>,
    /// Whether the kernel took the frame.
    pub ok: bool,
}

/// A client resolving both VIPs over and over: an ARP request every `interval`, and a
/// neighbour solicitation every `interval` half an interval later, each as the
/// client's kernel would send it (broadcast ARP from its address and MAC; NS from its
/// global address to the solicited-node group with its link-layer address), sent from
/// a packet socket on its interface so that its own neighbour cache plays no part.
pub struct Asker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sent>>>,
}

impl Asker {
    pub fn start(ns: &Netns, iface: &str, watch: Watch, interval: Duration) -> Result<Self> {
        let cap = Capture::open(ns, iface)?;
        // It only sends: nothing is queued for it to read.
        cap.filter(&[libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        }])?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wire-asker".into())
            .spawn(move || ask(&cap, &watch, interval, &s))?;
        Ok(Asker {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops asking; returns every request sent.
    pub fn finish(mut self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Asker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ask(cap: &Capture, w: &Watch, interval: Duration, stop: &AtomicBool) -> Vec<Sent> {
    let ns = super::neighbour_solicitation(w.client_mac, w.client6, w.vip6);
    let mut sent = Vec::new();
    let mut tag = 0u64;
    let mut next = Instant::now();
    let mut family = Family::Arp;
    let half = interval / 2;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
            continue;
        }
        let at_ns = realtime_ns();
        let (ok, t) = match family {
            Family::Arp => {
                tag += 1;
                let f = super::arp_request(w.client_mac, w.client4, w.vip4, Some(tag));
                (cap.send(&f).is_ok(), Some(tag))
            }
            Family::Nd => (cap.send(&ns).is_ok(), None),
        };
        sent.push(Sent {
            at_ns,
            family,
            tag: t,
            ok,
        });
        family = match family {
            Family::Arp => Family::Nd,
            Family::Nd => Family::Arp,
        };
        // A fixed schedule; after a stall (the asker was not scheduled) it goes on
        // from now instead of sending a burst.
        next += half;
        if next + interval < Instant::now() {
            next = Instant::now() + half;
        }
    }
    sent
}
