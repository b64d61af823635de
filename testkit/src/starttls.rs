//! STARTTLS peers for `--tls` (`proxy forward --tls`, `intercept --tls`): a scripted SMTP
//! server that upgrades with STARTTLS (Python's `ssl` module, a certificate of [`Certs`]) and
//! reports every byte it read and wrote before and inside TLS; curl sending it a mail; and
//! the checks of a relay's records of such a connection.

use std::process::Command;

use serde_json::Value;

use crate::proxy::recorded;
use crate::{Certs, Ev as _, Netns, Proc, TIMEOUT, TempDir, dump, python, unhex};

/// A one-connection SMTP server with STARTTLS: `smtp_server.py CERT KEY`, on 127.0.0.1.
/// Prints `READY <port>`; greets, answers `EHLO` offering `STARTTLS`, answers `STARTTLS`
/// with `220`, then wraps the socket (TLS, the client's SNI whatever it is) and serves one
/// mail (`EHLO`, `MAIL FROM`, `RCPT TO`, `DATA`, `QUIT`). Then prints `PLAIN_IN`/`PLAIN_OUT`
/// (the bytes it read and wrote before TLS) and `TLS_IN`/`TLS_OUT` (the plaintext it read
/// and wrote inside TLS), in hex.
pub const SMTP_SERVER_PY: &str = r#"
import socket, ssl, sys
cert, key = sys.argv[1], sys.argv[2]
ls = socket.socket()
ls.bind(("127.0.0.1", 0)); ls.listen(1)
print("READY", ls.getsockname()[1], flush=True)
conn, _ = ls.accept()
conn.settimeout(20)
log = {"in": bytearray(), "out": bytearray()}
buf = bytearray()

def line(s):
    global buf
    while b"\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise SystemExit("client went away")
        buf += d
    i = buf.index(b"\r\n") + 2
    l, buf = bytes(buf[:i]), buf[i:]
    log["in"] += l
    return l

def send(s, data):
    s.sendall(data)
    log["out"] += data

send(conn, b"220 localhost ESMTP capagent test\r\n")
assert line(conn).startswith(b"EHLO ")
send(conn, b"250-localhost\r\n250 STARTTLS\r\n")
assert line(conn) == b"STARTTLS\r\n"
send(conn, b"220 2.0.0 Ready to start TLS\r\n")
assert not buf, buf
plain = log
log = {"in": bytearray(), "out": bytearray()}
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s = ctx.wrap_socket(conn, server_side=True)
assert line(s).startswith(b"EHLO ")
send(s, b"250 localhost\r\n")
while True:
    l = line(s)
    if l.startswith(b"MAIL FROM:") or l.startswith(b"RCPT TO:"):
        send(s, b"250 2.1.0 Ok\r\n")
    elif l == b"DATA\r\n":
        send(s, b"354 End data with <CR><LF>.<CR><LF>\r\n")
        while line(s) != b".\r\n":
            pass
        send(s, b"250 2.0.0 Ok: queued\r\n")
    elif l == b"QUIT\r\n":
        send(s, b"221 2.0.0 Bye\r\n")
        break
    else:
        send(s, b"500 unknown\r\n")
s.close()
for name, l in (("PLAIN", plain), ("TLS", log)):
    print(name + "_IN", bytes(l["in"]).hex(), flush=True)
    print(name + "_OUT", bytes(l["out"]).hex(), flush=True)
"#;

/// The mail [`curl_mail_args`] sends.
pub const MAIL: &str = "From: a@example.org\r\nTo: b@example.org\r\nSubject: starttls\r\n\r\nintercepted after STARTTLS\r\n";

/// A running [`SMTP_SERVER_PY`].
pub struct SmtpServer {
    pub proc: Proc,
    pub port: u16,
}

/// What [`SmtpServer`] read and wrote on its connection, before and inside TLS.
#[derive(Debug)]
pub struct Upgraded {
    pub plain_in: Vec<u8>,
    pub plain_out: Vec<u8>,
    pub tls_in: Vec<u8>,
    pub tls_out: Vec<u8>,
}

impl SmtpServer {
    /// Starts it (in `ns`, else here) with `certs`' leaf, and waits for its port.
    pub fn start(ns: Option<&Netns>, dir: &TempDir, certs: &Certs) -> SmtpServer {
        let script = dir.write("smtp_server.py", SMTP_SERVER_PY);
        let mut cmd = match ns {
            Some(ns) => ns.cmd(python()),
            None => Command::new(python()),
        };
        cmd.arg(&script).args([certs.cert_str(), certs.key_str()]);
        let mut proc = Proc::spawn("smtp_server.py", cmd);
        let port = proc.expect("READY", TIMEOUT).parse().unwrap();
        SmtpServer { proc, port }
    }

    /// What it read and wrote (once the mail is served), checked to hold the mail: `MAIL
    /// FROM`, `RCPT TO`, `DATA` and the body inside TLS.
    pub fn upgraded(&mut self) -> Upgraded {
        let mut next = |k: &str| unhex(&self.proc.expect(k, TIMEOUT));
        let u = Upgraded {
            plain_in: next("PLAIN_IN"),
            plain_out: next("PLAIN_OUT"),
            tls_in: next("TLS_IN"),
            tls_out: next("TLS_OUT"),
        };
        let sent = String::from_utf8_lossy(&u.tls_in);
        assert!(sent.contains("MAIL FROM:<a@example.org>"), "{sent}");
        assert!(
            sent.contains("RCPT TO:<b@example.org>\r\nDATA\r\n"),
            "{sent}"
        );
        assert!(sent.contains("intercepted after STARTTLS"), "{sent}");
        u
    }
}

/// curl's arguments to send [`MAIL`] (saved in `dir`) to `smtp://localhost:PORT` (resolved
/// to 127.0.0.1) with `--ssl-reqd`, trusting `ca` (capagent's CA).
pub fn curl_mail_args(dir: &TempDir, ca: &str, port: u16) -> Vec<String> {
    let mail = dir.write("mail.txt", MAIL);
    [
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--ssl-reqd",
        "--cacert",
        ca,
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        "--mail-from",
        "a@example.org",
        "--mail-rcpt",
        "b@example.org",
        "--upload-file",
        &mail,
        &format!("smtp://localhost:{port}/client.example.org"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Checks the records of the one connection to `target` that upgraded with STARTTLS: its
/// `open` record, then the plaintext before TLS as without `--tls` (no `tls` mark), then a
/// second `open` record named `<proxy> starttls` with what each TLS side negotiated (SNI
/// `localhost`, TLS 1.3, the server's certificate `CN=localhost`), then the plaintext inside
/// TLS, marked; each exactly as the server read and wrote it. Returns the first `open`.
pub fn check_starttls_records<'a>(evs: &'a [Value], target: &str, up: &Upgraded) -> &'a Value {
    let opens: Vec<(usize, &Value)> = evs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.ty() == "open" && e["target"] == target)
        .collect();
    assert_eq!(opens.len(), 2, "{}", dump(evs));
    let ((i0, open), (i1, upgrade)) = (opens[0], opens[1]);
    assert!(open.get("tls").is_none_or(Value::is_null), "{open}");
    assert_eq!(
        upgrade["proxy"],
        format!("{} starttls", open["proxy"].as_str().unwrap()),
        "{upgrade}"
    );
    assert_eq!(upgrade.fd(), open.fd());
    let tls = &upgrade["tls"];
    assert_eq!(tls["error"], Value::Null, "{upgrade}");
    for side in ["client", "server"] {
        assert_eq!(tls[side]["sni"], "localhost", "{upgrade}");
        assert_eq!(tls[side]["version"], "TLSv1.3", "{upgrade}");
    }
    assert_eq!(tls["server_cert"], "CN=localhost", "{upgrade}");
    let fd = open.fd();
    let (before, after) = (&evs[i0..i1], &evs[i1..]);
    assert_eq!(recorded(before, fd, "send"), up.plain_in, "before, sent");
    assert_eq!(
        recorded(before, fd, "recv"),
        up.plain_out,
        "before, received"
    );
    assert_eq!(recorded(after, fd, "send"), up.tls_in, "after, sent");
    assert_eq!(recorded(after, fd, "recv"), up.tls_out, "after, received");
    let plaintext = serde_json::json!({"plaintext": true});
    for (part, tls) in [(before, Value::Null), (after, plaintext)] {
        for d in part
            .iter()
            .filter(|e| e.ty() == "data" && e.fd() == fd && e["total"] != 0)
        {
            assert_eq!(d.get("tls").cloned().unwrap_or(Value::Null), tls, "{d}");
        }
    }
    open
}
