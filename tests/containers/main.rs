//! The seed tutorials that run wharf in containers, on the real Docker engine with images
//! built here (`demo/build-images.sh --wharf`): seed 001 (`docker-compose up` and
//! `docker-compose scale web=3` behind the front door) and seed 004 (three hosts started
//! with `-bootstrap-expect=3` and `-join`, DNS on port 53 answering `consul.service.consul`
//! with every server, and recursing for other names).
//!
//! `cluster`: issue 14's cluster of three servers and two clients across containers, under
//! kills, leaves, leader loss and a partition.
//!
//! Its own test binary, so cargo runs it alone: building the release image would otherwise
//! load the machine under the timing-sensitive end-to-end tests.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod bench_faults;
mod bench_writes;
mod cluster;
mod history;
mod large;

/// One container test at a time: each runs several agents whose timing it measures.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn sh(line: &str) -> Output {
    Command::new("bash").args(["-c", line]).output().expect("run bash")
}

fn ok(line: &str) -> String {
    let out = sh(line);
    assert!(
        out.status.success(),
        "`{line}` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Builds wharf:latest and the demo images once per run.
fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        ok(&format!("{}/demo/build-images.sh --wharf", repo().display()));
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether dig's output has an A record `name -> ip` (however dig aligns its columns).
fn has_a(dig: &str, name: &str, ip: &str) -> bool {
    dig.lines().filter(|l| !l.starts_with(';')).any(|l| {
        let t: Vec<&str> = l.split_whitespace().collect();
        t.len() == 5 && t[0] == name && t[2] == "IN" && t[3] == "A" && t[4] == ip
    })
}

fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl").args(["-sf", "--max-time", "3", url]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// `docker-compose down` for a project when dropped, whatever happened.
struct Compose<'a> {
    dir: &'a Path,
    env: Vec<(String, String)>,
}

impl Compose<'_> {
    fn command(&self, args: &str) -> Command {
        let mut c = Command::new("bash");
        c.args(["-c", &format!("docker-compose {args}")]).current_dir(self.dir);
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }
}

impl Drop for Compose<'_> {
    fn drop(&mut self) {
        let _ = self.command("down -v --timeout 2").stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Seed 001: `sudo docker-compose up`, then `sudo docker-compose scale web=3`; the front
/// door answers from one web container, then from three.
#[test]
fn seed_001_compose_up_and_scale_web_to_3() {
    let _serial = serial();
    images();
    // The stand-in for yeasy/simple-web: the demo server on port 80.
    ok(
        "printf 'FROM wharf-demo-web:latest\\nENV PORT=80\\n' | docker build -q -t yeasy/simple-web:latest - >/dev/null",
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("seed001");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(repo().join("tests/seeds/001-docker-compose.yml"), dir.join("docker-compose.yml")).expect("copy");
    let (port, api) = (free_port(), free_port());
    let compose = Compose {
        dir: &dir,
        env: vec![("WHARF_PORT".into(), port.to_string()), ("WHARF_API_PORT".into(), api.to_string())],
    };
    let log = std::fs::File::create(tmp.path().join("up.log")).expect("log");
    // 001-01, in the foreground as the seed runs it.
    let mut up =
        compose.command("up").stdout(log.try_clone().expect("dup")).stderr(log).spawn().expect("docker-compose up");
    let up_log = || std::fs::read_to_string(tmp.path().join("up.log")).unwrap_or_default();
    let url = format!("http://127.0.0.1:{port}/");
    wait_for(
        "the front door to answer from web",
        Duration::from_secs(90),
        || curl(&url).is_some_and(|b| b.starts_with("hello from")),
        up_log,
    );

    // 001-02
    let out = compose.command("scale web=3").output().expect("docker-compose scale");
    assert!(out.status.success(), "scale failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut seen = std::collections::BTreeSet::new();
    wait_for(
        "three web containers behind the front door",
        Duration::from_secs(60),
        || {
            if let Some(b) = curl(&url) {
                seen.insert(b.split_whitespace().nth(2).unwrap_or_default().to_string());
            }
            seen.len() == 3
        },
        up_log,
    );
    let health = curl(&format!("http://127.0.0.1:{api}/v1/health/service/my-web-server?passing")).unwrap_or_default();
    let instances: serde_json::Value = serde_json::from_str(&health).expect("health JSON");
    assert_eq!(instances.as_array().map(Vec::len), Some(3), "{instances}");
    drop(compose);
    let _ = up.wait();
}

/// Containers on a private Docker network of their own, all removed (and the network)
/// when dropped. Container names are `HOST_TAG`.
struct Net {
    network: String,
    tag: String,
    names: Vec<String>,
}

impl Net {
    /// Creates the network `wharf-WHAT-TAG` on `SUBNET.0/24`.
    fn create(what: &str, tag: String, subnet: &str) -> Net {
        let network = format!("wharf-{what}-{tag}");
        ok(&format!("docker network create --subnet {subnet}.0/24 {network}"));
        Net { network, tag, names: Vec::new() }
    }

    /// The container name of `host` in this run.
    fn name(&self, host: &str) -> String {
        format!("{host}_{}", self.tag)
    }

    /// The last lines of every container's log, for a failure's message.
    fn logs(&self) -> String {
        self.names
            .iter()
            .map(|n| {
                format!("== {n}\n{}", String::from_utf8_lossy(&sh(&format!("docker logs --tail 40 {n} 2>&1")).stdout))
            })
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = sh(&format!("docker rm -f {n}"));
        }
        let _ = sh(&format!("docker network rm {}", self.network));
    }
}

/// Removes seed 004's containers and network when dropped.
struct Hosts {
    network: String,
    names: Vec<String>,
    image: String,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = sh(&format!("docker rm -f {n}"));
        }
        let _ = sh(&format!("docker network rm {}", self.network));
        let _ = sh(&format!("docker rmi {}", self.image));
    }
}

/// Seed 004: the Docker Book's image (`ENTRYPOINT agent -config-dir=/config` with its
/// consul.json: data dir, client 0.0.0.0, DNS on 53, a recursor) built FROM wharf:latest;
/// host1 with `-server -advertise=$PUBLIC_IP -bootstrap-expect=3`, host2 and host3 with
/// `-server -advertise=$PUBLIC_IP -join=$JOIN_IP`, each a container with its own address on
/// a private network; `dig @host consul.service.consul` lists all three, and a name outside
/// `.consul` is answered through the recursor (a fourth wharf serving `.example`).
#[test]
fn seed_004_three_hosts_joined_dns_on_53_and_recursion() {
    let _serial = serial();
    images();
    let tag = format!("{}", std::process::id());
    let subnet = "172.30.77";
    let hosts = Hosts {
        network: format!("wharf-seed004-{tag}"),
        names: ["host1", "host2", "host3", "upstream"].iter().map(|h| format!("{h}_agent_{tag}")).collect(),
        image: format!("acqua/wharf:{tag}"),
    };
    ok(&format!("docker network create --subnet {subnet}.0/24 {}", hosts.network));
    let build = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        build.path().join("consul.json"),
        format!(r#"{{"data_dir": "/data", "ui_dir": "/webui", "client_addr": "0.0.0.0", "ports": {{"dns": 53}}, "recursor": "{subnet}.53"}}"#),
    )
    .expect("write consul.json");
    std::fs::write(
        build.path().join("Dockerfile"),
        "FROM wharf:latest\nADD consul.json /config/\nENTRYPOINT [\"/bin/wharf\", \"agent\", \"-config-dir=/config\"]\nCMD []\n",
    )
    .expect("write Dockerfile");
    ok(&format!("docker build -q -t acqua/wharf:{tag} {} >/dev/null", build.path().display()));

    // The upstream DNS server the recursor points at: a wharf answering `.example`.
    ok(&format!(
        "docker run -d -h upstream --network {} --ip {subnet}.53 --name {} --entrypoint /bin/wharf wharf:latest \
         agent -dev -client 0.0.0.0 -dns-port 53 -domain example -node upstream",
        hosts.network, hosts.names[3]
    ));
    let run = |host: &str, ip: &str, name: &str, extra: &str| {
        ok(&format!(
            "PUBLIC_IP={ip}; JOIN_IP={subnet}.22; docker run -d -h {host} --network {} --ip {ip} --name {name} acqua/wharf:{tag} -server -advertise=$PUBLIC_IP {extra}",
            hosts.network
        ))
    };
    run("host1", &format!("{subnet}.22"), &hosts.names[0], "-bootstrap-expect=3");
    run("host2", &format!("{subnet}.16"), &hosts.names[1], "-join=$JOIN_IP");
    run("host3", &format!("{subnet}.17"), &hosts.names[2], "-join=$JOIN_IP");
    let logs = || {
        hosts
            .names
            .iter()
            .map(|n| format!("== {n}\n{}", String::from_utf8_lossy(&sh(&format!("docker logs {n} 2>&1")).stdout)))
            .collect::<String>()
    };

    // 004-19
    let dig = |server: &str, name: &str| {
        String::from_utf8_lossy(&sh(&format!("dig @{server} {name} +time=2 +tries=1")).stdout).to_string()
    };
    wait_for(
        "consul.service.consul with all three servers",
        Duration::from_secs(60),
        || {
            let out = dig(&format!("{subnet}.22"), "consul.service.consul");
            out.contains("ANSWER: 3")
                && [".22", ".16", ".17"]
                    .iter()
                    .all(|ip| has_a(&out, "consul.service.consul.", &format!("{subnet}{ip}")))
        },
        logs,
    );
    let peers = curl(&format!("http://{subnet}.16:8500/v1/status/peers")).unwrap_or_default();
    assert!([".22", ".16", ".17"].iter().all(|ip| peers.contains(&format!("{subnet}{ip}:8300"))), "{peers}");

    // Recursion: a service registered on the upstream is found through host3.
    ok(&format!(
        r#"curl -sf -X PUT -d '{{"Name": "web", "Address": "{subnet}.80", "Port": 80}}' http://{subnet}.53:8500/v1/agent/service/register"#
    ));
    wait_for(
        "web.service.example through host3's recursor",
        Duration::from_secs(20),
        || {
            let out = dig(&format!("{subnet}.17"), "web.service.example");
            out.contains("status: NOERROR") && has_a(&out, "web.service.example.", &format!("{subnet}.80"))
        },
        logs,
    );
}
