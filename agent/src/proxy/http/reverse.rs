//! The reverse HTTP proxy (`capagent proxy reverse`): clients talk to capagent as to the
//! server itself; each request goes to the `--route NAME=HOST:PORT` whose NAME is the
//! request's Host (without its port, unless NAME has one too), else to `--to`. The Host
//! field goes on as the client sent it, unless `--rewrite-host` asks for the server's
//! `HOST:PORT`. Hop-by-hop fields are handled as in the forward proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::body::{self, Framing};
use super::exchange::{Client, Upstream, forward_request};
use super::head::{RequestHead, values};
use super::message::{self, Target as ReqTarget};
use super::stream::Stream;
use crate::mitm::intercept::Interceptor;
use crate::mitm::intercept::MitmError::ClientRejected;
use crate::mitm::passthrough;
use crate::model::Transport;
use crate::proxy::raw_tls::{Leg, Tap};
use crate::proxy::relay;
use crate::proxy::target::{Host, Target};
use crate::proxy::tls::peek_sni;
use crate::proxy::{Ctx, bind_tcp, serve};
use crate::tls_hello::{is_client_hello, may_start_client_hello};

/// Process name of the records.
pub const COMM: &str = "reverse";

/// One `--route NAME=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Lowercase host name (or `name:port`) matched against the Host field.
    pub name: String,
    pub to: Target,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad --route {0:?}: expected NAME=HOST:PORT")]
pub struct BadRoute(pub String);

impl std::str::FromStr for Route {
    type Err = BadRoute;

    fn from_str(s: &str) -> Result<Route, BadRoute> {
        let bad = || BadRoute(s.to_string());
        let (name, to) = s.split_once('=').ok_or_else(bad)?;
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
        {
            return Err(bad());
        }
        Ok(Route {
            name,
            to: to.parse().map_err(|_| bad())?,
        })
    }
}

/// What `capagent proxy reverse` was given.
#[derive(Debug, Clone)]
pub struct ReverseOptions {
    pub listen: SocketAddr,
    /// Where requests no route matches go.
    pub to: Option<Target>,
    pub routes: Vec<Route>,
    /// Send `Host: HOST:PORT` of the server instead of the client's Host.
    pub rewrite_host: bool,
}

/// The server a request with this Host field value goes to.
pub fn route<'a>(opts: &'a ReverseOptions, host: Option<&str>) -> Option<&'a Target> {
    if let Some(h) = host {
        let full = h.trim().trim_end_matches('.').to_ascii_lowercase();
        let bare = match message::split_authority(&full, Some(0)) {
            Ok((name, _)) => name,
            Err(_) => full.clone(),
        };
        if let Some(r) = opts
            .routes
            .iter()
            .find(|r| r.name == full || r.name == bare)
        {
            return Some(&r.to);
        }
    }
    opts.to.as_ref()
}

/// `Host` value naming `t`.
fn host_of(t: &Target) -> String {
    match &t.host {
        Host::Name(n) => message::authority(n, t.port, Some(80)),
        Host::Ip(ip) => message::authority(&ip.to_string(), t.port, Some(80)),
    }
}

/// Binds and serves until the runtime stops.
pub async fn run(opts: ReverseOptions, ctx: Ctx) -> anyhow::Result<()> {
    let listener = bind_tcp("reverse proxy", opts.listen).await?;
    let opts = Arc::new(opts);
    serve("reverse proxy", listener, ctx, move |stream, peer, ctx| {
        let opts = opts.clone();
        async move { handle(stream, peer, ctx, &opts).await }
    })
    .await;
    Ok(())
}

/// Serves one client connection: with `--tls`, one that starts with a ClientHello is
/// terminated with a leaf of capagent's CA (its requests then go to the servers over TLS).
pub async fn handle(mut stream: TcpStream, peer: SocketAddr, ctx: Ctx, opts: &ReverseOptions) {
    let mut client = match &ctx.tls {
        Some(mitm) if starts_tls(&stream, ctx.limits.handshake).await => {
            if pass_through(&mut stream, peer, &ctx, mitm, opts).await {
                return;
            }
            let local_addr = stream.local_addr();
            let local = local_addr.as_ref().map_or(peer.ip(), |a| a.ip());
            // `--pcap-tls raw`: the client leg is recorded as one stream of its own, for the
            // connection's whole life; each server connection records its server leg.
            let leg = ctx.recorder.conn(COMM, Transport::Tcp, peer);
            let raw = leg.tap_raw_client(&stream);
            let stream = Tap::new(stream, Leg::Client, raw.clone());
            let accepted =
                tokio::time::timeout(ctx.limits.handshake, mitm.accept_http(stream, local)).await;
            match accepted {
                Ok(Ok((tls, tls_leg))) => {
                    let mut c = Client::new("reverse", Stream::TlsClient(Box::new(tls)), peer);
                    c.tls = Some(tls_leg);
                    if raw.is_some() {
                        let listen = local_addr.map_or_else(|_| String::new(), |a| a.to_string());
                        leg.open_raw_leg("reverse", &listen).await;
                        c.raw = Some(leg);
                    }
                    c
                }
                Ok(Err(f)) => {
                    tracing::warn!("reverse: {peer}: tls: {}", f.error);
                    if matches!(&f.error, ClientRejected(e) if passthrough::is_rejection(e)) {
                        let name = f.leg.sni.unwrap_or_else(|| local.to_string());
                        mitm.remember_rejection(peer.ip(), &name, "reverse");
                    }
                    return;
                }
                Err(_) => {
                    tracing::warn!("reverse: {peer}: tls: handshake not done in time");
                    return;
                }
            }
        }
        _ => Client::new("reverse", Stream::Tcp(stream), peer),
    };
    let mut up: Option<Upstream> = None;
    while let Some(head) = client.next_request(&ctx.limits).await {
        if !request(&mut client, &mut up, &head, &ctx, opts).await {
            break;
        }
    }
    if let Some(u) = up {
        u.finish(Ok(())).await;
    }
    if client.stream.is_tls() {
        // A close_notify, so that the client sees the TLS stream end cleanly (briefly: a
        // client that reads nothing more must not hold the connection).
        let shutdown = tokio::io::AsyncWriteExt::shutdown(&mut client.stream);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), shutdown).await;
    }
    if let Some(leg) = &client.raw {
        leg.close_raw_leg().await;
    }
}

async fn request(
    client: &mut Client,
    up: &mut Option<Upstream>,
    head: &RequestHead,
    ctx: &Ctx,
    opts: &ReverseOptions,
) -> bool {
    // (The request parser has answered 400 to a missing or repeated Host already.)
    let host_field = values(&head.headers, "host").next().map(|h| h.text());
    let (path, host) = match message::parse_target(&head.method, &head.target) {
        Ok(ReqTarget::Origin(p)) => (p, host_field),
        Ok(ReqTarget::Asterisk) => ("*".to_string(), host_field),
        // An absolute-form target names the host itself (RFC 9112 3.2.2).
        Ok(ReqTarget::Absolute { host, port, path }) => {
            (path, Some(message::authority(&host, port, Some(80))))
        }
        Ok(ReqTarget::Authority { .. }) => {
            client
                .fail(405, "CONNECT is not served by the reverse proxy", true)
                .await;
            return false;
        }
        Err(e) => {
            client.fail(400, &e.to_string(), true).await;
            return false;
        }
    };
    let Some(target) = route(opts, host.as_deref()).cloned() else {
        client
            .fail(
                421,
                &format!(
                    "no --route for Host {:?} and no --to",
                    host.as_deref().unwrap_or("")
                ),
                true,
            )
            .await;
        return false;
    };
    let framing = match body::request_framing(head) {
        Ok(f) => f,
        Err(e) => {
            client.fail(400, &e.to_string(), true).await;
            return false;
        }
    };
    // The request goes on as HTTP/1.1, which needs a Host: the server's when an HTTP/1.0
    // client sent none.
    let new_host = match host {
        Some(h) if !opts.rewrite_host => h,
        _ => host_of(&target),
    };
    let up_head =
        message::upstream_request(head, &path, Some(&new_host), framing == Framing::Chunked);
    forward_request(
        client, up, &target, head, &up_head, framing, ctx, COMM, "reverse",
    )
    .await
}

/// `--tls-passthrough` and pinning: a client whose ClientHello asks for a name (its SNI,
/// else the address it reached) passed through ([`crate::mitm::passthrough`]) is relayed
/// untouched to the server the reverse proxy picks for that name (the `--route` whose NAME
/// is it, else `--to`), recorded as the other proxies record a connection passed through.
/// A CIDR pattern matches the server's address when its `--route`/`--to` gives one (the
/// decision comes before any connection, as a name is not resolved for it). False: not
/// passed through (nothing consumed).
async fn pass_through(
    client: &mut TcpStream,
    peer: SocketAddr,
    ctx: &Ctx,
    mitm: &Interceptor,
    opts: &ReverseOptions,
) -> bool {
    let p = mitm.passthrough();
    let sni = match p.wants_sni() {
        true => peek_sni(client, ctx.limits.handshake).await,
        false => None,
    };
    let listen = client.local_addr().ok();
    let local = listen.map_or(peer.ip(), |a| a.ip()).to_string();
    let name = sni.clone().unwrap_or(local);
    let Some(target) = route(opts, Some(&name)).cloned() else {
        return false;
    };
    let target_ip = match &target.host {
        Host::Ip(ip) => Some(*ip),
        Host::Name(_) => None,
    };
    let Some(info) = mitm.passthrough_info(peer.ip(), sni, &name, target_ip, "reverse") else {
        return false;
    };
    let conn = ctx.recorder.conn(COMM, Transport::Tcp, peer);
    let requested = target.to_string();
    let mut up = match ctx.dialer.connect(&target).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("reverse: {peer}: {e}");
            let io = e.io();
            conn.open_tls(
                "reverse",
                listen,
                &requested,
                target.port,
                None,
                Err(&io),
                Some(info),
            )
            .await;
            conn.close(Err(&io)).await;
            relay::reset_on_close(client);
            return true;
        }
    };
    conn.open_tls(
        "reverse",
        listen,
        requested,
        target.port,
        up.resolved,
        Ok(()),
        Some(info),
    )
    .await;
    match relay::relay(client, &mut up.stream, &conn, ctx.limits.idle).await {
        Ok(_) => conn.close(Ok(())).await,
        Err(e) => {
            tracing::info!("reverse: {peer}: {e}");
            conn.close(Err(&e.io())).await;
        }
    }
    true
}

/// Whether the client's first bytes are a ClientHello (peeked, nothing consumed); false
/// when they cannot start one, the client closes, or six bytes do not come within
/// `patience` (then it is served as plain HTTP, which answers a stalled head itself).
async fn starts_tls(client: &TcpStream, patience: std::time::Duration) -> bool {
    let mut buf = [0u8; 6];
    let peek = async {
        loop {
            match client.peek(&mut buf).await {
                Ok(n) if n == buf.len() => return is_client_hello(&buf),
                Ok(0) | Err(_) => return false,
                Ok(n) if !may_start_client_hello(&buf[..n]) => return false,
                // A ClientHello cut before its sixth byte: wait for more (peek returns at
                // once while bytes are waiting, so wait for the socket to change).
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(patience, peek).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let opts = ReverseOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            to: Some("127.0.0.1:9000".parse().unwrap()),
            routes: vec![
                "api.example.com=127.0.0.1:9001".parse().unwrap(),
                "WWW.example.com:8080=127.0.0.1:9002".parse().unwrap(),
            ],
            rewrite_host: false,
        };
        let port = |h| route(&opts, h).map(|t| t.port);
        assert_eq!(port(Some("api.example.com")), Some(9001));
        assert_eq!(port(Some("API.example.com:8000")), Some(9001));
        assert_eq!(port(Some("www.example.com:8080")), Some(9002));
        assert_eq!(port(Some("www.example.com")), Some(9000));
        assert_eq!(port(None), Some(9000));
        assert!("noequals".parse::<Route>().is_err());
        assert!("a=b".parse::<Route>().is_err());
        assert!("a b=127.0.0.1:1".parse::<Route>().is_err());
        assert_eq!(
            host_of(&"[::1]:8080".parse().unwrap()),
            "[::1]:8080".to_string()
        );
    }
}
