//! Built-in health checks run by the agent, against real servers on loopback: HTTP (status
//! mapping, method, headers, body), TCP, TTL expiry, gRPC health, script checks, every
//! threshold rule, writes only on change, DeregisterCriticalServiceAfter, and the proxy pool
//! following a failing /health.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::harness::{Agent, Api, Backend, backend_service, wait_for};
use crate::proxy::ProxyAgent;

/// The last request a [`HealthServer`] saw: method, X-Probe header, body.
type SeenRequest = Arc<Mutex<Option<(String, Option<String>, String)>>>;

/// An HTTP server whose /health answers a settable status, recording what it received.
struct HealthServer {
    port: u16,
    code: Arc<AtomicU16>,
    last: SeenRequest,
}

impl HealthServer {
    async fn start(code: u16) -> HealthServer {
        use axum::extract::Request;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let code = Arc::new(AtomicU16::new(code));
        let last = Arc::new(Mutex::new(None));
        let (c, l) = (code.clone(), last.clone());
        let app = axum::Router::new().fallback(move |req: Request| {
            let (c, l) = (c.clone(), l.clone());
            async move {
                let method = req.method().to_string();
                let probe = req.headers().get("x-probe").and_then(|v| v.to_str().ok()).map(str::to_string);
                let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
                *l.lock().await = Some((method, probe, String::from_utf8_lossy(&body).to_string()));
                let status =
                    axum::http::StatusCode::from_u16(c.load(Ordering::Relaxed)).unwrap_or(axum::http::StatusCode::OK);
                (status, "health body")
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HealthServer { port, code, last }
    }

    fn set(&self, code: u16) {
        self.code.store(code, Ordering::Relaxed);
    }
}

async fn check_status(api: &Api, id: &str) -> (String, String) {
    let (c, _) = api.get_json("/v1/agent/checks").await;
    (c[id]["Status"].as_str().unwrap_or("").to_string(), c[id]["Output"].as_str().unwrap_or("").to_string())
}

async fn wait_status(api: &Api, id: &str, want: &str, within: Duration) {
    let (api, id, want2) = (api.clone(), id.to_string(), want.to_string());
    wait_for(&format!("{id} -> {want}"), within, || {
        let (api, id, want) = (api.clone(), id.clone(), want2.clone());
        async move { check_status(&api, &id).await.0 == want }
    })
    .await;
}

async fn register_check(api: &Api, body: Value) {
    api.put_ok("/v1/agent/check/register", body.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tcp_ttl_grpc_and_script_checks() {
    let agent = Agent::dev_with(&["--enable-script-checks"]).await;
    let api = Api::new(&agent);

    // HTTP: 2xx passing, 429 warning, anything else critical; method, headers and body sent.
    let h = HealthServer::start(200).await;
    register_check(
        &api,
        json!({"ID": "http", "Name": "http", "HTTP": format!("http://127.0.0.1:{}/health", h.port),
        "Method": "POST", "Header": {"X-Probe": ["yes"]}, "Body": "ping", "Interval": "100ms", "Timeout": "1s"}),
    )
    .await;
    wait_status(&api, "http", "passing", Duration::from_secs(3)).await;
    let (method, probe, body) = h.last.lock().await.clone().expect("a request");
    assert_eq!((method.as_str(), probe.as_deref(), body.as_str()), ("POST", Some("yes"), "ping"));
    assert!(check_status(&api, "http").await.1.contains("200 OK"));
    h.set(429);
    wait_status(&api, "http", "warning", Duration::from_secs(3)).await;
    h.set(503);
    wait_status(&api, "http", "critical", Duration::from_secs(3)).await;
    assert!(check_status(&api, "http").await.1.contains("503"), "output says why");

    // TCP
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let open_port = open.local_addr().expect("addr").port();
    register_check(
        &api,
        json!({"ID": "tcp-open", "Name": "t", "TCP": format!("127.0.0.1:{open_port}"), "Interval": "100ms"}),
    )
    .await;
    wait_status(&api, "tcp-open", "passing", Duration::from_secs(3)).await;
    drop(open);
    wait_status(&api, "tcp-open", "critical", Duration::from_secs(3)).await;
    assert!(check_status(&api, "tcp-open").await.1.starts_with("TCP connect"));

    // TTL: refreshed it passes; unrefreshed it expires to critical.
    register_check(&api, json!({"ID": "ttl", "Name": "ttl", "TTL": "400ms"})).await;
    api.put_ok("/v1/agent/check/pass/ttl?note=alive", "").await;
    assert_eq!(check_status(&api, "ttl").await.0, "passing");
    let passed = Instant::now();
    wait_status(&api, "ttl", "critical", Duration::from_secs(3)).await;
    assert!(passed.elapsed() >= Duration::from_millis(390), "expired too early: {:?}", passed.elapsed());
    assert!(check_status(&api, "ttl").await.1.contains("TTL expired"));

    // gRPC health over h2c.
    let serving = Arc::new(AtomicU16::new(1));
    let s = serving.clone();
    let grpc = axum::Router::new().route(
        "/grpc.health.v1.Health/Check",
        axum::routing::post(move || {
            let s = s.clone();
            async move {
                let status = s.load(Ordering::Relaxed) as u8;
                ([("content-type", "application/grpc"), ("grpc-status", "0")], vec![0u8, 0, 0, 0, 2, 0x08, status])
            }
        }),
    );
    let gl = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gport = gl.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(gl, grpc).await;
    });
    register_check(
        &api,
        json!({"ID": "grpc", "Name": "g", "GRPC": format!("127.0.0.1:{gport}/my.Service"), "Interval": "100ms"}),
    )
    .await;
    wait_status(&api, "grpc", "passing", Duration::from_secs(3)).await;
    serving.store(2, Ordering::Relaxed);
    wait_status(&api, "grpc", "critical", Duration::from_secs(3)).await;

    // Script checks: exit 0 passing, 1 warning, other critical.
    for (id, code, want) in [("s0", 0, "passing"), ("s1", 1, "warning"), ("s2", 2, "critical")] {
        register_check(&api, json!({"ID": id, "Name": id, "Args": ["sh", "-c", format!("echo out-{code}; exit {code}")], "Interval": "100ms", "Status": if want == "critical" { "passing" } else { "critical" }})).await;
        wait_status(&api, id, want, Duration::from_secs(3)).await;
    }
    assert!(check_status(&api, "s1").await.1.contains("out-1"));

    // Without --enable-script-checks, script checks are refused at registration.
    let plain = Agent::dev().await;
    let r = Api::new(&plain)
        .put("/v1/agent/check/register", json!({"Name": "x", "Args": ["true"], "Interval": "1s"}).to_string())
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("--enable-script-checks"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_writes_only_on_change_and_deregistration() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    let h = HealthServer::start(500).await;
    let url = format!("http://127.0.0.1:{}/", h.port);
    // SuccessBeforePassing 3: two good probes are not enough.
    register_check(
        &api,
        json!({"ID": "sbp", "Name": "sbp", "HTTP": url, "Interval": "150ms", "SuccessBeforePassing": 3,
        "FailuresBeforeWarning": 2, "FailuresBeforeCritical": 4}),
    )
    .await;
    wait_status(&api, "sbp", "critical", Duration::from_secs(2)).await;
    h.set(200);
    let turned = Instant::now();
    wait_status(&api, "sbp", "passing", Duration::from_secs(3)).await;
    assert!(turned.elapsed() >= Duration::from_millis(300), "passed after {:?}: needs 3 successes", turned.elapsed());
    // FailuresBeforeWarning 2, FailuresBeforeCritical 4.
    h.set(500);
    let failing = Instant::now();
    wait_status(&api, "sbp", "warning", Duration::from_secs(3)).await;
    let to_warning = failing.elapsed();
    wait_status(&api, "sbp", "critical", Duration::from_secs(3)).await;
    let to_critical = failing.elapsed();
    assert!(to_warning >= Duration::from_millis(150), "warning after {to_warning:?}");
    assert!(
        to_critical >= to_warning + Duration::from_millis(250),
        "critical after {to_critical:?}, warning after {to_warning:?}"
    );

    // A steady passing check writes nothing.
    let steady = HealthServer::start(200).await;
    register_check(&api, json!({"ID": "steady", "Name": "steady", "HTTP": format!("http://127.0.0.1:{}/", steady.port), "Interval": "50ms"})).await;
    wait_status(&api, "steady", "passing", Duration::from_secs(2)).await;
    let before = api.get_json("/v1/agent/checks").await.0["steady"]["ModifyIndex"].clone();
    let metric = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("wharf_health_status_writes_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    h.set(200);
    wait_status(&api, "sbp", "passing", Duration::from_secs(3)).await;
    let writes_before = metric(&api.get("/metrics").await.body).expect("metric");
    tokio::time::sleep(Duration::from_millis(1000)).await; // ~20 probes of `steady`, ~6 of `sbp`
    let writes_after = metric(&api.get("/metrics").await.body).expect("metric");
    assert_eq!(writes_before, writes_after, "steady checks wrote to the catalog");
    assert_eq!(api.get_json("/v1/agent/checks").await.0["steady"]["ModifyIndex"], before);

    // DeregisterCriticalServiceAfter (below Consul's 1-minute floor).
    let gone = HealthServer::start(500).await;
    api.put_ok(
        "/v1/agent/service/register",
        json!({"Name": "doomed", "Port": gone.port, "Check": {"HTTP": format!("http://127.0.0.1:{}/", gone.port),
        "Interval": "100ms", "DeregisterCriticalServiceAfter": "500ms"}})
        .to_string(),
    )
    .await;
    wait_for("doomed deregistered", Duration::from_secs(5), || async {
        api.get_json("/v1/agent/services").await.0.get("doomed").is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_leaves_the_pool_within_one_interval() {
    let p = ProxyAgent::start(&[]).await;
    let good = Backend::start("good").await;
    let sick = HealthServer::start(200).await;
    p.api.put_ok("/v1/agent/service/register", backend_service(&good, "web", json!({}))).await;
    let interval = Duration::from_millis(500);
    p.api
        .put_ok(
            "/v1/agent/service/register",
            json!({"ID": "web-sick", "Name": "web", "Address": "127.0.0.1", "Port": sick.port,
                "Check": {"CheckID": "sick-health", "HTTP": format!("http://127.0.0.1:{}/health", sick.port), "Interval": "500ms", "SuccessBeforePassing": 2}})
            .to_string(),
        )
        .await;
    // Two passes before it enters the pool.
    wait_for("sick instance in the pool", Duration::from_secs(5), || async {
        p.api.get_json("/v1/health/service/web?passing").await.0.as_array().map(Vec::len) == Some(2)
    })
    .await;
    sick.set(500);
    let failed_at = Instant::now();
    let mut left = None;
    while failed_at.elapsed() < Duration::from_secs(3) {
        let (_, body) = p.get("web.localhost", "/").await;
        if p.api.get_json("/v1/health/service/web?passing").await.0.as_array().map(Vec::len) == Some(1)
            && body.starts_with("good")
        {
            left = Some(failed_at.elapsed());
            break;
        }
    }
    let left = left.expect("left the pool");
    assert!(left <= interval + Duration::from_millis(50) + Duration::from_millis(20), "left after {left:?}");
    // Every request goes to the good one now.
    let seen = p.spread("web.localhost", "/", 10).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["good"]);
    // Back after SuccessBeforePassing (2) passes.
    sick.set(200);
    let healed = Instant::now();
    wait_for("back in the pool", Duration::from_secs(5), || async {
        p.api.get_json("/v1/health/service/web?passing").await.0.as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert!(healed.elapsed() >= interval, "came back after {:?}, before 2 passes", healed.elapsed());
    println!("health: left the pool {left:?} after /health failed; back {:?} after it healed", healed.elapsed());
}
