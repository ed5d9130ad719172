//! The agent's settings from Consul-style config files (`-config-file`, the `*.json` files of
//! `-config-dir`, and the `CONSUL_LOCAL_CONFIG` / `WHARF_LOCAL_CONFIG` environment variable
//! that Consul's Docker image reads). Pure: text in, a [`FileConfig`] out, merged under the
//! command line's flags (a flag given on the command line wins, lists are joined).
//!
//! Every key is either understood or refused with its name and file: a key that was silently
//! ignored would let a user believe, say, that ACLs were on. Service and check definitions
//! (`service`, `services`, `check`, `checks`) in the same files are read by `config_dir.rs`.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Map, Value};

/// Agent settings read from config files; `None` / empty where no file set them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FileConfig {
    pub server: Option<bool>,
    pub bootstrap: Option<bool>,
    pub bootstrap_expect: Option<usize>,
    pub retry_join: Vec<String>,
    pub node_name: Option<String>,
    pub node_id: Option<String>,
    pub datacenter: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub client_addr: Option<IpAddr>,
    pub bind_addr: Option<IpAddr>,
    pub advertise_addr: Option<IpAddr>,
    pub ui: Option<bool>,
    pub enable_script_checks: Option<bool>,
    pub http_port: Option<u16>,
    pub dns_port: Option<u16>,
    pub server_port: Option<u16>,
    /// `ports.serf_lan`: the gossip port.
    pub serf_lan_port: Option<u16>,
    /// How long a failed member is kept before it is reaped (`reconnect_timeout`).
    pub reconnect_timeout: Option<std::time::Duration>,
    /// `autopilot { cleanup_dead_servers }`.
    pub cleanup_dead_servers: Option<bool>,
    pub recursors: Vec<String>,
    pub encrypt: Option<String>,
    pub domain: Option<String>,
    pub log_level: Option<String>,
    pub leave_on_terminate: Option<bool>,
    pub skip_leave_on_interrupt: Option<bool>,
}

/// Keys that hold service and check definitions, read by the definitions loader.
const DEFINITION_KEYS: &[&str] = &["service", "services", "check", "checks"];

/// Keys of Consul's that wharf knows but does not implement yet, with what to do instead.
/// Refused rather than ignored: each one changes what a user believes the agent does.
fn not_supported(key: &str) -> Option<&'static str> {
    if key == "acl" || key.starts_with("acl_") {
        return Some("ACLs are not implemented yet, so this agent cannot enforce tokens; remove the key");
    }
    match key {
        "verify_incoming" | "verify_outgoing" | "ca_file" | "cert_file" | "key_file" => {
            Some("TLS on the API and between agents is not implemented yet; remove the key")
        }
        "retry_join_ec2" | "retry_join_gce" | "retry_join_azure" => {
            Some("cloud auto-join is not available; list the servers in retry_join")
        }
        _ => None,
    }
}

fn want_bool(key: &str, v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => parse_bool(s).map_err(|e| format!("{key}: {e}")),
        other => Err(format!("{key} must be true or false, not {other}")),
    }
}

/// Go's strconv.ParseBool spellings, as Consul's flags accept them.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (use true or false)")),
    }
}

fn want_str(key: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("{key} must be a string, not {other}")),
    }
}

fn want_uint(key: &str, v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| format!("{key} must be a whole number >= 0, not {n}")),
        Value::String(s) => s.parse().map_err(|_| format!("{key} must be a whole number >= 0, not {s:?}")),
        other => Err(format!("{key} must be a number, not {other}")),
    }
}

fn want_port(key: &str, v: &Value) -> Result<u16, String> {
    let n = want_uint(key, v)?;
    u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| format!("{key} must be a port between 1 and 65535, not {n}"))
}

fn want_ip(key: &str, v: &Value) -> Result<IpAddr, String> {
    let s = want_str(key, v)?;
    s.parse().map_err(|_| format!("{key} must be an IP address, not {s:?}"))
}

fn want_strings(key: &str, v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Array(items) => items.iter().map(|i| want_str(key, i)).collect(),
        Value::String(s) => Ok(vec![s.clone()]),
        other => Err(format!("{key} must be a list of strings, not {other}")),
    }
}

fn want_object<'a>(key: &str, v: &'a Value) -> Result<&'a Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("{key} must be an object, not {v}"))
}

/// Why the agent's config files cannot be used; each names the file and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: invalid JSON: {error}")]
    Json {
        source_name: String,
        #[source]
        error: serde_json::Error,
    },
    #[error("{0}: a config file must hold a JSON object")]
    NotAnObject(String),
    /// A key that is unknown, unsupported, or holds a value of the wrong kind.
    #[error("{source_name}: {problem}")]
    Key { source_name: String, problem: String },
    #[error("cannot read config dir {}: {error}; check that it exists and is readable", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{}: HCL config files are not read; write it as JSON", .0.display())]
    Hcl(PathBuf),
}

impl FileConfig {
    /// Reads one config file's JSON text into `self` (later files override earlier ones,
    /// lists are appended, as Consul merges them). `source` names the file in errors.
    pub fn merge_json(&mut self, source: &str, text: &str) -> Result<(), ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|error| ConfigError::Json { source_name: source.to_string(), error })?;
        let map = value.as_object().ok_or_else(|| ConfigError::NotAnObject(source.to_string()))?;
        // All or nothing: a file with one bad key contributes nothing.
        let mut next = self.clone();
        for (key, v) in map {
            next.merge_key(key, v).map_err(|problem| ConfigError::Key { source_name: source.to_string(), problem })?;
        }
        *self = next;
        Ok(())
    }

    fn merge_key(&mut self, key: &str, v: &Value) -> Result<(), String> {
        if DEFINITION_KEYS.contains(&key) {
            return Ok(());
        }
        if let Some(why) = not_supported(key) {
            return Err(format!("config key {key:?}: {why}"));
        }
        match key {
            "server" => self.server = Some(want_bool(key, v)?),
            "bootstrap" => self.bootstrap = Some(want_bool(key, v)?),
            "bootstrap_expect" => {
                let n = want_uint(key, v)?;
                self.bootstrap_expect = Some(usize::try_from(n).map_err(|_| format!("{key} is too large"))?);
            }
            "retry_join" | "start_join" => self.retry_join.extend(want_strings(key, v)?),
            "node_name" => self.node_name = Some(want_str(key, v)?),
            "node_id" => self.node_id = Some(want_str(key, v)?),
            "datacenter" => self.datacenter = Some(want_str(key, v)?),
            "data_dir" => self.data_dir = Some(PathBuf::from(want_str(key, v)?)),
            "client_addr" => self.client_addr = Some(want_ip(key, v)?),
            "bind_addr" => self.bind_addr = Some(want_ip(key, v)?),
            "advertise_addr" => self.advertise_addr = Some(want_ip(key, v)?),
            "ui" => self.ui = Some(want_bool(key, v)?),
            // Consul 0.x served the UI from a directory; wharf's is built in.
            "ui_dir" => {
                want_str(key, v)?;
                self.ui = Some(true);
            }
            "ui_config" => {
                for (k, val) in want_object(key, v)? {
                    match k.as_str() {
                        "enabled" => self.ui = Some(want_bool("ui_config.enabled", val)?),
                        other => return Err(format!("unknown config key \"ui_config.{other}\"")),
                    }
                }
            }
            "enable_script_checks" | "enable_local_script_checks" => {
                self.enable_script_checks = Some(want_bool(key, v)?)
            }
            "ports" => self.merge_ports(want_object(key, v)?)?,
            "recursors" => self.recursors.extend(want_strings(key, v)?),
            // Consul 0.x's single recursor (The Docker Book's consul.json, seed 004).
            "recursor" => self.recursors.push(want_str(key, v)?),
            "encrypt" => self.encrypt = Some(want_str(key, v)?),
            "domain" => self.domain = Some(want_str(key, v)?),
            "log_level" => self.log_level = Some(want_str(key, v)?),
            "leave_on_terminate" => self.leave_on_terminate = Some(want_bool(key, v)?),
            "autopilot" => self.merge_autopilot(want_object(key, v)?)?,
            "reconnect_timeout" => self.reconnect_timeout = Some(reconnect_timeout(&want_str(key, v)?)?),
            "skip_leave_on_interrupt" => self.skip_leave_on_interrupt = Some(want_bool(key, v)?),
            other => return Err(format!("unknown config key {other:?}: check its spelling against Consul's docs")),
        }
        Ok(())
    }

    fn merge_ports(&mut self, ports: &Map<String, Value>) -> Result<(), String> {
        for (k, val) in ports {
            let name = format!("ports.{k}");
            match k.as_str() {
                "http" => self.http_port = Some(want_port(&name, val)?),
                "dns" => self.dns_port = Some(want_port(&name, val)?),
                "server" => self.server_port = Some(want_port(&name, val)?),
                "serf_lan" => self.serf_lan_port = Some(want_port(&name, val)?),
                "serf_wan" | "https" | "grpc" | "grpc_tls" => {
                    return Err(format!("config key \"{name}\": this listener is not implemented yet; remove the key"));
                }
                other => return Err(format!("unknown config key \"ports.{other}\"")),
            }
        }
        Ok(())
    }

    fn merge_autopilot(&mut self, autopilot: &Map<String, Value>) -> Result<(), String> {
        for (k, val) in autopilot {
            match k.as_str() {
                "cleanup_dead_servers" => {
                    self.cleanup_dead_servers = Some(want_bool("autopilot.cleanup_dead_servers", val)?)
                }
                other => return Err(format!("config key \"autopilot.{other}\" is not supported")),
            }
        }
        Ok(())
    }
}

/// `reconnect_timeout`: a Go duration of at least 8 hours, as Consul requires.
fn reconnect_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = catalog::duration::parse_go_duration(text, false)
        .map_err(|e| format!("config key \"reconnect_timeout\": {e}"))?;
    if d < std::time::Duration::from_secs(8 * 3600) {
        return Err("config key \"reconnect_timeout\": it must be at least 8h, as in Consul".into());
    }
    Ok(d)
}

/// The files a set of `-config-file` and `-config-dir` arguments name, in Consul's order:
/// the files as given, then each directory's `*.json` files sorted by name. An `*.hcl` file
/// in a config dir is refused, since only JSON is read.
pub fn config_files(files: &[PathBuf], dirs: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut out: Vec<PathBuf> = files.to_vec();
    for dir in dirs {
        let read_dir = |error| ConfigError::ReadDir { dir: dir.clone(), error };
        let entries = std::fs::read_dir(dir).map_err(read_dir)?;
        let mut found = Vec::new();
        for entry in entries {
            let path = entry.map_err(read_dir)?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") if path.is_file() => found.push(path),
                Some("hcl") if path.is_file() => return Err(ConfigError::Hcl(path)),
                _ => {}
            }
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// Reads every config source: `files` in order, then the local-config environment variable
/// (`WHARF_LOCAL_CONFIG`, else `CONSUL_LOCAL_CONFIG`, as Consul's image does).
pub fn load(files: &[PathBuf], local_config: Option<&str>) -> Result<FileConfig, ConfigError> {
    let mut cfg = FileConfig::default();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|error| ConfigError::Read { path: file.clone(), error })?;
        cfg.merge_json(&file.display().to_string(), &text)?;
    }
    if let Some(text) = local_config.filter(|t| !t.trim().is_empty()) {
        cfg.merge_json("the CONSUL_LOCAL_CONFIG environment variable", text)?;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_keys_autopilot_and_reconnect_timeout() {
        let mut c = FileConfig::default();
        c.merge_json("a.json", r#"{"reconnect_timeout": "24h", "autopilot": {"cleanup_dead_servers": false}}"#)
            .expect("valid");
        assert_eq!(c.reconnect_timeout, Some(std::time::Duration::from_secs(86_400)));
        assert_eq!(c.cleanup_dead_servers, Some(false));
        let e = c.merge_json("b.json", r#"{"reconnect_timeout": "1h"}"#).expect_err("too short").to_string();
        assert!(e.contains("at least 8h"), "{e}");
        assert_eq!(
            c.reconnect_timeout,
            Some(std::time::Duration::from_secs(86_400)),
            "a rejected file changes nothing"
        );
        let e =
            c.merge_json("c.json", r#"{"autopilot": {"max_trailing_logs": 5}}"#).expect_err("unsupported").to_string();
        assert!(e.contains("autopilot.max_trailing_logs"), "{e}");
    }

    #[test]
    fn consul_keys_are_read() {
        let mut c = FileConfig::default();
        c.merge_json(
            "a.json",
            r#"{"server": true, "bootstrap_expect": 3, "retry_join": ["consul1"], "node_name": "n1",
                "datacenter": "dc2", "data_dir": "/d", "client_addr": "0.0.0.0", "bind_addr": "10.0.0.2",
                "ui_config": {"enabled": true}, "enable_script_checks": true,
                "ports": {"http": 8501, "dns": 8601, "server": 8301, "serf_lan": 9301}, "recursors": ["1.1.1.1"],
                "encrypt": "k", "service": {"name": "web"}}"#,
        )
        .expect("valid");
        assert_eq!(c.server, Some(true));
        assert_eq!(c.bootstrap_expect, Some(3));
        assert_eq!(c.retry_join, ["consul1"]);
        assert_eq!(c.client_addr, Some(IpAddr::from([0, 0, 0, 0])));
        assert_eq!((c.http_port, c.dns_port, c.server_port), (Some(8501), Some(8601), Some(8301)));
        assert_eq!(c.serf_lan_port, Some(9301));
        assert_eq!(c.ui, Some(true));
        assert_eq!(c.enable_script_checks, Some(true));
        c.merge_json("b.json", r#"{"retry_join": ["consul2"], "datacenter": "dc3"}"#).expect("valid");
        assert_eq!(c.retry_join, ["consul1", "consul2"], "lists are joined");
        assert_eq!(c.datacenter.as_deref(), Some("dc3"), "later files win");
        // Consul 0.x keys, as seed 004's image writes them.
        c.merge_json("old.json", r#"{"ui_dir": "/webui", "recursor": "10.0.0.53"}"#).expect("valid");
        assert_eq!((c.ui, c.recursors.last().map(String::as_str)), (Some(true), Some("10.0.0.53")));
    }

    #[test]
    fn unknown_and_unsupported_keys_name_key_and_file() {
        let mut c = FileConfig::default();
        let e = c.merge_json("/etc/w/x.json", r#"{"server": true, "sever": true}"#).expect_err("typo").to_string();
        assert!(e.contains("/etc/w/x.json") && e.contains("\"sever\""), "{e}");
        let e = c.merge_json("acl.json", r#"{"acl_master_token": "x"}"#).expect_err("acl").to_string();
        assert!(e.contains("acl.json") && e.contains("acl_master_token") && e.contains("ACLs"), "{e}");
        let e = c.merge_json("p.json", r#"{"ports": {"htp": 1}}"#).expect_err("port typo").to_string();
        assert!(e.contains("ports.htp"), "{e}");
        let e = c.merge_json("p.json", r#"{"ports": {"http": 70000}}"#).expect_err("range").to_string();
        assert!(e.contains("ports.http") && e.contains("70000"), "{e}");
        let e = c.merge_json("b.json", r#"{"server": "yes"}"#).expect_err("bool").to_string();
        assert!(e.contains("server") && e.contains("yes"), "{e}");
        assert_eq!(c, FileConfig::default(), "a refused file changes nothing it had not set");
    }

    #[test]
    fn local_config_env_is_a_source() {
        let c = load(&[], Some(r#"{"skip_leave_on_interrupt": true}"#)).expect("valid");
        assert_eq!(c.skip_leave_on_interrupt, Some(true));
        let e = load(&[], Some(r#"{"nope": 1}"#)).expect_err("unknown").to_string();
        assert!(e.contains("CONSUL_LOCAL_CONFIG") && e.contains("nope"), "{e}");
    }

    #[test]
    fn go_bools() {
        assert_eq!(parse_bool("true"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("yes").is_err());
    }
}
