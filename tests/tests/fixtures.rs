//! Fixture tables: frame in -> expected XDP action and frame out, run through the real
//! program with BPF_PROG_TEST_RUN (Katran-style), one module per feature (as
//! Katran's fixtures are): `arp` (ARP and IPv4 steering, malformed and non-VIP
//! frames), `ipv6` (neighbour solicitations and IPv6 steering), `echo` (the
//! election's port and the echo on it), `handover` (the planned handover's flags
//! against real sockets), `balance` (a balanced group's member, the director's odd
//! packets), `index` (the IPv4 VIP index), `eip` (an elastic IP's owner rule),
//! `resident` (a resident group's entries drop what they do not serve), `route6` (an
//! IPv6 VIP routed by a gateway), `tunnel` (IPIP between a balanced group's nodes),
//! `virtual_mac` (a group's virtual MAC: answered, taken, never forwarded from). This
//! file holds what they share: the addresses, a table's row and the runner. Needs
//! root (BPF), no traffic.

#[path = "fixtures/arp.rs"]
mod arp;
#[path = "fixtures/balance.rs"]
mod balance;
mod common;
#[path = "fixtures/echo.rs"]
mod echo;
#[path = "fixtures/eip.rs"]
mod eip;
#[path = "fixtures/handover.rs"]
mod handover;
#[path = "fixtures/index.rs"]
mod index;
#[path = "fixtures/ipv6.rs"]
mod ipv6;
#[path = "fixtures/resident.rs"]
mod resident;
#[path = "fixtures/route6.rs"]
mod route6;
#[path = "fixtures/tunnel.rs"]
mod tunnel;
#[path = "fixtures/virtual_mac.rs"]
mod virtual_mac;

use common::*;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lab::{
    frames::{self, ARP_REPLY},
    privileged, Netns,
};
use vip::{
    dataplane::{action_name, Dataplane},
    host::{boottime_ns, monotonic_ns},
    mac::Mac,
};
use vip_common::{action, flags, VipEntry};

const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
const REDIR4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 51);
const FWD4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 52);
const LEASED4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 53);
const EXPIRED4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 54);
const OTHER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    /// None: the frame must come back byte-identical.
    out: Option<Vec<u8>>,
}

fn case(name: &'static str, frame: Vec<u8>, action: u32, out: Option<Vec<u8>>) -> Case {
    Case {
        name,
        frame,
        action,
        out,
    }
}

fn entry(act: u32, slot: u32, group: u32) -> VipEntry {
    VipEntry {
        action: act,
        stats_index: slot,
        group_index: group,
        own_mac: OWN.0,
        src_mac: OWN.0,
        dst_mac: if act == action::FORWARD {
            ACTIVE.0
        } else {
            [0; 6]
        },
        ..Default::default()
    }
}

/// Programs balance slot `slot` as an anycast director's (every port, `first_hop`):
/// row 0 this node, then `members` (all up), and a Maglev table that names row 1 for
/// every flow nobody pinned.
fn anycast_director(dp: &mut Dataplane, slot: u32, members: &[Mac]) {
    use vip_common::{maglev::TABLE_SIZE, BalanceMember};
    let mut rows = vec![BalanceMember {
        mac: OWN.0,
        up: 1,
        this_node: 1,
    }];
    rows.extend(members.iter().map(|m| BalanceMember {
        mac: m.0,
        up: 1,
        this_node: 0,
    }));
    let placement = vip::dataplane::Placement {
        all_ports: true,
        first_hop: true,
    };
    dp.set_balance(slot, placement, &[], &[], &rows, &vec![1u16; TABLE_SIZE])
        .expect("the anycast director's slot");
}

fn with_macs(mut f: Vec<u8>, dst: Mac, src: Mac) -> Vec<u8> {
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f
}

/// Runs each case through the program; fails with every mismatch.
fn run_cases(dp: &Dataplane, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let r = dp
            .test_run(&c.frame)
            .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN failed: {e}", c.name));
        let want = c.out.as_ref().unwrap_or(&c.frame);
        if r.action != c.action {
            failures.push(format!(
                "{}: {} (wanted {})",
                c.name,
                action_name(r.action),
                action_name(c.action)
            ));
        } else if &r.frame != want {
            failures.push(format!(
                "{}: frame out differs\n  got  {:02x?}\n  want {:02x?}",
                c.name, r.frame, want
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
