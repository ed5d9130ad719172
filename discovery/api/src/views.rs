//! JSON views of catalog records in the exact shapes each Consul endpoint returns (the
//! same service looks different in `/v1/agent/services`, `/v1/catalog/service` and
//! `/v1/health/service`). Pure functions of the records.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use catalog::model::{HealthCheck, KvEntry, Node, Service};
use catalog::state::ServiceHealth;

fn proxy_placeholder() -> Value {
    json!({"Mode": "", "MeshGateway": {}, "Expose": {}})
}

/// `/v1/agent/services` and `/v1/agent/service/:id`.
pub fn agent_service(s: &Service) -> Value {
    json!({
        "ID": s.id,
        "Service": s.service,
        "Tags": s.tags,
        "Meta": s.meta,
        "Port": s.port,
        "Address": s.address,
        "Weights": s.weights,
        "EnableTagOverride": s.enable_tag_override,
        "Datacenter": s.datacenter,
    })
}

/// The `Service` of a health entry and the values of `/v1/catalog/node/:node`.
pub fn node_service(s: &Service) -> Value {
    json!({
        "ID": s.id,
        "Service": s.service,
        "Tags": s.tags,
        "Address": s.address,
        "Meta": s.meta,
        "Port": s.port,
        "Weights": s.weights,
        "EnableTagOverride": s.enable_tag_override,
        "Proxy": proxy_placeholder(),
        "Connect": {},
        "PeerName": "",
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

/// One element of `/v1/catalog/service/:name`.
pub fn catalog_service(n: &Node, s: &Service) -> Value {
    json!({
        "ID": n.id,
        "Node": n.node,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": n.tagged_addresses,
        "NodeMeta": n.meta,
        "ServiceKind": "",
        "ServiceID": s.id,
        "ServiceName": s.service,
        "ServiceTags": s.tags,
        "ServiceAddress": s.address,
        "ServiceWeights": s.weights,
        "ServiceMeta": s.meta,
        "ServicePort": s.port,
        "ServiceSocketPath": "",
        "ServiceEnableTagOverride": s.enable_tag_override,
        "ServiceProxy": proxy_placeholder(),
        "ServiceConnect": {},
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

pub fn node(n: &Node) -> Value {
    json!({
        "ID": n.id,
        "Node": n.node,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": n.tagged_addresses,
        "Meta": n.meta,
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    })
}

pub fn check(c: &HealthCheck) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("ExposedPort".into(), json!(0));
    }
    v
}

pub fn checks(list: &[HealthCheck]) -> Value {
    Value::Array(list.iter().map(check).collect())
}

pub fn health_entry(h: &ServiceHealth) -> Value {
    json!({
        "Node": node(&h.node),
        "Service": node_service(&h.service),
        "Checks": checks(&h.checks),
    })
}

/// A KV entry; an empty value is `null`, as in Consul.
pub fn kv_entry(e: &KvEntry) -> Value {
    let value = if e.value.is_empty() { Value::Null } else { Value::String(STANDARD.encode(&e.value)) };
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": e.key,
        "Flags": e.flags,
        "Value": value,
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if !e.session.is_empty()
        && let Value::Object(map) = &mut v
    {
        map.insert("Session".into(), json!(e.session));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_value_is_base64_or_null() {
        let mut e = KvEntry { key: "k".into(), value: b"bar".to_vec(), ..Default::default() };
        assert_eq!(kv_entry(&e)["Value"], "YmFy");
        e.value.clear();
        assert!(kv_entry(&e)["Value"].is_null());
        assert!(kv_entry(&e).get("Session").is_none());
    }

    #[test]
    fn catalog_service_has_consul_fields() {
        let n = Node { node: "n1".into(), address: "10.0.0.1".into(), ..Default::default() };
        let s = Service { id: "web1".into(), service: "web".into(), port: 80, ..Default::default() };
        let v = catalog_service(&n, &s);
        for field in ["ServiceID", "ServiceName", "ServiceTags", "ServicePort", "ServiceWeights", "NodeMeta", "Address"]
        {
            assert!(v.get(field).is_some(), "{field}");
        }
        assert_eq!(v["ServicePort"], 80);
    }
}
