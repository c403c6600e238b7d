//! Operations: a hitless restart under traffic, uninstall, reload as a diff (and a bad
//! reload that changes nothing), the metrics endpoint, `vip watch`, and who may use
//! the control socket.

mod common;

use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::Duration,
};

use common::*;
use lab::{privileged, vip_bin, wait_for, Agent, Bpffs, Lan, Prober, Responder};

fn xdp_prog_id(lan: &Lan, host: &str) -> Option<String> {
    let out = lan
        .host(host)
        .ns
        .ip(&["-d", "link", "show", "dev", "eth0"])
        .ok()?;
    out.split("prog/xdp id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn hitless_restart_loses_nothing_and_cleanup_uninstalls() {
    privileged();
    let bpffs = Bpffs::mount().unwrap();
    let lan = lan();
    let pin = format!("pin_dir = \"{}/a\"", bpffs.dir.display());
    let cfg_a = elected(&lan, "a", &["a", "b"], 200, &pin, "");
    let mut a = Agent::start(&lan.host("a").ns, "a", &cfg_a).unwrap();
    let b = start_elected(&lan, "b", &["a", "b"], 100, "");
    assert!(wait_for(Duration::from_secs(5), || (state(&a) == "active"
        && state(&b) == "standby")
        .then_some(()))
    .is_some());
    assert!(bpffs.dir.join("a/link").exists() && bpffs.dir.join("a/VIPS_V4").exists());
    let to: SocketAddr = (VIP4, 7007).into();
    let _ra = Responder::start(&lan.host("a").ns, to, "a").unwrap();
    let _rb = Responder::start(&lan.host("b").ns, to, "b").unwrap();
    let prober = Prober::start(&lan.host("c").ns, to, Duration::from_millis(1)).unwrap();
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(3)),
        "a never answered"
    );
    let before = a.vip_status(VIP).unwrap()["rx_packets"].as_u64().unwrap();
    let prog_before = xdp_prog_id(&lan, "a").expect("XDP attached");
    let b_transitions = b.status().unwrap()["groups"][0]["transitions"].clone();

    // Restart: the old agent exits, the program stays attached and serving.
    let out = a.cli(&["restart", "--hold-ms", "3000"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st =
        wait_for(Duration::from_secs(5), || a.proc.try_status()).expect("the agent did not exit");
    assert!(st.success(), "{}", a.log_text());
    assert!(
        xdp_prog_id(&lan, "a").is_some(),
        "the data plane went away with the agent"
    );
    // With no agent running, the data plane keeps serving.
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(3)),
        "no answers while the agent was gone"
    );
    drop(a);
    let a = Agent::start(&lan.host("a").ns, "a", &cfg_a).unwrap();
    // It listens for the current owner before it renews the lease it found (the
    // data plane serves on it meanwhile), then takes the VIPs back.
    let first = a.status().unwrap()["groups"][0].clone();
    assert_eq!(first["state"], "standby", "{first}");
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("listening for the current owner"),
        "{first}"
    );
    assert!(wait_for(Duration::from_secs(5), || (state(&a) == "active")
        .then_some(()))
    .is_some());
    assert!(a.status().unwrap()["groups"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("adopted"));
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(3)),
        "no answers after the adoption"
    );
    let probes = prober.finish();
    assert_eq!(
        probes.iter().filter(|p| p.answered_by.is_none()).count(),
        0,
        "probes lost across the restart"
    );
    assert!(
        probes.iter().all(|p| p.answered_by.as_deref() == Some("a")),
        "b answered during a's restart"
    );
    assert_eq!(
        b.status().unwrap()["groups"][0]["transitions"],
        b_transitions,
        "b moved during a's restart"
    );
    // Counters survived; the program was replaced in place by the new agent's.
    assert!(a.vip_status(VIP).unwrap()["rx_packets"].as_u64().unwrap() > before);
    assert_ne!(xdp_prog_id(&lan, "a").unwrap(), prog_before);

    // Uninstall after a restart-exit: nothing of vip is left.
    let out = a.cli(&["restart", "--hold-ms", "500"]).unwrap();
    assert!(out.status.success());
    let mut a = a;
    wait_for(Duration::from_secs(5), || a.proc.try_status()).expect("exit");
    let out = lan
        .host("a")
        .ns
        .output(&[
            vip_bin().to_str().unwrap(),
            "agent",
            "--cleanup",
            "--config",
            a.config.to_str().unwrap(),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        xdp_prog_id(&lan, "a").is_none(),
        "XDP still attached after --cleanup"
    );
    assert!(!bpffs.dir.join("a").exists(), "pins left after --cleanup");
    assert!(!lan
        .host("a")
        .ns
        .ip(&["addr", "show"])
        .unwrap()
        .contains("10.0.0.50"));
    assert!(
        lan.host("a").ns.vips_on_lo().is_empty(),
        "a VIP left on lo after --cleanup: {:?}",
        lan.host("a").ns.vips_on_lo()
    );
    drop((a, b));
    teardown(lan);
    drop(bpffs);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn sigterm_with_pins_removes_them() {
    privileged();
    let bpffs = Bpffs::mount().unwrap();
    let lan = lan();
    let cfg = format!(
        "{}pin_dir = \"{}/a\"\n",
        config("a", &["10.0.0.50/24"], "active", "")
            .replacen("[[group]]", "", 0)
            .split("\n\n")
            .next()
            .unwrap()
            .to_string()
            + "\n",
        bpffs.dir.display()
    );
    let cfg =
        format!("{cfg}\n[[group]]\nname = \"web\"\nvips = [\"10.0.0.50/24\"]\nrole = \"active\"\n");
    let mut a = Agent::start(&lan.host("a").ns, "a", &cfg).unwrap();
    assert!(bpffs.dir.join("a/link").exists());
    assert!(a.stop().unwrap().success());
    assert!(!bpffs.dir.join("a").exists(), "pins left after SIGTERM");
    assert!(xdp_prog_id(&lan, "a").is_none());
    drop(a);
    teardown(lan);
}

fn two_groups(extra_db: &str, extra_vips_db: &str) -> String {
    format!(
        "[node]\nname = \"a\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"10.0.0.50/24\"]\nrole = \"active\"\n\n[[group]]\nname = \"db\"\nvips = [\"10.0.0.51/24\"{extra_vips_db}]\nrole = \"active\"\n{extra_db}\n"
    )
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn reload_applies_a_diff_and_refuses_bad_configs() {
    privileged();
    let lan = lan();
    let a = agent(&lan, "a", &two_groups("", ""));
    let c = lan.host("c");
    let to: SocketAddr = (VIP4, 7007).into();
    let _ra = Responder::start(&lan.host("a").ns, to, "a").unwrap();
    let prober = Prober::start(&c.ns, to, Duration::from_millis(1)).unwrap();
    assert!(
        prober.wait_answers("a", 100, Duration::from_secs(3)),
        "a never answered"
    );
    let web_before = a.status().unwrap()["groups"][0].clone();

    // Good reload: db gains a VIP and a setting; web is not touched.
    let write = |text: &str| a.write_config(text).unwrap();
    write(&two_groups("garp_count = 5", ", \"10.0.0.52/24\""));
    let out = a.cli(&["reload"]).unwrap();
    let msg = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        msg.contains("group db: +10.0.0.52/24 settings updated"),
        "{msg}"
    );
    assert!(!msg.contains("web"), "{msg}");
    let cap = lab::Capture::open(&c.ns, "eth0").unwrap();
    cap.clear();
    cap.send(&lab::frames::arp_request(
        mac(&c.mac),
        c.ip4,
        "10.0.0.52".parse().unwrap(),
    ))
    .unwrap();
    assert_eq!(
        arp_replies_for(&cap.collect(WINDOW, |_| true), "10.0.0.52".parse().unwrap()).len(),
        1
    );
    let web_after = a.status().unwrap()["groups"][0].clone();
    assert_eq!(web_before["transitions"], web_after["transitions"]);
    assert_eq!(web_before["since_unix_ms"], web_after["since_unix_ms"]);

    // Bad reloads: refused with the reason; the running state is kept exactly.
    let snapshot = |a: &Agent| {
        let mut s = a.status().unwrap();
        for g in s["groups"].as_array_mut().unwrap() {
            for v in g["vips"].as_array_mut().unwrap() {
                for k in ["rx_packets", "rx_bytes", "passed", "arp_replies"] {
                    v[k] = 0.into();
                }
            }
        }
        s["global"] = 0.into();
        s
    };
    let kept = snapshot(&a);
    for (bad, why) in [
        (two_groups("", ", \"10.9.0.52/24\""), "not in a subnet"),
        (two_groups("colour = 1", ""), "unknown field"),
        (
            two_groups("", "").replace("\"eth0\"", "\"lo\""),
            "node.interface changed",
        ),
        ("this is not toml".to_string(), "expected"),
    ] {
        write(&bad);
        let out = a.cli(&["reload"]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "a bad config was accepted");
        assert!(err.contains("reload refused") && err.contains(why), "{err}");
        assert_eq!(snapshot(&a), kept, "a refused reload changed the state");
    }
    // SIGHUP does the same.
    write(&two_groups("", ""));
    a.proc.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    let gone = wait_for(Duration::from_secs(3), || {
        let s = a.status().ok()?;
        (s["groups"][1]["vips"].as_array()?.len() == 1).then_some(())
    });
    assert!(gone.is_some(), "SIGHUP did not reload");
    assert!(
        a.log_text().contains("reload: reloaded"),
        "{}",
        a.log_text()
    );
    let probes = prober.finish();
    assert_eq!(
        probes.iter().filter(|p| p.answered_by.is_none()).count(),
        0,
        "web lost traffic during reloads"
    );
    drop(a);
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn metrics_endpoint_and_watch() {
    privileged();
    let lan = lan();
    let cfg = config("a", &["10.0.0.50/24"], "active", "").replacen(
        "interface = \"eth0\"",
        "interface = \"eth0\"\nmetrics_listen = \"127.0.0.1:9477\"",
        1,
    );
    let a = agent(&lan, "a", &cfg);
    udp_send(&lan.host("c").ns, (VIP4, 9).into(), 10, 32);
    let body = lan.host("a").ns.run_in(|| {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9477").expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for want in [
        "vip_rx_packets_total{group=\"web\",vip=\"10.0.0.50\"} 10",
        "vip_group_active{group=\"web\"} 1",
        "vip_group_transitions_total{group=\"web\",to=\"active\",reason=\"configured\"} 1",
        "vip_dataplane_events_total{kind=\"parse_errors\"} 0",
        "# TYPE vip_arp_replies counter",
    ] {
        assert!(body.contains(want), "missing `{want}` in:\n{body}");
    }
    assert!(body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty() && l.contains('{'))
        .all(|l| l.starts_with("vip_")));

    let sender = std::thread::spawn({
        let ns = lan.host("c").ns.name.clone();
        move || {
            let n = lab::Netns { name: ns };
            udp_send(&n, (VIP4, 9).into(), 2000, 32);
            std::mem::forget(n);
        }
    });
    let out = std::process::Command::new(vip_bin())
        .args(["watch", "--count", "3", "--interval-ms", "200", "--socket"])
        .arg(&a.socket)
        .output()
        .unwrap();
    sender.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("PKTS/S") && text.contains("10.0.0.50/24"),
        "{text}"
    );
    assert!(
        text.matches("\x1b[H\x1b[2J").count() == 3,
        "not refreshed in place"
    );
    drop(a);
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn only_permitted_users_change_state() {
    privileged();
    let lan = lan();
    // `users` (gid 100) exists on Debian; nobody (65534) is not in it.
    let cfg = config("a", &["10.0.0.50/24"], "active", "").replacen(
        "interface = \"eth0\"",
        "interface = \"eth0\"\ncontrol_group = \"users\"",
        1,
    );
    let a = agent(&lan, "a", &cfg);
    let meta = std::fs::metadata(&a.socket).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 100);
    // The socket's directory must be traversable for the test users.
    std::fs::set_permissions(
        a.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        vip_bin().parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .ok();
    let as_user = |groups: &str, args: &[&str]| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534"]);
        if groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            c.arg(format!("--groups={groups}"));
        }
        c.arg(vip_bin()).args(args).arg("--socket").arg(&a.socket);
        c.output().unwrap()
    };
    let out = as_user("", &["demote", "web"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("permission denied opening the control socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_user("100", &["demote", "web"]);
    assert!(
        out.status.success(),
        "a member of control_group was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(&a), "standby");
    // A socket opened too widely by mistake: the agent still checks the caller.
    std::fs::set_permissions(&a.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_user("", &["promote", "web"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("permission denied: uid 65534 may not change state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_user("", &["status"]);
    assert!(
        out.status.success(),
        "status is readable by anyone who can connect"
    );
    assert_eq!(state(&a), "standby");
    drop(a);
    teardown(lan);
}
