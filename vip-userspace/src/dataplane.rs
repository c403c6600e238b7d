//! The XDP data plane: loads the embedded program, attaches it, and owns its maps.
//! This is the only module that talks to the BPF side; everything above it speaks in
//! VIPs and entries.

use std::{
    net::IpAddr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{xdp::DevMapHash, Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        xdp::XdpLinkId,
        ProgramError, TestRun, TestRunOptions, Xdp, XdpMode as AyaXdpMode,
    },
    Ebpf, EbpfLoader,
};
use vip_common::{
    balance_maps, global, globals, maps, programs, BalanceConf, BalanceMember, BalanceStats,
    EchoSeen, EipEntry, EipNodeKey, EipStats, Owner, Peer, PeerKey, Settings, VipEntry, VipStats,
};

use crate::{
    config::XdpMode,
    vip_index::{Index, KernelStore},
    xdpmode::Choice,
};

/// The XDP object built by build.rs (empty in a VIP_EBPF_STUB build).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vip.bpf.o"));
/// The benchmarks' generator and sink, a separate object that only [`BenchPrograms`]
/// loads: an agent never verifies them nor creates their maps.
static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vip-bench.bpf.o"));

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

/// The loaded program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    vips_v4: HashMap<MapData, u32, VipEntry>,
    vips_v6: HashMap<MapData, [u8; 16], VipEntry>,
    stats: PerCpuArray<MapData, VipStats>,
    global: PerCpuArray<MapData, u64>,
    leases: Array<MapData, u64>,
    quiet: Array<MapData, u32>,
    redirect: DevMapHash<MapData>,
    link: Option<XdpLinkId>,
    /// Attachments to further interfaces (a gateway's external side).
    extra_links: Vec<(String, Option<PinnedLink>)>,
    eips_in: HashMap<MapData, u32, EipEntry>,
    eips_out: HashMap<MapData, u32, EipEntry>,
    owners: HashMap<MapData, u32, Owner>,
    eip_stats: PerCpuArray<MapData, EipStats>,
    eip_nodes: HashMap<MapData, EipNodeKey, u32>,
    echo_seen: Array<MapData, EchoSeen>,
    /// Who may reach the election's port (see `vip_common::peers`). Not pinned: the
    /// agent writes it from its config before it attaches the program, so a new
    /// program never starts with it empty, and its value's layout may change between
    /// versions without an old pin in the way.
    peers: HashMap<MapData, PeerKey, Peer>,
    balance: BalanceMaps,
    /// The IPv4 VIP index in front of `vips_v4` (see `vip_index`). Its maps belong to
    /// this load of the program, never pinned: a new program gets a fresh index,
    /// built from `vips_v4` before it is attached.
    index: Index,
    index_store: KernelStore,
    index_maps: (
        Array<MapData, u64>,
        Array<MapData, vip_common::IndexedEntry>,
    ),
    max_vips: u32,
    /// Where the maps and the attachment are pinned, if they are.
    pin_dir: Option<PathBuf>,
    pinned_link: Option<PinnedLink>,
    adopted: bool,
    /// The mode of the main attachment and why (see [`Dataplane::attach_chosen`]).
    xdp: Option<Choice>,
    /// The `LEASE_KEY` this load's `vip_lease` program expects.
    lease_key: u64,
}

/// What `vip_lease` answered to an extension (see `vip_common::lease`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// The lease ran and now runs until the new deadline.
    Extended,
    /// The lease had run out at `found` (0: revoked); the kernel's time was `now`.
    Expired { found: u64, now: u64 },
    /// The lease was not the one expected (`found`): nothing was written.
    Changed { found: u64 },
}

/// Batches larger than this go through the hash map while the index catches up
/// (`Index::bypass`): below it, writing the index costs less than a millisecond.
const BYPASS_FROM: usize = 1024;

/// The pinned objects, one file each under the pin directory.
const PINNED_MAPS: [&str; 12] = [
    maps::VIPS_V4,
    maps::VIPS_V6,
    maps::VIP_STATS,
    maps::GLOBAL_STATS,
    maps::LEASES,
    maps::QUIET,
    maps::REDIRECT_DEVS,
    maps::EIPS_IN,
    maps::EIPS_OUT,
    maps::OWNERS,
    maps::EIP_STATS,
    maps::EIP_NODES,
];
const LINK_PIN: &str = "link";

/// Whether `path` (or its nearest existing ancestor) is on a bpf filesystem.
pub fn on_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let mut p = Some(path);
    while let Some(dir) = p {
        if dir.exists() {
            return nix::sys::statfs::statfs(dir)
                .is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
        }
        p = dir.parent();
    }
    false
}

/// Detaches and removes a pinned data plane (the program detaches when its link
/// pin goes); absent pins are not an error. Returns what was removed.
pub fn remove_pins(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    if !dir.exists() {
        return Ok(removed);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(LINK_PIN) || PINNED_MAPS.contains(&name.as_str()) {
            std::fs::remove_file(entry.path())?;
            removed.push(name);
        }
    }
    std::fs::remove_dir(dir)?;
    Ok(removed)
}

impl Dataplane {
    /// Loads the program (the kernel verifier runs here) with room for `max_vips`.
    pub fn load(max_vips: u32) -> Result<Self> {
        Self::open(max_vips, None, Settings::default())
    }

    /// Loads the program with its maps pinned under `pin_dir`: maps already pinned
    /// there (by an earlier agent) are reused, with their entries and counters, so a
    /// restarted agent adopts a running data plane.
    pub fn open(max_vips: u32, pin_dir: Option<&Path>, settings: Settings) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::Stub);
        }
        use aya::maps::IterableMap as _;
        let mut index = Index::new(max_vips);
        let shift = index.shift();
        let lease_key = crate::advert::new_epoch();
        let mut loader = EbpfLoader::new();
        loader
            .override_global(globals::VIP_IFINDEX, &settings.vip_ifindex, true)
            .override_global(globals::EIP_ENABLED, &settings.eip_enabled, true)
            .override_global(globals::ECHO_PORT, &settings.echo_port, true)
            .override_global(globals::BALANCE_ENABLED, &settings.balance_enabled, true)
            .override_global(globals::VIP_INDEX_SHIFT, &shift, true)
            .override_global(globals::LEASE_KEY, &lease_key, true)
            .map_max_entries(maps::VIP_INDEX_V4, Index::slots(max_vips))
            .map_max_entries(maps::VIP_ENTRIES_V4, vip_common::index::entries(max_vips))
            .map_max_entries(maps::VIPS_V4, max_vips)
            .map_max_entries(maps::VIPS_V6, max_vips)
            .map_max_entries(maps::VIP_STATS, max_vips);
        let mut adopted = false;
        if let Some(dir) = pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Pin {
                path: dir.into(),
                source,
            })?;
            adopted = dir.join(LINK_PIN).exists();
            for name in PINNED_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(OBJECT)?;
        for name in [programs::VIP, programs::PASS, programs::LEASE] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing("XDP program"))?
                .try_into()?;
            prog.load()?;
        }
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        let vips_v4 = HashMap::try_from(take(maps::VIPS_V4)?).map_err(map_err(maps::VIPS_V4))?;
        let vips_v6 = HashMap::try_from(take(maps::VIPS_V6)?).map_err(map_err(maps::VIPS_V6))?;
        let index_slots: Array<MapData, u64> =
            Array::try_from(take(maps::VIP_INDEX_V4)?).map_err(map_err(maps::VIP_INDEX_V4))?;
        let index_entries: Array<MapData, vip_common::IndexedEntry> =
            Array::try_from(take(maps::VIP_ENTRIES_V4)?).map_err(map_err(maps::VIP_ENTRIES_V4))?;
        let mut index_store = KernelStore::new(
            index_slots.map().fd().as_fd(),
            Index::slots(max_vips),
            index_entries.map().fd().as_fd(),
        )
        .map_err(|source| DataplaneError::MapIo {
            map: maps::VIP_INDEX_V4,
            source,
        })?;
        // An adopted data plane's VIPs: indexed before this program is attached.
        // Every one, or none: a VIP left out would read as absent.
        let existing: Vec<(u32, VipEntry)> = vips_v4
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(maps::VIPS_V4))?;
        index
            .set(&mut index_store, &existing)
            .map_err(|source| DataplaneError::MapIo {
                map: maps::VIP_ENTRIES_V4,
                source,
            })?;
        let stats =
            PerCpuArray::try_from(take(maps::VIP_STATS)?).map_err(map_err(maps::VIP_STATS))?;
        let global = PerCpuArray::try_from(take(maps::GLOBAL_STATS)?)
            .map_err(map_err(maps::GLOBAL_STATS))?;
        let leases = Array::try_from(take(maps::LEASES)?).map_err(map_err(maps::LEASES))?;
        let quiet = Array::try_from(take(maps::QUIET)?).map_err(map_err(maps::QUIET))?;
        let redirect = DevMapHash::try_from(take(maps::REDIRECT_DEVS)?)
            .map_err(map_err(maps::REDIRECT_DEVS))?;
        let eips_in = HashMap::try_from(take(maps::EIPS_IN)?).map_err(map_err(maps::EIPS_IN))?;
        let eips_out = HashMap::try_from(take(maps::EIPS_OUT)?).map_err(map_err(maps::EIPS_OUT))?;
        let owners = HashMap::try_from(take(maps::OWNERS)?).map_err(map_err(maps::OWNERS))?;
        let eip_stats =
            PerCpuArray::try_from(take(maps::EIP_STATS)?).map_err(map_err(maps::EIP_STATS))?;
        let eip_nodes =
            HashMap::try_from(take(maps::EIP_NODES)?).map_err(map_err(maps::EIP_NODES))?;
        let echo_seen =
            Array::try_from(take(maps::ECHO_SEEN)?).map_err(map_err(maps::ECHO_SEEN))?;
        let peers = HashMap::try_from(take(maps::PEERS)?).map_err(map_err(maps::PEERS))?;
        let balance = BalanceMaps {
            table: Array::try_from(take(maps::BALANCE_TABLE)?)
                .map_err(map_err(maps::BALANCE_TABLE))?,
            members: Array::try_from(take(maps::BALANCE_MEMBERS)?)
                .map_err(map_err(maps::BALANCE_MEMBERS))?,
            conf: Array::try_from(take(maps::BALANCE_CONF)?)
                .map_err(map_err(maps::BALANCE_CONF))?,
            ports: HashMap::try_from(take(maps::BALANCE_PORTS)?)
                .map_err(map_err(maps::BALANCE_PORTS))?,
            stats: PerCpuArray::try_from(take(maps::BALANCE_STATS)?)
                .map_err(map_err(maps::BALANCE_STATS))?,
            nodes: HashMap::try_from(take(maps::BALANCE_NODES)?)
                .map_err(map_err(maps::BALANCE_NODES))?,
        };
        Ok(Dataplane {
            ebpf,
            vips_v4,
            vips_v6,
            stats,
            global,
            leases,
            quiet,
            redirect,
            link: None,
            extra_links: Vec::new(),
            eips_in,
            eips_out,
            owners,
            eip_stats,
            eip_nodes,
            echo_seen,
            peers,
            balance,
            index,
            index_store,
            index_maps: (index_slots, index_entries),
            max_vips,
            pin_dir: pin_dir.map(Path::to_path_buf),
            pinned_link: None,
            adopted,
            xdp: None,
            lease_key,
        })
    }

    /// True when an earlier agent's pinned data plane was found and reused.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Attaches the same program (same maps) to a further interface: a gateway's
    /// external side. Pinned as `link-<iface>` next to the main attachment.
    pub fn attach_extra(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        let pinned = match self.pin_dir.clone() {
            Some(d) => {
                Some(self.attach_pinned(iface, mode, &d.join(format!("{LINK_PIN}-{iface}")))?)
            }
            None => {
                self.attach_program(programs::VIP, iface, mode)?;
                None
            }
        };
        self.extra_links.push((iface.to_string(), pinned));
        Ok(())
    }

    /// Installs an EIP <-> VIP mapping in both directions.
    pub fn set_eip(&mut self, e: &EipEntry) -> Result<()> {
        self.eips_in
            .insert(u32::from_ne_bytes(e.eip), e, 0)
            .map_err(map_err(maps::EIPS_IN))?;
        self.eips_out
            .insert(u32::from_ne_bytes(e.vip), e, 0)
            .map_err(map_err(maps::EIPS_OUT))
    }

    /// Removes an EIP <-> VIP mapping, the VIP's learned owner and its nodes.
    pub fn remove_eip(&mut self, e: &EipEntry) -> Result<()> {
        let _ = self.eips_in.remove(&u32::from_ne_bytes(e.eip));
        let _ = self.eips_out.remove(&u32::from_ne_bytes(e.vip));
        let _ = self.owners.remove(&u32::from_ne_bytes(e.vip));
        let vip = EipNodeKey::v4(e.vip, [0; 6]).vip;
        let keys: Vec<EipNodeKey> = self.eip_nodes_now().filter(|k| k.vip == vip).collect();
        for k in keys {
            let _ = self.eip_nodes.remove(&k);
        }
        Ok(())
    }

    /// The EIP mappings the maps hold (an adopted data plane's included), from both
    /// directions' maps.
    pub fn eips(&self) -> Vec<EipEntry> {
        let inbound = self.eips_in.iter().filter_map(|r| r.ok()).map(|(_, e)| e);
        let outbound = self.eips_out.iter().filter_map(|r| r.ok()).map(|(_, e)| e);
        let mut all: Vec<EipEntry> = Vec::new();
        for e in inbound.chain(outbound) {
            if !all.contains(&e) {
                all.push(e);
            }
        }
        all
    }

    fn eip_nodes_now(&self) -> impl Iterator<Item = EipNodeKey> + '_ {
        self.eip_nodes.keys().filter_map(|k| k.ok())
    }

    /// Makes `EIP_NODES` exactly `wanted` (see `vip_common::EipNodeKey`): the new keys
    /// first, then the others removed, so that a node listed before and after is
    /// never missing in between (its ARP would be refused).
    pub fn set_eip_nodes(&mut self, wanted: &std::collections::HashSet<EipNodeKey>) -> Result<()> {
        for k in wanted {
            self.eip_nodes
                .insert(k, 1, 0)
                .map_err(map_err(maps::EIP_NODES))?;
        }
        let stale: Vec<EipNodeKey> = self
            .eip_nodes_now()
            .filter(|k| !wanted.contains(k))
            .collect();
        for k in stale {
            self.eip_nodes
                .remove(&k)
                .map_err(map_err(maps::EIP_NODES))?;
        }
        Ok(())
    }

    /// The nodes `EIP_NODES` holds.
    pub fn eip_nodes(&self) -> Vec<EipNodeKey> {
        self.eip_nodes_now().collect()
    }

    /// Forgets a VIP's learned owner (the kernel's neighbour table serves until the
    /// next owner is learned).
    pub fn forget_owner(&mut self, vip: std::net::Ipv4Addr) -> Result<()> {
        let key = u32::from_ne_bytes(vip.octets());
        if self.owners.get(&key, 0).is_err() {
            return Ok(());
        }
        self.owners.remove(&key).map_err(map_err(maps::OWNERS))
    }

    /// Sets a VIP's owner as if learned from ARP (tests and benchmarks).
    pub fn set_owner(&mut self, vip: std::net::Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let o = Owner {
            mac,
            _pad: [0; 2],
            updated_ns: crate::host::monotonic_ns(),
        };
        self.owners
            .insert(u32::from_ne_bytes(vip.octets()), o, 0)
            .map_err(map_err(maps::OWNERS))
    }

    /// The owner of a VIP as the data plane learned it.
    pub fn owner(&self, vip: std::net::Ipv4Addr) -> Option<Owner> {
        self.owners.get(&u32::from_ne_bytes(vip.octets()), 0).ok()
    }

    pub fn eip_stats(&self, index: u32) -> Result<EipStats> {
        sum_per_cpu(&self.eip_stats, maps::EIP_STATS, index, EipStats::add)
    }

    pub fn reset_eip_stats(&mut self, index: u32) -> Result<()> {
        zero_per_cpu(&mut self.eip_stats, maps::EIP_STATS, index)
    }

    /// Detaches the program and removes every pin (a real stop or uninstall).
    pub fn detach_and_unpin(&mut self) -> Result<()> {
        for (_, link) in self.extra_links.drain(..) {
            if let Some(l) = link {
                drop(l.unpin());
            }
        }
        if let Some(link) = self.pinned_link.take() {
            let path = self
                .pin_dir
                .as_ref()
                .map(|d| d.join(LINK_PIN))
                .unwrap_or_default();
            let fd = link
                .unpin()
                .map_err(|source| DataplaneError::Pin { path, source })?;
            drop(fd);
        }
        if let Some(dir) = self.pin_dir.take() {
            remove_pins(&dir).map_err(|source| DataplaneError::Pin { path: dir, source })?;
        }
        Ok(())
    }

    pub fn max_vips(&self) -> u32 {
        self.max_vips
    }

    /// The data-plane program, for attaching or BPF_PROG_TEST_RUN.
    pub fn program(&self) -> &Xdp {
        self.program_named(programs::VIP)
    }

    /// The do-nothing program the benchmarks measure as their floor.
    pub fn pass_program(&self) -> &Xdp {
        self.program_named(programs::PASS)
    }

    fn program_named(&self, name: &str) -> &Xdp {
        // Every program named here was found and loaded in `open`.
        self.ebpf
            .program(name)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("programs are checked at load")
    }

    /// Attaches the data plane to `iface`. Unpinned, it detaches when `self` is
    /// dropped. Pinned, the attachment outlives the agent; if an earlier agent's
    /// attachment is pinned, its program is replaced atomically by ours (an upgrade
    /// never leaves the interface without a program).
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        match self.pin_dir.clone() {
            Some(dir) => {
                self.pinned_link = Some(self.attach_pinned(iface, mode, &dir.join(LINK_PIN))?)
            }
            None => self.link = Some(self.attach_program(programs::VIP, iface, mode)?),
        }
        Ok(())
    }

    /// Attaches the data plane to `iface` in the chosen mode (see [`crate::xdpmode`])
    /// and remembers the choice. When auto chose native and the driver turns native
    /// XDP down, it falls back to generic. An adopted pinned attachment keeps the mode
    /// it was made in: the choice then says so.
    pub fn attach_chosen(&mut self, iface: &str, mut choice: Choice) -> Result<&Choice> {
        match self.attach(iface, choice.mode) {
            Err(DataplaneError::Attach { source, .. })
                if choice.requested == XdpMode::Auto && choice.mode == XdpMode::Native =>
            {
                self.attach(iface, XdpMode::Skb)?;
                choice.mode = XdpMode::Skb;
                choice.reason = format!(
                    "auto: the driver of {iface} refused native XDP ({source}); {}",
                    choice.reason.trim_start_matches("auto: ")
                );
            }
            r => r?,
        }
        if self.adopted {
            if let Some(actual) = attached_mode(iface) {
                if actual != choice.mode {
                    choice.reason = format!(
                        "kept the adopted pinned attachment, made in {} mode (would choose {}: \
                         {}); `vip agent --cleanup` then a start applies it",
                        actual.as_str(),
                        choice.mode.as_str(),
                        choice.reason
                    );
                    choice.mode = actual;
                }
            }
        }
        if let Some(w) = &choice.warning {
            log::warn!("{w}");
        }
        Ok(self.xdp.insert(choice))
    }

    /// The mode of the main attachment and why, once attached with `attach_chosen`.
    pub fn xdp_choice(&self) -> Option<&Choice> {
        self.xdp.as_ref()
    }

    /// The data-plane program's attachment to `iface`, pinned at `link_path`: an
    /// attachment an earlier agent pinned there gets our program (bpf_link_update),
    /// otherwise a new one is made.
    fn attach_pinned(
        &mut self,
        iface: &str,
        mode: XdpMode,
        link_path: &Path,
    ) -> Result<PinnedLink> {
        let pin_err = |e: String| DataplaneError::Pin {
            path: link_path.to_path_buf(),
            source: std::io::Error::other(e),
        };
        let id = if link_path.exists() {
            let old = PinnedLink::from_pin(link_path).map_err(|e| pin_err(e.to_string()))?;
            let fd: FdLink = old.unpin().map_err(|e| pin_err(e.to_string()))?;
            let xdp = XdpLink::try_from(fd).map_err(|e| pin_err(e.to_string()))?;
            self.vip_program_mut()?.attach_to_link(xdp)?
        } else {
            self.attach_program(programs::VIP, iface, mode)?
        };
        let link = self.vip_program_mut()?.take_link(id)?;
        let fd = FdLink::try_from(link).map_err(|e| pin_err(e.to_string()))?;
        fd.pin(link_path).map_err(|e| pin_err(e.to_string()))
    }

    fn vip_program_mut(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(programs::VIP)
            .ok_or(DataplaneError::Missing("XDP program"))?
            .try_into()?)
    }

    /// Attaches the do-nothing program to `iface` (native mode). On a veth this turns
    /// on NAPI, without which the kernel silently drops frames that XDP_TX or
    /// XDP_REDIRECT send into it from its peer. Detached when `self` is dropped.
    pub fn attach_pass(&mut self, iface: &str) -> Result<()> {
        self.attach_program(programs::PASS, iface, XdpMode::Native)
            .map(|_| ())
    }

    fn attach_program(&mut self, name: &str, iface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        // Auto (a further attachment of a gateway) takes the main attachment's mode.
        let mode = match mode {
            XdpMode::Auto => self.xdp.as_ref().map_or(XdpMode::Skb, |c| c.mode),
            m => m,
        };
        let (aya_mode, mode_name) = match mode {
            XdpMode::Native => (AyaXdpMode::Driver, "native"),
            XdpMode::Skb | XdpMode::Auto => (AyaXdpMode::Skb, "skb"),
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing("XDP program"))?
            .try_into()?;
        prog.attach(iface, aya_mode)
            .map_err(|source| DataplaneError::Attach {
                iface: iface.into(),
                mode: mode_name,
                source,
            })
    }

    /// Installs or replaces the entry for a VIP (atomic for the data plane).
    pub fn set_vip(&mut self, addr: IpAddr, entry: &VipEntry) -> Result<()> {
        match addr {
            IpAddr::V4(a) => {
                let key = u32::from_ne_bytes(a.octets());
                self.vips_v4
                    .insert(key, entry, 0)
                    .map_err(map_err(maps::VIPS_V4))?;
                self.index
                    .set(&mut self.index_store, &[(key, *entry)])
                    .map_err(|source| DataplaneError::MapIo {
                        map: maps::VIP_ENTRIES_V4,
                        source,
                    })
            }
            IpAddr::V6(a) => self
                .vips_v6
                .insert(a.octets(), entry, 0)
                .map_err(map_err(maps::VIPS_V6)),
        }
    }

    /// Removes a VIP's entry; absent already is not an error.
    pub fn remove_vip(&mut self, addr: IpAddr) -> Result<()> {
        let (r, map) = match addr {
            IpAddr::V4(a) => {
                let key = u32::from_ne_bytes(a.octets());
                self.index.remove(&mut self.index_store, key);
                (self.vips_v4.remove(&key), maps::VIPS_V4)
            }
            IpAddr::V6(a) => (self.vips_v6.remove(&a.octets()), maps::VIPS_V6),
        };
        match r {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(map_err(map)(e)),
        }
    }

    /// Installs or replaces many entries with one BPF_MAP_UPDATE_BATCH per family
    /// (a takeover of thousands of VIPs in milliseconds). Each entry is replaced
    /// atomically; the batch as a whole is not.
    pub fn set_vips_batch(&mut self, entries: &[(IpAddr, VipEntry)]) -> Result<()> {
        let (mut k4, mut v4, mut k6, mut v6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut indexed = Vec::new();
        for (addr, e) in entries {
            // SAFETY: VipEntry is plain data (repr(C), no padding).
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    e as *const VipEntry as *const u8,
                    std::mem::size_of::<VipEntry>(),
                )
            };
            match addr {
                IpAddr::V4(a) => {
                    k4.extend_from_slice(&a.octets());
                    v4.extend_from_slice(bytes);
                    indexed.push((u32::from_ne_bytes(a.octets()), *e));
                }
                IpAddr::V6(a) => {
                    k6.extend_from_slice(&a.octets());
                    v6.extend_from_slice(bytes);
                }
            }
        }
        // A takeover of many VIPs: the program reads the hash map for them from the
        // moment it has the new entries, while the index catches up.
        if indexed.len() > BYPASS_FROM {
            let addrs: Vec<u32> = indexed.iter().map(|(a, _)| *a).collect();
            self.index.bypass(&mut self.index_store, &addrs);
        }
        use aya::maps::IterableMap as _;
        for (map, name, keys, values, width) in [
            (self.vips_v4.map(), maps::VIPS_V4, &k4, &v4, 4),
            (self.vips_v6.map(), maps::VIPS_V6, &k6, &v6, 16),
        ] {
            if !keys.is_empty() {
                update_batch(map.fd().as_fd(), keys, values, (keys.len() / width) as u32)
                    .map_err(|source| DataplaneError::MapIo { map: name, source })?;
            }
        }
        self.index
            .set(&mut self.index_store, &indexed)
            .map_err(|source| DataplaneError::MapIo {
                map: maps::VIP_ENTRIES_V4,
                source,
            })
    }

    /// Kernel memory charged to each map (its `memlock` in /proc/self/fdinfo).
    pub fn map_memory(&self) -> Vec<(&'static str, u64)> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsRawFd as _;
        let memlock = |fd: i32| {
            std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
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
            (
                maps::VIPS_V4,
                memlock(self.vips_v4.map().fd().as_fd().as_raw_fd()),
            ),
            (
                maps::VIPS_V6,
                memlock(self.vips_v6.map().fd().as_fd().as_raw_fd()),
            ),
            (
                maps::VIP_STATS,
                memlock(self.stats.map().fd().as_fd().as_raw_fd()),
            ),
            (
                maps::VIP_INDEX_V4,
                memlock(self.index_maps.0.map().fd().as_fd().as_raw_fd()),
            ),
            (
                maps::VIP_ENTRIES_V4,
                memlock(self.index_maps.1.map().fd().as_fd().as_raw_fd()),
            ),
        ]
    }

    /// Every VIP the data plane holds an entry for.
    pub fn vip_addrs(&self) -> Vec<IpAddr> {
        let v4 = self
            .vips_v4
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| IpAddr::from(k.to_ne_bytes()));
        let v6 = self.vips_v6.keys().filter_map(|k| k.ok()).map(IpAddr::from);
        v4.chain(v6).collect()
    }

    /// The entry the data plane holds for a VIP, if any.
    pub fn vip(&self, addr: IpAddr) -> Option<VipEntry> {
        vip_entry(&self.vips_v4, &self.vips_v6, addr)
    }

    /// A VIP's counters, summed over CPUs.
    pub fn stats(&self, index: u32) -> Result<VipStats> {
        sum_per_cpu(&self.stats, maps::VIP_STATS, index, VipStats::add)
    }

    /// Zeroes a counter slot before it is given to a VIP.
    pub fn reset_stats(&mut self, index: u32) -> Result<()> {
        zero_per_cpu(&mut self.stats, maps::VIP_STATS, index)
    }

    /// Program-wide counters, by name, summed over CPUs.
    pub fn global_stats(&self) -> Result<Vec<(&'static str, u64)>> {
        self.reader()?.global_stats()
    }

    /// Grants a group a lease until `deadline_ns` (CLOCK_BOOTTIME, `host::boottime_ns`),
    /// whatever it held: only for a decision to take the VIPs (or to forward, which
    /// never answers for them). One 8-byte array write: never torn.
    pub fn grant_lease(&mut self, group: u32, deadline_ns: u64) -> Result<()> {
        self.leases
            .set(group, deadline_ns, 0)
            .map_err(map_err(maps::LEASES))
    }

    /// Ends a group's lease now: its leased entries stop answering at once.
    pub fn revoke_lease(&mut self, group: u32) -> Result<()> {
        self.grant_lease(group, 0)
    }

    /// Sets whether a group's entries answer ARP/NS and probes (`QUIET`): a planned
    /// handover stops answering first, while the entries still steer.
    pub fn set_quiet(&mut self, group: u32, quiet: bool) -> Result<()> {
        self.quiet
            .set(group, u32::from(quiet), 0)
            .map_err(map_err(maps::QUIET))
    }

    /// True while a group's entries answer nothing (a handover had begun).
    pub fn quiet(&self, group: u32) -> Result<bool> {
        Ok(self.quiet.get(&group, 0).map_err(map_err(maps::QUIET))? != 0)
    }

    /// The deadline in force for a group (0: none).
    pub fn lease(&self, group: u32) -> Result<u64> {
        self.leases.get(&group, 0).map_err(map_err(maps::LEASES))
    }

    /// Extends a group's lease from `expect` to `deadline_ns`, only if `expect` is
    /// what is in force and has not run out: the kernel checks and writes in one run
    /// of `vip_lease` (see `vip_common::lease`).
    pub fn extend_lease(&mut self, group: u32, expect: u64, deadline_ns: u64) -> Result<Extension> {
        use vip_common::lease;
        let req = lease::Request {
            magic: lease::MAGIC,
            group,
            key: self.lease_key,
            expect,
            deadline: deadline_ns,
            found: 0,
            now: 0,
        };
        // SAFETY: Request is repr(C), Copy, with no padding (size asserted).
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&req as *const lease::Request).cast::<u8>(),
                std::mem::size_of::<lease::Request>(),
            )
        };
        let out = run(self.program_named(programs::LEASE), bytes, 1)?;
        let back = (out.frame.len() == bytes.len()).then(|| {
            // SAFETY: the program wrote a Request's worth of bytes; read unaligned.
            unsafe { std::ptr::read_unaligned(out.frame.as_ptr().cast::<lease::Request>()) }
        });
        let (found, now) = back.map(|r| (r.found, r.now)).unwrap_or((0, 0));
        match out.action {
            lease::EXTENDED => Ok(Extension::Extended),
            lease::EXPIRED => Ok(Extension::Expired { found, now }),
            lease::CHANGED => Ok(Extension::Changed { found }),
            code => Err(DataplaneError::LeaseRefused(code)),
        }
    }

    /// Makes `ifindex` a redirect target.
    pub fn add_redirect_target(&mut self, ifindex: u32) -> Result<()> {
        self.redirect
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::MapIo {
                map: maps::REDIRECT_DEVS,
                source: std::io::Error::other(e.to_string()),
            })
    }

    /// Runs one frame through the data plane with BPF_PROG_TEST_RUN.
    pub fn test_run(&self, frame: &[u8]) -> std::result::Result<TestOutcome, ProgramError> {
        run(self.program(), frame, 1)
    }
}

/// The benchmarks' generator (`vip_bench_tx`) and counting sink (`vip_bench_sink`),
/// loaded from their own object, apart from any data plane.
pub struct BenchPrograms {
    ebpf: Ebpf,
}

impl BenchPrograms {
    pub fn load() -> Result<Self> {
        if BENCH_OBJECT.is_empty() {
            return Err(DataplaneError::Stub);
        }
        let mut ebpf = EbpfLoader::new().load(BENCH_OBJECT)?;
        for name in [programs::BENCH_TX, programs::BENCH_SINK] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing("benchmark XDP program"))?
                .try_into()?;
            prog.load()?;
        }
        Ok(BenchPrograms { ebpf })
    }

    /// The generator, for BPF_PROG_TEST_RUN in live-frames mode.
    pub fn generator(&self) -> &Xdp {
        self.ebpf
            .program(programs::BENCH_TX)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("programs are checked at load")
    }

    /// Attaches the counting sink to `iface` (detached when `self` is dropped).
    pub fn attach_sink(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        let (aya_mode, mode_name) = match mode {
            XdpMode::Native | XdpMode::Auto => (AyaXdpMode::Driver, "native"),
            XdpMode::Skb => (AyaXdpMode::Skb, "skb"),
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(programs::BENCH_SINK)
            .ok_or(DataplaneError::Missing("benchmark XDP program"))?
            .try_into()?;
        prog.attach(iface, aya_mode)
            .map(|_| ())
            .map_err(|source| DataplaneError::Attach {
                iface: iface.into(),
                mode: mode_name,
                source,
            })
    }

    /// The 60-byte frame the generator sends.
    pub fn set_frame(&mut self, frame: &[u8]) -> Result<()> {
        let mut t = [0u8; 64];
        let n = frame.len().min(60);
        t[..n].copy_from_slice(&frame[..n]);
        let map = self
            .ebpf
            .map_mut(maps::BENCH_FRAME)
            .ok_or(DataplaneError::Missing(maps::BENCH_FRAME))?;
        let mut arr =
            Array::<&mut MapData, [u8; 64]>::try_from(map).map_err(map_err(maps::BENCH_FRAME))?;
        arr.set(0, t, 0).map_err(map_err(maps::BENCH_FRAME))
    }

    /// Spreads the generator's frames over `n` flows (UDP source ports from the
    /// frame's own up); 0 or 1: every frame is the frame set by [`Self::set_frame`].
    pub fn set_flows(&mut self, n: u32) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(maps::BENCH_FLOWS)
            .ok_or(DataplaneError::Missing(maps::BENCH_FLOWS))?;
        let mut arr =
            Array::<&mut MapData, u32>::try_from(map).map_err(map_err(maps::BENCH_FLOWS))?;
        arr.set(0, n, 0).map_err(map_err(maps::BENCH_FLOWS))
    }

    /// Spreads the generator's frames over `n` IPv4 sources (the frame's own source
    /// address up, in its last 16 bits); 0 or 1: every frame has the frame's source.
    pub fn set_sources(&mut self, n: u32) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(maps::BENCH_SOURCES)
            .ok_or(DataplaneError::Missing(maps::BENCH_SOURCES))?;
        let mut arr =
            Array::<&mut MapData, u32>::try_from(map).map_err(map_err(maps::BENCH_SOURCES))?;
        arr.set(0, n, 0).map_err(map_err(maps::BENCH_SOURCES))
    }

    /// Frames counted by the sink so far (summed over CPUs).
    pub fn count(&self) -> u64 {
        let Some(map) = self.ebpf.map(maps::BENCH_COUNT) else {
            return 0;
        };
        let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return 0;
        };
        arr.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

/// The mode an XDP program is attached to `iface` in, as the kernel reports it.
fn attached_mode(iface: &str) -> Option<XdpMode> {
    let index = nix::net::if_::if_nametoindex(iface).ok()?;
    let link = crate::netlink::Netlink::open()
        .and_then(|nl| nl.link(index, None))
        .ok()?;
    match (link.xdp_native, link.xdp_generic) {
        (true, _) => Some(XdpMode::Native),
        (false, true) => Some(XdpMode::Skb),
        _ => None,
    }
}

/// BPF_MAP_UPDATE_BATCH: `count` keys and values, laid out back to back.
pub(crate) fn update_batch(
    fd: std::os::fd::BorrowedFd<'_>,
    keys: &[u8],
    values: &[u8],
    count: u32,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    /// The `batch` member of union bpf_attr.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: fd.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: attr points at valid key and value buffers of `count` entries for the
    // duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.count != count {
        return Err(std::io::Error::other(format!(
            "batch update stopped after {} of {count} entries",
            attr.count
        )));
    }
    Ok(())
}

/// A per-CPU counter slot, summed.
fn sum_per_cpu<T: aya::Pod + Default>(
    map: &PerCpuArray<MapData, T>,
    name: &'static str,
    index: u32,
    add: fn(&mut T, &T),
) -> Result<T> {
    let per_cpu = map.get(&index, 0).map_err(map_err(name))?;
    let mut sum = T::default();
    for s in per_cpu.iter() {
        add(&mut sum, s);
    }
    Ok(sum)
}

/// Zeroes a per-CPU counter slot on every CPU.
fn zero_per_cpu<T: aya::Pod + Default>(
    map: &mut PerCpuArray<MapData, T>,
    name: &'static str,
    index: u32,
) -> Result<()> {
    let io = |source| DataplaneError::MapIo { map: name, source };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| io(e))?;
    let zero =
        PerCpuValues::try_from((0..cpus).map(|_| T::default()).collect::<Vec<_>>()).map_err(io)?;
    map.set(index, zero, 0).map_err(map_err(name))
}

/// What BPF_PROG_TEST_RUN reported for one frame.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    pub action: u32,
    pub frame: Vec<u8>,
    /// Average time per run.
    pub duration: std::time::Duration,
}

/// Runs `frame` through `prog` `repeat` times (the kernel averages the duration).
pub fn run(
    prog: &Xdp,
    frame: &[u8],
    repeat: u32,
) -> std::result::Result<TestOutcome, ProgramError> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat;
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok(TestOutcome {
        action: r.return_value,
        frame: out,
        duration: r.duration,
    })
}

/// XDP return codes by name, for messages and tables.
pub fn action_name(code: u32) -> &'static str {
    vip_common::xdp::name(code)
}

/// Read-only handles on the data plane's entries and counters (their own file
/// descriptors), so status and metrics are read on another thread than the agent's
/// loop: a scrape of 20k VIPs never delays an advertisement.
pub struct Reader {
    vips_v4: HashMap<MapData, u32, VipEntry>,
    vips_v6: HashMap<MapData, [u8; 16], VipEntry>,
    stats: PerCpuArray<MapData, VipStats>,
    global: PerCpuArray<MapData, u64>,
    owners: HashMap<MapData, u32, Owner>,
    eip_stats: PerCpuArray<MapData, EipStats>,
    balance_stats: PerCpuArray<MapData, BalanceStats>,
}

/// A VIP's entry in whichever family's map holds it.
fn vip_entry(
    v4: &HashMap<MapData, u32, VipEntry>,
    v6: &HashMap<MapData, [u8; 16], VipEntry>,
    addr: IpAddr,
) -> Option<VipEntry> {
    match addr {
        IpAddr::V4(a) => v4.get(&u32::from_ne_bytes(a.octets()), 0).ok(),
        IpAddr::V6(a) => v6.get(&a.octets(), 0).ok(),
    }
}

/// The balanced groups' maps (see `vip_common::balance_maps`). Not pinned: a director's
/// table is rebuilt from the membership at every start.
struct BalanceMaps {
    table: Array<MapData, u64>,
    members: Array<MapData, BalanceMember>,
    conf: Array<MapData, BalanceConf>,
    ports: HashMap<MapData, u64, u32>,
    stats: PerCpuArray<MapData, BalanceStats>,
    nodes: HashMap<MapData, u64, u32>,
}

impl Dataplane {
    /// Programs balance slot `slot`: its ports (`all` or the listed (protocol, port)
    /// pairs, replacing `old_ports`), its members (by index) and its Maglev table.
    /// The table is written with one batch: each word is replaced atomically, the
    /// table as a whole is not (a flow whose slot moves may see either member once).
    pub fn set_balance(
        &mut self,
        slot: u32,
        all: bool,
        old_ports: &[(u8, u16)],
        ports: &[(u8, u16)],
        members: &[BalanceMember],
        table: &[u16],
    ) -> Result<()> {
        use aya::maps::IterableMap as _;
        if slot >= balance_maps::MAX_BALANCED_GROUPS
            || members.len() > balance_maps::MAX_MEMBERS as usize
        {
            return Err(DataplaneError::Missing("a balance slot"));
        }
        let b = &mut self.balance;
        for (p, port) in old_ports {
            if !ports.contains(&(*p, *port)) {
                let _ = b.ports.remove(&balance_maps::port_key(slot, *p, *port));
            }
        }
        for (p, port) in ports {
            b.ports
                .insert(balance_maps::port_key(slot, *p, *port), 1, 0)
                .map_err(map_err(maps::BALANCE_PORTS))?;
        }
        b.conf
            .set(
                slot,
                BalanceConf {
                    all_ports: all as u32,
                    _pad: 0,
                },
                0,
            )
            .map_err(map_err(maps::BALANCE_CONF))?;
        for i in 0..balance_maps::MAX_MEMBERS as usize {
            let m = members.get(i).copied().unwrap_or_default();
            b.members
                .set(slot * balance_maps::MAX_MEMBERS + i as u32, m, 0)
                .map_err(map_err(maps::BALANCE_MEMBERS))?;
        }
        let words = balance_maps::WORDS as usize;
        let (mut keys, mut values) = (Vec::with_capacity(words * 4), Vec::with_capacity(words * 8));
        for w in 0..words {
            let mut word = 0u64;
            for j in 0..4 {
                let v = table
                    .get(w * 4 + j)
                    .copied()
                    .unwrap_or(vip_common::maglev::NO_MEMBER);
                word |= (v as u64) << (16 * j);
            }
            keys.extend_from_slice(&(slot * balance_maps::WORDS + w as u32).to_ne_bytes());
            values.extend_from_slice(&word.to_ne_bytes());
        }
        update_batch(b.table.map().fd().as_fd(), &keys, &values, words as u32).map_err(|source| {
            DataplaneError::MapIo {
                map: maps::BALANCE_TABLE,
                source,
            }
        })
    }

    /// Replaces balance slot `slot`'s node MACs, `old` (as last written), with `new`:
    /// a member delivers locally what these send it (see `vip_common::flags::BALANCED`).
    /// The new ones go in first, so a node that stays is never missing.
    pub fn set_balance_nodes(&mut self, slot: u32, old: &[[u8; 6]], new: &[[u8; 6]]) -> Result<()> {
        if slot >= balance_maps::MAX_BALANCED_GROUPS
            || new.len() > balance_maps::MAX_MEMBERS as usize
        {
            return Err(DataplaneError::Missing("a balance slot"));
        }
        let nodes = &mut self.balance.nodes;
        for mac in new {
            nodes
                .insert(balance_maps::node_key(slot, mac), 1, 0)
                .map_err(map_err(maps::BALANCE_NODES))?;
        }
        for mac in old.iter().filter(|m| !new.contains(m)) {
            let _ = nodes.remove(&balance_maps::node_key(slot, mac));
        }
        Ok(())
    }

    /// What the director sent to member `index` of slot `slot`, summed over CPUs.
    pub fn balance_stats(&self, slot: u32, index: u32) -> Result<BalanceStats> {
        sum_per_cpu(
            &self.balance.stats,
            maps::BALANCE_STATS,
            slot * balance_maps::MAX_MEMBERS + index,
            BalanceStats::add,
        )
    }

    /// Admits datagrams from `key.src` to `key.dst` to the election's port, on the
    /// terms of `peer` (replaced whole: its budgets start afresh).
    pub fn set_peer(&mut self, key: &PeerKey, peer: &Peer) -> Result<()> {
        self.peers
            .insert(key, peer, 0)
            .map_err(map_err(maps::PEERS))
    }

    /// No longer admits that pair; absent already is not an error.
    pub fn remove_peer(&mut self, key: &PeerKey) -> Result<()> {
        match self.peers.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(map_err(maps::PEERS)(e)),
        }
    }

    /// Every pair admitted to the election's port, with its entry.
    pub fn peers(&self) -> Vec<(PeerKey, Peer)> {
        self.peers.iter().filter_map(|r| r.ok()).collect()
    }

    /// The prober's own handle on `ECHO_SEEN` (it runs on its own thread).
    pub fn echo_seen(&self) -> Result<Array<MapData, EchoSeen>> {
        use aya::maps::IterableMap as _;
        let map = dup_map(self.echo_seen.map(), maps::ECHO_SEEN)?;
        Array::try_from(aya::maps::Map::Array(map)).map_err(map_err(maps::ECHO_SEEN))
    }
}

/// A second handle on a map, through a duplicated file descriptor.
fn dup_map(map: &MapData, name: &'static str) -> Result<MapData> {
    let fd = map
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DataplaneError::MapIo { map: name, source })?;
    MapData::from_fd(fd).map_err(map_err(name))
}

fn dup_hash<K: aya::Pod, V: aya::Pod>(
    m: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>> {
    use aya::maps::IterableMap as _;
    HashMap::try_from(aya::maps::Map::HashMap(dup_map(m.map(), name)?)).map_err(map_err(name))
}

fn dup_per_cpu<V: aya::Pod>(
    m: &PerCpuArray<MapData, V>,
    name: &'static str,
) -> Result<PerCpuArray<MapData, V>> {
    use aya::maps::IterableMap as _;
    PerCpuArray::try_from(aya::maps::Map::PerCpuArray(dup_map(m.map(), name)?))
        .map_err(map_err(name))
}

impl Dataplane {
    /// Read-only handles for another thread.
    pub fn reader(&self) -> Result<Reader> {
        Ok(Reader {
            vips_v4: dup_hash(&self.vips_v4, maps::VIPS_V4)?,
            vips_v6: dup_hash(&self.vips_v6, maps::VIPS_V6)?,
            stats: dup_per_cpu(&self.stats, maps::VIP_STATS)?,
            global: dup_per_cpu(&self.global, maps::GLOBAL_STATS)?,
            owners: dup_hash(&self.owners, maps::OWNERS)?,
            eip_stats: dup_per_cpu(&self.eip_stats, maps::EIP_STATS)?,
            balance_stats: dup_per_cpu(&self.balance.stats, maps::BALANCE_STATS)?,
        })
    }
}

impl Reader {
    /// What the director sent to member `index` of balance slot `slot`.
    pub fn balance_stats(&self, slot: u32, index: u32) -> Result<BalanceStats> {
        sum_per_cpu(
            &self.balance_stats,
            maps::BALANCE_STATS,
            slot * balance_maps::MAX_MEMBERS + index,
            BalanceStats::add,
        )
    }

    /// The entry the data plane holds for a VIP, if any.
    pub fn vip(&self, addr: IpAddr) -> Option<VipEntry> {
        vip_entry(&self.vips_v4, &self.vips_v6, addr)
    }

    /// A VIP's counters, summed over CPUs.
    pub fn stats(&self, index: u32) -> Result<VipStats> {
        sum_per_cpu(&self.stats, maps::VIP_STATS, index, VipStats::add)
    }

    /// Program-wide counters, by name, summed over CPUs. A pinned map adopted from an
    /// older vip may hold fewer counters than this one names (aya reuses a pin as it
    /// is): those it lacks read 0, the program's increments of them find no slot.
    pub fn global_stats(&self) -> Result<Vec<(&'static str, u64)>> {
        use aya::maps::IterableMap as _;
        let held = self
            .global
            .map()
            .info()
            .map(|i| i.max_entries())
            .map_err(map_err(maps::GLOBAL_STATS))?;
        let mut out = Vec::new();
        for i in 0..global::COUNT {
            let sum = if i < held {
                let v = self
                    .global
                    .get(&i, 0)
                    .map_err(map_err(maps::GLOBAL_STATS))?;
                v.iter().sum()
            } else {
                0
            };
            out.push((global::NAMES[i as usize], sum));
        }
        Ok(out)
    }

    /// The owner the gateway learned for a VIP.
    pub fn owner(&self, vip: std::net::Ipv4Addr) -> Option<Owner> {
        self.owners.get(&u32::from_ne_bytes(vip.octets()), 0).ok()
    }

    pub fn eip_stats(&self, index: u32) -> Result<EipStats> {
        sum_per_cpu(&self.eip_stats, maps::EIP_STATS, index, EipStats::add)
    }
}
