//! The election's wire format: one UDP datagram per advertisement, unicast to each
//! peer (clouds have no multicast). Fixed layout, network byte order:
//!
//! ```text
//!  0..4   magic "VIPA"          4   version (2; 1 is still read)
//!  5      kind (1 advert, 2 release, 3 hold, 4 hello, 5 standby, 6 claim,
//!               7 challenge, 8 answer)
//!  6      priority (0..=255)
//!  7      flags: bit 0 HMAC follows; bit 1 the sender takes part in this version's
//!               handshakes (it releases when a better peer claims the VIPs, it answers
//!               challenges); bit 2 an answer: the HMAC also covers the challenge's
//!               nonce
//!  8..10  advert interval, ms  10..12 hold, ms (kind 3)  12..18 sender MAC
//! 18      address family (4/6) 19   group name length n (1..=64)
//! 20..36  sender's primary address (IPv4 in the first 4 bytes)
//! 36..44  sequence number (strictly increasing within an epoch)
//! 44..52  epoch (version 2 only): random, drawn anew at every start of the sender
//! 52..52+n group name (UTF-8)   then, with a key, 32 bytes HMAC-SHA256 of all before
//!                               (for an answer: of all before, then the nonce)
//! ```
//!
//! **Replay protection** needs the key (without one, anyone can forge any datagram, and
//! refusing some on their unauthenticated epoch and sequence would only let a forger
//! lock a live peer out). It is (epoch, sequence): a receiver accepts a higher sequence
//! in the sender's current epoch and refuses the epochs it saw retired. An epoch it
//! does not know must *prove it is fresh* before it counts: the receiver drops the
//! datagram and sends a [`Kind::Challenge`] to the sender's address; the live sender
//! answers with a [`Kind::Answer`] in its current epoch whose HMAC covers the
//! challenge's nonce (the challenger's own epoch and sequence, never used twice), which
//! a recording cannot have. Only then does the receiver take the new epoch and retire
//! the old one. So no datagram, replayed or forged, makes a receiver refuse a peer that
//! is still speaking: a replay from an earlier epoch only makes the receiver ask, and
//! the live peer's answer is in its live epoch. No clock is involved, so a sender whose
//! clock stepped back is never locked out (version 1 seeded its sequence from the wall
//! clock). A peer that does not take part in the handshakes (an older vip) gets the
//! old rule, made safer: its new epoch is taken only once the one in use has been
//! silent for two intervals. Version 1 is still decoded (epoch 0, the sequence alone
//! decides), so a peer running an older vip is understood during a rolling upgrade,
//! and is answered in version 1.
//!
//! Decoding never panics and never allocates more than the datagram; every way a
//! datagram can be wrong is a [`DecodeError`], which the agent counts and ignores.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
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
const FLAG_HANDSHAKES: u8 = 2;
const FLAG_ANSWER: u8 = 4;

/// A challenge's nonce: the challenger's epoch and the challenge's sequence.
pub type Nonce = (u64, u64);

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
    /// "Prove that your epoch is alive": sent to a peer whose datagram came in an epoch
    /// we do not know; its nonce is this datagram's own (epoch, sequence).
    Challenge,
    /// "Here is my live epoch": the answer to a challenge, its HMAC over the challenge's
    /// nonce too (flag bit 2).
    Answer,
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
    /// The sender answers a [`Kind::Claim`] with a release and a [`Kind::Challenge`]
    /// with an answer (flag bit 1). A peer without it (an older vip) is preempted the
    /// old way, by taking over, and never challenged.
    pub handshakes: bool,
    /// For a [`Kind::Answer`]: the challenge's nonce, which the HMAC covers (flag bit
    /// 2). Decoded only when the receiver knew it (it is not on the wire).
    pub nonce: Option<Nonce>,
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
    #[error("an answer to a challenge that was not made, or is no longer awaited")]
    UnexpectedAnswer,
}

impl DecodeError {
    /// Failures of authentication, as opposed to plain malformed datagrams.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            DecodeError::Unauthenticated
                | DecodeError::BadAuth
                | DecodeError::UnexpectedAuth
                | DecodeError::UnexpectedAnswer
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
            Kind::Challenge => 7,
            Kind::Answer => 8,
        });
        b.push(self.priority);
        let mut flags = if key.is_some() { FLAG_HMAC } else { 0 };
        if self.handshakes {
            flags |= FLAG_HANDSHAKES;
        }
        if self.nonce.is_some() {
            flags |= FLAG_ANSWER;
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
            let tag = mac_of(k, &b, self.nonce);
            b.extend_from_slice(&tag);
        }
        b
    }

    /// Parses and (with `key`) authenticates a datagram.
    pub fn decode(b: &[u8], key: Option<&[u8]>) -> Result<Advert, DecodeError> {
        Self::decode_with(b, |_| (key, None))
    }

    /// Parses a datagram, authenticating it with the key `key_for` gives for its group
    /// (and, for an answer, the nonce of the challenge we await from its sender).
    pub fn decode_with<'k>(
        b: &[u8],
        key_for: impl FnOnce(&str) -> (Option<&'k [u8]>, Option<Nonce>),
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
            7 if header == HEADER => Kind::Challenge,
            8 if header == HEADER => Kind::Answer,
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
        let answer = b[7] & FLAG_ANSWER != 0;
        let (key, awaited) = key_for(group);
        let nonce = match (answer, awaited) {
            (false, _) => None,
            (true, Some(n)) if key.is_some() => Some(n),
            (true, _) => return Err(DecodeError::UnexpectedAnswer),
        };
        match (key, signed) {
            (Some(_), false) => return Err(DecodeError::Unauthenticated),
            (None, true) => return Err(DecodeError::UnexpectedAuth),
            (Some(k), true) => {
                let mut m = <Hmac<Sha256>>::new_from_slice(k).map_err(|_| DecodeError::BadAuth)?;
                m.update(&b[..header + n]);
                if let Some((epoch, seq)) = nonce {
                    m.update(&epoch.to_be_bytes());
                    m.update(&seq.to_be_bytes());
                }
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
            handshakes: b[7] & FLAG_HANDSHAKES != 0,
            nonce,
        })
    }
}

/// Replay protection per sender: (epoch, sequence), with a challenge for an epoch it
/// does not know (see the module's description). Used only with a key.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: HashMap<IpAddr, Sender>,
}

/// What to do with an authenticated datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fresh: act on it.
    Fresh,
    /// An old sequence of the sender's current epoch, or an epoch it left: drop it.
    Replay,
    /// An epoch we have not verified: drop it; `challenge`: ask the sender now (at
    /// most once an interval), see [`ReplayGuard::challenged`].
    Unverified { challenge: bool },
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Sender {
    epoch: u64,
    seq: u64,
    /// When the current epoch was last heard (None: restored from a saved state).
    #[serde(skip)]
    heard: Option<Instant>,
    /// Epochs this sender has left behind: adverts from them are replays.
    retired: VecDeque<u64>,
    /// Version-1 sequence (wall-clock based, epoch 0).
    legacy: Option<u64>,
    /// The challenge we await an answer to, and when we sent it.
    #[serde(skip)]
    challenge: Option<(Nonce, Instant)>,
}

/// How many of a sender's past epochs are remembered.
const RETIRED: usize = 16;

impl Sender {
    /// The epoch that proved itself (or, from an older vip, outlived the current
    /// one) becomes current; the current one is retired.
    fn adopt(&mut self, epoch: u64, seq: u64, now: Instant) {
        if self.epoch != 0 {
            if self.retired.len() == RETIRED {
                self.retired.pop_front();
            }
            self.retired.push_back(self.epoch);
        }
        self.epoch = epoch;
        self.seq = seq;
        self.heard = Some(now);
        self.challenge = None;
    }
}

impl ReplayGuard {
    /// Judges an authenticated datagram from its sender (`ad.addr`) and records a fresh
    /// one: its (epoch, sequence); whether its sender answers challenges (an older vip
    /// does not: `handshakes`); whether it answers ours (its HMAC covered the nonce we
    /// await from it: `nonce`). `interval`: the group's advertisement interval.
    pub fn check(&mut self, ad: &Advert, now: Instant, interval: std::time::Duration) -> Verdict {
        let (epoch, seq, handshakes, answers) =
            (ad.epoch, ad.seq, ad.handshakes, ad.nonce.is_some());
        let s = self.senders.entry(ad.addr).or_default();
        if epoch == 0 {
            if s.legacy.is_some_and(|l| seq <= l) {
                return Verdict::Replay;
            }
            s.legacy = Some(seq);
            return Verdict::Fresh;
        }
        if epoch == s.epoch {
            if seq <= s.seq {
                return Verdict::Replay;
            }
            s.seq = seq;
            s.heard = Some(now);
            return Verdict::Fresh;
        }
        if s.retired.contains(&epoch) {
            return Verdict::Replay;
        }
        if answers {
            s.adopt(epoch, seq, now);
            return Verdict::Fresh;
        }
        if !handshakes {
            // An older vip cannot prove anything: its new epoch is taken only once
            // the current one has gone quiet (the old process is gone), never on the
            // word of one datagram while the live one is heard.
            let quiet = s
                .heard
                .is_none_or(|h| now.saturating_duration_since(h) > interval * 2);
            if s.epoch == 0 || quiet {
                s.adopt(epoch, seq, now);
                return Verdict::Fresh;
            }
            return Verdict::Unverified { challenge: false };
        }
        let due = s
            .challenge
            .is_none_or(|(_, at)| now.saturating_duration_since(at) >= interval);
        Verdict::Unverified { challenge: due }
    }

    /// The nonce we await an answer from `from` with, if we challenged it.
    pub fn awaited(&self, from: &IpAddr) -> Option<Nonce> {
        self.senders.get(from)?.challenge.map(|(n, _)| n)
    }

    /// We challenged `from` with `nonce` at `now`.
    pub fn challenged(&mut self, from: IpAddr, nonce: Nonce, now: Instant) {
        self.senders.entry(from).or_default().challenge = Some((nonce, now));
    }

    /// Forgets a sender (it left the config).
    pub fn forget(&mut self, from: &IpAddr) {
        self.senders.remove(from);
    }

    /// What a re-executed agent takes over: every sender's current and retired
    /// epochs (a JSON value; see `agent::upgrade`).
    pub fn save(&self) -> serde_json::Value {
        serde_json::to_value(&self.senders).unwrap_or(serde_json::Value::Null)
    }

    /// Takes a saved state over (anything unreadable is ignored: the challenges
    /// rebuild it).
    pub fn restore(&mut self, saved: &serde_json::Value) {
        if let Ok(senders) = serde_json::from_value::<HashMap<IpAddr, Sender>>(saved.clone()) {
            self.senders = senders;
        }
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

fn mac_of(key: &[u8], data: &[u8], nonce: Option<Nonce>) -> [u8; TAG] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    if let Some((epoch, seq)) = nonce {
        m.update(&epoch.to_be_bytes());
        m.update(&seq.to_be_bytes());
    }
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: std::time::Duration = std::time::Duration::from_millis(1);

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
            handshakes: true,
            nonce: None,
        }
    }

    const I: std::time::Duration = std::time::Duration::from_millis(100);

    /// A datagram from `p` in (`epoch`, `seq`), from a peer that takes part in the
    /// handshakes or not, answering our challenge or not.
    fn d(p: IpAddr, epoch: u64, seq: u64, handshakes: bool, answers: bool) -> Advert {
        Advert {
            addr: p,
            epoch,
            seq,
            handshakes,
            nonce: answers.then_some((0, 0)),
            ..sample()
        }
    }

    #[test]
    fn replay_guard_refuses_replays_and_challenges_an_unknown_epoch() {
        let p: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        let mut g = ReplayGuard::default();
        // A first epoch proves itself by its answer.
        assert_eq!(
            g.check(&d(p, 7, 1, true, false), t, I),
            Verdict::Unverified { challenge: true }
        );
        g.challenged(p, (99, 1), t);
        assert_eq!(g.awaited(&p), Some((99, 1)));
        assert_eq!(
            g.check(&d(p, 7, 2, true, false), t, I),
            Verdict::Unverified { challenge: false },
            "one challenge an interval"
        );
        assert_eq!(g.check(&d(p, 7, 3, true, true), t, I), Verdict::Fresh);
        assert_eq!(g.awaited(&p), None);
        assert_eq!(g.check(&d(p, 7, 4, true, false), t, I), Verdict::Fresh);
        assert_eq!(g.check(&d(p, 7, 4, true, false), t, I), Verdict::Replay);
        assert_eq!(g.check(&d(p, 7, 1, true, false), t, I), Verdict::Replay);
        // The sender restarts (whatever its clock says): its new epoch answers.
        assert_eq!(
            g.check(&d(p, 8, 1, true, false), t, I),
            Verdict::Unverified { challenge: true }
        );
        g.challenged(p, (99, 2), t);
        assert_eq!(g.check(&d(p, 8, 2, true, true), t, I), Verdict::Fresh);
        // Old adverts of the previous start are replays now.
        assert_eq!(g.check(&d(p, 7, 5, true, false), t, I), Verdict::Replay);
        // Version 1 keeps its own monotonic sequence.
        assert_eq!(g.check(&d(p, 0, 1000, false, false), t, I), Verdict::Fresh);
        assert_eq!(g.check(&d(p, 0, 999, false, false), t, I), Verdict::Replay);
        assert!(new_epoch() != 0 && new_epoch() != new_epoch());
    }

    /// The attack: both agents restarted, a single advert of the peer's previous
    /// epoch replayed. It must never retire the live epoch.
    #[test]
    fn a_replayed_epoch_never_locks_out_the_live_one() {
        let p: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        let mut g = ReplayGuard::default();
        // The live epoch 8 is verified...
        g.check(&d(p, 8, 1, true, false), t, I);
        g.challenged(p, (1, 1), t);
        assert_eq!(g.check(&d(p, 8, 2, true, true), t, I), Verdict::Fresh);
        // ...then epoch 7, recorded before the restarts, is replayed, often.
        for k in 0..1000 {
            let v = g.check(&d(p, 7, 1_000 + k, true, false), t, I);
            assert!(matches!(v, Verdict::Unverified { .. }), "{v:?}");
        }
        // The live peer goes on being heard; its answer to our challenge is in 8.
        assert_eq!(g.check(&d(p, 8, 3, true, false), t, I), Verdict::Fresh);
        g.challenged(p, (1, 2), t);
        assert_eq!(g.check(&d(p, 8, 4, true, true), t, I), Verdict::Fresh);
        assert_eq!(g.check(&d(p, 8, 5, true, false), t, I), Verdict::Fresh);
        // Replayed before anything of the live epoch was heard: the same.
        let mut g = ReplayGuard::default();
        assert!(matches!(
            g.check(&d(p, 7, 1, true, false), t, I),
            Verdict::Unverified { .. }
        ));
        g.challenged(p, (1, 3), t);
        assert_eq!(g.check(&d(p, 8, 9, true, true), t, I), Verdict::Fresh);
        assert_eq!(g.check(&d(p, 8, 10, true, false), t, I), Verdict::Fresh);
    }

    /// An older vip answers no challenge: its new epoch is taken only once the old one
    /// went quiet.
    #[test]
    fn an_older_peers_new_epoch_waits_for_the_old_one_to_go_quiet() {
        let p: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(&d(p, 7, 1, false, false), t, I), Verdict::Fresh);
        assert_eq!(
            g.check(&d(p, 6, 9, false, false), t + 100 * MS, I),
            Verdict::Unverified { challenge: false }
        );
        assert_eq!(
            g.check(&d(p, 7, 2, false, false), t + 150 * MS, I),
            Verdict::Fresh
        );
        assert_eq!(
            g.check(&d(p, 9, 1, false, false), t + 351 * MS, I),
            Verdict::Fresh
        );
        assert_eq!(
            g.check(&d(p, 7, 3, false, false), t + 352 * MS, I),
            Verdict::Replay
        );
    }

    #[test]
    fn the_replay_state_survives_a_save_and_restore() {
        let p: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        let mut g = ReplayGuard::default();
        g.check(&d(p, 7, 1, false, false), t, I);
        g.check(&d(p, 8, 1, false, false), t + 10 * I, I);
        let mut h = ReplayGuard::default();
        h.restore(&g.save());
        assert_eq!(h.check(&d(p, 7, 2, true, false), t, I), Verdict::Replay);
        assert_eq!(h.check(&d(p, 8, 1, true, false), t, I), Verdict::Replay);
        assert_eq!(h.check(&d(p, 8, 2, true, false), t, I), Verdict::Fresh);
    }

    #[test]
    fn an_answer_binds_the_nonce() {
        let mut a = sample();
        a.kind = Kind::Answer;
        a.nonce = Some((5, 6));
        let b = a.encode(Some(b"k"));
        let with = |n: Option<Nonce>| Advert::decode_with(&b, |_| (Some(&b"k"[..]), n));
        assert_eq!(with(Some((5, 6))).unwrap(), a);
        assert_eq!(with(Some((5, 7))), Err(DecodeError::BadAuth));
        assert_eq!(with(None), Err(DecodeError::UnexpectedAnswer));
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
