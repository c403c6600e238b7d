//! The agent's contract: it cleans up after itself, rejects bad input with clear
//! errors and changes nothing when it does, and runs in skb mode as a fallback.

mod common;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    process::Command,
};

use common::*;
use lab::{privileged, vip_bin, Agent, Lan};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn sigterm_removes_everything_the_agent_added() {
    privileged();
    let lan = lan();
    let a = lan.host("a");
    let mut agent = agent(
        &lan,
        "a",
        &config("a", &["10.0.0.50/24", "10.0.0.51/24"], "active", ""),
    );
    let link = a.ns.ip(&["link", "show", "dev", "eth0"]).unwrap();
    assert!(link.contains("xdp"), "{link}");
    // VIPs live on lo (IPv4 ones as local routes), where the kernel never announces
    // them.
    let lo = a.ns.vips_on_lo();
    let on_lo = |v: &str| lo.contains(&v.parse().unwrap());
    assert!(on_lo("10.0.0.50") && on_lo("10.0.0.51"), "{lo:?}");
    let eth = a.ns.ip(&["addr", "show", "dev", "eth0"]).unwrap();
    assert!(!eth.contains("10.0.0.50"), "{eth}");
    assert!(agent.socket.exists());

    let pid = agent.proc.pid();
    let status = agent.stop().expect("agent exit status");
    assert!(
        status.success(),
        "agent exited with {status}:\n{}",
        agent.log_text()
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "agent process {pid} still there"
    );
    let link = a.ns.ip(&["link", "show", "dev", "eth0"]).unwrap();
    assert!(!link.contains("xdp"), "XDP still attached: {link}");
    let addrs = a.ns.ip(&["addr", "show"]).unwrap();
    assert!(
        !addrs.contains("10.0.0.50") && !addrs.contains("10.0.0.51"),
        "VIP left behind: {addrs}"
    );
    let lo = a.ns.vips_on_lo();
    assert!(lo.is_empty(), "VIP left on lo: {lo:?}");
    assert!(!agent.socket.exists(), "control socket left behind");
    assert!(agent.log_text().contains("SIGTERM"));
    drop(agent);
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn bad_control_messages_get_errors_and_change_nothing() {
    privileged();
    let lan = lan();
    let agent = agent(&lan, "a", &config("a", &["10.0.0.50/24"], "active", ""));
    let before = agent.status().unwrap();
    let raw = |bytes: &[u8]| -> serde_json::Value {
        let mut s = UnixStream::connect(&agent.socket).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("unreadable answer {out:?}: {e}"))
    };
    for bad in [
        &b"hello\n"[..],
        b"{\"command\":\"promote\"}\n",
        b"{\"command\":\"demote\",\"group\":\"web\",\"forward_to\":\"ff:ff\"}\n",
        b"{\"command\":\"reboot\"}\n",
        b"\x00\x01\x02\xff\n",
        b"",
    ] {
        let r = raw(bad);
        assert_eq!(r["ok"], false, "{bad:?} -> {r}");
        assert!(r["error"].as_str().unwrap().contains("malformed"), "{r}");
    }
    let huge = vec![b'x'; 200 * 1024];
    let r = raw(&huge);
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("larger than"), "{r}");
    // Semantic errors: named, and nothing changes.
    let out = agent.cli(&["promote", "nosuch"]).unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no group named `nosuch` (groups: web)"),
        "{}",
        stderr(&out)
    );
    let mut after = agent.status().unwrap();
    after["global"] = before["global"].clone();
    assert_eq!(before, after, "state changed after bad requests");
    assert!(
        agent.proc.pid() > 0
            && std::path::Path::new(&format!("/proc/{}", agent.proc.pid())).exists()
    );
    drop(agent);
    teardown(lan);
}

#[test]
fn cli_errors_are_clear() {
    let out = Command::new(vip_bin())
        .args(["demote", "web", "--forward-to", "zz:zz"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a MAC address"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(vip_bin())
        .args(["demote", "web", "--forward-to", "ff:ff:ff:ff:ff:ff"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("not a unicast MAC"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(vip_bin())
        .args(["status", "--socket", "/nonexistent/vip.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the agent at /nonexistent/vip.sock"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(vip_bin())
        .args(["agent", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn check_config_names_the_key_and_why() {
    privileged();
    let lan = Lan::new(&["a"]).unwrap();
    let a = lan.host("a");
    let dir = std::env::temp_dir().join(format!("vip-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        a.ns.output(&[
            vip_bin().to_str().unwrap(),
            "check-config",
            p.to_str().unwrap(),
        ])
        .unwrap()
    };
    let ok = check("ok.toml", &config("a", &["10.0.0.50/24"], "active", ""));
    assert!(ok.status.success(), "{}", stderr(&ok));
    let cases = [
        (
            "outside.toml",
            config("a", &["10.9.0.50/24"], "active", ""),
            "group[web].vips[0]",
            "not in a subnet of interface eth0 (10.0.0.0/24)",
        ),
        (
            "real.toml",
            config("a", &["10.0.0.10/24"], "active", ""),
            "group[web].vips[0]",
            "is a real address of this host",
        ),
        (
            "unknown.toml",
            config("a", &["10.0.0.50/24"], "active", "colour = \"red\""),
            "unknown field `colour`",
            "",
        ),
        (
            "two.toml",
            format!(
                "{}\n[[group]]\nname = \"db\"\nvips = [\"10.0.0.50/24\"]\nrole = \"standby\"\n",
                config("a", &["10.0.0.50/24"], "active", "")
            ),
            "group[db].vips[0]",
            "also in group `web`",
        ),
        (
            "iface.toml",
            config("a", &["10.0.0.50/24"], "active", "").replace("\"eth0\"", "\"eth9\""),
            "node.interface",
            "does not exist",
        ),
        (
            "role.toml",
            config("a", &["10.0.0.50/24"], "primary", ""),
            "group[web].role",
            "not a role",
        ),
    ];
    for (name, text, key, why) in &cases {
        let out = check(name, text);
        assert!(!out.status.success(), "{name} passed");
        let e = stderr(&out);
        assert!(e.contains(key) && e.contains(why), "{name}: {e}");
    }
    let many: Vec<String> = (100..112).map(|i| format!("10.0.0.{i}/24")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let out = check("many.toml", &config("a", &many, "active", ""));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("recommended 10"));
    std::fs::remove_dir_all(&dir).unwrap();
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn skb_mode_works_without_napi_on_the_peer() {
    privileged();
    // No xdp-pass on the switch ports: generic XDP transmits through the stack.
    let lan = Lan::new(&["a", "c"]).unwrap();
    let (a, c) = (lan.host("a"), lan.host("c"));
    let agent = Agent::start_with(
        &a.ns,
        "a",
        &config("a", &["10.0.0.50/24"], "active", ""),
        &["--xdp-mode", "skb"],
    )
    .unwrap();
    assert!(a
        .ns
        .ip(&["link", "show", "dev", "eth0"])
        .unwrap()
        .contains("xdpgeneric"));
    assert!(ping(&c.ns, VIP));
    assert_eq!(
        kernel_neighbour(&c.ns, VIP).as_deref(),
        Some(a.mac.as_str())
    );
    assert_eq!(agent.status().unwrap()["xdp_mode"], "skb");
    assert!(counter(&agent, VIP, "arp_replies") >= 1);
    drop(agent);
    teardown(lan);
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn a_second_agent_on_the_same_socket_is_refused() {
    privileged();
    let lan = lan();
    let first = agent(&lan, "a", &config("a", &["10.0.0.50/24"], "active", ""));
    let cfg = std::fs::read_to_string(&first.config).unwrap();
    let path = first.config.with_file_name("second.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = lan
        .host("a")
        .ns
        .output(&[
            vip_bin().to_str().unwrap(),
            "agent",
            "--config",
            path.to_str().unwrap(),
        ])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another agent is already listening"),
        "{}",
        stderr(&out)
    );
    assert!(first.status().is_ok(), "the first agent was disturbed");
    drop(first);
    teardown(lan);
}
