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
    let before = tc_state(&ns, &["lo"]);
    let mut cap = start_capture(&ns, &["-i", "lo", "-w", "/dev/null", "--duration", "2"]);
    // Its programs and links, by id (other capagents may run on the machine meanwhile).
    let mut objects = Vec::new();
    for info in bpf_fdinfos(cap.pid()) {
        match fdinfo_field(&info, "link_id") {
            Some(link) => objects.push(("link", link)),
            None => objects.push(("prog", fdinfo_field(&info, "prog_id").unwrap())),
        }
    }
    // Two classifiers and two tracepoint programs (socket owners, forks).
    assert_eq!(
        objects.iter().filter(|(w, _)| *w == "prog").count(),
        4,
        "{objects:?}"
    );
    assert!(objects.iter().any(|(w, _)| *w == "link"), "{objects:?}");
    finish(&mut cap);
    for (what, id) in &objects {
        assert!(bpf_object_gone(what, id), "{what} {id} left");
    }
    assert_eq!(tc_state(&ns, &["lo"]), before);
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
    // Both directions of curl's connection (on loopback, the server's packets to curl are
    // curl's too), and nothing else.
    let mine = format!("pid={curl_pid} comm=curl cookie=");
    for (src, dst, comment) in &packets {
        assert!(comment.starts_with(&mine), "{src}->{dst}: {comment}");
    }
    assert!(packets.iter().any(|(_, d, _)| *d == PORT), "{packets:?}");
    assert!(packets.iter().any(|(s, _, _)| *s == PORT), "{packets:?}");
    let client_ports: std::collections::HashSet<u16> = packets
        .iter()
        .map(|&(s, d, _)| if s == PORT { d } else { s })
        .collect();
    assert_eq!(client_ports.len(), 1, "{packets:?}");
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

/// A line server: answers each line `L` with `RSP L`. Prints `READY <port>`.
const LINE_SERVER: &str = r#"
import socket, sys, threading
addr = sys.argv[1]
fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
srv = socket.socket(fam, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, 0))
srv.listen(16)
print("READY", srv.getsockname()[1], flush=True)
def serve(c):
    f = c.makefile('rb')
    for line in f:
        c.sendall(b"RSP " + line)
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A client that connects at once, prints `PID <pid>`, waits for a line on stdin, then
/// sends `REQ <marker>\n`, prints `GOT <answer>` and closes.
const LINE_CLIENT: &str = r#"
import os, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print("PID", os.getpid(), flush=True)
sys.stdin.readline()
s.sendall(b"REQ " + sys.argv[3].encode() + b"\n")
data = b""
while not data.endswith(b"\n"):
    data += s.recv(4096)
print("GOT", data.decode().strip(), flush=True)
s.close()
"#;

struct LineClient {
    proc: Proc,
    pid: u32,
    stdin: std::process::ChildStdin,
}

fn line_client(ns: &Netns, dir: &TempDir, addr: &str, port: u16, marker: &str) -> LineClient {
    let script = dir.write("line_client.py", LINE_CLIENT);
    let mut cmd = ns.cmd(python());
    cmd.arg(&script).args([addr, &port.to_string(), marker]);
    let mut proc = Proc::spawn_piped(marker, cmd);
    let stdin = proc.child.stdin.take().unwrap();
    let pid = proc.expect("PID", TIMEOUT).parse().unwrap();
    LineClient { proc, pid, stdin }
}

impl LineClient {
    fn go(&mut self) {
        use std::io::Write as _;
        self.stdin.write_all(b"go\n").unwrap();
    }

    fn done(&mut self, marker: &str) {
        assert_eq!(
            self.proc.expect("GOT", TIMEOUT),
            format!("RSP REQ {marker}")
        );
        assert!(self.proc.wait(TIMEOUT).success(), "{}", self.proc.stderr());
    }
}

/// Stops a capture with SIGINT, as an analyst does with ^C.
fn interrupt(p: &mut Proc) {
    unsafe { libc::kill(p.pid() as i32, libc::SIGINT) };
    finish(p);
}

/// Two namespaces joined by a veth pair: `client` (10.77.0.1, dev `vc`) and `server`
/// (10.77.0.2, dev `vs`).
fn veth_pair() -> (Netns, Netns) {
    let client = Netns::new("capc");
    let server = Netns::new("caps");
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&[
        "-n",
        &client.name,
        "link",
        "add",
        "vc",
        "type",
        "veth",
        "peer",
        "name",
        "vs",
        "netns",
        &server.name,
    ]);
    ip(&[
        "-n",
        &client.name,
        "addr",
        "add",
        "10.77.0.1/24",
        "dev",
        "vc",
    ]);
    ip(&[
        "-n",
        &server.name,
        "addr",
        "add",
        "10.77.0.2/24",
        "dev",
        "vs",
    ]);
    ip(&["-n", &client.name, "link", "set", "vc", "up"]);
    ip(&["-n", &server.name, "link", "set", "vs", "up"]);
    (client, server)
}

/// `--pid` of a process whose connection was open before the capture began, with another
/// process doing the same at the same time: the capture holds exactly the first one's
/// conversation, both directions, attributed to it; on loopback (both ends local) and on a
/// veth (ingress packets found by socket lookup, egress ones by their socket).
fn pid_capture_of_old_connection(veth: bool, extra: &[&str]) {
    let dir = TempDir::new("cap");
    let (cns, sns, iface, addr) = if veth {
        let (c, s) = veth_pair();
        (c, Some(s), "vc", "10.77.0.2")
    } else {
        (Netns::new("cap"), None, "lo", "127.0.0.1")
    };
    let server = Server::script(
        sns.as_ref().unwrap_or(&cns),
        &dir,
        "line_server.py",
        LINE_SERVER,
        &[addr.to_string()],
    );
    let mut a = line_client(&cns, &dir, addr, server.port, "alpha");
    let mut b = line_client(&cns, &dir, addr, server.port, "bravo");
    let file = dir.join("old.pcapng");
    let pid = a.pid.to_string();
    let mut args = vec!["-i", iface, "-w", file.to_str().unwrap(), "--pid", &pid];
    args.extend_from_slice(extra);
    let mut cap = start_capture(&cns, &args);
    if extra.contains(&"--xdp") {
        assert!(cap.stderr().contains("(xdp ingress"), "{}", cap.stderr());
        let mut net = cns.cmd("bpftool");
        net.args(["net", "show", "dev", iface]);
        let net = run_output("bpftool", net, TIMEOUT);
        let xdp = net.split("tc:").next().unwrap();
        assert!(
            xdp.contains(&format!("{iface}(")) && xdp.contains(" id "),
            "{net}"
        );
    }
    a.go();
    b.go();
    a.done("alpha");
    b.done("bravo");
    // The FIN exchange follows the answer by a moment.
    thread::sleep(Duration::from_millis(300));
    interrupt(&mut cap);
    let file = file.to_str().unwrap();
    let comments = tshark_r(file, &["-T", "fields", "-e", "frame.comment"]);
    assert!(count_lines(&comments) >= 6, "{comments}\n{}", cap.stderr());
    for c in comments.lines() {
        assert!(
            c.starts_with(&format!("pid={} comm={} ", a.pid, python_comm())),
            "{c}"
        );
    }
    let streams = tshark_r(file, &["-T", "fields", "-e", "tcp.stream"]);
    assert!(streams.lines().all(|l| l == "0"), "{streams}");
    let (sent, got) = follow_raw(&tshark_r(file, &["-qz", "follow,tcp,raw,0"]));
    assert_eq!(sent, b"REQ alpha\n");
    assert_eq!(got, b"RSP REQ alpha\n");
    if veth {
        let mut net = cns.cmd("bpftool");
        net.args(["net", "show"]);
        let net = run_output("bpftool", net, TIMEOUT);
        assert!(!net.contains("capture"), "left attached: {net}");
        let xdp = net.split("tc:").next().unwrap();
        assert!(
            !xdp.contains(&format!("{iface}(")),
            "XDP left attached: {net}"
        );
    }
}

#[test]
fn pid_capture_of_old_connection_on_lo() {
    pid_capture_of_old_connection(false, &[]);
}

#[test]
fn pid_capture_of_old_connection_on_veth() {
    pid_capture_of_old_connection(true, &[]);
}

/// The same with the XDP ingress program (`--xdp`): incoming packets found by the same
/// socket lookup, before the kernel has a socket buffer for them.
#[test]
fn pid_capture_of_old_connection_with_xdp() {
    pid_capture_of_old_connection(true, &["--xdp"]);
}

/// `capture -- CMD`: the command starts once the capture is live, its children's packets
/// are kept (curl run by sh), other processes' are not, and capagent exits with its status.
#[test]
fn command_capture_follows_children() {
    let ns = Netns::new("cap");
    let dir = TempDir::new("cap");
    let _server = http_server(&ns, &dir);
    let other = dir.write(
        "other.py",
        format!(
            "import time, urllib.request\n\
             for i in range(20):\n\
             \x20   urllib.request.urlopen('http://127.0.0.1:{PORT}/page.html?who=other').read()\n\
             \x20   time.sleep(0.02)\n"
        ),
    );
    let mut py = ns.cmd(python());
    py.arg(&other);
    let mut other_client = Proc::spawn("other client", py);
    let file = dir.join("cmd.pcapng");
    let script = format!(
        "curl -sS -o /dev/null http://127.0.0.1:{PORT}/page.html?n=1 && \
         curl -sS -o /dev/null http://127.0.0.1:{PORT}/page.html?n=2 && exit 3"
    );
    let mut cmd = ns.cmd(CAPAGENT);
    cmd.args([
        "capture",
        "-i",
        "lo",
        "-w",
        file.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let mut cap = Proc::spawn("capagent", cmd);
    let st = cap.wait(TIMEOUT);
    assert_eq!(st.code(), Some(3), "{}", cap.stderr());
    assert!(
        other_client.wait(TIMEOUT).success(),
        "{}",
        other_client.stderr()
    );
    let file = file.to_str().unwrap();
    assert_eq!(
        request_uris(file),
        ["/page.html?n=1", "/page.html?n=2"],
        "{}",
        cap.stderr()
    );
    let packets = ports_and_comments(file);
    let pids: std::collections::HashSet<String> = packets
        .iter()
        .map(|(s, d, c)| {
            assert!(c.contains(" comm=curl "), "{s}->{d}: {c}");
            c.split_whitespace().next().unwrap().to_string()
        })
        .collect();
    assert_eq!(pids.len(), 2, "two curl processes: {packets:?}");
    assert!(packets.iter().any(|(s, _, _)| *s == PORT));
}

/// A command that cannot start is a one-line error, and nothing stays attached.
#[test]
fn command_that_cannot_start() {
    let ns = Netns::new("cap");
    let mut cmd = ns.cmd(CAPAGENT);
    cmd.args(["capture", "-i", "lo", "--", "/nonexistent/cmd"]);
    let mut cap = Proc::spawn("capagent", cmd);
    let st = cap.wait(TIMEOUT);
    assert!(!st.success());
    let err = cap.stderr();
    assert!(err.contains("/nonexistent/cmd"), "{err}");
    let mut tc = ns.cmd("bpftool");
    tc.args(["net", "show"]);
    let net = run_output("bpftool", tc, TIMEOUT);
    assert!(!net.contains("capture"), "{net}");
}

// ---------------------------------------------------------------------------------------------
// Attachment hygiene: the clsact fallback (forced with CAPAGENT_TC_MODE), leftovers of a
// killed capagent, tcx after SIGKILL.

const TC_MODE: &str = "CAPAGENT_TC_MODE";

/// `capagent capture ARGS` in `ns` with `CAPAGENT_TC_MODE=mode`, once it captures.
fn start_capture_mode(ns: &Netns, mode: &str, args: &[&str]) -> Proc {
    let mut cmd = ns.cmd(CAPAGENT);
    cmd.env(TC_MODE, mode).arg("capture").args(args);
    let p = Proc::spawn("capagent", cmd);
    wait_stderr(&p, "capagent: capturing on");
    p
}

fn tc(ns: &Netns, args: &[&str]) -> String {
    let mut cmd = ns.cmd("tc");
    cmd.args(args);
    run_output("tc", cmd, TIMEOUT)
}

/// What `tc` shows of `ifaces`: qdiscs, and the filters of both clsact hooks.
fn tc_state(ns: &Netns, ifaces: &[&str]) -> String {
    let mut out = String::new();
    for dev in ifaces {
        out.push_str(&format!(
            "== {dev} qdisc\n{}",
            tc(ns, &["qdisc", "show", "dev", dev])
        ));
        for hook in ["ingress", "egress"] {
            let filters = tc(ns, &["filter", "show", "dev", dev, hook]);
            out.push_str(&format!("== {dev} {hook}\n{filters}"));
        }
    }
    out
}

/// The part of a [`tc_state`] about `dev`.
fn tc_state_of(state: &str, dev: &str) -> String {
    let mut out = String::new();
    let mut mine = false;
    for l in state.lines() {
        if let Some(h) = l.strip_prefix("== ") {
            mine = h.split_whitespace().next() == Some(dev);
        }
        if mine {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The program ids (`id N`) of the capagent filters (`capture_ingress`/`capture_egress`) on
/// `hook` of `dev`.
fn capagent_filter_ids(ns: &Netns, dev: &str, hook: &str) -> Vec<u32> {
    tc(ns, &["filter", "show", "dev", dev, hook])
        .lines()
        .filter(|l| l.contains(" capture_ingress ") || l.contains(" capture_egress "))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "id")?;
            w.get(i + 1)?.parse().ok()
        })
        .collect()
}

fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_output("ip", cmd, TIMEOUT);
}

/// A veth pair `vA` (10.77.0.1/24, in `a`) <-> `vB` (10.77.0.2/24, in `b`), both up. Deleted
/// with the namespaces.
fn veth(a: &Netns, b: &Netns) {
    ip(&[
        "-n", &a.name, "link", "add", "vA", "type", "veth", "peer", "name", "vB", "netns", &b.name,
    ]);
    ip(&["-n", &a.name, "addr", "add", "10.77.0.1/24", "dev", "vA"]);
    ip(&["-n", &b.name, "addr", "add", "10.77.0.2/24", "dev", "vB"]);
    ip(&["-n", &a.name, "link", "set", "vA", "up"]);
    ip(&["-n", &b.name, "link", "set", "vB", "up"]);
}

/// Someone else's tc setup on `vA`: a clsact qdisc, a u32 filter on ingress and a classic BPF
/// filter (cls_bpf, no name) on egress, which match none of the test's packets (a filter that
/// matched would end the classification before capagent's filters, which come after).
fn foreign_tc(ns: &Netns) {
    tc(ns, &["qdisc", "add", "dev", "vA", "clsact"]);
    tc(
        ns,
        &[
            "filter",
            "add",
            "dev",
            "vA",
            "ingress",
            "pref",
            "7",
            "protocol",
            "ip",
            "u32",
            "match",
            "ip",
            "dst",
            "10.0.0.1/32",
            "flowid",
            "1:1",
        ],
    );
    tc(
        ns,
        &[
            "filter",
            "add",
            "dev",
            "vA",
            "egress",
            "pref",
            "8",
            "bpf",
            "bytecode",
            "1,6 0 0 0,",
            "flowid",
            "1:1",
        ],
    );
}

fn sigkill(p: &mut Proc) {
    unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGKILL) };
    let st = p.wait(TIMEOUT);
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
}

#[test]
fn clsact_mode_captures_and_restores_tc_state() {
    let ns = Netns::new("cls");
    let peer = Netns::new("clsb");
    let dir = TempDir::new("cls");
    veth(&ns, &peer);
    foreign_tc(&ns);
    let _server = http_server(&ns, &dir);
    let before = tc_state(&ns, &["lo", "vA"]);
    assert!(
        !before.contains("clsact ffff: parent ffff:fff1\n== lo"),
        "{before}"
    );
    let file = dir.join("clsact.pcapng");
    let mut cap = start_capture_mode(
        &ns,
        "clsact",
        &[
            "-i",
            "lo",
            "-i",
            "vA",
            "-w",
            file.to_str().unwrap(),
            "--duration",
            "4",
        ],
    );
    assert!(
        cap.stderr().contains("capturing on lo, vA (clsact)"),
        "{}",
        cap.stderr()
    );
    // capagent's filters sit next to the foreign ones; lo got a clsact qdisc.
    assert_eq!(capagent_filter_ids(&ns, "lo", "egress").len(), 1);
    assert_eq!(capagent_filter_ids(&ns, "vA", "ingress").len(), 1);
    assert_eq!(capagent_filter_ids(&ns, "vA", "egress").len(), 1);
    assert!(tc(&ns, &["qdisc", "show", "dev", "lo"]).contains("clsact"));
    let during = tc(&ns, &["filter", "show", "dev", "vA", "egress"]);
    assert!(during.contains("bytecode '1,6 0 0 0'"), "{during}");

    curl(&ns, "/page.html?mode=clsact");
    let mut ping = ns.cmd("ping");
    ping.args(["-c", "3", "-i", "0.2", "-W", "5", "10.77.0.2"]);
    run_output("ping", ping, TIMEOUT);
    finish(&mut cap);
    assert!(cap.stderr().contains("0 dropped"), "{}", cap.stderr());

    // Both interfaces were captured.
    let file = file.to_str().unwrap();
    assert_eq!(request_uris(file), ["/page.html?mode=clsact"]);
    let icmp = tshark_r(
        file,
        &[
            "-Y",
            "icmp",
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "icmp.type",
        ],
    );
    let requests = icmp.lines().filter(|l| *l == "vA\t8").count();
    let replies = icmp.lines().filter(|l| *l == "vA\t0").count();
    assert_eq!((requests, replies), (3, 3), "{icmp}");
    // Everything as before: lo's clsact (capagent's) gone, vA's (someone else's) and its
    // filters still there.
    assert_eq!(tc_state(&ns, &["lo", "vA"]), before);
}

#[test]
fn leftover_clsact_filters_of_a_killed_capagent_are_removed_at_the_next_start() {
    let ns = Netns::new("kill");
    let peer = Netns::new("killb");
    let dir = TempDir::new("kill");
    veth(&ns, &peer);
    foreign_tc(&ns);
    let before = tc_state(&ns, &["lo", "vA"]);
    // A capagent that stays alive (clsact on vA) and one that is killed (clsact on lo).
    let live_file = dir.join("live.pcapng");
    let mut live = start_capture_mode(
        &ns,
        "clsact",
        &[
            "-i",
            "vA",
            "-w",
            live_file.to_str().unwrap(),
            "--duration",
            "20",
        ],
    );
    let live_ids: Vec<u32> = ["ingress", "egress"]
        .iter()
        .flat_map(|h| capagent_filter_ids(&ns, "vA", h))
        .collect();
    assert_eq!(live_ids.len(), 2);
    let mut doomed = start_capture_mode(
        &ns,
        "clsact",
        &[
            "-i",
            "lo",
            "-w",
            dir.join("doomed.pcapng").to_str().unwrap(),
        ],
    );
    sigkill(&mut doomed);
    // The kernel keeps a legacy filter (and its program) after its loader died.
    let left = capagent_filter_ids(&ns, "lo", "egress");
    assert_eq!(left.len(), 1, "{}", tc_state(&ns, &["lo"]));
    let with_leftover = tc_state(&ns, &["lo", "vA"]);

    // The next capagent (default mode, tcx here) removes the leftover and only that.
    let mut next = start_capture_mode(&ns, "auto", &["-i", "lo", "--duration", "1"]);
    finish(&mut next);
    let said = next.stderr();
    assert!(
        said.contains(&format!(
            "capagent: removed a filter left by a capagent that is gone: capture_egress (prog id {}) on lo egress (pref ",
            left[0]
        )),
        "{said}"
    );
    assert_eq!(said.matches("removed a filter").count(), 1, "{said}");
    assert!(capagent_filter_ids(&ns, "lo", "egress").is_empty());
    // The filter was the last holder of the killed capagent's program.
    assert!(bpf_object_gone("prog", &left[0].to_string()));
    // The live capagent's filters, the foreign ones and the qdiscs are untouched: the only
    // change is the line of the removed filter (lo's clsact, which the killed capagent
    // added, stays: nothing tells who added it).
    let after = tc_state(&ns, &["lo", "vA"]);
    let removed: Vec<&str> = with_leftover
        .lines()
        .filter(|l| !after.lines().any(|a| a == *l))
        .collect();
    assert!(
        removed.len() == 1 && removed[0].contains(" capture_egress "),
        "removed lines {removed:?}\nbefore:\n{with_leftover}\nafter:\n{after}"
    );
    assert!(tc(&ns, &["qdisc", "show", "dev", "lo"]).contains("clsact"));
    // A sweep with nothing to remove says nothing.
    let mut again = start_capture_mode(&ns, "auto", &["-i", "lo", "--duration", "1"]);
    finish(&mut again);
    assert!(!again.stderr().contains("removed"), "{}", again.stderr());

    // The live capagent still captures and cleans up after itself.
    let mut ping = ns.cmd("ping");
    ping.args(["-c", "2", "-i", "0.2", "-W", "5", "10.77.0.2"]);
    run_output("ping", ping, TIMEOUT);
    unsafe { libc::kill(live.pid() as libc::pid_t, libc::SIGINT) };
    finish(&mut live);
    let icmp = tshark_r(live_file.to_str().unwrap(), &["-Y", "icmp"]);
    assert_eq!(count_lines(&icmp), 4, "{icmp}");
    // vA as at the beginning; on lo no filter, only the killed capagent's clsact qdisc.
    assert_eq!(tc_state(&ns, &["vA"]), tc_state_of(&before, "vA"));
    let lo = tc_state(&ns, &["lo"]);
    let orphan: String = lo
        .lines()
        .filter(|l| l.starts_with("qdisc clsact"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!orphan.is_empty(), "{lo}");
    assert_eq!(lo.replace(&orphan, ""), tc_state_of(&before, "lo"));
}

/// The `/proc/PID/fdinfo` texts of the BPF program and link fds of process `pid`.
fn bpf_fdinfos(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if t == "anon_inode:bpf-prog" || t == "anon_inode:bpf_link" {
            let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
            if let Ok(text) = std::fs::read_to_string(info) {
                out.push(text);
            }
        }
    }
    out
}

/// The value of `key:` in an fdinfo text.
fn fdinfo_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// Whether the kernel still has BPF object `what` (`prog` or `link`) number `id`; the kernel
/// frees them shortly after the last reference goes, so this waits up to 10 s for it to go.
fn bpf_object_gone(what: &str, id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = Command::new("bpftool")
            .args([what, "show", "id", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if !st.success() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killed_tcx_capture_leaves_nothing_attached() {
    let ns = Netns::new("tcx");
    let before = tc_state(&ns, &["lo"]);
    let mut cap = start_capture_mode(&ns, "tcx", &["-i", "lo", "-w", "/dev/null"]);
    assert!(cap.stderr().contains("(tcx)"), "{}", cap.stderr());
    // The capagent holds its programs and one tcx link, on lo's egress.
    let infos = bpf_fdinfos(cap.pid());
    let progs: Vec<String> = infos
        .iter()
        .filter(|i| fdinfo_field(i, "link_type").is_none())
        .filter_map(|i| fdinfo_field(i, "prog_id"))
        .collect();
    let links: Vec<&String> = infos
        .iter()
        .filter(|i| fdinfo_field(i, "link_type").as_deref() == Some("tcx"))
        .collect();
    // Two classifiers and two tracepoint programs (socket owners, forks).
    assert_eq!(progs.len(), 4, "{infos:?}");
    assert_eq!(links.len(), 1, "{infos:?}");
    assert_eq!(fdinfo_field(links[0], "ifindex").as_deref(), Some("1"));
    assert_eq!(
        fdinfo_field(links[0], "attach_type").as_deref(),
        Some("47 (egress)")
    );
    let link_id = fdinfo_field(links[0], "link_id").unwrap();
    // No legacy filter in tcx mode.
    assert!(capagent_filter_ids(&ns, "lo", "egress").is_empty());
    sigkill(&mut cap);
    // Nothing holds the link or the programs anymore: the kernel freed them all.
    assert!(bpf_object_gone("link", &link_id), "tcx link {link_id} left");
    for id in &progs {
        assert!(bpf_object_gone("prog", id), "program {id} left");
    }
    assert_eq!(tc_state(&ns, &["lo"]), before);
}
