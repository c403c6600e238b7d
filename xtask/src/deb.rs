//! `cargo xtask deb`: a Debian package of the built binary, from a staged tree and
//! `dpkg-deb --build --root-owner-group` (no cargo-deb needed). `--check` verifies the
//! package's contents and control fields; `--install` also installs it, runs what it
//! installed and removes it again (CI machines are disposable).
//!
//! Man pages and shell completions come from the binary itself (`vip generate`, a
//! hidden subcommand over the same clap definitions), so they always match it.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{root, status};

const MAINTAINER: &str = "vip maintainers <vip@example.invalid>";
const UNIT: &str = "vip.service";
/// The key file the example config names (`vip keygen` writes it there by default).
/// The package does not create it: a key generated on each host would differ between
/// peers, and peers with different keys do not hear each other, so each would claim
/// the VIP. It is made once with `vip keygen` and copied; purge removes it.
const KEY_FILE: &str = "/etc/vip/auth.key";

/// The files every package must hold (besides one man page per subcommand).
const REQUIRED: &[&str] = &[
    "/usr/bin/vip",
    "/lib/systemd/system/vip.service",
    "/etc/vip/vip.toml",
    "/usr/share/man/man1/vip.1.gz",
    "/usr/share/bash-completion/completions/vip",
    "/usr/share/zsh/vendor-completions/_vip",
    "/usr/share/fish/vendor_completions.d/vip.fish",
    "/usr/share/doc/vip/README.md",
    "/usr/share/doc/vip/copyright",
    "/usr/share/doc/vip/grafana-dashboard.json",
];

/// Builds `target/debian/vip_<version>_<arch>.deb` around the binary `vip`.
pub fn build(vip: &Path) -> Result<PathBuf> {
    let version = version_of(vip)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let out_dir = root().join("target/debian");
    let stage = out_dir.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    fs::create_dir_all(&stage)?;
    let dist = root().join("dist");

    // The binary, without its debug info (the release profile keeps line tables).
    let bin = stage.join("usr/bin/vip");
    install(&stage, "usr/bin/vip", &fs::read(vip)?, 0o755)?;
    status(Command::new("strip").arg("--strip-debug").arg(&bin))?;

    install(
        &stage,
        "lib/systemd/system/vip.service",
        packaged_unit(&read(&dist.join(UNIT))?).as_bytes(),
        0o644,
    )?;
    install(
        &stage,
        "etc/vip/vip.toml",
        commented_config(&read(&dist.join("vip.toml"))?).as_bytes(),
        0o640,
    )?;

    // Man pages (gzipped, reproducibly) and completions, from the binary.
    let gen = out_dir.join("generated");
    if gen.exists() {
        fs::remove_dir_all(&gen)?;
    }
    status(
        Command::new(vip)
            .arg("generate")
            .arg("--man")
            .arg(gen.join("man"))
            .arg("--completions")
            .arg(gen.join("completions"))
            .stdout(std::process::Stdio::null()),
    )?;
    let man1 = "usr/share/man/man1";
    for e in fs::read_dir(gen.join("man"))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let page = fs::read(e.path())?;
        install(&stage, &format!("{man1}/{name}"), &page, 0o644)?;
        status(
            Command::new("gzip")
                .args(["-9nf"])
                .arg(stage.join(man1).join(&name)),
        )?;
    }
    for (from, to) in [
        ("vip", "usr/share/bash-completion/completions/vip"),
        ("_vip", "usr/share/zsh/vendor-completions/_vip"),
        ("vip.fish", "usr/share/fish/vendor_completions.d/vip.fish"),
    ] {
        install(
            &stage,
            to,
            &fs::read(gen.join("completions").join(from))?,
            0o644,
        )?;
    }

    let doc = "usr/share/doc/vip";
    install(
        &stage,
        &format!("{doc}/README.md"),
        &fs::read(root().join("README.md"))?,
        0o644,
    )?;
    install(
        &stage,
        &format!("{doc}/copyright"),
        COPYRIGHT.as_bytes(),
        0o644,
    )?;
    install(
        &stage,
        &format!("{doc}/grafana-dashboard.json"),
        &fs::read(dist.join("grafana-dashboard.json"))?,
        0o644,
    )?;

    // Control files.
    let control = format!(
        "Package: vip\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {}\nDepends: {}\nRecommends: iproute2, bird2\nSection: net\nPriority: optional\n\
         Description: XDP data plane for virtual-IP failover\n \
         vip answers ARP and neighbour solicitations for virtual IPs and steers their\n \
         traffic in XDP, moves groups of VIPs between active and standby servers (own\n \
         election, static roles or keepalived notifications) and maps elastic IPs on\n \
         gateways. The agent runs as the vip systemd service once /etc/vip/vip.toml is\n \
         configured; the package does not enable or start it.\n",
        installed_size_kib(&stage)?,
        depends(&bin)?
    );
    install(&stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    install(&stage, "DEBIAN/conffiles", b"/etc/vip/vip.toml\n", 0o644)?;
    install(&stage, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    install(&stage, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    install(&stage, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    set_dir_modes(&stage)?;

    let deb = out_dir.join(format!("vip_{version}_{arch}.deb"));
    eprintln!("[deb] dpkg-deb --build {}", deb.display());
    status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "-z6", "--build"])
            .arg(&stage)
            .arg(&deb)
            .stdout(std::process::Stdio::null()),
    )?;
    Ok(deb)
}

/// Verifies the package: every required path, a man page per subcommand of `vip`, the
/// conffile, the control fields, the maintainer scripts' syntax, the unit's paths and
/// a configuration that does nothing until edited.
pub fn check(deb: &Path, vip: &Path) -> Result<()> {
    let version = version_of(vip)?;
    let listing = output(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    // `drwxr-xr-x root/root 0 2024-01-01 00:00 ./usr/bin/` -> `/usr/bin`
    let paths: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').trim_end_matches('/').to_string())
        .collect();
    let owners: BTreeSet<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    ensure!(
        owners.iter().all(|o| *o == "root/root"),
        "files not owned by root: {owners:?}"
    );
    let mut missing: Vec<String> = REQUIRED
        .iter()
        .filter(|p| !paths.contains(**p))
        .map(|p| p.to_string())
        .collect();
    let subcommands = subcommands(vip)?;
    ensure!(
        subcommands.len() >= 10,
        "found only {subcommands:?} in `vip help`"
    );
    for s in &subcommands {
        let page = format!("/usr/share/man/man1/vip-{s}.1.gz");
        if !paths.contains(&page) {
            missing.push(page);
        }
    }
    ensure!(
        missing.is_empty(),
        "{} lacks:\n  {}",
        deb.display(),
        missing.join("\n  ")
    );

    let field = |name: &str| output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name));
    ensure!(field("Package")? == "vip", "Package is not vip");
    ensure!(
        field("Version")? == version,
        "Version is not the binary's {version}"
    );
    ensure!(
        field("Architecture")? == output(Command::new("dpkg").arg("--print-architecture"))?,
        "Architecture is not this machine's"
    );
    ensure!(
        field("Depends")?.contains("libc6"),
        "Depends does not name libc6"
    );
    for f in ["Maintainer", "Installed-Size", "Description"] {
        ensure!(!field(f)?.is_empty(), "no {f} field");
    }
    let conffiles = output(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles"))?;
    ensure!(
        conffiles.lines().any(|l| l == "/etc/vip/vip.toml"),
        "/etc/vip/vip.toml is not a conffile: {conffiles:?}"
    );

    let tmp = root().join("target/debian/check");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    status(
        Command::new("dpkg-deb")
            .arg("--control")
            .arg(deb)
            .arg(tmp.join("DEBIAN")),
    )?;
    for s in ["postinst", "prerm", "postrm"] {
        let p = tmp.join("DEBIAN").join(s);
        ensure!(
            fs::metadata(&p)?.permissions().mode() & 0o111 != 0,
            "{s} is not executable"
        );
        status(Command::new("sh").arg("-n").arg(&p))?;
    }
    status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    let unit = read(&tmp.join("lib/systemd/system/vip.service"))?;
    ensure!(
        unit.contains("ExecStart=/usr/bin/vip agent") && !unit.contains("/usr/local/bin"),
        "the unit does not run /usr/bin/vip"
    );
    // systemd's default soft limit (1,024) is what idle metrics connections once used
    // up: the unit must raise it.
    ensure!(
        unit.lines().any(|l| l.starts_with("LimitNOFILE=")),
        "the unit sets no LimitNOFILE="
    );
    let conf = read(&tmp.join("etc/vip/vip.toml"))?;
    ensure!(
        conf.lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#')),
        "/etc/vip/vip.toml is not fully commented out"
    );
    // Uncommented, the example authenticates its group's advertisements.
    ensure!(
        conf.lines()
            .any(|l| l == format!("# auth_key_file = \"{KEY_FILE}\"")),
        "/etc/vip/vip.toml does not point its group at {KEY_FILE}"
    );
    fs::remove_dir_all(&tmp)?;
    eprintln!(
        "[deb] {} ok: {} paths, man pages for {} subcommands, conffile listed",
        deb.display(),
        paths.len(),
        subcommands.len()
    );
    Ok(())
}

/// Installs the package with dpkg, runs the installed binary and man, then removes
/// and purges it. For CI's disposable machines (root).
pub fn install_smoke(deb: &Path, vip: &Path) -> Result<()> {
    let version = version_of(vip)?;
    let mut made_key = false;
    eprintln!("[deb] dpkg -i {}", deb.display());
    status(Command::new("dpkg").arg("-i").arg(deb))?;
    let result = (|| -> Result<()> {
        let v = output(Command::new("/usr/bin/vip").arg("--version"))?;
        ensure!(
            v.starts_with(&format!("vip {version} (rev ")),
            "/usr/bin/vip --version says {v:?}"
        );
        eprintln!("[deb] /usr/bin/vip --version: {v}");
        if Command::new("man").arg("--version").output().is_ok() {
            for page in ["vip", "vip-agent", "vip-check-config", "vip-keygen"] {
                let w = output(Command::new("man").args(["-w", page]))?;
                ensure!(w.ends_with(".gz"), "man -w {page} found {w:?}");
                eprintln!("[deb] man -w {page}: {w}");
            }
        } else {
            ensure!(
                Path::new("/usr/share/man/man1/vip.1.gz").is_file(),
                "vip.1.gz not installed"
            );
        }
        ensure!(
            Path::new("/etc/vip/vip.toml").is_file(),
            "/etc/vip/vip.toml not installed"
        );
        // The key the example config names, as the README says to make it (only if
        // this machine has none: it might be real).
        if !Path::new(KEY_FILE).exists() {
            let out = output(Command::new("/usr/bin/vip").args(["keygen", KEY_FILE]))?;
            ensure!(
                out.contains(&format!("auth_key_file = \"{KEY_FILE}\"")),
                "vip keygen said {out:?}"
            );
            let mode = fs::metadata(KEY_FILE)?.permissions().mode() & 0o777;
            ensure!(mode == 0o600, "{KEY_FILE} has mode {mode:o}");
            made_key = true;
            eprintln!("[deb] vip keygen {KEY_FILE}: mode 0600");
        }
        Ok(())
    })();
    eprintln!("[deb] dpkg -r vip; dpkg --purge vip");
    status(Command::new("dpkg").args(["-r", "vip"]))?;
    ensure!(
        !Path::new("/usr/bin/vip").exists(),
        "/usr/bin/vip is still there after dpkg -r"
    );
    status(Command::new("dpkg").args(["--purge", "vip"]))?;
    ensure!(
        !Path::new("/etc/vip/vip.toml").exists(),
        "/etc/vip/vip.toml is still there after dpkg --purge"
    );
    ensure!(
        !made_key || !Path::new(KEY_FILE).exists(),
        "{KEY_FILE} is still there after dpkg --purge"
    );
    result
}

/// `vip 0.1.0 (rev abc1234)` -> `0.1.0`.
fn version_of(vip: &Path) -> Result<String> {
    let v = output(Command::new(vip).arg("--version"))?;
    v.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("unexpected `vip --version`: {v:?}"))
}

/// The subcommands `vip help` lists (its own `help` aside).
fn subcommands(vip: &Path) -> Result<Vec<String>> {
    let help = output(Command::new(vip).arg("help"))?;
    Ok(help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .map(str::to_string)
        .collect())
}

/// The unit from dist/, for the package: the binary is /usr/bin/vip and the comment
/// about installing by hand gives way to one about the package.
fn packaged_unit(unit: &str) -> String {
    let body = &unit[unit.find("[Unit]").unwrap_or(0)..];
    format!(
        "# systemd unit for the vip agent (Debian package vip).\n\
         #\n\
         # The package neither enables nor starts it: configure /etc/vip/vip.toml (and its\n\
         # group's key: `vip keygen /etc/vip/auth.key` on one node, the same file copied to\n\
         # every peer), check it with `vip check-config /etc/vip/vip.toml`, then\n\
         # `systemctl enable --now vip`.\n\
         # Reload the config, or upgrade hitlessly (re-executes the new binary):\n\
         #   systemctl reload vip\n\
         # Stop (hands the VIPs over, removes everything): systemctl stop vip\n\n{}",
        body.replace("/usr/local/bin/vip", "/usr/bin/vip")
    )
}

/// dist/vip.toml with every line commented out: a fresh install configures nothing.
pub fn commented_config(example: &str) -> String {
    let mut out = String::from(
        "# /etc/vip/vip.toml: the configuration of the vip agent (vip.service).\n\
         #\n\
         # Everything below is commented out, so a fresh install does nothing. Uncomment\n\
         # and edit the example, check it with `vip check-config /etc/vip/vip.toml`, then\n\
         # `systemctl enable --now vip`. Every key: /usr/share/doc/vip/README.md.\n\
         #\n",
    );
    for line in example.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str("# ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// libc6 (and libgcc-s1 when linked) at the newest glibc symbol version the binary uses.
fn depends(bin: &Path) -> Result<String> {
    let dynamic = output(Command::new("readelf").arg("-d").arg(bin))?;
    let symbols = output(Command::new("objdump").arg("-T").arg(bin))?;
    let glibc = symbols
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let parts: Option<Vec<u32>> = v.split('.').map(|p| p.parse().ok()).collect();
            parts
        })
        .max()
        .context("no GLIBC_ symbol versions in the binary")?;
    let glibc: Vec<String> = glibc.iter().map(u32::to_string).collect();
    let mut deps = vec![format!("libc6 (>= {})", glibc.join("."))];
    if dynamic.contains("[libgcc_s.so.1]") {
        deps.push("libgcc-s1".into());
    }
    Ok(deps.join(", "))
}

fn installed_size_kib(stage: &Path) -> Result<u64> {
    fn walk(p: &Path, total: &mut u64) -> Result<()> {
        for e in fs::read_dir(p)? {
            let e = e?;
            let md = e.metadata()?;
            if md.is_dir() {
                walk(&e.path(), total)?;
            } else {
                *total += md.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    for e in fs::read_dir(stage)? {
        let e = e?;
        if e.file_name() != "DEBIAN" && e.metadata()?.is_dir() {
            walk(&e.path(), &mut total)?;
        }
    }
    Ok(total)
}

fn install(stage: &Path, rel: &str, data: &[u8], mode: u32) -> Result<()> {
    let p = stage.join(rel);
    fs::create_dir_all(p.parent().unwrap())?;
    fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// 0755 for every directory, whatever the umask made of them.
fn set_dir_modes(p: &Path) -> Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(p)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            set_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

fn read(p: &Path) -> Result<String> {
    fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

fn output(c: &mut Command) -> Result<String> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!(
            "{c:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vip
Comment: The source is the vip repository; the binary embeds its XDP program.

Files: *
Copyright: the vip authors
License: MIT or Apache-2.0
 vip is dual-licensed under the MIT license and the Apache License, Version 2.0;
 you may use it under the terms of either. On Debian systems the Apache License,
 Version 2.0 is in /usr/share/common-licenses/Apache-2.0.
 .
 Permission is hereby granted, free of charge, to any person obtaining a copy of
 this software and associated documentation files (the \"Software\"), to deal in
 the Software without restriction, including without limitation the rights to
 use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of
 the Software, and to permit persons to whom the Software is furnished to do so,
 subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in all
 copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS
 FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
 COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER
 IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
 CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
";

/// Like dh_installsystemd --no-enable: the unit is registered (so purge cleans up and
/// an administrator's `enable` survives upgrades) but neither enabled nor started on
/// a fresh install, since /etc/vip/vip.toml must be configured first. An upgrade of a
/// running agent is hitless: `systemctl reload vip` makes it re-execute the new binary,
/// which adopts the pinned data plane. Everything is skipped where systemd is not
/// running (containers, chroots).
const POSTINST: &str = r#"#!/bin/sh
set -e

if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]; then
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		if deb-systemd-helper debian-installed vip.service; then
			# This only removes masks created by deb-systemd-helper on removal.
			deb-systemd-helper unmask vip.service >/dev/null || true
			if deb-systemd-helper --quiet was-enabled vip.service; then
				deb-systemd-helper enable vip.service >/dev/null || true
			fi
		fi
		deb-systemd-helper update-state vip.service >/dev/null || true
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ] && systemctl --quiet is-active vip.service; then
			# Upgrade: the agent re-executes the new binary (hitless with bpffs).
			systemctl reload vip.service >/dev/null 2>&1 ||
				echo "vip: reload the agent to run the new version (systemctl reload vip)" >&2
		fi
	fi
	if [ -z "$2" ]; then
		echo "vip: configure /etc/vip/vip.toml, then: systemctl enable --now vip"
		if [ ! -e /etc/vip/auth.key ]; then
			# Not generated here: every peer needs the same key (different ones make
			# each node claim the VIP), so it is made once and copied.
			echo "vip: its group's key: vip keygen /etc/vip/auth.key on one node, then copy that file to every peer"
		fi
	fi
fi

exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e

# Removal stops the agent (it hands its VIPs over and removes what it set up);
# an upgrade keeps it running (see postinst).
if [ "$1" = "remove" ] && [ -d /run/systemd/system ] && command -v deb-systemd-invoke >/dev/null 2>&1; then
	deb-systemd-invoke stop vip.service >/dev/null || true
fi

exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e

if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if command -v deb-systemd-helper >/dev/null 2>&1; then
	if [ "$1" = "remove" ]; then
		deb-systemd-helper mask vip.service >/dev/null || true
	fi
	if [ "$1" = "purge" ]; then
		deb-systemd-helper purge vip.service >/dev/null || true
		deb-systemd-helper unmask vip.service >/dev/null || true
	fi
fi
# The key `vip keygen` writes where the example config looks for it is configuration
# too: purge removes it (and so lets dpkg remove /etc/vip).
if [ "$1" = "purge" ]; then
	rm -f /etc/vip/auth.key
fi

exit 0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_config_is_all_comments_and_the_unit_runs_usr_bin() {
        let c = commented_config("# a\n[node]\nname = \"x\"\n\n  indented = 1\n");
        assert!(c.lines().all(|l| l.trim().is_empty() || l.starts_with('#')));
        assert!(c.contains("# [node]\n# name = \"x\"\n"));
        let u = packaged_unit("# by hand: /usr/local/bin/vip\n[Unit]\nA=1\n[Service]\nExecStart=/usr/local/bin/vip agent\n");
        assert!(u.contains("ExecStart=/usr/bin/vip agent") && !u.contains("/usr/local"));
    }
}
