//! Integration tests of `--pcap-tls raw` (no root): curl trusting capagent's CA through
//! `proxy socks --tls --pcap-tls raw -w F` and `proxy http --tls --pcap-tls raw -w F`
//! (CONNECT) and `proxy reverse --tls --pcap-tls raw -w F` to a Python HTTPS server whose certificate a test CA signed. The pcapng holds
//! the real TLS bytes of both legs as two TCP streams (the client to the proxy, the proxy
//! to the server) and the secrets of both sessions in Decryption Secrets Blocks: tshark,
//! given no key file, decrypts the exact request and response on each leg; the same file
//! with its secrets discarded (`editcap --discard-all-secrets`) decrypts nothing. The JSON
//! records stay the plaintext, exactly as the server read and wrote it. With `--keylog K`
//! too, K holds the same lines as the pcapng's secrets blocks.
//!
//! Certificates and the CA directory are made at test time in temporary directories.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use capagent_testkit::mitm::raw::{
    check_raw, check_raw_legs, follow_tcp, follow_tls, http_by_stream, pcap_streams, sessions,
};
use capagent_testkit::mitm::{Https, Mitm, args, http_connect, localhost_url, socks};
use capagent_testkit::proxy::{curl, curl_status, http_response, http_server, open_of};
use capagent_testkit::{Certs, Exchange, TIMEOUT, tshark_r};
use serde_json::Value;

/// `--pcap-tls raw --upstream-ca CA` (after [`Mitm::start`]'s `--tls --ca-dir DIR/ca`).
fn raw_tls(certs: &Certs) -> [&str; 4] {
    ["--pcap-tls", "raw", "--upstream-ca", certs.ca_str()]
}

/// `capagent proxy reverse --listen 127.0.0.1:0 --to TARGET`.
fn reverse(target: &str) -> Vec<String> {
    args(&[
        "proxy",
        "reverse",
        "--listen",
        "127.0.0.1:0",
        "--to",
        target,
    ])
}

/// curl through `proxy socks --tls --pcap-tls raw`: both legs decrypt from the pcapng's own
/// secrets, two TLS 1.3 sessions' worth of them.
#[test]
fn socks_raw_tls() {
    let t = Mitm::new("raw-socks");
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let agent = t.start(socks(), &raw_tls(&certs));
    let proxy = agent.addr();
    let body = curl(&[
        "--cacert",
        &t.ca_cert(),
        "--socks5-hostname",
        &proxy.to_string(),
        &format!("https://localhost:{}/raw-socks", server.port),
    ]);
    assert_eq!(body, b"path /raw-socks\n");
    let ex = server.exchange();
    agent.stop();
    let evs = t.events();
    let open = open_of(
        &evs,
        "socks5 connect",
        &format!("localhost:{}", server.port),
    );
    let lines = check_raw(&t.rec, &t.dir, open, &ex, "/raw-socks", proxy, server.port);
    let s = sessions(&lines);
    assert_eq!(s.len(), 2, "two sessions: {s:?}");
    for labels in s.values() {
        assert_eq!(
            labels.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                "CLIENT_TRAFFIC_SECRET_0",
                "EXPORTER_SECRET",
                "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                "SERVER_TRAFFIC_SECRET_0",
            ]
        );
    }
}

/// curl through `proxy http --tls --pcap-tls raw --keylog K` (CONNECT): both legs decrypt
/// from the pcapng; K holds exactly the pcapng's secrets.
#[test]
fn http_connect_raw_tls_with_keylog() {
    let t = Mitm::new("raw-http");
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let keys = t.dir.join("capagent.keys").display().to_string();
    let extra = [&raw_tls(&certs)[..], &["--keylog", &keys]].concat();
    let agent = t.start(http_connect(server.port), &extra);
    let proxy = agent.addr();
    let body = curl(&[
        "--cacert",
        &t.ca_cert(),
        "-x",
        &format!("http://{proxy}"),
        &format!("https://localhost:{}/raw-http", server.port),
    ]);
    assert_eq!(body, b"path /raw-http\n");
    let ex = server.exchange();
    agent.stop();
    let evs = t.events();
    let open = open_of(&evs, "http connect", &format!("localhost:{}", server.port));
    let lines = check_raw(&t.rec, &t.dir, open, &ex, "/raw-http", proxy, server.port);
    let file: BTreeSet<String> = std::fs::read_to_string(&keys)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(file, lines, "--keylog holds the pcapng's secrets");
    assert_eq!(sessions(&lines).len(), 2);
}

/// An untrusted upstream under `--pcap-tls raw` (no `--upstream-ca`): the failed
/// interception is in pcapng as its two legs, the client's ending with capagent's
/// handshake_failure alert, exactly; the record says why.
#[test]
fn failed_interception_shows_both_legs() {
    let t = Mitm::new("raw-fail");
    let certs = Certs::localhost();
    let server = Https::start(&t.dir, &certs);
    let agent = t.start(socks(), &["--pcap-tls", "raw"]);
    let proxy = agent.addr();
    let out = curl_status(&[
        "--cacert",
        &t.ca_cert(),
        "--socks5-hostname",
        &proxy.to_string(),
        &format!("https://localhost:{}/nope", server.port),
    ]);
    assert!(!out.status.success());
    agent.stop();
    let evs = t.events();
    let open = open_of(
        &evs,
        "socks5 connect",
        &format!("localhost:{}", server.port),
    );
    let error = open["tls"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("UnknownIssuer"), "{open}");
    let st = pcap_streams(&t.rec.pcap);
    assert_eq!(st.len(), 2, "{st:?}");
    let client_leg = st.iter().find(|s| s.2 == proxy).expect("client leg");
    let (up, down) = follow_tcp(&t.rec.pcap, client_leg.0);
    assert_eq!(&up[..3], [0x16, 0x03, 0x01], "the ClientHello");
    assert_eq!(
        down,
        [21, 3, 3, 0, 2, 2, 40],
        "a handshake_failure alert, only"
    );
    let server_leg = st.iter().find(|s| s.2.port() == server.port).unwrap();
    let (up, down) = follow_tcp(&t.rec.pcap, server_leg.0);
    assert_eq!(&up[..3], [0x16, 0x03, 0x01], "capagent's ClientHello");
    assert_eq!(down[0], 0x16, "the server's handshake");
}

/// Plain HTTP through a `--tls --pcap-tls raw` proxy: recorded as without `--tls`, one
/// stream from the client to the target with the exact bytes.
#[test]
fn plain_traffic_is_recorded_as_before() {
    let t = Mitm::new("raw-plain");
    let certs = Certs::localhost();
    let response = http_response(b"plain body");
    let (target, requests) = http_server(response.clone(), 1);
    let agent = t.start(socks(), &raw_tls(&certs));
    let body = curl(&[
        "--socks5",
        &agent.addr().to_string(),
        &format!("http://{target}/plain"),
    ]);
    assert_eq!(body, b"plain body");
    let request = requests.recv_timeout(TIMEOUT).unwrap();
    agent.stop();
    let st = t.rec.streams();
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0].2, target);
    assert_eq!(t.rec.follow(st[0].0), (request, response));
    let evs = t.events();
    let open = open_of(&evs, "socks5 connect", &target.to_string());
    assert!(open.get("tls").is_none_or(Value::is_null), "{open}");
}

/// curl through `proxy reverse --tls --pcap-tls raw`: the reverse proxy terminates the
/// client's TLS itself, yet pcapng has both legs' real TLS, each decrypting from the file's
/// own secrets to the exact request and response.
#[test]
fn reverse_raw_tls() {
    let t = Mitm::new("raw-reverse");
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let target = format!("127.0.0.1:{}", server.port);
    let agent = t.start(reverse(&target), &raw_tls(&certs));
    let proxy = agent.addr();
    let [resolve, to, url] = localhost_url(proxy.port(), "/raw-reverse");
    let body = curl(&["--cacert", &t.ca_cert(), &resolve, &to, &url]);
    assert_eq!(body, b"path /raw-reverse\n");
    let ex = server.exchange();
    agent.stop();
    let evs = t.events();
    let open = open_of(&evs, "reverse", &target);
    // The client gets the response without the server's hop-by-hop `Connection: close`.
    let to_client =
        String::from_utf8(ex.response.clone())
            .unwrap()
            .replacen("Connection: close\r\n", "", 1);
    assert_ne!(to_client.as_bytes(), ex.response);
    let client_ex = Exchange {
        request: ex.request.clone(),
        response: to_client.into_bytes(),
    };
    let lines = check_raw_legs(
        &t.rec,
        &t.dir,
        open,
        &ex,
        &client_ex,
        "/raw-reverse",
        proxy,
        server.port,
    );
    assert_eq!(sessions(&lines).len(), 2, "two sessions");
}

/// `proxy reverse --tls --pcap-tls raw` with one client connection served by two server
/// connections (the server closes after each response, the client keeps its connection):
/// the client leg is one stream from its ClientHello to its end, holding both exchanges;
/// each server connection is a stream of its own; all decrypt from the file's secrets.
#[test]
fn reverse_raw_tls_client_leg_spans_server_connections() {
    let t = Mitm::new("raw-reverse2");
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let target = format!("127.0.0.1:{}", server.port);
    let agent = t.start(reverse(&target), &raw_tls(&certs));
    let proxy = agent.addr();
    let [resolve, to, url_a] = localhost_url(proxy.port(), "/a");
    let [_, _, url_b] = localhost_url(proxy.port(), "/b");
    let out = curl_status(&[
        "-v",
        "--cacert",
        &t.ca_cert(),
        &resolve,
        &to,
        &url_a,
        &url_b,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(out.stdout, b"path /a\npath /b\n");
    assert!(
        stderr.contains("Re-using existing connection") || stderr.contains("Reusing existing"),
        "{stderr}"
    );
    let (ex_a, ex_b) = (server.exchange(), server.exchange());
    agent.stop();
    let pcap = &t.rec.pcap;
    let st = pcap_streams(pcap);
    assert_eq!(st.len(), 3, "{st:?}");
    let client_leg = st.iter().find(|s| s.2 == proxy).expect("client leg");
    let server_addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    let mut server_legs: Vec<_> = st.iter().filter(|s| s.2 == server_addr).collect();
    server_legs.sort();
    assert_eq!(server_legs.len(), 2, "{st:?}");
    let to_client = |ex: &Exchange| {
        String::from_utf8(ex.response.clone())
            .unwrap()
            .replacen("Connection: close\r\n", "", 1)
            .into_bytes()
    };
    assert_eq!(
        follow_tls(pcap, client_leg.0, client_leg.1),
        (
            [ex_a.request.clone(), ex_b.request.clone()].concat(),
            [to_client(&ex_a), to_client(&ex_b)].concat()
        ),
        "client leg decrypted"
    );
    for (s, ex) in server_legs.iter().zip([&ex_a, &ex_b]) {
        assert_eq!(
            follow_tls(pcap, s.0, s.1),
            (ex.request.clone(), ex.response.clone()),
            "decrypted {s:?}"
        );
    }
    let mut want = vec![
        (client_leg.0, "GET /a".to_string()),
        (client_leg.0, "GET /b".to_string()),
        (client_leg.0, "200".to_string()),
        (client_leg.0, "200".to_string()),
        (server_legs[0].0, "GET /a".to_string()),
        (server_legs[0].0, "200".to_string()),
        (server_legs[1].0, "GET /b".to_string()),
        (server_legs[1].0, "200".to_string()),
    ];
    want.sort();
    let mut got = http_by_stream(pcap);
    got.sort();
    assert_eq!(got, want);
    let flagged = tshark_r(pcap, &["-Y", "tcp.analysis.flags"]);
    assert_eq!(flagged, "", "TCP analysis flags");
}
