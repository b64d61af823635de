//! A stream whose traffic is shown to a [`Watch`] as it passes, the stream's behaviour
//! unchanged: `--pcap-tls raw`'s sockets beneath rustls ([`super::raw_tls::Tap`]), DNS over
//! TCP answers learned by the intercept (`crate::intercept::names::DnsTap`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`Tapped`] stream shows its watcher. Each is called once the inner stream's call
/// returned, with what it read or wrote.
pub trait Watch {
    /// A read returned `data` (empty while there was `room`: the end of the stream).
    fn read(&mut self, _data: &[u8], _room: usize) {}
    /// A write took the first `n` bytes of `bufs` (n > 0).
    fn wrote(&mut self, _bufs: &[io::IoSlice<'_>], _n: usize) {}
    /// The stream's sending side was shut down.
    fn shut(&mut self) {}
}

/// `inner`, its traffic shown to `watch`.
pub struct Tapped<S, W> {
    inner: S,
    pub watch: W,
}

impl<S, W> Tapped<S, W> {
    pub fn with(inner: S, watch: W) -> Tapped<S, W> {
        Tapped { inner, watch }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin, W: Watch + Unpin> AsyncRead for Tapped<S, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (before, room) = (buf.filled().len(), buf.remaining());
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.watch.read(&buf.filled()[before..], room);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin, W: Watch + Unpin> AsyncWrite for Tapped<S, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if n > 0 {
            this.watch.wrote(&[io::IoSlice::new(buf)], n);
        }
        Poll::Ready(Ok(n))
    }

    /// rustls writes its records vectored when the socket can.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if n > 0 {
            this.watch.wrote(bufs, n);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
        this.watch.shut();
        Poll::Ready(Ok(()))
    }
}
