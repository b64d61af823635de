//! The proxy tests' side (no root): a `capagent proxy ...` process, servers the tests
//! control, and what capagent recorded (JSON lines, and tshark on the pcapng).

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    Ev as _, Proc, TIMEOUT, TempDir, capagent, parse_json_lines, strings, tshark_r, unhex, wait_for,
};

/// A running `capagent proxy ...`.
pub struct Agent {
    pub proc: Proc,
    /// The addresses it listens on, in the order it printed them.
    pub addrs: Vec<SocketAddr>,
}

impl Agent {
    /// Starts `capagent ARGS` and waits until it printed `listening on` `listeners` times.
    pub fn start(args: &[String], listeners: usize) -> Agent {
        let mut cmd = Command::new(capagent());
        cmd.args(args);
        Agent::spawn(cmd, listeners)
    }

    /// Starts `cmd` (a `capagent proxy ...`, maybe in a namespace) and waits until it
    /// printed `listening on` `listeners` times.
    pub fn spawn(cmd: Command, listeners: usize) -> Agent {
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let proc = Proc::spawn("capagent", cmd);
        let addrs = wait_for(TIMEOUT, || {
            let addrs: Vec<SocketAddr> = proc
                .stderr_lines()
                .iter()
                .filter_map(|l| l.rsplit_once(" listening on ").map(|(_, a)| a))
                .map(|a| a.split_whitespace().next().unwrap_or(a).parse().unwrap())
                .collect();
            (addrs.len() >= listeners).then_some(addrs)
        })
        .unwrap_or_else(|| {
            panic!(
                "capagent {args:?} did not start listening: {}",
                proc.stderr()
            )
        });
        Agent { proc, addrs }
    }

    /// Starts `capagent ARGS` with one listener, recording into `rec`.
    pub fn recording(rec: &Rec, args: &[&str]) -> Agent {
        let mut a = strings(args);
        a.extend(rec.args());
        Agent::start(&a, 1)
    }

    /// `capagent proxy forward --listen 127.0.0.1:0 --to TARGET MORE...`, recording into
    /// `rec`.
    pub fn forward(rec: &Rec, target: SocketAddr, more: &[&str]) -> Agent {
        let target = target.to_string();
        let mut a = vec![
            "proxy",
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &target,
        ];
        a.extend_from_slice(more);
        Agent::recording(rec, &a)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// SIGTERM, so that it writes out every record; checks it exits 0; returns its stderr.
    pub fn stop(mut self) -> String {
        self.proc.terminate(TIMEOUT)
    }
}

/// Where a test's records go: `--format json -o DIR/NAME.jsonl -w DIR/NAME.pcapng`.
pub struct Rec {
    pub jsonl: String,
    pub pcap: String,
}

impl Rec {
    pub fn new(dir: &TempDir, name: &str) -> Rec {
        Rec {
            jsonl: dir.join(&format!("{name}.jsonl")).display().to_string(),
            pcap: dir.join(&format!("{name}.pcapng")).display().to_string(),
        }
    }

    pub fn args(&self) -> Vec<String> {
        ["--format", "json", "-o", &self.jsonl, "-w", &self.pcap]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    pub fn events(&self) -> Vec<Value> {
        parse_json_lines(&std::fs::read_to_string(&self.jsonl).unwrap())
    }

    /// The TCP streams in the pcapng: (stream index, client, server), from their SYNs.
    pub fn streams(&self) -> Vec<(u32, SocketAddr, SocketAddr)> {
        let out = tshark_r(
            &self.pcap,
            &[
                "-Y",
                "tcp.flags.syn == 1 && tcp.flags.ack == 0",
                "-T",
                "fields",
                "-e",
                "tcp.stream",
                "-e",
                "ip.src",
                "-e",
                "ipv6.src",
                "-e",
                "tcp.srcport",
                "-e",
                "ip.dst",
                "-e",
                "ipv6.dst",
                "-e",
                "tcp.dstport",
            ],
        );
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let ip = |a: &str, b: &str| {
                    if a.is_empty() {
                        b.to_string()
                    } else {
                        a.to_string()
                    }
                };
                let sock = |ip: String, port: &str| -> SocketAddr {
                    format!(
                        "{}:{port}",
                        if ip.contains(':') {
                            format!("[{ip}]")
                        } else {
                            ip
                        }
                    )
                    .parse()
                    .unwrap()
                };
                (
                    f[0].parse().unwrap(),
                    sock(ip(f[1], f[2]), f[3]),
                    sock(ip(f[4], f[5]), f[6]),
                )
            })
            .collect()
    }

    /// The bytes of TCP stream `stream` as tshark reassembles them: (client to server,
    /// server to client).
    pub fn follow(&self, stream: u32) -> (Vec<u8>, Vec<u8>) {
        let out = tshark_r(&self.pcap, &["-qz", &format!("follow,tcp,raw,{stream}")]);
        let mut up = Vec::new();
        let mut down = Vec::new();
        let mut body = false;
        for line in out.lines() {
            if line.starts_with("Node 1:") {
                body = true;
                continue;
            }
            if !body || line.starts_with("=====") || line.is_empty() {
                continue;
            }
            match line.strip_prefix('\t') {
                Some(hex) => down.extend(unhex(hex.trim())),
                None => up.extend(unhex(line.trim())),
            }
        }
        (up, down)
    }

    /// The comments of the pcapng's TCP packets with a payload (`edited by capagent: ...`),
    /// one line a packet.
    pub fn comments(&self) -> String {
        tshark_r(
            &self.pcap,
            &["-Y", "tcp.len > 0", "-T", "fields", "-e", "frame.comment"],
        )
    }

    /// UDP payloads in the pcapng: (source, destination, payload).
    pub fn datagrams(&self) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        let out = tshark_r(
            &self.pcap,
            &[
                "-Y",
                "udp",
                "-T",
                "fields",
                "-e",
                "ip.src",
                "-e",
                "udp.srcport",
                "-e",
                "ip.dst",
                "-e",
                "udp.dstport",
                "-e",
                "udp.payload",
            ],
        );
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (
                    format!("{}:{}", f[0], f[1]).parse().unwrap(),
                    format!("{}:{}", f[2], f[3]).parse().unwrap(),
                    unhex(&f[4].replace(':', "")),
                )
            })
            .collect()
    }
}

/// The records of connection `fd` of kind `ty` (and data direction `dir`).
pub fn conn_events(evs: &[Value], fd: i64) -> Vec<&Value> {
    evs.iter().filter(|e| e.fd() == fd).collect()
}

/// The payload of connection `fd`'s data records in direction `dir` (`send`: client to
/// target), concatenated.
pub fn recorded(evs: &[Value], fd: i64, dir: &str) -> Vec<u8> {
    evs.iter()
        .filter(|e| e.ty() == "data" && e.fd() == fd && e["dir"] == dir)
        .flat_map(|e| e.payload())
        .collect()
}

/// The `open` records.
pub fn opens(evs: &[Value]) -> Vec<&Value> {
    evs.iter().filter(|e| e.ty() == "open").collect()
}

/// The `open` record whose `proxy` is `proxy` and target `target` (exactly one).
pub fn open_of<'a>(evs: &'a [Value], proxy: &str, target: &str) -> &'a Value {
    let found: Vec<&Value> = opens(evs)
        .into_iter()
        .filter(|e| e["proxy"] == proxy && e["target"] == target)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want one open {proxy} {target}; records:\n{}",
        crate::dump(evs)
    );
    found[0]
}

/// A server thread serving `conns` connections one after the other: it reads each request
/// until the end of its HTTP head (or EOF), answers `response`, and closes. The requests
/// come back through the channel.
pub fn http_server(response: Vec<u8>, conns: usize) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for _ in 0..conns {
            let Ok((mut s, _)) = l.accept() else { return };
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(&response);
            let _ = s.shutdown(Shutdown::Write);
            // Wait for the client's end, so the proxy sees an orderly close both ways.
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(req);
        }
    });
    (addr, rx)
}

/// An HTTP response with a `Content-Length` body and `Connection: close`.
pub fn http_response(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A TCP server thread that, for each of `conns` connections, reads everything until the
/// client's end, then answers `reply(received)` and closes. What it received comes back
/// through the channel.
pub fn half_close_server(
    conns: usize,
    reply: fn(&[u8]) -> Vec<u8>,
) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for _ in 0..conns {
            let Ok((mut s, _)) = l.accept() else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                let mut got = Vec::new();
                if s.read_to_end(&mut got).is_err() {
                    return;
                }
                let _ = s.write_all(&reply(&got));
                let _ = s.shutdown(Shutdown::Write);
                let _ = tx.send(got);
            });
        }
    });
    (addr, rx)
}

/// Runs `curl ARGS` and returns its stdout bytes; panics when it fails.
pub fn curl(args: &[&str]) -> Vec<u8> {
    let out = curl_status(args);
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `curl -sS --max-time 20 ARGS`.
pub fn curl_status(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("cannot run curl")
}

/// A free UDP port on 127.0.0.1 (bound and released).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free TCP port on 127.0.0.1 that nothing listens on (bound and released).
pub fn closed_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP echo server: socat, which answers each datagram with the same bytes. Waits until it
/// answers.
pub fn udp_echo() -> (Proc, SocketAddr) {
    let port = free_udp_port();
    let mut cmd = Command::new("socat");
    cmd.args([
        "-T",
        "30",
        &format!("UDP4-RECVFROM:{port},bind=127.0.0.1,fork"),
        "PIPE",
    ]);
    let proc = Proc::spawn("socat udp echo", cmd);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 16];
    loop {
        probe.send_to(b"ping", addr).unwrap();
        if let Ok((4, _)) = probe.recv_from(&mut buf) {
            return (proc, addr);
        }
        assert!(Instant::now() < deadline, "socat UDP echo does not answer");
    }
}

/// Reads from `s` until EOF (or error, such as a reset), with a timeout.
pub fn read_all(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}
