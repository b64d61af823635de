//! Command-line interface. Names and flags here are the interface users' scripts rely on.
//!
//! Each capability declares its own arguments and turns them into its options, in its
//! `command` module (`trace::command::TraceArgs`...); this composes them into the command
//! line, with the daemon's own commands.

use clap::{Args, Parser, Subcommand};

pub use crate::{
    capture::command::CaptureArgs, dns::command::DnsArgs, intercept::command::InterceptArgs,
    mitm::command::CaArgs, proxy::command::ProxyArgs, trace::command::TraceArgs,
};

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
    /// capagent's CA for TLS interception (--tls): create it, show it, trust it.
    Ca(CaArgs),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// clap's own checks of the whole command tree (conflicting flags, bad defaults, ids
    /// used twice...), which it otherwise makes only when a command line reaches them.
    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }
}
