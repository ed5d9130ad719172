//! Three servers on loopback, formed by configuration alone (--bootstrap-expect 3 and
//! --retry-join): writes to followers are forwarded to the leader, every server reads
//! them, the cluster survives losing its leader, and the Raft port refuses peers without
//! the cluster key.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Agent, Api, free_port, wait_for};

const KEY: &str = "test-cluster-key-0123456789";

async fn leader_of(api: &Api) -> String {
    api.get("/v1/status/leader").await.body.trim_matches('"').to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_forward_writes_and_survive_losing_the_leader() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let raft_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let joins: Vec<String> = raft_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| {
            let mut extra = vec!["--cluster-key".to_string(), KEY.to_string()];
            for j in &joins {
                extra.push("--retry-join".into());
                extra.push(j.clone());
            }
            let mut a = Agent::new(tmp.path().join(format!("s{i}")), &format!("server-{i}"), extra, None);
            a.raft_port = raft_ports[i];
            a
        })
        .collect();
    for a in &mut agents {
        a.start(&["--server", "--bootstrap-expect", "3"]);
    }
    for a in &agents {
        a.wait_ready().await;
    }
    let apis: Vec<Api> = agents.iter().map(Api::new).collect();
    let leader = leader_of(&apis[0]).await;
    for api in &apis {
        assert_eq!(leader_of(api).await, leader, "every server agrees on the leader");
        assert_eq!(api.get_json("/v1/status/peers").await.0.as_array().map(Vec::len), Some(3));
    }
    let leader_i = raft_ports.iter().position(|p| leader.ends_with(&format!(":{p}"))).expect("leader is one of ours");
    let follower_i = (leader_i + 1) % 3;

    // A write to a follower is forwarded to the leader and readable everywhere.
    let r = apis[follower_i].put_ok("/v1/kv/cluster/key", "from-follower").await;
    assert_eq!(r.body, "true");
    // The writing follower has applied it (read-your-writes); the other follower's stale
    // replica catches up on the next append.
    let (e, _) = apis[follower_i].get_json("/v1/kv/cluster/key?stale").await;
    assert_eq!(e[0]["Value"], "ZnJvbS1mb2xsb3dlcg==");
    for api in &apis {
        wait_for("the write replicated to every server", Duration::from_secs(5), || async {
            api.get("/v1/kv/cluster/key?stale").await.status == 200
        })
        .await;
        let (e, _) = api.get_json("/v1/kv/cluster/key?stale").await;
        assert_eq!(e[0]["Value"], "ZnJvbS1mb2xsb3dlcg==");
    }
    apis[follower_i].put_ok("/v1/agent/service/register", r#"{"Name":"web","ID":"web-f","Port":80}"#).await;
    let (nodes, _) = apis[leader_i].get_json("/v1/catalog/nodes").await;
    assert_eq!(nodes.as_array().map(Vec::len), Some(3), "all three servers registered: {nodes}");
    // ?consistent on a follower asks the leader for a read index.
    let (e, _) = apis[follower_i].get_json("/v1/kv/cluster/key?consistent").await;
    assert_eq!(e[0]["Value"], "ZnJvbS1mb2xsb3dlcg==");

    // Lose the leader: the two others elect a new one and keep taking writes.
    agents[leader_i].kill9();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader_i).collect();
    wait_for("a new leader", Duration::from_secs(20), || async {
        let l = leader_of(&apis[survivors[0]]).await;
        !l.is_empty() && l != leader
    })
    .await;
    for i in &survivors {
        let r = apis[*i].put(&format!("/v1/kv/after/{i}"), "ok").await;
        assert_eq!((r.status, r.body.as_str()), (200, "true"), "write via survivor {i}");
    }
    for i in &survivors {
        wait_for("replicated writes", Duration::from_secs(5), || async {
            let r = apis[*i].get("/v1/kv/after/?recurse&stale").await;
            r.status == 200 && r.json().as_array().map(Vec::len) == Some(2)
        })
        .await;
    }

    // The old leader comes back and catches up.
    agents[leader_i].start(&["--server", "--bootstrap-expect", "3"]);
    agents[leader_i].wait_ready().await;
    wait_for("restarted server catches up", Duration::from_secs(10), || async {
        let r = apis[leader_i].get("/v1/kv/after/?recurse&stale").await;
        r.status == 200 && r.json().as_array().map(Vec::len) == Some(2)
    })
    .await;

    // The Raft port refuses anyone without the key.
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/raft/info", raft_ports[survivors[0]]);
    let no_key = client.get(&url).send().await.expect("request");
    assert_eq!(no_key.status(), 403);
    let wrong = client.get(&url).header("x-wharf-cluster-key", "wrong-key-wrong-key").send().await.expect("request");
    assert_eq!(wrong.status(), 403);
    let right = client.get(&url).header("x-wharf-cluster-key", KEY).send().await.expect("request");
    assert_eq!(right.status(), 200);
    let info: Value = right.json().await.expect("json");
    assert_eq!(info["initialized"], true);
}

/// A client agent (not a server), joined by host name, leaves gracefully on SIGINT, as
/// Consul's clients do by default: its node and services leave the catalog. (A server does
/// not: skip_leave_on_interrupt.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaves_on_interrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = Agent::new(tmp.path().join("s"), "server-1", vec!["--cluster-key".into(), KEY.into()], None);
    server.start(&["--server", "--bootstrap-expect", "1"]);
    server.wait_ready().await;
    // By host name, as the tutorials join (`-retry-join=consul1`).
    let join = format!("localhost:{}", server.raft_port);
    let mut client = Agent::new(
        tmp.path().join("c"),
        "client-1",
        vec!["--cluster-key".into(), KEY.into(), "--retry-join".into(), join],
        None,
    );
    client.start(&[]);
    client.wait_ready().await;
    let api = Api::new(&server);
    let capi = Api::new(&client);
    capi.put_ok("/v1/agent/service/register", r#"{"Name": "web", "Port": 80}"#).await;
    wait_for("the client's web on the server", Duration::from_secs(10), || async {
        api.get_json("/v1/catalog/service/web").await.0.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    client.signal("-INT");
    assert!(client.wait_exit(Duration::from_secs(10)).await, "the client stops on SIGINT");
    let (node, _) = api.get_json("/v1/catalog/node/client-1").await;
    assert!(node.is_null(), "the client left the catalog: {node}");
    let (web, _) = api.get_json("/v1/catalog/service/web").await;
    assert_eq!(web, serde_json::json!([]), "its services went with it");
}

/// Whether `api`'s passing instances of `web` are exactly those on `nodes`.
async fn passing_web_nodes(api: &Api) -> Vec<String> {
    let (list, _) = api.get_json("/v1/health/service/web?passing&stale").await;
    let mut nodes: Vec<String> = list
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["Node"]["Node"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    nodes.sort();
    nodes
}

async fn member_status(api: &Api, name: &str) -> Option<i64> {
    let (members, _) = api.get_json("/v1/agent/members").await;
    members.as_array()?.iter().find(|m| m["Name"] == name).and_then(|m| m["Status"].as_i64())
}

/// Gossip on loopback: a killed client is noticed by every other agent within 5 s with
/// the default timing (its instances leave the passing set, `members` shows it failed), a
/// restart brings it back, and `wharf leave` removes a client's node within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_client_is_noticed_and_a_leaving_one_is_gone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = Agent::new(tmp.path().join("s"), "server-1", vec!["--cluster-key".into(), KEY.into()], None);
    server.start(&["--server", "--bootstrap-expect", "1"]);
    server.wait_ready().await;
    let join = format!("localhost:{}", server.raft_port);
    let mut clients: Vec<Agent> = (1..=2)
        .map(|i| {
            let extra = vec!["--cluster-key".into(), KEY.into(), "--retry-join".into(), join.clone()];
            Agent::new(tmp.path().join(format!("c{i}")), &format!("client-{i}"), extra, None)
        })
        .collect();
    for c in &mut clients {
        c.start(&[]);
    }
    for c in &clients {
        c.wait_ready().await;
        Api::new(c).put_ok("/v1/agent/service/register", r#"{"Name": "web", "Port": 80}"#).await;
    }
    let (api, other) = (Api::new(&server), Api::new(&clients[1]));
    for a in [&api, &other] {
        wait_for("both clients' web passing and three members alive", Duration::from_secs(15), || async {
            passing_web_nodes(a).await == ["client-1", "client-2"]
                && member_status(a, "client-1").await == Some(1)
                && member_status(a, "client-2").await == Some(1)
                && member_status(a, "server-1").await == Some(1)
        })
        .await;
    }

    clients[0].kill9();
    let killed = std::time::Instant::now();
    for a in [&api, &other] {
        wait_for("client-1 failed and out of the passing set", Duration::from_secs(5), || async {
            passing_web_nodes(a).await == ["client-2"] && member_status(a, "client-1").await == Some(4)
        })
        .await;
    }
    println!("a killed client was critical on every agent {:?} after the kill", killed.elapsed());
    let (check, _) = api.get_json("/v1/health/node/client-1").await;
    let serf = check.as_array().and_then(|a| a.iter().find(|c| c["CheckID"] == "serfHealth")).cloned();
    assert_eq!(serf.as_ref().map(|c| c["Status"].clone()), Some(Value::from("critical")), "{check}");
    assert_eq!(serf.map(|c| c["Output"].clone()), Some(Value::from("Agent not live or unreachable")));

    clients[0].start(&[]);
    clients[0].wait_ready().await;
    for a in [&api, &other] {
        wait_for("client-1 back", Duration::from_secs(10), || async {
            passing_web_nodes(a).await == ["client-1", "client-2"] && member_status(a, "client-1").await == Some(1)
        })
        .await;
    }

    let out = clients[1].cli(&["leave"]);
    assert!(out.status.success(), "{out:?}");
    let left = std::time::Instant::now();
    wait_for("client-2's node gone from the catalog", Duration::from_secs(2), || async {
        api.get_json("/v1/catalog/node/client-2").await.0.is_null()
    })
    .await;
    println!("a leaving client's node was gone {:?} after `wharf leave`", left.elapsed());
    assert_eq!(passing_web_nodes(&api).await, ["client-1"]);
    wait_for("client-2 left in members", Duration::from_secs(2), || async {
        member_status(&api, "client-2").await == Some(3)
    })
    .await;

    // The leader removed the member that left from Raft; `operator raft` lists and removes.
    let addr_of = |a: &Agent| format!("127.0.0.1:{}", a.raft_port);
    let (c1, c2) = (addr_of(&clients[0]), addr_of(&clients[1]));
    wait_for("client-2 out of the Raft configuration", Duration::from_secs(5), || async {
        let peers = server.cli(&["operator", "raft", "list-peers"]);
        !String::from_utf8_lossy(&peers.stdout).contains(&c2)
    })
    .await;
    let peers = String::from_utf8_lossy(&server.cli(&["operator", "raft", "list-peers"]).stdout).to_string();
    let rows: Vec<Vec<&str>> = peers.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"], "{peers}");
    let row = |addr: &str| rows.iter().find(|r| r.get(2) == Some(&addr)).cloned();
    assert_eq!(row(&addr_of(&server)).map(|r| (r[0], r[3], r[4])), Some(("server-1", "leader", "true")), "{peers}");
    assert_eq!(row(&c1).map(|r| (r[0], r[3], r[4])), Some(("client-1", "non-voter", "false")), "{peers}");
    let out = server.cli(&["operator", "raft", "remove-peer", &format!("-address={c1}")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("Removed peer with address {c1}"));
    let (conf, _) = api.get_json("/v1/operator/raft/configuration").await;
    let addrs: Vec<&str> =
        conf["Servers"].as_array().into_iter().flatten().filter_map(|s| s["Address"].as_str()).collect();
    assert_eq!(addrs, [addr_of(&server).as_str()], "{conf}");
    let unknown = server.cli(&["operator", "raft", "remove-peer", "-address=10.9.9.9:8300"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("\"10.9.9.9:8300\" was not found in the Raft configuration"),
        "{unknown:?}"
    );
}
