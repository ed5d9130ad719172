//! The answers wharf writes itself instead of an instance's: one type for both proxy paths,
//! so a 404, 431, 502, 503 or 504 says the same thing whichever path served the request.

/// A response wharf writes itself: status and plain-text body.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalReply {
    pub status: u16,
    pub body: String,
}

impl LocalReply {
    /// 404: no route matches the request's host and path.
    pub fn no_route(host: &str, path: &str) -> Self {
        LocalReply { status: 404, body: format!("wharf: no route for host {host:?} and path {path:?}\n") }
    }

    /// 503: the route's service has no healthy instance.
    pub fn no_healthy_instance(service: &str) -> Self {
        LocalReply { status: 503, body: format!("wharf: service {service:?} has no healthy instance\n") }
    }

    /// 502: every instance tried failed to connect or answered badly.
    pub fn unreachable(service: &str) -> Self {
        LocalReply { status: 502, body: format!("wharf: could not reach an instance of service {service:?}\n") }
    }

    /// 504: the instance did not answer in time.
    pub fn timed_out(service: &str) -> Self {
        LocalReply { status: 504, body: format!("wharf: service {service:?} did not answer in time\n") }
    }

    /// 431: the request head is over the limit.
    pub fn headers_too_large() -> Self {
        LocalReply { status: 431, body: "wharf: request header fields too large\n".to_string() }
    }

    /// 400: a malformed request, saying why.
    pub fn bad_request(reason: &str) -> Self {
        LocalReply { status: 400, body: format!("wharf: bad request: {reason}\n") }
    }

    /// The reply for a failed request's status code.
    pub fn for_status(status: u16, service: &str, reason: Option<&str>) -> Self {
        match status {
            400 => Self::bad_request(reason.unwrap_or("malformed")),
            431 => Self::headers_too_large(),
            502 => Self::unreachable(service),
            503 => Self::no_healthy_instance(service),
            504 => Self::timed_out(service),
            _ => LocalReply { status, body: format!("wharf: error {status}\n") },
        }
    }

    /// The whole HTTP/1.1 response, closing the connection after it.
    pub fn http1_closing(&self) -> Vec<u8> {
        let reason = http::StatusCode::from_u16(self.status).ok().and_then(|c| c.canonical_reason()).unwrap_or("");
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.status,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_one_body_each() {
        assert_eq!(LocalReply::for_status(504, "web", None), LocalReply::timed_out("web"));
        assert_eq!(
            LocalReply::for_status(502, "web", None).body,
            "wharf: could not reach an instance of service \"web\"\n"
        );
        assert_eq!(LocalReply::for_status(400, "", Some("two hosts")).body, "wharf: bad request: two hosts\n");
        let wire = String::from_utf8(LocalReply::headers_too_large().http1_closing()).expect("utf-8");
        assert!(wire.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{wire}");
        assert!(wire.ends_with("Connection: close\r\n\r\nwharf: request header fields too large\n"), "{wire}");
    }
}
