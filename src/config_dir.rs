//! Service and check definitions from `--config-dir` and `--config-file`, in Consul's JSON format
//! (`{"service": {...}}`, `{"services": [...]}`, `{"check": ...}`, `{"checks": [...]}`).
//!
//! Loading is all-or-nothing: every file is parsed and validated before anything is
//! written, so a bad file at reload changes nothing. What was registered from the
//! directory is remembered in the data dir, so a definition deleted from disk is
//! deregistered on the next load, even across restarts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use catalog::Cluster;
use catalog::command::{Command, Outcome};
use catalog::decode::{ConfigFile, decode_value};
use catalog::model::{HealthCheck, Service};
use local_agent::health::CheckPolicy;
use serde::{Deserialize, Serialize};

use catalog::model::AgentInfo;

/// What one load found.
pub struct Definitions {
    pub services: Vec<(Service, Vec<HealthCheck>)>,
    pub checks: Vec<HealthCheck>,
}

#[derive(Default, Serialize, Deserialize)]
struct Registered {
    services: BTreeSet<String>,
    checks: BTreeSet<String>,
}

/// Where definitions come from: `-config-file` files and the `*.json` files of `-config-dir`
/// directories (listed again at every load, so new files are picked up).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub files: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
}

impl Sources {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }
}

/// Reads and validates every definition of `sources`, and every agent setting beside them
/// (an unknown key fails the load). Wasm checks must name a plugin of the agent's
/// `--plugin-dir`, as at the HTTP API; without a `policy` (`wharf validate`) they are not
/// checked against one.
pub fn read_definitions(
    sources: &Sources,
    node: &str,
    datacenter: &str,
    policy: Option<&CheckPolicy>,
) -> Result<Definitions> {
    let files = crate::agent_config::config_files(&sources.files, &sources.dirs)?;
    crate::agent_config::load(&files, None)?;
    let wasm_allowed = |checks: &[HealthCheck]| policy.map_or(Ok(()), |p| wasm_allowed(p, checks));
    let mut defs = Definitions { services: Vec::new(), checks: Vec::new() };
    for file in files {
        let text = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let raw: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", file.display()))?;
        let parsed: ConfigFile = decode_value(raw).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        let (services, checks) = parsed.all_services();
        for reg in services {
            let (svc, checks) = reg.into_records(node, datacenter).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            wasm_allowed(&checks).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            defs.services.push((svc, checks));
        }
        for reg in checks {
            if reg.name.trim().is_empty() {
                bail!("{}: check without a name", file.display());
            }
            if !reg.service_id.is_empty() {
                bail!(
                    "{}: top-level check {:?} names a ServiceID; define it inside that service's \"checks\" instead",
                    file.display(),
                    reg.name
                );
            }
            let id = reg.name.clone();
            let check =
                reg.into_check(node, None, id, String::new()).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            wasm_allowed(std::slice::from_ref(&check)).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            defs.checks.push(check);
        }
    }
    let mut seen = BTreeSet::new();
    for (svc, _) in &defs.services {
        if !seen.insert(svc.id.clone()) {
            bail!("service ID {:?} is defined twice in the config dir", svc.id);
        }
    }
    Ok(defs)
}

/// The policy's Wasm rules (a known plugin, a plugin dir). Script checks from local files
/// stay allowed, as Consul's config files are trusted.
fn wasm_allowed(policy: &CheckPolicy, checks: &[HealthCheck]) -> Result<(), String> {
    let wasm: Vec<HealthCheck> = checks.iter().filter(|c| c.definition.wasm.is_some()).cloned().collect();
    policy.allows(&wasm)
}

fn state_file(data_dir: &Path) -> PathBuf {
    data_dir.join("config-dir-registrations.json")
}

async fn write_ok(cluster: &dyn Cluster, cmd: Command) -> Result<()> {
    let w = cluster.write(cmd).await?;
    match w.outcome {
        Outcome::Rejected(msg) => Err(anyhow!(msg)),
        _ => Ok(()),
    }
}

/// Loads the config dirs and makes the catalog match them. Returns a one-line summary.
pub async fn sync(
    sources: &Sources,
    data_dir: &Path,
    agent: &AgentInfo,
    policy: &CheckPolicy,
    cluster: &dyn Cluster,
) -> Result<String> {
    let defs = read_definitions(sources, &agent.node_name, &agent.datacenter, Some(policy))?;
    let path = state_file(data_dir);
    let previous: Registered = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => Registered::default(),
    };
    let mut now = Registered::default();
    for (svc, checks) in &defs.services {
        now.services.insert(svc.id.clone());
        write_ok(
            cluster,
            Command::Register {
                node: agent.self_node(),
                service: Some(svc.clone()),
                checks: checks.clone(),
                skip_node_update: false,
                replace_service_checks: true,
            },
        )
        .await
        .with_context(|| format!("registering service {:?}", svc.id))?;
    }
    for check in &defs.checks {
        now.checks.insert(check.check_id.clone());
        write_ok(
            cluster,
            Command::Register {
                node: agent.self_node(),
                service: None,
                checks: vec![check.clone()],
                skip_node_update: false,
                replace_service_checks: false,
            },
        )
        .await
        .with_context(|| format!("registering check {:?}", check.check_id))?;
    }
    for gone in previous.services.difference(&now.services) {
        write_ok(cluster, Command::DeregisterService { node: agent.node_name.clone(), service_id: gone.clone() })
            .await?;
    }
    for gone in previous.checks.difference(&now.checks) {
        write_ok(cluster, Command::DeregisterCheck { node: agent.node_name.clone(), check_id: gone.clone() }).await?;
    }
    let bytes = serde_json::to_vec(&now)?;
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(format!(
        "config dir: {} services, {} checks registered; {} services removed",
        now.services.len(),
        now.checks.len(),
        previous.services.difference(&now.services).count()
    ))
}
