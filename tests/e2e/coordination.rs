//! Consul's coordination primitives: sessions, KV locks, transactions and maintenance mode
//! through py-consul (unchanged), and `wharf lock`, `wharf maint` and `wharf watch` as a
//! user runs them.

use std::process::Command;
use std::time::Duration;

use crate::harness::{Agent, Api, BIN, wait_for};

#[tokio::test]
async fn sessions_locks_txn_and_maintenance_through_py_consul() {
    let agent = Agent::dev().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/coordination.py");
    let out = Command::new("python3")
        .args([script, "127.0.0.1", &agent.http_port.to_string(), &agent.node])
        .output()
        .expect("python3 must be installed (the test command installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "coordination.py failed\n{stdout}\n{stderr}\nagent log:\n{}", agent.log_text());
    print!("{stdout}");
    assert!(stdout.contains("all coordination checks passed"), "{stdout}");
}

/// Two `wharf lock` loops on one prefix, 50 rounds each: the commands never overlap
/// (a shared marker file would show it) and all 100 run.
#[tokio::test]
async fn two_wharf_lock_processes_never_run_at_once() {
    let agent = Agent::dev().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let critical = format!(
        "if [ -e {d}/busy ]; then echo overlap >> {d}/errors; fi; touch {d}/busy; sleep 0.005; rm {d}/busy; echo x >> {d}/count"
    );
    let script = dir.path().join("critical.sh");
    std::fs::write(&script, critical).expect("write script");
    let round = format!(
        "for i in $(seq 50); do {BIN} -http-addr {} lock app/mutex 'sh {}' || exit 1; done",
        agent.http_addr(),
        script.display()
    );
    let spawn = || Command::new("bash").args(["-c", &round]).spawn().expect("spawn a lock loop");
    let (mut a, mut b) = (spawn(), spawn());
    let (ra, rb) = (a.wait().expect("wait"), b.wait().expect("wait"));
    assert!(ra.success() && rb.success(), "a lock loop failed: {ra} {rb}");
    let count = std::fs::read_to_string(dir.path().join("count")).unwrap_or_default();
    assert_eq!(count.lines().count(), 100, "every round ran once");
    assert!(!dir.path().join("errors").exists(), "two commands held the lock at once");
    let api = Api::new(&agent);
    let (sessions, _) = api.get_json("/v1/session/list").await;
    assert_eq!(sessions.as_array().map(Vec::len), Some(0), "every session was destroyed: {sessions}");
}

#[tokio::test]
async fn wharf_maint_and_watch() {
    let agent = Agent::dev().await;
    let api = Api::new(&agent);
    let r = api.put("/v1/agent/service/register", r#"{"Name": "web", "ID": "web-1", "Port": 9}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let ok = |args: &[&str]| {
        let out = agent.cli(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let out = ok(&["maint", "-enable", "-service", "web-1", "-reason", "deploy v2"]);
    assert_eq!(out.trim(), "Service maintenance is now enabled for \"web-1\"");
    let (passing, _) = api.get_json("/v1/health/service/web?passing").await;
    assert_eq!(passing.as_array().map(Vec::len), Some(0), "{passing}");
    let listed = ok(&["maint"]);
    assert!(listed.contains("ID:     web-1") && listed.contains("Reason: deploy v2"), "{listed}");
    assert_eq!(
        ok(&["maint", "-disable", "-service", "web-1"]).trim(),
        "Service maintenance is now disabled for \"web-1\""
    );
    assert_eq!(ok(&["maint", "-enable"]).trim(), "Node maintenance is now enabled");
    assert!(ok(&["maint"]).contains(&format!("Name:   {}", agent.node)));
    ok(&["maint", "-disable"]);
    let bad = agent.cli(&["maint", "-enable", "-service", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Unknown service ID"), "{bad:?}");

    // watch -type key: the handler gets the entry's JSON at start and on every change.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("seen");
    let handler = format!("cat >> {}; echo >> {}", out.display(), out.display());
    api.put("/v1/kv/w/k", "one").await;
    let mut watch = Command::new(BIN)
        .args(["-http-addr", &agent.http_addr(), "watch", "-type", "key", "-key", "w/k", &handler])
        .spawn()
        .expect("start wharf watch");
    let seen = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_for("the first value", Duration::from_secs(10), || async { seen().lines().count() == 1 }).await;
    api.put("/v1/kv/w/k", "two").await;
    wait_for("the second value", Duration::from_secs(10), || async { seen().lines().count() == 2 }).await;
    let lines: Vec<serde_json::Value> =
        seen().lines().map(|l| serde_json::from_str(l).expect("handler got JSON")).collect();
    assert_eq!(lines[0]["Value"], "b25l", "base64 of one");
    assert_eq!(lines[1]["Value"], "dHdv", "base64 of two");
    let _ = watch.kill();
    let _ = watch.wait();
}

/// `wharf lock -n 2`: three loops on one semaphore; at most two commands run at once, and
/// two do run together.
#[tokio::test]
async fn wharf_lock_semaphore_admits_n() {
    let agent = Agent::dev().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    std::fs::create_dir_all(dir.path().join("active")).expect("mkdir");
    let critical =
        format!("me=$$; touch {d}/active/$me; ls {d}/active | wc -l >> {d}/seen; sleep 0.1; rm {d}/active/$me");
    let script = dir.path().join("critical.sh");
    std::fs::write(&script, critical).expect("write script");
    let round = format!(
        "for i in $(seq 8); do {BIN} -http-addr {} lock -n 2 app/pool 'sh {}' || exit 1; done",
        agent.http_addr(),
        script.display()
    );
    let loops: Vec<_> = (0..3).map(|_| Command::new("bash").args(["-c", &round]).spawn().expect("spawn")).collect();
    for mut l in loops {
        assert!(l.wait().expect("wait").success(), "a semaphore loop failed");
    }
    let seen: Vec<usize> = std::fs::read_to_string(dir.path().join("seen"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().expect("a count"))
        .collect();
    assert_eq!(seen.len(), 24, "every round ran");
    assert!(seen.iter().all(|n| *n <= 2), "more than two at once: {seen:?}");
    assert!(seen.contains(&2), "two ran together at least once: {seen:?}");
}
