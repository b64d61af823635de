//! Reaching targets: a [`Target`] as clients name it (host name or address, and port), and
//! the [`Dialer`] every proxy uses to connect to it, directly (resolving names with the
//! system resolver and trying each address) or through an upstream SOCKS5 proxy
//! (`--upstream-proxy socks5://[USER:PASS@]HOST:PORT`), which then resolves names itself.
//!
//! Failures keep what the protocols need to answer: [`DialError::kind`] says refused,
//! unreachable, timed out, name not found..., which SOCKS maps to its reply codes and HTTP to
//! 502/504.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::socks::{Parse, v5};

/// A target host: an address, or a name to resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// A target as requested: host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl Target {
    pub fn ip(addr: SocketAddr) -> Target {
        Target {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    pub fn name(name: impl Into<String>, port: u16) -> Target {
        Target {
            host: Host::Name(name.into()),
            port,
        }
    }

    /// The address when the host is one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Target {
    /// `host:port`, `1.2.3.4:port`, `[v6]:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?}: expected HOST:PORT (a name or address, and a port 1-65535; IPv6 in brackets)")]
pub struct BadTarget(pub String);

impl FromStr for Target {
    type Err = BadTarget;

    /// `HOST:PORT`, `IPV4:PORT`, `[IPV6]:PORT`; port 1-65535; names of letters, digits,
    /// `-`, `_` and `.`.
    fn from_str(s: &str) -> Result<Target, BadTarget> {
        let bad = || BadTarget(s.to_string());
        if let Ok(a) = s.parse::<SocketAddr>() {
            if a.port() == 0 {
                return Err(bad());
            }
            return Ok(Target::ip(a));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 || host.is_empty() || host.len() > 253 || host.contains(':') {
            return Err(bad());
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Target {
                host: Host::Ip(ip),
                port,
            });
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(bad());
        }
        Ok(Target::name(host, port))
    }
}

/// What went wrong reaching a target, as far as replies to clients care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// The name does not resolve.
    NotFound,
    Refused,
    HostUnreachable,
    NetworkUnreachable,
    TimedOut,
    /// The upstream proxy refused by its rules or failed otherwise.
    Upstream,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot resolve {target}: {source}")]
    Resolve {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("{target} resolves to no address")]
    NoAddress { target: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {target} timed out")]
    Timeout { target: String },
    #[error("upstream proxy {proxy}: {what}")]
    Upstream {
        proxy: String,
        what: String,
        kind: FailKind,
    },
}

impl DialError {
    pub fn kind(&self) -> FailKind {
        match self {
            DialError::Resolve { .. } | DialError::NoAddress { .. } => FailKind::NotFound,
            DialError::Connect { source, .. } => match source.raw_os_error() {
                Some(libc::ECONNREFUSED) => FailKind::Refused,
                Some(libc::EHOSTUNREACH) => FailKind::HostUnreachable,
                Some(libc::ENETUNREACH) | Some(libc::EADDRNOTAVAIL) => FailKind::NetworkUnreachable,
                Some(libc::ETIMEDOUT) => FailKind::TimedOut,
                _ => FailKind::Other,
            },
            DialError::Timeout { .. } => FailKind::TimedOut,
            DialError::Upstream { kind, .. } => *kind,
        }
    }

    /// The error as an I/O error for records (its errno).
    pub fn io(&self) -> io::Error {
        let errno = match self {
            DialError::Connect { source, .. } => match source.raw_os_error() {
                Some(e) => e,
                None => return io::Error::new(source.kind(), self.to_string()),
            },
            _ => match self.kind() {
                FailKind::NotFound => libc::EHOSTUNREACH,
                FailKind::Refused => libc::ECONNREFUSED,
                FailKind::HostUnreachable => libc::EHOSTUNREACH,
                FailKind::NetworkUnreachable => libc::ENETUNREACH,
                FailKind::TimedOut => libc::ETIMEDOUT,
                FailKind::Upstream | FailKind::Other => libc::ECONNABORTED,
            },
        };
        io::Error::from_raw_os_error(errno)
    }

    /// The errno records carry.
    pub fn errno(&self) -> i32 {
        match self {
            DialError::Connect { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => self.io().raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// A connected target.
#[derive(Debug)]
pub struct Dialed {
    pub stream: TcpStream,
    /// The address connected to (None through an upstream proxy given a name).
    pub resolved: Option<SocketAddr>,
}

/// An upstream SOCKS5 proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub host: Target,
    pub auth: Option<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad --upstream-proxy {0:?}: expected socks5://[USER:PASS@]HOST:PORT")]
pub struct BadUpstream(pub String);

impl FromStr for Upstream {
    type Err = BadUpstream;

    fn from_str(s: &str) -> Result<Upstream, BadUpstream> {
        let bad = || BadUpstream(s.to_string());
        let rest = s
            .strip_prefix("socks5://")
            .or_else(|| s.strip_prefix("socks5h://"))
            .ok_or_else(bad)?;
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
        Ok(Upstream { host, auth })
    }
}

/// Connects to targets, directly or through an upstream SOCKS5 proxy.
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
        let what = target.to_string();
        let fut = async {
            match &self.upstream {
                None => connect_direct(target).await,
                Some(up) => connect_via(up, target).await,
            }
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout { target: what }),
        }
    }
}

/// The addresses of `target` (the system resolver for names).
pub async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, DialError> {
    match &target.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, target.port)]),
        Host::Name(name) => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), target.port))
                .await
                .map_err(|source| DialError::Resolve {
                    target: target.to_string(),
                    source,
                })?
                .collect();
            if addrs.is_empty() {
                return Err(DialError::NoAddress {
                    target: target.to_string(),
                });
            }
            Ok(addrs)
        }
    }
}

async fn connect_direct(target: &Target) -> Result<Dialed, DialError> {
    let addrs = resolve(target).await?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
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

/// Connects through the SOCKS5 proxy `up` (CONNECT; the name goes to the proxy as is).
async fn connect_via(up: &Upstream, target: &Target) -> Result<Dialed, DialError> {
    let proxy = up.host.to_string();
    let fail = |what: String, kind| DialError::Upstream {
        proxy: proxy.clone(),
        what,
        kind,
    };
    let io_fail = |e: io::Error| fail(format!("{e}"), FailKind::Upstream);
    let Dialed { mut stream, .. } = connect_direct(&up.host).await.map_err(|e| {
        fail(
            format!("cannot reach it: {e}"),
            match e.kind() {
                FailKind::Refused => FailKind::Upstream,
                k => k,
            },
        )
    })?;
    let method = if up.auth.is_some() {
        v5::METHOD_USERPASS
    } else {
        v5::METHOD_NONE
    };
    stream
        .write_all(&[v5::VERSION, 1, method])
        .await
        .map_err(io_fail)?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await.map_err(io_fail)?;
    if choice[0] != v5::VERSION || choice[1] != method {
        return Err(fail(
            format!("refused our authentication method (reply {choice:02x?})"),
            FailKind::Upstream,
        ));
    }
    if let Some((user, pass)) = &up.auth {
        let mut msg = vec![v5::AUTH_VERSION, user.len() as u8];
        msg.extend_from_slice(user.as_bytes());
        msg.push(pass.len() as u8);
        msg.extend_from_slice(pass.as_bytes());
        stream.write_all(&msg).await.map_err(io_fail)?;
        let mut status = [0u8; 2];
        stream.read_exact(&mut status).await.map_err(io_fail)?;
        if status != [v5::AUTH_VERSION, 0] {
            return Err(fail(
                "rejected the username/password".into(),
                FailKind::Upstream,
            ));
        }
    }
    let req = v5::encode_request(v5::Command::Connect, target);
    stream.write_all(&req).await.map_err(io_fail)?;
    let mut buf = Vec::with_capacity(32);
    let reply = loop {
        match v5::parse_reply(&buf) {
            Ok(Parse::Done(r, _)) => break r,
            Ok(Parse::Incomplete) => {}
            Err(e) => return Err(fail(format!("bad reply: {e}"), FailKind::Upstream)),
        }
        let mut chunk = [0u8; 64];
        let n = stream.read(&mut chunk).await.map_err(io_fail)?;
        if n == 0 {
            return Err(fail(
                "closed the connection before replying".into(),
                FailKind::Upstream,
            ));
        }
        // Read no further than the reply: what follows belongs to the target.
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > v5::REPLY_MAX {
            return Err(fail("reply too long".into(), FailKind::Upstream));
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
        return Err(fail(
            format!("{target}: {}", v5::reply_name(reply.code)),
            kind,
        ));
    }
    let _ = stream.set_nodelay(true);
    Ok(Dialed {
        stream,
        resolved: target.addr(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            "example.com:80".parse::<Target>().unwrap(),
            Target::name("example.com", 80)
        );
        assert_eq!(
            "10.0.0.1:443".parse::<Target>().unwrap(),
            Target::ip("10.0.0.1:443".parse().unwrap())
        );
        let v6 = "[2001:db8::1]:53".parse::<Target>().unwrap();
        assert_eq!(v6.to_string(), "[2001:db8::1]:53");
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:65536",
            ":80",
            "2001:db8::1:53",
            "a b:80",
            "host:port",
            "1.2.3.4:0",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn upstreams() {
        let u: Upstream = "socks5://127.0.0.1:1080".parse().unwrap();
        assert_eq!(u.host, Target::ip("127.0.0.1:1080".parse().unwrap()));
        assert_eq!(u.auth, None);
        let u: Upstream = "socks5://me:p@ss:w@proxy.lan:9050".parse().unwrap();
        assert_eq!(u.host, Target::name("proxy.lan", 9050));
        assert_eq!(u.auth, Some(("me".to_string(), "p@ss:w".to_string())));
        assert!("http://127.0.0.1:8080".parse::<Upstream>().is_err());
        assert!("socks5://127.0.0.1".parse::<Upstream>().is_err());
    }

    #[test]
    fn error_kinds() {
        let e = DialError::Connect {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
        };
        assert_eq!(e.kind(), FailKind::Refused);
        assert_eq!(e.errno(), libc::ECONNREFUSED);
        let e = DialError::Timeout {
            target: "x:1".into(),
        };
        assert_eq!(e.kind(), FailKind::TimedOut);
        assert_eq!(e.errno(), libc::ETIMEDOUT);
    }
}
