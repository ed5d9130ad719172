//! [`TemplateData`] over the in-process catalog: `wharf agent --template` renders from the
//! committed [`CatalogState`] snapshot directly (no HTTP, no polling). Reads `discovery`'s
//! read side only.

use std::sync::Arc;

use catalog::model::{HealthCheck, KvEntry, Node, Service};
use catalog::state::CatalogState;

use crate::data::{
    CheckInfo, DataValue, Dependency, KvPair, NodeInfo, NodeService, NodeServices, ServiceEntry, ServiceSummary,
    TemplateData,
};

/// One catalog snapshot seen from the agent `local_node` of datacenter `datacenter`.
#[derive(Clone)]
pub struct CatalogData {
    pub state: Arc<CatalogState>,
    pub local_node: String,
    pub datacenter: String,
}

impl CatalogData {
    pub fn new(state: Arc<CatalogState>, local_node: &str, datacenter: &str) -> Self {
        CatalogData { state, local_node: local_node.to_string(), datacenter: datacenter.to_string() }
    }

    /// wharf has one datacenter: another one has no data (Consul would forward the query).
    fn foreign(&self, dc: &Option<String>) -> bool {
        dc.as_ref().is_some_and(|d| *d != self.datacenter)
    }
}

pub fn node_info(n: &Node) -> NodeInfo {
    NodeInfo {
        id: n.id.clone(),
        node: n.node.clone(),
        address: n.address.clone(),
        datacenter: n.datacenter.clone(),
        tagged_addresses: n.tagged_addresses.clone(),
        meta: n.meta.clone(),
    }
}

fn check_info(c: &HealthCheck) -> CheckInfo {
    CheckInfo {
        check_id: c.check_id.clone(),
        name: c.name.clone(),
        status: c.status.as_str().to_string(),
        output: c.output.clone(),
        service_id: c.service_id.clone(),
    }
}

fn kv_pair(e: &KvEntry) -> KvPair {
    KvPair {
        key: e.key.clone(),
        value: String::from_utf8_lossy(&e.value).into_owned(),
        flags: e.flags,
        create_index: e.create_index,
        modify_index: e.modify_index,
        lock_index: e.lock_index,
        session: e.session.clone(),
    }
}

fn node_service(s: &Service) -> NodeService {
    NodeService {
        id: s.id.clone(),
        service: s.service.clone(),
        tags: s.tags.clone(),
        meta: s.meta.clone(),
        port: s.port,
        address: s.address.clone(),
    }
}

impl TemplateData for CatalogData {
    fn fetch(&self, dep: &Dependency) -> Option<DataValue> {
        let st = &self.state;
        Some(match dep {
            Dependency::HealthService { dc, .. } | Dependency::CatalogServices { dc } | Dependency::Nodes { dc }
                if self.foreign(dc) =>
            {
                return Some(match dep {
                    Dependency::HealthService { .. } => DataValue::HealthService(Vec::new()),
                    Dependency::CatalogServices { .. } => DataValue::CatalogServices(Vec::new()),
                    _ => DataValue::Nodes(Vec::new()),
                });
            }
            Dependency::HealthService { name, tag, .. } => {
                let tags: Vec<String> = tag.iter().cloned().collect();
                let (entries, _) = st.service_health(name, &tags, false);
                DataValue::HealthService(
                    entries
                        .iter()
                        .map(|h| ServiceEntry {
                            node: h.node.node.clone(),
                            node_id: h.node.id.clone(),
                            node_address: h.node.address.clone(),
                            node_datacenter: h.node.datacenter.clone(),
                            node_tagged_addresses: h.node.tagged_addresses.clone(),
                            node_meta: h.node.meta.clone(),
                            id: h.service.id.clone(),
                            name: h.service.service.clone(),
                            tags: h.service.tags.clone(),
                            address: h.service.address.clone(),
                            port: h.service.port,
                            service_meta: h.service.meta.clone(),
                            status: h.aggregate().as_str().to_string(),
                            weights_passing: h.service.weights.passing,
                            weights_warning: h.service.weights.warning,
                            checks: h.checks.iter().map(check_info).collect(),
                        })
                        .collect(),
                )
            }
            Dependency::CatalogServices { .. } => DataValue::CatalogServices(
                st.service_names().0.into_iter().map(|(name, tags)| ServiceSummary { name, tags }).collect(),
            ),
            Dependency::Key { key } => DataValue::Key(st.kv_get(key).0.as_ref().map(kv_pair)),
            Dependency::KeyPrefix { prefix } => {
                DataValue::KeyPrefix(st.kv_list(prefix).0.iter().map(kv_pair).collect())
            }
            Dependency::Node { name, dc } => {
                if self.foreign(dc) {
                    return Some(DataValue::Node(None));
                }
                let name = name.as_deref().unwrap_or(&self.local_node);
                DataValue::Node(st.node_services(name).0.map(|(n, services)| NodeServices {
                    node: node_info(&n),
                    services: services.iter().map(node_service).collect(),
                }))
            }
            Dependency::Nodes { .. } => DataValue::Nodes(st.nodes().0.iter().map(node_info).collect()),
            Dependency::Datacenters => DataValue::Datacenters(vec![self.datacenter.clone()]),
        })
    }
}
