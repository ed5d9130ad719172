//! Facts both proxy paths take from a request, computed by the same code so the fast path
//! and the Pingora path cannot drift apart: the balancing hash key (header, cookie or client
//! address), the X-Forwarded-For chain sent upstream, the target with the route's prefix
//! stripped, and idempotency. Header fields are read through [`HeaderSource`], implemented
//! for httparse's fields (fast path) and Pingora's request header. (Before this module each
//! path had its own copy, and `Cookie: sid = x` or two X-Forwarded-For lines were handled
//! differently.)

use std::borrow::Cow;

use crate::balance::{HashKey, Policy};

/// Where a request's header fields are read from.
pub trait HeaderSource {
    /// Every value of field `name` (case-insensitive), in the order received.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;
}

impl HeaderSource for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().filter(move |f| f.name.eq_ignore_ascii_case(name)).map(|f| f.value)
    }
}

impl HeaderSource for pingora::http::RequestHeader {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.get_all(name).into_iter().map(|v| v.as_bytes())
    }
}

/// The key a `hash:*` policy balances on (`None` for other policies, or when the request
/// lacks it, which falls back to the policy's default choice).
pub fn hash_key(policy: &Policy, headers: &(impl HeaderSource + ?Sized), client: Option<&str>) -> Option<Vec<u8>> {
    match policy {
        Policy::Hash(HashKey::Header(name)) => headers.values(name).next().map(<[u8]>::to_vec),
        Policy::Hash(HashKey::Cookie(name)) => {
            let values: Vec<&[u8]> = headers.values("cookie").collect();
            cookie_value(&values, name)
        }
        Policy::Hash(HashKey::ClientIp) => client.map(|c| c.as_bytes().to_vec()),
        _ => None,
    }
}

/// The request target sent upstream: the route's `strip` prefix removed (the rest always
/// starting with `/`), or the target unchanged when the prefix does not match.
pub fn strip_target<'a>(target: &'a str, strip: Option<&str>) -> Cow<'a, str> {
    match strip.and_then(|s| target.strip_prefix(s)) {
        Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
        Some(rest) => Cow::Owned(format!("/{rest}")),
        None => Cow::Borrowed(target),
    }
}

/// Methods whose request may be sent again (RFC 9110's idempotent methods).
pub fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// The value of cookie `name` among the Cookie field values, names and values trimmed of
/// spaces (`a=1; sid = x`), the first match winning.
pub fn cookie_value(values: &[&[u8]], name: &str) -> Option<Vec<u8>> {
    values.iter().flat_map(|v| v.split(|&b| b == b';')).find_map(|kv| {
        let kv = kv.trim_ascii();
        let eq = kv.iter().position(|&b| b == b'=')?;
        (kv[..eq].trim_ascii() == name.as_bytes()).then(|| kv[eq + 1..].trim_ascii().to_vec())
    })
}

/// Appends to `out` the X-Forwarded-For value to send upstream: every X-Forwarded-For value
/// the client sent, in order, joined with ", ", then the client's address. Returns whether
/// it wrote anything (nothing when there is neither). Appending, not returning a new
/// buffer, keeps the fast path free of a per-request allocation.
pub fn append_forwarded_for(values: &[&[u8]], client: Option<&str>, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    for v in values.iter().map(|v| v.trim_ascii()).filter(|v| !v.is_empty()).chain(client.map(str::as_bytes)) {
        if out.len() > start {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v);
    }
    out.len() > start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies() {
        assert_eq!(cookie_value(&[b"a=1; sid=xyz; b=2"], "sid"), Some(b"xyz".to_vec()));
        assert_eq!(cookie_value(&[b"a=1", b"sid=q"], "sid"), Some(b"q".to_vec()));
        assert_eq!(cookie_value(&[b"sid = spaced ; x=1"], "sid"), Some(b"spaced".to_vec()));
        assert_eq!(cookie_value(&[b"a=1"], "sid"), None);
        assert_eq!(cookie_value(&[b"sidx=1; xsid=2"], "sid"), None);
    }

    fn chain(values: &[&[u8]], client: Option<&str>) -> Option<Vec<u8>> {
        let mut out = b"X: ".to_vec();
        append_forwarded_for(values, client, &mut out).then(|| out[3..].to_vec())
    }

    #[test]
    fn hash_keys_read_the_same_fields_from_both_sources() {
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut fields);
        let raw =
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nCookie: sid = s1 ; b=2\r\nX-User: u1\r\nX-User: u2\r\n\r\n";
        assert!(req.parse(raw).expect("valid").is_complete());
        let fast: &[httparse::Header<'_>] = req.headers;
        let mut pingora_req = pingora::http::RequestHeader::build("GET", b"/", None).expect("head");
        for (k, v) in
            [("Host", "a"), ("Cookie", "a=1"), ("Cookie", "sid = s1 ; b=2"), ("X-User", "u1"), ("X-User", "u2")]
        {
            pingora_req.append_header(k, v).expect("field");
        }
        let cookie = Policy::Hash(HashKey::Cookie("sid".into()));
        let header = Policy::Hash(HashKey::Header("x-user".into()));
        for (policy, want) in [(&cookie, Some(b"s1".to_vec())), (&header, Some(b"u1".to_vec()))] {
            assert_eq!(hash_key(policy, fast, None), want);
            assert_eq!(hash_key(policy, &pingora_req, None), want);
        }
        assert_eq!(hash_key(&Policy::Hash(HashKey::ClientIp), fast, Some("10.0.0.9")), Some(b"10.0.0.9".to_vec()));
        assert_eq!(hash_key(&Policy::RoundRobin, fast, Some("10.0.0.9")), None);
    }

    #[test]
    fn strip_keeps_a_leading_slash() {
        assert_eq!(strip_target("/api/users?x=1", Some("/api")), "/users?x=1");
        assert_eq!(strip_target("/api", Some("/api")), "/");
        assert_eq!(strip_target("/apix", Some("/api")), "/x");
        assert_eq!(strip_target("/web/a", Some("/api")), "/web/a");
        assert_eq!(strip_target("/web/a", None), "/web/a");
    }

    #[test]
    fn forwarded_chains() {
        assert_eq!(chain(&[b"1.1.1.1", b" 2.2.2.2 "], Some("10.0.0.1")), Some(b"1.1.1.1, 2.2.2.2, 10.0.0.1".to_vec()));
        assert_eq!(chain(&[], Some("10.0.0.1")), Some(b"10.0.0.1".to_vec()));
        assert_eq!(chain(&[b"", b"3.3.3.3"], None), Some(b"3.3.3.3".to_vec()));
        assert_eq!(chain(&[b" "], None), None);
    }
}
