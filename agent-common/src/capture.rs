//! Packet capture (`capagent capture`): TC classifier programs (and an XDP one), their own
//! ring buffer, the in-kernel filter and socket owners.

use crate::shared::{KernelOffsets, TASK_COMM_LEN};

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
const _: () = assert!(core::mem::size_of::<CaptureConfig>() == 8 + 140 + 8 + 16 + 4);
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

/// Names in the eBPF object (agent-ebpf/src/capture.rs, xdp.rs, owner.rs): its programs...
pub mod progs {
    pub const INGRESS: &str = "capture_ingress";
    pub const EGRESS: &str = "capture_egress";
    pub const XDP: &str = "capture_xdp";
    pub const SOCK_EXIT: &str = "capture_sock_exit";
    pub const NEWTASK: &str = "capture_newtask";
    pub const ALL: &[&str] = &[INGRESS, EGRESS, XDP, SOCK_EXIT, NEWTASK];
}

/// ...its maps (packets, filter, owners)...
pub mod maps {
    pub const PACKETS: &str = "PACKETS";
    pub const CAPTURE_STATS: &str = "CAPTURE_STATS";
    pub const FILTER_INSNS: &str = "FILTER_INSNS";
    pub const FILTER_IFACES: &str = "FILTER_IFACES";
    pub const FILTER_STATE: &str = "FILTER_STATE";
    pub const SOCK_OWNERS: &str = "SOCK_OWNERS";
    pub const CAPTURE_PIDS: &str = "CAPTURE_PIDS";
    pub const ALL: &[&str] = &[
        PACKETS,
        CAPTURE_STATS,
        FILTER_INSNS,
        FILTER_IFACES,
        FILTER_STATE,
        SOCK_OWNERS,
        CAPTURE_PIDS,
    ];
}

/// ...and the global userspace writes the [`CaptureConfig`] into.
pub const CONFIG_GLOBAL: &str = "CAPTURE_CONFIG";
