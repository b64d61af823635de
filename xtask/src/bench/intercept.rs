//! `cargo xtask bench intercept`: what transparent interception costs, in one run, in the
//! topology of the integration tests: client namespace → gateway namespace (forwarding;
//! capagent runs here) → server namespace, joined by veth pairs.
//!
//! For each path (direct: plain forwarding; capagent `--mode redirect` and `--mode tproxy`,
//! each relaying only and recording to pcapng) it measures
//! - connection setup: `connrate client` opens COUNT connections one after the other
//!   (connect, one byte each way, close) → connections per second and mean time per
//!   connection;
//! - throughput: `rr bulk-client` sends BYTES through the path → Mbit/s;
//!
//! and prints each next to direct as a ratio. It asserts nothing about timings.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::Args;

use capagent_testkit::Netns;

use super::Guard;
use crate::util::{self, run_captured};

#[derive(Args, Debug, Clone)]
pub struct InterceptBenchArgs {
    /// Connections opened by the connection setup workload, per path.
    #[arg(long, default_value_t = 2000)]
    pub count: u64,
    /// Bytes of the bulk stream, per path.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Use this capagent binary instead of building one (`cargo build --release`).
    #[arg(long)]
    pub capagent: Option<PathBuf>,
}

/// The benchmark topology: client, gateway and server namespaces (testkit's, deleted with
/// every process left in them on drop).
struct Topo {
    ns: [Netns; 3],
}

impl Topo {
    fn ns(&self, i: usize) -> &str {
        &self.ns[i].name
    }

    fn cmd(&self, i: usize, prog: &Path) -> Command {
        self.ns[i].cmd(prog)
    }

    fn new() -> Result<Topo> {
        let t = Topo {
            ns: [
                Netns::try_new("cabench-c")?,
                Netns::try_new("cabench-g")?,
                Netns::try_new("cabench-s")?,
            ],
        };
        let ip = |i: usize, args: &[&str]| t.ns[i].ip(args);
        ip(
            1,
            &[
                "link",
                "add",
                "g0",
                "type",
                "veth",
                "peer",
                "name",
                "c0",
                "netns",
                t.ns(0),
            ],
        )?;
        ip(
            1,
            &[
                "link",
                "add",
                "g1",
                "type",
                "veth",
                "peer",
                "name",
                "s0",
                "netns",
                t.ns(2),
            ],
        )?;
        for (i, dev, v4, v6) in [
            (0, "c0", "10.66.1.2/24", "fd66:1::2/64"),
            (1, "g0", "10.66.1.1/24", "fd66:1::1/64"),
            (1, "g1", "10.66.2.1/24", "fd66:2::1/64"),
            (2, "s0", "10.66.2.2/24", "fd66:2::2/64"),
        ] {
            ip(i, &["addr", "add", v4, "dev", dev])?;
            ip(i, &["addr", "add", v6, "dev", dev, "nodad"])?;
            ip(i, &["link", "set", dev, "up"])?;
        }
        ip(0, &["route", "add", "default", "via", "10.66.1.1"])?;
        ip(2, &["route", "add", "default", "via", "10.66.2.1"])?;
        util::run(t.ns[1].cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
        Ok(t)
    }
}

/// A background server that prints `{"listening":PORT}` first; killed on drop.
struct Bg {
    _proc: Guard,
    port: u16,
}

impl Bg {
    fn start(mut cmd: Command) -> Result<Bg> {
        let mut proc = Guard::of(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start a server")?,
        );
        let mut line = String::new();
        BufReader::new(proc.child.stdout.as_mut().expect("piped")).read_line(&mut line)?;
        let v: serde_json::Value =
            serde_json::from_str(line.trim()).with_context(|| format!("server said {line:?}"))?;
        let port = v["listening"].as_u64().context("no port")? as u16;
        Ok(Bg { _proc: proc, port })
    }
}

/// A running `capagent intercept` in the gateway; stopped (SIGTERM) on drop.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(t: &Topo, capagent: &Path, args: &[&str]) -> Result<Agent> {
        let mut cmd = t.cmd(1, capagent);
        cmd.arg("intercept").args(args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start capagent")?;
        let mut err = BufReader::new(child.stderr.take().expect("piped"));
        let mut line = String::new();
        loop {
            line.clear();
            if err.read_line(&mut line)? == 0 {
                bail!("capagent exited before intercepting");
            }
            if line.starts_with("capagent: intercepting") {
                break;
            }
        }
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while err.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        Ok(Agent { child })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the capagent this bench started.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = util::wait_timeout(&mut self.child, Duration::from_secs(30), false);
    }
}

fn json_of(stdout: &str) -> Result<serde_json::Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line")?;
    Ok(serde_json::from_str(line)?)
}

struct Measure {
    per_sec: f64,
    avg_us: f64,
    mbps: f64,
}

/// Starts `server` (a program and its arguments, printing `{"listening":PORT}` first) in the
/// server namespace and runs `client` in the client namespace with the arguments `args`
/// gives for the server's address; returns the JSON the client printed.
fn server_client(
    t: &Topo,
    server: (&Path, &[&str]),
    client: &Path,
    args: impl FnOnce(&str) -> Vec<String>,
) -> Result<serde_json::Value> {
    let running = Bg::start({
        let mut c = t.cmd(2, server.0);
        c.args(server.1);
        c
    })?;
    let argv = args(&format!("10.66.2.2:{}", running.port));
    let mut c = t.cmd(0, client);
    c.args(&argv);
    let out = run_captured(&mut c, Duration::from_secs(600))?;
    if !out.success() {
        let name = client.file_name().unwrap_or_default().to_string_lossy();
        bail!("{name} {}: {}", argv[0], out.stderr_tail(5));
    }
    json_of(&out.stdout)
}

fn measure(t: &Topo, a: &InterceptBenchArgs, bins: &Bins) -> Result<Measure> {
    let conn = server_client(
        t,
        (&bins.connrate, &["server", "--bind", "0.0.0.0"]),
        &bins.connrate,
        |addr| crate::row!["client", "--addr", addr, "--count", a.count],
    )?;
    let bulk = server_client(
        t,
        (
            &bins.rr,
            &["bulk-server", "--bind", "0.0.0.0", "--port", "0"],
        ),
        &bins.rr,
        |addr| {
            crate::row![
                "bulk-client",
                "--addr",
                addr,
                "--bytes",
                a.bytes,
                "--chunk",
                "65536"
            ]
        },
    )?;
    Ok(Measure {
        per_sec: conn["per_sec"].as_f64().unwrap_or(0.0),
        avg_us: conn["avg_us"].as_f64().unwrap_or(0.0),
        mbps: bulk["mbps"].as_f64().unwrap_or(0.0),
    })
}

struct Bins {
    capagent: PathBuf,
    rr: PathBuf,
    connrate: PathBuf,
}

pub fn intercept(args: InterceptBenchArgs) -> Result<()> {
    if !util::is_root() {
        bail!("cargo xtask bench intercept must run as root (network namespaces, nftables)");
    }
    let capagent = super::capagent_bin(args.capagent.as_ref())?;
    let x = util::build_bins("xtask", &["rr", "connrate"], true)?;
    let bins = Bins {
        capagent,
        rr: x["rr"].clone(),
        connrate: x["connrate"].clone(),
    };
    let t = Topo::new()?;
    let tmp = std::env::temp_dir().join(format!("capagent-bench-intercept-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let pcap = tmp.join("bench.pcapng");
    let pcap = pcap.to_str().context("temp path")?.to_string();
    let paths: Vec<(&str, Vec<&str>)> = vec![
        ("direct (forwarded)", vec![]),
        (
            "redirect, relay only",
            vec!["--mode", "redirect", "--iface", "g0", "--no-record"],
        ),
        (
            "redirect, pcapng",
            vec![
                "--mode",
                "redirect",
                "--iface",
                "g0",
                "-o",
                "/dev/null",
                "-w",
                &pcap,
            ],
        ),
        (
            "tproxy, relay only",
            vec!["--mode", "tproxy", "--iface", "g0", "--no-record"],
        ),
        (
            "tproxy, pcapng",
            vec![
                "--mode",
                "tproxy",
                "--iface",
                "g0",
                "-o",
                "/dev/null",
                "-w",
                &pcap,
            ],
        ),
    ];
    let mut rows = Vec::new();
    for (name, agent_args) in &paths {
        eprintln!("bench intercept: {name}");
        let agent = if agent_args.is_empty() {
            None
        } else {
            Some(Agent::start(&t, &bins.capagent, agent_args)?)
        };
        let m = measure(&t, &args, &bins);
        drop(agent);
        let _ = std::fs::remove_file(&pcap);
        rows.push((*name, m));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let base = match &rows[0].1 {
        Ok(m) => (m.per_sec, m.mbps),
        Err(e) => bail!("direct path failed: {e:#}"),
    };
    let mut table = vec![crate::row![
        "path", "conn/s", "µs/conn", "ratio", "Mbit/s", "ratio"
    ]];
    for (name, m) in &rows {
        match m {
            Ok(m) => table.push(crate::row![
                name,
                format!("{:.0}", m.per_sec),
                format!("{:.1}", m.avg_us),
                format!("{:.2}x", m.per_sec / base.0),
                format!("{:.0}", m.mbps),
                format!("{:.2}x", m.mbps / base.1)
            ]),
            Err(e) => table.push(crate::row![
                name,
                "-",
                "-",
                "-",
                "-",
                "-",
                format!("failed: {e:#}")
            ]),
        }
    }
    super::print_table(
        &format!(
            "connection setup: {} connections one after the other (connect, 1 byte each way, close); throughput: {} MiB stream",
            args.count,
            args.bytes >> 20
        ),
        &table,
        &[1, 2, 3, 4, 5],
        &[],
    );
    Ok(())
}
