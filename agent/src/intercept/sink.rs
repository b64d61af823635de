//! What happens to an intercepted connection once its original destination is known: a
//! [`Sink`] relays it (and records it). The interception mechanisms only produce
//! [`Accepted`] connections and [`UdpFlow`] datagrams.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use super::names::{self, DnsTap, Names};
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
/// proxy (SOCKS5 or HTTP CONNECT), which the `open` record names; given as the name the
/// program resolved when `names` knows it (the record's target is then that name).
pub struct Recording {
    pub recorder: Recorder,
    pub idle: Option<Duration>,
    /// `--tls`: the proxies' context holding the interceptor.
    pub tls: Option<Ctx>,
    /// `--upstream-proxy`: the dialer reaching original destinations through it.
    pub via: Option<Dialer>,
    /// The names learned from the DNS answers relayed (UDP from port 53, TCP port 53), sent
    /// to the upstream proxy instead of the address (None: addresses only).
    pub names: Option<Arc<Names>>,
}

impl Recording {
    /// Where to reach `orig`: its name when an answer gave one, else the address.
    fn destination(&self, orig: SocketAddr) -> Target {
        match self.names.as_ref().and_then(|n| n.name_of(orig.ip())) {
            Some(name) => Target::name(name, orig.port()),
            None => Target::ip(orig),
        }
    }
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
/// of `via` (the connection to the proxy carries the mark), which is asked for `dest` (`orig`
/// or its name).
async fn connect_orig(
    via: Option<&Dialer>,
    dest: &Target,
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
            .connect_marked(dest, mark)
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
        let dest = self.destination(a.orig);
        let names = self.names.clone();
        Box::pin(async move {
            let mut what = label(a.how, a.pid);
            if let Some(up) = via.as_ref().and_then(|d| d.upstream.as_ref()) {
                what.push_str(&format!(" via {}", up.url()));
            }
            let target = dest.to_string();
            let mut up = match connect_orig(via.as_ref(), &dest, a.orig, a.mark).await {
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
                    let host = dest.host.name();
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
                    match names {
                        // DNS over TCP: its answers teach names too.
                        Some(n) if a.orig.port() == names::DNS_PORT => {
                            let mut up = DnsTap::new(up, n);
                            relay::relay_streams(&mut a.client, &mut up, &conn, idle).await
                        }
                        _ => relay::relay(&mut a.client, &mut up, &conn, idle).await,
                    }
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
        // DNS answers relayed teach names.
        let names = self
            .names
            .clone()
            .filter(|_| orig.port() == names::DNS_PORT);
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
                names,
            }) as Box<dyn UdpFlow>
        })
    }
}

struct RecordedFlow {
    conn: std::sync::Arc<Conn>,
    orig: SocketAddr,
    /// A DNS flow's names (its answers are learned).
    names: Option<Arc<Names>>,
}

impl UdpFlow for RecordedFlow {
    fn datagram(&self, dir: UdpDir, payload: bytes::Bytes) -> BoxFuture {
        let d = match dir {
            UdpDir::Request => Direction::Send,
            UdpDir::Reply => Direction::Recv,
        };
        if let (UdpDir::Reply, Some(n)) = (dir, &self.names) {
            n.learn(&payload);
        }
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
        let to = self.raw.destination(a.orig);
        Box::pin(async move {
            let opts = ReverseOptions {
                listen: a.listen,
                to: Some(to),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A DNS response giving `ip` for `name` (hand-encoded: header, question, one A record
    /// pointing back at the question's name).
    fn a_answer(name: &str, ip: [u8; 4]) -> bytes::Bytes {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4]);
        m.extend_from_slice(&ip);
        m.into()
    }

    fn recording(names: Option<Arc<Names>>) -> Recording {
        Recording {
            recorder: Recorder::disabled(),
            idle: None,
            tls: None,
            via: None,
            names,
        }
    }

    /// A `tproxy` UDP flow from 10.0.0.2:40000 to `orig`.
    async fn flow(r: &Recording, orig: &str) -> Box<dyn UdpFlow> {
        let client: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let listen: SocketAddr = "0.0.0.0:1".parse().unwrap();
        r.udp_flow(client, orig.parse().unwrap(), listen, "tproxy", None)
            .await
    }

    #[tokio::test]
    async fn udp_dns_answers_name_destinations() {
        let names = Arc::new(Names::default());
        let r = recording(Some(names.clone()));
        let orig: SocketAddr = "192.0.2.80:8080".parse().unwrap();
        assert_eq!(r.destination(orig), Target::ip(orig));
        // A reply of a flow to another port teaches nothing, nor does a request.
        let other = flow(&r, "192.0.2.53:5353").await;
        other
            .datagram(UdpDir::Reply, a_answer("www.example.org", [192, 0, 2, 80]))
            .await;
        let dns = flow(&r, "192.0.2.53:53").await;
        dns.datagram(
            UdpDir::Request,
            a_answer("www.example.org", [192, 0, 2, 80]),
        )
        .await;
        assert_eq!(r.destination(orig), Target::ip(orig));
        dns.datagram(UdpDir::Reply, a_answer("www.example.org", [192, 0, 2, 80]))
            .await;
        assert_eq!(r.destination(orig), Target::name("www.example.org", 8080));
        assert_eq!(r.destination(orig).to_string(), "www.example.org:8080");
        // Without names (--no-upstream-names, no upstream): addresses only.
        let r = recording(None);
        let dns = flow(&r, "192.0.2.53:53").await;
        dns.datagram(UdpDir::Reply, a_answer("www.example.org", [192, 0, 2, 80]))
            .await;
        assert_eq!(r.destination(orig), Target::ip(orig));
    }
}
