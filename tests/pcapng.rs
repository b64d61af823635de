//! Root integration tests of `capagent trace -w FILE.pcapng`: real clients and servers in a
//! network namespace of each test's own, traced by the real binary; the pcapng file is read
//! back with tshark (4.0), which must read it without complaint and dissect the synthetic
//! streams: the bytes of a TCP conversation, an HTTP request, a DNS query.
//!
//! Needs root and tshark. Run one at a time, with the capagent binary in
//! `CAPAGENT_BIN` (`cargo xtask test` sets it):
//! `cargo test -p capagent-tests --features root-tests --test pcapng -- --test-threads=1`.

use std::{
    fs,
    process::{Command, Stdio},
};

use capagent_testkit::*;

const JSON: &[&str] = &["--format", "json"];

fn args_w(file: &str) -> Vec<&str> {
    let mut v = JSON.to_vec();
    v.extend(["-w", file]);
    v
}

// ---------------------------------------------------------------------------------------------
// a. TCP, python client and server.

#[test]
fn tcp_python_conversation() {
    let ns = Netns::new("pcap-tcp");
    let dir = TempDir::new("pcap-tcp");
    let mut srv = Server::reply(&ns, &dir, 1, "r:12", b"Boo! and more");
    let cmd = client_argv(
        &ns,
        &dir,
        "inet",
        "127.0.0.1",
        srv.port,
        &[&format!("w:{}", hex(b"Hello World!")), "r:13"],
    );
    let pcap = dir.join("out.pcapng");
    let pcap = pcap.to_str().unwrap();
    let run = trace(&dir, &with_cmd(&args_w(pcap), &cmd), None);
    assert!(run.status.success(), "{}", run.describe());
    assert_eq!(srv.recv(0), b"Hello World!");
    srv.done();
    assert_eq!(kv(&run.stdout, "GOT"), hex(b"Boo! and more"));
    let pid: u32 = kv(&run.stdout, "PID").parse().unwrap();
    // The JSON output is still written.
    assert!(!run.events.is_empty(), "{}", run.describe());

    let list = tshark_r(pcap, &[]);
    assert!(list.contains("[SYN]"), "{list}");
    let (sent, got) = follow_raw(&tshark_r(pcap, &["-qz", "follow,tcp,raw,0"]));
    assert_eq!(sent, b"Hello World!", "client → server bytes");
    assert_eq!(got, b"Boo! and more", "server → client bytes");

    let comments = tshark_r(pcap, &["-T", "fields", "-e", "frame.comment"]);
    let want_pid = format!("pid={pid} ");
    let want_comm = format!("comm={} ", python_comm());
    assert!(
        comments
            .lines()
            .any(|l| l.starts_with(&want_pid) && l.contains(&want_comm)),
        "comments: {comments}"
    );
    // Directions: the client's data is outbound (2), the server's inbound (1).
    let dirs = tshark_r(
        pcap,
        &[
            "-Y",
            "tcp.len > 0",
            "-T",
            "fields",
            "-e",
            "frame.packet_flags_direction",
            "-e",
            "tcp.len",
        ],
    );
    let dirs: Vec<&str> = dirs.lines().collect();
    assert_eq!(dirs, ["0x00000002\t12", "0x00000001\t13"], "{dirs:?}");
}

// ---------------------------------------------------------------------------------------------
// b. curl against python's http.server.

#[test]
fn curl_http_request() {
    let ns = Netns::new("pcap-curl");
    let dir = TempDir::new("pcap-curl");
    let www = dir.join("www");
    fs::create_dir(&www).unwrap();
    let content = b"capagent pcapng test\n";
    fs::write(www.join("file.txt"), content).unwrap();
    let port = 8080u16;
    let _httpd = python_http_server(&ns, &www, "127.0.0.1", port);
    let url = format!("http://127.0.0.1:{port}/file.txt?x=1");
    let cmd = ns.argv(&["curl", "-s", &url]);
    let pcap = dir.join("curl.pcapng");
    let pcap = pcap.to_str().unwrap();
    let run = trace(&dir, &with_cmd(&args_w(pcap), &cmd), None);
    assert!(run.status.success(), "{}", run.describe());
    assert_eq!(run.stdout_bytes, content, "curl's output");
    let uris = tshark_r(
        pcap,
        &[
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
        ],
    );
    assert_eq!(uris.trim(), "/file.txt?x=1", "{uris}");
    let codes = tshark_r(
        pcap,
        &[
            "-Y",
            "http.response",
            "-T",
            "fields",
            "-e",
            "http.response.code",
        ],
    );
    assert_eq!(codes.trim(), "200");
}

/// A download traced with a small snap length: every recv is cut, and the pcapng says so as
/// tcpdump would (headers with the real lengths, EPB original length > captured length), so
/// Wireshark's TCP analysis sees no lost segment, and the bytes kept sit at their real offsets.
#[test]
fn snaplen_cut_download_is_not_lost() {
    let ns = Netns::new("pcap-cut");
    let dir = TempDir::new("pcap-cut");
    let www = dir.join("www");
    fs::create_dir(&www).unwrap();
    // 3 MB that differ at every offset (a byte pattern a shifted copy would not match).
    let body: Vec<u8> = (0..3_000_000u32)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
        .take(3_000_000)
        .collect();
    fs::write(www.join("big.bin"), &body).unwrap();
    let port = 8080u16;
    let _httpd = python_http_server(&ns, &www, "127.0.0.1", port);
    let got = dir.join("got.bin");
    let url = format!("http://127.0.0.1:{port}/big.bin");
    let cmd = ns.argv(&["curl", "-s", "-o", got.to_str().unwrap(), &url]);
    let pcap = dir.join("cut.pcapng");
    let pcap = pcap.to_str().unwrap();
    let mut args = args_w(pcap);
    args.extend(["--snaplen", "1024"]);
    let run = trace(&dir, &with_cmd(&args, &cmd), None);
    assert!(run.status.success(), "{}", run.describe());
    assert!(fs::read(&got).unwrap() == body, "curl's download differs");

    // The JSON records keep their meaning: total = what the call moved, captured = kept.
    let recvs: Vec<&serde_json::Value> = run
        .events
        .iter()
        .filter(|e| e.ty() == "data" && e["dir"] == "recv" && e.ret() > 0)
        .collect();
    let moved: i64 = recvs.iter().map(|e| e.int("total")).sum();
    assert!(moved > body.len() as i64, "{moved}");
    assert!(
        recvs
            .iter()
            .any(|e| e.int("captured") == 1024 && e.int("total") > 1024 && e["truncated"] == true),
        "no cut recv in the JSON records"
    );

    // No loss in Wireshark's eyes.
    let expert = tshark_r(pcap, &["-q", "-z", "expert"]);
    assert!(
        !expert.contains("not captured"),
        "tshark sees lost segments: {expert}"
    );
    let lost = tshark_r(
        pcap,
        &[
            "-Y",
            "tcp.analysis.lost_segment || tcp.analysis.ack_lost_segment",
        ],
    );
    assert_eq!(lost.trim(), "", "lost segments: {lost}");
    // Cut frames are flagged: captured length < length on the wire, "Packet size limited
    // during capture" where a dissector ran into the end of what was kept.
    let cut = tshark_r(pcap, &["-Y", "frame.cap_len < frame.len"]);
    assert!(cut.lines().count() >= 20, "cut frames: {cut}");
    // (chargen's dissector reads its segment to its real end, whatever the bytes.)
    let chargen = format!("tcp.port=={port},chargen");
    let short = tshark_r(
        pcap,
        &[
            "--disable-protocol",
            "http",
            "-d",
            &chargen,
            "-Y",
            "_ws.short",
            "-V",
        ],
    );
    assert!(
        short.matches("[Packet size limited during capture").count() >= 20,
        "{short}"
    );
    // Checksums: right where the packet is whole, not computable where it is cut; never bad.
    let sums = tshark_r(
        pcap,
        &[
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
            "-Y",
            "tcp.checksum.status == 0 || ip.checksum.status == 0",
        ],
    );
    assert_eq!(sums.trim(), "", "bad checksums: {sums}");

    // The server's stream: the real lengths add up to the response, and every byte kept is
    // the response's byte at its offset (relative sequence number - 1).
    let port_filter = format!("tcp.srcport == {port} && tcp.len > 0");
    let segs = tshark_r(
        pcap,
        &[
            "--disable-protocol",
            "http",
            "-Y",
            &port_filter,
            "-T",
            "fields",
            "-e",
            "tcp.seq",
            "-e",
            "tcp.len",
            "-e",
            "tcp.payload",
        ],
    );
    let segs: Vec<(usize, usize, Vec<u8>)> = segs
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                unhex(&f.get(2).unwrap_or(&"").replace(':', "")),
            )
        })
        .collect();
    let first = &segs[0].2;
    let head_len = first
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the response head in the first segment")
        + 4;
    let mut response = first[..head_len].to_vec();
    response.extend_from_slice(&body);
    let real: usize = segs.iter().map(|s| s.1).sum();
    assert_eq!(real, response.len(), "real lengths");
    let mut next = 1;
    let mut kept = 0;
    for (seq, len, bytes) in &segs {
        assert_eq!(*seq, next, "contiguous sequence numbers");
        assert!(bytes.len() <= *len);
        assert!(
            bytes[..] == response[seq - 1..seq - 1 + bytes.len()],
            "kept bytes of the segment at {seq} differ"
        );
        next += len;
        kept += bytes.len();
    }
    assert!(
        kept >= 20 * 1024 && kept < real / 10,
        "kept {kept} of {real}"
    );
}

// ---------------------------------------------------------------------------------------------
// c. UDP: dig.

/// Answers one DNS query with an A record 127.0.0.7 (as in tests/trace.rs).
const DNS_PY: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print("READY", s.getsockname()[1], flush=True)
q, peer = s.recvfrom(4096)
i = 12
while q[i] != 0:
    i += 1 + q[i]
question = q[12:i + 5]
resp = (q[:2] + bytes.fromhex("8180" "0001" "0001" "0000" "0000") + question
        + bytes.fromhex("c00c" "0001" "0001" "0000003c" "0004" "7f000007"))
s.sendto(resp, peer)
print("DONE", flush=True)
"#;

#[test]
fn udp_dig_query() {
    let ns = Netns::new("pcap-udp");
    let dir = TempDir::new("pcap-udp");
    let mut srv = Server::script(&ns, &dir, "dns.py", DNS_PY, &[]);
    let cmd = ns.argv(&[
        "dig",
        "@127.0.0.1",
        "-p",
        &srv.port.to_string(),
        "example.test",
        "A",
        "+tries=1",
        "+time=2",
    ]);
    let pcap = dir.join("dig.pcapng");
    let pcap = pcap.to_str().unwrap();
    let run = trace(&dir, &with_cmd(&args_w(pcap), &cmd), None);
    assert!(run.status.success(), "{}", run.describe());
    srv.done();
    assert!(run.stdout.contains("127.0.0.7"), "{}", run.stdout);
    // -d: dig's server port is not 53.
    let decode = format!("udp.port=={},dns", srv.port);
    let names = tshark_r(
        pcap,
        &[
            "-d",
            &decode,
            "-Y",
            "dns",
            "-T",
            "fields",
            "-e",
            "dns.qry.name",
            "-e",
            "dns.flags.response",
        ],
    );
    let lines: Vec<&str> = names.lines().collect();
    assert_eq!(
        lines,
        ["example.test\t0", "example.test\t1"],
        "query and answer: {names}"
    );
}

// ---------------------------------------------------------------------------------------------
// d. `-w -` piped into `tshark -r -`.

#[test]
fn stdout_into_tshark() {
    let ns = Netns::new("pcap-pipe");
    let dir = TempDir::new("pcap-pipe");
    let mut srv = Server::reply(&ns, &dir, 1, "r:5", b"pong");
    // The client prints (PID, FD, GOT, DONE lines): its stdout must not mix with the pcapng
    // on capagent's stdout, and goes to capagent's stderr instead.
    let argv = client_argv(
        &ns,
        &dir,
        "inet",
        "127.0.0.1",
        srv.port,
        &[&format!("w:{}", hex(b"ping!")), "r:4"],
    );
    let mut capagent = Command::new(capagent());
    capagent.args(["trace", "-w", "-", "--"]).args(&argv);
    let (out, err) = capagent_into_tshark(
        capagent,
        &["-Y", "tcp.len > 0", "-T", "fields", "-e", "tcp.payload"],
    );
    assert_eq!(srv.recv(0), b"ping!");
    srv.done();
    let payloads: Vec<Vec<u8>> = out.lines().map(|l| unhex(&l.replace(':', ""))).collect();
    assert_eq!(payloads, [b"ping!".to_vec(), b"pong".to_vec()], "{out}");
    // The client's output is on stderr, after the note that says where it goes.
    assert_eq!(kv(&err, "GOT"), hex(b"pong"), "{err}");
    assert!(err.contains("\nDONE\n"), "{err}");
    assert_eq!(err.matches(&stdout_note("ip")).count(), 1, "{err}");
    // Text records went nowhere: the summary is on stderr, nothing else.
    assert!(err.contains(" events, "), "{err}");
    assert!(!err.contains("sendto("), "{err}");
}

/// JSON records on stdout (no `-o`) while the traced command prints: every stdout line is
/// a JSON record, the command's lines are on stderr.
#[test]
fn json_on_stdout_with_a_printing_command() {
    let ns = Netns::new("json-pipe");
    let dir = TempDir::new("json-pipe");
    let mut srv = Server::reply(&ns, &dir, 1, "r:5", b"pong");
    let argv = client_argv(
        &ns,
        &dir,
        "inet",
        "127.0.0.1",
        srv.port,
        &[&format!("w:{}", hex(b"ping!")), "r:4"],
    );
    let mut capagent = Command::new(capagent());
    capagent
        .args(["trace", "--format", "json", "--"])
        .args(&argv)
        .stdin(Stdio::null());
    let out = capagent.output().expect("cannot run capagent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "capagent {}: {err}", out.status);
    assert_eq!(srv.recv(0), b"ping!");
    srv.done();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let evs = parse_json_lines(&stdout);
    assert_eq!(evs.len(), stdout.lines().count(), "{stdout}");
    let pid: u32 = kv(&err, "PID").parse().unwrap();
    let fd: i64 = kv(&err, "FD").parse().unwrap();
    assert_eq!(
        concat(&data_on(&evs, pid, fd, "send")),
        b"ping!",
        "{stdout}"
    );
    assert_eq!(concat(&data_on(&evs, pid, fd, "recv")), b"pong", "{stdout}");
    assert_eq!(kv(&err, "GOT"), hex(b"pong"), "{err}");
    assert_eq!(err.matches(&stdout_note("ip")).count(), 1, "{err}");
}

// ---------------------------------------------------------------------------------------------
// TLS plaintext (`trace --tls`): a connection whose TLS library handed over its plaintext is
// written as the plaintext stream, on the ports as used; tshark dissects HTTP from it.

/// The events of a curl-like HTTPS request as the trace makes them with `--tls` (connect, the
/// handshake's ciphertext marked, the plaintext of SSL_write/SSL_read, more ciphertext, the
/// peer's EOF, close), written by the pcapng writer.
#[test]
fn tls_plaintext_stream_dissected_as_http() {
    use agent_common::{sys, tls_fn};
    use capagent::model::{Call, Detail, Direction, Endpoint, Event, SocketMeta, Task, Transport};
    use capagent::output::{EventWriter, pcapng::PcapngWriter};

    let sock = SocketMeta {
        sk: 0xffff_8881_0203_0400,
        ino: 4242,
        transport: Transport::Tcp,
        local: Some(Endpoint::Inet("127.0.0.1:40112".parse().unwrap())),
        remote: Some(Endpoint::Inet("127.0.0.1:443".parse().unwrap())),
    };
    let mut ts = 1_700_000_000_000_000_000u64;
    let mut ev = |call: Call, detail: Detail, ret: i64, ciphertext: bool| {
        ts += 1_000_000;
        Event {
            ts_ns: ts,
            task: Task {
                pid: 4242,
                tid: 4242,
                comm: "curl".into(),
            },
            call,
            fd: 5,
            ret,
            sock: Some(sock.clone()),
            detail,
            tls_ciphertext: ciphertext,
            tls_eof: false,
            tls_plaintext: false,
            unfinished: false,
            stack: None,
        }
    };
    let data = |dir, bytes: &'static [u8]| Detail::Data {
        dir,
        total: bytes.len() as u64,
        payload: bytes.into(),
        truncated: false,
        addr: None,
        msg_index: 0,
    };
    let ssl = |func| Call::Tls {
        func,
        conn: 0x55d0_c0a1_b2c0,
    };
    let request: &[u8] = b"GET /secret/index.html HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let response: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
    let sys_close = Detail::Sock {
        args: [0; 4],
        addr: None,
    };
    let events = [
        ev(
            Call::Syscall(sys::CONNECT),
            Detail::Sock {
                args: [0; 4],
                addr: sock.remote.clone(),
            },
            0,
            false,
        ),
        ev(
            Call::Syscall(sys::WRITE),
            data(Direction::Send, b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"),
            10,
            true,
        ),
        ev(
            Call::Syscall(sys::READ),
            data(Direction::Recv, b"\x16\x03\x03\x00\x04\x02\x00\x00\x00"),
            9,
            true,
        ),
        ev(
            Call::Syscall(sys::WRITE),
            data(Direction::Send, b"\x17\x03\x03\x00\x03abc"),
            8,
            true,
        ),
        ev(
            ssl(tls_fn::SSL_WRITE),
            data(Direction::Send, request),
            request.len() as i64,
            false,
        ),
        ev(
            Call::Syscall(sys::READ),
            data(Direction::Recv, b"\x17\x03\x03\x00\x03def"),
            8,
            true,
        ),
        ev(
            ssl(tls_fn::SSL_READ),
            data(Direction::Recv, response),
            response.len() as i64,
            false,
        ),
        ev(
            Call::Syscall(sys::READ),
            data(Direction::Recv, b""),
            0,
            true,
        ),
        ev(Call::Syscall(sys::CLOSE), sys_close, 0, false),
    ];
    let dir = TempDir::new("pcap-tls");
    let pcap = dir.join("tls.pcapng");
    let mut w = PcapngWriter::open(&pcap).unwrap();
    for e in &events {
        w.write_event(e).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let pcap = pcap.to_str().unwrap();
    let fields = |filter: &str, field: &str| {
        tshark_r(pcap, &["-Y", filter, "-T", "fields", "-e", field])
            .trim()
            .to_string()
    };
    assert_eq!(
        fields("http.request", "http.request.uri"),
        "/secret/index.html"
    );
    assert_eq!(fields("http.response", "http.response.code"), "200");
    assert_eq!(
        fields("http.request", "frame.comment"),
        "pid=4242 tid=4242 comm=curl syscall=SSL_write fd=5 decrypted by openssl (SSL_write)"
    );
    // The stream holds the plaintext only, on the ports as used, and ends with both FINs.
    let (sent, received) = follow_raw(&tshark_r(pcap, &["-q", "-z", "follow,tcp,raw,0"]));
    assert_eq!((&sent[..], &received[..]), (request, response));
    assert_eq!(fields("tcp.flags.fin == 1", "tcp.srcport"), "443\n40112");
    assert_eq!(fields("tls", "frame.number"), "");
}
