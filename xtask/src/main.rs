//! `cargo xtask`: everything a fresh machine needs, in one place.

mod bench;
mod bgp;
mod chaos;
mod deb;
mod demo;
mod failover;
mod failover_sizes;
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
    /// Lint the XDP program (`vip-ebpf`, outside the workspace) for its own target,
    /// bpfel-unknown-none, with the clippy of the compiler that builds it; warnings
    /// are errors. CI runs it next to the workspace's clippy.
    ClippyEbpf,
    /// Load the XDP program as built under other crate hashes: for each SALT, build it
    /// with `VIP_EBPF_SALT=SALT` and run the suites that load it in every
    /// configuration (fixtures, parse_shapes). The hashes follow the path the tree is
    /// built at, and LLVM's register choices follow them: a program the verifier
    /// takes here may be refused in a clone elsewhere. CI runs two salts.
    Codegen {
        #[arg(default_values = ["1", "2"])]
        salts: Vec<String>,
    },
    /// Build, then run the agent in the foreground on IFACE with CONFIG.
    BuildAndLoad {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        xdp_mode: Option<String>,
    },
    /// The demo: a switch, servers, a client and a gateway in namespaces; a live
    /// failover, then active/active (a balanced group) with a member failure.
    Demo,
    /// Benchmarks with same-run baselines: paths, throughput, scale, control, stall,
    /// hostile, failover (with its size axis: 1 to 20,000 VIPs), bgp (VIPs announced
    /// over BGP to an FRR router, with and without BFD) (all by default), and,
    /// only when named, soak (no false takeover under CPU hogs and 2 % loss, vip and
    /// keepalived), chaos (one owner on the wire under random faults) and
    /// failover-sizes (the size axis alone); a table, and JSON in
    /// target/bench/latest.json.
    Bench {
        /// Which benchmarks (default: all).
        which: Vec<String>,
        /// A short smoke run (seconds), as CI does.
        #[arg(long)]
        quick: bool,
        /// Failover runs per case.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds of `soak` per implementation (run only when named).
        #[arg(long, default_value_t = 300)]
        soak_secs: u64,
        /// Where to write the JSON (default target/bench/latest.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// An earlier run's JSON: print the ratio to it and flag slowdowns.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// Slowdown (percent) beyond which a figure is flagged.
        #[arg(long, default_value_t = 15.0)]
        threshold: f64,
        /// Faults per mode (and binary) of `chaos`.
        #[arg(long, default_value_t = 200)]
        faults: usize,
        /// Seed of `chaos`'s fault sequence (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Another vip binary (e.g. the previous release) measured in the same run:
        /// `paths` (its data plane interleaved with this one's), `hostile` (its agents
        /// on the same cases), `chaos` (same seed) and the multi-standby `failover` rows.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// Build, then package: target/debian/vip_<version>_<arch>.deb.
    Deb {
        /// Verify the package: required paths, man pages per subcommand, conffile,
        /// control fields, maintainer scripts.
        #[arg(long)]
        check: bool,
        /// Also install it with dpkg, run /usr/bin/vip and man, then remove and purge
        /// it (for CI's disposable machines; implies --check).
        #[arg(long)]
        install: bool,
    },
    /// Build, then run every test (unit, fixtures, namespace tests).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter); after `--`,
        /// arguments for the test harness (e.g. `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
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
        Cmd::ClippyEbpf => clippy_ebpf(),
        Cmd::Codegen { salts } => codegen(&salts),
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
        Cmd::Deb { check, install } => {
            let vip = build()?;
            let pkg = deb::build(&vip)?;
            if check || install {
                deb::check(&pkg, &vip)?;
            }
            if install {
                // SAFETY: geteuid cannot fail.
                if unsafe { libc::geteuid() } != 0 {
                    bail!("--install runs dpkg -i: run it as root");
                }
                deb::install_smoke(&pkg, &vip)?;
            }
            println!("{}", pkg.display());
            Ok(())
        }
        Cmd::Bench {
            which,
            quick,
            runs,
            soak_secs,
            out,
            compare,
            threshold,
            faults,
            seed,
            baseline,
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
                    soak_secs,
                    out,
                    compare,
                    threshold: threshold / 100.0,
                    faults,
                    seed,
                    baseline,
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

/// `cargo xtask codegen`: the loading suites against the program built under each
/// salt; the build without one is restored at the end (the next build rebuilds it).
fn codegen(salts: &[String]) -> Result<()> {
    let suites: Vec<String> = ["--test", "fixtures", "--test", "parse_shapes"]
        .map(String::from)
        .into();
    for salt in salts {
        eprintln!("[codegen] the XDP program built with VIP_EBPF_SALT={salt}");
        std::env::set_var("VIP_EBPF_SALT", salt);
        let r = test(&suites);
        std::env::remove_var("VIP_EBPF_SALT");
        r.with_context(|| format!("the XDP program built with VIP_EBPF_SALT={salt}"))?;
    }
    Ok(())
}

/// Clippy over the eBPF crate as it is built: for bpfel-unknown-none, by Debian's
/// rustc (the only one here with a `core` for that target) and the clippy-driver
/// built with it (package rust-web-clippy; rustup's clippy has no BPF `core`).
/// `cargo-clippy` runs `cargo check` with its sibling clippy-driver as the wrapper.
/// Its own target directory, so that the real build's artifacts are left alone.
fn clippy_ebpf() -> Result<()> {
    setup::ensure()?;
    eprintln!("[clippy-ebpf] clippy for bpfel-unknown-none over vip-ebpf (-D warnings)");
    let mut c = Command::new(setup::BPF_CLIPPY);
    c.current_dir(root().join("vip-ebpf"))
        .args([
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--lib",
            "--bins",
        ])
        .arg("--target-dir")
        .arg(root().join("target/bpf-clippy"))
        .args(["--", "-D", "warnings"]);
    // As vip-userspace/build.rs builds it: Debian's rustc, asm_experimental_arch
    // (aya-ebpf) through RUSTC_BOOTSTRAP, none of the outer build's settings.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        c.env_remove(var);
    }
    c.env("RUSTC_BOOTSTRAP", "1").env("RUSTC", setup::BPF_RUSTC);
    status(&mut c)
}

/// Integration test binaries (tests/tests/NAME.rs) that measure timing or fail over:
/// their tests run one at a time, so that two of them do not skew each other's
/// outage and takeover figures on a loaded machine. Every other test runs in parallel.
const SERIAL: &[&str] = &[
    "anycast",
    "balance",
    "big_group",
    "bgp",
    "bgp_lab",
    "chaos",
    "eip",
    "failover",
    "handover",
    "ipv6",
    "keepalived",
    "operations",
    "ownership",
    "replay",
    "route6",
    "security_local",
    "security",
    "upgrade",
    "virtual_mac",
    "wire",
];

/// `cargo test` options that choose packages or targets themselves.
const SELECTING: &[&str] = &[
    "-p",
    "--package",
    "--workspace",
    "--exclude",
    "--lib",
    "--bin",
    "--bins",
    "--test",
    "--tests",
    "--bench",
    "--benches",
    "--example",
    "--examples",
    "--doc",
    "--all-targets",
];

fn test(args: &[String]) -> Result<()> {
    let skip = std::env::var("VIP_SKIP_PRIVILEGED").is_ok_and(|v| v == "1");
    if skip {
        eprintln!(
            "[test] VIP_SKIP_PRIVILEGED=1: privileged tests (namespaces, XDP) are NOT run; \
             they are reported as ignored"
        );
    } else {
        if nix::unistd::geteuid().as_raw() != 0 {
            bail!(
                "the tests attach XDP programs and create network namespaces: run them as root \
                   (or set VIP_SKIP_PRIVILEGED=1 to run only the unprivileged ones)"
            );
        }
    }
    let vip = build()?;
    let (cargo_args, mut harness) = split_args(args);
    // Privileged tests are #[ignore]d so that a plain `cargo test` (or a skip) reports
    // them as ignored rather than passed; here they run unless skipped.
    if !skip
        && !harness
            .iter()
            .any(|a| a == "--ignored" || a == "--include-ignored")
    {
        harness.push("--include-ignored".into());
    }
    let threads_given = harness.iter().any(|a| a.starts_with("--test-threads"));
    let serial_harness = {
        let mut h = harness.clone();
        if !threads_given {
            h.push("--test-threads=1".into());
        }
        h
    };
    let runs: Vec<(Vec<String>, &[String])> = if cargo_args.iter().any(|a| selecting(a)) {
        // The caller chose the targets: one run, serial if it includes a timing suite.
        // Without a package choice, targets are looked up in the whole workspace (the
        // integration tests are not among the default members).
        let packaged = cargo_args
            .iter()
            .any(|a| a.starts_with("-p") || a.starts_with("--package") || a == "--workspace");
        let targets = if packaged {
            vec![]
        } else {
            vec!["--workspace".into()]
        };
        let serial = selects_serial(&cargo_args);
        vec![(targets, if serial { &serial_harness } else { &harness })]
    } else {
        let mut parallel: Vec<String> = ["--workspace", "--lib", "--bins"].map(String::from).into();
        for t in integration_tests()? {
            if !SERIAL.contains(&t.as_str()) {
                parallel.extend(["--test".into(), t]);
            }
        }
        let mut serial: Vec<String> = vec!["--package".into(), "vip-tests".into()];
        for t in SERIAL {
            serial.extend(["--test".into(), (*t).into()]);
        }
        vec![
            (parallel, &harness),
            (vec!["--workspace".into(), "--doc".into()], &harness),
            (serial, &serial_harness),
        ]
    };
    for (targets, harness) in runs {
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(root())
            .args(["test", "--release"])
            .args(&targets)
            .args(&cargo_args)
            .arg("--")
            .args(harness)
            .env("VIP_BIN", &vip);
        let mut shown: Vec<&str> = targets
            .iter()
            .chain(&cargo_args)
            .map(String::as_str)
            .collect();
        if !harness.is_empty() {
            shown.push("--");
            shown.extend(harness.iter().map(String::as_str));
        }
        eprintln!("[test] cargo test --release {}", shown.join(" "));
        status(&mut c)?;
    }
    if skip {
        eprintln!("[test] done; privileged tests were NOT run (VIP_SKIP_PRIVILEGED=1): see \"ignored\" above");
    } else {
        eprintln!("[test] all tests passed");
    }
    Ok(())
}

/// Splits `cargo xtask test` arguments at the first `--` into cargo's and the test
/// harness's.
fn split_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    match args.iter().position(|a| a == "--") {
        Some(i) => (args[..i].to_vec(), args[i + 1..].to_vec()),
        None => (args.to_vec(), vec![]),
    }
}

fn selecting(arg: &str) -> bool {
    let name = arg.split('=').next().unwrap_or(arg);
    SELECTING.contains(&name) || (arg.starts_with("-p") && arg.len() > 2 && !arg.starts_with("--"))
}

/// Whether cargo arguments that choose targets may include a SERIAL test binary
/// (packages and whole-workspace choices count, to be safe).
fn selects_serial(cargo_args: &[String]) -> bool {
    let mut it = cargo_args.iter();
    while let Some(a) = it.next() {
        let test = match a.strip_prefix("--test=") {
            Some(n) => Some(n),
            None if a == "--test" => it.next().map(String::as_str),
            None => None,
        };
        if test.is_some_and(|n| SERIAL.contains(&n))
            || matches!(a.as_str(), "--tests" | "--all-targets" | "--workspace")
            || a.starts_with("--package")
            || (a.starts_with("-p") && !a.starts_with("--"))
        {
            return true;
        }
    }
    false
}

/// The integration test binaries: tests/tests/*.rs.
fn integration_tests() -> Result<Vec<String>> {
    let dir = root().join("tests/tests");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "rs") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    for s in SERIAL {
        if !names.iter().any(|n| n == s) {
            bail!("xtask's SERIAL names tests/tests/{s}.rs, which does not exist");
        }
    }
    Ok(names)
}

pub fn status(c: &mut Command) -> Result<()> {
    let st = c.status().with_context(|| format!("running {c:?}"))?;
    if !st.success() {
        bail!("{c:?} failed ({st})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn user_arguments_split_at_the_first_double_dash() {
        assert_eq!(split_args(&v(&["failover"])), (v(&["failover"]), v(&[])));
        assert_eq!(
            split_args(&v(&["x", "--", "--nocapture", "--", "y"])),
            (v(&["x"]), v(&["--nocapture", "--", "y"]))
        );
    }

    #[test]
    fn chosen_targets_run_serially_only_with_a_timing_suite() {
        assert!(selecting("--test") && selecting("-pvip-tests") && selecting("--lib"));
        assert!(!selecting("failover") && !selecting("--release"));
        assert!(selects_serial(&v(&["--test", "failover"])));
        assert!(selects_serial(&v(&["--test=chaos"])));
        assert!(selects_serial(&v(&["-p", "vip-tests"])));
        assert!(!selects_serial(&v(&["--test", "arp"])));
        assert!(!selects_serial(&v(&["--lib"])));
    }

    #[test]
    fn every_serial_suite_exists() {
        integration_tests().unwrap();
    }
}
