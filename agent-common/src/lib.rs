//! Records shared by the eBPF programs (`agent-ebpf`) and the userspace agent, and the names
//! of the programs, maps and globals of the eBPF object, one module per capability:
//! [`trace`], [`capture`], [`intercept`], and what they share ([`shared`]). The records are
//! re-exported at the root, so `agent_common::Config` and `agent_common::sys` keep working;
//! the names are reached through their module (`agent_common::trace::maps::EVENTS`).
//!
//! Every type here is `#[repr(C)]`, fixed-size and free of implicit padding (each padding
//! byte is a named `_pad` field), and its size is asserted at compile time, so the kernel
//! and userspace views can never drift apart silently.
#![no_std]

pub mod capture;
pub mod intercept;
pub mod shared;
pub mod trace;

// The records and constants at the root (not the names: each capability has its own
// `progs` and `maps`).
pub use capture::{
    CaptureConfig, FILTER_MAX_INSNS, FILTER_SLOTS, FilterInsn, FilterRef, IfCounters, PACKET_MAX,
    PacketEvent, SockOwner, owner_src, packet_dir, select,
};
pub use intercept::{
    ClientKey, INTERCEPT_PORTS_MAX, InterceptConfig, OrigDst, UdpOrig, UdpSlotKey,
};
pub use shared::{KernelOffsets, TASK_COMM_LEN};
pub use trace::{
    CHUNK_MAX, Config, DataEvent, EventHeader, FileKey, MsgAddr, ProcEvent, SOCKADDR_MAX,
    STACK_MAX, SYS_TLS_ONLY, SYSCALL_TABLE_LEN, SockEvent, SockInfo, StackEvent, TlsEvent, counter,
    flags, kind, paused, stack_flags, sys, tls_cookie, tls_fn, traced,
};
