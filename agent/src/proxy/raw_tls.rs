//! `--pcap-tls raw`: the real TLS bytes of an intercepted connection, for pcapng.
//!
//! An intercepted connection has two legs, each its own TLS session: the client's with
//! capagent (the client's socket, accepted by the proxy) and capagent's with the server (the
//! proxy's socket to the target). [`Tap`] wraps each socket beneath rustls and notes every
//! byte read from and written to it, and its ends of stream, into the connection's
//! [`RawTls`] queue; the connection's records ([`super::record::Conn`]) write the queue out
//! as two synthetic TCP streams that only pcapng gets, while the text and JSON records stay
//! the plaintext.
//!
//! The bytes of each leg are written in the order they crossed its socket, every one of
//! them from the ClientHello on (so the sequence numbers of the synthetic streams are those
//! of the real bytes), and only once rustls has processed them: the queue is emptied by the
//! records that come after a read returned, by when rustls has handed the plaintext over (or
//! finished the handshake) and logged the secrets of what was read. Wireshark needs a
//! session's secrets before its packets; a TLS client logs the secrets of the server's
//! encrypted flight only once it has read it (see [`crate::output::SecretsFirst`]).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::tap::{Tapped, Watch};
use crate::model::Direction;

/// Which leg of an intercepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg {
    /// The client and the proxy: the stream from the client's address to the proxy's.
    Client = 1,
    /// The proxy and the server: the stream from the proxy's address to the target's.
    Server = 2,
}

impl Leg {
    /// The direction, in the leg's stream (Send: from its connecting side), of the bytes the
    /// proxy reads from the leg's socket (`read`) or writes to it.
    pub fn dir(self, read: bool) -> Direction {
        match (self, read) {
            (Leg::Client, true) | (Leg::Server, false) => Direction::Send,
            (Leg::Client, false) | (Leg::Server, true) => Direction::Recv,
        }
    }
}

/// What crossed a leg's socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Bytes, in direction `Direction` of the leg's stream.
    Data(Direction, Bytes),
    /// The sender of that direction finished (a read of 0 bytes, or the proxy's shutdown).
    Eof(Direction),
}

/// One thing that crossed a leg's socket, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub leg: Leg,
    pub ts_ns: u64,
    pub step: Step,
}

/// The raw bytes of both legs of one connection, in the order they crossed the sockets,
/// waiting to be recorded.
#[derive(Default)]
pub struct RawTls {
    chunks: Mutex<VecDeque<Chunk>>,
    /// Held while the queue is written out: two records of the connection made at once (its
    /// two relay directions) must not interleave the chunks they take.
    pub(super) sending: tokio::sync::Mutex<()>,
}

impl RawTls {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Chunk>> {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, leg: Leg, step: Step) {
        self.queue().push_back(Chunk {
            leg,
            ts_ns: crate::clock::wall_ns(),
            step,
        });
    }

    /// The oldest chunk not taken yet.
    pub fn pop(&self) -> Option<Chunk> {
        self.queue().pop_front()
    }
}

/// A socket beneath rustls whose bytes go into a [`RawTls`] queue (none: the socket as it
/// is).
pub type Tap<T> = Tapped<T, LegNotes>;

impl<T> Tap<T> {
    pub fn new(inner: T, leg: Leg, raw: Option<Arc<RawTls>>) -> Tap<T> {
        Tapped::with(
            inner,
            LegNotes {
                leg,
                raw,
                shut: false,
            },
        )
    }
}

/// What a [`Tap`] notes into the queue: the bytes read and written, in the leg's
/// directions, and the ends of stream.
pub struct LegNotes {
    leg: Leg,
    raw: Option<Arc<RawTls>>,
    /// The proxy shut its sending side down (noted once).
    shut: bool,
}

impl Watch for LegNotes {
    fn read(&mut self, data: &[u8], room: usize) {
        if let Some(raw) = &self.raw {
            let dir = self.leg.dir(true);
            if !data.is_empty() {
                raw.push(self.leg, Step::Data(dir, Bytes::copy_from_slice(data)));
            } else if room > 0 {
                raw.push(self.leg, Step::Eof(dir));
            }
        }
    }

    /// The `n` bytes written are the first `n` of `bufs`.
    fn wrote(&mut self, bufs: &[io::IoSlice<'_>], n: usize) {
        if let Some(raw) = &self.raw {
            let mut written = Vec::with_capacity(n);
            for b in bufs {
                let take = (n - written.len()).min(b.len());
                written.extend_from_slice(&b[..take]);
                if written.len() == n {
                    break;
                }
            }
            raw.push(self.leg, Step::Data(self.leg.dir(false), written.into()));
        }
    }

    fn shut(&mut self) {
        if let Some(raw) = &self.raw
            && !self.shut
        {
            self.shut = true;
            raw.push(self.leg, Step::Eof(self.leg.dir(false)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWrite as _, AsyncWriteExt as _};

    fn steps(raw: &RawTls) -> Vec<(Leg, Step)> {
        std::iter::from_fn(|| raw.pop())
            .map(|c| (c.leg, c.step))
            .collect()
    }

    /// Every byte read and written, in order, in the leg's directions; the ends of stream.
    #[tokio::test]
    async fn taps_note_what_crosses_the_socket() {
        let raw = Arc::new(RawTls::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut client = Tap::new(a, Leg::Client, Some(raw.clone()));
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        client.write_all(b"world!").await.unwrap();
        client.shutdown().await.unwrap();
        client.shutdown().await.unwrap();
        drop(b);
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
        let d = |dir, s: &'static [u8]| (Leg::Client, Step::Data(dir, Bytes::from_static(s)));
        assert_eq!(
            steps(&raw),
            [
                d(Direction::Send, b"hello"),
                d(Direction::Recv, b"world!"),
                (Leg::Client, Step::Eof(Direction::Recv)),
                (Leg::Client, Step::Eof(Direction::Send)),
            ]
        );
        // The server leg: the proxy's writes are its stream's sends.
        let (a, mut b) = tokio::io::duplex(64);
        let mut server = Tap::new(a, Leg::Server, Some(raw.clone()));
        server.write_all(b"GET").await.unwrap();
        b.write_all(b"200").await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"200");
        assert_eq!(
            steps(&raw),
            [
                (
                    Leg::Server,
                    Step::Data(Direction::Send, Bytes::from_static(b"GET"))
                ),
                (
                    Leg::Server,
                    Step::Data(Direction::Recv, Bytes::from_static(b"200"))
                ),
            ]
        );
        // Vectored writes (a socket takes them whole): the bytes written, across the
        // buffers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = tokio::join!(
            tokio::net::TcpStream::connect(l.local_addr().unwrap()),
            l.accept()
        );
        let (mut server, mut b) = (
            Tap::new(a.unwrap(), Leg::Server, Some(raw.clone())),
            b.unwrap().0,
        );
        assert!(server.is_write_vectored());
        use std::io::IoSlice;
        let bufs = [IoSlice::new(b"ab"), IoSlice::new(b""), IoSlice::new(b"cde")];
        let n = server.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, 5);
        let mut got = vec![0u8; n];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"abcde");
        assert_eq!(
            steps(&raw),
            [(
                Leg::Server,
                Step::Data(Direction::Send, Bytes::copy_from_slice(&got))
            )]
        );
        // Without a queue: the socket as it is.
        let (a, mut b) = tokio::io::duplex(64);
        let mut plain = Tap::new(a, Leg::Client, None);
        plain.write_all(b"x").await.unwrap();
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"x");
    }
}
