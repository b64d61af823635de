//! The NSS key log of the TLS sessions capagent makes (`--keylog FILE`): one line per secret,
//! `LABEL <client_random hex> <secret hex>` (`CLIENT_RANDOM` for TLS 1.2,
//! `CLIENT_HANDSHAKE_TRAFFIC_SECRET`, `SERVER_TRAFFIC_SECRET_0`... for TLS 1.3), the format of
//! SSLKEYLOGFILE that Wireshark, tshark and `editcap --inject-secrets` read.
//!
//! [`KeyLogFile`] is the `rustls::KeyLog` every session of a process shares: each line goes
//! into the file in one `write` (opened for appending, so concurrent sessions, and other
//! programs appending to the same file, never tear a line) and to each tap
//! ([`KeyLogFile::tap`]), e.g. a pcapng writer putting the lines into Decryption Secrets
//! Blocks before the packets they decrypt.
//!
//! rustls has a `KeyLogFile` of its own, but it only writes to the file named by the
//! SSLKEYLOGFILE environment variable and has no way to hand the lines to a writer.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
};

/// The key log of a process's TLS sessions: a file, taps, or both.
pub struct KeyLogFile {
    /// The file's path; `None` for a key log that only feeds taps.
    path: Option<PathBuf>,
    /// One lock for the file and the taps: they see the lines in the same order.
    out: Mutex<Outputs>,
    /// A write to the file failed (reported once).
    failed: AtomicBool,
}

struct Outputs {
    file: Option<File>,
    taps: Vec<mpsc::Sender<String>>,
}

impl KeyLogFile {
    /// Appends to `path`, created with mode 0600 when missing (the secrets decrypt every
    /// session logged).
    pub fn create(path: &Path) -> io::Result<Arc<KeyLogFile>> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        Ok(KeyLogFile::new(Some(path.to_path_buf()), Some(file)))
    }

    /// A key log without a file: the lines only go to the taps (`--pcap-tls raw` without
    /// `--keylog`).
    pub fn in_memory() -> Arc<KeyLogFile> {
        KeyLogFile::new(None, None)
    }

    fn new(path: Option<PathBuf>, file: Option<File>) -> Arc<KeyLogFile> {
        Arc::new(KeyLogFile {
            path,
            out: Mutex::new(Outputs {
                file,
                taps: Vec::new(),
            }),
            failed: AtomicBool::new(false),
        })
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn outputs(&self) -> std::sync::MutexGuard<'_, Outputs> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every line logged from now on (each with its `\n`), in the order they were logged (the
    /// file's order). A tap whose receiver is dropped is forgotten at the next line.
    pub fn tap(&self) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        self.add_tap(tx);
        rx
    }

    /// As [`KeyLogFile::tap`], into a channel made before this key log (a writer already
    /// running with its receiver, e.g. the proxies' recorder for `--pcap-tls raw`).
    pub fn add_tap(&self, tx: mpsc::Sender<String>) {
        self.outputs().taps.push(tx);
    }

    /// Logs one line: into the file (one `write`), then to every tap.
    pub fn log_line(&self, line: &str) {
        let mut out = self.outputs();
        if let Some(file) = &mut out.file
            && let Err(e) = file.write_all(line.as_bytes())
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            let path = self.path.as_deref().unwrap_or(Path::new("?"));
            tracing::warn!(
                "key log {}: {e}; secrets are missing from it",
                path.display()
            );
        }
        out.taps.retain(|tx| tx.send(line.to_string()).is_ok());
    }
}

impl fmt::Debug for KeyLogFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyLogFile")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl rustls::KeyLog for KeyLogFile {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        self.log_line(&line(label, client_random, secret));
    }
}

/// One key log line: `LABEL <client_random hex> <secret hex>\n` (lowercase hex).
pub fn line(label: &str, client_random: &[u8], secret: &[u8]) -> String {
    let mut s = String::with_capacity(label.len() + 2 * (client_random.len() + secret.len()) + 3);
    s.push_str(label);
    for part in [client_random, secret] {
        s.push(' ');
        for b in part {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
    }
    s.push('\n');
    s
}

/// The key log lines of `text` (a key log file that may hold comments, blank lines or
/// anything else), each ending with `\n`: `LABEL HEX HEX`, the label in capitals, digits and
/// `_`, the client random 32 bytes.
pub fn lines_of(text: &str) -> String {
    let hex = |s: &str| {
        !s.is_empty() && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let mut out = String::new();
    for l in text.lines() {
        let mut words = l.split_ascii_whitespace();
        let (Some(label), Some(random), Some(secret), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        let label_ok = label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if label_ok && random.len() == 64 && hex(random) && hex(secret) {
            for w in [label, " ", random, " ", secret, "\n"] {
                out.push_str(w);
            }
        }
    }
    out
}

/// Why `--tls-keylog FILE` could not put FILE's lines into a pcapng file.
#[derive(Debug, thiserror::Error)]
pub enum TlsKeylogError {
    #[error("--tls-keylog needs -w FILE (the secrets go into the file at the end)")]
    NeedsFile,
    #[error("--tls-keylog {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "--tls-keylog {}: no key log lines in it ({} is written without secrets)",
        path.display(),
        pcapng.display()
    )]
    Empty { path: PathBuf, pcapng: PathBuf },
    #[error(
        "--tls-keylog {}: putting the secrets into {}: {source}",
        path.display(),
        pcapng.display()
    )]
    Inject {
        path: PathBuf,
        pcapng: PathBuf,
        source: io::Error,
    },
}

/// `--tls-keylog KEYLOG` of a finished pcapng file: the key log lines of KEYLOG go into a
/// Decryption Secrets Block before its packets ([`crate::output::pcapng::secrets`]).
/// Returns how many lines.
pub fn embed_in_pcapng(key_log: &Path, pcapng: &Path) -> Result<usize, TlsKeylogError> {
    let text = std::fs::read(key_log).map_err(|source| TlsKeylogError::Read {
        path: key_log.to_path_buf(),
        source,
    })?;
    let lines = lines_of(&String::from_utf8_lossy(&text));
    if lines.is_empty() {
        return Err(TlsKeylogError::Empty {
            path: key_log.to_path_buf(),
            pcapng: pcapng.to_path_buf(),
        });
    }
    crate::output::pcapng::secrets::inject_file(pcapng, lines.as_bytes()).map_err(|source| {
        TlsKeylogError::Inject {
            path: key_log.to_path_buf(),
            pcapng: pcapng.to_path_buf(),
            source,
        }
    })?;
    Ok(lines.lines().count())
}

/// Checks `--tls-keylog` against `-w`: a file to put the secrets into when the session ends
/// (not stdout).
pub fn check_tls_keylog(
    key_log: Option<&Path>,
    write: Option<&Path>,
) -> Result<(), TlsKeylogError> {
    match (key_log, write) {
        (Some(_), None) => Err(TlsKeylogError::NeedsFile),
        (Some(_), Some(w)) if w.as_os_str() == "-" => Err(TlsKeylogError::NeedsFile),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::BTreeSet, os::unix::fs::PermissionsExt as _, sync::Arc};

    #[test]
    fn line_is_label_and_lowercase_hex() {
        assert_eq!(
            line("CLIENT_RANDOM", &[0x00, 0x1f, 0xa0], &[0xff, 0x09]),
            "CLIENT_RANDOM 001fa0 ff09\n"
        );
    }

    #[test]
    fn lines_of_keeps_key_log_lines_only() {
        let r = "ab".repeat(32);
        let text = format!(
            "# comment\n\nCLIENT_RANDOM {r} {s}\r\nlower_case {r} 00\nSERVER_TRAFFIC_SECRET_0 {r} 0g\n\
             EXPORTER_SECRET 0102 0304\nCLIENT_TRAFFIC_SECRET_0  {r}  0a0B \nX {r} 00 extra\n",
            s = "cd".repeat(48)
        );
        assert_eq!(
            lines_of(&text),
            format!(
                "CLIENT_RANDOM {r} {s}\nCLIENT_TRAFFIC_SECRET_0 {r} 0a0B\n",
                s = "cd".repeat(48)
            )
        );
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("capagent-keylog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Threads logging long lines at once: the file and a tap get every line whole, the
    /// file's earlier content stays, a new file is 0600.
    #[test]
    fn concurrent_lines_are_whole_in_the_file_and_the_tap() {
        let dir = temp_dir("concurrent");
        let path = dir.join("keys.log");
        let log = KeyLogFile::create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(log.path(), Some(path.as_path()));
        drop(log);
        std::fs::write(&path, "# earlier\n").unwrap();
        let log = KeyLogFile::create(&path).unwrap();
        let tap = log.tap();
        let dropped = log.tap();
        drop(dropped);
        const THREADS: u8 = 8;
        const LINES: u16 = 300;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..LINES {
                        let random = [t; 32];
                        let secret: Vec<u8> = (0..48).map(|k| (i as u8) ^ k).collect();
                        rustls::KeyLog::log(&*log, &format!("LABEL_{i}"), &random, &secret);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let want: BTreeSet<String> = (0..THREADS)
            .flat_map(|t| {
                (0..LINES).map(move |i| {
                    let secret: Vec<u8> = (0..48).map(|k| (i as u8) ^ k).collect();
                    line(&format!("LABEL_{i}"), &[t; 32], &secret)
                })
            })
            .collect();
        let text = std::fs::read_to_string(&path).unwrap();
        let body = text
            .strip_prefix("# earlier\n")
            .expect("earlier content kept");
        let got: Vec<String> = body.split_inclusive('\n').map(str::to_string).collect();
        assert_eq!(got.len(), want.len());
        assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), want);
        let tapped: Vec<String> = tap.try_iter().collect();
        assert_eq!(tapped, got, "the tap sees the file's lines in its order");
        assert_eq!(log.outputs().taps.len(), 1, "the dropped tap is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A key log's tap feeding a pcapng writer through `SecretsFirst`: the lines logged
    /// before a record go into a Decryption Secrets Block before it, for trace's synthetic
    /// packets and for capture's packets alike.
    #[test]
    fn tapped_lines_precede_the_next_record_in_pcapng() {
        use crate::output::{
            EventWriter as _, PacketWriter as _, SecretsFirst,
            pcapng::{PcapngWriter, secrets::decryption_secrets_block},
        };
        let log = KeyLogFile::in_memory();
        let random = [0x11; 32];
        let first = line("CLIENT_RANDOM", &random, &[0x22; 48]);
        let dsb = decryption_secrets_block(pcap_file::Endianness::Big, first.as_bytes()).unwrap();

        let headers = PcapngWriter::new(Vec::new()).unwrap().into_inner();
        let mut w = SecretsFirst::new(PcapngWriter::new(Vec::new()).unwrap(), log.tap());
        rustls::KeyLog::log(&*log, "CLIENT_RANDOM", &random, &[0x22; 48]);
        w.write_event(&crate::trace::assemble::lost_event(0, 1, 1))
            .unwrap();
        let out = w.into_inner().into_inner();
        assert_eq!(out[..headers.len()], headers[..]);
        assert_eq!(out[headers.len()..headers.len() + dsb.len()], dsb[..]);

        let lo = crate::capture::Iface {
            name: "lo".to_string(),
            ifindex: 1,
            loopback: true,
            linktype: crate::capture::LinkType::Ethernet,
        };
        let new = || {
            crate::capture::pcapng::CaptureWriter::new(Vec::new(), std::slice::from_ref(&lo), 96)
                .unwrap()
        };
        let headers = new().into_inner().unwrap();
        let data = [0u8; 60];
        let p = crate::model::packet::Packet {
            ts_ns: 0,
            cookie: 1,
            ifindex: 1,
            orig_len: 60,
            dir: agent_common::packet_dir::EGRESS,
            ino: 0,
            owner: None,
            data: &data,
        };
        let mut w = SecretsFirst::new(new(), log.tap());
        w.write_packet(&p, 1, None).unwrap();
        let after_one = {
            let mut one = new();
            crate::output::PacketWriter::write_packet(&mut one, &p, 1, None).unwrap();
            one.into_inner().unwrap()
        };
        rustls::KeyLog::log(&*log, "CLIENT_RANDOM", &random, &[0x22; 48]);
        w.write_packet(&p, 1, None).unwrap();
        let out = w.into_inner().into_inner().unwrap();
        let packet = &after_one[headers.len()..];
        assert!(out == [&headers[..], packet, &dsb, packet].concat());
    }

    /// A CA and a leaf for `localhost` (DER), made with rcgen.
    fn certs() -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (
            ca.der().clone(),
            leaf.der().clone(),
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
    }

    /// A real rustls handshake in memory, the client and the server each with a key log;
    /// returns (the client random of the ClientHello, the client's lines, the server's).
    fn handshake(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (String, Vec<String>, Vec<String>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (ca, leaf, key) = certs();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let (client_log, server_log) = (KeyLogFile::in_memory(), KeyLogFile::in_memory());
        let (client_tap, server_tap) = (client_log.tap(), server_log.tap());
        let mut ccfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ccfg.key_log = client_log;
        let mut scfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf], key)
            .unwrap();
        scfg.key_log = server_log;
        let mut client =
            rustls::ClientConnection::new(Arc::new(ccfg), "localhost".try_into().unwrap()).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(scfg)).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        // Record header (5), handshake header (4), legacy version (2), then the random.
        let random: String = hello[11..43].iter().map(|b| format!("{b:02x}")).collect();
        server.read_tls(&mut &hello[..]).unwrap();
        server.process_new_packets().unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets().unwrap();
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut &buf[..]).unwrap();
            server.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        assert_eq!(client.protocol_version(), Some(version.version));
        (
            random,
            client_tap.try_iter().collect(),
            server_tap.try_iter().collect(),
        )
    }

    fn labels(lines: &[String], random: &str) -> BTreeSet<String> {
        lines
            .iter()
            .map(|l| {
                let w: Vec<&str> = l.trim_end().split(' ').collect();
                assert_eq!(w.len(), 3, "{l:?}");
                assert_eq!(w[1], random, "{l:?}: not the ClientHello's random");
                assert_eq!(lines_of(l), *l, "{l:?}");
                w[0].to_string()
            })
            .collect()
    }

    #[test]
    fn rustls_tls13_sessions_log_their_secrets() {
        let (random, client, server) = handshake(&rustls::version::TLS13);
        let want = [
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0",
            "EXPORTER_SECRET",
            "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "SERVER_TRAFFIC_SECRET_0",
        ];
        assert_eq!(labels(&client, &random), want.map(String::from).into());
        assert_eq!(client.len(), want.len(), "{client:?}");
        let (mut c, mut s) = (client.clone(), server.clone());
        c.sort();
        s.sort();
        assert_eq!(c, s, "both ends log the same secrets");
    }

    #[test]
    fn rustls_tls12_sessions_log_the_master_secret() {
        let (random, client, server) = handshake(&rustls::version::TLS12);
        assert_eq!(client.len(), 1, "{client:?}");
        assert_eq!(
            labels(&client, &random),
            ["CLIENT_RANDOM".to_string()].into()
        );
        assert_eq!(client[0].trim_end().rsplit(' ').next().unwrap().len(), 96);
        assert_eq!(client, server);
    }
}
