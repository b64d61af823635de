//! `capagent trace ARGS`: the arguments, the options they make (which a daemon job of kind
//! `trace` uses too), and running the trace from them.

use std::{io, path::PathBuf, process::ExitStatus};

use anyhow::Context as _;
use clap::Args;

use super::{run::TraceOptions, summary::Summary};
use crate::{
    control::Control,
    model::Event,
    output::{
        EventWriter, FLUSH_EVERY, FanOut, FlushEvery, Format, Writer, pcapng::PcapngWriter,
        text::TextConfig,
    },
    process::ChildStdout,
};

/// The summary is a writer too: next to the session's writers, it adds up what they write.
impl EventWriter for Summary {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        self.add(ev);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  sudo capagent trace --pid 1234\n  sudo capagent trace -- curl -s http://127.0.0.1:8000/\n  sudo capagent trace --comm nginx --format json -o nginx.jsonl\n  sudo capagent trace -w curl.pcapng -- curl -s http://127.0.0.1:8000/\n  sudo capagent trace --all --events connect\n  sudo SSLKEYLOGFILE=keys.log capagent trace -w tls.pcapng --tls-keylog keys.log -- curl -s https://127.0.0.1:8443/"
)]
pub struct TraceArgs {
    /// Trace this running process (all its threads); repeatable.
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace processes with this name (the process's name, as in /proc/PID/comm), including
    /// ones started later.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Trace every process on the system.
    #[arg(long)]
    pub all: bool,
    /// Also trace children of traced processes (default on for `-- CMD`).
    #[arg(short = 'f', long, overrides_with = "no_follow_forks")]
    pub follow_forks: bool,
    /// Do not trace children of traced processes.
    #[arg(long, overrides_with = "follow_forks")]
    pub no_follow_forks: bool,
    /// Report only these syscalls (comma-separated): socket, connect, bind, listen, accept,
    /// send, recv (all send/recv-type calls), data (send and recv), close, shutdown, or a
    /// syscall name such as sendto or read. Default: all.
    #[arg(short, long, value_delimiter = ',', value_name = "LIST")]
    pub events: Vec<String>,
    /// Payload bytes captured per call; 0 = the whole payload.
    #[arg(short = 's', long, default_value_t = 8192, value_name = "BYTES")]
    pub snaplen: u32,
    /// Payload bytes shown per call in text output (0 = all that was captured; JSON always
    /// carries everything captured).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub preview: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write records to FILE instead of stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write the conversation as a pcapng file of synthetic packets (for Wireshark or
    /// tshark); `-` writes it to stdout, and then the text/JSON records go only to the -o
    /// file (nowhere without -o).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Size of the kernel ring buffer in KiB (power of two, at least 4).
    #[arg(long, default_value_t = 32768, value_name = "KIB")]
    pub ring_kib: u32,
    /// Never pause a traced process: when the ring buffer is full, drop records (counted and
    /// reported). By default a traced process whose records fill half the ring buffer is
    /// stopped until capagent has caught up, so nothing is lost (always allowed with --all).
    #[arg(long)]
    pub allow_loss: bool,
    /// Also record the plaintext of TLS connections: uprobes on the TLS libraries the traced
    /// processes use (OpenSSL, GnuTLS, Go crypto/tls), one record per TLS read or write.
    #[arg(long)]
    pub tls: bool,
    /// With --tls (implied): hide the ciphertext records of connections that carry TLS
    /// plaintext.
    #[arg(long)]
    pub tls_only: bool,
    /// When the trace ends, put the TLS key log lines of FILE (SSLKEYLOGFILE format, as curl,
    /// Firefox or `openssl s_client -keylogfile` write it during the trace) into the -w file,
    /// in a Decryption Secrets Block before the packets, so that Wireshark and tshark decrypt
    /// the traced TLS connections (their ciphertext) by themselves.
    #[arg(long, value_name = "FILE")]
    pub tls_keylog: Option<PathBuf>,
    /// Record the user-space call stack of the calling thread at each reported call (with
    /// --events, only those): frames under the event (text), a `stack` array (JSON), the
    /// packet comment (pcapng).
    #[arg(long)]
    pub stack: bool,
    /// With --stack: bytes of the user stack copied per call, in KiB (at most 64).
    #[arg(long, value_name = "KIB", default_value_t = 16, requires = "stack")]
    pub stack_size: u32,
    /// With --stack: size of the stack ring buffer in KiB, a power of two (hidden: tests fill
    /// it to check stacks are dropped, never payload records).
    #[arg(long, value_name = "KIB", default_value_t = 8192, hide = true)]
    pub stack_ring_kib: u32,
    /// Do not print the summary at exit.
    #[arg(long)]
    pub no_summary: bool,
    /// Command to start and trace from its first syscall.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl TraceArgs {
    /// What `capagent trace ARGS` traces (and a daemon job of kind `trace`).
    pub fn options(&self) -> anyhow::Result<TraceOptions> {
        let follow_forks = if self.no_follow_forks {
            false
        } else {
            self.follow_forks || !self.command.is_empty()
        };
        let duration = crate::control::duration_limit(self.duration)?;
        crate::mitm::keylog::check_tls_keylog(self.tls_keylog.as_deref(), self.write.as_deref())?;
        let opts = TraceOptions {
            pids: self.pids.clone(),
            comm: self.comm.clone(),
            all: self.all,
            command: self.command.clone(),
            command_stdout: ChildStdout::for_records(crate::output::records_on_stdout(
                self.output.as_deref(),
                self.write.as_deref(),
            )),
            follow_forks,
            syscalls: super::run::parse_events(&self.events)?,
            snaplen: self.snaplen,
            ring_bytes: self.ring_kib.saturating_mul(1024),
            duration,
            lossless: !self.allow_loss && !self.all,
            tls: self.tls || self.tls_only,
            tls_only: self.tls_only,
            stack: self.stack,
            stack_size: self.stack_size.saturating_mul(1024),
            stack_ring_bytes: self.stack_ring_kib.saturating_mul(1024),
        };
        if !self.stack_ring_kib.is_power_of_two() || self.stack_ring_kib < 4 {
            anyhow::bail!("--stack-ring-kib must be a power of two of at least 4");
        }
        if self.stack && self.stack_size > 64 {
            anyhow::bail!("--stack-size is at most 64 (KiB), not {}", self.stack_size);
        }
        if opts.pids.is_empty() && opts.comm.is_none() && !opts.all && opts.command.is_empty() {
            return Err(super::run::TraceError::NoTarget.into());
        }
        Ok(opts)
    }
}

/// Runs `capagent trace ARGS`: the trace with its writers, status line and summary. Returns
/// the exit status of the `-- CMD`, when there is one.
pub fn run(args: &TraceArgs) -> anyhow::Result<Option<ExitStatus>> {
    let opts = args.options()?;
    if opts.stack && opts.all {
        eprintln!(
            "capagent: warning: --stack with --all copies the user stack of every reported call of every process: costly (CPU, ring space)"
        );
    }
    let pcap_stdout = args.write.as_deref().is_some_and(|p| p.as_os_str() == "-");
    let mut writers: Vec<Box<dyn EventWriter>> = Vec::new();
    // With `-w -` stdout carries the pcapng: text/JSON go only to an -o file.
    if args.output.is_some() || !pcap_stdout {
        let text = TextConfig {
            max_preview: if args.preview == 0 {
                usize::MAX
            } else {
                args.preview
            },
            ..TextConfig::default()
        };
        let w =
            Writer::open(args.format, args.output.as_deref(), text).with_context(|| match &args
                .output
            {
                Some(p) => format!("cannot open {}", p.display()),
                None => "cannot write to stdout".to_string(),
            })?;
        writers.push(Box::new(w));
    }
    if let Some(p) = &args.write {
        let w = PcapngWriter::open(p).with_context(|| {
            if pcap_stdout {
                "cannot write pcapng to stdout".to_string()
            } else {
                format!("cannot create {}", p.display())
            }
        })?;
        writers.push(Box::new(w));
    }
    // Records to files: a status line on a terminal.
    let status = crate::output::status::StatusLine::start(
        !crate::output::records_on_stdout(args.output.as_deref(), args.write.as_deref()),
        crate::output::status::Unit::Events,
    );
    if let Some(s) = &status {
        writers.push(Box::new(s.counter()));
    }
    // Files are kept readable while tracing (tail -f) without a syscall per event.
    let mut files = FlushEvery::new(FanOut(writers), FLUSH_EVERY);
    let mut summary = Summary::new();
    let outcome = super::run::run(
        &opts,
        &Control::on_signals(),
        &mut FanOut(vec![&mut summary as &mut dyn EventWriter, &mut files]),
    );
    drop(status);
    files.flush().context("writing output")?;
    // The pcapng writer writes what it still holds when dropped: the file is complete now.
    drop(files);
    let outcome = outcome?;
    if !args.no_summary {
        summary.set_tls(opts.tls);
        eprint!("{}", summary.render());
        if opts.tls {
            eprint!(
                "{}",
                super::tls::attach::render_reports(
                    &outcome.tls_libs,
                    super::summary::RENDER_MAX_ROWS
                )
            );
        }
        if let Some(c) = &outcome.stacks {
            eprintln!(
                "capagent: stacks: {} captured, {} dropped (stack ring full), {} unpaired, {} frames unresolved",
                c.captured, c.dropped, c.orphans, c.unresolved
            );
        }
        if outcome.read_errors > 0 {
            eprintln!(
                "capagent: {} payload reads failed in the kernel (pages not resident); those calls are marked truncated",
                outcome.read_errors
            );
        }
    }
    if let (Some(keylog), Some(out)) = (&args.tls_keylog, &args.write) {
        let n = crate::mitm::keylog::embed_in_pcapng(keylog, out)?;
        if !args.no_summary {
            eprintln!(
                "capagent: {n} TLS key log lines from {} put into {}",
                keylog.display(),
                out.display()
            );
        }
    }
    Ok(outcome.exit_status)
}
