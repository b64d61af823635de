//! The daemon's metrics: per-job counters and gauges, counted from what each job records,
//! and their exposition in the OpenMetrics text format, written by `prometheus-client`
//! (served by [`super::http`], read back by `capagent status` through [`super::promtext`]).
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
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

use agent_common::sys;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::{
    control::Control,
    model::{Detail, Event, Transport},
    output::EventWriter,
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

/// Daemon-wide numbers.
#[derive(Default)]
pub struct DaemonMetrics {
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Unix time the daemon started, in seconds.
    pub start_time: AtomicU64,
}

/// Every job's metrics, in configuration order.
#[derive(Default)]
pub struct Registry {
    jobs: Mutex<Vec<Arc<JobMetrics>>>,
    pub daemon: DaemonMetrics,
}

impl Registry {
    /// The metrics of the jobs `jobs` (name, kind), kept from before for the jobs that were
    /// already there with the same kind, new for the others; jobs not listed are dropped.
    pub fn set_jobs(&self, jobs: &[(String, String)]) -> Vec<Arc<JobMetrics>> {
        let mut cur = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let next: Vec<Arc<JobMetrics>> = jobs
            .iter()
            .map(|(name, kind)| {
                cur.iter()
                    .find(|m| &m.name == name && &m.kind == kind)
                    .cloned()
                    .unwrap_or_else(|| JobMetrics::new(name, kind))
            })
            .collect();
        *cur = next.clone();
        next
    }

    pub fn jobs(&self) -> Vec<Arc<JobMetrics>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The exposition (OpenMetrics text, by `prometheus-client`) of every metric.
    pub fn render(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.snapshot()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String does not fail");
        out
    }

    /// Every metric's value now, in exposition order.
    fn snapshot(&self) -> Snapshot {
        let jobs = self.jobs();
        let d = &self.daemon;
        let mut families = vec![
            SnapFamily {
                name: "capagent_daemon_start_time_seconds",
                help: "Unix time the daemon started.",
                ty: MetricType::Gauge,
                samples: vec![(
                    vec![],
                    Value::Gauge(d.start_time.load(Ordering::Relaxed) as i64),
                )],
            },
            SnapFamily {
                name: "capagent_daemon_reloads",
                help: "Configuration reloads (SIGHUP) applied.",
                ty: MetricType::Counter,
                samples: vec![(vec![], Value::Counter(d.reloads.load(Ordering::Relaxed)))],
            },
            SnapFamily {
                name: "capagent_daemon_reload_failures",
                help: "Configuration reloads rejected (the running configuration was kept).",
                ty: MetricType::Counter,
                samples: vec![(
                    vec![],
                    Value::Counter(d.reload_failures.load(Ordering::Relaxed)),
                )],
            },
        ];
        type Get = fn(&JobMetrics) -> Value;
        // Counters are named without `_total`: the exposition adds it to their samples.
        let series: [(&'static str, MetricType, &'static str, Get); 10] = [
            (
                "capagent_job_up",
                MetricType::Gauge,
                "1 while the job runs, 0 while it waits to be retried or has finished.",
                |m| Value::Gauge(i64::from(m.is_up())),
            ),
            (
                "capagent_job_events",
                MetricType::Counter,
                "Records the job wrote (trace events, proxy records), loss reports aside.",
                |m| Value::Counter(m.events.load(Ordering::Relaxed)),
            ),
            (
                "capagent_job_packets",
                MetricType::Counter,
                "Packets the job wrote (capture).",
                |m| Value::Counter(m.packets.load(Ordering::Relaxed)),
            ),
            (
                "capagent_job_bytes",
                MetricType::Counter,
                "Payload bytes moved (trace, proxies) or bytes on the wire of the packets written (capture).",
                |m| Value::Counter(m.bytes.load(Ordering::Relaxed)),
            ),
            (
                "capagent_job_connections",
                MetricType::Counter,
                "Connections opened (proxies: also UDP sessions; trace: TCP connects and accepts).",
                |m| Value::Counter(m.connections.load(Ordering::Relaxed)),
            ),
            (
                "capagent_job_lost_events",
                MetricType::Counter,
                "Records (trace) or packets (capture) lost because the ring buffer was full.",
                |m| Value::Counter(m.lost_events.load(Ordering::Relaxed)),
            ),
            (
                "capagent_job_errors",
                MetricType::Counter,
                "Runs of the job that ended with an error.",
                |m| Value::Counter(m.errors.load(Ordering::Relaxed)),
            ),
            (
                "capagent_job_restarts",
                MetricType::Counter,
                "Runs started again after an error.",
                |m| Value::Counter(m.restarts.load(Ordering::Relaxed)),
            ),
            (
                "capagent_job_active_connections",
                MetricType::Gauge,
                "Connections opened and not closed yet.",
                |m| Value::Gauge(m.active_connections.load(Ordering::Relaxed).max(0)),
            ),
            (
                "capagent_job_ring_buffer_fill_ratio",
                MetricType::Gauge,
                "Share of the kernel ring buffer waiting to be read (trace, capture).",
                |m| Value::Ratio(m.ring_fill()),
            ),
        ];
        let job_labels = |m: &JobMetrics| vec![("job", m.name.clone()), ("kind", m.kind.clone())];
        for (name, ty, help, get) in series {
            families.push(SnapFamily {
                name,
                help,
                ty,
                samples: jobs.iter().map(|m| (job_labels(m), get(m))).collect(),
            });
        }
        families.push(SnapFamily {
            name: "capagent_job_state",
            help: "1 for the job's current state (running, retrying, finished), with its last error.",
            ty: MetricType::Gauge,
            samples: jobs
                .iter()
                .map(|m| {
                    let (state, error) = m.state();
                    let mut labels = job_labels(m);
                    labels.push(("state", state.name().to_string()));
                    labels.push(("error", error));
                    (labels, Value::Gauge(1))
                })
                .collect(),
        });
        Snapshot { families }
    }
}

/// One sample's value, and so its family's type.
#[derive(Debug, Clone, Copy)]
enum Value {
    Counter(u64),
    Gauge(i64),
    Ratio(f64),
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct SnapFamily {
    name: &'static str,
    help: &'static str,
    ty: MetricType,
    samples: Vec<(Labels, Value)>,
}

/// The metrics at one scrape, handed to `prometheus-client` as a collector.
#[derive(Debug)]
struct Snapshot {
    families: Vec<SnapFamily>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for f in &self.families {
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, f.ty)?;
            match f.samples.as_slice() {
                [(labels, value)] if labels.is_empty() => encode_value(*value, metric)?,
                samples => {
                    for (labels, value) in samples {
                        encode_value(*value, metric.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn encode_value(v: Value, enc: MetricEncoder) -> std::fmt::Result {
    match v {
        Value::Counter(n) => ConstCounter::new(n).encode(enc),
        Value::Gauge(n) => ConstGauge::new(n).encode(enc),
        Value::Ratio(x) => ConstGauge::new(x).encode(enc),
    }
}

/// Most connections followed at once for the active-connections gauge.
const MAX_TRACKED: usize = 65536;

/// Counts the records of a job (trace, proxies) into its metrics: an [`EventWriter`] next to
/// the job's outputs.
pub struct EventCounter {
    m: Arc<JobMetrics>,
    /// Open connections: (pid, socket).
    open: HashSet<(u32, u64)>,
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
        let key = ev.sock.as_ref().map(|s| (ev.task.pid, s.sk));
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
            Detail::Data { total, .. } => {
                m.bytes.fetch_add(*total, Ordering::Relaxed);
            }
            Detail::Open { .. } => opened = ev.ret >= 0,
            Detail::Sock { .. } => match ev.syscall {
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

impl EventWriter for EventCounter {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        self.observe(ev);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
            syscall,
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

    #[test]
    fn exposition_has_every_job_and_escapes_labels() {
        let r = Registry::default();
        let ms = r.set_jobs(&[
            ("a".into(), "capture".into()),
            ("b\"q".into(), "dns".into()),
        ]);
        ms[0].packets.store(12, Ordering::Relaxed);
        ms[0].started(&Control::new());
        ms[1].ended(Some("cannot listen on 127.0.0.1:53\nx".into()));
        let text = r.render();
        // OpenMetrics: a counter family is named without `_total`, its samples with it; the
        // exposition ends with `# EOF`.
        assert!(text.contains(
            "# HELP capagent_job_packets Packets the job wrote (capture).\n\
             # TYPE capagent_job_packets counter\n\
             capagent_job_packets_total{job=\"a\",kind=\"capture\"} 12\n"
        ));
        assert!(text.contains("# TYPE capagent_job_up gauge\n"));
        assert!(text.contains("capagent_daemon_reloads_total 0\n"));
        assert!(text.contains("capagent_daemon_start_time_seconds 0\n"));
        assert!(
            text.contains("capagent_job_ring_buffer_fill_ratio{job=\"b\\\"q\",kind=\"dns\"} 0.0\n")
        );
        assert!(text.ends_with("\n# EOF\n"));
        assert!(text.contains("capagent_job_packets_total{job=\"a\",kind=\"capture\"} 12\n"));
        assert!(text.contains("capagent_job_up{job=\"a\",kind=\"capture\"} 1\n"));
        assert!(text.contains("capagent_job_errors_total{job=\"b\\\"q\",kind=\"dns\"} 1\n"));
        assert!(text.contains(
            "capagent_job_state{job=\"b\\\"q\",kind=\"dns\",state=\"retrying\",error=\"cannot listen on 127.0.0.1:53\\nx\"} 1\n"
        ));
        // The same job keeps its counters across a reload; a job of another kind starts anew.
        let again = r.set_jobs(&[
            ("a".into(), "capture".into()),
            ("b\"q".into(), "trace".into()),
        ]);
        assert!(Arc::ptr_eq(&again[0], &ms[0]));
        assert_eq!(again[1].errors.load(Ordering::Relaxed), 0);
        let parsed = super::super::promtext::parse(&r.render());
        assert!(parsed.iter().any(|s| s.name == "capagent_job_packets_total"
            && s.label("job") == Some("a")
            && s.value == 12.0));
    }
}
