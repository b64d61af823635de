//! Writers for `model::Event`: text, JSON lines; the sink traits and their wrappers
//! ([`sink`]).
//!
//! [`Writer::open`] builds the writer the command line asks for (format, file or stdout);
//! output is buffered and reaches the file or terminal at [`EventWriter::flush`] (and when the
//! buffer fills). On a terminal every event is flushed at once so tracing is live.

pub mod b64;
pub mod escape;
pub mod json;
pub mod num;
pub mod pcapng;
pub mod sink;
pub mod status;
pub mod text;

use std::fs::OpenOptions;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::model::Event;
pub use json::JsonWriter;
pub use sink::{EventWriter, FLUSH_EVERY, FanOut, FlushEvery, PacketWriter, SecretsFirst};
pub use text::{TextConfig, TextWriter};

/// The format of the records (`--format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// strace-like lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether records go to stdout: text/JSON without `-o FILE`, or pcapng with `-w -`. A
/// `-- CMD` then writes its own stdout to stderr (see [`crate::process::ChildStdout`]),
/// so that the records stay parseable.
pub fn records_on_stdout(output: Option<&Path>, write: Option<&Path>) -> bool {
    output.is_none() || write.is_some_and(|p| p.as_os_str() == "-")
}

impl<W: Write> EventWriter for TextWriter<W> {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        TextWriter::write_event(self, ev)
    }
    fn flush(&mut self) -> io::Result<()> {
        TextWriter::flush(self)
    }
}

impl<W: Write> EventWriter for JsonWriter<W> {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        JsonWriter::write_event(self, ev)
    }
    fn flush(&mut self) -> io::Result<()> {
        JsonWriter::flush(self)
    }
}

/// Buffer size of file and stdout output.
const BUFFER: usize = 64 * 1024;

type Sink = BufWriter<Box<dyn Write + Send>>;

enum Inner {
    Text(TextWriter<Sink>),
    Json(JsonWriter<Sink>),
}

/// The writer of `capagent trace`: the chosen format into a buffered file or stdout.
pub struct Writer {
    inner: Inner,
    /// Flush after every event (interactive stdout).
    auto_flush: bool,
}

impl Writer {
    /// Writes `format` to `path` (created or truncated; mode 0600 when created, since payloads
    /// may hold secrets) or, without a path, to stdout. `text` applies to the text format.
    pub fn open(format: Format, path: Option<&Path>, text: TextConfig) -> io::Result<Writer> {
        match path {
            Some(p) => {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(p)?;
                Ok(Writer::new(format, Box::new(file), text))
            }
            None => {
                let stdout = io::stdout();
                let tty = stdout.is_terminal();
                let mut w = Writer::new(format, Box::new(stdout), text);
                w.auto_flush = tty;
                Ok(w)
            }
        }
    }

    /// Writes `format` into `out`, buffered.
    pub fn new(format: Format, out: Box<dyn Write + Send>, text: TextConfig) -> Writer {
        let sink = BufWriter::with_capacity(BUFFER, out);
        let inner = match format {
            Format::Text => Inner::Text(TextWriter::new(sink, text)),
            Format::Json => Inner::Json(JsonWriter::new(sink)),
        };
        Writer {
            inner,
            auto_flush: false,
        }
    }

    /// Flush after every event (default: only on a terminal).
    pub fn set_auto_flush(&mut self, on: bool) {
        self.auto_flush = on;
    }
}

impl EventWriter for Writer {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        match &mut self.inner {
            Inner::Text(w) => w.write_event(ev)?,
            Inner::Json(w) => w.write_event(ev)?,
        }
        if self.auto_flush {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Text(w) => w.flush(),
            Inner::Json(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::assemble::lost_event;
    use std::sync::{Arc, Mutex};

    /// A `Write` whose bytes the test can read while the writer owns it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn buffered_until_flush() {
        let out = Shared::default();
        let cfg = TextConfig {
            timestamps: false,
            ..TextConfig::default()
        };
        let mut w = Writer::new(Format::Text, Box::new(out.clone()), cfg);
        w.write_event(&lost_event(0, 1, 2)).unwrap();
        assert_eq!(out.text(), "");
        w.flush().unwrap();
        assert_eq!(
            out.text(),
            "--- lost 1 events (2 bytes): ring buffer full ---\n"
        );
    }

    #[test]
    fn auto_flush() {
        let out = Shared::default();
        let mut w = Writer::new(Format::Json, Box::new(out.clone()), TextConfig::default());
        w.set_auto_flush(true);
        w.write_event(&lost_event(0, 1, 2)).unwrap();
        assert_eq!(
            out.text(),
            "{\"type\":\"lost\",\"ts\":\"1970-01-01T00:00:00.000000000Z\",\"ts_ns\":0,\"events\":1,\"bytes\":2}\n"
        );
    }

    #[test]
    fn to_file() {
        let dir = std::env::temp_dir().join(format!("capagent-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.jsonl");
        let mut w = Writer::open(Format::Json, Some(&path), TextConfig::default()).unwrap();
        w.write_event(&lost_event(0, 5, 6)).unwrap();
        w.flush().unwrap();
        drop(w);
        let got = std::fs::read_to_string(&path).unwrap();
        assert!(got.starts_with("{\"type\":\"lost\""), "{got}");
        assert!(got.ends_with("\"events\":5,\"bytes\":6}\n"), "{got}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Timing helpers: `cargo test --release -p capagent --lib -- --ignored --nocapture bench_`.
#[cfg(test)]
mod bench {
    use super::*;
    use crate::model::{Detail, Direction, Event, SocketMeta, Task, Transport};
    use bytes::Bytes;
    use std::time::Instant;

    fn data_event(payload: Bytes) -> Event {
        Event {
            ts_ns: 1_700_000_000_123_456_789,
            task: Task {
                pid: 4242,
                tid: 4242,
                comm: "rr".into(),
            },
            call: crate::model::Call::Syscall(agent_common::sys::WRITE),
            fd: 3,
            ret: payload.len() as i64,
            sock: Some(SocketMeta {
                sk: 0xffff_8881_0203_0400,
                ino: 1,
                transport: Transport::Tcp,
                local: Some(
                    "127.0.0.1:40112"
                        .parse()
                        .map(crate::model::Endpoint::Inet)
                        .unwrap(),
                ),
                remote: Some(
                    "127.0.0.1:9160"
                        .parse()
                        .map(crate::model::Endpoint::Inet)
                        .unwrap(),
                ),
            }),
            detail: Detail::Data {
                dir: Direction::Send,
                total: payload.len() as u64,
                payload,
                truncated: false,
                addr: None,
                msg_index: 0,
            },
            tls_ciphertext: false,
            tls_eof: false,
            tls_plaintext: false,
            unfinished: false,
            stack: None,
        }
    }

    /// The rr bulk pattern (byte i is i as u8) and HTTP-ish text.
    fn payloads(len: usize) -> [(&'static str, Bytes); 2] {
        let pattern: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let text: Vec<u8> = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect();
        [("pattern", pattern.into()), ("text", text.into())]
    }

    fn time(name: &str, format: Format, ev: &Event, iters: usize) {
        let mut w = Writer::new(format, Box::new(io::sink()), TextConfig::default());
        for _ in 0..iters.min(100) {
            w.write_event(ev).unwrap();
        }
        let payload = match &ev.detail {
            Detail::Data { payload, .. } => payload.len(),
            _ => 0,
        };
        let start = Instant::now();
        for i in 0..iters {
            w.write_event(ev).unwrap();
            if i % 4096 == 0 {
                w.flush().unwrap();
            }
        }
        w.flush().unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:>24} {format:?}: {:8.3} us/event  {:8.1} MB/s payload",
            secs * 1e6 / iters as f64,
            (payload * iters) as f64 / secs / 1e6
        );
    }

    #[test]
    #[ignore]
    fn bench_writers() {
        for format in [Format::Json, Format::Text] {
            for (what, p) in payloads(64 * 1024) {
                time(&format!("64 KiB {what}"), format, &data_event(p), 4000);
            }
            for (what, p) in payloads(64) {
                time(&format!("64 B {what}"), format, &data_event(p), 500_000);
            }
        }
    }
}

#[cfg(test)]
mod bench_parts {
    use base64::Engine as _;
    use std::time::Instant;

    #[test]
    #[ignore]
    fn bench_parts() {
        let pattern: Vec<u8> = (0..65536).map(|i| i as u8).collect();
        let text: Vec<u8> = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n"
            .iter()
            .copied()
            .cycle()
            .take(65536)
            .collect();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        for (name, p) in [("pattern", &pattern), ("text", &text), ("random", &random)] {
            let mut out = Vec::new();
            let n = 5000;
            let t = Instant::now();
            for _ in 0..n {
                out.clear();
                super::escape::escape_json_into(&mut out, p);
            }
            let e = t.elapsed().as_secs_f64();
            println!(
                "escape_json {name}: {:.1} MB/s in",
                (p.len() * n) as f64 / e / 1e6
            );
            let t = Instant::now();
            for _ in 0..n {
                out.clear();
                super::escape::escape_json_bytewise(&mut out, p);
            }
            let e = t.elapsed().as_secs_f64();
            println!(
                "escape_json bytewise {name}: {:.1} MB/s in",
                (p.len() * n) as f64 / e / 1e6
            );
            let t = Instant::now();
            for _ in 0..n {
                out.clear();
                out.resize(base64::encoded_len(p.len(), true).unwrap(), 0);
                base64::engine::general_purpose::STANDARD
                    .encode_slice(p, &mut out)
                    .unwrap();
            }
            let e = t.elapsed().as_secs_f64();
            println!(
                "base64 {name}: {:.1} MB/s in",
                (p.len() * n) as f64 / e / 1e6
            );
            let t = Instant::now();
            for _ in 0..n {
                base64::engine::general_purpose::STANDARD
                    .encode_slice(p, &mut out)
                    .unwrap();
            }
            let e = t.elapsed().as_secs_f64();
            println!(
                "base64 no memset {name}: {:.1} MB/s in",
                (p.len() * n) as f64 / e / 1e6
            );
            let t = Instant::now();
            for _ in 0..n {
                out.clear();
                super::b64::push_base64(&mut out, p);
            }
            let e = t.elapsed().as_secs_f64();
            println!(
                "push_base64 {name}: {:.1} MB/s in",
                (p.len() * n) as f64 / e / 1e6
            );
        }
    }
}
