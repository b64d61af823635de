//! The forwarder and SOCKS parts of `cargo xtask bench proxy`, on loopback:
//!
//! - **Throughput** (iperf3, one TCP stream, client to server): direct; through
//!   `capagent proxy forward` recording to pcapng (`-w -` into a file: every byte relayed is
//!   written) and with `--no-record`; through socat and haproxy (mode tcp, default settings).
//!   Each row runs `--iperf-runs` times, rows interleaved, and shows the median.
//! - **SOCKS5 connections per second**: client threads in this process each loop on
//!   connect, greeting, CONNECT to a local server that answers 2 bytes, read them, close;
//!   through `capagent proxy socks` (recording off and to pcapng) and microsocks, all
//!   running during a round and taking 1-second turns in rotating order.
//! - **Memory**: RSS of the proxy holding `--rss-conns` relayed connections (each with a
//!   round trip done), next to haproxy's and socat's (all its processes).
//!
//! The bench only prints: it asserts nothing about timings.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use capagent_testkit::proxy::closed_tcp_port;
use clap::Args;

use crate::util::which;
use crate::{
    bench::{Guard, cpu_secs, loadavg, machine_cpu, median, print_table},
    row,
};

#[derive(Args, Debug, Clone)]
pub struct CoreBenchArgs {
    /// Seconds each iperf3 run lasts.
    #[arg(long, default_value_t = 5)]
    pub iperf_secs: u64,
    /// iperf3 runs per row (the median is shown).
    #[arg(long, default_value_t = 3)]
    pub iperf_runs: usize,
    /// One-second turns each proxy gets per SOCKS5 connection-rate round (turns of the
    /// proxies interleaved). With 5, rounds of the same proxy against itself varied by
    /// about 5%; with 10, by about 3%.
    #[arg(long, default_value_t = 10)]
    pub socks_secs: u64,
    /// SOCKS5 connection-rate rounds (the median is shown).
    #[arg(long, default_value_t = 3)]
    pub socks_runs: usize,
    /// Client threads of the SOCKS5 connection-rate runs.
    #[arg(long, default_value_t = 8)]
    pub socks_clients: usize,
    /// Relayed connections held open for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    pub rss_conns: usize,
    /// Parts to run, of throughput, socks, memory, http (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,socks,memory,http"
    )]
    pub parts: Vec<String>,
}

/// Runs one iperf3 client for `secs`; returns received bits per second.
fn iperf(port: u16, secs: u64) -> Result<f64> {
    let out = Command::new("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .stdin(Stdio::null())
        .output()
        .context("cannot run iperf3")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 output is not JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no sum_received in iperf3's report")
}

/// A way to relay to `target` listening on `port`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Relay {
    Direct,
    ForwardRecord,
    ForwardNoRecord,
    Socat,
    Haproxy,
}

impl Relay {
    fn name(self) -> &'static str {
        match self {
            Relay::Direct => "direct",
            Relay::ForwardRecord => "capagent forward -w (pcapng)",
            Relay::ForwardNoRecord => "capagent forward --no-record",
            Relay::Socat => "socat",
            Relay::Haproxy => "haproxy (mode tcp)",
        }
    }
}

/// What a relay process needs: capagent, and a scratch directory.
struct Env<'a> {
    capagent: std::result::Result<&'a Path, &'a str>,
    tmp: &'a Path,
}

/// Starts `relay` on `port` towards `target`; None for direct. The pcapng of a recording
/// run goes to `tmp/forward.pcapng`.
fn start_relay(env: &Env, relay: Relay, port: u16, target: SocketAddr) -> Result<Option<Guard>> {
    let listen = format!("127.0.0.1:{port}");
    let mut g = match relay {
        Relay::Direct => return Ok(None),
        Relay::ForwardRecord | Relay::ForwardNoRecord => {
            let bin = env.capagent.map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut cmd = Command::new(bin);
            cmd.args([
                "proxy",
                "forward",
                "--listen",
                &listen,
                "--to",
                &target.to_string(),
            ])
            .stderr(Stdio::null());
            if relay == Relay::ForwardRecord {
                // pcapng only, on stdout, into a file.
                let f = fs::File::create(env.tmp.join("forward.pcapng"))?;
                cmd.args(["-w", "-"]).stdout(f);
            } else {
                cmd.arg("--no-record").stdout(Stdio::null());
            }
            Guard::spawn(&mut cmd)?
        }
        Relay::Socat => {
            which("socat").context("socat is not installed (cargo xtask setup)")?;
            Guard::spawn(
                Command::new("socat")
                    .args([
                        &format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"),
                        &format!("TCP:{target}"),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?
        }
        Relay::Haproxy => {
            which("haproxy").context("haproxy is not installed (cargo xtask setup)")?;
            let cfg = env.tmp.join(format!("haproxy-{port}.cfg"));
            fs::write(
                &cfg,
                format!(
                    "global\n    maxconn 4096\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\nfrontend f\n    bind {listen}\n    default_backend b\nbackend b\n    server s1 {target}\n"
                ),
            )?;
            Guard::spawn(
                Command::new("haproxy")
                    .arg("-f")
                    .arg(&cfg)
                    .arg("-db")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?
        }
    };
    g.wait_listening(port, Duration::from_secs(15))?;
    Ok(Some(g))
}

struct ThroughputRow {
    relay: Relay,
    gbps: std::result::Result<f64, String>,
    /// Bytes recorded per run (recording row).
    recorded: Option<u64>,
}

fn throughput(args: &CoreBenchArgs, env: &Env) -> Result<Vec<ThroughputRow>> {
    which("iperf3").context("iperf3 is not installed (cargo xtask setup)")?;
    let iperf_port = closed_tcp_port();
    let mut server = Guard::spawn(
        Command::new("iperf3")
            .args(["-s", "-B", "127.0.0.1", "-p", &iperf_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    server.wait_listening(iperf_port, Duration::from_secs(15))?;
    let target: SocketAddr = format!("127.0.0.1:{iperf_port}").parse()?;
    let relays = [
        Relay::Direct,
        Relay::ForwardRecord,
        Relay::ForwardNoRecord,
        Relay::Socat,
        Relay::Haproxy,
    ];
    let mut samples: Vec<std::result::Result<Vec<f64>, String>> =
        relays.iter().map(|_| Ok(Vec::new())).collect();
    let mut recorded: Option<u64> = None;
    for run in 0..args.iperf_runs {
        for (i, &relay) in relays.iter().enumerate() {
            let Ok(vals) = &mut samples[i] else { continue };
            eprintln!(
                "bench: iperf3 {} (run {}/{})",
                relay.name(),
                run + 1,
                args.iperf_runs
            );
            let port = if relay == Relay::Direct {
                iperf_port
            } else {
                closed_tcp_port()
            };
            let outcome = (|| -> Result<f64> {
                let guard = start_relay(env, relay, port, target)?;
                let bps = iperf(port, args.iperf_secs)?;
                match (guard, relay) {
                    // capagent must stop cleanly (its records written out).
                    (Some(g), Relay::ForwardRecord | Relay::ForwardNoRecord) => g.stop()?,
                    (g, _) => drop(g),
                }
                Ok(bps)
            })();
            match outcome {
                Ok(bps) => vals.push(bps / 1e9),
                Err(e) => samples[i] = Err(format!("{e:#}")),
            }
            let pcap = env.tmp.join("forward.pcapng");
            if let Ok(m) = fs::metadata(&pcap) {
                recorded = Some(m.len());
                let _ = fs::remove_file(&pcap);
            }
        }
    }
    drop(server);
    Ok(relays
        .iter()
        .zip(samples)
        .map(|(&relay, s)| ThroughputRow {
            relay,
            gbps: s.and_then(|mut v| {
                if v.is_empty() {
                    Err("no run".into())
                } else {
                    Ok(median(&mut v))
                }
            }),
            recorded: if relay == Relay::ForwardRecord {
                recorded
            } else {
                None
            },
        })
        .collect())
}

/// A server answering every connection with 2 bytes, then closing.
fn ok_server() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let _ = c.write_all(b"ok");
        }
    });
    Ok(addr)
}

/// One SOCKS5 CONNECT through `proxy` to `target`, answered with "ok".
fn socks5_once(proxy: SocketAddr, target: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&[5, 1, 0])?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m)?;
    if m != [5, 0] {
        return Err(std::io::Error::other("method refused"));
    }
    let SocketAddr::V4(t) = target else {
        return Err(std::io::Error::other("IPv4 target expected"));
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&t.ip().octets());
    req.extend_from_slice(&t.port().to_be_bytes());
    s.write_all(&req)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    if reply[1] != 0 {
        return Err(std::io::Error::other(format!("SOCKS reply {}", reply[1])));
    }
    let mut ok = [0u8; 2];
    s.read_exact(&mut ok)?;
    if &ok != b"ok" {
        return Err(std::io::Error::other("bad answer"));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Socks {
    CapagentNoRecord,
    CapagentRecord,
    Microsocks,
}

impl Socks {
    fn name(self) -> &'static str {
        match self {
            Socks::CapagentNoRecord => "capagent socks --no-record",
            Socks::CapagentRecord => "capagent socks -w (pcapng)",
            Socks::Microsocks => "microsocks",
        }
    }
}

struct RateRow {
    name: &'static str,
    rate: std::result::Result<Rates, String>,
}

/// What a proxy's rounds measured.
struct Rates {
    /// Connections per second (median of the rounds).
    median: f64,
    /// Failed attempts, all rounds.
    failed: u64,
    /// Each round's connections per second.
    rounds: Vec<f64>,
    /// The proxy's CPU time per connection, µs (median).
    cpu_us: f64,
    /// The proxy's CPU time over the turns' time (median).
    share: f64,
    /// The bench's own CPU time (clients and answering server) per connection, µs (median).
    bench_us: f64,
    /// The machine's idle time over its CPU time during the turns (median).
    idle: f64,
}

fn socks_rates(args: &CoreBenchArgs, env: &Env) -> Vec<RateRow> {
    let kinds = [
        Socks::CapagentNoRecord,
        Socks::CapagentRecord,
        Socks::Microsocks,
    ];
    // Each round starts every proxy, then runs the clients against them in turns of one
    // second, the order rotating from turn to turn, for `--socks-secs` turns each: a change
    // of the machine's load during a round hits every proxy alike (rounds of one 5 s run per
    // proxy, one after the other, let a load change decide a round's ratio).
    let mut samples: Vec<std::result::Result<Vec<RateSample>, String>> =
        kinds.iter().map(|_| Ok(Vec::new())).collect();
    for round in 0..args.socks_runs {
        eprintln!(
            "bench: SOCKS5 connections per second, round {}/{} ({} turns of 1 s per proxy)",
            round + 1,
            args.socks_runs,
            args.socks_secs
        );
        let mut running: Vec<Option<SocksRun>> = kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                samples[i].as_ref().ok()?;
                match SocksRun::start(env, kind) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        samples[i] = Err(format!("{e:#}"));
                        None
                    }
                }
            })
            .collect();
        for turn in 0..args.socks_secs.max(1) as usize {
            for k in 0..kinds.len() {
                let i = (round + turn + k) % kinds.len();
                let Some(r) = &mut running[i] else { continue };
                if let Err(e) = r.turn(args.socks_clients, Duration::from_secs(1)) {
                    samples[i] = Err(format!("{e:#}"));
                    running[i] = None;
                }
            }
        }
        for (i, r) in running.into_iter().enumerate() {
            let Some(r) = r else { continue };
            match r.finish() {
                Ok(x) => {
                    if let Ok(v) = &mut samples[i] {
                        v.push(x)
                    }
                }
                Err(e) => samples[i] = Err(format!("{e:#}")),
            }
        }
    }
    kinds
        .iter()
        .zip(samples)
        .map(|(kind, s)| RateRow {
            name: kind.name(),
            rate: s.and_then(|v| {
                if v.is_empty() {
                    return Err("no run".into());
                }
                let rounds: Vec<f64> = v.iter().map(|x| x.rate).collect();
                let med =
                    |f: fn(&RateSample) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
                Ok(Rates {
                    median: median(&mut rounds.clone()),
                    failed: v.iter().map(|x| x.failed).sum(),
                    rounds,
                    cpu_us: med(|x| x.cpu_us),
                    share: med(|x| x.share),
                    bench_us: med(|x| x.bench_us),
                    idle: med(|x| x.idle),
                })
            }),
        })
        .collect()
}

/// One SOCKS round of a proxy (fields as in [`Rates`]).
struct RateSample {
    rate: f64,
    failed: u64,
    cpu_us: f64,
    share: f64,
    bench_us: f64,
    idle: f64,
}

/// A SOCKS proxy of one round, with its target server, and what its turns measured.
struct SocksRun {
    kind: Socks,
    guard: Guard,
    proxy: SocketAddr,
    target: SocketAddr,
    done: u64,
    failed: u64,
    secs: f64,
    cpu: f64,
    /// The bench process's CPU time (clients, answering servers), s.
    bench_cpu: f64,
    /// The machine's idle and total CPU time, s.
    idle: f64,
    total: f64,
    /// The recording's file, deleted at the end.
    file: Option<std::path::PathBuf>,
}

impl SocksRun {
    fn start(env: &Env, kind: Socks) -> Result<SocksRun> {
        let target = ok_server()?;
        let port = closed_tcp_port();
        let listen = format!("127.0.0.1:{port}");
        let mut file = None;
        let mut guard = match kind {
            Socks::CapagentNoRecord | Socks::CapagentRecord => {
                let bin = env.capagent.map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut cmd = Command::new(bin);
                cmd.args(["proxy", "socks", "--listen", &listen])
                    .stderr(Stdio::null());
                if kind == Socks::CapagentRecord {
                    file = Some(env.tmp.join("socks.pcapng"));
                    let f = fs::File::create(env.tmp.join("socks.pcapng"))?;
                    cmd.args(["-w", "-"]).stdout(f);
                } else {
                    cmd.arg("--no-record").stdout(Stdio::null());
                }
                Guard::spawn(&mut cmd)?
            }
            Socks::Microsocks => {
                which("microsocks").context("microsocks is not installed (cargo xtask setup)")?;
                Guard::spawn(
                    Command::new("microsocks")
                        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null()),
                )?
            }
        };
        guard.wait_listening(port, Duration::from_secs(15))?;
        let proxy: SocketAddr = listen.parse()?;
        socks5_once(proxy, target).context("a first SOCKS5 CONNECT failed")?;
        Ok(SocksRun {
            kind,
            guard,
            proxy,
            target,
            done: 0,
            failed: 0,
            secs: 0.0,
            cpu: 0.0,
            bench_cpu: 0.0,
            idle: 0.0,
            total: 0.0,
            file,
        })
    }

    /// `clients` threads loop on SOCKS5 connections through the proxy for `dur`.
    fn turn(&mut self, clients: usize, dur: Duration) -> Result<()> {
        let (proxy, target) = (self.proxy, self.target);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let cpu0 = cpu_secs(self.guard.pid())?;
        let bench0 = cpu_secs(std::process::id())?;
        let (idle0, total0) = machine_cpu()?;
        let start = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match socks5_once(proxy, target) {
                            Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        self.secs += start.elapsed().as_secs_f64();
        self.cpu += cpu_secs(self.guard.pid())? - cpu0;
        self.bench_cpu += cpu_secs(std::process::id())? - bench0;
        let (idle1, total1) = machine_cpu()?;
        self.idle += idle1 - idle0;
        self.total += total1 - total0;
        self.done += done.load(Ordering::Relaxed);
        self.failed += failed.load(Ordering::Relaxed);
        Ok(())
    }

    /// Stops the proxy; connections per second, failed attempts, CPU µs per connection, CPU
    /// share.
    fn finish(self) -> Result<RateSample> {
        match self.kind {
            Socks::Microsocks => drop(self.guard),
            _ => self.guard.stop()?,
        }
        if let Some(f) = &self.file {
            let _ = fs::remove_file(f);
        }
        let per_conn = |secs: f64| secs * 1e6 / self.done.max(1) as f64;
        Ok(RateSample {
            rate: self.done as f64 / self.secs.max(1e-9),
            failed: self.failed,
            cpu_us: per_conn(self.cpu),
            share: self.cpu / self.secs.max(1e-9),
            bench_us: per_conn(self.bench_cpu),
            idle: self.idle / self.total.max(1e-9),
        })
    }
}

/// Resident memory of `pid` and its descendants, in KiB.
fn rss_tree_kib(pid: u32) -> u64 {
    let mut total = 0;
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let status = fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        for task in fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    total
}

/// Raises this process's open-file limit to its hard limit (the memory run holds thousands
/// of sockets; children inherit it).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

struct MemRow {
    name: &'static str,
    /// (KiB idle, KiB with the connections).
    kib: std::result::Result<(u64, u64), String>,
}

/// An echo server: one thread per connection.
fn echo_server() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut buf = [0u8; 512];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                })
                .ok();
        }
    });
    Ok(addr)
}

fn memory(args: &CoreBenchArgs, env: &Env) -> Vec<MemRow> {
    raise_nofile();
    [
        Relay::ForwardRecord,
        Relay::ForwardNoRecord,
        Relay::Haproxy,
        Relay::Socat,
    ]
    .into_iter()
    .map(|relay| {
        eprintln!(
            "bench: memory at {} connections, {}",
            args.rss_conns,
            relay.name()
        );
        MemRow {
            name: relay.name(),
            kib: memory_of(args, env, relay).map_err(|e| format!("{e:#}")),
        }
    })
    .collect()
}

fn memory_of(args: &CoreBenchArgs, env: &Env, relay: Relay) -> Result<(u64, u64)> {
    let target = echo_server()?;
    let port = closed_tcp_port();
    let guard = start_relay(env, relay, port, target)?.expect("a relay");
    thread::sleep(Duration::from_millis(200));
    let idle = rss_tree_kib(guard.pid());
    let mut conns = Vec::with_capacity(args.rss_conns);
    for i in 0..args.rss_conns {
        let mut s =
            TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connection {i}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let msg = format!("hello {i:05}");
        s.write_all(msg.as_bytes())?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)
            .with_context(|| format!("echo on connection {i}"))?;
        conns.push(s);
    }
    thread::sleep(Duration::from_millis(300));
    let busy = rss_tree_kib(guard.pid());
    drop(conns);
    match relay {
        Relay::ForwardRecord | Relay::ForwardNoRecord => guard.stop()?,
        _ => drop(guard),
    }
    let _ = fs::remove_file(env.tmp.join("forward.pcapng"));
    Ok((idle, busy))
}

/// Runs the forwarder and SOCKS parts and prints their tables.
pub fn core(
    args: &CoreBenchArgs,
    capagent: std::result::Result<&Path, &str>,
    tmp: &Path,
) -> Result<()> {
    let env = Env { capagent, tmp };
    for p in &args.parts {
        if !["throughput", "socks", "memory", "http"].contains(&p.as_str()) {
            bail!("--parts: unknown part {p:?} (throughput, socks, memory, http)");
        }
    }
    let on = |p: &str| args.parts.iter().any(|x| x == p);
    let tput = if on("throughput") {
        throughput(args, &env)?
    } else {
        Vec::new()
    };
    let rates = if on("socks") {
        socks_rates(args, &env)
    } else {
        Vec::new()
    };
    let mem = if on("memory") {
        memory(args, &env)
    } else {
        Vec::new()
    };
    print_tables(args, &tput, &rates, &mem);
    Ok(())
}

fn print_tables(args: &CoreBenchArgs, tput: &[ThroughputRow], rates: &[RateRow], mem: &[MemRow]) {
    let gbps = |r: Relay| {
        tput.iter()
            .find(|t| t.relay == r)
            .and_then(|t| t.gbps.as_ref().ok().copied())
    };
    let direct = gbps(Relay::Direct);
    if !tput.is_empty() {
        let mut table = vec![row!["relay", "Gbit/s", "x direct", "note"]];
        for t in tput {
            match &t.gbps {
                Ok(g) => {
                    let ratio = direct.map_or("-".to_string(), |d| format!("{:.2}x", g / d));
                    let note = t.recorded.map_or(String::new(), |b| {
                        format!("pcapng of the last run: {:.2} GB", b as f64 / 1e9)
                    });
                    table.push(row![t.relay.name(), format!("{g:.2}"), ratio, note]);
                }
                Err(e) => table.push(row![t.relay.name(), "-", "-", e]),
            }
        }
        let pair = |a: Relay, b: Relay| match (gbps(a), gbps(b)) {
            (Some(x), Some(y)) => format!("{:.2}x", x / y),
            _ => "-".into(),
        };
        print_table(
            &format!(
                "## TCP throughput: iperf3, 1 stream, {} s, median of {} (loadavg {})",
                args.iperf_secs,
                args.iperf_runs,
                loadavg()
            ),
            &table,
            &[1, 2],
            &[format!(
                "forward recording / socat = {} (target >= 1.00); forward --no-record / haproxy = {} (target >= 1.00)",
                pair(Relay::ForwardRecord, Relay::Socat),
                pair(Relay::ForwardNoRecord, Relay::Haproxy)
            )],
        );
    }
    if !rates.is_empty() {
        let micro = rates
            .iter()
            .find(|r| r.name == Socks::Microsocks.name())
            .and_then(|r| r.rate.as_ref().ok());
        let mut table = vec![row![
            "proxy",
            "conn/s",
            "x microsocks",
            "failed",
            "CPU us/conn",
            "CPU used",
            "bench CPU us/conn",
            "machine idle",
            "x microsocks by round: min-max (each round)"
        ]];
        for r in rates {
            match &r.rate {
                Ok(Rates {
                    median: rate,
                    failed,
                    rounds,
                    cpu_us,
                    share,
                    bench_us,
                    idle,
                }) => {
                    // A round interleaves the proxies' turns, so its ratio compares them
                    // under the same load.
                    let by_round = micro.map(|m| {
                        let x: Vec<f64> =
                            rounds.iter().zip(&m.rounds).map(|(a, b)| a / b).collect();
                        let lo = x.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = x.iter().copied().fold(0.0, f64::max);
                        // Three decimals: a round at 0.996 must not read as 1.00.
                        let each: Vec<String> = x.iter().map(|v| format!("{v:.3}")).collect();
                        format!("{lo:.3}-{hi:.3} ({})", each.join(" "))
                    });
                    table.push(row![
                        r.name,
                        format!("{rate:.0}"),
                        micro.map_or("-".into(), |m| format!("{:.2}x", rate / m.median)),
                        failed,
                        format!("{cpu_us:.1}"),
                        format!("{:.0}%", share * 100.0),
                        format!("{bench_us:.1}"),
                        format!("{:.1}%", idle * 100.0),
                        by_round.unwrap_or_default()
                    ]);
                }
                Err(e) => table.push(row![r.name, "-", "-", "-", "-", "-", "-", "-", e]),
            }
        }
        print_table(
            &format!(
                "## SOCKS5 connections per second ({} client threads; rounds of {} interleaved 1 s turns per proxy, median of {}; CONNECT + 2-byte answer + close; loadavg {})",
                args.socks_clients,
                args.socks_secs,
                args.socks_runs,
                loadavg()
            ),
            &table,
            &[1, 2, 3, 4, 5, 6, 7],
            &["target: capagent socks >= 1.00x microsocks (CPU us/conn: the proxy's user + system time per connection, kernel TCP work included; CPU used: that time over the time it served, in % of one CPU: on a busy machine the scheduler shares CPUs by thread, and microsocks runs a thread per connection, capagent one per CPU; bench CPU us/conn: the clients' and the answering server's; machine idle: of both CPUs, during the proxy's turns)".to_string()],
        );
    }
    if !mem.is_empty() {
        let mut table = vec![row!["relay", "idle MiB", "busy MiB", "KiB/conn"]];
        for m in mem {
            match &m.kib {
                Ok((idle, busy)) => table.push(row![
                    m.name,
                    format!("{:.1}", *idle as f64 / 1024.0),
                    format!("{:.1}", *busy as f64 / 1024.0),
                    format!(
                        "{:.1}",
                        busy.saturating_sub(*idle) as f64 / args.rss_conns.max(1) as f64
                    )
                ]),
                Err(e) => table.push(row![m.name, "-", "-", "-", e]),
            }
        }
        print_table(
            &format!(
                "## Memory: RSS with {} relayed connections open (each after one round trip)",
                args.rss_conns
            ),
            &table,
            &[1, 2, 3],
            &["(socat: all its processes, one per connection)".to_string()],
        );
    }
}
