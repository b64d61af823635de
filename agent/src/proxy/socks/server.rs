//! The SOCKS server (`capagent proxy socks`): SOCKS4 (CONNECT, BIND), 4a, and SOCKS5
//! (CONNECT, BIND, UDP ASSOCIATE; no authentication or RFC 1929 username/password).
//!
//! The whole negotiation must finish within the handshake timeout; malformed messages get the
//! protocol's own failure reply (SOCKS4 91; SOCKS5 method 0xFF, RFC 1929 status 1, or the
//! reply code that fits) and a log line. With `--auth`, credentials are checked before any
//! connection to a target, and SOCKS4 (which has no password) is refused.
//!
//! Records: a CONNECT or BIND is recorded as a TCP stream between the client and the target
//! (for BIND, the host that connected back); UDP ASSOCIATE as the datagrams between the
//! client's UDP address and each target.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::{Parse, SocksError, v4, v5};
use crate::model::{Direction, Transport};
use crate::proxy::target::{DialError, FailKind, Host, Target, resolve};
use crate::proxy::{self, Ctx, read_message, relay, tls};

/// Process name of SOCKS records.
pub const COMM: &str = "socks";

/// Longest wait for the connection a BIND announces.
const BIND_WAIT: Duration = Duration::from_secs(120);
/// Largest UDP datagram relayed.
const UDP_MAX: usize = 65535;
/// Names a UDP association remembers the address of.
const UDP_NAMES_MAX: usize = 256;

/// `--auth USER:PASS`.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    pub user: Vec<u8>,
    pub pass: Vec<u8>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Auth({:?}, <password>)",
            String::from_utf8_lossy(&self.user)
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad --auth: expected USER:PASS (user 1-255 bytes, password 0-255 bytes)")]
pub struct BadAuth;

impl std::str::FromStr for Auth {
    type Err = BadAuth;
    fn from_str(s: &str) -> Result<Auth, BadAuth> {
        let (u, p) = s.split_once(':').ok_or(BadAuth)?;
        if u.is_empty() || u.len() > 255 || p.len() > 255 {
            return Err(BadAuth);
        }
        Ok(Auth {
            user: u.as_bytes().to_vec(),
            pass: p.as_bytes().to_vec(),
        })
    }
}

impl Auth {
    /// Compares without stopping at the first difference.
    fn matches(&self, user: &[u8], pass: &[u8]) -> bool {
        fn eq(a: &[u8], b: &[u8]) -> bool {
            let mut diff = a.len() ^ b.len();
            for (i, x) in a.iter().enumerate() {
                diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
            }
            diff == 0
        }
        eq(&self.user, user) & eq(&self.pass, pass)
    }
}

#[derive(Clone, Debug)]
pub struct SocksOptions {
    pub listen: SocketAddr,
    pub auth: Option<Auth>,
}

/// Listens and serves until the process stops.
pub async fn run(opts: SocksOptions, ctx: Ctx) -> anyhow::Result<()> {
    let listener = proxy::bind_tcp("socks proxy", opts.listen).await?;
    let auth = Arc::new(opts.auth);
    proxy::serve("socks", listener, ctx, move |stream, peer, ctx| {
        let auth = auth.clone();
        async move { handle(stream, peer, ctx, auth.as_ref().as_ref()).await }
    })
    .await;
    Ok(())
}

/// What the negotiation produced.
enum Request {
    V4 { req: v4::Request, rest: Vec<u8> },
    V5 { req: v5::Request, rest: Vec<u8> },
}

/// Why a negotiation ended without a request (already answered and logged by then, where
/// the protocol has an answer).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("closed the connection during the handshake")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not SOCKS (first byte {0:#04x})")]
    NotSocks(u8),
    #[error("SOCKS4: {0}")]
    V4(SocksError),
    #[error("SOCKS4 refused: --auth needs SOCKS5 username/password")]
    V4Auth,
    #[error("SOCKS5: {0}")]
    V5(SocksError),
    #[error("SOCKS5: no acceptable authentication method among {0:02x?}")]
    NoMethod(Vec<u8>),
    #[error("SOCKS5: authentication failed for user {0:?}")]
    BadCredentials(String),
}

/// Serves one client connection (also the entry point of `capagent intercept --as socks`).
pub async fn handle(mut stream: TcpStream, peer: SocketAddr, ctx: Ctx, auth: Option<&Auth>) {
    let negotiated = tokio::time::timeout(ctx.limits.handshake, negotiate(&mut stream, auth)).await;
    let request = match negotiated {
        Ok(Ok(r)) => r,
        Ok(Err(Refused::Closed)) => {
            tracing::info!("socks: {peer}: closed the connection during the handshake");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!("socks: {peer}: {e}");
            return;
        }
        Err(_) => {
            // Slowloris: a handshake that never completes. SOCKS5 clients past the greeting
            // and SOCKS4 clients get a failure reply; the connection is closed.
            tracing::warn!(
                "socks: {peer}: handshake not completed within {:?}; closed",
                ctx.limits.handshake
            );
            return;
        }
    };
    // The address the client reached us on, for records and BIND: a CONNECT that is not
    // recorded does without (one getsockname less per connection).
    let listen = || stream.local_addr().ok();
    let result = match request {
        Request::V4 { req, rest } => match req.command {
            v4::Command::Connect => {
                let proxy = if req.socks4a {
                    "socks4a connect"
                } else {
                    "socks4 connect"
                };
                let listen = ctx.recorder.enabled().then(listen).flatten();
                connect(
                    stream,
                    peer,
                    listen,
                    &ctx,
                    proxy,
                    &req.target,
                    rest,
                    Version::V4,
                )
                .await
            }
            v4::Command::Bind => {
                let proxy = if req.socks4a {
                    "socks4a bind"
                } else {
                    "socks4 bind"
                };
                let listen = listen();
                bind(stream, peer, listen, &ctx, proxy, &req.target, Version::V4).await
            }
        },
        Request::V5 { req, rest } => match req.command {
            v5::Command::Connect => {
                let listen = ctx.recorder.enabled().then(listen).flatten();
                connect(
                    stream,
                    peer,
                    listen,
                    &ctx,
                    "socks5 connect",
                    &req.target,
                    rest,
                    Version::V5,
                )
                .await
            }
            v5::Command::Bind => {
                let listen = listen();
                bind(
                    stream,
                    peer,
                    listen,
                    &ctx,
                    "socks5 bind",
                    &req.target,
                    Version::V5,
                )
                .await
            }
            v5::Command::UdpAssociate => udp_associate(stream, peer, &ctx, &req.target).await,
        },
    };
    if let Err(e) = result {
        tracing::warn!("socks: {peer}: {e}");
    }
}

/// Reads the greeting (and credentials) and the request, answering failures.
async fn negotiate(stream: &mut TcpStream, auth: Option<&Auth>) -> Result<Request, Refused> {
    let mut buf = Vec::with_capacity(64);
    let first = read_message(stream, &mut buf, |b: &[u8]| {
        Ok::<_, SocksError>(match b.first() {
            None => Parse::Incomplete,
            Some(&v) => Parse::Done(v, 0),
        })
    })
    .await?;
    let version = match first {
        None => return Err(Refused::Closed),
        Some(Ok((v, _))) => v,
        Some(Err(e)) => return Err(Refused::V5(e)),
    };
    match version {
        v4::VERSION => {
            let (req, n) = match read_message(stream, &mut buf, v4::parse_request).await? {
                None => return Err(Refused::Closed),
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    let _ = stream.write_all(&v4::reply(v4::REJECTED, None)).await;
                    return Err(Refused::V4(e));
                }
            };
            if auth.is_some() {
                let _ = stream.write_all(&v4::reply(v4::REJECTED, None)).await;
                return Err(Refused::V4Auth);
            }
            buf.drain(..n);
            Ok(Request::V4 { req, rest: buf })
        }
        v5::VERSION => {
            let (methods, n) = match read_message(stream, &mut buf, v5::parse_greeting).await? {
                None => return Err(Refused::Closed),
                Some(Ok(r)) => r,
                Some(Err(e)) => return Err(Refused::V5(e)),
            };
            buf.drain(..n);
            let wanted = if auth.is_some() {
                v5::METHOD_USERPASS
            } else {
                v5::METHOD_NONE
            };
            if !methods.contains(&wanted) {
                let _ = stream
                    .write_all(&[v5::VERSION, v5::METHOD_UNACCEPTABLE])
                    .await;
                return Err(Refused::NoMethod(methods));
            }
            stream.write_all(&[v5::VERSION, wanted]).await?;
            if let Some(auth) = auth {
                let (creds, n) = match read_message(stream, &mut buf, v5::parse_auth).await? {
                    None => return Err(Refused::Closed),
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        let _ = stream.write_all(&[v5::AUTH_VERSION, 1]).await;
                        return Err(Refused::V5(e));
                    }
                };
                buf.drain(..n);
                if !auth.matches(&creds.user, &creds.pass) {
                    let _ = stream.write_all(&[v5::AUTH_VERSION, 1]).await;
                    return Err(Refused::BadCredentials(
                        String::from_utf8_lossy(&creds.user).into_owned(),
                    ));
                }
                stream.write_all(&[v5::AUTH_VERSION, 0]).await?;
            }
            let (req, n) = match read_message(stream, &mut buf, v5::parse_request).await? {
                None => return Err(Refused::Closed),
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    let code = match e {
                        SocksError::Command(_) => v5::REP_COMMAND_NOT_SUPPORTED,
                        SocksError::AddressType(_) => v5::REP_ADDRESS_NOT_SUPPORTED,
                        _ => v5::REP_GENERAL_FAILURE,
                    };
                    let _ = stream.write_all(&v5::reply(code, None)).await;
                    return Err(Refused::V5(e));
                }
            };
            buf.drain(..n);
            Ok(Request::V5 { req, rest: buf })
        }
        other => Err(Refused::NotSocks(other)),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V4,
    V5,
}

impl Version {
    fn success(self, addr: Option<SocketAddr>) -> Vec<u8> {
        match self {
            Version::V4 => v4::reply(v4::GRANTED, addr).to_vec(),
            Version::V5 => v5::reply(v5::REP_SUCCEEDED, addr),
        }
    }

    /// The failure reply for a dial error.
    fn failure(self, kind: FailKind) -> Vec<u8> {
        match self {
            Version::V4 => v4::reply(v4::REJECTED, None).to_vec(),
            Version::V5 => v5::reply(rep_code(kind), None),
        }
    }

    /// "Not allowed" / "command not supported" style refusals.
    fn refusal(self, code: u8) -> Vec<u8> {
        match self {
            Version::V4 => v4::reply(v4::REJECTED, None).to_vec(),
            Version::V5 => v5::reply(code, None),
        }
    }
}

/// The SOCKS5 reply code for a failure to reach a target.
pub fn rep_code(kind: FailKind) -> u8 {
    match kind {
        FailKind::Refused => v5::REP_CONNECTION_REFUSED,
        FailKind::NotFound | FailKind::HostUnreachable | FailKind::TimedOut => {
            v5::REP_HOST_UNREACHABLE
        }
        FailKind::NetworkUnreachable => v5::REP_NETWORK_UNREACHABLE,
        FailKind::Upstream | FailKind::Other => v5::REP_GENERAL_FAILURE,
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{target}: {source}")]
    Dial {
        target: String,
        #[source]
        source: DialError,
    },
    #[error("replying: {0}")]
    Reply(#[source] io::Error),
    #[error("{0}")]
    Relay(#[from] relay::RelayError),
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

#[allow(clippy::too_many_arguments)]
async fn connect(
    mut stream: TcpStream,
    peer: SocketAddr,
    listen: Option<SocketAddr>,
    ctx: &Ctx,
    proxy: &'static str,
    target: &Target,
    rest: Vec<u8>,
    version: Version,
) -> Result<(), SessionError> {
    let conn = ctx.recorder.conn(COMM, Transport::Tcp, peer);
    let requested = target.to_string();
    let mut up = match ctx.dialer.connect(target).await {
        Ok(d) => d,
        Err(e) => {
            let io = e.io();
            conn.open(proxy, listen, &requested, target.port, None, Err(&io))
                .await;
            conn.close(Err(&io)).await;
            let _ = stream.write_all(&version.failure(e.kind())).await;
            return Err(SessionError::Dial {
                target: requested,
                source: e,
            });
        }
    };
    // With --tls the open record waits for the client's first bytes (proxy::tls), unless
    // the client already sent some (they are relayed as they are).
    let defer_open = ctx.tls.is_some() && rest.is_empty();
    if !defer_open {
        conn.open(proxy, listen, &requested, target.port, up.resolved, Ok(()))
            .await;
    }
    let bound = up.stream.local_addr().ok();
    if let Err(e) = stream.write_all(&version.success(bound)).await {
        conn.close(Err(&e)).await;
        return Err(SessionError::Reply(e));
    }
    if defer_open {
        let opening = tls::Opening {
            proxy,
            listen,
            target: requested,
            port: target.port,
            resolved: up.resolved,
        };
        let host = target.host.name();
        let r = tls::open_and_relay(ctx, &conn, opening, &host, &mut stream, &mut up.stream).await;
        return match r {
            Ok(_) => {
                conn.close(Ok(())).await;
                Ok(())
            }
            Err(e) => {
                conn.close(Err(&e.io())).await;
                Err(e.into())
            }
        };
    }
    if !rest.is_empty() {
        // Bytes the client sent right after its request.
        conn.data_slice(Direction::Send, &rest).await;
        if let Err(e) = up.stream.write_all(&rest).await {
            conn.close(Err(&e)).await;
            return Err(SessionError::Io {
                what: "target",
                source: e,
            });
        }
    }
    let r = relay::relay(&mut stream, &mut up.stream, &conn, ctx.limits.idle).await;
    match r {
        Ok(_) => {
            conn.close(Ok(())).await;
            Ok(())
        }
        Err(e) => {
            conn.close(Err(&e.io())).await;
            Err(e.into())
        }
    }
}

/// The local address to offer for connections from `target` (the address this host uses to
/// reach it), else the address the client reached us on.
async fn bind_ip(target: &Target, fallback: IpAddr) -> IpAddr {
    let addr = match resolve(target).await {
        Ok(a) => a.into_iter().next(),
        Err(_) => None,
    };
    let Some(addr) = addr.filter(|a| !a.ip().is_unspecified()) else {
        return fallback;
    };
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = async {
        let s = UdpSocket::bind(any).await?;
        s.connect(SocketAddr::new(addr.ip(), addr.port().max(1)))
            .await?;
        s.local_addr()
    };
    match probe.await {
        Ok(a) => a.ip(),
        Err(_) => fallback,
    }
}

/// BIND: listen for the connection the target will open, announce the address (first
/// reply), accept one connection from the target's address (second reply), relay.
async fn bind(
    mut stream: TcpStream,
    peer: SocketAddr,
    listen: Option<SocketAddr>,
    ctx: &Ctx,
    proxy: &'static str,
    target: &Target,
    version: Version,
) -> Result<(), SessionError> {
    if ctx.dialer.upstream.is_some() {
        let _ = stream
            .write_all(&version.refusal(v5::REP_COMMAND_NOT_SUPPORTED))
            .await;
        return Err(SessionError::Refused(
            "BIND through --upstream-proxy is not supported".into(),
        ));
    }
    let fallback = listen.map_or(Ipv4Addr::LOCALHOST.into(), |l| l.ip());
    let ip = match tokio::time::timeout(ctx.limits.handshake, bind_ip(target, fallback)).await {
        Ok(ip) => ip,
        Err(_) => fallback,
    };
    let ip = match (version, ip) {
        (Version::V4, IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                // A SOCKS4 reply carries only IPv4 (and listening on every address instead
                // would expose the port).
                let _ = stream.write_all(&version.refusal(0)).await;
                return Err(SessionError::Refused(format!(
                    "SOCKS4 BIND: the address to announce, {v6}, is IPv6"
                )));
            }
        },
        (_, ip) => ip,
    };
    let listener = match TcpListener::bind(SocketAddr::new(ip, 0)).await {
        Ok(l) => l,
        Err(e) => {
            let _ = stream
                .write_all(&version.refusal(v5::REP_GENERAL_FAILURE))
                .await;
            return Err(SessionError::Io {
                what: "bind",
                source: e,
            });
        }
    };
    let bound = listener.local_addr().ok();
    stream
        .write_all(&version.success(bound))
        .await
        .map_err(SessionError::Reply)?;
    // Wait for the connection; a client closing (or talking) meanwhile ends the wait.
    let mut probe = [0u8; 1];
    let accepted = tokio::select! {
        r = tokio::time::timeout(BIND_WAIT, listener.accept()) => r,
        _ = stream.read(&mut probe) => {
            return Err(SessionError::Refused("client left while waiting for the BIND connection".into()));
        }
    };
    drop(listener);
    let (mut incoming, from) = match accepted {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let _ = stream
                .write_all(&version.refusal(v5::REP_GENERAL_FAILURE))
                .await;
            return Err(SessionError::Io {
                what: "accept",
                source: e,
            });
        }
        Err(_) => {
            let _ = stream.write_all(&version.failure(FailKind::TimedOut)).await;
            return Err(SessionError::Refused(format!(
                "no connection to the BIND address {} within {BIND_WAIT:?}",
                bound.map_or("?".to_string(), |b| b.to_string())
            )));
        }
    };
    // Only the host the client named may connect (any host when it named 0.0.0.0 / ::).
    let allowed = match &target.host {
        Host::Ip(ip) if ip.is_unspecified() => true,
        Host::Ip(ip) => same_ip(*ip, from.ip()),
        Host::Name(_) => match tokio::time::timeout(ctx.limits.handshake, resolve(target)).await {
            Ok(Ok(addrs)) => addrs.iter().any(|a| same_ip(a.ip(), from.ip())),
            _ => false,
        },
    };
    let requested = target.to_string();
    if !allowed {
        let _ = stream
            .write_all(&version.refusal(v5::REP_NOT_ALLOWED))
            .await;
        return Err(SessionError::Refused(format!(
            "BIND: connection from {from}, not from {requested}; refused"
        )));
    }
    let conn = ctx.recorder.conn(COMM, Transport::Tcp, peer);
    conn.open(proxy, listen, &requested, from.port(), Some(from), Ok(()))
        .await;
    let _ = incoming.set_nodelay(true);
    if let Err(e) = stream.write_all(&version.success(Some(from))).await {
        conn.close(Err(&e)).await;
        return Err(SessionError::Reply(e));
    }
    let r = relay::relay(&mut stream, &mut incoming, &conn, ctx.limits.idle).await;
    match r {
        Ok(_) => {
            conn.close(Ok(())).await;
            Ok(())
        }
        Err(e) => {
            conn.close(Err(&e.io())).await;
            Err(e.into())
        }
    }
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}

/// UDP ASSOCIATE: a UDP socket for the client on the address it reached us on; datagrams
/// from the client (only from its IP, and port when it named one) go to their targets, and
/// answers come back with their source in the header, until the TCP connection closes.
async fn udp_associate(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: &Ctx,
    requested: &Target,
) -> Result<(), SessionError> {
    if ctx.dialer.upstream.is_some() {
        let _ = stream
            .write_all(&v5::reply(v5::REP_COMMAND_NOT_SUPPORTED, None))
            .await;
        return Err(SessionError::Refused(
            "UDP ASSOCIATE through --upstream-proxy is not supported".into(),
        ));
    }
    let local = stream.local_addr().map_err(|e| SessionError::Io {
        what: "local address",
        source: e,
    })?;
    let client_udp = match UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = stream
                .write_all(&v5::reply(v5::REP_GENERAL_FAILURE, None))
                .await;
            return Err(SessionError::Io {
                what: "UDP socket",
                source: e,
            });
        }
    };
    let bound = client_udp.local_addr().ok();
    stream
        .write_all(&v5::reply(v5::REP_SUCCEEDED, bound))
        .await
        .map_err(SessionError::Reply)?;
    // The client's datagrams come from its IP; from the port it named, if it named one.
    let expected_port = requested.port;
    let mut client_addr: Option<SocketAddr> = None;
    let mut conn = None;
    let mut ups: [Option<UdpSocket>; 2] = [None, None];
    let mut names: HashMap<String, SocketAddr> = HashMap::new();
    let mut from_client = vec![0u8; UDP_MAX];
    let mut from_target4 = vec![0u8; UDP_MAX];
    let mut from_target6 = vec![0u8; UDP_MAX];
    let mut control = [0u8; 512];
    let idle = ctx.limits.idle.unwrap_or(Duration::MAX);
    let result = loop {
        let up4 = ups[0].as_ref();
        let up6 = ups[1].as_ref();
        tokio::select! {
            r = client_udp.recv_from(&mut from_client) => {
                let (n, src) = match r {
                    Ok(x) => x,
                    Err(e) => break Err(SessionError::Io { what: "UDP receive", source: e }),
                };
                if !same_ip(src.ip(), peer.ip())
                    || (expected_port != 0 && src.port() != expected_port)
                    || client_addr.is_some_and(|c| c != src)
                {
                    tracing::info!("socks: {peer}: UDP datagram from {src} ignored (not the client)");
                    continue;
                }
                let h = match v5::parse_udp(&from_client[..n]) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!("socks: {peer}: UDP datagram dropped: {e}");
                        continue;
                    }
                };
                if h.frag != 0 {
                    tracing::warn!("socks: {peer}: fragmented UDP datagram (FRAG {}) dropped: not supported", h.frag);
                    continue;
                }
                if client_addr.is_none() {
                    client_addr = Some(src);
                    let c = ctx.recorder.conn(COMM, Transport::Udp, src);
                    c.open("socks5 udp-associate", Some(local), requested.to_string(), requested.port, None, Ok(())).await;
                    conn = Some(c);
                }
                let dest = match &h.target.host {
                    Host::Ip(ip) => SocketAddr::new(*ip, h.target.port),
                    Host::Name(name) => {
                        let key = format!("{name}:{}", h.target.port);
                        match names.get(&key) {
                            Some(a) => *a,
                            None => match tokio::time::timeout(ctx.limits.handshake, resolve(&h.target))
                                .await
                                .unwrap_or_else(|_| Err(DialError::Timeout { target: h.target.to_string() }))
                            {
                                Ok(a) => {
                                    if names.len() >= UDP_NAMES_MAX {
                                        names.clear();
                                    }
                                    names.insert(key, a[0]);
                                    a[0]
                                }
                                Err(e) => {
                                    tracing::warn!("socks: {peer}: UDP datagram dropped: {e}");
                                    continue;
                                }
                            },
                        }
                    }
                };
                let slot = usize::from(dest.is_ipv6());
                if ups[slot].is_none() {
                    let any: SocketAddr = if dest.is_ipv6() {
                        (Ipv6Addr::UNSPECIFIED, 0).into()
                    } else {
                        (Ipv4Addr::UNSPECIFIED, 0).into()
                    };
                    match UdpSocket::bind(any).await {
                        Ok(s) => ups[slot] = Some(s),
                        Err(e) => break Err(SessionError::Io { what: "UDP socket", source: e }),
                    }
                }
                let payload = &from_client[h.len..n];
                if let Some(c) = &conn {
                    c.datagram(Direction::Send, dest, Bytes::copy_from_slice(payload)).await;
                }
                if let Some(up) = &ups[slot]
                    && let Err(e) = up.send_to(payload, dest).await
                {
                    tracing::info!("socks: {peer}: UDP send to {dest}: {e}");
                }
            }
            r = recv_opt(up4, &mut from_target4) => {
                relay_back(r, &client_udp, client_addr, conn.as_ref(), &from_target4, peer).await;
            }
            r = recv_opt(up6, &mut from_target6) => {
                relay_back(r, &client_udp, client_addr, conn.as_ref(), &from_target6, peer).await;
            }
            r = stream.read(&mut control) => {
                // The association lives as long as the TCP connection.
                match r {
                    Ok(0) => break Ok(()),
                    Ok(_) => continue,
                    Err(e) => break Err(SessionError::Io { what: "control connection", source: e }),
                }
            }
            _ = tokio::time::sleep(idle) => {
                break Err(SessionError::Refused(format!("UDP association idle for {idle:?}; closed")));
            }
        }
    };
    if let Some(c) = conn {
        match &result {
            Ok(()) => c.close(Ok(())).await,
            Err(SessionError::Io { source, .. }) => c.close(Err(source)).await,
            // The idle timeout.
            Err(_) => {
                c.close(Err(&io::Error::from_raw_os_error(libc::ETIMEDOUT)))
                    .await
            }
        }
    }
    result
}

async fn recv_opt(s: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match s {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn relay_back(
    r: io::Result<(usize, SocketAddr)>,
    client_udp: &UdpSocket,
    client: Option<SocketAddr>,
    conn: Option<&proxy::Conn>,
    buf: &[u8],
    peer: SocketAddr,
) {
    let (n, from) = match r {
        Ok(x) => x,
        Err(e) => {
            tracing::info!("socks: {peer}: UDP receive from a target: {e}");
            return;
        }
    };
    let Some(client) = client else { return };
    let payload = &buf[..n];
    if let Some(c) = conn {
        c.datagram(Direction::Recv, from, Bytes::copy_from_slice(payload))
            .await;
    }
    let mut out = v5::udp_header(from);
    out.extend_from_slice(payload);
    if let Err(e) = client_udp.send_to(&out, client).await {
        tracing::info!("socks: {peer}: UDP send to the client: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_flag() {
        let a: Auth = "user:pa:ss".parse().unwrap();
        assert!(a.matches(b"user", b"pa:ss"));
        assert!(!a.matches(b"user", b"pa:s"));
        assert!(!a.matches(b"user", b"pa:sss"));
        assert!(!a.matches(b"usr", b"pa:ss"));
        assert!(!a.matches(b"", b""));
        assert!("nopass".parse::<Auth>().is_err());
        assert!(":x".parse::<Auth>().is_err());
        assert!("u:".parse::<Auth>().is_ok());
        assert!(!format!("{a:?}").contains("pa:ss"));
    }

    #[test]
    fn reply_codes() {
        assert_eq!(rep_code(FailKind::Refused), 5);
        assert_eq!(rep_code(FailKind::NotFound), 4);
        assert_eq!(rep_code(FailKind::HostUnreachable), 4);
        assert_eq!(rep_code(FailKind::NetworkUnreachable), 3);
        assert_eq!(rep_code(FailKind::Other), 1);
    }
}
