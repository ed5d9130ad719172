//! Health-check throughput (a benchmark, not a test). Run: `cargo bench --bench wasm_checks`.
//!
//! Part 1, in process, one core (a current-thread tokio runtime; the HTTP backend runs on a
//! thread of its own): Wasm checks per second with a fresh instance per check (the `echo`
//! plugin, no I/O, and `http_json`, one HTTP request), instantiation latency p50/p99, and
//! built-in HTTP checks per second against the same backend.
//!
//! Part 2, the real agent: 1,000 steady passing checks (500 built-in HTTP, 500 Wasm
//! `http_json`, 2 s interval) and the catalog writes they cause over one minute (the goal is
//! zero), read from `wharf_health_status_writes_total`. `STEADY_SECS` shortens the minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use catalog::model::CheckDefinition;
use local_agent::health::probe;
use plugins::{Instance, PluginConfig, PluginHost, Status};

mod support;
use support::BenchAgent;

const BIN: &str = env!("CARGO_BIN_EXE_wharf");
const IN_FLIGHT: usize = 32;

/// An HTTP backend on its own thread answering `{"status":"UP"}`; returns its port.
fn backend() -> Result<u16, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return drop(tx.send(Err(e.to_string()))),
        };
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                Ok(l) => l,
                Err(e) => return drop(tx.send(Err(e.to_string()))),
            };
            let _ = tx.send(listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string()));
            let app = axum::Router::new().fallback(|| async { r#"{"status":"UP"}"# });
            let _ = axum::serve(listener, app).await;
        });
    });
    rx.recv().map_err(|e| e.to_string())?
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Runs `n` Wasm checks, `IN_FLIGHT` at a time; returns (checks/s, instantiation times).
async fn wasm_rate(
    host: &Arc<PluginHost>,
    module: &str,
    target: &Instance,
    n: usize,
) -> Result<(f64, Vec<Duration>), String> {
    let started = Instant::now();
    let mut inst = Vec::with_capacity(n);
    let mut set = tokio::task::JoinSet::new();
    let mut launched = 0;
    while launched < n || !set.is_empty() {
        while launched < n && set.len() < IN_FLIGHT {
            let (h, m, t) = (host.clone(), module.to_string(), target.clone());
            set.spawn_local(async move { h.check(&m, &t, "", Duration::from_secs(5)).await });
            launched += 1;
        }
        if let Some(r) = set.join_next().await {
            let out = r.map_err(|e| e.to_string())?;
            if out.status != Status::Passing {
                return Err(format!("{module}: {}", out.output));
            }
            inst.push(out.instantiate);
        }
    }
    Ok((n as f64 / started.elapsed().as_secs_f64(), inst))
}

async fn builtin_rate(port: u16, n: usize) -> Result<f64, String> {
    let clients = probe::Clients::new();
    let def = CheckDefinition { http: format!("http://127.0.0.1:{port}/health"), ..CheckDefinition::default() };
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut launched = 0;
    while launched < n || !set.is_empty() {
        while launched < n && set.len() < IN_FLIGHT {
            let (c, d) = (clients.clone(), def.clone());
            set.spawn_local(async move { probe::http(&c, &d, Duration::from_secs(5)).await });
            launched += 1;
        }
        if let Some(r) = set.join_next().await {
            let (status, output) = r.map_err(|e| e.to_string())?;
            if status != catalog::model::CheckStatus::Passing {
                return Err(output);
            }
        }
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn one_core(dir: &std::path::Path, port: u16) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let host = Arc::new(PluginHost::new(PluginConfig::new(dir)).map_err(|e| e.to_string())?);
        let target = Instance {
            service: "web".into(),
            id: "web-1".into(),
            address: "127.0.0.1".into(),
            port,
            tags: vec![],
            meta: vec![],
        };
        // Warm up: compile both plugins once.
        wasm_rate(&host, "echo", &target, 50).await?;
        wasm_rate(&host, "http_json", &target, 50).await?;
        builtin_rate(port, 50).await?;

        let (rate, mut inst) = wasm_rate(&host, "echo", &target, 20_000).await?;
        inst.sort();
        println!(
            "wasm echo (no I/O):        {rate:>9.0} checks/s, fresh instance each; instantiation p50 {:?} p99 {:?}",
            pct(&inst, 0.5),
            pct(&inst, 0.99)
        );
        let (rate, mut inst) = wasm_rate(&host, "http_json", &target, 10_000).await?;
        inst.sort();
        println!(
            "wasm http_json (1 GET):    {rate:>9.0} checks/s; instantiation p50 {:?} p99 {:?}",
            pct(&inst, 0.5),
            pct(&inst, 0.99)
        );
        let rate = builtin_rate(port, 10_000).await?;
        println!("built-in HTTP check:       {rate:>9.0} checks/s");
        Ok::<(), String>(())
    })
}

async fn metric(client: &reqwest::Client, api: &str, name: &str) -> Result<f64, String> {
    let text = client.get(format!("{api}/metrics")).send().await.map_err(|e| e.to_string())?;
    let text = text.text().await.map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("metric {name} not found"))
}

async fn steady(dir: &std::path::Path, port: u16) -> Result<(), String> {
    let secs: u64 = std::env::var("STEADY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let dir_s = dir.display().to_string();
    let wharf = BenchAgent::start(BIN, &["--plugin-dir", &dir_s]).await?;
    let client = reqwest::Client::new();
    for i in 0..1000 {
        let check = if i % 2 == 0 {
            format!(r#"{{"HTTP":"http://127.0.0.1:{port}/health","Interval":"2s"}}"#)
        } else {
            r#"{"Wasm":{"Module":"http_json","Config":"/health"},"Interval":"2s"}"#.to_string()
        };
        let body = format!(r#"{{"ID":"s-{i}","Name":"steady","Address":"127.0.0.1","Port":{port},"Check":{check}}}"#);
        let r = client
            .put(format!("{}/v1/agent/service/register", wharf.api))
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("register: {}", r.text().await.unwrap_or_default()));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client.get(format!("{}/v1/health/checks/steady", wharf.api)).send().await.map_err(|e| e.to_string())?;
        let all: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        let checks = all.as_array().cloned().unwrap_or_default();
        let n = 1000 - checks.iter().filter(|c| c["Status"] == "passing").count().min(1000);
        if n == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{n} checks still not passing after 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let every check have run at least once more after the last transition.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes0 = metric(&client, &wharf.api, "wharf_health_status_writes_total").await?;
    let probes0 = metric(&client, &wharf.api, "wharf_health_probes_total").await?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let writes = metric(&client, &wharf.api, "wharf_health_status_writes_total").await? - writes0;
    let probes = metric(&client, &wharf.api, "wharf_health_probes_total").await? - probes0;
    println!(
        "steady: 1,000 passing checks (500 HTTP + 500 Wasm, 2 s interval) over {secs} s: {probes:.0} probes, {writes:.0} catalog writes"
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let dir = plugins::guests::build_guest_plugins()?;
    let port = backend()?;
    let d = dir.clone();
    tokio::task::spawn_blocking(move || one_core(&d, port)).await.map_err(|e| e.to_string())??;
    steady(&dir, port).await
}
