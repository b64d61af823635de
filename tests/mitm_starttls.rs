//! Integration tests of STARTTLS through `proxy forward --tls`, with a real client and a
//! server made at test time, no root: curl sends a mail (`smtp://`, `--ssl-reqd`, trusting
//! capagent's CA with `--cacert`) to a scripted SMTP server ([`SmtpServer`]: Python's `ssl`
//! module, a certificate a test CA signed, trusted by the proxy with `--upstream-ca`):
//! `EHLO`, `STARTTLS`, `220`, then TLS and the mail inside it. The records must hold the
//! exact plaintext before the upgrade (as without `--tls`), a second `open` record where TLS
//! started (`forward starttls`, with what each TLS side negotiated), and the exact plaintext
//! after it (`MAIL FROM`, `RCPT TO`, `DATA`, marked as TLS plaintext); the pcapng stream is
//! both, in order. The server reports every byte it read and wrote, before and after the
//! upgrade.

use std::process::Command;

use capagent_testkit::proxy::{Agent, Rec};
use capagent_testkit::starttls::{SmtpServer, check_starttls_records, curl_mail_args};
use capagent_testkit::{Certs, TempDir};

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
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
    let ca_dir = dir.join("ca");
    let mut a = args(&[
        "proxy",
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &format!("127.0.0.1:{}", server.port),
        "--tls",
        "--ca-dir",
        ca_dir.to_str().unwrap(),
        "--upstream-ca",
        certs.ca_str(),
    ]);
    a.extend(rec.args());
    let agent = Agent::start(&a, 1);
    let curl = curl_mail_args(
        &dir,
        ca_dir.join("ca.crt").to_str().unwrap(),
        agent.addr().port(),
    );
    let out = Command::new(&curl[0])
        .args(&curl[1..])
        .output()
        .expect("cannot run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
}
