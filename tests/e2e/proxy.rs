//! The proxy end to end: the real binary, real backends on loopback. Pools follow the
//! catalog within 50 ms of an acknowledged write, every routing form and balancing mode,
//! headers, retries and ejection, WebSockets, and request-smuggling shapes refused.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Agent, Api, Backend, backend_service, free_port, wait_for};

pub struct ProxyAgent {
    pub _agent: Agent,
    pub api: Api,
    pub proxy: String,
    pub client: reqwest::Client,
}

impl ProxyAgent {
    pub async fn start(extra: &[&str]) -> ProxyAgent {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args: Vec<&str> = vec!["--proxy-addr", &addr, "--proxy-threads", "2"];
        args.extend_from_slice(extra);
        let agent = Agent::dev_with(&args).await;
        let api = Api::new(&agent);
        ProxyAgent { _agent: agent, api, proxy: format!("http://{addr}"), client: reqwest::Client::new() }
    }

    /// One request through the proxy: (status, body).
    pub async fn get(&self, host: &str, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.proxy))
            .header("host", host)
            .send()
            .await
            .unwrap_or_else(|e| panic!("proxy request failed: {e}"));
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// Which backends answer `n` requests, by name.
    pub async fn spread(&self, host: &str, path: &str, n: usize) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for _ in 0..n {
            let (status, body) = self.get(host, path).await;
            assert_eq!(status, 200, "{body}");
            let name = body.split_whitespace().next().unwrap_or("").to_string();
            *m.entry(name).or_default() += 1;
        }
        m
    }
}

fn names(m: &HashMap<String, usize>) -> Vec<String> {
    let mut v: Vec<String> = m.keys().cloned().collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_follow_the_catalog_within_50ms() {
    let p = ProxyAgent::start(&[]).await;
    let backends = [Backend::start("b1").await, Backend::start("b2").await, Backend::start("b3").await];
    for b in &backends {
        let body = backend_service(
            b,
            "web",
            json!({"Check": {"CheckID": format!("ttl-{}", b.name), "TTL": "10m", "Status": "passing"}}),
        );
        p.api.put_ok("/v1/agent/service/register", body).await;
    }
    let seen = p.spread("web.localhost", "/", 30).await;
    assert_eq!(names(&seen), ["b1", "b2", "b3"], "all three receive requests");
    assert!(seen.values().all(|n| *n == 10), "round robin is even: {seen:?}");

    // Deregistering one: gone from rotation within 50 ms of the acknowledged write.
    p.api.put_ok(&format!("/v1/agent/service/deregister/web-{}", backends[0].port()), "").await;
    let acked = Instant::now();
    tokio::time::sleep(Duration::from_millis(50).saturating_sub(acked.elapsed())).await;
    let seen = p.spread("web.localhost", "/", 20).await;
    assert_eq!(names(&seen), ["b2", "b3"], "deregistered instance still served");

    // A failing check takes an instance out too, and passing brings it back.
    p.api.put_ok("/v1/agent/check/fail/ttl-b2", "").await;
    let acked = Instant::now();
    tokio::time::sleep(Duration::from_millis(50).saturating_sub(acked.elapsed())).await;
    assert_eq!(names(&p.spread("web.localhost", "/", 10).await), ["b3"]);
    p.api.put_ok("/v1/agent/check/pass/ttl-b2", "").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(names(&p.spread("web.localhost", "/", 10).await), ["b2", "b3"]);

    // All gone: 503 naming the service, never a silent fallback.
    p.api.put_ok("/v1/agent/check/fail/ttl-b2", "").await;
    p.api.put_ok("/v1/agent/check/fail/ttl-b3", "").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, body) = p.get("web.localhost", "/").await;
    assert_eq!(status, 503);
    assert!(body.contains("\"web\"") && body.contains("no healthy instance"), "{body}");

    // Re-registered: serves again.
    p.api.put_ok("/v1/agent/service/register", backend_service(&backends[0], "web", json!({}))).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(names(&p.spread("web.localhost", "/", 5).await), ["b1"]);

    // The route-table metrics moved with it.
    let m = p.api.get("/v1/agent/metrics?format=prometheus").await.body;
    assert!(
        m.contains("wharf_proxy_requests_total{service=\"web\",route=\"host:web.localhost\",status=\"503\"} 1"),
        "{m}"
    );
    assert!(m.contains("wharf_proxy_pool_size{service=\"web\"} 1"), "{m}");
    assert!(m.contains("wharf_proxy_route_table_rebuilds_total"));
    assert_eq!(p.api.get("/metrics").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_forms() {
    let p = ProxyAgent::start(&["--default-service", "home", "--proxy-domain", "apps.test"]).await;
    let (api1, api2, shop, home, other) = (
        Backend::start("api1").await,
        Backend::start("api2").await,
        Backend::start("shop").await,
        Backend::start("home").await,
        Backend::start("other").await,
    );
    p.api
        .put_ok(
            "/v1/agent/service/register",
            backend_service(&api1, "api", json!({"Tags": ["urlprefix-/api strip=/api"]})),
        )
        .await;
    p.api
        .put_ok("/v1/agent/service/register", backend_service(&api2, "apiv2", json!({"Tags": ["urlprefix-/api/v2"]})))
        .await;
    p.api
        .put_ok(
            "/v1/agent/service/register",
            backend_service(&shop, "shop", json!({"Meta": {"wharf-route": "shop.example.com/"}})),
        )
        .await;
    p.api.put_ok("/v1/agent/service/register", backend_service(&home, "home", json!({}))).await;
    p.api.put_ok("/v1/agent/service/register", backend_service(&other, "other", json!({}))).await;
    wait_pool(&p, "other", 1).await;

    // (a) Fabio prefixes: longest wins, strip removes the prefix.
    assert_eq!(p.get("x", "/api/users").await, (200, "api1 /users".to_string()));
    assert_eq!(p.get("x", "/api/v2/users").await, (200, "api2 /api/v2/users".to_string()));
    assert_eq!(p.get("shop.example.com", "/cart").await, (200, "shop /cart".to_string()));
    // (b) <service>.<domain>
    assert_eq!(p.get("other.apps.test", "/x").await, (200, "other /x".to_string()));
    assert_eq!(p.get("OTHER.apps.test:8080", "/x").await.0, 200);
    // (c) the default service, then changed through KV without a restart.
    assert_eq!(p.get("unknown.example", "/").await, (200, "home /".to_string()));
    p.api.put_ok("/v1/kv/wharf/proxy/default-service", "other").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(p.get("unknown.example", "/").await, (200, "other /".to_string()));

    // No route at all: 404 naming host and path.
    let bare = ProxyAgent::start(&[]).await;
    let (status, body) = bare.get("nowhere.test", "/some/path").await;
    assert_eq!(status, 404);
    assert!(body.contains("nowhere.test") && body.contains("/some/path"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_modes() {
    let p = ProxyAgent::start(&[]).await;
    let b = [Backend::start("w1").await, Backend::start("w2").await, Backend::start("w3").await];
    let reg = |svc: &str, i: usize, extra: Value| backend_service(&b[i], svc, extra);
    // weighted by Weights.Passing 3:1:1
    for (i, w) in [3, 1, 1].iter().enumerate() {
        p.api
            .put_ok(
                "/v1/agent/service/register",
                reg("wt", i, json!({"Weights": {"Passing": w, "Warning": 1}, "Meta": {"wharf-lb": "weighted"}})),
            )
            .await;
    }
    // A registration is acknowledged before the route table is rebuilt from it: a request
    // sent at once could meet a pool of one or two, and a hash would move as it grows.
    wait_pool(&p, "wt", 3).await;
    let seen = p.spread("wt.localhost", "/", 50).await;
    assert_eq!((seen["w1"], seen["w2"], seen["w3"]), (30, 10, 10), "{seen:?}");

    // consistent hashing on a header: sticky per value, spread across values
    for i in 0..3 {
        p.api
            .put_ok("/v1/agent/service/register", reg("hh", i, json!({"Meta": {"wharf-lb": "hash:header:X-User"}})))
            .await;
    }
    wait_pool(&p, "hh", 3).await;
    let mut by_user = HashMap::new();
    for u in 0..30 {
        let mut first = None;
        for _ in 0..3 {
            let r = p
                .client
                .get(format!("{}/", p.proxy))
                .header("host", "hh.localhost")
                .header("x-user", format!("user-{u}"))
                .send()
                .await
                .expect("req");
            let body = r.text().await.expect("body");
            let name = body.split_whitespace().next().unwrap_or("").to_string();
            assert!(first.get_or_insert(name.clone()) == &name, "user-{u} moved between instances");
        }
        *by_user.entry(first.unwrap_or_default()).or_insert(0) += 1;
    }
    assert_eq!(by_user.len(), 3, "30 users spread over all instances: {by_user:?}");

    // consistent hashing on a cookie
    for i in 0..3 {
        p.api
            .put_ok("/v1/agent/service/register", reg("hc", i, json!({"Meta": {"wharf-lb": "hash:cookie:session"}})))
            .await;
    }
    wait_pool(&p, "hc", 3).await;
    let mut owners = std::collections::HashSet::new();
    for s in 0..20 {
        let mut names = std::collections::HashSet::new();
        for _ in 0..3 {
            let r = p
                .client
                .get(format!("{}/", p.proxy))
                .header("host", "hc.localhost")
                .header("cookie", format!("a=1; session=s{s}"))
                .send()
                .await
                .expect("req");
            names.insert(r.text().await.expect("body").split_whitespace().next().unwrap_or("").to_string());
        }
        assert_eq!(names.len(), 1, "session s{s} not sticky");
        owners.extend(names);
    }
    assert!(owners.len() >= 2, "sessions spread: {owners:?}");

    // consistent hashing on the client IP: one client, one instance
    for i in 0..3 {
        p.api.put_ok("/v1/agent/service/register", reg("hip", i, json!({"Meta": {"wharf-lb": "hash:ip"}}))).await;
    }
    wait_pool(&p, "hip", 3).await;
    assert_eq!(p.spread("hip.localhost", "/", 12).await.len(), 1);

    // least connections: a busy instance is avoided while its request is in flight
    for i in 0..2 {
        p.api.put_ok("/v1/agent/service/register", reg("lc", i, json!({"Meta": {"wharf-lb": "least_conn"}}))).await;
    }
    wait_pool(&p, "lc", 2).await;
    let slow = {
        let (c, u) = (p.client.clone(), format!("{}/slow?ms=1500", p.proxy));
        tokio::spawn(async move { c.get(u).header("host", "lc.localhost").send().await.map(|r| r.status().as_u16()) })
    };
    // Until the slow request is in flight, least-conn ties alternate; once it is, every
    // fast request avoids the busy instance.
    let deadline = Instant::now() + Duration::from_millis(1200);
    let mut avoided = false;
    while Instant::now() < deadline {
        if p.spread("lc.localhost", "/", 10).await.len() == 1 {
            avoided = true;
            break;
        }
    }
    assert!(avoided, "fast requests kept going to the instance busy with the slow one");
    assert_eq!(slow.await.expect("join").expect("slow request"), 200);
    // round robin (the default) alternates
    let seen = p.spread("lc.localhost", "/", 10).await;
    assert!(seen.len() == 2, "idle again, both used: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_websocket() {
    let p = ProxyAgent::start(&[]).await;
    let b = Backend::start("h1").await;
    p.api.put_ok("/v1/agent/service/register", backend_service(&b, "web", json!({}))).await;
    wait_pool(&p, "web", 1).await;
    let r = p
        .client
        .get(format!("{}/headers", p.proxy))
        .header("host", "web.localhost")
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .expect("req");
    let h: Value = r.json().await.expect("json");
    assert_eq!(h["host"], "web.localhost", "Host preserved");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "web.localhost");

    // WebSocket upgrade passes through to a backend that speaks it (raw TCP echo).
    let ws = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ws_port = ws.local_addr().expect("addr").port();
    tokio::spawn(async move {
        if let Ok((mut s, _)) = ws.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            assert!(req.contains("upgrade: websocket"), "{req}");
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await;
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    p.api
        .put_ok(
            "/v1/agent/service/register",
            json!({"ID": "ws-1", "Name": "ws", "Address": "127.0.0.1", "Port": ws_port}).to_string(),
        )
        .await;
    let mut c = tokio::net::TcpStream::connect(p.proxy.trim_start_matches("http://")).await.expect("connect");
    c.write_all(b"GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write_all(b"ping-frame-bytes").await.expect("write");
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.expect("echo in time").expect("read");
    assert_eq!(&buf[..n], b"ping-frame-bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_retried_and_ejected() {
    let p = ProxyAgent::start(&["--proxy-eject-after", "2", "--proxy-eject-for", "30s"]).await;
    let mut b = [Backend::start("k1").await, Backend::start("k2").await, Backend::start("k3").await];
    for x in &b {
        p.api.put_ok("/v1/agent/service/register", backend_service(x, "web", json!({}))).await;
    }
    assert_eq!(p.spread("web.localhost", "/", 9).await.len(), 3);
    b[0].kill();
    // Not deregistered: requests that would go to it are retried elsewhere.
    let seen = p.spread("web.localhost", "/", 60).await;
    assert_eq!(names(&seen), ["k2", "k3"], "no client error, no answer from the dead one");
    let m = p.api.get("/metrics").await.body;
    let ejections = m
        .lines()
        .find(|l| l.starts_with("wharf_proxy_ejections_total{service=\"web\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(ejections >= 1, "the dead instance is ejected: {m}");
    let errors_before =
        m.lines().find(|l| l.starts_with("wharf_proxy_upstream_errors_total{service=\"web\"}")).map(str::to_string);
    // Ejected: further requests do not even try it.
    p.spread("web.localhost", "/", 30).await;
    let m = p.api.get("/metrics").await.body;
    let errors_after =
        m.lines().find(|l| l.starts_with("wharf_proxy_upstream_errors_total{service=\"web\"}")).map(str::to_string);
    assert_eq!(errors_before, errors_after, "an ejected instance gets no attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused() {
    let p = ProxyAgent::start(&[]).await;
    let b = Backend::start("s1").await;
    p.api.put_ok("/v1/agent/service/register", backend_service(&b, "web", json!({}))).await;
    wait_pool(&p, "web", 1).await;
    let addr = p.proxy.trim_start_matches("http://").to_string();
    let raw = |req: &'static [u8]| one_shot(&addr, req);
    let cl_te = raw(
        b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(cl_te.starts_with("HTTP/1.1 400"), "CL+TE: {cl_te}");
    let two_cl =
        raw(b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde").await;
    assert!(two_cl.starts_with("HTTP/1.1 400"), "conflicting CL: {two_cl}");
    let fold = raw(b"GET / HTTP/1.1\r\nHost: web.localhost\r\nX-A: a\r\n b\r\n\r\n").await;
    assert!(fold.starts_with("HTTP/1.1 400"), "obs-fold: {fold}");
    let garbage = raw(b"GET / HTTP/1.1\r\nHost web.localhost\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "malformed: {garbage}");
    let big = format!("GET / HTTP/1.1\r\nHost: web.localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(80 * 1024));
    let big: &'static [u8] = Box::leak(big.into_bytes().into_boxed_slice());
    let over = raw(big).await;
    assert!(over.starts_with("HTTP/1.1 431"), "oversized headers: {}", &over[..over.len().min(80)]);
    // A sane request on the same proxy still works.
    assert_eq!(p.get("web.localhost", "/").await.0, 200);
}

/// Sends `req` on a new connection and reads until the proxy closes it (5 s at most).
async fn one_shot(addr: &str, req: &[u8]) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(req).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

/// Waits until the proxy's route table holds `n` instances of `service` (a registration is
/// acknowledged before the table is rebuilt from it).
async fn wait_pool(p: &ProxyAgent, service: &str, n: usize) {
    let want = format!("wharf_proxy_pool_size{{service=\"{service}\"}} {n}");
    wait_for(&format!("{n} instances of {service} in the pool"), Duration::from_secs(5), || async {
        p.api.get("/metrics").await.body.lines().any(|l| l == want)
    })
    .await;
}

/// Sends one header byte every 200 ms (for at most 10 s) until the proxy closes the
/// connection; returns how long that took, counted from the call.
async fn dribble_until_cut(c: &mut tokio::net::TcpStream) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if c.write_all(b"X").await.is_err() {
            return Some(started.elapsed());
        }
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await {
            return Some(started.elapsed());
        }
    }
    None
}

#[tokio::test]
async fn slow_headers_are_cut_off_at_the_header_timeout() {
    let p = ProxyAgent::start(&["--proxy-header-timeout", "1s"]).await;
    let b = Backend::start("h1").await;
    p.api.put_ok("/v1/agent/service/register", backend_service(&b, "web", json!({}))).await;
    wait_pool(&p, "web", 1).await;
    let addr = p.proxy.trim_start_matches("http://").to_string();

    // Slowloris: a header line, then one byte every 200 ms, never finishing.
    let mut c = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n").await.expect("write");
    let closed_after = dribble_until_cut(&mut c).await.expect("the slow client was never cut off");
    assert!(closed_after >= Duration::from_millis(900), "cut off too early: {closed_after:?}");
    assert!(closed_after < Duration::from_millis(2500), "cut off late: {closed_after:?}");

    // A header sent in two parts well within the limit is served.
    let mut c = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    c.write_all(b"GET /a HTTP/1.1\r\nHost: web.localhost\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.write_all(b"X-Late: 1\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    // Idle keep-alive time does not count: 1.5 s later the same connection serves again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.write_all(b"GET /b HTTP/1.1\r\nHost: web.localhost\r\n\r\n").await.expect("write");
    let n = c.read(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("h1 /b"), "{text}");

    // The next request on that kept-alive connection gets its own deadline: dribbled, it is
    // cut off too.
    c.write_all(b"GET /c HTTP/1.1\r\n").await.expect("write");
    let cut = dribble_until_cut(&mut c).await.expect("a dribbled kept-alive request was never cut off");
    assert!(cut < Duration::from_millis(2500), "kept-alive request cut off late: {cut:?}");

    // A client that connects and sends nothing is cut off as well (the h2c preface peek).
    let mut silent = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let silent_started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the silent connection stayed open");
    assert!(silent_started.elapsed() < Duration::from_millis(2500));

    // Bare LF line ends end the header too: served, not cut off.
    let mut lf = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    lf.write_all(b"GET /lf HTTP/1.1\nHost: web.localhost\n\n").await.expect("write");
    let n = lf.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));

    let metrics = p.api.get("/metrics").await.body;
    assert!(metrics.contains("wharf_proxy_header_timeouts_total 3"), "header timeouts not counted");
    println!("proxy: a slowloris client was cut off {closed_after:?} after connecting (header timeout 1s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_with_200_keepalive_clients_loses_no_request() {
    const CLIENTS: usize = 200;
    const CYCLES: usize = 500;
    const SECONDS: u64 = 20;
    let p = ProxyAgent::start(&[]).await;
    let stable = [Backend::start("s1").await, Backend::start("s2").await, Backend::start("s3").await];
    for b in &stable {
        p.api.put_ok("/v1/agent/service/register", backend_service(b, "web", json!({}))).await;
    }
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    // The load runs for at least SECONDS and until every churn cycle is done.
    let churning = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failures = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<String>::new()));
    let churned_served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (url, ok, failures, churned, churning) =
            (p.proxy.clone(), ok.clone(), failures.clone(), churned_served.clone(), churning.clone());
        clients.push(tokio::spawn(async move {
            // One keep-alive connection per client.
            let c = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
            while Instant::now() < deadline || churning.load(std::sync::atomic::Ordering::Relaxed) {
                match c.get(format!("{url}/")).header("host", "web.localhost").send().await {
                    Ok(r) if r.status() == 200 => {
                        let body = r.text().await.unwrap_or_default();
                        if body.starts_with('c') {
                            churned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        failures.lock().await.push(format!("{status}: {body}"));
                    }
                    Err(e) => failures.lock().await.push(format!("transport: {e}")),
                }
            }
        }));
    }
    // Churn: two loops of register -> serve a little -> deregister -> graceful stop.
    let mut churners = Vec::new();
    for lane in 0..2 {
        let api = p.api.clone();
        churners.push(tokio::spawn(async move {
            let mut done = 0;
            for i in 0..CYCLES / 2 {
                let mut b = Backend::start(&format!("c{lane}-{i}")).await;
                let id = format!("web-{}", b.port());
                api.put_ok("/v1/agent/service/register", backend_service(&b, "web", json!({}))).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
                api.put_ok(&format!("/v1/agent/service/deregister/{id}"), "").await;
                b.stop_gracefully().await;
                done += 1;
            }
            done
        }));
    }
    let mut cycles = 0;
    for c in churners {
        cycles += c.await.expect("churner");
    }
    let churn_done = Instant::now();
    churning.store(false, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let failures = failures.lock().await;
    let total = ok.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "churn: {total} requests from {CLIENTS} clients over {:?}, {cycles} register/deregister cycles \
         (all during the load), {} served by churned instances, {} failed",
        churn_done.max(deadline).saturating_duration_since(deadline - Duration::from_secs(SECONDS)),
        churned_served.load(std::sync::atomic::Ordering::Relaxed),
        failures.len()
    );
    assert_eq!(cycles, CYCLES);
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(churned_served.load(std::sync::atomic::Ordering::Relaxed) > 0, "churned instances took traffic");
}

/// A self-signed certificate for `name` made with the real openssl CLI.
fn make_cert(dir: &std::path::Path, name: &str) -> (String, String) {
    let cert = dir.join(format!("{name}.pem")).display().to_string();
    let key = dir.join(format!("{name}.key")).display().to_string();
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName=DNS:{name}")])
        .args(["-keyout", &key, "-out", &cert])
        .output()
        .expect("openssl must be installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// curl through the TLS listener, verifying the server certificate against `ca`.
fn curl_tls(port: u16, host: &str, ca: &str, path: &str) -> (bool, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2", "--cacert", ca])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-w", "\nHTTP_VERSION=%{http_version}"])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl must be installed");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_by_sni_http2_and_reload_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_cert, a_key) = make_cert(dir.path(), "a.test");
    let (b_cert, b_key) = make_cert(dir.path(), "b.test");
    let tls_port = free_port();
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let a = format!("{a_cert}:{a_key}");
    let b = format!("{b_cert}:{b_key}");
    let p = ProxyAgent::start(&["--proxy-tls-addr", &tls_addr, "--proxy-cert", &a, "--proxy-cert", &b]).await;
    let backend = Backend::start("tls1").await;
    p.api
        .put_ok("/v1/agent/service/register", backend_service(&backend, "web", json!({"Tags": ["urlprefix-/"]})))
        .await;

    // SNI picks the matching certificate (curl verifies the name against each CA).
    let (ok, out) =
        tokio::task::spawn_blocking(move || curl_tls(tls_port, "a.test", &a_cert, "/headers")).await.expect("join");
    assert!(ok, "{out}");
    assert!(out.contains("\"x-forwarded-proto\":\"https\""), "{out}");
    assert!(out.contains("HTTP_VERSION=2"), "HTTP/2 by ALPN: {out}");
    let b_cert2 = b_cert.clone();
    let (ok, out) =
        tokio::task::spawn_blocking(move || curl_tls(tls_port, "b.test", &b_cert2, "/")).await.expect("join");
    assert!(ok, "b.test gets its own certificate: {out}");
    let (a_cert_path, a_key_path) = (dir.path().join("a.test.pem"), dir.path().join("a.test.key"));
    let a_ca = a_cert_path.display().to_string();
    let (ok, _) = tokio::task::spawn_blocking(move || curl_tls(tls_port, "b.test", &a_ca, "/")).await.expect("join");
    assert!(!ok, "b.test must not be served a.test's certificate");

    // h2c on the plain listener.
    let plain = p.proxy.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--http2-prior-knowledge",
                "-H",
                "Host: web.localhost",
                "-w",
                " %{http_version}",
            ])
            .arg(format!("{plain}/x"))
            .output()
            .expect("curl")
    })
    .await
    .expect("join");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(" 2"), "h2c: {}", String::from_utf8_lossy(&out.stdout));

    // Replace a.test's certificate on disk; SIGHUP swaps it in without a restart.
    let old = dir.path().join("old-a.pem");
    std::fs::copy(&a_cert_path, &old).expect("copy");
    std::fs::remove_file(&a_cert_path).expect("rm");
    std::fs::remove_file(&a_key_path).expect("rm");
    make_cert(dir.path(), "a.test");
    p._agent.signal("-HUP");
    let new_ca = a_cert_path.display().to_string();
    let old_ca = old.display().to_string();
    let mut reloaded = false;
    for _ in 0..100 {
        let (ca_new, ca_old) = (new_ca.clone(), old_ca.clone());
        let (ok_new, ok_old) = tokio::task::spawn_blocking(move || {
            (curl_tls(tls_port, "a.test", &ca_new, "/").0, curl_tls(tls_port, "a.test", &ca_old, "/").0)
        })
        .await
        .expect("join");
        if ok_new && !ok_old {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the new certificate is served after SIGHUP, the old one no more");
}

/// A raw HTTP/1.1 backend with scripted answers by path, for message shapes axum does not
/// produce: chunked with trailers, 103 before the final answer, a body ending at close, a
/// kept-alive connection closed right after its answer. `/echo` answers with the head and
/// body it received; every received request is also kept in `seen`.
struct ScriptedBackend {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedBackend {
    async fn start() -> ScriptedBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind scripted backend");
        let port = listener.local_addr().expect("addr").port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Self::serve(conn, log.clone()));
            }
        });
        ScriptedBackend { port, seen, task }
    }

    async fn serve(mut conn: tokio::net::TcpStream, log: std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let mut buf = Vec::new();
        loop {
            // One request: head, then a Content-Length or chunked body.
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if !read_more(&mut conn, &mut buf).await {
                    return;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let lower = head.to_ascii_lowercase();
            let body_end = if lower.contains("transfer-encoding: chunked") {
                loop {
                    if let Some(i) = buf[head_end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                        break head_end + i + 5;
                    }
                    if !read_more(&mut conn, &mut buf).await {
                        return;
                    }
                }
            } else {
                let len: usize = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    if !read_more(&mut conn, &mut buf).await {
                        return;
                    }
                }
                head_end + len
            };
            let request: Vec<u8> = buf.drain(..body_end).collect();
            let text = String::from_utf8_lossy(&request).to_string();
            log.lock().expect("log").push(text.clone());
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let is_head = head.starts_with("HEAD ");
            let (answer, close): (Vec<u8>, bool) = match path.as_str() {
                "/chunked" => (
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n".to_vec(),
                    false,
                ),
                "/hints" => {
                    (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), false)
                }
                "/until-close" => (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until close".to_vec(), true),
                "/closes" => (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncloses".to_vec(), true),
                "/length" if is_head => (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n".to_vec(), false),
                "/length" => (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world".to_vec(), false),
                _ => {
                    let mut a = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", request.len()).into_bytes();
                    a.extend_from_slice(&request);
                    (a, false)
                }
            };
            if conn.write_all(&answer).await.is_err() || close {
                return;
            }
        }
    }
}

/// Appends what arrives next to `buf`; false once the peer is gone.
async fn read_more(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match conn.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads from `c` until `done` says the bytes so far are complete (5 s at most).
async fn read_until(c: &mut tokio::net::TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(&String::from_utf8_lossy(&got)) && Instant::now() < deadline {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_millis(200), c.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_message_shapes_pass_intact() {
    let p = ProxyAgent::start(&[]).await;
    let b = ScriptedBackend::start().await;
    let body = json!({"ID": "raw-1", "Name": "raw", "Address": "127.0.0.1", "Port": b.port}).to_string();
    p.api.put_ok("/v1/agent/service/register", body).await;
    wait_pool(&p, "raw", 1).await;
    let addr = p.proxy.trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let host = "Host: raw.localhost\r\n";

    // Chunked, with an extension and a trailer, relayed byte for byte; the connection stays.
    c.write_all(format!("GET /chunked HTTP/1.1\r\n{host}\r\n").as_bytes()).await.expect("write");
    let r = read_until(&mut c, |s| s.ends_with("X-Sum: 11\r\n\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("Transfer-Encoding: chunked\r\n") && r.contains("Trailer: X-Sum\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n"), "{r}");

    // 103 Early Hints is passed on before the answer.
    c.write_all(format!("GET /hints HTTP/1.1\r\n{host}\r\n").as_bytes()).await.expect("write");
    let r = read_until(&mut c, |s| s.ends_with("\r\n\r\nok")).await;
    assert!(r.starts_with("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n"), "{r}");

    // HEAD: the length is announced, no body follows; then GET on the same connection.
    c.write_all(format!("HEAD /length HTTP/1.1\r\n{host}\r\n").as_bytes()).await.expect("write");
    let r = read_until(&mut c, |s| s.ends_with("\r\n\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("Content-Length: 11\r\n"), "{r}");
    c.write_all(format!("GET /length HTTP/1.1\r\n{host}\r\n").as_bytes()).await.expect("write");
    let r = read_until(&mut c, |s| s.ends_with("hello world")).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nhello world"), "{r}");

    // Two pipelined requests, one with a body: both answered, in order. The client's
    // X-Forwarded-For is extended, hop-by-hop fields (and those Connection names) dropped.
    let pipelined = format!(
        "POST /echo HTTP/1.1\r\n{host}Content-Length: 5\r\nConnection: X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 10.0.0.1\r\n\r\nabcdeGET /length HTTP/1.1\r\n{host}\r\n"
    );
    c.write_all(pipelined.as_bytes()).await.expect("write");
    let r = read_until(&mut c, |s| s.ends_with("hello world")).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    let echoed = b.seen.lock().expect("seen").iter().find(|s| s.starts_with("POST /echo")).cloned().unwrap_or_default();
    assert!(echoed.ends_with("\r\n\r\nabcde"), "{echoed}");
    assert!(echoed.contains("X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n"), "{echoed}");
    assert!(echoed.contains("X-Real-IP: 127.0.0.1\r\n") && echoed.contains("X-Forwarded-Host: raw.localhost\r\n"));
    let lower = echoed.to_ascii_lowercase();
    assert!(!lower.contains("x-secret") && !lower.contains("keep-alive") && !lower.contains("connection:"), "{echoed}");
    assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 2, "{r}");

    // A client naming Content-Length in Connection cannot strip it and smuggle its body to
    // the instance as a second request: the body arrives as this request's body.
    b.seen.lock().expect("seen").clear();
    let smuggled = "GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n";
    let sneaky = format!(
        "POST /echo HTTP/1.1\r\n{host}Content-Length: {}\r\nConnection: content-length, host\r\n\r\n{smuggled}",
        smuggled.len()
    );
    c.write_all(sneaky.as_bytes()).await.expect("write");
    let r = read_until(&mut c, |s| s.ends_with("Host: internal\r\n\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    let seen = b.seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1, "the instance saw one request: {seen:?}");
    let length = format!("Content-Length: {}\r\n", smuggled.len());
    assert!(seen[0].contains(&length) && seen[0].contains("Host: raw.localhost\r\n"), "{seen:?}");

    // The instance closes its side after each answer here (an idle timeout racing the next
    // request): the next request on that pooled connection is sent again on a fresh one.
    for i in 0..5 {
        c.write_all(format!("GET /closes HTTP/1.1\r\n{host}\r\n").as_bytes()).await.expect("write");
        let r = read_until(&mut c, |s| s.ends_with("closes")).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "request {i} after a closed pooled connection: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A chunked request body goes through Pingora's path and arrives intact.
    c.write_all(
        format!("POST /echo HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let r = read_until(&mut c, |s| s.contains("0\r\n\r\n") && s.ends_with("\r\n\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("3\r\nabc\r\n0\r\n\r\n"), "{r}");

    // A body that ends when the instance closes: the client is told the connection closes.
    let r = one_shot(&addr, format!("GET /until-close HTTP/1.1\r\n{host}\r\n").as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("Connection: close\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\nbody until close"), "{r}");

    // HTTP/1.0 is served (by Pingora) too.
    let r = one_shot(&addr, format!("GET /length HTTP/1.0\r\n{host}\r\n").as_bytes()).await;
    assert!(r.starts_with("HTTP/1.") && r.contains(" 200 ") && r.ends_with("hello world"), "{r}");
}

/// Maintenance mode (`PUT /v1/agent/service/maintenance/:id`): the instance leaves the pool
/// at once, a request it is serving finishes, and it comes back when maintenance ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_in_maintenance_leaves_the_pool_and_finishes_its_requests() {
    let p = ProxyAgent::start(&[]).await;
    let (b1, b2) = (Backend::start("s1").await, Backend::start("s2").await);
    p.api.put_ok("/v1/agent/service/register", backend_service(&b1, "web", json!({}))).await;
    wait_pool(&p, "web", 1).await;
    let slow = {
        let client = p.client.clone();
        let url = format!("{}/slow?ms=800", p.proxy);
        tokio::spawn(async move { client.get(url).header("host", "web.localhost").send().await?.text().await })
    };
    p.api.put_ok("/v1/agent/service/register", backend_service(&b2, "web", json!({}))).await;
    wait_pool(&p, "web", 2).await;
    let started = Instant::now();
    p.api.put_ok(&format!("/v1/agent/service/maintenance/web-{}?enable=true&reason=deploy", b1.port()), "").await;
    wait_pool(&p, "web", 1).await;
    println!("out of the pool {:?} after maintenance was acknowledged", started.elapsed());
    assert!(started.elapsed() < Duration::from_millis(100), "left the pool after {:?}", started.elapsed());
    let answers = p.spread("web.localhost", "/", 10).await;
    assert_eq!(answers.get("s2"), Some(&10), "only s2 serves: {answers:?}");
    let body = slow.await.expect("join").expect("the in-flight request finished");
    assert_eq!(body, "s1", "the request s1 was serving when it entered maintenance completed");
    p.api.put_ok(&format!("/v1/agent/service/maintenance/web-{}?enable=false", b1.port()), "").await;
    wait_pool(&p, "web", 2).await;
}

/// The same requests through both paths, the fast path (HTTP/1.1) and Pingora's
/// (HTTP/1.0): a cookie written with spaces picks the same instance, and two
/// X-Forwarded-For lines reach the backend as the same one merged chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_forward_the_same_request() {
    let p = ProxyAgent::start(&[]).await;
    let backends = [Backend::start("s1").await, Backend::start("s2").await, Backend::start("s3").await];
    for b in &backends {
        p.api
            .put_ok(
                "/v1/agent/service/register",
                backend_service(b, "web", json!({"Meta": {"wharf-lb": "hash:cookie:sid"}})),
            )
            .await;
    }
    wait_pool(&p, "web", 3).await;
    let addr = p.proxy.trim_start_matches("http://").to_string();
    let body = |resp: &str| resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    let ask = |version: &'static str, path: &'static str| {
        let addr = addr.clone();
        async move {
            let req = format!(
                "GET {path} {version}\r\nHost: web.localhost\r\nCookie: a=1; sid = abc ; b=2\r\n\
                 X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nConnection: close\r\n\r\n"
            );
            let req: &'static [u8] = Box::leak(req.into_bytes().into_boxed_slice());
            one_shot(&addr, req).await
        }
    };
    let mut picked = Vec::new();
    let mut chains = Vec::new();
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        for _ in 0..3 {
            let r = ask(version, "/who").await;
            assert!(r.contains(" 200 "), "{version}: {r}");
            picked.push((version, body(&r).split_whitespace().next().unwrap_or_default().to_string()));
        }
        let r = ask(version, "/headers").await;
        let seen: Value = serde_json::from_str(&body(&r)).unwrap_or_else(|e| panic!("{version}: {e}: {r}"));
        chains.push((version, seen));
    }
    let first = &picked[0].1;
    assert!(picked.iter().all(|(_, b)| b == first), "one instance for sid=abc on both paths: {picked:?}");
    assert_eq!(chains[0].1["x-forwarded-for"], json!("1.1.1.1, 2.2.2.2, 127.0.0.1"), "{chains:?}");
    // The whole forwarded request is the same, but for the fields that describe each hop's
    // connection.
    let end_to_end = |v: &Value| {
        let mut m = v.as_object().cloned().unwrap_or_default();
        for hop in ["connection", "keep-alive", "content-length"] {
            m.remove(hop);
        }
        m
    };
    assert!(end_to_end(&chains[0].1).len() >= 6, "the backend saw the request's fields: {chains:?}");
    assert_eq!(end_to_end(&chains[0].1), end_to_end(&chains[1].1), "the same request on both paths");
}
