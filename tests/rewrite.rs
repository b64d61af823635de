//! Integration tests of `--replace` (docs/rewrite.md) with real servers and clients on
//! loopback, no root: `proxy forward` and `proxy socks` change the bytes they relay; the
//! client gets the changed bytes, the JSON records hold them as sent with an `edit` record
//! per change, and the pcapng stream carries them with the edit in a packet comment.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

use capagent_testkit::proxy::{
    Agent, Rec, curl, half_close_server, http_response, http_server, open_of, read_all, recorded,
};
use capagent_testkit::{Ev as _, TIMEOUT, TempDir, edit, edits};

/// A server thread for one connection (TCP_NODELAY: each write its own segment) running
/// `script` on it, then closing it.
fn server(script: impl FnOnce(&mut TcpStream) + Send + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        script(&mut s);
    });
    addr
}

/// `proxy forward` to `target` with `rules`, recording into `rec`.
fn forward(rec: &Rec, target: SocketAddr, rules: &[&str]) -> Agent {
    let flags: Vec<&str> = rules.iter().flat_map(|r| ["--replace", r]).collect();
    Agent::forward(rec, target, &flags)
}

#[test]
fn server_bytes_replaced_and_recorded() {
    let dir = TempDir::new("rw-s2c");
    let rec = Rec::new(&dir, "s2c");
    let target = server(|s| s.write_all(b"Boo!").unwrap());
    let rule = "s2c:/Boo!/Yay!/";
    let agent = forward(&rec, target, &[rule]);
    let mut c = TcpStream::connect(agent.addr()).unwrap();
    assert_eq!(read_all(&mut c), b"Yay!");
    drop(c);
    agent.stop();
    let evs = rec.events();
    let o = open_of(&evs, "forward", &target.to_string());
    assert_eq!(recorded(&evs, o.fd(), "recv"), b"Yay!");
    assert_eq!(edits(&evs), [edit("recv", rule, 0, b"Boo!", b"Yay!")]);
    let e = evs.iter().find(|e| e.ty() == "edit").unwrap();
    assert_eq!(
        (e["before"].as_str(), e["after"].as_str()),
        (Some("Boo!"), Some("Yay!"))
    );
    assert_eq!(e.fd(), o.fd());
    // pcapng: the stream carries the bytes as sent, the edit in the packet's comment.
    let streams = rec.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(rec.follow(streams[0].0).1, b"Yay!");
    let comments = rec.comments();
    assert!(
        comments.contains("edited by capagent: s2c:/Boo!/Yay!/ at 0: Boo! -> Yay!"),
        "{comments}"
    );
}

/// A match split over two of the server's writes (the second one after the client's
/// request) is still replaced.
#[test]
fn match_split_over_two_writes() {
    let dir = TempDir::new("rw-split");
    let rec = Rec::new(&dir, "split");
    let target = server(|s| {
        s.write_all(b"xBo").unwrap();
        let mut req = [0u8; 4];
        s.read_exact(&mut req).unwrap();
        assert_eq!(&req, b"next");
        s.write_all(b"o!y").unwrap();
    });
    let agent = forward(&rec, target, &["s2c:/Boo!/Yay!/"]);
    let mut c = TcpStream::connect(agent.addr()).unwrap();
    c.write_all(b"next").unwrap();
    assert_eq!(read_all(&mut c), b"xYay!y");
    drop(c);
    agent.stop();
    let evs = rec.events();
    let o = open_of(&evs, "forward", &target.to_string());
    assert_eq!(recorded(&evs, o.fd(), "recv"), b"xYay!y");
    assert_eq!(
        edits(&evs),
        [edit("recv", "s2c:/Boo!/Yay!/", 1, b"Boo!", b"Yay!")]
    );
}

/// A c2s rule with the `i` flag and a count limit: the first two matches only.
#[test]
fn client_bytes_case_insensitive_twice() {
    let dir = TempDir::new("rw-c2s");
    let rec = Rec::new(&dir, "c2s");
    let (target, received) = half_close_server(1, |got| got.to_vec());
    let rule = "c2s:/secret/XXXXXX/i2";
    let agent = forward(&rec, target, &[rule]);
    let mut c = TcpStream::connect(agent.addr()).unwrap();
    c.write_all(b"Secret secret SECRET").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let want = b"XXXXXX XXXXXX SECRET";
    assert_eq!(read_all(&mut c), want);
    assert_eq!(received.recv_timeout(TIMEOUT).unwrap(), want);
    agent.stop();
    let evs = rec.events();
    let o = open_of(&evs, "forward", &target.to_string());
    assert_eq!(recorded(&evs, o.fd(), "send"), want);
    assert_eq!(
        edits(&evs),
        [
            edit("send", rule, 0, b"Secret", b"XXXXXX"),
            edit("send", rule, 7, b"secret", b"XXXXXX"),
        ]
    );
}

/// A byte that may start a match, held back, reaches the client after the stall flush
/// without the client sending anything.
#[test]
fn held_prompt_is_flushed() {
    let dir = TempDir::new("rw-held");
    let rec = Rec::new(&dir, "held");
    let target = server(|s| {
        s.write_all(b"B").unwrap();
        let mut req = [0u8; 1];
        s.read_exact(&mut req).unwrap();
        s.write_all(&req).unwrap();
    });
    let agent = forward(&rec, target, &["s2c:/Boo!/Yay!/"]);
    let mut c = TcpStream::connect(agent.addr()).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"B");
    c.write_all(b"x").unwrap();
    assert_eq!(read_all(&mut c), b"x");
    drop(c);
    agent.stop();
    let evs = rec.events();
    let o = open_of(&evs, "forward", &target.to_string());
    assert_eq!(recorded(&evs, o.fd(), "recv"), b"Bx");
    assert!(edits(&evs).is_empty());
}

/// Binary bytes in the pattern and the replacement.
#[test]
fn binary_bytes() {
    let dir = TempDir::new("rw-bin");
    let rec = Rec::new(&dir, "bin");
    let target = server(|s| s.write_all(b"a\x00\x01b\x00c").unwrap());
    let rule = r"s2c:/\x00\x01/\xff/";
    let agent = forward(&rec, target, &[rule]);
    let mut c = TcpStream::connect(agent.addr()).unwrap();
    assert_eq!(read_all(&mut c), b"a\xffb\x00c");
    drop(c);
    agent.stop();
    let evs = rec.events();
    let o = open_of(&evs, "forward", &target.to_string());
    assert_eq!(recorded(&evs, o.fd(), "recv"), b"a\xffb\x00c");
    assert_eq!(edits(&evs), [edit("recv", rule, 1, b"\x00\x01", b"\xff")]);
}

/// Through `proxy socks` with curl: an HTTP response body changed (same length: raw rules
/// do not fix Content-Length).
#[test]
fn socks_http_body_replaced() {
    let dir = TempDir::new("rw-socks");
    let rec = Rec::new(&dir, "socks");
    let (web, requests) = http_server(http_response(b"hello Boo! world\n"), 1);
    let agent = Agent::recording(
        &rec,
        &[
            "proxy",
            "socks",
            "--listen",
            "127.0.0.1:0",
            "--replace",
            "s2c:/Boo!/Yay!/",
        ],
    );
    let got = curl(&[
        "--socks5",
        &agent.addr().to_string(),
        &format!("http://{web}/"),
    ]);
    assert_eq!(got, b"hello Yay! world\n");
    requests.recv_timeout(TIMEOUT).unwrap();
    agent.stop();
    let evs = rec.events();
    let o = open_of(&evs, "socks5 connect", &web.to_string());
    assert!(recorded(&evs, o.fd(), "recv").ends_with(b"hello Yay! world\n"));
    assert_eq!(edits(&evs).len(), 1);
}

#[test]
fn bad_rule_is_a_cli_error() {
    let out = std::process::Command::new(capagent_testkit::capagent())
        .args([
            "proxy",
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:1",
            "--replace",
            "s2c:/(/x/",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("capagent: --replace \"s2c:/(/x/\": "),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
