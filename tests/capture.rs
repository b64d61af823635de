//! Root integration tests of `capagent capture`: the real binary, run inside a network
//! namespace of each test's own (so `lo` is that namespace's loopback), capturing real
//! traffic (curl against `python3 -m http.server`); the pcapng files are read back with
//! tshark and compared with what tcpdump captured at the same time.
//!
//! Needs root, tshark, tcpdump, curl and bpftool. Run one at a time, with the capagent binary in
//! `CAPAGENT_BIN` (`cargo xtask test` sets it):
//! `cargo test -p capagent-tests --features root-tests --test capture -- --test-threads=1`.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::Duration,
};

use capagent_testkit::*;

const PORT: u16 = 8000;

/// `capagent capture ARGS` inside `ns`, once it says it is capturing.
fn start_capture(ns: &Netns, args: &[&str]) -> Proc {
    let mut cmd = ns.cmd(capagent());
    cmd.arg("capture").args(args);
    let p = Proc::spawn("capagent", cmd);
    p.wait_stderr("capagent: capturing on", 1, TIMEOUT);
    p
}

/// `python3 -m http.server` on 127.0.0.1:PORT in `ns`, serving `dir` (with a 3000-byte
/// `page.html` and a 1 MB `big.html`).
fn http_server(ns: &Netns, dir: &TempDir) -> Proc {
    dir.write("page.html", "x".repeat(3000));
    dir.write("big.html", "y".repeat(1_000_000));
    python_http_server(ns, &dir.join(""), "127.0.0.1", PORT)
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
    tcpdump.wait_stderr("listening on", 1, TIMEOUT);
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
    let out = Command::new(capagent())
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
    // The FIN exchange follows the answer by a moment: wait until the clients' connections
    // have ended (the clients close first, so their sockets in TIME_WAIT have seen it all).
    wait_tcp_settled(cap.pid());
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
    // With a filter expression too: the XDP program runs the filter interpreter as well.
    pid_capture_of_old_connection(true, &["--xdp", "--filter", "tcp"]);
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
    let mut cmd = ns.cmd(capagent());
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
    let mut cmd = ns.cmd(capagent());
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
    let mut cmd = ns.cmd(capagent());
    cmd.env(TC_MODE, mode).arg("capture").args(args);
    let p = Proc::spawn("capagent", cmd);
    p.wait_stderr("capagent: capturing on", 1, TIMEOUT);
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
    wait_until(Duration::from_secs(10), || {
        !Command::new("bpftool")
            .args([what, "show", "id", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    })
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
        ("net 10.0.0.0/8", &["--filter"]),
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
            if extra.contains(&"--filter") {
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
    // Let the last segments (FINs, the last ACKs) pass: every connection has ended. Then
    // stop everything.
    wait_tcp_settled(all.pid());
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
        // The same packets, byte for byte. Not necessarily in the same order: each capagent
        // has its own ring buffer, and two packets sent at the same moment on the two CPUs
        // can reach two rings in opposite orders.
        let (mut got_sorted, mut want_sorted) = (got.clone(), want.clone());
        got_sorted.sort();
        want_sorted.sort();
        assert!(
            got_sorted == want_sorted,
            "{expr}: not the same packets as tcpdump -r"
        );
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
    let out = Command::new(capagent())
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
    let out = Command::new(capagent())
        .args(["capture", "-i", "lo", "--filter", "udp port 70000"])
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
        a.extend([file.to_str().unwrap(), "--filter", expr]);
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
    // Nothing left in flight: the reflector has sent back every packet the kernel gave it.
    let tun_packets = || {
        let mut cmd = ns.cmd("ip");
        cmd.args(["-s", "-j", "link", "show", "tun0"]);
        let v: serde_json::Value =
            serde_json::from_str(&run_output("ip -s link", cmd, TIMEOUT)).unwrap();
        let stats = &v[0]["stats64"];
        (
            stats["tx"]["packets"].as_u64(),
            stats["rx"]["packets"].as_u64(),
        )
    };
    assert!(
        wait_until(TIMEOUT, || {
            let (tx, rx) = tun_packets();
            tx.is_some() && tx == rx
        }),
        "tun0 packets out and back in: {:?}",
        tun_packets()
    );
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
        // The same packets, byte for byte. Not necessarily in the same order: each capagent
        // has its own ring buffer, and two packets sent at the same moment on the two CPUs
        // can reach two rings in opposite orders.
        let (mut got_sorted, mut want_sorted) = (got.clone(), want.clone());
        got_sorted.sort();
        want_sorted.sort();
        assert!(
            got_sorted == want_sorted,
            "{expr}: not the same packets as tcpdump -r"
        );
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
        ..CaptureConfig::new()
    };
    let mut ebpf = kernel::load_capture(&config, 1 << 22, false).unwrap();
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

/// A capture pins only its own maps: the kernel memory of capagent's BPF maps is the
/// `PACKETS` ring plus a small margin (the socket owners table, 6 MiB), not trace's 16 MiB
/// `EVENTS` ring and its tables too (the whole object is loaded; the other modes' maps are
/// shrunk to their minimum).
#[test]
fn capture_pins_only_its_own_maps() {
    let ns = Netns::new("capmem");
    let cap = start_capture(&ns, &["-i", "lo", "--ring-kib", "32768", "-w", "/dev/null"]);
    let maps = bpf_maps_of(cap.pid());
    let total: u64 = maps.iter().map(|m| m.2).sum();
    let ring = maps
        .iter()
        .find(|m| m.0 == "PACKETS")
        .unwrap_or_else(|| panic!("no PACKETS map: {maps:?}"));
    assert_eq!(ring.1, 32 << 20, "{maps:?}");
    for other in [
        "EVENTS",
        "TRACED",
        "ARGS",
        "FDS",
        "ICPT_PIDS",
        "ICPT_BY_COOKIE",
    ] {
        let m = maps.iter().find(|m| m.0 == other);
        assert!(
            m.is_none_or(|m| m.2 <= 64 << 10),
            "trace/intercept map {other} is not at its minimum: {m:?}"
        );
    }
    let margin = 8 << 20;
    assert!(
        total <= ring.2 + margin,
        "capagent's maps pin {total} bytes, more than the ring ({}) + {margin}: {maps:?}",
        ring.2
    );
}

/// `capture -w - -- CMD` with a command that prints (curl writes the page): the pcapng on
/// capagent's stdout stays whole (tshark reads it from the pipe and finds the exchange),
/// and the page is on capagent's stderr.
#[test]
fn pcapng_on_stdout_with_a_printing_command() {
    let ns = Netns::new("cappipe");
    let dir = TempDir::new("cappipe");
    let _server = http_server(&ns, &dir);
    let mut c = ns.cmd(capagent());
    c.args(["capture", "-i", "lo", "-w", "-", "--"]).args([
        "curl",
        "-sS",
        &format!("http://127.0.0.1:{PORT}/page.html"),
    ]);
    let (out, err) = capagent_into_tshark(
        c,
        &[
            "-Y",
            "http",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
            "-e",
            "http.response.code",
        ],
    );
    assert_eq!(out, "/page.html\t\n\t200\n", "{err}");
    assert!(err.contains(&"x".repeat(3000)), "{err}");
    assert_eq!(err.matches(&stdout_note("curl")).count(), 1, "{err}");
}

/// Text lines on stdout (no `-w`) while the command prints: every stdout line is a packet
/// line, the command's output is on stderr.
#[test]
fn text_on_stdout_with_a_printing_command() {
    let ns = Netns::new("captext");
    let dir = TempDir::new("captext");
    let _server = http_server(&ns, &dir);
    let mut c = ns.cmd(capagent());
    c.args(["capture", "-i", "lo", "--"]).args([
        "curl",
        "-sS",
        &format!("http://127.0.0.1:{PORT}/page.html"),
    ]);
    let out = c.stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(count_lines(&stdout) >= 6, "{stdout}");
    for line in stdout.lines() {
        assert!(
            line.contains(" lo ") && line.ends_with(']'),
            "not a packet line: {line:?}"
        );
    }
    assert!(err.contains(&"x".repeat(3000)), "{err}");
}

/// `--xdp` on a device whose driver has no native XDP (a bridge here: no `dummy` module on
/// the test machine, and tun/veth have native XDP; virtio_net refuses it too): capagent
/// falls back to generic XDP, says `xdp: generic` in its start line, and captures the
/// incoming packets through it. A second `--xdp` capture of the same device fails in one
/// line naming both errnos (native refused, generic busy) and what to do.
#[test]
fn xdp_falls_back_to_generic_mode() {
    let a = Netns::new("xdpa");
    let b = Netns::new("xdpb");
    ip(&["-n", &a.name, "link", "add", "br0", "type", "bridge"]);
    veth(&a, &b);
    ip(&["-n", &a.name, "addr", "del", "10.77.0.1/24", "dev", "vA"]);
    ip(&["-n", &a.name, "link", "set", "vA", "master", "br0"]);
    ip(&["-n", &a.name, "addr", "add", "10.77.0.1/24", "dev", "br0"]);
    ip(&["-n", &a.name, "link", "set", "br0", "up"]);
    let dir = TempDir::new("xdp");
    let file = dir.join("br0.pcapng");
    let mut cap = start_capture(
        &a,
        &[
            "-i",
            "br0",
            "--xdp",
            "--filter",
            "icmp",
            "-w",
            file.to_str().unwrap(),
        ],
    );
    let start = cap.stderr();
    assert!(
        start.contains(
            "capagent: capturing on br0 (xdp ingress, egress tcx), snaplen 65535, xdp: generic\n"
        ),
        "{start}"
    );

    let mut second = a.cmd(capagent());
    second.args(["capture", "-i", "br0", "--xdp", "-w", "/dev/null"]);
    let out = second.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        "capagent: attaching to br0 (ingress (xdp)) failed: native XDP: EOPNOTSUPP (Operation not supported); generic XDP: EBUSY (Device or resource busy); capture without --xdp (TC ingress sees the same packets)\n"
    );

    let mut ping = b.cmd("ping");
    ping.args(["-c", "3", "-i", "0.2", "-W", "5", "10.77.0.1"]);
    run_output("ping", ping, TIMEOUT);
    interrupt(&mut cap);
    // Echo requests came in (through the XDP program), echo replies went out (TC).
    let seen = tshark_r(
        file.to_str().unwrap(),
        &[
            "-T",
            "fields",
            "-e",
            "frame.packet_flags_direction",
            "-e",
            "icmp.type",
        ],
    );
    let count = |want: &str| seen.lines().filter(|l| *l == want).count();
    assert_eq!(count("0x00000001\t8"), 3, "{seen}");
    assert_eq!(count("0x00000002\t0"), 3, "{seen}");
}

/// Packets written to a file with stderr on a terminal: a status line redrawn in place
/// (packets, bytes, drops), erased before the summary; none when stderr is a pipe, nor when
/// the packets go to stdout.
#[test]
fn status_line_on_a_terminal_only() {
    let ns = Netns::new("capstatus");
    let dir = TempDir::new("capstatus");
    let _server = http_server(&ns, &dir);
    let file = dir.join("status.pcapng");
    let fetch = format!(
        "curl -sS -o /dev/null http://127.0.0.1:{PORT}/page.html; exec sleep 30 2>/dev/null"
    );
    let argv = ns.argv(&[
        capagent(),
        "capture",
        "-i",
        "lo",
        "-w",
        file.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &fetch,
    ]);
    let (term, _) = stderr_on_a_terminal(&argv, 3);
    let lines = status_lines(&term);
    assert!(lines.len() >= 3, "{term:?}");
    for l in &lines {
        let rest = l.strip_prefix("capagent: 0:00:0").unwrap();
        assert!(
            rest.contains(" packets, ") && rest.ends_with(" 0 dropped"),
            "{l:?}"
        );
    }
    // Every second a new line (the clock moves), the curl's packets counted.
    assert!(lines.windows(2).all(|w| w[0] != w[1]), "{lines:?}");
    assert!(!lines.last().unwrap().contains(" 0 packets, "), "{lines:?}");
    // Erased, then the summary on a line of its own.
    let end = term.rfind("\r\x1b[K").unwrap();
    assert!(term[end..].starts_with("\r\x1b[Kcapagent: "), "{term:?}");
    assert!(term[end..].contains(" packets captured ("), "{term:?}");

    // stderr a pipe: no status line.
    let mut cmd = ns.cmd(capagent());
    cmd.args(["capture", "-i", "lo", "--duration", "2.5", "-w"])
        .arg(&file);
    let mut cap = Proc::spawn("capagent", cmd);
    finish(&mut cap);
    let err = cap.stderr();
    assert!(!err.contains('\r') && !err.contains("\x1b[K"), "{err:?}");
    // Packets on stdout: no status line either.
    let argv = ns.argv(&[capagent(), "capture", "-i", "lo", "--duration", "2.5"]);
    let (term, code) = stderr_on_a_terminal(&argv, 1);
    assert_eq!(code, 0, "{term:?}");
    assert!(status_lines(&term).is_empty(), "{term:?}");
}
