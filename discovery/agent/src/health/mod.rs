//! Health checking on the agent that owns the checks: one lightweight task per check (no
//! thread each), started from the definitions in the catalog and restarted when a
//! definition changes. Probes are spread over their interval by a hash of the check ID.
//! A result goes through Consul's thresholds, and the catalog is written only when the
//! status changes: a check that stays passing writes nothing.
//!
//! TTL checks are fed by the agent API (`/v1/agent/check/pass|warn|fail|update`) through
//! [`TtlHeartbeats`]; one that is not refreshed within its TTL turns critical.

pub mod probe;
pub mod thresholds;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use catalog::command::Command;
use catalog::model::{CheckKind, CheckStatus, CheckTimes, HealthCheck};
use catalog::{Catalog, Cluster};
use thresholds::Thresholds;

/// Default probe timeout (Consul's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Last time each TTL check was refreshed through the API.
#[derive(Clone, Debug, Default)]
pub struct TtlHeartbeats(Arc<Mutex<HashMap<String, Instant>>>);

impl TtlHeartbeats {
    pub fn beat(&self, check_id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(check_id.to_string(), Instant::now());
        }
    }

    pub fn last(&self, check_id: &str) -> Option<Instant> {
        self.0.lock().ok().and_then(|m| m.get(check_id).copied())
    }
}

/// The instance a Wasm check probes, as plain data for the plugin host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WasmTarget {
    pub service: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: Vec<(String, String)>,
}

/// Runs Wasm checks. Implemented by the binary over the `plugins` crate, so `discovery`
/// does not depend on wasmtime.
pub trait WasmRunner: Send + Sync + 'static {
    /// Whether `module` names a plugin this agent can run; checked at registration so an
    /// unknown plugin is refused with 400.
    fn validate(&self, module: &str) -> Result<(), String>;

    /// Runs the plugin once. Whatever goes wrong is a critical status saying why.
    fn run<'a>(
        &'a self,
        module: &'a str,
        config: &'a str,
        target: WasmTarget,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (CheckStatus, String)> + Send + 'a>>;
}

/// What the checker may run.
#[derive(Clone, Default)]
pub struct CheckPolicy {
    /// Script/args checks run commands on this host: off unless asked for.
    pub enable_script_checks: bool,
    /// Wasm checks, when the agent has a plugin directory.
    pub wasm: Option<Arc<dyn WasmRunner>>,
}

impl std::fmt::Debug for CheckPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckPolicy")
            .field("enable_script_checks", &self.enable_script_checks)
            .field("wasm", &self.wasm.is_some())
            .finish()
    }
}

impl CheckPolicy {
    /// Refuses checks this agent will not run, saying how to enable them.
    pub fn allows(&self, checks: &[HealthCheck]) -> Result<(), String> {
        for c in checks {
            if c.kind == CheckKind::Script && !self.enable_script_checks {
                return Err("Scripts are disabled on this agent; start it with --enable-script-checks (an open API with script checks is remote code execution)".into());
            }
            if let Some(w) = &c.definition.wasm {
                let Some(runner) = &self.wasm else {
                    return Err(format!(
                        "Wasm check {:?}: this agent has no plugin directory; start it with --plugin-dir DIR",
                        c.name
                    ));
                };
                runner.validate(&w.module).map_err(|e| format!("Wasm check {:?}: {e}", c.name))?;
            }
        }
        Ok(())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct HealthMetrics {
    pub probes: AtomicU64,
    pub status_writes: AtomicU64,
    pub running_checks: AtomicU64,
}

impl HealthMetrics {
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP wharf_health_probes_total Probes run by this agent.");
        let _ = writeln!(
            out,
            "# TYPE wharf_health_probes_total counter\nwharf_health_probes_total {}",
            self.probes.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP wharf_health_status_writes_total Catalog writes of changed check statuses.");
        let _ = writeln!(
            out,
            "# TYPE wharf_health_status_writes_total counter\nwharf_health_status_writes_total {}",
            self.status_writes.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP wharf_health_running_checks Checks this agent runs.");
        let _ = writeln!(
            out,
            "# TYPE wharf_health_running_checks gauge\nwharf_health_running_checks {}",
            self.running_checks.load(Ordering::Relaxed)
        );
    }
}

pub struct HealthChecker {
    pub node: String,
    pub cluster: Arc<dyn Cluster>,
    pub catalog: Catalog,
    pub policy: CheckPolicy,
    pub ttl: TtlHeartbeats,
    pub metrics: Arc<HealthMetrics>,
    pub clients: probe::Clients,
}

fn runnable(c: &HealthCheck) -> bool {
    c.kind != CheckKind::Manual
}

/// Where in its interval a check first runs: spread by its ID so many checks do not fire
/// together.
fn stagger(check_id: &str, interval: Duration) -> Duration {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in check_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h % ms)
}

impl HealthChecker {
    /// Runs until `stop`: keeps one task per runnable check of this node.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tasks: HashMap<String, (String, tokio::task::JoinHandle<()>)> = HashMap::new();
        let mut rx = self.catalog.subscribe();
        loop {
            let snap = rx.borrow_and_update().clone();
            let (checks, _) = snap.node_checks(&self.node);
            let mut seen = HashSet::new();
            for c in checks.into_iter().filter(runnable) {
                let fingerprint = serde_json::to_string(&c.definition).unwrap_or_default();
                seen.insert(c.check_id.clone());
                if tasks.get(&c.check_id).is_some_and(|(f, _)| *f == fingerprint) {
                    continue;
                }
                if let Some((_, old)) = tasks.remove(&c.check_id) {
                    old.abort();
                }
                if c.kind == CheckKind::Script && !self.policy.enable_script_checks {
                    continue;
                }
                let id = c.check_id.clone();
                let handle = tokio::spawn(self.clone().run_check(c));
                tasks.insert(id, (fingerprint, handle));
            }
            tasks.retain(|id, (_, h)| {
                let keep = seen.contains(id);
                if !keep {
                    h.abort();
                }
                keep
            });
            self.metrics.running_checks.store(tasks.len() as u64, Ordering::Relaxed);
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (_, (_, h)) in tasks {
            h.abort();
        }
    }

    fn current(&self, check_id: &str) -> Option<HealthCheck> {
        self.catalog.snapshot().check(&self.node, check_id).cloned()
    }

    /// Records `status` if it differs from the catalog's. The one exception: a check whose
    /// output was never written (say, registered critical and still critical) gets its first
    /// output once, so it shows why.
    async fn record(&self, check_id: &str, status: CheckStatus, output: String) {
        let Some(now) = self.current(check_id) else { return };
        let first_output = now.output.is_empty() && !output.is_empty();
        if now.status == status && !first_output {
            return;
        }
        self.metrics.status_writes.fetch_add(1, Ordering::Relaxed);
        let cmd = Command::UpdateCheck {
            node: self.node.clone(),
            check_id: check_id.to_string(),
            status,
            output: Some(probe::cut(output)),
        };
        if let Err(e) = self.cluster.write(cmd).await {
            tracing::warn!(check = check_id, "cannot record check status: {e}");
        }
    }

    /// Deregisters the check's service once it has been critical for too long.
    async fn maybe_deregister(&self, c: &HealthCheck, times: &CheckTimes, critical_since: Option<Instant>) {
        let (Some(since), Some(after), false) = (critical_since, times.deregister_after, c.service_id.is_empty())
        else {
            return;
        };
        if after.is_zero() || since.elapsed() < after {
            return;
        }
        tracing::info!(service = %c.service_id, check = %c.check_id, "critical for {after:?}: deregistering the service");
        let cmd = Command::DeregisterService { node: self.node.clone(), service_id: c.service_id.clone() };
        if let Err(e) = self.cluster.write(cmd).await {
            tracing::warn!("cannot deregister {}: {e}", c.service_id);
        }
    }

    async fn run_check(self: Arc<Self>, c: HealthCheck) {
        let def = c.definition.clone();
        // Parsed once per task; registration refused definitions that do not parse.
        let times = match def.times() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(check = %c.check_id, "{e}: not run");
                return;
            }
        };
        if c.kind == CheckKind::Ttl {
            return self.run_ttl(c, times).await;
        }
        let Some(interval) = times.interval else {
            tracing::warn!(check = %c.check_id, "no interval: not run");
            return;
        };
        let interval = interval.max(Duration::from_millis(10));
        let timeout = times.timeout.filter(|t| !t.is_zero()).unwrap_or(DEFAULT_TIMEOUT);
        let mut thresholds = Thresholds::new(&def);
        let mut critical_since = (c.status == CheckStatus::Critical).then(Instant::now);
        let mut next = tokio::time::Instant::now() + stagger(&c.check_id, interval);
        loop {
            tokio::time::sleep_until(next).await;
            next += interval;
            self.metrics.probes.fetch_add(1, Ordering::Relaxed);
            let (result, output) = match c.kind {
                CheckKind::Http => probe::http(&self.clients, &def, timeout).await,
                CheckKind::Tcp => probe::tcp(&def, timeout).await,
                CheckKind::Grpc => probe::grpc(&self.clients, &def, timeout).await,
                CheckKind::Script => probe::script(&def, timeout).await,
                CheckKind::Wasm => self.run_wasm(&c, timeout).await,
                CheckKind::Ttl | CheckKind::Manual => return,
            };
            if let Some(status) = thresholds.observe(result) {
                self.record(&c.check_id, status, output).await;
                critical_since = match (status, critical_since) {
                    (CheckStatus::Critical, Some(t)) => Some(t),
                    (CheckStatus::Critical, None) => Some(Instant::now()),
                    _ => None,
                };
            }
            self.maybe_deregister(&c, &times, critical_since).await;
            if tokio::time::Instant::now() > next {
                // A probe that took longer than the interval: do not pile up.
                next = tokio::time::Instant::now() + interval;
            }
        }
    }

    /// Runs a Wasm check against the instance as the catalog knows it now.
    async fn run_wasm(&self, c: &HealthCheck, timeout: Duration) -> (CheckStatus, String) {
        let (Some(runner), Some(w)) = (&self.policy.wasm, &c.definition.wasm) else {
            return (
                CheckStatus::Critical,
                "Wasm checks are not enabled on this agent (start it with --plugin-dir)".into(),
            );
        };
        let snap = self.catalog.snapshot();
        let node_address = snap.node(&self.node).map(|n| n.address.clone()).unwrap_or_default();
        let target = match snap.service(&self.node, &c.service_id) {
            Some(s) => WasmTarget {
                service: s.service.clone(),
                id: s.id.clone(),
                address: if s.address.is_empty() { node_address } else { s.address.clone() },
                port: s.port,
                tags: s.tags.clone(),
                meta: s.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            },
            None => WasmTarget { address: node_address, ..WasmTarget::default() },
        };
        runner.run(&w.module, &w.config, target, timeout).await
    }

    async fn run_ttl(self: Arc<Self>, c: HealthCheck, times: CheckTimes) {
        let Some(ttl) = times.ttl else { return };
        let ttl = ttl.max(Duration::from_millis(10));
        let started = Instant::now();
        let mut critical_since = (c.status == CheckStatus::Critical).then(Instant::now);
        loop {
            let last = self.ttl.last(&c.check_id).filter(|t| *t > started).unwrap_or(started);
            let deadline = last + ttl;
            let now = Instant::now();
            if deadline > now {
                tokio::time::sleep(deadline - now).await;
                continue;
            }
            // Expired: critical, keeping the last output as Consul does.
            if let Some(cur) = self.current(&c.check_id) {
                if cur.status != CheckStatus::Critical {
                    let output = if cur.output.is_empty() {
                        "TTL expired".to_string()
                    } else {
                        format!("TTL expired (last output before timeout follows): {}", cur.output)
                    };
                    self.record(&c.check_id, CheckStatus::Critical, output).await;
                    critical_since = Some(Instant::now());
                } else if critical_since.is_none() {
                    critical_since = Some(Instant::now());
                }
            }
            self.maybe_deregister(&c, &times, critical_since).await;
            // Wait for the next heartbeat (or the deregistration deadline).
            tokio::time::sleep(ttl.min(Duration::from_millis(250))).await;
            if self.ttl.last(&c.check_id).is_some_and(|t| t > last) {
                critical_since = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stagger_stays_within_the_interval_and_spreads() {
        let i = Duration::from_secs(10);
        let offsets: HashSet<u128> = (0..100).map(|n| stagger(&format!("service:web-{n}"), i).as_millis()).collect();
        assert!(offsets.iter().all(|o| *o < 10_000));
        assert!(offsets.len() > 90, "offsets spread: {}", offsets.len());
    }
}
