//! Builds the XDP programs (`vip-ebpf`) with the BPF toolchain and embeds the objects in
//! the `vip` binary, so `cargo build --release` yields one self-contained executable:
//! `vip.bpf.o`, the data plane, and `vip-bench.bpf.o`, the benchmarks' generator and
//! sink, which only `dataplane::BenchPrograms` embeds and loads (feature `test-run`,
//! never an agent).
//!
//! The host rustup toolchain has no `core` for bpfel-unknown-none; Debian's rustc
//! (/usr/bin/rustc, package rustc-web) ships one, and bpf-linker links the object.
//! `cargo xtask setup` installs both. With `VIP_EBPF_STUB=1` the data plane is left out
//! (an empty object is embedded) so `cargo check`, clippy and unit tests work anywhere;
//! such a binary refuses to start an agent and says why.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    git_revision();
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    // (cargo bin name, embedded object)
    let objects = [("vip", "vip.bpf.o"), ("vip-bench", "vip-bench.bpf.o")];
    println!("cargo:rerun-if-env-changed=VIP_EBPF_STUB");
    println!("cargo:rerun-if-env-changed=VIP_BPF_RUSTC");
    println!("cargo:rerun-if-env-changed=VIP_EBPF_SALT");
    println!("cargo:rustc-check-cfg=cfg(vip_ebpf_stub)");
    for p in [
        "vip-ebpf/src",
        "vip-ebpf/Cargo.toml",
        "vip-ebpf/Cargo.lock",
        "vip-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }

    if env::var("VIP_EBPF_STUB").is_ok_and(|v| v == "1") {
        println!("cargo:warning=VIP_EBPF_STUB=1: building vip WITHOUT its XDP program");
        println!("cargo:rustc-cfg=vip_ebpf_stub");
        for (_, o) in objects {
            fs::write(out_dir.join(o), []).unwrap();
        }
        return;
    }

    let rustc = env::var("VIP_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let linker = find_bpf_linker();
    let mut missing = Vec::new();
    if !has_bpf_core(&rustc) {
        missing.push(format!("{rustc} with a core for bpfel-unknown-none (Debian: rustc-web libstd-rust-web-dev-bpf)"));
    }
    if linker.is_none() {
        missing.push("bpf-linker (cargo install bpf-linker, built on LLVM 22)".into());
    }
    if !missing.is_empty() {
        panic!(
            "\n\nThe eBPF toolchain is missing: {}.\nRun `cargo xtask setup` to install it, \
             or set VIP_EBPF_STUB=1 to build without the data plane (check/clippy/unit tests).\n\n",
            missing.join("; ")
        );
    }
    let linker = linker.unwrap();

    let target_dir = env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("bpf");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("vip-ebpf"))
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir);
    // The outer build's settings must not leak into the BPF build.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTDOCFLAGS",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    // VIP_EBPF_SALT changes the crate hashes and nothing else, as building the tree
    // at another path does (cargo hashes vip-common's absolute path: it lies outside
    // vip-ebpf's workspace). LLVM's choices follow the symbol names, so a program
    // the verifier takes at one path may be refused at another; `cargo xtask
    // codegen` loads the program built under several salts.
    let mut rustflags = String::from("-C debuginfo=2 -C link-arg=--btf");
    if let Ok(salt) = env::var("VIP_EBPF_SALT") {
        rustflags.push_str(&format!(" -C metadata=vip-salt-{salt}"));
    }
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", &rustc)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker)
        .env("RUSTFLAGS", rustflags);
    let status = cmd.status().expect("running cargo for vip-ebpf");
    if !status.success() {
        panic!("building vip-ebpf failed ({status}); see the output above");
    }
    for (bin, o) in objects {
        let obj = target_dir.join("bpfel-unknown-none/release").join(bin);
        fs::copy(&obj, out_dir.join(o))
            .unwrap_or_else(|e| panic!("copying {}: {e}", obj.display()));
    }
}

fn has_bpf_core(rustc: &str) -> bool {
    let Ok(output) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib/bpfel-unknown-none/lib")
        .read_dir()
        .is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
        })
}

fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME")
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo").into_os_string()))
    {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

/// `VIP_GIT_REVISION` for `vip --version`: `git rev-parse --short HEAD`;
/// "unknown" outside a git checkout (a source
/// tarball, a vendored build). Rebuilds when HEAD or the branch it points to moves.
fn git_revision() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env::var("CARGO_MANIFEST_DIR").unwrap())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = match git(&["rev-parse", "--short", "HEAD"]).filter(|r| !r.is_empty()) {
        Some(rev) => {
            // Only files that exist: cargo reruns for a missing one on every build.
            let branch = git(&["symbolic-ref", "-q", "HEAD"]);
            for what in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
                if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", what])
                    .filter(|p| Path::new(p).is_file())
                {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            rev
        }
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=VIP_GIT_REVISION={rev}");
}
