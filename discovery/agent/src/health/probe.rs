//! The built-in probes, each one attempt with a deadline, returning a status and Consul's
//! style of output: HTTP (2xx passing, 429 warning, else critical), TCP connect, gRPC
//! health (grpc.health.v1, over h2c), and script/args (exit 0 passing, 1 warning, else
//! critical; only when script checks are enabled).

use std::time::Duration;

use catalog::model::{CheckDefinition, CheckStatus};

/// Cuts probe output to the catalog's one limit.
pub use catalog::model::truncate_output as cut;

/// Shared HTTP clients: one that verifies certificates, one that does not.
#[derive(Clone)]
pub struct Clients {
    verify: reqwest::Client,
    skip_verify: reqwest::Client,
    h2c: reqwest::Client,
}

impl Clients {
    pub fn new() -> Clients {
        let base =
            || reqwest::Client::builder().redirect(reqwest::redirect::Policy::limited(10)).pool_max_idle_per_host(2);
        Clients {
            verify: base().build().unwrap_or_default(),
            skip_verify: base().danger_accept_invalid_certs(true).build().unwrap_or_default(),
            h2c: reqwest::Client::builder().http2_prior_knowledge().build().unwrap_or_default(),
        }
    }
}

impl Default for Clients {
    fn default() -> Self {
        Clients::new()
    }
}

pub async fn http(clients: &Clients, def: &CheckDefinition, timeout: Duration) -> (CheckStatus, String) {
    let method = if def.method.is_empty() { "GET" } else { def.method.as_str() };
    let Ok(m) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return (CheckStatus::Critical, format!("invalid HTTP method {method:?}"));
    };
    let client = if def.tls_skip_verify { &clients.skip_verify } else { &clients.verify };
    let mut req = client.request(m, &def.http).timeout(timeout).header("user-agent", "wharf health check");
    for (k, values) in &def.header {
        for v in values {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    if !def.body.is_empty() {
        req = req.body(def.body.clone());
    }
    match req.send().await {
        Err(e) => {
            let what = if e.is_timeout() { "timed out".to_string() } else { e.to_string() };
            (CheckStatus::Critical, format!("HTTP {method} {}: {what}", def.http))
        }
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            let result = if status.is_success() {
                CheckStatus::Passing
            } else if status.as_u16() == 429 {
                CheckStatus::Warning
            } else {
                CheckStatus::Critical
            };
            (result, cut(format!("HTTP {method} {}: {status} Output: {body}", def.http)))
        }
    }
}

pub async fn tcp(def: &CheckDefinition, timeout: Duration) -> (CheckStatus, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&def.tcp)).await {
        Ok(Ok(_)) => (CheckStatus::Passing, format!("TCP connect {}: Success", def.tcp)),
        Ok(Err(e)) => (CheckStatus::Critical, format!("TCP connect {}: {e}", def.tcp)),
        Err(_) => (CheckStatus::Critical, format!("TCP connect {}: timed out after {timeout:?}", def.tcp)),
    }
}

/// `host:port[/service]` as in Consul's GRPC field.
fn grpc_target(spec: &str) -> (&str, &str) {
    spec.split_once('/').unwrap_or((spec, ""))
}

/// grpc.health.v1.Health/Check over h2c. The request and response messages are tiny, so
/// they are encoded here rather than through a protobuf code generator.
pub async fn grpc(clients: &Clients, def: &CheckDefinition, timeout: Duration) -> (CheckStatus, String) {
    let (addr, service) = grpc_target(&def.grpc);
    let mut msg = Vec::with_capacity(service.len() + 2);
    if !service.is_empty() {
        msg.push(0x0a);
        msg.push(service.len().min(127) as u8);
        msg.extend_from_slice(&service.as_bytes()[..service.len().min(127)]);
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let url = format!("http://{addr}/grpc.health.v1.Health/Check");
    let resp = clients
        .h2c
        .post(&url)
        .timeout(timeout)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame)
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return (CheckStatus::Critical, format!("gRPC check {}: {e}", def.grpc)),
    };
    // A trailers-only error answer puts grpc-status in the headers.
    if let Some(code) = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok())
        && code != "0"
    {
        let message = resp.headers().get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        return (CheckStatus::Critical, format!("gRPC check {}: status {code} {message}", def.grpc));
    }
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return (CheckStatus::Critical, format!("gRPC check {}: {e}", def.grpc)),
    };
    // HealthCheckResponse { status = 1 } : SERVING is 1.
    let status = body.get(5..).and_then(|m| {
        let mut i = 0;
        while i + 1 < m.len() {
            if m[i] == 0x08 {
                return Some(m[i + 1]);
            }
            i += 1;
        }
        None
    });
    match status {
        Some(1) => (CheckStatus::Passing, format!("gRPC check {}: success", def.grpc)),
        Some(s) => (CheckStatus::Critical, format!("gRPC check {}: status {s} (not SERVING)", def.grpc)),
        None => (CheckStatus::Critical, format!("gRPC check {}: status UNKNOWN (not SERVING)", def.grpc)),
    }
}

pub async fn script(def: &CheckDefinition, timeout: Duration) -> (CheckStatus, String) {
    let Some((program, args)) = def.args.split_first() else {
        return (CheckStatus::Critical, "script check without Args".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true).stdin(std::process::Stdio::null());
    match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => (CheckStatus::Critical, format!("Timed out ({timeout:?}) running check {program:?}")),
        Ok(Err(e)) => (CheckStatus::Critical, format!("cannot run {program:?}: {e}")),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).to_string();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let status = match out.status.code() {
                Some(0) => CheckStatus::Passing,
                Some(1) => CheckStatus::Warning,
                _ => CheckStatus::Critical,
            };
            (status, cut(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_at_4k_on_a_char_boundary() {
        // "a" then 2-byte characters: every character boundary is odd, so the cut point
        // (4,096 less the 4-byte " ..." mark = 4,092) falls inside a character.
        let s = format!("a{}", "é".repeat(3000));
        let c = cut(s.clone());
        assert!(c.len() <= catalog::model::MAX_CHECK_OUTPUT);
        assert_eq!(c, format!("{} ...", &s[..4091]), "cut back to the boundary before 4,092, then marked");
        assert_eq!(cut("short".into()), "short");
    }

    #[test]
    fn grpc_targets() {
        assert_eq!(grpc_target("127.0.0.1:50051"), ("127.0.0.1:50051", ""));
        assert_eq!(grpc_target("127.0.0.1:50051/my.Service"), ("127.0.0.1:50051", "my.Service"));
    }
}
