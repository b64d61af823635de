//! JSON lines: one JSON object per event, one event per line (`--format json`).
//!
//! Field names and meanings are stable; new fields may be added. Fields marked "(always)" are
//! present in every object of those types, with `null` when unknown.
//!
//! Every object:
//! - `type`: `"sock"` (socket, connect, bind, listen, accept, accept4, close, shutdown),
//!   `"data"` (one send/recv-type call, or one message of sendmmsg/recvmmsg), `"fork"`,
//!   `"exec"`, `"exit"`, or `"lost"`.
//! - `ts`: wall-clock time of the syscall's exit, RFC 3339 in UTC with nanoseconds
//!   (`"2023-11-14T22:13:20.123456789Z"`).
//! - `ts_ns`: the same time in nanoseconds since the Unix epoch (integer).
//!
//! Objects of type `lost` (records the kernel dropped because the ring buffer was full)
//! have only `type`, `ts`, `ts_ns` and:
//! - `events`: records lost; `bytes`: payload bytes lost (integers).
//!
//! All other objects (always):
//! - `pid`, `tid`: process id (tgid) and thread id.
//! - `comm`: process name.
//! - `syscall`: syscall name (`"sendto"`, `"connect"`, ...; `"fork"`, `"exec"`, `"exit"`), or
//!   the TLS library function (`"SSL_write"`, ...) of a `trace --tls` record.
//! - `fd`: the file descriptor the call used (integer; `null` for fork/exec/exit).
//! - `ret`: the syscall's return value (negative errno on failure); for `fork` the child's
//!   pid, for `exit` the wait status.
//! - `errno`: the error name (`"ECONNREFUSED"`, `"ERRNO_<n>"` when unknown) when `ret` is
//!   negative, else `null`.
//! - `transport`: `"tcp"`, `"udp"`, `"unix-stream"`, `"unix-dgram"`, `"unix-seqpacket"`,
//!   `"other"`, or `null` when the socket is unknown.
//! - `local`, `remote`: the socket's endpoints as strings, `"192.0.2.1:80"`,
//!   `"[2001:db8::1]:443"`, `"unix:/run/app.sock"`, `"unix:@abstract"`, `"unix:(unnamed)"`,
//!   or `null` when unknown.
//! - `sk`: the kernel socket's identity while it is open (`struct sock` address) as a hex
//!   string (`"0xffff888812345678"`; a string because JSON numbers above 2^53 lose precision
//!   in many parsers), or `null`.
//!
//! Type `data` adds (always):
//! - `dir`: `"send"` or `"recv"`.
//! - `total`: bytes the call transferred (per message for sendmmsg/recvmmsg).
//! - `captured`: payload bytes captured (a prefix of the transferred bytes).
//! - `truncated`: `true` when fewer bytes were captured than transferred.
//! - `msg_index`: message index within sendmmsg/recvmmsg (0 otherwise).
//! - `addr`: the datagram address given or received with the call (sendto/recvfrom address,
//!   msg_name) as `"ip:port"`, or `null`.
//! - `payload`: the captured bytes, escaped as strace does (printable ASCII as is; `\n`,
//!   `\r`, `\t`, `\"`, `\\`; other bytes `\xNN`), for reading.
//! - `payload_b64`: the captured bytes in standard base64, lossless.
//! - `tls` (TLS only): a TLS library call (`trace --tls`, `syscall` is the function):
//!   `{"lib":"openssl","fn":"SSL_write","conn":"0x55d0c0a1b2c0"}` (library family, function,
//!   the library's connection object as a hex string), plus `"unfinished":true` when the call
//!   had not returned when its process exited (`ret` is then the length of the buffer the
//!   call was given, the payload that buffer); a syscall record of a connection known to
//!   carry TLS: `{"ciphertext":true}`; a proxy record of a connection whose TLS the proxy
//!   intercepted (`--tls`), its payload the plaintext: `{"plaintext":true}`. Absent otherwise.
//!
//! Type `sock` adds (always):
//! - `addr`: the call's address as for `local`/`remote` (connect, bind: the argument;
//!   accept: the peer), or `null`.
//! - `args`: the raw syscall arguments the kernel record carried, 4 integers (socket,
//!   socketpair: domain, type, protocol; listen: backlog; shutdown: how; accept4: flags).
//!
//! A `socketpair` record (type `sock`) also has `fds`: the two fds it made, `[3,4]`, or `null`
//! when it failed; its `fd` is the first of them (-1 when it failed).
//!
//! Type `open` (a recording proxy began relaying a connection or a client's datagrams; `ret`
//! is 0, or the negative errno when the target could not be reached) adds (always):
//! - `proxy`: what asked for it (`"forward"`, `"socks5 connect"`, `"socks4a connect"`,
//!   `"socks5 bind"`, `"socks5 udp-associate"`, `"http"`, ...).
//! - `listen`: the proxy address the client connected to, or `null`.
//! - `target`: the target as requested, `"host:port"` or `"ip:port"`.
//! - `resolved`: the address the proxy connected to, or `null` when unknown.
//!
//! and, only when the proxy intercepted the connection's TLS (`--tls`), `tls`:
//! `{"client":LEG,"server":LEG,"server_cert":"CN=...","error":null}`, each LEG
//! `{"sni","alpn","version","cipher"}` (strings or `null`: what that side negotiated),
//! `server_cert` the real server's certificate subject, `error` why interception failed;
//! a TLS connection relayed untouched (passthrough) has `{"passthrough":REASON,"sni":SNI}`
//! instead (REASON `pattern P` or `client rejected capagent's certificate`), and its data
//! records are the ciphertext, unmarked.
//!
//! In proxy records `pid`/`tid` are capagent's, `comm` names the proxy (`"forward"`,
//! `"socks"`, ...), `fd` is the connection number and `sk` the same number, `local` is the
//! client and `remote` the target as resolved; `data` records are `"sendto"` (`dir` `"send"`:
//! client to target) and `"recvfrom"` (`dir` `"recv"`: target to client); a side that
//! finished sending shows as a `shutdown` (client) or a `recv` of 0 bytes (target), and the
//! end of the relay as a `close` whose `ret` is 0 or the negative errno of what ended it.
//! Type `edit` (a `--replace` rule changed relayed bytes; before the data record carrying
//! them) adds `dir`, `rule` (as written), `offset` (in the direction as sent), `before`,
//! `before_b64`, `after`, `after_b64` (escaped as `payload`, and base64). Type `decoded`
//! (`--decode-bodies`: a compressed HTTP body, decoded; nothing changed) adds `dir`, `offset`
//! (where the body's data start), `encoding` (the codings undone, `"gzip"`, `"br, gzip"`),
//! `len` (the decoded bytes held), `truncated` (cut at `--decode-bodies-max`), `payload`,
//! `payload_b64`.
//!
//! Type `fork` adds `child_pid`. Type `exit` adds `exit_code` (integer, `null` when killed by
//! a signal) and `signal` (`"SIGKILL"`, ..., `null` when it exited).
//!
//! Example:
//! ```json
//! {"type":"data","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"sendto","fd":3,"ret":12,"errno":null,"transport":"tcp","local":"127.0.0.1:40112","remote":"192.168.10.1:5555","sk":"0xffff888102030400","dir":"send","total":12,"captured":12,"truncated":false,"msg_index":0,"addr":null,"payload":"Hello World!","payload_b64":"SGVsbG8gV29ybGQh"}
//! ```

use std::io::{self, Write};

use agent_common::sys;

use crate::model::{Call, Detail, Direction, Endpoint, Event, SocketMeta, TlsIntercepted, TlsLeg};
use crate::output::b64::push_base64;
use crate::output::escape::escape_json_into;
use crate::output::num::{AddrStr, Dec, push_hex, push_i64, push_padded, push_u64};
use crate::output::text::{errno, signal_name};

/// Most line buffer capacity kept between events (lines of payloads up to about 1 MiB).
const KEEP_LINE_CAPACITY: usize = 8 << 20;

/// Writes one JSON object per line to `out` (which the caller buffers).
///
/// Each line is written straight into a reused buffer: no `serde_json::Value`, no
/// intermediate strings; the payload is escaped in one pass and base64-encoded in place.
pub struct JsonWriter<W: Write> {
    out: W,
    enc: Encoder,
    line: Vec<u8>,
}

impl<W: Write> JsonWriter<W> {
    pub fn new(out: W) -> Self {
        JsonWriter {
            out,
            enc: Encoder::default(),
            line: Vec::new(),
        }
    }

    pub fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        self.line.clear();
        self.enc.encode(ev, &mut self.line);
        self.line.push(b'\n');
        let r = self.out.write_all(&self.line);
        if self.line.capacity() > KEEP_LINE_CAPACITY {
            // Do not hold on to the memory of an exceptionally large call.
            self.line = Vec::new();
        }
        r
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// A JSON string, or null.
fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// The JSON object for `ev` (one line, no newline).
pub fn to_json(ev: &Event) -> String {
    let mut out = Vec::new();
    Encoder::default().encode(ev, &mut out);
    String::from_utf8(out).expect("JSON lines are UTF-8")
}

/// Encodes events; remembers what the next event is likely to repeat.
#[derive(Default)]
struct Encoder {
    /// (second, `YYYY-MM-DDTHH:MM:SS.` of that second, its decimal digits).
    ts: Option<(u64, [u8; 20], Dec)>,
    /// The last socket and its `"transport":...,"sk":...` fields.
    sock: Option<(SocketMeta, Vec<u8>)>,
}

impl Encoder {
    fn encode(&mut self, ev: &Event, out: &mut Vec<u8>) {
        self.encode_fields(ev, out);
        // `trace --stack`: the frames, last member of the object.
        if let Some(frames) = &ev.stack
            && out.last() == Some(&b'}')
        {
            out.pop();
            out.extend_from_slice(b",\"stack\":[");
            for (i, f) in frames.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"frame\":");
                push_u64(out, i as u64);
                out.extend_from_slice(
                    format!(",\"addr\":\"{:#x}\",\"module\":", f.addr).as_bytes(),
                );
                push_opt_str(out, f.module.as_deref());
                out.extend_from_slice(b",\"function\":");
                push_opt_str(out, f.function.as_deref());
                out.extend_from_slice(b",\"offset\":");
                push_u64(out, f.offset);
                out.extend_from_slice(b",\"file\":");
                push_opt_str(out, f.file.as_deref());
                out.extend_from_slice(b",\"line\":");
                match f.line {
                    Some(l) => push_u64(out, u64::from(l)),
                    None => out.extend_from_slice(b"null"),
                }
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
        }
    }

    fn encode_fields(&mut self, ev: &Event, out: &mut Vec<u8>) {
        if let Detail::Lost { events, bytes } = ev.detail {
            out.extend_from_slice(b"{\"type\":\"lost\",\"ts\":\"");
            self.times(out, ev.ts_ns);
            out.extend_from_slice(b",\"events\":");
            push_u64(out, events);
            out.extend_from_slice(b",\"bytes\":");
            push_u64(out, bytes);
            out.push(b'}');
            return;
        }
        let ty: &[u8] = match ev.detail {
            Detail::Sock { .. } => b"sock",
            Detail::Data { .. } => b"data",
            Detail::Fork { .. } => b"fork",
            Detail::Exec => b"exec",
            Detail::Exit => b"exit",
            Detail::Open { .. } => b"open",
            Detail::Edit { .. } => b"edit",
            Detail::Decoded { .. } => b"decoded",
            Detail::Lost { .. } => unreachable!("handled above"),
        };
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(ty);
        out.extend_from_slice(b"\",\"ts\":\"");
        self.times(out, ev.ts_ns);
        out.extend_from_slice(b",\"pid\":");
        push_u64(out, u64::from(ev.task.pid));
        out.extend_from_slice(b",\"tid\":");
        push_u64(out, u64::from(ev.task.tid));
        out.extend_from_slice(b",\"comm\":");
        push_json_str(out, &ev.task.comm);
        out.extend_from_slice(b",\"syscall\":");
        push_json_str(out, ev.syscall_name());
        out.extend_from_slice(b",\"fd\":");
        match ev.detail {
            Detail::Fork { .. } | Detail::Exec | Detail::Exit => out.extend_from_slice(b"null"),
            _ => push_i64(out, i64::from(ev.fd)),
        }
        out.extend_from_slice(b",\"ret\":");
        push_i64(out, ev.ret);
        out.extend_from_slice(b",\"errno\":");
        // A TLS call's failure is the library's value, not an errno.
        if ev.ret >= 0 || matches!(ev.detail, Detail::Exit) || matches!(ev.call, Call::Tls { .. }) {
            out.extend_from_slice(b"null");
        } else {
            let e = ev.ret.unsigned_abs();
            out.push(b'"');
            match errno(e) {
                Some((name, _)) => out.extend_from_slice(name.as_bytes()),
                None => {
                    out.extend_from_slice(b"ERRNO_");
                    push_u64(out, e);
                }
            }
            out.push(b'"');
        }
        out.push(b',');
        self.socket(out, ev.sock.as_ref());
        match &ev.detail {
            Detail::Sock { args, addr } => {
                out.extend_from_slice(b",\"addr\":");
                push_endpoint(out, addr.as_ref());
                out.extend_from_slice(b",\"args\":[");
                for (i, a) in shown_args(ev, args).iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    push_u64(out, *a);
                }
                out.push(b']');
                if ev.shown_as() == sys::SOCKETPAIR {
                    out.extend_from_slice(b",\"fds\":");
                    match ev.socketpair_fds() {
                        Some([a, b]) => {
                            out.push(b'[');
                            push_i64(out, i64::from(a));
                            out.push(b',');
                            push_i64(out, i64::from(b));
                            out.push(b']');
                        }
                        None => out.extend_from_slice(b"null"),
                    }
                }
                out.push(b'}');
            }
            Detail::Data {
                dir,
                total,
                payload,
                truncated,
                addr,
                msg_index,
            } => {
                out.extend_from_slice(match dir {
                    Direction::Send => b",\"dir\":\"send\",\"total\":",
                    Direction::Recv => b",\"dir\":\"recv\",\"total\":",
                });
                push_u64(out, *total);
                out.extend_from_slice(b",\"captured\":");
                push_u64(out, payload.len() as u64);
                out.extend_from_slice(if *truncated {
                    b",\"truncated\":true,\"msg_index\":"
                } else {
                    b",\"truncated\":false,\"msg_index\":"
                });
                push_u64(out, u64::from(*msg_index));
                out.extend_from_slice(b",\"addr\":");
                match addr {
                    Some(a) => {
                        out.push(b'"');
                        out.extend_from_slice(AddrStr::new(a).as_bytes());
                        out.push(b'"');
                    }
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"payload\":\"");
                escape_json_into(out, payload);
                out.extend_from_slice(b"\",\"payload_b64\":\"");
                push_base64(out, payload);
                out.push(b'"');
                push_tls(out, ev);
                out.push(b'}');
            }
            Detail::Fork { child_pid } => {
                out.extend_from_slice(b",\"child_pid\":");
                push_u64(out, u64::from(*child_pid));
                out.push(b'}');
            }
            Detail::Exec => out.push(b'}'),
            Detail::Edit {
                dir,
                rule,
                offset,
                before,
                after,
            } => {
                out.extend_from_slice(match dir {
                    Direction::Send => b",\"dir\":\"send\",\"rule\":",
                    Direction::Recv => b",\"dir\":\"recv\",\"rule\":",
                });
                push_json_str(out, rule);
                out.extend_from_slice(b",\"offset\":");
                push_u64(out, *offset);
                // As payloads are written: escaped text and base64.
                for (name, bytes) in [("before", before), ("after", after)] {
                    out.extend_from_slice(b",\"");
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"\":\"");
                    escape_json_into(out, bytes);
                    out.extend_from_slice(b"\",\"");
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"_b64\":\"");
                    push_base64(out, bytes);
                    out.push(b'"');
                }
                out.push(b'}');
            }
            Detail::Decoded {
                dir,
                offset,
                encoding,
                payload,
                truncated,
            } => {
                out.extend_from_slice(match dir {
                    Direction::Send => b",\"dir\":\"send\",\"offset\":",
                    Direction::Recv => b",\"dir\":\"recv\",\"offset\":",
                });
                push_u64(out, *offset);
                out.extend_from_slice(b",\"encoding\":");
                push_json_str(out, encoding);
                out.extend_from_slice(b",\"len\":");
                push_u64(out, payload.len() as u64);
                out.extend_from_slice(if *truncated {
                    b",\"truncated\":true,\"payload\":\""
                } else {
                    b",\"truncated\":false,\"payload\":\""
                });
                escape_json_into(out, payload);
                out.extend_from_slice(b"\",\"payload_b64\":\"");
                push_base64(out, payload);
                out.push(b'"');
                out.push(b'}');
            }
            Detail::Open {
                proxy,
                listen,
                target,
                resolved,
                tls,
            } => {
                out.extend_from_slice(b",\"proxy\":");
                push_json_str(out, proxy);
                out.extend_from_slice(b",\"listen\":");
                push_endpoint(out, listen.map(Endpoint::Inet).as_ref());
                out.extend_from_slice(b",\"target\":");
                push_json_str(out, target);
                out.extend_from_slice(b",\"resolved\":");
                push_endpoint(out, resolved.map(Endpoint::Inet).as_ref());
                if let Some(t) = tls {
                    push_intercepted(out, t);
                }
                out.push(b'}');
            }
            Detail::Exit => {
                let status = ev.ret as i32;
                let sig = status & 0x7f;
                if sig == 0 {
                    out.extend_from_slice(b",\"exit_code\":");
                    push_i64(out, i64::from((status >> 8) & 0xff));
                    out.extend_from_slice(b",\"signal\":null}");
                } else {
                    out.extend_from_slice(b",\"exit_code\":null,\"signal\":");
                    push_json_str(out, &signal_name(sig));
                    out.push(b'}');
                }
            }
            Detail::Lost { .. } => unreachable!("handled above"),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ","ts_ns":N`: the value of `ts` (after its opening
    /// quote) and the `ts_ns` field, which share their digits.
    fn times(&mut self, out: &mut Vec<u8>, ts_ns: u64) {
        let secs = ts_ns / 1_000_000_000;
        let (prefix, secs_digits) = match &self.ts {
            Some((s, p, d)) if *s == secs => (p, d),
            _ => {
                let t = self.ts.insert((secs, second_prefix(secs), Dec::u64(secs)));
                (&t.1, &t.2)
            }
        };
        let d = Dec::u64(ts_ns % 1_000_000_000);
        let mut nanos = [b'0'; 9];
        nanos[9 - d.as_bytes().len()..].copy_from_slice(d.as_bytes());
        out.extend_from_slice(prefix);
        out.extend_from_slice(&nanos);
        out.extend_from_slice(b"Z\",\"ts_ns\":");
        if secs == 0 {
            push_u64(out, ts_ns);
        } else {
            out.extend_from_slice(secs_digits.as_bytes());
            out.extend_from_slice(&nanos);
        }
    }

    /// `"transport":...,"local":...,"remote":...,"sk":...` (no leading comma).
    fn socket(&mut self, out: &mut Vec<u8>, sock: Option<&SocketMeta>) {
        let Some(m) = sock else {
            out.extend_from_slice(b"\"transport\":null,\"local\":null,\"remote\":null,\"sk\":null");
            return;
        };
        match &mut self.sock {
            Some((last, bytes)) if last == m => out.extend_from_slice(bytes),
            slot => {
                let mut bytes = Vec::with_capacity(96);
                bytes.extend_from_slice(b"\"transport\":\"");
                bytes.extend_from_slice(m.transport.name().as_bytes());
                bytes.extend_from_slice(b"\",\"local\":");
                push_endpoint(&mut bytes, m.local.as_ref());
                bytes.extend_from_slice(b",\"remote\":");
                push_endpoint(&mut bytes, m.remote.as_ref());
                bytes.extend_from_slice(b",\"sk\":\"");
                push_hex(&mut bytes, m.sk);
                bytes.push(b'"');
                out.extend_from_slice(&bytes);
                *slot = Some((m.clone(), bytes));
            }
        }
    }
}

/// `,"tls":{...}` of a TLS library call (`lib`, `fn`, `conn`) or of a syscall record carrying
/// TLS ciphertext (`ciphertext`); nothing for other records.
fn push_tls(out: &mut Vec<u8>, ev: &Event) {
    if let Call::Tls { func, conn } = ev.call {
        out.extend_from_slice(b",\"tls\":{\"lib\":");
        match agent_common::tls_fn::lib(func) {
            Some(lib) => push_json_str(out, lib),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"fn\":");
        push_json_str(out, ev.syscall_name());
        out.extend_from_slice(b",\"conn\":\"");
        push_hex(out, conn);
        out.push(b'"');
        if ev.unfinished {
            out.extend_from_slice(b",\"unfinished\":true");
        }
        out.push(b'}');
    } else if ev.tls_ciphertext {
        out.extend_from_slice(b",\"tls\":{\"ciphertext\":true}");
    } else if ev.tls_plaintext {
        out.extend_from_slice(b",\"tls\":{\"plaintext\":true}");
    }
}

/// `,"tls":{"client":{...},"server":{...},"server_cert":...,"error":...}` of an intercepted
/// connection's `open` record.
/// A connection passed through: `,"tls":{"passthrough":REASON,"sni":SNI}`.
fn push_intercepted(out: &mut Vec<u8>, t: &TlsIntercepted) {
    let opt = |out: &mut Vec<u8>, key: &[u8], v: &Option<String>| {
        out.extend_from_slice(key);
        match v {
            Some(v) => push_json_str(out, v),
            None => out.extend_from_slice(b"null"),
        }
    };
    if t.passthrough.is_some() {
        opt(out, b",\"tls\":{\"passthrough\":", &t.passthrough);
        opt(out, b",\"sni\":", &t.client.sni);
        out.push(b'}');
        return;
    }
    let leg = |out: &mut Vec<u8>, key: &[u8], l: &TlsLeg| {
        out.extend_from_slice(key);
        opt(out, b"{\"sni\":", &l.sni);
        opt(out, b",\"alpn\":", &l.alpn);
        opt(out, b",\"version\":", &l.version);
        opt(out, b",\"cipher\":", &l.cipher);
        out.push(b'}');
    };
    leg(out, b",\"tls\":{\"client\":", &t.client);
    leg(out, b",\"server\":", &t.server);
    opt(out, b",\"server_cert\":", &t.server_cert);
    opt(out, b",\"error\":", &t.error);
    out.push(b'}');
}

/// `YYYY-MM-DDTHH:MM:SS.` of second `secs` since the epoch.
fn second_prefix(secs: u64) -> [u8; 20] {
    let days = secs / 86_400;
    let sod = secs % 86_400;
    let (y, m, d) = crate::output::num::civil_from_days(days as i64);
    let mut v = Vec::with_capacity(20);
    push_padded(&mut v, y as u64, 4);
    v.push(b'-');
    push_padded(&mut v, u64::from(m), 2);
    v.push(b'-');
    push_padded(&mut v, u64::from(d), 2);
    v.push(b'T');
    crate::output::num::push_hms(&mut v, sod);
    v.push(b'.');
    let mut p = [0u8; 20];
    p.copy_from_slice(&v);
    p
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` for nanoseconds since the epoch.
pub fn rfc3339(ts_ns: u64) -> String {
    let mut out = second_prefix(ts_ns / 1_000_000_000).to_vec();
    push_padded(&mut out, ts_ns % 1_000_000_000, 9);
    out.push(b'Z');
    String::from_utf8(out).expect("ASCII")
}

/// An endpoint as a JSON string (`Display` form), or `null`.
/// A sock record's `args`: as the record carried them, but for socketpair, whose fourth
/// carries the fds made (shown as `fds`), 0 there (the array's address is not recorded).
fn shown_args(ev: &Event, args: &[u64; 4]) -> [u64; 4] {
    if ev.shown_as() == sys::SOCKETPAIR {
        [args[0], args[1], args[2], 0]
    } else {
        *args
    }
}

fn push_endpoint(out: &mut Vec<u8>, e: Option<&Endpoint>) {
    match e {
        None => out.extend_from_slice(b"null"),
        Some(Endpoint::Inet(a)) => {
            out.push(b'"');
            out.extend_from_slice(AddrStr::new(a).as_bytes());
            out.push(b'"');
        }
        Some(Endpoint::Unix(p)) if p.is_empty() => out.extend_from_slice(b"\"unix:(unnamed)\""),
        Some(Endpoint::Unix(p)) => {
            out.extend_from_slice(b"\"unix:");
            push_json_inner(out, p);
            out.push(b'"');
        }
    }
}

/// `s` as a JSON string, escaped exactly as `serde_json` escapes it.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    push_json_inner(out, s);
    out.push(b'"');
}

/// The inside of [`push_json_str`]: `"` and `\` escaped, control characters as `\b`, `\f`,
/// `\n`, `\r`, `\t` or `\u00XX`; everything else (DEL, non-ASCII) as it is.
fn push_json_inner(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Endpoint, SocketMeta, Transport};
    use crate::output::text::tests::{TS, data, ep, ev, sock};
    use bytes::Bytes;
    use std::net::SocketAddr;

    #[test]
    fn data_event() {
        let e = ev(
            sys::SENDTO,
            3,
            12,
            data(Direction::Send, 12, b"Hello World!", false),
        );
        assert_eq!(
            to_json(&e),
            r#"{"type":"data","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"sendto","fd":3,"ret":12,"errno":null,"transport":"tcp","local":"127.0.0.1:40112","remote":"192.168.10.1:5555","sk":"0xffff888102030400","dir":"send","total":12,"captured":12,"truncated":false,"msg_index":0,"addr":null,"payload":"Hello World!","payload_b64":"SGVsbG8gV29ybGQh"}"#
        );
    }

    #[test]
    fn stack_frames_last_member() {
        use crate::model::Frame;
        use std::sync::Arc;
        let mut e = ev(sys::SENDTO, 3, 2, data(Direction::Send, 2, b"hi", false));
        e.stack = Some(vec![
            Frame {
                addr: 0x7f00_0000_1019,
                module: Some(Arc::from("/lib/libc.so.6")),
                function: Some(Arc::from("send")),
                offset: 0x19,
                file: None,
                line: None,
            },
            Frame {
                addr: 0x5555_0000_11a1,
                module: None,
                function: None,
                offset: 0,
                file: Some(Arc::from("hello.c")),
                line: Some(7),
            },
        ]);
        let j = to_json(&e);
        let stack = r#","stack":[{"frame":0,"addr":"0x7f0000001019","module":"/lib/libc.so.6","function":"send","offset":25,"file":null,"line":null},{"frame":1,"addr":"0x5555000011a1","module":null,"function":null,"offset":0,"file":"hello.c","line":7}]}"#;
        assert!(j.ends_with(stack), "{j}");
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["payload"], "hi");
        let mut text = String::new();
        crate::output::text::frame_line(&mut text, 0, &e.stack.as_ref().unwrap()[0]);
        assert_eq!(
            text,
            "#0  libc.so.6!send+0x19 (/lib/libc.so.6) 0x7f0000001019"
        );
        text.clear();
        crate::output::text::frame_line(&mut text, 1, &e.stack.as_ref().unwrap()[1]);
        assert_eq!(text, "#1  ?!? 0x5555000011a1 at hello.c:7");
    }

    #[test]
    fn tls_records() {
        use agent_common::tls_fn;
        let mut e = ev(
            tls_fn::SSL_WRITE,
            5,
            5,
            data(Direction::Send, 5, b"GET /", false),
        );
        e.call = Call::Tls {
            func: tls_fn::SSL_WRITE,
            conn: 0x55d0_c0a1_b2c0,
        };
        assert_eq!(
            to_json(&e),
            r#"{"type":"data","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"SSL_write","fd":5,"ret":5,"errno":null,"transport":"tcp","local":"127.0.0.1:40112","remote":"192.168.10.1:5555","sk":"0xffff888102030400","dir":"send","total":5,"captured":5,"truncated":false,"msg_index":0,"addr":null,"payload":"GET /","payload_b64":"R0VUIC8=","tls":{"lib":"openssl","fn":"SSL_write","conn":"0x55d0c0a1b2c0"}}"#
        );
        // The socket not known; GnuTLS.
        e.call = Call::Tls {
            func: tls_fn::GNUTLS_RECORD_RECV,
            conn: 0x10,
        };
        e.fd = -1;
        e.sock = None;
        e.detail = data(Direction::Recv, 2, b"OK", false);
        e.ret = 2;
        assert_eq!(
            to_json(&e),
            r#"{"type":"data","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"gnutls_record_recv","fd":-1,"ret":2,"errno":null,"transport":null,"local":null,"remote":null,"sk":null,"dir":"recv","total":2,"captured":2,"truncated":false,"msg_index":0,"addr":null,"payload":"OK","payload_b64":"T0s=","tls":{"lib":"gnutls","fn":"gnutls_record_recv","conn":"0x10"}}"#
        );
        // A failure: the library's value, not an errno (-28 is GNUTLS_E_AGAIN, not ENOSPC).
        e.ret = -28;
        e.detail = data(Direction::Recv, 0, b"", false);
        let v: serde_json::Value = serde_json::from_str(&to_json(&e)).unwrap();
        assert_eq!(
            (&v["ret"], &v["errno"]),
            (&(-28).into(), &serde_json::Value::Null)
        );
        // Ciphertext of a connection that carries TLS.
        let mut e = ev(
            sys::WRITE,
            5,
            3,
            data(Direction::Send, 3, b"\x16\x03\x01", false),
        );
        e.tls_ciphertext = true;
        assert_eq!(
            to_json(&e),
            r#"{"type":"data","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"write","fd":5,"ret":3,"errno":null,"transport":"tcp","local":"127.0.0.1:40112","remote":"192.168.10.1:5555","sk":"0xffff888102030400","dir":"send","total":3,"captured":3,"truncated":false,"msg_index":0,"addr":null,"payload":"\\x16\\x03\\x01","payload_b64":"FgMB","tls":{"ciphertext":true}}"#
        );
    }

    #[test]
    fn data_event_binary_truncated_with_addr() {
        let mut e = ev(
            sys::RECVMMSG,
            4,
            2,
            Detail::Data {
                dir: Direction::Recv,
                total: 1000,
                payload: Bytes::from_static(b"\"\\\n\x00\xff"),
                truncated: true,
                addr: "[2001:db8::1]:53".parse().ok(),
                msg_index: 1,
            },
        );
        e.task.tid = 4243;
        e.sock = Some(SocketMeta {
            sk: 16,
            ino: 1,
            transport: Transport::Udp,
            local: ep("[::]:5353"),
            remote: None,
        });
        assert_eq!(
            to_json(&e),
            r#"{"type":"data","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4243,"comm":"python3","syscall":"recvmmsg","fd":4,"ret":2,"errno":null,"transport":"udp","local":"[::]:5353","remote":null,"sk":"0x10","dir":"recv","total":1000,"captured":5,"truncated":true,"msg_index":1,"addr":"[2001:db8::1]:53","payload":"\\\"\\\\\\n\\x00\\xff","payload_b64":"IlwKAP8="}"#
        );
    }

    #[test]
    fn failed_call() {
        let mut e = ev(sys::RECVFROM, 3, -11, data(Direction::Recv, 0, b"", false));
        e.sock = None;
        let v: serde_json::Value = serde_json::from_str(&to_json(&e)).unwrap();
        assert_eq!(v["errno"], "EAGAIN");
        assert_eq!(v["ret"], -11);
        assert_eq!(v["transport"], serde_json::Value::Null);
        assert_eq!(v["sk"], serde_json::Value::Null);
        assert_eq!(v["payload"], "");
        assert_eq!(v["payload_b64"], "");
    }

    #[test]
    fn sock_event() {
        let mut e = ev(sys::CONNECT, 5, -111, sock([0; 4], ep("127.0.0.1:8000")));
        e.task.comm = "curl".into();
        e.sock = Some(SocketMeta {
            sk: 0xffff_8881_0203_0400,
            ino: 1,
            transport: Transport::Tcp,
            local: None,
            remote: None,
        });
        assert_eq!(
            to_json(&e),
            r#"{"type":"sock","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"curl","syscall":"connect","fd":5,"ret":-111,"errno":"ECONNREFUSED","transport":"tcp","local":null,"remote":null,"sk":"0xffff888102030400","addr":"127.0.0.1:8000","args":[0,0,0,0]}"#
        );
    }

    #[test]
    fn sock_event_unix() {
        let mut e = ev(sys::SOCKET, 3, 3, sock([1, 524289, 0, 0], None));
        e.sock = Some(SocketMeta {
            sk: 1,
            ino: 1,
            transport: Transport::UnixStream,
            local: Some(Endpoint::Unix(String::new())),
            remote: Some(Endpoint::Unix("@bus".into())),
        });
        let v: serde_json::Value = serde_json::from_str(&to_json(&e)).unwrap();
        assert_eq!(v["type"], "sock");
        assert_eq!(v["transport"], "unix-stream");
        assert_eq!(v["local"], "unix:(unnamed)");
        assert_eq!(v["remote"], "unix:@bus");
        assert_eq!(v["addr"], serde_json::Value::Null);
        assert_eq!(v["args"], serde_json::json!([1, 524289, 0, 0]));
    }

    #[test]
    fn socketpair_event() {
        let mut e = ev(
            sys::SOCKETPAIR,
            3,
            0,
            sock([1, 524289, 0, 3 | (4 << 32)], None),
        );
        e.sock = Some(SocketMeta {
            sk: 0x10,
            ino: 1,
            transport: Transport::UnixStream,
            local: None,
            remote: None,
        });
        assert_eq!(
            to_json(&e),
            r#"{"type":"sock","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"socketpair","fd":3,"ret":0,"errno":null,"transport":"unix-stream","local":null,"remote":null,"sk":"0x10","addr":null,"args":[1,524289,0,0],"fds":[3,4]}"#
        );
        e.ret = -24;
        e.fd = -1;
        e.sock = None;
        e.detail = sock([1, 1, 0, u64::MAX], None);
        let v: serde_json::Value = serde_json::from_str(&to_json(&e)).unwrap();
        assert_eq!(v["fds"], serde_json::Value::Null);
        assert_eq!(v["fd"], -1);
        assert_eq!(v["errno"], "EMFILE");
    }

    #[test]
    fn proc_events() {
        let mut e = ev(sys::FORK, -1, 4243, Detail::Fork { child_pid: 4243 });
        e.sock = None;
        assert_eq!(
            to_json(&e),
            r#"{"type":"fork","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"fork","fd":null,"ret":4243,"errno":null,"transport":null,"local":null,"remote":null,"sk":null,"child_pid":4243}"#
        );
        e.call = Call::Syscall(sys::EXEC);
        e.detail = Detail::Exec;
        e.ret = 0;
        assert_eq!(
            to_json(&e),
            r#"{"type":"exec","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"exec","fd":null,"ret":0,"errno":null,"transport":null,"local":null,"remote":null,"sk":null}"#
        );
        e.call = Call::Syscall(sys::EXIT);
        e.detail = Detail::Exit;
        e.ret = 3 << 8;
        assert_eq!(
            to_json(&e),
            r#"{"type":"exit","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"exit","fd":null,"ret":768,"errno":null,"transport":null,"local":null,"remote":null,"sk":null,"exit_code":3,"signal":null}"#
        );
        e.ret = 15;
        let v: serde_json::Value = serde_json::from_str(&to_json(&e)).unwrap();
        assert_eq!(v["exit_code"], serde_json::Value::Null);
        assert_eq!(v["signal"], "SIGTERM");
    }

    #[test]
    fn lost() {
        let e = crate::trace::assemble::lost_event(TS, 12, 34567);
        assert_eq!(
            to_json(&e),
            r#"{"type":"lost","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"events":12,"bytes":34567}"#
        );
    }

    #[test]
    fn writer_lines() {
        let mut w = JsonWriter::new(Vec::new());
        w.write_event(&crate::trace::assemble::lost_event(0, 1, 2))
            .unwrap();
        w.write_event(&crate::trace::assemble::lost_event(1, 3, 4))
            .unwrap();
        w.flush().unwrap();
        assert_eq!(
            String::from_utf8(w.into_inner()).unwrap(),
            "{\"type\":\"lost\",\"ts\":\"1970-01-01T00:00:00.000000000Z\",\"ts_ns\":0,\"events\":1,\"bytes\":2}\n\
             {\"type\":\"lost\",\"ts\":\"1970-01-01T00:00:00.000000001Z\",\"ts_ns\":1,\"events\":3,\"bytes\":4}\n"
        );
    }

    /// The serde_json implementation this writer replaced: the reference for byte identity.
    mod reference {
        use super::super::*;
        use crate::output::escape::escape;
        use crate::output::text::errno_name;
        use serde::Serialize;

        #[derive(Serialize)]
        struct Lost {
            #[serde(rename = "type")]
            ty: &'static str,
            ts: String,
            ts_ns: u64,
            events: u64,
            bytes: u64,
        }

        #[derive(Serialize)]
        #[serde(untagged)]
        enum Tls {
            Call {
                lib: Option<&'static str>,
                #[serde(rename = "fn")]
                func: &'static str,
                conn: String,
                #[serde(skip_serializing_if = "std::ops::Not::not")]
                unfinished: bool,
            },
            Ciphertext {
                ciphertext: bool,
            },
        }

        #[derive(Serialize)]
        struct Line<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            ts: String,
            ts_ns: u64,
            pid: u32,
            tid: u32,
            comm: &'a str,
            syscall: &'static str,
            fd: Option<i32>,
            ret: i64,
            errno: Option<String>,
            transport: Option<&'static str>,
            local: Option<String>,
            remote: Option<String>,
            sk: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            dir: Option<Direction>,
            #[serde(skip_serializing_if = "Option::is_none")]
            total: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            captured: Option<usize>,
            #[serde(skip_serializing_if = "Option::is_none")]
            truncated: Option<bool>,
            #[serde(skip_serializing_if = "Option::is_none")]
            msg_index: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            addr: Option<Option<String>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            args: Option<[u64; 4]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            fds: Option<Option<[i32; 2]>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            payload: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            payload_b64: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            tls: Option<Tls>,
            #[serde(skip_serializing_if = "Option::is_none")]
            child_pid: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            exit_code: Option<Option<i32>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            signal: Option<Option<String>>,
        }

        pub fn rfc3339(ts_ns: u64) -> String {
            let secs = ts_ns / 1_000_000_000;
            let nanos = ts_ns % 1_000_000_000;
            let days = secs / 86_400;
            let sod = secs % 86_400;
            let (y, m, d) = crate::output::num::civil_from_days(days as i64);
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
                sod / 3600,
                sod / 60 % 60,
                sod % 60
            )
        }

        pub fn to_json(ev: &Event) -> String {
            let ts = rfc3339(ev.ts_ns);
            if let Detail::Lost { events, bytes } = ev.detail {
                let lost = Lost {
                    ty: "lost",
                    ts,
                    ts_ns: ev.ts_ns,
                    events,
                    bytes,
                };
                return serde_json::to_string(&lost).unwrap();
            }
            let sock = ev.sock.as_ref();
            let mut line = Line {
                ty: "",
                ts,
                ts_ns: ev.ts_ns,
                pid: ev.task.pid,
                tid: ev.task.tid,
                comm: &ev.task.comm,
                syscall: ev.syscall_name(),
                fd: Some(ev.fd),
                ret: ev.ret,
                errno: match ev.call {
                    Call::Tls { .. } => None,
                    _ => errno_name(ev.ret),
                },
                transport: sock.map(|s| s.transport.name()),
                local: sock.and_then(|s| s.local.as_ref()).map(ToString::to_string),
                remote: sock
                    .and_then(|s| s.remote.as_ref())
                    .map(ToString::to_string),
                sk: sock.map(|s| format!("{:#x}", s.sk)),
                dir: None,
                total: None,
                captured: None,
                truncated: None,
                msg_index: None,
                addr: None,
                args: None,
                fds: None,
                payload: None,
                payload_b64: None,
                tls: None,
                child_pid: None,
                exit_code: None,
                signal: None,
            };
            match &ev.detail {
                Detail::Sock { args, addr } => {
                    line.ty = "sock";
                    line.addr = Some(addr.as_ref().map(ToString::to_string));
                    line.args = Some(crate::output::json::shown_args(ev, args));
                    if ev.shown_as() == sys::SOCKETPAIR {
                        line.fds = Some(ev.socketpair_fds());
                    }
                }
                Detail::Data {
                    dir,
                    total,
                    payload,
                    truncated,
                    addr,
                    msg_index,
                } => {
                    line.ty = "data";
                    line.dir = Some(*dir);
                    line.total = Some(*total);
                    line.captured = Some(payload.len());
                    line.truncated = Some(*truncated);
                    line.msg_index = Some(*msg_index);
                    line.addr = Some(addr.as_ref().map(ToString::to_string));
                    line.payload = Some(escape(payload));
                    line.payload_b64 = Some(base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        payload,
                    ));
                    line.tls = match ev.call {
                        Call::Tls { func, conn } => Some(Tls::Call {
                            lib: agent_common::tls_fn::lib(func),
                            func: ev.syscall_name(),
                            conn: format!("{conn:#x}"),
                            unfinished: ev.unfinished,
                        }),
                        _ if ev.tls_ciphertext => Some(Tls::Ciphertext { ciphertext: true }),
                        _ => None,
                    };
                }
                Detail::Fork { child_pid } => {
                    line.ty = "fork";
                    line.fd = None;
                    line.child_pid = Some(*child_pid);
                }
                Detail::Exec => {
                    line.ty = "exec";
                    line.fd = None;
                }
                Detail::Exit => {
                    line.ty = "exit";
                    line.fd = None;
                    line.errno = None;
                    let status = ev.ret as i32;
                    let sig = status & 0x7f;
                    if sig == 0 {
                        line.exit_code = Some(Some((status >> 8) & 0xff));
                        line.signal = Some(None);
                    } else {
                        line.exit_code = Some(None);
                        line.signal = Some(Some(signal_name(sig)));
                    }
                }
                Detail::Lost { .. } => unreachable!(),
                Detail::Open { .. } | Detail::Edit { .. } | Detail::Decoded { .. } => {
                    unreachable!("the reference predates proxy records")
                }
            }
            serde_json::to_string(&line).unwrap()
        }
    }

    /// xorshift64.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn bytes(&mut self, max: u64) -> Vec<u8> {
            let n = self.below(max + 1);
            (0..n).map(|_| self.next() as u8).collect()
        }
        fn text(&mut self) -> String {
            const PARTS: &[&str] = &[
                "a", "Z", "9", " ", "\"", "\\", "\n", "\r", "\t", "\u{8}", "\u{c}", "\u{0}",
                "\u{1f}", "\u{7f}", "é", "\u{85}", "\u{2028}", "😀", "/", "%", "@",
            ];
            (0..self.below(12))
                .map(|_| PARTS[self.below(PARTS.len() as u64) as usize])
                .collect()
        }
        fn endpoint(&mut self) -> Option<Endpoint> {
            match self.below(5) {
                0 => None,
                1 => Some(Endpoint::Unix(self.text())),
                2 => Some(Endpoint::Inet(SocketAddr::from((
                    (self.next() as u32).to_be_bytes(),
                    self.next() as u16,
                )))),
                _ => Some(Endpoint::Inet(self.addr())),
            }
        }
        fn addr(&mut self) -> SocketAddr {
            if self.below(2) == 0 {
                SocketAddr::from(((self.next() as u32).to_be_bytes(), self.next() as u16))
            } else {
                let mut o = [0u8; 16];
                // Mostly zeros, so that `::` compression and mapped forms show up.
                for b in &mut o {
                    if self.below(3) == 0 {
                        *b = self.next() as u8;
                    }
                }
                let scope = if self.below(3) == 0 {
                    self.next() as u32
                } else {
                    0
                };
                SocketAddr::V6(std::net::SocketAddrV6::new(
                    o.into(),
                    self.next() as u16,
                    0,
                    scope,
                ))
            }
        }
        pub(crate) fn event(&mut self) -> Event {
            let detail = match self.below(6) {
                0 => Detail::Sock {
                    args: [self.next(), self.below(10), 0, u64::MAX],
                    addr: self.endpoint(),
                },
                1 => Detail::Fork {
                    child_pid: self.next() as u32,
                },
                2 => Detail::Exec,
                3 => Detail::Exit,
                _ => Detail::Data {
                    dir: if self.below(2) == 0 {
                        Direction::Send
                    } else {
                        Direction::Recv
                    },
                    total: self.next() >> self.below(64),
                    payload: self.bytes(300).into(),
                    truncated: self.below(2) == 0,
                    addr: (self.below(2) == 0).then(|| self.addr()),
                    msg_index: self.next() as u32,
                },
            };
            let sock = (self.below(4) != 0).then(|| SocketMeta {
                sk: self.next() >> self.below(64),
                ino: self.next(),
                transport: [
                    Transport::Tcp,
                    Transport::Udp,
                    Transport::UnixStream,
                    Transport::UnixDgram,
                    Transport::UnixSeqpacket,
                    Transport::Other {
                        family: 1,
                        sock_type: 2,
                        protocol: 3,
                    },
                ][self.below(6) as usize],
                local: self.endpoint(),
                remote: self.endpoint(),
            });
            let ret = match self.below(4) {
                0 => -(self.below(600) as i64),
                1 => self.next() as i64,
                2 => i64::MIN,
                _ => self.below(70_000) as i64,
            };
            Event {
                ts_ns: self.next(),
                task: crate::model::Task {
                    pid: self.next() as u32,
                    tid: self.next() as u32,
                    comm: self.text(),
                },
                call: match self.below(8) {
                    0 => Call::Tls {
                        func: 60 + self.below(30) as u16,
                        conn: self.next() >> self.below(64),
                    },
                    _ => Call::Syscall(self.below(40) as u16),
                },
                fd: self.next() as i32,
                ret,
                sock,
                detail,
                tls_ciphertext: self.below(4) == 0,
                tls_eof: false,
                tls_plaintext: false,
                unfinished: self.below(8) == 0,
                stack: None,
            }
        }
    }

    #[test]
    fn identical_to_serde_reference() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // One writer across all events (its caches carry over) and fresh encodings.
        let mut w = JsonWriter::new(Vec::new());
        let mut want = String::new();
        for i in 0..20_000 {
            let mut e = rng.event();
            if i % 3 == 0 {
                // Repeat the socket of an earlier event (the writer's cache hits).
                e.sock = tcp_sock();
            }
            if i % 7 == 0 {
                e.detail = lost_or(&mut rng, e.detail);
            }
            if i % 11 == 0 {
                // Under a second, around it; repeated seconds (the writer's cache hits).
                e.ts_ns = [0, 7, 999_999_999, 1_000_000_000, TS, TS + 1][i / 11 % 6];
            }
            let r = reference::to_json(&e);
            assert_eq!(to_json(&e), r, "{e:?}");
            w.write_event(&e).unwrap();
            want.push_str(&r);
            want.push('\n');
        }
        assert!(String::from_utf8(w.into_inner()).unwrap() == want);
        for ts in [0, 1, TS, u64::MAX, 951_782_400_000_000_000] {
            assert_eq!(rfc3339(ts), reference::rfc3339(ts));
        }
    }

    fn tcp_sock() -> Option<SocketMeta> {
        crate::output::text::tests::tcp("127.0.0.1:40112", "192.168.10.1:5555")
    }

    fn lost_or(rng: &mut Rng, d: Detail) -> Detail {
        if rng.below(2) == 0 {
            Detail::Lost {
                events: rng.next(),
                bytes: rng.next(),
            }
        } else {
            d
        }
    }

    #[test]
    fn json_strings_like_serde() {
        let mut rng = Rng(7);
        let mut all = String::new();
        for c in (0u32..0x800).filter_map(char::from_u32) {
            all.push(c);
        }
        for s in std::iter::once(all).chain((0..2000).map(|_| rng.text())) {
            let mut v = Vec::new();
            push_json_str(&mut v, &s);
            assert_eq!(
                String::from_utf8(v).unwrap(),
                serde_json::to_string(&s).unwrap()
            );
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(TS), "2023-11-14T22:13:20.123456789Z");
        // Leap day, end of year.
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339(1_704_067_199_999_999_999),
            "2023-12-31T23:59:59.999999999Z"
        );
        assert_eq!(rfc3339(u64::MAX), "2554-07-21T23:34:33.709551615Z");
    }
}
