//! `capagent intercept --pid/--cgroup/-- CMD`: per-process transparent interception
//! without any firewall rule.
//!
//! - `capagent_conn4` / `capagent_conn6` (cgroup `connect4`/`connect6`) run on every
//!   `connect()` in the cgroup they are attached to. For a TCP socket of a chosen process
//!   (`ICPT_PIDS`, or every process with `all`), in the agent's network namespace, to a
//!   port other than 53 (and in `ports` when given), they rewrite the destination to the
//!   agent's proxy listener and keep the original destination under the socket's cookie
//!   (`ICPT_BY_COOKIE`). The agent itself is never redirected.
//! - `capagent_sockop` (sock_ops, `BPF_SOCK_OPS_TCP_CONNECT_CB`, when the SYN is about to
//!   leave and the socket has its local address and port) moves that entry to
//!   `ICPT_BY_CLIENT`, keyed by the client's local address and port: what the proxy sees
//!   as the peer of the connection it accepts. The proxy reads and deletes it.
//! - `capagent_fork` (task:task_newtask) adds children of chosen processes;
//!   `capagent_exit` (sched:sched_process_exit) forgets processes that ended, so a reused
//!   pid is not redirected by mistake.
//!
//! UDP (`--udp`, IPv4): the agent's UDP listener must learn each datagram's original
//! destination from the datagram's source address, the only thing it sees.
//! - `capagent_sendmsg4` (cgroup `sendmsg4`, unconnected `sendto`; the socket is already
//!   autobound when it runs) rewrites the destination to the UDP listener and, for a socket
//!   bound to the wildcard address, the source address to a loopback address
//!   127.64.0.0–127.127.255.255 of its own for each (socket, destination) pair
//!   (`ICPT_UDP_SLOT`): the listener finds the destination under that source (`ICPT_UDP_SRC`),
//!   so a socket sending to several destinations is never misattributed. A socket bound to a
//!   specific address keeps it: its datagrams are filed under its address and port, and when
//!   it sends to several destinations the latest one wins.
//! - `capagent_conn4` for a UDP socket (`connect()`, before it is bound) binds it with
//!   `bpf_bind` to such a loopback address (port 0: the kernel picks the port right after)
//!   and files the destination under that address, and under the socket's cookie
//!   (`ICPT_UDP_CONN`); a socket bound already is filed under its address and port.
//! - `capagent_recvmsg4` (cgroup `recvmsg4`) rewrites the source the process reads: an
//!   answer from the listener itself (to a connected socket) to the destination filed under
//!   the socket's cookie, an answer from one of the agent's per-flow reply sockets to the
//!   destination the agent filed under that socket's address (`ICPT_UDP_REPLY`).
//!
//! UDP over IPv6 (`capagent_sendmsg6`, `capagent_conn6`, `capagent_recvmsg6`): the same, but
//! IPv6 has only one loopback address, so every datagram is filed under its source address
//! and port (a socket sending to several destinations unconnected: the latest one wins); a
//! UDP socket connecting unbound is bound by `bpf_bind` to `[::1]` and a random port first.
//! IPv4-mapped destinations of dual-stack sockets are IPv4's: the kernel runs `sendmsg4`
//! for their unconnected sends; `capagent_conn6` binds them as `capagent_conn4` does (to
//! an IPv4-mapped 127.64/10 address) and `capagent_recvmsg6` rewrites their answers' mapped
//! sources.

use agent_common::{ClientKey, InterceptConfig, OrigDst, UdpOrig, UdpSlotKey};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_bind, bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie},
    },
    macros::{cgroup_sock_addr, map, sock_ops, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{SockAddrContext, SockOpsContext, TracePointContext},
};

use crate::helpers::{CLONE_THREAD, global};

/// Filled by userspace at load time.
#[unsafe(no_mangle)]
static INTERCEPT_CONFIG: InterceptConfig = InterceptConfig::new();

/// Processes (tgid) whose connections are redirected; value 1 = named by the user,
/// 2 = a descendant.
#[map]
static ICPT_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Original destination of a redirected socket that has not sent its SYN yet (key: socket
/// cookie).
#[map]
static ICPT_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(16384, 0);

/// Original destination of a redirected connection, by its client end.
#[map]
static ICPT_BY_CLIENT: LruHashMap<ClientKey, OrigDst> = LruHashMap::with_max_entries(16384, 0);

/// Where a UDP socket's datagrams to the listener come from (their source as the listener
/// sees it) → where they were going.
#[map]
static ICPT_UDP_SRC: LruHashMap<ClientKey, UdpOrig> = LruHashMap::with_max_entries(16384, 0);

/// An unconnected UDP socket's destination → the loopback source address (as
/// `msg_src_ip4` holds it) its datagrams there are sent from.
#[map]
static ICPT_UDP_SLOT: LruHashMap<UdpSlotKey, u32> = LruHashMap::with_max_entries(16384, 0);

/// A connected UDP socket (cookie) → the destination it connected to.
#[map]
static ICPT_UDP_CONN: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(16384, 0);

/// The agent's per-flow reply sockets (their address) → the destination their answers
/// come from. Filled by the agent.
#[map]
static ICPT_UDP_REPLY: HashMap<ClientKey, OrigDst> = HashMap::with_max_entries(16384, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const BPF_NOEXIST: u64 = 1;
/// The third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), as `user_ip6` holds it.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const DNS_PORT: u16 = 53;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;

/// The configuration (ports, selection, the proxy's addresses).
#[inline(always)]
fn conf() -> &'static InterceptConfig {
    global(&INTERCEPT_CONFIG)
}

/// Is the current process's connection to `port` (host order) one to redirect? TCP to
/// port 53 never is; UDP to it is (`--udp` is asked to record DNS).
#[inline(always)]
fn chosen(port: u16, udp: bool) -> Option<u32> {
    let c = conf();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == c.self_pid || (port == DNS_PORT && !udp) {
        return None;
    }
    if c.all == 0 && unsafe { ICPT_PIDS.get(&tgid) }.is_none() {
        return None;
    }
    let n = c.nports as usize;
    if n > 0 {
        let mut hit = false;
        let mut i = 0;
        while i < agent_common::INTERCEPT_PORTS_MAX {
            if i < n && c.ports[i] == port {
                hit = true;
            }
            i += 1;
        }
        if !hit {
            return None;
        }
    }
    Some(tgid)
}

#[inline(always)]
fn same_netns(ctx: &SockAddrContext) -> bool {
    let want = conf().netns_cookie;
    want == 0 || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == want
}

/// The original destination `addr` (`family`), `port` (host order) of the context's socket,
/// if it is one to redirect: a chosen process's ([`chosen`]), in the agent's network
/// namespace.
#[inline(always)]
fn orig_dst(
    ctx: &SockAddrContext,
    addr: [u8; 16],
    family: u16,
    port: u16,
    udp: bool,
) -> Option<OrigDst> {
    let pid = chosen(port, udp)?;
    if !same_netns(ctx) {
        return None;
    }
    Some(OrigDst {
        addr,
        family,
        port,
        pid,
    })
}

/// Files the original destination of the context's TCP socket under its cookie (for
/// `capagent_sockop`), if it is one to redirect; whether it did.
#[inline(always)]
fn file_tcp(ctx: &SockAddrContext, addr: [u8; 16], family: u16, port: u16) -> bool {
    let Some(orig) = orig_dst(ctx, addr, family, port, false) else {
        return false;
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ICPT_BY_COOKIE.insert(&cookie, &orig, 0).is_ok()
}

/// An IPv4 address as `user_ip4` holds it, in the first four bytes of a record's address.
#[inline(always)]
fn ip4_addr(ip: u32) -> [u8; 16] {
    let b = ip.to_ne_bytes();
    let mut addr = [0u8; 16];
    addr[0] = b[0];
    addr[1] = b[1];
    addr[2] = b[2];
    addr[3] = b[3];
    addr
}

/// An IPv6 address as `user_ip6` holds it (four words), as a record's address.
#[inline(always)]
fn words_addr(w: [u32; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    addr
}

/// A record's address as the four words `user_ip6` holds.
#[inline(always)]
fn addr_words(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// `::ffff:a.b.c.d`, an IPv4 address on a dual-stack socket.
#[inline(always)]
fn v4_mapped(w: [u32; 4]) -> bool {
    w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED
}

/// The destination port (host order) of the context.
///
/// # Safety
/// `ctx.sock_addr` is the kernel's context pointer.
#[inline(always)]
unsafe fn user_port(ctx: &SockAddrContext) -> u16 {
    u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16)
}

/// The context's IPv6 address (`user_ip6`).
///
/// # Safety
/// As [`user_port`].
#[inline(always)]
unsafe fn user_ip6(ctx: &SockAddrContext) -> [u32; 4] {
    let sa = ctx.sock_addr;
    unsafe {
        [
            (*sa).user_ip6[0],
            (*sa).user_ip6[1],
            (*sa).user_ip6[2],
            (*sa).user_ip6[3],
        ]
    }
}

/// Sets the context's IPv4 address and port (host order).
///
/// # Safety
/// As [`user_port`].
#[inline(always)]
unsafe fn set_dst4(ctx: &SockAddrContext, ip: u32, port: u16) {
    let sa = ctx.sock_addr;
    unsafe {
        (*sa).user_ip4 = ip;
        (*sa).user_port = u32::from(port.to_be());
    }
}

/// Sets the context's IPv4-mapped IPv6 address (its last word) and port (host order).
///
/// # Safety
/// As [`user_port`].
#[inline(always)]
unsafe fn set_dst_mapped(ctx: &SockAddrContext, ip: u32, port: u16) {
    let sa = ctx.sock_addr;
    unsafe {
        (*sa).user_ip6[3] = ip;
        (*sa).user_port = u32::from(port.to_be());
    }
}

/// Sets the context's IPv6 address and port (host order).
///
/// # Safety
/// As [`user_port`].
#[inline(always)]
unsafe fn set_dst6(ctx: &SockAddrContext, w: [u32; 4], port: u16) {
    let sa = ctx.sock_addr;
    unsafe {
        (*sa).user_ip6[0] = w[0];
        (*sa).user_ip6[1] = w[1];
        (*sa).user_ip6[2] = w[2];
        (*sa).user_ip6[3] = w[3];
        (*sa).user_port = u32::from(port.to_be());
    }
}

/// `bpf_bind` of the context's socket to the `struct sockaddr_in`/`sockaddr_in6` `sin`.
///
/// # Safety
/// `T` is a `#[repr(C)]` socket address of the family it says.
#[inline(always)]
unsafe fn bind_to<T>(ctx: &SockAddrContext, sin: &mut T) -> i64 {
    // SAFETY: bpf_bind reads a socket address of the given length from our stack.
    unsafe {
        bpf_bind(
            ctx.sock_addr,
            (sin as *mut T).cast(),
            core::mem::size_of::<T>() as i32,
        )
    }
}

#[cgroup_sock_addr(connect4)]
pub fn capagent_conn4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    unsafe {
        let port = user_port(&ctx);
        if (*sa).protocol == IPPROTO_UDP {
            udp_connect_v4(&ctx, (*sa).user_ip4, port, false);
            return 1;
        }
        if (*sa).protocol != IPPROTO_TCP {
            return 1;
        }
        let ip = (*sa).user_ip4;
        let c = conf();
        if c.proxy_port4 == 0 || (ip == c.proxy_ip4 && port == c.proxy_port4) {
            return 1;
        }
        if !file_tcp(&ctx, ip4_addr(ip), AF_INET, port) {
            return 1;
        }
        set_dst4(&ctx, c.proxy_ip4, c.proxy_port4);
    }
    1
}

#[cgroup_sock_addr(connect6)]
pub fn capagent_conn6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    unsafe {
        let port = user_port(&ctx);
        let w = user_ip6(&ctx);
        if (*sa).protocol == IPPROTO_UDP {
            if v4_mapped(w) {
                udp_connect_v4(&ctx, w[3], port, true);
            } else {
                udp_connect6(&ctx);
            }
            return 1;
        }
        if (*sa).protocol != IPPROTO_TCP {
            return 1;
        }
        let c = conf();
        // ::ffff:a.b.c.d, an IPv4 destination on a dual-stack socket.
        let mapped = v4_mapped(w);
        if mapped {
            if c.proxy_port4 == 0 || (w[3] == c.proxy_ip4 && port == c.proxy_port4) {
                return 1;
            }
        } else if c.proxy_port6 == 0 || (w == c.proxy_ip6 && port == c.proxy_port6) {
            return 1;
        }
        if !file_tcp(&ctx, words_addr(w), AF_INET6, port) {
            return 1;
        }
        if mapped {
            set_dst_mapped(&ctx, c.proxy_ip4, c.proxy_port4);
        } else {
            set_dst6(&ctx, c.proxy_ip6, c.proxy_port6);
        }
    }
    1
}

/// The original destination of a UDP datagram or connect the current context is about, if
/// it is one to redirect (IPv4, `--udp`, a chosen process, not to the listener).
#[inline(always)]
unsafe fn udp_orig4(ctx: &SockAddrContext) -> Option<OrigDst> {
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    unsafe { udp_orig_v4(ctx, ip, user_port(ctx)) }
}

/// [`udp_orig4`] of IPv4 address `ip` (as `user_ip4` holds it) and `port` (host order),
/// also the IPv4 destination of an IPv4-mapped IPv6 address.
#[inline(always)]
unsafe fn udp_orig_v4(ctx: &SockAddrContext, ip: u32, port: u16) -> Option<OrigDst> {
    let sa = ctx.sock_addr;
    let c = conf();
    if unsafe { (*sa).protocol } != IPPROTO_UDP
        || c.udp_port4 == 0
        || (ip == c.proxy_ip4 && port == c.udp_port4)
    {
        return None;
    }
    orig_dst(ctx, ip4_addr(ip), AF_INET, port, true)
}

/// A source key: an IPv4 address as `user_ip4` holds it, and a port (0: any).
#[inline(always)]
fn src_key(ip: u32, port: u16) -> ClientKey {
    ClientKey {
        addr: ip4_addr(ip),
        family: AF_INET,
        port,
        _pad: 0,
    }
}

/// Files `orig` under a fresh loopback source address of its own (127.64.0.0/10), which
/// it returns (as `user_ip4` holds addresses).
#[inline(always)]
fn new_slot(orig: &UdpOrig) -> Option<u32> {
    let mut i = 0;
    while i < 4 {
        let r = unsafe { bpf_get_prandom_u32() };
        let ip = u32::from_ne_bytes([127, 64 | ((r >> 16) as u8 & 0x3f), (r >> 8) as u8, r as u8]);
        // BPF_NOEXIST: an address in use (by another socket's flow) is never taken over.
        if ICPT_UDP_SRC
            .insert(&src_key(ip, 0), orig, BPF_NOEXIST)
            .is_ok()
        {
            return Some(ip);
        }
        i += 1;
    }
    None
}

#[inline(always)]
unsafe fn to_udp_listener(ctx: &SockAddrContext) {
    let c = conf();
    unsafe { set_dst4(ctx, c.proxy_ip4, c.udp_port4) }
}

/// `struct sockaddr_in`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

/// connect() of a UDP socket (see the module's comment) to IPv4 address `ip` (as
/// `user_ip4` holds it), port `port`: on an IPv4 socket, or as an IPv4-mapped address on a
/// dual-stack IPv6 socket (`mapped`).
#[inline(always)]
unsafe fn udp_connect_v4(ctx: &SockAddrContext, ip: u32, port: u16, mapped: bool) {
    let Some(dst) = (unsafe { udp_orig_v4(ctx, ip, port) }) else {
        return;
    };
    let orig = UdpOrig {
        dst,
        connected: 1,
        _pad: 0,
    };
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let (src_ip, src_port) = unsafe { ((*sk).src_ip4, (*sk).src_port as u16) };
    if src_port != 0 {
        // Bound already: filed under its address and port (the listener sees 127.0.0.1 for
        // a wildcard address).
        let ip = if src_ip == 0 {
            conf().proxy_ip4
        } else {
            src_ip
        };
        if ICPT_UDP_SRC
            .insert(&src_key(ip, src_port), &orig, 0)
            .is_err()
        {
            return;
        }
    } else {
        let Some(slot) = new_slot(&orig) else {
            return;
        };
        let r = if mapped {
            let mut sin6 = SockaddrIn6 {
                family: AF_INET6,
                port: 0,
                flowinfo: 0,
                addr: [0, 0, V4_MAPPED, slot],
                scope_id: 0,
            };
            unsafe { bind_to(ctx, &mut sin6) }
        } else {
            let mut sin = SockaddrIn {
                family: AF_INET,
                port: 0,
                addr: slot,
                zero: [0; 8],
            };
            unsafe { bind_to(ctx, &mut sin) }
        };
        if r != 0 {
            let _ = ICPT_UDP_SRC.remove(&src_key(slot, 0));
            return;
        }
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ICPT_UDP_CONN.insert(&cookie, &dst, 0).is_err() {
        return;
    }
    if mapped {
        let c = conf();
        unsafe { set_dst_mapped(ctx, c.proxy_ip4, c.udp_port4) };
    } else {
        unsafe { to_udp_listener(ctx) };
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn capagent_sendmsg4(ctx: SockAddrContext) -> i32 {
    unsafe {
        let Some(dst) = udp_orig4(&ctx) else {
            return 1;
        };
        let orig = UdpOrig {
            dst,
            connected: 0,
            _pad: 0,
        };
        let sa = ctx.sock_addr;
        let src = (*sa).msg_src_ip4;
        if src == 0 {
            let key = UdpSlotKey {
                cookie: bpf_get_socket_cookie(ctx.as_ptr()),
                addr: dst.addr,
                family: AF_INET,
                port: dst.port,
                _pad: 0,
            };
            let slot = match ICPT_UDP_SLOT.get(&key) {
                Some(s) => {
                    let s = *s;
                    // Still filed (the LRU may have dropped it).
                    let _ = ICPT_UDP_SRC.insert(&src_key(s, 0), &orig, 0);
                    s
                }
                None => {
                    let Some(s) = new_slot(&orig) else {
                        return 1;
                    };
                    if ICPT_UDP_SLOT.insert(&key, &s, 0).is_err() {
                        let _ = ICPT_UDP_SRC.remove(&src_key(s, 0));
                        return 1;
                    }
                    s
                }
            };
            (*sa).msg_src_ip4 = slot;
        } else {
            // The socket's own (or a chosen) source address: the latest destination wins.
            let sk = (*sa).__bindgen_anon_1.sk;
            let port = (*sk).src_port as u16;
            if port == 0 || ICPT_UDP_SRC.insert(&src_key(src, port), &orig, 0).is_err() {
                return 1;
            }
        }
        to_udp_listener(&ctx);
    }
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn capagent_recvmsg4(ctx: SockAddrContext) -> i32 {
    unsafe {
        let ip = (*ctx.sock_addr).user_ip4;
        if let Some((ip, port)) = answer_source4(&ctx, ip, user_port(&ctx)) {
            set_dst4(&ctx, ip, port);
        }
    }
    1
}

/// The source a process should read for an IPv4 datagram from `ip` (as `user_ip4` holds
/// it) and `port`: the original destination when it is the answer of an intercepted flow
/// (from the listener to a connected socket, or from one of the agent's reply sockets).
#[inline(always)]
fn answer_source4(ctx: &SockAddrContext, ip: u32, port: u16) -> Option<(u32, u16)> {
    let c = conf();
    if c.udp_port4 == 0 || ip != c.proxy_ip4 {
        return None;
    }
    let orig = if port == c.udp_port4 {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        unsafe { ICPT_UDP_CONN.get(&cookie) }
    } else {
        unsafe { ICPT_UDP_REPLY.get(&src_key(ip, port)) }
    }?;
    if orig.family != AF_INET {
        return None;
    }
    let a = orig.addr;
    Some((u32::from_ne_bytes([a[0], a[1], a[2], a[3]]), orig.port))
}

#[inline(always)]
fn src_key6(w: [u32; 4], port: u16) -> ClientKey {
    ClientKey {
        addr: words_addr(w),
        family: AF_INET6,
        port,
        _pad: 0,
    }
}

/// [`udp_orig4`] for IPv6 (IPv4-mapped destinations are not redirected).
#[inline(always)]
unsafe fn udp_orig6(ctx: &SockAddrContext) -> Option<OrigDst> {
    let c = conf();
    let port = unsafe { user_port(ctx) };
    let w = unsafe { user_ip6(ctx) };
    let mapped = v4_mapped(w);
    if unsafe { (*ctx.sock_addr).protocol } != IPPROTO_UDP
        || c.udp_port6 == 0
        || mapped
        || (w == c.proxy_ip6 && port == c.udp_port6)
    {
        return None;
    }
    orig_dst(ctx, words_addr(w), AF_INET6, port, true)
}

#[inline(always)]
unsafe fn to_udp_listener6(ctx: &SockAddrContext) {
    let c = conf();
    unsafe { set_dst6(ctx, c.proxy_ip6, c.udp_port6) }
}

/// The source key of a socket bound to `w` (all zero: the wildcard, which sends to the
/// listener from the listener's address) and `port`.
#[inline(always)]
fn bound_key6(w: [u32; 4], port: u16) -> ClientKey {
    if w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == 0 {
        src_key6(conf().proxy_ip6, port)
    } else {
        src_key6(w, port)
    }
}

/// `struct sockaddr_in6`.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: [u32; 4],
    scope_id: u32,
}

/// connect() of a UDP socket over IPv6.
#[inline(always)]
unsafe fn udp_connect6(ctx: &SockAddrContext) {
    let Some(dst) = (unsafe { udp_orig6(ctx) }) else {
        return;
    };
    let orig = UdpOrig {
        dst,
        connected: 1,
        _pad: 0,
    };
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let (src, src_port) = unsafe {
        (
            [
                (*sk).src_ip6[0],
                (*sk).src_ip6[1],
                (*sk).src_ip6[2],
                (*sk).src_ip6[3],
            ],
            (*sk).src_port as u16,
        )
    };
    if src_port != 0 {
        if ICPT_UDP_SRC
            .insert(&bound_key6(src, src_port), &orig, 0)
            .is_err()
        {
            return;
        }
    } else {
        // Bound here to the listener's address and a port we know (port 0 would leave the
        // choice to the kernel, after this program).
        let mut bound = 0u16;
        let mut i = 0;
        while i < 4 {
            let port = 32768 + (unsafe { bpf_get_prandom_u32() } % 28232) as u16;
            let mut sin6 = SockaddrIn6 {
                family: AF_INET6,
                port: port.to_be(),
                flowinfo: 0,
                addr: conf().proxy_ip6,
                scope_id: 0,
            };
            let r = unsafe { bind_to(ctx, &mut sin6) };
            if r == 0 {
                bound = port;
                break;
            }
            i += 1;
        }
        if bound == 0
            || ICPT_UDP_SRC
                .insert(&src_key6(conf().proxy_ip6, bound), &orig, 0)
                .is_err()
        {
            return;
        }
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ICPT_UDP_CONN.insert(&cookie, &dst, 0).is_err() {
        return;
    }
    unsafe { to_udp_listener6(ctx) };
}

#[cgroup_sock_addr(sendmsg6)]
pub fn capagent_sendmsg6(ctx: SockAddrContext) -> i32 {
    unsafe {
        let Some(dst) = udp_orig6(&ctx) else {
            return 1;
        };
        let orig = UdpOrig {
            dst,
            connected: 0,
            _pad: 0,
        };
        let sa = ctx.sock_addr;
        let src = [
            (*sa).msg_src_ip6[0],
            (*sa).msg_src_ip6[1],
            (*sa).msg_src_ip6[2],
            (*sa).msg_src_ip6[3],
        ];
        let sk = (*sa).__bindgen_anon_1.sk;
        let port = (*sk).src_port as u16;
        if port == 0
            || ICPT_UDP_SRC
                .insert(&bound_key6(src, port), &orig, 0)
                .is_err()
        {
            return 1;
        }
        to_udp_listener6(&ctx);
    }
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn capagent_recvmsg6(ctx: SockAddrContext) -> i32 {
    let c = conf();
    unsafe {
        let w = user_ip6(&ctx);
        let port = user_port(&ctx);
        if v4_mapped(w) {
            // An IPv4 answer to a dual-stack socket.
            if let Some((ip, port)) = answer_source4(&ctx, w[3], port) {
                set_dst_mapped(&ctx, ip, port);
            }
            return 1;
        }
        if c.udp_port6 == 0 || w != c.proxy_ip6 {
            return 1;
        }
        let orig = if port == c.udp_port6 {
            let cookie = bpf_get_socket_cookie(ctx.as_ptr());
            ICPT_UDP_CONN.get(&cookie)
        } else {
            ICPT_UDP_REPLY.get(&src_key6(w, port))
        };
        let Some(o) = orig else {
            return 1;
        };
        if o.family != AF_INET6 {
            return 1;
        }
        set_dst6(&ctx, addr_words(o.addr), o.port);
    }
    1
}

#[sock_ops]
pub fn capagent_sockop(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = (unsafe { ICPT_BY_COOKIE.get(&cookie) }) else {
        return 1;
    };
    let orig = *orig;
    let mut key = ClientKey {
        addr: [0; 16],
        family: 0,
        port: ctx.local_port() as u16,
        _pad: 0,
    };
    let family = ctx.family();
    if family == u32::from(AF_INET) {
        key.family = AF_INET;
        key.addr = ip4_addr(ctx.local_ip4());
    } else if family == u32::from(AF_INET6) {
        key.family = AF_INET6;
        key.addr = words_addr(ctx.local_ip6());
    } else {
        return 1;
    }
    let _ = ICPT_BY_CLIENT.insert(&key, &orig, 0);
    let _ = ICPT_BY_COOKIE.remove(&cookie);
    1
}

/// task:task_newtask, in the parent's context: pid @8, clone_flags @32.
#[tracepoint]
pub fn capagent_fork(ctx: TracePointContext) -> u32 {
    if conf().follow_forks == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let clone_flags = unsafe { *(ctx.as_ptr().add(32) as *const u64) };
    if clone_flags & CLONE_THREAD != 0 || unsafe { ICPT_PIDS.get(&tgid) }.is_none() {
        return 0;
    }
    let child = unsafe { *(ctx.as_ptr().add(8) as *const u32) };
    let _ = ICPT_PIDS.insert(&child, &2, 0);
    0
}

/// sched:sched_process_exit: group_dead @32.
#[tracepoint]
pub fn capagent_exit(ctx: TracePointContext) -> u32 {
    let group_dead = unsafe { *(ctx.as_ptr().add(32) as *const u8) };
    if group_dead == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = ICPT_PIDS.remove(&tgid);
    0
}
