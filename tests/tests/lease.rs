//! The lease's kernel side, through BPF_PROG_TEST_RUN: `vip_lease` extends a lease
//! only while it runs (by the kernel's own boot-time clock, checked in the same run
//! that writes), never one that ran out or was revoked, never one that is not the
//! deadline the agent expected; the data plane stops answering at the deadline; a
//! quiet group (a handover has begun) answers nothing but still steers.

mod common;

use std::{net::IpAddr, time::Duration};

use common::*;
use lab::{frames, privileged, Netns};
use vip::{
    dataplane::{Dataplane, Extension},
    host::boottime_ns,
};
use vip_common::{action, flags, VipEntry};

const SECOND: u64 = 1_000_000_000;

fn leased_entry(group: u32) -> VipEntry {
    VipEntry {
        action: action::LOCAL,
        flags: flags::LEASED,
        stats_index: group,
        group_index: group,
        own_mac: OWN.0,
        src_mac: OWN.0,
        ..Default::default()
    }
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_lease_is_extended_only_while_it_runs() {
    privileged();
    let ns = Netns::new("lease").unwrap();
    ns.run_in(|| {
        let mut dp = Dataplane::load(64).expect("loading the data plane");
        let now = boottime_ns();

        // Running: extended, and the map holds the new deadline.
        dp.grant_lease(1, now + 10 * SECOND).unwrap();
        assert_eq!(
            dp.extend_lease(1, now + 10 * SECOND, now + 20 * SECOND)
                .unwrap(),
            Extension::Extended
        );
        assert_eq!(dp.lease(1).unwrap(), now + 20 * SECOND);

        // Ran out (by a nanosecond or by an hour): refused, nothing written.
        for past in [1, SECOND, 3600 * SECOND] {
            let d = boottime_ns().saturating_sub(past);
            dp.grant_lease(2, d).unwrap();
            match dp.extend_lease(2, d, boottime_ns() + 10 * SECOND).unwrap() {
                Extension::Expired { found, now } => {
                    assert_eq!(found, d);
                    assert!(now >= d);
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(dp.lease(2).unwrap(), d, "an expired lease was written");
        }

        // Revoked: refused.
        dp.revoke_lease(3).unwrap();
        assert!(matches!(
            dp.extend_lease(3, 0, boottime_ns() + SECOND).unwrap(),
            Extension::Expired { found: 0, .. }
        ));
        assert_eq!(dp.lease(3).unwrap(), 0);

        // Not the deadline we believe in force (another writer): refused.
        let d = boottime_ns() + 10 * SECOND;
        dp.grant_lease(4, d).unwrap();
        assert_eq!(
            dp.extend_lease(4, d - 1, d + SECOND).unwrap(),
            Extension::Changed { found: d }
        );
        assert_eq!(dp.lease(4).unwrap(), d);

        // A group outside the array is not a request.
        assert!(dp.extend_lease(vip_common::MAX_GROUPS, 0, 1).is_err());
    });
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn the_data_plane_stops_answering_at_the_deadline_and_only_a_grant_revives_it() {
    privileged();
    let ns = Netns::new("lease").unwrap();
    ns.run_in(|| {
        let mut dp = Dataplane::load(64).expect("loading the data plane");
        dp.set_vip(IpAddr::V4(VIP4), &leased_entry(1)).unwrap();
        dp.reset_stats(1).unwrap();
        let req = frames::arp_request(CLIENT, "10.0.0.12".parse().unwrap(), VIP4);
        let answered = |dp: &Dataplane| dp.test_run(&req).unwrap().action == XDP_TX;

        let d = boottime_ns() + 200_000_000;
        dp.grant_lease(1, d).unwrap();
        assert!(answered(&dp), "a running lease answers");
        // Wait past the deadline: the same program run answers nothing.
        while boottime_ns() <= d {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(dp.test_run(&req).unwrap().action, XDP_DROP);
        // Extending it now is refused, so it stays silent.
        assert!(matches!(
            dp.extend_lease(1, d, boottime_ns() + 10 * SECOND).unwrap(),
            Extension::Expired { .. }
        ));
        assert_eq!(dp.test_run(&req).unwrap().action, XDP_DROP);
        // A grant (the election's decision) revives it.
        dp.grant_lease(1, boottime_ns() + 10 * SECOND).unwrap();
        assert!(answered(&dp));
        // Quiet (a handover has begun): no answer, but its traffic is still steered
        // (counted as passed to the local stack, not as stopped by the lease).
        let udp = frames::udp4(
            OWN,
            CLIENT,
            "10.0.0.12".parse().unwrap(),
            VIP4,
            40000,
            80,
            b"payload",
        );
        dp.set_quiet(1, true).unwrap();
        assert_eq!(dp.test_run(&req).unwrap().action, XDP_DROP);
        let before = dp.stats(1).unwrap();
        assert_eq!(dp.test_run(&udp).unwrap().action, XDP_PASS);
        let after = dp.stats(1).unwrap();
        assert_eq!(after.passed, before.passed + 1);
        assert_eq!(after.lease_expired, before.lease_expired);
        dp.set_quiet(1, false).unwrap();
        assert!(answered(&dp));
        // A revocation stops it at once, traffic too.
        dp.revoke_lease(1).unwrap();
        assert_eq!(dp.test_run(&req).unwrap().action, XDP_DROP);
        assert_eq!(dp.test_run(&udp).unwrap().action, XDP_PASS);
        assert_eq!(dp.stats(1).unwrap().lease_expired, after.lease_expired + 1);
    });
}
