//! The catalog's committed state: nodes, services, checks and KV in persistent (structurally
//! shared) maps, so a snapshot for readers is an O(1) clone and readers never block the
//! writer. Pure: `apply` takes a command and a Raft log index, queries return their data
//! together with the index a blocking query on them should wait on.
//!
//! Index bookkeeping follows Consul: every table and every service and node has its own
//! "last modified" index, so a blocking query on `web` is not woken by a write to `api`.

use std::collections::BTreeSet;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::command::{Command, Outcome};
use crate::model::{CheckStatus, HealthCheck, KvEntry, Node, Service, Session, has_all_tags};

mod kv;
mod queries;
mod sessions;
pub use sessions::LockDelay;

type NodeKey = (String, String);

const T_NODES: &str = "nodes";
const T_SERVICES: &str = "services";
const T_CHECKS: &str = "checks";
const T_KVS: &str = "kvs";
const T_SESSIONS: &str = "sessions";

fn svc_key(name: &str) -> String {
    format!("svc/{name}")
}

fn node_key(name: &str) -> String {
    format!("node/{name}")
}

/// One entry of a health query: a service instance with its node and all its checks
/// (node-level ones included).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceHealth {
    pub node: Node,
    pub service: Service,
    pub checks: Vec<HealthCheck>,
}

impl ServiceHealth {
    /// The worst status among the instance's checks; passing when it has none.
    pub fn aggregate(&self) -> CheckStatus {
        self.checks.iter().map(|c| c.status).max().unwrap_or(CheckStatus::Passing)
    }
}

#[derive(Clone, Debug, Default)]
pub struct CatalogState {
    last_index: u64,
    nodes: OrdMap<String, Node>,
    services: OrdMap<NodeKey, Service>,
    checks: OrdMap<NodeKey, HealthCheck>,
    by_service: OrdMap<String, OrdSet<NodeKey>>,
    kv: OrdMap<String, KvEntry>,
    tombstones: OrdMap<String, u64>,
    indexes: OrdMap<String, u64>,
    sessions: OrdMap<String, Session>,
    lock_delays: OrdMap<String, LockDelay>,
}

/// The serialised form of a state, used for Raft snapshots and `/v1/snapshot`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateImage {
    pub last_index: u64,
    pub nodes: Vec<Node>,
    pub services: Vec<(String, Service)>,
    pub checks: Vec<HealthCheck>,
    pub kv: Vec<KvEntry>,
    pub tombstones: Vec<(String, u64)>,
    pub indexes: Vec<(String, u64)>,
    #[serde(default)]
    pub sessions: Vec<Session>,
}

fn same_node(a: &Node, b: &Node) -> bool {
    a.id == b.id
        && a.address == b.address
        && a.datacenter == b.datacenter
        && a.tagged_addresses == b.tagged_addresses
        && a.meta == b.meta
}

fn same_service(a: &Service, b: &Service) -> bool {
    Service { create_index: 0, modify_index: 0, ..a.clone() }
        == Service { create_index: 0, modify_index: 0, ..b.clone() }
}

fn same_check(a: &HealthCheck, b: &HealthCheck) -> bool {
    HealthCheck { create_index: 0, modify_index: 0, ..a.clone() }
        == HealthCheck { create_index: 0, modify_index: 0, ..b.clone() }
}

impl CatalogState {
    /// The Raft index of the last applied entry.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The index a query on `table` waits on; never 0 (Consul's rule).
    fn index_of(&self, key: &str) -> u64 {
        self.indexes.get(key).copied().unwrap_or(0).max(1)
    }

    fn bump(&mut self, key: String, index: u64) {
        self.indexes.insert(key, index);
    }

    /// Applies one committed command at Raft log `index`. A rejected command leaves the
    /// state exactly as it was.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Outcome {
        if let Command::Batch(cmds) = cmd {
            return Outcome::Batch(cmds.iter().map(|c| self.apply(index, c)).collect());
        }
        let mut next = self.clone();
        let outcome = next.apply_inner(index, cmd);
        if let Outcome::Applied | Outcome::Txn(_) = outcome {
            *self = next;
        }
        self.last_index = self.last_index.max(index);
        outcome
    }

    /// Records that `index` was applied without changing the catalog (blank and
    /// membership entries).
    pub fn advance(&mut self, index: u64) {
        self.last_index = self.last_index.max(index);
    }

    fn apply_inner(&mut self, idx: u64, cmd: &Command) -> Outcome {
        match cmd {
            Command::Register { node, service, checks, skip_node_update, replace_service_checks } => {
                self.register(idx, node, service.as_ref(), checks, *skip_node_update, *replace_service_checks)
            }
            Command::DeregisterNode { node } => {
                self.remove_node(idx, node);
                Outcome::Applied
            }
            Command::DeregisterService { node, service_id } => {
                self.remove_service(idx, node, service_id);
                Outcome::Applied
            }
            Command::DeregisterCheck { node, check_id } => {
                self.remove_check(idx, node, check_id);
                Outcome::Applied
            }
            Command::UpdateCheck { node, check_id, status, output } => {
                self.update_check(idx, node, check_id, *status, output.as_deref())
            }
            Command::KvSet { key, value, flags, cas } => self.kv_set(idx, key, value, *flags, *cas),
            Command::KvDelete { key, recurse, cas } => self.kv_delete(idx, key, *recurse, *cas),
            Command::Batch(_) => Outcome::Rejected("nested batches are not allowed".into()),
            Command::Restore { image } => {
                self.restore(idx, image);
                Outcome::Applied
            }
            Command::SessionCreate { session } => self.session_create(idx, session),
            Command::SessionDestroy { id } => {
                self.session_invalidate(idx, id);
                Outcome::Applied
            }
            Command::SessionRenew { id } => self.session_renew(id),
            Command::KvLock { key, value, flags, session, acquire } => {
                self.kv_lock(idx, key, value, *flags, session, *acquire)
            }
            Command::Txn(ops) => self.txn(idx, ops),
        }
    }

    /// Bumps the indexes that depend on anything about `node`: the node itself and every
    /// service with an instance on it.
    fn touch_node_dependents(&mut self, idx: u64, node: &str) {
        self.bump(node_key(node), idx);
        let names: BTreeSet<String> = self
            .services
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|(_, s)| s.service.clone())
            .collect();
        for name in names {
            self.bump(svc_key(&name), idx);
        }
    }

    fn register(
        &mut self,
        idx: u64,
        node: &Node,
        service: Option<&Service>,
        checks: &[HealthCheck],
        skip_node_update: bool,
        replace_service_checks: bool,
    ) -> Outcome {
        if let Err(rejected) = self.register_node(idx, node, skip_node_update) {
            return rejected;
        }
        if let Some(svc) = service {
            self.register_service(idx, &node.node, svc, checks, replace_service_checks);
        }
        self.register_checks(idx, &node.node, checks)
    }

    /// The node part of a registration: written only when it changed.
    fn register_node(&mut self, idx: u64, node: &Node, skip_node_update: bool) -> Result<(), Outcome> {
        let name = node.node.clone();
        match self.nodes.get(&name) {
            None if skip_node_update => {
                return Err(Outcome::Rejected(format!("Node {name:?} does not exist; register it with an Address")));
            }
            Some(existing) if skip_node_update || same_node(existing, node) => {}
            existing => {
                let create_index = existing.map(|e| e.create_index).unwrap_or(idx);
                let record = Node { create_index, modify_index: idx, ..node.clone() };
                self.nodes.insert(name.clone(), record);
                self.bump(T_NODES.into(), idx);
                self.touch_node_dependents(idx, &name);
            }
        }

        Ok(())
    }

    /// The service part: written only when it changed; its checks follow its name and tags,
    /// and with `replace_service_checks` the checks not given are removed.
    fn register_service(
        &mut self,
        idx: u64,
        node: &str,
        svc: &Service,
        checks: &[HealthCheck],
        replace_service_checks: bool,
    ) {
        let name = node.to_string();
        let key = (name.clone(), svc.id.clone());
        let previous = self.services.get(&key).cloned();
        let changed = previous.as_ref().is_none_or(|p| !same_service(p, svc));
        if changed {
            if let Some(p) = &previous
                && p.service != svc.service
            {
                self.unindex_service(&p.service, &key);
                self.bump(svc_key(&p.service), idx);
            }
            let create_index = previous.as_ref().map(|p| p.create_index).unwrap_or(idx);
            let record = Service { create_index, modify_index: idx, ..svc.clone() };
            self.services.insert(key.clone(), record);
            self.by_service.entry(svc.service.clone()).or_default().insert(key.clone());
            self.bump(T_SERVICES.into(), idx);
            self.bump(svc_key(&svc.service), idx);
            self.bump(node_key(&name), idx);
            // Checks carry their service's name and tags.
            let owned: Vec<NodeKey> = self
                .checks
                .iter()
                .filter(|((n, _), c)| *n == name && c.service_id == svc.id)
                .map(|(k, _)| k.clone())
                .collect();
            for ck in owned {
                if let Some(c) = self.checks.get_mut(&ck)
                    && (c.service_name != svc.service || c.service_tags != svc.tags)
                {
                    c.service_name = svc.service.clone();
                    c.service_tags = svc.tags.clone();
                    c.modify_index = idx;
                    self.bump(T_CHECKS.into(), idx);
                }
            }
        }
        if replace_service_checks {
            let keep: BTreeSet<&str> = checks.iter().map(|c| c.check_id.as_str()).collect();
            let stale: Vec<String> = self
                .checks
                .iter()
                .filter(|((n, id), c)| *n == name && c.service_id == svc.id && !keep.contains(id.as_str()))
                .map(|((_, id), _)| id.clone())
                .collect();
            for id in stale {
                self.remove_check(idx, &name, &id);
            }
        }
    }

    /// The checks of a registration, each written only when it changed. A check naming a
    /// service not on the node rejects the whole command.
    fn register_checks(&mut self, idx: u64, node: &str, checks: &[HealthCheck]) -> Outcome {
        let name = node.to_string();
        for check in checks {
            let mut check = check.clone();
            check.node = name.clone();
            if !check.service_id.is_empty() {
                let Some(owner) = self.services.get(&(name.clone(), check.service_id.clone())) else {
                    return Outcome::Rejected(format!(
                        "Check {:?} refers to unknown service ID {:?} on node {name:?}",
                        check.check_id, check.service_id
                    ));
                };
                check.service_name = owner.service.clone();
                check.service_tags = owner.tags.clone();
            } else {
                check.service_name.clear();
                check.service_tags.clear();
            }
            let key = (name.clone(), check.check_id.clone());
            let previous = self.checks.get(&key);
            if previous.is_some_and(|p| same_check(p, &check)) {
                continue;
            }
            check.create_index = previous.map(|p| p.create_index).unwrap_or(idx);
            check.modify_index = idx;
            self.bump_for_check(idx, &check);
            let critical = check.status == CheckStatus::Critical;
            self.checks.insert(key, check.clone());
            if critical {
                self.invalidate_sessions_of_check(idx, &name, &check.check_id);
            }
        }
        Outcome::Applied
    }

    fn bump_for_check(&mut self, idx: u64, check: &HealthCheck) {
        self.bump(T_CHECKS.into(), idx);
        self.bump(node_key(&check.node), idx);
        if check.service_id.is_empty() {
            self.touch_node_dependents(idx, &check.node.clone());
        } else {
            self.bump(svc_key(&check.service_name), idx);
        }
    }

    fn unindex_service(&mut self, name: &str, key: &NodeKey) {
        if let Some(set) = self.by_service.get_mut(name) {
            set.remove(key);
            if set.is_empty() {
                self.by_service.remove(name);
            }
        }
    }

    fn remove_check(&mut self, idx: u64, node: &str, check_id: &str) {
        if let Some(check) = self.checks.remove(&(node.to_string(), check_id.to_string())) {
            self.bump_for_check(idx, &check);
            self.invalidate_sessions_of_check(idx, node, check_id);
        }
    }

    fn remove_service(&mut self, idx: u64, node: &str, service_id: &str) {
        let key = (node.to_string(), service_id.to_string());
        let Some(svc) = self.services.remove(&key) else {
            return;
        };
        self.unindex_service(&svc.service, &key);
        self.bump(T_SERVICES.into(), idx);
        self.bump(svc_key(&svc.service), idx);
        self.bump(node_key(node), idx);
        let owned: Vec<String> = self
            .checks
            .iter()
            .filter(|((n, _), c)| n == node && c.service_id == service_id)
            .map(|((_, id), _)| id.clone())
            .collect();
        for id in owned {
            self.remove_check(idx, node, &id);
        }
    }

    fn remove_node(&mut self, idx: u64, node: &str) {
        if !self.nodes.contains_key(node) {
            return;
        }
        self.invalidate_sessions_of_node(idx, node);
        let ids: Vec<String> = self
            .services
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|((_, id), _)| id.clone())
            .collect();
        for id in ids {
            self.remove_service(idx, node, &id);
        }
        let checks: Vec<String> = self
            .checks
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|((_, id), _)| id.clone())
            .collect();
        for id in checks {
            self.remove_check(idx, node, &id);
        }
        self.nodes.remove(node);
        self.bump(T_NODES.into(), idx);
        self.bump(node_key(node), idx);
    }

    fn update_check(
        &mut self,
        idx: u64,
        node: &str,
        check_id: &str,
        status: CheckStatus,
        output: Option<&str>,
    ) -> Outcome {
        let key = (node.to_string(), check_id.to_string());
        let Some(current) = self.checks.get(&key) else {
            return Outcome::Rejected(format!("Unknown check ID {check_id:?} on node {node:?}"));
        };
        let new_output = output.unwrap_or(&current.output);
        if current.status == status && current.output == new_output {
            return Outcome::Applied;
        }
        let mut check = current.clone();
        check.status = status;
        check.output = new_output.to_string();
        check.modify_index = idx;
        self.bump_for_check(idx, &check);
        self.checks.insert(key, check);
        if status == CheckStatus::Critical {
            self.invalidate_sessions_of_check(idx, node, check_id);
        }
        Outcome::Applied
    }

    pub fn to_image(&self) -> StateImage {
        StateImage {
            last_index: self.last_index,
            nodes: self.nodes.values().cloned().collect(),
            services: self.services.iter().map(|((n, _), s)| (n.clone(), s.clone())).collect(),
            checks: self.checks.values().cloned().collect(),
            kv: self.kv.values().cloned().collect(),
            tombstones: self.tombstones.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            indexes: self.indexes.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            sessions: self.sessions.values().cloned().collect(),
        }
    }

    /// Replaces the whole state with a snapshot's (`/v1/snapshot` restore) at Raft index
    /// `idx`. Everything counts as changed at `idx`: every index a blocking query may wait
    /// on (the old state's and the image's), every KV entry's ModifyIndex, and a tombstone
    /// for every key the image does not have, so every watcher wakes and re-reads.
    fn restore(&mut self, idx: u64, image: &StateImage) {
        let mut next = CatalogState::from_image(image.clone());
        let keys: Vec<String> = self.indexes.keys().chain(next.indexes.keys()).cloned().collect();
        for k in keys {
            next.indexes.insert(k, idx);
        }
        for t in [T_NODES, T_SERVICES, T_CHECKS, T_KVS, T_SESSIONS] {
            next.indexes.insert(t.to_string(), idx);
        }
        next.kv = next.kv.into_iter().map(|(k, e)| (k, KvEntry { modify_index: idx, ..e })).collect();
        for gone in self.kv.keys().filter(|k| !next.kv.contains_key(*k)) {
            next.tombstones.insert(gone.clone(), idx);
        }
        next.last_index = idx;
        *self = next;
    }

    pub fn from_image(image: StateImage) -> Self {
        let mut s = CatalogState { last_index: image.last_index, ..Default::default() };
        for n in image.nodes {
            s.nodes.insert(n.node.clone(), n);
        }
        for (node, svc) in image.services {
            let key = (node, svc.id.clone());
            s.by_service.entry(svc.service.clone()).or_default().insert(key.clone());
            s.services.insert(key, svc);
        }
        for c in image.checks {
            s.checks.insert((c.node.clone(), c.check_id.clone()), c);
        }
        for e in image.kv {
            s.kv.insert(e.key.clone(), e);
        }
        s.tombstones = image.tombstones.into_iter().collect();
        s.indexes = image.indexes.into_iter().collect();
        s.sessions = image.sessions.into_iter().map(|x| (x.id.clone(), x)).collect();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node { node: name.into(), address: "10.0.0.1".into(), datacenter: "dc1".into(), ..Default::default() }
    }

    fn svc(id: &str, name: &str, tags: &[&str]) -> Service {
        Service {
            id: id.into(),
            service: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            port: 80,
            ..Default::default()
        }
    }

    fn check(id: &str, service_id: &str, status: CheckStatus) -> HealthCheck {
        HealthCheck {
            check_id: id.into(),
            name: id.into(),
            service_id: service_id.into(),
            status,
            ..Default::default()
        }
    }

    fn register(
        s: &mut CatalogState,
        idx: u64,
        n: &str,
        service: Option<Service>,
        checks: Vec<HealthCheck>,
    ) -> Outcome {
        s.apply(
            idx,
            &Command::Register {
                node: node(n),
                service,
                checks,
                skip_node_update: false,
                replace_service_checks: false,
            },
        )
    }

    #[test]
    fn unrelated_writes_do_not_move_a_service_index() {
        let mut s = CatalogState::default();
        register(&mut s, 2, "n1", Some(svc("web1", "web", &[])), vec![]);
        let (_, web_idx) = s.service_instances("web", &[]);
        assert_eq!(web_idx, 2);
        register(&mut s, 3, "n1", Some(svc("api1", "api", &[])), vec![]);
        s.apply(4, &Command::KvSet { key: "a".into(), value: b"1".to_vec(), flags: 0, cas: None });
        assert_eq!(s.service_instances("web", &[]).1, 2);
        assert_eq!(s.service_instances("api", &[]).1, 3);
        s.apply(5, &Command::DeregisterService { node: "n1".into(), service_id: "web1".into() });
        let (list, idx) = s.service_instances("web", &[]);
        assert!(list.is_empty());
        assert_eq!(idx, 5, "deregistering moves the service's index");
    }

    #[test]
    fn identical_registration_is_a_no_op() {
        let mut s = CatalogState::default();
        register(&mut s, 2, "n1", Some(svc("web1", "web", &["a"])), vec![check("c1", "web1", CheckStatus::Passing)]);
        register(&mut s, 3, "n1", Some(svc("web1", "web", &["a"])), vec![check("c1", "web1", CheckStatus::Passing)]);
        let (list, idx) = s.service_health("web", &[], false);
        assert_eq!(idx, 2);
        assert_eq!(list[0].service.modify_index, 2);
        assert_eq!(s.last_index(), 3);
    }

    #[test]
    fn passing_filter_counts_node_checks() {
        let mut s = CatalogState::default();
        register(&mut s, 2, "n1", Some(svc("web1", "web", &[])), vec![check("c1", "web1", CheckStatus::Passing)]);
        register(&mut s, 3, "n2", Some(svc("web2", "web", &[])), vec![check("serfHealth", "", CheckStatus::Critical)]);
        let (all, _) = s.service_health("web", &[], false);
        assert_eq!(all.len(), 2);
        let (passing, idx) = s.service_health("web", &[], true);
        assert_eq!(passing.len(), 1);
        assert_eq!(passing[0].service.id, "web1");
        assert_eq!(idx, 3, "node-level checks move the index of services on the node");
    }

    #[test]
    fn check_for_unknown_service_is_rejected_and_changes_nothing() {
        let mut s = CatalogState::default();
        let out = register(&mut s, 2, "n1", None, vec![check("c1", "nope", CheckStatus::Passing)]);
        assert!(matches!(out, Outcome::Rejected(_)));
        assert!(s.nodes().0.is_empty(), "the node part was rolled back too");
        assert_eq!(s.last_index(), 2);
    }

    #[test]
    fn update_check_writes_only_changes() {
        let mut s = CatalogState::default();
        register(&mut s, 2, "n1", Some(svc("web1", "web", &[])), vec![check("c1", "web1", CheckStatus::Critical)]);
        let upd = |st| Command::UpdateCheck { node: "n1".into(), check_id: "c1".into(), status: st, output: None };
        s.apply(3, &upd(CheckStatus::Passing));
        assert_eq!(s.service_checks("web").1, 3);
        s.apply(4, &upd(CheckStatus::Passing));
        assert_eq!(s.service_checks("web").1, 3, "same status: no change");
        let bad = Command::UpdateCheck {
            node: "n1".into(),
            check_id: "zz".into(),
            status: CheckStatus::Passing,
            output: None,
        };
        assert!(matches!(s.apply(5, &bad), Outcome::Rejected(_)));
    }

    #[test]
    fn kv_cas_and_flags() {
        let mut s = CatalogState::default();
        let set = |cas| Command::KvSet { key: "k".into(), value: b"v".to_vec(), flags: 42, cas };
        assert_eq!(s.apply(2, &set(Some(1))), Outcome::CasFailed);
        assert_eq!(s.apply(3, &set(Some(0))), Outcome::Applied);
        assert_eq!(s.apply(4, &set(Some(0))), Outcome::CasFailed);
        assert_eq!(s.apply(5, &set(Some(3))), Outcome::Applied);
        let (e, idx) = s.kv_get("k");
        let e = e.expect("present");
        assert_eq!((e.create_index, e.modify_index, e.flags, idx), (3, 5, 42, 5));
        let del = |cas| Command::KvDelete { key: "k".into(), recurse: false, cas };
        assert_eq!(s.apply(6, &del(Some(3))), Outcome::CasFailed);
        assert_eq!(s.apply(7, &del(Some(5))), Outcome::Applied);
        assert_eq!(s.kv_get("k"), (None, 7), "a deleted key reports its tombstone index");
    }

    #[test]
    fn kv_keys_fold_at_separator() {
        let mut s = CatalogState::default();
        for (i, k) in ["app/a", "app/b/c", "app/b/d", "apple", "b"].iter().enumerate() {
            s.apply(i as u64 + 2, &Command::KvSet { key: k.to_string(), value: vec![], flags: 0, cas: None });
        }
        assert_eq!(s.kv_keys("app/", Some("/")).0, vec!["app/a", "app/b/"]);
        assert_eq!(s.kv_keys("app", None).0.len(), 4);
        assert_eq!(s.kv_list("app/b/").0.len(), 2);
        let before = s.kv_list("app/").1;
        s.apply(20, &Command::KvSet { key: "b".into(), value: vec![1], flags: 0, cas: None });
        assert_eq!(s.kv_list("app/").1, before, "a write outside the prefix does not move it");
        s.apply(21, &Command::KvDelete { key: "app/b".into(), recurse: true, cas: None });
        assert_eq!(s.kv_keys("app/", None).0, vec!["app/a"]);
        assert_eq!(s.kv_list("app/").1, 21);
    }

    #[test]
    fn batch_applies_in_order_at_one_index() {
        let mut s = CatalogState::default();
        let set = |k: &str, cas| Command::KvSet { key: k.into(), value: b"v".to_vec(), flags: 0, cas };
        let out = s.apply(7, &Command::Batch(vec![set("a", Some(0)), set("a", Some(0)), set("b", None)]));
        assert_eq!(out, Outcome::Batch(vec![Outcome::Applied, Outcome::CasFailed, Outcome::Applied]));
        assert_eq!(s.kv_get("a").1, 7);
        assert_eq!(s.kv_get("b").1, 7);
    }

    #[test]
    fn snapshot_image_round_trips() {
        let mut s = CatalogState::default();
        register(&mut s, 2, "n1", Some(svc("web1", "web", &["x"])), vec![check("c1", "web1", CheckStatus::Passing)]);
        s.apply(3, &Command::KvSet { key: "k".into(), value: b"v".to_vec(), flags: 1, cas: None });
        let json = serde_json::to_vec(&s.to_image()).expect("serialise");
        let back = CatalogState::from_image(serde_json::from_slice(&json).expect("parse"));
        assert_eq!(back.service_health("web", &[], true), s.service_health("web", &[], true));
        assert_eq!(back.kv_get("k"), s.kv_get("k"));
        assert_eq!(back.service_names(), s.service_names());
        assert_eq!(back.last_index(), 3);
    }
}
