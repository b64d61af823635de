//! The port forwarder (`capagent proxy forward`): each listener relays to one fixed target;
//! many listeners run in one process (applications that use several ports, such as RPC
//! systems). TCP connections are relayed whole; with `--udp` each listener also relays UDP:
//! every client address gets its own socket towards the target, so answers find their way
//! back, until it is idle for the idle timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::OwnedSemaphorePermit;

use crate::model::{Direction, Transport};
use crate::proxy::target::{Target, resolve};
use crate::proxy::{self, Ctx, ProxyError, relay, tls};

/// Process name of forwarder records.
pub const COMM: &str = "forward";
/// Idle time after which a UDP session ends when no idle timeout is set.
const UDP_IDLE_DEFAULT: Duration = Duration::from_secs(120);
const UDP_MAX: usize = 65535;

/// One listener and its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub listen: SocketAddr,
    pub to: Target,
}

/// The mappings of `--listen A --to T` pairs (by position) and `--map A=T`.
pub fn mappings(
    listen: &[String],
    to: &[String],
    map: &[String],
) -> Result<Vec<Mapping>, ProxyError> {
    if listen.len() != to.len() {
        return Err(ProxyError::Usage(format!(
            "{} --listen but {} --to: give them in pairs (or use --map LISTEN=HOST:PORT)",
            listen.len(),
            to.len()
        )));
    }
    let target = |s: &str| {
        s.parse::<Target>()
            .map_err(|e| ProxyError::Usage(e.to_string()))
    };
    let mut out = Vec::new();
    for (l, t) in listen.iter().zip(to) {
        out.push(Mapping {
            listen: proxy::listen_addr(l)?,
            to: target(t)?,
        });
    }
    for m in map {
        let (l, t) = m
            .split_once('=')
            .ok_or_else(|| ProxyError::Usage(format!("--map {m:?}: expected LISTEN=HOST:PORT")))?;
        out.push(Mapping {
            listen: proxy::listen_addr(l)?,
            to: target(t)?,
        });
    }
    if out.is_empty() {
        return Err(ProxyError::Usage(
            "nothing to forward: give --listen ADDR --to HOST:PORT or --map LISTEN=HOST:PORT"
                .into(),
        ));
    }
    Ok(out)
}

/// Binds every listener (all before serving, so a bad one stops the command at once) and
/// serves them until the process stops.
pub async fn run(maps: Vec<Mapping>, udp: bool, ctx: Ctx) -> anyhow::Result<()> {
    if udp && ctx.dialer.upstream.is_some() {
        return Err(ProxyError::Usage(
            "--udp cannot go through --upstream-proxy (its CONNECT carries TCP only)".into(),
        )
        .into());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for m in maps {
        let what = format!("forward {} -> {}", m.listen, m.to);
        let listener = proxy::bind_tcp(&what, m.listen).await?;
        let to = Arc::new(m.to.clone());
        let c = ctx.clone();
        tasks.spawn(proxy::serve(
            "forward",
            listener,
            c,
            move |stream, peer, ctx| {
                let to = to.clone();
                async move { forward_tcp(stream, peer, ctx, &to).await }
            },
        ));
        if udp {
            let what = format!("forward udp {} -> {}", m.listen, m.to);
            proxy::warn_if_exposed(&what, m.listen);
            let sock = UdpSocket::bind(m.listen)
                .await
                .map_err(|source| ProxyError::Bind {
                    addr: m.listen,
                    source,
                })?;
            eprintln!(
                "capagent: {what} listening on {}",
                sock.local_addr().unwrap_or(m.listen)
            );
            tasks.spawn(forward_udp(Arc::new(sock), m.to.clone(), ctx.clone()));
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn forward_tcp(mut client: TcpStream, peer: SocketAddr, ctx: Ctx, to: &Target) {
    let listen = client.local_addr().ok();
    let conn = ctx.recorder.conn(COMM, Transport::Tcp, peer);
    let requested = to.to_string();
    let mut up = match ctx.dialer.connect(to).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("forward: {peer}: {e}");
            let io = e.io();
            conn.open(COMM, listen, &requested, to.port, None, Err(&io))
                .await;
            conn.close(Err(&io)).await;
            // The client learns with a reset, as if the target had refused it.
            relay::reset_on_close(&client);
            return;
        }
    };
    let opening = tls::Opening {
        proxy: COMM,
        listen,
        target: requested,
        port: to.port,
        resolved: up.resolved,
    };
    let host = to.host.name();
    match tls::open_and_relay(&ctx, &conn, opening, &host, &mut client, &mut up.stream).await {
        Ok(_) => conn.close(Ok(())).await,
        Err(e) => {
            tracing::info!("forward: {peer}: {e}");
            conn.close(Err(&e.io())).await;
        }
    }
}

/// One client address's UDP session.
struct Session {
    up: Arc<UdpSocket>,
    conn: Arc<proxy::Conn>,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Session>>>;

async fn forward_udp(sock: Arc<UdpSocket>, to: Target, ctx: Ctx) {
    let sessions: Sessions = Arc::default();
    let mut buf = vec![0u8; UDP_MAX];
    let listen = sock.local_addr().ok();
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::info!("forward udp: receive: {e}");
                continue;
            }
        };
        let existing = sessions
            .lock()
            .expect("sessions lock")
            .get(&client)
            .map(|s| (s.up.clone(), s.conn.clone()));
        let (up, conn) = match existing {
            Some(x) => x,
            None => {
                let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
                    tracing::warn!(
                        "forward udp: {} sessions open (--max-conns); datagram from {client} dropped",
                        ctx.limits.max_conns
                    );
                    continue;
                };
                match open_session(&to).await {
                    Ok((up, resolved)) => {
                        let up = Arc::new(up);
                        let conn = ctx.recorder.conn(COMM, Transport::Udp, client);
                        conn.open(
                            "forward udp",
                            listen,
                            to.to_string(),
                            to.port,
                            Some(resolved),
                            Ok(()),
                        )
                        .await;
                        let conn = Arc::new(conn);
                        sessions.lock().expect("sessions lock").insert(
                            client,
                            Session {
                                up: up.clone(),
                                conn: conn.clone(),
                            },
                        );
                        tokio::spawn(answers(
                            sock.clone(),
                            up.clone(),
                            client,
                            resolved,
                            conn.clone(),
                            sessions.clone(),
                            ctx.limits.idle.unwrap_or(UDP_IDLE_DEFAULT),
                            permit,
                        ));
                        (up, conn)
                    }
                    Err(e) => {
                        tracing::warn!("forward udp: {client}: {e}");
                        continue;
                    }
                }
            }
        };
        if let Ok(target) = up.peer_addr() {
            conn.datagram(Direction::Send, target, Bytes::copy_from_slice(&buf[..n]))
                .await;
        }
        if let Err(e) = up.send(&buf[..n]).await {
            tracing::info!("forward udp: {client}: send to {to}: {e}");
        }
    }
}

/// A socket connected to `to`'s first address.
async fn open_session(to: &Target) -> Result<(UdpSocket, SocketAddr), anyhow::Error> {
    let addr = resolve(to).await?[0];
    let any: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(any).await?;
    s.connect(addr).await?;
    Ok((s, addr))
}

/// Relays the target's answers to `client` until the session is idle (no answer for
/// `idle`), then ends the session.
#[allow(clippy::too_many_arguments)]
async fn answers(
    sock: Arc<UdpSocket>,
    up: Arc<UdpSocket>,
    client: SocketAddr,
    target: SocketAddr,
    conn: Arc<proxy::Conn>,
    sessions: Sessions,
    idle: Duration,
    _permit: OwnedSemaphorePermit,
) {
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        match tokio::time::timeout(idle, up.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                conn.datagram(Direction::Recv, target, Bytes::copy_from_slice(&buf[..n]))
                    .await;
                if let Err(e) = sock.send_to(&buf[..n], client).await {
                    tracing::info!("forward udp: send to {client}: {e}");
                }
            }
            Ok(Err(e)) => {
                // ICMP port unreachable and the like: the target is not listening.
                tracing::info!("forward udp: {client}: from {target}: {e}");
            }
            Err(_) => break,
        }
    }
    sessions.lock().expect("sessions lock").remove(&client);
    conn.close(Ok(())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_flags() {
        let m = mappings(
            &["127.0.0.1:4444".into(), "4445".into()],
            &["example.com:80".into(), "[::1]:81".into()],
            &["127.0.0.1:4446=10.0.0.1:82".into()],
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].listen, "127.0.0.1:4445".parse().unwrap());
        assert_eq!(m[1].to.to_string(), "[::1]:81");
        assert_eq!(m[2].to.to_string(), "10.0.0.1:82");
        assert!(mappings(&["1".into()], &[], &[]).is_err());
        assert!(mappings(&[], &[], &[]).is_err());
        assert!(mappings(&[], &[], &["127.0.0.1:1".into()]).is_err());
        assert!(mappings(&[], &[], &["127.0.0.1:1=nope".into()]).is_err());
    }
}
