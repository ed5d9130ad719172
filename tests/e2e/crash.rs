//! Crash safety: concurrent clients write 2,000 KV entries, the agent is SIGKILLed in
//! the middle, restarted on the same data dir, and every acknowledged write is there with
//! the ModifyIndex it was acknowledged with. Five rounds on one data dir.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::harness::{Agent, Api};

const ROUNDS: usize = 5;
const WRITES: usize = 2000;
const CLIENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut agent = Agent::new(tmp.path().join("data"), "node-1", vec![], None);
    let mut all_acked: Vec<(String, u64)> = Vec::new();
    for round in 0..ROUNDS {
        agent.start(&["--dev"]);
        agent.wait_ready().await;
        let api = Api::new(&agent);

        // Everything acknowledged before this round survived the previous kill.
        for (key, index) in &all_acked {
            let r = api.get(&format!("/v1/kv/{key}")).await;
            assert_eq!(r.status, 200, "round {round}: acknowledged {key} lost after kill -9");
            assert_eq!(r.json()[0]["ModifyIndex"].as_u64(), Some(*index), "round {round}: {key} index changed");
        }

        let acked = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (api, acked, next) = (api.clone(), acked.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= WRITES {
                        return;
                    }
                    let key = format!("crash/r{round}/k{i:05}");
                    let Ok(resp) = api.http.put(format!("{}/v1/kv/{key}", api.base)).body(format!("v{i}")).send().await
                    else {
                        return; // the agent is gone
                    };
                    let index = resp
                        .headers()
                        .get("x-consul-index")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    if resp.status() != 200 || resp.text().await.ok().as_deref() != Some("true") {
                        return;
                    }
                    // Acknowledged: the write's Raft index is its ModifyIndex.
                    let index = index.expect("a write answer carries its index");
                    acked.lock().await.push((key, index));
                }
            }));
        }
        // Kill in the middle of the stream.
        let kill_at = WRITES / 4 + round * WRITES / 10;
        while next.load(std::sync::atomic::Ordering::SeqCst) < kill_at {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        agent.kill9();
        for t in tasks {
            let _ = t.await;
        }
        let acked = acked.lock().await.clone();
        assert!(acked.len() >= kill_at / 2, "round {round}: only {} writes acknowledged", acked.len());
        all_acked.extend(acked);
    }
    agent.start(&["--dev"]);
    agent.wait_ready().await;
    let api = Api::new(&agent);
    for (key, index) in &all_acked {
        let r = api.get(&format!("/v1/kv/{key}")).await;
        assert_eq!(r.status, 200, "acknowledged {key} lost");
        assert_eq!(r.json()[0]["ModifyIndex"].as_u64(), Some(*index));
    }
    println!("crash test: {} acknowledged writes over {ROUNDS} kill -9 rounds, all present", all_acked.len());
}
