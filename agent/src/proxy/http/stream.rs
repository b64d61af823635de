//! The byte streams the HTTP proxies speak HTTP/1.1 over: a TCP connection, or (`proxy
//! reverse --tls`) the plaintext of a TLS connection capagent terminated (the client's) or
//! made (to the server). Plain TCP stays a `TcpStream` (its split halves borrow, no lock);
//! a TLS stream splits through [`tokio::io::split`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp;
use tokio_rustls::{client, server};

use crate::proxy::raw_tls::Tap;

/// The TCP connection beneath a TLS stream, its raw bytes noted for `--pcap-tls raw`
/// (else passed as they are).
pub type Tapped = Tap<TcpStream>;

/// A client's or a server's connection.
pub enum Stream {
    Tcp(TcpStream),
    /// A client's TLS, terminated with a leaf of capagent's CA.
    TlsClient(Box<server::TlsStream<Tapped>>),
    /// TLS to a server.
    TlsServer(Box<client::TlsStream<Tapped>>),
}

/// The reading half of a split [`Stream`].
pub enum ReadHalf<'a> {
    Tcp(tcp::ReadHalf<'a>),
    TlsClient(tokio::io::ReadHalf<&'a mut server::TlsStream<Tapped>>),
    TlsServer(tokio::io::ReadHalf<&'a mut client::TlsStream<Tapped>>),
}

/// The writing half of a split [`Stream`].
pub enum WriteHalf<'a> {
    Tcp(tcp::WriteHalf<'a>),
    TlsClient(tokio::io::WriteHalf<&'a mut server::TlsStream<Tapped>>),
    TlsServer(tokio::io::WriteHalf<&'a mut client::TlsStream<Tapped>>),
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::TlsClient(s) => s.get_ref().0.get_ref(),
            Stream::TlsServer(s) => s.get_ref().0.get_ref(),
        }
    }

    /// Whether it is TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Tcp(_))
    }

    /// Both halves, to read and write at the same time.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::TlsClient(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ReadHalf::TlsClient(r), WriteHalf::TlsClient(w))
            }
            Stream::TlsServer(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ReadHalf::TlsServer(r), WriteHalf::TlsServer(w))
            }
        }
    }
}

/// Forwards an AsyncRead/AsyncWrite call to whichever variant `$e` holds.
macro_rules! each {
    ($e:expr, $s:ident => $call:expr) => {
        match $e {
            Self::Tcp($s) => $call,
            Self::TlsClient($s) => $call,
            Self::TlsServer($s) => $call,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}
