//! Every HTTP API endpoint of the catalog issue, against the real binary, checking
//! Consul's JSON shapes, field names and status codes.

use serde_json::{Value, json};

use crate::harness::{Agent, Api};

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn agent_service_endpoints() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    let body = json!({
        "ID": "web-1", "Name": "web", "Tags": ["v1", "primary"], "Address": "127.0.0.1", "Port": 8080,
        "Meta": {"version": "1.2"}, "Weights": {"Passing": 3, "Warning": 1}, "EnableTagOverride": true,
        "Checks": [
            {"CheckID": "web-ttl", "Name": "web ttl", "TTL": "30s", "Notes": "pushed by app"},
            {"HTTP": "http://127.0.0.1:8080/health", "Interval": "10s", "Timeout": "1s",
             "Header": {"X-Probe": ["1"]}, "Method": "HEAD", "SuccessBeforePassing": 2, "FailuresBeforeCritical": 3}
        ]
    });
    let r = api.put_ok("/v1/agent/service/register", body.to_string()).await;
    assert!(r.body.is_empty(), "register answers an empty body like Consul");

    let (services, _) = api.get_json("/v1/agent/services").await;
    let web = &services["web-1"];
    assert_eq!(
        keys(web),
        ["Address", "Datacenter", "EnableTagOverride", "ID", "Meta", "Port", "Service", "Tags", "Weights"]
    );
    assert_eq!(web["Service"], "web");
    assert_eq!(web["Tags"], json!(["v1", "primary"]));
    assert_eq!(web["Weights"], json!({"Passing": 3, "Warning": 1}));
    assert_eq!(web["Meta"]["version"], "1.2");
    assert_eq!(web["Datacenter"], "dc1");
    assert_eq!(web["EnableTagOverride"], true);

    let (one, _) = api.get_json("/v1/agent/service/web-1").await;
    assert_eq!(one["Port"], 8080);
    assert_eq!(api.get("/v1/agent/service/nope").await.status, 404);

    let (checks, _) = api.get_json("/v1/agent/checks").await;
    let ttl = &checks["web-ttl"];
    assert_eq!(ttl["Status"], "critical", "initial status is critical");
    assert_eq!(ttl["Type"], "ttl");
    assert_eq!(ttl["ServiceID"], "web-1");
    assert_eq!(ttl["ServiceName"], "web");
    assert_eq!(ttl["Notes"], "pushed by app");
    let http = &checks["service:web-1:2"];
    assert_eq!(http["Type"], "http");
    assert_eq!(http["Interval"], "10s");
    assert_eq!(http["Definition"]["HTTP"], "http://127.0.0.1:8080/health");
    assert_eq!(http["Definition"]["Header"]["X-Probe"], json!(["1"]));
    assert_eq!(http["Definition"]["SuccessBeforePassing"], 2);
    assert!(checks["serfHealth"].is_object(), "the node's liveness check is there");
    for field in [
        "Node",
        "CheckID",
        "Name",
        "Status",
        "Notes",
        "Output",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "Type",
        "Interval",
        "Timeout",
        "Definition",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(ttl.get(field).is_some(), "check field {field}");
    }

    // TTL updates.
    api.put_ok("/v1/agent/check/pass/web-ttl?note=all%20good", "").await;
    let (c, _) = api.get_json("/v1/agent/checks").await;
    assert_eq!((c["web-ttl"]["Status"].clone(), c["web-ttl"]["Output"].clone()), (json!("passing"), json!("all good")));
    api.put_ok("/v1/agent/check/warn/web-ttl", "").await;
    assert_eq!(api.get_json("/v1/agent/checks").await.0["web-ttl"]["Status"], "warning");
    api.put_ok("/v1/agent/check/fail/web-ttl?note=down", "").await;
    assert_eq!(api.get_json("/v1/agent/checks").await.0["web-ttl"]["Status"], "critical");
    api.put_ok("/v1/agent/check/update/web-ttl", r#"{"Status":"passing","Output":"recovered"}"#).await;
    let (c, _) = api.get_json("/v1/agent/checks").await;
    assert_eq!(c["web-ttl"]["Output"], "recovered");
    let bad = api.put("/v1/agent/check/update/web-ttl", r#"{"Status":"fine"}"#).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("Invalid check status"), "{}", bad.body);
    assert_eq!(api.put("/v1/agent/check/pass/nope", "").await.status, 404);
    let not_ttl = api.put("/v1/agent/check/pass/service:web-1:2", "").await;
    assert_eq!(not_ttl.status, 400, "{}", not_ttl.body);

    // Re-registering keeps check status; replace-existing-checks drops the missing ones.
    api.put_ok("/v1/agent/service/register", body.to_string()).await;
    assert_eq!(api.get_json("/v1/agent/checks").await.0["web-ttl"]["Status"], "passing");
    let only_ttl = json!({"ID": "web-1", "Name": "web", "Port": 8080, "Check": {"CheckID": "web-ttl", "TTL": "30s"}});
    api.put_ok("/v1/agent/service/register?replace-existing-checks", only_ttl.to_string()).await;
    let (c, _) = api.get_json("/v1/agent/checks").await;
    assert!(c.get("service:web-1:2").is_none(), "replaced checks are removed: {c}");
    assert!(c.get("web-ttl").is_some());

    // Standalone checks.
    api.put_ok("/v1/agent/check/register", r#"{"Name":"disk","TTL":"1m","Status":"passing"}"#).await;
    api.put_ok(
        "/v1/agent/check/register",
        r#"{"ID":"web-tcp","Name":"tcp","ServiceID":"web-1","TCP":"127.0.0.1:8080","Interval":"5s"}"#,
    )
    .await;
    let (c, _) = api.get_json("/v1/agent/checks").await;
    assert_eq!(c["disk"]["Status"], "passing");
    assert_eq!(c["web-tcp"]["ServiceName"], "web");
    let orphan = api.put("/v1/agent/check/register", r#"{"Name":"x","ServiceID":"ghost","TTL":"1m"}"#).await;
    assert_eq!(orphan.status, 404, "{}", orphan.body);
    api.put_ok("/v1/agent/check/deregister/disk", "").await;
    assert!(api.get_json("/v1/agent/checks").await.0.get("disk").is_none());
    assert_eq!(api.put("/v1/agent/check/deregister/disk", "").await.status, 404);

    // Deregistering a service removes its checks.
    api.put_ok("/v1/agent/service/deregister/web-1", "").await;
    assert!(api.get_json("/v1/agent/services").await.0.get("web-1").is_none());
    let (c, _) = api.get_json("/v1/agent/checks").await;
    assert!(c.get("web-ttl").is_none() && c.get("web-tcp").is_none(), "{c}");
    let r = api.put("/v1/agent/service/deregister/web-1", "").await;
    assert_eq!(r.status, 404);
    assert!(r.body.starts_with("Unknown service ID \"web-1\""), "{}", r.body);
}

#[tokio::test]
async fn agent_members_self_and_status() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    let (members, _) = api.get_json("/v1/agent/members").await;
    let m = &members[0];
    assert_eq!(m["Name"], "node-1");
    assert_eq!(m["Addr"], "127.0.0.1");
    assert_eq!(m["Status"], 1);
    assert_eq!(m["Tags"]["role"], "consul");
    assert_eq!(m["Port"], agent.serf_port, "a member's port is its gossip port, as Serf's");
    assert_eq!(m["Tags"]["port"], agent.raft_port.to_string());

    let (me, _) = api.get_json("/v1/agent/self").await;
    assert_eq!(me["Config"]["NodeName"], "node-1");
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert_eq!(me["Config"]["Server"], true);
    let id = me["Config"]["NodeID"].as_str().expect("NodeID");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(me["Member"]["Name"], "node-1");

    let leader = api.get("/v1/status/leader").await;
    assert_eq!(leader.body, format!("\"127.0.0.1:{}\"", agent.raft_port));
    let (peers, _) = api.get_json("/v1/status/peers").await;
    assert_eq!(peers, json!([format!("127.0.0.1:{}", agent.raft_port)]));
    let (dcs, _) = api.get_json("/v1/catalog/datacenters").await;
    assert_eq!(dcs, json!(["dc1"]));
    let unknown = api.get("/v1/nope").await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn catalog_endpoints() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    let reg = |node: &str, addr: &str, id: &str, tags: Value, status: &str| {
        json!({
            "Node": node, "Address": addr, "NodeMeta": {"rack": "r1"}, "TaggedAddresses": {"wan": addr},
            "Service": {"ID": id, "Service": "db", "Tags": tags, "Port": 5432, "Address": addr, "Meta": {"role": "x"}},
            "Check": {"CheckID": format!("{id}-alive"), "Name": "alive", "Status": status, "ServiceID": id}
        })
    };
    let r = api
        .put_ok(
            "/v1/catalog/register",
            reg("ext-1", "10.1.0.1", "db-1", json!(["primary", "v2"]), "passing").to_string(),
        )
        .await;
    assert_eq!(r.body, "true");
    api.put_ok(
        "/v1/catalog/register",
        reg("ext-2", "10.1.0.2", "db-2", json!(["replica", "v2"]), "critical").to_string(),
    )
    .await;

    let (services, idx) = api.get_json("/v1/catalog/services").await;
    assert_eq!(services["db"], json!(["primary", "replica", "v2"]));
    assert!(idx > 1);

    let (list, _) = api.get_json("/v1/catalog/service/db").await;
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    let e = &list[0];
    for field in [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "NodeMeta",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "ServiceAddress",
        "ServiceWeights",
        "ServiceMeta",
        "ServicePort",
        "ServiceEnableTagOverride",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(e.get(field).is_some(), "field {field} in {e}");
    }
    assert_eq!(e["NodeMeta"]["rack"], "r1");
    assert_eq!(e["ServicePort"], 5432);
    let (tagged, _) = api.get_json("/v1/catalog/service/db?tag=v2&tag=primary").await;
    assert_eq!(tagged.as_array().map(Vec::len), Some(1), "repeated ?tag is AND");
    assert_eq!(tagged[0]["ServiceID"], "db-1");
    let (none, _) = api.get_json("/v1/catalog/service/db?tag=v2&tag=nope").await;
    assert_eq!(none, json!([]));
    let (unknown, _) = api.get_json("/v1/catalog/service/ghost").await;
    assert_eq!(unknown, json!([]), "unknown service is an empty list, as Consul");

    let (nodes, _) = api.get_json("/v1/catalog/nodes").await;
    let names: Vec<&str> = nodes.as_array().expect("array").iter().filter_map(|n| n["Node"].as_str()).collect();
    assert_eq!(names, ["ext-1", "ext-2", "node-1"]);
    assert_eq!(nodes[0]["Meta"]["rack"], "r1");

    let (node, _) = api.get_json("/v1/catalog/node/ext-1").await;
    assert_eq!(node["Node"]["Address"], "10.1.0.1");
    assert_eq!(node["Services"]["db-1"]["Service"], "db");
    assert_eq!(node["Services"]["db-1"]["Tags"], json!(["primary", "v2"]));
    let (ghost, _) = api.get_json("/v1/catalog/node/ghost").await;
    assert!(ghost.is_null(), "unknown node is null, as Consul");

    // Health views of the same data.
    let (h, _) = api.get_json("/v1/health/service/db").await;
    assert_eq!(h.as_array().map(Vec::len), Some(2));
    assert_eq!(keys(&h[0]), ["Checks", "Node", "Service"]);
    let (hp, _) = api.get_json("/v1/health/service/db?passing").await;
    assert_eq!(hp.as_array().map(Vec::len), Some(1));
    assert_eq!(hp[0]["Service"]["ID"], "db-1");
    let (ht, _) = api.get_json("/v1/health/service/db?tag=replica").await;
    assert_eq!(ht[0]["Service"]["ID"], "db-2");
    let (hc, _) = api.get_json("/v1/health/checks/db").await;
    assert_eq!(hc.as_array().map(Vec::len), Some(2));
    let (crit, _) = api.get_json("/v1/health/state/critical").await;
    assert!(crit.as_array().expect("array").iter().any(|c| c["CheckID"] == "db-2-alive"));
    let (passing, _) = api.get_json("/v1/health/state/passing").await;
    assert!(passing.as_array().expect("array").iter().all(|c| c["Status"] == "passing"));
    let (any, _) = api.get_json("/v1/health/state/any").await;
    assert!(any.as_array().map(Vec::len) >= Some(3));
    assert_eq!(api.get("/v1/health/state/bogus").await.status, 400);
    let (hn, _) = api.get_json("/v1/health/node/ext-2").await;
    assert_eq!(hn[0]["CheckID"], "db-2-alive");
    let (hn, _) = api.get_json("/v1/health/node/ghost").await;
    assert_eq!(hn, json!([]));
    assert_eq!(api.get_json("/v1/health/service/ghost").await.0, json!([]));

    // A node-level check failing takes every instance on it out of ?passing.
    api.put_ok(
        "/v1/catalog/register",
        json!({"Node": "ext-1", "Address": "10.1.0.1", "NodeMeta": {"rack": "r1"},
        "TaggedAddresses": {"wan": "10.1.0.1"},
        "Check": {"CheckID": "node-disk", "Name": "disk", "Status": "warning"}})
        .to_string(),
    )
    .await;
    assert_eq!(api.get_json("/v1/health/service/db?passing").await.0, json!([]));

    // Deregister: a check, a service, a node.
    api.put_ok("/v1/catalog/deregister", r#"{"Node":"ext-1","CheckID":"node-disk"}"#).await;
    assert_eq!(api.get_json("/v1/health/service/db?passing").await.0.as_array().map(Vec::len), Some(1));
    api.put_ok("/v1/catalog/deregister", r#"{"Node":"ext-2","ServiceID":"db-2"}"#).await;
    assert_eq!(api.get_json("/v1/catalog/service/db").await.0.as_array().map(Vec::len), Some(1));
    assert_eq!(api.get_json("/v1/health/node/ext-2").await.0, json!([]), "service checks go with it");
    api.put_ok("/v1/catalog/deregister", r#"{"Node":"ext-1"}"#).await;
    assert!(api.get_json("/v1/catalog/node/ext-1").await.0.is_null());
    assert_eq!(api.get_json("/v1/catalog/services").await.0.get("db"), None);
}

#[tokio::test]
async fn kv_endpoints() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    assert_eq!(api.put_ok("/v1/kv/app/config/db", "postgres://x").await.body, "true");
    api.put_ok("/v1/kv/app/config/cache?flags=42", "redis").await;
    api.put_ok("/v1/kv/app/name", "demo").await;
    api.put_ok("/v1/kv/other", "").await;

    let (e, idx) = api.get_json("/v1/kv/app/config/db").await;
    let e0 = &e[0];
    assert_eq!(keys(e0), ["CreateIndex", "Flags", "Key", "LockIndex", "ModifyIndex", "Value"]);
    assert_eq!(e0["Value"], "cG9zdGdyZXM6Ly94");
    assert_eq!(e0["ModifyIndex"].as_u64(), Some(idx), "a key's index is its ModifyIndex");
    assert_eq!(api.get_json("/v1/kv/app/config/cache").await.0[0]["Flags"], 42);
    assert!(api.get_json("/v1/kv/other").await.0[0]["Value"].is_null(), "empty value is null");

    let raw = api.get("/v1/kv/app/name?raw").await;
    assert_eq!((raw.status, raw.body.as_str()), (200, "demo"));

    let missing = api.get("/v1/kv/nope").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.is_empty());
    assert!(missing.index.is_some(), "404 still carries X-Consul-Index");

    let (all, _) = api.get_json("/v1/kv/app/?recurse").await;
    let ks: Vec<&str> = all.as_array().expect("array").iter().filter_map(|e| e["Key"].as_str()).collect();
    assert_eq!(ks, ["app/config/cache", "app/config/db", "app/name"]);
    let (everything, _) = api.get_json("/v1/kv/?recurse").await;
    assert_eq!(everything.as_array().map(Vec::len), Some(4));
    let (ks, _) = api.get_json("/v1/kv/app/?keys").await;
    assert_eq!(ks, json!(["app/config/cache", "app/config/db", "app/name"]));
    let (ks, _) = api.get_json("/v1/kv/app/?keys&separator=/").await;
    assert_eq!(ks, json!(["app/config/", "app/name"]));
    let (ks, _) = api.get_json("/v1/kv/?keys&separator=/").await;
    assert_eq!(ks, json!(["app/", "other"]));
    assert_eq!(api.get("/v1/kv/zzz/?recurse").await.status, 404);

    // CAS.
    let (e, _) = api.get_json("/v1/kv/app/name").await;
    let mi = e[0]["ModifyIndex"].as_u64().expect("index");
    assert_eq!(api.put_ok(&format!("/v1/kv/app/name?cas={}", mi + 100), "x").await.body, "false");
    assert_eq!(api.put_ok(&format!("/v1/kv/app/name?cas={mi}"), "renamed").await.body, "true");
    assert_eq!(api.put_ok(&format!("/v1/kv/app/name?cas={mi}"), "again").await.body, "false");
    assert_eq!(api.put_ok("/v1/kv/app/name?cas=0", "x").await.body, "false", "cas=0 only creates");
    assert_eq!(api.put_ok("/v1/kv/fresh?cas=0", "x").await.body, "true");
    let (e, _) = api.get_json("/v1/kv/app/name").await;
    assert_eq!(e[0]["Value"], "cmVuYW1lZA==");
    assert!(e[0]["CreateIndex"].as_u64() < e[0]["ModifyIndex"].as_u64(), "CreateIndex kept on update");

    // Delete: cas, single, recurse.
    let mi = e[0]["ModifyIndex"].as_u64().expect("index");
    let del = api.delete(&format!("/v1/kv/app/name?cas={}", mi + 1)).await;
    assert_eq!(del.body, "false");
    assert_eq!(api.delete(&format!("/v1/kv/app/name?cas={mi}")).await.body, "true");
    assert_eq!(api.get("/v1/kv/app/name").await.status, 404);
    assert_eq!(api.delete("/v1/kv/other").await.body, "true");
    assert_eq!(api.delete("/v1/kv/app?recurse").await.body, "true");
    assert_eq!(api.get("/v1/kv/app/?recurse").await.status, 404);
    assert_eq!(api.get_json("/v1/kv/?keys").await.0, json!(["fresh"]));
    assert_eq!(api.delete("/v1/kv/").await.status, 400, "delete without a key needs ?recurse");
}
