//! Bad input gets 400 with one line saying what is wrong, and nothing is written.

use serde_json::json;

use crate::harness::{Agent, Api};

#[tokio::test]
async fn rejected_writes_change_nothing() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    api.put_ok("/v1/kv/existing", "v").await;
    let before_services = api.get("/v1/catalog/services").await;
    let before_kv = api.get("/v1/kv/?recurse").await;

    let big = vec![b'x'; 512 * 1024 + 1];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("/v1/agent/service/register", b"{not json".to_vec(), "Request decode failed"),
        ("/v1/agent/service/register", b"".to_vec(), "Request decode failed"),
        ("/v1/agent/service/register", br#"{"Port": 80}"#.to_vec(), "Missing service name"),
        ("/v1/agent/service/register", br#"{"Name": "web", "Port": 70000}"#.to_vec(), "between 0 and 65535"),
        ("/v1/agent/service/register", br#"{"Name": "web", "Port": -1}"#.to_vec(), "between 0 and 65535"),
        ("/v1/agent/service/register", br#"{"Name": "web", "Port": "80"}"#.to_vec(), "Request decode failed"),
        ("/v1/agent/service/register", br#"{"Name": "web", "Check": {"HTTP": "http://x/"}}"#.to_vec(), "Interval"),
        (
            "/v1/agent/service/register",
            br#"{"Name": "web", "Check": {"TCP": "x:1", "Interval": "often"}}"#.to_vec(),
            "Invalid Interval",
        ),
        (
            "/v1/agent/service/register",
            br#"{"Name": "web", "Weights": {"Passing": 0, "Warning": 1}}"#.to_vec(),
            "Passing",
        ),
        ("/v1/agent/check/register", br#"{"TTL": "1m"}"#.to_vec(), "Missing check name"),
        (
            "/v1/agent/check/register",
            br#"{"Name": "x", "TTL": "1m", "Status": "great"}"#.to_vec(),
            "Invalid check status",
        ),
        ("/v1/catalog/register", br#"{"Address": "10.0.0.1"}"#.to_vec(), "Must provide node"),
        ("/v1/catalog/register", br#"{"Node": "n"}"#.to_vec(), "Must provide address"),
        (
            "/v1/catalog/register",
            br#"{"Node": "n", "Address": "1.1.1.1", "Service": {"Port": 1}}"#.to_vec(),
            "service name",
        ),
        (
            "/v1/catalog/register",
            br#"{"Node": "n", "Address": "1.1.1.1", "Check": {"CheckID": "c", "ServiceID": "ghost"}}"#.to_vec(),
            "unknown service ID",
        ),
        ("/v1/catalog/deregister", br#"{}"#.to_vec(), "Must provide node"),
        ("/v1/kv/big", big, "Value too large"),
        ("/v1/kv/existing?cas=abc", b"new".to_vec(), "Invalid cas index"),
        ("/v1/kv/existing?flags=-3", b"new".to_vec(), "Invalid flags"),
        ("/v1/kv/", b"v".to_vec(), "Missing key name"),
    ];
    for (path, body, want) in cases {
        let r = api.put(path, body).await;
        assert_eq!(r.status, 400, "PUT {path} should be refused: {} {}", r.status, r.body);
        assert!(r.body.contains(want), "PUT {path}: {:?} should mention {want:?}", r.body);
        assert_eq!(r.body.trim_end().lines().count(), 1, "one line: {:?}", r.body);
    }
    for path in [
        "/v1/catalog/services?index=abc",
        "/v1/kv/existing?index=-1",
        "/v1/catalog/nodes?wait=forever",
        "/v1/health/service/web?passing=maybe",
    ] {
        let r = api.get(path).await;
        assert_eq!(r.status, 400, "GET {path}: {}", r.body);
        assert_eq!(r.body.trim_end().lines().count(), 1);
    }
    assert!(api.get("/v1/catalog/services?index=abc").await.body.contains("Invalid index"));
    assert_eq!(api.delete("/v1/kv/existing?cas=x").await.status, 400);

    let after_services = api.get("/v1/catalog/services").await;
    let after_kv = api.get("/v1/kv/?recurse").await;
    assert_eq!(before_services.body, after_services.body);
    assert_eq!(before_services.index, after_services.index, "catalog index unchanged");
    assert_eq!(before_kv.body, after_kv.body, "KV unchanged");
    assert_eq!(api.get("/v1/catalog/node/n").await.body, "null", "no half-written node");
    let (e, _) = api.get_json("/v1/kv/existing").await;
    assert_eq!(e[0]["Value"], json!("dg=="));
}

#[tokio::test]
async fn unknown_things_answer_like_consul() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    assert_eq!(api.get_json("/v1/catalog/service/nope").await.0, json!([]));
    assert_eq!(api.get_json("/v1/health/service/nope").await.0, json!([]));
    assert_eq!(api.get_json("/v1/health/checks/nope").await.0, json!([]));
    assert_eq!(api.get_json("/v1/health/node/nope").await.0, json!([]));
    assert_eq!(api.get("/v1/catalog/node/nope").await.body, "null");
    assert_eq!(api.get("/v1/kv/nope").await.status, 404);
    assert_eq!(api.put("/v1/agent/service/deregister/nope", "").await.status, 404);
    assert_eq!(api.put("/v1/agent/check/deregister/nope", "").await.status, 404);
    assert_eq!(api.put("/v1/agent/check/fail/nope", "").await.status, 404);
    assert_eq!(api.get("/v1/catalog/services?dc=mars").await.status, 500);
}
