//! Hitless upgrade through reload: `vip reload` (what `systemctl reload vip` sends as
//! SIGHUP) re-executes the binary on disk in the same process, which adopts the pinned
//! data plane; a binary that fails to start leaves the running agent in charge.

mod common;

use std::{net::SocketAddr, path::Path, time::Duration};

use common::*;
use lab::{privileged, vip_bin, wait_for, Agent, Bpffs, Prober, Responder};

/// Puts `content` at `path` the way a package manager does: a new file, renamed over.
fn replace(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    let mut perm = std::fs::metadata(&tmp).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&tmp, perm).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The running image's binary: its inode and whether it was replaced on disk.
fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn reload_re_executes_a_replaced_binary_and_loses_nothing() {
    privileged();
    let bpffs = Bpffs::mount().unwrap();
    let lan = lan();
    let dir = std::env::temp_dir().join(format!("vip-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("vip");
    let image = std::fs::read(vip_bin()).unwrap();
    replace(&bin, &image);
    let pin = format!("pin_dir = \"{}/a\"", bpffs.dir.display());
    let cfg_a = elected(&lan, "a", &["a", "b"], 200, &pin, "");
    let a = Agent::start_full(&lan.host("a").ns, "a", &cfg_a, &bin, &[], &[]).unwrap();
    let b = start_elected(&lan, "b", &["a", "b"], 100, "");
    assert!(wait_for(Duration::from_secs(5), || (state(&a) == "active"
        && state(&b) == "standby")
        .then_some(()))
    .is_some());
    let to: SocketAddr = (VIP4, 7008).into();
    let _ra = Responder::start(&lan.host("a").ns, to, "a").unwrap();
    let _rb = Responder::start(&lan.host("b").ns, to, "b").unwrap();
    let prober = Prober::start(&lan.host("c").ns, to, Duration::from_millis(2)).unwrap();
    assert!(prober.wait_answers("a", 50, Duration::from_secs(3)));
    let b_transitions = b.status().unwrap()["groups"][0]["transitions"].clone();
    let pid = a.proc.pid();

    // A binary that cannot start: refused, and the running agent goes on.
    replace(
        &bin,
        b"#!/bin/sh\necho 'cannot start: broken build' >&2\nexit 3\n",
    );
    assert!(exe_of(pid).ends_with("(deleted)"));
    let out = a.cli(&["reload"]).unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("refused") && text.contains("broken build"),
        "{text}"
    );
    assert_eq!(state(&a), "active");
    assert!(prober.wait_answers("a", 50, Duration::from_secs(3)));

    // The new binary: the same process re-executes it and adopts the data plane.
    replace(&bin, &image);
    let out = a.cli(&["reload"]).unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("re-executing"), "{text}");
    let fresh = wait_for(Duration::from_secs(10), || {
        (!exe_of(pid).ends_with("(deleted)")
            && a.status().is_ok_and(|s| {
                s["groups"][0]["state"] == "active" && s["groups"][0]["reason_kind"] == "adopted"
            }))
        .then_some(())
    });
    assert!(fresh.is_some(), "not re-executed:\n{}", a.log_text());
    assert_eq!(a.proc.pid(), pid, "the service manager's PID changed");
    assert!(prober.wait_answers("a", 100, Duration::from_secs(3)));
    let probes = prober.finish();
    let lost = probes.iter().filter(|p| p.answered_by.is_none()).count();
    eprintln!(
        "reload with a replaced binary: {} probes at 2 ms, {lost} lost",
        probes.len()
    );
    assert_eq!(lost, 0, "probes lost across the upgrade");
    let by_b: Vec<String> = probes
        .iter()
        .filter(|p| p.answered_by.as_deref() == Some("b"))
        .map(|p| format!("#{} at {:?}", p.seq, p.sent))
        .collect();
    assert!(
        by_b.is_empty(),
        "b answered during a's upgrade: {} probes ({}); b's status: {}\na's log:\n{}\nb's log:\n{}",
        by_b.len(),
        by_b.join(", "),
        b.status()
            .map(|s| s["groups"][0].to_string())
            .unwrap_or_default(),
        a.log_text(),
        b.log_text()
    );
    assert_eq!(
        b.status().unwrap()["groups"][0]["transitions"],
        b_transitions,
        "b moved during a's upgrade"
    );
    assert!(a.log_text().contains("re-executing"));
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
    teardown(lan);
    drop(bpffs);
}
