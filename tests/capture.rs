//! Root integration tests of `capagent capture`: the real binary, run inside a network
//! namespace of each test's own (so `lo` is that namespace's loopback), capturing real
//! traffic (curl against `python3 -m http.server`); the pcapng files are read back with
//! tshark and compared with what tcpdump captured at the same time.
//!
//! Needs root, tshark, tcpdump, curl and bpftool. Run one at a time:
//! `cargo test -p capagent --features root-tests --test capture -- --test-threads=1`.

#[allow(dead_code)] // the shared harness has helpers these tests do not use
mod common;

use std::{
    io::Read as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::*;

const PORT: u16 = 8000;

/// Waits until `p`'s stderr contains `what`.
fn wait_stderr(p: &Proc, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !p.stderr().contains(what) {
        assert!(
            Instant::now() < deadline,
            "{}: no {what:?} on stderr: {:?}",
            p.name,
            p.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `capagent capture ARGS` inside `ns`, once it says it is capturing.
fn start_capture(ns: &Netns, args: &[&str]) -> Proc {
    let mut cmd = ns.cmd(CAPAGENT);
    cmd.arg("capture").args(args);
    let p = Proc::spawn("capagent", cmd);
    wait_stderr(&p, "capagent: capturing on");
    p
}

/// `python3 -m http.server` on 127.0.0.1:PORT in `ns`, serving `dir` (with a 3000-byte
/// `page.html` and a 1 MB `big.html`).
fn http_server(ns: &Netns, dir: &TempDir) -> Proc {
    dir.write("page.html", "x".repeat(3000));
    dir.write("big.html", "y".repeat(1_000_000));
    let mut cmd = ns.cmd(python());
    cmd.args([
        "-m",
        "http.server",
        &PORT.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .arg("--directory")
    .arg(dir.join(""));
    let p = Proc::spawn("http.server", cmd);
    wait_listen(p.pid(), PORT);
    p
}

/// Like [`http_server`], but every response waits 0.5 s: connections then live long enough
/// for capagent, which attributes packets in userspace from the sockets and processes it
/// finds, to see their owner while it exists (a local curl otherwise opens, fetches, closes
/// and exits within a few milliseconds, before capagent reads the packets).
fn slow_http_server(ns: &Netns, dir: &TempDir) -> Proc {
    dir.write("page.html", "x".repeat(3000));
    dir.write("big.html", "y".repeat(1_000_000));
    let script = format!(
        "import http.server, os, time\n\
         os.chdir({dir:?})\n\
         class H(http.server.SimpleHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       time.sleep(0.5)\n\
         \x20       super().do_GET()\n\
         \x20   def log_message(self, *a):\n\
         \x20       pass\n\
         http.server.ThreadingHTTPServer(('127.0.0.1', {PORT}), H).serve_forever()\n",
        dir = dir.join("").to_str().unwrap()
    );
    let mut cmd = ns.cmd(python());
    cmd.args(["-c", &script]);
    let p = Proc::spawn("slow http server", cmd);
    wait_listen(p.pid(), PORT);
    p
}

fn curl(ns: &Netns, path: &str) {
    let mut cmd = ns.cmd("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{PORT}{path}"),
    ]);
    run_output("curl", cmd, TIMEOUT);
}

fn finish(p: &mut Proc) {
    let st = p.wait(TIMEOUT);
    assert!(st.success(), "capagent failed ({st}): {}", p.stderr());
}

fn count_lines(s: &str) -> usize {
    s.lines().filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn lo_capture_matches_tcpdump_and_tshark_reads_http() {
    let ns = Netns::new("cap");
    let dir = TempDir::new("cap");
    let _server = http_server(&ns, &dir);
    let ours = dir.join("f.pcapng");
    let theirs = dir.join("td.pcap");
    let mut td_cmd = ns.cmd("tcpdump");
    td_cmd
        .args(["-i", "lo", "-U", "-Z", "root", "-w"])
        .arg(&theirs)
        .args(["tcp", "port", &PORT.to_string()]);
    let mut tcpdump = Proc::spawn("tcpdump", td_cmd);
    wait_stderr(&tcpdump, "listening on");
    let mut cap = start_capture(
        &ns,
        &["-i", "lo", "-w", ours.to_str().unwrap(), "--duration", "3"],
    );
    curl(&ns, "/page.html?capagent-test=1");
    curl(&ns, "/missing-page");
    finish(&mut cap);
    let summary = cap.stderr();
    assert!(
        summary.contains("packets captured") && summary.contains("0 dropped"),
        "{summary}"
    );
    unsafe { libc::kill(tcpdump.pid() as libc::pid_t, libc::SIGINT) };
    tcpdump.wait(TIMEOUT);

    let ours = ours.to_str().unwrap();
    let theirs = theirs.to_str().unwrap();
    tshark_r(ours, &[]);
    let uris = tshark_r(
        ours,
        &[
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
        ],
    );
    assert_eq!(
        uris.lines().collect::<Vec<_>>(),
        ["/page.html?capagent-test=1", "/missing-page"],
        "{uris}"
    );
    let filter = format!("tcp.port=={PORT}");
    let n_ours = count_lines(&tshark_r(ours, &["-Y", &filter]));
    let n_theirs = count_lines(&tshark_r(theirs, &["-Y", &filter]));
    assert!(n_ours >= 10, "only {n_ours} packets");
    assert_eq!(n_ours, n_theirs, "capagent vs tcpdump packet counts");
    // The interface is named, the direction and the socket cookie are there.
    let fields = tshark_r(
        ours,
        &[
            "-Y",
            &filter,
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.comment",
        ],
    );
    for line in fields.lines() {
        assert!(
            line.starts_with("lo\tpid=") && line.contains(" cookie="),
            "{line:?}"
        );
    }
    assert!(
        fields.lines().any(|l| !l.ends_with(" cookie=0")),
        "no packet with a socket cookie: {fields}"
    );
}

#[test]
fn snaplen_cuts_frames() {
    let ns = Netns::new("cap");
    let dir = TempDir::new("cap");
    let _server = http_server(&ns, &dir);
    let file = dir.join("s.pcapng");
    let mut cap = start_capture(
        &ns,
        &[
            "-i",
            "lo",
            "-s",
            "96",
            "-w",
            file.to_str().unwrap(),
            "--duration",
            "2",
        ],
    );
    curl(&ns, "/page.html");
    finish(&mut cap);
    let out = tshark_r(
        file.to_str().unwrap(),
        &[
            "-Y",
            &format!("tcp.srcport=={PORT}"),
            "-T",
            "fields",
            "-e",
            "frame.cap_len",
            "-e",
            "frame.len",
        ],
    );
    let frames: Vec<(u32, u32)> = out
        .lines()
        .map(|l| {
            let (c, n) = l.split_once('\t').unwrap();
            (c.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    assert!(!frames.is_empty());
    assert!(frames.iter().all(|&(c, n)| c <= 96 && c <= n), "{frames:?}");
    // The response carries the 3000-byte page: its frame was cut.
    assert!(
        frames.iter().any(|&(c, n)| c == 96 && n > 3000),
        "{frames:?}"
    );
}

#[test]
fn text_lines_without_w() {
    let ns = Netns::new("cap");
    let dir = TempDir::new("cap");
    let _server = http_server(&ns, &dir);
    let mut cap = start_capture(&ns, &["-i", "lo", "-c", "3"]);
    curl(&ns, "/page.html");
    finish(&mut cap);
    let mut lines = Vec::new();
    for _ in 0..3 {
        lines.push(cap.expect("", Duration::from_secs(5)));
    }
    for l in &lines {
        assert!(
            l.contains(" lo Out IP 127.0.0.1.") && l.contains(": TCP len "),
            "{lines:?}"
        );
    }
    assert!(
        cap.stderr().contains("3 packets captured"),
        "{}",
        cap.stderr()
    );
}

#[test]
fn bad_interface_is_one_line() {
    let out = Command::new(CAPAGENT)
        .args(["capture", "-i", "nosuchif0", "--duration", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.trim_end(), "capagent: no such interface: nosuchif0");
}

#[test]
fn nothing_left_attached_after_exit() {
    let ns = Netns::new("cap");
    let prog_names = || {
        let out = Command::new("bpftool")
            .args(["prog", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let mut cap = start_capture(&ns, &["-i", "lo", "--duration", "1"]);
    assert!(prog_names().contains("name capture_egress"), "not loaded?");
    finish(&mut cap);
    assert!(!prog_names().contains("name capture_ingress"));
    assert!(!prog_names().contains("name capture_egress"));
    let mut tc = ns.cmd("tc");
    tc.args(["qdisc", "show", "dev", "lo"]);
    let qdiscs = run_output("tc", tc, TIMEOUT);
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    let mut net = ns.cmd("bpftool");
    net.args(["net", "show", "dev", "lo"]);
    let net = run_output("bpftool", net, TIMEOUT);
    assert!(!net.contains("capture"), "{net}");
}

/// The curl command line of [`spawn_curl`]: `path` should be `/big.html?...`. capagent
/// attributes packets in userspace, from the sockets and processes it finds when it reads
/// them (within about 10 ms), so these tests use [`slow_http_server`].
fn curl_cmd(path: &str) -> String {
    format!("exec curl -sS -o /dev/null http://127.0.0.1:{PORT}{path}")
}

/// `curl URL` in `ns` through `sh -c 'echo $$; exec curl ...'`: curl's pid.
fn spawn_curl(ns: &Netns, path: &str) -> (Proc, u32) {
    let mut cmd = ns.cmd("sh");
    cmd.args(["-c", &format!("echo $$; {}", curl_cmd(path))]);
    let mut p = Proc::spawn("curl", cmd);
    let pid = p.expect("", TIMEOUT).trim().parse().unwrap();
    (p, pid)
}

/// `(src port, dst port, comment)` of every TCP packet on PORT in `file`.
fn ports_and_comments(file: &str) -> Vec<(u16, u16, String)> {
    let out = tshark_r(
        file,
        &[
            "-Y",
            &format!("tcp.port=={PORT}"),
            "-T",
            "fields",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "frame.comment",
        ],
    );
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "{l:?}");
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
            )
        })
        .collect()
}

fn request_uris(file: &str) -> Vec<String> {
    tshark_r(
        file,
        &[
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
        ],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn packets_are_attributed_to_their_processes() {
    let ns = Netns::new("cap");
    let dir = TempDir::new("cap");
    let server = slow_http_server(&ns, &dir);
    let file = dir.join("owners.pcapng");
    let mut cap = start_capture(
        &ns,
        &["-i", "lo", "-w", file.to_str().unwrap(), "--duration", "6"],
    );
    let (mut c, curl_pid) = spawn_curl(&ns, "/big.html?who=curl");
    assert!(c.wait(TIMEOUT).success(), "curl: {}", c.stderr());
    finish(&mut cap);
    let packets = ports_and_comments(file.to_str().unwrap());
    assert!(packets.len() >= 10, "{packets:?}");
    let from_curl = format!("pid={curl_pid} comm=curl cookie=");
    let from_server = format!("pid={} comm={} cookie=", server.pid(), python_comm());
    for (src, dst, comment) in &packets {
        if *dst == PORT {
            assert!(comment.starts_with(&from_curl), "{src}->{dst}: {comment}");
        } else {
            assert_eq!(*src, PORT);
            assert!(comment.starts_with(&from_server), "{src}->{dst}: {comment}");
        }
    }
    assert!(packets.iter().any(|(_, d, _)| *d == PORT));
    assert!(packets.iter().any(|(s, _, _)| *s == PORT));
}

#[test]
fn pid_selects_one_process() {
    let ns = Netns::new("cap");
    let dir = TempDir::new("cap");
    let _server = slow_http_server(&ns, &dir);
    // The other client: Python, a few fetches spread over the time curl runs.
    let other = dir.write(
        "other.py",
        format!(
            "import time, urllib.request\n\
             for i in range(5):\n\
             \x20   urllib.request.urlopen('http://127.0.0.1:{PORT}/page.html?who=other').read()\n\
             \x20   time.sleep(0.02)\n"
        ),
    );
    let file = dir.join("pid.pcapng");
    // curl's pid must be known before capagent starts: sh prints it, waits for a line on
    // stdin, then execs curl.
    let mut cmd = ns.cmd("sh");
    cmd.args([
        "-c",
        &format!("echo $$; read go; {}", curl_cmd("/big.html?who=curl")),
    ]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut first = [0u8; 32];
    let mut stdout = child.stdout.take().unwrap();
    let mut got = 0;
    while !first[..got].contains(&b'\n') {
        let n = stdout.read(&mut first[got..]).unwrap();
        assert!(n > 0, "sh said nothing");
        got += n;
    }
    let curl_pid: u32 = std::str::from_utf8(&first[..got])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid_arg = curl_pid.to_string();
    let mut cap = start_capture(
        &ns,
        &[
            "-i",
            "lo",
            "-w",
            file.to_str().unwrap(),
            "--duration",
            "6",
            "--pid",
            &pid_arg,
        ],
    );
    let mut py = ns.cmd(python());
    py.arg(&other);
    let mut other_client = Proc::spawn("other client", py);
    {
        use std::io::Write as _;
        stdin.write_all(b"go\n").unwrap();
    }
    let st = wait_timeout(&mut child, TIMEOUT).expect("curl did not finish");
    assert!(st.success(), "curl failed: {st}");
    assert!(
        other_client.wait(TIMEOUT).success(),
        "{}",
        other_client.stderr()
    );
    finish(&mut cap);
    assert!(
        cap.stderr().contains("of them selected"),
        "{}",
        cap.stderr()
    );

    let file = file.to_str().unwrap();
    let packets = ports_and_comments(file);
    assert!(!packets.is_empty(), "{}", cap.stderr());
    assert_eq!(request_uris(file), ["/big.html?who=curl"], "{packets:?}");
    let mine = format!("pid={curl_pid} comm=curl cookie=");
    for (src, dst, comment) in &packets {
        assert!(comment.starts_with(&mine), "{src}->{dst}: {comment}");
        assert_eq!(*dst, PORT, "a packet of the server: {src}->{dst}");
    }
}

#[test]
fn text_lines_name_the_process() {
    let ns = Netns::new("cap");
    let dir = TempDir::new("cap");
    let _server = slow_http_server(&ns, &dir);
    let mut cap = start_capture(&ns, &["-i", "lo", "--duration", "6", "--comm", "curl"]);
    let (mut c, curl_pid) = spawn_curl(&ns, "/big.html");
    assert!(c.wait(TIMEOUT).success(), "curl: {}", c.stderr());
    finish(&mut cap);
    let line = cap.expect("", Duration::from_secs(5));
    assert!(
        line.contains(&format!(".{PORT}: TCP len "))
            && line.ends_with(&format!(" [curl:{curl_pid}]")),
        "{line}"
    );
}

// --- filter expressions ---

/// Mixed traffic in a namespace whose `lo` also has 10.1.2.3 and fd00::1: TCP to ports 8001
/// and 8002 (IPv4 over 127.0.0.1 and 10.1.2.3, IPv6 over ::1 and fd00::1), UDP to port 5353
/// with replies (payloads of 200 `X` or `Y`), over IPv4 and IPv6.
const TRAFFIC_PY: &str = r#"
import socket, threading

def serve_tcp(s):
    while True:
        c, _ = s.accept()
        data = b''
        while True:
            d = c.recv(65536)
            if not d:
                break
            data += d
        c.sendall(b'ok ' + data)
        c.close()

def serve_udp(s):
    while True:
        d, peer = s.recvfrom(65536)
        s.sendto(b're ' + d[:20], peer)

for fam, addr in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):
    for port in (8001, 8002):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port))
        s.listen(16)
        threading.Thread(target=serve_tcp, args=(s,), daemon=True).start()
    u = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    u.bind((addr, 5353))
    threading.Thread(target=serve_udp, args=(u,), daemon=True).start()

for i, (host, port) in enumerate((('127.0.0.1', 8001), ('127.0.0.1', 8002), ('10.1.2.3', 8001),
                                  ('10.1.2.3', 8002), ('::1', 8001), ('fd00::1', 8002))):
    c = socket.create_connection((host, port))
    c.sendall(b'hello %d ' % i + b'z' * (100 * i))
    c.shutdown(socket.SHUT_WR)
    while c.recv(65536):
        pass
    c.close()

for host, fill in (('127.0.0.1', b'X'), ('10.1.2.3', b'Y'), ('::1', b'X'), ('fd00::1', b'Y')):
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.sendto(fill * 200, (host, 5353))
    u.recvfrom(100)
    u.close()
print('done', flush=True)
"#;

/// The packets (bytes) of a pcapng file, and the options of its Interface Statistics Blocks.
fn pcapng_packets(
    path: &std::path::Path,
) -> (
    Vec<Vec<u8>>,
    Vec<pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption<'static>>,
) {
    use pcap_file::pcapng::{Block, PcapNgReader};
    let bytes = std::fs::read(path).unwrap();
    let mut r = PcapNgReader::new(&bytes[..]).unwrap();
    let (mut packets, mut stats) = (Vec::new(), Vec::new());
    while let Some(b) = r.next_block() {
        match b.unwrap() {
            Block::EnhancedPacket(e) => packets.push(e.data.to_vec()),
            Block::InterfaceStatistics(s) => stats.extend(s.into_owned().options),
            _ => {}
        }
    }
    (packets, stats)
}

/// What `tcpdump -r FILE EXPR` selects, as packet bytes.
fn tcpdump_selects(file: &std::path::Path, expr: &str) -> Vec<Vec<u8>> {
    let out = Command::new("tcpdump")
        .arg("-r")
        .arg(file)
        .args(["-w", "-", expr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tcpdump -r ... {expr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = pcap_file::pcap::PcapReader::new(&out.stdout[..]).unwrap();
    let mut v = Vec::new();
    while let Some(p) = r.next_packet() {
        v.push(p.unwrap().data.to_vec());
    }
    v
}

/// `N` in "N WHAT" of the summary line.
fn summary_count(summary: &str, what: &str) -> u64 {
    let at = summary
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {summary:?}"));
    summary[..at]
        .split(|c: char| !c.is_ascii_digit())
        .rfind(|w| !w.is_empty())
        .unwrap()
        .parse()
        .unwrap()
}

/// One capture without a filter and one per expression run at the same time on the same
/// traffic; each filtered file holds exactly the packets `tcpdump -r` selects from the
/// unfiltered one with the same expression, and the summary counts the rejected ones.
#[test]
fn filters_select_what_tcpdump_selects() {
    use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption as Isb;
    let ns = Netns::new("flt");
    for args in [
        "addr add 10.1.2.3/8 dev lo",
        "-6 addr add fd00::1/128 dev lo nodad",
    ] {
        let mut cmd = ns.cmd("ip");
        cmd.args(args.split(' '));
        run_output("ip addr add", cmd, TIMEOUT);
    }
    let dir = TempDir::new("flt");
    // (expression, extra options): one through -f, one with a snaplen shorter than the
    // bytes its expression reads (the kernel evaluates the whole packet).
    let cases: &[(&str, &[&str])] = &[
        ("tcp port 8001", &[]),
        ("udp and dst port 5353", &[]),
        ("icmp or icmp6", &[]),
        ("not tcp", &[]),
        ("host 10.1.2.3 and (port 8001 or port 8002)", &[]),
        ("net 10.0.0.0/8", &["-f"]),
        ("src port 8002", &[]),
        ("ip6", &[]),
        ("tcp[tcpflags] & tcp-syn != 0", &[]),
        ("udp and udp[100:4] = 0x58585858", &["-s", "64"]),
    ];
    let all_file = dir.join("all.pcapng");
    let common = ["-i", "lo", "--ring-kib", "4096", "-w"];
    let mut all = {
        let mut a: Vec<&str> = common.to_vec();
        a.push(all_file.to_str().unwrap());
        start_capture(&ns, &a)
    };
    let files: Vec<std::path::PathBuf> = (0..cases.len())
        .map(|i| dir.join(&format!("f{i}.pcapng")))
        .collect();
    let mut caps: Vec<Proc> = cases
        .iter()
        .zip(&files)
        .map(|((expr, extra), file)| {
            let mut a: Vec<&str> = common.to_vec();
            a.push(file.to_str().unwrap());
            a.extend_from_slice(extra);
            // The words as separate arguments, like a shell would pass them unquoted.
            if extra.contains(&"-f") {
                a.push(expr);
            } else {
                a.extend(expr.split(' '));
            }
            start_capture(&ns, &a)
        })
        .collect();

    let script = dir.write("traffic.py", TRAFFIC_PY);
    let mut py = ns.cmd(python());
    py.arg(&script);
    let mut traffic = Proc::spawn("traffic", py);
    traffic.expect("done", TIMEOUT);
    for v6 in [false, true] {
        let mut ping = ns.cmd("ping");
        if v6 {
            ping.arg("-6");
        }
        ping.args(["-c", "2", "-i", "0.2"])
            .arg(if v6 { "::1" } else { "127.0.0.1" });
        run_output("ping", ping, TIMEOUT);
    }
    // Let the last segments (delayed ACKs) pass, then stop everything.
    thread::sleep(Duration::from_millis(500));
    for p in std::iter::once(&all).chain(&caps) {
        unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGINT) };
    }
    finish(&mut all);
    for c in &mut caps {
        finish(c);
    }

    let (everything, _) = pcapng_packets(&all_file);
    let n_all = summary_count(&all.stderr(), "packets captured");
    assert_eq!(n_all, everything.len() as u64, "{}", all.stderr());
    assert!(everything.len() >= 40, "only {} packets", everything.len());
    for (((expr, extra), file), cap) in cases.iter().zip(&files).zip(&caps) {
        let want = tcpdump_selects(&all_file, expr);
        let (got, stats) = pcapng_packets(file);
        assert!(
            !want.is_empty() && want.len() < everything.len(),
            "{expr}: the traffic should have packets on both sides ({} of {})",
            want.len(),
            everything.len()
        );
        let snap = if extra.contains(&"-s") {
            64
        } else {
            usize::MAX
        };
        let want: Vec<Vec<u8>> = want
            .into_iter()
            .map(|p| p[..p.len().min(snap)].to_vec())
            .collect();
        assert_eq!(
            got.len(),
            want.len(),
            "{expr}: capagent kept {} packets, tcpdump -r selects {}",
            got.len(),
            want.len()
        );
        assert!(got == want, "{expr}: not the same packets as tcpdump -r");
        let summary = cap.stderr();
        let kept = summary_count(&summary, "packets captured");
        let rejected = summary_count(&summary, "rejected by the filter");
        assert_eq!(kept, got.len() as u64, "{expr}: {summary}");
        assert_eq!(kept + rejected, n_all, "{expr}: {summary}");
        assert_eq!(summary_count(&summary, "dropped"), 0, "{summary}");
        assert!(stats.contains(&Isb::IsbIfRecv(n_all)), "{expr}: {stats:?}");
        assert!(
            stats.contains(&Isb::IsbFilterAccept(kept)),
            "{expr}: {stats:?}"
        );
    }
}

#[test]
fn bad_filter_expression_is_one_line_before_anything_starts() {
    let dir = TempDir::new("flt");
    let file = dir.join("never.pcapng");
    let out = Command::new(CAPAGENT)
        .args(["capture", "-i", "lo", "-w", file.to_str().unwrap()])
        .args(["tcp", "prt", "80"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        "capagent: bad filter expression 'tcp prt 80': can't parse filter expression: syntax error"
    );
    assert!(!file.exists(), "the output file was created");
    // libpcap's own messages come through, e.g. for an impossible port.
    let out = Command::new(CAPAGENT)
        .args(["capture", "-i", "lo", "-f", "udp port 70000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("capagent: bad filter expression 'udp port 70000': ")
            && err.contains("70000"),
        "{err}"
    );
}

/// A tun device (layer 3: packets start at the IP header) whose other end is a Python script
/// that sends every IPv4 packet back with source and destination swapped (so tun0 has
/// ingress traffic too).
const TUN_PY: &str = r#"
import fcntl, os, struct, sys
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'tun0', 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN|IFF_NO_PI
print('ready', flush=True)
while True:
    p = bytearray(os.read(fd, 65536))
    if len(p) >= 20 and p[0] >> 4 == 4:
        p[12:16], p[16:20] = p[16:20], p[12:16]
        os.write(fd, bytes(p))
"#;

/// On a layer-3 device the pcapng says LINKTYPE_RAW and the filter is compiled for raw IP
/// packets: it still selects what `tcpdump -r` selects.
#[test]
fn filters_on_a_layer3_device() {
    let ns = Netns::new("flt3");
    let dir = TempDir::new("flt3");
    let script = dir.write("tun.py", TUN_PY);
    let mut py = ns.cmd(python());
    py.arg(&script);
    let mut tun = Proc::spawn("tun", py);
    tun.expect("ready", TIMEOUT);
    for cmd in [
        "sysctl -qw net.ipv6.conf.tun0.disable_ipv6=1",
        "ip addr add 10.9.0.1/24 dev tun0",
        "ip link set tun0 up",
    ] {
        let mut words = cmd.split(' ');
        let mut c = ns.cmd(words.next().unwrap());
        c.args(words);
        run_output(cmd, c, TIMEOUT);
    }
    let cases = ["udp port 7777", "icmp"];
    let all_file = dir.join("all.pcapng");
    let files: Vec<_> = (0..cases.len())
        .map(|i| dir.join(&format!("f{i}.pcapng")))
        .collect();
    let common = ["-i", "tun0", "--ring-kib", "4096", "-w"];
    let mut a: Vec<&str> = common.to_vec();
    a.push(all_file.to_str().unwrap());
    let mut caps = vec![start_capture(&ns, &a)];
    for (expr, file) in cases.iter().zip(&files) {
        let mut a: Vec<&str> = common.to_vec();
        a.extend([file.to_str().unwrap(), "-f", expr]);
        caps.push(start_capture(&ns, &a));
    }
    let mut send = ns.cmd(python());
    send.args([
        "-c",
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for port in (7777, 8888, 7777):\n\
         \x20   s.sendto(b'x' * 50, ('10.9.0.2', port))\n",
    ]);
    run_output("udp sender", send, TIMEOUT);
    let mut ping = ns.cmd("ping");
    ping.args(["-c", "2", "-i", "0.2", "10.9.0.2"]);
    run_output("ping", ping, TIMEOUT);
    thread::sleep(Duration::from_millis(500));
    for p in &caps {
        unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGINT) };
    }
    for c in &mut caps {
        finish(c);
    }

    let (everything, _) = pcapng_packets(&all_file);
    // 3 datagrams out, 3 back, 3 port unreachable out and back; 2 pings and 2 replies
    // (from the kernel's reply to the reflected request), at least.
    assert!(everything.len() >= 14, "only {} packets", everything.len());
    assert!(everything.iter().all(|p| p[0] >> 4 == 4), "not raw IPv4");
    let linktype = tshark_r(
        all_file.to_str().unwrap(),
        &["-c", "1", "-T", "fields", "-e", "frame.encap_type"],
    );
    // Wireshark's WTAP_ENCAP_RAW_IP.
    assert_eq!(linktype.trim(), "7", "{linktype}");
    for (expr, file) in cases.iter().zip(&files) {
        let want = tcpdump_selects(&all_file, expr);
        let (got, _) = pcapng_packets(file);
        assert!(
            !want.is_empty() && want.len() < everything.len(),
            "{expr}: {} of {}",
            want.len(),
            everything.len()
        );
        assert_eq!(got.len(), want.len(), "{expr}");
        assert!(got == want, "{expr}: not the same packets as tcpdump -r");
    }
}

// --- the in-kernel interpreter against the userspace one ---

/// `BPF_PROG_TEST_RUN` of program `prog_fd` on `data` (a TC program sees it as a packet of
/// the loopback device, from its Ethernet header on).
fn bpf_test_run(prog_fd: std::os::fd::BorrowedFd<'_>, data: &[u8]) {
    use std::os::fd::AsRawFd as _;
    #[repr(C)]
    #[derive(Default)]
    struct TestRun {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut attr = TestRun {
        prog_fd: prog_fd.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat: 1,
        ..TestRun::default()
    };
    // SAFETY: a valid attr for this command, `data` outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRun,
            size_of::<TestRun>(),
        )
    };
    assert_eq!(
        r,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
}

/// Random valid classic BPF programs (every opcode; offsets that hit and miss the packet)
/// loaded into the capture program's filter and run by the kernel on random packets with
/// `BPF_PROG_TEST_RUN`: the kernel keeps a packet exactly when `cbpf::run` does, and as many
/// bytes (`min(packet length, returned value)`).
#[test]
fn kernel_interpreter_agrees_with_userspace_on_random_programs() {
    use agent_common::{
        CaptureConfig, FILTER_MAX_INSNS, FilterInsn, FilterRef, IfCounters, PACKET_MAX,
    };
    use aya::maps::{Array, HashMap, MapData, PerCpuHashMap, PerCpuValues, RingBuf};
    use capagent::capture::filter::cbpf::{self, op::*};
    use capagent::kernel;
    use std::os::fd::AsFd as _;

    let config = CaptureConfig {
        snaplen: PACKET_MAX as u32,
        wakeup_bytes: 1 << 20,
        filter: 1,
    };
    let mut ebpf = kernel::load_capture(&config, 1 << 22).unwrap();
    let mut insns: Array<MapData, FilterInsn> =
        kernel::take_map(&mut ebpf, "FILTER_INSNS").unwrap();
    let mut refs: HashMap<MapData, u32, FilterRef> =
        kernel::take_map(&mut ebpf, "FILTER_IFACES").unwrap();
    let mut stats: PerCpuHashMap<MapData, u32, IfCounters> =
        kernel::take_map(&mut ebpf, "CAPTURE_STATS").unwrap();
    let mut ring: RingBuf<MapData> = kernel::take_map(&mut ebpf, "PACKETS").unwrap();
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    let cpus = aya::util::nr_cpus().unwrap();
    stats
        .insert(
            lo,
            PerCpuValues::try_from(vec![IfCounters::default(); cpus]).unwrap(),
            0,
        )
        .unwrap();
    let prog = kernel::loaded_classifier(&mut ebpf, "capture_egress").unwrap();
    let fd = prog.fd().unwrap().as_fd();

    const CODES: &[u16] = &[
        LD_W_ABS, LD_H_ABS, LD_B_ABS, LD_W_IND, LD_H_IND, LD_B_IND, LD_W_LEN, LD_IMM, LD_MEM,
        LDX_IMM, LDX_MEM, LDX_W_LEN, LDX_B_MSH, ST, STX, ALU_ADD_K, ALU_ADD_X, ALU_SUB_K,
        ALU_SUB_X, ALU_MUL_K, ALU_MUL_X, ALU_DIV_K, ALU_DIV_X, ALU_OR_K, ALU_OR_X, ALU_AND_K,
        ALU_AND_X, ALU_LSH_K, ALU_LSH_X, ALU_RSH_K, ALU_RSH_X, ALU_NEG, ALU_MOD_K, ALU_MOD_X,
        ALU_XOR_K, ALU_XOR_X, JMP_JA, JMP_JEQ_K, JMP_JEQ_X, JMP_JGT_K, JMP_JGT_X, JMP_JGE_K,
        JMP_JGE_X, JMP_JSET_K, JMP_JSET_X, RET_K, RET_A, MISC_TAX, MISC_TXA,
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut runs, mut kept, mut rejected) = (0u64, 0, 0);
    let mut last_filtered = 0;
    while runs < 1500 {
        let len = 1 + rnd(24) as usize;
        let mut prog: Vec<FilterInsn> = (0..len)
            .map(|_| {
                let code = CODES[rnd(CODES.len() as u64) as usize];
                let k = match rnd(4) {
                    0 => rnd(16) as u32,
                    1 => rnd(80) as u32,
                    2 => rnd(40) as u32,
                    _ => rnd(u64::from(u32::MAX)) as u32,
                };
                FilterInsn {
                    code,
                    jt: rnd(4) as u8,
                    jf: rnd(4) as u8,
                    k: if code == JMP_JA { rnd(4) as u32 } else { k },
                }
            })
            .collect();
        prog.push(FilterInsn {
            code: RET_A,
            ..FilterInsn::default()
        });
        if cbpf::validate(&prog).is_err() {
            continue;
        }
        // Alternate between the two slots, with the old program left behind.
        let start = (runs % 2) as u32 * FILTER_MAX_INSNS as u32;
        for (i, insn) in prog.iter().enumerate() {
            insns.set(start + i as u32, insn, 0).unwrap();
        }
        let r = FilterRef {
            start,
            len: prog.len() as u32,
        };
        refs.insert(lo, r, 0).unwrap();
        // At least an Ethernet header (BPF_PROG_TEST_RUN wants one).
        let packet: Vec<u8> = (0..14 + rnd(58)).map(|_| rnd(256) as u8).collect();
        bpf_test_run(fd, &packet);
        runs += 1;
        let want = cbpf::run(&prog, &packet, packet.len() as u32);
        let filtered: u64 = stats.get(&lo, 0).unwrap().iter().map(|c| c.filtered).sum();
        let rec = ring.next().map(|r| r.to_vec());
        let ctx = format!("{prog:?} on {packet:?}");
        if want == 0 {
            assert!(rec.is_none(), "the kernel kept a packet: {ctx}");
            assert_eq!(filtered, last_filtered + 1, "{ctx}");
            rejected += 1;
        } else {
            let rec = rec.unwrap_or_else(|| panic!("the kernel rejected a packet: {ctx}"));
            let p = capagent::capture::decode(&rec).unwrap();
            let n = packet.len().min(want as usize);
            assert_eq!(p.data, &packet[..n], "{ctx}");
            assert_eq!(filtered, last_filtered, "{ctx}");
            kept += 1;
        }
        last_filtered = filtered;
    }
    assert!(
        kept > 300 && rejected > 300,
        "{kept} kept, {rejected} rejected"
    );
}
