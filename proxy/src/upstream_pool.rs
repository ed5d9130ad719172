//! Kept-alive upstream connections of the fast path, one idle queue per instance address.
//!
//! The request path takes no process-wide lock: the address-to-queue map is read through
//! `ArcSwap` (written only when an address is first seen or forgotten), and each queue has
//! its own short lock, held only to push or pop. The liveness probe (a `try_read` syscall)
//! runs after the connection left the queue, never under a lock.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

/// Idle upstream connections kept per instance.
pub const MAX_IDLE_PER_UPSTREAM: usize = 256;

type Idle = (TcpStream, Instant);

/// One instance's idle connections, newest last.
#[derive(Default)]
struct IdleQueue(Mutex<Vec<Idle>>);

impl IdleQueue {
    fn pop(&self) -> Option<Idle> {
        self.0.lock().ok()?.pop()
    }

    /// Keeps `conn` unless the queue is full; a full queue drops (closes) it.
    fn push(&self, conn: Idle) {
        if let Ok(mut q) = self.0.lock()
            && q.len() < MAX_IDLE_PER_UPSTREAM
        {
            q.push(conn);
        }
    }

    fn drain(&self) -> Vec<Idle> {
        self.0.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.0.lock().map(|q| q.is_empty()).unwrap_or(true)
    }
}

/// Kept-alive upstream connections, per instance address.
pub struct UpstreamConns {
    queues: ArcSwap<HashMap<SocketAddr, Arc<IdleQueue>>>,
    idle_timeout: Duration,
}

impl UpstreamConns {
    pub fn new(idle_timeout: Duration) -> Self {
        UpstreamConns { queues: ArcSwap::from_pointee(HashMap::new()), idle_timeout }
    }

    /// A usable idle connection to `addr`, if one is kept: the newest first, dropping any
    /// that timed out or that the instance closed.
    pub fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let queues = self.queues.load();
        let queue = queues.get(&addr)?;
        while let Some((conn, since)) = queue.pop() {
            if since.elapsed() < self.idle_timeout && still_idle(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request to `addr`.
    pub fn put(&self, addr: SocketAddr, conn: TcpStream) {
        let entry = (conn, Instant::now());
        if let Some(queue) = self.queues.load().get(&addr) {
            queue.push(entry);
            return;
        }
        // First connection kept for this address: add its queue (rare; copy-on-write).
        let mut added: Option<Arc<IdleQueue>> = None;
        self.queues.rcu(|map| {
            let mut map = HashMap::clone(map);
            let queue = map.entry(addr).or_default().clone();
            added = Some(queue);
            map
        });
        if let Some(queue) = added {
            queue.push(entry);
        }
    }

    /// Closes connections idle too long or closed by their instance (a stopped backend
    /// leaves them half-closed), and forgets addresses with none left.
    pub fn sweep(&self) {
        let queues = self.queues.load_full();
        for queue in queues.values() {
            // Probed outside the queue's lock; the survivors go back in their order.
            let kept: Vec<Idle> = queue
                .drain()
                .into_iter()
                .filter(|(conn, since)| since.elapsed() < self.idle_timeout && still_idle(conn))
                .collect();
            for conn in kept {
                queue.push(conn);
            }
        }
        if queues.values().any(|q| q.is_empty()) {
            self.queues.rcu(|map| {
                let mut map = HashMap::clone(map);
                map.retain(|_, q| !q.is_empty());
                map
            });
        }
    }

    /// Idle connections kept, over every address (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        self.queues.load().values().map(|q| q.0.lock().map(|v| v.len()).unwrap_or(0)).sum()
    }
}

/// An idle upstream connection is usable only if nothing arrived on it: not a close, and not
/// stray bytes (a 408, or a body after a bodiless answer) that would be read as the next
/// request's response. Like nginx, wharf closes it on either.
fn still_idle(conn: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(conn.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().expect("bound");
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), server.expect("accept").0)
    }

    #[tokio::test]
    async fn kept_connections_come_back_and_dead_ones_do_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let pool = UpstreamConns::new(Duration::from_secs(60));
        assert!(pool.take(addr).is_none(), "nothing kept yet");

        let (live, _live_server) = pair(&listener).await;
        let live_port = live.local_addr().expect("local").port();
        pool.put(addr, live);
        let (closed, closed_server) = pair(&listener).await;
        pool.put(addr, closed);
        drop(closed_server);
        let (chatty, mut chatty_server) = pair(&listener).await;
        chatty_server.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n").await.expect("write");
        pool.put(addr, chatty);
        // Wait for the close and the stray bytes to arrive, without a fixed sleep.
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let q = pool.queues.load();
                let usable = q[&addr].0.lock().expect("lock").iter().filter(|(c, _)| still_idle(c)).count();
                if usable == 1 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the peers' close and bytes arrive");

        assert_eq!(pool.idle_count(), 3);
        let got = pool.take(addr).expect("the live connection");
        assert_eq!(got.local_addr().expect("local").port(), live_port, "the closed and chatty ones are dropped");
        assert!(pool.take(addr).is_none());
        pool.sweep();
        assert!(pool.queues.load().is_empty(), "an address with no connection left is forgotten");
    }

    #[tokio::test]
    async fn sweep_drops_expired_connections_and_queues_are_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let pool = UpstreamConns::new(Duration::ZERO);
        let (c, _s) = pair(&listener).await;
        pool.put(addr, c);
        assert_eq!(pool.idle_count(), 1);
        pool.sweep();
        assert_eq!(pool.idle_count(), 0, "idle longer than the idle timeout");

        let pool = UpstreamConns::new(Duration::from_secs(60));
        let mut servers = Vec::new();
        for _ in 0..MAX_IDLE_PER_UPSTREAM + 2 {
            let (c, s) = pair(&listener).await;
            servers.push(s);
            pool.put(addr, c);
        }
        assert_eq!(pool.idle_count(), MAX_IDLE_PER_UPSTREAM);
    }
}
