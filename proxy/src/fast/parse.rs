//! The fast path's request parser: a free function of the bytes read so far and the route
//! table. It holds the request-smuggling rules, so every shape it must refuse or hand over
//! is unit-tested here.
//!
//! The hand-over rule: the fast path takes only plain HTTP/1.1 with an origin-form target,
//! exactly one Host, at most one valid Content-Length of at most [`MAX_FAST_BODY`] bytes, no
//! Transfer-Encoding, Upgrade or Expect, and a route with a healthy instance. Everything
//! else ([`Parsed::Fallback`]) goes to Pingora with the bytes already read, which answers it
//! (streams large bodies, refuses smuggling shapes with 400, writes the 404/503 pages).

use std::net::IpAddr;
use std::sync::Arc;

use crate::pingora_path::MAX_HEADER_BYTES;
use crate::request::{append_forwarded_for, hash_key, is_idempotent, strip_target};
use crate::route_table::{Route, RouteTable};

/// Largest request body the fast path buffers (bigger ones go to Pingora, which streams).
pub(super) const MAX_FAST_BODY: usize = 64 * 1024;
/// Header fields parsed per request; more hands the request to Pingora.
const MAX_FIELDS: usize = 96;

/// The client's address, formatted once per connection.
pub(super) struct Client {
    pub ip: IpAddr,
    pub text: String,
}

/// What the head of the buffered request says.
pub(super) enum Parsed {
    /// More bytes are needed.
    Partial,
    /// Pingora serves this connection from here on.
    Fallback,
    /// The head is over [`MAX_HEADER_BYTES`].
    TooLarge,
    Ready(Box<Request>),
}

/// A request the fast path forwards.
pub(super) struct Request {
    pub head_len: usize,
    pub body_len: usize,
    pub route: Arc<Route>,
    pub hash_key: Option<Vec<u8>>,
    pub idempotent: bool,
    pub is_head: bool,
    /// The client wants the connection kept open.
    pub keep_alive: bool,
    /// Method, host and path, kept only when an access log is written.
    pub method: String,
    pub host: String,
    pub path: String,
    pub client: Option<IpAddr>,
}

/// The request line and the fields that decide framing, after the smuggling checks.
struct Head<'b> {
    len: usize,
    method: &'b str,
    target: &'b str,
    host: &'b str,
    body_len: usize,
    keep_alive: bool,
    /// Field names listed in `Connection`, dropped when forwarding.
    connection_tokens: Vec<&'b [u8]>,
}

/// Parses the buffered request and, when the fast path takes it, writes the head to send
/// upstream into `out`. `log_fields` keeps method, host and path for the access log.
pub(super) fn parse_request(
    buf: &[u8],
    client: Option<&Client>,
    table: &RouteTable,
    log_fields: bool,
    out: &mut Vec<u8>,
) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let head = match read_head(buf, &mut req) {
        Ok(head) => head,
        Err(p) => return p,
    };
    let path = head.target.split(['?', '#']).next().unwrap_or(head.target);
    let Some(route) = table.lookup(head.host, path) else { return Parsed::Fallback };
    if route.pool.is_empty() {
        return Parsed::Fallback;
    }
    let fields: &[httparse::Header<'_>] = req.headers;
    let ip = client.map(|c| c.text.as_str());
    write_upstream_head(&head, route, fields, ip, out);
    Parsed::Ready(Box::new(Request {
        head_len: head.len,
        body_len: head.body_len,
        route: route.clone(),
        hash_key: hash_key(&route.pool.policy, fields, ip),
        idempotent: is_idempotent(head.method),
        is_head: head.method == "HEAD",
        keep_alive: head.keep_alive,
        method: if log_fields { head.method.to_string() } else { String::new() },
        host: if log_fields { head.host.to_string() } else { String::new() },
        path: if log_fields { path.to_string() } else { String::new() },
        client: client.map(|c| c.ip),
    }))
}

/// Parses the head and applies the hand-over rule.
fn read_head<'b>(buf: &'b [u8], req: &mut httparse::Request<'_, 'b>) -> Result<Head<'b>, Parsed> {
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(if buf.len() > MAX_HEADER_BYTES { Parsed::TooLarge } else { Parsed::Partial });
        }
        Err(_) => return Err(Parsed::Fallback),
    };
    if len > MAX_HEADER_BYTES {
        return Err(Parsed::TooLarge);
    }
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Err(Parsed::Fallback);
    };
    if method == "CONNECT" || !target.starts_with('/') {
        return Err(Parsed::Fallback);
    }
    let mut host: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    let mut keep_alive = true;
    let mut connection_tokens: Vec<&[u8]> = Vec::new();
    for f in req.headers.iter() {
        let name = f.name;
        if name.eq_ignore_ascii_case("host") {
            if host.replace(f.value).is_some() {
                return Err(Parsed::Fallback);
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            match (parse_length(f.value), length) {
                (Some(n), None) => length = Some(n),
                _ => return Err(Parsed::Fallback),
            }
        } else if ["transfer-encoding", "upgrade", "expect"].iter().any(|h| name.eq_ignore_ascii_case(h)) {
            return Err(Parsed::Fallback);
        } else if name.eq_ignore_ascii_case("connection") {
            if has_token(f.value, "upgrade") {
                return Err(Parsed::Fallback);
            }
            keep_alive &= !has_token(f.value, "close");
            connection_tokens.extend(f.value.split(|&b| b == b',').map(<[u8]>::trim_ascii));
        }
    }
    let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()).filter(|h| !h.is_empty()) else {
        return Err(Parsed::Fallback);
    };
    let body_len = match length {
        Some(n) if n > MAX_FAST_BODY as u64 => return Err(Parsed::Fallback),
        Some(n) => n as usize,
        None => 0,
    };
    Ok(Head { len, method, target, host, body_len, keep_alive, connection_tokens })
}

/// The head sent upstream: the target (prefix stripped), end-to-end fields as they came,
/// then wharf's X-Forwarded-* fields.
fn write_upstream_head(
    head: &Head<'_>,
    route: &Route,
    fields: &[httparse::Header<'_>],
    ip: Option<&str>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(strip_target(head.target, route.strip.as_deref()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The client's X-Forwarded-For values, unless its Connection field names the field.
    let mut forwarded: Vec<&[u8]> = Vec::new();
    for f in fields {
        let name = f.name;
        if is_hop_by_hop(name)
            || listed_hop(&head.connection_tokens, name)
            || ["x-real-ip", "x-forwarded-proto", "x-forwarded-host"].iter().any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded.push(f.value);
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    const XFF: &[u8] = b"X-Forwarded-For: ";
    out.extend_from_slice(XFF);
    if append_forwarded_for(&forwarded, ip, out) {
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
    out.extend_from_slice(head.host.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Names of hop-by-hop fields, lower case, that are never forwarded.
pub(super) fn is_hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a field named in `Connection` is dropped: never the message's framing or Host (a
/// client listing `Content-Length` there must not turn its body into a second request).
pub(super) fn listed_hop(tokens: &[&[u8]], name: &str) -> bool {
    !["content-length", "transfer-encoding", "host"].iter().any(|k| name.eq_ignore_ascii_case(k))
        && tokens.iter().any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

pub(super) fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

pub(super) fn parse_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use catalog::command::Command;
    use catalog::model::{CheckStatus, HealthCheck, Node, Service};
    use catalog::state::CatalogState;

    use super::*;
    use crate::balance::Policy;
    use crate::route_table::{TableBuilder, TableSettings};

    /// A table with `web` (one passing instance, `/api` stripped for `api`) and `down` (no
    /// healthy instance).
    fn table() -> RouteTable {
        let mut s = CatalogState::default();
        let services = [
            ("web-1", "web", vec![], CheckStatus::Passing),
            ("api-1", "api", vec!["urlprefix-/api strip=/api".to_string()], CheckStatus::Passing),
            ("down-1", "down", vec![], CheckStatus::Critical),
        ];
        for (i, (id, name, tags, status)) in services.into_iter().enumerate() {
            let node = Node { node: "n1".into(), address: "127.0.0.1".into(), ..Default::default() };
            let service = Service {
                id: id.into(),
                service: name.into(),
                port: 9000 + i as u16,
                tags,
                meta: BTreeMap::new(),
                ..Default::default()
            };
            let check =
                HealthCheck { check_id: format!("{id}-c"), service_id: id.into(), status, ..Default::default() };
            let cmd = Command::Register {
                node,
                service: Some(service),
                checks: vec![check],
                skip_node_update: false,
                replace_service_checks: false,
            };
            s.apply(2 + i as u64, &cmd);
        }
        let settings = TableSettings {
            domain: "localhost".into(),
            default_service: None,
            route_warning: false,
            default_policy: Policy::RoundRobin,
        };
        TableBuilder::new(settings, Arc::default()).build(&s)
    }

    fn parse(raw: &[u8]) -> (Parsed, String) {
        let client = Client { ip: IpAddr::from([10, 0, 0, 9]), text: "10.0.0.9".into() };
        let mut out = Vec::new();
        let p = parse_request(raw, Some(&client), &table(), true, &mut out);
        (p, String::from_utf8_lossy(&out).into_owned())
    }

    fn is_fallback(raw: &[u8]) -> bool {
        matches!(parse(raw).0, Parsed::Fallback)
    }

    #[test]
    fn a_plain_request_is_taken_and_rewritten() {
        let (p, out) = parse(b"GET /a?q=1 HTTP/1.1\r\nHost: web.localhost\r\nAccept: */*\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nX-Real-IP: spoofed\r\n\r\n");
        let Parsed::Ready(r) = p else { panic!("taken") };
        assert_eq!((r.route.service.as_str(), r.body_len, r.keep_alive, r.idempotent), ("web", 0, true, true));
        assert_eq!(
            out,
            "GET /a?q=1 HTTP/1.1\r\nHost: web.localhost\r\nAccept: */*\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\n\
             X-Real-IP: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: web.localhost\r\n\r\n"
        );
        let (p, out) = parse(b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\n\r\nabc");
        let Parsed::Ready(r) = p else { panic!("taken") };
        assert_eq!((r.route.service.as_str(), r.body_len, r.keep_alive, r.idempotent), ("api", 3, false, false));
        assert!(out.starts_with("POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"), "{out}");
        assert!(!out.contains("X-Drop") && !out.contains("Connection"), "listed and hop-by-hop fields dropped: {out}");
        // A chain the client marks hop-by-hop is not passed on; wharf's own entry still is.
        let (_, out) = parse(
            b"GET / HTTP/1.1\r\nHost: web.localhost\r\nConnection: X-Forwarded-For\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
        );
        assert!(out.contains("X-Forwarded-For: 10.0.0.9\r\n") && !out.contains("6.6.6.6"), "{out}");
    }

    #[test]
    fn smuggling_shapes_are_never_taken() {
        let shapes: [&[u8]; 12] = [
            // Content-Length with Transfer-Encoding (CL.TE / TE.CL).
            b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            // Transfer-Encoding alone, and obfuscated.
            b"POST / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: web.localhost\r\ntransfer-encoding: xchunked\r\n\r\n",
            // Two Content-Length fields, equal or not.
            b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
            // Content-Length that is not a plain decimal.
            b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: +3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 3, 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 0x3\r\n\r\nabc",
            // Two Host fields.
            b"GET / HTTP/1.1\r\nHost: web.localhost\r\nHost: api.localhost\r\n\r\n",
            // A field name with a space before the colon.
            b"GET / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length : 3\r\n\r\nabc",
            // A bare LF inside a field value / obsolete line folding.
            b"GET / HTTP/1.1\r\nHost: web.localhost\r\nX-A: 1\r\n folded\r\n\r\n",
            // HTTP/1.0 (no keep-alive semantics of its own here).
            b"GET / HTTP/1.0\r\nHost: web.localhost\r\n\r\n",
        ];
        for raw in shapes {
            assert!(is_fallback(raw), "taken by the fast path: {:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn other_shapes_go_to_pingora() {
        let shapes: [&[u8]; 9] = [
            b"GET / HTTP/1.1\r\n\r\n",                                            // no Host
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",                                  // empty Host
            b"GET http://web.localhost/ HTTP/1.1\r\nHost: web.localhost\r\n\r\n", // absolute form
            b"CONNECT web.localhost:443 HTTP/1.1\r\nHost: web.localhost\r\n\r\n", // CONNECT
            b"GET / HTTP/1.1\r\nHost: web.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: web.localhost\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 65537\r\n\r\n", // body over 64 KiB
            b"GET / HTTP/1.1\r\nHost: nothing.localhost\r\n\r\n",                       // no route (404 there)
            b"GET / HTTP/1.1\r\nHost: down.localhost\r\n\r\n",                          // no healthy instance (503)
        ];
        for raw in shapes {
            assert!(is_fallback(raw), "taken by the fast path: {:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn incomplete_and_oversized_heads() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: web.loc").0, Parsed::Partial));
        let mut big = b"GET / HTTP/1.1\r\nHost: web.localhost\r\nX-Big: ".to_vec();
        big.resize(MAX_HEADER_BYTES + 10, b'a');
        assert!(matches!(parse(&big).0, Parsed::TooLarge), "an unfinished head over the limit");
        big.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse(&big).0, Parsed::TooLarge), "a complete head over the limit");
    }

    #[test]
    fn connection_cannot_drop_framing_or_host() {
        let (p, out) =
            parse(b"POST / HTTP/1.1\r\nHost: web.localhost\r\nConnection: Content-Length, Host\r\nContent-Length: 2\r\n\r\nhi");
        assert!(matches!(p, Parsed::Ready(_)));
        assert!(out.contains("Content-Length: 2\r\n") && out.contains("Host: web.localhost\r\n"), "{out}");
    }

    #[test]
    fn tokens_and_lengths() {
        // As in the fast path's tests before the split.
        assert!(has_token(b"keep-alive, Close", "close"));
        assert!(!has_token(b"closed", "close"));
        assert_eq!(parse_length(b" 12 "), Some(12));
        assert_eq!(parse_length(b"+12"), None);
        assert_eq!(parse_length(b"1,2"), None);
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(!has_token(b"upgraded", "upgrade"));
        assert_eq!(parse_length(b" 42 "), Some(42));
        assert_eq!(parse_length(b"-1"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"1234567890123456789"), None);
        assert!(is_hop_by_hop("Transfer-Encoding") && !is_hop_by_hop("Content-Type"));
        assert!(listed_hop(&[b"x-a"], "X-A") && !listed_hop(&[b"content-length"], "Content-Length"));
    }
}
