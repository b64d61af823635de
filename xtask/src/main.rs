//! capagent's developer tasks: `cargo xtask <task>` (the alias is in .cargo/config.toml).
//!
//! * `setup`: install the nightly toolchain, rust-src, bpf-linker and the Debian packages the
//!   tests use (idempotent);
//! * `build [--release]`: build capagent with its eBPF programs;
//! * `test`: setup, unit tests, then the integration tests (root);
//! * `demo`: setup, build, and trace curl against a local HTTP server;
//! * `bench trace`: tracing overhead next to strace and bpftrace;
//! * `bench capture`: packet capture under iperf3 next to tcpdump;
//! * `bench proxy`: the recording proxies next to their peers;
//! * `bench daemon`: idle CPU and memory of `capagent daemon` with the example configuration;
//! * `bench intercept`: transparent interception next to plain forwarding;
//! * `bench tls`: `trace --tls` on a TLS request/response workload next to bpftrace;
//! * `install`: binary, systemd unit and example configuration into place;
//! * `fuzz [--secs N]`: every cargo-fuzz target for N seconds;
//! * `layers [--all]`: the edges between capagent's modules, checked against its layers.
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod fuzz;
mod install;
mod layers;
mod setup;
mod testcmd;
mod util;

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    about = "capagent's build, setup, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Install the nightly toolchain + rust-src, bpf-linker and the Debian packages the tests
    /// and benchmarks use. Skips whatever is already there.
    Setup,
    /// Build capagent, eBPF programs included (`cargo build -p capagent`).
    Build {
        /// Optimized build (target/release/capagent).
        #[arg(long)]
        release: bool,
    },
    /// Run setup, the unit tests and the integration tests (needs root). Prints
    /// `N passed, N failed` last.
    Test {
        /// After the tests, run every fuzz target for this many seconds (seeds and corpus
        /// replayed first; unoptimized builds); each target counts as one test in the
        /// tally. 0: no fuzzing.
        #[arg(long, default_value_t = 0)]
        fuzz_secs: u64,
        /// Extra arguments for the integration test harness (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// First run: setup, build, then trace curl fetching a page from a local HTTP server.
    Demo {
        /// Show JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
    /// Run every cargo-fuzz target (fuzz/) for a bounded time; fails on a crash.
    Fuzz(fuzz::FuzzArgs),
    /// Install capagent (release build), its systemd unit and the example configuration
    /// (kept when one exists): PREFIX/bin/capagent, PREFIX/lib/systemd/system/capagent.service,
    /// SYSCONFDIR/capagent/capagent.toml.
    Install(install::InstallArgs),
    /// The dependencies between capagent's top-level modules (`use crate::` and other
    /// paths), checked against the declared layers (xtask/src/layers.rs): fails on an
    /// upward edge or a cycle between sibling modules.
    Layers {
        /// Also print every edge, module by module (e.g. proxy::dial -> proxy::relay).
        #[arg(long)]
        all: bool,
        /// The source to read instead of agent/src (e.g. another checkout's, to compare).
        #[arg(long, value_name = "DIR")]
        src: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Cost of `capagent trace` on a traced TCP ping-pong and bulk stream, next to strace
    /// and bpftrace. Prints a table; asserts nothing.
    Trace(bench::trace::TraceBenchArgs),
    /// iperf3 over the loopback of a namespace of its own: bare, under `tcpdump -w` and under
    /// `capagent capture -w` (full snaplen and -s 96); throughput, packets in the file vs
    /// packets the kernel counted, drops. Needs root. Prints a table; asserts nothing.
    Capture(bench::capture::CaptureBenchArgs),
    /// Recording proxies next to their peers: HTTP proxy requests per second (wrk) direct,
    /// through `capagent proxy http` (recording off and on) and through tinyproxy. Prints a
    /// table; asserts nothing.
    Proxy(bench::proxy::ProxyBenchArgs),
    /// `capagent daemon` with the example configuration in a namespace of its own, idle:
    /// CPU (from /proc/PID/stat) and RSS next to their targets. Needs root. Asserts nothing.
    Daemon(bench::daemon::DaemonBenchArgs),
    /// Connection setup and throughput through `capagent intercept` (redirect, tproxy)
    /// next to plain forwarding, in a client/gateway/server namespace topology.
    Intercept(bench::intercept::InterceptBenchArgs),
    /// `capagent trace --tls` on a TLS request/response workload (64-byte messages over one
    /// connection, Python/OpenSSL both ends) next to a bpftrace script printing SSL_write/
    /// SSL_read buffers: round trips per second, events captured vs expected. Needs root for
    /// the traced rows. Prints a table; asserts nothing.
    Tls(bench::tls::TlsBenchArgs),
    /// TLS interception next to mitmproxy: HTTPS requests per second (wrk) straight to
    /// haproxy, through `capagent proxy reverse --tls` and through `mitmdump --mode reverse`
    /// (recording off and on, keep-alive and a connection per request), and one TLS stream
    /// through `capagent proxy forward --tls`. Prints a table; asserts nothing.
    TlsMitm(bench::tls_mitm::TlsMitmBenchArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::setup(),
        Task::Layers { all, src } => layers::layers(all, src),
        Task::Build { release } => {
            let mut cmd = util::cargo();
            cmd.args(["build", "-p", "capagent"]);
            if release {
                cmd.arg("--release");
            }
            util::run(&mut cmd)
        }
        Task::Test { args, fuzz_secs } => testcmd::test(&args, fuzz_secs),
        Task::Demo { json } => demo::demo(json),
        Task::Fuzz(args) => fuzz::fuzz(args),
        Task::Bench(Bench::Trace(args)) => bench::trace::trace(args),
        Task::Bench(Bench::Capture(args)) => bench::capture::capture(args),
        Task::Bench(Bench::Proxy(args)) => bench::proxy::proxy(args),
        Task::Bench(Bench::Daemon(args)) => bench::daemon::daemon(args),
        Task::Install(args) => install::install(args),
        Task::Bench(Bench::Intercept(args)) => bench::intercept::intercept(args),
        Task::Bench(Bench::Tls(args)) => bench::tls::tls(args),
        Task::Bench(Bench::TlsMitm(args)) => bench::tls_mitm::tls_mitm(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Bench, Cli, Task};

    /// The benches' flags hold together (clap's own checks), and the shared bench flags keep
    /// each bench's defaults: `bench tls` sets its `--timeout` with `mut_arg` on a flattened
    /// struct, which clap checks only when the command is built.
    #[test]
    fn bench_args() {
        Cli::command().debug_assert();
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().task;
        let Task::Bench(Bench::Trace(t)) = parse(&["xtask", "bench", "trace"]) else {
            panic!("not bench trace");
        };
        let Task::Bench(Bench::Tls(l)) = parse(&["xtask", "bench", "tls"]) else {
            panic!("not bench tls");
        };
        for (c, timeout) in [(&t.common, 600), (&l.common, 300)] {
            assert_eq!(c.timeout, timeout);
            assert_eq!((c.runs, c.bpftrace_rb_pages), (1, 8192));
            assert!(c.skip.is_empty() && c.capagent.is_none() && !c.no_pin);
        }
        let Task::Bench(Bench::Tls(l)) = parse(&[
            "xtask",
            "bench",
            "tls",
            "--skip",
            "capagent,bpftrace",
            "--timeout",
            "7",
            "--runs",
            "3",
            "--no-pin",
            "--capagent",
            "/x",
        ]) else {
            panic!("not bench tls");
        };
        assert!(l.common.skips("capagent") && l.common.skips("bpftrace"));
        assert!(!l.common.skips("untraced"));
        assert_eq!((l.common.timeout, l.common.runs), (7, 3));
        assert!(l.common.no_pin);
        assert_eq!(l.common.capagent_bin(), Err("skipped".to_string()));
    }
}
