//! Large payloads on three servers, each a container on a private network (the release
//! build): 200 concurrent 512 KiB KV writes through every server all commit with no leader
//! change and converge everywhere; a follower stopped while more large writes go in (with
//! snapshots every 64 entries, so the leader's log no longer holds what it missed) catches
//! up by installing a snapshot when it comes back.
//!
//! `WHARF_LARGE_WRITES` sets how many writes the follower misses (default 200).

use std::time::{Duration, Instant};

use crate::{curl, images, ok, sh, wait_for};

const SUBNET: &str = "172.30.82";
const VALUE_BYTES: usize = 512 * 1024;
const SERVERS: [(&str, u8); 3] = [("l1", 11), ("l2", 12), ("l3", 13)];

fn ip(last: u8) -> String {
    format!("{SUBNET}.{last}")
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i:06}-").bytes().cycle().take(VALUE_BYTES).collect()
}

fn keys(last: u8, prefix: &str) -> usize {
    curl(&format!("http://{}:8500/v1/kv/{prefix}?keys&stale", ip(last)))
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

fn leader(last: u8) -> String {
    curl(&format!("http://{}:8500/v1/status/leader", ip(last))).unwrap_or_default()
}

async fn put(client: &reqwest::Client, last: u8, key: &str, body: Vec<u8>) -> (u16, String) {
    match client.put(format!("http://{}:8500/v1/kv/{key}", ip(last))).body(body).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

#[test]
fn large_writes_converge_without_a_leader_change_and_a_follower_catches_up() {
    let _serial = crate::serial();
    images();
    let missed: usize = std::env::var("WHARF_LARGE_WRITES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let tag = format!("l{}", std::process::id());
    let mut hosts = crate::Net::create("large", tag.clone(), SUBNET);
    let name = |h: &str| format!("{h}_{tag}");
    for (i, (h, last)) in SERVERS.iter().enumerate() {
        let role = if i == 0 { "-bootstrap-expect=3" } else { "-retry-join=l1" };
        ok(&format!(
            "docker run -d -h {h} --name {n} --network {net} --network-alias {h} --ip {a} wharf:latest \
             agent -server -data-dir=/data -client=0.0.0.0 -node={h} -no-proxy -no-dns \
             -raft-snapshot-threshold=64 {role}",
            n = name(h),
            net = hosts.network,
            a = ip(*last)
        ));
        hosts.names.push(name(h));
    }
    let logs = || {
        hosts
            .names
            .iter()
            .map(|n| String::from_utf8_lossy(&sh(&format!("docker logs --tail 20 {n} 2>&1")).stdout).to_string())
            .collect::<String>()
    };
    for (_, last) in SERVERS {
        wait_for("a leader everywhere", Duration::from_secs(60), || leader(last).contains(":8300"), logs);
    }
    let first_leader = leader(11);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = reqwest::Client::new();

    let started = Instant::now();
    let answers: Vec<(u16, String)> = rt.block_on(async {
        let writes: Vec<_> = (0..200)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { put(&client, SERVERS[i % 3].1, &format!("big/{i:04}"), value(i)).await })
            })
            .collect();
        let mut out = Vec::new();
        for w in writes {
            out.push(w.await.unwrap_or((0, "join failed".into())));
        }
        out
    });
    for (i, a) in answers.iter().enumerate() {
        assert_eq!((a.0, a.1.as_str()), (200, "true"), "write {i}\n{}", logs());
    }
    println!("200 concurrent 512 KiB writes acknowledged in {:?}", started.elapsed());
    for (_, last) in SERVERS {
        assert_eq!(leader(last), first_leader, "no leader change");
        wait_for("200 large keys on every server", Duration::from_secs(30), || keys(last, "big/") == 200, logs);
    }

    let f = SERVERS
        .iter()
        .find(|(_, l)| first_leader.trim_matches('"') != format!("{}:8300", ip(*l)))
        .copied()
        .expect("a follower");
    let l = SERVERS
        .iter()
        .find(|(_, l)| first_leader.trim_matches('"') == format!("{}:8300", ip(*l)))
        .copied()
        .expect("the leader");
    ok(&format!("docker kill {}", name(f.0)));
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..missed {
            let a = put(&client, l.1, &format!("more/{i:05}"), value(i)).await;
            assert_eq!((a.0, a.1.as_str()), (200, "true"), "write {i} while a follower is down");
        }
    });
    println!("{missed} large writes with a follower down in {:?}", started.elapsed());
    ok(&format!("docker start {}", name(f.0)));
    let back = Instant::now();
    wait_for("the follower caught up", Duration::from_secs(120), || keys(f.1, "more/") == missed, logs);
    println!("the restarted follower caught up on {missed} large writes in {:?}", back.elapsed());
    let last = rt.block_on(async {
        let url = format!("http://{}:8500/v1/kv/more/{:05}?raw&stale", ip(f.1), missed - 1);
        client.get(url).send().await.expect("get").bytes().await.expect("body").to_vec()
    });
    assert!(last == value(missed - 1), "the bytes arrived intact");
    let log = String::from_utf8_lossy(&sh(&format!("docker logs {} 2>&1", name(f.0))).stdout).to_string();
    assert!(
        log.contains("installed a snapshot from the leader"),
        "the follower should have caught up through a snapshot"
    );
}
