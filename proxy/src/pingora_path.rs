//! The Pingora path: wharf's `ProxyHttp` implementation, serving what the fast path hands
//! over (TLS, HTTP/2, HTTP/1.0, streamed bodies, upgrades, and the 404/503 pages). Per
//! request: one `ArcSwap::load` of the route table, a lookup, an instance choice, and
//! proxying with the shared request facts, retry and ejection rules, replies and access-log
//! record (`request`, `attempts`, `reply`, `access_log`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};

use crate::access_log::{AccessLog, AccessRecord};
use crate::attempts::{Attempts, UpstreamSettings, count_retry};
use crate::metrics::ProxyMetrics;
use crate::reply::LocalReply;
use crate::request::{hash_key, is_idempotent, strip_target};
use crate::route_table::{Route, RouteTable};

/// Largest request head accepted (request line plus headers); larger gets 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

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
    attempts: Attempts,
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

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
}

async fn write_local(session: &mut Session, reply: LocalReply) -> Result<()> {
    let body = Bytes::from(reply.body);
    let mut resp = ResponseHeader::build(reply.status, Some(3))?;
    resp.insert_header("Content-Type", "text/plain; charset=utf-8")?;
    resp.insert_header("Content-Length", body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

impl WharfProxy {
    fn record_failure(&self, ctx: &Ctx) {
        if let Some(route) = &ctx.route {
            ctx.attempts.failed(&self.settings, route);
        }
    }

    /// Whether another instance is left to try.
    fn has_untried(&self, ctx: &Ctx) -> bool {
        ctx.route.as_ref().is_some_and(|r| ctx.attempts.has_untried(r))
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
            write_local(session, LocalReply::no_route(&host, &path)).await?;
            return Ok(true);
        };
        if route.pool.is_empty() {
            ctx.route = Some(route.clone());
            ctx.local_status = Some(503);
            write_local(session, LocalReply::no_healthy_instance(&route.service)).await?;
            return Ok(true);
        }
        let client = client_ip(session).map(|ip| ip.to_string());
        ctx.hash_key = hash_key(&route.pool.policy, req, client.as_deref());
        ctx.route = Some(route.clone());
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(Error::explain(ErrorType::HTTPStatus(500), "no route chosen"));
        };
        let Some(up) = ctx.attempts.next(&route, ctx.hash_key.as_deref()) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                format!("every instance of service {:?} failed", route.service),
            ));
        };
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
                count_retry(r);
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
        let idempotent = is_idempotent(session.req_header().method.as_str());
        let timed_out = matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::WriteTimedout);
        let truncated = session.as_ref().retry_buffer_truncated();
        if client_reused && !truncated && matches!(e.retry, RetryType::ReusedOnly) && self.has_untried(ctx) {
            // A pooled upstream connection that the instance had closed (it is stopping, or
            // its idle timeout passed): the request never reached it. Always retried, on
            // another instance, without using the retry budget, like a failed connect.
            e.set_retry(true);
        } else if truncated {
            e.set_retry(false);
        } else if let Some(route) = ctx.route.clone() {
            let closed = !timed_out && matches!(e.esource(), ErrorSource::Upstream);
            // retry_after_send counts the retries it grants; Pingora's own reuse rule may
            // still grant one for an idempotent request, counted here.
            if ctx.attempts.retry_after_send(&self.settings, &route, idempotent, closed) {
                e.set_retry(true);
            } else if !idempotent {
                e.set_retry(false);
            } else {
                e.retry.decide_reuse(client_reused);
                if e.retry() {
                    count_retry(&route);
                }
            }
            return e;
        } else if !idempotent {
            e.set_retry(false);
        }
        if e.retry()
            && let Some(r) = &ctx.route
        {
            count_retry(r);
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
            let target = strip_target(&path_and_query, Some(strip));
            if target != path_and_query {
                let uri = target
                    .parse::<http::Uri>()
                    .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "rewriting the path", e))?;
                upstream.set_uri(uri);
            }
        }
        Ok(())
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if let Some(route) = &ctx.route {
            ctx.attempts.answered(&self.settings, route, resp.status.as_u16());
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
            let reason = e.context.as_ref().map(|c| c.as_str());
            let reply = LocalReply::for_status(code, &service, reason);
            let _ = session.respond_error_with_body(code, Bytes::from(reply.body)).await;
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
        ctx.attempts.finish();
        if let Some(log) = &self.access_log {
            let req = session.req_header();
            log.write(&AccessRecord {
                client: client_ip(session),
                method: req.method.as_str(),
                host: &request_host(req),
                path: req.uri.path(),
                status,
                elapsed,
                route: ctx.route.as_deref(),
                upstream: ctx.attempts.current.as_ref().map(|u| u.addr),
                attempts: ctx.attempts.tried.len(),
                error: e.map(|e| e.to_string()),
            });
        }
    }
}
