//! `capagent proxy KIND ARGS`: the arguments of every proxy (and the record and proxy flags
//! `dns` and `intercept` share), the options they make (which a daemon job uses too), and
//! serving from them.

use std::{future::Future, path::PathBuf, pin::Pin, time::Duration};

use clap::{Args, Subcommand};

use super::{
    Ctx, Limits, Options, RecordOptions,
    http::{reverse::ReverseOptions, server::HttpOptions},
    socks::server::SocksOptions,
};
use crate::mitm::options::TlsArgs;
use crate::output::Format;

/// A proxy or the DNS server, ready to serve (what `capagent proxy KIND` or `capagent dns`
/// runs, and what a daemon job of that kind runs).
pub struct Service(Box<dyn FnOnce(Ctx) -> Serving>);

/// A service at work: its future.
type Serving = Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

impl Service {
    /// The service `serve` makes of its context.
    pub fn new<F, Fut>(serve: F) -> Service
    where
        F: FnOnce(Ctx) -> Fut + 'static,
        Fut: Future<Output = anyhow::Result<()>> + 'static,
    {
        Service(Box::new(move |ctx| Box::pin(serve(ctx))))
    }

    /// Binds the listeners and serves until an error (or until the caller stops waiting).
    pub async fn serve(self, ctx: Ctx) -> anyhow::Result<()> {
        (self.0)(ctx).await
    }
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
    /// Reach every target through this proxy: SOCKS5 (`socks5://[USER:PASS@]HOST:PORT`) or
    /// an HTTP proxy's CONNECT (`http://[USER:PASS@]HOST:PORT`); names are resolved by that
    /// proxy.
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
    /// Change the bytes relayed: DIR:/REGEX/REPLACEMENT/[FLAGS] (DIR c2s, s2c or both;
    /// flags i, s, m and a count limit); repeatable, applied in order (docs/rewrite.md).
    #[arg(long = "replace", value_name = "RULE")]
    pub replace: Vec<String>,
    #[command(flatten)]
    pub http: crate::rewrite::http_rule::HttpRuleArgs,
    #[command(flatten)]
    pub hook: HookArgs,
}

/// `--hook CMD` and its timeout (every proxy and `intercept`).
#[derive(Args, Debug, Clone)]
pub struct HookArgs {
    /// An external program that may change each message relayed: started once (`sh -c
    /// CMD`), it gets a JSON line per message and answers pass, replace, drop or close
    /// (docs/rewrite.md); one that fails or is slow lets traffic pass unchanged.
    #[arg(long, value_name = "CMD")]
    pub hook: Option<String>,
    /// Milliseconds a message waits for the hook's answer; then it passes unchanged.
    #[arg(long, default_value_t = 1000, value_name = "MS", requires = "hook")]
    pub hook_timeout: u64,
}

impl HookArgs {
    /// The `--hook` to run, if any.
    pub fn spec(&self) -> anyhow::Result<Option<crate::rewrite::hook::HookSpec>> {
        if self.hook_timeout == 0 {
            anyhow::bail!("--hook-timeout must be at least 1 ms");
        }
        Ok(self
            .hook
            .as_ref()
            .map(|command| crate::rewrite::hook::HookSpec {
                command: command.clone(),
                timeout: Duration::from_millis(self.hook_timeout),
            }))
    }
}

/// The `--replace` rules, compiled (a bad one is the error, naming it).
pub fn replace_rules(
    rules: &[String],
) -> anyhow::Result<Vec<std::sync::Arc<crate::rewrite::rule::Rule>>> {
    rules
        .iter()
        .map(|r| {
            crate::rewrite::rule::parse(r)
                .map(std::sync::Arc::new)
                .map_err(|e| anyhow::anyhow!("--replace {e}"))
        })
        .collect()
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
    #[command(flatten)]
    pub tls: TlsArgs,
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
    #[command(flatten)]
    pub tls: TlsArgs,
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
    #[command(flatten)]
    pub tls: TlsArgs,
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
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl RecordArgs {
    /// Where records go, from the record flags.
    pub fn options(&self) -> RecordOptions {
        RecordOptions {
            disabled: self.no_record,
            format: self.format,
            output: self.output.clone(),
            write: self.write.clone(),
            preview: self.preview,
            // Set from the TLS flags (`proxy::run`).
            tls_raw: false,
            // Set from --replace (`ProxyCommon::options`, `InterceptArgs::options`).
            replace: Vec::new(),
            // Set from the HTTP rules' flags (the same places).
            http: None,
            // Set from --hook (the same).
            hook: None,
        }
    }
}

impl ProxyCommon {
    /// The options every proxy shares, from their flags.
    pub fn options(&self) -> anyhow::Result<Options> {
        let secs = |flag: &str, v: f64| -> anyhow::Result<Duration> {
            if !(v.is_finite() && v >= 0.0) {
                anyhow::bail!("{flag} must be a number of seconds, not {v}");
            }
            Ok(Duration::from_secs_f64(v))
        };
        let handshake = secs("--handshake-timeout", self.handshake_timeout)?;
        let idle = secs("--idle-timeout", self.idle_timeout)?;
        if self.max_conns == 0 {
            anyhow::bail!("--max-conns must be at least 1");
        }
        let mut record = self.record.options();
        record.replace = replace_rules(&self.replace)?;
        record.http = self.http.options()?;
        record.hook = self.hook.spec()?;
        Ok(Options {
            tls: None,
            record,
            upstream_proxy: self.upstream_proxy.clone(),
            limits: Limits {
                max_conns: self.max_conns,
                handshake: if handshake.is_zero() {
                    Duration::from_secs(10)
                } else {
                    handshake
                },
                idle: (!idle.is_zero()).then_some(idle),
            },
        })
    }
}

impl ProxyArgs {
    /// What `capagent proxy KIND ARGS` serves, with its options (a daemon job of kind
    /// `proxy KIND` uses them too).
    pub fn service(&self) -> anyhow::Result<(Options, Service)> {
        Ok(match &self.kind {
            ProxyCommand::Forward(a) => {
                let mut opts = a.common.options()?;
                opts.tls = a.tls.options()?;
                let maps = super::forward::mappings(&a.listen, &a.to, &a.map)?;
                let udp = a.udp;
                (
                    opts,
                    Service::new(move |ctx| super::forward::run(maps, udp, ctx)),
                )
            }
            ProxyCommand::Socks(a) => {
                let mut opts = a.common.options()?;
                opts.tls = a.tls.options()?;
                let socks = SocksOptions {
                    listen: super::listen_addr(&a.listen)?,
                    auth: a.auth.as_deref().map(str::parse).transpose()?,
                };
                (
                    opts,
                    Service::new(|ctx| super::socks::server::run(socks, ctx)),
                )
            }
            ProxyCommand::Http(a) => {
                let mut opts = a.common.options()?;
                opts.tls = a.tls.options()?;
                let http = HttpOptions {
                    listen: super::listen_addr(&a.listen)?,
                    connect_ports: a.connect_ports.clone(),
                    auth: a.auth.clone(),
                };
                if let Some(auth) = &http.auth
                    && !auth.contains(':')
                {
                    anyhow::bail!("--auth must be USER:PASS");
                }
                (
                    opts,
                    Service::new(|ctx| super::http::server::run(http, ctx)),
                )
            }
            ProxyCommand::Reverse(a) => {
                let mut opts = a.common.options()?;
                opts.tls = a.tls.options()?;
                let reverse = ReverseOptions {
                    listen: super::listen_addr(&a.listen)?,
                    to: a.to.as_deref().map(str::parse).transpose()?,
                    routes: a
                        .routes
                        .iter()
                        .map(|r| r.parse())
                        .collect::<Result<_, _>>()?,
                    rewrite_host: a.rewrite_host,
                };
                if reverse.to.is_none() && reverse.routes.is_empty() {
                    anyhow::bail!("give --to HOST:PORT, --route NAME=HOST:PORT, or both");
                }
                (
                    opts,
                    Service::new(|ctx| super::http::reverse::run(reverse, ctx)),
                )
            }
        })
    }
}

/// Runs `capagent proxy KIND ARGS` until a signal stops it.
pub fn run(args: &ProxyArgs) -> anyhow::Result<()> {
    let (opts, service) = args.service()?;
    super::run(&opts, |ctx| service.serve(ctx))
}
