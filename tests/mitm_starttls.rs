//! Integration tests of STARTTLS through `proxy forward --tls`, with a real client and a
//! server made at test time, no root: curl sends a mail (`smtp://`, `--ssl-reqd`, trusting
//! capagent's CA with `--cacert`) to a scripted SMTP server ([`SmtpServer`]: Python's `ssl`
//! module, a certificate a test CA signed, trusted by the proxy with `--upstream-ca`):
//! `EHLO`, `STARTTLS`, `220`, then TLS and the mail inside it. The records must hold the
//! exact plaintext before the upgrade (as without `--tls`), a second `open` record where TLS
//! started (`forward starttls`, with what each TLS side negotiated), and the exact plaintext
//! after it (`MAIL FROM`, `RCPT TO`, `DATA`, marked as TLS plaintext); the pcapng stream is
//! both, in order, and tshark reads the SMTP commands before and inside TLS from it. The
//! server reports every byte it read and wrote, before and after the upgrade.
//!
//! PostgreSQL's style of upgrade too (a binary `SSLRequest`, the server's `S`, then TLS),
//! with a scripted client and server (Python's `ssl` module) speaking it.

use std::path::PathBuf;
use std::process::Command;

use capagent_testkit::proxy::{Agent, Rec, recorded};
use capagent_testkit::starttls::{SmtpServer, Upgraded, check_starttls_records, curl_mail_args};
use capagent_testkit::{Certs, Ev as _, Proc, TIMEOUT, TempDir, python, tshark_r, unhex};
use serde_json::Value;

/// `proxy forward --tls` to 127.0.0.1:`port` (its CA in `dir`/ca, the server's CA trusted
/// with `--upstream-ca`), recording into `rec`; the agent and the CA's directory.
fn forward_tls(dir: &TempDir, certs: &Certs, port: u16, rec: &Rec) -> (Agent, PathBuf) {
    forward_tls_with(dir, certs, port, rec, &[])
}

/// [`forward_tls`] with more arguments.
fn forward_tls_with(
    dir: &TempDir,
    certs: &Certs,
    port: u16,
    rec: &Rec,
    extra: &[&str],
) -> (Agent, PathBuf) {
    let ca_dir = dir.join("ca");
    let mut a: Vec<String> = [
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &format!("127.0.0.1:{port}"),
        "--tls",
        "--ca-dir",
        ca_dir.to_str().unwrap(),
        "--upstream-ca",
        certs.ca_str(),
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(rec.args());
    (Agent::start(&a, 1), ca_dir)
}

/// Runs curl with `curl` (its command line, [`curl_mail_args`]) and checks it succeeds.
fn send_mail(curl: &[String]) {
    let out = Command::new(&curl[0])
        .args(&curl[1..])
        .output()
        .expect("cannot run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// curl sends a mail through `proxy forward --tls` to an SMTP server that upgrades with
/// STARTTLS: the exact plaintext before and after the upgrade is recorded, and where TLS
/// started.
#[test]
fn forward_starttls_smtp_curl() {
    let dir = TempDir::new("mitm-starttls");
    let certs = Certs::localhost();
    let mut server = SmtpServer::start(None, &dir, &certs);
    let rec = Rec::new(&dir, "starttls");
    let (agent, ca_dir) = forward_tls(&dir, &certs, server.port, &rec);
    let curl = curl_mail_args(
        &dir,
        ca_dir.join("ca.crt").to_str().unwrap(),
        agent.addr().port(),
    );
    send_mail(&curl);
    let up = server.upgraded();
    agent.stop();
    let evs = rec.events();
    let open = check_starttls_records(&evs, &format!("127.0.0.1:{}", server.port), &up);
    assert_eq!(open["proxy"], "forward", "{open}");
    // The pcapng stream: both, in order.
    let streams = rec.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    let (sent, received) = rec.follow(streams[0].0);
    assert_eq!(sent, [up.plain_in, up.tls_in].concat());
    assert_eq!(received, [up.plain_out, up.tls_out].concat());
    // tshark's SMTP dissector reads the commands before and inside TLS (it keeps their
    // first four letters: `STAR` is STARTTLS).
    let commands = tshark_r(
        &rec.pcap,
        &[
            "-d",
            &format!("tcp.port=={},smtp", server.port),
            "-Y",
            "smtp.req.command",
            "-T",
            "fields",
            "-e",
            "smtp.req.command",
        ],
    );
    let commands: Vec<&str> = commands.lines().map(str::trim).collect();
    // (Whether it sees the QUIT after the mail depends on how the body's segments fell.)
    assert_eq!(
        commands[..6],
        ["EHLO", "STAR", "EHLO", "MAIL", "RCPT", "DATA"],
        "tshark: {commands:?}"
    );
}

/// With `--pcap-tls raw`, the TLS that STARTTLS began is in pcapng as its two legs (from the
/// ClientHello on), next to the connection's plaintext stream before it; tshark decrypts the
/// legs from the file's own secrets and reads the mail's commands inside TLS on both.
#[test]
fn forward_starttls_pcap_tls_raw() {
    let dir = TempDir::new("mitm-starttls-raw");
    let certs = Certs::localhost();
    let mut server = SmtpServer::start(None, &dir, &certs);
    let rec = Rec::new(&dir, "starttls-raw");
    let (agent, ca_dir) = forward_tls_with(&dir, &certs, server.port, &rec, &["--pcap-tls", "raw"]);
    let curl = curl_mail_args(
        &dir,
        ca_dir.join("ca.crt").to_str().unwrap(),
        agent.addr().port(),
    );
    send_mail(&curl);
    let up = server.upgraded();
    let listen_port = agent.addr().port();
    agent.stop();
    // The records are the plaintext, as without raw.
    check_starttls_records(&rec.events(), &format!("127.0.0.1:{}", server.port), &up);
    // pcapng: the plaintext before the upgrade, then the two legs of real TLS.
    let streams = rec.streams();
    assert_eq!(streams.len(), 3, "{streams:?}");
    let (sent, received) = rec.follow(streams[0].0);
    assert_eq!(
        (sent, received),
        (up.plain_in.clone(), up.plain_out.clone())
    );
    let mails = |extra: &[&str]| {
        let mut a = vec![
            "-d".to_string(),
            format!("tls.port=={},smtp", server.port),
            "-d".to_string(),
            format!("tls.port=={listen_port},smtp"),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(
            [
                "-Y",
                "smtp.req.command == \"MAIL\"",
                "-T",
                "fields",
                "-e",
                "tcp.stream",
            ]
            .map(String::from),
        );
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        tshark_r(&rec.pcap, &a)
    };
    let legs: Vec<String> = mails(&[]).lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(legs, ["1", "2"], "MAIL decrypted on both legs");
    // Without the file's secrets nothing decrypts.
    let stripped = dir.join("stripped.pcapng");
    let st = Command::new("editcap")
        .args([
            "--discard-all-secrets",
            &rec.pcap,
            stripped.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let none = tshark_r(
        stripped.to_str().unwrap(),
        &["-Y", "smtp.req.command == \"MAIL\""],
    );
    assert_eq!(none.trim(), "", "decrypted without secrets: {none}");
}

/// PostgreSQL's upgrade: `pg_server.py CERT KEY` reads the 8-byte `SSLRequest`, answers
/// `S`, wraps the socket, reads one line and answers it, then reports what it read and
/// wrote before and inside TLS (`PLAIN_IN`, `PLAIN_OUT`, `TLS_IN`, `TLS_OUT`, hex).
const PG_SERVER_PY: &str = r#"
import socket, ssl, sys
ls = socket.socket()
ls.bind(("127.0.0.1", 0)); ls.listen(1)
print("READY", ls.getsockname()[1], flush=True)
c, _ = ls.accept()
c.settimeout(20)
req = b""
while len(req) < 8:
    req += c.recv(8 - len(req))
assert req == bytes.fromhex("0000000804d2162f"), req
c.sendall(b"S")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s = ctx.wrap_socket(c, server_side=True)
got = b""
while not got.endswith(b"\n"):
    got += s.recv(4096)
reply = b"one row: " + got
s.sendall(reply)
s.close()
for k, v in (("PLAIN_IN", req), ("PLAIN_OUT", b"S"), ("TLS_IN", got), ("TLS_OUT", reply)):
    print(k, v.hex(), flush=True)
"#;

/// The client of [`PG_SERVER_PY`]: `pg_client.py PORT CA` sends the `SSLRequest`, expects
/// `S`, starts TLS (trusting CA, SNI `localhost`), sends a query line and prints the answer
/// (`REPLY <hex>`).
const PG_CLIENT_PY: &str = r#"
import socket, ssl, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
c.sendall(bytes.fromhex("0000000804d2162f"))
assert c.recv(1) == b"S"
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(c, server_hostname="localhost")
s.sendall(b"Q select 1;\n")
got = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    got += d
print("REPLY", got.hex(), flush=True)
"#;

/// A PostgreSQL-style upgrade (`SSLRequest`, `S`, TLS) through `proxy forward --tls`: the
/// binary request and the `S` recorded as they are, the query and its answer as TLS
/// plaintext after the `forward starttls` record.
#[test]
fn forward_starttls_postgres_style() {
    let dir = TempDir::new("mitm-starttls-pg");
    let certs = Certs::localhost();
    let script = dir.write("pg_server.py", PG_SERVER_PY);
    let mut cmd = Command::new(python());
    cmd.arg(&script).args([certs.cert_str(), certs.key_str()]);
    let mut server = Proc::spawn("pg_server.py", cmd);
    let sport: u16 = server.expect("READY", TIMEOUT).parse().unwrap();
    let rec = Rec::new(&dir, "pg");
    let (agent, ca_dir) = forward_tls(&dir, &certs, sport, &rec);
    let client = dir.write("pg_client.py", PG_CLIENT_PY);
    let mut cmd = Command::new(python());
    cmd.arg(&client).args([
        agent.addr().port().to_string(),
        ca_dir.join("ca.crt").display().to_string(),
    ]);
    let mut client = Proc::spawn("pg_client.py", cmd);
    let reply = unhex(&client.expect("REPLY", TIMEOUT));
    assert_eq!(reply, b"one row: Q select 1;\n");
    let mut next = |k: &str| unhex(&server.expect(k, TIMEOUT));
    let up = Upgraded {
        plain_in: next("PLAIN_IN"),
        plain_out: next("PLAIN_OUT"),
        tls_in: next("TLS_IN"),
        tls_out: next("TLS_OUT"),
    };
    agent.stop();
    let evs = rec.events();
    let open = check_starttls_records(&evs, &format!("127.0.0.1:{sport}"), &up);
    assert_eq!(open["proxy"], "forward", "{open}");
}

/// `--tls-passthrough localhost` honoured at a STARTTLS upgrade: curl trusting only the
/// SMTP server's own CA sends its mail through `proxy forward --tls`; the mid-stream
/// ClientHello (SNI `localhost`) is relayed untouched, the second `open` record says so, and
/// what follows is recorded as the TLS bytes that went (no plaintext, no `tls` mark).
#[test]
fn forward_starttls_passthrough_pattern() {
    let dir = TempDir::new("mitm-starttls-pass");
    let certs = Certs::localhost();
    let mut server = SmtpServer::start(None, &dir, &certs);
    let rec = Rec::new(&dir, "starttls-pass");
    let (agent, _) = forward_tls_with(
        &dir,
        &certs,
        server.port,
        &rec,
        &["--tls-passthrough", "localhost"],
    );
    let curl = curl_mail_args(&dir, certs.ca_str(), agent.addr().port());
    send_mail(&curl);
    let up = server.upgraded();
    agent.stop();
    let evs = rec.events();
    let opens: Vec<&Value> = evs.iter().filter(|e| e.ty() == "open").collect();
    assert_eq!(opens.len(), 2, "{}", capagent_testkit::dump(&evs));
    assert_eq!(opens[0]["proxy"], "forward", "{}", opens[0]);
    let open = opens[1];
    assert_eq!(open["proxy"], "forward starttls", "{open}");
    assert_eq!(
        open["tls"],
        serde_json::json!({"passthrough": "pattern localhost", "sni": "localhost"}),
        "{open}"
    );
    let fd = open.fd();
    let (sent, received) = (recorded(&evs, fd, "send"), recorded(&evs, fd, "recv"));
    // The plaintext before the upgrade, then TLS records (a ClientHello, a ServerHello).
    assert_eq!(sent[..up.plain_in.len()], up.plain_in[..]);
    assert_eq!(received[..up.plain_out.len()], up.plain_out[..]);
    assert_eq!(sent[up.plain_in.len()..][..2], [0x16, 0x03]);
    assert_eq!(received[up.plain_out.len()..][..3], [0x16, 0x03, 0x03]);
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(&sent, b"MAIL FROM"), "plaintext recorded");
    for e in evs.iter().filter(|e| e.fd() == fd && e.ty() == "data") {
        assert!(e.get("tls").is_none(), "{e}");
    }
}

/// Pinning at a STARTTLS upgrade: curl trusting only the SMTP server's own CA rejects
/// capagent's certificate at its first upgrade (it fails), and its next upgrade to the same
/// host (through the same proxy, another mapping: the scripted server serves one connection)
/// is passed through, recorded as such.
#[test]
fn forward_starttls_pinning_passes_through_next_time() {
    let dir = TempDir::new("mitm-starttls-pin");
    let certs = Certs::localhost();
    let first = SmtpServer::start(None, &dir, &certs);
    let second = SmtpServer::start(None, &dir, &certs);
    let rec = Rec::new(&dir, "starttls-pin");
    let ca_dir = dir.join("ca");
    let mut a: Vec<String> = ["proxy", "forward"].map(String::from).to_vec();
    for s in [&first, &second] {
        a.extend([
            "--map".to_string(),
            format!("127.0.0.1:0=127.0.0.1:{}", s.port),
        ]);
    }
    a.extend(
        [
            "--tls",
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--upstream-ca",
            certs.ca_str(),
        ]
        .map(String::from),
    );
    a.extend(rec.args());
    let agent = Agent::start(&a, 2);
    let curl = curl_mail_args(&dir, certs.ca_str(), agent.addrs[0].port());
    let out = Command::new(&curl[0])
        .args(&curl[1..])
        .output()
        .expect("cannot run curl");
    assert!(!out.status.success(), "the first upgrade is intercepted");
    send_mail(&curl_mail_args(&dir, certs.ca_str(), agent.addrs[1].port()));
    let stop = agent.stop();
    assert!(
        stop.contains("rejected capagent's certificate for localhost"),
        "{stop}"
    );
    let evs = rec.events();
    let starttls: Vec<&Value> = evs
        .iter()
        .filter(|e| e.ty() == "open" && e["proxy"] == "forward starttls")
        .collect();
    assert_eq!(starttls.len(), 2, "{}", capagent_testkit::dump(&evs));
    assert!(starttls[0]["tls"]["error"].is_string(), "{}", starttls[0]);
    assert_eq!(
        starttls[1]["tls"],
        serde_json::json!({"passthrough": "client rejected capagent's certificate", "sni": "localhost"}),
        "{}",
        starttls[1]
    );
}
