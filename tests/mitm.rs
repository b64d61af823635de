//! Integration tests of `--tls` in the proxies (TLS interception) with real clients and
//! servers on loopback, no root: curl trusting capagent's CA (`--cacert`) through
//! `proxy forward --tls`, `proxy socks --tls` and `proxy http --tls` (CONNECT) to a Python
//! HTTPS server whose certificate a test CA signed (`--upstream-ca`); `openssl s_client`
//! offering h2 and http/1.1 to `openssl s_server` choosing h2 (the protocol is mirrored);
//! an upstream the proxy does not trust (the client gets an alert, the record says why)
//! and `--insecure`; plain traffic through a `--tls` proxy; `--keylog` next to curl's own
//! SSLKEYLOGFILE (both legs' secrets, the client leg's the same as curl's); Python's
//! `urllib` (cafile) and `requests` (REQUESTS_CA_BUNDLE) and a Java client (a keystore
//! made with `keytool -importcert`) through `proxy http --tls`. Each checks the exact
//! plaintext both ways in the JSON records (the server reports what it read and wrote)
//! and that tshark reads the HTTP from the pcapng. Passthrough: `--tls-passthrough` with
//! an SNI glob and a CIDR (curl trusting only the real server's CA gets through, other
//! hosts are intercepted), and a client that rejects capagent's certificate (curl 60 first,
//! then passed through, its records the real session's ciphertext, which curl's key log
//! decrypts). Certificates and the CA directory are made at test time in temporary
//! directories; the fixture is capagent_testkit::mitm.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use capagent_testkit::mitm::{
    Https, Mitm, check_intercepted, check_passed_through, check_plaintext,
    check_untrusted_upstream, forward, http_connect, http_fields, localhost_url, openssl_server,
    s_client, socks,
};
use capagent_testkit::proxy::{
    Rec, curl, curl_status, http_response, http_server, open_of, opens, recorded,
};
use capagent_testkit::{Certs, Ev as _, TIMEOUT, python, run_output, wait_for};
use serde_json::Value;

/// curl through `proxy forward --tls`: the name it asks for (SNI `localhost`) is on
/// capagent's leaf, the real server is verified with `--upstream-ca`, the plaintext both
/// ways is recorded exactly.
#[test]
fn forward_tls_curl() {
    let t = Mitm::new("fwd");
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let target = format!("127.0.0.1:{}", server.port);
    let agent = t.start(forward(&target), &["--upstream-ca", certs.ca_str()]);
    let [resolve, to, url] = localhost_url(agent.addr().port(), "/forwarded");
    let body = curl(&["--cacert", &t.ca_cert(), &resolve, &to, &url]);
    assert_eq!(body, b"path /forwarded\n");
    let ex = server.exchange();
    let stderr = agent.stop();
    assert!(stderr.contains("created a CA in"), "{stderr}");
    let evs = t.events();
    let open = open_of(&evs, "forward", &target);
    // The Python server offers no ALPN: none either side.
    assert_eq!(check_intercepted(open), (Value::Null, Value::Null));
    check_plaintext(&t.rec, &evs, open.fd(), &ex, "/forwarded");
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
    let t = Mitm::new("keylog");
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let (curl_keys, agent_keys) = (t.dir.join("curl.keys"), t.dir.join("capagent.keys"));
    let target = format!("127.0.0.1:{}", server.port);
    let agent = t.start(
        forward(&target),
        &[
            "--upstream-ca",
            certs.ca_str(),
            "--keylog",
            &agent_keys.display().to_string(),
        ],
    );
    let out = Command::new("curl")
        .env("SSLKEYLOGFILE", &curl_keys)
        .args(["-sS", "--max-time", "20", "--cacert", &t.ca_cert()])
        .args(localhost_url(agent.addr().port(), "/keys"))
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
    let evs = t.events();
    let open = open_of(&evs, "forward", &target);
    check_intercepted(open);
    check_plaintext(&t.rec, &evs, open.fd(), &ex, "/keys");
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
    let t = Mitm::new("socks");
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let agent = t.start(socks(), &["--upstream-ca", certs.ca_str()]);
    let body = curl(&[
        "--cacert",
        &t.ca_cert(),
        "--socks5-hostname",
        &agent.addr().to_string(),
        &format!("https://localhost:{}/socks", server.port),
    ]);
    assert_eq!(body, b"path /socks\n");
    let ex = server.exchange();
    agent.stop();
    let evs = t.events();
    let open = open_of(
        &evs,
        "socks5 connect",
        &format!("localhost:{}", server.port),
    );
    check_intercepted(open);
    check_plaintext(&t.rec, &evs, open.fd(), &ex, "/socks");
}

/// curl through `proxy http --tls` (`-x`, a CONNECT tunnel): intercepted inside the tunnel.
#[test]
fn http_connect_tls_curl() {
    let t = Mitm::new("http");
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let agent = t.start(
        http_connect(server.port),
        &["--upstream-ca", certs.ca_str()],
    );
    let body = curl(&[
        "--cacert",
        &t.ca_cert(),
        "-x",
        &format!("http://{}", agent.addr()),
        &format!("https://localhost:{}/tunnel", server.port),
    ]);
    assert_eq!(body, b"path /tunnel\n");
    let ex = server.exchange();
    agent.stop();
    let evs = t.events();
    let open = open_of(&evs, "http connect", &format!("localhost:{}", server.port));
    check_intercepted(open);
    check_plaintext(&t.rec, &evs, open.fd(), &ex, "/tunnel");
}

/// `openssl s_client -alpn h2,http/1.1` through `proxy forward --tls` to a server that
/// chooses h2: h2 on both sides (capagent offered the client only what the server chose).
#[test]
fn alpn_is_mirrored() {
    let t = Mitm::new("alpn");
    let certs = Certs::localhost();
    let (_server, port) = openssl_server(&certs, &["-alpn", "h2"]);
    let agent = t.start(
        forward(&format!("127.0.0.1:{port}")),
        &["--upstream-ca", certs.ca_str()],
    );
    let stdout = s_client(&[
        "-connect",
        &agent.addr().to_string(),
        "-servername",
        "localhost",
        "-alpn",
        "h2,http/1.1",
        "-CAfile",
        &t.ca_cert(),
        "-verify_return_error",
    ]);
    assert!(stdout.contains("ALPN protocol: h2\n"), "{stdout}");
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    agent.stop();
    let evs = t.events();
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
    let t = Mitm::new("untrusted");
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let target = format!("127.0.0.1:{}", server.port);
    for insecure in [false, true] {
        let rec = Rec::new(&t.dir, if insecure { "insecure" } else { "untrusted" });
        let flags: &[&str] = if insecure { &["--insecure"] } else { &[] };
        let agent = t.start_rec(&rec, forward(&target), flags);
        let [resolve, to, url] = localhost_url(agent.addr().port(), "/x");
        let out = curl_status(&["--cacert", &t.ca_cert(), &resolve, &to, &url]);
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
            // No data relayed; the close says why (EPROTO).
            check_untrusted_upstream(&evs, open, &stop);
        }
    }
}

/// Plain HTTP through `proxy forward --tls`: not a ClientHello, relayed and recorded as
/// without `--tls` (no `tls` in the records).
#[test]
fn plain_traffic_is_relayed_as_before() {
    let t = Mitm::new("plain");
    let response = http_response(b"plain\n");
    let (web, requests) = http_server(response.clone(), 1);
    let agent = t.start(forward(&web.to_string()), &[]);
    let body = curl(&[&format!("http://{}/p", agent.addr())]);
    assert_eq!(body, b"plain\n");
    let request = requests.recv_timeout(TIMEOUT).unwrap();
    agent.stop();
    let evs = t.events();
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
    let t = Mitm::new("greet");
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
    let agent = t.start(forward(&server_addr.to_string()), &[]);
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
    let evs = t.events();
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
    let t = Mitm::new("nosni");
    let certs = Certs::localhost();
    let (_server, port) = openssl_server(&certs, &[]);
    let target = format!("127.0.0.1:{port}");
    let agent = t.start(forward(&target), &["--upstream-ca", certs.ca_str()]);
    let stdout = s_client(&[
        "-connect",
        &agent.addr().to_string(),
        "-noservername",
        "-verify_ip",
        "127.0.0.1",
        "-CAfile",
        &t.ca_cert(),
        "-verify_return_error",
    ]);
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    agent.stop();
    let evs = t.events();
    let tls = &open_of(&evs, "forward", &target)["tls"];
    assert_eq!(tls["error"], Value::Null, "{tls}");
    assert_eq!(tls["client"]["sni"], Value::Null, "{tls}");
    assert_eq!(tls["server"]["sni"], Value::Null, "{tls}");
    assert_eq!(tls["server_cert"], "CN=localhost", "{tls}");
}

/// `--tls-passthrough` with an SNI glob and a CIDR through `proxy socks --tls`: curl
/// trusting only the real server's CA succeeds to `pass.example` (`*.pass.example` also
/// matches the domain itself) and to a server on 127.0.0.2 (`127.0.0.2/32`), both relayed
/// untouched; a connection matching neither is intercepted.
#[test]
fn passthrough_patterns() {
    let t = Mitm::new("patterns");
    let certs = Certs::new(&["localhost", "pass.example", "other.test", "127.0.0.1"]);
    let mut a = Https::start(&t.dir, &certs);
    let mut b = Https::start_on(&t.dir, &certs, "127.0.0.2");
    let agent = t.start(
        socks(),
        &[
            "--upstream-ca",
            certs.ca_str(),
            "--tls-passthrough",
            "*.pass.example",
            "--tls-passthrough",
            "127.0.0.2/32",
        ],
    );
    let proxy = agent.addr().to_string();
    // curl resolves (--socks5): the proxy is asked for the address, the SNI is the name.
    let real = |name: &str, addr: &str, port: u16, path: &str| {
        curl(&[
            "--cacert",
            certs.ca_str(),
            "--socks5",
            &proxy,
            "--resolve",
            &format!("{name}:{port}:{addr}"),
            &format!("https://{name}:{port}{path}"),
        ])
    };
    assert_eq!(
        real("pass.example", "127.0.0.1", a.port, "/sni"),
        b"path /sni\n"
    );
    let by_sni = a.exchange();
    assert_eq!(
        real("other.test", "127.0.0.2", b.port, "/cidr"),
        b"path /cidr\n"
    );
    let by_cidr = b.exchange();
    let body = curl(&[
        "--cacert",
        &t.ca_cert(),
        "--socks5-hostname",
        &proxy,
        &format!("https://localhost:{}/intercepted", a.port),
    ]);
    assert_eq!(body, b"path /intercepted\n");
    let intercepted = a.exchange();
    agent.stop();
    let evs = t.events();
    assert_eq!(opens(&evs).len(), 3, "{}", capagent_testkit::dump(&evs));
    let open = open_of(&evs, "socks5 connect", &format!("127.0.0.1:{}", a.port));
    check_passed_through(
        &evs,
        open,
        "pattern *.pass.example",
        "pass.example",
        &by_sni,
    );
    let open = open_of(&evs, "socks5 connect", &format!("127.0.0.2:{}", b.port));
    check_passed_through(&evs, open, "pattern 127.0.0.2/32", "other.test", &by_cidr);
    let open = open_of(&evs, "socks5 connect", &format!("localhost:{}", a.port));
    check_intercepted(open);
    check_plaintext(&t.rec, &evs, open.fd(), &intercepted, "/intercepted");
}

/// A client that does not trust capagent's CA (curl with only the real server's CA, as a
/// client pinning the real certificate would) through `proxy socks --tls`: its first
/// request fails (curl 60, certificate not trusted) and the proxy says once that it passes
/// that client's connections to that host through; the next two succeed through
/// passthrough, recorded as such, and their records are the real session's ciphertext:
/// tshark decrypts the HTTP from the pcapng with curl's own key log.
#[test]
fn pinning_client_passes_through_next_time() {
    let t = Mitm::new("pinned");
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let agent = t.start(socks(), &["--upstream-ca", certs.ca_str()]);
    let proxy = agent.addr().to_string();
    let keys = t.dir.join("curl.keys");
    let url = format!("https://localhost:{}/pinned", server.port);
    let run = || {
        Command::new("curl")
            .env("SSLKEYLOGFILE", &keys)
            .args(["-sS", "--max-time", "20", "--cacert", certs.ca_str()])
            .args(["--socks5-hostname", &proxy, &url])
            .output()
            .expect("cannot run curl")
    };
    let first = run();
    let stderr = String::from_utf8_lossy(&first.stderr);
    // curl 60: the peer's certificate is not trusted (capagent's).
    assert_eq!(first.status.code(), Some(60), "{stderr}");
    let said = "127.0.0.1 rejected capagent's certificate for localhost: passing its connections to localhost through (untouched) for 10 min";
    wait_for(TIMEOUT, || agent.proc.stderr().contains(said).then_some(()))
        .unwrap_or_else(|| panic!("no log line: {}", agent.proc.stderr()));
    let mut passed = Vec::new();
    for _ in 0..2 {
        let out = run();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"path /pinned\n");
        passed.push(server.exchange());
    }
    let stderr = agent.stop();
    assert_eq!(stderr.matches(said).count(), 1, "said once: {stderr}");
    let evs = t.events();
    let target = format!("localhost:{}", server.port);
    let opens: Vec<&Value> = opens(&evs)
        .into_iter()
        .filter(|o| o["proxy"] == "socks5 connect" && o["target"] == target)
        .collect();
    assert_eq!(opens.len(), 3, "{}", capagent_testkit::dump(&evs));
    let error = opens[0]["tls"]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("the client rejected capagent's certificate"),
        "{}",
        opens[0]
    );
    for (open, ex) in opens[1..].iter().zip(&passed) {
        check_passed_through(
            &evs,
            open,
            "client rejected capagent's certificate",
            "localhost",
            ex,
        );
    }
    // The recorded ciphertext is curl's session with the real server: its keys decrypt it.
    let http = http_fields(
        &t.rec.pcap,
        &[
            "-o",
            &format!("tls.keylog_file:{}", keys.display()),
            "-d",
            &format!("tcp.port=={},tls", server.port),
        ],
    );
    assert_eq!(http, ["/pinned", "200", "/pinned", "200"], "tshark");
}

/// Python's `urllib` through a CONNECT proxy, trusting `cafile` only: prints the body.
const URLLIB_CLIENT_PY: &str = r#"
import ssl, sys, urllib.request
proxy, cafile, url = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=cafile)
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({"https": proxy}),
    urllib.request.HTTPSHandler(context=ctx),
)
sys.stdout.buffer.write(opener.open(url, timeout=20).read())
"#;

/// Python's `requests` (its proxy and CA bundle from the environment: HTTPS_PROXY,
/// REQUESTS_CA_BUNDLE): prints the body.
const REQUESTS_CLIENT_PY: &str = r#"
import sys, requests
r = requests.get(sys.argv[1], timeout=20)
r.raise_for_status()
sys.stdout.buffer.write(r.content)
"#;

/// Debian's Python, which has the `requests` package (`cargo xtask setup` installs
/// python3-requests), whatever `python3` is first in PATH.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// A client through `proxy http --tls` (CONNECT) to the HTTPS server at
/// `https://localhost:PORT/NAME`, trusting capagent's CA: `client(test, proxy URL, URL)`
/// makes its command, whose stdout must be the body. Checks the body, the exact plaintext
/// both ways in the records and tshark's reading of the pcapng; returns the `open` record.
fn client_through_http_proxy(
    name: &str,
    client: impl FnOnce(&Mitm, &str, &str) -> Command,
) -> Value {
    let t = Mitm::new(name);
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let agent = t.start(
        http_connect(server.port),
        &["--upstream-ca", certs.ca_str()],
    );
    let proxy = format!("http://{}", agent.addr());
    let path = format!("/{name}");
    let url = format!("https://localhost:{}{path}", server.port);
    let mut cmd = client(&t, &proxy, &url);
    cmd.env_remove("NO_PROXY").env_remove("no_proxy");
    let body = run_output(name, cmd, Duration::from_secs(60));
    assert_eq!(body, format!("path {path}\n"));
    let ex = server.exchange();
    agent.stop();
    let evs = t.events();
    let open = open_of(&evs, "http connect", &format!("localhost:{}", server.port));
    check_plaintext(&t.rec, &evs, open.fd(), &ex, &path);
    open.clone()
}

/// Python's `urllib` with `ssl.create_default_context(cafile=capagent's CA)` through
/// `proxy http --tls`.
#[test]
fn python_urllib_cafile() {
    let open = client_through_http_proxy("urllib", |t, proxy, url| {
        let script = t.dir.write("urllib_client.py", URLLIB_CLIENT_PY);
        let mut cmd = Command::new(python());
        cmd.arg(script).args([proxy, &t.ca_cert(), url]);
        cmd
    });
    check_intercepted(&open);
}

/// Python's `requests` (Debian's) with REQUESTS_CA_BUNDLE=capagent's CA and HTTPS_PROXY
/// through `proxy http --tls`.
#[test]
fn python_requests_ca_bundle() {
    let open = client_through_http_proxy("requests", |t, proxy, url| {
        let script = t.dir.write("requests_client.py", REQUESTS_CLIENT_PY);
        let mut cmd = Command::new(DEBIAN_PYTHON);
        cmd.arg(script)
            .arg(url)
            .env("HTTPS_PROXY", proxy)
            .env("REQUESTS_CA_BUNDLE", t.ca_cert());
        cmd
    });
    check_intercepted(&open);
}

/// A Java client (`HttpsURLConnection`, single-file `java Client.java`): prints the body.
const JAVA_CLIENT: &str = r#"
import java.io.*;
import java.net.*;

public class HttpsClient {
    public static void main(String[] args) throws Exception {
        HttpURLConnection c = (HttpURLConnection) new URL(args[0]).openConnection();
        c.setConnectTimeout(20000);
        c.setReadTimeout(20000);
        byte[] body = c.getInputStream().readAllBytes();
        System.out.write(body);
        System.out.flush();
    }
}
"#;

/// A Java client trusting capagent's CA through a keystore made with `keytool
/// -importcert` (`-Djavax.net.ssl.trustStore`), through `proxy http --tls`
/// (`-Dhttps.proxyHost`).
#[test]
fn java_keystore() {
    let open = client_through_http_proxy("java", |t, proxy, url| {
        let store = t.dir.join("capagent.p12").display().to_string();
        let mut keytool = Command::new("keytool");
        keytool
            .args(["-importcert", "-noprompt", "-alias", "capagent", "-file"])
            .arg(t.ca_cert())
            .args([
                "-keystore",
                &store,
                "-storetype",
                "PKCS12",
                "-storepass",
                "changeit",
            ]);
        run_output("keytool", keytool, Duration::from_secs(60));
        let src = t.dir.write("HttpsClient.java", JAVA_CLIENT);
        let addr: std::net::SocketAddr = proxy.trim_start_matches("http://").parse().unwrap();
        let mut cmd = Command::new("java");
        cmd.arg(format!("-Djavax.net.ssl.trustStore={store}"))
            .arg("-Djavax.net.ssl.trustStorePassword=changeit")
            .arg("-Djavax.net.ssl.trustStoreType=PKCS12")
            .arg(format!("-Dhttps.proxyHost={}", addr.ip()))
            .arg(format!("-Dhttps.proxyPort={}", addr.port()))
            // The JDK goes direct to localhost and 127.* (whatever else the list holds)
            // unless the list is empty; this test wants it through the proxy.
            .arg("-Dhttp.nonProxyHosts=")
            .arg(src)
            .arg(url);
        cmd
    });
    // The JDK sends no SNI for a name without a dot: capagent asked the server for the
    // CONNECT host.
    let tls = &open["tls"];
    assert_eq!(tls["error"], Value::Null, "{open}");
    assert_eq!(tls["client"]["sni"], Value::Null, "{open}");
    assert_eq!(tls["server"]["sni"], "localhost", "{open}");
    assert_eq!(tls["server_cert"], "CN=localhost", "{open}");
    for side in ["client", "server"] {
        assert_eq!(tls[side]["version"], "TLSv1.3", "{open}");
    }
}
