//! `paths` on a gateway: the elastic-IP paths (inbound and outbound translation, the
//! owner-learning ARP, the EIP's ARP answer) and what every other frame pays there,
//! against the XDP_PASS floor.
//!
//! With `VIP_BENCH_BASELINE_OBJECT=FILE` (an earlier build's `vip.bpf.o`, e.g.
//! extracted from its binary), the same frames also run through that object, loaded
//! with the same map contents and interleaved with this one round by round; each row
//! then carries the baseline's figure and the median of the per-round ratios
//! (`vs_baseline`, this build over the baseline).
//!
//! BPF_PROG_TEST_RUN delivers on `lo` (ifindex 1): lo is the external interface of one
//! EIP (inbound: redirected into `svc`) and the internal interface of another
//! (outbound: the FIB finds the internet host on `svc`; ARP learning). The same for
//! the routed IPv6 VIPs (`[[route6]]`): one routed from lo into `svc`, one whose
//! internal interface is lo (its owner's neighbour advertisement); a baseline object
//! without routes passes their frames.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result};
use aya::{
    maps::{xdp::DevMapHash, HashMap},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lab::frames;
use serde_json::{json, Value};
use vip::{
    dataplane::{run, Dataplane},
    mac::Mac,
};
use vip_common::{
    eip_flags, globals, maps, programs, EipEntry, EipNodeKey, Owner, Route6Entry, Settings,
};

use crate::{cost, median, record, single_cost, Size, CLIENT, CLIENT4, OWN};

const LO: u32 = 1;
const EIP_IN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VIP_IN: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 50);
const EIP_OUT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const VIP_OUT: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 51);
const EIP_ANY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
const VIP_ANY: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 52);
const INET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const INET_MAC: Mac = Mac([0x02, 0, 0, 0, 1, 0x10]);
const NODE: Mac = Mac([0x02, 0, 0, 0, 1, 0x0b]);
const VIP6_IN: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 1, 0, 0, 0, 0x60);
const VIP6_NA: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 1, 0, 0, 0, 0x61);
const INET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);

/// Routes and a neighbour for the outbound path's FIB lookup; run before `paths`.
pub fn prepare(ns: &lab::Netns) -> Result<()> {
    ns.ip(&["link", "set", "lo", "up"])?;
    ns.ip(&["link", "set", "svc-peer", "up"])?;
    ns.ip(&["link", "set", "svc", "up"])?;
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "svc"])?;
    ns.ip(&[
        "neigh",
        "add",
        &INET.to_string(),
        "lladdr",
        &INET_MAC.to_string(),
        "dev",
        "svc",
        "nud",
        "permanent",
    ])?;
    ns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
    Ok(())
}

/// The entries both objects get: (entry, VIP's owner). `strict` is false for the
/// baseline, which has no flags (it learns from anyone) and reads the field as part
/// of its stats index.
fn entries(svc: u32, strict: bool) -> Vec<(EipEntry, Option<Mac>)> {
    let e = |eip: Ipv4Addr, vip: Ipv4Addr, ext, int, i: u16, flags| EipEntry {
        eip: eip.octets(),
        vip: vip.octets(),
        ext_ifindex: ext,
        int_ifindex: int,
        ext_mac: OWN.0,
        int_mac: OWN.0,
        stats_index: i,
        flags: if strict { flags } else { 0 },
    };
    vec![
        (e(EIP_IN, VIP_IN, LO, svc, 0, 0), Some(NODE)),
        (e(EIP_OUT, VIP_OUT, svc, LO, 1, 0), Some(NODE)),
        (
            e(EIP_ANY, VIP_ANY, svc, LO, 2, eip_flags::ANY_SENDER),
            Some(CLIENT),
        ),
    ]
}

/// An earlier build's object, loaded as a gateway with the same entries.
struct Baseline {
    ebpf: Ebpf,
}

impl Baseline {
    fn load(path: &str, svc: u32) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::EIP_ENABLED, &1u32, true)
            .load(&bytes)
            .with_context(|| format!("loading {path}"))?;
        for name in [programs::VIP, programs::PASS] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("{path} has no {name}"))?
                .try_into()?;
            p.load()?;
        }
        let map = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("{path} has no map {name}"))
        };
        let mut eips_in: HashMap<_, u32, EipEntry> =
            HashMap::try_from(map(&mut ebpf, maps::EIPS_IN)?)?;
        let mut eips_out: HashMap<_, u32, EipEntry> =
            HashMap::try_from(map(&mut ebpf, maps::EIPS_OUT)?)?;
        let mut owners: HashMap<_, u32, Owner> = HashMap::try_from(map(&mut ebpf, maps::OWNERS)?)?;
        let mut devs = DevMapHash::try_from(map(&mut ebpf, maps::REDIRECT_DEVS)?)?;
        devs.insert(svc, svc, None, 0)?;
        for (e, owner) in entries(svc, false) {
            eips_in.insert(u32::from_ne_bytes(e.eip), e, 0)?;
            eips_out.insert(u32::from_ne_bytes(e.vip), e, 0)?;
            if let Some(m) = owner {
                let o = Owner {
                    mac: m.0,
                    _pad: [0; 2],
                    updated_ns: 0,
                };
                owners.insert(u32::from_ne_bytes(e.vip), o, 0)?;
            }
        }
        // The maps live on in the program that references them.
        drop((eips_in, eips_out, owners, devs));
        Ok(Baseline { ebpf })
    }

    fn program(&self) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(programs::VIP)
            .context("no program")?
            .try_into()?)
    }
}

/// The gateway rows of `paths`, each with its own floor measured in the same rounds.
pub fn paths(size: Size) -> Result<Vec<Value>> {
    let svc = nix::net::if_::if_nametoindex("svc")?;
    let mut dp = Dataplane::open(
        64,
        None,
        Settings {
            eip_enabled: 1,
            ..Settings::default()
        },
    )?;
    dp.add_redirect_target(svc)?;
    let mut nodes = HashSet::new();
    for (i, (e, owner)) in entries(svc, true).into_iter().enumerate() {
        dp.reset_eip_stats(i as u32)?;
        dp.set_eip(&e)?;
        if let Some(m) = owner {
            dp.set_owner(Ipv4Addr::from(e.vip), m.0)?;
        }
        if e.flags & eip_flags::ANY_SENDER == 0 {
            nodes.insert(EipNodeKey::v4(e.vip, NODE.0));
        }
    }
    // The routed IPv6 VIPs: one from lo into svc, one whose internal side is lo.
    dp.add_redirect_target(LO)?;
    for (i, (vip, ext, int)) in [(VIP6_IN, LO, svc), (VIP6_NA, svc, LO)]
        .into_iter()
        .enumerate()
    {
        dp.reset_route6_stats(i as u32)?;
        dp.set_route6(&Route6Entry {
            vip: vip.octets(),
            ext_ifindex: ext,
            int_ifindex: int,
            ext_mac: OWN.0,
            int_mac: OWN.0,
            stats_index: i as u16,
            _pad: 0,
        })?;
        dp.set_route6_owner(vip, NODE.0)?;
        nodes.insert(EipNodeKey {
            vip: vip.octets(),
            mac: NODE.0,
            _pad: [0; 2],
        });
    }
    dp.set_eip_nodes(&nodes)?;
    let base_path = std::env::var("VIP_BENCH_BASELINE_OBJECT").ok();
    let base = match &base_path {
        Some(p) => Some(Baseline::load(p, svc)?),
        None => None,
    };
    let new = dp.program();
    let floor = dp.pass_program();
    let old = base.as_ref().map(Baseline::program).transpose()?;

    let garp = |m: Mac, ip| vip::frames::gratuitous_arp(m, ip);
    // Frames a repeated run leaves as they are.
    let stable: Vec<(&str, Vec<u8>)> = vec![
        (
            "gateway: IPv4, not an EIP nor a VIP",
            frames::udp4(
                OWN,
                CLIENT,
                CLIENT4,
                Ipv4Addr::new(10, 9, 0, 99),
                4000,
                53,
                &[0u8; 18],
            ),
        ),
        (
            "gateway: ARP naming an address without an EIP",
            garp(CLIENT, Ipv4Addr::new(10, 9, 1, 99)),
        ),
        (
            "gateway: a node's ARP naming the VIP, owner known (XDP_PASS)",
            garp(NODE, VIP_OUT),
        ),
        (
            "gateway: a stranger's ARP naming the VIP (refused: XDP_DROP; baseline: learned)",
            garp(CLIENT, VIP_OUT),
        ),
        (
            "gateway: ARP naming the VIP of an EIP without nodes (XDP_PASS)",
            garp(CLIENT, VIP_ANY),
        ),
        (
            "gateway: a node's NA naming a routed IPv6 VIP, owner known (XDP_PASS)",
            frames::neighbour_advertisement(OWN, NODE, VIP6_NA, INET6, true),
        ),
        (
            "gateway: a stranger's NA naming a routed IPv6 VIP (refused: XDP_DROP)",
            frames::neighbour_advertisement(OWN, CLIENT, VIP6_NA, INET6, true),
        ),
    ];
    // Frames the program rewrites into another path's: one run per call.
    let single: Vec<(&str, Vec<u8>)> = vec![
        (
            "gateway: EIP inbound, translated to the owner (XDP_REDIRECT)",
            frames::udp4(OWN, INET_MAC, INET, EIP_IN, 4000, 53, &[0u8; 18]),
        ),
        (
            "gateway: EIP outbound, translated to the FIB's next hop (XDP_REDIRECT)",
            frames::udp4(OWN, NODE, VIP_OUT, INET, 53, 4000, &[0u8; 18]),
        ),
        (
            "gateway: ARP request for the EIP, answered (XDP_TX)",
            frames::arp_request(INET_MAC, INET, EIP_IN),
        ),
        (
            "gateway: routed IPv6 VIP inbound, to the owner (XDP_REDIRECT)",
            frames::udp6(OWN, INET_MAC, INET6, VIP6_IN, 4000, 53, &[0u8; 18]),
        ),
    ];
    // Each single frame takes the path it is named for.
    for (name, f) in &single {
        let want = if name.contains("XDP_TX") { 3 } else { 4 };
        let r = run(new, f, 1).context("BPF_PROG_TEST_RUN")?;
        anyhow::ensure!(
            r.action == want,
            "{name}: {}",
            vip::dataplane::action_name(r.action)
        );
    }

    let mut out = Vec::new();
    let mut floors = Vec::new();
    let n = stable.len();
    let (mut c_new, mut c_old, mut r_floor, mut r_base) = (
        vec![Vec::new(); n],
        vec![Vec::new(); n],
        vec![Vec::new(); n],
        vec![Vec::new(); n],
    );
    for _ in 0..size.rounds {
        for (i, (_, f)) in stable.iter().enumerate() {
            let b = cost(floor, f, size.repeat)?;
            let c = cost(new, f, size.repeat)?;
            floors.push(b);
            c_new[i].push(c);
            r_floor[i].push(c / b.max(1.0));
            if let Some(old) = old {
                let o = cost(old, f, size.repeat)?;
                c_old[i].push(o);
                r_base[i].push(c / o.max(1.0));
            }
        }
    }
    let floor_ns = median(floors);
    for (i, (name, _)) in stable.iter().enumerate() {
        let v = median(c_new[i].clone());
        let mut r = record(
            "paths",
            name,
            v,
            "ns/pkt",
            Some(("XDP_PASS floor", floor_ns)),
            true,
        );
        r["ratio"] = json!(median(r_floor[i].clone()));
        r["above_floor_ns"] = json!(v - floor_ns);
        r["method"] = json!(format!("repeat {} x {} rounds", size.repeat, size.rounds));
        if old.is_some() {
            let o = median(c_old[i].clone());
            r["baseline_object"] = json!(base_path);
            r["baseline_object_ns"] = json!(o);
            r["baseline_above_floor_ns"] = json!(o - floor_ns);
            r["vs_baseline"] = json!(median(r_base[i].clone()));
        }
        out.push(r);
    }

    // Single runs carry the harness's fixed overhead: measured on the floor (single
    // minus repeated) in the same rounds, and taken off.
    let per = (size.singles / 5).max(1);
    let m = single.len();
    let (mut s_floor, mut s_new, mut s_old, mut s_ratio) = (
        Vec::new(),
        vec![Vec::new(); m],
        vec![Vec::new(); m],
        vec![Vec::new(); m],
    );
    let floor_frame = &stable[0].1;
    for _ in 0..size.rounds.min(5) {
        s_floor.push(single_cost(floor, floor_frame, per)?);
        for (i, (_, f)) in single.iter().enumerate() {
            let c = single_cost(new, f, per)?;
            s_new[i].push(c);
            if let Some(old) = old {
                let o = single_cost(old, f, per)?;
                s_old[i].push(o);
                s_ratio[i].push(c / o.max(1.0));
            }
        }
    }
    let overhead = (median(s_floor) - floor_ns).max(0.0);
    for (i, (name, _)) in single.iter().enumerate() {
        let v = median(s_new[i].clone()) - overhead;
        let mut r = record(
            "paths",
            name,
            v,
            "ns/pkt",
            Some(("XDP_PASS floor", floor_ns)),
            true,
        );
        r["above_floor_ns"] = json!(v - floor_ns);
        r["method"] = json!(format!(
            "single runs x {} minus the harness overhead ({overhead:.0} ns)",
            per * size.rounds.min(5)
        ));
        if old.is_some() {
            let o = median(s_old[i].clone()) - overhead;
            r["baseline_object"] = json!(base_path);
            r["baseline_object_ns"] = json!(o);
            r["baseline_above_floor_ns"] = json!(o - floor_ns);
            r["vs_baseline"] = json!(median(s_ratio[i].clone()));
        }
        out.push(r);
    }
    Ok(out)
}
