//! TLS plaintext (`capagent trace --tls`): uprobes on the read/write functions of the TLS
//! libraries, attached by userspace once per library file for every process; the programs
//! keep to the traced processes (`TRACED`, or every process with `trace_all`).
//!
//! - `tls_enter` (uprobe, bpf cookie = the `tls_fn` id): remembers the connection object,
//!   the buffer, its length and (`_ex` functions) the pointer the byte count is written to,
//!   per thread. Debian's libssl clears the argument registers before returning, so the
//!   buffer can only be read here.
//! - `tls_exit` (uretprobe, same cookie): the bytes the call moved, copied from the buffer
//!   into `TlsEvent` chunks exactly like a syscall's payload (snaplen, chunks, lossless
//!   pause, loss counters).
//! - `tls_set_fd` / `tls_free`: learn and forget the fd of a connection object.
//!
//! Which socket a call used: the socket syscalls the thread makes inside the call (seen by
//! `sys_enter`, [`note_fd`]), else the connection's last known fd, kept only while that fd
//! still holds the same `struct sock`. Otherwise the record says fd -1: never a guess.
//!
//! Nested calls (`SSL_write_ex` calling `SSL_write_ex2` in OpenSSL 3.3+, `gnutls_record_send`
//! jumping to `gnutls_record_send2`) are recorded once, as the outermost call. The stack
//! pointer tells them apart: a call entered below the outermost call's frame is nested in it;
//! one entered at or above it starts afresh (a tail call into another hooked function, or a
//! thread whose return probe was missed); a return at the outermost frame ends the call.

use agent_common::{FileKey, SockInfo, counter, flags, tls_cookie, tls_fn};
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_attach_cookie},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    helpers::{get_or_insert, uread},
    trace::{bump, emit_tls, is_traced, pause_if_stacks_filling, resolve_fd, tls_stack},
};

/// The TLS call each thread of a traced process is in (key: pid_tgid; freed at thread
/// exit). LRU: when more threads than it holds make TLS calls, the least recently active
/// lose their entry (a call in progress then goes unrecorded) instead of new threads never
/// getting one.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// (tgid, connection object) -> the fd it was last seen on and that fd's `struct sock`.
#[map]
static TLS_CONNS: LruHashMap<ConnKey, ConnFd> = LruHashMap::with_max_entries(65536, 0);

/// The files userspace has examined for TLS functions (whether it found any or not): an
/// executable mapping of one of them is not reported (see `mmap_exit` in `trace`).
#[map]
pub(crate) static TLS_SEEN: LruHashMap<FileKey, u8> = LruHashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct TlsCall {
    /// The library's connection object (`SSL *`, `gnutls_session_t`).
    conn: u64,
    buf: u64,
    len: u64,
    /// `_ex` functions: where the library writes the byte count (`size_t *`).
    out: u64,
    /// The stack pointer at the outermost call's entry.
    sp: u64,
    /// The socket a syscall inside the call used (fd -1: none yet).
    fd: i64,
    sk: u64,
    /// The `tls_fn` id of the outermost call.
    func: u32,
    /// Calls in progress (the outermost and those nested in it); 0: none.
    depth: u32,
    /// `--stack`: the stack taken at the outermost call's entry (0: none).
    stack_id: u32,
    _pad: u32,
    /// Room for the socket's endpoints at exit (kept off the stack).
    sock: SockInfo,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ConnKey {
    tgid: u32,
    _pad: u32,
    conn: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ConnFd {
    fd: i64,
    sk: u64,
}

#[inline(always)]
fn conn_key(id: u64, conn: u64) -> ConnKey {
    ConnKey {
        tgid: (id >> 32) as u32,
        _pad: 0,
        conn,
    }
}

/// Where the `_ex` functions write the byte count: their 4th argument, `SSL_write_ex2`'s 5th;
/// a wrapper's inner function (`inner`, see `tls_cookie::WRAPPED`) its 4th, whoever calls it.
#[inline(always)]
fn out_arg(ctx: &ProbeContext, func: u16, inner: bool) -> u64 {
    // Both read at their fixed offsets (volatile): the verifier refuses a context access at
    // an offset picked at run time.
    // SAFETY: the context of a uprobe is the task's `struct pt_regs`.
    let (a3, a4) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.regs).rcx),
            core::ptr::read_volatile(&(*ctx.regs).r8),
        )
    };
    if inner {
        return a3;
    }
    match func {
        tls_fn::SSL_WRITE_EX | tls_fn::SSL_READ_EX => a3,
        tls_fn::SSL_WRITE_EX2 => a4,
        _ => 0,
    }
}

#[uprobe]
pub fn tls_enter(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return 0;
    }
    // SAFETY: the helper only reads the attachment's cookie from the context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    // SAFETY: the context of a uprobe is the task's `struct pt_regs`.
    let (mut sp, ip, bp) = unsafe { ((*ctx.regs).rsp, (*ctx.regs).rip, (*ctx.regs).rbp) };
    // The registers as they are at this function's first instruction (for its stack).
    let entry_sp = sp;
    // (`as u16`: the `tls_fn` id, without the flags.)
    let mut func = cookie as u16;
    if cookie & tls_cookie::WRAPPED != 0 {
        if cookie & tls_cookie::CALLERS != 0 {
            // An inner function shared by several callers: which one, by where it returns
            // to (the return address, relative to the probed address: the uprobe handler
            // runs with the instruction pointer set back to the breakpoint's address).
            // SAFETY: reads the calling thread's own stack (a fault gives None).
            let ret = unsafe { uread::<u64>(sp) }.unwrap_or(0);
            func = tls_cookie::caller(cookie, ret.wrapping_sub(ip));
        }
        // At the entry of a thin wrapper's inner function: the stack as at the wrapper's
        // `call` (see `tls_cookie::WRAPPED`) is 8 bytes up (the return address).
        sp = sp.wrapping_add(8);
    }
    // (The empty slot is built only when inserted, see `trace::enter`.)
    let Some(slot) = get_or_insert!(
        TLS_CALLS,
        &id,
        TlsCall {
            conn: 0,
            buf: 0,
            len: 0,
            out: 0,
            sp: 0,
            fd: -1,
            sk: 0,
            func: 0,
            depth: 0,
            stack_id: 0,
            _pad: 0,
            sock: SockInfo::default(),
        }
    ) else {
        return 0;
    };
    // SAFETY: a map value of this thread's (only this thread writes it).
    let c = unsafe { &mut *slot };
    let tail = cookie & tls_cookie::TAIL_CALLED != 0;
    if c.depth > 0 && (sp < c.sp || (tail && sp == c.sp)) {
        // Nested in the call in progress (the stack grows down; or jumped to by it, see
        // `tls_cookie::TAIL_CALLED`): counted, not recorded.
        c.depth += 1;
        return 0;
    }
    c.conn = ctx.arg(0).unwrap_or(0);
    c.buf = ctx.arg(1).unwrap_or(0);
    c.len = ctx.arg(2).unwrap_or(0);
    c.out = out_arg(&ctx, func, cookie & tls_cookie::WRAPPED != 0);
    c.sp = sp;
    c.fd = -1;
    c.sk = 0;
    c.func = func as u32;
    c.depth = 1;
    // `--stack`: the stack at the call's entry (the return address at sp).
    c.stack_id = tls_stack(ip, entry_sp, bp);
    0
}

#[uretprobe]
pub fn tls_exit(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = TLS_CALLS.get_ptr_mut(&id) else {
        return 0;
    };
    // SAFETY: as in `tls_enter`.
    let c = unsafe { &mut *slot };
    if c.depth == 0 {
        return 0;
    }
    // SAFETY: the context of a uretprobe is the task's `struct pt_regs`, after the return
    // (the return address popped: the entry's stack pointer + 8).
    let (mut sp, mut rax) = unsafe { ((*ctx.regs).rsp.wrapping_sub(8), (*ctx.regs).rax) };
    // SAFETY: the helper only reads the attachment's cookie from the context.
    let inner = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } & tls_cookie::WRAPPED != 0;
    if inner {
        // The return of a thin wrapper's inner function (see `tls_cookie::WRAPPED`): the
        // stack as at the wrapper's `call`, as `tls_enter` stored it.
        sp = sp.wrapping_add(8);
    }
    if sp < c.sp {
        // A nested call returns.
        if c.depth > 1 {
            c.depth -= 1;
        }
        return 0;
    }
    c.depth = 0;
    if sp > c.sp {
        // Returned past the outermost call's frame: its own return was missed.
        return 0;
    }
    let func = c.func as u16;
    // The peer's end of the stream: INNER's own 0 for a read (see `flags::TLS_EOF`).
    let eof = inner && !tls_fn::is_write(func) && rax as i32 == 0;
    if inner && matches!(func, tls_fn::SSL_WRITE_EX | tls_fn::SSL_READ_EX) && (rax as i32) < 0 {
        // The `_ex` wrappers return max(INNER's int, 0).
        rax = 0;
    }
    let ret: i64 = match func {
        // The inner function's callers that return the byte count (the BIO: the byte count
        // or INNER's failure, see `tls_cookie::CALLERS`).
        tls_fn::SSL_WRITE | tls_fn::SSL_READ | tls_fn::BIO_WRITE | tls_fn::BIO_READ if inner => {
            let r = rax as i32;
            if r > 0 { count_at(c.out) } else { r as i64 }
        }
        tls_fn::SSL_WRITE_EX | tls_fn::SSL_READ_EX | tls_fn::SSL_WRITE_EX2 => {
            let r = rax as i32;
            if r == 1 { count_at(c.out) } else { r as i64 }
        }
        // int
        tls_fn::SSL_WRITE | tls_fn::SSL_READ => rax as i32 as i64,
        // ssize_t
        _ => rax as i64,
    };
    let call = Finished {
        func,
        conn: c.conn,
        ret,
        buf: c.buf,
        len: c.len,
        fd: c.fd,
        sk: c.sk,
        flags: if eof { flags::TLS_EOF } else { 0 },
        stack_id: c.stack_id,
    };
    finish(id, &call, &mut c.sock);
    if call.stack_id != 0 {
        pause_if_stacks_filling();
    }
    0
}

/// The byte count a library wrote at `out` (the `_ex` functions' out-pointer); 0, counted as
/// a read error, when it cannot be read.
#[inline(always)]
fn count_at(out: u64) -> i64 {
    // SAFETY: reads the calling thread's memory (a fault gives None).
    match unsafe { uread::<u64>(out) } {
        Some(n) => n as i64,
        None => {
            bump(counter::READ_ERRORS, 1);
            0
        }
    }
}

/// A TLS call that returned: what its records say.
pub(crate) struct Finished {
    /// `tls_fn` id.
    pub func: u16,
    /// The connection object.
    pub conn: u64,
    /// Bytes moved (or the call's failure).
    pub ret: i64,
    /// The plaintext buffer and its size.
    pub buf: u64,
    pub len: u64,
    /// The socket a syscall inside the call used (fd -1: none).
    pub fd: i64,
    pub sk: u64,
    /// Added to the records' flags (`flags::TLS_EOF`).
    pub flags: u16,
    /// `--stack`: the call's stack (0: none).
    pub stack_id: u32,
}

/// Emits the records of a finished call of the current process (`id`: pid_tgid): its
/// plaintext (at most `len` bytes), on the socket used inside the call, else on the
/// connection's last known one, each only while its fd still holds the same `struct sock`;
/// else on fd -1. `sock`: room for the socket's endpoints, off the stack (the programs' stack
/// is small).
#[inline(always)]
pub(crate) fn finish(id: u64, call: &Finished, sock: &mut SockInfo) {
    let mut total = if call.ret > 0 { call.ret as u64 } else { 0 };
    if total > call.len {
        total = call.len;
    }
    let (mut fd, mut sk) = (call.fd, call.sk);
    // A socket a syscall inside the call used: `sock` holds its endpoints as that syscall
    // resolved them (`note_fd`), the socket the call moved its bytes through.
    let mut valid = fd >= 0 && sock.sk == sk;
    if !valid {
        if fd < 0
            && let Some(known) = unsafe { TLS_CONNS.get(&conn_key(id, call.conn)) }
        {
            fd = known.fd;
            sk = known.sk;
        }
        valid = fd >= 0 && resolve_fd(fd, sock, true) && sock.sk == sk;
    }
    if !valid {
        fd = -1;
        *sock = SockInfo::default();
    }
    emit_tls(
        call.func,
        call.conn,
        call.ret,
        fd,
        sock,
        valid,
        call.buf,
        total,
        0,
        call.flags,
        call.stack_id,
    );
}

/// From `sys_enter`: the current thread makes a send/recv-type syscall on socket `fd`
/// (resolved into `sock`); inside a TLS call, that is the call's socket, and its endpoints
/// are kept for the call's records (`tls_exit` does not resolve the fd again).
#[inline(always)]
pub(crate) fn note_fd(id: u64, fd: i64, sock: &SockInfo) {
    let Some(slot) = TLS_CALLS.get_ptr_mut(&id) else {
        return;
    };
    // SAFETY: as in `tls_enter`.
    let c = unsafe { &mut *slot };
    if c.depth == 0 {
        return;
    }
    c.fd = fd;
    c.sk = sock.sk;
    c.sock = *sock;
    remember(id, c.conn, fd, sock.sk);
}

/// Notes that connection object `conn` of the current process uses socket `fd`.
#[inline(always)]
pub(crate) fn remember(id: u64, conn: u64, fd: i64, sk: u64) {
    let key = conn_key(id, conn);
    if let Some(known) = TLS_CONNS.get_ptr_mut(&key) {
        // SAFETY: a map value; a concurrent writer can only write the same kind of value.
        unsafe {
            if (*known).fd != fd || (*known).sk != sk {
                *known = ConnFd { fd, sk };
            }
        }
        return;
    }
    let _ = TLS_CONNS.insert(&key, &ConnFd { fd, sk }, 0);
}

/// The fd and `struct sock` connection object `conn` of the current process was last seen
/// on (Go's calls, `tls_go`, share the cache).
#[inline(always)]
pub(crate) fn known_fd(id: u64, conn: u64) -> Option<(i64, u64)> {
    // SAFETY: a map value read by copy.
    unsafe { TLS_CONNS.get(&conn_key(id, conn)) }.map(|k| (k.fd, k.sk))
}

/// From `sched_process_exit`: the thread is gone.
#[inline(always)]
pub(crate) fn forget_thread(id: u64) {
    let _ = TLS_CALLS.remove(&id);
}

/// `SSL_set_fd(ssl, fd)` and the like (cookie: `tls_cookie`): the connection's socket.
#[uprobe]
pub fn tls_set_fd(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return 0;
    }
    let conn: u64 = ctx.arg(0).unwrap_or(0);
    let mut fd = ctx.arg::<u64>(1).unwrap_or(u64::MAX) as i32 as i64;
    // SAFETY: as in `tls_enter`.
    if fd < 0 && unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } == tls_cookie::GNUTLS_SET_INT2 {
        // gnutls_transport_set_int2(session, recv_fd, send_fd) with recv_fd -1.
        fd = ctx.arg::<u64>(2).unwrap_or(u64::MAX) as i32 as i64;
    }
    let mut sock = SockInfo::default();
    if resolve_fd(fd, &mut sock, false) {
        remember(id, conn, fd, sock.sk);
    } else {
        let _ = TLS_CONNS.remove(&conn_key(id, conn));
    }
    0
}

/// `SSL_free(ssl)`, `gnutls_deinit(session)`: the connection object is gone.
#[uprobe]
pub fn tls_free(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return 0;
    }
    let conn: u64 = ctx.arg(0).unwrap_or(0);
    let _ = TLS_CONNS.remove(&conn_key(id, conn));
    0
}
