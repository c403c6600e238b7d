//! keepalived decides, vip follows: the real keepalived from Debian runs VRRP
//! (unicast, version 3) in the server namespaces and calls `vip notify` on every
//! transition; vip's maps, addresses and announcements follow.

mod common;

use std::{process::Stdio, time::Duration};

use common::*;
use lab::{privileged, vip_bin, wait_for, Agent, Lan, Proc};

fn keepalived_conf(
    lan: &Lan,
    me: &str,
    peer: &str,
    priority: u8,
    socket: &std::path::Path,
) -> String {
    format!(
        r#"global_defs {{
    router_id {me}
    vrrp_version 3
    enable_script_security
    script_user root
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int 0.1
    unicast_src_ip {src}
    unicast_peer {{
        {peer_ip}
    }}
    virtual_ipaddress {{
        10.0.0.50/32 dev lo
    }}
    notify "{vip} notify --socket {socket}"
}}
"#,
        src = lan.host(me).ip4,
        peer_ip = lan.host(peer).ip4,
        vip = vip_bin().display(),
        socket = socket.display(),
    )
}

/// keepalived in the foreground in `host`'s namespace, with its own pid files.
fn keepalived(lan: &Lan, host: &str, conf: &str, dir: &std::path::Path) -> Proc {
    let conf_path = dir.join(format!("keepalived-{host}.conf"));
    std::fs::write(&conf_path, conf).unwrap();
    let pid = |k: &str| dir.join(format!("{k}-{host}.pid")).display().to_string();
    let mut cmd = lan.host(host).ns.command(&[
        "keepalived",
        "--dont-fork",
        "--log-console",
        "--log-detail",
        "--vrrp",
        "--no-syslog",
        "-f",
        conf_path.to_str().unwrap(),
        "-p",
        &pid("ka"),
        "-r",
        &pid("vrrp"),
    ]);
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("keepalived-{host}.log"))).unwrap());
    Proc::spawn(&format!("keepalived {host}"), cmd).unwrap()
}

fn wait_states(a: &Agent, b: &Agent, want: (&str, &str), dir: &std::path::Path) {
    let ok = wait_for(Duration::from_secs(10), || {
        ((state(a).as_str(), state(b).as_str()) == want).then_some(())
    });
    if ok.is_none() {
        let logs: String = ["a", "b"]
            .iter()
            .map(|h| {
                std::fs::read_to_string(dir.join(format!("keepalived-{h}.log"))).unwrap_or_default()
            })
            .collect();
        panic!(
            "states ({}, {}), wanted {want:?}\nkeepalived logs:\n{logs}",
            state(a),
            state(b)
        );
    }
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn keepalived_decides_vip_follows() {
    privileged();
    let lan = lan();
    let dir = std::env::temp_dir().join(format!("vip-keepalived-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = |n: &str| {
        format!("[node]\nname = \"{n}\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"10.0.0.50/24\"]\nkeepalived_instance = \"VI_1\"\n")
    };
    let a = Agent::start(&lan.host("a").ns, "a", &cfg("a")).unwrap();
    let b = Agent::start(&lan.host("b").ns, "b", &cfg("b")).unwrap();
    assert_eq!(
        (state(&a), state(&b)),
        ("standby".into(), "standby".into()),
        "vip must wait for keepalived"
    );

    let mut ka = keepalived(
        &lan,
        "a",
        &keepalived_conf(&lan, "a", "b", 150, &a.socket),
        &dir,
    );
    let _kb = keepalived(
        &lan,
        "b",
        &keepalived_conf(&lan, "b", "a", 100, &b.socket),
        &dir,
    );
    wait_states(&a, &b, ("active", "standby"), &dir);
    let reason = a.status().unwrap()["groups"][0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("keepalived: INSTANCE VI_1 MASTER"),
        "{reason}"
    );
    assert!(ping(&lan.host("c").ns, VIP));
    assert_eq!(
        kernel_neighbour(&lan.host("c").ns, VIP).as_deref(),
        Some(lan.host("a").mac.as_str())
    );

    // keepalived on a stops: it hands over (priority 0), b's keepalived takes over and
    // tells vip on b; a's keepalived tells vip on a it stopped.
    ka.stop(Duration::from_secs(5));
    wait_states(&a, &b, ("standby", "active"), &dir);
    let c = lan.host("c");
    let moved = wait_for(Duration::from_secs(3), || {
        ping(&c.ns, VIP);
        (kernel_neighbour(&c.ns, VIP).as_deref() == Some(lan.host("b").mac.as_str())).then_some(())
    });
    assert!(
        moved.is_some(),
        "client still at {:?}",
        kernel_neighbour(&c.ns, VIP)
    );
    assert_eq!(a.vip_status(VIP).unwrap()["action"], "none");
    assert_eq!(b.vip_status(VIP).unwrap()["action"], "local");

    // Bad notifications change nothing and say why.
    let out = b
        .cli(&["notify", "INSTANCE", "VI_9", "MASTER", "100"])
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("no group has keepalived_instance = \"VI_9\""));
    let out = b.cli(&["notify", "INSTANCE", "VI_1", "PANIC"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown keepalived state"));
    assert_eq!(state(&b), "active");
    let _ = std::fs::remove_dir_all(&dir);
    drop((a, b, _kb));
    teardown(lan);
}
