//! What happens to an intercepted connection once its original destination is known: a
//! [`Sink`] relays it (and records it). The interception mechanisms only produce
//! [`Accepted`] connections and [`UdpFlow`] datagrams.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::pin::Pin;

use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use super::origdst;
use crate::model::{Direction, Transport};
use crate::proxy::http::reverse::{self, ReverseOptions};
use crate::proxy::target::FailKind;
use crate::proxy::{Conn, Ctx, Dialer, Recorder, Target, relay, socks, tls};

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection the transparent listener accepted.
pub struct Accepted {
    pub client: TcpStream,
    /// The client's address as the listener sees it.
    pub peer: SocketAddr,
    /// The listener's address.
    pub listen: SocketAddr,
    /// Where the client was connecting to.
    pub orig: SocketAddr,
    /// The process that connected (per-process mode).
    pub pid: Option<u32>,
    /// `redirect`, `tproxy` or `process`.
    pub how: &'static str,
    /// Mark for the upstream socket (capagent's rules never catch it).
    pub mark: u32,
}

/// One direction of an intercepted UDP flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpDir {
    /// Client → original destination.
    Request,
    /// Original destination → client.
    Reply,
}

/// Relays intercepted traffic.
pub trait Sink: Send + Sync + 'static {
    /// Relays one TCP connection to its original destination until it ends.
    fn tcp(&self, conn: Accepted) -> BoxFuture;
    /// A UDP flow (client → orig; of process `pid` per process) starts; its datagrams are
    /// reported to what this returns.
    fn udp_flow(
        &self,
        client: SocketAddr,
        orig: SocketAddr,
        listen: SocketAddr,
        how: &'static str,
        pid: Option<u32>,
    ) -> Pin<Box<dyn Future<Output = Box<dyn UdpFlow>> + Send>>;
}

/// The records of one intercepted UDP flow.
pub trait UdpFlow: Send + Sync {
    /// One datagram relayed in direction `dir`.
    fn datagram(&self, dir: UdpDir, payload: bytes::Bytes) -> BoxFuture;
    /// The flow ended (idle).
    fn close(&self) -> BoxFuture;
}

/// Connects to `to` from a socket carrying `mark`.
pub async fn dial(to: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    let s = if to.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if mark != 0 {
        origdst::set_mark(s.as_raw_fd(), mark)?;
    }
    let stream = s.connect(to).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The raw relay of `capagent proxy forward` ([`relay::relay`]: large buffers, half-close
/// relayed, splice when not recording) with its records ([`Recorder`]): an `open` record
/// naming the client, the original destination and how it was intercepted, the bytes both
/// ways, the close. With `--tls`, as `proxy forward --tls` ([`tls::open_and_relay`]): TLS
/// is intercepted, the original destination the name asked for when there is no SNI.
/// With `--upstream-proxy` (`via`), the original destination is reached through that
/// proxy (SOCKS5 or HTTP CONNECT), which the `open` record names.
pub struct Recording {
    pub recorder: Recorder,
    pub idle: Option<Duration>,
    /// `--tls`: the proxies' context holding the interceptor.
    pub tls: Option<Ctx>,
    /// `--upstream-proxy`: the dialer reaching original destinations through it.
    pub via: Option<Dialer>,
}

/// Why [`connect_orig`] failed.
struct DialFailure {
    /// As the log says it.
    msg: String,
    /// As the record's errno.
    io: io::Error,
    /// The upstream proxy failed or refused (unreachable, credentials, its rules): worth a
    /// warning, unlike a destination refusing, which is the application's business.
    upstream: bool,
}

/// Connects to `orig` from a socket carrying `mark`, directly or through the upstream proxy
/// of `via` (the connection to the proxy carries the mark).
async fn connect_orig(
    via: Option<&Dialer>,
    orig: SocketAddr,
    mark: u32,
) -> Result<TcpStream, DialFailure> {
    match via {
        None => dial(orig, mark).await.map_err(|e| DialFailure {
            msg: e.to_string(),
            io: e,
            upstream: false,
        }),
        Some(d) => d
            .connect_marked(&Target::ip(orig), mark)
            .await
            .map(|d| d.stream)
            .map_err(|e| DialFailure {
                msg: e.to_string(),
                io: e.io(),
                upstream: e.kind() == FailKind::Upstream,
            }),
    }
}

/// Process name of interception records.
pub const COMM: &str = "intercept";

fn label(how: &str, pid: Option<u32>) -> String {
    match pid {
        Some(p) => match crate::process::process_comm(p) {
            Some(comm) => format!("{how} pid={p} comm={comm}"),
            None => format!("{how} pid={p}"),
        },
        None => how.to_string(),
    }
}

impl Sink for Recording {
    fn tcp(&self, mut a: Accepted) -> BoxFuture {
        let conn = self.recorder.conn(COMM, Transport::Tcp, a.peer);
        let idle = self.idle;
        let tls = self.tls.clone();
        let via = self.via.clone();
        Box::pin(async move {
            let mut what = label(a.how, a.pid);
            if let Some(up) = via.as_ref().and_then(|d| d.upstream.as_ref()) {
                what.push_str(&format!(" via {}", up.url()));
            }
            let target = a.orig.to_string();
            let mut up = match connect_orig(via.as_ref(), a.orig, a.mark).await {
                Ok(s) => s,
                Err(f) => {
                    if f.upstream {
                        tracing::warn!("{what}: {} -> {}: {}", a.peer, a.orig, f.msg);
                    } else {
                        tracing::info!("{what}: {} -> {}: {}", a.peer, a.orig, f.msg);
                    }
                    let e = f.io;
                    conn.open(
                        what,
                        Some(a.listen),
                        target,
                        a.orig.port(),
                        Some(a.orig),
                        Err(&e),
                    )
                    .await;
                    conn.close(Err(&e)).await;
                    // The client learns with a reset, as if the server had refused it.
                    relay::reset_on_close(&a.client);
                    return;
                }
            };
            let relayed = match &tls {
                Some(ctx) => {
                    let opening = tls::Opening {
                        proxy: &what,
                        listen: Some(a.listen),
                        target,
                        port: a.orig.port(),
                        resolved: Some(a.orig),
                    };
                    let host = a.orig.ip().to_string();
                    tls::open_and_relay(ctx, &conn, opening, &host, &mut a.client, &mut up).await
                }
                None => {
                    conn.open(
                        what,
                        Some(a.listen),
                        target,
                        a.orig.port(),
                        Some(a.orig),
                        Ok(()),
                    )
                    .await;
                    relay::relay(&mut a.client, &mut up, &conn, idle).await
                }
            };
            match relayed {
                Ok(_) => conn.close(Ok(())).await,
                Err(e) => {
                    tracing::info!("{}: {} -> {}: {e}", a.how, a.peer, a.orig);
                    conn.close(Err(&e.io())).await;
                }
            }
        })
    }

    fn udp_flow(
        &self,
        client: SocketAddr,
        orig: SocketAddr,
        listen: SocketAddr,
        how: &'static str,
        pid: Option<u32>,
    ) -> Pin<Box<dyn Future<Output = Box<dyn UdpFlow>> + Send>> {
        let conn = self.recorder.conn(COMM, Transport::Udp, client);
        let mut what = label(&format!("{how} udp"), pid);
        if let Some(up) = self.via.as_ref().and_then(|d| d.upstream.as_ref()) {
            what.push_str(&format!(" via {}", up.url()));
        }
        Box::pin(async move {
            conn.open(
                what,
                Some(listen),
                orig.to_string(),
                orig.port(),
                Some(orig),
                Ok(()),
            )
            .await;
            Box::new(RecordedFlow {
                conn: std::sync::Arc::new(conn),
                orig,
            }) as Box<dyn UdpFlow>
        })
    }
}

struct RecordedFlow {
    conn: std::sync::Arc<Conn>,
    orig: SocketAddr,
}

impl UdpFlow for RecordedFlow {
    fn datagram(&self, dir: UdpDir, payload: bytes::Bytes) -> BoxFuture {
        let d = match dir {
            UdpDir::Request => Direction::Send,
            UdpDir::Reply => Direction::Recv,
        };
        let conn = self.conn.clone();
        let orig = self.orig;
        Box::pin(async move { conn.datagram(d, orig, payload).await })
    }

    fn close(&self) -> BoxFuture {
        let conn = self.conn.clone();
        Box::pin(async move { conn.close(Ok(())).await })
    }
}

/// `--as socks`: each intercepted connection is one an application made to its SOCKS proxy;
/// capagent's SOCKS server ([`socks::server::handle`], SOCKS 4/4a/5, no authentication)
/// answers it instead and reaches the targets the application asks for itself, recording
/// each with the target as requested; UDP flows are recorded raw.
pub struct SocksAware {
    pub ctx: Ctx,
    pub raw: Recording,
}

impl Sink for SocksAware {
    fn tcp(&self, a: Accepted) -> BoxFuture {
        let ctx = self.ctx.clone();
        Box::pin(async move {
            tracing::debug!("{}: {} -> {} as socks", a.how, a.peer, a.orig);
            socks::server::handle(a.client, a.peer, ctx, None).await;
        })
    }

    fn udp_flow(
        &self,
        client: SocketAddr,
        orig: SocketAddr,
        listen: SocketAddr,
        how: &'static str,
        pid: Option<u32>,
    ) -> Pin<Box<dyn Future<Output = Box<dyn UdpFlow>> + Send>> {
        self.raw.udp_flow(client, orig, listen, how, pid)
    }
}

/// `--as http`: each intercepted connection is served by the reverse HTTP proxy's handler
/// with the original destination as its only server ([`reverse::handle`]: keep-alive,
/// pipelining, chunked bodies, hop-by-hop fields, every request and response recorded);
/// UDP flows are recorded raw.
pub struct HttpAware {
    pub ctx: Ctx,
    pub raw: Recording,
}

impl Sink for HttpAware {
    fn tcp(&self, a: Accepted) -> BoxFuture {
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let opts = ReverseOptions {
                listen: a.listen,
                to: Some(Target::ip(a.orig)),
                routes: Vec::new(),
                rewrite_host: false,
            };
            tracing::debug!("{}: {} -> {} as http", a.how, a.peer, a.orig);
            reverse::handle(a.client, a.peer, ctx, &opts).await;
        })
    }

    fn udp_flow(
        &self,
        client: SocketAddr,
        orig: SocketAddr,
        listen: SocketAddr,
        how: &'static str,
        pid: Option<u32>,
    ) -> Pin<Box<dyn Future<Output = Box<dyn UdpFlow>> + Send>> {
        self.raw.udp_flow(client, orig, listen, how, pid)
    }
}
