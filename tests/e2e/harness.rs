//! Starts the real `wharf` binary on free loopback ports with a temp data dir, and
//! kills it when the guard drops. Waits are conditions with deadlines, never bare sleeps.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_wharf");

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A UDP port free now (the gossip port).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    s.local_addr().expect("local addr").port()
}

/// Polls `cond` until it is true or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Agent {
    pub child: Option<Child>,
    pub http_port: u16,
    pub raft_port: u16,
    /// The gossip port (UDP).
    pub serf_port: u16,
    pub node: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Extra environment for the agent process.
    pub env: Vec<(String, String)>,
    extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Agent {
    /// A single-node dev agent in a fresh temp dir.
    pub async fn dev() -> Agent {
        Self::dev_with(&[]).await
    }

    pub async fn dev_with(extra: &[&str]) -> Agent {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut a = Agent::new(data_dir, "node-1", extra.iter().map(|s| s.to_string()).collect(), Some(tmp));
        a.start(&["--dev"]);
        a.wait_ready().await;
        a
    }

    pub fn new(data_dir: PathBuf, node: &str, extra: Vec<String>, tmp: Option<tempfile::TempDir>) -> Agent {
        let log = data_dir.with_extension("log");
        Agent {
            child: None,
            http_port: free_port(),
            raft_port: free_port(),
            serf_port: free_udp_port(),
            node: node.to_string(),
            data_dir,
            log,
            env: Vec::new(),
            extra,
            _tmp: tmp,
        }
    }

    pub fn start(&mut self, mode: &[&str]) {
        std::fs::create_dir_all(self.data_dir.parent().unwrap_or(Path::new("/tmp"))).expect("mkdir");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(BIN)
            .arg("agent")
            .args(mode)
            .args(["--data-dir", self.data_dir.to_str().expect("utf8 path")])
            .args(["--node", &self.node])
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--raft-port", &self.raft_port.to_string()])
            .args(["--serf-lan-port", &self.serf_port.to_string()])
            // Agents that join bind all interfaces and advertise the host's private address
            // by default; tests keep every node on loopback.
            .args(if self.extra.iter().any(|a| a == "--bind") { &[][..] } else { &["--bind", "127.0.0.1"][..] })
            .args(&self.extra)
            // Tests that want the proxy pass --proxy-addr on a free port; others must not
            // compete for :80.
            .args(if self.extra.iter().any(|a| a == "--proxy-addr") { &[][..] } else { &["--no-proxy"][..] })
            // Only Docker tests watch the engine; others must not see its containers.
            .args(if self.extra.iter().any(|a| a == "--docker") { &[][..] } else { &["--docker", "off"][..] })
            // Every agent gets its own DNS port unless the test chose one (or --no-dns).
            .args(if self.extra.iter().any(|a| a == "--dns-port" || a == "--no-dns") {
                Vec::new()
            } else {
                vec!["--dns-port".to_string(), free_port().to_string()]
            })
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start wharf agent");
        self.child = Some(child);
    }

    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.http_port, path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a leader is known and this agent's node is in the catalog.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let node_url = self.url(&format!("/v1/catalog/node/{}", self.node));
        let leader_url = self.url("/v1/status/leader");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leader = client.get(&leader_url).send().await.ok();
            let leader_ok = match leader {
                Some(r) => r.text().await.map(|t| t.len() > 2).unwrap_or(false),
                None => false,
            };
            if leader_ok
                && let Ok(r) = client.get(&node_url).send().await
                && let Ok(v) = r.json::<Value>().await
                && !v.is_null()
            {
                return;
            }
            assert!(Instant::now() < deadline, "agent {} not ready in 30s; log:\n{}", self.node, self.log_text());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let status = Command::new("kill").args([sig, &c.id().to_string()]).status().expect("kill");
            assert!(status.success());
        }
    }

    /// Runs a CLI command against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(["-http-addr", &self.http_addr()]).args(args).output().expect("run wharf cli")
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = &mut self.child
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A small JSON-over-HTTP client for tests.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

pub struct Resp {
    pub status: u16,
    pub index: Option<u64>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

impl Api {
    pub fn new(agent: &Agent) -> Api {
        Api { base: agent.url(""), http: reqwest::Client::new() }
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(b) = body {
            req = req.body(b);
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let index = headers.get("x-consul-index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let body = r.text().await.unwrap_or_default();
        Resp { status, index, headers, body }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: impl Into<Vec<u8>>) -> Resp {
        self.send(reqwest::Method::PUT, path, Some(body.into())).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// PUT that must answer 200.
    pub async fn put_ok(&self, path: &str, body: impl Into<Vec<u8>>) -> Resp {
        let r = self.put(path, body).await;
        assert_eq!(r.status, 200, "PUT {path}: {}", r.body);
        r
    }

    /// GET that must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> (Value, u64) {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        (r.json(), r.index.unwrap_or(0))
    }
}

/// A real HTTP backend on loopback that answers with its name. `GET /headers` echoes the
/// request headers as JSON; `GET /slow?ms=N` answers after N ms. It runs on a runtime of
/// its own, so `kill` really drops every connection, like a crashed process.
pub struct Backend {
    pub name: String,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        use axum::extract::{Query, Request};
        use axum::routing::get;

        let n1 = name.to_string();
        let n2 = name.to_string();
        let app = axum::Router::new()
            .route(
                "/headers",
                get(|req: Request| async move {
                    let h: serde_json::Map<String, Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), Value::String(v.to_str().unwrap_or("").to_string())))
                        .collect();
                    axum::Json(Value::Object(h))
                }),
            )
            .route(
                "/slow",
                get(move |Query(q): Query<std::collections::HashMap<String, u64>>| async move {
                    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(500))).await;
                    n1
                }),
            )
            .fallback(move |req: Request| async move { format!("{n2} {}", req.uri().path()) });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("backend runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
                let _ = addr_tx.send(listener.local_addr().expect("addr"));
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                });
                tokio::select! {
                    _ = serve => {}
                    _ = kill_rx => {}
                }
            });
            // Dropping the runtime drops every connection task: a crash, not a close.
            rt.shutdown_background();
        });
        let addr = addr_rx.await.expect("backend address");
        Backend { name: name.to_string(), addr, stop: Some(stop_tx), kill: Some(kill_tx), thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops accepting, lets in-flight requests finish.
    pub async fn stop_gracefully(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Disappears at once, connections and all (a crash).
    pub fn kill(&mut self) {
        if let Some(tx) = self.kill.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A service registration body for a backend.
pub fn backend_service(b: &Backend, service: &str, extra: Value) -> String {
    let mut v = serde_json::json!({
        "ID": format!("{service}-{}", b.port()), "Name": service, "Address": "127.0.0.1", "Port": b.port(),
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    v.to_string()
}
