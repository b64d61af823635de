//! Where an intercepted connection or datagram was going (its original destination), and
//! the socket options the transparent listeners need.
//!
//! - redirect (NAT): `getsockopt(SO_ORIGINAL_DST)` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6)
//!   on the accepted socket asks conntrack for the destination before NAT;
//! - tproxy, TCP: the accepted socket's own local address is the original destination;
//! - tproxy, UDP: `IP_RECVORIGDSTADDR` / `IPV6_RECVORIGDSTADDR` put it in a control
//!   message of each `recvmsg` ([`parse_origdst_cmsgs`]).
//!
//! Parsing (`sockaddr` bytes, control messages) is pure and fuzzed; the rest are thin
//! wrappers over the syscalls.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`
/// (linux/netfilter_ipv6/ip6_tables.h): both 80.
pub const SO_ORIGINAL_DST: libc::c_int = 80;
pub const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// A `struct sockaddr_in` / `sockaddr_in6` as bytes (family in host order, port and
/// address in network order) → address; None for anything else or too short.
pub fn sockaddr_from_bytes(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family as i32 {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// The bytes of `sockaddr_in`/`sockaddr_in6` for `a`, and their length.
pub fn sockaddr_bytes(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn storage_to_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: ss is valid for its whole size; we read `len` bytes of it.
    let bytes = unsafe {
        std::slice::from_raw_parts((ss as *const libc::sockaddr_storage).cast::<u8>(), len)
    };
    sockaddr_from_bytes(bytes)
}

/// The destination a NAT (redirect) rule rewrote, from conntrack.
pub fn original_dst(fd: RawFd, ipv6: bool) -> io::Result<SocketAddr> {
    // SAFETY: zeroed storage, getsockopt writes at most `len` bytes.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let (level, opt) = if ipv6 {
        (libc::SOL_IPV6, IP6T_SO_ORIGINAL_DST)
    } else {
        (libc::SOL_IP, SO_ORIGINAL_DST)
    };
    // SAFETY: as above.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&raw mut ss).cast(), &mut len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    storage_to_addr(&ss, len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "odd original destination"))
}

/// `IP_ORIGDSTADDR` and `IPV6_ORIGDSTADDR` (linux/in.h, linux/in6.h).
pub const IP_ORIGDSTADDR: libc::c_int = 20;
pub const IPV6_ORIGDSTADDR: libc::c_int = 74;

const CMSG_HDR: usize = std::mem::size_of::<libc::cmsghdr>();

/// The original destination in the control messages of one `recvmsg` (`IP_ORIGDSTADDR` or
/// `IPV6_ORIGDSTADDR`), parsed from the raw control buffer.
pub fn parse_origdst_cmsgs(control: &[u8]) -> Option<SocketAddr> {
    let align = std::mem::size_of::<usize>();
    let mut off = 0usize;
    while off + CMSG_HDR <= control.len() {
        let len = usize::from_ne_bytes(control[off..off + 8].try_into().ok()?);
        let level = i32::from_ne_bytes(control[off + 8..off + 12].try_into().ok()?);
        let ty = i32::from_ne_bytes(control[off + 12..off + 16].try_into().ok()?);
        let end = off.checked_add(len)?;
        if len < CMSG_HDR || end > control.len() {
            return None;
        }
        let data = &control[off + CMSG_HDR..end];
        if (level == libc::SOL_IP && ty == IP_ORIGDSTADDR)
            || (level == libc::SOL_IPV6 && ty == IPV6_ORIGDSTADDR)
        {
            return sockaddr_from_bytes(data);
        }
        // len <= control.len() here, so this cannot overflow.
        off += (len + align - 1) & !(align - 1);
    }
    None
}

/// One datagram received with its source and original destination.
pub struct Datagram {
    pub len: usize,
    pub from: SocketAddr,
    pub orig_dst: Option<SocketAddr>,
}

/// `recvmsg` on a non-blocking UDP socket with `IP(V6)_RECVORIGDSTADDR` on.
pub fn recv_with_origdst(fd: RawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    // SAFETY: zeroed storage and msghdr are valid; recvmsg writes within the lengths given.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut ss).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = storage_to_addr(&ss, msg.msg_namelen)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram without a source"))?;
    let clen = msg.msg_controllen.min(control.len());
    Ok(Datagram {
        len: n as usize,
        from,
        orig_dst: parse_origdst_cmsgs(&control[..clen]),
    })
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a c_int.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&raw const v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `IP_TRANSPARENT` / `IPV6_TRANSPARENT`: accept connections and bind to addresses that
/// are not this host's (tproxy).
pub fn set_transparent(fd: RawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        setsockopt_int(fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)
    } else {
        setsockopt_int(fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1)
    }
}

/// `IP_RECVORIGDSTADDR` / `IPV6_RECVORIGDSTADDR`.
pub fn set_recv_origdst(fd: RawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        setsockopt_int(fd, libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR, 1)
    } else {
        setsockopt_int(fd, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1)
    }
}

/// `SO_MARK`: the agent's own sockets carry its mark, which its rules never intercept.
pub fn set_mark(fd: RawFd, mark: u32) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

pub fn set_reuseaddr(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
}

pub fn set_v6only(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)
}

/// True when `ip` is an address of this host (in this network namespace): binding to it
/// without `IP_TRANSPARENT` works.
pub fn is_local_address(ip: IpAddr) -> bool {
    let probe = SocketAddr::new(ip, 0);
    std::net::UdpSocket::bind(probe).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs_round_trip() {
        for a in ["10.1.2.3:8080", "[fd00::1]:443", "[::ffff:1.2.3.4]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            let (ss, len) = sockaddr_bytes(a);
            assert_eq!(storage_to_addr(&ss, len), Some(a));
        }
        assert_eq!(sockaddr_from_bytes(&[2, 0, 0]), None);
        assert_eq!(sockaddr_from_bytes(&[1, 0, 0, 0, 0, 0, 0, 0]), None);
        let mut v4 = vec![0u8; 16];
        v4[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&80u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(
            sockaddr_from_bytes(&v4),
            Some("192.0.2.1:80".parse().unwrap())
        );
    }

    fn cmsg(level: i32, ty: i32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(CMSG_HDR + data.len()).to_ne_bytes());
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        while v.len() % 8 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn control_messages() {
        let (ss, len) = sockaddr_bytes("10.9.8.7:53".parse().unwrap());
        let raw = unsafe { std::slice::from_raw_parts((&raw const ss).cast::<u8>(), len as usize) };
        let mut buf = cmsg(libc::SOL_SOCKET, 29, &[1, 2, 3]);
        buf.extend(cmsg(libc::SOL_IP, IP_ORIGDSTADDR, raw));
        assert_eq!(
            parse_origdst_cmsgs(&buf),
            Some("10.9.8.7:53".parse().unwrap())
        );
        assert_eq!(parse_origdst_cmsgs(&buf[..20]), None);
        let mut bad = buf.clone();
        bad[0] = 200;
        assert_eq!(parse_origdst_cmsgs(&bad), None);
        assert_eq!(parse_origdst_cmsgs(&[]), None);
        // A length that would overflow the offset (found by the fuzzer).
        let mut huge = cmsg(libc::SOL_IP, IP_ORIGDSTADDR, raw);
        huge[..8].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(parse_origdst_cmsgs(&huge), None);
    }

    #[test]
    fn udp_origdst_on_loopback() {
        // Without tproxy the original destination is simply the address the datagram
        // was sent to: the same control message path.
        use std::os::fd::AsRawFd as _;
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_recv_origdst(s.as_raw_fd(), false).unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(b"hi", s.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 16];
        let mut got = None;
        for _ in 0..100 {
            match recv_with_origdst(s.as_raw_fd(), &mut buf) {
                Ok(d) => {
                    got = Some(d);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        let d = got.expect("datagram");
        assert_eq!(&buf[..d.len], b"hi");
        assert_eq!(d.from, c.local_addr().unwrap());
        assert_eq!(d.orig_dst, Some(s.local_addr().unwrap()));
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        assert!(!is_local_address("192.0.2.77".parse().unwrap()));
    }
}
