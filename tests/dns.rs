//! Integration tests of `capagent dns` with dig (UDP and TCP) on loopback, no root: spoofed
//! names, forwarded names (a second `capagent dns` as the upstream server), the answers for
//! unmatched names, malformed queries; each checking the answers dig got and the recorded
//! bytes (tshark dissecting the pcapng as DNS, and the JSON records).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use capagent_testkit::{Proc, TIMEOUT, TempDir, parse_json_lines, tshark_r};
use serde_json::Value;

struct Dns {
    proc: Proc,
    addr: SocketAddr,
}

impl Dns {
    fn start(args: &[&str]) -> Dns {
        let argv: Vec<String> = ["dns", "--listen", "127.0.0.1:0"]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect();
        let a = capagent_testkit::proxy::Agent::start(&argv, 1);
        let addr = a.addr();
        Dns { proc: a.proc, addr }
    }

    /// `dig @ADDR -p PORT ARGS... +tries=1 +time=5`: stdout.
    fn dig(&self, args: &[&str]) -> String {
        let out = Command::new("dig")
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string(), "+tries=1", "+time=5"])
            .args(args)
            .output()
            .expect("dig");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "dig {args:?}: {text}");
        text
    }

    fn stop(mut self) -> String {
        unsafe {
            libc::kill(self.proc.pid() as i32, libc::SIGTERM);
        }
        let st = self.proc.wait(TIMEOUT);
        assert!(
            st.success(),
            "capagent dns exited with {st}: {}",
            self.proc.stderr()
        );
        self.proc.stderr()
    }
}

/// The `status:` of dig's header line.
fn status(dig: &str) -> &str {
    dig.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in {dig}"))
}

/// A dig answer: `+noall +answer` lines, whitespace-normalized.
fn answers(dig: &str) -> Vec<String> {
    dig.lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn b64(e: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(e["payload_b64"].as_str().unwrap())
        .unwrap()
}

/// Spoofed names over UDP and TCP: A and AAAA with the configured addresses and TTL, for the
/// pattern's names only; others NXDOMAIN (no upstream). The pcapng holds the queries and
/// answers as DNS that tshark dissects (names, addresses, TTLs, rcodes), the UDP ones as
/// datagrams between dig and the server, the TCP ones as a stream; the JSON records hold the
/// exact bytes dig got.
#[test]
fn spoofs_names_udp_and_tcp() {
    let dir = TempDir::new("dns-spoof");
    let pcap = dir.join("d.pcapng").display().to_string();
    let jsonl = dir.join("d.jsonl").display().to_string();
    let dns = Dns::start(&[
        "--answer",
        "10.1.2.3",
        "--answer6",
        "fd00::5",
        "--name",
        "*.example.com",
        "--name",
        "exact.test",
        "--ttl",
        "77",
        "-w",
        &pcap,
        "--format",
        "json",
        "-o",
        &jsonl,
    ]);
    let a = dns.dig(&["+noall", "+answer", "www.example.com", "A"]);
    assert_eq!(answers(&a), vec!["www.example.com. 77 IN A 10.1.2.3"]);
    let aaaa = dns.dig(&["+noall", "+answer", "+tcp", "deep.sub.example.com", "AAAA"]);
    assert_eq!(
        answers(&aaaa),
        vec!["deep.sub.example.com. 77 IN AAAA fd00::5"]
    );
    let exact = dns.dig(&["+noall", "+answer", "EXACT.test", "A"]);
    assert_eq!(answers(&exact), vec!["EXACT.test. 77 IN A 10.1.2.3"]);
    let other = dns.dig(&["example.com", "A"]);
    assert_eq!(status(&other), "NXDOMAIN");
    let other = dns.dig(&["+tcp", "sub.exact.test", "A"]);
    assert_eq!(status(&other), "NXDOMAIN");
    let mx = dns.dig(&["www.example.com", "MX"]);
    assert_eq!(status(&mx), "NOERROR");
    assert!(mx.contains("ANSWER: 0,"), "{mx}");
    let port = dns.addr.port();
    dns.stop();

    let fields = tshark_r(
        &pcap,
        &[
            "-d",
            &format!("udp.port=={port},dns"),
            "-d",
            &format!("tcp.port=={port},dns"),
            "-Y",
            "dns.flags.response == 1",
            "-T",
            "fields",
            "-e",
            "ip.proto",
            "-e",
            "dns.qry.name",
            "-e",
            "dns.flags.rcode",
            "-e",
            "dns.a",
            "-e",
            "dns.aaaa",
            "-e",
            "dns.resp.ttl",
        ],
    );
    assert_eq!(
        fields,
        "17\twww.example.com\t0\t10.1.2.3\t\t77\n\
         6\tdeep.sub.example.com\t0\t\tfd00::5\t77\n\
         17\tEXACT.test\t0\t10.1.2.3\t\t77\n\
         17\texample.com\t3\t\t\t\n\
         6\tsub.exact.test\t3\t\t\t\n\
         17\twww.example.com\t0\t\t\t\n"
    );
    let queries = tshark_r(
        &pcap,
        &[
            "-d",
            &format!("udp.port=={port},dns"),
            "-d",
            &format!("tcp.port=={port},dns"),
            "-Y",
            "dns.flags.response == 0",
            "-T",
            "fields",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
            "-e",
            "tcp.dstport",
            "-e",
            "dns.qry.name",
            "-e",
            "dns.qry.type",
        ],
    );
    assert_eq!(
        queries,
        format!(
            "127.0.0.1\t{port}\t\twww.example.com\t1\n\
             127.0.0.1\t\t{port}\tdeep.sub.example.com\t28\n\
             127.0.0.1\t{port}\t\tEXACT.test\t1\n\
             127.0.0.1\t{port}\t\texample.com\t1\n\
             127.0.0.1\t\t{port}\tsub.exact.test\t1\n\
             127.0.0.1\t{port}\t\twww.example.com\t15\n"
        )
    );
    // JSON: the first query's answer as dig got it.
    let evs = parse_json_lines(&std::fs::read_to_string(&jsonl).unwrap());
    let opens: Vec<&Value> = evs.iter().filter(|e| e["type"] == "open").collect();
    assert_eq!(opens.len(), 6);
    assert_eq!(opens[0]["proxy"], "dns");
    assert_eq!(opens[0]["target"], "A www.example.com.: spoofed 10.1.2.3");
    let fd = &opens[0]["fd"];
    let data: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "data" && &e["fd"] == fd)
        .collect();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["dir"], "send");
    assert_eq!(data[1]["dir"], "recv");
    let (q, r) = (b64(data[0]), b64(data[1]));
    assert_eq!(q[..2], r[..2], "same ID");
    assert_eq!(r[2] & 0x80, 0x80, "a response");
    // The A record's address is the answer's last 4 bytes (no OPT record: the query had
    // EDNS, so check where it is instead).
    let needle = [0, 1, 0, 1, 0, 0, 0, 77, 0, 4, 10, 1, 2, 3];
    assert!(r.windows(needle.len()).any(|w| w == needle), "{r:?}");
}

/// Names that are not spoofed go to the upstream server (another capagent dns) over UDP and
/// over TCP, and its answers come back; an unreachable upstream gives SERVFAIL; without an
/// upstream, `--unmatched refused` answers REFUSED. The upstream exchange is recorded too.
#[test]
fn forwards_other_names() {
    let dir = TempDir::new("dns-forward");
    let upstream = Dns::start(&["--answer", "192.0.2.7", "--ttl", "30"]);
    let pcap = dir.join("f.pcapng").display().to_string();
    let up = upstream.addr.to_string();
    let dns = Dns::start(&[
        "--answer",
        "10.9.9.9",
        "--name",
        "*.lab.test",
        "--upstream",
        &up,
        "-w",
        &pcap,
        "-o",
        "/dev/null",
    ]);
    let a = dns.dig(&["+noall", "+answer", "app.lab.test"]);
    assert_eq!(answers(&a), vec!["app.lab.test. 60 IN A 10.9.9.9"]);
    let f = dns.dig(&["+noall", "+answer", "www.other.org"]);
    assert_eq!(answers(&f), vec!["www.other.org. 30 IN A 192.0.2.7"]);
    let f = dns.dig(&["+noall", "+answer", "+tcp", "tcp.other.org"]);
    assert_eq!(answers(&f), vec!["tcp.other.org. 30 IN A 192.0.2.7"]);
    let port = dns.addr.port();
    dns.stop();
    upstream.stop();

    let up_port = upstream_port(&up);
    let fields = tshark_r(
        &pcap,
        &[
            "-d",
            &format!("udp.port=={port},dns"),
            "-d",
            &format!("tcp.port=={port},dns"),
            "-d",
            &format!("udp.port=={up_port},dns"),
            "-d",
            &format!("tcp.port=={up_port},dns"),
            "-Y",
            "dns.flags.response == 1",
            "-T",
            "fields",
            "-e",
            "ip.proto",
            "-e",
            "udp.srcport",
            "-e",
            "tcp.srcport",
            "-e",
            "dns.qry.name",
            "-e",
            "dns.a",
        ],
    );
    assert_eq!(
        fields,
        format!(
            "17\t{port}\t\tapp.lab.test\t10.9.9.9\n\
             17\t{up_port}\t\twww.other.org\t192.0.2.7\n\
             17\t{port}\t\twww.other.org\t192.0.2.7\n\
             6\t\t{up_port}\ttcp.other.org\t192.0.2.7\n\
             6\t\t{port}\ttcp.other.org\t192.0.2.7\n"
        )
    );

    // An upstream that does not answer: SERVFAIL after --upstream-timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let up = silent.local_addr().unwrap().to_string();
    let dns = Dns::start(&[
        "--answer",
        "10.9.9.9",
        "--name",
        "x.test",
        "--upstream",
        &up,
        "--upstream-timeout",
        "1",
        "--no-record",
    ]);
    assert_eq!(status(&dns.dig(&["y.test"])), "SERVFAIL");
    // TCP to a port where nothing listens: SERVFAIL at once.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    drop(closed);
    assert_eq!(status(&dns.dig(&["+tcp", "y.test"])), "SERVFAIL");
    dns.stop();

    let dns = Dns::start(&[
        "--answer",
        "10.9.9.9",
        "--name",
        "x.test",
        "--unmatched",
        "refused",
        "--no-record",
    ]);
    assert_eq!(status(&dns.dig(&["y.test"])), "REFUSED");
    assert_eq!(status(&dns.dig(&["x.test"])), "NOERROR");
    dns.stop();
}

fn upstream_port(addr: &str) -> u16 {
    addr.parse::<SocketAddr>().unwrap().port()
}

/// Malformed queries: a short datagram gets nothing (and the server goes on), a header with
/// garbage after it gets FORMERR with the same ID, an update (opcode 5) NOTIMP; over TCP a
/// truncated length-prefixed message is held until the handshake timeout, then the
/// connection closes.
#[test]
fn malformed_queries() {
    let dns = Dns::start(&[
        "--answer",
        "10.0.0.1",
        "--handshake-timeout",
        "1",
        "--no-record",
    ]);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.connect(dns.addr).unwrap();
    s.send(b"short").unwrap();
    let mut buf = [0u8; 512];
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        s.recv(&mut buf).is_err(),
        "no reply to a datagram shorter than a header"
    );
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // ID 0xbeef, standard query, 1 question, then garbage.
    let mut junk = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(b"\x05hello\xc0\xff");
    s.send(&junk).unwrap();
    let n = s.recv(&mut buf).unwrap();
    assert!(n >= 12);
    assert_eq!(&buf[..2], &[0xbe, 0xef]);
    assert_eq!(buf[2] & 0x80, 0x80, "a response");
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
    // Opcode 5 (UPDATE) with an empty zone section: NOTIMP.
    let update = [0x12, 0x34, 0x28, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    s.send(&update).unwrap();
    let n = s.recv(&mut buf).unwrap();
    assert!(n >= 12);
    assert_eq!((&buf[..2], buf[3] & 0x0f), (&[0x12, 0x34][..], 4), "NOTIMP");
    // TCP: a length prefix promising more than comes: closed after the handshake timeout.
    use std::io::{Read as _, Write as _};
    let mut t = std::net::TcpStream::connect(dns.addr).unwrap();
    t.set_read_timeout(Some(TIMEOUT)).unwrap();
    t.write_all(&[0, 40, 0x12, 0x34]).unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    let _ = t.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(start.elapsed() < Duration::from_secs(10));
    // Still answering.
    assert_eq!(
        answers(&dns.dig(&["+noall", "+answer", "a.b"])),
        vec!["a.b. 60 IN A 10.0.0.1"]
    );
    let log = dns.stop();
    assert!(log.contains("malformed query: FORMERR"), "{log}");
    assert!(log.contains("NOTIMP"), "{log}");
    assert!(log.contains("shorter than a DNS header"), "{log}");
}
