//! Socket syscall tracing (`capagent trace`): the `sys_enter`/`sys_exit` raw tracepoints
//! and the process tracepoints (see the crate's documentation).

use agent_common::{
    CHUNK_MAX, Config, DataEvent, EventHeader, FileKey, MsgAddr, ProcEvent, SOCKADDR_MAX,
    STACK_MAX, SYS_TLS_ONLY, SYSCALL_TABLE_LEN, SockEvent, SockInfo, StackEvent, TlsEvent, counter,
    flags, kind, paused, stack_flags, sys, traced,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_boot_ns,
        generated::{bpf_get_smp_processor_id, bpf_loop, bpf_probe_read_user, bpf_send_signal},
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::{
    helpers::{CLONE_THREAD, get_or_insert, global, kread, process_comm, uread, wakeup_flags},
    tls, tls_go,
};

/// Filled by userspace at load time (kernel offsets, snaplen, filters).
#[unsafe(no_mangle)]
static CONFIG: Config = Config::new();

/// Records for userspace. Its size is set at load time.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Processes (tgid) being traced; value: `traced::ROOT` or `traced::CHILD`.
#[map]
static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// Processes (tgid) stopped because the ring buffer (or, `--stack`, the stack ring) was
/// filling up (lossless mode), or (`--tls`) until the agent has hooked what they mapped;
/// value: `paused::RING`/`STACKS`/`TLS`.
#[map]
static PAUSED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Arguments of the call each traced thread is in (key: pid_tgid).
#[map]
static ARGS: HashMap<u64, Args> = HashMap::with_max_entries(65536, 0);

/// Connected stream sockets already resolved, by (tgid << 32 | fd): a send/recv on them
/// checks the fd still holds the same socket (file and inode number) instead of walking to
/// `struct sock` again. Entries go on close and on connect/bind/accept refreshes.
#[map]
static FDS: LruHashMap<u64, FdCache> = LruHashMap::with_max_entries(65536, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct FdCache {
    file: u64,
    sock: SockInfo,
}

/// Per-CPU room to assemble a DATA or TLS record (header + one chunk).
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU progress of the payload copy. It lives in a map rather than on the stack so the
/// verifier sees every `bpf_loop` step alike (map memory is not tracked value by value) and
/// checks the step once instead of once per possible value.
#[map]
static COPY: PerCpuArray<CopyState> = PerCpuArray::with_max_entries(1, 0);

/// `--stack`: user registers and stacks at the entry of reported calls (size set at load
/// time; when full, the stack is dropped and counted, never a payload record).
#[map]
static STACKS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// `--stack`: room to assemble a stack record, one per CPU (index: the CPU's number; a
/// per-CPU array cannot hold values this large). Its size is set at load time.
#[map]
static STACK_BUF: Array<StackBuf> = Array::with_max_entries(1, 0);

#[repr(C)]
struct StackBuf {
    ev: StackEvent,
    /// One page more than [`STACK_MAX`]: a chunk read at an offset below `STACK_MAX` always
    /// fits.
    data: [u8; STACK_MAX + PAGE],
}

const PAGE: usize = 4096;

/// Per-CPU counters (`agent_common::counter`).
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Args {
    sys: u32,
    /// 1 from a traced enter until its exit takes the arguments.
    live: u32,
    fd: i64,
    a: [u64; 5],
    sock_valid: u64,
    sock: SockInfo,
    /// `--stack`: the thread's last stack id (ids count up from 1 per thread).
    stack_seq: u32,
    /// `--stack`: the id of the stack taken at this call's entry, 0 if none.
    stack_id: u32,
}

/// A payload record being assembled: its struct, then one chunk. The chunk always sits at
/// the same place; the TLS record's struct, shorter than the DATA one, ends where the DATA
/// one does, so that either is followed by the chunk.
#[repr(C)]
struct Scratch {
    head: Head,
    data: [u8; CHUNK_MAX],
}

#[repr(C)]
union Head {
    data: DataEvent,
    tls: TlsHead,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TlsHead {
    _lead: [u8; TLS_LEAD],
    ev: TlsEvent,
}

/// Where a TLS record starts in [`Scratch`].
const TLS_LEAD: usize = core::mem::size_of::<DataEvent>() - core::mem::size_of::<TlsEvent>();

/// Which record a payload is emitted as: [`DataEvent`] (a syscall's) or [`TlsEvent`] (a TLS
/// library call's). Both start alike (header, total, offset, len), so the chunking is shared.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    Data,
    Tls,
}

/// Most iovecs looked at per call or message (the kernel's UIO_MAXIOV).
const MAX_IOV: u64 = 1024;
/// Most `bpf_loop` steps per call or message: 128 GiB in CHUNK_MAX chunks.
const MAX_STEPS: u64 = 1 << 23;
/// Most messages of one sendmmsg/recvmmsg whose payload is captured; a call that moved more
/// ends with an empty TRUNCATED record for message MAX_MMSG, so the cut is never silent.
const MAX_MMSG: u64 = 8;

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const SIGSTOP: u32 = 19;
const SIGCONT: u32 = 18;
const PROT_EXEC: u64 = 4;
const MAP_ANONYMOUS: u64 = 0x20;

/// The configuration (kernel offsets, snaplen, filters).
#[inline(always)]
pub(crate) fn conf() -> &'static Config {
    global(&CONFIG)
}

macro_rules! cfg {
    ($($field:tt)+) => {
        conf().$($field)+
    };
}

#[inline(always)]
pub(crate) fn bump(idx: u32, by: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *p += by };
    }
}

/// [`wakeup_flags`] for `EVENTS`.
#[inline(always)]
fn wakeup(size: u64, reserved: bool) -> u64 {
    wakeup_flags(&EVENTS, size, reserved, cfg!(wakeup_bytes))
}

#[inline(always)]
pub(crate) fn is_traced(tgid: u32) -> bool {
    if cfg!(trace_all) != 0 {
        return tgid != cfg!(self_pid);
    }
    unsafe { TRACED.get(&tgid).is_some() }
}

/// The six syscall arguments from the `struct pt_regs` the syscall entered with, read in
/// one go (userspace checked that the argument registers lie within 64 bytes).
#[inline(always)]
fn syscall_args(regs: u64) -> [u64; 6] {
    let off = cfg!(offsets.regs_args);
    let mut base = off[0];
    for o in off {
        if o < base {
            base = o;
        }
    }
    let win: [u64; 8] = unsafe { kread(regs + base as u64) };
    let mut out = [0u64; 6];
    for i in 0..6 {
        let idx = ((off[i] - base) / 8) as usize;
        if idx < 8 {
            out[i] = win[idx];
        }
    }
    out
}

/// `W` bytes of a kernel struct read in one `bpf_probe_read_kernel`, starting at the lowest
/// of the field offsets it serves (userspace checked at start-up that those fields fit).
struct Window<const W: usize> {
    base: u32,
    bytes: [u8; W],
}

impl<const W: usize> Window<W> {
    #[inline(always)]
    unsafe fn read(addr: u64, offs: &[u32]) -> Self {
        let mut base = u32::MAX;
        for &o in offs {
            if o < base {
                base = o;
            }
        }
        Window {
            base,
            // (One read; not zeroed first, see `kread`.)
            bytes: unsafe { kread::<[u8; W]>(addr + base as u64) },
        }
    }

    /// The field at struct offset `off` (zero when outside the window).
    #[inline(always)]
    fn get<T: Copy + Default>(&self, off: u32) -> T {
        let i = off.wrapping_sub(self.base) as usize;
        if i > W || W - i < core::mem::size_of::<T>() {
            return T::default();
        }
        unsafe { core::ptr::read_unaligned(self.bytes.as_ptr().add(i).cast()) }
    }
}

/// The `struct file` behind `fd` of the current process (0 when there is none).
#[inline(always)]
fn fd_file(fd: i64) -> u64 {
    if fd < 0 {
        return 0;
    }
    let o = &conf().offsets;
    unsafe {
        let task = bpf_get_current_task();
        let files: u64 = kread(task + o.task_files as u64);
        if files == 0 {
            return 0;
        }
        let fdt: u64 = kread(files + o.files_fdt as u64);
        let fdt_w = Window::<16>::read(fdt, &[o.fdt_max_fds, o.fdt_fd]);
        if fd as u64 >= fdt_w.get::<u32>(o.fdt_max_fds) as u64 {
            return 0;
        }
        let fds: u64 = fdt_w.get(o.fdt_fd);
        kread(fds + (fd as u64) * 8)
    }
}

/// Finds the socket behind `fd` of the current process; false when fd is not a socket.
/// `cached`: a send/recv, which may use the FDS cache; other calls read the socket afresh
/// (their endpoints may just have changed) and refresh the cache.
#[inline(always)]
pub(crate) fn resolve_fd(fd: i64, info: &mut SockInfo, cached: bool) -> bool {
    let file = fd_file(fd);
    if file == 0 {
        return false;
    }
    let o = &conf().offsets;
    let key = (bpf_get_current_pid_tgid() & !0xffff_ffff) | (fd as u64 & 0xffff_ffff);
    unsafe {
        let file_w = Window::<16>::read(file, &[o.file_inode, o.file_private_data]);
        let inode: u64 = file_w.get(o.file_inode);
        if cached && let Some(c) = FDS.get(&key) {
            // Same file, and the same inode number (file and inode memory is reused).
            if c.file == file && kread::<u64>(inode + o.inode_ino as u64) == c.sock.ino {
                *info = c.sock;
                return true;
            }
        }
        let mode: u16 = kread(inode + o.inode_mode as u64);
        if mode & S_IFMT != S_IFSOCK {
            return false;
        }
        info.ino = kread(inode + o.inode_ino as u64);
        let socket: u64 = file_w.get(o.file_private_data);
        let sk: u64 = kread(socket + o.socket_sk as u64);
        info.sk = sk;
        if sk != 0 {
            read_sock(sk, info);
        }
        // Only connected stream sockets: their endpoints no longer change.
        if info.sock_type == SOCK_STREAM && info.lport != 0 && info.rport != 0 {
            let _ = FDS.insert(&key, &FdCache { file, sock: *info }, 0);
        } else {
            let _ = FDS.remove(&key);
        }
    }
    true
}

/// Forgets the cached socket of `fd` (closed, or its endpoints may change).
#[inline(always)]
fn forget_fd(fd: i64) {
    let key = (bpf_get_current_pid_tgid() & !0xffff_ffff) | (fd as u64 & 0xffff_ffff);
    let _ = FDS.remove(&key);
}

#[inline(always)]
unsafe fn read_sock(sk: u64, info: &mut SockInfo) {
    let o = &conf().offsets;
    unsafe {
        let head = Window::<24>::read(
            sk,
            &[
                o.sk_daddr,
                o.sk_rcv_saddr,
                o.sk_dport,
                o.sk_num,
                o.sk_family,
                o.sk_state,
            ],
        );
        let family: u16 = head.get(o.sk_family);
        info.family = family;
        info.state = head.get::<u8>(o.sk_state) as u16;
        info.lport = head.get(o.sk_num);
        info.rport = u16::from_be(head.get(o.sk_dport));
        let tp = Window::<8>::read(sk, &[o.sk_type, o.sk_protocol]);
        info.sock_type = tp.get(o.sk_type);
        info.protocol = tp.get(o.sk_protocol);
        if family == AF_INET {
            let l: [u8; 4] = head.get(o.sk_rcv_saddr);
            let r: [u8; 4] = head.get(o.sk_daddr);
            info.laddr[..4].copy_from_slice(&l);
            info.raddr[..4].copy_from_slice(&r);
        } else if family == AF_INET6 {
            info.laddr = kread(sk + o.sk_v6_rcv_saddr as u64);
            info.raddr = kread(sk + o.sk_v6_daddr as u64);
        }
    }
}

#[inline(always)]
fn fill_header(
    hdr: &mut EventHeader,
    k: u16,
    call: u16,
    fd: i64,
    ret: i64,
    sock: &SockInfo,
    valid: bool,
) {
    let id = bpf_get_current_pid_tgid();
    hdr.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    hdr.kind = k;
    hdr.syscall = call;
    hdr.flags = if valid { flags::SOCK_VALID } else { 0 };
    hdr._pad0 = 0;
    hdr.pid = (id >> 32) as u32;
    hdr.tid = id as u32;
    hdr.fd = fd as i32;
    hdr.stack_id = 0;
    hdr.ret = ret;
    hdr.comm = process_comm(id, &conf().offsets);
    hdr.sock = *sock;
}

// ---------------------------------------------------------------------------------------------
// Entering a call: remember the arguments.

/// How many arguments after the fd a call needs, and whether the fd must be a socket (and
/// is resolved) at entry. (socket's arguments are all in `a`.)
#[inline(always)]
fn shape(s: u16) -> (usize, bool) {
    match s {
        sys::SOCKET => (3, false),
        sys::SOCKETPAIR => (4, false),
        sys::CONNECT | sys::BIND | sys::ACCEPT => (2, false),
        sys::ACCEPT4 => (3, false),
        sys::LISTEN => (1, false),
        sys::CLOSE => (0, true),
        sys::SHUTDOWN => (1, true),
        sys::SENDTO | sys::RECVFROM => (5, true),
        // len, prot, flags, fd
        sys::MMAP_EXEC => (4, false),
        _ => (2, true),
    }
}

/// The syscalls whose fd names the socket of the TLS call they are made in.
#[inline(always)]
fn moves_data(s: u16) -> bool {
    matches!(
        s,
        sys::READ
            | sys::WRITE
            | sys::READV
            | sys::WRITEV
            | sys::SENDTO
            | sys::RECVFROM
            | sys::SENDMSG
            | sys::RECVMSG
            | sys::SENDMMSG
            | sys::RECVMMSG
    )
}

/// A thread's slot in `ARGS` before its first call.
#[inline(always)]
fn empty_args() -> Args {
    Args {
        sys: 0,
        live: 0,
        fd: 0,
        a: [0; 5],
        sock_valid: 0,
        sock: SockInfo::default(),
        stack_seq: 0,
        stack_id: 0,
    }
}

/// The thread's next stack id (never 0): `counter` is its `Args::stack_seq`.
#[inline(always)]
fn next_stack_id(counter: &mut u32) -> u32 {
    *counter = counter.wrapping_add(1);
    if *counter == 0 {
        *counter = 1;
    }
    *counter
}

#[inline(always)]
fn enter(regs: u64, s: u16, tls_only: bool) -> i32 {
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return 0;
    }
    // tls_only: not reported, only looked at for the fd of the TLS call it is made in.
    let (nargs, sock_now) = if tls_only { (0, true) } else { shape(s) };
    let args = syscall_args(regs);
    // Each thread keeps its slot (freed at thread exit) and the arguments are written into
    // it in place. (The empty slot is built only when inserted: the struct is zeroed by a
    // byte-wise `memset` call in BPF, a few hundred instructions per call otherwise.)
    let Some(slot) = get_or_insert!(ARGS, &id, empty_args()) else {
        return 0;
    };
    let a = unsafe { &mut *slot };
    a.live = 0;
    a.stack_id = 0;
    a.sys = s as u32;
    a.fd = args[0] as i64;
    let first = if s == sys::SOCKET || s == sys::SOCKETPAIR {
        0
    } else {
        1
    };
    for i in 0..5 {
        a.a[i] = if i < nargs { args[first + i] } else { 0 };
    }
    a.sock_valid = 0;
    if sock_now {
        if !resolve_fd(a.fd, &mut a.sock, s != sys::CLOSE && s != sys::SHUTDOWN) {
            return 0;
        }
        a.sock_valid = 1;
        if cfg!(tls) != 0 && moves_data(s) {
            tls::note_fd(id, a.fd, &a.sock);
            tls_go::note_fd(id, regs, a.fd, &a.sock);
        }
    }
    // (Checked in this order so that the verifier drops the path without --stack.)
    if cfg!(stack) != 0 && !tls_only && s != sys::MMAP_EXEC {
        let sid = next_stack_id(&mut a.stack_seq);
        if emit_stack(regs, sid) {
            a.stack_id = sid;
        }
    }
    a.live = !tls_only as u32;
    0
}

/// `--stack`: the user registers (`regs`: the syscall's `struct pt_regs`) and the top of
/// the user stack into `STACKS` as stack `stack_id` of the current thread. False when it
/// was dropped (the ring full: counted) or not made.
#[inline(always)]
fn emit_stack(regs: u64, stack_id: u32) -> bool {
    let r = cfg!(stack_regs);
    // SAFETY: `regs` is the kernel's `struct pt_regs` of the syscall; the helper checks
    // the addresses.
    let (ip, sp, bp): (u64, u64, u64) = unsafe {
        (
            kread(regs + r[0] as u64),
            kread(regs + r[1] as u64),
            kread(regs + r[2] as u64),
        )
    };
    emit_stack_at(ip, sp, bp, stack_id, 0)
}

/// `--stack --tls`: the stack of the current thread at a TLS function's first instruction
/// or at one of its RET instructions (a uprobe's registers `ip`, `sp`, `bp`), as stack
/// `StackEvent` flagged `stack_flags::RET_AT_SP`. Returns its stack id (from the thread's
/// counter shared with its syscalls' stacks), 0 when no stack was taken (no `--stack`, or
/// the ring full: counted).
#[inline(always)]
pub(crate) fn tls_stack(ip: u64, sp: u64, bp: u64) -> u32 {
    if cfg!(stack) == 0 {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = get_or_insert!(ARGS, &id, empty_args()) else {
        return 0;
    };
    // SAFETY: this thread's slot (only this thread writes it); it is not in a syscall.
    let a = unsafe { &mut *slot };
    let sid = next_stack_id(&mut a.stack_seq);
    if emit_stack_at(ip, sp, bp, sid, stack_flags::RET_AT_SP) {
        sid
    } else {
        0
    }
}

/// [`emit_stack`] from the registers, of the current thread: `extra_flags` added to the
/// record's flags. (A function of its own, called with at most 5 arguments.)
#[inline(never)]
fn emit_stack_at(ip: u64, sp: u64, bp: u64, stack_id: u32, extra_flags: u32) -> bool {
    let id = bpf_get_current_pid_tgid();
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(b) = STACK_BUF.get_ptr_mut(cpu) else {
        return false;
    };
    let want = cfg!(stack_size) as u64;
    let mut len: u64 = 0;
    let mut fl = 0u32;
    // Page by page from sp (the first chunk up to sp's page end): the stack mapping ends at
    // a page boundary, so a failed read there means the end of the stack.
    let mut chunk = PAGE as u64 - (sp & (PAGE as u64 - 1));
    for _ in 0..(STACK_MAX / PAGE + 1) {
        if len >= want || len >= STACK_MAX as u64 {
            break;
        }
        let mut n = chunk;
        if n > want - len {
            n = want - len;
        }
        let n = n & (PAGE as u64 * 2 - 1);
        let off = len & (STACK_MAX as u64 - 1);
        if n == 0 || n > PAGE as u64 {
            break;
        }
        // SAFETY: off < STACK_MAX and n <= PAGE: within `data`.
        let rc = unsafe {
            bpf_probe_read_user(
                (*b).data.as_mut_ptr().add(off as usize).cast(),
                n as u32,
                (sp + len) as *const _,
            )
        };
        if rc != 0 {
            fl |= if len == 0 {
                stack_flags::READ_FAILED
            } else {
                stack_flags::TRUNCATED
            };
            break;
        }
        len += n;
        chunk = PAGE as u64;
    }
    if len < want && fl == 0 {
        fl = stack_flags::TRUNCATED;
    }
    unsafe {
        (*b).ev = StackEvent {
            pid: (id >> 32) as u32,
            tid: id as u32,
            stack_id,
            flags: fl | extra_flags,
            ts_ns: bpf_ktime_get_boot_ns(),
            ip,
            sp,
            bp,
            len: len as u32,
            _pad: 0,
        };
    }
    let head = core::mem::size_of::<StackEvent>() as u64;
    let size = (head + len) & (2 * STACK_MAX as u64 - 1);
    if size > head + STACK_MAX as u64 {
        return false;
    }
    // SAFETY: size <= the buffer's size.
    let bytes = unsafe { core::slice::from_raw_parts(b as *const u8, size as usize) };
    // Wake the agent once a quarter of the ring is waiting (it also polls every 10 ms), not
    // for every stack.
    let ring = STACKS.query(BPF_RB_RING_SIZE.into());
    let wake = wakeup_flags(&STACKS, size, false, (ring / 4) as u32);
    if STACKS.output::<[u8]>(bytes, wake).is_err() {
        bump(counter::STACK_LOST, 1);
        return false;
    }
    bump(counter::STACKS, 1);
    true
}

/// Lossless mode, `--stack`: stops the current process once the stack ring is half full
/// (like [`pause_if_filling`] for the main ring: a stack is far bigger than the records of
/// a small call, so this ring fills first). Called at the exit of a call with a stack: a
/// stop sent at its enter would interrupt a blocking call.
#[inline(always)]
pub(crate) fn pause_if_stacks_filling() {
    if cfg!(pause) == 0 {
        return;
    }
    let avail = STACKS.query(BPF_RB_AVAIL_DATA.into());
    let size = STACKS.query(BPF_RB_RING_SIZE.into());
    if avail >= size / 2 {
        pause_current(paused::STACKS);
    }
}

/// Takes the arguments remembered at enter for this thread, if this call is traced.
#[inline(always)]
fn take_args(s: u16) -> Option<&'static Args> {
    let id = bpf_get_current_pid_tgid();
    let slot = ARGS.get_ptr_mut(&id)?;
    let a = unsafe { &mut *slot };
    if a.live == 0 || a.sys != s as u32 {
        return None;
    }
    // Taken: a later exit without an enter (a call begun before tracing) finds nothing. The
    // fields stay as they are until this thread's next traced enter.
    a.live = 0;
    if cfg!(stack) != 0 && a.stack_id != 0 {
        pause_if_stacks_filling();
    }
    Some(a)
}

// ---------------------------------------------------------------------------------------------
// Socket lifecycle records.

#[inline(always)]
fn emit_sock(
    a: &Args,
    fd: i64,
    ret: i64,
    sock: &SockInfo,
    valid: bool,
    args: [u64; 4],
    addr: u64,
    addr_len: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        bump(counter::LOST_EVENTS, 1);
        return;
    };
    let e = entry.as_mut_ptr();
    unsafe {
        fill_header(
            &mut (*e).hdr,
            kind::SOCK,
            a.sys as u16,
            fd,
            ret,
            sock,
            valid,
        );
        (*e).hdr.stack_id = a.stack_id;
        (*e).args = args;
        (*e)._pad = 0;
        (*e).addr = [0; SOCKADDR_MAX];
        let mut len = addr_len;
        if len > SOCKADDR_MAX as u64 {
            len = SOCKADDR_MAX as u64;
        }
        if addr != 0
            && len > 0
            && bpf_probe_read_user((*e).addr.as_mut_ptr().cast(), len as u32, addr as *const _) == 0
        {
            (*e).addr_len = len as u32;
        } else {
            (*e).addr_len = 0;
        }
    }
    entry.submit(wakeup(core::mem::size_of::<SockEvent>() as u64, true));
    bump(counter::EVENTS, 1);
}

#[inline(always)]
fn sock_exit(s: u16, ret: i64) {
    let Some(a) = take_args(s) else { return };
    let mut sock = a.sock;
    let mut valid = a.sock_valid != 0;
    let mut fd = a.fd;
    let mut args = [0u64; 4];
    let (mut addr, mut addr_len) = (0u64, 0u64);
    match s {
        sys::SOCKET => {
            args = [a.a[0], a.a[1], a.a[2], 0];
            fd = ret;
            valid = ret >= 0 && resolve_fd(ret, &mut sock, false);
        }
        sys::SOCKETPAIR => {
            // The fds are in the process's `int sv[2]` (its address saved at entry) once the
            // call has succeeded; the record describes the socket of sv[0].
            args = [a.a[0], a.a[1], a.a[2], u64::MAX];
            fd = -1;
            valid = false;
            if ret == 0
                && let Some(sv) = unsafe { uread::<[i32; 2]>(a.a[3]) }
            {
                args[3] = (sv[0] as u32 as u64) | ((sv[1] as u32 as u64) << 32);
                fd = sv[0] as i64;
                valid = resolve_fd(fd, &mut sock, false);
                // Whatever was cached for an earlier socket of the second fd is stale now.
                forget_fd(sv[1] as i64);
            }
        }
        sys::CONNECT | sys::BIND => {
            addr = a.a[0];
            addr_len = a.a[1];
            valid = resolve_fd(fd, &mut sock, false);
        }
        sys::LISTEN => {
            args[0] = a.a[0];
            valid = resolve_fd(fd, &mut sock, false);
        }
        sys::ACCEPT | sys::ACCEPT4 => {
            args[0] = a.a[2];
            args[1] = fd as u64;
            if ret >= 0 {
                fd = ret;
                valid = resolve_fd(ret, &mut sock, false);
                if a.a[0] != 0 && a.a[1] != 0 {
                    addr = a.a[0];
                    addr_len = unsafe { uread::<u32>(a.a[1]) }.unwrap_or(0) as u64;
                }
            }
        }
        sys::SHUTDOWN => {
            args[0] = a.a[0];
        }
        sys::CLOSE => forget_fd(fd),
        _ => {}
    }
    emit_sock(a, fd, ret, &sock, valid, args, addr, addr_len);
}

// ---------------------------------------------------------------------------------------------
// Payload records.

/// Reads a datagram address from the process: a sockaddr at `addr` of `len` bytes.
#[inline(always)]
fn msg_addr(addr: u64, len: u64) -> MsgAddr {
    let mut m = MsgAddr::default();
    if addr == 0 || len < 8 {
        return m;
    }
    let Some(head) = (unsafe { uread::<[u8; 8]>(addr) }) else {
        return m;
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    if family == AF_INET {
        m.family = family;
        m.port = port;
        m.addr[..4].copy_from_slice(&head[4..8]);
    } else if family == AF_INET6 && len >= 24 {
        if let Some(a6) = unsafe { uread::<[u8; 16]>(addr + 8) } {
            m.family = family;
            m.port = port;
            m.addr = a6;
        }
    }
    m
}

/// Progress of copying one call's payload, shared with the `bpf_loop` callback.
#[repr(C)]
struct CopyState {
    /// Bytes to capture (the transferred bytes, cut to snaplen).
    want: u64,
    /// Bytes captured so far.
    done: u64,
    /// Current user buffer and bytes left in it.
    ptr: u64,
    rem: u64,
    /// iovec array (0: `ptr`/`rem` is the only buffer), next index, count.
    iov: u64,
    idx: u64,
    nvec: u64,
    /// Flags for every record of the call.
    flags: u64,
    failed: u64,
}

/// Sets the chunk fields of the record in `s`.
#[inline(always)]
unsafe fn set_chunk(s: *mut Scratch, rec: Payload, f: u16, offset: u64, len: u32) {
    unsafe {
        match rec {
            Payload::Data => {
                (*s).head.data.hdr.flags = f;
                (*s).head.data.offset = offset;
                (*s).head.data.len = len;
            }
            Payload::Tls => {
                (*s).head.tls.ev.hdr.flags = f;
                (*s).head.tls.ev.offset = offset;
                (*s).head.tls.ev.len = len;
            }
        }
    }
}

/// The flags of the record in `s` (as its header was filled).
#[inline(always)]
unsafe fn head_flags(s: *mut Scratch, rec: Payload) -> u16 {
    unsafe {
        match rec {
            Payload::Data => (*s).head.data.hdr.flags,
            Payload::Tls => (*s).head.tls.ev.hdr.flags,
        }
    }
}

/// Copies the record in `s` with its chunk of `n` bytes into the ring buffer, and counts it
/// (or its loss).
#[inline(always)]
fn submit_chunk(s: *mut Scratch, rec: Payload, n: u64) {
    let (start, head) = match rec {
        Payload::Data => (0, core::mem::size_of::<DataEvent>()),
        Payload::Tls => (TLS_LEAD, core::mem::size_of::<TlsEvent>()),
    };
    let size = head + n as usize;
    // SAFETY: the record and its chunk lie within the scratch map value (n <= CHUNK_MAX).
    let bytes = unsafe { core::slice::from_raw_parts((s as *const u8).add(start), size) };
    if EVENTS
        .output::<[u8]>(bytes, wakeup(size as u64, false))
        .is_err()
    {
        bump(counter::LOST_EVENTS, 1);
        bump(counter::LOST_BYTES, n);
    } else {
        bump(counter::EVENTS, 1);
    }
}

/// One step of the copy: load the next iovec, or emit one chunk. 1 = stop.
#[inline(never)]
/// `TLS`: the records are TLS ones (else DATA): one callback each, so that the verifier
/// checks each without the other's path.
extern "C" fn copy_step<const TLS: bool>(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(c) = COPY.get_ptr_mut(0) else {
        return 1;
    };
    let c = unsafe { &mut *c };
    if c.done >= c.want {
        return 1;
    }
    if c.rem == 0 {
        if c.iov == 0 || c.idx >= c.nvec {
            return 1;
        }
        let Some(v) = (unsafe { uread::<[u64; 2]>(c.iov + c.idx * 16) }) else {
            c.failed = 1;
            return 1;
        };
        c.idx += 1;
        c.ptr = v[0];
        c.rem = v[1];
        let left = c.want - c.done;
        if c.rem > left {
            c.rem = left;
        }
        return 0;
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let mut n = c.rem;
    if n > CHUNK_MAX as u64 {
        n = CHUNK_MAX as u64;
    }
    let r =
        unsafe { bpf_probe_read_user((*s).data.as_mut_ptr().cast(), n as u32, c.ptr as *const _) };
    if r != 0 {
        bump(counter::READ_ERRORS, 1);
        c.failed = 1;
        return 1;
    }
    let mut f = c.flags as u16;
    if c.done == 0 {
        f |= flags::FIRST;
    }
    if c.done + n >= c.want {
        f |= flags::LAST;
    }
    let rec = if TLS { Payload::Tls } else { Payload::Data };
    unsafe { set_chunk(s, rec, f, c.done, n as u32) };
    submit_chunk(s, rec, n);
    c.done += n;
    c.ptr += n;
    c.rem -= n;
    0
}

/// Emits the payload of one call (or one mmsg message) as DATA records: `total` bytes that
/// the process moved through the single buffer `buf` (when `iov` is 0) or through the iovec
/// array `iov[iovcnt]`.
#[inline(always)]
fn emit_payload(
    a: &Args,
    ret: i64,
    buf: u64,
    iov: u64,
    iovcnt: u64,
    total: u64,
    addr: &MsgAddr,
    msg_index: u32,
    msg_flags: u16,
) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    unsafe {
        let ev = &mut (*s).head.data;
        fill_header(
            &mut ev.hdr,
            kind::DATA,
            a.sys as u16,
            a.fd,
            ret,
            &a.sock,
            a.sock_valid != 0,
        );
        ev.hdr.stack_id = a.stack_id;
        ev.total = total;
        ev.msg_index = msg_index;
        ev.addr = *addr;
    }
    emit_chunks(s, Payload::Data, buf, iov, iovcnt, total, msg_flags);
}

/// Emits the plaintext of one TLS library call as TLS records: `total` bytes at `buf` in
/// the process, moved by TLS function `func` (a `tls_fn` id) on connection object `conn`;
/// `ret` is what the header reports, `fd`/`sock` the socket (`valid` false: unknown);
/// `ts_ns` the record's time when not now (0: now); `stack_id` the call's stack (`--stack`,
/// 0: none); `extra_flags` added to every record's
/// flags (`flags::TLS_EOF`, `flags::UNFINISHED`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_tls(
    func: u16,
    conn: u64,
    ret: i64,
    fd: i64,
    sock: &SockInfo,
    valid: bool,
    buf: u64,
    total: u64,
    ts_ns: u64,
    extra_flags: u16,
    stack_id: u32,
) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    unsafe {
        let ev = &mut (*s).head.tls.ev;
        fill_header(&mut ev.hdr, kind::TLS, func, fd, ret, sock, valid);
        ev.hdr.stack_id = stack_id;
        if ts_ns != 0 {
            ev.hdr.ts_ns = ts_ns;
        }
        ev.total = total;
        ev._pad = 0;
        ev.conn = conn;
    }
    emit_chunks(s, Payload::Tls, buf, 0, 0, total, extra_flags);
}

/// Emits the chunks of the payload record whose header is in `s` (the scratch map): `total`
/// bytes that the process moved through the single buffer `buf` (when `iov` is 0) or
/// through the iovec array `iov[iovcnt]`, cut to snaplen, each chunk a record of its own
/// with `extra_flags` added. The copy runs in `bpf_loop`, so a call of any size is captured
/// whole when snaplen is 0. Pauses the process when the ring fills up (lossless mode).
#[inline(always)]
fn emit_chunks(
    s: *mut Scratch,
    rec: Payload,
    buf: u64,
    iov: u64,
    iovcnt: u64,
    total: u64,
    extra_flags: u16,
) {
    let snap = cfg!(snaplen) as u64;
    let want = if snap != 0 && snap < total {
        snap
    } else {
        total
    };
    let trunc = if want < total { flags::TRUNCATED } else { 0 };
    let base_flags = unsafe { head_flags(s, rec) } | extra_flags | trunc;
    // The common case, one buffer that fits one record: copy it without the loop.
    if iov == 0 && want > 0 && want <= CHUNK_MAX as u64 {
        // Masked and clamped so the verifier knows 0 <= n <= CHUNK_MAX whatever it lost
        // track of (n == want here).
        let mut n = core::hint::black_box(want as u32) & (2 * CHUNK_MAX as u32 - 1);
        if n > CHUNK_MAX as u32 {
            n = CHUNK_MAX as u32;
        }
        let r = unsafe { bpf_probe_read_user((*s).data.as_mut_ptr().cast(), n, buf as *const _) };
        if r == 0 {
            unsafe { set_chunk(s, rec, base_flags | flags::FIRST | flags::LAST, 0, n) };
            submit_chunk(s, rec, n as u64);
            pause_if_filling();
            return;
        }
    }
    let nvec = if iovcnt < MAX_IOV { iovcnt } else { MAX_IOV };
    let Some(c) = COPY.get_ptr_mut(0) else { return };
    let c = unsafe { &mut *c };
    *c = CopyState {
        want,
        done: 0,
        ptr: buf,
        rem: if iov == 0 { want } else { 0 },
        iov,
        idx: 0,
        nvec,
        flags: base_flags as u64,
        failed: 0,
    };
    if want > 0 {
        let steps = want / CHUNK_MAX as u64 + nvec + 2;
        let steps = if steps > MAX_STEPS { MAX_STEPS } else { steps };
        unsafe {
            bpf_loop(
                steps as u32,
                match rec {
                    Payload::Data => copy_step::<false> as *mut core::ffi::c_void,
                    Payload::Tls => copy_step::<true> as *mut core::ffi::c_void,
                },
                core::ptr::null_mut(),
                0,
            )
        };
    }
    pause_if_filling();
    if c.done < want || want == 0 {
        // Nothing (more) could be captured: close the call with an empty LAST record.
        let Some(s) = SCRATCH.get_ptr_mut(0) else {
            return;
        };
        let mut f = base_flags | flags::LAST;
        if c.done == 0 {
            f |= flags::FIRST;
        }
        if c.done < want || c.failed != 0 {
            f |= flags::TRUNCATED;
        }
        unsafe { set_chunk(s, rec, f, c.done, 0) };
        submit_chunk(s, rec, 0);
    }
}

/// Lossless mode: stops the current process once the ring buffer is half full, so that it
/// cannot outrun the agent; the agent continues it after draining.
#[inline(always)]
fn pause_if_filling() {
    if cfg!(pause) == 0 {
        return;
    }
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA.into());
    let size = EVENTS.query(BPF_RB_RING_SIZE.into());
    if avail < size / 2 {
        return;
    }
    pause_current(paused::RING);
}

/// Stops the current process (SIGSTOP) and notes it in `PAUSED`, where the agent finds the
/// processes to continue once it has drained the ring buffer (or, `trace --tls`, hooked
/// what the process just mapped).
#[inline(always)]
fn pause_current(why: u8) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(v) = PAUSED.get_ptr_mut(&tgid) {
        // Already stopping (the stop takes effect on the way back to user mode); a TLS
        // reason outranks the ring's: the agent must hook before continuing it.
        if why == paused::TLS {
            unsafe { *v = why };
        }
        return;
    }
    // The stop first, then the entry the agent continues paused processes from: the other
    // way round, the agent could see the entry and send SIGCONT before the SIGSTOP, which
    // would then stop the process for good.
    unsafe { bpf_send_signal(SIGSTOP) };
    if PAUSED.insert(&tgid, &why, 0).is_err() {
        // The agent would never know: do not leave the process stopped.
        unsafe { bpf_send_signal(SIGCONT) };
    }
}

#[inline(always)]
fn data_exit(s: u16, ret: i64) {
    let Some(a) = take_args(s) else { return };
    let total = if ret > 0 { ret as u64 } else { 0 };
    let none = MsgAddr::default();
    match s {
        sys::READ | sys::WRITE => emit_payload(a, ret, a.a[0], 0, 0, total, &none, 0, 0),
        sys::READV | sys::WRITEV => emit_payload(a, ret, 0, a.a[0], a.a[1], total, &none, 0, 0),
        sys::SENDTO => {
            let addr = msg_addr(a.a[3], a.a[4]);
            emit_payload(a, ret, a.a[0], 0, 0, total, &addr, 0, 0)
        }
        sys::RECVFROM => {
            let mut addr = none;
            if ret >= 0 && a.a[3] != 0 && a.a[4] != 0 {
                let len = unsafe { uread::<u32>(a.a[4]) }.unwrap_or(0);
                addr = msg_addr(a.a[3], len as u64);
            }
            emit_payload(a, ret, a.a[0], 0, 0, total, &addr, 0, 0)
        }
        sys::SENDMSG | sys::RECVMSG => {
            // struct user_msghdr: name @0, namelen @8, iov @16, iovlen @24.
            let hdr = unsafe { uread::<[u64; 4]>(a.a[0]) }.unwrap_or([0; 4]);
            let addr = if ret >= 0 {
                msg_addr(hdr[0], hdr[1] & 0xffff_ffff)
            } else {
                none
            };
            emit_payload(a, ret, 0, hdr[2], hdr[3], total, &addr, 0, 0)
        }
        _ => {}
    }
}

#[inline(always)]
fn mmsg_exit(s: u16, ret: i64) {
    let Some(a) = take_args(s) else { return };
    let none = MsgAddr::default();
    if ret <= 0 {
        emit_payload(a, ret, 0, 0, 0, 0, &none, 0, flags::LAST_MSG);
        return;
    }
    let n = ret as u64;
    for i in 0..MAX_MMSG {
        if i >= n {
            break;
        }
        // struct mmsghdr: user_msghdr (56 bytes) then msg_len (u32), 64 bytes each.
        let m = a.a[0] + i * 64;
        let Some(hdr) = (unsafe { uread::<[u64; 8]>(m) }) else {
            break;
        };
        let len = hdr[7] & 0xffff_ffff;
        let addr = msg_addr(hdr[0], hdr[1] & 0xffff_ffff);
        let last = if i + 1 >= n { flags::LAST_MSG } else { 0 };
        emit_payload(a, ret, 0, hdr[2], hdr[3], len, &addr, i as u32, last);
    }
    if n > MAX_MMSG {
        let f = flags::LAST_MSG | flags::TRUNCATED;
        emit_payload(a, ret, 0, 0, 0, 0, &none, MAX_MMSG as u32, f);
    }
}

// ---------------------------------------------------------------------------------------------
// The syscall programs: raw tracepoints on every syscall's entry and exit. They cost far less
// per call than the perf-based `syscalls:sys_*_NAME` tracepoints; the syscall number picks
// what to do (`CONFIG.sys_table`, filled by userspace from `--events`), and every other
// syscall returns at once.

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    if nr >= SYSCALL_TABLE_LEN as u64 {
        return 0;
    }
    let v = cfg!(sys_table)[nr as usize];
    if v == 0 {
        return 0;
    }
    let tls_only = v & SYS_TLS_ONLY != 0;
    if tls_only && cfg!(tls) == 0 {
        return 0;
    }
    enter(ctx.arg(0), (v & !SYS_TLS_ONLY) as u16, tls_only)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    let nr: u64 = unsafe { kread(regs + cfg!(offsets.regs_nr) as u64) };
    if nr >= SYSCALL_TABLE_LEN as u64 {
        return 0;
    }
    let v = cfg!(sys_table)[nr as usize];
    if v == 0 || v & SYS_TLS_ONLY != 0 {
        return 0;
    }
    let s = v as u16;
    let ret: i64 = ctx.arg(1);
    match s {
        sys::SOCKET
        | sys::SOCKETPAIR
        | sys::CONNECT
        | sys::BIND
        | sys::LISTEN
        | sys::ACCEPT
        | sys::ACCEPT4
        | sys::CLOSE
        | sys::SHUTDOWN => sock_exit(s, ret),
        sys::SENDMMSG | sys::RECVMMSG => mmsg_exit(s, ret),
        // (Checked again so that the verifier drops the path without --tls: the
        // configuration is read-only, its values known when the program is loaded.)
        sys::MMAP_EXEC => {
            if cfg!(tls) != 0 || cfg!(stack) != 0 {
                mmap_exit(ret)
            }
        }
        _ => data_exit(s, ret),
    }
    0
}

// ---------------------------------------------------------------------------------------------
// trace --tls: executable mappings of files not examined yet.

/// `mmap` (in `sys_table` with `--tls` only): a file mapped executable that userspace has
/// not examined (`TLS_SEEN`) is reported and, in lossless mode, the process paused, so that
/// the TLS functions of a library (dlopen included) are hooked before the process runs any
/// of its code. (Without lossless mode, `--all` or `--allow-loss`, no process is stopped:
/// the first calls into the library may then go unseen.)
#[inline(always)]
fn mmap_exit(ret: i64) {
    let Some(a) = take_args(sys::MMAP_EXEC) else {
        return;
    };
    let (prot, map_flags, fd) = (a.a[1], a.a[2], a.a[3] as i32 as i64);
    // Failures are -4095..-1; user addresses are positive.
    if ret < 0 || prot & PROT_EXEC == 0 || map_flags & MAP_ANONYMOUS != 0 || fd < 0 {
        return;
    }
    let file = fd_file(fd);
    if file == 0 {
        return;
    }
    let key = file_key(file);
    if unsafe { tls::TLS_SEEN.get(&key) }.is_some() {
        return;
    }
    let mut sock = SockInfo::default();
    sock.ino = key.ino;
    emit_proc(sys::MMAP_EXEC, key.dev as u32, 0, fd, ret, &sock, true);
    if cfg!(pause) != 0 {
        pause_current(paused::TLS);
    }
}

/// The [`FileKey`] of `struct file` `file` (its inode's device and number).
#[inline(always)]
fn file_key(file: u64) -> FileKey {
    let o = &conf().offsets;
    unsafe {
        let inode: u64 = kread(file + o.file_inode as u64);
        let sb: u64 = kread(inode + o.inode_sb as u64);
        FileKey {
            dev: kread::<u32>(sb + o.sb_dev as u64) as u64,
            ino: kread(inode + o.inode_ino as u64),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process lifecycle: follow forks, match names at exec, forget exited processes.

/// A PROC record. `now`: wake the agent up at once (it has to act before the process goes
/// on, which is paused meanwhile).
#[inline(always)]
fn emit_proc(s: u16, child: u32, exit_code: u32, fd: i64, ret: i64, sock: &SockInfo, now: bool) {
    let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) else {
        bump(counter::LOST_EVENTS, 1);
        return;
    };
    let e = entry.as_mut_ptr();
    unsafe {
        fill_header(&mut (*e).hdr, kind::PROC, s, fd, ret, sock, false);
        (*e).child_pid = child;
        (*e).exit_code = exit_code;
    }
    let flags = if now {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        wakeup(core::mem::size_of::<ProcEvent>() as u64, true)
    };
    entry.submit(flags);
    bump(counter::EVENTS, 1);
}

/// task:task_newtask, in the parent's context: pid @8, clone_flags @32.
#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let clone_flags = unsafe { *(ctx.as_ptr().add(32) as *const u64) };
    if clone_flags & CLONE_THREAD != 0 || !is_traced(tgid) {
        return 0;
    }
    let child = unsafe { *(ctx.as_ptr().add(8) as *const u32) };
    if cfg!(trace_all) == 0 {
        if cfg!(follow_forks) == 0 {
            return 0;
        }
        let _ = TRACED.insert(&child, &traced::CHILD, 0);
    }
    emit_proc(sys::FORK, child, 0, -1, 0, &SockInfo::default(), false);
    0
}

/// sched:sched_process_exec, in the new program's context (comm already updated).
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if cfg!(comm_match) != 0 && cfg!(trace_all) == 0 {
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let want = conf().comm_filter;
        if comm == want {
            let _ = TRACED.insert(&tgid, &traced::ROOT, 0);
        } else if let Some(v) = unsafe { TRACED.get(&tgid) } {
            if *v == traced::ROOT {
                // Matched by name before; the new program has another name.
                let _ = TRACED.remove(&tgid);
                return 0;
            }
        }
    }
    if !is_traced(tgid) {
        return 0;
    }
    if cfg!(tls) == 0 {
        emit_proc(sys::EXEC, 0, 0, -1, 0, &SockInfo::default(), false);
        return 0;
    }
    // --tls: a program not examined yet (static OpenSSL, Go) is hooked before it runs, in
    // lossless mode: the process stops until userspace continues it (as for mmap).
    let o = &conf().offsets;
    let exe: u64 = unsafe {
        let mm: u64 = kread(bpf_get_current_task() + o.task_mm as u64);
        kread(mm + o.mm_exe_file as u64)
    };
    let mut sock = SockInfo::default();
    let mut stop = cfg!(pause) != 0;
    if exe != 0 {
        let key = file_key(exe);
        sock.ino = key.ino;
        stop = stop && unsafe { tls::TLS_SEEN.get(&key) }.is_none();
        emit_proc(sys::EXEC, key.dev as u32, 0, -1, 0, &sock, stop);
    } else {
        emit_proc(sys::EXEC, 0, 0, -1, 0, &sock, stop);
    }
    if stop {
        pause_current(paused::TLS);
    }
    0
}

/// sched:sched_process_exit: comm @8, pid @24, group_dead @32.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let _ = ARGS.remove(&id);
    if cfg!(tls) != 0 {
        tls::forget_thread(id);
    }
    let group_dead = unsafe { *(ctx.as_ptr().add(32) as *const u8) };
    if group_dead == 0 {
        return 0;
    }
    let tgid = (id >> 32) as u32;
    if cfg!(tls) != 0 {
        // Before the EXIT record (the process's memory is still there: on 6.16+ this
        // tracepoint comes before exit_mm()).
        tls_go::flush_pending(id);
    }
    if is_traced(tgid) {
        // do_exit() has stored the wait status in task_struct.exit_code by now.
        let task = unsafe { bpf_get_current_task() };
        let code: u32 = unsafe { kread(task + cfg!(offsets.task_exit_code) as u64) };
        emit_proc(sys::EXIT, 0, code, -1, 0, &SockInfo::default(), false);
    }
    let _ = TRACED.remove(&tgid);
    0
}
