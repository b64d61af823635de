//! Root integration tests of `capagent intercept` and `capagent cleanup`.
//!
//! Gateway modes run in a topology the test builds: three network namespaces,
//! client (10.66.1.2, fd66:1::2) → gateway (forwarding; capagent runs here) → server
//! (10.66.2.2, fd66:2::2), joined by veth pairs. Real clients (curl, dig, a Python TCP
//! client) talk to real servers (python3 -m http.server, a Python TCP server, a Python DNS
//! responder; with `--tls`, curl trusting capagent's CA and a Python HTTPS server) in the
//! server namespace through the gateway; each test checks the bytes that
//! arrived AND capagent's records (JSON lines and, with tshark, the pcapng file), then that
//! the gateway's `nft list ruleset`, `ip rule` and `ip route show table all` are exactly as
//! before (after SIGTERM, and after SIGKILL + `capagent cleanup` or the next start).
//!
//! Per-process mode runs in one namespace: the chosen process's connections are recorded,
//! an identical second process's are not, and the cgroup attachments (`bpftool cgroup
//! tree`) are as before afterwards.

use std::process::Command;

use base64::Engine as _;
use capagent_testkit::*;
use serde_json::Value;

/// The three namespaces of the gateway tests.
struct Topo {
    client: Netns,
    gw: Netns,
    server: Netns,
}

fn ip(ns: &Netns, args: &[&str]) {
    let out = Command::new("ip")
        .arg("-n")
        .arg(&ns.name)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {} {args:?}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Topo {
    fn new() -> Topo {
        let t = Topo {
            client: Netns::new("ic"),
            gw: Netns::new("ig"),
            server: Netns::new("is"),
        };
        // Forwarding first (turning it on later reconfigures the links' IPv6 routes).
        let mut c = t.gw.cmd("sysctl");
        c.args([
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        run_ok(&mut c);
        // Forwarding first (turning it on later reconfigures the links' IPv6 routes), and
        // no duplicate address detection (addresses usable at once).
        for ns in [&t.client, &t.gw, &t.server] {
            let mut c = ns.cmd("sysctl");
            c.args([
                "-qw",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.accept_dad=0",
            ]);
            run_ok(&mut c);
        }
        let mut c = t.gw.cmd("sysctl");
        c.args([
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        run_ok(&mut c);
        run_ok(Command::new("ip").args([
            "link",
            "add",
            "c0",
            "netns",
            &t.client.name,
            "type",
            "veth",
            "peer",
            "name",
            "g0",
            "netns",
            &t.gw.name,
        ]));
        run_ok(Command::new("ip").args([
            "link",
            "add",
            "s0",
            "netns",
            &t.server.name,
            "type",
            "veth",
            "peer",
            "name",
            "g1",
            "netns",
            &t.gw.name,
        ]));
        for (ns, dev, v4, v6) in [
            (&t.client, "c0", "10.66.1.2/24", "fd66:1::2/64"),
            (&t.gw, "g0", "10.66.1.1/24", "fd66:1::1/64"),
            (&t.gw, "g1", "10.66.2.1/24", "fd66:2::1/64"),
            (&t.server, "s0", "10.66.2.2/24", "fd66:2::2/64"),
        ] {
            ip(ns, &["addr", "add", v4, "dev", dev]);
            ip(ns, &["addr", "add", v6, "dev", dev, "nodad"]);
            ip(ns, &["link", "set", dev, "up"]);
        }
        ip(&t.client, &["route", "add", "default", "via", "10.66.1.1"]);
        ip(
            &t.client,
            &["-6", "route", "add", "default", "via", "fd66:1::1"],
        );
        ip(&t.server, &["route", "add", "default", "via", "10.66.2.1"]);
        ip(
            &t.server,
            &["-6", "route", "add", "default", "via", "fd66:2::1"],
        );
        t
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The gateway's netfilter and routing state, as the tools print it.
fn net_state(ns: &Netns) -> String {
    let mut s = String::new();
    for args in [
        &["nft", "list", "ruleset"][..],
        &["ip", "rule"],
        &["ip", "-6", "rule"],
        &["ip", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
    ] {
        let mut c = ns.cmd(args[0]);
        c.args(&args[1..]);
        // Sorted: the kernel lists routes in the order they were (re)added. Routes the
        // kernel makes for the links' own addresses (`proto kernel`) are left out: IPv6
        // link-local ones come and go on their own while links settle, and capagent never
        // makes one (its routes are `proto 202`).
        let mut lines: Vec<String> = output(c)
            .lines()
            .filter(|l| !l.contains(" proto kernel "))
            .map(str::to_string)
            .collect();
        lines.sort();
        s.push_str(&format!("$ {}\n{}\n", args.join(" "), lines.join("\n")));
    }
    s
}

/// Fails with the lines that differ when `after` is not `before`.
fn assert_same(before: &str, after: &str, what: &str) {
    if before == after {
        return;
    }
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let gone: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
    let new: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
    panic!(
        "{what}: state changed; gone {gone:#?}, new {new:#?}\nbefore:\n{before}\nafter:\n{after}"
    );
}

/// The programs attached to the cgroup hierarchy.
fn cgroup_state() -> String {
    let mut c = Command::new("bpftool");
    c.args(["cgroup", "tree"]);
    output(c)
}

/// A running `capagent intercept`.
struct Agent {
    proc: Proc,
}

impl Agent {
    fn start(ns: &Netns, args: &[&str]) -> Agent {
        let mut cmd = ns.cmd(capagent());
        cmd.arg("intercept").args(args);
        let proc = Proc::spawn("capagent", cmd);
        let a = Agent { proc };
        a.proc.wait_stderr("capagent: intercepting", 1, TIMEOUT);
        a
    }

    fn signal(&mut self, sig: libc::c_int) -> std::process::ExitStatus {
        unsafe { libc::kill(self.proc.pid() as libc::pid_t, sig) };
        self.proc.wait(TIMEOUT)
    }

    /// SIGTERM; capagent must exit 0.
    fn stop(mut self) -> String {
        self.proc.terminate(TIMEOUT)
    }
}

/// The `open` record of the connection to `target`, and the payload it relayed each way
/// (from the JSON lines), checking client and original destination.
fn recorded(evs: &[Value], client_ip: &str, target: &str) -> (Vec<u8>, Vec<u8>) {
    let open = one(evs, &format!("open of {target}"), |e| {
        e["type"] == "open" && e["target"] == target
    });
    let local = open["local"].as_str().unwrap();
    assert!(
        local.starts_with(client_ip) || local.starts_with(&format!("[{client_ip}]")),
        "client {local} is not {client_ip}: {}",
        dump(evs)
    );
    assert_eq!(open["remote"], target, "{}", dump(evs));
    assert_eq!(open["ret"], 0);
    let sk = open["sk"].clone();
    let dir = |d: &str| -> Vec<u8> {
        evs.iter()
            .filter(|e| e["type"] == "data" && e["sk"] == sk && e["dir"] == d)
            .flat_map(|e| {
                base64::engine::general_purpose::STANDARD
                    .decode(e["payload_b64"].as_str().unwrap())
                    .unwrap()
            })
            .collect()
    };
    (dir("send"), dir("recv"))
}

const RAW_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 0)); s.listen(8)
print("READY", s.getsockname()[1], flush=True)
for _ in range(int(sys.argv[1])):
    c, peer = s.accept()
    buf = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        buf += d
    print("GOT", buf.hex(), flush=True)
    c.sendall(b"reply:" + buf[::-1])
    c.close()
"#;

const RAW_CLIENT: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
c = socket.socket(fam)
c.settimeout(20)
c.connect((sys.argv[1], int(sys.argv[2])))
c.sendall(open(sys.argv[3], "rb").read())
c.shutdown(socket.SHUT_WR)
buf = b""
while True:
    d = c.recv(65536)
    if not d:
        break
    buf += d
print("REPLY", buf.hex(), flush=True)
"#;

/// A DNS responder: A and AAAA queries get 192.0.2.7 / 2001:db8::7.
const DNS_SERVER: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 53))
print("READY 53", flush=True)
while True:
    q, peer = s.recvfrom(4096)
    qid = q[:2]
    i = 12
    while q[i] != 0:
        i += 1 + q[i]
    qname = q[12:i + 1]
    qtype, = struct.unpack(">H", q[i + 1:i + 3])
    question = q[12:i + 5]
    rdata = socket.inet_pton(socket.AF_INET, "192.0.2.7") if qtype == 1 else socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    ans = b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, 60, len(rdata)) + rdata
    s.sendto(qid + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + ans, peer)
    print("QUERY", peer[0], flush=True)
"#;

/// An HTTP server in the server namespace (both families), its log on stderr.
fn http_server(t: &Topo, dir: &TempDir) -> Proc {
    std::fs::write(dir.join("index.html"), "intercepted page\n").unwrap();
    python_http_server(&t.server, &dir.join(""), "::", 8080)
}

fn curl(t: &Topo, url: &str) -> String {
    let mut c = t.client.cmd("curl");
    c.args(["-sS", "-m", "20", url]);
    output(c)
}

fn raw_exchange(t: &Topo, dir: &TempDir, server: &mut Server, addr: &str, msg: &[u8]) {
    let script = dir.write("client.py", RAW_CLIENT);
    let mut c = t.client.cmd(python());
    let payload = dir.write("payload.bin", msg);
    c.args([&script, addr, &server.port.to_string(), &payload]);
    let out = output(c);
    let mut want = b"reply:".to_vec();
    want.extend(msg.iter().rev());
    assert_eq!(out.trim(), format!("REPLY {}", hex(&want)));
    assert_eq!(server.proc.expect("GOT", TIMEOUT), hex(msg));
}

fn check_http_records(evs: &[Value], client: &str, target: &str) {
    let (up, down) = recorded(evs, client, target);
    let up = String::from_utf8_lossy(&up);
    assert!(up.starts_with("GET / HTTP/1.1\r\n"), "{up}");
    let down = String::from_utf8_lossy(&down);
    assert!(down.starts_with("HTTP/1.0 200 OK\r\n"), "{down}");
    assert!(down.ends_with("intercepted page\n"), "{down}");
}

fn check_raw_records(evs: &[Value], client: &str, target: &str, msg: &[u8]) {
    let (up, down) = recorded(evs, client, target);
    assert_eq!(up, msg);
    let mut want = b"reply:".to_vec();
    want.extend(msg.iter().rev());
    assert_eq!(down, want);
}

/// The TCP stream between `a` and `b` in the pcapng file, both directions.
fn pcap_stream(file: &str, a: &str, b: &str) -> (Vec<u8>, Vec<u8>) {
    let filter = if a.contains(':') {
        format!("ipv6.addr=={a} && ipv6.addr=={b}")
    } else {
        format!("ip.addr=={a} && ip.addr=={b}")
    };
    let streams = tshark_r(file, &["-Y", &filter, "-T", "fields", "-e", "tcp.stream"]);
    let n = streams
        .lines()
        .next()
        .expect("a stream in the pcapng")
        .trim()
        .to_string();
    follow_raw(&tshark_r(file, &["-qz", &format!("follow,tcp,raw,{n}")]))
}

fn gateway_mode(mode: &str) {
    let t = Topo::new();
    let dir = TempDir::new("intercept");
    let before = net_state(&t.gw);
    let _http = http_server(&t, &dir);
    let raw_script = dir.write("server.py", RAW_SERVER);
    let mut raw = {
        let mut cmd = t.server.cmd(python());
        cmd.args([&raw_script, "2"]);
        let mut proc = Proc::spawn("raw server", cmd);
        let port = proc.expect("READY", TIMEOUT).parse().unwrap();
        Server { proc, port }
    };
    let jsonl = dir.join("records.jsonl");
    let pcap = dir.join("records.pcapng");
    let agent = Agent::start(
        &t.gw,
        &[
            "--mode",
            mode,
            "--iface",
            "g0",
            "--format",
            "json",
            "-o",
            jsonl.to_str().unwrap(),
            "-w",
            pcap.to_str().unwrap(),
        ],
    );
    assert!(
        ns_output(&t.gw, &["nft", "list", "ruleset"]).contains("flags owner"),
        "the table is not owned"
    );
    // HTTP and a raw exchange, IPv4 and IPv6, through the gateway.
    assert_eq!(curl(&t, "http://10.66.2.2:8080/"), "intercepted page\n");
    assert_eq!(curl(&t, "http://[fd66:2::2]:8080/"), "intercepted page\n");
    let msg4 = pattern(3000, 4);
    let msg6 = pattern(70000, 6);
    raw_exchange(&t, &dir, &mut raw, "10.66.2.2", &msg4);
    raw_exchange(&t, &dir, &mut raw, "fd66:2::2", &msg6);
    let err = agent.stop();
    assert_eq!(
        net_state(&t.gw),
        before,
        "capagent left state behind; stderr {err}"
    );

    let evs = records(&jsonl);
    check_http_records(&evs, "10.66.1.2", "10.66.2.2:8080");
    check_http_records(&evs, "fd66:1::2", "[fd66:2::2]:8080");
    let port = raw.port;
    check_raw_records(&evs, "10.66.1.2", &format!("10.66.2.2:{port}"), &msg4);
    check_raw_records(&evs, "fd66:1::2", &format!("[fd66:2::2]:{port}"), &msg6);
    // The pcapng holds client <-> original destination streams Wireshark follows.
    let pcap = pcap.to_str().unwrap();
    let (up, down) = pcap_stream(pcap, "10.66.1.2", "10.66.2.2");
    assert!(String::from_utf8_lossy(&up).starts_with("GET / HTTP/1.1"));
    assert!(String::from_utf8_lossy(&down).ends_with("intercepted page\n"));
    let http = tshark_r(
        pcap,
        &[
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
        ],
    );
    assert!(
        http.contains("10.66.2.2") && http.contains("fd66:2::2"),
        "{http}"
    );
}

/// `ip netns exec NS ARGS...`'s stdout.
fn ns_output(ns: &Netns, args: &[&str]) -> String {
    let mut c = ns.cmd(args[0]);
    c.args(&args[1..]);
    output(c)
}

#[test]
fn redirect_tcp_ipv4_and_ipv6() {
    gateway_mode("redirect");
}

#[test]
fn tproxy_tcp_ipv4_and_ipv6() {
    gateway_mode("tproxy");
}

#[test]
fn tproxy_udp_dns() {
    let t = Topo::new();
    let dir = TempDir::new("intercept-dns");
    let before = net_state(&t.gw);
    let script = dir.write("dns.py", DNS_SERVER);
    let mut dns = Proc::spawn("dns", {
        let mut c = t.server.cmd(python());
        c.arg(&script);
        c
    });
    dns.expect("READY", TIMEOUT);
    let jsonl = dir.join("dns.jsonl");
    let agent = Agent::start(
        &t.gw,
        &[
            "--mode",
            "tproxy",
            "--iface",
            "g0",
            "--udp",
            "--port",
            "53",
            "--format",
            "json",
            "-o",
            jsonl.to_str().unwrap(),
        ],
    );
    for (server, qtype, want) in [
        ("10.66.2.2", "A", "192.0.2.7"),
        ("fd66:2::2", "AAAA", "2001:db8::7"),
    ] {
        let mut c = t.client.cmd("dig");
        c.args([
            &format!("@{server}"),
            "+short",
            "+tries=1",
            "+time=5",
            "app.example",
            qtype,
        ]);
        assert_eq!(output(c).trim(), want);
        // The server saw the query coming from the gateway (the relay), not the client.
        let from = dns.expect("QUERY", TIMEOUT);
        assert!(from.ends_with("10.66.2.1") || from == "fd66:2::1", "{from}");
    }
    let err = agent.stop();
    assert_same(&before, &net_state(&t.gw), &format!("stderr {err}"));
    let evs = records(&jsonl);
    for (client, target) in [
        ("10.66.1.2", "10.66.2.2:53"),
        ("fd66:1::2", "[fd66:2::2]:53"),
    ] {
        let open = one(&evs, &format!("udp open {target}"), |e| {
            e["type"] == "open" && e["target"] == target
        });
        assert!(open["local"].as_str().unwrap().contains(client));
        let sk = open["sk"].clone();
        let data: Vec<&Value> = evs
            .iter()
            .filter(|e| e["type"] == "data" && e["sk"] == sk)
            .collect();
        assert_eq!(data.len(), 2, "{}", dump(&evs));
        assert_eq!(data[0]["dir"], "send");
        assert_eq!(data[1]["dir"], "recv");
        let q = base64::engine::general_purpose::STANDARD
            .decode(data[0]["payload_b64"].as_str().unwrap())
            .unwrap();
        assert!(
            q.windows(12).any(|w| w == b"\x03app\x07example"),
            "query {q:?}"
        );
    }
}

#[test]
fn cleanup_after_sigkill_by_command_and_by_next_start() {
    let t = Topo::new();
    let before = net_state(&t.gw);
    let args = ["--mode", "tproxy", "--iface", "g0", "--udp", "--no-record"];
    // SIGKILL: the kernel drops the owned table, the routing rule and route stay...
    let mut a = Agent::start(&t.gw, &args);
    let during = net_state(&t.gw);
    assert!(
        during.contains("capagent-") && during.contains("proto 202"),
        "{during}"
    );
    a.signal(libc::SIGKILL);
    let after = net_state(&t.gw);
    assert!(!after.contains("table inet capagent-"), "{after}");
    assert!(after.contains("proto 202"), "{after}");
    // ... until `capagent cleanup`.
    let mut c = t.gw.cmd(capagent());
    c.arg("cleanup");
    let out = c.output().unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("removed rule"), "{said}");
    assert_same(&before, &net_state(&t.gw), "after cleanup");
    // The same with the next start doing the cleanup.
    let mut a = Agent::start(&t.gw, &args);
    a.signal(libc::SIGKILL);
    let b = Agent::start(
        &t.gw,
        &["--mode", "redirect", "--iface", "g0", "--no-record"],
    );
    assert!(
        b.proc.stderr().contains("cleanup: removed rule"),
        "{}",
        b.proc.stderr()
    );
    b.stop();
    assert_same(&before, &net_state(&t.gw), "after cleanup");
    // Others' tables are not touched.
    let mut add = t.gw.cmd("nft");
    add.args(["add", "table", "inet", "someone-else"]);
    run_ok(&mut add);
    let mut c = t.gw.cmd(capagent());
    c.arg("cleanup");
    assert!(c.output().unwrap().status.success());
    assert!(ns_output(&t.gw, &["nft", "list", "tables"]).contains("someone-else"));
}

const WAITING_CLIENT: &str = r#"
import socket, sys
sys.stdin.readline()
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
c.sendall(sys.argv[2].encode())
c.shutdown(socket.SHUT_WR)
buf = b""
while True:
    d = c.recv(65536)
    if not d:
        break
    buf += d
print("REPLY", buf.hex(), flush=True)
"#;

/// A cgroup v2 directory of the test's own; its processes go back to the root and it is
/// removed on drop.
struct Cgroup {
    root: std::path::PathBuf,
    path: std::path::PathBuf,
    /// As `--cgroup` takes it: relative to the hierarchy's root.
    rel: String,
}

impl Cgroup {
    fn new(tag: &str) -> Cgroup {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| std::path::PathBuf::from(f[1]))
            })
            .expect("a cgroup v2 hierarchy");
        let rel = format!("capagent-t-{tag}-{}", std::process::id());
        let path = root.join(&rel);
        std::fs::create_dir(&path).unwrap();
        Cgroup { root, path, rel }
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[test]
fn per_process_only_the_chosen_process() {
    only_the_chosen_process(false);
}

#[test]
fn per_cgroup_only_its_processes() {
    only_the_chosen_process(true);
}

/// Two identical clients; only one is chosen, by `--pid` or by `--cgroup`.
fn only_the_chosen_process(by_cgroup: bool) {
    use std::io::Write as _;
    let ns = Netns::new("ipp");
    let dir = TempDir::new("intercept-pp");
    let cg_before = cgroup_state();
    let script = dir.write("server.py", RAW_SERVER);
    let mut server = {
        let mut cmd = ns.cmd(python());
        cmd.args([&script, "2"]);
        let mut proc = Proc::spawn("raw server", cmd);
        let port: u16 = proc.expect("READY", TIMEOUT).parse().unwrap();
        Server { proc, port }
    };
    let client = dir.write("client.py", WAITING_CLIENT);
    let spawn = |msg: &str| {
        let mut c = ns.cmd(python());
        c.args([&client, &server.port.to_string(), msg]);
        Proc::spawn_piped("client", c)
    };
    let mut chosen = spawn("from-the-chosen-one");
    let mut other = spawn("from-the-other-one");
    let jsonl = dir.join("pp.jsonl");
    let cgroup = by_cgroup.then(|| Cgroup::new("pp"));
    let pid = chosen.pid().to_string();
    let select = match &cgroup {
        Some(cg) => {
            // `ip netns exec` execs python in place: the pid is python's.
            cg.add(chosen.pid());
            ["--cgroup", cg.rel.as_str()]
        }
        None => ["--pid", pid.as_str()],
    };
    let agent = Agent::start(
        &ns,
        &[
            select[0],
            select[1],
            "--format",
            "json",
            "-o",
            jsonl.to_str().unwrap(),
        ],
    );
    for (p, msg) in [
        (&mut chosen, "from-the-chosen-one"),
        (&mut other, "from-the-other-one"),
    ] {
        p.child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let mut want = b"reply:".to_vec();
        want.extend(msg.bytes().rev());
        assert_eq!(p.expect("REPLY", TIMEOUT), hex(&want));
        assert_eq!(server.proc.expect("GOT", TIMEOUT), hex(msg.as_bytes()));
    }
    let err = agent.stop();
    // The kernel may release the links a moment after the agent is gone. (If it never does,
    // the assertion says what is left.)
    wait_until(TIMEOUT, || cgroup_state() == cg_before);
    assert_same(&cg_before, &cgroup_state(), &format!("stderr {err}"));
    let evs = records(&jsonl);
    let target = format!("127.0.0.1:{}", server.port);
    let (up, _) = recorded(&evs, "127.0.0.1", &target);
    assert_eq!(up, b"from-the-chosen-one");
    assert_eq!(
        of_type(&evs, "open").len(),
        1,
        "the other process was recorded: {}",
        dump(&evs)
    );
}

#[test]
fn per_process_command_and_sigkill() {
    let ns = Netns::new("ipc");
    let dir = TempDir::new("intercept-cmd");
    let cg_before = cgroup_state();
    std::fs::write(dir.join("index.html"), "per process\n").unwrap();
    let _http = python_http_server(&ns, &dir.join(""), "127.0.0.1", 8090);
    let jsonl = dir.join("cmd.jsonl");
    let mut c = ns.cmd(capagent());
    c.args([
        "intercept",
        "--format",
        "json",
        "-o",
        jsonl.to_str().unwrap(),
        "--",
    ])
    .args(["curl", "-sS", "-m", "20", "http://127.0.0.1:8090/"]);
    let out = run_output("capagent -- curl", c, TIMEOUT);
    assert_eq!(out, "per process\n");
    let evs = records(&jsonl);
    let (up, down) = recorded(&evs, "127.0.0.1", "127.0.0.1:8090");
    assert!(String::from_utf8_lossy(&up).starts_with("GET / HTTP/1.1\r\n"));
    assert!(String::from_utf8_lossy(&down).ends_with("per process\n"));
    // The kernel may release the links a moment after the agent is gone.
    wait_until(TIMEOUT, || cgroup_state() == cg_before);
    assert_same(&cg_before, &cgroup_state(), "cgroup programs");
    // SIGKILL: the links go with the agent.
    let mut a = Agent::start(&ns, &["--no-record", "--", "sleep", "30"]);
    assert_ne!(cgroup_state(), cg_before, "nothing attached?");
    a.signal(libc::SIGKILL);
    assert!(
        wait_until(TIMEOUT, || cgroup_state() == cg_before),
        "programs left attached"
    );
}

/// `intercept --replace c2s:... --replace s2c:... -- CLIENT`: a Python client's request and
/// a Python server's answer are each changed on the way (the server reads the changed
/// request, the client the changed answer); the JSON records hold the bytes as sent, with
/// an `edit` record per change at its offset in the stream, and the pcapng stream carries
/// them with each edit in a packet comment.
#[test]
fn per_process_replace() {
    let ns = Netns::new("irepl");
    let dir = TempDir::new("intercept-replace");
    let (request, reply) = (b"hello ping\n", b"server says Boo!\n");
    let read = format!("r:{}", request.len());
    let mut server = Server::reply(&ns, &dir, 1, &read, reply);
    let rec = capagent_testkit::proxy::Rec::new(&dir, "replace");
    let (c2s, s2c) = ("c2s:/ping/pong/", "s2c:/Boo!/Yay!/");
    let client = dir.write("client.py", CLIENT_PY);
    let port = server.port.to_string();
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--replace", c2s, "--replace", s2c])
        .args(rec.args())
        .args(["--", python(), &client, "inet", "127.0.0.1", &port])
        .args([format!("w:{}", hex(request)), "r:eof".into()]);
    let out = run_output("capagent intercept --replace -- client.py", c, TIMEOUT);
    assert_eq!(server.recv(0), b"hello pong\n");
    assert_eq!(unhex(&kv(&out, "GOT")), b"server says Yay!\n");
    server.done();
    let evs = rec.events();
    let target = format!("127.0.0.1:{port}");
    let (up, down) = recorded(&evs, "127.0.0.1", &target);
    assert_eq!(
        (up.as_slice(), down.as_slice()),
        (&b"hello pong\n"[..], &b"server says Yay!\n"[..])
    );
    assert_eq!(
        edits(&evs),
        [
            edit("send", c2s, 6, b"ping", b"pong"),
            edit("recv", s2c, 12, b"Boo!", b"Yay!")
        ]
    );
    let open = one(&evs, "open", |e| e.ty() == "open" && e["target"] == target);
    for e in of_type(&evs, "edit") {
        assert_eq!(e["sk"], open["sk"], "{e}");
    }
    // pcapng: the stream carries the bytes as sent, each edit in a packet's comment.
    let streams = rec.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(
        rec.follow(streams[0].0),
        (b"hello pong\n".to_vec(), b"server says Yay!\n".to_vec())
    );
    let comments = rec.comments();
    for edited in [
        "edited by capagent: c2s:/ping/pong/ at 6: ping -> pong",
        "edited by capagent: s2c:/Boo!/Yay!/ at 12: Boo! -> Yay!",
    ] {
        assert!(comments.contains(edited), "{comments}");
    }
}

/// A UDP responder on argv[1] (an address) at port argv[2]: DNS questions (port 53) get an
/// A answer 192.0.2.7, anything else `echo:` + the datagram; prints what it read and wrote.
const UDP_RESPONDER: &str = r#"
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, port))
print("READY", port, flush=True)
while True:
    q, peer = s.recvfrom(4096)
    if port == 53:
        i = 12
        while q[i] != 0:
            i += 1 + q[i]
        question = q[12:i + 5]
        rdata = socket.inet_pton(socket.AF_INET, "192.0.2.7")
        ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, len(rdata)) + rdata
        a = q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + ans
    else:
        a = b"echo:" + q
    s.sendto(a, peer)
    print("GOT", q.hex(), a.hex(), flush=True)
"#;

/// One unconnected socket sends to two destinations (argv: host port1 port2), alternating,
/// then prints each answer with the source the kernel reported; then a connected socket
/// (not bound before `connect`) to port3.
const TWO_DESTINATIONS: &str = r#"
import socket, sys
host = sys.argv[1]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(20)
for i, port in enumerate([int(sys.argv[2]), int(sys.argv[3])] * 2):
    s.sendto(b"to %d #%d" % (port, i), (host, port))
    d, src = s.recvfrom(4096)
    print("ANSWER", "%s:%d" % src[:2], d.decode(), flush=True)
c = socket.socket(fam, socket.SOCK_DGRAM)
c.settimeout(20)
c.connect((host, int(sys.argv[4])))
c.send(b"connected")
d, src = c.recvfrom(4096)
print("CONNECTED", "%s:%d" % src[:2], d.decode(), flush=True)
"#;

/// The UDP flow of the JSON records to `target`: its `open` and payloads sent and received
/// (one per datagram).
fn udp_flow(evs: &[Value], target: &str) -> (Value, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let open = one(evs, &format!("udp open {target}"), |e| {
        e["type"] == "open" && e["target"] == target
    })
    .clone();
    let payloads = |dir: &str| -> Vec<Vec<u8>> {
        evs.iter()
            .filter(|e| e["type"] == "data" && e["sk"] == open["sk"] && e["dir"] == dir)
            .map(|e| {
                base64::engine::general_purpose::STANDARD
                    .decode(e["payload_b64"].as_str().unwrap())
                    .unwrap()
            })
            .collect()
    };
    let (send, recv) = (payloads("send"), payloads("recv"));
    (open, send, recv)
}

fn udp_responder(ns: &Netns, dir: &TempDir, host: &str, port: u16) -> Proc {
    let script = dir.write("udp_responder.py", UDP_RESPONDER);
    let mut p = Proc::spawn(&format!("udp responder {host} {port}"), {
        let mut c = ns.cmd(python());
        c.arg(&script).arg(host).arg(port.to_string());
        c
    });
    p.expect("READY", TIMEOUT);
    p
}

/// `host:port` as records write it.
fn sockaddr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `intercept --udp -- dig @SERVER NAME` (optionally through a SOCKS5 upstream), SERVER
/// answering on `server`:53: dig gets the answer; the records hold the query and the answer
/// exactly as the server read and wrote them (returned, with the records).
fn per_process_dig(extra: &[&str], ns: &Netns, dir: &TempDir, server: &str) -> Vec<Value> {
    let mut dns = udp_responder(ns, dir, server, 53);
    let jsonl = dir.join(&format!("dig-{server}.jsonl"));
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--udp", "--format", "json", "-o"])
        .arg(&jsonl)
        .args(extra)
        .args(["--", "dig", &format!("@{server}"), "+short", "+tries=1"])
        .args(["+time=10", "app.example", "A"]);
    let out = run_output("capagent --udp -- dig", c, TIMEOUT);
    assert_eq!(out.trim(), "192.0.2.7");
    let got = dns.expect("GOT", TIMEOUT);
    let (q, a) = got.split_once(' ').unwrap();
    let evs = records(&jsonl);
    let (open, send, recv) = udp_flow(&evs, &sockaddr(server, 53));
    let via = extra
        .iter()
        .skip_while(|a| **a != "--upstream-proxy")
        .nth(1)
        // Records name the upstream without its credentials.
        .map(|u| format!(" via {}", u.replace("u:p@", "")))
        .unwrap_or_default();
    // `process udp pid=DIG'S PID comm=dig`, and the upstream.
    let proxy = open["proxy"].as_str().unwrap();
    let pid = proxy
        .strip_prefix("process udp pid=")
        .and_then(|r| r.strip_suffix(&format!(" comm=dig{via}")));
    assert!(
        pid.is_some_and(|p| p.parse::<u32>().is_ok()),
        "{proxy}: {}",
        dump(&evs)
    );
    assert_eq!(send, vec![unhex(q)], "{}", dump(&evs));
    assert_eq!(recv, vec![unhex(a)], "{}", dump(&evs));
    evs
}

/// Per process, `--udp`: dig's DNS query (a connected UDP socket) and its answer, over IPv4
/// and IPv6.
#[test]
fn per_process_udp_dig() {
    let ns = Netns::new("iud");
    let dir = TempDir::new("intercept-udp-dig");
    per_process_dig(&[], &ns, &dir, "127.0.0.1");
    per_process_dig(&[], &ns, &dir, "::1");
}

/// Per process, `--udp`: one unconnected socket sending to two destinations in turn; each
/// datagram reaches its own destination, each answer comes back with its destination as
/// source, and the records keep the two flows apart. A connected socket too. IPv4, IPv6,
/// and IPv4 on dual-stack IPv6 sockets (IPv4-mapped addresses; recorded as IPv4).
#[test]
fn per_process_udp_one_socket_two_destinations() {
    for host in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        one_socket_two_destinations(host);
    }
}

fn one_socket_two_destinations(host: &str) {
    let ns = Netns::new("iu2");
    let dir = TempDir::new("intercept-udp-two");
    let mut a = udp_responder(&ns, &dir, host, 7001);
    let mut b = udp_responder(&ns, &dir, host, 7002);
    let mut conn = udp_responder(&ns, &dir, host, 7003);
    let script = dir.write("two.py", TWO_DESTINATIONS);
    let jsonl = dir.join("two.jsonl");
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--udp", "--format", "json", "-o"])
        .arg(&jsonl)
        .arg("--")
        .arg(python())
        .args([script.as_str(), host, "7001", "7002", "7003"]);
    let out = run_output("capagent --udp -- two.py", c, TIMEOUT);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("ANSWER {host}:7001 echo:to 7001 #0"),
            format!("ANSWER {host}:7002 echo:to 7002 #1"),
            format!("ANSWER {host}:7001 echo:to 7001 #2"),
            format!("ANSWER {host}:7002 echo:to 7002 #3"),
            format!("CONNECTED {host}:7003 echo:connected"),
        ],
        "{out}"
    );
    for (p, port) in [(&mut a, 7001), (&mut b, 7002)] {
        for i in [0, 2] {
            let got = p.expect("GOT", TIMEOUT);
            let want = format!("to {port} #{}", i + port as usize - 7001);
            assert_eq!(got.split_once(' ').unwrap().0, hex(want.as_bytes()));
        }
    }
    let got = conn.expect("GOT", TIMEOUT);
    assert_eq!(got.split_once(' ').unwrap().0, hex(b"connected"));
    let evs = records(&jsonl);
    let host = host.strip_prefix("::ffff:").unwrap_or(host);
    let (_, send, recv) = udp_flow(&evs, &sockaddr(host, 7003));
    assert_eq!(
        (send, recv),
        (
            vec![b"connected".to_vec()],
            vec![b"echo:connected".to_vec()]
        )
    );
    for port in [7001, 7002] {
        let (_, send, recv) = udp_flow(&evs, &sockaddr(host, port));
        let i = |n: usize| n + port as usize - 7001;
        let want: Vec<Vec<u8>> = [i(0), i(2)]
            .iter()
            .map(|n| format!("to {port} #{n}").into_bytes())
            .collect();
        let echo: Vec<Vec<u8>> = want.iter().map(|w| [b"echo:", &w[..]].concat()).collect();
        assert_eq!(send, want, "{}", dump(&evs));
        assert_eq!(recv, echo, "{}", dump(&evs));
    }
}

/// Per process, `--udp --upstream-proxy socks5://USER:PASS@`: dig's query goes through
/// `capagent proxy socks --auth` by UDP ASSOCIATE; both capagents record query and answer.
#[test]
fn per_process_udp_through_socks5() {
    let ns = Netns::new("ius");
    let dir = TempDir::new("intercept-udp-socks");
    let socks_jsonl = dir.join("socks.jsonl");
    let mut c = ns.cmd(capagent());
    c.args([
        "proxy",
        "socks",
        "--listen",
        "127.0.0.1:1080",
        "--auth",
        "u:p",
        "--format",
        "json",
        "-o",
    ])
    .arg(&socks_jsonl);
    let mut socks = Proc::spawn("capagent proxy socks", c);
    socks.wait_stderr("listening", 1, TIMEOUT);
    let evs = per_process_dig(
        &["--upstream-proxy", "socks5://u:p@127.0.0.1:1080"],
        &ns,
        &dir,
        "127.0.0.1",
    );
    socks.terminate(TIMEOUT);
    let sevs = records(&socks_jsonl);
    let open = one(&sevs, "udp-associate open", |e| {
        e["type"] == "open" && e["proxy"] == "socks5 udp-associate"
    });
    let sent: Vec<&Value> = sevs
        .iter()
        .filter(|e| e["type"] == "data" && e["sk"] == open["sk"])
        .collect();
    let (_, send, recv) = udp_flow(&evs, "127.0.0.1:53");
    let payload = |e: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(e["payload_b64"].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(sent.len(), 2, "{}", dump(&sevs));
    assert_eq!(payload(sent[0]), send[0], "{}", dump(&sevs));
    assert_eq!(payload(sent[1]), recv[0], "{}", dump(&sevs));
}

/// The ids of the BPF objects of kind `what` (`map` or `prog`) process `pid` holds (its
/// fds' fdinfo: maps, programs, links).
fn bpf_ids(pid: u32, what: &str) -> Vec<u64> {
    let key = format!("{what}_id:");
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|fd| {
            let info = std::fs::read_to_string(fd.path()).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Those of `ids` (of kind `what`) that still exist.
fn bpf_left(what: &str, ids: &[u64]) -> Vec<u64> {
    ids.iter()
        .copied()
        .filter(|id| {
            Command::new("bpftool")
                .args([what, "show", "id", &id.to_string()])
                .output()
                .unwrap()
                .status
                .success()
        })
        .collect()
}

/// Per process with `--udp`: the sendmsg/recvmsg programs are attached and the UDP maps
/// exist while the agent runs; after SIGTERM, and after a SIGKILL, the agent's programs and
/// maps are gone (by id: other agents may run meanwhile), and the next start succeeds.
#[test]
fn per_process_udp_hooks_and_maps_go() {
    let ns = Netns::new("iuk");
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let mut a = Agent::start(&ns, &["--udp", "--no-record", "--", "sleep", "30"]);
        let pid = a.proc.pid();
        let tree = cgroup_state();
        let progs = bpf_ids(pid, "prog");
        for p in ["capagent_sendm", "capagent_recvm", "capagent_conn4"] {
            assert!(tree.contains(p), "{p} not attached: {tree}");
        }
        let held = bpf_maps_of(pid);
        for m in [
            "ICPT_UDP_SRC",
            "ICPT_UDP_SLOT",
            "ICPT_UDP_CONN",
            "ICPT_UDP_REPLY",
        ] {
            assert!(
                held.iter().any(|(n, max, _)| n == m && *max == 16384),
                "no map {m} of 16384 entries: {held:?}"
            );
        }
        let maps = bpf_ids(pid, "map");
        // The programs and the four UDP maps among others.
        assert!(progs.len() >= 4 && maps.len() >= 4, "{progs:?} {maps:?}");
        a.signal(sig);
        for (what, ids) in [("prog", &progs), ("map", &maps)] {
            assert!(
                wait_until(TIMEOUT, || bpf_left(what, ids).is_empty()),
                "after signal {sig}: {what}s left: {:?}",
                bpf_left(what, ids)
            );
        }
    }
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--udp", "--no-record", "--", "true"]);
    run_output("capagent --udp -- true", c, TIMEOUT);
    // Without --udp, the UDP maps take one entry each.
    let a = Agent::start(&ns, &["--no-record", "--", "sleep", "30"]);
    let held = bpf_maps_of(a.proc.pid());
    let udp: Vec<_> = held
        .iter()
        .filter(|m| m.0.starts_with("ICPT_UDP"))
        .collect();
    assert!(udp.len() == 4 && udp.iter().all(|m| m.1 == 1), "{held:?}");
    a.stop();
}

/// Sends a request with two Host fields, then one in absolute form without Host, each on a
/// connection of its own to 10.66.2.2:8080; prints the status line of each answer.
const BAD_HOST_PY: &str = r#"
import socket
for req in (b"GET / HTTP/1.1\r\nHost: 10.66.2.2\r\nHost: evil\r\n\r\n",
            b"GET http://10.66.2.2:8080/ HTTP/1.1\r\n\r\n"):
    s = socket.create_connection(("10.66.2.2", 8080), timeout=20)
    s.sendall(req)
    got = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        got += d
    print(got.split(b"\r\n")[0].decode())
"#;

/// `--mode redirect --tls`: curl in the client namespace, trusting capagent's CA, asks an
/// HTTPS server beyond the gateway by address (no SNI): intercepted at the gateway with a
/// leaf for that address, the plaintext both ways recorded exactly (the server reports what
/// it read and wrote), tshark reads the HTTP from the pcapng.
#[test]
fn redirect_tls_curl() {
    let t = Topo::new();
    let dir = TempDir::new("intercept-tls");
    let before = net_state(&t.gw);
    let certs = Certs::new(&["localhost", "10.66.2.2"]);
    let args = [certs.cert_str(), certs.key_str(), "10.66.2.2"].map(String::from);
    let mut server = HttpsServer {
        server: Server::script(&t.server, &dir, "https_server.py", HTTPS_SERVER_PY, &args),
    };
    let port = server.port().to_string();
    let (jsonl, pcap, ca_dir) = (
        dir.join("tls.jsonl"),
        dir.join("tls.pcapng"),
        dir.join("ca"),
    );
    let agent = Agent::start(
        &t.gw,
        &[
            "--mode",
            "redirect",
            "--iface",
            "g0",
            "--port",
            &port,
            "--tls",
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--upstream-ca",
            certs.ca_str(),
            "--format",
            "json",
            "-o",
            jsonl.to_str().unwrap(),
            "-w",
            pcap.to_str().unwrap(),
        ],
    );
    let mut c = t.client.cmd("curl");
    c.args(["-sS", "-m", "20", "--cacert"])
        .arg(ca_dir.join("ca.crt"))
        .arg(format!("https://10.66.2.2:{port}/gateway"));
    assert_eq!(output(c), "path /gateway\n");
    let ex = server.exchange();
    let err = agent.stop();
    assert_same(&before, &net_state(&t.gw), &format!("stderr {err}"));
    let evs = records(&jsonl);
    let target = format!("10.66.2.2:{port}");
    let (up, down) = recorded(&evs, "10.66.1.2", &target);
    assert_eq!(up, ex.request, "request as recorded");
    assert_eq!(down, ex.response, "response as recorded");
    let open = one(&evs, "open", |e| e["type"] == "open");
    assert_eq!(open["proxy"], "redirect", "{open}");
    let tls = &open["tls"];
    assert_eq!(tls["error"], Value::Null, "{open}");
    for side in ["client", "server"] {
        assert_eq!(tls[side]["sni"], Value::Null, "{open}");
        assert_eq!(tls[side]["version"], "TLSv1.3", "{open}");
    }
    assert_eq!(tls["server_cert"], "CN=localhost", "{open}");
    let http = tshark_r(
        pcap.to_str().unwrap(),
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
    let lines: Vec<&str> = http.lines().map(str::trim).collect();
    assert_eq!(lines, ["/gateway", "200"], "tshark: {http}");
}

#[test]
fn redirect_as_http_keeps_requests_apart() {
    let t = Topo::new();
    let dir = TempDir::new("intercept-http");
    let before = net_state(&t.gw);
    let _http = http_server(&t, &dir);
    let jsonl = dir.join("http.jsonl");
    let agent = Agent::start(
        &t.gw,
        &[
            "--mode",
            "redirect",
            "--iface",
            "g0",
            "--port",
            "8080",
            "--as",
            "http",
            "--format",
            "json",
            "-o",
            jsonl.to_str().unwrap(),
        ],
    );
    // Two requests on one client connection (curl reuses it).
    let mut c = t.client.cmd("curl");
    c.args([
        "-sS",
        "-m",
        "20",
        "http://10.66.2.2:8080/",
        "http://10.66.2.2:8080/index.html",
    ]);
    assert_eq!(output(c), "intercepted page\nintercepted page\n");
    // Two Host fields, or none (RFC 9112 3.2): 400 from capagent, the server never reached
    // (no third `open` below).
    let script = dir.write("bad_host.py", BAD_HOST_PY);
    let mut c = t.client.cmd(python());
    c.arg(&script);
    assert_eq!(
        output(c),
        "HTTP/1.1 400 Bad Request\nHTTP/1.1 400 Bad Request\n"
    );
    let err = agent.stop();
    assert_same(&before, &net_state(&t.gw), &format!("stderr {err}"));
    let evs = records(&jsonl);
    // The HTTP handler recorded the exchanges with the original destination as the server:
    // one client connection; the server (HTTP/1.0, closes after each response) needed one
    // connection per request.
    let opens = of_type(&evs, "open");
    assert_eq!(opens.len(), 2, "{}", dump(&evs));
    for o in &opens {
        assert_eq!(o["target"], "10.66.2.2:8080", "{}", dump(&evs));
        assert_eq!(o["local"], opens[0]["local"]);
        assert!(o["local"].as_str().unwrap().starts_with("10.66.1.2:"));
    }
    let sent: Vec<u8> = evs
        .iter()
        .filter(|e| e["type"] == "data" && e["dir"] == "send")
        .flat_map(|e| {
            base64::engine::general_purpose::STANDARD
                .decode(e["payload_b64"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    let sent = String::from_utf8_lossy(&sent);
    assert!(
        sent.contains("GET / HTTP/1.1\r\n") && sent.contains("GET /index.html HTTP/1.1\r\n"),
        "{sent}"
    );
}

#[test]
fn redirect_as_socks_serves_the_socks_protocol() {
    let t = Topo::new();
    let dir = TempDir::new("intercept-socks");
    let _http = http_server(&t, &dir);
    let jsonl = dir.join("socks.jsonl");
    let agent = Agent::start(
        &t.gw,
        &[
            "--mode",
            "redirect",
            "--iface",
            "g0",
            "--port",
            "1080",
            "--as",
            "socks",
            "--format",
            "json",
            "-o",
            jsonl.to_str().unwrap(),
        ],
    );
    // The client's SOCKS proxy "at 10.66.2.2:1080" does not exist: capagent answers for it.
    let mut c = t.client.cmd("curl");
    c.args([
        "-sS",
        "-m",
        "20",
        "--socks5",
        "10.66.2.2:1080",
        "http://10.66.2.2:8080/",
    ]);
    assert_eq!(output(c), "intercepted page\n");
    agent.stop();
    let evs = records(&jsonl);
    let open = one(&evs, "open", |e| e["type"] == "open");
    assert_eq!(open["target"], "10.66.2.2:8080", "{}", dump(&evs));
    assert!(
        open["proxy"].as_str().unwrap().contains("socks5"),
        "{}",
        dump(&evs)
    );
    let (up, down) = recorded(&evs, "10.66.1.2", "10.66.2.2:8080");
    assert!(String::from_utf8_lossy(&up).starts_with("GET / HTTP/1.1\r\n"));
    assert!(String::from_utf8_lossy(&down).ends_with("intercepted page\n"));
}

#[test]
fn redirect_local_catches_the_gateways_own_connections() {
    let t = Topo::new();
    let dir = TempDir::new("intercept-local");
    let before = net_state(&t.gw);
    let _http = http_server(&t, &dir);
    let jsonl = dir.join("local.jsonl");
    let agent = Agent::start(
        &t.gw,
        &[
            "--mode",
            "redirect",
            "--iface",
            "g1",
            "--local",
            "--port",
            "8080",
            "--format",
            "json",
            "-o",
            jsonl.to_str().unwrap(),
        ],
    );
    // curl on the gateway itself; capagent's own connection to the server is not caught
    // again (it carries capagent's mark).
    for url in ["http://10.66.2.2:8080/", "http://[fd66:2::2]:8080/"] {
        let mut c = t.gw.cmd("curl");
        c.args(["-sS", "-m", "20", url]);
        assert_eq!(output(c), "intercepted page\n");
    }
    let err = agent.stop();
    assert_same(&before, &net_state(&t.gw), &format!("stderr {err}"));
    let evs = records(&jsonl);
    assert_eq!(of_type(&evs, "open").len(), 2, "{}", dump(&evs));
    check_http_records(&evs, "10.66.2.1", "10.66.2.2:8080");
    check_http_records(&evs, "fd66:2::1", "[fd66:2::2]:8080");
}

#[test]
fn cleanup_detaches_cgroup_links_left_pinned() {
    let ns = Netns::new("ipin");
    let dir = TempDir::new("intercept-pin");
    let cg_before = cgroup_state();
    let mut a = Agent::start(&ns, &["--no-record", "--", "sleep", "30"]);
    // The agent's connect4 link, pinned in a bpffs of the test's own: a pinned link outlives
    // the agent, the one case where a killed agent leaves a cgroup attachment behind.
    let progs: Value = serde_json::from_str(&output({
        let mut c = Command::new("bpftool");
        c.args(["-j", "prog", "show"]);
        c
    }))
    .unwrap();
    // This agent's (other agents may run meanwhile: their links are not this test's).
    let held = bpf_ids(a.proc.pid(), "prog");
    let conn4: Vec<u64> = progs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "capagent_conn4")
        .map(|p| p["id"].as_u64().unwrap())
        .filter(|id| held.contains(id))
        .collect();
    let links: Value = serde_json::from_str(&output({
        let mut c = Command::new("bpftool");
        c.args(["-j", "link", "show"]);
        c
    }))
    .unwrap();
    let link = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["prog_id"].as_u64().is_some_and(|id| conn4.contains(&id)))
        .expect("the agent's connect4 link")["id"]
        .as_u64()
        .unwrap();
    let bpffs = dir.join("bpffs");
    std::fs::create_dir(&bpffs).unwrap();
    run_ok(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs));
    let pin = bpffs.join("link");
    run_ok(
        Command::new("bpftool")
            .args(["link", "pin", "id", &link.to_string()])
            .arg(&pin),
    );
    a.signal(libc::SIGKILL);
    // The kernel releases the dead agent's own links a moment after it is gone: wait until
    // what it attached is down to the pinned link's program (cgroup paths aside).
    wait_until(TIMEOUT, || {
        let now = cgroup_state();
        now.lines().all(|l| {
            cg_before.lines().any(|b| b == l) || l.starts_with('/') || l.contains("capagent_conn4")
        })
    });
    let during = cgroup_state();
    let cleanup = {
        let mut c = Command::new(capagent());
        c.arg("cleanup");
        c.output().unwrap()
    };
    let _ = std::fs::remove_file(&pin);
    let _ = Command::new("umount").arg(&bpffs).status();
    assert!(during.contains("capagent_conn4"), "{during}");
    let said = String::from_utf8_lossy(&cleanup.stderr);
    assert!(cleanup.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "removed cgroup link {link} of program capagent_conn4"
        )),
        "{said}"
    );
    assert_same(&cg_before, &cgroup_state(), "after cleanup");
}

/// `intercept -w - -- CMD` with a command that prints (curl writes the page): the pcapng on
/// capagent's stdout stays whole (tshark reads it from the pipe and finds the exchange),
/// and the page is on capagent's stderr.
#[test]
fn pcapng_on_stdout_with_a_printing_command() {
    let ns = Netns::new("ipipe");
    let dir = TempDir::new("intercept-pipe");
    std::fs::write(dir.join("index.html"), "PRINTED-PAGE\n").unwrap();
    let _http = python_http_server(&ns, &dir.join(""), "127.0.0.1", 8091);
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "-w", "-", "--"]).args([
        "curl",
        "-sS",
        "-m",
        "20",
        "http://127.0.0.1:8091/",
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
    assert_eq!(out, "/\t\n\t200\n", "{err}");
    assert!(err.contains("\nPRINTED-PAGE\n"), "{err}");
    assert_eq!(err.matches(&stdout_note("curl")).count(), 1, "{err}");
}

/// Records written to a file with stderr on a terminal: a status line redrawn in place
/// (records, bytes, connections), erased at the end.
#[test]
fn status_line_on_a_terminal() {
    let ns = Netns::new("istatus");
    let dir = TempDir::new("intercept-status");
    std::fs::write(dir.join("index.html"), "status page\n").unwrap();
    let _http = python_http_server(&ns, &dir.join(""), "127.0.0.1", 8092);
    let out = dir.join("status.jsonl");
    let argv = ns.argv(&[
        capagent(),
        "intercept",
        "-o",
        out.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "curl -sS -o /dev/null http://127.0.0.1:8092/; exec sleep 30 2>/dev/null",
    ]);
    let (term, _) = stderr_on_a_terminal(&argv, 3);
    let lines = status_lines(&term);
    assert!(lines.len() >= 3, "{term:?}");
    assert!(lines.windows(2).all(|w| w[0] != w[1]), "{lines:?}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("capagent: 0:00:0") && last.ends_with(" 1 connections"),
        "{lines:?}"
    );
    assert!(term.ends_with("\r\x1b[K"), "{term:?}");
}

/// Per process, `--hook` with the example hook (examples/hook_upper.py): the server reads
/// the request upper-cased, the client the reply upper-cased; the records show the bytes as
/// sent and an `edit` record per change (the bytes that changed only), on the connection.
#[test]
fn per_process_hook() {
    let ns = Netns::new("ihook");
    let dir = TempDir::new("intercept-hook");
    let (request, reply) = (b"hello, hook \x00\xff\n", b"server says hi\n");
    let read = format!("r:{}", request.len());
    let mut server = Server::reply(&ns, &dir, 1, &read, reply);
    let rec = capagent_testkit::proxy::Rec::new(&dir, "hook");
    let hook = format!(
        "python3 {}/../examples/hook_upper.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let client = dir.write("client.py", CLIENT_PY);
    let port = server.port.to_string();
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--hook", &hook])
        .args(rec.args())
        .args(["--", python(), &client, "inet", "127.0.0.1", &port])
        .args([format!("w:{}", hex(request)), "r:eof".into()]);
    let out = run_output("capagent intercept --hook -- client.py", c, TIMEOUT);
    assert_eq!(server.recv(0), b"HELLO, HOOK \x00\xff\n");
    assert_eq!(unhex(&kv(&out, "GOT")), b"SERVER SAYS HI\n");
    server.done();
    let evs = rec.events();
    let target = format!("127.0.0.1:{port}");
    let (up, down) = recorded(&evs, "127.0.0.1", &target);
    assert_eq!(
        (up.as_slice(), down.as_slice()),
        (&b"HELLO, HOOK \x00\xff\n"[..], &b"SERVER SAYS HI\n"[..])
    );
    assert_eq!(
        edits(&evs),
        [
            edit("send", "hook", 0, b"hello, hook", b"HELLO, HOOK"),
            edit("recv", "hook", 0, b"server says hi", b"SERVER SAYS HI")
        ]
    );
    let open = one(&evs, "open", |e| e.ty() == "open" && e["target"] == target);
    for e in of_type(&evs, "edit") {
        assert_eq!(e["sk"], open["sk"], "{e}");
    }
}

/// Per process, `--as http --hook` with the example hook: heads pass (the hook leaves them
/// alone), the response body is upper-cased on its way to curl. As in the HTTP proxies
/// (docs/rewrite.md), the data records keep the response as the server sent it and the
/// change shows in one `edit` record, its offset counting the head sent to curl.
#[test]
fn per_process_as_http_hook() {
    let ns = Netns::new("ihookh");
    let dir = TempDir::new("intercept-hook-http");
    std::fs::write(dir.join("index.html"), "per process\n").unwrap();
    let _http = python_http_server(&ns, &dir.join(""), "127.0.0.1", 8093);
    let jsonl = dir.join("hook-http.jsonl");
    let head = dir.join("head");
    let hook = format!(
        "python3 {}/../examples/hook_upper.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--as", "http", "--hook", &hook])
        .args(["--format", "json", "-o"])
        .arg(&jsonl)
        .args(["--", "curl", "-sS", "-m", "20", "-D"])
        .arg(&head)
        .arg("http://127.0.0.1:8093/");
    let out = run_output("capagent intercept --as http --hook -- curl", c, TIMEOUT);
    assert_eq!(out, "PER PROCESS\n");
    let head = std::fs::read(&head).unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"), "{head:?}");
    let evs = records(&jsonl);
    let (up, down) = recorded(&evs, "127.0.0.1", "127.0.0.1:8093");
    assert!(up.starts_with(b"GET / HTTP/1.1\r\n"), "{}", dump(&evs));
    assert!(down.starts_with(b"HTTP/1.0 200 OK\r\n"), "{}", dump(&evs));
    assert!(down.ends_with(b"\r\n\r\nper process\n"), "{}", dump(&evs));
    assert_eq!(
        edits(&evs),
        [edit(
            "recv",
            "hook",
            head.len() as u64,
            b"per process",
            b"PER PROCESS"
        )]
    );
}
