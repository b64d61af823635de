//! One `capagent capture` session: runs the capture, attributes every packet to its owning
//! process ([`owner`]), keeps the packets selected by `--pid`/`--comm` and writes them as
//! pcapng or text lines, flushing periodically; at the end the pcapng statistics blocks and
//! the summary line.
//!
//! A packet whose owner is not in the socket table while a refresh is not allowed yet (rate
//! limit), or that has a socket cookie the fresh table does not know yet, waits in a queue,
//! with every packet after it (the order is kept), until the next refresh; the queue is
//! bounded, past it packets are written with what the table knows.

use std::{
    collections::VecDeque,
    io::{self, BufWriter, StdoutLock, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{
    CaptureError, CaptureOptions, CaptureOutcome, Iface, LinkType, Packet, PacketSink,
    owner::{Owner, Resolution, Resolver},
    pcapng::CaptureWriter,
    text,
};

/// Output and selection of a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// pcapng file (`-` for stdout); text lines on stdout when `None`.
    pub write: Option<PathBuf>,
    /// Keep only the packets of these processes (with `comm`: of either).
    pub pids: Vec<u32>,
    /// Keep only the packets of processes with this name.
    pub comm: Option<String>,
    pub no_summary: bool,
}

impl SessionOptions {
    fn selecting(&self) -> bool {
        !self.pids.is_empty() || self.comm.is_some()
    }

    /// Whether a packet of `owner` is kept.
    pub fn selects(&self, owner: Option<&Owner>) -> bool {
        if !self.selecting() {
            return true;
        }
        owner.is_some_and(|o| self.pids.contains(&o.pid) || self.comm.as_deref() == Some(&o.comm))
    }
}

/// The pcapng comment of a packet.
pub fn comment(owner: Option<&Owner>, cookie: u64) -> String {
    match owner {
        Some(o) => format!("pid={} comm={} cookie={cookie}", o.pid, o.comm),
        None => format!("pid=? (no local socket: forwarded or not yet resolved) cookie={cookie}"),
    }
}

/// The end of a text line.
pub fn text_suffix(owner: Option<&Owner>) -> String {
    match owner {
        Some(o) => format!(" [{}:{}]", o.comm, o.pid),
        None => " [-]".to_string(),
    }
}

enum Out {
    Pcap(CaptureWriter<BufWriter<Box<dyn Write + Send>>>),
    Text(BufWriter<StdoutLock<'static>>),
}

/// A packet copied out of the ring buffer while it waits for its owner.
struct Pending {
    ts_ns: u64,
    cookie: u64,
    ifindex: u32,
    orig_len: u32,
    dir: u8,
    data: Vec<u8>,
}

const MAX_PENDING: usize = 100_000;

struct Sink<'a> {
    opts: &'a SessionOptions,
    ifaces: Vec<Iface>,
    out: Out,
    resolver: Resolver,
    pending: VecDeque<Pending>,
    last_flush: Instant,
    written: u64,
}

impl Sink<'_> {
    fn emit(&mut self, p: &Packet<'_>, ts_ns: u64, owner: Option<&Owner>) -> io::Result<()> {
        tracing::trace!(cookie = p.cookie, ?owner, "packet");
        if !self.opts.selects(owner) {
            return Ok(());
        }
        self.written += 1;
        match &mut self.out {
            Out::Pcap(w) => w.write_packet(p, ts_ns, &comment(owner, p.cookie)),
            Out::Text(w) => {
                let (name, linktype) = self
                    .ifaces
                    .iter()
                    .find(|i| i.ifindex == p.ifindex)
                    .map_or(("?", LinkType::Ethernet), |i| (i.name.as_str(), i.linktype));
                writeln!(
                    w,
                    "{} {}{}",
                    text::clock(ts_ns),
                    text::describe(p, name, linktype),
                    text_suffix(owner)
                )
            }
        }
    }

    /// Writes the queued packets after one refresh of the socket table, when the rate limit
    /// allows it or `force` (at exit).
    fn drain_pending(&mut self, force: bool) -> io::Result<()> {
        if self.pending.is_empty() || !(force || self.resolver.refresh_due()) {
            return Ok(());
        }
        self.resolver.refresh();
        while let Some(q) = self.pending.pop_front() {
            let owner = self.resolver.cached(q.cookie, q.dir, &q.data);
            let p = Packet {
                ts_ns: q.ts_ns,
                cookie: q.cookie,
                ifindex: q.ifindex,
                orig_len: q.orig_len,
                dir: q.dir,
                data: &q.data,
            };
            self.emit(&p, q.ts_ns, owner.as_ref())?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Out::Pcap(w) => w.flush(),
            Out::Text(w) => w.flush(),
        }
    }
}

impl PacketSink for Sink<'_> {
    fn packet(&mut self, p: &Packet<'_>, ts_ns: u64) -> io::Result<()> {
        self.drain_pending(false)?;
        let queue = |s: &mut Self| {
            s.pending.push_back(Pending {
                ts_ns,
                cookie: p.cookie,
                ifindex: p.ifindex,
                orig_len: p.orig_len,
                dir: p.dir,
                data: p.data.to_vec(),
            })
        };
        if self.pending.len() >= MAX_PENDING {
            // Too many waiting: no more waiting for this one.
            let owner = self.resolver.cached(p.cookie, p.dir, p.data);
            return self.emit(p, ts_ns, owner.as_ref());
        }
        if !self.pending.is_empty() {
            queue(self);
            return Ok(());
        }
        match self.resolver.resolve(p.cookie, p.dir, p.data) {
            Resolution::Owner(o) => self.emit(p, ts_ns, Some(&o))?,
            // A packet with a socket cookie comes from a local socket: one the fresh table
            // did not show yet gets a second chance at the next refresh.
            Resolution::Unknown if p.cookie == 0 => self.emit(p, ts_ns, None)?,
            Resolution::Unknown | Resolution::Later => queue(self),
        }
        Ok(())
    }

    fn idle(&mut self) -> io::Result<()> {
        self.drain_pending(false)?;
        // Keep files readable while capturing without a syscall per packet.
        if self.last_flush.elapsed() >= Duration::from_millis(200) {
            self.last_flush = Instant::now();
            self.flush()?;
        }
        Ok(())
    }
}

/// Wall-clock nanoseconds since the epoch, now.
fn now_wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs a whole session: capture, attribution, selection, output, statistics and summary.
pub fn run(opts: &CaptureOptions, sopts: &SessionOptions) -> Result<CaptureOutcome, CaptureError> {
    let ifaces: Vec<Iface> = super::resolve(opts)?;
    let filter = super::compile_filter(opts, &ifaces)?;
    let out = match &sopts.write {
        Some(p) => Out::Pcap(
            CaptureWriter::open(p, &ifaces, opts.snaplen).map_err(|source| CaptureError::Open {
                path: p.clone(),
                source,
            })?,
        ),
        None => Out::Text(BufWriter::new(io::stdout().lock())),
    };
    let mut sink = Sink {
        opts: sopts,
        ifaces: ifaces.clone(),
        out,
        resolver: Resolver::system(),
        pending: VecDeque::new(),
        last_flush: Instant::now(),
        written: 0,
    };
    let outcome = super::run(opts, &ifaces, filter.as_ref(), &mut sink);
    // Whatever was captured is written, even when the capture ended with an error.
    let end = sink
        .drain_pending(true)
        .and_then(|()| sink.flush())
        .map_err(CaptureError::Output);
    let outcome = outcome?;
    end?;
    if let Out::Pcap(w) = &mut sink.out {
        let now = now_wall_ns();
        for t in &outcome.per_iface {
            w.write_stats(t, filter.is_some(), now)
                .map_err(CaptureError::Output)?;
        }
        w.flush().map_err(CaptureError::Output)?;
    }
    if !sopts.no_summary {
        let selected = if sopts.selecting() {
            format!(", {} of them selected", sink.written)
        } else {
            String::new()
        };
        let filtered = if filter.is_some() {
            format!(", {} rejected by the filter", outcome.filtered())
        } else {
            String::new()
        };
        eprintln!(
            "capagent: {} packets captured ({} bytes on the wire){selected}{filtered}, {} dropped (ring buffer full)",
            outcome.packets,
            outcome.bytes,
            outcome.dropped()
        );
    }
    tracing::debug!(refreshes = sink.resolver.refreshes, "socket table");
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_suffixes_and_selection() {
        let curl = Owner {
            pid: 42,
            comm: "curl".into(),
        };
        assert_eq!(comment(Some(&curl), 7), "pid=42 comm=curl cookie=7");
        assert_eq!(
            comment(None, 0),
            "pid=? (no local socket: forwarded or not yet resolved) cookie=0"
        );
        assert_eq!(text_suffix(Some(&curl)), " [curl:42]");
        assert_eq!(text_suffix(None), " [-]");
        let all = SessionOptions::default();
        assert!(all.selects(None) && all.selects(Some(&curl)));
        let by_pid = SessionOptions {
            pids: vec![1, 42],
            ..SessionOptions::default()
        };
        assert!(by_pid.selects(Some(&curl)) && !by_pid.selects(None));
        let by_comm = SessionOptions {
            comm: Some("wget".into()),
            ..SessionOptions::default()
        };
        assert!(!by_comm.selects(Some(&curl)) && !by_comm.selects(None));
    }
}
