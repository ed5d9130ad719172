//! The fast path: wharf's own forwarding loop for plain HTTP/1.1 requests.
//!
//! Pingora's general HTTP pipeline costs about four times nginx's user-space CPU per request
//! (a task and a timer per pooled upstream connection, two channels and several header maps per
//! request). Most traffic is the simplest shape: HTTP/1.1 over plain TCP, a bodiless or small
//! Content-Length request, a routed service with a healthy instance. [`FastPath`] serves those
//! itself: it parses the head with `httparse` (`parse`), picks the instance from the same route
//! table, writes the rewritten head to a kept-alive upstream connection from its own pool
//! ([`crate::upstream_pool`]) and relays the response (`forward`, `response`) straight back.
//!
//! Anything else is handed to Pingora ([`crate::pingora_path`]), with the bytes already read
//! put back in front of the stream; `parse` states the hand-over rule. Once handed over, a
//! connection stays with Pingora. What both paths compute from a request, the retry and
//! ejection rules, the replies wharf writes itself and the access-log record are shared
//! (`request`, `attempts`, `reply`, `access_log`), so the behaviour is the same on both.

mod forward;
mod parse;
mod response;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use crate::access_log::AccessLog;
use crate::attempts::UpstreamSettings;
use crate::header_deadline::{DeadlineStream, HeaderDeadline};
use crate::metrics::ProxyMetrics;
use crate::reply::LocalReply;
use crate::route_table::RouteTable;
use crate::upstream_pool::UpstreamConns;
use parse::{Client, Parsed, Request, parse_request};

/// The HTTP/2 connection preface (h2c with prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Read size for client and upstream buffers.
const READ_CHUNK: usize = 16 * 1024;

/// The outermost app of the plain listener: serves plain HTTP/1.1 itself and hands every other
/// connection to Pingora (`fallback`).
pub struct FastPath<A> {
    pub fallback: Arc<HeaderDeadline<A>>,
    pub table: Arc<ArcSwap<RouteTable>>,
    pub settings: UpstreamSettings,
    pub metrics: Arc<ProxyMetrics>,
    pub access_log: Option<Arc<AccessLog>>,
    pub header_timeout: Duration,
    pub conns: Arc<UpstreamConns>,
    sweeper: AtomicBool,
}

impl<A> FastPath<A> {
    pub fn new(
        fallback: Arc<HeaderDeadline<A>>,
        table: Arc<ArcSwap<RouteTable>>,
        settings: UpstreamSettings,
        metrics: Arc<ProxyMetrics>,
        access_log: Option<Arc<AccessLog>>,
        header_timeout: Duration,
    ) -> Self {
        let conns = Arc::new(UpstreamConns::new(settings.idle_timeout));
        FastPath {
            fallback,
            table,
            settings,
            metrics,
            access_log,
            header_timeout,
            conns,
            sweeper: AtomicBool::new(false),
        }
    }
}

/// What to do with the client connection after a request.
enum Outcome {
    /// Keep reading requests.
    Next,
    /// Close the client connection.
    Close,
}

/// Per-connection buffers.
struct Buffers {
    client: BytesMut,
    upstream: BytesMut,
    out: Vec<u8>,
    resp_head: Vec<u8>,
}

/// How reading a request head ended.
enum HeadRead {
    Ready(Box<Request>),
    /// Pingora takes the connection over.
    HandOver,
    /// The connection is done (closed, timed out, or answered with 431).
    Closed,
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

async fn write_client(stream: &mut Stream, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    timeout_at(deadline, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| timed_out("writing to the client"))?
}

/// Writes a reply of wharf's own, after which the connection closes.
async fn write_reply(stream: &mut Stream, reply: &LocalReply, deadline: Instant) -> io::Result<()> {
    write_client(stream, &reply.http1_closing(), deadline).await
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for FastPath<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if stream.get_ssl().is_some() || stream.as_any().is::<DeadlineStream>() {
            return self.fallback.process_new(stream, shutdown).await;
        }
        if !self.sweeper.swap(true, Ordering::Relaxed) {
            spawn_sweeper(Arc::downgrade(&self.conns));
        }
        self.serve(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.fallback.cleanup().await
    }
}

fn spawn_sweeper(conns: Weak<UpstreamConns>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match conns.upgrade() {
                Some(c) => c.sweep(),
                None => return,
            }
        }
    });
}

impl<A: ServerApp + Send + Sync + 'static> FastPath<A> {
    async fn serve(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .map(|ip| Client { ip, text: ip.to_string() });
        let mut bufs = Buffers {
            client: BytesMut::with_capacity(READ_CHUNK),
            upstream: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(1024),
            resp_head: Vec::with_capacity(512),
        };
        let mut shutdown = shutdown.clone();
        let mut first = true;
        let accepted = Instant::now();
        loop {
            // Idle between requests: wait for the next one's first byte.
            if bufs.client.is_empty() && !self.await_request(&mut stream, &mut bufs, &mut shutdown, first).await {
                return None;
            }
            // The clock runs from the first byte of a kept-alive connection's next request, and
            // from the hand-over for a new connection's first.
            let header_deadline = match (self.header_timeout.is_zero(), first) {
                (true, _) => far_future(),
                (false, true) => accepted + self.header_timeout,
                (false, false) => Instant::now() + self.header_timeout,
            };
            let request = match self.read_head(&mut stream, &mut bufs, client.as_ref(), first, header_deadline).await {
                HeadRead::Ready(r) => r,
                HeadRead::HandOver => return self.hand_over(stream, bufs.client, &shutdown, header_deadline).await,
                HeadRead::Closed => return None,
            };
            first = false;
            if let Outcome::Close = self.forward(&mut stream, &request, &mut bufs).await {
                let _ = stream.shutdown().await;
                return None;
            }
        }
    }

    /// Waits for the first byte of the next request; `false` when the connection is done
    /// (closed, idle too long, or shutting down between requests).
    async fn await_request(
        &self,
        stream: &mut Stream,
        bufs: &mut Buffers,
        shutdown: &mut ShutdownWatch,
        first: bool,
    ) -> bool {
        if !first && *shutdown.borrow() {
            return false;
        }
        // A new connection's first request is due within the header timeout.
        let wait =
            if first && !self.header_timeout.is_zero() { self.header_timeout } else { self.settings.client_keepalive };
        let idle = Instant::now() + wait;
        bufs.client.reserve(READ_CHUNK);
        tokio::select! {
            r = timeout_at(idle, stream.read_buf(&mut bufs.client)) => match r {
                Ok(Ok(n)) if n > 0 => true,
                Err(_) if first => {
                    self.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    false
                }
                _ => false,
            },
            _ = shutdown.changed(), if !first => false,
        }
    }

    /// Reads until the request head is complete and parsed.
    async fn read_head(
        &self,
        stream: &mut Stream,
        bufs: &mut Buffers,
        client: Option<&Client>,
        first: bool,
        deadline: Instant,
    ) -> HeadRead {
        loop {
            if first && H2_PREFACE.starts_with(&bufs.client[..bufs.client.len().min(H2_PREFACE.len())]) {
                if bufs.client.len() >= H2_PREFACE.len() {
                    return HeadRead::HandOver;
                }
            } else {
                let table = self.table.load();
                match parse_request(&bufs.client, client, &table, self.access_log.is_some(), &mut bufs.out) {
                    Parsed::Ready(r) => return HeadRead::Ready(r),
                    Parsed::Fallback => return HeadRead::HandOver,
                    Parsed::TooLarge => {
                        let _ = write_reply(stream, &LocalReply::headers_too_large(), deadline).await;
                        return HeadRead::Closed;
                    }
                    Parsed::Partial => {}
                }
            }
            bufs.client.reserve(READ_CHUNK);
            match timeout_at(deadline, stream.read_buf(&mut bufs.client)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return HeadRead::Closed,
                Err(_) => {
                    self.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    return HeadRead::Closed;
                }
            }
        }
    }

    /// Hands the connection to Pingora; the request head being read keeps its deadline.
    async fn hand_over(
        &self,
        stream: Stream,
        read: BytesMut,
        shutdown: &ShutdownWatch,
        deadline: Instant,
    ) -> Option<Stream> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.fallback.process_prefixed(stream, read.freeze(), shutdown, left).await
    }
}
