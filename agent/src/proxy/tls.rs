//! `--tls` on a relayed connection: when the client's first bytes are a TLS ClientHello
//! (peeked, nothing consumed), the connection goes through the interceptor
//! ([`crate::mitm::intercept`]) and its plaintext is relayed and recorded; anything else is
//! relayed as without `--tls`, but watched for a ClientHello mid-stream
//! ([`super::starttls`]). The connection's `open` record waits for the outcome, so that it
//! says what each TLS side negotiated (or why interception failed). A ClientHello
//! that [`crate::mitm::passthrough`] lets through (a `--tls-passthrough` pattern, a client
//! that rejected capagent's certificate before) is relayed untouched, and its `open` record
//! says why.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use super::raw_tls::{Leg, Tap};
use super::relay::{self, RelayError, Relayed};
use super::{Conn, Ctx};
use crate::mitm::intercept::Interceptor;
use crate::mitm::passthrough;
use crate::model::TlsIntercepted;
use crate::tls_hello::{client_hello, is_client_hello, may_start_client_hello, record_len};

pub use super::record::Opening;

/// How long to wait for the rest of the first six bytes once some that may start a
/// ClientHello are in (a client writes its ClientHello at once; this only bounds a stall).
const PEEK_AGAIN: Duration = Duration::from_millis(5);

/// Whether `client` starts with a ClientHello: false as soon as its first bytes cannot start
/// one, it closes, or `server` speaks first (a protocol whose server greets, such as SMTP);
/// false too when the first bytes stop short of six for `patience` (then relayed as they
/// are).
pub async fn client_starts_tls(client: &TcpStream, server: &TcpStream, patience: Duration) -> bool {
    let mut buf = [0u8; 6];
    let mut stalled = Duration::ZERO;
    loop {
        tokio::select! {
            biased;
            r = client.peek(&mut buf) => match r {
                Ok(n) if n == buf.len() => return is_client_hello(&buf),
                Ok(0) | Err(_) => return false,
                Ok(n) if !may_start_client_hello(&buf[..n]) => return false,
                // A ClientHello cut before its sixth byte: wait for the rest.
                Ok(_) if stalled >= patience => return false,
                Ok(_) => {
                    tokio::time::sleep(PEEK_AGAIN).await;
                    stalled += PEEK_AGAIN;
                }
            },
            _ = server.readable() => return false,
        }
    }
}

/// Opens `conn` ([`Conn::open`], or [`Conn::open_tls`]) and relays `client` and `server`:
/// intercepting TLS when the proxy has `--tls` and the client starts with a ClientHello
/// (`host`: the name or address the client asked for, for when it sends no SNI), or later
/// (STARTTLS, [`super::starttls::relay`]). A failed interception is logged and recorded (its
/// reason in the `open` record) and ends as an `EPROTO` error of the side that failed.
pub async fn open_and_relay(
    ctx: &Ctx,
    conn: &Conn,
    o: Opening<'_>,
    host: &str,
    client: &mut TcpStream,
    server: &mut TcpStream,
) -> Result<Relayed, RelayError> {
    let Some(mitm) = &ctx.tls else {
        o.open(conn).await;
        return relay::relay(client, server, conn, ctx.limits.idle).await;
    };
    if !client_starts_tls(client, server, ctx.limits.handshake).await {
        o.open(conn).await;
        // The client may still start TLS mid-stream (STARTTLS).
        return super::starttls::relay(ctx, mitm, conn, &o, host, client, server).await;
    }
    if let Some(info) = passes_through(mitm, conn, host, client, server, ctx.limits.handshake).await
    {
        o.open_tls(conn, Some(info)).await;
        return relay::relay(client, server, conn, ctx.limits.idle).await;
    }
    let raw = conn.tap_raw_sockets(client, server);
    let client = &mut Tap::new(&mut *client, Leg::Client, raw.clone());
    let server = &mut Tap::new(&mut *server, Leg::Server, raw);
    // An HTTP proxy's tunnel answers a server it cannot reach over TLS in HTTP (a 502
    // saying why, inside the client's TLS); the other proxies with an alert.
    let answer = ctx.tls_answer.map(|f| {
        let target = o.target.clone();
        move |why: &str| f(&target, why)
    });
    let answer = answer
        .as_ref()
        .map(|f| f as &crate::mitm::intercept::Answer);
    let intercepted = tokio::time::timeout(
        ctx.limits.handshake,
        mitm.intercept_answering(&mut *client, &mut *server, host, answer),
    )
    .await;
    let (side, reason, info) = match intercepted {
        Ok(Ok(mut i)) => {
            o.open_tls(conn, Some(i.info)).await;
            return relay::relay_streams(&mut i.client, &mut i.server, conn, ctx.limits.idle).await;
        }
        Ok(Err(failed)) => {
            use crate::mitm::intercept::MitmError::ClientRejected;
            if matches!(&failed.error, ClientRejected(e) if passthrough::is_rejection(e)) {
                remember_rejection(mitm, conn, host, &failed.info);
            }
            let side = match failed.error {
                crate::mitm::intercept::MitmError::ClientRejected(_)
                | crate::mitm::intercept::MitmError::ClientIo(_)
                | crate::mitm::intercept::MitmError::Hello(_) => "client",
                _ => "target",
            };
            (side, failed.error.to_string(), failed.info)
        }
        Err(_) => {
            let reason = format!(
                "the TLS handshakes took longer than {:?} (--handshake-timeout)",
                ctx.limits.handshake
            );
            let info = crate::model::TlsIntercepted {
                error: Some(reason.clone()),
                ..Default::default()
            };
            ("target", reason, info)
        }
    };
    tracing::warn!("tls: {} -> {}: {reason}", conn.client(), o.target);
    o.open_tls(conn, Some(info)).await;
    Err(RelayError::Io {
        side,
        source: io::Error::from_raw_os_error(libc::EPROTO),
    })
}

/// The `open` record's `tls` of a connection `mitm` passes through untouched, or None
/// (intercept it). The SNI is read from the ClientHello (peeked, nothing consumed) only
/// when a decision may need it.
async fn passes_through(
    mitm: &Interceptor,
    conn: &Conn,
    host: &str,
    client: &TcpStream,
    server: &TcpStream,
    patience: Duration,
) -> Option<TlsIntercepted> {
    let sni = match mitm.passthrough().wants_sni() {
        true => peek_sni(client, patience).await,
        false => None,
    };
    let target = server.peer_addr().ok().map(|a| a.ip());
    mitm.passthrough_info(conn.client().ip(), sni, host, target, "tls")
}

/// The client rejected capagent's certificate (it does not trust the CA, or pins the
/// real certificate): its next connections to that host pass through; said once.
pub fn remember_rejection(mitm: &Interceptor, conn: &Conn, host: &str, info: &TlsIntercepted) {
    let name = info.client.sni.as_deref().unwrap_or(host);
    mitm.remember_rejection(conn.client().ip(), name, "tls");
}

/// The SNI of the ClientHello `client` starts with, peeked (nothing consumed): its whole
/// first record is waited for, up to `patience`; None without one.
pub async fn peek_sni(client: &TcpStream, patience: Duration) -> Option<String> {
    let mut buf = vec![0u8; 5 + (1 << 14) + 2048];
    let mut stalled = Duration::ZERO;
    loop {
        let n = client.peek(&mut buf).await.ok()?;
        let have = &buf[..n];
        match record_len(have) {
            Some(len) if n >= len => return client_hello(&have[..len])?.sni,
            _ if n == 0 || stalled >= patience => return client_hello(have)?.sni,
            _ => {
                tokio::time::sleep(PEEK_AGAIN).await;
                stalled += PEEK_AGAIN;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_hello::tests::CURL_HELLO;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap());
        let (a, b) = tokio::join!(a, l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn what_the_first_bytes_tell() {
        let long = Duration::from_secs(10);
        // A ClientHello: yes, and nothing of it consumed.
        let (mut app, mut client) = pair().await;
        let (_target, server) = pair().await;
        app.write_all(CURL_HELLO).await.unwrap();
        assert!(client_starts_tls(&client, &server, long).await);
        let mut first = vec![0u8; CURL_HELLO.len()];
        client.read_exact(&mut first).await.unwrap();
        assert_eq!(first, CURL_HELLO);
        // Plain bytes: no.
        let (mut app, client) = pair().await;
        app.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(!client_starts_tls(&client, &server, long).await);
        // The server speaks first: no, without waiting for the client.
        let (_app, client) = pair().await;
        let (mut target, server) = pair().await;
        target.write_all(b"220 ready\r\n").await.unwrap();
        assert!(!client_starts_tls(&client, &server, long).await);
        // Three bytes that may start one, then nothing: no, after the patience.
        let (mut app, client) = pair().await;
        let (_target, server) = pair().await;
        app.write_all(&CURL_HELLO[..3]).await.unwrap();
        assert!(!client_starts_tls(&client, &server, Duration::from_millis(20)).await);
        // The client closes: no.
        let (app, client) = pair().await;
        drop(app);
        assert!(!client_starts_tls(&client, &server, long).await);
    }

    #[tokio::test]
    async fn the_sni_is_peeked() {
        let long = Duration::from_secs(10);
        let (mut app, mut client) = pair().await;
        // In two writes (the rest of the record is waited for when the peek sees part).
        app.write_all(&CURL_HELLO[..100]).await.unwrap();
        let sni = tokio::spawn(async move {
            let sni = peek_sni(&client, long).await;
            let mut first = vec![0u8; CURL_HELLO.len()];
            client.read_exact(&mut first).await.unwrap();
            (sni, first)
        });
        app.write_all(&CURL_HELLO[100..]).await.unwrap();
        let (sni, first) = sni.await.unwrap();
        assert_eq!(sni.as_deref(), Some("localhost"));
        assert_eq!(first, CURL_HELLO, "nothing consumed");
        // Cut short and stalled: what the first bytes tell (no SNI).
        let (mut app, client) = pair().await;
        app.write_all(&CURL_HELLO[..100]).await.unwrap();
        assert_eq!(peek_sni(&client, Duration::from_millis(20)).await, None);
    }
}
