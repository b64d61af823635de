//! Raw `struct sockaddr` bytes (as copied from a process) to [`Endpoint`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::model::Endpoint;
use crate::output::escape::escape_name;

pub const AF_UNSPEC: u16 = 0;
pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `offsetof(struct sockaddr_un, sun_path)`.
const SUN_PATH_OFFSET: usize = 2;
/// `sizeof(struct sockaddr_un)`.
const SOCKADDR_UN_LEN: usize = 110;
/// The part of `sockaddr_in` that carries the address (family, port, address).
const SOCKADDR_IN_MIN: usize = 8;
/// `SIN6_LEN_RFC2133`: the shortest `sockaddr_in6` the kernel accepts (no scope id).
const SOCKADDR_IN6_MIN: usize = 24;

/// Parses a raw sockaddr (`bytes` is exactly the address length the call used).
///
/// - AF_INET, AF_INET6: `ip:port` (the IPv6 flow info and scope id are ignored; an
///   IPv4-mapped IPv6 address `::ffff:a.b.c.d` becomes IPv4).
/// - AF_UNIX: the path (up to the first NUL or the end); an abstract name (first path byte
///   NUL) becomes `@name` with all its remaining bytes, non-printable ones escaped; an
///   unnamed address (length 2, family only) becomes `Unix("")`.
///
/// Anything else (other families, too short, AF_UNSPEC) gives `None`.
pub fn parse_sockaddr(bytes: &[u8]) -> Option<Endpoint> {
    let family = u16::from_ne_bytes(bytes.get(..2)?.try_into().ok()?);
    match family {
        AF_INET => {
            if bytes.len() < SOCKADDR_IN_MIN {
                return None;
            }
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            Some(Endpoint::Inet(SocketAddr::V4(SocketAddrV4::new(ip, port))))
        }
        AF_INET6 => {
            if bytes.len() < SOCKADDR_IN6_MIN {
                return None;
            }
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let octets: [u8; 16] = bytes[8..24].try_into().ok()?;
            Some(Endpoint::Inet(inet6(octets, port)))
        }
        AF_UNIX => {
            // The kernel never looks past sizeof(sockaddr_un).
            let path = &bytes[SUN_PATH_OFFSET..bytes.len().min(SOCKADDR_UN_LEN)];
            match path.first() {
                None => Some(Endpoint::Unix(String::new())),
                Some(0) => Some(Endpoint::Unix(format!("@{}", escape_name(&path[1..])))),
                Some(_) => {
                    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                    Some(Endpoint::Unix(escape_name(&path[..end])))
                }
            }
        }
        _ => None,
    }
}

/// An IPv6 socket address, shown as IPv4 when the address is IPv4-mapped.
pub fn inet6(octets: [u8; 16], port: u16) -> SocketAddr {
    let ip = Ipv6Addr::from(octets);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
        None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
    }
}

/// An internet socket address from the kernel's (family, address bytes, host-order port)
/// triple, as carried by `SockInfo` and `MsgAddr`; `None` for other families.
pub fn inet(family: u16, addr: &[u8; 16], port: u16) -> Option<SocketAddr> {
    match family {
        AF_INET => {
            let ip = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        AF_INET6 => Some(inet6(*addr, port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> Option<Endpoint> {
        Some(Endpoint::Inet(s.parse().unwrap()))
    }
    fn unix(s: &str) -> Option<Endpoint> {
        Some(Endpoint::Unix(s.to_string()))
    }

    /// `struct sockaddr_in` for 192.168.10.1:5555.
    fn sockaddr_in() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&[0x15, 0xb3]); // 5555 big-endian
        b.extend_from_slice(&[192, 168, 10, 1]);
        b.extend_from_slice(&[0; 8]); // sin_zero
        b
    }

    #[test]
    fn inet4() {
        let b = sockaddr_in();
        assert_eq!(b.len(), 16);
        assert_eq!(parse_sockaddr(&b), sa("192.168.10.1:5555"));
        // The address part alone is enough.
        assert_eq!(parse_sockaddr(&b[..8]), sa("192.168.10.1:5555"));
        assert_eq!(parse_sockaddr(&b[..7]), None);
    }

    #[test]
    fn inet6_full_and_short() {
        let mut b = Vec::new();
        b.extend_from_slice(&10u16.to_ne_bytes());
        b.extend_from_slice(&[0x01, 0xbb]); // 443
        b.extend_from_slice(&[0, 0, 0, 7]); // flow info
        b.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        ]);
        b.extend_from_slice(&3u32.to_ne_bytes()); // scope id: ignored
        assert_eq!(b.len(), 28);
        assert_eq!(parse_sockaddr(&b), sa("[2001:db8::1]:443"));
        assert_eq!(parse_sockaddr(&b[..24]), sa("[2001:db8::1]:443"));
        assert_eq!(parse_sockaddr(&b[..23]), None);
    }

    #[test]
    fn inet6_v4_mapped_is_shown_as_v4() {
        let mut b = Vec::new();
        b.extend_from_slice(&10u16.to_ne_bytes());
        b.extend_from_slice(&[0x1f, 0x40]); // 8000
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]);
        b.extend_from_slice(&[0; 4]);
        assert_eq!(parse_sockaddr(&b), sa("127.0.0.1:8000"));
    }

    #[test]
    fn inet6_loopback_stays_v6() {
        let mut b = vec![0u8; 28];
        b[..2].copy_from_slice(&10u16.to_ne_bytes());
        b[2..4].copy_from_slice(&[0, 53]);
        b[23] = 1;
        assert_eq!(parse_sockaddr(&b), sa("[::1]:53"));
    }

    fn sun(path: &[u8]) -> Vec<u8> {
        let mut b = 1u16.to_ne_bytes().to_vec();
        b.extend_from_slice(path);
        b
    }

    #[test]
    fn unix_path() {
        // NUL-terminated, as sizeof(sa_family_t) + strlen + 1.
        assert_eq!(
            parse_sockaddr(&sun(b"/run/app.sock\0")),
            unix("/run/app.sock")
        );
        // Length-limited, no terminator.
        assert_eq!(
            parse_sockaddr(&sun(b"/run/app.sock")),
            unix("/run/app.sock")
        );
        // The whole struct sockaddr_un (110 bytes) with the path NUL padded.
        let mut full = sun(b"/tmp/x");
        full.resize(110, 0);
        assert_eq!(parse_sockaddr(&full), unix("/tmp/x"));
        // Garbage after the terminator is ignored.
        assert_eq!(parse_sockaddr(&sun(b"/tmp/y\0junk")), unix("/tmp/y"));
    }

    #[test]
    fn unix_path_longer_than_sockaddr_un_is_cut() {
        let mut b = sun(&[b'a'; 126]);
        assert_eq!(b.len(), 128);
        let Some(Endpoint::Unix(p)) = parse_sockaddr(&b) else {
            panic!()
        };
        assert_eq!(p.len(), 108);
        b.truncate(3);
        assert_eq!(parse_sockaddr(&b), unix("a"));
    }

    #[test]
    fn unix_abstract() {
        assert_eq!(
            parse_sockaddr(&sun(b"\0/tmp/.X11-unix/X0")),
            unix("@/tmp/.X11-unix/X0")
        );
        // Every byte of an abstract name counts, NULs and non-printables escaped.
        assert_eq!(
            parse_sockaddr(&sun(b"\0name\0\x01\n")),
            unix("@name\\x00\\x01\\n")
        );
        // Empty abstract name (autobind style).
        assert_eq!(parse_sockaddr(&sun(b"\0")), unix("@"));
    }

    #[test]
    fn unix_unnamed() {
        assert_eq!(parse_sockaddr(&1u16.to_ne_bytes()), unix(""));
    }

    #[test]
    fn unix_path_non_printable_escaped() {
        assert_eq!(
            parse_sockaddr(&sun(b"/tmp/a\tb\xff\0")),
            unix("/tmp/a\\tb\\xff")
        );
    }

    #[test]
    fn others() {
        assert_eq!(parse_sockaddr(&[]), None);
        assert_eq!(parse_sockaddr(&[1]), None);
        assert_eq!(parse_sockaddr(&[0, 0, 1, 2, 3, 4, 5, 6]), None); // AF_UNSPEC
        let mut nl = 16u16.to_ne_bytes().to_vec(); // AF_NETLINK
        nl.resize(12, 0);
        assert_eq!(parse_sockaddr(&nl), None);
    }

    #[test]
    fn inet_triples() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(inet(AF_INET, &a, 80), "10.0.0.1:80".parse().ok());
        assert_eq!(inet(AF_INET6, &[0; 16], 80), "[::]:80".parse().ok());
        assert_eq!(inet(AF_UNIX, &a, 80), None);
        assert_eq!(inet(0, &a, 80), None);
    }
}
