//! `cargo xtask`: everything a fresh machine needs, in one place.

mod bench;
mod demo;
mod failover;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything vip needs (Debian packages, bpf-linker on LLVM 22, bpffs).
    Setup,
    /// Build the self-contained `target/release/vip` (XDP object embedded).
    Build,
    /// Build, then run the agent in the foreground on IFACE with CONFIG.
    BuildAndLoad {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        xdp_mode: Option<String>,
    },
    /// The demo: a switch, two servers and a client in namespaces; a live failover.
    Demo,
    /// Benchmarks with same-run baselines: paths, throughput, scale, control,
    /// failover (all by default); a table, and JSON in target/bench/latest.json.
    Bench {
        /// Which benchmarks (default: all).
        which: Vec<String>,
        /// A short smoke run (seconds), as CI does.
        #[arg(long)]
        quick: bool,
        /// Failover runs per case.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Where to write the JSON (default target/bench/latest.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// An earlier run's JSON: print the ratio to it and flag slowdowns.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// Slowdown (percent) beyond which a figure is flagged.
        #[arg(long, default_value_t = 15.0)]
        threshold: f64,
    },
    /// Build, then run every test (unit, fixtures, namespace tests).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Build => build().map(|_| ()),
        Cmd::BuildAndLoad {
            iface,
            config,
            xdp_mode,
        } => {
            let vip = build()?;
            let mut c = Command::new(vip);
            c.args(["agent", "--config"])
                .arg(&config)
                .args(["--interface", &iface]);
            if let Some(m) = xdp_mode {
                c.args(["--xdp-mode", &m]);
            }
            status(&mut c)
        }
        Cmd::Demo => {
            let vip = build()?;
            demo::run(&vip)
        }
        Cmd::Test { args } => test(&args),
        Cmd::Bench {
            which,
            quick,
            runs,
            out,
            compare,
            threshold,
        } => {
            if nix::unistd::geteuid().as_raw() != 0 {
                bail!("the benchmarks load XDP programs and create network namespaces: run them as root");
            }
            let vip = build()?;
            bench::run(
                &vip,
                bench::Options {
                    which,
                    quick,
                    runs,
                    out,
                    compare,
                    threshold: threshold / 100.0,
                },
            )
        }
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Sets up what is missing, then builds the release binary; returns its path.
fn build() -> Result<PathBuf> {
    setup::ensure()?;
    eprintln!("[build] cargo build --release (the XDP program is built and embedded)");
    status(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "vip-userspace",
    ]))?;
    let vip = root().join("target/release/vip");
    if !vip.is_file() {
        bail!("{} was not produced", vip.display());
    }
    Ok(vip)
}

fn test(args: &[String]) -> Result<()> {
    let skip = std::env::var("VIP_SKIP_PRIVILEGED").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("[test] VIP_SKIP_PRIVILEGED=1: privileged tests (namespaces, XDP) are NOT run; each says so");
    } else {
        if nix::unistd::geteuid().as_raw() != 0 {
            bail!(
                "the tests attach XDP programs and create network namespaces: run them as root \
                   (or set VIP_SKIP_PRIVILEGED=1 to run only the unprivileged ones)"
            );
        }
    }
    let vip = build()?;
    eprintln!("[test] cargo test --release --workspace");
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(root())
        .args(["test", "--release", "--workspace"])
        .args(args)
        .env("VIP_BIN", &vip);
    status(&mut c)?;
    if skip {
        eprintln!("[test] done; privileged tests were NOT run (VIP_SKIP_PRIVILEGED=1)");
    } else {
        eprintln!("[test] all tests passed");
    }
    Ok(())
}

pub fn status(c: &mut Command) -> Result<()> {
    let st = c.status().with_context(|| format!("running {c:?}"))?;
    if !st.success() {
        bail!("{c:?} failed ({st})");
    }
    Ok(())
}
