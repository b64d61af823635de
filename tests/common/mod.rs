//! Harness of the root integration tests: network namespaces, temporary directories, peer
//! processes with timeouts, `capagent trace` runs and their JSON events.
//!
//! Every guard here cleans up in `Drop`, so a failing (panicking) test still kills its
//! processes and deletes its namespace and files.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::Value;

/// The `capagent` binary under test.
pub const CAPAGENT: &str = env!("CARGO_BIN_EXE_capagent");

/// Longest any single capagent run or peer may take before the test gives up on it.
pub const TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "capagent-t-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

// ---------------------------------------------------------------------------------------------
// Tools.

/// The real Python interpreter (`sys.executable` of the `python3` in PATH), so that version
/// managers' wrapper scripts (pyenv shims) do not sit between capagent and the interpreter:
/// the process capagent starts then execs straight into Python, keeping its pid.
pub fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 must be installed");
        assert!(out.status.success(), "python3 does not run");
        let exe = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(Path::new(&exe).is_absolute(), "odd sys.executable {exe:?}");
        exe
    })
}

/// The process name (comm) of [`python`]: the kernel takes it from the file name that was
/// executed, cut to 15 bytes.
pub fn python_comm() -> String {
    comm_of(python())
}

pub fn comm_of(path: &str) -> String {
    let base = Path::new(path).file_name().unwrap().to_str().unwrap();
    base.chars().take(15).collect()
}

// ---------------------------------------------------------------------------------------------
// Temporary directory.

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(tag));
        fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to the file `name` and returns its path as a string.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let p = self.join(name);
        fs::write(&p, contents).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Network namespace.

/// A network namespace of its own with only `lo`, up; deleted on drop.
pub struct Netns {
    pub name: String,
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    /// `ip netns exec NS prog`, to add arguments to.
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// The argv of `ip netns exec NS args...`, for `capagent trace -- ...`.
    pub fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The guards owning the test's processes are dropped before this one (declared
        // after it) and kill theirs. A process they do not own, such as the command of a
        // capagent run that timed out, would keep the namespace alive: every process still
        // in the namespace was started by this test, so it is killed too.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// Peer processes.

/// A background process whose stdout lines arrive on a channel; killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` with stdin from `/dev/null`.
    pub fn spawn(name: &str, cmd: Command) -> Proc {
        Proc::spawn_with(name, cmd, Stdio::null())
    }

    /// Spawns `cmd` with a pipe as stdin (`child.stdin`).
    pub fn spawn_piped(name: &str, cmd: Command) -> Proc {
        Proc::spawn_with(name, cmd, Stdio::piped())
    }

    fn spawn_with(name: &str, mut cmd: Command, stdin: Stdio) -> Proc {
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines: rx,
            seen: Vec::new(),
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line starting with `prefix` (earlier lines are skipped), without the
    /// prefix and the space after it. Panics after `timeout`.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.strip_prefix(' ').unwrap_or(rest).to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no line {prefix:?} within {timeout:?}; stdout so far {:?}; stderr {:?}",
                    self.name,
                    self.seen,
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: exited without printing {prefix:?}; stdout {:?}; stderr {:?}",
                    self.name,
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for the process to exit; kills it and panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match wait_timeout(&mut self.child, timeout) {
            Some(st) => st,
            None => panic!(
                "{} did not exit within {timeout:?}; stdout {:?}; stderr {:?}",
                self.name,
                self.seen,
                self.stderr()
            ),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `child` until it exits or `timeout` passes (then kills it and returns `None`).
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a short command to completion (stdin from /dev/null) and returns its stdout;
/// panics when it fails or takes longer than `timeout`.
pub fn run_output(name: &str, cmd: Command, timeout: Duration) -> String {
    let mut p = Proc::spawn(name, cmd);
    let st = p.wait(timeout);
    let mut out = Vec::new();
    while let Ok(l) = p.lines.recv_timeout(Duration::from_secs(2)) {
        out.push(l);
    }
    assert!(
        st.success(),
        "{name} failed ({st}): stdout {out:?}, stderr {:?}",
        p.stderr()
    );
    let mut s = out.join("\n");
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------------------------
// Scripted Python peers.

/// A TCP or Unix stream server: `server.py FAMILY ADDR CONNS STEP...`.
///
/// FAMILY is `inet`, `inet6` or `unix` (ADDR a path, or `@name` for an abstract name). It
/// listens (port 0: the kernel picks one), prints `READY <port>`, then for each of CONNS
/// connections, in order, accepts and runs the steps, and closes the connection:
/// - `r:N` reads exactly N bytes (fewer at EOF) and prints `RECV <conn> <hex>`;
/// - `r:eof` reads until EOF and prints `RECV <conn> <hex>`;
/// - `count` reads until EOF and prints `COUNT <conn> <bytes>`;
/// - `w:HEX` sends the bytes and prints `SENT <conn> <hex>`;
/// - `wf:PATH` sends the contents of the file PATH and prints `SENT <conn> <len>`;
/// - `sleep:SECS` waits.
///
/// It prints `DONE` at the end.
pub const SERVER_PY: &str = r#"
import socket, sys, time
fam, addr, nconn, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
if fam == "unix":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind("\0" + addr[1:] if addr.startswith("@") else addr)
    port = 0
else:
    s = socket.socket(socket.AF_INET6 if fam == "inet6" else socket.AF_INET, socket.SOCK_STREAM)
    s.bind((addr, 0))
    port = s.getsockname()[1]
s.listen(16)
print("READY", port, flush=True)

def read_exact(c, n):
    buf = b""
    while len(buf) < n:
        d = c.recv(n - len(buf))
        if not d:
            break
        buf += d
    return buf

def read_eof(c):
    parts = []
    while True:
        d = c.recv(1 << 20)
        if not d:
            return b"".join(parts)
        parts.append(d)

for k in range(nconn):
    c, _ = s.accept()
    for st in steps:
        op, _, arg = st.partition(":")
        if op == "r":
            data = read_eof(c) if arg == "eof" else read_exact(c, int(arg))
            print("RECV", k, data.hex(), flush=True)
        elif op == "count":
            n = 0
            while True:
                d = c.recv(1 << 20)
                if not d:
                    break
                n += len(d)
            print("COUNT", k, n, flush=True)
        elif op == "w":
            c.sendall(bytes.fromhex(arg))
            print("SENT", k, arg, flush=True)
        elif op == "wf":
            data = open(arg, "rb").read()
            c.sendall(data)
            print("SENT", k, len(data), flush=True)
        elif op == "sleep":
            time.sleep(float(arg))
        else:
            raise SystemExit("bad step " + st)
    c.close()
print("DONE", flush=True)
"#;

/// A stream client: `client.py FAMILY ADDR PORT STEP...` (FAMILY `inet`/`inet6`; PORT
/// ignored for `unix`, where ADDR is a path or `@name`).
///
/// Connects, prints `PID <pid>`, `FD <fd>` and `LOCAL <local port>`, then runs the steps:
/// - `w:HEX` sends the bytes (`sendall`); `wf:PATH` sends the contents of the file PATH;
/// - `shut` shuts the sending side down;
/// - `r:N` reads exactly N bytes (fewer at EOF), `r:eof` reads until EOF, then prints
///   `GOT <hex>`.
///
/// It closes the socket and prints `DONE`.
pub const CLIENT_PY: &str = r#"
import os, socket, sys
fam, addr, port, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
if fam == "unix":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("\0" + addr[1:] if addr.startswith("@") else addr)
    local = repr(s.getsockname())
else:
    s = socket.socket(socket.AF_INET6 if fam == "inet6" else socket.AF_INET, socket.SOCK_STREAM)
    s.connect((addr, port))
    local = s.getsockname()[1]
print("PID", os.getpid(), flush=True)
print("FD", s.fileno(), flush=True)
print("LOCAL", local, flush=True)
for st in steps:
    op, _, arg = st.partition(":")
    if op == "w":
        s.sendall(bytes.fromhex(arg))
    elif op == "wf":
        s.sendall(open(arg, "rb").read())
    elif op == "shut":
        s.shutdown(socket.SHUT_WR)
    elif op == "r":
        buf = b""
        while arg == "eof" or len(buf) < int(arg):
            d = s.recv(65536 if arg == "eof" else int(arg) - len(buf))
            if not d:
                break
            buf += d
        print("GOT", buf.hex(), flush=True)
    else:
        raise SystemExit("bad step " + st)
s.close()
print("DONE", flush=True)
"#;

/// Waits until the process `pid` (or any process in its network namespace) has a TCP socket
/// listening on `port`, reading the namespace's `/proc/PID/net/tcp{,6}`.
pub fn wait_listen(pid: u32, port: u16) {
    let deadline = Instant::now() + TIMEOUT;
    let want = format!(":{port:04X} ");
    loop {
        for f in ["tcp", "tcp6"] {
            let table = fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
            // sl local_address rem_address st ...; st 0A = LISTEN
            if table.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&want) && cols[3] == "0A"
            }) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A [`SERVER_PY`] process in a namespace.
pub struct Server {
    pub proc: Proc,
    pub port: u16,
}

impl Server {
    /// Starts [`SERVER_PY`] and waits until it listens.
    pub fn start(
        ns: &Netns,
        dir: &TempDir,
        fam: &str,
        addr: &str,
        conns: u32,
        steps: &[&str],
    ) -> Server {
        let mut args = vec![fam.to_string(), addr.to_string(), conns.to_string()];
        args.extend(steps.iter().map(|s| s.to_string()));
        Server::script(ns, dir, "server.py", SERVER_PY, &args)
    }

    /// Starts the Python `code` (saved as `file`) with `args` in `ns` and waits for its
    /// `READY <port>` line.
    pub fn script(ns: &Netns, dir: &TempDir, file: &str, code: &str, args: &[String]) -> Server {
        let script = dir.write(file, code);
        let mut cmd = ns.cmd(python());
        cmd.arg(&script).args(args);
        let mut proc = Proc::spawn(file, cmd);
        let port = proc.expect("READY", TIMEOUT).parse().unwrap();
        Server { proc, port }
    }

    /// The bytes the server received in the step printing `RECV <conn> ...`.
    pub fn recv(&mut self, conn: u32) -> Vec<u8> {
        let rest = self.proc.expect("RECV", TIMEOUT);
        let (k, hex) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
        assert_eq!(k, conn.to_string(), "server: RECV of another connection");
        unhex(hex)
    }

    pub fn count(&mut self, conn: u32) -> u64 {
        let rest = self.proc.expect("COUNT", TIMEOUT);
        let (k, n) = rest.split_once(' ').unwrap();
        assert_eq!(k, conn.to_string(), "server: COUNT of another connection");
        n.parse().unwrap()
    }

    pub fn done(&mut self) {
        self.proc.expect("DONE", TIMEOUT);
        let st = self.proc.wait(TIMEOUT);
        assert!(st.success(), "server failed: {st}; {}", self.proc.stderr());
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Deterministic, non-repeating test bytes (xorshift64*), so that misplaced or reordered
/// chunks cannot compare equal.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Splits `KEY value` lines of a client's stdout into a lookup.
pub fn kv(stdout: &str, key: &str) -> String {
    let found: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want one {key:?} line in client output {stdout:?}"
    );
    found[0].to_string()
}

// ---------------------------------------------------------------------------------------------
// capagent runs.

/// What a finished `capagent trace` run left behind.
pub struct TraceRun {
    /// The `-o` file's contents.
    pub output: String,
    /// Its lines parsed as JSON (empty for text output).
    pub events: Vec<Value>,
    /// capagent's stdout (where a `-- CMD` writes its own stdout), lossily as text...
    pub stdout: String,
    /// ... and as bytes.
    pub stdout_bytes: Vec<u8>,
    /// capagent's stderr (the summary, and the stderr of a `-- CMD`).
    pub stderr: String,
    pub status: ExitStatus,
    pub elapsed: Duration,
}

impl TraceRun {
    /// `(events, lost)` from the summary line `capagent: N events, M lost[ (B bytes)]`, and
    /// the bytes (0 when not shown).
    pub fn summary(&self) -> (u64, u64, u64) {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("capagent: ") && l.contains(" events, "))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "want one summary line in stderr {:?}",
            self.stderr
        );
        let rest = lines[0].strip_prefix("capagent: ").unwrap();
        let (events, rest) = rest.split_once(" events, ").unwrap();
        let (lost, rest) = rest.split_once(" lost").unwrap();
        let bytes = rest
            .strip_prefix(" (")
            .and_then(|r| r.strip_suffix(" bytes)"))
            .map_or(0, |b| b.parse().unwrap());
        (events.parse().unwrap(), lost.parse().unwrap(), bytes)
    }

    pub fn describe(&self) -> String {
        format!(
            "capagent {}; stderr:\n{}\noutput:\n{}",
            self.status,
            self.stderr,
            if self.output.len() > 20000 {
                &self.output[..20000]
            } else {
                &self.output
            }
        )
    }
}

/// `capagent trace -o FILE ARGS...` in the background (for `--pid`, `--comm`, `--all`).
pub struct LiveTrace {
    child: Child,
    out: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
    json: bool,
}

fn trace_command(dir: &TempDir, args: &[String]) -> (Command, PathBuf, PathBuf, PathBuf) {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let out = dir.join(&format!("trace-{n}.out"));
    let so = dir.join(&format!("trace-{n}.stdout"));
    let se = dir.join(&format!("trace-{n}.stderr"));
    let mut cmd = Command::new(CAPAGENT);
    cmd.arg("trace").arg("-o").arg(&out).args(args);
    cmd.stdout(fs::File::create(&so).unwrap())
        .stderr(fs::File::create(&se).unwrap());
    (cmd, out, so, se)
}

impl LiveTrace {
    /// capagent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn spawn(dir: &TempDir, args: &[String]) -> LiveTrace {
        let (mut cmd, out, stdout, stderr) = trace_command(dir, args);
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().expect("cannot start capagent");
        LiveTrace {
            child,
            out,
            stdout,
            stderr,
            started: Instant::now(),
            json: args
                .windows(2)
                .any(|w| w[0] == "--format" && w[1] == "json"),
        }
    }

    /// The complete JSON lines written so far (capagent flushes its output at most every
    /// 200 ms, and only when an event arrives).
    pub fn events_so_far(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        parse_json_lines(complete)
    }

    /// Repeats `poke` (which makes the traced processes do something) every 100 ms until the
    /// output holds an event for which `pred` holds; returns the events so far. This is how
    /// the tests know that capagent has attached: it reports no readiness otherwise.
    pub fn poke_until(
        &mut self,
        timeout: Duration,
        mut poke: impl FnMut(),
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "capagent exited early ({st}): {}",
                    fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            let evs = self.events_so_far();
            if evs.iter().any(&pred) {
                return evs;
            }
            assert!(
                Instant::now() < deadline,
                "capagent reported no expected event within {timeout:?}; stderr {:?}; output {:?}",
                fs::read_to_string(&self.stderr).unwrap_or_default(),
                fs::read_to_string(&self.out).unwrap_or_default()
            );
            poke();
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGINT (as Ctrl-C does) and waits for capagent to finish.
    pub fn stop(self) -> TraceRun {
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(r, 0, "cannot signal capagent");
        self.finish(TIMEOUT)
    }

    /// Waits for capagent to finish by itself.
    pub fn finish(mut self, timeout: Duration) -> TraceRun {
        let status = wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "capagent did not exit within {timeout:?}; stderr {:?}",
                fs::read_to_string(&self.stderr).unwrap_or_default()
            )
        });
        collect(
            status,
            self.started.elapsed(),
            &self.out,
            &self.stdout,
            &self.stderr,
            self.json,
        )
    }
}

impl Drop for LiveTrace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(
    status: ExitStatus,
    elapsed: Duration,
    out: &Path,
    stdout: &Path,
    stderr: &Path,
    json: bool,
) -> TraceRun {
    let output = fs::read_to_string(out).unwrap_or_default();
    let stderr = fs::read_to_string(stderr).unwrap();
    let events = if json {
        parse_json_lines(&output)
    } else {
        Vec::new()
    };
    let stdout_bytes = fs::read(stdout).unwrap();
    TraceRun {
        output,
        events,
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stdout_bytes,
        stderr,
        status,
        elapsed,
    }
}

/// Runs `capagent trace -o FILE ARGS...` to completion (killed and a panic after
/// [`TIMEOUT`]); `stdin` is fed to it (and so to a `-- CMD`).
pub fn trace(dir: &TempDir, args: &[String], stdin: Option<&[u8]>) -> TraceRun {
    let (mut cmd, out, so, se) = trace_command(dir, args);
    let json = args
        .windows(2)
        .any(|w| w[0] == "--format" && w[1] == "json");
    let input = match stdin {
        Some(data) => {
            let p = dir.join(&format!("stdin-{}", COUNTER.fetch_add(1, Ordering::SeqCst)));
            fs::write(&p, data).unwrap();
            p
        }
        None => PathBuf::from("/dev/null"),
    };
    // A pipe, not the file itself, so that the traced command reads its stdin from a pipe.
    let mut feeder = Command::new("cat")
        .arg(&input)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cmd.stdin(feeder.stdout.take().unwrap());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("cannot start capagent");
    drop(cmd);
    let status = wait_timeout(&mut child, TIMEOUT);
    let _ = feeder.kill();
    let _ = feeder.wait();
    let elapsed = started.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "capagent did not finish within {TIMEOUT:?}; stderr {:?}; output {:?}",
            fs::read_to_string(&se).unwrap_or_default(),
            fs::read_to_string(&out).unwrap_or_default()
        )
    });
    collect(status, elapsed, &out, &so, &se, json)
}

/// `args` then `--` and `cmd`, as owned strings.
pub fn with_cmd(args: &[&str], cmd: &[String]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.push("--".into());
    v.extend(cmd.iter().cloned());
    v
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Parses JSON lines; every line must be one JSON object.
pub fn parse_json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "not a JSON object: {l:?}");
            v
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Events.

/// Accessors of capagent's JSON events.
pub trait Ev {
    fn ty(&self) -> &str;
    fn str_of(&self, key: &str) -> Option<&str>;
    fn int(&self, key: &str) -> i64;
    fn syscall(&self) -> &str;
    fn pid(&self) -> u32;
    fn fd(&self) -> i64;
    fn ret(&self) -> i64;
    /// The captured payload (from `payload_b64`), checked against `captured` and the escaped
    /// `payload` field.
    fn payload(&self) -> Vec<u8>;
}

impl Ev for Value {
    fn ty(&self) -> &str {
        self["type"].as_str().expect("event without type")
    }
    fn str_of(&self, key: &str) -> Option<&str> {
        match &self[key] {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => panic!("{key} is not a string or null: {other} in {self}"),
        }
    }
    fn int(&self, key: &str) -> i64 {
        self[key]
            .as_i64()
            .unwrap_or_else(|| panic!("{key} is not an integer in {self}"))
    }
    fn syscall(&self) -> &str {
        self["syscall"].as_str().expect("event without syscall")
    }
    fn pid(&self) -> u32 {
        self.int("pid") as u32
    }
    fn fd(&self) -> i64 {
        self.int("fd")
    }
    fn ret(&self) -> i64 {
        self.int("ret")
    }
    fn payload(&self) -> Vec<u8> {
        let b64 = self["payload_b64"]
            .as_str()
            .unwrap_or_else(|| panic!("no payload_b64 in {self}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("bad base64 ({e}) in {self}"));
        assert_eq!(
            bytes.len() as i64,
            self.int("captured"),
            "captured != payload length: {self}"
        );
        assert_eq!(
            self["payload"].as_str().unwrap(),
            escape(&bytes),
            "escaped payload does not match payload_b64: {self}"
        );
        bytes
    }
}

/// strace-style escaping, as documented in agent/src/output/escape.rs.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

pub fn of_type<'a>(evs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e.ty() == ty).collect()
}

pub fn of_pid(evs: &[Value], pid: u32) -> Vec<&Value> {
    evs.iter()
        .filter(|e| e.ty() != "lost" && e.pid() == pid)
        .collect()
}

/// Data events of `pid` on `fd` in direction `dir` (`"send"`/`"recv"`), in order.
pub fn data_on<'a>(evs: &'a [Value], pid: u32, fd: i64, dir: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| {
            e.ty() == "data" && e.pid() == pid && e.fd() == fd && e["dir"].as_str() == Some(dir)
        })
        .collect()
}

/// The payloads of `evs` concatenated.
pub fn concat(evs: &[&Value]) -> Vec<u8> {
    evs.iter().flat_map(|e| e.payload()).collect()
}

/// The one event for which `pred` holds; panics when there are none or several.
pub fn one<'a>(evs: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = evs.iter().filter(|e| pred(e)).collect();
    assert_eq!(
        found.len(),
        1,
        "want exactly one {what}, found {}: {found:#?}\nall events:\n{}",
        found.len(),
        dump(evs)
    );
    found[0]
}

/// All events, one per line, for failure messages.
pub fn dump(evs: &[Value]) -> String {
    let mut s = String::new();
    for e in evs {
        s.push_str(&e.to_string());
        s.push('\n');
    }
    s
}

/// The pid of the process `capagent trace -- ...` started: the first `exec` event's pid.
pub fn exec_pid(evs: &[Value], comm: &str) -> u32 {
    let execs: Vec<&Value> = evs
        .iter()
        .filter(|e| e.ty() == "exec" && e.str_of("comm") == Some(comm))
        .collect();
    assert!(!execs.is_empty(), "no exec of {comm}:\n{}", dump(evs));
    execs[0].pid()
}

// --- tshark, the judge of every pcapng file the tests write (unused by the trace tests) ---

/// The one line tshark always prints on stderr when run as root; anything else on stderr is
/// a complaint about the file.
pub const ROOT_WARNING: &str =
    "Running as user \"root\" and group \"root\". This could be dangerous.";

/// Runs tshark with `args` (stdin from `input` when given); returns its stdout after checking
/// it exited 0 with nothing on stderr but the root warning.
pub fn tshark(args: &[&str], input: Option<Stdio>) -> String {
    let mut cmd = Command::new("tshark");
    cmd.args(args)
        .stdin(input.unwrap_or(Stdio::null()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot run tshark");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = wait_timeout(&mut child, TIMEOUT).expect("tshark did not finish");
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| !l.is_empty() && *l != ROOT_WARNING)
        .collect();
    assert!(st.success(), "tshark {args:?} failed ({st}): {err}");
    assert!(
        complaints.is_empty(),
        "tshark {args:?} complained: {complaints:?}"
    );
    out
}

/// `tshark -r FILE ARGS...`.
pub fn tshark_r(file: &str, args: &[&str]) -> String {
    let mut a = vec!["-r", file];
    a.extend_from_slice(args);
    tshark(&a, None)
}

/// The two directions of `follow,tcp,raw,N`: (node 0 → node 1, node 1 → node 0).
pub fn follow_raw(out: &str) -> (Vec<u8>, Vec<u8>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut body = false;
    for line in out.lines() {
        if line.starts_with("Node 1:") {
            body = true;
            continue;
        }
        if !body {
            continue;
        }
        if line.starts_with("====") {
            break;
        }
        match line.strip_prefix('\t') {
            Some(hex) => b.extend(unhex(hex.trim())),
            None => a.extend(unhex(line.trim())),
        }
    }
    (a, b)
}

// ---------------------------------------------------------------------------------------------
// Kernel memory of a process's BPF maps.

/// The BPF maps process `pid` holds: `(name, max_entries, memlock bytes)`, from its fds'
/// fdinfo (memlock, map id) and `bpftool map show id N` (the name).
pub fn bpf_maps_of(pid: u32) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k == key).then(|| v.trim().parse::<u64>().ok())?
            })
        };
        let (Some(id), Some(max), Some(memlock)) =
            (field("map_id"), field("max_entries"), field("memlock"))
        else {
            continue;
        };
        let show = Command::new("bpftool")
            .args(["map", "show", "id", &id.to_string(), "-j"])
            .output()
            .expect("cannot run bpftool");
        let v: Value = serde_json::from_slice(&show.stdout).unwrap_or(Value::Null);
        let name = v["name"].as_str().unwrap_or("?").to_string();
        out.push((name, max, memlock));
    }
    out
}

/// Runs capagent (`cmd`, writing pcapng to its stdout) with its stdout piped straight into
/// `tshark -r - TSHARK_ARGS` (which must read it without complaint); returns tshark's output
/// and capagent's stderr once capagent has exited 0.
pub fn capagent_into_tshark(mut cmd: Command, tshark_args: &[&str]) -> (String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cap = cmd.spawn().expect("cannot start capagent");
    let pipe = cap.stdout.take().unwrap();
    let mut err_pipe = cap.stderr.take().unwrap();
    let err_reader = thread::spawn(move || {
        let mut err = String::new();
        let _ = err_pipe.read_to_string(&mut err);
        err
    });
    let mut args = vec!["-r", "-"];
    args.extend_from_slice(tshark_args);
    let out = tshark(&args, Some(Stdio::from(pipe)));
    let st = wait_timeout(&mut cap, TIMEOUT).expect("capagent did not finish");
    let err = err_reader.join().unwrap();
    assert!(st.success(), "capagent {st}: {err}");
    (out, err)
}

/// The note capagent prints once when a `-- CMD`'s stdout goes to its stderr.
pub fn stdout_note(cmd: &str) -> String {
    format!("capagent: {cmd}'s stdout goes to stderr (capagent's stdout carries the records)")
}

// ---------------------------------------------------------------------------------------------
// A terminal for capagent's stderr.

/// Runs `argv[1:]` with its stderr on a pseudo-terminal (stdin from /dev/null, stdout to
/// /dev/null) and reads the terminal until `argv[0]` status lines (`\rcapagent: `) were
/// drawn, or the program ended; then interrupts it (SIGINT) and reads the rest. Prints the
/// terminal's bytes in hex, then `EXIT <returncode>`.
const PTY_STDERR_PY: &str = r#"
import os, pty, signal, subprocess, sys, time
want, argv = int(sys.argv[1]), sys.argv[2:]
m, s = pty.openpty()
p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=s)
os.close(s)
out = b""
deadline = time.time() + 30
def read():
    global out
    try:
        d = os.read(m, 65536)
    except OSError:
        return False
    out += d
    return bool(d)
while out.count(b"\rcapagent: ") < want and time.time() < deadline and read():
    pass
p.send_signal(signal.SIGINT)
while read():
    pass
print(out.hex())
print("EXIT", p.wait())
"#;

/// What capagent (`argv`, run as is) wrote on its stderr when that was a terminal, after
/// `draws` status lines were drawn (or it ended), and its exit code.
pub fn stderr_on_a_terminal(argv: &[String], draws: usize) -> (String, i32) {
    let mut cmd = Command::new(python());
    cmd.arg("-c")
        .arg(PTY_STDERR_PY)
        .arg(draws.to_string())
        .args(argv);
    let out = run_output("pty driver", cmd, TIMEOUT * 2);
    let mut lines = out.lines();
    let text = String::from_utf8_lossy(&unhex(lines.next().unwrap_or(""))).into_owned();
    let code = lines
        .next()
        .and_then(|l| l.strip_prefix("EXIT "))
        .and_then(|c| c.parse().ok())
        .unwrap_or(-1);
    (text, code)
}

/// The status lines drawn on a terminal (`\rcapagent: ...\x1b[K`), in order.
pub fn status_lines(terminal: &str) -> Vec<String> {
    terminal
        .split('\r')
        .filter_map(|part| part.strip_suffix("\x1b[K"))
        .filter(|l| l.starts_with("capagent: "))
        .map(str::to_string)
        .collect()
}
