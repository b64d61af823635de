//! Integration tests of the HTTP rules (`--replace-http`, `--set-header`, `--drop-header`,
//! `--anticomp`, `--decode-bodies`; docs/rewrite.md) with curl and scripted servers on
//! loopback, no root: through `proxy http` (absolute-URI requests), `proxy reverse` and
//! `proxy socks` (a relayed stream), the server gets the changed request byte for byte, curl
//! the changed response with valid framing, and an `edit` record says what changed.

use std::net::SocketAddr;

use capagent::rewrite::codec::{Coding, decode, encode};
use capagent_testkit::proxy::{Agent, Rec, curl, http_server, open_of, recorded};
use capagent_testkit::{Ev as _, TIMEOUT, TempDir};
use serde_json::Value;

/// `capagent proxy KIND ...` recording into `rec`.
fn agent(rec: &Rec, a: &[&str]) -> Agent {
    Agent::recording(rec, a)
}

/// The `edit` records: (dir, rule, before, after), as text.
fn edits(evs: &[Value]) -> Vec<(String, String, String, String)> {
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    capagent_testkit::edits(evs)
        .into_iter()
        .map(|(dir, rule, _, before, after)| (dir, rule, text(before), text(after)))
        .collect()
}

/// The `decoded` records (`--decode-bodies`): (dir, encoding, len, truncated, decoded
/// bytes, from `payload_b64`).
fn decodeds(evs: &[Value]) -> Vec<(String, String, u64, bool, Vec<u8>)> {
    use base64::Engine as _;
    evs.iter()
        .filter(|e| e.ty() == "decoded")
        .map(|e| {
            let b = base64::engine::general_purpose::STANDARD
                .decode(e["payload_b64"].as_str().unwrap())
                .unwrap();
            // (`payload`: the escaped text, as data records have it.)
            assert!(e["payload"].is_string(), "{e}");
            assert!(e["offset"].as_u64().is_some(), "{e}");
            (
                e["dir"].as_str().unwrap().to_string(),
                e["encoding"].as_str().unwrap().to_string(),
                e["len"].as_u64().unwrap(),
                e["truncated"].as_bool().unwrap(),
                b,
            )
        })
        .collect()
}

fn e(dir: &str, rule: &str, before: &str, after: &str) -> (String, String, String, String) {
    (dir.into(), rule.into(), before.into(), after.into())
}

/// Splits curl's `-i` output into the head's lines and the body.
fn split_response(out: &[u8]) -> (Vec<String>, Vec<u8>) {
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..end])
        .lines()
        .map(str::to_string)
        .collect();
    (head, out[end + 4..].to_vec())
}

/// `proxy http`: a request field set and one dropped (the server sees exactly that), a
/// response field set (curl sees it); one edit record each.
#[test]
fn headers_set_and_dropped() {
    let dir = TempDir::new("rwh-headers");
    let rec = Rec::new(&dir, "headers");
    let (web, requests) = http_server(
        b"HTTP/1.1 200 OK\r\nServer: web/1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi\n"
            .to_vec(),
        1,
    );
    let proxy = agent(
        &rec,
        &[
            "proxy",
            "http",
            "--listen",
            "127.0.0.1:0",
            "--set-header",
            "c2s:X-Test: yes",
            "--drop-header",
            "c2s:User-Agent",
            "--set-header",
            "s2c:Server: capagent",
        ],
    );
    let out = curl(&[
        "-i",
        "-x",
        &format!("http://{}", proxy.addr()),
        &format!("http://{web}/a"),
    ]);
    let (head, body) = split_response(&out);
    assert_eq!(body, b"hi\n");
    assert!(head.contains(&"Server: capagent".to_string()), "{head:?}");
    assert!(!head.iter().any(|l| l.contains("web/1")), "{head:?}");
    let got = requests.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(
        String::from_utf8(got).unwrap(),
        format!("GET /a HTTP/1.1\r\nHost: {web}\r\nAccept: */*\r\nX-Test: yes\r\n\r\n")
    );
    proxy.stop();
    let evs = rec.events();
    let ua = edits(&evs)
        .iter()
        .find(|x| x.1 == "--drop-header c2s:User-Agent")
        .unwrap()
        .2
        .clone();
    assert!(ua.starts_with("User-Agent: curl/"), "{ua}");
    assert_eq!(
        edits(&evs),
        [
            e("send", "--drop-header c2s:User-Agent", &ua, ""),
            e("send", "--set-header c2s:X-Test: yes", "", "X-Test: yes"),
            e(
                "recv",
                "--set-header s2c:Server: capagent",
                "Server: web/1",
                "Server: capagent"
            ),
        ]
    );
    // The records hold the request as sent.
    let o = open_of(&evs, "http", &web.to_string());
    assert!(
        recorded(&evs, o.fd(), "send").ends_with(b"Accept: */*\r\nX-Test: yes\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&recorded(&evs, o.fd(), "send"))
    );
}

/// `proxy http`: a chunked response body changed to a different length: curl gets the new
/// body whole (the chunk sizes are right).
#[test]
fn chunked_body_replaced() {
    let dir = TempDir::new("rwh-chunked");
    let rec = Rec::new(&dir, "chunked");
    let (web, requests) = http_server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          6\r\nhello \r\n4\r\nBoo!\r\n7\r\n world\n\r\n0\r\n\r\n"
            .to_vec(),
        1,
    );
    let rule = "s2c:body:/Boo!/Yay, it works!/";
    let proxy = agent(
        &rec,
        &[
            "proxy",
            "http",
            "--listen",
            "127.0.0.1:0",
            "--replace-http",
            rule,
        ],
    );
    let out = curl(&[
        "-i",
        "--raw",
        "-x",
        &format!("http://{}", proxy.addr()),
        &format!("http://{web}/"),
    ]);
    let (head, body) = split_response(&out);
    assert!(
        head.contains(&"Transfer-Encoding: chunked".to_string()),
        "{head:?}"
    );
    // One chunk with the whole changed body, then the last chunk.
    assert_eq!(body, b"1b\r\nhello Yay, it works! world\n\r\n0\r\n\r\n");
    requests.recv_timeout(TIMEOUT).unwrap();
    proxy.stop();
    let evs = rec.events();
    assert_eq!(
        edits(&evs),
        [e(
            "recv",
            &format!("--replace-http {rule}"),
            "Boo!",
            "Yay, it works!"
        )]
    );
    let o = open_of(&evs, "http", &web.to_string());
    assert!(
        recorded(&evs, o.fd(), "recv")
            .ends_with(b"1b\r\nhello Yay, it works! world\n\r\n0\r\n\r\n")
    );
}

/// `proxy socks` (a relayed stream): a gzip response body decoded, changed, encoded again
/// with its Content-Length fixed; `curl --compressed` decodes the changed body.
#[test]
fn gzip_body_replaced() {
    let dir = TempDir::new("rwh-gzip");
    let rec = Rec::new(&dir, "gzip");
    let gz = encode(&[Coding::Gzip], b"<p>Boo! twice: Boo!</p>\n").unwrap();
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    resp.extend_from_slice(&gz);
    let (web, requests) = http_server(resp, 2);
    let rule = "s2c:body:/Boo!/Yay!!!/";
    let proxy = agent(
        &rec,
        &[
            "proxy",
            "socks",
            "--listen",
            "127.0.0.1:0",
            "--replace-http",
            rule,
            "--decode-bodies",
        ],
    );
    let socks = proxy.addr().to_string();
    let url = format!("http://{web}/");
    let got = curl(&["--compressed", "--socks5", &socks, &url]);
    assert_eq!(got, b"<p>Yay!!! twice: Yay!!!</p>\n");
    // Without --compressed: the body as sent, gzip, its length right.
    let out = curl(&["-i", "--socks5", &socks, &url]);
    let (head, body) = split_response(&out);
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head:?}"
    );
    assert!(
        head.contains(&"Content-Encoding: gzip".to_string()),
        "{head:?}"
    );
    assert_eq!(
        decode(&[Coding::Gzip], &body, 1000).unwrap(),
        b"<p>Yay!!! twice: Yay!!!</p>\n"
    );
    requests.recv_timeout(TIMEOUT).unwrap();
    requests.recv_timeout(TIMEOUT).unwrap();
    proxy.stop();
    let evs = rec.events();
    let rule = format!("--replace-http {rule}");
    let decoded = b"<p>Boo! twice: Boo!</p>\n";
    let one = [
        e("recv", &rule, "Boo!", "Yay!!!"),
        e("recv", &rule, "Boo!", "Yay!!!"),
    ];
    let all = edits(&evs);
    // Each connection: the length, the two replacements.
    assert_eq!(all.len(), 6, "{all:?}");
    for conn in all.chunks(3) {
        assert_eq!(conn[0].1, rule);
        assert!(conn[0].2.starts_with("Content-Length: "), "{conn:?}");
        assert_eq!(conn[1..], one);
    }
    // And a `decoded` record each: the body as the server sent it, decoded.
    let body = (
        "recv".to_string(),
        "gzip".to_string(),
        24,
        false,
        decoded.to_vec(),
    );
    assert_eq!(decodeds(&evs), [body.clone(), body]);
    // pcapng: the response as sent, the decoded body in the packet's comment.
    let streams = rec.streams();
    assert_eq!(streams.len(), 2, "{streams:?}");
    let (_, down) = rec.follow(streams[0].0);
    let (_, body) = split_response(&down);
    assert_eq!(
        decode(&[Coding::Gzip], &body, 1000).unwrap(),
        b"<p>Yay!!! twice: Yay!!!</p>\n"
    );
    let comments = rec.comments();
    assert!(
        comments.contains(", 24 bytes: <p>Boo! twice: Boo!</p>\\n")
            && comments.contains("decoded by capagent (--decode-bodies): gzip body at "),
        "{comments}"
    );
}

/// `proxy socks --decode-bodies --decode-bodies-max 40`: a br body and a zstd body, nothing
/// changed (curl gets the bytes the servers sent); each a `decoded` record with the exact
/// decoded bytes, the zstd one over the cap cut at 40 bytes and marked truncated.
#[test]
fn decoded_br_and_zstd_bodies() {
    let dir = TempDir::new("rwh-decoded");
    let rec = Rec::new(&dir, "decoded");
    let response = |coding: Coding, name: &str, text: &[u8]| {
        let body = encode(&[coding], text).unwrap();
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: {name}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        r
    };
    let br_text = b"a brotli body, 32 bytes of text.";
    let zstd_text: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
    let (br_resp, zstd_resp) = (
        response(Coding::Br, "br", br_text),
        response(Coding::Zstd, "zstd", &zstd_text),
    );
    let (br_web, br_reqs) = http_server(br_resp.clone(), 1);
    let (zstd_web, zstd_reqs) = http_server(zstd_resp.clone(), 1);
    let proxy = agent(
        &rec,
        &[
            "proxy",
            "socks",
            "--listen",
            "127.0.0.1:0",
            "--decode-bodies",
            "--decode-bodies-max",
            "40",
        ],
    );
    let socks = proxy.addr().to_string();
    for (web, resp) in [(br_web, &br_resp), (zstd_web, &zstd_resp)] {
        let out = curl(&["-i", "--socks5", &socks, &format!("http://{web}/")]);
        assert_eq!(&out, resp);
    }
    br_reqs.recv_timeout(TIMEOUT).unwrap();
    zstd_reqs.recv_timeout(TIMEOUT).unwrap();
    proxy.stop();
    let evs = rec.events();
    assert!(edits(&evs).is_empty(), "nothing was changed");
    assert_eq!(
        decodeds(&evs),
        [
            ("recv".into(), "br".into(), 32, false, br_text.to_vec()),
            (
                "recv".into(),
                "zstd".into(),
                40,
                true,
                zstd_text[..40].to_vec()
            ),
        ]
    );
}

/// `proxy reverse --anticomp`: curl --compressed asks for gzip, br...; the server gets no
/// Accept-Encoding and answers identity, which curl takes.
#[test]
fn anticomp_seen_by_the_server() {
    let dir = TempDir::new("rwh-anticomp");
    let rec = Rec::new(&dir, "anticomp");
    let (web, requests) = http_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nplain\n".to_vec(),
        1,
    );
    let proxy = agent(
        &rec,
        &[
            "proxy",
            "reverse",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &web.to_string(),
            "--anticomp",
        ],
    );
    let url = format!("http://{}/x", proxy.addr());
    let got = curl(&["--compressed", "-A", "t/1", &url]);
    assert_eq!(got, b"plain\n");
    let req = String::from_utf8(requests.recv_timeout(TIMEOUT).unwrap()).unwrap();
    assert!(
        !req.to_ascii_lowercase().contains("accept-encoding"),
        "{req}"
    );
    assert!(req.starts_with("GET /x HTTP/1.1\r\n"), "{req}");
    assert!(
        req.ends_with("User-Agent: t/1\r\nAccept: */*\r\n\r\n"),
        "{req}"
    );
    proxy.stop();
    let evs = rec.events();
    let all = edits(&evs);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (all[0].0.as_str(), all[0].1.as_str(), all[0].3.as_str()),
        ("send", "--anticomp", "")
    );
    assert!(all[0].2.starts_with("Accept-Encoding: "), "{all:?}");
}

/// Bytes that are not HTTP pass a relay with HTTP rules untouched.
#[test]
fn not_http_untouched() {
    use std::io::{Read as _, Write as _};
    let dir = TempDir::new("rwh-raw");
    let rec = Rec::new(&dir, "raw");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target: SocketAddr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"220 ready\r\nHTTP/1.1 200 OK\r\n\r\n")
            .unwrap();
    });
    let proxy = Agent::forward(&rec, target, &["--set-header", "both:X: 1", "--anticomp"]);
    let mut c = std::net::TcpStream::connect(proxy.addr()).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"220 ready\r\nHTTP/1.1 200 OK\r\n\r\n");
    drop(c);
    proxy.stop();
    assert!(edits(&rec.events()).is_empty());
}

#[test]
fn bad_rule_is_a_cli_error() {
    for (flag, rule, want) in [
        ("--replace-http", "s2c:head:/a/b/", "expected DIR:SCOPE:"),
        (
            "--replace-http",
            "s2c:body:/(/x/",
            "bad regex: unclosed group",
        ),
        ("--set-header", "c2s:X-A", "expected DIR:NAME: VALUE"),
        ("--drop-header", "up:X-A", "expected DIR:NAME"),
    ] {
        let out = std::process::Command::new(capagent_testkit::capagent())
            .args(["proxy", "http", "--listen", "127.0.0.1:0", flag, rule])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!("capagent: {flag} \"{rule}\": ")),
            "{err}"
        );
        assert!(err.contains(want), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// `proxy http --tls`: inside a decrypted CONNECT tunnel, a request field set (the HTTPS
/// server gets it) and the response body changed (curl gets it).
#[test]
fn decrypted_tunnel() {
    use capagent_testkit::Certs;
    use capagent_testkit::mitm::{Https, Mitm, http_connect};
    let t = Mitm::new("rwh-tls");
    let certs = Certs::localhost();
    let mut server = Https::start(&t.dir, &certs);
    let rule = "s2c:body:/path/the path is/";
    let agent = t.start(
        http_connect(server.port),
        &[
            "--upstream-ca",
            certs.ca_str(),
            "--set-header",
            "c2s:X-Test: tls",
            "--replace-http",
            rule,
        ],
    );
    let body = curl(&[
        "--http1.1",
        "--cacert",
        &t.ca_cert(),
        "-x",
        &format!("http://{}", agent.addr()),
        &format!("https://localhost:{}/tunnel", server.port),
    ]);
    assert_eq!(body, b"the path is /tunnel\n");
    let ex = server.exchange();
    let req = String::from_utf8(ex.request).unwrap();
    assert!(req.starts_with("GET /tunnel HTTP/1.1\r\n"), "{req}");
    assert!(req.ends_with("Accept: */*\r\nX-Test: tls\r\n\r\n"), "{req}");
    agent.stop();
    let evs = t.events();
    let all = edits(&evs);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(
        all[0],
        e("send", "--set-header c2s:X-Test: tls", "", "X-Test: tls")
    );
    // The body's new length, then the replacement.
    let rule = format!("--replace-http {rule}");
    assert_eq!(
        (all[1].0.as_str(), all[1].1.as_str()),
        ("recv", rule.as_str())
    );
    assert!(all[1].2.starts_with("Content-Length: "), "{all:?}");
    assert_eq!(all[2], e("recv", &rule, "path", "the path is"));
}

/// `proxy http --tls --set-header` and curl, which offers h2 by default, to `openssl
/// s_server` offering h2 and http/1.1: the server is offered http/1.1 only (the HTTP rules
/// apply to HTTP/1.x), so both legs speak HTTP/1.1 and the header is set. (Without HTTP
/// rules, h2 is chosen on both legs: tests/mitm.rs `alpn_is_mirrored`.)
#[test]
fn h2_not_offered_with_http_rules() {
    use capagent_testkit::Certs;
    use capagent_testkit::mitm::{Mitm, http_connect, openssl_server};
    let t = Mitm::new("rwh-h2");
    let certs = Certs::localhost();
    let (mut server, port) = openssl_server(&certs, &["-alpn", "h2,http/1.1", "-msg"]);
    let agent = t.start(
        http_connect(port),
        &[
            "--upstream-ca",
            certs.ca_str(),
            "--set-header",
            "s2c:X-Rule: on",
        ],
    );
    let out = curl(&[
        "-i",
        "--cacert",
        &t.ca_cert(),
        "-x",
        &format!("http://{}", agent.addr()),
        "-w",
        "\nversion %{http_version}",
        &format!("https://localhost:{port}/"),
    ]);
    let out = String::from_utf8_lossy(&out).into_owned();
    // (After the proxy's answer to CONNECT.)
    assert!(
        out.contains("\r\n\r\nHTTP/1.0 200 ok\r\nContent-type: text/html\r\nX-Rule: on\r\n\r\n"),
        "{out}"
    );
    // (curl says 1 for the HTTP/1.0 answer; 2 had it spoken h2.)
    assert!(out.ends_with("\nversion 1"), "{out}");
    // What reached the server (s_server -msg prints the list the client offered).
    assert_eq!(
        server.expect("ALPN protocols advertised by the client:", TIMEOUT),
        "http/1.1"
    );
    let log = agent.stop();
    assert_eq!(
        log.matches("servers are offered the clients' ALPN lists without h2")
            .count(),
        1,
        "{log}"
    );
    let evs = t.events();
    let open = open_of(&evs, "http connect", &format!("localhost:{port}"));
    assert_eq!(
        capagent_testkit::mitm::check_intercepted(open),
        (Value::from("http/1.1"), Value::from("http/1.1"))
    );
    assert_eq!(
        edits(&evs),
        [e("recv", "--set-header s2c:X-Rule: on", "", "X-Rule: on")]
    );
}
