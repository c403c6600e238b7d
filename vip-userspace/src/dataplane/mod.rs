//! The XDP data plane: loads the embedded program, attaches it, and owns its maps.
//! This is the only module that talks to the BPF side; everything above it speaks in
//! VIPs and entries.
//!
//! One file per concern. Each holds the handles of the maps it owns in a part of
//! [`Dataplane`] whose fields are private to that file, so only its own methods
//! write those maps:
//! * `program`: loading, attaching and pinning: the object, its attachments, its
//!   pins, and the interfaces it may redirect to (`REDIRECT_DEVS`);
//! * `vips`: the VIP entries (`VIPS_V4`, `VIPS_V6`) with the IPv4 index in front of
//!   them (`vip_index`), and their counters (`VIP_STATS`);
//! * `leases`: the groups' leases (`LEASES`) and answers (`QUIET`), and `vip_lease`,
//!   which extends a lease in the kernel;
//! * `eips`: the elastic IPs' mappings, learned owners, nodes and counters;
//! * `director`: an active/active group's rows (`BALANCE_*`);
//! * `peers`: who may reach the election's port (`PEERS`);
//! * `handles`: per-CPU counter slots (summed, zeroed) and second handles on a map;
//! * `reader`: the read-only handles status and metrics read on another thread;
//! * `vip_maps`: [`VipMaps`], the writes a change of ownership makes, in the order
//!   `crate::ownership` gives them: the one seam unit tests record instead of a kernel;
//! * `sys`: the raw bpf(2) call aya has no wrapper for (BPF_MAP_UPDATE_BATCH);
//! * `test_run` (feature `test-run`): BPF_PROG_TEST_RUN of the data plane and the
//!   benchmarks' programs, for the integration tests and benchmarks only.
//!
//! This file holds the two maps only the program writes and nobody else owns:
//! `ECHO_SEEN` (the prober reads it through its own handle) and `GLOBAL_STATS`.

mod director;
mod eips;
mod handles;
mod leases;
mod peers;
mod program;
mod reader;
mod sys;
#[cfg(feature = "test-run")]
mod test_run;
pub mod vip_index;
mod vip_maps;
mod vips;

use std::path::PathBuf;

use aya::{
    maps::{Array, Map, MapData, MapError, PerCpuArray},
    programs::ProgramError,
    Ebpf,
};
use vip_common::{maps, EchoSeen};

pub use director::Placement;
pub use leases::Extension;
pub use program::{on_bpffs, remove_pins};
pub use reader::Reader;
#[cfg(feature = "test-run")]
pub use test_run::{action_name, run, BenchPrograms, TestOutcome};
pub use vip_maps::VipMaps;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("this vip binary was built with VIP_EBPF_STUB=1 and has no XDP program; rebuild it after `cargo xtask setup`")]
    Stub,
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("attaching XDP to {iface} in {mode} mode: {source}; try `--xdp-mode skb`")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("pinning under {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the lease program refused the request (code {0}): this agent's program and its maps do not match")]
    LeaseRefused(u32),
    #[error("BPF map {map}: {source}")]
    MapIo {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, DataplaneError>;

fn map_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

fn io_err(map: &'static str) -> impl Fn(std::io::Error) -> DataplaneError {
    move |source| DataplaneError::MapIo { map, source }
}

/// A removal whose key was absent already is not an error.
fn absent_ok(r: std::result::Result<(), MapError>, map: &'static str) -> Result<()> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(map_err(map)(e)),
    }
}

/// Takes map `name` out of the loaded object, typed.
fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DataplaneError::Missing(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// The loaded program and its maps, one part per concern (see the module's header).
/// Loading, attaching and pinning are `program`'s; the parts' methods are in their
/// own files.
pub struct Dataplane {
    program: program::Program,
    vips: vips::Vips,
    leases: leases::Leases,
    eips: eips::Eips,
    director: director::Director,
    peers: peers::Peers,
    /// When the prober's probes were answered (`ECHO_SEEN`); the program writes it,
    /// the prober reads it through its own handle ([`Dataplane::echo_seen`]).
    echo_seen: Array<MapData, EchoSeen>,
    /// Program-wide counters (`GLOBAL_STATS`), by `vip_common::global` index.
    global: PerCpuArray<MapData, u64>,
}

impl Dataplane {
    /// The prober's own handle on `ECHO_SEEN` (it runs on its own thread).
    pub fn echo_seen(&self) -> Result<Array<MapData, EchoSeen>> {
        use aya::maps::IterableMap as _;
        let map = handles::dup_map(self.echo_seen.map(), maps::ECHO_SEEN)?;
        Array::try_from(Map::Array(map)).map_err(map_err(maps::ECHO_SEEN))
    }

    /// Program-wide counters, by name, summed over CPUs.
    pub fn global_stats(&self) -> Result<Vec<(&'static str, u64)>> {
        handles::global_stats(&self.global)
    }

    /// Read-only handles for another thread.
    pub fn reader(&self) -> Result<Reader> {
        Ok(Reader {
            vips: self.vips.tables().dup()?,
            global: handles::dup_per_cpu(&self.global, maps::GLOBAL_STATS)?,
            eips: self.eips.read().dup()?,
            balance_stats: self.director.stats().dup()?,
        })
    }
}
