//! This agent's own entries in the catalog and what the API asks of its checker: the node
//! record with its liveness check (and, on a server, Consul's `consul` service), and the
//! [`consul_api::LocalChecks`] view of the health checker.

use std::sync::Arc;
use std::time::Duration;

use catalog::command::Command;
use catalog::model::{AgentInfo, CheckStatus, HealthCheck};
use catalog::{Catalog, Cluster};
use consul_api::MetricsRenderer;
use local_agent::docker::DockerWatcher;
use local_agent::health::probe::Clients;
use local_agent::health::{CheckPolicy, HealthChecker, HealthMetrics, TtlHeartbeats};
use local_agent::session_ttl::SessionTtl;

use super::config::Prepared;
use super::services::{Service, Stop, task};

/// Registers this agent's node and its liveness check (Consul's serfHealth), and on a
/// server Consul's own `consul` service (its Raft port), so `consul.service.consul` lists
/// the servers; retries until a leader accepts it.
pub(super) async fn register_self(cluster: &dyn Cluster, info: &AgentInfo, mut stop: Stop) {
    let check = HealthCheck {
        node: info.node_name.clone(),
        check_id: "serfHealth".into(),
        name: "Serf Health Status".into(),
        status: CheckStatus::Passing,
        output: "Agent alive and reachable".into(),
        ..Default::default()
    };
    let port = info.raft_addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(8300);
    let consul = info.server.then(|| catalog::model::Service {
        id: "consul".into(),
        service: "consul".into(),
        port,
        weights: catalog::model::Weights { passing: 1, warning: 1 },
        datacenter: info.datacenter.clone(),
        ..Default::default()
    });
    let cmd = Command::Register {
        node: info.self_node(),
        service: consul,
        checks: vec![check],
        skip_node_update: false,
        replace_service_checks: false,
    };
    loop {
        match cluster.write(cmd.clone()).await {
            Ok(_) => return,
            Err(e) => tracing::info!("waiting for the cluster before registering this node: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The API's view of this agent's health checker: which definitions it admits, and where
/// TTL heartbeats go.
pub(super) struct AgentChecks {
    pub policy: CheckPolicy,
    pub ttl: TtlHeartbeats,
}

impl consul_api::LocalChecks for AgentChecks {
    fn admit(&self, checks: &[catalog::model::HealthCheck]) -> Result<(), String> {
        self.policy.allows(checks)
    }

    fn ttl_beat(&self, check_id: &str) {
        self.ttl.beat(check_id);
    }
}

/// The local agent's registration sources, built together so they share the health
/// checker's TTL heartbeats and metrics: health checks, the leader's session timers and,
/// when enabled, Docker autodiscovery. (Config-dir definitions are loaded by the
/// supervisor, at start and on reload.)
pub(super) struct RegistrationSources {
    checker: Arc<HealthChecker>,
    session_ttl: SessionTtl,
    docker: Option<DockerWatcher>,
}

impl RegistrationSources {
    pub fn new(p: &Prepared, info: &AgentInfo, cluster: &Arc<dyn Cluster>, catalog: &Catalog) -> Self {
        let checker = Arc::new(HealthChecker {
            node: info.node_name.clone(),
            cluster: cluster.clone(),
            catalog: catalog.clone(),
            policy: p.check_policy.clone(),
            ttl: TtlHeartbeats::default(),
            metrics: Arc::new(HealthMetrics::default()),
            clients: Clients::new(),
        });
        let session_ttl =
            SessionTtl { cluster: cluster.clone(), catalog: catalog.clone(), raft_addr: info.raft_addr.clone() };
        let docker = p.config.docker.clone().map(|mode| DockerWatcher {
            mode,
            node: info.self_node(),
            cluster: cluster.clone(),
            catalog: catalog.clone(),
        });
        RegistrationSources { checker, session_ttl, docker }
    }

    /// The health checker's counters for `/metrics`.
    pub fn metrics_renderer(&self) -> MetricsRenderer {
        let m = self.checker.metrics.clone();
        Arc::new(move |out: &mut String| m.render(out))
    }

    /// What the HTTP API asks of the checker.
    pub fn api_view(&self) -> Arc<dyn consul_api::LocalChecks> {
        Arc::new(AgentChecks { policy: self.checker.policy.clone(), ttl: self.checker.ttl.clone() })
    }

    pub fn services(self) -> Vec<Box<dyn Service>> {
        let RegistrationSources { checker, session_ttl, docker } = self;
        let mut out = vec![
            task("health-checks", move |stop| async move {
                checker.run(stop).await;
                Ok(())
            }),
            task("session-ttl", move |stop| async move {
                session_ttl.run(stop).await;
                Ok(())
            }),
        ];
        if let Some(watcher) = docker {
            out.push(task("docker", move |stop| async move {
                watcher.run(stop).await;
                Ok(())
            }));
        }
        out
    }
}
