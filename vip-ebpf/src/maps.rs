//! The program's maps, and its reads of them.
//!
//! The agent writes every map (the entries, the index, the leases, the balance rows,
//! the peers...). The program writes some of them too, each in one place: its
//! counters (`GLOBAL_STATS`, `VIP_STATS`, `EIP_STATS`, `BALANCE_STATS`, per CPU),
//! `OWNERS` (the owners it learns, `eip::learn`), `ECHO_SEEN` (the replies it
//! records, `echo::record`), the budgets in `PEERS` (`peers::admit`), the director's
//! connection tables (`BALANCE_FLOWS`, `BALANCE_FLOWS_V4`, `director`), and `LEASES`
//! (only `vip_lease`, which extends a lease that still runs).

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_boot_ns},
    macros::map,
    maps::{Array, CpuMap, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use vip_common::{
    action,
    balance_maps::{self, MAX_BALANCED_GROUPS, MAX_MEMBERS},
    flags, global, index, peers, BalanceConf, BalanceMember, BalanceNode, BalanceStats, EchoSeen,
    EipEntry, EipStats, FlowKey, FlowKeyV4, FlowValue, IndexedEntry, IndexedEntryV6, Owner, Peer,
    PeerKey, Settings, VipEntry, VipStats, DEFAULT_MAX_VIPS, MAX_EIPS, MAX_GROUPS,
    MAX_REDIRECT_DEVS,
};

/// IPv4 VIP (4 bytes, network order, as a native-endian u32) -> entry.
#[map]
pub static VIPS_V4: HashMap<u32, VipEntry> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// The IPv4 VIP index's slots and entries (see `vip_common::index`); the agent
/// sizes them at load time. The slots are mmapped by the agent (BPF_F_MMAPABLE) so
/// that it stores each one atomically.
#[map]
pub static VIP_INDEX_V4: Array<u64> = Array::with_max_entries(1 << 6, BPF_F_MMAPABLE);
#[map]
pub static VIP_ENTRIES_V4: Array<IndexedEntry> =
    Array::with_max_entries(index::entries(DEFAULT_MAX_VIPS), 0);

const BPF_F_MMAPABLE: u32 = 1 << 10;

/// IPv6 VIP (16 bytes, network order) -> entry.
#[map]
pub static VIPS_V6: HashMap<[u8; 16], VipEntry> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// The IPv6 VIP index's slots and entries (`vip_common::index`, `IndexedEntryV6`):
/// as the IPv4 index's, with as many slots (the same `VIP_INDEX_SHIFT`).
#[map]
pub static VIP_INDEX_V6: Array<u64> = Array::with_max_entries(1 << 6, BPF_F_MMAPABLE);
#[map]
pub static VIP_ENTRIES_V6: Array<IndexedEntryV6> =
    Array::with_max_entries(index::entries(DEFAULT_MAX_VIPS), 0);

/// Per-VIP counters, indexed by `VipEntry::stats_index`.
#[map]
pub static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// Program-wide counters, indexed by `vip_common::global`.
#[map]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(global::COUNT, 0);

/// Per-group lease (`vip_common::lease`): a `bpf_ktime_get_boot_ns()` deadline after
/// which leased entries are inert; 0 is no lease. A u64 array value is written
/// atomically, so a renewal never tears. Written by the agent (a grant, a revocation)
/// and by `vip_lease` (an extension, only while the lease still runs).
#[map]
pub static LEASES: Array<u64> = Array::with_max_entries(MAX_GROUPS, 0);

/// Per group: non-zero while a planned handover has begun (the agent's `Quiesce`):
/// its entries answer no ARP/NS and no probe, but still steer what arrives, so the
/// successor can take over without both answering and without a gap in the traffic.
#[map]
pub static QUIET: Array<u32> = Array::with_max_entries(MAX_GROUPS, 0);

/// Redirect targets, keyed by ifindex.
#[map]
pub static REDIRECT_DEVS: DevMapHash = DevMapHash::with_max_entries(MAX_REDIRECT_DEVS, 0);

/// CPU -> a queue whose kernel thread builds each frame's skb anew (`pass_readdressed`).
/// Empty unless the agent fills it (for a group's virtual MAC on a veth in native
/// mode); sized by the agent to the host's CPUs.
#[map]
pub static READDRESS: CpuMap = CpuMap::with_max_entries(1, 0);

/// Passes a frame whose destination we rewrote to the node's MAC (a virtual MAC's,
/// `flags::VIRTUAL_MAC`). A driver builds the skb after the program, from the frame
/// as it is now, so XDP_PASS is enough; but a veth in native mode hands the program
/// an skb it has already classified as another host's (PACKET_OTHERHOST), which the
/// IP stack drops whatever the program rewrote. There the agent fills `READDRESS`,
/// and the frame goes through this CPU's queue, whose skb is classified anew.
#[inline(always)]
pub fn pass_readdressed() -> u32 {
    // SAFETY: a plain helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // On a missing entry the helper returns XDP_PASS (the flags' low bits).
    READDRESS
        .redirect(cpu, vip_common::xdp::XDP_PASS as u64)
        .unwrap_or(vip_common::xdp::XDP_PASS)
}

/// Elastic IP -> mapping (inbound).
#[map]
pub static EIPS_IN: HashMap<u32, EipEntry> = HashMap::with_max_entries(MAX_EIPS, 0);

/// VIP -> mapping (outbound).
#[map]
pub static EIPS_OUT: HashMap<u32, EipEntry> = HashMap::with_max_entries(MAX_EIPS, 0);

/// VIP -> its current owner, learned from ARP on the internal segment.
#[map]
pub static OWNERS: HashMap<u32, Owner> = HashMap::with_max_entries(MAX_EIPS, 0);

/// Per-EIP counters.
#[map]
pub static EIP_STATS: PerCpuArray<EipStats> = PerCpuArray::with_max_entries(MAX_EIPS, 0);

/// The nodes each EIP's owner may be learned from (see `eip::claim`). Allocated as the
/// agent adds them, not up front: most nodes have no elastic IP.
#[map]
pub static EIP_NODES: HashMap<vip_common::EipNodeKey, u32> =
    HashMap::with_max_entries(vip_common::MAX_EIP_NODES, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1 << 0;

/// IPv6 VIP -> its route through this gateway (`route6`).
#[map]
pub static ROUTES6: HashMap<[u8; 16], vip_common::Route6Entry> =
    HashMap::with_max_entries(vip_common::MAX_ROUTES6, 0);

/// IPv6 VIP -> its current owner, learned from neighbour advertisements of its nodes
/// on the internal segment (`route6::advert`).
#[map]
pub static OWNERS_V6: HashMap<[u8; 16], Owner> =
    HashMap::with_max_entries(vip_common::MAX_ROUTES6, 0);

/// Per-route counters.
#[map]
pub static ROUTE6_STATS: PerCpuArray<vip_common::Route6Stats> =
    PerCpuArray::with_max_entries(vip_common::MAX_ROUTES6, 0);

/// The standby's view of its echo probes, indexed by its group's slot (see
/// `vip_common::echo`).
#[map]
pub static ECHO_SEEN: Array<EchoSeen> = Array::with_max_entries(MAX_GROUPS, 0);

/// (peer, this node) -> what may reach the election's port from there (see
/// `vip_common::peers` and `crate::peers`). The agent writes a pair's entry when it
/// admits the pair (at start, on a reload) and when it learns the peer's MAC (the
/// budgets start afresh then); the program updates the budgets in place (a racing
/// update by another CPU can only let a datagram more through).
#[map]
pub static PEERS: HashMap<PeerKey, Peer> = HashMap::with_max_entries(peers::MAX, 0);

/// Balanced groups' Maglev tables, `balance_maps::WORDS` per balance slot.
#[map]
pub static BALANCE_TABLE: Array<u64> =
    Array::with_max_entries(MAX_BALANCED_GROUPS * balance_maps::WORDS, 0);

/// Balanced groups' members, `MAX_MEMBERS` per balance slot.
#[map]
pub static BALANCE_MEMBERS: Array<BalanceMember> =
    Array::with_max_entries(MAX_BALANCED_GROUPS * MAX_MEMBERS, 0);

/// Per balance slot: which ports the group balances.
#[map]
pub static BALANCE_CONF: Array<BalanceConf> = Array::with_max_entries(MAX_BALANCED_GROUPS, 0);

/// `balance_maps::port_key` -> 1 for the balanced ports of groups that list them.
#[map]
pub static BALANCE_PORTS: HashMap<u64, u32> = HashMap::with_max_entries(256, 0);

/// The director's connection tables (IPv6, IPv4): a flow stays on its member while
/// the Maglev table changes under it. Per-CPU LRU lists (as Katran's): a new flow
/// takes no lock shared with the other CPUs.
#[map]
pub static BALANCE_FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(balance_maps::MAX_FLOWS, BPF_F_NO_COMMON_LRU);
#[map]
pub static BALANCE_FLOWS_V4: LruHashMap<FlowKeyV4, FlowValue> =
    LruHashMap::with_max_entries(balance_maps::MAX_FLOWS, BPF_F_NO_COMMON_LRU);

const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Per (balance slot, member), per CPU: what the director sent to each member.
#[map]
pub static BALANCE_STATS: PerCpuArray<BalanceStats> =
    PerCpuArray::with_max_entries(MAX_BALANCED_GROUPS * MAX_MEMBERS, 0);

/// `balance_maps::node_key` -> `BalanceNode` for every node of every balanced group
/// (the agent's membership: each node heard, itself included): what a member
/// delivers locally. A node on another segment is there under
/// `balance_maps::tunnel_key` too: what may come out of the tunnel, and its row.
#[map]
pub static BALANCE_NODES: HashMap<u64, BalanceNode> =
    HashMap::with_max_entries(balance_maps::MAX_NODES, 0);

/// Program-wide settings (`vip_common::Settings`), written by the loader into
/// read-only data before the program is verified: the verifier then knows them as
/// constants and drops the code they turn off (a node without elastic IPs, without
/// a balanced group or without an election port pays nothing for that code).
#[unsafe(no_mangle)]
static VIP_IFINDEX: u32 = 0;
#[unsafe(no_mangle)]
static EIP_ENABLED: u32 = 0;
#[unsafe(no_mangle)]
static ECHO_PORT: u32 = 0;
#[unsafe(no_mangle)]
static BALANCE_ENABLED: u32 = 0;
/// `Settings::tunnel_src`.
#[unsafe(no_mangle)]
static TUNNEL_SRC: u32 = 0;
/// 32 - log2 of the slot count of each index, IPv4's and IPv6's
/// (`vip_common::index::bits`).
#[unsafe(no_mangle)]
static VIP_INDEX_SHIFT: u32 = 32 - 6;
/// Random per load; a lease request must carry it (`vip_common::lease::Request::key`).
#[unsafe(no_mangle)]
static LEASE_KEY: u64 = 0;

#[inline(always)]
pub fn lease_key() -> u64 {
    // SAFETY: a read-only global the loader patches; volatile keeps the load.
    unsafe { core::ptr::read_volatile(&LEASE_KEY) }
}

/// The entry of an IPv4 VIP (`dst`: network order as a native-endian u32). The
/// index answers most lookups from two array reads, which the verifier inlines; a
/// slot that several VIPs share, or any doubt, falls back to the hash map.
#[inline(always)]
pub fn vip_v4(dst: u32) -> Option<&'static VipEntry> {
    // SAFETY: a read-only global the loader patches; volatile keeps the load.
    let shift = unsafe { core::ptr::read_volatile(&VIP_INDEX_SHIFT) };
    if let Some(slot) = VIP_INDEX_V4.get(index::slot(dst, shift)) {
        // One 8-byte load: the agent stores slots whole.
        // SAFETY: a valid pointer into the array.
        let (addr, reference) = index::unpack(unsafe { core::ptr::read_volatile(slot) });
        if reference == index::EMPTY && addr == 0 {
            return None;
        }
        if reference != index::COLLIDED && reference != index::EMPTY {
            if addr != dst {
                // The slot is another VIP's alone: no VIP hashes to it but that one.
                return None;
            }
            if let Some(e) = VIP_ENTRIES_V4.get(reference - 1) {
                if e.addr == dst {
                    return Some(&e.entry);
                }
            }
        }
    }
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    unsafe { VIPS_V4.get(dst) }
}

/// The entry of an IPv6 VIP (16 bytes, network order, **in the packet**), read as
/// `vip_v4` reads an IPv4 one: the slot of the address's fold, then the entry,
/// whose address is compared whole (two u64 compares); a slot several VIPs share, or
/// any doubt, falls back to `VIPS_V6` (keyed by the packet's bytes, as the helper
/// allows).
#[inline(always)]
pub fn vip_v6(dst: &[u8; 16]) -> Option<&'static VipEntry> {
    let p = dst.as_ptr();
    // SAFETY: 16 bytes of the packet, within the bounds its parser checked.
    let words = unsafe { [packet_u64(p), packet_u64(p.add(8))] };
    let fold = index::fold_v6_words(words);
    // SAFETY: a read-only global the loader patches; volatile keeps the load.
    let shift = unsafe { core::ptr::read_volatile(&VIP_INDEX_SHIFT) };
    if let Some(slot) = VIP_INDEX_V6.get(index::slot_v6(fold, shift)) {
        // One 8-byte load: the agent stores slots whole.
        // SAFETY: a valid pointer into the array.
        let (hint, reference) = index::unpack(unsafe { core::ptr::read_volatile(slot) });
        if reference == index::EMPTY && hint == 0 {
            return None;
        }
        if reference != index::COLLIDED && reference != index::EMPTY {
            if hint != fold {
                // The slot is another VIP's alone, whose fold differs.
                return None;
            }
            if let Some(e) = VIP_ENTRIES_V6.get(reference - 1) {
                let a = e.addr.as_ptr() as *const u64;
                // SAFETY: the entry is 8-aligned (`IndexedEntryV6`), its address 16 bytes.
                if unsafe { *a == words[0] && *a.add(1) == words[1] } {
                    return Some(&e.entry);
                }
            }
        }
    }
    // SAFETY: hash-map values are replaced under RCU, never written in place.
    unsafe { VIPS_V6.get(dst) }
}

/// Writes `v` (native-endian) to the `N` bytes at `p` of the packet in one store (8, 4
/// or 2): LLVM turns an unaligned write into byte stores, and the verifier takes an
/// unaligned store to the packet.
///
/// # Safety
///
/// `p..p + N` is inside the packet, within the bounds the verifier knows.
#[inline(always)]
pub unsafe fn packet_store<const N: usize>(p: *mut u8, v: u64) {
    // SAFETY: a plain store to memory the caller vouches for.
    unsafe {
        match N {
            8 => core::arch::asm!(
                "*(u64 *)({p} + 0) = {v}",
                p = in(reg) p,
                v = in(reg) v,
                options(nostack, preserves_flags)
            ),
            4 => core::arch::asm!(
                "*(u32 *)({p} + 0) = {v}",
                p = in(reg) p,
                v = in(reg) v,
                options(nostack, preserves_flags)
            ),
            _ => core::arch::asm!(
                "*(u16 *)({p} + 0) = {v}",
                p = in(reg) p,
                v = in(reg) v,
                options(nostack, preserves_flags)
            ),
        }
    }
}

/// The 8 bytes at `p` as a native-endian u64, in one load. LLVM turns an unaligned
/// read into 8 byte loads and shifts (a packet's IPv6 address is only 2-aligned),
/// and a copy to the stack first costs as much plus a stalled reload; the verifier
/// takes an unaligned load from the packet (not from the stack, which it checks
/// strictly: hence packet addresses only).
///
/// # Safety
///
/// `p..p + 8` is inside the packet, within the bounds the verifier knows.
#[inline(always)]
pub unsafe fn packet_u64(p: *const u8) -> u64 {
    let v: u64;
    // SAFETY: a plain load of memory the caller vouches for; no other effect.
    unsafe {
        core::arch::asm!(
            "{v} = *(u64 *)({p} + 0)",
            p = in(reg) p,
            v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags)
        );
    }
    v
}

/// One setting alone: one load where [`settings`] makes five (volatile loads all
/// stay, used or not), on the paths that test one per packet.
#[inline(always)]
pub fn tunnel_src() -> u32 {
    // SAFETY: a read-only global the loader patches; volatile keeps the load.
    unsafe { core::ptr::read_volatile(&TUNNEL_SRC) }
}

/// See [`tunnel_src`].
#[inline(always)]
pub fn balance_enabled() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&BALANCE_ENABLED) != 0 }
}

/// See [`tunnel_src`].
#[inline(always)]
pub fn echo_port() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&ECHO_PORT) }
}

#[inline(always)]
pub fn settings() -> Settings {
    // SAFETY: reads of read-only globals; volatile so the compiler keeps the loads the
    // loader patches.
    unsafe {
        Settings {
            vip_ifindex: core::ptr::read_volatile(&VIP_IFINDEX),
            eip_enabled: core::ptr::read_volatile(&EIP_ENABLED),
            echo_port: core::ptr::read_volatile(&ECHO_PORT),
            balance_enabled: core::ptr::read_volatile(&BALANCE_ENABLED),
            tunnel_src: core::ptr::read_volatile(&TUNNEL_SRC),
        }
    }
}

#[inline(always)]
pub fn count_global(index: u32) {
    if let Some(counter) = GLOBAL_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, nobody else writes it concurrently.
        unsafe { *counter += 1 };
    }
}

/// The VIP's counters on this CPU.
///
/// # Safety
///
/// The caller holds no other reference to the same slot while it uses this one: a
/// packet takes its VIP's stats once.
#[inline(always)]
pub unsafe fn stats(entry: &VipEntry) -> Option<&'static mut VipStats> {
    match VIP_STATS.get_ptr_mut(entry.stats_index) {
        // SAFETY: this CPU's slot, which no other CPU writes; the caller holds no other
        // reference to it.
        Some(p) => Some(unsafe { &mut *p }),
        None => {
            count_global(global::BAD_STATS_INDEX);
            None
        }
    }
}

/// True when the entry is gated by a lease that has run out.
#[inline(always)]
pub fn lease_expired(entry: &VipEntry) -> bool {
    if entry.flags & flags::LEASED == 0 {
        return false;
    }
    match LEASES.get(entry.group_index) {
        // SAFETY: a helper without side effects.
        Some(deadline) => (unsafe { bpf_ktime_get_boot_ns() }) >= *deadline,
        None => true,
    }
}

/// True when this node answers ARP/NS for the entry now.
#[inline(always)]
pub fn answers(entry: &VipEntry) -> bool {
    (entry.action == action::LOCAL || entry.action == action::REDIRECT)
        && !lease_expired(entry)
        && QUIET.get(entry.group_index).is_none_or(|q| *q == 0)
}
