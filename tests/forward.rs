//! Integration tests of `capagent proxy forward` with real clients (curl, socat) and
//! servers on loopback, no root: several ports in one process, half-close, UDP, the
//! zero-copy path without recording, refused targets and the connection cap. Each test
//! checks the bytes relayed and the bytes recorded (JSON records, tshark on the pcapng).

#[allow(dead_code)]
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;

use capagent_testkit::proxy::{
    Agent, Rec, closed_tcp_port, conn_events, curl, half_close_server, http_response, http_server,
    open_of, opens, read_all, recorded, udp_echo,
};
use capagent_testkit::{
    Ev as _, TCP_ESTABLISHED, TIMEOUT, TempDir, pattern, tcp_sockets, wait_for,
};
use serde_json::Value;

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn upper(b: &[u8]) -> Vec<u8> {
    b.to_ascii_uppercase()
}

#[test]
fn several_ports_in_one_process() {
    let dir = TempDir::new("fwd-ports");
    let rec = Rec::new(&dir, "ports");
    let body = pattern(300_000, 3);
    let response = http_response(&body);
    let (web, requests) = http_server(response.clone(), 1);
    let (echo, received) = half_close_server(1, upper);
    // One pair and one --map: an HTTP server and an "RPC" server on two ports.
    let mut a = args(&[
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &web.to_string(),
        "--map",
        &format!("127.0.0.1:0={echo}"),
    ]);
    a.extend(rec.args());
    let agent = Agent::start(&a, 2);
    let (web_l, echo_l) = (agent.addrs[0], agent.addrs[1]);
    let got = curl(&[&format!("http://{web_l}/big")]);
    assert!(got == body, "curl through the forwarder: body differs");
    let request = requests.recv_timeout(TIMEOUT).unwrap();
    // socat as the second client: sends its stdin, half-closes, prints the answer.
    let mut socat = Command::new("socat")
        .args(["-t", "10", "-", &format!("TCP:{echo_l}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    socat
        .stdin
        .take()
        .unwrap()
        .write_all(b"call method 42\n")
        .unwrap();
    let out = socat.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"CALL METHOD 42\n");
    assert_eq!(received.recv_timeout(TIMEOUT).unwrap(), b"call method 42\n");
    agent.stop();
    let evs = rec.events();
    assert_eq!(opens(&evs).len(), 2, "{}", capagent_testkit::dump(&evs));
    let w = open_of(&evs, "forward", &web.to_string());
    assert_eq!(w["listen"], web_l.to_string());
    assert_eq!(w["resolved"], web.to_string());
    assert_eq!(recorded(&evs, w.fd(), "send"), request);
    assert_eq!(recorded(&evs, w.fd(), "recv"), response);
    let e = open_of(&evs, "forward", &echo.to_string());
    assert_eq!(e["listen"], echo_l.to_string());
    assert_eq!(recorded(&evs, e.fd(), "send"), b"call method 42\n");
    assert_eq!(recorded(&evs, e.fd(), "recv"), b"CALL METHOD 42\n");
    // pcapng: two streams, each from the client to the real server, with the same bytes.
    let streams = rec.streams();
    assert_eq!(streams.len(), 2, "{streams:?}");
    for (idx, client, server) in streams {
        let (up, down) = rec.follow(idx);
        let o = if server == web { w } else { e };
        assert_eq!(client.to_string(), o["local"].as_str().unwrap());
        assert_eq!(up, recorded(&evs, o.fd(), "send"), "stream {idx} up");
        assert_eq!(down, recorded(&evs, o.fd(), "recv"), "stream {idx} down");
    }
}

#[test]
fn half_close_is_relayed_and_recorded() {
    let dir = TempDir::new("fwd-half");
    let rec = Rec::new(&dir, "half");
    let (server, received) = half_close_server(1, |got| {
        let mut r = b"got ".to_vec();
        r.extend_from_slice(got.len().to_string().as_bytes());
        r
    });
    let mut a = args(&[
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &server.to_string(),
    ]);
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let data = pattern(1_000_000, 11);
    let mut s = TcpStream::connect(agent.addr()).unwrap();
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    // The server answers only after it saw our end: the half-close went through.
    assert_eq!(read_all(&mut s), b"got 1000000");
    assert!(received.recv_timeout(TIMEOUT).unwrap() == data);
    agent.stop();
    let evs = rec.events();
    let o = open_of(&evs, "forward", &server.to_string());
    assert!(recorded(&evs, o.fd(), "send") == data);
    let kinds: Vec<&str> = conn_events(&evs, o.fd())
        .iter()
        .map(|e| e.syscall())
        .collect();
    let shut = kinds
        .iter()
        .position(|k| *k == "shutdown")
        .expect("client FIN recorded");
    let reply = kinds.iter().position(|k| *k == "recvfrom").unwrap();
    assert!(shut < reply, "{kinds:?}");
    // In pcapng the client's FIN comes before the server's data.
    let out = capagent_testkit::tshark_r(
        &rec.pcap,
        &[
            "-T",
            "fields",
            "-e",
            "tcp.flags.fin",
            "-e",
            "tcp.len",
            "-e",
            "tcp.srcport",
        ],
    );
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    let client_port = o["local"].as_str().unwrap().rsplit(':').next().unwrap();
    let client_fin = rows
        .iter()
        .position(|r| r[0] == "1" && r[2] == client_port)
        .expect("client FIN in pcapng");
    let server_data = rows
        .iter()
        .position(|r| r[2] == server.port().to_string() && r[1] != "0")
        .expect("server data in pcapng");
    assert!(client_fin < server_data, "{rows:?}");
    let (up, down) = rec.follow(0);
    assert!(up == data);
    assert_eq!(down, b"got 1000000");
}

#[test]
fn udp_datagrams_both_ways() {
    let dir = TempDir::new("fwd-udp");
    let rec = Rec::new(&dir, "udp");
    let (_echo_proc, echo) = udp_echo();
    let (web, _requests) = http_server(http_response(b"tcp too"), 1);
    let mut a = args(&[
        "proxy",
        "forward",
        "--udp",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &echo.to_string(),
        "--map",
        &format!("127.0.0.1:0={web}"),
    ]);
    a.extend(rec.args());
    // Two TCP listeners and two UDP ones.
    let agent = Agent::start(&a, 4);
    let udp_l: Vec<SocketAddr> = agent
        .proc
        .stderr()
        .lines()
        .filter(|l| l.contains("forward udp") && l.contains(&echo.to_string()))
        .map(|l| {
            l.rsplit(" listening on ")
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(udp_l.len(), 1);
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..3 {
        let msg = format!("udp message {i}");
        c.send_to(msg.as_bytes(), udp_l[0]).unwrap();
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(from, udp_l[0]);
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    // TCP on the other mapping still works in the same process.
    let tcp_l: SocketAddr = agent
        .proc
        .stderr()
        .lines()
        .find(|l| !l.contains("forward udp") && l.contains(&format!("-> {web} ")))
        .map(|l| {
            l.rsplit(" listening on ")
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .unwrap();
    assert_eq!(curl(&[&format!("http://{tcp_l}/")]), b"tcp too");
    agent.stop();
    let evs = rec.events();
    let o = open_of(&evs, "forward udp", &echo.to_string());
    assert_eq!(o["transport"], "udp");
    assert_eq!(o["local"], c.local_addr().unwrap().to_string());
    let data: Vec<&Value> = evs
        .iter()
        .filter(|e| e.ty() == "data" && e.fd() == o.fd())
        .collect();
    assert_eq!(data.len(), 6, "{}", capagent_testkit::dump(&evs));
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["dir"], if i % 2 == 0 { "send" } else { "recv" });
        assert_eq!(d.payload(), format!("udp message {}", i / 2).as_bytes());
        assert_eq!(d["addr"], echo.to_string());
    }
    let grams = rec.datagrams();
    assert_eq!(grams.len(), 6, "{grams:?}");
    let client = c.local_addr().unwrap();
    for (i, g) in grams.iter().enumerate() {
        let (src, dst) = if i % 2 == 0 {
            (client, echo)
        } else {
            (echo, client)
        };
        assert_eq!((g.0, g.1), (src, dst));
        assert_eq!(g.2, format!("udp message {}", i / 2).as_bytes());
    }
}

#[test]
fn not_recording_relays_exact_bytes() {
    // --no-record takes the splice path; 32 MiB each way must arrive intact.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = l.local_addr().unwrap();
    let down = pattern(32 << 20, 5);
    let down2 = down.clone();
    let server = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut r = s.try_clone().unwrap();
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            got
        });
        s.write_all(&down2).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        reader.join().unwrap()
    });
    let agent = Agent::start(
        &args(&[
            "proxy",
            "forward",
            "--no-record",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &target.to_string(),
        ]),
        1,
    );
    let up = pattern(32 << 20, 6);
    let mut s = TcpStream::connect(agent.addr()).unwrap();
    let mut w = s.try_clone().unwrap();
    let up2 = up.clone();
    let writer = thread::spawn(move || {
        w.write_all(&up2).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_all(&mut s);
    writer.join().unwrap();
    assert!(
        got == down,
        "target -> client bytes differ ({} bytes)",
        got.len()
    );
    assert!(
        server.join().unwrap() == up,
        "client -> target bytes differ"
    );
    let err = agent.stop();
    assert!(!err.contains("open("), "--no-record wrote records: {err}");
}

/// A connection to the forwarder at `addr` that holds a slot: it sent `first`, and capagent
/// connected to the target (on `target_port`) for it. The slot of a connection that just
/// ended is released a moment after its socket closes; a connection made before that is
/// closed at once, and another one is tried.
fn hold(addr: SocketAddr, target_port: u16) -> TcpStream {
    let upstream = || {
        tcp_sockets(0)
            .iter()
            .any(|t| t.remote_port == target_port && t.state == TCP_ESTABLISHED)
    };
    wait_for(TIMEOUT, || {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(b"first");
        s.set_nonblocking(true).unwrap();
        let held = wait_for(TIMEOUT, || {
            if upstream() {
                return Some(true);
            }
            match s.peek(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                _ => Some(false),
            }
        });
        s.set_nonblocking(false).unwrap();
        (held == Some(true)).then_some(s)
    })
    .expect("no connection got a slot")
}

#[test]
fn refused_target_and_connection_cap() {
    let dir = TempDir::new("fwd-limits");
    let rec = Rec::new(&dir, "limits");
    let closed = closed_tcp_port();
    let (server, received) = half_close_server(1, upper);
    let mut a = args(&[
        "proxy",
        "forward",
        "--max-conns",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &format!("127.0.0.1:{closed}"),
        "--listen",
        "127.0.0.1:0",
        "--to",
        &server.to_string(),
    ]);
    a.extend(rec.args());
    let agent = Agent::start(&a, 2);
    // Refused target: the client's connection is reset (or closed) without data.
    let mut s = TcpStream::connect(agent.addrs[0]).unwrap();
    assert_eq!(read_all(&mut s), b"");
    // The cap: one connection held open; the next is closed at once.
    let mut held = hold(agent.addrs[1], server.port());
    let mut over = TcpStream::connect(agent.addrs[1]).unwrap();
    let _ = over.write_all(b"second");
    assert_eq!(
        read_all(&mut over),
        b"",
        "a connection over --max-conns is closed"
    );
    held.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut held), b"FIRST");
    assert_eq!(received.recv_timeout(TIMEOUT).unwrap(), b"first");
    let err = agent.stop();
    assert!(err.contains("--max-conns"), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    let evs = rec.events();
    let o = open_of(&evs, "forward", &format!("127.0.0.1:{closed}"));
    assert_eq!(o["errno"], "ECONNREFUSED");
    assert_eq!(
        opens(&evs).len(),
        2,
        "the refused-by-cap connection is not recorded"
    );
}

/// Records written to a file with stderr on a terminal: a status line redrawn in place
/// about once a second (the clock moves), erased at the end.
#[test]
fn status_line_on_a_terminal() {
    let dir = TempDir::new("fwd-status");
    let out = dir.join("status.jsonl");
    let argv = args(&[
        capagent_testkit::capagent(),
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "-o",
        out.to_str().unwrap(),
    ]);
    let (term, _) = capagent_testkit::stderr_on_a_terminal(&argv, 2);
    let lines = capagent_testkit::status_lines(&term);
    assert!(lines.len() >= 2 && lines[0] != lines[1], "{term:?}");
    for l in &lines {
        let rest = l.strip_prefix("capagent: 0:00:0").unwrap_or_default();
        assert!(
            rest.ends_with("  0 records, 0 B, 0 connections"),
            "{term:?}"
        );
    }
    assert!(term.ends_with("\r\x1b[K"), "{term:?}");
}
