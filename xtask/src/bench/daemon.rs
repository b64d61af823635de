//! `cargo xtask bench daemon`: what `capagent daemon` costs while its jobs wait for work.
//!
//! The daemon runs the example configuration (`packaging/capagent.toml`: a trace, a capture,
//! the four proxies and the DNS server) in a network namespace of its own, with dummy
//! interfaces (veth pairs) named like the ones the configuration captures on (so every job runs), and its
//! files in a temporary directory. Once every job is running and a short warm-up has passed,
//! the bench reads the daemon's CPU time (`utime + stime` of `/proc/PID/stat`, every thread)
//! over the measurement window and its resident memory (`VmRSS`, and the peak `VmHWM`, of
//! `/proc/PID/status`), prints them next to the targets (CPU under 1% of one core, RSS under
//! 64 MiB), then stops the daemon with SIGTERM and reports how long that took. It asserts
//! nothing.
use std::{
    fs,
    path::PathBuf,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use capagent_testkit::{Netns, wait_for};

use crate::util;

#[derive(Args, Debug)]
pub struct DaemonBenchArgs {
    /// Seconds of measurement.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Seconds between the jobs all running and the measurement.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// The capagent binary (default: `cargo build --release`).
    #[arg(long, value_name = "FILE")]
    pub capagent: Option<PathBuf>,
    /// The configuration (default: packaging/capagent.toml); its output_dir is replaced by a
    /// temporary directory.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Interfaces the example configuration names.
const IFACES: &[&str] = &["eth0", "eth1"];

/// A network namespace of its own (testkit's, deleted on drop) with the interfaces the
/// configuration names.
fn netns() -> Result<Netns> {
    let ns = Netns::try_new("bench-daemon")?;
    for i in IFACES {
        // A veth pair (the dummy driver may not be there): IFACE and IFACE-p.
        let peer = format!("{i}-p");
        ns.ip(&["link", "add", i, "type", "veth", "peer", "name", &peer])?;
        for dev in [*i, peer.as_str()] {
            ns.ip(&["link", "set", dev, "up"])?;
        }
    }
    Ok(ns)
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`) or count (`Threads`).
fn status_field(pid: u32, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

pub fn daemon(args: DaemonBenchArgs) -> Result<()> {
    if !util::is_root() {
        bail!("cargo xtask bench daemon must run as root (the daemon's trace and capture jobs)");
    }
    let capagent = super::capagent_bin(args.capagent.as_ref())?;
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| util::workspace_root().join("packaging/capagent.toml"));
    let config = fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let dir = std::env::temp_dir().join(format!("capagent-bench-daemon-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let out_dir = dir.join("out");
    let config: String = config
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("output_dir") {
                format!("output_dir = {:?}", out_dir.display().to_string())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = dir.join("capagent.toml");
    fs::write(&cfg, config)?;
    let ns = netns()?;
    let log = fs::File::create(dir.join("daemon.log"))?;
    let mut daemon = ns
        .cmd(&capagent)
        .arg("daemon")
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting capagent daemon")?;
    // `ip netns exec` execs the command: same pid.
    let pid = daemon.id();
    let result = (|| -> Result<()> {
        let mut table = String::new();
        let ready = wait_for(Duration::from_secs(30), || {
            let st = match ns
                .cmd(&capagent)
                .arg("status")
                .arg("--config")
                .arg(&cfg)
                .output()
            {
                Ok(st) => st,
                Err(e) => return Some(Err(anyhow::Error::from(e))),
            };
            table = String::from_utf8_lossy(&st.stdout).into_owned();
            let jobs = table.lines().skip(1).filter(|l| !l.contains("last error"));
            let (mut n, mut running) = (0, 0);
            for l in jobs {
                n += 1;
                running += usize::from(l.split_whitespace().any(|w| w == "running"));
            }
            if n > 0 && n == running {
                return Some(Ok(()));
            }
            match daemon.try_wait() {
                Ok(Some(st)) => Some(Err(anyhow::anyhow!(
                    "the daemon exited ({st}); see {}",
                    dir.join("daemon.log").display()
                ))),
                Ok(None) => None,
                Err(e) => Some(Err(e.into())),
            }
        });
        match ready {
            Some(r) => r?,
            None => bail!("not every job runs after 30 s:\n{table}"),
        }
        eprint!("{table}");
        thread::sleep(Duration::from_secs(args.warmup));
        let t0 = Instant::now();
        let c0 = super::cpu_secs(pid)?;
        eprintln!("measuring for {} s...", args.secs);
        thread::sleep(Duration::from_secs(args.secs));
        let c1 = super::cpu_secs(pid)?;
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = (c1 - c0) / elapsed * 100.0;
        let rss = status_field(pid, "VmRSS")? as f64 / 1024.0;
        let hwm = status_field(pid, "VmHWM")? as f64 / 1024.0;
        let threads = status_field(pid, "Threads")?;
        let jobs = table
            .lines()
            .skip(1)
            .filter(|l| !l.contains("last error"))
            .count();
        let stop = Instant::now();
        // SAFETY: a process this bench started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let (status, timed_out) = util::wait_timeout(&mut daemon, Duration::from_secs(20), false)?;
        let stopped = stop.elapsed().as_secs_f64();
        let verdict = |ok: bool| if ok { "ok" } else { "OVER" };
        let (stop_value, stop_unit) = match (status, timed_out) {
            (_, true) => (
                "-".to_string(),
                "did not exit within 20 s (killed)".to_string(),
            ),
            (Some(s), _) => (format!("{stopped:.2}"), format!("s to exit ({s})")),
            (None, _) => ("?".to_string(), String::new()),
        };
        super::print_table(
            &format!(
                "capagent daemon, {} ({jobs} jobs, {threads} threads), idle for {elapsed:.0} s:",
                config_path.display()
            ),
            &[
                crate::row!["measure", "value", "unit", "target", ""],
                crate::row![
                    "idle CPU",
                    format!("{cpu:.2}"),
                    "% of one core",
                    "< 1%",
                    verdict(cpu < 1.0)
                ],
                crate::row![
                    "RSS",
                    format!("{rss:.1}"),
                    "MiB",
                    "< 64 MiB",
                    verdict(rss < 64.0)
                ],
                crate::row!["peak RSS", format!("{hwm:.1}"), "MiB (VmHWM)"],
                crate::row!["SIGTERM", stop_value, stop_unit],
            ],
            &[1],
            &[],
        );
        Ok(())
    })();
    if daemon.try_wait()?.is_none() {
        util::kill(&mut daemon, false);
        let _ = daemon.wait();
    }
    drop(ns);
    if result.is_ok() {
        let _ = fs::remove_dir_all(&dir);
    }
    result
}
