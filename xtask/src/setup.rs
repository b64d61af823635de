//! `cargo xtask setup`: installs what building and testing capagent needs, idempotently.
//!
//! * the nightly toolchain and its rust-src (aya-build compiles the eBPF crate with
//!   `cargo +nightly -Z build-std=core` for the bpf target);
//! * bpf-linker (the linker for the bpf target);
//! * the Debian packages the integration tests and benchmarks drive (curl, tshark, go, ...), and
//!   libpcap-dev (capagent links libpcap to compile filter expressions).
//!
//! Each step checks first and is skipped when already satisfied.
use std::{
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::util::{self, display, run, which};

pub const BPF_LINKER_VERSION: &str = "0.10.3";

/// Debian package and the command whose presence means it (or an equivalent) is installed
/// (empty: ask dpkg).
const APT_PACKAGES: &[(&str, &str)] = &[
    ("libpcap-dev", ""),
    ("curl", "curl"),
    ("tshark", "tshark"),
    ("tcpdump", "tcpdump"),
    ("dnsutils", "dig"),
    ("socat", "socat"),
    ("iperf3", "iperf3"),
    ("bpftrace", "bpftrace"),
    ("strace", "strace"),
    ("netcat-openbsd", "nc"),
    ("iproute2", "ip"),
    ("iputils-ping", "ping"),
    ("bpftool", "bpftool"),
    ("nftables", "nft"),
    ("python3", "python3"),
    // The WebSocket server of the HTTP proxy tests (run by Debian's /usr/bin/python3).
    ("python3-websockets", ""),
    ("default-jre-headless", "java"),
    // `java Client.java` (single-file programs in the proxy tests) needs the compiler.
    ("default-jdk-headless", "javac"),
    // Peers of `cargo xtask bench proxy` (forward and SOCKS parts).
    ("microsocks", "microsocks"),
    ("haproxy", "haproxy"),
    ("wrk", "wrk"),
    ("tinyproxy", "tinyproxy"),
    // TLS peers of `trace --tls`: the Go test client is built at test time (Debian 12:
    // Go 1.19), gnutls-cli is the GnuTLS client; objdump checks the RETs capagent finds in Go.
    ("golang-go", "go"),
    ("gnutls-bin", "gnutls-cli"),
    ("binutils", "objdump"),
    // certutil: `capagent ca install --nss` (NSS databases of Chrome and Firefox).
    ("libnss3-tools", "certutil"),
];

/// debconf answers that keep the installation non-interactive.
const DEBCONF_PRESEED: &[(&str, &str)] = &[
    (
        "tshark",
        "wireshark-common wireshark-common/install-setuid boolean false\n",
    ),
    ("iperf3", "iperf3 iperf3/start_daemon boolean false\n"),
];

pub fn setup() -> Result<()> {
    let report = [nightly()?, rust_src()?, bpf_linker()?, apt_packages()?];
    eprintln!("setup:");
    for line in &report {
        eprintln!("  {line}");
    }
    Ok(())
}

fn rustup() -> Result<Command> {
    if which("rustup").is_none() {
        bail!("rustup not found in PATH: install Rust with rustup (https://rustup.rs) first");
    }
    Ok(Command::new("rustup"))
}

fn nightly() -> Result<String> {
    let list = util::output(rustup()?.args(["toolchain", "list"]))?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        return Ok("nightly toolchain: already installed".into());
    }
    run(rustup()?.args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    Ok("nightly toolchain: installed".into())
}

fn rust_src() -> Result<String> {
    let installed = util::output(rustup()?.args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        return Ok("rust-src (nightly): already installed".into());
    }
    run(rustup()?.args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    Ok("rust-src (nightly): installed".into())
}

/// The version `bpf-linker --version` reports, if bpf-linker is found in PATH or in
/// ~/.cargo/bin.
fn bpf_linker_version() -> Option<String> {
    let mut candidates: Vec<_> = which("bpf-linker").into_iter().collect();
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo").into())
    }) {
        candidates.push(std::path::Path::new(&home).join("bin/bpf-linker"));
    }
    candidates.into_iter().find_map(|path| {
        let out = Command::new(&path).arg("--version").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
}

fn bpf_linker() -> Result<String> {
    let want = BPF_LINKER_VERSION;
    let before = bpf_linker_version();
    if let Some(v) = &before
        && v.split_whitespace().any(|w| w == want)
    {
        return Ok(format!("bpf-linker: already installed ({v})"));
    }
    let mut cmd = util::cargo();
    cmd.args(["install", &format!("bpf-linker@{want}"), "--locked"]);
    if before.is_some() {
        // Replace the other version.
        cmd.arg("--force");
    }
    run(&mut cmd)?;
    let after = bpf_linker_version().unwrap_or_default();
    if which("bpf-linker").is_none() {
        eprintln!(
            "warning: bpf-linker is installed but not in PATH; add ~/.cargo/bin to PATH (or \
             `source ~/.cargo/env`) or capagent builds without its eBPF programs"
        );
    }
    Ok(format!("bpf-linker: installed {after}"))
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && o.stdout == b"installed")
        .unwrap_or(false)
}

/// Runs `args` as root: directly when root, else through sudo when there is one.
fn as_root(args: &[&str]) -> Result<Command> {
    if util::is_root() {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]);
        Ok(cmd)
    } else if which("sudo").is_some() {
        let mut cmd = Command::new("sudo");
        // sudo resets the environment; keep the variable that makes apt non-interactive.
        cmd.arg("DEBIAN_FRONTEND=noninteractive").args(args);
        Ok(cmd)
    } else {
        bail!("installing Debian packages needs root: run `cargo xtask setup` as root")
    }
}

fn apt_packages() -> Result<String> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(pkg, command)| {
            // netcat-traditional also provides `nc`, without the flags the tests use.
            let present = if *pkg == "netcat-openbsd" || command.is_empty() {
                dpkg_installed(pkg)
            } else {
                which(command).is_some() || dpkg_installed(pkg)
            };
            !present
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = APT_PACKAGES.iter().map(|(p, _)| *p).collect();
        return Ok(format!("apt packages: all present ({})", names.join(" ")));
    }
    if which("apt-get").is_none() {
        bail!(
            "missing packages {} and no apt-get: install them with your package manager",
            missing.join(" ")
        );
    }
    for (pkg, answers) in DEBCONF_PRESEED {
        if missing.contains(pkg) && which("debconf-set-selections").is_some() {
            let mut cmd = as_root(&["debconf-set-selections"])?;
            eprintln!("+ {} <<< {}", display(&cmd), answers.trim());
            let mut child = cmd.stdin(Stdio::piped()).spawn()?;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(answers.as_bytes())?;
            let status = child.wait()?;
            if !status.success() {
                bail!("debconf-set-selections failed ({status})");
            }
        }
    }
    run(as_root(&["apt-get", "update"])?.env("DEBIAN_FRONTEND", "noninteractive"))?;
    let mut install = vec!["apt-get", "install", "-y", "--no-install-recommends"];
    install.extend(&missing);
    run(as_root(&install)?.env("DEBIAN_FRONTEND", "noninteractive"))
        .context("installing Debian packages")?;
    Ok(format!("apt packages: installed {}", missing.join(" ")))
}
