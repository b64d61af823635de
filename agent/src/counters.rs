//! The counters and state of one session (a daemon job, or a command-line session with a
//! status line): what its records and packets add up to, kept in atomics any thread reads.
//! The event-based modes feed them with an [`EventCounter`] next to their writers, the capture
//! with its packets and the kernel's drop counters; the daemon exposes them
//! (`daemon::metrics`) and the status line draws them (`output::status`).
//!
//! What each kind counts:
//! - every kind: `errors` (failed runs), `restarts` (runs started again after a failure), `up`;
//! - trace and the proxies (their records): `events` (records written, loss reports aside),
//!   `bytes` (payload bytes the calls or relays moved), `connections` (proxies: connections
//!   and UDP sessions opened; trace: TCP connects and accepts that succeeded), `active
//!   connections` (opened and not closed yet), `lost events` (trace: records the kernel could
//!   not hand over);
//! - capture: `packets` and `bytes` (the selected packets written, bytes on the wire), `lost
//!   events` (packets dropped because the ring buffer was full);
//! - trace and capture: `ring buffer fill` (share of the kernel ring buffer waiting to be read).

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

use agent_common::sys;

use crate::{
    control::Control,
    model::{Call, Detail, Event, Transport},
};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Started, not ended yet.
    Running,
    /// Failed; waits to be started again.
    Retrying,
    /// Ended by itself without an error (its command exited, its processes are gone...).
    Finished,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Finished => "finished",
        }
    }
}

/// The metrics of one job; they live as long as the job is in the configuration.
pub struct JobMetrics {
    pub name: String,
    pub kind: String,
    pub events: AtomicU64,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub connections: AtomicU64,
    pub active_connections: AtomicI64,
    pub lost_events: AtomicU64,
    pub errors: AtomicU64,
    pub restarts: AtomicU64,
    up: AtomicBool,
    /// State and last error (empty when none).
    state: Mutex<(JobState, String)>,
    /// The control of the current run (ring buffer fill).
    control: Mutex<Option<Control>>,
}

impl JobMetrics {
    pub fn new(name: &str, kind: &str) -> Arc<JobMetrics> {
        Arc::new(JobMetrics {
            name: name.to_string(),
            kind: kind.to_string(),
            events: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            active_connections: AtomicI64::new(0),
            lost_events: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            up: AtomicBool::new(false),
            state: Mutex::new((JobState::Retrying, String::new())),
            control: Mutex::new(None),
        })
    }

    /// A run starts with `control`.
    pub fn started(&self, control: &Control) {
        *self.control.lock().unwrap_or_else(|e| e.into_inner()) = Some(control.clone());
        self.active_connections.store(0, Ordering::Relaxed);
        self.up.store(true, Ordering::Relaxed);
        self.set_state(JobState::Running, None);
    }

    /// The run ended: `error` when it failed.
    pub fn ended(&self, error: Option<String>) {
        self.up.store(false, Ordering::Relaxed);
        self.active_connections.store(0, Ordering::Relaxed);
        match error {
            Some(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.set_state(JobState::Retrying, Some(e));
            }
            None => self.set_state(JobState::Finished, None),
        }
    }

    fn set_state(&self, state: JobState, error: Option<String>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = state;
        if let Some(e) = error {
            s.1 = e;
        }
    }

    pub fn state(&self) -> (JobState, String) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Fill of the current run's ring buffer (0 when the kind has none or nothing runs).
    pub fn ring_fill(&self) -> f64 {
        if !self.is_up() {
            return 0.0;
        }
        self.control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0.0, Control::ring_fill)
    }
}

/// Most connections followed at once for the active-connections gauge.
const MAX_TRACKED: usize = 65536;

/// Counts the records of a job (trace, proxies) into its metrics: an
/// [`EventWriter`](crate::output::EventWriter) next to the job's outputs (the impl is in
/// `output::status`, where the trait's layer is).
pub struct EventCounter {
    m: Arc<JobMetrics>,
    /// Open connections: (pid, socket `sk`, socket inode). The inode tells a socket from
    /// one the kernel handed the `sk` of a freed one (its close record comes at the
    /// syscall's exit, maybe after the new one's connect); 0 when unknown (proxies).
    open: HashSet<(u32, u64, u64)>,
}

impl EventCounter {
    pub fn new(m: Arc<JobMetrics>) -> EventCounter {
        EventCounter {
            m,
            open: HashSet::new(),
        }
    }

    pub fn observe(&mut self, ev: &Event) {
        let m = &self.m;
        let key = ev.sock.as_ref().map(|s| (ev.task.pid, s.sk, s.ino));
        let tcp = ev
            .sock
            .as_ref()
            .is_some_and(|s| s.transport == Transport::Tcp);
        let mut opened = false;
        match &ev.detail {
            Detail::Lost { events, .. } => {
                m.lost_events.fetch_add(*events, Ordering::Relaxed);
                return;
            }
            // TLS plaintext (`trace --tls`) is not more bytes moved: its socket's are.
            Detail::Data { total, .. } if !matches!(ev.call, Call::Tls { .. }) => {
                m.bytes.fetch_add(*total, Ordering::Relaxed);
            }
            Detail::Open { .. } => opened = ev.ret >= 0,
            Detail::Sock { .. } => match ev.shown_as() {
                sys::CONNECT => opened = tcp && (ev.ret == 0 || ev.ret == -115),
                sys::ACCEPT | sys::ACCEPT4 => opened = tcp && ev.ret >= 0,
                sys::CLOSE => {
                    if let Some(k) = key
                        && self.open.remove(&k)
                    {
                        m.active_connections.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            },
            _ => {}
        }
        m.events.fetch_add(1, Ordering::Relaxed);
        if opened {
            m.connections.fetch_add(1, Ordering::Relaxed);
            if let Some(k) = key
                && self.open.len() < MAX_TRACKED
                && self.open.insert(k)
            {
                m.active_connections.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Direction, Endpoint, SocketMeta, Task};
    use crate::trace::assemble::lost_event;

    fn ev(syscall: u16, ret: i64, sk: u64, detail: Detail) -> Event {
        Event {
            ts_ns: 1,
            task: Task {
                pid: 7,
                tid: 7,
                comm: "x".into(),
            },
            call: Call::Syscall(syscall),
            fd: 3,
            ret,
            sock: Some(SocketMeta {
                sk,
                ino: 0,
                transport: Transport::Tcp,
                local: Some(Endpoint::Inet("127.0.0.1:1".parse().unwrap())),
                remote: None,
            }),
            detail,
            tls_ciphertext: false,
            tls_eof: false,
            tls_plaintext: false,
            unfinished: false,
            stack: None,
        }
    }

    fn sock() -> Detail {
        Detail::Sock {
            args: [0; 4],
            addr: None,
        }
    }

    #[test]
    fn counts_records_connections_bytes_and_losses() {
        let m = JobMetrics::new("j", "proxy socks");
        let mut c = EventCounter::new(m.clone());
        let open = Detail::Open {
            proxy: "socks5 connect".into(),
            listen: None,
            target: "a:1".into(),
            resolved: None,
            tls: None,
        };
        c.observe(&ev(sys::CONNECT, 0, 1, open.clone()));
        c.observe(&ev(sys::CONNECT, -111, 2, open));
        c.observe(&ev(sys::CONNECT, -115, 3, sock()));
        c.observe(&ev(sys::ACCEPT4, 5, 4, sock()));
        assert_eq!(m.connections.load(Ordering::Relaxed), 3);
        assert_eq!(m.active_connections.load(Ordering::Relaxed), 3);
        c.observe(&ev(
            sys::SENDTO,
            10,
            1,
            Detail::Data {
                dir: Direction::Send,
                total: 10,
                payload: bytes::Bytes::from_static(b"0123"),
                truncated: true,
                addr: None,
                msg_index: 0,
            },
        ));
        assert_eq!(m.bytes.load(Ordering::Relaxed), 10);
        c.observe(&ev(sys::CLOSE, 0, 1, sock()));
        c.observe(&ev(sys::CLOSE, 0, 1, sock()));
        c.observe(&ev(sys::CLOSE, 0, 99, sock()));
        assert_eq!(m.active_connections.load(Ordering::Relaxed), 2);
        c.observe(&lost_event(1, 4, 400));
        assert_eq!(m.lost_events.load(Ordering::Relaxed), 4);
        assert_eq!(m.events.load(Ordering::Relaxed), 8);
    }

    /// A connection on the `sk` of one whose close record has not come yet (another inode):
    /// two open, then one closed.
    #[test]
    fn reused_sk_is_another_connection() {
        let m = JobMetrics::new("j", "trace");
        let mut c = EventCounter::new(m.clone());
        let on = |mut e: Event, ino| {
            e.sock.as_mut().unwrap().ino = ino;
            e
        };
        c.observe(&on(ev(sys::CONNECT, 0, 1, sock()), 7));
        c.observe(&on(ev(sys::CONNECT, 0, 1, sock()), 8));
        assert_eq!(m.active_connections.load(Ordering::Relaxed), 2);
        c.observe(&on(ev(sys::CLOSE, 0, 1, sock()), 7));
        assert_eq!(m.active_connections.load(Ordering::Relaxed), 1);
        c.observe(&on(ev(sys::CLOSE, 0, 1, sock()), 8));
        assert_eq!(m.active_connections.load(Ordering::Relaxed), 0);
        assert_eq!(m.connections.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn tls_plaintext_is_a_record_not_more_bytes() {
        let m = JobMetrics::new("j", "trace");
        let mut c = EventCounter::new(m.clone());
        let mut plain = ev(
            agent_common::tls_fn::SSL_WRITE,
            4,
            1,
            Detail::Data {
                dir: Direction::Send,
                total: 4,
                payload: bytes::Bytes::from_static(b"GET "),
                truncated: false,
                addr: None,
                msg_index: 0,
            },
        );
        plain.call = Call::Tls {
            func: agent_common::tls_fn::SSL_WRITE,
            conn: 7,
        };
        c.observe(&plain);
        assert_eq!(m.bytes.load(Ordering::Relaxed), 0);
        assert_eq!(m.events.load(Ordering::Relaxed), 1);
    }
}
