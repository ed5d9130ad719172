//! The catalog's records, shaped and named exactly as Consul's HTTP API shows them.
//!
//! These types are both what the state machine stores and what the API serialises, so a
//! field renamed here is a wire-format change. Field names follow Consul's casing
//! (`ServiceID`, `TLSSkipVerify`, ...); see `decode.rs` for the case-insensitive reading
//! of request bodies and config files.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A check's state. Ordered from best to worst so the aggregate of several checks is
/// their maximum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passing,
    Warning,
    #[default]
    Critical,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "passing" => Some(CheckStatus::Passing),
            "warning" => Some(CheckStatus::Warning),
            "critical" => Some(CheckStatus::Critical),
            _ => None,
        }
    }
}

/// Consul's `Weights`: how much traffic an instance gets while passing or warning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { passing: 1, warning: 1 }
    }
}

/// A node of the catalog (Consul's `structs.Node`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A service instance registered on a node (Consul's `structs.NodeService`, as
/// `/v1/agent/services` and the `Service` part of `/v1/health/service` show it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub datacenter: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// How a check is run. Stored with the check so the agent that owns it can run it
/// (a later stage); the catalog itself only keeps and shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckDefinition {
    #[serde(rename = "HTTP", skip_serializing_if = "String::is_empty")]
    pub http: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub header: BTreeMap<String, Vec<String>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub method: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub body: String,
    #[serde(rename = "TLSSkipVerify")]
    pub tls_skip_verify: bool,
    #[serde(rename = "TCP", skip_serializing_if = "String::is_empty")]
    pub tcp: String,
    #[serde(rename = "TTL", skip_serializing_if = "String::is_empty")]
    pub ttl: String,
    #[serde(rename = "GRPC", skip_serializing_if = "String::is_empty")]
    pub grpc: String,
    #[serde(rename = "GRPCUseTLS")]
    pub grpc_use_tls: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmCheck>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub interval: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub timeout: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub deregister_critical_service_after: String,
    pub success_before_passing: u32,
    pub failures_before_warning: u32,
    pub failures_before_critical: u32,
}

/// A check implemented by a Wasm plugin from `--plugin-dir`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WasmCheck {
    pub module: String,
    pub config: String,
}

/// Consul's check `Type`: which probe a check runs. On the wire (API, Raft log, snapshots)
/// it is Consul's string: "http", "tcp", "ttl", "grpc", "script", "wasm", or "" for a check
/// that nothing probes (its status is set by the agent or the API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CheckKind {
    #[serde(rename = "http")]
    Http,
    #[serde(rename = "tcp")]
    Tcp,
    #[serde(rename = "ttl")]
    Ttl,
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "script")]
    Script,
    #[serde(rename = "wasm")]
    Wasm,
    /// Unknown names from newer peers read as this too.
    #[default]
    #[serde(rename = "", other)]
    Manual,
}

impl CheckKind {
    /// Consul's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Manual => "",
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Ttl => "ttl",
            CheckKind::Grpc => "grpc",
            CheckKind::Script => "script",
            CheckKind::Wasm => "wasm",
        }
    }
}

impl std::fmt::Display for CheckKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for CheckKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A check definition's durations, parsed once when its task starts (registration already
/// refused definitions whose durations do not parse).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CheckTimes {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub ttl: Option<Duration>,
    pub deregister_after: Option<Duration>,
}

impl CheckDefinition {
    /// Consul's `Type` of a check, derived from which probe field is set.
    pub fn kind(&self) -> CheckKind {
        if !self.http.is_empty() {
            CheckKind::Http
        } else if !self.tcp.is_empty() {
            CheckKind::Tcp
        } else if !self.ttl.is_empty() {
            CheckKind::Ttl
        } else if !self.grpc.is_empty() {
            CheckKind::Grpc
        } else if !self.args.is_empty() {
            CheckKind::Script
        } else if self.wasm.is_some() {
            CheckKind::Wasm
        } else {
            CheckKind::Manual
        }
    }

    /// The definition's durations; an empty field is `None`, a malformed one an error
    /// naming it.
    pub fn times(&self) -> Result<CheckTimes, String> {
        let parse = |field: &str, v: &str| -> Result<Option<Duration>, String> {
            if v.is_empty() {
                return Ok(None);
            }
            crate::duration::parse_go_duration(v, false).map(Some).map_err(|e| format!("Invalid {field}: {e}"))
        };
        Ok(CheckTimes {
            interval: parse("Interval", &self.interval)?,
            timeout: parse("Timeout", &self.timeout)?,
            ttl: parse("TTL", &self.ttl)?,
            deregister_after: parse("DeregisterCriticalServiceAfter", &self.deregister_critical_service_after)?,
        })
    }
}

/// Longest check output kept, as Consul's default `OutputMaxSize`, for every source of
/// output (probes, plugins, the agent API).
pub const MAX_CHECK_OUTPUT: usize = 4096;

/// Cuts check output to at most [`MAX_CHECK_OUTPUT`] bytes, on a character boundary, ending
/// a cut one with " ..." so a reader sees it was cut.
pub fn truncate_output(mut s: String) -> String {
    const MARK: &str = " ...";
    if s.len() > MAX_CHECK_OUTPUT {
        let mut cut = MAX_CHECK_OUTPUT - MARK.len();
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(MARK);
    }
    s
}

/// A health check (Consul's `structs.HealthCheck`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: CheckStatus,
    pub notes: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    #[serde(rename = "Type")]
    pub kind: CheckKind,
    pub interval: String,
    pub timeout: String,
    pub definition: CheckDefinition,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A key/value entry (Consul's `structs.DirEntry`). `value` is raw bytes here; the API
/// turns it into base64.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    pub flags: u64,
    pub lock_index: u64,
    pub session: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What happens to the keys a session holds when it is invalidated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// The locks are released; the keys stay.
    #[default]
    Release,
    /// The keys are deleted.
    Delete,
}

/// A session (Consul's `structs.Session`): the owner of KV locks, tied to a node and its
/// checks, and optionally to a TTL that must be renewed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    /// Node-level checks (by ID) whose failure invalidates the session.
    pub node_checks: Vec<String>,
    /// Service checks (by ID) whose failure invalidates the session.
    pub service_checks: Vec<String>,
    /// After invalidation, how long its locks cannot be taken again, in milliseconds.
    pub lock_delay_ms: u64,
    pub behavior: SessionBehavior,
    /// A Go duration, or empty for none.
    pub ttl: String,
    /// Bumped by every renewal: the leader's TTL timers watch it (not shown by the API).
    pub renewals: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Consul's size limit for one KV value.
pub const MAX_KV_VALUE_BYTES: usize = 512 * 1024;

/// Tags as Consul matches them: every wanted tag must be present (repeated `?tag` = AND),
/// compared case-sensitively.
pub fn has_all_tags(tags: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| tags.iter().any(|t| t == w))
}

/// What the agent knows about itself.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub node_name: String,
    pub node_id: String,
    pub datacenter: String,
    pub advertise: String,
    pub raft_addr: String,
    pub http_addr: String,
    pub server: bool,
    pub version: String,
    pub data_dir: String,
}

impl AgentInfo {
    /// This agent's node record as it registers itself.
    pub fn self_node(&self) -> Node {
        let addr = self.advertise.clone();
        Node {
            id: self.node_id.clone(),
            node: self.node_name.clone(),
            address: addr.clone(),
            datacenter: self.datacenter.clone(),
            tagged_addresses: BTreeMap::from([
                ("lan".to_string(), addr.clone()),
                ("lan_ipv4".to_string(), addr.clone()),
                ("wan".to_string(), addr.clone()),
                ("wan_ipv4".to_string(), addr),
            ]),
            meta: BTreeMap::from([
                ("wharf-version".to_string(), self.version.clone()),
                ("wharf-role".to_string(), if self.server { "server" } else { "client" }.to_string()),
                ("wharf-raft-addr".to_string(), self.raft_addr.clone()),
            ]),
            create_index: 0,
            modify_index: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_kinds_keep_consuls_wire_names() {
        for (kind, name) in [
            (CheckKind::Http, "http"),
            (CheckKind::Tcp, "tcp"),
            (CheckKind::Ttl, "ttl"),
            (CheckKind::Grpc, "grpc"),
            (CheckKind::Script, "script"),
            (CheckKind::Wasm, "wasm"),
            (CheckKind::Manual, ""),
        ] {
            assert_eq!(serde_json::to_value(kind).expect("serialise"), serde_json::json!(name));
            assert_eq!(serde_json::from_value::<CheckKind>(serde_json::json!(name)).expect("parse"), kind);
            assert_eq!(kind, name);
        }
        // A check as an earlier wharf wrote it in the Raft log (Type a plain string) reads
        // back the same.
        let mut logged = serde_json::to_value(HealthCheck::default()).expect("serialise");
        assert_eq!(logged["Type"], "");
        logged["Type"] = serde_json::json!("ttl");
        let c: HealthCheck = serde_json::from_value(logged.clone()).expect("parse");
        assert_eq!(c.kind, CheckKind::Ttl);
        assert_eq!(serde_json::to_value(&c).expect("serialise"), logged);
        let newer: CheckKind = serde_json::from_value(serde_json::json!("h2ping")).expect("unknown kinds parse");
        assert_eq!(newer, CheckKind::Manual);
    }

    #[test]
    fn durations_parse_once_and_output_has_one_limit() {
        let d = CheckDefinition {
            interval: "10s".into(),
            ttl: "1m".into(),
            deregister_critical_service_after: "90m".into(),
            ..Default::default()
        };
        let t = d.times().expect("valid");
        assert_eq!(t.interval, Some(Duration::from_secs(10)));
        assert_eq!(t.ttl, Some(Duration::from_secs(60)));
        assert_eq!(t.deregister_after, Some(Duration::from_secs(5400)));
        assert_eq!(t.timeout, None);
        let bad = CheckDefinition { timeout: "5 seconds".into(), ..Default::default() };
        assert!(bad.times().expect_err("malformed").starts_with("Invalid Timeout"));

        assert_eq!(truncate_output("short".into()), "short");
        let long = format!("a{}", "é".repeat(MAX_CHECK_OUTPUT));
        let cut = truncate_output(long.clone());
        assert_eq!(cut.len(), 4091 + 4, "4,092 falls inside a character: cut back one byte, then marked");
        assert!(cut.starts_with(&long[..4091]) && cut.ends_with(" ..."));
    }

    #[test]
    fn status_orders_from_best_to_worst() {
        let worst = [CheckStatus::Passing, CheckStatus::Critical, CheckStatus::Warning].into_iter().max();
        assert_eq!(worst, Some(CheckStatus::Critical));
        assert!(CheckStatus::Passing < CheckStatus::Warning);
    }

    #[test]
    fn service_serialises_with_consul_casing() {
        let s = Service { id: "web1".into(), service: "web".into(), port: 8080, ..Default::default() };
        let v = serde_json::to_value(&s).expect("serialise");
        assert_eq!(v["ID"], "web1");
        assert_eq!(v["Service"], "web");
        assert_eq!(v["Weights"]["Passing"], 1);
        assert_eq!(v["EnableTagOverride"], false);
    }

    #[test]
    fn check_kind_follows_probe_field() {
        let d = CheckDefinition { tcp: "127.0.0.1:1".into(), ..Default::default() };
        assert_eq!(d.kind(), "tcp");
        assert_eq!(CheckDefinition::default().kind(), "");
    }

    #[test]
    fn tags_are_and_matched() {
        let tags = vec!["a".to_string(), "b".to_string()];
        assert!(has_all_tags(&tags, &["a".into(), "b".into()]));
        assert!(!has_all_tags(&tags, &["a".into(), "c".into()]));
        assert!(has_all_tags(&tags, &[]));
    }
}

/// Serde adapter writing byte values as base64 strings (compact in the Raft log and
/// snapshots, and Consul's representation of KV values).
pub mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}
