//! Socket syscall tracing (`capagent trace`): the records of the `EVENTS` ring buffer, the
//! configuration of the programs, their maps and program names.
//!
//! The ring buffer carries records that all start with an [`EventHeader`]; `kind` says
//! which record follows:
//! - [`kind::SOCK`]: a [`SockEvent`] (socket, connect, bind, listen, accept, close, shutdown)
//! - [`kind::DATA`]: a [`DataEvent`] followed by `len` payload bytes (one chunk of a
//!   send/recv-type call; a call larger than [`CHUNK_MAX`] is split into several chunks)
//! - [`kind::PROC`]: a [`ProcEvent`] (fork, exec, exit of a traced process)
//! - [`kind::TLS`]: a [`TlsEvent`] followed by `len` plaintext bytes: one chunk of what a
//!   TLS library call (`SSL_write`, `gnutls_record_recv`, Go's `(*Conn).Read`...) handed
//!   over or returned (`capagent trace --tls`); `hdr.syscall` is one of the [`tls_fn`] ids

use crate::shared::{KernelOffsets, TASK_COMM_LEN};
/// Most payload bytes carried by one DATA record.
pub const CHUNK_MAX: usize = 16384;
/// Room for a raw `struct sockaddr_storage` copied from the process.
pub const SOCKADDR_MAX: usize = 128;

/// Record kinds (`EventHeader::kind`).
pub mod kind {
    pub const SOCK: u16 = 1;
    pub const DATA: u16 = 2;
    pub const PROC: u16 = 3;
    pub const TLS: u16 = 4;
    /// A [`StackEvent`](super::StackEvent) (ring `STACKS`, `trace --stack`).
    pub const STACK: u16 = 5;
}

/// The syscall that produced a record (`EventHeader::syscall`).
pub mod sys {
    pub const SOCKET: u16 = 1;
    pub const CONNECT: u16 = 2;
    pub const BIND: u16 = 3;
    pub const LISTEN: u16 = 4;
    pub const ACCEPT: u16 = 5;
    pub const ACCEPT4: u16 = 6;
    pub const SENDTO: u16 = 7;
    pub const RECVFROM: u16 = 8;
    pub const SENDMSG: u16 = 9;
    pub const RECVMSG: u16 = 10;
    pub const SENDMMSG: u16 = 11;
    pub const RECVMMSG: u16 = 12;
    pub const READ: u16 = 13;
    pub const WRITE: u16 = 14;
    pub const READV: u16 = 15;
    pub const WRITEV: u16 = 16;
    pub const CLOSE: u16 = 17;
    pub const SHUTDOWN: u16 = 18;
    pub const SOCKETPAIR: u16 = 19;
    /// Process lifecycle records (kind PROC).
    pub const FORK: u16 = 32;
    pub const EXEC: u16 = 33;
    pub const EXIT: u16 = 34;
    /// `trace --tls` only, never shown to users (nor selectable with `--events`): a traced
    /// process mapped a file executable (`mmap` with `PROT_EXEC`) that is not in `TLS_SEEN`
    /// (kind PROC; see [`ProcEvent`]); in lossless mode the kernel has paused the process
    /// so that userspace can hook the file's TLS functions before it runs on.
    pub const MMAP_EXEC: u16 = 35;

    /// Name of a syscall id, as strace prints it.
    pub const fn name(id: u16) -> &'static str {
        match id {
            SOCKET => "socket",
            CONNECT => "connect",
            BIND => "bind",
            LISTEN => "listen",
            ACCEPT => "accept",
            ACCEPT4 => "accept4",
            SENDTO => "sendto",
            RECVFROM => "recvfrom",
            SENDMSG => "sendmsg",
            RECVMSG => "recvmsg",
            SENDMMSG => "sendmmsg",
            RECVMMSG => "recvmmsg",
            READ => "read",
            WRITE => "write",
            READV => "readv",
            WRITEV => "writev",
            CLOSE => "close",
            SHUTDOWN => "shutdown",
            SOCKETPAIR => "socketpair",
            FORK => "fork",
            EXEC => "exec",
            EXIT => "exit",
            MMAP_EXEC => "mmap",
            _ => super::tls_fn::name(id),
        }
    }

    /// True for calls that move payload out of the process.
    pub const fn is_send(id: u16) -> bool {
        matches!(id, SENDTO | SENDMSG | SENDMMSG | WRITE | WRITEV) || super::tls_fn::is_write(id)
    }
}

/// The TLS library functions `trace --tls` hooks: the `EventHeader::syscall` of a
/// [`kind::TLS`] record (ids from 64 up, apart from the syscalls').
pub mod tls_fn {
    pub const SSL_WRITE: u16 = 64;
    pub const SSL_READ: u16 = 65;
    pub const SSL_WRITE_EX: u16 = 66;
    pub const SSL_READ_EX: u16 = 67;
    pub const SSL_WRITE_EX2: u16 = 68;
    /// A write through OpenSSL's SSL BIO (`BIO_f_ssl`: `BIO_write` and the like on it), seen
    /// as a call of the internal function `SSL_write` and `SSL_write_ex` share from another
    /// caller than those two (see [`tls_cookie::CALLERS`](super::tls_cookie::CALLERS)).
    pub const BIO_WRITE: u16 = 69;
    /// A read through OpenSSL's SSL BIO (as [`BIO_WRITE`]).
    pub const BIO_READ: u16 = 70;
    pub const GNUTLS_RECORD_SEND: u16 = 72;
    pub const GNUTLS_RECORD_RECV: u16 = 73;
    /// Go `crypto/tls.(*Conn).Write` / `.Read`.
    pub const GO_WRITE: u16 = 80;
    pub const GO_READ: u16 = 81;

    /// The function's name, as the library spells it (`?` for an unknown id).
    pub const fn name(id: u16) -> &'static str {
        match id {
            SSL_WRITE => "SSL_write",
            SSL_READ => "SSL_read",
            SSL_WRITE_EX => "SSL_write_ex",
            SSL_READ_EX => "SSL_read_ex",
            SSL_WRITE_EX2 => "SSL_write_ex2",
            BIO_WRITE => "BIO_write",
            BIO_READ => "BIO_read",
            GNUTLS_RECORD_SEND => "gnutls_record_send",
            GNUTLS_RECORD_RECV => "gnutls_record_recv",
            GO_WRITE => "crypto/tls.(*Conn).Write",
            GO_READ => "crypto/tls.(*Conn).Read",
            _ => "?",
        }
    }

    /// The library family (`"openssl"`, `"gnutls"`, `"go"`), None for an unknown id.
    pub const fn lib(id: u16) -> Option<&'static str> {
        match id {
            SSL_WRITE | SSL_READ | SSL_WRITE_EX | SSL_READ_EX | SSL_WRITE_EX2 | BIO_WRITE
            | BIO_READ => Some("openssl"),
            GNUTLS_RECORD_SEND | GNUTLS_RECORD_RECV => Some("gnutls"),
            GO_WRITE | GO_READ => Some("go"),
            _ => None,
        }
    }

    /// True for the functions that take plaintext from the application (writes).
    pub const fn is_write(id: u16) -> bool {
        matches!(
            id,
            SSL_WRITE | SSL_WRITE_EX | SSL_WRITE_EX2 | BIO_WRITE | GNUTLS_RECORD_SEND | GO_WRITE
        )
    }

    /// True for the reads whose return value 0 means the peer ended the stream:
    /// `gnutls_record_recv` (0: close_notify or the transport's EOF) and `SSL_read` (0: a
    /// close_notify or the transport's EOF; a read that must be retried, `WANT_READ` on a
    /// non-blocking socket, returns -1), and `BIO_read` (its record carries the return value
    /// of the internal read function, which `SSL_read` returns as is). Not `SSL_read_ex`,
    /// which returns 0 for every failure (`WANT_READ` included; the socket read under it
    /// tells which), nor Go's `Read`, whose EOF is in the error it returns.
    pub const fn zero_is_eof(id: u16) -> bool {
        matches!(id, SSL_READ | BIO_READ | GNUTLS_RECORD_RECV)
    }

    /// The name of a failure `ret` of function `id`, when the library names it: GnuTLS
    /// returns its own negative codes (not errnos: -28 is `GNUTLS_E_AGAIN`, not `ENOSPC`);
    /// OpenSSL returns -1 (or 0) and says why only through `SSL_get_error`.
    pub const fn error_name(id: u16, ret: i64) -> Option<&'static str> {
        if !matches!(id, GNUTLS_RECORD_SEND | GNUTLS_RECORD_RECV) {
            return None;
        }
        Some(match ret {
            -9 => "GNUTLS_E_UNEXPECTED_PACKET_LENGTH",
            -10 => "GNUTLS_E_INVALID_SESSION",
            -12 => "GNUTLS_E_FATAL_ALERT_RECEIVED",
            -15 => "GNUTLS_E_UNEXPECTED_PACKET",
            -16 => "GNUTLS_E_WARNING_ALERT_RECEIVED",
            -24 => "GNUTLS_E_DECRYPTION_FAILED",
            -28 => "GNUTLS_E_AGAIN",
            -37 => "GNUTLS_E_REHANDSHAKE",
            -50 => "GNUTLS_E_INVALID_REQUEST",
            -52 => "GNUTLS_E_INTERRUPTED",
            -53 => "GNUTLS_E_PUSH_ERROR",
            -54 => "GNUTLS_E_PULL_ERROR",
            -110 => "GNUTLS_E_PREMATURE_TERMINATION",
            _ => return None,
        })
    }
}

/// bpf cookies of the `tls_set_fd` and `tls_free` attachments (`tls_enter` and `tls_exit`
/// take a [`tls_fn`] id as theirs).
pub mod tls_cookie {
    /// `tls_set_fd` on `SSL_set_fd(ssl, fd)`, `SSL_set_rfd`, `SSL_set_wfd`: the fd is the
    /// second argument.
    pub const OPENSSL_SET_FD: u64 = 1;
    /// `tls_set_fd` on `gnutls_transport_set_int2(session, recv_fd, send_fd)`: `recv_fd` (the
    /// second argument) is learned.
    pub const GNUTLS_SET_INT2: u64 = 2;
    /// `tls_free` on `SSL_free(ssl)`, `gnutls_deinit(session)`: no cookie needed (0).
    pub const FREE: u64 = 0;
    /// Added to a `tls_fn` id on `tls_enter`/`tls_exit`: the function calls an inner function
    /// that does the work (`SSL_read_ex`: `sub $8,%rsp; call INNER; return max(INNER's int,
    /// 0)`, see `trace::tls::libs`) and is hooked at INNER's entry (`tls_enter`: the stack as
    /// at that `call` is 8 bytes up; the byte count pointer is INNER's 4th argument) and
    /// return (`tls_exit`: the stack as at that `call`; an `_ex` wrapper's return value is
    /// INNER's, negative ones made 0). Both share one breakpoint, on an instruction x86
    /// uprobes emulate (`push`); the function's first one (`sub`) they single-step. Always
    /// with [`CALLERS`] since INNER has several callers.
    pub const WRAPPED: u64 = 1 << 16;
    /// With [`WRAPPED`], on the inner function that `SSL_read` and `SSL_read_ex` both call
    /// (or `SSL_write` and `SSL_write_ex`; OpenSSL's SSL BIO calls it too): one breakpoint
    /// for all its callers, each record named by its caller, told apart by the return
    /// address at the inner function's entry. The cookie's layout:
    ///
    /// | bits   | what                                                                   |
    /// |--------|------------------------------------------------------------------------|
    /// | 0..16  | the `tls_fn` id of any other caller: `BIO_READ` or `BIO_WRITE`          |
    /// | 16     | [`WRAPPED`]                                                            |
    /// | 17     | `CALLERS`                                                              |
    /// | 32..48 | return address − inner entry of `SSL_read`'s (`SSL_write`'s) call; 0: none |
    /// | 48..64 | the same for `SSL_read_ex`'s (`SSL_write_ex`'s) call; 0: none           |
    ///
    /// The differences are the same in every process (one library file, one layout): the
    /// program subtracts the probed address from the return address and finds the caller
    /// with [`caller`]. The return value recorded follows the caller: the `_ex` wrappers
    /// return max(INNER's int, 0) (see [`WRAPPED`]); `SSL_read`/`SSL_write` and the BIO the
    /// byte count (INNER's 4th argument) when INNER returned > 0, else INNER's value.
    pub const CALLERS: u64 = 1 << 17;
    /// Added to a `tls_fn` id on `tls_enter`: another hooked function jumps to this one's
    /// first instruction (a tail call: `SSL_write_ex` → `SSL_write_ex2` in OpenSSL 3.3+ built
    /// with `gcc -O2`, see `trace::tls::libs`), so an entry at the stack pointer of the call
    /// in progress is that call going on: counted as nested, not recorded (the outer call
    /// names the record; the first return at that stack pointer ends it).
    pub const TAIL_CALLED: u64 = 1 << 18;

    /// The cookie of a shared inner function (see [`CALLERS`]): `other` = the id of any
    /// other caller (`BIO_READ`/`BIO_WRITE`), `plain`/`ex`: the return-address differences
    /// of the `SSL_read`/`SSL_read_ex` calls (or the writes'), 0 for a caller not there.
    pub const fn shared(other: u16, plain: u16, ex: u16) -> u64 {
        other as u64 | WRAPPED | CALLERS | (plain as u64) << 32 | (ex as u64) << 48
    }

    /// The `tls_fn` id of the call of a hook with `cookie` whose return address lies
    /// `delta` bytes after the hooked address: its own id without [`CALLERS`], else the
    /// caller's (see [`CALLERS`]).
    pub const fn caller(cookie: u64, delta: u64) -> u16 {
        let other = cookie as u16;
        if cookie & CALLERS == 0 || delta == 0 {
            return other;
        }
        let (plain, ex) = match other {
            super::tls_fn::BIO_READ => (super::tls_fn::SSL_READ, super::tls_fn::SSL_READ_EX),
            super::tls_fn::BIO_WRITE => (super::tls_fn::SSL_WRITE, super::tls_fn::SSL_WRITE_EX),
            _ => return other,
        };
        if delta == (cookie >> 32) & 0xffff {
            plain
        } else if delta == cookie >> 48 {
            ex
        } else {
            other
        }
    }
}

/// `EventHeader::flags` bits.
pub mod flags {
    /// DATA: this is the first chunk of the call's payload.
    pub const FIRST: u16 = 1;
    /// DATA: this is the last chunk of the call (or of one message of sendmmsg/recvmmsg).
    pub const LAST: u16 = 2;
    /// DATA: fewer bytes were captured than the call transferred (snaplen, or the per-call
    /// hard limit); `DataEvent::total` still says how many were transferred.
    pub const TRUNCATED: u16 = 4;
    /// The socket was found through the fd table (always set when `sock` is valid).
    pub const SOCK_VALID: u16 = 8;
    /// DATA: the last message of a sendmmsg/recvmmsg call.
    pub const LAST_MSG: u16 = 16;
    /// TLS: a read that moved nothing because the peer ended the stream (its close_notify,
    /// or the transport's end), as the library itself said: set where the return value tells
    /// it apart, at the inner function of `SSL_read`/`SSL_read_ex` (its 0 is that end, -1 any
    /// other failure: `SSL_read_ex` makes both 0).
    pub const TLS_EOF: u16 = 32;
    /// TLS: the call had not returned when its process exited (a Go `Write` whose write
    /// syscall was made): the record holds the whole buffer the call was given, `ret` its
    /// length, and the time of that syscall; whether it sent all of it is not known.
    pub const UNFINISHED: u16 = 64;
}

/// Endpoints of a kernel socket, read from `struct sock` at the time of the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockInfo {
    /// Kernel address of `struct sock`: identifies the socket while it is open.
    pub sk: u64,
    /// Inode number of the socket (as in `/proc/PID/fd` `socket:[INO]`).
    pub ino: u64,
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
    pub state: u16,
    /// Local port, host byte order.
    pub lport: u16,
    /// Remote port, host byte order.
    pub rport: u16,
    pub _pad: u32,
    /// Local address: IPv4 in the first 4 bytes, or IPv6 (network byte order).
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

/// Start of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventHeader {
    /// `bpf_ktime_get_boot_ns()` at the syscall's exit (CLOCK_BOOTTIME).
    pub ts_ns: u64,
    pub kind: u16,
    pub syscall: u16,
    pub flags: u16,
    pub _pad0: u16,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub fd: i32,
    /// `trace --stack`: the id of the [`StackEvent`] of this call's thread taken at its
    /// entry (pair by `tid` and this id); 0: no stack.
    pub stack_id: u32,
    /// Syscall return value (negative errno on failure).
    pub ret: i64,
    /// The calling thread's comm.
    pub comm: [u8; TASK_COMM_LEN],
    pub sock: SockInfo,
}

/// socket/connect/bind/listen/accept/close/shutdown.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockEvent {
    pub hdr: EventHeader,
    /// Raw syscall arguments (socket: domain, type, protocol; listen: backlog;
    /// shutdown: how; accept4: flags; socketpair: domain, type, protocol, and the two fds
    /// it made, sv[0] in the low 32 bits and sv[1] in the high ones, or `u64::MAX` when the
    /// call failed or the array could not be read).
    pub args: [u64; 4],
    /// Length of the sockaddr in `addr` (0 if none was given or read).
    pub addr_len: u32,
    pub _pad: u32,
    /// Raw sockaddr copied from the process (connect/bind: the argument; accept: the peer).
    pub addr: [u8; SOCKADDR_MAX],
}

/// A socket address carried by a DATA record: sendto/recvfrom's address or msg_name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MsgAddr {
    /// AF_INET, AF_INET6, or 0 when the call had no address.
    pub family: u16,
    /// Port, host byte order.
    pub port: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
}

/// One chunk of the payload of a send/recv-type call; `len` payload bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataEvent {
    pub hdr: EventHeader,
    /// Bytes the call (or this message of an mmsg call) transferred.
    pub total: u64,
    /// Offset of this chunk in the call's payload.
    pub offset: u64,
    /// Payload bytes following this struct.
    pub len: u32,
    /// Message index within sendmmsg/recvmmsg (0 otherwise).
    pub msg_index: u32,
    pub addr: MsgAddr,
}

/// One chunk of the plaintext of a TLS library call; `len` bytes follow.
///
/// `hdr.syscall` is the [`tls_fn`] id; `hdr.ret` the bytes the call moved (for the `_ex`
/// functions, `*written`/`*readbytes` when they returned 1, else their return value);
/// `hdr.fd` and `hdr.sock` the socket the call used, learned from the socket syscalls the
/// thread made inside the call or from the per-process cache of the TLS object's fd
/// (`hdr.fd` is -1 and `SOCK_VALID` clear when it is not known: never a guess).
/// `FIRST`/`LAST`/`TRUNCATED` in `hdr.flags` as for [`DataEvent`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsEvent {
    pub hdr: EventHeader,
    /// Plaintext bytes the call moved.
    pub total: u64,
    /// Offset of this chunk in the call's plaintext.
    pub offset: u64,
    /// Plaintext bytes following this struct.
    pub len: u32,
    pub _pad: u32,
    /// The library's connection object (`SSL *`, `gnutls_session_t`, Go `*tls.Conn`):
    /// identifies the TLS connection while it lives, also when the fd is unknown.
    pub conn: u64,
}

/// `trace --stack`: the user registers and the top of the user stack of a thread at the entry
/// of a reported call, in the `STACKS` ring; `len` bytes follow: the stack from `sp` upwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StackEvent {
    pub pid: u32,
    pub tid: u32,
    /// As the call's [`EventHeader::stack_id`] (never 0).
    pub stack_id: u32,
    /// [`stack_flags`] bits.
    pub flags: u32,
    pub ts_ns: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Stack bytes following this struct.
    pub len: u32,
    pub _pad: u32,
}

/// `StackEvent::flags` bits.
pub mod stack_flags {
    /// Fewer bytes than asked for (the end of the stack mapping).
    pub const TRUNCATED: u32 = 1;
    /// Nothing could be read at `sp`.
    pub const READ_FAILED: u32 = 2;
    /// Taken at a function's first instruction or at a RET (`trace --tls --stack`: the
    /// uprobes of the TLS functions): the return address is the word at `sp`, whatever
    /// unwind information says of `ip` (a module without CFI, such as a Go executable, would
    /// otherwise be walked by frame pointer from the caller's `bp`, skipping the caller).
    pub const RET_AT_SP: u32 = 4;
}

/// Most stack bytes a [`StackEvent`] carries (`Config::stack_size` is capped to it).
pub const STACK_MAX: usize = 65536;

/// fork/exec/exit of a traced process, and (`trace --tls`) its executable mappings of files
/// not seen yet.
///
/// For [`sys::MMAP_EXEC`]: `hdr.fd` is the fd `mmap` mapped, `hdr.ret` the address it
/// returned, `child_pid` the file's device (the kernel's `dev_t`, as [`FileKey::dev`]) and
/// `hdr.sock.ino` its inode number (`SOCK_VALID` clear): the [`FileKey`] the kernel looked up
/// in `TLS_SEEN`. In lossless mode (`Config::pause`) the process is stopped (SIGSTOP, and
/// its tgid in `PAUSED`). With `Config::tls`, an EXEC record carries the program's file key
/// the same way (`child_pid`, `hdr.sock.ino`; 0 when unknown), and in lossless mode the
/// process is stopped after it when the program is not in `TLS_SEEN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    pub hdr: EventHeader,
    /// fork: the child's pid. mmap, and exec with `--tls`: the file's device.
    pub child_pid: u32,
    /// exit: the exit status as `wait` reports it (`task_struct.exit_code`).
    pub exit_code: u32,
}

/// Load-time configuration of the eBPF programs (a read-only global).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub offsets: KernelOffsets,
    /// Bytes of payload captured per call; 0 = everything (chunked).
    pub snaplen: u32,
    /// Trace every process (system-wide), not only those in the TRACED map.
    pub trace_all: u8,
    /// Add children of traced processes to the TRACED map.
    pub follow_forks: u8,
    /// When non-zero, a process that execs with this comm (`comm_filter`) is traced.
    pub comm_match: u8,
    /// Lossless mode: when the ring buffer is more than half full after a call, stop the
    /// calling process (SIGSTOP) and note it in `PAUSED`; userspace continues it (SIGCONT)
    /// once it has drained the ring.
    pub pause: u8,
    /// `--tls`: the TLS uprobes record, the socket syscalls made inside a TLS call name its
    /// fd, and an executable mapping of a file not in `TLS_SEEN` is reported (`sys_table`
    /// then maps `mmap` to [`sys::MMAP_EXEC`]); with `pause` too, a traced process is
    /// paused at such a mapping, and at the exec of a program not in `TLS_SEEN`, until
    /// userspace has hooked what it maps.
    pub tls: u8,
    /// `--stack`: copy the user registers and stack at the entry of reported calls.
    pub stack: u8,
    pub _pad: [u8; 2],
    /// Process name to match (NUL padded) when `comm_match` is set.
    pub comm_filter: [u8; TASK_COMM_LEN],
    /// The agent's own pid, never traced.
    pub self_pid: u32,
    /// Wake the agent up once this many bytes wait in the ring buffer (it also polls).
    pub wakeup_bytes: u32,
    /// `--stack`: stack bytes copied per call (at most [`STACK_MAX`], a multiple of 8).
    pub stack_size: u32,
    /// `--stack`: offsets of the instruction pointer, stack pointer and frame pointer in
    /// `struct pt_regs`.
    pub stack_regs: [u32; 3],
    /// Syscall number (of this architecture) -> `sys::X` id to report, 0 = ignore. Userspace
    /// fills it from its libc's `SYS_*` numbers and the `--events` selection; with `tls`, a
    /// send/recv-type syscall that is not selected is entered as `id | SYS_TLS_ONLY`.
    pub sys_table: [u8; SYSCALL_TABLE_LEN],
}

/// Syscall numbers below this are looked up in `Config::sys_table`.
pub const SYSCALL_TABLE_LEN: usize = 512;

/// `Config::sys_table` bit: the syscall is not reported, only looked at for the fd of the
/// TLS call it is made in (`--tls` with an `--events` selection that leaves it out).
pub const SYS_TLS_ONLY: u8 = 0x80;

/// Key of the `TLS_SEEN` map: a file the agent has examined for TLS functions (whether it had
/// them or not), as `/proc/PID/maps` names it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FileKey {
    /// The kernel's `dev_t` of the file's filesystem (`super_block.s_dev`): major << 20 |
    /// minor (not the userspace `st_dev` encoding: see [`FileKey::new`]).
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    /// The key of a file on device `major:minor` (as `/proc/PID/maps` prints it, or
    /// `libc::major`/`minor` of `st_dev`) with inode number `ino`.
    pub const fn new(major: u32, minor: u32, ino: u64) -> Self {
        FileKey {
            dev: ((major as u64) << 20) | (minor as u64 & 0xf_ffff),
            ino,
        }
    }
}

impl Config {
    pub const fn new() -> Self {
        Config {
            offsets: KernelOffsets::ZERO,
            snaplen: 0,
            trace_all: 0,
            follow_forks: 0,
            comm_match: 0,
            pause: 0,
            tls: 0,
            stack: 0,
            _pad: [0; 2],
            comm_filter: [0; TASK_COMM_LEN],
            self_pid: 0,
            wakeup_bytes: 256 * 1024,
            stack_size: 0,
            stack_regs: [0; 3],
            sys_table: [0; SYSCALL_TABLE_LEN],
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// Index of the counters in the per-CPU `COUNTERS` array.
pub mod counter {
    /// Records that did not fit in the ring buffer.
    pub const LOST_EVENTS: u32 = 0;
    /// Payload bytes of those records.
    pub const LOST_BYTES: u32 = 1;
    /// Records submitted.
    pub const EVENTS: u32 = 2;
    /// Payload reads from the process that failed (page not present...).
    pub const READ_ERRORS: u32 = 3;
    /// `--stack`: stacks that did not fit in the `STACKS` ring (dropped; the call's records
    /// are not).
    pub const STACK_LOST: u32 = 4;
    /// `--stack`: stacks submitted.
    pub const STACKS: u32 = 5;
    pub const COUNT: u32 = 6;
}

/// Value of the PAUSED map (key: tgid): why the kernel stopped the process.
pub mod paused {
    /// The ring buffer was more than half full (lossless mode): continue it once drained.
    pub const RING: u8 = 1;
    /// `--tls`: it exec'ed or mapped a file executable not in `TLS_SEEN` (its EXEC or
    /// MMAP_EXEC record precedes the entry in the ring): continue it once that record has
    /// been handled (the files hooked). Outranks `RING` for a process stopped for both.
    pub const TLS: u8 = 2;
    /// `--stack`: the `STACKS` ring was more than half full (lossless mode): continue it once
    /// that ring is drained.
    pub const STACKS: u8 = 3;
}

/// Value of the TRACED map (key: tgid).
pub mod traced {
    /// Traced because the user named it (--pid, -- CMD, --comm match).
    pub const ROOT: u8 = 1;
    /// Traced because it descends from a traced process.
    pub const CHILD: u8 = 2;
}

/// Names in the eBPF object (agent-ebpf/src/trace.rs): its programs...
pub mod progs {
    pub const SYS_ENTER: &str = "sys_enter";
    pub const SYS_EXIT: &str = "sys_exit";
    pub const TASK_NEWTASK: &str = "task_newtask";
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
    pub const ALL: &[&str] = &[
        SYS_ENTER,
        SYS_EXIT,
        TASK_NEWTASK,
        SCHED_PROCESS_EXEC,
        SCHED_PROCESS_EXIT,
    ];
    /// `trace --tls`: uprobe at the entry of a TLS read/write function; bpf cookie = its
    /// [`tls_fn`](super::tls_fn) id.
    pub const TLS_ENTER: &str = "tls_enter";
    /// uretprobe on the same functions, same cookie: emits the [`TlsEvent`](super::TlsEvent)s.
    pub const TLS_EXIT: &str = "tls_exit";
    /// uprobe on `SSL_set_fd`/`SSL_set_rfd`/`SSL_set_wfd`/`gnutls_transport_set_int2`
    /// (cookie: [`tls_cookie`](super::tls_cookie)).
    pub const TLS_SET_FD: &str = "tls_set_fd";
    /// uprobe on `SSL_free`/`gnutls_deinit`.
    pub const TLS_FREE: &str = "tls_free";
    /// The uprobe programs of `trace --tls` (attached per library file, not in [`ALL`]).
    pub const TLS: &[&str] = &[TLS_ENTER, TLS_EXIT, TLS_SET_FD, TLS_FREE];
    /// `trace --tls`, Go binaries: uprobe at the entry of `crypto/tls.(*Conn).Write`/`Read`;
    /// bpf cookie = [`tls_fn::GO_WRITE`](super::tls_fn::GO_WRITE)/`GO_READ`.
    pub const GO_TLS_ENTER: &str = "go_tls_enter";
    /// uprobe on every RET instruction of the same functions (never a uretprobe: Go moves
    /// stacks), same cookie: emits the [`TlsEvent`](super::TlsEvent)s.
    pub const GO_TLS_RET: &str = "go_tls_ret";
    /// The uprobe programs of `trace --tls` for Go binaries (not in [`ALL`] nor [`TLS`]).
    pub const GO_TLS: &[&str] = &[GO_TLS_ENTER, GO_TLS_RET];
}

/// ...its maps...
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const TRACED: &str = "TRACED";
    pub const PAUSED: &str = "PAUSED";
    pub const ARGS: &str = "ARGS";
    pub const FDS: &str = "FDS";
    pub const SCRATCH: &str = "SCRATCH";
    pub const COPY: &str = "COPY";
    pub const COUNTERS: &str = "COUNTERS";
    /// `trace --tls`: the TLS call each thread is in (key: pid_tgid).
    pub const TLS_CALLS: &str = "TLS_CALLS";
    /// `trace --tls`: (tgid, connection object) -> (fd, `struct sock`) last seen for it.
    pub const TLS_CONNS: &str = "TLS_CONNS";
    /// `trace --tls`: the files userspace has examined ([`FileKey`](super::FileKey) -> 1).
    pub const TLS_SEEN: &str = "TLS_SEEN";
    /// `trace --tls`: the Go `(*Conn).Read`/`Write` call each goroutine is in (key: tgid and
    /// goroutine).
    pub const GO_CALLS: &str = "GO_CALLS";
    /// `trace --tls`: per process, the goroutines of the Go `Write`s whose syscall was made
    /// and whose RET is not reached yet (reported at the process's exit).
    pub const GO_PENDING: &str = "GO_PENDING";
    /// `trace --stack`: the [`StackEvent`](super::StackEvent)s (its own ring: when full, the
    /// stack is dropped, never a payload record).
    pub const STACKS: &str = "STACKS";
    /// `trace --stack`: room to assemble a stack record, one per CPU (an array indexed by
    /// CPU number: too large for a per-CPU array).
    pub const STACK_BUF: &str = "STACK_BUF";
    /// The maps only `trace --tls` uses (made as small as can be without it).
    pub const TLS: &[&str] = &[TLS_CALLS, TLS_CONNS, TLS_SEEN, GO_CALLS, GO_PENDING];
    pub const ALL: &[&str] = &[
        EVENTS, TRACED, PAUSED, ARGS, FDS, SCRATCH, COPY, COUNTERS, TLS_CALLS, TLS_CONNS, TLS_SEEN,
        GO_CALLS, GO_PENDING, STACKS, STACK_BUF,
    ];
}

/// ...and the global userspace writes the [`Config`] into.
pub const CONFIG_GLOBAL: &str = "CONFIG";

// Sizes are part of the kernel/userspace contract: no implicit padding anywhere.
const _: () = assert!(core::mem::size_of::<SockInfo>() == 64);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 120);
const _: () = assert!(core::mem::size_of::<SockEvent>() == 120 + 32 + 8 + SOCKADDR_MAX);
const _: () = assert!(core::mem::size_of::<MsgAddr>() == 24);
const _: () = assert!(core::mem::size_of::<DataEvent>() == 120 + 24 + 24);
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 128);
const _: () = assert!(core::mem::size_of::<TlsEvent>() == 120 + 32);
const _: () = assert!(core::mem::size_of::<FileKey>() == 16);
const _: () = assert!(core::mem::size_of::<StackEvent>() == 56);
const _: () =
    assert!(core::mem::size_of::<Config>() == 140 + 8 + 4 + 16 + 8 + 16 + SYSCALL_TABLE_LEN);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding (asserted above).
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above (two u64).
    unsafe impl aya::Pod for super::FileKey {}
}
