//! `cargo xtask bench capture`: what capturing costs a bulk TCP transfer, capagent next to
//! tcpdump, and how much of the traffic each one gets into its file.
//!
//! iperf3 runs over the loopback of a network namespace the bench creates (nothing else talks
//! there, so the interface counters count iperf3's packets only), bare, under
//! `tcpdump -i lo -w FILE` and under `capagent capture -i lo -w FILE`, with the full snaplen
//! and with `-s 96`, and paced at 10 Gbit/s (`iperf3 -b 10G`, full snaplen, filter
//! `tcp port PORT`). Each run reports iperf3's throughput, the packets and wire bytes in the
//! file next to what the kernel counted on the interface, the drops each capturer reports,
//! the file size and the capturer's CPU time. It prints; it asserts nothing about timings.
use std::{
    fmt, fs,
    io::{self, BufRead, BufReader, Read, Seek},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use capagent_testkit::{Netns, wait_for};

use super::Guard;
use crate::util::{self, display, which};

#[derive(Args, Debug, Clone)]
pub struct CaptureBenchArgs {
    /// Seconds of each iperf3 run (iperf3 -t).
    #[arg(short = 't', long = "time", default_value_t = 5)]
    pub time: u32,
    /// Runs per row; the row shows the run with the median throughput.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// CPU the iperf3 client and server are pinned to (iperf3 -A); the capturers run anywhere.
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    /// Do not pin iperf3.
    #[arg(long)]
    pub no_pin: bool,
    /// Rows to skip (comma-separated): tcpdump, tcpdump-96, capagent, capagent-96,
    /// tcpdump-10g, capagent-10g.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Directory for the capture files (deleted after each run). Default: /dev/shm (tmpfs,
    /// so the disk is not what is measured) when it exists, else the temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// tcpdump's buffer in KiB (tcpdump -B); tcpdump's own default (2 MiB) when not given.
    #[arg(long, value_name = "KIB")]
    pub tcpdump_buffer_kib: Option<u32>,
    /// capagent's ring buffer in KiB (capture --ring-kib); capagent's default when not given.
    #[arg(long, value_name = "KIB")]
    pub ring_kib: Option<u32>,
    /// Use this capagent binary instead of building one (`cargo build --release`).
    #[arg(long)]
    pub capagent: Option<PathBuf>,
    /// TCP port of the iperf3 server inside the bench's namespace.
    #[arg(long, default_value_t = 5201)]
    pub port: u16,
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Bare,
    /// At loopback speed, with this snap length (`None`: the full one).
    Tcpdump(Option<u32>),
    Capagent(Option<u32>),
    /// iperf3 paced at [`PACED`] (`-b`), full snap length, filter `tcp port PORT`: the rate
    /// of a 10 Gbit/s link.
    Tcpdump10G,
    Capagent10G,
}

/// The rate of the paced rows, as iperf3 -b takes it, and in Gbit/s.
const PACED: &str = "10G";
const PACED_GBPS: f64 = 10.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Tcpdump,
    Capagent,
}

impl Case {
    fn all() -> [Case; 7] {
        [
            Case::Bare,
            Case::Tcpdump(Some(96)),
            Case::Capagent(Some(96)),
            Case::Tcpdump(None),
            Case::Capagent(None),
            Case::Tcpdump10G,
            Case::Capagent10G,
        ]
    }

    /// The `--skip` name.
    fn key(self) -> &'static str {
        match self {
            Case::Bare => "bare",
            Case::Tcpdump(Some(_)) => "tcpdump-96",
            Case::Tcpdump(None) => "tcpdump",
            Case::Capagent(Some(_)) => "capagent-96",
            Case::Capagent(None) => "capagent",
            Case::Tcpdump10G => "tcpdump-10g",
            Case::Capagent10G => "capagent-10g",
        }
    }

    fn label(self) -> String {
        match self {
            Case::Bare => "bare".into(),
            Case::Tcpdump(Some(s)) => format!("tcpdump -s {s}"),
            Case::Tcpdump(None) => "tcpdump (full)".into(),
            Case::Capagent(Some(s)) => format!("capagent -s {s}"),
            Case::Capagent(None) => "capagent (full)".into(),
            Case::Tcpdump10G => format!("tcpdump (full) at {PACED}"),
            Case::Capagent10G => format!("capagent (full) at {PACED}"),
        }
    }

    fn tool(self) -> Option<Tool> {
        match self {
            Case::Bare => None,
            Case::Tcpdump(_) | Case::Tcpdump10G => Some(Tool::Tcpdump),
            Case::Capagent(_) | Case::Capagent10G => Some(Tool::Capagent),
        }
    }

    fn snaplen(self) -> Option<u32> {
        match self {
            Case::Tcpdump(s) | Case::Capagent(s) => s,
            _ => None,
        }
    }

    fn paced(self) -> bool {
        matches!(self, Case::Tcpdump10G | Case::Capagent10G)
    }
}

/// Packets and bytes the kernel counted on the interface (transmit side: on loopback every
/// packet is sent once and received once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LinkCounters {
    packets: u64,
    bytes: u64,
}

/// What a capture file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileCount {
    pub packets: u64,
    /// Sum of the packets' original (wire) lengths.
    pub wire_bytes: u64,
    /// The file ended in the middle of a record.
    pub truncated: bool,
}

/// What a capturer said about itself on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapturerReport {
    /// Packets it says it captured.
    pub captured: Option<u64>,
    /// Packets it says were dropped (tcpdump: "dropped by kernel"; capagent: ring full).
    pub dropped: Option<u64>,
    /// tcpdump's "received by filter".
    pub received: Option<u64>,
}

struct Measured {
    gbps: f64,
    /// Gbit/s per CPU iperf3 (client + server) used: the capturer's kernel side runs on
    /// iperf3's CPU and in its context, so it shows here even when other work on the machine
    /// takes CPU time away from iperf3 and lowers its throughput.
    gbps_per_cpu: Option<f64>,
    kernel: LinkCounters,
    file: Option<FileCount>,
    file_size: u64,
    report: CapturerReport,
    /// Capturer CPU seconds (user + system) per second of iperf3.
    cpu: Option<f64>,
    /// Seconds the capturer's threads waited for a CPU while runnable, per second of iperf3
    /// (what starves it on a busy machine).
    waited: Option<f64>,
}

pub fn capture(args: CaptureBenchArgs) -> Result<()> {
    if !util::is_root() {
        bail!("cargo xtask bench capture needs root (network namespace, tcpdump, eBPF)");
    }
    for tool in ["ip", "ss", "iperf3", "tcpdump"] {
        if which(tool).is_none() {
            bail!("{tool} not found (run `cargo xtask setup`)");
        }
    }
    let skip = |c: Case| args.skip.iter().any(|s| s == c.key());
    let plan: Vec<Case> = Case::all().into_iter().filter(|c| !skip(*c)).collect();
    let capagent = if !plan.iter().any(|c| c.tool() == Some(Tool::Capagent)) {
        None
    } else {
        Some(super::capagent_bin(args.capagent.as_ref())?)
    };
    let dir = args
        .dir
        .clone()
        .or_else(super::tmpfs_dir)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("capagent-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _dir_guard = RemoveDir(dir.clone());
    let fs_kind = fs_type(&dir);
    let free = free_bytes(&dir);
    eprintln!(
        "capture files in {} ({fs_kind}, {} free)",
        dir.display(),
        free.map_or("?".into(), fmt_size)
    );
    if free.is_some_and(|f| f < u64::from(args.time) * (2 << 30)) {
        eprintln!(
            "warning: a full-snaplen run can write about 2 GiB per second of iperf3: lower -t \
             or choose --dir"
        );
    }

    let ns = Netns::try_new("bench-capture")?;
    let _server = iperf3_server(&ns, &args)?;
    eprintln!(
        "iperf3 over the loopback of network namespace {} for {} s per run{}",
        ns.name,
        args.time,
        if args.no_pin {
            String::new()
        } else {
            format!(", client and server pinned to CPU {}", args.cpu)
        }
    );

    let runs = args.runs.max(1);
    let mut results: Vec<Vec<std::result::Result<Measured, String>>> =
        plan.iter().map(|_| Vec::new()).collect();
    for round in 1..=runs {
        for (i, &case) in plan.iter().enumerate() {
            if results[i].iter().any(|r| r.is_err()) {
                continue;
            }
            eprintln!(
                "== {} (run {round}/{runs}, load {})",
                case.label(),
                super::loadavg()
            );
            let r =
                run_case(&args, &ns, &dir, capagent.as_deref(), case).map_err(|e| format!("{e:#}"));
            match &r {
                Ok(m) => eprintln!("   {}", summary_line(case, m)),
                Err(e) => eprintln!("   failed: {e}"),
            }
            results[i].push(r);
        }
    }
    let rows: Vec<(Case, std::result::Result<Measured, String>)> = plan
        .iter()
        .zip(results)
        .map(|(&c, runs)| (c, median_of(runs, c.paced())))
        .collect();
    print_table(&args, &rows, &fs_kind);
    println!(
        "{runs} run(s) per row, median shown; 1-minute load average now {} (other work on the \
         machine makes the numbers noisy).",
        super::loadavg()
    );
    Ok(())
}

fn summary_line(case: Case, m: &Measured) -> String {
    let mut s = format!("{:.2} Gbit/s", m.gbps);
    if case != Case::Bare {
        if let Some(f) = m.file {
            s.push_str(&format!(
                "; {} packets in the file, the kernel counted {} ({} of the wire bytes)",
                f.packets,
                m.kernel.packets,
                Pct(f.wire_bytes, kernel_wire_bytes(m.kernel))
            ));
        }
        if let Some(d) = m.report.dropped {
            s.push_str(&format!("; {d} dropped (as reported)"));
        }
        if let Some(c) = m.cpu {
            s.push_str(&format!("; capturer CPU {:.0}%", 100.0 * c));
        }
        if let Some(w) = m.waited {
            s.push_str(&format!(", waited for a CPU {:.0}%", 100.0 * w));
        }
    }
    s
}

/// The run with the median throughput (`paced`: with the median share of the wire bytes in
/// its file, the throughput being the pace), or the first error.
fn median_of(
    runs: Vec<std::result::Result<Measured, String>>,
    paced: bool,
) -> std::result::Result<Measured, String> {
    super::median_run(runs, |m: &Measured| {
        if paced {
            let kept = m.file.map_or(0, |f| f.wire_bytes) as f64;
            kept / kernel_wire_bytes(m.kernel).max(1) as f64
        } else {
            m.gbps
        }
    })
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `iperf3 -s` in the bench's namespace, once it listens.
fn iperf3_server(ns: &Netns, args: &CaptureBenchArgs) -> Result<Guard> {
    let mut cmd = ns.cmd("iperf3");
    cmd.args(["-s", "-p", &args.port.to_string()]);
    if !args.no_pin {
        cmd.args(["-A", &args.cpu.to_string()]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", display(&cmd)))?;
    let mut server = Guard::of(child);
    // `ip netns exec` execs iperf3: the child's pid is iperf3's, in the namespace.
    server
        .wait_listening(args.port, Duration::from_secs(10))
        .context("iperf3 -s")?;
    Ok(server)
}

/// The tx counters of `lo` in the bench's namespace.
fn lo_counters(ns: &Netns) -> Result<LinkCounters> {
    let out = util::output(
        Command::new("ip").args(["-n", &ns.name, "-s", "-j", "link", "show", "dev", "lo"]),
    )?;
    parse_link_counters(&out).context("cannot read the counters of lo (ip -s -j link)")
}

/// `stats64.tx` of the first link in `ip -s -j link show` output.
fn parse_link_counters(json: &str) -> Option<LinkCounters> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let tx = &v.get(0)?["stats64"]["tx"];
    Some(LinkCounters {
        packets: tx["packets"].as_u64()?,
        bytes: tx["bytes"].as_u64()?,
    })
}

/// A capturer running in the namespace, its stderr collected as it comes.
struct Capturer {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Capturer {
    fn start(mut cmd: Command, ready: &str) -> Result<Capturer> {
        let desc = display(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {desc}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().expect("piped");
        let reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().expect("not poisoned");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut cap = Capturer {
            child,
            stderr,
            reader: Some(reader),
        };
        // Some(Ok(None)): ready; Some(Ok(Some(status))): exited first.
        let seen = wait_for(Duration::from_secs(30), || {
            if cap.stderr().contains(ready) {
                return Some(Ok(None));
            }
            cap.child.try_wait().transpose().map(|r| r.map(Some))
        });
        match seen {
            Some(Ok(None)) => Ok(cap),
            Some(Ok(Some(st))) => {
                cap.join();
                bail!("{desc} exited ({st}): {}", cap.stderr().trim());
            }
            Some(Err(e)) => Err(e.into()),
            None => bail!("{desc} did not say {ready:?} within 30 s"),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("not poisoned").clone()
    }

    fn join(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// Seconds its threads have run on a CPU so far, and waited for one while runnable
    /// (`/proc/PID/task/*/schedstat`: the scheduler's own clock; utime and stime are tick
    /// samples, which miss most of it on a busy virtual machine).
    fn sched_seconds(&self) -> Option<(f64, f64)> {
        let (mut run, mut wait) = (0u64, 0u64);
        for t in fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()? {
            let stat = fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
            let (r, w) = sched_ns_of_schedstat(&stat)?;
            run += r;
            wait += w;
        }
        Some((run as f64 / 1e9, wait as f64 / 1e9))
    }

    /// SIGINT (both tools then write their statistics and exit), and its stderr.
    fn stop(mut self) -> Result<String> {
        // SAFETY: a plain signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let (status, timed_out) =
            util::wait_timeout(&mut self.child, Duration::from_secs(120), false)?;
        self.join();
        let err = self.stderr();
        if timed_out {
            bail!("did not exit within 120 s of SIGINT: {}", err.trim());
        }
        match status {
            Some(st) if st.success() => Ok(err),
            st => bail!("exited with {st:?}: {}", err.trim()),
        }
    }
}

impl Drop for Capturer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            util::kill(&mut self.child, false);
            let _ = self.child.wait();
        }
    }
}

/// The first two fields of a `schedstat` line: nanoseconds on a CPU, and waiting on a run
/// queue.
fn sched_ns_of_schedstat(stat: &str) -> Option<(u64, u64)> {
    let mut f = stat.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

fn run_case(
    args: &CaptureBenchArgs,
    ns: &Netns,
    dir: &Path,
    capagent: Option<&Path>,
    case: Case,
) -> Result<Measured> {
    let file = dir.join(match case.tool() {
        None => "none",
        Some(Tool::Tcpdump) => "tcpdump.pcap",
        Some(Tool::Capagent) => "capagent.pcapng",
    });
    let _ = fs::remove_file(&file);
    let before = lo_counters(ns)?;
    let port_filter = ["tcp", "port", &args.port.to_string()].map(str::to_string);
    let filter: &[String] = if case.paced() { &port_filter } else { &[] };
    let capturer = match case.tool() {
        None => None,
        Some(Tool::Tcpdump) => {
            let mut c = ns.cmd("tcpdump");
            // -Z root: write the file as root (tcpdump drops to its own user by default).
            c.args(["-i", "lo", "-Z", "root", "-w"]).arg(&file);
            if let Some(s) = case.snaplen() {
                c.args(["-s", &s.to_string()]);
            }
            if let Some(b) = args.tcpdump_buffer_kib {
                c.args(["-B", &b.to_string()]);
            }
            c.args(filter);
            Some(Capturer::start(c, "listening on")?)
        }
        Some(Tool::Capagent) => {
            let mut c = ns.cmd(capagent.expect("built when planned"));
            c.args(["capture", "-i", "lo", "-w"]).arg(&file);
            if let Some(s) = case.snaplen() {
                c.args(["-s", &s.to_string()]);
            }
            if let Some(k) = args.ring_kib {
                c.args(["--ring-kib", &k.to_string()]);
            }
            c.args(filter);
            Some(Capturer::start(c, "capagent: capturing on")?)
        }
    };
    let sched0 = capturer.as_ref().and_then(Capturer::sched_seconds);
    let mut client = ns.cmd("iperf3");
    client.args([
        "-c",
        "127.0.0.1",
        "-p",
        &args.port.to_string(),
        "-t",
        &args.time.to_string(),
        "-J",
    ]);
    if !args.no_pin {
        client.args(["-A", &format!("{0},{0}", args.cpu)]);
    }
    if case.paced() {
        client.args(["-b", PACED]);
    }
    let started = Instant::now();
    let out = util::run_captured(&mut client, Duration::from_secs(u64::from(args.time) + 60))?;
    let elapsed = started.elapsed().as_secs_f64();
    let sched1 = capturer.as_ref().and_then(Capturer::sched_seconds);
    let stderr = match capturer {
        Some(c) => Some(c.stop().with_context(|| case.label())?),
        None => None,
    };
    let after = lo_counters(ns)?;
    let (gbps, cpu) = parse_iperf3(&out.stdout).with_context(|| {
        format!(
            "iperf3 -c: {}{}",
            out.stderr_tail(5),
            iperf3_error(&out.stdout)
        )
    })?;
    let (file_count, file_size) = if case == Case::Bare {
        (None, 0)
    } else {
        let size = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let count = count_file(&file).with_context(|| format!("reading {}", file.display()))?;
        let _ = fs::remove_file(&file);
        (Some(count), size)
    };
    let report = match (case.tool(), &stderr) {
        (Some(Tool::Tcpdump), Some(e)) => parse_tcpdump_stats(e),
        (Some(Tool::Capagent), Some(e)) => parse_capagent_summary(e),
        _ => CapturerReport::default(),
    };
    Ok(Measured {
        gbps,
        gbps_per_cpu: cpu.filter(|c| *c > 0.0).map(|c| gbps / c),
        kernel: LinkCounters {
            packets: after.packets.saturating_sub(before.packets),
            bytes: after.bytes.saturating_sub(before.bytes),
        },
        file: file_count,
        file_size,
        report,
        cpu: match (sched0, sched1) {
            (Some(a), Some(b)) if elapsed > 0.0 => Some((b.0 - a.0) / elapsed),
            _ => None,
        },
        waited: match (sched0, sched1) {
            (Some(a), Some(b)) if elapsed > 0.0 => Some((b.1 - a.1) / elapsed),
            _ => None,
        },
    })
}

/// Receiver throughput in Gbit/s from `iperf3 -J`, and the CPUs client and server used
/// together (`cpu_utilization_percent`: host_total + remote_total, over 100).
fn parse_iperf3(json: &str) -> Option<(f64, Option<f64>)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64()?;
    let cpu = &v["end"]["cpu_utilization_percent"];
    let used = match (cpu["host_total"].as_f64(), cpu["remote_total"].as_f64()) {
        (Some(h), Some(r)) => Some((h + r) / 100.0),
        _ => None,
    };
    Some((bps / 1e9, used))
}

fn iperf3_error(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v["error"].as_str().map(|e| format!(" ({e})")))
        .unwrap_or_default()
}

/// The first number of the line that contains `what` (e.g. `"packets dropped by kernel"`).
fn number_before(text: &str, what: &str) -> Option<u64> {
    text.lines().filter(|l| l.contains(what)).find_map(|l| {
        l.split_whitespace()
            .next()
            .and_then(|w| w.replace(',', "").parse().ok())
    })
}

/// tcpdump's closing statistics on stderr.
pub fn parse_tcpdump_stats(stderr: &str) -> CapturerReport {
    CapturerReport {
        captured: number_before(stderr, "packets captured"),
        dropped: number_before(stderr, "packets dropped by kernel"),
        received: number_before(stderr, "packets received by filter"),
    }
}

/// capagent capture's summary line: `capagent: N packets captured (B bytes on the wire),
/// D dropped (ring buffer full)`.
pub fn parse_capagent_summary(stderr: &str) -> CapturerReport {
    let mut r = CapturerReport::default();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix("capagent: ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.get(1..3) != Some(&["packets", "captured"]) {
            continue;
        }
        r.captured = words[0].parse().ok();
        r.dropped = words
            .windows(2)
            .find(|w| w[1] == "dropped")
            .and_then(|w| w[0].parse().ok());
    }
    r
}

/// Counts the packet records of a pcap or pcapng file, reading only their headers.
pub fn count_file(path: &Path) -> Result<FileCount> {
    let f = fs::File::open(path)?;
    Ok(count_packets(f)?)
}

/// A file read record by record: headers are read, packet data skipped.
struct Records<R> {
    r: BufReader<R>,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Records<R> {
    fn new(mut inner: R) -> io::Result<Self> {
        let len = inner.seek(io::SeekFrom::End(0))?;
        inner.seek(io::SeekFrom::Start(0))?;
        Ok(Records {
            r: BufReader::with_capacity(1 << 20, inner),
            pos: 0,
            len,
        })
    }

    /// Fills `buf`: `Ok(false)` at the end of the file, an `UnexpectedEof` error when the
    /// file ends inside it.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.pos == self.len {
            return Ok(false);
        }
        if self.pos + buf.len() as u64 > self.len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.r.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(true)
    }

    /// Skips `n` bytes; false when the file ends first.
    fn skip(&mut self, n: u64) -> io::Result<bool> {
        if self.pos + n > self.len {
            return Ok(false);
        }
        self.r.seek_relative(n as i64)?;
        self.pos += n;
        Ok(true)
    }
}

/// Counts the packet records of a pcap or pcapng stream: pcap records, or pcapng Enhanced,
/// Simple and (obsolete) Packet Blocks, with the sum of their original lengths.
pub fn count_packets<R: Read + Seek>(inner: R) -> io::Result<FileCount> {
    let mut r = Records::new(inner)?;
    let mut head = [0u8; 4];
    if !r.read(&mut head)? {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    match u32::from_le_bytes(head) {
        0xa1b2_c3d4 | 0xa1b2_3c4d => count_pcap(r, false),
        0xd4c3_b2a1 | 0x4d3c_b2a1 => count_pcap(r, true),
        0x0a0d_0d0a => count_pcapng(r),
        m => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a pcap or pcapng file (magic {m:#010x})"),
        )),
    }
}

fn u32_at(b: &[u8], off: usize, big: bool) -> u32 {
    let a: [u8; 4] = b[off..off + 4].try_into().expect("4 bytes");
    if big {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

/// `Ok(Some(true))`: read; `Ok(None)`: the file ends in the middle (truncated).
fn read_or_cut<R: Read + Seek>(r: &mut Records<R>, buf: &mut [u8]) -> io::Result<Option<bool>> {
    match r.read(buf) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

fn count_pcap<R: Read + Seek>(mut r: Records<R>, big: bool) -> io::Result<FileCount> {
    let mut out = FileCount::default();
    let mut rest = [0u8; 20];
    if read_or_cut(&mut r, &mut rest)? != Some(true) {
        out.truncated = true;
        return Ok(out);
    }
    let mut h = [0u8; 16];
    loop {
        match read_or_cut(&mut r, &mut h)? {
            Some(true) => {}
            Some(false) => break,
            None => {
                out.truncated = true;
                break;
            }
        }
        let incl = u32_at(&h, 8, big);
        let orig = u32_at(&h, 12, big);
        if !r.skip(u64::from(incl))? {
            out.truncated = true;
            break;
        }
        out.packets += 1;
        out.wire_bytes += u64::from(orig);
    }
    Ok(out)
}

fn count_pcapng<R: Read + Seek>(mut r: Records<R>) -> io::Result<FileCount> {
    let mut out = FileCount::default();
    // The Section Header Block's length and byte-order magic decide the byte order.
    let mut shb = [0u8; 8];
    if read_or_cut(&mut r, &mut shb)? != Some(true) {
        out.truncated = true;
        return Ok(out);
    }
    let big = match u32::from_le_bytes(shb[4..8].try_into().expect("4 bytes")) {
        0x1a2b_3c4d => false,
        0x4d3c_2b1a => true,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "pcapng section header without a byte-order magic",
            ));
        }
    };
    let len = u32_at(&shb, 0, big);
    if len < 12 || !r.skip(u64::from(len) - 12)? {
        out.truncated = true;
        return Ok(out);
    }
    let mut h = [0u8; 28];
    loop {
        match read_or_cut(&mut r, &mut h[..8])? {
            Some(true) => {}
            Some(false) => break,
            None => {
                out.truncated = true;
                break;
            }
        }
        let ty = u32_at(&h, 0, big);
        let len = u32_at(&h, 4, big);
        if len < 12 || !len.is_multiple_of(4) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("pcapng block of length {len}"),
            ));
        }
        // Enhanced Packet Block (6) and the obsolete Packet Block (2): the original length
        // is the fifth word of the body; Simple Packet Block (3): the first.
        let (fixed, orig_at) = match ty {
            6 | 2 if len >= 32 => (20, 24),
            3 if len >= 16 => (4, 8),
            _ => (0, 0),
        };
        if fixed > 0 && read_or_cut(&mut r, &mut h[8..8 + fixed])? != Some(true) {
            out.truncated = true;
            break;
        }
        if !r.skip(u64::from(len) - 8 - fixed as u64)? {
            out.truncated = true;
            break;
        }
        if fixed > 0 {
            out.packets += 1;
            out.wire_bytes += u64::from(u32_at(&h, orig_at, big));
        }
    }
    Ok(out)
}

/// The file system type of `dir` as `stat -f` names the common ones.
fn fs_type(dir: &Path) -> String {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return "?".into();
    };
    // SAFETY: a valid path and a zeroed statfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "?".into();
    }
    match st.f_type {
        0x0102_1994 => "tmpfs".into(),
        0xef53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0x794c_7630 => "overlayfs".into(),
        t => format!("fs type {t:#x}"),
    }
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: a valid path and a zeroed statvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn fmt_size(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// Wire bytes the kernel counted: loopback's counters leave out the 14-byte Ethernet header
/// (`eth_type_trans` pulls it before counting), which the capture files include.
fn kernel_wire_bytes(k: LinkCounters) -> u64 {
    k.bytes + 14 * k.packets
}

struct Pct(u64, u64);

impl fmt::Display for Pct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1 == 0 {
            write!(f, "-")
        } else {
            write!(f, "{:.1}%", 100.0 * self.0 as f64 / self.1 as f64)
        }
    }
}

fn print_table(
    args: &CaptureBenchArgs,
    rows: &[(Case, std::result::Result<Measured, String>)],
    fs_kind: &str,
) {
    let header = [
        "case",
        "Gbit/s",
        "vs bare",
        "Gbit/s per iperf3 CPU",
        "vs bare",
        "pkts in file",
        "kernel pkts",
        "wire bytes in file",
        "dropped (reported)",
        "file size",
        "capturer CPU",
        "capturer waited",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let base = rows
        .iter()
        .find(|(c, _)| *c == Case::Bare)
        .and_then(|(_, r)| r.as_ref().ok())
        .map(|m| m.gbps);
    let base_eff = rows
        .iter()
        .find(|(c, _)| *c == Case::Bare)
        .and_then(|(_, r)| r.as_ref().ok())
        .and_then(|m| m.gbps_per_cpu);
    let mut failures = Vec::new();
    for (case, r) in rows {
        let m = match r {
            Ok(m) => m,
            Err(e) => {
                let mut row = vec![case.label(), "failed".into()];
                row.resize(header.len(), "-".into());
                table.push(row);
                failures.push(format!("{}: {e}", case.label()));
                continue;
            }
        };
        let ratio = if case.paced() {
            format!("{:.2}x of {PACED}", m.gbps / PACED_GBPS)
        } else {
            base.filter(|b| *b > 0.0)
                .map_or("?".into(), |b| format!("{:.2}x", m.gbps / b))
        };
        let (eff, eff_ratio) = match (m.gbps_per_cpu, base_eff) {
            (Some(e), Some(b)) if b > 0.0 => (format!("{e:.2}"), format!("{:.2}x", e / b)),
            (Some(e), _) => (format!("{e:.2}"), "?".into()),
            _ => ("?".into(), "?".into()),
        };
        let mut row = vec![
            case.label(),
            format!("{:.2}", m.gbps),
            ratio,
            eff,
            eff_ratio,
        ];
        if *case == Case::Bare {
            row.extend([
                "-".into(),
                m.kernel.packets.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        } else {
            let f = m.file.unwrap_or_default();
            let dropped = match (case, m.report.dropped, m.report.received) {
                (Case::Tcpdump(_) | Case::Tcpdump10G, Some(d), Some(rcv)) => {
                    format!("{d} of {rcv}")
                }
                (_, Some(d), _) => d.to_string(),
                _ => "?".into(),
            };
            row.extend([
                format!("{}{}", f.packets, if f.truncated { " (cut)" } else { "" }),
                m.kernel.packets.to_string(),
                Pct(f.wire_bytes, kernel_wire_bytes(m.kernel)).to_string(),
                dropped,
                fmt_size(m.file_size),
                m.cpu.map_or("?".into(), |c| format!("{:.0}%", 100.0 * c)),
                m.waited
                    .map_or("?".into(), |w| format!("{:.0}%", 100.0 * w)),
            ]);
        }
        table.push(row);
    }
    super::print_aligned(&table);
    for f in &failures {
        println!("{f}");
    }
    println!();
    let pin = if args.no_pin {
        String::new()
    } else {
        format!(", client and server pinned to CPU {}", args.cpu)
    };
    let tcpdump_buf = args
        .tcpdump_buffer_kib
        .map_or("its default, 2 MiB".into(), |k| format!("-B {k}"));
    let ring = args
        .ring_kib
        .map_or("its default, 64 MiB".into(), |k| format!("--ring-kib {k}"));
    for note in [
        format!(
            "iperf3 -t {} over lo of a network namespace of the bench's own{pin}; capture \
             files on {fs_kind}; tcpdump buffer: {tcpdump_buf}; capagent ring: {ring}.",
            args.time
        ),
        "Gbit/s per iperf3 CPU: the throughput over the CPU share iperf3's client and server \
         used (iperf3's cpu_utilization_percent); the capturers' kernel side runs in their \
         context, so this shows its cost even when other work on the machine takes CPU time \
         from iperf3 (which lowers Gbit/s alike for every row)."
            .into(),
        "kernel pkts: lo's tx_packets during the run (each packet counted once). wire bytes in \
         file: the packets' original lengths summed over the file / the bytes the kernel \
         counted, Ethernet headers included. capturer CPU: its time on a CPU / the run's time; \
         capturer waited: its time runnable but waiting for a CPU / the run's time (other work \
         on the machine taking the CPUs: the drops of a capturer that waits come from there)."
            .into(),
        "On lo, tcpdump keeps the ingress copy of each packet, after GSO segmentation; capagent \
         the egress copy, before it: fewer, larger packets (up to 128 KiB, cut at 65535 bytes) \
         for the same bytes, so compare wire bytes, not packets."
            .into(),
        "tcpdump's \"dropped by kernel\" and \"received by filter\" count both copies of every \
         loopback packet; capagent's dropped count is of its egress records."
            .into(),
    ] {
        println!("{note}");
    }
    println!(
        "The {PACED} rows: iperf3 -b {PACED} (a 10 Gbit/s link's rate), full snaplen, filter \
         `tcp port {}` for both tools; vs bare is the throughput over {PACED}.",
        args.port
    );
    println!(
        "targets: capagent's throughput ratio at least tcpdump's at the same snaplen; at full \
         snaplen at loopback speed, at least 2x tcpdump's wire bytes in the file, or all of them \
         (when tcpdump keeps more than half, 2x cannot be had); at {PACED}, \
         0 dropped and every wire byte in the file. Timings are printed, never asserted."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_record(out: &mut Vec<u8>, incl: u32, orig: u32) {
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&incl.to_le_bytes());
        out.extend_from_slice(&orig.to_le_bytes());
        out.extend(std::iter::repeat_n(0xab, incl as usize));
    }

    fn count(bytes: Vec<u8>) -> FileCount {
        count_packets(io::Cursor::new(bytes)).unwrap()
    }

    #[test]
    fn counts_pcap_records() {
        let mut f = 0xa1b2_c3d4u32.to_le_bytes().to_vec();
        f.extend_from_slice(&[0; 20]);
        pcap_record(&mut f, 96, 1514);
        pcap_record(&mut f, 60, 60);
        let full = count(f.clone());
        assert_eq!(
            full,
            FileCount {
                packets: 2,
                wire_bytes: 1574,
                truncated: false
            }
        );
        f.truncate(f.len() - 1);
        let cut = count(f);
        assert_eq!((cut.packets, cut.truncated), (1, true));
    }

    fn block(out: &mut Vec<u8>, ty: u32, body: &[u8]) {
        let len = 12 + body.len().next_multiple_of(4) as u32;
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + body.len().next_multiple_of(4) - body.len(), 0);
        out.extend_from_slice(&len.to_le_bytes());
    }

    fn epb(cap: u32, orig: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [0, 0, 0, cap, orig] {
            b.extend_from_slice(&u32::to_le_bytes(v));
        }
        b.extend(std::iter::repeat_n(1, cap as usize));
        // An option (comment) after the data.
        b.extend_from_slice(&[1, 0, 3, 0, b'a', b'b', b'c', 0]);
        b
    }

    #[test]
    fn counts_pcapng_packet_blocks() {
        let mut f = Vec::new();
        let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
        shb.extend_from_slice(&[1, 0, 0, 0]);
        shb.extend_from_slice(&u64::MAX.to_le_bytes());
        block(&mut f, 0x0a0d_0d0a, &shb);
        block(&mut f, 1, &[1, 0, 0, 0, 0xff, 0xff, 0, 0]);
        block(&mut f, 6, &epb(65, 131_032));
        block(&mut f, 3, &[60, 0, 0, 0, 9, 9, 9, 9]);
        block(&mut f, 5, &[0; 12]);
        block(&mut f, 6, &epb(96, 66));
        assert_eq!(
            count(f.clone()),
            FileCount {
                packets: 3,
                wire_bytes: 131_032 + 60 + 66,
                truncated: false
            }
        );
        f.truncate(f.len() - 30);
        assert_eq!(
            count(f),
            FileCount {
                packets: 2,
                wire_bytes: 131_032 + 60,
                truncated: true
            }
        );
        assert!(count_packets(io::Cursor::new(b"nope".to_vec())).is_err());
    }

    #[test]
    fn parses_tool_output() {
        let td = "tcpdump: listening on lo, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
                  12890 packets captured\n338226 packets received by filter\n311378 packets dropped by kernel\n";
        assert_eq!(
            parse_tcpdump_stats(td),
            CapturerReport {
                captured: Some(12890),
                dropped: Some(311_378),
                received: Some(338_226)
            }
        );
        let ca = "capagent: capturing on lo (tcx), snaplen 65535\n\
                  capagent: 28120 packets captured (1066271338 bytes on the wire), 61210 dropped (ring buffer full)\n";
        assert_eq!(
            parse_capagent_summary(ca),
            CapturerReport {
                captured: Some(28120),
                dropped: Some(61210),
                received: None
            }
        );
        assert_eq!(
            parse_iperf3(r#"{"end":{"sum_received":{"bits_per_second":1.5e10}}}"#),
            Some((15.0, None))
        );
        assert_eq!(
            parse_iperf3(
                r#"{"end":{"sum_received":{"bits_per_second":1e10},
                   "cpu_utilization_percent":{"host_total":60.0,"remote_total":40.0}}}"#
            ),
            Some((10.0, Some(1.0)))
        );
        assert_eq!(
            iperf3_error(r#"{"error":"unable to connect"}"#),
            " (unable to connect)"
        );
        let link = r#"[{"ifname":"lo","stats64":{"rx":{"bytes":5,"packets":1},"tx":{"bytes":5142011910,"packets":120191}}}]"#;
        assert_eq!(
            parse_link_counters(link),
            Some(LinkCounters {
                packets: 120_191,
                bytes: 5_142_011_910
            })
        );
        assert_eq!(
            sched_ns_of_schedstat("866523174 2479034750 531\n"),
            Some((866_523_174, 2_479_034_750))
        );
    }
}
