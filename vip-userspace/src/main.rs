//! `vip`: the agent and its command-line client.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use vip::{
    agent,
    config::{self, XdpMode, DEFAULT_CONTROL_SOCKET},
    control::{self, Request},
    host,
    mac::Mac,
};

#[derive(Parser)]
#[command(
    name = "vip",
    version,
    about = "XDP data plane for virtual-IP failover"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground (logs to stderr; SIGTERM/SIGINT stop it cleanly).
    Agent {
        #[arg(long, short)]
        config: PathBuf,
        /// Override node.xdp_mode: native (driver) or skb (generic).
        #[arg(long, value_parser = parse_mode)]
        xdp_mode: Option<XdpMode>,
        /// Override node.interface.
        #[arg(long)]
        interface: Option<String>,
    },
    /// Validate a configuration file; exits non-zero if it is invalid.
    CheckConfig {
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
    /// Lab helper: attach a do-nothing XDP program to veth interfaces so they accept
    /// frames that XDP_TX/XDP_REDIRECT send from their peers; runs until SIGTERM.
    XdpPass {
        #[arg(required = true)]
        interfaces: Vec<String>,
    },
}

fn parse_mode(s: &str) -> Result<XdpMode, String> {
    s.parse()
}

fn parse_mac(s: &str) -> Result<Mac, String> {
    let m: Mac = s
        .parse()
        .map_err(|e: vip::mac::MacParseError| e.to_string())?;
    if !m.is_unicast() {
        return Err(format!("{m} is not a unicast MAC address"));
    }
    Ok(m)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Agent {
            config,
            xdp_mode,
            interface,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(agent::run(agent::Options {
                config,
                xdp_mode,
                interface,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file, no_host } => {
            let cfg = config::load(&file)?;
            if !no_host {
                let all = host::all_addresses().context("listing host addresses")?;
                let report = config::check_host(&cfg, &|n| host::interface(n).ok(), &all)?;
                for w in report.warnings {
                    println!("warning: {w}");
                }
            }
            let vips: usize = cfg.groups.iter().map(|g| g.vips.len()).sum();
            println!(
                "{}: ok ({} groups, {vips} VIPs)",
                file.display(),
                cfg.groups.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, socket } => {
            let resp = control::request(&socket, &Request::Status)?;
            let Some(status) = resp.status.filter(|_| resp.ok) else {
                bail!(
                    "{}",
                    resp.error
                        .unwrap_or_else(|| "the agent returned no status".into())
                );
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.table());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::XdpPass { interfaces } => {
            let mut dp = vip::dataplane::Dataplane::load(1).context("loading the XDP object")?;
            for i in &interfaces {
                dp.attach_pass(i)?;
            }
            eprintln!(
                "xdp-pass attached to {}; waiting for SIGTERM",
                interfaces.join(", ")
            );
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(nix::sys::signal::Signal::SIGTERM);
            set.add(nix::sys::signal::Signal::SIGINT);
            set.thread_block().context("blocking signals")?;
            set.wait().context("waiting for a signal")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { group, socket } => simple(&socket, Request::Resume { group }),
        Command::Notify { kind, name, state, priority, socket } => {
            simple(&socket, Request::Notify { kind, name, state, priority })
        }
        Command::Promote { group, socket } => simple(&socket, Request::Promote { group }),
        Command::Demote {
            group,
            forward_to,
            socket,
        } => simple(&socket, Request::Demote { group, forward_to }),
    }
}

fn simple(socket: &std::path::Path, req: Request) -> Result<ExitCode> {
    let resp = control::request(socket, &req)?;
    if resp.ok {
        println!("{}", resp.message.unwrap_or_else(|| "ok".into()));
        Ok(ExitCode::SUCCESS)
    } else {
        bail!(
            "{}",
            resp.error.unwrap_or_else(|| "the agent refused".into())
        )
    }
}
