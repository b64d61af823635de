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
    let decoded = "<p>Boo! twice: Boo!</p>\n";
    let one = [
        e("recv", "--decode-bodies", decoded, decoded),
        e("recv", &rule, "Boo!", "Yay!!!"),
        e("recv", &rule, "Boo!", "Yay!!!"),
    ];
    let all = edits(&evs);
    // Each connection: the length, the decoded body, the two replacements.
    assert_eq!(all.len(), 8, "{all:?}");
    for conn in all.chunks(4) {
        assert_eq!(conn[0].1, rule);
        assert!(conn[0].2.starts_with("Content-Length: "), "{conn:?}");
        assert_eq!(conn[1..], one);
    }
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
        comments.contains("edited by capagent: --decode-bodies at "),
        "{comments}"
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
