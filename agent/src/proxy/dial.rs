//! Reaching targets: the [`Dialer`] every proxy uses to connect to a [`Target`], directly
//! (resolving names with the system resolver and trying each address) or through an upstream
//! SOCKS5 proxy (`--upstream-proxy socks5://[USER:PASS@]HOST:PORT`), which then resolves
//! names itself. The target and the ways reaching it fails are in [`super::target`], which
//! the SOCKS codec uses too.

use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::socks::{Parse, v5};
use super::target::{DialError, FailKind, Target, resolve};

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
}
