//! The seed tutorials' own command sequences with `consul` replaced by `wharf`
//! (`../shared/seeds/000` and `003`), run through bash as a user pastes them, checking what
//! each tutorial shows.
//!
//! What the test changes, and nothing else: ports another agent already holds are freed by
//! environment variables (`WHARF_HTTP_PORT`, `WHARF_DNS_PORT`, `WHARF_PROXY_ADDR`,
//! `CONSUL_HTTP_ADDR`); the tutorials' hosts (192.168.100.x) become loopback addresses
//! (127.0.0.x), their directories (`/etc/consul.d`, `/tmp/consul`) temp dirs, and the
//! Docker watcher is off (`WHARF_DOCKER=off`) so other tests' containers stay out. The
//! tutorials' own ports (8500, 8600, 8300) are used as given, so the seed tests take turns.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;

use crate::harness::{BIN, free_port, wait_for};

/// The seed tests use the tutorials' fixed ports: one at a time.
static FIXED_PORTS: Mutex<()> = Mutex::const_new(());

/// A shell where `wharf` is on the PATH, with the test's environment.
struct Shell {
    bin_dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

/// An agent started from a tutorial's command line; killed when dropped.
struct Background {
    child: Child,
    log: PathBuf,
}

impl Background {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn interrupt(&self) {
        let status = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Shell {
    fn new(env: &[(&str, &str)]) -> Shell {
        let bin_dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(BIN, bin_dir.path().join("wharf")).expect("symlink wharf");
        Shell { bin_dir, env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    fn command(&self, line: &str, extra_env: &[(&str, &str)]) -> Command {
        let path = format!("{}:{}", self.bin_dir.path().display(), std::env::var("PATH").unwrap_or_default());
        let mut c = Command::new("bash");
        c.args(["-c", line])
            .env("PATH", path)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra_env.iter().copied());
        c
    }

    /// Runs one command line to completion; returns stdout, failing the test on a non-zero exit.
    fn run(&self, line: &str, extra_env: &[(&str, &str)]) -> String {
        let out = self.command(line, extra_env).output().expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "`{line}` failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// Starts a long-running command line (an agent) with its output in `log`.
    fn spawn(&self, line: &str, extra_env: &[(&str, &str)], log: &Path) -> Background {
        let file = std::fs::File::create(log).expect("log file");
        let child = self
            .command(&format!("exec {line}"), extra_env)
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        Background { child, log: log.to_path_buf() }
    }
}

async fn get_json(url: &str) -> Option<Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

async fn wait_leader(http: &str, agent: &Background) {
    let url = format!("http://{http}/v1/status/leader");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if get_json(&url).await.and_then(|v| v.as_str().map(|s| !s.is_empty())).unwrap_or(false) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no leader at {http}; log:\n{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether dig's output has the record `NAME TTL CLASS TYPE DATA...` (whitespace as dig
/// aligns it does not matter).
fn has_record(dig: &str, record: &str) -> bool {
    let want: Vec<&str> = record.split_whitespace().collect();
    dig.lines().filter(|l| !l.starts_with(';')).any(|l| l.split_whitespace().eq(want.iter().copied()))
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname").trim().to_string()
}

/// Seed 003, parts B and C: a dev agent, members, nodes, node DNS; a service from a config
/// dir answered by DNS (A, SRV, tag) and the HTTP API.
#[tokio::test]
async fn seed_003_dev_agent_members_and_dns() {
    let _turn = FIXED_PORTS.lock().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let proxy = format!("127.0.0.1:{}", free_port());
    let data = tmp.path().join("dev-data");
    let sh = Shell::new(&[
        ("WHARF_DATA_DIR", data.to_str().expect("utf8")),
        ("WHARF_PROXY_ADDR", &proxy),
        ("WHARF_DOCKER", "off"),
    ]);
    let host = hostname();

    // 003-02 .. 003-06
    let agent = sh.spawn("wharf agent -dev", &[], &tmp.path().join("dev.log"));
    wait_leader("127.0.0.1:8500", &agent).await;
    let members = sh.run("wharf members", &[]);
    let rows: Vec<&str> = members.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "exactly one member (self):\n{members}");
    assert!(rows[0].contains(&host) && rows[0].contains("alive") && rows[0].contains("server"), "{members}");
    let detailed = sh.run("wharf members -detailed", &[]);
    let header: Vec<&str> = detailed.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["Node", "Address", "Status", "Tags"], "{detailed}");
    assert!(detailed.contains("role=consul") && detailed.contains("dc=dc1"), "{detailed}");
    let nodes = sh.run("curl localhost:8500/v1/catalog/nodes", &[]);
    let nodes: Value = serde_json::from_str(&nodes).expect("JSON");
    assert_eq!(nodes[0]["Node"], host.as_str(), "{nodes}");
    assert_eq!(nodes[0]["Address"], "127.0.0.1", "{nodes}");
    let dig = sh.run(&format!("dig @127.0.0.1 -p 8600 {host}.node.consul"), &[]);
    assert!(dig.contains("status: NOERROR") && dig.contains("ANSWER: 1"), "{dig}");
    assert!(has_record(&dig, &format!("{host}.node.consul. 0 IN A 127.0.0.1")), "{dig}");
    // 003-07: Ctrl-C stops the agent.
    agent.interrupt();
    let mut agent = agent;
    let stopped = {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(_)) = agent.child.try_wait() {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(stopped, "the agent did not stop on SIGINT; log:\n{}", agent.log_text());

    // 003-08 .. 003-15, with /etc/consul.d in a temp dir.
    let conf = tmp.path().join("consul.d");
    let conf = conf.to_str().expect("utf8");
    sh.run(&format!("mkdir {conf}"), &[]);
    sh.run(
        &format!(r#"echo '{{"service": {{"name": "web", "tags": ["rails"], "port": 80}}}}' | tee {conf}/web.json"#),
        &[],
    );
    let agent = sh.spawn(&format!("wharf agent -dev -config-dir={conf}"), &[], &tmp.path().join("dev2.log"));
    wait_leader("127.0.0.1:8500", &agent).await;
    wait_for("web in the catalog", Duration::from_secs(10), || async {
        get_json("http://127.0.0.1:8500/v1/catalog/service/web").await.is_some_and(|v| v[0]["ServicePort"] == 80)
    })
    .await;
    let a = sh.run("dig @127.0.0.1 -p 8600 web.service.consul", &[]);
    assert!(a.contains("status: NOERROR") && has_record(&a, "web.service.consul. 0 IN A 127.0.0.1"), "{a}");
    let srv = sh.run("dig @127.0.0.1 -p 8600 web.service.consul SRV", &[]);
    assert!(has_record(&srv, &format!("web.service.consul. 0 IN SRV 1 1 80 {host}.node.dc1.consul.")), "{srv}");
    assert!(has_record(&srv, &format!("{host}.node.dc1.consul. 0 IN A 127.0.0.1")), "{srv}");
    let tagged = sh.run("dig @127.0.0.1 -p 8600 rails.web.service.consul", &[]);
    assert!(has_record(&tagged, "rails.web.service.consul. 0 IN A 127.0.0.1"), "{tagged}");
    let catalog: Value =
        serde_json::from_str(&sh.run("curl -s http://localhost:8500/v1/catalog/service/web", &[])).expect("JSON");
    assert_eq!(catalog[0]["ServiceTags"], serde_json::json!(["rails"]), "{catalog}");
    let health: Value =
        serde_json::from_str(&sh.run("curl -s 'http://localhost:8500/v1/health/service/web?passing'", &[]))
            .expect("JSON");
    assert_eq!(health.as_array().map(Vec::len), Some(1), "{health}");
    assert_eq!(health[0]["Checks"][0]["CheckID"], "serfHealth", "{health}");
    assert_eq!(health[0]["Checks"][0]["Output"], "Agent alive and reachable", "{health}");
}

/// Seed 003, parts D to F: a server and a client started as the tutorial starts them,
/// `join`, members of both, node DNS across them, a legacy script check from a config dir
/// with `reload`, the KV walk-through with `-cas`, and `leave`.
#[tokio::test]
async fn seed_003_two_agents_join_checks_kv_and_leave() {
    let _turn = FIXED_PORTS.lock().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = |name: &str| {
        let p = tmp.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p.to_str().expect("utf8").to_string()
    };
    let (data1, data2, conf1, conf2) = (dir("one-data"), dir("two-data"), dir("one-consul.d"), dir("two-consul.d"));
    let sh = Shell::new(&[("WHARF_DOCKER", "off")]);
    // agent-one is the tutorial's first VM (8500, 8600); agent-two's ports are freed.
    let one_env = [("WHARF_PROXY_ADDR", format!("127.0.0.1:{}", free_port()))];
    let two_http = format!("127.0.0.1:{}", free_port());
    let two_env = [
        ("WHARF_PROXY_ADDR", format!("127.0.0.1:{}", free_port())),
        ("WHARF_HTTP_PORT", two_http.rsplit(':').next().unwrap_or_default().to_string()),
        ("WHARF_DNS_PORT", free_port().to_string()),
        ("CONSUL_HTTP_ADDR", two_http.clone()),
    ];
    let (one, two) = (refs(&one_env), refs(&two_env));

    // 003-17, 003-18
    let agent_one = sh.spawn(
        &format!(
            "wharf agent -server -bootstrap-expect=1 -data-dir={data1} -node=agent-one -bind=127.0.0.101 \
             -enable-script-checks=true -config-dir={conf1}"
        ),
        &one,
        &tmp.path().join("one.log"),
    );
    let agent_two = sh.spawn(
        &format!(
            "wharf agent -data-dir={data2} -node=agent-two -bind=127.0.0.102 -enable-script-checks=true \
             -config-dir={conf2}"
        ),
        &two,
        &tmp.path().join("two.log"),
    );
    wait_leader("127.0.0.1:8500", &agent_one).await;
    wait_leader(&two_http, &agent_two).await;
    // Two one-agent clusters: each sees only itself.
    for (env, name) in [(&one, "agent-one"), (&two, "agent-two")] {
        let members = sh.run("wharf members", env);
        assert_eq!(members.lines().count(), 2, "one member on {name}:\n{members}");
        assert!(members.contains(name), "{members}");
    }

    // 003-19, on the second VM.
    let joined = sh.run("wharf join 127.0.0.101", &two);
    assert_eq!(joined.trim(), "Successfully joined cluster by contacting 1 nodes.");
    // 003-21
    wait_for("both members on both agents", Duration::from_secs(30), || async {
        let a = sh.run("wharf members", &one);
        let b = sh.command("wharf members", &two).output().map(|o| String::from_utf8_lossy(&o.stdout).to_string());
        let both = |t: &str| {
            t.lines().any(|l| l.starts_with("agent-one") && l.contains("127.0.0.101") && l.contains("server"))
                && t.lines().any(|l| l.starts_with("agent-two") && l.contains("127.0.0.102") && l.contains("client"))
        };
        both(&a) && b.is_ok_and(|b| both(&b))
    })
    .await;
    // 003-23, on agent-one.
    let dig = sh.run("dig @127.0.0.1 -p 8600 agent-two.node.consul", &one);
    assert!(has_record(&dig, "agent-two.node.consul. 0 IN A 127.0.0.102"), "{dig}");

    // 003-26, 003-27: a legacy "script" check on the second node, then reload.
    sh.run(
        &format!(
            r#"echo '{{"service": {{"name": "web", "tags": ["rails"], "port": 80, "check": {{"script": "curl localhost >/dev/null 2>&1", "interval": "10s"}}}}}}' >{conf2}/web.json"#
        ),
        &two,
    );
    assert_eq!(sh.run("wharf reload", &two).trim(), "Configuration reload triggered");
    // 003-28, on either node: the check is there, run through the shell.
    wait_for("service:web in health/state/any on agent-one", Duration::from_secs(10), || async {
        get_json("http://127.0.0.1:8500/v1/health/checks/web").await.is_some_and(|v| {
            v.as_array().is_some_and(|a| {
                a.iter().any(|c| c["CheckID"] == "service:web" && c["Node"] == "agent-two" && c["ServiceName"] == "web")
            })
        })
    })
    .await;
    let checks = sh.run("curl -s http://localhost:8500/v1/health/checks/web", &one);
    let checks: Value = serde_json::from_str(&checks).expect("JSON");
    assert_eq!(checks[0]["Definition"]["Args"], serde_json::json!(["/bin/sh", "-c", "curl localhost >/dev/null 2>&1"]));

    // 003-30 .. 003-45, on agent-one.
    let kv = |line: &str| sh.command(line, &one).output().expect("run");
    let missing = kv("wharf kv get redis/config/minconns");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("No key exists at: redis/config/minconns"));
    assert_eq!(
        sh.run("wharf kv put redis/config/minconns 1", &one).trim(),
        "Success! Data written to: redis/config/minconns"
    );
    sh.run("wharf kv put redis/config/maxconns 25", &one);
    assert_eq!(
        sh.run("wharf kv put -flags=42 redis/config/users/admin abcd1234", &one).trim(),
        "Success! Data written to: redis/config/users/admin"
    );
    assert_eq!(sh.run("wharf kv get redis/config/minconns", &one), "1\n");
    let detailed = sh.run("wharf kv get -detailed redis/config/minconns", &one);
    for field in ["CreateIndex", "Flags", "Key", "LockIndex", "ModifyIndex", "Session", "Value"] {
        assert!(detailed.lines().any(|l| l.starts_with(field)), "{field} in:\n{detailed}");
    }
    assert_eq!(
        sh.run("wharf kv get -recurse", &one),
        "redis/config/maxconns:25\nredis/config/minconns:1\nredis/config/users/admin:abcd1234\n"
    );
    assert_eq!(
        sh.run("wharf kv delete redis/config/minconns", &one).trim(),
        "Success! Deleted key: redis/config/minconns"
    );
    assert_eq!(sh.run("wharf kv delete -recurse redis", &one).trim(), "Success! Deleted keys with prefix: redis");
    sh.run("wharf kv put foo bar", &one);
    assert_eq!(sh.run("wharf kv get foo", &one), "bar\n");
    sh.run("wharf kv put foo zip", &one);
    let detailed = sh.run("wharf kv get -detailed foo", &one);
    let index = detailed
        .lines()
        .find_map(|l| l.strip_prefix("ModifyIndex"))
        .map(|v| v.trim().to_string())
        .expect("ModifyIndex line");
    let cas = format!("wharf kv put -cas -modify-index={index} foo bar");
    assert_eq!(sh.run(&cas, &one).trim(), "Success! Data written to: foo");
    let again = kv(&cas);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("Error! Did not write to foo: CAS failed"));

    // 003-24: the client leaves gracefully; its node and service leave the catalog.
    assert_eq!(sh.run("wharf leave", &two).trim(), "Graceful leave complete");
    wait_for("agent-two gone from the catalog", Duration::from_secs(2), || async {
        get_json("http://127.0.0.1:8500/v1/catalog/node/agent-two").await.is_some_and(|v| v.is_null())
    })
    .await;
    let services = sh.run("wharf catalog services", &one);
    assert!(!services.lines().any(|l| l.trim() == "web"), "web left with its node:\n{services}");
    drop(agent_two);
    drop(agent_one);
}

/// Seed 000: one server in bootstrap mode with the UI flag, members, `info | grep leader`,
/// the catalog and status endpoints, and consul-template's run with `-consul-addr`
/// (`wharf template`) following a new instance.
#[tokio::test]
async fn seed_000_bootstrap_server_status_and_template() {
    let _turn = FIXED_PORTS.lock().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("consul-data");
    let data = data.to_str().expect("utf8");
    let sh = Shell::new(&[("WHARF_PROXY_ADDR", &format!("127.0.0.1:{}", free_port())), ("WHARF_DOCKER", "off")]);

    // 000-03, as the tutorial means it (its scraped text lost the `=` signs).
    let agent = sh.spawn(
        &format!("wharf agent -server -bootstrap -ui -data-dir={data} -bind=127.0.0.131 -client=0.0.0.0 -node=consul-server01"),
        &[],
        &tmp.path().join("consul.log"),
    );
    wait_leader("127.0.0.1:8500", &agent).await;
    assert!(agent.log_text().contains("the web UI is not part of this build yet"), "-ui is not silently ignored");
    // 000-04 .. 000-11
    let members = sh.run("wharf members", &[]);
    assert!(
        members
            .lines()
            .any(|l| l.starts_with("consul-server01") && l.contains("127.0.0.131:8301") && l.contains("alive")),
        "{members}"
    );
    let leader = sh.run("wharf info | grep leader", &[]);
    assert!(leader.contains("leader = true") && leader.contains("leader_addr = 127.0.0.131:8300"), "{leader}");
    wait_for("the consul service", Duration::from_secs(10), || async {
        sh.run("wharf catalog services", &[]).lines().any(|l| l.trim() == "consul")
    })
    .await;
    assert_eq!(sh.run("curl -s 127.0.0.1:8500/v1/status/peers", &[]), r#"["127.0.0.131:8300"]"#);
    assert_eq!(sh.run("curl -s 127.0.0.1:8500/v1/status/leader", &[]), r#""127.0.0.131:8300""#);
    let services: Value =
        serde_json::from_str(&sh.run("curl -s 127.0.0.1:8500/v1/catalog/services", &[])).expect("JSON");
    assert!(services.get("consul").is_some(), "{services}");
    let nodes: Value = serde_json::from_str(&sh.run("curl -s 127.0.0.1:8500/v1/catalog/nodes", &[])).expect("JSON");
    assert_eq!(nodes[0]["Node"], "consul-server01", "{nodes}");

    // Two Tomcat instances registered (as Registrator does), the template run as 000-48
    // runs consul-template, then a third instance (000-52) appears in the file.
    let register = |id: &str, port: u16| {
        sh.run(
            &format!(
                r#"curl -s -X PUT -d '{{"ID": "{id}", "Name": "tomcat", "Address": "127.0.0.132", "Port": {port}}}' 127.0.0.1:8500/v1/agent/service/register"#
            ),
            &[],
        )
    };
    register("huyang2-t1", 8001);
    register("huyang2-t2", 8002);
    let tpl = tmp.path().join("nginx.tmp");
    let out = tmp.path().join("crushlinux.conf");
    std::fs::write(
        &tpl,
        "upstream tomcat {\n{{range service \"tomcat\"}}  server {{.Address}}:{{.Port}};\n{{end}}}\nserver {\n  listen 8080;\n  location / { proxy_pass http://tomcat; }\n}\n",
    )
    .expect("write template");
    let _renderer = sh.spawn(
        &format!(
            "wharf template -consul-addr 127.0.0.1:8500 -template {}:{} --log-level=info",
            tpl.display(),
            out.display()
        ),
        &[],
        &tmp.path().join("template.log"),
    );
    let rendered = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_for("two upstreams rendered", Duration::from_secs(15), || async {
        let t = rendered();
        t.contains("server 127.0.0.132:8001;") && t.contains("server 127.0.0.132:8002;")
    })
    .await;
    register("huyang2-t3", 8003);
    wait_for("the third instance rendered", Duration::from_secs(15), || async {
        rendered().contains("server 127.0.0.132:8003;")
    })
    .await;
}
