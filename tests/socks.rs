//! Integration tests of `capagent proxy socks` with real clients (curl's four SOCKS modes,
//! Java's SOCKS support, Python SOCKS5 UDP ASSOCIATE and BIND clients, raw sockets for
//! malformed input), on loopback, no root. Each test checks the bytes relayed and the bytes
//! recorded (the JSON records, and tshark on the pcapng).

#[allow(dead_code)]
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::Duration;

use capagent_testkit::proxy::{
    Agent, Rec, closed_tcp_port, conn_events, curl, curl_status, half_close_server, http_response,
    http_server, open_of, opens, read_all, recorded, udp_echo,
};
use capagent_testkit::{Ev as _, Proc, TIMEOUT, TempDir, pattern, python, run_output};
use serde_json::Value;

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `capagent proxy socks --listen 127.0.0.1:0 EXTRA... RECORD...`.
fn socks(rec: &Rec, extra: &[&str]) -> Agent {
    let mut a = args(&["proxy", "socks", "--listen", "127.0.0.1:0"]);
    a.extend(args(extra));
    a.extend(rec.args());
    Agent::start(&a, 1)
}

/// The stream in the pcapng whose client is `client`.
fn stream_of(rec: &Rec, client: SocketAddr) -> (u32, SocketAddr) {
    let streams = rec.streams();
    let found: Vec<_> = streams.iter().filter(|s| s.1 == client).collect();
    assert_eq!(found.len(), 1, "want one stream from {client}: {streams:?}");
    (found[0].0, found[0].2)
}

/// Checks what was recorded for the connection of `open`: JSON data records and the pcapng
/// stream carry exactly `up` (client to target) and `down`, between the client and
/// `target`.
fn check_recorded(
    rec: &Rec,
    evs: &[Value],
    open: &Value,
    target: SocketAddr,
    up: &[u8],
    down: &[u8],
) {
    assert_eq!(open.ret(), 0, "{open}");
    let fd = open.fd();
    assert_eq!(open["remote"], target.to_string(), "{open}");
    assert_eq!(open["resolved"], target.to_string(), "{open}");
    assert_eq!(
        recorded(evs, fd, "send"),
        up,
        "recorded client -> target bytes"
    );
    assert_eq!(
        recorded(evs, fd, "recv"),
        down,
        "recorded target -> client bytes"
    );
    let kinds: Vec<&str> = conn_events(evs, fd).iter().map(|e| e.syscall()).collect();
    assert_eq!(kinds.first(), Some(&"connect"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"close"), "{kinds:?}");
    let client: SocketAddr = open["local"].as_str().unwrap().parse().unwrap();
    let (stream, server) = stream_of(rec, client);
    assert_eq!(server, target, "pcapng stream goes to the real target");
    let (pup, pdown) = rec.follow(stream);
    assert_eq!(pup, up, "pcapng client -> target bytes");
    assert_eq!(pdown, down, "pcapng target -> client bytes");
}

#[test]
fn curl_all_socks_versions() {
    let dir = TempDir::new("socks-curl");
    let rec = Rec::new(&dir, "curl");
    let body = pattern(200_000, 7);
    let response = http_response(&body);
    let (server, requests) = http_server(response.clone(), 4);
    let agent = socks(&rec, &[]);
    let proxy = agent.addr().to_string();
    let by_ip = format!("http://{server}/file");
    let by_name = format!("http://localhost:{}/file", server.port());
    let modes = [
        ("--socks4", &by_ip, "socks4 connect", server.to_string()),
        (
            "--socks4a",
            &by_name,
            "socks4a connect",
            format!("localhost:{}", server.port()),
        ),
        ("--socks5", &by_ip, "socks5 connect", server.to_string()),
        (
            "--socks5-hostname",
            &by_name,
            "socks5 connect",
            format!("localhost:{}", server.port()),
        ),
    ];
    let mut sent = Vec::new();
    for (flag, url, _, _) in &modes {
        let got = curl(&[flag, &proxy, url]);
        assert_eq!(got.len(), body.len(), "{flag}: body length");
        assert!(got == body, "{flag}: body differs");
        sent.push(requests.recv_timeout(TIMEOUT).unwrap());
    }
    agent.stop();
    let evs = rec.events();
    assert_eq!(opens(&evs).len(), 4, "{}", capagent_testkit::dump(&evs));
    for ((flag, _, proxy_name, target), request) in modes.iter().zip(&sent) {
        let open = open_of(&evs, proxy_name, target);
        assert_eq!(open["comm"], "socks");
        assert_eq!(open["listen"], agent_addr(&evs), "{flag}");
        check_recorded(&rec, &evs, open, server, request, &response);
    }
}

/// The `listen` all open records share.
fn agent_addr(evs: &[Value]) -> Value {
    opens(evs)[0]["listen"].clone()
}

#[test]
fn curl_socks5_auth() {
    let dir = TempDir::new("socks-auth");
    let rec = Rec::new(&dir, "auth");
    let response = http_response(b"secret page\n");
    let (server, requests) = http_server(response.clone(), 2);
    let agent = socks(&rec, &["--auth", "alice:s3cret"]);
    let proxy = agent.addr().to_string();
    let url = format!("http://{server}/");
    for mode in ["--socks5", "--socks5-hostname"] {
        let got = curl(&[mode, &proxy, "--proxy-user", "alice:s3cret", &url]);
        assert_eq!(got, b"secret page\n");
        requests.recv_timeout(TIMEOUT).unwrap();
    }
    // Wrong password, no credentials, SOCKS4 (cannot carry a password): all refused before
    // any connection to the target.
    for bad in [
        vec!["--socks5", &proxy, "--proxy-user", "alice:wrong"],
        vec!["--socks5", &proxy, "--proxy-user", "mallory:s3cret"],
        vec!["--socks5", &proxy],
        vec!["--socks4", &proxy],
    ] {
        let mut a = bad.clone();
        a.push(&url);
        let out = curl_status(&a);
        assert!(!out.status.success(), "{bad:?} was let through");
    }
    // The exact RFC 1929 bytes: sub-negotiation version 1, status 0 / non-zero.
    for (pass, status) in [("s3cret", 0u8), ("nope", 1u8)] {
        let mut s = TcpStream::connect(agent.addr()).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(b"\x05\x01\x02").unwrap();
        let mut m = [0u8; 2];
        s.read_exact(&mut m).unwrap();
        assert_eq!(m, [5, 2], "method username/password chosen");
        let mut msg = vec![1, 5];
        msg.extend_from_slice(b"alice");
        msg.push(pass.len() as u8);
        msg.extend_from_slice(pass.as_bytes());
        s.write_all(&msg).unwrap();
        let mut st = [0u8; 2];
        s.read_exact(&mut st).unwrap();
        assert_eq!(st, [1, status], "RFC 1929 reply for {pass}");
        if status != 0 {
            assert_eq!(
                read_all(&mut s),
                b"",
                "closed after a failed authentication"
            );
        }
    }
    let err = agent.stop();
    assert!(
        err.contains("authentication failed for user \"alice\""),
        "no log line for the wrong password: {err}"
    );
    assert!(err.contains("SOCKS4 refused"), "{err}");
    let evs = rec.events();
    // Only the two authenticated requests reached the target.
    assert_eq!(opens(&evs).len(), 2, "{}", capagent_testkit::dump(&evs));
    assert!(
        requests.try_recv().is_err(),
        "a refused client reached the target"
    );
}

/// A Java client using the JDK's own SOCKS support (`-DsocksProxyHost`).
const JAVA_CLIENT: &str = r#"
import java.io.*;
import java.net.*;

public class SocksClient {
    // args: host port message resolve(yes|no)
    public static void main(String[] args) throws Exception {
        Socket s = new Socket();
        InetSocketAddress target = args[3].equals("yes")
            ? new InetSocketAddress(args[0], Integer.parseInt(args[1]))
            : InetSocketAddress.createUnresolved(args[0], Integer.parseInt(args[1]));
        s.connect(target, 20000);
        s.setSoTimeout(20000);
        OutputStream out = s.getOutputStream();
        out.write(args[2].getBytes("UTF-8"));
        out.flush();
        s.shutdownOutput();
        InputStream in = s.getInputStream();
        ByteArrayOutputStream got = new ByteArrayOutputStream();
        byte[] buf = new byte[4096];
        int n;
        while ((n = in.read(buf)) > 0) got.write(buf, 0, n);
        System.out.println("GOT " + got.toString("UTF-8"));
        s.close();
    }
}
"#;

fn upper(b: &[u8]) -> Vec<u8> {
    b.to_ascii_uppercase()
}

#[test]
fn java_socks4_and_socks5() {
    let dir = TempDir::new("socks-java");
    let rec = Rec::new(&dir, "java");
    let src = dir.write("SocksClient.java", JAVA_CLIENT);
    let (server, received) = half_close_server(3, upper);
    let agent = socks(&rec, &[]);
    let port = agent.addr().port().to_string();
    let cases = [
        // (socksProxyVersion, host, resolve locally, message, proxy, requested target)
        (
            "5",
            "localhost",
            "no",
            "hello over socks5 by name",
            "socks5 connect",
            format!("localhost:{}", server.port()),
        ),
        (
            "5",
            "127.0.0.1",
            "yes",
            "hello over socks5 by address",
            "socks5 connect",
            server.to_string(),
        ),
        (
            "4",
            "127.0.0.1",
            "yes",
            "hello over socks4",
            "socks4 connect",
            server.to_string(),
        ),
    ];
    for (version, host, resolve, msg, _, _) in &cases {
        let mut cmd = Command::new("java");
        cmd.arg("-DsocksProxyHost=127.0.0.1")
            .arg(format!("-DsocksProxyPort={port}"))
            .arg(format!("-DsocksProxyVersion={version}"))
            // The JDK goes direct to localhost and 127.* by default; this test wants
            // loopback targets through the proxy.
            .arg("-DsocksNonProxyHosts=")
            .arg(&src)
            .args([*host, &server.port().to_string(), *msg, *resolve]);
        let out = run_output("java SocksClient", cmd, Duration::from_secs(60));
        assert_eq!(
            out.trim(),
            format!("GOT {}", msg.to_uppercase()),
            "java socks{version} {host}"
        );
        assert_eq!(received.recv_timeout(TIMEOUT).unwrap(), msg.as_bytes());
    }
    agent.stop();
    let evs = rec.events();
    assert_eq!(opens(&evs).len(), 3, "{}", capagent_testkit::dump(&evs));
    for (_, _, _, msg, proxy, target) in &cases {
        let candidates: Vec<&Value> = opens(&evs)
            .into_iter()
            .filter(|o| o["proxy"] == *proxy && o["target"] == *target)
            .filter(|o| recorded(&evs, o.fd(), "send") == msg.as_bytes())
            .collect();
        assert_eq!(candidates.len(), 1, "{proxy} {target} {msg}");
        check_recorded(
            &rec,
            &evs,
            candidates[0],
            server,
            msg.as_bytes(),
            &upper(msg.as_bytes()),
        );
        // Half-close relayed: the client's FIN is recorded before the answer.
        let kinds: Vec<&str> = conn_events(&evs, candidates[0].fd())
            .iter()
            .map(|e| e.syscall())
            .collect();
        let shut = kinds
            .iter()
            .position(|k| *k == "shutdown")
            .expect("client shutdown recorded");
        let answer = kinds.iter().rposition(|k| *k == "recvfrom").unwrap();
        assert!(shut < answer, "{kinds:?}");
    }
}

/// SOCKS5 UDP ASSOCIATE and BIND, SOCKS4 BIND clients (no common tool does these).
const SOCKS_PY: &str = r#"
import socket, struct, sys

def exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("closed early after %r" % b)
        b += c
    return b

def addr5(s):
    atyp = exact(s, 1)[0]
    if atyp == 1:
        ip = socket.inet_ntop(socket.AF_INET, exact(s, 4))
    elif atyp == 4:
        ip = socket.inet_ntop(socket.AF_INET6, exact(s, 16))
    else:
        ip = exact(s, exact(s, 1)[0]).decode()
    port = struct.unpack(">H", exact(s, 2))[0]
    return atyp, ip, port

def reply5(s):
    ver, rep, rsv = exact(s, 3)
    assert ver == 5 and rsv == 0, (ver, rsv)
    atyp, ip, port = addr5(s)
    return rep, atyp, ip, port

def greet(s):
    s.sendall(b"\x05\x01\x00")
    assert exact(s, 2) == b"\x05\x00"

def finish(s, msg):
    s.sendall(msg)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        got += c
    print("GOT", got.hex(), flush=True)

mode, phost, pport = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.create_connection((phost, pport), timeout=20)
if mode == "bind5":
    greet(s)
    s.sendall(b"\x05\x02\x00\x01" + socket.inet_aton(sys.argv[4]) + struct.pack(">H", int(sys.argv[5])))
    print("BOUND %d %d %s %d" % reply5(s), flush=True)
    print("PEER %d %d %s %d" % reply5(s), flush=True)
    finish(s, sys.argv[6].encode())
elif mode == "bind4":
    s.sendall(b"\x04\x02" + struct.pack(">H", int(sys.argv[5])) + socket.inet_aton(sys.argv[4]) + b"ftp\x00")
    for what in ("BOUND", "PEER"):
        r = exact(s, 8)
        print("%s %d %d %s %d" % (what, r[0], r[1], socket.inet_ntoa(r[4:8]), struct.unpack(">H", r[2:4])[0]), flush=True)
    finish(s, sys.argv[6].encode())
elif mode == "udp5":
    greet(s)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(20)
    # DST.ADDR/PORT: where our datagrams will come from.
    s.sendall(b"\x05\x03\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", u.getsockname()[1]))
    rep, atyp, ip, port = reply5(s)
    print("BOUND %d %d %s %d" % (rep, atyp, ip, port), flush=True)
    print("CLIENT %s %d" % u.getsockname(), flush=True)
    echo_host, echo_port = sys.argv[4], int(sys.argv[5])
    for i, name in enumerate([None, "localhost"]):
        if name is None:
            head = b"\x00\x00\x00\x01" + socket.inet_aton(echo_host)
        else:
            head = b"\x00\x00\x00\x03" + bytes([len(name)]) + name.encode()
        msg = ("datagram %d via socks5 udp" % i).encode()
        u.sendto(head + struct.pack(">H", echo_port) + msg, (ip, port))
        data, src = u.recvfrom(65535)
        assert src == (ip, port), src
        assert data[:4] == b"\x00\x00\x00\x01", data
        fip = socket.inet_ntoa(data[4:8])
        fport = struct.unpack(">H", data[8:10])[0]
        print("ECHO %s %d %s" % (fip, fport, data[10:].hex()), flush=True)
    s.close()
"#;

#[test]
fn socks5_udp_associate_with_socat_echo() {
    let dir = TempDir::new("socks-udp");
    let rec = Rec::new(&dir, "udp");
    let (_echo, echo) = udp_echo();
    let agent = socks(&rec, &[]);
    let script = dir.write("socks.py", SOCKS_PY);
    let mut cmd = Command::new(python());
    cmd.args([
        &script,
        "udp5",
        "127.0.0.1",
        &agent.addr().port().to_string(),
        "127.0.0.1",
        &echo.port().to_string(),
    ]);
    let out = run_output("socks.py udp5", cmd, TIMEOUT);
    let bound = capagent_testkit::kv(&out, "BOUND");
    let b: Vec<&str> = bound.split(' ').collect();
    // The reply carries the real address of the UDP relay, and its type.
    assert_eq!(&b[..3], ["0", "1", "127.0.0.1"], "{out}");
    assert_ne!(b[3], "0", "{out}");
    let client: SocketAddr = capagent_testkit::kv(&out, "CLIENT")
        .replace(' ', ":")
        .parse()
        .unwrap();
    let echoes: Vec<&str> = out.lines().filter(|l| l.starts_with("ECHO ")).collect();
    assert_eq!(echoes.len(), 2, "{out}");
    for (i, e) in echoes.iter().enumerate() {
        let msg = format!("datagram {i} via socks5 udp");
        assert_eq!(
            *e,
            format!(
                "ECHO 127.0.0.1 {} {}",
                echo.port(),
                capagent_testkit::hex(msg.as_bytes())
            )
        );
    }
    agent.stop();
    let evs = rec.events();
    let open = open_of(
        &evs,
        "socks5 udp-associate",
        &format!("127.0.0.1:{}", client.port()),
    );
    assert_eq!(open["transport"], "udp");
    assert_eq!(open["local"], client.to_string());
    let fd = open.fd();
    let data: Vec<&Value> = evs
        .iter()
        .filter(|e| e.ty() == "data" && e.fd() == fd)
        .collect();
    assert_eq!(data.len(), 4, "{}", capagent_testkit::dump(&evs));
    for (i, pair) in data.chunks(2).enumerate() {
        let msg = format!("datagram {i} via socks5 udp");
        assert_eq!(pair[0]["dir"], "send");
        assert_eq!(pair[1]["dir"], "recv");
        for d in pair {
            assert_eq!(d.payload(), msg.as_bytes());
            assert_eq!(d["addr"], echo.to_string());
        }
    }
    // pcapng: datagrams between the client's UDP address and the echo server.
    let grams = rec.datagrams();
    assert_eq!(grams.len(), 4, "{grams:?}");
    for (i, g) in grams.iter().enumerate() {
        let msg = format!("datagram {} via socks5 udp", i / 2);
        let (src, dst) = if i % 2 == 0 {
            (client, echo)
        } else {
            (echo, client)
        };
        assert_eq!((g.0, g.1, g.2.as_slice()), (src, dst, msg.as_bytes()));
    }
}

/// BIND: the client asks the proxy to listen; "the server" (this test, as an FTP server in
/// active mode would) connects to the announced address; then both talk.
fn bind_case(version: &str) {
    let dir = TempDir::new(&format!("socks-bind{version}"));
    let rec = Rec::new(&dir, "bind");
    let agent = socks(&rec, &[]);
    let script = dir.write("socks.py", SOCKS_PY);
    let mode = format!("bind{version}");
    let mut cmd = Command::new(python());
    cmd.args([
        &script,
        &mode,
        "127.0.0.1",
        &agent.addr().port().to_string(),
        "127.0.0.1",
        "20",
        "LIST from the client",
    ]);
    let mut client = Proc::spawn("socks.py bind", cmd);
    let bound = client.expect("BOUND", TIMEOUT);
    let f: Vec<&str> = bound.split(' ').collect();
    let (code, ip, port) = if version == "5" {
        assert_eq!(f[1], "1", "ATYP IPv4: {bound}");
        (f[0], f[2], f[3])
    } else {
        assert_eq!(f[0], "0", "SOCKS4 reply version 0: {bound}");
        (f[1], f[2], f[3])
    };
    assert_eq!(code, if version == "5" { "0" } else { "90" }, "{bound}");
    assert_eq!(ip, "127.0.0.1", "the real bound address: {bound}");
    let announced: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let mut server = TcpStream::connect(announced).unwrap();
    let server_addr = server.local_addr().unwrap();
    let peer = client.expect("PEER", TIMEOUT);
    let expect_peer = if version == "5" {
        format!("0 1 127.0.0.1 {}", server_addr.port())
    } else {
        format!("0 90 127.0.0.1 {}", server_addr.port())
    };
    assert_eq!(peer, expect_peer);
    server.write_all(b"220 data from the server\r\n").unwrap();
    let got = read_all(&mut server);
    assert_eq!(got, b"LIST from the client");
    server.shutdown(Shutdown::Write).unwrap();
    let answer = client.expect("GOT", TIMEOUT);
    assert_eq!(
        answer,
        capagent_testkit::hex(b"220 data from the server\r\n")
    );
    assert!(client.wait(TIMEOUT).success());
    agent.stop();
    let evs = rec.events();
    let open = open_of(&evs, &format!("socks{version} bind"), "127.0.0.1:20");
    check_recorded(
        &rec,
        &evs,
        open,
        server_addr,
        b"LIST from the client",
        b"220 data from the server\r\n",
    );
}

#[test]
fn socks5_bind_with_server_connecting_back() {
    bind_case("5");
}

#[test]
fn socks4_bind_with_server_connecting_back() {
    bind_case("4");
}

#[test]
fn bind_refuses_other_hosts() {
    // The client expects a connection from 127.0.0.2; one from 127.0.0.1 is refused.
    let dir = TempDir::new("socks-bind-other");
    let rec = Rec::new(&dir, "bind");
    let agent = socks(&rec, &[]);
    let mut s = TcpStream::connect(agent.addr()).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"\x05\x01\x00").unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    s.write_all(b"\x05\x02\x00\x01\x7f\x00\x00\x02\x00\x14")
        .unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(&r[..4], b"\x05\x00\x00\x01");
    let port = u16::from_be_bytes([r[8], r[9]]);
    let _intruder = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.read_exact(&mut r).unwrap();
    assert_eq!(
        r, *b"\x05\x02\x00\x01\0\0\0\0\0\0",
        "not allowed by ruleset"
    );
    assert_eq!(read_all(&mut s), b"");
    let err = agent.stop();
    assert!(err.contains("refused"), "{err}");
    assert!(opens(&rec.events()).is_empty());
}

/// Sends `bytes` one at a time (the limits must hold however a header is split).
fn trickle(s: &mut TcpStream, bytes: &[u8]) {
    for b in bytes {
        if s.write_all(&[*b]).is_err() {
            return;
        }
        // Pacing a slow sender, not waiting for anything: each byte goes out on its own.
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn malformed_requests_get_protocol_replies() {
    let dir = TempDir::new("socks-bad");
    let rec = Rec::new(&dir, "bad");
    let agent = socks(&rec, &["--handshake-timeout", "1"]);
    let talk = |send: &[u8], bytewise: bool| -> Vec<u8> {
        let mut s = TcpStream::connect(agent.addr()).unwrap();
        if bytewise {
            trickle(&mut s, send);
        } else {
            s.write_all(send).unwrap();
        }
        read_all(&mut s)
    };
    // Not SOCKS at all: closed without a reply.
    assert_eq!(talk(b"GET / HTTP/1.1\r\n\r\n", false), b"");
    // SOCKS4: unknown command → 91, reply version 0.
    assert_eq!(
        talk(b"\x04\x03\x00\x50\x7f\0\0\x01\0", false),
        b"\x00\x5b\0\0\0\0\0\0"
    );
    // SOCKS4: a user id over 255 bytes, one byte per write → 91 once the limit is passed.
    let mut long = b"\x04\x01\x00\x50\x7f\0\0\x01".to_vec();
    long.extend(std::iter::repeat_n(b'u', 300));
    assert_eq!(talk(&long, true), b"\x00\x5b\0\0\0\0\0\0");
    // SOCKS4a: a host name over 255 bytes → 91.
    let mut long = b"\x04\x01\x00\x50\0\0\0\x01\0".to_vec();
    long.extend(std::iter::repeat_n(b'h', 300));
    assert_eq!(talk(&long, true), b"\x00\x5b\0\0\0\0\0\0");
    // SOCKS5: no acceptable method → 0xFF.
    assert_eq!(talk(b"\x05\x01\x02", false), b"\x05\xff");
    // SOCKS5: unknown command → 7; address type 2 → 8; bad request version → 1.
    assert_eq!(
        talk(b"\x05\x01\x00\x05\x09\x00\x01\x7f\0\0\x01\0\x50", true),
        b"\x05\x00\x05\x07\x00\x01\0\0\0\0\0\0"
    );
    assert_eq!(
        talk(b"\x05\x01\x00\x05\x01\x00\x02\x7f\0\0\x01\0\x50", false),
        b"\x05\x00\x05\x08\x00\x01\0\0\0\0\0\0"
    );
    assert_eq!(
        talk(b"\x05\x01\x00\x04\x01\x00\x01\x7f\0\0\x01\0\x50", false),
        b"\x05\x00\x05\x01\x00\x01\0\0\0\0\0\0"
    );
    // SOCKS5: empty domain name → general failure.
    assert_eq!(
        talk(b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50", false),
        b"\x05\x00\x05\x01\x00\x01\0\0\0\0\0\0"
    );
    // Truncated handshakes: the client gives up; the proxy just closes.
    assert_eq!(talk(b"\x05\x02\x00", false), b"");
    // Slowloris: half a request, then nothing: closed after --handshake-timeout.
    let mut s = TcpStream::connect(agent.addr()).unwrap();
    s.write_all(b"\x05\x01\x00").unwrap();
    let mut m = [0u8; 2];
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.read_exact(&mut m).unwrap();
    s.write_all(b"\x05\x01\x00\x03\x20exa").unwrap();
    assert_eq!(read_all(&mut s), b"", "closed by the handshake timeout");
    let err = agent.stop();
    for want in [
        "not SOCKS (first byte 0x47)",
        "SOCKS4: unsupported command 3",
        "SOCKS4: user id longer than 255 bytes",
        "SOCKS4: host name longer than 255 bytes",
        "no acceptable authentication method",
        "SOCKS5: unsupported command 9",
        "SOCKS5: unsupported address type 2",
        "SOCKS5: unsupported SOCKS version 4",
        "SOCKS5: empty or malformed host name",
        "handshake not completed within 1s",
    ] {
        assert!(err.contains(want), "no log line {want:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(opens(&rec.events()).is_empty());
}

#[test]
fn unreachable_targets_get_refused_and_unreachable() {
    let dir = TempDir::new("socks-fail");
    let rec = Rec::new(&dir, "fail");
    let agent = socks(&rec, &[]);
    let closed = closed_tcp_port();
    let v5 = |req: &[u8]| -> Vec<u8> {
        let mut s = TcpStream::connect(agent.addr()).unwrap();
        s.write_all(b"\x05\x01\x00").unwrap();
        s.write_all(req).unwrap();
        read_all(&mut s)
    };
    let mut req = b"\x05\x01\x00\x01\x7f\x00\x00\x01".to_vec();
    req.extend_from_slice(&closed.to_be_bytes());
    assert_eq!(
        v5(&req),
        b"\x05\x00\x05\x05\x00\x01\0\0\0\0\0\0",
        "connection refused"
    );
    let name = b"no-such-host.invalid";
    let mut req = vec![5, 1, 0, 3, name.len() as u8];
    req.extend_from_slice(name);
    req.extend_from_slice(&80u16.to_be_bytes());
    assert_eq!(
        v5(&req),
        b"\x05\x00\x05\x04\x00\x01\0\0\0\0\0\0",
        "host unreachable"
    );
    // SOCKS4: 91.
    let mut s = TcpStream::connect(agent.addr()).unwrap();
    let mut req = b"\x04\x01".to_vec();
    req.extend_from_slice(&closed.to_be_bytes());
    req.extend_from_slice(b"\x7f\x00\x00\x01\x00");
    s.write_all(&req).unwrap();
    assert_eq!(read_all(&mut s), b"\x00\x5b\0\0\0\0\0\0");
    // curl reports the proxy's refusal.
    let out = curl_status(&[
        "--socks5",
        &agent.addr().to_string(),
        &format!("http://127.0.0.1:{closed}/"),
    ]);
    assert!(!out.status.success());
    agent.stop();
    let evs = rec.events();
    let target = format!("127.0.0.1:{closed}");
    let refused: Vec<&Value> = opens(&evs)
        .into_iter()
        .filter(|o| o["target"] == target)
        .collect();
    assert_eq!(refused.len(), 3, "{}", capagent_testkit::dump(&evs));
    for o in refused {
        assert_eq!(o["errno"], "ECONNREFUSED", "{o}");
    }
    let o = open_of(&evs, "socks5 connect", "no-such-host.invalid:80");
    assert_eq!(o["errno"], "EHOSTUNREACH", "{o}");
    assert_eq!(o["resolved"], Value::Null);
}

#[test]
fn ipv6_target_and_early_data() {
    // A SOCKS5 request for [::1]:PORT, with the first application bytes in the same write
    // as the request (they must reach the target and the records).
    let dir = TempDir::new("socks-v6");
    let rec = Rec::new(&dir, "v6");
    let l = TcpListener::bind("[::1]:0").unwrap();
    let target = l.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let got = read_all(&mut s);
        s.write_all(b"pong").unwrap();
        got
    });
    let agent = socks(&rec, &[]);
    let mut s = TcpStream::connect(agent.addr()).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut req = b"\x05\x01\x00\x05\x01\x00\x04".to_vec();
    req.extend_from_slice(&[0; 15]);
    req.push(1);
    req.extend_from_slice(&target.port().to_be_bytes());
    req.extend_from_slice(b"early ping");
    s.write_all(&req).unwrap();
    let mut head = [0u8; 2 + 4 + 16 + 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(
        &head[..6],
        b"\x05\x00\x05\x00\x00\x04",
        "IPv6 bound address: {head:?}"
    );
    assert_eq!(&head[6..22], &std::net::Ipv6Addr::LOCALHOST.octets());
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut s), b"pong");
    assert_eq!(server.join().unwrap(), b"early ping");
    agent.stop();
    let evs = rec.events();
    let open = open_of(&evs, "socks5 connect", &target.to_string());
    assert_eq!(open.ret(), 0);
    assert_eq!(open["resolved"], target.to_string());
    assert_eq!(recorded(&evs, open.fd(), "send"), b"early ping");
    assert_eq!(recorded(&evs, open.fd(), "recv"), b"pong");
    // The client is IPv4 and the target IPv6: pcapng carries the client as an IPv4-mapped
    // IPv6 address, in one stream to [::1].
    let client: SocketAddr = open["local"].as_str().unwrap().parse().unwrap();
    let streams = rec.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    let (idx, c, server) = streams[0];
    assert_eq!(server, target);
    assert_eq!(c.port(), client.port());
    assert_eq!(c.ip().to_string(), "::ffff:127.0.0.1");
    assert_eq!(rec.follow(idx), (b"early ping".to_vec(), b"pong".to_vec()));
}

#[test]
fn non_loopback_listen_warns() {
    let dir = TempDir::new("socks-warn");
    let rec = Rec::new(&dir, "warn");
    let mut a = args(&["proxy", "socks", "--listen", "0.0.0.0:0", "--auth", "u:p"]);
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let err = agent.stop();
    assert!(
        err.contains("warning: socks proxy listens on 0.0.0.0:0, reachable from other hosts"),
        "{err}"
    );
    // Loopback: no warning.
    let agent = socks(&rec, &[]);
    let err = agent.stop();
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn chained_through_upstream_socks5() {
    // curl → capagent (front) → capagent (upstream, --auth) → server; names resolved at the
    // upstream.
    let dir = TempDir::new("socks-chain");
    let front_rec = Rec::new(&dir, "front");
    let up_rec = Rec::new(&dir, "upstream");
    let response = http_response(b"through two proxies\n");
    let (server, requests) = http_server(response.clone(), 1);
    let upstream = socks(&up_rec, &["--auth", "u:p"]);
    let front = socks(
        &front_rec,
        &[
            "--upstream-proxy",
            &format!("socks5://u:p@{}", upstream.addr()),
        ],
    );
    let got = curl(&[
        "--socks5-hostname",
        &front.addr().to_string(),
        &format!("http://localhost:{}/", server.port()),
    ]);
    assert_eq!(got, b"through two proxies\n");
    let request = requests.recv_timeout(TIMEOUT).unwrap();
    front.stop();
    upstream.stop();
    let target = format!("localhost:{}", server.port());
    let fe = front_rec.events();
    let fo = open_of(&fe, "socks5 connect", &target);
    // The front proxy does not know the address the upstream resolved.
    assert_eq!(fo["resolved"], Value::Null);
    assert_eq!(recorded(&fe, fo.fd(), "send"), request);
    assert_eq!(recorded(&fe, fo.fd(), "recv"), response);
    let ue = up_rec.events();
    let uo = open_of(&ue, "socks5 connect", &target);
    check_recorded(&up_rec, &ue, uo, server, &request, &response);
}

/// tinyproxy (a real HTTP proxy) on loopback: CONNECT to any port, `BasicAuth USER PASS`.
fn tinyproxy(dir: &TempDir, user: &str, pass: &str) -> (Proc, SocketAddr) {
    let port = closed_tcp_port();
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogLevel Info\nAllow 127.0.0.1\n\
             BasicAuth {user} {pass}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("tinyproxy");
    cmd.arg("-d").arg("-c").arg(&conf);
    let p = Proc::spawn("tinyproxy", cmd);
    capagent_testkit::wait::wait_listen(p.pid(), port);
    (p, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[test]
fn chained_through_upstream_http_connect() {
    // curl → capagent (SOCKS5) → tinyproxy (CONNECT, Basic auth) → server; the name goes to
    // tinyproxy, which resolves it.
    let dir = TempDir::new("socks-http-chain");
    let rec = Rec::new(&dir, "front");
    let response = http_response(b"through an HTTP proxy\n");
    let (server, requests) = http_server(response.clone(), 1);
    let (tiny, tiny_addr) = tinyproxy(&dir, "u", "p4ss");
    let front = socks(
        &rec,
        &["--upstream-proxy", &format!("http://u:p4ss@{tiny_addr}")],
    );
    let got = curl(&[
        "--socks5-hostname",
        &front.addr().to_string(),
        &format!("http://localhost:{}/", server.port()),
    ]);
    assert_eq!(got, b"through an HTTP proxy\n");
    let request = requests.recv_timeout(TIMEOUT).unwrap();
    front.stop();
    let target = format!("localhost:{}", server.port());
    let evs = rec.events();
    let open = open_of(&evs, "socks5 connect", &target);
    assert_eq!(open.ret(), 0, "{open}");
    assert_eq!(open["resolved"], Value::Null, "tinyproxy resolved the name");
    assert_eq!(recorded(&evs, open.fd(), "send"), request);
    assert_eq!(recorded(&evs, open.fd(), "recv"), response);
    // A wrong password: tinyproxy refuses it (with a 401), the client gets a SOCKS failure and the log
    // says why.
    let bad = socks(
        &Rec::new(&dir, "bad"),
        &["--upstream-proxy", &format!("http://u:wrong@{tiny_addr}")],
    );
    let out = curl_status(&[
        "--socks5-hostname",
        &bad.addr().to_string(),
        &format!("http://localhost:{}/", server.port()),
    ]);
    assert!(!out.status.success(), "{out:?}");
    let log = bad.stop();
    assert!(
        log.contains("rejected the username/password (401 Unauthorized)"),
        "{log}"
    );
    drop(tiny);
}

fn reversed(b: &[u8]) -> Vec<u8> {
    b.iter().rev().copied().collect()
}

/// A SOCKS5 CONNECT (no authentication, greeting and request in one write) through `proxy`
/// to the IPv4 `target`; checks the success reply (whose bound address is IPv4, 10 bytes).
fn socks5_connect(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let SocketAddr::V4(t) = target else {
        panic!("IPv4 target expected: {target}")
    };
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut req = b"\x05\x01\x00\x05\x01\x00\x01".to_vec();
    req.extend_from_slice(&t.ip().octets());
    req.extend_from_slice(&t.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[..5], b"\x05\x00\x05\x00\x00", "{head:?}");
    s
}

#[test]
fn many_concurrent_connections_all_relayed_and_recorded() {
    // Connections arrive at once from many clients; capagent accepts them on one listener per
    // worker thread (SO_REUSEPORT). Every one must be relayed and recorded, each with its own
    // bytes, whichever worker took it.
    const CLIENTS: usize = 16;
    const EACH: usize = 25;
    let dir = TempDir::new("socks-many");
    let rec = Rec::new(&dir, "many");
    let (target, got) = half_close_server(CLIENTS * EACH, reversed);
    let agent = socks(&rec, &[]);
    let proxy = agent.addr();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            thread::spawn(move || {
                let mut sent = Vec::new();
                for i in 0..EACH {
                    let payload = pattern(100 + 37 * i + c, (c * EACH + i) as u64);
                    let mut s = socks5_connect(proxy, target);
                    s.write_all(&payload).unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                    assert_eq!(read_all(&mut s), reversed(&payload));
                    let client = s.local_addr().unwrap();
                    sent.push((client, payload));
                }
                sent
            })
        })
        .collect();
    let sent: Vec<(SocketAddr, Vec<u8>)> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let mut at_target: Vec<Vec<u8>> = (0..sent.len()).map(|_| got.recv().unwrap()).collect();
    let mut want: Vec<Vec<u8>> = sent.iter().map(|s| s.1.clone()).collect();
    at_target.sort();
    want.sort();
    assert!(at_target == want, "the target got other bytes than sent");
    agent.stop();
    let evs = rec.events();
    assert_eq!(opens(&evs).len(), CLIENTS * EACH);
    let streams = rec.streams();
    assert_eq!(streams.len(), CLIENTS * EACH, "pcapng streams");
    for (client, payload) in &sent {
        let open = opens(&evs)
            .into_iter()
            .find(|o| o["local"] == client.to_string())
            .unwrap_or_else(|| panic!("no open record for {client}"));
        assert_eq!(open.ret(), 0, "{open}");
        assert_eq!(recorded(&evs, open.fd(), "send"), *payload, "{client}");
        assert_eq!(recorded(&evs, open.fd(), "recv"), reversed(payload));
        let kinds: Vec<&str> = conn_events(&evs, open.fd())
            .iter()
            .map(|e| e.syscall())
            .collect();
        assert_eq!(kinds.last(), Some(&"close"), "{client}: {kinds:?}");
    }
    // A sample of the streams, byte for byte in tshark.
    for (client, payload) in sent.iter().step_by(50) {
        let (idx, server) = stream_of(&rec, *client);
        assert_eq!(server, target);
        assert_eq!(rec.follow(idx), (payload.clone(), reversed(payload)));
    }
}

#[test]
fn a_port_in_use_is_refused() {
    // The listeners share their port among capagent's own worker threads only: a second
    // proxy on the same address fails as a plain bind would, with a one-line error.
    let dir = TempDir::new("socks-inuse");
    let rec = Rec::new(&dir, "first");
    let agent = socks(&rec, &[]);
    let addr = agent.addr().to_string();
    for kind in ["socks", "http"] {
        let mut cmd = Command::new(capagent_testkit::capagent());
        cmd.args(["proxy", kind, "--listen", &addr, "--no-record"]);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{kind}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim(),
            format!("capagent: cannot listen on {addr}: Address already in use (os error 98)"),
            "{kind}"
        );
    }
    // The first one still serves.
    let (target, _got) = half_close_server(1, reversed);
    let mut s = socks5_connect(agent.addr(), target);
    s.write_all(b"abc").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut s), b"cba");
    agent.stop();
}
