//! The election's wire format: one UDP datagram per advertisement, unicast to each
//! peer (clouds have no multicast). Fixed layout, network byte order:
//!
//! ```text
//!  0..4   magic "VIPA"          4   version (2; 1 is still read)
//!  5      kind (1 advert, 2 release, 3 hold, 4 hello, 5 standby, 6 claim)
//!  6      priority (0..=255)    7   flags (bit 0: HMAC follows; bit 1: the sender
//!                                   releases the VIPs when a better peer claims them)
//!  8..10  advert interval, ms  10..12 hold, ms (kind 3)  12..18 sender MAC
//! 18      address family (4/6) 19   group name length n (1..=64)
//! 20..36  sender's primary address (IPv4 in the first 4 bytes)
//! 36..44  sequence number (strictly increasing within an epoch)
//! 44..52  epoch (version 2 only): random, drawn anew at every start of the sender
//! 52..52+n group name (UTF-8)   then, with a key, 32 bytes HMAC-SHA256 of all before
//! ```
//!
//! Replay protection is (epoch, sequence): a receiver accepts a higher sequence in
//! the sender's current epoch, or a new epoch, and refuses the epochs it has seen
//! retired. No clock is involved, so a sender whose clock stepped back is never
//! locked out (version 1 seeded its sequence from the wall clock). Version 1 is still
//! decoded (epoch 0, the sequence alone decides), so a peer running an older vip is
//! understood during a rolling upgrade, and is answered in version 1.
//!
//! Decoding never panics and never allocates more than the datagram; every way a
//! datagram can be wrong is a [`DecodeError`], which the agent counts and ignores.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::mac::Mac;

const MAGIC: &[u8; 4] = b"VIPA";
const VERSION: u8 = 2;
const HEADER_V1: usize = 44;
const HEADER: usize = 52;
const TAG: usize = 32;
pub const MAX_NAME: usize = 64;
const FLAG_HMAC: u8 = 1;
const FLAG_HANDOVER: u8 = 2;

/// What an advertisement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// "I am active" (sent every interval by the active node).
    Advert,
    /// "I am giving the VIPs up now": standbys take over after their skew only.
    Release,
    /// "I am restarting; hold on for `hold_ms`": neither lease nor election moves.
    Hold,
    /// "I am starting and listening, with this priority": a starting standby that
    /// hears a better candidate lets it claim the VIPs first (version 2 only).
    Hello,
    /// "I am a standby, with this priority" (every interval, from every healthy
    /// standby): standbys learn which of them is the best one alive, which then takes
    /// over without a skew; in a balanced group it also says "I am a healthy member",
    /// and the director spreads flows over the members it hears (version 2 only).
    Standby,
    /// "I am better than you and want the VIPs: release them to me" (a preemption, or
    /// `vip promote`, sent to every peer every interval until the active releases).
    /// An active that hears a better claim stops answering first, then releases, so
    /// the claimant never answers while it does (version 2 only).
    Claim,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub kind: Kind,
    pub priority: u8,
    pub interval_ms: u16,
    pub hold_ms: u16,
    pub mac: Mac,
    pub addr: IpAddr,
    pub seq: u64,
    /// The sender's epoch (random per start); 0 for a version-1 sender.
    pub epoch: u64,
    pub group: String,
    /// The sender answers a [`Kind::Claim`] with a release (flag bit 1). A peer
    /// without it (an older vip) is preempted the old way: by taking over.
    pub handover: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram of {0} bytes is too short")]
    TooShort(usize),
    #[error("not a vip advertisement (bad magic)")]
    BadMagic,
    #[error("unsupported version {0}")]
    BadVersion(u8),
    #[error("unknown kind {0}")]
    BadKind(u8),
    #[error("bad address family {0}")]
    BadFamily(u8),
    #[error("bad group name")]
    BadName,
    #[error("length {got} does not match the header (want {want})")]
    BadLength { got: usize, want: usize },
    #[error("authentication required but the advertisement carries none")]
    Unauthenticated,
    #[error("authentication failed")]
    BadAuth,
    #[error("authenticated advertisement but no key is configured")]
    UnexpectedAuth,
}

impl DecodeError {
    /// Failures of authentication, as opposed to plain malformed datagrams.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            DecodeError::Unauthenticated | DecodeError::BadAuth | DecodeError::UnexpectedAuth
        )
    }
}

/// The version of an encoded advertisement (for answering a peer in its own).
pub fn version_of(b: &[u8]) -> Option<u8> {
    (b.len() > 4 && &b[0..4] == MAGIC).then(|| b[4])
}

impl Advert {
    /// Serialises the advertisement (version 2), signed with `key` if given.
    pub fn encode(&self, key: Option<&[u8]>) -> Vec<u8> {
        self.encode_version(VERSION, key)
    }

    /// Serialises in the format of an older peer (1: no epoch, no hello).
    pub fn encode_version(&self, version: u8, key: Option<&[u8]>) -> Vec<u8> {
        let name = self.group.as_bytes();
        let n = name.len().min(MAX_NAME);
        let mut b = Vec::with_capacity(HEADER + n + TAG);
        b.extend_from_slice(MAGIC);
        b.push(version);
        b.push(match self.kind {
            Kind::Advert => 1,
            Kind::Release => 2,
            Kind::Hold => 3,
            Kind::Hello => 4,
            Kind::Standby => 5,
            Kind::Claim => 6,
        });
        b.push(self.priority);
        let mut flags = if key.is_some() { FLAG_HMAC } else { 0 };
        if self.handover {
            flags |= FLAG_HANDOVER;
        }
        b.push(flags);
        b.extend_from_slice(&self.interval_ms.to_be_bytes());
        b.extend_from_slice(&self.hold_ms.to_be_bytes());
        b.extend_from_slice(&self.mac.0);
        let mut addr = [0u8; 16];
        let family = match self.addr {
            IpAddr::V4(a) => {
                addr[..4].copy_from_slice(&a.octets());
                4
            }
            IpAddr::V6(a) => {
                addr.copy_from_slice(&a.octets());
                6
            }
        };
        b.push(family);
        b.push(n as u8);
        b.extend_from_slice(&addr);
        b.extend_from_slice(&self.seq.to_be_bytes());
        if version >= 2 {
            b.extend_from_slice(&self.epoch.to_be_bytes());
        }
        b.extend_from_slice(&name[..n]);
        if let Some(k) = key {
            let tag = mac_of(k, &b);
            b.extend_from_slice(&tag);
        }
        b
    }

    /// Parses and (with `key`) authenticates a datagram.
    pub fn decode(b: &[u8], key: Option<&[u8]>) -> Result<Advert, DecodeError> {
        Self::decode_with(b, |_| key)
    }

    /// Parses a datagram, authenticating it with the key `key_for` gives for its group.
    pub fn decode_with<'k>(
        b: &[u8],
        key_for: impl FnOnce(&str) -> Option<&'k [u8]>,
    ) -> Result<Advert, DecodeError> {
        if b.len() < HEADER_V1 + 1 {
            return Err(DecodeError::TooShort(b.len()));
        }
        if &b[0..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let header = match b[4] {
            1 => HEADER_V1,
            VERSION => HEADER,
            v => return Err(DecodeError::BadVersion(v)),
        };
        if b.len() < header + 1 {
            return Err(DecodeError::TooShort(b.len()));
        }
        let kind = match b[5] {
            1 => Kind::Advert,
            2 => Kind::Release,
            3 => Kind::Hold,
            4 if header == HEADER => Kind::Hello,
            5 if header == HEADER => Kind::Standby,
            6 if header == HEADER => Kind::Claim,
            k => return Err(DecodeError::BadKind(k)),
        };
        let signed = b[7] & FLAG_HMAC != 0;
        let n = b[19] as usize;
        if n == 0 || n > MAX_NAME {
            return Err(DecodeError::BadName);
        }
        let want = header + n + if signed { TAG } else { 0 };
        if b.len() != want {
            return Err(DecodeError::BadLength { got: b.len(), want });
        }
        let group =
            std::str::from_utf8(&b[header..header + n]).map_err(|_| DecodeError::BadName)?;
        match (key_for(group), signed) {
            (Some(_), false) => return Err(DecodeError::Unauthenticated),
            (None, true) => return Err(DecodeError::UnexpectedAuth),
            (Some(k), true) => {
                let mut m = <Hmac<Sha256>>::new_from_slice(k).map_err(|_| DecodeError::BadAuth)?;
                m.update(&b[..header + n]);
                m.verify_slice(&b[header + n..])
                    .map_err(|_| DecodeError::BadAuth)?;
            }
            (None, false) => {}
        }
        let addr = match b[18] {
            4 => IpAddr::V4(Ipv4Addr::new(b[20], b[21], b[22], b[23])),
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[20..36]);
                IpAddr::V6(Ipv6Addr::from(a))
            }
            f => return Err(DecodeError::BadFamily(f)),
        };
        let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let be64 = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(x)
        };
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[12..18]);
        Ok(Advert {
            kind,
            priority: b[6],
            interval_ms: be16(8),
            hold_ms: be16(10),
            mac: Mac(mac),
            addr,
            seq: be64(36),
            epoch: if header == HEADER { be64(44) } else { 0 },
            group: group.to_string(),
            handover: b[7] & FLAG_HANDOVER != 0,
        })
    }
}

/// Replay protection per sender: (epoch, sequence), see the module's description.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: HashMap<IpAddr, Sender>,
}

#[derive(Debug, Default)]
struct Sender {
    epoch: u64,
    seq: u64,
    /// Epochs this sender has left behind: adverts from them are replays.
    retired: VecDeque<u64>,
    /// Version-1 sequence (wall-clock based, epoch 0).
    legacy: Option<u64>,
}

/// How many of a sender's past epochs are remembered.
const RETIRED: usize = 16;

impl ReplayGuard {
    /// True if the advert is fresh (and records it); false for a replay.
    pub fn accept(&mut self, from: IpAddr, epoch: u64, seq: u64) -> bool {
        let s = self.senders.entry(from).or_default();
        if epoch == 0 {
            if s.legacy.is_some_and(|l| seq <= l) {
                return false;
            }
            s.legacy = Some(seq);
            return true;
        }
        if epoch == s.epoch {
            if seq <= s.seq {
                return false;
            }
            s.seq = seq;
            return true;
        }
        if s.retired.contains(&epoch) {
            return false;
        }
        // A new start of the sender: its previous epoch is over.
        if s.epoch != 0 {
            if s.retired.len() == RETIRED {
                s.retired.pop_front();
            }
            s.retired.push_back(s.epoch);
        }
        s.epoch = epoch;
        s.seq = seq;
        true
    }

    /// Forgets a sender (it left the config).
    pub fn forget(&mut self, from: &IpAddr) {
        self.senders.remove(from);
    }
}

/// A fresh random epoch for this start of the agent (never 0, which marks version 1).
pub fn new_epoch() -> u64 {
    let mut b = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    let mut e = u64::from_ne_bytes(b);
    if !random {
        // No /dev/urandom: the time and pid still differ between two starts.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        e = t ^ ((std::process::id() as u64) << 32);
    }
    e.max(1)
}

fn mac_of(key: &[u8], data: &[u8]) -> [u8; TAG] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Advert {
        Advert {
            kind: Kind::Advert,
            priority: 150,
            interval_ms: 100,
            hold_ms: 0,
            mac: Mac([2, 0, 0, 0, 0, 1]),
            addr: "10.0.0.10".parse().unwrap(),
            seq: 42,
            epoch: 0x1234_5678_9abc_def0,
            group: "web".into(),
            handover: true,
        }
    }

    #[test]
    fn replay_guard_accepts_a_restart_with_any_clock_and_refuses_replays() {
        let p: IpAddr = "10.0.0.2".parse().unwrap();
        let mut g = ReplayGuard::default();
        assert!(g.accept(p, 7, 1));
        assert!(g.accept(p, 7, 2));
        assert!(!g.accept(p, 7, 2), "same sequence again");
        assert!(!g.accept(p, 7, 1), "older sequence");
        // The sender restarts (whatever its clock says): a new epoch, from 1 again.
        assert!(g.accept(p, 99, 1));
        assert!(g.accept(p, 99, 2));
        // Old adverts of the previous start are replays now.
        assert!(!g.accept(p, 7, 3));
        // Version 1 keeps its own monotonic sequence.
        assert!(g.accept(p, 0, 1000));
        assert!(!g.accept(p, 0, 999));
        assert!(new_epoch() != 0 && new_epoch() != new_epoch());
    }

    #[test]
    fn version_1_is_still_read_and_written() {
        let mut a = sample();
        let b = a.encode_version(1, Some(b"k"));
        assert_eq!(version_of(&b), Some(1));
        a.epoch = 0;
        assert_eq!(Advert::decode(&b, Some(b"k")).unwrap(), a);
        let mut h = sample();
        h.kind = Kind::Hello;
        assert_eq!(Advert::decode(&h.encode(None), None).unwrap(), h);
        // A hello does not exist in version 1.
        let mut b1 = h.encode_version(1, None);
        b1[5] = 4;
        assert_eq!(Advert::decode(&b1, None), Err(DecodeError::BadKind(4)));
    }

    #[test]
    fn round_trip_with_and_without_key() {
        let a = sample();
        assert_eq!(Advert::decode(&a.encode(None), None).unwrap(), a);
        assert_eq!(
            Advert::decode(&a.encode(Some(b"secret")), Some(b"secret")).unwrap(),
            a
        );
        let mut v6 = sample();
        v6.addr = "2001:db8::10".parse().unwrap();
        v6.kind = Kind::Hold;
        v6.hold_ms = 5000;
        assert_eq!(Advert::decode(&v6.encode(None), None).unwrap(), v6);
    }

    #[test]
    fn authentication() {
        let a = sample();
        assert_eq!(
            Advert::decode(&a.encode(Some(b"other")), Some(b"secret")),
            Err(DecodeError::BadAuth)
        );
        assert_eq!(
            Advert::decode(&a.encode(None), Some(b"secret")),
            Err(DecodeError::Unauthenticated)
        );
        assert_eq!(
            Advert::decode(&a.encode(Some(b"k")), None),
            Err(DecodeError::UnexpectedAuth)
        );
        // Any flipped bit breaks the tag.
        let good = a.encode(Some(b"secret"));
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(Advert::decode(&bad, Some(b"secret")).is_err(), "byte {i}");
        }
    }

    #[test]
    fn malformed_never_panics() {
        let good = sample().encode(Some(b"secret"));
        for len in 0..good.len() + 3 {
            let mut b = good.clone();
            b.resize(len, 0xaa);
            let _ = Advert::decode(&b, Some(b"secret"));
            let _ = Advert::decode(&b, None);
        }
        // A small deterministic fuzz: random bytes and mutations of a good datagram.
        let mut rng = vip_common::rng::XorShift64::new(0x9e3779b97f4a7c15);
        let mut rnd = || rng.next_u64();
        for _ in 0..100_000 {
            let mut b = good.clone();
            for _ in 0..(rnd() % 4 + 1) {
                let i = (rnd() as usize) % b.len();
                b[i] = rnd() as u8;
            }
            b.truncate((rnd() as usize) % (good.len() + 1));
            let _ = Advert::decode(
                &b,
                if rnd() % 2 == 0 {
                    Some(b"secret")
                } else {
                    None
                },
            );
        }
        assert_eq!(Advert::decode(b"VIPA", None), Err(DecodeError::TooShort(4)));
        let mut b = sample().encode(None);
        b[19] = 0;
        assert_eq!(Advert::decode(&b, None), Err(DecodeError::BadName));
        let mut b = sample().encode(None);
        b[19] = 200;
        assert_eq!(Advert::decode(&b, None), Err(DecodeError::BadName));
    }
}
