//! Map keys and values shared by the XDP program (`vip-ebpf`) and the agent.
//!
//! Every type is `#[repr(C)]` with fixed-width integers and explicit padding so both
//! sides agree on the layout byte for byte; sizes are pinned with `const` asserts.
//! Byte order: addresses and MACs are kept exactly as they appear on the wire
//! (network order); every other integer is host order.
#![no_std]

use core::mem::size_of;

pub mod flow;
pub mod maglev;

/// Names of the read-only globals the loader sets (see [`Settings`]).
pub mod globals {
    pub const VIP_IFINDEX: &str = "VIP_IFINDEX";
    pub const EIP_ENABLED: &str = "EIP_ENABLED";
    pub const ECHO_PORT: &str = "ECHO_PORT";
    pub const BALANCE_ENABLED: &str = "BALANCE_ENABLED";
    pub const VIP_INDEX_SHIFT: &str = "VIP_INDEX_SHIFT";
    pub const TUNNEL_SRC: &str = "TUNNEL_SRC";
    /// See [`crate::lease::Request::key`].
    pub const LEASE_KEY: &str = "LEASE_KEY";
}

/// Map names, as the loader finds them in the object file.
pub mod maps {
    pub const VIPS_V4: &str = "VIPS_V4";
    pub const VIPS_V6: &str = "VIPS_V6";
    pub const VIP_INDEX_V4: &str = "VIP_INDEX_V4";
    pub const VIP_ENTRIES_V4: &str = "VIP_ENTRIES_V4";
    pub const VIP_INDEX_V6: &str = "VIP_INDEX_V6";
    pub const VIP_ENTRIES_V6: &str = "VIP_ENTRIES_V6";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    pub const LEASES: &str = "LEASES";
    pub const QUIET: &str = "QUIET";
    pub const REDIRECT_DEVS: &str = "REDIRECT_DEVS";
    pub const READDRESS: &str = "READDRESS";
    pub const EIPS_IN: &str = "EIPS_IN";
    pub const EIPS_OUT: &str = "EIPS_OUT";
    pub const OWNERS: &str = "OWNERS";
    pub const EIP_STATS: &str = "EIP_STATS";
    pub const EIP_NODES: &str = "EIP_NODES";
    pub const ROUTES6: &str = "ROUTES6";
    pub const OWNERS_V6: &str = "OWNERS_V6";
    pub const ROUTE6_STATS: &str = "ROUTE6_STATS";
    pub const ECHO_SEEN: &str = "ECHO_SEEN";
    pub const PEERS: &str = "PEERS";
    pub const BALANCE_TABLE: &str = "BALANCE_TABLE";
    pub const BALANCE_MEMBERS: &str = "BALANCE_MEMBERS";
    pub const BALANCE_CONF: &str = "BALANCE_CONF";
    pub const BALANCE_PORTS: &str = "BALANCE_PORTS";
    pub const BALANCE_FLOWS: &str = "BALANCE_FLOWS";
    pub const BALANCE_FLOWS_V4: &str = "BALANCE_FLOWS_V4";
    pub const BALANCE_STATS: &str = "BALANCE_STATS";
    pub const BALANCE_NODES: &str = "BALANCE_NODES";
    /// The benchmarks' maps, in their own object (`vip-bench`).
    pub const BENCH_COUNT: &str = "BENCH_COUNT";
    pub const BENCH_FRAME: &str = "BENCH_FRAME";
    pub const BENCH_FLOWS: &str = "BENCH_FLOWS";
    pub const BENCH_SOURCES: &str = "BENCH_SOURCES";
}

/// Program names in the object file.
pub mod programs {
    /// The data plane.
    pub const VIP: &str = "vip_xdp";
    /// Returns XDP_PASS and nothing else: the floor the benchmarks compare against.
    pub const PASS: &str = "vip_xdp_pass";
    /// Benchmark generator (XDP_TX everything) and sink (count and drop), in their
    /// own object (`vip-bench`), which only the benchmarks load.
    pub const BENCH_TX: &str = "vip_bench_tx";
    pub const BENCH_SINK: &str = "vip_bench_sink";
    /// Extends a group's lease only while it is still valid (see [`lease`]); run by the
    /// agent with BPF_PROG_TEST_RUN, never attached to an interface.
    pub const LEASE: &str = "vip_lease";
}

/// The data-plane lease of an elected group: a deadline in `LEASES` (CLOCK_BOOTTIME ns,
/// `bpf_ktime_get_boot_ns()`), after which the group's leased entries neither answer
/// ARP/NS and echo probes nor steer traffic. Boot time, not monotonic time: it goes on
/// counting while the host is suspended, so a host that wakes up finds its lease run
/// out instead of answering for a VIP that a standby took meanwhile.
///
/// The agent grants a lease (a plain map write) only when its election decided to take
/// the VIPs. It *extends* one through the `vip_lease` program, which compares the
/// deadline with the kernel's clock and writes the new one in the same program run: a
/// lease that has run out is never extended, however long the agent was stopped between
/// deciding to renew and the write (a userspace check-then-write could resurrect it).
///
/// The program's input is one [`Request`]; it writes the deadline it found and the
/// kernel's time back into it and answers with one of the outcome codes.
pub mod lease {
    /// [`Request::magic`]: anything else is not a lease request.
    pub const MAGIC: u32 = 0x5649_504c; // "VIPL"
    /// The deadline was `expect` and had not passed: it is now `deadline`.
    pub const EXTENDED: u32 = crate::xdp::XDP_PASS;
    /// The deadline had passed (or was 0: revoked): nothing written.
    pub const EXPIRED: u32 = crate::xdp::XDP_DROP;
    /// The deadline was not `expect` (someone else wrote it): nothing written.
    pub const CHANGED: u32 = crate::xdp::XDP_TX;
    /// Not a request (wrong magic, key or size, group out of range): nothing written.
    pub const REFUSED: u32 = crate::xdp::XDP_ABORTED;

    /// A lease extension, as the packet data of a BPF_PROG_TEST_RUN of `vip_lease`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct Request {
        pub magic: u32,
        /// Index into `LEASES`.
        pub group: u32,
        /// Must equal the program's `LEASE_KEY` global (random per load): a frame that
        /// reached the program any other way than from its loader is not a request.
        pub key: u64,
        /// The deadline the agent believes is in force.
        pub expect: u64,
        /// The new deadline.
        pub deadline: u64,
        /// Written back: the deadline the program found.
        pub found: u64,
        /// Written back: the kernel's boot time when it looked.
        pub now: u64,
    }
    const _: () = assert!(core::mem::size_of::<Request>() == 48);
}

/// EtherTypes, in host order: compare with `u16::from_be_bytes` of the wire field.
pub mod ether {
    /// Length of the Ethernet header (no VLAN tag).
    pub const ETH_HLEN: usize = 14;
    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_IPV6: u16 = 0x86DD;
    pub const ETH_P_8021Q: u16 = 0x8100;
    pub const ETH_P_8021AD: u16 = 0x88A8;
}

/// XDP return codes (`enum xdp_action` of the kernel UAPI); the program asserts at
/// compile time that they equal aya-ebpf's bindings.
pub mod xdp {
    pub const XDP_ABORTED: u32 = 0;
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;
    pub const XDP_REDIRECT: u32 = 4;

    /// A code by name, for messages and tables.
    pub const fn name(code: u32) -> &'static str {
        match code {
            XDP_ABORTED => "XDP_ABORTED",
            XDP_DROP => "XDP_DROP",
            XDP_PASS => "XDP_PASS",
            XDP_TX => "XDP_TX",
            XDP_REDIRECT => "XDP_REDIRECT",
            _ => "XDP_?",
        }
    }
}

/// The internet checksum (RFC 1071), shared by the program and the agent.
///
/// Callers add 16-bit big-endian words into a `u32` accumulator (up to 65 537 words
/// cannot overflow it); then:
/// * [`csum_fold`] folds the carries back in and returns the one's-complement sum,
///   NOT complemented. A message that includes a correct checksum folds to 0xffff.
/// * [`csum_finish`] is `!csum_fold(sum)`: the value to store in a checksum field
///   (computed with that field zeroed). A correct message finishes to 0.
pub mod csum {
    /// The 16-bit one's-complement sum of a 32-bit accumulator (end-around carry),
    /// not complemented. Exact for every `u32`: the first fold leaves at most
    /// 0x1fffe, the second at most 0xffff.
    #[inline(always)]
    pub const fn csum_fold(sum: u32) -> u16 {
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        sum as u16
    }

    /// The checksum field's value for the words summed in `sum`: `!csum_fold(sum)`.
    #[inline(always)]
    pub const fn csum_finish(sum: u32) -> u16 {
        !csum_fold(sum)
    }
}

/// A tiny deterministic generator (Marsaglia's xorshift64, shifts 13/7/17) for the
/// tests' fuzzing: a failure reproduces from its seed. Not for anything secret.
pub mod rng {
    pub struct XorShift64(u64);

    impl XorShift64 {
        /// A generator from `seed`; a zero seed (xorshift's fixed point) is replaced.
        pub const fn new(seed: u64) -> Self {
            XorShift64(if seed == 0 {
                0x9e37_79b9_7f4a_7c15
            } else {
                seed
            })
        }

        /// The next value (the state itself, as the classic xorshift64).
        pub fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// A value in `0..n` (modulo bias is fine for tests) (0 when `n` is 0).
        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n.max(1) as u64) as usize
        }

        pub fn byte(&mut self) -> u8 {
            self.next_u64() as u8
        }
    }
}

/// What the data plane does with a VIP's traffic.
pub mod action {
    /// Entry present but inert: pass everything, answer nothing.
    pub const NONE: u32 = 0;
    /// Answer ARP/NS with `own_mac`; pass VIP packets to the local stack.
    pub const LOCAL: u32 = 1;
    /// Answer ARP/NS; rewrite Ethernet to `src_mac`/`dst_mac` and redirect to `ifindex`.
    pub const REDIRECT: u32 = 2;
    /// Do not answer ARP/NS; rewrite Ethernet to `src_mac` -> `dst_mac` (the active
    /// node) and send back out of the same interface (a balanced member: only what
    /// did not come from the group's nodes, see [`super::flags::BALANCED`]).
    pub const FORWARD: u32 = 3;

    pub const fn name(action: u32) -> &'static str {
        match action {
            NONE => "none",
            LOCAL => "local",
            REDIRECT => "redirect",
            FORWARD => "forward",
            _ => "unknown",
        }
    }
}

/// Bits of [`VipEntry::flags`].
pub mod flags {
    /// The entry is gated by its group's lease in `LEASES`: once the lease has
    /// expired the entry steers nothing (its packets pass, XDP_PASS) and answers
    /// nothing (ARP/NS requests for it are dropped, as for any VIP this node does
    /// not serve now, and so are echo probes).
    pub const LEASED: u32 = 1 << 0;
    /// A balanced group's VIP (see [`crate::balance_maps`]); `ifindex` then holds
    /// the group's balance slot.
    /// * On its director (action LOCAL): TCP and UDP (all, or the group's ports) are
    ///   spread over the members.
    /// * On a member (action FORWARD, `dst_mac` the director): a packet from one of
    ///   the group's nodes (`dst_mac`, or a MAC in `BALANCE_NODES`) is delivered
    ///   locally; any other (a client whose ARP cache names this node) is forwarded
    ///   to the director, which hands it to the member that holds its flow.
    pub const BALANCED: u32 = 1 << 1;
    /// Planned handover, on the NEW active's entries (local) for its first
    /// `drain_ms` after taking over from a live active (it released the VIPs, or we
    /// preempted it; either way it steps down towards us and drains): a TCP
    /// packet that is not a SYN and that no local socket knows belongs to a
    /// connection of the old active; it is sent there (Ethernet to `dst_mac`, the
    /// old active's MAC, from `own_mac`; XDP_TX) rather than reset by our kernel.
    /// Unless it came from `dst_mac` itself: then neither node knows the flow.
    pub const GRACE: u32 = 1 << 2;
    /// Planned handover, on the OLD active's forward entries while it drains (its
    /// VIP addresses still on `lo`): a TCP packet that a local socket knows is
    /// passed to the local stack instead of forwarded to `dst_mac` (the new
    /// active); so is a non-SYN TCP packet that no socket knows and that came from
    /// `dst_mac` (the new active's GRACE sent it: neither node knows the flow, our
    /// kernel resets it). Everything else is forwarded as without the flag.
    pub const KEEP: u32 = 1 << 3;
    /// A resident group's VIP (`addresses = "resident"`): its address stays on `lo`
    /// on every node of the group, whatever the node's role, so the kernel would
    /// accept whatever the program passes. What the entry does not serve now (its
    /// lease has expired, or it is inert: the agent writes a resident group's
    /// entries always with [`LEASED`], and revokes an inert one's lease) is therefore
    /// dropped (XDP_DROP, counted in `lease_expired`), never passed; serving,
    /// forwarding and the drain's KEEP are as without the flag.
    pub const RESIDENT: u32 = 1 << 4;
    /// The group has a virtual MAC (`mac = "..."`, as VRRP's): `own_mac` is that MAC,
    /// which answers ARP/NS and moves with the group, and `src_mac` is the node's own.
    /// A frame to either is ours; one to the virtual MAC has its destination set to
    /// the node's before anything acts on it, so that the local stack, which knows
    /// only the node's MAC, takes what is passed. Set on the active's entries and on
    /// the old active's while it drains ([`KEEP`]), which the switch may still send
    /// the virtual MAC's frames to; never on a standby's, which must not take a frame
    /// flooded to the virtual MAC (the active has it too). Frames the program sends
    /// itself keep their sources: an ARP/NS answer comes from `own_mac` (the active
    /// only), a forwarded frame from `src_mac`, never from the virtual MAC, which
    /// would pull the switch's entry for it away from the active.
    pub const VIRTUAL_MAC: u32 = 1 << 5;
    /// On a [`BALANCED`] entry of an anycast group (`balance.udp = "as_routed"`): a
    /// UDP datagram (the packet's own protocol, fragments included: the router
    /// hashes those by addresses, so all of a datagram's reach one member) is served
    /// by the node the router handed it to, the director's connection table and the
    /// hop to it skipped. TCP, and ICMP errors about UDP, go as without the flag.
    pub const UDP_AS_ROUTED: u32 = 1 << 6;
}

/// Value of the `VIPS_V4` (key: IPv4 address, 4 bytes in network order) and `VIPS_V6`
/// (key: 16 bytes in network order) hash maps.
///
/// A hash-map update replaces the whole value under RCU, so the data plane never sees a
/// half-written entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipEntry {
    /// One of [`action`].
    pub action: u32,
    /// Bits of [`flags`].
    pub flags: u32,
    /// Index into `VIP_STATS`; unique per VIP.
    pub stats_index: u32,
    /// Index into `LEASES` and `QUIET`; one per group.
    pub group_index: u32,
    /// REDIRECT: ifindex of the target interface (the key in `REDIRECT_DEVS`). A
    /// balanced VIP's entry ([`flags::BALANCED`]) holds its group's balance slot here
    /// instead (see [`balance_maps`]).
    pub ifindex: u32,
    /// MAC of the interface the program is attached to: the answer to ARP/NS.
    pub own_mac: [u8; 6],
    /// Source MAC written into redirected and forwarded frames.
    pub src_mac: [u8; 6],
    /// Destination MAC written into redirected and forwarded frames (the target, or
    /// the active node); with [`flags::GRACE`] the old active, with [`flags::KEEP`]
    /// the new one, on a balanced member's entry the director.
    pub dst_mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<VipEntry>() == 40);

/// The IPv4 VIP index (see [`index`]): a VIP's entry with its address, so that a
/// reader can tell a reused entry from its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IndexedEntry {
    /// The VIP, network order as a native-endian u32 (the `VIPS_V4` key).
    pub addr: u32,
    pub _pad: u32,
    pub entry: VipEntry,
}
const _: () = assert!(size_of::<IndexedEntry>() == 48);

/// The IPv6 VIP index's entry (see [`index`], [`index::slot_v6`]): a VIP's entry
/// with its full address, compared on every read. 8-aligned so that the program
/// compares the address as two u64 loads; no padding (16 + 40 bytes).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IndexedEntryV6 {
    /// The VIP's 16 bytes in network order (the `VIPS_V6` key).
    pub addr: [u8; 16],
    pub entry: VipEntry,
}
const _: () = assert!(size_of::<IndexedEntryV6>() == 56);
const _: () = assert!(core::mem::align_of::<IndexedEntryV6>() == 8);

/// The IPv4 VIP index: a direct-mapped array of slots in front of `VIPS_V4`, whose
/// hash lookup costs about as much as everything else a VIP's packet does. A slot
/// is one u64 the agent stores atomically (the array is mmapped), so the program
/// reads either the old or the new slot, never a mix:
///
/// * low 32 bits: the address of the one VIP that hashes to the slot (0 when none);
/// * high 32 bits: [`EMPTY`](index::EMPTY) (no VIP hashes here: not a VIP),
///   [`COLLIDED`](index::COLLIDED) (several do: look in `VIPS_V4`), or 1 + the index
///   of the VIP's [`IndexedEntry`] in `VIP_ENTRIES_V4`.
///
/// An update writes the new entry into a free index first, then flips the slot, so
/// the program never sees an entry half written; freed indexes are reused last
/// (FIFO), and the entry carries its address, checked on every read. `VIPS_V4`
/// stays the source of truth: anything the index cannot answer falls back to it.
///
/// IPv6 VIPs have an index of their own in front of `VIPS_V6` (`VIP_INDEX_V6`,
/// `VIP_ENTRIES_V6` of [`IndexedEntryV6`]), with the same slot count, the same
/// rules and the same [`pack`](index::pack)ed slots, but for the low 32 bits: they
/// hold the VIP's [`fold_v6`](index::fold_v6), a hint (an address whose fold differs
/// is not that VIP; one whose fold matches is compared in full with the entry's).
pub mod index {
    /// Slot value: no VIP hashes here.
    pub const EMPTY: u32 = 0;
    /// Slot value: more than one VIP hashes here.
    pub const COLLIDED: u32 = u32::MAX;
    /// Knuth's multiplicative constant (2^32 / the golden ratio).
    const MUL: u32 = 0x9e37_79b1;

    /// log2 of the slot count for `max_vips`: four slots per VIP of capacity (random
    /// addresses: ~22 % of a full table's VIPs share a slot), at least 64, at most 2^24.
    pub const fn bits(max_vips: u32) -> u32 {
        let want = (max_vips as u64) * 4;
        let mut b = 6;
        while b < 24 && (1u64 << b) < want {
            b += 1;
        }
        b
    }

    /// Entries: the capacity plus room so that a freed entry is reused only after
    /// 1,024 other updates.
    pub const fn entries(max_vips: u32) -> u32 {
        max_vips.saturating_add(1024)
    }

    /// The slot of an address (network order as a native-endian u32); `shift` is
    /// 32 - [`bits`]. Fibonacci hashing of the address as a number: consecutive
    /// addresses (a subnet's VIPs) land in distinct slots while they fit.
    #[inline(always)]
    pub fn slot(addr: u32, shift: u32) -> u32 {
        u32::from_be(addr).wrapping_mul(MUL) >> shift
    }

    /// An IPv6 address (16 bytes, network order) folded to 32 bits: the xor of its
    /// first three big-endian words plus the last. Within one /96 (a /64's
    /// addresses numbered from 1, as VIPs are) consecutive addresses fold to
    /// consecutive numbers, which [`slot_v6`] then spreads as [`slot`] spreads a
    /// subnet's IPv4 addresses; the xor keeps every prefix bit in the fold.
    #[inline(always)]
    pub fn fold_v6(a: &[u8; 16]) -> u32 {
        let w = |i: usize| u32::from_be_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        (w(0) ^ w(4) ^ w(8)).wrapping_add(w(12))
    }

    /// [`fold_v6`] of an address read as two native-endian u64 (its bytes 0-7 and
    /// 8-15), as the program loads it.
    #[inline(always)]
    pub fn fold_v6_words(w: [u64; 2]) -> u32 {
        let (h, l) = (w[0].to_ne_bytes(), w[1].to_ne_bytes());
        let be = |b: [u8; 8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        (be(h, 0) ^ be(h, 4) ^ be(l, 0)).wrapping_add(be(l, 4))
    }

    /// The slot of an IPv6 address's fold ([`fold_v6`]); `shift` as for [`slot`].
    #[inline(always)]
    pub fn slot_v6(fold: u32, shift: u32) -> u32 {
        fold.wrapping_mul(MUL) >> shift
    }

    #[inline(always)]
    pub const fn pack(addr: u32, reference: u32) -> u64 {
        ((reference as u64) << 32) | addr as u64
    }

    /// (address, reference)
    #[inline(always)]
    pub const fn unpack(v: u64) -> (u32, u32) {
        (v as u32, (v >> 32) as u32)
    }
}

/// Per-VIP counters, one copy per CPU (`VIP_STATS`, a per-CPU array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipStats {
    /// IP packets addressed to the VIP and to this node's MAC (ARP/NS not included;
    /// frames flooded to us for another MAC count in `global::NOT_OUR_MAC`).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub arp_replies: u64,
    pub nd_replies: u64,
    pub passed: u64,
    pub redirected: u64,
    pub forwarded: u64,
    /// Packets not steered because the group's lease had expired (or its entry is
    /// inert): passed, or dropped on a resident group's entry ([`flags::RESIDENT`]).
    pub lease_expired: u64,
}
const _: () = assert!(size_of::<VipStats>() == 64);

impl VipStats {
    /// Sum of the per-CPU copies.
    pub fn add(&mut self, o: &VipStats) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.arp_replies += o.arp_replies;
        self.nd_replies += o.nd_replies;
        self.passed += o.passed;
        self.redirected += o.redirected;
        self.forwarded += o.forwarded;
        self.lease_expired += o.lease_expired;
    }
}

/// Indexes of the `GLOBAL_STATS` per-CPU array (u64 each).
pub mod global {
    /// A frame too short for the headers it announces, on a path we inspect.
    pub const PARSE_ERRORS: u32 = 0;
    /// Processing of a VIP frame given up (e.g. a redirect the kernel refused);
    /// the frame was passed.
    pub const ABORTS: u32 = 1;
    /// ARP requests / NS for a VIP that we did not answer, dropped: malformed, not
    /// addressed to us, or for a VIP this node does not serve now (gratuitous ARP and
    /// replies pass to the kernel uncounted).
    pub const NOT_ANSWERED: u32 = 2;
    /// 802.1Q / 802.1ad tagged frames, always passed untouched.
    pub const VLAN_PASSED: u32 = 3;
    /// VIP traffic whose Ethernet destination was not our MAC (flooded by a switch):
    /// passed, never steered, so no frame is ever duplicated.
    pub const NOT_OUR_MAC: u32 = 4;
    /// An entry pointed at a stats slot outside the array.
    pub const BAD_STATS_INDEX: u32 = 5;
    /// Echo probes reflected: this node answers for the probed VIP (its lease runs).
    pub const ECHO_ANSWERED: u32 = 6;
    /// Echo probes dropped unanswered: the VIP is not ours now, or its lease ran out.
    pub const ECHO_REFUSED: u32 = 7;
    /// Datagrams to the election's port whose (source, destination) is not a
    /// (peer, this node) pair of the config, echo probes included: dropped before any
    /// socket sees them (see [`crate::peers`]).
    pub const ELECTION_NOT_PEER: u32 = 8;
    /// Datagrams to the election's port from a peer's address but another MAC than
    /// the one the agent learned for it: dropped (but a trickle, see
    /// [`crate::peers::STRANGER_GAP_NS`], and echo probes within the strangers'
    /// budget).
    pub const ELECTION_WRONG_MAC: u32 = 9;
    /// Datagrams to the election's port over their source's budget: dropped.
    pub const ELECTION_OVER_BUDGET: u32 = 10;
    /// Echo replies that are not the current active's answer to a probe we sent:
    /// wrong address or MAC, a sequence already answered, or a token that is not
    /// the probe's. Dropped, recording nothing.
    pub const ECHO_REPLY_REFUSED: u32 = 11;
    /// Packets of a balanced group sent to a member (or the director) on another
    /// segment, inside IPIP (see [`crate::BalanceNode`]).
    pub const TUNNEL_ENCAPSULATED: u32 = 12;
    /// IPIP packets to this node's tunnel address from a node of a balanced group,
    /// decapsulated and served.
    pub const TUNNEL_DECAPSULATED: u32 = 13;
    /// IPIP packets to this node's tunnel address dropped after decapsulation: the
    /// inner packet is not for a balanced VIP, or the outer source is not a node of
    /// its group. The tunnel is never a way to reach anything else on this host.
    pub const TUNNEL_REFUSED: u32 = 14;
    /// Packets too big for the tunnel's MTU once encapsulated: answered with ICMP
    /// "fragmentation needed" (DF set) or dropped (DF clear; never fragmented).
    pub const TUNNEL_TOO_BIG: u32 = 15;
    pub const COUNT: u32 = 16;

    pub const NAMES: [&str; COUNT as usize] = [
        "parse_errors",
        "aborts",
        "not_answered",
        "vlan_passed",
        "not_our_mac",
        "bad_stats_index",
        "echo_answered",
        "echo_refused",
        "election_not_peer",
        "election_wrong_mac",
        "election_over_budget",
        "echo_reply_refused",
        "tunnel_encapsulated",
        "tunnel_decapsulated",
        "tunnel_refused",
        "tunnel_too_big",
    ];
}

/// Program-wide settings: the read-only globals (`VIP_IFINDEX`, `EIP_ENABLED`,
/// `ECHO_PORT`, `BALANCE_ENABLED`, `TUNNEL_SRC`) the loader sets before the program
/// is verified.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// When non-zero, VIP entries apply only to frames arriving on this ifindex (a
    /// gateway attaches the same program to its external interface too).
    pub vip_ifindex: u32,
    /// Non-zero on a gateway (elastic IPs or IPv6 routes, `[[eip]]`/`[[route6]]`): skips
    /// their lookups otherwise.
    pub eip_enabled: u32,
    /// The UDP port of the election (host order), where echo probes arrive; 0: no echo.
    pub echo_port: u32,
    /// Non-zero when a group balances: the director's code is verified away otherwise
    /// (so a node without a balanced group pays nothing for it).
    pub balance_enabled: u32,
    /// This node's IPv4 address as the balanced groups' tunnel endpoint (network
    /// order as a native-endian u32): the outer source of what it encapsulates, and
    /// the outer destination it decapsulates. 0 when no balanced group has a node on
    /// another segment: the tunnel's code is verified away.
    pub tunnel_src: u32,
}
const _: () = assert!(size_of::<Settings>() == 20);

/// The echo: a standby's probe of the active's data plane (BFD's echo function). The
/// standby sends a probe to the active's election port; the active's XDP program
/// reflects it (addresses and ports swapped, kind set to reply) only while it answers
/// for the probed VIP, lease included, and only for a peer (see [`crate::peers`]);
/// the standby's XDP program records the reply in `ECHO_SEEN` and drops it. So
/// liveness is proven by the very data path that serves the VIP, with no userspace
/// wake-up on either side per packet.
///
/// A reply counts only if it comes from the active's address and MAC and carries
/// the token of its own sequence number: probe `n` of a (group, active) carries
/// [`token`]`(key, n)`, a keyed PRF whose key only the standby knows (its prober and
/// its XDP program). A probe seen on the wire therefore answers that probe and no
/// other: it cannot stand in for later ones, nor claim a sequence not yet sent.
///
/// UDP payload, network byte order:
///
/// ```text
///  0..4  magic "VIPE"     4 version (1)     5 kind (1 probe, 2 reply)
///  6     VIP family (4/6) 7 reserved (0)
///  8..12 slot: the prober's index into ECHO_SEEN (its group's slot)
/// 12..20 token: token(key, sequence), one per probe
/// 20..28 sequence number of the probe
/// 28..44 the probed VIP (IPv4 in the first 4 bytes)
/// ```
///
/// The layout is the one of the echo's first version (a token per (group, active)
/// then): a reflector of either version answers the other's probes.
pub mod echo {
    pub const MAGIC: [u8; 4] = *b"VIPE";
    pub const VERSION: u8 = 1;
    pub const PROBE: u8 = 1;
    pub const REPLY: u8 = 2;
    pub const LEN: usize = 44;
    pub const OFF_KIND: usize = 5;
    pub const OFF_FAMILY: usize = 6;
    pub const OFF_SLOT: usize = 8;
    pub const OFF_TOKEN: usize = 12;
    pub const OFF_SEQ: usize = 20;
    pub const OFF_VIP: usize = 28;

    /// The token of probe `seq`: SipHash-2-4 of the sequence (8 bytes, little
    /// endian) under `key`. A PRF, not a counter or a random value per probe: the
    /// program checks a reply with the key alone, which the prober writes once per
    /// (group, active), so no per-probe state crosses from the prober to the
    /// program (and none can be read half written). SipHash rather than anything
    /// cheaper because it is a PRF for exactly this size (an observer of any number
    /// of (sequence, token) pairs learns nothing of the next); about 110
    /// instructions without branches or loops, on replies only.
    #[inline(always)]
    pub fn token(key: [u64; 2], seq: u64) -> u64 {
        let mut v = [
            key[0] ^ 0x736f_6d65_7073_6575,
            key[1] ^ 0x646f_7261_6e64_6f6d,
            key[0] ^ 0x6c79_6765_6e65_7261,
            key[1] ^ 0x7465_6462_7974_6573,
        ];
        // One message word, then the length block (8 bytes, no tail).
        compress(&mut v, seq);
        compress(&mut v, 8u64 << 56);
        v[2] ^= 0xff;
        sip_round(&mut v);
        sip_round(&mut v);
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }

    #[inline(always)]
    fn compress(v: &mut [u64; 4], m: u64) {
        v[3] ^= m;
        sip_round(v);
        sip_round(v);
        v[0] ^= m;
    }

    #[inline(always)]
    fn sip_round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
}

/// Who may reach the election's UDP port: the agent writes one `PEERS` entry per
/// (peer, this node's address of the peer's family) of every elected group; the
/// program drops, before any socket sees it, every datagram to the port whose
/// (source, destination) is not such a pair, and every one from a peer's address
/// whose Ethernet source is not the MAC the agent learned for that peer (from an
/// authenticated advertisement), but one per [`STRANGER_GAP_NS`] so that a peer
/// whose MAC really changed gets an advertisement through and re-teaches it. What is
/// left is rate-limited per pair, echo probes and the rest on separate budgets.
///
/// Echo probes from another MAC are not dropped outright but get a budget of their
/// own, apart from the peer's: a standby sends no advertisements, so one whose MAC
/// changed would otherwise have its probes refused until it took over (a false
/// takeover); a flood of probes spoofed from a peer's address exhausts only the
/// strangers' budget, never the peer's own, and what it gets reflected goes back to
/// the flood's own MAC.
pub mod peers {
    /// Pairs the map holds.
    pub const MAX: u32 = 1024;
    /// Datagrams a budget lets through back to back (it then allows one per gap).
    pub const BURST: u64 = 32;
    /// From a peer's address but another MAC: one datagram per this many ns passes.
    pub const STRANGER_GAP_NS: u64 = 100_000_000;
    /// Probes of one group: a prober sends at most one per ms (the smallest
    /// `echo_interval_ms`); the budget allows twice that.
    pub const PROBE_GAP_NS: u64 = 500_000;
    /// Other datagrams of one group: at most about four kinds per 10 ms (the
    /// smallest advert interval: advert, member advert, hello, an answer); the
    /// budget allows that.
    pub const DATAGRAM_GAP_NS: u64 = 2_500_000;

    /// The key form of an IPv4 address: IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
    #[inline(always)]
    pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]
    }

    /// One budget (GCRA: `tat` is the theoretical arrival time of the next datagram,
    /// in ns): the new `tat` if a datagram arriving `now` is within it, else None. A
    /// gap of 0 is no budget at all.
    #[inline(always)]
    pub fn admit(tat: u64, gap: u64, now: u64) -> Option<u64> {
        let t = if tat > now { tat } else { now };
        if t - now > (BURST - 1) * gap {
            None
        } else {
            Some(t + gap)
        }
    }
}

/// The sizes and keys of the balanced (active/active) groups' maps. The director
/// spreads flows over the members with a Maglev table (`crate::maglev`) of the flow
/// hash (`crate::flow`), keeps established flows on their member (an LRU connection
/// table) and delivers by rewriting the MAC (direct server return). A group has a
/// *balance slot*: its rows in `BALANCE_TABLE`, `BALANCE_MEMBERS`, `BALANCE_CONF`
/// and `BALANCE_STATS`, and the slot in the keys of `BALANCE_PORTS` and
/// `BALANCE_NODES`.
pub mod balance_maps {
    use crate::maglev::TABLE_SIZE;

    /// Balanced groups per node: balance slots (not [`crate::MAX_GROUPS`], every
    /// group's slots in `LEASES`, `QUIET` and `ECHO_SEEN`).
    pub const MAX_BALANCED_GROUPS: u32 = 8;
    /// Members per group (the node itself included): `maglev::MAX_MEMBERS`.
    pub const MAX_MEMBERS: u32 = 64;
    /// `BALANCE_TABLE` words per group: four u16 member indexes per u64 (a BPF array
    /// rounds each value up to 8 bytes), slot `s` in word `s / 4`, bits `16 * (s % 4)`.
    pub const WORDS: u32 = (TABLE_SIZE as u32).div_ceil(4);
    /// Entries of the connection table (LRU: the oldest flows go first).
    pub const MAX_FLOWS: u32 = 65_536;

    /// `BALANCE_PORTS` key: a balanced (protocol, destination port) of a group.
    pub const fn port_key(slot: u32, proto: u8, port: u16) -> u64 {
        ((slot as u64) << 32) | ((proto as u64) << 16) | port as u64
    }

    /// `BALANCE_NODES` entries: every node of every balanced group, by its MAC and
    /// (on another segment) by its tunnel address.
    pub const MAX_NODES: u32 = 2 * MAX_BALANCED_GROUPS * MAX_MEMBERS;

    /// `BALANCE_NODES` key: a node's MAC (as on the wire, in the low 48 bits) in a
    /// group's balance slot.
    #[inline(always)]
    pub const fn node_key(slot: u32, mac: &[u8; 6]) -> u64 {
        ((slot as u64) << 48)
            | ((mac[0] as u64) << 40)
            | ((mac[1] as u64) << 32)
            | ((mac[2] as u64) << 24)
            | ((mac[3] as u64) << 16)
            | ((mac[4] as u64) << 8)
            | mac[5] as u64
    }

    /// `BALANCE_NODES` key of a node on another segment, by its tunnel address
    /// (network order as a native-endian u32): bit 63 set, which no [`node_key`]
    /// has (a slot is below 2^15).
    #[inline(always)]
    pub const fn tunnel_key(slot: u32, addr: u32) -> u64 {
        (1 << 63) | ((slot as u64) << 32) | addr as u64
    }

    const _: () = assert!(MAX_BALANCED_GROUPS < 1 << 15);
    const _: () = assert!(MAX_MEMBERS as usize == crate::maglev::MAX_MEMBERS);
}

/// `BALANCE_NODES` value: a node of a balanced group, under its MAC
/// ([`balance_maps::node_key`]) and, when it is on another segment, under its
/// tunnel address too ([`balance_maps::tunnel_key`]).
///
/// A node on this segment is reached by its MAC; one on another segment (behind a
/// router: anycast over BGP across racks) inside IPIP, the outer header from this
/// node's `TUNNEL_SRC` to `tunnel`, in a frame to `next_hop` (the router's MAC, which
/// the agent resolves from the kernel's route and neighbour tables). Its own XDP
/// program decapsulates it (the kernel needs no ipip module).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BalanceNode {
    /// The node's IPv4 address, network order; all zero: on this segment.
    pub tunnel: [u8; 4],
    /// The MAC of the next hop towards `tunnel`; all zero while unresolved (the
    /// packet is then served where it is rather than sent nowhere).
    pub next_hop: [u8; 6],
    /// The largest IPv4 packet (inner + 20 bytes of outer header) the path takes:
    /// the interface's MTU. A larger one is answered with ICMP "fragmentation
    /// needed" for `mtu - 20`.
    pub mtu: u16,
    /// The node's index in the group (its row in `BALANCE_MEMBERS`).
    pub row: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<BalanceNode>() == 16);

/// `BALANCE_MEMBERS[slot * MAX_MEMBERS + index]`: where the director sends a
/// member's flows. `index` is the member's place in the group's node list sorted by
/// address, the same on every node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BalanceMember {
    pub mac: [u8; 6],
    /// 1 while the member is in the table; a flow pinned to a member that left is
    /// looked up again.
    pub up: u8,
    /// 1 for this node: its flows go to the local stack.
    pub this_node: u8,
}
const _: () = assert!(size_of::<BalanceMember>() == 8);

/// `BALANCE_CONF[slot]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BalanceConf {
    /// 1: every TCP and UDP port is balanced; 0: only those in `BALANCE_PORTS`.
    pub all_ports: u32,
    /// 1 (anycast over BGP): a new flow stays on the member the router handed it to:
    /// the member whose MAC the frame carries (it forwarded the flow's first packet),
    /// or this node when the frame came from outside the group. The router's ECMP is
    /// then the spread, and a member serves its own connections without the
    /// director (`director::holds_connection`). 0: the Maglev table places it.
    pub first_hop: u8,
    /// How many rows of `BALANCE_MEMBERS` the slot uses (the rows `first_hop` scans).
    pub rows: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<BalanceConf>() == 8);

/// `BALANCE_FLOWS` key: an IPv6 flow as the client sends it (IPv4 flows have their
/// own key and table, [`FlowKeyV4`]). Addresses and ports as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// `BALANCE_FLOWS_V4` key: an IPv4 flow as the client sends it (addresses and ports
/// as on the wire). A key of its own because the connection table hashes and
/// compares every byte of it on every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowKeyV4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKeyV4>() == 16);

/// `BALANCE_FLOWS` and `BALANCE_FLOWS_V4` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// The member's index.
    pub member: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<FlowValue>() == 8);

/// `BALANCE_STATS[slot * MAX_MEMBERS + index]`, per CPU: what the director sent to
/// each member (itself included).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BalanceStats {
    pub packets: u64,
    pub bytes: u64,
    /// New flows assigned (connection-table inserts).
    pub flows: u64,
}
const _: () = assert!(size_of::<BalanceStats>() == 24);

impl BalanceStats {
    pub fn add(&mut self, o: &BalanceStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.flows += o.flows;
    }
}

/// `ECHO_SEEN[slot]`: one standby group's probing of its active. The prober writes the
/// whole value when it starts probing an active, before the first probe (`key`,
/// `peer`, `peer_mac`, `family`, and `seq` = the sequence before its first one); the
/// program then raises `seq`, counts `replies` and stamps `last_ns` for each reply
/// that comes from `peer` and `peer_mac`, for a sequence above `seq`, with the token
/// [`echo::token`]`(key, sequence)`. Sequences of a slot only grow, also across
/// actives, so a reply the program judged under the previous value and records
/// after the prober rewrote it is below the new `seq`. Integers in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EchoSeen {
    pub key: [u64; 2],
    /// The active's address (IPv4 in the first 4 bytes), as in the reply's source.
    pub peer: [u8; 16],
    /// The active's MAC; all zero: not checked (a peer reached through a router).
    pub peer_mac: [u8; 6],
    /// 4 or 6; 0: the slot probes nothing.
    pub family: u8,
    pub _pad: u8,
    /// The highest sequence answered.
    pub seq: u64,
    pub replies: u64,
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the reply that last raised `seq`.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<EchoSeen>() == 64);

/// `PEERS` key: a datagram's (source, destination), IPv6 or IPv4-mapped
/// ([`peers::v4_mapped`]), as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PeerKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
const _: () = assert!(size_of::<PeerKey>() == 32);

/// `PEERS` value: what the agent knows of a peer, and the program's budgets for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Peer {
    /// The peer's MAC, once `mac_known` (the agent heard an authenticated
    /// advertisement from it).
    pub mac: [u8; 6],
    /// 1: frames from another MAC are dropped, but a trickle; 0: any MAC passes.
    pub mac_known: u8,
    pub _pad: u8,
    /// Budgets (see [`peers::admit`]), set by the agent: ns between echo probes,
    /// and between other datagrams, sustained.
    pub probe_gap_ns: u32,
    pub datagram_gap_ns: u32,
    /// Written by the program (bpf_ktime_get_coarse_ns()): the budgets' theoretical
    /// arrival times (probes from the peer's MAC, other datagrams, probes from
    /// another MAC), and when a datagram from another MAC last passed.
    pub probe_tat: u64,
    pub datagram_tat: u64,
    pub stranger_probe_tat: u64,
    pub stranger_ns: u64,
}
const _: () = assert!(size_of::<Peer>() == 48);

/// An elastic IP's 1:1 mapping onto a VIP, the value of `EIPS_IN` (key: the EIP)
/// and of `EIPS_OUT` (key: the VIP); keys are IPv4 addresses in network order as a
/// native-endian u32, like `VIPS_V4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EipEntry {
    /// The elastic (public) IPv4 address, network order.
    pub eip: [u8; 4],
    /// The VIP it is bound to, network order.
    pub vip: [u8; 4],
    /// ifindex of the external interface (where the EIP is answered and arrives).
    pub ext_ifindex: u32,
    /// ifindex of the internal interface (the VIP's subnet).
    pub int_ifindex: u32,
    /// MAC of the external interface: ARP answers for the EIP, source of outbound frames.
    pub ext_mac: [u8; 6],
    /// MAC of the internal interface: source of inbound frames towards the VIP's owner.
    pub int_mac: [u8; 6],
    /// Index into `EIP_STATS` (below [`MAX_EIPS`]).
    pub stats_index: u16,
    /// Bits of [`eip_flags`].
    pub flags: u16,
}
const _: () = assert!(size_of::<EipEntry>() == 32);
const _: () = assert!(MAX_EIPS <= u16::MAX as u32);

/// Bits of [`EipEntry::flags`].
pub mod eip_flags {
    /// Learn the VIP's owner from any ARP sender: an `[[eip]]` without `nodes`, as
    /// before the key existed. One forged ARP then moves the EIP's traffic to the
    /// forger. Without the bit the owner is learned only from the nodes in
    /// `EIP_NODES` (see [`crate::EipNodeKey`]), and ARP naming the VIP from anyone
    /// else is refused.
    pub const ANY_SENDER: u16 = 1 << 0;
}

/// Key of `EIP_NODES` (value: 1): a node whose ARP may make it a VIP's owner on a
/// gateway, the VIP's MAC as on the wire. The VIP is kept as an IPv6 address (an
/// IPv4 VIP IPv4-mapped, `::ffff:a.b.c.d`), so that one map and one rule serve the
/// owners of both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EipNodeKey {
    pub vip: [u8; 16],
    pub mac: [u8; 6],
    /// Zero: the kernel hashes the whole key.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<EipNodeKey>() == 24);

impl EipNodeKey {
    /// The key of an IPv4 VIP (network order) and a MAC.
    #[inline(always)]
    pub const fn v4(vip: [u8; 4], mac: [u8; 6]) -> Self {
        EipNodeKey {
            vip: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, vip[0], vip[1], vip[2], vip[3],
            ],
            mac,
            _pad: [0; 2],
        }
    }
}

/// An IPv6 VIP routed (without NAT) by a gateway from its external interface to the
/// VIP's owner on the internal one (`ROUTES6`, key: the VIP; a `[[route6]]`). Its
/// owner is learned from neighbour advertisements of the nodes in `EIP_NODES` (the
/// same rule as an elastic IP's, keyed by the IPv6 VIP itself) into `OWNERS_V6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Route6Entry {
    /// The VIP, network order.
    pub vip: [u8; 16],
    /// ifindex of the external interface (where the VIP's traffic arrives).
    pub ext_ifindex: u32,
    /// ifindex of the internal interface (the VIP's subnet).
    pub int_ifindex: u32,
    /// MAC of the external interface: only frames sent to it are routed.
    pub ext_mac: [u8; 6],
    /// MAC of the internal interface: source of the frames towards the owner.
    pub int_mac: [u8; 6],
    /// Index into `ROUTE6_STATS` (below [`MAX_ROUTES6`]).
    pub stats_index: u16,
    /// Zero (reserved; a route always learns from its nodes only).
    pub _pad: u16,
}
const _: () = assert!(size_of::<Route6Entry>() == 40);

/// `[[route6]]` entries a gateway holds.
pub const MAX_ROUTES6: u32 = 1024;
const _: () = assert!(MAX_ROUTES6 <= u16::MAX as u32);

/// Nodes an elastic IP's owner may be learned from, per EIP.
pub const MAX_EIP_NODES_PER_EIP: u32 = 16;
/// `EIP_NODES` capacity (allocated as entries are added: most gateways hold a few).
pub const MAX_EIP_NODES: u32 = MAX_EIPS * MAX_EIP_NODES_PER_EIP;

/// The node that owns a VIP now, as the data plane learned it from ARP on the
/// internal segment (`OWNERS`, key: the VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Owner {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// bpf_ktime_get_ns() of the last update.
    pub updated_ns: u64,
}
const _: () = assert!(size_of::<Owner>() == 16);

/// Per-EIP counters, one copy per CPU (`EIP_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EipStats {
    /// Packets to the EIP translated and sent to the VIP's owner.
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Packets from the VIP translated and sent out of the external interface.
    pub out_packets: u64,
    pub out_bytes: u64,
    /// Translated, then handed to the kernel to route (no owner/neighbour known yet).
    pub to_kernel: u64,
    /// Owner changes learned from ARP on the internal segment.
    pub owner_changes: u64,
    /// ARP requests for the EIP answered on the external interface.
    pub arp_replies: u64,
    /// ARP on the internal segment naming the VIP, from a sender that is not one of
    /// the EIP's nodes: not learned, dropped. (This slot held an ICMP-error counter
    /// that was never counted: reusing it keeps the pinned map's layout.)
    pub owner_refused: u64,
}
const _: () = assert!(size_of::<EipStats>() == 64);

impl EipStats {
    pub fn add(&mut self, o: &EipStats) {
        self.in_packets += o.in_packets;
        self.in_bytes += o.in_bytes;
        self.out_packets += o.out_packets;
        self.out_bytes += o.out_bytes;
        self.to_kernel += o.to_kernel;
        self.owner_changes += o.owner_changes;
        self.arp_replies += o.arp_replies;
        self.owner_refused += o.owner_refused;
    }
}

/// A routed IPv6 VIP's counters (`ROUTE6_STATS`, one slot per `[[route6]]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route6Stats {
    /// Packets to the VIP from outside sent to its owner (XDP_REDIRECT).
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Packets to the VIP left to the kernel: hop limit 1, no owner or neighbour
    /// known, or the redirect refused.
    pub to_kernel: u64,
    /// Owner changes learned from neighbour advertisements of the VIP's nodes.
    pub owner_changes: u64,
    /// Neighbour advertisements naming the VIP from a non-node: dropped.
    pub owner_refused: u64,
}
const _: () = assert!(size_of::<Route6Stats>() == 40);

impl Route6Stats {
    pub fn add(&mut self, o: &Route6Stats) {
        self.in_packets += o.in_packets;
        self.in_bytes += o.in_bytes;
        self.to_kernel += o.to_kernel;
        self.owner_changes += o.owner_changes;
        self.owner_refused += o.owner_refused;
    }
}

/// Elastic IPs per gateway: `EIPS_IN`, `EIPS_OUT`, `OWNERS`, `EIP_STATS`.
pub const MAX_EIPS: u32 = 1024;

/// VIPs: the capacity of `VIPS_V4`, `VIPS_V6`, `VIP_STATS` and the IPv4 index unless
/// the agent sizes them otherwise at load time (`node.max_vips`).
pub const DEFAULT_MAX_VIPS: u32 = 4096;
/// Groups per node, every mode: a group's index is its slot in `LEASES`, `QUIET` and
/// `ECHO_SEEN` (balanced groups also have a balance slot, below
/// [`balance_maps::MAX_BALANCED_GROUPS`]).
pub const MAX_GROUPS: u32 = 1024;
/// Redirect targets (`REDIRECT_DEVS`).
pub const MAX_REDIRECT_DEVS: u32 = 256;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: repr(C), integers and byte arrays only, no implicit padding.
    unsafe impl aya::Pod for super::VipEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VipStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IndexedEntry {}
    // SAFETY: as above (the 16-byte address fills the room before the 4-aligned entry).
    unsafe impl aya::Pod for super::IndexedEntryV6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EchoSeen {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PeerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Peer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BalanceMember {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BalanceNode {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BalanceConf {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BalanceStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EipEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Owner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EipNodeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EipStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Route6Entry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Route6Stats {}
}

#[cfg(test)]
mod tests {
    use super::csum::{csum_finish, csum_fold};
    use super::rng::XorShift64;

    fn sum(bytes: &[u8]) -> u32 {
        bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
            .sum()
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 4.1 / 3: 00 01 f2 03 f4 f5 f6 f7 sums to 0x2ddf0, folds to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0x2_ddf0);
        assert_eq!(csum_fold(sum(&data)), 0xddf2);
        assert_eq!(csum_finish(sum(&data)), 0x220d);
    }

    #[test]
    fn ipv4_header_vector() {
        // A classic IPv4 header whose checksum is 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(csum_finish(sum(&h)), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        // A header with a correct checksum folds to 0xffff and finishes to 0.
        assert_eq!(csum_fold(sum(&h)), 0xffff);
        assert_eq!(csum_finish(sum(&h)), 0);
    }

    #[test]
    fn fold_edges() {
        assert_eq!(csum_fold(0), 0);
        assert_eq!(csum_fold(0xffff), 0xffff);
        assert_eq!(csum_fold(0x1_0000), 1);
        assert_eq!(csum_fold(0x1_fffe), 0xffff);
        // Worst case: two folds are enough for any u32.
        assert_eq!(csum_fold(u32::MAX), 0xffff);
        assert_eq!(csum_finish(u32::MAX), 0);
    }

    #[test]
    fn an_ipv4_eip_node_is_keyed_by_its_ipv4_mapped_vip() {
        use super::EipNodeKey;
        let mac = [0x02, 0, 0, 0, 0, 0x0b];
        let k = EipNodeKey::v4([10, 0, 0, 50], mac);
        assert_eq!(
            k.vip,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 50]
        );
        assert_eq!((k.mac, k._pad), (mac, [0; 2]));
        assert_ne!(k, EipNodeKey::v4([10, 0, 0, 51], mac));
    }

    #[test]
    fn balance_node_key_is_the_slot_above_the_mac() {
        use super::balance_maps::node_key;
        let mac = [0x02, 0xab, 0, 0, 0xcd, 0x10];
        assert_eq!(node_key(3, &mac), (3 << 48) | 0x02ab_0000_cd10);
        assert_ne!(node_key(3, &mac), node_key(4, &mac));
        assert_eq!(node_key(0, &[0xff; 6]), 0xffff_ffff_ffff);
    }

    #[test]
    fn the_echo_token_is_siphash_2_4() {
        extern crate std;
        // The reference vector of the SipHash paper: key 00..0f, message 00..07.
        let k = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        assert_eq!(
            super::echo::token(k, 0x0706_0504_0302_0100),
            0x93f5_f579_9a93_2462
        );
        // And std's SipHash-2-4 of the sequence's 8 bytes, for a few others.
        #[allow(deprecated)]
        for (k, seq) in [
            ([1u64, 2], 1u64),
            ([u64::MAX, 0], 1 << 63),
            ([7, 9], 123_456),
        ] {
            use std::hash::Hasher as _;
            let mut h = std::hash::SipHasher::new_with_keys(k[0], k[1]);
            h.write(&seq.to_le_bytes());
            assert_eq!(super::echo::token(k, seq), h.finish());
        }
    }

    #[test]
    fn a_budget_allows_its_burst_then_one_per_gap() {
        use super::peers::{admit, BURST};
        let (gap, mut tat, now) = (1_000u64, 0u64, 1_000_000u64);
        for _ in 0..BURST {
            tat = admit(tat, gap, now).expect("within the burst");
        }
        assert_eq!(admit(tat, gap, now), None);
        assert!(admit(tat, gap, now + gap).is_some());
        // No budget (gap 0) never refuses.
        assert!((0..1000).all(|_| admit(0, 0, now).is_some()));
        assert_eq!(
            super::peers::v4_mapped([10, 0, 0, 1])[10..],
            [0xff, 0xff, 10, 0, 0, 1]
        );
    }

    #[test]
    fn xorshift_sequence() {
        // Marsaglia's xorshift64 (13, 7, 17) from seed 1.
        let mut r = XorShift64::new(1);
        assert_eq!(r.next_u64(), 0x4082_2041);
        assert_eq!(r.next_u64(), 0x1000_4106_0c01_1441);
        let mut z = XorShift64::new(0);
        assert_ne!(z.next_u64(), 0);
        assert!((0..1000).all(|_| r.below(7) < 7));
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn an_ipv6_subnets_consecutive_vips_land_in_distinct_slots_while_they_fit() {
        extern crate std;
        use super::index::{bits, fold_v6, slot_v6};
        let a: [u8; 16] = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0x2a, 0, 0, 0, 0, 0, 0, 0, 1,
        ];
        // The fold is as documented: xor of the first three words, plus the last.
        assert_eq!(fold_v6(&a), (0x2001_0db8 ^ 0x2a) + 1);
        let words = |x: &[u8; 16]| {
            [
                u64::from_ne_bytes(x[..8].try_into().unwrap()),
                u64::from_ne_bytes(x[8..].try_into().unwrap()),
            ]
        };
        assert_eq!(super::index::fold_v6_words(words(&a)), fold_v6(&a));
        // As for IPv4 (the same hash of the same numbers), not at every capacity:
        // with 65,536 VIPs of capacity two VIPs 50,549 apart share a slot (and the
        // hash map answers for them).
        for max in [16u32, 64, 1024, 4096, 32_768, 1 << 20] {
            let shift = 32 - bits(max);
            let mut seen = std::vec![false; 1 << bits(max)];
            for i in 0..max {
                let mut x = a;
                x[12..].copy_from_slice(&(1 + i).to_be_bytes());
                let s = slot_v6(fold_v6(&x), shift) as usize;
                assert!(!seen[s], "{max} VIPs: the {i}th shares slot {s}");
                seen[s] = true;
            }
        }
        // An address whose fold differs from a VIP's is not that VIP: changing any
        // one word changes the fold.
        for byte in 0..16 {
            let mut x = a;
            x[byte] ^= 0x10;
            assert_ne!(fold_v6(&x), fold_v6(&a), "byte {byte}");
        }
    }
}
