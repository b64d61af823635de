//! The interceptor: a client's TLS connection is terminated with a leaf certificate of
//! capagent's CA and re-encrypted to the real server.
//!
//! Upstream first: the client's ClientHello is read (rustls' [`Acceptor`]: its SNI and ALPN
//! list), the real server is asked for the same name and protocols and verified (unless
//! `--insecure`); then the client is answered with a leaf carrying the names of the server's
//! certificate (plus the SNI) and offered only the protocol the server chose, so h2 stays
//! h2 and http/1.1 stays http/1.1 (but with HTTP rules, [`Interceptor::http1_only`], the
//! server is not offered h2). When the server cannot be reached over TLS (its
//! certificate does not verify, its handshake fails), the client gets a fatal
//! `handshake_failure` alert instead of a certificate (an HTTP proxy's tunnel: capagent's
//! certificate and a `502 Bad Gateway` saying why, [`Interceptor::intercept_answering`]),
//! and the reason is returned for the records.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};

use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::{StartHandshake, TlsConnector, client, server};

use super::ca::{Ca, CaError, LeafSpec};
use super::keylog::KeyLogFile;
use super::options::TlsOptions;
use super::passthrough::Passthrough;
use super::upstream::{self, Upstream, UpstreamError};
use crate::model::{TlsIntercepted, TlsLeg};

mod terminate;
pub use terminate::{LegFailed, ServerTls};

/// A fatal `handshake_failure` alert record (TLS 1.2 record version, as TLS 1.3 sends it
/// too before the handshake): what the client gets when the real server cannot be reached
/// over TLS. rustls sends alerts only from a connection, which there is none of then.
const HANDSHAKE_FAILURE_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 40];
/// Largest ClientHello read (several records of one; rustls' own limit is about this).
const MAX_HELLO: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MitmError {
    #[error("the CA: {0}")]
    Ca(#[from] CaError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The key log file could not be opened (the cause is in the message, not a source:
    /// shown once under `{:#}`).
    #[error("--keylog {}: {error}", path.display())]
    KeyLog { path: PathBuf, error: io::Error },
    #[error("reading the client's ClientHello: {0}")]
    ClientIo(#[source] io::Error),
    #[error("the client's ClientHello: {0}")]
    Hello(#[source] rustls::Error),
    #[error("no name to ask the server for (no SNI, and {0:?} is no name or address)")]
    NoName(String),
    #[error("server: {0}")]
    Server(#[source] io::Error),
    #[error("a certificate for {names:?}: {source}")]
    Leaf {
        names: Vec<String>,
        #[source]
        source: CaError,
    },
    /// The client's handshake with capagent's certificate failed: it does not trust the CA
    /// (an unknown-CA or bad-certificate alert), pins the real certificate, or went away.
    #[error("the client rejected capagent's certificate or handshake: {0}")]
    ClientRejected(#[source] io::Error),
}

/// Both sides of an intercepted connection, in plaintext, and what each negotiated.
pub struct Intercepted<C, S> {
    pub client: server::TlsStream<C>,
    pub server: client::TlsStream<S>,
    pub info: TlsIntercepted,
}

/// A failed interception: why, and what was learnt up to then (`info.error` says why too).
#[derive(Debug)]
pub struct Failed {
    pub error: MitmError,
    pub info: TlsIntercepted,
}

/// What a client whose real server cannot be reached over TLS is sent inside its TLS (an
/// HTTP proxy's `502 Bad Gateway`), made from the reason.
pub type Answer = dyn Fn(&str) -> Vec<u8> + Sync;

/// The interceptor every connection of a proxy shares.
pub struct Interceptor {
    ca: Arc<Ca>,
    upstream: Upstream,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// `--keylog` and `--pcap-tls raw`: the secrets of both legs (the client's session with
    /// capagent and capagent's with the server) go into one file and/or to the recorder.
    key_log: Option<Arc<KeyLogFile>>,
    /// The connections relayed untouched (`--tls-passthrough`, clients that rejected
    /// capagent's certificate).
    passthrough: Passthrough,
    /// `h2` is left out of the ALPN lists offered to servers ([`Interceptor::http1_only`]);
    /// `said`: whether the log said so yet.
    http1_only: bool,
    said: std::sync::atomic::AtomicBool,
}

impl Interceptor {
    /// Loads the CA from `--ca-dir` (or its default directory), creating it when missing
    /// (and saying so on stderr), and the roots for the real servers.
    pub fn new(opts: &TlsOptions) -> Result<Interceptor, MitmError> {
        Interceptor::with_secrets(opts, None)
    }

    /// [`Interceptor::new`], the secrets of both legs also sent, one key log line at a
    /// time, to `secrets` (`--pcap-tls raw`: the recorder puts them into the pcapng before
    /// the packets they decrypt), with or without `--keylog`.
    pub fn with_secrets(
        opts: &TlsOptions,
        secrets: Option<mpsc::Sender<String>>,
    ) -> Result<Interceptor, MitmError> {
        let dir: PathBuf = opts.ca_dir.clone().unwrap_or_else(Ca::default_dir);
        let (ca, created) = Ca::load_or_init(&dir)?;
        if created {
            eprintln!(
                "capagent: created a CA in {} (clients must trust {} to accept intercepted connections; `capagent ca show` tells how)",
                dir.display(),
                ca.cert_path().display()
            );
        }
        let mut upstream = Upstream::new(opts.upstream_ca.as_deref(), opts.insecure)?;
        let key_log = match (&opts.keylog, secrets) {
            (None, None) => None,
            (path, secrets) => {
                let log = match path {
                    Some(path) => KeyLogFile::create(path).map_err(|error| MitmError::KeyLog {
                        path: path.clone(),
                        error,
                    })?,
                    None => KeyLogFile::in_memory(),
                };
                if let Some(tx) = secrets {
                    log.add_tap(tx);
                }
                upstream = upstream.with_key_log(log.clone());
                Some(log)
            }
        };
        Ok(Interceptor {
            ca: Arc::new(ca),
            upstream,
            provider: upstream::provider(),
            key_log,
            passthrough: Passthrough::new(opts.passthrough.clone()),
            http1_only: false,
            said: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// With `yes` (HTTP rules are active: they apply to HTTP/1.x only), servers are offered
    /// the client's ALPN list without `h2`, so that a server that would pick HTTP/2 picks
    /// `http/1.1` and both legs speak HTTP/1.1 (the client is offered what the server chose).
    /// Said once in the log, at the first list it changes.
    pub fn http1_only(mut self, yes: bool) -> Interceptor {
        self.http1_only = yes;
        self
    }

    /// The ALPN list offered to the server for the client's `alpn`.
    fn offered(&self, mut alpn: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        if self.http1_only && alpn.iter().any(|p| p == b"h2") {
            alpn.retain(|p| p != b"h2");
            if !self.said.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "--tls: HTTP rules are active (they apply to HTTP/1.x only): servers are offered the clients' ALPN lists without h2, so intercepted HTTP is HTTP/1.1"
                );
            }
        }
        alpn
    }

    /// Which connections are relayed untouched.
    pub fn passthrough(&self) -> &Passthrough {
        &self.passthrough
    }

    /// The `tls` of the `open` record of a ClientHello from `client` that is relayed
    /// untouched (a `--tls-passthrough` pattern matches its SNI, else `host`, or `target`;
    /// or the client rejected capagent's certificate for that name before), or None
    /// (intercept it). Shared by every proxy that meets a ClientHello (at the start of a
    /// connection, mid-stream, or in `proxy reverse`).
    pub fn passthrough_info(
        &self,
        client: IpAddr,
        sni: Option<String>,
        host: &str,
        target: Option<IpAddr>,
        what: &str,
    ) -> Option<TlsIntercepted> {
        let name = sni.as_deref().unwrap_or(host);
        let now = std::time::Instant::now();
        let reason = self.passthrough.reason(client, Some(name), target, now)?;
        tracing::debug!("{what}: {client} -> {name}: passed through ({reason})");
        let mut info = TlsIntercepted {
            passthrough: Some(reason),
            ..Default::default()
        };
        info.client.sni = sni;
        Some(info)
    }

    /// `client` rejected capagent's certificate for `name` (its SNI, else the host it
    /// asked for): its next connections to that name pass through; said once.
    pub fn remember_rejection(&self, client: IpAddr, name: &str, what: &str) {
        let p = &self.passthrough;
        if p.remember(client, name, std::time::Instant::now()) {
            tracing::warn!(
                "{what}: {client} rejected capagent's certificate for {name}: passing its connections to {name} through (untouched) for {} min",
                p.pinned_for().as_secs() / 60
            );
        }
    }

    /// Intercepts the TLS connection `client` opens (its ClientHello not read yet) towards
    /// `server`, a connected stream to the real server; `host` is the CONNECT/SOCKS host or
    /// the target address, asked for when the client sent no SNI.
    pub async fn intercept<C, S>(
        &self,
        client: C,
        server: S,
        host: &str,
    ) -> Result<Intercepted<C, S>, Box<Failed>>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.intercept_answering(client, server, host, None).await
    }

    /// [`Interceptor::intercept`], but when the real server cannot be reached over TLS and
    /// `answer` is given (an HTTP proxy's CONNECT tunnel), the client's handshake is
    /// completed with a leaf for the name it asked for and it gets `answer(reason)` (a
    /// `502 Bad Gateway` saying why) instead of an alert.
    pub async fn intercept_answering<C, S>(
        &self,
        mut client: C,
        server: S,
        host: &str,
        answer: Option<&Answer>,
    ) -> Result<Intercepted<C, S>, Box<Failed>>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut info = TlsIntercepted::default();
        let fail = |error: MitmError, mut info: TlsIntercepted| {
            info.error = Some(error.to_string());
            Box::new(Failed { error, info })
        };
        // 1. The ClientHello.
        let accepted = match read_hello(&mut client).await {
            Ok(a) => a,
            Err(e) => return Err(fail(e, info)),
        };
        let hello = accepted.client_hello();
        let sni = hello.server_name().map(str::to_string);
        let alpn: Vec<Vec<u8>> = hello
            .alpn()
            .map(|protos| protos.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        info.client.sni = sni.clone();
        // 2. The real server, with that name and those protocols.
        let Some(name) = upstream::server_name(sni.as_deref(), host) else {
            let _ = client.write_all(&HANDSHAKE_FAILURE_ALERT).await;
            return Err(fail(MitmError::NoName(host.to_string()), info));
        };
        // The SNI sent: a name (an address is asked for without one).
        info.server.sni = match &name {
            rustls::pki_types::ServerName::DnsName(d) => Some(d.as_ref().to_string()),
            _ => None,
        };
        let config = match self.upstream.config(&self.offered(alpn.clone())) {
            Ok(c) => c,
            Err(e) => return Err(fail(e.into(), info)),
        };
        let server = match TlsConnector::from(config).connect(name, server).await {
            Ok(s) => s,
            Err(e) => {
                let error = MitmError::Server(e);
                match answer {
                    Some(answer) => {
                        let response = answer(&error.to_string());
                        let answered = self
                            .answer_client(accepted, client, sni.as_deref(), host, &alpn, &response)
                            .await;
                        match answered {
                            Ok(leg) => info.client = leg,
                            Err(e) => tracing::debug!("tls: answering the client: {e}"),
                        }
                    }
                    None => {
                        let _ = client.write_all(&HANDSHAKE_FAILURE_ALERT).await;
                        let _ = client.shutdown().await;
                    }
                }
                return Err(fail(error, info));
            }
        };
        let up = server.get_ref().1;
        leg(
            &mut info.server,
            up.protocol_version(),
            up.negotiated_cipher_suite(),
            up.alpn_protocol(),
        );
        let cert = up
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| upstream::cert_names(c));
        info.server_cert = cert.as_ref().map(|c| c.subject.clone());
        let chosen = up.alpn_protocol().map(<[u8]>::to_vec);
        // 3. A leaf with the server's names (and the name the client asked for).
        let spec = leaf_spec(sni.as_deref(), host, cert.as_ref());
        let leaf = match self.ca.leaf(&spec) {
            Ok(l) => l,
            Err(source) => {
                let _ = client.write_all(&HANDSHAKE_FAILURE_ALERT).await;
                let mut names = spec.dns.clone();
                names.extend(spec.ips.iter().map(IpAddr::to_string));
                return Err(fail(MitmError::Leaf { names, source }, info));
            }
        };
        // 4. The client, offered only the protocol the server chose.
        let config = match self.server_config(leaf, chosen) {
            Ok(c) => c,
            Err(e) => return Err(fail(MitmError::Upstream(e.into()), info)),
        };
        let client = match StartHandshake::from_parts(accepted, client)
            .into_stream(config)
            .await
        {
            Ok(c) => c,
            Err(e) => return Err(fail(MitmError::ClientRejected(e), info)),
        };
        let down = client.get_ref().1;
        leg(
            &mut info.client,
            down.protocol_version(),
            down.negotiated_cipher_suite(),
            down.alpn_protocol(),
        );
        Ok(Intercepted {
            client,
            server,
            info,
        })
    }

    fn server_config(
        &self,
        leaf: Arc<CertifiedKey>,
        alpn: Option<Vec<u8>>,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Leaf(leaf)));
        config.alpn_protocols = alpn.into_iter().collect();
        if let Some(log) = &self.key_log {
            config.key_log = log.clone();
        }
        Ok(Arc::new(config))
    }
}

/// The one leaf of a connection.
#[derive(Debug)]
struct Leaf(Arc<CertifiedKey>);

impl ResolvesServerCert for Leaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Reads the client's ClientHello into rustls' [`Acceptor`] (the stream is not read past
/// it: the client waits for the server's answer).
async fn read_hello<C: AsyncRead + Unpin>(
    client: &mut C,
) -> Result<rustls::server::Accepted, MitmError> {
    let mut acceptor = Acceptor::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut read = 0usize;
    loop {
        let n = client.read(&mut buf).await.map_err(MitmError::ClientIo)?;
        if n == 0 {
            return Err(MitmError::ClientIo(io::ErrorKind::UnexpectedEof.into()));
        }
        read += n;
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            acceptor.read_tls(&mut chunk).map_err(MitmError::ClientIo)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(accepted),
            Ok(None) if read < MAX_HELLO => {}
            Ok(None) => {
                return Err(MitmError::Hello(rustls::Error::General(
                    "ClientHello too large".into(),
                )));
            }
            Err((e, _alert)) => return Err(MitmError::Hello(e)),
        }
    }
}

/// Sets what one side negotiated.
fn leg(
    leg: &mut TlsLeg,
    version: Option<ProtocolVersion>,
    suite: Option<rustls::SupportedCipherSuite>,
    alpn: Option<&[u8]>,
) {
    leg.version = version.map(version_name);
    leg.cipher = suite.and_then(|s| s.suite().as_str().map(str::to_string));
    leg.alpn = alpn.map(|a| String::from_utf8_lossy(a).into_owned());
}

/// `TLSv1.3`, `TLSv1.2` (as OpenSSL and Wireshark write them).
fn version_name(v: ProtocolVersion) -> String {
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    }
}

/// The names of the leaf: the server certificate's SAN names (DNS and IP), plus the name
/// the client asked for (its SNI, else `host`) when the certificate does not list it as is;
/// CN the SNI, else the certificate's CN or first name.
pub fn leaf_spec(sni: Option<&str>, host: &str, cert: Option<&upstream::CertNames>) -> LeafSpec {
    let mut spec = LeafSpec {
        common_name: None,
        dns: cert.map(|c| c.dns.clone()).unwrap_or_default(),
        ips: cert.map(|c| c.ips.clone()).unwrap_or_default(),
    };
    let asked = sni.unwrap_or(host);
    let asked = asked
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(asked);
    match asked.parse::<IpAddr>() {
        Ok(ip) => {
            if !spec.ips.contains(&ip) {
                spec.ips.push(ip);
            }
        }
        Err(_) => {
            if !asked.is_empty() && !spec.dns.iter().any(|d| d.eq_ignore_ascii_case(asked)) {
                spec.dns.push(asked.to_string());
            }
        }
    }
    spec.common_name = sni
        .map(str::to_string)
        .or_else(|| cert.and_then(|c| c.common_name.clone()))
        .or_else(|| spec.dns.first().cloned());
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_names() {
        let cert = upstream::CertNames {
            subject: "CN=example.org".into(),
            common_name: Some("example.org".into()),
            dns: vec!["example.org".into(), "*.example.org".into()],
            ips: vec![],
        };
        let s = leaf_spec(Some("www.example.org"), "10.0.0.1", Some(&cert));
        assert_eq!(s.common_name.as_deref(), Some("www.example.org"));
        assert_eq!(s.dns, ["example.org", "*.example.org", "www.example.org"]);
        assert!(s.ips.is_empty());
        let s = leaf_spec(Some("EXAMPLE.org"), "10.0.0.1", Some(&cert));
        assert_eq!(s.dns, ["example.org", "*.example.org"]);
        // No SNI: the address the client reached, the server's names as they are.
        let s = leaf_spec(None, "10.0.0.1", Some(&cert));
        assert_eq!(s.common_name.as_deref(), Some("example.org"));
        assert_eq!(s.ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        let s = leaf_spec(None, "[::1]", None);
        assert_eq!(s.ips, ["::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.common_name, None);
    }
}
