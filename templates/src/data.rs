//! What a template can ask the catalog for: the [`Dependency`] keys (one per consul-template
//! query), the plain records they answer with, and the [`TemplateData`] trait every data
//! source implements (the in-process catalog in `catalog_data.rs`, the HTTP API in the
//! binary).
//!
//! Records are plain data with Consul's meaning, independent of `discovery`'s types, so a
//! source over the HTTP API can build them from JSON and the renderer stays pure.

use std::collections::BTreeMap;

/// One query a template made. Rendering records every dependency it used, so a watcher
/// knows what to wait on; equal dependencies share one fetch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dependency {
    /// Instances of a service with their health (`service`): `/v1/health/service/:name`.
    /// The health filter is applied by the renderer, so it is not part of the key.
    HealthService { name: String, tag: Option<String>, dc: Option<String> },
    /// Service names with their tags (`services`): `/v1/catalog/services`.
    CatalogServices { dc: Option<String> },
    /// One key (`key`, `keyOrDefault`, `keyExists`): `/v1/kv/:key`.
    Key { key: String },
    /// Every key under a prefix (`ls`, `tree`, `safeLs`, `safeTree`): `/v1/kv/:prefix?recurse`.
    KeyPrefix { prefix: String },
    /// A node and its services (`node`); `None` is the local agent's node.
    Node { name: Option<String>, dc: Option<String> },
    /// Every node (`nodes`): `/v1/catalog/nodes`.
    Nodes { dc: Option<String> },
    /// Known datacenters (`datacenters`): `/v1/catalog/datacenters`.
    Datacenters,
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dc = |dc: &Option<String>| dc.as_ref().map(|d| format!("@{d}")).unwrap_or_default();
        match self {
            Dependency::HealthService { name, tag, dc: d } => {
                let tag = tag.as_ref().map(|t| format!("{t}.")).unwrap_or_default();
                write!(f, "health.service({tag}{name}{})", dc(d))
            }
            Dependency::CatalogServices { dc: d } => write!(f, "catalog.services({})", dc(d)),
            Dependency::Key { key } => write!(f, "kv.get({key})"),
            Dependency::KeyPrefix { prefix } => write!(f, "kv.list({prefix})"),
            Dependency::Node { name, dc: d } => {
                write!(f, "catalog.node({}{})", name.as_deref().unwrap_or(""), dc(d))
            }
            Dependency::Nodes { dc: d } => write!(f, "catalog.nodes({})", dc(d)),
            Dependency::Datacenters => write!(f, "catalog.datacenters"),
        }
    }
}

/// The answer to a [`Dependency`]; the variant matches the dependency's.
#[derive(Clone, Debug, PartialEq)]
pub enum DataValue {
    HealthService(Vec<ServiceEntry>),
    CatalogServices(Vec<ServiceSummary>),
    /// `None`: the key does not exist.
    Key(Option<KvPair>),
    KeyPrefix(Vec<KvPair>),
    /// `None`: no such node.
    Node(Option<NodeServices>),
    Nodes(Vec<NodeInfo>),
    Datacenters(Vec<String>),
}

/// A source of catalog data for one render.
pub trait TemplateData: Send + Sync {
    /// The current answer to `dep`, or `None` when the source does not know it yet (an
    /// HTTP source before its first fetch). A render that met an unknown dependency is
    /// incomplete: it runs with empty values (consul-template's first pass) and is not
    /// written.
    fn fetch(&self, dep: &Dependency) -> Option<DataValue>;
}

/// A service instance with its node and aggregated health (consul-template's
/// `HealthService`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceEntry {
    pub node: String,
    pub node_id: String,
    pub node_address: String,
    pub node_datacenter: String,
    pub node_tagged_addresses: BTreeMap<String, String>,
    pub node_meta: BTreeMap<String, String>,
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    /// The service's own address; empty means "the node's address".
    pub address: String,
    pub port: u16,
    pub service_meta: BTreeMap<String, String>,
    /// passing, warning or critical: the worst of the instance's checks (node checks too).
    pub status: String,
    pub weights_passing: u32,
    pub weights_warning: u32,
    /// The statuses of the instance's checks, for display (`.Checks`).
    pub checks: Vec<CheckInfo>,
}

/// One check of an instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckInfo {
    pub check_id: String,
    pub name: String,
    pub status: String,
    pub output: String,
    pub service_id: String,
}

/// A service name with the union of its instances' tags (`CatalogSnippet`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceSummary {
    pub name: String,
    pub tags: Vec<String>,
}

/// A KV entry; `key` is the full path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvPair {
    pub key: String,
    /// The value as text (invalid UTF-8 is replaced, as Go's string conversion would keep
    /// bytes; templates are text).
    pub value: String,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub session: String,
}

/// A catalog node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
}

/// A service registered on a node, as `node` lists it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeService {
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub port: u16,
    pub address: String,
}

/// A node with its services (`CatalogNode`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeServices {
    pub node: NodeInfo,
    pub services: Vec<NodeService>,
}

/// A data source with fixed answers: for tests, `-dry` checks and examples. Dependencies
/// it has no answer for are unknown (`None`).
#[derive(Clone, Debug, Default)]
pub struct StaticData {
    pub answers: std::collections::HashMap<Dependency, DataValue>,
}

impl StaticData {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the answer to `dep`.
    pub fn with(mut self, dep: Dependency, value: DataValue) -> Self {
        self.answers.insert(dep, value);
        self
    }
}

impl TemplateData for StaticData {
    fn fetch(&self, dep: &Dependency) -> Option<DataValue> {
        self.answers.get(dep).cloned()
    }
}
