//! The VIP entries and their counters: `VIPS_V4` and `VIPS_V6` (what the program does
//! for a VIP), the index in front of each (`VIP_INDEX_V4` and `VIP_ENTRIES_V4`,
//! `VIP_INDEX_V6` and `VIP_ENTRIES_V6`, see `vip_index`) and `VIP_STATS`. The indexes
//! are written here only, in the order `vip_index`'s header gives against the hash
//! maps: the hash map before the index on an update, after it on a removal, so a
//! lookup that falls back to the hash map agrees.

use std::{net::IpAddr, os::fd::AsFd as _};

use aya::{
    maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray},
    Ebpf,
};
use vip_common::{maps, IndexedEntry, IndexedEntryV6, VipEntry, VipStats};

use super::{
    absent_ok, handles,
    handles::Counters,
    io_err, map_err, sys,
    vip_index::{Index, KernelStore, Store},
    Dataplane, Result,
};

/// Batches larger than this go through the hash map while the index catches up
/// (`Index::bypass`): below it, writing the index costs less than a millisecond.
const BYPASS_FROM: usize = 1024;

/// The VIPs' entries and counters, as both the data plane and the [`super::Reader`]
/// read them.
pub(super) struct VipTables {
    v4: HashMap<MapData, u32, VipEntry>,
    v6: HashMap<MapData, [u8; 16], VipEntry>,
    stats: Counters<VipStats>,
}

impl VipTables {
    /// The entry for a VIP in whichever family's map holds it.
    pub(super) fn get(&self, addr: IpAddr) -> Option<VipEntry> {
        match addr {
            IpAddr::V4(a) => self.v4.get(&u32::from_ne_bytes(a.octets()), 0).ok(),
            IpAddr::V6(a) => self.v6.get(&a.octets(), 0).ok(),
        }
    }

    /// A VIP's counters (slot `index`), summed over CPUs.
    pub(super) fn stats(&self, index: u32) -> Result<VipStats> {
        self.stats.get(index)
    }

    pub(super) fn dup(&self) -> Result<Self> {
        Ok(VipTables {
            v4: handles::dup_hash(&self.v4, maps::VIPS_V4)?,
            v6: handles::dup_hash(&self.v6, maps::VIPS_V6)?,
            stats: self.stats.dup()?,
        })
    }
}

/// The VIP hash maps, as the index's writes are ordered against them: the kernel's
/// ([`VipTables`]), or a record in unit tests.
trait EntryMaps {
    fn insert(&mut self, addr: IpAddr, entry: &VipEntry) -> Result<()>;
    /// One BPF_MAP_UPDATE_BATCH per family.
    fn insert_batch(&mut self, entries: &[(IpAddr, VipEntry)]) -> Result<()>;
    /// Absent already is not an error.
    fn remove(&mut self, addr: IpAddr) -> Result<()>;
}

impl EntryMaps for VipTables {
    fn insert(&mut self, addr: IpAddr, entry: &VipEntry) -> Result<()> {
        match addr {
            IpAddr::V4(a) => self
                .v4
                .insert(u32::from_ne_bytes(a.octets()), entry, 0)
                .map_err(map_err(maps::VIPS_V4)),
            IpAddr::V6(a) => self
                .v6
                .insert(a.octets(), entry, 0)
                .map_err(map_err(maps::VIPS_V6)),
        }
    }

    fn insert_batch(&mut self, entries: &[(IpAddr, VipEntry)]) -> Result<()> {
        let (mut k4, mut v4, mut k6, mut v6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (addr, e) in entries {
            let bytes = sys::bytes_of(e);
            match addr {
                IpAddr::V4(a) => {
                    k4.extend_from_slice(&a.octets());
                    v4.extend_from_slice(bytes);
                }
                IpAddr::V6(a) => {
                    k6.extend_from_slice(&a.octets());
                    v6.extend_from_slice(bytes);
                }
            }
        }
        for (map, name, keys, values, width) in [
            (self.v4.map(), maps::VIPS_V4, &k4, &v4, 4),
            (self.v6.map(), maps::VIPS_V6, &k6, &v6, 16),
        ] {
            if !keys.is_empty() {
                sys::update_batch(map.fd().as_fd(), keys, values, (keys.len() / width) as u32)
                    .map_err(io_err(name))?;
            }
        }
        Ok(())
    }

    fn remove(&mut self, addr: IpAddr) -> Result<()> {
        match addr {
            IpAddr::V4(a) => absent_ok(
                self.v4.remove(&u32::from_ne_bytes(a.octets())),
                maps::VIPS_V4,
            ),
            IpAddr::V6(a) => absent_ok(self.v6.remove(&a.octets()), maps::VIPS_V6),
        }
    }
}

/// Both families' indexes, each with where it lives (the kernel's arrays, or a
/// record in unit tests).
struct Indexes<S4, S6> {
    v4: Index<u32>,
    s4: S4,
    v6: Index<[u8; 16]>,
    s6: S6,
}

/// Installs or replaces a VIP's entry: the hash map first, then its family's index.
fn set<S4: Store<u32>, S6: Store<[u8; 16]>>(
    maps: &mut impl EntryMaps,
    ix: &mut Indexes<S4, S6>,
    addr: IpAddr,
    entry: &VipEntry,
) -> Result<()> {
    maps.insert(addr, entry)?;
    match addr {
        IpAddr::V4(a) => ix
            .v4
            .set(&mut ix.s4, &[(u32::from_ne_bytes(a.octets()), *entry)])
            .map_err(io_err(maps::VIP_ENTRIES_V4)),
        IpAddr::V6(a) => ix
            .v6
            .set(&mut ix.s6, &[(a.octets(), *entry)])
            .map_err(io_err(maps::VIP_ENTRIES_V6)),
    }
}

/// Removes a VIP's entry: its family's index first, then the hash map.
fn remove<S4: Store<u32>, S6: Store<[u8; 16]>>(
    maps: &mut impl EntryMaps,
    ix: &mut Indexes<S4, S6>,
    addr: IpAddr,
) -> Result<()> {
    match addr {
        IpAddr::V4(a) => ix.v4.remove(&mut ix.s4, u32::from_ne_bytes(a.octets())),
        IpAddr::V6(a) => ix.v6.remove(&mut ix.s6, a.octets()),
    }
    maps.remove(addr)
}

/// Installs or replaces many entries: a large takeover's slots are pointed at the
/// hash map first (the program reads it for them from the moment it has the new
/// entries), then the hash maps in one batch per family, then the indexes.
fn set_batch<S4: Store<u32>, S6: Store<[u8; 16]>>(
    maps: &mut impl EntryMaps,
    ix: &mut Indexes<S4, S6>,
    entries: &[(IpAddr, VipEntry)],
) -> Result<()> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (addr, e) in entries {
        match addr {
            IpAddr::V4(a) => v4.push((u32::from_ne_bytes(a.octets()), *e)),
            IpAddr::V6(a) => v6.push((a.octets(), *e)),
        }
    }
    if v4.len() > BYPASS_FROM {
        let addrs: Vec<u32> = v4.iter().map(|(a, _)| *a).collect();
        ix.v4.bypass(&mut ix.s4, &addrs);
    }
    if v6.len() > BYPASS_FROM {
        let addrs: Vec<[u8; 16]> = v6.iter().map(|(a, _)| *a).collect();
        ix.v6.bypass(&mut ix.s6, &addrs);
    }
    maps.insert_batch(entries)?;
    ix.v4
        .set(&mut ix.s4, &v4)
        .map_err(io_err(maps::VIP_ENTRIES_V4))?;
    ix.v6
        .set(&mut ix.s6, &v6)
        .map_err(io_err(maps::VIP_ENTRIES_V6))
}

/// The VIPs' part of the data plane.
pub(super) struct Vips {
    tables: VipTables,
    /// The VIP indexes in front of `VIPS_V4` and `VIPS_V6` (see `vip_index`). Their
    /// maps belong to this load of the program, never pinned: a new program gets
    /// fresh indexes, built from the hash maps before it is attached.
    indexes: Indexes<KernelStore, KernelStore>,
    /// The indexes' maps, kept open while the stores refer to them (read only for
    /// their memory, under `test-run`).
    #[cfg_attr(not(feature = "test-run"), allow(dead_code))]
    index_maps: IndexMaps,
}

#[cfg_attr(not(feature = "test-run"), allow(dead_code))]
struct IndexMaps {
    v4: (Array<MapData, u64>, Array<MapData, IndexedEntry>),
    v6: (Array<MapData, u64>, Array<MapData, IndexedEntryV6>),
}

/// Maps a family's slot array for its store.
fn store_of<E: aya::Pod>(
    (slots, entries): &(Array<MapData, u64>, Array<MapData, E>),
    max_vips: u32,
    name: &'static str,
) -> Result<KernelStore> {
    KernelStore::new(
        slots.map().fd().as_fd(),
        Index::slots(max_vips),
        entries.map().fd().as_fd(),
    )
    .map_err(io_err(name))
}

impl Vips {
    /// Takes the VIPs' maps out of the loaded object and indexes the entries an
    /// adopted data plane holds (either family's, in its hash map pinned by an
    /// earlier agent, whatever that agent's program indexed), before the program is
    /// attached: every one, or none (a VIP left out would read as absent).
    pub(super) fn take(ebpf: &mut Ebpf, index: Index, max_vips: u32) -> Result<Self> {
        let v4: HashMap<MapData, u32, VipEntry> = super::take(ebpf, maps::VIPS_V4)?;
        let v6: HashMap<MapData, [u8; 16], VipEntry> = super::take(ebpf, maps::VIPS_V6)?;
        let stats: PerCpuArray<MapData, VipStats> = super::take(ebpf, maps::VIP_STATS)?;
        let index_maps = IndexMaps {
            v4: (
                super::take(ebpf, maps::VIP_INDEX_V4)?,
                super::take(ebpf, maps::VIP_ENTRIES_V4)?,
            ),
            v6: (
                super::take(ebpf, maps::VIP_INDEX_V6)?,
                super::take(ebpf, maps::VIP_ENTRIES_V6)?,
            ),
        };
        let mut indexes = Indexes {
            v4: index,
            s4: store_of(&index_maps.v4, max_vips, maps::VIP_INDEX_V4)?,
            v6: Index::new(max_vips),
            s6: store_of(&index_maps.v6, max_vips, maps::VIP_INDEX_V6)?,
        };
        let existing: Vec<(u32, VipEntry)> = v4
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(maps::VIPS_V4))?;
        indexes
            .v4
            .set(&mut indexes.s4, &existing)
            .map_err(io_err(maps::VIP_ENTRIES_V4))?;
        let existing: Vec<([u8; 16], VipEntry)> = v6
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(maps::VIPS_V6))?;
        indexes
            .v6
            .set(&mut indexes.s6, &existing)
            .map_err(io_err(maps::VIP_ENTRIES_V6))?;
        Ok(Vips {
            tables: VipTables {
                v4,
                v6,
                stats: Counters::new(stats, maps::VIP_STATS, VipStats::add),
            },
            indexes,
            index_maps,
        })
    }

    pub(super) fn tables(&self) -> &VipTables {
        &self.tables
    }

    /// Kernel memory charged to each of the VIPs' maps (its `memlock` in
    /// /proc/self/fdinfo).
    #[cfg(feature = "test-run")]
    pub(super) fn memory(&self) -> Vec<(&'static str, u64)> {
        use std::os::fd::AsRawFd as _;
        let memlock = |map: &MapData| {
            std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                map.fd().as_fd().as_raw_fd()
            ))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("memlock:")
                        .and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or(0)
        };
        vec![
            (maps::VIPS_V4, memlock(self.tables.v4.map())),
            (maps::VIPS_V6, memlock(self.tables.v6.map())),
            (maps::VIP_STATS, memlock(self.tables.stats.map())),
            (maps::VIP_INDEX_V4, memlock(self.index_maps.v4.0.map())),
            (maps::VIP_ENTRIES_V4, memlock(self.index_maps.v4.1.map())),
            (maps::VIP_INDEX_V6, memlock(self.index_maps.v6.0.map())),
            (maps::VIP_ENTRIES_V6, memlock(self.index_maps.v6.1.map())),
        ]
    }
}

impl Dataplane {
    /// Installs or replaces the entry for a VIP (atomic for the data plane).
    pub fn set_vip(&mut self, addr: IpAddr, entry: &VipEntry) -> Result<()> {
        let v = &mut self.vips;
        set(&mut v.tables, &mut v.indexes, addr, entry)
    }

    /// Removes a VIP's entry; absent already is not an error.
    pub fn remove_vip(&mut self, addr: IpAddr) -> Result<()> {
        let v = &mut self.vips;
        remove(&mut v.tables, &mut v.indexes, addr)
    }

    /// Installs or replaces many entries with one BPF_MAP_UPDATE_BATCH per family
    /// (a takeover of thousands of VIPs in milliseconds). Each entry is replaced
    /// atomically; the batch as a whole is not.
    pub fn set_vips_batch(&mut self, entries: &[(IpAddr, VipEntry)]) -> Result<()> {
        let v = &mut self.vips;
        set_batch(&mut v.tables, &mut v.indexes, entries)
    }

    /// Every VIP the data plane holds an entry for.
    pub fn vip_addrs(&self) -> Vec<IpAddr> {
        let t = &self.vips.tables;
        let v4 =
            t.v4.keys()
                .filter_map(|k| k.ok())
                .map(|k| IpAddr::from(k.to_ne_bytes()));
        let v6 = t.v6.keys().filter_map(|k| k.ok()).map(IpAddr::from);
        v4.chain(v6).collect()
    }

    /// The entry the data plane holds for a VIP, if any.
    pub fn vip(&self, addr: IpAddr) -> Option<VipEntry> {
        self.vips.tables.get(addr)
    }

    /// A VIP's counters, summed over CPUs.
    pub fn stats(&self, index: u32) -> Result<VipStats> {
        self.vips.tables.stats(index)
    }

    /// Zeroes a counter slot before it is given to a VIP.
    pub fn reset_stats(&mut self, index: u32) -> Result<()> {
        self.vips.tables.stats.reset(index)
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, net::Ipv4Addr, rc::Rc};

    use super::*;

    /// One write, to the hash maps or to the index.
    #[derive(Debug, Clone, PartialEq)]
    enum Write {
        Insert(IpAddr),
        Batch(Vec<IpAddr>),
        Remove(IpAddr),
        IndexEntries(Vec<IpAddr>),
        /// A slot, by what it tells the program.
        Slot(Slot),
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Slot {
        /// Read this index entry.
        Entry,
        /// Ask the hash map.
        HashMap,
        /// No VIP here.
        Empty,
    }

    type Log = Rc<RefCell<Vec<Write>>>;

    struct Maps(Log);
    struct Slots(Log);

    impl EntryMaps for Maps {
        fn insert(&mut self, addr: IpAddr, _: &VipEntry) -> Result<()> {
            self.0.borrow_mut().push(Write::Insert(addr));
            Ok(())
        }
        fn insert_batch(&mut self, entries: &[(IpAddr, VipEntry)]) -> Result<()> {
            let addrs = entries.iter().map(|(a, _)| *a).collect();
            self.0.borrow_mut().push(Write::Batch(addrs));
            Ok(())
        }
        fn remove(&mut self, addr: IpAddr) -> Result<()> {
            self.0.borrow_mut().push(Write::Remove(addr));
            Ok(())
        }
    }

    impl Store<u32> for Slots {
        fn write_entries(&mut self, items: &[(u32, IndexedEntry)]) -> std::io::Result<()> {
            let addrs = items
                .iter()
                .map(|(_, e)| IpAddr::from(e.addr.to_ne_bytes()))
                .collect();
            self.0.borrow_mut().push(Write::IndexEntries(addrs));
            Ok(())
        }
        fn write_slot(&mut self, slot: u32, value: u64) {
            log_slot(&self.0, slot, value);
        }
    }

    impl Store<[u8; 16]> for Slots {
        fn write_entries(&mut self, items: &[(u32, IndexedEntryV6)]) -> std::io::Result<()> {
            let addrs = items.iter().map(|(_, e)| IpAddr::from(e.addr)).collect();
            self.0.borrow_mut().push(Write::IndexEntries(addrs));
            Ok(())
        }
        fn write_slot(&mut self, slot: u32, value: u64) {
            log_slot(&self.0, slot, value);
        }
    }

    fn indexes(log: &Log, max_vips: u32) -> Indexes<Slots, Slots> {
        Indexes {
            v4: Index::new(max_vips),
            s4: Slots(log.clone()),
            v6: Index::new(max_vips),
            s6: Slots(log.clone()),
        }
    }

    fn log_slot(log: &Log, _: u32, value: u64) {
        use vip_common::index::{unpack, COLLIDED, EMPTY};
        let slot = match unpack(value) {
            (_, COLLIDED) => Slot::HashMap,
            (_, EMPTY) => Slot::Empty,
            _ => Slot::Entry,
        };
        log.borrow_mut().push(Write::Slot(slot));
    }

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    fn v6(i: u32) -> IpAddr {
        IpAddr::V6(std::net::Ipv6Addr::from(
            0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + i as u128,
        ))
    }

    #[test]
    fn an_entry_reaches_the_hash_map_before_the_index_and_leaves_it_after() {
        let log = Log::default();
        let mut maps = Maps(log.clone());
        let mut ix = indexes(&log, 64);
        let (a, b) = (v4(1), v6(1));
        set(&mut maps, &mut ix, a, &VipEntry::default()).unwrap();
        set(&mut maps, &mut ix, b, &VipEntry::default()).unwrap();
        remove(&mut maps, &mut ix, a).unwrap();
        remove(&mut maps, &mut ix, b).unwrap();
        assert_eq!(
            *log.borrow(),
            [
                // Set: the hash map, then the index's entry and slot (either family).
                Write::Insert(a),
                Write::IndexEntries(vec![a]),
                Write::Slot(Slot::Entry),
                Write::Insert(b),
                Write::IndexEntries(vec![b]),
                Write::Slot(Slot::Entry),
                // Remove: the slot emptied, then the hash map.
                Write::Slot(Slot::Empty),
                Write::Remove(a),
                Write::Slot(Slot::Empty),
                Write::Remove(b),
            ]
        );
    }

    #[test]
    fn a_batch_reaches_the_hash_maps_before_the_index_and_a_large_one_bypasses_it_first() {
        for family in [v4 as fn(u32) -> IpAddr, v6] {
            let log = Log::default();
            let mut maps = Maps(log.clone());
            let mut ix = indexes(&log, 4096);
            let small: Vec<(IpAddr, VipEntry)> =
                (1..=3).map(|i| (family(i), VipEntry::default())).collect();
            set_batch(&mut maps, &mut ix, &small).unwrap();
            let addrs: Vec<IpAddr> = small.iter().map(|(a, _)| *a).collect();
            assert_eq!(
                *log.borrow(),
                [
                    Write::Batch(addrs.clone()),
                    Write::IndexEntries(addrs.clone()),
                    Write::Slot(Slot::Entry),
                    Write::Slot(Slot::Entry),
                    Write::Slot(Slot::Entry),
                ]
            );
            log.borrow_mut().clear();
            let n = BYPASS_FROM as u32 + 1;
            let large: Vec<(IpAddr, VipEntry)> = (100..100 + n)
                .map(|i| (family(i), VipEntry::default()))
                .collect();
            set_batch(&mut maps, &mut ix, &large).unwrap();
            let log = log.borrow();
            let batch = log
                .iter()
                .position(|w| matches!(w, Write::Batch(_)))
                .unwrap();
            // Every slot sent to the hash map, then the hash map, then the index.
            assert_eq!(batch, n as usize);
            assert!(log[..batch]
                .iter()
                .all(|w| *w == Write::Slot(Slot::HashMap)));
            assert!(matches!(log[batch + 1], Write::IndexEntries(_)));
            assert!(log[batch + 2..].iter().all(|w| matches!(w, Write::Slot(_))));
        }
    }
}
