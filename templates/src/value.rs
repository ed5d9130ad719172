//! The template-side shape of catalog records: each record becomes a map with the field
//! names consul-template exposes (`.Address`, `.ServiceMeta`, `.Weights.Passing`, ...), and
//! JSON converts to and from template values the way Go's `encoding/json` does.

use std::collections::BTreeMap;
use std::sync::Arc;

use gotmpl::Value;

use crate::data::{KvPair, NodeInfo, NodeService, NodeServices, ServiceEntry, ServiceSummary};

pub(crate) fn s(v: &str) -> Value {
    Value::String(Arc::from(v))
}

pub(crate) fn list(items: Vec<Value>) -> Value {
    Value::List(Arc::from(items))
}

pub(crate) fn map<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Map(Arc::new(entries.into_iter().map(|(k, v)| (Arc::from(k), v)).collect()))
}

pub(crate) fn string_list(items: &[String]) -> Value {
    list(items.iter().map(|t| s(t)).collect())
}

pub(crate) fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Map(Arc::new(m.iter().map(|(k, v)| (Arc::from(k.as_str()), s(v))).collect()))
}

/// consul-template's `HealthService`.
pub(crate) fn service_entry(e: &ServiceEntry) -> Value {
    let address = if e.address.is_empty() { &e.node_address } else { &e.address };
    // consul-template sorts an instance's tags.
    let mut sorted_tags = e.tags.clone();
    sorted_tags.sort();
    let checks = e
        .checks
        .iter()
        .map(|c| {
            map([
                ("CheckID", s(&c.check_id)),
                ("Name", s(&c.name)),
                ("Status", s(&c.status)),
                ("Output", s(&c.output)),
                ("ServiceID", s(&c.service_id)),
                ("Node", s(&e.node)),
            ])
        })
        .collect();
    map([
        ("Node", s(&e.node)),
        ("NodeID", s(&e.node_id)),
        ("NodeAddress", s(&e.node_address)),
        ("NodeDatacenter", s(&e.node_datacenter)),
        ("NodeTaggedAddresses", string_map(&e.node_tagged_addresses)),
        ("NodeMeta", string_map(&e.node_meta)),
        ("ServiceMeta", string_map(&e.service_meta)),
        ("Address", s(address)),
        ("ID", s(&e.id)),
        ("Name", s(&e.name)),
        ("Kind", s("")),
        ("Tags", string_list(&sorted_tags)),
        ("Checks", list(checks)),
        ("Status", s(&e.status)),
        ("Port", Value::Int(i64::from(e.port))),
        (
            "Weights",
            map([
                ("Passing", Value::Int(i64::from(e.weights_passing))),
                ("Warning", Value::Int(i64::from(e.weights_warning))),
            ]),
        ),
        ("Namespace", s("")),
    ])
}

/// consul-template's `CatalogSnippet`.
pub(crate) fn service_summary(x: &ServiceSummary) -> Value {
    map([("Name", s(&x.name)), ("Tags", string_list(&x.tags))])
}

/// consul-template's `KeyPair`: `Path` is the full key, `Key` the part below `prefix`.
pub(crate) fn kv_pair(p: &KvPair, relative: &str) -> Value {
    map([
        ("Path", s(&p.key)),
        ("Key", s(relative)),
        ("Value", s(&p.value)),
        ("Flags", Value::Uint(p.flags)),
        ("CreateIndex", Value::Uint(p.create_index)),
        ("ModifyIndex", Value::Uint(p.modify_index)),
        ("LockIndex", Value::Uint(p.lock_index)),
        ("Session", s(&p.session)),
    ])
}

/// consul-template's `Node`.
pub(crate) fn node(n: &NodeInfo) -> Value {
    map([
        ("ID", s(&n.id)),
        ("Node", s(&n.node)),
        ("Address", s(&n.address)),
        ("Datacenter", s(&n.datacenter)),
        ("TaggedAddresses", string_map(&n.tagged_addresses)),
        ("Meta", string_map(&n.meta)),
    ])
}

fn node_service(x: &NodeService) -> Value {
    map([
        ("ID", s(&x.id)),
        ("Service", s(&x.service)),
        ("Tags", string_list(&x.tags)),
        ("Meta", string_map(&x.meta)),
        ("Port", Value::Int(i64::from(x.port))),
        ("Address", s(&x.address)),
    ])
}

/// consul-template's `CatalogNode`: `.Node` and `.Services`, sorted by service then ID.
pub(crate) fn node_services(n: &NodeServices) -> Value {
    let mut services: Vec<&NodeService> = n.services.iter().collect();
    services.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    map([("Node", node(&n.node)), ("Services", list(services.into_iter().map(node_service).collect()))])
}

/// Go's `json.Unmarshal` into `interface{}`: numbers become float64.
pub(crate) fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(x) => s(x),
        serde_json::Value::Array(a) => list(a.iter().map(from_json).collect()),
        serde_json::Value::Object(o) => {
            Value::Map(Arc::new(o.iter().map(|(k, v)| (Arc::from(k.as_str()), from_json(v))).collect()))
        }
    }
}

/// Go's `json.Marshal`: sorted keys, `<`, `>` and `&` escaped, floats without a needless
/// fraction.
pub(crate) fn to_json(v: &Value, out: &mut String) -> Result<(), String> {
    match v {
        Value::Nil => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Uint(u) => out.push_str(&u.to_string()),
        Value::Float(f) => {
            if !f.is_finite() {
                return Err(format!("json: unsupported value: {f}"));
            }
            out.push_str(&go_float(*f));
        }
        Value::String(x) => json_string(x, out),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                to_json(item, out)?;
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push('{');
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(k, out);
                out.push(':');
                to_json(item, out)?;
            }
            out.push('}');
        }
        Value::Function(_) => return Err("json: unsupported type: func".into()),
    }
    Ok(())
}

fn json_string(x: &str, out: &mut String) {
    let quoted = serde_json::Value::String(x.to_string()).to_string();
    for ch in quoted.chars() {
        match ch {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
}

/// A float64 as `encoding/json` writes it.
fn go_float(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Go: exponent form with at least two exponent digits ("1e+21", "1e-07").
        let e = format!("{f:e}");
        if let Some((mant, exp)) = e.split_once('e') {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            return format!("{mant}e{sign}{digits:0>2}");
        }
        return e;
    }
    format!("{f}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: &Value) -> String {
        let mut out = String::new();
        to_json(v, &mut out).expect("json");
        out
    }

    #[test]
    fn json_like_go() {
        let v = from_json(&serde_json::json!({"b": [1, 2.5, true, null], "a": "<x&y>", "n": 8080}));
        assert_eq!(json(&v), r#"{"a":"\u003cx\u0026y\u003e","b":[1,2.5,true,null],"n":8080}"#);
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(1e-7), "1e-07");
        assert_eq!(go_float(0.0), "0");
    }

    #[test]
    fn service_address_falls_back_to_node() {
        let e = ServiceEntry { node_address: "10.0.0.9".into(), port: 80, ..Default::default() };
        let v = service_entry(&e);
        assert_eq!(v.field("Address").and_then(Value::as_str), Some("10.0.0.9"));
    }
}
