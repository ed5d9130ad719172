//! wharf's demo web backend, the counterpart of the seed's simple-web: every answer says
//! which container served it (hostname and IP), so a curl loop shows the balancing.
//!
//! `GET /` -> `hello from HOSTNAME (IP)`; `GET /health` -> `{"status":"UP"}` (or 503 after
//! `GET /toggle-health`); `demo-web check` probes /health (for a Docker HEALTHCHECK).
//! SIGTERM stops accepting, lets in-flight requests finish, and exits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// Docker writes the container's own address into /etc/hosts next to its hostname.
fn own_ip(host: &str) -> String {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    hosts
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            let ip = parts.next()?;
            parts.any(|n| n == host).then(|| ip.to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Writes the whole response in one `write_all`: several small writes on a socket with
/// Nagle's algorithm on meet the client's delayed ACK and cost ~40 ms per request.
fn respond(mut s: TcpStream, status: &str, ctype: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(response.as_bytes());
}

fn serve(stream: TcpStream, greeting: Arc<String>, healthy: Arc<AtomicBool>, stopping: Arc<AtomicBool>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let Ok(out) = stream.try_clone() else { return };
        match path {
            "/health" if healthy.load(Ordering::Relaxed) => respond(out, "200 OK", "application/json", "{\"status\":\"UP\"}"),
            "/health" => respond(out, "503 Service Unavailable", "application/json", "{\"status\":\"DOWN\"}"),
            "/toggle-health" => {
                let now = !healthy.fetch_xor(true, Ordering::Relaxed);
                respond(out, "200 OK", "text/plain", if now { "healthy\n" } else { "unhealthy\n" });
            }
            _ => respond(out, "200 OK", "text/plain", &greeting),
        }
        if stopping.load(Ordering::Relaxed) {
            return;
        }
    }
}

fn check(port: u16) -> i32 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return 1 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    // The status line is enough; the server keeps the connection alive.
    let mut status = String::new();
    let _ = BufReader::new(s).read_line(&mut status);
    if status.starts_with("HTTP/1.1 200") { 0 } else { 1 }
}

fn main() {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    if std::env::args().nth(1).as_deref() == Some("check") {
        std::process::exit(check(port));
    }
    let host = hostname();
    let greeting = Arc::new(format!("hello from {host} ({})\n", own_ip(&host)));
    let stopping = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stopping.clone()) {
            eprintln!("cannot handle signal {sig}: {e}");
        }
    }
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    let _ = listener.set_nonblocking(true);
    let healthy = Arc::new(AtomicBool::new(true));
    let active = Arc::new(AtomicUsize::new(0));
    eprintln!("demo-web listening on :{port}");
    while !stopping.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let (g, h, s, a) = (greeting.clone(), healthy.clone(), stopping.clone(), active.clone());
                a.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    serve(stream, g, h, s);
                    a.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    // Graceful stop: no new connections; in-flight requests get up to 5 s.
    drop(listener);
    for _ in 0..500 {
        if active.load(Ordering::SeqCst) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
