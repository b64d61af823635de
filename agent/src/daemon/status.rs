//! `capagent status`: the jobs of a running daemon, read from its metrics endpoint.

use std::{collections::BTreeMap, fmt::Write as _};

use super::promtext::Sample;

/// One job's row.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct JobRow {
    pub name: String,
    pub kind: String,
    pub state: String,
    pub error: String,
    pub values: BTreeMap<&'static str, f64>,
}

/// Columns: heading and the metric they show.
const COLUMNS: &[(&str, &str)] = &[
    ("EVENTS", "capagent_job_events_total"),
    ("PACKETS", "capagent_job_packets_total"),
    ("BYTES", "capagent_job_bytes_total"),
    ("CONNS", "capagent_job_connections_total"),
    ("ACTIVE", "capagent_job_active_connections"),
    ("LOST", "capagent_job_lost_events_total"),
    ("ERRORS", "capagent_job_errors_total"),
    ("RESTARTS", "capagent_job_restarts_total"),
    ("RING", "capagent_job_ring_buffer_fill_ratio"),
];

/// The jobs in the samples, in the order they first appear.
pub fn rows(samples: &[Sample]) -> Vec<JobRow> {
    let mut rows: Vec<JobRow> = Vec::new();
    for s in samples {
        let Some(job) = s.label("job") else { continue };
        let i = match rows.iter().position(|r| r.name == job) {
            Some(i) => i,
            None => {
                rows.push(JobRow {
                    name: job.to_string(),
                    kind: s.label("kind").unwrap_or("").to_string(),
                    ..JobRow::default()
                });
                rows.len() - 1
            }
        };
        let row = &mut rows[i];
        if s.name == "capagent_job_state" {
            row.state = s.label("state").unwrap_or("").to_string();
            row.error = s.label("error").unwrap_or("").to_string();
        } else if let Some((_, metric)) = COLUMNS.iter().find(|(_, m)| *m == s.name) {
            row.values.insert(metric, s.value);
        }
    }
    rows
}

/// The table `capagent status` prints.
pub fn render(samples: &[Sample]) -> String {
    let rows = rows(samples);
    let mut table: Vec<Vec<String>> = vec![
        ["JOB", "KIND", "STATE"]
            .iter()
            .chain(COLUMNS.iter().map(|(h, _)| h))
            .map(|s| s.to_string())
            .collect(),
    ];
    for r in &rows {
        let mut line = vec![r.name.clone(), r.kind.clone(), r.state.clone()];
        for (_, metric) in COLUMNS {
            let v = r.values.get(metric).copied().unwrap_or(0.0);
            line.push(if metric.ends_with("_ratio") {
                format!("{:.0}%", v * 100.0)
            } else {
                format!("{v}")
            });
        }
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| {
            table
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &table {
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            if c < 3 {
                let _ = write!(text, "{cell:<w$}  ", w = widths[c]);
            } else {
                let _ = write!(text, "{cell:>w$}  ", w = widths[c]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no jobs)\n");
    }
    for r in rows.iter().filter(|r| !r.error.is_empty()) {
        let _ = writeln!(out, "{}: last error: {}", r.name, r.error);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::promtext::parse;

    #[test]
    fn table_of_jobs() {
        let text = "capagent_daemon_reloads_total 0\n\
            capagent_job_up{job=\"lo\",kind=\"capture\"} 1\n\
            capagent_job_packets_total{job=\"lo\",kind=\"capture\"} 1234\n\
            capagent_job_ring_buffer_fill_ratio{job=\"lo\",kind=\"capture\"} 0.25\n\
            capagent_job_events_total{job=\"socks\",kind=\"proxy socks\"} 7\n\
            capagent_job_state{job=\"lo\",kind=\"capture\",state=\"running\",error=\"\"} 1\n\
            capagent_job_state{job=\"socks\",kind=\"proxy socks\",state=\"retrying\",error=\"cannot listen on 127.0.0.1:1080\"} 1\n";
        let out = render(&parse(text));
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("JOB    KIND         STATE     EVENTS  PACKETS"),
            "{out}"
        );
        assert!(
            lines[1].starts_with("lo     capture      running        0     1234"),
            "{out}"
        );
        assert!(lines[1].ends_with("25%"), "{out}");
        assert!(
            lines[2].starts_with("socks  proxy socks  retrying       7        0"),
            "{out}"
        );
        assert_eq!(
            lines[3],
            "socks: last error: cannot listen on 127.0.0.1:1080"
        );
        let empty = render(&[]);
        assert!(empty.starts_with("JOB  KIND  STATE  EVENTS"), "{empty}");
        assert!(empty.ends_with("RING\n(no jobs)\n"), "{empty}");
    }
}
