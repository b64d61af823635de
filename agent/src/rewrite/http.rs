//! Applying the HTTP rules ([`super::http_rule`]) to one direction of an HTTP/1.x stream, as
//! its bytes arrive: the same push/finish shape as [`super::stream::Rewriter`], bytes and
//! [`Edit`]s out.
//!
//! - Heads are parsed whole (`crate::http1::head`); the line and header rules,
//!   `--drop-header`, `--set-header` and `--anticomp` apply to them, in that order. A head
//!   nothing changed passes byte for byte; a changed one is written anew.
//! - Bodies pass as they arrive, unless a body rule applies to the direction: then the whole
//!   body is held (at most `body_max` bytes as received; a larger one passes unchanged),
//!   its chunked and content codings undone, the body rules applied (a count limit counts per
//!   message), and, when they changed something, the content codings applied again and the
//!   body sent with its framing fixed: one chunk (and the trailers) when it was chunked, a
//!   new `Content-Length` when it had one, as it is when it ends with the connection. A body
//!   with an unknown content coding, or that does not decode, passes unchanged. A request
//!   with `Expect: 100-continue` is not held (its client waits for the 100).
//! - Responses are framed by their request's method (HEAD, CONNECT; 1xx, 204, 304): the
//!   client direction queues the methods it saw for the server direction ([`Methods`]).
//!   After a `101` or a successful `CONNECT`, and from the first bytes that are not HTTP,
//!   the direction passes everything unchanged: a stream that is not HTTP is never touched.
//! - Every change is an [`Edit`]: `rule` is `base` plus the index in
//!   [`HttpOptions::text`]'s numbering; `offset` is where the message starts in the stream
//!   as sent (for a body rule: where the body data start, plus the offset in the decoded
//!   body). `--decode-bodies` adds a note (an [`Edit`] with `decoded` set, `before` and
//!   `after` empty): a compressed body's decoded text (capped), recorded as a `decoded`
//!   record; `offset` is where the body's data start.
//!
//! Pure: bytes in, bytes out, no I/O (a body over the limit is logged).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::codec;
use super::http_rule::{Change, HttpOptions, Scope};
use super::rule::Rule;
use super::stream::{Decoded, Edit, Rewriter};
use crate::http1::body::{self, Decoder, Framing};
use crate::http1::head::{self, Header, RequestHead, ResponseHead};

/// The methods of the requests one connection's client direction saw, oldest first, for the
/// server direction's responses (shared by the two [`HttpRewriter`]s of a connection).
pub type Methods = Arc<Mutex<VecDeque<String>>>;

#[derive(Clone, Debug)]
enum Head {
    Req(RequestHead),
    Resp(ResponseHead),
}

impl Head {
    fn headers(&mut self) -> &mut Vec<Header> {
        match self {
            Head::Req(h) => &mut h.headers,
            Head::Resp(h) => &mut h.headers,
        }
    }

    fn write(&self) -> Vec<u8> {
        match self {
            Head::Req(h) => head::write_request(h),
            Head::Resp(h) => head::write_response(h),
        }
    }
}

/// A message whose head was read (and maybe changed).
struct Message {
    head: Head,
    /// The head as received.
    original: Vec<u8>,
    /// Whether the rules changed the head (else `original` is sent).
    changed: bool,
    /// The head's edits; offsets relative to the message's start.
    edits: Vec<Edit>,
    framing: Framing,
}

impl Message {
    fn head_bytes(&self) -> Vec<u8> {
        if self.changed {
            self.head.write()
        } else {
            self.original.clone()
        }
    }
}

enum State {
    /// Waiting for a head.
    Head,
    /// Passing a body on as it arrives (`copy`: the data kept for `--decode-bodies`).
    Stream {
        dec: Decoder,
        copy: Option<(Vec<codec::Coding>, Vec<u8>)>,
        start: u64,
    },
    /// Holding a whole body for the body rules: the bytes as received, the data.
    Hold {
        msg: Box<Message>,
        dec: Decoder,
        raw: Vec<u8>,
        data: Vec<u8>,
    },
    /// Not HTTP, or no longer (an upgrade, a tunnel): everything passes.
    Raw,
}

/// The HTTP rules of one direction of one connection.
pub struct HttpRewriter {
    opts: Arc<HttpOptions>,
    to_server: bool,
    base: usize,
    methods: Methods,
    state: State,
    /// Bytes received and not yet handled (a partial head, or body bytes being decoded).
    input: Vec<u8>,
    /// Bytes passed on so far.
    emitted: u64,
}

impl HttpRewriter {
    /// `to_server`: the client's direction; `base`: added to the edits' rule indices (the
    /// raw rules' count); `methods`: shared with the other direction's rewriter.
    pub fn new(opts: Arc<HttpOptions>, to_server: bool, base: usize, methods: Methods) -> Self {
        HttpRewriter {
            opts,
            to_server,
            base,
            methods,
            state: State::Head,
            input: Vec::new(),
            emitted: 0,
        }
    }

    /// Rewrites `chunk`: appends to `out` what can be passed on now, to `edits` the changes.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>, edits: &mut Vec<Edit>) {
        self.input.extend_from_slice(chunk);
        self.run(out, edits);
    }

    /// The end of the direction: a body that ends with the connection is complete; anything
    /// else held (a partial head or body) passes on as it is.
    pub fn finish(&mut self, out: &mut Vec<u8>, edits: &mut Vec<Edit>) {
        self.run(out, edits);
        match std::mem::replace(&mut self.state, State::Head) {
            State::Hold {
                msg,
                mut dec,
                raw,
                data,
            } => {
                if dec.eof() {
                    self.finish_body(*msg, &dec, raw, data, out, edits);
                } else {
                    self.emit_message_raw(&msg, &raw, out, edits);
                }
            }
            State::Stream {
                mut dec,
                copy,
                start,
            } => {
                if dec.eof() {
                    self.note_decoded(copy, start, edits);
                }
            }
            State::Raw => self.state = State::Raw,
            State::Head => {}
        }
        let rest = std::mem::take(&mut self.input);
        self.emit(&rest, out);
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(bytes);
        self.emitted += bytes.len() as u64;
    }

    fn edit(&self, rule: usize, offset: u64, before: &[u8], after: &[u8]) -> Edit {
        Edit {
            rule: self.base + rule,
            offset,
            before: before.to_vec(),
            after: after.to_vec(),
            decoded: None,
        }
    }

    /// Whether a body rule applies to this direction.
    fn body_rules(&self) -> Vec<(usize, Arc<Rule>)> {
        (self.opts.rules.iter().enumerate())
            .filter(|(_, r)| r.dir.applies(self.to_server))
            .filter_map(|(i, r)| match &r.change {
                Change::Replace {
                    scope: Scope::Body,
                    rule,
                } => Some((self.base + i, rule.clone())),
                _ => None,
            })
            .collect()
    }

    fn run(&mut self, out: &mut Vec<u8>, edits: &mut Vec<Edit>) {
        loop {
            match &mut self.state {
                State::Raw => {
                    let rest = std::mem::take(&mut self.input);
                    self.emit(&rest, out);
                    return;
                }
                State::Head => {
                    if self.input.is_empty() || !self.next_head(out, edits) {
                        return;
                    }
                }
                State::Stream { dec, copy, .. } => {
                    let (consumed, done) = match dec.decode(&self.input) {
                        Ok(step) => {
                            if let Some((_, data)) = copy {
                                data.extend_from_slice(step.data);
                                if data.len() > self.opts.body_max {
                                    // Too large to keep for --decode-bodies.
                                    *copy = None;
                                }
                            }
                            (step.consumed, dec.is_done())
                        }
                        Err(_) => {
                            self.state = State::Raw;
                            continue;
                        }
                    };
                    let bytes: Vec<u8> = self.input.drain(..consumed).collect();
                    self.emit(&bytes, out);
                    if done {
                        if let State::Stream { copy, start, .. } =
                            std::mem::replace(&mut self.state, State::Head)
                        {
                            self.note_decoded(copy, start, edits);
                        }
                    } else if consumed == 0 || self.input.is_empty() {
                        return;
                    }
                }
                State::Hold { dec, raw, data, .. } => {
                    let consumed = match dec.decode(&self.input) {
                        Ok(step) => {
                            data.extend_from_slice(step.data);
                            step.consumed
                        }
                        Err(_) => {
                            // Not a body after all: what was held passes, then the rest.
                            if let State::Hold { msg, raw, .. } =
                                std::mem::replace(&mut self.state, State::Raw)
                            {
                                self.emit_message_raw(&msg, &raw, out, edits);
                            }
                            continue;
                        }
                    };
                    raw.extend(self.input.drain(..consumed));
                    let done = dec.is_done();
                    // (Over the limit whether or not it is complete: the same however the
                    // body arrived.)
                    if raw.len() > self.opts.body_max {
                        tracing::warn!(
                            "HTTP body over {} bytes (--http-body-max): passed unchanged",
                            self.opts.body_max
                        );
                        if let State::Hold { msg, raw, dec, .. } =
                            std::mem::replace(&mut self.state, State::Head)
                        {
                            self.emit_message_raw(&msg, &raw, out, edits);
                            let start = self.emitted;
                            self.state = State::Stream {
                                dec,
                                copy: None,
                                start,
                            };
                        }
                        continue;
                    }
                    if done {
                        if let State::Hold {
                            msg,
                            dec,
                            raw,
                            data,
                        } = std::mem::replace(&mut self.state, State::Head)
                        {
                            self.finish_body(*msg, &dec, raw, data, out, edits);
                        }
                    } else if consumed == 0 || self.input.is_empty() {
                        return;
                    }
                }
            }
        }
    }

    /// Sends a held message's head (with its head edits) and its body as received.
    fn emit_message_raw(
        &mut self,
        msg: &Message,
        raw: &[u8],
        out: &mut Vec<u8>,
        edits: &mut Vec<Edit>,
    ) {
        let start = self.emitted;
        edits.extend(msg.edits.iter().cloned().map(|mut e| {
            e.offset += start;
            e
        }));
        self.emit(&msg.head_bytes(), out);
        self.emit(raw, out);
    }

    /// Parses the head at the start of the input; false when it is not complete yet.
    fn next_head(&mut self, out: &mut Vec<u8>, edits: &mut Vec<Edit>) -> bool {
        let parsed = if self.to_server {
            head::parse_request(&self.input).map(|o| o.map(|(h, n)| (Head::Req(h), n)))
        } else {
            head::parse_response(&self.input).map(|o| o.map(|(h, n)| (Head::Resp(h), n)))
        };
        let (head, n) = match parsed {
            Ok(Some(x)) => x,
            Ok(None) => return false,
            Err(_) => {
                self.state = State::Raw;
                return true;
            }
        };
        let mut after = State::Head;
        let framing = match &head {
            Head::Req(h) => {
                let f = body::request_framing(h);
                if f.is_ok() {
                    self.methods
                        .lock()
                        .expect("methods")
                        .push_back(h.method.to_ascii_uppercase());
                }
                if h.method.eq_ignore_ascii_case("CONNECT") {
                    after = State::Raw;
                }
                f
            }
            Head::Resp(h) if h.status == 101 => {
                after = State::Raw;
                Ok(Framing::Empty)
            }
            Head::Resp(h) if (100..200).contains(&h.status) => Ok(Framing::Empty),
            Head::Resp(h) => {
                let method = (self.methods.lock().expect("methods").pop_front())
                    .unwrap_or_else(|| "GET".into());
                if method == "CONNECT" && (200..300).contains(&h.status) {
                    after = State::Raw;
                }
                body::response_framing(&method, h)
            }
        };
        let Ok(framing) = framing else {
            // Framing this cannot follow: from here on, the bytes pass as they are.
            self.state = State::Raw;
            return true;
        };
        let original: Vec<u8> = self.input.drain(..n).collect();
        let mut msg = Message {
            head,
            original,
            changed: false,
            edits: Vec::new(),
            framing,
        };
        self.change_head(&mut msg);
        let expect_continue = matches!(&msg.head, Head::Req(h) if head::tokens(&h.headers, "expect").iter().any(|t| t == "100-continue"));
        let hold = framing != Framing::Empty
            && !matches!(after, State::Raw)
            && !expect_continue
            && !self.body_rules().is_empty();
        if hold {
            self.state = State::Hold {
                msg: Box::new(msg),
                dec: Decoder::new(framing),
                raw: Vec::new(),
                data: Vec::new(),
            };
            return true;
        }
        self.emit_message_raw(&msg, &[], out, edits);
        let copy = match (self.opts.decode_bodies, framing) {
            (Some(_), Framing::Length(_) | Framing::Chunked | Framing::Close) => {
                let mut h = msg.head.clone();
                let values: Vec<&[u8]> = head::values(h.headers(), "content-encoding")
                    .map(|f| f.value.as_slice())
                    .collect();
                match codec::codings(values) {
                    Ok(c) if !c.is_empty() => Some((c, Vec::new())),
                    _ => None,
                }
            }
            _ => None,
        };
        self.state = match after {
            State::Raw => State::Raw,
            _ if framing == Framing::Empty => State::Head,
            _ => State::Stream {
                dec: Decoder::new(framing),
                copy,
                start: self.emitted,
            },
        };
        true
    }

    /// The head rules, `--drop-header`, `--set-header`, `--anticomp`, in that order.
    fn change_head(&self, msg: &mut Message) {
        let mut edits = Vec::new();
        let to_server = self.to_server;
        let rules = (self.opts.rules.iter().enumerate()).filter(|(_, r)| r.dir.applies(to_server));
        for (i, r) in rules.clone() {
            let Change::Replace { scope, rule } = &r.change else {
                continue;
            };
            match scope {
                Scope::Body => {}
                Scope::Line => {
                    let line = start_line(&msg.head);
                    let (new, n) = replace_all(rule, &line);
                    if n > 0
                        && let Some(h) = set_start_line(&msg.head, &new)
                    {
                        edits.push(self.edit(i, 0, &line, &new));
                        msg.head = h;
                    }
                }
                Scope::Header(name) => {
                    for h in msg.head.headers().iter_mut().filter(|h| h.is(name)) {
                        let (new, n) = replace_all(rule, &h.value);
                        if n > 0 && !new.contains(&b'\r') && !new.contains(&b'\n') {
                            edits.push(self.edit(i, 0, &field(h), &field_of(&h.name, &new)));
                            h.value = new;
                        }
                    }
                }
            }
        }
        for (i, r) in rules.clone() {
            if let Change::Drop { name } = &r.change {
                self.drop_fields(msg.head.headers(), name, i, &mut edits);
            }
        }
        for (i, r) in rules {
            if let Change::Set { name, value } = &r.change {
                let hs = msg.head.headers();
                let before: Vec<u8> = (hs.iter().filter(|h| h.is(name))).flat_map(field).collect();
                let new = Header::new(name, value.clone());
                let after = field(&new);
                if before == after {
                    continue;
                }
                match hs.iter().position(|h| h.is(name)) {
                    Some(p) => {
                        hs[p] = new;
                        let mut k = p + 1;
                        while k < hs.len() {
                            if hs[k].is(name) {
                                hs.remove(k);
                            } else {
                                k += 1;
                            }
                        }
                    }
                    None => hs.push(new),
                }
                edits.push(self.edit(i, 0, &before, &after));
            }
        }
        if self.opts.anticomp && self.to_server {
            let i = self.opts.anticomp_index();
            let hs = msg.head.headers();
            self.drop_fields(hs, "accept-encoding", i, &mut edits);
            for h in hs.iter_mut().filter(|h| h.is("sec-websocket-extensions")) {
                let kept: Vec<&str> = std::str::from_utf8(&h.value)
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|e| {
                        let name = e.split(';').next().unwrap_or("").trim();
                        !name.eq_ignore_ascii_case("permessage-deflate")
                    })
                    .collect();
                let new = kept.join(", ").into_bytes();
                if new != h.value {
                    edits.push(self.edit(i, 0, &field(h), &field_of(&h.name, &new)));
                    h.value = new;
                }
            }
            hs.retain(|h| !(h.is("sec-websocket-extensions") && h.value.is_empty()));
        }
        if !edits.is_empty() {
            msg.changed = true;
            msg.edits.extend(edits);
        }
    }

    fn drop_fields(&self, hs: &mut Vec<Header>, name: &str, rule: usize, edits: &mut Vec<Edit>) {
        let before: Vec<u8> = (hs.iter().filter(|h| h.is(name))).flat_map(field).collect();
        if !before.is_empty() {
            hs.retain(|h| !h.is(name));
            edits.push(self.edit(rule, 0, &before, b""));
        }
    }

    /// A held body is complete: the body rules, then the message goes.
    fn finish_body(
        &mut self,
        mut msg: Message,
        dec: &Decoder,
        raw: Vec<u8>,
        data: Vec<u8>,
        out: &mut Vec<u8>,
        edits: &mut Vec<Edit>,
    ) {
        let values: Vec<Vec<u8>> = head::values(msg.head.headers(), "content-encoding")
            .map(|f| f.value.clone())
            .collect();
        let codings = match codec::codings(values.iter().map(Vec::as_slice)) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("HTTP body left unchanged: {e}");
                return self.emit_message_raw(&msg, &raw, out, edits);
            }
        };
        let text = match codec::decode(&codings, &data, self.opts.body_max) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!("HTTP body left unchanged: {e}");
                return self.emit_message_raw(&msg, &raw, out, edits);
            }
        };
        let decoded_note = self.decoded_note(&codings, &text, false);
        let mut rw = Rewriter::new(&self.body_rules(), text.len() + 1);
        let (mut new, mut body_edits) = (Vec::new(), Vec::new());
        rw.push(&text, &mut new, &mut body_edits);
        rw.flush(&mut new, &mut body_edits);
        if body_edits.is_empty() {
            if let Some(mut e) = decoded_note {
                e.offset = self.emitted + msg.head_bytes().len() as u64;
                edits.push(e);
            }
            return self.emit_message_raw(&msg, &raw, out, edits);
        }
        let encoded = match codec::encode(&codings, &new) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("HTTP body left unchanged: encoding it again: {e}");
                return self.emit_message_raw(&msg, &raw, out, edits);
            }
        };
        let (prefix, body_bytes) = match msg.framing {
            Framing::Chunked => {
                let mut b = body::chunk(&encoded);
                let prefix = b.len() - encoded.len() - 2;
                b.extend_from_slice(&body::last_chunk(dec.trailers()));
                (prefix, b)
            }
            Framing::Length(_) => {
                let hs = msg.head.headers();
                let before: Vec<u8> = (hs.iter().filter(|h| h.is("content-length")))
                    .flat_map(field)
                    .collect();
                let at = hs.iter().position(|h| h.is("content-length"));
                hs.retain(|h| !h.is("content-length"));
                let new_cl = Header::new("Content-Length", encoded.len().to_string());
                let after = field(&new_cl);
                hs.insert(at.unwrap_or(hs.len()).min(hs.len()), new_cl);
                if before != after {
                    msg.changed = true;
                    msg.edits
                        .push(self.edit(body_edits[0].rule - self.base, 0, &before, &after));
                }
                (0, encoded)
            }
            Framing::Close | Framing::Empty => (0, encoded),
        };
        let start = self.emitted;
        let head_bytes = msg.head_bytes();
        let data_start = start + (head_bytes.len() + prefix) as u64;
        self.emit_message_raw(&msg, &[], out, edits);
        if let Some(mut e) = decoded_note {
            e.offset = data_start;
            edits.push(e);
        }
        edits.extend(body_edits.into_iter().map(|mut e| {
            e.offset += data_start;
            e
        }));
        self.emit(&body_bytes, out);
    }

    /// `--decode-bodies`: the note showing a compressed body decoded (offset to be set);
    /// `cut`: `text` is already a prefix of a longer decoded body.
    fn decoded_note(&self, codings: &[codec::Coding], text: &[u8], cut: bool) -> Option<Edit> {
        let max = self.opts.decode_bodies?;
        if codings.is_empty() {
            return None;
        }
        let names: Vec<&str> = codings.iter().map(|c| c.name()).collect();
        let mut e = self.edit(self.opts.decoded_index(), 0, b"", b"");
        e.decoded = Some(Box::new(Decoded {
            encoding: names.join(", "),
            text: text[..text.len().min(max)].to_vec(),
            truncated: cut || text.len() > max,
        }));
        Some(e)
    }

    /// `--decode-bodies` for a body that was passed on as it came.
    fn note_decoded(
        &self,
        copy: Option<(Vec<codec::Coding>, Vec<u8>)>,
        start: u64,
        edits: &mut Vec<Edit>,
    ) {
        let (Some((codings, data)), Some(max)) = (copy, self.opts.decode_bodies) else {
            return;
        };
        // Decoding stops at the cap (a truncated decode is still shown).
        let (text, cut) = match codec::decode(&codings, &data, max) {
            Ok(t) => (t, false),
            Err(codec::CodecError::TooLarge(_)) => (
                codec::decode_prefix(&codings, &data, max).unwrap_or_default(),
                true,
            ),
            Err(e) => {
                tracing::debug!("--decode-bodies: {e}");
                return;
            }
        };
        if let Some(mut e) = self.decoded_note(&codings, &text, cut) {
            e.offset = start;
            edits.push(e);
        }
    }
}

/// `Name: value` as a field line (without its line end).
fn field(h: &Header) -> Vec<u8> {
    field_of(&h.name, &h.value)
}

fn field_of(name: &str, value: &[u8]) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.extend_from_slice(b": ");
    v.extend_from_slice(value);
    v
}

fn start_line(h: &Head) -> Vec<u8> {
    let bytes = h.write();
    let end = bytes
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(bytes.len());
    bytes[..end].to_vec()
}

/// The head with `line` as its start line, when it parses as one.
fn set_start_line(h: &Head, line: &[u8]) -> Option<Head> {
    let mut bytes = line.to_vec();
    bytes.extend_from_slice(b"\r\nHost: x\r\n\r\n");
    match h {
        Head::Req(r) => {
            let (mut new, _) = head::parse_request(&bytes).ok()??;
            new.headers = r.headers.clone();
            Some(Head::Req(new))
        }
        Head::Resp(r) => {
            let (mut new, _) = head::parse_response(&bytes).ok()??;
            new.headers = r.headers.clone();
            Some(Head::Resp(new))
        }
    }
}

/// `rule` applied to all of `text` (its count limit included); the result and the number of
/// replacements.
fn replace_all(rule: &Arc<Rule>, text: &[u8]) -> (Vec<u8>, usize) {
    let mut rw = Rewriter::new(&[(0, rule.clone())], text.len() + 1);
    let (mut out, mut edits) = (Vec::new(), Vec::new());
    rw.push(text, &mut out, &mut edits);
    rw.flush(&mut out, &mut edits);
    (out, edits.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::http_rule::{DEFAULT_BODY_MAX, parse_drop, parse_replace, parse_set};

    /// A direction's output and edits.
    type Out = (Vec<u8>, Vec<Edit>);

    fn opts(rules: &[&str]) -> Arc<HttpOptions> {
        let rules = rules
            .iter()
            .map(|r| {
                let (flag, v) = r.split_once(' ').unwrap();
                match flag {
                    "replace" => parse_replace(v).unwrap(),
                    "set" => parse_set(v).unwrap(),
                    "drop" => parse_drop(v).unwrap(),
                    _ => panic!("{flag}"),
                }
            })
            .collect();
        Arc::new(HttpOptions {
            rules,
            anticomp: false,
            decode_bodies: None,
            body_max: DEFAULT_BODY_MAX,
        })
    }

    /// Both directions of a connection: `req` through the client side, `resp` through the
    /// server side, each cut at `cut` (and finished); outputs and edits.
    fn run(o: &Arc<HttpOptions>, req: &[u8], resp: &[u8], cut: usize) -> (Out, Out) {
        let methods = Methods::default();
        let side = |to_server, input: &[u8]| {
            let mut rw = HttpRewriter::new(o.clone(), to_server, 0, methods.clone());
            let (mut out, mut edits) = (Vec::new(), Vec::new());
            let (a, b) = input.split_at(cut.min(input.len()));
            rw.push(a, &mut out, &mut edits);
            rw.push(b, &mut out, &mut edits);
            rw.finish(&mut out, &mut edits);
            (out, edits)
        };
        let c2s = side(true, req);
        let s2c = side(false, resp);
        (c2s, s2c)
    }

    /// The same result however the input is cut.
    fn same_at_every_cut(o: &Arc<HttpOptions>, req: &[u8], resp: &[u8]) -> (Out, Out) {
        let whole = run(o, req, resp, usize::MAX);
        for cut in 0..=req.len().max(resp.len()) {
            assert_eq!(run(o, req, resp, cut), whole, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn headers_set_dropped_and_replaced() {
        let o = opts(&[
            "replace c2s:header:user-agent:/curl\\/[0-9.]+/agent\\/1/",
            "replace c2s:line:/^GET \\/old/GET \\/new/",
            "drop c2s:Accept",
            "set c2s:X-Test: one",
            "set s2c:Server: capagent",
        ]);
        let req = b"GET /old HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nX-Test: one\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 204 No Content\r\nServer: capagent\r\n\r\n";
        let ((c2s, cedits), (s2c, sedits)) = same_at_every_cut(&o, req, resp);
        assert_eq!(
            String::from_utf8(c2s).unwrap(),
            "GET /new HTTP/1.1\r\nHost: h\r\nUser-Agent: agent/1\r\nX-Test: one\r\n\r\n\
             GET /b HTTP/1.1\r\nHost: h\r\nX-Test: one\r\n\r\n",
            "the second request, unchanged, passes byte for byte"
        );
        let e: Vec<_> = cedits
            .iter()
            .map(|e| {
                (
                    e.rule,
                    e.offset,
                    String::from_utf8_lossy(&e.before).into_owned(),
                    String::from_utf8_lossy(&e.after).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            e,
            [
                (
                    0,
                    0,
                    "User-Agent: curl/8.5.0".into(),
                    "User-Agent: agent/1".into()
                ),
                (1, 0, "GET /old HTTP/1.1".into(), "GET /new HTTP/1.1".into()),
                (2, 0, "Accept: */*".into(), String::new()),
                (3, 0, String::new(), "X-Test: one".into()),
            ]
        );
        assert_eq!(
            String::from_utf8(s2c).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: capagent\r\nContent-Length: 2\r\n\r\nhi\
             HTTP/1.1 204 No Content\r\nServer: capagent\r\n\r\n"
        );
        assert_eq!(sedits.len(), 1);
    }

    #[test]
    fn chunked_body_replaced_in_one_chunk() {
        let o = opts(&["replace s2c:body:/Boo!/Yay!!!/"]);
        let req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nBo!\r\n5\r\no! Bo\r\n3\r\no!.\r\n0\r\nX-T: 1\r\n\r\n";
        let (_, (s2c, edits)) = same_at_every_cut(&o, req, resp);
        assert_eq!(
            String::from_utf8(s2c).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             d\r\nBo!o! Yay!!!.\r\n0\r\nX-T: 1\r\n\r\n"
        );
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nd\r\n".len() as u64;
        assert_eq!(
            edits.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [head + 6],
            "where the replacement is on the wire"
        );
    }

    #[test]
    fn gzip_body_decoded_replaced_encoded_and_length_fixed() {
        let o = opts(&["replace s2c:body:/world/there, everyone/"]);
        let body = codec::encode(&[codec::Coding::Gzip], b"hello world").unwrap();
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nX: y\r\n\r\n",
            body.len()
        )
        .into_bytes();
        resp.extend_from_slice(&body);
        let (_, (s2c, edits)) = run(&o, b"", &resp, usize::MAX);
        let (h, n) = head::parse_response(&s2c).unwrap().unwrap();
        let cl: usize = head::values(&h.headers, "content-length")
            .next()
            .unwrap()
            .text()
            .parse()
            .unwrap();
        assert_eq!(cl, s2c.len() - n);
        assert_eq!(h.headers[1].name, "Content-Length", "in its place");
        assert_eq!(
            codec::decode(&[codec::Coding::Gzip], &s2c[n..], 1000).unwrap(),
            b"hello there, everyone"
        );
        assert_eq!(edits.len(), 2, "Content-Length and the body: {edits:?}");
        assert_eq!(
            (edits[1].before.as_slice(), edits[1].offset),
            (&b"world"[..], n as u64 + 6)
        );
    }

    #[test]
    fn head_responses_upgrades_and_not_http() {
        let o = opts(&["replace s2c:body:/a/b/", "set s2c:X: 1"]);
        // The response to HEAD has a length but no body: the next response follows at once.
        let req = b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
        let methods = Methods::default();
        let mut c = HttpRewriter::new(o.clone(), true, 0, methods.clone());
        let mut s = HttpRewriter::new(o.clone(), false, 0, methods.clone());
        let (mut out, mut edits) = (Vec::new(), Vec::new());
        c.push(req, &mut out, &mut edits);
        assert_eq!(out, req);
        out.clear();
        s.push(resp, &mut out, &mut edits);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: 1\r\n\r\nb"
        );
        // After a 101, the bytes are not HTTP: untouched.
        let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x01a";
        let ((_, _), (out, _)) = run(
            &o,
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
            resp,
            usize::MAX,
        );
        assert!(out.ends_with(b"\r\nX: 1\r\n\r\n\x81\x01a"));
        // Not HTTP at all: untouched, however it arrives.
        let ((c2s, e1), (s2c, e2)) =
            same_at_every_cut(&o, b"\x16\x03\x01\x00\x05hello", b"220 smtp ready\r\na");
        assert_eq!(
            (c2s.as_slice(), s2c.as_slice()),
            (
                &b"\x16\x03\x01\x00\x05hello"[..],
                &b"220 smtp ready\r\na"[..]
            )
        );
        assert!(e1.is_empty() && e2.is_empty());
    }

    #[test]
    fn close_delimited_body_anticomp_and_decoded_record() {
        let mut o = (*opts(&["replace s2c:body:/x/yy/"])).clone();
        o.anticomp = true;
        o.decode_bodies = Some(4);
        let o = Arc::new(o);
        let req = b"GET / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip, br\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-other\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\n\r\naxbx";
        let ((c2s, cedits), (s2c, _)) = same_at_every_cut(&o, req, resp);
        assert_eq!(
            String::from_utf8(c2s).unwrap(),
            "GET / HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Extensions: x-other\r\n\r\n"
        );
        assert_eq!(cedits.len(), 2);
        assert!(cedits.iter().all(|e| e.rule == o.anticomp_index()));
        assert_eq!(s2c, b"HTTP/1.1 200 OK\r\n\r\nayybyy");
        // --decode-bodies on a body passed on as it came: the decoded text, capped.
        let gz = codec::encode(&[codec::Coding::Gzip], b"decoded!").unwrap();
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            gz.len()
        )
        .into_bytes();
        resp.extend_from_slice(&gz);
        let mut o2 = (*o).clone();
        o2.rules.clear();
        let (_, (s2c, edits)) = run(&Arc::new(o2.clone()), b"", &resp, usize::MAX);
        assert_eq!(s2c, resp);
        let head_len = resp.len() - gz.len();
        assert_eq!(
            edits,
            [Edit {
                rule: o2.decoded_index(),
                offset: head_len as u64,
                before: Vec::new(),
                after: Vec::new(),
                decoded: Some(Box::new(Decoded {
                    encoding: "gzip".into(),
                    text: b"deco".to_vec(),
                    truncated: true,
                })),
            }]
        );
        // Exactly at the cap: whole, not truncated; and a held body (a body rule applies,
        // changing nothing here) gives the same note.
        o2.decode_bodies = Some(8);
        let (_, (_, edits)) = run(&Arc::new(o2.clone()), b"", &resp, usize::MAX);
        let whole = Decoded {
            encoding: "gzip".into(),
            text: b"decoded!".to_vec(),
            truncated: false,
        };
        assert_eq!(edits[0].decoded.as_deref(), Some(&whole));
        o2.rules = opts(&["replace s2c:body:/nothing/x/"]).rules.clone();
        let (_, (s2c, edits)) = run(&Arc::new(o2.clone()), b"", &resp, usize::MAX);
        assert_eq!(s2c, resp);
        assert_eq!(
            (edits.len(), edits[0].offset, edits[0].decoded.as_deref()),
            (1, head_len as u64, Some(&whole))
        );
    }

    /// The fuzz target's properties (fuzz/fuzz_targets/rewrite_http.rs) over streams made of
    /// HTTP pieces in pseudo-random order: every cut gives the one-read bytes and edits, and
    /// options that change nothing pass every byte.
    #[test]
    fn pieces_in_any_order() {
        let pieces: [&[u8]; 14] = [
            b"GET / HTTP/1.1\r\nHost: h\r\nX: x1\r\nZ: 1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\naaaaa",
            b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\naa1\r\n0\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\naaa",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nY: q\r\n\r\n2\r\naa\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nX: xx\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nbody until the end a",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"\x81\x05hello",
            b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
            b"\r\n",
            b"garbage",
        ];
        let changing = {
            let mut o = (*opts(&[
                "replace both:body:/a+/bb/",
                "replace both:line:/1/2/",
                "replace both:header:X:/x/yy/",
                "set both:Y: z",
                "drop both:Z",
            ]))
            .clone();
            o.anticomp = true;
            o.decode_bodies = Some(16);
            o.body_max = 64;
            Arc::new(o)
        };
        let watching = Arc::new(HttpOptions {
            rules: Vec::new(),
            anticomp: false,
            decode_bodies: Some(16),
            body_max: 64,
        });
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut changes = 0;
        for _ in 0..60 {
            let mut stream = |n: u64| {
                (0..n)
                    .flat_map(|_| pieces[(next() % pieces.len() as u64) as usize].to_vec())
                    .collect::<Vec<u8>>()
            };
            let req = stream(3);
            let resp = stream(4);
            let ((_, e1), (_, e2)) = same_at_every_cut(&changing, &req, &resp);
            changes += e1.len() + e2.len();
            let ((c, _), (s, _)) = run(&watching, &req, &resp, usize::MAX);
            assert_eq!((c, s), (req.clone(), resp.clone()));
        }
        assert!(changes > 100, "{changes}");
    }
}
