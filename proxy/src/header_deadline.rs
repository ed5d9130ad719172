//! The client header timeout (nginx's `client_header_timeout`) on Pingora's side: a client must
//! finish sending its request header within a deadline, or the connection is closed. Pingora 0.9
//! only bounds each read, so a slowloris client sending a byte at a time would hold a connection
//! for ever. (The fast path, `crate::fast`, keeps the same deadline with its own clock.)
//!
//! [`HeaderDeadline`] wraps each accepted stream in a [`DeadlineStream`], which watches the
//! bytes read: the clock starts when the connection is handed to the app (after the TLS
//! handshake on the TLS listener) and stops at the blank line ending the header (CRLF or bare
//! LF line ends). The h2c preface peek is bounded the same way. [`Rearm`] sits between it and
//! Pingora's HTTP app: Pingora serves a kept-alive HTTP/1 connection's requests in a loop of its
//! own, and `Rearm` restarts the watch for each next request, whose clock starts at its first
//! byte. Past the deadline a read fails and Pingora drops the connection. Body bytes and idle
//! keep-alive time are not counted. A zero timeout turns the watch off.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::H2Options;
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

impl<A: ServerApp + Send + Sync + 'static> HeaderDeadline<A> {
    /// Serves a connection of which `prefix` was already read (by the fast path, which
    /// handed it over): those bytes are read again first, then the stream's own. The head being
    /// read has `left` of its header time remaining.
    pub async fn process_prefixed(
        &self,
        stream: Stream,
        prefix: Bytes,
        shutdown: &ShutdownWatch,
        left: Duration,
    ) -> Option<Stream> {
        let mut s = DeadlineStream::new(stream, self.timeout, left, self.timeouts.clone());
        s.prefix = prefix;
        self.inner.process_new(Box::new(s), shutdown).await
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let stream: Stream = if self.timeout.is_zero() || stream.as_any().is::<DeadlineStream>() {
            stream
        } else {
            Box::new(DeadlineStream::new(stream, self.timeout, self.timeout, self.timeouts.clone()))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Pingora's HTTP app with the header watch restarted for every kept-alive request.
pub struct Rearm<A> {
    pub inner: Arc<A>,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for Rearm<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let reused = self.inner.process_new_http(session, shutdown).await?;
        let (stream, settings) = reused.consume();
        let stream: Stream = if stream.as_any().is::<DeadlineStream>() {
            let mut s = stream.into_any().downcast::<DeadlineStream>().ok()?;
            s.next_request();
            s
        } else {
            stream
        };
        Some(ReusedHttpStream::new(stream, settings))
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }

    async fn process_custom_session(self: Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.inner.clone().process_custom_session(stream, shutdown).await
    }
}

enum Phase {
    /// Between requests on a kept-alive connection: no clock.
    Idle,
    /// Reading a header; `state` tracks the end of the last line (0: inside a line, 1: after
    /// "\n", 2: after "\n\r").
    Header { sleep: Pin<Box<tokio::time::Sleep>>, state: u8 },
    /// The header is complete: plain pass-through.
    Done,
}

/// A stream that fails reads once a request header has taken longer than its deadline.
pub struct DeadlineStream {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    timeouts: Arc<AtomicU64>,
    /// Bytes read from `inner` before this wrapper existed, served first.
    prefix: Bytes,
}

impl DeadlineStream {
    /// `first` is what is left of the header time for the request being read now.
    fn new(inner: Stream, timeout: Duration, first: Duration, timeouts: Arc<AtomicU64>) -> DeadlineStream {
        let phase = if timeout.is_zero() {
            Phase::Done
        } else {
            Phase::Header { sleep: Box::pin(tokio::time::sleep(first)), state: 0 }
        };
        DeadlineStream { inner, timeout, phase, timeouts, prefix: Bytes::new() }
    }

    fn next_request(&mut self) {
        if !self.timeout.is_zero() {
            self.phase = Phase::Idle;
        }
    }

    /// Advances the end-of-header matcher over `bytes`: an empty line (CRLF or bare LF) ends
    /// the header.
    fn scan(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if matches!(self.phase, Phase::Idle) {
            let sleep = Box::pin(tokio::time::sleep(self.timeout));
            self.phase = Phase::Header { sleep, state: 0 };
        }
        let Phase::Header { state, .. } = &mut self.phase else { return };
        let mut st = *state;
        for &b in bytes {
            st = match (b, st) {
                (b'\n', 1 | 2) => {
                    self.phase = Phase::Done;
                    return;
                }
                (b'\n', _) => 1,
                (b'\r', 1) => 2,
                _ => 0,
            };
        }
        *state = st;
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Phase::Header { sleep, .. } = &mut self.phase else { return false };
        if sleep.as_mut().poll(cx).is_ready() {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("client did not send its request header within {:?}", self.timeout),
        )
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
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            let head = this.prefix.split_to(n);
            buf.put_slice(&head);
            this.scan(&head);
            return Poll::Ready(Ok(()));
        }
        if matches!(this.phase, Phase::Done) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.scan(&buf.filled()[before..]);
                // A byte-at-a-time client is always "ready": check the clock here too.
                if this.expired(cx) {
                    return Poll::Ready(Err(this.timed_out()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.expired(cx) {
                    return Poll::Ready(Err(this.timed_out()));
                }
                Poll::Pending
            }
        }
    }
}

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
    /// Pingora peeks for the h2c preface before reading anything: that wait is part of the
    /// header time too, or a silent client would hold the connection for ever.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if !self.prefix.is_empty() {
            // The fast path hands over only after reading a whole request head or the full
            // h2c preface, so the prefix decides.
            let n = self.prefix.len().min(buf.len());
            buf[..n].copy_from_slice(&self.prefix[..n]);
            buf[n..].fill(0);
            return Ok(true);
        }
        let DeadlineStream { inner, phase, timeouts, timeout, .. } = self;
        let Phase::Header { sleep, .. } = phase else { return inner.try_peek(buf).await };
        tokio::select! {
            r = inner.try_peek(buf) => r,
            _ = sleep.as_mut() => {
                timeouts.fetch_add(1, Ordering::Relaxed);
                Err(io::Error::new(io::ErrorKind::TimedOut, format!("client sent nothing usable within {timeout:?}")))
            }
        }
    }
}
