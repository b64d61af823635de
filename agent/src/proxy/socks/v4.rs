//! SOCKS4 and SOCKS4a requests and replies (pure; no I/O).
//!
//! Request: `VN=4 CD DSTPORT(2) DSTIP(4) USERID... NUL`; SOCKS4a (the client lets the proxy
//! resolve the name) sets DSTIP to `0.0.0.x` with x ≠ 0 and follows the user id with the
//! host name and another NUL. CD is 1 (CONNECT) or 2 (BIND).
//!
//! Reply: `VN=0 CD DSTPORT DSTIP` (8 bytes; the version byte of a reply is 0, not 4), CD 90
//! granted, 91 rejected or failed, 92/93 identd problems (not used here).

use std::net::{Ipv4Addr, SocketAddr};

use super::{Parse, SocksError};
use crate::proxy::target::Target;

pub const VERSION: u8 = 4;
pub const REPLY_VERSION: u8 = 0;
pub const CMD_CONNECT: u8 = 1;
pub const CMD_BIND: u8 = 2;
pub const GRANTED: u8 = 90;
pub const REJECTED: u8 = 91;
/// Longest user id and host name (bytes, without the NUL).
pub const FIELD_MAX: usize = 255;
/// Longest request: header, user id, host name and their NULs.
pub const REQUEST_MAX: usize = 8 + 2 * (FIELD_MAX + 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Connect,
    Bind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    /// The destination: an IPv4 address (SOCKS4) or a host name (SOCKS4a).
    pub target: Target,
    /// SOCKS4a: the client sent a name for the proxy to resolve.
    pub socks4a: bool,
    pub user: Vec<u8>,
}

/// The position of the NUL ending a field that starts at `from`, if it came within
/// [`FIELD_MAX`] bytes; `Err` when the field is already too long.
fn field_end(buf: &[u8], from: usize, what: &'static str) -> Result<Option<usize>, SocksError> {
    let window = &buf[from.min(buf.len())..];
    match window.iter().take(FIELD_MAX + 1).position(|&b| b == 0) {
        Some(i) => Ok(Some(from + i)),
        None if window.len() > FIELD_MAX => Err(SocksError::TooLong(what)),
        None => Ok(None),
    }
}

/// Parses a SOCKS4/4a request at the start of `buf` (the version byte included).
pub fn parse_request(buf: &[u8]) -> Result<Parse<Request>, SocksError> {
    if let Some(&v) = buf.first()
        && v != VERSION
    {
        return Err(SocksError::Version(v));
    }
    let command = match buf.get(1) {
        None => return Ok(Parse::Incomplete),
        Some(&CMD_CONNECT) => Command::Connect,
        Some(&CMD_BIND) => Command::Bind,
        Some(&c) => return Err(SocksError::Command(c)),
    };
    if buf.len() < 8 {
        return Ok(Parse::Incomplete);
    }
    let port = u16::from_be_bytes([buf[2], buf[3]]);
    let ip = Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]);
    let Some(user_end) = field_end(buf, 8, "user id")? else {
        return Ok(Parse::Incomplete);
    };
    let user = buf[8..user_end].to_vec();
    let o = ip.octets();
    let socks4a = o[0] == 0 && o[1] == 0 && o[2] == 0 && o[3] != 0;
    if !socks4a {
        return Ok(Parse::Done(
            Request {
                command,
                target: Target::ip(SocketAddr::new(ip.into(), port)),
                socks4a,
                user,
            },
            user_end + 1,
        ));
    }
    let Some(host_end) = field_end(buf, user_end + 1, "host name")? else {
        return Ok(Parse::Incomplete);
    };
    let host = &buf[user_end + 1..host_end];
    let target = super::host_target(host, port)?;
    Ok(Parse::Done(
        Request {
            command,
            target,
            socks4a,
            user,
        },
        host_end + 1,
    ))
}

/// The 8-byte reply: version 0, `code`, and an IPv4 address and port (an IPv6 one, which
/// SOCKS4 cannot carry, becomes 0.0.0.0: "the proxy's address").
pub fn reply(code: u8, addr: Option<SocketAddr>) -> [u8; 8] {
    let (ip, port) = match addr {
        Some(SocketAddr::V4(a)) => (*a.ip(), a.port()),
        Some(SocketAddr::V6(a)) => (
            a.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            a.port(),
        ),
        None => (Ipv4Addr::UNSPECIFIED, 0),
    };
    let p = port.to_be_bytes();
    let o = ip.octets();
    [REPLY_VERSION, code, p[0], p[1], o[0], o[1], o[2], o[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::socks::tests::feed_bytewise;

    #[test]
    fn connect_ipv4() {
        let req = b"\x04\x01\x00\x50\x7f\x00\x00\x01alice\x00";
        let Parse::Done(r, n) = parse_request(req).unwrap() else {
            panic!()
        };
        assert_eq!(n, req.len());
        assert_eq!(r.command, Command::Connect);
        assert_eq!(r.target.to_string(), "127.0.0.1:80");
        assert!(!r.socks4a);
        assert_eq!(r.user, b"alice");
        assert_eq!(feed_bytewise(req, parse_request).unwrap().1, req.len());
    }

    #[test]
    fn socks4a_name() {
        let mut req = b"\x04\x01\x01\xbb\x00\x00\x00\x07\x00example.com\x00".to_vec();
        req.extend_from_slice(b"extra bytes belong to the target");
        let (r, n) = feed_bytewise(&req, parse_request).unwrap();
        assert_eq!(n, 21);
        assert!(r.socks4a);
        assert_eq!(r.target.to_string(), "example.com:443");
        assert!(r.user.is_empty());
        // 0.0.0.0 is not SOCKS4a: it is the address 0.0.0.0.
        let r = parse_request(b"\x04\x02\x00\x15\x00\x00\x00\x00\x00");
        let Ok(Parse::Done(r, 9)) = r else { panic!() };
        assert_eq!(r.command, Command::Bind);
        assert_eq!(r.target.to_string(), "0.0.0.0:21");
    }

    #[test]
    fn errors() {
        assert_eq!(parse_request(b"\x05\x01"), Err(SocksError::Version(5)));
        assert_eq!(parse_request(b"\x04\x03"), Err(SocksError::Command(3)));
        assert_eq!(parse_request(b"\x04"), Ok(Parse::Incomplete));
        let long_user = [b"\x04\x01\x00\x50\x7f\x00\x00\x01".as_slice(), &[b'u'; 300]].concat();
        assert_eq!(
            feed_bytewise(&long_user, parse_request),
            Err(SocksError::TooLong("user id"))
        );
        // The limit holds exactly: 255 bytes and a NUL pass, 256 bytes fail.
        let ok = [
            b"\x04\x01\x00\x50\x7f\x00\x00\x01".as_slice(),
            &[b'u'; 255],
            b"\0",
        ]
        .concat();
        assert!(matches!(parse_request(&ok), Ok(Parse::Done(_, 264))));
        let bad = [b"\x04\x01\x00\x50\x7f\x00\x00\x01".as_slice(), &[b'u'; 256]].concat();
        assert_eq!(parse_request(&bad), Err(SocksError::TooLong("user id")));
        let long_host = [
            b"\x04\x01\x00\x50\x00\x00\x00\x01u\x00".as_slice(),
            &[b'h'; 256],
        ]
        .concat();
        assert_eq!(
            feed_bytewise(&long_host, parse_request),
            Err(SocksError::TooLong("host name"))
        );
        assert_eq!(
            parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00"),
            Err(SocksError::BadHost)
        );
        assert_eq!(
            parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00a\nb\x00"),
            Err(SocksError::BadHost)
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            reply(GRANTED, Some("10.1.2.3:8080".parse().unwrap())),
            [0, 90, 0x1f, 0x90, 10, 1, 2, 3]
        );
        assert_eq!(reply(REJECTED, None), [0, 91, 0, 0, 0, 0, 0, 0]);
    }
}
