use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use capagent_testkit::TempDir;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{ServerName, UnixTime};

use super::*;

fn spec(cn: Option<&str>, dns: &[&str], ips: &[IpAddr]) -> LeafSpec {
    LeafSpec {
        common_name: cn.map(str::to_string),
        dns: dns.iter().map(|s| s.to_string()).collect(),
        ips: ips.to_vec(),
    }
}

fn example() -> LeafSpec {
    spec(
        Some("example.test"),
        &["example.test", "*.example.test"],
        &[
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
    )
}

/// rustls' own verifier (webpki) with only this CA as root.
fn verify(ca: &Ca, leaf: &CertifiedKey, name: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    verifier
        .verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &name, &[], UnixTime::now())
        .map(|_| ())
}

/// `openssl verify` of the leaf against ca.crt, for a host name (or an IP).
fn openssl_verify(dir: &TempDir, ca: &Ca, leaf: &CertifiedKey, check: &[&str]) -> String {
    let leaf_pem = dir.write("leaf.pem", pem("CERTIFICATE", &leaf.cert[0]));
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca.cert_path())
        .args(["-purpose", "sslserver"])
        .args(check)
        .arg(&leaf_pem)
        .output()
        .expect("openssl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_the_ca_and_its_leaves_verify() {
    let tmp = TempDir::new("ca-init");
    let dir = tmp.join("ca");
    let ca = Ca::init(&dir, false).unwrap();
    assert_eq!(ca.cert_path(), dir.join("ca.crt"));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert!(
        fs::read_to_string(dir.join("ca.key"))
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert_eq!(
        fs::read_to_string(dir.join("ca.crt")).unwrap(),
        ca.cert_pem()
    );
    assert!(!ca.is_rsa());

    // The CA certificate: a CA (critical basicConstraints), keyCertSign + cRLSign, 10 years.
    let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    let bc = x509.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    assert!(
        ca.subject().starts_with("CN=capagent CA ("),
        "{}",
        ca.subject()
    );
    assert!(ca.subject().ends_with("), O=capagent"), "{}", ca.subject());
    let years = ca
        .not_after()
        .duration_since(ca.not_before())
        .unwrap()
        .as_secs()
        / 86400
        / 365;
    assert_eq!(years, 10);

    let leaf = ca.leaf(&example()).unwrap();
    assert_eq!(leaf.cert.len(), 2);
    assert_eq!(&leaf.cert[1], ca.cert_der());
    leaf.keys_match().unwrap();
    for name in ["example.test", "www.example.test", "127.0.0.1", "::1"] {
        verify(&ca, &leaf, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["other.test", "a.b.example.test", "127.0.0.2"] {
        assert!(verify(&ca, &leaf, name).is_err(), "{name} accepted");
    }
    // The same with openssl's verifier.
    let ok = openssl_verify(&tmp, &ca, &leaf, &["-verify_hostname", "www.example.test"]);
    assert!(ok.ends_with("leaf.pem: OK\n"), "{ok}");
    let ok = openssl_verify(&tmp, &ca, &leaf, &["-verify_ip", "127.0.0.1"]);
    assert!(ok.ends_with("leaf.pem: OK\n"), "{ok}");
    let bad = openssl_verify(&tmp, &ca, &leaf, &["-verify_hostname", "other.test"]);
    // leaf_pem: the same (cached) chain as PEM, and the key that matches it.
    let (chain, key) = ca.leaf_pem(&example()).unwrap();
    let ders: Vec<_> = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ders, leaf.cert);
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    CertifiedKey::new(leaf.cert.clone(), signer)
        .keys_match()
        .unwrap();
    assert!(bad.contains("hostname mismatch"), "{bad}");

    // The leaf: serverAuth, digitalSignature only (ECDSA), not a CA, within the CA's life.
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
    assert_eq!(x509.subject().to_string(), "CN=example.test");
    assert!(
        x509.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
    assert!(!x509.is_ca());
    assert!(
        x509.validity().not_after.timestamp()
            <= x509.validity().not_before.timestamp() + 366 * 86400 + 86400
    );
    // The leaf names its issuer's key (AKI = the CA's SKI).
    use x509_parser::extensions::ParsedExtension;
    let ca_x509 = x509_parser::parse_x509_certificate(ca.cert_der())
        .unwrap()
        .1;
    let ski = ca_x509
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    let aki = x509
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    assert!(ski.is_some());
    assert_eq!(aki, ski);
}

#[test]
fn init_refuses_to_overwrite() {
    let tmp = TempDir::new("ca-twice");
    let dir = tmp.join("ca");
    let ca = Ca::init(&dir, false).unwrap();
    let before = (
        fs::read(dir.join("ca.crt")).unwrap(),
        fs::read(dir.join("ca.key")).unwrap(),
    );
    match Ca::init(&dir, false) {
        Err(CaError::AlreadyExists(p)) => assert_eq!(p, dir.join("ca.crt")),
        other => panic!("{other:?}"),
    }
    let after = (
        fs::read(dir.join("ca.crt")).unwrap(),
        fs::read(dir.join("ca.key")).unwrap(),
    );
    assert_eq!(before, after);
    // load and load_or_init find the same CA.
    assert_eq!(Ca::load(&dir).unwrap().fingerprint(), ca.fingerprint());
    let (again, created) = Ca::load_or_init(&dir).unwrap();
    assert!(!created);
    assert_eq!(again.cert_der(), ca.cert_der());
}

#[test]
fn load_or_init_creates_once_and_load_reports_problems() {
    let tmp = TempDir::new("ca-load");
    let dir = tmp.join("sub/ca");
    match Ca::load(&dir) {
        Err(CaError::Missing(p)) => assert_eq!(p, dir),
        other => panic!("{other:?}"),
    }
    let (ca, created) = Ca::load_or_init(&dir).unwrap();
    assert!(created);
    let loaded = Ca::load(&dir).unwrap();
    assert_eq!(loaded.fingerprint(), ca.fingerprint());
    assert_eq!(loaded.not_after(), ca.not_after());
    // A leaf of the loaded CA verifies against the CA as created.
    let leaf = loaded.leaf(&spec(None, &["loaded.test"], &[])).unwrap();
    verify(&ca, &leaf, "loaded.test").unwrap();

    // Another CA's key next to this certificate.
    let other = tmp.join("other");
    Ca::init(&other, false).unwrap();
    fs::copy(other.join("ca.key"), dir.join("ca.key")).unwrap();
    match Ca::load(&dir) {
        Err(CaError::KeyMismatch(p)) => assert_eq!(p, dir),
        other => panic!("{other:?}"),
    }
    fs::write(dir.join("ca.crt"), "not a certificate\n").unwrap();
    let e = Ca::load(&dir).unwrap_err();
    assert!(matches!(e, CaError::Invalid { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: ", dir.join("ca.crt").display())),
        "{e}"
    );
}

#[test]
fn fingerprint_is_sha256_of_the_der() {
    let tmp = TempDir::new("ca-fp");
    let ca = Ca::init(&tmp.join("ca"), false).unwrap();
    let fp = ca.fingerprint();
    assert_eq!(fp.len(), 32 * 3 - 1);
    let hex: String = fp.split(':').collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, ca.cert_der());
    let want: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(hex, want);
}

#[test]
fn leaves_are_cached_per_spec_and_bounded() {
    let tmp = TempDir::new("ca-cache");
    let ca = Ca::init(&tmp.join("ca"), false).unwrap();
    let a = ca.leaf(&spec(Some("a.test"), &["a.test"], &[])).unwrap();
    let a2 = ca.leaf(&spec(Some("a.test"), &["a.test"], &[])).unwrap();
    assert!(Arc::ptr_eq(&a, &a2));
    // Another spec (even only the CN differs) is another leaf, with the same process key.
    let a_nocn = ca.leaf(&spec(None, &["a.test"], &[])).unwrap();
    assert!(!Arc::ptr_eq(&a, &a_nocn));
    assert_ne!(a.cert[0], a_nocn.cert[0]);
    assert!(Arc::ptr_eq(&a.key, &a_nocn.key));
    assert_eq!(ca.cached(), 2);

    ca.set_cache_capacity(2);
    let b = ca.leaf(&spec(None, &["b.test"], &[])).unwrap();
    assert_eq!(ca.cached(), 2);
    // a_nocn and b were used last: a.test went out and is issued anew.
    assert!(Arc::ptr_eq(
        &b,
        &ca.leaf(&spec(None, &["b.test"], &[])).unwrap()
    ));
    let a3 = ca.leaf(&spec(Some("a.test"), &["a.test"], &[])).unwrap();
    assert!(!Arc::ptr_eq(&a, &a3));
    assert_ne!(a.cert[0], a3.cert[0]);
}

#[test]
fn bad_leaf_names_are_errors() {
    let tmp = TempDir::new("ca-names");
    let ca = Ca::init(&tmp.join("ca"), false).unwrap();
    assert!(matches!(
        ca.leaf(&spec(Some("only-cn.test"), &[], &[])),
        Err(CaError::NoNames)
    ));
    match ca.leaf(&spec(None, &["bad\u{e9}.test"], &[])) {
        Err(CaError::Name { name, .. }) => assert_eq!(name, "bad\u{e9}.test"),
        other => panic!("{other:?}"),
    }
}

/// Serves one HTTPS request with this leaf (rustls, as the interceptor will) and returns the
/// port; the thread answers `hello`.
fn serve_once(leaf: Arc<CertifiedKey>) -> (u16, std::thread::JoinHandle<String>) {
    #[derive(Debug)]
    struct One(Arc<CertifiedKey>);
    impl rustls::server::ResolvesServerCert for One {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(One(leaf)));
    let config = Arc::new(config);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.ends_with(b"\r\n\r\n") {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        if req.ends_with(b"\r\n\r\n") {
            let _ = tls.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
        String::from_utf8_lossy(&req).into_owned()
    });
    (port, server)
}

fn curl(ca: &Ca, port: u16, extra: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20", "--noproxy", "*"])
        .arg("--cacert")
        .arg(ca.cert_path())
        .arg("--resolve")
        .arg(format!("www.example.test:{port}:127.0.0.1"))
        .args(extra)
        .arg(format!("https://www.example.test:{port}/x"))
        .output()
        .expect("curl")
}

#[test]
fn curl_accepts_a_leaf_served_by_rustls() {
    let tmp = TempDir::new("ca-curl");
    let ca = Ca::init(&tmp.join("ca"), false).unwrap();
    let leaf = ca.leaf(&example()).unwrap();
    let (port, server) = serve_once(leaf.clone());
    let out = curl(&ca, port, &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello", "{out:?}");
    assert!(server.join().unwrap().starts_with("GET /x HTTP/1.1\r\n"));

    // Without capagent's CA (the system's roots only), curl refuses the leaf.
    let (port, server) = serve_once(leaf);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--noproxy", "*", "--resolve"])
        .arg(format!("www.example.test:{port}:127.0.0.1"))
        .arg(format!("https://www.example.test:{port}/x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(60), "{out:?}");
    assert_eq!(server.join().unwrap(), "");
}

#[test]
fn an_rsa_ca_issues_rsa_leaves_clients_accept() {
    let tmp = TempDir::new("ca-rsa");
    let dir = tmp.join("ca");
    let ca = Ca::init(&dir, true).unwrap();
    assert!(ca.is_rsa());
    let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    assert_eq!(
        x509.public_key().parsed().unwrap().key_size(),
        2048,
        "an RSA 2048 CA"
    );
    // Loaded again, it is still an RSA CA.
    assert!(Ca::load(&dir).unwrap().is_rsa());

    let leaf = ca.leaf(&example()).unwrap();
    assert_eq!(leaf.cert.len(), 2);
    leaf.keys_match().unwrap();
    verify(&ca, &leaf, "www.example.test").unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(matches!(
        x509.public_key().parsed().unwrap(),
        x509_parser::public_key::PublicKey::RSA(_)
    ));
    let ok = openssl_verify(&tmp, &ca, &leaf, &["-verify_hostname", "example.test"]);
    assert!(ok.ends_with("leaf.pem: OK\n"), "{ok}");

    // An old client: TLS 1.2 with RSA authentication only.
    let (port, server) = serve_once(leaf);
    let out = curl(
        &ca,
        port,
        &[
            "--tls-max",
            "1.2",
            "--ciphers",
            "ECDHE-RSA-AES128-GCM-SHA256",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello", "{out:?}");
    server.join().unwrap();
}
