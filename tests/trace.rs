//! Root integration tests of `capagent trace`: real clients and servers (python3, curl,
//! socat, dig) in a network namespace of each test's own, traced by the real `capagent`
//! binary through the real kernel. Every payload assertion compares the bytes capagent
//! reports (`payload_b64`) with the bytes the peer actually sent or received.
//!
//! Needs root. Run one at a time, with the capagent binary in
//! `CAPAGENT_BIN` (`cargo xtask test` sets it):
//! `cargo test -p capagent-tests --features root-tests --test trace -- --test-threads=1`.
//!
//! How a test knows capagent has attached when capagent and the traced process start
//! separately (`--pid`, `--comm`, `--all`): capagent prints nothing when it is ready, so the
//! test makes a traced process do a harmless socket call over and over until that call shows
//! up in capagent's `-o` file (see `LiveTrace::poke_until`); only then does the part under
//! test begin.

use std::{fs, process::Command, time::Duration};

use capagent_testkit::*;
use serde_json::Value;

/// The summary on stderr counts every record written (lost ones apart) and the lost ones.
fn check_summary(run: &TraceRun) {
    let (events, lost, lost_bytes) = run.summary();
    let lost_recs = of_type(&run.events, "lost");
    assert_eq!(
        events as usize,
        run.events.len() - lost_recs.len(),
        "summary event count vs JSON lines\n{}",
        run.describe()
    );
    let sum: i64 = lost_recs.iter().map(|e| e.int("events")).sum();
    let sum_bytes: i64 = lost_recs.iter().map(|e| e.int("bytes")).sum();
    assert_eq!(lost as i64, sum, "summary lost vs JSON lost records");
    assert_eq!(lost_bytes as i64, sum_bytes, "summary lost bytes vs JSON");
}

fn assert_ok(run: &TraceRun) {
    assert!(run.status.success(), "{}", run.describe());
}

const JSON: &[&str] = &["--format", "json"];

/// The `sock` event of `pid` for `syscall` on `fd` (exactly one).
fn sock_event<'a>(evs: &'a [Value], pid: u32, syscall: &str, fd: i64) -> &'a Value {
    one(evs, &format!("{syscall}({fd}) of {pid}"), |e| {
        e.ty() == "sock" && e.pid() == pid && e.syscall() == syscall && e.fd() == fd
    })
}

/// Checks the endpoints and transport every data event of the list carries.
fn check_ends(evs: &[&Value], transport: &str, local: &str, remote: &str) {
    assert!(!evs.is_empty(), "no data events");
    for e in evs {
        assert_eq!(e.str_of("transport"), Some(transport), "{e}");
        assert_eq!(e.str_of("local"), Some(local), "{e}");
        assert_eq!(e.str_of("remote"), Some(remote), "{e}");
    }
}

/// Each data event moved as many bytes as it says and captured them all. (The return value
/// of sendmmsg/recvmmsg is a message count, not bytes.)
fn check_whole(evs: &[&Value]) {
    for e in evs {
        if !e.syscall().ends_with("mmsg") {
            assert_eq!(e.ret(), e.int("total"), "{e}");
        }
        assert_eq!(e.int("captured"), e.int("total"), "{e}");
        assert_eq!(e["truncated"], Value::Bool(false), "{e}");
        assert!(e.str_of("errno").is_none(), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. TCP, python client and server.

#[test]
fn tcp_python_client_server() {
    let ns = Netns::new("tcp");
    let dir = TempDir::new("tcp");
    let mut srv = Server::reply(&ns, &dir, 2, "r:12", b"Boo!");
    let port = srv.port;
    let cmd = client_argv(
        &ns,
        &dir,
        "inet",
        "127.0.0.1",
        port,
        &[&format!("w:{}", hex(b"Hello World!")), "r:4"],
    );
    let dest = format!("127.0.0.1:{port}");
    let comm = python_comm();

    // JSON.
    let run = trace(&dir, &with_cmd(JSON, &cmd), None);
    assert_ok(&run);
    check_summary(&run);
    let evs = &run.events;
    assert_eq!(srv.recv(0), b"Hello World!");
    let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
    let fd: i64 = kv(&run.stdout, "FD").parse().unwrap();
    let local = format!("127.0.0.1:{}", kv(&run.stdout, "LOCAL"));
    assert_eq!(kv(&run.stdout, "GOT"), hex(b"Boo!"));
    assert_eq!(exec_pid(evs, &comm), pid, "the traced python's pid");

    let conn = sock_event(evs, pid, "connect", fd);
    assert_eq!(conn.ret(), 0, "{conn}");
    assert!(conn.str_of("errno").is_none(), "{conn}");
    assert_eq!(conn.str_of("addr"), Some(dest.as_str()), "{conn}");
    assert_eq!(conn.str_of("remote"), Some(dest.as_str()), "{conn}");
    assert_eq!(conn.str_of("local"), Some(local.as_str()), "{conn}");
    assert_eq!(conn.str_of("transport"), Some("tcp"), "{conn}");
    assert_eq!(conn.str_of("comm"), Some(comm.as_str()), "{conn}");

    let sends = data_on(evs, pid, fd, "send");
    assert_eq!(sends.len(), 1, "one send:\n{}", dump(evs));
    let s = sends[0];
    assert_eq!(s.syscall(), "sendto");
    assert_eq!(s.ret(), 12);
    assert_eq!(s.int("total"), 12);
    assert_eq!(s.payload(), b"Hello World!");
    assert_eq!(s.str_of("payload"), Some("Hello World!"));
    assert_eq!(s.int("msg_index"), 0);
    assert!(s.str_of("addr").is_none(), "connected TCP: no address: {s}");
    assert_eq!(s.str_of("sk"), conn.str_of("sk"), "same kernel socket");
    assert_eq!(s["tid"], s["pid"]);
    check_whole(&sends);
    check_ends(&sends, "tcp", &local, &dest);

    let recvs = data_on(evs, pid, fd, "recv");
    assert!(recvs.iter().all(|e| e.syscall() == "recvfrom"), "{recvs:?}");
    assert_eq!(concat(&recvs), b"Boo!");
    check_whole(&recvs);
    check_ends(&recvs, "tcp", &local, &dest);
    let close = sock_event(evs, pid, "close", fd);
    assert_eq!(close.ret(), 0);
    // Nothing of the exchange is reported twice or on another fd.
    let data: Vec<&Value> = of_type(evs, "data")
        .into_iter()
        .filter(|e| e.str_of("transport") == Some("tcp"))
        .collect();
    assert_eq!(data.len(), sends.len() + recvs.len(), "{}", dump(evs));
    let exit = one(evs, "exit of python", |e| {
        e.ty() == "exit" && e.pid() == pid
    });
    assert_eq!(exit["exit_code"], 0);

    // Text: the same exchange as strace-like lines.
    let run = trace(&dir, &with_cmd(&[], &cmd), None);
    assert_ok(&run);
    assert_eq!(srv.recv(1), b"Hello World!");
    srv.done();
    let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
    let fd: i64 = kv(&run.stdout, "FD").parse().unwrap();
    let local = format!("127.0.0.1:{}", kv(&run.stdout, "LOCAL"));
    let mut bodies = Vec::new();
    for line in run.output.lines() {
        // 16:42:01.123456 comm[pid] ...
        let (ts, body) = line.split_once(' ').unwrap();
        assert_eq!(ts.len(), 15, "time of day with microseconds: {line:?}");
        assert!(
            ts.as_bytes()[2] == b':' && ts.as_bytes()[5] == b':' && ts.as_bytes()[8] == b'.',
            "{line:?}"
        );
        bodies.push(body.to_string());
    }
    for want in [
        format!("{comm}[{pid}] connect({fd}, {dest}) = 0"),
        format!("{comm}[{pid}] sendto({fd}, {local} -> {dest}) = 12 \"Hello World!\""),
        format!("{comm}[{pid}] recvfrom({fd}, {local} <- {dest}) = 4 \"Boo!\""),
        format!("{comm}[{pid}] close({fd}) = 0 [{local} -> {dest}]"),
        format!("{comm}[{pid}] +++ exited with 0 +++"),
    ] {
        assert!(
            bodies.contains(&want),
            "no line {want:?} in text output:\n{}",
            run.output
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. curl against python's http.server.

#[test]
fn curl_http_server() {
    let ns = Netns::new("curl");
    let dir = TempDir::new("curl");
    let www = dir.join("www");
    fs::create_dir(&www).unwrap();
    let content = b"capagent test file\nline two \x01\x02\xfe\xff end\n";
    fs::write(www.join("file.txt"), content).unwrap();
    let port = 8080u16;
    let httpd = python_http_server(&ns, &www, "127.0.0.1", port);

    let version = run_output(
        "curl --version",
        {
            let mut c = std::process::Command::new("curl");
            c.arg("--version");
            c
        },
        TIMEOUT,
    );
    // "curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/7.88.1 ..."
    let version = version.split_whitespace().nth(1).unwrap().to_string();
    let url = format!("http://127.0.0.1:{port}/file.txt");
    let cmd = ns.argv(&["curl", "-s", &url]);
    let run = trace(&dir, &with_cmd(JSON, &cmd), None);
    assert_ok(&run);
    check_summary(&run);
    assert_eq!(run.stdout_bytes, content, "curl's output");
    let evs = &run.events;
    let pid = exec_pid(evs, "curl");
    let dest = format!("127.0.0.1:{port}");
    let conn = one(evs, "curl's connect", |e| {
        e.ty() == "sock"
            && e.pid() == pid
            && e.syscall() == "connect"
            && e.str_of("addr") == Some(dest.as_str())
    });
    // Non-blocking connect: 0, or -115 EINPROGRESS.
    match conn.ret() {
        0 => assert!(conn.str_of("errno").is_none()),
        -115 => assert_eq!(conn.str_of("errno"), Some("EINPROGRESS")),
        r => panic!("connect returned {r}: {conn}"),
    }
    assert_eq!(conn.str_of("comm"), Some("curl"));
    assert_eq!(conn.str_of("transport"), Some("tcp"));
    let fd = conn.fd();
    let local = conn
        .str_of("local")
        .expect("local address of the connect")
        .to_string();
    assert!(local.starts_with("127.0.0.1:"), "{conn}");

    let sends = data_on(evs, pid, fd, "send");
    let request = format!(
        "GET /file.txt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: curl/{version}\r\nAccept: */*\r\n\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&concat(&sends)),
        request,
        "the request curl sent"
    );
    check_whole(&sends);
    check_ends(&sends, "tcp", &local, &dest);
    let recvs = data_on(evs, pid, fd, "recv");
    let response = concat(&recvs);
    check_whole(&recvs);
    check_ends(&recvs, "tcp", &local, &dest);
    assert!(
        response.starts_with(b"HTTP/1.0 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    let head_len = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of the response head")
        + 4;
    let head = String::from_utf8_lossy(&response[..head_len]).to_string();
    assert!(
        head.contains(&format!("\r\nContent-Length: {}\r\n", content.len())),
        "{head:?}"
    );
    assert_eq!(&response[head_len..], content, "the body curl received");
    drop(httpd);
}

// ---------------------------------------------------------------------------------------------
// 3. read/write on a socket (socat), stdin and stdout pipes not reported.

#[test]
fn socat_read_write_not_pipes() {
    let ns = Netns::new("socat");
    let dir = TempDir::new("socat");
    let request = b"PING-socat\n";
    let reply = b"PONG-socat\n";
    // The server keeps the connection open a little after replying, so that socat reads the
    // reply from an established connection (see tcp_endpoints_after_close_by_both_sides
    // for the other case).
    let mut srv = Server::start(
        &ns,
        &dir,
        "inet",
        "127.0.0.1",
        1,
        &[
            &format!("r:{}", request.len()),
            &format!("w:{}", hex(reply)),
            "sleep:0.3",
        ],
    );
    let dest = format!("127.0.0.1:{}", srv.port);
    let cmd = ns.argv(&["socat", "-", &format!("TCP:{dest}")]);
    let run = trace(&dir, &with_cmd(JSON, &cmd), Some(request));
    assert_ok(&run);
    check_summary(&run);
    assert_eq!(srv.recv(0), request);
    srv.done();
    assert_eq!(run.stdout_bytes, reply, "socat's stdout");
    let evs = &run.events;
    let pid = exec_pid(evs, "socat");
    let conn = one(evs, "socat's connect", |e| {
        e.ty() == "sock" && e.pid() == pid && e.syscall() == "connect"
    });
    assert_eq!(conn.ret(), 0, "{conn}");
    assert_eq!(conn.str_of("addr"), Some(dest.as_str()));
    let fd = conn.fd();
    let local = conn.str_of("local").unwrap().to_string();
    assert!(
        local.starts_with("127.0.0.1:") && !local.ends_with(":0"),
        "{conn}"
    );

    let sends = data_on(evs, pid, fd, "send");
    assert_eq!(sends.len(), 1, "{}", dump(evs));
    assert_eq!(sends[0].syscall(), "write");
    assert_eq!(sends[0].payload(), request);
    let recvs: Vec<&Value> = data_on(evs, pid, fd, "recv")
        .into_iter()
        .filter(|e| e.ret() > 0)
        .collect();
    assert!(recvs.iter().all(|e| e.syscall() == "read"), "{recvs:?}");
    assert_eq!(concat(&recvs), reply);
    check_whole(&sends);
    check_whole(&recvs);
    check_ends(&sends, "tcp", &local, &dest);
    check_ends(&recvs, "tcp", &local, &dest);

    // socat also read the request from its stdin (a pipe) and wrote the reply to its stdout
    // (a pipe): neither is a socket, so neither may be reported.
    for e in of_type(evs, "data") {
        assert!(
            e.str_of("transport").is_some(),
            "data event on a non-socket: {e}"
        );
        assert!(e.fd() > 2, "data event on stdin/stdout/stderr: {e}");
    }
    let with_request = of_type(evs, "data")
        .into_iter()
        .filter(|e| e.payload() == request)
        .count();
    let with_reply = of_type(evs, "data")
        .into_iter()
        .filter(|e| e.payload() == reply)
        .count();
    assert_eq!((with_request, with_reply), (1, 1), "{}", dump(evs));
}

// ---------------------------------------------------------------------------------------------
// 4. UDP: dig against a tiny DNS responder.

/// Answers one DNS query with an A record 127.0.0.7 for the name asked; prints the query and
/// the answer it sent as `RECV 0 <hex>`, `SENT 0 <hex>`, and the client's address.
const DNS_PY: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print("READY", s.getsockname()[1], flush=True)
q, peer = s.recvfrom(4096)
print("RECV 0", q.hex(), flush=True)
i = 12
while q[i] != 0:
    i += 1 + q[i]
question = q[12:i + 5]
resp = (q[:2] + bytes.fromhex("8180" "0001" "0001" "0000" "0000") + question
        + bytes.fromhex("c00c" "0001" "0001" "0000003c" "0004" "7f000007"))
s.sendto(resp, peer)
print("SENT 0", resp.hex(), flush=True)
print("PEER", "%s:%d" % peer, flush=True)
print("DONE", flush=True)
"#;

#[test]
fn udp_dig() {
    let ns = Netns::new("udp");
    let dir = TempDir::new("udp");
    let mut srv = Server::script(&ns, &dir, "dns.py", DNS_PY, &[]);
    let dest = format!("127.0.0.1:{}", srv.port);
    let cmd = ns.argv(&[
        "dig",
        "@127.0.0.1",
        "-p",
        &srv.port.to_string(),
        "example.test",
        "A",
        "+tries=1",
        "+time=2",
    ]);
    let run = trace(&dir, &with_cmd(JSON, &cmd), None);
    assert_ok(&run);
    check_summary(&run);
    let query = srv.recv(0);
    let answer = unhex(&srv.proc.expect("SENT 0", TIMEOUT));
    let peer = srv.proc.expect("PEER", TIMEOUT);
    srv.done();
    assert!(
        run.stdout.contains("status: NOERROR") && run.stdout.contains("127.0.0.7"),
        "dig got the answer: {}",
        run.stdout
    );
    let evs = &run.events;
    let pid = exec_pid(evs, "dig");
    let is_udp = |e: &Value| e.ty() == "data" && e.str_of("transport") == Some("udp");
    let send = one(evs, "the query", |e| {
        is_udp(e) && e["dir"] == "send" && e.ret() > 0
    });
    assert_eq!(send.pid(), pid);
    assert_eq!(send.payload(), query, "query bytes");
    if send.syscall() == "sendmmsg" {
        assert_eq!(send.ret(), 1, "one message: {send}");
        assert_eq!(send.int("msg_index"), 0, "{send}");
    }
    assert_eq!(send.int("total"), query.len() as i64);
    check_whole(&[send]);
    assert_eq!(send.str_of("remote"), Some(dest.as_str()), "{send}");
    assert_eq!(send.str_of("local"), Some(peer.as_str()), "{send}");
    if let Some(addr) = send.str_of("addr") {
        assert_eq!(addr, dest, "{send}");
    }
    let recv = one(evs, "the answer", |e| {
        is_udp(e) && e["dir"] == "recv" && e.ret() > 0
    });
    assert_eq!(recv.pid(), pid);
    assert_eq!(recv.payload(), answer, "answer bytes");
    if recv.syscall() == "recvmmsg" {
        assert_eq!(recv.ret(), 1, "one message: {recv}");
    }
    check_whole(&[recv]);
    assert_eq!(recv.str_of("remote"), Some(dest.as_str()), "{recv}");
    assert_eq!(recv.str_of("local"), Some(peer.as_str()), "{recv}");
    if let Some(addr) = recv.str_of("addr") {
        assert_eq!(addr, dest, "{recv}");
    }
    assert_eq!(send.str_of("sk"), recv.str_of("sk"), "one socket");
}

// ---------------------------------------------------------------------------------------------
// 5. Unix stream sockets: a path and an abstract name.

const UNIX_CLIENT_PY: &str = r#"
import os, socket, sys
path, abstract = sys.argv[1], sys.argv[2]
print("PID", os.getpid(), flush=True)
socks = []
for name, addr in (("path", path), ("abs", "\0" + abstract)):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(addr)
    print("FD_" + name, s.fileno(), flush=True)
    socks.append((name, s))
for (name, s), msg in zip(socks, (b"unix-path-ping\x00\xff\n", b"abstract-ping")):
    s.sendall(msg)
    got = b""
    while True:
        d = s.recv(100)
        if not d:
            break
        got += d
    print("GOT_" + name, got.hex(), flush=True)
    s.close()
"#;

#[test]
fn unix_path_and_abstract() {
    let ns = Netns::new("unix");
    let dir = TempDir::new("unix");
    let path = dir.join("srv.sock").to_str().unwrap().to_string();
    let abstract_name = format!("capagent-t-unix-{}", std::process::id());
    let (ping_p, pong_p) = (&b"unix-path-ping\x00\xff\n"[..], &b"unix-path-pong\x01"[..]);
    let (ping_a, pong_a) = (&b"abstract-ping"[..], &b"abstract-pong"[..]);
    let mut srv_p = Server::start(
        &ns,
        &dir,
        "unix",
        &path,
        1,
        &[
            &format!("r:{}", ping_p.len()),
            &format!("w:{}", hex(pong_p)),
        ],
    );
    let mut srv_a = Server::start(
        &ns,
        &dir,
        "unix",
        &format!("@{abstract_name}"),
        1,
        &[
            &format!("r:{}", ping_a.len()),
            &format!("w:{}", hex(pong_a)),
        ],
    );
    let client = dir.write("uclient.py", UNIX_CLIENT_PY);
    let cmd = ns.argv(&[python(), &client, &path, &abstract_name]);
    let run = trace(&dir, &with_cmd(JSON, &cmd), None);
    assert_ok(&run);
    check_summary(&run);
    assert_eq!(srv_p.recv(0), ping_p);
    assert_eq!(srv_a.recv(0), ping_a);
    srv_p.done();
    srv_a.done();
    assert_eq!(kv(&run.stdout, "GOT_path"), hex(pong_p));
    assert_eq!(kv(&run.stdout, "GOT_abs"), hex(pong_a));
    let evs = &run.events;
    let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
    for (name, addr, ping, pong) in [
        ("path", format!("unix:{path}"), ping_p, pong_p),
        ("abs", format!("unix:@{abstract_name}"), ping_a, pong_a),
    ] {
        let fd: i64 = kv(&run.stdout, &format!("FD_{name}")).parse().unwrap();
        let conn = sock_event(evs, pid, "connect", fd);
        assert_eq!(conn.ret(), 0, "{conn}");
        assert_eq!(conn.str_of("addr"), Some(addr.as_str()), "{conn}");
        assert_eq!(conn.str_of("transport"), Some("unix-stream"), "{conn}");
        let sends = data_on(evs, pid, fd, "send");
        let recvs = data_on(evs, pid, fd, "recv");
        assert_eq!(concat(&sends), ping, "{name}: sent bytes");
        assert_eq!(concat(&recvs), pong, "{name}: received bytes");
        check_whole(&sends);
        for e in sends.iter().chain(recvs.iter()) {
            assert_eq!(e.str_of("transport"), Some("unix-stream"), "{e}");
            assert_eq!(e.str_of("remote"), Some(addr.as_str()), "{e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. --pid attaches to a running process with an established connection.

const LATE_CLIENT_PY: &str = r#"
import os, socket, sys, time
port, go = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(("127.0.0.1", port))
s.sendall(b"first")
print("PID", os.getpid(), flush=True)
print("FD", s.fileno(), flush=True)
print("LOCAL", s.getsockname()[1], flush=True)
deadline = time.time() + 25
while not os.path.exists(go):
    # A call capagent reports, so the test sees when capagent has attached.
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    time.sleep(0.05)
    if time.time() > deadline:
        sys.exit(2)
s.sendall(b"second")
got = b""
while True:
    d = s.recv(100)
    if not d:
        break
    got += d
print("GOT", got.hex(), flush=True)
"#;

#[test]
fn pid_attach_mid_connection() {
    let ns = Netns::new("pid");
    let dir = TempDir::new("pid");
    let reply = b"reply-after-second";
    let mut srv = Server::start(
        &ns,
        &dir,
        "inet",
        "127.0.0.1",
        1,
        &["r:5", "r:6", &format!("w:{}", hex(reply))],
    );
    let go = dir.join("go");
    let script = dir.write("late.py", LATE_CLIENT_PY);
    let mut cmd = ns.cmd(python());
    cmd.arg(&script).arg(srv.port.to_string()).arg(&go);
    let mut client = Proc::spawn("client", cmd);
    let pid: u32 = client.expect("PID", TIMEOUT).parse().unwrap();
    let fd: i64 = client.expect("FD", TIMEOUT).parse().unwrap();
    let local = format!("127.0.0.1:{}", client.expect("LOCAL", TIMEOUT));
    let dest = format!("127.0.0.1:{}", srv.port);
    assert_eq!(srv.recv(0), b"first", "sent before capagent started");

    let mut live = LiveTrace::spawn(
        &dir,
        &strings(&["--format", "json", "--pid", &pid.to_string()]),
    );
    live.poke_until(
        TIMEOUT,
        || {},
        |e| e.ty() == "sock" && e.pid() == pid && e.syscall() == "socket",
    );
    fs::write(&go, b"").unwrap();
    assert_eq!(client.expect("GOT", TIMEOUT), hex(reply));
    assert!(client.wait(TIMEOUT).success());
    // The traced process is gone: capagent ends by itself.
    let run = live.finish(TIMEOUT);
    assert_ok(&run);
    check_summary(&run);
    assert_eq!(srv.recv(0), b"second");
    srv.done();
    let evs = &run.events;

    let sends = data_on(evs, pid, fd, "send");
    assert_eq!(sends.len(), 1, "{}", dump(evs));
    assert_eq!(sends[0].payload(), b"second");
    assert_eq!(sends[0].syscall(), "sendto");
    assert_eq!(sends[0].ret(), 6);
    let recvs = data_on(evs, pid, fd, "recv");
    assert_eq!(concat(&recvs), reply);
    check_whole(&sends);
    check_whole(&recvs);
    // The connection predates capagent: its endpoints come from the kernel socket.
    check_ends(&sends, "tcp", &local, &dest);
    check_ends(&recvs, "tcp", &local, &dest);
    assert!(
        !evs.iter()
            .any(|e| e.ty() == "sock" && e.syscall() == "connect"),
        "the connect happened before capagent started:\n{}",
        dump(evs)
    );
    for e in of_type(evs, "data") {
        assert_ne!(e.payload(), b"first", "sent before capagent started: {e}");
    }
    let close = sock_event(evs, pid, "close", fd);
    assert_eq!(close.str_of("remote"), Some(dest.as_str()));
    let exit = one(evs, "exit", |e| e.ty() == "exit" && e.pid() == pid);
    assert_eq!(exit["exit_code"], 0);
}

// ---------------------------------------------------------------------------------------------
// 7. Children of a traced process.

const FORK_CLIENT_PY: &str = r#"
import os, socket, sys
port = int(sys.argv[1])
def talk(msg):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("127.0.0.1", port))
    s.sendall(msg)
    got = b""
    while True:
        d = s.recv(100)
        if not d:
            break
        got += d
    s.close()
    return got
print("PARENT", os.getpid(), flush=True)
child = os.fork()
if child == 0:
    got = talk(b"from-child!")
    print("CHILD", os.getpid(), got.hex(), flush=True)
    os._exit(0)
_, st = os.waitpid(child, 0)
print("FORKED", child, flush=True)
print("PGOT", talk(b"from-parent").hex(), flush=True)
sys.exit(0 if st == 0 else 1)
"#;

#[test]
fn forks_followed_and_not() {
    let ns = Netns::new("fork");
    let dir = TempDir::new("fork");
    let mut srv = Server::reply(&ns, &dir, 4, "r:11", b"ok");
    let script = dir.write("fork.py", FORK_CLIENT_PY);
    let cmd = ns.argv(&[python(), &script, &srv.port.to_string()]);
    let dest = format!("127.0.0.1:{}", srv.port);
    let comm = python_comm();

    // Followed (the default for -- CMD).
    let run = trace(&dir, &with_cmd(JSON, &cmd), None);
    assert_ok(&run);
    check_summary(&run);
    assert_eq!(srv.recv(0), b"from-child!");
    assert_eq!(srv.recv(1), b"from-parent");
    let parent: u32 = kv(&run.stdout, "PARENT").parse().unwrap();
    let child: u32 = kv(&run.stdout, "FORKED").parse().unwrap();
    assert_ne!(parent, child);
    let evs = &run.events;
    let fork = one(evs, "the fork", |e| e.ty() == "fork" && e.pid() == parent);
    assert_eq!(fork.int("child_pid"), i64::from(child), "{fork}");
    assert_eq!(fork.ret(), i64::from(child), "{fork}");
    for (pid, msg) in [(child, b"from-child!"), (parent, b"from-parent")] {
        let conn = one(evs, "connect", |e| {
            e.ty() == "sock" && e.pid() == pid && e.syscall() == "connect"
        });
        assert_eq!(conn.str_of("addr"), Some(dest.as_str()));
        assert_eq!(conn.ret(), 0);
        let sends = data_on(evs, pid, conn.fd(), "send");
        assert_eq!(concat(&sends), msg, "pid {pid}");
        let recvs = data_on(evs, pid, conn.fd(), "recv");
        assert_eq!(concat(&recvs), b"ok", "pid {pid}");
        for e in sends.iter().chain(recvs.iter()) {
            assert_eq!(e.str_of("comm"), Some(comm.as_str()), "{e}");
            assert_eq!(e.int("tid"), i64::from(pid), "{e}");
        }
    }
    let exit = one(evs, "child's exit", |e| {
        e.ty() == "exit" && e.pid() == child
    });
    assert_eq!(exit["exit_code"], 0);

    // Not followed.
    let run = trace(
        &dir,
        &with_cmd(&["--format", "json", "--no-follow-forks"], &cmd),
        None,
    );
    assert_ok(&run);
    check_summary(&run);
    assert_eq!(srv.recv(2), b"from-child!", "the child did its exchange");
    assert_eq!(srv.recv(3), b"from-parent");
    srv.done();
    let parent: u32 = kv(&run.stdout, "PARENT").parse().unwrap();
    let child: u32 = kv(&run.stdout, "FORKED").parse().unwrap();
    let evs = &run.events;
    assert!(
        of_pid(evs, child).is_empty(),
        "events of the untraced child {child}:\n{}",
        dump(evs)
    );
    for e in of_type(evs, "data") {
        assert_ne!(e.payload(), b"from-child!", "{e}");
    }
    let conn = one(evs, "parent's connect", |e| {
        e.ty() == "sock" && e.pid() == parent && e.syscall() == "connect"
    });
    assert_eq!(
        concat(&data_on(evs, parent, conn.fd(), "send")),
        b"from-parent"
    );
    assert_eq!(concat(&data_on(evs, parent, conn.fd(), "recv")), b"ok");
}

// ---------------------------------------------------------------------------------------------
// 8. Regular files and pipes are not reported.

const FILES_PY: &str = r#"
import os, socket, sys
port, fpath = int(sys.argv[1]), sys.argv[2]

def file_io(marker):
    fd = os.open(fpath, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    assert os.write(fd, marker + b"-write") == len(marker) + 6
    assert os.writev(fd, [marker + b"-wv1", marker + b"-wv2"]) > 0
    os.lseek(fd, 0, 0)
    assert os.read(fd, 5) == marker[:5]
    buf = bytearray(200)
    assert os.readv(fd, [buf]) > 0
    os.close(fd)
    return fd

file_io(b"FILE-MARKER-before")
r, w = os.pipe()
os.write(w, b"PIPE-MARKER-bytes")
assert os.read(r, 100) == b"PIPE-MARKER-bytes"
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(("127.0.0.1", port))
sfd = s.fileno()
s.sendall(b"SOCK-MARKER-out")
got = b""
while True:
    d = s.recv(100)
    if not d:
        break
    got += d
s.close()
# The socket's fd number, now a regular file.
assert file_io(b"FILE-MARKER-after") == sfd
os.write(1, b"STDOUT-MARKER\n")
print("SOCKFD", sfd)
print("PID", os.getpid())
print("GOT", got.hex())
"#;

#[test]
fn files_and_pipes_not_reported() {
    let ns = Netns::new("files");
    let dir = TempDir::new("files");
    let mut srv = Server::reply(&ns, &dir, 1, "r:15", b"SOCK-MARKER-in");
    let script = dir.write("files.py", FILES_PY);
    let file = dir.join("data.bin");
    let cmd = ns.argv(&[
        python(),
        &script,
        &srv.port.to_string(),
        file.to_str().unwrap(),
    ]);
    let run = trace(&dir, &with_cmd(JSON, &cmd), None);
    assert_ok(&run);
    check_summary(&run);
    assert_eq!(srv.recv(0), b"SOCK-MARKER-out");
    srv.done();
    assert!(run.stdout.contains("STDOUT-MARKER\n"));
    assert_eq!(kv(&run.stdout, "GOT"), hex(b"SOCK-MARKER-in"));
    let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
    let sfd: i64 = kv(&run.stdout, "SOCKFD").parse().unwrap();
    let evs = &run.events;
    assert_eq!(concat(&data_on(evs, pid, sfd, "send")), b"SOCK-MARKER-out");
    assert_eq!(concat(&data_on(evs, pid, sfd, "recv")), b"SOCK-MARKER-in");
    for e in of_type(evs, "data") {
        assert!(
            e.str_of("transport").is_some(),
            "data event on a non-socket: {e}"
        );
        let p = e.payload();
        let text = String::from_utf8_lossy(&p);
        for marker in ["FILE-MARKER", "PIPE-MARKER", "STDOUT-MARKER"] {
            assert!(!text.contains(marker), "{marker} reported: {e}");
        }
    }
    // The socket's send, its recv, the recv that saw EOF; nothing else.
    let tcp: Vec<(i64, &str, i64, Vec<u8>)> = of_type(evs, "data")
        .into_iter()
        .filter(|e| e.str_of("transport") == Some("tcp"))
        .map(|e| (e.fd(), e["dir"].as_str().unwrap(), e.ret(), e.payload()))
        .collect();
    assert_eq!(
        tcp,
        vec![
            (sfd, "send", 15, b"SOCK-MARKER-out".to_vec()),
            (sfd, "recv", 14, b"SOCK-MARKER-in".to_vec()),
            (sfd, "recv", 0, Vec::new()),
        ],
        "only the socket's calls:\n{}",
        dump(evs)
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Lost records are reported and counted.

const BLAST_PY: &str = r#"
import os, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(("127.0.0.1", port))
print("PID", os.getpid(), flush=True)
print("FD", s.fileno(), flush=True)
for i in range(n):
    s.sendall(b"%08d" % i + b"." * 92)
s.close()
"#;

fn blast_msg(i: usize) -> Vec<u8> {
    let mut m = format!("{i:08}").into_bytes();
    m.extend_from_slice(&[b'.'; 92]);
    m
}

/// Traces [`BLAST_PY`] sending `n` 100-byte messages with the capagent options `opts`;
/// returns the run, the client's pid and socket fd. The server checks it got every byte.
fn blast(tag: &str, n: usize, opts: &[&str]) -> (TraceRun, u32, i64) {
    let ns = Netns::new(tag);
    let dir = TempDir::new(tag);
    let mut srv = Server::start(&ns, &dir, "inet", "127.0.0.1", 1, &["count"]);
    let script = dir.write("blast.py", BLAST_PY);
    let cmd = ns.argv(&[python(), &script, &srv.port.to_string(), &n.to_string()]);
    let run = trace(&dir, &with_cmd(opts, &cmd), None);
    assert_ok(&run);
    assert_eq!(srv.count(0), (n * 100) as u64, "the server got every byte");
    srv.done();
    check_summary(&run);
    let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
    let fd: i64 = kv(&run.stdout, "FD").parse().unwrap();
    (run, pid, fd)
}

/// Checks that the reported sends are whole messages of [`BLAST_PY`], in order, none twice;
/// returns how many there are.
fn check_blast_sends(sends: &[&Value]) -> usize {
    let mut next = 0usize;
    for e in sends {
        let p = e.payload();
        assert_eq!(p.len(), 100, "{e}");
        assert_eq!(e.ret(), 100, "{e}");
        let i: usize = std::str::from_utf8(&p[..8]).unwrap().parse().unwrap();
        assert!(i >= next, "send {i} after {next}: out of order or twice");
        assert_eq!(p, blast_msg(i));
        next = i + 1;
    }
    sends.len()
}

#[test]
fn loss_accounting() {
    const N: usize = 20000;
    let (run, pid, fd) = blast(
        "loss",
        N,
        &["--format", "json", "--ring-kib", "16", "--allow-loss"],
    );
    let evs = &run.events;
    let (_, lost, lost_bytes) = run.summary();
    let lost_recs = of_type(evs, "lost");
    assert!(
        !lost_recs.is_empty(),
        "no lost record with a 16 KiB ring:\n{}",
        run.stderr
    );
    for l in &lost_recs {
        assert!(l.int("events") > 0, "{l}");
        assert!(l["ts"].is_string() && l["ts_ns"].is_u64(), "{l}");
    }
    assert!(lost > 0, "{}", run.stderr);
    // (check_summary: the lost records add up to the summary's count and bytes.)

    // Every send that was not lost is reported whole and in order; the ones missing are
    // exactly the lost payload bytes.
    let reported = check_blast_sends(&data_on(evs, pid, fd, "send"));
    assert!(reported < N);
    let missing = (N - reported) as u64;
    assert_eq!(
        lost_bytes,
        missing * 100,
        "lost payload bytes vs sends missing ({reported} of {N} reported)"
    );
    assert!(lost >= missing, "lost {lost} < missing {missing}");
}

#[test]
fn lossless_by_default() {
    // The same blast through the same small ring, without --allow-loss: the traced process
    // is paused while capagent catches up, and every send is reported.
    const N: usize = 20000;
    let (run, pid, fd) = blast("lossless", N, &["--format", "json", "--ring-kib", "16"]);
    let evs = &run.events;
    let (_, lost, lost_bytes) = run.summary();
    assert_eq!((lost, lost_bytes), (0, 0), "{}", run.stderr);
    assert!(of_type(evs, "lost").is_empty());
    let sends = data_on(evs, pid, fd, "send");
    assert_eq!(check_blast_sends(&sends), N, "every send reported");
    let exit = one(evs, "exit", |e| e.ty() == "exit" && e.pid() == pid);
    assert_eq!(exit["exit_code"], 0);
}

// ---------------------------------------------------------------------------------------------
// 10. Snap length.

#[test]
fn snaplen() {
    let ns = Netns::new("snap");
    let dir = TempDir::new("snap");
    let small = pattern(100, 1);
    let small_reply = pattern(50, 2);
    let big = pattern(1 << 20, 3);
    let big_reply = pattern((1 << 20) + 13, 4);
    let big_path = dir.write("big.bin", &big);
    let reply_path = dir.write("reply.bin", &big_reply);

    // -s 10: a prefix of each call.
    let mut srv = Server::reply(&ns, &dir, 1, "r:100", &small_reply);
    let cmd = client_argv(
        &ns,
        &dir,
        "inet",
        "127.0.0.1",
        srv.port,
        &[&format!("w:{}", hex(&small)), "r:eof"],
    );
    let run = trace(
        &dir,
        &with_cmd(&["--format", "json", "-s", "10"], &cmd),
        None,
    );
    assert_ok(&run);
    check_summary(&run);
    assert_eq!(srv.recv(0), small);
    srv.done();
    assert_eq!(kv(&run.stdout, "GOT"), hex(&small_reply));
    let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
    let fd: i64 = kv(&run.stdout, "FD").parse().unwrap();
    let evs = &run.events;
    let sends = data_on(evs, pid, fd, "send");
    assert_eq!(sends.len(), 1, "{}", dump(evs));
    let s = sends[0];
    assert_eq!(s.ret(), 100);
    assert_eq!(s.int("total"), 100);
    assert_eq!(s.int("captured"), 10);
    assert_eq!(s["truncated"], true);
    assert_eq!(s.payload(), &small[..10]);
    let recvs: Vec<&Value> = data_on(evs, pid, fd, "recv")
        .into_iter()
        .filter(|e| e.ret() > 0)
        .collect();
    let mut off = 0usize;
    for e in &recvs {
        let total = e.int("total") as usize;
        let want = total.min(10);
        assert_eq!(e.int("captured") as usize, want, "{e}");
        assert_eq!(e["truncated"], total > 10, "{e}");
        assert_eq!(e.payload(), &small_reply[off..off + want], "{e}");
        off += total;
    }
    assert_eq!(off, small_reply.len(), "bytes received");

    // -s 0: everything, however large the call.
    let mut srv = Server::start(
        &ns,
        &dir,
        "inet",
        "127.0.0.1",
        1,
        &["r:eof", &format!("wf:{reply_path}")],
    );
    let cmd = client_argv(
        &ns,
        &dir,
        "inet",
        "127.0.0.1",
        srv.port,
        &[&format!("wf:{big_path}"), "shut", "r:eof"],
    );
    let run = trace(
        &dir,
        &with_cmd(&["--format", "json", "-s", "0"], &cmd),
        None,
    );
    assert_ok(&run);
    check_summary(&run);
    assert!(srv.recv(0) == big, "the server got the 1 MiB");
    srv.done();
    assert!(
        kv(&run.stdout, "GOT") == hex(&big_reply),
        "the client got the reply"
    );
    let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
    let fd: i64 = kv(&run.stdout, "FD").parse().unwrap();
    let evs = &run.events;
    let sends = data_on(evs, pid, fd, "send");
    check_whole(&sends);
    let sent = concat(&sends);
    assert_eq!(sent.len(), big.len());
    assert!(sent == big, "sent bytes differ from the pattern");
    let recvs: Vec<&Value> = data_on(evs, pid, fd, "recv")
        .into_iter()
        .filter(|e| e.ret() > 0)
        .collect();
    check_whole(&recvs);
    let got = concat(&recvs);
    assert_eq!(got.len(), big_reply.len());
    assert!(got == big_reply, "received bytes differ from the pattern");
}

// ---------------------------------------------------------------------------------------------
// 11. --comm picks up processes started later, and only those.

#[test]
fn comm_picks_up_new_process() {
    const DURATION: f64 = 6.0;
    let ns = Netns::new("comm");
    let dir = TempDir::new("comm");
    let name = "capagtestcli";
    let named = dir.join(name);
    std::os::unix::fs::symlink(python(), &named).unwrap();
    let named = named.to_str().unwrap().to_string();
    let mut srv = Server::reply(&ns, &dir, 2, "r:10", b"comm-reply");
    let client = dir.write("client.py", CLIENT_PY);
    let dest = format!("127.0.0.1:{}", srv.port);
    let client_cmd = |interp: &str, msg: &[u8]| {
        let mut c = ns.cmd(interp);
        c.args([
            client.as_str(),
            "inet",
            "127.0.0.1",
            &srv.port.to_string(),
            &format!("w:{}", hex(msg)),
            "r:eof",
        ]);
        c
    };

    let mut live = LiveTrace::spawn(
        &dir,
        &strings(&[
            "--format",
            "json",
            "--comm",
            name,
            "--duration",
            &DURATION.to_string(),
        ]),
    );
    // Short-lived processes of that name until capagent reports one.
    live.poke_until(
        TIMEOUT,
        || {
            let mut c = ns.cmd(&named);
            c.args(["-c", "import socket; socket.socket().close()"]);
            run_output("canary", c, TIMEOUT);
        },
        |e| e.str_of("comm") == Some(name) && e.syscall() == "socket",
    );
    let out = run_output("named client", client_cmd(&named, b"named-cli!"), TIMEOUT);
    let named_pid: u32 = kv(&out, "PID").parse().unwrap();
    let named_fd: i64 = kv(&out, "FD").parse().unwrap();
    let named_local = format!("127.0.0.1:{}", kv(&out, "LOCAL"));
    let out = run_output(
        "python3 client",
        client_cmd(python(), b"other-cli!"),
        TIMEOUT,
    );
    let other_pid: u32 = kv(&out, "PID").parse().unwrap();
    assert_eq!(srv.recv(0), b"named-cli!");
    assert_eq!(srv.recv(1), b"other-cli!");
    srv.done();
    let run = live.finish(Duration::from_secs_f64(DURATION) + TIMEOUT);
    assert_ok(&run);
    check_summary(&run);
    assert!(
        run.elapsed >= Duration::from_secs_f64(DURATION),
        "--duration {DURATION} but capagent ended after {:?}",
        run.elapsed
    );
    let evs = &run.events;
    let conn = sock_event(evs, named_pid, "connect", named_fd);
    assert_eq!(conn.str_of("comm"), Some(name));
    assert_eq!(conn.str_of("addr"), Some(dest.as_str()));
    let sends = data_on(evs, named_pid, named_fd, "send");
    let recvs = data_on(evs, named_pid, named_fd, "recv");
    assert_eq!(concat(&sends), b"named-cli!");
    assert_eq!(concat(&recvs), b"comm-reply");
    check_ends(&sends, "tcp", &named_local, &dest);
    for e in sends.iter().chain(recvs.iter()) {
        assert_eq!(e.str_of("comm"), Some(name), "{e}");
    }
    assert!(
        of_pid(evs, other_pid).is_empty(),
        "events of the process named {}:\n{}",
        python_comm(),
        dump(evs)
    );
    for e in evs.iter().filter(|e| e.ty() != "lost") {
        assert_eq!(e.str_of("comm"), Some(name), "only {name} is traced: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// 12. --all --events connect.

#[test]
fn all_processes_connect_only() {
    let ns = Netns::new("all");
    let dir = TempDir::new("all");
    let www = dir.join("www");
    fs::create_dir(&www).unwrap();
    fs::write(www.join("index.html"), b"hello all\n").unwrap();
    let port = 8080u16;
    let httpd = python_http_server(&ns, &www, "127.0.0.1", port);

    let mut live = LiveTrace::spawn(
        &dir,
        &strings(&["--format", "json", "--all", "--events", "connect"]),
    );
    // Connections refused on port 9 until capagent reports one.
    let mut canary = || {
        let mut c = ns.cmd(python());
        c.args([
            "-c",
            "import socket; socket.socket().connect_ex(('127.0.0.1', 9))",
        ]);
        run_output("canary", c, TIMEOUT);
    };
    live.poke_until(TIMEOUT, &mut canary, |e| {
        e.ty() == "sock" && e.str_of("addr") == Some("127.0.0.1:9")
    });
    let mut curl = ns.cmd("curl");
    curl.args(["-s", &format!("http://127.0.0.1:{port}/index.html")]);
    let mut curl = Proc::spawn("curl", curl);
    let curl_pid = curl.pid();
    assert_eq!(curl.expect("hello", TIMEOUT), "all");
    assert!(curl.wait(TIMEOUT).success());
    // Let capagent's output catch up with curl before stopping it (it flushes its output
    // when events arrive: the canary makes some).
    live.poke_until(TIMEOUT, &mut canary, |e| {
        e.ty() == "exit" && e.pid() == curl_pid
    });
    let run = live.stop();
    assert_ok(&run);
    check_summary(&run);
    let evs = &run.events;
    let dest = format!("127.0.0.1:{port}");
    let conn = one(evs, "curl's connect", |e| {
        e.ty() == "sock" && e.pid() == curl_pid && e.str_of("addr") == Some(dest.as_str())
    });
    assert_eq!(conn.syscall(), "connect");
    assert_eq!(conn.str_of("comm"), Some("curl"));
    assert_eq!(conn.str_of("remote"), Some(dest.as_str()));
    assert_eq!(conn.str_of("transport"), Some("tcp"));
    assert!(matches!(conn.ret(), 0 | -115), "{conn}");
    assert!(
        of_type(evs, "data").is_empty(),
        "data events with --events connect:\n{}",
        dump(evs)
    );
    for e in of_type(evs, "sock") {
        assert_eq!(e.syscall(), "connect", "{e}");
    }
    drop(httpd);
}

// ---------------------------------------------------------------------------------------------
// 13. Exit status and errors.

#[test]
fn exit_status_and_errors() {
    let ns = Netns::new("exit");
    let dir = TempDir::new("exit");
    let run = trace(
        &dir,
        &with_cmd(&["--format", "json"], &ns.argv(&["sh", "-c", "exit 3"])),
        None,
    );
    assert_eq!(run.status.code(), Some(3), "{}", run.describe());
    let exit = one(&run.events, "sh's exit", |e| e.ty() == "exit");
    assert_eq!(exit["exit_code"], 3);
    let run = trace(
        &dir,
        &with_cmd(
            &["--format", "json"],
            &ns.argv(&["sh", "-c", "kill -TERM $$"]),
        ),
        None,
    );
    assert_eq!(run.status.code(), Some(128 + 15), "{}", run.describe());
    let exit = one(&run.events, "sh's exit", |e| e.ty() == "exit");
    assert_eq!(exit["signal"], "SIGTERM");
    assert_eq!(exit["exit_code"], Value::Null);

    for (args, what) in [
        (strings(&["--pid", "999999999"]), "999999999"),
        (strings(&[]), "nothing to trace"),
        (strings(&["--pid", "1", "--ring-kib", "3"]), "3"),
        (strings(&["--pid", "1", "--duration=0"]), "duration"),
        (
            strings(&["--", "/nonexistent/capagent-t"]),
            "/nonexistent/capagent-t",
        ),
    ] {
        let run = trace(&dir, &args, None);
        assert_ne!(run.status.code(), Some(0), "{args:?}: {}", run.describe());
        assert!(
            run.status.code().is_some(),
            "{args:?} killed: {}",
            run.status
        );
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: one line on stderr: {:?}",
            run.stderr
        );
        assert!(
            lines[0].starts_with("capagent: "),
            "{args:?}: {:?}",
            lines[0]
        );
        assert!(lines[0].contains(what), "{args:?}: {:?}", lines[0]);
    }
}

// ---------------------------------------------------------------------------------------------
// 14. IPv6.

#[test]
fn tcp_ipv6() {
    let ns = Netns::new("v6");
    let dir = TempDir::new("v6");
    let msg = b"hello over [::1]\x00\x7f";
    let reply = b"v6-reply\r\n";
    let mut srv = Server::start(
        &ns,
        &dir,
        "inet6",
        "::1",
        1,
        &[&format!("r:{}", msg.len()), &format!("w:{}", hex(reply))],
    );
    let cmd = client_argv(
        &ns,
        &dir,
        "inet6",
        "::1",
        srv.port,
        &[&format!("w:{}", hex(msg)), "r:eof"],
    );
    let run = trace(&dir, &with_cmd(JSON, &cmd), None);
    assert_ok(&run);
    check_summary(&run);
    assert_eq!(srv.recv(0), msg);
    srv.done();
    assert_eq!(kv(&run.stdout, "GOT"), hex(reply));
    let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
    let fd: i64 = kv(&run.stdout, "FD").parse().unwrap();
    let local = format!("[::1]:{}", kv(&run.stdout, "LOCAL"));
    let dest = format!("[::1]:{}", srv.port);
    let evs = &run.events;
    let conn = sock_event(evs, pid, "connect", fd);
    assert_eq!(conn.ret(), 0);
    assert_eq!(conn.str_of("addr"), Some(dest.as_str()));
    assert_eq!(conn.str_of("remote"), Some(dest.as_str()));
    assert_eq!(conn.str_of("local"), Some(local.as_str()));
    let sock = one(evs, "socket()", |e| {
        e.ty() == "sock"
            && e.pid() == pid
            && e.syscall() == "socket"
            && e.fd() == fd
            && e.str_of("transport") == Some("tcp")
    });
    assert_eq!(sock["args"][0], 10, "AF_INET6: {sock}");
    let sends = data_on(evs, pid, fd, "send");
    let recvs = data_on(evs, pid, fd, "recv");
    assert_eq!(concat(&sends), msg);
    assert_eq!(concat(&recvs), reply);
    check_whole(&sends);
    check_ends(&sends, "tcp", &local, &dest);
    check_ends(&recvs, "tcp", &local, &dest);
}

// ---------------------------------------------------------------------------------------------
// 15. The process name is the one the process had when it made the call.

#[test]
fn comm_at_the_time_of_the_call() {
    // `ip netns exec` opens and binds netlink sockets, then execs python3 (the same pid):
    // the calls before the second exec were made by a process named "ip".
    let ns = Netns::new("name");
    let dir = TempDir::new("name");
    let cmd = ns.argv(&[python(), "-c", "import socket; socket.socket().close()"]);
    let run = trace(&dir, &with_cmd(JSON, &cmd), None);
    assert_ok(&run);
    check_summary(&run);
    let evs = &run.events;
    let execs: Vec<usize> = (0..evs.len()).filter(|&i| evs[i].ty() == "exec").collect();
    assert_eq!(execs.len(), 2, "exec of ip, exec of python:\n{}", dump(evs));
    let names: Vec<(&str, &str)> = evs
        .iter()
        .map(|e| (e.syscall(), e.str_of("comm").unwrap()))
        .collect();
    let py = python_comm();
    let mut want = Vec::new();
    for (i, e) in evs.iter().enumerate() {
        let name = if i < execs[1] { "ip" } else { py.as_str() };
        want.push((e.syscall(), name));
    }
    assert!(
        evs[execs[0] + 1..execs[1]]
            .iter()
            .any(|e| e.ty() == "sock" && e.syscall() == "socket"),
        "ip's netlink socket:\n{}",
        dump(evs)
    );
    assert_eq!(names, want, "process names:\n{}", dump(evs));
}

// ---------------------------------------------------------------------------------------------
// 16. A connection's endpoints stay the same after both sides have closed it.

const HALF_CLOSE_PY: &str = r#"
import os, socket, struct, sys, time
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(("127.0.0.1", port))
print("PID", os.getpid(), flush=True)
print("FD", s.fileno(), flush=True)
print("LOCAL", s.getsockname()[1], flush=True)
s.sendall(b"ping")
s.shutdown(socket.SHUT_WR)
# Wait until the server has replied and closed too: the kernel then calls the connection
# closed (TCP_CLOSE, 7), with the reply still waiting to be read.
deadline = time.time() + 10
while s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 7:
    if time.time() > deadline:
        sys.exit("the server did not close")
    time.sleep(0.01)
print("GOT", s.recv(100).hex(), flush=True)
print("EOF", len(s.recv(100)), flush=True)
s.close()
"#;

#[test]
fn tcp_endpoints_after_close_by_both_sides() {
    let ns = Netns::new("fin");
    let dir = TempDir::new("fin");
    let mut srv = Server::reply(&ns, &dir, 1, "r:eof", b"pong");
    let script = dir.write("halfclose.py", HALF_CLOSE_PY);
    let cmd = ns.argv(&[python(), &script, &srv.port.to_string()]);
    let run = trace(&dir, &with_cmd(JSON, &cmd), None);
    assert_ok(&run);
    check_summary(&run);
    assert_eq!(srv.recv(0), b"ping");
    srv.done();
    assert_eq!(kv(&run.stdout, "GOT"), hex(b"pong"));
    assert_eq!(kv(&run.stdout, "EOF"), "0");
    let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
    let fd: i64 = kv(&run.stdout, "FD").parse().unwrap();
    let lport = kv(&run.stdout, "LOCAL");
    let local = format!("127.0.0.1:{lport}");
    let dest = format!("127.0.0.1:{}", srv.port);
    let evs = &run.events;
    let sends = data_on(evs, pid, fd, "send");
    let recvs = data_on(evs, pid, fd, "recv");
    assert_eq!(concat(&sends), b"ping");
    assert_eq!(concat(&recvs), b"pong");
    assert_eq!(recvs.len(), 2, "the reply, then EOF");
    check_ends(&sends, "tcp", &local, &dest);
    // The reply was read after the connection had closed; it still came over local -> dest.
    check_ends(&recvs, "tcp", &local, &dest);
    let close = sock_event(evs, pid, "close", fd);
    assert_eq!(close.str_of("local"), Some(local.as_str()), "{close}");
    assert_eq!(close.str_of("remote"), Some(dest.as_str()), "{close}");
    // One connection in the summary, with both directions.
    let comm = python_comm();
    let rows: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{comm}[{pid}] fd {fd} tcp ")))
        .collect();
    assert_eq!(
        rows,
        vec![format!("{comm}[{pid}] fd {fd} tcp {local} -> {dest}  sent 4 B  recv 4 B").as_str()],
        "summary rows:\n{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// socketpair: the call that makes the two fds, as strace shows it, and the data on them.

const SOCKETPAIR_PY: &str = r#"
import os, socket
a, b = socket.socketpair()
print("PID", os.getpid(), flush=True)
print("FDS", a.fileno(), b.fileno(), flush=True)
a.sendall(b"ping\x00\xff")
got = b.recv(100)
b.sendall(b"pong!")
got2 = a.recv(100)
print("GOT", got.hex(), got2.hex(), flush=True)
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
print("DFDS", c.fileno(), d.fileno(), flush=True)
c.send(b"dgram")
d.recv(100)
for s in (a, b, c, d):
    s.close()
try:
    socket.socketpair(socket.AF_INET, socket.SOCK_STREAM)
except OSError as e:
    print("ERR", e.errno, flush=True)
"#;

#[test]
fn socketpair_python_and_curl() {
    let ns = Netns::new("sockpair");
    let dir = TempDir::new("sockpair");
    let script = dir.write("pair.py", SOCKETPAIR_PY);
    let cmd = ns.argv(&[python(), &script]);

    // JSON: one record with both fds; the data on each fd is its socket's.
    let run = trace(&dir, &with_cmd(JSON, &cmd), None);
    assert_ok(&run);
    check_summary(&run);
    let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
    let fds: Vec<i64> = kv(&run.stdout, "FDS")
        .split(' ')
        .map(|f| f.parse().unwrap())
        .collect();
    let dfds: Vec<i64> = kv(&run.stdout, "DFDS")
        .split(' ')
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(kv(&run.stdout, "ERR"), "95", "EOPNOTSUPP");
    let evs = &run.events;
    let pairs: Vec<&Value> = evs
        .iter()
        .filter(|e| e.ty() == "sock" && e.pid() == pid && e.syscall() == "socketpair")
        .collect();
    assert_eq!(pairs.len(), 3, "{}", dump(evs));
    let cloexec = 0o2000000;
    let (p, dp, failed) = (pairs[0], pairs[1], pairs[2]);
    assert_eq!(p["fds"], serde_json::json!(fds), "{p}");
    assert_eq!((p.fd(), p.ret()), (fds[0], 0), "{p}");
    assert_eq!(p["args"], serde_json::json!([1, 1 | cloexec, 0, 0]), "{p}");
    assert_eq!(p.str_of("transport"), Some("unix-stream"), "{p}");
    assert_eq!(dp["fds"], serde_json::json!(dfds), "{dp}");
    assert_eq!(
        dp["args"],
        serde_json::json!([1, 2 | cloexec, 0, 0]),
        "{dp}"
    );
    assert_eq!(dp.str_of("transport"), Some("unix-dgram"), "{dp}");
    assert_eq!(failed["fds"], Value::Null, "{failed}");
    assert_eq!((failed.fd(), failed.ret()), (-1, -95), "{failed}");
    assert_eq!(failed.str_of("errno"), Some("EOPNOTSUPP"), "{failed}");

    let sk_a = p.str_of("sk").expect("the first fd's socket");
    let (sent_a, recv_b) = (
        data_on(evs, pid, fds[0], "send"),
        data_on(evs, pid, fds[1], "recv"),
    );
    let (sent_b, recv_a) = (
        data_on(evs, pid, fds[1], "send"),
        data_on(evs, pid, fds[0], "recv"),
    );
    assert_eq!(concat(&sent_a), b"ping\x00\xff");
    assert_eq!(concat(&recv_b), b"ping\x00\xff");
    assert_eq!(concat(&sent_b), b"pong!");
    assert_eq!(concat(&recv_a), b"pong!");
    for e in sent_a.iter().chain(&recv_a) {
        assert_eq!(e.str_of("sk"), Some(sk_a), "the pair's first socket: {e}");
    }
    let sk_b = sent_b[0].str_of("sk").unwrap();
    assert_ne!(sk_a, sk_b);
    for e in sent_b.iter().chain(&recv_b) {
        assert_eq!(e.str_of("sk"), Some(sk_b), "{e}");
        assert_eq!(e.str_of("transport"), Some("unix-stream"), "{e}");
    }
    assert_eq!(
        sock_event(evs, pid, "close", fds[0]).str_of("sk"),
        Some(sk_a)
    );
    assert_eq!(
        sock_event(evs, pid, "close", fds[1]).str_of("sk"),
        Some(sk_b)
    );

    // Text, as strace writes it; `-e socket` has socketpair too, `-e socketpair` only it.
    let comm = python_comm();
    for (events, closes) in [("socket,close", true), ("socketpair", false)] {
        let run = trace(&dir, &with_cmd(&["-e", events], &cmd), None);
        assert_ok(&run);
        let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
        let fds = kv(&run.stdout, "FDS").replace(' ', ", ");
        let dfds = kv(&run.stdout, "DFDS").replace(' ', ", ");
        let lines: Vec<&str> = run
            .output
            .lines()
            .filter_map(|l| l.split_once(&format!(" {comm}[{pid}] ")).map(|x| x.1))
            .filter(|l| {
                !l.starts_with("+++") && !l.starts_with("read(") && !l.starts_with("write(")
            })
            .collect();
        let mut want = vec![
            format!("socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0, [{fds}]) = 0"),
            format!("socketpair(AF_UNIX, SOCK_DGRAM|SOCK_CLOEXEC, 0, [{dfds}]) = 0"),
        ];
        if closes {
            for fd in kv(&run.stdout, "FDS")
                .split(' ')
                .chain(kv(&run.stdout, "DFDS").split(' '))
            {
                want.push(format!("close({fd}) = 0"));
            }
        }
        want.push(
            "socketpair(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_IP, ?) = -1 EOPNOTSUPP \
             (Operation not supported)"
                .into(),
        );
        // (python's own socket calls at start-up, if any, come before.)
        let from = lines
            .iter()
            .position(|l| l.starts_with("socketpair("))
            .unwrap_or_else(|| panic!("no socketpair in {}", run.output));
        assert_eq!(lines[from..], want, "-e {events}:\n{}", run.output);
    }

    // curl's wake-up pair: made, then closed, with the fds it returned.
    let www = dir.join("www");
    fs::create_dir(&www).unwrap();
    fs::write(www.join("f"), b"x").unwrap();
    let _httpd = python_http_server(&ns, &www, "127.0.0.1", 8080);
    let curl = ns.argv(&["curl", "-s", "http://127.0.0.1:8080/f"]);
    let run = trace(&dir, &with_cmd(JSON, &curl), None);
    assert_ok(&run);
    assert_eq!(run.stdout_bytes, b"x");
    let pair = one(&run.events, "socketpair of curl", |e| {
        e.ty() == "sock" && e.syscall() == "socketpair"
    });
    assert_eq!(pair.ret(), 0, "{pair}");
    let fds: Vec<i64> = pair["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_i64().unwrap())
        .collect();
    // (curl's earlier sockets may have had the same fd numbers.)
    let at = run
        .events
        .iter()
        .position(|e| std::ptr::eq(e, pair))
        .unwrap();
    for (i, fd) in fds.into_iter().enumerate() {
        let close = run.events[at..]
            .iter()
            .find(|e| e.ty() == "sock" && e.syscall() == "close" && e.fd() == fd)
            .unwrap_or_else(|| panic!("no close({fd}) after {pair}"));
        assert_eq!(close.str_of("transport"), Some("unix-stream"), "{close}");
        if i == 0 {
            assert_eq!(close.str_of("sk"), pair.str_of("sk"), "{close}");
        }
    }
}

/// A trace pins only its own maps: the capture and intercept maps of the object (socket
/// owners, capture pids, interception tables) are at their minimum, and the whole is the
/// `EVENTS` ring plus trace's own tables.
#[test]
fn trace_pins_only_its_own_maps() {
    let dir = TempDir::new("tracemem");
    let ready = dir.join("ready");
    let fifo = dir.join("go");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let script = format!(
        "echo > {}; read x < {}",
        ready.to_str().unwrap(),
        fifo.to_str().unwrap()
    );
    let live = LiveTrace::spawn(
        &dir,
        &strings(&["--ring-kib", "16384", "--", "sh", "-c", &script]),
    );
    assert!(
        wait_until(TIMEOUT, || ready.exists()),
        "the traced command did not start"
    );
    let maps = bpf_maps_of(live.pid());
    fs::write(&fifo, "go\n").unwrap();
    let run = live.finish(TIMEOUT);
    assert_ok(&run);
    let ring = maps
        .iter()
        .find(|m| m.0 == "EVENTS")
        .unwrap_or_else(|| panic!("no EVENTS map: {maps:?}"));
    assert_eq!(ring.1, 16 << 20, "{maps:?}");
    for other in [
        "PACKETS",
        "SOCK_OWNERS",
        "CAPTURE_PIDS",
        "FILTER_INSNS",
        "ICPT_PIDS",
        "ICPT_BY_COOKIE",
        "ICPT_BY_CLIENT",
    ] {
        let m = maps.iter().find(|m| m.0 == other);
        assert!(
            m.is_none_or(|m| m.2 <= 64 << 10),
            "capture/intercept map {other} is not at its minimum: {m:?}"
        );
    }
    // Trace's own tables (pending calls, fd cache, traced pids) take about 28 MiB.
    let total: u64 = maps.iter().map(|m| m.2).sum();
    let margin = 30 << 20;
    assert!(
        total <= ring.2 + margin,
        "capagent's maps pin {total} bytes, more than the ring ({}) + {margin}: {maps:?}",
        ring.2
    );
}

/// Records written to a file with stderr on a terminal: a status line redrawn in place
/// (events, bytes, connections, lost), erased before the summary.
#[test]
fn status_line_on_a_terminal() {
    let ns = Netns::new("tstatus");
    let dir = TempDir::new("tstatus");
    let mut srv = Server::reply(&ns, &dir, 1, "r:5", b"pong");
    let client = dir.write("client.py", CLIENT_PY);
    let script = format!(
        "{} {client} inet 127.0.0.1 {} w:{} r:4 >/dev/null; exec sleep 30 2>/dev/null",
        python(),
        srv.port,
        hex(b"ping!")
    );
    let out = dir.join("status.jsonl");
    let mut argv = strings(&[capagent(), "trace", "-o", out.to_str().unwrap(), "--"]);
    argv.extend(ns.argv(&["sh", "-c", &script]));
    let (term, _) = stderr_on_a_terminal(&argv, 3);
    assert_eq!(srv.recv(0), b"ping!");
    srv.done();
    let lines = status_lines(&term);
    assert!(lines.len() >= 3, "{term:?}");
    assert!(lines.windows(2).all(|w| w[0] != w[1]), "{lines:?}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("capagent: 0:00:0") && last.ends_with(", 9 B, 1 connections, 0 lost"),
        "{lines:?}"
    );
    let end = term.rfind("\r\x1b[K").unwrap();
    assert!(term[end..].starts_with("\r\x1b[Kcapagent: "), "{term:?}");
    assert!(term[end..].contains(" events, 0 lost"), "{term:?}");
}

// ---------------------------------------------------------------------------------------------
// TLS connections (issue 13): curl over TLS to `openssl s_server`, the ClientHello detected
// without hooking any library: the summary counts the connection without `--tls`, `--tls`
// marks its ciphertext records, `--tls-only` hides them (not its connect and close).

#[test]
fn tls_connection_counted_marked_and_hidden() {
    let ns = Netns::new("trace-tls");
    let dir = TempDir::new("trace-tls");
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let port = 8443u16;
    let mut srv = ns.cmd("openssl");
    srv.args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key);
    let srv = Proc::spawn("openssl s_server", srv);
    wait_listen(srv.pid(), port);
    let url = format!("https://localhost:{port}/");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let curl = ns.argv(&["curl", "-sk", "--resolve", &resolve, &url]);
    let dest = format!("127.0.0.1:{port}");
    // The socket of curl's connection to the server, and its syscall records (not those of
    // TLS library calls, which `--tls` adds once the libraries are hooked).
    let conn_sk = |evs: &[Value]| -> String {
        let c: Vec<&Value> = evs
            .iter()
            .filter(|e| {
                e.ty() == "sock" && e.syscall() == "connect" && e.str_of("addr") == Some(&dest)
            })
            .collect();
        assert_eq!(c.len(), 1, "one connect to {dest}:\n{}", dump(evs));
        c[0].str_of("sk").unwrap().to_string()
    };
    let syscall_data = |evs: &'_ [Value], sk: &str| -> Vec<Value> {
        evs.iter()
            .filter(|e| e.ty() == "data" && e.str_of("sk") == Some(sk))
            .filter(|e| e["tls"]["lib"].is_null())
            .cloned()
            .collect()
    };

    // Without --tls: records as ever (no `tls` key), the summary counts the connection.
    let run = trace(&dir, &with_cmd(JSON, &curl), None);
    assert_ok(&run);
    assert!(
        run.stdout.contains("s_server"),
        "the -www page: {}",
        run.stdout
    );
    assert!(
        run.events.iter().all(|e| e.get("tls").is_none()),
        "{}",
        dump(&run.events)
    );
    let sk = conn_sk(&run.events);
    let data = syscall_data(&run.events, &sk);
    assert!(data[0].payload().starts_with(&[0x16, 3]), "{}", data[0]);
    assert!(
        run.stderr.contains(
            "capagent: 1 connection carried TLS (SNI: localhost); --tls shows their plaintext\n"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains(&format!("-> {dest}")) && l.ends_with("  tls localhost")),
        "{}",
        run.stderr
    );

    // --tls: every syscall data record of the connection is marked ciphertext, from the
    // ClientHello on (failed calls too); the connect and close are not.
    let args = with_cmd(&[JSON, &["--tls"][..]].concat(), &curl);
    let run = trace(&dir, &args, None);
    assert_ok(&run);
    let sk = conn_sk(&run.events);
    let data = syscall_data(&run.events, &sk);
    assert!(data.len() >= 2, "{}", dump(&run.events));
    assert!(data[0].payload().starts_with(&[0x16, 3]), "{}", data[0]);
    for e in &data {
        assert_eq!(e["tls"], serde_json::json!({"ciphertext": true}), "{e}");
    }
    for e in run.events.iter().filter(|e| e.ty() == "sock") {
        assert!(e.get("tls").is_none(), "{e}");
    }

    // --tls-only: none of them; the connect and the close remain.
    let args = with_cmd(&[JSON, &["--tls-only"][..]].concat(), &curl);
    let run = trace(&dir, &args, None);
    assert_ok(&run);
    assert!(run.stdout.contains("s_server"));
    let sk = conn_sk(&run.events);
    assert_eq!(syscall_data(&run.events, &sk), Vec::<Value>::new());
    assert!(
        run.events
            .iter()
            .any(|e| e.ty() == "sock" && e.syscall() == "close" && e.str_of("sk") == Some(&sk)),
        "{}",
        dump(&run.events)
    );
    check_summary(&run);
}
