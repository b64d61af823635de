//! `capagent dns ARGS`: the arguments, the options they make (which a daemon job of kind
//! `dns` uses too), and serving from them.

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::proxy::{
    self,
    command::{ProxyCommon, Service},
};

/// What names no --name pattern matches get when there is no --upstream.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnmatchedArg {
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
    #[arg(long, value_enum, default_value_t = UnmatchedArg::Nxdomain)]
    pub unmatched: UnmatchedArg,
    /// TTL of the spoofed answers, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub ttl: u32,
    /// Seconds the upstream server has to answer (then SERVFAIL).
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub upstream_timeout: f64,
    #[command(flatten)]
    pub common: ProxyCommon,
}

impl DnsArgs {
    /// What `capagent dns ARGS` serves, with its options (a daemon job of kind `dns` uses them
    /// too).
    pub fn service(&self) -> anyhow::Result<(proxy::Options, Service)> {
        let opts = self.common.options()?;
        if !(self.upstream_timeout.is_finite() && self.upstream_timeout > 0.0) {
            anyhow::bail!("--upstream-timeout must be a positive number of seconds");
        }
        let upstream = match &self.upstream {
            Some(u) => Some(u.parse::<std::net::SocketAddr>().map_err(|_| {
                anyhow::anyhow!("--upstream {u:?}: expected IP:PORT ([IPv6]:PORT)")
            })?),
            None => None,
        };
        let policy = super::Policy {
            v4: self.answer,
            v6: self.answer6,
            ttl: self.ttl,
            names: self
                .names
                .iter()
                .map(|n| super::Pattern::parse(n))
                .collect::<Result<_, _>>()?,
            upstream: upstream.is_some(),
            unmatched: match self.unmatched {
                UnmatchedArg::Nxdomain => super::Unmatched::NxDomain,
                UnmatchedArg::Refused => super::Unmatched::Refused,
            },
        };
        let dns = super::DnsOptions {
            listen: proxy::listen_addr(&self.listen)?,
            policy,
            upstream,
            upstream_timeout: Duration::from_secs_f64(self.upstream_timeout),
        };
        Ok((opts, Service::new(|ctx| super::run(dns, ctx))))
    }
}

/// Runs `capagent dns ARGS` until a signal stops it.
pub fn run(args: &DnsArgs) -> anyhow::Result<()> {
    let (opts, service) = args.service()?;
    proxy::run(&opts, |ctx| service.serve(ctx))
}
