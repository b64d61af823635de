//! Integration tests of `proxy reverse --tls` and of the HTTP proxies' answer to an upstream
//! whose TLS fails, with real clients and servers on loopback, no root: curl trusting
//! capagent's CA (`--cacert`) sends two requests on one TLS connection (keep-alive) through
//! `proxy reverse --tls` to a Python HTTPS server (its certificate signed by a test CA given
//! as `--upstream-ca`), the second answered chunked; a WebSocket-style upgrade inside TLS;
//! plain HTTP through the same proxy; and an upstream whose certificate is not trusted:
//! `proxy reverse --tls` and `proxy http --tls` (CONNECT) answer `502 Bad Gateway` with the
//! reason inside the client's TLS, and pass with `--insecure`; `--tls-passthrough` relaying a
//! matching ClientHello untouched to the server routed for its SNI. Each checks the exact
//! plaintext the server read and wrote in the JSON records and that tshark reads the HTTP
//! from the pcapng. Certificates and the CA directory are made at test time.

use std::process::{Command, Stdio};

use capagent_testkit::mitm::{
    Https, Mitm, args, check_marked, check_passed_through, check_recorded, check_tls,
    check_untrusted_upstream, http_connect, http_fields, localhost_url,
};
use capagent_testkit::proxy::{Agent, Rec, curl, curl_status, open_of, recorded};
use capagent_testkit::{Certs, Ev as _, Proc, TIMEOUT, TempDir, python, unhex};
use serde_json::Value;

/// An HTTPS/1.1 server with keep-alive (ALPN http/1.1): `GET /chunked` is answered
/// chunked, `GET /ws` with `101 Switching Protocols` and then an echo of what follows,
/// anything else with `path PATH\n`. Prints `CONN N` per connection, and the exact bytes of
/// each request and response (`REQ`/`RESP` hex) and of each echo (`ECHO`).
const KEEPALIVE_HTTPS_PY: &str = r#"
import socket, ssl, sys, threading
cert, key = sys.argv[1], sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["http/1.1"])
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(16)
lock = threading.Lock()
def out(*a):
    with lock:
        print(*a, flush=True)
def serve(conn, n):
    try:
        s = ctx.wrap_socket(conn, server_side=True)
    except (ssl.SSLError, OSError):
        out("BADHANDSHAKE")
        return
    out("CONN", n)
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                s.close()
                return
            buf += d
        i = buf.index(b"\r\n\r\n") + 4
        req, buf = buf[:i], buf[i:]
        path = req.split(b" ")[1].decode()
        if path == "/chunked":
            resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n")
        elif path == "/ws":
            resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        else:
            body = ("path %s\n" % path).encode()
            resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        s.sendall(resp)
        out("REQ", req.hex())
        out("RESP", resp.hex())
        if path == "/ws":
            data = buf
            while True:
                if data:
                    s.sendall(data)
                    out("ECHO", data.hex())
                data = s.recv(65536)
                if not data:
                    break
            s.close()
            return
print("READY", ls.getsockname()[1], flush=True)
n = 0
while True:
    c, _ = ls.accept()
    n += 1
    threading.Thread(target=serve, args=(c, n), daemon=True).start()
"#;

struct Server {
    proc: Proc,
    port: u16,
}

impl Server {
    fn start(dir: &TempDir, certs: &Certs) -> Server {
        let script = dir.write("keepalive_https.py", KEEPALIVE_HTTPS_PY);
        let mut cmd = Command::new(python());
        cmd.arg(&script).args([certs.cert_str(), certs.key_str()]);
        let mut proc = Proc::spawn("keepalive_https.py", cmd);
        let port = proc.expect("READY", TIMEOUT).parse().unwrap();
        Server { proc, port }
    }

    /// The next `PREFIX hex` line, decoded.
    fn bytes(&mut self, prefix: &str) -> Vec<u8> {
        unhex(&self.proc.expect(prefix, TIMEOUT))
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// `capagent proxy reverse --listen 127.0.0.1:0 --route localhost=TARGET --tls ... EXTRA`,
/// recording into `rec`.
fn reverse(t: &Mitm, rec: &Rec, target: &str, extra: &[&str]) -> Agent {
    let proxy = args(&[
        "proxy",
        "reverse",
        "--listen",
        "127.0.0.1:0",
        "--route",
        &format!("localhost={target}"),
    ]);
    t.start_rec(rec, proxy, extra)
}

/// The `tls` of an open record whose two sides both negotiated TLS 1.3 and http/1.1, with
/// SNI `localhost` and the server's certificate `CN=localhost`.
fn check_http11(open: &Value) {
    let alpn = check_tls(open, Some("localhost"));
    assert_eq!(alpn, ("http/1.1".into(), "http/1.1".into()), "{open}");
}

/// curl sends two requests on one TLS connection to `proxy reverse --tls` (the second
/// answered chunked): both reach the server over one TLS connection (keep-alive on both
/// sides), the client sees the un-altered bodies, the records hold exactly the plaintext the
/// server read and wrote, with what each TLS side negotiated (http/1.1 only offered to the
/// client, which offers h2 too), and tshark reads both exchanges.
#[test]
fn reverse_tls_keepalive_and_chunked() {
    let t = Mitm::new("rev");
    let certs = Certs::localhost();
    let mut server = Server::start(&t.dir, &certs);
    let upstream_ca = ["--upstream-ca", certs.ca_str()];
    let agent = reverse(&t, &t.rec, &server.target(), &upstream_ca);
    let [resolve, to, one] = localhost_url(agent.addr().port(), "/one");
    let [_, _, chunked] = localhost_url(agent.addr().port(), "/chunked");
    let out = curl_status(&[
        "-v",
        "--cacert",
        &t.ca_cert(),
        &resolve,
        &to,
        &one,
        &chunked,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(out.stdout, b"path /one\nhello, world");
    // One TLS connection from curl, re-used; ALPN http/1.1.
    assert!(
        stderr.contains("ALPN: server accepted http/1.1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Re-using existing connection") || stderr.contains("Reusing existing"),
        "{stderr}"
    );
    assert_eq!(server.proc.expect("CONN", TIMEOUT), "1");
    let (req1, resp1) = (server.bytes("REQ"), server.bytes("RESP"));
    let (req2, resp2) = (server.bytes("REQ"), server.bytes("RESP"));
    assert!(req1.starts_with(b"GET /one HTTP/1.1\r\nHost: localhost:"));
    assert!(req2.starts_with(b"GET /chunked HTTP/1.1\r\nHost: localhost:"));
    let stop = agent.stop();
    assert!(stop.contains("created a CA in"), "{stop}");
    let evs = t.events();
    // One server connection (one open record) carried both.
    let open = open_of(&evs, "reverse", &server.target());
    check_http11(open);
    let fd = open.fd();
    assert_eq!(recorded(&evs, fd, "send"), [req1, req2].concat());
    assert_eq!(recorded(&evs, fd, "recv"), [resp1, resp2].concat());
    check_marked(&evs, fd);
    assert_eq!(
        http_fields(&t.rec.pcap, &[]),
        ["/one", "200", "/chunked", "200"]
    );
}

/// A WebSocket-style upgrade inside TLS: the 101 is relayed, then bytes both ways, all
/// recorded as plaintext.
#[test]
fn reverse_tls_upgrade() {
    let t = Mitm::new("rev-ws");
    let certs = Certs::localhost();
    let mut server = Server::start(&t.dir, &certs);
    let upstream_ca = ["--upstream-ca", certs.ca_str()];
    let agent = reverse(&t, &t.rec, &server.target(), &upstream_ca);
    let port = agent.addr().port();
    // A Python client: TLS trusting capagent's CA, the upgrade, one echo.
    let client = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2]))), server_hostname="localhost")
s.sendall(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(4096)
head, rest = buf.split(b"\r\n\r\n", 1)
print(head.split(b"\r\n")[0].decode(), flush=True)
s.sendall(b"ping over tls")
while len(rest) < 13:
    rest += s.recv(4096)
print(rest.decode(), flush=True)
s.close()
"#;
    let script = t.dir.write("ws_client.py", client);
    let out = Command::new(python())
        .arg(&script)
        .args([&t.ca_cert(), &port.to_string()])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "HTTP/1.1 101 Switching Protocols\nping over tls\n"
    );
    let (req, resp) = (server.bytes("REQ"), server.bytes("RESP"));
    assert_eq!(server.bytes("ECHO"), b"ping over tls");
    agent.stop();
    let evs = t.events();
    let open = open_of(&evs, "reverse", &server.target());
    check_http11(open);
    let fd = open.fd();
    assert_eq!(
        recorded(&evs, fd, "send"),
        [req, b"ping over tls".to_vec()].concat()
    );
    assert_eq!(
        recorded(&evs, fd, "recv"),
        [resp, b"ping over tls".to_vec()].concat()
    );
    check_marked(&evs, fd);
}

/// Plain HTTP to `proxy reverse --tls` stays plain on both sides (the server is reached
/// without TLS), recorded without `tls`.
#[test]
fn reverse_tls_plain_client_stays_plain() {
    let t = Mitm::new("rev-plain");
    let response = capagent_testkit::proxy::http_response(b"plain\n");
    let (web, requests) = capagent_testkit::proxy::http_server(response.clone(), 1);
    let agent = reverse(&t, &t.rec, &web.to_string(), &[]);
    let port = agent.addr().port();
    let body = curl(&[&format!("http://localhost:{port}/p")]);
    assert_eq!(body, b"plain\n");
    let request = requests.recv_timeout(TIMEOUT).unwrap();
    agent.stop();
    let evs = t.events();
    let open = open_of(&evs, "reverse", &web.to_string());
    assert_eq!(open.get("tls"), None, "{open}");
    assert_eq!(recorded(&evs, open.fd(), "send"), request);
    assert_eq!(recorded(&evs, open.fd(), "recv"), response);
}

/// A server whose certificate the proxy does not trust (no `--upstream-ca`), through both
/// HTTP modes: `proxy reverse --tls` and `proxy http --tls` (CONNECT) complete the client's
/// TLS with capagent's leaf and answer `502 Bad Gateway` saying why (as mitmproxy does),
/// the record says why too; with `--insecure` the page comes through, the server's
/// certificate recorded.
#[test]
fn untrusted_upstream_is_a_502_then_insecure() {
    let t = Mitm::new("rev-502");
    let certs = Certs::localhost();
    let mut server = Server::start(&t.dir, &certs);
    let target = server.target();
    for (mode, insecure) in [
        ("reverse", false),
        ("reverse", true),
        ("http", false),
        ("http", true),
    ] {
        let rec = Rec::new(&t.dir, &format!("{mode}-{insecure}"));
        let extra: &[&str] = if insecure { &["--insecure"] } else { &[] };
        let (agent, url, proxy, recorded_target) = if mode == "reverse" {
            let agent = reverse(&t, &rec, &target, extra);
            let port = agent.addr().port();
            let url = format!("https://localhost:{port}/x");
            (
                agent,
                url,
                vec![
                    "--resolve".to_string(),
                    format!("localhost:{port}:127.0.0.1"),
                ],
                target.clone(),
            )
        } else {
            let agent = t.start_rec(&rec, http_connect(server.port), extra);
            let proxy = vec!["-x".to_string(), format!("http://{}", agent.addr())];
            let url = format!("https://localhost:{}/x", server.port);
            (agent, url, proxy, format!("localhost:{}", server.port))
        };
        let mut c = vec![
            "--cacert".to_string(),
            t.ca_cert(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        c.extend(proxy);
        c.push(url);
        let c: Vec<&str> = c.iter().map(String::as_str).collect();
        let out = curl_status(&c);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stop = agent.stop();
        let evs = rec.events();
        let proxy_name = if mode == "reverse" {
            "reverse"
        } else {
            "http connect"
        };
        let open = open_of(&evs, proxy_name, &recorded_target);
        if insecure {
            assert_eq!(stdout, "path /x\n\n200", "{mode}");
            let (req, resp) = (server.bytes("REQ"), server.bytes("RESP"));
            assert_eq!(open["tls"]["error"], Value::Null, "{open}");
            assert_eq!(open["tls"]["server_cert"], "CN=localhost", "{open}");
            assert_eq!(recorded(&evs, open.fd(), "send"), req, "{mode}");
            assert_eq!(recorded(&evs, open.fd(), "recv"), resp, "{mode}");
        } else {
            let reason =
                format!("{recorded_target}: TLS: server: invalid peer certificate: UnknownIssuer");
            assert_eq!(
                stdout,
                format!("capagent: 502 Bad Gateway: {reason}\n\n502"),
                "{mode}"
            );
            check_untrusted_upstream(&evs, open, &stop);
            // The client's side of the answer is recorded: capagent's leaf, TLS 1.3.
            assert_eq!(open["tls"]["client"]["version"], "TLSv1.3", "{open}");
        }
    }
}

/// `proxy reverse --tls --tls-passthrough '*.pass.example'`: curl trusting only the real
/// server's CA asks for `pass.example`, whose ClientHello is relayed untouched to the
/// server `--route pass.example=...` names (on 127.0.0.2), recorded as passed through
/// (ciphertext); curl trusting capagent's CA asks for `localhost`, intercepted and sent to
/// `--to` (on 127.0.0.1).
#[test]
fn reverse_tls_passthrough_pattern() {
    let t = Mitm::new("rev-pass");
    let certs = Certs::new(&["localhost", "pass.example", "127.0.0.1"]);
    let mut to = Https::start(&t.dir, &certs);
    let mut routed = Https::start_on(&t.dir, &certs, "127.0.0.2");
    let routed_target = format!("127.0.0.2:{}", routed.port);
    let to_target = format!("127.0.0.1:{}", to.port);
    let proxy = args(&[
        "proxy",
        "reverse",
        "--listen",
        "127.0.0.1:0",
        "--route",
        &format!("pass.example={routed_target}"),
        "--to",
        &to_target,
    ]);
    let extra = [
        "--upstream-ca",
        certs.ca_str(),
        "--tls-passthrough",
        "*.pass.example",
    ];
    let agent = t.start(proxy, &extra);
    let port = agent.addr().port();
    let get = |ca: &str, name: &str, path: &str| {
        curl(&[
            "--cacert",
            ca,
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            &format!("https://{name}:{port}{path}"),
        ])
    };
    assert_eq!(
        get(certs.ca_str(), "pass.example", "/passed"),
        b"path /passed\n"
    );
    let passed = routed.exchange();
    assert_eq!(
        get(&t.ca_cert(), "localhost", "/intercepted"),
        b"path /intercepted\n"
    );
    let intercepted = to.exchange();
    agent.stop();
    let evs = t.events();
    let open = open_of(&evs, "reverse", &routed_target);
    check_passed_through(
        &evs,
        open,
        "pattern *.pass.example",
        "pass.example",
        &passed,
    );
    let open = open_of(&evs, "reverse", &to_target);
    assert_eq!(open["tls"]["error"], Value::Null, "{open}");
    assert_eq!(open["tls"]["client"]["sni"], "localhost", "{open}");
    check_recorded(&evs, open.fd(), &intercepted);
}
