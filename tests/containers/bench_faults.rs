//! Benchmarks, not tests (`#[ignore]`; run with `cargo test --release --test containers
//! bench_ -- --ignored --nocapture`): on three servers and a client as containers,
//! failure detection time over 20 client kills (kill to `serfHealth` critical on the
//! leader) and leader failover time over 20 leader kills (last acknowledged write before the
//! kill to the first after), with p50 and p99.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{curl, images, ok, sh, wait_for};

const SUBNET: &str = "172.30.80";
const NODES: [(&str, u8); 4] = [("b1", 11), ("b2", 12), ("b3", 13), ("b4", 21)];

fn ip(last: u8) -> String {
    format!("{SUBNET}.{last}")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: n={} p50={:?} p99={:?} min={:?} max={:?}",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[0],
        samples[samples.len() - 1]
    );
}

fn leader() -> Option<(&'static str, u8)> {
    NODES.iter().find_map(|(_, l)| {
        let body = curl(&format!("http://{}:8500/v1/status/leader", ip(*l)))?;
        let addr = body.trim().trim_matches('"').to_string();
        NODES.iter().find(|(_, n)| addr == format!("{}:8300", ip(*n))).copied()
    })
}

fn serf_status(at: u8, node: &str) -> Option<String> {
    let body = curl(&format!("http://{}:8500/v1/health/node/{node}?stale", ip(at)))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.as_array()?.iter().find(|c| c["CheckID"] == "serfHealth").and_then(|c| c["Status"].as_str().map(String::from))
}

/// Starts three servers and a client; returns them and their container names' suffix.
fn start_cluster() -> (crate::Net, String) {
    images();
    let tag = format!("b{}", std::process::id());
    let mut hosts = crate::Net::create("bench", tag.clone(), SUBNET);
    for (i, (h, last)) in NODES.iter().enumerate() {
        let role = match i {
            0 => "-server -bootstrap-expect=3",
            1 | 2 => "-server -retry-join=b1",
            _ => "-retry-join=b1",
        };
        let name = format!("{h}_{tag}");
        ok(&format!(
            "docker run -d -h {h} --name {name} --network {} --network-alias {h} --ip {} wharf:latest \
             agent -data-dir=/data -client=0.0.0.0 -node={h} -no-proxy {role}",
            hosts.network,
            ip(*last)
        ));
        hosts.names.push(name);
    }
    wait_for(
        "the client registered",
        Duration::from_secs(60),
        || serf_status(11, "b4").as_deref() == Some("passing"),
        String::new,
    );
    (hosts, tag)
}

#[test]
#[ignore = "a benchmark: run it by name with --ignored"]
fn bench_failure_detection() {
    let _serial = crate::serial();
    let (_hosts, tag) = start_cluster();
    let name = |h: &str| format!("{h}_{tag}");
    let mut detection = Vec::new();
    for _ in 0..20 {
        let (_, l) = leader().expect("a leader");
        ok(&format!("docker kill {}", name("b4")));
        let killed = Instant::now();
        wait_for(
            "b4 critical on the leader",
            Duration::from_secs(30),
            || serf_status(l, "b4").as_deref() == Some("critical"),
            String::new,
        );
        detection.push(killed.elapsed());
        ok(&format!("docker start {}", name("b4")));
        wait_for(
            "b4 passing again",
            Duration::from_secs(30),
            || serf_status(l, "b4").as_deref() == Some("passing"),
            String::new,
        );
    }
    report("failure detection (client kill -> serfHealth critical on the leader)", detection);
}

#[test]
#[ignore = "a benchmark: run it by name with --ignored"]
fn bench_leader_failover() {
    let _serial = crate::serial();
    let (_hosts, tag) = start_cluster();
    let name = |h: &str| format!("{h}_{tag}");
    let mut failover = Vec::new();
    for round in 0..20 {
        let (old, old_last) = leader().expect("a leader");
        let acks: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        // Writers through the client agent, which forwards to whoever leads.
        let writer = {
            let (acks, stop) = (acks.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let url = format!("http://{}:8500/v1/kv/failover/{round}", ip(21));
                    if sh(&format!("curl -sf --max-time 2 -X PUT -d {i} {url}")).status.success()
                        && let Ok(mut a) = acks.lock()
                    {
                        a.push(Instant::now());
                    }
                }
            })
        };
        wait_for(
            "writes flowing",
            Duration::from_secs(10),
            || acks.lock().map(|a| a.len() >= 5).unwrap_or(false),
            String::new,
        );
        ok(&format!("docker kill {}", name(old)));
        let killed = Instant::now();
        wait_for(
            "a write acknowledged after the kill",
            Duration::from_secs(30),
            || acks.lock().map(|a| a.last().is_some_and(|t| *t > killed + Duration::from_millis(5))).unwrap_or(false),
            String::new,
        );
        stop.store(true, Ordering::Relaxed);
        let _ = writer.join();
        let a = acks.lock().map(|a| a.clone()).unwrap_or_default();
        let before = a.iter().filter(|t| **t <= killed).max().copied().unwrap_or(killed);
        let after = a.iter().filter(|t| **t > killed).min().copied().unwrap_or(killed);
        failover.push(after.duration_since(before));
        ok(&format!("docker start {}", name(old)));
        wait_for(
            "the old leader back as a follower",
            Duration::from_secs(60),
            || {
                let peers = curl(&format!("http://{}:8500/v1/status/peers", ip(old_last)));
                let led = curl(&format!("http://{}:8500/v1/status/leader", ip(old_last)));
                peers.is_some_and(|p| p.matches(":8300").count() == 3) && led.is_some_and(|l| l.contains(":8300"))
            },
            String::new,
        );
    }
    report("leader failover (last ack before the kill -> first ack after)", failover);
}
