//! The flow hash a balanced director feeds into its Maglev table ([`crate::maglev`]).
//!
//! Bob Jenkins' lookup3 final mix, exactly as the kernel's `jhash_3words`/`jhash2`
//! (and Katran) compute it, over the 5-tuple, with a fixed seed: every director
//! computes the same hash for the same packet, so a new director picks the same member
//! for a flow. Everything here is `const`, straight-line, wrapping arithmetic and
//! rotates only (no loops, no indexing that can fail), so the eBPF verifier accepts it
//! inlined.
//!
//! # Byte order
//! Every input is the value the program reads from the header, untouched:
//! addresses as native-endian `u32` of their network-order bytes (the kernel's
//! `__be32`, i.e. `u32::from_ne_bytes(octets)`), IPv6 addresses as their 16 bytes,
//! ports as native-endian `u16` of their two header bytes (`u16::from_ne_bytes`, the
//! kernel's `__be16`). No `ntohl` anywhere: the hash of a packet is the same on the
//! BPF side and in userspace (tests, a "which member gets this flow" tool) on the
//! same little-endian machine.
//!
//! # ICMP errors
//! An ICMP error to the VIP (fragmentation needed, packet too big, unreachable...)
//! quotes a packet the member sent *from* the VIP: its source is the VIP and its
//! destination the client. The client's flow is the reverse, so the director swaps the
//! quoted addresses and ports ([`icmp_inner_key`]) before hashing, and the error lands
//! on the member that owns the connection: [`icmp_inner_hash_v4`] /
//! [`icmp_inner_hash_v6`]. Other ICMP (echo) carries no ports; the director does not
//! spread it (it is delivered locally); hashed, it would take [`frag_hash_v4`] /
//! [`frag_hash_v6`] (the protocol is part of the hash, so that never mixes with TCP or
//! UDP flows).
//!
//! # Fragments
//! Only a datagram's first fragment carries the L4 header; the others have no ports.
//! Katran simply drops fragments; the Maglev paper hashes them by addresses and
//! protocol (the 3-tuple) so that all fragments of a datagram meet on one machine. The
//! choice for vip: a packet that is *any* fragment, the first included (IPv4: MF set
//! or a non-zero offset; IPv6: a fragment header), is hashed with [`frag_hash_v4`] /
//! [`frag_hash_v6`], every other packet with [`flow_hash_v4`] / [`flow_hash_v6`].
//! The fragments of one datagram therefore always reach the same member.
//!
//! The trade-off: a flow whose packets are sometimes fragmented and sometimes not is
//! split between the 3-tuple's member and the 5-tuple's member (they agree only by
//! chance, 1 in N). That is harmless where each datagram stands alone (DNS) and rare
//! for TCP (DF and path MTU discovery: TCP is practically never fragmented), but it
//! breaks protocols that fragment regularly and keep per-flow state (IKE, SIP or NFS
//! over UDP, some VPNs). For those, a per-group "hash by addresses only" rule (not
//! built) would hash *every* packet of the group with the 3-tuple: always consistent,
//! at the cost of spread (all flows of one client address, or of a whole NAT, land on
//! one member).

/// The fixed seed (`initval`) of every flow hash: part of the contract between
/// directors, never change it in a running cluster (tables would disagree).
pub const FLOW_HASH_SEED: u32 = 0x7669_7030; // "vip0"

/// lookup3's `JHASH_INITVAL` (the kernel's name).
const JHASH_INITVAL: u32 = 0xdead_beef;

/// lookup3's `mix()`: absorbs three more words.
#[inline(always)]
const fn mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
    a = a.wrapping_sub(c);
    a ^= c.rotate_left(4);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= a.rotate_left(6);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= b.rotate_left(8);
    b = b.wrapping_add(a);
    a = a.wrapping_sub(c);
    a ^= c.rotate_left(16);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= a.rotate_left(19);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= b.rotate_left(4);
    b = b.wrapping_add(a);
    (a, b, c)
}

/// lookup3's `final()`: the result is `c`.
#[inline(always)]
const fn final_mix(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

/// The kernel's `jhash_3words(a, b, c, initval)` (= lookup3 `hashword` of 3 words).
#[inline(always)]
pub const fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    let init = initval.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2);
    final_mix(
        a.wrapping_add(init),
        b.wrapping_add(init),
        c.wrapping_add(init),
    )
}

/// The kernel's `jhash2(k, 9, initval)`, unrolled (two mixes, then the final mix).
#[inline(always)]
const fn jhash_9words(k: [u32; 9], initval: u32) -> u32 {
    let init = JHASH_INITVAL.wrapping_add(9 << 2).wrapping_add(initval);
    let (a, b, c) = mix(
        init.wrapping_add(k[0]),
        init.wrapping_add(k[1]),
        init.wrapping_add(k[2]),
    );
    let (a, b, c) = mix(
        a.wrapping_add(k[3]),
        b.wrapping_add(k[4]),
        c.wrapping_add(k[5]),
    );
    final_mix(
        a.wrapping_add(k[6]),
        b.wrapping_add(k[7]),
        c.wrapping_add(k[8]),
    )
}

/// Both ports in one word: `sport` low, `dport` high (what a little-endian load of
/// the four port bytes gives; defined arithmetically so it never depends on a load).
#[inline(always)]
const fn ports(sport: u16, dport: u16) -> u32 {
    (sport as u32) | ((dport as u32) << 16)
}

/// One IPv6 address as four native-endian words, constant indexes only.
#[inline(always)]
const fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// The hash of an IPv4 flow (byte order: see the module doc). The protocol goes into
/// the seed, so TCP and UDP flows of the same 4-tuple hash apart.
#[inline(always)]
pub const fn flow_hash_v4(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    jhash_3words(
        src,
        dst,
        ports(sport, dport),
        FLOW_HASH_SEED.wrapping_add(proto as u32),
    )
}

/// The hash of an IPv6 flow: `jhash2` over the nine words src, dst, ports.
#[inline(always)]
pub const fn flow_hash_v6(
    src: &[u8; 16],
    dst: &[u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
) -> u32 {
    let s = words(src);
    let d = words(dst);
    jhash_9words(
        [
            s[0],
            s[1],
            s[2],
            s[3],
            d[0],
            d[1],
            d[2],
            d[3],
            ports(sport, dport),
        ],
        FLOW_HASH_SEED.wrapping_add(proto as u32),
    )
}

/// The hash of an IPv4 fragment (or anything without ports): addresses and protocol
/// only, ports 0. See the module doc for when a director must use it.
#[inline(always)]
pub const fn frag_hash_v4(src: u32, dst: u32, proto: u8) -> u32 {
    flow_hash_v4(src, dst, 0, 0, proto)
}

/// The IPv6 counterpart of [`frag_hash_v4`].
#[inline(always)]
pub const fn frag_hash_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8) -> u32 {
    flow_hash_v6(src, dst, 0, 0, proto)
}

/// The client's flow key `(src, dst, sport, dport)` for the header an ICMP error
/// quotes: the quoted packet went from the VIP to the client, so both addresses and
/// both ports swap. Works for `u32` (IPv4) and `&[u8; 16]` (IPv6) addresses.
#[inline(always)]
pub const fn icmp_inner_key<A: Copy>(
    inner_src: A,
    inner_dst: A,
    inner_sport: u16,
    inner_dport: u16,
) -> (A, A, u16, u16) {
    (inner_dst, inner_src, inner_dport, inner_sport)
}

/// The flow hash for an ICMPv4 error quoting (`inner_*`, the quoted header's fields
/// as they sit in the packet): equals [`flow_hash_v4`] of the client's flow.
#[inline(always)]
pub const fn icmp_inner_hash_v4(
    inner_src: u32,
    inner_dst: u32,
    inner_sport: u16,
    inner_dport: u16,
    inner_proto: u8,
) -> u32 {
    let (s, d, sp, dp) = icmp_inner_key(inner_src, inner_dst, inner_sport, inner_dport);
    flow_hash_v4(s, d, sp, dp, inner_proto)
}

/// The ICMPv6 counterpart of [`icmp_inner_hash_v4`].
#[inline(always)]
pub const fn icmp_inner_hash_v6(
    inner_src: &[u8; 16],
    inner_dst: &[u8; 16],
    inner_sport: u16,
    inner_dport: u16,
    inner_proto: u8,
) -> u32 {
    let (s, d, sp, dp) = icmp_inner_key(inner_src, inner_dst, inner_sport, inner_dport);
    flow_hash_v6(s, d, sp, dp, inner_proto)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::rng::XorShift64;
    use std::collections::HashSet;
    use std::vec::Vec;

    /// The kernel's byte-wise `jhash(key, length, initval)` (lookup3 `hashlittle` on a
    /// little-endian machine), loops and all: the reference the unrolled code must match.
    fn jhash_bytes(key: &[u8], initval: u32) -> u32 {
        let init = JHASH_INITVAL
            .wrapping_add(key.len() as u32)
            .wrapping_add(initval);
        let (mut a, mut b, mut c) = (init, init, init);
        let word = |k: &[u8]| {
            let mut w = [0u8; 4];
            w[..k.len()].copy_from_slice(k);
            u32::from_le_bytes(w)
        };
        let mut k = key;
        while k.len() > 12 {
            a = a.wrapping_add(word(&k[0..4]));
            b = b.wrapping_add(word(&k[4..8]));
            c = c.wrapping_add(word(&k[8..12]));
            (a, b, c) = mix(a, b, c);
            k = &k[12..];
        }
        if k.is_empty() {
            return c;
        }
        a = a.wrapping_add(word(&k[..k.len().min(4)]));
        if k.len() > 4 {
            b = b.wrapping_add(word(&k[4..k.len().min(8)]));
        }
        if k.len() > 8 {
            c = c.wrapping_add(word(&k[8..]));
        }
        final_mix(a, b, c)
    }

    fn le_bytes(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn v6(r: &mut XorShift64) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&r.next_u64().to_ne_bytes());
        a[8..].copy_from_slice(&r.next_u64().to_ne_bytes());
        a
    }

    /// Chi-square of `counts` against a uniform spread.
    fn chi_square(counts: &[u32]) -> f64 {
        let total: u32 = counts.iter().sum();
        let expected = total as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|&n| (n as f64 - expected).powi(2) / expected)
            .sum()
    }

    /// 1024 buckets = 1023 degrees of freedom: mean 1023, sd ~45. Allow 5 sd.
    fn assert_uniform(hashes: impl Iterator<Item = u32>, what: &str) {
        let mut counts = [0u32; 1024];
        for h in hashes {
            counts[(h % 1024) as usize] += 1;
        }
        let chi = chi_square(&counts);
        std::println!("{what}: chi-square {chi:.0} over 1023 degrees of freedom");
        assert!(chi < 1023.0 + 5.0 * 45.2, "{what}: chi-square {chi}");
    }

    #[test]
    fn lookup3_vectors() {
        // lookup3.c's self-test: hashlittle("Four score and seven years ago", 30, 0|1).
        let s = b"Four score and seven years ago";
        assert_eq!(jhash_bytes(s, 0), 0x1777_0551);
        assert_eq!(jhash_bytes(s, 1), 0xcd62_8161);
        assert_eq!(jhash_bytes(b"", 0), 0xdead_beef);
    }

    #[test]
    fn unrolled_matches_the_kernel() {
        let mut r = XorShift64::new(7);
        for _ in 0..1000 {
            let k: [u32; 9] = core::array::from_fn(|_| r.next_u64() as u32);
            let iv = r.next_u64() as u32;
            assert_eq!(
                jhash_3words(k[0], k[1], k[2], iv),
                jhash_bytes(&le_bytes(&k[..3]), iv)
            );
            assert_eq!(jhash_9words(k, iv), jhash_bytes(&le_bytes(&k), iv));
        }
        // The flow hashes are those functions over the documented words.
        let (src, dst) = (
            u32::from_ne_bytes([10, 0, 0, 1]),
            u32::from_ne_bytes([192, 0, 2, 1]),
        );
        let (sport, dport) = (40000u16.to_be(), 443u16.to_be());
        let mut key = Vec::new();
        key.extend_from_slice(&src.to_le_bytes());
        key.extend_from_slice(&dst.to_le_bytes());
        key.extend_from_slice(&sport.to_le_bytes());
        key.extend_from_slice(&dport.to_le_bytes());
        assert_eq!(
            flow_hash_v4(src, dst, sport, dport, 6),
            jhash_bytes(&key, FLOW_HASH_SEED + 6)
        );
        let (s6, d6) = ([0x20; 16], [0xfe; 16]);
        let mut key = Vec::new();
        key.extend_from_slice(&s6);
        key.extend_from_slice(&d6);
        key.extend_from_slice(&sport.to_le_bytes());
        key.extend_from_slice(&dport.to_le_bytes());
        assert_eq!(
            flow_hash_v6(&s6, &d6, sport, dport, 17),
            jhash_bytes(&key, FLOW_HASH_SEED + 17)
        );
    }

    #[test]
    fn deterministic_and_pinned() {
        let (src, dst) = (
            u32::from_ne_bytes([10, 0, 0, 1]),
            u32::from_ne_bytes([192, 0, 2, 1]),
        );
        let h = flow_hash_v4(src, dst, 40000u16.to_be(), 443u16.to_be(), 6);
        assert_eq!(
            h,
            flow_hash_v4(src, dst, 40000u16.to_be(), 443u16.to_be(), 6)
        );
        // Pinned: a change here changes every director's choices (a cluster-wide
        // contract), so it must be deliberate. 10.0.0.1:40000 -> 192.0.2.1:443, TCP,
        // as read on a little-endian machine.
        assert_eq!(
            flow_hash_v4(0x0100_000a, 0x0102_00c0, 0x409c, 0xbb01, 6),
            0x86ce_a491
        );
        // Every field matters, the protocol included.
        let base = flow_hash_v4(1, 2, 3, 4, 6);
        for other in [
            flow_hash_v4(9, 2, 3, 4, 6),
            flow_hash_v4(1, 9, 3, 4, 6),
            flow_hash_v4(1, 2, 9, 4, 6),
            flow_hash_v4(1, 2, 3, 9, 6),
            flow_hash_v4(1, 2, 3, 4, 17),
            flow_hash_v4(2, 1, 4, 3, 6),
        ] {
            assert_ne!(base, other);
        }
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let base = flow_hash_v6(&a, &b, 3, 4, 6);
        assert_eq!(base, flow_hash_v6(&a, &b, 3, 4, 6));
        assert_ne!(base, flow_hash_v6(&b, &a, 3, 4, 6));
        assert_ne!(base, flow_hash_v6(&a, &b, 3, 4, 17));
        assert_ne!(base, flow_hash_v6(&a, &b, 4, 3, 6));
    }

    #[test]
    fn few_collisions() {
        // 100k random tuples in 2^32: the birthday bound expects ~1.2 collisions.
        let mut r = XorShift64::new(42);
        let mut seen4 = HashSet::new();
        let mut seen6 = HashSet::new();
        let (mut c4, mut c6) = (0, 0);
        for _ in 0..100_000 {
            let x = r.next_u64();
            let y = r.next_u64();
            let proto = if x & 1 == 0 { 6 } else { 17 };
            if !seen4.insert(flow_hash_v4(
                x as u32,
                (x >> 32) as u32,
                y as u16,
                (y >> 16) as u16,
                proto,
            )) {
                c4 += 1;
            }
            let (s, d) = (v6(&mut r), v6(&mut r));
            if !seen6.insert(flow_hash_v6(&s, &d, y as u16, (y >> 16) as u16, proto)) {
                c6 += 1;
            }
        }
        std::println!("collisions over 100k tuples: v4 {c4}, v6 {c6}");
        assert!(c4 <= 5 && c6 <= 5, "v4 {c4}, v6 {c6}");
    }

    #[test]
    fn uniform_buckets() {
        let mut r = XorShift64::new(3);
        let rand4: Vec<u32> = (0..100_000)
            .map(|_| {
                let x = r.next_u64();
                flow_hash_v4(x as u32, 0x0102_00c0, (x >> 32) as u16, 443u16.to_be(), 6)
            })
            .collect();
        assert_uniform(rand4.into_iter(), "v4 random clients");
        // Low-entropy inputs, as real traffic is: one client, sequential source ports;
        // one /16 of sequential client addresses, one port.
        let vip = u32::from_ne_bytes([192, 0, 2, 1]);
        let client = u32::from_ne_bytes([10, 0, 0, 1]);
        assert_uniform(
            (0..=u16::MAX).map(|p| flow_hash_v4(client, vip, p.to_be(), 443u16.to_be(), 6)),
            "v4 sequential ports",
        );
        assert_uniform(
            (0..=u16::MAX).map(|i| {
                let [hi, lo] = i.to_be_bytes();
                flow_hash_v4(
                    u32::from_ne_bytes([10, 1, hi, lo]),
                    vip,
                    5555u16.to_be(),
                    80u16.to_be(),
                    6,
                )
            }),
            "v4 sequential clients",
        );
        let vip6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut c6 = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_uniform(
            (0..=u16::MAX).map(|i| {
                c6[14..].copy_from_slice(&i.to_be_bytes());
                flow_hash_v6(&c6, &vip6, 5555u16.to_be(), 443u16.to_be(), 6)
            }),
            "v6 sequential clients",
        );
        let mut r = XorShift64::new(4);
        let c6 = v6(&mut r);
        assert_uniform(
            (0..=u16::MAX).map(|p| flow_hash_v6(&c6, &vip6, p.to_be(), 443u16.to_be(), 17)),
            "v6 sequential ports",
        );
    }

    #[test]
    fn avalanche() {
        // Flipping any one input bit flips about half of the output bits on average.
        let mut r = XorShift64::new(5);
        let mut flipped = [0u64; 104];
        let rounds = 2000u64;
        for _ in 0..rounds {
            let (s, d, p) = (
                r.next_u64() as u32,
                r.next_u64() as u32,
                r.next_u64() as u32,
            );
            let proto = r.byte();
            let h = flow_hash_v4(s, d, p as u16, (p >> 16) as u16, proto);
            for (bit, n) in flipped.iter_mut().enumerate() {
                let (mut s, mut d, mut p, mut proto) = (s, d, p, proto);
                match bit {
                    0..=31 => s ^= 1 << bit,
                    32..=63 => d ^= 1 << (bit - 32),
                    64..=95 => p ^= 1 << (bit - 64),
                    _ => proto ^= 1 << (bit - 96),
                }
                let g = flow_hash_v4(s, d, p as u16, (p >> 16) as u16, proto);
                *n += (h ^ g).count_ones() as u64;
            }
        }
        for (bit, n) in flipped.iter().enumerate() {
            let mean = *n as f64 / rounds as f64;
            assert!(
                (14.5..=17.5).contains(&mean),
                "input bit {bit}: {mean} output bits"
            );
        }
    }

    #[test]
    fn icmp_error_hashes_like_its_flow() {
        let mut r = XorShift64::new(6);
        for _ in 0..1000 {
            let (client, vip) = (r.next_u64() as u32, r.next_u64() as u32);
            let (cport, vport) = (r.next_u64() as u16, r.next_u64() as u16);
            for proto in [6u8, 17, 132] {
                let flow = flow_hash_v4(client, vip, cport, vport, proto);
                // The packet the member sent, as an ICMP error quotes it.
                let (inner_src, inner_dst, inner_sport, inner_dport) = (vip, client, vport, cport);
                assert_eq!(
                    icmp_inner_key(inner_src, inner_dst, inner_sport, inner_dport),
                    (client, vip, cport, vport)
                );
                assert_eq!(
                    flow,
                    flow_hash_v4(inner_dst, inner_src, inner_dport, inner_sport, proto)
                );
                assert_eq!(
                    flow,
                    icmp_inner_hash_v4(inner_src, inner_dst, inner_sport, inner_dport, proto)
                );
                // Hashing the quoted header as is would (almost always) miss.
                assert_ne!(
                    flow,
                    flow_hash_v4(inner_src, inner_dst, inner_sport, inner_dport, proto)
                );
            }
            let (client6, vip6) = (v6(&mut r), v6(&mut r));
            let flow = flow_hash_v6(&client6, &vip6, cport, vport, 6);
            assert_eq!(flow, icmp_inner_hash_v6(&vip6, &client6, vport, cport, 6));
        }
    }

    #[test]
    fn fragments_hash_by_addresses() {
        let (s, d) = (
            u32::from_ne_bytes([10, 0, 0, 1]),
            u32::from_ne_bytes([192, 0, 2, 1]),
        );
        assert_eq!(frag_hash_v4(s, d, 17), flow_hash_v4(s, d, 0, 0, 17));
        assert_ne!(frag_hash_v4(s, d, 17), frag_hash_v4(s, d, 6));
        let (s6, d6) = ([1u8; 16], [2u8; 16]);
        assert_eq!(frag_hash_v6(&s6, &d6, 17), flow_hash_v6(&s6, &d6, 0, 0, 17));
    }
}
