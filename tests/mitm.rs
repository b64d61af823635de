//! Integration tests of `--tls` in the proxies (TLS interception) with real clients and
//! servers on loopback, no root: curl trusting capagent's CA (`--cacert`) through
//! `proxy forward --tls`, `proxy socks --tls` and `proxy http --tls` (CONNECT) to a Python
//! HTTPS server whose certificate a test CA signed (`--upstream-ca`); `openssl s_client`
//! offering h2 and http/1.1 to `openssl s_server` choosing h2 (the protocol is mirrored);
//! an upstream the proxy does not trust (the client gets an alert, the record says why)
//! and `--insecure`; plain traffic through a `--tls` proxy; `--keylog` next to curl's own
//! SSLKEYLOGFILE (both legs' secrets, the client leg's the same as curl's). Each checks
//! the exact plaintext both ways in the JSON records (the server reports what it read and
//! wrote) and that tshark reads the HTTP from the pcapng. Certificates and the CA
//! directory are made at test time in temporary directories.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use capagent_testkit::proxy::{
    Agent, Rec, curl, curl_status, http_response, http_server, open_of, opens, recorded,
};
use capagent_testkit::{
    Certs, Ev as _, Exchange, HTTPS_SERVER_PY, Proc, TIMEOUT, TempDir, python, tshark_r, unhex,
};
use serde_json::Value;

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// [`HTTPS_SERVER_PY`] on 127.0.0.1 (no namespace): serves `GET PATH` with `path PATH\n`
/// and reports the exact bytes it read and wrote.
struct Https {
    proc: Proc,
    port: u16,
}

impl Https {
    fn start(dir: &TempDir, certs: &Certs) -> Https {
        let script = dir.write("https_server.py", HTTPS_SERVER_PY);
        let mut cmd = Command::new(python());
        cmd.arg(&script)
            .args([certs.cert_str(), certs.key_str(), "127.0.0.1"]);
        let mut proc = Proc::spawn("https_server.py", cmd);
        let port = proc.expect("READY", TIMEOUT).parse().unwrap();
        Https { proc, port }
    }

    /// The next request served (waits for it).
    fn exchange(&mut self) -> Exchange {
        let request = unhex(&self.proc.expect("REQ", TIMEOUT));
        let response = unhex(&self.proc.expect("RESP", TIMEOUT));
        Exchange { request, response }
    }
}

/// `--tls --ca-dir DIR/ca` and the upstream CA flags.
fn tls_args(dir: &TempDir, extra: &[&str]) -> Vec<String> {
    let mut a = args(&["--tls", "--ca-dir", &ca_dir(dir).display().to_string()]);
    a.extend(args(extra));
    a
}

fn ca_dir(dir: &TempDir) -> PathBuf {
    dir.join("ca")
}

/// capagent's CA certificate, made by the proxy when it started.
fn ca_cert(dir: &TempDir) -> String {
    ca_dir(dir).join("ca.crt").display().to_string()
}

/// The `open` record of the one intercepted connection, checked: SNI `localhost` both ways,
/// TLS 1.3 both ways, the server's certificate subject, no error; the ALPN each side
/// negotiated is returned (client, server).
fn check_intercepted(open: &Value) -> (Value, Value) {
    let tls = &open["tls"];
    assert_eq!(tls["error"], Value::Null, "{open}");
    for side in ["client", "server"] {
        assert_eq!(tls[side]["sni"], "localhost", "{open}");
        assert_eq!(tls[side]["version"], "TLSv1.3", "{open}");
        assert!(
            tls[side]["cipher"]
                .as_str()
                .is_some_and(|c| c.starts_with("TLS13_")),
            "{open}"
        );
    }
    assert_eq!(tls["server_cert"], "CN=localhost", "{open}");
    (tls["client"]["alpn"].clone(), tls["server"]["alpn"].clone())
}

/// The records of connection `fd` carry the exact plaintext both ways, marked, and tshark
/// reads the request and the response from the pcapng.
fn check_plaintext(rec: &Rec, evs: &[Value], fd: i64, ex: &Exchange, path: &str) {
    assert_eq!(recorded(evs, fd, "send"), ex.request, "request as recorded");
    assert_eq!(
        recorded(evs, fd, "recv"),
        ex.response,
        "response as recorded"
    );
    let data: Vec<&Value> = evs
        .iter()
        .filter(|e| e.ty() == "data" && e.fd() == fd && e["total"] != 0)
        .collect();
    assert!(!data.is_empty());
    for d in data {
        assert_eq!(d["tls"], serde_json::json!({"plaintext": true}), "{d}");
    }
    let http = tshark_r(
        &rec.pcap,
        &[
            "-Y",
            "http",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
            "-e",
            "http.response.code",
        ],
    );
    let lines: Vec<&str> = http.lines().map(str::trim).collect();
    assert_eq!(lines, [path, "200"], "tshark: {http}");
    let comments = tshark_r(
        &rec.pcap,
        &["-Y", "http", "-T", "fields", "-e", "frame.comment"],
    );
    assert!(
        comments.contains("decrypted by capagent (mitm)"),
        "{comments}"
    );
}

/// curl through `proxy forward --tls`: the name it asks for (SNI `localhost`) is on
/// capagent's leaf, the real server is verified with `--upstream-ca`, the plaintext both
/// ways is recorded exactly.
#[test]
fn forward_tls_curl() {
    let dir = TempDir::new("mitm-fwd");
    let certs = Certs::localhost();
    let mut server = Https::start(&dir, &certs);
    let rec = Rec::new(&dir, "fwd");
    let mut a = args(&[
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &format!("127.0.0.1:{}", server.port),
    ]);
    a.extend(tls_args(&dir, &["--upstream-ca", certs.ca_str()]));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let port = agent.addr().port();
    let body = curl(&[
        "--cacert",
        &ca_cert(&dir),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/forwarded"),
    ]);
    assert_eq!(body, b"path /forwarded\n");
    let ex = server.exchange();
    let stderr = agent.stop();
    assert!(stderr.contains("created a CA in"), "{stderr}");
    let evs = rec.events();
    let open = open_of(&evs, "forward", &format!("127.0.0.1:{}", server.port));
    // The Python server offers no ALPN: none either side.
    assert_eq!(check_intercepted(open), (Value::Null, Value::Null));
    check_plaintext(&rec, &evs, open.fd(), &ex, "/forwarded");
}

/// The TLS 1.3 secrets of one session, as curl (OpenSSL) and rustls both log them.
const TLS13_LABELS: [&str; 5] = [
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "EXPORTER_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_TRAFFIC_SECRET_0",
];

/// The lines of an NSS key log grouped by client random: random -> {(label, secret)}.
/// Every line is checked to be exactly `LABEL <64 lowercase hex> <secret hex>\n`, the
/// label one of TLS 1.3's.
fn key_log(text: &str) -> BTreeMap<String, BTreeSet<(String, String)>> {
    assert!(text.ends_with('\n'), "{text:?}");
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut by_random: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split(' ').collect();
        assert_eq!(w.len(), 3, "{line:?}");
        assert!(TLS13_LABELS.contains(&w[0]), "{line:?}");
        assert!(w[1].len() == 64 && lower_hex(w[1]), "{line:?}");
        assert!(lower_hex(w[2]), "{line:?}");
        let new = by_random
            .entry(w[1].to_string())
            .or_default()
            .insert((w[0].to_string(), w[2].to_string()));
        assert!(new, "{line:?} twice");
    }
    by_random
}

/// `proxy forward --tls --keylog B` with curl logging its own secrets to A
/// (SSLKEYLOGFILE): B holds both legs' secrets, curl's session (its client random in A,
/// with the same secrets) and capagent's session with the server (another client random),
/// every TLS 1.3 secret of each, of the length of its cipher's hash.
#[test]
fn forward_tls_keylog() {
    let dir = TempDir::new("mitm-keylog");
    let certs = Certs::localhost();
    let mut server = Https::start(&dir, &certs);
    let rec = Rec::new(&dir, "keylog");
    let (curl_keys, agent_keys) = (dir.join("curl.keys"), dir.join("capagent.keys"));
    let mut a = args(&[
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &format!("127.0.0.1:{}", server.port),
    ]);
    a.extend(tls_args(
        &dir,
        &[
            "--upstream-ca",
            certs.ca_str(),
            "--keylog",
            &agent_keys.display().to_string(),
        ],
    ));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let port = agent.addr().port();
    let out = Command::new("curl")
        .env("SSLKEYLOGFILE", &curl_keys)
        .args(["-sS", "--max-time", "20", "--cacert", &ca_cert(&dir)])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/keys"))
        .output()
        .expect("cannot run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"path /keys\n");
    let ex = server.exchange();
    agent.stop();
    let evs = rec.events();
    let open = open_of(&evs, "forward", &format!("127.0.0.1:{}", server.port));
    check_intercepted(open);
    check_plaintext(&rec, &evs, open.fd(), &ex, "/keys");
    // The secrets' length is the cipher suite's hash's.
    let secret_len = |side: &str| {
        let cipher = open["tls"][side]["cipher"].as_str().unwrap();
        if cipher.ends_with("SHA384") { 96 } else { 64 }
    };

    let curl_log = key_log(&std::fs::read_to_string(&curl_keys).unwrap());
    let agent_log = key_log(&std::fs::read_to_string(&agent_keys).unwrap());
    assert_eq!(curl_log.len(), 1, "one session of curl: {curl_log:?}");
    assert_eq!(
        agent_log.len(),
        2,
        "two sessions in capagent's: {agent_log:?}"
    );
    let (client_random, client_secrets) = curl_log.iter().next().unwrap();
    assert_eq!(
        agent_log.get(client_random),
        Some(client_secrets),
        "curl's session, with curl's secrets"
    );
    let (upstream_random, upstream_secrets) =
        agent_log.iter().find(|(r, _)| *r != client_random).unwrap();
    for (secrets, side) in [(client_secrets, "client"), (upstream_secrets, "server")] {
        let labels: Vec<&str> = secrets.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, TLS13_LABELS, "{side} leg");
        for (label, secret) in secrets {
            assert_eq!(
                secret.len(),
                secret_len(side),
                "{side} leg: {label} {secret}"
            );
        }
    }
    assert_ne!(client_secrets, upstream_secrets);
    assert_ne!(client_random, upstream_random);
}

/// curl through `proxy socks --tls` (`--socks5-hostname`): intercepted after the SOCKS
/// handshake.
#[test]
fn socks_tls_curl() {
    let dir = TempDir::new("mitm-socks");
    let certs = Certs::localhost();
    let mut server = Https::start(&dir, &certs);
    let rec = Rec::new(&dir, "socks");
    let mut a = args(&["proxy", "socks", "--listen", "127.0.0.1:0"]);
    a.extend(tls_args(&dir, &["--upstream-ca", certs.ca_str()]));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let body = curl(&[
        "--cacert",
        &ca_cert(&dir),
        "--socks5-hostname",
        &agent.addr().to_string(),
        &format!("https://localhost:{}/socks", server.port),
    ]);
    assert_eq!(body, b"path /socks\n");
    let ex = server.exchange();
    agent.stop();
    let evs = rec.events();
    let open = open_of(
        &evs,
        "socks5 connect",
        &format!("localhost:{}", server.port),
    );
    check_intercepted(open);
    check_plaintext(&rec, &evs, open.fd(), &ex, "/socks");
}

/// curl through `proxy http --tls` (`-x`, a CONNECT tunnel): intercepted inside the tunnel.
#[test]
fn http_connect_tls_curl() {
    let dir = TempDir::new("mitm-http");
    let certs = Certs::localhost();
    let mut server = Https::start(&dir, &certs);
    let rec = Rec::new(&dir, "http");
    let mut a = args(&[
        "proxy",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--connect-ports",
        &server.port.to_string(),
    ]);
    a.extend(tls_args(&dir, &["--upstream-ca", certs.ca_str()]));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let body = curl(&[
        "--cacert",
        &ca_cert(&dir),
        "-x",
        &format!("http://{}", agent.addr()),
        &format!("https://localhost:{}/tunnel", server.port),
    ]);
    assert_eq!(body, b"path /tunnel\n");
    let ex = server.exchange();
    agent.stop();
    let evs = rec.events();
    let open = open_of(&evs, "http connect", &format!("localhost:{}", server.port));
    check_intercepted(open);
    check_plaintext(&rec, &evs, open.fd(), &ex, "/tunnel");
}

/// `openssl s_server` on 127.0.0.1 (no namespace) presenting `certs`, with `extra` flags;
/// its port.
fn openssl_server(certs: &Certs, extra: &[&str]) -> (Proc, u16) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-www", "-accept", "127.0.0.1:0", "-cert"])
        .arg(&certs.cert)
        .arg("-key")
        .arg(&certs.key)
        .args(extra);
    let mut proc = Proc::spawn("openssl s_server", cmd);
    let addr = proc.expect("ACCEPT", TIMEOUT);
    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
    (proc, port)
}

/// `openssl s_client -alpn h2,http/1.1` through `proxy forward --tls` to a server that
/// chooses h2: h2 on both sides (capagent offered the client only what the server chose).
#[test]
fn alpn_is_mirrored() {
    let dir = TempDir::new("mitm-alpn");
    let certs = Certs::localhost();
    let (_server, port) = openssl_server(&certs, &["-alpn", "h2"]);
    let rec = Rec::new(&dir, "alpn");
    let mut a = args(&[
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &format!("127.0.0.1:{port}"),
    ]);
    a.extend(tls_args(&dir, &["--upstream-ca", certs.ca_str()]));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &agent.addr().to_string(),
            "-servername",
            "localhost",
            "-alpn",
            "h2,http/1.1",
            "-CAfile",
            &ca_cert(&dir),
            "-verify_return_error",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ALPN protocol: h2\n"), "{stdout}");
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    agent.stop();
    let evs = rec.events();
    let open = open_of(&evs, "forward", &format!("127.0.0.1:{port}"));
    assert_eq!(
        check_intercepted(open),
        (Value::from("h2"), Value::from("h2"))
    );
}

/// A real server whose certificate the proxy does not trust (no `--upstream-ca`): curl gets
/// a handshake_failure alert instead of a certificate and the record says why; with
/// `--insecure` the same connection passes and the server's certificate is recorded.
#[test]
fn untrusted_upstream_then_insecure() {
    let dir = TempDir::new("mitm-untrusted");
    let certs = Certs::localhost();
    let mut server = Https::start(&dir, &certs);
    let target = format!("127.0.0.1:{}", server.port);
    for insecure in [false, true] {
        let rec = Rec::new(&dir, if insecure { "insecure" } else { "untrusted" });
        let mut a = args(&[
            "proxy",
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &target,
        ]);
        a.extend(tls_args(&dir, if insecure { &["--insecure"] } else { &[] }));
        a.extend(rec.args());
        let agent = Agent::start(&a, 1);
        let port = agent.addr().port();
        let out = curl_status(&[
            "--cacert",
            &ca_cert(&dir),
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            &format!("https://localhost:{port}/x"),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stop = agent.stop();
        let evs = rec.events();
        let open = open_of(&evs, "forward", &target);
        if insecure {
            assert!(out.status.success(), "{stderr}");
            assert_eq!(out.stdout, b"path /x\n");
            let ex = server.exchange();
            check_intercepted(open);
            assert_eq!(recorded(&evs, open.fd(), "send"), ex.request);
            assert_eq!(recorded(&evs, open.fd(), "recv"), ex.response);
        } else {
            // curl 35: the TLS handshake failed, on our alert.
            assert_eq!(out.status.code(), Some(35), "{stderr}");
            assert!(stderr.contains("alert handshake failure"), "{stderr}");
            let error = open["tls"]["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("invalid peer certificate: UnknownIssuer"),
                "{open}"
            );
            assert!(stop.contains("UnknownIssuer"), "{stop}");
            assert_eq!(open["tls"]["client"]["sni"], "localhost");
            // No data relayed; the close says why (EPROTO).
            assert!(recorded(&evs, open.fd(), "send").is_empty());
            let close = evs
                .iter()
                .find(|e| e.fd() == open.fd() && e["syscall"] == "close")
                .unwrap();
            assert_eq!(close["errno"], "EPROTO", "{close}");
        }
    }
}

/// Plain HTTP through `proxy forward --tls`: not a ClientHello, relayed and recorded as
/// without `--tls` (no `tls` in the records).
#[test]
fn plain_traffic_is_relayed_as_before() {
    let dir = TempDir::new("mitm-plain");
    let rec = Rec::new(&dir, "plain");
    let response = http_response(b"plain\n");
    let (web, requests) = http_server(response.clone(), 1);
    let mut a = args(&[
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &web.to_string(),
    ]);
    a.extend(tls_args(&dir, &[]));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let body = curl(&[&format!("http://{}/p", agent.addr())]);
    assert_eq!(body, b"plain\n");
    let request = requests.recv_timeout(TIMEOUT).unwrap();
    agent.stop();
    let evs = rec.events();
    assert_eq!(opens(&evs).len(), 1);
    let open = open_of(&evs, "forward", &web.to_string());
    assert_eq!(recorded(&evs, open.fd(), "send"), request);
    assert_eq!(recorded(&evs, open.fd(), "recv"), response);
    assert!(evs.iter().all(|e| e.get("tls").is_none()), "{evs:?}");
}

/// A server that speaks first (as SMTP does) through `proxy forward --tls`: its greeting is
/// relayed at once (the proxy does not wait for a ClientHello), then the exchange as usual.
#[test]
fn server_speaks_first() {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::net::{TcpListener, TcpStream};
    let dir = TempDir::new("mitm-greet");
    let rec = Rec::new(&dir, "greet");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"220 ready\r\n").unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        s.write_all(b"221 bye\r\n").unwrap();
        line
    });
    let mut a = args(&[
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &server_addr.to_string(),
    ]);
    a.extend(tls_args(&dir, &[]));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let c = TcpStream::connect(agent.addr()).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    assert_eq!(greeting, "220 ready\r\n");
    (&c).write_all(b"QUIT\r\n").unwrap();
    let mut bye = String::new();
    r.read_line(&mut bye).unwrap();
    assert_eq!(bye, "221 bye\r\n");
    assert_eq!(server.join().unwrap(), "QUIT\r\n");
    drop((c, r));
    agent.stop();
    let evs = rec.events();
    let open = open_of(&evs, "forward", &server_addr.to_string());
    assert_eq!(recorded(&evs, open.fd(), "send"), b"QUIT\r\n");
    assert_eq!(
        recorded(&evs, open.fd(), "recv"),
        b"220 ready\r\n221 bye\r\n"
    );
    assert!(open.get("tls").is_none(), "{open}");
}

/// A client that sends no SNI (`openssl s_client -noservername` to an address): the leaf is
/// issued for the address the client reached (the forwarded target's), which the client
/// verifies (`-verify_ip`); no SNI recorded either way.
#[test]
fn sni_less_client() {
    let dir = TempDir::new("mitm-nosni");
    let certs = Certs::localhost();
    let (_server, port) = openssl_server(&certs, &[]);
    let rec = Rec::new(&dir, "nosni");
    let target = format!("127.0.0.1:{port}");
    let mut a = args(&[
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &target,
    ]);
    a.extend(tls_args(&dir, &["--upstream-ca", certs.ca_str()]));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &agent.addr().to_string(),
            "-noservername",
            "-verify_ip",
            "127.0.0.1",
            "-CAfile",
            &ca_cert(&dir),
            "-verify_return_error",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    agent.stop();
    let evs = rec.events();
    let tls = &open_of(&evs, "forward", &target)["tls"];
    assert_eq!(tls["error"], Value::Null, "{tls}");
    assert_eq!(tls["client"]["sni"], Value::Null, "{tls}");
    assert_eq!(tls["server"]["sni"], Value::Null, "{tls}");
    assert_eq!(tls["server_cert"], "CN=localhost", "{tls}");
}
