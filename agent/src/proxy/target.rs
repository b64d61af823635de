//! Where a proxy connects: a [`Target`] as clients name it (host name or address, and port),
//! resolving it, and what went wrong reaching it. Shared by the [`super::dial`]er and the
//! protocol codecs (SOCKS carries targets on the wire).
//!
//! Failures keep what the protocols need to answer: [`DialError::kind`] says refused,
//! unreachable, timed out, name not found..., which SOCKS maps to its reply codes and HTTP to
//! 502/504.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// A target host: an address, or a name to resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// The name, or the address (IPv6 without brackets): what TLS asks the server for.
    pub fn name(&self) -> String {
        match self {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        }
    }
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
