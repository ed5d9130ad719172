//! A benchmark, not a test (`#[ignore]`; `cargo test --release --test containers
//! bench_durable -- --ignored --nocapture`): durable KV writes per second and p99 latency at
//! 1, 16 and 64 concurrent clients on a three-server wharf cluster and on a three-member
//! etcd 3.4 cluster (Debian's etcd-server, in an image built here the way wharf's is), on
//! the same kind of containers and private network, in the same run. Every client keeps
//! one HTTP connection and writes through a random member: wharf's `PUT /v1/kv/...`,
//! etcd's JSON gateway `POST /v3/kv/put`. Both fsync every commit.

use std::time::{Duration, Instant};

use crate::{images, ok, wait_for};

const SUBNET: &str = "172.30.81";
const SECONDS: u64 = 10;

fn ip(last: u8) -> String {
    format!("{SUBNET}.{last}")
}

/// An etcd image FROM scratch: Debian's binary and the libraries it links.
fn etcd_image() {
    ok(
        "command -v etcd >/dev/null || { echo 'etcd-server is not installed: apt-get install etcd-server' >&2; exit 1; }",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let script = format!(
        "set -e; mkdir -p {r}/bin {r}/data; cp \"$(command -v etcd)\" {r}/bin/etcd; \
         ldd \"$(command -v etcd)\" | grep -o '/[^ ]*' | while read -r lib; do mkdir -p {r}$(dirname $lib); cp -L $lib {r}$lib; done; \
         printf 'FROM scratch\\nCOPY root/ /\\nENTRYPOINT [\"/bin/etcd\"]\\n' > {d}/Dockerfile; \
         docker build -q -t wharf-bench-etcd:latest {d} >/dev/null",
        r = root.display(),
        d = dir.path().display()
    );
    ok(&script);
}

#[derive(Clone, Copy)]
enum Store {
    Wharf,
    Etcd,
}

async fn put(client: &reqwest::Client, store: Store, node: &str, key: &str, value: &str) -> bool {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let req = match store {
        Store::Wharf => client.put(format!("http://{node}:8500/v1/kv/{key}")).body(value.to_string()),
        Store::Etcd => client.post(format!("http://{node}:2379/v3/kv/put")).body(format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(key),
            b64(value)
        )),
    };
    matches!(req.send().await, Ok(r) if r.status().is_success())
}

/// Writes for `SECONDS` with `clients` concurrent clients: (writes/s, p50, p99).
async fn load(store: Store, nodes: &[String], clients: usize) -> (f64, Duration, Duration) {
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let nodes = nodes.to_vec();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let node = &nodes[c % nodes.len()];
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    let t = Instant::now();
                    if put(&client, store, node, &format!("bench/{c}/{}", i % 1000), &format!("v{i}")).await {
                        lat.push(t.elapsed());
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort();
    let pick = |p: f64| all.get(((all.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default();
    (all.len() as f64 / SECONDS as f64, pick(0.5), pick(0.99))
}

#[test]
#[ignore = "a benchmark: run it by name with --ignored"]
fn bench_durable_writes_against_etcd() {
    let _serial = crate::serial();
    images();
    etcd_image();
    let tag = format!("w{}", std::process::id());
    let mut hosts = crate::Net::create("benchw", tag.clone(), SUBNET);
    let wharf: Vec<String> = (11..=13).map(ip).collect();
    let etcd: Vec<String> = (21..=23).map(ip).collect();
    for (i, addr) in wharf.iter().enumerate() {
        let role = if i == 0 { "-bootstrap-expect=3".to_string() } else { "-retry-join=w1".to_string() };
        let name = format!("w{}_{tag}", i + 1);
        ok(&format!(
            "docker run -d -h w{n} --name {name} --network {net} --network-alias w{n} --ip {addr} wharf:latest \
             agent -server -data-dir=/data -client=0.0.0.0 -node=w{n} -no-proxy -no-dns {role}",
            n = i + 1,
            net = hosts.network
        ));
        hosts.names.push(name);
    }
    let cluster: Vec<String> = etcd.iter().enumerate().map(|(i, a)| format!("e{}=http://{a}:2380", i + 1)).collect();
    for (i, addr) in etcd.iter().enumerate() {
        let name = format!("e{}_{tag}", i + 1);
        ok(&format!(
            "docker run -d --name {name} --network {net} --ip {addr} wharf-bench-etcd:latest --name e{n} --data-dir /data \
             --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://{addr}:2379 \
             --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls http://{addr}:2380 \
             --initial-cluster {c} --initial-cluster-state new",
            n = i + 1,
            net = hosts.network,
            c = cluster.join(",")
        ));
        hosts.names.push(name);
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (store, nodes) in [(Store::Wharf, &wharf), (Store::Etcd, &etcd)] {
        wait_for(
            "the cluster takes writes",
            Duration::from_secs(60),
            || rt.block_on(async { put(&reqwest::Client::new(), store, &nodes[1], "ready", "1").await }),
            String::new,
        );
    }
    for clients in [1, 16, 64] {
        for (name, store, nodes) in [("wharf", Store::Wharf, &wharf), ("etcd 3.4", Store::Etcd, &etcd)] {
            let (rate, p50, p99) = rt.block_on(load(store, nodes, clients));
            println!("{name:9} {clients:3} clients: {rate:9.0} writes/s  p50 {p50:?}  p99 {p99:?}");
        }
    }
}
