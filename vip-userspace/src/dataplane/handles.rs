//! What every part reads its maps through: per-CPU arrays of counter structs
//! summed and zeroed ([`Counters`]), the program-wide counters, and second handles on
//! a map (duplicated file descriptors) for [`super::Reader`] on the status thread.

use std::os::fd::AsFd as _;

use aya::maps::{HashMap, IterableMap as _, Map, MapData, PerCpuArray, PerCpuValues};
use vip_common::{global, maps};

use super::{io_err, map_err, DataplaneError, Result};

/// One per-CPU array of counter structs (`VIP_STATS`, `EIP_STATS`, `BALANCE_STATS`):
/// a slot is summed over CPUs when read, zeroed on every CPU before it is reused.
pub(super) struct Counters<T: aya::Pod> {
    map: PerCpuArray<MapData, T>,
    name: &'static str,
    add: fn(&mut T, &T),
}

impl<T: aya::Pod + Default> Counters<T> {
    pub(super) fn new(
        map: PerCpuArray<MapData, T>,
        name: &'static str,
        add: fn(&mut T, &T),
    ) -> Self {
        Counters { map, name, add }
    }

    /// Slot `index`, summed over CPUs.
    pub(super) fn get(&self, index: u32) -> Result<T> {
        let per_cpu = self.map.get(&index, 0).map_err(map_err(self.name))?;
        let mut sum = T::default();
        for s in per_cpu.iter() {
            (self.add)(&mut sum, s);
        }
        Ok(sum)
    }

    /// Zeroes slot `index` on every CPU.
    pub(super) fn reset(&mut self, index: u32) -> Result<()> {
        let io = io_err(self.name);
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io(e))?;
        let zero = PerCpuValues::try_from((0..cpus).map(|_| T::default()).collect::<Vec<_>>())
            .map_err(&io)?;
        self.map.set(index, zero, 0).map_err(map_err(self.name))
    }

    /// A second handle on the same map.
    pub(super) fn dup(&self) -> Result<Self> {
        Ok(Counters {
            map: dup_per_cpu(&self.map, self.name)?,
            name: self.name,
            add: self.add,
        })
    }

    #[cfg(feature = "test-run")]
    pub(super) fn map(&self) -> &MapData {
        self.map.map()
    }
}

/// Program-wide counters, by name, summed over CPUs. A pinned map adopted from an
/// older vip may hold fewer counters than this one names (aya reuses a pin as it
/// is): those it lacks read 0, the program's increments of them find no slot.
pub(super) fn global_stats(map: &PerCpuArray<MapData, u64>) -> Result<Vec<(&'static str, u64)>> {
    let held = map
        .map()
        .info()
        .map(|i| i.max_entries())
        .map_err(map_err(maps::GLOBAL_STATS))?;
    let mut out = Vec::new();
    for i in 0..global::COUNT {
        let sum = if i < held {
            let v = map.get(&i, 0).map_err(map_err(maps::GLOBAL_STATS))?;
            v.iter().sum()
        } else {
            0
        };
        out.push((global::NAMES[i as usize], sum));
    }
    Ok(out)
}

/// A second handle on a map, through a duplicated file descriptor.
pub(super) fn dup_map(map: &MapData, name: &'static str) -> Result<MapData> {
    let fd = map
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DataplaneError::MapIo { map: name, source })?;
    MapData::from_fd(fd).map_err(map_err(name))
}

pub(super) fn dup_hash<K: aya::Pod, V: aya::Pod>(
    m: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>> {
    HashMap::try_from(Map::HashMap(dup_map(m.map(), name)?)).map_err(map_err(name))
}

pub(super) fn dup_per_cpu<V: aya::Pod>(
    m: &PerCpuArray<MapData, V>,
    name: &'static str,
) -> Result<PerCpuArray<MapData, V>> {
    PerCpuArray::try_from(Map::PerCpuArray(dup_map(m.map(), name)?)).map_err(map_err(name))
}
