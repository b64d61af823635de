//! capagent's eBPF programs: socket syscall tracing (`trace`), packet capture (`capture`,
//! `owner`, `xdp`, with its classic BPF interpreter for filter expressions, `filter`) and
//! per-process interception (`intercept`: cgroup connect hooks); what they share is in
//! `helpers` (memory reads, configuration globals, ring buffer wakeups).
//!
//! The `sys_enter` raw tracepoint program picks the socket-related syscalls by number,
//! checks in the kernel that the process is traced and the fd is a socket, and remembers the
//! call's arguments per thread (the payload of a recv-type call is only known at exit). The
//! `sys_exit` program then emits one record (or one record per payload chunk) into the
//! `EVENTS` ring buffer. Other syscalls return at once; untraced processes cost one hash
//! lookup per socket-related syscall. `task_newtask`, `sched_process_exec` and
//! `sched_process_exit` follow forks, match names and forget exited processes. With
//! `trace --tls`, uprobes on the TLS libraries (`tls`) add the plaintext of their calls.
//!
//! There is no CO-RE relocation support for Rust eBPF here, so kernel struct offsets come from
//! userspace (resolved from the running kernel's BTF) through the read-only `CONFIG` global.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![allow(static_mut_refs)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod helpers;

#[cfg(target_arch = "bpf")]
mod trace;

#[cfg(target_arch = "bpf")]
mod tls;

#[cfg(target_arch = "bpf")]
mod tls_go;

#[cfg(target_arch = "bpf")]
mod capture;

#[cfg(target_arch = "bpf")]
mod owner;

#[cfg(target_arch = "bpf")]
mod xdp;

#[cfg(target_arch = "bpf")]
mod filter;

#[cfg(target_arch = "bpf")]
mod intercept;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
