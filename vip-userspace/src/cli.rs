//! The command line of the `vip` binary, as clap definitions: the binary parses it, and
//! the packaging generates man pages and shell completions from the same definitions
//! (`vip generate`, hidden), so they cannot drift apart. Also the log line format used
//! under systemd (journald priority prefixes).

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use clap::{CommandFactory, Parser, Subcommand};

use crate::{
    config::{XdpMode, DEFAULT_CONTROL_SOCKET},
    keygen::DEFAULT_KEY_FILE,
    mac::Mac,
};

/// `vip --version`: the crate version and the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("VIP_GIT_REVISION"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "vip",
    version = VERSION,
    about = "XDP data plane for virtual-IP failover"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent in the foreground (logs to stderr; SIGTERM/SIGINT stop it cleanly,
    /// SIGHUP reloads: re-executes the binary on disk when the data plane is pinned).
    Agent {
        #[arg(long, short)]
        config: PathBuf,
        /// Do not run: remove what an agent with this config left behind (pinned data
        /// plane, VIP addresses, groups' virtual MACs, socket), for an uninstall.
        #[arg(long)]
        cleanup: bool,
        /// Override node.xdp_mode: auto (the default: native where it delivers, else skb),
        /// native (driver) or skb (generic).
        #[arg(long, value_parser = parse_mode)]
        xdp_mode: Option<XdpMode>,
        /// Override node.interface.
        #[arg(long)]
        interface: Option<String>,
    },
    /// Validate a configuration file; exits non-zero if it is invalid.
    CheckConfig {
        /// The configuration file, or `-` to read it from standard input.
        file: PathBuf,
        /// Check only the file itself, not against this host's interfaces.
        #[arg(long)]
        no_host: bool,
    },
    /// Show groups, roles and per-VIP counters.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Make this node active for GROUP (takes the VIPs, announces them).
    Promote {
        group: String,
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Make this node standby for GROUP; optionally forward stale-cache traffic to MAC.
    Demote {
        group: String,
        #[arg(long, value_parser = parse_mac)]
        forward_to: Option<Mac>,
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Reload, like SIGHUP: with a pinned data plane the agent re-executes the binary on
    /// disk (a hitless upgrade) after it checked the config; unpinned, the config's
    /// difference is applied in place. A refused config or binary changes nothing.
    Reload {
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Hitless restart: the agent exits leaving the pinned data plane serving and
    /// asks peers to hold; start the (new) agent again within the hold time.
    Restart {
        #[arg(long, default_value_t = 5000)]
        hold_ms: u32,
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// A live per-VIP packets/s view (and per member of a balanced group), refreshed in
    /// place.
    Watch {
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Undo `promote`/`demote` for an elected GROUP: back to the election.
    Resume {
        group: String,
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// keepalived notify hook: `notify "/usr/bin/vip notify"` passes TYPE NAME STATE PRIORITY.
    Notify {
        /// INSTANCE or GROUP.
        kind: String,
        /// The VRRP instance name (matched against keepalived_instance).
        name: String,
        /// MASTER, BACKUP, FAULT or STOP.
        state: String,
        priority: Option<u8>,
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Write a new random key for auth_key_file (32 bytes as hex, mode 0600) and print
    /// the line for the config. Create it once and copy the same file to every peer of
    /// the group: peers with different keys do not hear each other.
    Keygen {
        /// Where to write the key.
        #[arg(default_value = DEFAULT_KEY_FILE)]
        path: PathBuf,
        /// Replace the file if it exists (every peer then needs the new key).
        #[arg(long)]
        force: bool,
    },
    /// Lab helper: attach a do-nothing XDP program to veth interfaces so they accept
    /// frames that XDP_TX/XDP_REDIRECT send from their peers; runs until SIGTERM.
    XdpPass {
        #[arg(required = true)]
        interfaces: Vec<String>,
    },
    /// Started by the agent when `[bgp]` is configured: runs BIRD and withdraws every
    /// route of vip's table when the agent stops vouching for them (see the README's
    /// BGP section); not for use by hand.
    #[command(hide = true)]
    SpeakerGuard {
        /// The BIRD binary.
        #[arg(long)]
        bird: PathBuf,
        /// The speaker's directory (BIRD's config, sockets, logs).
        #[arg(long)]
        dir: PathBuf,
        /// vip's route table.
        #[arg(long)]
        table: u32,
    },
    /// Packaging helper: write man pages (vip.1, vip-SUBCOMMAND.1) and shell completions
    /// (bash, zsh, fish) generated from these definitions.
    #[command(hide = true)]
    Generate {
        /// Directory for the man pages (created if missing).
        #[arg(long)]
        man: Option<PathBuf>,
        /// Directory for the completion scripts: vip (bash), _vip (zsh), vip.fish.
        #[arg(long)]
        completions: Option<PathBuf>,
    },
}

pub fn parse_mode(s: &str) -> Result<XdpMode, String> {
    s.parse()
}

pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let m: Mac = s
        .parse()
        .map_err(|e: crate::mac::MacParseError| e.to_string())?;
    if !m.is_unicast() {
        return Err(format!("{m} is not a unicast MAC address"));
    }
    Ok(m)
}

/// Writes `vip.1` and one `vip-SUBCOMMAND.1` per visible subcommand into `dir`;
/// returns the file names written.
pub fn write_man_pages(dir: &Path) -> io::Result<Vec<String>> {
    fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    let mut write = |name: String, page: clap::Command| -> io::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        fs::write(dir.join(&name), buf)?;
        written.push(name);
        Ok(())
    };
    write("vip.1".into(), cmd.clone())?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        // The page is `vip-status(1)`; its synopsis still reads `vip status`. A handful
        // of names, leaked once by a generator that exits right after.
        let name: &'static str = Box::leak(format!("vip-{}", sub.get_name()).into_boxed_str());
        write(format!("{name}.1"), sub.clone().name(name).version(VERSION))?;
    }
    Ok(written)
}

/// Writes the bash (`vip`), zsh (`_vip`) and fish (`vip.fish`) completions into `dir`;
/// returns the file names written.
pub fn write_completions(dir: &Path) -> io::Result<Vec<String>> {
    use clap_complete::{generate, Shell};
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    // The names the shells look up in their vendor directories.
    for (shell, name) in [
        (Shell::Bash, "vip"),
        (Shell::Zsh, "_vip"),
        (Shell::Fish, "vip.fish"),
    ] {
        let mut buf = Vec::new();
        generate(shell, &mut Cli::command(), "vip", &mut buf);
        fs::write(dir.join(name), buf)?;
        written.push(name.to_string());
    }
    Ok(written)
}

/// The syslog priority journald reads from a `<N>` line prefix.
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// One log line for journald (when `JOURNAL_STREAM` is set): the priority prefix and
/// the message, no timestamp (the journal records its own).
pub fn journal_line(out: &mut impl Write, level: log::Level, message: &str) -> io::Result<()> {
    writeln!(out, "<{}>{message}", syslog_priority(level))
}

/// Whether stderr goes to the journal: systemd sets `JOURNAL_STREAM` for services whose
/// output it connects to journald.
pub fn logging_to_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_names_the_revision() {
        let v = Cli::command().render_version();
        assert!(
            v.starts_with(&format!("vip {} (rev ", env!("CARGO_PKG_VERSION"))),
            "{v}"
        );
    }

    #[test]
    fn check_config_accepts_stdin() {
        let cli = Cli::try_parse_from(["vip", "check-config", "-", "--no-host"]).unwrap();
        match cli.command {
            Command::CheckConfig { file, no_host } => {
                assert_eq!(file, Path::new("-"));
                assert!(no_host);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keygen_writes_the_default_key_file_unless_told_otherwise() {
        let cli = Cli::try_parse_from(["vip", "keygen"]).unwrap();
        match cli.command {
            Command::Keygen { path, force } => {
                assert_eq!(path, Path::new(DEFAULT_KEY_FILE));
                assert!(!force);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["vip", "keygen", "/tmp/k", "--force"]).unwrap();
        assert!(
            matches!(cli.command, Command::Keygen { path, force: true } if path == Path::new("/tmp/k"))
        );
    }

    #[test]
    fn man_pages_and_completions() {
        let dir = std::env::temp_dir().join(format!("vip-cli-test-{}", std::process::id()));
        let man = write_man_pages(&dir.join("man")).unwrap();
        for sub in [
            "agent",
            "check-config",
            "status",
            "promote",
            "demote",
            "watch",
            "keygen",
        ] {
            assert!(man.contains(&format!("vip-{sub}.1")), "{man:?}");
        }
        assert!(man.contains(&"vip.1".to_string()));
        assert!(
            !man.iter()
                .any(|m| m.contains("generate") || m.contains("help")),
            "{man:?}"
        );
        let status = fs::read_to_string(dir.join("man/vip-status.1")).unwrap();
        assert!(
            status.contains("vip\\-status") && status.contains("socket"),
            "{status}"
        );
        let comp = write_completions(&dir.join("comp")).unwrap();
        assert_eq!(comp, ["vip", "_vip", "vip.fish"]);
        let bash = fs::read_to_string(dir.join("comp/vip")).unwrap();
        assert!(bash.contains("check-config"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn journal_lines_carry_the_priority() {
        let mut out = Vec::new();
        journal_line(&mut out, log::Level::Error, "boom").unwrap();
        journal_line(&mut out, log::Level::Info, "ready").unwrap();
        journal_line(&mut out, log::Level::Warn, "hmm").unwrap();
        journal_line(&mut out, log::Level::Debug, "detail").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<3>boom\n<6>ready\n<4>hmm\n<7>detail\n"
        );
    }
}
