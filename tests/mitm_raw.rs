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
use std::path::PathBuf;
use std::process::Command;

use capagent_testkit::mitm::Https;
use capagent_testkit::proxy::{
    Agent, Rec, curl, curl_status, http_response, http_server, open_of, recorded,
};
use capagent_testkit::{Certs, Ev as _, Exchange, TIMEOUT, TempDir, follow_raw, tshark_r};
use pcap_file::pcapng::{Block, PcapNgReader};
use serde_json::Value;

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ca_dir(dir: &TempDir) -> PathBuf {
    dir.join("ca")
}

/// `--tls --pcap-tls raw --ca-dir DIR/ca --upstream-ca CA`.
fn raw_tls_args(dir: &TempDir, certs: &Certs) -> Vec<String> {
    args(&[
        "--tls",
        "--pcap-tls",
        "raw",
        "--ca-dir",
        &ca_dir(dir).display().to_string(),
        "--upstream-ca",
        certs.ca_str(),
    ])
}

/// capagent's CA certificate, made by the proxy when it started.
fn ca_cert(dir: &TempDir) -> String {
    ca_dir(dir).join("ca.crt").display().to_string()
}

/// The TCP streams of `pcap` from their SYNs: (stream index, client, server).
fn streams(pcap: &str) -> Vec<(u32, SocketAddr, SocketAddr)> {
    Rec {
        jsonl: String::new(),
        pcap: pcap.to_string(),
    }
    .streams()
}

/// The HTTP tshark reads in `pcap`: (TCP stream, request method and URI, or response
/// code), in the file's order.
fn http(pcap: &str) -> Vec<(u32, String)> {
    let out = tshark_r(
        pcap,
        &[
            "-Y",
            "http",
            "-T",
            "fields",
            "-e",
            "tcp.stream",
            "-e",
            "http.request.method",
            "-e",
            "http.request.uri",
            "-e",
            "http.response.code",
        ],
    );
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let what: Vec<&str> = f[1..].iter().copied().filter(|s| !s.is_empty()).collect();
            (f[0].parse().unwrap(), what.join(" "))
        })
        .collect()
}

/// The decrypted bytes of TCP stream `stream` (`client` its connecting side) both ways
/// (`follow,tls,raw`): (from its client, from its server). tshark 4.0 may name either end
/// "Node 0" (the side of the lines without a tab): the one it names is looked at.
fn follow_tls(pcap: &str, stream: u32, client: SocketAddr) -> (Vec<u8>, Vec<u8>) {
    let out = tshark_r(pcap, &["-qz", &format!("follow,tls,raw,{stream}")]);
    let (node0, node1) = follow_raw(&out);
    let first = out
        .lines()
        .find_map(|l| l.strip_prefix("Node 0: "))
        .unwrap_or_default();
    if first == client.to_string() {
        (node0, node1)
    } else {
        (node1, node0)
    }
}

/// The TCP bytes of stream `stream` both ways (`follow,tcp,raw`).
fn follow_tcp(pcap: &str, stream: u32) -> (Vec<u8>, Vec<u8>) {
    follow_raw(&tshark_r(
        pcap,
        &["-qz", &format!("follow,tcp,raw,{stream}")],
    ))
}

/// The key log lines of the Decryption Secrets Blocks of `pcap`, the index of the first
/// DSB among the file's blocks and that of the first packet with a TCP payload.
fn secrets(pcap: &str) -> (BTreeSet<String>, usize, usize) {
    let bytes = std::fs::read(pcap).unwrap();
    let mut r = PcapNgReader::new(&bytes[..]).unwrap();
    let (mut lines, mut first_dsb, mut first_data) = (BTreeSet::new(), None, None);
    let mut i = 0;
    while let Some(block) = r.next_block() {
        match block.unwrap() {
            Block::Unknown(u) if u.type_ == 0x0000_000A => {
                first_dsb.get_or_insert(i);
                // Secrets type "TLSK" (4), length (4), then the text (capagent writes
                // big-endian pcapng).
                let body = &u.value;
                assert_eq!(&body[0..4], b"TLSK");
                let len = u32::from_be_bytes(body[4..8].try_into().unwrap()) as usize;
                let text = String::from_utf8(body[8..8 + len].to_vec()).unwrap();
                lines.extend(text.lines().map(str::to_string));
            }
            // IPv4 (20) + TCP (20, no options): anything more is data.
            Block::EnhancedPacket(p) if p.data.len() > 40 => {
                first_data.get_or_insert(i);
            }
            _ => {}
        }
        i += 1;
    }
    (
        lines,
        first_dsb.expect("no DSB"),
        first_data.expect("no data"),
    )
}

/// What every raw test checks of one intercepted exchange (`client_leg`: the client's
/// address to the proxy's; `server_leg`'s server: the HTTPS server): the JSON records are
/// the exact plaintext, the pcapng has the two legs as two TCP streams of real TLS whose
/// decryption by tshark (from the file's secrets alone) is the exact request and response
/// on each, and nothing decrypts without the secrets. Returns the secrets' lines.
fn check_raw(
    rec: &Rec,
    dir: &TempDir,
    open: &Value,
    ex: &Exchange,
    path: &str,
    proxy: SocketAddr,
    server_port: u16,
) -> BTreeSet<String> {
    check_raw_legs(rec, dir, open, ex, ex, path, proxy, server_port)
}

/// [`check_raw`] of a proxy that speaks HTTP itself (`proxy reverse`): the client leg
/// decrypts to `client_ex`, the exchange as the client sent and got it.
#[allow(clippy::too_many_arguments)]
fn check_raw_legs(
    rec: &Rec,
    dir: &TempDir,
    open: &Value,
    ex: &Exchange,
    client_ex: &Exchange,
    path: &str,
    proxy: SocketAddr,
    server_port: u16,
) -> BTreeSet<String> {
    let evs = rec.events();
    let fd = open.fd();
    assert_eq!(open["tls"]["error"], Value::Null, "{open}");
    assert_eq!(
        recorded(&evs, fd, "send"),
        ex.request,
        "request as recorded"
    );
    assert_eq!(
        recorded(&evs, fd, "recv"),
        ex.response,
        "response as recorded"
    );
    for d in evs
        .iter()
        .filter(|e| e.ty() == "data" && e.fd() == fd && e["total"] != 0)
    {
        assert_eq!(d["tls"], serde_json::json!({"plaintext": true}), "{d}");
    }
    // Two streams: the client to the proxy, the proxy to the server.
    let st = streams(&rec.pcap);
    assert_eq!(st.len(), 2, "{st:?}");
    let client_leg = st.iter().find(|s| s.2 == proxy).expect("client leg");
    let server_leg = st
        .iter()
        .find(|s| s.2 == SocketAddr::from(([127, 0, 0, 1], server_port)))
        .expect("server leg");
    assert_eq!(client_leg.1.ip(), proxy.ip());
    assert_eq!(server_leg.1.ip(), proxy.ip());
    assert_ne!(server_leg.1.port(), proxy.port());
    // The real TLS bytes: records from the ClientHello on, no plaintext in them.
    for s in [client_leg, server_leg] {
        let (up, down) = follow_tcp(&rec.pcap, s.0);
        assert_eq!(&up[..3], [0x16, 0x03, 0x01], "a ClientHello first: {s:?}");
        assert_eq!(down[0], 0x16, "a ServerHello first: {s:?}");
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(
            !has(&up, path.as_bytes()),
            "plaintext in the raw bytes: {s:?}"
        );
        assert!(
            !has(&down, b"HTTP/1.1 200"),
            "plaintext in the raw bytes: {s:?}"
        );
    }
    // Consistent sequence numbers: no lost segment, retransmission or the like.
    let flagged = tshark_r(&rec.pcap, &["-Y", "tcp.analysis.flags"]);
    assert_eq!(flagged, "", "TCP analysis flags");
    // tshark decrypts both legs from the file's secrets, to the exact bytes.
    let get = format!("GET {path}");
    let mut want = vec![
        (client_leg.0, get.clone()),
        (client_leg.0, "200".to_string()),
        (server_leg.0, get),
        (server_leg.0, "200".to_string()),
    ];
    want.sort();
    let mut got = http(&rec.pcap);
    got.sort();
    assert_eq!(got, want);
    for (s, ex) in [(client_leg, client_ex), (server_leg, ex)] {
        assert_eq!(
            follow_tls(&rec.pcap, s.0, s.1),
            (ex.request.clone(), ex.response.clone()),
            "decrypted {s:?}"
        );
    }
    // The secrets come before the first data; without them nothing decrypts.
    let (lines, first_dsb, first_data) = secrets(&rec.pcap);
    assert!(first_dsb < first_data, "DSB {first_dsb}, data {first_data}");
    let bare = dir.join("no-secrets.pcapng").display().to_string();
    let st = Command::new("editcap")
        .args(["--discard-all-secrets", &rec.pcap, &bare])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(http(&bare), [], "decrypted without the secrets");
    assert_eq!(
        follow_tls(&bare, client_leg.0, client_leg.1),
        (vec![], vec![])
    );
    assert_eq!(streams(&bare).len(), 2);
    lines
}

/// The client randoms of key log lines, each with its set of labels.
fn sessions(lines: &BTreeSet<String>) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut m: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for l in lines {
        let w: Vec<&str> = l.split(' ').collect();
        assert_eq!(w.len(), 3, "{l:?}");
        m.entry(w[1].to_string())
            .or_default()
            .insert(w[0].to_string());
    }
    m
}

/// curl through `proxy socks --tls --pcap-tls raw`: both legs decrypt from the pcapng's own
/// secrets, two TLS 1.3 sessions' worth of them.
#[test]
fn socks_raw_tls() {
    let dir = TempDir::new("mitm-raw-socks");
    let certs = Certs::localhost();
    let mut server = Https::start(&dir, &certs);
    let rec = Rec::new(&dir, "socks");
    let mut a = args(&["proxy", "socks", "--listen", "127.0.0.1:0"]);
    a.extend(raw_tls_args(&dir, &certs));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let proxy = agent.addr();
    let body = curl(&[
        "--cacert",
        &ca_cert(&dir),
        "--socks5-hostname",
        &proxy.to_string(),
        &format!("https://localhost:{}/raw-socks", server.port),
    ]);
    assert_eq!(body, b"path /raw-socks\n");
    let ex = server.exchange();
    agent.stop();
    let evs = rec.events();
    let open = open_of(
        &evs,
        "socks5 connect",
        &format!("localhost:{}", server.port),
    );
    let lines = check_raw(&rec, &dir, open, &ex, "/raw-socks", proxy, server.port);
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
    let dir = TempDir::new("mitm-raw-http");
    let certs = Certs::localhost();
    let mut server = Https::start(&dir, &certs);
    let rec = Rec::new(&dir, "http");
    let keys = dir.join("capagent.keys");
    let mut a = args(&[
        "proxy",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--connect-ports",
        &server.port.to_string(),
    ]);
    a.extend(raw_tls_args(&dir, &certs));
    a.extend(args(&["--keylog", &keys.display().to_string()]));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let proxy = agent.addr();
    let body = curl(&[
        "--cacert",
        &ca_cert(&dir),
        "-x",
        &format!("http://{proxy}"),
        &format!("https://localhost:{}/raw-http", server.port),
    ]);
    assert_eq!(body, b"path /raw-http\n");
    let ex = server.exchange();
    agent.stop();
    let evs = rec.events();
    let open = open_of(&evs, "http connect", &format!("localhost:{}", server.port));
    let lines = check_raw(&rec, &dir, open, &ex, "/raw-http", proxy, server.port);
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
    let dir = TempDir::new("mitm-raw-fail");
    let certs = Certs::localhost();
    let server = Https::start(&dir, &certs);
    let rec = Rec::new(&dir, "fail");
    let mut a = args(&["proxy", "socks", "--listen", "127.0.0.1:0"]);
    a.extend(args(&[
        "--tls",
        "--pcap-tls",
        "raw",
        "--ca-dir",
        &ca_dir(&dir).display().to_string(),
    ]));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let proxy = agent.addr();
    let out = curl_status(&[
        "--cacert",
        &ca_cert(&dir),
        "--socks5-hostname",
        &proxy.to_string(),
        &format!("https://localhost:{}/nope", server.port),
    ]);
    assert!(!out.status.success());
    agent.stop();
    let evs = rec.events();
    let open = open_of(
        &evs,
        "socks5 connect",
        &format!("localhost:{}", server.port),
    );
    let error = open["tls"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("UnknownIssuer"), "{open}");
    let st = streams(&rec.pcap);
    assert_eq!(st.len(), 2, "{st:?}");
    let client_leg = st.iter().find(|s| s.2 == proxy).expect("client leg");
    let (up, down) = follow_tcp(&rec.pcap, client_leg.0);
    assert_eq!(&up[..3], [0x16, 0x03, 0x01], "the ClientHello");
    assert_eq!(
        down,
        [21, 3, 3, 0, 2, 2, 40],
        "a handshake_failure alert, only"
    );
    let server_leg = st.iter().find(|s| s.2.port() == server.port).unwrap();
    let (up, down) = follow_tcp(&rec.pcap, server_leg.0);
    assert_eq!(&up[..3], [0x16, 0x03, 0x01], "capagent's ClientHello");
    assert_eq!(down[0], 0x16, "the server's handshake");
}

/// Plain HTTP through a `--tls --pcap-tls raw` proxy: recorded as without `--tls`, one
/// stream from the client to the target with the exact bytes.
#[test]
fn plain_traffic_is_recorded_as_before() {
    let dir = TempDir::new("mitm-raw-plain");
    let certs = Certs::localhost();
    let response = http_response(b"plain body");
    let (target, requests) = http_server(response.clone(), 1);
    let rec = Rec::new(&dir, "plain");
    let mut a = args(&["proxy", "socks", "--listen", "127.0.0.1:0"]);
    a.extend(raw_tls_args(&dir, &certs));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let body = curl(&[
        "--socks5",
        &agent.addr().to_string(),
        &format!("http://{target}/plain"),
    ]);
    assert_eq!(body, b"plain body");
    let request = requests.recv_timeout(TIMEOUT).unwrap();
    agent.stop();
    let st = rec.streams();
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0].2, target);
    assert_eq!(rec.follow(st[0].0), (request, response));
    let evs = rec.events();
    let open = open_of(&evs, "socks5 connect", &target.to_string());
    assert!(open.get("tls").is_none_or(Value::is_null), "{open}");
}

/// curl through `proxy reverse --tls --pcap-tls raw`: the reverse proxy terminates the
/// client's TLS itself, yet pcapng has both legs' real TLS, each decrypting from the file's
/// own secrets to the exact request and response.
#[test]
fn reverse_raw_tls() {
    let dir = TempDir::new("mitm-raw-reverse");
    let certs = Certs::localhost();
    let mut server = Https::start(&dir, &certs);
    let rec = Rec::new(&dir, "reverse");
    let target = format!("127.0.0.1:{}", server.port);
    let mut a = args(&[
        "proxy",
        "reverse",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &target,
    ]);
    a.extend(raw_tls_args(&dir, &certs));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let proxy = agent.addr();
    let port = proxy.port();
    let body = curl(&[
        "--cacert",
        &ca_cert(&dir),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/raw-reverse"),
    ]);
    assert_eq!(body, b"path /raw-reverse\n");
    let ex = server.exchange();
    agent.stop();
    let evs = rec.events();
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
        &rec,
        &dir,
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
    let dir = TempDir::new("mitm-raw-reverse2");
    let certs = Certs::localhost();
    let mut server = Https::start(&dir, &certs);
    let rec = Rec::new(&dir, "reverse2");
    let target = format!("127.0.0.1:{}", server.port);
    let mut a = args(&[
        "proxy",
        "reverse",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &target,
    ]);
    a.extend(raw_tls_args(&dir, &certs));
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let proxy = agent.addr();
    let port = proxy.port();
    let out = curl_status(&[
        "-v",
        "--cacert",
        &ca_cert(&dir),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/a"),
        &format!("https://localhost:{port}/b"),
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
    let st = streams(&rec.pcap);
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
        follow_tls(&rec.pcap, client_leg.0, client_leg.1),
        (
            [ex_a.request.clone(), ex_b.request.clone()].concat(),
            [to_client(&ex_a), to_client(&ex_b)].concat()
        ),
        "client leg decrypted"
    );
    for (s, ex) in server_legs.iter().zip([&ex_a, &ex_b]) {
        assert_eq!(
            follow_tls(&rec.pcap, s.0, s.1),
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
    let mut got = http(&rec.pcap);
    got.sort();
    assert_eq!(got, want);
    let flagged = tshark_r(&rec.pcap, &["-Y", "tcp.analysis.flags"]);
    assert_eq!(flagged, "", "TCP analysis flags");
}
