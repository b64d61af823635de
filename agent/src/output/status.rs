//! The status line of a session whose records go to a file (`trace`, `capture`, the proxies,
//! `intercept` with `-o`/`-w FILE`): one line on stderr, redrawn in place about once a
//! second, as tshark does while it writes a file, so a long capture shows it is alive.
//! Only when stderr is a terminal: never in logs, under the daemon or in CI.
//!
//! It reads the session's counters ([`JobMetrics`], the ones the daemon's metrics expose): the event-based modes
//! feed them with an [`EventCounter`] next to their writers, the capture with a
//! [`PacketCounter`] (its packets and the kernel's drop counters). The line is drawn by a thread of its own, so a quiet
//! session still shows its time going by; dropping the [`StatusLine`] erases it (before the
//! summary is printed).

use std::{
    io::{IsTerminal as _, Write},
    sync::{Arc, Condvar, Mutex, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::num::human_bytes;
use super::{EventWriter, PacketWriter};
use crate::{
    counters::{EventCounter, JobMetrics},
    model::{
        Event,
        packet::{IfaceTotals, Owner, Packet},
    },
};

/// How often the line is redrawn.
pub const EVERY: Duration = Duration::from_secs(1);

/// What a session counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `trace`: events, payload bytes, connections, events lost.
    Events,
    /// The proxies and `intercept`: records, relayed bytes, connections.
    Records,
    /// `capture`: packets, bytes on the wire, packets dropped (ring buffer full).
    Packets,
}

/// The line for the counters of `m` after `elapsed`, e.g.
/// `capagent: 0:01:05  1234 events, 1.5 MiB, 12 connections, 0 lost`.
pub fn line(unit: Unit, m: &JobMetrics, elapsed: Duration) -> String {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let secs = elapsed.as_secs();
    let clock = format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let bytes = human_bytes(get(&m.bytes));
    let counts = match unit {
        Unit::Events => format!(
            "{} events, {bytes}, {} connections, {} lost",
            get(&m.events),
            get(&m.connections),
            get(&m.lost_events)
        ),
        Unit::Records => format!(
            "{} records, {bytes}, {} connections",
            get(&m.events),
            get(&m.connections)
        ),
        Unit::Packets => format!(
            "{} packets, {bytes}, {} dropped",
            get(&m.packets),
            get(&m.lost_events)
        ),
    };
    format!("capagent: {clock}  {counts}")
}

/// Whether a status line is shown: the records go to a file (`records_to_file`) and stderr
/// is a terminal.
pub fn shown(records_to_file: bool) -> bool {
    records_to_file && std::io::stderr().is_terminal()
}

struct Shared {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// The status line, drawn until dropped.
pub struct StatusLine {
    metrics: Arc<JobMetrics>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl StatusLine {
    /// A status line on stderr when `wanted` (the records go to a file) and stderr is a
    /// terminal; `None` otherwise.
    pub fn start(wanted: bool, unit: Unit) -> Option<StatusLine> {
        if !shown(wanted) {
            return None;
        }
        StatusLine::drawing(JobMetrics::new("", ""), unit)
    }

    /// A status line on stderr showing `metrics` (counted from before the line starts: a
    /// session that says it is live after a while starts its line then).
    pub fn drawing(metrics: Arc<JobMetrics>, unit: Unit) -> Option<StatusLine> {
        StatusLine::start_on(metrics, unit, Box::new(std::io::stderr()), EVERY)
    }

    /// A status line written to `out` every `every` (tests write into a buffer).
    pub fn start_on(
        metrics: Arc<JobMetrics>,
        unit: Unit,
        mut out: Box<dyn Write + Send>,
        every: Duration,
    ) -> Option<StatusLine> {
        let shared = Arc::new(Shared {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let (m, s) = (metrics.clone(), shared.clone());
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name("capagent-status".into())
            .spawn(move || {
                let mut drawn = false;
                let mut next = started + every;
                let mut stopped = s.stopped.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let now = Instant::now();
                    if !*stopped && now < next {
                        // Woken early (spuriously): wait for the rest.
                        stopped = s
                            .wake
                            .wait_timeout(stopped, next - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        continue;
                    }
                    if *stopped {
                        break;
                    }
                    next = Instant::now() + every;
                    // `\x1b[K` erases what a longer line before left behind.
                    let l = line(unit, &m, started.elapsed());
                    let _ = write!(out, "\r{l}\x1b[K");
                    let _ = out.flush();
                    drawn = true;
                }
                if drawn {
                    let _ = write!(out, "\r\x1b[K");
                    let _ = out.flush();
                }
            })
            .map_err(|e| tracing::debug!("no status line: {e}"))
            .ok()?;
        Some(StatusLine {
            metrics,
            shared,
            thread: Some(thread),
        })
    }

    /// The counters the line shows.
    pub fn metrics(&self) -> &Arc<JobMetrics> {
        &self.metrics
    }

    /// A writer that counts events, records and connections into the line (next to the
    /// session's writers).
    pub fn counter(&self) -> EventCounter {
        EventCounter::new(self.metrics.clone())
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        *self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The counter is a writer too: next to a session's other writers, it counts what they write.
impl EventWriter for EventCounter {
    fn write_event(&mut self, ev: &Event) -> std::io::Result<()> {
        self.observe(ev);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts a capture's packets, and the kernel's drops, into a session's counters (the status
/// line's, a daemon job's metrics): a packet writer next to the session's others. It asks for
/// the kernel's counters every `every`.
pub struct PacketCounter {
    metrics: Arc<JobMetrics>,
    every: Duration,
    last: Instant,
}

impl PacketCounter {
    pub fn new(metrics: Arc<JobMetrics>, every: Duration) -> PacketCounter {
        PacketCounter {
            metrics,
            every,
            last: Instant::now(),
        }
    }
}

impl PacketWriter for PacketCounter {
    fn write_packet(&mut self, p: &Packet<'_>, _: u64, _: Option<&Owner>) -> std::io::Result<()> {
        self.metrics.packets.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes
            .fetch_add(u64::from(p.orig_len), Ordering::Relaxed);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn wants_totals(&self) -> bool {
        self.last.elapsed() >= self.every
    }

    fn totals(&mut self, totals: &[IfaceTotals], _filtering: bool) -> std::io::Result<()> {
        self.last = Instant::now();
        let dropped = totals.iter().map(|t| t.dropped).sum();
        self.metrics.lost_events.store(dropped, Ordering::Relaxed);
        Ok(())
    }

    fn finish(&mut self, totals: &[IfaceTotals], filtering: bool) -> std::io::Result<()> {
        self.totals(totals, filtering)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_per_unit() {
        let m = JobMetrics::new("", "");
        m.events.store(1234, Ordering::Relaxed);
        m.packets.store(99, Ordering::Relaxed);
        m.bytes.store(3 << 20, Ordering::Relaxed);
        m.connections.store(12, Ordering::Relaxed);
        m.lost_events.store(5, Ordering::Relaxed);
        let t = Duration::from_secs(3725);
        assert_eq!(
            line(Unit::Events, &m, t),
            "capagent: 1:02:05  1234 events, 3.0 MiB, 12 connections, 5 lost"
        );
        assert_eq!(
            line(Unit::Records, &m, Duration::from_millis(1500)),
            "capagent: 0:00:01  1234 records, 3.0 MiB, 12 connections"
        );
        assert_eq!(
            line(Unit::Packets, &m, Duration::ZERO),
            "capagent: 0:00:00  99 packets, 3.0 MiB, 5 dropped"
        );
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn redrawn_in_place_and_erased_at_the_end() {
        let buf = Buf::default();
        let status = StatusLine::start_on(
            JobMetrics::new("", ""),
            Unit::Packets,
            Box::new(buf.clone()),
            Duration::from_millis(5),
        )
        .unwrap();
        let text = || String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Drawn with 0 packets, then with 1.
        while !text().contains(" 0 packets") {
            assert!(Instant::now() < deadline, "{:?}", text());
            std::thread::sleep(Duration::from_millis(5));
        }
        status.metrics().packets.store(1, Ordering::Relaxed);
        while !text().contains(" 1 packets") {
            assert!(Instant::now() < deadline, "{:?}", text());
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(status);
        let t = text();
        assert!(
            t.starts_with("\rcapagent: 0:00:00  0 packets, 0 B, 0 dropped\x1b[K"),
            "{t:?}"
        );
        assert!(
            t.ends_with(" 1 packets, 0 B, 0 dropped\x1b[K\r\x1b[K"),
            "{t:?}"
        );
        assert!(!t.contains('\n'), "{t:?}");
    }
}
