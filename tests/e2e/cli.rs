//! Every CLI command against a real agent: output like consul's, non-zero exit with the
//! server's message on failure.

use std::process::Output;

use crate::harness::{Agent, Api, BIN};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "command failed: {}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

#[tokio::test]
async fn cli_commands() {
    let mut agent = Agent::dev().await;
    let api = Api::new(&agent);

    let members = ok(agent.cli(&["members"]));
    assert!(members.lines().next().is_some_and(|l| l.starts_with("Node")), "{members}");
    assert!(members.contains("node-1") && members.contains("alive") && members.contains("server"), "{members}");

    // services register / deregister
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("web.json");
    std::fs::write(&file, r#"{"service": {"name": "web", "id": "web-cli", "port": 8080, "tags": ["blue", "v1"]}}"#)
        .expect("write");
    let out = ok(agent.cli(&["services", "register", file.to_str().expect("utf8")]));
    assert!(out.contains("Registered service: web"), "{out}");
    let services = ok(agent.cli(&["catalog", "services"]));
    assert!(services.lines().any(|l| l.trim() == "web"), "{services}");
    let tagged = ok(agent.cli(&["catalog", "services", "-tags"]));
    assert!(tagged.lines().any(|l| l.starts_with("web") && l.contains("blue,v1")), "{tagged}");
    let nodes = ok(agent.cli(&["catalog", "nodes"]));
    assert!(nodes.contains("node-1") && nodes.contains("127.0.0.1") && nodes.contains("dc1"), "{nodes}");
    let out = ok(agent.cli(&["services", "deregister", "web-cli"]));
    assert!(out.contains("Deregistered service: web-cli"), "{out}");
    let failed = agent.cli(&["services", "deregister", "web-cli"]);
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("Unknown service ID"), "{}", stderr(&failed));
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, r#"{"service": {"port": 1}}"#).expect("write");
    let failed = agent.cli(&["services", "register", bad_file.to_str().expect("utf8")]);
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("Missing service name"), "{}", stderr(&failed));

    // kv put / get / delete with consul's flags
    assert!(ok(agent.cli(&["kv", "put", "app/color", "blue"])).contains("Success! Data written to: app/color"));
    assert_eq!(ok(agent.cli(&["kv", "get", "app/color"])), "blue\n");
    ok(agent.cli(&["kv", "put", "-flags", "7", "app/size", "L"]));
    let detailed = ok(agent.cli(&["kv", "get", "-detailed", "app/size"]));
    assert!(
        detailed.contains("Flags") && detailed.lines().any(|l| l.starts_with("Flags") && l.trim_end().ends_with('7')),
        "{detailed}"
    );
    let (e, _) = api.get_json("/v1/kv/app/color").await;
    let mi = e[0]["ModifyIndex"].as_u64().expect("index").to_string();
    let cas_fail = agent.cli(&["kv", "put", "-cas", "-modify-index", "1", "app/color", "red"]);
    assert!(!cas_fail.status.success(), "CAS on a stale index must fail");
    assert!(stderr(&cas_fail).contains("CAS failed"), "{}", stderr(&cas_fail));
    ok(agent.cli(&["kv", "put", "-cas", "-modify-index", &mi, "app/color", "red"]));
    let rec = ok(agent.cli(&["kv", "get", "-recurse", "app/"]));
    assert_eq!(rec, "app/color:red\napp/size:L\n");
    assert!(ok(agent.cli(&["kv", "delete", "app/size"])).contains("Deleted key: app/size"));
    let missing = agent.cli(&["kv", "get", "app/size"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("No key exists at: app/size"));
    assert!(ok(agent.cli(&["kv", "delete", "-recurse", "app"])).contains("Deleted keys with prefix: app"));
    assert_eq!(api.get("/v1/kv/app/color").await.status, 404);

    // info, reload
    let info = ok(agent.cli(&["info"]));
    assert!(info.contains("node_name = node-1") && info.contains("known_leader = true"), "{info}");
    assert!(ok(agent.cli(&["reload"])).contains("Configuration reload triggered"));

    // CONSUL_HTTP_ADDR is honoured.
    let via_env = std::process::Command::new(BIN)
        .args(["kv", "put", "env/key", "1"])
        .env_remove("WHARF_HTTP_ADDR")
        .env("CONSUL_HTTP_ADDR", agent.http_addr())
        .output()
        .expect("run");
    assert!(via_env.status.success(), "{}", stderr(&via_env));
    // An agent that is not there: a clear message and non-zero exit.
    let nowhere = std::process::Command::new(BIN).args(["-http-addr", "127.0.0.1:1", "members"]).output().expect("run");
    assert!(!nowhere.status.success());
    assert!(stderr(&nowhere).contains("cannot reach the wharf agent"), "{}", stderr(&nowhere));

    // leave stops the agent.
    assert!(ok(agent.cli(&["leave"])).contains("Graceful leave complete"));
    assert!(agent.wait_exit(std::time::Duration::from_secs(10)).await, "agent exits after leave");
}

/// `version`, `keygen` (a key an agent takes with -encrypt), and `force-leave` of a node.
#[tokio::test]
async fn version_keygen_and_force_leave() {
    use base64::Engine;
    let version = std::process::Command::new(BIN).arg("version").output().expect("run");
    assert!(stdout(&version).starts_with(&format!("wharf v{}", env!("CARGO_PKG_VERSION"))), "{version:?}");

    let key = |_| stdout(&std::process::Command::new(BIN).arg("keygen").output().expect("run")).trim().to_string();
    let (k1, k2): (String, String) = (key(1), key(2));
    assert_ne!(k1, k2, "every key is new");
    let bytes = base64::engine::general_purpose::STANDARD.decode(&k1).expect("base64");
    assert_eq!(bytes.len(), 32);

    let tmp = tempfile::tempdir().expect("tempdir");
    let mut agent = crate::harness::Agent::new(
        tmp.path().join("data"),
        "node-1",
        vec!["--server".into(), "--bootstrap-expect".into(), "1".into(), "-encrypt".into(), k1],
        None,
    );
    agent.start(&[]);
    agent.wait_ready().await;
    let api = Api::new(&agent);
    api.put_ok(
        "/v1/catalog/register",
        r#"{"Node": "gone", "Address": "10.0.0.9", "Service": {"Service": "old", "Port": 1}}"#,
    )
    .await;
    assert_eq!(ok(agent.cli(&["force-leave", "gone"])).trim(), "Node gone has left the cluster");
    let (node, _) = api.get_json("/v1/catalog/node/gone").await;
    assert!(node.is_null(), "{node}");
    let (old, _) = api.get_json("/v1/catalog/service/old").await;
    assert_eq!(old, serde_json::json!([]));
    let unknown = agent.cli(&["force-leave", "nobody"]);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("Unknown node \"nobody\""), "{}", stderr(&unknown));
    let bad = agent.cli(&["agent", "-encrypt", "not-base64!"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("-encrypt: the key is not base64"), "{}", stderr(&bad));
}
