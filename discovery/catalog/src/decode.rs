//! Reading service, check and catalog registrations the way Consul does: keys match
//! case-insensitively and in snake_case (`"deregister_critical_service_after"` is
//! `DeregisterCriticalServiceAfter`), in API bodies and in config-dir files alike; then
//! validation into catalog records. Everything here is pure and returns a one-line
//! message naming what is wrong.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::duration::parse_go_duration;
use crate::model::{CheckDefinition, CheckStatus, HealthCheck, Node, Service, Weights};

/// Field names whose canonical spelling differs from plain PascalCase, or that appear in
/// request bodies. Keys are compared lower-cased with `_` and `-` removed.
const CANONICAL_KEYS: &[&str] = &[
    "ID",
    "Name",
    "Tags",
    "Address",
    "Port",
    "Meta",
    "Weights",
    "Passing",
    "Warning",
    "EnableTagOverride",
    "Check",
    "Checks",
    "CheckID",
    "Notes",
    "Status",
    "Output",
    "ServiceID",
    "ServiceName",
    "HTTP",
    "Header",
    "Method",
    "Body",
    "TLSSkipVerify",
    "TCP",
    "TTL",
    "GRPC",
    "GRPCUseTLS",
    "Args",
    "Script",
    "Wasm",
    "Module",
    "Config",
    "Interval",
    "Timeout",
    "DeregisterCriticalServiceAfter",
    "SuccessBeforePassing",
    "FailuresBeforeWarning",
    "FailuresBeforeCritical",
    "Node",
    "Datacenter",
    "TaggedAddresses",
    "NodeMeta",
    "Service",
    "Services",
    "SkipNodeUpdate",
    "Definition",
    "Kind",
    "Token",
];

/// Objects under these keys hold user data (meta, headers): their keys stay verbatim.
const VERBATIM_MAPS: &[&str] = &["Meta", "NodeMeta", "Header", "TaggedAddresses"];

fn canonical_key(raw: &str) -> Option<&'static str> {
    static TABLE: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t: HashMap<String, &'static str> =
            CANONICAL_KEYS.iter().map(|k| (k.to_ascii_lowercase(), *k)).collect();
        // Consul's config-file aliases.
        t.insert("scriptargs".into(), "Args");
        t
    });
    let folded: String = raw.chars().filter(|c| *c != '_' && *c != '-').map(|c| c.to_ascii_lowercase()).collect();
    table.get(&folded).copied()
}

/// Rewrites object keys to their canonical spelling, recursively, leaving user maps alone.
/// Consul's legacy `"script": "CMD"` becomes `"Args": ["/bin/sh", "-c", "CMD"]`, as old
/// Consul ran it through the shell.
pub fn normalize_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                let key = canonical_key(&k).map(str::to_string).unwrap_or(k);
                let v = if VERBATIM_MAPS.contains(&key.as_str()) { v } else { normalize_keys(v) };
                out.insert(key, v);
            }
            if let Some(Value::String(script)) = out.get("Script")
                && !out.contains_key("Args")
            {
                let args = json!(["/bin/sh", "-c", script]);
                out.remove("Script");
                out.insert("Args".into(), args);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_keys).collect()),
        other => other,
    }
}

/// Parses a JSON body with Consul's key rules into `T`.
pub fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("Request decode failed: empty body".to_string());
    }
    let raw: Value = serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?;
    decode_value(raw)
}

/// Like [`decode_body`] for an already parsed value.
pub fn decode_value<T: for<'de> Deserialize<'de>>(raw: Value) -> Result<T, String> {
    serde_json::from_value(normalize_keys(raw)).map_err(|e| format!("Request decode failed: {e}"))
}

/// A check as given to `/v1/agent/check/register` or inside a service definition.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckRegistration {
    #[serde(rename = "CheckID", alias = "ID")]
    pub check_id: String,
    pub name: String,
    pub notes: String,
    pub status: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    #[serde(flatten)]
    pub definition: CheckDefinition,
}

/// A service as given to `/v1/agent/service/register` or in a config-dir file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRegistration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: i64,
    pub meta: BTreeMap<String, String>,
    pub weights: Option<Weights>,
    pub enable_tag_override: bool,
    pub check: Option<CheckRegistration>,
    pub checks: Vec<CheckRegistration>,
}

/// The service part of `/v1/catalog/register` (Consul's NodeService shape).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: i64,
    pub meta: BTreeMap<String, String>,
    pub weights: Option<Weights>,
    pub enable_tag_override: bool,
}

/// A check inside `/v1/catalog/register`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogCheck {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub notes: String,
    pub status: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub definition: CheckDefinition,
}

/// The body of `/v1/catalog/register`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogRegistration {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub node_meta: BTreeMap<String, String>,
    pub service: Option<CatalogService>,
    pub check: Option<CatalogCheck>,
    pub checks: Vec<CatalogCheck>,
    pub skip_node_update: bool,
}

/// The body of `/v1/catalog/deregister`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogDeregistration {
    pub node: String,
    pub datacenter: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
}

/// A config-dir file: `{"service": {...}}`, `{"services": [...]}`, `{"check": ...}`,
/// `{"checks": [...]}`, in any combination.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConfigFile {
    pub service: Option<ServiceRegistration>,
    pub services: Vec<ServiceRegistration>,
    pub check: Option<CheckRegistration>,
    pub checks: Vec<CheckRegistration>,
}

impl ConfigFile {
    pub fn all_services(self) -> (Vec<ServiceRegistration>, Vec<CheckRegistration>) {
        let services = self.service.into_iter().chain(self.services).collect();
        let checks = self.check.into_iter().chain(self.checks).collect();
        (services, checks)
    }
}

fn validate_port(port: i64) -> Result<u16, String> {
    u16::try_from(port).map_err(|_| format!("Invalid service port {port}: must be between 0 and 65535"))
}

/// Consul's rules for node and service meta.
pub fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 64 {
        return Err(format!("Meta has {} pairs; at most 64 are allowed", meta.len()));
    }
    for (k, v) in meta {
        if k.is_empty() || k.len() > 128 {
            return Err(format!("Meta key {k:?} must be 1 to 128 characters"));
        }
        if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!("Meta key {k:?} may only contain letters, digits, '_' and '-'"));
        }
        if v.len() > 512 {
            return Err(format!("Meta value for key {k:?} is longer than 512 characters"));
        }
    }
    Ok(())
}

fn validate_weights(w: Option<Weights>) -> Result<Weights, String> {
    let w = w.unwrap_or_default();
    if w.passing == 0 {
        return Err("Weights.Passing must be greater than 0".to_string());
    }
    Ok(w)
}

fn parse_status(s: &str, default: CheckStatus) -> Result<CheckStatus, String> {
    if s.is_empty() {
        return Ok(default);
    }
    CheckStatus::parse(s).ok_or_else(|| format!("Invalid check status {s:?}: must be passing, warning or critical"))
}

fn check_duration(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    parse_go_duration(value, false).map(|_| ()).map_err(|e| format!("Invalid {field}: {e}"))
}

/// Validates a check definition the way Consul's `CheckType.Validate` does.
pub fn validate_definition(d: &CheckDefinition) -> Result<(), String> {
    check_duration("Interval", &d.interval)?;
    check_duration("Timeout", &d.timeout)?;
    check_duration("TTL", &d.ttl)?;
    check_duration("DeregisterCriticalServiceAfter", &d.deregister_critical_service_after)?;
    let probes = [
        !d.http.is_empty(),
        !d.tcp.is_empty(),
        !d.ttl.is_empty(),
        !d.grpc.is_empty(),
        !d.args.is_empty(),
        d.wasm.is_some(),
    ];
    match probes.iter().filter(|p| **p).count() {
        0 => return Err("Check must define one of HTTP, TCP, TTL, GRPC, Args or Wasm".into()),
        1 => {}
        _ => return Err("Check must define only one of HTTP, TCP, TTL, GRPC, Args or Wasm".into()),
    }
    if d.ttl.is_empty() && d.interval.is_empty() {
        return Err("Interval must be > 0 for script, HTTP, TCP, gRPC and Wasm checks".into());
    }
    if !d.interval.is_empty() && parse_go_duration(&d.interval, false).is_ok_and(|i| i.is_zero()) {
        return Err("Interval must be > 0 for script, HTTP, TCP, gRPC and Wasm checks".into());
    }
    if let Some(w) = &d.wasm
        && w.module.trim().is_empty()
    {
        return Err("Wasm.Module must name a plugin".into());
    }
    Ok(())
}

impl CheckRegistration {
    /// Turns the registration into a check record on `node`. `service` is the service the
    /// check belongs to, if any.
    pub fn into_check(
        self,
        node: &str,
        service: Option<&Service>,
        default_id: String,
        default_name: String,
    ) -> Result<HealthCheck, String> {
        validate_definition(&self.definition)?;
        let status = parse_status(&self.status, CheckStatus::Critical)?;
        let check_id = if self.check_id.is_empty() { default_id } else { self.check_id };
        if check_id.is_empty() {
            return Err("Missing check ID or name".into());
        }
        let name = if self.name.is_empty() { default_name } else { self.name };
        if name.is_empty() {
            return Err("Missing check name".into());
        }
        Ok(HealthCheck {
            node: node.to_string(),
            check_id,
            name,
            status,
            notes: self.notes,
            output: self.output,
            service_id: service.map(|s| s.id.clone()).unwrap_or_default(),
            service_name: service.map(|s| s.service.clone()).unwrap_or_default(),
            service_tags: service.map(|s| s.tags.clone()).unwrap_or_default(),
            kind: self.definition.kind(),
            interval: self.definition.interval.clone(),
            timeout: self.definition.timeout.clone(),
            definition: self.definition,
            create_index: 0,
            modify_index: 0,
        })
    }
}

impl ServiceRegistration {
    /// Validates and turns the registration into a service record plus its checks.
    pub fn into_records(self, node: &str, datacenter: &str) -> Result<(Service, Vec<HealthCheck>), String> {
        if self.name.trim().is_empty() {
            return Err("Missing service name".into());
        }
        let port = validate_port(self.port)?;
        validate_meta(&self.meta)?;
        let weights = validate_weights(self.weights)?;
        let id = if self.id.is_empty() { self.name.clone() } else { self.id };
        let service = Service {
            id,
            service: self.name,
            tags: self.tags,
            address: self.address,
            port,
            meta: self.meta,
            weights,
            enable_tag_override: self.enable_tag_override,
            datacenter: datacenter.to_string(),
            create_index: 0,
            modify_index: 0,
        };
        let defs: Vec<CheckRegistration> = self.check.into_iter().chain(self.checks).collect();
        let several = defs.len() > 1;
        let mut checks = Vec::with_capacity(defs.len());
        for (i, def) in defs.into_iter().enumerate() {
            let default_id =
                if several { format!("service:{}:{}", service.id, i + 1) } else { format!("service:{}", service.id) };
            let default_name = format!("Service '{}' check", service.service);
            checks.push(def.into_check(node, Some(&service), default_id, default_name)?);
        }
        Ok((service, checks))
    }
}

/// The node, service and checks of a validated `/v1/catalog/register`.
pub struct CatalogRecords {
    pub node: Node,
    pub service: Option<Service>,
    pub checks: Vec<HealthCheck>,
    pub skip_node_update: bool,
}

impl CatalogRegistration {
    pub fn into_records(self, default_dc: &str) -> Result<CatalogRecords, String> {
        if self.node.trim().is_empty() {
            return Err("Must provide node".into());
        }
        if self.address.trim().is_empty() && !self.skip_node_update {
            return Err("Must provide address if SkipNodeUpdate is not set".into());
        }
        validate_meta(&self.node_meta)?;
        let datacenter = if self.datacenter.is_empty() { default_dc.to_string() } else { self.datacenter };
        let node = Node {
            id: self.id,
            node: self.node.clone(),
            address: self.address,
            datacenter: datacenter.clone(),
            tagged_addresses: self.tagged_addresses,
            meta: self.node_meta,
            create_index: 0,
            modify_index: 0,
        };
        let service = self.service.map(|s| catalog_service(s, datacenter)).transpose()?;
        let mut checks = Vec::new();
        for c in self.check.into_iter().chain(self.checks) {
            if c.check_id.is_empty() && c.name.is_empty() {
                return Err("Missing check ID".into());
            }
            if !c.node.is_empty() && c.node != self.node {
                return Err(format!("Check node {:?} does not match node {:?}", c.node, self.node));
            }
            let status = parse_status(&c.status, CheckStatus::Critical)?;
            let owner = if c.service_id.is_empty() {
                None
            } else if service.as_ref().is_some_and(|s| s.id == c.service_id) {
                service.as_ref()
            } else {
                None
            };
            let check_id = if c.check_id.is_empty() { c.name.clone() } else { c.check_id };
            let name = if c.name.is_empty() { check_id.clone() } else { c.name };
            checks.push(HealthCheck {
                node: self.node.clone(),
                check_id,
                name,
                status,
                notes: c.notes,
                output: c.output,
                service_id: c.service_id,
                service_name: owner.map(|s| s.service.clone()).unwrap_or_default(),
                service_tags: owner.map(|s| s.tags.clone()).unwrap_or_default(),
                kind: c.definition.kind(),
                interval: c.definition.interval.clone(),
                timeout: c.definition.timeout.clone(),
                definition: c.definition,
                create_index: 0,
                modify_index: 0,
            });
        }
        Ok(CatalogRecords { node, service, checks, skip_node_update: self.skip_node_update })
    }
}

/// The service of a catalog registration, validated.
fn catalog_service(s: CatalogService, datacenter: String) -> Result<Service, String> {
    if s.service.trim().is_empty() {
        return Err("Must provide service name".into());
    }
    validate_meta(&s.meta)?;
    let port = validate_port(s.port)?;
    let weights = validate_weights(s.weights)?;
    Ok(Service {
        id: if s.id.is_empty() { s.service.clone() } else { s.id },
        service: s.service,
        tags: s.tags,
        address: s.address,
        port,
        meta: s.meta,
        weights,
        enable_tag_override: s.enable_tag_override,
        datacenter,
        create_index: 0,
        modify_index: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_match_case_insensitively_and_in_snake_case() {
        let v = normalize_keys(json!({
            "name": "web", "port": 80, "enable_tag_override": true,
            "meta": {"my_key": "v"},
            "check": {"http": "http://x/", "interval": "10s", "deregister_critical_service_after": "1m",
                      "header": {"x-token": ["a"]}}
        }));
        assert_eq!(v["Name"], "web");
        assert_eq!(v["EnableTagOverride"], true);
        assert_eq!(v["Meta"]["my_key"], "v", "meta keys stay verbatim");
        assert_eq!(v["Check"]["HTTP"], "http://x/");
        assert_eq!(v["Check"]["DeregisterCriticalServiceAfter"], "1m");
        assert_eq!(v["Check"]["Header"]["x-token"][0], "a");
    }

    #[test]
    fn service_defaults_follow_consul() {
        let reg: ServiceRegistration = decode_body(
            br#"{"Name":"web","Port":8080,"Checks":[{"TTL":"10s"},{"TCP":"127.0.0.1:1","Interval":"5s"}]}"#,
        )
        .expect("decode");
        let (svc, checks) = reg.into_records("n1", "dc1").expect("valid");
        assert_eq!(svc.id, "web");
        assert_eq!(checks[0].check_id, "service:web:1");
        assert_eq!(checks[1].check_id, "service:web:2");
        assert_eq!(checks[0].status, CheckStatus::Critical);
        assert_eq!(checks[0].kind, "ttl");
        assert_eq!(checks[1].service_name, "web");
    }

    #[test]
    fn bad_services_are_refused_with_a_reason() {
        let cases: [(&[u8], &str); 6] = [
            (b"{", "Request decode failed"),
            (br#"{"Port":80}"#, "Missing service name"),
            (br#"{"Name":"w","Port":70000}"#, "between 0 and 65535"),
            (br#"{"Name":"w","Check":{"HTTP":"http://x"}}"#, "Interval"),
            (br#"{"Name":"w","Check":{"TCP":"x:1","Interval":"ten"}}"#, "Invalid Interval"),
            (br#"{"Name":"w","Meta":{"bad key":"v"}}"#, "Meta key"),
        ];
        for (body, want) in cases {
            let err = decode_body::<ServiceRegistration>(body)
                .and_then(|r| r.into_records("n", "dc1").map(|_| ()))
                .expect_err(want);
            assert!(err.contains(want), "{err} should mention {want}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn catalog_register_needs_node_and_address() {
        let r: CatalogRegistration = decode_body(br#"{"Node":"n"}"#).expect("decode");
        assert!(r.into_records("dc1").is_err());
        let r: CatalogRegistration = decode_body(
            br#"{"Node":"n","Address":"10.0.0.1","Service":{"Service":"db","Port":5432},
                 "Check":{"CheckID":"c","Name":"c","Status":"passing","ServiceID":"db"}}"#,
        )
        .expect("decode");
        let rec = r.into_records("dc1").expect("valid");
        assert_eq!(rec.service.as_ref().map(|s| s.id.as_str()), Some("db"));
        assert_eq!(rec.checks[0].service_name, "db");
        assert_eq!(rec.node.datacenter, "dc1");
    }
}
