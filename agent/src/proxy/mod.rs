//! Recording proxies: capagent sits between a client and its servers and records every byte
//! it relays as the same records `capagent trace` makes ([`record`]).
//!
//! What every proxy shares lives here:
//! - [`Options`]: records ([`record::RecordOptions`]), the upstream proxy (SOCKS5 or HTTP) to chain
//!   through ([`dial::Dialer`]), limits ([`Limits`]: concurrent connections, handshake and
//!   idle timeouts);
//! - [`target`]: what a client asks to reach ([`Target`]), resolving it, and why reaching
//!   it failed ([`target::DialError`]);
//! - [`listen_addr`] and [`bind_tcp`]: listeners (loopback unless an address is written out;
//!   a non-loopback one prints a warning);
//! - [`serve`]: the accept loops with the connection cap, one per worker thread
//!   ([`workers`]: a single-threaded runtime per CPU, each with its own listener);
//! - [`relay`]: copying both directions with large buffers, half-close and idle timeout;
//! - [`run`]: the runtime, the recorder's lifetime, and stopping through a [`Control`] (SIGINT/SIGTERM/SIGHUP);
//!   [`run_until`]: the same with a recorder and a stop of the caller's (the daemon's jobs).
//!
//! - [`tls`]: `--tls`, TLS interception of the connections that start with a ClientHello;
//!   [`starttls`]: of those that start TLS mid-stream.
//!
//! One module per proxy: [`forward`] (fixed targets, TCP and UDP), [`socks`] (SOCKS 4/4a/5).

pub mod command;
pub mod dial;
pub mod forward;
pub mod http;
pub mod raw_tls;
pub mod record;
pub mod relay;
pub mod socks;
pub mod starttls;
pub mod tap;
pub mod target;
pub mod tls;
pub mod workers;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::control::Control;
use crate::mitm::intercept::Interceptor;
use crate::mitm::options::TlsOptions;

pub use dial::Dialer;
pub use record::{Conn, RecordOptions, Recorder};
pub use target::Target;

/// Limits every proxy enforces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Most client connections served at once; more are closed at once (and logged).
    pub max_conns: usize,
    /// Longest a client may take to send its request (SOCKS handshake, HTTP head), and the
    /// longest a connection to a target may take.
    pub handshake: Duration,
    /// A relay with no traffic in either direction for this long is closed (None: never).
    pub idle: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_conns: 4096,
            handshake: Duration::from_secs(10),
            idle: Some(Duration::from_secs(300)),
        }
    }
}

/// What a proxy command was given besides its own flags.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub record: RecordOptions,
    /// `socks5://[USER:PASS@]HOST:PORT`.
    pub upstream_proxy: Option<String>,
    pub limits: Limits,
    /// `--tls`: intercept TLS (None: relay it as opaque bytes).
    pub tls: Option<TlsOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Record(#[from] record::RecordError),
    #[error(transparent)]
    Upstream(#[from] dial::BadUpstream),
    #[error("{0:?}: expected a listening address IP:PORT ([IPv6]:PORT)")]
    BadListen(String),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error("writing records")]
    Write(#[source] io::Error),
}

/// What every connection handler gets: the recorder, the dialer, the limits.
#[derive(Clone)]
pub struct Ctx {
    pub recorder: Recorder,
    pub dialer: Arc<Dialer>,
    pub limits: Limits,
    /// Free connection slots.
    pub slots: Arc<Semaphore>,
    /// The runtimes [`serve`] accepts and serves connections on ([`workers::Workers`]);
    /// none: on the caller's runtime.
    pub workers: Arc<[tokio::runtime::Handle]>,
    /// `--tls`: the interceptor ([`tls`]).
    pub tls: Option<Arc<Interceptor>>,
    /// How a tunnel's client is told that its server could not be reached over TLS, inside
    /// capagent's TLS, from the target and the reason (the HTTP proxy: a 502, see
    /// [`tls::open_and_relay`]); None: with a TLS alert.
    pub tls_answer: Option<fn(&str, &str) -> Vec<u8>>,
}

impl Ctx {
    pub fn new(recorder: Recorder, dialer: Dialer, limits: Limits) -> Ctx {
        Ctx {
            recorder,
            dialer: Arc::new(dialer),
            slots: Arc::new(Semaphore::new(limits.max_conns.max(1))),
            limits,
            workers: Arc::new([]),
            tls: None,
            tls_answer: None,
        }
    }
}

/// A listening address: `IP:PORT` or `[IPv6]:PORT`; a bare port means loopback.
pub fn listen_addr(s: &str) -> Result<SocketAddr, ProxyError> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
    }
    s.parse().map_err(|_| ProxyError::BadListen(s.to_string()))
}

/// True for addresses only this host can reach.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Warns on stderr when `addr` is reachable from other hosts.
pub fn warn_if_exposed(what: &str, addr: SocketAddr) {
    if !is_loopback(addr.ip()) {
        eprintln!(
            "capagent: warning: {what} listens on {addr}, reachable from other hosts; anyone who reaches it can use it{}",
            if what.contains("socks") || what.contains("http") {
                " (consider --auth)"
            } else {
                ""
            }
        );
    }
}

/// Listens on `addr` (warning when it is not loopback) and tells on stderr where:
/// `capagent: WHAT listening on ADDR` (the real port when `addr`'s is 0).
/// The listener is one [`serve`] can add a listener per worker thread to
/// ([`workers::bind_exclusive`]).
pub async fn bind_tcp(what: &str, addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    warn_if_exposed(what, addr);
    let l = workers::bind_exclusive(addr)
        .and_then(TcpListener::from_std)
        .map_err(|source| ProxyError::Bind { addr, source })?;
    let local = l.local_addr().unwrap_or(addr);
    eprintln!("capagent: {what} listening on {local}");
    Ok(l)
}

/// Accepts connections on `listener` for ever, running `handler` for each in its own task
/// while a connection slot is free; a connection over the cap is closed at once.
///
/// With worker runtimes in `ctx` and a listener from [`bind_tcp`], each worker accepts on
/// its own listener (the same address, SO_REUSEPORT) and serves what it accepted; else
/// connections are accepted and served on the caller's runtime.
pub async fn serve<F, Fut>(what: &'static str, listener: TcpListener, ctx: Ctx, handler: F)
where
    F: Fn(TcpStream, SocketAddr, Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    let workers = ctx.workers.clone();
    let listener = match listener.into_std() {
        Ok(l) if !workers.is_empty() && workers::is_shared(&l) => l,
        Ok(l) => match TcpListener::from_std(l) {
            Ok(l) => return accept_loop(what, l, ctx, handler).await,
            Err(e) => return tracing::error!("{what}: listener: {e}"),
        },
        Err(e) => return tracing::error!("{what}: listener: {e}"),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return tracing::error!("{what}: listener: {e}"),
    };
    let mut listeners = vec![listener];
    for _ in 1..workers.len() {
        match workers::bind_shared(addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                tracing::warn!("{what}: a listener per worker on {addr}: {e}; fewer used");
                break;
            }
        }
    }
    if listeners.len() > 1 {
        // Without it the kernel's hash still spreads the connections.
        if let Err(e) = workers::steer_local_by_cpu(&listeners[0], listeners.len()) {
            tracing::debug!("{what}: steering local connections by CPU: {e}");
        }
    }
    // Aborted when this future is dropped (the accepted connections go on until their
    // runtime stops).
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.iter().for_each(|t| t.abort());
        }
    }
    let mut loops = AbortOnDrop(Vec::with_capacity(listeners.len()));
    for (l, rt) in listeners.into_iter().zip(workers.iter()) {
        let (h, c) = (handler.clone(), ctx.clone());
        loops.0.push(rt.spawn(async move {
            // Registered with the runtime of the worker that polls it.
            match TcpListener::from_std(l) {
                Ok(l) => accept_loop(what, l, c, h).await,
                Err(e) => tracing::error!("{what}: listener: {e}"),
            }
        }));
    }
    for t in &mut loops.0 {
        let _ = t.await;
    }
}

/// Accepts on `listener` and runs `handler` for each connection in a task of the current
/// runtime.
async fn accept_loop<F, Fut>(what: &'static str, listener: TcpListener, ctx: Ctx, handler: Arc<F>)
where
    F: Fn(TcpStream, SocketAddr, Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut refused: u64 = 0;
    // Listeners from [`workers`] pass TCP_NODELAY on to what they accept; others need a
    // setsockopt per connection.
    let inherits_nodelay = socket2::SockRef::from(&listener)
        .tcp_nodelay()
        .unwrap_or(false);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait for connections to end instead of spinning.
                tracing::warn!("{what}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    "{what}: {} connections open (--max-conns); closed the one from {peer} ({refused} so far)",
                    ctx.limits.max_conns
                );
            }
            drop(stream);
            continue;
        };
        if !inherits_nodelay {
            let _ = stream.set_nodelay(true);
        }
        let h = handler.clone();
        let c = ctx.clone();
        tokio::spawn(async move {
            h(stream, peer, c).await;
            drop(permit);
        });
    }
}

/// Runs `service` (which binds its listeners and serves) on a multi-threaded runtime with
/// the recorder `opts` asks for, until it fails or a SIGINT/SIGTERM/SIGHUP arrives; then
/// writes out every record made.
pub fn run<F, Fut>(opts: &Options, service: F) -> anyhow::Result<()>
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    // A bad upstream is reported before any output file is created.
    if let Some(u) = &opts.upstream_proxy {
        u.parse::<dial::Upstream>().map_err(ProxyError::from)?;
    }
    let mut record = opts.record.clone();
    record.tls_raw |= opts
        .tls
        .as_ref()
        .is_some_and(|t| t.pcap_tls == crate::mitm::options::PcapTls::Raw);
    let (recorder, handle) = Recorder::start(&record).map_err(ProxyError::from)?;
    let ctl = Control::on_signals();
    ctl.arm().context("installing signal handlers")?;
    run_until(opts, recorder, handle, &ctl, service)
}

/// [`run`] with the recorder given (`opts.record` is not used) and until `ctl` is stopped:
/// the daemon's jobs, each with its own outputs and stop token.
pub fn run_until<F, Fut>(
    opts: &Options,
    recorder: Recorder,
    handle: record::RecorderHandle,
    ctl: &Control,
    service: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let upstream = match &opts.upstream_proxy {
        Some(u) => Some(u.parse::<dial::Upstream>().map_err(ProxyError::from)?),
        None => None,
    };
    // The CA is loaded (or made) before anything is served.
    let tls = match &opts.tls {
        Some(t) => Some(Arc::new(
            Interceptor::with_secrets(t, recorder.tls_secrets())
                .context("--tls")?
                .http1_only(recorder.has_http_rules()),
        )),
        None => None,
    };
    raise_nofile();
    if recorder.enabled() {
        keep_heap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("capagent-proxy")
        .build()
        .map_err(ProxyError::Runtime)?;
    let dialer = Dialer {
        upstream,
        timeout: opts.limits.handshake,
    };
    let workers = workers::Workers::start(None).map_err(ProxyError::Runtime)?;
    let mut ctx = Ctx::new(recorder, dialer, opts.limits);
    ctx.workers = workers.handles();
    ctx.tls = tls;
    let outcome = rt.block_on(async move {
        tokio::select! {
            r = service(ctx) => r,
            () = ctl.stopped() => {
                tracing::info!("stopping");
                Ok(())
            }
        }
    });
    // Cancels the relays (their connections close; their records get a close).
    workers.shutdown();
    rt.shutdown_timeout(Duration::from_secs(1));
    let written = handle.finish().map_err(ProxyError::Write);
    outcome?;
    written?;
    Ok(())
}

/// Raises the soft limit of open files to the hard limit: every relayed connection takes
/// two sockets (and two pipes while splicing).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// While recording, each chunk relayed (up to 256 KiB) is a fresh buffer that the recorder
/// thread frees once written. With glibc's defaults such buffers are mmap'ed and unmapped,
/// or trimmed from the heap, so every chunk costs page faults and zeroing; keep them on the
/// heap and the heap mapped instead (memory in flight is bounded by the recorder channel).
fn keep_heap() {
    // SAFETY: mallopt only sets allocator parameters (M_MMAP_THRESHOLD -3, M_TRIM_THRESHOLD
    // -1); a libc without them ignores the call.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

/// Reads into `buf` until `parse` completes a message (returning it and the bytes it took;
/// `buf` then also holds whatever came after), the client closes (`Ok(None)`), or `limit`
/// bytes are buffered without a message. The caller bounds the time.
pub async fn read_message<T, E>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<socks::Parse<T>, E>,
) -> io::Result<Option<Result<(T, usize), E>>> {
    use tokio::io::AsyncReadExt as _;
    loop {
        match parse(buf) {
            Ok(socks::Parse::Done(t, n)) => return Ok(Some(Ok((t, n)))),
            Ok(socks::Parse::Incomplete) => {}
            Err(e) => return Ok(Some(Err(e))),
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            listen_addr("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            listen_addr("[::1]:1080").unwrap(),
            "[::1]:1080".parse().unwrap()
        );
        assert!(listen_addr("localhost:80").is_err());
        assert!(is_loopback("127.0.0.2".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
        assert!(!is_loopback("192.0.2.1".parse().unwrap()));
    }
}
