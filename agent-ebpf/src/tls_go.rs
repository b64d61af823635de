//! Go `crypto/tls` (`capagent trace --tls`): `(*Conn).Write` and `(*Conn).Read` of Go 1.17+
//! binaries on x86-64 (the register ABI), attached by file offset (userspace finds them in
//! `.symtab` or `.gopclntab`, `agent/src/trace/tls/go.rs`).
//!
//! Go moves goroutine stacks and switches goroutines between threads, so:
//! - no uretprobe (it rewrites the return address on a stack Go may move: Go crashes);
//!   `go_tls_ret` is a plain uprobe on every RET instruction of the function instead;
//! - a call is keyed by its goroutine (`g`, always in R14 under the register ABI), not by
//!   its thread: a `Read` that blocks resumes on whichever thread the scheduler picks.
//!
//! - `go_tls_enter` (entry; bpf cookie = `tls_fn::GO_WRITE`/`GO_READ`): the receiver
//!   (`*tls.Conn`, RAX) and the buffer (`b.ptr` RBX, `b.len` RCX) of the goroutine's call.
//! - `go_tls_ret` (each RET; same cookie): the result `n` (RAX); `n` bytes of the buffer as
//!   `TlsEvent` chunks, exactly like the C libraries' (`emit_tls`); with `--stack`, the
//!   stack at that RET (the caller's: see there).
//!
//! The socket: the read/write syscalls the goroutine makes inside the call (`sys_enter`
//! reads R14 of the syscall's registers: [`note_fd`]; the socket as that syscall saw it,
//! since the goroutine may reach its RET only after the connection was closed), else the
//! connection's last known fd (the same per-process cache as the C libraries', keyed by
//! the `*tls.Conn`, which Go's garbage collector does not move), kept only while the fd
//! holds the same socket; else fd -1.

use agent_common::{SockInfo, flags, tls_fn};
use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, generated::bpf_get_attach_cookie},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};

use crate::{
    helpers::kread,
    tls::{known_fd, remember},
    trace::{emit_tls, is_traced, pause_if_stacks_filling, resolve_fd, tls_stack},
};

/// The `(*Conn).Read`/`Write` call each goroutine of a traced process is in. LRU: a call
/// whose RET is never reached (the process exits, the goroutine blocks forever) ages out.
#[map]
static GO_CALLS: LruHashMap<GoKey, GoCall> = LruHashMap::with_max_entries(65536, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct GoKey {
    tgid: u32,
    _pad: u32,
    /// The goroutine (`runtime.g` pointer).
    g: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct GoCall {
    /// The `*tls.Conn`.
    conn: u64,
    buf: u64,
    len: u64,
    /// The socket a syscall inside the call used (fd -1: none yet).
    fd: i64,
    sk: u64,
    /// When that syscall was entered, else when the call was: the record's time, since Go
    /// may run the goroutine to its RET long after (the record then still says when the
    /// bytes went, before the connection's later records). The entry time stands in when no
    /// syscall of the call was seen (a `Read` from the connection's buffer, or a syscall
    /// made where the goroutine could not be told): still within the call.
    ts_ns: u64,
    /// `tls_fn::GO_WRITE` or `GO_READ`.
    func: u32,
    _pad: u32,
    /// Room for the socket's endpoints at the RET (kept off the stack).
    sock: SockInfo,
}

#[inline(always)]
fn key(id: u64, g: u64) -> GoKey {
    GoKey {
        tgid: (id >> 32) as u32,
        _pad: 0,
        g,
    }
}

#[uprobe]
pub fn go_tls_enter(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return 0;
    }
    // SAFETY: the context of a uprobe is the task's `struct pt_regs`; the helper only
    // reads the attachment's cookie from it.
    let (g, conn, buf, len, func) = unsafe {
        let r = &*ctx.regs;
        (
            r.r14,
            r.rax,
            r.rbx,
            r.rcx,
            bpf_get_attach_cookie(ctx.as_ptr()) as u32,
        )
    };
    let call = GoCall {
        conn,
        buf,
        len,
        fd: -1,
        sk: 0,
        // SAFETY: a helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        func,
        _pad: 0,
        sock: SockInfo::default(),
    };
    // A call of the same goroutine whose RET was missed is replaced.
    let _ = GO_CALLS.insert(&key(id, g), &call, 0);
    0
}

#[uprobe]
pub fn go_tls_ret(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: as in `go_tls_enter`.
    let (g, n, func, ip, sp, bp) = unsafe {
        let r = &*ctx.regs;
        (
            r.r14,
            r.rax as i64,
            bpf_get_attach_cookie(ctx.as_ptr()) as u32,
            r.rip,
            r.rsp,
            r.rbp,
        )
    };
    let k = key(id, g);
    let Some(slot) = GO_CALLS.get_ptr_mut(&k) else {
        return 0;
    };
    // SAFETY: a map value of this goroutine's (only the thread running it writes it).
    let c = unsafe { &mut *slot };
    if c.func != func {
        // The entry of the other function: its RET was missed. Nothing to pair.
        let _ = GO_CALLS.remove(&k);
        return 0;
    }
    let mut total = if n > 0 { n as u64 } else { 0 };
    if total > c.len {
        total = c.len;
    }
    let mut fd = c.fd;
    let valid = if fd >= 0 {
        // A syscall inside this call used the socket: `c.sock` holds it as it was then.
        // Not looked up again: Go may run the goroutine again only long after the syscall
        // (it waits for a P), when the connection may be closed and its fd reused.
        true
    } else {
        let mut sk = 0;
        if let Some((known, known_sk)) = known_fd(id, c.conn) {
            fd = known;
            sk = known_sk;
        }
        fd >= 0 && resolve_fd(fd, &mut c.sock, true) && c.sock.sk == sk
    };
    if !valid {
        fd = -1;
        c.sock = SockInfo::default();
    }
    // `--stack`: the stack at this RET, not at the entry. The goroutine may have moved to
    // another thread since its entry (the record is paired with its stack by thread), and
    // Go may have moved its stack (it then fixes the frame pointers): at a RET the frame is
    // gone, the return address is at sp and bp is the caller's, so the stack is the
    // caller's as it was at the call.
    let stack_id = tls_stack(ip, sp, bp);
    // The time of the syscall inside the call, else of the call's entry.
    emit_tls(
        func as u16,
        c.conn,
        n,
        fd,
        &c.sock,
        valid,
        c.buf,
        total,
        c.ts_ns,
        0,
        stack_id,
    );
    if stack_id != 0 {
        pause_if_stacks_filling();
    }
    if func == tls_fn::GO_WRITE as u32 {
        pending_done(k);
    }
    let _ = GO_CALLS.remove(&k);
    0
}

/// From `sys_enter` (`regs`: the syscall's user registers): a Go goroutine inside
/// `(*Conn).Read`/`Write` makes a read/write-type syscall on socket `fd`; that is its
/// connection's socket. The goroutine is R14 of the syscall (Go's syscall path keeps it
/// there); a thread of the process that is not running Go code has no call under its R14.
/// `sock`: the socket as the syscall's record has it (kept for the call's record).
#[inline(always)]
pub(crate) fn note_fd(id: u64, regs: u64, fd: i64, sock: &SockInfo) {
    let sk = sock.sk;
    // SAFETY: `regs` is the kernel's `struct pt_regs` of the syscall (raw tracepoint
    // argument); the helper checks the address.
    let g: u64 = unsafe { kread(regs + core::mem::offset_of!(pt_regs, r14) as u64) };
    let Some(slot) = GO_CALLS.get_ptr_mut(&key(id, g)) else {
        return;
    };
    // SAFETY: as in `go_tls_ret`.
    let c = unsafe { &mut *slot };
    c.fd = fd;
    c.sk = sk;
    c.sock = *sock;
    // SAFETY: a helper without arguments.
    c.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    if c.func == tls_fn::GO_READ as u32 || c.func == tls_fn::GO_WRITE as u32 {
        remember(id, c.conn, fd, sk);
    }
    if c.func == tls_fn::GO_WRITE as u32 {
        pending_add(id, g);
    }
}

/// How many `Write` calls per process [`GO_PENDING`] holds.
const PENDING_MAX: usize = 4;

/// Per process: the goroutines in a `(*Conn).Write` whose write syscall was made (0: a free
/// slot), so that the process's exit can still report them ([`flush_pending`]) without
/// walking `GO_CALLS`. Go's HTTP client writes a request in its own goroutine: when the
/// program exits right after reading the response, that goroutine may never have run to
/// the RET of its `Write`, whose bytes were sent all the same.
#[map]
static GO_PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    g: [u64; PENDING_MAX],
}

/// Notes goroutine `g` of the current process as in a `Write` whose syscall was made.
/// Beyond [`PENDING_MAX`] such goroutines at once, the others are not noted (their
/// `Write` is then reported at its RET only).
#[inline(always)]
fn pending_add(id: u64, g: u64) {
    let tgid = (id >> 32) as u32;
    let slot = match GO_PENDING.get_ptr_mut(&tgid) {
        Some(slot) => slot,
        None => {
            // BPF_NOEXIST: another thread's concurrent insert is not overwritten.
            let _ = GO_PENDING.insert(
                &tgid,
                &Pending {
                    g: [0; PENDING_MAX],
                },
                1,
            );
            let Some(slot) = GO_PENDING.get_ptr_mut(&tgid) else {
                return;
            };
            slot
        }
    };
    // SAFETY: a map value. (The BPF target has no compare-and-swap: two goroutines of one
    // process noted at the same instant may take the same free slot, and one of them is
    // then reported at its RET only.)
    let p = unsafe { &mut *slot };
    let mut free = PENDING_MAX;
    for i in 0..PENDING_MAX {
        if p.g[i] == g {
            return;
        }
        if p.g[i] == 0 && free == PENDING_MAX {
            free = i;
        }
    }
    if free < PENDING_MAX {
        p.g[free] = g;
    }
}

/// The `Write` of goroutine `k.g` returned: it is no longer pending.
#[inline(always)]
fn pending_done(k: GoKey) {
    let Some(slot) = GO_PENDING.get_ptr_mut(&k.tgid) else {
        return;
    };
    // SAFETY: a map value; only this goroutine's thread clears its own slot.
    let p = unsafe { &mut *slot };
    for i in 0..PENDING_MAX {
        if p.g[i] == k.g {
            p.g[i] = 0;
        }
    }
}

/// From `sched_process_exit` of the process's last thread (its memory still mapped): each
/// pending `Write` ([`GO_PENDING`]) is reported with its whole buffer, flagged
/// `UNFINISHED`, on the socket and at the time of its syscall.
#[inline(always)]
pub(crate) fn flush_pending(id: u64) {
    let tgid = (id >> 32) as u32;
    // SAFETY: a map value read by copy.
    let Some(p) = (unsafe { GO_PENDING.get(&tgid) }).copied() else {
        return;
    };
    let _ = GO_PENDING.remove(&tgid);
    for i in 0..PENDING_MAX {
        let g = p.g[i];
        if g == 0 {
            continue;
        }
        let k = key(id, g);
        let Some(slot) = GO_CALLS.get_ptr_mut(&k) else {
            continue;
        };
        // SAFETY: a map value; the process's threads are all gone.
        let c = unsafe { &mut *slot };
        if c.func == tls_fn::GO_WRITE as u32 && c.fd >= 0 {
            emit_tls(
                tls_fn::GO_WRITE,
                c.conn,
                c.len as i64,
                c.fd,
                &c.sock,
                true,
                c.buf,
                c.len,
                c.ts_ns,
                flags::UNFINISHED,
                0,
            );
        }
        let _ = GO_CALLS.remove(&k);
    }
}
