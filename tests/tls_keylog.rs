//! Root integration tests of `capagent capture --tls-keylog FILE`: real TLS 1.3 and TLS 1.2
//! sessions (curl, OpenSSL, against `openssl s_server -www`) on the loopback of a network
//! namespace of the test's own, captured by the real capagent; curl writes its key log
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

#[test]
fn capture_tls_keylog_lets_tshark_decrypt_tls13_and_tls12() {
    let ns = Netns::new("tlsk");
    let certs = Certs::localhost();
    let server = OpensslServer::start(&ns, &certs);
    let dir = TempDir::new("tlsk");
    let out = dir.join("tls.pcapng");
    let keys = dir.join("keys.log");
    let curl = |version: &str, path: &str| {
        format!(
            "curl -sS -o /dev/null --cacert {ca} {version} https://127.0.0.1:{port}{path}",
            ca = certs.ca_str(),
            port = server.port,
        )
    };
    let script = format!(
        "export SSLKEYLOGFILE={keys} && {} && {}",
        curl("--tlsv1.3", "/over-tls13"),
        curl("--tlsv1.2 --tls-max 1.2", "/over-tls12"),
        keys = keys.to_str().unwrap(),
    );
    let mut cmd = ns.cmd(capagent());
    cmd.args([
        "capture",
        "-i",
        "lo",
        "-w",
        out.to_str().unwrap(),
        "--tls-keylog",
    ])
    .arg(&keys)
    .args(["--", "sh", "-c", &script]);
    let mut cap = Proc::spawn("capagent", cmd);
    let st = cap.wait(TIMEOUT);
    let stderr = cap.stderr();
    assert!(st.success(), "capagent failed ({st}): {stderr}");

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

    // One Decryption Secrets Block, an NSS key log ("TLSK") of exactly those lines, before
    // every packet.
    let file = out.to_str().unwrap();
    let (dsbs, packets_before) = secrets_blocks(file);
    assert_eq!(dsbs, [(0x544c_534b, key_log.clone())]);
    assert_eq!(packets_before, 0);

    // tshark decrypts both sessions from the file alone.
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
    drop(server);
}

/// The key log file must hold key log lines by the end, and needs a pcapng file to go into.
#[test]
fn capture_tls_keylog_errors() {
    let ns = Netns::new("tlsk");
    let dir = TempDir::new("tlsk");
    let keys = dir.write("keys.log", "# nothing but a comment\n");
    for write in [None, Some("-")] {
        let mut cmd = ns.cmd(capagent());
        cmd.args(["capture", "-i", "lo", "--tls-keylog", &keys]);
        if let Some(w) = write {
            cmd.args(["-w", w]);
        }
        cmd.args(["--", "true"]);
        let mut cap = Proc::spawn("capagent", cmd);
        assert!(!cap.wait(TIMEOUT).success());
        assert_eq!(
            cap.stderr().trim_end(),
            "capagent: --tls-keylog needs -w FILE (the secrets go into the file when the capture ends)"
        );
    }
    let out = dir.join("out.pcapng");
    let mut cmd = ns.cmd(capagent());
    cmd.args([
        "capture",
        "-i",
        "lo",
        "-w",
        out.to_str().unwrap(),
        "--tls-keylog",
        &keys,
    ])
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
        "{err}"
    );
    // The capture itself is there, readable.
    tshark_r(out.to_str().unwrap(), &[]);
    assert_eq!(secrets_blocks(out.to_str().unwrap()).0, []);
}
