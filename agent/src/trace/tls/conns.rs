//! Which traced connections carry TLS.
//!
//! A TCP connection carries TLS when the first bytes sent or received on it are a TLS
//! ClientHello ([`client_hello`]; gathered over the calls that moved them, [`FirstBytes`]:
//! a server reads the record header, then the rest; its records are marked while the bytes
//! so far may start one), or when a TLS library's plaintext record (`trace --tls`) names its
//! socket. [`TlsConns`] follows the events of a trace in order, remembers those
//! connections by their kernel socket (`sk`, as the assembler and the summary identify
//! sockets, with the socket's inode: a `close` record comes at the syscall's exit, after
//! the kernel may have freed the socket and handed its `sk` to a socket another thread
//! opened meanwhile) until they are closed, and marks the syscall records of their ciphertext
//! ([`Event::tls_ciphertext`]): the ` [tls]` of the text output, `"tls":{"ciphertext":true}`
//! in JSON, what `--tls-only` hides.
//!
//! The ClientHello itself is read by [`crate::tls_hello`] (the proxies' TLS interception reads
//! it too).

use std::collections::HashMap;

use agent_common::sys;

use crate::model::{Call, Detail, Direction, Event, Transport};
use crate::tls_hello::{ClientHello, client_hello, may_start_client_hello};

/// Most sockets remembered; past it the memory is cleared (sockets never closed while
/// traced).
const MAX_SOCKETS: usize = 65536;

/// What the first bytes of a TCP stream tell so far ([`FirstBytes::push`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Not enough bytes yet; those in may start a ClientHello.
    Maybe,
    /// A ClientHello.
    Hello,
    /// Not a ClientHello.
    Other,
}

/// The first bytes one side of a TCP stream sent, gathered over the reads or writes that
/// moved them (a server may read a ClientHello 5 bytes, then the rest), until they tell
/// whether the stream starts with a ClientHello: six bytes, or with `whole_record` the
/// ClientHello's whole record (for its SNI and ALPN, [`FirstBytes::hello`]).
#[derive(Debug, Clone, Default)]
pub struct FirstBytes {
    dir: Option<Direction>,
    buf: Vec<u8>,
    whole_record: bool,
}

impl FirstBytes {
    pub fn new(whole_record: bool) -> Self {
        FirstBytes {
            whole_record,
            ..FirstBytes::default()
        }
    }

    /// Adds the captured `payload` of a data record that moved `total` bytes `dir`
    /// (`payload` shorter than `total`: cut by the snaplen, nothing more can be learned).
    /// Bytes the other way before a decision: the stream did not start with a ClientHello
    /// (its client waits for the server's answer).
    pub fn push(&mut self, dir: Direction, payload: &[u8], total: u64) -> Start {
        if self.dir.is_some_and(|d| d != dir) {
            return Start::Other;
        }
        self.dir = Some(dir);
        let mut rest = payload;
        loop {
            // Once the record header is in, its length may want more.
            let want = self.want();
            let take = want.saturating_sub(self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if take == 0 || self.want() == want {
                break;
            }
        }
        let cut = (payload.len() as u64) < total;
        if !may_start_client_hello(&self.buf) {
            Start::Other
        } else if self.buf.len() >= self.want() || (cut && self.buf.len() >= 6) {
            Start::Hello
        } else if cut {
            Start::Other
        } else {
            Start::Maybe
        }
    }

    /// How many bytes tell: six, or the whole first record once its header is in.
    fn want(&self) -> usize {
        match self.buf.get(3..5) {
            Some(len) if self.whole_record => 5 + usize::from(u16::from_be_bytes([len[0], len[1]])),
            _ => 6,
        }
    }

    /// The ClientHello the bytes gathered start with (see [`client_hello`]).
    pub fn hello(&self) -> Option<ClientHello> {
        client_hello(&self.buf)
    }
}

/// What is known of one TCP socket.
#[derive(Debug, Clone)]
enum Seen {
    /// Its first bytes do not tell yet (they may start a ClientHello).
    Pending(FirstBytes),
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
            (Call::Tls { .. }, _) => {
                self.learn(sk, Seen::Tls);
            }
            (Call::Syscall(sys::CLOSE), Detail::Sock { .. }) => {
                self.socks.remove(&sk);
            }
            (
                Call::Syscall(_),
                Detail::Data {
                    payload,
                    dir,
                    total,
                    ..
                },
            ) if sock.transport == Transport::Tcp => {
                let moved = ev.ret > 0 && !payload.is_empty();
                ev.tls_ciphertext = match self.socks.get_mut(&sk) {
                    Some(Seen::Tls) => true,
                    Some(Seen::Plain) => false,
                    // Marked while the bytes so far may start a ClientHello.
                    Some(Seen::Pending(_)) | None if !moved => {
                        matches!(self.socks.get(&sk), Some(Seen::Pending(_)))
                    }
                    Some(Seen::Pending(first)) => match first.push(*dir, payload, *total) {
                        Start::Maybe => true,
                        Start::Hello => self.learn(sk, Seen::Tls),
                        Start::Other => self.learn(sk, Seen::Plain),
                    },
                    None => {
                        let mut first = FirstBytes::new(false);
                        match first.push(*dir, payload, *total) {
                            Start::Maybe => self.learn(sk, Seen::Pending(first)),
                            Start::Hello => self.learn(sk, Seen::Tls),
                            Start::Other => self.learn(sk, Seen::Plain),
                        }
                    }
                };
            }
            _ => {}
        }
    }

    /// Whether socket `sk` is known to carry TLS.
    pub fn carries_tls(&self, sk: u64) -> bool {
        self.socks
            .iter()
            .any(|(&(s, _), seen)| s == sk && matches!(seen, Seen::Tls))
    }

    /// Remembers what socket `sk` is; returns whether its records are to be marked.
    fn learn(&mut self, sk: (u64, u64), seen: Seen) -> bool {
        if self.socks.len() >= MAX_SOCKETS && !self.socks.contains_key(&sk) {
            self.socks.clear();
        }
        let marked = !matches!(seen, Seen::Plain);
        self.socks.insert(sk, seen);
        marked
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{SocketMeta, Task};
    use agent_common::tls_fn;
    use bytes::Bytes;

    use crate::tls_hello::tests::CURL_HELLO;

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
            tls_eof: false,
            tls_plaintext: false,
            unfinished: false,
            stack: None,
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
    fn client_hello_read_in_pieces() {
        // A server reads the record header, then the rest (Python's ssl does).
        let mut c = TlsConns::new(false);
        let read = Call::Syscall(sys::READ);
        let ev = |c: &mut TlsConns, sk, b: &'static [u8]| {
            let mut e = data(sk, read, Direction::Recv, b);
            c.mark(&mut e);
            e.tls_ciphertext
        };
        assert!(ev(&mut c, 1, &CURL_HELLO[..1]));
        assert!(ev(&mut c, 1, &CURL_HELLO[1..5]));
        assert!(!c.carries_tls(1));
        assert!(ev(&mut c, 1, &CURL_HELLO[5..]));
        assert!(c.carries_tls(1));
        // A plain stream whose first byte happens to be 22.
        assert!(ev(&mut c, 2, b"\x16"));
        assert!(!ev(&mut c, 2, b"\x03\x03\x00\x05\x02"));
        assert!(!c.carries_tls(2));
        assert!(!ev(&mut c, 2, CURL_HELLO));

        // The summary's: the whole record, for its SNI and ALPN.
        let mut f = FirstBytes::new(true);
        assert_eq!(f.push(Direction::Recv, &CURL_HELLO[..5], 5), Start::Maybe);
        assert_eq!(
            f.push(Direction::Recv, &CURL_HELLO[5..300], 295),
            Start::Maybe
        );
        assert_eq!(
            f.push(
                Direction::Recv,
                &CURL_HELLO[300..],
                (CURL_HELLO.len() - 300) as u64
            ),
            Start::Hello
        );
        assert_eq!(f.hello().unwrap().sni.as_deref(), Some("localhost"));
        // Cut by the snaplen: a ClientHello, nothing more known.
        let mut f = FirstBytes::new(true);
        assert_eq!(
            f.push(Direction::Send, &CURL_HELLO[..64], 517),
            Start::Hello
        );
        assert_eq!(f.hello(), Some(ClientHello::default()));
        // The other side speaks first: not a ClientHello.
        let mut f = FirstBytes::new(true);
        assert_eq!(f.push(Direction::Recv, &CURL_HELLO[..3], 3), Start::Maybe);
        assert_eq!(f.push(Direction::Send, b"220 ", 4), Start::Other);
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
