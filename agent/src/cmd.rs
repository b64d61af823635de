//! Wires the command line to the capabilities.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    capture::{self, CaptureOptions, Selection, filter::Filter, session::SessionOptions},
    cli::{
        CaptureArgs, Cli, Command, DnsArgs, InterceptArgs, InterceptAs, InterceptMode, ProxyArgs,
        ProxyCommand, ProxyCommon, RecordArgs, TraceArgs, Unmatched,
    },
    control::Control,
    output::{EventWriter, FanOut, Writer, pcapng::PcapngWriter, text::TextConfig},
    proxy,
    trace::{
        run::{self, TraceOptions},
        summary::Summary,
    },
};

pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAPAGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Trace(args) => trace(args),
        Command::Capture(args) => capture(args),
        Command::Proxy(args) => proxy_cmd(args),
        Command::Dns(args) => dns_cmd(args),
        Command::Intercept(args) => intercept(args),
        Command::Cleanup => {
            crate::intercept::cleanup_command()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon(args) if args.check => match crate::daemon::check(&args.config) {
            Ok(summary) => {
                println!("{summary}");
                Ok(ExitCode::SUCCESS)
            }
            Err(located) => {
                eprintln!("{located}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Daemon(args) => {
            crate::daemon::supervisor::run(&args.config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let addr = crate::daemon::status_addr(args.metrics.as_deref(), args.config.as_deref())?;
            print!("{}", crate::daemon::status(addr)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn intercept(args: InterceptArgs) -> anyhow::Result<ExitCode> {
    let (opts, relay) = intercept_options(&args)?;
    let outcome = crate::intercept::run(&opts, &relay)?;
    Ok(outcome.exit_status.map_or(ExitCode::SUCCESS, exit_code_of))
}

/// What `capagent intercept ARGS` intercepts, and what it does with the connections.
pub fn intercept_options(
    args: &InterceptArgs,
) -> anyhow::Result<(
    crate::intercept::InterceptOptions,
    crate::intercept::RelayOptions,
)> {
    use crate::intercept::{self, InterceptOptions, Mode};
    if let Some(d) = args.duration
        && !(d.is_finite() && d > 0.0)
    {
        anyhow::bail!("--duration must be a positive number of seconds, not {d}");
    }
    let record = record_options(&args.record);
    let dsts = args
        .dsts
        .iter()
        .map(|d| intercept::parse_cidr(d))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = InterceptOptions {
        mode: match args.mode {
            Some(InterceptMode::Redirect) => Mode::Redirect,
            Some(InterceptMode::Tproxy) => Mode::Tproxy,
            None => Mode::Process,
        },
        iface: args.iface.clone(),
        ports: args.ports.clone(),
        dsts,
        udp: args.udp,
        local: args.local,
        pids: args.pids.clone(),
        cgroup: args.cgroup.clone(),
        command: args.command.clone(),
        command_stdout: child_stdout(record.on_stdout()),
        duration: args.duration.map(Duration::from_secs_f64),
    };
    opts.validate()?;
    if !(args.idle_timeout.is_finite() && args.idle_timeout >= 0.0) {
        anyhow::bail!(
            "--idle-timeout must be a number of seconds, not {}",
            args.idle_timeout
        );
    }
    let relay = intercept::RelayOptions {
        record,
        idle: (args.idle_timeout > 0.0).then(|| Duration::from_secs_f64(args.idle_timeout)),
        handler: match args.handler {
            InterceptAs::Raw => intercept::Handler::Raw,
            InterceptAs::Http => intercept::Handler::Http,
            InterceptAs::Socks => intercept::Handler::Socks,
        },
    };
    Ok((opts, relay))
}

/// The options every proxy shares, from their flags.
fn proxy_options(c: &ProxyCommon) -> anyhow::Result<proxy::Options> {
    let secs = |flag: &str, v: f64| -> anyhow::Result<Duration> {
        if !(v.is_finite() && v >= 0.0) {
            anyhow::bail!("{flag} must be a number of seconds, not {v}");
        }
        Ok(Duration::from_secs_f64(v))
    };
    let handshake = secs("--handshake-timeout", c.handshake_timeout)?;
    let idle = secs("--idle-timeout", c.idle_timeout)?;
    if c.max_conns == 0 {
        anyhow::bail!("--max-conns must be at least 1");
    }
    Ok(proxy::Options {
        record: record_options(&c.record),
        upstream_proxy: c.upstream_proxy.clone(),
        limits: proxy::Limits {
            max_conns: c.max_conns,
            handshake: if handshake.is_zero() {
                Duration::from_secs(10)
            } else {
                handshake
            },
            idle: (!idle.is_zero()).then_some(idle),
        },
    })
}

/// Where records go, from the record flags.
pub fn record_options(r: &RecordArgs) -> proxy::RecordOptions {
    proxy::RecordOptions {
        disabled: r.no_record,
        format: r.format,
        output: r.output.clone(),
        write: r.write.clone(),
        preview: r.preview,
    }
}

/// A proxy or the DNS server, ready to serve (what `capagent proxy KIND` or `capagent dns`
/// runs, and what a daemon job of that kind runs).
pub enum Service {
    Forward {
        maps: Vec<proxy::forward::Mapping>,
        udp: bool,
    },
    Socks(proxy::socks::server::SocksOptions),
    Http(proxy::http::server::HttpOptions),
    Reverse(proxy::http::reverse::ReverseOptions),
    Dns(crate::dns::DnsOptions),
}

impl Service {
    /// Binds the listeners and serves until an error (or until the caller stops waiting).
    pub async fn serve(self, ctx: proxy::Ctx) -> anyhow::Result<()> {
        match self {
            Service::Forward { maps, udp } => proxy::forward::run(maps, udp, ctx).await,
            Service::Socks(o) => proxy::socks::server::run(o, ctx).await,
            Service::Http(o) => proxy::http::server::run(o, ctx).await,
            Service::Reverse(o) => proxy::http::reverse::run(o, ctx).await,
            Service::Dns(o) => crate::dns::run(o, ctx).await,
        }
    }
}

/// What `capagent proxy KIND ARGS` serves, with its options.
pub fn proxy_service(args: &ProxyArgs) -> anyhow::Result<(proxy::Options, Service)> {
    Ok(match &args.kind {
        ProxyCommand::Forward(a) => {
            let opts = proxy_options(&a.common)?;
            let maps = proxy::forward::mappings(&a.listen, &a.to, &a.map)?;
            (opts, Service::Forward { maps, udp: a.udp })
        }
        ProxyCommand::Socks(a) => {
            let opts = proxy_options(&a.common)?;
            let socks = proxy::socks::server::SocksOptions {
                listen: proxy::listen_addr(&a.listen)?,
                auth: a.auth.as_deref().map(str::parse).transpose()?,
            };
            (opts, Service::Socks(socks))
        }
        ProxyCommand::Http(a) => {
            let opts = proxy_options(&a.common)?;
            let http = proxy::http::server::HttpOptions {
                listen: proxy::listen_addr(&a.listen)?,
                connect_ports: a.connect_ports.clone(),
                auth: a.auth.clone(),
            };
            if let Some(auth) = &http.auth
                && !auth.contains(':')
            {
                anyhow::bail!("--auth must be USER:PASS");
            }
            (opts, Service::Http(http))
        }
        ProxyCommand::Reverse(a) => {
            let opts = proxy_options(&a.common)?;
            let reverse = proxy::http::reverse::ReverseOptions {
                listen: proxy::listen_addr(&a.listen)?,
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
            (opts, Service::Reverse(reverse))
        }
    })
}

fn proxy_cmd(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let (opts, service) = proxy_service(&args)?;
    proxy::run(&opts, |ctx| service.serve(ctx))?;
    Ok(ExitCode::SUCCESS)
}

fn capture(args: CaptureArgs) -> anyhow::Result<ExitCode> {
    let (opts, session) = capture_options(&args)?;
    for &pid in &args.pids {
        crate::process::check_pid(pid)?;
    }
    let outcome = capture::session::run(&opts, &session)?;
    Ok(outcome.exit_status.map_or(ExitCode::SUCCESS, exit_code_of))
}

/// What `capagent capture ARGS` captures, and its session options.
pub fn capture_options(args: &CaptureArgs) -> anyhow::Result<(CaptureOptions, SessionOptions)> {
    if let Some(d) = args.duration
        && !(d.is_finite() && d > 0.0)
    {
        anyhow::bail!("--duration must be a positive number of seconds, not {d}");
    }
    let opts = CaptureOptions {
        ifaces: args.ifaces.clone(),
        snaplen: args.snaplen,
        ring_bytes: args.ring_kib.saturating_mul(1024),
        duration: args.duration.map(Duration::from_secs_f64),
        count: args.count,
        select: Selection {
            pids: args.pids.clone(),
            comm: args.comm.clone(),
            follow_forks: args.follow_forks,
        },
        xdp: args.xdp,
        tc_mode: match std::env::var(capture::attach::TC_MODE_ENV) {
            Ok(v) => capture::attach::Mode::parse_forced(&v)?,
            Err(_) => None,
        },
        filter: match &args.filter {
            Some(e) => Filter::expression(std::slice::from_ref(e)),
            None => Filter::expression(&args.filter_words),
        },
    };
    let session = SessionOptions {
        write: args.write.clone(),
        no_summary: args.no_summary,
        command: args.command.clone(),
    };
    Ok((opts, session))
}

/// What `capagent trace ARGS` traces.
pub fn trace_options(args: &TraceArgs) -> anyhow::Result<TraceOptions> {
    let follow_forks = if args.no_follow_forks {
        false
    } else {
        args.follow_forks || !args.command.is_empty()
    };
    if let Some(d) = args.duration
        && !(d.is_finite() && d > 0.0)
    {
        anyhow::bail!("--duration must be a positive number of seconds, not {d}");
    }
    let opts = TraceOptions {
        pids: args.pids.clone(),
        comm: args.comm.clone(),
        all: args.all,
        command: args.command.clone(),
        command_stdout: child_stdout(crate::output::records_on_stdout(
            args.output.as_deref(),
            args.write.as_deref(),
        )),
        follow_forks,
        syscalls: run::parse_events(&args.events)?,
        snaplen: args.snaplen,
        ring_bytes: args.ring_kib.saturating_mul(1024),
        duration: args.duration.map(Duration::from_secs_f64),
        lossless: !args.allow_loss && !args.all,
    };
    if opts.pids.is_empty() && opts.comm.is_none() && !opts.all && opts.command.is_empty() {
        return Err(run::TraceError::NoTarget.into());
    }
    Ok(opts)
}

fn trace(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let opts = trace_options(&args)?;
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
    let mut writer = FanOut(writers);
    let mut summary = Summary::new();
    let mut last_flush = Instant::now();
    let outcome = run::run(
        &opts,
        &Control::on_signals(),
        &mut |ev: &crate::model::Event| {
            summary.add(ev);
            writer.write_event(ev)?;
            // Keep files readable while tracing (tail -f) without a syscall per event.
            if last_flush.elapsed() >= Duration::from_millis(200) {
                last_flush = Instant::now();
                writer.flush()?;
            }
            Ok(())
        },
    );
    drop(status);
    writer.flush().context("writing output")?;
    let outcome = outcome?;
    if !args.no_summary {
        eprint!("{}", summary.render());
        if outcome.read_errors > 0 {
            eprintln!(
                "capagent: {} payload reads failed in the kernel (pages not resident); those calls are marked truncated",
                outcome.read_errors
            );
        }
    }
    Ok(match outcome.exit_status {
        Some(status) => exit_code_of(status),
        None => ExitCode::SUCCESS,
    })
}

/// Where a `-- CMD`'s stdout goes: to stderr when capagent's stdout carries the records.
fn child_stdout(records_on_stdout: bool) -> crate::process::ChildStdout {
    if records_on_stdout {
        crate::process::ChildStdout::Stderr
    } else {
        crate::process::ChildStdout::Inherit
    }
}

/// The traced command's status as ours: its exit code, or 128 + signal number.
fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        _ => ExitCode::FAILURE,
    }
}

fn dns_cmd(a: DnsArgs) -> anyhow::Result<ExitCode> {
    let (opts, service) = dns_service(&a)?;
    proxy::run(&opts, |ctx| service.serve(ctx))?;
    Ok(ExitCode::SUCCESS)
}

/// What `capagent dns ARGS` serves, with its options.
pub fn dns_service(a: &DnsArgs) -> anyhow::Result<(proxy::Options, Service)> {
    let opts = proxy_options(&a.common)?;
    if !(a.upstream_timeout.is_finite() && a.upstream_timeout > 0.0) {
        anyhow::bail!("--upstream-timeout must be a positive number of seconds");
    }
    let upstream = match &a.upstream {
        Some(u) => Some(
            u.parse::<std::net::SocketAddr>()
                .map_err(|_| anyhow::anyhow!("--upstream {u:?}: expected IP:PORT ([IPv6]:PORT)"))?,
        ),
        None => None,
    };
    let policy = crate::dns::Policy {
        v4: a.answer,
        v6: a.answer6,
        ttl: a.ttl,
        names: a
            .names
            .iter()
            .map(|n| crate::dns::Pattern::parse(n))
            .collect::<Result<_, _>>()?,
        upstream: upstream.is_some(),
        unmatched: match a.unmatched {
            Unmatched::Nxdomain => crate::dns::Unmatched::NxDomain,
            Unmatched::Refused => crate::dns::Unmatched::Refused,
        },
    };
    let dns = crate::dns::DnsOptions {
        listen: proxy::listen_addr(&a.listen)?,
        policy,
        upstream,
        upstream_timeout: Duration::from_secs_f64(a.upstream_timeout),
    };
    Ok((opts, Service::Dns(dns)))
}
