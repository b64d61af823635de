//! Integration tests of `capagent proxy http` and `capagent proxy reverse` with real clients
//! (curl, raw sockets) and real servers (a Python HTTP/1.1 server), on loopback, no root.
//! Each test checks the bytes relayed and the bytes recorded (tshark on the pcapng, and the
//! JSON records).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use capagent_testkit::{Proc, TIMEOUT, TempDir, parse_json_lines, python, tshark_r};
use serde_json::Value;

/// An HTTP/1.1 origin server (keep-alive) with a few endpoints; prints `READY <port>`.
/// - `GET /file/N`: N bytes of a pattern (`Content-Length`);
/// - `GET /headers`: the request head exactly as received, as the body;
/// - `POST|PUT /echo`: the request body (Content-Length or chunked), re-sent with
///   Content-Length; `X-Body-Framing` says which framing the request had; a request with
///   `Expect: 100-continue` gets `100 Continue` first;
/// - `GET /chunked/N`: N bytes of the pattern in chunks of 1000 (`Transfer-Encoding: chunked`);
///   `/chunked-cl/N` the same with a wrong `Content-Length: 1` besides;
/// - `GET /who`: the server's name (argv[2]).
const ORIGIN_PY: &str = r#"
import socket, sys, threading
NAME = sys.argv[2] if len(sys.argv) > 2 else "origin"
def pattern(n):
    return bytes((i * 7 + 3) % 251 for i in range(n))
def read_line(f):
    line = f.readline(65537)
    return line
def handle(conn):
    f = conn.makefile("rb")
    try:
        while True:
            head = b""
            line = read_line(f)
            if not line:
                return
            head += line
            while True:
                l = read_line(f)
                if not l:
                    return
                head += l
                if l in (b"\r\n", b"\n"):
                    break
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            hdrs = {}
            for l in lines[1:]:
                if ":" in l:
                    k, v = l.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
            if hdrs.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = b""
            framing = "none"
            if hdrs.get("transfer-encoding", "").lower().endswith("chunked"):
                framing = "chunked"
                while True:
                    size = int(read_line(f).split(b";")[0].strip(), 16)
                    if size == 0:
                        while read_line(f) not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    body += f.read(size)
                    read_line(f)
            elif "content-length" in hdrs:
                framing = "length"
                body = f.read(int(hdrs["content-length"]))
            extra = b""
            if target.startswith("/file/"):
                out = pattern(int(target[6:]))
            elif target == "/headers":
                out = head
            elif target == "/echo":
                out = body
                extra = b"X-Body-Framing: " + framing.encode() + b"\r\n"
            elif target == "/who":
                out = NAME.encode()
            elif target.startswith("/chunked/") or target.startswith("/chunked-cl/"):
                data = pattern(int(target.rsplit("/", 1)[1]))
                # /chunked-cl/ adds a (wrong) Content-Length, which chunking overrides.
                cl = b"Content-Length: 1\r\n" if "-cl/" in target else b""
                resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + cl + b"X-Server: " + NAME.encode() + b"\r\n\r\n"
                for i in range(0, len(data), 1000):
                    piece = data[i:i+1000]
                    resp += b"%x\r\n" % len(piece) + piece + b"\r\n"
                resp += b"0\r\nX-Trailer: done\r\n\r\n"
                conn.sendall(resp)
                continue
            else:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Server: %s\r\n%s\r\n" % (len(out), NAME.encode(), extra) + out)
            if hdrs.get("connection", "").lower() == "close":
                return
    except Exception as e:
        sys.stderr.write("origin: %r\n" % e)
    finally:
        try:
            conn.close()
        except Exception:
            pass
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
print("READY", s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + 3) % 251) as u8).collect()
}

struct Origin {
    _proc: Proc,
    port: u16,
}

fn origin(dir: &TempDir, name: &str) -> Origin {
    let script = dir.write("origin.py", ORIGIN_PY);
    let mut cmd = Command::new(python());
    cmd.args([script.as_str(), "0", name]);
    let mut p = Proc::spawn(name, cmd);
    let port = p.expect("READY", TIMEOUT).trim().parse().unwrap();
    Origin { _proc: p, port }
}

/// A running capagent; its stderr tells the address it listens on.
struct Agent {
    proc: Proc,
    addr: SocketAddr,
}

impl Agent {
    fn start(args: &[&str]) -> Agent {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let a = capagent_testkit::proxy::Agent::start(&args, 1);
        let addr = a.addr();
        Agent { proc: a.proc, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it (SIGTERM) so that it writes out its records; returns its stderr.
    fn stop(mut self) -> String {
        self.proc.terminate(TIMEOUT)
    }
}

/// curl with `args`; returns (stdout, stderr, exit code).
fn curl(args: &[&str]) -> (Vec<u8>, String, i32) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// JSON records of a run.
fn records(path: &str) -> Vec<Value> {
    parse_json_lines(&std::fs::read_to_string(path).unwrap())
}

/// The payload bytes of the data records of connection `fd` in direction `dir`.
fn payload(evs: &[Value], fd: i64, dir: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for e in evs {
        if e["type"] == "data" && e["fd"] == fd && e["dir"] == dir {
            out.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(e["payload_b64"].as_str().unwrap())
                    .unwrap(),
            );
        }
    }
    out
}

/// The `open` records (syscall `connect` with a `proxy` field).
fn opens(evs: &[Value]) -> Vec<&Value> {
    evs.iter().filter(|e| e.get("proxy").is_some()).collect()
}

/// Splits `data` into HTTP responses: (status, head text, body) each, bodies delimited by
/// Content-Length or chunked (decoded).
fn responses(mut data: &[u8]) -> Vec<(u16, String, Vec<u8>)> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let end = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("complete head")
            + 4;
        let head = String::from_utf8_lossy(&data[..end]).into_owned();
        data = &data[end..];
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let field = |name: &str| {
            head.lines()
                .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
                .map(|l| l.split_once(':').unwrap().1.trim().to_string())
        };
        let body = if let Some(n) = field("content-length") {
            let n: usize = n.parse().unwrap();
            let b = data[..n].to_vec();
            data = &data[n..];
            b
        } else if field("transfer-encoding").is_some() {
            let mut b = Vec::new();
            loop {
                let le = data.windows(2).position(|w| w == b"\r\n").unwrap();
                let size =
                    usize::from_str_radix(std::str::from_utf8(&data[..le]).unwrap(), 16).unwrap();
                data = &data[le + 2..];
                if size == 0 {
                    let te = data.windows(2).position(|w| w == b"\r\n").unwrap();
                    // Trailers until the empty line.
                    let mut rest = data;
                    let mut skip = 0;
                    let _ = te;
                    loop {
                        let le = rest.windows(2).position(|w| w == b"\r\n").unwrap();
                        skip += le + 2;
                        if le == 0 {
                            break;
                        }
                        rest = &rest[le + 2..];
                    }
                    data = &data[skip..];
                    break;
                }
                b.extend_from_slice(&data[..size]);
                data = &data[size + 2..];
            }
            b
        } else if status == 304 || status == 204 {
            Vec::new()
        } else {
            let b = data.to_vec();
            data = &[];
            b
        };
        out.push((status, head, body));
    }
    out
}

/// Sends `req` on a new connection to `addr` (in pieces of `piece` bytes when given) and
/// reads until the proxy closes or `timeout`.
fn raw(addr: SocketAddr, req: &[u8], piece: Option<usize>, timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    match piece {
        None => s.write_all(req).unwrap(),
        Some(n) => {
            for p in req.chunks(n) {
                if s.write_all(p).is_err() {
                    break;
                }
            }
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn status_of(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    assert!(text.starts_with("HTTP/1.1 "), "not a response: {text:?}");
    text[9..12].parse().unwrap()
}

// ---------------------------------------------------------------------------------------------

/// Two requests on one kept-alive connection through the proxy, by host name: curl re-uses
/// its connection, the server sees origin-form requests without hop-by-hop fields, and the
/// records carry the target as requested (`localhost:PORT`) and as resolved, both requests
/// and both responses as the server sent them, dissected as HTTP by tshark.
#[test]
fn keep_alive_by_name_recorded() {
    let dir = TempDir::new("http-ka");
    let o = origin(&dir, "origin");
    let pcap = dir.join("h.pcapng").display().to_string();
    let jsonl = dir.join("h.jsonl").display().to_string();
    let agent = Agent::start(&[
        "proxy",
        "http",
        "--listen",
        "127.0.0.1:0",
        "-w",
        &pcap,
        "--format",
        "json",
        "-o",
        &jsonl,
    ]);
    let u1 = format!("http://localhost:{}/headers", o.port);
    let u2 = format!("http://localhost:{}/file/5000", o.port);
    let (out, err, code) = curl(&["-v", "-x", &agent.url(), &u1, &u2]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Re-using existing connection"), "{err}");
    let head_seen = String::from_utf8_lossy(&out[..out.len() - 5000]).into_owned();
    assert_eq!(&out[out.len() - 5000..], &pattern(5000)[..]);
    // What the server got: origin-form, Host from the URI, no Proxy-Connection.
    assert!(
        head_seen.starts_with(&format!(
            "GET /headers HTTP/1.1\r\nHost: localhost:{}\r\nUser-Agent: curl/",
            o.port
        )),
        "{head_seen:?}"
    );
    assert!(
        !head_seen.to_ascii_lowercase().contains("proxy-connection"),
        "{head_seen:?}"
    );
    assert!(head_seen.ends_with("Accept: */*\r\n\r\n"), "{head_seen:?}");
    agent.stop();

    let evs = records(&jsonl);
    let op = opens(&evs);
    assert_eq!(
        op.len(),
        1,
        "one server connection for both requests: {op:?}"
    );
    assert_eq!(op[0]["proxy"], "http");
    assert_eq!(op[0]["target"], format!("localhost:{}", o.port));
    assert_eq!(op[0]["resolved"], format!("127.0.0.1:{}", o.port));
    assert_eq!(op[0]["ret"], 0);
    let fd = op[0]["fd"].as_i64().unwrap();
    let sent = payload(&evs, fd, "send");
    let got = payload(&evs, fd, "recv");
    // The recorded requests are exactly what the server saw.
    let resp = responses(&got);
    assert_eq!(resp.len(), 2);
    assert_eq!(resp[0].2, sent[..resp[0].2.len()].to_vec());
    assert_eq!(resp[1].2, pattern(5000));

    let decode = format!("tcp.port=={},http", o.port);
    let reqs = tshark_r(
        &pcap,
        &[
            "-d",
            &decode,
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "tcp.dstport",
            "-e",
            "http.request.method",
            "-e",
            "http.request.uri",
            "-e",
            "http.host",
        ],
    );
    assert_eq!(
        reqs,
        format!(
            "127.0.0.1\t{p}\tGET\t/headers\tlocalhost:{p}\n127.0.0.1\t{p}\tGET\t/file/5000\tlocalhost:{p}\n",
            p = o.port
        )
    );
    let resps = tshark_r(
        &pcap,
        &[
            "-d",
            &decode,
            "-Y",
            "http.response",
            "-T",
            "fields",
            "-e",
            "tcp.srcport",
            "-e",
            "http.response.code",
            "-e",
            "http.content_length",
        ],
    );
    assert_eq!(
        resps,
        format!(
            "{p}\t200\t{}\n{p}\t200\t5000\n",
            resp[0].2.len(),
            p = o.port
        )
    );
}

/// CONNECT with `curl -p` to an allowed port: 200, then the tunnel carries curl's own HTTP
/// both ways; recorded as a stream between curl and the target that tshark dissects. To a
/// port not in --connect-ports: 403 and no connection to the target.
#[test]
fn connect_tunnel_and_port_rule() {
    let dir = TempDir::new("http-connect");
    let o = origin(&dir, "origin");
    let pcap = dir.join("c.pcapng").display().to_string();
    let jsonl = dir.join("c.jsonl").display().to_string();
    let ports = format!("443,{}", o.port);
    let agent = Agent::start(&[
        "proxy",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--connect-ports",
        &ports,
        "-w",
        &pcap,
        "--format",
        "json",
        "-o",
        &jsonl,
    ]);
    let url = format!("http://127.0.0.1:{}/file/70000", o.port);
    let (out, err, code) = curl(&["-v", "-p", "-x", &agent.url(), &url]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("CONNECT 127.0.0.1:{} HTTP/1.1", o.port)),
        "{err}"
    );
    assert!(err.contains("HTTP/1.1 200 Connection Established"), "{err}");
    assert_eq!(out, pattern(70000));

    // A port not allowed.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = format!("http://127.0.0.1:{}/", closed.local_addr().unwrap().port());
    let (_, err, code) = curl(&["-v", "-p", "-x", &agent.url(), &other]);
    assert_eq!(code, 56, "{err}");
    assert!(err.contains("< HTTP/1.1 403 Forbidden"), "{err}");
    closed.set_nonblocking(true).unwrap();
    assert!(
        closed.accept().is_err(),
        "no connection to a refused target"
    );
    agent.stop();

    let evs = records(&jsonl);
    let op = opens(&evs);
    assert_eq!(op.len(), 1, "{op:?}");
    assert_eq!(op[0]["proxy"], "http connect");
    assert_eq!(op[0]["target"], format!("127.0.0.1:{}", o.port));
    let fd = op[0]["fd"].as_i64().unwrap();
    let sent = String::from_utf8(payload(&evs, fd, "send")).unwrap();
    assert!(
        sent.starts_with("GET /file/70000 HTTP/1.1\r\nHost: 127.0.0.1:"),
        "{sent:?}"
    );
    let got = payload(&evs, fd, "recv");
    let r = responses(&got);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].2, pattern(70000));

    let decode = format!("tcp.port=={},http", o.port);
    let reqs = tshark_r(
        &pcap,
        &[
            "-d",
            &decode,
            "-Y",
            "http",
            "-T",
            "fields",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "http.request.uri",
            "-e",
            "http.response.code",
        ],
    );
    let lines: Vec<&str> = reqs.lines().collect();
    assert_eq!(lines.len(), 2, "{reqs}");
    assert!(
        lines[0].ends_with(&format!("\t{}\t/file/70000\t", o.port)),
        "{reqs}"
    );
    assert!(
        lines[1].starts_with(&format!("{}\t", o.port)) && lines[1].ends_with("\t200"),
        "{reqs}"
    );
    // The stream's bytes are the tunnel's, whole.
    let follow = tshark_r(&pcap, &["-q", "-z", "follow,tcp,raw,0"]);
    let hex: String = follow
        .lines()
        .filter(|l| {
            l.starts_with('\t') || l.chars().all(|c| c.is_ascii_hexdigit()) && !l.is_empty()
        })
        .map(|l| l.trim())
        .collect();
    assert_eq!(
        hex.len(),
        2 * (sent.len() + got.len()),
        "follow: {}",
        &follow[..follow.len().min(300)]
    );
}

/// --auth: no credentials and a wrong password get 407 with Proxy-Authenticate (and no
/// connection to the server); the right ones pass, and the server never sees them.
#[test]
fn basic_auth() {
    let dir = TempDir::new("http-auth");
    let o = origin(&dir, "origin");
    let jsonl = dir.join("a.jsonl").display().to_string();
    let agent = Agent::start(&[
        "proxy",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--auth",
        "alice:s3cret",
        "--format",
        "json",
        "-o",
        &jsonl,
        "--connect-ports",
        &o.port.to_string(),
        "-v",
    ]);
    let url = format!("http://127.0.0.1:{}/headers", o.port);
    let proxy = agent.url();
    for creds in [None, Some("alice:wrong"), Some("bob:s3cret")] {
        let mut args = vec!["-v", "-x", proxy.as_str()];
        if let Some(c) = creds {
            args.extend(["-U", c]);
        }
        args.push(&url);
        let (out, err, code) = curl(&args);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains("< HTTP/1.1 407 Proxy Authentication Required"),
            "{creds:?}: {err}"
        );
        assert!(
            err.contains("< Proxy-Authenticate: Basic realm=\"capagent\""),
            "{err}"
        );
        assert!(String::from_utf8_lossy(&out).contains("407"), "{out:?}");
    }
    let (out, err, code) = curl(&["-v", "-x", &agent.url(), "-U", "alice:s3cret", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("> Proxy-Authorization: Basic YWxpY2U6czNjcmV0"),
        "{err}"
    );
    assert!(err.contains("< HTTP/1.1 200 OK"), "{err}");
    let seen = String::from_utf8(out).unwrap();
    assert!(seen.starts_with("GET /headers HTTP/1.1\r\n"), "{seen:?}");
    assert!(
        !seen.to_ascii_lowercase().contains("proxy-authorization"),
        "{seen:?}"
    );
    // CONNECT is checked before anything is dialled too.
    let (_, err, code) = curl(&["-v", "-p", "-x", &agent.url(), "-U", "alice:no", &url]);
    assert_ne!(code, 0);
    assert!(err.contains("< HTTP/1.1 407"), "{err}");
    let (out, err, code) = curl(&["-v", "-p", "-x", &agent.url(), "-U", "alice:s3cret", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("HTTP/1.1 200 Connection Established"), "{err}");
    assert!(out.starts_with(b"GET /headers HTTP/1.1\r\n"));
    let log = agent.stop();
    assert!(
        log.contains(": 407: wrong proxy credentials for CONNECT"),
        "{log}"
    );
    let evs = records(&jsonl);
    let op = opens(&evs);
    assert_eq!(
        op.len(),
        2,
        "only the authorized requests reached the server: {op:?}"
    );
    assert_eq!(op[0]["proxy"], "http");
    assert_eq!(op[1]["proxy"], "http connect");
}

/// Chunked bodies both ways: an upload of unknown length (curl sends it chunked) reaches the
/// server chunked and whole; `Expect: 100-continue` gets the server's interim 100 relayed; a
/// chunked download reaches curl whole; the records hold the
/// server's chunked framing as it sent it (trailer included).
#[test]
fn chunked_upload_and_download() {
    let dir = TempDir::new("http-chunked");
    let o = origin(&dir, "origin");
    let jsonl = dir.join("k.jsonl").display().to_string();
    let pcap = dir.join("k.pcapng").display().to_string();
    let agent = Agent::start(&[
        "proxy",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--format",
        "json",
        "-o",
        &jsonl,
        "-w",
        &pcap,
    ]);
    let data = pattern(200_000);
    let file = dir.write("up.bin", &data);
    let url = format!("http://127.0.0.1:{}/echo", o.port);
    let (out, err, code) = curl(&[
        "-v",
        "-x",
        &agent.url(),
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{file}"),
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("< X-Body-Framing: chunked"), "{err}");
    assert_eq!(out.len(), data.len());
    assert!(out == data);

    // Expect: 100-continue: the server's interim 100 reaches curl, which then sends.
    let url = format!("http://127.0.0.1:{}/echo", o.port);
    let (out, err, code) = curl(&[
        "-v",
        "-x",
        &agent.url(),
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        "expected body",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("< HTTP/1.1 100 Continue"), "{err}");
    assert_eq!(out, b"expected body");

    let url = format!("http://127.0.0.1:{}/chunked/123456", o.port);
    let (out, err, code) = curl(&["-v", "-x", &agent.url(), &url]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("< Transfer-Encoding: chunked"), "{err}");
    assert!(out == pattern(123_456));
    let url = format!("http://127.0.0.1:{}/chunked-cl/3000", o.port);
    let (out, err, code) = curl(&["-v", "-x", &agent.url(), &url]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("< Content-Length"), "{err}");
    assert!(out == pattern(3000));
    agent.stop();

    let evs = records(&jsonl);
    let op = opens(&evs);
    assert_eq!(op.len(), 4, "{op:?}");
    let fd = op[2]["fd"].as_i64().unwrap();
    let got = payload(&evs, fd, "recv");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"),
        "{text:.100}"
    );
    assert!(
        text.contains("\r\n3e8\r\n"),
        "chunk sizes as the server sent them"
    );
    assert!(got.ends_with(b"\r\n0\r\nX-Trailer: done\r\n\r\n"));
    assert_eq!(responses(&got)[0].2, pattern(123_456));
    let fd0 = op[0]["fd"].as_i64().unwrap();
    let sent = payload(&evs, fd0, "send");
    let req = responses_req(&sent);
    assert_eq!(req, data);
    let decode = format!("tcp.port=={},http", o.port);
    let lens = tshark_r(
        &pcap,
        &[
            "-d",
            &decode,
            "-Y",
            "http.response",
            "-T",
            "fields",
            "-e",
            "http.response.code",
            "-e",
            "http.transfer_encoding",
        ],
    );
    assert_eq!(lens, "200\t\n100\t\n200\t\n200\tchunked\n200\tchunked\n");
}

/// The body of the one chunked request in `sent`.
fn responses_req(sent: &[u8]) -> Vec<u8> {
    let end = sent.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut fake = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    fake.extend_from_slice(&sent[end..]);
    responses(&fake).remove(0).2
}

/// Pipelining: three requests (one with a body) in one write, then the same three sent a
/// byte at a time: three responses each time, in order, on one connection.
#[test]
fn pipelining_raw() {
    let dir = TempDir::new("http-pipe");
    let o = origin(&dir, "origin");
    let agent = Agent::start(&["proxy", "http", "--listen", "127.0.0.1:0", "--no-record"]);
    let p = o.port;
    let reqs = format!(
        "GET http://127.0.0.1:{p}/who HTTP/1.1\r\nHost: x\r\n\r\n\
         POST http://127.0.0.1:{p}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         GET http://127.0.0.1:{p}/file/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    for piece in [None, Some(1)] {
        let out = raw(agent.addr, reqs.as_bytes(), piece, TIMEOUT);
        let r = responses(&out);
        assert_eq!(r.len(), 3, "{piece:?}: {:?}", String::from_utf8_lossy(&out));
        assert_eq!(r[0].2, b"origin");
        assert_eq!(r[1].2, b"hello");
        assert_eq!(r[2].2, pattern(10));
        assert!(r[2].1.contains("Connection: close\r\n"), "{}", r[2].1);
    }
    agent.stop();
}

/// An HTTP/1.0 client gets a chunked response un-chunked and then the connection closed;
/// with `Proxy-Connection: keep-alive` a Content-Length response keeps it open (and says so).
#[test]
fn http10_client() {
    let dir = TempDir::new("http-10");
    let o = origin(&dir, "origin");
    let agent = Agent::start(&["proxy", "http", "--listen", "127.0.0.1:0", "--no-record"]);
    let p = o.port;
    let req = format!("GET http://127.0.0.1:{p}/chunked-cl/5000 HTTP/1.0\r\n\r\n");
    let out = raw(agent.addr, req.as_bytes(), None, TIMEOUT);
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(!head.contains("Transfer-Encoding"), "{head}");
    assert!(!head.contains("Content-Length"), "{head}");
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert!(out[end..] == pattern(5000));
    let req = format!(
        "GET http://127.0.0.1:{p}/who HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n\
         GET http://127.0.0.1:{p}/file/3 HTTP/1.0\r\n\r\n"
    );
    let out = raw(agent.addr, req.as_bytes(), None, TIMEOUT);
    let r = responses(&out);
    assert_eq!(r.len(), 2, "{:?}", String::from_utf8_lossy(&out));
    assert!(r[0].1.contains("Connection: keep-alive\r\n"), "{}", r[0].1);
    assert_eq!(r[0].2, b"origin");
    assert_eq!(r[1].2, pattern(3));
    agent.stop();
}

/// Through `--upstream-proxy socks5://` (capagent's own SOCKS server): requests by name
/// reach the server, and the http records keep the target as requested.
#[test]
fn chained_through_socks() {
    let dir = TempDir::new("http-chain");
    let o = origin(&dir, "origin");
    let socks = Agent::start(&["proxy", "socks", "--listen", "127.0.0.1:0", "--no-record"]);
    let up = format!("socks5://{}", socks.addr);
    let jsonl = dir.join("ch.jsonl").display().to_string();
    let agent = Agent::start(&[
        "proxy",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--upstream-proxy",
        &up,
        "--format",
        "json",
        "-o",
        &jsonl,
    ]);
    let url = format!("http://localhost:{}/who", o.port);
    let (out, err, code) = curl(&["-x", &agent.url(), &url]);
    assert_eq!((code, out.as_slice()), (0, &b"origin"[..]), "{err}");
    agent.stop();
    socks.stop();
    let evs = records(&jsonl);
    let op = opens(&evs);
    assert_eq!(op.len(), 1);
    assert_eq!(op[0]["target"], format!("localhost:{}", o.port));
    assert_eq!(
        op[0]["resolved"],
        Value::Null,
        "the SOCKS proxy resolved the name"
    );
}

/// Malformed and oversized requests get the right status and a closed connection; so does a
/// client sending its head too slowly; server failures give 502 and 504.
#[test]
fn errors_get_proper_replies() {
    let dir = TempDir::new("http-bad");
    let o = origin(&dir, "origin");
    let agent = Agent::start(&[
        "proxy",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--handshake-timeout",
        "1",
        "--idle-timeout",
        "2",
        "--no-record",
    ]);
    let t = TIMEOUT;
    let a = agent.addr;
    let p = o.port;
    assert_eq!(status_of(&raw(a, b"GARBAGE\r\n\r\n", None, t)), 400);
    assert_eq!(
        status_of(&raw(a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, t)),
        400
    );
    assert_eq!(
        status_of(&raw(
            a,
            b"GET https://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            None,
            t
        )),
        400
    );
    assert_eq!(
        status_of(&raw(
            a,
            b"GET http://x:99999/ HTTP/1.1\r\nHost: x\r\n\r\n",
            None,
            t
        )),
        400
    );
    assert_eq!(
        status_of(&raw(a, b"GET http://x/ HTTP/3.0\r\n\r\n", None, t)),
        505
    );
    // Request line over 8 KiB: 414, even in small pieces.
    let long = format!("GET http://x/{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
    assert_eq!(status_of(&raw(a, long.as_bytes(), Some(100), t)), 414);
    // Headers over 64 KiB, in small pieces: 431.
    let mut big = b"GET http://x/ HTTP/1.1\r\n".to_vec();
    for i in 0..2000 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "b".repeat(40)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let out = raw(a, &big, Some(500), t);
    assert_eq!(status_of(&out), 431);
    // Smuggling-prone framing: 400.
    let both = format!(
        "POST http://127.0.0.1:{p}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    assert_eq!(status_of(&raw(a, both.as_bytes(), None, t)), 400);
    // A bad chunk size: 400 (the server got the head, but never a bad body).
    let bad_chunk = format!(
        "POST http://127.0.0.1:{p}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    );
    assert_eq!(status_of(&raw(a, bad_chunk.as_bytes(), None, t)), 400);
    // Slowloris: a head trickling in gets 408 once the handshake time is up.
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    for b in format!(
        "GET http://127.0.0.1:{p}/who HTTP/1.1\r\nHost: x\r\nX-Slow: {}",
        "z".repeat(100)
    )
    .bytes()
    {
        if s.write_all(&[b]).is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if start.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = s.read_to_end(&mut got);
    assert_eq!(status_of(&got), 408, "{:?}", String::from_utf8_lossy(&got));
    // Nothing listens: 502.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let req = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&raw(a, req.as_bytes(), None, t)), 502);
    // A name that does not resolve: 502.
    let req = b"GET http://no-such-host.invalid/ HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(status_of(&raw(a, req, None, t)), 502);
    // A server that accepts and never answers: 504 after the idle timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let req = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&raw(a, req.as_bytes(), None, t)), 504);
    drop(silent);
    // A server that answers something else than HTTP: 502.
    let bogus = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = bogus.local_addr().unwrap().port();
    let srv = thread::spawn(move || {
        let (mut c, _) = bogus.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf);
        c.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap();
    });
    let req = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n");
    let out = raw(a, req.as_bytes(), None, t);
    assert_eq!(status_of(&out), 502);
    assert!(
        String::from_utf8_lossy(&out).contains("bad response head"),
        "{out:?}"
    );
    srv.join().unwrap();
    // Still serving after all that.
    let ok =
        format!("GET http://127.0.0.1:{p}/who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let out = raw(a, ok.as_bytes(), None, t);
    assert_eq!(responses(&out)[0].2, b"origin");
    // Each error has its log line.
    let log = agent.stop();
    for status in [
        "400 Bad Request",
        "414 URI Too Long",
        "431 Request Header Fields Too Large",
        "408 Request Timeout",
        "505 HTTP Version Not Supported",
        "502 Bad Gateway",
        "504 Gateway Timeout",
    ] {
        assert!(
            log.contains(&format!(": {status}: ")),
            "no log line for {status}: {log}"
        );
    }
}

/// A server that must never be reached: a listener nobody accepts on. A connection made to
/// it waits in its backlog, so a non-blocking accept afterwards tells whether any came.
struct Untouched(TcpListener);

impl Untouched {
    fn new() -> Untouched {
        Untouched(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    fn assert_untouched(&self) {
        self.0.set_nonblocking(true).unwrap();
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok((mut c, peer)) => {
                let mut got = Vec::new();
                c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let _ = c.read_to_end(&mut got);
                panic!(
                    "the server was reached from {peer}: {:?}",
                    String::from_utf8_lossy(&got)
                );
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Exactly one response, a 400 saying why, and the connection closed after it.
fn assert_400(out: &[u8], why: &str, req: &str) {
    let r = responses(out);
    assert_eq!(r.len(), 1, "{req:?} -> {:?}", String::from_utf8_lossy(out));
    assert_eq!(r[0].0, 400, "{req:?} -> {:?}", String::from_utf8_lossy(out));
    assert!(
        String::from_utf8_lossy(&r[0].2).contains(why),
        "{req:?} -> {:?}",
        String::from_utf8_lossy(out)
    );
}

/// RFC 9112 3.2: an HTTP/1.1 request without Host, or any request with two, gets 400 from
/// both proxies, whatever the target's form (CONNECT included), and the server is never
/// reached; an HTTP/1.0 request without Host still goes through (through the reverse proxy
/// as an HTTP/1.1 request with the server's Host).
#[test]
fn host_missing_or_repeated_is_400() {
    let dir = TempDir::new("http-host");
    let o = origin(&dir, "origin");
    let never = Untouched::new();
    let n = never.port();
    let t = TIMEOUT;
    let two = "Host: 127.0.0.1\r\nHost: evil.example\r\n";
    let forward = Agent::start(&[
        "proxy",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--connect-ports",
        &n.to_string(),
        "--no-record",
    ]);
    let reverse = Agent::start(&[
        "proxy",
        "reverse",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &format!("127.0.0.1:{n}"),
        "--no-record",
    ]);
    let cases = [
        (
            format!("GET http://127.0.0.1:{n}/ HTTP/1.1\r\n{two}\r\n"),
            "more than one Host",
        ),
        (
            format!("GET http://127.0.0.1:{n}/ HTTP/1.1\r\n\r\n"),
            "without Host",
        ),
        (format!("GET / HTTP/1.1\r\n{two}\r\n"), "more than one Host"),
        (
            "GET / HTTP/1.1\r\nX-Host: a\r\n\r\n".to_string(),
            "without Host",
        ),
        (format!("GET / HTTP/1.0\r\n{two}\r\n"), "more than one Host"),
        (
            format!("POST http://127.0.0.1:{n}/echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"),
            "without Host",
        ),
        (
            format!("CONNECT 127.0.0.1:{n} HTTP/1.1\r\n\r\n"),
            "without Host",
        ),
        (
            format!("CONNECT 127.0.0.1:{n} HTTP/1.1\r\n{two}\r\n"),
            "more than one Host",
        ),
    ];
    for agent in [&forward, &reverse] {
        for (req, why) in &cases {
            assert_400(&raw(agent.addr, req.as_bytes(), None, t), why, req);
        }
    }
    never.assert_untouched();

    // HTTP/1.0 without Host: served.
    let req = format!("GET http://127.0.0.1:{}/who HTTP/1.0\r\n\r\n", o.port);
    let r = responses(&raw(forward.addr, req.as_bytes(), None, t));
    assert_eq!(
        (r.len(), r[0].0, r[0].2.as_slice()),
        (1, 200, &b"origin"[..])
    );
    let log = forward.stop();
    assert!(
        log.contains(": 400 Bad Request: malformed message head: more than one Host field"),
        "{log}"
    );
    reverse.stop();
    let reverse = Agent::start(&[
        "proxy",
        "reverse",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &format!("127.0.0.1:{}", o.port),
        "--no-record",
    ]);
    let r = responses(&raw(
        reverse.addr,
        b"GET /headers HTTP/1.0\r\n\r\n",
        None,
        t,
    ));
    assert_eq!(r[0].0, 200);
    let seen = String::from_utf8_lossy(&r[0].2).into_owned();
    assert!(
        seen.starts_with(&format!(
            "GET /headers HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            o.port
        )),
        "{seen:?}"
    );
    reverse.stop();
}

/// The reverse proxy: routes by Host to one of two servers (the default --to otherwise), Host
/// passed on as the client sent it; with --rewrite-host the server gets its own HOST:PORT.
/// Records show each request on a stream to the server it went to, dissected as HTTP.
#[test]
fn reverse_routes_by_host() {
    let dir = TempDir::new("http-reverse");
    let a = origin(&dir, "alpha");
    let b = origin(&dir, "beta");
    let pcap = dir.join("r.pcapng").display().to_string();
    let to = format!("127.0.0.1:{}", a.port);
    let route = format!("beta.test=127.0.0.1:{}", b.port);
    let agent = Agent::start(&[
        "proxy",
        "reverse",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "--route",
        &route,
        "-w",
        &pcap,
        "-o",
        "/dev/null",
    ]);
    let who = format!("{}/who", agent.url());
    let headers = format!("{}/headers", agent.url());
    let (out, err, code) = curl(&["-H", "Host: beta.test", &who]);
    assert_eq!((code, out.as_slice()), (0, &b"beta"[..]), "{err}");
    let (out, _, _) = curl(&["-H", "Host: BETA.test:8000", &who]);
    assert_eq!(out, b"beta");
    let (out, _, _) = curl(&["-H", "Host: other.test", &who]);
    assert_eq!(out, b"alpha");
    let (out, _, _) = curl(&[
        "-H",
        "Host: beta.test",
        "-H",
        "Connection: keep-alive, X-Hop",
        "-H",
        "X-Hop: 1",
        &headers,
    ]);
    let seen = String::from_utf8(out).unwrap();
    assert!(
        seen.starts_with("GET /headers HTTP/1.1\r\nHost: beta.test\r\n"),
        "{seen:?}"
    );
    assert!(
        !seen.contains("X-Hop") && !seen.contains("Connection"),
        "{seen:?}"
    );
    agent.stop();
    let reqs = tshark_r(
        &pcap,
        &[
            "-d",
            &format!("tcp.port=={},http", a.port),
            "-d",
            &format!("tcp.port=={},http", b.port),
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "tcp.dstport",
            "-e",
            "http.host",
        ],
    );
    assert_eq!(
        reqs,
        format!(
            "{b}\tbeta.test\n{b}\tBETA.test:8000\n{a}\tother.test\n{b}\tbeta.test\n",
            a = a.port,
            b = b.port
        )
    );

    let agent = Agent::start(&[
        "proxy",
        "reverse",
        "--listen",
        "127.0.0.1:0",
        "--route",
        &route,
        "--rewrite-host",
        "--no-record",
    ]);
    let headers = format!("{}/headers", agent.url());
    let (out, _, _) = curl(&["-H", "Host: beta.test", &headers]);
    let seen = String::from_utf8(out).unwrap();
    assert!(
        seen.starts_with(&format!(
            "GET /headers HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            b.port
        )),
        "{seen:?}"
    );
    // No route and no --to: 421.
    let (_, err, _) = curl(&["-v", "-H", "Host: nowhere.test", &headers]);
    assert!(err.contains("< HTTP/1.1 421 Misdirected Request"), "{err}");
    agent.stop();
}

// ---------------------------------------------------------------------------------------------
// WebSocket (HTTP/1.1 Upgrade) through both proxies.

/// A WebSocket echo server (the `websockets` library of Debian's Python): answers each
/// message with `echo:` + the message (text: + ` path=PATH`); prints `READY <port>`.
const WS_SERVER_PY: &str = r#"
import asyncio, websockets
async def handler(ws, path=None):
    async for msg in ws:
        if isinstance(msg, bytes):
            await ws.send(b"echo:" + msg)
        else:
            await ws.send("echo:" + msg + " path=" + ws.path)
async def main():
    async with websockets.serve(handler, "127.0.0.1", 0, max_size=1 << 22, compression=None) as server:
        print("READY", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"#;

/// The JDK's WebSocket client (java.net.http): connects to argv[0], sends a text, a
/// 100,000-character text, a binary message and a close, and prints what came back.
const WS_CLIENT_JAVA: &str = r#"
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.WebSocket;
import java.nio.ByteBuffer;
import java.util.concurrent.*;

public class WsClient {
    public static void main(String[] args) throws Exception {
        BlockingQueue<String> got = new LinkedBlockingQueue<>();
        StringBuilder text = new StringBuilder();
        java.io.ByteArrayOutputStream bin = new java.io.ByteArrayOutputStream();
        WebSocket.Listener listener = new WebSocket.Listener() {
            public CompletionStage<?> onText(WebSocket ws, CharSequence data, boolean last) {
                text.append(data);
                if (last) { got.add("T " + text); text.setLength(0); }
                ws.request(1);
                return null;
            }
            public CompletionStage<?> onBinary(WebSocket ws, ByteBuffer data, boolean last) {
                byte[] b = new byte[data.remaining()];
                data.get(b);
                bin.write(b, 0, b.length);
                if (last) {
                    StringBuilder hex = new StringBuilder();
                    for (byte x : bin.toByteArray()) hex.append(String.format("%02x", x));
                    got.add("B " + hex);
                    bin.reset();
                }
                ws.request(1);
                return null;
            }
            public CompletionStage<?> onClose(WebSocket ws, int code, String reason) {
                got.add("CLOSED " + code);
                return null;
            }
            public void onError(WebSocket ws, Throwable e) { got.add("ERROR " + e); }
        };
        WebSocket ws = HttpClient.newHttpClient().newWebSocketBuilder()
            .buildAsync(URI.create(args[0]), listener).get(20, TimeUnit.SECONDS);
        ws.sendText("hello", true).get(20, TimeUnit.SECONDS);
        System.out.println(got.poll(20, TimeUnit.SECONDS));
        String big = "x".repeat(100000);
        ws.sendText(big, true).get(20, TimeUnit.SECONDS);
        String r = got.poll(20, TimeUnit.SECONDS);
        System.out.println("BIG " + (r != null && r.equals("T echo:" + big + " path=/chat")));
        ws.sendBinary(ByteBuffer.wrap(new byte[] {0, 1, 2, (byte) 255}), true).get(20, TimeUnit.SECONDS);
        System.out.println(got.poll(20, TimeUnit.SECONDS));
        ws.sendClose(WebSocket.NORMAL_CLOSURE, "bye").get(20, TimeUnit.SECONDS);
        System.out.println(got.poll(20, TimeUnit.SECONDS));
    }
}
"#;

/// A raw WebSocket client through an HTTP proxy (argv: proxy port, server port): an
/// absolute-URI upgrade request with a first frame right behind it in the same write, the
/// accept key checked, a 70,000-byte binary message, a close.
const WS_RAW_CLIENT_PY: &str = r#"
import base64, hashlib, os, socket, struct, sys
proxy, server = int(sys.argv[1]), int(sys.argv[2])
def frame(op, payload):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | op])
    if n < 126: head += bytes([0x80 | n])
    elif n < 65536: head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else: head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
def exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise SystemExit("closed after %r" % b[:200])
        b += c
    return b
def read_frame(s):
    h = exact(s, 2)
    n = h[1] & 0x7f
    if n == 126: n = struct.unpack(">H", exact(s, 2))[0]
    elif n == 127: n = struct.unpack(">Q", exact(s, 8))[0]
    return h[0] & 0x0f, exact(s, n)
s = socket.create_connection(("127.0.0.1", proxy))
key = base64.b64encode(os.urandom(16)).decode()
req = ("GET http://127.0.0.1:%d/fwd HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
       "Connection: Upgrade\r\nProxy-Connection: keep-alive\r\nSec-WebSocket-Key: %s\r\n"
       "Sec-WebSocket-Version: 13\r\n\r\n") % (server, server, key)
s.sendall(req.encode() + frame(1, b"early"))
head = b""
while not head.endswith(b"\r\n\r\n"):
    head += exact(s, 1)
lines = head.decode().split("\r\n")
print(lines[0])
fields = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
print("accept", fields.get("sec-websocket-accept") == want, fields.get("upgrade"), fields.get("connection"))
print(read_frame(s))
big = bytes((i * 7 + 3) % 251 for i in range(70000))
s.sendall(frame(2, big))
op, data = read_frame(s)
print(op, data == b"echo:" + big)
s.sendall(frame(8, struct.pack(">H", 1000)))
op, data = read_frame(s)
print(op, struct.unpack(">H", data[:2])[0])
"#;

/// Debian's Python, which has the `websockets` package (`cargo xtask setup` installs
/// python3-websockets), whatever `python3` is first in PATH.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

fn ws_server(dir: &TempDir) -> (Proc, u16) {
    let script = dir.write("ws_server.py", WS_SERVER_PY);
    let mut cmd = Command::new(DEBIAN_PYTHON);
    cmd.arg(&script);
    let mut p = Proc::spawn("ws_server", cmd);
    let port = p.expect("READY", TIMEOUT).trim().parse().unwrap();
    (p, port)
}

/// The request and response bytes recorded on the one server connection in `evs`.
fn only_upstream(evs: &[Value]) -> (Vec<u8>, Vec<u8>) {
    let o = opens(evs);
    assert_eq!(o.len(), 1, "{}", capagent_testkit::dump(evs));
    let fd = o[0]["fd"].as_i64().unwrap();
    (payload(evs, fd, "send"), payload(evs, fd, "recv"))
}

#[test]
fn websocket_through_reverse_proxy_with_java() {
    let dir = TempDir::new("http-ws-reverse");
    let (_server, port) = ws_server(&dir);
    let pcap = dir.join("ws.pcapng").display().to_string();
    let jsonl = dir.join("ws.jsonl").display().to_string();
    let to = format!("127.0.0.1:{port}");
    let agent = Agent::start(&[
        "proxy",
        "reverse",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "-w",
        &pcap,
        "--format",
        "json",
        "-o",
        &jsonl,
    ]);
    let src = dir.write("WsClient.java", WS_CLIENT_JAVA);
    let mut cmd = Command::new("java");
    cmd.arg(&src).arg(format!("ws://{}/chat", agent.addr));
    let out = capagent_testkit::run_output("java WsClient", cmd, Duration::from_secs(60));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "T echo:hello path=/chat",
            "BIG true",
            "B 6563686f3a000102ff",
            "CLOSED 1000"
        ],
        "{out}"
    );
    agent.stop();
    // The server connection's records: the upgrade request as the server got it (Upgrade
    // and Connection passed on), the 101, then the frames.
    let evs = records(&jsonl);
    let (sent, received) = only_upstream(&evs);
    let req = String::from_utf8_lossy(&sent);
    let head = &req[..req.find("\r\n\r\n").unwrap()];
    assert!(head.starts_with("GET /chat HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nUpgrade: websocket"), "{head}");
    assert!(head.contains("\r\nConnection: upgrade"), "{head}");
    assert!(
        received.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"),
        "{:?}",
        String::from_utf8_lossy(&received[..received.len().min(200)])
    );
    // Wireshark follows the upgrade and dissects the frames (unmasked) both ways.
    let frames = tshark_r(
        &pcap,
        &[
            "-d",
            &format!("tcp.port=={port},http"),
            "-Y",
            "websocket",
            "-T",
            "fields",
            "-e",
            "websocket.opcode",
            "-e",
            "websocket.payload_length",
            "-e",
            "websocket.payload.text",
        ],
    );
    // A row is a packet, with one value per frame in each field (comma-separated): one
    // segment may carry several frames, and the JDK sends the long text in fragments
    // (opcode 0 after the first).
    let mut opcodes: Vec<String> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    for row in frames.lines() {
        let mut f = row.split('\t');
        opcodes.extend(f.next().unwrap_or("").split(',').map(str::to_string));
        let _lengths = f.next();
        texts.extend(
            f.next()
                .unwrap_or("")
                .split(',')
                .filter(|t| !t.is_empty() && t.len() < 100)
                .map(str::to_string),
        );
    }
    assert!(
        texts.contains(&"hello".to_string())
            && texts.contains(&"echo:hello path=/chat".to_string()),
        "{texts:?}"
    );
    let count = |op: &str| opcodes.iter().filter(|o| *o == op).count();
    // Two text messages each way, a binary message each way, a close each way.
    assert_eq!(
        (count("1"), count("2"), count("8")),
        (4, 2, 2),
        "opcodes {opcodes:?}"
    );
}

#[test]
fn websocket_through_forward_proxy_raw() {
    let dir = TempDir::new("http-ws-forward");
    let (_server, port) = ws_server(&dir);
    let jsonl = dir.join("ws.jsonl").display().to_string();
    let agent = Agent::start(&[
        "proxy",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--format",
        "json",
        "-o",
        &jsonl,
    ]);
    let script = dir.write("ws_raw.py", WS_RAW_CLIENT_PY);
    let mut cmd = Command::new(python());
    cmd.arg(&script)
        .arg(agent.addr.port().to_string())
        .arg(port.to_string());
    let out = capagent_testkit::run_output("ws_raw.py", cmd, Duration::from_secs(60));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "HTTP/1.1 101 Switching Protocols",
            "accept True websocket upgrade",
            "(1, b'echo:early path=/fwd')",
            "2 True",
            "8 1000"
        ],
        "{out}"
    );
    agent.stop();
    let evs = records(&jsonl);
    let (sent, received) = only_upstream(&evs);
    let req = String::from_utf8_lossy(&sent);
    let end = req.find("\r\n\r\n").unwrap();
    let head = &req[..end];
    assert!(head.starts_with("GET /fwd HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nUpgrade: websocket"), "{head}");
    assert!(!head.contains("Proxy-Connection"), "{head}");
    // The early frame follows the head on the server connection (5-byte masked text).
    assert_eq!(sent[end + 4..][..2], [0x81, 0x85]);
    // Everything relayed is recorded: 5 + 70,000 + 2 payload bytes from the client, in
    // frames of 2+4+5, 2+8+4+70000 and 2+4+2 bytes.
    assert_eq!(sent.len() - (end + 4), 11 + 70014 + 8);
    assert!(received.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
}
