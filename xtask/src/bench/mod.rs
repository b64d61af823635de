//! `cargo xtask bench ...`: one module per benchmark, and what they share: the flags of the
//! benches that compare tracers ([`TracerBenchArgs`]), the table printer ([`print_table`],
//! with the [`row!`](crate::row) macro), the median, the load average, the capagent binary,
//! a process's CPU time and the guard of the processes a bench starts.
//! Network namespaces, free ports and waiting for a condition come from capagent-testkit.

pub mod capture;
pub mod daemon;
pub mod intercept;
pub mod proxy;
pub mod tls;
pub mod tls_mitm;
pub mod trace;

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use capagent_testkit::{listening, wait_for};
use clap::Args;

use crate::util;

/// The flags of the benches that time a workload untraced, under capagent and under other
/// tracers (`bench trace`, `bench tls`), flattened (`#[command(flatten)]`) into each one's
/// arguments after its workload's own. A bench names its rows in the help of `--skip`, and
/// may say more of `--runs` or set another `--timeout` default, with
/// `#[command(mut_arg(...))]` on its struct (the `bench_args` test checks the defaults).
/// (`bench capture` pins iperf3 to `--cpu` and has no timeout: its flags are its own.)
#[derive(Args, Debug, Clone)]
pub struct TracerBenchArgs {
    /// Runs per row; the row shows the run with the median rate.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Rows to skip (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Give up on one run after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Use this capagent binary instead of building one (`cargo build --release`).
    #[arg(long)]
    pub capagent: Option<PathBuf>,
    /// Do not pin the workload's client and server to CPU 0. Pinned, a round trip costs CPU
    /// time only; unpinned, it mostly measures how fast an idle virtual CPU wakes up, which
    /// any tracer that keeps the CPUs busy "improves" (bpftrace then beats untraced).
    #[arg(long)]
    pub no_pin: bool,
    /// bpftrace's perf ring buffer, in pages per CPU (BPFTRACE_PERF_RB_PAGES). bpftrace's
    /// default (64) drops events, which would flatter its rate.
    #[arg(long, default_value_t = 8192)]
    pub bpftrace_rb_pages: u32,
}

impl TracerBenchArgs {
    /// Whether `--skip` names `row`.
    pub fn skips(&self, row: &str) -> bool {
        self.skip.iter().any(|s| s == row)
    }

    /// The capagent binary (see [`capagent_bin`]), or why there is none: `skipped` when
    /// `--skip` names capagent, else the build's error.
    pub fn capagent_bin(&self) -> std::result::Result<PathBuf, String> {
        if self.skips("capagent") {
            return Err("skipped".to_string());
        }
        capagent_bin(self.capagent.as_ref()).map_err(|e| format!("build failed: {e:#}"))
    }

    /// `--timeout`.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// Prints `table` (first row: the header) in left-aligned columns, a rule under the header,
/// after an empty line ([`print_table`] without title, right-aligned columns or notes).
pub fn print_aligned<R: AsRef<[String]>>(table: &[R]) {
    print_table("", table, &[], &[]);
}

/// The one table printer of the benches: after an empty line, `title` (when not empty), then
/// `table` (first row: the header) in columns two spaces apart, left-aligned but for the
/// columns listed in `right` (numbers), a rule as long as the header under it, then each of
/// `notes` on a line of its own. A row shorter than the header leaves the rest empty; a row
/// longer (such as one with an error after its cells) runs past the header.
pub fn print_table<R: AsRef<[String]>>(
    title: &str,
    table: &[R],
    right: &[usize],
    notes: &[String],
) {
    print!("{}", format_table(title, table, right, notes));
}

/// What [`print_table`] prints.
pub fn format_table<R: AsRef<[String]>>(
    title: &str,
    table: &[R],
    right: &[usize],
    notes: &[String],
) -> String {
    let columns = table.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .filter_map(|r| r.as_ref().get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::from("\n");
    if !title.is_empty() {
        out.push_str(title);
        out.push('\n');
    }
    for (i, row) in table.iter().enumerate() {
        let row = row.as_ref();
        let cells: Vec<String> = (0..columns.max(row.len()))
            .map(|c| {
                let cell = row.get(c).map_or("", String::as_str);
                let w = widths.get(c).copied().unwrap_or(0);
                if right.contains(&c) {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        let line = cells.join("  ");
        let line = line.trim_end();
        out.push_str(line);
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(line.chars().count()));
            out.push('\n');
        }
    }
    for n in notes {
        out.push_str(n);
        out.push('\n');
    }
    out
}

/// A table row of strings.
#[macro_export]
macro_rules! row {
    ($($cell:expr),* $(,)?) => {
        vec![$($cell.to_string()),*]
    };
}

/// The capagent binary a bench runs: `given` (its `--capagent`), or a release build.
pub fn capagent_bin(given: Option<&PathBuf>) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p.clone()),
        None => Ok(util::build_bins("capagent", &["capagent"], true)?
            .remove("capagent")
            .expect("built")),
    }
}

/// A process of a bench's, killed (with its process group when [`Guard::spawn`] made one)
/// and reaped on drop.
pub struct Guard {
    pub child: Child,
    group: bool,
}

impl Guard {
    /// Spawns `cmd` (stdin from /dev/null) in a process group of its own, so that dropping
    /// the guard also kills what it forks (socat's per-connection processes).
    pub fn spawn(cmd: &mut Command) -> Result<Guard> {
        let child = cmd
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run {}", util::display(cmd)))?;
        Ok(Guard { child, group: true })
    }

    /// Guards a child spawned by the caller (in the bench's process group).
    pub fn of(child: Child) -> Guard {
        Guard {
            child,
            group: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` until the process (or any process in its network namespace)
    /// has a TCP socket listening on `port` (from /proc/PID/net/tcp: probing with a
    /// connection would reach the server behind a proxy); fails when it exits first.
    pub fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let pid = self.pid();
        wait_for(timeout, || {
            if listening(pid, port) {
                return Some(Ok(()));
            }
            match self.child.try_wait() {
                Ok(Some(st)) => Some(Err(anyhow!(
                    "exited ({st}) before listening on port {port}"
                ))),
                Ok(None) => None,
                Err(e) => Some(Err(e.into())),
            }
        })
        .unwrap_or_else(|| {
            bail!(
                "nothing listens on port {port} after {} s",
                timeout.as_secs()
            )
        })
    }

    /// SIGTERM, then waits up to 30 s for a clean exit (capagent writes out its records).
    pub fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our child, not reaped yet (so its pid is not reused).
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let (st, timed_out) =
            util::wait_timeout(&mut self.child, Duration::from_secs(30), self.group)?;
        if timed_out {
            bail!("did not stop within 30 s of SIGTERM");
        }
        if !st.is_some_and(|s| s.success()) {
            bail!("exited with {st:?}");
        }
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        util::kill(&mut self.child, self.group);
        let _ = self.child.wait();
    }
}

/// The run with the median `key` (of an even count, the upper of the two middle ones), or
/// the first error.
pub fn median_run<T>(
    runs: Vec<std::result::Result<T, String>>,
    key: impl Fn(&T) -> f64,
) -> std::result::Result<T, String> {
    let mut ok = Vec::new();
    for r in runs {
        ok.push(r?);
    }
    if ok.is_empty() {
        return Err("no run".to_string());
    }
    ok.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = ok.len() / 2;
    Ok(ok.swap_remove(mid))
}

/// The median of `v` (of an even count, the mean of the two middle values).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The CPU time (user + system, every thread) of process `pid` so far, in seconds, from
/// `/proc/PID/stat`.
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command: state is field 3; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |x| x.1)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

/// The machine's idle (idle + iowait) and total CPU time so far, in seconds, from
/// `/proc/stat`.
pub fn machine_cpu() -> Result<(f64, f64)> {
    let stat = fs::read_to_string("/proc/stat")?;
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(|v| v.parse::<f64>())
        .collect::<std::result::Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: f64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3).copied().unwrap_or(0.0) + cpu.get(4).copied().unwrap_or(0.0);
    let hz = clock_ticks();
    Ok((idle / hz, total / hz))
}

/// Clock ticks per second of the CPU times in /proc.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// /dev/shm when it exists: where benches write their big output files (tmpfs, so that the
/// disk is not what is measured).
pub fn tmpfs_dir() -> Option<PathBuf> {
    let d = PathBuf::from("/dev/shm");
    d.is_dir().then_some(d)
}

/// The 1-minute load average, as a hint of how noisy the numbers are.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn medians() {
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        let runs = |v: &[f64]| v.iter().map(|x| Ok(*x)).collect::<Vec<_>>();
        assert_eq!(super::median_run(runs(&[3.0, 1.0, 2.0]), |x| *x), Ok(2.0));
        assert_eq!(
            super::median_run(runs(&[4.0, 1.0, 2.0, 3.0]), |x| *x),
            Ok(3.0)
        );
        assert_eq!(
            super::median_run(vec![Ok(1.0), Err("x".to_string())], |x| *x),
            Err("x".to_string())
        );
    }

    #[test]
    fn tables() {
        let t = vec![
            row!["path", "req/s", "notes"],
            row!["direct", 12345, ""],
            row!["proxy", 7, "slower than all"],
            row!["broken", "-", "-", "an error"],
        ];
        assert_eq!(
            super::format_table("title", &t, &[1], &["a note".to_string()]),
            "\ntitle\n\
             path    req/s  notes\n\
             --------------------\n\
             direct  12345\n\
             proxy       7  slower than all\n\
             broken      -  -                an error\n\
             a note\n"
        );
    }
}
