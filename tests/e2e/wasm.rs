//! Wasm checks run by the real agent with `--plugin-dir` (plugins built from plugins/guest):
//! registration is validated, a Tomcat whose busy threads pass the threshold leaves the
//! proxy pool and comes back, and hostile plugins leave the agent, its other checks and the
//! proxy unaffected, with a flat RSS over 1,000 runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Agent, Api, Backend, backend_service, wait_for};
use crate::proxy::ProxyAgent;

fn plugin_dir() -> PathBuf {
    plugins::guests::build_guest_plugins().unwrap_or_else(|e| panic!("{e}"))
}

fn plugin_args(dir: &std::path::Path) -> Vec<String> {
    vec!["--plugin-dir".into(), dir.display().to_string()]
}

async fn check(api: &Api, id: &str) -> (String, String) {
    let (c, _) = api.get_json("/v1/agent/checks").await;
    (c[id]["Status"].as_str().unwrap_or("").to_string(), c[id]["Output"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn wasm_check_registration_is_validated() {
    let dir = plugin_dir();
    let args = plugin_args(&dir);
    let agent = Agent::dev_with(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let api = Api::new(&agent);
    api.put_ok("/v1/agent/service/register", json!({"ID": "web-1", "Name": "web", "Port": 8080}).to_string()).await;

    let bad = [
        (
            json!({"Name": "x", "ServiceID": "web-1", "Wasm": {"Module": "nope"}, "Interval": "1s"}),
            "unknown plugin \"nope\"",
        ),
        (
            json!({"Name": "x", "ServiceID": "web-1", "Wasm": {"Module": "../echo"}, "Interval": "1s"}),
            "invalid plugin name",
        ),
        (json!({"Name": "x", "ServiceID": "web-1", "Wasm": {"Module": "echo"}}), "Interval must be > 0"),
        (
            json!({"Name": "x", "ServiceID": "web-1", "Wasm": {"Module": "echo"}, "Interval": "soon"}),
            "Invalid Interval",
        ),
        (json!({"Name": "x", "ServiceID": "web-1", "Wasm": {"Module": ""}, "Interval": "1s"}), "Wasm.Module"),
    ];
    for (body, want) in bad {
        let r = api.put("/v1/agent/check/register", body.to_string()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body.contains(want), "{body}: {:?} lacks {want:?}", r.body);
    }
    // Inside a service registration too; nothing was registered by the refusals.
    let r = api
        .put(
            "/v1/agent/service/register",
            json!({"ID": "web-2", "Name": "web", "Port": 8081, "Check": {"Wasm": {"Module": "nope"}, "Interval": "1s"}})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let (checks, _) = api.get_json("/v1/agent/checks").await;
    assert!(checks.as_object().is_some_and(|m| m.values().all(|c| c["Type"] != "wasm")), "{checks}");
    assert!(api.get_json("/v1/agent/services").await.0.get("web-2").is_none());

    // A good one runs, with the instance and config handed to the plugin.
    api.put_ok(
        "/v1/agent/check/register",
        json!({"Name": "echo", "CheckID": "echo", "ServiceID": "web-1", "Wasm": {"Module": "echo", "Config": "cfg-1"}, "Interval": "100ms"})
            .to_string(),
    )
    .await;
    wait_for("echo check passing", Duration::from_secs(10), || async { check(&api, "echo").await.0 == "passing" })
        .await;
    let (_, output) = check(&api, "echo").await;
    assert!(output.contains("web web-1") && output.contains(":8080") && output.contains("cfg-1"), "{output}");
    let (checks, _) = api.get_json("/v1/agent/checks").await;
    assert_eq!(checks["echo"]["Type"], "wasm");

    // Without --plugin-dir, Wasm checks are refused with the flag to use.
    let plain = Agent::dev().await;
    let plain_api = Api::new(&plain);
    let r = plain_api
        .put("/v1/agent/check/register", json!({"Name": "e", "Wasm": {"Module": "echo"}, "Interval": "1s"}).to_string())
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("--plugin-dir"), "{}", r.body);

    // A --plugin-dir that does not exist stops the agent at start with a clear error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["agent", "--dev", "--plugin-dir", "/nonexistent/plugins", "--no-proxy", "--docker", "off"])
        .output()
        .expect("run wharf");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--plugin-dir /nonexistent/plugins"), "{err}");

    // A config-dir file naming an unknown plugin is refused at start-up, naming the file.
    let conf = tempfile::tempdir().expect("tempdir");
    let file = conf.path().join("web.json");
    std::fs::write(
        &file,
        r#"{"service": {"name": "web", "port": 80, "check": {"wasm": {"module": "nope"}, "interval": "1s"}}}"#,
    )
    .expect("write config");
    let data = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["agent", "--dev", "--no-proxy", "--docker", "off", "--no-dns"])
        .args(["--http-port", &crate::harness::free_port().to_string()])
        .args(["--raft-port", &crate::harness::free_port().to_string()])
        .args(["--serf-lan-port", &crate::harness::free_udp_port().to_string()])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--config-dir")
        .arg(conf.path())
        .arg("--plugin-dir")
        .arg(&dir)
        .output()
        .expect("run wharf");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("web.json") && err.contains("unknown plugin \"nope\""), "{err}");
}

/// A Tomcat stand-in on loopback: the app on `/`, the manager's XML status page with a
/// settable number of busy threads out of 200.
struct Tomcat {
    backend_port: u16,
    busy: Arc<AtomicU32>,
}

impl Tomcat {
    async fn start(name: &'static str) -> Tomcat {
        use axum::routing::get;
        let busy = Arc::new(AtomicU32::new(5));
        let b = busy.clone();
        let app = axum::Router::new()
            .route(
                "/manager/status",
                get(move || {
                    let busy = b.load(Ordering::Relaxed);
                    async move {
                        format!(
                            "<?xml version=\"1.0\" encoding=\"utf-8\"?><status><jvm><memory free='1' total='2' max='3'/></jvm>\
                             <connector name='\"http-nio-8080\"'><threadInfo  maxThreads=\"200\" currentThreadCount=\"200\" \
                             currentThreadsBusy=\"{busy}\" /></connector></status>"
                        )
                    }
                }),
            )
            .fallback(move || async move { format!("{name} app") });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let backend_port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Tomcat { backend_port, busy }
    }
}

#[tokio::test]
async fn sick_tomcat_leaves_the_pool_by_wasm_check() {
    let dir = plugin_dir();
    let args = plugin_args(&dir);
    let p = ProxyAgent::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (a, b) = (Tomcat::start("tomcat-a").await, Tomcat::start("tomcat-b").await);
    let interval = Duration::from_millis(300);
    for (t, id) in [(&a, "tomcat-a"), (&b, "tomcat-b")] {
        p.api
            .put_ok(
                "/v1/agent/service/register",
                json!({"ID": id, "Name": "tomcat", "Address": "127.0.0.1", "Port": t.backend_port,
                    "Check": {"CheckID": format!("{id}-threads"), "Name": "busy threads",
                        "Wasm": {"Module": "tomcat_status", "Config": r#"{"warn_percent": 80, "critical_percent": 95}"#},
                        "Interval": "300ms", "Timeout": "1s"}})
                .to_string(),
            )
            .await;
    }
    wait_for("both Tomcats passing", Duration::from_secs(15), || async {
        p.api.get_json("/v1/health/service/tomcat?passing").await.0.as_array().map(Vec::len) == Some(2)
    })
    .await;
    let seen = p.spread("tomcat.localhost", "/", 10).await;
    assert_eq!(seen.len(), 2, "{seen:?}");

    // tomcat-a's threads are nearly all busy: critical, out of the pool within an interval.
    a.busy.store(198, Ordering::Relaxed);
    let sick_at = Instant::now();
    let mut left = None;
    while sick_at.elapsed() < Duration::from_secs(5) {
        let (status, body) = p.get("tomcat.localhost", "/").await;
        assert_eq!(status, 200, "{body}");
        if check(&p.api, "tomcat-a-threads").await.0 == "critical" {
            left = Some(sick_at.elapsed());
            break;
        }
    }
    let left = left.expect("tomcat-a went critical");
    assert!(left <= interval + Duration::from_millis(50) + Duration::from_millis(30), "critical after {left:?}");
    let (_, output) = check(&p.api, "tomcat-a-threads").await;
    assert!(output.contains("198/200"), "{output}");
    let seen = p.spread("tomcat.localhost", "/", 10).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["tomcat-b"], "{seen:?}");

    // Warning also keeps it out of the pool (pools hold passing instances only).
    a.busy.store(170, Ordering::Relaxed);
    wait_for("tomcat-a warning", Duration::from_secs(5), || async {
        check(&p.api, "tomcat-a-threads").await.0 == "warning"
    })
    .await;
    assert_eq!(p.spread("tomcat.localhost", "/", 6).await.keys().collect::<Vec<_>>(), ["tomcat-b"]);

    // Healthy again: back in rotation.
    a.busy.store(20, Ordering::Relaxed);
    wait_for("tomcat-a back", Duration::from_secs(5), || async {
        p.spread("tomcat.localhost", "/", 4).await.len() == 2
    })
    .await;
    println!("wasm: sick Tomcat critical and out of the pool {left:?} after its threads filled up");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn plugin_calls(api: &Api) -> u64 {
    let text = api.get("/metrics").await.body;
    text.lines()
        .find_map(|l| l.strip_prefix("wharf_plugin_calls_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn hostile_plugins_leave_the_agent_unaffected() {
    let dir = plugin_dir();
    let args = plugin_args(&dir);
    let p = ProxyAgent::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let pid = p._agent.child.as_ref().map(|c| c.id()).expect("agent pid");
    let web = Backend::start("web").await;
    let health = format!("http://127.0.0.1:{}/health", web.port());
    p.api
        .put_ok(
            "/v1/agent/service/register",
            backend_service(
                &web,
                "web",
                json!({"Check": {"CheckID": "web-http", "HTTP": health, "Interval": "100ms"}}),
            ),
        )
        .await;
    p.api.put_ok("/v1/agent/service/register", json!({"ID": "victim", "Name": "victim", "Port": 9}).to_string()).await;
    let hostile = [
        ("spin_loop", "", "did not finish within the check's timeout of 100ms"),
        ("memory_bomb", "", "exceeded its memory limit of 16 MiB"),
        ("trap", "", "trapped"),
        ("huge_output", "", "(cut: 8388608 bytes in all)"),
        ("forbidden_address", "http", "refused: a plugin may only reach the instance it checks"),
        // The sandbox's message, not the OS's "Connection refused" (nothing listens there).
        ("forbidden_address", "tcp", "refused: a plugin may only reach the instance it checks"),
        ("garbage", "", "failed"),
    ];
    for (i, (module, config, _)) in hostile.iter().enumerate() {
        // The spin loop is what the timeout is for; the others get room to hit their own
        // limit first even on a loaded machine (a debug build under the whole test suite).
        let timeout = if *module == "spin_loop" { "100ms" } else { "1s" };
        p.api
            .put_ok(
                "/v1/agent/check/register",
                json!({"CheckID": format!("hostile-{i}"), "Name": module, "ServiceID": "victim",
                    "Wasm": {"Module": module, "Config": config}, "Interval": "40ms", "Timeout": timeout})
                .to_string(),
            )
            .await;
    }
    wait_for("web passing", Duration::from_secs(10), || async { check(&p.api, "web-http").await.0 == "passing" }).await;
    wait_for("200 plugin runs", Duration::from_secs(60), || async { plugin_calls(&p.api).await >= 200 }).await;
    let rss_warm = rss_kib(pid);
    let calls_warm = plugin_calls(&p.api).await;

    // While 1,000 more hostile runs happen, the proxy and the API keep answering.
    let mut slowest_proxy = Duration::ZERO;
    let mut slowest_api = Duration::ZERO;
    let mut requests = 0;
    let started = Instant::now();
    while plugin_calls(&p.api).await < calls_warm + 1000 {
        assert!(started.elapsed() < Duration::from_secs(120), "1,000 runs took too long");
        let t = Instant::now();
        let (status, body) = p.get("web.localhost", "/").await;
        assert_eq!(status, 200, "{body}");
        slowest_proxy = slowest_proxy.max(t.elapsed());
        let t = Instant::now();
        assert_eq!(p.api.get("/v1/status/leader").await.status, 200);
        slowest_api = slowest_api.max(t.elapsed());
        requests += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rss_after = rss_kib(pid);
    let calls = plugin_calls(&p.api).await - calls_warm;

    for (i, (module, _, want)) in hostile.iter().enumerate() {
        let (status, output) = check(&p.api, &format!("hostile-{i}")).await;
        let want_status = if *module == "huge_output" { "passing" } else { "critical" };
        assert_eq!(status, want_status, "{module}: {output}");
        assert!(output.contains(want), "{module}: {output:?} lacks {want:?}");
        assert!(output.len() <= 4096, "{module}: {} bytes of output", output.len());
    }
    assert_eq!(check(&p.api, "web-http").await.0, "passing");
    let growth = rss_after as i64 - rss_warm as i64;
    println!(
        "wasm hostile: {calls} runs in {:?}; agent RSS {rss_warm} KiB -> {rss_after} KiB ({growth:+} KiB); \
         {requests} proxy+API probes meanwhile, slowest proxy {slowest_proxy:?}, slowest API {slowest_api:?}",
        started.elapsed()
    );
    assert!(growth < 16 * 1024, "RSS grew by {growth} KiB over {calls} hostile runs");
    assert!(slowest_proxy < Duration::from_millis(500), "proxy stalled {slowest_proxy:?}");
    assert!(slowest_api < Duration::from_millis(500), "API stalled {slowest_api:?}");
}
