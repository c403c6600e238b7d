//! The command line as users and systemd run it: `vip check-config -` reads the config
//! from standard input, and under systemd (`JOURNAL_STREAM` set) every log line carries
//! a journald priority prefix and no timestamp, while `RUST_LOG` still filters.

mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use lab::{privileged, vip_bin, wait_for, Proc};

fn check_stdin(config: &str, journal: bool) -> std::process::Output {
    let mut c = Command::new(vip_bin());
    c.args(["check-config", "-", "--no-host"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("JOURNAL_STREAM");
    if journal {
        c.env("JOURNAL_STREAM", "8:12345");
    }
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn check_config_reads_standard_input() {
    let good = config("a", &["10.0.0.50/24"], "active", "");
    let out = check_stdin(&good, false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("<stdin>: ok (1 groups, 1 VIPs)"),
        "{stdout}"
    );

    // Errors still name the keys.
    let bad = config("a", &["10.0.0.50/24"], "active", "advert_interval_ms = 0")
        .replace("name = \"a\"", "name = \"\"");
    let out = check_stdin(&bad, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("error: ") && stderr.contains("node.name"),
        "{stderr}"
    );
    // Under systemd the error line carries journald's priority 3 (err).
    let out = check_stdin(&bad, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("<3>error: ") && stderr.contains("node.name"),
        "{stderr}"
    );
    // A file name still works, and `-` is not mistaken for one.
    let out = Command::new(vip_bin())
        .args(["check-config", "/nonexistent/vip.toml", "--no-host"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vip.toml"));
}

#[test]
fn version_names_the_revision() {
    let out = Command::new(vip_bin()).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.starts_with(&format!("vip {} (rev ", env!("CARGO_PKG_VERSION")))
            && v.trim_end().ends_with(')'),
        "{v}"
    );
}

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn agent_logs_for_journald_under_systemd() {
    privileged();
    let lan = lan();
    let dir = std::env::temp_dir().join(format!("vip-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("vip.sock");
    let cfg = dir.join("vip.toml");
    let log = dir.join("agent.log");
    std::fs::write(
        &cfg,
        config("a", &["10.0.0.50/24"], "active", "").replacen(
            "[node]",
            &format!("[node]\ncontrol_socket = \"{}\"", socket.display()),
            1,
        ),
    )
    .unwrap();
    let bin = vip_bin();
    let mut cmd = lan.host("a").ns.command(&[
        bin.to_str().unwrap(),
        "agent",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    cmd.env("JOURNAL_STREAM", "8:12345")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut agent = Proc::spawn("agent a (journal)", cmd).unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(15), || text()
            .contains("agent ready")
            .then_some(()))
        .is_some(),
        "the agent did not get ready:\n{}",
        text()
    );
    agent.stop(Duration::from_secs(10));
    let text = text();
    assert!(
        text.lines().any(|l| l.starts_with("<6>agent ready")),
        "{text}"
    );
    for l in text.lines().filter(|l| !l.is_empty()) {
        let prio = l
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .map(|(p, _)| p);
        assert!(
            matches!(prio, Some("3" | "4" | "6")),
            "not a journald line at RUST_LOG=info: {l:?}\n{text}"
        );
        assert!(
            !l.contains(" INFO ") && !l.contains("[20"),
            "a timestamp or level: {l:?}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    teardown(lan);
}

/// An elected config for `vip check-config - --no-host`, with `extra` in its group.
fn elected_config(extra: &str) -> String {
    format!(
        "[node]\nname = \"a\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"api\"\nvips = [\"10.0.0.60/24\"]\npeers = [\"10.0.0.12\"]\npriority = 150\n{extra}\n"
    )
}

#[test]
fn check_config_warns_about_an_elected_group_without_a_key() {
    let out = check_stdin(&elected_config(""), false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 1, "{stdout}");
    for says in [
        "group[api] has no auth_key_file",
        "any host on the segment",
        "claim the VIPs",
        "vip keygen",
    ] {
        assert!(warnings[0].contains(says), "{says}: {stdout}");
    }
    // A static group is not elected: nothing to say.
    let out = check_stdin(&config("a", &["10.0.0.50/24"], "active", ""), false);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"));
}

#[test]
fn keygen_writes_a_key_the_config_accepts_and_never_overwrites_by_accident() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("vip-keygen-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("api.key");
    let keygen = |extra: &[&str]| {
        Command::new(vip_bin())
            .arg("keygen")
            .arg(&key)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = keygen(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    let line = format!("auth_key_file = \"{}\"", key.display());
    assert!(
        stdout.contains(&key.display().to_string()) && stdout.lines().any(|l| l == line),
        "{stdout}"
    );
    let first = std::fs::read_to_string(&key).unwrap();
    assert_eq!(first.len(), 65, "{first:?}");
    assert!(first.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The printed line makes a config that reads the key, and the warning is gone.
    let mut c = Command::new(vip_bin());
    let cfg = dir.join("vip.toml");
    std::fs::write(&cfg, elected_config(&line)).unwrap();
    let out = c
        .args(["check-config", "--no-host"])
        .arg(&cfg)
        .output()
        .unwrap();
    let checked = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(!checked.contains("auth_key_file"), "{checked}");

    // Again: refused, the key untouched; with --force: a new key.
    let out = keygen(&[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), first);
    let out = keygen(&["--force"]);
    assert!(out.status.success(), "{out:?}");
    let second = std::fs::read_to_string(&key).unwrap();
    assert_eq!(second.len(), 65);
    assert_ne!(second, first);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
