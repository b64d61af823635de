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
//! - `syscall`: syscall name (`"sendto"`, `"connect"`, ...; `"fork"`, `"exec"`, `"exit"`).
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
//!
//! Type `sock` adds (always):
//! - `addr`: the call's address as for `local`/`remote` (connect, bind: the argument;
//!   accept: the peer), or `null`.
//! - `args`: the raw syscall arguments the kernel record carried, 4 integers (socket: domain,
//!   type, protocol; listen: backlog; shutdown: how; accept4: flags).
//!
//! Type `fork` adds `child_pid`. Type `exit` adds `exit_code` (integer, `null` when killed by
//! a signal) and `signal` (`"SIGKILL"`, ..., `null` when it exited).
//!
//! Example:
//! ```json
//! {"type":"data","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"sendto","fd":3,"ret":12,"errno":null,"transport":"tcp","local":"127.0.0.1:40112","remote":"192.168.10.1:5555","sk":"0xffff888102030400","dir":"send","total":12,"captured":12,"truncated":false,"msg_index":0,"addr":null,"payload":"Hello World!","payload_b64":"SGVsbG8gV29ybGQh"}
//! ```

use std::io::{self, Write};

use base64::Engine as _;
use serde::Serialize;

use crate::model::{Detail, Direction, Event};
use crate::output::escape::escape;
use crate::output::text::{errno_name, signal_name};

/// Writes one JSON object per line to `out` (which the caller buffers).
pub struct JsonWriter<W: Write> {
    out: W,
}

impl<W: Write> JsonWriter<W> {
    pub fn new(out: W) -> Self {
        JsonWriter { out }
    }

    pub fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        let mut line = to_json(ev);
        line.push('\n');
        self.out.write_all(line.as_bytes())
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
    /// Outer `None`: not this type; inner `None`: `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<[u64; 4]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    child_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<Option<i32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<Option<String>>,
}

/// The JSON object for `ev` (one line, no newline).
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
        return serde_json::to_string(&lost).expect("serializable");
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
        errno: errno_name(ev.ret),
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
        payload: None,
        payload_b64: None,
        child_pid: None,
        exit_code: None,
        signal: None,
    };
    match &ev.detail {
        Detail::Sock { args, addr } => {
            line.ty = "sock";
            line.addr = Some(addr.as_ref().map(ToString::to_string));
            line.args = Some(*args);
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
            line.payload_b64 = Some(base64::engine::general_purpose::STANDARD.encode(payload));
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
        Detail::Lost { .. } => unreachable!("handled above"),
    }
    serde_json::to_string(&line).expect("serializable")
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` for nanoseconds since the epoch.
pub fn rfc3339(ts_ns: u64) -> String {
    let secs = ts_ns / 1_000_000_000;
    let nanos = ts_ns % 1_000_000_000;
    let days = secs / 86_400;
    let sod = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, SocketMeta, Transport};
    use crate::output::text::tests::{TS, data, ep, ev, sock};
    use agent_common::sys;
    use bytes::Bytes;

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
    fn proc_events() {
        let mut e = ev(sys::FORK, -1, 4243, Detail::Fork { child_pid: 4243 });
        e.sock = None;
        assert_eq!(
            to_json(&e),
            r#"{"type":"fork","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"fork","fd":null,"ret":4243,"errno":null,"transport":null,"local":null,"remote":null,"sk":null,"child_pid":4243}"#
        );
        e.syscall = sys::EXEC;
        e.detail = Detail::Exec;
        e.ret = 0;
        assert_eq!(
            to_json(&e),
            r#"{"type":"exec","ts":"2023-11-14T22:13:20.123456789Z","ts_ns":1700000000123456789,"pid":4242,"tid":4242,"comm":"python3","syscall":"exec","fd":null,"ret":0,"errno":null,"transport":null,"local":null,"remote":null,"sk":null}"#
        );
        e.syscall = sys::EXIT;
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
