//! capagent's certificate authority: the CA certificate and key on disk (`ca.crt`, `ca.key`
//! in the CA directory), and the leaf certificates it issues for intercepted servers.
//!
//! The CA is ECDSA P-256 (or RSA 2048 with `ca init --rsa`, for clients without ECDSA),
//! valid 10 years. Leaves are made on demand for a [`LeafSpec`] (the names of the real
//! server's certificate), signed by the CA, and cached (bounded, least recently used out);
//! every leaf of a process shares one key (generated once: ECDSA P-256, or RSA 2048 under an
//! RSA CA), so issuing one costs a signature, not a key generation.
//!
//! rcgen (ring) makes the certificates; ring cannot generate RSA keys, so the `rsa` crate
//! does that once (key generation only: signing stays with ring).

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// File names inside the CA directory.
pub const CERT_FILE: &str = "ca.crt";
pub const KEY_FILE: &str = "ca.key";

/// Most leaves kept ([`Ca::leaf`]); the least recently used one goes first.
pub const LEAF_CACHE: usize = 1000;

/// How long the CA is valid, from a day before its creation.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);
/// How long a leaf is valid, from a day before it is issued (never past the CA's end).
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86400);
/// Leaves and the CA start this long before now (clients whose clock is a little behind).
const BACKDATE: Duration = Duration::from_secs(86400);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0} already exists (the CA is made once; `capagent ca show` describes it)")]
    AlreadyExists(PathBuf),
    #[error("no CA in {0} (`capagent ca init` creates it)")]
    Missing(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{0}: the key does not belong to the certificate")]
    KeyMismatch(PathBuf),
    #[error("a leaf certificate needs at least one DNS name or IP address")]
    NoNames,
    #[error("bad certificate name {name:?}: {reason}")]
    Name { name: String, reason: String },
    #[error("generating a key: {0}")]
    KeyGen(String),
    #[error("making a certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("the leaf key: {0}")]
    Sign(#[from] rustls::Error),
}

/// The names a leaf is issued for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeafSpec {
    /// Subject CN (the SNI or first DNS name), if any.
    pub common_name: Option<String>,
    /// SAN DNS names (wildcards allowed, copied from the server). The CN is not added
    /// here by itself: clients match the SAN names only.
    pub dns: Vec<String>,
    /// SAN IP addresses.
    pub ips: Vec<IpAddr>,
}

/// The one leaf key of a process (per key type): the rcgen key that goes into the
/// certificates, and the same key as rustls signs with.
struct LeafKey {
    key: KeyPair,
    signer: Arc<dyn rustls::sign::SigningKey>,
}

static LEAF_KEY_EC: OnceLock<Result<LeafKey, String>> = OnceLock::new();
static LEAF_KEY_RSA: OnceLock<Result<LeafKey, String>> = OnceLock::new();

/// capagent's CA, loaded; issues leaves. `Send + Sync`: shared as `Arc<Ca>`.
pub struct Ca {
    dir: PathBuf,
    cert_path: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    rsa: bool,
    subject: String,
    not_before: SystemTime,
    not_after: SystemTime,
    leaves: Mutex<LruCache<LeafSpec, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .field("subject", &self.subject)
            .field("rsa", &self.rsa)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// /var/lib/capagent/ca for root, else $XDG_DATA_HOME/capagent/ca
    /// (XDG default ~/.local/share).
    pub fn default_dir() -> PathBuf {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/var/lib/capagent/ca");
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from(".local/share"));
        data.join("capagent").join("ca")
    }

    /// Creates DIR/ca.crt (PEM) and DIR/ca.key (PKCS#8 PEM, mode 0600; dir 0700 when
    /// created here); ECDSA P-256, or RSA 2048 (`rsa`); fails with AlreadyExists when
    /// DIR/ca.crt exists.
    pub fn init(dir: &Path, rsa: bool) -> Result<Ca, CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if cert_path.exists() {
            return Err(CaError::AlreadyExists(cert_path));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| io_err(dir, source))?;

        let key = if rsa {
            rsa_key_pair()?
        } else {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?
        };
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown host".to_string());
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("capagent CA ({host})"));
        dn.push(DnType::OrganizationName, "capagent");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let cert = params.self_signed(&key)?;

        // The key first, never over an existing one; the certificate last (its presence
        // says the CA exists).
        write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        if let Err(e) = write_new(&cert_path, cert.pem().as_bytes(), 0o644) {
            let _ = fs::remove_file(&key_path);
            return Err(match e {
                CaError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists => {
                    CaError::AlreadyExists(cert_path)
                }
                e => e,
            });
        }
        Ca::load(dir)
    }

    /// Reads DIR/ca.crt and DIR/ca.key (the key must match the certificate).
    pub fn load(dir: &Path) -> Result<Ca, CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let cert_pem = match fs::read_to_string(&cert_path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CaError::Missing(dir.to_path_buf()));
            }
            Err(e) => return Err(io_err(&cert_path, e)),
        };
        let key_pem = fs::read_to_string(&key_path).map_err(|e| io_err(&key_path, e))?;
        let invalid = |path: &Path, reason: String| CaError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let der = rustls_pem_cert(&cert_pem).map_err(|r| invalid(&cert_path, r))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;

        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| invalid(&cert_path, format!("not an X.509 certificate: {e}")))?;
        if x509.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(CaError::KeyMismatch(dir.to_path_buf()));
        }
        if !x509.is_ca() {
            return Err(invalid(&cert_path, "not a CA certificate".to_string()));
        }
        let to_time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            }
        };
        let not_before = to_time(x509.validity().not_before);
        let not_after = to_time(x509.validity().not_after);
        let subject = x509.subject().to_string();
        let rsa = key.algorithm() == &rcgen::PKCS_RSA_SHA256;
        let der = CertificateDer::from(der).into_owned();
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert_path,
            cert_pem,
            cert_der: der,
            issuer,
            rsa,
            subject,
            not_before,
            not_after,
            leaves: Mutex::new(LruCache::new(
                NonZeroUsize::new(LEAF_CACHE).expect("nonzero"),
            )),
        })
    }

    /// load, or init (ECDSA) when DIR/ca.crt is missing; bool = created now.
    pub fn load_or_init(dir: &Path) -> Result<(Ca, bool), CaError> {
        match Ca::load(dir) {
            Ok(ca) => Ok((ca, false)),
            Err(CaError::Missing(_)) => match Ca::init(dir, false) {
                Ok(ca) => Ok((ca, true)),
                // Another process made it meanwhile.
                Err(CaError::AlreadyExists(_)) => Ok((Ca::load(dir)?, false)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// DIR/ca.crt.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// DIR/ca.key.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// The CA certificate, PEM (as in ca.crt).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the DER, `AA:BB:..` uppercase hex.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.cert_der);
        let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        hex.join(":")
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The subject, e.g. `CN=capagent CA (host), O=capagent`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// An RSA CA (`ca init --rsa`): its leaves have an RSA key too.
    pub fn is_rsa(&self) -> bool {
        self.rsa
    }

    /// A leaf for these names, signed by the CA, chain [leaf, ca]; cached per LeafSpec
    /// (bounded, [`LEAF_CACHE`], least recently used out); one leaf key per process (ECDSA
    /// P-256; RSA 2048 under an RSA CA); valid from a day ago for a year, never past the
    /// CA's not_after.
    pub fn leaf(&self, spec: &LeafSpec) -> Result<Arc<CertifiedKey>, CaError> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = leaves.get(spec) {
            return Ok(hit.clone());
        }
        let issued = Arc::new(self.issue(spec)?);
        leaves.put(spec.clone(), issued.clone());
        Ok(issued)
    }

    fn issue(&self, spec: &LeafSpec) -> Result<CertifiedKey, CaError> {
        if spec.dns.is_empty() && spec.ips.is_empty() {
            return Err(CaError::NoNames);
        }
        let leaf_key = leaf_key(self.rsa)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = &spec.common_name {
            dn.push(DnType::CommonName, cn.as_str());
        }
        params.distinguished_name = dn;
        for name in &spec.dns {
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Name {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params
            .subject_alt_names
            .extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if self.rsa {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).max(self.not_before).into();
        params.not_after = (now + LEAF_VALIDITY).min(self.not_after).into();
        let cert = params.signed_by(&leaf_key.key, &self.issuer)?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            leaf_key.signer.clone(),
        ))
    }

    /// [`Ca::leaf`] as PEM text, for servers that are not rustls (`openssl s_server`, tests):
    /// the chain (leaf, then CA) and the process's leaf key (PKCS#8).
    pub fn leaf_pem(&self, spec: &LeafSpec) -> Result<(String, String), CaError> {
        let leaf = self.leaf(spec)?;
        let chain: String = leaf.cert.iter().map(|c| pem("CERTIFICATE", c)).collect();
        Ok((chain, leaf_key(self.rsa)?.key.serialize_pem()))
    }

    /// The number of leaves cached (tests).
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.leaves.lock().unwrap().len()
    }

    #[cfg(test)]
    fn set_cache_capacity(&self, cap: usize) {
        self.leaves
            .lock()
            .unwrap()
            .resize(NonZeroUsize::new(cap).unwrap());
    }
}

fn io_err(path: &Path, source: io::Error) -> CaError {
    CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new file (never over an existing one) with this mode.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(path, e))
}

/// A PEM block (RFC 7468: base64 in lines of 64).
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER of the first CERTIFICATE block of a PEM text.
fn rustls_pem_cert(pem: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| format!("no PEM certificate: {e:?}"))
}

/// 16 random bytes, positive (top bit clear) and never all zero.
fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::KeyGen("the system's random source failed".to_string()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A fresh RSA 2048 key for rcgen (signing with SHA-256).
fn rsa_key_pair() -> Result<KeyPair, CaError> {
    let der = rsa_pkcs8()?;
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der),
        &rcgen::PKCS_RSA_SHA256,
    )?)
}

fn rsa_pkcs8() -> Result<Vec<u8>, CaError> {
    use rsa::pkcs8::EncodePrivateKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .map_err(|e| CaError::KeyGen(e.to_string()))?;
    let doc = key
        .to_pkcs8_der()
        .map_err(|e| CaError::KeyGen(e.to_string()))?;
    Ok(doc.as_bytes().to_vec())
}

/// The process's leaf key of this type, made on first use.
fn leaf_key(rsa: bool) -> Result<&'static LeafKey, CaError> {
    let (cell, alg): (_, &'static SignatureAlgorithm) = if rsa {
        (&LEAF_KEY_RSA, &rcgen::PKCS_RSA_SHA256)
    } else {
        (&LEAF_KEY_EC, &rcgen::PKCS_ECDSA_P256_SHA256)
    };
    let made = cell.get_or_init(|| {
        let der = if rsa {
            rsa_pkcs8().map_err(|e| e.to_string())?
        } else {
            KeyPair::generate_for(alg)
                .map_err(|e| e.to_string())?
                .serialize_der()
        };
        let pkcs8 = PrivatePkcs8KeyDer::from(der);
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, alg).map_err(|e| e.to_string())?;
        let signer = if rsa {
            rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(pkcs8))
        } else {
            rustls::crypto::ring::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(pkcs8))
        }
        .map_err(|e| e.to_string())?;
        Ok(LeafKey { key, signer })
    });
    made.as_ref().map_err(|e| CaError::KeyGen(e.clone()))
}

#[cfg(test)]
mod tests;
