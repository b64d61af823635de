//! SOCKS5 (RFC 1928) and its username/password sub-negotiation (RFC 1929), pure.
//!
//! - Greeting: `VER=5 NMETHODS METHODS...`; the server answers `VER=5 METHOD` (0xFF: none
//!   acceptable).
//! - RFC 1929: `VER=1 ULEN UNAME PLEN PASSWD`, answered `VER=1 STATUS` (0 = success). The
//!   sub-negotiation version is 1, not 5.
//! - Request: `VER=5 CMD RSV ATYP DST.ADDR DST.PORT`; reply `VER=5 REP RSV=0 ATYP BND.ADDR
//!   BND.PORT`, carrying the address actually bound and its type.
//! - UDP datagrams: `RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA`.
//!
//! ATYP 1 is IPv4 (4 bytes), 3 a domain name (length byte, 1-255 bytes), 4 IPv6 (16 bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Parse, SocksError};
use crate::proxy::target::{Host, Target};

pub const VERSION: u8 = 5;
/// RFC 1929 sub-negotiation version.
pub const AUTH_VERSION: u8 = 1;
pub const METHOD_NONE: u8 = 0x00;
pub const METHOD_USERPASS: u8 = 0x02;
pub const METHOD_UNACCEPTABLE: u8 = 0xff;

pub const ATYP_IPV4: u8 = 1;
pub const ATYP_DOMAIN: u8 = 3;
pub const ATYP_IPV6: u8 = 4;

pub const REP_SUCCEEDED: u8 = 0;
pub const REP_GENERAL_FAILURE: u8 = 1;
pub const REP_NOT_ALLOWED: u8 = 2;
pub const REP_NETWORK_UNREACHABLE: u8 = 3;
pub const REP_HOST_UNREACHABLE: u8 = 4;
pub const REP_CONNECTION_REFUSED: u8 = 5;
pub const REP_TTL_EXPIRED: u8 = 6;
pub const REP_COMMAND_NOT_SUPPORTED: u8 = 7;
pub const REP_ADDRESS_NOT_SUPPORTED: u8 = 8;

/// Longest request or reply: header, a 255-byte name, port.
pub const REQUEST_MAX: usize = 4 + 1 + 255 + 2;
pub const REPLY_MAX: usize = REQUEST_MAX;
/// Longest greeting.
pub const GREETING_MAX: usize = 2 + 255;
/// Longest RFC 1929 request.
pub const AUTH_MAX: usize = 3 + 2 * 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
}

impl Command {
    pub fn code(self) -> u8 {
        match self {
            Command::Connect => 1,
            Command::Bind => 2,
            Command::UdpAssociate => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Connect => "connect",
            Command::Bind => "bind",
            Command::UdpAssociate => "udp-associate",
        }
    }
}

/// The name of a reply code, for messages.
pub fn reply_name(code: u8) -> &'static str {
    match code {
        REP_SUCCEEDED => "succeeded",
        REP_GENERAL_FAILURE => "general SOCKS server failure",
        REP_NOT_ALLOWED => "connection not allowed by ruleset",
        REP_NETWORK_UNREACHABLE => "network unreachable",
        REP_HOST_UNREACHABLE => "host unreachable",
        REP_CONNECTION_REFUSED => "connection refused",
        REP_TTL_EXPIRED => "TTL expired",
        REP_COMMAND_NOT_SUPPORTED => "command not supported",
        REP_ADDRESS_NOT_SUPPORTED => "address type not supported",
        _ => "unknown reply code",
    }
}

/// The greeting's methods.
pub fn parse_greeting(buf: &[u8]) -> Result<Parse<Vec<u8>>, SocksError> {
    match buf {
        [] => Ok(Parse::Incomplete),
        [v, ..] if *v != VERSION => Err(SocksError::Version(*v)),
        [_] => Ok(Parse::Incomplete),
        [_, n, rest @ ..] => {
            let n = usize::from(*n);
            if rest.len() < n {
                Ok(Parse::Incomplete)
            } else {
                Ok(Parse::Done(rest[..n].to_vec(), 2 + n))
            }
        }
    }
}

/// RFC 1929 credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: Vec<u8>,
    pub pass: Vec<u8>,
}

/// An RFC 1929 username/password request.
pub fn parse_auth(buf: &[u8]) -> Result<Parse<Credentials>, SocksError> {
    let Some(&v) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    if v != AUTH_VERSION {
        return Err(SocksError::AuthVersion(v));
    }
    let Some(&ulen) = buf.get(1) else {
        return Ok(Parse::Incomplete);
    };
    let ulen = usize::from(ulen);
    if ulen == 0 {
        return Err(SocksError::EmptyUser);
    }
    let Some(&plen) = buf.get(2 + ulen) else {
        return Ok(Parse::Incomplete);
    };
    let end = 3 + ulen + usize::from(plen);
    if buf.len() < end {
        return Ok(Parse::Incomplete);
    }
    Ok(Parse::Done(
        Credentials {
            user: buf[2..2 + ulen].to_vec(),
            pass: buf[3 + ulen..end].to_vec(),
        },
        end,
    ))
}

/// `ATYP ADDR PORT` at the start of `buf`: the target and the bytes it took.
fn parse_addr(buf: &[u8]) -> Result<Parse<Target>, SocksError> {
    let Some(&atyp) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    let (len, start) = match atyp {
        ATYP_IPV4 => (4, 1),
        ATYP_IPV6 => (16, 1),
        ATYP_DOMAIN => match buf.get(1) {
            None => return Ok(Parse::Incomplete),
            Some(0) => return Err(SocksError::BadHost),
            Some(&n) => (usize::from(n), 2),
        },
        other => return Err(SocksError::AddressType(other)),
    };
    let end = start + len + 2;
    if buf.len() < end {
        return Ok(Parse::Incomplete);
    }
    let a = &buf[start..start + len];
    let port = u16::from_be_bytes([buf[end - 2], buf[end - 1]]);
    let target = match atyp {
        ATYP_IPV4 => Target::ip(SocketAddr::new(
            Ipv4Addr::new(a[0], a[1], a[2], a[3]).into(),
            port,
        )),
        ATYP_IPV6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            Target::ip(SocketAddr::new(Ipv6Addr::from(o).into(), port))
        }
        _ => super::host_target(a, port)?,
    };
    Ok(Parse::Done(target, end))
}

/// A SOCKS5 request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub target: Target,
}

pub fn parse_request(buf: &[u8]) -> Result<Parse<Request>, SocksError> {
    match buf.first() {
        None => return Ok(Parse::Incomplete),
        Some(&v) if v != VERSION => return Err(SocksError::Version(v)),
        _ => {}
    }
    let command = match buf.get(1) {
        None => return Ok(Parse::Incomplete),
        Some(1) => Command::Connect,
        Some(2) => Command::Bind,
        Some(3) => Command::UdpAssociate,
        Some(&c) => return Err(SocksError::Command(c)),
    };
    // buf[2] is RSV: ignored.
    if buf.len() < 4 {
        return Ok(Parse::Incomplete);
    }
    Ok(match parse_addr(&buf[3..])? {
        Parse::Incomplete => Parse::Incomplete,
        Parse::Done(target, n) => Parse::Done(Request { command, target }, 3 + n),
    })
}

/// A SOCKS5 reply (what an upstream proxy answers us).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u8,
    pub bound: Target,
}

pub fn parse_reply(buf: &[u8]) -> Result<Parse<Reply>, SocksError> {
    match buf.first() {
        None => return Ok(Parse::Incomplete),
        Some(&v) if v != VERSION => return Err(SocksError::Version(v)),
        _ => {}
    }
    if buf.len() < 4 {
        return Ok(Parse::Incomplete);
    }
    let code = buf[1];
    Ok(match parse_addr(&buf[3..])? {
        Parse::Incomplete => Parse::Incomplete,
        Parse::Done(bound, n) => Parse::Done(Reply { code, bound }, 3 + n),
    })
}

fn push_addr(out: &mut Vec<u8>, target: &Target) {
    match &target.host {
        Host::Ip(IpAddr::V4(v4)) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&v4.octets());
        }
        Host::Ip(IpAddr::V6(v6)) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&v6.octets());
        }
        Host::Name(n) => {
            // Names are checked at parse time; a longer one is cut (never sent by us).
            let n = &n.as_bytes()[..n.len().min(255)];
            out.push(ATYP_DOMAIN);
            out.push(n.len() as u8);
            out.extend_from_slice(n);
        }
    }
    out.extend_from_slice(&target.port.to_be_bytes());
}

/// The reply `VER REP RSV ATYP BND.ADDR BND.PORT` with the bound address and its type
/// (0.0.0.0:0 when there is none, as on failures).
pub fn reply(code: u8, bound: Option<SocketAddr>) -> Vec<u8> {
    let mut out = vec![VERSION, code, 0];
    let bound = bound.unwrap_or_else(|| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
    push_addr(&mut out, &Target::ip(bound));
    out
}

/// A request (what we send an upstream proxy).
pub fn encode_request(command: Command, target: &Target) -> Vec<u8> {
    let mut out = vec![VERSION, command.code(), 0];
    push_addr(&mut out, target);
    out
}

/// The header of a UDP datagram: its target (or source) and the header length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpHeader {
    pub frag: u8,
    pub target: Target,
    pub len: usize,
}

/// Parses a UDP ASSOCIATE datagram's header (a datagram is whole: too short is an error).
pub fn parse_udp(datagram: &[u8]) -> Result<UdpHeader, SocksError> {
    if datagram.len() < 4 {
        return Err(SocksError::Truncated);
    }
    match parse_addr(&datagram[3..])? {
        Parse::Incomplete => Err(SocksError::Truncated),
        Parse::Done(target, n) => Ok(UdpHeader {
            frag: datagram[2],
            target,
            len: 3 + n,
        }),
    }
}

/// The header of a UDP datagram relayed back to the client from `from`.
pub fn udp_header(from: SocketAddr) -> Vec<u8> {
    udp_header_for(&Target::ip(from))
}

/// The header of a UDP datagram to (or from) `target`, unfragmented.
pub fn udp_header_for(target: &Target) -> Vec<u8> {
    let mut out = vec![0, 0, 0];
    push_addr(&mut out, target);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::socks::tests::feed_bytewise;

    #[test]
    fn greeting() {
        assert_eq!(
            parse_greeting(b"\x05\x02\x00\x02rest"),
            Ok(Parse::Done(vec![0, 2], 4))
        );
        assert_eq!(parse_greeting(b"\x05\x02\x00"), Ok(Parse::Incomplete));
        assert_eq!(parse_greeting(b"\x04\x01"), Err(SocksError::Version(4)));
        assert_eq!(parse_greeting(b"\x05\x00"), Ok(Parse::Done(vec![], 2)));
        assert_eq!(
            feed_bytewise(b"\x05\x03\x00\x01\x02", parse_greeting),
            Ok((vec![0, 1, 2], 5))
        );
    }

    #[test]
    fn auth() {
        let req = b"\x01\x04user\x06secret";
        assert_eq!(
            feed_bytewise(req, parse_auth),
            Ok((
                Credentials {
                    user: b"user".to_vec(),
                    pass: b"secret".to_vec()
                },
                req.len()
            ))
        );
        // The sub-negotiation version is 1; a client sending 5 is wrong.
        assert_eq!(
            parse_auth(b"\x05\x04user\x06secret"),
            Err(SocksError::AuthVersion(5))
        );
        assert_eq!(parse_auth(b"\x01\x00\x00"), Err(SocksError::EmptyUser));
        assert_eq!(
            parse_auth(b"\x01\x01u\x00"),
            Ok(Parse::Done(
                Credentials {
                    user: b"u".to_vec(),
                    pass: vec![]
                },
                4
            ))
        );
    }

    #[test]
    fn requests() {
        let v4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50";
        assert_eq!(
            feed_bytewise(v4, parse_request)
                .unwrap()
                .0
                .target
                .to_string(),
            "127.0.0.1:80"
        );
        let name = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb";
        let (r, n) = feed_bytewise(name, parse_request).unwrap();
        assert_eq!(
            (r.command, r.target.to_string(), n),
            (Command::Connect, "example.com:443".into(), name.len())
        );
        let v6 = b"\x05\x03\x00\x04\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01\x00\x35";
        let (r, _) = feed_bytewise(v6, parse_request).unwrap();
        assert_eq!(r.command, Command::UdpAssociate);
        assert_eq!(r.target.to_string(), "[2001:db8::1]:53");
        assert_eq!(parse_request(b"\x05\x09"), Err(SocksError::Command(9)));
        assert_eq!(
            parse_request(b"\x05\x01\x00\x02\x00"),
            Err(SocksError::AddressType(2))
        );
        assert_eq!(
            parse_request(b"\x05\x01\x00\x03\x00\x00\x50"),
            Err(SocksError::BadHost)
        );
        assert_eq!(parse_request(b"\x04\x01\x00"), Err(SocksError::Version(4)));
    }

    #[test]
    fn replies_carry_address_and_type() {
        assert_eq!(
            reply(REP_SUCCEEDED, Some("127.0.0.1:4242".parse().unwrap())),
            b"\x05\x00\x00\x01\x7f\x00\x00\x01\x10\x92"
        );
        let r = reply(REP_SUCCEEDED, Some("[::1]:80".parse().unwrap()));
        assert_eq!(&r[..4], b"\x05\x00\x00\x04");
        assert_eq!(r.len(), 4 + 16 + 2);
        assert_eq!(
            reply(REP_CONNECTION_REFUSED, None),
            b"\x05\x05\x00\x01\0\0\0\0\0\0"
        );
        let parsed = parse_reply(&r).unwrap();
        assert_eq!(
            parsed,
            Parse::Done(
                Reply {
                    code: 0,
                    bound: Target::ip("[::1]:80".parse().unwrap())
                },
                22
            )
        );
        let req = encode_request(Command::Connect, &Target::name("example.com", 443));
        assert_eq!(req, b"\x05\x01\x00\x03\x0bexample.com\x01\xbb");
    }

    #[test]
    fn udp() {
        let mut d = udp_header("10.0.0.1:53".parse().unwrap());
        d.extend_from_slice(b"payload");
        let h = parse_udp(&d).unwrap();
        assert_eq!(
            (h.frag, h.target.to_string(), &d[h.len..]),
            (0, "10.0.0.1:53".into(), b"payload".as_slice())
        );
        assert_eq!(parse_udp(b"\0\0\0\x01\x7f"), Err(SocksError::Truncated));
        assert_eq!(parse_udp(b"\0\0"), Err(SocksError::Truncated));
        let h = parse_udp(b"\0\0\x01\x03\x01a\x00\x35x").unwrap();
        assert_eq!((h.frag, h.target.to_string(), h.len), (1, "a:53".into(), 8));
    }
}
