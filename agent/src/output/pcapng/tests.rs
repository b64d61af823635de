use std::net::SocketAddr;

use agent_common::sys;
use bytes::Bytes;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use super::synth::{CLIENT_ISN, SEGMENT_MAX, SERVER_ISN, unix_ends};
use super::*;
use crate::model::{Call, Detail, Endpoint, SocketMeta, Task, Transport};

const LOCAL: &str = "127.0.0.1:40000";
const REMOTE: &str = "127.0.0.1:8080";

fn meta(transport: Transport) -> SocketMeta {
    SocketMeta {
        sk: 0xabc,
        ino: 0x12345,
        transport,
        local: Some(Endpoint::Inet(LOCAL.parse().unwrap())),
        remote: Some(Endpoint::Inet(REMOTE.parse().unwrap())),
    }
}

fn ev(syscall: u16, ret: i64, sock: Option<SocketMeta>, detail: Detail) -> Event {
    Event {
        ts_ns: 1_700_000_000_123_456_789,
        task: Task {
            pid: 42,
            tid: 43,
            comm: "client".into(),
        },
        call: Call::Syscall(syscall),
        fd: 3,
        ret,
        sock,
        detail,
        tls_ciphertext: false,
        tls_eof: false,
        tls_plaintext: false,
        unfinished: false,
        stack: None,
    }
}

fn connect(t: Transport) -> Event {
    ev(
        sys::CONNECT,
        0,
        Some(meta(t)),
        Detail::Sock {
            args: [3, 0, 16, 0],
            addr: Some(Endpoint::Inet(REMOTE.parse().unwrap())),
        },
    )
}

fn data(t: Transport, dir: Direction, payload: &[u8], total: u64) -> Event {
    let syscall = match dir {
        Direction::Send => sys::SENDTO,
        Direction::Recv => sys::RECVFROM,
    };
    ev(
        syscall,
        total as i64,
        Some(meta(t)),
        Detail::Data {
            dir,
            total,
            payload: Bytes::copy_from_slice(payload),
            truncated: (payload.len() as u64) < total,
            addr: None,
            msg_index: 0,
        },
    )
}

fn close(ret: i64) -> Event {
    ev(
        sys::CLOSE,
        ret,
        Some(meta(Transport::Tcp)),
        Detail::Sock {
            args: [3, 0, 0, 0],
            addr: None,
        },
    )
}

/// A parsed TCP packet: (src, dst, seq, ack or None, syn, fin, rst, payload).
#[derive(Debug, PartialEq)]
struct Tcp {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    rst: bool,
    payload: Vec<u8>,
}

fn addrs(p: &SlicedPacket) -> (std::net::IpAddr, std::net::IpAddr) {
    match p.net.as_ref().unwrap() {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => panic!("not IP"),
    }
}

/// Parses a packet and checks the IP and TCP checksums.
fn parse_tcp(data: &[u8]) -> Tcp {
    let p = SlicedPacket::from_ip(data).unwrap();
    let (s, d) = addrs(&p);
    if let Some(NetSlice::Ipv4(ip)) = &p.net {
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    }
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        panic!("not TCP")
    };
    let sum = match (s, d) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            tcp.calc_checksum_ipv4(s.octets(), d.octets()).unwrap()
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            tcp.calc_checksum_ipv6(s.octets(), d.octets()).unwrap()
        }
        _ => panic!("mixed"),
    };
    assert_eq!(tcp.checksum(), sum, "TCP checksum");
    Tcp {
        src: SocketAddr::new(s, tcp.source_port()),
        dst: SocketAddr::new(d, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        syn: tcp.syn(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: tcp.payload().to_vec(),
    }
}

/// A TCP packet cut by the snap length (its IP header counts bytes it does not hold): the
/// segment as far as kept, and the IP header's packet length (which must be `orig_len`).
fn parse_cut_tcp(p: &Packet) -> (Tcp, usize) {
    let ip = etherparse::Ipv4HeaderSlice::from_slice(&p.data).unwrap();
    let h = ip.to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    let ip_len = usize::from(ip.total_len());
    assert_eq!(
        ip_len, p.orig_len as usize,
        "IP length = EPB original length"
    );
    assert!(p.data.len() < ip_len, "the packet is cut");
    let tcp = etherparse::TcpHeaderSlice::from_slice(&p.data[ip.slice().len()..]).unwrap();
    assert_eq!(tcp.checksum(), 0, "no checksum over bytes not kept");
    let off = ip.slice().len() + tcp.slice().len();
    (
        Tcp {
            src: SocketAddr::new(ip.source_addr().into(), tcp.source_port()),
            dst: SocketAddr::new(ip.destination_addr().into(), tcp.destination_port()),
            seq: tcp.sequence_number(),
            ack: tcp.ack().then(|| tcp.acknowledgment_number()),
            syn: tcp.syn(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            payload: p.data[off..].to_vec(),
        },
        ip_len,
    )
}

fn l() -> SocketAddr {
    LOCAL.parse().unwrap()
}
fn r() -> SocketAddr {
    REMOTE.parse().unwrap()
}

#[test]
fn tcp_stream_seq_ack() {
    let mut s = Synth::new();
    let hs = s.packets(&connect(Transport::Tcp));
    assert_eq!(hs.len(), 3, "handshake");
    let p: Vec<Tcp> = hs.iter().map(|p| parse_tcp(&p.data)).collect();
    assert_eq!(
        (p[0].src, p[0].dst, p[0].seq, p[0].ack),
        (l(), r(), CLIENT_ISN, None)
    );
    assert!(p[0].syn && !p[0].fin);
    assert_eq!(
        (p[1].src, p[1].dst, p[1].seq, p[1].ack),
        (r(), l(), SERVER_ISN, Some(CLIENT_ISN + 1))
    );
    assert!(p[1].syn);
    assert_eq!(
        (p[2].seq, p[2].ack, p[2].syn),
        (CLIENT_ISN + 1, Some(SERVER_ISN + 1), false)
    );
    assert_eq!(
        hs.iter().map(|p| p.dir).collect::<Vec<_>>(),
        [Direction::Send, Direction::Recv, Direction::Send]
    );

    let out = s.packets(&data(Transport::Tcp, Direction::Send, b"hello", 5));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dir, Direction::Send);
    assert_eq!(
        out[0].comment,
        "pid=42 tid=43 comm=client syscall=sendto fd=3"
    );
    let t = parse_tcp(&out[0].data);
    assert_eq!((t.src, t.dst), (l(), r()));
    assert_eq!((t.seq, t.ack), (CLIENT_ISN + 1, Some(SERVER_ISN + 1)));
    assert_eq!(t.payload, b"hello");

    let out = s.packets(&data(Transport::Tcp, Direction::Recv, b"world!", 6));
    assert_eq!(out[0].dir, Direction::Recv);
    let t = parse_tcp(&out[0].data);
    assert_eq!((t.src, t.dst), (r(), l()));
    assert_eq!((t.seq, t.ack), (SERVER_ISN + 1, Some(CLIENT_ISN + 6)));
    assert_eq!(t.payload, b"world!");

    // Truncated: only the captured bytes, but the headers and the sequence count the total.
    let out = s.packets(&data(Transport::Tcp, Direction::Send, b"abc", 10));
    assert_eq!(out.len(), 1);
    assert!(
        out[0].comment.contains("truncated: captured 3 of 10 bytes"),
        "{}",
        out[0].comment
    );
    let (t, ip_len) = parse_cut_tcp(&out[0]);
    assert_eq!((t.seq, t.ack), (CLIENT_ISN + 6, Some(SERVER_ISN + 7)));
    assert_eq!(t.payload, b"abc");
    assert_eq!((ip_len, out[0].orig_len), (50, 50));
    assert_eq!(out[0].data.len(), 43);
    let out = s.packets(&data(Transport::Tcp, Direction::Send, b"x", 1));
    assert_eq!(parse_tcp(&out[0].data).seq, CLIENT_ISN + 16);

    // Peer EOF, then close.
    let out = s.packets(&data(Transport::Tcp, Direction::Recv, b"", 0));
    let t = parse_tcp(&out[0].data);
    assert!(t.fin && !t.rst);
    assert_eq!(
        (t.src, t.seq, t.ack),
        (r(), SERVER_ISN + 7, Some(CLIENT_ISN + 17))
    );
    let out = s.packets(&close(0));
    assert_eq!(out.len(), 1);
    let t = parse_tcp(&out[0].data);
    assert!(t.fin && !t.rst);
    assert_eq!(
        (t.src, t.seq, t.ack),
        (l(), CLIENT_ISN + 17, Some(SERVER_ISN + 8))
    );
    // The stream is gone.
    assert!(s.packets(&close(0)).is_empty());
}

#[test]
fn segments_split() {
    let mut s = Synth::new();
    s.packets(&connect(Transport::Tcp));
    let big: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let out = s.packets(&data(
        Transport::Tcp,
        Direction::Send,
        &big,
        big.len() as u64,
    ));
    assert_eq!(out.len(), 3);
    let segs: Vec<Tcp> = out.iter().map(|p| parse_tcp(&p.data)).collect();
    assert_eq!(segs[0].payload.len(), SEGMENT_MAX);
    assert_eq!(segs[1].payload.len(), SEGMENT_MAX);
    assert_eq!(segs[2].payload.len(), 150_000 - 2 * SEGMENT_MAX);
    for (i, t) in segs.iter().enumerate() {
        assert_eq!(t.seq, CLIENT_ISN + 1 + (i * SEGMENT_MAX) as u32);
        assert_eq!(t.ack, Some(SERVER_ISN + 1));
    }
    let joined: Vec<u8> = segs.iter().flat_map(|t| t.payload.clone()).collect();
    assert_eq!(joined, big);
    let out = s.packets(&data(Transport::Tcp, Direction::Send, b"z", 1));
    assert_eq!(parse_tcp(&out[0].data).seq, CLIENT_ISN + 1 + 150_000);
}

/// A call cut by the snap length: segments of the real length (the first holding the bytes
/// kept, the others only headers), contiguous sequence numbers, and the next call's sequence
/// right after the real length.
#[test]
fn cut_call_keeps_real_lengths() {
    let mut s = Synth::new();
    s.packets(&connect(Transport::Tcp));
    let kept: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let total = 2 * SEGMENT_MAX + 1000;
    let out = s.packets(&data(Transport::Tcp, Direction::Recv, &kept, total as u64));
    assert_eq!(out.len(), 3);
    let segs: Vec<(Tcp, usize)> = out.iter().map(parse_cut_tcp).collect();
    assert_eq!(segs[0].0.payload, kept);
    assert!(segs[1].0.payload.is_empty() && segs[2].0.payload.is_empty());
    for (i, (t, ip_len)) in segs.iter().enumerate() {
        assert_eq!(t.seq, SERVER_ISN + 1 + (i * SEGMENT_MAX) as u32);
        assert_eq!((t.src, t.dst, t.ack), (r(), l(), Some(CLIENT_ISN + 1)));
        let len = if i < 2 { SEGMENT_MAX } else { 1000 };
        assert_eq!(*ip_len, 40 + len);
    }
    let out = s.packets(&data(Transport::Tcp, Direction::Recv, b"z", 1));
    let t = parse_tcp(&out[0].data);
    assert_eq!(t.seq, SERVER_ISN + 1 + total as u32);
    assert_eq!(out[0].orig_len as usize, out[0].data.len());

    // IPv6 and UDP: the lengths count the real payload too.
    let mut m = meta(Transport::Udp);
    m.local = Some(Endpoint::Inet("[::1]:5000".parse().unwrap()));
    m.remote = Some(Endpoint::Inet("[::1]:53".parse().unwrap()));
    let mut e = data(Transport::Udp, Direction::Send, b"abcd", 1200);
    e.sock = Some(m);
    let out = s.packets(&e);
    assert_eq!(out.len(), 1);
    let p = &out[0];
    assert_eq!(p.data.len(), 40 + 8 + 4);
    assert_eq!(p.orig_len, 40 + 8 + 1200);
    let ip = etherparse::Ipv6HeaderSlice::from_slice(&p.data).unwrap();
    assert_eq!(ip.payload_length(), 8 + 1200);
    let udp = etherparse::UdpHeaderSlice::from_slice(&p.data[40..]).unwrap();
    assert_eq!((udp.length(), udp.checksum()), (8 + 1200, 0));
    assert_eq!(&p.data[48..], b"abcd");
}

#[test]
fn accepted_and_rst() {
    let mut s = Synth::new();
    let accept = ev(
        sys::ACCEPT4,
        3,
        None,
        Detail::Sock {
            args: [4, 0, 0, 0],
            addr: Some(Endpoint::Inet(REMOTE.parse().unwrap())),
        },
    );
    assert!(s.packets(&accept).is_empty());
    // First data on the accepted fd: the remote side opened the connection.
    let out = s.packets(&data(Transport::Tcp, Direction::Recv, b"GET", 3));
    assert_eq!(out.len(), 4);
    let syn = parse_tcp(&out[0].data);
    assert_eq!((syn.src, syn.dst, syn.seq), (r(), l(), CLIENT_ISN));
    assert_eq!(out[0].dir, Direction::Recv);
    let d = parse_tcp(&out[3].data);
    assert_eq!(
        (d.src, d.seq, d.ack),
        (r(), CLIENT_ISN + 1, Some(SERVER_ISN + 1))
    );
    let out = s.packets(&close(-5));
    let t = parse_tcp(&out[0].data);
    assert!(t.rst && !t.fin);
    assert_eq!((t.src, t.seq), (l(), SERVER_ISN + 1));
}

/// The kernel freed a socket and handed its `sk` to one another thread opened meanwhile,
/// whose connect is recorded before the first one's close (a close record comes at the
/// syscall's exit): two sockets (told apart by their inode), two streams, each with its own
/// handshake, data and FIN.
#[test]
fn reused_sk_is_another_stream() {
    let mut s = Synth::new();
    let second_local: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    let second = |mut e: Event| {
        let m = e.sock.as_mut().unwrap();
        m.ino += 1;
        m.local = Some(Endpoint::Inet(second_local));
        e.fd = 4;
        e
    };
    let mut all = s.packets(&connect(Transport::Tcp));
    all.extend(s.packets(&data(Transport::Tcp, Direction::Send, b"one", 3)));
    all.extend(s.packets(&second(connect(Transport::Tcp))));
    all.extend(s.packets(&second(data(Transport::Tcp, Direction::Send, b"two", 3))));
    all.extend(s.packets(&close(0)));
    all.extend(s.packets(&second(data(Transport::Tcp, Direction::Send, b"three", 5))));
    all.extend(s.packets(&second(close(0))));
    let got: Vec<(SocketAddr, u32, bool, bool, Vec<u8>)> = all
        .iter()
        .map(|p| parse_tcp(&p.data))
        .filter(|t| t.src != r())
        .map(|t| (t.src, t.seq, t.syn, t.fin, t.payload))
        .collect();
    let c = CLIENT_ISN;
    assert_eq!(
        got,
        [
            (l(), c, true, false, vec![]),
            (l(), c + 1, false, false, vec![]),
            (l(), c + 1, false, false, b"one".to_vec()),
            (second_local, c, true, false, vec![]),
            (second_local, c + 1, false, false, vec![]),
            (second_local, c + 1, false, false, b"two".to_vec()),
            (l(), c + 4, false, true, vec![]),
            (second_local, c + 4, false, false, b"three".to_vec()),
            (second_local, c + 9, false, true, vec![]),
        ]
    );
    // Both closed: nothing left to close.
    assert!(s.packets(&close(0)).is_empty());
    assert!(s.packets(&second(close(0))).is_empty());
}

#[test]
fn udp_and_unix() {
    let mut s = Synth::new();
    let mut e = data(Transport::Udp, Direction::Send, b"query", 5);
    if let Detail::Data { addr, .. } = &mut e.detail {
        *addr = Some("127.0.0.53:53".parse().unwrap());
    }
    let out = s.packets(&e);
    assert_eq!(out.len(), 1);
    let p = SlicedPacket::from_ip(&out[0].data).unwrap();
    let Some(TransportSlice::Udp(u)) = &p.transport else {
        panic!("not UDP")
    };
    assert_eq!((u.source_port(), u.destination_port()), (40000, 53));
    assert_eq!(u.payload(), b"query");
    let (src, dst) = addrs(&p);
    let (std::net::IpAddr::V4(s4), std::net::IpAddr::V4(d4)) = (src, dst) else {
        panic!()
    };
    assert_eq!(
        u.to_header()
            .calc_checksum_ipv4(
                &p.net
                    .as_ref()
                    .map(|n| match n {
                        NetSlice::Ipv4(ip) => ip.header().to_header(),
                        _ => unreachable!(),
                    })
                    .unwrap(),
                u.payload()
            )
            .unwrap(),
        u.checksum()
    );
    assert_eq!(d4.octets(), [127, 0, 0, 53]);
    assert_eq!(s4.octets(), [127, 0, 0, 1]);

    // Unix stream: loopback addresses from the inode, path in the comment.
    let mut m = meta(Transport::UnixStream);
    m.local = Some(Endpoint::Unix(String::new()));
    m.remote = Some(Endpoint::Unix("/run/x.sock".into()));
    let mut e = data(Transport::UnixStream, Direction::Send, b"hi", 2);
    e.sock = Some(m);
    let out = s.packets(&e);
    assert_eq!(out.len(), 4);
    let (ul, ur) = unix_ends(0x12345);
    assert_eq!(ul, "127.1.35.69:1025".parse::<SocketAddr>().unwrap());
    let t = parse_tcp(&out[3].data);
    assert_eq!((t.src, t.dst, t.payload.as_slice()), (ul, ur, &b"hi"[..]));
    assert!(
        out[3].comment.contains("remote=/run/x.sock"),
        "{}",
        out[3].comment
    );
}

#[test]
fn ipv6_and_placeholders() {
    let mut s = Synth::new();
    let mut m = meta(Transport::Tcp);
    m.local = Some(Endpoint::Inet("[::1]:5000".parse().unwrap()));
    m.remote = None;
    let mut e = data(Transport::Tcp, Direction::Send, b"x", 1);
    e.sock = Some(m);
    let out = s.packets(&e);
    assert_eq!(out.len(), 4);
    let t = parse_tcp(&out[3].data);
    assert_eq!(t.dst, "[::]:0".parse::<SocketAddr>().unwrap());
    assert!(
        out[3].comment.contains("remote endpoint unknown"),
        "{}",
        out[3].comment
    );
}

#[test]
fn file_layout() {
    let mut w = PcapngWriter::new(Vec::new()).unwrap();
    w.write_event(&connect(Transport::Tcp)).unwrap();
    w.write_event(&data(Transport::Tcp, Direction::Send, b"hello", 5))
        .unwrap();
    w.flush().unwrap();
    let bytes = w.into_inner();
    let mut r = pcap_file::pcapng::PcapNgReader::new(&bytes[..]).unwrap();
    let mut blocks = Vec::new();
    while let Some(b) = r.next_block() {
        blocks.push(b.unwrap().into_owned());
    }
    use pcap_file::pcapng::Block;
    let Block::InterfaceDescription(idb) = &blocks[0] else {
        panic!("{:?}", blocks[0])
    };
    assert_eq!(idb.linktype, DataLink::RAW);
    assert!(
        idb.options
            .contains(&InterfaceDescriptionOption::IfTsResol(9))
    );
    assert_eq!(blocks.len(), 5);
    let Block::EnhancedPacket(epb) = &blocks[4] else {
        panic!()
    };
    assert_eq!(epb.timestamp.as_nanos(), 1_700_000_000_123_456_789);
    assert_eq!(epb.original_len as usize, epb.data.len());
    assert!(
        epb.options
            .contains(&EnhancedPacketOption::Flags(FLAG_OUTBOUND))
    );
    assert!(epb.options.contains(&EnhancedPacketOption::Comment(
        "pid=42 tid=43 comm=client syscall=sendto fd=3".into()
    )));
}

#[test]
fn connect_in_progress_then_shutdown() {
    let mut s = Synth::new();
    let mut c = connect(Transport::Tcp);
    c.ret = -115;
    c.ts_ns = 5;
    // The local port may not be known yet: the stream starts at the first data, with the
    // handshake at the connect's time, SYN from the local side.
    assert!(s.packets(&c).is_empty());
    let out = s.packets(&data(Transport::Tcp, Direction::Send, b"a", 1));
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].ts_ns, 5);
    assert_eq!(parse_tcp(&out[0].data).src, l());
    let shut = ev(
        sys::SHUTDOWN,
        0,
        Some(meta(Transport::Tcp)),
        Detail::Sock {
            args: [1, 0, 0, 0],
            addr: None,
        },
    );
    let out = s.packets(&shut);
    let t = parse_tcp(&out[0].data);
    assert!(t.fin);
    assert_eq!(t.seq, CLIENT_ISN + 2);
    // close after shutdown sends nothing more.
    assert!(s.packets(&close(0)).is_empty());
}

/// A TLS library's plaintext record on the test socket.
fn tls_data(dir: Direction, payload: &[u8]) -> Event {
    let mut e = data(Transport::Tcp, dir, payload, payload.len() as u64);
    e.call = Call::Tls {
        func: match dir {
            Direction::Send => agent_common::tls_fn::SSL_WRITE,
            Direction::Recv => agent_common::tls_fn::SSL_READ,
        },
        conn: 0x55d0,
    };
    e
}

/// A ciphertext record of the test socket (a connection known to carry TLS).
fn cipher(dir: Direction, payload: &[u8]) -> Event {
    let mut e = data(Transport::Tcp, dir, payload, payload.len() as u64);
    e.tls_ciphertext = true;
    e
}

/// The TCP payloads of `packets`, in order, with their comments.
fn payloads(packets: &[Packet]) -> Vec<(Vec<u8>, String)> {
    packets
        .iter()
        .map(|p| (parse_tcp(&p.data).payload, p.comment.clone()))
        .filter(|(b, _)| !b.is_empty())
        .collect()
}

#[test]
fn tls_connection_written_as_its_plaintext() {
    let mut s = Synth::new();
    assert_eq!(s.packets(&connect(Transport::Tcp)).len(), 3);
    // The handshake's ciphertext is held back...
    assert!(
        s.packets(&cipher(Direction::Send, b"\x16\x03\x01hello"))
            .is_empty()
    );
    assert!(
        s.packets(&cipher(Direction::Recv, b"\x16\x03\x03server"))
            .is_empty()
    );
    // ...and dropped when the plaintext comes, which takes the stream's first sequence
    // numbers.
    let out = s.packets(&tls_data(Direction::Send, b"GET / HTTP/1.1\r\n\r\n"));
    assert_eq!(out.len(), 1);
    let t = parse_tcp(&out[0].data);
    assert_eq!((t.seq, t.ack), (CLIENT_ISN + 1, Some(SERVER_ISN + 1)));
    assert_eq!(t.payload, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(
        out[0].comment,
        "pid=42 tid=43 comm=client syscall=SSL_write fd=3 decrypted by openssl (SSL_write)"
    );
    // Later ciphertext is left out, but for the peer's EOF.
    assert!(
        s.packets(&cipher(Direction::Send, b"\x17\x03\x03...."))
            .is_empty()
    );
    let out = s.packets(&tls_data(Direction::Recv, b"HTTP/1.1 200 OK\r\n\r\n"));
    let t = parse_tcp(&out[0].data);
    assert_eq!((t.seq, t.ack), (SERVER_ISN + 1, Some(CLIENT_ISN + 19)));
    assert!(out[0].comment.ends_with("decrypted by openssl (SSL_read)"));
    let out = s.packets(&cipher(Direction::Recv, b""));
    assert!(parse_tcp(&out[0].data).fin);
    let out = s.packets(&close(0));
    assert!(parse_tcp(&out[0].data).fin);
}

#[test]
fn tls_read_of_no_data_is_not_the_end_of_the_stream() {
    // SSL_read_ex returns 0 when a non-blocking socket had nothing (its read: EAGAIN) and
    // at the peer's close_notify (its read: the alert's bytes). Only the latter is a FIN;
    // without the socket's reads (--tls-only), neither.
    let read_ex = |payload: &[u8]| {
        let mut e = tls_data(Direction::Recv, payload);
        e.call = Call::Tls {
            func: agent_common::tls_fn::SSL_READ_EX,
            conn: 0x55d0,
        };
        e
    };
    let mut s = Synth::new();
    s.packets(&connect(Transport::Tcp));
    s.packets(&tls_data(Direction::Send, b"GET /"));
    assert!(s.packets(&read_ex(b"")).is_empty());
    let mut again = cipher(Direction::Recv, b"");
    again.ret = -11;
    assert!(s.packets(&again).is_empty());
    assert!(s.packets(&read_ex(b"")).is_empty());
    let out = s.packets(&read_ex(b"HTTP/1.1 200 OK\r\n\r\n"));
    let t = parse_tcp(&out[0].data);
    assert_eq!((t.seq, t.fin), (SERVER_ISN + 1, false));
    assert!(
        s.packets(&cipher(Direction::Recv, b"\x17\x03\x03\x00\x13"))
            .is_empty()
    );
    let out = s.packets(&read_ex(b""));
    let t = parse_tcp(&out[0].data);
    assert_eq!((t.seq, t.fin), (SERVER_ISN + 20, true));
    // Without the socket's reads (--tls-only): the end only when the library said so
    // (`tls_eof`: SSL_read_ex hooked at its inner function, which returned its 0 for the
    // close_notify, not the -1 of a read that must be retried).
    let mut s = Synth::new();
    s.packets(&connect(Transport::Tcp));
    s.packets(&read_ex(b"HTTP/1.1 200 OK\r\n\r\n"));
    assert!(s.packets(&read_ex(b"")).is_empty());
    let mut end = read_ex(b"");
    end.tls_eof = true;
    let t = parse_tcp(&s.packets(&end)[0].data);
    assert_eq!((t.seq, t.fin), (SERVER_ISN + 20, true));
    // gnutls_record_recv returning 0 is the end, socket reads seen or not.
    let mut s = Synth::new();
    s.packets(&connect(Transport::Tcp));
    let mut eof = tls_data(Direction::Recv, b"");
    eof.call = Call::Tls {
        func: agent_common::tls_fn::GNUTLS_RECORD_RECV,
        conn: 0x55d0,
    };
    assert!(parse_tcp(&s.packets(&eof)[0].data).fin);
}

#[test]
fn tls_ciphertext_written_when_no_plaintext_comes() {
    // The connection closes first: what was held is written, in order, before the FIN.
    let mut s = Synth::new();
    s.packets(&connect(Transport::Tcp));
    assert!(
        s.packets(&cipher(Direction::Send, b"\x16\x03\x01hello"))
            .is_empty()
    );
    assert!(
        s.packets(&cipher(Direction::Recv, b"\x16\x03\x03server"))
            .is_empty()
    );
    let out = s.packets(&close(0));
    assert_eq!(out.len(), 3);
    assert_eq!(
        payloads(&out)
            .into_iter()
            .map(|(b, _)| b)
            .collect::<Vec<_>>(),
        [&b"\x16\x03\x01hello"[..], b"\x16\x03\x03server"]
    );
    assert!(parse_tcp(&out[2].data).fin);

    // Held too long (event time): written, and the stream stays ciphertext.
    let mut s = Synth::new();
    s.packets(&connect(Transport::Tcp));
    let first = cipher(Direction::Send, b"\x16\x03\x01hello");
    assert!(s.packets(&first).is_empty());
    let mut later = cipher(Direction::Recv, b"\x16\x03\x03server");
    later.ts_ns = first.ts_ns + synth::HOLD_MAX_NS + 1;
    let out = s.packets(&later);
    assert_eq!(payloads(&out).len(), 2);
    let mut plain = tls_data(Direction::Send, b"GET /");
    plain.ts_ns = later.ts_ns;
    assert!(s.packets(&plain).is_empty(), "plaintext left out");
    assert_eq!(
        payloads(&s.packets(&cipher(Direction::Send, b"\x17\x03\x03")))[0].0,
        b"\x17\x03\x03"
    );

    // Too many bytes held: written.
    let mut s = Synth::new();
    s.packets(&connect(Transport::Tcp));
    let big = vec![0x17; synth::HOLD_MAX_BYTES];
    assert!(s.packets(&cipher(Direction::Recv, &big)).is_empty());
    let out = s.packets(&cipher(Direction::Recv, b"x"));
    assert_eq!(
        payloads(&out).iter().map(|(b, _)| b.len()).sum::<usize>(),
        synth::HOLD_MAX_BYTES + 1
    );

    // Still held at the end: the writer's drop writes it.
    let mut buf = Vec::new();
    {
        let mut w = PcapngWriter::new(&mut buf).unwrap();
        w.write_event(&connect(Transport::Tcp)).unwrap();
        w.write_event(&cipher(Direction::Send, b"\x16\x03\x01hello"))
            .unwrap();
    }
    let mut r = pcap_file::pcapng::PcapNgReader::new(&buf[..]).unwrap();
    let mut n = 0;
    let mut last = Vec::new();
    while let Some(b) = r.next_block() {
        if let pcap_file::pcapng::Block::EnhancedPacket(p) = b.unwrap() {
            n += 1;
            last = p.data.to_vec();
        }
    }
    assert_eq!(n, 4);
    assert_eq!(parse_tcp(&last).payload, b"\x16\x03\x01hello");
}

#[test]
fn tls_records_without_a_socket_are_not_written() {
    let mut s = Synth::new();
    let mut e = tls_data(Direction::Send, b"GET /");
    e.sock = None;
    e.fd = -1;
    assert!(s.packets(&e).is_empty());
}

/// A Go `crypto/tls` plaintext record on the test socket.
fn go_data(dir: Direction, payload: &[u8]) -> Event {
    let mut e = tls_data(dir, payload);
    e.call = Call::Tls {
        func: match dir {
            Direction::Send => agent_common::tls_fn::GO_WRITE,
            Direction::Recv => agent_common::tls_fn::GO_READ,
        },
        conn: 0xc000,
    };
    e
}

/// The TCP segments of a pcapng file, in order.
fn pcapng_tcp(buf: &[u8]) -> Vec<Tcp> {
    let mut r = pcap_file::pcapng::PcapNgReader::new(buf).unwrap();
    let mut out = Vec::new();
    while let Some(b) = r.next_block() {
        if let pcap_file::pcapng::Block::EnhancedPacket(p) = b.unwrap() {
            out.push(parse_tcp(&p.data));
        }
    }
    out
}

#[test]
fn go_write_recorded_after_the_close_goes_before_the_fin() {
    // Go ran the goroutine of `(*Conn).Write` to its RET only after the response was read
    // and the connection closed: the request still goes in the one stream, before its FIN.
    const REQ: &[u8] = b"POST /go HTTP/1.1\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";
    let late = |e: Event, ms: u64| Event {
        ts_ns: e.ts_ns + ms * 1_000_000,
        ..e
    };
    let events = [
        connect(Transport::Tcp),
        cipher(Direction::Send, b"\x16\x03\x01hello"),
        cipher(Direction::Recv, b"\x16\x03\x03server"),
        cipher(Direction::Send, b"\x17\x03\x03request"),
        late(go_data(Direction::Recv, RESP), 1),
        late(cipher(Direction::Recv, b""), 2),
        late(close(0), 3),
        late(go_data(Direction::Send, REQ), 4),
    ];
    let mut buf = Vec::new();
    {
        let mut w = PcapngWriter::new(&mut buf).unwrap();
        for e in &events {
            w.write_event(e).unwrap();
        }
    }
    let got = pcapng_tcp(&buf);
    let (c, s) = (CLIENT_ISN + 1, SERVER_ISN + 1);
    let rlen = RESP.len() as u32;
    let qlen = REQ.len() as u32;
    let want = |src: SocketAddr, seq, ack, syn, fin, payload: &[u8]| Tcp {
        src,
        dst: if src == l() { r() } else { l() },
        seq,
        ack,
        syn,
        fin,
        rst: false,
        payload: payload.to_vec(),
    };
    assert_eq!(
        got,
        [
            want(l(), CLIENT_ISN, None, true, false, b""),
            want(r(), SERVER_ISN, Some(c), true, false, b""),
            want(l(), c, Some(s), false, false, b""),
            want(r(), s, Some(c), false, false, RESP),
            want(r(), s + rlen, Some(c), false, true, b""),
            want(l(), c, Some(s + rlen + 1), false, false, REQ),
            want(l(), c + qlen, Some(s + rlen + 1), false, true, b""),
        ]
    );

    // The close held back is written once an event comes [`CLOSE_HOLD_NS`] later, or a
    // record of the same socket that is not Go's plaintext (the socket reused).
    let mut s = Synth::new();
    for e in &events[..6] {
        s.packets(e);
    }
    assert!(s.packets(&events[6]).is_empty(), "close held back");
    let mut other = late(close(0), 3 + synth::CLOSE_HOLD_NS / 1_000_000 + 1);
    other.fd = 9;
    other.sock = Some(SocketMeta {
        sk: 0xdef,
        ..meta(Transport::Tcp)
    });
    let out = s.packets(&other);
    assert_eq!(out.len(), 1);
    let t = parse_tcp(&out[0].data);
    assert_eq!((t.src, t.seq, t.fin), (l(), c, true));
    let mut s = Synth::new();
    for e in &events[..7] {
        s.packets(e);
    }
    let out = s.packets(&connect(Transport::Tcp));
    assert!(parse_tcp(&out[0].data).fin, "the FIN, then the new stream");
    assert!(parse_tcp(&out[1].data).syn);
    // A C library's stream is closed at once.
    let mut s = Synth::new();
    s.packets(&connect(Transport::Tcp));
    s.packets(&tls_data(Direction::Send, REQ));
    assert!(parse_tcp(&s.packets(&close(0))[0].data).fin);
}

/// A Decryption Secrets Block goes out where it is written: after the headers, before the
/// packets that follow (through the `EventWriter` trait and a `FanOut`, as trace composes
/// its sinks); an empty key log writes nothing.
#[test]
fn tls_secrets_before_the_packets() {
    let key_log = b"CLIENT_RANDOM 0a0b 0c0d0e\n";
    let headers = PcapngWriter::new(Vec::new()).unwrap().into_inner();
    let mut w = PcapngWriter::new(Vec::new()).unwrap();
    {
        let mut fan = crate::output::FanOut(vec![&mut w as &mut dyn EventWriter]);
        fan.write_tls_secrets(b"").unwrap();
        fan.write_tls_secrets(key_log).unwrap();
        fan.write_event(&connect(Transport::Tcp)).unwrap();
    }
    let out = w.into_inner();
    let dsb = secrets::decryption_secrets_block(pcap_file::Endianness::Big, key_log).unwrap();
    assert_eq!(out[..headers.len()], headers[..]);
    assert_eq!(out[headers.len()..headers.len() + dsb.len()], dsb[..]);
    let mut r = pcap_file::pcapng::PcapNgReader::new(&out[..]).unwrap();
    let mut kinds = Vec::new();
    while let Some(b) = r.next_block() {
        kinds.push(match b.unwrap() {
            pcap_file::pcapng::Block::InterfaceDescription(_) => "idb",
            pcap_file::pcapng::Block::Unknown(u) if u.type_ == 0xA => "dsb",
            pcap_file::pcapng::Block::EnhancedPacket(_) => "epb",
            _ => "other",
        });
    }
    assert_eq!(kinds[..3], ["idb", "dsb", "epb"], "{kinds:?}");
}

/// `trace --stack`: the frames of a call go in the comment of its first packet only (TCP:
/// its first segment; UDP: its datagram, a sendmmsg's first message).
#[test]
fn stack_in_the_first_packet_comment_of_a_call() {
    let frame = |addr: u64, function: &str| crate::model::Frame {
        addr,
        module: Some("/usr/lib/libc.so.6".into()),
        function: Some(function.into()),
        offset: 0x19,
        file: None,
        line: None,
    };
    let stack = Some(vec![
        frame(0x7f00_0000_1000, "send"),
        frame(0x5555_0000_2000, "main"),
    ]);
    let lines = "\n    #0  libc.so.6!send+0x19 (/usr/lib/libc.so.6) 0x7f0000001000\
                 \n    #1  libc.so.6!main+0x19 (/usr/lib/libc.so.6) 0x555500002000";

    // TCP: a call larger than one segment.
    let mut s = Synth::new();
    s.packets(&connect(Transport::Tcp));
    let big = vec![b'x'; SEGMENT_MAX + 10];
    let mut e = data(Transport::Tcp, Direction::Send, &big, big.len() as u64);
    e.stack = stack.clone();
    let out = s.packets(&e);
    let with: Vec<&Packet> = out.iter().filter(|p| p.comment.contains("#0 ")).collect();
    assert_eq!(with.len(), 1, "{out:?}");
    assert!(with[0].comment.ends_with(lines), "{}", with[0].comment);
    assert_eq!(parse_tcp(&with[0].data).payload.len(), SEGMENT_MAX);

    // UDP: each datagram is a call of its own, or a message of one.
    let mut s = Synth::new();
    let mut e = data(Transport::Udp, Direction::Send, b"query", 5);
    e.stack = stack.clone();
    let out = s.packets(&e);
    assert_eq!(out.len(), 1);
    assert!(out[0].comment.ends_with(lines), "{}", out[0].comment);
    if let Detail::Data { msg_index, .. } = &mut e.detail {
        *msg_index = 1;
    }
    let out = s.packets(&e);
    assert!(!out[0].comment.contains("#0 "), "{}", out[0].comment);
}
