//! Docker autodiscovery: Registrator's job inside the agent. Connects to the engine with
//! bollard (`DOCKER_HOST` honoured, API version negotiated down to what the engine speaks),
//! reconciles the catalog with the containers that really run, then follows the event
//! stream: `start` registers, `kill`/`stop`/`pause` flip the instance's lifecycle check to
//! critical at once (out of the proxy's pools before the process exits), `die`/`destroy`
//! deregister, `health_status` mirrors Docker's HEALTHCHECK. When the stream ends it
//! reconnects with backoff and reconciles again; it never exits on its own.

pub mod labels;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, EventMessage, HealthStatusEnum};
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures::StreamExt;
use tokio::sync::watch;

use catalog::command::Command;
use catalog::model::{CheckStatus, Node};
use catalog::{Catalog, Cluster};
use labels::{
    CONTAINER_META, ContainerFacts, DockerHealth, HEALTH_CHECK_PREFIX, LIFECYCLE_CHECK_PREFIX, Mode, PortFacts,
    docker_health_status, registrations,
};

/// When to watch Docker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerWatch {
    Off,
    /// Only if the engine's socket exists (or DOCKER_HOST is set).
    Auto,
    /// Always; a missing engine is retried with a warning.
    On,
}

impl std::str::FromStr for DockerWatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(DockerWatch::Off),
            "auto" => Ok(DockerWatch::Auto),
            "on" => Ok(DockerWatch::On),
            other => Err(format!("--docker {other:?}: use off, auto or on")),
        }
    }
}

impl DockerWatch {
    /// Whether to start the watcher on this machine.
    pub fn enabled(self) -> bool {
        match self {
            DockerWatch::Off => false,
            DockerWatch::On => true,
            DockerWatch::Auto => {
                std::env::var_os("DOCKER_HOST").is_some() || std::path::Path::new("/var/run/docker.sock").exists()
            }
        }
    }
}

/// Turns an inspect answer into the plain facts the convention logic reads.
pub fn facts_from_inspect(c: &ContainerInspectResponse) -> ContainerFacts {
    let config = c.config.clone().unwrap_or_default();
    let net = c.network_settings.clone().unwrap_or_default();
    let mut ports: Vec<PortFacts> = Vec::new();
    for (spec, bindings) in net.ports.unwrap_or_default() {
        let (port, proto) = spec.split_once('/').unwrap_or((spec.as_str(), "tcp"));
        let Ok(port) = port.parse::<u16>() else { continue };
        let bindings = bindings
            .unwrap_or_default()
            .into_iter()
            .filter_map(|b| {
                let hp = b.host_port.as_deref()?.parse::<u16>().ok()?;
                Some((b.host_ip.unwrap_or_default(), hp))
            })
            // Prefer IPv4 bindings; Docker lists [::] next to 0.0.0.0.
            .filter(|(ip, _)| !ip.contains(':'))
            .collect();
        ports.push(PortFacts { port, proto: proto.to_string(), bindings });
    }
    let networks = net
        .networks
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ep)| (name, ep.ip_address.unwrap_or_default()))
        .collect();
    let health = c.state.as_ref().and_then(|s| s.health.as_ref()).and_then(|h| match h.status {
        Some(HealthStatusEnum::STARTING) => Some(DockerHealth::Starting),
        Some(HealthStatusEnum::HEALTHY) => Some(DockerHealth::Healthy),
        Some(HealthStatusEnum::UNHEALTHY) => Some(DockerHealth::Unhealthy),
        _ => None,
    });
    ContainerFacts {
        id: c.id.clone().unwrap_or_default(),
        name: c.name.clone().unwrap_or_default().trim_start_matches('/').to_string(),
        image: config.image.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
        labels: config.labels.unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>(),
        ports,
        networks,
        health,
    }
}

/// The watcher: owns nothing but its settings; everything it knows comes from Docker and
/// the catalog.
pub struct DockerWatcher {
    pub mode: Mode,
    /// This agent's node record (registrations are written on it).
    pub node: Node,
    pub cluster: Arc<dyn Cluster>,
    pub catalog: Catalog,
}

/// The engine is local: retrying every second costs nothing and keeps the catalog fresh.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl DockerWatcher {
    /// Runs until `stop` turns true. Never returns an error: engine trouble is logged and
    /// retried.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let session = async {
                let docker = Docker::connect_with_defaults()
                    .map_err(|e| format!("cannot connect to the Docker engine: {e}"))?
                    .negotiate_version()
                    .await
                    .map_err(|e| format!("Docker engine unreachable: {e}"))?;
                tracing::info!(api = %docker.client_version(), "watching Docker");
                self.follow(&docker).await
            };
            let result = tokio::select! {
                r = session => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match result {
                Ok(()) => {
                    tracing::warn!("Docker event stream ended; reconnecting");
                    backoff = Duration::from_millis(250);
                }
                Err(e) => {
                    tracing::warn!("{e}; retrying in {backoff:?}");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One connected session: subscribe, reconcile, then apply events until the stream ends.
    async fn follow(&self, docker: &Docker) -> Result<(), String> {
        // Events since just before the reconciliation are replayed, so nothing that
        // happens in between is missed (handling is idempotent).
        let since =
            (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
                .saturating_sub(1);
        let filters: HashMap<&str, Vec<&str>> = HashMap::from([("type", vec!["container"])]);
        let options = EventsOptionsBuilder::new().since(&since.to_string()).filters(&filters).build();
        let mut events = docker.events(Some(options));
        self.reconcile(docker).await?;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => self.on_event(docker, ev).await,
                Err(e) => return Err(format!("Docker event stream failed: {e}")),
            }
        }
        Ok(())
    }

    async fn write(&self, cmd: Command) {
        if let Err(e) = self.cluster.write(cmd).await {
            tracing::warn!("docker: catalog write failed: {e}");
        }
    }

    /// Service IDs on this node registered for `container` (or for any container).
    fn owned(&self, container: Option<&str>) -> Vec<(String, String)> {
        let snap = self.catalog.snapshot();
        let (found, _) = snap.node_services(&self.node.node);
        found
            .map(|(_, services)| services)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| {
                let owner = s.meta.get(CONTAINER_META)?.clone();
                container.is_none_or(|c| c == owner).then_some((s.id, owner))
            })
            .collect()
    }

    async fn register_container(&self, docker: &Docker, id: &str) -> Result<BTreeSet<String>, String> {
        let inspect = docker.inspect_container(id, None).await.map_err(|e| format!("inspect {id}: {e}"))?;
        if !inspect.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
            return Ok(BTreeSet::new());
        }
        let facts = facts_from_inspect(&inspect);
        let (regs, warnings) = registrations(&facts, &self.mode);
        for w in warnings {
            tracing::warn!("docker: {w}");
        }
        let mut ids = BTreeSet::new();
        for r in regs {
            ids.insert(r.service.id.clone());
            let name = r.service.service.clone();
            self.write(Command::Register {
                node: self.node.clone(),
                service: Some(r.service),
                checks: r.checks,
                skip_node_update: false,
                replace_service_checks: true,
            })
            .await;
            tracing::debug!(container = %facts.name, service = %name, "registered");
        }
        Ok(ids)
    }

    /// Makes the catalog match the running containers: registers what runs, deregisters
    /// what this node registered for containers that are gone.
    async fn reconcile(&self, docker: &Docker) -> Result<(), String> {
        let options = ListContainersOptionsBuilder::new().all(false).build();
        let running =
            docker.list_containers(Some(options)).await.map_err(|e| format!("listing containers failed: {e}"))?;
        let mut keep = BTreeSet::new();
        for c in running {
            let Some(id) = c.id else { continue };
            match self.register_container(docker, &id).await {
                Ok(ids) => keep.extend(ids),
                // One bad container never stops the watcher.
                Err(e) => tracing::warn!("docker: {e}"),
            }
        }
        let mut removed = 0;
        for (service_id, _) in self.owned(None) {
            if !keep.contains(&service_id) {
                self.write(Command::DeregisterService { node: self.node.node.clone(), service_id }).await;
                removed += 1;
            }
        }
        tracing::info!(registered = keep.len(), removed, "docker: reconciled with running containers");
        Ok(())
    }

    async fn set_status(&self, container: &str, prefix: &str, status: CheckStatus, output: &str) {
        for (service_id, _) in self.owned(Some(container)) {
            let check_id = format!("{prefix}{service_id}");
            if self.catalog.snapshot().check(&self.node.node, &check_id).is_none() {
                continue;
            }
            self.write(Command::UpdateCheck {
                node: self.node.node.clone(),
                check_id,
                status,
                output: Some(output.to_string()),
            })
            .await;
        }
    }

    async fn on_event(&self, docker: &Docker, ev: EventMessage) {
        let Some(actor) = ev.actor else { return };
        let Some(id) = actor.id else { return };
        let action = ev.action.unwrap_or_default();
        let name = actor.attributes.as_ref().and_then(|a| a.get("name")).cloned().unwrap_or_else(|| id.clone());
        match action.as_str() {
            "start" | "unpause" => {
                if let Err(e) = self.register_container(docker, &id).await {
                    tracing::warn!("docker: {e}");
                }
                if action == "unpause" {
                    self.set_status(
                        &id,
                        LIFECYCLE_CHECK_PREFIX,
                        CheckStatus::Passing,
                        &format!("container {name} is running"),
                    )
                    .await;
                }
            }
            "kill" | "stop" | "pause" => {
                let output = format!("container {name} is stopping ({action})");
                self.set_status(&id, LIFECYCLE_CHECK_PREFIX, CheckStatus::Critical, &output).await;
            }
            "die" | "destroy" => {
                for (service_id, _) in self.owned(Some(&id)) {
                    self.write(Command::DeregisterService { node: self.node.node.clone(), service_id }).await;
                }
            }
            other => {
                if let Some(state) = other.strip_prefix("health_status:").and_then(DockerHealth::parse) {
                    let (status, output) = docker_health_status(state, None);
                    self.set_status(&id, HEALTH_CHECK_PREFIX, status, &output).await;
                }
            }
        }
    }
}
