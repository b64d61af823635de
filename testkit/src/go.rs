//! The Go HTTPS client of the TLS tests (tests/go/tlsclient), built at test time with the
//! Debian `golang-go` toolchain that `cargo xtask setup` installs: normally and stripped
//! (`-ldflags=-s -w`: no `.symtab`, no DWARF; `capagent trace --tls` then finds
//! `crypto/tls` through `.gopclntab`).
//!
//! The build never touches the network (standard library only, `GOPROXY=off`,
//! `GOTOOLCHAIN=local`) nor the user's Go setup (`GOENV=off`; `GOCACHE` and `GOPATH` under
//! the cargo target directory, kept between runs so a rebuild takes a fraction of a second).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{TempDir, run_output};

/// How to build a Go program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoBuild {
    /// `go build`: with the ELF symbol table.
    Normal,
    /// `go build -ldflags='-s -w'`: no symbol table, no DWARF.
    Stripped,
    /// `go build -buildmode=pie` (as distributions build Go programs: the function table
    /// lands in `.data.rel.ro.gopclntab`).
    Pie,
    /// `go build -buildmode=pie -ldflags='-s -w'`.
    StrippedPie,
}

/// The source directory of the Go test client (`tlsclient -ca CA.pem [-data BODY] [-n N]
/// URL`: GETs URL, or POSTs BODY, N times over HTTP/1.1 and prints the response bodies).
pub fn go_tls_client_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/go/tlsclient")
}

/// Where the Go build cache and GOPATH live: `go` under the cargo target directory.
fn go_home() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("go")
}

/// Builds the Go test client into `dir` (file `tlsclient`, `tlsclient-stripped`,
/// `tlsclient-pie` or `tlsclient-stripped-pie`) and returns its path; panics with go's
/// output when the build fails.
pub fn go_tls_client(dir: &TempDir, build: GoBuild) -> String {
    let out = dir.join(match build {
        GoBuild::Normal => "tlsclient",
        GoBuild::Stripped => "tlsclient-stripped",
        GoBuild::Pie => "tlsclient-pie",
        GoBuild::StrippedPie => "tlsclient-stripped-pie",
    });
    let home = go_home();
    let mut cmd = Command::new("go");
    cmd.current_dir(go_tls_client_source())
        .arg("build")
        .args(match build {
            GoBuild::Normal => &[][..],
            GoBuild::Stripped => &["-ldflags=-s -w"][..],
            GoBuild::Pie => &["-buildmode=pie"][..],
            GoBuild::StrippedPie => &["-buildmode=pie", "-ldflags=-s -w"][..],
        })
        .arg("-o")
        .arg(&out)
        .arg(".")
        .env("GOENV", "off")
        .env("GOCACHE", home.join("cache"))
        .env("GOPATH", home.join("path"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOWORK", "off")
        // A static binary: no C toolchain needed, nothing from libc in the way.
        .env("CGO_ENABLED", "0");
    run_output("go build", cmd, Duration::from_secs(300));
    let path = out.to_str().unwrap().to_string();
    assert!(Path::new(&path).is_file(), "go build made no {path}");
    path
}
