//! BIRD 2 as vip's BGP speaker: the config vip writes for it (pure, unit-tested), and
//! its control socket (`birdc`'s protocol), read for the sessions' and BFD's state.
//!
//! The shape: vip puts the host routes it announces into a kernel table of its own
//! (`bgp.route_table`, blackholes of protocol 99 that no rule points at); BIRD's
//! `kernel` protocols learn that table (netlink notifications, at once) into BIRD
//! tables `vip4`/`vip6`, and every BGP session exports exactly those, with `next hop
//! self`, importing nothing. BFD runs on every session that asks for it. BIRD is never
//! told about groups or roles: what is in the table is what is announced.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::{Bfd, Session};
use crate::config::Bgp;

/// BIRD's protocol name for a neighbour: `n_` and the address with its dots or colons
/// as underscores (a BIRD symbol).
pub fn protocol_name(a: IpAddr) -> String {
    format!("n_{}", a.to_string().replace(['.', ':'], "_"))
}

/// The config text for `bgp`, with `router_id` resolved; the log goes to `log`.
pub fn config_text(bgp: &Bgp, router_id: Ipv4Addr, log: &Path) -> String {
    let t = bgp.route_table;
    let hold = bgp.hold_time.as_secs();
    let keepalive = (hold / 3).max(1);
    let mut s = String::new();
    s.push_str("# Written by vip from its [bgp] section; rewritten at each start and reload.\n");
    s.push_str(&format!("router id {router_id};\n"));
    s.push_str(&format!(
        "log \"{}\" {{ info, remote, warning, error, auth, fatal, bug }};\n",
        log.display()
    ));
    // Unix seconds in `show protocols` / `show bfd sessions`: status says "for 12 min".
    s.push_str("timeformat protocol \"%s\";\n");
    s.push_str("protocol device { scan time 10; }\n");
    s.push_str("ipv4 table vip4;\nipv6 table vip6;\n");
    // `learn`: the routes vip puts in the table are not BIRD's own; netlink tells
    // BIRD of each at once (the scan is only a safety net). The 8 MiB buffer: 10,000
    // routes added at once overflow the default one, and BIRD then waits for its next
    // scan (1.9 s to the router's FIB in the lab, 0.33 s with it).
    for (name, fam) in [("vip_k4", "ipv4"), ("vip_k6", "ipv6")] {
        let table = if fam == "ipv4" { "vip4" } else { "vip6" };
        s.push_str(&format!(
            "protocol kernel {name} {{ {fam} {{ table {table}; import all; export none; }}; kernel table {t}; learn; netlink rx buffer 8388608; scan time 5; }}\n"
        ));
    }
    if bgp.neighbors.iter().any(|n| n.bfd) {
        let ms = bgp.bfd.interval.as_millis();
        s.push_str(&format!(
            "protocol bfd vip_bfd {{ interface \"*\" {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier {}; }}; }}\n",
            bgp.bfd.multiplier
        ));
    }
    for n in &bgp.neighbors {
        s.push_str(&format!(
            "protocol bgp {} {{\n  local as {};\n  neighbor {} as {};\n  hold time {hold};\n  keepalive time {keepalive};\n  connect retry time 1;\n  error wait time 1, 5;\n",
            protocol_name(n.address),
            bgp.local_as,
            n.address,
            n.remote_as
        ));
        if n.bfd {
            s.push_str("  bfd on;\n");
        }
        // TCP-MD5 (`config::bgp::Password` holds no `"` or `\`). The config file is
        // in the speaker's 0700 directory, as the key file is the operator's to guard.
        if let Some(k) = &n.password {
            s.push_str(&format!("  password \"{}\";\n", k.0));
        }
        if bgp.graceful_restart {
            s.push_str("  graceful restart on;\n");
        }
        // Both families on every session (MP-BGP): an IPv6 VIP goes over an IPv4
        // session with the interface's IPv6 addresses as its next hop (FRR installs
        // `via fe80::... dev eth0`), and the other way round.
        s.push_str(
            "  ipv4 { table vip4; import none; export all; next hop self; };\n  ipv6 { table vip6; import none; export all; next hop self; };\n}\n",
        );
    }
    s
}

/// One BIRD control-socket exchange: the reply's lines without their codes. An error
/// reply (codes 8000-9999) is an error.
pub fn command(sock: &Path, cmd: &str, timeout: Duration) -> Result<Vec<String>> {
    let mut stream = UnixStream::connect(sock)
        .with_context(|| format!("connecting to the speaker's socket {}", sock.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut hello = String::new();
    reader.read_line(&mut hello)?;
    if !hello.starts_with("0001") {
        bail!("the speaker did not greet: {hello:?}");
    }
    stream.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("the speaker closed its socket mid-reply");
        }
        let line = line.trim_end_matches('\n');
        match reply_line(line) {
            Reply::More(text) => out.push(text.to_string()),
            Reply::End(text) => {
                if !text.is_empty() {
                    out.push(text.to_string());
                }
                return Ok(out);
            }
            Reply::Error(code, text) => bail!("the speaker answered {code}: {text}"),
        }
    }
}

enum Reply<'a> {
    More(&'a str),
    End(&'a str),
    Error(u16, &'a str),
}

/// A line of BIRD's reply: `NNNN-text` (more follow), `NNNN text` (the last of this
/// reply when NNNN is 0000 or another end code), ` text` (continues the last code).
fn reply_line(line: &str) -> Reply<'_> {
    let code = line.get(..4).and_then(|c| c.parse::<u16>().ok());
    match (code, line.as_bytes().get(4)) {
        (Some(_), Some(b'-')) => Reply::More(&line[5..]),
        (Some(c), sep) if sep.is_none() || sep == Some(&b' ') => {
            let text = line.get(5..).unwrap_or("");
            if c >= 8000 {
                Reply::Error(c, text)
            } else if c == 0 || (1..1000).contains(&c) && c != 1 {
                Reply::End(text)
            } else {
                Reply::More(text)
            }
        }
        _ => Reply::More(line.strip_prefix(' ').unwrap_or(line)),
    }
}

/// The BGP sessions in `show protocols` (lines `NAME BGP TABLE STATE SINCE INFO`),
/// matched to the configured neighbours by protocol name.
pub fn parse_protocols(lines: &[String], neighbors: &[IpAddr]) -> Vec<Session> {
    let mut out = Vec::new();
    for n in neighbors {
        let name = protocol_name(*n);
        let row = lines.iter().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name.as_str()) && f.next() == Some("BGP")).then(|| {
                let v: Vec<&str> = l.split_whitespace().collect();
                v
            })
        });
        let (state, since) = match row.as_deref() {
            // NAME BGP TABLE STATE SINCE... INFO...: SINCE may be a time, or a date and
            // a time; the BGP state is the last word.
            Some([_, _, _, _, rest @ ..]) if !rest.is_empty() => (
                rest.last().copied().unwrap_or("").to_string(),
                rest.first().map(|s| s.to_string()),
            ),
            _ => ("unknown".to_string(), None),
        };
        out.push(Session {
            neighbor: *n,
            established: state == "Established",
            state,
            since,
            bfd: None,
        });
    }
    out
}

/// The BFD sessions' state by neighbour address (`show bfd sessions`: `ADDRESS
/// INTERFACE STATE SINCE ...`).
pub fn parse_bfd(lines: &[String]) -> Vec<(IpAddr, Bfd)> {
    lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let addr = f.first()?.parse::<IpAddr>().ok()?;
            let state = f.get(2)?.to_string();
            Some((
                addr,
                Bfd {
                    up: state.eq_ignore_ascii_case("up"),
                    state,
                    since: f.get(3).map(|s| s.to_string()),
                },
            ))
        })
        .collect()
}

/// Sessions and BFD of a running BIRD, over its control socket.
pub fn sessions(sock: &Path, neighbors: &[IpAddr]) -> Result<Vec<Session>> {
    let timeout = Duration::from_millis(500);
    let protocols = command(sock, "show protocols", timeout)?;
    let mut out = parse_protocols(&protocols, neighbors);
    if let Ok(bfd) = command(sock, "show bfd sessions", timeout) {
        let bfd = parse_bfd(&bfd);
        for s in &mut out {
            s.bfd = bfd
                .iter()
                .find(|(a, _)| *a == s.neighbor)
                .map(|(_, b)| b.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bfd as BfdCfg, Neighbor};
    use std::path::PathBuf;

    fn bgp() -> Bgp {
        Bgp {
            local_as: 65001,
            router_id: None,
            neighbors: vec![
                Neighbor {
                    address: "10.0.0.1".parse().unwrap(),
                    remote_as: 65000,
                    bfd: true,
                    password: Some(crate::config::Password("s3cret key".into())),
                },
                Neighbor {
                    address: "2001:db8::1".parse().unwrap(),
                    remote_as: 65000,
                    bfd: false,
                    password: None,
                },
            ],
            bfd: BfdCfg {
                interval: Duration::from_millis(10),
                multiplier: 3,
            },
            hold_time: Duration::from_secs(3),
            graceful_restart: false,
            route_table: 1699,
            speaker_bin: PathBuf::from("/usr/sbin/bird"),
            speaker_dir: PathBuf::from("/run/vip/bird"),
        }
    }

    #[test]
    fn the_config_exports_only_vips_table_on_each_session_with_bfd_where_asked() {
        let t = config_text(
            &bgp(),
            "10.0.0.11".parse().unwrap(),
            Path::new("/run/vip/bird/bird.log"),
        );
        assert!(t.contains("router id 10.0.0.11;"));
        assert!(t.contains("kernel table 1699; learn;"));
        assert!(t.contains("min rx interval 10 ms; min tx interval 10 ms; multiplier 3;"));
        assert!(t.contains("protocol bgp n_10_0_0_1 {"));
        assert!(t.contains("neighbor 10.0.0.1 as 65000;"));
        assert!(t.contains("local as 65001;"));
        assert!(t.contains("ipv4 { table vip4; import none; export all; next hop self; };"));
        assert!(t.contains("protocol bgp n_2001_db8__1 {"));
        // Both families on each session.
        for session in t.split("protocol bgp ").skip(1) {
            assert!(
                session.contains("ipv4 { table vip4; import none; export all; next hop self; };")
            );
            assert!(
                session.contains("ipv6 { table vip6; import none; export all; next hop self; };")
            );
        }
        // BFD on the first session only.
        let second = t.split("protocol bgp n_2001").nth(1).unwrap();
        assert!(!second.contains("bfd on"));
        assert!(t
            .split("protocol bgp n_10")
            .nth(1)
            .unwrap()
            .contains("bfd on"));
        assert!(!t.contains("graceful restart"));
        // TCP-MD5 on the first session only.
        assert!(t
            .split("protocol bgp n_10")
            .nth(1)
            .unwrap()
            .contains("  password \"s3cret key\";"));
        assert!(!second.contains("password"));
    }

    #[test]
    fn protocols_and_bfd_replies_are_read_by_neighbour() {
        let lines: Vec<String> = [
            "Name       Proto      Table      State  Since         Info",
            "device1    Device     ---        up     16:52:05.123  ",
            "n_10_0_0_1 BGP        ---        up     16:52:06.000  Established   ",
            "n_10_0_0_2 BGP        ---        start  16:52:06.000  Active        Socket: Connection refused",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let n1: IpAddr = "10.0.0.1".parse().unwrap();
        let n3: IpAddr = "10.0.0.3".parse().unwrap();
        let s = parse_protocols(&lines, &[n1, n3]);
        assert!(s[0].established);
        assert_eq!(s[0].state, "Established");
        assert_eq!(s[0].since.as_deref(), Some("16:52:06.000"));
        assert!(!s[1].established);
        assert_eq!(s[1].state, "unknown");
        let bfd: Vec<String> = [
            "vip_bfd:",
            "IP address                Interface  State      Since         Interval  Timeout",
            "10.0.0.1                  eth0       Up         16:52:06.000    0.010    0.030",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let b = parse_bfd(&bfd);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].0, n1);
        assert!(b[0].1.up);
    }

    #[test]
    fn reply_lines_end_on_0000_and_fail_on_error_codes() {
        assert!(matches!(reply_line("1002-device1 Device"), Reply::More(_)));
        assert!(matches!(reply_line(" n_10 BGP"), Reply::More(_)));
        assert!(matches!(reply_line("0000 "), Reply::End(_)));
        assert!(matches!(reply_line("0000"), Reply::End(_)));
        assert!(matches!(
            reply_line("9001 syntax error"),
            Reply::Error(9001, _)
        ));
    }
}
