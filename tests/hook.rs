//! Integration tests of `--hook CMD` (docs/rewrite.md) with real servers, clients and hooks
//! (Python) on loopback, no root: the example hook upper-cases what `proxy forward` relays,
//! hooks that crash, die, or never answer let traffic pass (and the log says so), `drop` and
//! `close` answers, and `proxy http` with a hook that adds header fields (curl).

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Instant;

use capagent_testkit::proxy::{Agent, Rec, curl, half_close_server, http_response, http_server};
use capagent_testkit::proxy::{open_of, read_all, recorded};
use capagent_testkit::{Ev as _, TIMEOUT, TempDir};
use capagent_testkit::{edit, edits};

/// `python3 examples/hook_upper.py`, with the example's absolute path.
fn upper_hook() -> String {
    format!(
        "python3 {}/../examples/hook_upper.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A hook written to DIR/NAME.py, as the command that runs it.
fn python_hook(dir: &TempDir, name: &str, code: &str) -> String {
    let path = dir.join(&format!("{name}.py"));
    std::fs::write(&path, code).unwrap();
    format!("python3 {}", path.display())
}

/// `proxy forward` to `target` with `--hook hook` and `more` flags, recording into `rec`.
fn forward(rec: &Rec, target: SocketAddr, hook: &str, more: &[&str]) -> Agent {
    Agent::forward(rec, target, &[&["--hook", hook], more].concat())
}

/// A server for `conns` connections, one after the other, that writes back each read
/// as it comes until the client's end; what each received comes back through the channel.
fn echo_server(conns: usize) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for _ in 0..conns {
            let Ok((mut s, _)) = l.accept() else { return };
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
            let _ = tx.send(got);
        }
    });
    (addr, rx)
}

/// Writes `msg` and reads back its echo (`want`: what should come back).
fn round_trip(c: &mut TcpStream, msg: &[u8], want: &[u8]) {
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(msg).unwrap();
    let mut got = vec![0u8; want.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
}

/// The lines of capagent's log about the hook failing.
fn hook_warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("--hook") && l.contains("passes unchanged"))
        .collect()
}

/// The example hook upper-cases both directions: exact bytes at both ends, the records show
/// the bytes as sent and an `edit` record per change (the bytes that changed only).
#[test]
fn example_hook_upper_cases() {
    let dir = TempDir::new("hook-upper");
    let rec = Rec::new(&dir, "upper");
    let (target, received) = half_close_server(1, |got| [&b"echo:"[..], got].concat());
    let agent = forward(&rec, target, &upper_hook(), &[]);
    let mut c = TcpStream::connect(agent.addr()).unwrap();
    c.write_all(b"hello, hook \x00\xff").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut c), b"ECHO:HELLO, HOOK \x00\xff");
    assert_eq!(
        received.recv_timeout(TIMEOUT).unwrap(),
        b"HELLO, HOOK \x00\xff"
    );
    drop(c);
    let log = agent.stop();
    assert!(hook_warnings(&log).is_empty(), "{log}");
    let evs = rec.events();
    let o = open_of(&evs, "forward", &target.to_string());
    assert_eq!(recorded(&evs, o.fd(), "send"), b"HELLO, HOOK \x00\xff");
    assert_eq!(recorded(&evs, o.fd(), "recv"), b"ECHO:HELLO, HOOK \x00\xff");
    assert_eq!(
        edits(&evs),
        [
            edit("send", "hook", 0, b"hello, hook", b"HELLO, HOOK"),
            edit("recv", "hook", 0, b"echo", b"ECHO"),
        ]
    );
    let e = evs.iter().find(|e| e.ty() == "edit").unwrap();
    assert_eq!(e.fd(), o.fd());
}

/// A hook that exits at once: both connections' bytes pass unchanged, and the log says so
/// once.
#[test]
fn crashing_hook_passes_traffic() {
    let dir = TempDir::new("hook-crash");
    let rec = Rec::new(&dir, "crash");
    let (target, received) = echo_server(2);
    let agent = forward(
        &rec,
        target,
        "python3 -c 'import sys; sys.exit(1)'",
        &["--hook-timeout", "60000"],
    );
    let started = Instant::now();
    for _ in 0..2 {
        let mut c = TcpStream::connect(agent.addr()).unwrap();
        round_trip(&mut c, b"hello", b"hello");
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut c), b"");
        assert_eq!(received.recv_timeout(TIMEOUT).unwrap(), b"hello");
    }
    assert!(
        started.elapsed() < TIMEOUT,
        "no message waited for the timeout"
    );
    let log = agent.stop();
    let warned = hook_warnings(&log);
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("exit status: 1") || warned[0].contains("stopped reading"),
        "{log}"
    );
    assert!(edits(&rec.events()).is_empty());
}

/// A hook that answers the first message and exits: the first message is changed, the ones
/// after it pass unchanged.
#[test]
fn hook_that_dies_after_one_message() {
    let dir = TempDir::new("hook-once");
    let rec = Rec::new(&dir, "once");
    let hook = python_hook(
        &dir,
        "once",
        r#"import base64, json, sys
m = json.loads(sys.stdin.readline())
data = base64.b64encode(base64.b64decode(m["data"]).upper()).decode()
print(json.dumps({"id": m["id"], "action": "replace", "data": data}), flush=True)
"#,
    );
    let (target, received) = echo_server(1);
    let agent = forward(&rec, target, &hook, &["--hook-timeout", "60000"]);
    let mut c = TcpStream::connect(agent.addr()).unwrap();
    // "one" goes up as "ONE"; its echo and "two" pass unchanged.
    round_trip(&mut c, b"one", b"ONE");
    round_trip(&mut c, b"two", b"two");
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut c), b"");
    assert_eq!(received.recv_timeout(TIMEOUT).unwrap(), b"ONEtwo");
    let log = agent.stop();
    assert_eq!(hook_warnings(&log).len(), 1, "{log}");
    let evs = rec.events();
    assert_eq!(edits(&evs), [edit("send", "hook", 0, b"one", b"ONE")]);
}

/// A hook that never answers: each message passes after --hook-timeout.
#[test]
fn silent_hook_passes_after_the_timeout() {
    let dir = TempDir::new("hook-silent");
    let rec = Rec::new(&dir, "silent");
    let (target, received) = echo_server(1);
    let agent = forward(&rec, target, "exec sleep 600", &["--hook-timeout", "300"]);
    let mut c = TcpStream::connect(agent.addr()).unwrap();
    let started = Instant::now();
    round_trip(&mut c, b"ping", b"ping");
    // Up and down, each after the timeout.
    assert!(
        started.elapsed().as_millis() >= 600,
        "{:?}",
        started.elapsed()
    );
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut c), b"");
    assert_eq!(received.recv_timeout(TIMEOUT).unwrap(), b"ping");
    let log = agent.stop();
    let warned = hook_warnings(&log);
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("no answer within 300ms"), "{log}");
}

/// `drop` answers: the bytes are not sent (an edit with nothing after); `close`: the
/// connection ends there (both sides), recorded.
#[test]
fn drop_and_close() {
    let dir = TempDir::new("hook-drop");
    let rec = Rec::new(&dir, "drop");
    let hook = python_hook(
        &dir,
        "dropclose",
        r#"import base64, json, sys
for line in sys.stdin:
    m = json.loads(line)
    data = base64.b64decode(m["data"])
    action = "drop" if data.startswith(b"drop") else "close" if data.startswith(b"close") else "pass"
    print(json.dumps({"id": m["id"], "action": action}), flush=True)
"#,
    );
    let (target, received) = echo_server(2);
    let agent = forward(&rec, target, &hook, &[]);
    // Dropped: the server never gets it.
    let mut c = TcpStream::connect(agent.addr()).unwrap();
    round_trip(&mut c, b"keep", b"keep");
    c.write_all(b"drop this").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut c), b"");
    assert_eq!(received.recv_timeout(TIMEOUT).unwrap(), b"keep");
    // Closed: the client and the server see the end, the server never gets the bytes.
    let mut c = TcpStream::connect(agent.addr()).unwrap();
    round_trip(&mut c, b"keep", b"keep");
    c.write_all(b"close now").unwrap();
    assert_eq!(read_all(&mut c), b"");
    assert_eq!(received.recv_timeout(TIMEOUT).unwrap(), b"keep");
    agent.stop();
    let evs = rec.events();
    assert_eq!(
        edits(&evs),
        [
            edit("send", "hook", 4, b"drop this", b""),
            edit("send", "hook: close", 4, b"close now", b""),
        ]
    );
    let opens: Vec<_> = evs.iter().filter(|e| e.ty() == "open").collect();
    assert_eq!(opens.len(), 2);
    for o in &opens {
        assert_eq!(recorded(&evs, o.fd(), "send"), b"keep");
    }
    // The second connection's close says the hook ended it.
    let close = evs
        .iter()
        .find(|e| e.fd() == opens[1].fd() && e["syscall"] == "close")
        .unwrap();
    assert_eq!(close["errno"], "ECONNABORTED", "{close}");
}

/// `proxy http` sends heads to the hook: one that adds a field to the request and one to
/// the response; the server gets the one, curl the other; the records show the request as
/// sent and an edit per head.
#[test]
fn http_proxy_heads_through_the_hook() {
    let dir = TempDir::new("hook-http");
    let rec = Rec::new(&dir, "http");
    let hook = python_hook(
        &dir,
        "headers",
        r#"import base64, json, sys
for line in sys.stdin:
    m = json.loads(line)
    data = base64.b64decode(m["data"])
    if m["kind"] == "head":
        field = b"X-Hook: c2s\r\n" if m["dir"] == "c2s" else b"X-Hook: s2c\r\n"
        data = data[:-2] + field + b"\r\n"
    print(json.dumps({"id": m["id"], "action": "replace",
                      "data": base64.b64encode(data).decode()}), flush=True)
"#,
    );
    let (web, requests) = http_server(http_response(b"hello\n"), 1);
    let agent = Agent::recording(
        &rec,
        &["proxy", "http", "--listen", "127.0.0.1:0", "--hook", &hook],
    );
    let got = curl(&[
        "-i",
        "-x",
        &format!("http://{}", agent.addr()),
        &format!("http://{web}/x"),
    ]);
    let got = String::from_utf8(got).unwrap();
    assert!(got.contains("\r\nX-Hook: s2c\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\nhello\n"), "{got}");
    let req = String::from_utf8(requests.recv_timeout(TIMEOUT).unwrap()).unwrap();
    assert!(req.starts_with("GET /x HTTP/1.1\r\n"), "{req}");
    assert!(req.ends_with("\r\nX-Hook: c2s\r\n\r\n"), "{req}");
    agent.stop();
    let evs = rec.events();
    let o = open_of(&evs, "http", &web.to_string());
    assert_eq!(recorded(&evs, o.fd(), "send"), req.as_bytes());
    let e = edits(&evs);
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!((e[0].0.as_str(), e[0].1.as_str()), ("send", "hook"));
    assert_eq!(
        (e[0].2, &e[0].3[..], &e[0].4[..]),
        (req.len() as u64 - 15, &b""[..], &b"X-Hook: c2s\r\n"[..])
    );
    assert_eq!(
        (e[1].0.as_str(), &e[1].3[..], &e[1].4[..]),
        ("recv", &b""[..], &b"X-Hook: s2c\r\n"[..])
    );
}

/// `--replace` rules run first, the hook gets their output: both edits recorded, the rule's
/// first.
#[test]
fn rules_run_before_the_hook() {
    let dir = TempDir::new("hook-rules");
    let rec = Rec::new(&dir, "rules");
    let (target, received) = half_close_server(1, |_| b"ok".to_vec());
    let rule = "c2s:/hello/howdy/";
    let agent = forward(&rec, target, &upper_hook(), &["--replace", rule]);
    let mut c = TcpStream::connect(agent.addr()).unwrap();
    c.write_all(b"hello").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut c), b"OK");
    assert_eq!(received.recv_timeout(TIMEOUT).unwrap(), b"HOWDY");
    agent.stop();
    assert_eq!(
        edits(&rec.events()),
        [
            edit("send", rule, 0, b"hello", b"howdy"),
            edit("send", "hook", 0, b"howdy", b"HOWDY"),
            edit("recv", "hook", 0, b"ok", b"OK"),
        ]
    );
}
