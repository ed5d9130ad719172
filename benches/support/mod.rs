//! Pieces the benchmarks share: free loopback ports, a child-process guard and a ready
//! wharf agent. Each bench is its own crate and uses a different part of this module.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::Child;

/// A free port on loopback (bind :0 and read it back).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Kills and reaps the child when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A release `wharf agent --dev` on free loopback ports, in its own temp dir. DNS, the proxy
/// and Docker are off unless `extra` turns them on (`--proxy-addr`, `--docker on`).
pub struct BenchAgent {
    pub api: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl BenchAgent {
    pub async fn start(bin: &str, extra: &[&str]) -> Result<BenchAgent, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (http, raft) = (free_port(), free_port());
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["agent", "--dev", "--node", "bench", "--no-dns"])
            .args(["--http-port", &http.to_string(), "--raft-port", &raft.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("WHARF_SERF_LAN_PORT", free_udp_port().to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if !extra.contains(&"--proxy-addr") {
            cmd.arg("--no-proxy");
        }
        if !extra.contains(&"--docker") {
            cmd.args(["--docker", "off"]);
        }
        let proc = Proc(cmd.spawn().map_err(|e| format!("start wharf: {e}"))?);
        let api = format!("http://127.0.0.1:{http}");
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // Ready once the agent's own node is in the catalog (a leader exists).
        while !client
            .get(format!("{api}/v1/catalog/node/bench"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200 && r.headers().get("content-length").is_none_or(|l| l != "4"))
        {
            if std::time::Instant::now() > deadline {
                return Err("wharf did not become ready in 30 s".into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(BenchAgent { api, _proc: proc, _dir: dir })
    }
}
