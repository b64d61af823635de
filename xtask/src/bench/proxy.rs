//! The HTTP part of `cargo xtask bench proxy`: requests per second of `wrk` (keep-alive, a
//! small response) straight to an origin server, through `capagent proxy http` without and
//! with recording (pcapng), and through tinyproxy, on loopback.
//!
//! The origin server runs in this process (one thread per connection, HTTP/1.1 keep-alive,
//! a 13-byte body), so it costs the same in every row. wrk sends absolute-URI requests to
//! the proxies (its Lua `wrk.path`), as HTTP clients do to a forward proxy. The bench only
//! prints: it asserts nothing about timings.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use capagent_testkit::proxy::closed_tcp_port;
use clap::Args;

mod relays;

use super::Guard;
use crate::util::{self, which};

#[derive(Args, Debug, Clone)]
pub struct HttpBenchArgs {
    /// Seconds each wrk run lasts.
    #[arg(long, default_value_t = 5)]
    pub http_duration: u64,
    /// Concurrent wrk connections.
    #[arg(long, default_value_t = 32)]
    pub http_connections: usize,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    pub http_threads: usize,
}

/// One row of the HTTP table.
pub struct HttpRow {
    pub name: &'static str,
    /// Requests per second, or why there is none.
    pub rate: std::result::Result<f64, String>,
    pub note: String,
}

const BODY: &[u8] = b"hello, world\n";

/// The origin: answers every request head with a 200 and BODY; keeps the connection unless
/// the request says `Connection: close`.
fn origin() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            thread::spawn(move || serve(c));
        }
    });
    Ok(addr)
}

fn serve(mut c: TcpStream) {
    let _ = c.set_nodelay(true);
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    let resp = |close: bool| {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{}\r\n",
            BODY.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        r.extend_from_slice(BODY);
        r
    };
    loop {
        // Answer every complete head in the buffer (pipelined ones included).
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let close = head.contains("\r\nconnection: close")
                || head.lines().next().is_some_and(|l| l.ends_with("http/1.0"))
                    && !head.contains("keep-alive");
            buf.drain(..end + 4);
            if c.write_all(&resp(close)).is_err() || close {
                return;
            }
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Runs wrk against `url` (through a proxy when `absolute` gives the URI to request;
/// `https://` URLs too, as `bench tls-mitm` uses it);
/// returns requests per second and a note (errors, non-2xx).
pub fn wrk(
    args: &HttpBenchArgs,
    tmp: &Path,
    url: &str,
    absolute: Option<&str>,
    close: bool,
) -> Result<(f64, String)> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        &args.http_threads.to_string(),
        "-c",
        &args.http_connections.to_string(),
        "-d",
        &format!("{}s", args.http_duration),
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    if let Some(uri) = absolute {
        let script = tmp.join("absolute.lua");
        fs::write(&script, format!("wrk.path = \"{uri}\"\n"))?;
        cmd.arg("-s").arg(&script);
    }
    cmd.arg(url);
    let out = util::run_captured(&mut cmd, Duration::from_secs(args.http_duration + 60))?;
    if !out.success() {
        bail!("wrk failed: {}", out.stderr_tail(5));
    }
    let rate = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {}", out.stdout))?;
    let mut notes = Vec::new();
    for l in out.stdout.lines() {
        let l = l.trim();
        if l.starts_with("Non-2xx") || l.starts_with("Socket errors") {
            notes.push(l.to_string());
        }
        if l.contains("requests in") {
            notes.push(l.to_string());
        }
    }
    Ok((rate, notes.join("; ")))
}

/// The HTTP rows. `capagent`: the release binary (Err: why there is none).
pub fn http(
    args: &HttpBenchArgs,
    capagent: std::result::Result<&Path, &str>,
    tmp: &Path,
) -> Result<Vec<HttpRow>> {
    if which("wrk").is_none() {
        bail!("wrk is not installed (cargo xtask setup installs it)");
    }
    let origin = origin()?;
    let uri = format!("http://{origin}/");
    let mut rows = Vec::new();
    let mut row = |name: &'static str, r: Result<(f64, String)>| {
        match &r {
            Ok((rate, note)) => eprintln!("   {name}: {rate:.0} req/s ({note})"),
            Err(e) => eprintln!("   {name}: {e:#}"),
        }
        rows.push(match r {
            Ok((rate, note)) => HttpRow {
                name,
                rate: Ok(rate),
                note,
            },
            Err(e) => HttpRow {
                name,
                rate: Err(format!("{e:#}")),
                note: String::new(),
            },
        });
    };
    eprintln!("== http: wrk straight to the origin {origin}");
    row("direct", wrk(args, tmp, &uri, None, false));

    for (name, record, close) in [
        ("capagent http (no recording)", false, false),
        ("capagent http (recording pcapng)", true, false),
        ("capagent http (conn. per request)", false, true),
    ] {
        eprintln!("== http: through {name}");
        let r = (|| {
            let bin = capagent.map_err(|e| anyhow::anyhow!("{e}"))?;
            let port = closed_tcp_port();
            let listen = format!("127.0.0.1:{port}");
            let mut cmd = Command::new(bin);
            cmd.args(["proxy", "http", "--listen", &listen]);
            let pcap = tmp.join("http.pcapng");
            if record {
                cmd.arg("-w").arg(&pcap).args(["-o", "/dev/null"]);
            } else {
                cmd.arg("--no-record");
            }
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            let mut g = Guard::of(cmd.spawn().context("cannot start capagent")?);
            g.wait_listening(port, Duration::from_secs(10))?;
            let (rate, mut note) = wrk(args, tmp, &format!("http://{listen}/"), Some(&uri), close)?;
            drop(g);
            if record && let Ok(m) = fs::metadata(&pcap) {
                note.push_str(&format!("; pcapng {} MB", m.len() / 1_000_000));
            }
            Ok((rate, note))
        })();
        row(name, r);
    }

    for (name, close) in [
        ("tinyproxy", false),
        ("tinyproxy (conn. per request)", true),
    ] {
        eprintln!("== http: through {name}");
        let r = (|| {
            if which("tinyproxy").is_none() {
                bail!("tinyproxy is not installed (cargo xtask setup installs it)");
            }
            let port = closed_tcp_port();
            let conf = tmp.join("tinyproxy.conf");
            fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 1024\n\
                     LogLevel Critical\nAllow 127.0.0.1\nDisableViaHeader Yes\n"
                ),
            )?;
            let mut cmd = Command::new("tinyproxy");
            cmd.arg("-d").arg("-c").arg(&conf);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            let mut g = Guard::of(cmd.spawn().context("cannot start tinyproxy")?);
            g.wait_listening(port, Duration::from_secs(10))?;
            wrk(
                args,
                tmp,
                &format!("http://127.0.0.1:{port}/"),
                Some(&uri),
                close,
            )
        })();
        row(name, r);
    }
    Ok(rows)
}

/// Prints the HTTP table with each row's ratio to direct and to tinyproxy.
pub fn print_http(args: &HttpBenchArgs, rows: &[HttpRow]) {
    let rate = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.rate.as_ref().ok().copied())
    };
    let direct = rate("direct");
    let tiny = rate("tinyproxy");
    let tiny_close = rate("tinyproxy (conn. per request)");
    let mut table = vec![crate::row![
        "path",
        "req/s",
        "x direct",
        "x tinyproxy",
        "notes"
    ]];
    for r in rows {
        match &r.rate {
            Ok(v) => {
                let ratio = |base: Option<f64>| {
                    base.filter(|b| *b > 0.0)
                        .map_or("-".to_string(), |b| format!("{:.2}", v / b))
                };
                table.push(crate::row![
                    r.name,
                    format!("{v:.0}"),
                    ratio(direct),
                    ratio(if r.name.contains("conn. per request") {
                        tiny_close
                    } else {
                        tiny
                    }),
                    r.note
                ]);
            }
            Err(e) => table.push(crate::row![r.name, "-", "-", "-", e]),
        }
    }
    super::print_table(
        &format!(
            "HTTP proxy: wrk -t{} -c{} -d{}s, keep-alive, 13-byte responses, loopback",
            args.http_threads, args.http_connections, args.http_duration
        ),
        &table,
        &[1, 2, 3],
        &[
            "x tinyproxy: keep-alive rows against tinyproxy, connection-per-request rows against \
             tinyproxy with a connection per request (tinyproxy closes every client connection \
             after one response: wrk counts those closes as read errors)"
                .to_string(),
            "target: capagent http >= 1.00x tinyproxy".to_string(),
        ],
    );
}

/// `cargo xtask bench proxy` options.
#[derive(Args, Debug, Clone)]
pub struct ProxyBenchArgs {
    /// Use this capagent binary instead of building one (`cargo build --release`).
    #[arg(long)]
    pub capagent: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub core: relays::CoreBenchArgs,
    #[command(flatten)]
    pub http: HttpBenchArgs,
}

/// `cargo xtask bench proxy`: builds capagent (release) and runs the parts.
pub fn proxy(args: ProxyBenchArgs) -> Result<()> {
    let capagent =
        super::capagent_bin(args.capagent.as_ref()).map_err(|e| format!("build failed: {e:#}"));
    // The recordings go to tmpfs: an ext4 /tmp can take less than the forwarder records
    // (0.5 GB/s, 4 Gbit/s, on the build VM).
    let tmp = super::tmpfs_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("capagent-bench-proxy-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    // The forwarder, SOCKS and memory parts, then HTTP.
    relays::core(
        &args.core,
        capagent.as_deref().map_err(String::as_str),
        &tmp,
    )?;
    let rows = args.core.parts.iter().any(|p| p == "http").then(|| {
        http(
            &args.http,
            capagent.as_deref().map_err(String::as_str),
            &tmp,
        )
    });
    let _ = fs::remove_dir_all(&tmp);
    if let Some(rows) = rows {
        print_http(&args.http, &rows?);
    }
    Ok(())
}
