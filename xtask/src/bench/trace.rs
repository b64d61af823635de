//! `cargo xtask bench trace`: what tracing costs a traced application, next to strace and
//! bpftrace, on a 64-byte TCP ping-pong and a 1 GiB bulk stream over loopback.
//!
//! The workload is the compiled `rr` program (src/bin/rr.rs); the server side is never
//! traced. The bench only prints: it asserts nothing about timings.
use std::{
    ffi::OsString,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::TracerBenchArgs;
use crate::util::{self, Captured, display, which};

#[derive(Args, Debug, Clone)]
#[command(mut_arg("skip", |a| a.help(
    "Rows to skip (comma-separated): capagent (every capagent row), capagent-pcapng, \
     capagent-stack, strace, bpftrace, pingpong, bulk"
)))]
pub struct TraceBenchArgs {
    /// Round trips of the ping-pong.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Message size of the ping-pong, in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Bytes of the bulk stream.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Bytes per write of the bulk stream.
    #[arg(long, default_value_t = 65536)]
    pub chunk: usize,
    #[command(flatten)]
    pub common: TracerBenchArgs,
}

const TRACE_TARGET: &str = ">= 0.8x, 0 lost";
const STACK_TARGET: &str = ">= 0.5x, 0 lost";
const BULK_TARGET: &str = ">= 0.5x, captured = sent, 0 lost";

/// The bpftrace comparison: print up to 64 payload bytes of each send/recv-type call of the
/// traced command (`cpid`, set by `bpftrace -c`). Written for bpftrace 0.17 (Debian 12):
/// `args->field`, `buf(ptr, len)` and `%r`.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:syscalls:sys_enter_sendto /pid == cpid/ {
  printf("sendto fd=%d len=%d %r\n", args->fd, args->len, buf(args->buff, 64));
}
tracepoint:syscalls:sys_enter_write /pid == cpid/ {
  printf("write fd=%d len=%d %r\n", args->fd, args->count, buf(args->buf, 64));
}
tracepoint:syscalls:sys_enter_recvfrom /pid == cpid/ { @rbuf[tid] = (uint64)args->ubuf; @rcall[tid] = 1; }
tracepoint:syscalls:sys_enter_read /pid == cpid/ { @rbuf[tid] = (uint64)args->buf; @rcall[tid] = 2; }
tracepoint:syscalls:sys_exit_recvfrom, tracepoint:syscalls:sys_exit_read /pid == cpid && @rbuf[tid]/ {
  $b = @rbuf[tid];
  $call = @rcall[tid];
  delete(@rbuf[tid]);
  delete(@rcall[tid]);
  if (args->ret > 0) {
    $n = args->ret < 64 ? args->ret : 64;
    printf("%s ret=%d %r\n", $call == 1 ? "recvfrom" : "read", args->ret, buf($b, $n));
  }
}
END { clear(@rbuf); clear(@rcall); }
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracer {
    Untraced,
    Capagent,
    /// capagent with a pcapng file as its output (bulk stream only).
    CapagentPcapng,
    /// capagent with `--stack` (ping-pong only).
    CapagentStack,
    Strace,
    Bpftrace,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::Untraced => "untraced",
            Tracer::Capagent => "capagent",
            Tracer::CapagentPcapng => "capagent-pcapng",
            Tracer::CapagentStack => "capagent-stack",
            Tracer::Strace => "strace",
            Tracer::Bpftrace => "bpftrace",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    PingPong,
    Bulk,
}

struct Ctx {
    args: TraceBenchArgs,
    rr: PathBuf,
    capagent: std::result::Result<PathBuf, String>,
    tmp: PathBuf,
    /// Where the pcapng row writes its file: /dev/shm (tmpfs, so the disk is not what is
    /// measured) when it exists, else `tmp`.
    pcapng_dir: PathBuf,
    timeout: Duration,
}

impl Ctx {
    fn pcapng_file(&self) -> PathBuf {
        self.pcapng_dir
            .join(format!("capagent-bench-{}.pcapng", std::process::id()))
    }
}

/// One measured run.
struct RunResult {
    /// Round trips per second, or megabits per second for the bulk stream.
    rate: f64,
    /// Extra information for the table (events, lines, bytes captured...).
    notes: Vec<String>,
}

struct Row {
    workload: Workload,
    tracer: Tracer,
    result: std::result::Result<RunResult, String>,
}

pub fn trace(args: TraceBenchArgs) -> Result<()> {
    let skip = |what: &str| args.common.skips(what);
    let root = util::is_root();

    let rr = util::build_bins("xtask", &["rr"], true)?
        .remove("rr")
        .expect("built");
    let capagent = args.common.capagent_bin();
    let tmp = std::env::temp_dir().join(format!("capagent-bench-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    let ctx = Ctx {
        timeout: args.common.timeout(),
        args: args.clone(),
        rr,
        capagent,
        tmp: tmp.clone(),
        pcapng_dir: super::tmpfs_dir().unwrap_or_else(|| tmp.clone()),
    };

    let mut plan = Vec::new();
    if !skip("pingpong") {
        for t in [
            Tracer::Untraced,
            Tracer::Capagent,
            Tracer::CapagentStack,
            Tracer::Strace,
            Tracer::Bpftrace,
        ] {
            plan.push((Workload::PingPong, t));
        }
    }
    if !skip("bulk") {
        plan.push((Workload::Bulk, Tracer::Untraced));
        plan.push((Workload::Bulk, Tracer::Capagent));
        plan.push((Workload::Bulk, Tracer::CapagentPcapng));
    }
    plan.retain(|(_, t)| {
        *t == Tracer::Untraced
            || !(skip(t.name())
                || (matches!(t, Tracer::CapagentPcapng | Tracer::CapagentStack)
                    && skip("capagent")))
    });
    // Rounds: every row runs once per round, so a machine that gets busier or quieter during
    // the bench shifts all rows alike instead of skewing the ratios.
    let runs = ctx.args.common.runs.max(1);
    let mut results: Vec<Vec<std::result::Result<RunResult, String>>> =
        plan.iter().map(|_| Vec::new()).collect();
    for round in 1..=runs {
        for (i, &(workload, tracer)) in plan.iter().enumerate() {
            // A row that failed once is not retried.
            if results[i].iter().any(|r| r.is_err()) {
                continue;
            }
            let result = if !root
                && matches!(
                    tracer,
                    Tracer::Capagent
                        | Tracer::CapagentPcapng
                        | Tracer::CapagentStack
                        | Tracer::Bpftrace
                ) {
                Err("skipped: needs root".to_string())
            } else {
                eprintln!(
                    "== {} / {} (run {round}/{runs}, load {})",
                    workload_name(&ctx.args, workload),
                    tracer.name(),
                    super::loadavg()
                );
                let r = match workload {
                    Workload::PingPong => pingpong(&ctx, tracer),
                    Workload::Bulk => bulk(&ctx, tracer),
                };
                r.map_err(|e| format!("{e:#}"))
            };
            match &result {
                Ok(r) if r.notes.is_empty() => eprintln!("   {}", fmt_rate(workload, r.rate)),
                Ok(r) => eprintln!("   {}; {}", fmt_rate(workload, r.rate), r.notes.join("; ")),
                Err(e) if e.starts_with("skipped") => eprintln!("   {e}"),
                Err(e) => eprintln!("   {} failed: {e}", tracer.name()),
            }
            results[i].push(result);
        }
    }
    let rows: Vec<Row> = plan
        .iter()
        .zip(results)
        .map(|(&(workload, tracer), runs)| Row {
            workload,
            tracer,
            result: super::median_run(runs, |r| r.rate),
        })
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

fn workload_name(args: &TraceBenchArgs, w: Workload) -> String {
    match w {
        Workload::PingPong => format!("ping-pong {}B x{}", args.size, args.count),
        Workload::Bulk => format!("bulk {}", fmt_bytes(args.bytes)),
    }
}

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else {
        format!("{b} B")
    }
}

fn fmt_rate(w: Workload, rate: f64) -> String {
    match w {
        Workload::PingPong => format!("{rate:.0} rt/s"),
        Workload::Bulk => format!("{rate:.0} Mbit/s"),
    }
}

/// `rr --cpu 0` unless `--no-pin`: client and server share CPU 0, tracers run anywhere.
fn pin_args(a: &TraceBenchArgs) -> Vec<String> {
    if a.common.no_pin {
        Vec::new()
    } else {
        vec!["--cpu".into(), "0".into()]
    }
}

/// An `rr` server started for one run, with its port.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    /// `rr GLOBAL... MODE --port 0 EXTRA...`
    fn start(rr: &Path, global: &[String], mode: &str, extra: &[String]) -> Result<Server> {
        let mut cmd = Command::new(rr);
        cmd.args(global)
            .args([mode, "--port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", display(&cmd)))?;
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line)?;
        let port = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["listening"].as_u64())
            .and_then(|p| u16::try_from(p).ok());
        match port {
            Some(port) => Ok(Server { child, port }),
            None => {
                util::kill(&mut child, false);
                let _ = child.wait();
                bail!("rr {mode} did not report its port (got {line:?})")
            }
        }
    }

    /// Lets the server finish after a successful client (which has closed its connection),
    /// killing it if it does not; kills it right away after a failed one.
    fn finish(mut self, client_ok: bool) {
        if !client_ok {
            util::kill(&mut self.child, false);
        }
        let _ = util::wait_timeout(&mut self.child, Duration::from_secs(10), false);
    }
}

/// Wraps the client command line in the tracer's.
fn traced_command(
    ctx: &Ctx,
    tracer: Tracer,
    client: &[OsString],
    snaplen0: bool,
) -> Result<Command> {
    let cmd = match tracer {
        Tracer::Untraced => {
            let mut c = Command::new(&client[0]);
            c.args(&client[1..]);
            c
        }
        Tracer::Capagent => {
            let path = ctx.capagent.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut c = Command::new(path);
            c.arg("trace");
            if snaplen0 {
                c.args(["--snaplen", "0"]);
            }
            c.args(["--format", "json", "-o", "/dev/null", "--"])
                .args(client);
            c
        }
        Tracer::CapagentStack => {
            let path = ctx.capagent.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut c = Command::new(path);
            c.args([
                "trace",
                "--stack",
                "--format",
                "json",
                "-o",
                "/dev/null",
                "--",
            ])
            .args(client);
            c
        }
        Tracer::CapagentPcapng => {
            // The records (text, 64-byte previews) go nowhere; the pcapng file holds the
            // payloads. (`-w -` would mix the traced command's stdout into the file.)
            let path = ctx.capagent.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut c = Command::new(path);
            c.arg("trace");
            if snaplen0 {
                c.args(["--snaplen", "0"]);
            }
            c.arg("-w")
                .arg(ctx.pcapng_file())
                .args(["-o", "/dev/null", "--"])
                .args(client);
            c
        }
        Tracer::Strace => {
            if which("strace").is_none() {
                bail!("strace not found (run `cargo xtask setup`)");
            }
            let mut c = Command::new("strace");
            c.args([
                "-f",
                "-e",
                "trace=network,read,write",
                "-s",
                "64",
                "-o",
                "/dev/null",
            ])
            .args(client);
            c
        }
        Tracer::Bpftrace => {
            if which("bpftrace").is_none() {
                bail!("bpftrace not found (run `cargo xtask setup`)");
            }
            let script = ctx.tmp.join("payloads.bt");
            fs::write(&script, BPFTRACE_SCRIPT)?;
            let line: Vec<String> = client
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            if line.iter().any(|a| a.contains(char::is_whitespace)) {
                bail!("bpftrace -c cannot run a command with spaces in its arguments");
            }
            let mut c = Command::new("bpftrace");
            c.arg("-o")
                .arg(ctx.tmp.join("bpftrace.out"))
                .arg("-c")
                .arg(line.join(" "))
                .arg(&script)
                .env(
                    "BPFTRACE_PERF_RB_PAGES",
                    ctx.args.common.bpftrace_rb_pages.to_string(),
                );
            c
        }
    };
    Ok(cmd)
}

/// The first JSON object on stdout that has `key`.
fn json_with(stdout: &str, key: &str) -> Option<serde_json::Value> {
    stdout.lines().find_map(|l| {
        let l = l.trim();
        if !l.starts_with('{') {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        v.get(key).is_some().then_some(v)
    })
}

fn check(out: &Captured) -> Result<()> {
    if !out.success() {
        bail!("{}", out.stderr_tail(8));
    }
    Ok(())
}

/// Runs the rr `client` command line (mode `mode`) under `tracer`, then finishes `server`
/// (see [`Server::finish`]); checks the run and returns its output with rr's JSON report
/// (the line holding `key`).
fn run_client(
    ctx: &Ctx,
    tracer: Tracer,
    server: Server,
    client: &[OsString],
    snaplen0: bool,
    mode: &str,
    key: &str,
) -> Result<(Captured, serde_json::Value)> {
    let mut cmd = match traced_command(ctx, tracer, client, snaplen0) {
        Ok(c) => c,
        Err(e) => {
            server.finish(false);
            return Err(e);
        }
    };
    let out = util::run_captured(&mut cmd, ctx.timeout);
    server.finish(out.as_ref().is_ok_and(Captured::success));
    let out = out?;
    check(&out)?;
    let report = json_with(&out.stdout, key)
        .with_context(|| format!("no rr {mode} result on stdout: {}", out.stderr_tail(5)))?;
    Ok((out, report))
}

fn pingpong(ctx: &Ctx, tracer: Tracer) -> Result<RunResult> {
    let a = &ctx.args;
    let pin: Vec<String> = pin_args(a);
    let server = Server::start(
        &ctx.rr,
        &pin,
        "server",
        &["--size".into(), a.size.to_string()],
    )?;
    let mut client: Vec<OsString> = vec![ctx.rr.clone().into()];
    client.extend(pin.iter().map(OsString::from));
    client.extend::<Vec<OsString>>(vec![
        "client".into(),
        "--addr".into(),
        format!("127.0.0.1:{}", server.port).into(),
        "--count".into(),
        a.count.to_string().into(),
        "--size".into(),
        a.size.to_string().into(),
    ]);
    let (out, report) = run_client(ctx, tracer, server, &client, false, "client", "rps")?;
    let rate = report["rps"].as_f64().unwrap_or(0.0);
    let mut notes = Vec::new();
    // Per round trip one send and one recv; plus socket, connect and close.
    let expected = 2 * a.count + 3;
    match tracer {
        Tracer::Capagent => notes.push(match parse_events_lost(&out.stderr) {
            Some((events, lost)) => {
                format!("events {events}/{expected} expected (2 per round trip + socket, connect, close), {lost} lost")
            }
            None => format!("events: could not parse the summary ({expected} expected)"),
        }),
        Tracer::CapagentStack => {
            notes.push(match parse_events_lost(&out.stderr) {
                Some((events, lost)) => format!("events {events}/{expected} expected, {lost} lost"),
                None => format!("events: could not parse the summary ({expected} expected)"),
            });
            notes.push(
                out.stderr
                    .lines()
                    .find_map(|l| l.strip_prefix("capagent: stacks: "))
                    .map_or("stacks: no summary line".to_string(), |l| {
                        format!("stacks {l}")
                    }),
            );
        }
        Tracer::Bpftrace => {
            let text = fs::read_to_string(ctx.tmp.join("bpftrace.out")).unwrap_or_default();
            let socket_lines = text
                .lines()
                .filter(|l| l.starts_with("sendto ") || l.starts_with("recvfrom "))
                .count();
            let all_lines = text
                .lines()
                .filter(|l| {
                    ["sendto ", "recvfrom ", "write ", "read "]
                        .iter()
                        .any(|p| l.starts_with(p))
                })
                .count();
            let lost: u64 = text
                .lines()
                .chain(out.stderr.lines())
                .filter_map(parse_bpftrace_lost)
                .sum();
            notes.push(format!(
                "printed {socket_lines}/{} expected sendto/recvfrom lines ({all_lines} with read/write), {lost} lost",
                2 * a.count
            ));
        }
        _ => {}
    }
    Ok(RunResult { rate, notes })
}

fn bulk(ctx: &Ctx, tracer: Tracer) -> Result<RunResult> {
    let a = &ctx.args;
    // Not pinned: the bulk stream measures throughput, which needs both CPUs.
    let server = Server::start(&ctx.rr, &[], "bulk-server", &[])?;
    let client: Vec<OsString> = vec![
        ctx.rr.clone().into(),
        "bulk-client".into(),
        "--addr".into(),
        format!("127.0.0.1:{}", server.port).into(),
        "--bytes".into(),
        a.bytes.to_string().into(),
        "--chunk".into(),
        a.chunk.to_string().into(),
    ];
    let (out, report) = run_client(ctx, tracer, server, &client, true, "bulk-client", "mbps")?;
    let rate = report["mbps"].as_f64().unwrap_or(0.0);
    let mut notes = Vec::new();
    if tracer == Tracer::CapagentPcapng {
        let file = ctx.pcapng_file();
        let size = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let _ = fs::remove_file(&file);
        notes.push(format!("pcapng file {} MiB", size >> 20));
    }
    if matches!(tracer, Tracer::Capagent | Tracer::CapagentPcapng) {
        notes.push(match parse_sent_bytes(&out.stderr) {
            Some(captured) => format!("captured {captured} of {} B sent", a.bytes),
            None => "captured bytes: could not parse the summary".to_string(),
        });
        notes.push(match parse_events_lost(&out.stderr) {
            Some((events, lost)) => format!("{events} events, {lost} lost"),
            None => "events: could not parse the summary".to_string(),
        });
    }
    Ok(RunResult { rate, notes })
}

/// A number token: digits, possibly with `,` or `_` separators and trailing punctuation.
fn number(token: &str) -> Option<u64> {
    let t = token.trim_matches(|c: char| !c.is_ascii_digit());
    if t.is_empty()
        || !t
            .chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == '_')
    {
        return None;
    }
    t.replace([',', '_'], "").parse().ok()
}

/// `N events, M lost` in capagent's summary (the last such line wins).
pub fn parse_events_lost(stderr: &str) -> Option<(u64, u64)> {
    let mut found = None;
    for line in stderr.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for i in 1..words.len() {
            if words[i].trim_end_matches([',', ';', ':']) == "events"
                && let (Some(ev), Some(lost_n), Some(lost_w)) =
                    (number(words[i - 1]), words.get(i + 1), words.get(i + 2))
                && lost_w.starts_with("lost")
                && let Some(lost) = number(lost_n)
            {
                found = Some((ev, lost));
            }
        }
    }
    found
}

/// Bytes as capagent's summary states them: exact (`1073741824 B`) or rounded by a unit
/// (`1.0 GiB`), in which case `exact` is false.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SummaryBytes {
    pub bytes: u64,
    pub exact: bool,
}

impl std::fmt::Display for SummaryBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.exact {
            write!(f, "{} B", self.bytes)
        } else {
            write!(f, "~{} B (rounded in the summary)", self.bytes)
        }
    }
}

/// `1073741824` + `B` / `bytes`, or `1.0` + `KiB`/`MiB`/`GiB`/`TiB` (also kB/MB/GB/TB).
fn amount(value: &str, unit: &str) -> Option<SummaryBytes> {
    let unit = unit.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mult: u64 = match unit {
        "B" | "b" | "bytes" | "byte" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    if let Some(n) = number(value) {
        return Some(SummaryBytes {
            bytes: n.saturating_mul(mult),
            exact: true,
        });
    }
    let v: f64 = value
        .trim_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some(SummaryBytes {
        bytes: (v * mult as f64).round() as u64,
        exact: false,
    })
}

/// The largest `sent N B` / `sent 1.0 GiB` / `sent=N` in capagent's summary (one line per
/// connection); an exact `(N B)` right after a rounded amount wins over it.
pub fn parse_sent_bytes(stderr: &str) -> Option<SummaryBytes> {
    let mut best: Option<SummaryBytes> = None;
    for line in stderr.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for i in 0..words.len() {
            let key = words[i].split('=').next().unwrap_or("");
            if key.trim_matches(|c: char| !c.is_ascii_alphanumeric()) != "sent" {
                continue;
            }
            let found = match words[i].split_once('=') {
                Some((_, v)) => number(v).map(|bytes| SummaryBytes { bytes, exact: true }),
                None => {
                    let (Some(v), Some(u)) = (words.get(i + 1), words.get(i + 2)) else {
                        continue;
                    };
                    let rounded = amount(v, u);
                    // `sent 1.0 GiB (1073741824 B)`
                    let exact = match (words.get(i + 3), words.get(i + 4)) {
                        (Some(v), Some(u)) if v.starts_with('(') => {
                            amount(v, u).filter(|a| a.exact)
                        }
                        _ => None,
                    };
                    exact.or(rounded)
                }
            };
            if let Some(f) = found
                && best.is_none_or(|b| f.bytes > b.bytes)
            {
                best = Some(f);
            }
        }
    }
    best
}

/// bpftrace's `Lost N events` notice.
pub fn parse_bpftrace_lost(line: &str) -> Option<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "Lost")?;
    number(words.get(i + 1)?)
}

fn print_table(args: &TraceBenchArgs, rows: &[Row]) {
    let mut table: Vec<[String; 5]> = vec![[
        "workload".into(),
        "tracer".into(),
        "rate".into(),
        "vs untraced".into(),
        "target".into(),
    ]];
    let mut notes = Vec::new();
    for w in [Workload::PingPong, Workload::Bulk] {
        let base = rows
            .iter()
            .find(|r| r.workload == w && r.tracer == Tracer::Untraced)
            .and_then(|r| r.result.as_ref().ok())
            .map(|r| r.rate);
        for row in rows.iter().filter(|r| r.workload == w) {
            let target = match (w, row.tracer) {
                (_, Tracer::Untraced) => "-",
                (Workload::PingPong, Tracer::Capagent) => TRACE_TARGET,
                (Workload::PingPong, Tracer::CapagentStack) => STACK_TARGET,
                (Workload::Bulk, Tracer::CapagentStack) => "-",
                // The whole payload through JSON: the bytes must all arrive; the rate is
                // printed for information (the traced process is paused while capagent writes).
                (Workload::Bulk, Tracer::Capagent | Tracer::CapagentPcapng) => BULK_TARGET,
                (Workload::PingPong, Tracer::CapagentPcapng) => "-",
                (_, Tracer::Strace) => "~0.15x",
                (_, Tracer::Bpftrace) => "~0.28x",
            };
            let (rate, ratio) = match &row.result {
                Ok(r) => (
                    fmt_rate(w, r.rate),
                    base.filter(|b| *b > 0.0)
                        .map_or("?".to_string(), |b| format!("{:.2}x", r.rate / b)),
                ),
                Err(e) if e.starts_with("skipped") => ("skipped".to_string(), "-".to_string()),
                Err(_) => ("failed (below)".to_string(), "-".to_string()),
            };
            table.push([
                workload_name(args, w),
                row.tracer.name().into(),
                rate,
                ratio,
                target.into(),
            ]);
            let label = format!("{} / {}", workload_name(args, w), row.tracer.name());
            match &row.result {
                Ok(r) if !r.notes.is_empty() => {
                    notes.push(format!("{label}: {}", r.notes.join("; ")))
                }
                Ok(_) => {}
                Err(e) if e.starts_with("skipped") => notes.push(format!("{label}: {e}")),
                Err(e) => notes.push(format!("{label}: {} failed: {e}", row.tracer.name())),
            }
        }
    }
    super::print_aligned(&table);
    if !notes.is_empty() {
        println!();
        for n in notes {
            println!("{n}");
        }
    }
    println!();
    println!(
        "targets: capagent ping-pong {TRACE_TARGET} (events captured = expected), with --stack \
         {STACK_TARGET} (stacks captured vs events in the notes), bulk (JSON or \
         pcapng) {BULK_TARGET}; strace ~0.15x; bpftrace ~0.28x. capagent-pcapng: -w FILE on \
         tmpfs, text records to /dev/null. Timings are printed, never asserted."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_summary() {
        assert_eq!(
            parse_events_lost("capagent: 200123 events, 0 lost\n"),
            Some((200123, 0))
        );
        assert_eq!(
            parse_events_lost("x\ncapagent: 1,234 events, 5 lost (ring full)\n"),
            Some((1234, 5))
        );
        assert_eq!(parse_events_lost("garbage"), None);
        let exact = |bytes| Some(SummaryBytes { bytes, exact: true });
        assert_eq!(
            parse_sent_bytes(
                "capagent: 12 events, 0 lost\n  127.0.0.1:5 -> 127.0.0.1:6 sent 1073741824 B, recv 0 B\n  x sent 10 B\n"
            ),
            exact(1073741824)
        );
        assert_eq!(parse_sent_bytes("conn sent=42 recv=0"), exact(42));
        assert_eq!(parse_sent_bytes("nothing here"), None);
        assert_eq!(
            parse_sent_bytes(
                "capagent: 6 events, 0 lost\nrr[7] fd 3 tcp 127.0.0.1:1 -> 127.0.0.1:2  sent 1.0 GiB  recv 0 B\n"
            ),
            Some(SummaryBytes {
                bytes: 1 << 30,
                exact: false
            })
        );
        assert_eq!(
            parse_sent_bytes("rr[7] fd 3 tcp a -> b  sent 1.0 GiB (1073741825 B)  recv 0 B"),
            exact(1073741825)
        );
        assert_eq!(parse_sent_bytes("sent 78 B  recv 512 B"), exact(78));
        assert_eq!(parse_bpftrace_lost("Lost 17 events"), Some(17));
    }
}
