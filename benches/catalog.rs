//! Catalog benchmark (not a test): durable single-node writes per second at 1, 16 and 64
//! concurrent clients, for wharf and, in the same run, for etcd (Debian's etcd-server, also
//! a Raft store that fsyncs before acknowledging); and the time for 1,000 blocked watchers to
//! all return after one write. Run with `bench/catalog.sh` (installs etcd) or
//! `cargo bench --bench catalog`. Prints a table and one JSON line per figure.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

mod support;
use support::{BenchAgent, Proc, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_wharf");
const LEVELS: [usize; 3] = [1, 16, 64];
const SECONDS_PER_LEVEL: u64 = 5;
const WATCHERS: usize = 1000;

async fn wait_http(client: &reqwest::Client, url: &str, ok: impl Fn(&str) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await
            && let Ok(t) = r.text().await
            && ok(&t)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{url} did not come up in 30s"))
}

/// Runs `clients` writers for the level's duration; returns (writes/s, p50 ms, p99 ms).
async fn drive<F, Fut>(clients: usize, write: F) -> (f64, f64, f64)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let write = Arc::new(write);
    let seq = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(SECONDS_PER_LEVEL);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (write, seq) = (write.clone(), seq.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < stop {
                let i = seq.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                if write(i).await {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    let pct =
        |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0.0);
    (all.len() as f64 / secs, pct(0.50), pct(0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(2048).build().map_err(|e| e.to_string())?;
    let mut results: Vec<(String, usize, f64, f64, f64)> = Vec::new();

    // ---- wharf
    let wharf = BenchAgent::start(BIN, &[]).await?;
    let base = wharf.api.clone();
    wait_http(&client, &format!("{base}/v1/catalog/node/bench"), |t| t.starts_with('{')).await?;
    for clients in LEVELS {
        let (c, b) = (client.clone(), base.clone());
        let (rps, p50, p99) = drive(clients, move |i| {
            let (c, url) = (c.clone(), format!("{b}/v1/kv/bench/{clients}/{i}"));
            async move { matches!(c.put(url).body("value").send().await, Ok(r) if r.status().is_success()) }
        })
        .await;
        results.push(("wharf".into(), clients, rps, p50, p99));
    }

    // ---- etcd, the reference, when installed
    let etcd = which("etcd");
    let _etcd_proc = match &etcd {
        None => {
            eprintln!("etcd not installed (apt-get install etcd-server): no reference run");
            None
        }
        Some(path) => {
            let (cport, pport) = (free_port(), free_port());
            let proc = Proc(
                Command::new(path)
                    .arg("--data-dir")
                    .arg(tmp.path().join("etcd"))
                    .args(["--listen-client-urls", &format!("http://127.0.0.1:{cport}")])
                    .args(["--advertise-client-urls", &format!("http://127.0.0.1:{cport}")])
                    .args(["--listen-peer-urls", &format!("http://127.0.0.1:{pport}")])
                    .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{pport}")])
                    .args(["--initial-cluster", &format!("default=http://127.0.0.1:{pport}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start etcd: {e}"))?,
            );
            let eb = format!("http://127.0.0.1:{cport}");
            wait_http(&client, &format!("{eb}/health"), |t| t.contains("true")).await?;
            for clients in LEVELS {
                let (c, b) = (client.clone(), eb.clone());
                let (rps, p50, p99) = drive(clients, move |i| {
                    let body = format!(
                        r#"{{"key":"{}","value":"{}"}}"#,
                        STANDARD.encode(format!("bench/{clients}/{i}")),
                        STANDARD.encode("value")
                    );
                    let (c, url) = (c.clone(), format!("{b}/v3/kv/put"));
                    async move { matches!(c.post(url).body(body).send().await, Ok(r) if r.status().is_success()) }
                })
                .await;
                results.push(("etcd".into(), clients, rps, p50, p99));
            }
            Some(proc)
        }
    };

    // ---- 1,000 blocked watchers, one write
    let key_url = format!("{base}/v1/kv/watched");
    let r = client.put(&key_url).body("0").send().await.map_err(|e| e.to_string())?;
    let index: u64 = r
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or("no index on write")?;
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let (c, u) = (client.clone(), format!("{key_url}?index={index}&wait=2m"));
        watchers.push(tokio::spawn(async move {
            let ok = matches!(c.get(u).send().await, Ok(r) if r.status().is_success());
            (Instant::now(), ok)
        }));
    }
    // Give all watchers time to connect and block (a benchmark, not a test).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = Instant::now();
    client.put(&key_url).body("1").send().await.map_err(|e| e.to_string())?;
    let acked = Instant::now();
    let mut done: Vec<f64> = Vec::new();
    let mut failed = 0;
    for w in watchers {
        match w.await {
            Ok((t, true)) => done.push(t.saturating_duration_since(sent).as_secs_f64() * 1000.0),
            _ => failed += 1,
        }
    }
    done.sort_by(|a, b| a.total_cmp(b));
    let last = done.last().copied().unwrap_or(f64::NAN);
    let median = done.get(done.len() / 2).copied().unwrap_or(f64::NAN);

    println!("\ndurable single-node writes (each acknowledged after fsync), {SECONDS_PER_LEVEL}s per level");
    println!("{:<8}{:>9}{:>12}{:>10}{:>10}{:>12}", "store", "clients", "writes/s", "p50 ms", "p99 ms", "vs etcd");
    for (store, clients, rps, p50, p99) in &results {
        let reference = results.iter().find(|r| r.0 == "etcd" && r.1 == *clients).map(|r| r.2);
        let ratio = reference.map(|r| format!("{:.2}", rps / r)).unwrap_or_else(|| "-".into());
        println!("{store:<8}{clients:>9}{rps:>12.0}{p50:>10.2}{p99:>10.2}{ratio:>12}");
        println!(
            "BENCHJSON {{\"bench\":\"kv_put\",\"store\":\"{store}\",\"clients\":{clients},\"writes_per_s\":{rps:.1},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3}}}"
        );
    }
    println!(
        "\n{WATCHERS} blocked watchers on one key, one write: all returned {last:.1} ms after the write was sent \
         (median {median:.1} ms; write acknowledged after {:.1} ms; {failed} failed)",
        acked.duration_since(sent).as_secs_f64() * 1000.0
    );
    println!(
        "BENCHJSON {{\"bench\":\"watchers\",\"watchers\":{WATCHERS},\"all_returned_ms\":{last:.2},\"median_ms\":{median:.2},\"failed\":{failed}}}"
    );
    Ok(())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|f| f.is_file()))
}
