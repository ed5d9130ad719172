//! The fast path: wharf's own forwarding loop for plain HTTP/1.1 requests.
//!
//! Pingora's general HTTP pipeline costs about four times nginx's user-space CPU per request
//! (a task and a timer per pooled upstream connection, two channels and several header maps per
//! request). Most traffic is the simplest shape: HTTP/1.1 over plain TCP, a bodiless or small
//! Content-Length request, a routed service with a healthy instance. [`FastPath`] serves those
//! itself: it parses the head with `httparse`, picks the instance from the same route table,
//! writes the rewritten head to a kept-alive upstream connection from its own pool and relays
//! the response (Content-Length, chunked or until close) straight back.
//!
//! Anything else is handed to Pingora, with the bytes already read put back in front of the
//! stream: TLS, h2c, HTTP/1.0, chunked or large request bodies, `Expect`, `Upgrade`, CONNECT,
//! absolute-form targets, a missing Host, any head `httparse` refuses, and requests with no
//! route or no healthy instance (Pingora writes the 404/503). Once handed over, a connection
//! stays with Pingora. The behaviour is the same on both paths: routing, balancing, X-Forwarded-*
//! headers, retries, passive ejection, timeouts, metrics and the access log.

use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use crate::balance::{HashKey, InflightGuard, Policy, Upstream};
use crate::header_deadline::{DeadlineStream, HeaderDeadline};
use crate::metrics::ProxyMetrics;
use crate::route_table::{Route, RouteTable};
use crate::service::{AccessLog, MAX_HEADER_BYTES, Retry, UpstreamSettings, note_failure};

/// Largest request body the fast path buffers (bigger ones go to Pingora, which streams).
const MAX_FAST_BODY: usize = 64 * 1024;
/// Header fields parsed per request; more hands the request to Pingora.
const MAX_FIELDS: usize = 96;
/// Header fields accepted in a response (many Set-Cookie fields are common).
const MAX_RESPONSE_FIELDS: usize = 512;
/// The HTTP/2 connection preface (h2c with prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Read size for client and upstream buffers.
const READ_CHUNK: usize = 16 * 1024;
/// Idle upstream connections kept per instance.
const MAX_IDLE_PER_UPSTREAM: usize = 256;

/// Kept-alive upstream connections, per instance address.
pub struct UpstreamConns {
    idle: Mutex<std::collections::HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
    idle_timeout: Duration,
}

impl UpstreamConns {
    pub fn new(idle_timeout: Duration) -> Self {
        UpstreamConns { idle: Mutex::new(Default::default()), idle_timeout }
    }

    fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&addr)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < self.idle_timeout && still_idle(&conn) {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, conn: TcpStream) {
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(addr).or_default();
            if list.len() < MAX_IDLE_PER_UPSTREAM {
                list.push((conn, Instant::now()));
            }
        }
    }

    /// Closes connections idle too long or closed by their instance (a stopped backend
    /// leaves them half-closed), and forgets instances with none left.
    fn sweep(&self) {
        let Ok(mut idle) = self.idle.lock() else { return };
        for list in idle.values_mut() {
            list.retain(|(conn, since)| since.elapsed() < self.idle_timeout && still_idle(conn));
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

/// An idle upstream connection is usable only if nothing arrived on it: not a close, and not
/// stray bytes (a 408, or a body after a bodiless answer) that would be read as the next
/// request's response. Like nginx, wharf closes it on either.
fn still_idle(conn: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(conn.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

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

/// The client's address, formatted once per connection.
struct Client {
    ip: IpAddr,
    text: String,
}

/// What the head of the buffered request says.
enum Parsed {
    /// More bytes are needed.
    Partial,
    /// Pingora serves this connection from here on.
    Fallback,
    /// The head is over [`MAX_HEADER_BYTES`].
    TooLarge,
    Ready(Box<Request>),
}

/// A request the fast path forwards.
struct Request {
    head_len: usize,
    body_len: usize,
    route: Arc<Route>,
    hash_key: Option<Vec<u8>>,
    idempotent: bool,
    is_head: bool,
    /// The client wants the connection kept open.
    keep_alive: bool,
    method: String,
    host: String,
    path: String,
    client: Option<IpAddr>,
}

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// How a forwarding attempt failed.
enum Failure {
    /// Nothing reached an instance (connect failed, or a pooled connection the instance had
    /// already closed): safe to try again, whatever the method.
    NotSent { stale: bool, error: String },
    /// The request was sent, no response came.
    NoResponse { timed_out: bool, error: String },
}

/// Names of hop-by-hop fields, lower case, that are never forwarded.
fn is_hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a field named in `Connection` is dropped: never the message's framing or Host (a
/// client listing `Content-Length` there must not turn its body into a second request).
fn listed_hop(tokens: &[&[u8]], name: &str) -> bool {
    !["content-length", "transfer-encoding", "host"].iter().any(|k| name.eq_ignore_ascii_case(k))
        && tokens.iter().any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl<A> FastPath<A> {
    /// Parses the buffered request and, when the fast path takes it, writes the head to send
    /// upstream into `out`.
    fn parse(&self, buf: &[u8], client: Option<&Client>, out: &mut Vec<u8>) -> Parsed {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return if buf.len() > MAX_HEADER_BYTES { Parsed::TooLarge } else { Parsed::Partial };
            }
            Err(_) => return Parsed::Fallback,
        };
        if head_len > MAX_HEADER_BYTES {
            return Parsed::TooLarge;
        }
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::Fallback;
        };
        if method == "CONNECT" || !target.starts_with('/') {
            return Parsed::Fallback;
        }
        let mut host: Option<&[u8]> = None;
        let mut length: Option<u64> = None;
        let mut keep_alive = true;
        let mut connection_tokens: Vec<&[u8]> = Vec::new();
        for f in req.headers.iter() {
            let name = f.name;
            if name.eq_ignore_ascii_case("host") {
                if host.is_some() {
                    return Parsed::Fallback;
                }
                host = Some(f.value);
            } else if name.eq_ignore_ascii_case("content-length") {
                match (parse_length(f.value), length) {
                    (Some(n), None) => length = Some(n),
                    _ => return Parsed::Fallback,
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("upgrade")
                || name.eq_ignore_ascii_case("expect")
            {
                return Parsed::Fallback;
            } else if name.eq_ignore_ascii_case("connection") {
                if has_token(f.value, "upgrade") {
                    return Parsed::Fallback;
                }
                if has_token(f.value, "close") {
                    keep_alive = false;
                }
                connection_tokens.extend(f.value.split(|&b| b == b',').map(<[u8]>::trim_ascii));
            }
        }
        let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()).filter(|h| !h.is_empty()) else {
            return Parsed::Fallback;
        };
        let body_len = match length {
            Some(n) if n > MAX_FAST_BODY as u64 => return Parsed::Fallback,
            Some(n) => n as usize,
            None => 0,
        };
        let path = target.split(['?', '#']).next().unwrap_or(target);
        let table = self.table.load();
        let Some(route) = table.lookup(host, path) else { return Parsed::Fallback };
        if route.pool.is_empty() {
            return Parsed::Fallback;
        }
        let hash_key = match &route.pool.policy {
            Policy::Hash(HashKey::Header(name)) => {
                req.headers.iter().find(|f| f.name.eq_ignore_ascii_case(name)).map(|f| f.value.to_vec())
            }
            Policy::Hash(HashKey::Cookie(name)) => {
                let values: Vec<&[u8]> =
                    req.headers.iter().filter(|f| f.name.eq_ignore_ascii_case("cookie")).map(|f| f.value).collect();
                crate::request::cookie_value(&values, name)
            }
            Policy::Hash(HashKey::ClientIp) => client.map(|c| c.text.as_bytes().to_vec()),
            _ => None,
        };

        // The head sent upstream: the target (prefix stripped), end-to-end fields as they
        // came, then wharf's X-Forwarded-* fields.
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        match route.strip.as_deref().and_then(|s| target.strip_prefix(s)) {
            Some(rest) if rest.starts_with('/') => out.extend_from_slice(rest.as_bytes()),
            Some(rest) => {
                out.push(b'/');
                out.extend_from_slice(rest.as_bytes());
            }
            None => out.extend_from_slice(target.as_bytes()),
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut forwarded_for: Vec<&[u8]> = Vec::new();
        for f in req.headers.iter() {
            let name = f.name;
            if is_hop_by_hop(name)
                || listed_hop(&connection_tokens, name)
                || name.eq_ignore_ascii_case("x-real-ip")
                || name.eq_ignore_ascii_case("x-forwarded-proto")
                || name.eq_ignore_ascii_case("x-forwarded-host")
            {
                continue;
            }
            if name.eq_ignore_ascii_case("x-forwarded-for") {
                forwarded_for.push(f.value);
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(f.value);
            out.extend_from_slice(b"\r\n");
        }
        let ip = client.map(|c| c.text.as_str());
        const XFF: &[u8] = b"X-Forwarded-For: ";
        out.extend_from_slice(XFF);
        if crate::request::append_forwarded_for(&forwarded_for, ip, out) {
            out.extend_from_slice(b"\r\n");
        } else {
            out.truncate(out.len() - XFF.len());
        }
        if let Some(ip) = ip {
            out.extend_from_slice(b"X-Real-IP: ");
            out.extend_from_slice(ip.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");

        Parsed::Ready(Box::new(Request {
            head_len,
            body_len,
            route: route.clone(),
            hash_key,
            idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"),
            is_head: method == "HEAD",
            keep_alive,
            // Only the access log needs these.
            method: if self.access_log.is_some() { method.to_string() } else { String::new() },
            host: if self.access_log.is_some() { host.to_string() } else { String::new() },
            path: if self.access_log.is_some() { path.to_string() } else { String::new() },
            client: client.map(|c| c.ip),
        }))
    }
}

/// A response head read from an instance, rewritten for the client.
struct ResponseHead {
    status: u16,
    framing: Framing,
    /// The instance keeps the connection open after this response.
    upstream_keep_alive: bool,
    /// Length of the head in the upstream buffer.
    len: usize,
}

/// Parses a response head in `buf`; writes the client's version of it into `out` (hop-by-hop
/// fields dropped, `Connection: close` added when `closing`, or when the body ends at close).
fn parse_response(buf: &[u8], is_head: bool, closing: bool, out: &mut Vec<u8>) -> io::Result<Option<ResponseHead>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    if let Err(httparse::Error::TooManyHeaders) = httparse::Response::new(&mut fields).parse(buf) {
        let mut many = vec![httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
        return parse_response_in(buf, is_head, closing, out, &mut many);
    }
    parse_response_in(buf, is_head, closing, out, &mut fields)
}

fn parse_response_in<'b>(
    buf: &'b [u8],
    is_head: bool,
    closing: bool,
    out: &mut Vec<u8>,
    fields: &mut [httparse::Header<'b>],
) -> io::Result<Option<ResponseHead>> {
    let mut resp = httparse::Response::new(fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEADER_BYTES => {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("malformed response head: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let mut chunked = false;
    let mut other_coding = false;
    let mut length: Option<u64> = None;
    let mut upstream_keep_alive = resp.version == Some(1);
    let mut connection_tokens: Vec<&[u8]> = Vec::new();
    for f in resp.headers.iter() {
        if f.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = f.value.split(|&b| b == b',').next_back().map(<[u8]>::trim_ascii).unwrap_or_default();
            chunked = last.eq_ignore_ascii_case(b"chunked");
            other_coding |= !chunked;
        } else if f.name.eq_ignore_ascii_case("content-length") {
            match (parse_length(f.value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "invalid or conflicting Content-Length")),
            }
        } else if f.name.eq_ignore_ascii_case("connection") {
            if has_token(f.value, "close") {
                upstream_keep_alive = false;
            }
            if resp.version == Some(0) && has_token(f.value, "keep-alive") {
                upstream_keep_alive = true;
            }
            connection_tokens.extend(f.value.split(|&b| b == b',').map(<[u8]>::trim_ascii));
        }
    }
    let framing = if is_head || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Empty
    } else if chunked && !other_coding {
        Framing::Chunked
    } else if other_coding {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose {
        upstream_keep_alive = false;
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let _ = write!(out, "{status}");
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for f in resp.headers.iter() {
        let keep_te = f.name.eq_ignore_ascii_case("transfer-encoding") && framing == Framing::Chunked;
        // A chunked body is relayed as it came: its Content-Length, if any, would contradict it.
        let contradicting = framing == Framing::Chunked && f.name.eq_ignore_ascii_case("content-length");
        if (is_hop_by_hop(f.name) && !keep_te && !f.name.eq_ignore_ascii_case("trailer"))
            || listed_hop(&connection_tokens, f.name)
            || contradicting
        {
            continue;
        }
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    if (closing || framing == Framing::UntilClose) && !(100..200).contains(&status) {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead { status, framing, upstream_keep_alive, len }))
}

/// Finds the end of a chunked body in the bytes relayed through it.
#[derive(Debug, Default)]
struct ChunkScanner {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    LineStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl ChunkScanner {
    /// Feeds relayed bytes; `Ok(Some(n))` when the body ended after `n` of them.
    fn feed(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        use ChunkState::*;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body");
        let lf = |b: u8| if b == b'\n' { Ok(()) } else { Err(bad()) };
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(bad());
                        }
                        self.size = self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Ext,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err(bad()),
                },
                Ext => match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' => return Err(bad()),
                    _ => {}
                },
                SizeLf => {
                    lf(b)?;
                    self.end_size_line();
                }
                Data => {
                    let take = self.size.min((bytes.len() - i) as u64) as usize;
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => match b {
                    b'\r' => self.state = DataLf,
                    _ => return Err(bad()),
                },
                DataLf => {
                    lf(b)?;
                    self.state = Size;
                }
                LineStart => match b {
                    b'\r' => self.state = EndLf,
                    b'\n' => return Err(bad()),
                    _ => self.state = TrailerLine,
                },
                TrailerLine => match b {
                    b'\r' => self.state = TrailerLf,
                    b'\n' => return Err(bad()),
                    _ => {}
                },
                TrailerLf => {
                    lf(b)?;
                    self.state = LineStart;
                }
                EndLf => {
                    lf(b)?;
                    self.state = Done;
                    return Ok(Some(i + 1));
                }
                Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }

    fn end_size_line(&mut self) {
        self.state = if self.size == 0 { ChunkState::LineStart } else { ChunkState::Data };
        self.digits = 0;
    }
}

/// Why serving a connection stopped.
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

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

async fn write_client(stream: &mut Stream, bytes: &[u8], deadline: tokio::time::Instant) -> io::Result<()> {
    timeout_at(deadline, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| timed_out("writing to the client"))?
}

/// A response wharf writes itself (431, 502, 504), after which the connection closes.
async fn write_closing(stream: &mut Stream, code: u16, body: &str, deadline: tokio::time::Instant) -> io::Result<()> {
    let reason = http::StatusCode::from_u16(code).ok().and_then(|c| c.canonical_reason()).unwrap_or("");
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    write_client(stream, resp.as_bytes(), deadline).await
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
        let accepted = tokio::time::Instant::now();
        loop {
            // Idle between requests: wait for the next one's first byte.
            if bufs.client.is_empty() {
                if !first && *shutdown.borrow() {
                    return None;
                }
                // A new connection's first request is due within the header timeout.
                let wait = if first && !self.header_timeout.is_zero() {
                    self.header_timeout
                } else {
                    self.settings.client_keepalive
                };
                let idle = tokio::time::Instant::now() + wait;
                bufs.client.reserve(READ_CHUNK);
                tokio::select! {
                    r = timeout_at(idle, stream.read_buf(&mut bufs.client)) => match r {
                        Ok(Ok(n)) if n > 0 => {}
                        Err(_) if first => {
                            self.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                            return None;
                        }
                        _ => return None,
                    },
                    _ = shutdown.changed(), if !first => return None,
                }
            }
            // The clock runs from the first byte of a kept-alive connection's next request, and
            // from the hand-over for a new connection's first.
            let header_deadline = match (self.header_timeout.is_zero(), first) {
                (true, _) => far_future(),
                (false, true) => accepted + self.header_timeout,
                (false, false) => tokio::time::Instant::now() + self.header_timeout,
            };
            // Read until the head is complete.
            let request = loop {
                if first && H2_PREFACE.starts_with(&bufs.client[..bufs.client.len().min(H2_PREFACE.len())]) {
                    if bufs.client.len() >= H2_PREFACE.len() {
                        return self.hand_over(stream, bufs.client, &shutdown, header_deadline).await;
                    }
                } else {
                    match self.parse(&bufs.client, client.as_ref(), &mut bufs.out) {
                        Parsed::Ready(r) => break r,
                        Parsed::Fallback => {
                            return self.hand_over(stream, bufs.client, &shutdown, header_deadline).await;
                        }
                        Parsed::TooLarge => {
                            let body = "wharf: request header fields too large\n";
                            let _ = write_closing(&mut stream, 431, body, header_deadline).await;
                            return None;
                        }
                        Parsed::Partial => {}
                    }
                }
                bufs.client.reserve(READ_CHUNK);
                match timeout_at(header_deadline, stream.read_buf(&mut bufs.client)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return None,
                    Err(_) => {
                        self.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                }
            };
            first = false;
            match self.forward(&mut stream, &request, &mut bufs).await {
                Outcome::Next => {}
                Outcome::Close => {
                    let _ = stream.shutdown().await;
                    return None;
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
        deadline: tokio::time::Instant,
    ) -> Option<Stream> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.fallback.process_prefixed(stream, read.freeze(), shutdown, left).await
    }

    /// Forwards one parsed request (head rewritten in `bufs.out`) and relays the response.
    async fn forward(&self, stream: &mut Stream, req: &Request, bufs: &mut Buffers) -> Outcome {
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

        let route = &req.route;
        let mut tried: Vec<SocketAddr> = Vec::with_capacity(2);
        let mut retries_used = 0;
        let mut fresh_only = false;
        let mut last: Option<Arc<Upstream>> = None;
        let mut last_error: Option<String> = None;
        let mut inflight: Option<InflightGuard> = None;
        let result = loop {
            let up = match (fresh_only, last.as_ref()) {
                (true, Some(up)) => up.clone(),
                _ => match route.pool.select(req.hash_key.as_deref(), &tried) {
                    Some(up) => {
                        tried.push(up.addr);
                        up
                    }
                    None => break Err(502),
                },
            };
            let reuse = !fresh_only;
            fresh_only = false;
            last = Some(up.clone());
            inflight = Some(InflightGuard::new(up.state.clone()));
            match self.attempt(&up, reuse, req.idempotent, &mut bufs.out, &mut bufs.upstream).await {
                Ok(conn) => break Ok((up, conn)),
                Err(Failure::NotSent { stale: true, error }) => {
                    // A pooled connection the instance had closed (it is often stopping): try
                    // another instance, or a fresh connection when none is left. Neither counts
                    // against the instance or the retry budget.
                    last_error = Some(error);
                    fresh_only = !route.pool.has_untried(&tried);
                }
                Err(Failure::NotSent { stale: false, error }) => {
                    note_failure(&self.settings, route, &up);
                    last_error = Some(error);
                    if !route.pool.has_untried(&tried) {
                        break Err(502);
                    }
                    route.service_stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                Err(Failure::NoResponse { timed_out, error }) => {
                    note_failure(&self.settings, route, &up);
                    last_error = Some(error);
                    let untried = route.pool.has_untried(&tried);
                    match self.settings.retry_after_send(req.idempotent, !timed_out, retries_used, untried) {
                        Retry::No => break Err(if timed_out { 504 } else { 502 }),
                        Retry::Free => {}
                        Retry::Budgeted => retries_used += 1,
                    }
                    route.service_stats.retries.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let (up, conn) = match result {
            Ok(x) => x,
            Err(code) => {
                tracing::warn!(service = %route.service, attempts = tried.len(), status = code,
                    "request failed: {}", last_error.as_deref().unwrap_or("every instance was tried"));
                let body = if code == 504 {
                    format!("wharf: service {:?} did not answer in time\n", route.service)
                } else {
                    format!("wharf: could not reach an instance of service {:?}\n", route.service)
                };
                let deadline = tokio::time::Instant::now() + self.settings.write_timeout;
                let _ = write_closing(stream, code, &body, deadline).await;
                self.finish(req, code, started, last.as_deref(), tried.len(), last_error);
                return Outcome::Close;
            }
        };
        let (outcome, status, error) = self.relay(stream, req, &up, conn, bufs).await;
        drop(inflight);
        self.finish(req, status, started, Some(&up), tried.len(), error);
        outcome
    }

    /// Sends the request on a pooled or new connection and reads the response head into
    /// `upstream`.
    async fn attempt(
        &self,
        up: &Upstream,
        reuse: bool,
        idempotent: bool,
        request: &mut [u8],
        upstream: &mut BytesMut,
    ) -> Result<TcpStream, Failure> {
        let pooled = if reuse { self.conns.take(up.addr) } else { None };
        let stale = pooled.is_some();
        // Once the request is out, a pooled connection that closes without an answer is retried
        // only for an idempotent request: the instance may have acted on it (nginx does the same).
        let stale_after_send = stale && idempotent;
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let deadline = tokio::time::Instant::now() + self.settings.connect_timeout;
                match timeout_at(deadline, TcpStream::connect(up.addr)).await {
                    Ok(Ok(c)) => {
                        let _ = c.set_nodelay(true);
                        c
                    }
                    Ok(Err(e)) => {
                        return Err(Failure::NotSent {
                            stale: false,
                            error: format!("connecting to {}: {e}", up.addr),
                        });
                    }
                    Err(_) => {
                        return Err(Failure::NotSent {
                            stale: false,
                            error: format!("connecting to {} timed out", up.addr),
                        });
                    }
                }
            }
        };
        let deadline = tokio::time::Instant::now() + self.settings.write_timeout;
        match timeout_at(deadline, conn.write_all(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Failure::NotSent { stale, error: format!("sending to {}: {e}", up.addr) });
            }
            Err(_) => {
                return Err(Failure::NoResponse {
                    timed_out: true,
                    error: format!("sending to {} timed out", up.addr),
                });
            }
        }
        upstream.clear();
        let deadline = tokio::time::Instant::now() + self.settings.read_timeout;
        upstream.reserve(READ_CHUNK);
        match timeout_at(deadline, conn.read_buf(upstream)).await {
            Ok(Ok(n)) if n > 0 => Ok(conn),
            Ok(Ok(_)) => Err(if stale_after_send {
                Failure::NotSent { stale, error: format!("{} closed the kept-alive connection", up.addr) }
            } else {
                Failure::NoResponse { timed_out: false, error: format!("{} closed the connection", up.addr) }
            }),
            Ok(Err(e)) if stale_after_send && e.kind() == io::ErrorKind::ConnectionReset => {
                Err(Failure::NotSent { stale, error: format!("{} reset the kept-alive connection", up.addr) })
            }
            Ok(Err(e)) => {
                Err(Failure::NoResponse { timed_out: false, error: format!("reading from {}: {e}", up.addr) })
            }
            Err(_) => {
                Err(Failure::NoResponse { timed_out: true, error: format!("{} did not answer in time", up.addr) })
            }
        }
    }

    /// Relays the response whose first bytes are in `bufs.upstream`. Returns what to do with
    /// the client connection, the status sent and any error.
    async fn relay(
        &self,
        stream: &mut Stream,
        req: &Request,
        up: &Upstream,
        mut conn: TcpStream,
        bufs: &mut Buffers,
    ) -> (Outcome, u16, Option<String>) {
        let route = &req.route;
        let read_deadline = || tokio::time::Instant::now() + self.settings.read_timeout;
        let write_deadline = || tokio::time::Instant::now() + self.settings.write_timeout;
        let upstream_error = |e: String| {
            note_failure(&self.settings, route, up);
            e
        };
        // The head (skipping informational 1xx responses, which are passed on).
        let head = loop {
            match parse_response(&bufs.upstream, req.is_head, !req.keep_alive, &mut bufs.resp_head) {
                Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                    let _ = bufs.upstream.split_to(h.len);
                    if write_client(stream, &bufs.resp_head, write_deadline()).await.is_err() {
                        return (Outcome::Close, 0, Some("client went away".into()));
                    }
                    continue;
                }
                Ok(Some(h)) if h.status == 101 || h.status < 100 => {
                    let e = upstream_error(format!("{} answered with status {}", up.addr, h.status));
                    return self.bad_gateway(stream, req, e).await;
                }
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    let e = upstream_error(format!("{}: {e}", up.addr));
                    return self.bad_gateway(stream, req, e).await;
                }
            }
            bufs.upstream.reserve(READ_CHUNK);
            match timeout_at(read_deadline(), conn.read_buf(&mut bufs.upstream)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) => {
                    let e = upstream_error(format!("{} closed the connection mid-head", up.addr));
                    return self.bad_gateway(stream, req, e).await;
                }
                Ok(Err(e)) => {
                    let e = upstream_error(format!("reading from {}: {e}", up.addr));
                    return self.bad_gateway(stream, req, e).await;
                }
                Err(_) => {
                    let e = upstream_error(format!("{} did not answer in time", up.addr));
                    return self.bad_gateway(stream, req, e).await;
                }
            }
        };
        if head.status >= 500 && head.status != 501 {
            note_failure(&self.settings, route, up);
        } else {
            up.state.record_success();
        }
        let _ = bufs.upstream.split_to(head.len);
        let client_keeps = req.keep_alive && head.framing != Framing::UntilClose;

        // The body: first what is already buffered, sent with the head in one write.
        let mut scanner = ChunkScanner::default();
        let mut remaining = match head.framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let mut done = matches!(head.framing, Framing::Empty | Framing::Length(0));
        let mut extra = false;
        let mut take = |chunk: &[u8], remaining: &mut u64, done: &mut bool, extra: &mut bool| -> io::Result<usize> {
            match head.framing {
                Framing::Empty => {
                    *extra |= !chunk.is_empty();
                    Ok(0)
                }
                Framing::Length(_) => {
                    let n = (*remaining).min(chunk.len() as u64) as usize;
                    *remaining -= n as u64;
                    *done = *remaining == 0;
                    *extra |= n < chunk.len();
                    Ok(n)
                }
                Framing::Chunked => match scanner.feed(chunk)? {
                    Some(n) => {
                        *done = true;
                        *extra |= n < chunk.len();
                        Ok(n)
                    }
                    None => Ok(chunk.len()),
                },
                Framing::UntilClose => Ok(chunk.len()),
            }
        };
        let n = match take(&bufs.upstream, &mut remaining, &mut done, &mut extra) {
            Ok(n) => n,
            Err(e) => {
                let e = upstream_error(format!("{}: {e}", up.addr));
                return self.bad_gateway(stream, req, e).await;
            }
        };
        bufs.resp_head.extend_from_slice(&bufs.upstream[..n]);
        if write_client(stream, &bufs.resp_head, write_deadline()).await.is_err() {
            return (Outcome::Close, head.status, Some("client went away".into()));
        }
        while !done {
            bufs.upstream.clear();
            bufs.upstream.reserve(READ_CHUNK);
            let n = match timeout_at(read_deadline(), conn.read_buf(&mut bufs.upstream)).await {
                Ok(Ok(0)) if head.framing == Framing::UntilClose => break,
                Ok(Ok(0)) => {
                    let e = upstream_error(format!("{} closed the connection mid-body", up.addr));
                    return (Outcome::Close, head.status, Some(e));
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    let e = upstream_error(format!("reading the body from {}: {e}", up.addr));
                    return (Outcome::Close, head.status, Some(e));
                }
                Err(_) => {
                    let e = upstream_error(format!("{} stopped sending the body", up.addr));
                    return (Outcome::Close, head.status, Some(e));
                }
            };
            let used = match take(&bufs.upstream[..n], &mut remaining, &mut done, &mut extra) {
                Ok(u) => u,
                Err(e) => {
                    let e = upstream_error(format!("{}: {e}", up.addr));
                    return (Outcome::Close, head.status, Some(e));
                }
            };
            if write_client(stream, &bufs.upstream[..used], write_deadline()).await.is_err() {
                return (Outcome::Close, head.status, Some("client went away".into()));
            }
        }
        if head.upstream_keep_alive && done && !extra {
            self.conns.put(up.addr, conn);
        }
        (if client_keeps { Outcome::Next } else { Outcome::Close }, head.status, None)
    }

    async fn bad_gateway(&self, stream: &mut Stream, req: &Request, error: String) -> (Outcome, u16, Option<String>) {
        tracing::warn!(service = %req.route.service, status = 502, "bad answer from an instance: {error}");
        let body = format!("wharf: could not reach an instance of service {:?}\n", req.route.service);
        let deadline = tokio::time::Instant::now() + self.settings.write_timeout;
        let _ = write_closing(stream, 502, &body, deadline).await;
        (Outcome::Close, 502, Some(error))
    }

    fn finish(
        &self,
        req: &Request,
        status: u16,
        started: Instant,
        up: Option<&Upstream>,
        attempts: usize,
        error: Option<String>,
    ) {
        let elapsed = started.elapsed();
        req.route.stats.record(status, elapsed);
        if let Some(log) = &self.access_log {
            log.request(
                req.client,
                &req.method,
                &req.host,
                &req.path,
                status,
                elapsed,
                Some(&req.route),
                up.map(|u| u.addr),
                attempts,
                error,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8]) -> io::Result<Option<usize>> {
        ChunkScanner::default().feed(body)
    }

    #[test]
    fn chunked_end_is_found_whole_and_byte_by_byte() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        assert_eq!(scan_all(body).expect("valid"), Some(body.len() - 4));
        let mut s = ChunkScanner::default();
        let mut end = None;
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = s.feed(std::slice::from_ref(b)).expect("valid") {
                end = Some(i + n);
                break;
            }
        }
        assert_eq!(end, Some(body.len() - 4));
        assert_eq!(scan_all(b"0\r\n\r\n").expect("valid"), Some(5));
        assert_eq!(scan_all(b"a\r\n0123456789\r\n").expect("valid"), None);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        assert!(scan_all(b"zz\r\n").is_err());
        assert!(scan_all(b"5\r\nhelloXX").is_err());
        assert!(scan_all(b"ffffffffffffffffff\r\n").is_err());
        assert!(scan_all(b"\r\n").is_err());
        // Line ends are CRLF only, so wharf and the client agree on where the body ends.
        assert!(scan_all(b"5\nhello\r\n").is_err());
        assert!(scan_all(b"5\r\nhello\n").is_err());
        assert!(scan_all(b"0\r\nX: y\n\r\n").is_err());
        assert!(scan_all(b"0\r\n\n").is_err());
    }

    #[test]
    fn response_heads_are_framed_and_cleaned() {
        let mut out = Vec::new();
        let h = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\r\nhello",
            false,
            false,
            &mut out,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!((h.status, h.framing, h.upstream_keep_alive), (200, Framing::Length(5), true));
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");

        let h = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, true, &mut out)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");

        let h = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", false, false, &mut out).expect("valid").expect("complete");
        assert_eq!((h.framing, h.upstream_keep_alive), (Framing::UntilClose, false));
        let h = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false, &mut out)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.framing, Framing::Empty);
        let h = parse_response(b"HTTP/1.1 304 Not Modified\r\n\r\n", false, false, &mut out)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.framing, Framing::Empty);
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                false,
                &mut out
            )
            .is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", false, false, &mut out).expect("valid").is_none());

        // Framing fields survive a Connection header naming them; a chunked answer's
        // Content-Length is dropped.
        let h = parse_response(
            b"HTTP/1.1 200 OK\r\nConnection: content-length, transfer-encoding\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
            false,
            &mut out,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");

        // Hundreds of Set-Cookie fields are fine.
        let mut many = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
        for i in 0..300 {
            many.extend_from_slice(format!("Set-Cookie: c{i}=v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let h = parse_response(&many, false, false, &mut out).expect("valid").expect("complete");
        assert_eq!(h.framing, Framing::Length(0));
        assert_eq!(out.windows(10).filter(|w| w == b"Set-Cookie").count(), 300);
    }

    #[test]
    fn tokens_and_lengths() {
        assert!(has_token(b"keep-alive, Close", "close"));
        assert!(!has_token(b"closed", "close"));
        assert_eq!(parse_length(b" 12 "), Some(12));
        assert_eq!(parse_length(b"+12"), None);
        assert_eq!(parse_length(b"1,2"), None);
    }
}
