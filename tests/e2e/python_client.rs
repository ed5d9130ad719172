//! A real Consul client library from PyPI (py-consul) against the agent, unchanged.
//! The test command installs py-consul; a missing interpreter or library fails here.

use crate::harness::Agent;

#[tokio::test]
async fn py_consul_client_works_unchanged() {
    let agent = Agent::dev().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/consul_client.py");
    let out = std::process::Command::new("python3")
        .args([script, "127.0.0.1", &agent.http_port.to_string()])
        .output()
        .expect("python3 must be installed (the test command installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "py-consul script failed (is py-consul installed? `pip install py-consul`)\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
