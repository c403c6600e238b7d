//! The VIP indexes the program reads before the hash maps, IPv4's in front of
//! `VIPS_V4` and IPv6's in front of `VIPS_V6` (layout and read rules:
//! `vip_common::index`), one [`Index`] each, over the family's [`Key`]. The agent is
//! their only writer: it knows which VIPs share a slot and which entries are free,
//! so the program only ever reads.
//!
//! Order of writes, so that the program sees the old state or the new one and never
//! a mix: an entry goes to a free index first (one batched syscall), then its slot
//! is stored whole (an atomic 8-byte store into the mmapped array). Freed indexes go
//! to the back of the queue. The hash map is written before the index on an update
//! and after it on a removal (`super::vips` does so, and its tests pin it), so a
//! lookup that falls back to it agrees.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Debug,
    hash::{BuildHasherDefault, Hash, Hasher},
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use vip_common::{index, IndexedEntry, IndexedEntryV6, VipEntry};

/// A family's VIP as its index keys it: IPv4's u32 (network order as a native-endian
/// u32, the `VIPS_V4` key) or IPv6's 16 bytes (network order, the `VIPS_V6` key).
pub trait Key: Copy + Eq + Hash + Debug {
    /// The index's entry: the VIP's entry with its address.
    type Indexed: Copy + aya::Pod;
    /// The slot the program reads for this address.
    fn slot(&self, shift: u32) -> u32;
    /// The low 32 bits of the slot when the VIP has it alone: the IPv4 address, the
    /// IPv6 address's fold (see `vip_common::index`).
    fn hint(&self) -> u32;
    fn indexed(&self, entry: VipEntry) -> Self::Indexed;
}

impl Key for u32 {
    type Indexed = IndexedEntry;
    fn slot(&self, shift: u32) -> u32 {
        index::slot(*self, shift)
    }
    fn hint(&self) -> u32 {
        *self
    }
    fn indexed(&self, entry: VipEntry) -> IndexedEntry {
        IndexedEntry {
            addr: *self,
            _pad: 0,
            entry,
        }
    }
}

impl Key for [u8; 16] {
    type Indexed = IndexedEntryV6;
    fn slot(&self, shift: u32) -> u32 {
        index::slot_v6(index::fold_v6(self), shift)
    }
    fn hint(&self) -> u32 {
        index::fold_v6(self)
    }
    fn indexed(&self, entry: VipEntry) -> IndexedEntryV6 {
        IndexedEntryV6 { addr: *self, entry }
    }
}

/// Where an index lives: the kernel's arrays, or plain memory in unit tests.
pub trait Store<K: Key> {
    fn write_entries(&mut self, items: &[(u32, K::Indexed)]) -> std::io::Result<()>;
    fn write_slot(&mut self, slot: u32, value: u64);
}

/// The keys are addresses and slots the agent itself chose, not a peer's input: a
/// multiplicative hash (rustc-hash's) instead of SipHash. An IPv6 key is hashed as
/// its four words.
#[derive(Default)]
struct U32Hasher(u64);

impl Hasher for U32Hasher {
    fn finish(&self) -> u64 {
        // The product's entropy is in its high bits; the table indexes by the low.
        self.0.rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(4);
        for w in &mut words {
            self.write_u32(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
        for b in words.remainder() {
            self.write_u32(*b as u32);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0.rotate_left(5) ^ v as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type Fast<K, V> = HashMap<K, V, BuildHasherDefault<U32Hasher>>;

/// The VIPs that hash to one slot: almost always one.
#[derive(Debug)]
enum Occupants<K> {
    One(K),
    Many(Vec<K>),
}

/// Which slot and entry every indexed VIP of a family has (IPv4 by default).
#[derive(Debug)]
pub struct Index<K: Key = u32> {
    shift: u32,
    free: VecDeque<u32>,
    /// VIP -> its entry's index.
    at: Fast<K, u32>,
    /// Slot -> the VIPs that hash to it.
    by_slot: Fast<u32, Occupants<K>>,
}

impl Index {
    /// The slot count of each family's index for `max_vips`.
    pub fn slots(max_vips: u32) -> u32 {
        1 << index::bits(max_vips)
    }
}

impl<K: Key> Index<K> {
    pub fn new(max_vips: u32) -> Self {
        Index {
            shift: 32 - index::bits(max_vips),
            free: (0..index::entries(max_vips)).collect(),
            at: Fast::default(),
            by_slot: Fast::default(),
        }
    }

    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// Indexes (or re-indexes) VIPs with their entries, which the hash map already
    /// holds.
    /// A batch larger than the free entries goes in chunks: each chunk's flips free
    /// the entries the next one takes.
    pub fn set(
        &mut self,
        store: &mut impl Store<K>,
        items: &[(K, VipEntry)],
    ) -> std::io::Result<()> {
        let mut rest = items;
        while !rest.is_empty() {
            let n = rest.len().min(self.free.len());
            if n == 0 {
                return Err(std::io::Error::other("the VIP index has no free entry"));
            }
            let (chunk, more) = rest.split_at(n);
            self.set_chunk(store, chunk)?;
            rest = more;
        }
        Ok(())
    }

    fn set_chunk(
        &mut self,
        store: &mut impl Store<K>,
        items: &[(K, VipEntry)],
    ) -> std::io::Result<()> {
        let batch: Vec<(u32, K::Indexed)> = items
            .iter()
            .zip(self.free.iter())
            .map(|((addr, entry), &i)| (i, addr.indexed(*entry)))
            .collect();
        if let Err(e) = store.write_entries(&batch) {
            // The hash map has them already: their slots send the program there (a VIP
            // with no entry reads "collided") until they are set again.
            for (addr, _) in items {
                if let Some(old) = self.at.remove(addr) {
                    self.free.push_back(old);
                }
                let slot = addr.slot(self.shift);
                self.by_slot
                    .entry(slot)
                    .and_modify(|o| o.add(*addr))
                    .or_insert(Occupants::One(*addr));
                store.write_slot(slot, self.slot_value(slot));
            }
            return Err(e);
        }
        for ((i, _), (addr, _)) in batch.iter().zip(items) {
            let (i, addr) = (*i, *addr);
            self.free.pop_front();
            if let Some(old) = self.at.insert(addr, i) {
                self.free.push_back(old);
            }
            let slot = addr.slot(self.shift);
            let o = self
                .by_slot
                .entry(slot)
                .and_modify(|o| o.add(addr))
                .or_insert(Occupants::One(addr));
            // Its entry is `i`: no lookup in `at`.
            store.write_slot(slot, o.value(|_| Some(i)));
        }
        Ok(())
    }

    /// Points the VIPs' slots at the hash map for a while (they read "collided"), so
    /// that a large batch takes effect as soon as the hash map has it: the entries
    /// and slots written next, by [`Index::set`], cost about as much again.
    pub fn bypass(&self, store: &mut impl Store<K>, addrs: &[K]) {
        for a in addrs {
            store.write_slot(a.slot(self.shift), index::pack(0, index::COLLIDED));
        }
    }

    /// Takes a VIP out of the index (before the hash map forgets it).
    pub fn remove(&mut self, store: &mut impl Store<K>, addr: K) {
        let Some(i) = self.at.remove(&addr) else {
            return;
        };
        let slot = addr.slot(self.shift);
        if let Some(o) = self.by_slot.get_mut(&slot) {
            if o.remove(addr) {
                self.by_slot.remove(&slot);
            }
        }
        store.write_slot(slot, self.slot_value(slot));
        self.free.push_back(i);
    }

    /// What the slot must hold now.
    pub fn slot_value(&self, slot: u32) -> u64 {
        self.by_slot
            .get(&slot)
            .map_or(index::pack(0, index::EMPTY), |o| {
                o.value(|a| self.at.get(&a).copied())
            })
    }

    /// VIPs that share their slot with another (these take the hash map's path).
    pub fn collided(&self) -> usize {
        self.by_slot
            .values()
            .map(|o| match o {
                Occupants::One(_) => 0,
                Occupants::Many(v) => v.len(),
            })
            .sum()
    }
}

impl<K: Key> Occupants<K> {
    /// The slot's word, given where a VIP's entry is (None: it has none, and the
    /// program must read the hash map).
    fn value(&self, entry_of: impl FnOnce(K) -> Option<u32>) -> u64 {
        match self {
            Occupants::One(one) => match entry_of(*one) {
                Some(i) => index::pack(one.hint(), i + 1),
                None => index::pack(0, index::COLLIDED),
            },
            Occupants::Many(_) => index::pack(0, index::COLLIDED),
        }
    }

    /// Adds a VIP (present already: nothing changes).
    fn add(&mut self, addr: K) {
        match self {
            Occupants::One(a) if *a == addr => {}
            Occupants::One(a) => *self = Occupants::Many(vec![*a, addr]),
            Occupants::Many(v) => {
                if !v.contains(&addr) {
                    v.push(addr);
                }
            }
        }
    }

    /// Removes a VIP; true when none is left.
    fn remove(&mut self, addr: K) -> bool {
        match self {
            Occupants::One(a) => *a == addr,
            Occupants::Many(v) => {
                v.retain(|a| *a != addr);
                match v.as_slice() {
                    [] => return true,
                    [one] => *self = Occupants::One(*one),
                    _ => {}
                }
                false
            }
        }
    }
}

/// The kernel side: the slot array mmapped (stores are atomic), the entries written
/// with BPF_MAP_UPDATE_BATCH.
pub struct KernelStore {
    slots: *mut AtomicU64,
    len: u32,
    map_len: usize,
    entries_fd: i32,
}

// SAFETY: the mapping is owned by this struct and only touched through &mut self.
unsafe impl Send for KernelStore {}
// SAFETY: as above; shared references only read `len`.
unsafe impl Sync for KernelStore {}

impl KernelStore {
    /// Maps the slot array (`len` u64 slots, created BPF_F_MMAPABLE). `entries` must
    /// outlive the store (the data plane owns both).
    pub fn new(slots: BorrowedFd<'_>, len: u32, entries: BorrowedFd<'_>) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let map_len = (len as usize * 8).div_ceil(page) * page;
        // SAFETY: a shared mapping of a BPF array fd; the kernel checks size and flags.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                slots.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(KernelStore {
            slots: p as *mut AtomicU64,
            len,
            map_len,
            entries_fd: entries.as_raw_fd(),
        })
    }
}

impl<K: Key> Store<K> for KernelStore {
    fn write_entries(&mut self, items: &[(u32, K::Indexed)]) -> std::io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(items.len() * 4);
        let mut values = Vec::with_capacity(items.len() * size_of::<K::Indexed>());
        for (i, e) in items {
            keys.extend_from_slice(&i.to_ne_bytes());
            values.extend_from_slice(super::sys::bytes_of(e));
        }
        // SAFETY: the data plane keeps the entries map open while the store exists.
        let fd = unsafe { BorrowedFd::borrow_raw(self.entries_fd) };
        super::sys::update_batch(fd, &keys, &values, items.len() as u32)
    }

    fn write_slot(&mut self, slot: u32, value: u64) {
        if slot < self.len {
            // SAFETY: in bounds of the mapping; 8-byte aligned (page-aligned base).
            unsafe { (*self.slots.add(slot as usize)).store(value, Ordering::Release) };
        }
    }
}

impl Drop for KernelStore {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.slots as *mut libc::c_void, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Mem {
        slots: HashMap<u32, u64>,
        entries: HashMap<u32, IndexedEntry>,
    }

    impl Store<u32> for Mem {
        fn write_entries(&mut self, items: &[(u32, IndexedEntry)]) -> std::io::Result<()> {
            self.entries.extend(items.iter().copied());
            Ok(())
        }
        fn write_slot(&mut self, slot: u32, value: u64) {
            self.slots.insert(slot, value);
        }
    }

    /// The program's read, as vip-ebpf's `maps::vip_v4` does it: Some(Some(entry))
    /// from the index, Some(None) a definite miss, None: ask the hash map.
    fn read(m: &Mem, shift: u32, dst: u32) -> Option<Option<VipEntry>> {
        let (addr, r) = index::unpack(*m.slots.get(&index::slot(dst, shift)).unwrap_or(&0));
        if r == index::EMPTY && addr == 0 {
            return Some(None);
        }
        if r != index::COLLIDED && r != index::EMPTY {
            if addr != dst {
                return Some(None);
            }
            if let Some(e) = m.entries.get(&(r - 1)) {
                if e.addr == dst {
                    return Some(Some(e.entry));
                }
            }
        }
        None
    }

    fn entry(action: u32) -> VipEntry {
        VipEntry {
            action,
            ..Default::default()
        }
    }

    #[test]
    fn lookups_agree_with_the_table_through_updates_collisions_and_removals() {
        let mut ix = Index::new(16);
        let mut m = Mem::default();
        let shift = ix.shift();
        // Addresses that share a slot, and some that do not.
        let base = u32::from_ne_bytes([10, 0, 0, 0]);
        let mut same = Vec::new();
        let first = index::slot(base + (1 << 24), shift);
        for last in 1..=255u32 {
            let a = u32::from_ne_bytes([10, 0, 1, last as u8]);
            if index::slot(a, shift) == first && same.len() < 2 {
                same.push(a);
            }
        }
        let mut truth: HashMap<u32, VipEntry> = HashMap::new();
        let check = |ix: &Index, m: &Mem, truth: &HashMap<u32, VipEntry>| {
            for last in 0..=255u8 {
                for third in 0..2u8 {
                    let a = u32::from_ne_bytes([10, 0, third, last]);
                    // None: the hash map answers, and it holds the truth.
                    if let Some(got) = read(m, ix.shift(), a) {
                        assert_eq!(got, truth.get(&a).copied(), "{a:#x}");
                    }
                }
            }
        };
        for (n, a) in (1..=8u8)
            .map(|l| u32::from_ne_bytes([10, 0, 0, l]))
            .enumerate()
        {
            ix.set(&mut m, &[(a, entry(n as u32))]).unwrap();
            truth.insert(a, entry(n as u32));
            check(&ix, &m, &truth);
        }
        for a in &same {
            ix.set(&mut m, &[(*a, entry(7))]).unwrap();
            truth.insert(*a, entry(7));
            check(&ix, &m, &truth);
        }
        // Replacing an entry moves it to a fresh index; the old one is reused last.
        let a = u32::from_ne_bytes([10, 0, 0, 3]);
        let before = ix.at[&a];
        ix.set(&mut m, &[(a, entry(99))]).unwrap();
        truth.insert(a, entry(99));
        assert_ne!(ix.at[&a], before);
        assert_eq!(ix.free.back(), Some(&before));
        check(&ix, &m, &truth);
        for a in same.iter().chain([a].iter()) {
            ix.remove(&mut m, *a);
            truth.remove(a);
            check(&ix, &m, &truth);
        }
        assert_eq!(ix.collided(), 0);
    }

    /// A store whose entry writes fail (the syscall refused).
    #[derive(Default)]
    struct Failing(Mem);

    impl Store<u32> for Failing {
        fn write_entries(&mut self, _: &[(u32, IndexedEntry)]) -> std::io::Result<()> {
            Err(std::io::Error::other("refused"))
        }
        fn write_slot(&mut self, slot: u32, value: u64) {
            self.0.write_slot(slot, value);
        }
    }

    #[test]
    fn a_failed_entry_write_sends_the_program_to_the_hash_map() {
        let mut ix = Index::new(16);
        let mut m = Mem::default();
        let a = u32::from_ne_bytes([10, 0, 0, 1]);
        ix.set(&mut m, &[(a, entry(1))]).unwrap();
        // The update fails: the old entry must not stay visible, nor may the VIP
        // read as absent; the hash map (which has the new entry) answers.
        let mut f = Failing(m);
        assert!(ix.set(&mut f, &[(a, entry(2))]).is_err());
        assert_eq!(read(&f.0, ix.shift(), a), None);
        // A new VIP whose write fails is not "absent" either, nor made so by a
        // neighbour set later in its slot.
        let b = u32::from_ne_bytes([10, 0, 0, 2]);
        assert!(ix.set(&mut f, &[(b, entry(3))]).is_err());
        assert_eq!(read(&f.0, ix.shift(), b), None);
        let mut m = f.0;
        let shift = ix.shift();
        let twin = (3..=255u8)
            .map(|l| u32::from_ne_bytes([10, 0, 0, l]))
            .find(|x| index::slot(*x, shift) == index::slot(b, shift))
            .unwrap();
        ix.set(&mut m, &[(twin, entry(4))]).unwrap();
        assert_eq!(read(&m, shift, b), None);
        // Set again successfully: back in the index.
        ix.set(&mut m, &[(a, entry(5)), (b, entry(6))]).unwrap();
        assert_eq!(read(&m, shift, a), Some(Some(entry(5))));
    }

    #[test]
    fn a_full_table_leaves_room_and_most_vips_alone_in_their_slot() {
        let max = 4096;
        let mut ix = Index::new(max);
        let mut m = Mem::default();
        let items: Vec<(u32, VipEntry)> = (0..max)
            .map(|i| {
                (
                    u32::from_ne_bytes([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                    entry(1),
                )
            })
            .collect();
        ix.set(&mut m, &items).unwrap();
        // Every update takes a fresh entry first: the capacity allows a full table.
        ix.set(&mut m, &items).unwrap();
        assert!(ix.free.len() >= 1024);
        // Random addresses would leave ~22 % sharing a slot; consecutive ones none.
        assert_eq!(ix.collided(), 0, "{} of {max} share a slot", ix.collided());
        assert_eq!(Index::slots(max), 16384);
    }

    #[derive(Default)]
    struct Mem6 {
        slots: HashMap<u32, u64>,
        entries: HashMap<u32, IndexedEntryV6>,
    }

    impl Store<[u8; 16]> for Mem6 {
        fn write_entries(&mut self, items: &[(u32, IndexedEntryV6)]) -> std::io::Result<()> {
            self.entries.extend(items.iter().copied());
            Ok(())
        }
        fn write_slot(&mut self, slot: u32, value: u64) {
            self.slots.insert(slot, value);
        }
    }

    /// The program's IPv6 read, as vip-ebpf's `maps::vip_v6` does it (answers as
    /// [`read`]'s).
    fn read6(m: &Mem6, shift: u32, dst: [u8; 16]) -> Option<Option<VipEntry>> {
        let fold = index::fold_v6(&dst);
        let (hint, r) = index::unpack(*m.slots.get(&index::slot_v6(fold, shift)).unwrap_or(&0));
        if r == index::EMPTY && hint == 0 {
            return Some(None);
        }
        if r != index::COLLIDED && r != index::EMPTY {
            if hint != fold {
                return Some(None);
            }
            if let Some(e) = m.entries.get(&(r - 1)) {
                if e.addr == dst {
                    return Some(Some(e.entry));
                }
            }
        }
        None
    }

    fn v6(last: u16) -> [u8; 16] {
        std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 6, 0, 0, 0, last).octets()
    }

    #[test]
    fn ipv6_lookups_agree_with_the_table_through_updates_collisions_and_removals() {
        let mut ix: Index<[u8; 16]> = Index::new(16);
        let mut m = Mem6::default();
        let shift = ix.shift();
        let slot = |a: &[u8; 16]| a.slot(shift);
        let all: Vec<[u8; 16]> = (1..=512).map(v6).collect();
        // Two VIPs in one slot, a third alone; a non-VIP whose fold equals the
        // third's (its first and second words xor-ed alike), in its slot.
        let a = all[0];
        let b = *all[1..].iter().find(|x| slot(x) == slot(&a)).unwrap();
        let c = *all.iter().find(|x| slot(x) != slot(&a)).unwrap();
        let mut twin = c;
        twin[3] ^= 1;
        twin[7] ^= 1;
        assert_eq!(index::fold_v6(&twin), index::fold_v6(&c));
        let mut truth: HashMap<[u8; 16], VipEntry> = HashMap::new();
        let check = |m: &Mem6, truth: &HashMap<[u8; 16], VipEntry>| {
            for x in all.iter().chain([twin].iter()) {
                if let Some(got) = read6(m, shift, *x) {
                    assert_eq!(got, truth.get(x).copied(), "{x:02x?}");
                }
            }
        };
        for (n, x) in [a, b, c].into_iter().enumerate() {
            ix.set(&mut m, &[(x, entry(n as u32))]).unwrap();
            truth.insert(x, entry(n as u32));
            check(&m, &truth);
        }
        assert_eq!(ix.collided(), 2);
        // c from the index; the twin reads c's entry, compares, and asks the hash map.
        assert_eq!(read6(&m, shift, c), Some(Some(entry(2))));
        assert_eq!(read6(&m, shift, twin), None);
        assert_eq!(read6(&m, shift, a), None);
        // Replaced: a fresh entry; removed: the slot says so.
        ix.set(&mut m, &[(c, entry(9))]).unwrap();
        truth.insert(c, entry(9));
        check(&m, &truth);
        assert_eq!(read6(&m, shift, c), Some(Some(entry(9))));
        for x in [a, c] {
            ix.remove(&mut m, x);
            truth.remove(&x);
            check(&m, &truth);
        }
        assert_eq!(read6(&m, shift, c), Some(None));
        // b alone in its slot now: from the index.
        assert_eq!(read6(&m, shift, b), Some(Some(entry(1))));
        assert_eq!(ix.collided(), 0);
        // A full table of a /64's consecutive VIPs: none shares a slot.
        let mut ix: Index<[u8; 16]> = Index::new(4096);
        let items: Vec<([u8; 16], VipEntry)> = (1..=4096u32)
            .map(|i| {
                let mut x = v6(0);
                x[12..].copy_from_slice(&i.to_be_bytes());
                (x, entry(1))
            })
            .collect();
        ix.set(&mut Mem6::default(), &items).unwrap();
        assert_eq!(ix.collided(), 0);
    }
}
