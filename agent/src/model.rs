//! The records every capagent mode produces (trace, and the recording proxies), independent
//! of where they came from. Decoders turn kernel records into these; outputs (text, JSON lines,
//! pcapng) turn these into bytes.

pub mod packet;

use std::net::SocketAddr;

use bytes::Bytes;

/// Where a record came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Process name (the thread group leader's comm, or the thread's when unknown).
    pub comm: String,
}

/// One end of a socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Inet(SocketAddr),
    /// A Unix socket path; abstract names start with '@'; unnamed sockets are "".
    Unix(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Inet(a) => write!(f, "{a}"),
            Endpoint::Unix(p) if p.is_empty() => write!(f, "unix:(unnamed)"),
            Endpoint::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

/// Transport of a socket, as far as capagent distinguishes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
    UnixStream,
    UnixDgram,
    UnixSeqpacket,
    Other {
        family: u16,
        sock_type: u16,
        protocol: u16,
    },
}

impl Transport {
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::UnixStream => "unix-stream",
            Transport::UnixDgram => "unix-dgram",
            Transport::UnixSeqpacket => "unix-seqpacket",
            Transport::Other { .. } => "other",
        }
    }
}

/// What the kernel told about the socket the call used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketMeta {
    /// Kernel `struct sock` address: identity of the socket while it is open.
    pub sk: u64,
    /// Socket inode number.
    pub ino: u64,
    pub transport: Transport,
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Send,
    Recv,
}

/// The part of a record that depends on what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    /// socket, connect, bind, listen, accept, accept4, close, shutdown.
    Sock {
        /// Raw syscall arguments as the kernel record carried them (socketpair: domain, type,
        /// protocol, and the fds it made in the fourth: see [`Event::socketpair_fds`]).
        args: [u64; 4],
        /// The sockaddr argument (connect/bind) or the accepted peer (accept).
        addr: Option<Endpoint>,
    },
    /// The payload of one send/recv-type call (or one message of sendmmsg/recvmmsg).
    Data {
        dir: Direction,
        /// Bytes the call transferred (its return value; per message for mmsg).
        total: u64,
        /// Bytes captured (a prefix of the transferred bytes).
        payload: Bytes,
        /// Fewer bytes captured than transferred (snaplen, or records lost).
        truncated: bool,
        /// Datagram address given or received with the call (sendto/recvfrom, msg_name).
        addr: Option<SocketAddr>,
        msg_index: u32,
    },
    /// A traced process forked a child that is traced too.
    Fork { child_pid: u32 },
    /// A traced process called exec.
    Exec,
    /// A traced process exited.
    Exit,
    /// The kernel could not hand over records because the ring buffer was full.
    Lost { events: u64, bytes: u64 },
    /// A proxy began relaying a client's connection (TCP) or datagrams (UDP), or failed to
    /// reach the target (`ret` is then the negative errno). The event's `sock` holds the client
    /// as `local` and the target as resolved as `remote`; `fd` is the proxy's connection
    /// number and `sock.sk` the same number, so later `Data` and `close` records of the
    /// connection carry the same `sock`.
    Open {
        /// What asked for the connection: `forward`, `socks4 connect`, `socks5 bind`,
        /// `socks5 udp-associate`, `http`, `http connect`, ...
        proxy: String,
        /// The proxy's listening address the client connected to.
        listen: Option<SocketAddr>,
        /// The target as requested: `host:port` or `ip:port` (`[v6]:port`).
        target: String,
        /// The address the proxy connected to (None: not resolved, or reached through an
        /// upstream proxy that resolved it).
        resolved: Option<SocketAddr>,
        /// The proxy intercepted the connection's TLS (`--tls`): what each side negotiated,
        /// or why interception failed. None: not intercepted.
        tls: Option<Box<TlsIntercepted>>,
    },
    /// A proxy's `--replace` rule changed bytes of a relayed connection (the data record
    /// that follows in that direction carries the bytes as sent).
    Edit {
        dir: Direction,
        /// The rule as written.
        rule: String,
        /// Where the replacement starts in the direction's stream as the rule passed it on
        /// (as sent, for the last rule), counted from the connection's first byte.
        offset: u64,
        /// The bytes matched.
        before: Bytes,
        /// What replaced them.
        after: Bytes,
    },
    /// `--decode-bodies`: a compressed HTTP body of a relayed connection, decoded (nothing
    /// was changed: the data records carry the body as relayed).
    Decoded {
        dir: Direction,
        /// Where the body's data start in the direction's stream as sent, counted from the
        /// connection's first byte.
        offset: u64,
        /// The content codings undone, as `Content-Encoding` lists them (`gzip`, `br, gzip`).
        encoding: String,
        /// The decoded body, at most `--decode-bodies-max` bytes.
        payload: Bytes,
        /// The decoded body is longer than `payload` (cut at `--decode-bodies-max`).
        truncated: bool,
    },
}

/// What a proxy's TLS interception (`--tls`) learnt of a connection: the client's side
/// (capagent's certificate), the real server's side, and the outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsIntercepted {
    pub client: TlsLeg,
    pub server: TlsLeg,
    /// The real server's certificate subject (`CN=example.org, O=...`), when it sent one;
    /// recorded with `--insecure` too.
    pub server_cert: Option<String>,
    /// Why interception failed (the server's certificate did not verify, a handshake
    /// failed); None when both handshakes succeeded.
    pub error: Option<String>,
    /// The connection was not intercepted but relayed untouched (its records are the
    /// ciphertext), and why: `pattern P` (`--tls-passthrough`) or the client rejected
    /// capagent's certificate before. Only `client.sni` is known then.
    pub passthrough: Option<String>,
}

/// One TLS leg of an intercepted connection, as far as its handshake went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsLeg {
    /// The server name asked for (the client's SNI, sent on to the server).
    pub sni: Option<String>,
    /// The application protocol negotiated (`h2`, `http/1.1`).
    pub alpn: Option<String>,
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: Option<String>,
    /// The cipher suite (`TLS13_AES_128_GCM_SHA256`).
    pub cipher: Option<String>,
}

/// What made a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// A socket syscall or process event traced in the kernel (`agent_common::sys` id).
    Syscall(u16),
    /// A recording proxy's step on one of its connections (the event's `fd` is the
    /// connection number).
    Relay(RelayStep),
    /// A TLS library call (`agent_common::tls_fn` id) and the library's connection object
    /// (`SSL *`, `gnutls_session_t`, Go `*tls.Conn`).
    Tls { func: u16, conn: u64 },
}

/// One step of a recording proxy (or of interception) on a connection it relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelayStep {
    /// The proxy began relaying the connection, or failed to reach the target
    /// ([`Detail::Open`]).
    Open,
    /// Bytes relayed ([`Detail::Data`]): `Send` from the client to the target, `Recv` back.
    Data(Direction),
    /// One side finished sending: `Send` the client (shown as `shutdown(SHUT_WR)`), `Recv`
    /// the target (shown as a 0-byte receive).
    Eof(Direction),
    /// The proxy closed the connection.
    Close,
    /// A `--replace` rule changed bytes relayed in this direction ([`Detail::Edit`]).
    Edit(Direction),
    /// A compressed HTTP body relayed in this direction, decoded ([`Detail::Decoded`]).
    Decoded(Direction),
}

impl RelayStep {
    /// The syscall whose record shape shows this step in text, JSON and pcapng (the formats
    /// proxies have always written: a relay looks like the socket calls of a client).
    pub const fn shown_as(self) -> u16 {
        use agent_common::sys;
        match self {
            RelayStep::Open => sys::CONNECT,
            RelayStep::Data(Direction::Send)
            | RelayStep::Edit(Direction::Send)
            | RelayStep::Decoded(Direction::Send) => sys::SENDTO,
            RelayStep::Data(Direction::Recv)
            | RelayStep::Eof(Direction::Recv)
            | RelayStep::Edit(Direction::Recv)
            | RelayStep::Decoded(Direction::Recv) => sys::RECVFROM,
            RelayStep::Eof(Direction::Send) => sys::SHUTDOWN,
            RelayStep::Close => sys::CLOSE,
        }
    }
}

impl Call {
    /// The id outputs show the call as: the syscall's, the one a relay step is shown as
    /// ([`RelayStep::shown_as`]), or the TLS function's (`agent_common::sys::name` and
    /// `is_send` know those too).
    pub const fn shown_as(self) -> u16 {
        match self {
            Call::Syscall(id) => id,
            Call::Relay(step) => step.shown_as(),
            Call::Tls { func, .. } => func,
        }
    }

    /// The name outputs show: `connect`, `sendto`, `SSL_write`...
    pub const fn name(self) -> &'static str {
        agent_common::sys::name(self.shown_as())
    }

    /// Whether this is syscall `id` traced in the kernel.
    pub fn is_syscall(self, id: u16) -> bool {
        self == Call::Syscall(id)
    }

    /// Whether a receive of 0 bytes by this call is the peer's end of the stream: always for
    /// a syscall or a relay step, for some TLS reads only ([`agent_common::tls_fn::zero_is_eof`]:
    /// `SSL_read_ex` returning 0 may just mean no data was ready).
    pub const fn zero_read_is_eof(self) -> bool {
        match self {
            Call::Tls { func, .. } => agent_common::tls_fn::zero_is_eof(func),
            Call::Syscall(_) | Call::Relay(_) => true,
        }
    }
}

/// One record: a syscall on a socket, a process event, a proxy's relay step, a TLS library
/// call, or a loss report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub task: Task,
    /// What made the record.
    pub call: Call,
    pub fd: i32,
    /// Return value, negative errno on failure.
    pub ret: i64,
    pub sock: Option<SocketMeta>,
    pub detail: Detail,
    /// The payload of this syscall record is TLS ciphertext: its connection is known to carry
    /// TLS (it began with a ClientHello, or a TLS library's plaintext was seen on it).
    pub tls_ciphertext: bool,
    /// A TLS read that moved nothing because the peer ended the stream, as the library said
    /// (`flags::TLS_EOF`): where its return value alone does not tell (`SSL_read_ex`'s 0),
    /// the pcapng still writes the peer's FIN when the ciphertext records, whose 0-byte read
    /// would tell, are left out (`--tls-only`).
    pub tls_eof: bool,
    /// The payload of this relay record is TLS plaintext capagent decrypted itself (a proxy's
    /// `--tls` interception: the connection's `open` record says how).
    pub tls_plaintext: bool,
    /// The call had not returned when its process exited (a Go TLS `Write` whose write
    /// syscall was made, `agent_common::flags::UNFINISHED`): the payload is the whole buffer
    /// the call was given, `ret` its length, not a returned value.
    pub unfinished: bool,
    /// `trace --stack`: the user-space call stack of the calling thread at the call's entry,
    /// innermost frame first (None without `--stack`, or when its stack was dropped).
    pub stack: Option<Vec<Frame>>,
}

impl Event {
    /// The name the outputs show for the call (see [`Call::name`]).
    pub fn syscall_name(&self) -> &'static str {
        self.call.name()
    }

    /// The id the outputs show the call as (see [`Call::shown_as`]).
    pub fn shown_as(&self) -> u16 {
        self.call.shown_as()
    }

    /// The two fds a successful socketpair made (`sv[0]`, `sv[1]`); None for any other
    /// record, a failed call, or an array the kernel could not read.
    pub fn socketpair_fds(&self) -> Option<[i32; 2]> {
        match &self.detail {
            Detail::Sock { args, .. }
                if self.call.is_syscall(agent_common::sys::SOCKETPAIR)
                    && self.ret == 0
                    && args[3] != u64::MAX =>
            {
                Some([args[3] as u32 as i32, (args[3] >> 32) as u32 as i32])
            }
            _ => None,
        }
    }
}

/// One frame of a user-space call stack (`trace --stack`), innermost first: where the
/// thread was, symbolized as far as the binaries allow.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Frame {
    /// The instruction address in the process (for a caller frame: its return address).
    pub addr: u64,
    /// The mapped file the address is in (its path as the process saw it), if any.
    pub module: Option<std::sync::Arc<str>>,
    /// The function (demangled), if a symbol covers the address.
    pub function: Option<std::sync::Arc<str>>,
    /// `addr` minus the function's start (0 when there is no function).
    pub offset: u64,
    /// Source file and line, when debug info covers the address.
    pub file: Option<std::sync::Arc<str>>,
    pub line: Option<u32>,
}
