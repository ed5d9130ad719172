//! The Pingora `ProxyHttp` implementation: per request, one `ArcSwap::load` of the route
//! table, a lookup, an instance choice, and proxying with retries, passive ejection,
//! X-Forwarded-* headers, metrics and an optional access log.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};

use crate::balance::{HashKey, InflightGuard, Policy, Upstream};
use crate::metrics::ProxyMetrics;
use crate::route_table::{Route, RouteTable};

/// Timeouts, retries and ejection, with their units.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long an idle upstream keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Idle time allowed on a client keep-alive connection.
    pub client_keepalive: Duration,
    /// Extra attempts on another instance after an upstream timeout, for idempotent requests
    /// (connection failures before sending are always retried, and an idempotent request whose
    /// connection closed without an answer is tried on every other instance).
    pub retries: usize,
    /// Consecutive failures that eject an instance (0 = never).
    pub eject_after: u32,
    pub eject_for: Duration,
}

/// How a request that failed after it was sent may be tried again.
#[derive(Debug, PartialEq)]
pub(crate) enum Retry {
    No,
    /// On another instance, outside the budget.
    Free,
    /// On another instance, using one of `retries`.
    Budgeted,
}

impl UpstreamSettings {
    /// The rule both paths follow once a request is out: only idempotent requests are tried
    /// again, and only on an instance not tried yet. One whose connection closed or reset without
    /// an answer (a stopping instance, or Docker's port proxy in front of a dead container) is
    /// tried on every other instance, like nginx's `proxy_next_upstream error`; anything else,
    /// timeouts above all, which are costly, uses the retry budget.
    pub(crate) fn retry_after_send(
        &self,
        idempotent: bool,
        closed_without_answer: bool,
        retries_used: usize,
        untried: bool,
    ) -> Retry {
        if !idempotent || !untried {
            Retry::No
        } else if closed_without_answer {
            Retry::Free
        } else if retries_used < self.retries {
            Retry::Budgeted
        } else {
            Retry::No
        }
    }
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            client_keepalive: Duration::from_secs(60),
            retries: 2,
            eject_after: 5,
            eject_for: Duration::from_secs(10),
        }
    }
}

/// Largest request head accepted (request line plus headers); larger gets 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A JSON-lines access log (off by default).
pub struct AccessLog(Mutex<Box<dyn Write + Send>>);

impl AccessLog {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        AccessLog(Mutex::new(out))
    }

    fn write(&self, line: &serde_json::Value) {
        if let Ok(mut w) = self.0.lock() {
            let _ = writeln!(w, "{line}");
        }
    }

    /// One request's line; both the Pingora path and the fast path write the same fields.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn request(
        &self,
        client: Option<std::net::IpAddr>,
        method: &str,
        host: &str,
        path: &str,
        status: u16,
        elapsed: Duration,
        route: Option<&Route>,
        upstream: Option<SocketAddr>,
        attempts: usize,
        error: Option<String>,
    ) {
        self.write(&serde_json::json!({
            "time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            "client": client.map(|ip| ip.to_string()),
            "method": method,
            "host": host,
            "path": path,
            "status": status,
            "duration_ms": elapsed.as_secs_f64() * 1000.0,
            "service": route.map(|r| r.service.as_str()),
            "route": route.map(|r| r.label.as_str()),
            "upstream": upstream.map(|u| u.to_string()),
            "attempts": attempts,
            "error": error,
        }));
    }
}

/// Counts an upstream failure against an instance and ejects it after too many in a row.
pub(crate) fn note_failure(settings: &UpstreamSettings, route: &Route, up: &Upstream) {
    route.service_stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
    if up.state.record_failure(settings.eject_after, settings.eject_for.as_millis() as u64) {
        route.service_stats.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(service = %route.service, instance = %up.id, addr = %up.addr,
            "instance ejected for {:?} after {} consecutive failures", settings.eject_for, settings.eject_after);
    }
}

pub struct WharfProxy {
    pub table: Arc<ArcSwap<RouteTable>>,
    pub settings: UpstreamSettings,
    pub metrics: Arc<ProxyMetrics>,
    pub access_log: Option<Arc<AccessLog>>,
}

#[derive(Default)]
pub struct Ctx {
    route: Option<Arc<Route>>,
    hash_key: Option<Vec<u8>>,
    tried: Vec<SocketAddr>,
    current: Option<Arc<Upstream>>,
    inflight: Option<InflightGuard>,
    retries_used: usize,
    started: Option<Instant>,
    /// Status of a response this proxy wrote itself (404/503).
    local_status: Option<u16>,
}

fn request_host(req: &RequestHeader) -> String {
    req.headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

fn cookie_value(req: &RequestHeader, name: &str) -> Option<Vec<u8>> {
    let values: Vec<&[u8]> = req.headers.get_all("cookie").iter().map(|v| v.as_bytes()).collect();
    crate::request::cookie_value(&values, name)
}

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
}

async fn write_local(session: &mut Session, status: u16, body: String) -> Result<()> {
    let body = Bytes::from(body);
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header("Content-Type", "text/plain; charset=utf-8")?;
    resp.insert_header("Content-Length", body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

impl WharfProxy {
    fn record_failure(&self, ctx: &Ctx) {
        if let (Some(route), Some(up)) = (&ctx.route, &ctx.current) {
            note_failure(&self.settings, route, up);
        }
    }

    /// Whether another instance is left to try.
    fn has_untried(&self, ctx: &Ctx) -> bool {
        ctx.route.as_ref().is_some_and(|r| r.pool.has_untried(&ctx.tried))
    }
}

#[async_trait]
impl ProxyHttp for WharfProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx { started: Some(Instant::now()), ..Default::default() }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let req = session.req_header();
        // Pingora drops Content-Length when Transfer-Encoding is present and turns
        // keep-alive off; a keep-alive-capable HTTP/1.1 request that arrives with keep-alive
        // off and chunked framing had both. wharf refuses that smuggling shape outright.
        let closing = req
            .headers
            .get("connection")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        if !session.is_http2()
            && req.version == http::Version::HTTP_11
            && req.headers.contains_key("transfer-encoding")
            && session.get_keepalive().is_none()
            && !closing
        {
            ctx.local_status = Some(400);
            return Err(Error::explain(
                ErrorType::HTTPStatus(400),
                "Content-Length together with Transfer-Encoding is refused",
            ));
        }
        let header_bytes: usize =
            req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>() + req.uri.to_string().len();
        if header_bytes > MAX_HEADER_BYTES {
            ctx.local_status = Some(431);
            return Err(Error::explain(
                ErrorType::HTTPStatus(431),
                format!("request headers of {header_bytes} bytes exceed {MAX_HEADER_BYTES}"),
            ));
        }
        // Pingora keeps idle HTTP/1.1 connections forever unless told otherwise.
        session.set_keepalive(Some(self.settings.client_keepalive.as_secs().max(1)));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        let host = request_host(req);
        let path = req.uri.path().to_string();
        let table = self.table.load();
        let Some(route) = table.lookup(&host, &path) else {
            self.metrics.unrouted.fetch_add(1, Ordering::Relaxed);
            ctx.local_status = Some(404);
            write_local(session, 404, format!("wharf: no route for host {host:?} and path {path:?}\n")).await?;
            return Ok(true);
        };
        if route.pool.is_empty() {
            ctx.route = Some(route.clone());
            ctx.local_status = Some(503);
            let body = format!("wharf: service {:?} has no healthy instance\n", route.service);
            write_local(session, 503, body).await?;
            return Ok(true);
        }
        ctx.hash_key = match &route.pool.policy {
            Policy::Hash(HashKey::Header(name)) => req.headers.get(name.as_str()).map(|v| v.as_bytes().to_vec()),
            Policy::Hash(HashKey::Cookie(name)) => cookie_value(req, name),
            Policy::Hash(HashKey::ClientIp) => client_ip(session).map(|ip| ip.to_string().into_bytes()),
            _ => None,
        };
        ctx.route = Some(route.clone());
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(Error::explain(ErrorType::HTTPStatus(500), "no route chosen"));
        };
        let Some(up) = route.pool.select(ctx.hash_key.as_deref(), &ctx.tried) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                format!("every instance of service {:?} failed", route.service),
            ));
        };
        ctx.tried.push(up.addr);
        ctx.inflight = Some(InflightGuard::new(up.state.clone()));
        ctx.current = Some(up.clone());
        let mut peer = HttpPeer::new(up.addr, false, String::new());
        peer.options.connection_timeout = Some(self.settings.connect_timeout);
        peer.options.total_connection_timeout = Some(self.settings.connect_timeout);
        peer.options.write_timeout = Some(self.settings.write_timeout);
        peer.options.idle_timeout = Some(self.settings.idle_timeout);
        if session.is_upgrade_req() {
            // A WebSocket may stay quiet for long; both directions wait without a deadline.
            peer.options.read_timeout = None;
            session.set_read_timeout(None);
        } else {
            peer.options.read_timeout = Some(self.settings.read_timeout);
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.record_failure(ctx);
        // Nothing was sent: always safe to try another instance.
        if self.has_untried(ctx) {
            e.set_retry(true);
            if let Some(r) = &ctx.route {
                r.service_stats.retries.fetch_add(1, Ordering::Relaxed);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if matches!(e.esource(), ErrorSource::Upstream) {
            self.record_failure(ctx);
        }
        let idempotent = session.req_header().method.is_idempotent();
        let timed_out = matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::WriteTimedout);
        let truncated = session.as_ref().retry_buffer_truncated();
        if client_reused && !truncated && matches!(e.retry, RetryType::ReusedOnly) && self.has_untried(ctx) {
            // A pooled upstream connection that the instance had closed (it is stopping, or
            // its idle timeout passed): the request never reached it. Always retried, on
            // another instance, without using the retry budget, like a failed connect.
            e.set_retry(true);
        } else if truncated {
            e.set_retry(false);
        } else {
            let closed = !timed_out && matches!(e.esource(), ErrorSource::Upstream);
            match self.settings.retry_after_send(idempotent, closed, ctx.retries_used, self.has_untried(ctx)) {
                Retry::Free => e.set_retry(true),
                Retry::Budgeted => {
                    ctx.retries_used += 1;
                    e.set_retry(true);
                }
                Retry::No if !idempotent => e.set_retry(false),
                Retry::No => e.retry.decide_reuse(client_reused),
            }
        }
        if e.retry()
            && let Some(r) = &ctx.route
        {
            r.service_stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let ip = client_ip(session).map(|ip| ip.to_string());
        let values: Vec<&[u8]> = upstream.headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes()).collect();
        let mut chain = Vec::new();
        if crate::request::append_forwarded_for(&values, ip.as_deref(), &mut chain) {
            upstream.insert_header("X-Forwarded-For", chain)?;
        }
        if let Some(ip) = ip {
            upstream.insert_header("X-Real-IP", ip)?;
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream.insert_header("X-Forwarded-Proto", if tls { "https" } else { "http" })?;
        let host = request_host(session.req_header());
        if !host.is_empty() {
            upstream.insert_header("X-Forwarded-Host", host)?;
        }
        if let Some(strip) = ctx.route.as_ref().and_then(|r| r.strip.as_deref()) {
            let path_and_query = upstream.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            if let Some(rest) = path_and_query.strip_prefix(strip) {
                let new = if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") };
                let uri = new
                    .parse::<http::Uri>()
                    .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "rewriting the path", e))?;
                upstream.set_uri(uri);
            }
        }
        Ok(())
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if let Some(up) = &ctx.current {
            if resp.status.as_u16() >= 500 && resp.status.as_u16() != 501 {
                self.record_failure(ctx);
            } else {
                up.state.record_success();
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let service = ctx.route.as_ref().map(|r| r.service.clone()).unwrap_or_default();
        let code = match e.etype() {
            ErrorType::HTTPStatus(c) => *c,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        if code > 0 {
            let body = match code {
                502 => format!("wharf: could not reach an instance of service {service:?}\n"),
                504 => format!("wharf: service {service:?} did not answer in time\n"),
                400 => {
                    format!("wharf: bad request: {}\n", e.context.as_ref().map(|c| c.as_str()).unwrap_or("malformed"))
                }
                431 => "wharf: request header fields too large\n".to_string(),
                _ => format!("wharf: error {code}\n"),
            };
            let _ = session.respond_error_with_body(code, Bytes::from(body)).await;
        }
        ctx.local_status = Some(code);
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map(|r| r.status.as_u16()).or(ctx.local_status).unwrap_or(0);
        let elapsed = ctx.started.map(|s| s.elapsed()).unwrap_or_default();
        if let Some(route) = &ctx.route {
            route.stats.record(status, elapsed);
        }
        ctx.inflight = None;
        if let Some(log) = &self.access_log {
            let req = session.req_header();
            log.request(
                client_ip(session),
                req.method.as_str(),
                &request_host(req),
                req.uri.path(),
                status,
                elapsed,
                ctx.route.as_deref(),
                ctx.current.as_ref().map(|u| u.addr),
                ctx.tried.len(),
                e.map(|e| e.to_string()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_after_send_follow_one_rule() {
        let s = UpstreamSettings { retries: 1, ..Default::default() };
        // Never for a non-idempotent request, nor with no instance left.
        assert_eq!(s.retry_after_send(false, true, 0, true), Retry::No);
        assert_eq!(s.retry_after_send(true, true, 0, false), Retry::No);
        // Closed without an answer: every other instance, outside the budget.
        assert_eq!(s.retry_after_send(true, true, 5, true), Retry::Free);
        // Timeouts: within the budget only.
        assert_eq!(s.retry_after_send(true, false, 0, true), Retry::Budgeted);
        assert_eq!(s.retry_after_send(true, false, 1, true), Retry::No);
    }
}
