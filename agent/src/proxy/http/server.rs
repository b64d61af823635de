//! The HTTP forward proxy (`capagent proxy http`): clients send absolute-URI requests
//! (`GET http://host/path HTTP/1.1`) or CONNECT; capagent checks the proxy credentials, sends
//! each request on to its server (re-using the server connection while the client's requests
//! go to the same host and port) and relays the response; CONNECT opens a tunnel to the
//! allowed ports only.
//!
//! Every error is an HTTP response: 400 (malformed), 403 (CONNECT port not allowed), 407
//! (credentials), 408 (head too slow), 414/431 (too large), 502 (server unreachable or
//! broken), 504 (server timed out).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::body::{self, Framing};
use super::exchange::{Client, Upstream, dial_status, forward_request};
use super::head::RequestHead;
use super::message::{self, Auth, Target as ReqTarget};
use super::stream::Stream;
use crate::model::{Direction, Transport};
use crate::proxy::target::Target;
use crate::proxy::{Ctx, bind_tcp, relay, serve, tls};

/// Process name of the records.
pub const COMM: &str = "http";

/// What `capagent proxy http` was given.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub listen: SocketAddr,
    /// Ports CONNECT may reach.
    pub connect_ports: Vec<u16>,
    /// `USER:PASS` required in Proxy-Authorization (Basic).
    pub auth: Option<String>,
}

/// Binds and serves until the runtime stops.
pub async fn run(opts: HttpOptions, mut ctx: Ctx) -> anyhow::Result<()> {
    let listener = bind_tcp("http proxy", opts.listen).await?;
    ctx.tls_answer = Some(bad_gateway);
    let opts = Arc::new(opts);
    serve("http proxy", listener, ctx, move |stream, peer, ctx| {
        let opts = opts.clone();
        async move { handle(stream, peer, ctx, &opts).await }
    })
    .await;
    Ok(())
}

/// What a CONNECT client gets (inside capagent's TLS) when `target` cannot be reached over
/// TLS: `502 Bad Gateway` saying why (`--tls`, [`crate::proxy::tls`]).
fn bad_gateway(target: &str, why: &str) -> Vec<u8> {
    message::error_response(502, &format!("{target}: TLS: {why}"), &[], true)
}

/// A host from a request target as a dial target.
pub fn target_of(host: &str, port: u16) -> Target {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Target::ip(SocketAddr::new(ip, port)),
        Err(_) => Target::name(host, port),
    }
}

/// Serves one client connection: its requests in order (pipelined ones included).
pub async fn handle(stream: TcpStream, peer: SocketAddr, ctx: Ctx, opts: &HttpOptions) {
    let mut client = Client::new("http", Stream::Tcp(stream), peer);
    let mut up: Option<Upstream> = None;
    while let Some(head) = client.next_request(&ctx.limits).await {
        if let Some(cred) = &opts.auth {
            let auth = message::check_basic(&head.headers, cred);
            if auth != Auth::Ok {
                // Keep the connection when no body follows, so the client can retry on it.
                let close = !matches!(body::request_framing(&head), Ok(Framing::Empty))
                    || !message::request_keep_alive(&head);
                tracing::info!(
                    "http: {peer}: 407: {} proxy credentials for {} {}",
                    if auth == Auth::Missing { "no" } else { "wrong" },
                    head.method,
                    head.target
                );
                let _ = client.send(&message::proxy_auth_required(close)).await;
                if close {
                    break;
                }
                continue;
            }
        }
        if head.method.eq_ignore_ascii_case("CONNECT") {
            if let Some(u) = up.take() {
                u.finish(Ok(())).await;
            }
            connect(client, &head, &ctx, opts).await;
            return;
        }
        if !request(&mut client, &mut up, &head, &ctx).await {
            break;
        }
    }
    if let Some(u) = up {
        u.finish(Ok(())).await;
    }
}

/// One absolute-URI request; false when the client connection ends.
async fn request(
    client: &mut Client,
    up: &mut Option<Upstream>,
    head: &RequestHead,
    ctx: &Ctx,
) -> bool {
    let (host, port, path) = match message::parse_target(&head.method, &head.target) {
        Ok(ReqTarget::Absolute { host, port, path }) => (host, port, path),
        Ok(_) => {
            client
                .fail(
                    400,
                    "a proxy request needs an absolute URI (http://host/path)",
                    true,
                )
                .await;
            return false;
        }
        Err(e) => {
            client.fail(400, &e.to_string(), true).await;
            return false;
        }
    };
    let framing = match body::request_framing(head) {
        Ok(f) => f,
        Err(e) => {
            client.fail(400, &e.to_string(), true).await;
            return false;
        }
    };
    let host_field = message::authority(&host, port, Some(80));
    let up_head =
        message::upstream_request(head, &path, Some(&host_field), framing == Framing::Chunked);
    let target = target_of(&host, port);
    forward_request(
        client, up, &target, head, &up_head, framing, ctx, COMM, "http",
    )
    .await
}

/// A CONNECT tunnel: to an allowed port only; then bytes both ways until both sides end.
async fn connect(mut client: Client, head: &RequestHead, ctx: &Ctx, opts: &HttpOptions) {
    let (host, port) = match message::parse_target(&head.method, &head.target) {
        Ok(ReqTarget::Authority { host, port }) => (host, port),
        _ => {
            client
                .fail(400, "CONNECT needs HOST:PORT as its target", true)
                .await;
            return;
        }
    };
    if !opts.connect_ports.contains(&port) {
        client
            .fail(
                403,
                &format!("CONNECT to port {port} is not allowed (--connect-ports)"),
                true,
            )
            .await;
        return;
    }
    let target = target_of(&host, port);
    let rec = ctx.recorder.conn(COMM, Transport::Tcp, client.peer);
    let dialed = match ctx.dialer.connect(&target).await {
        Ok(d) => d,
        Err(e) => {
            let io = e.io();
            rec.open(
                "http connect",
                Some(client.listen),
                target.to_string(),
                port,
                None,
                Err(&io),
            )
            .await;
            rec.close(Err(&io)).await;
            client.fail(dial_status(&e), &e.to_string(), true).await;
            return;
        }
    };
    // With --tls the open record waits for the client's first bytes (proxy::tls), unless
    // the client already sent some behind its CONNECT (they are relayed as they are).
    let defer_open = ctx.tls.is_some() && client.buf.is_empty();
    if !defer_open {
        rec.open(
            "http connect",
            Some(client.listen),
            target.to_string(),
            port,
            dialed.resolved,
            Ok(()),
        )
        .await;
    }
    let mut server = dialed.stream;
    let established = b"HTTP/1.1 200 Connection Established\r\n\r\n";
    if let Err(e) = client.send(established).await {
        rec.close(Err(&e)).await;
        return;
    }
    // Bytes the client sent right behind its CONNECT belong to the tunnel.
    if !client.buf.is_empty() {
        rec.data_slice(Direction::Send, &client.buf).await;
        if let Err(e) = server.write_all(&client.buf).await {
            rec.close(Err(&e)).await;
            return;
        }
        client.buf.clear();
    }
    // The forward proxy's clients speak plain HTTP to it (TLS only inside the tunnel).
    let Stream::Tcp(client_tcp) = &mut client.stream else {
        return;
    };
    let relayed = if defer_open {
        let opening = tls::Opening {
            proxy: "http connect",
            listen: Some(client.listen),
            target: target.to_string(),
            port,
            resolved: dialed.resolved,
        };
        let host = target.host.name();
        tls::open_and_relay(ctx, &rec, opening, &host, client_tcp, &mut server).await
    } else {
        relay::relay(client_tcp, &mut server, &rec, ctx.limits.idle).await
    };
    match relayed {
        Ok(_) => rec.close(Ok(())).await,
        Err(e) => {
            tracing::info!("http: {}: tunnel to {target}: {e}", client.peer);
            rec.close(Err(&e.io())).await;
        }
    }
}
