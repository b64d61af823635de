//! `capagent capture ARGS`: the arguments, the options they make (which a daemon job of kind
//! `capture` uses too), and running the capture from them.

use std::{path::PathBuf, process::ExitStatus};

use clap::Args;

use super::{CaptureOptions, Selection, filter::Filter, session::SessionOptions};

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  sudo capagent capture -i lo\n  sudo capagent capture -i eth0 -i lo -w all.pcapng --duration 10\n  sudo capagent capture -i eth0 -s 96 -c 100\n  sudo capagent capture -i lo --comm curl -w curl.pcapng\n  sudo capagent capture -i lo -w curl.pcapng -- curl -s http://127.0.0.1:8000/\n  sudo capagent capture -i eth0 tcp port 443 and host 10.1.2.3\n  sudo capagent capture -i lo -w syn.pcapng 'tcp[tcpflags] & tcp-syn != 0'\n  sudo SSLKEYLOGFILE=keys.log capagent capture -i lo -w tls.pcapng --tls-keylog keys.log -- curl -s https://127.0.0.1:8443/"
)]
pub struct CaptureArgs {
    /// Capture on this interface; repeatable.
    #[arg(short = 'i', long = "interface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,
    /// Bytes captured per packet, from the Ethernet header on (at most 65535).
    #[arg(short = 's', long, default_value_t = 65535, value_name = "BYTES")]
    pub snaplen: u32,
    /// Write the packets to a pcapng file (`-` for stdout) instead of printing one line each.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Stop after this many packets (counted before the --pid/--comm selection).
    #[arg(short = 'c', long, value_name = "COUNT")]
    pub count: Option<u64>,
    /// Keep only the packets of this process's sockets, including connections it opened
    /// before the capture began; repeatable (selected in the kernel).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Keep only the packets of processes with this name (as in /proc/PID/comm).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Capture incoming packets with an XDP program instead of the TC ingress hook (before
    /// the kernel allocates socket buffers; outgoing packets stay on TC).
    #[arg(long)]
    pub xdp: bool,
    /// With --pid: also the packets of the processes it forks from now on (always with
    /// `-- CMD`).
    #[arg(short = 'f', long)]
    pub follow_forks: bool,
    /// Size of the kernel ring buffer in KiB (power of two, at least 4). The default, 64 MiB,
    /// holds about 50 ms of a 10 Gbit/s link at full snap length: the longest a write into a
    /// tmpfs file was seen to fall behind the link.
    #[arg(long, default_value_t = 65536, value_name = "KIB")]
    pub ring_kib: u32,
    /// When the capture ends, put the TLS key log lines of FILE (SSLKEYLOGFILE format, as
    /// curl, Firefox or `openssl s_client -keylogfile` write it during the capture) into the
    /// -w file, in a Decryption Secrets Block before the packets, so that Wireshark and tshark
    /// decrypt those sessions by themselves (like `editcap --inject-secrets`).
    #[arg(long, value_name = "FILE")]
    pub tls_keylog: Option<PathBuf>,
    /// Do not print the summary at exit.
    #[arg(long)]
    pub no_summary: bool,
    /// Filter expression, in tcpdump's syntax (the same as the FILTER EXPRESSION words).
    #[arg(long = "filter", value_name = "EXPR", conflicts_with = "filter_words")]
    pub filter: Option<String>,
    /// Capture only the packets this expression selects (tcpdump's syntax: host, net, port,
    /// src/dst, tcp/udp/icmp, and/or/not, parentheses...); the words are joined by spaces,
    /// as tcpdump does. Evaluated in the kernel, before a packet is copied.
    #[arg(value_name = "FILTER EXPRESSION")]
    pub filter_words: Vec<String>,
    /// Command to start once the capture is live; only its packets (and its children's)
    /// are kept, and the capture ends when it exits (with its exit status).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl CaptureArgs {
    /// What `capagent capture ARGS` captures, and its session options (a daemon job of kind
    /// `capture` uses them too).
    pub fn options(&self) -> anyhow::Result<(CaptureOptions, SessionOptions)> {
        let duration = crate::control::duration_limit(self.duration)?;
        let opts = CaptureOptions {
            ifaces: self.ifaces.clone(),
            snaplen: self.snaplen,
            ring_bytes: self.ring_kib.saturating_mul(1024),
            duration,
            count: self.count,
            select: Selection {
                pids: self.pids.clone(),
                comm: self.comm.clone(),
                follow_forks: self.follow_forks,
            },
            xdp: self.xdp,
            tc_mode: match std::env::var(super::attach::TC_MODE_ENV) {
                Ok(v) => super::attach::Mode::parse_forced(&v)?,
                Err(_) => None,
            },
            filter: match &self.filter {
                Some(e) => Filter::expression(std::slice::from_ref(e)),
                None => Filter::expression(&self.filter_words),
            },
        };
        crate::mitm::keylog::check_tls_keylog(self.tls_keylog.as_deref(), self.write.as_deref())?;
        let session = SessionOptions {
            write: self.write.clone(),
            no_summary: self.no_summary,
            command: self.command.clone(),
            tls_keylog: self.tls_keylog.clone(),
        };
        Ok((opts, session))
    }
}

/// Runs `capagent capture ARGS`. Returns the exit status of the `-- CMD`, when there is one.
pub fn run(args: &CaptureArgs) -> anyhow::Result<Option<ExitStatus>> {
    let (opts, session) = args.options()?;
    for &pid in &args.pids {
        crate::process::check_pid(pid)?;
    }
    let outcome = super::session::run(&opts, &session)?;
    Ok(outcome.exit_status)
}
