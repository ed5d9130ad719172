//! `http-json`: a health check for JSON health endpoints in the style of Spring Boot's actuator.
//!
//! It sends `GET http://{address}:{port}{path}` and reads the `"status"` field of the JSON body:
//!
//! * passing: a 2xx response whose status is the expected one (`"UP"` unless configured);
//! * critical: `"DOWN"` or `"OUT_OF_SERVICE"`, any non-2xx response, a body that is not JSON with
//!   a string `"status"`, or a request that failed;
//! * warning: any other status, e.g. `"UNKNOWN"`.
//!
//! Config (the check's `Wasm.Config`):
//!
//! * empty: path `/health`;
//! * a path such as `/actuator/health`;
//! * JSON: `{"path": "/actuator/health", "expect": "UP"}` (both fields optional).

use serde_json::Value;
use wharf_plugin_sdk::{CheckResult, HealthCheck, Instance, http};

const DEFAULT_PATH: &str = "/health";
const DEFAULT_EXPECT: &str = "UP";
/// Statuses that mean the service is down.
const DOWN_STATUSES: [&str; 2] = ["DOWN", "OUT_OF_SERVICE"];
/// How much of an unexpected body is quoted in the output.
const BODY_EXCERPT: usize = 200;

#[derive(Debug, PartialEq)]
struct Config {
    path: String,
    expect: String,
}

fn parse_config(config: &str) -> Result<Config, String> {
    let config = config.trim();
    let mut parsed = Config { path: DEFAULT_PATH.to_owned(), expect: DEFAULT_EXPECT.to_owned() };
    if config.is_empty() {
        return Ok(parsed);
    }
    if !config.starts_with('{') {
        if !config.starts_with('/') {
            return Err(format!("invalid config {config:?}: expected a path starting with '/' or a JSON object"));
        }
        parsed.path = config.to_owned();
        return Ok(parsed);
    }
    let value: Value = serde_json::from_str(config).map_err(|e| format!("invalid JSON config: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("invalid JSON config: expected an object".to_owned());
    };
    for (key, value) in fields {
        let Value::String(text) = value else {
            return Err(format!("invalid JSON config: \"{key}\" must be a string"));
        };
        match key.as_str() {
            "path" if text.starts_with('/') => parsed.path = text,
            "path" => return Err(format!("invalid JSON config: \"path\" must start with '/', got {text:?}")),
            "expect" => parsed.expect = text,
            other => {
                return Err(format!("invalid JSON config: unknown field \"{other}\" (expected \"path\", \"expect\")"));
            }
        }
    }
    Ok(parsed)
}

/// Up to `max` bytes of `text`, cut at a character boundary, with "..." when cut.
fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Decides the result from the HTTP status code and body.
fn evaluate(url: &str, code: u16, body: &str, expect: &str) -> CheckResult {
    let success = (200..300).contains(&code);
    let status = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_owned));
    let Some(status) = status else {
        return CheckResult::critical(format!(
            "GET {url}: {code}, body is not JSON with a string \"status\": {:?}",
            excerpt(body.trim(), BODY_EXCERPT)
        ));
    };
    let seen = format!("GET {url}: {code}, status {status:?}");
    if success && status.eq_ignore_ascii_case(expect) {
        CheckResult::passing(seen)
    } else if !success || DOWN_STATUSES.iter().any(|down| status.eq_ignore_ascii_case(down)) {
        CheckResult::critical(seen)
    } else {
        CheckResult::warning(format!("{seen}, expected {expect:?}"))
    }
}

struct HttpJson;

impl HealthCheck for HttpJson {
    fn check(target: Instance, config: String) -> Result<CheckResult, String> {
        let config = parse_config(&config)?;
        let url = target.url(&config.path);
        match http::request("GET", &url, &[("Accept", "application/json")], &[]) {
            Ok(response) => Ok(evaluate(&url, response.status, &response.text(), &config.expect)),
            Err(e) => Ok(CheckResult::critical(format!("GET {url}: {e}"))),
        }
    }
}

wharf_plugin_sdk::export_health_check!(HttpJson);

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_plugin_sdk::Status;

    fn config(path: &str, expect: &str) -> Config {
        Config { path: path.to_owned(), expect: expect.to_owned() }
    }

    #[test]
    fn parses_config() {
        assert_eq!(parse_config(""), Ok(config("/health", "UP")));
        assert_eq!(parse_config(" /actuator/health\n"), Ok(config("/actuator/health", "UP")));
        assert_eq!(parse_config(r#"{"path": "/status", "expect": "OK"}"#), Ok(config("/status", "OK")));
        assert_eq!(parse_config(r#"{"expect": "ok"}"#), Ok(config("/health", "ok")));
        assert!(parse_config("health").is_err());
        assert!(parse_config(r#"{"path": "x"}"#).is_err());
        assert!(parse_config(r#"{"pth": "/x"}"#).expect_err("must be rejected").contains("unknown field \"pth\""));
        assert!(parse_config(r#"{"path": 1}"#).is_err());
        assert!(parse_config("{").expect_err("must be rejected").starts_with("invalid JSON config"));
    }

    #[test]
    fn evaluates_responses() {
        let url = "http://127.0.0.1:8080/health";
        let up = evaluate(url, 200, "{\n  \"status\" : \"UP\", \"components\": {}\n}", "UP");
        assert_eq!(up.status, Status::Passing);
        assert_eq!(up.output, r#"GET http://127.0.0.1:8080/health: 200, status "UP""#);
        assert_eq!(evaluate(url, 503, r#"{"status":"DOWN"}"#, "UP").status, Status::Critical);
        assert_eq!(evaluate(url, 200, r#"{"status":"OUT_OF_SERVICE"}"#, "UP").status, Status::Critical);
        assert_eq!(evaluate(url, 503, r#"{"status":"UP"}"#, "UP").status, Status::Critical);
        assert_eq!(evaluate(url, 200, r#"{"status":"UNKNOWN"}"#, "UP").status, Status::Warning);
        assert_eq!(evaluate(url, 200, r#"{"status":"ok"}"#, "OK").status, Status::Passing);
        let html = evaluate(url, 200, "<html>hello</html>", "UP");
        assert_eq!(html.status, Status::Critical);
        assert!(html.output.contains("not JSON"), "{}", html.output);
        assert_eq!(evaluate(url, 200, r#"{"status": 1}"#, "UP").status, Status::Critical);
        assert_eq!(evaluate(url, 200, r#"["UP"]"#, "UP").status, Status::Critical);
    }

    #[test]
    fn cuts_excerpts_at_char_boundaries() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("ééé", 3), "é...");
    }
}
