//! Docker autodiscovery against the real engine on this machine: Registrator's
//! conventions, published and internal modes, HEALTHCHECK, `docker kill`, stale state after
//! a wharf crash and after the event stream breaks, and the compose scenario under load.
//! Images are built locally by demo/build-images.sh (no registry).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::harness::{Agent, Api, free_port, wait_for};

const IMAGE: &str = "wharf-demo-web:latest";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI must be installed");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds the demo image once per test run.
async fn demo_image() {
    static BUILT: OnceCell<()> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let out = tokio::process::Command::new(repo().join("demo/build-images.sh"))
                .output()
                .await
                .expect("run build-images.sh");
            assert!(out.status.success(), "demo/build-images.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        })
        .await;
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", rand_suffix())
}

fn rand_suffix() -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:x}{:x}", std::process::id() % 0xfff, n % 0xfffff)
}

/// A container removed when dropped.
struct Container {
    name: String,
}

impl Container {
    fn run(name: &str, args: &[&str]) -> Container {
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        if !args.iter().any(|a| a.starts_with("wharf-demo-web:")) {
            all.push(IMAGE);
        }
        docker(&all);
        Container { name: name.to_string() }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.name]).output();
    }
}

async fn docker_agent(extra: &[&str]) -> (Agent, Api) {
    let mut args = vec!["--docker", "on"];
    args.extend_from_slice(extra);
    let agent = Agent::dev_with(&args).await;
    let api = Api::new(&agent);
    (agent, api)
}

/// The agent's services registered for containers whose name starts with `prefix`.
async fn services_of(api: &Api, prefix: &str) -> Vec<Value> {
    let (all, _) = api.get_json("/v1/agent/services").await;
    let mut v: Vec<Value> = all
        .as_object()
        .map(|m| m.values().filter(|s| s["ID"].as_str().is_some_and(|id| id.contains(prefix))).cloned().collect())
        .unwrap_or_default();
    v.sort_by_key(|s| s["ID"].as_str().map(str::to_string));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrator_conventions_on_real_containers() {
    demo_image().await;
    let (_agent, api) = docker_agent(&[]).await;
    let p = unique("wc");
    let name = |s: &str| format!("{p}-{s}");
    let _plain = Container::run(&name("plain"), &["-p", "127.0.0.1::8080"]);
    let _named = Container::run(
        &name("named"),
        &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=named", "-e", "SERVICE_TAGS=a,b", "-e", "SERVICE_VERSION=3"],
    );
    let _label = Container::run(
        &name("label"),
        &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=env", "-l", "SERVICE_NAME=label"],
    );
    let _multi = Container::run(
        &name("multi"),
        &[
            "--expose",
            "9090",
            "-p",
            "127.0.0.1::8080",
            "-p",
            "127.0.0.1::9090",
            "-e",
            "SERVICE_9090_NAME=admin",
            "-e",
            "SERVICE_8080_TAGS=http",
        ],
    );
    let _ignored = Container::run(&name("ignored"), &["-p", "127.0.0.1::8080", "-e", "SERVICE_IGNORE=true"]);
    let _port_ignored = Container::run(
        &name("portign"),
        &[
            "--expose",
            "9090",
            "-p",
            "127.0.0.1::8080",
            "-p",
            "127.0.0.1::9090",
            "-e",
            "SERVICE_NAME=pi",
            "-e",
            "SERVICE_9090_IGNORE=1",
        ],
    );
    let _checks = Container::run(
        &name("checks"),
        &[
            "-p",
            "127.0.0.1::8080",
            "-e",
            "SERVICE_NAME=checked",
            "-e",
            "SERVICE_CHECK_HTTP=/health",
            "-e",
            "SERVICE_CHECK_INTERVAL=5s",
            "-e",
            "SERVICE_CHECK_TIMEOUT=2s",
            "-e",
            "SERVICE_CHECK_INITIAL_STATUS=passing",
            "-e",
            "SERVICE_CHECK_DEREGISTER_AFTER=1m",
        ],
    );
    let _tcp = Container::run(
        &name("tcp"),
        &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=tcpc", "-e", "SERVICE_CHECK_TCP=true"],
    );
    let _ttl = Container::run(
        &name("ttl"),
        &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=ttlc", "-e", "SERVICE_CHECK_TTL=30s"],
    );
    let _https = Container::run(
        &name("https"),
        &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=httpsc", "-e", "SERVICE_CHECK_HTTPS=/x"],
    );
    let _bad = Container::run(
        &name("bad"),
        &[
            "-p",
            "127.0.0.1::8080",
            "-e",
            "SERVICE_NAME=badc",
            "-e",
            "SERVICE_CHECK_TCP=1",
            "-e",
            "SERVICE_CHECK_INTERVAL=often",
            "-e",
            "SERVICE_abc_NAME=x",
        ],
    );
    let _custom_id = Container::run(
        &name("cid"),
        &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=cid", "-e", &format!("SERVICE_ID={p}-my-id")],
    );
    let _wharf = Container::run(
        &name("wl"),
        &[
            "--expose",
            "9090",
            "-p",
            "127.0.0.1::8080",
            "-p",
            "127.0.0.1::9090",
            "-l",
            "wharf.service=shop",
            "-l",
            "wharf.tags=v1,blue",
            "-l",
            "wharf.route=/shop strip=/shop",
            "-l",
            "wharf.port=8080",
            "-l",
            "wharf.lb=least_conn",
        ],
    );
    let _noports = Container::run(&name("noports"), &[]);
    let _udp = Container::run(&name("udp"), &["-p", "127.0.0.1::5353/udp"]);

    wait_for("all containers registered", Duration::from_secs(15), || async {
        services_of(&api, &p).await.len() >= 13
    })
    .await;
    let all = services_of(&api, &p).await;
    let by_container = |c: &str| -> Vec<Value> {
        all.iter()
            .filter(|s| {
                s["Meta"]["wharf-docker-id"].is_string()
                    && s["ID"].as_str().is_some_and(|id| id.contains(&format!("{p}-{c}")))
            })
            .cloned()
            .collect()
    };
    // Defaults: image basename, <node>:<container>:<port>, published host port on 127.0.0.1.
    let plain = &by_container("plain")[0];
    assert_eq!(plain["Service"], "wharf-demo-web");
    assert_eq!(plain["ID"], format!("node-1:{}:8080", name("plain")));
    assert_eq!(plain["Address"], "127.0.0.1");
    let host_port = docker(&["port", &name("plain"), "8080"]);
    assert!(host_port.ends_with(&format!(":{}", plain["Port"])), "{host_port} vs {plain}");
    let named = &by_container("named")[0];
    assert_eq!((named["Service"].as_str(), named["Tags"].clone()), (Some("named"), serde_json::json!(["a", "b"])));
    assert_eq!(named["Meta"]["version"], "3", "other SERVICE_<KEY> become meta");
    assert_eq!(by_container("label")[0]["Service"], "label", "labels win over env");
    let multi = by_container("multi");
    assert_eq!(multi.len(), 2);
    assert_eq!(multi[0]["Service"], "wharf-demo-web-8080", "several ports: -<port> suffix");
    assert_eq!(multi[0]["Tags"], serde_json::json!(["http"]));
    assert_eq!(multi[1]["Service"], "admin");
    assert!(by_container("ignored").is_empty(), "SERVICE_IGNORE");
    let pi = by_container("portign");
    assert_eq!(pi.len(), 1, "SERVICE_9090_IGNORE");
    assert_eq!(pi[0]["Service"], "pi");
    let cid: Vec<&Value> = all.iter().filter(|s| s["ID"] == format!("{p}-my-id")).collect();
    assert_eq!(cid.len(), 1, "SERVICE_ID");
    let shop: Vec<&Value> = all.iter().filter(|s| s["Service"] == "shop").collect();
    assert_eq!(shop.len(), 1, "wharf.port picks one port");
    assert_eq!(shop[0]["Tags"], serde_json::json!(["v1", "blue"]));
    assert_eq!(shop[0]["Meta"]["wharf-route"], "/shop strip=/shop");
    assert_eq!(shop[0]["Meta"]["wharf-lb"], "least_conn");
    assert!(by_container("noports").is_empty() && by_container("udp").is_empty(), "no ports / UDP only: skipped");
    assert_eq!(by_container("bad")[0]["Service"], "badc", "a malformed value never blocks registration");

    let (checks, _) = api.get_json("/v1/agent/checks").await;
    let check_of = |service_id: &str| -> Value { checks[format!("service:{service_id}")].clone() };
    let c = check_of(&format!("node-1:{}:8080", name("checks")));
    assert!(
        c["Definition"]["HTTP"].as_str().is_some_and(|u| u.starts_with("http://127.0.0.1:") && u.ends_with("/health")),
        "{c}"
    );
    assert_eq!(
        (c["Interval"].as_str(), c["Timeout"].as_str(), c["Status"].as_str()),
        (Some("5s"), Some("2s"), Some("passing"))
    );
    assert_eq!(c["Definition"]["DeregisterCriticalServiceAfter"], "1m");
    let t = check_of(&format!("node-1:{}:8080", name("tcp")));
    assert!(t["Definition"]["TCP"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{t}");
    // Critical until its first probe, which runs at a point of its interval set by a hash of
    // the (per-run) check ID: it may already have passed.
    assert!(matches!(t["Status"].as_str(), Some("critical" | "passing")), "{t}");
    assert_eq!(check_of(&format!("node-1:{}:8080", name("ttl")))["Definition"]["TTL"], "30s");
    let h = check_of(&format!("node-1:{}:8080", name("https")));
    assert!(
        h["Definition"]["HTTP"].as_str().is_some_and(|u| u.starts_with("https://"))
            && h["Definition"]["TLSSkipVerify"] == true
    );
    assert_eq!(check_of(&format!("node-1:{}:8080", name("bad")))["Interval"], "10s", "bad interval -> default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_explicit_and_internal_modes() {
    demo_image().await;
    let p = unique("wm");
    let net = format!("{p}-net");
    docker(&["network", "create", &net]);
    struct Net(String);
    impl Drop for Net {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["network", "rm", &self.0]).output();
        }
    }
    let _net = Net(net.clone());

    // HEALTHCHECK mirrored: starting -> critical, healthy -> passing, unhealthy -> critical.
    let (_agent, api) = docker_agent(&[]).await;
    let hc = Container::run(
        &format!("{p}-hc"),
        &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=hc", "wharf-demo-web:health"],
    );
    let check_id = format!("wharf-docker-health:node-1:{}:8080", hc.name);
    let status = |api: Api, id: String| async move {
        api.get_json("/v1/agent/checks").await.0[&id]["Status"].as_str().map(str::to_string)
    };
    wait_for("healthy", Duration::from_secs(20), || {
        status(api.clone(), check_id.clone()).map(|s| s.as_deref() == Some("passing"))
    })
    .await;
    let host = docker(&["port", &hc.name, "8080"]);
    let toggled =
        reqwest::get(format!("http://{host}/toggle-health")).await.expect("toggle").text().await.expect("body");
    assert_eq!(toggled, "unhealthy\n");
    wait_for("unhealthy", Duration::from_secs(20), || {
        status(api.clone(), check_id.clone()).map(|s| s.as_deref() == Some("critical"))
    })
    .await;

    // Explicit mode: only containers that name their service.
    let (_agent2, api2) = docker_agent(&["--docker-explicit"]).await;
    let _anon = Container::run(&format!("{p}-anon"), &["-p", "127.0.0.1::8080"]);
    let _named = Container::run(&format!("{p}-named"), &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=explicit"]);
    wait_for("named registered", Duration::from_secs(10), || async {
        !services_of(&api2, &format!("{p}-named")).await.is_empty()
    })
    .await;
    assert!(
        services_of(&api2, &format!("{p}-anon")).await.is_empty(),
        "unnamed container ignored with --docker-explicit"
    );

    // Internal mode: container IP and exposed port, on the chosen network.
    let (_agent3, api3) = docker_agent(&["--docker-internal", "--docker-network", &net]).await;
    let internal = Container::run(&format!("{p}-int"), &["--network", &net, "-e", "SERVICE_NAME=internal"]);
    docker(&["network", "connect", "bridge", &internal.name]);
    wait_for("internal registered", Duration::from_secs(10), || async {
        !services_of(&api3, &internal.name).await.is_empty()
    })
    .await;
    let s = &services_of(&api3, &internal.name).await[0];
    let ip = docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &internal.name,
    ]);
    assert_eq!((s["Address"].as_str(), s["Port"].as_u64()), (Some(ip.as_str()), Some(8080)), "{s}");
}

/// A Unix-socket relay in front of the Docker engine whose connections the test can cut.
struct Relay {
    path: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    fn start(path: &Path) -> Relay {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).expect("bind relay socket");
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else { break };
                conns.spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect("/var/run/docker.sock").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        });
        Relay { path: path.to_path_buf(), task: Some(task) }
    }

    /// Breaks every connection (the event stream included) and stops accepting.
    fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_state_is_reconciled_after_a_crash_and_a_broken_stream() {
    demo_image().await;
    let p = unique("ws");
    let tmp = tempfile::tempdir().expect("tempdir");
    let sock = tmp.path().join("docker.sock");
    let mut relay = Relay::start(&sock);
    let docker_host = format!("unix://{}", sock.display());
    let mut agent = Agent::new(tmp.path().join("data"), "node-1", vec!["--docker".into(), "on".into()], None);
    agent.env.push(("DOCKER_HOST".into(), docker_host.clone()));
    agent.start(&["--dev"]);
    agent.wait_ready().await;
    let api = Api::new(&agent);
    let a = Container::run(&format!("{p}-a"), &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=stale"]);
    let b = Container::run(&format!("{p}-b"), &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=stale"]);
    let c = Container::run(&format!("{p}-c"), &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=stale"]);
    wait_for("three registered", Duration::from_secs(10), || async { services_of(&api, &p).await.len() == 3 }).await;

    // wharf crashes; two containers go away and a new one starts meanwhile.
    agent.kill9();
    drop(a);
    drop(b);
    let d = Container::run(&format!("{p}-d"), &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=stale"]);
    agent.start(&["--dev"]);
    agent.wait_ready().await;
    let ready = Instant::now();
    let expect: Vec<String> = vec![format!("node-1:{}:8080", c.name), format!("node-1:{}:8080", d.name)];
    wait_for("catalog matches after restart", Duration::from_secs(5), || async {
        services_of(&api, &p).await.iter().filter_map(|s| s["ID"].as_str().map(str::to_string)).collect::<Vec<_>>()
            == expect
    })
    .await;
    let after_restart = ready.elapsed();
    assert!(after_restart < Duration::from_secs(1), "matched {after_restart:?} after the agent was ready");

    // The event stream breaks; meanwhile containers change; it comes back.
    relay.cut();
    drop(c);
    let e = Container::run(&format!("{p}-e"), &["-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=stale"]);
    let mut relay = Relay::start(&sock);
    let back = Instant::now();
    let expect: Vec<String> = vec![format!("node-1:{}:8080", d.name), format!("node-1:{}:8080", e.name)];
    wait_for("catalog matches after the stream broke", Duration::from_secs(5), || async {
        services_of(&api, &p).await.iter().filter_map(|s| s["ID"].as_str().map(str::to_string)).collect::<Vec<_>>()
            == expect
    })
    .await;
    let after_break = back.elapsed();
    assert!(after_break < Duration::from_millis(1500), "matched {after_break:?} after the stream came back");
    println!("stale state: matched {after_restart:?} after restart, {after_break:?} after the stream came back");
    relay.cut();
}

/// Load through the proxy from `clients` tasks until `stop`; returns (ok, failed, first errors).
fn load(
    url: String,
    host: String,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, Vec<String>)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (url, host, ok, failed, errors, stop) =
                (url.clone(), host.clone(), ok.clone(), failed.clone(), errors.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let c = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
                while !stop.load(Ordering::Relaxed) {
                    match c.get(&url).header("host", &host).send().await {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut e = errors.lock().await;
                            if e.len() < 5 {
                                e.push(match other {
                                    Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                                    Err(err) => err.to_string(),
                                });
                            }
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let errors = errors.lock().await.clone();
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed), errors)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_scale_and_kill_with_zero_failed_requests() {
    demo_image().await;
    let project = unique("wcp");
    let proxy_port = free_port();
    let proxy_addr = format!("127.0.0.1:{proxy_port}");
    let (agent, api) = docker_agent(&["--proxy-addr", &proxy_addr, "--proxy-threads", "2"]).await;
    let compose = repo().join("demo/docker-compose.yml");
    let compose_cmd = |args: &[&str]| {
        let out = Command::new("docker-compose")
            .args(["-p", &project, "-f", compose.to_str().expect("utf8")])
            .args(args)
            .output()
            .expect("docker-compose must be installed");
        assert!(out.status.success(), "docker-compose {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    struct Down(String, PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new("docker-compose")
                .args(["-p", &self.0, "-f", &self.1.display().to_string(), "down", "-t", "2"])
                .output();
        }
    }
    let _down = Down(project.clone(), compose.clone());
    let healthy = |api: Api| async move {
        api.get_json("/v1/health/service/web?passing").await.0.as_array().map(Vec::len).unwrap_or(0)
    };

    compose_cmd(&["up", "-d", "--scale", "web=3", "web"]);
    wait_for("three replicas in the pool", Duration::from_secs(20), || healthy(api.clone()).map(|n| n == 3)).await;
    // A curl loop through the proxy sees all three.
    let url = format!("http://{proxy_addr}/");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        let body = reqwest::Client::new()
            .get(&url)
            .header("host", "web.localhost")
            .send()
            .await
            .expect("req")
            .text()
            .await
            .expect("body");
        seen.insert(body);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // Load throughout scaling to 5 and then to 1.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = load(url.clone(), "web.localhost".into(), 16, stop.clone());
    compose_cmd(&["up", "-d", "--scale", "web=5", "web"]);
    wait_for("five replicas", Duration::from_secs(20), || healthy(api.clone()).map(|n| n == 5)).await;
    compose_cmd(&["up", "-d", "--scale", "web=1", "web"]);
    wait_for("one replica", Duration::from_secs(30), || healthy(api.clone()).map(|n| n == 1)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, errors) = loader.await.expect("loader");
    println!("compose scale 3 -> 5 -> 1: {ok} requests, {failed} failed");
    let why: Vec<String> =
        agent.log_text().lines().filter(|l| l.contains("failed")).take(5).map(str::to_string).collect();
    assert_eq!(failed, 0, "failed requests during scaling: {errors:?}; agent log: {why:#?}");
    assert!(ok > 100);

    // docker kill (SIGKILL) of a replica: out of the pool within 100 ms of the event, and no
    // request sent after it fails.
    compose_cmd(&["up", "-d", "--scale", "web=3", "web"]);
    wait_for("three again", Duration::from_secs(20), || healthy(api.clone()).map(|n| n == 3)).await;
    let victim = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        "label=com.docker.compose.service=web",
    ])
    .lines()
    .next()
    .map(str::to_string)
    .expect("a replica");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = load(url.clone(), "web.localhost".into(), 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    docker(&["kill", &victim]);
    let killed = Instant::now();
    let mut left = None;
    while killed.elapsed() < Duration::from_secs(5) {
        if healthy(api.clone()).await == 2 {
            left = Some(killed.elapsed());
            break;
        }
    }
    let left = left.expect("the killed replica left the pool");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, errors) = loader.await.expect("loader");
    println!("docker kill: out of the pool {left:?} after `docker kill` returned; {ok} requests, {failed} failed");
    assert!(left < Duration::from_millis(100), "left the pool after {left:?}");
    assert_eq!(failed, 0, "{errors:?}");
}

/// The user's scenario with a Wasm check: containers labelled `SERVICE_CHECK_WASM=http_json`
/// enter the proxy pool once the plugin sees `{"status":"UP"}`, and one whose /health turns
/// DOWN leaves it, while the other keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_label_check_takes_a_sick_container_out_of_the_pool() {
    demo_image().await;
    let plugins = plugins::guests::build_guest_plugins().unwrap_or_else(|e| panic!("{e}"));
    let proxy_port = free_port();
    let proxy_addr = format!("127.0.0.1:{proxy_port}");
    let plugin_dir = plugins.display().to_string();
    let (_agent, api) = docker_agent(&["--proxy-addr", &proxy_addr, "--plugin-dir", &plugin_dir]).await;
    let p = unique("wc");
    let labels = |name: &str| {
        Container::run(
            &format!("{p}-{name}"),
            &[
                "-p",
                "127.0.0.1::8080",
                "-l",
                "SERVICE_NAME=sickweb",
                "-l",
                "SERVICE_CHECK_WASM=http_json",
                "-l",
                "SERVICE_CHECK_WASM_CONFIG=/health",
                "-l",
                "SERVICE_CHECK_INTERVAL=300ms",
            ],
        )
    };
    let (a, _b) = (labels("a"), labels("b"));
    wait_for("both containers passing", Duration::from_secs(20), || async {
        api.get_json("/v1/health/service/sickweb?passing").await.0.as_array().map(Vec::len) == Some(2)
    })
    .await;
    let client = reqwest::Client::new();
    let get = || async {
        let r = client
            .get(format!("http://{proxy_addr}/"))
            .header("host", "sickweb.localhost")
            .send()
            .await
            .expect("proxy request");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    let answers = || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let (status, body) = get().await;
            assert_eq!(status, 200, "{body}");
            seen.insert(body);
        }
        seen
    };
    let seen = answers().await;
    assert_eq!(seen.len(), 2, "both containers answer: {seen:?}");

    // Make container a sick: its /health now says DOWN.
    let published = docker(&["port", &a.name, "8080/tcp"]);
    let port = published.lines().next().and_then(|l| l.rsplit(':').next()).unwrap_or("").to_string();
    let sick_at = Instant::now();
    let r = client.get(format!("http://127.0.0.1:{port}/toggle-health")).send().await.expect("toggle");
    assert!(r.status().is_success());
    let check_id = format!("service:node-1:{}:8080", a.name);
    wait_for("container a critical", Duration::from_secs(5), || async {
        let (checks, _) = api.get_json("/v1/agent/checks").await;
        checks[&check_id]["Status"] == "critical"
    })
    .await;
    let left = sick_at.elapsed();
    let (checks, _) = api.get_json("/v1/agent/checks").await;
    let output = checks[&check_id]["Output"].as_str().unwrap_or("").to_string();
    assert!(output.contains("DOWN"), "{output}");
    assert_eq!(checks[&check_id]["Type"], "wasm");
    let after = answers().await;
    assert_eq!(after.len(), 1, "only the healthy container answers: {after:?}");
    println!("docker+wasm: a container whose /health said DOWN was critical {left:?} later (300ms interval)");
}
