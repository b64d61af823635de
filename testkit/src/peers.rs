//! Scripted Python peers: a stream server and client driven by steps.

use std::path::Path;

use crate::{Netns, Proc, TIMEOUT, TempDir, hex, python, unhex, wait_listen};

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

    /// A [`SERVER_PY`] on 127.0.0.1 that, on each of `conns` connections, runs the step
    /// `read` (`r:N`, `r:eof`) and then sends `reply`.
    pub fn reply(ns: &Netns, dir: &TempDir, conns: u32, read: &str, reply: &[u8]) -> Server {
        Server::start(
            ns,
            dir,
            "inet",
            "127.0.0.1",
            conns,
            &[read, &format!("w:{}", hex(reply))],
        )
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

/// The argv of `ip netns exec NS python3 client.py FAMILY ADDR PORT STEP...` ([`CLIENT_PY`],
/// saved in `dir`), for `capagent trace -- ...`.
pub fn client_argv(
    ns: &Netns,
    dir: &TempDir,
    fam: &str,
    addr: &str,
    port: u16,
    steps: &[&str],
) -> Vec<String> {
    let client = dir.write("client.py", CLIENT_PY);
    let port = port.to_string();
    let mut argv = vec![python(), client.as_str(), fam, addr, port.as_str()];
    argv.extend_from_slice(steps);
    ns.argv(&argv)
}

/// `python3 -m http.server PORT --bind ADDR --directory DIR` in `ns`, once it listens.
pub fn python_http_server(ns: &Netns, dir: &Path, addr: &str, port: u16) -> Proc {
    let mut cmd = ns.cmd(python());
    cmd.args(["-m", "http.server", &port.to_string(), "--bind", addr])
        .arg("--directory")
        .arg(dir);
    let p = Proc::spawn("http.server", cmd);
    wait_listen(p.pid(), port);
    p
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
