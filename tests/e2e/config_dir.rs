//! Service definitions in Consul's JSON format from --config-dir: loaded at start,
//! re-read on SIGHUP and `wharf reload`; a bad file is refused and changes nothing.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Agent, Api, wait_for};

fn service_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    ids.sort();
    ids
}

/// A dev agent in `dir` reading `--config-dir conf`, ready.
async fn dev_agent_with_config_dir(dir: &std::path::Path, conf: &std::path::Path) -> Agent {
    let mut agent =
        Agent::new(dir.join("data"), "node-1", vec!["--config-dir".into(), conf.to_str().expect("utf8").into()], None);
    agent.start(&["--dev"]);
    agent.wait_ready().await;
    agent
}

#[tokio::test]
async fn config_dir_loads_and_reloads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = tmp.path().join("conf.d");
    std::fs::create_dir_all(&conf).expect("mkdir");
    // Consul's config-file style: lowercase / snake_case keys.
    std::fs::write(
        conf.join("web.json"),
        r#"{"service": {"name": "web", "id": "web-1", "port": 8080, "tags": ["a"], "enable_tag_override": true,
             "meta": {"team_name": "core"},
             "check": {"id": "web-http", "http": "http://127.0.0.1:8080/", "interval": "10s", "timeout": "1s",
                       "deregister_critical_service_after": "90s"}}}"#,
    )
    .expect("write");
    std::fs::write(
        conf.join("more.json"),
        r#"{"services": [{"name": "api", "port": 9000}, {"name": "db", "id": "db-1", "port": 5432,
             "checks": [{"name": "db ttl", "ttl": "30s"}]}]}"#,
    )
    .expect("write");
    std::fs::write(conf.join("README.txt"), "not a definition").expect("write");

    let mut agent = dev_agent_with_config_dir(tmp.path(), &conf).await;
    let api = Api::new(&agent);
    wait_for("config dir services", Duration::from_secs(10), || async {
        service_ids(&api.get_json("/v1/agent/services").await.0) == ["api", "db-1", "web-1"]
    })
    .await;
    let (services, _) = api.get_json("/v1/agent/services").await;
    assert_eq!(services["web-1"]["EnableTagOverride"], true);
    assert_eq!(services["web-1"]["Meta"]["team_name"], "core");
    let (checks, _) = api.get_json("/v1/agent/checks").await;
    assert_eq!(checks["web-http"]["Definition"]["DeregisterCriticalServiceAfter"], "90s");
    assert_eq!(checks["service:db-1"]["Type"], "ttl");

    // SIGHUP: a removed file deregisters, an edited one updates.
    std::fs::remove_file(conf.join("more.json")).expect("rm");
    std::fs::write(conf.join("web.json"), r#"{"service": {"name": "web", "id": "web-1", "port": 8081}}"#)
        .expect("write");
    agent.signal("-HUP");
    wait_for("SIGHUP reload", Duration::from_secs(10), || async {
        let (s, _) = api.get_json("/v1/agent/services").await;
        service_ids(&s) == ["web-1"] && s["web-1"]["Port"] == 8081
    })
    .await;
    let (checks, _) = api.get_json("/v1/agent/checks").await;
    assert!(checks.get("web-http").is_none(), "checks dropped from the file are removed: {checks}");

    // `wharf reload`.
    std::fs::write(conf.join("cache.json"), r#"{"service": {"name": "cache", "port": 6379}}"#).expect("write");
    let out = agent.cli(&["reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(service_ids(&api.get_json("/v1/agent/services").await.0), ["cache", "web-1"]);

    // A bad file: reload fails loudly and nothing changes.
    std::fs::write(conf.join("broken.json"), r#"{"service": {"name": "x", "port": 99999}}"#).expect("write");
    std::fs::write(conf.join("zz.json"), r#"{"service": {"name": "late", "port": 1}}"#).expect("write");
    let before = api.get("/v1/agent/services").await.body;
    let out = agent.cli(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.json") && err.contains("65535"), "{err}");
    assert_eq!(api.get("/v1/agent/services").await.body, before, "a failed reload changes nothing");

    // A bad file at start: the agent refuses to start, naming the file.
    agent.kill9();
    agent.start(&["--dev"]);
    assert!(agent.wait_exit(Duration::from_secs(20)).await, "agent must exit on an invalid config dir");
    assert!(agent.log_text().contains("broken.json"), "{}", agent.log_text());

    // Fixed, the agent starts again and the registrations persist and follow the files.
    std::fs::remove_file(conf.join("broken.json")).expect("rm");
    agent.start(&["--dev"]);
    agent.wait_ready().await;
    wait_for("restart with fixed dir", Duration::from_secs(10), || async {
        service_ids(&api.get_json("/v1/agent/services").await.0) == ["cache", "late", "web-1"]
    })
    .await;
}

/// Consul's agent keys beside definitions: known ones are applied (here the node name and
/// a TTL check's service), an unknown or not yet implemented key stops the agent with the
/// key and the file named, a reload with such a key changes nothing, and `wharf validate`
/// says the same without starting anything.
#[tokio::test]
async fn agent_keys_in_config_files_are_applied_or_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = tmp.path().join("conf.d");
    std::fs::create_dir_all(&conf).expect("mkdir");
    std::fs::write(conf.join("agent.json"), r#"{"datacenter": "dc7", "enable_script_checks": true}"#).expect("write");
    std::fs::write(conf.join("web.json"), r#"{"service": {"name": "web", "port": 80}}"#).expect("write");
    let mut agent = dev_agent_with_config_dir(tmp.path(), &conf).await;
    let api = Api::new(&agent);
    let (dcs, _) = api.get_json("/v1/catalog/datacenters").await;
    assert_eq!(dcs, serde_json::json!(["dc7"]), "datacenter from the file");

    wait_for("web from the config dir", Duration::from_secs(10), || async {
        service_ids(&api.get_json("/v1/agent/services").await.0) == ["web"]
    })
    .await;

    // A typo in a reloaded file: refused by name, nothing changes.
    std::fs::write(conf.join("typo.json"), r#"{"enable_script_check": true}"#).expect("write");
    let before = api.get("/v1/agent/services").await.body;
    let out = agent.cli(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("typo.json") && err.contains("enable_script_check"), "{err}");
    assert_eq!(api.get("/v1/agent/services").await.body, before);

    // `wharf validate` reads the directory the same way.
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["validate", conf.to_str().expect("utf8")])
        .output()
        .expect("run validate");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown config key \"enable_script_check\""), "{out:?}");
    std::fs::remove_file(conf.join("typo.json")).expect("rm");
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["validate", conf.to_str().expect("utf8")])
        .output()
        .expect("run validate");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Configuration is valid! (1 services, 0 checks)");

    // Seed 002's acl.json stops the agent at start instead of leaving the API open.
    std::fs::write(
        conf.join("acl.json"),
        r#"{"acl_datacenter": "dc1", "acl_master_token": "XAi/F5LQ+IbrAW8Mkyon+K+PCkSu+aoFf2YUeixMYA0=", "acl_default_policy": "deny"}"#,
    )
    .expect("write");
    agent.kill9();
    agent.start(&["--dev"]);
    assert!(agent.wait_exit(Duration::from_secs(20)).await, "the agent must refuse to start");
    let log = agent.log_text();
    assert!(
        log.contains("acl.json") && log.contains("acl_datacenter") && log.contains("ACLs are not implemented yet"),
        "{log}"
    );
}

/// The quietest log level still loads the config dir (the load once sat inside an `info!`
/// macro, which a disabled level skips whole, so `--log-level warn` registered nothing).
#[tokio::test]
async fn config_dir_loads_at_any_log_level() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = tmp.path().join("conf.d");
    std::fs::create_dir_all(&conf).expect("mkdir");
    std::fs::write(conf.join("web.json"), r#"{"service": {"name": "web", "id": "web-1", "port": 8080}}"#)
        .expect("write");
    let mut agent = Agent::new(
        tmp.path().join("data"),
        "node-1",
        vec!["--config-dir".into(), conf.to_str().expect("utf8").into(), "--log-level".into(), "warn".into()],
        None,
    );
    // RUST_LOG wins over --log-level; the harness sets it to info.
    agent.env.push(("RUST_LOG".into(), "warn".into()));
    agent.start(&["--dev"]);
    agent.wait_ready().await;
    let api = Api::new(&agent);
    wait_for("the config dir's service at --log-level warn", Duration::from_secs(10), || async {
        service_ids(&api.get_json("/v1/agent/services").await.0) == ["web-1"]
    })
    .await;
}
