//! `cargo xtask bench tls`: what `capagent trace --tls` costs a TLS application, next to a
//! bpftrace script that prints the plaintext of `SSL_write`/`SSL_read`, on a request/response
//! workload over loopback: 64-byte messages over ONE TLS connection, client and server in
//! Python (its `ssl` module is OpenSSL: `_ssl` calls `SSL_write_ex`/`SSL_read_ex`).
//!
//! Only the client is traced (the uprobes, attached to the library file, trap in the server
//! too; the programs return at once there). The client times its round trips itself (after
//! the handshake, so interpreter start-up and attaching do not count) and prints
//! `{"rps": ...}`. The certificates are made for the run (capagent-testkit's `Certs`). The
//! bench only prints: it asserts nothing about timings.
use std::{
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use capagent_testkit::{Certs, python};
use clap::Args;

use super::{
    TracerBenchArgs,
    trace::{parse_bpftrace_lost, parse_events_lost},
};
use crate::util::{self, Captured, which};

#[derive(Args, Debug, Clone)]
#[command(
    mut_arg("runs", |a| a.help(
        "Runs per row; the row shows the run with the median rate per CPU-second"
    )),
    mut_arg("skip", |a| a.help("Rows to skip (comma-separated): capagent, bpftrace")),
    mut_arg("timeout", |a| a.default_value("300")),
)]
pub struct TlsBenchArgs {
    /// Round trips over the one connection.
    #[arg(long, default_value_t = 50_000)]
    pub count: u64,
    /// Message size, in bytes (both ways).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[command(flatten)]
    pub common: TracerBenchArgs,
}

const TLS_TARGET: &str = ">= 0.6x, ahead of bpftrace, 0 lost";

/// The server: `tls_server.py CERT KEY SIZE CPU` (CPU `-`: not pinned). Prints
/// `{"listening": PORT}`, accepts one connection, then echoes every SIZE-byte message until
/// the client closes, and prints `{"cpu": SECONDS}`: its CPU time after the handshake.
const SERVER_PY: &str = r#"
import json, os, socket, ssl, sys, time
cert, key, size, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if cpu != "-":
    os.sched_setaffinity(0, {int(cpu)})
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
print(json.dumps({"listening": ls.getsockname()[1]}), flush=True)
c, _ = ls.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s = ctx.wrap_socket(c, server_side=True)
t = time.process_time()
while True:
    buf = b""
    while len(buf) < size:
        d = s.recv(size - len(buf))
        if not d:
            print(json.dumps({"cpu": time.process_time() - t}), flush=True)
            sys.exit(0)
        buf += d
    s.sendall(buf)
"#;

/// The client: `tls_client.py PORT CAFILE COUNT SIZE CPU`. Connects, completes the handshake,
/// then times COUNT round trips (write SIZE bytes, read SIZE bytes) and prints
/// `{"rps": ..., "cpu": SECONDS, "count": ...}` (its CPU time over the round trips: the
/// uprobes' programs run in the traced thread, so their cost is in it).
const CLIENT_PY: &str = r#"
import json, os, socket, ssl, sys, time
port, cafile, count, size, cpu = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if cpu != "-":
    os.sched_setaffinity(0, {int(cpu)})
ctx = ssl.create_default_context(cafile=cafile)
raw = socket.create_connection(("127.0.0.1", port))
raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s = ctx.wrap_socket(raw, server_hostname="localhost")
msg = bytes((i * 7 + 1) % 256 for i in range(size))
t = time.perf_counter()
c = time.process_time()
for _ in range(count):
    s.sendall(msg)
    n = 0
    while n < size:
        d = s.recv(size - n)
        if not d:
            sys.exit("server closed")
        n += len(d)
el = time.perf_counter() - t
cpu = time.process_time() - c
print(json.dumps({"rps": count / el, "cpu": cpu, "count": count}), flush=True)
s.close()
"#;

/// The bpftrace comparison (bpftrace 0.17, Debian 12): print up to 64 plaintext bytes of each
/// `SSL_write`/`SSL_write_ex` (at entry) and `SSL_read`/`SSL_read_ex` (at return, from the
/// buffer saved at entry; `_ex` returns 1 and the length through its 4th argument) of the
/// traced command. `LIBSSL` is replaced with the path of the libssl the client loads. (Not
/// `func`: bpftrace resolves it when it prints, from `/proc/PID/exe`, and aborts when the
/// client has exited by then.)
const BPFTRACE_SCRIPT: &str = r#"
uprobe:LIBSSL:SSL_write /pid == cpid/ {
  $n = arg2 < 64 ? arg2 : 64;
  printf("SSL_write len=%d %r\n", arg2, buf(arg1, $n));
}
uprobe:LIBSSL:SSL_write_ex /pid == cpid/ {
  $n = arg2 < 64 ? arg2 : 64;
  printf("SSL_write_ex len=%d %r\n", arg2, buf(arg1, $n));
}
uprobe:LIBSSL:SSL_read /pid == cpid/ { @rbuf[tid] = arg1; }
uretprobe:LIBSSL:SSL_read /pid == cpid && @rbuf[tid]/ {
  $b = @rbuf[tid];
  delete(@rbuf[tid]);
  if ((int64)retval > 0) {
    $n = retval < 64 ? retval : 64;
    printf("SSL_read ret=%d %r\n", retval, buf($b, $n));
  }
}
uprobe:LIBSSL:SSL_read_ex /pid == cpid/ { @xbuf[tid] = arg1; @xlen[tid] = arg3; }
uretprobe:LIBSSL:SSL_read_ex /pid == cpid && @xbuf[tid]/ {
  $b = @xbuf[tid];
  $p = @xlen[tid];
  delete(@xbuf[tid]);
  delete(@xlen[tid]);
  if (retval == 1) {
    $r = *(uint64 *)$p;
    $n = $r < 64 ? $r : 64;
    printf("SSL_read_ex ret=%d %r\n", $r, buf($b, $n));
  }
}
END { clear(@rbuf); clear(@xbuf); clear(@xlen); }
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracer {
    Untraced,
    Capagent,
    Bpftrace,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::Untraced => "untraced",
            Tracer::Capagent => "capagent --tls",
            Tracer::Bpftrace => "bpftrace",
        }
    }
}

struct Ctx {
    args: TlsBenchArgs,
    capagent: std::result::Result<PathBuf, String>,
    certs: Certs,
    tmp: PathBuf,
    /// Where capagent writes its JSON records: /dev/shm when it exists (the disk is not what
    /// is measured), else `tmp`.
    out_dir: PathBuf,
    timeout: Duration,
}

/// One measured run.
struct RunResult {
    /// Round trips per second (wall clock).
    rate: f64,
    /// Round trips per CPU second of client and server together: on a machine shared with
    /// other work the wall-clock rate mostly measures the share of CPU 0 the workload got;
    /// this measures what a round trip costs.
    cpu_rate: f64,
    /// CPU time per round trip of the client and of the server, in microseconds: the uprobes
    /// are attached to the library file for every process (the programs keep to the traced
    /// ones), so the untraced server pays their trap too.
    client_us: f64,
    server_us: f64,
    /// Plaintext events the tracer reported (TLS records, printed lines) and lost; `None`
    /// for the untraced run.
    events: Option<Events>,
}

struct Events {
    captured: u64,
    lost: u64,
    /// What stands in the table instead of the counts (capagent without TLS records).
    instead: Option<String>,
    notes: Vec<String>,
}

pub fn tls(args: TlsBenchArgs) -> Result<()> {
    let skip = |what: &str| args.common.skips(what);
    let root = util::is_root();
    let capagent = args.common.capagent_bin();
    let tmp = std::env::temp_dir().join(format!("capagent-bench-tls-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    let ctx = Ctx {
        timeout: args.common.timeout(),
        args: args.clone(),
        capagent,
        certs: Certs::localhost(),
        out_dir: super::tmpfs_dir().unwrap_or_else(|| tmp.clone()),
        tmp: tmp.clone(),
    };
    fs::write(tmp.join("tls_server.py"), SERVER_PY)?;
    fs::write(tmp.join("tls_client.py"), CLIENT_PY)?;

    let mut plan = vec![Tracer::Untraced];
    for t in [Tracer::Capagent, Tracer::Bpftrace] {
        let key = if t == Tracer::Capagent {
            "capagent"
        } else {
            "bpftrace"
        };
        if !skip(key) {
            plan.push(t);
        }
    }
    // Rounds: every row runs once per round (see `bench trace`).
    let runs = ctx.args.common.runs.max(1);
    let mut results: Vec<Vec<std::result::Result<RunResult, String>>> =
        plan.iter().map(|_| Vec::new()).collect();
    for round in 1..=runs {
        for (i, &tracer) in plan.iter().enumerate() {
            if results[i].iter().any(|r| r.is_err()) {
                continue;
            }
            let result = if !root && tracer != Tracer::Untraced {
                Err("skipped: needs root".to_string())
            } else {
                eprintln!(
                    "== tls {}B x{} / {} (run {round}/{runs}, load {})",
                    ctx.args.size,
                    ctx.args.count,
                    tracer.name(),
                    super::loadavg()
                );
                run(&ctx, tracer).map_err(|e| format!("{e:#}"))
            };
            match &result {
                Ok(r) => eprintln!(
                    "   {:.0} rt/s, {:.0} rt per CPU-second (client {:.1} us, server {:.1} us)",
                    r.rate, r.cpu_rate, r.client_us, r.server_us
                ),
                Err(e) => eprintln!("   {e}"),
            }
            results[i].push(result);
        }
    }
    let rows: Vec<(Tracer, std::result::Result<RunResult, String>)> = plan
        .iter()
        .zip(results)
        .map(|(&t, runs)| (t, super::median_run(runs, |r| r.cpu_rate)))
        .collect();
    let _ = fs::remove_dir_all(&tmp);
    print_table(&ctx.args, &rows);
    println!(
        "{runs} run(s) per row, median shown; 1-minute load average now {} (other work on the \
         machine makes the ratios noisy).",
        super::loadavg()
    );
    Ok(())
}

/// The Python server, started for one run, with its port.
struct Server {
    guard: super::Guard,
    port: u16,
}

impl Server {
    fn start(ctx: &Ctx) -> Result<Server> {
        let mut cmd = Command::new(python());
        cmd.arg(ctx.tmp.join("tls_server.py"))
            .arg(&ctx.certs.cert)
            .arg(&ctx.certs.key)
            .arg(ctx.args.size.to_string())
            .arg(cpu(&ctx.args))
            .stdout(Stdio::piped());
        let mut guard = super::Guard::spawn(&mut cmd)?;
        let mut line = String::new();
        BufReader::new(guard.child.stdout.as_mut().expect("piped")).read_line(&mut line)?;
        let port = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["listening"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("the TLS server did not report its port (got {line:?})"))?;
        Ok(Server { guard, port })
    }
}

impl Server {
    /// After the client: a server whose client succeeded has seen it close and exits by
    /// itself, printing its CPU time (returned); otherwise (or when it does not exit within
    /// 10 s) it is killed.
    fn finish(self, client_ok: bool) -> Result<f64> {
        let mut guard = self.guard;
        if !client_ok {
            return Ok(0.0);
        }
        let (st, timed_out) = util::wait_timeout(&mut guard.child, Duration::from_secs(10), true)?;
        if timed_out || !st.is_some_and(|s| s.success()) {
            bail!("the TLS server did not finish cleanly ({st:?})");
        }
        let mut rest = String::new();
        std::io::Read::read_to_string(guard.child.stdout.as_mut().expect("piped"), &mut rest)?;
        rest.lines()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["cpu"].as_f64())
            .with_context(|| format!("the TLS server reported no CPU time (got {rest:?})"))
    }
}

/// `0` (pinned to CPU 0) or `-`.
fn cpu(a: &TlsBenchArgs) -> &'static str {
    if a.common.no_pin { "-" } else { "0" }
}

/// The path of the libssl Python's `ssl` module loads (from its own `/proc/self/maps`).
fn libssl_path() -> Result<String> {
    let out = Command::new(python())
        .args([
            "-c",
            "import ssl\n\
             print(next(l.split()[-1] for l in open('/proc/self/maps') if '/libssl' in l))",
        ])
        .output()
        .context("cannot run python3")?;
    if !out.status.success() {
        bail!(
            "python3 loads no libssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run(ctx: &Ctx, tracer: Tracer) -> Result<RunResult> {
    let a = &ctx.args;
    let server = Server::start(ctx)?;
    let client: Vec<OsString> = vec![
        python().into(),
        ctx.tmp.join("tls_client.py").into(),
        server.port.to_string().into(),
        ctx.certs.ca.clone().into(),
        a.count.to_string().into(),
        a.size.to_string().into(),
        cpu(a).into(),
    ];
    let records = ctx
        .out_dir
        .join(format!("capagent-bench-tls-{}.jsonl", std::process::id()));
    let bpf_out = ctx.tmp.join("bpftrace.out");
    let mut cmd = match tracer {
        Tracer::Untraced => {
            let mut c = Command::new(&client[0]);
            c.args(&client[1..]);
            c
        }
        Tracer::Capagent => {
            let path = ctx.capagent.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut c = Command::new(path);
            c.args(["trace", "--tls", "--format", "json", "-o"])
                .arg(&records)
                .arg("--")
                .args(&client);
            c
        }
        Tracer::Bpftrace => {
            if which("bpftrace").is_none() {
                bail!("bpftrace not found (run `cargo xtask setup`)");
            }
            let script = ctx.tmp.join("ssl.bt");
            fs::write(&script, BPFTRACE_SCRIPT.replace("LIBSSL", &libssl_path()?))?;
            let line: Vec<String> = client
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            if line.iter().any(|a| a.contains(char::is_whitespace)) {
                bail!("bpftrace -c cannot run a command with spaces in its arguments");
            }
            let mut c = Command::new("bpftrace");
            c.arg("-o")
                .arg(&bpf_out)
                .arg("-c")
                .arg(line.join(" "))
                .arg(&script)
                .env(
                    "BPFTRACE_PERF_RB_PAGES",
                    a.common.bpftrace_rb_pages.to_string(),
                );
            c
        }
    };
    let out = util::run_captured(&mut cmd, ctx.timeout);
    let client_ok = out.as_ref().is_ok_and(Captured::success);
    let server_cpu = server.finish(client_ok);
    let out = out?;
    if !out.success() {
        let _ = fs::remove_file(&records);
        bail!("{}", out.stderr_tail(8));
    }
    let (rate, client_cpu) = report(&out)?;
    let server_cpu = server_cpu?;
    let cpu = client_cpu + server_cpu;
    let cpu_rate = if cpu > 0.0 { a.count as f64 / cpu } else { 0.0 };
    let expected = 2 * a.count;
    let events = match tracer {
        Tracer::Untraced => None,
        Tracer::Capagent => {
            let text = fs::read_to_string(&records).unwrap_or_default();
            let _ = fs::remove_file(&records);
            Some(capagent_events(&text, &out.stderr, expected))
        }
        Tracer::Bpftrace => {
            let text = fs::read_to_string(&bpf_out).unwrap_or_default();
            let lines = text.lines().filter(|l| l.starts_with("SSL_")).count() as u64;
            let lost: u64 = text
                .lines()
                .chain(out.stderr.lines())
                .filter_map(parse_bpftrace_lost)
                .sum();
            Some(Events {
                captured: lines,
                lost,
                instead: None,
                notes: vec![format!(
                    "{lines}/{expected} expected SSL_write*/SSL_read* lines, {lost} lost"
                )],
            })
        }
    };
    Ok(RunResult {
        rate,
        cpu_rate,
        client_us: client_cpu * 1e6 / a.count as f64,
        server_us: server_cpu * 1e6 / a.count as f64,
        events,
    })
}

/// The client's `{"rps": ..., "cpu": ...}` line: (round trips per second, CPU seconds).
fn report(out: &Captured) -> Result<(f64, f64)> {
    out.stdout
        .lines()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l.trim()).ok()?;
            Some((v["rps"].as_f64()?, v["cpu"].as_f64()?))
        })
        .with_context(|| format!("no client result on stdout: {}", out.stderr_tail(5)))
}

/// capagent's TLS records (JSON lines with a `tls` object naming the library: plaintext, not
/// ciphertext marks) and what its summary says.
fn capagent_events(records: &str, stderr: &str, expected: u64) -> Events {
    let mut tls = 0u64;
    let mut bytes = 0u64;
    for l in records.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v["tls"]["lib"].is_string() {
            tls += 1;
            bytes += v["captured"].as_u64().unwrap_or(0);
        }
    }
    let (events, lost) = parse_events_lost(stderr).unwrap_or((0, 0));
    let summary = format!("summary: {events} events, {lost} lost");
    if tls == 0 {
        return Events {
            captured: 0,
            lost,
            instead: Some("n/a (no TLS records)".to_string()),
            notes: vec![format!(
                "n/a: no TLS records in its output (--tls not working?); the rate is that \
                 of tracing the syscalls only; {summary}"
            )],
        };
    }
    Events {
        captured: tls,
        lost,
        instead: None,
        notes: vec![format!(
            "{tls}/{expected} expected TLS records ({bytes} plaintext bytes), {summary}"
        )],
    }
}

fn print_table(args: &TlsBenchArgs, rows: &[(Tracer, std::result::Result<RunResult, String>)]) {
    let mut table = vec![crate::row![
        "workload",
        "tracer",
        "rt/s",
        "rt per CPU-s",
        "vs untraced",
        "events captured/expected",
        "lost",
        "target"
    ]];
    let workload = format!("TLS rr {}B x{}", args.size, args.count);
    let base = rows
        .iter()
        .find(|(t, _)| *t == Tracer::Untraced)
        .and_then(|(_, r)| r.as_ref().ok())
        .map(|r| r.cpu_rate);
    let expected = 2 * args.count;
    let mut notes = Vec::new();
    for (tracer, result) in rows {
        let target = match tracer {
            Tracer::Untraced => "-",
            Tracer::Capagent => TLS_TARGET,
            Tracer::Bpftrace => "-",
        };
        let label = format!("{workload} / {}", tracer.name());
        match result {
            Ok(r) => {
                let ratio = base
                    .filter(|b| *b > 0.0)
                    .map_or("?".to_string(), |b| format!("{:.2}x", r.cpu_rate / b));
                let (events, lost) = match &r.events {
                    None => ("-".to_string(), "-".to_string()),
                    Some(e) => (
                        e.instead
                            .clone()
                            .unwrap_or_else(|| format!("{}/{expected}", e.captured)),
                        e.lost.to_string(),
                    ),
                };
                table.push(crate::row![
                    workload,
                    tracer.name(),
                    format!("{:.0}", r.rate),
                    format!("{:.0}", r.cpu_rate),
                    ratio,
                    events,
                    lost,
                    target
                ]);
                notes.push(format!(
                    "{label}: CPU per round trip: client {:.1} us, server {:.1} us",
                    r.client_us, r.server_us
                ));
                if let Some(e) = &r.events {
                    for n in &e.notes {
                        notes.push(format!("{label}: {n}"));
                    }
                }
            }
            Err(e) => {
                let what = if e.starts_with("skipped") {
                    "skipped"
                } else {
                    "failed (below)"
                };
                table.push(crate::row![
                    workload,
                    tracer.name(),
                    what,
                    "-",
                    "-",
                    "-",
                    "-",
                    target
                ]);
                notes.push(format!("{label}: {e}"));
            }
        }
    }
    super::print_table("", &table, &[2, 3, 4, 6], &[]);
    if !notes.is_empty() {
        println!();
        for n in notes {
            println!("{n}");
        }
    }
    println!();
    println!(
        "target: capagent --tls {TLS_TARGET} (TLS records = 2 per round trip). Client and \
         server are Python (OpenSSL, SSL_write_ex/SSL_read_ex), both pinned to CPU 0; only \
         the client is traced, but the uprobes (capagent's and bpftrace's) trap in the \
         server too. rt per CPU-s: round trips per CPU second of client and server \
         together (what the ratio compares; the wall-clock rt/s depends on how much of CPU 0 \
         the run got). Timings are printed, never asserted."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tls_records() {
        let recs = concat!(
            r#"{"type":"data","syscall":"SSL_write_ex","captured":64,"tls":{"lib":"openssl","fn":"SSL_write_ex"}}"#,
            "\n",
            r#"{"type":"data","syscall":"sendto","captured":90,"tls":{"ciphertext":true}}"#,
            "\n",
            r#"{"type":"data","syscall":"SSL_read_ex","captured":64,"tls":{"lib":"openssl","fn":"SSL_read_ex"}}"#,
            "\n",
            r#"{"type":"sock","syscall":"connect"}"#,
            "\n"
        );
        let e = capagent_events(recs, "capagent: 4 events, 0 lost\n", 2);
        assert_eq!((e.captured, e.lost, e.instead), (2, 0, None));
        assert!(e.notes[0].starts_with("2/2 expected TLS records (128 plaintext bytes)"));
        let e = capagent_events(
            r#"{"type":"sock","syscall":"connect"}"#,
            "capagent: 1 events, 3 lost\n",
            2,
        );
        assert_eq!(e.instead.as_deref(), Some("n/a (no TLS records)"));
        assert_eq!(e.lost, 3);
    }
}
