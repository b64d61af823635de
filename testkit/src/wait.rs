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

/// Whether the process `pid` (or any process in its network namespace) has a TCP socket
/// listening on `port`, from the namespace's `/proc/PID/net/tcp{,6}`.
pub fn listening(pid: u32, port: u16) -> bool {
    let want = format!(":{port:04X} ");
    ["tcp", "tcp6"].iter().any(|f| {
        let table = fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
        // sl local_address rem_address st ...; st 0A = LISTEN
        table.lines().skip(1).any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && format!("{} ", cols[1]).ends_with(&want) && cols[3] == "0A"
        })
    })
}

/// Waits until the process `pid` (or any process in its network namespace) has a TCP socket
/// listening on `port` (see [`listening`]); panics after [`TIMEOUT`].
pub fn wait_listen(pid: u32, port: u16) {
    assert!(
        wait_until(TIMEOUT, || listening(pid, port)),
        "nothing listens on port {port}"
    );
}
