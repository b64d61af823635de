//! What happens to an intercepted connection once its original destination is known: a
//! [`Sink`] relays it (and records it). The interception mechanisms only produce
//! [`Accepted`] connections and [`UdpFlow`] datagrams.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::pin::Pin;

use tokio::net::{TcpSocket, TcpStream};

use super::origdst;

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection the transparent listener accepted.
pub struct Accepted {
    pub client: TcpStream,
    /// The client's address as the listener sees it.
    pub peer: SocketAddr,
    /// The listener's address.
    pub listen: SocketAddr,
    /// Where the client was connecting to.
    pub orig: SocketAddr,
    /// The process that connected (per-process mode).
    pub pid: Option<u32>,
    /// `redirect`, `tproxy` or `process`.
    pub how: &'static str,
    /// Mark for the upstream socket (capagent's rules never catch it).
    pub mark: u32,
}

/// One direction of an intercepted UDP flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpDir {
    /// Client → original destination.
    Request,
    /// Original destination → client.
    Reply,
}

/// Relays intercepted traffic.
pub trait Sink: Send + Sync + 'static {
    /// Relays one TCP connection to its original destination until it ends.
    fn tcp(&self, conn: Accepted) -> BoxFuture;
    /// A UDP flow (client → orig) starts; its datagrams are reported to what this returns.
    fn udp_flow(
        &self,
        client: SocketAddr,
        orig: SocketAddr,
        listen: SocketAddr,
        how: &'static str,
    ) -> Pin<Box<dyn Future<Output = Box<dyn UdpFlow>> + Send>>;
}

/// The records of one intercepted UDP flow.
pub trait UdpFlow: Send + Sync {
    /// One datagram relayed in direction `dir`.
    fn datagram(&self, dir: UdpDir, payload: bytes::Bytes) -> BoxFuture;
    /// The flow ended (idle).
    fn close(&self) -> BoxFuture;
}

/// Connects to `to` from a socket carrying `mark`.
pub async fn dial(to: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    let s = if to.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if mark != 0 {
        origdst::set_mark(s.as_raw_fd(), mark)?;
    }
    let stream = s.connect(to).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Relays without recording (used when nothing is recorded).
pub struct PlainRelay;

impl Sink for PlainRelay {
    fn tcp(&self, mut conn: Accepted) -> BoxFuture {
        Box::pin(async move {
            let mut up = match dial(conn.orig, conn.mark).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!("{}: {} -> {}: {e}", conn.how, conn.peer, conn.orig);
                    return;
                }
            };
            if let Err(e) = tokio::io::copy_bidirectional(&mut conn.client, &mut up).await {
                tracing::debug!("{}: {} -> {}: {e}", conn.how, conn.peer, conn.orig);
            }
        })
    }

    fn udp_flow(
        &self,
        _client: SocketAddr,
        _orig: SocketAddr,
        _listen: SocketAddr,
        _how: &'static str,
    ) -> Pin<Box<dyn Future<Output = Box<dyn UdpFlow>> + Send>> {
        Box::pin(async { Box::new(NoRecord) as Box<dyn UdpFlow> })
    }
}

struct NoRecord;

impl UdpFlow for NoRecord {
    fn datagram(&self, _dir: UdpDir, _payload: bytes::Bytes) -> BoxFuture {
        Box::pin(async {})
    }

    fn close(&self) -> BoxFuture {
        Box::pin(async {})
    }
}
