//! The two kinds of sinks every mode writes into, and the wrappers that compose them.
//!
//! - [`EventWriter`]: `model::Event`s (trace, the proxies, intercept, dns): text, JSON lines,
//!   pcapng of synthetic packets, the status line's counter, a daemon job's rotating files;
//! - [`PacketWriter`]: captured packets (`capagent capture`): pcapng, text lines, a daemon
//!   job's rotating files and metrics.
//!
//! A session hands a sink its records and calls [`EventWriter::tick`] (or
//! [`PacketWriter::tick`]) periodically, records or not; what is done then is the sink's
//! business. The wrappers are sinks around sinks, like ptcpdump's writers:
//!
//! - [`FanOut`]: every record to each of several sinks;
//! - [`FlushEvery`]: flushes its sink at a tick at most every so often (files stay current
//!   for `tail -f` without a write per record);
//! - the daemon's rotation (`daemon::rotate::Rotating`): a new file when the current one is
//!   big or old enough.
//! - [`SecretsFirst`]: the TLS key log lines that arrived since the last record (a key log's
//!   tap, `mitm::keylog`), handed to its sink as secrets before the next record.
//!
//! ```text
//! trace:          FlushEvery(FanOut[Writer (text|json), PcapngWriter, EventCounter])
//! trace job:      FlushEvery(FanOut[Rotating(Writer), Rotating(PcapngWriter), EventCounter])
//! capture:        FlushEvery(FanOut[PacketCounter, CaptureWriter]) or FlushEvery(TextLines)
//! capture job:    FlushEvery(FanOut[PacketCounter, Rotating(CaptureWriter), Rotating(TextLines)])
//! ```

use std::{
    io,
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::model::{
    Event,
    packet::{IfaceTotals, Owner, Packet},
};

/// How often files are flushed while a session runs (trace, capture, the daemon's jobs).
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Something events are written to.
pub trait EventWriter {
    fn write_event(&mut self, ev: &Event) -> io::Result<()>;
    /// Pushes buffered output to the file or stdout.
    fn flush(&mut self) -> io::Result<()>;
    /// Called periodically while a session runs (every 100 ms or so), events or not: timed
    /// work such as [`FlushEvery`]'s.
    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// NSS key log lines of TLS sessions whose packets follow: pcapng writes them in a
    /// Decryption Secrets Block; the sinks without a place for them ignore them.
    fn write_tls_secrets(&mut self, _key_log: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

impl<W: EventWriter + ?Sized> EventWriter for Box<W> {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        (**self).write_event(ev)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
    fn tick(&mut self) -> io::Result<()> {
        (**self).tick()
    }
    fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        (**self).write_tls_secrets(key_log)
    }
}

impl<W: EventWriter + ?Sized> EventWriter for &mut W {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        (**self).write_event(ev)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
    fn tick(&mut self) -> io::Result<()> {
        (**self).tick()
    }
    fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        (**self).write_tls_secrets(key_log)
    }
}

/// Hands every record to each sink, in order (the first error ends the round).
pub struct FanOut<W = Box<dyn EventWriter>>(pub Vec<W>);

impl<W: EventWriter> EventWriter for FanOut<W> {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        for w in &mut self.0 {
            w.write_event(ev)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        for w in &mut self.0 {
            w.flush()?;
        }
        Ok(())
    }

    fn tick(&mut self) -> io::Result<()> {
        for w in &mut self.0 {
            w.tick()?;
        }
        Ok(())
    }

    fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        for w in &mut self.0 {
            w.write_tls_secrets(key_log)?;
        }
        Ok(())
    }
}

/// Flushes its sink at a tick when something was written since the last flush and that
/// flush is at least `every` old; explicit flushes go through.
pub struct FlushEvery<W> {
    inner: W,
    every: Duration,
    last: Instant,
    dirty: bool,
}

impl<W> FlushEvery<W> {
    pub fn new(inner: W, every: Duration) -> FlushEvery<W> {
        FlushEvery {
            inner,
            every,
            last: Instant::now(),
            dirty: false,
        }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    /// True when a tick now would flush.
    fn due(&self) -> bool {
        self.dirty && self.last.elapsed() >= self.every
    }

    fn flushed(&mut self) {
        self.dirty = false;
        self.last = Instant::now();
    }
}

impl<W: EventWriter> EventWriter for FlushEvery<W> {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        self.dirty = true;
        self.inner.write_event(ev)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushed();
        self.inner.flush()
    }

    fn tick(&mut self) -> io::Result<()> {
        self.inner.tick()?;
        if self.due() {
            EventWriter::flush(self)?;
        }
        Ok(())
    }
    fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        self.dirty = true;
        self.inner.write_tls_secrets(key_log)
    }
}

/// Hands its sink the TLS key log lines that arrived on `keys` (e.g. a
/// `mitm::keylog::KeyLogFile::tap`) as secrets ([`EventWriter::write_tls_secrets`]: a pcapng
/// Decryption Secrets Block) before the next record, and at flushes and ticks: keys logged
/// before a record was made come before it in the file.
///
/// Wireshark needs a session's keys before its packets. A TLS endpoint logs its handshake
/// keys before it sends its first encrypted flight, but a client only once it has *read*
/// the server's: a recorder of the client side must record those raw bytes after the TLS
/// library has processed them, or they come before their keys.
pub struct SecretsFirst<W> {
    inner: W,
    keys: mpsc::Receiver<String>,
    lines: String,
}

impl<W> SecretsFirst<W> {
    pub fn new(inner: W, keys: mpsc::Receiver<String>) -> SecretsFirst<W> {
        SecretsFirst {
            inner,
            keys,
            lines: String::new(),
        }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Hands the lines that arrived since the last call, if any, to `write` (the sink's
    /// `write_tls_secrets`).
    fn pass_keys(&mut self, write: impl FnOnce(&mut W, &[u8]) -> io::Result<()>) -> io::Result<()> {
        self.lines.clear();
        for l in self.keys.try_iter() {
            self.lines.push_str(&l);
        }
        if self.lines.is_empty() {
            return Ok(());
        }
        write(&mut self.inner, self.lines.as_bytes())
    }
}

impl<W: EventWriter> EventWriter for SecretsFirst<W> {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        self.pass_keys(EventWriter::write_tls_secrets)?;
        self.inner.write_event(ev)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.pass_keys(EventWriter::write_tls_secrets)?;
        self.inner.flush()
    }
    fn tick(&mut self) -> io::Result<()> {
        self.pass_keys(EventWriter::write_tls_secrets)?;
        self.inner.tick()
    }
    fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        self.inner.write_tls_secrets(key_log)
    }
}

impl<W: PacketWriter> PacketWriter for SecretsFirst<W> {
    fn write_packet(
        &mut self,
        p: &Packet<'_>,
        ts_ns: u64,
        owner: Option<&Owner>,
    ) -> io::Result<()> {
        self.pass_keys(PacketWriter::write_tls_secrets)?;
        self.inner.write_packet(p, ts_ns, owner)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.pass_keys(PacketWriter::write_tls_secrets)?;
        self.inner.flush()
    }
    fn tick(&mut self) -> io::Result<()> {
        self.pass_keys(PacketWriter::write_tls_secrets)?;
        self.inner.tick()
    }
    fn wants_totals(&self) -> bool {
        self.inner.wants_totals()
    }
    fn totals(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        self.inner.totals(totals, filtering)
    }
    fn finish(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        self.pass_keys(PacketWriter::write_tls_secrets)?;
        self.inner.finish(totals, filtering)
    }
    fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        self.inner.write_tls_secrets(key_log)
    }
}

/// Something captured packets are written to.
pub trait PacketWriter {
    /// One packet, `ts_ns` its wall-clock time, attributed to `owner` when a stage before
    /// knew it (the capture's attribution, `capture::session`; a capture session itself
    /// hands `None` over, the kernel's owner being in the packet).
    fn write_packet(&mut self, p: &Packet<'_>, ts_ns: u64, owner: Option<&Owner>)
    -> io::Result<()>;
    /// Pushes buffered output to the file or stdout.
    fn flush(&mut self) -> io::Result<()>;
    /// Called periodically while capturing (after every drain of the ring buffer), packets
    /// or not: timed work such as [`FlushEvery`]'s.
    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Asked after [`PacketWriter::tick`]: whether the session should read the kernel's
    /// per-interface counters now and hand them to [`PacketWriter::totals`] (to close a file
    /// with its statistics, or to publish them).
    fn wants_totals(&self) -> bool {
        false
    }
    /// The kernel's counters since the start, per interface; `filtering`: a filter
    /// expression is in use.
    fn totals(&mut self, _totals: &[IfaceTotals], _filtering: bool) -> io::Result<()> {
        Ok(())
    }
    /// At the end, with the final counters: writes what ends the output (pcapng's
    /// statistics) and flushes.
    fn finish(&mut self, _totals: &[IfaceTotals], _filtering: bool) -> io::Result<()> {
        self.flush()
    }
    /// NSS key log lines of TLS sessions whose packets follow: pcapng writes them in a
    /// Decryption Secrets Block; the sinks without a place for them ignore them.
    fn write_tls_secrets(&mut self, _key_log: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

impl<W: PacketWriter + ?Sized> PacketWriter for Box<W> {
    fn write_packet(
        &mut self,
        p: &Packet<'_>,
        ts_ns: u64,
        owner: Option<&Owner>,
    ) -> io::Result<()> {
        (**self).write_packet(p, ts_ns, owner)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
    fn tick(&mut self) -> io::Result<()> {
        (**self).tick()
    }
    fn wants_totals(&self) -> bool {
        (**self).wants_totals()
    }
    fn totals(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        (**self).totals(totals, filtering)
    }
    fn finish(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        (**self).finish(totals, filtering)
    }
    fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        (**self).write_tls_secrets(key_log)
    }
}

impl<W: PacketWriter> PacketWriter for FanOut<W> {
    fn write_packet(
        &mut self,
        p: &Packet<'_>,
        ts_ns: u64,
        owner: Option<&Owner>,
    ) -> io::Result<()> {
        for w in &mut self.0 {
            w.write_packet(p, ts_ns, owner)?;
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        for w in &mut self.0 {
            w.flush()?;
        }
        Ok(())
    }
    fn tick(&mut self) -> io::Result<()> {
        for w in &mut self.0 {
            w.tick()?;
        }
        Ok(())
    }
    fn wants_totals(&self) -> bool {
        self.0.iter().any(PacketWriter::wants_totals)
    }
    fn totals(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        for w in &mut self.0 {
            w.totals(totals, filtering)?;
        }
        Ok(())
    }
    fn finish(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        for w in &mut self.0 {
            w.finish(totals, filtering)?;
        }
        Ok(())
    }
    fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        for w in &mut self.0 {
            w.write_tls_secrets(key_log)?;
        }
        Ok(())
    }
}

impl<W: PacketWriter> PacketWriter for FlushEvery<W> {
    fn write_packet(
        &mut self,
        p: &Packet<'_>,
        ts_ns: u64,
        owner: Option<&Owner>,
    ) -> io::Result<()> {
        self.dirty = true;
        self.inner.write_packet(p, ts_ns, owner)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flushed();
        self.inner.flush()
    }
    fn tick(&mut self) -> io::Result<()> {
        self.inner.tick()?;
        if self.due() {
            PacketWriter::flush(self)?;
        }
        Ok(())
    }
    fn wants_totals(&self) -> bool {
        self.inner.wants_totals()
    }
    fn totals(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        self.inner.totals(totals, filtering)
    }
    fn finish(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        self.flushed();
        self.inner.finish(totals, filtering)
    }
    fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        self.dirty = true;
        self.inner.write_tls_secrets(key_log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::assemble::lost_event;

    /// Counts what reaches it.
    #[derive(Default)]
    struct Count {
        events: usize,
        flushes: usize,
        ticks: usize,
    }

    impl EventWriter for Count {
        fn write_event(&mut self, _: &Event) -> io::Result<()> {
            self.events += 1;
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
        fn tick(&mut self) -> io::Result<()> {
            self.ticks += 1;
            Ok(())
        }
    }

    #[test]
    fn flush_every_flushes_at_ticks_after_writes_only() {
        let mut w = FlushEvery::new(Count::default(), Duration::ZERO);
        w.tick().unwrap();
        assert_eq!((w.inner.flushes, w.inner.ticks), (0, 1), "nothing written");
        w.write_event(&lost_event(0, 1, 1)).unwrap();
        assert_eq!(w.inner.flushes, 0, "a write does not flush");
        w.tick().unwrap();
        w.tick().unwrap();
        assert_eq!((w.inner.events, w.inner.flushes, w.inner.ticks), (1, 1, 3));
        // Not before `every` has passed since the last flush.
        let mut w = FlushEvery::new(Count::default(), Duration::from_secs(3600));
        w.write_event(&lost_event(0, 1, 1)).unwrap();
        w.tick().unwrap();
        assert_eq!(w.inner.flushes, 0);
        w.flush().unwrap();
        assert_eq!(w.into_inner().flushes, 1);
    }

    /// What reaches it, in order.
    #[derive(Default)]
    struct Log(Vec<String>);

    impl EventWriter for Log {
        fn write_event(&mut self, ev: &Event) -> io::Result<()> {
            self.0.push(format!("event {}", ev.ts_ns));
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.push("flush".into());
            Ok(())
        }
        fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
            self.0
                .push(format!("secrets {}", String::from_utf8_lossy(key_log)));
            Ok(())
        }
    }

    #[test]
    fn secrets_first_puts_the_keys_that_arrived_before_the_next_record() {
        let (tx, rx) = mpsc::channel();
        let mut w = SecretsFirst::new(Log::default(), rx);
        w.write_event(&lost_event(1, 1, 1)).unwrap();
        tx.send("A 01 02\n".to_string()).unwrap();
        tx.send("B 01 03\n".to_string()).unwrap();
        w.write_event(&lost_event(2, 1, 1)).unwrap();
        w.write_event(&lost_event(3, 1, 1)).unwrap();
        tx.send("C 04 05\n".to_string()).unwrap();
        w.flush().unwrap();
        drop(tx);
        w.write_event(&lost_event(4, 1, 1)).unwrap();
        assert_eq!(
            w.into_inner().0,
            [
                "event 1",
                "secrets A 01 02\nB 01 03\n",
                "event 2",
                "event 3",
                "secrets C 04 05\n",
                "flush",
                "event 4",
            ]
        );
    }

    #[test]
    fn fan_out_reaches_every_sink() {
        let (mut a, mut b) = (Count::default(), Count::default());
        let mut f = FanOut(vec![&mut a as &mut dyn EventWriter, &mut b]);
        f.write_event(&lost_event(0, 1, 1)).unwrap();
        f.tick().unwrap();
        f.flush().unwrap();
        drop(f);
        for c in [a, b] {
            assert_eq!((c.events, c.flushes, c.ticks), (1, 1, 1));
        }
    }
}
