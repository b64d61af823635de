//! `cargo xtask bench tls-mitm`: TLS interception next to mitmproxy, on loopback.
//!
//! - HTTPS requests per second (wrk, a 12-byte response) straight to haproxy (terminating
//!   TLS and answering itself with `http-request return`), through `capagent proxy reverse
//!   --tls` (recording off, and on: pcapng) and through `mitmdump --mode reverse:https://...`
//!   (off, and on: `-w` flows), keep-alive and with `Connection: close` (a TLS handshake on
//!   both legs per request). Both proxies verify haproxy's certificate (a test CA).
//! - One TLS stream of `--stream-mib` MiB (socat with OpenSSL both ends, client to server)
//!   straight and through `capagent proxy forward --tls --no-record` (relay only).
//!
//! mitmdump is mitmproxy 11.0.2 from PyPI, installed with pip into a venv under target/
//! on first use (or `--mitmdump PATH`). The bench prints ratios and the targets; it
//! asserts nothing about timings.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use capagent_testkit::Certs;
use capagent_testkit::proxy::closed_tcp_port;
use clap::Args;

use super::proxy::{HttpBenchArgs, wrk};
use super::{Guard, loadavg};
use crate::util::{self, which};

/// The mitmproxy release the issue measured.
const MITMPROXY: &str = "mitmproxy==11.0.2";

#[derive(Args, Debug, Clone)]
pub struct TlsMitmBenchArgs {
    /// Use this capagent binary instead of building one (`cargo build --release`).
    #[arg(long)]
    pub capagent: Option<PathBuf>,
    /// Use this mitmdump instead of target/mitmproxy-venv's (made on first use).
    #[arg(long)]
    pub mitmdump: Option<PathBuf>,
    /// MiB of the TLS stream (0: no stream rows).
    #[arg(long, default_value_t = 1024)]
    pub stream_mib: u64,
    /// Rows to skip (comma-separated): direct, capagent, mitmdump, stream.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    #[command(flatten)]
    pub http: HttpBenchArgs,
}

/// One row: a rate (requests or MB per second) and a note, or why there is none.
struct Row {
    name: String,
    rate: std::result::Result<(f64, String), String>,
}

/// The proxies of the request rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Capagent { record: bool },
    Mitmdump { record: bool },
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct (haproxy)",
            Via::Capagent { record: false } => "capagent reverse --tls (no recording)",
            Via::Capagent { record: true } => "capagent reverse --tls (recording pcapng)",
            Via::Mitmdump { record: false } => "mitmdump reverse (no recording)",
            Via::Mitmdump { record: true } => "mitmdump reverse (recording -w)",
        }
    }

    fn skip_key(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Capagent { .. } => "capagent",
            Via::Mitmdump { .. } => "mitmdump",
        }
    }
}

/// `cargo xtask bench tls-mitm`.
pub fn tls_mitm(args: TlsMitmBenchArgs) -> Result<()> {
    for tool in ["wrk", "haproxy", "socat"] {
        if which(tool).is_none() {
            bail!("{tool} is not installed (cargo xtask setup installs it)");
        }
    }
    let capagent = super::capagent_bin(args.capagent.as_ref());
    let tmp = std::env::temp_dir().join(format!("capagent-bench-tls-mitm-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    let result = run(&args, capagent, &tmp);
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn run(args: &TlsMitmBenchArgs, capagent: Result<PathBuf>, tmp: &Path) -> Result<()> {
    let skips = |k: &str| args.skip.iter().any(|s| s == k);
    let capagent = capagent.map_err(|e| format!("build failed: {e:#}"));
    let load_before = loadavg();
    let certs = Certs::localhost();
    let mitmdump = if skips("mitmdump") {
        Err("skipped".to_string())
    } else {
        mitmdump(args.mitmdump.as_ref()).map_err(|e| format!("{e:#}"))
    };

    // haproxy: TLS with the test CA's leaf, answering every request itself.
    let pem = tmp.join("haproxy.pem");
    fs::write(
        &pem,
        [fs::read(&certs.cert)?, fs::read(&certs.key)?].concat(),
    )?;
    let hport = closed_tcp_port();
    let conf = tmp.join("haproxy.cfg");
    fs::write(
        &conf,
        format!(
            "global\n  nbthread 1\n  maxconn 8192\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind 127.0.0.1:{hport} ssl crt {} alpn http/1.1\n  \
             http-request return status 200 content-type text/plain string \"hello, world\"\n",
            pem.display()
        ),
    )?;
    let mut haproxy = Guard::spawn(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    haproxy.wait_listening(hport, Duration::from_secs(10))?;
    let upstream = format!("127.0.0.1:{hport}");

    let mut rows = Vec::new();
    for close in [false, true] {
        for via in [
            Via::Direct,
            Via::Capagent { record: false },
            Via::Capagent { record: true },
            Via::Mitmdump { record: false },
            Via::Mitmdump { record: true },
        ] {
            let name = format!(
                "{}{}",
                via.name(),
                if close { ", conn. per request" } else { "" }
            );
            eprintln!("== tls-mitm: {name}");
            let r = if skips(via.skip_key()) {
                Err("skipped".to_string())
            } else {
                requests(
                    args, tmp, via, close, &upstream, &certs, &capagent, &mitmdump,
                )
                .map_err(|e| format!("{e:#}"))
            };
            match &r {
                Ok((rate, note)) => eprintln!("   {rate:.0} req/s ({note})"),
                Err(e) => eprintln!("   {e}"),
            }
            rows.push(Row { name, rate: r });
        }
    }
    drop(haproxy);

    let mut stream_rows = Vec::new();
    if args.stream_mib > 0 && !skips("stream") {
        for through in [false, true] {
            let name = if through {
                "capagent forward --tls --no-record"
            } else {
                "direct (socat to socat)"
            };
            eprintln!("== tls-mitm: {} MiB stream, {name}", args.stream_mib);
            let r = stream(args, tmp, &certs, through.then_some(&capagent))
                .map_err(|e| format!("{e:#}"));
            match &r {
                Ok((rate, note)) => eprintln!("   {rate:.0} MB/s ({note})"),
                Err(e) => eprintln!("   {e}"),
            }
            stream_rows.push(Row {
                name: name.to_string(),
                rate: r,
            });
        }
    }
    print(args, &rows, &stream_rows, &load_before);
    Ok(())
}

/// One wrk run over `via`.
#[allow(clippy::too_many_arguments)]
fn requests(
    args: &TlsMitmBenchArgs,
    tmp: &Path,
    via: Via,
    close: bool,
    upstream: &str,
    certs: &Certs,
    capagent: &std::result::Result<PathBuf, String>,
    mitmdump: &std::result::Result<PathBuf, String>,
) -> Result<(f64, String)> {
    let port = closed_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let out = tmp.join("records");
    let mut guard = match via {
        Via::Direct => None,
        Via::Capagent { record } => {
            let bin = capagent.as_ref().map_err(|e| anyhow!("{e}"))?;
            let mut cmd = Command::new(bin);
            cmd.args(["proxy", "reverse", "--listen", &listen, "--to", upstream])
                .arg("--tls")
                .arg("--ca-dir")
                .arg(tmp.join("ca"))
                .arg("--upstream-ca")
                .arg(&certs.ca);
            if record {
                cmd.arg("-w").arg(&out).args(["-o", "/dev/null"]);
            } else {
                cmd.arg("--no-record");
            }
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            Some(Guard::spawn(&mut cmd)?)
        }
        Via::Mitmdump { record } => {
            let bin = mitmdump.as_ref().map_err(|e| anyhow!("{e}"))?;
            let mut cmd = Command::new(bin);
            cmd.arg("--mode")
                .arg(format!("reverse:https://{upstream}/"))
                .args(["--listen-host", "127.0.0.1", "--listen-port"])
                .arg(port.to_string())
                .arg("--set")
                .arg(format!("confdir={}", tmp.join("mitmproxy").display()))
                .arg("--set")
                .arg(format!(
                    "ssl_verify_upstream_trusted_ca={}",
                    certs.ca.display()
                ))
                .arg("-q");
            if record {
                cmd.arg("-w").arg(&out);
            }
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            Some(Guard::spawn(&mut cmd)?)
        }
    };
    if let Some(g) = &mut guard {
        g.wait_listening(port, Duration::from_secs(60))?;
    }
    let url = match via {
        Via::Direct => format!("https://{upstream}/"),
        _ => format!("https://{listen}/"),
    };
    let (rate, mut note) = wrk(&args.http, tmp, &url, None, close)?;
    drop(guard);
    if let Ok(m) = fs::metadata(&out) {
        note.push_str(&format!("; recorded {} MB", m.len() / 1_000_000));
        let _ = fs::remove_file(&out);
    }
    Ok((rate, note))
}

/// One TLS stream of `--stream-mib` MiB from a socat client to a socat server (OpenSSL both
/// ends), straight or through `capagent proxy forward --tls --no-record`; MB/s from the
/// client's start to the server's exit (it has read everything).
fn stream(
    args: &TlsMitmBenchArgs,
    tmp: &Path,
    certs: &Certs,
    capagent: Option<&std::result::Result<PathBuf, String>>,
) -> Result<(f64, String)> {
    let bytes = args.stream_mib * 1024 * 1024;
    let sport = closed_tcp_port();
    let mut server = Guard::spawn(
        Command::new("socat")
            .args(["-u", "-b", "262144"])
            .arg(format!(
                "OPENSSL-LISTEN:{sport},bind=127.0.0.1,reuseaddr,cert={},key={},verify=0",
                certs.cert.display(),
                certs.key.display()
            ))
            .arg("OPEN:/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    server.wait_listening(sport, Duration::from_secs(10))?;
    let mut proxy = None;
    let port = match capagent {
        None => sport,
        Some(bin) => {
            let bin = bin.as_ref().map_err(|e| anyhow!("{e}"))?;
            let port = closed_tcp_port();
            let mut cmd = Command::new(bin);
            cmd.args(["proxy", "forward", "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--to")
                .arg(format!("127.0.0.1:{sport}"))
                .arg("--tls")
                .arg("--ca-dir")
                .arg(tmp.join("ca"))
                .arg("--upstream-ca")
                .arg(&certs.ca)
                .arg("--no-record")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut g = Guard::spawn(&mut cmd)?;
            g.wait_listening(port, Duration::from_secs(10))?;
            proxy = Some(g);
            port
        }
    };
    let start = Instant::now();
    let mut client = Command::new("socat");
    client
        .args(["-u", "-b", "262144"])
        .arg(format!("OPEN:/dev/zero,readbytes={bytes}"))
        .arg(format!("OPENSSL:127.0.0.1:{port},verify=0,no-sni=1"));
    let out = util::run_captured(&mut client, Duration::from_secs(600))?;
    if !out.success() {
        bail!("socat client failed: {}", out.stderr_tail(5));
    }
    let (status, timed_out) =
        util::wait_timeout(&mut server.child, Duration::from_secs(600), true)?;
    let secs = start.elapsed().as_secs_f64();
    if timed_out || !status.is_some_and(|s| s.success()) {
        bail!("socat server: {status:?}");
    }
    drop(proxy);
    Ok((
        bytes as f64 / secs / 1e6,
        format!("{} MiB in {secs:.2} s", args.stream_mib),
    ))
}

/// mitmdump: `given`, else target/mitmproxy-venv/bin/mitmdump, made (python3 -m venv, pip
/// install mitmproxy==11.0.2 from PyPI) when missing.
fn mitmdump(given: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let venv = util::workspace_root().join("target").join("mitmproxy-venv");
    let bin = venv.join("bin").join("mitmdump");
    if !bin.exists() {
        eprintln!(
            "== tls-mitm: installing {MITMPROXY} into {}",
            venv.display()
        );
        util::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("python3 -m venv")?;
        util::run(Command::new(venv.join("bin").join("pip")).args(["install", "-q", MITMPROXY]))
            .with_context(|| format!("pip install {MITMPROXY}"))?;
    }
    Ok(bin)
}

/// The rate of the row named `name`.
fn rate_of(rows: &[Row], name: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.name == name)
        .and_then(|r| r.rate.as_ref().ok().map(|x| x.0))
}

fn print(args: &TlsMitmBenchArgs, rows: &[Row], stream_rows: &[Row], load_before: &str) {
    let ratio = |v: f64, base: Option<f64>| {
        base.filter(|b| *b > 0.0)
            .map_or("-".to_string(), |b| format!("{:.2}", v / b))
    };
    let mut table = vec![crate::row![
        "path",
        "req/s",
        "x direct",
        "x mitmdump",
        "notes"
    ]];
    for r in rows {
        let close = r.name.ends_with("conn. per request");
        let suffix = if close { ", conn. per request" } else { "" };
        let direct = rate_of(rows, &format!("{}{suffix}", Via::Direct.name()));
        // Against mitmdump recording the same way.
        let mitm = if r.name.contains("(recording") {
            Via::Mitmdump { record: true }
        } else {
            Via::Mitmdump { record: false }
        };
        let mitm = rate_of(rows, &format!("{}{suffix}", mitm.name()));
        match &r.rate {
            Ok((v, note)) => table.push(crate::row![
                r.name,
                format!("{v:.0}"),
                ratio(*v, direct),
                ratio(*v, mitm),
                note
            ]),
            Err(e) => table.push(crate::row![r.name, "-", "-", "-", e]),
        }
    }
    let target = |name: &str, base: &str, want: f64| -> String {
        match (rate_of(rows, name), rate_of(rows, base)) {
            (Some(v), Some(b)) if b > 0.0 => {
                let x = v / b;
                format!("{x:.1}x ({})", if x >= want { "met" } else { "MISSED" })
            }
            _ => "not measured".to_string(),
        }
    };
    let rec = Via::Capagent { record: true }.name();
    let mrec = Via::Mitmdump { record: true }.name();
    let close = ", conn. per request";
    super::print_table(
        &format!(
            "TLS interception, HTTPS requests: wrk -t{} -c{} -d{}s, 12-byte responses, loopback \
             (load average {load_before} before, {} after)",
            args.http.http_threads,
            args.http.http_connections,
            args.http.http_duration,
            loadavg()
        ),
        &table,
        &[1, 2, 3],
        &[
            "x mitmdump: against mitmdump recording the same way (on/off), same connection mode"
                .to_string(),
            format!(
                "target: capagent >= 10x mitmdump keep-alive, recording on: {}",
                target(rec, mrec, 10.0)
            ),
            format!(
                "target: capagent >= 5x mitmdump, a connection per request, recording on: {}",
                target(&format!("{rec}{close}"), &format!("{mrec}{close}"), 5.0)
            ),
        ],
    );
    if stream_rows.is_empty() {
        return;
    }
    let direct = rate_of(stream_rows, "direct (socat to socat)");
    let mut table = vec![crate::row!["path", "MB/s", "x direct", "notes"]];
    for r in stream_rows {
        match &r.rate {
            Ok((v, note)) => {
                table.push(crate::row![
                    r.name,
                    format!("{v:.0}"),
                    ratio(*v, direct),
                    note
                ]);
            }
            Err(e) => table.push(crate::row![r.name, "-", "-", e]),
        }
    }
    let relay = rate_of(stream_rows, "capagent forward --tls --no-record");
    let verdict = match (relay, direct) {
        (Some(v), Some(d)) if d > 0.0 => {
            let x = v / d;
            format!("{x:.2}x ({})", if x >= 0.3 { "met" } else { "MISSED" })
        }
        _ => "not measured".to_string(),
    };
    super::print_table(
        &format!(
            "TLS stream: {} MiB, socat (OpenSSL) client to socat server, loopback",
            args.stream_mib
        ),
        &table,
        &[1, 2],
        &[format!(
            "target: relay-only throughput >= 0.3x direct: {verdict}"
        )],
    );
}
