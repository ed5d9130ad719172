//! Service and check definitions from `--config-dir` and `--config-file`, in Consul's JSON format
//! (`{"service": {...}}`, `{"services": [...]}`, `{"check": ...}`, `{"checks": [...]}`).
//!
//! Loading is all-or-nothing: every file is parsed and validated before anything is
//! written, so a bad file at reload changes nothing. What was registered from the
//! directory is remembered in the data dir, so a definition deleted from disk is
//! deregistered on the next load, even across restarts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use catalog::command::{Command, Outcome};
use catalog::decode::{ConfigFile, decode_value};
use catalog::model::{AgentInfo, HealthCheck, Service};
use catalog::{Cluster, ClusterError};
use serde::{Deserialize, Serialize};

use crate::config_file::{ConfigError, config_files, load};
use crate::health::CheckPolicy;

/// Why config-dir definitions were not loaded; a failed load changes nothing it had not
/// written yet, and names the file or registration at fault.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{}: invalid JSON: {error}", file.display())]
    Json {
        file: PathBuf,
        #[source]
        error: serde_json::Error,
    },
    #[error("{}: {problem}", file.display())]
    Invalid { file: PathBuf, problem: String },
    #[error("service ID {0:?} is defined twice in the config dir")]
    Duplicate(String),
    #[error("registering {what}: {error}")]
    Cluster {
        what: String,
        #[source]
        error: ClusterError,
    },
    #[error("registering {what}: {reason}")]
    Rejected { what: String, reason: String },
    #[error("cannot write {}: {error}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

type Result<T, E = DefinitionsError> = std::result::Result<T, E>;

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
    let files = config_files(&sources.files, &sources.dirs)?;
    load(&files, None)?;
    let wasm_allowed = |checks: &[HealthCheck]| policy.map_or(Ok(()), |p| wasm_allowed(p, checks));
    let mut defs = Definitions { services: Vec::new(), checks: Vec::new() };
    for file in files {
        let text = std::fs::read(&file).map_err(|error| DefinitionsError::Read { path: file.clone(), error })?;
        let raw: serde_json::Value =
            serde_json::from_slice(&text).map_err(|error| DefinitionsError::Json { file: file.clone(), error })?;
        let invalid = |problem: String| DefinitionsError::Invalid { file: file.clone(), problem };
        let parsed: ConfigFile = decode_value(raw).map_err(invalid)?;
        let (services, checks) = parsed.all_services();
        for reg in services {
            let (svc, checks) = reg.into_records(node, datacenter).map_err(invalid)?;
            wasm_allowed(&checks).map_err(invalid)?;
            defs.services.push((svc, checks));
        }
        for reg in checks {
            if reg.name.trim().is_empty() {
                return Err(invalid("check without a name".into()));
            }
            if !reg.service_id.is_empty() {
                return Err(invalid(format!(
                    "top-level check {:?} names a ServiceID; define it inside that service's \"checks\" instead",
                    reg.name
                )));
            }
            let id = reg.name.clone();
            let check = reg.into_check(node, None, id, String::new()).map_err(invalid)?;
            wasm_allowed(std::slice::from_ref(&check)).map_err(invalid)?;
            defs.checks.push(check);
        }
    }
    let mut seen = BTreeSet::new();
    for (svc, _) in &defs.services {
        if !seen.insert(svc.id.clone()) {
            return Err(DefinitionsError::Duplicate(svc.id.clone()));
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

async fn write_ok(cluster: &dyn Cluster, cmd: Command, what: impl Fn() -> String) -> Result<()> {
    let w = cluster.write(cmd).await.map_err(|error| DefinitionsError::Cluster { what: what(), error })?;
    match w.outcome {
        Outcome::Rejected(reason) => Err(DefinitionsError::Rejected { what: what(), reason }),
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
            || format!("service {:?}", svc.id),
        )
        .await?;
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
            || format!("check {:?}", check.check_id),
        )
        .await?;
    }
    for gone in previous.services.difference(&now.services) {
        let cmd = Command::DeregisterService { node: agent.node_name.clone(), service_id: gone.clone() };
        write_ok(cluster, cmd, || format!("the removal of service {gone:?}")).await?;
    }
    for gone in previous.checks.difference(&now.checks) {
        let cmd = Command::DeregisterCheck { node: agent.node_name.clone(), check_id: gone.clone() };
        write_ok(cluster, cmd, || format!("the removal of check {gone:?}")).await?;
    }
    let write_error = |error| DefinitionsError::Write { path: path.clone(), error };
    let bytes = serde_json::to_vec(&now).map_err(|e| write_error(std::io::Error::other(e)))?;
    std::fs::write(&path, bytes).map_err(write_error)?;
    Ok(format!(
        "config dir: {} services, {} checks registered; {} services removed",
        now.services.len(),
        now.checks.len(),
        previous.services.difference(&now.services).count()
    ))
}
