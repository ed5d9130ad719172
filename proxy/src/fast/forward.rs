//! Forwarding one parsed request on the fast path: the body read, attempts at the route's
//! instances (pooled or fresh connections, the shared retry and ejection rules of
//! [`Attempts`]), and the response relayed back as it comes.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use super::parse::Request;
use super::response::{ChunkScanner, Framing, ResponseHead, parse_response};
use super::{Buffers, FastPath, Outcome, READ_CHUNK, write_client, write_reply};
use crate::access_log::AccessRecord;
use crate::attempts::{Attempts, count_retry};
use crate::balance::Upstream;
use crate::reply::LocalReply;

/// How a forwarding attempt failed.
enum Failure {
    /// Nothing reached an instance (connect failed, or a pooled connection the instance had
    /// already closed): safe to try again, whatever the method.
    NotSent { stale: bool, error: String },
    /// The request was sent, no response came.
    NoResponse { timed_out: bool, error: String },
}

/// Why relaying a response stopped early.
enum RelayError {
    /// The client went away (not the instance's fault).
    Client,
    /// The instance failed or answered badly.
    Upstream(String),
}

/// How the relay of a response ended: what to do with the client connection, the status
/// sent, and any error.
type Relayed = (Outcome, u16, Option<String>);

impl<A: ServerApp + Send + Sync + 'static> FastPath<A> {
    /// Forwards one parsed request (head rewritten in `bufs.out`) and relays the response.
    pub(super) async fn forward(&self, stream: &mut Stream, req: &Request, bufs: &mut Buffers) -> Outcome {
        let started = Instant::now();
        // The rest of the body, bounded by MAX_FAST_BODY.
        let total = req.head_len + req.body_len;
        while bufs.client.len() < total {
            bufs.client.reserve(total - bufs.client.len());
            let deadline = tokio::time::Instant::now() + self.settings.read_timeout;
            match timeout_at(deadline, stream.read_buf(&mut bufs.client)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Outcome::Close,
            }
        }
        let whole: Bytes = bufs.client.split_to(total).freeze();
        bufs.out.extend_from_slice(&whole[req.head_len..]);

        let mut attempts = Attempts::default();
        let (outcome, status, error) = match self.send(req, bufs, &mut attempts).await {
            Ok((up, conn)) => self.relay(stream, req, &up, conn, bufs, &attempts).await,
            Err((status, error)) => {
                tracing::warn!(service = %req.route.service, attempts = attempts.tried.len(), status,
                    "request failed: {}", error.as_deref().unwrap_or("every instance was tried"));
                let reply = LocalReply::for_status(status, &req.route.service, None);
                let deadline = tokio::time::Instant::now() + self.settings.write_timeout;
                let _ = write_reply(stream, &reply, deadline).await;
                (Outcome::Close, status, error)
            }
        };
        attempts.finish();
        self.finish(req, status, started, &attempts, error);
        outcome
    }

    /// Tries the route's instances until one takes the request and starts answering, by
    /// the rules of [`Attempts`]. Fails with the status to answer (502 or 504) and why.
    async fn send(
        &self,
        req: &Request,
        bufs: &mut Buffers,
        attempts: &mut Attempts,
    ) -> Result<(Arc<Upstream>, TcpStream), (u16, Option<String>)> {
        let route = &req.route;
        let mut fresh_only = false;
        let mut last_error: Option<String> = None;
        loop {
            let up = match (fresh_only, attempts.current.clone()) {
                (true, Some(up)) => {
                    attempts.begin(up.clone());
                    up
                }
                _ => match attempts.next(route, req.hash_key.as_deref()) {
                    Some(up) => up,
                    None => return Err((502, last_error)),
                },
            };
            let reuse = !fresh_only;
            fresh_only = false;
            match self.attempt(&up, reuse, req.idempotent, &mut bufs.out, &mut bufs.upstream).await {
                Ok(conn) => return Ok((up, conn)),
                Err(Failure::NotSent { stale: true, error }) => {
                    // A pooled connection the instance had closed (it is often stopping): try
                    // another instance, or a fresh connection when none is left. Neither counts
                    // against the instance or the retry budget.
                    last_error = Some(error);
                    fresh_only = !attempts.has_untried(route);
                }
                Err(Failure::NotSent { stale: false, error }) => {
                    attempts.failed(&self.settings, route);
                    last_error = Some(error);
                    if !attempts.has_untried(route) {
                        return Err((502, last_error));
                    }
                    count_retry(route);
                }
                Err(Failure::NoResponse { timed_out, error }) => {
                    attempts.failed(&self.settings, route);
                    last_error = Some(error);
                    if !attempts.retry_after_send(&self.settings, route, req.idempotent, !timed_out) {
                        return Err((if timed_out { 504 } else { 502 }, last_error));
                    }
                }
            }
        }
    }

    /// Sends the request on a pooled or new connection and reads the response's first bytes
    /// into `upstream`.
    async fn attempt(
        &self,
        up: &Upstream,
        reuse: bool,
        idempotent: bool,
        request: &mut [u8],
        upstream: &mut bytes::BytesMut,
    ) -> Result<TcpStream, Failure> {
        let pooled = if reuse { self.conns.take(up.addr) } else { None };
        let stale = pooled.is_some();
        // Once the request is out, a pooled connection that closes without an answer is retried
        // only for an idempotent request: the instance may have acted on it (nginx does the same).
        let stale_after_send = stale && idempotent;
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect(up).await?,
        };
        let deadline = tokio::time::Instant::now() + self.settings.write_timeout;
        match timeout_at(deadline, conn.write_all(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Failure::NotSent { stale, error: format!("sending to {}: {e}", up.addr) }),
            Err(_) => {
                let error = format!("sending to {} timed out", up.addr);
                return Err(Failure::NoResponse { timed_out: true, error });
            }
        }
        upstream.clear();
        let deadline = tokio::time::Instant::now() + self.settings.read_timeout;
        upstream.reserve(READ_CHUNK);
        let addr = up.addr;
        match timeout_at(deadline, conn.read_buf(upstream)).await {
            Ok(Ok(n)) if n > 0 => Ok(conn),
            Ok(Ok(_)) if stale_after_send => {
                Err(Failure::NotSent { stale, error: format!("{addr} closed the kept-alive connection") })
            }
            Ok(Ok(_)) => Err(Failure::NoResponse { timed_out: false, error: format!("{addr} closed the connection") }),
            Ok(Err(e)) if stale_after_send && e.kind() == io::ErrorKind::ConnectionReset => {
                Err(Failure::NotSent { stale, error: format!("{addr} reset the kept-alive connection") })
            }
            Ok(Err(e)) => Err(Failure::NoResponse { timed_out: false, error: format!("reading from {addr}: {e}") }),
            Err(_) => Err(Failure::NoResponse { timed_out: true, error: format!("{addr} did not answer in time") }),
        }
    }

    async fn connect(&self, up: &Upstream) -> Result<TcpStream, Failure> {
        let deadline = tokio::time::Instant::now() + self.settings.connect_timeout;
        match timeout_at(deadline, TcpStream::connect(up.addr)).await {
            Ok(Ok(c)) => {
                let _ = c.set_nodelay(true);
                Ok(c)
            }
            Ok(Err(e)) => Err(Failure::NotSent { stale: false, error: format!("connecting to {}: {e}", up.addr) }),
            Err(_) => Err(Failure::NotSent { stale: false, error: format!("connecting to {} timed out", up.addr) }),
        }
    }

    /// Relays the response whose first bytes are in `bufs.upstream`, keeping the upstream
    /// connection when it ended cleanly.
    async fn relay(
        &self,
        stream: &mut Stream,
        req: &Request,
        up: &Upstream,
        mut conn: TcpStream,
        bufs: &mut Buffers,
        attempts: &Attempts,
    ) -> Relayed {
        let head = match self.response_head(stream, req, up, &mut conn, bufs).await {
            Ok(h) => h,
            Err(RelayError::Client) => return (Outcome::Close, 0, Some("client went away".into())),
            Err(RelayError::Upstream(error)) => {
                attempts.failed(&self.settings, &req.route);
                return self.bad_gateway(stream, req, error).await;
            }
        };
        attempts.answered(&self.settings, &req.route, head.status);
        let _ = bufs.upstream.split_to(head.len);
        let client_keeps = req.keep_alive && head.framing != Framing::UntilClose;
        let mut body = Body::new(head.framing);
        // The body: first what is already buffered, sent with the head in one write.
        let n = match body.take(&bufs.upstream) {
            Ok(n) => n,
            Err(e) => {
                attempts.failed(&self.settings, &req.route);
                return self.bad_gateway(stream, req, format!("{}: {e}", up.addr)).await;
            }
        };
        bufs.resp_head.extend_from_slice(&bufs.upstream[..n]);
        let write_deadline = || tokio::time::Instant::now() + self.settings.write_timeout;
        if write_client(stream, &bufs.resp_head, write_deadline()).await.is_err() {
            return (Outcome::Close, head.status, Some("client went away".into()));
        }
        match self.relay_body(stream, up, &mut conn, bufs, &mut body).await {
            Ok(()) => {}
            Err(RelayError::Client) => return (Outcome::Close, head.status, Some("client went away".into())),
            Err(RelayError::Upstream(e)) => {
                attempts.failed(&self.settings, &req.route);
                return (Outcome::Close, head.status, Some(e));
            }
        }
        if head.upstream_keep_alive && body.done && !body.extra {
            self.conns.put(up.addr, conn);
        }
        (if client_keeps { Outcome::Next } else { Outcome::Close }, head.status, None)
    }

    /// Reads the response head, passing informational 1xx responses on to the client.
    async fn response_head(
        &self,
        stream: &mut Stream,
        req: &Request,
        up: &Upstream,
        conn: &mut TcpStream,
        bufs: &mut Buffers,
    ) -> Result<ResponseHead, RelayError> {
        let bad = |e: String| Err(RelayError::Upstream(e));
        loop {
            match parse_response(&bufs.upstream, req.is_head, !req.keep_alive, &mut bufs.resp_head) {
                Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                    let _ = bufs.upstream.split_to(h.len);
                    let deadline = tokio::time::Instant::now() + self.settings.write_timeout;
                    if write_client(stream, &bufs.resp_head, deadline).await.is_err() {
                        return Err(RelayError::Client);
                    }
                    continue;
                }
                Ok(Some(h)) if h.status == 101 || h.status < 100 => {
                    return bad(format!("{} answered with status {}", up.addr, h.status));
                }
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(e) => return bad(format!("{}: {e}", up.addr)),
            }
            bufs.upstream.reserve(READ_CHUNK);
            let deadline = tokio::time::Instant::now() + self.settings.read_timeout;
            match timeout_at(deadline, conn.read_buf(&mut bufs.upstream)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) => return bad(format!("{} closed the connection mid-head", up.addr)),
                Ok(Err(e)) => return bad(format!("reading from {}: {e}", up.addr)),
                Err(_) => return bad(format!("{} did not answer in time", up.addr)),
            }
        }
    }

    /// Relays the rest of the body until its framing says it ended.
    async fn relay_body(
        &self,
        stream: &mut Stream,
        up: &Upstream,
        conn: &mut TcpStream,
        bufs: &mut Buffers,
        body: &mut Body,
    ) -> Result<(), RelayError> {
        let bad = |e: String| Err(RelayError::Upstream(e));
        while !body.done {
            bufs.upstream.clear();
            bufs.upstream.reserve(READ_CHUNK);
            let deadline = tokio::time::Instant::now() + self.settings.read_timeout;
            let n = match timeout_at(deadline, conn.read_buf(&mut bufs.upstream)).await {
                Ok(Ok(0)) if body.framing == Framing::UntilClose => return Ok(()),
                Ok(Ok(0)) => return bad(format!("{} closed the connection mid-body", up.addr)),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return bad(format!("reading the body from {}: {e}", up.addr)),
                Err(_) => return bad(format!("{} stopped sending the body", up.addr)),
            };
            let used = match body.take(&bufs.upstream[..n]) {
                Ok(used) => used,
                Err(e) => return bad(format!("{}: {e}", up.addr)),
            };
            let deadline = tokio::time::Instant::now() + self.settings.write_timeout;
            if write_client(stream, &bufs.upstream[..used], deadline).await.is_err() {
                return Err(RelayError::Client);
            }
        }
        Ok(())
    }

    async fn bad_gateway(&self, stream: &mut Stream, req: &Request, error: String) -> Relayed {
        tracing::warn!(service = %req.route.service, status = 502, "bad answer from an instance: {error}");
        let reply = LocalReply::unreachable(&req.route.service);
        let deadline = tokio::time::Instant::now() + self.settings.write_timeout;
        let _ = write_reply(stream, &reply, deadline).await;
        (Outcome::Close, 502, Some(error))
    }

    fn finish(&self, req: &Request, status: u16, started: Instant, attempts: &Attempts, error: Option<String>) {
        let elapsed = started.elapsed();
        req.route.stats.record(status, elapsed);
        if let Some(log) = &self.access_log {
            log.write(&AccessRecord {
                client: req.client,
                method: &req.method,
                host: &req.host,
                path: &req.path,
                status,
                elapsed,
                route: Some(&req.route),
                upstream: attempts.current.as_ref().map(|u| u.addr),
                attempts: attempts.tried.len(),
                error,
            });
        }
    }
}

/// Where a response body stands as its bytes are relayed.
struct Body {
    framing: Framing,
    /// Bytes left of a Content-Length body.
    remaining: u64,
    scanner: ChunkScanner,
    /// The body has ended.
    done: bool,
    /// Bytes came after the body's end (the connection cannot be kept).
    extra: bool,
}

impl Body {
    fn new(framing: Framing) -> Self {
        let remaining = if let Framing::Length(n) = framing { n } else { u64::MAX };
        let done = matches!(framing, Framing::Empty | Framing::Length(0));
        Body { framing, remaining, scanner: ChunkScanner::default(), done, extra: false }
    }

    /// How many bytes of `chunk` belong to the body (the rest comes after its end).
    fn take(&mut self, chunk: &[u8]) -> io::Result<usize> {
        match self.framing {
            Framing::Empty => {
                self.extra |= !chunk.is_empty();
                Ok(0)
            }
            Framing::Length(_) => {
                let n = self.remaining.min(chunk.len() as u64) as usize;
                self.remaining -= n as u64;
                self.done = self.remaining == 0;
                self.extra |= n < chunk.len();
                Ok(n)
            }
            Framing::Chunked => match self.scanner.feed(chunk)? {
                Some(n) => {
                    self.done = true;
                    self.extra |= n < chunk.len();
                    Ok(n)
                }
                None => Ok(chunk.len()),
            },
            Framing::UntilClose => Ok(chunk.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_framing_counts_bytes_and_notices_extra() {
        let mut b = Body::new(Framing::Length(5));
        assert_eq!(b.take(b"hel").expect("ok"), 3);
        assert!(!b.done);
        assert_eq!(b.take(b"loHTTP").expect("ok"), 2);
        assert!(b.done && b.extra, "bytes after the body");
        let mut b = Body::new(Framing::Empty);
        assert!(b.done);
        assert_eq!(b.take(b"x").expect("ok"), 0);
        assert!(b.extra);
        let mut b = Body::new(Framing::Chunked);
        assert_eq!(b.take(b"3\r\nabc\r\n0\r\n\r\n").expect("ok"), 13);
        assert!(b.done && !b.extra);
        assert!(Body::new(Framing::Chunked).take(b"zz\r\n").is_err());
    }
}
