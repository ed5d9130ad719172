//! `redis-ping`: a health check that sends `PING` to a Redis server.
//!
//! * `+PONG`: passing;
//! * `-LOADING ...` (dataset still loading) or `-BUSY ...` (a script is running): warning;
//! * any other error (e.g. `-NOAUTH`), no reply, or a connection failure: critical, with the reply.
//!
//! Config (the check's `Wasm.Config`): empty, or the server's password. With a password the
//! plugin sends `AUTH <password>`, `PING` and `QUIT` in one go and expects `+OK` to the `AUTH`.

use wharf_plugin_sdk::{CheckResult, HealthCheck, Instance, tcp};

/// Longest reply read without a password: `+PONG\r\n` or a short error line.
const MAX_REPLY: u32 = 64;
/// Longest reply read with a password: three reply lines.
const MAX_AUTH_REPLY: u32 = 512;

/// Encodes a command as a RESP array of bulk strings.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The reply lines in `bytes` (lossy UTF-8, without the CRLF terminators).
fn reply_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes).split("\r\n").filter(|line| !line.is_empty()).map(str::to_owned).collect()
}

/// Classifies the reply to `PING`.
fn evaluate_ping(server: &str, reply: Option<&str>) -> CheckResult {
    match reply {
        Some("+PONG") => CheckResult::passing(format!("{server}: +PONG")),
        Some(error) if error.starts_with("-LOADING") || error.starts_with("-BUSY") => {
            CheckResult::warning(format!("{server}: {error}"))
        }
        Some(error) if error.starts_with('-') => CheckResult::critical(format!("{server}: {error}")),
        Some(other) => CheckResult::critical(format!("{server}: unexpected reply to PING: {other:?}")),
        None => CheckResult::critical(format!("{server}: connection closed without a reply to PING")),
    }
}

/// Classifies the replies to `AUTH`, `PING` (and `QUIT`).
fn evaluate_auth(server: &str, lines: &[String]) -> CheckResult {
    match lines.first().map(String::as_str) {
        Some("+OK") => evaluate_ping(server, lines.get(1).map(String::as_str)),
        Some(error) => CheckResult::critical(format!("{server}: AUTH failed: {error}")),
        None => CheckResult::critical(format!("{server}: connection closed without a reply to AUTH")),
    }
}

struct RedisPing;

impl HealthCheck for RedisPing {
    fn check(target: Instance, config: String) -> Result<CheckResult, String> {
        let server = target.host_port();
        let ping = command(&[b"PING"]);
        if config.is_empty() {
            return Ok(match tcp::exchange(&server, &ping, b"\r\n", MAX_REPLY) {
                Ok(reply) => evaluate_ping(&server, reply_lines(&reply).first().map(String::as_str)),
                Err(e) => CheckResult::critical(format!("{server}: {e}")),
            });
        }
        // Every exchange is a new connection, so AUTH and PING are pipelined; QUIT makes the server
        // close the connection when AUTH fails (the reply then has no PONG to stop at).
        let mut send = command(&[b"AUTH", config.as_bytes()]);
        send.extend_from_slice(&ping);
        send.extend_from_slice(&command(&[b"QUIT"]));
        Ok(match tcp::exchange(&server, &send, b"+PONG\r\n", MAX_AUTH_REPLY) {
            Ok(reply) => evaluate_auth(&server, &reply_lines(&reply)),
            Err(e) => CheckResult::critical(format!("{server}: {e}")),
        })
    }
}

wharf_plugin_sdk::export_health_check!(RedisPing);

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_plugin_sdk::Status;

    #[test]
    fn encodes_resp_arrays() {
        assert_eq!(command(&[b"PING"]), b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(command(&[b"AUTH", b"s3cr3t"]), b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cr3t\r\n");
    }

    #[test]
    fn classifies_ping_replies() {
        let status = |reply: &[u8]| evaluate_ping("r:6379", reply_lines(reply).first().map(String::as_str)).status;
        assert_eq!(status(b"+PONG\r\n"), Status::Passing);
        assert_eq!(status(b"-LOADING Redis is loading the dataset in memory\r\n"), Status::Warning);
        assert_eq!(status(b"-BUSY Redis is busy running a script\r\n"), Status::Warning);
        assert_eq!(status(b"-NOAUTH Authentication required.\r\n"), Status::Critical);
        assert_eq!(status(b"HTTP/1.1 400 Bad Request\r\n"), Status::Critical);
        assert_eq!(status(b""), Status::Critical);
        let result = evaluate_ping("r:6379", Some("-NOAUTH Authentication required."));
        assert_eq!(result.output, "r:6379: -NOAUTH Authentication required.");
    }

    #[test]
    fn classifies_auth_replies() {
        let auth = |reply: &[u8]| evaluate_auth("r:6379", &reply_lines(reply));
        assert_eq!(auth(b"+OK\r\n+PONG\r\n").status, Status::Passing);
        assert_eq!(auth(b"+OK\r\n-LOADING x\r\n+OK\r\n").status, Status::Warning);
        let failed = auth(b"-WRONGPASS invalid username-password pair\r\n-NOAUTH Authentication required.\r\n+OK\r\n");
        assert_eq!(failed.status, Status::Critical);
        assert_eq!(failed.output, "r:6379: AUTH failed: -WRONGPASS invalid username-password pair");
        assert_eq!(auth(b"").status, Status::Critical);
    }
}
