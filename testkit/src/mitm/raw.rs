//! `--pcap-tls raw`'s checks: a pcapng file holding an intercepted connection's two legs
//! (the client to capagent, capagent to the server) as TCP streams of real TLS, with the
//! secrets of both sessions in Decryption Secrets Blocks, so that tshark decrypts each leg
//! from the file alone ([`check_raw`]); and the tshark and pcapng readings they rest on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;

use pcap_file::pcapng::{Block, PcapNgReader};
use serde_json::Value;

use super::check_recorded;
use crate::proxy::Rec;
use crate::{Ev as _, Exchange, TempDir, follow_raw, tshark_r};

/// The TCP streams of `pcap` from their SYNs: (stream index, client, server).
pub fn pcap_streams(pcap: &str) -> Vec<(u32, SocketAddr, SocketAddr)> {
    Rec {
        jsonl: String::new(),
        pcap: pcap.to_string(),
    }
    .streams()
}

/// The HTTP tshark reads in `pcap`: (TCP stream, request method and URI, or response
/// code), in the file's order.
pub fn http_by_stream(pcap: &str) -> Vec<(u32, String)> {
    let out = tshark_r(
        pcap,
        &[
            "-Y",
            "http",
            "-T",
            "fields",
            "-e",
            "tcp.stream",
            "-e",
            "http.request.method",
            "-e",
            "http.request.uri",
            "-e",
            "http.response.code",
        ],
    );
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let what: Vec<&str> = f[1..].iter().copied().filter(|s| !s.is_empty()).collect();
            (f[0].parse().unwrap(), what.join(" "))
        })
        .collect()
}

/// The decrypted bytes of TCP stream `stream` (`client` its connecting side) both ways
/// (`follow,tls,raw`): (from its client, from its server).
pub fn follow_tls(pcap: &str, stream: u32, client: SocketAddr) -> (Vec<u8>, Vec<u8>) {
    follow_tls_with(pcap, &[], stream, |node0| node0 == Some(client))
}

/// [`follow_tls`] with tshark `options` (such as `-o tls.keylog_file:FILE`), the client
/// told by `is_client` from the address tshark names "Node 0" (None: unreadable). tshark
/// 4.0 may name either end "Node 0" (the side of the lines without a tab).
pub fn follow_tls_with(
    pcap: &str,
    options: &[&str],
    stream: u32,
    is_client: impl FnOnce(Option<SocketAddr>) -> bool,
) -> (Vec<u8>, Vec<u8>) {
    let follow = format!("follow,tls,raw,{stream}");
    let out = tshark_r(pcap, &[options, &["-qz", &follow]].concat());
    let (node0, node1) = follow_raw(&out);
    let first = out
        .lines()
        .find_map(|l| l.strip_prefix("Node 0: "))
        .and_then(|a| a.parse().ok());
    if is_client(first) {
        (node0, node1)
    } else {
        (node1, node0)
    }
}

/// The TCP bytes of stream `stream` both ways (`follow,tcp,raw`).
pub fn follow_tcp(pcap: &str, stream: u32) -> (Vec<u8>, Vec<u8>) {
    follow_raw(&tshark_r(
        pcap,
        &["-qz", &format!("follow,tcp,raw,{stream}")],
    ))
}

/// The key log lines of the Decryption Secrets Blocks of `pcap`, the index of the first
/// DSB among the file's blocks and that of the first packet with a TCP payload.
pub fn secrets(pcap: &str) -> (BTreeSet<String>, usize, usize) {
    let bytes = std::fs::read(pcap).unwrap();
    let mut r = PcapNgReader::new(&bytes[..]).unwrap();
    let (mut lines, mut first_dsb, mut first_data) = (BTreeSet::new(), None, None);
    let mut i = 0;
    while let Some(block) = r.next_block() {
        match block.unwrap() {
            Block::Unknown(u) if u.type_ == 0x0000_000A => {
                first_dsb.get_or_insert(i);
                // Secrets type "TLSK" (4), length (4), then the text (capagent writes
                // big-endian pcapng).
                let body = &u.value;
                assert_eq!(&body[0..4], b"TLSK");
                let len = u32::from_be_bytes(body[4..8].try_into().unwrap()) as usize;
                let text = String::from_utf8(body[8..8 + len].to_vec()).unwrap();
                lines.extend(text.lines().map(str::to_string));
            }
            // IPv4 (20) + TCP (20, no options): anything more is data.
            Block::EnhancedPacket(p) if p.data.len() > 40 => {
                first_data.get_or_insert(i);
            }
            _ => {}
        }
        i += 1;
    }
    (
        lines,
        first_dsb.expect("no DSB"),
        first_data.expect("no data"),
    )
}

/// What every raw test checks of one intercepted exchange (`client_leg`: the client's
/// address to the proxy's; `server_leg`'s server: the HTTPS server): the JSON records are
/// the exact plaintext, the pcapng has the two legs as two TCP streams of real TLS whose
/// decryption by tshark (from the file's secrets alone) is the exact request and response
/// on each, and nothing decrypts without the secrets. Returns the secrets' lines.
pub fn check_raw(
    rec: &Rec,
    dir: &TempDir,
    open: &Value,
    ex: &Exchange,
    path: &str,
    proxy: SocketAddr,
    server_port: u16,
) -> BTreeSet<String> {
    check_raw_legs(rec, dir, open, ex, ex, path, proxy, server_port)
}

/// [`check_raw`] of a proxy that speaks HTTP itself (`proxy reverse`): the client leg
/// decrypts to `client_ex`, the exchange as the client sent and got it.
#[allow(clippy::too_many_arguments)]
pub fn check_raw_legs(
    rec: &Rec,
    dir: &TempDir,
    open: &Value,
    ex: &Exchange,
    client_ex: &Exchange,
    path: &str,
    proxy: SocketAddr,
    server_port: u16,
) -> BTreeSet<String> {
    assert_eq!(open["tls"]["error"], Value::Null, "{open}");
    check_recorded(&rec.events(), open.fd(), ex);
    // Two streams: the client to the proxy, the proxy to the server.
    let st = pcap_streams(&rec.pcap);
    assert_eq!(st.len(), 2, "{st:?}");
    let client_leg = st.iter().find(|s| s.2 == proxy).expect("client leg");
    let server_leg = st
        .iter()
        .find(|s| s.2 == SocketAddr::from(([127, 0, 0, 1], server_port)))
        .expect("server leg");
    assert_eq!(client_leg.1.ip(), proxy.ip());
    assert_eq!(server_leg.1.ip(), proxy.ip());
    assert_ne!(server_leg.1.port(), proxy.port());
    // The real TLS bytes: records from the ClientHello on, no plaintext in them.
    for s in [client_leg, server_leg] {
        let (up, down) = follow_tcp(&rec.pcap, s.0);
        assert_eq!(&up[..3], [0x16, 0x03, 0x01], "a ClientHello first: {s:?}");
        assert_eq!(down[0], 0x16, "a ServerHello first: {s:?}");
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(
            !has(&up, path.as_bytes()),
            "plaintext in the raw bytes: {s:?}"
        );
        assert!(
            !has(&down, b"HTTP/1.1 200"),
            "plaintext in the raw bytes: {s:?}"
        );
    }
    // Consistent sequence numbers: no lost segment, retransmission or the like.
    let flagged = tshark_r(&rec.pcap, &["-Y", "tcp.analysis.flags"]);
    assert_eq!(flagged, "", "TCP analysis flags");
    // tshark decrypts both legs from the file's secrets, to the exact bytes.
    let get = format!("GET {path}");
    let mut want = vec![
        (client_leg.0, get.clone()),
        (client_leg.0, "200".to_string()),
        (server_leg.0, get),
        (server_leg.0, "200".to_string()),
    ];
    want.sort();
    let mut got = http_by_stream(&rec.pcap);
    got.sort();
    assert_eq!(got, want);
    for (s, ex) in [(client_leg, client_ex), (server_leg, ex)] {
        assert_eq!(
            follow_tls(&rec.pcap, s.0, s.1),
            (ex.request.clone(), ex.response.clone()),
            "decrypted {s:?}"
        );
    }
    // The secrets come before the first data; without them nothing decrypts.
    let (lines, first_dsb, first_data) = secrets(&rec.pcap);
    assert!(first_dsb < first_data, "DSB {first_dsb}, data {first_data}");
    let bare = dir.join("no-secrets.pcapng").display().to_string();
    let st = Command::new("editcap")
        .args(["--discard-all-secrets", &rec.pcap, &bare])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(http_by_stream(&bare), [], "decrypted without the secrets");
    assert_eq!(
        follow_tls(&bare, client_leg.0, client_leg.1),
        (vec![], vec![])
    );
    assert_eq!(pcap_streams(&bare).len(), 2);
    lines
}

/// The client randoms of key log lines, each with its set of labels.
pub fn sessions(lines: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in lines {
        let w: Vec<&str> = l.split(' ').collect();
        assert_eq!(w.len(), 3, "{l:?}");
        m.entry(w[1].to_string())
            .or_default()
            .insert(w[0].to_string());
    }
    m
}
