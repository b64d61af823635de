//! TLS peers for `capagent trace --tls`: certificates made at test time, servers in a test's
//! network namespace (`openssl s_server -www`, a Python HTTPS server that reports the exact
//! bytes it read and wrote), clients (curl, Python's urllib, gnutls-cli, wget) whose sent
//! and received plaintext the tests know exactly, and the uprobes a process holds.
//!
//! Every peer is a real program with its real TLS library: curl and `openssl s_server` use
//! OpenSSL (libssl), Python's `ssl` module too (`_ssl` calls `SSL_read_ex`/`SSL_write_ex`),
//! gnutls-cli and wget use GnuTLS.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Netns, Proc, Server, TIMEOUT, TempDir, python, unhex, wait_listen};

/// A certificate authority and a leaf certificate it signed for `names` (DNS names and IP
/// addresses), made with rcgen when the test starts: `ca.pem`, `cert.pem` and `key.pem` in a
/// directory of their own, deleted on drop. Clients trust `ca.pem` (`curl --cacert`,
/// `SSL_CTX_load_verify_locations`, `--x509cafile`), servers present `cert.pem`/`key.pem`.
pub struct Certs {
    _dir: TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    /// A new CA and a leaf for `names` (e.g. `&["localhost", "127.0.0.1"]`: names that parse
    /// as IP addresses become IP subject alternative names). Panics when rcgen fails.
    pub fn new(names: &[&str]) -> Certs {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "capagent test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap())
            .expect("rcgen: the CA certificate");

        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut leaf = CertificateParams::new(names.clone()).expect("rcgen: bad name");
        leaf.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = leaf
            .signed_by(&key, &ca)
            .expect("rcgen: the leaf certificate");

        let dir = TempDir::new("certs");
        let ca_path = PathBuf::from(dir.write("ca.pem", ca.pem()));
        let cert_path = PathBuf::from(dir.write("cert.pem", cert.pem()));
        let key_path = PathBuf::from(dir.write("key.pem", key.serialize_pem()));
        Certs {
            _dir: dir,
            ca: ca_path,
            cert: cert_path,
            key: key_path,
        }
    }

    /// `new(&["localhost", "127.0.0.1"])`: what a server on loopback needs.
    pub fn localhost() -> Certs {
        Certs::new(&["localhost", "127.0.0.1"])
    }

    pub fn ca_str(&self) -> &str {
        path_str(&self.ca)
    }
    pub fn cert_str(&self) -> &str {
        path_str(&self.cert)
    }
    pub fn key_str(&self) -> &str {
        path_str(&self.key)
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("non-UTF-8 temp path")
}

// ---------------------------------------------------------------------------------------------
// Servers.

/// `openssl s_server -www` (OpenSSL) on 127.0.0.1 in a namespace, on a port the kernel
/// picked; answers each `GET /` with an HTTP/1.0 page about the session and closes.
pub struct OpensslServer {
    pub proc: Proc,
    pub port: u16,
}

impl OpensslServer {
    /// Starts it and waits until it listens (its `ACCEPT 127.0.0.1:PORT` line, then the
    /// socket in the namespace's `/proc/net/tcp`).
    pub fn start(ns: &Netns, certs: &Certs) -> OpensslServer {
        OpensslServer::start_with(ns, &certs.cert, &certs.key)
    }

    /// The same with a certificate (chain) and key of the caller's (PEM files).
    pub fn start_with(ns: &Netns, cert: &Path, key: &Path) -> OpensslServer {
        let mut cmd = ns.cmd("openssl");
        cmd.args(["s_server", "-www", "-accept", "127.0.0.1:0", "-cert"])
            .arg(cert)
            .arg("-key")
            .arg(key);
        let mut proc = Proc::spawn("openssl s_server", cmd);
        let addr = proc.expect("ACCEPT", TIMEOUT);
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("s_server: odd ACCEPT line {addr:?}"));
        wait_listen(proc.pid(), port);
        OpensslServer { proc, port }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }
}

/// A Python HTTPS server (`http.server` over an `ssl` context with [`Certs`]):
/// `https_server.py CERT KEY ADDR`. It prints `READY <port>`, then serves requests one at a
/// time until killed:
/// - `GET PATH` is answered with the body `path PATH\n`;
/// - `POST` (with `Content-Length`) is answered with the request body echoed back;
///
/// each response is `HTTP/1.1 200 OK` with `Content-Length` and `Connection: close`, written
/// in one `write`. After each response it prints `REQ <hex>` (every byte it read on the
/// connection: the request as sent) and `RESP <hex>` (every byte it wrote), so a test knows
/// the exact plaintext both ways. A connection whose handshake fails is dropped (and counted
/// on stdout as `BADHANDSHAKE`).
pub const HTTPS_SERVER_PY: &str = r#"
import http.server, os, ssl, sys
cert, key, addr = sys.argv[1], sys.argv[2], sys.argv[3]

class Tee:
    """The handler's rfile, keeping a copy of every byte read."""
    def __init__(self, f):
        self.f, self.buf = f, bytearray()
    def readline(self, *a):
        d = self.f.readline(*a)
        self.buf += d
        return d
    def read(self, *a):
        d = self.f.read(*a)
        self.buf += d
        return d
    def __getattr__(self, name):
        return getattr(self.f, name)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        self.rfile = Tee(self.rfile)
    def log_message(self, *a):
        pass
    def do_GET(self):
        self.reply(("path %s\n" % self.path).encode())
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.reply(self.rfile.read(n))
    def reply(self, body):
        head = ("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)).encode()
        resp = head + body
        self.wfile.write(resp)
        self.wfile.flush()
        self.close_connection = True
        print("REQ", bytes(self.rfile.buf).hex(), flush=True)
        print("RESP", resp.hex(), flush=True)

class Server(http.server.HTTPServer):
    def get_request(self):
        try:
            return super().get_request()
        except ssl.SSLError:
            print("BADHANDSHAKE", flush=True)
            raise

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = Server((addr, 0), Handler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("PID", os.getpid(), flush=True)
print("READY", srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// [`HTTPS_SERVER_PY`] on 127.0.0.1 in a namespace.
pub struct HttpsServer {
    pub server: Server,
}

/// What [`HttpsServer`] read and wrote on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The request, every byte as the server read it.
    pub request: Vec<u8>,
    /// The response, every byte as the server wrote it.
    pub response: Vec<u8>,
}

impl HttpsServer {
    /// Starts it and waits until it listens.
    pub fn start(ns: &Netns, dir: &TempDir, certs: &Certs) -> HttpsServer {
        let args = [
            certs.cert_str().to_string(),
            certs.key_str().to_string(),
            "127.0.0.1".to_string(),
        ];
        let server = Server::script(ns, dir, "https_server.py", HTTPS_SERVER_PY, &args);
        wait_listen(server.proc.pid(), server.port);
        HttpsServer { server }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The server's pid (`ip netns exec` execs Python, so this is the interpreter).
    pub fn pid(&self) -> u32 {
        self.server.proc.pid()
    }

    /// `https://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port())
    }

    /// The next request served: what the server read and wrote (waits for it).
    pub fn exchange(&mut self) -> Exchange {
        let request = unhex(&self.server.proc.expect("REQ", TIMEOUT));
        let response = unhex(&self.server.proc.expect("RESP", TIMEOUT));
        Exchange { request, response }
    }
}

/// The response [`HttpsServer`] writes for a request body (`GET`: `path PATH\n`).
pub fn https_server_response(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// curl (OpenSSL) against an HTTPS URL, trusting [`Certs::ca`]: it writes the body to a
/// file, an exact record of the plaintext it sent and received (`--trace`), and prints
/// `LOCAL <local port>` on stdout.
pub struct Curl {
    /// curl's arguments (without `curl`).
    pub args: Vec<String>,
    trace: PathBuf,
    body: PathBuf,
}

impl Curl {
    /// `curl -sS --max-time 20 --cacert CA --trace FILE -o FILE -w 'LOCAL %{local_port}\n'
    /// EXTRA... URL`. `extra` may add e.g. `--data-binary @FILE` or `-H ...`.
    pub fn new(dir: &TempDir, certs: &Certs, url: &str, extra: &[&str]) -> Curl {
        let n = crate::next_id();
        let trace = dir.join(&format!("curl-{n}.trace"));
        let body = dir.join(&format!("curl-{n}.body"));
        let mut args: Vec<String> = [
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            certs.ca_str(),
            "--trace",
            path_str(&trace),
            "-o",
            path_str(&body),
            "-w",
            "LOCAL %{local_port}\\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(url.to_string());
        Curl { args, trace, body }
    }

    /// `ip netns exec NS curl ARGS...` (for `capagent trace -- ...`).
    pub fn argv(&self, ns: &Netns) -> Vec<String> {
        let mut v = ns.argv(&["curl"]);
        v.extend(self.args.iter().cloned());
        v
    }

    /// The command, to spawn (e.g. with [`Proc::spawn`]).
    pub fn cmd(&self, ns: &Netns) -> Command {
        let mut c = ns.cmd("curl");
        c.args(&self.args);
        c
    }

    /// Runs it to completion; returns its local port. Panics when it fails.
    pub fn run(&self, ns: &Netns) -> u16 {
        let out = crate::run_output("curl", self.cmd(ns), TIMEOUT);
        local_port(&out)
    }

    /// The plaintext curl sent (its `=> Send header` and `=> Send data` records).
    pub fn sent(&self) -> Vec<u8> {
        curl_trace_bytes(&self.trace_text(), &["=> Send header", "=> Send data"])
    }

    /// The plaintext curl received (`<= Recv header` and `<= Recv data`): the response.
    pub fn received(&self) -> Vec<u8> {
        curl_trace_bytes(&self.trace_text(), &["<= Recv header", "<= Recv data"])
    }

    /// The response body as curl saved it.
    pub fn body(&self) -> Vec<u8> {
        fs::read(&self.body).unwrap_or_else(|e| panic!("curl wrote no body ({e})"))
    }

    fn trace_text(&self) -> String {
        fs::read_to_string(&self.trace).unwrap_or_else(|e| panic!("curl wrote no trace ({e})"))
    }
}

/// The `LOCAL <port>` line of a client's stdout.
pub fn local_port(stdout: &str) -> u16 {
    crate::kv(stdout, "LOCAL")
        .parse()
        .unwrap_or_else(|_| panic!("no local port in {stdout:?}"))
}

/// The bytes of the records of a `curl --trace` file whose header line starts with one of
/// `kinds`, in order. Each record is a header (`=> Send header, 78 bytes (0x4e)`) and lines
/// `OFFS: HH HH ... ASCII`: 16 bytes of hex in the 48 columns after `OFFS: `.
pub fn curl_trace_bytes(trace: &str, kinds: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut on = false;
    for line in trace.lines() {
        if line.starts_with("=> ") || line.starts_with("<= ") || line.starts_with("== ") {
            on = kinds.iter().any(|k| line.starts_with(k));
            continue;
        }
        if !on {
            continue;
        }
        let Some((offs, rest)) = line.split_once(": ") else {
            continue;
        };
        if offs.len() != 4 || !offs.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let cols: String = rest.chars().take(48).collect();
        for tok in cols.split_whitespace() {
            out.push(u8::from_str_radix(tok, 16).unwrap_or_else(|_| panic!("bad {line:?}")));
        }
    }
    out
}

/// A Python `urllib` HTTPS client (OpenSSL through `_ssl`, which calls `SSL_read_ex` and
/// `SSL_write_ex`): `urllib_client.py URL CAFILE GO [BODY_HEX]`. It prints `PID <pid>`, then
/// waits until the file GO exists ("-": no wait), making a throwaway UDP socket every 20 ms
/// meanwhile (a call capagent records, so a test sees when tracing has started: see
/// `LiveTrace::poke_until`). Only then does it import `ssl` and `urllib.request` (so libssl
/// is loaded, by `dlopen`, after tracing started), fetches URL (a POST of BODY when given),
/// and prints `STATUS <code>` and `BODY <hex>`, then `DONE`.
pub const URLLIB_CLIENT_PY: &str = r#"
import os, socket, sys, time
url, cafile, go = sys.argv[1], sys.argv[2], sys.argv[3]
body = bytes.fromhex(sys.argv[4]) if len(sys.argv) > 4 else None
print("PID", os.getpid(), flush=True)
deadline = time.time() + 25
while go != "-" and not os.path.exists(go):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    time.sleep(0.02)
    if time.time() > deadline:
        sys.exit("no go file")
assert "ssl" not in sys.modules and "_ssl" not in sys.modules
import ssl, urllib.request
ctx = ssl.create_default_context(cafile=cafile)
req = urllib.request.Request(url, data=body)
with urllib.request.urlopen(req, context=ctx, timeout=20) as resp:
    data = resp.read()
    print("STATUS", resp.status, flush=True)
print("BODY", data.hex(), flush=True)
print("DONE", flush=True)
"#;

/// A [`URLLIB_CLIENT_PY`] process in a namespace.
pub struct UrllibClient {
    pub proc: Proc,
    pub pid: u32,
    /// The file whose creation lets it go on (see [`UrllibClient::go`]).
    pub go: PathBuf,
}

impl UrllibClient {
    /// Starts it; it waits for [`UrllibClient::go`] before loading `ssl`.
    pub fn start(
        ns: &Netns,
        dir: &TempDir,
        certs: &Certs,
        url: &str,
        body: Option<&[u8]>,
    ) -> UrllibClient {
        let go = dir.join(&format!("go-{}", crate::next_id()));
        let mut cmd = ns.cmd(python());
        cmd.args(urllib_client_args(dir, certs, url, path_str(&go), body));
        let mut proc = Proc::spawn("urllib client", cmd);
        let pid = proc.expect("PID", TIMEOUT).parse().unwrap();
        UrllibClient { proc, pid, go }
    }

    /// Lets it import `ssl` and make its request.
    pub fn go(&self) {
        fs::write(&self.go, b"").unwrap();
    }

    /// Waits for it to finish; returns (HTTP status, response body). Panics when it fails.
    pub fn finish(&mut self) -> (u16, Vec<u8>) {
        let status = self.proc.expect("STATUS", TIMEOUT).parse().unwrap();
        let body = unhex(&self.proc.expect("BODY", TIMEOUT));
        self.proc.expect("DONE", TIMEOUT);
        let st = self.proc.wait(TIMEOUT);
        assert!(st.success(), "urllib client: {st}; {}", self.proc.stderr());
        (status, body)
    }
}

/// The arguments of [`URLLIB_CLIENT_PY`] after the interpreter (script saved in `dir`),
/// GO "-" for no wait: `capagent trace -- python SCRIPT ...` runs it with these.
pub fn urllib_client_args(
    dir: &TempDir,
    certs: &Certs,
    url: &str,
    go: &str,
    body: Option<&[u8]>,
) -> Vec<String> {
    let script = dir.write("urllib_client.py", URLLIB_CLIENT_PY);
    let mut v = vec![
        script,
        url.to_string(),
        certs.ca_str().to_string(),
        go.to_string(),
    ];
    if let Some(b) = body {
        v.push(crate::hex(b));
    }
    v
}

/// `gnutls-cli` (GnuTLS) to 127.0.0.1:`port`, verifying the leaf as `localhost` against
/// [`Certs::ca`]; what it reads on stdin it sends, what it receives goes to stdout, its own
/// messages to `log` (`--logfile`). Feed it the request on stdin (its stdin ending does not
/// stop it reading the response).
pub fn gnutls_cli_args(certs: &Certs, port: u16, log: &Path) -> Vec<String> {
    vec![
        format!("--x509cafile={}", certs.ca_str()),
        format!("--logfile={}", path_str(log)),
        "--verify-hostname=localhost".to_string(),
        "-p".to_string(),
        port.to_string(),
        "127.0.0.1".to_string(),
    ]
}

/// `wget` (GnuTLS on Debian) fetching `url` quietly to `out`, trusting [`Certs::ca`].
pub fn wget_args(certs: &Certs, url: &str, out: &Path) -> Vec<String> {
    vec![
        "-q".to_string(),
        "--tries=1".to_string(),
        "--timeout=20".to_string(),
        format!("--ca-certificate={}", certs.ca_str()),
        "-O".to_string(),
        path_str(out).to_string(),
        url.to_string(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Uprobes.

/// A uprobe (or uretprobe) a process holds as a BPF link: aya attaches a uprobe as a perf
/// event and a `perf_event` link on it, and closes the perf event's fd, so the link's fd is
/// what shows it (its fdinfo names the file, offset and kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uprobe {
    pub link_id: u32,
    pub prog_id: u32,
    /// The probed file, as the process named it.
    pub file: String,
    /// The file offset of the probed instruction.
    pub offset: u64,
    /// A uretprobe.
    pub ret: bool,
}

/// The uprobes process `pid` holds: its BPF link fds whose fdinfo says `link_type: perf`
/// and `event_type: uprobe`/`uretprobe` (Debian 12's bpftool neither names the processes
/// holding a link nor describes perf events; the kernel's fdinfo does both).
pub fn uprobes_of(pid: u32) -> Vec<Uprobe> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for fd in fds.flatten() {
        let Ok(info) = fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k == key).then(|| v.trim().to_string())
            })
        };
        let kind = field("event_type").unwrap_or_default();
        if field("link_type").as_deref() != Some("perf")
            || !(kind == "uprobe" || kind == "uretprobe")
        {
            continue;
        }
        let num = |key: &str| {
            field(key).and_then(|v| match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            })
        };
        out.push(Uprobe {
            link_id: num("link_id").unwrap_or(0) as u32,
            prog_id: num("prog_id").unwrap_or(0) as u32,
            file: field("name").unwrap_or_default(),
            offset: num("offset").unwrap_or(0),
            ret: kind == "uretprobe",
        });
    }
    out.sort_by_key(|u| u.link_id);
    out
}

/// Whether a BPF link with this id still exists (`bpftool link show id N`; the kernel hands
/// link ids out cyclically, so a gone link's id is not soon reused).
pub fn bpf_link_exists(id: u32) -> bool {
    Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string()])
        .output()
        .expect("cannot run bpftool")
        .status
        .success()
}
