//! The template data source over a Consul-compatible HTTP API (`wharf template`, `wharf
//! export`), as consul-template reads Consul: one blocking-query loop per dependency
//! (`?index=N&wait=...`, following `X-Consul-Index`) keeps a cache of answers, and wakes
//! the renderer only when an answer really changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use templates::data::{CheckInfo, KvPair, NodeInfo, NodeService, NodeServices, ServiceEntry, ServiceSummary};
use templates::{DataValue, Dependency, StaticData, TemplateData};
use tokio::sync::Notify;

type Cache = Arc<Mutex<HashMap<Dependency, DataValue>>>;

/// Cached answers kept fresh by blocking queries.
pub struct HttpFeed {
    api: Api,
    cache: Cache,
    notify: Arc<Notify>,
    pollers: HashMap<Dependency, tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    /// How long one blocking query may wait on the server.
    wait: Duration,
}

impl HttpFeed {
    /// `base` is `http://host:port`; `wait` bounds each blocking query.
    pub fn new(base: String, wait: Duration) -> Result<HttpFeed> {
        let http = reqwest::Client::builder()
            .timeout(wait + Duration::from_secs(15))
            .build()
            .context("cannot build the HTTP client")?;
        let token = ["WHARF_HTTP_TOKEN", "CONSUL_HTTP_TOKEN"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|t| !t.is_empty()));
        Ok(HttpFeed {
            api: Api { base, http, token, wait },
            cache: Arc::new(Mutex::new(HashMap::new())),
            notify: Arc::new(Notify::new()),
            pollers: HashMap::new(),
        })
    }

    pub fn snapshot(&self) -> Arc<dyn TemplateData> {
        let answers = self.cache.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Arc::new(StaticData { answers })
    }

    /// Starts watching new dependencies and stops watching ones no template uses anymore.
    pub fn want(&mut self, deps: &BTreeSet<Dependency>) {
        self.pollers.retain(|dep, task| {
            let keep = deps.contains(dep);
            if !keep {
                task.abort();
            }
            keep
        });
        for dep in deps {
            if !self.pollers.contains_key(dep) {
                let (api, cache, notify, d) = (self.api.clone(), self.cache.clone(), self.notify.clone(), dep.clone());
                self.pollers.insert(dep.clone(), tokio::spawn(poll(api, d, cache, notify)));
            }
        }
    }

    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for HttpFeed {
    fn drop(&mut self) {
        for task in self.pollers.values() {
            task.abort();
        }
    }
}

/// One dependency's blocking-query loop.
async fn poll(api: Api, dep: Dependency, cache: Cache, notify: Arc<Notify>) {
    let mut index = 0u64;
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        match api.fetch(&dep, index).await {
            Ok((value, new_index)) => {
                backoff = Duration::from_millis(250);
                let changed = {
                    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                    if c.get(&dep) != Some(&value) {
                        c.insert(dep.clone(), value);
                        true
                    } else {
                        false
                    }
                };
                if changed {
                    notify.notify_one();
                }
                // Consul's rule: an index that goes backwards (a restored snapshot) resets.
                let blocked = new_index > 0 && new_index == index;
                index = if new_index < index { 0 } else { new_index };
                if matches!(dep, Dependency::Datacenters) {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                } else if blocked && started.elapsed() < api.wait / 2 {
                    // The server answered at once with nothing new: do not spin.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Err(e) => {
                tracing::warn!("template data {dep}: {e:#}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Percent-encodes a path (keeping `/`).
fn path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn strings(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn string_map(v: &Value, k: &str) -> BTreeMap<String, String> {
    v.get(k)
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

fn node_info(n: &Value) -> NodeInfo {
    NodeInfo {
        id: text(n, "ID"),
        node: text(n, "Node"),
        address: text(n, "Address"),
        datacenter: text(n, "Datacenter"),
        tagged_addresses: string_map(n, "TaggedAddresses"),
        meta: string_map(n, "Meta"),
    }
}

fn kv_pair(e: &Value) -> Result<KvPair> {
    let value = match e.get("Value").and_then(Value::as_str) {
        None => String::new(),
        Some(b64) => {
            let bytes = STANDARD.decode(b64).map_err(|err| anyhow!("KV value is not base64: {err}"))?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    Ok(KvPair {
        key: text(e, "Key"),
        value,
        flags: num(e, "Flags"),
        create_index: num(e, "CreateIndex"),
        modify_index: num(e, "ModifyIndex"),
        lock_index: num(e, "LockIndex"),
        session: text(e, "Session"),
    })
}

/// consul-template's aggregated status: maintenance beats critical beats warning.
fn aggregate(checks: &[CheckInfo]) -> String {
    if checks.iter().any(|c| c.check_id == "_node_maintenance" || c.check_id.starts_with("_service_maintenance:")) {
        return "maintenance".into();
    }
    let rank = |s: &str| match s {
        "critical" => 2,
        "warning" => 1,
        _ => 0,
    };
    checks.iter().map(|c| c.status.as_str()).max_by_key(|s| rank(s)).unwrap_or("passing").to_string()
}

fn health_entry(e: &Value) -> ServiceEntry {
    let node = e.get("Node").cloned().unwrap_or(Value::Null);
    let svc = e.get("Service").cloned().unwrap_or(Value::Null);
    let checks: Vec<CheckInfo> = e
        .get("Checks")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| CheckInfo {
                    check_id: text(c, "CheckID"),
                    name: text(c, "Name"),
                    status: text(c, "Status"),
                    output: text(c, "Output"),
                    service_id: text(c, "ServiceID"),
                })
                .collect()
        })
        .unwrap_or_default();
    let weights = svc.get("Weights").cloned().unwrap_or(Value::Null);
    ServiceEntry {
        node: text(&node, "Node"),
        node_id: text(&node, "ID"),
        node_address: text(&node, "Address"),
        node_datacenter: text(&node, "Datacenter"),
        node_tagged_addresses: string_map(&node, "TaggedAddresses"),
        node_meta: string_map(&node, "Meta"),
        id: text(&svc, "ID"),
        name: text(&svc, "Service"),
        tags: strings(&svc, "Tags"),
        address: text(&svc, "Address"),
        port: u16::try_from(num(&svc, "Port")).unwrap_or(0),
        service_meta: string_map(&svc, "Meta"),
        status: aggregate(&checks),
        weights_passing: u32::try_from(num(&weights, "Passing")).unwrap_or(1),
        weights_warning: u32::try_from(num(&weights, "Warning")).unwrap_or(1),
        checks,
    }
}

impl Api {
    /// GET `path_and_query`; `(status, X-Consul-Index, JSON body or Null)`.
    async fn get(&self, path_and_query: &str) -> Result<(u16, u64, Value)> {
        let url = format!("{}{}", self.base, path_and_query);
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}: is the agent running (-http-addr)?"))?;
        let status = resp.status().as_u16();
        let index = crate::cli::consul_index(resp.headers());
        let body = resp.text().await.with_context(|| format!("GET {url}: reading the body"))?;
        if status == 404 {
            return Ok((status, index, Value::Null));
        }
        if !(200..300).contains(&status) {
            return Err(anyhow!("GET {url}: HTTP {status}: {}", body.trim()));
        }
        let json = serde_json::from_str(&body).with_context(|| format!("GET {url}: the answer is not JSON"))?;
        Ok((status, index, json))
    }

    /// The name of the node the agent at the other end runs as.
    async fn own_node_name(&self) -> Result<String> {
        let (_, _, me) = self.get("/v1/agent/self").await?;
        me.pointer("/Config/NodeName")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("/v1/agent/self has no Config.NodeName"))
    }

    /// One (blocking, when `index` > 0) query for `dep`.
    async fn fetch(&self, dep: &Dependency, index: u64) -> Result<(DataValue, u64)> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if index > 0 {
            params.push(("index", index.to_string()));
            params.push(("wait", format!("{}ms", self.wait.as_millis())));
        }
        let dc_param = |params: &mut Vec<(&str, String)>, dc: &Option<String>| {
            if let Some(d) = dc {
                params.push(("dc", d.clone()));
            }
        };
        let (path_part, decode): (String, fn(&Value) -> Result<DataValue>) = match dep {
            Dependency::HealthService { name, tag, dc } => {
                if let Some(t) = tag {
                    params.push(("tag", t.clone()));
                }
                dc_param(&mut params, dc);
                (format!("/v1/health/service/{}", path(name)), decode_health_service)
            }
            Dependency::CatalogServices { dc } => {
                dc_param(&mut params, dc);
                ("/v1/catalog/services".into(), decode_catalog_services)
            }
            Dependency::Key { key } => (format!("/v1/kv/{}", path(key)), decode_key),
            Dependency::KeyPrefix { prefix } => {
                params.push(("recurse", String::new()));
                (format!("/v1/kv/{}", path(prefix)), decode_key_prefix)
            }
            Dependency::Node { name, dc } => {
                dc_param(&mut params, dc);
                let name = match name {
                    Some(n) => n.clone(),
                    None => self.own_node_name().await?,
                };
                (format!("/v1/catalog/node/{}", path(&name)), decode_node)
            }
            Dependency::Nodes { dc } => {
                dc_param(&mut params, dc);
                ("/v1/catalog/nodes".into(), decode_nodes)
            }
            Dependency::Datacenters => {
                params.clear();
                ("/v1/catalog/datacenters".into(), decode_datacenters)
            }
        };
        let query = if params.is_empty() {
            String::new()
        } else {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &params {
                q.append_pair(k, v);
            }
            // Consul's bare flags (`?recurse`) are accepted with an empty value.
            format!("?{}", q.finish())
        };
        let (_, new_index, body) = self.get(&format!("{path_part}{query}")).await?;
        Ok((decode(&body)?, new_index))
    }
}

fn decode_health_service(v: &Value) -> Result<DataValue> {
    Ok(DataValue::HealthService(v.as_array().map(|a| a.iter().map(health_entry).collect()).unwrap_or_default()))
}

fn decode_catalog_services(v: &Value) -> Result<DataValue> {
    let m = v.as_object().cloned().unwrap_or_default();
    Ok(DataValue::CatalogServices(
        m.iter()
            .map(|(name, tags)| ServiceSummary {
                name: name.clone(),
                tags: tags
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                    .unwrap_or_default(),
            })
            .collect(),
    ))
}

fn decode_key(v: &Value) -> Result<DataValue> {
    let first = v.as_array().and_then(|a| a.first());
    Ok(DataValue::Key(first.map(kv_pair).transpose()?))
}

fn decode_key_prefix(v: &Value) -> Result<DataValue> {
    let list = v.as_array().cloned().unwrap_or_default();
    Ok(DataValue::KeyPrefix(list.iter().map(kv_pair).collect::<Result<_>>()?))
}

fn decode_node(v: &Value) -> Result<DataValue> {
    if v.is_null() {
        return Ok(DataValue::Node(None));
    }
    let node = node_info(v.get("Node").unwrap_or(&Value::Null));
    let services = v
        .get("Services")
        .and_then(Value::as_object)
        .map(|m| {
            m.values()
                .map(|s| NodeService {
                    id: text(s, "ID"),
                    service: text(s, "Service"),
                    tags: strings(s, "Tags"),
                    meta: string_map(s, "Meta"),
                    port: u16::try_from(num(s, "Port")).unwrap_or(0),
                    address: text(s, "Address"),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(DataValue::Node(Some(NodeServices { node, services })))
}

fn decode_nodes(v: &Value) -> Result<DataValue> {
    Ok(DataValue::Nodes(v.as_array().map(|a| a.iter().map(node_info).collect()).unwrap_or_default()))
}

fn decode_datacenters(v: &Value) -> Result<DataValue> {
    Ok(DataValue::Datacenters(
        v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default(),
    ))
}

/// Fetches every dependency once (no blocking): for one-shot exports.
pub async fn fetch_all(feed: &HttpFeed, deps: &BTreeSet<Dependency>) -> Result<()> {
    for dep in deps {
        let (value, _) = feed.api.fetch(dep, 0).await?;
        feed.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(dep.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded() {
        assert_eq!(path("app/db host?"), "app/db%20host%3F");
    }

    #[test]
    fn health_entries_aggregate_checks() {
        let v = serde_json::json!({
            "Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1", "Meta": {"a": "b"}},
            "Service": {"ID": "web-1", "Service": "web", "Tags": ["x"], "Address": "", "Port": 80,
                        "Meta": {}, "Weights": {"Passing": 3, "Warning": 1}},
            "Checks": [{"CheckID": "c1", "Status": "passing"}, {"CheckID": "c2", "Status": "warning"}]
        });
        let e = health_entry(&v);
        assert_eq!((e.node.as_str(), e.port, e.status.as_str(), e.weights_passing), ("n1", 80, "warning", 3));
        assert_eq!(e.node_meta.get("a").map(String::as_str), Some("b"));
    }
}
