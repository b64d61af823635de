//! The two ends of the interceptor apart, for a proxy that speaks HTTP itself (`proxy
//! reverse --tls`): the client's TLS is terminated before any server is chosen (the server
//! depends on each request's Host), with a leaf for the name the client asked for; each
//! server connection is made over TLS afterwards. Both offer only `http/1.1`: the reverse
//! proxy parses HTTP/1.1 (tunnels, which relay bytes, mirror h2 instead).

use std::net::IpAddr;

use std::io;

use rustls::server::Accepted;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::{StartHandshake, TlsConnector, client, server};

use super::{Interceptor, MitmError, leaf_spec, leg, read_hello};
use crate::mitm::upstream;
use crate::model::TlsLeg;

/// The one application protocol offered on both ends.
const HTTP11: &[u8] = b"http/1.1";

/// A server connection made over TLS.
pub struct ServerTls<S> {
    pub stream: client::TlsStream<S>,
    pub leg: TlsLeg,
    /// The server certificate's subject, when it sent one.
    pub cert: Option<String>,
}

/// One end's TLS failed: why, and what its handshake learnt until then.
#[derive(Debug)]
pub struct LegFailed {
    pub error: MitmError,
    pub leg: TlsLeg,
}

fn failed(error: MitmError, leg: &TlsLeg) -> Box<LegFailed> {
    Box::new(LegFailed {
        error,
        leg: leg.clone(),
    })
}

impl Interceptor {
    /// Terminates the TLS connection `client` opens (its ClientHello not read yet) with a
    /// leaf for its SNI, else for `local` (the address it reached); offers `http/1.1` only.
    /// The returned leg says what the client negotiated (its SNI included).
    pub async fn accept_http<C>(
        &self,
        mut client: C,
        local: IpAddr,
    ) -> Result<(server::TlsStream<C>, TlsLeg), Box<LegFailed>>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let mut info = TlsLeg::default();
        let accepted = read_hello(&mut client)
            .await
            .map_err(|e| failed(e, &info))?;
        let hello = accepted.client_hello();
        info.sni = hello.server_name().map(str::to_string);
        let offers_http11 = hello.alpn().is_some_and(|mut p| p.any(|p| p == HTTP11));
        let spec = leaf_spec(info.sni.as_deref(), &local.to_string(), None);
        let cert = self.ca.leaf(&spec).map_err(|source| {
            let mut names = spec.dns.clone();
            names.extend(spec.ips.iter().map(IpAddr::to_string));
            failed(MitmError::Leaf { names, source }, &info)
        })?;
        let config = self
            .server_config(cert, offers_http11.then(|| HTTP11.to_vec()))
            .map_err(|e| failed(MitmError::Upstream(e.into()), &info))?;
        let stream = StartHandshake::from_parts(accepted, client)
            .into_stream(config)
            .await
            .map_err(|e| failed(MitmError::ClientRejected(e), &info))?;
        let c = stream.get_ref().1;
        leg(
            &mut info,
            c.protocol_version(),
            c.negotiated_cipher_suite(),
            c.alpn_protocol(),
        );
        Ok((stream, info))
    }

    /// A TLS connection over `server` asking for `sni` (else `host`, a name or an address),
    /// verified as [`Interceptor::intercept`] verifies (unless `--insecure`), offering
    /// `http/1.1`.
    pub async fn connect_http<S>(
        &self,
        server: S,
        sni: Option<&str>,
        host: &str,
    ) -> Result<ServerTls<S>, Box<LegFailed>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut info = TlsLeg::default();
        let Some(name) = upstream::server_name(sni, host) else {
            return Err(failed(MitmError::NoName(host.to_string()), &info));
        };
        if let rustls::pki_types::ServerName::DnsName(d) = &name {
            info.sni = Some(d.as_ref().to_string());
        }
        let config = self
            .upstream
            .config(&[HTTP11.to_vec()])
            .map_err(|e| failed(e.into(), &info))?;
        let stream = TlsConnector::from(config)
            .connect(name, server)
            .await
            .map_err(|e| failed(MitmError::Server(e), &info))?;
        let up = stream.get_ref().1;
        leg(
            &mut info,
            up.protocol_version(),
            up.negotiated_cipher_suite(),
            up.alpn_protocol(),
        );
        let cert = up
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| upstream::cert_names(c))
            .map(|c| c.subject);
        Ok(ServerTls {
            stream,
            leg: info,
            cert,
        })
    }

    /// Completes the handshake of a client whose real server could not be reached over TLS
    /// (`accepted`: its ClientHello) with a leaf for the name it asked for (its SNI, else
    /// `host`), offering http/1.1 only when it offered it, and sends it `response` (an HTTP
    /// error saying why), then close_notify. Returns what the client's side negotiated.
    pub(super) async fn answer_client<C>(
        &self,
        accepted: Accepted,
        client: C,
        sni: Option<&str>,
        host: &str,
        alpn: &[Vec<u8>],
        response: &[u8],
    ) -> io::Result<TlsLeg>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let spec = leaf_spec(sni, host, None);
        let cert = self.ca.leaf(&spec).map_err(io::Error::other)?;
        let http11 = alpn.iter().any(|p| p == HTTP11);
        let config = self
            .server_config(cert, http11.then(|| HTTP11.to_vec()))
            .map_err(io::Error::other)?;
        let mut stream = StartHandshake::from_parts(accepted, client)
            .into_stream(config)
            .await?;
        let mut info = TlsLeg {
            sni: sni.map(str::to_string),
            ..TlsLeg::default()
        };
        let c = stream.get_ref().1;
        leg(
            &mut info,
            c.protocol_version(),
            c.negotiated_cipher_suite(),
            c.alpn_protocol(),
        );
        stream.write_all(response).await?;
        stream.flush().await?;
        stream.shutdown().await?;
        Ok(info)
    }
}
