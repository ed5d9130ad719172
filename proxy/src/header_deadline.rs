//! The client header timeout (nginx's `client_header_timeout`): a client must finish sending
//! its request header within a deadline, or the connection is closed. Pingora 0.9 only
//! bounds each read, so a slowloris client sending a byte at a time would hold a connection
//! for ever.
//!
//! [`HeaderDeadline`] wraps the HTTP app and each accepted stream in a [`DeadlineStream`],
//! which watches the bytes read: the clock starts at accept (first request) or at the first
//! byte of a later request on a kept-alive connection, and stops at the blank line ending the
//! header. Past the deadline a read fails, and Pingora drops the connection. Body bytes and
//! idle keep-alive time are not counted.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps an app so every connection it serves has a header deadline.
pub struct HeaderDeadline<A> {
    pub inner: Arc<A>,
    pub timeout: Duration,
    /// Connections closed for sending their header too slowly.
    pub timeouts: Arc<AtomicU64>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // A kept-alive connection comes back here for its next request: reuse the wrapper,
        // waiting for that request's first byte before starting the clock.
        let stream: Stream = if stream.as_any().is::<DeadlineStream>() {
            match stream.into_any().downcast::<DeadlineStream>() {
                Ok(mut s) => {
                    s.next_request();
                    s
                }
                Err(_) => return None,
            }
        } else {
            Box::new(DeadlineStream::new(stream, self.timeout, self.timeouts.clone()))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

enum Phase {
    /// Between requests on a kept-alive connection: no clock.
    Idle,
    /// Reading a header; `matched` is how much of "\r\n\r\n" the last bytes matched.
    Header { sleep: Pin<Box<tokio::time::Sleep>>, matched: u8 },
    /// The header is complete: plain pass-through.
    Done,
}

/// A stream that fails reads once a request header has taken longer than its deadline.
pub struct DeadlineStream {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    timeouts: Arc<AtomicU64>,
}

impl DeadlineStream {
    fn new(inner: Stream, timeout: Duration, timeouts: Arc<AtomicU64>) -> DeadlineStream {
        let sleep = Box::pin(tokio::time::sleep(timeout));
        DeadlineStream { inner, timeout, phase: Phase::Header { sleep, matched: 0 }, timeouts }
    }

    fn next_request(&mut self) {
        self.phase = Phase::Idle;
    }

    /// Advances the end-of-header matcher over `bytes`.
    fn scan(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if matches!(self.phase, Phase::Idle) {
            let sleep = Box::pin(tokio::time::sleep(self.timeout));
            self.phase = Phase::Header { sleep, matched: 0 };
        }
        let Phase::Header { matched, .. } = &mut self.phase else { return };
        const END: &[u8; 4] = b"\r\n\r\n";
        let mut m = *matched as usize;
        for &b in bytes {
            m = if b == END[m] {
                m + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if m == END.len() {
                self.phase = Phase::Done;
                return;
            }
        }
        *matched = m as u8;
    }
}

impl fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream").field("inner", &self.inner).field("timeout", &self.timeout).finish()
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.phase, Phase::Done) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = buf.filled()[before..].to_vec();
                this.scan(&new);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Phase::Header { sleep, .. } = &mut this.phase
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    this.timeouts.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("client did not send its request header within {:?}", this.timeout),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

use std::future::Future;

impl AsyncWrite for DeadlineStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
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

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
