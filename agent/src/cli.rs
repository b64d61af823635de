//! Command-line interface. Names and flags here are the interface users' scripts rely on.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "capagent",
    version,
    about = "Capture an application's network traffic"
)]
pub struct Cli {
    /// More diagnostics on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trace the socket syscalls of processes, payload bytes included (needs root).
    Trace(TraceArgs),
    /// Capture the packets of network interfaces with eBPF TC programs (needs root).
    Capture(CaptureArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// strace-like lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  sudo capagent trace --pid 1234\n  sudo capagent trace -- curl -s http://127.0.0.1:8000/\n  sudo capagent trace --comm nginx --format json -o nginx.jsonl\n  sudo capagent trace -w curl.pcapng -- curl -s http://127.0.0.1:8000/\n  sudo capagent trace --all --events connect"
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
    /// Do not print the summary at exit.
    #[arg(long)]
    pub no_summary: bool,
    /// Command to start and trace from its first syscall.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  sudo capagent capture -i lo\n  sudo capagent capture -i eth0 -i lo -w all.pcapng --duration 10\n  sudo capagent capture -i eth0 -s 96 -c 100\n  sudo capagent capture -i lo --comm curl -w curl.pcapng\n  sudo capagent capture -i lo -w curl.pcapng -- curl -s http://127.0.0.1:8000/\n  sudo capagent capture -i eth0 tcp port 443 and host 10.1.2.3\n  sudo capagent capture -i lo -w syn.pcapng 'tcp[tcpflags] & tcp-syn != 0'"
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
    /// Size of the kernel ring buffer in KiB (power of two, at least 4).
    #[arg(long, default_value_t = 32768, value_name = "KIB")]
    pub ring_kib: u32,
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
