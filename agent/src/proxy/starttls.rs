//! STARTTLS on relayed connections (`--tls`): a client that starts TLS mid-stream, after
//! plaintext of its protocol (SMTP's `EHLO`, `STARTTLS`, `220`; IMAP's `STARTTLS`; POP3's
//! `STLS`; XMPP's `<starttls/>`; PostgreSQL's `SSLRequest` and `S`), is intercepted from
//! there as one that starts with TLS is ([`super::tls`]).
//!
//! The plaintext before is relayed and recorded as without `--tls`, but always through user
//! space ([`relay::relay_inspecting`], never the splice path): a client read that begins
//! with a whole ClientHello ends that relay. Those bytes, already read, go to the
//! interceptor first ([`Prefixed`]); then the plaintext inside TLS is relayed and recorded,
//! after a second `open` record of the connection, its proxy named `... starttls` and its
//! `tls` saying what each side negotiated (or why interception failed): where TLS started.
//! Bytes that only look like a ClientHello (a binary protocol's) are relayed as they are.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use super::raw_tls::{Leg, Tap};
use super::record::Opening;
use super::relay::{self, Inspected, RelayError, Relayed};
use super::{Conn, Ctx};
use crate::mitm::intercept::{Interceptor, MitmError};
use crate::mitm::passthrough;
use crate::model::{Direction, TlsIntercepted};

/// Relays `client` and `server` (the connection's `open` record written, as `o` says) until
/// they end, intercepting TLS when the client starts it mid-stream (`host`: the name or
/// address asked for, for a client that sends no SNI). A failed interception is logged and
/// recorded (the reason in the second `open` record) and ends as an `EPROTO` error of the
/// side that failed.
pub async fn relay(
    ctx: &Ctx,
    mitm: &Interceptor,
    conn: &Conn,
    o: &Opening<'_>,
    host: &str,
    client: &mut TcpStream,
    server: &mut TcpStream,
) -> Result<Relayed, RelayError> {
    let inspected =
        relay::relay_inspecting(client, server, conn, ctx.limits.idle, ctx.limits.handshake)
            .await?;
    let (before, hello) = match inspected {
        Inspected::Ended(r) => return Ok(r),
        Inspected::ClientHello { so_far, hello } => (so_far, hello),
    };
    // The second `open` record, where TLS started.
    let proxy = format!("{} starttls", o.proxy);
    let started = Opening {
        proxy: &proxy,
        target: o.target.clone(),
        ..*o
    };
    // Passthrough as for a connection that starts with TLS: the SNI of this ClientHello
    // (else the host asked for) or the target's address matching a `--tls-passthrough`
    // pattern, or a client that rejected capagent's certificate for that name before.
    let sni = crate::tls_hello::client_hello(&hello).and_then(|h| h.sni);
    let target = server.peer_addr().ok().map(|a| a.ip());
    if let Some(info) = mitm.passthrough_info(conn.client().ip(), sni, host, target, "starttls") {
        started.open_tls(conn, Some(info)).await;
        let sent = hello.len() as u64;
        server
            .write_all(&hello)
            .await
            .map_err(|source| RelayError::Io {
                side: "target",
                source,
            })?;
        conn.data(Direction::Send, hello).await;
        let after = relay::relay(client, server, conn, ctx.limits.idle).await?;
        return Ok(Relayed {
            up: before.up + sent + after.up,
            down: before.down + after.down,
        });
    }
    // `--pcap-tls raw`: the legs start at the ClientHello (the plaintext before it is the
    // connection's own stream).
    let raw = conn.tap_raw_sockets(client, server);
    let prefixed = Tap::new(
        Prefixed {
            prefix: hello,
            inner: &mut *client,
        },
        Leg::Client,
        raw.clone(),
    );
    let server = &mut Tap::new(&mut *server, Leg::Server, raw);
    let intercepted = tokio::time::timeout(
        ctx.limits.handshake,
        mitm.intercept(prefixed, &mut *server, host),
    )
    .await;
    let (side, info) = match intercepted {
        Ok(Ok(mut i)) => {
            started.open_tls(conn, Some(i.info)).await;
            let after =
                relay::relay_streams(&mut i.client, &mut i.server, conn, ctx.limits.idle).await?;
            return Ok(Relayed {
                up: before.up + after.up,
                down: before.down + after.down,
            });
        }
        Ok(Err(failed)) => {
            if matches!(&failed.error, MitmError::ClientRejected(e) if passthrough::is_rejection(e))
            {
                let name = failed.info.client.sni.as_deref().unwrap_or(host);
                mitm.remember_rejection(conn.client().ip(), name, "starttls");
            }
            (failed_side(&failed.error), failed.info)
        }
        Err(_) => {
            let info = TlsIntercepted {
                error: Some(format!(
                    "the TLS handshakes took longer than {:?} (--handshake-timeout)",
                    ctx.limits.handshake
                )),
                ..Default::default()
            };
            ("target", info)
        }
    };
    let reason = info.error.clone().unwrap_or_default();
    tracing::warn!("starttls: {} -> {}: {reason}", conn.client(), o.target);
    started.open_tls(conn, Some(info)).await;
    Err(RelayError::Io {
        side,
        source: io::Error::from_raw_os_error(libc::EPROTO),
    })
}

/// Which side an interception failure is the fault of: the client's (its ClientHello, its
/// handshake with capagent's certificate) or the target's.
fn failed_side(e: &MitmError) -> &'static str {
    match e {
        MitmError::ClientRejected(_) | MitmError::ClientIo(_) | MitmError::Hello(_) => "client",
        _ => "target",
    }
}

/// A stream whose first bytes read are `prefix` (bytes already read from `inner`), then
/// `inner`'s; writes go to `inner`. (tokio's `AsyncReadExt::chain` has no write side.)
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        let head = self.prefix.split_to(n);
        buf.put_slice(&head);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn prefixed_reads_the_prefix_first() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut p = Prefixed {
            prefix: Bytes::from_static(b"hello "),
            inner: b,
        };
        a.write_all(b"world").await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        p.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
        p.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
