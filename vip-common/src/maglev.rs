//! The Maglev lookup table of a balanced group (Maglev paper, §3.4; Katran's
//! `MaglevBase`/`MaglevHashV2`).
//!
//! Userspace [`build`]s a table of [`TABLE_SIZE`] member indexes and writes it into a
//! BPF array; the director's program reads `table[slot(flow_hash)]` (see
//! [`crate::flow`] and [`slot`]). Every node computes the same table from the same
//! member set, whatever order it lists them in, so a new director keeps the old
//! one's choices; and a member that leaves takes only its own slots with it, plus a
//! sliver of the others' (Maglev trades a little disruption for an even spread;
//! measured: at most 0.3 % of the table for 3 to 8 members).
//!
//! No allocation: the per-member state lives in fixed arrays on the stack, which
//! caps a group at [`MAX_MEMBERS`].

use core::fmt;

/// Slots in the table: a prime, so that every `skip` generates a full permutation,
/// and ~1000x [`MAX_MEMBERS`], so that the spread is within ~1 % of the weights.
pub const TABLE_SIZE: usize = 65_537;

/// The value of a slot no member owns (only in a table [`build`] has not filled).
pub const NO_MEMBER: u16 = u16::MAX;

/// Most members (weight 0 included) [`build`] accepts.
pub const MAX_MEMBERS: usize = 64;

/// Largest table length [`build`] accepts: `2^31 - 1`, a prime, keeps the slot
/// arithmetic in `u32` (and a BPF array is indexed by `u32`).
pub const MAX_TABLE_LEN: usize = i32::MAX as usize;

const _: () = assert!(is_prime(TABLE_SIZE));
const _: () = assert!(is_prime(MAX_TABLE_LEN));
const _: () = assert!(MAX_MEMBERS < NO_MEMBER as usize);

/// A member of a balanced group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// Stable identity, the same on every node and across restarts and reorderings:
    /// derive it from the member's address ([`id_v4`], [`id_v6`]). Its slots follow
    /// from it alone, so it must not change while the member stays.
    pub id: u64,
    /// Share of the table relative to the other members; 0 keeps the member listed
    /// (its index stays valid) but gives it no slot, exactly as if it were absent.
    pub weight: u16,
}

impl Member {
    pub const fn new(id: u64, weight: u16) -> Self {
        Member { id, weight }
    }
}

/// A member id from an IPv4 address: the address as a big-endian number.
pub const fn id_v4(octets: [u8; 4]) -> u64 {
    u32::from_be_bytes(octets) as u64
}

/// A member id from an IPv6 address: the interface identifier (low 64 bits) xored
/// with a mix of the prefix. Distinct for distinct addresses of one /64; across
/// prefixes a clash is a 2^-64 accident that [`build`] reports as
/// [`Error::DuplicateId`].
pub const fn id_v6(octets: &[u8; 16]) -> u64 {
    let hi = u64::from_be_bytes([
        octets[0], octets[1], octets[2], octets[3], octets[4], octets[5], octets[6], octets[7],
    ]);
    let lo = u64::from_be_bytes([
        octets[8], octets[9], octets[10], octets[11], octets[12], octets[13], octets[14],
        octets[15],
    ]);
    fmix64(hi) ^ lo
}

/// Why [`build`] refused a member set or table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No member, or none with a non-zero weight: nothing to fill the table with.
    NoMembers,
    /// More than [`MAX_MEMBERS`] members.
    TooManyMembers { count: usize },
    /// Two members share an id: their slots would be indistinguishable.
    DuplicateId { id: u64 },
    /// The table's length is not a prime in `7..=MAX_TABLE_LEN` larger than the
    /// member count.
    TableLen { len: usize },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoMembers => f.write_str("no member with a non-zero weight"),
            Error::TooManyMembers { count } => {
                write!(f, "{count} members, at most {MAX_MEMBERS}")
            }
            Error::DuplicateId { id } => write!(f, "two members share the id {id:#x}"),
            Error::TableLen { len } => write!(
                f,
                "table length {len} is not a prime in 7..={MAX_TABLE_LEN} larger than the member count"
            ),
        }
    }
}

impl core::error::Error for Error {}

/// The slot of a flow hash in a [`TABLE_SIZE`] table: the one definition the program
/// and userspace share.
#[inline(always)]
pub const fn slot(hash: u32) -> u32 {
    hash % TABLE_SIZE as u32
}

/// Whether `n` is prime (trial division; at most ~23 000 steps for [`MAX_TABLE_LEN`]).
pub const fn is_prime(n: usize) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3;
    while d <= n / d {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// MurmurHash3's 64-bit finalizer (a bijection with full avalanche).
const fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// SplitMix64's finalizer: a second, unrelated bijection, so that `offset` and
/// `skip` are independent.
const fn splitmix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Seeds of the two id hashes. With the hashes, part of the cluster-wide contract:
/// changing them changes every table.
const OFFSET_SEED: u64 = 0x7669_702d_6f66_6673; // "vip-offs"
const SKIP_SEED: u64 = 0x7669_702d_736b_6970; // "vip-skip"

/// A member's permutation of the slots: `offset, offset + skip, offset + 2 skip...`
/// modulo `len`. `len` prime and `1 <= skip < len` make it visit every slot.
const fn permutation(id: u64, len: u32) -> (u32, u32) {
    let offset = fmix64(id ^ OFFSET_SEED) % len as u64;
    let skip = splitmix64(id ^ SKIP_SEED) % (len as u64 - 1) + 1;
    (offset as u32, skip as u32)
}

/// Fills `table` for `members`: every slot gets the index in `members` of its owner.
///
/// Deterministic in the member *set*: members are taken in id order inside, so any
/// order of the same members gives the same owner (by id) in every slot. The stored
/// values are indexes into `members` as given, so the BPF map of member details must
/// be written in that same order; callers that want byte-identical tables on every
/// node (e.g. to compare digests) pass members sorted by id.
///
/// The population is Maglev's: members take turns, each claiming the next free slot
/// of its own permutation. Weights as in Katran's `MaglevHashV2`: every round each
/// member adds its weight to a credit and takes a turn when the credit reaches the
/// largest weight (then pays that much), so shares follow the weights exactly (to
/// rounding) and the heaviest member takes a turn every round.
///
/// `table.len()` must be a prime in `7..=MAX_TABLE_LEN` larger than `members.len()`
/// (use [`TABLE_SIZE`]; ~100x the member count or more keeps the spread even). On an
/// error the table is untouched. Runtime ~`len * ln(len)` probes: a few milliseconds.
pub fn build(members: &[Member], table: &mut [u16]) -> Result<(), Error> {
    let n = members.len();
    if n > MAX_MEMBERS {
        return Err(Error::TooManyMembers { count: n });
    }
    let len = table.len();
    if len < 7 || len <= n || len > MAX_TABLE_LEN || !is_prime(len) {
        return Err(Error::TableLen { len });
    }
    let len = len as u32;

    // Member indexes in id order (insertion sort: n <= 64), then duplicates.
    let mut order = [0u8; MAX_MEMBERS];
    for i in 0..n {
        let mut j = i;
        while j > 0 && members[order[j - 1] as usize].id > members[i].id {
            order[j] = order[j - 1];
            j -= 1;
        }
        order[j] = i as u8;
    }
    for k in 1..n {
        let id = members[order[k] as usize].id;
        if members[order[k - 1] as usize].id == id {
            return Err(Error::DuplicateId { id });
        }
    }
    let max_weight = members.iter().map(|m| m.weight).max().unwrap_or(0) as u32;
    if max_weight == 0 {
        return Err(Error::NoMembers);
    }

    // Per member, in id order: the next candidate slot of its permutation, its skip,
    // its weight credit.
    let mut next = [0u32; MAX_MEMBERS];
    let mut skip = [0u32; MAX_MEMBERS];
    let mut credit = [0u32; MAX_MEMBERS];
    for k in 0..n {
        (next[k], skip[k]) = permutation(members[order[k] as usize].id, len);
    }

    table.fill(NO_MEMBER);
    let mut filled = 0u32;
    // Ends: the heaviest member claims a slot every round, and a member's permutation
    // visits every slot, so it finds a free one while any is left.
    loop {
        for k in 0..n {
            let index = order[k] as u16;
            credit[k] += members[index as usize].weight as u32;
            if credit[k] < max_weight {
                continue;
            }
            credit[k] -= max_weight;
            let mut c = next[k];
            while table[c as usize] != NO_MEMBER {
                c = advance(c, skip[k], len);
            }
            table[c as usize] = index;
            next[k] = advance(c, skip[k], len);
            filled += 1;
            if filled == len {
                return Ok(());
            }
        }
    }
}

/// `(c + skip) % len` for `c, skip < len <= 2^31 - 1`: no overflow, no division.
#[inline]
fn advance(c: u32, skip: u32, len: u32) -> u32 {
    let c = c + skip;
    if c >= len {
        c - len
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::flow::flow_hash_v4;
    use crate::rng::XorShift64;
    use std::vec;
    use std::vec::Vec;

    fn members(n: usize) -> Vec<Member> {
        (1..=n)
            .map(|i| Member::new(id_v4([10, 0, 0, i as u8]), 1))
            .collect()
    }

    fn table(ms: &[Member]) -> Vec<u16> {
        let mut t = vec![NO_MEMBER; TABLE_SIZE];
        build(ms, &mut t).unwrap();
        t
    }

    /// The owner's id in every slot: comparable across member lists.
    fn owners(ms: &[Member]) -> Vec<u64> {
        table(ms).iter().map(|&i| ms[i as usize].id).collect()
    }

    fn shares(ms: &[Member], t: &[u16]) -> Vec<f64> {
        let mut counts = vec![0usize; ms.len()];
        for &i in t {
            counts[i as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / t.len() as f64).collect()
    }

    fn changed(a: &[u64], b: &[u64]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn three_equal_members() {
        let ms = members(3);
        let t = table(&ms);
        assert!(
            t.iter().all(|&i| (i as usize) < ms.len()),
            "every slot filled"
        );
        let s = shares(&ms, &t);
        std::println!("3 equal members: {s:?}");
        for share in s {
            assert!((share - 1.0 / 3.0).abs() < 0.01, "{share}");
        }
    }

    #[test]
    fn removing_a_member_moves_little_else() {
        for n in 2..=8 {
            let ms = members(n);
            let before = owners(&ms);
            let (mut worst, mut worst_others) = (0.0f64, 0.0f64);
            for gone in 0..n {
                let mut rest = ms.clone();
                rest.remove(gone);
                let after = owners(&rest);
                let moved = changed(&before, &after) as f64 / TABLE_SIZE as f64;
                // Slots of the members that stayed which changed owner anyway.
                let others = before
                    .iter()
                    .zip(&after)
                    .filter(|(b, a)| **b != ms[gone].id && b != a)
                    .count() as f64
                    / TABLE_SIZE as f64;
                worst = worst.max(moved);
                worst_others = worst_others.max(others);
                assert!(
                    moved <= 1.0 / n as f64 + 0.05,
                    "N={n}, without #{gone}: {moved}"
                );
                // Its slots all moved; nothing went to it.
                assert!(after.iter().all(|&id| id != ms[gone].id));
                // Weight 0 is exactly absence.
                let mut zero = ms.clone();
                zero[gone].weight = 0;
                assert_eq!(owners(&zero), after);
            }
            std::println!(
                "N={n}: removing one moves at most {:.2} % of all slots, at most {:.2} % \
                 of the remaining members' (1/N = {:.2} %)",
                worst * 100.0,
                worst_others * 100.0,
                100.0 / n as f64,
            );
        }
    }

    #[test]
    fn adding_a_member_takes_its_share() {
        for n in 1..=8 {
            let ms = members(n);
            let before = owners(&ms);
            let mut more = ms.clone();
            more.push(Member::new(id_v4([10, 0, 1, 1]), 1));
            let after = owners(&more);
            let moved = changed(&before, &after) as f64 / TABLE_SIZE as f64;
            std::println!(
                "N={n} -> {}: {:.2} % of slots move ({:.2} % is the newcomer's share)",
                n + 1,
                moved * 100.0,
                100.0 / (n + 1) as f64
            );
            assert!(moved <= 1.0 / (n + 1) as f64 + 0.05, "N={n}: {moved}");
        }
    }

    #[test]
    fn order_does_not_matter() {
        let ms = members(8);
        let reference = owners(&ms);
        let mut r = XorShift64::new(11);
        for _ in 0..10 {
            let mut shuffled = ms.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, r.below(i + 1));
            }
            assert_eq!(owners(&shuffled), reference);
        }
        // The stored values are indexes into the list as given.
        let mut rev = ms.clone();
        rev.reverse();
        let (a, b) = (table(&ms), table(&rev));
        assert!(a
            .iter()
            .zip(&b)
            .all(|(&x, &y)| x as usize == ms.len() - 1 - y as usize));
    }

    #[test]
    fn weights() {
        let ms = [
            Member::new(id_v4([10, 0, 0, 1]), 2),
            Member::new(id_v4([10, 0, 0, 2]), 1),
            Member::new(id_v4([10, 0, 0, 3]), 1),
        ];
        let s = shares(&ms, &table(&ms));
        std::println!("weights 2:1:1: {s:?}");
        for (share, want) in s.iter().zip([0.5, 0.25, 0.25]) {
            assert!((share - want).abs() < 0.02, "{share} vs {want}");
        }
        // Uneven weights, scaled weights give the same table.
        let ms = [
            Member::new(1, 100),
            Member::new(2, 300),
            Member::new(3, 600),
        ];
        let s = shares(&ms, &table(&ms));
        for (share, want) in s.iter().zip([0.1, 0.3, 0.6]) {
            assert!((share - want).abs() < 0.02, "{share} vs {want}");
        }
        let scaled = [Member::new(1, 1), Member::new(2, 3), Member::new(3, 6)];
        assert_eq!(table(&ms), table(&scaled));
    }

    #[test]
    fn sixty_four_members() {
        let ms: Vec<Member> = (0..MAX_MEMBERS)
            .map(|i| {
                Member::new(
                    id_v6(&[
                        0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i as u8,
                    ]),
                    1,
                )
            })
            .collect();
        let start = std::time::Instant::now();
        let t = table(&ms);
        let took = start.elapsed();
        std::println!("64 members: built in {took:?}");
        // Generous: a debug build on a busy machine. Release takes a few ms.
        assert!(took.as_millis() < 2000, "{took:?}");
        assert!(t.iter().all(|&i| (i as usize) < MAX_MEMBERS));
        let s = shares(&ms, &t);
        let (lo, hi) = s
            .iter()
            .fold((1.0f64, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        std::println!(
            "64 members: shares {:.3} %..{:.3} % (ideal {:.3} %)",
            lo * 100.0,
            hi * 100.0,
            100.0 / 64.0
        );
        assert!(lo > 0.9 / 64.0 && hi < 1.1 / 64.0);
    }

    #[test]
    fn flows_spread() {
        // The acceptance figure: 3,000 flows, 3 members, each 33 % +- 8 %.
        let ms = members(3);
        let t = table(&ms);
        let vip = u32::from_ne_bytes([192, 0, 2, 10]);
        let mut r = XorShift64::new(12);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            let x = r.next_u64();
            let h = flow_hash_v4(x as u32, vip, (x >> 32) as u16, 80u16.to_be(), 6);
            counts[t[slot(h) as usize] as usize] += 1;
        }
        std::println!("3,000 flows over 3 members: {counts:?}");
        for c in counts {
            assert!((c as f64 / 3000.0 - 1.0 / 3.0).abs() < 0.08, "{counts:?}");
        }
    }

    #[test]
    fn single_member_owns_everything() {
        let ms = [Member::new(7, 1), Member::new(8, 0)];
        assert!(table(&ms).iter().all(|&i| i == 0));
    }

    #[test]
    fn errors() {
        let mut t = vec![0u16; TABLE_SIZE];
        assert_eq!(build(&[], &mut t), Err(Error::NoMembers));
        assert_eq!(
            build(&[Member::new(1, 0), Member::new(2, 0)], &mut t),
            Err(Error::NoMembers)
        );
        assert_eq!(
            build(
                &[Member::new(1, 1), Member::new(2, 1), Member::new(1, 3)],
                &mut t
            ),
            Err(Error::DuplicateId { id: 1 })
        );
        let many: Vec<Member> = (0..65).map(|i| Member::new(i, 1)).collect();
        assert_eq!(
            build(&many, &mut t),
            Err(Error::TooManyMembers { count: 65 })
        );
        for len in [0usize, 1, 2, 5, 6, 9, 100, 65_536] {
            let mut small = vec![0u16; len];
            assert_eq!(build(&members(1), &mut small), Err(Error::TableLen { len }));
        }
        // Prime but not larger than the member count.
        let mut seven = [0u16; 7];
        assert_eq!(
            build(&members(7), &mut seven),
            Err(Error::TableLen { len: 7 })
        );
        assert!(t.iter().all(|&i| i == 0), "untouched on error");
        // Small primes work.
        build(&members(6), &mut seven).unwrap();
        assert!((0..6).all(|i| seven.contains(&i)) && seven.iter().all(|&i| i < 6));
        // Display, by hand.
        assert_eq!(
            std::format!("{}", Error::DuplicateId { id: 255 }),
            "two members share the id 0xff"
        );
    }

    #[test]
    fn primes() {
        let small: Vec<usize> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537) && !is_prime(65_535) && !is_prime(65_539 * 3));
        assert!(is_prime(MAX_TABLE_LEN));
        assert!(!is_prime(4_294_967_297)); // 641 * 6700417
    }

    #[test]
    fn ids() {
        assert_eq!(id_v4([10, 0, 0, 1]), 0x0a00_0001);
        let a = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut b = a;
        b[15] = 2;
        assert_ne!(id_v6(&a), id_v6(&b));
        assert_eq!(id_v6(&a) ^ id_v6(&b), 3);
    }
}
