//! `cargo xtask setup`: installs what building and testing vip needs, idempotently.
//! Each step checks first and does nothing when its part is already there.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::status;

/// Debian packages: the BPF compiler (Debian's rustc with a prebuilt bpfel core)
/// and its clippy, what bpf-linker builds against, and the tools the tests and demo
/// drive (BIRD 2 and FRR: the BGP lab's nodes and router, run only inside the tests'
/// namespaces).
const PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "rust-web-clippy",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "iputils-ping",
    "arping",
    "ethtool",
    "tcpdump",
    "bpftool",
    "keepalived",
    "faketime",
    "ndisc6",
    "nftables",
    "bird2",
    "frr",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
pub const BPF_RUSTC: &str = "/usr/bin/rustc";
/// rust-web-clippy's, next to its clippy-driver (rustup's `cargo-clippy` comes first
/// on PATH and drives rustup's toolchain).
pub const BPF_CLIPPY: &str = "/usr/bin/cargo-clippy";

/// What is missing, one line each; empty when everything is in place.
pub fn missing() -> Vec<String> {
    let mut m = Vec::new();
    let pkgs = missing_packages();
    if !pkgs.is_empty() {
        m.push(format!("Debian packages: {}", pkgs.join(" ")));
    }
    if bpf_linker().is_none() {
        m.push(format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"));
    }
    if !bpffs_mounted() {
        m.push("bpffs at /sys/fs/bpf".into());
    }
    m
}

/// Runs setup only if something is missing.
pub fn ensure() -> Result<()> {
    let m = missing();
    if m.is_empty() {
        return Ok(());
    }
    eprintln!("[setup] missing: {}", m.join("; "));
    run()
}

pub fn run() -> Result<()> {
    if nix::unistd::geteuid().as_raw() != 0 {
        let m = missing();
        if m.is_empty() {
            eprintln!("[setup] everything is in place");
            return Ok(());
        }
        bail!("setup installs Debian packages and mounts bpffs, which needs root; nothing was changed. Missing: {}", m.join("; "));
    }
    let pkgs = missing_packages();
    if pkgs.is_empty() {
        eprintln!("[setup] Debian packages: present");
    } else {
        eprintln!("[setup] installing Debian packages: {}", pkgs.join(" "));
        status(Command::new("apt-get").args(["update", "-q"])).context("apt-get update")?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("apt-get install")?;
        let still = missing_packages();
        if !still.is_empty() {
            bail!("still missing after apt-get install: {}", still.join(" "));
        }
    }
    if !bpf_core_present() {
        bail!("{BPF_RUSTC} has no core for bpfel-unknown-none although rustc-web and libstd-rust-web-dev-bpf are installed");
    }
    eprintln!("[setup] BPF compiler: {BPF_RUSTC} with a bpfel-unknown-none core");
    match bpf_linker() {
        Some(p) => eprintln!("[setup] bpf-linker: {}", p.display()),
        None => {
            eprintln!("[setup] building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute and a half)");
            status(
                Command::new(env!("CARGO"))
                    .args([
                        "install",
                        "bpf-linker",
                        "--version",
                        BPF_LINKER_VERSION,
                        "--no-default-features",
                        "--features",
                        "llvm-22",
                    ])
                    .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
            )
            .context("cargo install bpf-linker")?;
            if bpf_linker().is_none() {
                bail!("bpf-linker was installed but is not on PATH nor in ~/.cargo/bin");
            }
        }
    }
    if bpffs_mounted() {
        eprintln!("[setup] bpffs: mounted at /sys/fs/bpf");
    } else {
        eprintln!("[setup] mounting bpffs at /sys/fs/bpf");
        status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
            .context("mounting bpffs")?;
    }
    eprintln!("[setup] done");
    Ok(())
}

fn missing_packages() -> Vec<String> {
    PACKAGES
        .iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .map(|p| p.to_string())
        .collect()
}

fn bpf_core_present() -> bool {
    std::fs::read_dir("/usr/lib/rustlib/bpfel-unknown-none/lib").is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
    })
}

fn bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join("bpf-linker")).find(|p| {
        p.is_file()
            && Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
    })
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
        })
    })
}
