//! Per-process interception (`capagent intercept --pid/--cgroup/-- CMD`): cgroup connect
//! hooks send chosen processes' TCP connections to the agent's proxy and remember where they
//! went.

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
    /// `--udp`: the UDP listener's port on `proxy_ip4`, host byte order (0: UDP is left
    /// alone).
    pub udp_port4: u16,
    /// `--udp`: the IPv6 UDP listener's port on `proxy_ip6`, host byte order (0: none).
    pub udp_port6: u16,
    pub _pad1: [u8; 4],
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
            udp_port4: 0,
            udp_port6: 0,
            _pad1: [0; 4],
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

/// Where the datagrams a UDP socket sends from one source go (value of `ICPT_UDP_SRC`,
/// keyed by the source the agent's UDP listener sees, a [`ClientKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UdpOrig {
    pub dst: OrigDst,
    /// 1: the socket is connected to `dst` (its answers must come from the listener
    /// itself, the address it is connected to); 0: an unconnected `sendto`.
    pub connected: u32,
    pub _pad: u32,
}

/// One unconnected UDP socket's destination (key of `ICPT_UDP_SLOT`, whose value is the
/// loopback source address its datagrams to that destination are sent from).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UdpSlotKey {
    pub cookie: u64,
    /// IPv4 in the first 4 bytes, network byte order.
    pub addr: [u8; 16],
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<InterceptConfig>() == 8 + 4 + 4 + 16 + 8 + 32 + 8);
const _: () = assert!(core::mem::size_of::<OrigDst>() == 24);
const _: () = assert!(core::mem::size_of::<ClientKey>() == 24);
const _: () = assert!(core::mem::size_of::<UdpOrig>() == 32);
const _: () = assert!(core::mem::size_of::<UdpSlotKey>() == 32);

#[cfg(feature = "user")]
mod user_intercept {
    // SAFETY: plain-old-data, repr(C), no padding (asserted above).
    unsafe impl aya::Pod for super::InterceptConfig {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::UdpOrig {}
    unsafe impl aya::Pod for super::UdpSlotKey {}
}

/// Names in the eBPF object (agent-ebpf/src/intercept.rs): its programs...
pub mod progs {
    pub const CONNECT4: &str = "capagent_conn4";
    pub const CONNECT6: &str = "capagent_conn6";
    pub const SOCKOPS: &str = "capagent_sockop";
    pub const FORK: &str = "capagent_fork";
    pub const EXIT: &str = "capagent_exit";
    pub const SENDMSG4: &str = "capagent_sendmsg4";
    pub const RECVMSG4: &str = "capagent_recvmsg4";
    pub const SENDMSG6: &str = "capagent_sendmsg6";
    pub const RECVMSG6: &str = "capagent_recvmsg6";
    pub const ALL: &[&str] = &[
        CONNECT4, CONNECT6, SOCKOPS, FORK, EXIT, SENDMSG4, RECVMSG4, SENDMSG6, RECVMSG6,
    ];
}

/// ...its maps...
pub mod maps {
    pub const ICPT_PIDS: &str = "ICPT_PIDS";
    pub const ICPT_BY_COOKIE: &str = "ICPT_BY_COOKIE";
    pub const ICPT_BY_CLIENT: &str = "ICPT_BY_CLIENT";
    pub const ICPT_UDP_SRC: &str = "ICPT_UDP_SRC";
    pub const ICPT_UDP_SLOT: &str = "ICPT_UDP_SLOT";
    pub const ICPT_UDP_CONN: &str = "ICPT_UDP_CONN";
    pub const ICPT_UDP_REPLY: &str = "ICPT_UDP_REPLY";
    /// The maps only `--udp` uses.
    pub const UDP: &[&str] = &[ICPT_UDP_SRC, ICPT_UDP_SLOT, ICPT_UDP_CONN, ICPT_UDP_REPLY];
    pub const ALL: &[&str] = &[
        ICPT_PIDS,
        ICPT_BY_COOKIE,
        ICPT_BY_CLIENT,
        ICPT_UDP_SRC,
        ICPT_UDP_SLOT,
        ICPT_UDP_CONN,
        ICPT_UDP_REPLY,
    ];
}

/// ...and the global userspace writes the [`InterceptConfig`] into.
pub const CONFIG_GLOBAL: &str = "INTERCEPT_CONFIG";
