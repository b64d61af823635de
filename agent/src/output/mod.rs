//! Writers for `model::Event`: text, JSON lines.
//!
//! [`Writer::open`] builds the writer the command line asks for (format, file or stdout);
//! output is buffered and reaches the file or terminal at [`EventWriter::flush`] (and when the
//! buffer fills). On a terminal every event is flushed at once so tracing is live.

pub mod escape;
pub mod json;
pub mod text;

use std::fs::OpenOptions;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use crate::cli::Format;
use crate::model::Event;
pub use json::JsonWriter;
pub use text::{TextConfig, TextWriter};

/// Something events can be written to.
pub trait EventWriter {
    fn write_event(&mut self, ev: &Event) -> io::Result<()>;
    /// Pushes buffered output to the file or stdout.
    fn flush(&mut self) -> io::Result<()>;
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
