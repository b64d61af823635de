//! The daemon's metrics: per-job counters and gauges, counted from what each job records,
//! and their exposition in the OpenMetrics text format, written by `prometheus-client`
//! (served by [`super::http`], read back by `capagent status` through [`super::promtext`]).
//!
//! The counters themselves ([`JobMetrics`]) and what each kind counts are in
//! [`crate::counters`]; this module holds them for every job and writes them out.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::counters::JobMetrics;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Control;

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
