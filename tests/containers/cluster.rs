//! A cluster across hosts, as seed 002 starts it: three servers (`-server
//! -bootstrap-expect=3` on the first, `-server -retry-join=consul1` on the others) and two
//! clients (`-retry-join=consul1 -client=0.0.0.0`), each a container with its own address
//! on a private Docker network, a web backend registered on each client and the front door
//! on a client. Then real faults: a client killed and started again, a client leaving, the
//! leader killed, a server cut off from the network and healed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{curl, images, ok, sh, wait_for};

const SUBNET: &str = "172.30.78";

impl crate::Net {
    /// Starts a container with host name and network alias `host` at `ip`.
    fn run(&mut self, host: &str, ip: &str, image_and_args: &str) {
        let name = self.name(host);
        ok(&format!(
            "docker run -d -h {host} --name {name} --network {} --network-alias {host} --ip {ip} {image_and_args}",
            self.network
        ));
        self.names.push(name);
    }

    /// `wharf` run inside the container (its API on 127.0.0.1:8500 there).
    fn exec(&self, host: &str, args: &str) -> std::process::Output {
        sh(&format!("docker exec {} /bin/wharf {args}", self.name(host)))
    }
}

fn ip(last: u8) -> String {
    format!("{SUBNET}.{last}")
}

fn get_json(ip: &str, path: &str) -> Option<Value> {
    curl(&format!("http://{ip}:8500{path}")).and_then(|b| serde_json::from_str(&b).ok())
}

/// The nodes with a passing `web` instance, as the agent at `ip` sees them.
fn passing_web(ip: &str) -> Option<BTreeSet<String>> {
    let list = get_json(ip, "/v1/health/service/web?passing&stale")?;
    Some(list.as_array()?.iter().filter_map(|e| e["Node"]["Node"].as_str().map(String::from)).collect())
}

fn member_statuses(ip: &str) -> Option<Vec<(String, i64)>> {
    let list = get_json(ip, "/v1/agent/members")?;
    let mut out: Vec<(String, i64)> = list
        .as_array()?
        .iter()
        .filter_map(|m| Some((m["Name"].as_str()?.to_string(), m["Status"].as_i64()?)))
        .collect();
    out.sort();
    Some(out)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The web containers that answered the front door at `ip` in `n` requests.
fn served_by(ip: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .filter_map(|_| curl(&format!("http://{ip}/")))
        .filter_map(|b| b.split_whitespace().nth(2).map(String::from))
        .collect()
}

/// The A records `dig` gets for `web.service.consul` from the agent at `ip`.
fn dns_web(ip: &str) -> BTreeSet<String> {
    let out = ok(&format!("dig @{ip} -p 8600 web.service.consul +short +time=1 +tries=1"));
    out.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

fn leader(ip: &str) -> Option<String> {
    let l = curl(&format!("http://{ip}:8500/v1/status/leader"))?;
    let l = l.trim().trim_matches('"').to_string();
    (!l.is_empty()).then_some(l)
}

#[test]
fn seed_002_cluster_notices_kills_leaves_leader_loss_and_partitions() {
    let _serial = crate::serial();
    images();
    let tag = std::process::id().to_string();
    let mut hosts = crate::Net::create("cluster", tag, SUBNET);
    let servers = [("consul1", 11), ("consul2", 12), ("consul3", 13)];
    let clients = [("client1", 21), ("client2", 22)];
    let agent = "wharf:latest agent -data-dir=/data -client=0.0.0.0";
    hosts.run("consul1", &ip(11), &format!("{agent} -server -bootstrap-expect=3 -node=consul1"));
    for (name, last) in &servers[1..] {
        hosts.run(name, &ip(*last), &format!("{agent} -server -retry-join=consul1 -node={name}"));
    }
    for (name, last) in &clients {
        hosts.run(name, &ip(*last), &format!("{agent} -retry-join=consul1 -node={name}"));
    }
    hosts.run("weba", &ip(31), "wharf-demo-web:latest");
    hosts.run("webb", &ip(32), "wharf-demo-web:latest");
    let all: Vec<(&str, u8)> = servers.iter().chain(clients.iter()).copied().collect();
    let five_alive: Vec<(String, i64)> = {
        let mut v: Vec<(String, i64)> = all.iter().map(|(n, _)| (n.to_string(), 1)).collect();
        v.sort();
        v
    };
    for (name, last) in &all {
        wait_for(
            &format!("five alive members as {name} sees them"),
            Duration::from_secs(60),
            || member_statuses(&ip(*last)).as_ref() == Some(&five_alive),
            || hosts.logs(),
        );
    }
    let peers = curl(&format!("http://{}:8500/v1/status/peers", ip(21))).unwrap_or_default();
    assert!(servers.iter().all(|(_, l)| peers.contains(&format!("{}:8300", ip(*l)))), "{peers}");

    // A web backend on each client, and the front door on client1 balancing over both.
    for ((_, last), (web, addr)) in clients.iter().zip([("weba", 31), ("webb", 32)]) {
        let body = format!(
            r#"{{"Name": "web", "ID": "{web}", "Address": "{}", "Port": 8080, "Tags": ["urlprefix-/"]}}"#,
            ip(addr)
        );
        ok(&format!("curl -sf -X PUT -d '{body}' http://{}:8500/v1/agent/service/register", ip(*last)));
    }
    let both = set(&["client1", "client2"]);
    for (name, last) in &all {
        wait_for(
            &format!("both web instances passing on {name}"),
            Duration::from_secs(20),
            || passing_web(&ip(*last)) == Some(both.clone()),
            || hosts.logs(),
        );
    }
    wait_for(
        "client1's front door reaching both backends",
        Duration::from_secs(20),
        || served_by(&ip(21), 12) == set(&["weba", "webb"]),
        || hosts.logs(),
    );

    // docker kill of client2: within 5 s it is failed everywhere, its instance is out of
    // every passing set, client1's DNS answer and client1's front door.
    ok(&format!("docker kill {}", hosts.name("client2")));
    let killed = Instant::now();
    let only_a = set(&["client1"]);
    let others: Vec<(&str, u8)> = all.iter().filter(|(n, _)| *n != "client2").copied().collect();
    wait_for(
        "client2 failed and out of every pool, DNS answer and the front door",
        Duration::from_secs(5),
        || {
            others.iter().all(|(_, l)| {
                passing_web(&ip(*l)) == Some(only_a.clone())
                    && member_statuses(&ip(*l)).is_some_and(|m| m.contains(&("client2".to_string(), 4)))
            }) && dns_web(&ip(21)) == set(&[&ip(31)])
                && served_by(&ip(21), 6) == set(&["weba"])
        },
        || {
            let views: Vec<String> = others
                .iter()
                .map(|(n, l)| {
                    format!("{n}: passing {:?}, members {:?}", passing_web(&ip(*l)), member_statuses(&ip(*l)))
                })
                .collect();
            format!(
                "{}\nclient1 DNS {:?}, front door {:?}\n{}",
                views.join("\n"),
                dns_web(&ip(21)),
                served_by(&ip(21), 6),
                hosts.logs()
            )
        },
    );
    println!("client2 killed: failed and out of every pool, DNS and the front door after {:?}", killed.elapsed());

    ok(&format!("docker start {}", hosts.name("client2")));
    for (name, last) in &all {
        wait_for(
            &format!("client2 back on {name}"),
            Duration::from_secs(30),
            || passing_web(&ip(*last)) == Some(both.clone()),
            || hosts.logs(),
        );
    }

    // The leader killed: the others elect a new one and take writes; the old one, started
    // again, follows it.
    let old = leader(&ip(21)).expect("a leader");
    let (old_name, old_last) =
        *servers.iter().find(|(_, l)| old == format!("{}:8300", ip(*l))).expect("the leader is a server");
    ok(&format!("curl -sf -X PUT -d before http://{}:8500/v1/kv/failover/before", ip(21)));
    ok(&format!("docker kill {}", hosts.name(old_name)));
    let killed = Instant::now();
    wait_for(
        "a write through client1 after the leader's death",
        Duration::from_secs(20),
        || {
            sh(&format!("curl -sf --max-time 3 -X PUT -d after http://{}:8500/v1/kv/failover/after", ip(21)))
                .status
                .success()
        },
        || hosts.logs(),
    );
    println!("leader {old_name} killed: first acknowledged write after {:?}", killed.elapsed());
    let new = leader(&ip(21)).expect("a new leader");
    assert_ne!(new, old);
    ok(&format!("docker start {}", hosts.name(old_name)));
    wait_for(
        &format!("{old_name} back as a follower of {new} with every write"),
        Duration::from_secs(30),
        || {
            leader(&ip(old_last)).as_deref() == Some(new.as_str())
                && curl(&format!("http://{}:8500/v1/kv/failover/after?stale", ip(old_last))).is_some()
        },
        || hosts.logs(),
    );

    partition_a_follower(&hosts, &servers, &all);

    // `wharf leave` on client1: its node and services are gone within 2 s.
    let out = hosts.exec("client1", "leave");
    assert!(out.status.success(), "{out:?}");
    let left = Instant::now();
    wait_for(
        "client1's node gone from the catalog",
        Duration::from_secs(2),
        || get_json(&ip(11), "/v1/catalog/node/client1") == Some(Value::Null),
        || hosts.logs(),
    );
    println!("client1 left: its node gone from the catalog after {:?}", left.elapsed());
    assert_eq!(passing_web(&ip(11)), Some(set(&["client2"])));
}

/// A follower cut off from the network refuses writes with a clear error and serves stale
/// reads; the majority goes on; after healing every agent holds the same state.
fn partition_a_follower(hosts: &crate::Net, servers: &[(&str, u8)], all: &[(&str, u8)]) {
    let lead = leader(&ip(21)).expect("a leader");
    let (cut, cut_last) = *servers.iter().find(|(_, l)| lead != format!("{}:8300", ip(*l))).expect("a follower");
    ok(&format!("docker network disconnect {} {}", hosts.network, hosts.name(cut)));
    let started = Instant::now();
    let out = hosts.exec(cut, "kv put part/minority x");
    let refused_after = started.elapsed();
    assert!(!out.status.success(), "the cut-off follower took a write: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No cluster leader"), "{err}");
    assert!(refused_after < Duration::from_secs(15), "refused only after {refused_after:?}");
    println!("cut-off follower {cut} refused a write after {refused_after:?}: {}", err.trim());
    ok(&format!("curl -sf -X PUT -d y http://{}:8500/v1/kv/part/majority", ip(21)));
    let stale = hosts.exec(cut, "kv get part/majority");
    assert!(!stale.status.success(), "the minority cannot have the majority's write yet: {stale:?}");
    let stale = hosts.exec(cut, "kv get failover/before");
    assert_eq!(String::from_utf8_lossy(&stale.stdout).trim(), "before", "the minority serves stale reads: {stale:?}");

    ok(&format!("docker network connect --ip {} --alias {cut} {} {}", ip(cut_last), hosts.network, hosts.name(cut)));
    wait_for(
        &format!("{cut} caught up after healing"),
        Duration::from_secs(30),
        || curl(&format!("http://{}:8500/v1/kv/part/majority?stale", ip(cut_last))).is_some(),
        || hosts.logs(),
    );
    let kv = |l: u8| curl(&format!("http://{}:8500/v1/kv/?recurse&stale", ip(l)));
    let nodes = |l: u8| curl(&format!("http://{}:8500/v1/catalog/nodes?stale", ip(l)));
    wait_for(
        "every agent holds the same KV and nodes",
        Duration::from_secs(30),
        || {
            let (k0, n0) = (kv(11), nodes(11));
            k0.is_some() && all.iter().all(|(_, l)| kv(*l) == k0 && nodes(*l) == n0)
        },
        || hosts.logs(),
    );
    assert!(kv(11).is_some_and(|k| !k.contains("part/minority")), "the refused write was not applied");
}
