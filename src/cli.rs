//! The client commands (`wharf members`, `catalog`, `services`, `kv`, `info`, `reload`,
//! `leave`): thin callers of the HTTP API that print like consul's CLI and exit non-zero
//! with the server's message on failure.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// List services (names; -tags adds their tags).
    Services {
        #[arg(long)]
        tags: bool,
    },
    /// List nodes.
    Nodes,
}

#[derive(Subcommand, Debug)]
pub enum ServicesCmd {
    /// Register the service(s) defined in a Consul JSON file on the local agent.
    Register { file: PathBuf },
    /// Deregister a service by ID from the local agent.
    Deregister {
        /// The service ID (also accepted as -id ID).
        id: Option<String>,
        #[arg(long = "id", value_name = "ID")]
        id_flag: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KvCmd {
    /// Print a key's value (-detailed: all fields; -recurse: every key under a prefix).
    Get {
        /// The key (a prefix with -recurse; empty = the whole store).
        #[arg(default_value = "")]
        key: String,
        #[arg(long)]
        detailed: bool,
        #[arg(long)]
        recurse: bool,
    },
    /// Write a value (-cas -modify-index N: only if unchanged since index N).
    Put {
        key: String,
        value: Option<String>,
        #[arg(long)]
        cas: bool,
        #[arg(long, value_name = "N")]
        modify_index: Option<u64>,
        #[arg(long, value_name = "N")]
        flags: Option<u64>,
    },
    /// Delete a key (-recurse: every key under a prefix).
    Delete {
        key: String,
        #[arg(long)]
        recurse: bool,
    },
}

/// An answer's `X-Consul-Index` (0 when absent or not a number).
pub(crate) fn consul_index(headers: &reqwest::header::HeaderMap) -> u64 {
    headers.get("x-consul-index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// An HTTP API client for the CLI.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// Resolves the API address: `-http-addr`, then WHARF_HTTP_ADDR, then CONSUL_HTTP_ADDR.
pub fn api_base(flag: Option<&str>) -> String {
    let addr = flag
        .map(str::to_string)
        .or_else(|| std::env::var("WHARF_HTTP_ADDR").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("CONSUL_HTTP_ADDR").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "127.0.0.1:8500".to_string());
    let addr = addr.trim_end_matches('/');
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

impl Client {
    pub fn new(base: String) -> Self {
        Client { base, http: reqwest::Client::new() }
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>)> {
        let (status, _, bytes) = self.call_indexed(method, path, body).await?;
        Ok((status, bytes))
    }

    /// Like [`Client::call`], with the answer's `X-Consul-Index` (0 when absent).
    pub(crate) async fn call_indexed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, u64, Vec<u8>)> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.with_context(|| {
            format!("cannot reach the wharf agent at {}: is it running? (set -http-addr)", self.base)
        })?;
        let status = resp.status().as_u16();
        let index = consul_index(resp.headers());
        let bytes = resp.bytes().await.context("reading the agent's answer")?.to_vec();
        Ok((status, index, bytes))
    }

    /// A call that must succeed; the server's message becomes the error.
    pub(crate) async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Result<Vec<u8>> {
        let (status, bytes) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            let msg = String::from_utf8_lossy(&bytes).trim().to_string();
            bail!("{} (HTTP {status})", if msg.is_empty() { "request failed".to_string() } else { msg });
        }
        Ok(bytes)
    }

    pub(crate) async fn json(&self, path: &str) -> Result<Value> {
        let bytes = self.ok(reqwest::Method::GET, path, None).await?;
        serde_json::from_slice(&bytes).context("the agent sent invalid JSON")
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn print_table(rows: Vec<Vec<String>>) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(String::len).max().unwrap_or(0)).collect();
    for row in rows {
        let line: Vec<String> = row.iter().enumerate().map(|(i, cell)| format!("{cell:<w$}", w = widths[i])).collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub(crate) fn key_path(key: &str) -> String {
    key.split('/')
        .map(|seg| form_urlencoded::byte_serialize(seg.as_bytes()).collect::<String>())
        .collect::<Vec<_>>()
        .join("/")
}

/// `wharf version`, shaped like `consul version`.
pub fn version() {
    println!("wharf v{}", env!("CARGO_PKG_VERSION"));
    println!("Consul HTTP API v1 and DNS interface compatible; Raft protocol 3 (openraft)");
}

/// `wharf keygen`: 32 random bytes from a cryptographically secure generator (seeded by the
/// operating system), base64.
pub fn keygen() {
    let key: [u8; 32] = rand::random();
    println!("{}", STANDARD.encode(key));
}

/// `wharf validate PATH...`: every file (or directory of `*.json` files) parses, every key
/// is known and every definition is valid.
pub fn validate(paths: &[PathBuf]) -> Result<()> {
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = paths.iter().cloned().partition(|p| p.is_dir());
    let sources = local_agent::config_dir::Sources { files, dirs };
    let defs = local_agent::config_dir::read_definitions(&sources, "validate", "dc1", None)?;
    println!("Configuration is valid! ({} services, {} checks)", defs.services.len(), defs.checks.len());
    Ok(())
}

pub async fn join(c: &Client, addresses: &[String]) -> Result<()> {
    let mut joined = 0;
    for addr in addresses {
        match c.ok(reqwest::Method::PUT, &format!("/v1/agent/join/{}", key_path(addr)), None).await {
            Ok(_) => joined += 1,
            Err(e) => eprintln!("Error joining address '{addr}': {e:#}"),
        }
    }
    if joined == 0 {
        bail!("Failed to join any nodes.");
    }
    println!("Successfully joined cluster by contacting {joined} nodes.");
    Ok(())
}

/// `wharf maint`: without -enable/-disable, lists what is in maintenance.
pub async fn maint(c: &Client, enable: bool, disable: bool, service: Option<&str>, reason: Option<&str>) -> Result<()> {
    if enable && disable {
        bail!("-enable and -disable are mutually exclusive");
    }
    if !enable && !disable {
        if service.is_some() || reason.is_some() {
            bail!("-service and -reason need -enable or -disable");
        }
        let checks = c.json("/v1/agent/checks").await?;
        for (id, check) in checks.as_object().into_iter().flatten() {
            if id == "_node_maintenance" {
                println!("Node:\n  Name:   {}\n  Reason: {}", s(&check["Node"]), s(&check["Notes"]));
            } else if let Some(sid) = id.strip_prefix("_service_maintenance:") {
                println!("Service:\n  ID:     {sid}\n  Reason: {}", s(&check["Notes"]));
            }
        }
        return Ok(());
    }
    let mut query = format!("?enable={enable}");
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        query.push_str(&format!("&reason={}", form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()));
    }
    let (path, what) = match service {
        Some(id) => (
            format!("/v1/agent/service/maintenance/{}{query}", key_path(id)),
            format!("Service maintenance is now {} for {id:?}", if enable { "enabled" } else { "disabled" }),
        ),
        None => (
            format!("/v1/agent/maintenance{query}"),
            format!("Node maintenance is now {}", if enable { "enabled" } else { "disabled" }),
        ),
    };
    c.ok(reqwest::Method::PUT, &path, None).await?;
    println!("{what}");
    Ok(())
}

pub async fn force_leave(c: &Client, node: &str) -> Result<()> {
    c.ok(reqwest::Method::PUT, &format!("/v1/agent/force-leave/{}", key_path(node)), None).await?;
    println!("Node {node} has left the cluster");
    Ok(())
}

pub async fn members(c: &Client, detailed: bool) -> Result<()> {
    let v = c.json("/v1/agent/members").await?;
    if detailed {
        let mut rows = vec![vec!["Node".into(), "Address".into(), "Status".into(), "Tags".into()]];
        for m in v.as_array().into_iter().flatten() {
            let tags: Vec<String> =
                m["Tags"].as_object().into_iter().flatten().map(|(k, t)| format!("{k}={}", s(t))).collect();
            let addr = format!("{}:{}", s(&m["Addr"]), s(&m["Port"]));
            rows.push(vec![s(&m["Name"]), addr, member_status(&m["Status"]).into(), tags.join(",")]);
        }
        print_table(rows);
        return Ok(());
    }
    let mut rows =
        vec![vec!["Node".into(), "Address".into(), "Status".into(), "Type".into(), "Build".into(), "DC".into()]];
    for m in v.as_array().into_iter().flatten() {
        let status = member_status(&m["Status"]);
        let role = if m["Tags"]["role"] == "consul" { "server" } else { "client" };
        let addr = format!("{}:{}", s(&m["Addr"]), s(&m["Port"]));
        rows.push(vec![s(&m["Name"]), addr, status.into(), role.into(), s(&m["Tags"]["build"]), s(&m["Tags"]["dc"])]);
    }
    print_table(rows);
    Ok(())
}

/// Serf's member status codes.
fn member_status(v: &Value) -> &'static str {
    match v.as_u64() {
        Some(1) => "alive",
        Some(2) => "leaving",
        Some(3) => "left",
        Some(4) => "failed",
        _ => "unknown",
    }
}

pub async fn catalog(c: &Client, cmd: CatalogCmd) -> Result<()> {
    match cmd {
        CatalogCmd::Services { tags } => {
            let v = c.json("/v1/catalog/services").await?;
            let mut rows = Vec::new();
            for (name, t) in v.as_object().into_iter().flatten() {
                let list: Vec<String> = t.as_array().into_iter().flatten().map(s).collect();
                if tags {
                    rows.push(vec![name.clone(), list.join(",")]);
                } else {
                    rows.push(vec![name.clone()]);
                }
            }
            print_table(rows);
        }
        CatalogCmd::Nodes => {
            let v = c.json("/v1/catalog/nodes").await?;
            let mut rows = vec![vec!["Node".into(), "ID".into(), "Address".into(), "DC".into()]];
            for n in v.as_array().into_iter().flatten() {
                let id: String = s(&n["ID"]).chars().take(8).collect();
                rows.push(vec![s(&n["Node"]), id, s(&n["Address"]), s(&n["Datacenter"])]);
            }
            print_table(rows);
        }
    }
    Ok(())
}

pub async fn services(c: &Client, cmd: ServicesCmd) -> Result<()> {
    match cmd {
        ServicesCmd::Register { file } => {
            let text = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let v: Value =
                serde_json::from_slice(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", file.display()))?;
            // Accept {"service": {...}}, {"services": [...]} (any key case) or a bare service.
            let mut defs = Vec::new();
            if let Value::Object(map) = &v {
                for (k, val) in map {
                    match k.to_ascii_lowercase().as_str() {
                        "service" => defs.push(val.clone()),
                        "services" => defs.extend(val.as_array().cloned().unwrap_or_default()),
                        _ => {}
                    }
                }
            }
            if defs.is_empty() {
                defs.push(v);
            }
            for def in defs {
                let name = def.get("name").or_else(|| def.get("Name")).map(s).unwrap_or_default();
                c.ok(reqwest::Method::PUT, "/v1/agent/service/register", Some(serde_json::to_vec(&def)?))
                    .await
                    .with_context(|| format!("registering {name:?} from {}", file.display()))?;
                println!("Registered service: {name}");
            }
        }
        ServicesCmd::Deregister { id, id_flag } => {
            let id = id.or(id_flag).ok_or_else(|| anyhow!("give the service ID: wharf services deregister ID"))?;
            c.ok(reqwest::Method::PUT, &format!("/v1/agent/service/deregister/{}", key_path(&id)), None).await?;
            println!("Deregistered service: {id}");
        }
    }
    Ok(())
}

pub async fn kv(c: &Client, cmd: KvCmd) -> Result<()> {
    match cmd {
        KvCmd::Get { key, detailed, recurse } => {
            let q = if recurse { "?recurse" } else { "" };
            let (status, bytes) = c.call(reqwest::Method::GET, &format!("/v1/kv/{}{q}", key_path(&key)), None).await?;
            if status == 404 {
                bail!("No key exists at: {key}");
            }
            if status != 200 {
                bail!("{} (HTTP {status})", String::from_utf8_lossy(&bytes).trim());
            }
            let v: Value = serde_json::from_slice(&bytes).context("the agent sent invalid JSON")?;
            for e in v.as_array().into_iter().flatten() {
                let value = match &e["Value"] {
                    Value::String(b64) => STANDARD.decode(b64).unwrap_or_default(),
                    _ => Vec::new(),
                };
                let text = String::from_utf8_lossy(&value);
                if detailed {
                    let rows = vec![
                        vec!["CreateIndex".into(), s(&e["CreateIndex"])],
                        vec!["Flags".into(), s(&e["Flags"])],
                        vec!["Key".into(), s(&e["Key"])],
                        vec!["LockIndex".into(), s(&e["LockIndex"])],
                        vec!["ModifyIndex".into(), s(&e["ModifyIndex"])],
                        vec!["Session".into(), e.get("Session").map(s).unwrap_or_else(|| "-".into())],
                        vec!["Value".into(), text.to_string()],
                    ];
                    print_table(rows);
                    if recurse {
                        println!();
                    }
                } else if recurse {
                    println!("{}:{}", s(&e["Key"]), text);
                } else {
                    println!("{text}");
                }
            }
        }
        KvCmd::Put { key, value, cas, modify_index, flags } => {
            let mut q = Vec::new();
            if cas {
                let idx = modify_index
                    .ok_or_else(|| anyhow!("-cas needs -modify-index N (0 writes only if the key is absent)"))?;
                q.push(format!("cas={idx}"));
            }
            if let Some(f) = flags {
                q.push(format!("flags={f}"));
            }
            let query = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
            let body = value.unwrap_or_default().into_bytes();
            let out = c.ok(reqwest::Method::PUT, &format!("/v1/kv/{}{query}", key_path(&key)), Some(body)).await?;
            if out.trim_ascii() != b"true" {
                bail!("Error! Did not write to {key}: CAS failed");
            }
            println!("Success! Data written to: {key}");
        }
        KvCmd::Delete { key, recurse } => {
            let q = if recurse { "?recurse" } else { "" };
            c.ok(reqwest::Method::DELETE, &format!("/v1/kv/{}{q}", key_path(&key)), None).await?;
            if recurse {
                println!("Success! Deleted keys with prefix: {key}");
            } else {
                println!("Success! Deleted key: {key}");
            }
        }
    }
    Ok(())
}

pub async fn info(c: &Client) -> Result<()> {
    let v = c.json("/v1/agent/self").await?;
    println!("agent:");
    println!("\tnode_name = {}", s(&v["Config"]["NodeName"]));
    println!("\tnode_id = {}", s(&v["Config"]["NodeID"]));
    println!("\tdatacenter = {}", s(&v["Config"]["Datacenter"]));
    println!("\tserver = {}", s(&v["Config"]["Server"]));
    println!("\tversion = {}", s(&v["Config"]["Version"]));
    for section in ["agent", "catalog", "raft"] {
        println!("{section}:");
        for (k, val) in v["Stats"][section].as_object().into_iter().flatten() {
            println!("\t{k} = {}", s(val));
        }
    }
    Ok(())
}

pub async fn reload(c: &Client) -> Result<()> {
    c.ok(reqwest::Method::PUT, "/v1/agent/reload", None).await?;
    println!("Configuration reload triggered");
    Ok(())
}

pub async fn leave(c: &Client) -> Result<()> {
    c.ok(reqwest::Method::PUT, "/v1/agent/leave", None).await?;
    println!("Graceful leave complete");
    Ok(())
}
