//! The JSON-lines access log (off by default), one [`AccessRecord`] per request written the
//! same way by both proxy paths.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::route_table::Route;

/// A JSON-lines access log.
pub struct AccessLog(Mutex<Box<dyn Write + Send>>);

/// What the access log records of one request.
pub struct AccessRecord<'a> {
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    pub route: Option<&'a Route>,
    pub upstream: Option<SocketAddr>,
    pub attempts: usize,
    pub error: Option<String>,
}

impl AccessLog {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        AccessLog(Mutex::new(out))
    }

    /// Opens the log at `path` for appending, a line at a time; `-` is standard output.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if path == Path::new("-") {
            return Ok(AccessLog::new(Box::new(std::io::stdout())));
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AccessLog::new(Box::new(std::io::LineWriter::new(file))))
    }

    /// Writes one request's line.
    pub fn write(&self, r: &AccessRecord<'_>) {
        let line = serde_json::json!({
            "time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            "client": r.client.map(|ip| ip.to_string()),
            "method": r.method,
            "host": r.host,
            "path": r.path,
            "status": r.status,
            "duration_ms": r.elapsed.as_secs_f64() * 1000.0,
            "service": r.route.map(|r| r.service.as_str()),
            "route": r.route.map(|r| r.label.as_str()),
            "upstream": r.upstream.map(|u| u.to_string()),
            "attempts": r.attempts,
            "error": r.error,
        });
        if let Ok(mut w) = self.0.lock() {
            let _ = writeln!(w, "{line}");
        }
    }
}
