//! Root integration tests of `capagent intercept --tls`: a command's TLS connections are
//! intercepted as `proxy forward --tls` intercepts them. curl, trusting capagent's CA
//! (`--cacert`), runs as `capagent intercept --tls -- curl ...` in a network namespace of
//! the test against a Python HTTPS server whose certificate a test CA signed (trusted with
//! `--upstream-ca`): once by address (no SNI: the original destination is the name asked
//! for, an IP address on the leaf) and once by name (SNI `localhost`). Each checks the exact
//! plaintext both ways in the JSON records (the server reports what it read and wrote), what
//! the records say of each TLS side, and that tshark reads the HTTP from the pcapng. And
//! STARTTLS: curl sending a mail to a scripted SMTP server that upgrades mid-stream
//! (`testkit::starttls`), recorded in plaintext before and after the upgrade. And
//! `--pcap-tls raw`: both legs' real TLS in the pcapng, decrypting from its own secrets. And
//! `--as http --tls`: the HTTP handler terminates the TLS and `--set-header` changes the
//! request inside it.

use capagent_testkit::mitm::raw::{check_raw, sessions};
use std::process::Command;

use capagent_testkit::mitm::{Mitm, check_recorded, check_tls};
use capagent_testkit::proxy::Rec;
use capagent_testkit::starttls::{SmtpServer, check_starttls_records, curl_mail_args};
use capagent_testkit::*;
use serde_json::Value;

/// `capagent intercept --tls --ca-dir DIR/ca EXTRA -o ... -w ... -- curl -sS -m 20 --cacert
/// CA` in `ns` (the URLs and the rest of curl's arguments to add).
fn intercept_curl(ns: &Netns, t: &Mitm, extra: &[&str]) -> Command {
    let mut c = ns.cmd(capagent());
    c.arg("intercept")
        .args(t.tls_args(extra))
        .args(t.rec.args())
        .args(["--", "curl", "-sS", "-m", "20", "--cacert", &t.ca_cert()]);
    c
}

/// A namespace `tag`, a test directory `name` and, in the namespace, a Python HTTPS server
/// with a test CA's certificate for localhost (dropped in reverse order: the server first,
/// the namespace last).
fn https_setup(tag: &str, name: &str) -> (Netns, Mitm, Certs, HttpsServer) {
    let ns = Netns::new(tag);
    let t = Mitm::new(name);
    let certs = Certs::localhost();
    let server = HttpsServer::start(&ns, &t.dir, &certs);
    (ns, t, certs, server)
}

/// The `open` records of connections to 127.0.0.1:`port`.
fn opens_to(evs: &[Value], port: u16) -> Vec<&Value> {
    let target = format!("127.0.0.1:{port}");
    evs.iter()
        .filter(|e| e["type"] == "open" && e["target"] == target.as_str())
        .collect()
}

/// `intercept --tls -- curl URL1 URL2`: both connections intercepted, the one without SNI
/// with a leaf for the address curl connected to.
#[test]
fn intercept_tls_curl() {
    let (ns, t, certs, mut server) = https_setup("imi", "intercept");
    let port = server.port();
    let mut c = intercept_curl(&ns, &t, &["--upstream-ca", certs.ca_str()]);
    c.args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://127.0.0.1:{port}/by-address"))
        .arg(format!("https://localhost:{port}/by-name"));
    let out = run_output("capagent intercept --tls -- curl", c, TIMEOUT);
    assert_eq!(out, "path /by-address\npath /by-name\n");
    let exchanges = [server.exchange(), server.exchange()];
    let evs = t.events();
    let opens = opens_to(&evs, port);
    assert_eq!(opens.len(), 2, "{}", dump(&evs));
    for ((open, ex), sni) in opens.iter().zip(&exchanges).zip([None, Some("localhost")]) {
        assert!(
            open["proxy"]
                .as_str()
                .is_some_and(|p| p.starts_with("process pid=")),
            "{open}"
        );
        check_tls(open, sni);
        check_recorded(&evs, open["fd"].as_i64().unwrap(), ex);
    }
    let http = tshark_r(
        &t.rec.pcap,
        &[
            "-Y",
            "http",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
            "-e",
            "http.response.code",
            "-e",
            "frame.comment",
        ],
    );
    let lines: Vec<Vec<&str>> = http
        .lines()
        .map(|l| l.split('\t').map(str::trim).collect())
        .collect();
    assert_eq!(lines.len(), 4, "tshark: {http}");
    let firsts: Vec<&str> = lines
        .iter()
        .map(|l| l[0])
        .filter(|u| !u.is_empty())
        .collect();
    assert_eq!(firsts, ["/by-address", "/by-name"], "tshark: {http}");
    let codes: Vec<&str> = lines
        .iter()
        .map(|l| l[1])
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(codes, ["200", "200"], "tshark: {http}");
    assert!(
        lines
            .iter()
            .all(|l| l[2].contains("decrypted by capagent (mitm)")),
        "tshark: {http}"
    );
}

/// `intercept --as http --tls --set-header 'c2s:X-Capagent: on' -- curl https://...`: the
/// HTTP handler terminates the intercepted TLS as `proxy reverse --tls` does, and the HTTP
/// rules change the request inside it: the server reads the added header, and the records
/// carry the plaintext and the TLS of both sides.
#[test]
fn intercept_as_http_tls_curl() {
    let (ns, t, certs, mut server) = https_setup("imh", "intercept-http");
    let port = server.port();
    let mut c = intercept_curl(
        &ns,
        &t,
        &[
            "--upstream-ca",
            certs.ca_str(),
            "--as",
            "http",
            "--set-header",
            "c2s:X-Capagent: on",
        ],
    );
    c.args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/as-http"));
    let out = run_output("capagent intercept --as http --tls -- curl", c, TIMEOUT);
    assert_eq!(out, "path /as-http\n");
    let ex = server.exchange();
    let req = String::from_utf8_lossy(&ex.request);
    assert!(
        req.starts_with("GET /as-http HTTP/1.1\r\n") && req.contains("\r\nX-Capagent: on\r\n"),
        "{req}"
    );
    let evs = t.events();
    let opens = opens_to(&evs, port);
    assert_eq!(opens.len(), 1, "{}", dump(&evs));
    check_tls(opens[0], Some("localhost"));
    // The request as the server read it (with the header), the response as it wrote it,
    // in the clear.
    check_recorded(&evs, opens[0]["fd"].as_i64().unwrap(), &ex);
}

/// `intercept --tls --pcap-tls raw -o F -w F -- curl ...` (per-process mode): the pcapng
/// holds both legs of the intercepted connection (curl to capagent, capagent to the
/// server) as real TLS, each decrypting with tshark from the file's own secrets to the
/// exact request and response (as `--pcap-tls raw` in the proxies: `testkit::mitm::raw`).
#[test]
fn intercept_tls_pcap_raw_curl() {
    let (ns, t, certs, mut server) = https_setup("imiraw", "intercept-raw");
    let port = server.port();
    let extra = ["--pcap-tls", "raw", "--upstream-ca", certs.ca_str()];
    let mut c = intercept_curl(&ns, &t, &extra);
    c.args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/raw-intercept"));
    let out = run_output(
        "capagent intercept --tls --pcap-tls raw -- curl",
        c,
        TIMEOUT,
    );
    assert_eq!(out, "path /raw-intercept\n");
    let ex = server.exchange();
    let evs = t.events();
    let target = format!("127.0.0.1:{port}");
    let open = one(&evs, "open", |e| e.ty() == "open" && e["target"] == target);
    check_tls(open, Some("localhost"));
    // The client leg ends at the address capagent accepted curl's connection on.
    let listen = open["listen"].as_str().unwrap().parse().unwrap();
    let lines = check_raw(&t.rec, &t.dir, open, &ex, "/raw-intercept", listen, port);
    assert_eq!(sessions(&lines).len(), 2, "two sessions: {lines:?}");
}

/// `intercept --tls -- curl smtp://...`: a mail sent over STARTTLS by an intercepted
/// command, recorded in plaintext before and after the upgrade, and where TLS started.
#[test]
fn intercept_starttls_smtp_curl() {
    let ns = Netns::new("ims");
    let dir = TempDir::new("mitm-intercept-smtp");
    let certs = Certs::localhost();
    let mut server = SmtpServer::start(Some(&ns), &dir, &certs);
    let rec = Rec::new(&dir, "smtp");
    let ca_dir = dir.join("ca");
    let curl = curl_mail_args(&dir, ca_dir.join("ca.crt").to_str().unwrap(), server.port);
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--tls", "--ca-dir", ca_dir.to_str().unwrap()])
        .args(["--upstream-ca", certs.ca_str()])
        .args(rec.args())
        .arg("--")
        .args(&curl);
    run_output("capagent intercept --tls -- curl smtp://", c, TIMEOUT);
    let up = server.upgraded();
    let evs = rec.events();
    let open = check_starttls_records(&evs, &format!("127.0.0.1:{}", server.port), &up);
    assert!(
        open["proxy"]
            .as_str()
            .is_some_and(|p| p.starts_with("process pid=")),
        "{open}"
    );
}
