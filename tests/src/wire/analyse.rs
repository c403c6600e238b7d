//! The analysis of a recording: pure functions of the frames seen on the switch (in
//! the order of their arrival times) and of the faults' instants.
//!
//! **Attribution.** An answer belongs to the request it follows: the client's last
//! request of that family that reached the switch before the answer did. The XDP
//! program answers within a fraction of a millisecond, far less than the asker's
//! interval, so "before the next request" is the normal case. A *late* answer (one
//! that arrives after the next request) would be given to that next request; where
//! the answer names its request (an ARP reply built in place keeps the request's
//! padding, which carries the asker's sequence number) it goes to the request it
//! names instead, and is counted as late, with its delay. So ARP is exact and the
//! late count says how often time alone would have been wrong; NS answers (rebuilt,
//! nothing carried over) are attributed by time. An answer with no request before it
//! (or naming none) is counted as an orphan and attributed to nothing.
//!
//! **Two owners** shows three ways:
//! * a request answered by two or more MACs;
//! * an announcement (gratuitous ARP, unsolicited NA) by X while another node Y still
//!   answers: Y was answering when X announced and answers a request that reached the
//!   switch after X's announcement (before any node other than X announced): the
//!   clients that heard X go to X, those that ask go to Y. "Still" matters: a new
//!   active programs its data plane before it announces, so a takeover's first
//!   answers may come a moment before its own announcement, long after the previous
//!   owner's; those are not an overlap.
//! * not as such, but as its cost: the longest run of requests nobody answered.
//!
//! Every figure is attributed to the fault ([`Mark`]) that preceded it: the last one
//! injected at or before the request (or announcement) concerned.

use std::collections::BTreeMap;

use super::{Family, Kind, Mac, Seen};

/// A fault's injection on the recording's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub at_ns: u64,
    pub label: String,
}

/// One request of the client and who answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// When the request reached the switch.
    pub at_ns: u64,
    pub tag: Option<u64>,
    /// Each MAC that answered it (once, however often it did), in the order of the
    /// answers.
    pub by: Vec<By>,
}

/// One MAC's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct By {
    pub mac: Mac,
    /// From the request to its first answer from this MAC.
    pub delay_ns: u64,
    /// The answer carried the request's sequence number back: an ARP reply made of
    /// the request in place, as the XDP program makes it (false for one built
    /// afresh, as a kernel builds it, and for every NA, which carries nothing).
    pub in_place: bool,
}

/// Node X announced while node Y kept answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub announced_ns: u64,
    pub announcer: Mac,
    pub answerer: Mac,
    /// The first and last requests after the announcement that Y answered (a cluster
    /// of them: requests at most [`OVERLAP_GAP`] apart).
    pub first_request_ns: u64,
    pub last_request_ns: u64,
    pub requests: usize,
}

/// Requests further apart than this (in requests) start a new overlap or episode.
pub const OVERLAP_GAP: usize = 20;

/// A run of consecutive requests nobody answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stretch {
    /// The first unanswered request.
    pub from_ns: u64,
    /// The next request that was answered (or the last unanswered one, when the
    /// recording ended first).
    pub to_ns: u64,
    pub requests: usize,
}

impl Stretch {
    pub fn ms(&self) -> f64 {
        (self.to_ns - self.from_ns) as f64 / 1e6
    }
}

/// Everything about one family (ARP or NS).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FamilyAnalysis {
    pub requests: Vec<Answered>,
    /// Indices (into `requests`) of the requests answered by two or more MACs.
    pub doubles: Vec<usize>,
    pub overlaps: Vec<Overlap>,
    pub stretches: Vec<Stretch>,
    /// Announcements in time order: (when, by whom).
    pub announcements: Vec<(u64, Mac)>,
    /// Answers that named an earlier request than the last one before them.
    pub late: usize,
    /// The longest delay of an answer from its request.
    pub max_delay_ns: u64,
    /// Answers with no request to belong to.
    pub orphans: usize,
    /// Answers a client's kernel would drop (NA with a bad checksum or hop limit).
    pub malformed: usize,
}

/// A stretch of trouble, for the failure report: consecutive double answers, or an
/// overlap, with what it was attributed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub family: Family,
    /// "answered by two MACs" or "announcement overlaps answers".
    pub what: &'static str,
    pub from_ns: u64,
    pub to_ns: u64,
    pub requests: usize,
    pub macs: Vec<Mac>,
    /// The mark (fault) it followed, None when before the first.
    pub mark: Option<usize>,
}

/// Pass or fail, with the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    pub doubles_arp: usize,
    pub doubles_nd: usize,
    pub overlaps: usize,
}

impl Verdict {
    pub fn one_owner(&self) -> bool {
        self.doubles_arp == 0 && self.doubles_nd == 0 && self.overlaps == 0
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    pub arp: FamilyAnalysis,
    pub nd: FamilyAnalysis,
    pub marks: Vec<Mark>,
}

impl Analysis {
    pub fn family(&self, f: Family) -> &FamilyAnalysis {
        match f {
            Family::Arp => &self.arp,
            Family::Nd => &self.nd,
        }
    }

    /// The mark an instant belongs to: the last injected at or before it.
    pub fn mark_of(&self, at_ns: u64) -> Option<usize> {
        mark_of(&self.marks, at_ns)
    }

    pub fn verdict(&self) -> Verdict {
        Verdict {
            doubles_arp: self.arp.doubles.len(),
            doubles_nd: self.nd.doubles.len(),
            overlaps: self.arp.overlaps.len() + self.nd.overlaps.len(),
        }
    }

    /// Double answers grouped into episodes (requests at most [`OVERLAP_GAP`] apart),
    /// then the overlaps, in time order.
    pub fn episodes(&self) -> Vec<Episode> {
        let mut out = Vec::new();
        for family in Family::BOTH {
            let fa = self.family(family);
            let mut group: Vec<usize> = Vec::new();
            let flush = |group: &mut Vec<usize>, out: &mut Vec<Episode>| {
                let (Some(&first), Some(&last)) = (group.first(), group.last()) else {
                    return;
                };
                let mut macs: Vec<Mac> = group
                    .iter()
                    .flat_map(|&i| fa.requests[i].by.iter().map(|b| b.mac))
                    .collect();
                macs.sort();
                macs.dedup();
                let from_ns = fa.requests[first].at_ns;
                out.push(Episode {
                    family,
                    what: "answered by two MACs",
                    from_ns,
                    to_ns: fa.requests[last].at_ns,
                    requests: group.len(),
                    macs,
                    mark: self.mark_of(from_ns),
                });
                group.clear();
            };
            for &i in &fa.doubles {
                if group.last().is_some_and(|&l| i - l > OVERLAP_GAP) {
                    flush(&mut group, &mut out);
                }
                group.push(i);
            }
            flush(&mut group, &mut out);
            for o in &fa.overlaps {
                out.push(Episode {
                    family,
                    what: "announcement overlaps answers",
                    from_ns: o.first_request_ns,
                    to_ns: o.last_request_ns,
                    requests: o.requests,
                    macs: vec![o.announcer, o.answerer],
                    mark: self.mark_of(o.first_request_ns),
                });
            }
        }
        out.sort_by_key(|e| e.from_ns);
        out
    }

    /// Per mark (index into `marks`; the time before the first mark is not included):
    /// the figures attributed to it.
    pub fn per_mark(&self) -> Vec<MarkFigures> {
        let mut v = vec![MarkFigures::default(); self.marks.len()];
        for family in Family::BOTH {
            let fa = self.family(family);
            for &i in &fa.doubles {
                if let Some(m) = self.mark_of(fa.requests[i].at_ns) {
                    v[m].doubles[family as usize] += 1;
                }
            }
            for o in &fa.overlaps {
                if let Some(m) = self.mark_of(o.first_request_ns) {
                    v[m].overlaps += 1;
                }
            }
            for s in &fa.stretches {
                if let Some(m) = self.mark_of(s.from_ns) {
                    let f = family as usize;
                    if s.ms() > v[m].longest_unanswered_ms[f] {
                        v[m].longest_unanswered_ms[f] = s.ms();
                        v[m].longest_unanswered_after_ms[f] =
                            (s.from_ns - self.marks[m].at_ns) as f64 / 1e6;
                    }
                }
            }
            for r in &fa.requests {
                if let Some(m) = self.mark_of(r.at_ns) {
                    v[m].requests[family as usize] += 1;
                }
            }
        }
        v
    }
}

/// The figures of one fault, by family (`[ARP, NS]`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MarkFigures {
    pub requests: [usize; 2],
    pub doubles: [usize; 2],
    pub overlaps: usize,
    pub longest_unanswered_ms: [f64; 2],
    /// When that stretch began, after the fault (ms).
    pub longest_unanswered_after_ms: [f64; 2],
}

fn mark_of(marks: &[Mark], at_ns: u64) -> Option<usize> {
    marks.iter().rposition(|m| m.at_ns <= at_ns)
}

/// Analyses `seen` (any order; sorted here by arrival time) against the faults `marks`.
pub fn analyse(seen: &[Seen], marks: &[Mark]) -> Analysis {
    let mut seen = seen.to_vec();
    seen.sort_by_key(|s| s.at_ns);
    let mut marks = marks.to_vec();
    marks.sort_by_key(|m| m.at_ns);
    Analysis {
        arp: family(&seen, Family::Arp),
        nd: family(&seen, Family::Nd),
        marks,
    }
}

fn family(seen: &[Seen], family: Family) -> FamilyAnalysis {
    let mut fa = FamilyAnalysis::default();
    let mut by_tag: BTreeMap<u64, usize> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.kind.family() == family) {
        match s.kind {
            Kind::Request { tag, .. } => {
                if let Some(t) = tag {
                    by_tag.insert(t, fa.requests.len());
                }
                fa.requests.push(Answered {
                    at_ns: s.at_ns,
                    tag,
                    by: Vec::new(),
                });
            }
            Kind::Answer { mac, tag, .. } => {
                let last = fa.requests.len().checked_sub(1);
                let named = tag.and_then(|t| by_tag.get(&t).copied());
                let Some(i) = named.or(last) else {
                    fa.orphans += 1;
                    continue;
                };
                if named.is_some() && named != last {
                    fa.late += 1;
                }
                let r = &mut fa.requests[i];
                let delay = s.at_ns.saturating_sub(r.at_ns);
                fa.max_delay_ns = fa.max_delay_ns.max(delay);
                if !r.by.iter().any(|b| b.mac == mac) {
                    r.by.push(By {
                        mac,
                        delay_ns: delay,
                        in_place: named.is_some(),
                    });
                }
            }
            Kind::Announcement { mac, .. } => fa.announcements.push((s.at_ns, mac)),
            Kind::Malformed { .. } => fa.malformed += 1,
        }
    }
    fa.doubles = (0..fa.requests.len())
        .filter(|&i| fa.requests[i].by.len() >= 2)
        .collect();
    fa.overlaps = overlaps(&fa.requests, &fa.announcements);
    fa.stretches = stretches(&fa.requests);
    fa
}

/// For each run of announcements by one node X (the first of a run: the previous
/// announcement was someone else's) at `t`: every other node Y that was answering
/// when X announced (it answered one of the [`OVERLAP_GAP`] requests before `t`) and
/// still answers after it (one of the [`OVERLAP_GAP`] requests after `t`, and the
/// cluster of Y's answers that follows, up to the next announcement by a node other
/// than X). A node that starts answering later is not "still" answering: a new active
/// programs its data plane before it announces, so its first answers may precede its
/// own announcement, and that is a takeover, not an overlap.
fn overlaps(requests: &[Answered], announcements: &[(u64, Mac)]) -> Vec<Overlap> {
    let mut out = Vec::new();
    let answered_by = |i: usize, y: Mac| requests[i].by.iter().any(|b| b.mac == y);
    for (j, &(t, x)) in announcements.iter().enumerate() {
        if j > 0 && announcements[j - 1].1 == x {
            continue;
        }
        let end = announcements[j..]
            .iter()
            .find(|(_, m)| *m != x)
            .map_or(u64::MAX, |(at, _)| *at);
        // The first request after the announcement, and the last before the next one.
        let first = requests.partition_point(|r| r.at_ns <= t);
        let stop = requests.partition_point(|r| r.at_ns < end);
        let mut owners: Vec<Mac> = requests[first.saturating_sub(OVERLAP_GAP)..first]
            .iter()
            .flat_map(|r| r.by.iter().map(|b| b.mac))
            .filter(|m| *m != x)
            .collect();
        owners.sort();
        owners.dedup();
        for y in owners {
            let Some(start) =
                (first..stop.min(first + OVERLAP_GAP + 1)).find(|&i| answered_by(i, y))
            else {
                continue;
            };
            // "Still": Y never stopped in between. A request someone else answered
            // without Y, between Y's last answer before the announcement and its first
            // after, means Y had stopped and started again (a node back after a
            // failure, taking over anew), which is not an overlap.
            let prev = (0..first).rev().find(|&i| answered_by(i, y)).unwrap_or(0);
            let stopped =
                (prev + 1..start).any(|i| !requests[i].by.is_empty() && !answered_by(i, y));
            if stopped {
                continue;
            }
            let (mut last, mut n) = (start, 1);
            for i in start + 1..stop {
                if i - last > OVERLAP_GAP {
                    break;
                }
                if answered_by(i, y) {
                    (last, n) = (i, n + 1);
                }
            }
            out.push(Overlap {
                announced_ns: t,
                announcer: x,
                answerer: y,
                first_request_ns: requests[start].at_ns,
                last_request_ns: requests[last].at_ns,
                requests: n,
            });
        }
    }
    out.sort_by_key(|o| o.first_request_ns);
    out
}

/// Every run of consecutive unanswered requests.
fn stretches(requests: &[Answered]) -> Vec<Stretch> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, r) in requests.iter().enumerate() {
        match (r.by.is_empty(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(Stretch {
                    from_ns: requests[s].at_ns,
                    to_ns: r.at_ns,
                    requests: i - s,
                });
                start = None;
            }
            _ => {}
        }
    }
    if let (Some(s), Some(last)) = (start, requests.last()) {
        out.push(Stretch {
            from_ns: requests[s].at_ns,
            to_ns: last.at_ns,
            requests: requests.len() - s,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frames::{arp_request, classify, neighbour_solicitation, synthetic::*};

    const A: Mac = Mac([2, 0, 0, 0, 0, 0x0a]);
    const B: Mac = Mac([2, 0, 0, 0, 0, 0x0b]);
    const MS: u64 = 1_000_000;

    /// A synthetic wire: frames with their arrival times (ms), classified as the
    /// recorder does.
    struct Wire {
        w: crate::wire::Watch,
        seen: Vec<Seen>,
        tag: u64,
    }

    impl Wire {
        fn new() -> Self {
            Wire {
                w: watch(),
                seen: Vec::new(),
                tag: 0,
            }
        }

        fn frame(&mut self, at_ms: f64, f: &[u8]) {
            let kind = classify(f, &self.w).expect("a frame the recorder keeps");
            self.seen.push(Seen {
                at_ns: (at_ms * 1e6) as u64,
                port: 0,
                kind,
            });
        }

        /// An ARP request at `at_ms`; returns it, for the answers.
        fn ask(&mut self, at_ms: f64) -> Vec<u8> {
            self.tag += 1;
            let f = arp_request(
                self.w.client_mac,
                self.w.client4,
                self.w.vip4,
                Some(self.tag),
            );
            self.frame(at_ms, &f);
            f
        }

        fn ask6(&mut self, at_ms: f64) {
            let f = neighbour_solicitation(self.w.client_mac, self.w.client6, self.w.vip6);
            self.frame(at_ms, &f);
        }

        fn answer6(&mut self, at_ms: f64, mac: Mac) {
            let f = neighbour_advertisement(mac, self.w.vip6, self.w.client6, true);
            self.frame(at_ms, &f);
        }

        fn garp(&mut self, at_ms: f64, mac: Mac) {
            let f = gratuitous_arp(mac, self.w.vip4);
            self.frame(at_ms, &f);
        }

        /// Requests every 5 ms from `from_ms` for `n`, each answered 0.1 ms later by
        /// `who` (none: unanswered).
        fn steady(&mut self, from_ms: f64, n: usize, who: &[Mac]) {
            for k in 0..n {
                let t = from_ms + 5.0 * k as f64;
                let req = self.ask(t);
                for (j, m) in who.iter().enumerate() {
                    self.frame(t + 0.1 + 0.01 * j as f64, &arp_reply(&req, *m));
                }
            }
        }
    }

    fn marks(at_ms: &[f64]) -> Vec<Mark> {
        at_ms
            .iter()
            .enumerate()
            .map(|(i, t)| Mark {
                at_ns: (t * 1e6) as u64,
                label: format!("fault {i}"),
            })
            .collect()
    }

    #[test]
    fn one_owner_then_a_clean_takeover_passes() {
        let mut w = Wire::new();
        w.steady(0.0, 10, &[A]);
        // A's link goes down at 50 ms: three requests unanswered, B announces, answers.
        w.steady(50.0, 3, &[]);
        w.garp(64.0, B);
        w.steady(65.0, 10, &[B]);
        let an = analyse(&w.seen, &marks(&[49.0]));
        assert!(an.verdict().one_owner(), "{:?}", an.verdict());
        assert_eq!(an.arp.requests.len(), 23);
        assert_eq!(an.arp.stretches.len(), 1);
        let s = an.arp.stretches[0];
        assert_eq!((s.requests, s.ms()), (3, 15.0));
        assert_eq!(an.per_mark()[0].longest_unanswered_ms[0], 15.0);
        assert_eq!(an.per_mark()[0].requests[0], 13);
        assert!(an.episodes().is_empty());
    }

    #[test]
    fn two_macs_answering_one_request_fail_and_form_one_episode() {
        let mut w = Wire::new();
        w.steady(0.0, 5, &[A]);
        w.steady(25.0, 4, &[A, B]);
        w.steady(45.0, 5, &[B]);
        let an = analyse(&w.seen, &marks(&[20.0]));
        assert_eq!(an.verdict().doubles_arp, 4);
        assert!(!an.verdict().one_owner());
        let ep = an.episodes();
        assert_eq!(ep.len(), 1, "{ep:?}");
        assert_eq!(ep[0].requests, 4);
        assert_eq!(ep[0].macs, vec![A, B]);
        assert_eq!((ep[0].from_ns, ep[0].to_ns), (25 * MS, 40 * MS));
        assert_eq!(ep[0].mark, Some(0));
        assert_eq!(an.per_mark()[0].doubles, [4, 0]);
    }

    #[test]
    fn a_late_answer_goes_to_the_request_it_names() {
        let mut w = Wire::new();
        // Request 1 at 0 ms answered by A only 7 ms later, after request 2 (5 ms),
        // which B answers: by time alone A's answer would make request 2 a double.
        let r1 = w.ask(0.0);
        let r2 = w.ask(5.0);
        w.frame(5.1, &arp_reply(&r2, B));
        w.frame(7.0, &arp_reply(&r1, A));
        let an = analyse(&w.seen, &[]);
        assert_eq!(an.arp.late, 1);
        assert_eq!(an.arp.max_delay_ns, 7 * MS);
        assert!(an.arp.doubles.is_empty());
        let by = |mac, delay_ns| By {
            mac,
            delay_ns,
            in_place: true,
        };
        assert_eq!(an.arp.requests[0].by, vec![by(A, 7 * MS)]);
        assert_eq!(an.arp.requests[1].by, vec![by(B, MS / 10)]);
    }

    #[test]
    fn an_answer_without_a_name_belongs_to_the_last_request_before_it() {
        let mut w = Wire::new();
        // NS carries nothing back: time decides. A kernel's ARP reply neither.
        w.ask6(0.0);
        w.answer6(0.2, A);
        w.ask6(5.0);
        w.answer6(5.2, A);
        w.answer6(5.3, B);
        // An answer twice from the same MAC counts once.
        w.answer6(5.4, B);
        let req = w.ask(10.0);
        w.frame(10.1, &arp_reply(&req, A));
        w.frame(10.2, &kernel_arp_reply(&w.w, B));
        let an = analyse(&w.seen, &[]);
        assert_eq!(an.nd.requests.len(), 2);
        assert_eq!(an.nd.doubles, vec![1]);
        assert_eq!(an.nd.requests[1].by.len(), 2);
        assert_eq!(
            an.arp.doubles,
            vec![0],
            "the kernel's reply counts, by time"
        );
        let kinds: Vec<bool> = an.arp.requests[0].by.iter().map(|b| b.in_place).collect();
        assert_eq!(kinds, vec![true, false]);
        assert!(an.nd.requests[1].by.iter().all(|b| !b.in_place));
        assert_eq!(an.arp.late, 0);
    }

    #[test]
    fn answers_before_any_request_are_orphans() {
        let mut w = Wire::new();
        w.answer6(1.0, A);
        w.ask6(2.0);
        let an = analyse(&w.seen, &[]);
        assert_eq!(an.nd.orphans, 1);
        assert_eq!(an.nd.requests[0].by, vec![]);
    }

    #[test]
    fn an_announcement_while_another_node_still_answers_is_an_overlap() {
        let mut w = Wire::new();
        w.steady(0.0, 4, &[A]);
        // B announces at 20 ms but A answers two more requests (never at once with B).
        w.garp(20.0, B);
        w.steady(20.5, 2, &[A]);
        w.steady(30.5, 4, &[B]);
        // B's further announcements of the same burst add nothing.
        w.garp(35.0, B);
        let an = analyse(&w.seen, &marks(&[19.0]));
        assert!(an.arp.doubles.is_empty());
        assert_eq!(an.arp.overlaps.len(), 1, "{:?}", an.arp.overlaps);
        let o = &an.arp.overlaps[0];
        assert_eq!((o.announcer, o.answerer, o.requests), (B, A, 2));
        assert_eq!(o.first_request_ns, 20 * MS + MS / 2);
        assert!(!an.verdict().one_owner());
        assert_eq!(an.per_mark()[0].overlaps, 1);
        let ep = an.episodes();
        assert_eq!(ep.len(), 1);
        assert_eq!(ep[0].what, "announcement overlaps answers");
    }

    #[test]
    fn answers_before_the_announcement_or_after_the_next_ones_do_not_overlap() {
        let mut w = Wire::new();
        w.steady(0.0, 4, &[A]);
        // A's request of 15 ms answered late, after B's announcement: it was asked
        // before it, so it is not an overlap.
        let r = w.ask(18.0);
        w.garp(18.5, B);
        w.frame(19.0, &arp_reply(&r, A));
        w.steady(20.0, 4, &[B]);
        // A announces again (a preemption) and only A answers after it.
        w.garp(40.0, A);
        w.steady(40.5, 4, &[A]);
        let an = analyse(&w.seen, &[]);
        assert!(an.verdict().one_owner(), "{:?}", an.arp.overlaps);
        assert_eq!(an.arp.announcements.len(), 2);
    }

    #[test]
    fn a_takeover_answering_before_its_own_announcement_is_no_overlap() {
        let mut w = Wire::new();
        w.garp(0.0, A);
        w.steady(0.5, 10, &[A]);
        // A's link goes down; B programs its data plane at 300 ms, answers, announces.
        w.steady(50.5, 50, &[]);
        w.steady(300.5, 1, &[B]);
        w.garp(301.0, B);
        w.steady(305.5, 5, &[B]);
        // A comes back and preempts: it answers before it announces, B has stopped.
        w.steady(330.5, 1, &[A]);
        w.garp(331.0, A);
        w.steady(335.5, 5, &[A]);
        let an = analyse(&w.seen, &[]);
        assert!(an.verdict().one_owner(), "{:?}", an.arp.overlaps);
        // The same preemption with B still answering after A's announcement overlaps.
        let mut w = Wire::new();
        w.garp(0.0, B);
        w.steady(0.5, 10, &[B]);
        w.garp(50.0, A);
        w.steady(50.5, 2, &[B]);
        w.steady(60.5, 2, &[A]);
        let an = analyse(&w.seen, &[]);
        assert_eq!(an.arp.overlaps.len(), 1, "{:?}", an.arp.overlaps);
        let o = &an.arp.overlaps[0];
        assert_eq!((o.announcer, o.answerer, o.requests), (A, B, 2));
    }

    /// Found in a chaos run: A (killed) answered on its lease until it ran out, B took
    /// over and announced, A came back and preempted B, answering just before its own
    /// announcement. A had stopped in between (B alone answered): no overlap.
    #[test]
    fn a_node_that_stopped_and_came_back_is_not_still_answering() {
        let mut w = Wire::new();
        w.steady(0.0, 4, &[A]);
        w.steady(20.0, 2, &[]);
        w.steady(30.5, 1, &[B]);
        w.garp(31.0, B);
        w.steady(35.5, 4, &[B]);
        w.steady(55.5, 1, &[A]);
        w.garp(56.0, A);
        w.steady(60.5, 4, &[A]);
        let an = analyse(&w.seen, &[]);
        assert!(an.verdict().one_owner(), "{:?}", an.arp.overlaps);
    }

    #[test]
    fn stretches_are_attributed_to_the_fault_before_them() {
        let mut w = Wire::new();
        w.steady(0.0, 2, &[A]);
        w.steady(10.0, 2, &[]); // after fault 0 (at 9 ms): 10 ms
        w.steady(20.0, 2, &[A]);
        w.steady(30.0, 6, &[]); // after fault 1 (at 29 ms), to the end: 25 ms
        let an = analyse(&w.seen, &marks(&[9.0, 29.0]));
        let pm = an.per_mark();
        assert_eq!(pm[0].longest_unanswered_ms[0], 10.0);
        assert_eq!(pm[1].longest_unanswered_ms[0], 25.0);
        assert_eq!(pm[1].longest_unanswered_after_ms[0], 1.0);
        assert_eq!(an.arp.stretches.last().unwrap().requests, 6);
        // Nothing of NS was seen.
        assert_eq!(pm[0].longest_unanswered_ms[1], 0.0);
        assert!(an.nd.requests.is_empty());
    }
}
