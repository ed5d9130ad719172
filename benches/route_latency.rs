//! Catalog change to route (a benchmark, not a test): the time from an acknowledged
//! register to the first request the proxy serves from the new instance, p50 and p99
//! over 1,000 changes. Two backends take turns: register the other one, poll the proxy
//! until it answers from it, deregister the old one.
//! Run: `cargo bench --bench route_latency`.

use std::time::{Duration, Instant};

mod support;
use support::{BenchAgent, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_wharf");
const CHANGES: usize = 1000;

async fn backend(name: &'static str) -> Result<u16, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let app = axum::Router::new().fallback(move || async move { name });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let proxy = free_port();
    let proxy_addr = format!("127.0.0.1:{proxy}");
    let wharf = BenchAgent::start(BIN, &["--proxy-addr", &proxy_addr, "--proxy-threads", "1"]).await?;
    let api = wharf.api.clone();
    let client = reqwest::Client::new();
    let ports = [backend("A").await?, backend("B").await?];
    let names = ["A", "B"];
    let register =
        |i: usize| format!(r#"{{"ID":"lat-{}","Name":"lat","Address":"127.0.0.1","Port":{}}}"#, names[i], ports[i]);
    let put = |path: String, body: String| {
        let c = client.clone();
        async move {
            let r = c.put(path).body(body).send().await.map_err(|e| e.to_string())?;
            if r.status().is_success() { Ok(()) } else { Err(format!("write failed: {}", r.status())) }
        }
    };
    put(format!("{api}/v1/agent/service/register"), register(0)).await?;
    let proxy_url = format!("http://127.0.0.1:{proxy}/");
    let mut samples = Vec::with_capacity(CHANGES);
    let mut polls = 0u64;
    for change in 0..CHANGES {
        let new = (change + 1) % 2;
        put(format!("{api}/v1/agent/service/register"), register(new)).await?;
        let acked = Instant::now();
        loop {
            polls += 1;
            let r = client.get(&proxy_url).header("host", "lat.localhost").send().await.map_err(|e| e.to_string())?;
            if r.text().await.map_err(|e| e.to_string())? == names[new] {
                break;
            }
            if acked.elapsed() > Duration::from_secs(5) {
                return Err(format!("change {change}: the new instance never served"));
            }
        }
        samples.push(acked.elapsed().as_secs_f64() * 1000.0);
        put(format!("{api}/v1/agent/service/deregister/lat-{}", names[1 - new]), String::new()).await?;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "catalog change to route over {CHANGES} changes: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} proxy requests)",
        pct(0.50),
        pct(0.99),
        samples[samples.len() - 1],
        polls
    );
    println!(
        "BENCHJSON {{\"bench\":\"change_to_route\",\"changes\":{CHANGES},\"p50_ms\":{:.4},\"p99_ms\":{:.4},\"max_ms\":{:.4}}}",
        pct(0.50),
        pct(0.99),
        samples[samples.len() - 1]
    );
    Ok(())
}
