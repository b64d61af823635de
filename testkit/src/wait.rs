//! Waiting for a condition instead of sleeping: poll it until it holds or a deadline passes.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use crate::TIMEOUT;

/// How often [`wait_for`] and [`wait_until`] look again.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` every [`POLL`] until it returns `Some` (returned) or `timeout` passes
/// (`None`, after one last look). The caller says what it was waiting for when it fails.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Polls `cond` every [`POLL`] until it holds (`true`) or `timeout` passes (`false`).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || cond().then_some(())).is_some()
}

/// TCP states in `/proc/net/tcp`.
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_TIME_WAIT: u8 = 0x06;
pub const TCP_CLOSE: u8 = 0x07;
pub const TCP_LISTEN: u8 = 0x0a;

/// A TCP socket of `/proc/PID/net/tcp{,6}`: local port, remote port, state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: u8,
}

/// The TCP sockets (IPv4 and IPv6) of the network namespace of process `pid` (`"self"`'s
/// with 0).
pub fn tcp_sockets(pid: u32) -> Vec<TcpSocket> {
    let proc = if pid == 0 {
        "self".to_string()
    } else {
        pid.to_string()
    };
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    let mut out = Vec::new();
    for f in ["tcp", "tcp6"] {
        let table = fs::read_to_string(format!("/proc/{proc}/net/{f}")).unwrap_or_default();
        // sl local_address rem_address st ...
        for l in table.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 4 {
                continue;
            }
            if let (Some(local_port), Some(remote_port), Ok(state)) = (
                port(cols[1]),
                port(cols[2]),
                u8::from_str_radix(cols[3], 16),
            ) {
                out.push(TcpSocket {
                    local_port,
                    remote_port,
                    state,
                });
            }
        }
    }
    out
}

/// Whether the process `pid` (or any process in its network namespace) has a TCP socket
/// listening on `port`.
pub fn listening(pid: u32, port: u16) -> bool {
    tcp_sockets(pid)
        .iter()
        .any(|s| s.local_port == port && s.state == TCP_LISTEN)
}

/// Whether every TCP connection in the network namespace of `pid` has ended: each socket
/// listens, or is closed or in TIME_WAIT (so its FIN exchange and last ACK have been sent).
pub fn tcp_settled(pid: u32) -> bool {
    tcp_sockets(pid)
        .iter()
        .all(|s| matches!(s.state, TCP_LISTEN | TCP_TIME_WAIT | TCP_CLOSE))
}

/// Waits until every TCP connection in the network namespace of `pid` has ended (see
/// [`tcp_settled`]); panics after [`TIMEOUT`].
pub fn wait_tcp_settled(pid: u32) {
    assert!(
        wait_until(TIMEOUT, || tcp_settled(pid)),
        "TCP connections still open: {:?}",
        tcp_sockets(pid)
    );
}

/// Waits until the process `pid` (or any process in its network namespace) has a TCP socket
/// listening on `port` (see [`listening`]); panics after [`TIMEOUT`].
pub fn wait_listen(pid: u32, port: u16) {
    assert!(
        wait_until(TIMEOUT, || listening(pid, port)),
        "nothing listens on port {port}"
    );
}
