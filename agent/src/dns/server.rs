//! The DNS server's sockets: one UDP socket and one TCP listener on the same address,
//! answering with [`answer::decide`], forwarding to the upstream server when it says so.
//!
//! Records (through the proxies' [`Recorder`]): each UDP query is one UDP session of the
//! client (`open`, the query and the answer as datagrams between the client and the server
//! address, `close`); each TCP connection one TCP stream (the length-prefixed messages as
//! they were sent). A forwarded query adds the exchange with the upstream server, between
//! capagent's own socket and the upstream address. In pcapng these are real DNS packets,
//! which Wireshark dissects as DNS on port 53 (on other ports: *Decode As*, or tshark's
//! `-d udp.port==PORT,dns`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::answer::{self, Decision, Policy};
use crate::model::{Direction, Transport};
use crate::proxy::{Ctx, serve, warn_if_exposed};

/// Process name of the records.
pub const COMM: &str = "dns";
/// Largest UDP message received.
const UDP_MAX: usize = 65535;

/// What `capagent dns` was given.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// Port 0 picks a free port (the same for UDP and TCP).
    pub listen: SocketAddr,
    pub policy: Policy,
    pub upstream: Option<SocketAddr>,
    /// How long the upstream server has to answer.
    pub upstream_timeout: Duration,
}

struct Server {
    opts: DnsOptions,
    /// The address bound (the real port).
    addr: SocketAddr,
}

/// Binds UDP and TCP on the same address and port.
async fn bind(listen: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    // With port 0 the UDP port the kernel picks may be taken for TCP: try a few.
    for _ in 0..20 {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (udp): {e}"))?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if listen.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => anyhow::bail!("cannot listen on {addr} (tcp): {e}"),
        }
    }
    anyhow::bail!("no port free for both UDP and TCP on {}", listen.ip())
}

/// Serves UDP and TCP until the runtime stops.
pub async fn run(opts: DnsOptions, ctx: Ctx) -> anyhow::Result<()> {
    warn_if_exposed("dns", opts.listen);
    let (udp, tcp) = bind(opts.listen).await?;
    let addr = udp.local_addr()?;
    eprintln!("capagent: dns listening on {addr} (udp and tcp)");
    let server = Arc::new(Server { opts, addr });
    let udp = Arc::new(udp);
    let s = server.clone();
    let c = ctx.clone();
    let udp_loop = tokio::spawn(async move { serve_udp(udp, s, c).await });
    let s = server.clone();
    serve("dns (tcp)", tcp, ctx, move |stream, peer, ctx| {
        let s = s.clone();
        async move { serve_tcp(stream, peer, ctx, &s).await }
    })
    .await;
    udp_loop.abort();
    Ok(())
}

async fn serve_udp(sock: Arc<UdpSocket>, server: Arc<Server>, ctx: Ctx) {
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors of earlier replies surface here; go on.
                tracing::debug!("dns: udp receive: {e}");
                continue;
            }
        };
        let query = Bytes::copy_from_slice(&buf[..n]);
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            tracing::warn!("dns: too many queries in progress; dropped one from {peer}");
            continue;
        };
        let (sock, server, ctx) = (sock.clone(), server.clone(), ctx.clone());
        tokio::spawn(async move {
            answer_udp(&sock, query, peer, &ctx, &server).await;
            drop(permit);
        });
    }
}

async fn answer_udp(sock: &UdpSocket, query: Bytes, peer: SocketAddr, ctx: &Ctx, s: &Server) {
    let decision = answer::decide(&query, &s.opts.policy);
    let bad = decision.is_error();
    let what = match &decision {
        Decision::Reply { what, .. } | Decision::Forward { what } => what.clone(),
        Decision::Drop { why } => format!("ignored: {why}"),
    };
    let rec = ctx.recorder.conn(COMM, Transport::Udp, peer);
    rec.open(
        "dns",
        Some(s.addr),
        what.clone(),
        s.addr.port(),
        None,
        Ok(()),
    )
    .await;
    rec.datagram(Direction::Send, s.addr, query.clone()).await;
    let reply = match decision {
        Decision::Reply { bytes, .. } => Some(bytes),
        Decision::Forward { .. } => Some(forward(&query, false, ctx, s).await),
        Decision::Drop { .. } => None,
    };
    if bad {
        tracing::warn!("dns: {peer}: udp {what}");
    } else {
        tracing::info!("dns: {peer}: udp {what}");
    }
    let result = match reply {
        Some(bytes) => {
            let r = sock.send_to(&bytes, peer).await.map(|_| ());
            rec.datagram(Direction::Recv, s.addr, Bytes::from(bytes))
                .await;
            r
        }
        None => Ok(()),
    };
    rec.close(result.as_ref().map(|_| ())).await;
}

/// The upstream answer to `query`, or SERVFAIL when it fails or times out. `tcp`: ask over
/// TCP (the client asked over TCP).
async fn forward(query: &[u8], tcp: bool, ctx: &Ctx, s: &Server) -> Vec<u8> {
    let Some(up) = s.opts.upstream else {
        return answer::servfail(query, &s.opts.policy).unwrap_or_default();
    };
    let r = tokio::time::timeout(s.opts.upstream_timeout, async {
        // Through an --upstream-proxy (a CONNECT: TCP only), DNS goes over TCP.
        if tcp || ctx.dialer.upstream.is_some() {
            ask_tcp(query, up, ctx).await
        } else {
            ask_udp(query, up, ctx).await
        }
    })
    .await
    .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)));
    match r {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!("dns: upstream {up}: {e}; answering SERVFAIL");
            answer::servfail(query, &s.opts.policy).unwrap_or_default()
        }
    }
}

fn unspecified(like: SocketAddr) -> SocketAddr {
    match like {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// One query to the upstream server over UDP from a fresh socket (so answers cannot mix),
/// recorded; waits for an answer with the query's ID.
async fn ask_udp(query: &[u8], up: SocketAddr, ctx: &Ctx) -> io::Result<Vec<u8>> {
    let sock = UdpSocket::bind(unspecified(up)).await?;
    sock.connect(up).await?;
    let local = sock.local_addr()?;
    let rec = ctx.recorder.conn(COMM, Transport::Udp, local);
    rec.open(
        "dns upstream",
        None,
        up.to_string(),
        up.port(),
        Some(up),
        Ok(()),
    )
    .await;
    rec.datagram(Direction::Send, up, Bytes::copy_from_slice(query))
        .await;
    let id = answer::message_id(query);
    let result = async {
        sock.send(query).await?;
        let mut buf = vec![0u8; UDP_MAX];
        loop {
            let n = sock.recv(&mut buf).await?;
            let resp = buf[..n].to_vec();
            rec.datagram(Direction::Recv, up, Bytes::copy_from_slice(&resp))
                .await;
            if answer::message_id(&resp) == id && n >= 12 {
                return Ok(resp);
            }
        }
    }
    .await;
    rec.close(result.as_ref().map(|_| ())).await;
    result
}

/// One query to the upstream server over a new TCP connection (through the
/// `--upstream-proxy` when there is one), recorded.
async fn ask_tcp(query: &[u8], up: SocketAddr, ctx: &Ctx) -> io::Result<Vec<u8>> {
    let mut stream = ctx
        .dialer
        .connect(&crate::proxy::Target::ip(up))
        .await
        .map_err(|e| e.io())?
        .stream;
    let local = stream.local_addr()?;
    let rec = ctx.recorder.conn(COMM, Transport::Tcp, local);
    rec.open(
        "dns upstream tcp",
        None,
        up.to_string(),
        up.port(),
        Some(up),
        Ok(()),
    )
    .await;
    let result = async {
        let framed = answer::tcp_framed(query);
        rec.data_slice(Direction::Send, &framed).await;
        stream.write_all(&framed).await?;
        let mut buf = Vec::with_capacity(512);
        loop {
            if let Some((range, _)) = answer::tcp_frame(&buf) {
                return Ok(buf[range].to_vec());
            }
            let before = buf.len();
            buf.resize(before + 4096, 0);
            let n = stream.read(&mut buf[before..]).await?;
            buf.truncate(before + n);
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            rec.data_slice(Direction::Recv, &buf[before..]).await;
        }
    }
    .await;
    rec.close(result.as_ref().map(|_| ())).await;
    result
}

/// A TCP client: length-prefixed queries in order, until it closes or stays idle.
async fn serve_tcp(mut stream: TcpStream, peer: SocketAddr, ctx: Ctx, s: &Server) {
    let rec = ctx.recorder.conn(COMM, Transport::Tcp, peer);
    rec.open(
        "dns tcp",
        Some(s.addr),
        s.addr.to_string(),
        s.addr.port(),
        Some(s.addr),
        Ok(()),
    )
    .await;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut first = true;
    let result: io::Result<()> = async {
        loop {
            // A query must arrive whole within the handshake time once it started.
            let frame = loop {
                if let Some((range, used)) = answer::tcp_frame(&buf) {
                    let q = buf[range].to_vec();
                    buf.drain(..used);
                    break Some(q);
                }
                let wait = if buf.is_empty() && !first {
                    ctx.limits.idle
                } else {
                    Some(ctx.limits.handshake)
                };
                let mut chunk = [0u8; 4096];
                let read = stream.read(&mut chunk);
                let n = match wait {
                    Some(w) => match tokio::time::timeout(w, read).await {
                        Ok(r) => r?,
                        Err(_) => {
                            tracing::info!("dns: {peer}: tcp: timed out waiting for a query");
                            break None;
                        }
                    },
                    None => read.await?,
                };
                if n == 0 {
                    rec.eof(Direction::Send).await;
                    break None;
                }
                rec.data_slice(Direction::Send, &chunk[..n]).await;
                buf.extend_from_slice(&chunk[..n]);
            };
            let Some(query) = frame else {
                return Ok(());
            };
            first = false;
            let decision = answer::decide(&query, &s.opts.policy);
            let bad = decision.is_error();
            let reply = match decision {
                Decision::Reply { bytes, what } => {
                    if bad {
                        tracing::warn!("dns: {peer}: tcp {what}");
                    } else {
                        tracing::info!("dns: {peer}: tcp {what}");
                    }
                    bytes
                }
                Decision::Forward { what } => {
                    tracing::info!("dns: {peer}: tcp {what}");
                    forward(&query, true, &ctx, s).await
                }
                Decision::Drop { why } => {
                    tracing::warn!("dns: {peer}: tcp: {why}; closing");
                    return Ok(());
                }
            };
            let framed = answer::tcp_framed(&reply);
            rec.data_slice(Direction::Recv, &framed).await;
            stream.write_all(&framed).await?;
        }
    }
    .await;
    rec.close(result.as_ref().map(|_| ())).await;
}
