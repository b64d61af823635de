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

use agent_common::{ClientKey, InterceptConfig, OrigDst};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
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

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u32 = 6;
const DNS_PORT: u16 = 53;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;

/// The configuration (ports, selection, the proxy's addresses).
#[inline(always)]
fn conf() -> &'static InterceptConfig {
    global(&INTERCEPT_CONFIG)
}

/// Is the current process's connection to `port` (host order) one to redirect?
#[inline(always)]
fn chosen(port: u16) -> Option<u32> {
    let c = conf();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == c.self_pid || port == DNS_PORT {
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

#[cgroup_sock_addr(connect4)]
pub fn capagent_conn4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    unsafe {
        if (*sa).protocol != IPPROTO_TCP {
            return 1;
        }
        let port = u16::from_be((*sa).user_port as u16);
        let ip = (*sa).user_ip4;
        let c = conf();
        if c.proxy_port4 == 0 || (ip == c.proxy_ip4 && port == c.proxy_port4) {
            return 1;
        }
        let Some(tgid) = chosen(port) else {
            return 1;
        };
        if !same_netns(&ctx) {
            return 1;
        }
        let mut addr = [0u8; 16];
        let b = ip.to_ne_bytes();
        addr[0] = b[0];
        addr[1] = b[1];
        addr[2] = b[2];
        addr[3] = b[3];
        let orig = OrigDst {
            addr,
            family: AF_INET,
            port,
            pid: tgid,
        };
        let cookie = bpf_get_socket_cookie(ctx.as_ptr());
        if ICPT_BY_COOKIE.insert(&cookie, &orig, 0).is_err() {
            return 1;
        }
        (*sa).user_ip4 = c.proxy_ip4;
        (*sa).user_port = u32::from(c.proxy_port4.to_be());
    }
    1
}

#[cgroup_sock_addr(connect6)]
pub fn capagent_conn6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    unsafe {
        if (*sa).protocol != IPPROTO_TCP {
            return 1;
        }
        let port = u16::from_be((*sa).user_port as u16);
        let w0 = (*sa).user_ip6[0];
        let w1 = (*sa).user_ip6[1];
        let w2 = (*sa).user_ip6[2];
        let w3 = (*sa).user_ip6[3];
        let c = conf();
        // ::ffff:a.b.c.d, an IPv4 destination on a dual-stack socket.
        let mapped = w0 == 0 && w1 == 0 && w2 == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        if mapped {
            if c.proxy_port4 == 0 || (w3 == c.proxy_ip4 && port == c.proxy_port4) {
                return 1;
            }
        } else if c.proxy_port6 == 0
            || (w0 == c.proxy_ip6[0]
                && w1 == c.proxy_ip6[1]
                && w2 == c.proxy_ip6[2]
                && w3 == c.proxy_ip6[3]
                && port == c.proxy_port6)
        {
            return 1;
        }
        let Some(tgid) = chosen(port) else {
            return 1;
        };
        if !same_netns(&ctx) {
            return 1;
        }
        let mut addr = [0u8; 16];
        let words = [w0, w1, w2, w3];
        let mut i = 0;
        while i < 4 {
            let b = words[i].to_ne_bytes();
            addr[i * 4] = b[0];
            addr[i * 4 + 1] = b[1];
            addr[i * 4 + 2] = b[2];
            addr[i * 4 + 3] = b[3];
            i += 1;
        }
        let orig = OrigDst {
            addr,
            family: AF_INET6,
            port,
            pid: tgid,
        };
        let cookie = bpf_get_socket_cookie(ctx.as_ptr());
        if ICPT_BY_COOKIE.insert(&cookie, &orig, 0).is_err() {
            return 1;
        }
        if mapped {
            (*sa).user_ip6[3] = c.proxy_ip4;
            (*sa).user_port = u32::from(c.proxy_port4.to_be());
        } else {
            (*sa).user_ip6[0] = c.proxy_ip6[0];
            (*sa).user_ip6[1] = c.proxy_ip6[1];
            (*sa).user_ip6[2] = c.proxy_ip6[2];
            (*sa).user_ip6[3] = c.proxy_ip6[3];
            (*sa).user_port = u32::from(c.proxy_port6.to_be());
        }
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
        let b = ctx.local_ip4().to_ne_bytes();
        key.addr[0] = b[0];
        key.addr[1] = b[1];
        key.addr[2] = b[2];
        key.addr[3] = b[3];
    } else if family == u32::from(AF_INET6) {
        key.family = AF_INET6;
        let w = ctx.local_ip6();
        let mut i = 0;
        while i < 4 {
            let b = w[i].to_ne_bytes();
            key.addr[i * 4] = b[0];
            key.addr[i * 4 + 1] = b[1];
            key.addr[i * 4 + 2] = b[2];
            key.addr[i * 4 + 3] = b[3];
            i += 1;
        }
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
