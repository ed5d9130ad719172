//! Load-balancing policies and the per-upstream state they read: round robin, smooth
//! weighted round robin, least connections and consistent hashing (header, cookie or
//! client IP). Pure selection over an immutable pool plus a few atomics, so it runs on
//! the request path without locks and is unit-tested without sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How a pool picks an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    Weighted,
    LeastConn,
    Hash(HashKey),
}

/// What a consistent-hash policy hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie(String),
    ClientIp,
}

impl Policy {
    /// Parses `round_robin`, `weighted`, `least_conn`, `hash:ip`, `hash:header:NAME`,
    /// `hash:cookie:NAME` (the `wharf-lb` service meta and `--lb`).
    pub fn parse(s: &str) -> Result<Policy, String> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "round_robin" | "roundrobin" | "rr" => return Ok(Policy::RoundRobin),
            "weighted" | "wrr" => return Ok(Policy::Weighted),
            "least_conn" | "leastconn" | "least_connections" => return Ok(Policy::LeastConn),
            "hash:ip" | "hash:client_ip" => return Ok(Policy::Hash(HashKey::ClientIp)),
            _ => {}
        }
        if let Some(name) = lower.strip_prefix("hash:header:").filter(|n| !n.is_empty()) {
            return Ok(Policy::Hash(HashKey::Header(name.to_string())));
        }
        if let Some(name) = s.get("hash:cookie:".len()..).filter(|n| lower.starts_with("hash:cookie:") && !n.is_empty())
        {
            return Ok(Policy::Hash(HashKey::Cookie(name.to_string())));
        }
        Err(format!(
            "unknown balancing policy {s:?}: use round_robin, weighted, least_conn, hash:ip, hash:header:NAME or hash:cookie:NAME"
        ))
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// State of one upstream that outlives route-table rebuilds: in-flight requests (least
/// connections) and passive-ejection bookkeeping.
#[derive(Debug, Default)]
pub struct UpstreamState {
    pub active: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
}

impl UpstreamState {
    pub fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    /// Records a failure; returns true when this failure ejected the upstream.
    pub fn record_failure(&self, eject_after: u32, eject_for_ms: u64) -> bool {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if eject_after > 0 && n >= eject_after && !self.is_ejected() {
            self.ejected_until_ms.store(now_ms() + eject_for_ms, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }
}

/// One instance in a pool.
#[derive(Debug)]
pub struct Upstream {
    pub id: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: Arc<UpstreamState>,
}

/// Decrements an upstream's in-flight count when the request ends.
#[derive(Debug)]
pub struct InflightGuard(Arc<UpstreamState>);

impl InflightGuard {
    pub fn new(state: Arc<UpstreamState>) -> Self {
        state.active.fetch_add(1, Ordering::Relaxed);
        InflightGuard(state)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An immutable set of healthy instances of one service with its policy.
#[derive(Debug)]
pub struct Pool {
    pub service: String,
    pub upstreams: Vec<Arc<Upstream>>,
    pub policy: Policy,
    cursor: AtomicUsize,
    /// Smooth weighted round-robin order (indexes into `upstreams`).
    wrr: Vec<u32>,
    /// Consistent-hash ring: (point, index into `upstreams`), sorted by point.
    ring: Vec<(u64, u32)>,
}

const RING_POINTS_PER_UPSTREAM: usize = 160;
const MAX_WRR_SLOTS: u64 = 4096;

/// 64-bit FNV-1a: small, stable across processes and versions (unlike `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    // Finalise (splitmix64) so nearby keys spread over the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// nginx's smooth weighted round robin, unrolled into one period.
fn smooth_wrr(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().map(|w| u64::from(*w).max(1)).fold(0, gcd).max(1);
    let mut w: Vec<i64> = weights.iter().map(|x| (u64::from(*x).max(1) / g) as i64).collect();
    let total: i64 = w.iter().sum();
    if total as u64 > MAX_WRR_SLOTS {
        // Scale down very large weights, keeping every instance at least once.
        let scale = total as f64 / MAX_WRR_SLOTS as f64;
        for x in &mut w {
            *x = ((*x as f64 / scale).round() as i64).max(1);
        }
    }
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, wi) in current.iter_mut().zip(&w) {
            *c += wi;
        }
        let (best, _) = current.iter().enumerate().max_by_key(|(i, c)| (**c, -(*i as i64))).unwrap_or((0, &0));
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

impl Pool {
    pub fn new(service: String, upstreams: Vec<Arc<Upstream>>, policy: Policy) -> Pool {
        let wrr = if policy == Policy::Weighted {
            smooth_wrr(&upstreams.iter().map(|u| u.weight).collect::<Vec<_>>())
        } else {
            Vec::new()
        };
        let ring = if matches!(policy, Policy::Hash(_)) {
            let mut ring = Vec::with_capacity(upstreams.len() * RING_POINTS_PER_UPSTREAM);
            for (i, u) in upstreams.iter().enumerate() {
                for p in 0..RING_POINTS_PER_UPSTREAM {
                    ring.push((fnv1a(format!("{}-{p}", u.id).as_bytes()), i as u32));
                }
            }
            ring.sort_unstable();
            ring
        } else {
            Vec::new()
        };
        Pool { service, upstreams, policy, cursor: AtomicUsize::new(0), wrr, ring }
    }

    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// Whether an instance not in `tried` is left.
    pub fn has_untried(&self, tried: &[SocketAddr]) -> bool {
        self.upstreams.iter().any(|u| !tried.contains(&u.addr))
    }

    /// The policy's first choice, as an index into `upstreams`. `hash_key` is the value of
    /// the hashed header/cookie/IP, when the policy hashes and the request has one.
    fn preferred(&self, hash_key: Option<&[u8]>) -> usize {
        let n = self.upstreams.len();
        match &self.policy {
            Policy::RoundRobin => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
            Policy::Weighted => {
                let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % self.wrr.len().max(1);
                self.wrr.get(slot).map(|i| *i as usize).unwrap_or(0)
            }
            Policy::LeastConn => {
                // Start the scan at a rotating offset so ties spread evenly.
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|i| !self.upstreams[*i].state.is_ejected())
                    .min_by_key(|i| self.upstreams[*i].state.active.load(Ordering::Relaxed))
                    .unwrap_or(start % n)
            }
            Policy::Hash(_) => match hash_key {
                Some(key) if !self.ring.is_empty() => {
                    let h = fnv1a(key);
                    let pos = self.ring.partition_point(|(p, _)| *p < h);
                    self.ring[pos % self.ring.len()].1 as usize
                }
                _ => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
            },
        }
    }

    /// Picks an instance, skipping ejected ones and those already `tried` by this request.
    /// When every untried instance is ejected, ejection is ignored rather than failing.
    pub fn select(&self, hash_key: Option<&[u8]>, tried: &[SocketAddr]) -> Option<Arc<Upstream>> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let first = self.preferred(hash_key);
        let candidates = (0..n).map(|k| &self.upstreams[(first + k) % n]).filter(|u| !tried.contains(&u.addr));
        let mut fallback = None;
        for u in candidates {
            if !u.state.is_ejected() {
                return Some(u.clone());
            }
            fallback.get_or_insert_with(|| u.clone());
        }
        fallback
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn pool(weights: &[u32], policy: Policy) -> Pool {
        let ups = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Upstream {
                    id: format!("u{i}"),
                    addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    weight: *w,
                    state: Arc::default(),
                })
            })
            .collect();
        Pool::new("svc".into(), ups, policy)
    }

    fn counts(p: &Pool, n: usize, key: Option<&[u8]>) -> HashMap<u16, usize> {
        let mut m = HashMap::new();
        for _ in 0..n {
            let u = p.select(key, &[]).expect("an upstream");
            *m.entry(u.addr.port()).or_default() += 1;
        }
        m
    }

    #[test]
    fn policies_parse() {
        assert_eq!(Policy::parse("least_conn"), Ok(Policy::LeastConn));
        assert_eq!(Policy::parse("hash:header:X-User"), Ok(Policy::Hash(HashKey::Header("x-user".into()))));
        assert_eq!(Policy::parse("hash:cookie:Session"), Ok(Policy::Hash(HashKey::Cookie("Session".into()))));
        assert!(Policy::parse("fastest").is_err());
    }

    #[test]
    fn round_robin_is_even() {
        let c = counts(&pool(&[1, 1, 1], Policy::RoundRobin), 300, None);
        assert!(c.values().all(|v| *v == 100), "{c:?}");
    }

    #[test]
    fn weighted_follows_weights_smoothly() {
        let p = pool(&[5, 1, 1], Policy::Weighted);
        assert_eq!(p.wrr, vec![0, 0, 1, 0, 2, 0, 0], "nginx's smooth order");
        let c = counts(&p, 700, None);
        assert_eq!((c[&9000], c[&9001], c[&9002]), (500, 100, 100));
    }

    #[test]
    fn least_conn_prefers_idle() {
        let p = pool(&[1, 1, 1], Policy::LeastConn);
        let _busy: Vec<InflightGuard> = (0..3).map(|_| InflightGuard::new(p.upstreams[0].state.clone())).collect();
        let _one = InflightGuard::new(p.upstreams[1].state.clone());
        for _ in 0..10 {
            assert_eq!(p.select(None, &[]).map(|u| u.addr.port()), Some(9002));
        }
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_little() {
        let p = pool(&[1, 1, 1, 1], Policy::Hash(HashKey::ClientIp));
        let keys: Vec<String> = (0..1000).map(|i| format!("10.0.{}.{}", i / 256, i % 256)).collect();
        let before: Vec<u16> =
            keys.iter().map(|k| p.select(Some(k.as_bytes()), &[]).map(|u| u.addr.port()).unwrap_or(0)).collect();
        let again: Vec<u16> =
            keys.iter().map(|k| p.select(Some(k.as_bytes()), &[]).map(|u| u.addr.port()).unwrap_or(0)).collect();
        assert_eq!(before, again, "same key, same instance");
        let smaller = pool(&[1, 1, 1], Policy::Hash(HashKey::ClientIp));
        let after: Vec<u16> =
            keys.iter().map(|k| smaller.select(Some(k.as_bytes()), &[]).map(|u| u.addr.port()).unwrap_or(0)).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b && **a != 9003).count();
        assert!(moved < 50, "removing one instance moved {moved} keys that were not on it");
        let spread = counts(&p, 0, None);
        assert!(spread.is_empty());
    }

    #[test]
    fn retries_skip_tried_and_ejected() {
        let p = pool(&[1, 1, 1], Policy::RoundRobin);
        assert!(p.upstreams[1].state.record_failure(1, 60_000), "ejected");
        let tried = [p.upstreams[0].addr];
        for _ in 0..5 {
            assert_eq!(p.select(None, &tried).map(|u| u.addr.port()), Some(9002));
        }
        // Everything else tried or ejected: the ejected one is still better than nothing.
        let tried = [p.upstreams[0].addr, p.upstreams[2].addr];
        assert_eq!(p.select(None, &tried).map(|u| u.addr.port()), Some(9001));
        let all: Vec<SocketAddr> = p.upstreams.iter().map(|u| u.addr).collect();
        assert!(p.select(None, &all).is_none());
    }
}
