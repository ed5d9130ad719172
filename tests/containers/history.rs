//! A fault-injection history test in the Jepsen style. Five clients do KV reads
//! (`?consistent`), writes and compare-and-sets against random agents of a cluster of
//! three servers and two clients (each a container on a private network), while a nemesis
//! kills (-9) and restarts agents, pauses them, cuts a random minority off the network and
//! kills the leader. Every operation is recorded with its invoke and complete times and
//! its outcome (ok, or unknown when it timed out or failed after it may have been
//! proposed); the history is then checked for linearizability by `history-checker`
//! (Porcupine's algorithm, with tests of its own that it rejects known violations), and
//! every agent must hold the same KV once the faults are healed.
//!
//! The suite runs a short history (`WHARF_HISTORY_FAULTS`, default 12 faults); the long
//! run is a benchmark: `WHARF_HISTORY_FAULTS=110 cargo test --release --test containers
//! history -- --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use history_checker::{Event, Op, Outcome};
use serde_json::Value;

use crate::{images, ok, sh, wait_for};

const SUBNET: &str = "172.30.79";
const KEYS: usize = 4;
const CLIENTS: usize = 5;

/// The agents: (host name, last byte of its address).
const NODES: [(&str, u8); 5] = [("n1", 11), ("n2", 12), ("n3", 13), ("n4", 21), ("n5", 22)];

fn ip(last: u8) -> String {
    format!("{SUBNET}.{last}")
}

/// One HTTP request through curl: (status, body), or `None` when it got no answer.
fn http(method: &str, url: &str, body: Option<&str>) -> Option<(u16, String)> {
    let data = body.map(|b| format!("--data-binary '{b}'")).unwrap_or_default();
    let out = sh(&format!("curl -s --max-time 4 -X {method} {data} -w '\\n%{{http_code}}' '{url}'"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_string()))
}

/// A consistent read: `Some(Ok((value, modify_index)))`, or `Some(Err(()))` for an
/// answer that says nothing (5xx), `None` for no answer.
fn read(node: u8, key: &str) -> Option<Result<(Option<String>, u64), ()>> {
    let (code, body) = http("GET", &format!("http://{}:8500/v1/kv/{key}?consistent", ip(node)), None)?;
    match code {
        404 => Some(Ok((None, 0))),
        200 => {
            let v: Value = serde_json::from_str(&body).ok()?;
            let e = &v[0];
            let raw = e["Value"].as_str().unwrap_or_default();
            let value = base64_decode(raw)?;
            Some(Ok((Some(value), e["ModifyIndex"].as_u64()?)))
        }
        _ => Some(Err(())),
    }
}

fn base64_decode(s: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    String::from_utf8(bytes).ok()
}

/// One client's loop: random operations on random keys through random agents.
fn client(id: usize, start: Instant, stop: Arc<AtomicBool>, out: mpsc::Sender<Event>) {
    let mut n = 0u64;
    let mut rng = id as u64 * 7919 + 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let now = |t: Instant| t.duration_since(start).as_nanos() as u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("jepsen/k{}", next() as usize % KEYS);
        let node = NODES[next() as usize % NODES.len()].1;
        let roll = next() % 10;
        let invoke = Instant::now();
        let record = |op: Op, outcome: Outcome, done: Instant| Event {
            key: key.clone(),
            client: id,
            op,
            outcome,
            invoke: now(invoke),
            complete: now(done),
        };
        if roll < 4 {
            let ev = match read(node, &key) {
                Some(Ok((v, _))) => record(Op::Read(v), Outcome::Ok, Instant::now()),
                _ => record(Op::Read(None), Outcome::Unknown, Instant::now()),
            };
            let _ = out.send(ev);
            continue;
        }
        n += 1;
        let value = format!("c{id}-{n}");
        if roll < 7 {
            let answer = http("PUT", &format!("http://{}:8500/v1/kv/{key}", ip(node)), Some(&value));
            let outcome = match answer {
                Some((200, b)) if b.trim() == "true" => Outcome::Ok,
                _ => Outcome::Unknown,
            };
            let _ = out.send(record(Op::Write(value), outcome, Instant::now()));
            continue;
        }
        // A compare-and-set from the value a consistent read saw (its ModifyIndex).
        let Some(Ok((from, index))) = read(node, &key) else { continue };
        let cas_invoke = Instant::now();
        let answer = http("PUT", &format!("http://{}:8500/v1/kv/{key}?cas={index}", ip(node)), Some(&value));
        let (ok, outcome) = match answer {
            Some((200, b)) if b.trim() == "true" => (true, Outcome::Ok),
            Some((200, b)) if b.trim() == "false" => (false, Outcome::Ok),
            _ => (true, Outcome::Unknown),
        };
        let _ = out.send(Event {
            key: key.clone(),
            client: id,
            op: Op::Cas { from, to: value, ok },
            outcome,
            invoke: now(cas_invoke),
            complete: now(Instant::now()),
        });
    }
}

/// The current leader's host, if any agent knows it.
fn leader(hosts: &crate::Net) -> Option<(&'static str, u8)> {
    let _ = hosts;
    for (_, last) in NODES {
        if let Some((200, l)) = http("GET", &format!("http://{}:8500/v1/status/leader", ip(last)), None) {
            let l = l.trim().trim_matches('"').to_string();
            if let Some(found) = NODES.iter().find(|(_, n)| l == format!("{}:8300", ip(*n))) {
                return Some(*found);
            }
        }
    }
    None
}

/// One fault, injected and healed. Returns what it was.
fn fault(hosts: &crate::Net, k: u64) -> String {
    let pick = |i: u64| NODES[(i as usize) % NODES.len()];
    let hold = Duration::from_millis(1200 + (k * 397) % 1500);
    match k % 5 {
        0 => {
            let (h, _) = pick(k / 5);
            ok(&format!("docker kill {}", hosts.name(h)));
            std::thread::sleep(hold);
            ok(&format!("docker start {}", hosts.name(h)));
            format!("kill -9 {h}")
        }
        1 => {
            let (h, _) = pick(k / 5 + 2);
            ok(&format!("docker pause {}", hosts.name(h)));
            std::thread::sleep(hold);
            ok(&format!("docker unpause {}", hosts.name(h)));
            format!("pause {h}")
        }
        2 | 3 => {
            // A random minority: one or two of the five.
            let size = 1 + (k as usize / 5) % 2;
            let cut: Vec<(&str, u8)> = (0..size).map(|i| pick(k / 3 + i as u64 * 2)).collect();
            for (h, _) in &cut {
                ok(&format!("docker network disconnect {} {}", hosts.network, hosts.name(h)));
            }
            std::thread::sleep(hold);
            for (h, last) in &cut {
                ok(&format!(
                    "docker network connect --ip {} --alias {h} {} {}",
                    ip(*last),
                    hosts.network,
                    hosts.name(h)
                ));
            }
            format!("partition {:?}", cut.iter().map(|(h, _)| *h).collect::<Vec<_>>())
        }
        _ => match leader(hosts) {
            Some((h, _)) => {
                ok(&format!("docker kill {}", hosts.name(h)));
                std::thread::sleep(hold);
                ok(&format!("docker start {}", hosts.name(h)));
                format!("leader kill {h}")
            }
            None => "leader kill: no leader known".into(),
        },
    }
}

#[test]
fn kv_history_under_faults_is_linearizable() {
    let _serial = crate::serial();
    images();
    let faults: u64 = std::env::var("WHARF_HISTORY_FAULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let tag = format!("h{}", std::process::id());
    let mut hosts = crate::Net::create("history", tag, SUBNET);
    for (i, (h, last)) in NODES.iter().enumerate() {
        let role = match i {
            0 => "-server -bootstrap-expect=3",
            1 | 2 => "-server -retry-join=n1",
            _ => "-retry-join=n1",
        };
        let name = hosts.name(h);
        ok(&format!(
            "docker run -d -h {h} --name {name} --network {} --network-alias {h} --ip {} wharf:latest \
             agent -data-dir=/data -client=0.0.0.0 -node={h} -no-proxy {role}",
            hosts.network,
            ip(*last)
        ));
        hosts.names.push(name);
    }
    for (h, last) in NODES {
        wait_for(
            &format!("{h} reads the KV store consistently"),
            Duration::from_secs(60),
            || matches!(read(last, "jepsen/ready"), Some(Ok(_))),
            || hosts.logs(),
        );
    }

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (stop, tx) = (stop.clone(), tx.clone());
            std::thread::spawn(move || client(id, start, stop, tx))
        })
        .collect();
    drop(tx);
    let mut injected = Vec::new();
    for k in 0..faults {
        injected.push(fault(&hosts, k));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Healed: let the clients run against a whole cluster for a moment, then stop.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let mut history: Vec<Event> = rx.iter().collect();
    let elapsed = start.elapsed();

    // Every agent converges on the same KV; final consistent reads join the history.
    let snapshot =
        |last: u8| http("GET", &format!("http://{}:8500/v1/kv/jepsen/?recurse&stale", ip(last)), None).map(|(_, b)| b);
    wait_for(
        "every agent holds the same KV after healing",
        Duration::from_secs(60),
        || {
            let first = snapshot(NODES[0].1);
            first.is_some() && NODES.iter().all(|(_, l)| snapshot(*l) == first)
        },
        || hosts.logs(),
    );
    for k in 0..KEYS {
        let key = format!("jepsen/k{k}");
        for (i, (_, last)) in NODES.iter().enumerate() {
            let invoke = start.elapsed().as_nanos() as u64;
            if let Some(Ok((v, _))) = read(*last, &key) {
                let complete = start.elapsed().as_nanos() as u64;
                history.push(Event {
                    key: key.clone(),
                    client: CLIENTS + i,
                    op: Op::Read(v),
                    outcome: Outcome::Ok,
                    invoke,
                    complete,
                });
            }
        }
    }

    let ok_ops = history.iter().filter(|e| e.outcome == Outcome::Ok).count();
    let unknown = history.len() - ok_ops;
    let acked_writes = history.iter().filter(|e| e.outcome == Outcome::Ok && !matches!(e.op, Op::Read(_))).count();
    let checked = Instant::now();
    let verdict = history_checker::check(&history);
    println!(
        "history: {} operations ({ok_ops} ok, {unknown} unknown; {acked_writes} acknowledged writes) by {CLIENTS} clients \
         over {elapsed:?} with {} faults; checked in {:?}: {}",
        history.len(),
        injected.len(),
        checked.elapsed(),
        if verdict.is_ok() { "linearizable".to_string() } else { format!("{verdict:?}") }
    );
    println!("faults: {}", injected.join(", "));
    assert!(acked_writes >= 20, "too few acknowledged writes ({acked_writes}) for the history to mean anything");
    assert_eq!(verdict, Ok(()), "the KV history is not linearizable\n{}", hosts.logs());
}
