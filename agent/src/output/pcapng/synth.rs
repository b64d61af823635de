//! Synthetic packets from socket events: each TCP connection becomes a TCP stream with a
//! handshake, data segments with consistent sequence numbers, and a FIN or RST; each UDP
//! send/recv becomes one datagram. Unix sockets use loopback addresses derived from the inode
//! (see [`unix_ends`]). A proxy's `open` record starts the stream between its client and the
//! target, so a relayed connection reads as if the client had talked to the target directly.
//!
//! With `trace --tls`, a TCP connection whose plaintext a TLS library handed over is written
//! as its plaintext stream: the TLS records ([`Call::Tls`]) are its data segments, with
//! `decrypted by LIB (FUNCTION)` in their comment, and its ciphertext records are left out.
//! Which connections those are is known only once their first plaintext record comes, after
//! the TLS handshake: the ciphertext records of a connection known to carry TLS
//! ([`Event::tls_ciphertext`]) are held back until then, and written after all when the
//! connection ends first, when more than [`HOLD_MAX_BYTES`] are held, or when the oldest
//! held is [`HOLD_MAX_NS`] older than the event at hand (a TLS connection whose library is
//! not hooked); such a stream stays ciphertext (its later plaintext records are left out:
//! the two do not mix in one TCP stream). TLS records whose socket is not known are not
//! written (no stream to put them in).
//!
//! Go's `crypto/tls` records may come late: Go may run the goroutine to the RET of
//! `(*Conn).Write` only after the connection's later reads and even its close were recorded
//! (the record is right, its place in the order is not). So the close of a stream whose
//! plaintext came from Go is held back ([`Synth::closing`]) until an event [`CLOSE_HOLD_NS`]
//! later (event time), another record of the same socket that is not a Go plaintext record,
//! the process's exit or the end of the output: a late `Write` record coming meanwhile is
//! written before the FIN, in the stream it belongs to (not a second stream with a new SYN).
//!
//! A call whose payload was cut (snap length, lost records) becomes packets cut as tcpdump
//! cuts them: their IP/TCP/UDP headers carry the real lengths and the sequence numbers advance
//! by the real length, while only the bytes kept are in the capture ([`Packet::orig_len`] is
//! the whole packet's length), so Wireshark flags them "Packet size limited during capture"
//! and its TCP analysis sees no lost segment.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_common::sys;
use etherparse::PacketBuilder;

use crate::model::{Call, Detail, Direction, Endpoint, Event, SocketMeta, Transport};

/// Largest TCP payload per synthetic segment.
pub const SEGMENT_MAX: usize = 65000;
/// Largest UDP payload in a synthetic datagram (what fits in an IPv4 packet with headers).
pub const DATAGRAM_MAX: usize = 65000;
/// Initial sequence number of the connecting side.
pub const CLIENT_ISN: u32 = 1_000;
/// Initial sequence number of the accepting side.
pub const SERVER_ISN: u32 = 1_000_000;
const WINDOW: u16 = 65535;
const TTL: u8 = 64;
const EINPROGRESS: i64 = -115;
/// Most ciphertext bytes held back per TLS connection while its plaintext may still come.
pub const HOLD_MAX_BYTES: usize = 256 * 1024;
/// Longest a TLS connection's ciphertext is held back (event time): its plaintext comes
/// right after the handshake when its library is hooked.
pub const HOLD_MAX_NS: u64 = 2_000_000_000;
/// Longest the close of a stream of Go plaintext is held back for a late `Write` record
/// (event time; Go runs a goroutine to its RET within a few scheduler ticks).
pub const CLOSE_HOLD_NS: u64 = 1_000_000_000;

/// One synthetic packet: a raw IPv4/IPv6 packet (LINKTYPE_RAW) and its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub ts_ns: u64,
    /// The IP packet as captured: all of it, or its first bytes when its payload was cut.
    pub data: Vec<u8>,
    /// Length of the whole packet (more than `data.len()` when its payload was cut).
    pub orig_len: u32,
    /// Send (outbound) or recv (inbound) as seen by the traced process.
    pub dir: Direction,
    pub comment: String,
}

/// A TCP stream being synthesised.
#[derive(Debug)]
struct Stream {
    local: SocketAddr,
    remote: SocketAddr,
    /// Next sequence number local→remote and remote→local.
    local_next: u32,
    remote_next: u32,
    local_fin: bool,
    remote_fin: bool,
    /// Extra comment text (placeholder endpoints, Unix path).
    note: String,
}

/// A stream's socket: (pid, `sk`, socket inode). The kernel may free a socket and hand its
/// `sk` to one opened meanwhile (a close record comes at the syscall's exit): the inode
/// tells the two apart (0 when unknown: then the `sk` alone does).
type Key = (u32, u64, u64);

fn stream_key(pid: u32, meta: &SocketMeta) -> Key {
    (pid, meta.sk, meta.ino)
}

/// Turns events into packets; keeps the state of open TCP streams.
#[derive(Default)]
pub struct Synth {
    streams: HashMap<Key, Stream>,
    /// Sockets whose connect the trace saw (the local side is the client), with its time.
    connected: HashMap<Key, u64>,
    /// (pid, fd) of accepted connections (the remote side is the client).
    accepted: HashSet<(u32, i32)>,
    /// (pid, fd) → socket, for close events without socket metadata.
    fds: HashMap<(u32, i32), Key>,
    /// Ciphertext records of TLS connections held back (see the module documentation).
    held: HashMap<Key, Held>,
    /// TLS connections written as their plaintext: their ciphertext is left out.
    plaintext: HashSet<Key>,
    /// TLS connections whose ciphertext was written: their plaintext is left out.
    ciphertext: HashSet<Key>,
    /// TLS connections whose last ciphertext read (a syscall) would have blocked (true) or
    /// not: what a TLS read of 0 bytes after it means (see [`Synth::tls_read_eof`]).
    recv_blocked: HashMap<Key, bool>,
    /// Streams whose plaintext came from Go's `crypto/tls`: their close is held back.
    go: HashSet<Key>,
    /// The close records held back of Go plaintext streams (see the module documentation).
    closing: HashMap<Key, Event>,
    /// `--replace` edits and `--decode-bodies` texts of a proxy's stream not yet written: the
    /// comment of the stream's next data packet (the one carrying the changed bytes, or the
    /// end of the decoded body) says them.
    edits: HashMap<Key, String>,
}

/// The ciphertext records held back of one TLS connection.
#[derive(Debug)]
struct Held {
    since_ns: u64,
    bytes: usize,
    events: Vec<Event>,
}

/// `comment`, then the frames of the event's call stack (`trace --stack`), one a line.
/// Most bytes of `edit` text one packet comment gathers (a pcapng option is at most 64 KiB).
const MAX_EDIT_COMMENTS: usize = 32 * 1024;

/// One side of an edit in a packet comment: its first 1 KiB, escaped.
fn edit_side(b: &[u8]) -> String {
    const MAX: usize = 1024;
    let mut t = crate::output::escape::escape(&b[..b.len().min(MAX)]);
    if b.len() > MAX {
        let _ = write!(t, "... ({} bytes)", b.len());
    }
    t
}

fn with_stack(comment: &str, ev: &Event) -> String {
    let mut c = comment.to_string();
    for (i, f) in ev.stack.iter().flatten().enumerate() {
        c.push_str("\n    ");
        crate::output::text::frame_line(&mut c, i, f);
    }
    c
}

/// The comment every packet of an event carries.
fn task_comment(ev: &Event) -> String {
    format!(
        "pid={} tid={} comm={} syscall={} fd={}",
        ev.task.pid,
        ev.task.tid,
        ev.task.comm,
        ev.syscall_name(),
        ev.fd
    )
}

/// Synthetic endpoints of a Unix socket: `127.1.X.Y:P` (this socket) and `127.2.X.Y:P` (its
/// peer), X.Y being the low 16 bits of the socket inode and P = 1024 + (inode >> 16) % 64512.
pub fn unix_ends(ino: u64) -> (SocketAddr, SocketAddr) {
    let x = ((ino >> 8) & 0xff) as u8;
    let y = (ino & 0xff) as u8;
    let port = 1024 + ((ino >> 16) % 64512) as u16;
    (
        SocketAddr::new(Ipv4Addr::new(127, 1, x, y).into(), port),
        SocketAddr::new(Ipv4Addr::new(127, 2, x, y).into(), port),
    )
}

fn inet(e: &Option<Endpoint>) -> Option<SocketAddr> {
    match e {
        Some(Endpoint::Inet(a)) => Some(*a),
        _ => None,
    }
}

fn unspecified_like(other: Option<SocketAddr>) -> SocketAddr {
    match other {
        Some(SocketAddr::V6(_)) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
        _ => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
    }
}

/// The endpoints a socket's packets use, and a note on what is synthetic.
fn ends(meta: &SocketMeta, remote_hint: Option<SocketAddr>) -> (SocketAddr, SocketAddr, String) {
    match meta.transport {
        Transport::UnixStream | Transport::UnixDgram | Transport::UnixSeqpacket => {
            let (l, r) = unix_ends(meta.ino);
            let path = |e: &Option<Endpoint>| match e {
                Some(Endpoint::Unix(p)) if !p.is_empty() => p.clone(),
                Some(Endpoint::Unix(_)) => "(unnamed)".to_string(),
                _ => "(unknown)".to_string(),
            };
            let note = format!(
                " unix local={} remote={} ino={} (addresses synthetic)",
                path(&meta.local),
                path(&meta.remote),
                meta.ino
            );
            (l, r, note)
        }
        _ => {
            let l = inet(&meta.local);
            let r = remote_hint.or_else(|| inet(&meta.remote));
            let mut note = String::new();
            if l.is_none() {
                note.push_str(" local endpoint unknown (placeholder)");
            }
            if r.is_none() {
                note.push_str(" remote endpoint unknown (placeholder)");
            }
            let lv = l.unwrap_or_else(|| unspecified_like(r));
            let rv = r.unwrap_or_else(|| unspecified_like(l));
            (lv, rv, note)
        }
    }
}

/// Both addresses in one family: IPv4 ones become IPv4-mapped IPv6 when the other is IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let map = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) => SocketAddr::new(v4.to_ipv6_mapped().into(), s.port()),
        IpAddr::V6(_) => s,
    };
    match (a, b) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) | (SocketAddr::V6(_), SocketAddr::V4(_)) => {
            (map(a), map(b))
        }
        _ => (a, b),
    }
}

fn ip_builder(
    src: SocketAddr,
    dst: SocketAddr,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let (src, dst) = same_family(src, dst);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), TTL),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), TTL),
        _ => unreachable!("same_family"),
    }
}

/// TCP flags of a synthetic segment.
#[derive(Clone, Copy, Default)]
pub struct Flags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

/// A TCP segment as an IP packet; `ack` None leaves the ACK flag off.
pub fn tcp_packet(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: Option<u32>,
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = ip_builder(src, dst).tcp(src.port(), dst.port(), seq, WINDOW);
    if flags.syn {
        b = b.syn();
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    if flags.psh {
        b = b.psh();
    }
    if let Some(a) = ack {
        b = b.ack(a);
    }
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// A UDP datagram as an IP packet.
pub fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let b = ip_builder(src, dst).udp(src.port(), dst.port());
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// One's complement sum of `data` (RFC 1071), folded and complemented.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Makes `pkt`, an IP packet (TCP or UDP, no options or extension headers, as
/// [`tcp_packet`]/[`udp_packet`] build them) holding the first bytes of a payload `missing`
/// bytes longer, a packet cut by the snap length: its IP (and UDP) length fields count the
/// missing bytes, its IPv4 header checksum is recomputed and its TCP/UDP checksum, which
/// cannot be computed without the missing bytes, is zero. Returns the whole packet's length.
fn cut(pkt: &mut [u8], missing: usize) -> u32 {
    let whole = pkt.len() + missing;
    if missing == 0 {
        return whole as u32;
    }
    let (proto, transport) = match pkt[0] >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            pkt[2..4].copy_from_slice(&(whole as u16).to_be_bytes());
            pkt[10..12].fill(0);
            let sum = inet_checksum(&pkt[..ihl]);
            pkt[10..12].copy_from_slice(&sum.to_be_bytes());
            (pkt[9], ihl)
        }
        _ => {
            pkt[4..6].copy_from_slice(&((whole - 40) as u16).to_be_bytes());
            (pkt[6], 40)
        }
    };
    let t = &mut pkt[transport..];
    match proto {
        6 => t[16..18].fill(0),
        17 => {
            t[4..6].copy_from_slice(&((whole - transport) as u16).to_be_bytes());
            t[6..8].fill(0);
        }
        _ => {}
    }
    whole as u32
}

fn is_stream(t: Transport) -> bool {
    matches!(
        t,
        Transport::Tcp | Transport::UnixStream | Transport::UnixSeqpacket
    )
}

fn is_dgram(t: Transport) -> bool {
    matches!(t, Transport::Udp | Transport::UnixDgram)
}

impl Synth {
    pub fn new() -> Synth {
        Synth::default()
    }

    /// The packets `ev` stands for (none for most non-data events; with `trace --tls`, also
    /// ciphertext held back before, see the module documentation).
    pub fn packets(&mut self, ev: &Event) -> Vec<Packet> {
        let mut out = Vec::new();
        if !self.closing.is_empty() {
            self.close_held(ev, &mut out);
        }
        if !self.held.is_empty() {
            self.release_old(ev.ts_ns, &mut out);
        }
        if let Some(meta) = &ev.sock {
            self.fds
                .insert((ev.task.pid, ev.fd), stream_key(ev.task.pid, meta));
        }
        match &ev.detail {
            Detail::Sock { args, addr } => {
                if let Some(key) = self.key_of(ev) {
                    if ev.shown_as() == sys::CLOSE && self.go.contains(&key) {
                        // Written when a late Go `Write` record can no longer come.
                        self.closing.insert(key, ev.clone());
                        self.accepted.remove(&(ev.task.pid, ev.fd));
                        self.fds.remove(&(ev.task.pid, ev.fd));
                        return out;
                    }
                    if matches!(ev.shown_as(), sys::CLOSE | sys::SHUTDOWN) {
                        self.release(key, &mut out);
                    }
                    if ev.shown_as() == sys::CLOSE {
                        self.plaintext.remove(&key);
                        self.ciphertext.remove(&key);
                        self.recv_blocked.remove(&key);
                    }
                }
                self.sock_event(ev, args, addr, &mut out)
            }
            Detail::Open { .. } => {
                // A proxy's relayed connection: the client (local) connected to the target
                // (remote); its stream starts here.
                if ev.ret == 0
                    && let Some(meta) = &ev.sock
                    && is_stream(meta.transport)
                {
                    let key = stream_key(ev.task.pid, meta);
                    self.connected.insert(key, ev.ts_ns);
                    self.open(key, ev, meta, None, &mut out);
                }
            }
            Detail::Edit {
                rule,
                offset,
                before,
                after,
                ..
            } => {
                if let Some(meta) = &ev.sock {
                    let c = self.edits.entry(stream_key(ev.task.pid, meta)).or_default();
                    // (Each side shortened: a comment is at most 64 KiB, and the other
                    // outputs hold the whole edit.)
                    if c.len() < MAX_EDIT_COMMENTS {
                        let _ = write!(
                            c,
                            "; edited by capagent: {rule} at {offset}: {} -> {}",
                            edit_side(before),
                            edit_side(after)
                        );
                    }
                }
            }
            Detail::Decoded {
                offset,
                encoding,
                payload,
                truncated,
                ..
            } => {
                if let Some(meta) = &ev.sock {
                    let c = self.edits.entry(stream_key(ev.task.pid, meta)).or_default();
                    if c.len() < MAX_EDIT_COMMENTS {
                        let _ = write!(
                            c,
                            "; decoded by capagent (--decode-bodies): {encoding} body at {offset}, {} bytes{}: ",
                            payload.len(),
                            if *truncated { " (truncated)" } else { "" },
                        );
                        // The decoded text, as much as the comment's bound leaves room for.
                        let mut t = crate::output::escape::escape(payload);
                        let room = MAX_EDIT_COMMENTS.saturating_sub(c.len());
                        if t.len() > room {
                            let mut cut = room.saturating_sub(3);
                            while !t.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            t.truncate(cut);
                            t.push_str("...");
                        }
                        c.push_str(&t);
                    }
                }
            }
            Detail::Data { .. } => {
                let Some(meta) = &ev.sock else {
                    return out;
                };
                let key = stream_key(ev.task.pid, meta);
                if let Call::Tls { func, .. } = ev.call {
                    if self.ciphertext.contains(&key) || self.tls_read_of_nothing(ev, key) {
                        return out;
                    }
                    if agent_common::tls_fn::lib(func) == Some("go") {
                        self.go.insert(key);
                    }
                    self.plaintext.insert(key);
                    self.held.remove(&key);
                } else if ev.tls_ciphertext && !self.ciphertext.contains(&key) {
                    if let Detail::Data {
                        dir: Direction::Recv,
                        ..
                    } = ev.detail
                    {
                        self.recv_blocked
                            .insert(key, ev.ret == -libc::EAGAIN as i64);
                    }
                    if self.plaintext.contains(&key) {
                        // Left out, but for the peer's end of the stream (a 0-byte recv).
                        if ev.ret == 0 {
                            self.data(ev, &mut out);
                        }
                        return out;
                    }
                    self.hold(key, ev, &mut out);
                    return out;
                }
                self.data(ev, &mut out);
            }
            Detail::Exit => {
                // The kernel closes whatever the process left open.
                let pid = ev.task.pid;
                let closing: Vec<Key> = self
                    .closing
                    .keys()
                    .filter(|k| k.0 == pid)
                    .copied()
                    .collect();
                self.close_now(closing, &mut out);
                let held: Vec<Key> = self.held.keys().filter(|k| k.0 == pid).copied().collect();
                for k in held {
                    self.release(k, &mut out);
                }
                self.plaintext.retain(|k| k.0 != pid);
                self.ciphertext.retain(|k| k.0 != pid);
                self.recv_blocked.retain(|k, _| k.0 != pid);
                self.go.retain(|k| k.0 != pid);
                let keys: Vec<Key> = self
                    .streams
                    .keys()
                    .filter(|k| k.0 == pid)
                    .copied()
                    .collect();
                for k in keys {
                    self.close_stream(k, ev, false, &mut out);
                }
                self.connected.retain(|k, _| k.0 != pid);
                self.accepted.retain(|k| k.0 != pid);
                self.fds.retain(|k, _| k.0 != pid);
            }
            _ => {}
        }
        out
    }

    /// Whether `ev`, a TLS record of connection `key`, is a read that returned no data and
    /// does not end the stream: `SSL_read_ex` returns 0 both when a non-blocking socket had
    /// nothing (`WANT_READ`) and at the peer's close_notify. The socket read it made tells
    /// which: one that would have blocked, or none seen (`--tls-only` hides them), is no
    /// end, unless the library said it was ([`Event::tls_eof`]). (`SSL_read` and
    /// `gnutls_record_recv` returning 0 always end it.)
    fn tls_read_of_nothing(&self, ev: &Event, key: Key) -> bool {
        let Detail::Data {
            dir: Direction::Recv,
            total: 0,
            ..
        } = ev.detail
        else {
            return false;
        };
        ev.ret == 0
            && !ev.tls_eof
            && !ev.call.zero_read_is_eof()
            && self.recv_blocked.get(&key).copied().unwrap_or(true)
    }

    /// The packets of a data event.
    fn data(&mut self, ev: &Event, out: &mut Vec<Packet>) {
        let (
            Some(meta),
            Detail::Data {
                dir,
                total,
                payload,
                truncated,
                addr,
                ..
            },
        ) = (&ev.sock, &ev.detail)
        else {
            return;
        };
        if is_stream(meta.transport) {
            self.stream_data(ev, meta, *dir, *total, payload, *truncated, out);
        } else if is_dgram(meta.transport) {
            datagram(ev, meta, *dir, *total, payload, *truncated, *addr, out);
        }
    }

    /// Holds back a ciphertext record of TLS connection `key`; writes what is held when it
    /// is too much.
    fn hold(&mut self, key: Key, ev: &Event, out: &mut Vec<Packet>) {
        let h = self.held.entry(key).or_insert_with(|| Held {
            since_ns: ev.ts_ns,
            bytes: 0,
            events: Vec::new(),
        });
        if let Detail::Data { payload, .. } = &ev.detail {
            h.bytes += payload.len();
        }
        h.events.push(ev.clone());
        if h.bytes > HOLD_MAX_BYTES {
            self.release(key, out);
        }
    }

    /// Writes the ciphertext held back of `key`: its stream stays ciphertext.
    fn release(&mut self, key: Key, out: &mut Vec<Packet>) {
        if let Some(h) = self.held.remove(&key) {
            self.ciphertext.insert(key);
            for ev in &h.events {
                self.data(ev, out);
            }
        }
    }

    /// Writes the ciphertext held back longer than [`HOLD_MAX_NS`] before `now_ns`.
    fn release_old(&mut self, now_ns: u64, out: &mut Vec<Packet>) {
        let mut old: Vec<(u64, Key)> = self
            .held
            .iter()
            .filter(|(_, h)| now_ns.saturating_sub(h.since_ns) > HOLD_MAX_NS)
            .map(|(k, h)| (h.since_ns, *k))
            .collect();
        old.sort_unstable();
        for (_, k) in old {
            self.release(k, out);
        }
    }

    /// Writes the closes held back that `ev` ends: those [`CLOSE_HOLD_NS`] older than it,
    /// and that of its own socket unless it is a Go plaintext record (a late one).
    fn close_held(&mut self, ev: &Event, out: &mut Vec<Packet>) {
        let late_go = matches!(ev.call, Call::Tls { func, .. }
            if agent_common::tls_fn::lib(func) == Some("go"));
        let own = if late_go { None } else { self.key_of(ev) };
        let mut done: Vec<(u64, Key)> = self
            .closing
            .iter()
            .filter(|(k, c)| Some(**k) == own || ev.ts_ns.saturating_sub(c.ts_ns) > CLOSE_HOLD_NS)
            .map(|(k, c)| (c.ts_ns, *k))
            .collect();
        done.sort_unstable();
        self.close_now(done.into_iter().map(|(_, k)| k).collect(), out);
    }

    /// Writes the closes held back of `keys`, in that order.
    fn close_now(&mut self, keys: Vec<Key>, out: &mut Vec<Packet>) {
        for key in keys {
            let Some(close) = self.closing.remove(&key) else {
                continue;
            };
            self.go.remove(&key);
            self.release(key, out);
            self.plaintext.remove(&key);
            self.ciphertext.remove(&key);
            self.recv_blocked.remove(&key);
            self.close_stream(key, &close, close.ret < 0, out);
            self.connected.remove(&key);
        }
    }

    /// Writes every ciphertext record and close still held back (at the end of the output).
    pub fn release_all(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        let mut closing: Vec<(u64, Key)> =
            self.closing.iter().map(|(k, c)| (c.ts_ns, *k)).collect();
        closing.sort_unstable();
        self.close_now(closing.into_iter().map(|(_, k)| k).collect(), &mut out);
        self.release_old(u64::MAX, &mut out);
        let rest: Vec<Key> = self.held.keys().copied().collect();
        for k in rest {
            self.release(k, &mut out);
        }
        out
    }

    fn sock_event(
        &mut self,
        ev: &Event,
        args: &[u64; 4],
        addr: &Option<Endpoint>,
        out: &mut Vec<Packet>,
    ) {
        let pid = ev.task.pid;
        match ev.shown_as() {
            sys::CONNECT if ev.ret == 0 || ev.ret == EINPROGRESS => {
                if let Some(meta) = &ev.sock
                    && is_stream(meta.transport)
                {
                    let key = stream_key(pid, meta);
                    self.connected.insert(key, ev.ts_ns);
                    // Open the stream now when the endpoints are known (else at the first data).
                    let hint = inet(addr);
                    // (A non-blocking connect in progress may not have its local port yet.)
                    let known = inet(&meta.local).is_some_and(|a| a.port() != 0)
                        && hint.or(inet(&meta.remote)).is_some();
                    if meta.transport != Transport::Tcp || (ev.ret == 0 && known) {
                        self.open(key, ev, meta, hint, out);
                    }
                }
            }
            sys::ACCEPT | sys::ACCEPT4 if ev.ret >= 0 => {
                self.accepted.insert((pid, ev.ret as i32));
            }
            sys::SHUTDOWN if ev.ret == 0 => {
                // how (the argument after the fd): SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2.
                if args[0] >= 1
                    && let Some(key) = self.key_of(ev)
                    && let Some(st) = self.streams.get_mut(&key)
                    && !st.local_fin
                {
                    out.push(fin(st, ev, true, false));
                }
            }
            sys::CLOSE => {
                if let Some(key) = self.key_of(ev) {
                    self.close_stream(key, ev, ev.ret < 0, out);
                    self.connected.remove(&key);
                }
                self.accepted.remove(&(pid, ev.fd));
                self.fds.remove(&(pid, ev.fd));
            }
            _ => {}
        }
    }

    fn key_of(&self, ev: &Event) -> Option<Key> {
        match &ev.sock {
            Some(m) => Some(stream_key(ev.task.pid, m)),
            None => self.fds.get(&(ev.task.pid, ev.fd)).copied(),
        }
    }

    /// Starts the stream of `key` with a three-way handshake.
    fn open(
        &mut self,
        key: Key,
        ev: &Event,
        meta: &SocketMeta,
        remote_hint: Option<SocketAddr>,
        out: &mut Vec<Packet>,
    ) {
        if self.streams.contains_key(&key) {
            return;
        }
        let (local, remote, note) = ends(meta, remote_hint);
        let remote_is_client =
            !self.connected.contains_key(&key) && self.accepted.contains(&(ev.task.pid, ev.fd));
        let ts = self.connected.get(&key).copied().unwrap_or(ev.ts_ns);
        let (client, server) = if remote_is_client {
            (remote, local)
        } else {
            (local, remote)
        };
        let comment = format!(
            "synthetic handshake: {} connection first seen at {}{}",
            if remote_is_client {
                "accepted"
            } else {
                "outgoing"
            },
            task_comment(ev),
            note
        );
        let (d_client, d_server) = if remote_is_client {
            (Direction::Recv, Direction::Send)
        } else {
            (Direction::Send, Direction::Recv)
        };
        let syn = Flags {
            syn: true,
            ..Flags::default()
        };
        let pk = |data: Vec<u8>, dir| Packet {
            ts_ns: ts,
            orig_len: data.len() as u32,
            data,
            dir,
            comment: comment.clone(),
        };
        out.push(pk(
            tcp_packet(client, server, CLIENT_ISN, None, syn, &[]),
            d_client,
        ));
        out.push(pk(
            tcp_packet(server, client, SERVER_ISN, Some(CLIENT_ISN + 1), syn, &[]),
            d_server,
        ));
        out.push(pk(
            tcp_packet(
                client,
                server,
                CLIENT_ISN + 1,
                Some(SERVER_ISN + 1),
                Flags::default(),
                &[],
            ),
            d_client,
        ));
        let (local_next, remote_next) = if remote_is_client {
            (SERVER_ISN + 1, CLIENT_ISN + 1)
        } else {
            (CLIENT_ISN + 1, SERVER_ISN + 1)
        };
        self.streams.insert(
            key,
            Stream {
                local,
                remote,
                local_next,
                remote_next,
                local_fin: false,
                remote_fin: false,
                note,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn stream_data(
        &mut self,
        ev: &Event,
        meta: &SocketMeta,
        dir: Direction,
        total: u64,
        payload: &[u8],
        truncated: bool,
        out: &mut Vec<Packet>,
    ) {
        if ev.ret < 0 {
            return;
        }
        let key = stream_key(ev.task.pid, meta);
        self.open(key, ev, meta, None, out);
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        if total == 0 {
            // recv returning 0: the peer closed its side (a TLS read of no data that does not
            // mean it is left out before).
            if dir == Direction::Recv && !st.remote_fin {
                out.push(fin(st, ev, false, false));
            }
            return;
        }
        let mut comment = task_comment(ev);
        comment.push_str(&st.note);
        if let Some(edits) = self.edits.remove(&key) {
            comment.push_str(&edits);
        }
        if let Call::Tls { func, .. } = ev.call {
            let lib = agent_common::tls_fn::lib(func).unwrap_or("a TLS library");
            let _ = write!(comment, " decrypted by {lib} ({})", ev.syscall_name());
        } else if ev.tls_plaintext {
            comment.push_str(" decrypted by capagent (mitm)");
        }
        if truncated || (payload.len() as u64) < total {
            let _ = write!(
                comment,
                " truncated: captured {} of {} bytes (the rest is missing from this capture)",
                payload.len(),
                total
            );
        }
        let (src, dst, seq, ack) = match dir {
            Direction::Send => (st.local, st.remote, st.local_next, st.remote_next),
            Direction::Recv => (st.remote, st.local, st.remote_next, st.local_next),
        };
        // Segments of the real length, each holding the part of the payload kept in it.
        let real = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .max(payload.len());
        let mut off = 0usize;
        while off < real {
            let len = SEGMENT_MAX.min(real - off);
            let kept = &payload[off.min(payload.len())..(off + len).min(payload.len())];
            let flags = Flags {
                psh: off + len == real,
                ..Flags::default()
            };
            let mut data = tcp_packet(
                src,
                dst,
                seq.wrapping_add(off as u32),
                Some(ack),
                flags,
                kept,
            );
            let orig_len = cut(&mut data, len - kept.len());
            out.push(Packet {
                ts_ns: ev.ts_ns,
                data,
                orig_len,
                dir,
                // `trace --stack`: the call's frames in its first packet's comment.
                comment: if off == 0 {
                    with_stack(&comment, ev)
                } else {
                    comment.clone()
                },
            });
            off += len;
        }
        let next = seq.wrapping_add(total as u32);
        match dir {
            Direction::Send => st.local_next = next,
            Direction::Recv => st.remote_next = next,
        }
    }

    /// Ends the stream: FIN (or RST) from the local side if it has not sent one.
    fn close_stream(&mut self, key: Key, ev: &Event, rst: bool, out: &mut Vec<Packet>) {
        self.edits.remove(&key);
        if let Some(mut st) = self.streams.remove(&key)
            && (!st.local_fin || rst)
        {
            out.push(fin(&mut st, ev, true, rst));
        }
    }
}

/// A FIN (or RST) from the local (`local`) or remote side; advances the sequence number.
fn fin(st: &mut Stream, ev: &Event, local: bool, rst: bool) -> Packet {
    let (src, dst, seq, ack, dir) = if local {
        (
            st.local,
            st.remote,
            st.local_next,
            st.remote_next,
            Direction::Send,
        )
    } else {
        (
            st.remote,
            st.local,
            st.remote_next,
            st.local_next,
            Direction::Recv,
        )
    };
    let flags = Flags {
        fin: !rst,
        rst,
        ..Flags::default()
    };
    let what = if rst {
        "synthetic RST: close failed"
    } else if local {
        "synthetic FIN: local side closed"
    } else {
        "synthetic FIN: peer closed (recv returned 0)"
    };
    if local {
        st.local_fin = true;
        st.local_next = st.local_next.wrapping_add(1);
    } else {
        st.remote_fin = true;
        st.remote_next = st.remote_next.wrapping_add(1);
    }
    let data = tcp_packet(src, dst, seq, Some(ack), flags, &[]);
    Packet {
        ts_ns: ev.ts_ns,
        orig_len: data.len() as u32,
        data,
        dir,
        comment: format!("{what}; {}{}", task_comment(ev), st.note),
    }
}

#[allow(clippy::too_many_arguments)]
fn datagram(
    ev: &Event,
    meta: &SocketMeta,
    dir: Direction,
    total: u64,
    payload: &[u8],
    truncated: bool,
    addr: Option<SocketAddr>,
    out: &mut Vec<Packet>,
) {
    if ev.ret < 0 {
        return;
    }
    let (local, remote, note) = ends(meta, addr);
    let (src, dst) = match dir {
        Direction::Send => (local, remote),
        Direction::Recv => (remote, local),
    };
    let data = &payload[..payload.len().min(DATAGRAM_MAX)];
    // The datagram's real length (as much of it as an IP packet holds).
    let real = usize::try_from(total)
        .unwrap_or(usize::MAX)
        .clamp(data.len(), DATAGRAM_MAX);
    let mut comment = task_comment(ev);
    comment.push_str(&note);
    if truncated || (data.len() as u64) < total {
        let _ = write!(
            comment,
            " truncated: captured {} of {} bytes (the rest is missing from this capture)",
            data.len(),
            total
        );
    }
    // `trace --stack`: the call's frames in its first datagram's comment (a sendmmsg's or
    // recvmmsg's first message).
    if matches!(ev.detail, Detail::Data { msg_index: 0, .. }) {
        comment = with_stack(&comment, ev);
    }
    let mut packet = udp_packet(src, dst, data);
    let orig_len = cut(&mut packet, real - data.len());
    out.push(Packet {
        ts_ns: ev.ts_ns,
        data: packet,
        orig_len,
        dir,
        comment,
    });
}

#[cfg(test)]
mod edit_tests {
    #[test]
    fn long_edit_sides_are_shortened() {
        assert_eq!(super::edit_side(b"a\nb"), "a\\nb");
        let long = vec![b'x'; 5000];
        let t = super::edit_side(&long);
        assert_eq!(t, format!("{}... (5000 bytes)", "x".repeat(1024)));
    }
}
