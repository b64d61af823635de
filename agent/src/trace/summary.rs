//! Per-connection statistics of a trace, printed to stderr at exit.
//!
//! ```text
//! capagent: 1234 events, 0 lost
//! curl[4242] fd 5 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  sent 78 B  recv 512 B
//! ```
//!
//! A connection is what the data events of one process on one socket with the same endpoints
//! have in common ([`ConnKey`]); the remote end of a datagram is the address it was sent to
//! or received from, so an unconnected UDP socket gives one row per peer.
//!
//! TLS: a TCP connection whose first bytes are a ClientHello carried TLS (its row names the
//! server, SNI); a last line counts them, and without `--tls` says that `--tls` shows their
//! plaintext. The plaintext records of `--tls` count on their connection's row (plaintext
//! sent and received), not in its socket bytes; those whose socket is not known have a row
//! of their own, by the library's connection object.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::model::{Call, Detail, Direction, Endpoint, Event, Transport};
use crate::output::num::human_bytes;
use crate::tls_hello::ClientHello;
use crate::trace::tls::conns::{FirstBytes, Start};

/// Most connections tracked; the data of further ones only counts in the totals.
pub const MAX_CONNECTIONS: usize = 100_000;
/// Most connection rows [`Summary::render`] prints.
pub const RENDER_MAX_ROWS: usize = 100;

/// How a socket is identified: its kernel `sk` with its inode when known (the kernel may
/// free a socket and hand its `sk` to a new one within one trace; the inode tells them
/// apart, 0 when unknown), else its fd (or for a TLS record, the TLS library's connection
/// object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SockId {
    Sk { sk: u64, ino: u64 },
    Fd(i32),
    TlsObject(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub pid: u32,
    pub sock: SockId,
    pub transport: Option<Transport>,
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
}

/// One connection's numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub key: ConnKey,
    /// Process name (the latest seen).
    pub comm: String,
    /// The fd used (the latest seen).
    pub fd: i32,
    /// Bytes transferred (not only captured) by successful calls.
    pub sent_bytes: u64,
    pub recv_bytes: u64,
    /// Send/recv-type calls (messages for sendmmsg/recvmmsg), failed ones included.
    pub send_calls: u64,
    pub recv_calls: u64,
    /// Calls that failed (negative return).
    pub errors: u64,
}

/// Numbers over the whole trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Events seen (loss reports excluded).
    pub events: u64,
    /// Records the kernel lost (ring buffer full), and their payload bytes.
    pub lost_events: u64,
    pub lost_bytes: u64,
    /// Bytes transferred by successful send/recv-type calls.
    pub sent_bytes: u64,
    pub recv_bytes: u64,
    /// Bytes captured (payload kept).
    pub captured_bytes: u64,
    /// Data events whose payload was not fully captured.
    pub truncated_calls: u64,
    /// Connections not tracked past [`MAX_CONNECTIONS`].
    pub untracked_connections: u64,
}

/// What a connection's TLS was, as far as seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnTls {
    /// Its first bytes were a ClientHello (sent or received).
    pub hello: Option<ClientHello>,
    /// TLS plaintext records (`--tls`) and the plaintext bytes they moved.
    pub records: u64,
    pub sent_bytes: u64,
    pub recv_bytes: u64,
}

impl ConnTls {
    fn carried_tls(&self) -> bool {
        self.hello.is_some() || self.records > 0
    }
}

/// Accumulates [`Totals`] and per-[`Connection`] numbers from events.
///
/// Adding a data event of a known connection is O(1) and allocates nothing: connections are
/// found by (pid, socket) first, then compared by reference to the event's endpoints.
#[derive(Debug, Default)]
pub struct Summary {
    totals: Totals,
    conns: Vec<Connection>,
    /// Per connection (same index as `conns`): its first bytes while they do not tell yet
    /// whether it starts with a ClientHello (None once they did), and its TLS.
    conn_tls: Vec<(Option<FirstBytes>, ConnTls)>,
    /// `trace --tls`: the plaintext was asked for.
    tls: bool,
    by_sock: HashMap<(u32, SockId), SockConns>,
    /// The connection of the last data event.
    last: Option<usize>,
}

/// Most connections of one socket found by comparing them one by one; past it (a datagram
/// socket with many peers), by their whole key.
const SCAN_MAX: usize = 8;

/// The connections of one (pid, socket).
#[derive(Debug, Default)]
struct SockConns {
    /// Indexes into `Summary::conns`, while there are at most [`SCAN_MAX`].
    list: Vec<usize>,
    /// All of them by key once there are more (empty before).
    by_key: HashMap<ConnKey, usize>,
}

impl Summary {
    pub fn new() -> Self {
        Self::default()
    }

    /// The summary of a `trace --tls` (`tls`: true) or of a trace without it (the default):
    /// what its TLS line says.
    pub fn set_tls(&mut self, tls: bool) {
        self.tls = tls;
    }

    pub fn add(&mut self, ev: &Event) {
        let (dir, total, captured, truncated, addr) = match &ev.detail {
            Detail::Lost { events, bytes } => {
                self.totals.lost_events = self.totals.lost_events.saturating_add(*events);
                self.totals.lost_bytes = self.totals.lost_bytes.saturating_add(*bytes);
                return;
            }
            Detail::Data {
                dir,
                total,
                payload,
                truncated,
                addr,
                ..
            } => (*dir, *total, payload.len() as u64, *truncated, addr),
            _ => {
                self.totals.events += 1;
                return;
            }
        };
        let t = &mut self.totals;
        t.events += 1;
        t.captured_bytes = t.captured_bytes.saturating_add(captured);
        t.truncated_calls += u64::from(truncated);
        let ok = ev.ret >= 0;
        let moved = if ok { total } else { 0 };
        // TLS plaintext: not bytes of the socket.
        let tls_object = match ev.call {
            Call::Tls { conn, .. } => Some(conn),
            _ => None,
        };
        if tls_object.is_none() {
            match dir {
                Direction::Send => t.sent_bytes = t.sent_bytes.saturating_add(moved),
                Direction::Recv => t.recv_bytes = t.recv_bytes.saturating_add(moved),
            }
        }

        let sock = ev.sock.as_ref();
        let pid = ev.task.pid;
        let sock_id = match (sock, tls_object) {
            (Some(s), _) => SockId::Sk {
                sk: s.sk,
                ino: s.ino,
            },
            (None, Some(conn)) => SockId::TlsObject(conn),
            (None, None) => SockId::Fd(ev.fd),
        };
        let transport = sock.map(|s| s.transport);
        let local = sock.and_then(|s| s.local.as_ref());
        let datagram_peer = addr.map(Endpoint::Inet);
        let remote = datagram_peer
            .as_ref()
            .or_else(|| sock.and_then(|s| s.remote.as_ref()));
        let is = |k: &ConnKey| {
            k.pid == pid
                && k.sock == sock_id
                && k.transport == transport
                && k.local.as_ref() == local
                && k.remote.as_ref() == remote
        };
        let key = || ConnKey {
            pid,
            sock: sock_id,
            transport,
            local: local.cloned(),
            remote: remote.cloned(),
        };
        let found = match self.last {
            Some(i) if is(&self.conns[i].key) => Some(i),
            _ => match self.by_sock.get(&(pid, sock_id)) {
                None => None,
                Some(sc) if sc.by_key.is_empty() => {
                    sc.list.iter().copied().find(|&i| is(&self.conns[i].key))
                }
                Some(sc) => sc.by_key.get(&key()).copied(),
            },
        };
        let i = match found {
            Some(i) => i,
            None if self.conns.len() >= MAX_CONNECTIONS => {
                self.totals.untracked_connections += 1;
                return;
            }
            None => {
                let i = self.conns.len();
                let key = key();
                let sc = self.by_sock.entry((pid, sock_id)).or_default();
                if sc.by_key.is_empty() && sc.list.len() < SCAN_MAX {
                    sc.list.push(i);
                } else {
                    for j in sc.list.drain(..) {
                        sc.by_key.insert(self.conns[j].key.clone(), j);
                    }
                    sc.by_key.insert(key.clone(), i);
                }
                self.conns.push(Connection {
                    key,
                    comm: String::new(),
                    fd: ev.fd,
                    sent_bytes: 0,
                    recv_bytes: 0,
                    send_calls: 0,
                    recv_calls: 0,
                    errors: 0,
                });
                self.conn_tls
                    .push((Some(FirstBytes::new(true)), ConnTls::default()));
                i
            }
        };
        self.last = Some(i);
        let c = &mut self.conns[i];
        if c.comm != ev.task.comm {
            c.comm.clone_from(&ev.task.comm);
        }
        let (first, tls) = &mut self.conn_tls[i];
        if tls_object.is_some() {
            tls.records += 1;
            match dir {
                Direction::Send => tls.sent_bytes = tls.sent_bytes.saturating_add(moved),
                Direction::Recv => tls.recv_bytes = tls.recv_bytes.saturating_add(moved),
            }
            return;
        }
        if let Some(f) = first
            && ev.ret > 0
            && let Detail::Data { payload, total, .. } = &ev.detail
            && !payload.is_empty()
        {
            // Read in pieces, a ClientHello is one once its record is in.
            match f.push(dir, payload, *total) {
                _ if transport != Some(Transport::Tcp) => *first = None,
                Start::Maybe => {}
                Start::Hello => {
                    tls.hello = f.hello();
                    *first = None;
                }
                Start::Other => *first = None,
            }
        }
        c.fd = ev.fd;
        c.errors += u64::from(!ok);
        match dir {
            Direction::Send => {
                c.send_calls += 1;
                c.sent_bytes = c.sent_bytes.saturating_add(moved);
            }
            Direction::Recv => {
                c.recv_calls += 1;
                c.recv_bytes = c.recv_bytes.saturating_add(moved);
            }
        }
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Connections in the order they were first seen.
    pub fn connections(&self) -> &[Connection] {
        &self.conns
    }

    /// The TLS of connection `i` (an index into [`Summary::connections`]).
    pub fn connection_tls(&self, i: usize) -> Option<&ConnTls> {
        self.conn_tls.get(i).map(|(_, t)| t)
    }

    /// The human summary for stderr (ends with a newline).
    pub fn render(&self) -> String {
        let t = &self.totals;
        let mut s = format!("capagent: {} events, {} lost", t.events, t.lost_events);
        if t.lost_events > 0 || t.lost_bytes > 0 {
            let _ = write!(s, " ({} bytes)", t.lost_bytes);
        }
        s.push('\n');
        for (c, (_, tls)) in self.conns.iter().zip(&self.conn_tls).take(RENDER_MAX_ROWS) {
            let _ = write!(s, "{}[{}] fd {}", c.comm, c.key.pid, c.fd);
            if let SockId::TlsObject(obj) = c.key.sock {
                let _ = write!(s, " tls object {obj:#x}");
            }
            if let Some(tr) = c.key.transport {
                let _ = write!(s, " {}", tr.name());
            }
            match (&c.key.local, &c.key.remote) {
                (None, None) => {}
                (l, r) => {
                    let _ = write!(s, " {} -> {}", or_unknown(l), or_unknown(r));
                }
            }
            // The socket's own bytes; not when only its plaintext was shown (--tls-only
            // hides the ciphertext: "sent 0 B" would be wrong).
            let ciphertext_hidden = tls.records > 0 && c.send_calls == 0 && c.recv_calls == 0;
            if c.key.sock_is_socket() && !ciphertext_hidden {
                s.push_str("  sent ");
                push_bytes_exact(&mut s, c.sent_bytes);
                s.push_str("  recv ");
                push_bytes_exact(&mut s, c.recv_bytes);
            }
            if tls.carried_tls() {
                s.push_str("  tls");
                if let Some(sni) = tls.hello.as_ref().and_then(|h| h.sni.as_deref()) {
                    let _ = write!(s, " {}", crate::output::escape::escape(sni.as_bytes()));
                }
            }
            if tls.records > 0 {
                s.push_str(": plaintext sent ");
                push_bytes_exact(&mut s, tls.sent_bytes);
                s.push_str("  recv ");
                push_bytes_exact(&mut s, tls.recv_bytes);
                let plural = if tls.records == 1 { "" } else { "s" };
                let _ = write!(s, " ({} record{plural})", tls.records);
            }
            s.push('\n');
        }
        let more = (self.conns.len().saturating_sub(RENDER_MAX_ROWS) as u64)
            .saturating_add(t.untracked_connections);
        if more > 0 {
            let _ = writeln!(s, "... and {more} more connections");
        }
        self.render_tls(&mut s);
        s
    }

    /// The TLS line: how many connections carried TLS, and what `--tls` did or would do.
    fn render_tls(&self, s: &mut String) {
        let carried: Vec<&ConnTls> = self
            .conn_tls
            .iter()
            .map(|(_, t)| t)
            .filter(|t| t.carried_tls())
            .collect();
        if carried.is_empty() {
            return;
        }
        let mut snis: Vec<&str> = Vec::new();
        for t in &carried {
            if let Some(sni) = t.hello.as_ref().and_then(|h| h.sni.as_deref())
                && !snis.contains(&sni)
            {
                snis.push(sni);
            }
        }
        let n = carried.len();
        let _ = write!(
            s,
            "capagent: {n} connection{} carried TLS",
            if n == 1 { "" } else { "s" }
        );
        if !snis.is_empty() {
            const SHOWN: usize = 5;
            let shown: Vec<String> = snis
                .iter()
                .take(SHOWN)
                .map(|n| crate::output::escape::escape(n.as_bytes()))
                .collect();
            let _ = write!(s, " (SNI: {}", shown.join(", "));
            if snis.len() > SHOWN {
                let _ = write!(s, " and {} more", snis.len() - SHOWN);
            }
            s.push(')');
        }
        if !self.tls {
            s.push_str("; --tls shows their plaintext\n");
            return;
        }
        let with: Vec<&&ConnTls> = carried.iter().filter(|t| t.records > 0).collect();
        let records: u64 = with.iter().map(|t| t.records).sum();
        let bytes = with.iter().fold(0u64, |a, t| {
            a.saturating_add(t.sent_bytes).saturating_add(t.recv_bytes)
        });
        let plural = if records == 1 { "" } else { "s" };
        let _ = write!(
            s,
            "; {} with plaintext: {records} record{plural}, ",
            with.len()
        );
        push_bytes_exact(s, bytes);
        s.push('\n');
    }
}

impl ConnKey {
    /// Whether the row is a socket's (not the plaintext of a TLS object whose socket is not
    /// known).
    fn sock_is_socket(&self) -> bool {
        !matches!(self.sock, SockId::TlsObject(_))
    }
}

fn or_unknown(e: &Option<Endpoint>) -> String {
    e.as_ref()
        .map_or_else(|| "?".to_string(), Endpoint::to_string)
}

/// [`human_bytes`], followed by the exact count when the unit is not bytes:
/// `78 B`, `1.0 GiB (1073741824 B)`.
fn push_bytes_exact(s: &mut String, n: u64) {
    s.push_str(&human_bytes(n));
    if n >= 1024 {
        let _ = write!(s, " ({n} B)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Call, SocketMeta, Task};
    use crate::trace::assemble::lost_event;
    use agent_common::sys;
    use bytes::Bytes;

    fn ep(s: &str) -> Option<Endpoint> {
        Some(Endpoint::Inet(s.parse().unwrap()))
    }

    fn data_ev(
        pid: u32,
        fd: i32,
        sk: u64,
        dir: Direction,
        ret: i64,
        payload: &'static [u8],
        addr: Option<&str>,
    ) -> Event {
        Event {
            ts_ns: 0,
            task: Task {
                pid,
                tid: pid,
                comm: "curl".into(),
            },
            call: Call::Syscall(if dir == Direction::Send {
                sys::SENDTO
            } else {
                sys::RECVFROM
            }),
            fd,
            ret,
            sock: Some(SocketMeta {
                sk,
                ino: 1,
                transport: Transport::Tcp,
                local: ep("127.0.0.1:40112"),
                remote: ep("127.0.0.1:8000"),
            }),
            detail: Detail::Data {
                dir,
                total: ret.max(0) as u64,
                payload: Bytes::from_static(payload),
                truncated: false,
                addr: addr.map(|a| a.parse().unwrap()),
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
    fn one_connection() {
        let mut s = Summary::new();
        s.add(&data_ev(4242, 5, 0xa, Direction::Send, 78, b"GET", None));
        s.add(&data_ev(4242, 5, 0xa, Direction::Recv, 500, b"HTTP", None));
        s.add(&data_ev(4242, 5, 0xa, Direction::Recv, 12, b"", None));
        s.add(&data_ev(4242, 5, 0xa, Direction::Recv, -11, b"", None));
        let mut close = data_ev(4242, 5, 0xa, Direction::Send, 0, b"", None);
        close.call = Call::Syscall(sys::CLOSE);
        close.detail = Detail::Sock {
            args: [0; 4],
            addr: None,
        };
        s.add(&close);
        s.add(&lost_event(0, 12, 34567));
        assert_eq!(
            *s.totals(),
            Totals {
                events: 5,
                lost_events: 12,
                lost_bytes: 34567,
                sent_bytes: 78,
                recv_bytes: 512,
                captured_bytes: 7,
                truncated_calls: 0,
                untracked_connections: 0,
            }
        );
        assert_eq!(
            s.connections(),
            &[Connection {
                key: ConnKey {
                    pid: 4242,
                    sock: SockId::Sk { sk: 0xa, ino: 1 },
                    transport: Some(Transport::Tcp),
                    local: ep("127.0.0.1:40112"),
                    remote: ep("127.0.0.1:8000"),
                },
                comm: "curl".into(),
                fd: 5,
                sent_bytes: 78,
                recv_bytes: 512,
                send_calls: 1,
                recv_calls: 3,
                errors: 1,
            }]
        );
        assert_eq!(
            s.render(),
            "capagent: 5 events, 12 lost (34567 bytes)\n\
             curl[4242] fd 5 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  sent 78 B  recv 512 B\n"
        );
    }

    #[test]
    fn separate_connections() {
        let mut s = Summary::new();
        s.add(&data_ev(1, 5, 0xa, Direction::Send, 10, b"", None));
        // Other process, same socket (inherited fd): another row.
        s.add(&data_ev(2, 5, 0xa, Direction::Send, 20, b"", None));
        // Datagram peers: one row each.
        s.add(&data_ev(
            1,
            6,
            0xb,
            Direction::Send,
            30,
            b"",
            Some("10.0.0.1:53"),
        ));
        s.add(&data_ev(
            1,
            6,
            0xb,
            Direction::Send,
            40,
            b"",
            Some("10.0.0.2:53"),
        ));
        s.add(&data_ev(
            1,
            6,
            0xb,
            Direction::Recv,
            50,
            b"",
            Some("10.0.0.1:53"),
        ));
        // Unknown socket: by fd.
        let mut e = data_ev(1, 7, 0, Direction::Recv, 2048, b"", None);
        e.sock = None;
        s.add(&e);
        let rows: Vec<_> = s
            .connections()
            .iter()
            .map(|c| {
                (
                    c.key.pid,
                    c.key.sock,
                    c.key.remote.clone(),
                    c.sent_bytes,
                    c.recv_bytes,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (
                    1,
                    SockId::Sk { sk: 0xa, ino: 1 },
                    ep("127.0.0.1:8000"),
                    10,
                    0
                ),
                (
                    2,
                    SockId::Sk { sk: 0xa, ino: 1 },
                    ep("127.0.0.1:8000"),
                    20,
                    0
                ),
                (1, SockId::Sk { sk: 0xb, ino: 1 }, ep("10.0.0.1:53"), 30, 50),
                (1, SockId::Sk { sk: 0xb, ino: 1 }, ep("10.0.0.2:53"), 40, 0),
                (1, SockId::Fd(7), None, 0, 2048),
            ]
        );
        assert_eq!(
            s.render(),
            "capagent: 6 events, 0 lost\n\
             curl[1] fd 5 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  sent 10 B  recv 0 B\n\
             curl[2] fd 5 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  sent 20 B  recv 0 B\n\
             curl[1] fd 6 tcp 127.0.0.1:40112 -> 10.0.0.1:53  sent 30 B  recv 50 B\n\
             curl[1] fd 6 tcp 127.0.0.1:40112 -> 10.0.0.2:53  sent 40 B  recv 0 B\n\
             curl[1] fd 7  sent 0 B  recv 2.0 KiB (2048 B)\n"
        );
    }

    #[test]
    fn unix_and_unknown_ends() {
        let mut s = Summary::new();
        let mut e = data_ev(9, 3, 0xc, Direction::Send, 2, b"hi", None);
        e.task.comm = "app".into();
        e.sock = Some(SocketMeta {
            sk: 0xc,
            ino: 2,
            transport: Transport::UnixStream,
            local: None,
            remote: Some(Endpoint::Unix("/run/app.sock".into())),
        });
        s.add(&e);
        assert_eq!(
            s.render(),
            "capagent: 1 events, 0 lost\n\
             app[9] fd 3 unix-stream ? -> unix:/run/app.sock  sent 2 B  recv 0 B\n"
        );
    }

    /// A socket freed and its `sk` handed to the next one the process opens, with the same
    /// endpoints (a client connecting twice to one Unix socket path): two sockets, two rows.
    /// The inode tells them apart; unknown (0), the `sk` alone does, as before.
    #[test]
    fn reused_sk_is_another_connection() {
        let unix = |ino, dir, n| {
            let mut e = data_ev(9, 3, 0xc, dir, n, b"", None);
            e.task.comm = "app".into();
            e.sock = Some(SocketMeta {
                sk: 0xc,
                ino,
                transport: Transport::UnixStream,
                local: None,
                remote: Some(Endpoint::Unix("/run/app.sock".into())),
            });
            e
        };
        let mut s = Summary::new();
        s.add(&unix(100, Direction::Send, 2));
        s.add(&unix(100, Direction::Recv, 3));
        s.add(&unix(101, Direction::Send, 5));
        s.add(&unix(100, Direction::Recv, 7));
        let rows: Vec<_> = s
            .connections()
            .iter()
            .map(|c| (c.key.sock, c.sent_bytes, c.recv_bytes))
            .collect();
        assert_eq!(
            rows,
            [
                (SockId::Sk { sk: 0xc, ino: 100 }, 2, 10),
                (SockId::Sk { sk: 0xc, ino: 101 }, 5, 0),
            ]
        );
        assert_eq!(
            s.render(),
            "capagent: 4 events, 0 lost\n\
             app[9] fd 3 unix-stream ? -> unix:/run/app.sock  sent 2 B  recv 10 B\n\
             app[9] fd 3 unix-stream ? -> unix:/run/app.sock  sent 5 B  recv 0 B\n"
        );
        let mut s = Summary::new();
        s.add(&unix(0, Direction::Send, 2));
        s.add(&unix(0, Direction::Send, 5));
        assert_eq!(s.connections().len(), 1);
        assert_eq!(s.connections()[0].sent_bytes, 7);
    }

    #[test]
    fn empty() {
        let s = Summary::new();
        assert_eq!(s.render(), "capagent: 0 events, 0 lost\n");
        assert_eq!(*s.totals(), Totals::default());
    }

    #[test]
    fn render_is_capped() {
        let mut s = Summary::new();
        for sk in 0..RENDER_MAX_ROWS as u64 + 3 {
            s.add(&data_ev(1, 5, sk + 1, Direction::Send, 1, b"", None));
        }
        let r = s.render();
        assert_eq!(r.lines().count(), 1 + RENDER_MAX_ROWS + 1);
        assert!(r.ends_with("... and 3 more connections\n"));
    }

    #[test]
    fn exact_bytes_after_human_units() {
        let mut s = Summary::new();
        let mut e = data_ev(7, 3, 0xd, Direction::Send, 1 << 30, b"", None);
        s.add(&e);
        e.ret = 1023;
        e.detail = match e.detail {
            Detail::Data { .. } => data_ev(7, 3, 0xd, Direction::Recv, 1023, b"", None).detail,
            d => d,
        };
        s.add(&e);
        assert_eq!(
            s.render(),
            "capagent: 2 events, 0 lost\n\
             curl[7] fd 3 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  sent 1.0 GiB (1073741824 B)  recv 1023 B\n"
        );
    }

    #[test]
    fn many_datagram_peers_one_socket() {
        let mut s = Summary::new();
        let peers = SCAN_MAX as u64 * 3;
        // Interleaved: every peer several times, in two rounds, with another socket between.
        for round in 0..3u64 {
            for p in 0..peers {
                let addr = format!("10.0.0.{}:53", p + 1);
                let e = data_ev(
                    1,
                    6,
                    0xb,
                    Direction::Send,
                    (round + 1) as i64,
                    b"",
                    Some(&addr),
                );
                s.add(&e);
                s.add(&data_ev(1, 5, 0xa, Direction::Recv, 1, b"", None));
            }
        }
        let rows = s.connections();
        assert_eq!(rows.len(), peers as usize + 1);
        assert_eq!(rows[1].key.sock, SockId::Sk { sk: 0xa, ino: 1 });
        assert_eq!(rows[1].recv_bytes, 3 * peers);
        for (p, c) in rows
            .iter()
            .filter(|c| c.key.sock == SockId::Sk { sk: 0xb, ino: 1 })
            .enumerate()
        {
            assert_eq!(c.key.remote, ep(&format!("10.0.0.{}:53", p + 1)));
            assert_eq!((c.sent_bytes, c.send_calls), (6, 3));
        }
        // Same socket, another process: its own rows.
        s.add(&data_ev(
            2,
            6,
            0xb,
            Direction::Send,
            1,
            b"",
            Some("10.0.0.1:53"),
        ));
        assert_eq!(s.connections().len(), peers as usize + 2);
    }

    #[test]
    fn tls_connections() {
        use crate::tls_hello::tests::{CURL_HELLO, PYTHON_HELLO};
        let hello = |s: &mut Summary, pid, sk, payload: &'static [u8]| {
            s.add(&data_ev(
                pid,
                5,
                sk,
                Direction::Send,
                payload.len() as i64,
                payload,
                None,
            ));
        };
        let plain = |pid, sk: Option<u64>, dir, n: i64| {
            let mut e = data_ev(pid, 5, sk.unwrap_or(0), dir, n, b"GET", None);
            e.call = Call::Tls {
                func: agent_common::tls_fn::SSL_WRITE,
                conn: 0x55d0,
            };
            if sk.is_none() {
                e.sock = None;
                e.fd = -1;
            }
            e
        };
        // Without --tls: the connections that began with a ClientHello, their SNI once.
        let mut s = Summary::new();
        hello(&mut s, 1, 0xa, CURL_HELLO);
        s.add(&data_ev(
            1,
            5,
            0xa,
            Direction::Recv,
            100,
            b"\x16\x03\x03",
            None,
        ));
        hello(&mut s, 2, 0xb, PYTHON_HELLO);
        // A failed call first, then the ClientHello: still its first bytes.
        s.add(&data_ev(3, 5, 0xc, Direction::Recv, -11, b"", None));
        hello(&mut s, 3, 0xc, CURL_HELLO);
        // Plain HTTP; a ClientHello later in a stream is not its first bytes.
        s.add(&data_ev(4, 5, 0xd, Direction::Send, 3, b"GET", None));
        hello(&mut s, 4, 0xd, CURL_HELLO);
        assert_eq!(
            s.render(),
            "capagent: 7 events, 0 lost\n\
             curl[1] fd 5 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  sent 517 B  recv 100 B  tls localhost\n\
             curl[2] fd 5 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  sent 517 B  recv 0 B  tls localhost\n\
             curl[3] fd 5 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  sent 517 B  recv 0 B  tls localhost\n\
             curl[4] fd 5 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  sent 520 B  recv 0 B\n\
             capagent: 3 connections carried TLS (SNI: localhost); --tls shows their plaintext\n"
        );
        assert_eq!(
            s.connection_tls(0).unwrap().hello.as_ref().unwrap().alpn,
            ["h2", "http/1.1"]
        );
        // With --tls: the plaintext on the connection's row, not in its socket bytes; the
        // plaintext of an unknown socket on a row of its own.
        let mut s = Summary::new();
        s.set_tls(true);
        hello(&mut s, 1, 0xa, CURL_HELLO);
        s.add(&plain(1, Some(0xa), Direction::Send, 78));
        s.add(&plain(1, Some(0xa), Direction::Recv, 2000));
        s.add(&plain(1, None, Direction::Recv, 10));
        hello(&mut s, 2, 0xb, PYTHON_HELLO);
        assert_eq!(s.totals().sent_bytes, 2 * 517);
        assert_eq!(s.totals().recv_bytes, 0);
        assert_eq!(
            s.render(),
            "capagent: 5 events, 0 lost\n\
             curl[1] fd 5 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  sent 517 B  recv 0 B  tls localhost: plaintext sent 78 B  recv 2.0 KiB (2000 B) (2 records)\n\
             curl[1] fd -1 tls object 0x55d0  tls: plaintext sent 0 B  recv 10 B (1 record)\n\
             curl[2] fd 5 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  sent 517 B  recv 0 B  tls localhost\n\
             capagent: 3 connections carried TLS (SNI: localhost); 2 with plaintext: 3 records, 2.0 KiB (2088 B)\n"
        );
        // --tls-only: the ciphertext hidden, no socket bytes said (they were not 0).
        let mut s = Summary::new();
        s.set_tls(true);
        s.add(&plain(1, Some(0xa), Direction::Send, 78));
        assert_eq!(
            s.render(),
            "capagent: 1 events, 0 lost\n\
             curl[1] fd 5 tcp 127.0.0.1:40112 -> 127.0.0.1:8000  tls: plaintext sent 78 B  recv 0 B (1 record)\n\
             capagent: 1 connection carried TLS; 1 with plaintext: 1 record, 78 B\n"
        );
    }
}
