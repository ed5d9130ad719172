//! Reads of the catalog state: nodes, services and their health, checks, KV entries and
//! key listings, each with the Raft index a blocking query on it waits past.

use std::collections::BTreeMap;

use super::*;

impl CatalogState {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> (Vec<Node>, u64) {
        (self.nodes.values().cloned().collect(), self.index_of(T_NODES))
    }

    /// Nodes whose meta `key` is `value`.
    pub fn nodes_with_meta(&self, key: &str, value: &str) -> Vec<&Node> {
        self.nodes.values().filter(|n| n.meta.get(key).is_some_and(|v| v == value)).collect()
    }

    /// Service names with the union of their instances' tags (`/v1/catalog/services`).
    pub fn service_names(&self) -> (BTreeMap<String, Vec<String>>, u64) {
        let mut out = BTreeMap::new();
        for (name, keys) in &self.by_service {
            let tags: BTreeSet<String> =
                keys.iter().filter_map(|k| self.services.get(k)).flat_map(|s| s.tags.iter().cloned()).collect();
            out.insert(name.clone(), tags.into_iter().collect());
        }
        (out, self.index_of(T_SERVICES))
    }

    /// Instances of `name` carrying every tag in `tags`, with their nodes.
    pub fn service_instances(&self, name: &str, tags: &[String]) -> (Vec<(Node, Service)>, u64) {
        let mut out = Vec::new();
        if let Some(keys) = self.by_service.get(name) {
            for key in keys {
                let (Some(svc), Some(node)) = (self.services.get(key), self.nodes.get(&key.0)) else {
                    continue;
                };
                if has_all_tags(&svc.tags, tags) {
                    out.push((node.clone(), svc.clone()));
                }
            }
        }
        (out, self.index_of(&svc_key(name)))
    }

    pub(super) fn checks_of_node(&self, node: &str) -> impl Iterator<Item = &HealthCheck> {
        self.checks.range((node.to_string(), String::new())..).take_while(move |((n, _), _)| n == node).map(|(_, c)| c)
    }

    /// Health entries of `name` (`/v1/health/service/:name`); `passing_only` drops any
    /// instance with a non-passing check, node checks included.
    pub fn service_health(&self, name: &str, tags: &[String], passing_only: bool) -> (Vec<ServiceHealth>, u64) {
        let (instances, index) = self.service_instances(name, tags);
        let out = instances
            .into_iter()
            .map(|(node, service)| {
                let checks = self
                    .checks_of_node(&node.node)
                    .filter(|c| c.service_id.is_empty() || c.service_id == service.id)
                    .cloned()
                    .collect();
                ServiceHealth { node, service, checks }
            })
            .filter(|h| !passing_only || h.aggregate() == CheckStatus::Passing)
            .collect();
        (out, index)
    }

    /// Checks of every instance of `name` (`/v1/health/checks/:service`).
    pub fn service_checks(&self, name: &str) -> (Vec<HealthCheck>, u64) {
        let mut out = Vec::new();
        if let Some(keys) = self.by_service.get(name) {
            for (node, id) in keys {
                out.extend(self.checks_of_node(node).filter(|c| &c.service_id == id).cloned());
            }
        }
        (out, self.index_of(&svc_key(name)))
    }

    /// Checks in `state` (`None` = any) (`/v1/health/state/:state`).
    pub fn checks_in_state(&self, state: Option<CheckStatus>) -> (Vec<HealthCheck>, u64) {
        let out = self.checks.values().filter(|c| state.is_none_or(|s| c.status == s)).cloned().collect();
        (out, self.index_of(T_CHECKS))
    }

    /// A node with its services (`None` when unknown) (`/v1/catalog/node/:node`).
    pub fn node_services(&self, node: &str) -> (Option<(Node, Vec<Service>)>, u64) {
        let index = self.index_of(&node_key(node));
        let Some(n) = self.nodes.get(node) else {
            return (None, index);
        };
        let services = self
            .services
            .range((node.to_string(), String::new())..)
            .take_while(|((nn, _), _)| nn == node)
            .map(|(_, s)| s.clone())
            .collect();
        (Some((n.clone(), services)), index)
    }

    /// Every check on `node` (`/v1/health/node/:node`, `/v1/agent/checks`).
    pub fn node_checks(&self, node: &str) -> (Vec<HealthCheck>, u64) {
        (self.checks_of_node(node).cloned().collect(), self.index_of(&node_key(node)))
    }

    pub fn check(&self, node: &str, check_id: &str) -> Option<&HealthCheck> {
        self.checks.get(&(node.to_string(), check_id.to_string()))
    }

    pub fn service(&self, node: &str, service_id: &str) -> Option<&Service> {
        self.services.get(&(node.to_string(), service_id.to_string()))
    }

    /// One key (`None` when absent). Its index is the key's own ModifyIndex, or the index
    /// at which it was deleted, so unrelated writes do not wake a watcher.
    pub fn kv_get(&self, key: &str) -> (Option<KvEntry>, u64) {
        match self.kv.get(key) {
            Some(e) => (Some(e.clone()), e.modify_index.max(1)),
            None => (None, self.tombstones.get(key).copied().unwrap_or(0).max(1)),
        }
    }

    pub(super) fn prefix_index(&self, prefix: &str) -> u64 {
        let live = self
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.modify_index)
            .max()
            .unwrap_or(0);
        let dead = self
            .tombstones
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(0);
        live.max(dead).max(1)
    }

    /// Every entry under `prefix` (`?recurse`).
    pub fn kv_list(&self, prefix: &str) -> (Vec<KvEntry>, u64) {
        let out = self
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect();
        (out, self.prefix_index(prefix))
    }

    /// Keys under `prefix`, folded at the first `separator` after it (`?keys&separator=/`).
    pub fn kv_keys(&self, prefix: &str, separator: Option<&str>) -> (Vec<String>, u64) {
        let mut out: Vec<String> = Vec::new();
        for (k, _) in self.kv.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)) {
            let folded = match separator.filter(|s| !s.is_empty()) {
                Some(sep) => match k[prefix.len()..].find(sep) {
                    Some(pos) => &k[..prefix.len() + pos + sep.len()],
                    None => k.as_str(),
                },
                None => k.as_str(),
            };
            if out.last().map(String::as_str) != Some(folded) {
                out.push(folded.to_string());
            }
        }
        (out, self.prefix_index(prefix))
    }

    // -------------------------------------------------------------- snapshots --
}
