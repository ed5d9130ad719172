//! Templates end to end: the built-in nginx and haproxy configs pass the real tools'
//! checks for 0, 1 and 20 instances, the rendered nginx really proxies, the seed's classic
//! nginx template renders unchanged, and the watch mode of `wharf template` (quiescence,
//! identical output, check command) and of `wharf agent --template`.
//!
//! nginx and haproxy are installed by scripts/test; a missing one fails these tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::{Agent, Api, BIN, Backend, backend_service, free_port, wait_for};

const CLASSIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/examples/nginx-classic.ctmpl");

fn tool(name: &str) -> Command {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().expect("run sh");
    assert!(
        found.status.success(),
        "{name} is not installed: run scripts/test, which installs nginx and haproxy (apt-get install nginx haproxy)"
    );
    Command::new(name)
}

fn ok(out: &Output, what: &str) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

/// `nginx -t` on `conf`, with pid, logs and temp files kept in `dir`.
fn nginx_test(conf: &Path, dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("logs")).expect("logs dir");
    let out = tool("nginx")
        .arg("-t")
        .args(["-p", &format!("{}/", dir.display())])
        .args(["-c", conf.to_str().expect("utf8")])
        .args(["-g", &format!("pid {}/nginx.pid; error_log {}/error.log;", dir.display(), dir.display())])
        .output()
        .expect("run nginx -t");
    ok(&out, &format!("nginx -t -c {}\n{}", conf.display(), std::fs::read_to_string(conf).unwrap_or_default()))
}

fn haproxy_check(conf: &Path) -> String {
    let out = tool("haproxy").args(["-c", "-f", conf.to_str().expect("utf8")]).output().expect("run haproxy -c");
    ok(&out, &format!("haproxy -c -f {}\n{}", conf.display(), std::fs::read_to_string(conf).unwrap_or_default()))
}

/// A child process killed (and reaped) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master takes its workers down with it (SIGKILL would
        // orphan them on the port).
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn register(api: &Api, body: serde_json::Value) {
    api.put_ok("/v1/agent/service/register", body.to_string()).await;
}

/// `count` passing instances spread over web, api and admin-ui, plus a `db` service whose
/// only instance is critical.
async fn populate(api: &Api, count: usize) {
    let services = ["web", "api", "admin-ui"];
    for i in 0..count {
        let name = services[i % services.len()];
        register(api, json!({"ID": format!("{name}-{i}"), "Name": name, "Address": "127.0.0.1", "Port": 20000 + i}))
            .await;
    }
    register(
        api,
        json!({"ID": "db-1", "Name": "db", "Address": "127.0.0.1", "Port": 5432,
               "Check": {"CheckID": "db-ttl", "TTL": "10m", "Status": "critical"}}),
    )
    .await;
}

fn export(agent: &Agent, args: &[&str]) -> String {
    let out = agent.cli(&[&["export"], args].concat());
    ok(&out, &format!("wharf export {}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn builtin_configs_pass_nginx_and_haproxy_for_0_1_and_20_instances() {
    for count in [0, 1, 20] {
        let agent = Agent::dev().await;
        let api = Api::new(&agent);
        populate(&api, count).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port().to_string();
        for (name, args) in [
            ("all", vec!["--listen", port.as_str()]),
            ("web-only", vec!["--listen", port.as_str(), "--service", "web"]),
            ("db-only", vec!["--service", "db", "--listen", "127.0.0.1:8081"]),
        ] {
            let nginx = export(&agent, &[&["nginx"], args.as_slice()].concat());
            assert!(!nginx.contains("upstream db"), "an empty pool must not become an upstream:\n{nginx}");
            if name == "all" {
                assert_eq!(nginx.matches("upstream ").count(), count.min(3), "{nginx}");
                assert_eq!(nginx.matches(" max_fails=3").count(), count, "{nginx}");
                assert!(nginx.contains("return 503 \"no healthy instance of service db\\n\";"), "{nginx}");
            }
            let conf = dir.path().join(format!("nginx-{count}-{name}.conf"));
            std::fs::write(&conf, &nginx).expect("write nginx.conf");
            nginx_test(&conf, &dir.path().join(format!("nginx-{count}-{name}")));

            let haproxy = export(&agent, &[&["haproxy"], args.as_slice()].concat());
            if name == "all" {
                assert_eq!(haproxy.matches("\n    server ").count(), count, "{haproxy}");
                assert!(
                    haproxy.contains("backend svc_db\n    balance roundrobin\n    http-request return status 503"),
                    "{haproxy}"
                );
            }
            let conf = dir.path().join(format!("haproxy-{count}-{name}.cfg"));
            std::fs::write(&conf, &haproxy).expect("write haproxy.cfg");
            haproxy_check(&conf);
        }
    }
}

#[tokio::test]
async fn rendered_nginx_proxies_to_the_backends() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    let b1 = Backend::start("one").await;
    let b2 = Backend::start("two").await;
    for b in [&b1, &b2] {
        api.put_ok("/v1/agent/service/register", backend_service(b, "web", json!({}))).await;
    }
    register(
        &api,
        json!({"ID": "db-1", "Name": "db", "Address": "127.0.0.1", "Port": 1,
                          "Check": {"CheckID": "db-ttl", "TTL": "10m", "Status": "critical"}}),
    )
    .await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let conf_text = export(&agent, &["nginx", "--listen", &listen]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("logs")).expect("logs");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, conf_text).expect("write");
    let d = dir.path().display();
    let _nginx = Guard(
        tool("nginx")
            .args(["-p", &format!("{d}/"), "-c", conf.to_str().expect("utf8")])
            .args(["-g", &format!("daemon off; pid {d}/nginx.pid; error_log {d}/error.log;")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    let http = reqwest::Client::new();
    let url = format!("http://{listen}/hello");
    let get = |host: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(&url).header("Host", host).send().await.ok()?;
            let status = r.status().as_u16();
            Some((status, r.text().await.ok()?))
        }
    };
    wait_for("nginx to answer", Duration::from_secs(10), || async { get("web.localhost").await.is_some() }).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let (status, body) = get("web.localhost").await.expect("proxied request");
        assert_eq!(status, 200, "{body}");
        seen.insert(body);
    }
    assert_eq!(seen, ["one /hello".to_string(), "two /hello".to_string()].into(), "both backends serve");
    let (status, body) = get("db").await.expect("db request");
    assert_eq!((status, body.as_str()), (503, "no healthy instance of service db\n"));
    let (status, _) = get("unknown.example").await.expect("default server");
    assert_eq!(status, 404);
    let r = http.get(format!("http://{listen}/headers")).header("Host", "web").send().await.expect("headers");
    let headers: serde_json::Value = r.json().await.expect("json");
    assert_eq!(headers["host"], "web");
    assert_eq!(headers["x-real-ip"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn classic_seed_template_renders_unchanged_and_nginx_accepts_it() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    let dir = tempfile::tempdir().expect("tempdir");
    let main_conf = dir.path().join("nginx.conf");
    let app_conf = dir.path().join("app.conf");
    std::fs::write(&main_conf, format!("events {{}}\nhttp {{\n    include {};\n}}\n", app_conf.display()))
        .expect("write");
    for (round, instances) in [(0, 0), (1, 2)] {
        for i in 0..instances {
            register(&api, json!({"ID": format!("web-{i}"), "Name": "web", "Address": "127.0.0.1", "Port": 9000 + i}))
                .await;
        }
        let spec = format!("{CLASSIC}:{}", app_conf.display());
        let out = agent.cli(&["template", "-template", &spec, "-once"]);
        ok(&out, "wharf template -once");
        let rendered = std::fs::read_to_string(&app_conf).expect("rendered");
        if instances == 0 {
            assert!(rendered.contains("server 127.0.0.1:65535; # force a 502"), "{rendered}");
        } else {
            assert!(rendered.contains("server 127.0.0.1:9000 max_fails=3 fail_timeout=60 weight=1;"), "{rendered}");
            assert!(rendered.contains("server 127.0.0.1:9001 max_fails=3"), "{rendered}");
        }
        nginx_test(&main_conf, &dir.path().join(format!("run-{round}")));
    }
}

/// `wharf template` running in the background against `agent`, logging to a file.
fn start_renderer(agent: &Agent, dir: &Path, args: &[&str]) -> (Guard, PathBuf) {
    let log = dir.join("template.log");
    let child = Command::new(BIN)
        .args(["-http-addr", &agent.http_addr(), "--log-level", "debug", "template"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start wharf template");
    (Guard(child), log)
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn watch_mode_quiescence_and_identical_output() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("ports.ctmpl");
    let dst = dir.path().join("ports.txt");
    let count = dir.path().join("commands.log");
    std::fs::write(&src, "{{ range service \"web\" }}{{ .Port }}\n{{ end }}").expect("write template");
    let spec = format!("{}:{}:echo run >> {}", src.display(), dst.display(), count.display());
    let (_renderer, log) = start_renderer(&agent, dir.path(), &["-template", &spec, "-wait", "500ms:2s"]);
    wait_for("the first render", Duration::from_secs(10), || async { lines(&count) == 1 }).await;
    assert_eq!(read(&dst), "");

    // 100 changes within about a second.
    let started = std::time::Instant::now();
    for chunk in (0..100).collect::<Vec<_>>().chunks(10) {
        let regs = chunk.iter().map(|i| {
            let api = api.clone();
            let body = json!({"ID": format!("web-{i}"), "Name": "web", "Address": "127.0.0.1", "Port": 30000 + i});
            async move { api.put_ok("/v1/agent/service/register", body.to_string()).await }
        });
        futures::future::join_all(regs).await;
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "100 registrations took {took:?}");
    wait_for("all 100 instances in the file", Duration::from_secs(15), || async { lines(&dst) == 100 }).await;
    // Let any pending render happen before counting.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let renders = lines(&count) - 1;
    eprintln!("100 changes within {took:?} caused {renders} renders");
    assert!((1..=4).contains(&renders), "100 changes within {took:?} caused {renders} renders (expected a few)");

    // A change the template uses but whose output is identical: rendered, nothing run.
    let identical_before = read(&log).matches("Identical").count();
    register(&api, json!({"ID": "web-7", "Name": "web", "Address": "127.0.0.1", "Port": 30007, "Tags": ["new"]})).await;
    wait_for("a render with identical output", Duration::from_secs(10), || async {
        read(&log).matches("Identical").count() > identical_before
    })
    .await;
    // A change it does not use renders nothing at all.
    api.put_ok("/v1/kv/unrelated", "x").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(lines(&count) - 1, renders, "identical output must run no command");
    assert_eq!(lines(&dst), 100);
}

#[tokio::test]
async fn failing_check_keeps_the_old_file_and_failing_commands_do_not_stop_rendering() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("page.ctmpl");
    let dst = dir.path().join("page.txt");
    let count = dir.path().join("commands.log");
    std::fs::write(&src, "page={{ key \"page\" }}\n").expect("write template");
    std::fs::write(&dst, "old\n").expect("write old file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    // The command always fails; the renderer must carry on regardless.
    let spec = format!("{}:{}:echo run >> {}; exit 3", src.display(), dst.display(), count.display());
    let check = "! grep -q BAD {{tmp}}";
    let (_renderer, log) = start_renderer(&agent, dir.path(), &["-template", &spec, "-check-command", check]);

    // `key` waits for its key: nothing is written before it exists.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(read(&dst), "old\n");
    api.put_ok("/v1/kv/page", "good").await;
    wait_for("the first write", Duration::from_secs(10), || async { read(&dst) == "page=good\n" }).await;
    let mode = std::fs::metadata(&dst).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "permissions are kept");
    wait_for("the failing command to run", Duration::from_secs(10), || async { lines(&count) == 1 }).await;

    api.put_ok("/v1/kv/page", "BAD").await;
    wait_for("the check to refuse", Duration::from_secs(10), || async { read(&log).contains("refused the new") }).await;
    assert_eq!(read(&dst), "page=good\n", "a failing check keeps the old file");
    assert_eq!(lines(&count), 1);

    api.put_ok("/v1/kv/page", "better").await;
    wait_for("the next good write", Duration::from_secs(10), || async { read(&dst) == "page=better\n" }).await;
    wait_for("the command again", Duration::from_secs(10), || async { lines(&count) == 2 }).await;
    assert!(read(&log).contains("the renderer carries on"), "{}", read(&log));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[tokio::test]
async fn agent_renders_templates_from_its_own_catalog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("upstream.ctmpl");
    let dst = dir.path().join("upstream.conf");
    let count = dir.path().join("commands.log");
    std::fs::write(&src, "upstream web {\n{{- range service \"web\" }}\n  server {{ .Address }}:{{ .Port }};\n{{- else }}\n  server 127.0.0.1:65535 down;\n{{- end }}\n}\n")
        .expect("write template");
    let spec = format!("{}:{}:echo run >> {}", src.display(), dst.display(), count.display());
    let agent = Agent::dev_with(&["--template", &spec, "--template-wait", "100ms:500ms"]).await;
    let api = Api::new(&agent);
    wait_for("the first render", Duration::from_secs(10), || async { read(&dst).contains("65535 down") }).await;
    register(&api, json!({"ID": "web-1", "Name": "web", "Address": "127.0.0.1", "Port": 8080})).await;
    wait_for("the new instance", Duration::from_secs(10), || async {
        read(&dst) == "upstream web {\n  server 127.0.0.1:8080;\n}\n"
    })
    .await;
    api.put_ok("/v1/agent/service/deregister/web-1", "").await;
    wait_for("the empty pool again", Duration::from_secs(10), || async { read(&dst).contains("65535 down") }).await;
    // One command per change of the output: first render, instance added, instance gone.
    wait_for("three commands", Duration::from_secs(10), || async { lines(&count) == 3 }).await;
}

#[tokio::test]
async fn bad_templates_fail_loudly_with_their_position() {
    let agent = Agent::dev().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("bad.ctmpl");
    std::fs::write(&src, "ok\n  {{ servcie \"web\" }}\n").expect("write");
    let out = agent.cli(&[
        "template",
        "-template",
        &format!("{}:{}", src.display(), dir.path().join("o").display()),
        "-once",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.ctmpl:2:6") && err.contains("\"servcie\" not defined"), "{err}");
    // A runtime error names the template and position; with -once it is fatal.
    let src = dir.path().join("runtime.ctmpl");
    std::fs::write(&src, "first {{ index (service \"web\") 3 }}\n").expect("write");
    let out = agent.cli(&[
        "template",
        "-template",
        &format!("{}:{}", src.display(), dir.path().join("o").display()),
        "-once",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runtime.ctmpl:1:10") && err.contains("index out of range"), "{err}");
    assert!(!dir.path().join("o").exists(), "nothing is written");
    let out = agent.cli(&["template", "-template", "only-one-part"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SOURCE:DESTINATION"));
}

/// The upstreams_template plugin built from plugins/guest, copied into `dir`.
fn template_plugin(dir: &Path) -> PathBuf {
    let built = plugins::guests::build_guest_plugins().unwrap_or_else(|e| panic!("{e}"));
    let dst = dir.join("upstreams_template.wasm");
    std::fs::copy(built.join("upstreams_template.wasm"), &dst).expect("copy plugin");
    dst
}

#[tokio::test]
async fn wasm_template_plugin_renders_a_config_nginx_accepts() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    populate(&api, 4).await;
    api.put_ok("/v1/kv/wharf/tpl/owner", "team-a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = template_plugin(dir.path());
    let dst = dir.path().join("upstreams.conf");
    let spec = format!("{}:{}", src.display(), dst.display());
    let cfg = format!(r#"{}={{"listen": {}}}"#, src.display(), free_port());
    let out = agent.cli(&[
        "template",
        "-template",
        &spec,
        "-once",
        "-plugin-config",
        &cfg,
        "-plugin-kv-prefix",
        "wharf/tpl/",
    ]);
    ok(&out, "wharf template -once with a Wasm template plugin");
    let text = read(&dst);
    // Passing instances only: db's one instance is critical, so its pool is the placeholder.
    for want in [
        "upstream web {",
        "server 127.0.0.1:20000;",
        "server 127.0.0.1:20003;",
        "upstream api {",
        "server 127.0.0.1:20001;",
        "upstream db {",
        "server 127.0.0.1:65535 down;",
        "# kv wharf/tpl/owner = team-a",
        "return 503;",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(!text.contains(":5432"), "{text}");
    let main_conf = dir.path().join("nginx.conf");
    std::fs::write(&main_conf, format!("events {{}}\nhttp {{\n    include {};\n}}\n", dst.display()))
        .expect("write nginx.conf");
    nginx_test(&main_conf, &dir.path().join("run"));

    // A plugin error (its config is refused) fails -once with the plugin's words, and the
    // previous output stays in place.
    let bad = format!("{}={{\"no_such_field\": 1}}", src.display());
    let out = agent.cli(&["template", "-template", &spec, "-once", "-plugin-config", &bad]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstreams_template") && err.contains("no_such_field"), "{err}");
    assert_eq!(read(&dst), text);

    // A file that is not a template plugin is refused at start-up.
    let wrong = dir.path().join("echo.wasm");
    let built = plugins::guests::build_guest_plugins().unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(built.join("echo.wasm"), &wrong).expect("copy");
    let out = agent.cli(&["template", "-template", &format!("{}:{}", wrong.display(), dst.display()), "-once"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not export the template world"));
}

#[tokio::test]
async fn agent_keeps_a_wasm_template_up_to_date() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = template_plugin(dir.path());
    let dst = dir.path().join("upstreams.conf");
    let spec = format!("{}:{}", src.display(), dst.display());
    let cfg = format!(r#"{}={{"services": ["web"]}}"#, src.display());
    let agent = Agent::dev_with(&["--template", &spec, "--template-plugin-config", &cfg]).await;
    let api = Api::new(&agent);
    wait_for("the first render", Duration::from_secs(10), || async { read(&dst).contains("65535 down") }).await;
    register(&api, json!({"ID": "web-1", "Name": "web", "Address": "127.0.0.1", "Port": 8080})).await;
    wait_for("the new instance", Duration::from_secs(10), || async {
        let t = read(&dst);
        t.contains("server 127.0.0.1:8080;") && !t.contains("65535")
    })
    .await;
}

/// consul-template's `-exec`: the child starts after the first render, gets the reload
/// signal when the output changes, is restarted without one, and its exit status ends
/// `wharf template`.
#[tokio::test]
async fn exec_mode_supervises_a_child() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("kv.ctmpl");
    let dst = dir.path().join("kv.txt");
    let events = dir.path().join("events.log");
    std::fs::write(&src, "{{ key \"exec/value\" }}\n").expect("write template");
    api.put_ok("/v1/kv/exec/value", "one").await;
    let child = format!(
        "trap 'echo hup >> {ev}' HUP; echo start >> {ev}; while true; do sleep 0.05; done",
        ev = events.display()
    );
    let spec = format!("{}:{}", src.display(), dst.display());
    // Started under nohup: SIGHUP arrives ignored, and the child must still be able to trap it.
    let log = dir.path().join("template.log");
    let _r = Guard(
        Command::new("nohup")
            .arg(BIN)
            .args(["-http-addr", &agent.http_addr(), "--log-level", "debug", "template"])
            .args(["-template", &spec, "-exec", &child, "-exec-reload-signal", "SIGHUP"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start wharf template under nohup"),
    );
    wait_for("the child started after the first render", Duration::from_secs(10), || async {
        read(&events) == "start\n"
    })
    .await;
    assert_eq!(read(&dst), "one\n");
    api.put_ok("/v1/kv/exec/value", "two").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while read(&events) != "start\nhup\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload signal: events {:?}, output {:?}; renderer log:\n{}",
            read(&events),
            read(&dst),
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(_r);

    // Without a reload signal the child is restarted; its own exit ends wharf template.
    std::fs::remove_file(&events).expect("rm");
    let child = format!("echo start >> {ev}; sleep 30", ev = events.display());
    let (_r, _log2) =
        start_renderer(&agent, dir.path(), &["-template", &spec, "-exec", &child, "-exec-kill-timeout", "1s"]);
    wait_for("the first start", Duration::from_secs(10), || async { lines(&events) == 1 }).await;
    api.put_ok("/v1/kv/exec/value", "three").await;
    wait_for("the restart", Duration::from_secs(10), || async { lines(&events) == 2 }).await;
    drop(_r);
    let out = Command::new(BIN)
        .args(["-http-addr", &agent.http_addr(), "template", "-template", &spec, "-exec", "exit 3"])
        .output()
        .expect("run wharf template");
    assert_eq!(out.status.code(), Some(3), "the child's status: {}", String::from_utf8_lossy(&out.stderr));
    let bad = Command::new(BIN).args(["template", "-template", &spec, "-exec", "true", "-once"]).output().expect("run");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("drop -once"), "{bad:?}");
    let _ = log;
}

/// consul-template's `-dedup`: two renderers of the same template, one renders and the
/// other copies its output (running its own command); when the renderer stops, the other
/// takes over.
#[tokio::test]
async fn dedup_renders_once_and_fails_over() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("dedup.ctmpl");
    std::fs::write(&src, "{{ key \"dedup/value\" }}\n").expect("write template");
    api.put_ok("/v1/kv/dedup/value", "one").await;
    let runs = dir.path().join("runs.log");
    let spec = |who: &str| {
        format!(
            "{}:{}:echo {who} >> {}",
            src.display(),
            dir.path().join(format!("{who}.txt")).display(),
            runs.display()
        )
    };
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).expect("mkdir");
    std::fs::create_dir_all(&b_dir).expect("mkdir");
    let (a, a_log) = start_renderer(&agent, &a_dir, &["-template", &spec("a"), "-dedup"]);
    wait_for("a renders", Duration::from_secs(10), || async { read(&dir.path().join("a.txt")) == "one\n" }).await;
    let (b, b_log) = start_renderer(&agent, &b_dir, &["-template", &spec("b"), "-dedup"]);
    wait_for("b copies a's output", Duration::from_secs(10), || async { read(&dir.path().join("b.txt")) == "one\n" })
        .await;
    wait_for("b's log of the copy", Duration::from_secs(5), || async {
        read(&b_log).contains("dedup: copied the lock holder's output")
    })
    .await;
    assert!(!read(&b_log).contains("took the lock"), "only one renders:\n{}", read(&b_log));
    let (locks, _) = api.get_json("/v1/kv/wharf-template/dedup/?recurse").await;
    let holders: Vec<&str> = locks.as_array().into_iter().flatten().filter_map(|e| e["Session"].as_str()).collect();
    assert_eq!(holders.len(), 1, "one lock holder: {locks}");

    api.put_ok("/v1/kv/dedup/value", "two").await;
    wait_for("both follow a change", Duration::from_secs(10), || async {
        read(&dir.path().join("a.txt")) == "two\n" && read(&dir.path().join("b.txt")) == "two\n"
    })
    .await;
    // Each renderer runs its command after it writes its file: wait for b's second run.
    wait_for("b ran its own command after each render", Duration::from_secs(5), || async {
        read(&runs).lines().filter(|l| *l == "b").count() == 2
    })
    .await;

    // The renderer stops (SIGTERM releases its lock): b takes over and renders.
    drop(a);
    wait_for("b takes the lock", Duration::from_secs(15), || async { read(&b_log).contains("took the lock") }).await;
    api.put_ok("/v1/kv/dedup/value", "three").await;
    wait_for("b renders by itself", Duration::from_secs(10), || async { read(&dir.path().join("b.txt")) == "three\n" })
        .await;
    drop(b);
    let _ = a_log;
}
