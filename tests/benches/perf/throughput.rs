//! Packets per second on veth between namespaces, XDP against the kernel doing the
//! same work, each pair measured in turn in the same run.
//!
//! gen (generator, counting sink on gen0) <-> dut0 (device under test) ... svc0 <-> svc1
//! (sink). Two generators: XDP live frames (BPF_PROG_TEST_RUN, ~millions of frames/s;
//! it can only feed a peer with NAPI, i.e. a native XDP program) and AF_PACKET
//! (sendmmsg, slower, but feeds any mode; used for native against skb).
//!
//! The balanced VIP's director sends every flow back out dut0 to one of three other
//! members, whose MAC is gen0's, so its output lands on gen0's sink; the kernel's
//! counterpart is nftables `dnat to jhash ... map` + forwarding to three member
//! addresses on dut0's segment (IPVS is not in this kernel).
//!
//! A routed IPv6 VIP (`[[route6]]`, dut0 external, svc0 internal, owner svc1) against
//! the kernel's IPv6 forwarding to the same neighbour: 60-byte frames, so the IPv6
//! header carries 6 bytes of "no next header" (59), which neither path reads.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lab::{frames, veth, Netns, PacketFlood};
use serde_json::{json, Value};
use vip::{
    config::XdpMode,
    dataplane::{BenchPrograms, Dataplane},
    mac::Mac,
};
use vip_common::{action, VipEntry};

use crate::{median, record, Size};

const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const ARP_VIP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 50);
const FWD_VIP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 60);
const DNAT_VIP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 61);
const REDIR_VIP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 70);
const EIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const EIP_VIP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 50);
const GEN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1);
const ROUTE6_VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x50);
const BAL_VIP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 80);
/// The kernel balancer's members (neighbours on dut0 with gen0's MAC).
const BAL_MEMBERS: [&str; 3] = ["10.9.0.11", "10.9.0.12", "10.9.0.13"];
/// Flows of the many-flow balance case: well inside the director's connection table
/// (LRU, 65,536) and the kernel's conntrack table.
const MANY_FLOWS: u32 = 4096;

struct Lab {
    gen: Netns,
    dut: Netns,
    svc: Netns,
    gen_mac: Mac,
    dut_mac: Mac,
    svc0_mac: Mac,
    svc1_mac: Mac,
    /// Counting sinks on gen0 and svc1, and the generator program.
    gen_bench: BenchPrograms,
    svc_bench: BenchPrograms,
    gen_ifindex: u32,
    /// The flows the generator spreads its frames over (`BenchPrograms::set_flows`).
    flows: u32,
    /// This kernel refuses live frames: the AF_PACKET generator stands in for them.
    live_refused: bool,
}

fn mac_of(ns: &Netns, iface: &str) -> Result<Mac> {
    Ok(ns.mac(iface)?.parse()?)
}

fn lab() -> Result<Lab> {
    let gen = Netns::new("tp-gen")?;
    let dut = Netns::new("tp-dut")?;
    let svc = Netns::new("tp-svc")?;
    veth(&gen, "gen0", &dut, "dut0")?;
    veth(&dut, "svc0", &svc, "svc1")?;
    gen.ip(&["addr", "add", "10.9.0.1/24", "dev", "gen0"])?;
    dut.ip(&["addr", "add", "10.9.0.2/24", "dev", "dut0"])?;
    dut.ip(&["addr", "add", "10.10.0.1/24", "dev", "svc0"])?;
    svc.ip(&["addr", "add", "10.10.0.2/24", "dev", "svc1"])?;
    for (ns, a, i) in [
        (&gen, "2001:db8:9::1/64", "gen0"),
        (&dut, "2001:db8:9::2/64", "dut0"),
        (&dut, "2001:db8:10::1/64", "svc0"),
        (&svc, "2001:db8:10::2/64", "svc1"),
    ] {
        ns.ip(&["-6", "addr", "add", a, "dev", i, "nodad"])?;
    }
    for (ns, i) in [
        (&gen, "gen0"),
        (&dut, "dut0"),
        (&dut, "svc0"),
        (&svc, "svc1"),
    ] {
        ns.ip(&["link", "set", i, "up"])?;
    }
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.dut0.send_redirects", "0"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.dut0.rp_filter", "0"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ] {
        dut.sysctl(k, v)?;
    }
    let gen_mac = mac_of(&gen, "gen0")?;
    let svc1_mac = mac_of(&svc, "svc1")?;
    // The kernel paths know their next hops: no ARP during a measurement.
    let (gen_s, svc1_s) = (gen_mac.to_string(), svc1_mac.to_string());
    let mut hops = vec![("10.9.0.1", &gen_s, "dut0"), ("10.10.0.2", &svc1_s, "svc0")];
    hops.extend(BAL_MEMBERS.iter().map(|m| (*m, &gen_s, "dut0")));
    let route6_vip = ROUTE6_VIP.to_string();
    hops.push((&route6_vip, &svc1_s, "svc0"));
    for (ip, mac, dev) in hops {
        dut.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])?;
    }
    let mut gen_bench = gen.run_in(BenchPrograms::load)?;
    gen.run_in(|| gen_bench.attach_sink("gen0", XdpMode::Native))?;
    let mut svc_bench = svc.run_in(BenchPrograms::load)?;
    svc.run_in(|| svc_bench.attach_sink("svc1", XdpMode::Native))?;
    let gen_ifindex = gen.run_in(|| nix::net::if_::if_nametoindex("gen0"))?;
    // One frame (the generator's empty template, which dut0 drops) tells whether this
    // kernel runs live frames at all.
    let live_refused = !gen
        .run_in(|| gen_bench.live_frames(&[0u8; 60], gen_ifindex, 1))
        .context("live-frames BPF_PROG_TEST_RUN")?;
    if live_refused {
        eprintln!(
            "[perf] throughput: this kernel refuses live-frames BPF_PROG_TEST_RUN (EPERM): \
             the AF_PACKET generator sends instead, and its figures are the sender's"
        );
    }
    Ok(Lab {
        dut_mac: mac_of(&dut, "dut0")?,
        svc0_mac: mac_of(&dut, "svc0")?,
        gen,
        dut,
        svc,
        gen_mac,
        svc1_mac,
        gen_bench,
        svc_bench,
        gen_ifindex,
        flows: 1,
        live_refused,
    })
}

/// What the device under test runs for one measurement.
#[derive(Clone, Copy, PartialEq)]
enum Dut {
    /// vip's program, with an entry for the VIP of the case.
    Vip(XdpMode),
    /// The kernel does the work (a pass program on dut0 gives it NAPI).
    Kernel,
    /// The kernel with nftables DNAT in front.
    KernelDnat,
    /// vip's program as an elastic-IP gateway (dut0 external, svc0 internal).
    Gateway,
    /// The kernel doing the same 1:1 NAT with nftables.
    KernelNat,
    /// vip's program directing a balanced VIP: three other members, MAC rewrite and
    /// XDP_TX back out dut0.
    Director,
    /// The kernel balancing with nftables (`dnat to jhash ... map`) + forward.
    KernelBalance,
    /// vip's program routing an IPv6 VIP (`[[route6]]`: dut0 external, svc0 internal,
    /// the owner svc1 as learned from its neighbour advertisements).
    Route6,
    /// The kernel's IPv6 forwarding to the same neighbour.
    Kernel6,
}

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Arp,
    Forward,
    Redirect,
    Eip,
    Balance,
    Route6,
}

#[derive(Clone, Copy, PartialEq)]
enum Gen {
    LiveFrames,
    Packet,
}

/// Runs nft commands in the DUT's namespace.
fn nft(l: &Lab, cmds: &[&str]) -> Result<()> {
    for c in cmds {
        l.dut.exec(&["nft", c])?;
    }
    Ok(())
}

/// Empties the conntrack table of the calling thread's namespace (ctnetlink's flush:
/// IPCTNL_MSG_CT_DELETE without a tuple). Deleting the nftables table leaves its
/// connections, with their NAT bindings, until they time out.
fn flush_conntrack() -> Result<()> {
    // SAFETY: plain socket(2); owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        bail!(
            "netfilter netlink socket: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    const IPCTNL_MSG_CT_DELETE: u16 = 2;
    // struct nlmsghdr (len, type, flags, seq, pid) + struct nfgenmsg (family,
    // version, res_id): AF_UNSPEC, every family.
    let mut m = Vec::with_capacity(20);
    m.extend_from_slice(&20u32.to_ne_bytes());
    m.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    // SAFETY: a valid buffer of m.len() bytes; the kernel is the default destination.
    if unsafe { libc::send(fd.as_raw_fd(), m.as_ptr() as *const _, m.len(), 0) } < 0 {
        bail!("conntrack flush: {}", std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 256];
    // SAFETY: a valid buffer of buf.len() bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
    if n < 20 {
        bail!(
            "conntrack flush: no answer ({})",
            std::io::Error::last_os_error()
        );
    }
    // The ack: NLMSG_ERROR whose error is 0.
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if kind != libc::NLMSG_ERROR as u16 || err != 0 {
        bail!(
            "conntrack flush: {}",
            std::io::Error::from_raw_os_error(-err)
        );
    }
    Ok(())
}

/// Sets the DUT up for one measurement; what it returns keeps it so until dropped.
fn setup(l: &Lab, dut: Dut, case: Case) -> Result<Option<Dataplane>> {
    // The kernel paths' state, removed again at the end of every measurement.
    let _ = l.dut.ip(&["addr", "del", "10.9.0.50/32", "dev", "dut0"]);
    let _ = l.dut.ip(&["route", "del", "10.9.0.60/32"]);
    let _ = l.dut.ip(&["route", "del", "10.9.0.70/32"]);
    let _ = l.dut.exec(&["nft", "delete table ip benchnat"]);
    let _ = l.dut.ip(&["route", "del", "10.10.0.50/32"]);
    l.dut.run_in(flush_conntrack)?;
    match dut {
        Dut::Director => {
            let settings = vip_common::Settings {
                balance_enabled: 1,
                ..Default::default()
            };
            let mut dp = l.dut.run_in(|| Dataplane::open(16, None, settings))?;
            l.dut.run_in(|| dp.attach("dut0", XdpMode::Native))?;
            dp.set_vip(
                BAL_VIP.into(),
                &VipEntry {
                    action: action::LOCAL,
                    flags: vip_common::flags::BALANCED,
                    // The balance slot.
                    ifindex: 0,
                    own_mac: l.dut_mac.0,
                    src_mac: l.dut_mac.0,
                    ..Default::default()
                },
            )?;
            // Row 0 is this node, with no share of the table: every flow goes to one
            // of the other three, "behind" gen0's MAC.
            let member = |mac: Mac, this_node| vip_common::BalanceMember {
                mac: mac.0,
                up: 1,
                this_node,
            };
            let rows = [
                member(l.dut_mac, 1),
                member(l.gen_mac, 0),
                member(l.gen_mac, 0),
                member(l.gen_mac, 0),
            ];
            let table: Vec<u16> = (0..vip_common::maglev::TABLE_SIZE)
                .map(|i| 1 + (i % 3) as u16)
                .collect();
            dp.set_balance(
                0,
                vip::dataplane::Placement::ALL_PORTS,
                &[],
                &[],
                &rows,
                &table,
            )?;
            return Ok(Some(dp));
        }
        Dut::KernelBalance => {
            let mut dp = l.dut.run_in(|| Dataplane::load(16))?;
            l.dut.run_in(|| dp.attach_pass("dut0"))?;
            let [a, b, c] = BAL_MEMBERS;
            let rule = format!(
                "add rule ip benchnat pre ip daddr {BAL_VIP} udp dport 9 \
                 dnat to jhash ip saddr . udp sport mod 3 map {{ 0 : {a}, 1 : {b}, 2 : {c} }}"
            );
            nft(
                l,
                &[
                    "add table ip benchnat",
                    "add chain ip benchnat pre { type nat hook prerouting priority -100 ; }",
                    &rule,
                ],
            )?;
            return Ok(Some(dp));
        }
        _ => {}
    }
    match dut {
        Dut::Route6 => {
            let settings = vip_common::Settings {
                eip_enabled: 1,
                ..Default::default()
            };
            let mut dp = l.dut.run_in(|| Dataplane::open(16, None, settings))?;
            l.dut.run_in(|| -> Result<()> {
                dp.attach("dut0", XdpMode::Native)?;
                let (ext, int) = (
                    nix::net::if_::if_nametoindex("dut0")?,
                    nix::net::if_::if_nametoindex("svc0")?,
                );
                dp.add_redirect_target(int)?;
                dp.set_route6(&vip_common::Route6Entry {
                    vip: ROUTE6_VIP.octets(),
                    ext_ifindex: ext,
                    int_ifindex: int,
                    ext_mac: l.dut_mac.0,
                    int_mac: l.svc0_mac.0,
                    stats_index: 0,
                    _pad: 0,
                })?;
                dp.set_route6_owner(ROUTE6_VIP, l.svc1_mac.0)?;
                Ok(())
            })?;
            return Ok(Some(dp));
        }
        Dut::Kernel6 => {
            // The route is svc0's connected /64, the neighbour permanent (`lab`).
            let mut dp = l.dut.run_in(|| Dataplane::load(16))?;
            l.dut.run_in(|| dp.attach_pass("dut0"))?;
            return Ok(Some(dp));
        }
        Dut::Gateway => {
            let settings = vip_common::Settings {
                vip_ifindex: 0,
                eip_enabled: 1,
                echo_port: 0,
                balance_enabled: 0,
                tunnel_src: 0,
            };
            let mut dp = l.dut.run_in(|| Dataplane::open(16, None, settings))?;
            l.dut.run_in(|| -> Result<()> {
                dp.attach("dut0", XdpMode::Native)?;
                let (ext, int) = (
                    nix::net::if_::if_nametoindex("dut0")?,
                    nix::net::if_::if_nametoindex("svc0")?,
                );
                dp.add_redirect_target(int)?;
                dp.set_eip(&vip_common::EipEntry {
                    eip: EIP.octets(),
                    vip: EIP_VIP.octets(),
                    ext_ifindex: ext,
                    int_ifindex: int,
                    ext_mac: l.dut_mac.0,
                    int_mac: l.svc0_mac.0,
                    stats_index: 0,
                    flags: 0,
                })?;
                // The owner as learned from the internal segment's ARP.
                dp.set_owner(EIP_VIP, l.svc1_mac.0)?;
                Ok(())
            })?;
            return Ok(Some(dp));
        }
        Dut::KernelNat => {
            let mut dp = l.dut.run_in(|| Dataplane::load(16))?;
            l.dut.run_in(|| dp.attach_pass("dut0"))?;
            l.dut.ip(&[
                "neigh",
                "replace",
                "10.10.0.50",
                "lladdr",
                &l.svc1_mac.to_string(),
                "dev",
                "svc0",
                "nud",
                "permanent",
            ])?;
            l.dut
                .ip(&["route", "add", "10.10.0.50/32", "dev", "svc0"])?;
            nft(
                l,
                &[
                    "add table ip benchnat",
                    "add chain ip benchnat pre { type nat hook prerouting priority -100 ; }",
                    "add chain ip benchnat post { type nat hook postrouting priority 100 ; }",
                    "add rule ip benchnat pre ip daddr 203.0.113.10 dnat to 10.10.0.50",
                    "add rule ip benchnat post ip saddr 10.10.0.50 snat to 203.0.113.10",
                ],
            )?;
            return Ok(Some(dp));
        }
        _ => {}
    }
    match dut {
        Dut::Vip(mode) => {
            let mut dp = l.dut.run_in(|| Dataplane::load(16))?;
            l.dut.run_in(|| dp.attach("dut0", mode))?;
            // The devmap resolves the ifindex in the caller's namespace: insert from dut's.
            let svc0 = l.dut.run_in(|| -> Result<u32> {
                let i = nix::net::if_::if_nametoindex("svc0")?;
                dp.add_redirect_target(i)?;
                Ok(i)
            })?;
            let (ip, e) = match case {
                Case::Arp => (
                    ARP_VIP,
                    VipEntry {
                        action: action::LOCAL,
                        own_mac: l.dut_mac.0,
                        src_mac: l.dut_mac.0,
                        ..Default::default()
                    },
                ),
                Case::Forward => (
                    FWD_VIP,
                    VipEntry {
                        action: action::FORWARD,
                        own_mac: l.dut_mac.0,
                        src_mac: l.dut_mac.0,
                        dst_mac: l.gen_mac.0,
                        ..Default::default()
                    },
                ),
                Case::Eip => unreachable!("the EIP case uses Gateway/KernelNat"),
                Case::Balance => unreachable!("the balance case uses Director/KernelBalance"),
                Case::Route6 => unreachable!("the route6 case uses Route6/Kernel6"),
                Case::Redirect => (
                    REDIR_VIP,
                    VipEntry {
                        action: action::REDIRECT,
                        ifindex: svc0,
                        own_mac: l.dut_mac.0,
                        src_mac: l.svc0_mac.0,
                        dst_mac: l.svc1_mac.0,
                        ..Default::default()
                    },
                ),
            };
            dp.set_vip(ip.into(), &e)?;
            Ok(Some(dp))
        }
        Dut::Gateway
        | Dut::KernelNat
        | Dut::Director
        | Dut::KernelBalance
        | Dut::Route6
        | Dut::Kernel6 => {
            unreachable!("set up above")
        }
        Dut::Kernel | Dut::KernelDnat => {
            let mut dp = l.dut.run_in(|| Dataplane::load(16))?;
            l.dut.run_in(|| dp.attach_pass("dut0"))?;
            match case {
                Case::Arp => {
                    l.dut.ip(&["addr", "add", "10.9.0.50/32", "dev", "dut0"])?;
                }
                Case::Forward => {
                    l.dut.ip(&[
                        "route",
                        "add",
                        "10.9.0.60/32",
                        "via",
                        "10.9.0.1",
                        "dev",
                        "dut0",
                    ])?;
                }
                Case::Redirect => {
                    l.dut.ip(&[
                        "route",
                        "add",
                        "10.9.0.70/32",
                        "via",
                        "10.10.0.2",
                        "dev",
                        "svc0",
                    ])?;
                }
                Case::Eip => unreachable!("the EIP case uses Gateway/KernelNat"),
                Case::Balance => unreachable!("the balance case uses Director/KernelBalance"),
                Case::Route6 => unreachable!("the route6 case uses Route6/Kernel6"),
            }
            if dut == Dut::KernelDnat {
                nft(
                    l,
                    &[
                        "add table ip benchnat",
                        "add chain ip benchnat pre { type nat hook prerouting priority -100 ; }",
                        "add rule ip benchnat pre ip daddr 10.9.0.61 dnat to 10.9.0.60",
                    ],
                )?;
            }
            Ok(Some(dp))
        }
    }
}

/// The 64-byte frame (60 without the FCS) of a case.
fn frame(l: &Lab, case: Case, dnat: bool) -> Vec<u8> {
    match case {
        Case::Arp => frames::arp_request(l.gen_mac, GEN_IP, ARP_VIP),
        Case::Forward => frames::udp4(
            l.dut_mac,
            l.gen_mac,
            GEN_IP,
            if dnat { DNAT_VIP } else { FWD_VIP },
            4000,
            9,
            &[0u8; 18],
        ),
        Case::Redirect => {
            frames::udp4(l.dut_mac, l.gen_mac, GEN_IP, REDIR_VIP, 4000, 9, &[0u8; 18])
        }
        Case::Eip => frames::udp4(l.dut_mac, l.gen_mac, GEN_IP, EIP, 4000, 9, &[0u8; 18]),
        // No UDP checksum (valid for IPv4): the generator varies the source port.
        Case::Balance => frames::udp4(l.dut_mac, l.gen_mac, GEN_IP, BAL_VIP, 4000, 9, &[0u8; 18]),
        Case::Route6 => {
            let mut f = frames::ethernet(l.dut_mac, l.gen_mac, 0x86dd);
            // Version 6, payload 6 bytes, next header 59 (none), hop limit 64.
            f.extend_from_slice(&[0x60, 0, 0, 0, 0, 6, 59, 64]);
            f.extend_from_slice(&GEN6.octets());
            f.extend_from_slice(&ROUTE6_VIP.octets());
            f.extend_from_slice(&[0; 6]);
            f
        }
    }
}

/// Offers `count` copies of `f` into dut0; returns (offered/s, delivered/s at the sink).
fn measure(l: &mut Lab, gen: Gen, f: &[u8], count: u32, sink_svc: bool) -> Result<(f64, f64)> {
    assert_eq!(f.len(), 60, "the generator sends 60-byte frames");
    l.gen_bench.set_frame(f)?;
    let sink = |l: &Lab| {
        if sink_svc {
            l.svc_bench.count()
        } else {
            l.gen_bench.count()
        }
    };
    let before = sink(l);
    let t0 = Instant::now();
    let live = gen == Gen::LiveFrames && !l.live_refused;
    let (prog, ifindex) = (&l.gen_bench, l.gen_ifindex);
    if !live
        || !l
            .gen
            .run_in(|| prog.live_frames(f, ifindex, count))
            .context("live-frames BPF_PROG_TEST_RUN")?
    {
        // The generator's frames over `flows` flows: UDP source port + k mod flows.
        let sport = u16::from_be_bytes([f[34], f[35]]);
        let frames = (0..l.flows.max(1))
            .map(|k| {
                let mut v = f.to_vec();
                v[34..36].copy_from_slice(&sport.wrapping_add(k as u16).to_be_bytes());
                v
            })
            .collect();
        l.gen
            .run_in(|| PacketFlood::open("gen0", frames)?.send(u64::from(count)))?;
    }
    let spent = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    let delivered = sink(l).saturating_sub(before);
    Ok((count as f64 / spent, delivered as f64 / spent))
}

pub fn run(size: Size) -> Result<Vec<Value>> {
    let mut l = lab()?;
    let rounds = if size.quick { 1 } else { 3 };
    let live_count: u32 = if size.quick { 300_000 } else { 4_000_000 };
    let packet_count: u32 = if size.quick { 100_000 } else { 1_000_000 };
    let mut out = Vec::new();
    // (case, xdp dut, kernel dut, generator, flows, label)
    let many = format!(
        "balanced VIP, {MANY_FLOWS} flows: director vs kernel nftables jhash DNAT + forward"
    );
    let pairs: Vec<(Case, Dut, Dut, Gen, u32, &str)> = vec![
        (
            Case::Arp,
            Dut::Vip(XdpMode::Native),
            Dut::Kernel,
            Gen::LiveFrames,
            1,
            "ARP requests answered: XDP vs the kernel",
        ),
        (
            Case::Forward,
            Dut::Vip(XdpMode::Native),
            Dut::Kernel,
            Gen::LiveFrames,
            1,
            "VIP traffic forwarded: XDP vs kernel ip_forward",
        ),
        (
            Case::Forward,
            Dut::Vip(XdpMode::Native),
            Dut::KernelDnat,
            Gen::LiveFrames,
            1,
            "VIP traffic forwarded: XDP vs kernel nftables DNAT + forward",
        ),
        (
            Case::Redirect,
            Dut::Vip(XdpMode::Native),
            Dut::Kernel,
            Gen::LiveFrames,
            1,
            "VIP traffic redirected into another interface: XDP vs kernel routing",
        ),
        (
            Case::Eip,
            Dut::Gateway,
            Dut::KernelNat,
            Gen::LiveFrames,
            1,
            "elastic IP 1:1 NAT gateway: XDP vs kernel nftables NAT + forward",
        ),
        (
            Case::Route6,
            Dut::Route6,
            Dut::Kernel6,
            Gen::LiveFrames,
            1,
            "routed IPv6 VIP gateway: XDP vs kernel IPv6 forwarding",
        ),
        (
            Case::Balance,
            Dut::Director,
            Dut::KernelBalance,
            Gen::LiveFrames,
            1,
            "balanced VIP, 1 flow: director vs kernel nftables jhash DNAT + forward",
        ),
        (
            Case::Balance,
            Dut::Director,
            Dut::KernelBalance,
            Gen::LiveFrames,
            MANY_FLOWS,
            &many,
        ),
        (
            Case::Arp,
            Dut::Vip(XdpMode::Native),
            Dut::Vip(XdpMode::Skb),
            Gen::Packet,
            1,
            "ARP requests answered: native vs skb mode (AF_PACKET generator)",
        ),
        (
            Case::Arp,
            Dut::Vip(XdpMode::Skb),
            Dut::Kernel,
            Gen::Packet,
            1,
            "ARP requests answered: skb mode vs the kernel (AF_PACKET generator)",
        ),
    ];
    for (case, a, b, gen, flows, label) in pairs {
        let count = if gen == Gen::LiveFrames && !l.live_refused {
            live_count
        } else {
            packet_count
        };
        let sink_svc = matches!(case, Case::Redirect | Case::Eip | Case::Route6);
        let (mut ra, mut rb, mut ratio, mut offered) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let mut one = |dut: Dut| -> Result<(f64, f64)> {
                let keep = setup(&l, dut, case)?;
                let f = frame(&l, case, dut == Dut::KernelDnat);
                l.gen_bench.set_flows(flows)?;
                l.flows = flows;
                // Warm caches (neighbour, conntrack, the director's connection
                // table: count / 20 covers every flow) before measuring.
                measure(&mut l, gen, &f, count / 20, sink_svc)?;
                let r = measure(&mut l, gen, &f, count, sink_svc)?;
                drop(keep);
                Ok(r)
            };
            let (oa, da) = one(a)?;
            let (_, db) = one(b)?;
            offered.push(oa);
            ra.push(da);
            rb.push(db);
            ratio.push(if db > 0.0 { da / db } else { 0.0 });
        }
        let (da, db) = (median(ra), median(rb));
        let mut r = record(
            "throughput",
            label,
            da / 1e6,
            "Mpps",
            Some(("second", db / 1e6)),
            false,
        );
        r["ratio"] = json!(median(ratio));
        r["offered_mpps"] = json!(median(offered) / 1e6);
        r["flows"] = json!(flows);
        r["generator"] = json!(if gen == Gen::LiveFrames && !l.live_refused {
            "XDP live frames"
        } else if gen == Gen::LiveFrames {
            "AF_PACKET sendmmsg (live frames refused by this kernel)"
        } else {
            "AF_PACKET sendmmsg"
        });
        eprintln!("[perf]   {label}: {:.2} vs {:.2} Mpps", da / 1e6, db / 1e6);
        out.push(r);
    }
    let _ = &l.svc;
    Ok(out)
}
