//! Root integration tests of `capagent capture --tls-keylog FILE` and `capagent trace
//! --tls-keylog FILE`: real TLS 1.3 and TLS 1.2 sessions (curl, OpenSSL, against `openssl
//! s_server -www`) on the loopback of a network namespace of the test's own, captured (or
//! traced) by the real capagent; curl writes its key log
//! (SSLKEYLOGFILE) during the capture, capagent puts those lines into a Decryption Secrets
//! Block of the pcapng, and tshark, given nothing else, decrypts the HTTP inside. The same
//! file with the secrets discarded (`editcap --discard-all-secrets`) shows no HTTP.
//!
//! Needs root. Run one at a time with the capagent binary in `CAPAGENT_BIN` (`cargo xtask
//! test` sets it): `cargo test -p capagent-tests --features root-tests --test tls_keylog --
//! --test-threads=1`.

use std::{fs, process::Command};

use capagent_testkit::*;
use pcap_file::pcapng::{Block, PcapNgReader};

/// tshark's view of the HTTP in `file`: per message, the request's method, URI and version,
/// or the response's version, code and phrase (the body is not waited for: `-www` answers
/// HTTP/1.0 without a length and closes).
fn http_messages(file: &str) -> Vec<String> {
    let out = tshark_r(
        file,
        &[
            "-o",
            "http.desegment_body:FALSE",
            "-Y",
            "http",
            "-T",
            "fields",
            "-e",
            "http.request.method",
            "-e",
            "http.request.uri",
            "-e",
            "http.request.version",
            "-e",
            "http.response.version",
            "-e",
            "http.response.code",
            "-e",
            "http.response.phrase",
        ],
    );
    out.lines()
        .map(|l| {
            l.split('\t')
                .filter(|f| !f.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The Decryption Secrets Blocks of `file` (secrets type, text) and the number of packets
/// before the first of them.
fn secrets_blocks(file: &str) -> (Vec<(u32, String)>, usize) {
    let bytes = fs::read(file).unwrap();
    let mut r = PcapNgReader::new(&bytes[..]).unwrap();
    let (mut dsbs, mut packets_before, mut packets) = (Vec::new(), None, 0);
    while let Some(b) = r.next_block() {
        match b.unwrap() {
            Block::EnhancedPacket(_) => packets += 1,
            Block::Unknown(u) if u.type_ == 0xA => {
                let v = &u.value;
                let ty = u32::from_be_bytes(v[0..4].try_into().unwrap());
                let len = u32::from_be_bytes(v[4..8].try_into().unwrap()) as usize;
                dsbs.push((ty, String::from_utf8(v[8..8 + len].to_vec()).unwrap()));
                packets_before.get_or_insert(packets);
            }
            _ => {}
        }
    }
    (dsbs, packets_before.unwrap_or(packets))
}

/// A shell script making one TLS 1.3 request (`GET /over-tls13`) and one TLS 1.2 request
/// (`GET /over-tls12`) with curl to `server`, its key log going to `keys`.
fn tls_sessions(certs: &Certs, server: &OpensslServer, keys: &str) -> String {
    let curl = |version: &str, path: &str| {
        format!(
            "curl -sS -o /dev/null --cacert {ca} {version} https://127.0.0.1:{port}{path}",
            ca = certs.ca_str(),
            port = server.port,
        )
    };
    format!(
        "export SSLKEYLOGFILE={keys} && {} && {}",
        curl("--tlsv1.3", "/over-tls13"),
        curl("--tlsv1.2 --tls-max 1.2", "/over-tls12"),
    )
}

/// Runs `capagent MODE -w OUT --tls-keylog KEYS -- sh -c SCRIPT` (the two sessions of
/// [`tls_sessions`]) in a namespace of its own; checks curl's key log and what capagent says,
/// and returns OUT and the key log.
fn run_sessions(mode: &[&str]) -> (TempDir, String, String) {
    let ns = Netns::new("tlsk");
    let certs = Certs::localhost();
    let server = OpensslServer::start(&ns, &certs);
    let dir = TempDir::new("tlsk");
    let out = dir.join("tls.pcapng");
    let keys = dir.join("keys.log");
    let script = tls_sessions(&certs, &server, keys.to_str().unwrap());
    let mut cmd = ns.cmd(capagent());
    cmd.args(mode)
        .args(["-w", out.to_str().unwrap(), "--tls-keylog"])
        .arg(&keys)
        .args(["--", "sh", "-c", &script]);
    let mut cap = Proc::spawn("capagent", cmd);
    let st = cap.wait(TIMEOUT);
    let stderr = cap.stderr();
    assert!(st.success(), "capagent failed ({st}): {stderr}");
    drop(server);

    // curl's key log: the five TLS 1.3 secrets of one session, the master secret of the other.
    let key_log = fs::read_to_string(&keys).unwrap();
    let mut labels: Vec<&str> = key_log
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_RANDOM",
            "CLIENT_TRAFFIC_SECRET_0",
            "EXPORTER_SECRET",
            "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "SERVER_TRAFFIC_SECRET_0",
        ],
        "{key_log}"
    );
    assert!(
        stderr.contains(&format!(
            "capagent: 6 TLS key log lines from {} put into {}",
            keys.display(),
            out.display()
        )),
        "{stderr}"
    );
    let out = out.to_str().unwrap().to_string();
    (dir, out, key_log)
}

/// `file` holds one Decryption Secrets Block, an NSS key log ("TLSK") of exactly `key_log`,
/// before every packet; tshark decrypts the two sessions of [`tls_sessions`] from the file
/// alone, and sees nothing of their HTTP once the secrets are discarded.
fn assert_decrypted(dir: &TempDir, file: &str, key_log: &str) {
    let (dsbs, packets_before) = secrets_blocks(file);
    assert_eq!(dsbs, [(0x544c_534b, key_log.to_string())]);
    assert_eq!(packets_before, 0);

    assert_eq!(
        http_messages(file),
        [
            "GET /over-tls13 HTTP/1.1",
            "HTTP/1.0 200 ok",
            "GET /over-tls12 HTTP/1.1",
            "HTTP/1.0 200 ok",
        ]
    );
    // ... which were one TLS 1.3 and one TLS 1.2 session.
    let versions = tshark_r(
        file,
        &[
            "-Y",
            "tls.handshake.type == 2",
            "-T",
            "fields",
            "-e",
            "tls.handshake.version",
            "-e",
            "tls.handshake.extensions.supported_version",
        ],
    );
    assert_eq!(versions, "0x0303\t0x0304\n0x0303\t\n");

    // Without the secrets, the same packets show no HTTP.
    let bare = dir.join("bare.pcapng");
    let st = Command::new("editcap")
        .args(["--discard-all-secrets", file])
        .arg(&bare)
        .status()
        .unwrap();
    assert!(st.success());
    let bare = bare.to_str().unwrap();
    assert_eq!(secrets_blocks(bare).0, []);
    assert_eq!(http_messages(bare), Vec::<String>::new());
    let count = |f: &str| tshark_r(f, &["-Y", "tcp"]).lines().count();
    assert_eq!(count(bare), count(file), "the same packets");
}

/// `capture -w --tls-keylog`: the real packets on `lo`.
#[test]
fn capture_tls_keylog_lets_tshark_decrypt_tls13_and_tls12() {
    let (dir, file, key_log) = run_sessions(&["capture", "-i", "lo"]);
    assert_decrypted(&dir, &file, &key_log);
}

/// `trace -w --tls-keylog`: curl's socket calls (the ciphertext it sent and received) as
/// synthetic packets.
#[test]
fn trace_tls_keylog_lets_tshark_decrypt_tls13_and_tls12() {
    let (dir, file, key_log) = run_sessions(&["trace"]);
    assert_decrypted(&dir, &file, &key_log);
}

/// The key log file must hold key log lines by the end, and needs a pcapng file to go into
/// (capture and trace alike).
#[test]
fn tls_keylog_errors() {
    let ns = Netns::new("tlsk");
    let dir = TempDir::new("tlsk");
    let keys = dir.write("keys.log", "# nothing but a comment\n");
    for mode in [&["capture", "-i", "lo"][..], &["trace"]] {
        for write in [None, Some("-")] {
            let mut cmd = ns.cmd(capagent());
            cmd.args(mode).args(["--tls-keylog", &keys]);
            if let Some(w) = write {
                cmd.args(["-w", w]);
            }
            cmd.args(["--", "true"]);
            let mut cap = Proc::spawn("capagent", cmd);
            assert!(!cap.wait(TIMEOUT).success());
            assert_eq!(
                cap.stderr().trim_end(),
                "capagent: --tls-keylog needs -w FILE (the secrets go into the file at the end)",
                "{mode:?} -w {write:?}"
            );
        }
        let out = dir.join("out.pcapng");
        let mut cmd = ns.cmd(capagent());
        cmd.args(mode)
            .args(["-w", out.to_str().unwrap(), "--tls-keylog", &keys])
            .args(["--", "true"]);
        let mut cap = Proc::spawn("capagent", cmd);
        assert!(!cap.wait(TIMEOUT).success());
        let err = cap.stderr();
        assert!(
            err.lines().any(|l| l
                == format!(
                    "capagent: --tls-keylog {keys}: no key log lines in it ({} is written without secrets)",
                    out.display()
                )),
            "{mode:?}: {err}"
        );
        // What was captured is there, readable.
        tshark_r(out.to_str().unwrap(), &[]);
        assert_eq!(secrets_blocks(out.to_str().unwrap()).0, []);
        fs::remove_file(&out).unwrap();
    }
}
