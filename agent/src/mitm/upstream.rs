//! The interceptor's side towards the real server: the roots it trusts (the system's, plus
//! `--upstream-ca`), the rustls client configurations (one per ALPN list a client offered,
//! kept so that sessions resume), `--insecure`'s verifier that accepts any certificate, and
//! the names of the server's certificate (for the leaf capagent issues in its place).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Most client configurations kept (distinct ALPN lists; past it they are made afresh).
const MAX_CONFIGS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("--upstream-ca {path}: {reason}")]
    UpstreamCa { path: PathBuf, reason: String },
    #[error("no trusted roots: the system store has none and no --upstream-ca was given")]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The ring provider: the one crypto provider capagent builds with (no C build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client configurations towards real servers.
pub struct Upstream {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    insecure: bool,
    /// Where the sessions' secrets go (`--keylog`); rustls' default logs nothing.
    key_log: Option<Arc<dyn rustls::KeyLog>>,
    configs: Mutex<HashMap<Vec<Vec<u8>>, Arc<ClientConfig>>>,
}

impl Upstream {
    /// Roots from the system store (what `rustls-native-certs` finds: SSL_CERT_FILE,
    /// SSL_CERT_DIR, or the distribution's bundle) plus the certificates of `upstream_ca`
    /// (PEM). With `insecure` no certificate is verified, and no root is needed.
    pub fn new(upstream_ca: Option<&Path>, insecure: bool) -> Result<Upstream, UpstreamError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!("system roots: {e}");
        }
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!("{added} system roots");
        if let Some(path) = upstream_ca {
            let bad = |reason: String| UpstreamError::UpstreamCa {
                path: path.to_path_buf(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no certificate in it (PEM expected)".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
        }
        if roots.is_empty() && !insecure {
            return Err(UpstreamError::NoRoots);
        }
        Ok(Upstream {
            provider: provider(),
            roots: Arc::new(roots),
            insecure,
            key_log: None,
            configs: Mutex::new(HashMap::new()),
        })
    }

    /// Every session's secrets go to `key_log` (`--keylog`).
    pub fn with_key_log(mut self, key_log: Arc<dyn rustls::KeyLog>) -> Upstream {
        self.key_log = Some(key_log);
        self
    }

    /// The client configuration offering `alpn` (the client's list, in its order).
    pub fn config(&self, alpn: &[Vec<u8>]) -> Result<Arc<ClientConfig>, UpstreamError> {
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = configs.get(alpn) {
            return Ok(c.clone());
        }
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(self.provider.clone())))
                .with_no_client_auth()
        } else {
            builder
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth()
        };
        config.alpn_protocols = alpn.to_vec();
        if let Some(log) = &self.key_log {
            config.key_log = log.clone();
        }
        let config = Arc::new(config);
        if configs.len() >= MAX_CONFIGS {
            configs.clear();
        }
        configs.insert(alpn.to_vec(), config.clone());
        Ok(config)
    }
}

/// `--insecure`: any certificate is accepted (the handshake's signatures are still checked,
/// so the server holds the key of the certificate it sent, recorded).
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The server name to ask for and verify: the client's SNI, else `host` (the CONNECT or
/// SOCKS host, or the target address).
pub fn server_name(sni: Option<&str>, host: &str) -> Option<ServerName<'static>> {
    let name = sni.unwrap_or(host);
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    ServerName::try_from(name.to_string()).ok()
}

/// What a certificate says about its names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CertNames {
    /// The subject, `CN=example.org, O=Example` (RFC 4514 order as x509-parser writes it).
    pub subject: String,
    pub common_name: Option<String>,
    /// Subject alternative names: DNS names and IP addresses.
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// The names of a DER certificate (None when it does not parse).
pub fn cert_names(der: &[u8]) -> Option<CertNames> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = CertNames {
        subject: cert.subject().to_string(),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        ..CertNames::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.dns.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                    16 => names.ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_to_ask_for() {
        assert_eq!(
            server_name(Some("example.org"), "10.0.0.1"),
            Some(ServerName::try_from("example.org").unwrap())
        );
        assert_eq!(
            server_name(None, "10.0.0.1"),
            Some(ServerName::IpAddress(
                "10.0.0.1".parse::<IpAddr>().unwrap().into()
            ))
        );
        assert_eq!(
            server_name(None, "[::1]"),
            Some(ServerName::IpAddress(
                "::1".parse::<IpAddr>().unwrap().into()
            ))
        );
        assert_eq!(server_name(None, "bad name!"), None);
    }

    #[test]
    fn names_of_a_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["example.org".into(), "*.example.org".into()])
                .unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("192.0.2.1".parse().unwrap()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "example.org");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let names = cert_names(cert.der()).unwrap();
        assert_eq!(names.subject, "CN=example.org");
        assert_eq!(names.common_name.as_deref(), Some("example.org"));
        assert_eq!(names.dns, ["example.org", "*.example.org"]);
        assert_eq!(names.ips, ["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(cert_names(b"not a certificate"), None);
    }

    #[test]
    fn upstream_ca_file() {
        let dir = std::env::temp_dir().join(format!("capagent-upstream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = Upstream::new(Some(&empty), false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no certificate"), "{e}");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        let up = Upstream::new(Some(&good), false).unwrap();
        let c = up.config(&[b"h2".to_vec()]).unwrap();
        assert_eq!(c.alpn_protocols, [b"h2".to_vec()]);
        assert!(Arc::ptr_eq(&c, &up.config(&[b"h2".to_vec()]).unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
