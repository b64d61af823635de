//! The HTTP/1.1 machinery the forward and the reverse proxy share: reading request heads
//! from a client within the limits, one request/response exchange with a server connection
//! (request body and response relayed at the same time, so `Expect: 100-continue` and early
//! answers work), keep-alive on both sides, and the server connections' records.
//!
//! What is recorded for each server connection (one [`Conn`]): the request bytes exactly as
//! sent to the server (origin-form, hop-by-hop fields removed) and the response bytes
//! exactly as the server sent them, between the client's address and the server's; so the
//! pcapng stream dissects as the HTTP the server saw.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::body::{self, BodyError, Decoder, Framing};
use super::head::{self, HeadError, RequestHead, ResponseHead};
use super::message;
use super::stream::{ReadHalf, Stream};
use crate::model::{Direction, TlsIntercepted, TlsLeg, Transport};
use crate::proxy::Ctx;
use crate::proxy::raw_tls::{Leg, Tap};
use crate::proxy::record::Conn;
use crate::proxy::target::{DialError, FailKind, Target};
use crate::rewrite::hook::Kind as HookKind;

/// Bytes read at a time, and the client output buffered before a write.
pub const READ_CHUNK: usize = 64 * 1024;

/// A client connection with its read buffer and its pending output.
pub struct Client {
    /// Which proxy serves it, for log lines (`http`, `reverse`).
    pub what: &'static str,
    pub stream: Stream,
    pub peer: SocketAddr,
    pub listen: SocketAddr,
    pub buf: BytesMut,
    /// Request heads read so far.
    pub requests: u32,
    /// When the client spoke TLS (`proxy reverse --tls`): what its side negotiated; its
    /// requests then go to the servers over TLS too.
    pub tls: Option<TlsLeg>,
    /// `--pcap-tls raw` with a TLS client: the records of its leg, which every server
    /// connection made for it shares ([`Conn::share_raw`]).
    pub raw: Option<Conn>,
}

/// How reading a request head ended without a head.
#[derive(Debug)]
pub enum HeadFail {
    /// The client closed (or went idle) between requests: close quietly.
    Closed,
    /// The client stopped part-way through a head: answer 408.
    Timeout,
    /// Unparsable or over the limits: answer with the error's status.
    Bad(HeadError),
    Io(io::Error),
}

impl Client {
    pub fn new(what: &'static str, stream: Stream, peer: SocketAddr) -> Client {
        let listen = stream.tcp().local_addr().unwrap_or(peer);
        Client {
            what,
            stream,
            peer,
            listen,
            buf: BytesMut::with_capacity(8 * 1024),
            requests: 0,
            tls: None,
            raw: None,
        }
    }

    /// The next request head: the first must come within the handshake timeout, later ones
    /// within the idle timeout (keep-alive); each head whole within the handshake timeout.
    /// None when the connection is over (a failure is answered first, as HTTP wants).
    pub async fn next_request(&mut self, limits: &crate::proxy::Limits) -> Option<RequestHead> {
        let wait = if self.requests == 0 {
            Some(limits.handshake)
        } else {
            limits.idle
        };
        match self.read_head(wait, limits.handshake).await {
            Ok(h) => {
                self.requests += 1;
                Some(h)
            }
            Err(f) => {
                self.head_failed(f).await;
                None
            }
        }
    }

    /// Reads more bytes into the buffer; 0 at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        fill(&mut self.stream, &mut self.buf).await
    }

    /// Reads the next request head: waits for its first byte up to `wait` (None: for ever),
    /// then for the whole head up to `head_time` (a client sending a head slowly, byte by
    /// byte, gets 408 when that runs out however it trickles).
    pub async fn read_head(
        &mut self,
        wait: Option<Duration>,
        head_time: Duration,
    ) -> Result<RequestHead, HeadFail> {
        if self.buf.is_empty() {
            let first = async { self.fill().await };
            let n = match wait {
                Some(w) => tokio::time::timeout(w, first)
                    .await
                    .map_err(|_| HeadFail::Closed)?,
                None => first.await,
            }
            .map_err(HeadFail::Io)?;
            if n == 0 {
                return Err(HeadFail::Closed);
            }
        }
        let whole = async {
            loop {
                match head::parse_request(&self.buf) {
                    Ok(Some((h, n))) => {
                        self.buf.advance(n);
                        return Ok(h);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(HeadFail::Bad(e)),
                }
                match self.fill().await {
                    Ok(0) => {
                        return Err(if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                            HeadFail::Closed
                        } else {
                            HeadFail::Bad(HeadError::Malformed("connection closed inside the head"))
                        });
                    }
                    Ok(_) => {}
                    Err(e) => return Err(HeadFail::Io(e)),
                }
            }
        };
        tokio::time::timeout(head_time, whole)
            .await
            .map_err(|_| HeadFail::Timeout)?
    }

    /// Sends a response the proxy made itself.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        write_all(&mut self.stream, bytes).await
    }

    /// Answers an error (and logs it): `status` with a one-line body saying `why`.
    pub async fn fail(&mut self, status: u16, why: &str, close: bool) {
        tracing::warn!(
            "{}: {}: {status} {}: {why}",
            self.what,
            self.peer,
            message::reason(status)
        );
        let _ = self
            .send(&message::error_response(status, why, &[], close))
            .await;
    }

    /// Answers a failed head read as HTTP wants it; never keeps the connection.
    pub async fn head_failed(&mut self, f: HeadFail) {
        match f {
            HeadFail::Closed | HeadFail::Io(_) => {}
            HeadFail::Timeout => {
                self.fail(408, "request head not received in time", true)
                    .await;
            }
            HeadFail::Bad(e) => {
                self.fail(e.status(), &e.to_string(), true).await;
            }
        }
    }
}

/// Writes all of `bytes` and flushes them (a TLS stream holds written bytes until a flush
/// or the next write; a TCP stream's flush does nothing).
pub async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

async fn fill(stream: &mut Stream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    stream.read_buf(buf).await
}

async fn with_idle<T>(
    idle: Option<Duration>,
    f: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match idle {
        Some(d) => tokio::time::timeout(d, f)
            .await
            .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::ETIMEDOUT))),
        None => f.await,
    }
}

/// A connection to a server, recorded.
pub struct Upstream {
    /// Host (lowercase) and port it was dialled for.
    pub key: (String, u16),
    pub stream: Stream,
    pub buf: BytesMut,
    pub rec: Conn,
    /// Exchanges completed on it.
    pub served: u32,
    /// The HTTP rules (`--set-header`...) of its two directions: the requests sent and the
    /// responses read go through them (None without HTTP rules).
    pub http: Option<crate::proxy::http::rules::Rules>,
}

/// Why a server could not be reached, as the status the client gets.
pub fn dial_status(e: &DialError) -> u16 {
    match e.kind() {
        FailKind::TimedOut => 504,
        _ => 502,
    }
}

/// Why no server connection was made.
#[derive(Debug, thiserror::Error)]
pub enum UpFail {
    #[error(transparent)]
    Dial(#[from] DialError),
    /// TLS to the server failed (its certificate did not verify, its handshake failed).
    #[error("{0}: TLS: {1}")]
    Tls(String, String),
}

impl UpFail {
    /// The status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            UpFail::Dial(e) => dial_status(e),
            UpFail::Tls(..) => 502,
        }
    }
}

impl Upstream {
    /// Connects to `target` for `client` (over TLS when the client spoke TLS) and records
    /// the `open` (with the failure, if any).
    pub async fn dial(
        ctx: &Ctx,
        comm: &'static str,
        proxy: &str,
        client: &Client,
        target: &Target,
    ) -> Result<Upstream, UpFail> {
        let rec = ctx.recorder.conn(comm, Transport::Tcp, client.peer);
        let requested = target.to_string();
        match ctx.dialer.connect(target).await {
            Ok(d) => {
                let (stream, tls) = match (&client.tls, &ctx.tls) {
                    (Some(client_leg), Some(mitm)) => {
                        // The server's name when it has one, else the name the client asked
                        // capagent for (an address is verified as such without either).
                        let sni = match &target.host {
                            crate::proxy::target::Host::Name(n) => Some(n.as_str()),
                            crate::proxy::target::Host::Ip(_) => client_leg.sni.as_deref(),
                        };
                        let host = target.host.name();
                        let raw = client
                            .raw
                            .as_ref()
                            .and_then(|leg| rec.share_raw(leg, &d.stream));
                        let server = Tap::new(d.stream, Leg::Server, raw);
                        let connected = tokio::time::timeout(
                            ctx.limits.handshake,
                            mitm.connect_http(server, sni, &host),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(Box::new(crate::mitm::intercept::LegFailed {
                                error: crate::mitm::intercept::MitmError::Server(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    format!(
                                        "the TLS handshake took longer than {:?} (--handshake-timeout)",
                                        ctx.limits.handshake
                                    ),
                                )),
                                leg: TlsLeg::default(),
                            }))
                        });
                        let mut info = TlsIntercepted {
                            client: client_leg.clone(),
                            ..TlsIntercepted::default()
                        };
                        match connected {
                            Ok(s) => {
                                info.server = s.leg;
                                info.server_cert = s.cert;
                                (Stream::TlsServer(Box::new(s.stream)), Some(info))
                            }
                            Err(f) => {
                                let why = f.error.to_string();
                                info.server = f.leg;
                                info.error = Some(why.clone());
                                rec.open_tls(
                                    proxy,
                                    Some(client.listen),
                                    requested.clone(),
                                    target.port,
                                    d.resolved,
                                    Ok(()),
                                    Some(info),
                                )
                                .await;
                                rec.close(Err(&io::Error::from_raw_os_error(libc::EPROTO)))
                                    .await;
                                return Err(UpFail::Tls(requested, why));
                            }
                        }
                    }
                    _ => (Stream::Tcp(d.stream), None),
                };
                rec.open_tls(
                    proxy,
                    Some(client.listen),
                    requested,
                    target.port,
                    d.resolved,
                    Ok(()),
                    tls,
                )
                .await;
                Ok(Upstream {
                    key: (host_key(target), target.port),
                    stream,
                    buf: BytesMut::with_capacity(READ_CHUNK),
                    http: crate::proxy::http::rules::Rules::of(&rec),
                    rec,
                    served: 0,
                })
            }
            Err(e) => {
                let io = e.io();
                rec.open(
                    proxy,
                    Some(client.listen),
                    requested,
                    target.port,
                    None,
                    Err(&io),
                )
                .await;
                rec.close(Err(&io)).await;
                Err(e.into())
            }
        }
    }

    /// Ends the connection's records.
    pub async fn finish(self, result: Result<(), &io::Error>) {
        self.rec.close(result).await;
    }
}

/// The key a server connection is reused under.
pub fn host_key(t: &Target) -> String {
    match &t.host {
        crate::proxy::target::Host::Name(n) => n.to_ascii_lowercase(),
        crate::proxy::target::Host::Ip(ip) => ip.to_string(),
    }
}

/// How an exchange failed.
#[derive(Debug)]
pub enum Fail {
    /// The server failed; `responded`: the client already got part of a response, so it
    /// can only be cut off; `retry`: nothing at all came back on a reused connection, so the
    /// request may be sent again on a new one.
    Server {
        why: String,
        timeout: bool,
        responded: bool,
        retry: bool,
    },
    /// The client's body was malformed.
    Body { err: BodyError, responded: bool },
    /// The client went away or failed.
    Client(io::Error),
}

/// What a finished exchange leaves.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// The client connection may carry another request.
    pub client_keep: bool,
    /// The server connection may carry another request.
    pub server_keep: bool,
}

/// One request and its response: sends `up_head` and the client's body (framed by
/// `framing`, re-chunked when chunked) to `up`, relays the response to the client.
pub async fn exchange(
    client: &mut Client,
    up: &mut Upstream,
    req: &RequestHead,
    up_head: &RequestHead,
    framing: Framing,
    idle: Option<Duration>,
) -> Result<Done, Fail> {
    let (received, sent) = send_and_receive(client, up, req, up_head, framing, idle).await;
    match received {
        Ok(Received::Switched(head)) => {
            if !matches!(sent, Some(Ok(()))) {
                return Err(Fail::Server {
                    why: "101 Switching Protocols before the request was sent".into(),
                    timeout: false,
                    responded: false,
                    retry: false,
                });
            }
            up.served += 1;
            switch_protocols(client, up, &head, idle).await
        }
        Ok(Received::Response {
            client_close,
            server_keep,
        }) => {
            // A response that came before the whole request was sent leaves the client's
            // stream in the middle of a body: neither side can go on.
            let complete = matches!(sent, Some(Ok(())));
            up.served += 1;
            Ok(Done {
                client_keep: !client_close && complete,
                server_keep: server_keep && complete,
            })
        }
        Err(f) => Err(f),
    }
}

/// The request (head and body) sent and the response relayed at the same time; returns how
/// the response side ended and, if it got that far, how sending ended.
async fn send_and_receive(
    client: &mut Client,
    up: &mut Upstream,
    req: &RequestHead,
    up_head: &RequestHead,
    framing: Framing,
    idle: Option<Duration>,
) -> (Result<Received, Fail>, Option<Result<(), ()>>) {
    let reused = up.served > 0;
    let client_minor = req.minor;
    let client_keep = message::request_keep_alive(req);
    let upgrade = message::upgrade_of(req).is_some();
    let (mut crd, mut cwr) = client.stream.split();
    let (mut urd, mut uwr) = up.stream.split();
    let cbuf = &mut client.buf;
    let ubuf = &mut up.buf;
    let rec = &up.rec;
    let (mut c2s, mut s2c) = match &mut up.http {
        Some(r) => (Some(&mut r.c2s), Some(&mut r.s2c)),
        None => (None, None),
    };

    let send = async {
        let mut head_bytes = head::write_request(up_head);
        hooked(rec, Direction::Send, HookKind::Head, &mut head_bytes)
            .await
            .map_err(SendFail::Client)?;
        // The head and whatever body is already here go in one write.
        let mut dec = Decoder::new(framing);
        let rechunk = dec.is_chunked();
        loop {
            while !dec.is_done() && !cbuf.is_empty() {
                let step = dec.decode(cbuf).map_err(SendFail::Body)?;
                let n = step.consumed;
                if rec.hook().is_none() {
                    if rechunk {
                        head_bytes.extend_from_slice(&body::chunk(step.data));
                    } else {
                        head_bytes.extend_from_slice(step.data);
                    }
                } else {
                    let mut piece = step.data.to_vec();
                    hooked(rec, Direction::Send, HookKind::Body, &mut piece)
                        .await
                        .map_err(SendFail::Client)?;
                    if rechunk {
                        head_bytes.extend_from_slice(&body::chunk(&piece));
                    } else {
                        head_bytes.extend_from_slice(&piece);
                    }
                }
                cbuf.advance(n);
                if n == 0 {
                    break;
                }
            }
            if dec.is_done() && rechunk {
                head_bytes.extend_from_slice(&body::last_chunk(dec.trailers()));
            }
            if let Some(rw) = c2s.as_deref_mut() {
                // The HTTP rules: what they pass on is sent (and recorded) instead.
                head_bytes = rw.pass(rec, &head_bytes, false).await;
            }
            if !head_bytes.is_empty() {
                rec.data_slice(Direction::Send, &head_bytes).await;
                write_all(&mut uwr, &head_bytes)
                    .await
                    .map_err(SendFail::Server)?;
                head_bytes.clear();
            }
            if dec.is_done() {
                return Ok::<(), SendFail>(());
            }
            if cbuf.capacity() - cbuf.len() < READ_CHUNK / 4 {
                cbuf.reserve(READ_CHUNK);
            }
            let n = with_idle(idle, crd.read_buf(cbuf))
                .await
                .map_err(SendFail::Client)?;
            if n == 0 {
                return Err(SendFail::Client(io::Error::from(
                    io::ErrorKind::UnexpectedEof,
                )));
            }
        }
    };

    let recv = async {
        let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut got_any = false;
        // Part of the final response reached the client.
        let mut wrote = false;
        let mut read_up = async |ubuf: &mut BytesMut, urd: &mut ReadHalf<'_>| {
            if ubuf.capacity() - ubuf.len() < READ_CHUNK / 4 {
                ubuf.reserve(READ_CHUNK);
            }
            let before = ubuf.len();
            let n = with_idle(idle, urd.read_buf(ubuf)).await?;
            if let Some(rw) = s2c.as_deref_mut() {
                // The HTTP rules: the response is read as they pass it on (and recorded so).
                let got = ubuf.split_off(before);
                let out = rw.pass(rec, &got, n == 0).await;
                ubuf.extend_from_slice(&out);
                rec.data_slice(Direction::Recv, &out).await;
                return Ok(if n == 0 { out.len() } else { n });
            }
            rec.data_slice(Direction::Recv, &ubuf[before..]).await;
            Ok::<usize, io::Error>(n)
        };
        let server_fail =
            |why: String, timeout: bool, responded: bool, got_any: bool| Fail::Server {
                why,
                timeout,
                responded,
                retry: reused && !got_any,
            };
        // Interim (1xx) responses, then the final one.
        let head: ResponseHead = loop {
            let parsed = loop {
                match head::parse_response(ubuf) {
                    Ok(Some(x)) => break x,
                    Ok(None) => {}
                    Err(e) => {
                        return Err(server_fail(
                            format!("bad response head: {e}"),
                            false,
                            false,
                            true,
                        ));
                    }
                }
                match read_up(ubuf, &mut urd).await {
                    Ok(0) => {
                        let why = "server closed the connection without a response".to_string();
                        return Err(server_fail(why, false, false, got_any));
                    }
                    Ok(_) => got_any = true,
                    Err(e) => {
                        let timeout = e.raw_os_error() == Some(libc::ETIMEDOUT);
                        return Err(server_fail(
                            format!("reading the response: {e}"),
                            timeout,
                            false,
                            got_any,
                        ));
                    }
                }
            };
            let (h, n) = parsed;
            ubuf.advance(n);
            if (100..200).contains(&h.status) {
                if h.status == 101 && upgrade {
                    return Ok(Received::Switched(h));
                }
                if h.status == 101 {
                    return Err(server_fail(
                        "unexpected 101 Switching Protocols".into(),
                        false,
                        false,
                        true,
                    ));
                }
                if client_minor >= 1 {
                    let interim = ResponseHead {
                        minor: 1,
                        status: h.status,
                        reason: h.reason.clone(),
                        headers: message::end_to_end(&h.headers),
                    };
                    write_all(&mut cwr, &head::write_response(&interim))
                        .await
                        .map_err(Fail::Client)?;
                }
                continue;
            }
            break h;
        };
        let framing = body::response_framing(&req.method, &head)
            .map_err(|e| server_fail(format!("bad response framing: {e}"), false, false, true))?;
        let chunked_in = framing == Framing::Chunked;
        let rechunk = chunked_in && client_minor >= 1;
        let client_close = !client_keep || framing == Framing::Close || (chunked_in && !rechunk);
        let mut to_client = message::client_response(&head, rechunk, client_close);
        if chunked_in && !rechunk {
            // Un-chunked for an HTTP/1.0 client: delimited by the close, never by a length
            // the server may have sent alongside its chunking.
            to_client.headers.retain(|h| !h.is("content-length"));
        }
        if client_minor == 0 && !client_close {
            // An HTTP/1.0 client that asked for keep-alive needs to hear it granted.
            to_client
                .headers
                .push(head::Header::new("Connection", "keep-alive"));
        }
        let mut head_out = head::write_response(&to_client);
        hooked(rec, Direction::Recv, HookKind::Head, &mut head_out)
            .await
            .map_err(Fail::Client)?;
        out.extend_from_slice(&head_out);
        let mut dec = Decoder::new(framing);
        loop {
            while !dec.is_done() && !ubuf.is_empty() {
                let step = dec.decode(ubuf).map_err(|e| {
                    server_fail(format!("bad response body: {e}"), false, wrote, true)
                })?;
                let n = step.consumed;
                if rec.hook().is_none() {
                    if rechunk {
                        out.extend_from_slice(&body::chunk(step.data));
                    } else {
                        out.extend_from_slice(step.data);
                    }
                } else {
                    let mut piece = step.data.to_vec();
                    hooked(rec, Direction::Recv, HookKind::Body, &mut piece)
                        .await
                        .map_err(Fail::Client)?;
                    if rechunk {
                        out.extend_from_slice(&body::chunk(&piece));
                    } else {
                        out.extend_from_slice(&piece);
                    }
                }
                ubuf.advance(n);
                if n == 0 {
                    break;
                }
            }
            if dec.is_done() && rechunk {
                out.extend_from_slice(&body::last_chunk(dec.trailers()));
            }
            if !out.is_empty() {
                write_all(&mut cwr, &out).await.map_err(Fail::Client)?;
                out.clear();
                wrote = true;
            }
            if dec.is_done() {
                break;
            }
            match read_up(ubuf, &mut urd).await {
                Ok(0) => {
                    if dec.eof() {
                        break;
                    }
                    return Err(server_fail(
                        "server closed the connection inside the body".into(),
                        false,
                        wrote,
                        true,
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    let timeout = e.raw_os_error() == Some(libc::ETIMEDOUT);
                    return Err(server_fail(
                        format!("reading the body: {e}"),
                        timeout,
                        wrote,
                        true,
                    ));
                }
            }
        }
        let server_keep = framing != Framing::Close && message::response_keep_alive(&head);
        Ok::<Received, Fail>(Received::Response {
            client_close,
            server_keep,
        })
    };

    tokio::pin!(send);
    tokio::pin!(recv);
    let mut sent: Option<Result<(), ()>> = None;
    let received = loop {
        tokio::select! {
            r = &mut send, if sent.is_none() => {
                match r {
                    // The client failed or sent a bad body: the exchange is over.
                    Err(SendFail::Client(e)) => return (Err(Fail::Client(e)), None),
                    Err(SendFail::Body(err)) => {
                        return (Err(Fail::Body { err, responded: false }), None);
                    }
                    Err(SendFail::Server(e)) => {
                        // Wait for the response all the same: the server may have answered
                        // before it stopped reading (e.g. 413).
                        tracing::debug!("sending the request to the server: {e}");
                        sent = Some(Err(()));
                    }
                    Ok(()) => sent = Some(Ok(())),
                }
            }
            r = &mut recv => break r,
        }
    };
    (received, sent)
}

/// `--hook`: `bytes` (a head or a piece of a body about to be sent in `dir`) through the
/// hook, its changes recorded as `edit` records; the error when it closes the connection.
async fn hooked(rec: &Conn, dir: Direction, kind: HookKind, bytes: &mut Vec<u8>) -> io::Result<()> {
    let Some(hook) = rec.hook() else {
        return Ok(());
    };
    let mut edits = Vec::new();
    let flow = hook.apply(dir, kind, bytes, &mut edits).await;
    for e in edits {
        rec.edit(dir, e).await;
    }
    match flow {
        crate::rewrite::hook::Flow::Go => Ok(()),
        crate::rewrite::hook::Flow::Close => Err(io::Error::from_raw_os_error(libc::ECONNABORTED)),
    }
}

/// How the response side of an exchange ended.
enum Received {
    /// A final response relayed.
    Response {
        client_close: bool,
        server_keep: bool,
    },
    /// The server agreed to the client's Upgrade (its 101 not yet relayed).
    Switched(ResponseHead),
}

/// After a `101 Switching Protocols` to an Upgrade request (WebSocket...): relays the 101,
/// then the bytes both ways (what either side sent early included) until both sides end;
/// recorded on the server connection's stream like any relay. Neither connection carries
/// HTTP afterwards.
async fn switch_protocols(
    client: &mut Client,
    up: &mut Upstream,
    head: &ResponseHead,
    idle: Option<Duration>,
) -> Result<Done, Fail> {
    let mut out = head::write_response(&message::switching_response(head));
    // What the server sent after its 101 (recorded when it was read).
    out.extend_from_slice(&up.buf);
    up.buf.clear();
    write_all(&mut client.stream, &out)
        .await
        .map_err(Fail::Client)?;
    if !client.buf.is_empty() {
        // What the client sent after its request, before the answer.
        up.rec.data_slice(Direction::Send, &client.buf).await;
        let early = std::mem::take(&mut client.buf);
        if let Err(e) = write_all(&mut up.stream, &early).await {
            return Err(Fail::Server {
                why: format!("writing to the server after the 101: {e}"),
                timeout: false,
                responded: true,
                retry: false,
            });
        }
    }
    let relayed = match (&mut client.stream, &mut up.stream) {
        (Stream::Tcp(c), Stream::Tcp(u)) => crate::proxy::relay::relay(c, u, &up.rec, idle).await,
        (c, u) => crate::proxy::relay::relay_streams(c, u, &up.rec, idle).await,
    };
    match relayed {
        Ok(_) => Ok(Done {
            client_keep: false,
            server_keep: false,
        }),
        Err(e) => {
            tracing::debug!("{}: {}: after the upgrade: {e}", client.what, client.peer);
            Err(Fail::Client(e.io()))
        }
    }
}

#[derive(Debug)]
enum SendFail {
    Client(io::Error),
    Server(io::Error),
    Body(BodyError),
}

/// Sends one request to `target` on `up` (re-using it when it was dialled for the same
/// target, else dialling; an idempotent request without a body whose re-used connection
/// turned out closed is sent once more on a new one) and relays the response. Errors are
/// answered to the client (502/504, 400 for a bad body). Returns whether the client
/// connection may carry another request.
#[allow(clippy::too_many_arguments)]
pub async fn forward_request(
    client: &mut Client,
    up: &mut Option<Upstream>,
    target: &Target,
    req: &RequestHead,
    up_head: &RequestHead,
    framing: Framing,
    ctx: &Ctx,
    comm: &'static str,
    proxy: &str,
) -> bool {
    let key = (host_key(target), target.port);
    for attempt in 0..2 {
        if up.as_ref().is_some_and(|u| u.key != key)
            && let Some(old) = up.take()
        {
            old.finish(Ok(())).await;
        }
        let u = match up {
            Some(u) => u,
            None => match Upstream::dial(ctx, comm, proxy, client, target).await {
                Ok(u) => up.insert(u),
                Err(e) => {
                    let close = framing != Framing::Empty || !message::request_keep_alive(req);
                    client.fail(e.status(), &e.to_string(), close).await;
                    return !close;
                }
            },
        };
        let result = exchange(client, u, req, up_head, framing, ctx.limits.idle).await;
        match result {
            Ok(done) => {
                if !done.server_keep
                    && let Some(u) = up.take()
                {
                    u.finish(Ok(())).await;
                }
                return done.client_keep;
            }
            Err(Fail::Server {
                why,
                timeout,
                responded,
                retry,
            }) => {
                let errno = if timeout {
                    libc::ETIMEDOUT
                } else {
                    libc::ECONNABORTED
                };
                if let Some(u) = up.take() {
                    u.finish(Err(&io::Error::from_raw_os_error(errno))).await;
                }
                if retry && attempt == 0 && framing == Framing::Empty {
                    tracing::debug!("re-used server connection closed ({why}); retrying");
                    continue;
                }
                if responded {
                    tracing::warn!(
                        "{}: {}: response from {target} cut short: {why}",
                        client.what,
                        client.peer
                    );
                } else {
                    client
                        .fail(
                            if timeout { 504 } else { 502 },
                            &format!("{target}: {why}"),
                            true,
                        )
                        .await;
                }
                return false;
            }
            Err(Fail::Body { err, responded }) => {
                if let Some(u) = up.take() {
                    u.finish(Err(&io::Error::from_raw_os_error(libc::EPROTO)))
                        .await;
                }
                if !responded {
                    client.fail(400, &err.to_string(), true).await;
                }
                return false;
            }
            Err(Fail::Client(e)) => {
                if let Some(u) = up.take() {
                    u.finish(Err(&e)).await;
                }
                return false;
            }
        }
    }
    false
}
