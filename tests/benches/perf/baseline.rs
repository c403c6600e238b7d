//! An earlier vip's data plane, for figures measured against it in the same run:
//! the XDP object embedded in an older `vip` binary (`--baseline FILE`), loaded as
//! that binary's agent would load it for `Dataplane::open(64, ..)`, with the few
//! entries the `paths` benchmark needs written in the layouts that did not change
//! (VIP entries, the IPv4 index, redirect targets).

use std::{net::Ipv4Addr, path::Path};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{xdp::DevMapHash, Array, HashMap, MapData},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use vip_common::{globals, index, maps, programs, IndexedEntry, VipEntry};

/// Capacity the benchmark's data planes are loaded with.
const MAX_VIPS: u32 = 64;

pub struct Baseline {
    ebpf: Ebpf,
    /// The binary it came from, for the figures' labels.
    pub name: String,
    next_entry: u32,
}

/// An object copied out of a binary, 8-aligned (aya parses the ELF in place).
struct Object {
    words: Vec<u64>,
    len: usize,
}

impl Object {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the u64 buffer holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }
}

/// The BPF ELF objects embedded in `binary` (EM_BPF, 64-bit little endian), each
/// copied out whole (the section headers end it, as LLVM lays them out).
fn embedded_objects(binary: &[u8]) -> Vec<Object> {
    const MAGIC: &[u8] = b"\x7fELF\x02\x01\x01";
    const EM_BPF: u16 = 247;
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = binary[at..].windows(MAGIC.len()).position(|w| w == MAGIC) {
        let start = at + i;
        at = start + 1;
        let h = &binary[start..];
        if h.len() < 64 || u16::from_le_bytes([h[18], h[19]]) != EM_BPF {
            continue;
        }
        let shoff = u64::from_le_bytes(h[40..48].try_into().unwrap_or_default()) as usize;
        let (entsize, num) = (
            u16::from_le_bytes([h[58], h[59]]) as usize,
            u16::from_le_bytes([h[60], h[61]]) as usize,
        );
        let len = shoff.saturating_add(entsize * num);
        if len <= h.len() && len > 64 {
            let mut words = vec![0u64; len.div_ceil(8)];
            for (w, chunk) in words.iter_mut().zip(h[..len].chunks(8)) {
                let mut b = [0u8; 8];
                b[..chunk.len()].copy_from_slice(chunk);
                *w = u64::from_ne_bytes(b);
            }
            out.push(Object { words, len });
            at = start + len;
        }
    }
    out
}

impl Baseline {
    /// The data plane of the `vip` binary at `path`, its election port `echo_port`.
    pub fn load(path: &Path, echo_port: u32) -> Result<Self> {
        let binary = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let bits = index::bits(MAX_VIPS);
        let shift = 32 - bits;
        for object in embedded_objects(&binary) {
            let mut loader = EbpfLoader::new();
            loader
                .override_global(globals::VIP_IFINDEX, &0u32, true)
                .override_global(globals::EIP_ENABLED, &0u32, true)
                .override_global(globals::ECHO_PORT, &echo_port, true)
                .override_global(globals::BALANCE_ENABLED, &0u32, true)
                .override_global(globals::VIP_INDEX_SHIFT, &shift, true)
                .map_max_entries(maps::VIP_INDEX_V4, 1 << bits)
                .map_max_entries(maps::VIP_ENTRIES_V4, index::entries(MAX_VIPS))
                .map_max_entries(maps::VIPS_V4, MAX_VIPS)
                .map_max_entries(maps::VIPS_V6, MAX_VIPS)
                .map_max_entries(maps::VIP_STATS, MAX_VIPS);
            let Ok(mut ebpf) = loader.load(object.bytes()) else {
                continue;
            };
            if ebpf.program(programs::VIP).is_none() {
                continue;
            }
            let prog: &mut Xdp = ebpf
                .program_mut(programs::VIP)
                .context("no data plane in the baseline's object")?
                .try_into()?;
            prog.load().context("loading the baseline's data plane")?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok(Baseline {
                ebpf,
                name,
                next_entry: 0,
            });
        }
        bail!("{} embeds no vip data plane", path.display())
    }

    pub fn program(&self) -> &Xdp {
        self.prog(programs::VIP)
    }

    fn prog(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("checked at load")
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("no map {name} in the baseline"))
    }

    /// An IPv4 VIP in the hash map and in the index (its own entry and slot).
    pub fn set_vip(&mut self, addr: Ipv4Addr, e: &VipEntry) -> Result<()> {
        let key = u32::from_ne_bytes(addr.octets());
        HashMap::<&mut MapData, u32, VipEntry>::try_from(self.map(maps::VIPS_V4)?)?
            .insert(key, e, 0)?;
        let at = self.next_entry;
        self.next_entry += 1;
        Array::<&mut MapData, IndexedEntry>::try_from(self.map(maps::VIP_ENTRIES_V4)?)?.set(
            at,
            IndexedEntry {
                addr: key,
                _pad: 0,
                entry: *e,
            },
            0,
        )?;
        let slot = index::slot(key, 32 - index::bits(MAX_VIPS));
        Array::<&mut MapData, u64>::try_from(self.map(maps::VIP_INDEX_V4)?)?.set(
            slot,
            index::pack(key, at + 1),
            0,
        )?;
        Ok(())
    }

    pub fn set_vip6(&mut self, addr: std::net::Ipv6Addr, e: &VipEntry) -> Result<()> {
        HashMap::<&mut MapData, [u8; 16], VipEntry>::try_from(self.map(maps::VIPS_V6)?)?.insert(
            addr.octets(),
            e,
            0,
        )?;
        Ok(())
    }

    pub fn add_redirect_target(&mut self, ifindex: u32) -> Result<()> {
        DevMapHash::<&mut MapData>::try_from(self.map(maps::REDIRECT_DEVS)?)?
            .insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }
}
