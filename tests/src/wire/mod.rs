//! Who owns a VIP, judged from the wire alone: a recorder on the lab's switch keeps
//! every ARP and neighbour-discovery frame the hosts send, with the kernel's arrival
//! time; an asker in the client's namespace asks for both VIPs every few
//! milliseconds; the analysis says, per request, which MACs answered it, which
//! announcements overlapped another node's answers, and how long nobody answered.
//! Nothing here asks an agent anything.

mod analyse;
mod frames;
mod record;

use std::{fmt, str::FromStr};

pub use analyse::{
    analyse, Analysis, Answered, By, Episode, FamilyAnalysis, Mark, MarkFigures, Overlap, Stretch,
    Verdict, OVERLAP_GAP,
};
pub use frames::{arp_request, classify, neighbour_solicitation, Kind, Watch};
pub use record::{Asker, Recorder, Recording, Sent};

/// A MAC address as it appeared in a frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
}

impl From<Mac> for [u8; 6] {
    fn from(m: Mac) -> Self {
        m.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut m = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut m {
            let p = parts
                .next()
                .ok_or_else(|| anyhow::anyhow!("`{s}` is not a MAC address"))?;
            *b = u8::from_str_radix(p, 16)
                .map_err(|_| anyhow::anyhow!("`{s}` is not a MAC address"))?;
        }
        anyhow::ensure!(parts.next().is_none(), "`{s}` is not a MAC address");
        Ok(Mac(m))
    }
}

/// The two ways a client resolves a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: ARP requests, replies and gratuitous ARP.
    Arp,
    /// IPv6: neighbour solicitations and (solicited or unsolicited) advertisements.
    Nd,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::Arp, Family::Nd];

    pub fn name(self) -> &'static str {
        match self {
            Family::Arp => "ARP",
            Family::Nd => "NS",
        }
    }
}

/// One frame the recorder kept: when it reached the switch, through which port (the
/// host plugged into it), and what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// CLOCK_REALTIME nanoseconds, as the kernel stamped the frame's arrival.
    pub at_ns: u64,
    /// Index of the port in the recorder's list.
    pub port: usize,
    pub kind: Kind,
}

/// CLOCK_REALTIME now, in nanoseconds: the clock of the kernel's packet timestamps,
/// so that faults and sends line up with the frames.
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
