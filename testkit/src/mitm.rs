//! The TLS interception tests' side (`--tls` in the proxies, no root): a test's directory
//! with capagent's CA directory and its records ([`Mitm`]), the proxy command lines
//! ([`forward`], [`socks`], [`http_connect`]), real HTTPS servers whose certificates a test
//! CA signed ([`Https`], [`openssl_server`]), `openssl s_client` ([`s_client`]), and the
//! checks of an intercepted connection's records ([`check_intercepted`],
//! [`check_plaintext`]) and of one passed through ([`check_passed_through`]); `--pcap-tls
//! raw`'s in [`raw`].

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::proxy::{Agent, Rec, recorded};
use crate::{
    Certs, Ev as _, Exchange, HTTPS_SERVER_PY, Proc, TIMEOUT, TempDir, python, tshark_r, unhex,
};

pub mod raw;

/// `&str`s as owned arguments.
pub fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `capagent proxy forward --listen 127.0.0.1:0 --to TARGET`.
pub fn forward(target: &str) -> Vec<String> {
    args(&[
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        target,
    ])
}

/// `capagent proxy socks --listen 127.0.0.1:0`.
pub fn socks() -> Vec<String> {
    args(&["proxy", "socks", "--listen", "127.0.0.1:0"])
}

/// `capagent proxy http --listen 127.0.0.1:0 --connect-ports PORT` (CONNECT to `port`).
pub fn http_connect(port: u16) -> Vec<String> {
    args(&[
        "proxy",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--connect-ports",
        &port.to_string(),
    ])
}

/// A TLS interception test's directory: capagent's CA directory (`DIR/ca`, made by the
/// proxy when it starts) and where the records go.
pub struct Mitm {
    pub dir: TempDir,
    /// The records of [`Mitm::start`]: `DIR/NAME.jsonl`, `DIR/NAME.pcapng`.
    pub rec: Rec,
}

impl Mitm {
    /// A new temporary directory `mitm-NAME`, records named NAME.
    pub fn new(name: &str) -> Mitm {
        let dir = TempDir::new(&format!("mitm-{name}"));
        let rec = Rec::new(&dir, name);
        Mitm { dir, rec }
    }

    /// capagent's CA directory (`--ca-dir`).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// capagent's CA certificate, made by the proxy when it started.
    pub fn ca_cert(&self) -> String {
        self.ca_dir().join("ca.crt").display().to_string()
    }

    /// `--tls --ca-dir DIR/ca` and `extra`.
    pub fn tls_args(&self, extra: &[&str]) -> Vec<String> {
        let mut a = args(&["--tls", "--ca-dir", &self.ca_dir().display().to_string()]);
        a.extend(args(extra));
        a
    }

    /// Starts `capagent PROXY --tls --ca-dir DIR/ca EXTRA` recording into [`Mitm::rec`];
    /// waits until it listens.
    pub fn start(&self, proxy: Vec<String>, extra: &[&str]) -> Agent {
        self.start_rec(&self.rec, proxy, extra)
    }

    /// [`Mitm::start`] recording into `rec`.
    pub fn start_rec(&self, rec: &Rec, mut proxy: Vec<String>, extra: &[&str]) -> Agent {
        proxy.extend(self.tls_args(extra));
        proxy.extend(rec.args());
        Agent::start(&proxy, 1)
    }

    /// The records of [`Mitm::rec`].
    pub fn events(&self) -> Vec<Value> {
        self.rec.events()
    }
}

/// `--resolve localhost:PORT:127.0.0.1` and `https://localhost:PORT/PATH`: curl's arguments
/// to reach a proxy listening on 127.0.0.1:PORT under the name `localhost`.
pub fn localhost_url(port: u16, path: &str) -> [String; 3] {
    [
        "--resolve".into(),
        format!("localhost:{port}:127.0.0.1"),
        format!("https://localhost:{port}{path}"),
    ]
}

/// [`HTTPS_SERVER_PY`] on 127.0.0.1 (no namespace): serves `GET PATH` with `path PATH\n`
/// and reports the exact bytes it read and wrote.
pub struct Https {
    pub proc: Proc,
    pub port: u16,
}

impl Https {
    pub fn start(dir: &TempDir, certs: &Certs) -> Https {
        Https::start_on(dir, certs, "127.0.0.1")
    }

    /// On `addr` (another loopback address, such as 127.0.0.2).
    pub fn start_on(dir: &TempDir, certs: &Certs, addr: &str) -> Https {
        let script = dir.write("https_server.py", HTTPS_SERVER_PY);
        let mut cmd = Command::new(python());
        cmd.arg(&script)
            .args([certs.cert_str(), certs.key_str(), addr]);
        let mut proc = Proc::spawn("https_server.py", cmd);
        let port = proc.expect("READY", TIMEOUT).parse().unwrap();
        Https { proc, port }
    }

    /// The next request served (waits for it).
    pub fn exchange(&mut self) -> Exchange {
        let request = unhex(&self.proc.expect("REQ", TIMEOUT));
        let response = unhex(&self.proc.expect("RESP", TIMEOUT));
        Exchange { request, response }
    }
}

/// `openssl s_server` on 127.0.0.1 (no namespace) presenting `certs`, with `extra` flags;
/// its port.
pub fn openssl_server(certs: &Certs, extra: &[&str]) -> (Proc, u16) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-www", "-accept", "127.0.0.1:0", "-cert"])
        .arg(&certs.cert)
        .arg("-key")
        .arg(&certs.key)
        .args(extra);
    let mut proc = Proc::spawn("openssl s_server", cmd);
    let addr = proc.expect("ACCEPT", TIMEOUT);
    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
    (proc, port)
}

/// `openssl s_client ARGS` with no input; checks it succeeds and returns its stdout.
pub fn s_client(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("s_client")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `open` record of the one intercepted connection, checked: SNI `localhost` both ways,
/// TLS 1.3 both ways, the server's certificate subject, no error; the ALPN each side
/// negotiated is returned (client, server).
pub fn check_intercepted(open: &Value) -> (Value, Value) {
    check_tls(open, Some("localhost"))
}

/// [`check_intercepted`] with `sni` the SNI each side sent (None: none).
pub fn check_tls(open: &Value, sni: Option<&str>) -> (Value, Value) {
    let tls = &open["tls"];
    assert_eq!(tls["error"], Value::Null, "{open}");
    for side in ["client", "server"] {
        assert_eq!(
            tls[side]["sni"],
            sni.map_or(Value::Null, Value::from),
            "{open}"
        );
        assert_eq!(tls[side]["version"], "TLSv1.3", "{open}");
        assert!(
            tls[side]["cipher"]
                .as_str()
                .is_some_and(|c| c.starts_with("TLS13_")),
            "{open}"
        );
    }
    assert_eq!(tls["server_cert"], "CN=localhost", "{open}");
    (tls["client"]["alpn"].clone(), tls["server"]["alpn"].clone())
}

/// What tshark reads of the HTTP in `pcap` (with `options` such as `-o
/// tls.keylog_file:FILE`): each request's URI and each response's code, in order.
pub fn http_fields(pcap: &str, options: &[&str]) -> Vec<String> {
    let mut a = options.to_vec();
    a.extend([
        "-Y",
        "http",
        "-T",
        "fields",
        "-e",
        "http.request.uri",
        "-e",
        "http.response.code",
    ]);
    let out = tshark_r(pcap, &a);
    out.lines().map(|l| l.trim().to_string()).collect()
}

/// The records of connection `fd` carry the exact plaintext both ways, marked, and tshark
/// reads the request and the response from the pcapng.
pub fn check_plaintext(rec: &Rec, evs: &[Value], fd: i64, ex: &Exchange, path: &str) {
    check_recorded(evs, fd, ex);
    let http = http_fields(&rec.pcap, &[]);
    assert_eq!(http, [path, "200"], "tshark");
    let comments = tshark_r(
        &rec.pcap,
        &["-Y", "http", "-T", "fields", "-e", "frame.comment"],
    );
    assert!(
        comments.contains("decrypted by capagent (mitm)"),
        "{comments}"
    );
}

/// The records of connection `fd` carry `ex` exactly both ways, every data record marked
/// plaintext ([`check_marked`]).
pub fn check_recorded(evs: &[Value], fd: i64, ex: &Exchange) {
    assert_eq!(recorded(evs, fd, "send"), ex.request, "request as recorded");
    assert_eq!(
        recorded(evs, fd, "recv"),
        ex.response,
        "response as recorded"
    );
    check_marked(evs, fd);
}

/// Connection `fd` has data records, each marked plaintext (`"tls": {"plaintext": true}`).
pub fn check_marked(evs: &[Value], fd: i64) {
    let data: Vec<&Value> = evs
        .iter()
        .filter(|e| e.ty() == "data" && e.fd() == fd && e["total"] != 0)
        .collect();
    assert!(!data.is_empty());
    for d in data {
        assert_eq!(d["tls"], serde_json::json!({"plaintext": true}), "{d}");
    }
}

/// The records of a connection whose server's certificate capagent did not trust (no
/// `--upstream-ca`, no `--insecure`): the `open` record says why, as does the proxy's
/// output when it stopped (`stop`); the client's SNI is recorded; nothing was relayed and
/// the close says why (EPROTO).
pub fn check_untrusted_upstream(evs: &[Value], open: &Value, stop: &str) {
    let error = open["tls"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer"),
        "{open}"
    );
    assert!(stop.contains("UnknownIssuer"), "{stop}");
    assert_eq!(open["tls"]["client"]["sni"], "localhost", "{open}");
    assert!(recorded(evs, open.fd(), "send").is_empty());
    let close = evs
        .iter()
        .find(|e| e.fd() == open.fd() && e["syscall"] == "close")
        .unwrap();
    assert_eq!(close["errno"], "EPROTO", "{close}");
}

/// The `tls` of a passed-through connection's `open` record, and its data records: the
/// TLS bytes as they went (a handshake record first each way, not the plaintext), unmarked.
pub fn check_passed_through(evs: &[Value], open: &Value, reason: &str, sni: &str, ex: &Exchange) {
    assert_eq!(
        open["tls"],
        serde_json::json!({"passthrough": reason, "sni": sni}),
        "{open}"
    );
    let (sent, received) = (
        recorded(evs, open.fd(), "send"),
        recorded(evs, open.fd(), "recv"),
    );
    // A ClientHello from the client, a ServerHello back (handshake records).
    assert!(sent.starts_with(&[0x16, 0x03]), "{sent:02x?}");
    assert!(received.starts_with(&[0x16, 0x03, 0x03]), "{received:02x?}");
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(&sent, &ex.request[..16]), "plaintext recorded");
    assert!(
        !contains(&received, &ex.response[..16]),
        "plaintext recorded"
    );
    for e in evs
        .iter()
        .filter(|e| e.fd() == open.fd() && e.ty() == "data")
    {
        assert!(e.get("tls").is_none(), "{e}");
    }
}
