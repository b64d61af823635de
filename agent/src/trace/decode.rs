//! Ring buffer record bytes to typed records.
//!
//! [`decode`] validates a record's size (at least the struct its kind names, and for DATA
//! and TLS records `len <= CHUNK_MAX` payload bytes present after the struct) and copies the struct
//! out with an unaligned read. It never panics: bad input gives a [`DecodeError`]. Bytes after
//! the record (ring buffer padding, a fixed-size reservation) are ignored.
//!
//! The helpers turn the kernel's raw fields into model values: [`socket_meta`],
//! [`transport`], [`msg_addr`], [`comm_string`].

use std::mem::size_of;
use std::net::SocketAddr;

use agent_common::{
    CHUNK_MAX, DataEvent, EventHeader, MsgAddr, ProcEvent, SockEvent, SockInfo, TASK_COMM_LEN,
    TlsEvent, flags, kind, sys,
};

use crate::model::{Endpoint, SocketMeta, Transport};
use crate::trace::sockaddr::{AF_INET, AF_INET6, AF_UNIX, inet};

pub const SOCK_STREAM: u16 = 1;
pub const SOCK_DGRAM: u16 = 2;
pub const SOCK_SEQPACKET: u16 = 5;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;
/// `SOCK_TYPE_MASK`: the type without SOCK_NONBLOCK/SOCK_CLOEXEC.
const SOCK_TYPE_MASK: u16 = 0xf;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than its {what} ({need} bytes)")]
    Short {
        what: &'static str,
        got: usize,
        need: usize,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("{what} record carries {len} payload bytes, more than the {max} a chunk may hold")]
    ChunkTooLong {
        what: &'static str,
        len: u32,
        max: usize,
    },
    #[error("{what} record says {len} payload bytes follow but only {present} do")]
    PayloadMissing {
        what: &'static str,
        len: u32,
        present: usize,
    },
    #[error("PROC record with syscall id {0} (not fork, exec, exit or mmap)")]
    BadProcSyscall(u16),
}

/// One decoded ring buffer record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    Sock(SockEvent),
    /// A DATA record and its payload chunk (exactly `ev.len` bytes).
    Data {
        ev: DataEvent,
        payload: &'a [u8],
    },
    /// fork, exec, exit; and `sys::MMAP_EXEC` (`trace --tls`: a file mapped executable).
    Proc(ProcEvent),
    /// A TLS record and its plaintext chunk (exactly `ev.len` bytes).
    Tls {
        ev: TlsEvent,
        payload: &'a [u8],
    },
}

impl Record<'_> {
    pub fn header(&self) -> &EventHeader {
        match self {
            Record::Sock(e) => &e.hdr,
            Record::Data { ev, .. } => &ev.hdr,
            Record::Proc(e) => &e.hdr,
            Record::Tls { ev, .. } => &ev.hdr,
        }
    }
}

/// Marker for the plain-old-data kernel records that may be read from arbitrary bytes.
///
/// # Safety
/// Implementors are `#[repr(C)]`, `Copy`, and every bit pattern is a valid value (integers
/// and arrays of integers only).
pub(crate) unsafe trait Pod: Copy {}
// SAFETY: repr(C) structs of integers and integer arrays (agent-common asserts no padding).
unsafe impl Pod for EventHeader {}
unsafe impl Pod for SockEvent {}
unsafe impl Pod for DataEvent {}
unsafe impl Pod for ProcEvent {}
unsafe impl Pod for TlsEvent {}

fn read<T: Pod>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            what,
            got: bytes.len(),
            need,
        });
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes, `read_unaligned` has no alignment
    // requirement, and every bit pattern is a valid T (Pod).
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let hdr: EventHeader = read(bytes, "EventHeader")?;
    match hdr.kind {
        kind::SOCK => Ok(Record::Sock(read(bytes, "SockEvent")?)),
        kind::DATA => {
            let ev: DataEvent = read(bytes, "DataEvent")?;
            let payload = chunk("DATA", bytes, size_of::<DataEvent>(), ev.len)?;
            Ok(Record::Data { ev, payload })
        }
        kind::TLS => {
            let ev: TlsEvent = read(bytes, "TlsEvent")?;
            let payload = chunk("TLS", bytes, size_of::<TlsEvent>(), ev.len)?;
            Ok(Record::Tls { ev, payload })
        }
        kind::PROC => {
            let ev: ProcEvent = read(bytes, "ProcEvent")?;
            match hdr.syscall {
                sys::FORK | sys::EXEC | sys::EXIT | sys::MMAP_EXEC => Ok(Record::Proc(ev)),
                other => Err(DecodeError::BadProcSyscall(other)),
            }
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The `len` payload bytes after the `head` bytes of a `what` record's struct.
fn chunk<'a>(
    what: &'static str,
    bytes: &'a [u8],
    head: usize,
    len: u32,
) -> Result<&'a [u8], DecodeError> {
    if len as usize > CHUNK_MAX {
        return Err(DecodeError::ChunkTooLong {
            what,
            len,
            max: CHUNK_MAX,
        });
    }
    let rest = &bytes[head..];
    rest.get(..len as usize).ok_or(DecodeError::PayloadMissing {
        what,
        len,
        present: rest.len(),
    })
}

/// The comm bytes up to the first NUL, non-printable bytes escaped.
pub fn comm_string(comm: &[u8; TASK_COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    crate::output::escape::escape_name(&comm[..end])
}

/// The transport of a socket from its family, type (flags are ignored) and protocol.
pub fn transport(family: u16, sock_type: u16, protocol: u16) -> Transport {
    let ty = sock_type & SOCK_TYPE_MASK;
    match (family, ty, protocol) {
        (AF_INET | AF_INET6, SOCK_STREAM, 0 | IPPROTO_TCP) => Transport::Tcp,
        (AF_INET | AF_INET6, SOCK_DGRAM, 0 | IPPROTO_UDP) => Transport::Udp,
        (AF_UNIX, SOCK_STREAM, _) => Transport::UnixStream,
        (AF_UNIX, SOCK_DGRAM, _) => Transport::UnixDgram,
        (AF_UNIX, SOCK_SEQPACKET, _) => Transport::UnixSeqpacket,
        _ => Transport::Other {
            family,
            sock_type,
            protocol,
        },
    }
}

/// The socket the header describes, when `flags::SOCK_VALID` is set.
///
/// Internet endpoints come from the kernel's addresses: the remote is `None` when its port
/// and address are both zero, the local likewise. Unix endpoints are not in `SockInfo`: both
/// are `None` here (the assembler fills them from what it learned from connect/bind/accept).
pub fn socket_meta(hdr: &EventHeader) -> Option<SocketMeta> {
    if hdr.flags & flags::SOCK_VALID == 0 {
        return None;
    }
    let s: &SockInfo = &hdr.sock;
    let endpoint = |addr: &[u8; 16], port: u16| -> Option<Endpoint> {
        let len = if s.family == AF_INET { 4 } else { 16 };
        if port == 0 && addr[..len].iter().all(|&b| b == 0) {
            return None;
        }
        inet(s.family, addr, port).map(Endpoint::Inet)
    };
    Some(SocketMeta {
        sk: s.sk,
        ino: s.ino,
        transport: transport(s.family, s.sock_type, s.protocol),
        local: endpoint(&s.laddr, s.lport),
        remote: endpoint(&s.raddr, s.rport),
    })
}

/// The datagram address a DATA record carries (`None` for family 0 or non-internet families).
pub fn msg_addr(a: &MsgAddr) -> Option<SocketAddr> {
    inet(a.family, &a.addr, a.port)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use agent_common::SOCKADDR_MAX;

    pub(crate) fn bytes_of<T: Pod>(v: &T) -> Vec<u8> {
        // SAFETY: T is Pod: no padding, so every byte is initialized.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    pub(crate) fn comm(s: &str) -> [u8; TASK_COMM_LEN] {
        let mut c = [0u8; TASK_COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    pub(crate) fn tcp4(sk: u64, l: [u8; 4], lport: u16, r: [u8; 4], rport: u16) -> SockInfo {
        let mut laddr = [0u8; 16];
        laddr[..4].copy_from_slice(&l);
        let mut raddr = [0u8; 16];
        raddr[..4].copy_from_slice(&r);
        SockInfo {
            sk,
            ino: 777,
            family: AF_INET,
            sock_type: SOCK_STREAM,
            protocol: IPPROTO_TCP,
            state: 1,
            lport,
            rport,
            _pad: 0,
            laddr,
            raddr,
        }
    }

    pub(crate) fn header(kind: u16, syscall: u16, pid: u32, tid: u32, fd: i32) -> EventHeader {
        EventHeader {
            ts_ns: 1_000,
            kind,
            syscall,
            pid,
            tid,
            fd,
            comm: comm("python3"),
            ..Default::default()
        }
    }

    pub(crate) fn sock_event(hdr: EventHeader, args: [u64; 4], addr: &[u8]) -> SockEvent {
        let mut a = [0u8; SOCKADDR_MAX];
        a[..addr.len()].copy_from_slice(addr);
        SockEvent {
            hdr,
            args,
            addr_len: addr.len() as u32,
            _pad: 0,
            addr: a,
        }
    }

    pub(crate) fn data_record(ev: &DataEvent, payload: &[u8]) -> Vec<u8> {
        let mut b = bytes_of(ev);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn sock_record() {
        let mut hdr = header(kind::SOCK, sys::CONNECT, 4242, 4242, 3);
        hdr.flags = flags::SOCK_VALID;
        hdr.sock = tcp4(
            0xffff_8881_0000_1000,
            [127, 0, 0, 1],
            40112,
            [192, 168, 10, 1],
            5555,
        );
        let ev = sock_event(hdr, [1, 2, 3, 4], &[2, 0, 0x15, 0xb3, 192, 168, 10, 1]);
        let bytes = bytes_of(&ev);
        assert_eq!(bytes.len(), 288);
        assert_eq!(&bytes[8..10], &kind::SOCK.to_ne_bytes());
        let rec = decode(&bytes).unwrap();
        assert_eq!(rec, Record::Sock(ev));
        assert_eq!(rec.header().pid, 4242);
        // Trailing padding is fine.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0xaa; 8]);
        assert_eq!(decode(&padded).unwrap(), Record::Sock(ev));
        // One byte short is not.
        assert_eq!(
            decode(&bytes[..287]),
            Err(DecodeError::Short {
                what: "SockEvent",
                got: 287,
                need: 288
            })
        );
    }

    #[test]
    fn unaligned_input() {
        let mut hdr = header(kind::PROC, sys::FORK, 1, 1, -1);
        hdr.ts_ns = 0x0102_0304_0506_0708;
        let ev = ProcEvent {
            hdr,
            child_pid: 99,
            exit_code: 0,
        };
        let mut buf = vec![0u8];
        buf.extend_from_slice(&bytes_of(&ev));
        let rec = decode(&buf[1..]).unwrap();
        assert_eq!(rec, Record::Proc(ev));
    }

    fn data_ev(len: u32) -> DataEvent {
        DataEvent {
            hdr: header(kind::DATA, sys::SENDTO, 10, 11, 3),
            total: 12,
            offset: 0,
            len,
            msg_index: 0,
            addr: MsgAddr::default(),
        }
    }

    #[test]
    fn data_record_with_payload() {
        let ev = data_ev(12);
        let bytes = data_record(&ev, b"Hello World!");
        assert_eq!(bytes.len(), 168 + 12);
        let rec = decode(&bytes).unwrap();
        assert_eq!(
            rec,
            Record::Data {
                ev,
                payload: b"Hello World!"
            }
        );
        // Extra bytes after the payload (fixed-size reservation) are not payload.
        let mut padded = bytes.clone();
        padded.extend_from_slice(b"garbage");
        let Record::Data { payload, .. } = decode(&padded).unwrap() else {
            panic!()
        };
        assert_eq!(payload, b"Hello World!");
    }

    #[test]
    fn data_record_len_checks() {
        let ev = data_ev(12);
        let bytes = data_record(&ev, b"Hello World");
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::PayloadMissing {
                what: "DATA",
                len: 12,
                present: 11
            })
        );
        let ev = data_ev(CHUNK_MAX as u32 + 1);
        assert_eq!(
            decode(&bytes_of(&ev)),
            Err(DecodeError::ChunkTooLong {
                what: "DATA",
                len: CHUNK_MAX as u32 + 1,
                max: CHUNK_MAX
            })
        );
        let ev = data_ev(u32::MAX);
        assert!(decode(&bytes_of(&ev)).is_err());
        // Header-sized DATA record: too short for DataEvent.
        let hdr = bytes_of(&header(kind::DATA, sys::READ, 1, 1, 3));
        assert_eq!(
            decode(&hdr),
            Err(DecodeError::Short {
                what: "DataEvent",
                got: 120,
                need: 168
            })
        );
        // Empty DATA record (a failed call).
        let ev = data_ev(0);
        let b = bytes_of(&ev);
        assert_eq!(decode(&b).unwrap(), Record::Data { ev, payload: &[] });
    }

    pub(crate) fn tls_ev(func: u16, len: u32) -> TlsEvent {
        let mut hdr = header(kind::TLS, func, 10, 11, 5);
        hdr.flags = flags::FIRST | flags::LAST | flags::SOCK_VALID;
        hdr.ret = 18;
        hdr.sock = tcp4(0x1234, [127, 0, 0, 1], 40112, [127, 0, 0, 1], 4433);
        TlsEvent {
            hdr,
            total: 18,
            offset: 0,
            len,
            _pad: 0,
            conn: 0x55d0_c0a1_b2c0,
        }
    }

    pub(crate) fn tls_record(ev: &TlsEvent, payload: &[u8]) -> Vec<u8> {
        let mut b = bytes_of(ev);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn tls_record_with_payload() {
        let ev = tls_ev(agent_common::tls_fn::SSL_WRITE, 18);
        let bytes = tls_record(&ev, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(bytes.len(), 152 + 18);
        // The layout the kernel writes: kind 4 at 8, the tls_fn id at 10, the connection
        // object at 144, the plaintext from 152.
        assert_eq!(&bytes[8..10], &4u16.to_ne_bytes());
        assert_eq!(&bytes[10..12], &64u16.to_ne_bytes());
        assert_eq!(&bytes[144..152], &0x55d0_c0a1_b2c0u64.to_ne_bytes());
        assert_eq!(&bytes[152..], b"GET / HTTP/1.1\r\n\r\n");
        let rec = decode(&bytes).unwrap();
        assert_eq!(
            rec,
            Record::Tls {
                ev,
                payload: b"GET / HTTP/1.1\r\n\r\n"
            }
        );
        assert_eq!(rec.header().fd, 5);
        assert_eq!(rec.header().syscall, agent_common::tls_fn::SSL_WRITE);
        // Ring buffer padding after the plaintext is not plaintext.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 6]);
        let Record::Tls { payload, .. } = decode(&padded).unwrap() else {
            panic!()
        };
        assert_eq!(payload, b"GET / HTTP/1.1\r\n\r\n");
        // A failed call: no plaintext, fd unknown.
        let mut ev = tls_ev(agent_common::tls_fn::SSL_READ_EX, 0);
        ev.hdr.ret = -1;
        ev.hdr.fd = -1;
        ev.hdr.flags = flags::FIRST | flags::LAST;
        ev.total = 0;
        let b = bytes_of(&ev);
        assert_eq!(decode(&b).unwrap(), Record::Tls { ev, payload: &[] });
    }

    #[test]
    fn tls_record_len_checks() {
        let ev = tls_ev(agent_common::tls_fn::GNUTLS_RECORD_RECV, 18);
        let bytes = tls_record(&ev, b"HTTP/1.0 200 ok\r\n");
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::PayloadMissing {
                what: "TLS",
                len: 18,
                present: 17
            })
        );
        let ev = tls_ev(agent_common::tls_fn::SSL_READ, CHUNK_MAX as u32 + 1);
        let mut b = bytes_of(&ev);
        b.resize(b.len() + CHUNK_MAX + 1, b'x');
        assert_eq!(
            decode(&b),
            Err(DecodeError::ChunkTooLong {
                what: "TLS",
                len: CHUNK_MAX as u32 + 1,
                max: CHUNK_MAX
            })
        );
        // A DATA-sized struct is not enough to be a TLS one, nor the header alone.
        let hdr = bytes_of(&header(kind::TLS, agent_common::tls_fn::SSL_READ, 1, 1, 3));
        assert_eq!(
            decode(&hdr),
            Err(DecodeError::Short {
                what: "TlsEvent",
                got: 120,
                need: 152
            })
        );
    }

    #[test]
    fn mmap_exec_record() {
        let mut hdr = header(kind::PROC, sys::MMAP_EXEC, 7, 7, 3);
        hdr.ret = 0x7f00_1234_5000;
        hdr.sock.ino = 1_234_567;
        let key = agent_common::FileKey::new(254, 1, 1_234_567);
        let ev = ProcEvent {
            hdr,
            child_pid: key.dev as u32,
            exit_code: 0,
        };
        assert_eq!(decode(&bytes_of(&ev)).unwrap(), Record::Proc(ev));
        assert_eq!(key.dev, 254 << 20 | 1);
        assert_eq!(sys::name(sys::MMAP_EXEC), "mmap");
    }

    #[test]
    fn bad_records() {
        assert_eq!(
            decode(&[]),
            Err(DecodeError::Short {
                what: "EventHeader",
                got: 0,
                need: 120
            })
        );
        let hdr = header(9, sys::READ, 1, 1, 3);
        let mut b = bytes_of(&hdr);
        b.resize(400, 0);
        assert_eq!(decode(&b), Err(DecodeError::UnknownKind(9)));
        let ev = ProcEvent {
            hdr: header(kind::PROC, sys::CONNECT, 1, 1, 3),
            child_pid: 0,
            exit_code: 0,
        };
        assert_eq!(
            decode(&bytes_of(&ev)),
            Err(DecodeError::BadProcSyscall(sys::CONNECT))
        );
        let short = bytes_of(&header(kind::PROC, sys::EXIT, 1, 1, 3));
        assert!(matches!(
            decode(&short),
            Err(DecodeError::Short {
                what: "ProcEvent",
                ..
            })
        ));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            DecodeError::PayloadMissing {
                what: "DATA",
                len: 12,
                present: 11
            }
            .to_string(),
            "DATA record says 12 payload bytes follow but only 11 do"
        );
        assert_eq!(
            DecodeError::Short {
                what: "SockEvent",
                got: 130,
                need: 288
            }
            .to_string(),
            "record of 130 bytes is shorter than its SockEvent (288 bytes)"
        );
    }

    #[test]
    fn comm_strings() {
        assert_eq!(comm_string(&comm("curl")), "curl");
        assert_eq!(comm_string(&[b'x'; 16]), "xxxxxxxxxxxxxxxx");
        let mut c = comm("a b");
        c[3] = 0x07;
        assert_eq!(comm_string(&c), "a b\\x07");
    }

    #[test]
    fn transports() {
        assert_eq!(transport(AF_INET, SOCK_STREAM, 6), Transport::Tcp);
        assert_eq!(transport(AF_INET6, SOCK_STREAM, 0), Transport::Tcp);
        assert_eq!(transport(AF_INET, SOCK_DGRAM, 17), Transport::Udp);
        // SOCK_NONBLOCK|SOCK_CLOEXEC in the type (as socket()'s argument has them).
        assert_eq!(transport(AF_INET6, SOCK_DGRAM | 0x800, 0), Transport::Udp);
        assert_eq!(transport(AF_UNIX, SOCK_STREAM, 0), Transport::UnixStream);
        assert_eq!(transport(AF_UNIX, SOCK_DGRAM, 0), Transport::UnixDgram);
        assert_eq!(
            transport(AF_UNIX, SOCK_SEQPACKET, 0),
            Transport::UnixSeqpacket
        );
        assert_eq!(
            transport(AF_INET, 3, 1),
            Transport::Other {
                family: 2,
                sock_type: 3,
                protocol: 1
            }
        );
        assert_eq!(
            transport(16, SOCK_DGRAM, 0),
            Transport::Other {
                family: 16,
                sock_type: 2,
                protocol: 0
            }
        );
    }

    fn ep(s: &str) -> Option<Endpoint> {
        Some(Endpoint::Inet(s.parse().unwrap()))
    }

    #[test]
    fn socket_meta_inet4() {
        let mut hdr = header(kind::DATA, sys::SENDTO, 1, 1, 3);
        hdr.sock = tcp4(0x1234, [127, 0, 0, 1], 40112, [192, 168, 10, 1], 5555);
        assert_eq!(socket_meta(&hdr), None); // SOCK_VALID not set
        hdr.flags = flags::SOCK_VALID;
        assert_eq!(
            socket_meta(&hdr),
            Some(SocketMeta {
                sk: 0x1234,
                ino: 777,
                transport: Transport::Tcp,
                local: ep("127.0.0.1:40112"),
                remote: ep("192.168.10.1:5555"),
            })
        );
    }

    #[test]
    fn socket_meta_unconnected() {
        let mut hdr = header(kind::DATA, sys::SENDTO, 1, 1, 3);
        hdr.flags = flags::SOCK_VALID;
        hdr.sock = tcp4(1, [0; 4], 5353, [0; 4], 0);
        hdr.sock.sock_type = SOCK_DGRAM;
        hdr.sock.protocol = IPPROTO_UDP;
        let m = socket_meta(&hdr).unwrap();
        assert_eq!(m.transport, Transport::Udp);
        assert_eq!(m.local, ep("0.0.0.0:5353"));
        assert_eq!(m.remote, None);
        // Fresh socket: neither end known. Bytes past the IPv4 address are ignored.
        hdr.sock = tcp4(1, [0; 4], 0, [0; 4], 0);
        hdr.sock.laddr[8] = 0xee;
        let m = socket_meta(&hdr).unwrap();
        assert_eq!((m.local, m.remote), (None, None));
    }

    #[test]
    fn socket_meta_inet6() {
        let mut hdr = header(kind::DATA, sys::READ, 1, 1, 3);
        hdr.flags = flags::SOCK_VALID;
        let mut s = tcp4(1, [0; 4], 8080, [0; 4], 0);
        s.family = AF_INET6;
        s.laddr = [0; 16];
        s.laddr[15] = 1;
        s.raddr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3];
        s.rport = 443;
        hdr.sock = s;
        let m = socket_meta(&hdr).unwrap();
        assert_eq!(m.local, ep("[::1]:8080"));
        assert_eq!(m.remote, ep("10.1.2.3:443"));
        // "::" with a port is a wildcard bind, kept; "::" port 0 is unknown.
        hdr.sock.laddr = [0; 16];
        hdr.sock.raddr = [0; 16];
        hdr.sock.rport = 0;
        let m = socket_meta(&hdr).unwrap();
        assert_eq!((m.local, m.remote), (ep("[::]:8080"), None));
    }

    #[test]
    fn socket_meta_unix() {
        let mut hdr = header(kind::DATA, sys::READ, 1, 1, 3);
        hdr.flags = flags::SOCK_VALID;
        hdr.sock.family = AF_UNIX;
        hdr.sock.sock_type = SOCK_STREAM;
        hdr.sock.lport = 1; // meaningless for unix
        let m = socket_meta(&hdr).unwrap();
        assert_eq!(m.transport, Transport::UnixStream);
        assert_eq!((m.local, m.remote), (None, None));
    }

    #[test]
    fn msg_addrs() {
        let mut a = MsgAddr::default();
        assert_eq!(msg_addr(&a), None);
        a.family = AF_INET;
        a.port = 53;
        a.addr[..4].copy_from_slice(&[127, 0, 0, 53]);
        assert_eq!(msg_addr(&a), "127.0.0.53:53".parse().ok());
        a.family = AF_INET6;
        a.addr = [0; 16];
        a.addr[0] = 0xfe;
        a.addr[1] = 0x80;
        a.addr[15] = 1;
        assert_eq!(msg_addr(&a), "[fe80::1]:53".parse().ok());
        a.family = AF_UNIX;
        assert_eq!(msg_addr(&a), None);
    }
}
