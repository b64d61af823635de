//! The outputs of the daemon's jobs: the same writers as the command line's `-o`/`-w`, into
//! rotating files ([`super::rotate`]), plus JSON lines on stdout and the job's metrics.
//!
//! - [`rotating_lines`]: text (`.log`) or JSON lines (`.jsonl`) of trace and proxy records;
//! - [`rotating_synth`]: trace and proxy records as pcapng (`.pcapng`, synthetic packets); a
//!   new file starts with its own section and interface headers and the streams go on;
//! - [`CaptureFiles`]: captured packets as pcapng (each file closed with its interface
//!   statistics blocks) and/or text lines;
//! - [`StdoutLines`]: JSON lines on stdout (journald), one whole line at a time, tagged with
//!   the job (`"job":"NAME"` first).

use std::{
    io::{self, BufWriter, Write},
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use super::{
    config::{Record, Rotation},
    rotate::{CountingFile, Rotating, Rotator},
};
use crate::{
    capture::{
        Iface, IfaceTotals, Packet,
        owner::Owner,
        pcapng::CaptureWriter,
        session::{self, CaptureOutput},
    },
    counters::{EventCounter, JobMetrics},
    output::{EventWriter, Format, Writer, pcapng::PcapngWriter, text::TextConfig},
};

const BUFFER: usize = 256 * 1024;

/// Text or JSON lines in rotating files.
pub fn rotating_lines(rot: Rotator, format: Format, text: TextConfig) -> Rotating<Writer> {
    Rotating::new(
        rot,
        Box::new(move |prev: Option<Writer>, f| {
            if let Some(mut w) = prev {
                w.flush()?;
            }
            Ok(Writer::new(format, Box::new(f), text.clone()))
        }),
    )
}

/// Records as pcapng of synthetic packets, in rotating files: a new file starts with its own
/// section and interface headers and the streams go on.
pub fn rotating_synth(rot: Rotator) -> Rotating<PcapngWriter<BufWriter<CountingFile>>> {
    Rotating::new(
        rot,
        Box::new(|prev: Option<PcapngWriter<_>>, f| {
            let f = BufWriter::with_capacity(BUFFER, f);
            match prev {
                Some(w) => {
                    let (mut old, next) = w.continue_in(f)?;
                    old.flush()?;
                    Ok(next)
                }
                None => PcapngWriter::new(f),
            }
        }),
    )
}

/// Writes JSON lines to stdout, each whole line at once (jobs write from their own threads)
/// with `"job":"NAME"` inserted first.
pub struct StdoutLines {
    prefix: Vec<u8>,
    partial: Vec<u8>,
}

impl StdoutLines {
    pub fn new(job: &str) -> StdoutLines {
        let mut prefix = b"{\"job\":".to_vec();
        prefix.extend_from_slice(serde_json::to_string(job).unwrap_or_default().as_bytes());
        prefix.push(b',');
        StdoutLines {
            prefix,
            partial: Vec::new(),
        }
    }

    /// The line as written: `{"job":"NAME",` then the rest of the object.
    pub fn tag(&self, line: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(line.len() + self.prefix.len());
        match line.strip_prefix(b"{") {
            Some(rest) if rest.first() != Some(&b'}') => {
                out.extend_from_slice(&self.prefix);
                out.extend_from_slice(rest);
            }
            _ => out.extend_from_slice(line),
        }
        out
    }
}

impl Write for StdoutLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.partial.extend_from_slice(buf);
        if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
            let lines: Vec<u8> = self.partial.drain(..=end).collect();
            let mut out = Vec::with_capacity(lines.len() + 64);
            for line in lines.split_inclusive(|&b| b == b'\n') {
                out.extend_from_slice(&self.tag(line));
            }
            let mut stdout = io::stdout().lock();
            stdout.write_all(&out)?;
            stdout.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writers of a job that records events (trace, proxies): its files, stdout, metrics.
pub fn event_writers(
    output_dir: &Path,
    job: &str,
    record: &[Record],
    stdout: bool,
    rotation: &Rotation,
    preview: usize,
    metrics: &Arc<JobMetrics>,
) -> io::Result<Vec<Box<dyn EventWriter + Send>>> {
    let mut out: Vec<Box<dyn EventWriter + Send>> = Vec::new();
    for r in record {
        let rot = Rotator::new(output_dir, job, r.extension(), rotation.clone())?;
        out.push(match r {
            Record::Text => Box::new(rotating_lines(
                rot,
                Format::Text,
                TextConfig {
                    max_preview: if preview == 0 { usize::MAX } else { preview },
                    ..TextConfig::default()
                },
            )),
            Record::Json => Box::new(rotating_lines(rot, Format::Json, TextConfig::default())),
            Record::Pcapng => Box::new(rotating_synth(rot)),
        });
    }
    if stdout {
        let mut w = Writer::new(
            Format::Json,
            Box::new(StdoutLines::new(job)),
            TextConfig::default(),
        );
        w.set_auto_flush(true);
        out.push(Box::new(w));
    }
    out.push(Box::new(EventCounter::new(metrics.clone())));
    Ok(out)
}

/// Wall-clock nanoseconds now.
fn now_ns() -> u64 {
    crate::proxy::record::now_ns()
}

/// How often the kernel's counters are read for the metrics.
const TOTALS_EVERY: Duration = Duration::from_secs(1);

/// A capture job's files: pcapng and/or text lines, rotated; and its metrics.
pub struct CaptureFiles {
    pcap: Option<(Rotator, Option<CaptureWriter<CountingFile>>)>,
    text: Option<(Rotator, Option<BufWriter<CountingFile>>)>,
    ifaces: Vec<Iface>,
    snaplen: u32,
    metrics: Arc<JobMetrics>,
    last_totals: Instant,
}

impl CaptureFiles {
    pub fn new(
        output_dir: &Path,
        job: &str,
        record: &[Record],
        rotation: &Rotation,
        metrics: &Arc<JobMetrics>,
    ) -> io::Result<CaptureFiles> {
        let rot = |r: Record| Rotator::new(output_dir, job, r.extension(), rotation.clone());
        Ok(CaptureFiles {
            pcap: if record.contains(&Record::Pcapng) {
                Some((rot(Record::Pcapng)?, None))
            } else {
                None
            },
            text: if record.contains(&Record::Text) {
                Some((rot(Record::Text)?, None))
            } else {
                None
            },
            ifaces: Vec::new(),
            snaplen: 0,
            metrics: metrics.clone(),
            last_totals: Instant::now(),
        })
    }

    /// Closes the current pcapng file with its statistics blocks.
    fn close_pcap(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        if let Some((rot, w)) = &mut self.pcap
            && let Some(mut w) = w.take()
        {
            let now = now_ns();
            for t in totals {
                w.write_stats(t, filtering, now)?;
            }
            w.into_inner()?;
            rot.closed();
        }
        Ok(())
    }

    fn publish(&mut self, totals: &[IfaceTotals]) {
        self.last_totals = Instant::now();
        let dropped: u64 = totals.iter().map(|t| t.dropped).sum();
        self.metrics.lost_events.store(dropped, Ordering::Relaxed);
    }
}

impl CaptureOutput for CaptureFiles {
    fn begin(&mut self, ifaces: &[Iface], snaplen: u32) -> io::Result<()> {
        self.ifaces = ifaces.to_vec();
        self.snaplen = snaplen;
        Ok(())
    }

    fn packet(
        &mut self,
        p: &Packet<'_>,
        ts_ns: u64,
        iface: Option<&Iface>,
        owner: Option<&Owner>,
    ) -> io::Result<()> {
        self.metrics.packets.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes
            .fetch_add(u64::from(p.orig_len), Ordering::Relaxed);
        if let Some((rot, w)) = &mut self.pcap {
            let w = match w {
                Some(w) => w,
                None => {
                    let f = rot.open_next()?;
                    rot.retain();
                    w.insert(CaptureWriter::new(f, &self.ifaces, self.snaplen)?)
                }
            };
            w.write_packet(p, ts_ns, &session::comment(owner, p.cookie))?;
        }
        if let Some((rot, w)) = &mut self.text {
            let w = match w {
                Some(w) => w,
                None => {
                    let f = rot.open_next()?;
                    rot.retain();
                    w.insert(BufWriter::with_capacity(BUFFER, f))
                }
            };
            writeln!(w, "{}", session::text_line(p, ts_ns, iface, owner))?;
        }
        Ok(())
    }

    fn tick(&mut self) -> io::Result<()> {
        if let Some((_, Some(w))) = &mut self.pcap {
            w.flush()?;
        }
        if let Some((rot, w)) = &mut self.text
            && let Some(f) = w
        {
            f.flush()?;
            if rot.due() {
                *w = None;
                rot.closed();
            }
        }
        Ok(())
    }

    fn wants_totals(&self) -> bool {
        self.last_totals.elapsed() >= TOTALS_EVERY
            || self
                .pcap
                .as_ref()
                .is_some_and(|(rot, w)| w.is_some() && rot.due())
    }

    fn totals(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        self.publish(totals);
        if self.pcap.as_ref().is_some_and(|(rot, _)| rot.due()) {
            self.close_pcap(totals, filtering)?;
        }
        Ok(())
    }

    fn finish(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        self.publish(totals);
        self.close_pcap(totals, filtering)?;
        if let Some((rot, w)) = &mut self.text
            && let Some(mut f) = w.take()
        {
            f.flush()?;
            rot.closed();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::assemble::lost_event;

    #[test]
    fn stdout_lines_are_tagged() {
        let s = StdoutLines::new("socks\"1");
        assert_eq!(
            s.tag(b"{\"type\":\"lost\"}\n"),
            b"{\"job\":\"socks\\\"1\",\"type\":\"lost\"}\n"
        );
        assert_eq!(s.tag(b"{}\n"), b"{}\n");
    }

    #[test]
    fn lines_rotate_at_record_boundaries() {
        let dir = std::env::temp_dir().join(format!("capagent-lines-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rotation = Rotation {
            max_bytes: 100,
            max_age: None,
            keep: 0,
            keep_age: None,
        };
        let rot = Rotator::new(&dir, "j", "jsonl", rotation).unwrap();
        let mut w = rotating_lines(rot, Format::Json, TextConfig::default());
        for i in 0..10 {
            w.write_event(&lost_event(i, 1, 1)).unwrap();
            // Files are measured as they are written out.
            w.flush().unwrap();
        }
        drop(w);
        let mut files: Vec<_> = std::fs::read_dir(dir.join("j"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        // Each lost record is 87 bytes: two per file.
        assert_eq!(files.len(), 5, "{files:?}");
        let mut all = String::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert_eq!(text.lines().count(), 2, "{text}");
            all.push_str(&text);
        }
        for (i, line) in all.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["ts_ns"], i as u64);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
