//! Facts both proxy paths take from a request, computed by the same code so the fast path
//! and the Pingora path cannot drift apart: the value of a cookie (for `hash:cookie:NAME`)
//! and the X-Forwarded-For chain sent upstream. (Before this module each path had its own
//! copy, and `Cookie: sid = x` or two X-Forwarded-For lines were handled differently.)

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
    fn forwarded_chains() {
        assert_eq!(chain(&[b"1.1.1.1", b" 2.2.2.2 "], Some("10.0.0.1")), Some(b"1.1.1.1, 2.2.2.2, 10.0.0.1".to_vec()));
        assert_eq!(chain(&[], Some("10.0.0.1")), Some(b"10.0.0.1".to_vec()));
        assert_eq!(chain(&[b"", b"3.3.3.3"], None), Some(b"3.3.3.3".to_vec()));
        assert_eq!(chain(&[b" "], None), None);
    }
}
