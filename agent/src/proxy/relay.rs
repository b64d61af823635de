//! Copying a client connection and a target connection both ways.
//!
//! Each direction reads up to [`BUF`] (256 KiB) at a time once data flows in bulk (tokio's
//! `io::copy` uses 8 KiB, a known throughput trap), records the chunk, then writes it on. When one side finishes sending,
//! the other side's write half is shut down (half-close is relayed) and the other direction
//! goes on. A reset or error on either side ends both directions and resets the other side.
//! With no traffic either way for the idle timeout, both are closed.
//!
//! When the connection is not recorded, bulk data goes through a pipe with `splice(2)`, never
//! entering user space.
//!
//! [`relay`] is for two TCP sockets; [`relay_streams`] relays any two byte streams (the
//! plaintext sides of an intercepted TLS connection) the same way, through user space.
//! [`relay_inspecting`] (`--tls`) relays two TCP sockets through user space, recorded or
//! not, until the client starts TLS mid-stream (STARTTLS): a read that begins with a whole
//! ClientHello ends the relay and hands those bytes back ([`Inspected::ClientHello`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::record::Conn;
use crate::model::Direction;
use crate::tls_hello;

/// Bytes read at a time.
pub const BUF: usize = 256 * 1024;

/// How a relay ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Client to target bytes.
    pub up: u64,
    /// Target to client bytes.
    pub down: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{side}: {source}")]
    Io {
        side: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// The `--hook` answered `close`.
    #[error("closed by the hook")]
    Hook,
}

impl RelayError {
    /// As an I/O error (for records).
    pub fn io(&self) -> io::Error {
        match self {
            RelayError::Io { source, .. } => match source.raw_os_error() {
                Some(e) => io::Error::from_raw_os_error(e),
                None => io::Error::new(source.kind(), self.to_string()),
            },
            RelayError::Idle(_) => io::Error::from_raw_os_error(libc::ETIMEDOUT),
            RelayError::Hook => io::Error::from_raw_os_error(libc::ECONNABORTED),
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            RelayError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            RelayError::Idle(_) => libc::ETIMEDOUT,
            RelayError::Hook => libc::ECONNABORTED,
        }
    }
}

/// Last activity, in milliseconds since `start`.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// Directions that reached their end.
    ended: AtomicU8,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            ended: AtomicU8::new(0),
        }
    }

    /// A direction reached its end; true for the first one, whose destination must then be
    /// shut down for writing (half-close). After the second, both sockets are closed anyway,
    /// which ends the last direction without a shutdown call.
    fn first_to_end(&self) -> bool {
        self.ended.fetch_add(1, Ordering::Relaxed) == 0
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing happened for `idle`.
    async fn idle(&self, idle: Option<Duration>) -> Duration {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let since = self.start.elapsed().saturating_sub(last);
            if since >= idle {
                return idle;
            }
            tokio::time::sleep(idle - since).await;
        }
    }
}

/// Sets SO_LINGER to 0 seconds, so closing `s` sends a reset (to pass a reset on). (A zero
/// linger never blocks the close, unlike the non-zero ones tokio warns about.)
pub fn reset_on_close(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on our socket with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Relays `client` and `target` until both directions finished, one failed, or the idle
/// timeout; records through `conn` (which the caller opened and closes).
pub async fn relay(
    client: &mut TcpStream,
    target: &mut TcpStream,
    conn: &Conn,
    idle: Option<Duration>,
) -> Result<Relayed, RelayError> {
    let act = Activity::new();
    let outcome = {
        let (cr, cw) = client.split();
        let (tr, tw) = target.split();
        let both = async {
            if conn.recording() || conn.rewrites() {
                // (`--replace`: through user space, recorded or not.)
                let up = copy_recorded(cr, tw, conn, Direction::Send, &act);
                let down = copy_recorded(tr, cw, conn, Direction::Recv, &act);
                tokio::try_join!(up, down)
            } else {
                let up = copy_plain(cr, tw, &act, "client");
                let down = copy_plain(tr, cw, &act, "target");
                tokio::try_join!(up, down)
            }
        };
        tokio::select! {
            r = both => r.map(|(up, down)| Relayed { up, down }),
            d = act.idle(idle) => Err(RelayError::Idle(d)),
        }
    };
    if let Err(RelayError::Io { side, .. }) = &outcome {
        // Pass the failure on: the other side gets a reset rather than a clean end.
        match *side {
            "client" => reset_on_close(target),
            _ => reset_on_close(client),
        }
    }
    outcome
}

/// Relays `client` and `target`, any two byte streams (the plaintext of TLS streams), as
/// [`relay`] does two TCP sockets: recorded through `conn` when it records, with half-close
/// (a TLS stream's shutdown sends its close_notify) and the idle timeout. A TLS peer that
/// closes its TCP connection without a close_notify ends its direction as a clean end would
/// (what browsers accept too; the HTTP inside says whether the message was whole). On an
/// error the caller decides how the other side learns it.
pub async fn relay_streams<A, B>(
    client: &mut A,
    target: &mut B,
    conn: &Conn,
    idle: Option<Duration>,
) -> Result<Relayed, RelayError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let act = Activity::new();
    let outcome = {
        let (cr, cw) = tokio::io::split(&mut *client);
        let (tr, tw) = tokio::io::split(&mut *target);
        let both = async {
            let up = copy_recorded(cr, tw, conn, Direction::Send, &act);
            let down = copy_recorded(tr, cw, conn, Direction::Recv, &act);
            tokio::try_join!(up, down)
        };
        tokio::select! {
            r = both => r.map(|(up, down)| Relayed { up, down }),
            d = act.idle(idle) => Err(RelayError::Idle(d)),
        }
    };
    if outcome.is_ok() {
        // The direction that ended last left its destination open (a TCP socket's close
        // ends it; a TLS stream's close_notify must be sent): end both, briefly.
        let end = async {
            let _ = client.shutdown().await;
            let _ = target.shutdown().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), end).await;
    }
    outcome
}

/// How [`relay_inspecting`] ended.
#[derive(Debug)]
pub enum Inspected {
    /// Both directions finished, as [`relay`] ends.
    Ended(Relayed),
    /// The client started TLS: `hello`, the bytes of the read that began with a whole
    /// ClientHello (and any read after it to complete it), was neither relayed nor recorded;
    /// `so_far` is what was relayed before it. Nothing of the target's was read after the
    /// ClientHello came: its answer is still in the socket.
    ClientHello { so_far: Relayed, hello: Bytes },
}

/// Relays `client` and `target` as [`relay`] does, always through user space (recorded
/// through `conn` when it records), watching the start of each of the client's reads: one
/// that begins with a TLS ClientHello (STARTTLS after SMTP's `220 Ready`, IMAP, POP3's
/// `STLS`, PostgreSQL's `SSLRequest`...) ends the relay with [`Inspected::ClientHello`],
/// once the whole first record is in (waiting at most `patience` for the rest) and parses
/// as a ClientHello. Bytes that only look like the start of one are relayed as they are.
pub async fn relay_inspecting(
    client: &mut TcpStream,
    target: &mut TcpStream,
    conn: &Conn,
    idle: Option<Duration>,
    patience: Duration,
) -> Result<Inspected, RelayError> {
    let act = Activity::new();
    let stop = Stop::default();
    let outcome = {
        let (cr, cw) = client.split();
        let (tr, tw) = target.split();
        let both = async {
            let up = copy_until_hello(cr, tw, conn, &act, &stop, patience);
            let down = async {
                let from = Stoppable {
                    inner: tr,
                    stop: &stop,
                };
                match copy_recorded(from, cw, conn, Direction::Recv, &act).await {
                    Err(RelayError::Io { source, .. }) if stop.is_stopped(&source) => {
                        Ok(stop.read.load(Ordering::Relaxed))
                    }
                    r => r,
                }
            };
            tokio::try_join!(up, down)
        };
        tokio::select! {
            r = both => r,
            d = act.idle(idle) => Err(RelayError::Idle(d)),
        }
    };
    match outcome {
        Ok(((up, None), down)) => Ok(Inspected::Ended(Relayed { up, down })),
        Ok(((up, Some(hello)), down)) => Ok(Inspected::ClientHello {
            so_far: Relayed { up, down },
            hello,
        }),
        Err(e) => {
            if let RelayError::Io { side, .. } = &e {
                match *side {
                    "client" => reset_on_close(target),
                    _ => reset_on_close(client),
                }
            }
            Err(e)
        }
    }
}

/// Tells the target-to-client direction of [`relay_inspecting`] to stop before its next
/// read (the ClientHello came: what the target says next belongs to the TLS handshake).
#[derive(Default)]
struct Stop {
    stopped: AtomicBool,
    waker: Mutex<Option<Waker>>,
    /// Bytes the stopped direction read (all of them relayed: only reads are stopped).
    read: AtomicU64,
}

/// The error a stopped read returns (inside an `Interrupted` I/O error; recognised by
/// [`Stop::is_stopped`]).
#[derive(Debug, thiserror::Error)]
#[error("stopped for TLS")]
struct Stopped;

impl Stop {
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().expect("stop waker").take() {
            w.wake();
        }
    }

    fn is_stopped(&self, e: &io::Error) -> bool {
        self.stopped.load(Ordering::Acquire)
            && e.kind() == io::ErrorKind::Interrupted
            && e.get_ref().is_some_and(|inner| inner.is::<Stopped>())
    }
}

/// A reader that fails with [`Stopped`] once its [`Stop`] is set (never in the middle of a
/// read that returned bytes: those are relayed whole), counting the bytes it read.
struct Stoppable<'a, R> {
    inner: R,
    stop: &'a Stop,
}

impl<R: AsyncRead + Unpin> AsyncRead for Stoppable<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stopped = || Poll::Ready(Err(io::Error::new(io::ErrorKind::Interrupted, Stopped)));
        if self.stop.stopped.load(Ordering::Acquire) {
            return stopped();
        }
        *self.stop.waker.lock().expect("stop waker") = Some(cx.waker().clone());
        // (Set between the check and the waker: seen here.)
        if self.stop.stopped.load(Ordering::Acquire) {
            return stopped();
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.stop.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

/// The client-to-target direction of [`relay_inspecting`]: as [`copy_recorded`] (recorded
/// when `conn` records), until a read begins with a whole ClientHello; returns the bytes
/// relayed and that ClientHello, if one came.
async fn copy_until_hello(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    conn: &Conn,
    act: &Activity,
    stop: &Stop,
    patience: Duration,
) -> Result<(u64, Option<Bytes>), RelayError> {
    let read_err = |source| RelayError::Io {
        side: "client",
        source,
    };
    let mut total = 0u64;
    let mut buf = BytesMut::new();
    let mut want = FIRST_READ;
    // `--replace` c2s rules: the plaintext before a ClientHello goes through them (what
    // they hold back is passed on before the ClientHello is handed back).
    let mut rw = conn.rewriter(Direction::Send).map(Rewriting::new);
    let dir = Direction::Send;
    loop {
        buf.reserve(want);
        let Some(read) = read_or_stall(&mut from, &mut buf, rw.as_ref()).await else {
            if let Some(rw) = &mut rw {
                total += rw.step(Step::Flush, conn, dir, &mut to).await?;
            }
            continue;
        };
        let n = read.map_err(read_err)?;
        act.touch();
        let hello_like = n > 0 && tls_hello::may_start_client_hello(&buf[..buf.len().min(6)]);
        if (n == 0 || hello_like)
            && let Some(rw) = &mut rw
        {
            // The end, or maybe a ClientHello: nothing is held back past it.
            total += rw.step(Step::Finish, conn, dir, &mut to).await?;
        }
        if n == 0 {
            conn.eof(Direction::Send).await;
            if act.first_to_end() {
                let _ = to.shutdown().await;
            }
            return Ok((total, None));
        }
        if n >= want && want < BUF {
            want = (want * 4).min(BUF);
        }
        if hello_like
            && whole_client_hello(&mut from, &mut buf, patience)
                .await
                .map_err(read_err)?
        {
            stop.stop();
            return Ok((total, Some(buf.split().freeze())));
        }
        if let Some(rw) = &mut rw {
            // Not a ClientHello (or only looked like the start of one): through the rules.
            total += rw.step(Step::Push(&buf), conn, dir, &mut to).await?;
            buf.clear();
            act.touch();
            continue;
        }
        total += buf.len() as u64;
        let chunk = buf.split().freeze();
        conn.data(Direction::Send, chunk.clone()).await;
        to.write_all(&chunk)
            .await
            .map_err(|source| RelayError::Io {
                side: "target",
                source,
            })?;
        act.touch();
    }
}

/// Whether `buf`, the start of a read of the client's, begins with a whole ClientHello
/// record: reads on (into `buf`) until the record is whole, for at most `patience`.
async fn whole_client_hello(
    from: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    patience: Duration,
) -> io::Result<bool> {
    let more = async {
        loop {
            let have = buf.len();
            if have >= 6 && !tls_hello::is_client_hello(buf) {
                return Ok(false);
            }
            if !tls_hello::may_start_client_hello(&buf[..have.min(6)]) {
                return Ok(false);
            }
            if let Some(len) = tls_hello::record_len(buf)
                && have >= len
            {
                return Ok(tls_hello::is_whole_client_hello(&buf[..len]));
            }
            buf.reserve(FIRST_READ);
            if from.read_buf(buf).await? == 0 {
                return Ok(false);
            }
        }
    };
    // Cut short for longer than `patience`: not a ClientHello to intercept (the bytes read
    // so far are relayed; a read of the client's is cancel-safe).
    tokio::time::timeout(patience, more)
        .await
        .unwrap_or(Ok(false))
}

fn side_of(dir: Direction, reading: bool) -> &'static str {
    match (dir, reading) {
        (Direction::Send, true) | (Direction::Recv, false) => "client",
        _ => "target",
    }
}

/// First read size of a direction; reads grow (4x at a time, up to [`BUF`]) while they
/// fill the buffer, so short exchanges stay small and bulk transfers get large reads.
const FIRST_READ: usize = 16 * 1024;

/// How long bytes a `--replace` rule holds back (they may start a match the next read would
/// complete) wait for that read: then they are passed on as they are, so that a prompt or a
/// request that happens to end like the start of a match is not held forever.
pub const STALL_FLUSH: Duration = Duration::from_millis(80);

/// One direction, recorded: each chunk read is recorded, then written. With `--replace`
/// rules for the direction, [`copy_rewriting`] instead.
async fn copy_recorded(
    from: impl AsyncRead + Unpin,
    to: impl AsyncWrite + Unpin,
    conn: &Conn,
    dir: Direction,
    act: &Activity,
) -> Result<u64, RelayError> {
    match conn.rewriter(dir) {
        Some(rw) => copy_rewriting(from, to, conn, dir, act, Rewriting::new(rw)).await,
        None => copy_verbatim(from, to, conn, dir, act).await,
    }
}

/// One direction through `--replace` rules: each chunk read goes through `rw`; what comes
/// out is recorded (with an `edit` record per change, before it) and written. Bytes `rw`
/// holds back are flushed after [`STALL_FLUSH`] without a read, and at the end, before the
/// half-close. Returns the bytes written.
async fn copy_rewriting(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    conn: &Conn,
    dir: Direction,
    act: &Activity,
    mut rw: Rewriting,
) -> Result<u64, RelayError> {
    let mut total = 0u64;
    let mut buf = BytesMut::new();
    let mut want = FIRST_READ;
    loop {
        buf.reserve(want);
        let read = read_or_stall(&mut from, &mut buf, Some(&rw)).await;
        let got = read.is_some();
        let n = match read {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Some(Err(source)) => {
                // What is held back still goes on first (as it would have without the
                // rules; and a read stopped for STARTTLS must not lose it).
                let _ = rw.step(Step::Finish, conn, dir, &mut to).await;
                return Err(RelayError::Io {
                    side: side_of(dir, true),
                    source,
                });
            }
        };
        let end = got && n == 0;
        if got {
            act.touch();
        }
        let step = if end {
            Step::Finish
        } else if n == 0 {
            Step::Flush
        } else {
            if n >= want && want < BUF {
                want = (want * 4).min(BUF);
            }
            Step::Push(&buf)
        };
        let sent = rw.step(step, conn, dir, &mut to).await?;
        buf.clear();
        if sent > 0 {
            total += sent;
            act.touch();
        }
        if end {
            conn.eof(dir).await;
            if act.first_to_end() {
                let _ = to.shutdown().await;
            }
            return Ok(total);
        }
    }
}

/// A direction's `--replace` rules, with what they put out that is not passed on yet.
struct Rewriting {
    rw: crate::rewrite::chain::Chain,
    out: Vec<u8>,
    edits: Vec<crate::rewrite::stream::Edit>,
}

/// What [`Rewriting::step`] has the rules do.
enum Step<'a> {
    /// Take in bytes read.
    Push(&'a [u8]),
    /// Put out what they held back (no read came in time).
    Flush,
    /// Put out everything: the end, or a ClientHello next.
    Finish,
}

impl Rewriting {
    fn new(rw: crate::rewrite::chain::Chain) -> Rewriting {
        Rewriting {
            rw,
            out: Vec::new(),
            edits: Vec::new(),
        }
    }

    /// Runs `step` of the rules and passes on what comes out ([`pass_on`]). Returns the
    /// bytes written.
    async fn step(
        &mut self,
        step: Step<'_>,
        conn: &Conn,
        dir: Direction,
        to: &mut (impl AsyncWrite + Unpin),
    ) -> Result<u64, RelayError> {
        match step {
            Step::Push(chunk) => self.rw.push(chunk, &mut self.out, &mut self.edits),
            Step::Flush => self.rw.flush(&mut self.out, &mut self.edits),
            Step::Finish => self.rw.finish(&mut self.out, &mut self.edits),
        }
        pass_on(conn, dir, to, &mut self.out, &mut self.edits).await
    }
}

/// Passes on what a rewriter put out: through the `--hook` if there is one, then an `edit`
/// record per change in `edits`, then `out` recorded and written to `to` (both emptied).
/// Returns the bytes written.
async fn pass_on(
    conn: &Conn,
    dir: Direction,
    to: &mut (impl AsyncWrite + Unpin),
    out: &mut Vec<u8>,
    edits: &mut Vec<crate::rewrite::stream::Edit>,
) -> Result<u64, RelayError> {
    let flow = match conn.hook() {
        Some(h) => {
            h.apply(dir, crate::rewrite::hook::Kind::Raw, out, edits)
                .await
        }
        None => crate::rewrite::hook::Flow::Go,
    };
    for e in edits.drain(..) {
        conn.edit(dir, e).await;
    }
    if flow == crate::rewrite::hook::Flow::Close {
        return Err(RelayError::Hook);
    }
    if out.is_empty() {
        return Ok(0);
    }
    let chunk = Bytes::from(std::mem::take(out));
    conn.data(dir, chunk.clone()).await;
    to.write_all(&chunk)
        .await
        .map_err(|source| RelayError::Io {
            side: side_of(dir, false),
            source,
        })?;
    Ok(chunk.len() as u64)
}

/// A read of `from` into `buf`, or None when `rw` holds bytes back and [`STALL_FLUSH`]
/// passed first (a read of tokio's is cancel-safe: nothing was read then).
async fn read_or_stall(
    from: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    rw: Option<&Rewriting>,
) -> Option<io::Result<usize>> {
    if rw.is_some_and(|rw| rw.rw.pending() > 0) {
        tokio::select! {
            r = from.read_buf(buf) => Some(r),
            () = tokio::time::sleep(STALL_FLUSH) => None,
        }
    } else {
        Some(from.read_buf(buf).await)
    }
}

/// One direction, recorded, the bytes as they are.
async fn copy_verbatim(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    conn: &Conn,
    dir: Direction,
    act: &Activity,
) -> Result<u64, RelayError> {
    let mut total = 0u64;
    let mut buf = BytesMut::new();
    let mut want = FIRST_READ;
    loop {
        buf.reserve(want);
        let n = match from.read_buf(&mut buf).await {
            Ok(n) => n,
            // A TLS stream's peer closed without a close_notify (a TCP read never says
            // this): the end of its data all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(source) => {
                return Err(RelayError::Io {
                    side: side_of(dir, true),
                    source,
                });
            }
        };
        act.touch();
        if n == 0 {
            conn.eof(dir).await;
            // Half-close: the other side learns this side is done sending.
            if act.first_to_end() {
                let _ = to.shutdown().await;
            }
            return Ok(total);
        }
        if n >= want && want < BUF {
            want = (want * 4).min(BUF);
        }
        total += n as u64;
        // The chunk goes to the recorder as is (no copy) and is written from the same bytes.
        let chunk = buf.split().freeze();
        conn.data(dir, chunk.clone()).await;
        to.write_all(&chunk)
            .await
            .map_err(|source| RelayError::Io {
                side: side_of(dir, false),
                source,
            })?;
        act.touch();
    }
}

/// One direction, not recorded: read/write through a small buffer until a read fills it
/// (bulk data), then splice through a pipe, the bytes never entering user space. Short
/// exchanges (most connections) never pay for a pipe.
async fn copy_plain(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    act: &Activity,
    from_side: &'static str,
) -> Result<u64, RelayError> {
    let to_side = if from_side == "client" {
        "target"
    } else {
        "client"
    };
    let mut total = 0u64;
    // Not zeroed: only the bytes read are ever touched (and resident).
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_READ);
    loop {
        buf.clear();
        let n = from
            .read_buf(&mut buf)
            .await
            .map_err(|source| RelayError::Io {
                side: from_side,
                source,
            })?;
        act.touch();
        if n == 0 {
            if act.first_to_end() {
                let _ = to.shutdown().await;
            }
            return Ok(total);
        }
        if n < FIRST_READ && read_closed(from.as_ref()) {
            // The source's FIN is in and this read took what was queued: one more read
            // (no waiting) finds the end, and the chunk and the half-close leave as one
            // segment instead of a data segment and a FIN (the peer wakes up once).
            let m = match from.read_buf(&mut buf).await {
                Ok(m) => m,
                Err(source) => {
                    // A reset after the data: the data still goes on first, as it would
                    // have without this read.
                    let _ = to.write_all(&buf).await;
                    return Err(RelayError::Io {
                        side: from_side,
                        source,
                    });
                }
            };
            if m == 0 && act.first_to_end() {
                total += buf.len() as u64;
                send_then_fin(to.as_ref(), &buf)
                    .await
                    .map_err(|source| RelayError::Io {
                        side: to_side,
                        source,
                    })?;
                let _ = to.shutdown().await;
                act.touch();
                return Ok(total);
            }
            // (More data, or the other direction ended first: as usual; a read after the
            // FIN keeps returning 0.)
        }
        let n = buf.len();
        total += n as u64;
        to.write_all(&buf).await.map_err(|source| RelayError::Io {
            side: to_side,
            source,
        })?;
        act.touch();
        if n >= FIRST_READ {
            break;
        }
    }
    drop(buf);
    match Pipe::new() {
        Ok(pipe) => {
            let more = splice_loop(from, to, act, &pipe, from_side, to_side).await?;
            Ok(total + more)
        }
        Err(_) => {
            let more = copy_buffered(from, to, act, from_side, to_side).await?;
            Ok(total + more)
        }
    }
}

/// True when `s` is known (from the readiness the runtime has, without a syscall) to have
/// received its peer's FIN.
fn read_closed(s: &TcpStream) -> bool {
    let ready = std::pin::pin!(s.ready(Interest::READABLE));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    matches!(
        std::future::Future::poll(ready, &mut cx),
        std::task::Poll::Ready(Ok(r)) if r.is_read_closed()
    )
}

/// Writes all of `data` to `s` with MSG_MORE, so that the kernel holds the last segment
/// for the shutdown that follows: the FIN goes out with it.
async fn send_then_fin(s: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    let fd = s.as_raw_fd();
    while !data.is_empty() {
        s.writable().await?;
        let sent = s.try_io(Interest::WRITABLE, || {
            // SAFETY: send on our socket from a live buffer of the given length.
            let n = unsafe {
                libc::send(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_MORE | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read/write with a [`BUF`] buffer (when no pipe can be had).
async fn copy_buffered(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    act: &Activity,
    from_side: &'static str,
    to_side: &'static str,
) -> Result<u64, RelayError> {
    let mut total = 0u64;
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await.map_err(|source| RelayError::Io {
            side: from_side,
            source,
        })?;
        act.touch();
        if n == 0 {
            if act.first_to_end() {
                let _ = to.shutdown().await;
            }
            return Ok(total);
        }
        total += n as u64;
        to.write_all(&buf[..n])
            .await
            .map_err(|source| RelayError::Io {
                side: to_side,
                source,
            })?;
        act.touch();
    }
}

/// A pipe for splice, sized to [`BUF`] when the system allows.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds are fresh and ours.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on our fd; failure only leaves the default size.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, BUF as libc::c_int) };
        Ok(Pipe { r, w })
    }
}

/// splice(2) from `fd_in` to `fd_out`: Ok(bytes) or the error (EAGAIN as WouldBlock).
fn splice(fd_in: i32, fd_out: i32, len: usize) -> io::Result<usize> {
    // SAFETY: splice with valid fds and null offsets (sockets and pipes).
    let n = unsafe {
        libc::splice(
            fd_in,
            std::ptr::null_mut(),
            fd_out,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

async fn splice_loop(
    from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    act: &Activity,
    pipe: &Pipe,
    from_side: &'static str,
    to_side: &'static str,
) -> Result<u64, RelayError> {
    let src: &TcpStream = from.as_ref();
    let dst: &TcpStream = to.as_ref();
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    let (pr, pw) = (pipe.r.as_raw_fd(), pipe.w.as_raw_fd());
    let mut total = 0u64;
    loop {
        // Socket → pipe.
        let n = loop {
            src.readable().await.map_err(|source| RelayError::Io {
                side: from_side,
                source,
            })?;
            match src.try_io(Interest::READABLE, || splice(src_fd, pw, BUF)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(source) => {
                    return Err(RelayError::Io {
                        side: from_side,
                        source,
                    });
                }
            }
        };
        act.touch();
        if n == 0 {
            if act.first_to_end() {
                let _ = to.shutdown().await;
            }
            return Ok(total);
        }
        total += n as u64;
        // Pipe → socket, until the pipe is empty.
        let mut left = n;
        while left > 0 {
            dst.writable().await.map_err(|source| RelayError::Io {
                side: to_side,
                source,
            })?;
            match dst.try_io(Interest::WRITABLE, || splice(pr, dst_fd, left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(source) => {
                    return Err(RelayError::Io {
                        side: to_side,
                        source,
                    });
                }
            }
        }
        act.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Detail, Direction, Event, Transport};
    use crate::proxy::record::Recorder;
    use crate::proxy::record::testing::recorded;
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap());
        let (a, b) = tokio::join!(a, l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// The bytes recorded in direction `want`, in order.
    fn payload(evs: &[Event], want: Direction) -> Vec<u8> {
        evs.iter()
            .filter_map(|e| match &e.detail {
                Detail::Data { dir, payload, .. } if *dir == want => Some(&payload[..]),
                _ => None,
            })
            .collect::<Vec<_>>()
            .concat()
    }

    /// A connection of `rec` from `client_app` to `target`'s peer, opened as the forward
    /// proxy opens it.
    async fn opened(rec: &Recorder, client_app: &TcpStream, target: &TcpStream) -> Conn {
        let conn = rec.conn("forward", Transport::Tcp, client_app.local_addr().unwrap());
        let to = target.peer_addr().unwrap();
        let host = to.ip().to_string();
        conn.open("forward", None, host, to.port(), Some(to), Ok(()))
            .await;
        conn
    }

    /// The 3 MB the client sends in [`relay_both_ways`].
    fn big() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i % 251) as u8).collect()
    }

    /// A relay of 3 MB up, the client's half-close, 4 bytes down and the server's close,
    /// opened and closed on `rec` as the forward proxy does.
    async fn relay_both_ways(rec: &Recorder) {
        // client_app <-> (client, target) <-> server_app
        let (mut client_app, mut client) = pair().await;
        let (mut target, mut server_app) = pair().await;
        let conn = opened(rec, &client_app, &target).await;
        let big = big();
        let big2 = big.clone();
        let relay = tokio::spawn(async move {
            let r = relay(
                &mut client,
                &mut target,
                &conn,
                Some(Duration::from_secs(10)),
            )
            .await;
            conn.close(Ok(())).await;
            (r.unwrap(), conn)
        });
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            server_app.read_to_end(&mut got).await.unwrap();
            // Half-close relayed: the client's end arrived, and we can still answer.
            server_app.write_all(b"done").await.unwrap();
            server_app.shutdown().await.unwrap();
            got
        });
        client_app.write_all(&big2).await.unwrap();
        client_app.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client_app.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"done");
        assert_eq!(server.await.unwrap(), big);
        let (r, _conn) = relay.await.unwrap();
        assert_eq!(
            r,
            Relayed {
                up: 3_000_000,
                down: 4
            }
        );
    }

    /// [`relay_streams`] over in-memory streams (as over TLS streams): every byte both ways,
    /// the half-close passed on, recorded as the TCP relay records.
    #[tokio::test]
    async fn relays_streams_recorded() {
        let evs = recorded(async |rec: &Recorder| {
            let (mut client_app, mut client) = tokio::io::duplex(64 * 1024);
            let (mut target, mut server_app) = tokio::io::duplex(64 * 1024);
            let conn = rec.conn("forward", Transport::Tcp, "127.0.0.1:1".parse().unwrap());
            conn.open("forward", None, "t:1", 1, None, Ok(())).await;
            let relay = async {
                let r = relay_streams(&mut client, &mut target, &conn, None).await;
                conn.close(Ok(())).await;
                r.unwrap()
            };
            let server = async {
                let mut got = Vec::new();
                server_app.read_to_end(&mut got).await.unwrap();
                server_app.write_all(b"done").await.unwrap();
                server_app.shutdown().await.unwrap();
                got
            };
            let client = async {
                client_app.write_all(&big()).await.unwrap();
                client_app.shutdown().await.unwrap();
                let mut answer = Vec::new();
                client_app.read_to_end(&mut answer).await.unwrap();
                answer
            };
            let (r, got, answer) = tokio::join!(relay, server, client);
            assert_eq!(
                r,
                Relayed {
                    up: 3_000_000,
                    down: 4
                }
            );
            assert!(got == big());
            assert_eq!(answer, b"done");
        })
        .await;
        assert!(payload(&evs, Direction::Send) == big());
        assert_eq!(payload(&evs, Direction::Recv), b"done");
        let names: Vec<_> = evs.iter().map(|e| e.syscall_name()).collect();
        assert_eq!(names.iter().filter(|n| **n == "shutdown").count(), 1);
        assert_eq!(names.last(), Some(&"close"));
    }

    #[tokio::test]
    async fn relays_with_half_close_not_recorded() {
        relay_both_ways(&Recorder::disabled()).await;
    }

    /// The records of a relay: every byte each way, each side's end once after its data,
    /// between the open and the close.
    #[tokio::test]
    async fn relays_with_half_close_recorded() {
        let evs = recorded(relay_both_ways).await;
        assert!(
            payload(&evs, Direction::Send) == big(),
            "the 3 MB sent, byte for byte"
        );
        assert_eq!(payload(&evs, Direction::Recv), b"done");
        let names: Vec<_> = evs.iter().map(|e| e.syscall_name()).collect();
        assert_eq!(names.first(), Some(&"connect"), "{names:?}");
        assert_eq!(names.last(), Some(&"close"), "{names:?}");
        assert_eq!(names.iter().filter(|n| **n == "close").count(), 1);
        // The client's half-close: one shutdown, after the last byte it sent.
        let ends: Vec<usize> = (0..evs.len()).filter(|&i| names[i] == "shutdown").collect();
        let last_sent = evs
            .iter()
            .rposition(|e| {
                matches!(
                    e.detail,
                    Detail::Data {
                        dir: Direction::Send,
                        ..
                    }
                )
            })
            .unwrap();
        assert_eq!(ends.len(), 1, "{names:?}");
        assert!(ends[0] > last_sent, "{names:?}");
        // The server's end: an empty read after "done".
        let (i, eof) = evs
            .iter()
            .enumerate()
            .rev()
            .find(|(_, e)| {
                matches!(
                    e.detail,
                    Detail::Data {
                        dir: Direction::Recv,
                        ..
                    }
                )
            })
            .unwrap();
        assert_eq!(
            (eof.ret, i + 2),
            (0, evs.len()),
            "{eof:?} then close: {names:?}"
        );
    }

    /// A target that answered and closed before the relay started (its data and FIN wait
    /// together): the client gets the answer and then the end, and can still send after it.
    async fn target_done_first(rec: &Recorder) {
        let (mut client_app, mut client) = pair().await;
        let (mut target, mut server_app) = pair().await;
        server_app.write_all(b"ok").await.unwrap();
        server_app.shutdown().await.unwrap();
        let conn = opened(rec, &client_app, &target).await;
        let relay = tokio::spawn(async move {
            let r = relay(
                &mut client,
                &mut target,
                &conn,
                Some(Duration::from_secs(10)),
            )
            .await;
            (r.unwrap(), conn)
        });
        let mut answer = Vec::new();
        client_app.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"ok");
        client_app.write_all(b"bye").await.unwrap();
        client_app.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        let (r, _conn) = relay.await.unwrap();
        assert_eq!(r, Relayed { up: 3, down: 2 });
    }

    #[tokio::test]
    async fn target_done_first_not_recorded() {
        target_done_first(&Recorder::disabled()).await;
    }

    #[tokio::test]
    async fn target_done_first_recorded() {
        let evs = recorded(target_done_first).await;
        assert_eq!(payload(&evs, Direction::Recv), b"ok");
        assert_eq!(payload(&evs, Direction::Send), b"bye");
    }

    /// A target that answered and reset the connection before the relay started: the
    /// answer still reaches the client before the reset is passed on.
    #[tokio::test]
    async fn target_data_then_reset() {
        let (mut client_app, mut client) = pair().await;
        let (mut target, mut server_app) = pair().await;
        server_app.write_all(b"ok").await.unwrap();
        reset_on_close(&server_app);
        drop(server_app);
        // The reset has arrived once the target's socket reports it (no read consumed).
        target.ready(Interest::READABLE).await.unwrap();
        let rec = Recorder::disabled();
        let conn = rec.conn("forward", Transport::Tcp, client_app.local_addr().unwrap());
        let relay = tokio::spawn(async move {
            relay(
                &mut client,
                &mut target,
                &conn,
                Some(Duration::from_secs(10)),
            )
            .await
        });
        let mut answer = [0u8; 2];
        client_app.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"ok");
        let r = relay.await.unwrap();
        assert!(
            matches!(&r, Err(RelayError::Io { side: "target", source }) if source.kind() == io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
        // And the client gets the reset.
        let mut rest = Vec::new();
        let e = client_app.read_to_end(&mut rest).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }

    /// An SMTP-style upgrade through [`relay_inspecting`]: the plaintext before the
    /// ClientHello relayed and recorded, the ClientHello handed back whole (not relayed),
    /// the server's first TLS bytes left in its socket; bytes that only start like a
    /// ClientHello are relayed as they are.
    #[tokio::test]
    async fn inspecting_relay_stops_at_a_client_hello() {
        use crate::tls_hello::tests::CURL_HELLO;
        let mut fake = CURL_HELLO[..6].to_vec();
        fake.resize(CURL_HELLO.len(), 0xab);
        let fake2 = fake.clone();
        let evs = recorded(async move |rec: &Recorder| {
            let (mut client_app, mut client) = pair().await;
            let (mut target, mut server_app) = pair().await;
            let conn = opened(rec, &client_app, &target).await;
            let relay = async {
                let r = relay_inspecting(
                    &mut client,
                    &mut target,
                    &conn,
                    None,
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
                (r, client, target)
            };
            let peers = async {
                server_app.write_all(b"220 ready\r\n").await.unwrap();
                let mut line = [0u8; 11];
                client_app.read_exact(&mut line).await.unwrap();
                assert_eq!(&line, b"220 ready\r\n");
                client_app.write_all(b"STARTTLS\r\n").await.unwrap();
                let mut got = [0u8; 10];
                server_app.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"STARTTLS\r\n");
                // Looks like a ClientHello for six bytes, is none: relayed.
                client_app.write_all(&fake2).await.unwrap();
                let mut got = vec![0u8; fake2.len()];
                server_app.read_exact(&mut got).await.unwrap();
                assert!(got == fake2);
                server_app.write_all(b"220 go ahead\r\n").await.unwrap();
                let mut line = [0u8; 14];
                client_app.read_exact(&mut line).await.unwrap();
                // The ClientHello, in two writes.
                client_app.write_all(&CURL_HELLO[..3]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                client_app.write_all(&CURL_HELLO[3..]).await.unwrap();
                (client_app, server_app)
            };
            let ((r, _client, mut target), (_client_app, mut server_app)) =
                tokio::join!(relay, peers);
            // The sockets go on: the server's answer to the ClientHello is read from its
            // socket, by whoever intercepts.
            server_app.write_all(b"\x16\x03\x03\x00\x7a").await.unwrap();
            let mut first = [0u8; 5];
            target.read_exact(&mut first).await.unwrap();
            assert_eq!(&first, b"\x16\x03\x03\x00\x7a");
            conn.close(Ok(())).await;
            let Inspected::ClientHello { so_far, hello } = r else {
                panic!("{r:?}");
            };
            assert_eq!(&hello[..], CURL_HELLO);
            assert_eq!(
                so_far,
                Relayed {
                    up: 10 + fake2.len() as u64,
                    down: 11 + 14
                }
            );
        })
        .await;
        let mut up = b"STARTTLS\r\n".to_vec();
        up.extend_from_slice(&fake);
        assert!(payload(&evs, Direction::Send) == up);
        assert_eq!(
            payload(&evs, Direction::Recv),
            b"220 ready\r\n220 go ahead\r\n"
        );
    }

    /// `--replace` through [`relay`]: a match split over two of the server's writes is
    /// replaced, a held byte is passed on after the stall flush (the client gets it without
    /// sending more), a c2s rule applies up; records show the bytes as sent and an `edit`
    /// record before them.
    async fn rewrites(rec: &Recorder) {
        use crate::rewrite::rule::parse;
        let rules: Vec<_> = ["s2c:/Boo!/Yay!/", "c2s:/ping/PONG/"]
            .iter()
            .map(|r| std::sync::Arc::new(parse(r).unwrap()))
            .collect();
        let rec = rec.clone().with_rules(&rules);
        let (mut client_app, mut client) = pair().await;
        let (mut target, mut server_app) = pair().await;
        let conn = opened(&rec, &client_app, &target).await;
        let relay = tokio::spawn(async move {
            let r = relay(&mut client, &mut target, &conn, None).await;
            conn.close(Ok(())).await;
            r.unwrap()
        });
        server_app.write_all(b"Bo").await.unwrap();
        client_app.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server_app.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PONG");
        server_app.write_all(b"o! B").await.unwrap();
        // "B" may start "Boo!": held, then flushed after the stall time.
        let mut got = [0u8; 6];
        client_app.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"Yay! B");
        drop(server_app);
        client_app.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client_app.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"");
        assert_eq!(relay.await.unwrap(), Relayed { up: 4, down: 6 });
    }

    #[tokio::test]
    async fn rewrites_not_recorded() {
        rewrites(&Recorder::disabled()).await;
    }

    #[tokio::test]
    async fn rewrites_recorded() {
        let evs = recorded(rewrites).await;
        assert_eq!(payload(&evs, Direction::Recv), b"Yay! B");
        assert_eq!(payload(&evs, Direction::Send), b"PONG");
        let edits: Vec<_> = evs
            .iter()
            .filter_map(|e| match &e.detail {
                Detail::Edit {
                    dir,
                    rule,
                    offset,
                    before,
                    after,
                } => Some((*dir, rule.as_str(), *offset, &before[..], &after[..])),
                _ => None,
            })
            .collect();
        assert_eq!(
            edits,
            [
                (
                    Direction::Send,
                    "c2s:/ping/PONG/",
                    0,
                    &b"ping"[..],
                    &b"PONG"[..]
                ),
                (
                    Direction::Recv,
                    "s2c:/Boo!/Yay!/",
                    0,
                    &b"Boo!"[..],
                    &b"Yay!"[..]
                ),
            ]
        );
    }

    /// `--replace` in [`relay_inspecting`] (`--tls` on a connection that has not started
    /// TLS): both directions rewritten, a held byte flushed after the stall time.
    #[tokio::test]
    async fn inspecting_relay_rewrites() {
        use crate::rewrite::rule::parse;
        let rules: Vec<_> = ["both:/Boo!/Yay!/"]
            .iter()
            .map(|r| std::sync::Arc::new(parse(r).unwrap()))
            .collect();
        let rec = Recorder::disabled().with_rules(&rules);
        let (mut client_app, mut client) = pair().await;
        let (mut target, mut server_app) = pair().await;
        let conn = opened(&rec, &client_app, &target).await;
        let relay = tokio::spawn(async move {
            relay_inspecting(
                &mut client,
                &mut target,
                &conn,
                None,
                Duration::from_secs(10),
            )
            .await
            .unwrap()
        });
        client_app.write_all(b"Bo").await.unwrap();
        client_app.write_all(b"o! B").await.unwrap();
        let mut got = [0u8; 6];
        server_app.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"Yay! B");
        server_app.write_all(b"x Boo!").await.unwrap();
        let mut got = [0u8; 6];
        client_app.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"x Yay!");
        drop((client_app, server_app));
        let r = relay.await.unwrap();
        assert!(
            matches!(r, Inspected::Ended(Relayed { up: 6, down: 6 })),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn idle_timeout() {
        let (_client_app, mut client) = pair().await;
        let (mut target, _server_app) = pair().await;
        let rec = Recorder::disabled();
        let conn = rec.conn("forward", Transport::Tcp, client.peer_addr().unwrap());
        let r = relay(
            &mut client,
            &mut target,
            &conn,
            Some(Duration::from_millis(50)),
        )
        .await;
        assert!(matches!(r, Err(RelayError::Idle(_))), "{r:?}");
    }
}
