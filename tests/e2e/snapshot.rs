//! `wharf snapshot save | inspect | restore`: a copy of one agent's whole state restored
//! on a fresh agent gives the same KV and catalog; a blocking query on a key the restore
//! changes wakes up; a file that is not a snapshot is refused and changes nothing.

use std::time::Duration;

use crate::harness::{Agent, Api};

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restored_on_a_fresh_agent_gives_the_same_state() {
    let first = Agent::dev().await;
    let api = Api::new(&first);
    for i in 0..20 {
        api.put_ok(&format!("/v1/kv/app/config/{i}"), format!("value-{i}")).await;
    }
    api.put_ok("/v1/kv/bin", vec![0u8, 159, 146, 150]).await;
    api.put_ok(
        "/v1/catalog/register",
        r#"{"Node": "far", "Address": "10.0.0.9", "Service": {"Service": "db", "Port": 5432, "Tags": ["primary"]}}"#,
    )
    .await;
    api.put_ok("/v1/agent/service/register", r#"{"Name": "web", "ID": "web-1", "Port": 8080}"#).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.snap");
    let saved = ok(first.cli(&["snapshot", "save", file.to_str().expect("utf8")]));
    assert!(saved.starts_with("Saved and verified snapshot to index "), "{saved}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777, 0o600);
    let inspect = ok(first.cli(&["snapshot", "inspect", file.to_str().expect("utf8")]));
    assert!(inspect.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["KV", "entries", "21"]), "{inspect}");

    let second = Agent::dev().await;
    let api2 = Api::new(&second);
    api2.put_ok("/v1/kv/only/here", "x").await;
    let (_, idx) = api2.get_json("/v1/kv/only/here").await;
    // A watcher on a key the restore removes wakes up.
    let watch = {
        let api2 = Api::new(&second);
        tokio::spawn(async move { api2.get(&format!("/v1/kv/only/here?index={idx}&wait=20s")).await })
    };
    let bad = dir.path().join("not-a-snapshot");
    std::fs::write(&bad, b"{\"hello\": 1}").expect("write");
    let refused = second.cli(&["snapshot", "restore", bad.to_str().expect("utf8")]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a wharf snapshot"), "{refused:?}");
    let refused = api2.put("/v1/snapshot", "junk").await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.starts_with("not a wharf snapshot"), "{}", refused.body);
    assert_eq!(api2.get("/v1/kv/only/here").await.status, 200, "a refused restore changes nothing");

    assert_eq!(ok(second.cli(&["snapshot", "restore", file.to_str().expect("utf8")])).trim(), "Restored snapshot");
    let woke = tokio::time::timeout(Duration::from_secs(5), watch).await.expect("the watcher woke").expect("join");
    assert_eq!(woke.status, 404, "the key is gone after the restore");
    for path in ["/v1/kv/?recurse", "/v1/catalog/service/db", "/v1/catalog/service/web", "/v1/catalog/node/far"] {
        let (a, _) = api.get_json(path).await;
        let (b, _) = api2.get_json(path).await;
        let strip = |v: &serde_json::Value| {
            let mut v = v.clone();
            for e in v.as_array_mut().into_iter().flatten() {
                if let Some(o) = e.as_object_mut() {
                    o.remove("ModifyIndex");
                }
            }
            v
        };
        assert_eq!(strip(&a), strip(&b), "{path} differs after the restore");
    }
    let (bin, _) = api2.get_json("/v1/kv/bin").await;
    assert_eq!(bin[0]["Value"], "AJ+Slg==", "binary values survive");
}
