//! The configuration's tests: every rule names its key.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use super::*;
use crate::{host::Interface, mac::Mac};

const GOOD: &str = r#"
[node]
name = "a"
interface = "eth0"

[[group]]
name = "web"
vips = ["10.0.0.50/24"]
role = "active"
"#;

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn eth0(addrs: &[(&str, u8)]) -> Interface {
    Interface {
        name: "eth0".into(),
        index: 2,
        mac: Mac([2, 0, 0, 0, 0, 1]),
        addrs: addrs
            .iter()
            .map(|(a, p)| (a.parse().unwrap(), *p))
            .collect(),
        kind: None,
        up: true,
    }
}

fn host(cfg: &Config, iface: Interface) -> Result<HostReport, ConfigError> {
    let all: HashMap<_, _> = [(iface.name.clone(), iface.addrs.clone())].into();
    check_host(cfg, &|n| (n == iface.name).then(|| iface.clone()), &all)
}

#[test]
fn good_config_has_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.node.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
    assert_eq!(c.node.xdp_mode, XdpMode::Auto);
    assert_eq!(c.groups[0].vips[0].to_string(), "10.0.0.50/24");
    assert_eq!(c.groups[0].role, Role::Active);
    assert_eq!(c.groups[0].garp.count, DEFAULT_GARP_COUNT);
}

#[test]
fn unknown_key_is_named() {
    let e = parse(&GOOD.replace("role = ", "rol = "))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `rol`"), "{e}");
}

#[test]
fn bad_values_are_named() {
    let p = problems(&GOOD.replace(
        "\"10.0.0.50/24\"",
        "\"10.0.0.50\", \"10.0.0.300/24\", \"10.0.0.51/33\"",
    ));
    let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "group[web].vips[0]",
            "group[web].vips[1]",
            "group[web].vips[2]"
        ]
    );
    assert!(p[0].message.contains("ADDRESS/PREFIX"));
    let p = problems(&GOOD.replace("\"active\"", "\"master\""));
    assert_eq!(p[0].key, "group[web].role");
    let p = problems(&GOOD.replace("\"10.0.0.50/24\"", "\"10.0.0.255/24\""));
    assert!(p[0].message.contains("broadcast"), "{p:?}");
    let p = problems(&GOOD.replace("\"10.0.0.50/24\"", "\"fe80::1/64\""));
    assert!(p[0].message.contains("unicast"), "{p:?}");
}

#[test]
fn vip_in_two_groups() {
    let text = format!(
        "{GOOD}\n[[group]]\nname = \"db\"\nvips = [\"10.0.0.50/24\"]\nrole = \"standby\"\n"
    );
    let p = problems(&text);
    assert_eq!(p[0].key, "group[db].vips[0]");
    assert!(p[0].message.contains("also in group `web`"), "{p:?}");
}

#[test]
fn duplicate_group_names() {
    let text = format!(
        "{GOOD}\n[[group]]\nname = \"web\"\nvips = [\"10.0.0.51/24\"]\nrole = \"standby\"\n"
    );
    assert_eq!(problems(&text)[0].key, "group[web].name");
}

#[test]
fn subnet_rule() {
    let c = parse(GOOD).unwrap();
    assert!(host(&c, eth0(&[("10.0.0.1", 24)])).is_ok());
    let e = host(&c, eth0(&[("10.1.0.1", 24)])).unwrap_err().to_string();
    assert!(
        e.contains("group[web].vips[0]") && e.contains("10.1.0.0/24"),
        "{e}"
    );
    // Same network, different prefix: not the VIP's subnet.
    assert!(host(&c, eth0(&[("10.0.0.1", 16)])).is_err());
}

#[test]
fn real_address_rule() {
    let c = parse(&GOOD.replace("10.0.0.50/24", "10.0.0.1/24")).unwrap();
    let e = host(&c, eth0(&[("10.0.0.1", 24)])).unwrap_err().to_string();
    assert!(e.contains("real address"), "{e}");
    // A /32 leftover of ours is a warning, not a real address.
    let c = parse(GOOD).unwrap();
    let r = host(&c, eth0(&[("10.0.0.1", 24), ("10.0.0.50", 32)])).unwrap();
    assert!(r.warnings[0].contains("already assigned"));
}

#[test]
fn echo_timing_rules_name_the_keys() {
    let elected = |extra: &str| {
        format!("{GOOD}\n[[group]]\nname = \"api\"\nvips = [\"10.0.0.60/24\"]\npeers = [\"10.0.0.12\"]\npriority = 150\n{extra}\n")
    };
    // Defaults: 2 ms, 6 misses, no warning.
    let c = parse(&elected("")).unwrap();
    let e = c.groups[1].election.clone().unwrap();
    assert_eq!(
        (e.echo_interval, e.echo_misses),
        (Duration::from_millis(2), 6)
    );
    assert!(timing_warnings(&c).is_empty(), "{:?}", timing_warnings(&c));
    // Off.
    let c = parse(&elected("echo_interval_ms = 0")).unwrap();
    assert!(c.groups[1]
        .election
        .as_ref()
        .unwrap()
        .echo_interval
        .is_zero());
    // Refused, naming the keys.
    for (extra, key, says) in [
        (
            "echo_interval_ms = 200",
            "group[api].echo_interval_ms",
            "above advert_interval_ms",
        ),
        ("echo_misses = 2", "group[api].echo_misses", "out of range"),
        (
            "advert_interval_ms = 10\necho_interval_ms = 10\necho_misses = 3",
            "group[api].echo_interval_ms",
            "echo_interval_ms * echo_misses = 30 ms is not below three advert intervals",
        ),
    ] {
        let err = parse(&elected(extra)).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(says), "{extra}: {err}");
    }
    let err = parse(&format!("{GOOD}echo_misses = 4\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("echo_misses") && err.contains("only applies to elected groups"),
        "{err}"
    );
    // Valid but risky: explained.
    let c = parse(&elected(
        "echo_interval_ms = 1\necho_misses = 3\nadvert_interval_ms = 10",
    ))
    .unwrap();
    let w = timing_warnings(&c).join("\n");
    assert!(
        w.contains("echo_misses = 3") && w.contains("about every"),
        "{w}"
    );
    assert!(w.contains("= 3 ms: a probe delayed"), "{w}");
    assert!(w.contains("advert_interval_ms = 10"), "{w}");
}

#[test]
fn elected_groups_without_a_key_are_warned_about() {
    let elected = |name: &str, vip: &str, extra: &str| {
        format!("[[group]]\nname = \"{name}\"\nvips = [\"{vip}/24\"]\npeers = [\"10.0.0.12\"]\npriority = 150\n{extra}\n")
    };
    let text = format!(
        "{GOOD}\n{}{}{}",
        elected("api", "10.0.0.60", ""),
        elected("keyed", "10.0.0.61", "auth_key_file = \"/etc/vip/k\""),
        elected("lb", "10.0.0.62", "balance = {}"),
    );
    let c = parse(&text).unwrap();
    let w = auth_warnings(&c);
    // The static group `web` and the keyed group are not named.
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(
        w[0].starts_with("group[api] has no auth_key_file"),
        "{}",
        w[0]
    );
    for says in [
        "any host on the segment",
        "claim the VIPs",
        "its own MAC",
        "forged hold",
        "vip keygen",
    ] {
        assert!(w[0].contains(says), "{says}: {}", w[0]);
    }
    assert!(!w[0].contains("balance"), "{}", w[0]);
    assert!(
        w[1].starts_with("group[lb] has no auth_key_file") && w[1].contains("balance as a member"),
        "{}",
        w[1]
    );
    // Every warning is one line, and each reaches the host check's report.
    assert!(w.iter().all(|l| !l.contains('\n')));
    let r = host(&c, eth0(&[("10.0.0.1", 24)])).unwrap();
    for l in &w {
        assert!(r.warnings.contains(l), "{:?}", r.warnings);
    }
    assert_eq!(file_warnings(&c).len(), timing_warnings(&c).len() + 2);
    // keepalived groups elect elsewhere: nothing to say here.
    let ka = format!("{GOOD}\n[[group]]\nname = \"db\"\nvips = [\"10.0.0.70/24\"]\nkeepalived_instance = \"VI_1\"\n");
    assert!(auth_warnings(&parse(&ka).unwrap()).is_empty());
}

#[test]
fn balance_is_for_elected_groups_with_sound_ports() {
    let grp = |name: &str, vip: &str, extra: &str| {
        format!("\n[[group]]\nname = \"{name}\"\nvips = [\"{vip}/24\"]\npeers = [\"10.0.0.12\"]\npriority = 150\n{extra}\n")
    };
    let c = parse(&format!(
        "{GOOD}{}",
        grp("api", "10.0.0.60", "balance = {}")
    ))
    .unwrap();
    assert_eq!(c.groups[1].balance, Some(Balance::default()));
    let c = parse(&format!(
        "{GOOD}{}",
        grp(
            "api",
            "10.0.0.60",
            "balance = { ports = [\"tcp/443\", \"UDP/53\"] }"
        )
    ))
    .unwrap();
    assert_eq!(
        c.groups[1].balance.as_ref().unwrap().ports,
        [(6, 443), (17, 53)]
    );
    for (text, key, says) in [
        (
            format!("{GOOD}balance = {{}}\n"),
            "group[web].balance",
            "only applies to elected groups",
        ),
        (
            format!(
                "{GOOD}{}",
                grp("api", "10.0.0.60", "balance = { ports = [\"tcp/0\"] }")
            ),
            "group[api].balance.ports[0]",
            "is not PROTOCOL/PORT",
        ),
        (
            format!(
                "{GOOD}{}",
                grp("api", "10.0.0.60", "balance = { ports = [\"sctp/9\"] }")
            ),
            "group[api].balance.ports[0]",
            "is not PROTOCOL/PORT",
        ),
        (
            format!(
                "{GOOD}{}",
                grp(
                    "api",
                    "10.0.0.60",
                    "balance = { ports = [\"tcp/80\", \"tcp/80\"] }"
                )
            ),
            "group[api].balance.ports[1]",
            "listed twice",
        ),
        (
            format!(
                "{GOOD}{}",
                grp("api", "10.0.0.60", "balance = { ports = [] }")
            ),
            "group[api].balance.ports",
            "is empty",
        ),
        (
            format!(
                "{GOOD}{}{}",
                grp("api", "10.0.0.60", "balance = { ports = [\"tcp/80\"] }"),
                grp("www", "10.0.0.61", "balance = { ports = [\"tcp/80\"] }")
            ),
            "group[www].balance.ports[0]",
            "also balanced by group api",
        ),
        (
            format!(
                "{GOOD}{}",
                grp("api", "10.0.0.60", "balance = { port = 1 }")
            ),
            "balance",
            "unknown field",
        ),
    ] {
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(says), "{key}: {err}");
    }
}

#[test]
fn echo_false_alarms_follow_the_arithmetic() {
    // 2 ms, 6 misses: 2 % loss per frame is 3.96 % per round trip; 0.0396^6 per probe.
    let d = echo_false_alarm_every(Duration::from_millis(2), 6, 0.02);
    assert!((4.0..8.0).contains(&(d.as_secs_f64() / 86400.0)), "{d:?}");
    let d = echo_false_alarm_every(Duration::from_millis(2), 6, 0.01);
    assert!(d > Duration::from_secs(300 * 86400), "{d:?}");
}

#[test]
fn more_than_ten_vips_warns() {
    let vips: Vec<String> = (10..22).map(|i| format!("\"10.0.0.{i}/24\"")).collect();
    let c = parse(&GOOD.replace("\"10.0.0.50/24\"", &vips.join(","))).unwrap();
    let r = host(&c, eth0(&[("10.0.0.1", 24)])).unwrap();
    assert!(
        r.warnings.iter().any(|w| w.contains("recommended")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn missing_interface() {
    let c = parse(GOOD).unwrap();
    let e = check_host(&c, &|_| None, &HashMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("node.interface"), "{e}");
}

/// 50k random mutations of valid configs: the parser never panics, and every
/// error it returns says something.
#[test]
fn parser_survives_mutations() {
    let seeds = [
        GOOD.to_string(),
        format!("{GOOD}\n[[group]]\nname = \"api\"\nvips = [\"10.0.0.60/24\", \"2001:db8::60/64\"]\npeers = [\"10.0.0.12\"]\npriority = 150\nadvert_interval_ms = 10\nauth_key_file = \"/k\"\ntrack_script = {{ command = [\"true\"], interval_ms = 100 }}\ntrack_tcp = {{ address = \"127.0.0.1:80\" }}\n"),
        format!("{GOOD}\n[[group]]\nname = \"db\"\nvips = [\"10.0.0.70/24\"]\nkeepalived_instance = \"VI_1\"\n"),
    ];
    let tokens = [
        "[",
        "]",
        "=",
        "\"",
        "\n",
        "[[group]]",
        "peers",
        "priority",
        "-1",
        "99999999999",
        "\u{0}",
        "/",
        "::",
        "0x",
    ];
    let mut rng = vip_common::rng::XorShift64::new(0x1234_5678_9abc_def1);
    let mut rnd = || rng.next_u64() as usize;
    for i in 0..50_000 {
        let mut t: Vec<char> = seeds[i % seeds.len()].chars().collect();
        for _ in 0..1 + rnd() % 4 {
            let at = rnd() % (t.len() + 1);
            match rnd() % 3 {
                0 if !t.is_empty() => {
                    t.remove(at.min(t.len() - 1));
                }
                1 => t
                    .splice(at..at, tokens[rnd() % tokens.len()].chars())
                    .for_each(drop),
                _ => t.insert(at, char::from_u32((rnd() % 0x250) as u32).unwrap_or('x')),
            }
        }
        let text: String = t.into_iter().collect();
        if let Err(e) = parse(&text) {
            assert!(
                !e.to_string().trim().is_empty(),
                "an empty error for {text:?}"
            );
        }
    }
}

#[test]
fn shipped_example_parses() {
    let c = parse(include_str!("../../../dist/vip.toml")).expect("dist/vip.toml");
    assert!(c.groups[0].election.is_some());
}

#[test]
fn eip_limits() {
    let eip = |a: &str, v: &str| {
        format!("\n[[eip]]\naddress = \"{a}\"\nvip = \"{v}\"\nexternal_interface = \"eth1\"\ninternal_interface = \"eth0\"\n")
    };
    let c = parse(&format!("{GOOD}{}", eip("203.0.113.10", "10.0.0.50"))).unwrap();
    assert_eq!(c.eips[0].vip.to_string(), "10.0.0.50");
    let p = problems(&format!("{GOOD}{}", eip("203.0.113.10", "2001:db8::50")));
    assert!(
        p[0].message
            .contains("an IPv6 VIP cannot bind an elastic IP"),
        "{p:?}"
    );
    let p = problems(&format!(
        "{GOOD}{}{}",
        eip("203.0.113.10", "10.0.0.50"),
        eip("203.0.113.11", "10.0.0.50")
    ));
    assert!(
        p[0].key == "eip[203.0.113.11].vip"
            && p[0].message.contains("already bound to eip[203.0.113.10]")
            && p[0].message.contains("at most one elastic IP"),
        "{p:?}"
    );
    let p = problems(&format!(
        "{GOOD}{}{}",
        eip("203.0.113.10", "10.0.0.50"),
        eip("203.0.113.10", "10.0.0.51")
    ));
    assert!(
        p[0].key == "eip[203.0.113.10].address" && p[0].message.contains("one VIP per elastic IP"),
        "{p:?}"
    );
    let p = problems(&format!("{GOOD}{}", eip("2001:db8::1", "10.0.0.50")));
    assert!(p[0].message.contains("IPv4"), "{p:?}");
}

/// An `[[eip]]` of GOOD's VIP with `nodes` set to `nodes` (TOML), or without the
/// key when None.
fn eip_with_nodes(nodes: Option<&str>) -> String {
    let line = nodes.map(|n| format!("nodes = {n}\n")).unwrap_or_default();
    format!(
        "{GOOD}\n[[eip]]\naddress = \"203.0.113.10\"\nvip = \"10.0.0.50\"\nexternal_interface = \"eth1\"\ninternal_interface = \"eth0\"\n{line}"
    )
}

#[test]
fn eip_nodes_are_unicast_macs_each_once() {
    let c = parse(&eip_with_nodes(Some(
        r#"["02:00:00:00:00:0A", "02:00:00:00:00:0b"]"#,
    )))
    .unwrap();
    assert_eq!(
        c.eips[0].nodes,
        Some(vec![Mac([2, 0, 0, 0, 0, 0x0a]), Mac([2, 0, 0, 0, 0, 0x0b])])
    );
    let key = "eip[203.0.113.10].nodes";
    for (nodes, why) in [
        (
            r#"["01:00:5e:00:00:01"]"#,
            "01:00:5e:00:00:01 is not a unicast MAC",
        ),
        (
            r#"["ff:ff:ff:ff:ff:ff"]"#,
            "ff:ff:ff:ff:ff:ff is not a unicast MAC",
        ),
        (
            r#"["00:00:00:00:00:00"]"#,
            "00:00:00:00:00:00 is not a unicast MAC",
        ),
        (
            r#"["02:00:00:00:00:0a", "02:00:00:00:00:0A"]"#,
            "02:00:00:00:00:0a is listed twice",
        ),
        (
            r#"["02:00:00:00:00"]"#,
            "`02:00:00:00:00` is not a MAC address",
        ),
        ("[]", "must list the MACs of the VIP's nodes"),
    ] {
        let p = problems(&eip_with_nodes(Some(nodes)));
        assert!(
            p.len() == 1 && p[0].key == key && p[0].message.contains(why),
            "{nodes}: {p:?}"
        );
    }
    let many: Vec<String> = (0..=vip_common::MAX_EIP_NODES_PER_EIP)
        .map(|i| format!("\"02:00:00:00:01:{i:02x}\""))
        .collect();
    let p = problems(&eip_with_nodes(Some(&format!("[{}]", many.join(", ")))));
    assert!(
        p[0].key == key && p[0].message.contains("at most 16"),
        "{p:?}"
    );
    // Not a list of strings: the parser names the key.
    let e = parse(&eip_with_nodes(Some("\"02:00:00:00:00:0a\"")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nodes"), "{e}");
}

/// A config written before `nodes` existed still loads, and says what it risks.
#[test]
fn an_eip_without_nodes_loads_with_a_warning_naming_the_key() {
    let ifaces = |n: &str| {
        let mut i = eth0(&[("10.0.0.1", 24)]);
        if n == "eth1" {
            i.name = "eth1".into();
            i.index = 3;
            i.addrs = vec![("198.51.100.1".parse().unwrap(), 24)];
        }
        (n == "eth0" || n == "eth1").then_some(i)
    };
    let all: HashMap<String, Vec<(IpAddr, u8)>> = HashMap::new();
    let c = parse(&eip_with_nodes(None)).unwrap();
    assert_eq!(c.eips[0].nodes, None);
    let r = check_host(&c, &ifaces, &all).unwrap();
    let w: Vec<&String> = r.warnings.iter().filter(|w| w.contains("eip[")).collect();
    assert!(
        w.len() == 1
            && w[0].starts_with("eip[203.0.113.10].nodes is not set")
            && w[0].contains("one forged ARP")
            && w[0].contains("on eth0"),
        "{:?}",
        r.warnings
    );
    let c = parse(&eip_with_nodes(Some(r#"["02:00:00:00:00:0a"]"#))).unwrap();
    let r = check_host(&c, &ifaces, &all).unwrap();
    assert!(
        !r.warnings.iter().any(|w| w.contains("eip[")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn ipv6_vips_follow_the_same_rules() {
    let v6 = |vip: &str| GOOD.replace("\"10.0.0.50/24\"", &format!("\"{vip}\""));
    let c = parse(&v6("2001:db8::50/64")).unwrap();
    let iface = eth0(&[("10.0.0.1", 24), ("2001:db8::1", 64), ("fe80::1", 64)]);
    assert!(host(&c, iface.clone()).is_ok());
    // Another prefix, or only a link-local subnet: not on-link.
    let e = host(&parse(&v6("2001:db8:1::50/64")).unwrap(), iface.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not in a subnet") && e.contains("2001:db8::/64"),
        "{e}"
    );
    let e = host(&c, eth0(&[("fe80::1", 64)])).unwrap_err().to_string();
    assert!(e.contains("not in a subnet"), "{e}");
    // A real address of the host, or a /128 leftover (a warning).
    let e = host(&parse(&v6("2001:db8::1/64")).unwrap(), iface)
        .unwrap_err()
        .to_string();
    assert!(e.contains("real address"), "{e}");
    let r = host(&c, eth0(&[("2001:db8::1", 64), ("2001:db8::50", 128)])).unwrap();
    assert!(r.warnings[0].contains("already assigned"));
    for bad in ["fe80::50/64", "ff02::1/64", "::1/128", "::/64"] {
        assert!(parse(&v6(bad)).is_err(), "{bad} accepted");
    }
    assert!(parse(&v6("2001:db8::50/129")).is_err());
}

#[test]
fn ipv6_on_link_prefix_and_not_a_real_address() {
    let v6 = |vip: &str| GOOD.replace("\"10.0.0.50/24\"", &format!("\"{vip}\""));
    let c = parse(&v6("2001:db8::50/64")).unwrap();
    let err = |c: &Config, iface| host(c, iface).unwrap_err().to_string();
    // On-link means a subnet of the interface with the VIP's own prefix length.
    let e = err(&c, eth0(&[("2001:db8::1", 48)]));
    assert!(
        e.contains("group[web].vips[0]") && e.contains("2001:db8::/48"),
        "{e}"
    );
    let e = err(&c, eth0(&[("10.0.0.1", 24), ("fe80::1", 64)]));
    assert!(e.contains("it has no such address"), "{e}");
    // A /128 is a leftover VIP, never a subnet: alone it does not make the VIP on-link.
    let e = err(&c, eth0(&[("2001:db8::50", 128)]));
    assert!(e.contains("not in a subnet"), "{e}");
    // The VIP on another interface is a real address, even as a /128.
    let iface = eth0(&[("2001:db8::1", 64)]);
    let all: HashMap<_, _> = [
        ("eth0".to_string(), iface.addrs.clone()),
        (
            "dummy0".to_string(),
            vec![("2001:db8::50".parse().unwrap(), 128)],
        ),
    ]
    .into();
    let e = check_host(&c, &|n| (n == "eth0").then(|| iface.clone()), &all)
        .unwrap_err()
        .to_string();
    assert!(e.contains("real address of this host (on dummy0)"), "{e}");
    // On lo, a /128 is where a running agent keeps the VIP: accepted.
    let all: HashMap<_, _> = [
        ("eth0".to_string(), iface.addrs.clone()),
        (
            "lo".to_string(),
            vec![("2001:db8::50".parse().unwrap(), 128)],
        ),
    ]
    .into();
    assert!(check_host(&c, &|n| (n == "eth0").then(|| iface.clone()), &all).is_ok());
    // On the interface itself a /128 is a leftover: a warning naming the VIP.
    let r = host(&c, eth0(&[("2001:db8::1", 64), ("2001:db8::50", 128)])).unwrap();
    assert_eq!(r.warnings.len(), 1);
    assert!(r.warnings[0].contains("VIP 2001:db8::50 is already assigned on eth0"));
    // Unique-local addresses are fine; addresses no VIP can be are named as such.
    assert!(parse(&v6("fd00::50/64")).is_ok());
    assert!(parse(&v6("2001:db8::/127")).is_ok());
    for (bad, why) in [
        ("2001:db8::/64", "subnet-router anycast"),
        ("2001:db8:0:1::/64", "subnet-router anycast"),
        ("::ffff:10.0.0.50/120", "not a global or unique-local"),
        ("fe80::50/64", "not a global or unique-local"),
        ("ff05::50/64", "not a global or unique-local"),
    ] {
        let p = problems(&v6(bad));
        assert!(
            p[0].key == "group[web].vips[0]" && p[0].message.contains(why),
            "{bad}: {p:?}"
        );
    }
}

/// `addresses`: "on_takeover" by default, "resident" for elected groups delivered
/// locally only; a big group without it is warned about, naming the key's remedy.
#[test]
fn addresses_resident_is_for_elected_local_groups() {
    let elected = |vips: &str, extra: &str| {
        format!("{GOOD}\n[[group]]\nname = \"api\"\nvips = [{vips}]\npeers = [\"10.0.0.12\"]\npriority = 150\n{extra}\n")
    };
    let one = "\"10.0.0.60/24\"";
    let c = parse(&elected(one, "")).unwrap();
    assert_eq!(c.groups[1].addresses, AddressMode::OnTakeover);
    let c = parse(&elected(one, "addresses = \"resident\"")).unwrap();
    assert!(c.groups[1].addresses.is_resident());
    let p = problems(&elected(one, "addresses = \"always\""));
    assert_eq!(p[0].key, "group[api].addresses");
    assert!(p[0].message.contains("`always`"), "{p:?}");
    // Not for static, redirected or balanced groups.
    let p = problems(&GOOD.replace("role = ", "addresses = \"resident\"\nrole = "));
    assert_eq!(p[0].key, "group[web].addresses");
    assert!(p[0].message.contains("elected"), "{p:?}");
    let p = problems(&elected(
        one,
        "addresses = \"resident\"\nredirect_to = \"veth1\"",
    ));
    assert!(
        p.iter()
            .any(|p| p.key == "group[api].addresses" && p.message.contains("redirected")),
        "{p:?}"
    );
    let p = problems(&elected(one, "addresses = \"resident\"\nbalance = {}"));
    assert!(
        p.iter()
            .any(|p| p.key == "group[api].addresses" && p.message.contains("balanced")),
        "{p:?}"
    );
    // Above 64 IPv6 VIPs, adding their addresses at each takeover is warned about;
    // IPv4 VIPs are local routes, as cheap at any number.
    let many: Vec<String> = (1..=65)
        .map(|i| format!("\"2001:db8::1:{i:x}/64\""))
        .collect();
    let c = parse(&elected(&many.join(", "), "")).unwrap();
    let w = timing_warnings(&c).join("\n");
    assert!(
        w.contains("group[api]: 65 IPv6 VIPs") && w.contains("addresses = \"resident\""),
        "{w}"
    );
    let c = parse(&elected(&many.join(", "), "addresses = \"resident\"")).unwrap();
    assert!(timing_warnings(&c).is_empty(), "{:?}", timing_warnings(&c));
    assert!(w.contains("ipv6_local = \"route\""), "{w}");
    let c = parse(&elected(&many.join(", "), "ipv6_local = \"route\"")).unwrap();
    assert_eq!(c.groups[1].ipv6_local, Ipv6Local::Route);
    assert!(timing_warnings(&c).is_empty(), "{:?}", timing_warnings(&c));
    // `ipv6_local`: "address" or "route", not for a redirected group.
    assert_eq!(
        parse(&elected(one, "")).unwrap().groups[1].ipv6_local,
        Ipv6Local::Address
    );
    let p = problems(&elected(one, "ipv6_local = \"both\""));
    assert_eq!(p[0].key, "group[api].ipv6_local");
    assert!(p[0].message.contains("`both`"), "{p:?}");
    let p = problems(&elected(
        one,
        "ipv6_local = \"route\"\nredirect_to = \"veth1\"",
    ));
    assert!(
        p.iter()
            .any(|p| p.key == "group[api].ipv6_local" && p.message.contains("redirected")),
        "{p:?}"
    );
    let c = parse(&elected(&many[..64].join(", "), "")).unwrap();
    assert!(timing_warnings(&c).is_empty(), "{:?}", timing_warnings(&c));
    let v4: Vec<String> = (1..=200).map(|i| format!("\"10.0.1.{i}/24\"")).collect();
    let c = parse(&elected(&v4.join(", "), "")).unwrap();
    assert!(timing_warnings(&c).is_empty(), "{:?}", timing_warnings(&c));
    // Above 1,000 VIPs announced from the node's MAC, resident or not, a virtual
    // MAC is suggested; with one, nothing is said.
    let v4: Vec<String> = (0..1001)
        .map(|i| format!("\"10.1.{}.{}/16\"", i / 250, 1 + i % 250))
        .collect();
    for extra in ["", "addresses = \"resident\""] {
        let c = parse(&elected(&v4.join(", "), extra)).unwrap();
        let w = timing_warnings(&c).join("\n");
        assert!(
            w.contains("group[api]: 1001 VIPs announced from the node's MAC"),
            "{extra}: {w}"
        );
        let c = parse(&elected(
            &v4.join(", "),
            &format!("{extra}\nmac = \"02:76:69:70:00:01\""),
        ))
        .unwrap();
        assert!(timing_warnings(&c).is_empty(), "{:?}", timing_warnings(&c));
    }
}

/// `mac`: the node's (the default, or "node") or a group's virtual MAC: a unicast
/// address no other group has, for groups announced on the segment that serve
/// locally; the key is named otherwise.
#[test]
fn mac_is_a_virtual_mac_for_groups_on_the_segment() {
    let elected = |name: &str, extra: &str| {
        format!("\n[[group]]\nname = \"{name}\"\nvips = [\"10.0.0.{}/24\"]\npeers = [\"10.0.0.12\"]\npriority = 150\n{extra}\n", 60 + name.len())
    };
    let c = parse(&format!("{GOOD}{}", elected("api", ""))).unwrap();
    assert_eq!(c.groups[1].virtual_mac, None);
    let c = parse(&format!("{GOOD}{}", elected("api", "mac = \"node\""))).unwrap();
    assert_eq!(c.groups[1].virtual_mac, None);
    let c = parse(&format!(
        "{GOOD}{}",
        elected("api", "mac = \"02:76:69:70:00:01\"")
    ))
    .unwrap();
    assert_eq!(
        c.groups[1].virtual_mac,
        Some(Mac([2, 0x76, 0x69, 0x70, 0, 1]))
    );
    for (bad, why) in [
        ("mac = \"virtual\"", "neither"),
        ("mac = \"01:00:5e:00:00:01\"", "unicast"),
        ("mac = \"00:00:00:00:00:00\"", "unicast"),
        (
            "mac = \"02:00:00:00:00:01\"\nredirect_to = \"veth1\"",
            "redirected",
        ),
        ("mac = \"02:00:00:00:00:01\"\nbalance = {}", "balanced"),
    ] {
        let p = problems(&format!("{GOOD}{}", elected("api", bad)));
        assert!(
            p.iter()
                .any(|p| p.key == "group[api].mac" && p.message.contains(why)),
            "{bad}: {p:?}"
        );
    }
    // Two groups, one MAC.
    let two = format!(
        "{GOOD}{}{}",
        elected("api", "mac = \"02:00:00:00:00:01\""),
        elected("db", "mac = \"02:00:00:00:00:01\"")
    );
    let p = problems(&two);
    assert!(
        p.iter()
            .any(|p| p.key == "group[db].mac" && p.message.contains("group api")),
        "{p:?}"
    );
}

const BGP: &str = r#"
[node]
name = "a"
interface = "eth0"

[bgp]
local_as = 65001
neighbors = [{ address = "10.0.0.1", as = 65000 }]

[[group]]
name = "web"
vips = ["10.99.0.50/32"]
peers = ["10.0.0.12"]
priority = 150
announce = "bgp"
"#;

/// `[bgp]` and `announce`: defaults, and every bad value refused with its key.
#[test]
fn bgp_keys_are_checked_and_named() {
    let c = parse(BGP).unwrap();
    let anycast = |udp: &str| {
        let text = BGP.replace(
            "announce = \"bgp\"",
            &format!("announce = \"bgp\"\nbalance = {{ {udp} }}"),
        );
        parse(&text).unwrap().groups[0]
            .balance
            .as_ref()
            .unwrap()
            .udp
    };
    assert_eq!(anycast(""), Udp::Pinned);
    assert_eq!(anycast("udp = \"pinned\""), Udp::Pinned);
    assert_eq!(anycast("udp = \"as_routed\""), Udp::AsRouted);
    let b = c.bgp.as_ref().unwrap();
    assert_eq!(b.local_as, 65001);
    assert!(b.neighbors[0].bfd, "BFD on by default");
    assert_eq!(b.bfd.interval, Duration::from_millis(10));
    assert_eq!(b.bfd.multiplier, 3);
    assert_eq!(b.hold_time, Duration::from_secs(3));
    assert_eq!(b.route_table, DEFAULT_ROUTE_TABLE);
    assert_eq!(c.groups[0].announce, Announce::Bgp);
    assert_eq!(parse(GOOD).unwrap().groups[0].announce, Announce::Arp);
    for (from, to, key, why) in [
        (
            "local_as = 65001",
            "local_as = 0",
            "bgp.local_as",
            "not an AS number",
        ),
        (
            "local_as = 65001",
            "local_as = 4294967296",
            "bgp.local_as",
            "not an AS number",
        ),
        (
            "local_as = 65001",
            "local_as = 23456",
            "bgp.local_as",
            "AS_TRANS",
        ),
        ("local_as = 65001", "", "bgp.local_as", "required"),
        (
            "address = \"10.0.0.1\"",
            "address = \"router\"",
            "bgp.neighbors[0].address",
            "not an IP address",
        ),
        (
            "address = \"10.0.0.1\"",
            "address = \"224.0.0.5\"",
            "bgp.neighbors[0].address",
            "cannot be",
        ),
        (
            "as = 65000",
            "as = -1",
            "bgp.neighbors[0].as",
            "not an AS number",
        ),
        (
            "local_as = 65001",
            "local_as = 65001\nbfd = { interval_ms = 1 }",
            "bgp.bfd.interval_ms",
            "10..=10000",
        ),
        (
            "local_as = 65001",
            "local_as = 65001\nbfd = { multiplier = 1 }",
            "bgp.bfd.multiplier",
            "2..=255",
        ),
        (
            "local_as = 65001",
            "local_as = 65001\nhold_time_s = 2",
            "bgp.hold_time_s",
            "is not a hold time",
        ),
        (
            "local_as = 65001",
            "local_as = 65001\nhold_time_s = 0",
            "bgp.hold_time_s",
            "never notice",
        ),
        (
            "local_as = 65001",
            "local_as = 65001\nroute_table = 254",
            "bgp.route_table",
            "not a table of vip's own",
        ),
        (
            "local_as = 65001",
            "local_as = 65001\nrouter_id = \"::1\"",
            "bgp.router_id",
            "not an IPv4 address",
        ),
        (
            "announce = \"bgp\"",
            "announce = \"ospf\"",
            "group[web].announce",
            "not a choice",
        ),
        (
            "announce = \"bgp\"",
            "announce = \"bgp\"\nmac = \"02:00:00:00:00:01\"",
            "group[web].mac",
            "BGP only",
        ),
        (
            "announce = \"bgp\"",
            "announce = \"bgp\"\nbalance = { udp = \"stateless\" }",
            "group[web].balance.udp",
            "not a choice",
        ),
        (
            "announce = \"bgp\"",
            "announce = \"both\"\nbalance = { udp = \"as_routed\" }",
            "group[web].balance.udp",
            "for anycast groups",
        ),
    ] {
        let text = BGP.replace(from, to);
        let p = problems(&text);
        assert!(
            p.iter().any(|p| p.key == key && p.message.contains(why)),
            "{to}: {p:?}"
        );
    }
    let neighbours = BGP.replace(
        "neighbors = [{ address = \"10.0.0.1\", as = 65000 }]",
        "neighbors = [{ address = \"10.0.0.1\", as = 65000 }, { address = \"10.0.0.1\", as = 65000 }]",
    );
    assert_eq!(problems(&neighbours)[0].key, "bgp.neighbors[1].address");
    // BGP without [bgp].
    let p = problems(&GOOD.replace("role = ", "announce = \"both\"\nrole = "));
    assert_eq!(p[0].key, "group[web].announce");
    assert!(p[0].message.contains("[bgp]"), "{p:?}");
}

/// A neighbour's `password_file` (TCP-MD5) is read at load: a missing file, an empty
/// or too long key, or one with a quote is refused with the key named and the key
/// never shown; a good one reaches the config, and its `Debug` hides it.
#[test]
fn bgp_neighbour_passwords() {
    let dir = std::env::temp_dir().join(format!("vip-md5-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let with = |body: Option<&str>| {
        let f = dir.join("key");
        let _ = std::fs::remove_file(&f);
        if let Some(b) = body {
            std::fs::write(&f, b).unwrap();
        }
        BGP.replace(
            "as = 65000 }",
            &format!("as = 65000, password_file = \"{}\" }}", f.display()),
        )
    };
    let c = parse(&with(Some("  tcp-md5 key\n"))).unwrap();
    let n = &c.bgp.as_ref().unwrap().neighbors[0];
    assert_eq!(n.password.as_ref().unwrap().0, "tcp-md5 key");
    assert!(!format!("{c:?}").contains("tcp-md5 key"));
    let long = "k".repeat(81);
    for (body, why) in [
        (None, "reading"),
        (Some("\n"), "0 bytes"),
        (Some(long.as_str()), "81 bytes"),
        (Some("a\"b"), "printable ASCII"),
        (Some("tab\there"), "printable ASCII"),
    ] {
        let p = problems(&with(body));
        assert_eq!(p[0].key, "bgp.neighbors[0].password_file", "{p:?}");
        assert!(p[0].message.contains(why), "{body:?}: {p:?}");
        if let Some(b) = body {
            assert!(b.len() < 3 || !p[0].message.contains(b.trim()), "{p:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VIP announced over BGP only need not be on-link; with ARP it must be. A
/// neighbour or a VIP that is the host's own address is refused.
#[test]
fn bgp_host_rules() {
    // A speaker binary that is there on any host.
    let c = parse(&BGP.replace(
        "local_as = 65001",
        "local_as = 65001\nspeaker_bin = \"/bin/sh\"",
    ))
    .unwrap();
    let missing = parse(&BGP.replace(
        "local_as = 65001",
        "local_as = 65001\nspeaker_bin = \"/nonexistent/bird\"",
    ))
    .unwrap();
    let e = host(&missing, eth0(&[("10.0.0.11", 24)]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bgp.speaker_bin") && e.contains("bird2"), "{e}");
    assert!(host(&c, eth0(&[("10.0.0.11", 24)])).is_ok());
    let both = parse(
        &BGP.replace("announce = \"bgp\"", "announce = \"both\"")
            .replace(
                "local_as = 65001",
                "local_as = 65001\nspeaker_bin = \"/bin/sh\"",
            ),
    )
    .unwrap();
    let e = host(&both, eth0(&[("10.0.0.11", 24)]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("group[web].vips[0]"), "{e}");
    let e = host(&c, eth0(&[("10.0.0.1", 24)])).unwrap_err().to_string();
    assert!(e.contains("bgp.neighbors[0].address"), "{e}");
    let e = host(&c, eth0(&[("10.0.0.11", 24), ("10.99.0.50", 24)]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("group[web].vips[0]") && e.contains("real address"),
        "{e}"
    );
    // No router ID to take (nor a subnet the neighbour is on).
    let e = host(&c, eth0(&[("2001:db8::11", 64)]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bgp.router_id"), "{e}");
    // An eBGP neighbour on no subnet of the interface would never come up; an iBGP
    // one (the same AS) may be routed.
    let e = host(&c, eth0(&[("10.1.0.11", 24)]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bgp.neighbors[0].address") && e.contains("directly connected"),
        "{e}"
    );
    let ibgp = parse(&BGP.replace("as = 65000", "as = 65001").replace(
        "local_as = 65001",
        "local_as = 65001\nspeaker_bin = \"/bin/sh\"",
    ))
    .unwrap();
    assert!(host(&ibgp, eth0(&[("10.1.0.11", 24)])).is_ok());
}

/// An anycast group's peer on another segment is reached through the IPv4 tunnel:
/// an IPv4 one is taken (routed), an IPv6 one on no subnet of the interface is
/// refused with its key.
#[test]
fn a_balanced_groups_routed_peer_must_be_ipv4() {
    let speaker = |s: &str| {
        s.replace(
            "local_as = 65001",
            "local_as = 65001\nspeaker_bin = \"/bin/sh\"",
        )
    };
    let routed = parse(&speaker(&BGP.replace(
        "peers = [\"10.0.0.12\"]",
        "peers = [\"10.0.0.12\", \"10.0.1.10\"]\nbalance = {}",
    )))
    .unwrap();
    assert!(host(&routed, eth0(&[("10.0.0.11", 24)])).is_ok());
    let v6 = parse(&speaker(&BGP.replace(
        "peers = [\"10.0.0.12\"]",
        "peers = [\"2001:db8:1::10\"]\nbalance = {}",
    )))
    .unwrap();
    let e = host(&v6, eth0(&[("10.0.0.11", 24), ("2001:db8::11", 64)]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("group[web].peers[0]") && e.contains("IPv4 tunnel"),
        "{e}"
    );
    // A group without balance has no tunnel: a peer on another segment is warned of.
    let plain = parse(&speaker(&BGP.replace(
        "peers = [\"10.0.0.12\"]",
        "peers = [\"10.0.0.12\", \"10.0.1.10\"]",
    )))
    .unwrap();
    let r = host(&plain, eth0(&[("10.0.0.11", 24)])).unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("group[web].peers[1]") && w.contains("no subnet")),
        "{:?}",
        r.warnings
    );
    assert!(
        !host(&routed, eth0(&[("10.0.0.11", 24)]))
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.contains("peers[")),
        "a balanced group's routed peer is no warning"
    );
    // On the segment, an IPv6 peer is fine.
    let on_link = parse(&speaker(&BGP.replace(
        "peers = [\"10.0.0.12\"]",
        "peers = [\"2001:db8::12\"]\nbalance = {}",
    )))
    .unwrap();
    assert!(host(&on_link, eth0(&[("10.0.0.11", 24), ("2001:db8::11", 64)])).is_ok());
}

/// Every key of fixed choices refuses another word naming the key and every
/// choice, and means its default when missing.
#[test]
fn keys_of_fixed_choices_name_what_they_expect() {
    for (from, to, key, says) in [
        (
            "announce = \"bgp\"",
            "announce = \"ospf\"",
            "group[web].announce",
            "`ospf` is not a choice (expected \"arp\", \"bgp\" or \"both\")",
        ),
        (
            "announce = \"bgp\"",
            "announce = \"bgp\"\naddresses = \"always\"",
            "group[web].addresses",
            "`always` is not a choice (expected \"on_takeover\" or \"resident\")",
        ),
        (
            "announce = \"bgp\"",
            "announce = \"bgp\"\nipv6_local = \"both\"",
            "group[web].ipv6_local",
            "`both` is not a choice (expected \"address\" or \"route\")",
        ),
        (
            "announce = \"bgp\"",
            "announce = \"bgp\"\nbalance = { udp = \"stateless\" }",
            "group[web].balance.udp",
            "`stateless` is not a choice (expected \"pinned\" or \"as_routed\")",
        ),
    ] {
        let p = problems(&BGP.replace(from, to));
        assert!(
            p.iter().any(|p| p.key == key && p.message == says),
            "{to}: {p:?}"
        );
    }
    let g = &parse(&BGP.replace("announce = \"bgp\"\n", ""))
        .unwrap()
        .groups[0];
    assert_eq!(
        (g.announce, g.addresses, g.ipv6_local),
        (Announce::Arp, AddressMode::OnTakeover, Ipv6Local::Address)
    );
}
