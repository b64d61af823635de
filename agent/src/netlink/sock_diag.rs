//! The local TCP/UDP sockets of this network namespace over `NETLINK_SOCK_DIAG`
//! (`inet_diag`, `SOCK_DIAG_BY_FAMILY` with `inet_diag_req_v2`), with
//! `netlink-packet-sock-diag`: 5-tuple, inode and socket cookie of each.

use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    SOCK_DIAG_BY_FAMILY, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};

use super::{Malformed, Socket, decode, serialize};

/// One socket of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub inode: u32,
    pub cookie: u64,
}

/// A dump request for every socket (every state) of `family` x `proto`.
pub fn request(family: u8, proto: u8, seq: u32) -> Vec<u8> {
    let socket_id = if i32::from(family) == libc::AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let req = InetRequest {
        family,
        protocol: proto,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::from_bits_retain(u32::MAX),
        socket_id,
    };
    serialize(
        SockDiagMessage::InetRequest(req),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// One message of a dump (header included): the socket of an `inet_diag_msg`, `Ok(None)`
/// for other messages.
pub fn parse_socket(msg: &[u8]) -> Result<Option<InetSocket>, Malformed> {
    let Some(SockDiagMessage::InetResponse(r)) = decode(msg, SOCK_DIAG_BY_FAMILY)? else {
        return Ok(None);
    };
    let id = &r.header.socket_id;
    // `idiag_cookie` is two host-order u32s, low half first.
    let half = |i: usize| u32::from_ne_bytes(id.cookie[i..i + 4].try_into().expect("4 bytes"));
    Ok(Some(InetSocket {
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        inode: r.header.inode,
        cookie: u64::from(half(0)) | (u64::from(half(4)) << 32),
    }))
}

/// Every socket of `family` x `proto`.
pub fn dump(sock: &mut Socket, family: u8, proto: u8) -> io::Result<Vec<InetSocket>> {
    let seq = sock.next_seq();
    let msgs = sock.dump(&request(family, proto, seq), seq)?;
    // Messages that do not decode (another family, too short) describe no socket.
    Ok(msgs
        .iter()
        .filter_map(|m| parse_socket(m).ok().flatten())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::{Builder, DumpError, NLMSG_DONE, dump_part, tests::ack};
    use super::*;

    const TCP: u8 = libc::IPPROTO_TCP as u8;

    /// A reply the way the kernel lays it out (written by hand, not by the crate that
    /// parses it): one inet_diag_msg, then NLMSG_DONE.
    fn reply(family: u8) -> Vec<u8> {
        let mut msg = vec![0u8; 72];
        msg[0] = family;
        msg[1] = 10; // TCP_LISTEN
        msg[4..6].copy_from_slice(&8000u16.to_be_bytes());
        msg[6..8].copy_from_slice(&0u16.to_be_bytes());
        if family == libc::AF_INET as u8 {
            msg[8..12].copy_from_slice(&[127, 0, 0, 1]);
        } else {
            msg[23] = 1; // ::1
        }
        msg[44..48].copy_from_slice(&0x1234u32.to_ne_bytes());
        msg[48..52].copy_from_slice(&0x1u32.to_ne_bytes());
        msg[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        let mut b = Builder::new();
        b.begin(SOCK_DIAG_BY_FAMILY, 2, 1).raw(&msg).end();
        b.begin(NLMSG_DONE, 2, 1).raw(&0i32.to_ne_bytes()).end();
        b.into_bytes()
    }

    fn sockets(buf: &[u8]) -> Result<(Vec<InetSocket>, bool), DumpError> {
        let mut msgs = Vec::new();
        let done = dump_part(buf, 1, &mut msgs)?;
        let s = msgs
            .iter()
            .filter_map(|m| parse_socket(m).ok().flatten())
            .collect();
        Ok((s, done))
    }

    #[test]
    fn parses_diag_replies() {
        let (s, done) = sockets(&reply(libc::AF_INET as u8)).unwrap();
        assert!(done);
        assert_eq!(
            s,
            [InetSocket {
                local: "127.0.0.1:8000".parse().unwrap(),
                remote: "0.0.0.0:0".parse().unwrap(),
                inode: 4242,
                cookie: 0x1_0000_1234,
            }]
        );
        let (s, _) = sockets(&reply(libc::AF_INET6 as u8)).unwrap();
        assert_eq!(s[0].local, "[::1]:8000".parse().unwrap());
        // Another family: no socket.
        let mut unix = reply(libc::AF_INET as u8);
        unix[16] = libc::AF_UNIX as u8;
        assert!(parse_socket(&unix).is_err());
        // Truncated: nothing, not done.
        let r = sockets(&reply(libc::AF_INET as u8)[..40]);
        assert!(r.is_err() || r == Ok((vec![], false)));
        let mut short = reply(libc::AF_INET as u8)[..40].to_vec();
        short[0..4].copy_from_slice(&40u32.to_ne_bytes());
        assert!(parse_socket(&short).is_err());
        // An error message.
        let mut e = ack(-libc::ENOENT, 1);
        assert_eq!(sockets(&e), Err(DumpError::Kernel(libc::ENOENT)));
        // A code no kernel sends (its negation overflows): a protocol error, no panic.
        e[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert_eq!(sockets(&e), Err(DumpError::Kernel(libc::EPROTO)));
    }

    #[test]
    fn requests() {
        let req = request(libc::AF_INET6 as u8, TCP, 7);
        assert_eq!(req.len(), 72);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x301);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 7);
        assert_eq!(&req[16..20], &[libc::AF_INET6 as u8, TCP, 0, 0]);
        assert_eq!(&req[20..24], &u32::MAX.to_ne_bytes());
        assert!(req[24..].iter().all(|&b| b == 0));
    }
}
