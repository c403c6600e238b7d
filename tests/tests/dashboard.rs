//! The Grafana dashboard (dist/grafana-dashboard.json): a standard Grafana JSON model
//! that imports through Dashboards > Import with a `${DS_PROMETHEUS}` datasource input;
//! every metric its queries use is one that vip's renderer declares and a running
//! agent exports, and it shows every counter of the VIP and elastic-IP tables
//! (`vip::counters`).

mod common;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    time::Duration,
};

use common::*;
use lab::{privileged, wait_for, Agent, Lan, Netns};
use serde_json::Value;
use vip::counters::{AdvertErrors, Counted, EchoCounters, ElectionCounters, Kind};
use vip_common::{BalanceStats, EipStats, VipStats};

const DASHBOARD: &str = include_str!("../../dist/grafana-dashboard.json");

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("dist/grafana-dashboard.json is not JSON")
}

/// Every PromQL query of the dashboard: the panels' and annotations' `expr`s and the
/// template variables' queries.
fn queries(d: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    walk(&d["annotations"], &mut out);
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        match &var["query"] {
            Value::String(s) => out.push(s.clone()),
            q => out.extend(q["query"].as_str().map(str::to_string)),
        }
    }
    out
}

/// The metric names in a PromQL expression: identifiers starting with `vip_`, outside
/// quoted label values and `$variables`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut quote = None;
    let mut prev = ' ';
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quote {
            if c == q && prev != '\\' {
                quote = None;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            quote = Some(c);
        } else if (c.is_ascii_alphabetic() || c == '_' || c == ':')
            && !(prev.is_ascii_alphanumeric() || prev == '_' || prev == ':' || prev == '$')
        {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = j + d.len_utf8();
                    prev = d;
                    chars.next();
                } else {
                    break;
                }
            }
            let ident = &expr[i..end];
            if ident.starts_with("vip_") {
                names.insert(ident.to_string());
            }
            continue;
        }
        prev = c;
    }
    names
}

fn dashboard_metrics() -> BTreeSet<String> {
    queries(&dashboard())
        .iter()
        .flat_map(|q| metric_names(q))
        .collect()
}

#[test]
fn metric_names_are_found_in_promql() {
    let got = metric_names(
        r#"sum by (action) (rate(vip_rx_packets_total{instance=~"$instance", vip="vip_x"}[$__rate_interval]) * on (group) group_left (action) vip_vip_action)"#,
    );
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        ["vip_rx_packets_total", "vip_vip_action"]
    );
}

#[test]
fn the_dashboard_is_an_importable_grafana_model() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS input: {inputs:?}"
    );
    for key in [
        "title",
        "uid",
        "schemaVersion",
        "panels",
        "templating",
        "time",
    ] {
        assert!(!d[key].is_null(), "no `{key}`");
    }
    let mut ids = BTreeSet::new();
    let mut targets = 0;
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{title}: {g}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(
                !metric_names(t["expr"].as_str().expect("expr")).is_empty(),
                "{title}: {t}"
            );
            targets += 1;
        }
    }
    assert!(targets >= 20, "only {targets} queries");
    // What the dashboard must show: role and state, transitions, packets per VIP and
    // action, ARP/ND answers, advert errors, split brains, lease expiries, elastic IPs;
    // and every counter of a VIP and of an elastic IP (their tables in
    // `vip::counters`), so that one added there is added here too.
    let used = dashboard_metrics();
    let per_vip = VipStats::COUNTERS.iter().map(|c| c.metric);
    let per_eip = EipStats::COUNTERS.iter().map(|c| c.metric);
    let mut want: Vec<String> = per_vip
        .chain(per_eip)
        .map(|m| format!("vip_{m}_total"))
        .collect();
    want.extend(
        [
            "vip_group_active",
            "vip_group_state",
            "vip_group_transitions_total",
            "vip_vip_action",
            "vip_advert_auth_failures_total",
            "vip_advert_malformed_total",
            "vip_split_brains_total",
        ]
        .map(String::from),
    );
    for want in &want {
        assert!(used.contains(want), "the dashboard does not show {want}");
    }
}

/// The families `text` declares (`# TYPE name kind`), by name.
fn families(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut families = std::collections::BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(k)) = (it.next(), it.next()) {
                families.insert(n.to_string(), k.to_string());
            }
        }
    }
    families
}

/// Whether `families` declares the metric `m` (a counter's samples end in `_total`).
fn declared(families: &std::collections::BTreeMap<String, String>, m: &str) -> bool {
    families.contains_key(m)
        || m.strip_suffix("_total")
            .is_some_and(|f| families.get(f).is_some_and(|k| k == "counter"))
}

#[test]
fn every_dashboard_metric_is_declared_by_the_renderer() {
    // The renderer declares every family, samples or not: an agent with nothing.
    let empty = vip::status::Status {
        node: "a".into(),
        interface: "eth0".into(),
        xdp_mode: "native".into(),
        xdp_mode_reason: String::new(),
        groups: vec![],
        global: Default::default(),
        warnings: vec![],
        eips: vec![],
        routes6: vec![],
        bgp: None,
    };
    let families = families(&vip::metrics::render(&empty));
    // Each table entry is a family of its kind.
    fn kinds<T: Counted>() -> Vec<(String, &'static str)> {
        T::COUNTERS
            .iter()
            .map(|c| {
                let kind = match c.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                (format!("vip_{}", c.metric), kind)
            })
            .collect()
    }
    let tables = [
        kinds::<VipStats>(),
        kinds::<EipStats>(),
        kinds::<BalanceStats>(),
        kinds::<ElectionCounters>(),
        kinds::<AdvertErrors>(),
        kinds::<EchoCounters>(),
    ];
    for (name, kind) in tables.iter().flatten() {
        assert_eq!(
            families.get(name).map(String::as_str),
            Some(*kind),
            "{name}"
        );
    }
    let unknown: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|m| !declared(&families, m))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses metrics vip does not declare: {unknown:?}\ndeclared: {:?}",
        families.keys().collect::<Vec<_>>()
    );
}

/// GET /metrics from inside `ns`.
fn scrape(ns: &Netns) -> String {
    ns.run_in(|| {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9477").expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    })
}

const METRICS: &str = "metrics_listen = \"127.0.0.1:9477\"";

#[test]
#[ignore = "privileged: needs root, namespaces, XDP; run by `cargo xtask test`"]
fn every_dashboard_metric_is_exported_by_a_running_agent() {
    privileged();
    // Elected servers a and b (election, lease, per-VIP counters) and a gateway g with
    // an elastic IP, so every family the dashboard shows has samples.
    let mut lan = Lan::new(&["a", "b", "g"]).unwrap();
    lan.enable_xdp_tx(&["a", "b", "g"]).unwrap();
    let inet = lan.internet("g", &["a", "b"]).unwrap();
    let a = Agent::start(
        &lan.host("a").ns,
        "a",
        &elected(&lan, "a", &["a", "b"], 200, METRICS, ""),
    )
    .unwrap();
    let b = start_elected(&lan, "b", &["a", "b"], 100, "");
    assert!(wait_for(Duration::from_secs(5), || (state(&a) == "active"
        && state(&b) == "standby")
        .then_some(()))
    .is_some());
    let gateway = format!(
        "[node]\nname = \"g\"\ninterface = \"eth0\"\n{METRICS}\n\n[[eip]]\naddress = \"203.0.113.10\"\nvip = \"10.0.0.50\"\nexternal_interface = \"eth1\"\ninternal_interface = \"eth0\"\n"
    );
    let g = Agent::start(&lan.host("g").ns, "g", &gateway).unwrap();
    // Some traffic through the elastic IP and to the VIP (best effort: only the
    // families' presence is asserted).
    let _ = ping(&inet, "203.0.113.10");

    let text = format!(
        "{}\n{}",
        scrape(&lan.host("a").ns),
        scrape(&lan.host("g").ns)
    );
    let families = families(&text);
    let samples: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let used = dashboard_metrics();
    assert!(!used.is_empty());
    let mut unknown = Vec::new();
    let mut empty = Vec::new();
    for m in &used {
        if !declared(&families, m) {
            unknown.push(m.as_str());
        } else if !samples.contains(m.as_str()) {
            empty.push(m.as_str());
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard uses metrics no agent exports: {unknown:?}\nexported families: {:?}",
        families.keys().collect::<Vec<_>>()
    );
    assert!(
        empty.is_empty(),
        "these dashboard metrics had no samples from the lab's agents: {empty:?}"
    );
    drop((a, b, g));
    drop(lan);
    drop(inet);
}
