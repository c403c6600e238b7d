//! Times address add+del through `vip::netlink`, by hand, in a throwaway namespace:
//!
//!     ip netns add nlbench
//!     ip netns exec nlbench ip link add d0 type dummy   # or any link
//!     ip netns exec nlbench ip link set d0 up
//!     ip netns exec nlbench target/release/examples/nl_bench d0 2000
//!     ip netns del nlbench
//!
//! Adds N IPv4 /32 and N IPv6 /128 addresses one request at a time, then deletes them,
//! and prints the time per address (add + del).

use std::{net::IpAddr, time::Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let ifname = args.next().unwrap_or_else(|| "lo".into());
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let index = nix::net::if_::if_nametoindex(ifname.as_str()).expect("no such interface");
    let nl = vip::netlink::Netlink::open().expect("rtnetlink");
    for (label, make) in [
        (
            "ipv4 /32",
            (|i: u32| IpAddr::from([10, 200, (i >> 8) as u8, i as u8])) as fn(u32) -> IpAddr,
        ),
        ("ipv6 /128", |i: u32| {
            IpAddr::from([0x2001, 0xdb8, 0xbe, 0, 0, 0, (i >> 16) as u16, i as u16])
        }),
    ] {
        let addrs: Vec<IpAddr> = (0..n).map(make).collect();
        let prefix = if addrs[0].is_ipv4() { 32 } else { 128 };
        let t = Instant::now();
        for a in &addrs {
            nl.add_address(index, *a, prefix).expect("add");
        }
        let add = t.elapsed();
        let t = Instant::now();
        for a in &addrs {
            nl.del_address(index, *a, prefix).expect("del");
        }
        let del = t.elapsed();
        println!(
            "{label}: {n} addresses: add {:.1} us, del {:.1} us, add+del {:.3} ms per address",
            add.as_secs_f64() * 1e6 / n as f64,
            del.as_secs_f64() * 1e6 / n as f64,
            (add + del).as_secs_f64() * 1e3 / n as f64
        );
    }
}
