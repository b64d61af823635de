//! Transparent interception (`capagent intercept`): traffic that applications do not send
//! to a proxy is pulled into capagent's recording relay anyway.
//!
//! Three ways in, one module each:
//! - [`Mode::Redirect`]: nftables NAT `redirect` rules ([`nft`]) in capagent's own table
//!   send matching TCP (forwarded, arriving on `--iface`; with `--local`, also this host's
//!   own connections leaving through it) to a listener; the original destination comes
//!   from conntrack ([`origdst::original_dst`]).
//! - [`Mode::Tproxy`]: nftables `tproxy` rules mark the packets and hand them to
//!   `IP_TRANSPARENT` listeners without rewriting them; policy routing ([`route`]) delivers
//!   the marked packets locally. The original destination is the accepted socket's own
//!   local address; for UDP (`--udp`), a control message of each datagram.
//! - [`Mode::Process`]: eBPF cgroup hooks ([`cgroup`]) rewrite the chosen processes'
//!   connects to a loopback listener and keep the original destination in a map.
//!
//! [`listener`] accepts, finds the original destination and hands the connection to a
//! [`Sink`]: the relay that connects upstream (from a socket marked so capagent's own rules
//! never catch it) and records both directions. Everything installed is owned by values
//! whose `Drop` removes it; [`cleanup`] removes what a killed agent left behind.

pub mod cgroup;
pub mod cleanup;
pub mod command;
pub mod listener;
pub mod names;
pub mod nft;
pub mod origdst;
pub mod route;
pub mod sink;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use sink::{Accepted, Sink};

use crate::control::Control;
use crate::proxy::{RecordOptions, Recorder};

/// How traffic is pulled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Redirect,
    Tproxy,
    Process,
}

/// What `capagent intercept` was asked.
#[derive(Debug, Clone)]
pub struct InterceptOptions {
    pub mode: Mode,
    /// redirect/tproxy: the interface whose traffic is intercepted.
    pub iface: Option<String>,
    /// Only these destination ports (all when empty).
    pub ports: Vec<u16>,
    /// Only these destination networks (all when empty).
    pub dsts: Vec<(IpAddr, u8)>,
    /// tproxy and per process: UDP too.
    pub udp: bool,
    /// redirect: also this host's own connections leaving through `iface`.
    pub local: bool,
    /// Process mode: these processes (and their children from now on).
    pub pids: Vec<u32>,
    /// Process mode: every process of this cgroup.
    pub cgroup: Option<String>,
    /// Process mode: start this command, its connections from the first one on.
    pub command: Vec<String>,
    /// Where the command's stdout goes.
    pub command_stdout: crate::process::ChildStdout,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("{0}")]
    Usage(String),
}

/// `--dst CIDR`: `10.0.0.0/8`, `2001:db8::/32`, or one address.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), InterceptError> {
    let bad = || InterceptError::Usage(format!("--dst {s:?}: expected ADDRESS[/PREFIX]"));
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip.trim().parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().map_err(|_| bad())?,
        None => max,
    };
    if len > max {
        return Err(bad());
    }
    Ok((ip, len))
}

impl InterceptOptions {
    /// Checks the combination of flags.
    pub fn validate(&self) -> Result<(), InterceptError> {
        let usage = |s: &str| Err(InterceptError::Usage(s.to_string()));
        match self.mode {
            Mode::Redirect | Mode::Tproxy => {
                if self.iface.is_none() {
                    return usage("--mode redirect/tproxy needs --iface IFACE");
                }
                if !self.pids.is_empty() || self.cgroup.is_some() || !self.command.is_empty() {
                    return usage(
                        "--pid, --cgroup and -- CMD select processes (per-process mode): not with --mode",
                    );
                }
                if self.udp && self.mode == Mode::Redirect {
                    return usage(
                        "--udp needs --mode tproxy (NAT redirect keeps no per-datagram destination)",
                    );
                }
                if self.local && self.mode == Mode::Tproxy {
                    return usage(
                        "--local is for --mode redirect (tproxy only sees forwarded traffic)",
                    );
                }
            }
            Mode::Process => {
                let chosen = usize::from(!self.pids.is_empty())
                    + usize::from(self.cgroup.is_some())
                    + usize::from(!self.command.is_empty());
                if chosen != 1 {
                    return usage(
                        "choose what to intercept: --mode redirect|tproxy --iface IFACE, or one of --pid PID, --cgroup PATH, -- CMD",
                    );
                }
                if self.iface.is_some() || !self.dsts.is_empty() || self.local {
                    return usage("--iface, --dst and --local go with --mode redirect|tproxy");
                }
            }
        }
        Ok(())
    }
}

/// How an interception run ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `-- CMD`'s exit status.
    pub exit_status: Option<ExitStatus>,
}

/// `--as`: what handles an intercepted connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Handler {
    /// The raw relay (bytes as they are).
    #[default]
    Raw,
    /// The reverse HTTP proxy's handler, the original destination as server.
    Http,
    /// capagent's SOCKS server (the application was talking to a SOCKS proxy).
    Socks,
}

/// What happens to intercepted connections.
#[derive(Debug, Clone, Default)]
pub struct RelayOptions {
    /// Where records go (`disabled`: relay only).
    pub record: RecordOptions,
    /// A relayed connection idle this long is closed.
    pub idle: Option<Duration>,
    /// What handles connections (`--as`).
    pub handler: Handler,
    /// `--tls`: intercept the TLS of connections (at their start or mid-stream, as
    /// `proxy forward --tls` does); None: relay it as opaque bytes.
    pub tls: Option<crate::mitm::options::TlsOptions>,
    /// `--upstream-proxy`: reach the original destinations through this proxy (SOCKS5 or
    /// HTTP CONNECT) instead of directly.
    pub upstream: Option<crate::proxy::dial::Upstream>,
    /// `--no-upstream-names`: give the upstream proxy addresses only, never the names
    /// learned from the DNS answers relayed.
    pub no_upstream_names: bool,
}

/// Runs the interception until SIGINT/SIGTERM/SIGHUP, `--duration`, or the end of `-- CMD`,
/// relaying and recording every intercepted connection; removes everything it installed
/// before returning (also on errors), then writes out every record.
pub fn run(opts: &InterceptOptions, relay: &RelayOptions) -> anyhow::Result<Outcome> {
    check(opts, relay)?;
    crate::kernel::require_root("capagent intercept")?;
    let mut record = relay.record.clone();
    record.tls_raw |= relay
        .tls
        .as_ref()
        .is_some_and(|t| t.pcap_tls == crate::mitm::options::PcapTls::Raw);
    let (recorder, handle) = Recorder::start(&record)?;
    // Signals are caught from the start, so one that arrives while the rules are being
    // installed still ends in a clean removal.
    let ctl = Control::on_signals();
    ctl.arm().context("installing signal handlers")?;
    run_until(opts, relay, recorder, handle, &ctl)
}

/// The checks of [`run`] that need nothing from the system.
pub fn check(opts: &InterceptOptions, relay: &RelayOptions) -> anyhow::Result<()> {
    opts.validate()?;
    if relay.handler != Handler::Raw && opts.local {
        // The HTTP and SOCKS handlers' own connections to servers carry no mark for the
        // output chain to skip: they would be intercepted again.
        anyhow::bail!("--as http and --as socks cannot be used with --local");
    }
    if opts.udp
        && relay
            .upstream
            .as_ref()
            .is_some_and(|u| u.kind != crate::proxy::dial::UpstreamKind::Socks5)
    {
        anyhow::bail!(
            "--udp through an http:// --upstream-proxy: HTTP CONNECT carries no datagrams (use socks5://)"
        );
    }
    Ok(())
}

/// [`run`] recording through `recorder` (`relay.record` is not used), until `ctl` is stopped
/// (a daemon job: its own stop token).
pub fn run_until(
    opts: &InterceptOptions,
    relay: &RelayOptions,
    recorder: Recorder,
    handle: crate::proxy::record::RecorderHandle,
    ctl: &Control,
) -> anyhow::Result<Outcome> {
    check(opts, relay)?;
    crate::kernel::require_root("capagent intercept")?;
    // The CA is loaded (or made) before anything is intercepted.
    let interceptor = match &relay.tls {
        Some(t) => Some(Arc::new(
            crate::mitm::intercept::Interceptor::with_secrets(t, recorder.tls_secrets())
                .context("--tls")?
                .http1_only(recorder.has_http_rules()),
        )),
        None => None,
    };
    let ctx = || {
        let limits = crate::proxy::Limits {
            idle: relay.idle,
            ..crate::proxy::Limits::default()
        };
        let mut dialer = crate::proxy::Dialer::direct(limits.handshake);
        dialer.upstream = relay.upstream.clone();
        let mut ctx = crate::proxy::Ctx::new(recorder.clone(), dialer, limits);
        ctx.tls = interceptor.clone();
        ctx
    };
    let raw = sink::Recording {
        recorder: recorder.clone(),
        idle: relay.idle,
        tls: interceptor.is_some().then(ctx),
        via: relay.upstream.clone().map(|up| crate::proxy::Dialer {
            upstream: Some(up),
            timeout: crate::proxy::Limits::default().handshake,
        }),
        names: (relay.upstream.is_some() && !relay.no_upstream_names)
            .then(|| Arc::new(names::Names::default())),
    };
    let sink: Arc<dyn Sink> = match relay.handler {
        Handler::Raw => Arc::new(raw),
        Handler::Http => Arc::new(sink::HttpAware { ctx: ctx(), raw }),
        Handler::Socks => Arc::new(sink::SocksAware { ctx: ctx(), raw }),
    };
    drop(recorder);
    // From here on the sink holds the only recorder handles: the writer thread ends (and
    // `handle.finish` returns) once the relays are gone.
    // What a killed agent left behind goes first (its rules could catch our traffic).
    let report = cleanup::sweep();
    for line in report.lines() {
        eprintln!("capagent: cleanup: {line}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("capagent-intercept")
        .build()
        .context("cannot start the async runtime")?;
    let udp_via = relay.upstream.clone();
    let outcome = rt.block_on(listener::serve(opts, sink, udp_via, ctl.stopped()));
    // Cancels the relays (their connections close; their records get a close).
    rt.shutdown_timeout(Duration::from_secs(1));
    let written = handle.finish().context("writing records");
    let outcome = outcome?;
    written?;
    Ok(outcome)
}

/// `capagent cleanup`: removes what killed agents left (tables, rules, routes, cgroup
/// programs), touching nothing else; prints what it removed.
pub fn cleanup_command() -> anyhow::Result<()> {
    crate::kernel::require_root("capagent cleanup")?;
    let report = cleanup::sweep();
    if report.is_empty() {
        eprintln!("capagent: cleanup: nothing left by a stopped agent");
    }
    for line in report.lines() {
        eprintln!("capagent: cleanup: {line}");
    }
    if !report.errors.is_empty() {
        anyhow::bail!("{}", report.errors.join("; "));
    }
    Ok(())
}

/// Where the listener of `family` listens in `mode`.
pub fn listen_addr(mode: Mode, ipv6: bool) -> SocketAddr {
    let ip: IpAddr = match (mode, ipv6) {
        (Mode::Process, false) => std::net::Ipv4Addr::LOCALHOST.into(),
        (Mode::Process, true) => std::net::Ipv6Addr::LOCALHOST.into(),
        (_, false) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        (_, true) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mode: Mode) -> InterceptOptions {
        InterceptOptions {
            mode,
            iface: None,
            ports: vec![],
            dsts: vec![],
            udp: false,
            local: false,
            pids: vec![],
            cgroup: None,
            command: vec![],
            command_stdout: Default::default(),
            duration: None,
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.0/8").unwrap(),
            ("10.0.0.0".parse().unwrap(), 8)
        );
        assert_eq!(
            parse_cidr("2001:db8::1").unwrap(),
            ("2001:db8::1".parse().unwrap(), 128)
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com/8").is_err());
        assert!(parse_cidr("1.2.3.4/x").is_err());
    }

    #[test]
    fn flag_combinations() {
        assert!(opts(Mode::Redirect).validate().is_err());
        let mut o = opts(Mode::Redirect);
        o.iface = Some("eth0".into());
        assert!(o.validate().is_ok());
        o.udp = true;
        assert!(o.validate().is_err());
        let mut t = opts(Mode::Tproxy);
        t.iface = Some("eth0".into());
        t.udp = true;
        assert!(t.validate().is_ok());
        t.pids = vec![1];
        assert!(t.validate().is_err());
        let mut p = opts(Mode::Process);
        assert!(p.validate().is_err());
        p.pids = vec![1];
        assert!(p.validate().is_ok());
        p.udp = true;
        assert!(p.validate().is_ok());
        p.command = vec!["curl".into()];
        assert!(p.validate().is_err());
    }
}
