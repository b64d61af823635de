//! The Recorder every proxy uses: what it relays becomes the same [`model::Event`]s the tracer
//! makes, written by the same outputs (text, JSON lines, pcapng with synthetic streams).
//!
//! A [`Recorder`] is a cheap cloneable handle on a channel to one writer thread that owns the
//! outputs. Each relayed connection (or UDP session) gets a [`Conn`] from
//! [`Recorder::conn`]; its records are:
//! - [`Conn::open`]: an `open` record ([`Detail::Open`]): client, target as requested and as
//!   resolved, proxy listener, and the outcome of reaching the target;
//! - [`Conn::data`]: one `sendto` (client → target, [`Direction::Send`]) or `recvfrom`
//!   (target → client, [`Direction::Recv`]) per chunk relayed, in the order relayed;
//! - [`Conn::eof`]: a side finished sending (a `shutdown` from the client, a 0-byte `recvfrom`
//!   from the target), so half-closes show in pcapng as the right FIN;
//! - [`Conn::datagram`]: one UDP datagram between the client and a target;
//! - [`Conn::close`]: the relay ended (`close`, `ret` 0 or the negative errno of what ended it).
//!
//! Every record's socket is the client as `local` and the resolved target as `remote` (the
//! requested port on `0.0.0.0` when the address is unknown), so the pcapng writer draws the
//! conversation as a TCP stream between the client and the real target.
//!
//! `--pcap-tls raw` ([`RecordOptions::tls_raw`] with a pcapng file): an intercepted
//! connection's records (the plaintext) go to the text/JSON outputs only, and pcapng gets
//! instead the real TLS bytes of its two legs ([`super::raw_tls`], [`Conn::tap_raw`]) as two
//! TCP streams (the client to the proxy's listening address, the proxy's address to the
//! target), each its own synthetic socket (`sk` = the connection's number + leg << 32),
//! with the secrets of both TLS sessions in Decryption Secrets Blocks before their packets
//! ([`Recorder::tls_secrets`] feeds a [`SecretsFirst`] around the pcapng writer).
//!
//! The channel is bounded: when the outputs cannot keep up, relays wait (nothing is dropped).
//! The writer thread flushes when the channel runs empty, at most every 100 ms (a ticker
//! wakes it), so files stay current without a write per record. While small records come
//! in bursts it polls the channel every millisecond rather than being woken by each.
//! [`RecorderHandle::finish`] waits for everything sent to be written.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::raw_tls::{Leg, RawTls, Step};
use crate::model::{Call, RelayStep, TlsIntercepted};
use crate::model::{Detail, Direction, Endpoint, Event, SocketMeta, Task, Transport};
use crate::output::{
    EventWriter, FanOut, FlushEvery, Format, SecretsFirst, Writer, pcapng::PcapngWriter,
    text::TextConfig,
};
use crate::rewrite::chain::Chain;
use crate::rewrite::hook::{Hook, HookSpec, Session};
use crate::rewrite::http::{HttpRewriter, Methods};
use crate::rewrite::http_rule::HttpOptions;
use crate::rewrite::rule::Rule;
use crate::rewrite::stream::{DEFAULT_WINDOW, Edit, Rewriter};

/// Messages in flight between the relays and the writer thread (each holds at most one
/// relayed chunk, 64 KiB or so).
const CHANNEL: usize = 256;

/// Where records go.
#[derive(Debug, Clone, Default)]
pub struct RecordOptions {
    /// Record nothing: [`Recorder::start`] gives a disabled recorder.
    pub disabled: bool,
    pub format: Format,
    /// Records to this file instead of stdout.
    pub output: Option<PathBuf>,
    /// pcapng file (`-`: stdout, and then records only go to `output`).
    pub write: Option<PathBuf>,
    /// Payload bytes per text line (0 = all).
    pub preview: usize,
    /// `--pcap-tls raw`: pcapng holds the real TLS bytes of intercepted connections, with
    /// their secrets (see the module documentation), not their plaintext.
    pub tls_raw: bool,
    /// `--replace`: the rules relays apply to the bytes they pass on (recording or not).
    pub replace: Vec<Arc<Rule>>,
    /// The HTTP rules (`--replace-http`, `--set-header`...): None without any.
    pub http: Option<Arc<HttpOptions>>,
    /// `--hook`: the program relays ask about each message (recording or not).
    pub hook: Option<HookSpec>,
}

impl RecordOptions {
    /// Whether records go to capagent's stdout.
    pub fn on_stdout(&self) -> bool {
        !self.disabled
            && crate::output::records_on_stdout(self.output.as_deref(), self.write.as_deref())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the recorder thread")]
    Thread(#[source] io::Error),
}

/// Something a proxy did, sent to the writer thread.
#[derive(Debug)]
enum Msg {
    Open {
        id: u64,
        ts_ns: u64,
        comm: &'static str,
        meta: SocketMeta,
        proxy: String,
        listen: Option<SocketAddr>,
        target: String,
        resolved: Option<SocketAddr>,
        ret: i64,
        tls: Option<Box<TlsIntercepted>>,
        view: View,
    },
    Data {
        id: u64,
        ts_ns: u64,
        dir: Direction,
        payload: Bytes,
        addr: Option<SocketAddr>,
    },
    Eof {
        id: u64,
        ts_ns: u64,
        dir: Direction,
    },
    Edit {
        id: u64,
        ts_ns: u64,
        dir: Direction,
        rule: String,
        offset: u64,
        before: Bytes,
        after: Bytes,
    },
    Decoded {
        id: u64,
        ts_ns: u64,
        dir: Direction,
        offset: u64,
        encoding: String,
        payload: Bytes,
        truncated: bool,
    },
    Close {
        id: u64,
        ts_ns: u64,
        ret: i64,
    },
    /// Wakes the writer so that it flushes what it holds (sent every [`FLUSH_EVERY`]).
    Tick,
}

/// Which outputs a connection's records go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    /// Every output.
    All,
    /// All but pcapng (the plaintext of an intercepted connection under `--pcap-tls raw`).
    Records,
    /// pcapng only (a leg of an intercepted connection under `--pcap-tls raw`).
    Pcap,
}

/// The key of a connection's records (its number), or of one of its raw TLS legs.
fn key(id: u32, leg: Option<Leg>) -> u64 {
    u64::from(id) | leg.map_or(0, |l| (l as u64) << 32)
}

/// Longest time records stay in the writer's buffers while the proxies are quiet.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// While small records flow, the writer looks for them this often instead of being woken
/// by each.
const POLL_EVERY: Duration = Duration::from_millis(1);
/// ... until this long after the last burst of small records; then it sleeps until woken by
/// a record again (an idle proxy costs nothing).
const POLL_WHILE_BUSY: Duration = Duration::from_millis(50);
/// Records of at most this many payload bytes on average make a burst of small records.
const SMALL_RECORD: usize = 4096;

struct Shared {
    tx: mpsc::Sender<Msg>,
    next_id: AtomicU32,
    /// `--pcap-tls raw`: the key log lines for the pcapng file (None: pcapng, if any, holds
    /// the plaintext).
    secrets: Option<std::sync::mpsc::Sender<String>>,
}

/// Handle on the recorder; clones share it. A disabled recorder does nothing (and relays
/// may then take a zero-copy path).
#[derive(Clone)]
pub struct Recorder {
    shared: Option<Arc<Shared>>,
    /// `--replace`: the rules every connection's relay applies (recording or not).
    rules: Arc<[Arc<Rule>]>,
    /// The HTTP rules every connection's relay applies.
    http: Option<Arc<HttpOptions>>,
    /// `--hook`: the program every connection's relay asks about each message.
    hook: Option<Arc<Hook>>,
}

/// Owns the writer thread: [`RecorderHandle::finish`] waits until every record sent by any
/// clone of the recorder has been written and flushed.
pub struct RecorderHandle {
    thread: Option<JoinHandle<io::Result<()>>>,
    /// The status line while records go to files on a terminal (erased by `finish`).
    status: Option<crate::output::status::StatusLine>,
}

impl RecorderHandle {
    /// Waits for the writer thread (which ends once every [`Recorder`] clone is dropped) and
    /// reports its first write error.
    pub fn finish(mut self) -> io::Result<()> {
        drop(self.status.take());
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("recorder thread panicked"))),
            None => Ok(()),
        }
    }
}

/// Negative errno of an I/O error (EIO when it has none).
pub fn neg_errno(e: &io::Error) -> i64 {
    -i64::from(e.raw_os_error().unwrap_or_else(|| match e.kind() {
        io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        io::ErrorKind::ConnectionRefused => libc::ECONNREFUSED,
        io::ErrorKind::ConnectionReset => libc::ECONNRESET,
        io::ErrorKind::ConnectionAborted => libc::ECONNABORTED,
        io::ErrorKind::NotFound => libc::ENOENT,
        io::ErrorKind::PermissionDenied => libc::EACCES,
        io::ErrorKind::HostUnreachable => libc::EHOSTUNREACH,
        io::ErrorKind::NetworkUnreachable => libc::ENETUNREACH,
        io::ErrorKind::AddrNotAvailable => libc::EADDRNOTAVAIL,
        io::ErrorKind::UnexpectedEof => libc::EPIPE,
        _ => libc::EIO,
    }))
}

impl Recorder {
    /// Whether HTTP rules are active (`--replace-http`, `--set-header`, `--drop-header`,
    /// `--anticomp`, `--decode-bodies`).
    pub fn has_http_rules(&self) -> bool {
        self.http.is_some()
    }

    /// A recorder that records nothing.
    pub fn disabled() -> Recorder {
        Recorder {
            shared: None,
            rules: Arc::new([]),
            http: None,
            hook: None,
        }
    }

    /// This recorder, its connections' relays applying `rules` (`--replace`).
    pub fn with_rules(mut self, rules: &[Arc<Rule>]) -> Recorder {
        self.rules = rules.into();
        self
    }

    /// This recorder, its connections' relays applying the HTTP rules `http`.
    pub fn with_http(mut self, http: Option<Arc<HttpOptions>>) -> Recorder {
        self.http = http.filter(|h| !h.is_empty());
        self
    }

    /// This recorder, its connections' relays asking the `--hook` program `spec` starts.
    pub fn with_hook(mut self, spec: Option<&HookSpec>) -> Recorder {
        self.hook = spec.cloned().map(Hook::new);
        self
    }

    /// Opens the outputs `opts` asks for and starts the writer thread.
    pub fn start(opts: &RecordOptions) -> Result<(Recorder, RecorderHandle), RecordError> {
        if opts.disabled {
            return Ok((
                Recorder::disabled()
                    .with_rules(&opts.replace)
                    .with_http(opts.http.clone())
                    .with_hook(opts.hook.as_ref()),
                RecorderHandle {
                    thread: None,
                    status: None,
                },
            ));
        }
        let pcap_stdout = opts.write.as_deref().is_some_and(|p| p.as_os_str() == "-");
        let mut writers: Vec<Box<dyn EventWriter + Send>> = Vec::new();
        if opts.output.is_some() || !pcap_stdout {
            let text = TextConfig {
                max_preview: if opts.preview == 0 {
                    usize::MAX
                } else {
                    opts.preview
                },
                ..TextConfig::default()
            };
            let w = Writer::open(opts.format, opts.output.as_deref(), text).map_err(|source| {
                RecordError::Open {
                    path: opts
                        .output
                        .as_ref()
                        .map_or_else(|| "stdout".into(), |p| p.display().to_string()),
                    source,
                }
            })?;
            writers.push(Box::new(w));
        }
        let mut raw_pcap = None;
        if let Some(p) = &opts.write {
            let w = PcapngWriter::open(p).map_err(|source| RecordError::Open {
                path: p.display().to_string(),
                source,
            })?;
            if opts.tls_raw {
                let (tx, rx) = std::sync::mpsc::channel();
                let w: Box<dyn EventWriter + Send> = Box::new(SecretsFirst::new(w, rx));
                raw_pcap = Some((w, tx));
            } else {
                writers.push(Box::new(w));
            }
        }
        // Records to files: a status line on a terminal.
        let status = crate::output::status::StatusLine::start(
            !opts.on_stdout(),
            crate::output::status::Unit::Records,
        );
        if let Some(s) = &status {
            writers.push(Box::new(s.counter()));
        }
        let (recorder, mut handle) = Recorder::with_outputs(writers, raw_pcap)?;
        handle.status = status;
        Ok((
            recorder
                .with_rules(&opts.replace)
                .with_http(opts.http.clone())
                .with_hook(opts.hook.as_ref()),
            handle,
        ))
    }

    /// A recorder writing into `writers` (tests give in-memory ones).
    pub fn with_writers(
        writers: Vec<Box<dyn EventWriter + Send>>,
    ) -> Result<(Recorder, RecorderHandle), RecordError> {
        Recorder::with_outputs(writers, None)
    }

    /// [`Recorder::with_writers`], and `raw_pcap`: a pcapng writer for `--pcap-tls raw`
    /// (it gets the raw TLS legs of intercepted connections instead of their plaintext)
    /// and the sender of the key log lines it puts before their packets.
    fn with_outputs(
        writers: Vec<Box<dyn EventWriter + Send>>,
        raw_pcap: Option<(Box<dyn EventWriter + Send>, std::sync::mpsc::Sender<String>)>,
    ) -> Result<(Recorder, RecorderHandle), RecordError> {
        let (pcap, secrets) = raw_pcap.unzip();
        let (tx, rx) = mpsc::channel(CHANNEL);
        let thread = std::thread::Builder::new()
            .name("capagent-record".into())
            .spawn(move || write_loop(rx, writers, pcap))
            .map_err(RecordError::Thread)?;
        // The ticker holds a weak sender: the channel still closes when every recorder
        // clone is gone, and the ticker then ends.
        let weak = tx.downgrade();
        std::thread::Builder::new()
            .name("capagent-tick".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    let Some(tx) = weak.upgrade() else { return };
                    let _ = tx.try_send(Msg::Tick);
                }
            })
            .map_err(RecordError::Thread)?;
        let shared = Arc::new(Shared {
            tx,
            next_id: AtomicU32::new(1),
            secrets,
        });
        Ok((
            Recorder {
                shared: Some(shared),
                rules: Arc::new([]),
                http: None,
                hook: None,
            },
            RecorderHandle {
                thread: Some(thread),
                status: None,
            },
        ))
    }

    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// `--pcap-tls raw` with a pcapng file: where the TLS secrets of intercepted connections
    /// go (one key log line at a time), to be written before their packets.
    pub fn tls_secrets(&self) -> Option<std::sync::mpsc::Sender<String>> {
        self.shared.as_ref()?.secrets.clone()
    }

    /// Whether pcapng gets the raw TLS legs of intercepted connections ([`Conn::tap_raw`]).
    pub fn tls_raw(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.secrets.is_some())
    }

    /// A new connection (or UDP session) of `client`, recorded as process `comm` (the proxy:
    /// `forward`, `socks`, ...). Nothing is written before [`Conn::open`].
    pub fn conn(&self, comm: &'static str, transport: Transport, client: SocketAddr) -> Conn {
        let id = self
            .shared
            .as_ref()
            .map_or(0, |s| s.next_id.fetch_add(1, Ordering::Relaxed));
        // (The hook's messages name the connection: its record number, else one of the hook's.)
        let hook = (self.hook.as_ref())
            .map(|h| Session::new(h.clone(), if id == 0 { h.next_conn() } else { id }, client));
        Conn {
            rec: self.clone(),
            id,
            comm,
            transport,
            client,
            opened: AtomicBool::new(false),
            raw: OnceLock::new(),
            methods: Methods::default(),
            hook,
        }
    }

    async fn send(&self, msg: Msg) {
        if let Some(s) = &self.shared
            && s.tx.send(msg).await.is_err()
        {
            tracing::warn!("recorder stopped; record lost");
        }
    }
}

/// What the `open` record of a relayed connection says (see [`Conn::open`]).
pub struct Opening<'a> {
    /// The proxy (`forward`) or how the connection was intercepted (`process pid=...`).
    pub proxy: &'a str,
    pub listen: Option<SocketAddr>,
    /// The target as requested.
    pub target: String,
    pub port: u16,
    pub resolved: Option<SocketAddr>,
}

impl Opening<'_> {
    /// [`Conn::open`] of `conn` as this says, its target reached.
    pub async fn open(&self, conn: &Conn) {
        self.open_tls(conn, None).await;
    }

    /// [`Conn::open_tls`] of `conn` as this says, its target reached (`tls`: what each TLS
    /// side negotiated, or why interception failed).
    pub async fn open_tls(&self, conn: &Conn, tls: Option<TlsIntercepted>) {
        let target = self.target.as_str();
        conn.open_tls(
            self.proxy,
            self.listen,
            target,
            self.port,
            self.resolved,
            Ok(()),
            tls,
        )
        .await;
    }
}

/// The records of one relayed connection or UDP session.
pub struct Conn {
    rec: Recorder,
    id: u32,
    comm: &'static str,
    transport: Transport,
    client: SocketAddr,
    /// Between open and close (records are only written then).
    opened: AtomicBool,
    /// `--pcap-tls raw`: the raw TLS bytes of its two legs ([`Conn::tap_raw`]).
    raw: OnceLock<RawLegs>,
    /// The HTTP rules: the request methods its client direction saw, for the responses.
    methods: Methods,
    /// `--hook`: the connection's messages to the hook.
    hook: Option<Session>,
}

/// The raw TLS legs of an intercepted connection.
struct RawLegs {
    tls: Arc<RawTls>,
    /// The legs whose streams this connection opens and closes: each with its stream's
    /// (connecting side, accepting side).
    own: Vec<(Leg, (SocketAddr, SocketAddr))>,
    /// The key of the client leg's stream when another [`Conn`] owns it (`proxy reverse
    /// --tls`: one client connection, several server connections; [`Conn::share_raw`]).
    client_key: Option<u64>,
    /// When the taps were set (before the handshakes): the time of the legs' SYNs.
    since_ns: u64,
    /// Between the legs' open and close records.
    opened: AtomicBool,
}

impl Conn {
    /// The connection number records carry (`fd`, `sk`); 0 when not recording.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn client(&self) -> SocketAddr {
        self.client
    }

    fn is_open(&self) -> bool {
        self.opened.load(Ordering::Relaxed)
    }

    /// True when records are written (else every method returns at once).
    pub fn recording(&self) -> bool {
        self.rec.enabled()
    }

    /// True when `--replace` rules or a `--hook` apply to the connection (its relay then
    /// goes through user space, recorded or not).
    pub fn rewrites(&self) -> bool {
        !self.rec.rules.is_empty() || self.rec.http.is_some() || self.hook.is_some()
    }

    /// `--hook`: the hook as this connection asks it (relays send it what they pass on).
    pub fn hook(&self) -> Option<&Session> {
        self.hook.as_ref()
    }

    /// The `--replace` and HTTP rules of direction `dir` (Send: client to target), or None
    /// when no rule applies to it (and there is no `--hook`: then an empty chain, so that
    /// the relay takes the rewriting path).
    pub fn rewriter(&self, dir: Direction) -> Option<Chain> {
        let to_server = dir == Direction::Send;
        let rules: Vec<_> = (self.rec.rules.iter().enumerate())
            .filter(|(_, r)| r.dir.applies(to_server))
            .map(|(i, r)| (i, r.clone()))
            .collect();
        let http = self.http_rewriter(dir);
        (!rules.is_empty() || http.is_some() || self.hook.is_some())
            .then(|| Chain::new(Rewriter::new(&rules, DEFAULT_WINDOW), http))
    }

    /// The HTTP rules of direction `dir` (None without any): the HTTP proxies run the
    /// messages they send through these (the relays, through [`Conn::rewriter`]).
    pub fn http_rewriter(&self, dir: Direction) -> Option<HttpRewriter> {
        let http = self.rec.http.as_ref()?;
        Some(HttpRewriter::new(
            http.clone(),
            dir == Direction::Send,
            self.rec.rules.len(),
            self.methods.clone(),
        ))
    }

    /// A `--replace` rule changed bytes relayed in direction `dir` (recorded before the data
    /// record that carries them); a `--decode-bodies` note (`edit.decoded`) is recorded as a
    /// `decoded` record instead.
    pub async fn edit(&self, dir: Direction, edit: Edit) {
        if !self.is_open() {
            return;
        }
        if let Some(d) = edit.decoded {
            return self
                .rec
                .send(Msg::Decoded {
                    id: key(self.id, None),
                    ts_ns: crate::clock::wall_ns(),
                    dir,
                    offset: edit.offset,
                    encoding: d.encoding,
                    payload: d.text.into(),
                    truncated: d.truncated,
                })
                .await;
        }
        let rule = match (
            crate::rewrite::hook::origin(edit.rule),
            self.rec.rules.get(edit.rule),
            &self.rec.http,
        ) {
            (Some(hook), _, _) => hook.to_string(),
            (None, Some(r), _) => r.text.clone(),
            (None, None, Some(h)) => h.text(edit.rule - self.rec.rules.len()),
            (None, None, None) => String::new(),
        };
        self.rec
            .send(Msg::Edit {
                id: key(self.id, None),
                ts_ns: crate::clock::wall_ns(),
                dir,
                rule,
                offset: edit.offset,
                before: edit.before.into(),
                after: edit.after.into(),
            })
            .await;
    }

    /// `--pcap-tls raw`: the queue the [`super::raw_tls::Tap`]s of the connection's two
    /// sockets fill, before its TLS is intercepted (None: not recording raw TLS). `client`:
    /// the client's socket's (peer, local) addresses; `server`: the proxy's socket to the
    /// target's (local, peer). From [`Conn::open_tls`] on, the connection's own records go
    /// to every output but pcapng, which gets the two legs instead.
    pub fn tap_raw(
        &self,
        client: (SocketAddr, SocketAddr),
        server: (SocketAddr, SocketAddr),
    ) -> Option<Arc<RawTls>> {
        if !self.rec.tls_raw() {
            return None;
        }
        self.set_raw(
            Arc::new(RawTls::default()),
            vec![(Leg::Client, client), (Leg::Server, server)],
            None,
        )
    }

    fn set_raw(
        &self,
        tls: Arc<RawTls>,
        own: Vec<(Leg, (SocketAddr, SocketAddr))>,
        client_key: Option<u64>,
    ) -> Option<Arc<RawTls>> {
        self.raw
            .set(RawLegs {
                tls: tls.clone(),
                own,
                client_key,
                since_ns: crate::clock::wall_ns(),
                opened: AtomicBool::new(false),
            })
            .ok()?;
        Some(tls)
    }

    /// `--pcap-tls raw` for a proxy that terminates the client's TLS itself before it
    /// chooses servers (`proxy reverse --tls`): this connection records only the client
    /// leg (the client's socket, `client`), as its own stream in pcapng, opened by
    /// [`Conn::open_raw_leg`] and closed by [`Conn::close_raw_leg`]; each server
    /// connection made for the client shares its queue ([`Conn::share_raw`]).
    pub fn tap_raw_client(&self, client: &tokio::net::TcpStream) -> Option<Arc<RawTls>> {
        if !self.rec.tls_raw() {
            return None;
        }
        let (peer, local) = (client.peer_addr().ok()?, client.local_addr().ok()?);
        self.set_raw(
            Arc::new(RawTls::default()),
            vec![(Leg::Client, (peer, local))],
            None,
        )
    }

    /// A server connection (`server`: the proxy's socket to it) made for the client whose
    /// leg `client_leg` records ([`Conn::tap_raw_client`]): its server leg is this
    /// connection's, in the same queue, so that whichever connection's records drain the
    /// queue writes the client leg's bytes too, in the order they crossed the sockets.
    pub fn share_raw(
        &self,
        client_leg: &Conn,
        server: &tokio::net::TcpStream,
    ) -> Option<Arc<RawTls>> {
        let legs = client_leg.raw.get()?;
        let (local, peer) = (server.local_addr().ok()?, server.peer_addr().ok()?);
        self.set_raw(
            legs.tls.clone(),
            vec![(Leg::Server, (local, peer))],
            Some(key(client_leg.id, Some(Leg::Client))),
        )
    }

    /// Opens the streams of the legs [`Conn::tap_raw_client`] set, without a record of
    /// the connection itself (pcapng only), and writes what crossed them so far.
    pub async fn open_raw_leg(&self, proxy: &str, target: &str) {
        if self.rec.enabled() {
            self.open_raw(proxy, target).await;
        }
    }

    /// Writes what is left of [`Conn::open_raw_leg`]'s legs, and closes them.
    pub async fn close_raw_leg(&self) {
        self.close_raw().await;
    }

    /// [`Conn::tap_raw`] for a connection between `client` and the proxy, and the proxy and
    /// `server`, when it records (`--pcap-tls raw`: where the bytes of both sockets go).
    pub fn tap_raw_sockets(
        &self,
        client: &tokio::net::TcpStream,
        server: &tokio::net::TcpStream,
    ) -> Option<Arc<RawTls>> {
        if !self.recording() {
            return None;
        }
        match (
            client.peer_addr(),
            client.local_addr(),
            server.local_addr(),
            server.peer_addr(),
        ) {
            (Ok(c), Ok(l), Ok(p), Ok(t)) => self.tap_raw((c, l), (p, t)),
            _ => None,
        }
    }

    /// Sends the raw TLS chunks queued, in order.
    async fn drain_raw(&self) {
        let Some(legs) = self.raw.get() else { return };
        if !legs.opened.load(Ordering::Relaxed) {
            return;
        }
        let _one_at_a_time = legs.tls.sending.lock().await;
        while let Some(c) = legs.tls.pop() {
            let id = match (c.leg, legs.client_key) {
                (Leg::Client, Some(k)) => k,
                (leg, _) => key(self.id, Some(leg)),
            };
            let msg = match c.step {
                Step::Data(dir, payload) => Msg::Data {
                    id,
                    ts_ns: c.ts_ns,
                    dir,
                    payload,
                    addr: None,
                },
                Step::Eof(dir) => Msg::Eof {
                    id,
                    ts_ns: c.ts_ns,
                    dir,
                },
            };
            self.rec.send(msg).await;
        }
    }

    /// Opens the raw legs' streams (after the connection's open record) and sends what
    /// their sockets carried so far (the handshakes).
    async fn open_raw(&self, proxy: &str, target: &str) {
        let Some(legs) = self.raw.get() else { return };
        let ts_ns = legs.since_ns;
        for &(leg, (local, remote)) in &legs.own {
            let id = key(self.id, Some(leg));
            let meta = SocketMeta {
                sk: id,
                ino: 0,
                transport: Transport::Tcp,
                local: Some(Endpoint::Inet(local)),
                remote: Some(Endpoint::Inet(remote)),
            };
            self.rec
                .send(Msg::Open {
                    id,
                    ts_ns,
                    comm: self.comm,
                    meta,
                    proxy: proxy.to_string(),
                    listen: None,
                    target: target.to_string(),
                    resolved: Some(remote),
                    ret: 0,
                    tls: None,
                    view: View::Pcap,
                })
                .await;
        }
        legs.opened.store(true, Ordering::Relaxed);
        self.drain_raw().await;
    }

    /// Sends what is left of the raw legs and closes their streams.
    async fn close_raw(&self) {
        let Some(legs) = self.raw.get() else { return };
        self.drain_raw().await;
        if !legs.opened.swap(false, Ordering::Relaxed) {
            return;
        }
        for &(leg, _) in &legs.own {
            self.rec
                .send(Msg::Close {
                    id: key(self.id, Some(leg)),
                    ts_ns: crate::clock::wall_ns(),
                    ret: 0,
                })
                .await;
        }
    }

    /// The connection was opened: `target` as requested, `resolved` the address connected
    /// to (None when unknown), `result` the outcome of reaching the target. `target_port`
    /// stands in for the port of an unknown address in pcapng.
    pub async fn open(
        &self,
        proxy: impl Into<String>,
        listen: Option<SocketAddr>,
        target: impl Into<String>,
        target_port: u16,
        resolved: Option<SocketAddr>,
        result: Result<(), &io::Error>,
    ) {
        self.open_tls(proxy, listen, target, target_port, resolved, result, None)
            .await;
    }

    /// [`Conn::open`] of a connection whose TLS the proxy intercepted (`tls`: what each side
    /// negotiated, or why it failed). When both handshakes succeeded, the data records that
    /// follow are the plaintext, marked as such ([`Event::tls_plaintext`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn open_tls(
        &self,
        proxy: impl Into<String>,
        listen: Option<SocketAddr>,
        target: impl Into<String>,
        target_port: u16,
        resolved: Option<SocketAddr>,
        result: Result<(), &io::Error>,
        tls: Option<TlsIntercepted>,
    ) {
        let target = target.into();
        if let Some(h) = &self.hook {
            h.set_target(&target);
        }
        if !self.rec.enabled() {
            return;
        }
        let remote = resolved.unwrap_or_else(|| {
            let ip: IpAddr = match self.client {
                SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            };
            SocketAddr::new(ip, target_port)
        });
        let meta = SocketMeta {
            sk: u64::from(self.id),
            ino: 0,
            transport: self.transport,
            local: Some(Endpoint::Inet(self.client)),
            remote: match self.transport {
                Transport::Udp => None,
                _ => Some(Endpoint::Inet(remote)),
            },
        };
        self.opened.store(true, Ordering::Relaxed);
        let ret = match result {
            Ok(()) => 0,
            Err(e) => neg_errno(e),
        };
        let ts_ns = crate::clock::wall_ns();
        let proxy = proxy.into();
        let raw = self.raw.get().is_some();
        if raw {
            self.open_raw(&proxy, &target).await;
        }
        self.rec
            .send(Msg::Open {
                id: key(self.id, None),
                ts_ns,
                comm: self.comm,
                meta,
                proxy,
                listen,
                target,
                resolved,
                ret,
                tls: tls.map(Box::new),
                view: if raw { View::Records } else { View::All },
            })
            .await;
    }

    /// `payload` was relayed in direction `dir` (Send: client → target).
    pub async fn data(&self, dir: Direction, payload: Bytes) {
        if !self.is_open() || payload.is_empty() {
            return;
        }
        self.drain_raw().await;
        self.rec
            .send(Msg::Data {
                id: key(self.id, None),
                ts_ns: crate::clock::wall_ns(),
                dir,
                payload,
                addr: None,
            })
            .await;
    }

    /// As [`Conn::data`], copying the bytes only when recording.
    pub async fn data_slice(&self, dir: Direction, payload: &[u8]) {
        if self.is_open() && !payload.is_empty() {
            self.data(dir, Bytes::copy_from_slice(payload)).await;
        }
    }

    /// One UDP datagram between the client and `peer` (Send: client → peer).
    pub async fn datagram(&self, dir: Direction, peer: SocketAddr, payload: Bytes) {
        if !self.is_open() {
            return;
        }
        self.rec
            .send(Msg::Data {
                id: key(self.id, None),
                ts_ns: crate::clock::wall_ns(),
                dir,
                payload,
                addr: Some(peer),
            })
            .await;
    }

    /// The sender of direction `dir` finished (Send: the client half-closed; Recv: the target).
    pub async fn eof(&self, dir: Direction) {
        if !self.is_open() {
            return;
        }
        self.drain_raw().await;
        self.rec
            .send(Msg::Eof {
                id: key(self.id, None),
                ts_ns: crate::clock::wall_ns(),
                dir,
            })
            .await;
    }

    /// The relay ended, normally or with `result`'s error (later records are ignored).
    pub async fn close(&self, result: Result<(), &io::Error>) {
        if self.is_open() {
            self.close_raw().await;
        }
        if !self.opened.swap(false, Ordering::Relaxed) {
            return;
        }
        self.rec
            .send(Msg::Close {
                id: key(self.id, None),
                ts_ns: crate::clock::wall_ns(),
                ret: match result {
                    Ok(()) => 0,
                    Err(e) => neg_errno(e),
                },
            })
            .await;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Dropped without close (task cancelled at shutdown, or a panic): close it (and its
        // raw legs, which a client leg's records open alone) if the channel has room, so
        // the pcapng streams end.
        let Some(s) = &self.rec.shared else { return };
        let raw = self
            .raw
            .get()
            .filter(|l| l.opened.swap(false, Ordering::Relaxed));
        let legs = raw
            .iter()
            .flat_map(|l| l.own.iter().map(|&(leg, _)| Some(leg)));
        let own = self.opened.swap(false, Ordering::Relaxed).then_some(None);
        for leg in legs.chain(own) {
            let _ = s.tx.try_send(Msg::Close {
                id: key(self.id, leg),
                ts_ns: crate::clock::wall_ns(),
                ret: -i64::from(libc::ECONNABORTED),
            });
        }
    }
}

/// Per-connection state of the writer thread.
struct Open {
    task: Task,
    meta: SocketMeta,
    /// Its data records are TLS plaintext (an intercepted connection).
    plaintext: bool,
    view: View,
}

/// `writers` get every record but the raw TLS legs; `pcap` (`--pcap-tls raw`), every record
/// but the plaintext of intercepted connections.
fn write_loop(
    mut rx: mpsc::Receiver<Msg>,
    writers: Vec<Box<dyn EventWriter + Send>>,
    pcap: Option<Box<dyn EventWriter + Send>>,
) -> io::Result<()> {
    // Flushed when the channel runs empty, at most every FLUSH_EVERY.
    let mut out = Views {
        records: FlushEvery::new(FanOut(writers), FLUSH_EVERY),
        pcap: pcap.map(|p| FlushEvery::new(p, FLUSH_EVERY)),
    };
    let pid = std::process::id();
    let mut conns: HashMap<u64, Open> = HashMap::new();
    let mut first_err: Option<io::Error> = None;
    // How the writer waits for records: while small records come in bursts (many short
    // connections, chatty ones), it polls the channel every POLL_EVERY instead of sleeping
    // until woken, so that relays send without waking it (a futex and a context switch per
    // record otherwise, more than relaying costs at thousands of connections a second).
    // Bulk data (large records) is written as it comes: there a wake-up per record is
    // cheap, and the bytes are still in the cache.
    let mut poll_until: Option<Instant> = None;
    // Records, and their payload bytes, since the channel last ran empty.
    let (mut burst, mut burst_bytes) = (0usize, 0usize);
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing waiting: flush now if the last flush is old enough (else at the
                // next tick), so files stay current without a write per record.
                if let Err(e) = out.tick() {
                    first_err.get_or_insert(e);
                }
                if burst > 0 {
                    poll_until = (burst >= 2 && burst_bytes < burst * SMALL_RECORD)
                        .then(|| Instant::now() + POLL_WHILE_BUSY);
                    (burst, burst_bytes) = (0, 0);
                }
                if poll_until.is_some_and(|t| Instant::now() < t) {
                    std::thread::sleep(POLL_EVERY);
                    continue;
                }
                poll_until = None;
                match rx.blocking_recv() {
                    Some(m) => m,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        if let Msg::Tick = msg {
            continue;
        }
        burst += 1;
        if let Msg::Data { payload, .. } = &msg {
            burst_bytes += payload.len();
        }
        if let Some((ev, view)) = event_of(msg, pid, &mut conns)
            && let Err(e) = out.write(&ev, view)
            && first_err.is_none()
        {
            tracing::error!("cannot write records: {e}");
            first_err = Some(e);
        }
    }
    if let Err(e) = out.flush() {
        first_err.get_or_insert(e);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The writer thread's outputs: the records' and, under `--pcap-tls raw`, pcapng's apart.
struct Views {
    records: FlushEvery<FanOut<Box<dyn EventWriter + Send>>>,
    pcap: Option<FlushEvery<Box<dyn EventWriter + Send>>>,
}

impl Views {
    /// Writes `ev` to the outputs of `view`.
    fn write(&mut self, ev: &Event, view: View) -> io::Result<()> {
        if view != View::Pcap {
            self.records.write_event(ev)?;
        }
        if view != View::Records
            && let Some(p) = &mut self.pcap
        {
            p.write_event(ev)?;
        }
        Ok(())
    }

    fn tick(&mut self) -> io::Result<()> {
        let r = self.records.tick();
        if let Some(p) = &mut self.pcap {
            p.tick()?;
        }
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.records.flush();
        if let Some(p) = &mut self.pcap {
            p.flush()?;
        }
        r
    }
}

fn event_of(msg: Msg, pid: u32, conns: &mut HashMap<u64, Open>) -> Option<(Event, View)> {
    let ev = |task: &Task, meta: &SocketMeta, ts_ns, step, id: u64, ret, detail| Event {
        ts_ns,
        task: task.clone(),
        call: Call::Relay(step),
        fd: id as u32 as i32,
        ret,
        sock: Some(meta.clone()),
        detail,
        tls_ciphertext: false,
        tls_eof: false,
        tls_plaintext: false,
        unfinished: false,
        stack: None,
    };
    match msg {
        Msg::Open {
            id,
            ts_ns,
            comm,
            meta,
            proxy,
            listen,
            target,
            resolved,
            ret,
            tls,
            view,
        } => {
            let plaintext = tls
                .as_ref()
                .is_some_and(|t| t.error.is_none() && t.passthrough.is_none());
            let task = Task {
                pid,
                tid: pid,
                comm: comm.to_string(),
            };
            let e = ev(
                &task,
                &meta,
                ts_ns,
                RelayStep::Open,
                id,
                ret,
                Detail::Open {
                    proxy,
                    listen,
                    target,
                    resolved,
                    tls,
                },
            );
            conns.insert(
                id,
                Open {
                    task,
                    meta,
                    plaintext,
                    view,
                },
            );
            Some((e, view))
        }
        Msg::Data {
            id,
            ts_ns,
            dir,
            payload,
            addr,
        } => {
            let c = conns.get(&id)?;
            let total = payload.len() as u64;
            let plaintext = c.plaintext;
            let mut e = ev(
                &c.task,
                &c.meta,
                ts_ns,
                RelayStep::Data(dir),
                id,
                total as i64,
                Detail::Data {
                    dir,
                    total,
                    payload,
                    truncated: false,
                    addr,
                    msg_index: 0,
                },
            );
            e.tls_plaintext = plaintext;
            Some((e, c.view))
        }
        Msg::Eof { id, ts_ns, dir } => {
            let c = conns.get(&id)?;
            let e = match dir {
                // The client shut down its sending side.
                Direction::Send => ev(
                    &c.task,
                    &c.meta,
                    ts_ns,
                    RelayStep::Eof(Direction::Send),
                    id,
                    0,
                    Detail::Sock {
                        args: [libc::SHUT_WR as u64, 0, 0, 0],
                        addr: None,
                    },
                ),
                // The target did: a 0-byte receive.
                Direction::Recv => ev(
                    &c.task,
                    &c.meta,
                    ts_ns,
                    RelayStep::Eof(Direction::Recv),
                    id,
                    0,
                    Detail::Data {
                        dir: Direction::Recv,
                        total: 0,
                        payload: Bytes::new(),
                        truncated: false,
                        addr: None,
                        msg_index: 0,
                    },
                ),
            };
            Some((e, c.view))
        }
        Msg::Edit {
            id,
            ts_ns,
            dir,
            rule,
            offset,
            before,
            after,
        } => {
            let c = conns.get(&id)?;
            let mut e = ev(
                &c.task,
                &c.meta,
                ts_ns,
                RelayStep::Edit(dir),
                id,
                0,
                Detail::Edit {
                    dir,
                    rule,
                    offset,
                    before,
                    after,
                },
            );
            e.tls_plaintext = c.plaintext;
            Some((e, c.view))
        }
        Msg::Decoded {
            id,
            ts_ns,
            dir,
            offset,
            encoding,
            payload,
            truncated,
        } => {
            let c = conns.get(&id)?;
            let mut e = ev(
                &c.task,
                &c.meta,
                ts_ns,
                RelayStep::Decoded(dir),
                id,
                0,
                Detail::Decoded {
                    dir,
                    offset,
                    encoding,
                    payload,
                    truncated,
                },
            );
            e.tls_plaintext = c.plaintext;
            Some((e, c.view))
        }
        Msg::Tick => None,
        Msg::Close { id, ts_ns, ret } => {
            let c = conns.remove(&id)?;
            let e = ev(
                &c.task,
                &c.meta,
                ts_ns,
                RelayStep::Close,
                id,
                ret,
                Detail::Sock {
                    args: [0; 4],
                    addr: None,
                },
            );
            Some((e, c.view))
        }
    }
}

/// What the tests of the proxy's modules use to see what a recorder wrote.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::Mutex;

    /// Collects events.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Event>>>);

    impl EventWriter for Sink {
        fn write_event(&mut self, ev: &Event) -> io::Result<()> {
            self.0.lock().unwrap().push(ev.clone());
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The events a recorder wrote while `run` used it (and its connections, gone when `run`
    /// returns: the writer finishes once every clone is).
    pub(crate) async fn recorded(run: impl AsyncFnOnce(&Recorder)) -> Vec<Event> {
        let sink = Sink::default();
        let (rec, handle) = Recorder::with_writers(vec![Box::new(sink.clone())]).unwrap();
        run(&rec).await;
        drop(rec);
        tokio::task::spawn_blocking(move || handle.finish())
            .await
            .unwrap()
            .unwrap();
        sink.0.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::recorded;
    use super::*;
    use crate::output::json::JsonWriter;
    use crate::output::pcapng::synth::{CLIENT_ISN, SERVER_ISN};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    async fn session(rec: &Recorder) {
        let c = rec.conn("socks", Transport::Tcp, addr("127.0.0.1:40000"));
        c.open(
            "socks5 connect",
            Some(addr("127.0.0.1:1080")),
            "example.com:80",
            80,
            Some(addr("192.0.2.7:80")),
            Ok(()),
        )
        .await;
        c.data_slice(Direction::Send, b"GET / HTTP/1.0\r\n\r\n")
            .await;
        c.eof(Direction::Send).await;
        c.data(
            Direction::Recv,
            Bytes::from_static(b"HTTP/1.0 200 OK\r\n\r\nhi"),
        )
        .await;
        c.eof(Direction::Recv).await;
        c.close(Ok(())).await;
    }

    #[tokio::test]
    async fn records_a_connection_as_events() {
        let evs = recorded(session).await;
        let names: Vec<_> = evs.iter().map(|e| e.syscall_name()).collect();
        assert_eq!(
            names,
            [
                "connect", "sendto", "shutdown", "recvfrom", "recvfrom", "close"
            ]
        );
        // What happened, in the model: relay steps, not syscalls.
        let calls: Vec<_> = evs.iter().map(|e| e.call).collect();
        assert_eq!(
            calls,
            [
                RelayStep::Open,
                RelayStep::Data(Direction::Send),
                RelayStep::Eof(Direction::Send),
                RelayStep::Data(Direction::Recv),
                RelayStep::Eof(Direction::Recv),
                RelayStep::Close,
            ]
            .map(Call::Relay)
        );
        let open = &evs[0];
        assert_eq!(open.task.comm, "socks");
        assert_eq!(open.task.pid, std::process::id());
        assert_eq!(open.fd, 1);
        let meta = open.sock.as_ref().unwrap();
        assert_eq!(meta.local, Some(Endpoint::Inet(addr("127.0.0.1:40000"))));
        assert_eq!(meta.remote, Some(Endpoint::Inet(addr("192.0.2.7:80"))));
        assert!(
            evs.iter()
                .all(|e| e.sock.as_ref() == Some(meta) && e.fd == 1)
        );
        let Detail::Open {
            proxy,
            listen,
            target,
            resolved,
            tls: None,
        } = &open.detail
        else {
            panic!("{open:?}")
        };
        assert_eq!(proxy, "socks5 connect");
        assert_eq!(*listen, Some(addr("127.0.0.1:1080")));
        assert_eq!(target, "example.com:80");
        assert_eq!(*resolved, Some(addr("192.0.2.7:80")));
        let json = crate::output::json::to_json(open);
        assert!(
            json.contains(r#""proxy":"socks5 connect","listen":"127.0.0.1:1080","target":"example.com:80","resolved":"192.0.2.7:80"}"#),
            "{json}"
        );
        assert!(json.starts_with(r#"{"type":"open","#), "{json}");
        let text = crate::output::text::format_event(open, &TextConfig::default());
        assert_eq!(
            text,
            format!(
                "socks[{}] open(1, socks5 connect, 127.0.0.1:40000 -> example.com:80 = 192.0.2.7:80, via 127.0.0.1:1080) = 0",
                std::process::id()
            )
        );
    }

    #[tokio::test]
    async fn pcapng_stream_is_client_to_target() {
        let mut synth = crate::output::pcapng::Synth::new();
        let packets: Vec<_> = recorded(session)
            .await
            .iter()
            .flat_map(|e| synth.packets(e))
            .collect();
        // SYN, SYN-ACK, ACK, request, client FIN, response, target FIN.
        assert_eq!(packets.len(), 7, "{packets:#?}");
        let tcp = |p: &crate::output::pcapng::Packet| {
            let s = etherparse::SlicedPacket::from_ip(&p.data).unwrap();
            let Some(etherparse::TransportSlice::Tcp(t)) = s.transport else {
                panic!()
            };
            let ip = match s.net {
                Some(etherparse::NetSlice::Ipv4(v4)) => v4.header().source_addr(),
                _ => panic!(),
            };
            (
                ip,
                t.source_port(),
                t.sequence_number(),
                t.syn(),
                t.fin(),
                t.payload().to_vec(),
            )
        };
        let syn = tcp(&packets[0]);
        assert_eq!(
            (syn.0, syn.1, syn.2, syn.3),
            ([127, 0, 0, 1].into(), 40000, CLIENT_ISN, true)
        );
        let req = tcp(&packets[3]);
        assert_eq!(req.5, b"GET / HTTP/1.0\r\n\r\n");
        assert!(tcp(&packets[4]).4, "client FIN");
        let resp = tcp(&packets[5]);
        assert_eq!(resp.0, std::net::Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(resp.2, SERVER_ISN + 1);
        assert_eq!(resp.5, b"HTTP/1.0 200 OK\r\n\r\nhi");
        let fin = tcp(&packets[6]);
        assert!(fin.4 && fin.0 == std::net::Ipv4Addr::new(192, 0, 2, 7));
    }

    /// An intercepted connection: its open record says what each TLS side negotiated, its
    /// data records are marked as plaintext; a failed interception marks nothing.
    #[tokio::test]
    async fn intercepted_tls_is_recorded() {
        let leg = |alpn: &str| crate::model::TlsLeg {
            sni: Some("example.com".into()),
            alpn: Some(alpn.into()),
            version: Some("TLSv1.3".into()),
            cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
        };
        let tls = TlsIntercepted {
            client: leg("h2"),
            server: leg("h2"),
            server_cert: Some("CN=example.com".into()),
            error: None,
            passthrough: None,
        };
        let failed = TlsIntercepted {
            error: Some("invalid peer certificate: UnknownIssuer".into()),
            ..TlsIntercepted::default()
        };
        let mut passed = TlsIntercepted {
            passthrough: Some("pattern *.example.com".into()),
            ..TlsIntercepted::default()
        };
        passed.client.sni = Some("example.com".into());
        let evs = recorded(async |rec: &Recorder| {
            for t in [tls.clone(), failed.clone(), passed.clone()] {
                let c = rec.conn("forward", Transport::Tcp, addr("127.0.0.1:40000"));
                let to = addr("192.0.2.7:443");
                c.open_tls(
                    "forward",
                    None,
                    "example.com:443",
                    443,
                    Some(to),
                    Ok(()),
                    Some(t),
                )
                .await;
                c.data(Direction::Send, Bytes::from_static(b"GET /")).await;
                c.close(Ok(())).await;
            }
        })
        .await;
        let json: Vec<String> = evs.iter().map(crate::output::json::to_json).collect();
        assert!(
            json[0].ends_with(r#","resolved":"192.0.2.7:443","tls":{"client":{"sni":"example.com","alpn":"h2","version":"TLSv1.3","cipher":"TLS13_AES_128_GCM_SHA256"},"server":{"sni":"example.com","alpn":"h2","version":"TLSv1.3","cipher":"TLS13_AES_128_GCM_SHA256"},"server_cert":"CN=example.com","error":null}}"#),
            "{}",
            json[0]
        );
        assert!(json[1].ends_with(r#""payload_b64":"R0VUIC8=","tls":{"plaintext":true}}"#));
        assert!(!json[2].contains("tls"));
        assert!(json[3].ends_with(r#""tls":{"client":{"sni":null,"alpn":null,"version":null,"cipher":null},"server":{"sni":null,"alpn":null,"version":null,"cipher":null},"server_cert":null,"error":"invalid peer certificate: UnknownIssuer"}}"#), "{}", json[3]);
        assert!(!json[4].contains("tls"));
        let text = |e: &Event| {
            let mut w = crate::output::text::TextWriter::new(Vec::new(), Default::default());
            crate::output::EventWriter::write_event(&mut w, e).unwrap();
            String::from_utf8(w.into_inner()).unwrap()
        };
        assert!(
            text(&evs[0]).ends_with(" = 0 [tls client TLSv1.3 TLS13_AES_128_GCM_SHA256 h2, server TLSv1.3 TLS13_AES_128_GCM_SHA256 h2, sni example.com, cert CN=example.com]\n"),
            "{}",
            text(&evs[0])
        );
        assert!(
            text(&evs[1]).ends_with("\"GET /\" [tls plaintext]\n"),
            "{}",
            text(&evs[1])
        );
        assert!(
            text(&evs[3]).ends_with(
                " = 0 [tls client, server, failed: invalid peer certificate: UnknownIssuer]\n"
            ),
            "{}",
            text(&evs[3])
        );
        // Passed through: the reason and the SNI; the data is not plaintext.
        assert!(
            json[6]
                .ends_with(r#""tls":{"passthrough":"pattern *.example.com","sni":"example.com"}}"#),
            "{}",
            json[6]
        );
        assert!(!json[7].contains("tls"), "{}", json[7]);
        assert!(
            text(&evs[6])
                .ends_with(" = 0 [tls passthrough: pattern *.example.com, sni example.com]\n"),
            "{}",
            text(&evs[6])
        );
    }

    /// What reaches a sink, in order: secrets, or an event's socket, name and payload.
    #[derive(Clone, Default)]
    struct Seen(Arc<std::sync::Mutex<Vec<String>>>);

    impl EventWriter for Seen {
        fn write_event(&mut self, ev: &Event) -> io::Result<()> {
            let payload = match &ev.detail {
                Detail::Data { payload, .. } => String::from_utf8_lossy(payload).into_owned(),
                _ => String::new(),
            };
            let sk = ev.sock.as_ref().map_or(0, |m| m.sk);
            let line = format!("{sk:#x} {} {payload}", ev.syscall_name());
            self.0.lock().unwrap().push(line.trim_end().to_string());
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
            let line = format!("secrets {}", String::from_utf8_lossy(key_log));
            self.0.lock().unwrap().push(line);
            Ok(())
        }
    }

    /// `--pcap-tls raw`: an intercepted connection's plaintext goes to the records only, its
    /// two raw legs (in the order their bytes crossed the sockets, the handshakes before
    /// the open included) to pcapng only, after the secrets that came before them; a
    /// connection that was not tapped goes to both.
    #[tokio::test]
    async fn raw_tls_legs_go_to_pcapng_only() {
        let (records, pcap) = (Seen::default(), Seen::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let raw_pcap: Box<dyn EventWriter + Send> = Box::new(SecretsFirst::new(pcap.clone(), rx));
        let (rec, handle) =
            Recorder::with_outputs(vec![Box::new(records.clone())], Some((raw_pcap, tx))).unwrap();
        assert!(rec.tls_raw());
        let secrets = rec.tls_secrets().unwrap();
        let c = rec.conn("socks", Transport::Tcp, addr("127.0.0.1:40000"));
        let raw = c
            .tap_raw(
                (addr("127.0.0.1:40000"), addr("127.0.0.1:1080")),
                (addr("127.0.0.1:50000"), addr("192.0.2.7:443")),
            )
            .unwrap();
        let data = |dir, s: &'static [u8]| Step::Data(dir, Bytes::from_static(s));
        raw.push(Leg::Client, data(Direction::Send, b"client hello"));
        raw.push(Leg::Server, data(Direction::Send, b"hello upstream"));
        secrets.send("KEYS 1\n".to_string()).unwrap();
        raw.push(Leg::Server, data(Direction::Recv, b"server flight"));
        raw.push(Leg::Client, data(Direction::Recv, b"our flight"));
        let tls = TlsIntercepted::default();
        let to = Some(addr("192.0.2.7:443"));
        c.open_tls("socks5 connect", None, "x:443", 443, to, Ok(()), Some(tls))
            .await;
        raw.push(Leg::Client, data(Direction::Send, b"enc GET"));
        c.data(Direction::Send, Bytes::from_static(b"GET /")).await;
        raw.push(Leg::Server, data(Direction::Send, b"enc GET again"));
        raw.push(Leg::Server, Step::Eof(Direction::Recv));
        c.close(Ok(())).await;
        // Not intercepted: everywhere.
        let d = rec.conn("socks", Transport::Tcp, addr("127.0.0.1:40001"));
        d.open("socks5 connect", None, "y:80", 80, to, Ok(())).await;
        d.data(Direction::Send, Bytes::from_static(b"plain")).await;
        d.close(Ok(())).await;
        drop((c, d, rec, secrets));
        tokio::task::spawn_blocking(move || handle.finish())
            .await
            .unwrap()
            .unwrap();
        let plain = ["0x2 connect", "0x2 sendto plain", "0x2 close"];
        let mut want = vec!["0x1 connect", "0x1 sendto GET /", "0x1 close"];
        want.extend(plain);
        assert_eq!(*records.0.lock().unwrap(), want);
        let (cl, sv) = ("0x100000001", "0x200000001");
        let mut want: Vec<String> = vec!["secrets KEYS 1\n".into()];
        for l in [
            format!("{cl} connect"),
            format!("{sv} connect"),
            format!("{cl} sendto client hello"),
            format!("{sv} sendto hello upstream"),
            format!("{sv} recvfrom server flight"),
            format!("{cl} recvfrom our flight"),
            format!("{cl} sendto enc GET"),
            format!("{sv} sendto enc GET again"),
            format!("{sv} recvfrom"),
            format!("{cl} close"),
            format!("{sv} close"),
        ] {
            want.push(l);
        }
        want.extend(plain.map(String::from));
        assert_eq!(*pcap.0.lock().unwrap(), want);
    }

    #[tokio::test]
    async fn disabled_records_nothing() {
        let rec = Recorder::disabled();
        assert!(!rec.enabled());
        let c = rec.conn("forward", Transport::Tcp, addr("127.0.0.1:1"));
        c.open("forward", None, "x:1", 1, None, Ok(())).await;
        assert!(!c.recording());
        c.data_slice(Direction::Send, b"x").await;
        c.close(Ok(())).await;
    }

    #[tokio::test]
    async fn failed_open_and_unknown_address() {
        let evs = recorded(async |rec: &Recorder| {
            let c = rec.conn("socks", Transport::Tcp, addr("127.0.0.1:40000"));
            let err = io::Error::from_raw_os_error(libc::ECONNREFUSED);
            c.open(
                "socks5 connect",
                None,
                "db.internal:5432",
                5432,
                None,
                Err(&err),
            )
            .await;
            c.close(Err(&err)).await;
        })
        .await;
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].ret, -i64::from(libc::ECONNREFUSED));
        assert_eq!(
            evs[0].sock.as_ref().unwrap().remote,
            Some(Endpoint::Inet(addr("0.0.0.0:5432")))
        );
        let mut w = JsonWriter::new(Vec::new());
        w.write_event(&evs[0]).unwrap();
        let line = String::from_utf8(w.into_inner()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["errno"], "ECONNREFUSED");
        assert_eq!(v["resolved"], serde_json::Value::Null);
        assert_eq!(v["listen"], serde_json::Value::Null);
    }
}
