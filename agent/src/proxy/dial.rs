//! Reaching targets: the [`Dialer`] every proxy uses to connect to a [`Target`], directly
//! (resolving names with the system resolver and trying each address) or through an upstream
//! proxy, which then resolves names itself: SOCKS5 (`--upstream-proxy
//! socks5://[USER:PASS@]HOST:PORT`) or an HTTP proxy's CONNECT (`--upstream-proxy
//! http://[USER:PASS@]HOST:PORT`). The target and the ways reaching it fails are in
//! [`super::target`], which the SOCKS codec uses too. Datagrams go through a SOCKS5 upstream
//! by `UDP ASSOCIATE` ([`UdpAssociation`]).

use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use super::http::head;
use super::socks::{Parse, v5};
use super::target::{DialError, FailKind, Target, resolve};

/// A connected target.
#[derive(Debug)]
pub struct Dialed {
    pub stream: TcpStream,
    /// The address connected to (None through an upstream proxy given a name).
    pub resolved: Option<SocketAddr>,
}

/// An upstream proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub kind: UpstreamKind,
    pub host: Target,
    pub auth: Option<(String, String)>,
}

/// The protocol spoken to an [`Upstream`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamKind {
    /// SOCKS5 CONNECT (`socks5://`, `socks5h://`).
    Socks5,
    /// HTTP CONNECT (`http://`).
    HttpConnect,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "bad --upstream-proxy {0:?}: expected socks5://[USER:PASS@]HOST:PORT or http://[USER:PASS@]HOST:PORT"
)]
pub struct BadUpstream(pub String);

impl FromStr for Upstream {
    type Err = BadUpstream;

    fn from_str(s: &str) -> Result<Upstream, BadUpstream> {
        let bad = || BadUpstream(s.to_string());
        let (kind, rest) = if let Some(r) = s.strip_prefix("socks5://") {
            (UpstreamKind::Socks5, r)
        } else if let Some(r) = s.strip_prefix("socks5h://") {
            (UpstreamKind::Socks5, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (UpstreamKind::HttpConnect, r)
        } else {
            return Err(bad());
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => {
                let (u, p) = a.split_once(':').ok_or_else(bad)?;
                if u.is_empty() || u.len() > 255 || p.len() > 255 {
                    return Err(bad());
                }
                (Some((u.to_string(), p.to_string())), h)
            }
            None => (None, rest),
        };
        let host = hostport.parse().map_err(|_| bad())?;
        Ok(Upstream { kind, host, auth })
    }
}

impl Upstream {
    /// The proxy as `socks5://HOST:PORT` or `http://HOST:PORT`, without credentials (for
    /// records and logs).
    pub fn url(&self) -> String {
        let scheme = match self.kind {
            UpstreamKind::Socks5 => "socks5",
            UpstreamKind::HttpConnect => "http",
        };
        format!("{scheme}://{}", self.host)
    }
}

/// Connects to targets, directly or through an upstream proxy (SOCKS5 or HTTP CONNECT).
#[derive(Clone, Debug)]
pub struct Dialer {
    pub upstream: Option<Upstream>,
    /// Longest a connection (resolution included) may take.
    pub timeout: Duration,
}

impl Dialer {
    pub fn direct(timeout: Duration) -> Dialer {
        Dialer {
            upstream: None,
            timeout,
        }
    }

    /// Connects to `target`.
    pub async fn connect(&self, target: &Target) -> Result<Dialed, DialError> {
        self.connect_marked(target, 0).await
    }

    /// Connects to `target` from a socket carrying `mark` (`SO_MARK`; 0: none), so that
    /// capagent's own interception rules, which skip that mark, never catch the connection
    /// (to the target, or to the upstream proxy).
    pub async fn connect_marked(&self, target: &Target, mark: u32) -> Result<Dialed, DialError> {
        let what = target.to_string();
        let fut = async {
            match &self.upstream {
                None => connect_direct(target, mark).await,
                Some(up) => connect_via(up, target, mark).await,
            }
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout { target: what }),
        }
    }
}

async fn connect_direct(target: &Target, mark: u32) -> Result<Dialed, DialError> {
    let addrs = resolve(target).await?;
    let mut last = None;
    for addr in addrs {
        match connect_addr(addr, mark).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(Dialed {
                    stream,
                    resolved: Some(addr),
                });
            }
            Err(source) => last = Some(DialError::Connect { addr, source }),
        }
    }
    Err(last.expect("at least one address"))
}

/// Connects to `addr`, from a socket carrying `mark` when it is not 0.
async fn connect_addr(addr: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    if mark == 0 {
        return TcpStream::connect(addr).await;
    }
    let s = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket2::SockRef::from(&s).set_mark(mark)?;
    s.connect(addr).await
}

/// Connects through the upstream proxy `up` (the name goes to the proxy as is); the
/// connection to the proxy carries `mark`.
async fn connect_via(up: &Upstream, target: &Target, mark: u32) -> Result<Dialed, DialError> {
    let proxy = up.host.to_string();
    let fail = |what: String, kind| DialError::Upstream {
        proxy: proxy.clone(),
        what,
        kind,
    };
    let Dialed { mut stream, .. } = connect_direct(&up.host, mark).await.map_err(|e| {
        fail(
            format!("cannot reach it: {e}"),
            match e.kind() {
                FailKind::Refused => FailKind::Upstream,
                k => k,
            },
        )
    })?;
    let r = match up.kind {
        UpstreamKind::Socks5 => socks5_connect(&mut stream, up, target).await,
        UpstreamKind::HttpConnect => http_connect(&mut stream, up, target).await,
    };
    r.map_err(|(what, kind)| fail(what, kind))?;
    let _ = stream.set_nodelay(true);
    Ok(Dialed {
        stream,
        resolved: target.addr(),
    })
}

/// Why an upstream refused or failed a connection: what it did, and the kind of failure.
type Refusal = (String, FailKind);

fn io_refusal(e: io::Error) -> Refusal {
    (format!("{e}"), FailKind::Upstream)
}

/// The SOCKS5 greeting, authentication and CONNECT on `stream`, connected to `up`.
async fn socks5_connect(
    stream: &mut TcpStream,
    up: &Upstream,
    target: &Target,
) -> Result<(), Refusal> {
    socks5_request(stream, up, v5::Command::Connect, target)
        .await
        .map(|_| ())
}

/// The SOCKS5 greeting, authentication and a `command` request for `target` on `stream`,
/// connected to `up`; the reply's bound address when it succeeded.
async fn socks5_request(
    stream: &mut TcpStream,
    up: &Upstream,
    command: v5::Command,
    target: &Target,
) -> Result<Target, Refusal> {
    let method = if up.auth.is_some() {
        v5::METHOD_USERPASS
    } else {
        v5::METHOD_NONE
    };
    stream
        .write_all(&[v5::VERSION, 1, method])
        .await
        .map_err(io_refusal)?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await.map_err(io_refusal)?;
    if choice[0] != v5::VERSION || choice[1] != method {
        return Err((
            format!("refused our authentication method (reply {choice:02x?})"),
            FailKind::Upstream,
        ));
    }
    if let Some((user, pass)) = &up.auth {
        let mut msg = vec![v5::AUTH_VERSION, user.len() as u8];
        msg.extend_from_slice(user.as_bytes());
        msg.push(pass.len() as u8);
        msg.extend_from_slice(pass.as_bytes());
        stream.write_all(&msg).await.map_err(io_refusal)?;
        let mut status = [0u8; 2];
        stream.read_exact(&mut status).await.map_err(io_refusal)?;
        if status != [v5::AUTH_VERSION, 0] {
            return Err(("rejected the username/password".into(), FailKind::Upstream));
        }
    }
    let req = v5::encode_request(command, target);
    stream.write_all(&req).await.map_err(io_refusal)?;
    let mut buf = Vec::with_capacity(32);
    let reply = loop {
        match v5::parse_reply(&buf) {
            Ok(Parse::Done(r, _)) => break r,
            Ok(Parse::Incomplete) => {}
            Err(e) => return Err((format!("bad reply: {e}"), FailKind::Upstream)),
        }
        let mut chunk = [0u8; 64];
        let n = stream.read(&mut chunk).await.map_err(io_refusal)?;
        if n == 0 {
            return Err((
                "closed the connection before replying".into(),
                FailKind::Upstream,
            ));
        }
        // Read no further than the reply: what follows belongs to the target.
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > v5::REPLY_MAX {
            return Err(("reply too long".into(), FailKind::Upstream));
        }
    };
    if reply.code != v5::REP_SUCCEEDED {
        let kind = match reply.code {
            v5::REP_HOST_UNREACHABLE => FailKind::HostUnreachable,
            v5::REP_NETWORK_UNREACHABLE => FailKind::NetworkUnreachable,
            v5::REP_CONNECTION_REFUSED => FailKind::Refused,
            v5::REP_TTL_EXPIRED => FailKind::TimedOut,
            _ => FailKind::Upstream,
        };
        return Err((format!("{target}: {}", v5::reply_name(reply.code)), kind));
    }
    Ok(reply.bound)
}

/// A SOCKS5 UDP association (RFC 1928 §7): datagrams to any target go to the proxy's relay
/// address with a header naming the target, answers come back from it with a header naming
/// their source. It lasts as long as its TCP control connection.
#[derive(Debug)]
pub struct UdpAssociation {
    /// Held open: the proxy ends the association when it closes.
    _control: TcpStream,
    /// Connected to the relay address.
    sock: tokio::net::UdpSocket,
    /// The proxy's relay address.
    pub relay: SocketAddr,
}

/// The datagram carrying `payload` to `target` through a SOCKS5 relay.
pub fn socks5_udp_encode(target: &Target, payload: &[u8]) -> Vec<u8> {
    let mut out = v5::udp_header_for(target);
    out.extend_from_slice(payload);
    out
}

/// A datagram from a SOCKS5 relay: its source and where its payload is. Fragments (FRAG ≠
/// 0) are refused: neither capagent nor the common proxies make them.
pub fn socks5_udp_decode(datagram: &[u8]) -> Result<(Target, std::ops::Range<usize>), String> {
    let h = v5::parse_udp(datagram).map_err(|e| format!("bad SOCKS5 UDP header: {e}"))?;
    if h.frag != 0 {
        return Err(format!(
            "fragmented SOCKS5 datagram (FRAG {}) dropped",
            h.frag
        ));
    }
    Ok((h.target, h.len..datagram.len()))
}

/// Where to send datagrams for an association whose reply named `bound`: that address, or,
/// when the proxy answered with an unspecified address (0.0.0.0 or ::), the proxy's own
/// address with the bound port.
pub fn socks5_relay_addr(bound: &Target, proxy: SocketAddr) -> Option<SocketAddr> {
    let a = bound.addr()?;
    Some(if a.ip().is_unspecified() {
        SocketAddr::new(proxy.ip(), a.port())
    } else {
        a
    })
}

impl UdpAssociation {
    /// Opens an association through `up` (SOCKS5 only); its sockets carry `mark`.
    pub async fn open(up: &Upstream, mark: u32, timeout: Duration) -> Result<Self, DialError> {
        let proxy = up.host.to_string();
        let fail = |what: String, kind| DialError::Upstream {
            proxy: proxy.clone(),
            what,
            kind,
        };
        if up.kind != UpstreamKind::Socks5 {
            return Err(fail(
                "HTTP CONNECT carries no datagrams".into(),
                FailKind::Upstream,
            ));
        }
        let fut = async {
            let Dialed { mut stream, .. } = connect_direct(&up.host, mark)
                .await
                .map_err(|e| fail(format!("cannot reach it: {e}"), FailKind::Upstream))?;
            let io = |e: io::Error| fail(format!("{e}"), FailKind::Upstream);
            let local = stream.local_addr().map_err(io)?;
            let peer = stream.peer_addr().map_err(io)?;
            let sock = std::net::UdpSocket::bind(SocketAddr::new(local.ip(), 0)).map_err(io)?;
            if mark != 0 {
                socket2::SockRef::from(&sock).set_mark(mark).map_err(io)?;
            }
            sock.set_nonblocking(true).map_err(io)?;
            let sock = tokio::net::UdpSocket::from_std(sock).map_err(io)?;
            // The address our datagrams come from, so the proxy accepts only them.
            let from = Target::ip(sock.local_addr().map_err(io)?);
            let bound = socks5_request(&mut stream, up, v5::Command::UdpAssociate, &from)
                .await
                .map_err(|(what, kind)| fail(what, kind))?;
            let relay = socks5_relay_addr(&bound, peer).ok_or_else(|| {
                fail(
                    format!("named a relay address that is not an address: {bound}"),
                    FailKind::Upstream,
                )
            })?;
            sock.connect(relay).await.map_err(io)?;
            Ok(UdpAssociation {
                _control: stream,
                sock,
                relay,
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout {
                target: format!("UDP ASSOCIATE at {proxy}"),
            }),
        }
    }

    /// Sends `payload` to `target` through the relay.
    pub async fn send_to(&self, target: &Target, payload: &[u8]) -> io::Result<()> {
        self.sock
            .send(&socks5_udp_encode(target, payload))
            .await
            .map(|_| ())
    }

    /// The next datagram from the relay, into `buf`: its source and where its payload is in
    /// `buf`. Datagrams the relay sends malformed are skipped (logged).
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(Target, std::ops::Range<usize>)> {
        loop {
            let n = self.sock.recv(buf).await?;
            match socks5_udp_decode(&buf[..n]) {
                Ok(r) => return Ok(r),
                Err(e) => tracing::info!("UDP ASSOCIATE at {}: {e}", self.relay),
            }
        }
    }
}

/// The request an HTTP proxy gets to open a tunnel to `target`.
fn connect_request(up: &Upstream, target: &Target) -> Vec<u8> {
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, pass)) = &up.auth {
        use base64::Engine as _;
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Proxy-Authorization: Basic {cred}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// An HTTP proxy's CONNECT on `stream`, connected to `up`: success is a 2xx answer. Its
/// head is read and nothing after it: a server that speaks first may have sent its greeting
/// right behind the proxy's answer, and that belongs to the client.
async fn http_connect(
    stream: &mut TcpStream,
    up: &Upstream,
    target: &Target,
) -> Result<(), Refusal> {
    stream
        .write_all(&connect_request(up, target))
        .await
        .map_err(io_refusal)?;
    let mut consumed = Vec::with_capacity(128);
    let mut peeked = vec![0u8; 1024];
    let head = loop {
        let n = stream.peek(&mut peeked).await.map_err(io_refusal)?;
        if n == 0 {
            return Err((
                "closed the connection before replying".into(),
                FailKind::Upstream,
            ));
        }
        let mut seen = consumed.clone();
        seen.extend_from_slice(&peeked[..n]);
        match head::parse_response(&seen) {
            Ok(Some((head, len))) => {
                // Take the head's bytes only.
                let mut rest = vec![0u8; len - consumed.len()];
                stream.read_exact(&mut rest).await.map_err(io_refusal)?;
                break head;
            }
            // No end of head in what arrived: all of it is head, take it and wait for more.
            Ok(None) => {
                stream
                    .read_exact(&mut peeked[..n])
                    .await
                    .map_err(io_refusal)?;
                consumed.extend_from_slice(&peeked[..n]);
            }
            Err(e) => return Err((format!("bad reply: {e}"), FailKind::Upstream)),
        }
    };
    match head.status {
        200..=299 => Ok(()),
        // 401: what some proxies (tinyproxy) answer to wrong credentials.
        401 | 407 => Err((
            if up.auth.is_some() {
                format!(
                    "rejected the username/password ({} {})",
                    head.status, head.reason
                )
            } else {
                format!(
                    "wants a username and password ({} {})",
                    head.status, head.reason
                )
            },
            FailKind::Upstream,
        )),
        status => {
            let kind = match status {
                504 => FailKind::TimedOut,
                _ => FailKind::Upstream,
            };
            Err((format!("{target}: {status} {}", head.reason), kind))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams() {
        let u: Upstream = "socks5://127.0.0.1:1080".parse().unwrap();
        assert_eq!(u.kind, UpstreamKind::Socks5);
        assert_eq!(u.host, Target::ip("127.0.0.1:1080".parse().unwrap()));
        assert_eq!(u.auth, None);
        let u: Upstream = "socks5://me:p@ss:w@proxy.lan:9050".parse().unwrap();
        assert_eq!(u.host, Target::name("proxy.lan", 9050));
        assert_eq!(u.auth, Some(("me".to_string(), "p@ss:w".to_string())));
        let u: Upstream = "http://me:pw@[::1]:3128/".parse().unwrap();
        assert_eq!(u.kind, UpstreamKind::HttpConnect);
        assert_eq!(u.host, Target::ip("[::1]:3128".parse().unwrap()));
        assert_eq!(u.auth, Some(("me".to_string(), "pw".to_string())));
        assert!("https://127.0.0.1:8080".parse::<Upstream>().is_err());
        assert!("socks5://127.0.0.1".parse::<Upstream>().is_err());
        assert!("http://127.0.0.1".parse::<Upstream>().is_err());
        assert_eq!(
            "ftp://x:1".parse::<Upstream>().unwrap_err().to_string(),
            "bad --upstream-proxy \"ftp://x:1\": expected socks5://[USER:PASS@]HOST:PORT or \
             http://[USER:PASS@]HOST:PORT"
        );
    }

    #[test]
    fn socks5_udp_encapsulation() {
        let to = Target::ip("10.0.0.1:53".parse().unwrap());
        let d = socks5_udp_encode(&to, b"query");
        assert_eq!(d, b"\0\0\0\x01\x0a\0\0\x01\0\x35query");
        let (from, payload) = socks5_udp_decode(&d).unwrap();
        assert_eq!((from, &d[payload]), (to, &b"query"[..]));
        let named = socks5_udp_encode(&Target::name("a.example", 5353), b"");
        assert_eq!(named, b"\0\0\0\x03\x09a.example\x14\xe9");
        let (from, payload) = socks5_udp_decode(&named).unwrap();
        assert_eq!((from, payload), (Target::name("a.example", 5353), 16..16));
        let v6 = socks5_udp_encode(&Target::ip("[::1]:7".parse().unwrap()), b"x");
        assert_eq!(v6.len(), 3 + 1 + 16 + 2 + 1);
        let mut frag = d.clone();
        frag[2] = 1;
        assert!(socks5_udp_decode(&frag).unwrap_err().contains("fragmented"));
        assert!(socks5_udp_decode(b"\0\0\0\x01\x0a").is_err());
    }

    #[test]
    fn socks5_relay_addresses() {
        let proxy: SocketAddr = "192.0.2.1:1080".parse().unwrap();
        let any = Target::ip("0.0.0.0:4000".parse().unwrap());
        assert_eq!(
            socks5_relay_addr(&any, proxy),
            Some("192.0.2.1:4000".parse().unwrap())
        );
        let given = Target::ip("192.0.2.9:4001".parse().unwrap());
        assert_eq!(
            socks5_relay_addr(&given, proxy),
            Some("192.0.2.9:4001".parse().unwrap())
        );
        assert_eq!(socks5_relay_addr(&Target::name("relay", 1), proxy), None);
    }

    /// An HTTP proxy scripted to answer `answer` in pieces (one write each) to the CONNECT it
    /// reads; returns the dial's outcome, the request the proxy read and what the client reads
    /// after the dial (until the proxy closes).
    async fn through_http_proxy(
        upstream: &str,
        target: &str,
        answer: &[&'static [u8]],
    ) -> (Result<(), DialError>, Vec<u8>, Vec<u8>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up: Upstream = upstream
            .replace("PORT", &l.local_addr().unwrap().port().to_string())
            .parse()
            .unwrap();
        let answer = answer.to_vec();
        let proxy = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            while !req.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                req.push(b[0]);
            }
            for piece in answer {
                s.write_all(piece).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            req
        });
        let dialer = Dialer {
            upstream: Some(up),
            timeout: Duration::from_secs(10),
        };
        let r = dialer.connect(&target.parse().unwrap()).await;
        let req = proxy.await.unwrap();
        match r {
            Ok(mut d) => {
                let mut after = Vec::new();
                d.stream.read_to_end(&mut after).await.unwrap();
                (Ok(()), req, after)
            }
            Err(e) => (Err(e), req, Vec::new()),
        }
    }

    #[tokio::test]
    async fn http_connect_reads_the_head_and_nothing_after() {
        // The answer and the server's greeting in one write: the greeting stays for the client.
        let (r, req, after) = through_http_proxy(
            "http://127.0.0.1:PORT",
            "example.org:25",
            &[b"HTTP/1.1 200 Connection established\r\n\r\n220 mail ready\r\n"],
        )
        .await;
        r.unwrap();
        assert_eq!(
            req,
            b"CONNECT example.org:25 HTTP/1.1\r\nHost: example.org:25\r\n\r\n"
        );
        assert_eq!(after, b"220 mail ready\r\n");
        // The head in pieces, its end split, credentials sent, an IPv6 target bracketed.
        let (r, req, after) = through_http_proxy(
            "http://me:secret@127.0.0.1:PORT",
            "[2001:db8::1]:443",
            &[b"HTTP/1.0 200 OK\r", b"\nProxy-Agent: x\r\n\r", b"\nhello"],
        )
        .await;
        r.unwrap();
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\
             Proxy-Authorization: Basic bWU6c2VjcmV0\r\n\r\n"
        );
        assert_eq!(after, b"hello");
    }

    #[tokio::test]
    async fn http_connect_refusals() {
        let refusal = |r: Result<(), DialError>| {
            let e = r.unwrap_err();
            (e.to_string(), e.kind())
        };
        let (r, _, _) = through_http_proxy(
            "http://127.0.0.1:PORT",
            "example.org:443",
            &[b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"],
        )
        .await;
        let (msg, kind) = refusal(r);
        assert!(
            msg.contains("wants a username and password (407 Proxy Authentication Required)"),
            "{msg}"
        );
        assert_eq!(kind, FailKind::Upstream);
        let (r, _, _) = through_http_proxy(
            "http://127.0.0.1:PORT",
            "example.org:443",
            &[b"HTTP/1.1 504 Gateway Timeout\r\n\r\n"],
        )
        .await;
        let (msg, kind) = refusal(r);
        assert!(
            msg.contains("example.org:443: 504 Gateway Timeout"),
            "{msg}"
        );
        assert_eq!(kind, FailKind::TimedOut);
        let (r, _, _) = through_http_proxy(
            "http://127.0.0.1:PORT",
            "example.org:443",
            &[b"SSH-2.0-x\r\n\r\n"],
        )
        .await;
        let (msg, _) = refusal(r);
        assert!(msg.contains("bad reply"), "{msg}");
        let (r, _, _) = through_http_proxy("http://127.0.0.1:PORT", "example.org:443", &[]).await;
        let (msg, _) = refusal(r);
        assert!(
            msg.contains("closed the connection before replying"),
            "{msg}"
        );
    }
}
