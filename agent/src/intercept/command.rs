//! `capagent intercept ARGS`: the arguments, the options they make (which a daemon job of
//! kind `intercept` uses too), and running the interception from them.

use std::{process::ExitStatus, time::Duration};

use clap::{Args, ValueEnum};

use super::{Handler, InterceptOptions, Mode, RelayOptions};
use crate::{
    process::ChildStdout,
    proxy::{command::RecordArgs, dial::Upstream},
};

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
    /// Also UDP (--mode tproxy, and per process).
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
    /// Reach the original destinations through this proxy instead of directly (socksify):
    /// SOCKS5 (`socks5://[USER:PASS@]HOST:PORT`) or an HTTP proxy's CONNECT
    /// (`http://[USER:PASS@]HOST:PORT`). TCP only.
    #[arg(long, value_name = "URL")]
    pub upstream_proxy: Option<String>,
    /// With --upstream-proxy: give the proxy the original destination's address only, never
    /// the name a DNS answer relayed through capagent gave it.
    #[arg(long, requires = "upstream_proxy")]
    pub no_upstream_names: bool,
    #[command(flatten)]
    pub record: RecordArgs,
    #[command(flatten)]
    pub tls: crate::mitm::options::TlsArgs,
    /// Seconds without traffic in either direction after which a relayed connection is
    /// closed (0 = never).
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub idle_timeout: f64,
    /// Change the bytes relayed: DIR:/REGEX/REPLACEMENT/[FLAGS] (DIR c2s, s2c or both;
    /// flags i, s, m and a count limit); repeatable, applied in order (docs/rewrite.md).
    #[arg(long = "replace", value_name = "RULE")]
    pub replace: Vec<String>,
    #[command(flatten)]
    pub http: crate::rewrite::http_rule::HttpRuleArgs,
    #[command(flatten)]
    pub hook: crate::proxy::command::HookArgs,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Per-process mode: start this command and intercept its connections (and its
    /// children's) from the first one; capagent exits with its status when it ends.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl InterceptArgs {
    /// What `capagent intercept ARGS` intercepts, and what it does with the connections (a
    /// daemon job of kind `intercept` uses them too).
    pub fn options(&self) -> anyhow::Result<(InterceptOptions, RelayOptions)> {
        let tls = self.tls.options()?;
        let upstream = match &self.upstream_proxy {
            Some(u) => Some(u.parse::<Upstream>()?),
            None => None,
        };
        let duration = crate::control::duration_limit(self.duration)?;
        let mut record = self.record.options();
        record.replace = crate::proxy::command::replace_rules(&self.replace)?;
        record.http = self.http.options()?;
        record.hook = self.hook.spec()?;
        let dsts = self
            .dsts
            .iter()
            .map(|d| super::parse_cidr(d))
            .collect::<Result<Vec<_>, _>>()?;
        let opts = InterceptOptions {
            mode: match self.mode {
                Some(InterceptMode::Redirect) => Mode::Redirect,
                Some(InterceptMode::Tproxy) => Mode::Tproxy,
                None => Mode::Process,
            },
            iface: self.iface.clone(),
            ports: self.ports.clone(),
            dsts,
            udp: self.udp,
            local: self.local,
            pids: self.pids.clone(),
            cgroup: self.cgroup.clone(),
            command: self.command.clone(),
            command_stdout: ChildStdout::for_records(record.on_stdout()),
            duration,
        };
        opts.validate()?;
        if !(self.idle_timeout.is_finite() && self.idle_timeout >= 0.0) {
            anyhow::bail!(
                "--idle-timeout must be a number of seconds, not {}",
                self.idle_timeout
            );
        }
        let relay = RelayOptions {
            record,
            idle: (self.idle_timeout > 0.0).then(|| Duration::from_secs_f64(self.idle_timeout)),
            handler: match self.handler {
                InterceptAs::Raw => Handler::Raw,
                InterceptAs::Http => Handler::Http,
                InterceptAs::Socks => Handler::Socks,
            },
            tls,
            upstream,
            no_upstream_names: self.no_upstream_names,
        };
        super::check(&opts, &relay)?;
        Ok((opts, relay))
    }
}

/// Runs `capagent intercept ARGS`. Returns the exit status of the `-- CMD`, when there is one.
pub fn run(args: &InterceptArgs) -> anyhow::Result<Option<ExitStatus>> {
    let (opts, relay) = args.options()?;
    let outcome = super::run(&opts, &relay)?;
    Ok(outcome.exit_status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: InterceptArgs,
    }

    fn options(args: &[&str]) -> anyhow::Result<(InterceptOptions, RelayOptions)> {
        let a = Cmd::try_parse_from(std::iter::once("intercept").chain(args.iter().copied()))?;
        a.args.options()
    }

    #[test]
    fn tls_flags() {
        let (_, relay) = options(&["--tls", "--ca-dir", "/tmp/ca", "--", "curl"]).unwrap();
        let tls = relay.tls.expect("--tls");
        assert_eq!(tls.ca_dir.as_deref(), Some(std::path::Path::new("/tmp/ca")));
        let (_, relay) = options(&["--", "curl"]).unwrap();
        assert!(relay.tls.is_none());
        // --as socks intercepts as proxy socks --tls, --as http as proxy reverse --tls.
        for handler in ["socks", "http"] {
            let (_, relay) = options(&["--tls", "--as", handler, "--", "curl"]).unwrap();
            assert!(relay.tls.is_some(), "--as {handler}");
        }
    }

    #[test]
    fn upstream_proxy_flag() {
        let (_, relay) = options(&[
            "--upstream-proxy",
            "socks5://u:p@127.0.0.1:1080",
            "--",
            "java",
        ])
        .unwrap();
        let up = relay.upstream.expect("--upstream-proxy");
        assert_eq!(up.url(), "socks5://127.0.0.1:1080");
        assert_eq!(up.auth, Some(("u".into(), "p".into())));
        let (_, relay) = options(&["--upstream-proxy", "http://[::1]:3128", "--pid", "7"]).unwrap();
        assert_eq!(relay.upstream.unwrap().url(), "http://[::1]:3128");
        assert!(!relay.no_upstream_names);
        let (_, relay) = options(&["--", "curl"]).unwrap();
        assert!(relay.upstream.is_none());
        let (_, relay) = options(&[
            "--upstream-proxy",
            "socks5://127.0.0.1:1080",
            "--no-upstream-names",
            "--",
            "curl",
        ])
        .unwrap();
        assert!(relay.no_upstream_names);
        // Names go to an upstream proxy only.
        assert!(options(&["--no-upstream-names", "--", "curl"]).is_err());
        let err = options(&["--upstream-proxy", "ftp://x:1", "--", "curl"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("bad --upstream-proxy \"ftp://x:1\""),
            "{err}"
        );
        // Datagrams go through SOCKS5 UDP ASSOCIATE; HTTP CONNECT carries none.
        let udp = |up: &str| {
            options(&[
                "--mode",
                "tproxy",
                "--iface",
                "eth0",
                "--udp",
                "--upstream-proxy",
                up,
            ])
        };
        assert!(udp("socks5://127.0.0.1:1080").is_ok());
        assert_eq!(
            udp("http://127.0.0.1:3128").unwrap_err().to_string(),
            "--udp through an http:// --upstream-proxy: HTTP CONNECT carries no datagrams (use socks5://)"
        );
    }
}
