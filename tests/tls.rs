//! Root integration tests of `capagent trace --tls`: real TLS clients and servers (curl,
//! `openssl s_server`, Python's `ssl`/`urllib`, wget and gnutls-cli) in a network namespace
//! of each test's own, with certificates made when the test starts (testkit's `tls` module),
//! traced by the real capagent through the real kernel.
//!
//! Each test checks what issue 13 asks of a TLS record: the exact plaintext both ways (what
//! the peers themselves say they sent and received), the fd, kernel socket and endpoints of
//! the syscall records of the same socket (whose bytes are ciphertext, marked as such), the
//! library named (in the record and in the summary), and tshark dissecting the HTTP inside
//! the pcapng. Then: `--comm` catching a client started later, no uprobes for a process
//! without TLS libraries, and every uprobe gone when capagent exits (SIGINT, and SIGKILL).
//!
//! Needs root. Run one at a time with the capagent binary in `CAPAGENT_BIN` (`cargo xtask
//! test` sets it): `cargo test -p capagent-tests --features root-tests --test tls --
//! --test-threads=1`.

use std::{fs, path::Path, process::Stdio};

use capagent_testkit::{proxy::Rec, *};
use serde_json::Value;

/// The OpenSSL functions a TLS record of OpenSSL may name.
const OPENSSL_FNS: &[&str] = &[
    "SSL_write",
    "SSL_read",
    "SSL_write_ex",
    "SSL_read_ex",
    "SSL_write_ex2",
];
const GNUTLS_FNS: &[&str] = &["gnutls_record_send", "gnutls_record_recv"];

fn assert_ok(run: &TraceRun) {
    assert!(run.status.success(), "{}", run.describe());
}

/// The TLS records (plaintext) of `pid`: data records whose `tls` names a library.
fn tls_of(evs: &[Value], pid: u32) -> Vec<&Value> {
    evs.iter()
        .filter(|e| e.ty() == "data" && e.pid() == pid && e["tls"]["lib"].is_string())
        .collect()
}

/// The plaintext of `recs` in direction `dir` (`send`: written), concatenated (calls that
/// moved nothing, such as a read at the end of the stream, apart).
fn plain(recs: &[&Value], dir: &str) -> Vec<u8> {
    let v: Vec<&Value> = recs
        .iter()
        .copied()
        .filter(|e| e["dir"].as_str() == Some(dir) && e.ret() > 0)
        .collect();
    concat(&v)
}

/// Every TLS record names `lib` and one of its functions (as its `syscall` too) and its TLS
/// object, writes are `send`, and a call that moved bytes captured them all (one that moved
/// none, such as a read at the end of the stream or GnuTLS's `E_AGAIN`, captured none).
fn check_records(recs: &[&Value], lib: &str, fns: &[&str], evs: &[Value]) {
    assert!(!recs.is_empty(), "no TLS records:\n{}", dump(evs));
    for e in recs {
        assert_eq!(e["tls"]["lib"], lib, "{e}");
        let f = e["tls"]["fn"]
            .as_str()
            .unwrap_or_else(|| panic!("no fn: {e}"));
        assert!(fns.contains(&f), "{f} is not one of {fns:?}: {e}");
        assert_eq!(e.syscall(), f, "{e}");
        let conn = e["tls"]["conn"].as_str().unwrap_or_else(|| panic!("{e}"));
        assert!(
            conn.starts_with("0x") && conn.len() > 2,
            "TLS object {conn}: {e}"
        );
        let write = f.contains("write") || f.contains("send");
        assert_eq!(
            e["dir"].as_str(),
            Some(if write { "send" } else { "recv" }),
            "{e}"
        );
        assert_eq!(e["truncated"], false, "{e}");
        if e.ret() > 0 {
            assert_eq!(e.ret(), e.int("total"), "{e}");
            assert_eq!(e.int("captured"), e.int("total"), "{e}");
        } else {
            assert_eq!(e.int("captured"), 0, "{e}");
        }
    }
    assert!(
        recs.iter().any(|e| e.ret() > 0),
        "no TLS record moved any bytes:\n{}",
        dump(evs)
    );
}

/// The TLS records `recs` of `pid` are attributed to the socket the syscall records show
/// between `local` and `remote`: same fd, same kernel socket, same endpoints, TCP. Those
/// syscall records carry the ciphertext: marked `"tls":{"ciphertext":true}`, and without
/// `marker` (a piece of the plaintext). Returns the fd.
fn check_same_socket(
    evs: &[Value],
    pid: u32,
    recs: &[&Value],
    local: &str,
    remote: &str,
    marker: &[u8],
) -> i64 {
    let cipher: Vec<&Value> = evs
        .iter()
        .filter(|e| {
            e.ty() == "data"
                && e.pid() == pid
                && !e["tls"]["lib"].is_string()
                && e.str_of("local") == Some(local)
                && e.str_of("remote") == Some(remote)
        })
        .collect();
    assert!(
        !cipher.is_empty(),
        "no syscall records {local} -> {remote} of {pid}:\n{}",
        dump(evs)
    );
    let fd = cipher[0].fd();
    let sk = cipher[0].str_of("sk");
    for e in &cipher {
        assert_eq!(e.fd(), fd, "one socket: {e}");
        assert_eq!(e.str_of("sk"), sk, "one socket: {e}");
        assert_eq!(e["tls"]["ciphertext"], true, "ciphertext not marked: {e}");
    }
    let bytes = concat(&cipher);
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker),
        "the syscall records hold plaintext {:?}: was this TLS at all?",
        String::from_utf8_lossy(marker)
    );
    for e in recs {
        assert_eq!(e.fd(), fd, "fd of the TLS record: {e}");
        assert_eq!(e.str_of("sk"), sk, "kernel socket of the TLS record: {e}");
        assert_eq!(e.str_of("local"), Some(local), "{e}");
        assert_eq!(e.str_of("remote"), Some(remote), "{e}");
        assert_eq!(e.str_of("transport"), Some("tcp"), "{e}");
    }
    fd
}

/// The `connect` of `pid` to `dest`: (fd, local address).
fn connect_of(evs: &[Value], pid: u32, dest: &str) -> (i64, String) {
    let c = one(evs, &format!("connect of {pid} to {dest}"), |e| {
        e.ty() == "sock"
            && e.pid() == pid
            && e.syscall() == "connect"
            && e.str_of("addr") == Some(dest)
    });
    (
        c.fd(),
        c.str_of("local")
            .expect("connect without local")
            .to_string(),
    )
}

/// The summary names the library hooked: a line with its file name and its kind.
fn check_summary_lib(run: &TraceRun, file: &str, lib: &str) {
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains(file) && l.to_lowercase().contains(lib)),
        "no summary line naming {lib} ({file}):\n{}",
        run.stderr
    );
}

/// tshark reads the pcapng: one TCP stream between `client` and `server` carrying exactly
/// the plaintext (`up` client to server, `down` back), dissected as HTTP (`method uri` and
/// the response `code`), with a packet comment naming `lib`.
#[allow(clippy::too_many_arguments)]
fn check_pcap(
    pcap: &str,
    client: &str,
    server: &str,
    up: &[u8],
    down: &[u8],
    request: &str,
    code: &str,
    lib: &str,
) {
    let rec = Rec {
        jsonl: String::new(),
        pcap: pcap.to_string(),
    };
    let streams: Vec<(u32, std::net::SocketAddr, std::net::SocketAddr)> = rec
        .streams()
        .into_iter()
        .filter(|(_, c, s)| c.to_string() == client && s.to_string() == server)
        .collect();
    assert_eq!(
        streams.len(),
        1,
        "one stream {client} -> {server}: {:?}",
        rec.streams()
    );
    let (got_up, got_down) = rec.follow(streams[0].0);
    assert_eq!(got_up, up, "pcapng: client to server plaintext");
    assert_eq!(got_down, down, "pcapng: server to client plaintext");
    let port = server.rsplit(':').next().unwrap();
    let decode = format!("tcp.port=={port},http");
    let reqs = tshark_r(
        pcap,
        &[
            "-d",
            &decode,
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "http.request.method",
            "-e",
            "http.request.uri",
        ],
    );
    assert_eq!(reqs.trim(), request.replace(' ', "\t"), "{reqs}");
    let codes = tshark_r(
        pcap,
        &[
            "-d",
            &decode,
            "-Y",
            "http.response",
            "-T",
            "fields",
            "-e",
            "http.response.code",
        ],
    );
    assert_eq!(codes.trim(), code, "{codes}");
    let comments = tshark_r(pcap, &["-T", "fields", "-e", "frame.comment"]);
    assert!(
        comments.lines().any(|l| l.to_lowercase().contains(lib)),
        "no packet comment names {lib}: {comments}"
    );
}

/// `127.0.0.1:PORT`.
fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A test's world: a network namespace and a temporary directory of its own (both named
/// after the test's `tag`), and a CA and a leaf certificate for 127.0.0.1 made now; the
/// servers, clients and capagent runs the tests make in them.
struct Fixture {
    certs: Certs,
    dir: TempDir,
    ns: Netns,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        Fixture {
            ns: Netns::new(tag),
            dir: TempDir::new(tag),
            certs: Certs::localhost(),
        }
    }

    /// The Python HTTPS server in the namespace.
    fn https_server(&self) -> HttpsServer {
        HttpsServer::start(&self.ns, &self.dir, &self.certs)
    }

    /// `openssl s_server -www` in the namespace.
    fn openssl_server(&self) -> OpensslServer {
        OpensslServer::start(&self.ns, &self.certs)
    }

    /// curl trusting the CA, fetching `url` (see [`Curl::new`]).
    fn curl(&self, url: &str, extra: &[&str]) -> Curl {
        Curl::new(&self.dir, &self.certs, url, extra)
    }

    /// curl POSTing `body` (from a file) to `url`.
    fn curl_post(&self, url: &str, body: &[u8]) -> Curl {
        let file = self.dir.write("body.bin", body);
        self.curl(url, &["--data-binary", &format!("@{file}")])
    }

    /// The path of the pcapng `NAME.pcapng` in the test's directory.
    fn pcap(&self, name: &str) -> String {
        self.dir
            .join(&format!("{name}.pcapng"))
            .display()
            .to_string()
    }

    /// `capagent trace --tls --format json -w DIR/NAME.pcapng -- CMD`, `stdin` fed to it,
    /// which must succeed; the run and the pcapng's path.
    fn trace_json(&self, name: &str, cmd: &[String], stdin: Option<&[u8]>) -> (TraceRun, String) {
        let pcap = self.pcap(name);
        let args = with_cmd(&["--tls", "--format", "json", "-w", &pcap], cmd);
        let run = trace(&self.dir, &args, stdin);
        assert_ok(&run);
        (run, pcap)
    }

    /// `capagent trace --tls -- CMD` (text), which must succeed.
    fn trace_text(&self, cmd: &[String]) -> TraceRun {
        let run = trace(&self.dir, &with_cmd(&["--tls"], cmd), None);
        assert_ok(&run);
        run
    }

    /// `capagent trace --tls --format json ARGS...` in the background.
    fn live(&self, args: &[&str]) -> LiveTrace {
        let mut all = strings(&["--tls", "--format", "json"]);
        all.extend(strings(args));
        LiveTrace::spawn(&self.dir, &all)
    }

    /// `capagent trace --tls --format json -w DIR/NAME.pcapng --pid PID` in the background,
    /// and the pcapng's path.
    fn live_pcap(&self, name: &str, pid: u32) -> (LiveTrace, String) {
        let pcap = self.pcap(name);
        let live = self.live(&["-w", &pcap, "--pid", &pid.to_string()]);
        (live, pcap)
    }

    /// A plain TCP connection (no handshake) to 127.0.0.1:`port` in the namespace, closed
    /// at once: it makes a server accept.
    fn tcp_poke(&self, port: u16) {
        let mut c = self.ns.cmd(python());
        c.args([
            "-c",
            &format!("import socket; socket.create_connection(('127.0.0.1', {port})).close()"),
        ]);
        run_output("poke", c, TIMEOUT);
    }
}

/// Waits until `live` reports the `socket` call of `pid` (the urllib client makes one every
/// 20 ms until it may go on): capagent has attached.
fn wait_for_socket_call(live: &mut LiveTrace, pid: u32) {
    live.poke_until(
        TIMEOUT,
        || {},
        |e| e.ty() == "sock" && e.pid() == pid && e.syscall() == "socket",
    );
}

/// Makes the server `spid` accept plain TCP connections on `port` until `live` reports one:
/// capagent has attached.
fn wait_for_accept(f: &Fixture, live: &mut LiveTrace, spid: u32, port: u16) {
    let addr = loopback(port);
    live.poke_until(
        TIMEOUT,
        || f.tcp_poke(port),
        |e| e.ty() != "lost" && e.pid() == spid && e.str_of("local") == Some(addr.as_str()),
    );
}

// ---------------------------------------------------------------------------------------------
// 1. curl (OpenSSL) against `openssl s_server -www`.

#[test]
fn curl_against_openssl_s_server() {
    let f = Fixture::new("tls-ss");
    let srv = f.openssl_server();
    let dest = loopback(srv.port);
    let curl = f.curl(&srv.url(), &[]);
    let (run, pcap) = f.trace_json("ss", &curl.argv(&f.ns), None);
    let evs = &run.events;
    let pid = exec_pid(evs, "curl");
    let sent = curl.sent();
    let received = curl.received();
    assert!(sent.starts_with(b"GET / HTTP/1.1\r\n"), "{sent:?}");
    assert!(received.starts_with(b"HTTP/1.0 200 ok\r\n"), "{received:?}");

    let recs = tls_of(evs, pid);
    check_records(&recs, "openssl", OPENSSL_FNS, evs);
    assert_eq!(plain(&recs, "send"), sent, "plaintext curl sent");
    assert_eq!(plain(&recs, "recv"), received, "plaintext curl received");
    let (fd, local) = connect_of(evs, pid, &dest);
    assert_eq!(local, format!("127.0.0.1:{}", local_port(&run.stdout)));
    let fd2 = check_same_socket(evs, pid, &recs, &local, &dest, b"GET / HTTP");
    assert_eq!(fd, fd2, "the connect's fd");
    check_summary_lib(&run, "libssl.so", "openssl");
    check_pcap(
        &pcap, &local, &dest, &sent, &received, "GET /", "200", "openssl",
    );

    // Text: the record as the issue shows it, and the ciphertext lines marked.
    let curl = f.curl(&srv.url(), &[]);
    let run = f.trace_text(&curl.argv(&f.ns));
    let local = loopback(local_port(&run.stdout));
    let sent = curl.sent();
    let want = format!(
        ", {local} -> {dest}) = {} \"{}",
        sent.len(),
        escape(&sent[..16])
    );
    let line = run
        .output
        .lines()
        .find(|l| l.contains(&want))
        .unwrap_or_else(|| panic!("no line with {want:?}:\n{}", run.output));
    assert!(
        line.contains(" curl[")
            && (line.contains("] SSL_write(") || line.contains("] SSL_write_ex(")),
        "{line}"
    );
    assert!(
        run.output
            .lines()
            .any(|l| l.contains(&format!("{local} -> {dest}")) && l.ends_with(" [tls]")),
        "no ciphertext line marked [tls]:\n{}",
        run.output
    );
}

// ---------------------------------------------------------------------------------------------
// 2. curl (OpenSSL) against the Python HTTPS server: a POST whose body comes back.

#[test]
fn curl_against_python_https_server() {
    let f = Fixture::new("tls-py");
    let mut srv = f.https_server();
    let dest = loopback(srv.port());
    let body = pattern(3000, 13);
    let curl = f.curl_post(&srv.url("/echo"), &body);
    let (run, pcap) = f.trace_json("py", &curl.argv(&f.ns), None);
    let ex = srv.exchange();
    assert_eq!(
        ex.request,
        curl.sent(),
        "what the server read is what curl sent"
    );
    assert_eq!(ex.response, curl.received());
    assert_eq!(ex.response, https_server_response(&body));
    assert_eq!(curl.body(), body);

    let evs = &run.events;
    let pid = exec_pid(evs, "curl");
    let recs = tls_of(evs, pid);
    check_records(&recs, "openssl", OPENSSL_FNS, evs);
    assert_eq!(
        plain(&recs, "send"),
        ex.request,
        "plaintext sent, body included"
    );
    assert_eq!(plain(&recs, "recv"), ex.response, "plaintext received");
    let (_, local) = connect_of(evs, pid, &dest);
    check_same_socket(evs, pid, &recs, &local, &dest, b"POST /echo");
    check_summary_lib(&run, "libssl.so", "openssl");
    check_pcap(
        &pcap,
        &local,
        &dest,
        &ex.request,
        &ex.response,
        "POST /echo",
        "200",
        "openssl",
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Python urllib: `ssl` imported (libssl loaded by dlopen) after tracing started; `_ssl`
// calls SSL_write_ex and SSL_read_ex.

#[test]
fn python_urllib_loads_ssl_after_tracing_started() {
    let f = Fixture::new("tls-url");
    let mut srv = f.https_server();
    let dest = loopback(srv.port());
    let body = b"urllib body \x00\x01\xfe\xff".to_vec();
    let mut client = UrllibClient::start(&f.ns, &f.dir, &f.certs, &srv.url("/u"), Some(&body));
    let pid = client.pid;
    let (mut live, pcap) = f.live_pcap("url", pid);
    wait_for_socket_call(&mut live, pid);
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        !maps.contains("libssl"),
        "libssl is loaded before the test lets the client import ssl"
    );
    client.go();
    let (status, got) = client.finish();
    assert_eq!((status, got.as_slice()), (200, body.as_slice()));
    let ex = srv.exchange();
    let run = live.finish(TIMEOUT);
    assert_ok(&run);

    let evs = &run.events;
    let recs = tls_of(evs, pid);
    check_records(&recs, "openssl", &["SSL_write_ex", "SSL_read_ex"], evs);
    assert_eq!(plain(&recs, "send"), ex.request, "plaintext urllib sent");
    assert_eq!(
        plain(&recs, "recv"),
        ex.response,
        "plaintext urllib received"
    );
    let (_, local) = connect_of(evs, pid, &dest);
    check_same_socket(evs, pid, &recs, &local, &dest, b"POST /u");
    check_summary_lib(&run, "libssl.so", "openssl");
    check_pcap(
        &pcap,
        &local,
        &dest,
        &ex.request,
        &ex.response,
        "POST /u",
        "200",
        "openssl",
    );
}

// ---------------------------------------------------------------------------------------------
// 4. GnuTLS: wget and gnutls-cli against the Python HTTPS server.

#[test]
fn wget_gnutls() {
    let f = Fixture::new("tls-wget");
    let mut srv = f.https_server();
    let dest = loopback(srv.port());
    let out = f.dir.join("wget.out");
    let mut cmd = f.ns.argv(&["wget"]);
    cmd.extend(wget_args(&f.certs, &srv.url("/w?x=1"), &out));
    let (run, pcap) = f.trace_json("wget", &cmd, None);
    let ex = srv.exchange();
    assert_eq!(fs::read(&out).unwrap(), b"path /w?x=1\n");

    let evs = &run.events;
    let pid = exec_pid(evs, "wget");
    let recs = tls_of(evs, pid);
    check_records(&recs, "gnutls", GNUTLS_FNS, evs);
    // gnutls_record_send jumps to gnutls_record_send2 on Debian 12: each write once.
    assert_eq!(plain(&recs, "send"), ex.request, "plaintext wget sent");
    assert_eq!(plain(&recs, "recv"), ex.response, "plaintext wget received");
    let (_, local) = connect_of(evs, pid, &dest);
    check_same_socket(evs, pid, &recs, &local, &dest, b"GET /w");
    check_summary_lib(&run, "libgnutls.so", "gnutls");
    check_pcap(
        &pcap,
        &local,
        &dest,
        &ex.request,
        &ex.response,
        "GET /w?x=1",
        "200",
        "gnutls",
    );
}

#[test]
fn gnutls_cli_request_on_stdin() {
    let f = Fixture::new("tls-gcli");
    let mut srv = f.https_server();
    let dest = loopback(srv.port());
    let request = b"GET /g HTTP/1.1\r\nHost: localhost\r\nX-Bytes: \x01\x7f\r\n\r\n";
    let log = f.dir.join("gnutls-cli.log");
    let mut cmd = f.ns.argv(&["gnutls-cli"]);
    cmd.extend(gnutls_cli_args(&f.certs, srv.port(), &log));
    let (run, _) = f.trace_json("gcli", &cmd, Some(request));
    let ex = srv.exchange();
    assert_eq!(ex.request, request);
    assert_eq!(run.stdout_bytes, ex.response, "gnutls-cli's stdout");

    let evs = &run.events;
    let pid = exec_pid(evs, "gnutls-cli");
    let recs = tls_of(evs, pid);
    check_records(&recs, "gnutls", GNUTLS_FNS, evs);
    assert_eq!(plain(&recs, "send"), request, "plaintext gnutls-cli sent");
    assert_eq!(
        plain(&recs, "recv"),
        ex.response,
        "plaintext gnutls-cli received"
    );
    let (_, local) = connect_of(evs, pid, &dest);
    check_same_socket(evs, pid, &recs, &local, &dest, b"GET /g");
    check_summary_lib(&run, "libgnutls.so", "gnutls");
}

// ---------------------------------------------------------------------------------------------
// 5. The server side: a traced Python HTTPS server reading requests (SSL_read_ex).

#[test]
fn traced_python_https_server() {
    let f = Fixture::new("tls-srv");
    let mut srv = f.https_server();
    let spid = srv.pid();
    let port = srv.port();
    let addr = loopback(port);
    let (mut live, pcap) = f.live_pcap("srv", spid);
    // A plain TCP connection (no handshake) makes the server accept: that shows capagent
    // has attached.
    wait_for_accept(&f, &mut live, spid, port);
    let body = pattern(2000, 21);
    let curl = f.curl_post(&srv.url("/srv"), &body);
    let cport = curl.run(&f.ns);
    let ex = srv.exchange();
    assert_eq!(ex.request, curl.sent());
    assert_eq!(ex.response, https_server_response(&body));
    let client = loopback(cport);
    // Until the server's records of this connection are out (the pokes make more events,
    // which flush the output).
    live.poke_until(
        TIMEOUT,
        || f.tcp_poke(port),
        |e| {
            e.ty() == "data"
                && e.pid() == spid
                && e["tls"]["lib"].is_string()
                && e["dir"] == "send"
                && e.str_of("remote") == Some(client.as_str())
        },
    );
    let run = live.stop();
    assert_ok(&run);

    let evs = &run.events;
    let recs: Vec<&Value> = tls_of(evs, spid)
        .into_iter()
        .filter(|e| e.str_of("remote") == Some(client.as_str()))
        .collect();
    check_records(&recs, "openssl", &["SSL_write_ex", "SSL_read_ex"], evs);
    assert_eq!(
        plain(&recs, "recv"),
        ex.request,
        "plaintext the server read"
    );
    assert_eq!(
        plain(&recs, "send"),
        ex.response,
        "plaintext the server wrote"
    );
    check_same_socket(evs, spid, &recs, &addr, &client, b"POST /srv");
    check_summary_lib(&run, "libssl.so", "openssl");
    // The server's view: client and server as seen from the server.
    check_pcap(
        &pcap,
        &client,
        &addr,
        &ex.request,
        &ex.response,
        "POST /srv",
        "200",
        "openssl",
    );
}

// ---------------------------------------------------------------------------------------------
// 6. `--comm` catches a TLS client started after capagent.

#[test]
fn comm_catches_a_tls_client_started_later() {
    let f = Fixture::new("tls-comm");
    let srv = f.openssl_server();
    let dest = loopback(srv.port);
    let mut live = f.live(&["--comm", "curl"]);
    // A curl to a closed port until capagent reports its connect.
    let mut canary = || {
        let mut c = f.ns.cmd("curl");
        c.args(["-s", "http://127.0.0.1:9/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = c.status();
    };
    live.poke_until(TIMEOUT, &mut canary, |e| {
        e.ty() == "sock" && e.str_of("addr") == Some("127.0.0.1:9")
    });
    let curl = f.curl(&srv.url(), &[]);
    let mut p = Proc::spawn("curl", curl.cmd(&f.ns));
    let pid = p.pid();
    let local = format!("127.0.0.1:{}", p.expect("LOCAL", TIMEOUT));
    assert!(p.wait(TIMEOUT).success(), "curl: {}", p.stderr());
    live.poke_until(TIMEOUT, &mut canary, |e| e.ty() == "exit" && e.pid() == pid);
    let run = live.stop();
    assert_ok(&run);
    let evs = &run.events;
    let recs = tls_of(evs, pid);
    check_records(&recs, "openssl", OPENSSL_FNS, evs);
    assert_eq!(plain(&recs, "send"), curl.sent());
    assert_eq!(plain(&recs, "recv"), curl.received());
    check_same_socket(evs, pid, &recs, &local, &dest, b"GET / HTTP");
    check_summary_lib(&run, "libssl.so", "openssl");
}

// ---------------------------------------------------------------------------------------------
// 7. A process without TLS libraries gets no uprobes; loading libssl then hooks it.

#[test]
fn no_uprobes_until_a_tls_library_is_loaded() {
    let f = Fixture::new("tls-none");
    let mut srv = f.https_server();
    let mut client = UrllibClient::start(&f.ns, &f.dir, &f.certs, &srv.url("/late"), None);
    let pid = client.pid;
    let mut live = f.live(&["--pid", &pid.to_string()]);
    wait_for_socket_call(&mut live, pid);
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        !maps.contains("libssl") && !maps.contains("libgnutls"),
        "{maps}"
    );
    assert_eq!(
        uprobes_of(live.pid()),
        [],
        "uprobes while the traced process has no TLS library"
    );
    client.go();
    let (status, body) = client.finish();
    assert_eq!((status, body.as_slice()), (200, &b"path /late\n"[..]));
    let ex = srv.exchange();
    let run = live.finish(TIMEOUT);
    assert_ok(&run);
    let recs = tls_of(&run.events, pid);
    check_records(
        &recs,
        "openssl",
        &["SSL_write_ex", "SSL_read_ex"],
        &run.events,
    );
    assert_eq!(plain(&recs, "send"), ex.request);
    assert_eq!(plain(&recs, "recv"), ex.response);
}

// ---------------------------------------------------------------------------------------------
// 8. Every uprobe is gone when capagent exits: SIGINT, and SIGKILL (the links die with the
// process); the traced server goes on serving.

/// Starts `capagent trace --tls --pid SPID`, waits until it has attached and holds uprobes
/// on libssl; returns it and the ids of its uprobe links.
fn traced_with_uprobes(f: &Fixture, spid: u32, port: u16) -> (LiveTrace, Vec<u32>) {
    let mut live = f.live(&["--pid", &spid.to_string()]);
    wait_for_accept(f, &mut live, spid, port);
    let cpid = live.pid();
    let ups = wait_for(TIMEOUT, || {
        let u = uprobes_of(cpid);
        u.iter().any(|u| u.file.contains("libssl")).then_some(u)
    })
    .unwrap_or_else(|| panic!("no uprobe on libssl: {:?}", uprobes_of(cpid)));
    assert!(ups.iter().any(|u| u.ret), "no uretprobe: {ups:?}");
    assert!(ups.iter().any(|u| !u.ret), "no uprobe: {ups:?}");
    (live, ups.iter().map(|u| u.link_id).collect())
}

fn assert_links_gone(ids: &[u32], how: &str) {
    assert!(
        wait_until(TIMEOUT, || ids.iter().all(|id| !bpf_link_exists(*id))),
        "uprobe links left after {how}: {:?}",
        ids.iter()
            .filter(|id| bpf_link_exists(**id))
            .collect::<Vec<_>>()
    );
}

#[test]
fn no_uprobes_left_at_exit_or_after_sigkill() {
    let f = Fixture::new("tls-exit");
    let mut srv = f.https_server();
    let (spid, port) = (srv.pid(), srv.port());

    let (live, ids) = traced_with_uprobes(&f, spid, port);
    let run = live.stop();
    assert_ok(&run);
    assert_links_gone(&ids, "SIGINT");

    let (live, ids) = traced_with_uprobes(&f, spid, port);
    // Dropping a LiveTrace kills capagent with SIGKILL.
    drop(live);
    assert_links_gone(&ids, "SIGKILL");

    // The server was neither left stopped nor broken: it still serves.
    let curl = f.curl(&srv.url("/after"), &[]);
    curl.run(&f.ns);
    assert_eq!(curl.body(), b"path /after\n");
    assert_eq!(srv.exchange().request, curl.sent());
    assert!(Path::new(&format!("/proc/{spid}")).exists());
}

// ---------------------------------------------------------------------------------------------
// 9. Go `crypto/tls` (a static Go binary built at test time, normally and stripped of its
// symbol table: `.gopclntab` then names the functions): `(*Conn).Write` and `Read`, hooked
// at their entry and on every RET (never a uretprobe), paired by goroutine.

const GO_WRITE: &str = "crypto/tls.(*Conn).Write";
const GO_READ: &str = "crypto/tls.(*Conn).Read";

/// The Go toolchain's version (`go1.19.8`): what the summary names.
fn go_version() -> String {
    let mut go = std::process::Command::new("go");
    go.arg("version");
    let out = run_output("go version", go, TIMEOUT);
    // `go version go1.19.8 linux/amd64`
    out.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("odd `go version`: {out:?}"))
        .to_string()
}

/// `capagent trace --tls -- tlsclient -ca CA -data BODY -n 5 URL` against the Python HTTPS
/// server (which closes each connection after its response: five connections, one request
/// each): on each connection, the Write records are exactly what the server read and the
/// Read records exactly what it wrote, on the fd, kernel socket and endpoints of that
/// connection's syscall records; JSON names the library and function; the summary names the
/// binary, Go and its version.
fn go_client(build: GoBuild) {
    const N: usize = 5;
    let f = Fixture::new("tls-go");
    let bin = go_tls_client(&f.dir, build);
    let mut srv = f.https_server();
    let dest = loopback(srv.port());
    let body = "go body \u{e9}\u{1f600} ".repeat(150);
    let cmd = f.ns.argv(&[
        &bin,
        "-ca",
        f.certs.ca_str(),
        "-data",
        &body,
        "-n",
        &N.to_string(),
        &srv.url("/go"),
    ]);
    let (run, pcap) = f.trace_json("go", &cmd, None);
    assert_eq!(
        run.stdout_bytes,
        body.repeat(N).as_bytes(),
        "tlsclient's stdout"
    );
    let exchanges: Vec<Exchange> = (0..N).map(|_| srv.exchange()).collect();
    for ex in &exchanges {
        assert!(ex.request.starts_with(b"POST /go HTTP/1.1\r\n"), "{ex:?}");
        assert_eq!(ex.response, https_server_response(body.as_bytes()));
    }

    let evs = &run.events;
    let file = Path::new(&bin).file_name().unwrap().to_str().unwrap();
    // The kernel's comm: the first 15 bytes of the file name.
    let pid = exec_pid(evs, &file[..file.len().min(15)]);
    let recs = tls_of(evs, pid);
    assert!(!recs.is_empty(), "no TLS records:\n{}", dump(evs));
    for e in &recs {
        let f = e["tls"]["fn"].as_str().unwrap_or_else(|| panic!("{e}"));
        assert_eq!(e["tls"]["lib"], "go", "{e}");
        assert!(f == GO_WRITE || f == GO_READ, "{e}");
        assert_eq!(e.syscall(), f, "{e}");
        let conn = e["tls"]["conn"].as_str().unwrap_or_else(|| panic!("{e}"));
        assert!(conn.starts_with("0x") && conn.len() > 2, "{e}");
        let dir = if f == GO_WRITE { "send" } else { "recv" };
        assert_eq!(e["dir"].as_str(), Some(dir), "{e}");
        assert_eq!(e["truncated"], false, "{e}");
        assert!(e.fd() >= 0, "a TLS record without its socket: {e}");
        if e.ret() > 0 {
            assert_eq!(e.ret(), e.int("total"), "{e}");
            assert_eq!(e.int("captured"), e.int("total"), "{e}");
        }
    }

    // The connections in the order Go made them, which is the order the server served them.
    let connects: Vec<&Value> = evs
        .iter()
        .filter(|e| {
            e.ty() == "sock"
                && e.pid() == pid
                && e.syscall() == "connect"
                && e.str_of("addr") == Some(dest.as_str())
        })
        .collect();
    assert_eq!(
        connects.len(),
        N,
        "one connection per request:\n{}",
        dump(evs)
    );
    let mut on_connections = 0;
    let rec = Rec {
        jsonl: String::new(),
        pcap: pcap.clone(),
    };
    let streams = rec.streams();
    for (c, ex) in connects.iter().zip(&exchanges) {
        let local = c.str_of("local").expect("connect without local");
        // The pcapng: one stream per connection carrying its plaintext, even when Go ran
        // the goroutine of a `Write` to its RET only after the connection was closed.
        let mine: Vec<u32> = streams
            .iter()
            .filter(|(_, cl, sv)| cl.to_string() == local && sv.to_string() == dest)
            .map(|(i, _, _)| *i)
            .collect();
        assert_eq!(mine.len(), 1, "one stream {local} -> {dest}: {streams:?}");
        assert_eq!(
            rec.follow(mine[0]),
            (ex.request.clone(), ex.response.clone())
        );
        let mine: Vec<&Value> = recs
            .iter()
            .copied()
            .filter(|e| e.str_of("local") == Some(local))
            .collect();
        on_connections += mine.len();
        assert_eq!(plain(&mine, "send"), ex.request, "Go wrote on {local}");
        assert_eq!(plain(&mine, "recv"), ex.response, "Go read on {local}");
        let fd = check_same_socket(evs, pid, &mine, local, &dest, b"POST /go");
        assert_eq!(fd, c.fd(), "the connect's fd ({local})");
        // Each record has the time of the socket syscall inside its call: before the
        // connection's end (its close, else the process's exit), even when Go ran the
        // goroutine to the RET after it.
        let end = evs
            .iter()
            .find(|e| e.pid() == pid && e.syscall() == "close" && e.str_of("local") == Some(local))
            .or_else(|| evs.iter().find(|e| e.pid() == pid && e.ty() == "exit"))
            .unwrap_or_else(|| panic!("no end of {local}:\n{}", dump(evs)));
        for e in &mine {
            assert!(e.int("ts_ns") < end.int("ts_ns"), "{e}\n{end}");
        }
        let objects: std::collections::HashSet<&str> = mine
            .iter()
            .filter_map(|e| e["tls"]["conn"].as_str())
            .collect();
        assert_eq!(
            objects.len(),
            1,
            "one *tls.Conn per connection: {objects:?}"
        );
    }
    assert_eq!(
        on_connections,
        recs.len(),
        "TLS records outside the connections"
    );

    let version = go_version();
    let want = format!(
        "tls: {}[{pid}] {bin} go {version}: hooked 2 functions",
        &file[..file.len().min(15)]
    );
    assert!(
        run.stderr.lines().any(|l| l == want),
        "no summary line {want:?}:\n{}",
        run.stderr
    );
    // tshark dissects every request and response as HTTP.
    let decode = format!("tcp.port=={},http", srv.port());
    let field = |filter: &str, field: &str| {
        tshark_r(
            &pcap,
            &["-d", &decode, "-Y", filter, "-T", "fields", "-e", field],
        )
    };
    assert_eq!(field("http.request", "http.request.uri"), "/go\n".repeat(N));
    assert_eq!(
        field("http.response", "http.response.code"),
        "200\n".repeat(N)
    );
}

/// Text output: a Go TLS record as the issue shows a TLS record, on the connection's fd.
#[test]
fn go_client_text_records() {
    let f = Fixture::new("tls-got");
    let bin = go_tls_client(&f.dir, GoBuild::Normal);
    let mut srv = f.https_server();
    let dest = loopback(srv.port());
    let cmd = f.ns.argv(&[&bin, "-ca", f.certs.ca_str(), &srv.url("/t")]);
    let run = f.trace_text(&cmd);
    assert_eq!(run.stdout, "path /t\n");
    let ex = srv.exchange();
    // `tlsclient[PID] crypto/tls.(*Conn).Write(FD, LOCAL -> DEST) = N "POST ..."`: the fd
    // and local address those of the `write` lines of the same connection.
    // A `Write` whose goroutine had not reached its RET when the process exited (Go's
    // HTTP client writes in a goroutine of its own): `= ? "POST ..." [unfinished]`.
    let record = |func: &str, arrow: &str, bytes: &[u8]| {
        let want = format!(
            " {arrow} {dest}) = {} \"{}",
            bytes.len(),
            escape(&bytes[..16])
        );
        let unfinished = format!(" {arrow} {dest}) = ? \"{}", escape(&bytes[..16]));
        let line = run
            .output
            .lines()
            .find(|l| {
                l.contains(&format!("] {func}("))
                    && (l.contains(&want)
                        || (func == GO_WRITE
                            && l.contains(&unfinished)
                            && l.ends_with(" [unfinished]")))
            })
            .unwrap_or_else(|| panic!("no {func} line with {want:?}:\n{}", run.output));
        assert!(line.contains(" tlsclient["), "{line}");
        let (_, args) = line.split_once(&format!("{func}(")).unwrap();
        let (fd_local, _) = args.split_once(&format!(" {arrow} ")).unwrap();
        fd_local.to_string()
    };
    let w = record(GO_WRITE, "->", &ex.request);
    let r = record(GO_READ, "<-", &ex.response);
    assert_eq!(w, r, "Write and Read on one socket");
    assert!(!w.starts_with("-1"), "{w}");
    assert!(
        run.output
            .lines()
            .any(|l| l.contains(&format!("] write({w} -> {dest}) = ")) && l.ends_with(" [tls]")),
        "no ciphertext write on {w} marked [tls]:\n{}",
        run.output
    );
}

#[test]
fn go_client_normal_build() {
    go_client(GoBuild::Normal);
}

#[test]
fn go_client_stripped_build() {
    go_client(GoBuild::Stripped);
}

// ---------------------------------------------------------------------------------------------
// --tls-only: the peer's close_notify, seen by SSL_read_ex, is the peer's FIN in the pcapng.

/// Python urllib (`SSL_read_ex`) reads `openssl s_server -www`'s HTTP/1.0 page to its end,
/// which the server marks with a close_notify: the last `SSL_read_ex` returns 0. With
/// `--tls-only` the socket's reads (the one that told that 0 apart from a read to retry) are
/// left out, yet the pcapng has the server's FIN right after exactly the page (the library's
/// own return value said it: `SSL_read_ex` hooked at its inner function).
#[test]
fn tls_only_close_notify_is_the_peers_fin() {
    let ns = Netns::new("tls-fin");
    let dir = TempDir::new("tls-fin");
    let certs = Certs::localhost();
    let srv = OpensslServer::start(&ns, &certs);
    let dest = format!("127.0.0.1:{}", srv.port);
    let pcap = dir.join("fin.pcapng").display().to_string();
    let mut client = vec![python()];
    let script = urllib_client_args(&dir, &certs, &srv.url(), "-", None);
    client.extend(script.iter().map(String::as_str));
    let args = ["--tls-only", "--format", "json", "-w", &pcap];
    let run = trace(&dir, &with_cmd(&args, &ns.argv(&client)), None);
    assert_ok(&run);
    let evs = &run.events;
    let pid = exec_pid(evs, &python_comm());
    let body = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("BODY "))
        .map(unhex)
        .unwrap_or_else(|| panic!("no BODY: {}", run.stdout));
    let recs = tls_of(evs, pid);
    check_records(&recs, "openssl", &["SSL_write_ex", "SSL_read_ex"], evs);
    let received = plain(&recs, "recv");
    assert!(received.starts_with(b"HTTP/1.0 200 ok\r\n"), "{received:?}");
    assert!(received.ends_with(&body), "the page urllib returned");
    let last = recs.last().unwrap();
    assert_eq!((last.syscall(), last.ret()), ("SSL_read_ex", 0), "{last}");

    let (_, local) = connect_of(evs, pid, &dest);
    check_pcap(
        &pcap,
        &local,
        &dest,
        &plain(&recs, "send"),
        &received,
        "GET /",
        "200",
        "openssl",
    );
    // The server's FIN, at the end of exactly what it sent (relative sequence numbers).
    let fins = tshark_r(
        &pcap,
        &[
            "-Y",
            &format!("tcp.flags.fin == 1 && tcp.srcport == {}", srv.port),
            "-T",
            "fields",
            "-e",
            "tcp.seq",
        ],
    );
    assert_eq!(fins.trim(), (1 + received.len()).to_string(), "{fins:?}");
}

// ---------------------------------------------------------------------------------------------
// OpenSSL builds other than Debian's 3.0: 1.1.1 and 3.3 (with `SSL_write_ex2`), from the
// manylinux wheels `cargo xtask setup` fetches, driven through Python's ctypes.

/// A ctypes client on the wheel's OpenSSL `version` writes an HTTP/1.0 request in one call
/// of `write` to `openssl s_server -www` and `SSL_read`s the page to its end. Its records
/// carry exactly the request and the page, on the fd the client connected (the connect's,
/// the one the client names), the write counted once under its own name, and the summary
/// names the wheel's libssl as OpenSSL `version`.
fn wheel_openssl_client(version: &str, write: &str) {
    let Some(openssl) = wheel_openssl(version) else {
        return;
    };
    let f = Fixture::new(&format!("tls-w{}", version.replace('.', "")));
    let srv = f.openssl_server();
    let dest = loopback(srv.port);
    let request = b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    let script = ctypes_client_args(&f.dir, &openssl, srv.port, request, write);
    let mut client = vec![python()];
    client.extend(script.iter().map(String::as_str));
    let (run, pcap) = f.trace_json("wheel", &f.ns.argv(&client), None);
    let evs = &run.events;
    let pid = exec_pid(evs, &python_comm());
    let (client_fd, received) = ctypes_client_result(&run.stdout);
    assert!(received.starts_with(b"HTTP/1.0 200 ok\r\n"), "{received:?}");

    let recs = tls_of(evs, pid);
    check_records(&recs, "openssl", &[write, "SSL_read"], evs);
    assert_eq!(plain(&recs, "send"), request, "plaintext the client wrote");
    assert_eq!(plain(&recs, "recv"), received, "plaintext the client read");
    let writes: Vec<&&Value> = recs.iter().filter(|e| e["dir"] == "send").collect();
    assert_eq!(writes.len(), 1, "one write, counted once: {writes:?}");
    assert_eq!(writes[0].syscall(), write, "{}", writes[0]);
    assert_eq!(writes[0].ret(), request.len() as i64, "{}", writes[0]);
    let (fd, local) = connect_of(evs, pid, &dest);
    assert_eq!(fd, client_fd, "the fd the client connected");
    let fd2 = check_same_socket(evs, pid, &recs, &local, &dest, b"GET / HTTP");
    assert_eq!(fd, fd2, "the connect's fd");
    let libssl = openssl.libssl_name();
    let want = format!("{libssl} openssl {version}: hooked ");
    assert!(
        run.stderr.lines().any(|l| l.contains(&want)),
        "no summary line with {want:?}:\n{}",
        run.stderr
    );
    check_pcap(
        &pcap, &local, &dest, request, &received, "GET /", "200", "openssl",
    );
}

#[test]
fn openssl_1_1_ctypes_client() {
    wheel_openssl_client("1.1.1g", "SSL_write");
}

#[test]
fn openssl_3_3_ctypes_client() {
    wheel_openssl_client("3.3.1", "SSL_write");
}

#[test]
fn openssl_1_1_ctypes_client_write_ex() {
    wheel_openssl_client("1.1.1g", "SSL_write_ex");
}

/// OpenSSL 3.3's `SSL_write_ex` calls `SSL_write_ex2`: one record, named `SSL_write_ex`.
#[test]
fn openssl_3_3_ctypes_client_write_ex() {
    wheel_openssl_client("3.3.1", "SSL_write_ex");
}

#[test]
fn openssl_3_3_ctypes_client_write_ex2() {
    wheel_openssl_client("3.3.1", "SSL_write_ex2");
}
