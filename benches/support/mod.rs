//! Pieces the benchmarks share: free loopback ports and a child-process guard.

use std::net::TcpListener;
use std::process::Child;

/// A free port on loopback (bind :0 and read it back).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Kills and reaps the child when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
