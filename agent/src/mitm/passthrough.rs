//! Which TLS connections `--tls` relays untouched (ciphertext, as without `--tls`):
//!
//! - `--tls-passthrough PATTERN` ([`Pattern`]): a host glob matched against the client's
//!   SNI (else the CONNECT/SOCKS host name), or a CIDR / plain IP matched against the
//!   target's address;
//! - pinning ([`Passthrough::remember`]): a client that rejected capagent's certificate
//!   ([`is_rejection`]) has its later connections to the same host passed through for
//!   [`PINNED_FOR`], from a table of at most [`MAX_PINNED`] (client, host) pairs (the least
//!   recently seen out).
//!
//! No I/O: the caller gives the names, addresses and time (so the unit tests cover it all).

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use lru::LruCache;

/// How long a client that rejected capagent's certificate for a host has its connections
/// to that host passed through.
pub const PINNED_FOR: Duration = Duration::from_secs(10 * 60);
/// Most (client, host) pairs remembered.
pub const MAX_PINNED: usize = 4096;

/// The reason recorded for a connection passed through on pinning.
pub const PINNED_REASON: &str = "client rejected capagent's certificate";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error(
        "--tls-passthrough {0:?}: not a host glob (letters, digits, '-', '.', '_', '*', '?'), a CIDR or an IP address"
    )]
    Bad(String),
}

/// One `--tls-passthrough` pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// A host glob, lowercase: `*` any run of characters (dots too), `?` one; a leading
    /// `*.` also matches the domain itself (`*.example.com` matches `example.com`).
    Host(String),
    /// A network (a plain IP is a /32 or /128).
    Net(IpNet),
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        let bad = || PatternError::Bad(s.to_string());
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Pattern::Net(net.trunc()));
        }
        let bare = s
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Pattern::Net(IpNet::from(ip)));
        }
        let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._*?".contains(&b);
        if s.is_empty() || s.contains('/') || !s.bytes().all(ok) {
            return Err(bad());
        }
        Ok(Pattern::Host(s.to_ascii_lowercase()))
    }

    /// Whether a connection asking for `name` (SNI, else the CONNECT/SOCKS host) towards
    /// `target` matches.
    pub fn matches(&self, name: Option<&str>, target: Option<IpAddr>) -> bool {
        match self {
            Pattern::Net(net) => target.is_some_and(|ip| net.contains(&canonical(ip))),
            Pattern::Host(glob) => name.is_some_and(|n| {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                glob_match(glob.as_bytes(), n.as_bytes())
                    || glob
                        .strip_prefix("*.")
                        .is_some_and(|domain| glob_match(domain.as_bytes(), n.as_bytes()))
            }),
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Host(g) => f.write_str(g),
            Pattern::Net(n) => write!(f, "{n}"),
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (a dual-stack listener's peers).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `*` and `?` over bytes. Hand-written: the crates in the tree (globset) treat `/` and
/// case their own way and bring a regex engine for what is a dozen lines here; the
/// iterative form (backtracking to the last `*` only) is linear in practice and never
/// recursive.
fn glob_match(glob: &[u8], s: &[u8]) -> bool {
    let (mut g, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g, i));
                g += 1;
            }
            Some(&c) if c == b'?' || c == s[i] => {
                g += 1;
                i += 1;
            }
            _ => match star {
                Some((sg, si)) => {
                    g = sg + 1;
                    i = si + 1;
                    star = Some((sg, si + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

/// Whether the client's handshake with capagent's certificate failed
/// (`MitmError::ClientRejected(io)`) because the client rejected the certificate: an
/// unknown_ca, bad_certificate or certificate_unknown alert, or the client closing (or
/// resetting) the connection during the handshake. That is what a client that does not
/// trust capagent's CA, or pins the real certificate, does.
pub fn is_rejection(io: &std::io::Error) -> bool {
    use rustls::AlertDescription as A;
    if let Some(rustls::Error::AlertReceived(alert)) =
        io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return matches!(
            alert,
            A::UnknownCA | A::BadCertificate | A::CertificateUnknown
        );
    }
    matches!(
        io.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

/// The patterns and the clients that rejected capagent's certificate.
pub struct Passthrough {
    patterns: Vec<Pattern>,
    /// (client, host lowercase) -> until when its connections are passed through.
    pinned: Mutex<LruCache<(IpAddr, String), Instant>>,
    pinned_for: Duration,
}

impl Passthrough {
    pub fn new(patterns: Vec<Pattern>) -> Passthrough {
        Passthrough::with_limits(patterns, PINNED_FOR, MAX_PINNED)
    }

    pub fn with_limits(patterns: Vec<Pattern>, pinned_for: Duration, max: usize) -> Passthrough {
        Passthrough {
            patterns,
            pinned: Mutex::new(LruCache::new(NonZeroUsize::new(max.max(1)).unwrap())),
            pinned_for,
        }
    }

    /// Whether a decision may need the client's SNI (there are host patterns or pinned
    /// hosts); else [`Passthrough::reason`] can be asked with the host alone.
    pub fn wants_sni(&self) -> bool {
        self.patterns.iter().any(|p| matches!(p, Pattern::Host(_)))
            || !self.pinned.lock().unwrap().is_empty()
    }

    /// Why a connection from `client` asking for `name` (its SNI, else the CONNECT/SOCKS
    /// host) towards `target` is passed through (`pattern P` or [`PINNED_REASON`]); None:
    /// intercept it.
    pub fn reason(
        &self,
        client: IpAddr,
        name: Option<&str>,
        target: Option<IpAddr>,
        now: Instant,
    ) -> Option<String> {
        if let Some(p) = self.patterns.iter().find(|p| p.matches(name, target)) {
            return Some(format!("pattern {p}"));
        }
        let key = (canonical(client), host_key(name?));
        let mut pinned = self.pinned.lock().unwrap();
        match pinned.get(&key) {
            Some(until) if *until > now => Some(PINNED_REASON.to_string()),
            Some(_) => {
                pinned.pop(&key);
                None
            }
            None => None,
        }
    }

    /// `client` rejected capagent's certificate for `host` (its SNI, else the
    /// CONNECT/SOCKS host): its connections to `host` are passed through for a while. True
    /// when the pair was not remembered already (say so in the log then, once).
    pub fn remember(&self, client: IpAddr, host: &str, now: Instant) -> bool {
        let key = (canonical(client), host_key(host));
        let mut pinned = self.pinned.lock().unwrap();
        let known = pinned.get(&key).is_some_and(|until| *until > now);
        pinned.put(key, now + self.pinned_for);
        !known
    }

    /// How long pinned pairs are remembered.
    pub fn pinned_for(&self) -> Duration {
        self.pinned_for
    }
}

fn host_key(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_parse() {
        assert_eq!(
            Pattern::parse("*.Example.COM"),
            Ok(Pattern::Host("*.example.com".into()))
        );
        assert_eq!(
            Pattern::parse("10.1.2.3/8"),
            Ok(Pattern::Net("10.0.0.0/8".parse().unwrap()))
        );
        assert_eq!(
            Pattern::parse("192.0.2.7"),
            Ok(Pattern::Net("192.0.2.7/32".parse().unwrap()))
        );
        assert_eq!(
            Pattern::parse("[2001:db8::1]"),
            Ok(Pattern::Net("2001:db8::1/128".parse().unwrap()))
        );
        assert_eq!(
            Pattern::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "a b",
            "host/8",
            "ex ample.com",
            "é.com",
            "a:b",
        ] {
            assert_eq!(
                Pattern::parse(bad),
                Err(PatternError::Bad(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn host_globs() {
        let m = |p: &str, name: &str| Pattern::parse(p).unwrap().matches(Some(name), None);
        assert!(m("*.example.com", "www.example.com"));
        assert!(m("*.example.com", "a.b.example.com"));
        assert!(m("*.example.com", "example.com"));
        assert!(m("*.example.com", "WWW.Example.com."));
        assert!(!m("*.example.com", "notexample.com"));
        assert!(!m("*.example.com", "example.com.evil"));
        assert!(m("api?.example.com", "api1.example.com"));
        assert!(!m("api?.example.com", "api12.example.com"));
        assert!(m("*bank*", "mybank.example"));
        assert!(m("exact.org", "EXACT.org"));
        assert!(!m("exact.org", "www.exact.org"));
        assert!(m("*", "anything"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        // No name (no SNI, an address target): host globs do not match.
        assert!(
            !Pattern::parse("*")
                .unwrap()
                .matches(None, Some(ip("10.0.0.1")))
        );
    }

    #[test]
    fn networks() {
        let m = |p: &str, target: &str| Pattern::parse(p).unwrap().matches(None, Some(ip(target)));
        assert!(m("10.0.0.0/8", "10.200.3.4"));
        assert!(!m("10.0.0.0/8", "11.0.0.1"));
        assert!(m("127.0.0.2", "127.0.0.2"));
        assert!(!m("127.0.0.2", "127.0.0.1"));
        assert!(m("127.0.0.0/8", "::ffff:127.0.0.9"));
        assert!(m("2001:db8::/32", "2001:db8:1::5"));
        assert!(!m("2001:db8::/32", "2001:db9::5"));
        assert!(
            !Pattern::parse("10.0.0.0/8")
                .unwrap()
                .matches(Some("10.0.0.1"), None)
        );
    }

    #[test]
    fn first_matching_pattern_is_the_reason() {
        let p = Passthrough::new(vec![
            Pattern::parse("*.bank.example").unwrap(),
            Pattern::parse("192.0.2.0/24").unwrap(),
        ]);
        let now = Instant::now();
        let c = ip("10.0.0.1");
        assert_eq!(
            p.reason(c, Some("www.bank.example"), Some(ip("192.0.2.1")), now),
            Some("pattern *.bank.example".into())
        );
        assert_eq!(
            p.reason(c, Some("other.example"), Some(ip("192.0.2.1")), now),
            Some("pattern 192.0.2.0/24".into())
        );
        assert_eq!(
            p.reason(c, Some("other.example"), Some(ip("198.51.100.1")), now),
            None
        );
        assert!(p.wants_sni());
        assert!(!Passthrough::new(vec![Pattern::parse("10.0.0.0/8").unwrap()]).wants_sni());
    }

    #[test]
    fn pinned_clients_pass_through_for_a_while() {
        let p = Passthrough::with_limits(vec![], Duration::from_secs(600), 2);
        let t0 = Instant::now();
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert!(!p.wants_sni());
        assert_eq!(p.reason(a, Some("pinned.example"), None, t0), None);
        assert!(p.remember(a, "Pinned.Example", t0));
        // Said once: remembering again within the time is not new.
        assert!(!p.remember(a, "pinned.example", t0 + Duration::from_secs(1)));
        assert!(p.wants_sni());
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            p.reason(a, Some("pinned.example"), None, later),
            Some(PINNED_REASON.into())
        );
        // The same client as an IPv4-mapped address: the same client.
        assert_eq!(
            p.reason(ip("::ffff:10.0.0.1"), Some("pinned.example"), None, later),
            Some(PINNED_REASON.into())
        );
        // Another client, another host: intercepted.
        assert_eq!(p.reason(b, Some("pinned.example"), None, later), None);
        assert_eq!(p.reason(a, Some("other.example"), None, later), None);
        // After the time: intercepted again (and new when rejected again).
        let expired = t0 + Duration::from_secs(602);
        assert_eq!(p.reason(a, Some("pinned.example"), None, expired), None);
        assert!(p.remember(a, "pinned.example", expired));
        // Bounded: the least recently seen pair goes.
        assert!(p.remember(b, "x.example", expired));
        assert!(p.remember(b, "y.example", expired));
        assert_eq!(p.reason(a, Some("pinned.example"), None, expired), None);
        assert!(p.reason(b, Some("y.example"), None, expired).is_some());
    }

    #[test]
    fn what_counts_as_a_rejection() {
        use std::io;
        let alert = |a| io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
        assert!(is_rejection(&alert(rustls::AlertDescription::UnknownCA)));
        assert!(is_rejection(&alert(
            rustls::AlertDescription::BadCertificate
        )));
        assert!(is_rejection(&alert(
            rustls::AlertDescription::CertificateUnknown
        )));
        assert!(!is_rejection(&alert(
            rustls::AlertDescription::ProtocolVersion
        )));
        assert!(is_rejection(&io::ErrorKind::UnexpectedEof.into()));
        assert!(is_rejection(&io::ErrorKind::ConnectionReset.into()));
        assert!(!is_rejection(&io::ErrorKind::TimedOut.into()));
    }
}
