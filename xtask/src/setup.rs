//! `cargo xtask setup`: installs what building and testing capagent needs, idempotently.
//!
//! * the nightly toolchain and its rust-src (aya-build compiles the eBPF crate with
//!   `cargo +nightly -Z build-std=core` for the bpf target);
//! * bpf-linker (the linker for the bpf target);
//! * the Debian packages the integration tests and benchmarks drive (curl, tshark, go, ...), and
//!   libpcap-dev (capagent links libpcap to compile filter expressions);
//! * other OpenSSL versions than Debian's for the `trace --tls` tests: the libssl and
//!   libcrypto that manylinux wheels from PyPI bundle (see [`OPENSSL_WHEELS`]).
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
    // The `requests` client of the TLS interception tests (REQUESTS_CA_BUNDLE).
    ("python3-requests", ""),
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
    let report = [
        nightly()?,
        rust_src()?,
        bpf_linker()?,
        apt_packages()?,
        openssl_wheels()?,
    ];
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

/// OpenSSL builds that are not Debian's, for the `trace --tls` tests (testkit's
/// `wheel_openssl`): the shared libraries bundled in manylinux wheels on PyPI (real OpenSSL
/// builds, of other versions and another compiler setup than Debian's). (OpenSSL version,
/// pinned wheel with its sha256, pip's `--platform` and `--python-version` that select it.)
pub const OPENSSL_WHEELS: &[(&str, &str, &str, &str)] = &[
    // OpenSSL 1.1.1g (the 1.1 API: no SSL_write_ex2).
    (
        "1.1.1g",
        "psycopg2-binary==2.8.6 \
         --hash=sha256:7312e931b90fe14f925729cde58022f5d034241918a5c4f9797cac62f6b3a9dd",
        "manylinux1_x86_64",
        "3.9",
    ),
    // OpenSSL 3.3.1 (SSL_write_ex2, which SSL_write_ex calls since 3.3).
    (
        "3.3.1",
        "psycopg-binary==3.2.3 \
         --hash=sha256:64a607e630d9f4b2797f641884e52b9f8e239d35943f51bef817a384ec1678fe",
        "manylinux_2_17_x86_64",
        "3.12",
    ),
];

/// Where [`openssl_wheels`] puts the libraries: `openssl-wheels/VERSION/` in the cargo
/// target directory (testkit looks there).
fn openssl_wheels_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| util::workspace_root().join("target"))
        .join("openssl-wheels")
}

/// Unpacks the `libssl*`/`libcrypto*` files of the wheel (argv[1]) into argv[2] (flat), and
/// the `libz*` libcrypto 1.1 needs (the wheel's own, renamed by auditwheel).
const UNPACK_PY: &str = r#"
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        base = os.path.basename(n)
        if base.startswith(("libssl", "libcrypto", "libz")) and ".so" in base:
            with open(os.path.join(sys.argv[2], base), "wb") as f:
                f.write(z.read(n))
"#;

/// Downloads each of [`OPENSSL_WHEELS`] with pip (hash-checked) and unpacks its libssl and
/// libcrypto into `openssl-wheels/VERSION/`; skipped for a version already there. When
/// that is impossible (no pip, no registry), writes the reason to
/// `openssl-wheels/UNAVAILABLE` (the tests then skip saying so) and goes on.
fn openssl_wheels() -> Result<String> {
    let root = openssl_wheels_dir();
    let have = |v: &str| {
        std::fs::read_dir(root.join(v)).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libssl"))
        })
    };
    let missing: Vec<&str> = OPENSSL_WHEELS
        .iter()
        .map(|w| w.0)
        .filter(|v| !have(v))
        .collect();
    if missing.is_empty() {
        let _ = std::fs::remove_file(root.join("UNAVAILABLE"));
        return Ok(format!(
            "OpenSSL from wheels: already in {} ({})",
            root.display(),
            OPENSSL_WHEELS
                .iter()
                .map(|w| w.0)
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    match fetch_openssl_wheels(&root, &missing) {
        Ok(()) => {
            let _ = std::fs::remove_file(root.join("UNAVAILABLE"));
            Ok(format!(
                "OpenSSL from wheels: fetched {} into {}",
                missing.join(" "),
                root.display()
            ))
        }
        Err(e) => {
            let why = format!("{e:#}");
            std::fs::create_dir_all(&root)?;
            std::fs::write(root.join("UNAVAILABLE"), &why)?;
            eprintln!("warning: OpenSSL wheels not fetched, their tests will skip: {why}");
            Ok(format!("OpenSSL from wheels: NOT fetched ({why})"))
        }
    }
}

fn fetch_openssl_wheels(root: &std::path::Path, versions: &[&str]) -> Result<()> {
    let python = which("python3").context("python3 not found (pip downloads the wheels)")?;
    if !Command::new(&python)
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        bail!("`python3 -m pip` does not run (pip downloads the wheels)");
    }
    for &(version, req, platform, pyver) in OPENSSL_WHEELS {
        if !versions.contains(&version) {
            continue;
        }
        let tmp = root.join(format!(".{version}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        let dl = tmp.join("download");
        let libs = tmp.join("libs");
        std::fs::create_dir_all(&dl)?;
        std::fs::create_dir_all(&libs)?;
        let reqs = tmp.join("requirements.txt");
        std::fs::write(&reqs, format!("{req}\n"))?;
        run(Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--platform", platform, "--python-version", pyver, "-r"])
            .arg(&reqs)
            .arg("-d")
            .arg(&dl))
        .with_context(|| format!("pip download of the wheel with OpenSSL {version}"))?;
        for wheel in std::fs::read_dir(&dl)?.flatten() {
            run(Command::new(&python)
                .args(["-c", UNPACK_PY])
                .arg(wheel.path())
                .arg(&libs))?;
        }
        let names: Vec<String> = std::fs::read_dir(&libs)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !names.iter().any(|n| n.starts_with("libssl"))
            || !names.iter().any(|n| n.starts_with("libcrypto"))
        {
            bail!("the wheel with OpenSSL {version} holds no libssl/libcrypto: {names:?}");
        }
        let dest = root.join(version);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&libs, &dest)?;
        std::fs::remove_dir_all(&tmp)?;
    }
    Ok(())
}
