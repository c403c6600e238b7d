//! `vip`: the agent and its command-line client.

use std::{io::Read, path::Path, process::ExitCode};

use anyhow::{bail, Context, Result};
use clap::Parser;
use vip::{
    agent,
    cli::{self, Cli, Command},
    config,
    control::{self, Request},
    host,
};

fn main() -> ExitCode {
    let journal = cli::logging_to_journal();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if journal {
        // Under systemd: journald timestamps each line itself and reads the `<N>`
        // prefix as the line's priority (`journalctl -p err` finds errors).
        logger.format(|out, record| {
            cli::journal_line(out, record.level(), &record.args().to_string())
        });
    } else {
        logger.format_timestamp_millis();
    }
    logger.init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if journal {
                eprintln!("<3>error: {e:#}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Agent {
            config,
            cleanup,
            xdp_mode,
            interface,
        } => {
            let opts = agent::Options {
                config,
                xdp_mode,
                interface,
            };
            if cleanup {
                let done = agent::cleanup(&opts)?;
                if done.is_empty() {
                    println!("nothing to clean up");
                }
                for d in done {
                    println!("{d}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            raise_fd_limit();
            // The agent's loop runs on this thread (block_on); sockets and timers on
            // two workers; status is rendered on a thread of its own (see agent).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(agent::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file, no_host } => {
            let cfg = if file == Path::new("-") {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the config from standard input")?;
                config::parse(&text)?
            } else {
                config::load(&file)?
            };
            // Against the host, every warning; with --no-host, those about the file
            // itself (timing, keys).
            let warnings = if no_host {
                config::file_warnings(&cfg)
            } else {
                let all = host::all_addresses().context("listing host addresses")?;
                config::check_host(&cfg, &|n| host::interface(n).ok(), &all)?.warnings
            };
            for w in warnings {
                println!("warning: {w}");
            }
            let vips: usize = cfg.groups.iter().map(|g| g.vips.len()).sum();
            let name = if file == Path::new("-") {
                "<stdin>".into()
            } else {
                file.display().to_string()
            };
            println!("{name}: ok ({} groups, {vips} VIPs)", cfg.groups.len());
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
        Command::SpeakerGuard { bird, dir, table } => {
            vip::speaker::guard::run(&bird, &dir, table)?;
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
        Command::Generate { man, completions } => {
            if man.is_none() && completions.is_none() {
                bail!("nothing to generate: give --man DIR and/or --completions DIR");
            }
            if let Some(dir) = man {
                for f in cli::write_man_pages(&dir)
                    .with_context(|| format!("writing man pages to {}", dir.display()))?
                {
                    println!("{}", dir.join(f).display());
                }
            }
            if let Some(dir) = completions {
                for f in cli::write_completions(&dir)
                    .with_context(|| format!("writing completions to {}", dir.display()))?
                {
                    println!("{}", dir.join(f).display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { path, force } => {
            vip::keygen::write(&path, force)?;
            println!(
                "wrote a new {}-bit key to {} (mode 0600)",
                vip::keygen::KEY_BYTES * 8,
                path.display()
            );
            println!(
                "copy this same file to every peer of the group, and put in the group on each:"
            );
            let value = toml::Value::String(path.display().to_string());
            println!("auth_key_file = {value}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { socket } => simple(&socket, Request::Reload),
        Command::Restart { hold_ms, socket } => simple(&socket, Request::Restart { hold_ms }),
        Command::Watch {
            interval_ms,
            count,
            socket,
        } => watch(&socket, interval_ms, count),
        Command::Resume { group, socket } => simple(&socket, Request::Resume { group }),
        Command::Notify {
            kind,
            name,
            state,
            priority,
            socket,
        } => simple(
            &socket,
            Request::Notify {
                kind,
                name,
                state,
                priority,
            },
        ),
        Command::Promote { group, socket } => simple(&socket, Request::Promote { group }),
        Command::Demote {
            group,
            forward_to,
            socket,
        } => simple(&socket, Request::Demote { group, forward_to }),
    }
}

/// Raises the agent's soft descriptor limit (systemd's default of 1,024 is what a
/// local user's idle connections once used up: see `vip::exhaustion`), and says so.
fn raise_fd_limit() {
    match vip::exhaustion::raise_fd_limit() {
        Ok(l) if l.now < 1024 => log::warn!(
            "descriptor limit: {} (the hard limit); the control socket and the metrics endpoint shed connections early",
            l.now
        ),
        Ok(l) if l.now > l.before => log::info!(
            "descriptor limit raised from {} to {} (hard limit {})",
            l.before,
            l.now,
            l.hard
        ),
        Ok(l) => log::info!("descriptor limit: {} (hard limit {})", l.now, l.hard),
        Err(e) => log::warn!("raising the descriptor limit: {e}"),
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

/// `vip watch`: polls the agent and redraws the rate table (`status::watch_frame`)
/// in place.
fn watch(socket: &std::path::Path, interval_ms: u64, count: Option<u64>) -> Result<ExitCode> {
    use std::{io::Write, time::Instant};
    let interval = std::time::Duration::from_millis(interval_ms.max(100));
    let mut last = vip::status::WatchCounters::default();
    let mut last_t = Instant::now();
    let mut n = 0u64;
    loop {
        let resp = control::request(socket, &Request::Status)?;
        let Some(status) = resp.status else {
            bail!(
                "{}",
                resp.error
                    .unwrap_or_else(|| "the agent returned no status".into())
            );
        };
        let elapsed = (n > 0).then(|| last_t.elapsed().as_secs_f64());
        last_t = Instant::now();
        let out =
            vip::status::watch_frame(&status, &mut last, elapsed, interval.as_millis() as u64);
        // Clear the screen and draw from the top: refresh in place.
        print!("\x1b[H\x1b[2J{out}");
        std::io::stdout().flush()?;
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(interval);
    }
}
