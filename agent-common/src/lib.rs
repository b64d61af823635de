//! Records shared by the eBPF programs (`agent-ebpf`) and the userspace agent.
//!
//! Every type here is `#[repr(C)]`, fixed-size and free of implicit padding (each padding
//! byte is a named `_pad` field), and its size is asserted at compile time, so the kernel
//! and userspace views can never drift apart silently.
//!
//! The ring buffer carries records that all start with an [`EventHeader`]; `kind` says
//! which record follows:
//! - [`kind::SOCK`]: a [`SockEvent`] (socket, connect, bind, listen, accept, close, shutdown)
//! - [`kind::DATA`]: a [`DataEvent`] followed by `len` payload bytes (one chunk of a
//!   send/recv-type call; a call larger than [`CHUNK_MAX`] is split into several chunks)
//! - [`kind::PROC`]: a [`ProcEvent`] (fork, exec, exit of a traced process)
#![no_std]

pub const TASK_COMM_LEN: usize = 16;
/// Most payload bytes carried by one DATA record.
pub const CHUNK_MAX: usize = 16384;
/// Room for a raw `struct sockaddr_storage` copied from the process.
pub const SOCKADDR_MAX: usize = 128;

/// Record kinds (`EventHeader::kind`).
pub mod kind {
    pub const SOCK: u16 = 1;
    pub const DATA: u16 = 2;
    pub const PROC: u16 = 3;
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
            _ => "?",
        }
    }

    /// True for calls that move payload out of the process.
    pub const fn is_send(id: u16) -> bool {
        matches!(id, SENDTO | SENDMSG | SENDMMSG | WRITE | WRITEV)
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
    pub _pad1: u32,
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

/// fork/exec/exit of a traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    pub hdr: EventHeader,
    /// fork: the child's pid.
    pub child_pid: u32,
    /// exit: the exit status as `wait` reports it (`task_struct.exit_code`).
    pub exit_code: u32,
}

/// Byte offsets of kernel struct fields, resolved from BTF by userspace at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_group_leader: u32,
    pub task_comm: u32,
    pub task_exit_code: u32,
    /// `struct sock.sk_socket` (capture: from a socket to its inode).
    pub sk_socket: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub inode_ino: u32,
    pub socket_sk: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_type: u32,
    pub sk_protocol: u32,
    /// `struct pt_regs` members holding the six syscall arguments, in order, and the
    /// syscall number (x86_64: di, si, dx, r10, r8, r9; orig_ax).
    pub regs_args: [u32; 6],
    pub regs_nr: u32,
    /// `struct socket_alloc.vfs_inode` minus `.socket`: from a `struct socket` to its inode
    /// (`SOCK_INODE()`).
    pub socket_inode: u32,
    pub _pad: u32,
}

impl KernelOffsets {
    pub const ZERO: KernelOffsets = KernelOffsets {
        task_files: 0,
        task_group_leader: 0,
        task_comm: 0,
        task_exit_code: 0,
        sk_socket: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_inode: 0,
        file_private_data: 0,
        inode_mode: 0,
        inode_ino: 0,
        socket_sk: 0,
        sk_daddr: 0,
        sk_rcv_saddr: 0,
        sk_dport: 0,
        sk_num: 0,
        sk_family: 0,
        sk_state: 0,
        sk_v6_daddr: 0,
        sk_v6_rcv_saddr: 0,
        sk_type: 0,
        sk_protocol: 0,
        regs_args: [0; 6],
        regs_nr: 0,
        socket_inode: 0,
        _pad: 0,
    };
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
    /// Process name to match (NUL padded) when `comm_match` is set.
    pub comm_filter: [u8; TASK_COMM_LEN],
    /// The agent's own pid, never traced.
    pub self_pid: u32,
    /// Wake the agent up once this many bytes wait in the ring buffer (it also polls).
    pub wakeup_bytes: u32,
    /// Syscall number (of this architecture) -> `sys::X` id to report, 0 = ignore. Userspace
    /// fills it from its libc's `SYS_*` numbers and the `--events` selection.
    pub sys_table: [u8; SYSCALL_TABLE_LEN],
}

/// Syscall numbers below this are looked up in `Config::sys_table`.
pub const SYSCALL_TABLE_LEN: usize = 512;

impl Config {
    pub const fn new() -> Self {
        Config {
            offsets: KernelOffsets::ZERO,
            snaplen: 0,
            trace_all: 0,
            follow_forks: 0,
            comm_match: 0,
            pause: 0,
            comm_filter: [0; TASK_COMM_LEN],
            self_pid: 0,
            wakeup_bytes: 256 * 1024,
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
    pub const COUNT: u32 = 4;
}

/// Value of the TRACED map (key: tgid).
pub mod traced {
    /// Traced because the user named it (--pid, -- CMD, --comm match).
    pub const ROOT: u8 = 1;
    /// Traced because it descends from a traced process.
    pub const CHILD: u8 = 2;
}

// Sizes are part of the kernel/userspace contract: no implicit padding anywhere.
const _: () = assert!(core::mem::size_of::<SockInfo>() == 64);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 120);
const _: () = assert!(core::mem::size_of::<SockEvent>() == 120 + 32 + 8 + SOCKADDR_MAX);
const _: () = assert!(core::mem::size_of::<MsgAddr>() == 24);
const _: () = assert!(core::mem::size_of::<DataEvent>() == 120 + 24 + 24);
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 128);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 32 * 4);
const _: () = assert!(core::mem::size_of::<Config>() == 128 + 8 + 16 + 8 + SYSCALL_TABLE_LEN);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding (asserted above).
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}

// ---------------------------------------------------------------------------------------------
// Packet capture (`capagent capture`): TC classifier programs, their own ring buffer.

/// Most packet bytes one [`PacketEvent`] carries (the largest `-s` snaplen).
pub const PACKET_MAX: usize = 65535;

/// `PacketEvent::dir` values.
pub mod packet_dir {
    pub const INGRESS: u8 = 1;
    pub const EGRESS: u8 = 2;
}

/// One packet seen by the TC programs; `cap_len` packet bytes (from the Ethernet header on)
/// follow it in the `PACKETS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PacketEvent {
    /// `bpf_ktime_get_boot_ns()` when the program saw the packet (CLOCK_BOOTTIME).
    pub ts_ns: u64,
    /// `bpf_get_socket_cookie(skb)`: the socket the packet belongs to, 0 when none.
    pub cookie: u64,
    pub ifindex: u32,
    /// `skb->len`: the packet's length on the wire (before snaplen).
    pub orig_len: u32,
    /// Packet bytes following this header.
    pub cap_len: u32,
    /// [`packet_dir::INGRESS`] or [`packet_dir::EGRESS`].
    pub dir: u8,
    /// [`owner_src`]: how the kernel found the owning socket.
    pub owner_src: u8,
    pub _pad: [u8; 2],
    /// Inode number of the local socket the packet belongs to (egress: the sending socket;
    /// ingress: the socket the kernel will deliver it to), 0 when the kernel found none.
    pub ino: u64,
    /// The process that owns that socket (`SOCK_OWNERS`), zeros when unknown.
    pub owner: SockOwner,
}

/// `PacketEvent::owner_src` values.
pub mod owner_src {
    /// No local socket found (forwarded traffic, or a socket without an inode).
    pub const NONE: u8 = 0;
    /// Socket found, but no owner known for it.
    pub const SOCKET: u8 = 1;
    /// Socket and its owner found (`PacketEvent::owner` is valid).
    pub const OWNER: u8 = 2;
}

/// The process that owns a socket (value of `SOCK_OWNERS`, key: socket inode number):
/// the process that created or accepted it, or held it when capture started.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockOwner {
    /// Process id (tgid).
    pub pid: u32,
    /// The thread that created or accepted the socket (= pid when seeded from /proc).
    pub tid: u32,
    /// The process's name then.
    pub comm: [u8; TASK_COMM_LEN],
}

/// `CaptureConfig::select` values.
pub mod select {
    /// Every packet.
    pub const ALL: u8 = 0;
    /// Packets of processes in `CAPTURE_PIDS` (or named `CaptureConfig::comm`), and packets
    /// whose owner the kernel does not know (userspace decides for those).
    pub const PROCESSES: u8 = 1;
}

/// Load-time configuration of the capture programs (the `CAPTURE_CONFIG` read-only global).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Packet bytes copied per packet (1..=[`PACKET_MAX`]).
    pub snaplen: u32,
    /// Wake the agent up once this many bytes wait in the ring buffer (it also polls).
    pub wakeup_bytes: u32,
    pub offsets: KernelOffsets,
    /// [`select`]: which packets the kernel passes on.
    pub select: u8,
    /// Add children of processes in `CAPTURE_PIDS` to it.
    pub follow_forks: u8,
    /// With `select`: also processes with this name (when `comm_match`).
    pub comm_match: u8,
    pub _pad: u8,
    /// The agent's own pid.
    pub self_pid: u32,
    pub comm: [u8; TASK_COMM_LEN],
    /// 1 when a filter expression is in force: every packet is first run through the
    /// classic BPF program of its interface (`FILTER_IFACES`, `FILTER_INSNS`).
    pub filter: u32,
}

impl CaptureConfig {
    pub const fn new() -> Self {
        CaptureConfig {
            snaplen: PACKET_MAX as u32,
            wakeup_bytes: 256 * 1024,
            offsets: KernelOffsets::ZERO,
            select: select::ALL,
            follow_forks: 0,
            comm_match: 0,
            _pad: 0,
            self_pid: 0,
            comm: [0; TASK_COMM_LEN],
            filter: 0,
        }
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-CPU counters of one captured interface (value of `CAPTURE_STATS`, key: ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfCounters {
    /// Packets written into the ring buffer.
    pub packets: u64,
    /// Packets that did not fit in the ring buffer.
    pub dropped: u64,
    /// Packets the filter expression rejected (never copied).
    pub filtered: u64,
}

/// Most instructions of one classic BPF filter program (the kernel's `BPF_MAXINSNS`).
pub const FILTER_MAX_INSNS: usize = 4096;
/// Filter programs the capture programs hold at once (one per link type).
pub const FILTER_SLOTS: usize = 2;

/// One classic BPF instruction (`struct sock_filter` / libpcap's `struct bpf_insn`). The
/// `FILTER_INSNS` array holds [`FILTER_SLOTS`] programs of [`FILTER_MAX_INSNS`] entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FilterInsn {
    pub code: u16,
    /// Instructions skipped when a conditional jump is taken / not taken.
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Value of `FILTER_IFACES` (key: ifindex): where the interface's program starts in
/// `FILTER_INSNS` and its length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FilterRef {
    pub start: u32,
    pub len: u32,
}

const _: () = assert!(core::mem::size_of::<PacketEvent>() == 32 + 8 + 24);
const _: () = assert!(core::mem::size_of::<SockOwner>() == 24);
const _: () = assert!(core::mem::size_of::<CaptureConfig>() == 8 + 128 + 8 + 16 + 4);
const _: () = assert!(core::mem::size_of::<IfCounters>() == 24);
const _: () = assert!(core::mem::size_of::<FilterInsn>() == 8);
const _: () = assert!(core::mem::size_of::<FilterRef>() == 8);

#[cfg(feature = "user")]
mod user_capture {
    // SAFETY: plain-old-data, repr(C), no padding (asserted above).
    unsafe impl aya::Pod for super::CaptureConfig {}
    unsafe impl aya::Pod for super::IfCounters {}
    unsafe impl aya::Pod for super::SockOwner {}
    unsafe impl aya::Pod for super::FilterInsn {}
    unsafe impl aya::Pod for super::FilterRef {}
}

// ---------------------------------------------------------------------------------------------
// Per-process interception (`capagent intercept --pid/--cgroup/-- CMD`): cgroup connect hooks
// send chosen processes' TCP connections to the agent's proxy and remember where they went.

/// Most `--port` filters the kernel side checks.
pub const INTERCEPT_PORTS_MAX: usize = 16;

/// Load-time configuration of the interception programs (the `INTERCEPT_CONFIG` read-only
/// global).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterceptConfig {
    /// The agent's own pid: its connections are never redirected.
    pub self_pid: u32,
    /// Redirect every process of the cgroup the programs are attached to (`--cgroup`), not
    /// only the processes in `INTERCEPT_PIDS`.
    pub all: u8,
    /// Add children of processes in `INTERCEPT_PIDS` to it.
    pub follow_forks: u8,
    /// How many entries of `ports` are used (0: every port except 53).
    pub nports: u8,
    pub _pad0: u8,
    /// The proxy's IPv4 listener, as `bpf_sock_addr.user_ip4` holds addresses (the four
    /// address bytes in memory order).
    pub proxy_ip4: u32,
    /// The IPv4 listener's port, host byte order.
    pub proxy_port4: u16,
    /// The IPv6 listener's port, host byte order (0: no IPv6 listener).
    pub proxy_port6: u16,
    /// The proxy's IPv6 listener address, as `bpf_sock_addr.user_ip6` holds it.
    pub proxy_ip6: [u32; 4],
    /// `bpf_get_netns_cookie` of the agent's network namespace: connections made in other
    /// namespaces (where the proxy's address means something else) are left alone.
    pub netns_cookie: u64,
    /// Destination ports to redirect (host byte order), when `nports` > 0.
    pub ports: [u16; INTERCEPT_PORTS_MAX],
}

impl InterceptConfig {
    pub const fn new() -> Self {
        InterceptConfig {
            self_pid: 0,
            all: 0,
            follow_forks: 0,
            nports: 0,
            _pad0: 0,
            proxy_ip4: 0,
            proxy_port4: 0,
            proxy_port6: 0,
            proxy_ip6: [0; 4],
            netns_cookie: 0,
            ports: [0; INTERCEPT_PORTS_MAX],
        }
    }
}

impl Default for InterceptConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a redirected connection was going (value of `ICPT_BY_COOKIE` and
/// `ICPT_BY_CLIENT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrigDst {
    /// IPv4 in the first 4 bytes, or IPv6, network byte order.
    pub addr: [u8; 16],
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// The process that connected (tgid).
    pub pid: u32,
}

/// A redirected connection's client end as the proxy sees it when it accepts (key of
/// `ICPT_BY_CLIENT`): the connecting socket's local address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct ClientKey {
    /// IPv4 in the first 4 bytes (the rest zero), or IPv6, network byte order.
    pub addr: [u8; 16],
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<InterceptConfig>() == 8 + 4 + 4 + 16 + 8 + 32);
const _: () = assert!(core::mem::size_of::<OrigDst>() == 24);
const _: () = assert!(core::mem::size_of::<ClientKey>() == 24);

#[cfg(feature = "user")]
mod user_intercept {
    // SAFETY: plain-old-data, repr(C), no padding (asserted above).
    unsafe impl aya::Pod for super::InterceptConfig {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::ClientKey {}
}
