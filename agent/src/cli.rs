//! Command-line interface. Names and flags here are the interface users' scripts rely on.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::output::Format;

/// The daemon's configuration file when none is given.
pub const DEFAULT_CONFIG: &str = "/etc/capagent/capagent.toml";

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
    /// Run a recording proxy between clients and servers (no root needed).
    Proxy(ProxyArgs),
    /// DNS server answering chosen names with chosen addresses (spoofing), forwarding the
    /// rest; records every query and answer (no root needed above port 1023).
    Dns(DnsArgs),
    /// Pull traffic that does not go through a proxy into capagent's recording relay:
    /// nftables redirect or tproxy on a gateway, or per process with eBPF (needs root).
    Intercept(InterceptArgs),
    /// Remove what a killed `capagent intercept` left (nftables tables, policy routing
    /// rules and routes, cgroup programs of capagent); nothing else is touched (needs root).
    Cleanup,
    /// Run the jobs of a configuration file as a service (systemd Type=notify): rotating
    /// output files, metrics, reload on SIGHUP, clean stop on SIGTERM.
    Daemon(DaemonArgs),
    /// Show the jobs of a running daemon (state and counters, from its metrics endpoint).
    Status(StatusArgs),
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  sudo capagent daemon --config /etc/capagent/capagent.toml\n  capagent daemon --check --config capagent.toml\n  systemctl reload capagent     # SIGHUP: re-read the file"
)]
pub struct DaemonArgs {
    /// The configuration file (TOML: [daemon] settings and [[job]] tables).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: std::path::PathBuf,
    /// Only check the file (FILE:LINE:COLUMN: message on errors, exit status 1).
    #[arg(long)]
    pub check: bool,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The daemon's metrics endpoint (IP:PORT). Default: the `metrics` of the configuration
    /// file, else 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// The daemon's configuration file (default: /etc/capagent/capagent.toml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
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

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterceptMode {
    /// nftables NAT redirect to a local listener; original destination from conntrack.
    Redirect,
    /// nftables tproxy with policy routing and transparent listeners (TCP, and UDP with --udp).
    Tproxy,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InterceptAs {
    /// Relay and record the bytes as they are.
    #[default]
    Raw,
    /// Treat connections as HTTP/1.1: the reverse HTTP proxy's handler serves them, with
    /// the original destination as server.
    Http,
    /// Connections are made to a SOCKS proxy: capagent's SOCKS server answers them and
    /// records each target the application asks for.
    Socks,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  sudo capagent intercept --mode redirect --iface eth1 --port 80 -w gw.pcapng\n  sudo capagent intercept --mode tproxy --iface eth1 --udp --port 53 --format json\n  sudo capagent intercept --pid 1234 --port 443 -w app.pcapng\n  sudo capagent intercept -w curl.pcapng -- curl -s http://192.0.2.10/"
)]
pub struct InterceptArgs {
    /// Gateway mode: how forwarded traffic arriving on --iface is pulled in.
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<InterceptMode>,
    /// The interface whose incoming traffic is intercepted (--mode).
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    /// Only connections to this destination port; repeatable (default: all ports).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Only connections to this destination network (ADDRESS[/PREFIX]); repeatable.
    #[arg(long = "dst", value_name = "CIDR")]
    pub dsts: Vec<String>,
    /// Also UDP (--mode tproxy).
    #[arg(long)]
    pub udp: bool,
    /// --mode redirect: also this host's own connections leaving through --iface.
    #[arg(long)]
    pub local: bool,
    /// Per-process mode: this process's TCP connections (all its threads, and the children
    /// it forks from now on); repeatable.
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Per-process mode: every process of this cgroup (v2 path, absolute or relative to the
    /// hierarchy's root).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// What handles a connection: the raw relay, the HTTP-aware or the SOCKS-aware proxy.
    #[arg(long = "as", value_enum, default_value_t = InterceptAs::Raw, value_name = "KIND")]
    pub handler: InterceptAs,
    #[command(flatten)]
    pub record: RecordArgs,
    /// Seconds without traffic in either direction after which a relayed connection is
    /// closed (0 = never).
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub idle_timeout: f64,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Per-process mode: start this command and intercept its connections (and its
    /// children's) from the first one; capagent exits with its status when it ends.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    #[command(subcommand)]
    pub kind: ProxyCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ProxyCommand {
    /// Forward TCP (and with --udp, UDP) ports to fixed targets.
    Forward(ForwardArgs),
    /// SOCKS 4, 4a and 5 server (CONNECT, BIND, UDP ASSOCIATE).
    Socks(SocksArgs),
    /// HTTP forward proxy: absolute-URI requests and CONNECT tunnels.
    Http(HttpArgs),
    /// Reverse HTTP proxy: requests go to --to, or to the --route their Host names.
    Reverse(ReverseArgs),
}

/// Where the records of what a proxy or server relays go.
#[derive(Args, Debug, Clone)]
pub struct RecordArgs {
    /// Output format of the records.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write records to FILE instead of stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write the relayed conversations as a pcapng file of synthetic packets (client to
    /// target); `-` writes it to stdout, and then the records go only to the -o file.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Payload bytes shown per record in text output (0 = all; JSON always carries all).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub preview: usize,
    /// Record nothing (no records on stdout, no files): relay only.
    #[arg(long, conflicts_with_all = ["output", "write"])]
    pub no_record: bool,
}

/// Options every proxy shares: records, upstream chaining, limits.
#[derive(Args, Debug, Clone)]
pub struct ProxyCommon {
    #[command(flatten)]
    pub record: RecordArgs,
    /// Reach every target through this SOCKS5 proxy (`socks5://HOST:PORT`; names are
    /// resolved by that proxy).
    #[arg(long, value_name = "URL")]
    pub upstream_proxy: Option<String>,
    /// Most client connections relayed at once; more are closed at once.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_conns: usize,
    /// Seconds a client has to complete its request (and a target to accept a connection).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub handshake_timeout: f64,
    /// Seconds without traffic in either direction after which a connection is closed
    /// (0 = never).
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub idle_timeout: f64,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  capagent proxy forward --listen 127.0.0.1:4444 --to example.com:80\n  capagent proxy forward --map 127.0.0.1:1099=10.0.0.5:1099 --map 127.0.0.1:50000=10.0.0.5:50000 -w rmi.pcapng\n  capagent proxy forward --udp --listen 127.0.0.1:5353 --to 192.0.2.53:53 --format json"
)]
pub struct ForwardArgs {
    /// Listen on this address (loopback unless written out); pairs with the --to at the same
    /// position; repeatable.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Target of the --listen at the same position (HOST:PORT); repeatable.
    #[arg(long = "to", value_name = "HOST:PORT")]
    pub to: Vec<String>,
    /// LISTEN=HOST:PORT: one more listener and its target; repeatable.
    #[arg(long = "map", value_name = "LISTEN=HOST:PORT")]
    pub map: Vec<String>,
    /// Also forward UDP datagrams on the same addresses.
    #[arg(long)]
    pub udp: bool,
    #[command(flatten)]
    pub common: ProxyCommon,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  capagent proxy socks --listen 127.0.0.1:1080 -w socks.pcapng\n  capagent proxy socks --auth user:secret --format json -o socks.jsonl\n  curl --socks5-hostname 127.0.0.1:1080 http://example.com/"
)]
pub struct SocksArgs {
    /// Listen on this address (non-loopback addresses print a warning).
    #[arg(long, default_value = "127.0.0.1:1080", value_name = "ADDR")]
    pub listen: String,
    /// Require SOCKS5 username/password authentication (RFC 1929) with USER:PASS; SOCKS4
    /// requests, which cannot carry a password, are then refused.
    #[arg(long, value_name = "USER:PASS")]
    pub auth: Option<String>,
    #[command(flatten)]
    pub common: ProxyCommon,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  capagent proxy http --listen 127.0.0.1:8080 -w http.pcapng\n  capagent proxy http --connect-ports 443,8443 --auth user:secret\n  curl -x http://user:secret@127.0.0.1:8080 http://example.com/"
)]
pub struct HttpArgs {
    /// Listen on this address (non-loopback addresses print a warning).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// Ports CONNECT tunnels may reach (comma-separated); others get 403.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "443",
        value_name = "PORTS"
    )]
    pub connect_ports: Vec<u16>,
    /// Require Proxy-Authorization Basic with USER:PASS (407 otherwise).
    #[arg(long, value_name = "USER:PASS")]
    pub auth: Option<String>,
    #[command(flatten)]
    pub common: ProxyCommon,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  capagent proxy reverse --listen 127.0.0.1:8000 --to 10.0.0.5:80 -w app.pcapng\n  capagent proxy reverse --route api.example.com=127.0.0.1:9001 --route www.example.com=127.0.0.1:9002\n  curl -H 'Host: api.example.com' http://127.0.0.1:8000/"
)]
pub struct ReverseArgs {
    /// Listen on this address (non-loopback addresses print a warning).
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
    pub listen: String,
    /// Server of the requests no --route matches (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    pub to: Option<String>,
    /// NAME=HOST:PORT: requests whose Host is NAME (port ignored unless NAME has one) go to
    /// HOST:PORT; repeatable.
    #[arg(long = "route", value_name = "NAME=HOST:PORT")]
    pub routes: Vec<String>,
    /// Send the server's HOST:PORT as Host instead of the client's Host.
    #[arg(long)]
    pub rewrite_host: bool,
    #[command(flatten)]
    pub common: ProxyCommon,
}

/// What names no --name pattern matches get when there is no --upstream.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Unmatched {
    /// NXDOMAIN: the name does not exist.
    #[default]
    Nxdomain,
    /// REFUSED: not served here (resolvers try their next server).
    Refused,
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  capagent dns --listen 127.0.0.1:5353 --answer 127.0.0.1\n  capagent dns --answer 127.0.0.1 --answer6 ::1 --name '*.example.com' --upstream 192.0.2.53:53 -w dns.pcapng\n  dig @127.0.0.1 -p 5353 www.example.com"
)]
pub struct DnsArgs {
    /// Listen on this address, UDP and TCP (non-loopback addresses print a warning).
    #[arg(long, default_value = "127.0.0.1:5353", value_name = "ADDR")]
    pub listen: String,
    /// Address of the A answers.
    #[arg(long, value_name = "IPV4")]
    pub answer: std::net::Ipv4Addr,
    /// Address of the AAAA answers (without it, spoofed names have no AAAA record).
    #[arg(long, value_name = "IPV6")]
    pub answer6: Option<std::net::Ipv6Addr>,
    /// Spoof only names matching PATTERN: NAME, *.NAME (names below NAME) or *; repeatable.
    /// Default: every name.
    #[arg(long = "name", value_name = "PATTERN")]
    pub names: Vec<String>,
    /// Forward queries for other names to this DNS server (IP:PORT), over UDP or TCP as the
    /// client asked.
    #[arg(long, value_name = "IP:PORT")]
    pub upstream: Option<String>,
    /// Answer for other names when there is no --upstream.
    #[arg(long, value_enum, default_value_t = Unmatched::Nxdomain)]
    pub unmatched: Unmatched,
    /// TTL of the spoofed answers, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub ttl: u32,
    /// Seconds the upstream server has to answer (then SERVFAIL).
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub upstream_timeout: f64,
    #[command(flatten)]
    pub common: ProxyCommon,
}
