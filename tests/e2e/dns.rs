//! The DNS interface (issue 7) against the real binary: every name form, health filtering,
//! truncation with TC over UDP and the full answer over TCP, EDNS, TTLs, the A-record limit,
//! case-insensitivity, NXDOMAIN/NODATA with the SOA, REFUSED, recursion to an upstream (a
//! second agent on loopback), and malformed packets. Queries are made with `dig` (dnsutils,
//! installed by scripts/test) and with hickory's client.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_net::client::Client;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::DnsHandle;
use hickory_proto::op::{DnsRequestOptions, DnsResponse, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::{Value, json};

use crate::harness::{Agent, Api, free_port};

const TIMEOUT: Duration = Duration::from_secs(10);

/// How a query travels.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// UDP without EDNS: answers are limited to 512 bytes.
    Udp,
    /// UDP with an EDNS buffer of this size.
    UdpEdns(u16),
    Tcp,
}

/// Asks with hickory's client (hickory-net).
async fn ask(addr: SocketAddr, name: &str, qtype: RecordType, via: Via) -> DnsResponse {
    let query = Query::query(Name::from_ascii(name).expect("query name"), qtype);
    let mut options = DnsRequestOptions::default();
    options.recursion_desired = true;
    options.use_edns = matches!(via, Via::UdpEdns(_));
    if let Via::UdpEdns(size) = via {
        options.edns_payload_len = size;
    }
    let answer = match via {
        Via::Tcp => {
            // The provider owns the connection's background task: keep it until the answer.
            let provider = TokioRuntimeProvider::default();
            let exchange = TcpClientStream::exchange(addr, None, TIMEOUT, None, provider.clone())
                .await
                .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
            let answer = exchange.lookup(query, options).next().await;
            drop(provider);
            answer
        }
        Via::Udp | Via::UdpEdns(_) => {
            let stream =
                UdpClientStream::builder(addr, TokioRuntimeProvider::default()).with_timeout(Some(TIMEOUT)).build();
            let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
            tokio::spawn(background);
            client.lookup(query, options).next().await
        }
    };
    answer
        .unwrap_or_else(|| panic!("no answer to {name} {qtype} via {via:?}"))
        .unwrap_or_else(|e| panic!("{name} {qtype} via {via:?}: {e}"))
}

/// Runs `dig @127.0.0.1 -p PORT ARGS...`. dig missing is a failure, not a skip.
fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=5", "+tries=1"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run dig ({e}): install dnsutils (`apt-get install dnsutils`; scripts/test does this)")
        });
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "dig {args:?} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// `dig +short` lines, sorted.
fn dig_short(port: u16, name: &str, qtype: &str) -> Vec<String> {
    let mut lines: Vec<String> =
        dig(port, &["+short", name, qtype]).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    lines.sort();
    lines
}

/// dig's columns, aligned with tabs or spaces, as single spaces.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `status:` of a dig answer.
fn dig_status(text: &str) -> String {
    let at = text.find("status: ").unwrap_or_else(|| panic!("no status in {text}"));
    text[at + 8..].split(',').next().unwrap_or_default().to_string()
}

fn dig_flags(text: &str) -> BTreeSet<String> {
    let at = text.find("flags: ").unwrap_or_else(|| panic!("no flags in {text}"));
    text[at + 7..].split(';').next().unwrap_or_default().split_whitespace().map(str::to_string).collect()
}

struct DnsAgent {
    agent: Agent,
    api: Api,
    port: u16,
}

impl DnsAgent {
    async fn start(extra: &[&str]) -> DnsAgent {
        let port = free_port();
        let mut args = vec!["--dns-port".to_string(), port.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = Agent::dev_with(&refs).await;
        let api = Api::new(&agent);
        DnsAgent { agent, api, port }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn ask(&self, name: &str, qtype: RecordType, via: Via) -> DnsResponse {
        ask(self.addr(), name, qtype, via).await
    }

    /// Registers `service` on `node` through `/v1/catalog/register`, with one service check
    /// in `status` when given.
    async fn register(&self, node: &str, address: &str, meta: Value, service: Value, status: Option<&str>) {
        let mut body = json!({"Node": node, "Address": address, "NodeMeta": meta, "Service": service});
        if let Some(status) = status {
            let id = service["ID"].as_str().expect("service ID");
            body["Check"] =
                json!({"CheckID": format!("check-{id}"), "Name": "health", "Status": status, "ServiceID": id});
        }
        self.api.put_ok("/v1/catalog/register", body.to_string()).await;
    }
}

fn values(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

fn of_type(records: &[Record], t: RecordType) -> Vec<&Record> {
    records.iter().filter(|r| r.record_type() == t).collect()
}

/// Four instances of `web`: passing on an IPv4 node, warning with its own address,
/// critical, and on an IPv6 node without checks.
async fn web_catalog(d: &DnsAgent) {
    d.register(
        "node-a",
        "10.1.0.1",
        json!({"rack": "r1", "env": "prod"}),
        json!({"ID": "web-a", "Service": "web", "Port": 8080, "Tags": ["v1", "Primary"], "Weights": {"Passing": 5, "Warning": 1}}),
        Some("passing"),
    )
    .await;
    d.register(
        "node-b",
        "10.1.0.2",
        json!({}),
        json!({"ID": "web-b", "Service": "web", "Address": "10.2.0.2", "Port": 8081, "Tags": ["v2"], "Weights": {"Passing": 7, "Warning": 2}}),
        Some("warning"),
    )
    .await;
    d.register(
        "node-c",
        "10.1.0.3",
        json!({}),
        json!({"ID": "web-c", "Service": "web", "Port": 8082}),
        Some("critical"),
    )
    .await;
    d.register("node-d", "fd00::4", json!({}), json!({"ID": "web-d", "Service": "web", "Port": 8083}), None).await;
}

#[tokio::test]
async fn every_name_form_with_dig_and_hickory() {
    let d = DnsAgent::start(&[]).await;
    web_catalog(&d).await;
    let p = d.port;

    // NAME.service[.DC].consul, A and AAAA: the service address, else the node address;
    // critical web-c is left out, warning web-b stays.
    assert_eq!(dig_short(p, "web.service.consul", "A"), ["10.1.0.1", "10.2.0.2"]);
    assert_eq!(dig_short(p, "web.service.dc1.consul", "A"), ["10.1.0.1", "10.2.0.2"]);
    assert_eq!(dig_short(p, "web.service.consul", "AAAA"), ["fd00::4"]);
    let a = d.ask("web.service.consul.", RecordType::A, Via::Udp).await;
    assert_eq!(values(&a.answers), ["10.1.0.1", "10.2.0.2"]);
    assert!(a.metadata.authoritative, "answers are authoritative");
    assert!(!a.metadata.recursion_available, "no recursors configured");
    assert!(a.answers.iter().all(|r| r.ttl == 0), "TTL 0 by default");

    // SRV: priority 1, weight from Weights (Warning for the warning instance), the port,
    // the target with its address in the additional section.
    let srv = d.ask("web.service.consul.", RecordType::SRV, Via::Udp).await;
    assert_eq!(
        values(&srv.answers),
        ["1 1 8083 node-d.node.dc1.consul.", "1 2 8081 0a020002.addr.dc1.consul.", "1 5 8080 node-a.node.dc1.consul."]
    );
    let mut extra: Vec<String> =
        srv.additionals.iter().map(|r| format!("{} {} {}", r.name, r.record_type(), r.data)).collect();
    extra.sort();
    assert_eq!(
        extra,
        [
            "0a020002.addr.dc1.consul. A 10.2.0.2",
            "node-a.node.dc1.consul. A 10.1.0.1",
            "node-d.node.dc1.consul. AAAA fd00::4"
        ]
    );
    assert_eq!(
        dig_short(p, "web.service.consul", "SRV"),
        ["1 1 8083 node-d.node.dc1.consul.", "1 2 8081 0a020002.addr.dc1.consul.", "1 5 8080 node-a.node.dc1.consul."]
    );
    let full = dig(p, &["+noall", "+additional", "web.service.consul", "SRV"]);
    assert!(words(&full).contains("node-a.node.dc1.consul. 0 IN A 10.1.0.1"), "{full}");

    // TAG.NAME.service.consul and RFC 2782 (`_tcp` = no tag filter); tags match in any case.
    assert_eq!(dig_short(p, "v1.web.service.consul", "A"), ["10.1.0.1"]);
    assert_eq!(dig_short(p, "primary.web.service.consul", "A"), ["10.1.0.1"]);
    assert_eq!(dig_short(p, "_web._v2.service.consul", "SRV"), ["1 2 8081 0a020002.addr.dc1.consul."]);
    assert_eq!(dig_short(p, "_web._tcp.service.consul", "SRV").len(), 3);
    let rfc = d.ask("_web._tcp.service.dc1.consul.", RecordType::SRV, Via::Tcp).await;
    assert_eq!(rfc.answers.len(), 3);

    // NODE.node[.DC].consul: A, plus TXT from the node meta (in the additional section for
    // A, as answers for TXT).
    assert_eq!(dig_short(p, "node-a.node.consul", "A"), ["10.1.0.1"]);
    assert_eq!(dig_short(p, "node-a.node.dc1.consul", "TXT"), ["\"env=prod\"", "\"rack=r1\""]);
    let node = d.ask("node-a.node.dc1.consul.", RecordType::A, Via::Udp).await;
    assert_eq!(values(&node.answers), ["10.1.0.1"]);
    assert_eq!(of_type(&node.additionals, RecordType::TXT).len(), 2);
    assert_eq!(dig_short(p, "node-d.node.consul", "AAAA"), ["fd00::4"]);
    // HEX.addr.DC.consul, the SRV target of an instance with its own address.
    assert_eq!(dig_short(p, "0a020002.addr.dc1.consul", "A"), ["10.2.0.2"]);

    // Case-insensitive, and the answer echoes the question's spelling.
    let mixed = d.ask("WeB.SeRvIcE.CoNsUl.", RecordType::A, Via::Udp).await;
    assert_eq!(values(&mixed.answers), ["10.1.0.1", "10.2.0.2"]);
    assert!(mixed.answers.iter().all(|r| r.name.eq_case(&Name::from_ascii("WeB.SeRvIcE.CoNsUl.").expect("n"))));
    assert_eq!(dig_short(p, "NODE-A.Node.DC1.CONSUL", "A"), ["10.1.0.1"]);

    // Unknown names: NXDOMAIN with the SOA in the authority section.
    for name in ["nope.service.consul", "nope.node.consul", "web.service.dc2.consul", "what.consul"] {
        let text = dig(p, &[name, "A"]);
        assert_eq!(dig_status(&text), "NXDOMAIN", "{name}: {text}");
        assert!(text.contains("AUTHORITY: 1"), "{text}");
        assert!(words(&text).contains("IN SOA ns.consul. hostmaster.consul."), "{text}");
    }
    let nx = d.ask("nope.service.consul.", RecordType::SRV, Via::Udp).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(of_type(&nx.authorities, RecordType::SOA).len(), 1);

    // A known name asked with another type: NOERROR, no answer, the SOA in the authority.
    for (name, qtype) in [("web.service.consul", "TXT"), ("node-a.node.consul", "AAAA"), ("node-a.node.consul", "MX")] {
        let text = dig(p, &[name, qtype]);
        assert_eq!(dig_status(&text), "NOERROR", "{name} {qtype}: {text}");
        assert!(text.contains("ANSWER: 0"), "{text}");
        assert!(words(&text).contains("IN SOA ns.consul."), "{text}");
    }
    let nodata = d.ask("web.service.consul.", RecordType::TXT, Via::Tcp).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(of_type(&nodata.authorities, RecordType::SOA).len(), 1);

    // Outside the domain without recursors: REFUSED.
    let text = dig(p, &["example.com", "A"]);
    assert_eq!(dig_status(&text), "REFUSED", "{text}");
    assert_eq!(d.ask("example.com.", RecordType::A, Via::Udp).await.metadata.response_code, ResponseCode::Refused);
    let flags = dig_flags(&dig(p, &["web.service.consul", "A"]));
    assert!(flags.contains("aa") && !flags.contains("ra"), "{flags:?}");
}

#[tokio::test]
async fn health_changes_show_at_once_and_only_passing_drops_warning() {
    let d = DnsAgent::start(&[]).await;
    web_catalog(&d).await;
    assert_eq!(dig_short(d.port, "web.service.consul", "A"), ["10.1.0.1", "10.2.0.2"]);
    // web-c turns passing: it is in the very next answer (no cache, no wait on anything).
    d.register(
        "node-c",
        "10.1.0.3",
        json!({}),
        json!({"ID": "web-c", "Service": "web", "Port": 8082}),
        Some("passing"),
    )
    .await;
    assert_eq!(dig_short(d.port, "web.service.consul", "A"), ["10.1.0.1", "10.1.0.3", "10.2.0.2"]);
    // A failing node-level check takes every instance of the node out.
    d.api
        .put_ok(
            "/v1/catalog/register",
            json!({"Node": "node-a", "Address": "10.1.0.1", "Check": {"CheckID": "node-down", "Name": "node", "Status": "critical"}})
                .to_string(),
        )
        .await;
    assert_eq!(dig_short(d.port, "web.service.consul", "A"), ["10.1.0.3", "10.2.0.2"]);
    // All instances critical: the service name does not exist for DNS.
    for (node, addr, id, port) in [("node-b", "10.1.0.2", "web-b", 8081), ("node-c", "10.1.0.3", "web-c", 8082)] {
        d.register(node, addr, json!({}), json!({"ID": id, "Service": "web", "Port": port}), Some("critical")).await;
    }
    d.api.put_ok("/v1/catalog/deregister", json!({"Node": "node-d"}).to_string()).await;
    assert_eq!(dig_status(&dig(d.port, &["web.service.consul", "A"])), "NXDOMAIN");

    let strict = DnsAgent::start(&["--dns-only-passing"]).await;
    web_catalog(&strict).await;
    assert_eq!(dig_short(strict.port, "web.service.consul", "A"), ["10.1.0.1"], "warning web-b is left out");
    let srv = strict.ask("web.service.consul.", RecordType::SRV, Via::Tcp).await;
    assert_eq!(values(&srv.answers), ["1 1 8083 node-d.node.dc1.consul.", "1 5 8080 node-a.node.dc1.consul."]);
}

/// 30 instances of `big`, each on its own node with a long name.
async fn big_catalog(d: &DnsAgent, count: usize) {
    let writes = (0..count).map(|i| async move {
        let (node, addr) =
            (format!("node-with-a-rather-long-name-{i:03}"), format!("10.9.{}.{}", i / 200, i % 200 + 1));
        d.register(
            &node,
            &addr,
            json!({}),
            json!({"ID": format!("big-{i}"), "Service": "big", "Port": 9000 + i}),
            Some("passing"),
        )
        .await
    });
    futures::future::join_all(writes).await;
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let d = DnsAgent::start(&[]).await;
    big_catalog(&d, 30).await;
    let p = d.port;

    // UDP without EDNS: at most 512 bytes, TC set, whole SRV+A pairs kept.
    let udp = d.ask("big.service.consul.", RecordType::SRV, Via::Udp).await;
    assert!(udp.metadata.truncation, "TC must be set");
    assert!(udp.as_buffer().len() <= 512, "{} bytes", udp.as_buffer().len());
    assert!(!udp.answers.is_empty() && udp.answers.len() < 30);
    assert_eq!(udp.additionals.len(), udp.answers.len(), "each kept SRV keeps the A of its target");
    let udp_a = d.ask("big.service.consul.", RecordType::A, Via::Udp).await;
    assert!(udp_a.metadata.truncation && udp_a.as_buffer().len() <= 512);

    // TCP: the full answer.
    let tcp = d.ask("big.service.consul.", RecordType::SRV, Via::Tcp).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 30);
    assert_eq!(tcp.additionals.len(), 30);

    // A larger EDNS buffer: everything fits in one UDP answer.
    let edns = d.ask("big.service.consul.", RecordType::SRV, Via::UdpEdns(4096)).await;
    assert!(!edns.metadata.truncation);
    assert_eq!(edns.answers.len(), 30);
    assert!(edns.as_buffer().len() > 512 && edns.as_buffer().len() <= 4096);

    // dig: the truncated UDP answer as is, then dig's own retry over TCP.
    let truncated = dig(p, &["+noedns", "+ignore", "big.service.consul", "SRV"]);
    assert!(dig_flags(&truncated).contains("tc"), "{truncated}");
    let size: usize = truncated
        .split("MSG SIZE  rcvd: ")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no size in {truncated}"));
    assert!(size <= 512, "{size}");
    let retried = dig(p, &["+noedns", "big.service.consul", "SRV"]);
    assert!(retried.contains("Truncated, retrying in TCP mode"), "{retried}");
    assert!(retried.contains("ANSWER: 30,"), "{retried}");
    assert_eq!(dig_short(p, "big.service.consul", "A").len(), 30, "dig +short retries over TCP too");
    let bufsize = dig(p, &["+bufsize=4096", "+ignore", "big.service.consul", "SRV"]);
    assert!(!dig_flags(&bufsize).contains("tc") && bufsize.contains("ANSWER: 30,"), "{bufsize}");

    // Shuffled per query.
    let mut firsts = BTreeSet::new();
    for _ in 0..20 {
        let r = d.ask("big.service.consul.", RecordType::A, Via::UdpEdns(4096)).await;
        firsts.insert(r.answers[0].data.to_string());
    }
    assert!(firsts.len() > 1, "the first answer never changed in 20 queries");
}

#[tokio::test]
async fn a_record_limit_and_ttls() {
    let d = DnsAgent::start(&[
        "--dns-a-record-limit",
        "3",
        "--dns-node-ttl",
        "30s",
        "--dns-service-ttl",
        "big=10s",
        "--dns-service-ttl",
        "api-*=20s",
        "--dns-service-ttl",
        "*=5s",
    ])
    .await;
    big_catalog(&d, 10).await;
    d.register("node-x", "10.3.0.1", json!({"k": "v"}), json!({"ID": "api-v1", "Service": "api-v1", "Port": 81}), None)
        .await;
    d.register("node-x", "10.3.0.1", json!({"k": "v"}), json!({"ID": "db", "Service": "db", "Port": 5432}), None).await;

    // The limit holds over UDP and TCP, without TC; instances rotate through it.
    let mut seen = BTreeSet::new();
    for via in [Via::Udp, Via::Tcp, Via::UdpEdns(4096)] {
        for _ in 0..10 {
            let r = d.ask("big.service.consul.", RecordType::A, via).await;
            assert_eq!(r.answers.len(), 3, "{via:?}");
            assert!(!r.metadata.truncation);
            seen.extend(values(&r.answers));
        }
    }
    assert!(seen.len() > 3, "shuffled before the limit: {seen:?}");
    assert_eq!(dig_short(d.port, "big.service.consul", "A").len(), 3);
    assert_eq!(d.ask("big.service.consul.", RecordType::SRV, Via::Tcp).await.answers.len(), 10, "SRV has no limit");

    // TTLs: exact service name, prefix wildcard, `*` default, node TTL.
    let ttls = |r: &DnsResponse| r.answers.iter().map(|x| x.ttl).collect::<BTreeSet<u32>>();
    assert_eq!(ttls(&d.ask("big.service.consul.", RecordType::A, Via::Udp).await), BTreeSet::from([10]));
    let srv = d.ask("big.service.consul.", RecordType::SRV, Via::Tcp).await;
    assert!(srv.answers.iter().chain(&srv.additionals).all(|r| r.ttl == 10));
    assert_eq!(ttls(&d.ask("api-v1.service.consul.", RecordType::SRV, Via::Udp).await), BTreeSet::from([20]));
    assert_eq!(ttls(&d.ask("db.service.consul.", RecordType::A, Via::Udp).await), BTreeSet::from([5]));
    assert_eq!(ttls(&d.ask("node-x.node.consul.", RecordType::A, Via::Udp).await), BTreeSet::from([30]));
    assert_eq!(ttls(&d.ask("node-x.node.consul.", RecordType::TXT, Via::Udp).await), BTreeSet::from([30]));
    let text = dig(d.port, &["+noall", "+answer", "db.service.consul", "A"]);
    assert_eq!(words(&text), "db.service.consul. 5 IN A 10.3.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_domain_go_to_the_recursors() {
    // The upstream is a second agent answering another domain, all on loopback.
    let upstream = DnsAgent::start(&["--domain", "upstream.test"]).await;
    upstream
        .register("far", "10.7.0.1", json!({}), json!({"ID": "ext", "Service": "ext", "Port": 7000}), Some("passing"))
        .await;
    let upstream_ref = &upstream;
    let writes = (0..100).map(|i| async move {
        let (node, addr) = (format!("upstream-node-with-a-long-name-{i:03}"), format!("10.8.0.{}", i + 1));
        upstream_ref
            .register(
                &node,
                &addr,
                json!({}),
                json!({"ID": format!("huge-{i}"), "Service": "huge", "Port": 9000 + i}),
                None,
            )
            .await
    });
    futures::future::join_all(writes).await;

    // A recursor that never answers comes first: it is given up after its timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a silent recursor");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    let up_addr = format!("127.0.0.1:{}", upstream.port);
    let d = DnsAgent::start(&["--recursor", &silent_addr, "--recursor", &up_addr]).await;
    d.register("here", "10.6.0.1", json!({}), json!({"ID": "local", "Service": "local", "Port": 1}), None).await;

    let started = Instant::now();
    let r = d.ask("ext.service.upstream.test.", RecordType::A, Via::Udp).await;
    assert_eq!(values(&r.answers), ["10.7.0.1"]);
    assert!(started.elapsed() >= Duration::from_secs(2), "the silent recursor was asked first");
    assert!(r.metadata.recursion_available, "RA is set when recursors are configured");
    assert!(!r.metadata.authoritative, "a forwarded answer is not ours");
    assert_eq!(dig_short(d.port, "ext.service.upstream.test", "SRV"), ["1 1 7000 far.node.dc1.upstream.test."]);

    // The upstream's NXDOMAIN and SOA are relayed.
    let nx = dig(d.port, &["nope.service.upstream.test", "A"]);
    assert_eq!(dig_status(&nx), "NXDOMAIN", "{nx}");
    assert!(nx.contains("ns.upstream.test."), "{nx}");

    // A forwarded answer too big for UDP: the agent asks the upstream again over TCP.
    let huge = d.ask("huge.service.upstream.test.", RecordType::SRV, Via::Tcp).await;
    assert_eq!(huge.answers.len(), 100);
    assert!(!huge.metadata.truncation);
    let huge_udp = d.ask("huge.service.upstream.test.", RecordType::SRV, Via::Udp).await;
    assert!(huge_udp.metadata.truncation && huge_udp.as_buffer().len() <= 512);

    // Its own domain is still answered locally.
    let local = d.ask("local.service.consul.", RecordType::A, Via::Udp).await;
    assert!(local.metadata.authoritative);
    assert_eq!(values(&local.answers), ["10.6.0.1"]);
    drop(silent);
}

#[tokio::test]
async fn malformed_packets_get_formerr_and_the_server_keeps_answering() {
    let d = DnsAgent::start(&[]).await;
    d.register("n", "10.5.0.1", json!({}), json!({"ID": "web", "Service": "web", "Port": 80}), None).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.connect(d.addr()).await.expect("connect");
    let header = |id: u16| {
        let mut h = id.to_be_bytes().to_vec();
        h.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        h
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("compression loop", [header(0x1111), vec![0xc0, 0x0c, 0, 1, 0, 1]].concat()),
        ("label longer than 63 bytes", [header(0x2222), vec![64], vec![b'a'; 64], vec![0, 0, 1, 0, 1]].concat()),
        ("name past the end", [header(0x3333), vec![10, b'a', b'b']].concat()),
        ("forward pointer", [header(0x4444), vec![0xc0, 0x30, 0, 1, 0, 1]].concat()),
    ];
    let mut buf = vec![0u8; 4096];
    for (what, packet) in &cases {
        socket.send(packet).await.expect("send");
        let n = tokio::time::timeout(TIMEOUT, socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer"))
            .expect("recv");
        assert!(n >= 12, "{what}");
        assert_eq!(&buf[..2], &packet[..2], "{what}: the id is echoed");
        assert_eq!(buf[3] & 0x0f, 1, "{what}: FORMERR");
    }
    // Short garbage and random bytes: dropped or answered, never a crash.
    for packet in [vec![], vec![1, 2, 3], (0..=255u8).collect::<Vec<u8>>(), vec![0xff; 600]] {
        socket.send(&packet).await.expect("send");
    }
    assert_eq!(dig_short(d.port, "web.service.consul", "A"), ["10.5.0.1"]);
    let r = d.ask("web.service.consul.", RecordType::A, Via::Udp).await;
    assert!(matches!(r.answers[0].data, RData::A(_)));
    assert!(d.agent.log_text().contains("DNS listening"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_flood_does_not_starve_the_http_api() {
    let d = DnsAgent::start(&[]).await;
    big_catalog(&d, 30).await;
    let target = d.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let query = {
        let mut m = hickory_proto::op::Message::query();
        m.add_query(Query::query(Name::from_ascii("big.service.consul.").expect("n"), RecordType::SRV));
        m.to_vec().expect("encode")
    };
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, query) = (stop.clone(), query.clone());
            tokio::spawn(async move {
                let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = s.send_to(&query, target).await;
                    sent += 1;
                    if sent.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                sent
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let t = Instant::now();
        let r = d.api.get("/v1/status/leader").await;
        assert_eq!(r.status, 200);
        slowest = slowest.max(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for f in flooders {
        sent += f.await.expect("flooder");
    }
    assert!(sent > 1000, "the flood was too small to mean anything: {sent}");
    assert!(slowest < Duration::from_secs(2), "the HTTP API took {slowest:?} during a flood of {sent} queries");
    // DNS itself still answers afterwards.
    assert_eq!(d.ask("big.service.consul.", RecordType::SRV, Via::Tcp).await.answers.len(), 30);
}

#[tokio::test]
async fn a_busy_dns_port_fails_the_start_loudly() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut agent = Agent::new(tmp.path().join("data"), "node-1", vec!["--dns-port".into(), port.to_string()], None);
    agent.start(&["--dev"]);
    assert!(agent.wait_exit(Duration::from_secs(20)).await, "the agent must exit when its DNS port is taken");
    let log = agent.log_text();
    assert!(log.contains(&format!("127.0.0.1:{port}")) && log.contains("--dns-port"), "{log}");

    let bad = DnsAgentFlags::exits_with(&["--dns-service-ttl", "web"]).await;
    assert!(bad.contains("--dns-service-ttl") && bad.contains("NAME=DURATION"), "{bad}");
    let bad = DnsAgentFlags::exits_with(&["--recursor", "dns.example"]).await;
    assert!(bad.contains("--recursor"), "{bad}");
    drop(taken);
}

/// Starting an agent with bad DNS flags.
struct DnsAgentFlags;

impl DnsAgentFlags {
    /// Starts an agent with `flags`, waits for it to exit, returns its log.
    async fn exits_with(flags: &[&str]) -> String {
        let tmp = tempfile::tempdir().expect("tempdir");
        let extra = flags.iter().map(|s| s.to_string()).collect();
        let mut agent = Agent::new(tmp.path().join("data"), "node-1", extra, None);
        agent.start(&["--dev"]);
        assert!(agent.wait_exit(Duration::from_secs(20)).await, "{flags:?} must stop the start");
        agent.log_text()
    }
}
