//! Loading, attaching and pinning: the embedded object loaded with this node's
//! load-time globals (the verifier runs here), the parts taken out of it, the
//! program's attachments to interfaces (pinned, so they outlive the agent, or not),
//! the pins of the maps an upgrade adopts, and the interfaces XDP_REDIRECT may send
//! to (`REDIRECT_DEVS`).

use std::path::{Path, PathBuf};

use aya::{
    maps::{
        xdp::{CpuMap, DevMapHash},
        MapData,
    },
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        Xdp, XdpMode as AyaXdpMode,
    },
    Ebpf, EbpfLoader,
};
use vip_common::{globals, maps, programs, Settings};

use super::{
    director::Director, eips::Eips, leases::Leases, peers::Peers, vip_index::Index, vips::Vips,
    Dataplane, DataplaneError, Result,
};
use crate::{config::XdpMode, xdpmode::Choice};

/// The XDP object built by build.rs (empty in a VIP_EBPF_STUB build).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vip.bpf.o"));

/// The pinned objects, one file each under the pin directory.
const PINNED_MAPS: [&str; 15] = [
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
    maps::ROUTES6,
    maps::OWNERS_V6,
    maps::ROUTE6_STATS,
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

/// The loaded object, its attachments and its pins.
pub(super) struct Program {
    /// The programs (the maps were taken out into the parts).
    ebpf: Ebpf,
    redirect: DevMapHash<MapData>,
    /// The per-CPU queues that build skbs anew (see [`Dataplane::readdress_by_cpu`]),
    /// and whether they are filled.
    readdress: CpuMap<MapData>,
    readdressing: bool,
    link: Option<XdpLinkId>,
    /// Attachments to further interfaces (a gateway's external side).
    extra_links: Vec<(String, Option<PinnedLink>)>,
    /// Where the maps and the attachment are pinned, if they are.
    pin_dir: Option<PathBuf>,
    pinned_link: Option<PinnedLink>,
    adopted: bool,
    /// The mode of the main attachment and why (see [`Dataplane::attach_chosen`]).
    xdp: Option<Choice>,
}

impl Program {
    /// A program `open` found and loaded.
    pub(super) fn xdp(&self, name: &str) -> &Xdp {
        // Every program named here was found and loaded in `open`.
        self.ebpf
            .program(name)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("programs are checked at load")
    }

    fn xdp_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing("XDP program"))?
            .try_into()?)
    }

    fn attach(&mut self, name: &str, iface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        // Auto (a further attachment of a gateway) takes the main attachment's mode.
        let mode = match mode {
            XdpMode::Auto => self.xdp.as_ref().map_or(XdpMode::Skb, |c| c.mode),
            m => m,
        };
        let (aya_mode, mode_name) = match mode {
            XdpMode::Native => (AyaXdpMode::Driver, "native"),
            XdpMode::Skb | XdpMode::Auto => (AyaXdpMode::Skb, "skb"),
        };
        self.xdp_mut(name)?
            .attach(iface, aya_mode)
            .map_err(|source| DataplaneError::Attach {
                iface: iface.into(),
                mode: mode_name,
                source,
            })
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
            self.xdp_mut(programs::VIP)?.attach_to_link(xdp)?
        } else {
            self.attach(programs::VIP, iface, mode)?
        };
        let link = self.xdp_mut(programs::VIP)?.take_link(id)?;
        let fd = FdLink::try_from(link).map_err(|e| pin_err(e.to_string()))?;
        fd.pin(link_path).map_err(|e| pin_err(e.to_string()))
    }
}

/// Frames each CPU's readdressing queue holds (as xdp-tools' default).
const READDRESS_QUEUE: u32 = 2048;

/// The CPUs the kernel may ever have (the size of per-CPU maps), at least 1.
fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |n| n.max(1) as u32)
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
        let index = Index::new(max_vips);
        let shift = index.shift();
        let lease_key = crate::advert::new_epoch();
        let mut loader = EbpfLoader::new();
        loader
            .override_global(globals::VIP_IFINDEX, &settings.vip_ifindex, true)
            .override_global(globals::EIP_ENABLED, &settings.eip_enabled, true)
            .override_global(globals::ECHO_PORT, &settings.echo_port, true)
            .override_global(globals::BALANCE_ENABLED, &settings.balance_enabled, true)
            .override_global(globals::TUNNEL_SRC, &settings.tunnel_src, true)
            .override_global(globals::VIP_INDEX_SHIFT, &shift, true)
            .override_global(globals::LEASE_KEY, &lease_key, true)
            .map_max_entries(maps::VIP_INDEX_V4, Index::slots(max_vips))
            .map_max_entries(maps::VIP_ENTRIES_V4, vip_common::index::entries(max_vips))
            .map_max_entries(maps::VIP_INDEX_V6, Index::slots(max_vips))
            .map_max_entries(maps::VIP_ENTRIES_V6, vip_common::index::entries(max_vips))
            .map_max_entries(maps::VIPS_V4, max_vips)
            .map_max_entries(maps::VIPS_V6, max_vips)
            .map_max_entries(maps::VIP_STATS, max_vips)
            .map_max_entries(maps::READDRESS, possible_cpus());
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
        let vips = Vips::take(&mut ebpf, index, max_vips)?;
        let leases = Leases::take(&mut ebpf, lease_key)?;
        let eips = Eips::take(&mut ebpf)?;
        let director = Director::take(&mut ebpf)?;
        let peers = Peers::take(&mut ebpf)?;
        let echo_seen = super::take(&mut ebpf, maps::ECHO_SEEN)?;
        let global = super::take(&mut ebpf, maps::GLOBAL_STATS)?;
        let redirect = super::take(&mut ebpf, maps::REDIRECT_DEVS)?;
        let readdress = super::take(&mut ebpf, maps::READDRESS)?;
        Ok(Dataplane {
            program: Program {
                ebpf,
                redirect,
                readdress,
                readdressing: false,
                link: None,
                extra_links: Vec::new(),
                pin_dir: pin_dir.map(Path::to_path_buf),
                pinned_link: None,
                adopted,
                xdp: None,
            },
            vips,
            leases,
            eips,
            director,
            peers,
            echo_seen,
            global,
        })
    }

    /// Has frames readdressed from a group's virtual MAC to ours reach the local stack
    /// through a per-CPU queue (`READDRESS`), which builds their skb anew: needed on a
    /// veth in native mode, whose skb the kernel has classified as another host's
    /// before the program runs (a NIC's driver builds it after). Idempotent. One
    /// queue per online CPU, each a kernel thread.
    pub fn readdress_by_cpu(&mut self) -> Result<()> {
        if self.program.readdressing {
            return Ok(());
        }
        let cpus = aya::util::online_cpus().map_err(|(what, e)| DataplaneError::MapIo {
            map: maps::READDRESS,
            source: std::io::Error::new(e.kind(), format!("{what}: {e}")),
        })?;
        for cpu in cpus {
            self.program
                .readdress
                .set(cpu, READDRESS_QUEUE, None, 0)
                .map_err(|e| DataplaneError::MapIo {
                    map: maps::READDRESS,
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        self.program.readdressing = true;
        Ok(())
    }

    /// True when an earlier agent's pinned data plane was found and reused.
    pub fn adopted(&self) -> bool {
        self.program.adopted
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.program.pin_dir.as_deref()
    }

    /// Attaches the data plane to `iface`. Unpinned, it detaches when `self` is
    /// dropped. Pinned, the attachment outlives the agent; if an earlier agent's
    /// attachment is pinned, its program is replaced atomically by ours (an upgrade
    /// never leaves the interface without a program).
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        let p = &mut self.program;
        match p.pin_dir.clone() {
            Some(dir) => p.pinned_link = Some(p.attach_pinned(iface, mode, &dir.join(LINK_PIN))?),
            None => p.link = Some(p.attach(programs::VIP, iface, mode)?),
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
        if self.program.adopted {
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
        Ok(self.program.xdp.insert(choice))
    }

    /// The mode of the main attachment and why, once attached with `attach_chosen`.
    pub fn xdp_choice(&self) -> Option<&Choice> {
        self.program.xdp.as_ref()
    }

    /// Attaches the same program (same maps) to a further interface: a gateway's
    /// external side. Pinned as `link-<iface>` next to the main attachment.
    pub fn attach_extra(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        let p = &mut self.program;
        let pinned = match p.pin_dir.clone() {
            Some(d) => {
                Some(p.attach_pinned(iface, mode, &d.join(format!("{LINK_PIN}-{iface}")))?)
            }
            None => {
                p.attach(programs::VIP, iface, mode)?;
                None
            }
        };
        p.extra_links.push((iface.to_string(), pinned));
        Ok(())
    }

    /// Whether [`Self::attach_extra`] attached the program to `iface` already.
    pub fn attached_extra(&self, iface: &str) -> bool {
        self.program.extra_links.iter().any(|(n, _)| n == iface)
    }

    /// Attaches the do-nothing program to `iface` (native mode). On a veth this turns
    /// on NAPI, without which the kernel silently drops frames that XDP_TX or
    /// XDP_REDIRECT send into it from its peer. Detached when `self` is dropped.
    pub fn attach_pass(&mut self, iface: &str) -> Result<()> {
        self.program
            .attach(programs::PASS, iface, XdpMode::Native)
            .map(|_| ())
    }

    /// Makes `ifindex` a redirect target.
    pub fn add_redirect_target(&mut self, ifindex: u32) -> Result<()> {
        self.program
            .redirect
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::MapIo {
                map: maps::REDIRECT_DEVS,
                source: std::io::Error::other(e.to_string()),
            })
    }

    /// Detaches the program and removes every pin (a real stop or uninstall).
    pub fn detach_and_unpin(&mut self) -> Result<()> {
        let p = &mut self.program;
        for (_, link) in p.extra_links.drain(..) {
            if let Some(l) = link {
                drop(l.unpin());
            }
        }
        if let Some(link) = p.pinned_link.take() {
            let path = p
                .pin_dir
                .as_ref()
                .map(|d| d.join(LINK_PIN))
                .unwrap_or_default();
            let fd = link
                .unpin()
                .map_err(|source| DataplaneError::Pin { path, source })?;
            drop(fd);
        }
        if let Some(dir) = p.pin_dir.take() {
            remove_pins(&dir).map_err(|source| DataplaneError::Pin { path: dir, source })?;
        }
        Ok(())
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
