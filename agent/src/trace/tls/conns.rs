//! Which traced connections carry TLS.
//!
//! A TCP connection carries TLS when the first bytes sent or received on it are a TLS
//! ClientHello ([`client_hello`]), or when a TLS library's plaintext record (`trace --tls`)
//! names its socket. [`TlsConns`] follows the events of a trace in order, remembers those
//! connections by their kernel socket (`sk`, as the assembler and the summary identify
//! sockets, with the socket's inode: a `close` record comes at the syscall's exit, after
//! the kernel may have freed the socket and handed its `sk` to a socket another thread
//! opened meanwhile) until they are closed, and marks the syscall records of their ciphertext
//! ([`Event::tls_ciphertext`]): the ` [tls]` of the text output, `"tls":{"ciphertext":true}`
//! in JSON, what `--tls-only` hides.
//!
//! The ClientHello is read with the `tls-parser` crate (the record, the handshake message and
//! the SNI and ALPN extension contents). The walk over the extension list is done here: the
//! crate's list parser gives up on the whole list when one extension it knows is malformed or
//! newer than it (a key share of a post-quantum group, say), and only two of them matter.

use std::collections::HashMap;

use agent_common::sys;
use tls_parser::{
    TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_extension_alpn_content,
    parse_tls_extension_sni_content, parse_tls_plaintext,
};

use crate::model::{Call, Detail, Event, Transport};

/// Most sockets remembered; past it the memory is cleared (sockets never closed while
/// traced).
const MAX_SOCKETS: usize = 65536;

/// The handshake record type, and the ClientHello handshake message type.
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Largest TLS record body: 2^14 bytes of plaintext plus the expansion TLS 1.2 allows.
const MAX_RECORD_LEN: u16 = (1 << 14) + 2048;
/// Extension types (RFC 6066, RFC 7301).
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// What a ClientHello tells about the connection it opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The server name the client asked for (SNI), when the ClientHello carried one and was
    /// captured whole.
    pub sni: Option<String>,
    /// The application protocols the client offered (ALPN: `h2`, `http/1.1`, ...), in its
    /// order.
    pub alpn: Vec<String>,
}

/// Whether `bytes`, the first bytes of a TCP stream, start a TLS handshake: a handshake
/// record (SSL 3.0 to TLS 1.3 all carry version 3.x there) of a plausible length whose first
/// message is a ClientHello. Six bytes are enough to tell, so a payload cut by the snaplen
/// still does.
pub fn is_client_hello(bytes: &[u8]) -> bool {
    match bytes {
        [
            CONTENT_HANDSHAKE,
            3,
            minor,
            hi,
            lo,
            HANDSHAKE_CLIENT_HELLO,
            ..,
        ] => {
            let len = u16::from_be_bytes([*hi, *lo]);
            *minor <= 4 && (4..=MAX_RECORD_LEN).contains(&len)
        }
        _ => false,
    }
}

/// The ClientHello `bytes` start with (see [`is_client_hello`]), with its SNI and ALPN when
/// its record was captured whole; `None` when `bytes` do not start with one.
pub fn client_hello(bytes: &[u8]) -> Option<ClientHello> {
    if !is_client_hello(bytes) {
        return None;
    }
    let mut hello = ClientHello::default();
    let Ok((_, record)) = parse_tls_plaintext(bytes) else {
        // Cut short (snaplen) or malformed past the header: a ClientHello all the same.
        return Some(hello);
    };
    let ext = record.msg.iter().find_map(|m| match m {
        TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) => ch.ext,
        _ => None,
    });
    let mut rest = ext.unwrap_or_default();
    // struct { ExtensionType type; opaque data<0..2^16-1>; } Extension, one after another.
    while let [t0, t1, l0, l1, tail @ ..] = rest {
        let (ty, len) = (
            u16::from_be_bytes([*t0, *t1]),
            usize::from(u16::from_be_bytes([*l0, *l1])),
        );
        let Some(data) = tail.get(..len) else { break };
        rest = &tail[len..];
        match ty {
            EXT_SERVER_NAME => {
                if let Ok((_, TlsExtension::SNI(names))) = parse_tls_extension_sni_content(data) {
                    hello.sni = names
                        .iter()
                        .find(|(t, _)| t.0 == 0)
                        .map(|(_, name)| String::from_utf8_lossy(name).into_owned());
                }
            }
            EXT_ALPN => {
                if let Ok((_, TlsExtension::ALPN(protos))) = parse_tls_extension_alpn_content(data)
                {
                    hello.alpn = protos
                        .iter()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect();
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

/// What is known of one TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Bytes went over it, and they did not start with a ClientHello.
    Plain,
    /// It carries TLS.
    Tls,
}

/// The TCP sockets known to carry TLS, from the events of a trace in order; marks the
/// ciphertext records of those sockets. See the module documentation.
#[derive(Debug, Default)]
pub struct TlsConns {
    /// By (`sk`, socket inode).
    socks: HashMap<(u64, u64), Seen>,
    /// `--tls-only`: [`TlsConns::pass`] holds the marked records back.
    hide_ciphertext: bool,
}

impl TlsConns {
    /// `hide_ciphertext`: `--tls-only`.
    pub fn new(hide_ciphertext: bool) -> Self {
        TlsConns {
            socks: HashMap::new(),
            hide_ciphertext,
        }
    }

    /// [`TlsConns::mark`], then whether the event is to be shown (not a ciphertext record
    /// under `--tls-only`).
    pub fn pass(&mut self, ev: &mut Event) -> bool {
        self.mark(ev);
        !(self.hide_ciphertext && ev.tls_ciphertext)
    }

    /// Learns from `ev` and sets its `tls_ciphertext` when it is a syscall data record of a
    /// socket that carries TLS (failed calls included: they are that connection's too).
    pub fn mark(&mut self, ev: &mut Event) {
        let Some(sock) = &ev.sock else { return };
        let sk = (sock.sk, sock.ino);
        match (&ev.call, &ev.detail) {
            (Call::Tls { .. }, _) => self.learn(sk, Seen::Tls),
            (Call::Syscall(sys::CLOSE), Detail::Sock { .. }) => {
                self.socks.remove(&sk);
            }
            (Call::Syscall(_), Detail::Data { payload, .. })
                if sock.transport == Transport::Tcp =>
            {
                let seen = match self.socks.get(&sk) {
                    Some(s) => *s,
                    None if ev.ret > 0 && !payload.is_empty() => {
                        let s = if is_client_hello(payload) {
                            Seen::Tls
                        } else {
                            Seen::Plain
                        };
                        self.learn(sk, s);
                        s
                    }
                    None => return,
                };
                ev.tls_ciphertext = seen == Seen::Tls;
            }
            _ => {}
        }
    }

    /// Whether socket `sk` is known to carry TLS.
    pub fn carries_tls(&self, sk: u64) -> bool {
        self.socks
            .iter()
            .any(|(&(s, _), &seen)| s == sk && seen == Seen::Tls)
    }

    fn learn(&mut self, sk: (u64, u64), seen: Seen) {
        if self.socks.len() >= MAX_SOCKETS && !self.socks.contains_key(&sk) {
            self.socks.clear();
        }
        self.socks.insert(sk, seen);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Direction, SocketMeta, Task};
    use agent_common::tls_fn;
    use bytes::Bytes;

    /// The ClientHello curl 7.88.1 (OpenSSL 3.0, Debian 12) sent for `https://localhost:PORT/`
    /// (the first bytes a listener received; 517 bytes).
    pub(crate) const CURL_HELLO: &[u8] = include_bytes!("testdata/curl_client_hello.bin");
    /// The ClientHello of Python 3.11's `urllib.request.urlopen("https://localhost:PORT/")`
    /// (its `ssl` module, OpenSSL 3.0).
    pub(crate) const PYTHON_HELLO: &[u8] = include_bytes!("testdata/python_client_hello.bin");

    #[test]
    fn real_client_hellos() {
        assert!(is_client_hello(CURL_HELLO));
        assert_eq!(
            client_hello(CURL_HELLO),
            Some(ClientHello {
                sni: Some("localhost".into()),
                alpn: vec!["h2".into(), "http/1.1".into()],
            })
        );
        assert_eq!(
            client_hello(PYTHON_HELLO),
            Some(ClientHello {
                sni: Some("localhost".into()),
                alpn: vec!["http/1.1".into()],
            })
        );
        // Cut by the snaplen: still a ClientHello, nothing more known.
        assert_eq!(client_hello(&CURL_HELLO[..6]), Some(ClientHello::default()));
        assert_eq!(
            client_hello(&CURL_HELLO[..300]),
            Some(ClientHello::default())
        );
        assert_eq!(client_hello(&CURL_HELLO[..5]), None);
    }

    #[test]
    fn not_client_hellos() {
        for b in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"",
            // A ServerHello (type 2), application data (23), an SSLv2-style hello.
            &[22, 3, 3, 0, 90, 2, 0, 0, 86],
            &[23, 3, 3, 0, 32, 1],
            &[0x80, 0x2e, 1, 3, 1, 0],
            // Zero-length or oversized record.
            &[22, 3, 1, 0, 0, 1],
            &[22, 3, 1, 0xff, 0xff, 1],
            // Version 3.9.
            &[22, 3, 9, 0, 90, 1],
        ] {
            assert!(!is_client_hello(b), "{b:?}");
            assert_eq!(client_hello(b), None);
        }
    }

    /// A ClientHello made here: every extension list shape the walk must survive.
    fn hello_with(exts: &[(u16, &[u8])]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (t, d) in exts {
            ext.extend_from_slice(&t.to_be_bytes());
            ext.extend_from_slice(&(d.len() as u16).to_be_bytes());
            ext.extend_from_slice(d);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    #[test]
    fn extensions_walked_one_by_one() {
        let sni = b"\x00\x0e\x00\x00\x0bexample.org";
        let alpn = b"\x00\x0c\x02h2\x08http/1.1";
        // A malformed key share (51) and a GREASE extension before them do not hide them.
        let h = hello_with(&[(0x0a0a, b""), (51, b"\x00"), (0, sni), (16, alpn)]);
        assert_eq!(
            client_hello(&h),
            Some(ClientHello {
                sni: Some("example.org".into()),
                alpn: vec!["h2".into(), "http/1.1".into()],
            })
        );
        // No extensions at all; an extension whose length runs past the end.
        assert_eq!(client_hello(&hello_with(&[])), Some(ClientHello::default()));
        let mut h = hello_with(&[(0, sni)]);
        let n = h.len();
        h[n - sni.len() - 1] = 0xff;
        assert_eq!(client_hello(&h).unwrap().sni, None);
    }

    fn data(sk: u64, call: Call, dir: Direction, payload: &'static [u8]) -> Event {
        Event {
            ts_ns: 0,
            task: Task {
                pid: 1,
                tid: 1,
                comm: "curl".into(),
            },
            call,
            fd: 5,
            ret: payload.len() as i64,
            sock: Some(SocketMeta {
                sk,
                ino: 1,
                transport: Transport::Tcp,
                local: None,
                remote: None,
            }),
            detail: Detail::Data {
                dir,
                total: payload.len() as u64,
                payload: Bytes::from_static(payload),
                truncated: false,
                addr: None,
                msg_index: 0,
            },
            tls_ciphertext: false,
        }
    }

    #[test]
    fn marks_the_ciphertext_of_tls_connections() {
        let mut c = TlsConns::new(false);
        let write = Call::Syscall(sys::WRITE);
        let read = Call::Syscall(sys::READ);
        let marked = |c: &mut TlsConns, mut e: Event| {
            c.mark(&mut e);
            e.tls_ciphertext
        };
        // A connection that starts with a ClientHello: it and what follows are marked.
        assert!(marked(&mut c, data(1, write, Direction::Send, CURL_HELLO)));
        assert!(marked(
            &mut c,
            data(1, read, Direction::Recv, b"\x16\x03\x03")
        ));
        let mut failed = data(1, read, Direction::Recv, b"");
        failed.ret = -11;
        assert!(marked(&mut c, failed));
        assert!(c.carries_tls(1));
        // A connection that starts with plain bytes is not...
        assert!(!marked(&mut c, data(2, write, Direction::Send, b"GET / ")));
        assert!(!marked(&mut c, data(2, write, Direction::Send, CURL_HELLO)));
        // ...until a TLS library's plaintext names its socket (the record itself is not
        // ciphertext).
        let tls = Call::Tls {
            func: tls_fn::SSL_WRITE,
            conn: 9,
        };
        assert!(!marked(&mut c, data(2, tls, Direction::Send, b"GET / ")));
        assert!(marked(
            &mut c,
            data(2, read, Direction::Recv, b"\x17\x03\x03")
        ));
        // A failed call before any byte decides nothing.
        let mut failed = data(3, read, Direction::Recv, b"");
        failed.ret = -11;
        assert!(!marked(&mut c, failed));
        assert!(marked(&mut c, data(3, read, Direction::Recv, CURL_HELLO)));
        // A close forgets the socket (its sk may be reused).
        let mut close = data(1, Call::Syscall(sys::CLOSE), Direction::Send, b"");
        close.detail = Detail::Sock {
            args: [0; 4],
            addr: None,
        };
        assert!(!marked(&mut c, close.clone()));
        assert!(!c.carries_tls(1));
        assert!(!marked(&mut c, data(1, write, Direction::Send, b"GET / ")));
        // The close of a socket whose sk was reused (freed inside `close`, before the record
        // at its exit) by a TLS connection already under way forgets only the old socket.
        let mut new = data(5, write, Direction::Send, CURL_HELLO);
        new.sock.as_mut().unwrap().ino = 2;
        assert!(marked(&mut c, new.clone()));
        let mut old_close = close.clone();
        old_close.sock.as_mut().unwrap().sk = 5;
        assert!(!marked(&mut c, old_close));
        new.detail = data(5, read, Direction::Recv, b"\x17\x03\x03").detail;
        assert!(marked(&mut c, new));
        // Not TCP: never.
        let mut udp = data(4, write, Direction::Send, CURL_HELLO);
        udp.sock.as_mut().unwrap().transport = Transport::Udp;
        assert!(!marked(&mut c, udp));
    }

    #[test]
    fn tls_only_hides_the_ciphertext_records() {
        let mut c = TlsConns::new(true);
        let mut connect = data(1, Call::Syscall(sys::CONNECT), Direction::Send, b"");
        connect.detail = Detail::Sock {
            args: [0; 4],
            addr: None,
        };
        assert!(c.pass(&mut connect));
        assert!(!c.pass(&mut data(
            1,
            Call::Syscall(sys::WRITE),
            Direction::Send,
            CURL_HELLO
        )));
        let tls = Call::Tls {
            func: tls_fn::SSL_READ,
            conn: 9,
        };
        assert!(c.pass(&mut data(1, tls, Direction::Recv, b"HTTP/1.1 200 OK")));
        let mut close = connect.clone();
        close.call = Call::Syscall(sys::CLOSE);
        assert!(c.pass(&mut close));
        assert!(c.pass(&mut data(
            2,
            Call::Syscall(sys::WRITE),
            Direction::Send,
            b"GET"
        )));
        // Without --tls-only everything passes, marked.
        let mut c = TlsConns::new(false);
        let mut e = data(1, Call::Syscall(sys::WRITE), Direction::Send, CURL_HELLO);
        assert!(c.pass(&mut e));
        assert!(e.tls_ciphertext);
    }
}
