//! One `capagent capture` session: runs the capture, attributes every packet to its owning
//! process ([`owner`]), keeps the packets selected by `--pid`/`--comm` and writes them to a
//! [`PacketWriter`] (pcapng or text lines, or the daemon's files) wrapped in a
//! [`FlushEvery`]; at the end the pcapng statistics blocks and the summary line.
//!
//! A packet whose owner is not in the socket table while a refresh is not allowed yet (rate
//! limit), or that has a socket cookie the fresh table does not know yet, waits in a queue,
//! with every packet after it (the order is kept), until the next refresh; the queue is
//! bounded, past it packets are written with what the table knows.

use std::{
    collections::VecDeque,
    io::{self, BufWriter},
    path::PathBuf,
    sync::Arc,
};

use super::{
    CaptureError, CaptureOptions, CaptureOutcome, Iface, IfaceTotals, LinkType, Packet, Selection,
    comm_str,
    owner::{FiveTuple, Owner, Resolution, Resolver, five_tuple_of},
    pcapng::CaptureWriter,
    text::TextLines,
};
use crate::{
    control::Control,
    counters::JobMetrics,
    mitm::keylog::TlsKeylogError,
    output::{
        FLUSH_EVERY, FanOut, FlushEvery, PacketWriter,
        status::{self, PacketCounter, StatusLine},
    },
    process::{ChildStdout, HeldChild},
};

/// Output of a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// pcapng file (`-` for stdout); text lines on stdout when `None`.
    pub write: Option<PathBuf>,
    pub no_summary: bool,
    /// `-- CMD`: start it (held until the capture is live), select its packets and those of
    /// its children, and stop when it exits.
    pub command: Vec<String>,
    /// `--tls-keylog FILE`: its key log lines go into the pcapng file at the end.
    pub tls_keylog: Option<PathBuf>,
}

/// The userspace side of a [`Selection`], for the packets whose owner the kernel did not
/// know (it selects the others itself): by pid, by name, or as a descendant of a selected
/// pid (from /proc, remembered).
pub struct Selector {
    sel: Selection,
    descendants: std::collections::HashMap<u32, bool>,
}

impl Selector {
    pub fn new(sel: Selection) -> Selector {
        Selector {
            sel,
            descendants: std::collections::HashMap::new(),
        }
    }

    /// Whether a packet of `owner` is kept.
    pub fn selects(&mut self, owner: Option<&Owner>) -> bool {
        if !self.sel.is_active() {
            return true;
        }
        let Some(o) = owner else { return false };
        if self.sel.pids.contains(&o.pid) || self.sel.comm.as_deref() == Some(&o.comm) {
            return true;
        }
        if !self.sel.follow_forks {
            return false;
        }
        if let Some(&d) = self.descendants.get(&o.pid) {
            return d;
        }
        let d = descends_from(o.pid, &self.sel.pids);
        self.descendants.insert(o.pid, d);
        d
    }
}

/// True when one of `pid`'s ancestors (from /proc/PID/stat) is in `roots`.
fn descends_from(pid: u32, roots: &[u32]) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            return false;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            return false;
        };
        if roots.contains(&ppid) {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        p = ppid;
    }
    false
}

/// Makes the output of a session instead of the command line's pcapng file or stdout (the
/// daemon's rotating files), once the captured interfaces and the snap length are known.
pub type OpenOutput = Box<dyn FnOnce(&[Iface], u32) -> io::Result<Box<dyn PacketWriter>>>;

/// A packet copied out of the ring buffer while it waits for its owner.
struct Pending {
    ts_ns: u64,
    cookie: u64,
    ifindex: u32,
    orig_len: u32,
    dir: u8,
    /// The owner the kernel gave it.
    kernel_owner: Option<Owner>,
    data: Vec<u8>,
}

const MAX_PENDING: usize = 100_000;

/// A connection: protocol and its two ends. Without a selection, packets are attributed to
/// their sender where the kernel can tell (on loopback both ends are local), so the key
/// keeps the direction; with one, both directions of a selected connection are kept.
type FlowKey = (u8, std::net::SocketAddr, std::net::SocketAddr);

fn flow_key(t: &FiveTuple, directed: bool) -> FlowKey {
    if directed || t.src <= t.dst {
        (t.proto, t.src, t.dst)
    } else {
        (t.proto, t.dst, t.src)
    }
}

const MAX_FLOWS: usize = 65536;

struct Sink {
    selector: Selector,
    /// The owner the kernel gave the last packet of each connection: packets of the same
    /// connection the kernel finds no owner for (after close, in TIME_WAIT, a delivery to a
    /// socket not accepted yet) get it too.
    flows: std::collections::HashMap<FlowKey, Owner>,
    ifaces: Vec<Iface>,
    out: FlushEvery<Box<dyn PacketWriter>>,
    resolver: Resolver,
    pending: VecDeque<Pending>,
    /// The owner the kernel gave the last packet, as it gave it and made into an [`Owner`]
    /// (reused while the next packets have the same: no allocation per packet).
    kernel_owner: Option<(u32, [u8; agent_common::TASK_COMM_LEN], Owner)>,
    /// The connection of the last packet whose owner [`Sink::remember_flow`] stored, and
    /// that owner: the packets that follow with the same skip the map.
    remembered: Option<(FlowKey, Owner)>,
    written: u64,
    /// The counters of the status line, when one is shown (a [`PacketCounter`] in `out`
    /// counts into them).
    status: Option<Arc<JobMetrics>>,
    /// The status line, drawn from the first [`PacketWriter::tick`] on (after the start
    /// line).
    status_line: Option<StatusLine>,
}

impl Sink {
    /// Writes a packet; `by_kernel`: the owner comes from the kernel, which already applied
    /// the selection.
    fn emit(
        &mut self,
        p: &Packet<'_>,
        ts_ns: u64,
        owner: Option<&Owner>,
        by_kernel: bool,
    ) -> io::Result<()> {
        tracing::trace!(cookie = p.cookie, ?owner, by_kernel, "packet");
        if !by_kernel && !self.selector.selects(owner) {
            return Ok(());
        }
        self.written += 1;
        self.out.write_packet(p, ts_ns, owner)
    }

    /// Writes the queued packets after one refresh of the socket table, when the rate limit
    /// allows it or `force` (at exit).
    fn drain_pending(&mut self, force: bool) -> io::Result<()> {
        if self.pending.is_empty() || !(force || self.resolver.refresh_due()) {
            return Ok(());
        }
        self.resolver.refresh();
        while let Some(q) = self.pending.pop_front() {
            let by_kernel = q.kernel_owner.is_some();
            let owner = match q.kernel_owner {
                Some(o) => Some(o),
                None => self.flow_owner(q.ifindex, &q.data).or_else(|| {
                    let raw = self.is_raw(q.ifindex);
                    self.resolver.cached(q.cookie, q.dir, &q.data, raw)
                }),
            };
            let p = Packet {
                ts_ns: q.ts_ns,
                cookie: q.cookie,
                ifindex: q.ifindex,
                orig_len: q.orig_len,
                dir: q.dir,
                ino: 0,
                owner: None,
                data: &q.data,
            };
            self.emit(&p, q.ts_ns, owner.as_ref(), by_kernel)?;
        }
        Ok(())
    }

    /// True when the interface's packets start at the IP header (LINKTYPE_RAW).
    fn is_raw(&self, ifindex: u32) -> bool {
        self.ifaces
            .iter()
            .any(|i| i.ifindex == ifindex && i.linktype == LinkType::Raw)
    }

    fn flow_key_of(&self, ifindex: u32, data: &[u8]) -> Option<FlowKey> {
        five_tuple_of(data, self.is_raw(ifindex))
            .map(|t| flow_key(&t, !self.selector.sel.is_active()))
    }

    fn remember_flow(&mut self, ifindex: u32, data: &[u8], o: &Owner) {
        let Some(key) = self.flow_key_of(ifindex, data) else {
            return;
        };
        if matches!(&self.remembered, Some((k, r)) if *k == key && r == o) {
            return;
        }
        if self.flows.get(&key) != Some(o) {
            if self.flows.len() >= MAX_FLOWS {
                self.flows.clear();
            }
            self.flows.insert(key, o.clone());
        }
        self.remembered = Some((key, o.clone()));
    }

    /// The owner the kernel gave a packet, as an [`Owner`]: the last one's when it is the
    /// same (take it back with [`Sink::keep_kernel_owner`]).
    fn take_kernel_owner(&mut self, k: &agent_common::SockOwner) -> Owner {
        match self.kernel_owner.take() {
            Some((pid, comm, o)) if pid == k.pid && comm == k.comm => o,
            _ => Owner {
                pid: k.pid,
                comm: comm_str(&k.comm),
            },
        }
    }

    fn keep_kernel_owner(&mut self, k: &agent_common::SockOwner, o: Owner) {
        self.kernel_owner = Some((k.pid, k.comm, o));
    }

    fn flow_owner(&self, ifindex: u32, data: &[u8]) -> Option<Owner> {
        self.flows.get(&self.flow_key_of(ifindex, data)?).cloned()
    }
}

/// The attribution stage: the packets of a capture session in, attributed and selected
/// packets out to the session's output.
impl PacketWriter for Sink {
    fn write_packet(
        &mut self,
        p: &Packet<'_>,
        ts_ns: u64,
        _owner: Option<&Owner>,
    ) -> io::Result<()> {
        self.drain_pending(false)?;
        if let Some(k) = &p.owner {
            let o = self.take_kernel_owner(k);
            self.remember_flow(p.ifindex, p.data, &o);
            let r = if !self.pending.is_empty() && self.pending.len() < MAX_PENDING {
                // Packets keep their order behind one that waits for its owner.
                self.pending.push_back(Pending {
                    ts_ns,
                    cookie: p.cookie,
                    ifindex: p.ifindex,
                    orig_len: p.orig_len,
                    dir: p.dir,
                    kernel_owner: Some(o.clone()),
                    data: p.data.to_vec(),
                });
                Ok(())
            } else {
                self.emit(p, ts_ns, Some(&o), true)
            };
            self.keep_kernel_owner(k, o);
            return r;
        }
        if !self.pending.is_empty() && self.pending.len() < MAX_PENDING {
            // Packets keep their order behind one that waits for its owner.
            self.pending.push_back(Pending {
                ts_ns,
                cookie: p.cookie,
                ifindex: p.ifindex,
                orig_len: p.orig_len,
                dir: p.dir,
                kernel_owner: None,
                data: p.data.to_vec(),
            });
            return Ok(());
        }
        if let Some(o) = self.flow_owner(p.ifindex, p.data) {
            return self.emit(p, ts_ns, Some(&o), false);
        }
        if !self.pending.is_empty() {
            // Too many waiting: no more waiting for this one.
            let raw = self.is_raw(p.ifindex);
            let owner = self.resolver.cached(p.cookie, p.dir, p.data, raw);
            return self.emit(p, ts_ns, owner.as_ref(), false);
        }
        let raw = self.is_raw(p.ifindex);
        match self.resolver.resolve(p.cookie, p.dir, p.data, raw) {
            Resolution::Owner(o) => self.emit(p, ts_ns, Some(&o), false)?,
            // A packet with a socket cookie comes from a local socket: one the fresh table
            // did not show yet gets a second chance at the next refresh.
            Resolution::Unknown if p.cookie == 0 => self.emit(p, ts_ns, None, false)?,
            Resolution::Unknown | Resolution::Later => self.pending.push_back(Pending {
                ts_ns,
                cookie: p.cookie,
                ifindex: p.ifindex,
                orig_len: p.orig_len,
                dir: p.dir,
                kernel_owner: None,
                data: p.data.to_vec(),
            }),
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn tick(&mut self) -> io::Result<()> {
        if self.status_line.is_none()
            && let Some(m) = &self.status
        {
            self.status_line = StatusLine::drawing(m.clone(), status::Unit::Packets);
        }
        self.drain_pending(false)?;
        // Keep files readable while capturing without a syscall per packet.
        self.out.tick()
    }

    fn wants_totals(&self) -> bool {
        self.out.wants_totals()
    }

    fn totals(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        // Packets waiting for their owner belong before the counters' point in time.
        self.drain_pending(true)?;
        self.out.totals(totals, filtering)
    }
}

/// Runs a whole session: capture, attribution, selection, output, statistics and summary,
/// until a signal (the command line).
pub fn run(opts: &CaptureOptions, sopts: &SessionOptions) -> Result<CaptureOutcome, CaptureError> {
    run_with(opts, sopts, &Control::on_signals(), None)
}

/// [`run`], stopped by `ctl`, writing into `output` instead of `sopts.write` or stdout when
/// given (the daemon's jobs).
pub fn run_with(
    opts: &CaptureOptions,
    sopts: &SessionOptions,
    ctl: &Control,
    output: Option<OpenOutput>,
) -> Result<CaptureOutcome, CaptureError> {
    // The secrets are put into the file written, once it is complete.
    let inject_into = match (&sopts.tls_keylog, &output, &sopts.write) {
        (None, ..) => None,
        (Some(_), None, Some(w)) if w.as_os_str() != "-" => Some(w.clone()),
        (Some(_), ..) => return Err(TlsKeylogError::NeedsFile.into()),
    };
    let ifaces: Vec<Iface> = super::resolve(opts)?;
    let mut opts = opts.clone();
    let mut child = None;
    if !sopts.command.is_empty() {
        super::kernel::require_root("capagent capture")?;
        // Text lines or `-w -` on stdout: the command's stdout goes to stderr.
        let on_stdout =
            output.is_none() && sopts.write.as_deref().is_none_or(|p| p.as_os_str() == "-");
        let stdout = if on_stdout {
            ChildStdout::Stderr
        } else {
            ChildStdout::Inherit
        };
        let held = HeldChild::spawn(&sopts.command, stdout)?;
        opts.select.pids.push(held.pid());
        opts.select.follow_forks = true;
        child = Some(held);
    }
    let opts = &opts;
    let filter = super::compile_filter(opts, &ifaces)?;
    // Packets to a file: a status line on a terminal.
    let status = status::shown(
        output.is_none() && sopts.write.as_deref().is_some_and(|p| p.as_os_str() != "-"),
    )
    .then(|| JobMetrics::new("", ""));
    let mut out: Box<dyn PacketWriter> = match (output, &sopts.write) {
        (Some(open), _) => open(&ifaces, opts.snaplen).map_err(CaptureError::Output)?,
        (None, Some(p)) => Box::new(CaptureWriter::open(p, &ifaces, opts.snaplen).map_err(
            |source| CaptureError::Open {
                path: p.clone(),
                source,
            },
        )?),
        (None, None) => Box::new(TextLines::new(BufWriter::new(io::stdout().lock()), &ifaces)),
    };
    if let Some(m) = &status {
        let counter = PacketCounter::new(m.clone(), status::EVERY);
        out = Box::new(FanOut(vec![Box::new(counter), out]));
    }
    let mut sink = Sink {
        selector: Selector::new(opts.select.clone()),
        flows: std::collections::HashMap::new(),
        ifaces: ifaces.clone(),
        out: FlushEvery::new(out, FLUSH_EVERY),
        resolver: Resolver::system(),
        pending: VecDeque::new(),
        kernel_owner: None,
        remembered: None,
        written: 0,
        status,
        status_line: None,
    };
    let outcome = super::run(
        opts,
        &ifaces,
        filter.as_ref(),
        ctl,
        &mut sink,
        child.as_mut(),
    );
    if let Some(c) = child.as_mut()
        && outcome.as_ref().is_err()
    {
        // Never leave the held command behind.
        unsafe { libc::kill(c.pid() as i32, libc::SIGKILL) };
        let _ = c.wait();
    }
    // Whatever was captured is written, even when the capture ended with an error.
    let end = sink
        .drain_pending(true)
        .and_then(|()| sink.out.flush())
        .map_err(CaptureError::Output);
    drop(sink.status_line.take());
    let outcome = outcome?;
    end?;
    sink.out
        .finish(&outcome.per_iface, filter.is_some())
        .map_err(CaptureError::Output)?;
    if !sopts.no_summary {
        let selected = if opts.select.is_active() {
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
    // The file is complete (finished and flushed: the writer holds nothing more).
    if let (Some(keylog), Some(out)) = (&sopts.tls_keylog, &inject_into) {
        let lines = crate::mitm::keylog::embed_in_pcapng(keylog, out)?;
        if !sopts.no_summary {
            eprintln!(
                "capagent: {lines} TLS key log lines from {} put into {}",
                keylog.display(),
                out.display()
            );
        }
    }
    tracing::debug!(refreshes = sink.resolver.refreshes, "socket table");
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::super::{
        pcapng::{CommentCache, comment},
        text::text_suffix,
    };
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
        let mut cache = CommentCache::default();
        for (o, c) in [(Some(&curl), 7), (Some(&curl), 7), (None, 7), (None, 8)] {
            assert_eq!(cache.get(o, c), comment(o, c));
        }
        let wget = Owner {
            pid: 42,
            comm: "wget".into(),
        };
        assert_eq!(cache.get(Some(&wget), 8), "pid=42 comm=wget cookie=8");
        assert_eq!(cache.get(Some(&curl), 8), "pid=42 comm=curl cookie=8");
        assert_eq!(text_suffix(Some(&curl)), " [curl:42]");
        assert_eq!(text_suffix(None), " [-]");
        let mut all = Selector::new(Selection::default());
        assert!(all.selects(None) && all.selects(Some(&curl)));
        let mut by_pid = Selector::new(Selection {
            pids: vec![1, 42],
            ..Selection::default()
        });
        assert!(by_pid.selects(Some(&curl)) && !by_pid.selects(None));
        let mut by_comm = Selector::new(Selection {
            comm: Some("wget".into()),
            ..Selection::default()
        });
        assert!(!by_comm.selects(Some(&curl)) && !by_comm.selects(None));
        // Descendants: this test process descends from its parent.
        let me = Owner {
            pid: std::process::id(),
            comm: "test".into(),
        };
        let parent = std::os::unix::process::parent_id();
        let mut kids = Selector::new(Selection {
            pids: vec![parent],
            follow_forks: true,
            ..Selection::default()
        });
        assert!(kids.selects(Some(&me)));
        let mut no_kids = Selector::new(Selection {
            pids: vec![parent],
            ..Selection::default()
        });
        assert!(!no_kids.selects(Some(&me)));
    }
}
