//! Decoded records to complete [`Event`]s.
//!
//! The [`Assembler`] takes records in ring buffer order and yields events:
//! - DATA chunks are buffered per thread until the chunk flagged LAST, then one
//!   [`Detail::Data`] event carries the concatenated payload. A call whose LAST chunk never came
//!   (records lost) is emitted with `truncated: true` when the thread's next call starts, when
//!   the process exits or execs, or at [`Assembler::flush`]. A chunk that does not continue the
//!   buffered call where it left off (a gap: records lost) stops the capture of that call
//!   (`truncated: true`): the payload is always a prefix of what was transferred. Memory is
//!   capped: at most `max_call_bytes` bytes are kept per call (the rest is counted, not kept)
//!   and at most [`MAX_PENDING_CALLS`] calls are buffered at once (the oldest is emitted).
//! - TLS records (the plaintext of a TLS library call, `trace --tls`) are chunked the same way
//!   and become one [`Detail::Data`] event per call whose `call` is [`Call::Tls`] (same
//!   truncation rules).
//! - SOCK records become [`Detail::Sock`], PROC records [`Detail::Fork`], [`Detail::Exec`],
//!   [`Detail::Exit`].
//!
//! It also keeps what the kernel's `SockInfo` cannot tell: the paths of Unix sockets, learned
//! from bind (local), connect (remote) and accept (the listener's path as local, the peer as
//! remote), kept per socket until its close, and filled into [`SocketMeta`] of every event on
//! that socket. A socket is known by its `sk` and inode ([`SockKey`]): the kernel may free a
//! socket and hand its `sk` to one another thread opens before the first one's close record
//! comes (it comes at the syscall's exit).

use std::collections::HashMap;
use std::net::SocketAddr;

use agent_common::{
    DataEvent, EventHeader, ProcEvent, SOCKADDR_MAX, SockEvent, TlsEvent, flags, sys,
};
use bytes::Bytes;

use crate::model::{Call, Detail, Direction, Endpoint, Event, SocketMeta, Task, Transport};
use crate::trace::decode::{self, DecodeError, Record, comm_string, msg_addr, socket_meta};
use crate::trace::sockaddr::{AF_UNIX, parse_sockaddr};

/// Default cap on the payload bytes kept for one call.
pub const DEFAULT_MAX_CALL_BYTES: usize = 16 << 20;
/// Most calls buffered at once (threads in the middle of a chunked call).
pub const MAX_PENDING_CALLS: usize = 4096;
/// Most Unix sockets whose paths are remembered; past it the memory is cleared.
const MAX_UNIX_SOCKETS: usize = 65536;
/// Most process names cached.
const MAX_COMMS: usize = 65536;
/// `TCP_LISTEN`, the `sk_state` of a listening socket (Unix sockets use it too).
const TCP_LISTEN: u16 = 10;

/// Where the assembler gets a process's name (`/proc/PID/comm`) from.
///
/// Any `FnMut(u32) -> Option<String>` closure is one. The assembler asks at most once per
/// pid until that pid execs or exits (it caches the answers that are `Some`); on `None` the
/// event carries the calling thread's comm from the kernel record.
pub trait CommLookup {
    fn comm(&mut self, pid: u32) -> Option<String>;
}

impl<F: FnMut(u32) -> Option<String>> CommLookup for F {
    fn comm(&mut self, pid: u32) -> Option<String> {
        self(pid)
    }
}

/// A [`CommLookup`] that knows nothing: events carry the thread comm of the kernel record.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadComm;

impl CommLookup for ThreadComm {
    fn comm(&mut self, _pid: u32) -> Option<String> {
        None
    }
}

/// The local and remote endpoint of a Unix socket, as far as known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixEnds {
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
}

/// A call whose LAST chunk has not arrived yet.
struct Pending {
    /// Arrival order, to emit leftovers in order.
    seq: u64,
    /// Header of the call's first chunk seen.
    hdr: EventHeader,
    call: Call,
    total: u64,
    msg_index: u32,
    addr: Option<SocketAddr>,
    payload: Vec<u8>,
    truncated: bool,
    /// Still appending: no gap seen.
    appending: bool,
    /// Offset the next chunk must have to continue the payload.
    next_offset: u64,
}

impl Pending {
    /// Whether chunk `c` can belong to this call.
    fn same_call(&self, c: &Chunk<'_>) -> bool {
        self.hdr.pid == c.hdr.pid
            && self.call == c.call
            && self.hdr.fd == c.hdr.fd
            && self.msg_index == c.msg_index
            && self.total == c.total
    }
}

/// One chunk of a call's payload: of a DATA record (a syscall) or of a TLS record (a TLS
/// library call).
struct Chunk<'a> {
    hdr: &'a EventHeader,
    call: Call,
    total: u64,
    offset: u64,
    msg_index: u32,
    addr: Option<SocketAddr>,
    bytes: &'a [u8],
}

impl<'a> Chunk<'a> {
    fn data(ev: &'a DataEvent, bytes: &'a [u8]) -> Self {
        Chunk {
            hdr: &ev.hdr,
            call: Call::Syscall(ev.hdr.syscall),
            total: ev.total,
            offset: ev.offset,
            msg_index: ev.msg_index,
            addr: msg_addr(&ev.addr),
            bytes,
        }
    }

    fn tls(ev: &'a TlsEvent, bytes: &'a [u8]) -> Self {
        Chunk {
            hdr: &ev.hdr,
            call: Call::Tls {
                func: ev.hdr.syscall,
                conn: ev.conn,
            },
            total: ev.total,
            offset: ev.offset,
            msg_index: 0,
            addr: None,
            bytes,
        }
    }
}

/// A socket: its kernel `sk` and its inode (0 when unknown: then the `sk` alone).
pub type SockKey = (u64, u64);

fn sock_key(s: &agent_common::SockInfo) -> SockKey {
    (s.sk, s.ino)
}

/// Turns decoded records into events; see the module documentation.
pub struct Assembler<C> {
    clock_offset_ns: i64,
    max_call_bytes: usize,
    comm: C,
    comms: HashMap<u32, String>,
    pending: HashMap<u32, Pending>,
    seq: u64,
    unix: HashMap<SockKey, UnixEnds>,
    /// Unix sockets returned by accept whose `sk` is not known yet, by (pid, fd).
    unix_accepted: HashMap<(u32, i32), UnixEnds>,
    /// Last complete endpoints of each TCP socket: once both sides have closed, the kernel
    /// clears the local port while the process may still read and close the socket.
    tcp: HashMap<SockKey, [Option<Endpoint>; 2]>,
    /// `--stack`: the stacks paired with calls (the events of a call with a stack id get
    /// its frames).
    pub stacks: Option<super::stacks::Pairing>,
}

/// Most TCP sockets whose endpoints are remembered (sockets never closed while traced).
const MAX_TCP_REMEMBERED: usize = 65536;

impl<C: CommLookup> Assembler<C> {
    /// `clock_offset_ns`: added to the kernel's CLOCK_BOOTTIME timestamps to get wall-clock
    /// nanoseconds since the Unix epoch (see [`crate::clock::boot_to_wall_offset_ns`]). `comm`: process
    /// names (see [`CommLookup`]).
    pub fn new(clock_offset_ns: i64, comm: C) -> Self {
        Assembler {
            clock_offset_ns,
            max_call_bytes: DEFAULT_MAX_CALL_BYTES,
            comm,
            comms: HashMap::new(),
            pending: HashMap::new(),
            seq: 0,
            unix: HashMap::new(),
            unix_accepted: HashMap::new(),
            tcp: HashMap::new(),
            stacks: None,
        }
    }

    /// Keeps at most `max` payload bytes per call (default [`DEFAULT_MAX_CALL_BYTES`]); the
    /// calls cut by it are marked truncated.
    pub fn with_max_call_bytes(mut self, max: usize) -> Self {
        self.max_call_bytes = max;
        self
    }

    /// Wall-clock nanoseconds since the epoch of a kernel CLOCK_BOOTTIME timestamp.
    pub fn wall_ns(&self, boot_ns: u64) -> u64 {
        boot_ns.saturating_add_signed(self.clock_offset_ns)
    }

    /// Calls buffered, waiting for their LAST chunk.
    pub fn pending_calls(&self) -> usize {
        self.pending.len()
    }

    /// What is known of the Unix socket `sk`.
    pub fn unix_endpoints(&self, sk: SockKey) -> Option<&UnixEnds> {
        self.unix.get(&sk)
    }

    /// Tells the endpoints of a Unix socket learned elsewhere (sockets opened before tracing
    /// started); `None` leaves a known endpoint as it is.
    pub fn remember_unix(
        &mut self,
        sk: SockKey,
        local: Option<Endpoint>,
        remote: Option<Endpoint>,
    ) {
        let e = self.unix_entry(sk);
        if local.is_some() {
            e.local = local;
        }
        if remote.is_some() {
            e.remote = remote;
        }
    }

    /// Decodes one ring buffer record and pushes it (see [`Assembler::push`]).
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Event>, DecodeError> {
        let rec = decode::decode(bytes)?;
        Ok(self.push(&rec))
    }

    /// Takes the next record; returns the events it completes (zero, one or more, in order).
    pub fn push(&mut self, rec: &Record<'_>) -> Vec<Event> {
        let mut out = Vec::new();
        self.push_into(rec, &mut out);
        out
    }

    /// [`Assembler::push`] appending to `out` instead.
    pub fn push_into(&mut self, rec: &Record<'_>, out: &mut Vec<Event>) {
        match rec {
            Record::Sock(ev) => self.sock(ev, out),
            Record::Data { ev, payload } => self.data(Chunk::data(ev, payload), out),
            Record::Proc(ev) => self.proc(ev, out),
            Record::Tls { ev, payload } => self.data(Chunk::tls(ev, payload), out),
        }
    }

    /// Emits every buffered call (with `truncated: true`: their LAST chunk never came), oldest
    /// first. Call at exit.
    pub fn flush(&mut self) -> Vec<Event> {
        let mut all: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        all.sort_by_key(|p| p.seq);
        let mut out = Vec::with_capacity(all.len());
        for p in all {
            self.emit_data(p, true, &mut out);
        }
        out
    }

    fn data(&mut self, ev: Chunk<'_>, out: &mut Vec<Event>) {
        let chunk = ev.bytes;
        let tid = ev.hdr.tid;
        let f = ev.hdr.flags;
        let starts = f & flags::FIRST != 0 || ev.offset == 0;
        if let Some(p) = self.pending.get(&tid)
            && (starts || !p.same_call(&ev))
        {
            // The buffered call's LAST chunk was lost.
            if let Some(p) = self.pending.remove(&tid) {
                self.emit_data(p, true, out);
            }
        }
        let max = self.max_call_bytes;
        if starts && ev.offset == 0 && f & flags::LAST != 0 {
            // The whole call in one chunk (the common case): no buffering, one copy. (The
            // same as buffering it and emitting it at once, the room made included.)
            self.make_room(out);
            self.seq += 1;
            let take = max.min(chunk.len());
            let truncated = f & flags::TRUNCATED != 0 || take < chunk.len();
            let payload = Bytes::copy_from_slice(&chunk[..take]);
            let event = self.data_event(
                ev.hdr,
                ev.call,
                ev.total,
                ev.msg_index,
                ev.addr,
                payload,
                truncated,
            );
            out.push(event);
            return;
        }
        if !self.pending.contains_key(&tid) {
            self.make_room(out);
            self.seq += 1;
            // The payload's room, up front: the whole call when it is captured whole (a
            // chunk of a call cut by snaplen carries TRUNCATED), else this chunk.
            let room = if !starts || ev.offset != 0 {
                0
            } else if f & flags::TRUNCATED == 0 {
                usize::try_from(ev.total).unwrap_or(usize::MAX).min(max)
            } else {
                chunk.len().min(max)
            };
            self.pending.insert(
                tid,
                Pending {
                    seq: self.seq,
                    hdr: *ev.hdr,
                    call: ev.call,
                    total: ev.total,
                    msg_index: ev.msg_index,
                    addr: ev.addr,
                    payload: Vec::with_capacity(room),
                    // A call seen from its middle (its first chunks were lost): its bytes are
                    // not a prefix of the payload, keep none.
                    truncated: !starts,
                    appending: starts,
                    next_offset: 0,
                },
            );
        }
        let Some(p) = self.pending.get_mut(&tid) else {
            return;
        };
        if f & flags::TRUNCATED != 0 {
            p.truncated = true;
        }
        if p.appending {
            if ev.offset == p.next_offset {
                let take = max.saturating_sub(p.payload.len()).min(chunk.len());
                p.payload.extend_from_slice(&chunk[..take]);
                if take < chunk.len() {
                    p.truncated = true;
                }
                p.next_offset = ev.offset.saturating_add(chunk.len() as u64);
            } else {
                // A gap (or overlap): records lost.
                p.truncated = true;
                p.appending = false;
            }
        }
        if f & flags::LAST != 0
            && let Some(p) = self.pending.remove(&tid)
        {
            self.emit_data(p, false, out);
        }
    }

    /// Emits the oldest buffered call when too many are buffered.
    fn make_room(&mut self, out: &mut Vec<Event>) {
        if self.pending.len() < MAX_PENDING_CALLS {
            return;
        }
        let oldest = self
            .pending
            .iter()
            .min_by_key(|(_, p)| p.seq)
            .map(|(&t, _)| t);
        if let Some(p) = oldest.and_then(|t| self.pending.remove(&t)) {
            self.emit_data(p, true, out);
        }
    }

    fn emit_data(&mut self, p: Pending, lost_tail: bool, out: &mut Vec<Event>) {
        // `Vec` to `Bytes` takes the buffer over, without a copy.
        let payload = Bytes::from(p.payload);
        let truncated = p.truncated || lost_tail;
        let ev = self.data_event(
            &p.hdr,
            p.call,
            p.total,
            p.msg_index,
            p.addr,
            payload,
            truncated,
        );
        out.push(ev);
    }

    /// The Data event of a call.
    #[allow(clippy::too_many_arguments)]
    fn data_event(
        &mut self,
        hdr: &EventHeader,
        call: Call,
        total: u64,
        msg_index: u32,
        addr: Option<SocketAddr>,
        payload: Bytes,
        truncated: bool,
    ) -> Event {
        let truncated = truncated || (hdr.ret >= 0 && (payload.len() as u64) < total);
        let detail = Detail::Data {
            dir: if sys::is_send(hdr.syscall) {
                Direction::Send
            } else {
                Direction::Recv
            },
            total,
            payload,
            truncated,
            addr,
            msg_index,
        };
        let mut ev = self.event_of(hdr, call, detail);
        ev.tls_eof = matches!(call, Call::Tls { .. }) && hdr.flags & flags::TLS_EOF != 0;
        ev
    }

    /// Emits the buffered calls of process `pid` (of thread `tid` only, when given).
    fn flush_pid(&mut self, pid: u32, tid: Option<u32>, out: &mut Vec<Event>) {
        let mut tids: Vec<(u64, u32)> = self
            .pending
            .iter()
            .filter(|(t, p)| p.hdr.pid == pid && tid.is_none_or(|x| x == **t))
            .map(|(&t, p)| (p.seq, t))
            .collect();
        tids.sort_unstable();
        for (_, t) in tids {
            if let Some(p) = self.pending.remove(&t) {
                self.emit_data(p, true, out);
            }
        }
    }

    fn sock(&mut self, ev: &SockEvent, out: &mut Vec<Event>) {
        let hdr = &ev.hdr;
        let len = (ev.addr_len as usize).min(SOCKADDR_MAX);
        let addr = if len > 0 {
            parse_sockaddr(&ev.addr[..len])
        } else {
            None
        };
        let unix = hdr.flags & flags::SOCK_VALID != 0 && hdr.sock.family == AF_UNIX;
        if unix {
            self.learn_unix(hdr, addr.as_ref());
        }
        let detail = Detail::Sock {
            args: ev.args,
            addr,
        };
        let event = self.event(hdr, detail);
        if hdr.syscall == sys::CLOSE {
            if unix {
                self.unix.remove(&sock_key(&hdr.sock));
            }
            self.unix_accepted.remove(&(hdr.pid, hdr.fd));
            self.tcp.remove(&sock_key(&hdr.sock));
        }
        out.push(event);
    }

    /// A TCP socket's endpoints never change once it is connected; keep showing them after
    /// the kernel has zeroed the port (a port of 0 means "no longer known").
    fn stick_tcp_endpoints(&mut self, meta: &mut SocketMeta) {
        let complete = |e: &Option<Endpoint>| matches!(e, Some(Endpoint::Inet(a)) if a.port() != 0);
        let sk = (meta.sk, meta.ino);
        if complete(&meta.local) && complete(&meta.remote) {
            if let Some(known) = self.tcp.get_mut(&sk) {
                if known[0] != meta.local || known[1] != meta.remote {
                    *known = [meta.local.clone(), meta.remote.clone()];
                }
            } else {
                if self.tcp.len() >= MAX_TCP_REMEMBERED {
                    self.tcp.clear();
                }
                self.tcp
                    .insert(sk, [meta.local.clone(), meta.remote.clone()]);
            }
        } else if let Some([local, remote]) = self.tcp.get(&sk) {
            if !complete(&meta.local) {
                meta.local = local.clone();
            }
            if !complete(&meta.remote) {
                meta.remote = remote.clone();
            }
        }
    }

    fn unix_entry(&mut self, sk: SockKey) -> &mut UnixEnds {
        if self.unix.len() >= MAX_UNIX_SOCKETS && !self.unix.contains_key(&sk) {
            self.unix.clear();
        }
        self.unix.entry(sk).or_default()
    }

    fn learn_unix(&mut self, hdr: &EventHeader, addr: Option<&Endpoint>) {
        let sk = sock_key(&hdr.sock);
        match hdr.syscall {
            sys::BIND if hdr.ret == 0 => {
                if let Some(a) = addr {
                    self.unix_entry(sk).local = Some(a.clone());
                }
            }
            sys::CONNECT if hdr.ret == 0 => {
                if let Some(a) = addr {
                    self.unix_entry(sk).remote = Some(a.clone());
                }
            }
            sys::ACCEPT | sys::ACCEPT4 if hdr.ret >= 0 => {
                if hdr.sock.state == TCP_LISTEN {
                    // The record describes the listening socket: the new one (fd = ret) has
                    // the listener's path as its local end.
                    let ends = UnixEnds {
                        local: self.unix.get(&sk).and_then(|e| e.local.clone()),
                        remote: addr.cloned(),
                    };
                    if self.unix_accepted.len() >= MAX_UNIX_SOCKETS {
                        self.unix_accepted.clear();
                    }
                    let fd = i32::try_from(hdr.ret).unwrap_or(-1);
                    self.unix_accepted.insert((hdr.pid, fd), ends);
                } else {
                    // The record describes the accepted socket itself.
                    let e = self.unix_entry(sk);
                    if addr.is_some() {
                        e.remote = addr.cloned();
                    }
                }
            }
            _ => {}
        }
    }

    fn socket(&mut self, hdr: &EventHeader) -> Option<SocketMeta> {
        let mut meta = socket_meta(hdr)?;
        if hdr.sock.family == AF_UNIX {
            let sk = sock_key(&hdr.sock);
            if !self.unix.contains_key(&sk)
                && let Some(e) = self.unix_accepted.remove(&(hdr.pid, hdr.fd))
            {
                *self.unix_entry(sk) = e;
            }
            if let Some(e) = self.unix.get(&sk) {
                meta.local = e.local.clone();
                meta.remote = e.remote.clone();
            }
        } else if meta.transport == Transport::Tcp {
            self.stick_tcp_endpoints(&mut meta);
        }
        Some(meta)
    }

    fn proc(&mut self, ev: &ProcEvent, out: &mut Vec<Event>) {
        let hdr = &ev.hdr;
        let mut hdr_out = *hdr;
        hdr_out.fd = -1;
        let detail = match hdr.syscall {
            sys::FORK => {
                hdr_out.ret = i64::from(ev.child_pid);
                Detail::Fork {
                    child_pid: ev.child_pid,
                }
            }
            sys::EXEC => {
                // Other threads died with the exec; the name changed.
                self.flush_pid(hdr.pid, None, out);
                self.comms.remove(&hdr.pid);
                Detail::Exec
            }
            sys::EXIT => {
                // Not a process exit: the thread's leftovers only.
                let thread = (hdr.tid != hdr.pid && hdr.tid != 0).then_some(hdr.tid);
                self.flush_pid(hdr.pid, thread, out);
                hdr_out.ret = i64::from(ev.exit_code);
                Detail::Exit
            }
            _ => return,
        };
        let event = self.event(&hdr_out, detail);
        if hdr.syscall == sys::EXIT && hdr.tid == hdr.pid {
            self.comms.remove(&hdr.pid);
            self.unix_accepted.retain(|(pid, _), _| *pid != hdr.pid);
        }
        out.push(event);
    }

    fn process_name(&mut self, hdr: &EventHeader) -> String {
        if let Some(c) = self.comms.get(&hdr.pid) {
            return c.clone();
        }
        match self.comm.comm(hdr.pid) {
            Some(c) => {
                if self.comms.len() >= MAX_COMMS {
                    self.comms.clear();
                }
                self.comms.insert(hdr.pid, c.clone());
                c
            }
            None => comm_string(&hdr.comm),
        }
    }

    fn event(&mut self, hdr: &EventHeader, detail: Detail) -> Event {
        self.event_of(hdr, Call::Syscall(hdr.syscall), detail)
    }

    fn event_of(&mut self, hdr: &EventHeader, call: Call, detail: Detail) -> Event {
        Event {
            ts_ns: self.wall_ns(hdr.ts_ns),
            task: Task {
                pid: hdr.pid,
                tid: hdr.tid,
                comm: self.process_name(hdr),
            },
            call,
            fd: hdr.fd,
            ret: hdr.ret,
            sock: self.socket(hdr),
            detail,
            tls_ciphertext: false,
            tls_eof: false,
            tls_plaintext: false,
            unfinished: hdr.flags & flags::UNFINISHED != 0,
            stack: match &self.stacks {
                Some(p) if hdr.stack_id != 0 => p.frames(hdr.tid, hdr.stack_id),
                _ => None,
            },
        }
    }
}

/// The event reporting records the kernel could not hand over (ring buffer full).
/// `ts_ns`: wall-clock nanoseconds since the epoch.
pub fn lost_event(ts_ns: u64, events: u64, bytes: u64) -> Event {
    Event {
        ts_ns,
        task: Task {
            pid: 0,
            tid: 0,
            comm: String::new(),
        },
        call: Call::Syscall(0),
        fd: -1,
        ret: 0,
        sock: None,
        detail: Detail::Lost { events, bytes },
        tls_ciphertext: false,
        tls_eof: false,
        tls_plaintext: false,
        unfinished: false,
        stack: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::trace::decode;
    use crate::trace::decode::tests::{bytes_of, data_record, header, sock_event, tcp4};
    use agent_common::{MsgAddr, ProcEvent, kind};

    const OFF: i64 = 1_700_000_000_000_000_000;

    fn asm() -> Assembler<ThreadComm> {
        Assembler::new(OFF, ThreadComm)
    }

    fn chunk(syscall: u16, tid: u32, fl: u16, total: u64, offset: u64, payload: &[u8]) -> Vec<u8> {
        let mut hdr = header(kind::DATA, syscall, 100, tid, 3);
        hdr.flags = fl | flags::SOCK_VALID;
        hdr.ret = total as i64;
        hdr.ts_ns = 5_000 + u64::from(tid);
        hdr.sock = tcp4(0xabc, [127, 0, 0, 1], 40112, [192, 168, 10, 1], 5555);
        let ev = DataEvent {
            hdr,
            total,
            offset,
            len: payload.len() as u32,
            msg_index: 0,
            addr: MsgAddr::default(),
        };
        data_record(&ev, payload)
    }

    /// A TLS record chunk of `func` on connection object `conn`; `fd` -1: the socket is not
    /// known (no `SOCK_VALID`).
    #[allow(clippy::too_many_arguments)]
    fn tls_chunk(
        func: u16,
        conn: u64,
        tid: u32,
        fd: i32,
        fl: u16,
        total: u64,
        offset: u64,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut hdr = header(kind::TLS, func, 100, tid, fd);
        hdr.flags = fl;
        if fd >= 0 {
            hdr.flags |= flags::SOCK_VALID;
            hdr.sock = tcp4(0xabc, [127, 0, 0, 1], 40112, [192, 168, 10, 1], 443);
        }
        hdr.ret = total as i64;
        let ev = TlsEvent {
            hdr,
            total,
            offset,
            len: payload.len() as u32,
            _pad: 0,
            conn,
        };
        let mut rec = bytes_of(&ev);
        rec.extend_from_slice(payload);
        rec
    }

    fn push(a: &mut Assembler<impl CommLookup>, rec: &[u8]) -> Vec<Event> {
        a.push_bytes(rec).unwrap()
    }

    /// (tid, payload, truncated, total) of a Data event.
    fn data_of(e: &Event) -> (u32, &[u8], bool, u64) {
        match &e.detail {
            Detail::Data {
                payload,
                truncated,
                total,
                ..
            } => (e.task.tid, payload.as_ref(), *truncated, *total),
            d => panic!("not data: {d:?}"),
        }
    }

    const FIRST: u16 = flags::FIRST;
    const LAST: u16 = flags::LAST;

    #[test]
    fn tcp_endpoints_survive_the_kernel_zeroing_the_port() {
        let mut a = asm();
        let ends = |e: &Event| {
            let s = e.sock.as_ref().unwrap();
            (
                s.local.as_ref().map(|e| e.to_string()),
                s.remote.as_ref().map(|e| e.to_string()),
            )
        };
        let want = (
            Some("127.0.0.1:40112".to_string()),
            Some("192.168.10.1:5555".to_string()),
        );
        let out = push(
            &mut a,
            &chunk(sys::SENDTO, 100, FIRST | LAST, 4, 0, b"ping"),
        );
        assert_eq!(ends(&out[0]), want);
        // Both sides closed: the kernel has zeroed the local port, not the address.
        let mut hdr = header(kind::DATA, sys::RECVFROM, 100, 100, 3);
        hdr.flags = FIRST | LAST | flags::SOCK_VALID;
        hdr.ret = 4;
        hdr.sock = tcp4(0xabc, [127, 0, 0, 1], 0, [192, 168, 10, 1], 5555);
        let ev = DataEvent {
            hdr,
            total: 4,
            offset: 0,
            len: 4,
            msg_index: 0,
            addr: MsgAddr::default(),
        };
        let rec = data_record(&ev, b"pong");
        let out = push(&mut a, &rec);
        assert_eq!(ends(&out[0]), want);
        // A close forgets the socket: a new socket at the same address starts afresh.
        let mut close = header(kind::SOCK, sys::CLOSE, 100, 100, 3);
        close.flags = flags::SOCK_VALID;
        close.sock = ev.hdr.sock;
        let out = push(&mut a, &bytes_of(&sock_event(close, [0; 4], &[])));
        assert_eq!(ends(&out[0]), want);
        let out = push(&mut a, &rec);
        assert_eq!(ends(&out[0]).0, Some("127.0.0.1:0".to_string()));
    }

    /// The kernel freed a socket and handed its `sk` to a new one before the first one's
    /// close record came: the new socket (another inode) gets neither the first one's
    /// endpoints nor its Unix path, and that close forgets only the first one's.
    #[test]
    fn reused_sk_is_another_socket() {
        let mut a = asm();
        let local = |e: &Event| {
            e.sock
                .as_ref()
                .unwrap()
                .local
                .as_ref()
                .map(|e| e.to_string())
        };
        let tcp = |ino, lport, syscall| {
            let mut hdr = header(kind::SOCK, syscall, 100, 100, 3);
            hdr.flags = flags::SOCK_VALID;
            hdr.sock = tcp4(0xabc, [127, 0, 0, 1], lport, [192, 168, 10, 1], 5555);
            hdr.sock.ino = ino;
            bytes_of(&sock_event(hdr, [0; 4], &[]))
        };
        // The first socket, connected; the second, its local port not bound yet.
        let out = push(&mut a, &tcp(7, 40112, sys::CONNECT));
        assert_eq!(local(&out[0]).as_deref(), Some("127.0.0.1:40112"));
        let out = push(&mut a, &tcp(8, 0, sys::CONNECT));
        assert_eq!(local(&out[0]).as_deref(), Some("127.0.0.1:0"));
        // The first one's close; the first one's zeroed port is still shown until it.
        let out = push(&mut a, &tcp(7, 0, sys::CLOSE));
        assert_eq!(local(&out[0]).as_deref(), Some("127.0.0.1:40112"));

        // Unix: the second socket connects elsewhere before the first one's close.
        let unix_rec = |syscall, ino, path: &[u8]| {
            let mut hdr = unix_hdr(syscall, 3, 0, 0x51);
            hdr.sock.ino = ino;
            bytes_of(&sock_event(hdr, [0; 4], &sun(path)))
        };
        let remote = |e: &Event| e.sock.as_ref().unwrap().remote.clone();
        push(&mut a, &unix_rec(sys::CONNECT, 7, b"/run/a.sock\0"));
        let out = push(&mut a, &unix_rec(sys::CONNECT, 8, b"/run/b.sock\0"));
        assert_eq!(remote(&out[0]), unix("/run/b.sock"));
        let out = push(&mut a, &unix_rec(sys::CLOSE, 7, b""));
        assert_eq!(remote(&out[0]), unix("/run/a.sock"));
        assert_eq!(a.unix_endpoints((0x51, 7)), None);
        assert_eq!(
            a.unix_endpoints((0x51, 8)),
            Some(&UnixEnds {
                local: None,
                remote: unix("/run/b.sock")
            })
        );
    }

    #[test]
    fn tls_call_in_one_chunk() {
        use agent_common::tls_fn;
        let mut a = asm();
        let req = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let n = req.len() as u64;
        let out = push(
            &mut a,
            &tls_chunk(tls_fn::SSL_WRITE, 0x55d0, 100, 5, FIRST | LAST, n, 0, req),
        );
        assert_eq!(out.len(), 1);
        let e = &out[0];
        assert_eq!(
            (e.call, e.fd, e.ret),
            (
                Call::Tls {
                    func: tls_fn::SSL_WRITE,
                    conn: 0x55d0
                },
                5,
                n as i64
            )
        );
        assert_eq!(e.syscall_name(), "SSL_write");
        assert_eq!(e.sock.as_ref().unwrap().sk, 0xabc);
        assert_eq!(
            e.detail,
            Detail::Data {
                dir: Direction::Send,
                total: n,
                payload: Bytes::from_static(req),
                truncated: false,
                addr: None,
                msg_index: 0
            }
        );
        // A read whose socket is not known: fd -1, no socket.
        let out = push(
            &mut a,
            &tls_chunk(
                tls_fn::SSL_READ_EX,
                0x55d0,
                100,
                -1,
                FIRST | LAST,
                4,
                0,
                b"HTTP",
            ),
        );
        let e = &out[0];
        assert_eq!((e.fd, e.sock.as_ref()), (-1, None));
        assert_eq!(e.syscall_name(), "SSL_read_ex");
        assert!(matches!(
            e.detail,
            Detail::Data {
                dir: Direction::Recv,
                ..
            }
        ));
    }

    #[test]
    fn tls_call_in_chunks_and_truncation() {
        use agent_common::tls_fn;
        let w = tls_fn::SSL_WRITE;
        // Three chunks: one event with the concatenated plaintext.
        let mut a = asm();
        assert!(push(&mut a, &tls_chunk(w, 7, 100, 5, FIRST, 9, 0, b"abc")).is_empty());
        assert!(push(&mut a, &tls_chunk(w, 7, 100, 5, 0, 9, 3, b"def")).is_empty());
        let out = push(&mut a, &tls_chunk(w, 7, 100, 5, LAST, 9, 6, b"ghi"));
        assert_eq!(data_of(&out[0]), (100, &b"abcdefghi"[..], false, 9));
        assert_eq!(a.pending_calls(), 0);
        // Cut by snaplen: TRUNCATED on the last chunk.
        let out = push(
            &mut a,
            &tls_chunk(
                w,
                7,
                100,
                5,
                FIRST | LAST | flags::TRUNCATED,
                100,
                0,
                b"abc",
            ),
        );
        assert_eq!(data_of(&out[0]), (100, &b"abc"[..], true, 100));
        // A gap (a chunk lost): a truncated prefix.
        assert!(push(&mut a, &tls_chunk(w, 7, 100, 5, FIRST, 9, 0, b"abc")).is_empty());
        let out = push(&mut a, &tls_chunk(w, 7, 100, 5, LAST, 9, 6, b"ghi"));
        assert_eq!(data_of(&out[0]), (100, &b"abc"[..], true, 9));
        // The per-call cap applies.
        let mut a = asm().with_max_call_bytes(4);
        let out = push(
            &mut a,
            &tls_chunk(w, 7, 100, 5, FIRST | LAST, 6, 0, b"abcdef"),
        );
        assert_eq!(data_of(&out[0]), (100, &b"abcd"[..], true, 6));
        // The LAST chunk of a TLS call lost, then a syscall on the same thread: the TLS call
        // is emitted truncated, then the syscall.
        let mut a = asm();
        assert!(push(&mut a, &tls_chunk(w, 7, 100, 5, FIRST, 9, 0, b"abc")).is_empty());
        let out = push(&mut a, &chunk(sys::WRITE, 100, FIRST | LAST, 2, 0, b"xy"));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].call, Call::Tls { func: w, conn: 7 });
        assert_eq!(data_of(&out[0]), (100, &b"abc"[..], true, 9));
        assert_eq!(out[1].call, Call::Syscall(sys::WRITE));
        // A chunk of another connection object with the same total is not the same call.
        assert!(push(&mut a, &tls_chunk(w, 7, 100, 5, FIRST, 6, 0, b"abc")).is_empty());
        let out = push(&mut a, &tls_chunk(w, 8, 100, 5, LAST, 6, 3, b"def"));
        assert_eq!(out.len(), 2);
        assert_eq!(data_of(&out[0]), (100, &b"abc"[..], true, 6));
        assert_eq!(out[1].call, Call::Tls { func: w, conn: 8 });
        // Seen from its middle: none of its bytes kept.
        assert_eq!(data_of(&out[1]), (100, &b""[..], true, 6));
    }

    #[test]
    fn single_chunk_call() {
        let mut a = asm();
        let out = push(
            &mut a,
            &chunk(sys::SENDTO, 100, FIRST | LAST, 12, 0, b"Hello World!"),
        );
        assert_eq!(out.len(), 1);
        let e = &out[0];
        assert_eq!(e.ts_ns, 1_700_000_000_000_005_100);
        assert_eq!(
            e.task,
            Task {
                pid: 100,
                tid: 100,
                comm: "python3".into()
            }
        );
        assert_eq!((e.call, e.fd, e.ret), (Call::Syscall(sys::SENDTO), 3, 12));
        let sock = e.sock.as_ref().unwrap();
        assert_eq!(sock.sk, 0xabc);
        assert_eq!(sock.transport, Transport::Tcp);
        assert_eq!(
            sock.local,
            Some(Endpoint::Inet("127.0.0.1:40112".parse().unwrap()))
        );
        assert_eq!(
            e.detail,
            Detail::Data {
                dir: Direction::Send,
                total: 12,
                payload: Bytes::from_static(b"Hello World!"),
                truncated: false,
                addr: None,
                msg_index: 0
            }
        );
        assert_eq!(a.pending_calls(), 0);
    }

    #[test]
    fn chunks_concatenated_with_interleaved_threads() {
        let mut a = asm();
        let mut out = Vec::new();
        out.extend(push(&mut a, &chunk(sys::READ, 1, FIRST, 9, 0, b"abc")));
        out.extend(push(&mut a, &chunk(sys::WRITE, 2, FIRST, 4, 0, b"xy")));
        out.extend(push(&mut a, &chunk(sys::READ, 1, 0, 9, 3, b"def")));
        assert!(out.is_empty());
        assert_eq!(a.pending_calls(), 2);
        out.extend(push(&mut a, &chunk(sys::WRITE, 2, LAST, 4, 2, b"zw")));
        out.extend(push(&mut a, &chunk(sys::READ, 1, LAST, 9, 6, b"ghi")));
        assert_eq!(out.len(), 2);
        assert_eq!(data_of(&out[0]), (2, &b"xyzw"[..], false, 4));
        assert_eq!(data_of(&out[1]), (1, &b"abcdefghi"[..], false, 9));
        let Detail::Data { dir, .. } = &out[0].detail else {
            panic!()
        };
        assert_eq!(*dir, Direction::Send);
        let Detail::Data { dir, .. } = &out[1].detail else {
            panic!()
        };
        assert_eq!(*dir, Direction::Recv);
        assert_eq!(a.pending_calls(), 0);
    }

    #[test]
    fn lost_last_chunk_emits_partial_call() {
        let mut a = asm();
        assert!(push(&mut a, &chunk(sys::READ, 1, FIRST, 9, 0, b"abc")).is_empty());
        // LAST (offset 3..9) lost; the thread's next call starts.
        let out = push(&mut a, &chunk(sys::READ, 1, FIRST | LAST, 2, 0, b"ok"));
        assert_eq!(out.len(), 2);
        assert_eq!(data_of(&out[0]), (1, &b"abc"[..], true, 9));
        assert_eq!(data_of(&out[1]), (1, &b"ok"[..], false, 2));
    }

    #[test]
    fn lost_middle_chunk_truncates() {
        let mut a = asm();
        push(&mut a, &chunk(sys::READ, 1, FIRST, 9, 0, b"abc"));
        // offset 3 lost
        let out = push(&mut a, &chunk(sys::READ, 1, LAST, 9, 6, b"ghi"));
        assert_eq!(data_of(&out[0]), (1, &b"abc"[..], true, 9));
    }

    #[test]
    fn orphan_chunk_without_first() {
        let mut a = asm();
        // The call's first chunk was lost: its bytes are not a prefix, none kept.
        let out = push(&mut a, &chunk(sys::READ, 1, LAST, 9, 6, b"ghi"));
        assert_eq!(data_of(&out[0]), (1, &b""[..], true, 9));
    }

    #[test]
    fn chunk_of_another_call_ends_the_pending_one() {
        let mut a = asm();
        push(&mut a, &chunk(sys::READ, 1, FIRST, 9, 0, b"abc"));
        // Same thread, different call (both its FIRST and our LAST lost).
        let out = push(&mut a, &chunk(sys::WRITE, 1, LAST, 20, 3, b"zz"));
        assert_eq!(out.len(), 2);
        assert_eq!(data_of(&out[0]), (1, &b"abc"[..], true, 9));
        assert_eq!(data_of(&out[1]), (1, &b""[..], true, 20));
    }

    #[test]
    fn truncated_flag_and_snaplen() {
        let mut a = asm();
        let out = push(
            &mut a,
            &chunk(
                sys::READ,
                1,
                FIRST | LAST | flags::TRUNCATED,
                100_000,
                0,
                b"GET",
            ),
        );
        assert_eq!(data_of(&out[0]), (1, &b"GET"[..], true, 100_000));
        // Short capture without the flag is truncated too.
        let out = push(&mut a, &chunk(sys::READ, 1, FIRST | LAST, 10, 0, b"GET"));
        assert_eq!(data_of(&out[0]), (1, &b"GET"[..], true, 10));
    }

    #[test]
    fn memory_cap_per_call() {
        let mut a = asm().with_max_call_bytes(5);
        push(&mut a, &chunk(sys::READ, 1, FIRST, 9, 0, b"abc"));
        push(&mut a, &chunk(sys::READ, 1, 0, 9, 3, b"def"));
        let out = push(&mut a, &chunk(sys::READ, 1, LAST, 9, 6, b"ghi"));
        assert_eq!(data_of(&out[0]), (1, &b"abcde"[..], true, 9));
    }

    #[test]
    fn failed_call_and_eof() {
        let mut a = asm();
        let mut rec = chunk(sys::RECVFROM, 1, FIRST | LAST, 0, 0, b"");
        // ret = -EAGAIN
        rec[32..40].copy_from_slice(&(-11i64).to_ne_bytes());
        let out = push(&mut a, &rec);
        assert_eq!(out[0].ret, -11);
        assert_eq!(data_of(&out[0]), (1, &b""[..], false, 0));
        let out = push(&mut a, &chunk(sys::RECVFROM, 1, FIRST | LAST, 0, 0, b""));
        assert_eq!(out[0].ret, 0);
        assert_eq!(data_of(&out[0]), (1, &b""[..], false, 0));
    }

    fn mmsg(tid: u32, fl: u16, total: u64, offset: u64, idx: u32, payload: &[u8]) -> Vec<u8> {
        let mut hdr = header(kind::DATA, sys::SENDMMSG, 100, tid, 4);
        hdr.flags = fl;
        hdr.ret = 2;
        let mut addr = MsgAddr {
            family: 2,
            port: 53,
            ..Default::default()
        };
        addr.addr[..4].copy_from_slice(&[127, 0, 0, 53]);
        let ev = DataEvent {
            hdr,
            total,
            offset,
            len: payload.len() as u32,
            msg_index: idx,
            addr,
        };
        data_record(&ev, payload)
    }

    #[test]
    fn mmsg_messages() {
        let mut a = asm();
        let mut out = Vec::new();
        out.extend(push(&mut a, &mmsg(7, FIRST | LAST, 3, 0, 0, b"one")));
        // The second message: FIRST may or may not be set; offset 0 starts it.
        out.extend(push(&mut a, &mmsg(7, 0, 7, 0, 1, b"tw")));
        out.extend(push(
            &mut a,
            &mmsg(7, LAST | flags::LAST_MSG, 7, 2, 1, b"o-two"),
        ));
        assert_eq!(out.len(), 2);
        for (i, (e, want)) in out.iter().zip([&b"one"[..], b"two-two"]).enumerate() {
            assert_eq!(e.ret, 2);
            let Detail::Data {
                payload,
                msg_index,
                addr,
                total,
                truncated,
                ..
            } = &e.detail
            else {
                panic!()
            };
            assert_eq!(payload.as_ref(), want);
            assert_eq!(*msg_index, i as u32);
            assert_eq!(*total, want.len() as u64);
            assert_eq!(*addr, "127.0.0.53:53".parse().ok());
            assert!(!*truncated);
        }
        assert!(out[0].sock.is_none());
    }

    #[test]
    fn mmsg_lost_last_of_message() {
        let mut a = asm();
        push(&mut a, &mmsg(7, FIRST, 6, 0, 0, b"abc"));
        let out = push(&mut a, &mmsg(7, LAST, 2, 0, 1, b"zz"));
        assert_eq!(out.len(), 2);
        assert_eq!(data_of(&out[0]), (7, &b"abc"[..], true, 6));
        assert_eq!(data_of(&out[1]), (7, &b"zz"[..], false, 2));
    }

    #[test]
    fn flush_emits_leftovers_in_order() {
        let mut a = asm();
        push(&mut a, &chunk(sys::READ, 3, FIRST, 9, 0, b"c"));
        push(&mut a, &chunk(sys::READ, 1, FIRST, 9, 0, b"a"));
        push(&mut a, &chunk(sys::READ, 2, FIRST, 9, 0, b"b"));
        let out = a.flush();
        let got: Vec<_> = out.iter().map(data_of).collect();
        assert_eq!(
            got,
            vec![
                (3, &b"c"[..], true, 9),
                (1, &b"a"[..], true, 9),
                (2, &b"b"[..], true, 9)
            ]
        );
        assert_eq!(a.pending_calls(), 0);
        assert!(a.flush().is_empty());
    }

    #[test]
    fn pending_calls_capped() {
        let mut a = asm();
        let mut out = Vec::new();
        for tid in 0..MAX_PENDING_CALLS as u32 + 2 {
            out.extend(
                a.push_bytes(&chunk(sys::READ, tid + 1, FIRST, 9, 0, b"a"))
                    .unwrap(),
            );
        }
        assert_eq!(a.pending_calls(), MAX_PENDING_CALLS);
        assert_eq!(
            out.iter().map(|e| e.task.tid).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn single_chunk_call_makes_room_too() {
        let mut a = asm();
        for tid in 0..MAX_PENDING_CALLS as u32 {
            assert!(push(&mut a, &chunk(sys::READ, tid + 1, FIRST, 9, 0, b"a")).is_empty());
        }
        // A whole call of another thread: the oldest buffered call goes first, as when every
        // call was buffered.
        let out = push(&mut a, &chunk(sys::READ, 9999, FIRST | LAST, 2, 0, b"ok"));
        assert_eq!(out.len(), 2);
        assert_eq!(data_of(&out[0]), (1, &b"a"[..], true, 9));
        assert_eq!(data_of(&out[1]), (9999, &b"ok"[..], false, 2));
        assert_eq!(a.pending_calls(), MAX_PENDING_CALLS - 1);
        // FIRST|LAST at a non-zero offset (not a whole call): nothing kept.
        let out = push(&mut a, &chunk(sys::READ, 9999, FIRST | LAST, 9, 3, b"xyz"));
        assert_eq!(data_of(&out[0]), (9999, &b""[..], true, 9));
    }

    /// Records per second through decode + assemble + summary:
    /// `cargo test --release -p capagent --lib -- --ignored --nocapture bench_assemble`.
    #[test]
    #[ignore]
    fn bench_assemble() {
        use crate::trace::summary::Summary;
        use std::time::Instant;
        let big: Vec<u8> = (0..65536).map(|i| i as u8).collect();
        let chunks: Vec<Vec<u8>> = (0..4)
            .map(|k| {
                let fl = if k == 0 { FIRST } else { 0 } | if k == 3 { LAST } else { 0 };
                let off = k * 16384;
                chunk(sys::WRITE, 7, fl, 65536, off as u64, &big[off..off + 16384])
            })
            .collect();
        let small = chunk(sys::WRITE, 7, FIRST | LAST, 64, 0, &big[..64]);
        let mut a = Assembler::new(OFF, |_pid: u32| Some("rr".to_string()));
        let mut summary = Summary::new();
        let n = 20_000;
        let t = Instant::now();
        for _ in 0..n {
            for c in &chunks {
                for ev in a.push(&decode::decode(c).unwrap()) {
                    summary.add(&ev);
                }
            }
        }
        let e = t.elapsed().as_secs_f64();
        println!(
            "64 KiB calls in 4 chunks: {:.2} us/call, {:.0} MB/s",
            e * 1e6 / n as f64,
            (n * 65536) as f64 / e / 1e6
        );
        let n = 2_000_000;
        let t = Instant::now();
        for _ in 0..n {
            for ev in a.push(&decode::decode(&small).unwrap()) {
                summary.add(&ev);
            }
        }
        let e = t.elapsed().as_secs_f64();
        println!("64 B single-chunk calls: {:.3} us/call", e * 1e6 / n as f64);
        assert_eq!(summary.connections().len(), 1);
    }

    #[test]
    fn comm_lookup_cached_until_exec() {
        let mut calls = Vec::new();
        let names = ["python3.11", "curl"];
        let mut a = Assembler::new(0, |pid: u32| {
            calls.push(pid);
            Some(names[calls.len().min(2) - 1].to_string())
        });
        let e = push(&mut a, &chunk(sys::READ, 101, FIRST | LAST, 1, 0, b"a"));
        assert_eq!(e[0].task.comm, "python3.11");
        let e = push(&mut a, &chunk(sys::READ, 102, FIRST | LAST, 1, 0, b"a"));
        assert_eq!(e[0].task.comm, "python3.11");
        let exec = ProcEvent {
            hdr: header(kind::PROC, sys::EXEC, 100, 100, 0),
            child_pid: 0,
            exit_code: 0,
        };
        let e = push(&mut a, &bytes_of(&exec));
        assert_eq!(e[0].task.comm, "curl");
        assert_eq!(e[0].detail, Detail::Exec);
        drop(a);
        assert_eq!(calls, vec![100, 100]);
    }

    #[test]
    fn comm_falls_back_to_thread_comm() {
        let mut a = Assembler::new(0, |_pid: u32| None::<String>);
        let e = push(&mut a, &chunk(sys::READ, 101, FIRST | LAST, 1, 0, b"a"));
        assert_eq!(e[0].task.comm, "python3");
    }

    fn proc_rec(syscall: u16, pid: u32, tid: u32, child: u32, code: u32) -> Vec<u8> {
        bytes_of(&ProcEvent {
            hdr: header(kind::PROC, syscall, pid, tid, 0),
            child_pid: child,
            exit_code: code,
        })
    }

    #[test]
    fn proc_events() {
        let mut a = asm();
        let e = push(&mut a, &proc_rec(sys::FORK, 100, 100, 4243, 0));
        assert_eq!(e[0].detail, Detail::Fork { child_pid: 4243 });
        assert_eq!((e[0].ret, e[0].fd, e[0].sock.clone()), (4243, -1, None));
        let e = push(&mut a, &proc_rec(sys::EXIT, 100, 100, 0, 256));
        assert_eq!(e[0].detail, Detail::Exit);
        assert_eq!(e[0].ret, 256);
    }

    #[test]
    fn exit_flushes_the_process_calls() {
        let mut a = asm();
        push(&mut a, &chunk(sys::READ, 101, FIRST, 9, 0, b"a"));
        push(&mut a, &chunk(sys::READ, 102, FIRST, 9, 0, b"b"));
        // Thread 102 exits: its call only.
        let e = push(&mut a, &proc_rec(sys::EXIT, 100, 102, 0, 0));
        assert_eq!(e.len(), 2);
        assert_eq!(data_of(&e[0]), (102, &b"b"[..], true, 9));
        assert_eq!(e[1].detail, Detail::Exit);
        let e = push(&mut a, &proc_rec(sys::EXIT, 100, 100, 0, 0));
        assert_eq!(e.len(), 2);
        assert_eq!(data_of(&e[0]), (101, &b"a"[..], true, 9));
        assert_eq!(a.pending_calls(), 0);
    }

    fn unix_hdr(syscall: u16, fd: i32, ret: i64, sk: u64) -> EventHeader {
        let mut hdr = header(kind::SOCK, syscall, 200, 200, fd);
        hdr.flags = flags::SOCK_VALID;
        hdr.ret = ret;
        hdr.sock.sk = sk;
        hdr.sock.family = AF_UNIX;
        hdr.sock.sock_type = 1;
        hdr
    }

    fn sun(path: &[u8]) -> Vec<u8> {
        let mut b = 1u16.to_ne_bytes().to_vec();
        b.extend_from_slice(path);
        b
    }

    fn unix(p: &str) -> Option<Endpoint> {
        Some(Endpoint::Unix(p.into()))
    }

    fn unix_data(fd: i32, sk: u64) -> Vec<u8> {
        let mut hdr = unix_hdr(sys::WRITE, fd, 2, sk);
        hdr.kind = kind::DATA;
        hdr.flags |= FIRST | LAST;
        data_record(
            &DataEvent {
                hdr,
                total: 2,
                offset: 0,
                len: 2,
                msg_index: 0,
                addr: MsgAddr::default(),
            },
            b"hi",
        )
    }

    #[test]
    fn unix_client_paths() {
        let mut a = asm();
        let ev = sock_event(
            unix_hdr(sys::CONNECT, 3, 0, 0x51),
            [0; 4],
            &sun(b"/run/app.sock\0"),
        );
        let e = push(&mut a, &bytes_of(&ev));
        assert_eq!(
            e[0].detail,
            Detail::Sock {
                args: [0; 4],
                addr: unix("/run/app.sock")
            }
        );
        let s = e[0].sock.as_ref().unwrap();
        assert_eq!(
            (s.local.clone(), s.remote.clone()),
            (None, unix("/run/app.sock"))
        );
        let e = push(&mut a, &unix_data(3, 0x51));
        let s = e[0].sock.as_ref().unwrap();
        assert_eq!(s.transport, Transport::UnixStream);
        assert_eq!(s.remote, unix("/run/app.sock"));
        // close: the event still shows the path, then it is forgotten.
        let ev = sock_event(unix_hdr(sys::CLOSE, 3, 0, 0x51), [0; 4], &[]);
        let e = push(&mut a, &bytes_of(&ev));
        assert_eq!(e[0].sock.as_ref().unwrap().remote, unix("/run/app.sock"));
        assert_eq!(a.unix_endpoints((0x51, 0)), None);
        let e = push(&mut a, &unix_data(3, 0x51));
        assert_eq!(e[0].sock.as_ref().unwrap().remote, None);
    }

    #[test]
    fn unix_failed_connect_not_remembered() {
        let mut a = asm();
        let ev = sock_event(unix_hdr(sys::CONNECT, 3, -111, 0x51), [0; 4], &sun(b"/x\0"));
        let e = push(&mut a, &bytes_of(&ev));
        assert_eq!(e[0].sock.as_ref().unwrap().remote, None);
        assert_eq!(a.unix_endpoints((0x51, 0)), None);
    }

    #[test]
    fn unix_server_paths() {
        let mut a = asm();
        let bind = sock_event(
            unix_hdr(sys::BIND, 3, 0, 0x60),
            [0; 4],
            &sun(b"/run/srv.sock\0"),
        );
        let e = push(&mut a, &bytes_of(&bind));
        assert_eq!(e[0].sock.as_ref().unwrap().local, unix("/run/srv.sock"));
        // accept on the listening socket (state TCP_LISTEN), peer unnamed, new fd 5.
        let mut hdr = unix_hdr(sys::ACCEPT4, 3, 5, 0x60);
        hdr.sock.state = TCP_LISTEN;
        let acc = sock_event(hdr, [0; 4], &sun(b""));
        let e = push(&mut a, &bytes_of(&acc));
        assert_eq!(
            e[0].detail,
            Detail::Sock {
                args: [0; 4],
                addr: unix("")
            }
        );
        // First event on the new socket (fd 5, new sk) picks up the paths.
        let e = push(&mut a, &unix_data(5, 0x61));
        let s = e[0].sock.as_ref().unwrap();
        assert_eq!(
            (s.local.clone(), s.remote.clone()),
            (unix("/run/srv.sock"), unix(""))
        );
        assert_eq!(
            a.unix_endpoints((0x61, 0)),
            Some(&UnixEnds {
                local: unix("/run/srv.sock"),
                remote: unix("")
            })
        );
    }

    #[test]
    fn unix_accept_describing_new_socket() {
        let mut a = asm();
        let hdr = unix_hdr(sys::ACCEPT, 3, 5, 0x70);
        let acc = sock_event(hdr, [0; 4], &sun(b"\0peer"));
        let e = push(&mut a, &bytes_of(&acc));
        assert_eq!(e[0].sock.as_ref().unwrap().remote, unix("@peer"));
    }

    #[test]
    fn remember_unix_seeds() {
        let mut a = asm();
        a.remember_unix((0x51, 0), None, unix("/seeded"));
        a.remember_unix((0x51, 0), unix("/l"), None);
        let e = push(&mut a, &unix_data(9, 0x51));
        let s = e[0].sock.as_ref().unwrap();
        assert_eq!(
            (s.local.clone(), s.remote.clone()),
            (unix("/l"), unix("/seeded"))
        );
    }

    #[test]
    fn sock_event_inet() {
        let mut a = asm();
        let mut hdr = header(kind::SOCK, sys::CONNECT, 4242, 4242, 3);
        hdr.flags = flags::SOCK_VALID;
        hdr.sock = tcp4(1, [127, 0, 0, 1], 40112, [192, 168, 10, 1], 5555);
        let mut ev = sock_event(hdr, [0; 4], &[2, 0, 0x15, 0xb3, 192, 168, 10, 1]);
        ev.addr_len = 100_000; // bogus: clamped to the buffer
        let e = push(&mut a, &bytes_of(&ev));
        assert_eq!(
            e[0].detail,
            Detail::Sock {
                args: [0; 4],
                addr: Some(Endpoint::Inet("192.168.10.1:5555".parse().unwrap()))
            }
        );
        assert_eq!(e[0].task.comm, "python3");
    }

    #[test]
    fn timestamps() {
        let a = Assembler::new(-10, ThreadComm);
        assert_eq!(a.wall_ns(5), 0);
        assert_eq!(a.wall_ns(15), 5);
        let a = Assembler::new(i64::MAX, ThreadComm);
        assert_eq!(a.wall_ns(u64::MAX), u64::MAX);
    }

    #[test]
    fn lost() {
        let e = lost_event(7, 12, 34567);
        assert_eq!(
            e.detail,
            Detail::Lost {
                events: 12,
                bytes: 34567
            }
        );
        assert_eq!(e.ts_ns, 7);
    }

    /// Kernel bytes all the way to output lines.
    #[test]
    fn bytes_to_lines() {
        use crate::output::json::to_json;
        use crate::output::text::{TextConfig, format_event};
        let mut a = Assembler::new(OFF, |pid: u32| (pid == 4242).then(|| "python3".to_string()));
        let mut hdr = header(kind::SOCK, sys::CONNECT, 4242, 4242, 3);
        hdr.flags = flags::SOCK_VALID;
        hdr.sock = tcp4(0x10, [127, 0, 0, 1], 40112, [192, 168, 10, 1], 5555);
        let connect = sock_event(
            hdr,
            [0; 4],
            &[2, 0, 0x15, 0xb3, 192, 168, 10, 1, 0, 0, 0, 0],
        );
        let mut events = push(&mut a, &bytes_of(&connect));
        let mut dh = hdr;
        dh.kind = kind::DATA;
        dh.syscall = sys::SENDTO;
        dh.tid = 4243;
        dh.ret = 12;
        dh.flags |= FIRST;
        let first = DataEvent {
            hdr: dh,
            total: 12,
            offset: 0,
            len: 6,
            msg_index: 0,
            addr: MsgAddr::default(),
        };
        events.extend(push(&mut a, &data_record(&first, b"Hello ")));
        dh.flags = flags::SOCK_VALID | LAST;
        let last = DataEvent {
            hdr: dh,
            offset: 6,
            ..first
        };
        events.extend(push(&mut a, &data_record(&last, b"World!")));
        let cfg = TextConfig {
            timestamps: false,
            ..TextConfig::default()
        };
        let lines: Vec<String> = events.iter().map(|e| format_event(e, &cfg)).collect();
        assert_eq!(
            lines,
            [
                "python3[4242] connect(3, 192.168.10.1:5555) = 0",
                "python3[4242/4243] sendto(3, 127.0.0.1:40112 -> 192.168.10.1:5555) = 12 \"Hello World!\"",
            ]
        );
        assert_eq!(
            to_json(&events[1]),
            r#"{"type":"data","ts":"2023-11-14T22:13:20.000001000Z","ts_ns":1700000000000001000,"pid":4242,"tid":4243,"comm":"python3","syscall":"sendto","fd":3,"ret":12,"errno":null,"transport":"tcp","local":"127.0.0.1:40112","remote":"192.168.10.1:5555","sk":"0x10","dir":"send","total":12,"captured":12,"truncated":false,"msg_index":0,"addr":null,"payload":"Hello World!","payload_b64":"SGVsbG8gV29ybGQh"}"#
        );
    }

    #[test]
    fn bad_bytes_are_errors() {
        let mut a = asm();
        assert!(a.push_bytes(&[0; 10]).is_err());
    }
}
