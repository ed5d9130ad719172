//! Blocking queries on every read endpoint: a blocked GET returns within 100 ms of a
//! write it depends on, and stays blocked through writes it does not depend on.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Agent, Api};

struct Case {
    path: &'static str,
    unrelated: (&'static str, String),
    relevant: (&'static str, String),
}

fn svc(id: &str, name: &str) -> String {
    json!({"ID": id, "Name": name, "Port": 80, "Check": {"CheckID": format!("{id}-ttl"), "TTL": "1m"}}).to_string()
}

fn ext(node: &str, name: &str) -> String {
    json!({"Node": node, "Address": "10.9.0.1", "Service": {"Service": name, "Port": 1}}).to_string()
}

#[tokio::test]
async fn blocking_queries_wake_only_on_relevant_writes() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    api.put_ok("/v1/agent/service/register", svc("web-1", "web")).await;
    api.put_ok("/v1/agent/service/register", svc("api-1", "api")).await;
    api.put_ok("/v1/catalog/register", ext("far", "far-svc")).await;
    api.put_ok("/v1/kv/watched/a", "1").await;
    api.put_ok("/v1/kv/elsewhere", "1").await;

    let cases = vec![
        Case { path: "/v1/catalog/service/web", unrelated: ("/v1/agent/service/register", svc("api-2", "api")), relevant: ("/v1/agent/service/register", svc("web-2", "web")) },
        Case { path: "/v1/health/service/web", unrelated: ("/v1/agent/check/pass/api-1-ttl", String::new()), relevant: ("/v1/agent/check/pass/web-1-ttl", String::new()) },
        Case { path: "/v1/health/checks/web", unrelated: ("/v1/agent/check/fail/api-1-ttl", String::new()), relevant: ("/v1/agent/check/fail/web-1-ttl", String::new()) },
        Case { path: "/v1/catalog/services", unrelated: ("/v1/kv/elsewhere", "2".into()), relevant: ("/v1/agent/service/register", svc("db-1", "db")) },
        Case { path: "/v1/catalog/nodes", unrelated: ("/v1/kv/elsewhere", "3".into()), relevant: ("/v1/catalog/register", ext("far-2", "x")) },
        Case { path: "/v1/catalog/node/far", unrelated: ("/v1/catalog/register", ext("far-3", "x")), relevant: ("/v1/catalog/register", ext("far", "far-svc2")) },
        Case { path: "/v1/health/node/far", unrelated: ("/v1/catalog/register", ext("far-4", "x")), relevant: ("/v1/catalog/register", json!({"Node": "far", "Address": "10.9.0.1", "Check": {"CheckID": "c", "Name": "c", "Status": "passing"}}).to_string()) },
        Case { path: "/v1/health/state/critical", unrelated: ("/v1/kv/elsewhere", "4".into()), relevant: ("/v1/agent/check/fail/api-1-ttl?note=x", String::new()) },
        Case { path: "/v1/agent/services", unrelated: ("/v1/catalog/register", ext("far-5", "x")), relevant: ("/v1/agent/service/register", svc("web-3", "web")) },
        Case { path: "/v1/agent/checks", unrelated: ("/v1/kv/elsewhere", "5".into()), relevant: ("/v1/agent/check/warn/web-1-ttl", String::new()) },
        Case { path: "/v1/kv/watched/a", unrelated: ("/v1/kv/watched/b", "1".into()), relevant: ("/v1/kv/watched/a", "2".into()) },
        Case { path: "/v1/kv/watched/?recurse", unrelated: ("/v1/kv/elsewhere", "7".into()), relevant: ("/v1/kv/watched/c", "1".into()) },
        Case { path: "/v1/kv/watched/?keys", unrelated: ("/v1/kv/elsewhere", "8".into()), relevant: ("/v1/kv/watched/d", "1".into()) },
    ];

    for case in cases {
        let first = api.get(case.path).await;
        assert_eq!(first.status, 200, "{}: {}", case.path, first.body);
        let index = first.index.unwrap_or_else(|| panic!("{} has no X-Consul-Index", case.path));
        assert!(first.headers.contains_key("x-consul-knownleader"), "{}", case.path);
        assert!(first.headers.contains_key("x-consul-lastcontact"), "{}", case.path);

        let sep = if case.path.contains('?') { '&' } else { '?' };
        let blocked_path = format!("{}{sep}index={index}&wait=10s", case.path);
        let api2 = api.clone();
        let waiter = tokio::spawn(async move {
            let r = api2.get(&blocked_path).await;
            (Instant::now(), r)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        api.put_ok(case.unrelated.0, case.unrelated.1.clone()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "{} woke on an unrelated write to {}", case.path, case.unrelated.0);

        api.put_ok(case.relevant.0, case.relevant.1.clone()).await;
        let acked = Instant::now();
        let (returned, r) = waiter.await.expect("waiter");
        let latency = returned.saturating_duration_since(acked);
        assert!(latency < Duration::from_millis(100), "{} returned {latency:?} after the write", case.path);
        assert!(r.index.unwrap_or(0) > index, "{} index must move past {index}", case.path);
    }
}

#[tokio::test]
async fn blocking_query_times_out_with_current_data() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    api.put_ok("/v1/kv/k", "v").await;
    let first = api.get("/v1/kv/k").await;
    let index = first.index.expect("index");
    let start = Instant::now();
    let r = api.get(&format!("/v1/kv/k?index={index}&wait=300ms")).await;
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.index, Some(index));
    // wait plus at most wait/16 of jitter, plus scheduling slack.
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1000), "took {took:?}");

    // A consistent read is linearizable: it sees the latest write.
    api.put_ok("/v1/kv/k", "v2").await;
    let r = api.get("/v1/kv/k?consistent").await;
    assert_eq!(r.json()[0]["Value"], "djI=");
    assert_eq!(
        api.get("/v1/catalog/services?consistent")
            .await
            .headers
            .get("x-consul-effective-consistency")
            .map(|v| v.as_bytes().to_vec()),
        Some(b"consistent".to_vec())
    );
    assert_eq!(api.get("/v1/catalog/services?stale").await.status, 200);
}
