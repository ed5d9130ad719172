//! The plugin host against real plugins (built from `plugins/guest` for wasm32-wasip2) and
//! real servers on loopback: the example plugins' behaviour, the sandbox's limits, and what
//! each kind of hostile plugin turns into.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plugins::{Instance, KvPair, PluginConfig, PluginHost, Service, Snapshot, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn plugin_dir() -> PathBuf {
    match plugins::guests::build_guest_plugins() {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    }
}

fn host() -> PluginHost {
    PluginHost::new(PluginConfig::new(plugin_dir())).expect("plugin host")
}

fn instance(port: u16) -> Instance {
    Instance {
        service: "web".into(),
        id: "web-1".into(),
        address: "127.0.0.1".into(),
        port,
        tags: vec!["blue".into(), "v2".into()],
        meta: vec![("team".into(), "core".into())],
    }
}

/// A tiny HTTP/1.1 server on loopback answering every request with the current
/// (status, content type, body).
#[derive(Clone)]
struct Backend {
    port: u16,
    reply: Arc<Mutex<(u16, String)>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    async fn start(status: u16, body: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let reply = Arc::new(Mutex::new((status, body.to_string())));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let b = Backend { port, reply, paths };
        let server = b.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let server = server.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 2048];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    server.paths.lock().expect("lock").push(path);
                    let (status, body) = server.reply.lock().expect("lock").clone();
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        b
    }

    fn set(&self, status: u16, body: &str) {
        *self.reply.lock().expect("lock") = (status, body.to_string());
    }

    fn last_path(&self) -> String {
        self.paths.lock().expect("lock").last().cloned().unwrap_or_default()
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn echo_receives_the_instance_and_config() {
    let h = host();
    let out = h.check("echo", &instance(8080), "hello", SECOND).await;
    assert_eq!(out.status, Status::Passing, "{}", out.output);
    for part in ["web", "web-1", "127.0.0.1:8080", "blue", "v2", "team", "core", "hello"] {
        assert!(out.output.contains(part), "{part:?} missing from {:?}", out.output);
    }
    assert!(out.instantiate > Duration::ZERO);
    // Compiled once: a second call reuses the cached, pre-linked component.
    let again = h.check("echo", &instance(8080), "again", SECOND).await;
    assert!(again.output.contains("again"));
    assert_eq!(h.metrics.compiles.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn http_json_follows_the_actuator_status() {
    let h = host();
    let b = Backend::start(200, r#"{"status":"UP","components":{}}"#).await;
    let inst = instance(b.port);
    let out = h.check("http_json", &inst, "", SECOND).await;
    assert_eq!(out.status, Status::Passing, "{}", out.output);
    assert_eq!(b.last_path(), "/health");
    assert!(out.output.contains("UP"), "{}", out.output);

    let out = h.check("http_json", &inst, "/actuator/health", SECOND).await;
    assert_eq!(out.status, Status::Passing, "{}", out.output);
    assert_eq!(b.last_path(), "/actuator/health");

    b.set(200, r#"{"status":"DOWN"}"#);
    let out = h.check("http_json", &inst, "", SECOND).await;
    assert_eq!(out.status, Status::Critical, "{}", out.output);
    assert!(out.output.contains("DOWN"), "{}", out.output);

    b.set(200, r#"{"status":"UNKNOWN"}"#);
    assert_eq!(h.check("http_json", &inst, "", SECOND).await.status, Status::Warning);

    b.set(503, r#"{"status":"UP"}"#);
    let out = h.check("http_json", &inst, "", SECOND).await;
    assert_eq!(out.status, Status::Critical, "{}", out.output);
    assert!(out.output.contains("503"), "{}", out.output);

    b.set(200, "not json");
    assert_eq!(h.check("http_json", &inst, "", SECOND).await.status, Status::Critical);

    // Nothing listening: critical with the connection error.
    let closed = instance(free_port());
    let out = h.check("http_json", &closed, "", SECOND).await;
    assert_eq!(out.status, Status::Critical);
    assert!(out.output.contains("failed") || out.output.contains("refused"), "{}", out.output);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(port: u16, password: Option<&str>) -> Redis {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    if let Some(p) = password {
        cmd.args(["--requirepass", p]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server not found: scripts/test installs it (apt package redis-server)");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis(child)
}

#[tokio::test]
async fn redis_ping_against_a_real_redis() {
    let h = host();
    let port = free_port();
    let _r = redis(port, None);
    let out = h.check("redis_ping", &instance(port), "", SECOND).await;
    assert_eq!(out.status, Status::Passing, "{}", out.output);
    assert!(out.output.contains("PONG"), "{}", out.output);

    let port = free_port();
    let _r = redis(port, Some("s3cret"));
    let out = h.check("redis_ping", &instance(port), "", SECOND).await;
    assert_eq!(out.status, Status::Critical, "{}", out.output);
    assert!(out.output.contains("NOAUTH"), "{}", out.output);
    let out = h.check("redis_ping", &instance(port), "s3cret", SECOND).await;
    assert_eq!(out.status, Status::Passing, "{}", out.output);
    let out = h.check("redis_ping", &instance(port), "wrong", SECOND).await;
    assert_eq!(out.status, Status::Critical, "{}", out.output);
}

fn tomcat_xml(busy: u32, max: u32) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><status><jvm><memory free='1' total='2' max='3'/></jvm>\
         <connector name='\"http-nio-8080\"'><threadInfo  maxThreads=\"{max}\" currentThreadCount=\"{max}\" \
         currentThreadsBusy=\"{busy}\" /><requestInfo maxTime=\"1\" processingTime=\"1\" requestCount=\"1\" \
         errorCount=\"0\" bytesReceived=\"0\" bytesSent=\"0\" /></connector></status>"
    )
}

#[tokio::test]
async fn tomcat_status_warns_above_the_busy_thread_threshold() {
    let h = host();
    let b = Backend::start(200, &tomcat_xml(10, 200)).await;
    let inst = instance(b.port);
    let out = h.check("tomcat_status", &inst, "warn=80", SECOND).await;
    assert_eq!(out.status, Status::Passing, "{}", out.output);
    assert!(b.last_path().starts_with("/manager/status"), "{}", b.last_path());

    b.set(200, &tomcat_xml(170, 200));
    let out = h.check("tomcat_status", &inst, "warn=80", SECOND).await;
    assert_eq!(out.status, Status::Warning, "{}", out.output);
    assert!(out.output.contains("170/200"), "{}", out.output);

    b.set(200, &tomcat_xml(199, 200));
    let cfg = r#"{"warn_percent": 80, "critical_percent": 95}"#;
    assert_eq!(h.check("tomcat_status", &inst, cfg, SECOND).await.status, Status::Critical);

    b.set(500, "oops");
    assert_eq!(h.check("tomcat_status", &inst, "", SECOND).await.status, Status::Critical);
}

#[tokio::test]
async fn a_runaway_loop_is_stopped_at_the_timeout() {
    let h = host();
    let started = Instant::now();
    let out = h.check("spin_loop", &instance(1), "", Duration::from_millis(300)).await;
    let took = started.elapsed();
    assert_eq!(out.status, Status::Critical);
    assert!(out.output.contains("did not finish within the check's timeout of 300ms"), "{}", out.output);
    assert!(took < Duration::from_millis(600), "stopped after {took:?}");

    // A slow but finite plugin inside its timeout is fine.
    let out = h.check("echo", &instance(1), "sleep:50", SECOND).await;
    assert_eq!(out.status, Status::Passing, "{}", out.output);
}

#[test]
fn a_runaway_loop_does_not_starve_other_work() {
    // One runtime thread: the loop must yield, or the ticker task below could not run.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let h = Arc::new(host());
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let out = h.check("spin_loop", &instance(1), "", Duration::from_millis(500)).await;
        assert_eq!(out.status, Status::Critical);
        ticker.abort();
        let n = ticks.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n >= 10, "other tasks ran only {n} times during a 500 ms runaway plugin");
    });
}

#[tokio::test]
async fn a_memory_bomb_hits_the_limit() {
    let h = host();
    let out = h.check("memory_bomb", &instance(1), "", Duration::from_secs(5)).await;
    assert_eq!(out.status, Status::Critical);
    assert!(out.output.contains("exceeded its memory limit of 16 MiB"), "{}", out.output);

    let mut cfg = PluginConfig::new(plugin_dir());
    cfg.memory_limit = 4 << 20;
    let small = PluginHost::new(cfg).expect("host");
    let out = small.check("memory_bomb", &instance(1), "", Duration::from_secs(5)).await;
    assert!(out.output.contains("memory limit of 4 MiB"), "{}", out.output);
}

#[tokio::test]
async fn a_trap_is_critical_with_the_panic_message() {
    let h = host();
    let out = h.check("trap", &instance(1), "", SECOND).await;
    assert_eq!(out.status, Status::Critical);
    assert!(out.output.contains("trapped"), "{}", out.output);
    assert!(out.output.contains("deliberate trap"), "{}", out.output);
    // The next call gets a fresh instance and traps the same way, without side effects.
    let again = h.check("trap", &instance(1), "", SECOND).await;
    assert_eq!(again.output, out.output);
}

#[tokio::test]
async fn huge_output_is_cut() {
    let h = host();
    let out = h.check("huge_output", &instance(1), "", Duration::from_secs(5)).await;
    assert_eq!(out.status, Status::Passing, "{}", &out.output[..200.min(out.output.len())]);
    assert!(out.output.len() <= plugins::MAX_OUTPUT, "{} bytes", out.output.len());
    assert!(out.output.ends_with("(cut: 8388608 bytes in all)"), "{}", &out.output[out.output.len() - 60..]);
}

#[tokio::test]
async fn only_the_checked_instance_is_reachable() {
    let h = host();
    let b = Backend::start(200, "{}").await;
    let inst = instance(b.port);
    let out = h.check("forbidden_address", &inst, "http", SECOND).await;
    assert_eq!(out.status, Status::Critical, "{}", out.output);
    assert!(out.output.contains("refused: a plugin may only reach the instance it checks"), "{}", out.output);

    // The sandbox's own message, not the operating system's "Connection refused" (nothing
    // listens on the forbidden addresses, so that would match a bare "refused").
    const SANDBOX: &str = "refused: a plugin may only reach the instance it checks";
    let out = h.check("forbidden_address", &inst, "tcp", SECOND).await;
    assert_eq!(out.status, Status::Critical, "{}", out.output);
    assert!(out.output.contains(SANDBOX), "{}", out.output);

    // Same address, another port: refused too.
    let other = format!("http://127.0.0.1:{}/", free_port());
    let out = h.check("forbidden_address", &inst, &format!("http:{other}"), SECOND).await;
    assert!(out.output.contains(SANDBOX), "{}", out.output);

    // WASI sockets: no network is granted at all, even to the instance.
    let out = h.check("forbidden_address", &inst, "std", SECOND).await;
    assert_eq!(out.status, Status::Critical, "{}", out.output);
    assert!(!out.output.contains("REACHED"), "{}", out.output);
    assert!(b.paths.lock().expect("lock").is_empty(), "the backend was reached");
}

#[tokio::test]
async fn malformed_results_and_bad_files_are_critical_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy(&plugin_dir(), dir.path(), "garbage");
    std::fs::write(dir.path().join("random.wasm"), b"this is not wasm at all").expect("write");
    // A core module (magic + version 1), not a component.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    copy(&plugin_dir(), dir.path(), "upstreams_template");
    let h = PluginHost::new(PluginConfig::new(dir.path())).expect("host");

    let out = h.check("garbage", &instance(1), "", SECOND).await;
    assert_eq!(out.status, Status::Critical);
    assert!(out.output.contains("failed") && out.output.to_lowercase().contains("utf-8"), "{}", out.output);

    let out = h.check("random", &instance(1), "", SECOND).await;
    assert_eq!(out.status, Status::Critical);
    assert!(out.output.contains("not a WebAssembly file"), "{}", out.output);

    let out = h.check("core", &instance(1), "", SECOND).await;
    assert!(out.output.contains("core Wasm module, not a component"), "{}", out.output);

    let out = h.check("upstreams_template", &instance(1), "", SECOND).await;
    assert!(out.output.contains("does not export the health-check world"), "{}", out.output);

    let out = h.check("missing", &instance(1), "", SECOND).await;
    assert!(out.output.contains("unknown plugin \"missing\""), "{}", out.output);
    assert!(h.resolve("../etc/passwd").is_err());
    assert!(h.resolve("missing").is_err());
    assert!(h.resolve("garbage").is_ok());
}

fn copy(from: &Path, to: &Path, name: &str) {
    std::fs::copy(from.join(format!("{name}.wasm")), to.join(format!("{name}.wasm"))).expect("copy plugin");
}

#[tokio::test]
async fn a_changed_plugin_file_is_recompiled() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugin_dir().join("trap.wasm"), dir.path().join("p.wasm")).expect("copy");
    let h = PluginHost::new(PluginConfig::new(dir.path())).expect("host");
    assert!(h.check("p", &instance(1), "", SECOND).await.output.contains("trapped"));
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(plugin_dir().join("echo.wasm"), dir.path().join("p.wasm")).expect("copy");
    let out = h.check("p", &instance(1), "x", SECOND).await;
    assert_eq!(out.status, Status::Passing, "{}", out.output);
}

#[tokio::test]
async fn template_plugin_renders_the_snapshot() {
    let h = host();
    let snap = Snapshot {
        services: vec![
            Service { name: "api".into(), instances: vec![] },
            Service {
                name: "web".into(),
                instances: vec![instance(8080), Instance { address: "10.0.0.2".into(), ..instance(8081) }],
            },
        ],
        kv: vec![KvPair { key: "wharf/x".into(), value: b"1".to_vec() }],
    };
    let text = h.render("upstreams_template", &snap, "", SECOND).await.expect("render");
    assert!(text.contains("upstream web {"), "{text}");
    assert!(text.contains("server 127.0.0.1:8080"), "{text}");
    assert!(text.contains("server 10.0.0.2:8081"), "{text}");
    assert!(text.contains("upstream api {"), "{text}");

    let err = h.render("upstreams_template", &snap, "{not json", SECOND).await.expect_err("bad config");
    assert!(err.contains("upstreams_template"), "{err}");
    let err = h.render("echo", &snap, "", SECOND).await.expect_err("not a template");
    assert!(err.contains("does not export the template world"), "{err}");
}

#[tokio::test]
async fn many_checks_run_concurrently() {
    let h = Arc::new(host());
    let b = Backend::start(200, r#"{"status":"UP"}"#).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let h = h.clone();
        let inst = instance(b.port);
        tasks.push(tokio::spawn(async move { h.check("http_json", &inst, "", Duration::from_secs(5)).await }));
    }
    for t in tasks {
        let out = t.await.expect("task");
        assert_eq!(out.status, Status::Passing, "{}", out.output);
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}
