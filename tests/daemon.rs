//! Root integration tests of `capagent daemon`: the real binary in a network namespace of
//! each test's own, with exactly the capabilities the unit file's CapabilityBoundingSet
//! leaves (setpriv), a notification socket of the test's (NOTIFY_SOCKET, as systemd would
//! give), real peers (curl through the SOCKS job, dig to the DNS job, a traced curl, a
//! captured HTTP server), its files read back (tshark, JSON) and its metrics compared with
//! the traffic; reloads (SIGHUP) and the stop (SIGTERM) checked for what they must keep and
//! what they must leave behind.
//!
//! Needs root, tshark, curl, dig, socat, setpriv, bpftool and systemd-analyze. Run one at a
//! time, with the capagent binary in `CAPAGENT_BIN` (`cargo xtask test` sets it):
//! `cargo test -p capagent-tests --features root-tests --test daemon -- --test-threads=1`.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use capagent_testkit::proxy::recorded;
use capagent_testkit::*;
use serde_json::Value;

const HTTP: u16 = 8000;
const ECHO: u16 = 17001;
const FORWARD: u16 = 17002;
const SOCKS: u16 = 11080;
const DNS: u16 = 15353;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// The unit's capabilities.

const CAPS: &[(&str, u32)] = &[
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_KILL", 5),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_ADMIN", 12),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
];

/// The unit's CapabilityBoundingSet: setpriv's `--bounding-set` value and the mask.
fn unit_caps() -> (String, u64) {
    let unit = fs::read_to_string(repo().join("packaging/capagent.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit has a CapabilityBoundingSet");
    let mut arg = String::from("-all");
    let mut mask = 0u64;
    for name in line.split_whitespace() {
        let (_, bit) = CAPS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("unknown capability {name} in the unit"));
        mask |= 1 << bit;
        arg.push_str(&format!(
            ",+{}",
            name.trim_start_matches("CAP_").to_lowercase()
        ));
    }
    (arg, mask)
}

fn cap_field(pid: u32, key: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .trim();
    u64::from_str_radix(v, 16).unwrap()
}

// ---------------------------------------------------------------------------------------------
// sd_notify, as systemd receives it.

struct NotifySocket {
    path: PathBuf,
    msgs: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> NotifySocket {
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m = msgs.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with the test process (the socket file goes with the temporary directory).
            loop {
                if let Ok(n) = sock.recv(&mut buf) {
                    m.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        NotifySocket { path, msgs }
    }

    fn all(&self) -> Vec<String> {
        self.msgs.lock().unwrap().clone()
    }

    /// Waits for the `nth` (0-based) message containing `what`; returns it.
    fn wait(&self, what: &str, nth: usize) -> String {
        wait_for(TIMEOUT, || {
            self.all().into_iter().filter(|m| m.contains(what)).nth(nth)
        })
        .unwrap_or_else(|| {
            panic!(
                "no message {what:?} (#{nth}) on NOTIFY_SOCKET; got {:?}",
                self.all()
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Running the daemon.

/// `capagent daemon --config CFG` in `ns` with the unit's capabilities only, notifying
/// `notify` and asked for watchdog pings every 0.5 s.
fn start_daemon(ns: &Netns, cfg: &str, notify: &NotifySocket) -> Proc {
    let (caps, _) = unit_caps();
    // On a host, tracefs and the cgroup v2 hierarchy are mounted (systemd does it); `ip netns
    // exec` gives the namespace a /sys of its own without them, and the unit's capabilities
    // cannot mount them (that needs CAP_SYS_ADMIN): mount them first, with root's full
    // powers, as the host would have.
    let mut cmd = ns.cmd("sh");
    cmd.arg("-c")
        .arg(concat!(
            "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing; ",
            "mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup; ",
            "exec \"$@\""
        ))
        .arg("sh")
        .arg("setpriv")
        .arg("--inh-caps=-all")
        .arg(format!("--bounding-set={caps}"))
        .arg(capagent())
        .args(["daemon", "--config", cfg])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .env("CAPAGENT_LOG", "info")
        // Captures attach legacy clsact filters, which outlive a process unless removed: the
        // stop must remove them (tcx links go with their fds, checked by id).
        .env("CAPAGENT_TC_MODE", "clsact");
    Proc::spawn("capagent daemon", cmd)
}

fn signal(p: &Proc, sig: libc::c_int) {
    unsafe { libc::kill(p.pid() as libc::pid_t, sig) };
}

/// The metrics endpoint's samples: (name, job label) -> value.
fn metrics(ns: &Netns, addr: &str) -> Vec<(String, String, f64)> {
    let mut cmd = ns.cmd("curl");
    cmd.args(["-sf", &format!("http://{addr}/metrics")]);
    let text = run_output("curl metrics", cmd, TIMEOUT);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, job) = match series.split_once('{') {
                Some((n, labels)) => (
                    n.to_string(),
                    labels
                        .split("job=\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .unwrap_or("")
                        .to_string(),
                ),
                None => (series.to_string(), String::new()),
            };
            (name, job, value.parse().unwrap())
        })
        .collect()
}

fn metric(samples: &[(String, String, f64)], name: &str, job: &str) -> f64 {
    samples
        .iter()
        .find(|(n, j, _)| n == name && j == job)
        .unwrap_or_else(|| panic!("no {name}{{job={job:?}}} in {samples:?}"))
        .2
}

/// Polls the metrics until `f` holds of them.
fn wait_metrics(
    ns: &Netns,
    addr: &str,
    what: &str,
    f: impl Fn(&[(String, String, f64)]) -> bool,
) -> Vec<(String, String, f64)> {
    wait_for(Duration::from_secs(45), || {
        Some(metrics(ns, addr)).filter(|m| f(m))
    })
    .unwrap_or_else(|| panic!("metrics never showed {what}: {:?}", metrics(ns, addr)))
}

// ---------------------------------------------------------------------------------------------
// Files.

/// The files of job `job` with extension `ext`, oldest first.
fn job_files(out: &Path, job: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(out.join(job))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// True when the pcapng file at `path` is complete and ends with its statistics: the
/// daemon closed it (a file being written may end anywhere).
fn closed_pcapng(path: &Path) -> bool {
    fs::read(path)
        .ok()
        .and_then(|data| blocks_of(&data).ok())
        .is_some_and(|b| b.last().is_some_and(|b| b.0 == ISB))
}

/// Waits until job `job` has rotated its `ext` file since its newest was `before`: a newer
/// file, or (pcapng) `before` closed. A packet file is closed at the end of the ring drain
/// in which it reached its size, and the next one made by the next packet: when one drain
/// took a whole download, that download's packets end the file and no newer one exists yet.
fn wait_rotated(out: &Path, job: &str, ext: &str, before: Option<&PathBuf>) {
    assert!(
        wait_until(TIMEOUT, || {
            job_files(out, job, ext).last() != before
                || (ext == "pcapng" && before.is_some_and(|b| closed_pcapng(b)))
        }),
        "{job} did not rotate its {ext} file: {:?}",
        job_files(out, job, ext)
    );
}

/// The packets the capture job `job` has written out so far: the complete packet blocks of
/// its files (the open file may end in a block being written).
fn packets_written(out: &Path, job: &str) -> u64 {
    let mut n = 0;
    for f in job_files(out, job, "pcapng") {
        let data = fs::read(f).unwrap_or_default();
        if data.len() < 12 {
            continue;
        }
        let be = data[8..12] == [0x1a, 0x2b, 0x3c, 0x4d];
        let u32_at = |i: usize| {
            let a = [data[i], data[i + 1], data[i + 2], data[i + 3]];
            if be {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            }
        };
        let mut i = 0;
        while i + 8 <= data.len() {
            let (ty, len) = (u32_at(i), u32_at(i + 4) as usize);
            if len < 12 || i + len > data.len() {
                break;
            }
            n += u64::from(ty == EPB);
            i += len;
        }
    }
    n
}

/// The bytes of the data records job `job` has written out so far (complete lines).
fn bytes_written(out: &Path, job: &str) -> u64 {
    job_files(out, job, "jsonl")
        .iter()
        .flat_map(|f| {
            let text = fs::read_to_string(f).unwrap_or_default();
            let complete = text.rfind('\n').map_or("", |i| &text[..i]).to_string();
            complete
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|e| e["type"] == "data")
                .map(|e| e["total"].as_u64().unwrap())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The blocks of a pcapng file: (type, body).
fn pcapng_blocks(path: &Path) -> Vec<(u32, Vec<u8>)> {
    blocks_of(&fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The blocks of pcapng bytes, or what is wrong with them (too short, no SHB, a block
/// cut or with mismatched lengths).
fn blocks_of(data: &[u8]) -> Result<Vec<(u32, Vec<u8>)>, String> {
    if data.len() < 28 {
        return Err("too short".into());
    }
    if data[..4] != [0x0a, 0x0d, 0x0d, 0x0a] {
        return Err("no SHB".into());
    }
    let be = data[8..12] == [0x1a, 0x2b, 0x3c, 0x4d];
    let u32_at = |i: usize| {
        let a = [data[i], data[i + 1], data[i + 2], data[i + 3]];
        if be {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if i + 12 > data.len() {
            return Err(format!("bad block at {i}"));
        }
        let ty = u32_at(i);
        let len = u32_at(i + 4) as usize;
        if len < 12 || i + len > data.len() || u32_at(i + len - 4) as usize != len {
            return Err(format!("bad block at {i}"));
        }
        blocks.push((ty, data[i + 8..i + len - 4].to_vec()));
        i += len;
    }
    Ok(blocks)
}

const IDB: u32 = 1;
const ISB: u32 = 5;
const EPB: u32 = 6;

/// (packets, bytes on the wire) of the Enhanced Packet Blocks of a capture file; checks
/// its structure (section, one interface), and its closing statistics when `closed`.
fn capture_file(path: &Path, closed: bool) -> (u64, u64) {
    let blocks = pcapng_blocks(path);
    assert_eq!(
        blocks.iter().filter(|b| b.0 == IDB).count(),
        1,
        "{}",
        path.display()
    );
    if closed {
        assert_eq!(
            blocks.last().unwrap().0,
            ISB,
            "{}: not closed with its statistics",
            path.display()
        );
    }
    let be = fs::read(path).unwrap()[8..12] == [0x1a, 0x2b, 0x3c, 0x4d];
    let mut n = 0;
    let mut bytes = 0;
    for (_, body) in blocks.iter().filter(|b| b.0 == EPB) {
        let a = [body[16], body[17], body[18], body[19]];
        bytes += u64::from(if be {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        });
        n += 1;
    }
    // tshark reads it whole, without a complaint.
    let lines = tshark_r(path.to_str().unwrap(), &[]).lines().count() as u64;
    assert_eq!(lines, n, "{}", path.display());
    (n, bytes)
}

/// Every JSON line of every file of `job` (ext jsonl).
fn json_records(out: &Path, job: &str) -> Vec<Value> {
    let mut v = Vec::new();
    for f in job_files(out, job, "jsonl") {
        for line in fs::read_to_string(&f).unwrap().lines() {
            v.push(
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", f.display())),
            );
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Peers.

/// A client that opens one connection through a SOCKS5 proxy and echoes the lines of its
/// stdin through it: `CONNECTED`, then `ECHO <line>` per line, `CLOSED` at EOF.
const SOCKS_CLIENT_PY: &str = r#"
import socket, struct, sys
proxy, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", proxy))
def recvn(n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise SystemExit("EOF from the proxy")
        b += d
    return b
s.sendall(b"\x05\x01\x00")
assert recvn(2) == b"\x05\x00"
s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack(">H", port))
rep = recvn(10)
assert rep[1] == 0, rep
print("CONNECTED", flush=True)
for line in sys.stdin:
    data = line.encode()
    s.sendall(data)
    print("ECHO", recvn(len(data)).decode().strip(), flush=True)
s.close()
print("CLOSED", flush=True)
"#;

/// Sends `line` through the SOCKS client and checks it comes back.
fn say(long: &mut Proc, line: &str) {
    let stdin = long.child.stdin.as_mut().unwrap();
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
    assert_eq!(long.expect("ECHO", TIMEOUT), line);
}

/// `curl ARGS -o FILE -w ...` in `ns`: the body and (request, header, body) byte counts.
fn curl(ns: &Netns, prog: &str, args: &[&str], dir: &TempDir) -> (Vec<u8>, u64) {
    let out = dir.join("curl.out");
    let mut cmd = ns.cmd(prog);
    cmd.args(["-sS", "-o", out.to_str().unwrap()])
        .args(["-w", "%{size_request} %{size_header} %{size_download}"])
        .args(args);
    let w = run_output("curl", cmd, TIMEOUT);
    let n: Vec<u64> = w.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (fs::read(out).unwrap(), n.iter().sum())
}

/// dig's output (also when it got no answer: a job may not listen yet).
fn dig(ns: &Netns, port: u16, name: &str) -> String {
    let out = ns
        .cmd("dig")
        .args(["@127.0.0.1", "-p", &port.to_string()])
        .args(["+tries=1", "+time=2", name])
        .stdin(Stdio::null())
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The answer address of a dig output (`name. TTL IN A ADDR`).
fn answer(out: &str) -> Option<String> {
    out.lines()
        .find(|l| !l.starts_with(';') && l.split_whitespace().nth(3) == Some("A"))
        .and_then(|l| l.split_whitespace().nth(4))
        .map(str::to_string)
}

/// bpf program and link ids a process holds (from /proc/PID/fdinfo).
fn bpf_ids(pid: u32) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let mut progs = BTreeSet::new();
    let mut links = BTreeSet::new();
    for e in fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(info) = fs::read_to_string(e.unwrap().path()) else {
            continue;
        };
        for l in info.lines() {
            if let Some(v) = l.strip_prefix("prog_id:") {
                progs.insert(v.trim().parse().unwrap());
            }
            if let Some(v) = l.strip_prefix("link_id:") {
                links.insert(v.trim().parse().unwrap());
            }
        }
    }
    (progs, links)
}

fn bpftool_has(what: &str, id: u32) -> bool {
    Command::new("bpftool")
        .args([what, "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Waits until no program (`what` = "prog") or link ("link") of `ids` exists: the kernel
/// frees them once their last reference is gone, which can take an RCU grace period.
fn wait_gone(what: &str, ids: &BTreeSet<u32>) {
    let left = || -> Vec<u32> {
        ids.iter()
            .copied()
            .filter(|id| bpftool_has(what, *id))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || left().is_empty()),
        "{what} {:?} still there",
        left()
    );
}

// ---------------------------------------------------------------------------------------------

fn config(out: &Path, metrics: &str, keep: u32, comm: &str, jobs: &str) -> String {
    format!(
        r#"# capagent daemon test configuration
[daemon]
output_dir = "{}"
metrics = "{metrics}"
rotate_size = "16KiB"
rotate_age = "never"
keep = {keep}

[[job]]
name = "cap"
kind = "capture"
interface = "lo"
filter = "tcp port {HTTP}"
ring_kib = 1024
record = ["pcapng"]

[[job]]
name = "socks"
kind = "proxy socks"
listen = "127.0.0.1:{SOCKS}"
record = ["json", "pcapng"]

[[job]]
name = "icpt"
kind = "intercept"
mode = "tproxy"
iface = "vd0"
udp = true
port = [9]
record = ["json"]
{jobs}
# traced: {comm}
"#,
        out.display()
    )
}

fn trace_job(comm: &str) -> String {
    format!(
        "\n[[job]]\nname = \"trace\"\nkind = \"trace\"\ncomm = \"{comm}\"\nring_kib = 1024\nrecord = [\"json\", \"pcapng\"]\n"
    )
}

fn dns_job(answer: &str) -> String {
    format!(
        "\n[[job]]\nname = \"dns\"\nkind = \"dns\"\nlisten = \"127.0.0.1:{DNS}\"\nanswer = \"{answer}\"\n\"--name\" = \"*.capagent.test\"\nstdout = true\n"
    )
}

fn forward_job() -> String {
    format!(
        "\n[[job]]\nname = \"fwd\"\nkind = \"proxy forward\"\nlisten = \"127.0.0.1:{FORWARD}\"\nto = \"127.0.0.1:{ECHO}\"\nrecord = [\"text\"]\n"
    )
}

#[test]
fn daemon_runs_jobs_reloads_and_stops_clean() {
    let ns = Netns::new("daemon");
    let dir = TempDir::new("daemon");
    let out = dir.join("out");
    let www = dir.join("www");
    fs::create_dir(&www).unwrap();
    let big = pattern(100_000, 7);
    fs::write(www.join("big"), &big).unwrap();
    let http = python_http_server(&ns, &www, "127.0.0.1", HTTP);
    let mut echo_cmd = ns.cmd("socat");
    echo_cmd.args([
        &format!("TCP-LISTEN:{ECHO},bind=127.0.0.1,reuseaddr,fork"),
        "EXEC:cat",
    ]);
    let echo = Proc::spawn("echo server", echo_cmd);
    wait_listen(echo.pid(), ECHO);
    // A curl of a name of its own: the trace job follows it by name (the machine may run
    // other curls).
    let comm = format!("dtc{}", std::process::id() % 1_000_000);
    let traced = dir.join(&comm);
    fs::copy("/usr/bin/curl", &traced).unwrap();
    let traced = traced.to_str().unwrap().to_string();
    let metrics_addr = "127.0.0.1:19464";
    // The interface the intercept job pulls traffic from.
    let mut veth = ns.cmd("ip");
    veth.args(["link", "add", "vd0", "type", "veth", "peer", "name", "vd1"]);
    run_output("ip link", veth, TIMEOUT);
    for dev in ["vd0", "vd1"] {
        let mut up = ns.cmd("ip");
        up.args(["link", "set", dev, "up"]);
        run_output("ip link", up, TIMEOUT);
    }
    let rules = || {
        let mut out = String::new();
        for v in ["-4", "-6"] {
            let mut cmd = ns.cmd("ip");
            cmd.args([v, "rule", "show"]);
            out.push_str(&run_output("ip rule", cmd, TIMEOUT));
        }
        out
    };
    let rules_before = rules();
    let tables = || {
        let mut nft = ns.cmd("nft");
        nft.args(["list", "tables"]);
        run_output("nft", nft, TIMEOUT)
    };

    let cfg = dir.write(
        "capagent.toml",
        config(
            &out,
            metrics_addr,
            0,
            &comm,
            &(trace_job(&comm) + &dns_job("127.0.0.7")),
        ),
    );
    let notify = NotifySocket::bind(dir.join("notify.sock"));
    let mut daemon = start_daemon(&ns, &cfg, &notify);
    let pid = daemon.pid();
    let ready = notify.wait("READY=1", 0);
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");
    // The unit's capabilities and nothing more.
    let (_, mask) = unit_caps();
    assert_eq!(cap_field(pid, "CapEff:"), mask);
    assert_eq!(cap_field(pid, "CapBnd:"), mask);
    daemon.wait_stderr("capagent: capturing on lo", 1, TIMEOUT);
    daemon.wait_stderr("trace::run: attached: tracing", 1, TIMEOUT);
    daemon.wait_stderr(
        &format!("socks proxy listening on 127.0.0.1:{SOCKS}"),
        1,
        TIMEOUT,
    );
    daemon.wait_stderr(&format!("dns listening on 127.0.0.1:{DNS}"), 1, TIMEOUT);
    daemon.wait_stderr("capagent: intercepting", 1, TIMEOUT);
    assert!(
        tables().contains(&format!("capagent-{pid}")),
        "{}",
        tables()
    );
    assert_ne!(rules(), rules_before, "no policy routing rule for tproxy");

    // A long connection through the SOCKS job, kept open across the reload below.
    let script = dir.write("socks_client.py", SOCKS_CLIENT_PY);
    let mut long_cmd = ns.cmd(python());
    long_cmd
        .arg(&script)
        .args([SOCKS.to_string(), "127.0.0.1".into(), ECHO.to_string()]);
    let mut long = Proc::spawn_piped("socks client", long_cmd);
    long.expect("CONNECTED", TIMEOUT);
    say(&mut long, "hello-1");

    // Downloads through the SOCKS job, and by the traced curl; the capture's files are
    // written out (and rotated) in between.
    let url = format!("http://127.0.0.1:{HTTP}/big");
    let socks_arg = format!("127.0.0.1:{SOCKS}");
    let mut socks_bytes = 2 * "hello-1\n".len() as u64;
    let mut traced_bytes = 0;
    for _ in 0..3 {
        let newest = job_files(&out, "cap", "pcapng").pop();
        let (body, n) = curl(&ns, "curl", &["--socks5", &socks_arg, &url], &dir);
        assert!(body == big, "the download through the SOCKS job differs");
        socks_bytes += n;
        let (body, n) = curl(&ns, &traced, &[&url], &dir);
        assert!(body == big);
        traced_bytes += n;
        wait_rotated(&out, "cap", "pcapng", newest.as_ref());
    }
    assert_eq!(
        answer(&dig(&ns, DNS, "www.capagent.test")).as_deref(),
        Some("127.0.0.7")
    );
    assert!(dig(&ns, DNS, "other.example").contains("status: NXDOMAIN"));

    // Metrics: every job up, and the counters of the traffic above.
    let m = wait_metrics(&ns, metrics_addr, "the traffic", |m| {
        let has = |n: &str, j: &str, v: f64| m.iter().any(|(a, b, c)| a == n && b == j && *c >= v);
        has("capagent_job_connections_total", "socks", 4.0)
            && has("capagent_job_connections_total", "trace", 3.0)
            && has("capagent_job_events_total", "dns", 8.0)
    });
    for job in ["cap", "socks", "icpt", "trace", "dns"] {
        assert_eq!(metric(&m, "capagent_job_up", job), 1.0, "{job}");
        assert_eq!(metric(&m, "capagent_job_errors_total", job), 0.0, "{job}");
    }
    // SOCKS: 3 downloads and the open echo connection; exactly the bytes relayed.
    assert_eq!(metric(&m, "capagent_job_connections_total", "socks"), 4.0);
    assert_eq!(metric(&m, "capagent_job_active_connections", "socks"), 1.0);
    assert_eq!(
        metric(&m, "capagent_job_bytes_total", "socks") as u64,
        socks_bytes
    );
    // DNS: two queries, each an open, a query, an answer and a close.
    assert_eq!(metric(&m, "capagent_job_connections_total", "dns"), 2.0);
    assert_eq!(metric(&m, "capagent_job_events_total", "dns"), 8.0);
    // Trace: the 3 connects of the traced curl; its bytes are the records' bytes and at least
    // what it sent and received over HTTP.
    assert_eq!(metric(&m, "capagent_job_connections_total", "trace"), 3.0);
    let status = {
        let mut cmd = ns.cmd(capagent());
        cmd.args(["status", "--config", &cfg]);
        run_output("capagent status", cmd, TIMEOUT)
    };
    for job in ["cap", "socks", "trace", "dns"] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(job) && l.contains(" running ")),
            "{job} not running in:\n{status}"
        );
    }

    // The writers flush every 200 ms: wait until the files hold what the metrics counted
    // (the trace job's bytes, the capture's packets), then read them. (If they never do,
    // the assertions below say what differs.)
    wait_until(TIMEOUT, || {
        bytes_written(&out, "trace") == metric(&m, "capagent_job_bytes_total", "trace") as u64
            && packets_written(&out, "cap")
                == metric(
                    &metrics(&ns, metrics_addr),
                    "capagent_job_packets_total",
                    "cap",
                ) as u64
    });
    let trace = json_records(&out, "trace");
    let recorded: u64 = trace
        .iter()
        .filter(|e| e["type"] == "data")
        .map(|e| e["total"].as_u64().unwrap())
        .sum();
    assert_eq!(
        metric(&m, "capagent_job_bytes_total", "trace") as u64,
        recorded
    );
    assert!(recorded >= traced_bytes, "{recorded} < {traced_bytes}");
    assert!(trace.iter().all(|e| e["comm"] == comm.as_str()));
    for f in job_files(&out, "trace", "pcapng")
        .into_iter()
        .chain(job_files(&out, "socks", "pcapng"))
    {
        tshark_r(f.to_str().unwrap(), &[]);
    }
    let socks = json_records(&out, "socks");
    assert_eq!(socks.iter().filter(|e| e["type"] == "open").count(), 4);
    // The capture: several files, each complete (the closed ones end with their statistics),
    // together exactly the packets the metrics counted, with the 6 connections to the HTTP
    // server.
    let caps = job_files(&out, "cap", "pcapng");
    assert!(caps.len() >= 3, "no rotation: {caps:?}");
    let (mut packets, mut bytes, mut syns) = (0, 0, 0);
    for (i, f) in caps.iter().enumerate() {
        let (n, b) = capture_file(f, i + 1 < caps.len());
        packets += n;
        bytes += b;
        syns += tshark_r(
            f.to_str().unwrap(),
            &["-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0"],
        )
        .lines()
        .count();
    }
    let m = metrics(&ns, metrics_addr);
    assert_eq!(
        metric(&m, "capagent_job_packets_total", "cap") as u64,
        packets
    );
    assert_eq!(metric(&m, "capagent_job_bytes_total", "cap") as u64, bytes);
    assert_eq!(syns, 6);
    // JSON lines of the DNS job on stdout, tagged with the job.
    let dns_line = daemon.expect("{\"job\":\"dns\",", TIMEOUT);
    assert!(dns_line.starts_with("\"type\":\"open\""), "{dns_line}");
    // Watchdog pings from the main loop.
    notify.wait("WATCHDOG=1", 1);

    // Reload: the trace job removed, the DNS job changed, a forwarder added; the SOCKS job
    // and its open connection go on untouched.
    let (trace_progs, _) = bpf_ids(pid);
    assert!(!trace_progs.is_empty());
    fs::write(
        &cfg,
        config(
            &out,
            metrics_addr,
            0,
            &comm,
            &(dns_job("127.0.0.8") + &forward_job()),
        ),
    )
    .unwrap();
    signal(&daemon, libc::SIGHUP);
    notify.wait("RELOADING=1", 0);
    notify.wait("READY=1", 1);
    daemon.wait_stderr(
        &format!("forward 127.0.0.1:{FORWARD} -> 127.0.0.1:{ECHO} listening"),
        1,
        TIMEOUT,
    );
    say(&mut long, "hello-2");
    socks_bytes += 2 * "hello-2\n".len() as u64;
    let mut fwd = ns.cmd("socat");
    fwd.args(["-", &format!("TCP:127.0.0.1:{FORWARD}")]);
    let mut fwd = Proc::spawn_piped("forward client", fwd);
    writeln!(fwd.child.stdin.as_mut().unwrap(), "through the new job").unwrap();
    assert_eq!(fwd.expect("through", TIMEOUT), "the new job");
    drop(fwd);
    assert!(
        wait_until(TIMEOUT, || {
            answer(&dig(&ns, DNS, "www.capagent.test")).as_deref() == Some("127.0.0.8")
        }),
        "the changed DNS job never answered"
    );
    let m = metrics(&ns, metrics_addr);
    assert!(
        !m.iter().any(|(_, j, _)| j == "trace"),
        "the removed job is still listed"
    );
    assert_eq!(metric(&m, "capagent_job_up", "fwd"), 1.0);
    assert_eq!(metric(&m, "capagent_job_restarts_total", "socks"), 0.0);
    assert_eq!(metric(&m, "capagent_job_connections_total", "socks"), 4.0);
    assert_eq!(metric(&m, "capagent_job_active_connections", "socks"), 1.0);
    assert_eq!(
        metric(&m, "capagent_job_bytes_total", "socks") as u64,
        socks_bytes
    );
    assert_eq!(metric(&m, "capagent_daemon_reloads_total", ""), 1.0);
    // The removed trace job's programs are gone; the capture's are still there.
    let (progs, _) = bpf_ids(pid);
    assert!(
        progs.len() < trace_progs.len(),
        "{progs:?} vs {trace_progs:?}"
    );
    wait_gone("prog", &trace_progs.difference(&progs).copied().collect());

    // A bad file is rejected; everything keeps running.
    fs::write(
        &cfg,
        "[daemon]\nkeep = 1\n\n[[job]]\nname = \"x\"\nkind = \"nope\"\n",
    )
    .unwrap();
    signal(&daemon, libc::SIGHUP);
    let st = notify.wait("reload rejected", 0);
    assert!(
        st.contains(&format!("{cfg}:6:8: job \"x\": unknown kind \"nope\"")),
        "{st}"
    );
    say(&mut long, "hello-3");
    let m = metrics(&ns, metrics_addr);
    assert_eq!(metric(&m, "capagent_daemon_reload_failures_total", ""), 1.0);
    assert_eq!(metric(&m, "capagent_job_up", "fwd"), 1.0);

    // Retention: keep 2 closed files per job and kind (every job restarts: the [daemon]
    // settings changed), then more captured downloads.
    let stdin = long.child.stdin.take();
    drop(stdin);
    long.expect("CLOSED", TIMEOUT);
    fs::write(
        &cfg,
        config(&out, metrics_addr, 2, &comm, &dns_job("127.0.0.8")),
    )
    .unwrap();
    signal(&daemon, libc::SIGHUP);
    notify.wait("READY=1", 3);
    daemon.wait_stderr("capagent: capturing on lo", 2, TIMEOUT);
    for _ in 0..4 {
        let newest = job_files(&out, "cap", "pcapng").pop();
        curl(&ns, "curl", &[&url], &dir);
        wait_rotated(&out, "cap", "pcapng", newest.as_ref());
    }
    assert!(
        wait_until(TIMEOUT, || job_files(&out, "cap", "pcapng").len() <= 3),
        "retention kept {:?}",
        job_files(&out, "cap", "pcapng")
    );
    assert!(daemon.stderr().contains(&format!(
        "retention: deleted {}",
        out.join("cap").join("cap-").display()
    )));
    let left = job_files(&out, "cap", "pcapng");
    assert!(
        left.iter().all(|f| !caps.contains(f)),
        "old files left: {left:?}"
    );

    // SIGTERM: STOPPING, exit 0 within seconds, files closed, nothing left in the kernel.
    let (progs, links) = bpf_ids(pid);
    assert!(!progs.is_empty());
    let tc_filters = |dir: &str| {
        let mut tc = ns.cmd("tc");
        tc.args(["filter", "show", "dev", "lo", dir]);
        run_output("tc", tc, TIMEOUT)
    };
    assert!(tc_filters("egress").contains("capture_egress"));
    let stop = Instant::now();
    signal(&daemon, libc::SIGTERM);
    let st = daemon.wait(TIMEOUT);
    assert!(st.success(), "exit status {st}: {}", daemon.stderr());
    assert!(
        stop.elapsed() < Duration::from_secs(5),
        "{:?} to stop",
        stop.elapsed()
    );
    notify.wait("STOPPING=1", 0);
    wait_gone("prog", &progs);
    wait_gone("link", &links);
    for dir in ["ingress", "egress"] {
        assert_eq!(tc_filters(dir).trim(), "", "{dir}");
    }
    let mut qdisc = ns.cmd("tc");
    qdisc.args(["qdisc", "show", "dev", "lo"]);
    let qdisc = run_output("tc", qdisc, TIMEOUT);
    assert!(!qdisc.contains("clsact"), "{qdisc}");
    assert_eq!(tables().trim(), "");
    assert_eq!(rules(), rules_before);
    let caps = job_files(&out, "cap", "pcapng");
    for f in &caps {
        capture_file(f, true);
    }
    let msgs = notify.all();
    let pos = |what: &str| msgs.iter().position(|m| m.contains(what)).unwrap();
    assert!(pos("READY=1") < pos("RELOADING=1") && pos("RELOADING=1") < pos("STOPPING=1"));
    drop(http);
    drop(echo);
}

#[test]
fn failing_jobs_are_retried_alone() {
    let ns = Netns::new("dfail");
    let dir = TempDir::new("dfail");
    let metrics_addr = "127.0.0.1:19465";
    // Something else holds the UDP port of one DNS job.
    let mut holder_cmd = ns.cmd("socat");
    holder_cmd.args(["-u", "UDP-RECV:15400,bind=127.0.0.1", "-"]);
    let mut holder = Proc::spawn("port holder", holder_cmd);
    assert!(
        wait_until(TIMEOUT, || {
            fs::read_to_string(format!("/proc/{}/net/udp", holder.pid()))
                .unwrap_or_default()
                .contains(":3C28 ")
        }),
        "socat does not listen"
    );
    let cfg = dir.write(
        "capagent.toml",
        format!(
            r#"[daemon]
output_dir = "{}"
metrics = "{metrics_addr}"

[[job]]
name = "busy"
kind = "dns"
listen = "127.0.0.1:15400"
answer = "127.0.0.1"

[[job]]
name = "nocap"
kind = "capture"
interface = "nosuch0"

[[job]]
name = "good"
kind = "dns"
listen = "127.0.0.1:15401"
answer = "127.0.0.2"
"#,
            dir.join("out").display()
        ),
    );
    let notify = NotifySocket::bind(dir.join("notify.sock"));
    let mut daemon = start_daemon(&ns, &cfg, &notify);
    notify.wait("READY=1", 0);
    let m = wait_metrics(&ns, metrics_addr, "retries", |m| {
        m.iter()
            .any(|(n, j, v)| n == "capagent_job_restarts_total" && j == "busy" && *v >= 2.0)
    });
    assert!(metric(&m, "capagent_job_errors_total", "busy") >= 2.0);
    assert!(metric(&m, "capagent_job_errors_total", "nocap") >= 1.0);
    assert_eq!(metric(&m, "capagent_job_up", "good"), 1.0);
    assert_eq!(metric(&m, "capagent_job_errors_total", "good"), 0.0);
    assert_eq!(metric(&m, "capagent_job_restarts_total", "good"), 0.0);
    assert_eq!(
        answer(&dig(&ns, 15401, "x.example")).as_deref(),
        Some("127.0.0.2")
    );
    let mut status = ns.cmd(capagent());
    status.args(["status", "--metrics", metrics_addr]);
    let status = run_output("capagent status", status, TIMEOUT);
    assert!(
        status.contains(
            "busy: last error: cannot listen on 127.0.0.1:15400 (udp): Address already in use"
        ),
        "{status}"
    );
    assert!(
        status.contains("nocap: last error: no such interface: nosuch0"),
        "{status}"
    );
    assert!(
        daemon
            .stderr()
            .contains("job busy: cannot listen on 127.0.0.1:15400 (udp)")
    );
    assert!(daemon.stderr().contains("retrying in 2s"));
    // Once the port is free the job comes up at its next retry.
    let _ = holder.child.kill();
    let _ = holder.child.wait();
    wait_metrics(&ns, metrics_addr, "busy running", |m| {
        m.iter()
            .any(|(n, j, v)| n == "capagent_job_up" && j == "busy" && *v == 1.0)
    });
    assert!(
        wait_until(TIMEOUT, || {
            answer(&dig(&ns, 15400, "x.example")).as_deref() == Some("127.0.0.1")
        }),
        "busy never answered"
    );
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait(TIMEOUT).success());
}

/// Jobs with `replace = [...]` (as `--replace` on the command line): a proxy job, and an
/// intercept job running a command. A Python client's request and a Python server's answer
/// through each are changed on the way, and the job's JSON lines hold the bytes as sent
/// with an `edit` record per change.
#[test]
fn jobs_replace_bytes() {
    let ns = Netns::new("drepl");
    let dir = TempDir::new("drepl");
    let out = dir.join("out");
    let (request, reply) = (b"hello ping\n", b"server says Boo!\n");
    let read = format!("r:{}", request.len());
    let mut fwd_server = Server::reply(&ns, &dir, 1, &read, reply);
    let mut icpt_server = Server::reply(&ns, &dir, 1, &read, reply);
    let (c2s, s2c) = ("c2s:/ping/pong/", "s2c:/Boo!/Yay!/");
    let client = dir.write("client.py", CLIENT_PY);
    let steps = [format!("w:{}", hex(request)), "r:eof".into()];
    let cfg = dir.write(
        "capagent.toml",
        format!(
            r#"[daemon]
output_dir = "{}"

[[job]]
name = "rw"
kind = "proxy forward"
listen = "127.0.0.1:{FORWARD}"
to = "127.0.0.1:{}"
replace = ["{c2s}", "{s2c}"]
record = ["json"]

[[job]]
name = "icpt"
kind = "intercept"
replace = ["{c2s}", "{s2c}"]
record = ["json"]
command = ["{}", "{client}", "inet", "127.0.0.1", "{}", "{}", "{}"]
"#,
            out.display(),
            fwd_server.port,
            python(),
            icpt_server.port,
            steps[0],
            steps[1],
        ),
    );
    let notify = NotifySocket::bind(dir.join("notify.sock"));
    let mut daemon = start_daemon(&ns, &cfg, &notify);
    notify.wait("READY=1", 0);
    wait_listen(daemon.pid(), FORWARD);
    let mut c = ns.cmd(python());
    c.args([&client, "inet", "127.0.0.1", &FORWARD.to_string()])
        .args(&steps);
    let got = run_output("client.py through the proxy job", c, TIMEOUT);
    assert_eq!(unhex(&kv(&got, "GOT")), b"server says Yay!\n");
    // The intercept job's command: the job ends with it.
    daemon.wait_stderr("job icpt: ended", 1, TIMEOUT);
    for server in [&mut fwd_server, &mut icpt_server] {
        assert_eq!(server.recv(0), b"hello pong\n");
        server.done();
    }
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait(TIMEOUT).success(), "{}", daemon.stderr());
    for (job, server) in [("rw", &fwd_server), ("icpt", &icpt_server)] {
        let evs = json_records(&out, job);
        assert_eq!(
            edits(&evs),
            [
                edit("send", c2s, 6, b"ping", b"pong"),
                edit("recv", s2c, 12, b"Boo!", b"Yay!")
            ],
            "{job}"
        );
        let target = format!("127.0.0.1:{}", server.port);
        let open = one(&evs, "open", |e| e.ty() == "open" && e["target"] == target);
        assert_eq!(recorded(&evs, open.fd(), "send"), b"hello pong\n", "{job}");
        assert_eq!(
            recorded(&evs, open.fd(), "recv"),
            b"server says Yay!\n",
            "{job}"
        );
    }
}

#[test]
fn check_reports_errors_with_line_and_column() {
    let dir = TempDir::new("dcheck");
    let check = |path: &str| {
        let out = Command::new(capagent())
            .args(["daemon", "--check", "--config", path])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The example configuration.
    let example = repo().join("packaging/capagent.toml");
    let example = example.to_str().unwrap();
    let (code, stdout, stderr) = check(example);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("{example}: OK, 8 jobs\n"));
    for (text, at, what) in [
        (
            "[daemon]\nkeep = 2\n\n[[job]]\nname = \"x\"\nkind = \"nope\"\n",
            "6:8",
            "job \"x\": unknown kind \"nope\"",
        ),
        (
            "[[job]]\nname = \"c\"\nkind = \"capture\"\ninterface = \"lo\"\nsnaplen = \"many\"\n",
            "1:1",
            "job \"c\": invalid value 'many' for '--snaplen <BYTES>'",
        ),
        (
            "\n\n[[job]]\nname = \"c\"\nkind = \"capture\"\ninterface = \"lo\"\nrecord = [\"json\"]\n",
            "3:1",
            "job \"c\": a capture records \"pcapng\" or \"text\", not \"json\"",
        ),
        (
            "[[job]]\nname = \"t\"\nkind = \"trace\"\nwrite = \"x.pcapng\"\n",
            "4:1",
            "job \"t\": write is set by the daemon",
        ),
        (
            "[[job]]\nname = \"t\"\nkind = \"trace\"\n",
            "1:1",
            "job \"t\": nothing to trace",
        ),
        (
            "[[job]]\nname = \"f\"\nkind = \"proxy forward\"\nlisten = \"127.0.0.1:1\"\nto = \"127.0.0.1:2\"\nreplace = [\"s2c:/(/x/\"]\n",
            "1:1",
            "job \"f\": --replace \"s2c:/(/x/\": bad regex",
        ),
        (
            "[daemon]\nrotate_size = \"lots\"\n",
            "2:15",
            "rotate_size: not a size",
        ),
        ("[daemon\n", "1:8", ""),
    ] {
        let path = dir.write("bad.toml", text);
        let (code, stdout, stderr) = check(&path);
        assert_eq!(code, Some(1), "{text}: {stderr}");
        assert_eq!(stdout, "");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("{path}:{at}: {what}")),
            "{text:?}: {stderr}"
        );
    }
    let (code, _, stderr) = check("/nonexistent/capagent.toml");
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with("/nonexistent/capagent.toml: cannot read: "),
        "{stderr}"
    );
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let dir = TempDir::new("dunit");
    let unit = fs::read_to_string(repo().join("packaging/capagent.service")).unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/capagent",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "no {line}");
    }
    // systemd-analyze checks that the programs exist: this capagent stands for the
    // installed one.
    let cfg = dir.write("capagent.toml", "");
    let unit = unit
        .replace("/usr/local/bin/capagent", capagent())
        .replace("/etc/capagent/capagent.toml", &cfg);
    let path = dir.write("capagent.service", unit);
    let out = Command::new("systemd-analyze")
        .args(["verify", &path])
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "");
}

#[test]
fn status_of_no_daemon_is_one_line() {
    let out = Command::new(capagent())
        .args(["status", "--metrics", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "capagent: cannot read the daemon's metrics at http://127.0.0.1:1/metrics: "
        ),
        "{stderr}"
    );
}
