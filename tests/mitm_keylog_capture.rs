//! Root test of `--keylog FILE` as a Wireshark user uses it: curl (trusting capagent's CA)
//! through `proxy forward --tls --keylog K` to a Python HTTPS server, all on the loopback of
//! a network namespace of the test's own, while `capagent capture -i lo` records the real
//! traffic there. tshark given K (`-o tls.keylog_file:K`) decrypts both legs of the
//! intercepted connection, curl's with the proxy and the proxy's with the server, to the
//! exact request and response the server read and wrote; without K it decrypts nothing.
//!
//! Needs root. Run with the capagent binary in `CAPAGENT_BIN` (`cargo xtask test` sets it):
//! `cargo test -p capagent-tests --features root-tests --test mitm_keylog_capture --
//! --test-threads=1`.

use std::net::SocketAddr;

use capagent_testkit::mitm::raw::follow_tls_with;
use capagent_testkit::*;

/// The HTTP tshark reads in `pcap` (`opts` before the filter): (TCP server port, request
/// method and URI, or response code), sorted.
fn http(pcap: &str, opts: &[&str]) -> Vec<(u16, String)> {
    let mut a = opts.to_vec();
    a.extend([
        "-Y",
        "http",
        "-T",
        "fields",
        "-e",
        "tcp.srcport",
        "-e",
        "tcp.dstport",
        "-e",
        "http.request.method",
        "-e",
        "http.request.uri",
        "-e",
        "http.response.code",
    ]);
    let mut out: Vec<(u16, String)> = tshark_r(pcap, &a)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let (src, dst): (u16, u16) = (f[0].parse().unwrap(), f[1].parse().unwrap());
            let what: Vec<&str> = f[2..].iter().copied().filter(|s| !s.is_empty()).collect();
            // A request goes to the server's port, a response comes from it.
            let port = if f[2].is_empty() { src } else { dst };
            (port, what.join(" "))
        })
        .collect();
    out.sort();
    out
}

/// The TCP stream numbers of `pcap` whose server port is `port`.
fn stream_to(pcap: &str, port: u16) -> u32 {
    let out = tshark_r(
        pcap,
        &[
            "-Y",
            &format!("tcp.flags.syn == 1 && tcp.flags.ack == 0 && tcp.dstport == {port}"),
            "-T",
            "fields",
            "-e",
            "tcp.stream",
        ],
    );
    let streams: Vec<u32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(streams.len(), 1, "one stream to port {port}: {out}");
    streams[0]
}

/// `follow,tls,raw` of `stream` with the key log: (from the client, from the server).
fn follow_tls(pcap: &str, keys: &str, stream: u32, server_port: u16) -> (Vec<u8>, Vec<u8>) {
    let keylog = format!("tls.keylog_file:{keys}");
    follow_tls_with(pcap, &["-o", &keylog], stream, |node0| {
        node0.is_none_or(|a| a.port() != server_port)
    })
}

#[test]
fn keylog_decrypts_a_capture_of_both_legs() {
    let ns = Netns::new("mkcap");
    let dir = TempDir::new("mitm-keylog-capture");
    let certs = Certs::localhost();
    let mut server = HttpsServer::start(&ns, &dir, &certs);
    let keys = dir.join("keys.log").display().to_string();
    let ca_dir = dir.join("ca").display().to_string();
    let mut cmd = ns.cmd(capagent());
    cmd.args(["proxy", "forward", "--listen", "127.0.0.1:0", "--to"])
        .arg(format!("127.0.0.1:{}", server.port()))
        .args([
            "--tls",
            "--ca-dir",
            &ca_dir,
            "--upstream-ca",
            certs.ca_str(),
        ])
        .args(["--keylog", &keys, "--no-record"]);
    let mut proxy = Proc::spawn("capagent proxy", cmd);
    let line = proxy.wait_stderr_line(" listening on ", TIMEOUT);
    let addr: SocketAddr = line
        .rsplit_once(" listening on ")
        .and_then(|(_, a)| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));

    let pcap = dir.join("lo.pcapng").display().to_string();
    let mut cmd = ns.cmd(capagent());
    cmd.args(["capture", "-i", "lo", "-w", &pcap]);
    let mut cap = Proc::spawn("capagent capture", cmd);
    cap.wait_stderr("capagent: capturing on", 1, TIMEOUT);
    let out = ns
        .cmd("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            &format!("{ca_dir}/ca.crt"),
        ])
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        .arg(format!("https://localhost:{}/captured", addr.port()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"path /captured\n");
    let ex = server.exchange();
    // The proxy first: its close of both legs is in the capture.
    proxy.terminate(TIMEOUT);
    cap.terminate(TIMEOUT);

    let opt = format!("tls.keylog_file:{keys}");
    let (p, s) = (addr.port(), server.port());
    let mut want = vec![
        (p, "GET /captured".to_string()),
        (p, "200".to_string()),
        (s, "GET /captured".to_string()),
        (s, "200".to_string()),
    ];
    want.sort();
    assert_eq!(http(&pcap, &["-o", &opt]), want, "both legs decrypted");
    assert_eq!(http(&pcap, &[]), [], "nothing decrypts without the key log");
    for port in [p, s] {
        let stream = stream_to(&pcap, port);
        assert_eq!(
            follow_tls(&pcap, &keys, stream, port),
            (ex.request.clone(), ex.response.clone()),
            "the leg to port {port}"
        );
    }
}
