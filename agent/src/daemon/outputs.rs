//! The outputs of the daemon's jobs: the same writers as the command line's `-o`/`-w`, into
//! rotating files ([`super::rotate`]), plus JSON lines on stdout and the job's metrics.
//!
//! - [`rotating_lines`]: text (`.log`) or JSON lines (`.jsonl`) of trace and proxy records;
//! - [`rotating_synth`]: trace and proxy records as pcapng (`.pcapng`, synthetic packets); a
//!   new file starts with its own section and interface headers and the streams go on;
//! - [`capture_files`]: captured packets as pcapng (each file closed with its interface
//!   statistics blocks) and/or text lines;
//! - [`StdoutLines`]: JSON lines on stdout (journald), one whole line at a time, tagged with
//!   the job (`"job":"NAME"` first).

use std::{
    io::{self, BufWriter, Write},
    path::Path,
    sync::Arc,
    time::Duration,
};

use super::{
    config::{Record, Rotation},
    rotate::{CountingFile, Rotating, Rotator},
};
use crate::{
    capture::{Iface, pcapng::CaptureWriter, session::OpenOutput, text::TextLines},
    counters::{EventCounter, JobMetrics},
    output::{
        EventWriter, FanOut, Format, PacketWriter, Writer, pcapng::PcapngWriter,
        status::PacketCounter, text::TextConfig,
    },
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

/// How often the kernel's counters are read for the metrics.
const TOTALS_EVERY: Duration = Duration::from_secs(1);

/// A capture job's output: its metrics, and its pcapng and/or text lines in rotating files
/// (a closed pcapng file ends with its interface statistics blocks).
pub fn capture_files(
    output_dir: &Path,
    job: &str,
    record: &[Record],
    rotation: &Rotation,
    metrics: &Arc<JobMetrics>,
) -> io::Result<OpenOutput> {
    let rot = |r: Record| -> io::Result<Option<Rotator>> {
        record
            .contains(&r)
            .then(|| Rotator::new(output_dir, job, r.extension(), rotation.clone()))
            .transpose()
    };
    let (pcap, text) = (rot(Record::Pcapng)?, rot(Record::Text)?);
    let metrics = metrics.clone();
    Ok(Box::new(move |ifaces: &[Iface], snaplen: u32| {
        let mut out: Vec<Box<dyn PacketWriter>> =
            vec![Box::new(PacketCounter::new(metrics, TOTALS_EVERY))];
        if let Some(rot) = pcap {
            let ifaces = ifaces.to_vec();
            out.push(Box::new(Rotating::new(
                rot,
                Box::new(move |_, f| CaptureWriter::new(f, &ifaces, snaplen)),
            )));
        }
        if let Some(rot) = text {
            let ifaces = ifaces.to_vec();
            out.push(Box::new(Rotating::new(
                rot,
                Box::new(move |_, f| {
                    Ok(TextLines::new(BufWriter::with_capacity(BUFFER, f), &ifaces))
                }),
            )));
        }
        Ok(Box::new(FanOut(out)) as Box<dyn PacketWriter>)
    }))
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
