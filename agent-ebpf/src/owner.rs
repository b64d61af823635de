//! Which process owns a packet's socket, found in the kernel for `capagent capture`.
//!
//! `SOCK_OWNERS` maps a socket's inode number to the process that created or accepted it.
//! The agent seeds it from /proc before attaching (sockets opened before the capture began);
//! `capture_sock_exit`, on the socket(), accept() and accept4() exit tracepoints, adds every
//! socket created afterwards. The TC programs find the packet's socket (egress: the one the
//! packet carries, or the listener of a request socket; ingress: the socket the kernel will
//! deliver it to, by `bpf_sk_lookup_tcp/udp` on its addresses), read its inode number, and
//! look the owner up. `capture_newtask` adds children of selected processes to
//! `CAPTURE_PIDS` (`--pid` and `-- CMD` follow forks).
//!
//! BPF does not let a program do arithmetic on a socket pointer, so its address is copied
//! out with `bpf_probe_read_kernel` from the stack slot that holds it ([`address_of`]) and the
//! struct fields are then read with offsets from BTF, like the trace programs do.

use agent_common::{SockOwner, owner_src, packet_dir, select};
use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task,
        generated::{
            bpf_get_listener_sock, bpf_probe_read_kernel, bpf_sk_fullsock, bpf_sk_lookup_tcp,
            bpf_sk_lookup_udp, bpf_sk_release, bpf_skb_load_bytes_relative,
        },
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{TcContext, TracePointContext},
};

use crate::{
    capture::capture_conf,
    helpers::{CLONE_THREAD, kread, process_comm},
};

/// Socket inode number -> owner. Userspace seeds it and sizes it at load time.
#[map]
static SOCK_OWNERS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(65536, 0);

/// Selected processes (tgid) when `CaptureConfig::select` is `PROCESSES`.
#[map]
static CAPTURE_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const BPF_HDR_START_NET: u32 = 1;
/// The loopback device's ifindex in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// The kernel address a socket pointer holds, as a plain number.
#[inline(always)]
fn address_of(sk: *mut bpf_sock) -> u64 {
    let slot = sk;
    let mut addr: u64 = 0;
    unsafe {
        bpf_probe_read_kernel(
            (&mut addr as *mut u64).cast(),
            8,
            (&slot as *const *mut bpf_sock).cast(),
        )
    };
    addr
}

/// Inode number of the `struct socket` behind the `struct sock` at `sk` (0 when it has
/// none: a socket being torn down, or a kernel socket).
#[inline(always)]
fn sock_ino(sk: u64) -> u64 {
    let o = &capture_conf().offsets;
    unsafe {
        let socket: u64 = kread(sk + o.sk_socket as u64);
        if socket == 0 {
            return 0;
        }
        kread(socket + o.socket_inode as u64 + o.inode_ino as u64)
    }
}

/// The packet's local socket inode number, 0 when none is found.
#[inline(always)]
fn packet_ino(ctx: &TcContext, dir: u8) -> u64 {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    if dir == packet_dir::EGRESS {
        let sk = unsafe { (*skb).__bindgen_anon_2.sk };
        if sk.is_null() {
            return 0;
        }
        let mut full = unsafe { bpf_sk_fullsock(sk) };
        if full.is_null() {
            // A request socket (SYN-ACK): its listener's owner.
            full = unsafe { bpf_get_listener_sock(sk) };
            if full.is_null() {
                return 0;
            }
        }
        return sock_ino(address_of(full));
    }
    lookup_ingress(&SkbNet(skb))
}

/// Reads a packet from its network header on, whatever the hook.
pub(crate) trait NetBytes {
    /// The packet's EtherType (ETH_P_IP, ETH_P_IPV6...).
    fn ethertype(&self) -> u16;
    /// Loads `N` bytes at `off` from the network header; 0 on success.
    fn load<const N: usize>(&self, off: u32, buf: &mut [u8; N]) -> i64;
    /// The program context, for the socket lookup helpers.
    fn ctx(&self) -> *mut core::ffi::c_void;
}

/// A TC program's packet (`bpf_skb_load_bytes_relative` from the network header).
pub(crate) struct SkbNet(pub *mut __sk_buff);

impl NetBytes for SkbNet {
    #[inline(always)]
    fn ethertype(&self) -> u16 {
        u16::from_be(unsafe { (*self.0).protocol } as u16)
    }

    #[inline(always)]
    fn load<const N: usize>(&self, off: u32, buf: &mut [u8; N]) -> i64 {
        unsafe {
            bpf_skb_load_bytes_relative(
                self.0 as *const _,
                off,
                buf.as_mut_ptr().cast(),
                N as u32,
                BPF_HDR_START_NET,
            )
        }
    }

    #[inline(always)]
    fn ctx(&self) -> *mut core::ffi::c_void {
        self.0.cast()
    }
}

/// Looks up the socket an incoming packet goes to (established, or listening/bound): its
/// inode number, 0 when there is none.
#[inline(always)]
pub(crate) fn lookup_ingress<P: NetBytes>(pkt: &P) -> u64 {
    let proto = pkt.ethertype();
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let l4: u8;
    let size: u32;
    let ports_at: u32;
    if proto == ETH_P_IP {
        let mut ip = [0u8; 20];
        if pkt.load(0, &mut ip) != 0 {
            return 0;
        }
        // Fragments after the first carry no ports.
        if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
            return 0;
        }
        l4 = ip[9];
        ports_at = ((ip[0] & 0x0f) as u32) * 4;
        tuple.__bindgen_anon_1.ipv4.saddr = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
        tuple.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        size = 12;
    } else if proto == ETH_P_IPV6 {
        let mut ip = [0u8; 40];
        if pkt.load(0, &mut ip) != 0 {
            return 0;
        }
        // Only TCP/UDP right after the fixed header (no extension headers).
        l4 = ip[6];
        ports_at = 40;
        let mut s = [0u32; 4];
        let mut d = [0u32; 4];
        for i in 0..4 {
            let j = 8 + i * 4;
            s[i] = u32::from_ne_bytes([ip[j], ip[j + 1], ip[j + 2], ip[j + 3]]);
            let j = 24 + i * 4;
            d[i] = u32::from_ne_bytes([ip[j], ip[j + 1], ip[j + 2], ip[j + 3]]);
        }
        tuple.__bindgen_anon_1.ipv6.saddr = s;
        tuple.__bindgen_anon_1.ipv6.daddr = d;
        size = 36;
    } else {
        return 0;
    }
    if l4 != IPPROTO_TCP && l4 != IPPROTO_UDP {
        return 0;
    }
    let mut ports = [0u8; 4];
    if pkt.load(ports_at, &mut ports) != 0 {
        return 0;
    }
    let sport = u16::from_ne_bytes([ports[0], ports[1]]);
    let dport = u16::from_ne_bytes([ports[2], ports[3]]);
    if proto == ETH_P_IP {
        tuple.__bindgen_anon_1.ipv4.sport = sport;
        tuple.__bindgen_anon_1.ipv4.dport = dport;
    } else {
        tuple.__bindgen_anon_1.ipv6.sport = sport;
        tuple.__bindgen_anon_1.ipv6.dport = dport;
    }
    let netns = BPF_F_CURRENT_NETNS as u64;
    let sk = unsafe {
        if l4 == IPPROTO_TCP {
            bpf_sk_lookup_tcp(pkt.ctx(), &mut tuple, size, netns, 0)
        } else {
            bpf_sk_lookup_udp(pkt.ctx(), &mut tuple, size, netns, 0)
        }
    };
    if sk.is_null() {
        return 0;
    }
    let ino = sock_ino(address_of(sk));
    unsafe { bpf_sk_release(sk.cast()) };
    ino
}

/// The owner of the socket with inode `ino`: `(owner_src, ino, owner)`.
#[inline(always)]
pub(crate) fn owner_of(ino: u64) -> (u8, u64, SockOwner) {
    if ino == 0 {
        return (owner_src::NONE, 0, SockOwner::default());
    }
    match unsafe { SOCK_OWNERS.get(&ino) } {
        Some(o) => (owner_src::OWNER, ino, *o),
        None => (owner_src::SOCKET, ino, SockOwner::default()),
    }
}

/// The packet's owner `(owner_src, socket inode, owner)`, or `None` when a process selection
/// leaves the packet out.
///
/// A packet on loopback belongs to two local sockets, the sender's (its egress copy, the one
/// capture keeps) and the receiver's: it is attributed to the sender, unless a process
/// selection selects the receiver only, so `--pid` gets both directions of its connections.
#[inline(always)]
pub fn packet_owner(ctx: &TcContext, dir: u8) -> Option<(u8, u64, SockOwner)> {
    let first = owner_of(packet_ino(ctx, dir));
    let all = capture_conf().select == select::ALL;
    if first.0 == owner_src::OWNER && (all || selected(&first.2)) {
        return Some(first);
    }
    if all || first.0 != owner_src::OWNER {
        // Without a selection, the sender's socket (userspace looks for owners the kernel
        // does not know); with one, an unknown owner is decided in userspace too, unless
        // the receiver on loopback is selected.
        if !all && is_loopback_egress(ctx, dir) {
            let second = owner_of(lookup_ingress(&SkbNet(ctx.as_ptr() as *mut __sk_buff)));
            if second.0 == owner_src::OWNER && selected(&second.2) {
                return Some(second);
            }
        }
        return Some(first);
    }
    // A known owner outside the selection: on loopback, the receiver may be selected.
    if is_loopback_egress(ctx, dir) {
        let second = owner_of(lookup_ingress(&SkbNet(ctx.as_ptr() as *mut __sk_buff)));
        if second.0 != owner_src::OWNER || selected(&second.2) {
            return Some(second);
        }
    }
    None
}

#[inline(always)]
fn is_loopback_egress(ctx: &TcContext, dir: u8) -> bool {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    dir == packet_dir::EGRESS && unsafe { (*skb).ifindex } == LOOPBACK_IFINDEX
}

/// Whether a known owner is in the process selection.
#[inline(always)]
pub(crate) fn selected(owner: &SockOwner) -> bool {
    if unsafe { CAPTURE_PIDS.get(&owner.pid) }.is_some() {
        return true;
    }
    let c = capture_conf();
    c.comm_match != 0 && owner.comm == c.comm
}

/// syscalls:sys_exit_socket, sys_exit_accept, sys_exit_accept4 (`long ret` @16): records
/// the new socket's owner.
#[tracepoint]
pub fn capture_sock_exit(ctx: TracePointContext) -> u32 {
    let fd = unsafe { *(ctx.as_ptr().add(16) as *const i64) };
    if fd < 0 {
        return 0;
    }
    let o = &capture_conf().offsets;
    let ino: u64 = unsafe {
        let task = bpf_get_current_task();
        let files: u64 = kread(task + o.task_files as u64);
        if files == 0 {
            return 0;
        }
        let fdt: u64 = kread(files + o.files_fdt as u64);
        let max: u32 = kread(fdt + o.fdt_max_fds as u64);
        if fd as u64 >= max as u64 {
            return 0;
        }
        let fds: u64 = kread(fdt + o.fdt_fd as u64);
        let file: u64 = kread(fds + (fd as u64) * 8);
        if file == 0 {
            return 0;
        }
        let inode: u64 = kread(file + o.file_inode as u64);
        kread(inode + o.inode_ino as u64)
    };
    if ino == 0 {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let owner = SockOwner {
        pid: (id >> 32) as u32,
        tid: id as u32,
        comm: process_comm(id, &capture_conf().offsets),
    };
    let _ = SOCK_OWNERS.insert(&ino, &owner, 0);
    0
}

/// task:task_newtask, in the parent's context: pid @8, clone_flags @32. Children of selected
/// processes are selected too.
#[tracepoint]
pub fn capture_newtask(ctx: TracePointContext) -> u32 {
    if capture_conf().follow_forks == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let clone_flags = unsafe { *(ctx.as_ptr().add(32) as *const u64) };
    if clone_flags & CLONE_THREAD != 0 || unsafe { CAPTURE_PIDS.get(&tgid) }.is_none() {
        return 0;
    }
    let child = unsafe { *(ctx.as_ptr().add(8) as *const u32) };
    let _ = CAPTURE_PIDS.insert(&child, &1, 0);
    0
}
