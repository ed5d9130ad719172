//! Consul's HTTP API v1 (the subset in DESIGN.md) as an axum router over a [`Catalog`]
//! (reads, with blocking queries) and a [`Cluster`] (replicated writes).
//!
//! Every read goes through [`blocking_read`]: it evaluates the query against the latest
//! committed state and, with `?index`, waits on the state machine's watch channel until
//! the index *that query depends on* moves past it, so unrelated writes never answer it.

pub mod error;
pub mod query;
pub mod session;
pub mod txn;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use catalog::command::{Command, Outcome};
use catalog::decode::{
    CatalogDeregistration, CatalogRegistration, CheckRegistration, ServiceRegistration, decode_body,
};
use catalog::model::{AgentInfo, CheckStatus, MAX_KV_VALUE_BYTES, Node};
use catalog::state::CatalogState;
use catalog::{Catalog, Cluster, Written};
use error::ApiError;
use query::{Params, QueryOptions};

/// Longest check output kept, as Consul's default `OutputMaxSize`.
pub const MAX_CHECK_OUTPUT: usize = 4096;

/// Requests from the API to the agent's supervisor.
#[derive(Debug)]
pub enum AgentControl {
    /// Reload config-dir definitions; answers with the outcome.
    Reload(oneshot::Sender<Result<String, String>>),
    /// Leave the cluster gracefully and shut down.
    Leave(oneshot::Sender<()>),
    /// Join the cluster an agent at this address (`host[:port]`) belongs to.
    Join(String, oneshot::Sender<Result<String, String>>),
}

/// Appends Prometheus text for one subsystem (the proxy, later health checks).
pub type MetricsRenderer = Arc<dyn Fn(&mut String) + Send + Sync>;

#[derive(Clone)]
pub struct ApiState {
    pub catalog: Catalog,
    pub cluster: Arc<dyn Cluster>,
    pub agent: Arc<AgentInfo>,
    pub control: mpsc::Sender<AgentControl>,
    /// Subsystems whose metrics `/metrics` and `/v1/agent/metrics?format=prometheus` show.
    pub metrics: Vec<MetricsRenderer>,
    /// What the API needs from the agent that runs the checks.
    pub local: Arc<dyn LocalChecks>,
    /// When this agent applied recent Raft indexes (for KV lock delays); fed by
    /// [`session::AppliedClock::run`].
    pub applied: session::AppliedClock,
}

/// What the API needs from the local agent's health checker: whether it will run a check
/// definition, and TTL heartbeats (`/v1/agent/check/pass|warn|fail|update`).
pub trait LocalChecks: Send + Sync + 'static {
    /// Refuses, with the reason a client reads, check definitions this agent will not run
    /// (script checks while disabled, Wasm checks without a plugin host).
    fn admit(&self, checks: &[catalog::model::HealthCheck]) -> Result<(), String>;
    /// Records that a TTL check was refreshed now.
    fn ttl_beat(&self, check_id: &str);
}

/// Refuses checks this agent will not run.
fn check_allowed(st: &ApiState, checks: &[catalog::model::HealthCheck]) -> Result<(), ApiError> {
    st.local.admit(checks).map_err(ApiError::BadRequest)
}

type ApiResult = Result<Response, ApiError>;

/// Evaluates `f` on the committed state, blocking per Consul's rules when `?index` is set.
async fn blocking_read<T>(
    st: &ApiState,
    q: &QueryOptions,
    f: impl Fn(&CatalogState) -> (T, u64),
) -> Result<(T, u64), ApiError> {
    if q.consistent {
        st.cluster.linearize().await?;
    }
    let mut rx = st.catalog.subscribe();
    let snap = rx.borrow_and_update().clone();
    let (mut value, mut index) = f(&snap);
    if q.index == 0 || index > q.index {
        return Ok((value, index));
    }
    let deadline = tokio::time::Instant::now() + q.wait_with_jitter();
    loop {
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Err(_) | Ok(Err(_)) => return Ok((value, index)),
            Ok(Ok(())) => {
                let snap = rx.borrow_and_update().clone();
                (value, index) = f(&snap);
                if index > q.index {
                    return Ok((value, index));
                }
            }
        }
    }
}

fn meta_headers(st: &ApiState, index: u64, consistency: Option<&str>) -> HeaderMap {
    let leader = st.cluster.leader_status();
    let mut h = HeaderMap::new();
    h.insert("x-consul-index", HeaderValue::from(index.max(1)));
    h.insert("x-consul-knownleader", HeaderValue::from_static(if leader.known_leader { "true" } else { "false" }));
    h.insert("x-consul-lastcontact", HeaderValue::from(leader.last_contact_ms));
    if let Some(c) = consistency
        && let Ok(v) = HeaderValue::from_str(c)
    {
        h.insert("x-consul-effective-consistency", v);
    }
    h
}

fn json_response(st: &ApiState, index: u64, q: &QueryOptions, body: Value) -> Response {
    let mut headers = meta_headers(st, index, Some(q.consistency()));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, body.to_string()).into_response()
}

fn empty_ok() -> Response {
    StatusCode::OK.into_response()
}

fn json_bool(b: bool) -> Response {
    ([("content-type", "application/json")], if b { "true" } else { "false" }).into_response()
}

/// A write's answer, carrying the Raft index it was committed at (a wharf extension:
/// Consul sends no index on writes; clients that do not look for it are unaffected).
fn written_bool(w: &Written) -> Response {
    let mut r = json_bool(w.outcome == Outcome::Applied);
    r.headers_mut().insert("x-consul-index", HeaderValue::from(w.index));
    r
}

fn check_dc(st: &ApiState, p: &Params) -> Result<(), ApiError> {
    match p.get("dc") {
        Some(dc) if !dc.is_empty() && dc != st.agent.datacenter => {
            Err(ApiError::Internal(format!("No path to datacenter {dc:?}")))
        }
        _ => Ok(()),
    }
}

fn read_opts(st: &ApiState, raw: &Option<String>) -> Result<(Params, QueryOptions), ApiError> {
    let p = Params::parse(raw.as_deref());
    check_dc(st, &p)?;
    let q = QueryOptions::from_params(&p)?;
    Ok((p, q))
}

async fn write(st: &ApiState, cmd: Command) -> Result<Written, ApiError> {
    let w = st.cluster.write(cmd).await?;
    if let Outcome::Rejected(msg) = &w.outcome {
        return Err(ApiError::BadRequest(msg.clone()));
    }
    Ok(w)
}

fn truncate_output(mut s: String) -> String {
    if s.len() > MAX_CHECK_OUTPUT {
        let mut cut = MAX_CHECK_OUTPUT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" ...");
    }
    s
}

// ------------------------------------------------------------------- agent --

async fn agent_service_register(State(st): State<ApiState>, RawQuery(raw): RawQuery, body: Bytes) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    let reg: ServiceRegistration = decode_body(&body).map_err(ApiError::BadRequest)?;
    let status_given: Vec<bool> = reg.check.iter().chain(reg.checks.iter()).map(|c| !c.status.is_empty()).collect();
    let (service, mut checks) =
        reg.into_records(&st.agent.node_name, &st.agent.datacenter).map_err(ApiError::BadRequest)?;
    check_allowed(&st, &checks)?;
    // Re-registering keeps the status and output of checks that already exist.
    let snap = st.catalog.snapshot();
    for (check, given) in checks.iter_mut().zip(status_given) {
        if !given && let Some(old) = snap.check(&st.agent.node_name, &check.check_id) {
            check.status = old.status;
            check.output = old.output.clone();
        }
    }
    write(
        &st,
        Command::Register {
            node: st.agent.self_node(),
            service: Some(service),
            checks,
            skip_node_update: false,
            replace_service_checks: p.flag("replace-existing-checks")?,
        },
    )
    .await?;
    Ok(empty_ok())
}

async fn agent_service_deregister(State(st): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    if st.catalog.snapshot().service(&st.agent.node_name, &id).is_none() {
        return Err(ApiError::NotFound(format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        )));
    }
    write(&st, Command::DeregisterService { node: st.agent.node_name.clone(), service_id: id }).await?;
    Ok(empty_ok())
}

async fn agent_services(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let node = st.agent.node_name.clone();
    let (body, index) = blocking_read(&st, &q, |s| {
        let (found, index) = s.node_services(&node);
        let map: serde_json::Map<String, Value> = found
            .map(|(_, services)| {
                services
                    .iter()
                    // A server's `consul` service belongs to the catalog, not to the agent's
                    // own registrations (as in Consul).
                    .filter(|svc| svc.id != "consul")
                    .map(|svc| (svc.id.clone(), views::agent_service(svc)))
                    .collect()
            })
            .unwrap_or_default();
        (Value::Object(map), index)
    })
    .await?;
    Ok(json_response(&st, index, &q, body))
}

async fn agent_service(State(st): State<ApiState>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let node = st.agent.node_name.clone();
    let (found, index) = blocking_read(&st, &q, |s| {
        let svc = s.service(&node, &id).cloned();
        let index = svc.as_ref().map(|v| v.modify_index).unwrap_or_else(|| s.node_services(&node).1);
        (svc, index)
    })
    .await?;
    match found {
        Some(svc) => Ok(json_response(&st, index, &q, views::agent_service(&svc))),
        None => Err(ApiError::NotFound(format!("unknown service ID: {id}"))),
    }
}

async fn agent_checks(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let node = st.agent.node_name.clone();
    let (body, index) = blocking_read(&st, &q, |s| {
        let (list, index) = s.node_checks(&node);
        let map: serde_json::Map<String, Value> = list.iter().map(|c| (c.check_id.clone(), views::check(c))).collect();
        (Value::Object(map), index)
    })
    .await?;
    Ok(json_response(&st, index, &q, body))
}

async fn agent_check_register(State(st): State<ApiState>, body: Bytes) -> ApiResult {
    let reg: CheckRegistration = decode_body(&body).map_err(ApiError::BadRequest)?;
    if reg.name.trim().is_empty() {
        return Err(ApiError::BadRequest("Missing check name".into()));
    }
    let snap = st.catalog.snapshot();
    let node = st.agent.node_name.clone();
    let service = if reg.service_id.is_empty() {
        None
    } else {
        Some(
            snap.service(&node, &reg.service_id)
                .cloned()
                .ok_or_else(|| ApiError::NotFound(format!("ServiceID {:?} does not exist", reg.service_id)))?,
        )
    };
    let status_given = !reg.status.is_empty();
    let default_id = reg.name.clone();
    let mut check = reg
        .into_check(&node, service.as_ref(), default_id, String::new())
        .map_err(|e| ApiError::BadRequest(format!("Invalid check: {e}")))?;
    if !status_given && let Some(old) = snap.check(&node, &check.check_id) {
        check.status = old.status;
        check.output = old.output.clone();
    }
    check.output = truncate_output(check.output);
    check_allowed(&st, std::slice::from_ref(&check))?;
    write(
        &st,
        Command::Register {
            node: st.agent.self_node(),
            service: None,
            checks: vec![check],
            skip_node_update: false,
            replace_service_checks: false,
        },
    )
    .await?;
    Ok(empty_ok())
}

fn unknown_check(id: &str) -> ApiError {
    ApiError::NotFound(format!("Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."))
}

async fn agent_check_deregister(State(st): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    if st.catalog.snapshot().check(&st.agent.node_name, &id).is_none() {
        return Err(unknown_check(&id));
    }
    write(&st, Command::DeregisterCheck { node: st.agent.node_name.clone(), check_id: id }).await?;
    Ok(empty_ok())
}

async fn set_ttl_status(st: &ApiState, id: String, status: CheckStatus, output: String) -> ApiResult {
    let snap = st.catalog.snapshot();
    let Some(check) = snap.check(&st.agent.node_name, &id) else {
        return Err(unknown_check(&id));
    };
    if check.kind != "ttl" {
        return Err(ApiError::BadRequest(format!(
            "CheckID {id:?} does not have associated TTL; only TTL checks take pass/warn/fail/update"
        )));
    }
    write(
        st,
        Command::UpdateCheck {
            node: st.agent.node_name.clone(),
            check_id: id,
            status,
            output: Some(truncate_output(output)),
        },
    )
    .await?;
    st.local.ttl_beat(&check.check_id);
    Ok(empty_ok())
}

async fn agent_check_status(st: ApiState, id: String, raw: Option<String>, status: CheckStatus) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    let note = p.get("note").unwrap_or_default().to_string();
    set_ttl_status(&st, id, status, note).await
}

async fn agent_check_pass(State(st): State<ApiState>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    agent_check_status(st, id, raw, CheckStatus::Passing).await
}

async fn agent_check_warn(State(st): State<ApiState>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    agent_check_status(st, id, raw, CheckStatus::Warning).await
}

async fn agent_check_fail(State(st): State<ApiState>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    agent_check_status(st, id, raw, CheckStatus::Critical).await
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CheckUpdate {
    status: String,
    output: String,
}

async fn agent_check_update(State(st): State<ApiState>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let upd: CheckUpdate = decode_body(&body).map_err(ApiError::BadRequest)?;
    let status = CheckStatus::parse(&upd.status)
        .ok_or_else(|| ApiError::BadRequest(format!("Invalid check status: '{}'", upd.status)))?;
    set_ttl_status(&st, id, status, upd.output).await
}

fn member_view(n: &Node, status: CheckStatus) -> Value {
    let role = n.meta.get("wharf-role").map(String::as_str).unwrap_or("node");
    let raft_addr = n.meta.get("wharf-raft-addr").cloned().unwrap_or_default();
    let port: u16 = raft_addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
    json!({
        "Name": n.node,
        "Addr": n.address,
        "Port": port,
        "Tags": {
            "role": if role == "server" { "consul" } else { "node" },
            "dc": n.datacenter,
            "id": n.id,
            "build": n.meta.get("wharf-version").cloned().unwrap_or_default(),
            "port": port.to_string(),
            "segment": "",
            "vsn": "2",
        },
        "Status": if status == CheckStatus::Passing { 1 } else { 4 },
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

fn node_liveness(s: &CatalogState, node: &str) -> CheckStatus {
    s.check(node, "serfHealth").map(|c| c.status).unwrap_or(CheckStatus::Passing)
}

async fn agent_members(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (body, index) = blocking_read(&st, &q, |s| {
        let (nodes, index) = s.nodes();
        let list: Vec<Value> = nodes.iter().map(|n| member_view(n, node_liveness(s, &n.node))).collect();
        (Value::Array(list), index.max(s.checks_in_state(None).1))
    })
    .await?;
    Ok(json_response(&st, index, &q, body))
}

async fn agent_self(State(st): State<ApiState>) -> ApiResult {
    let snap = st.catalog.snapshot();
    let a = &st.agent;
    let me = snap.node(&a.node_name).cloned().unwrap_or_else(|| a.self_node());
    let leader = st.cluster.leader_status();
    let body = json!({
        "Config": {
            "Datacenter": a.datacenter,
            "PrimaryDatacenter": a.datacenter,
            "NodeName": a.node_name,
            "NodeID": a.node_id,
            "Revision": "",
            "Server": a.server,
            "Version": a.version,
            "BuildDate": "",
        },
        "DebugConfig": {
            "DataDir": a.data_dir,
            "HTTPAddr": a.http_addr,
            "RaftAddr": a.raft_addr,
            "AdvertiseAddrLAN": a.advertise,
        },
        "Coord": null,
        "Member": member_view(&me, node_liveness(&snap, &a.node_name)),
        "Meta": me.meta,
        "Stats": {
            "agent": {
                "services": snap.node_services(&a.node_name).0.map(|(_, s)| s.len()).unwrap_or(0).to_string(),
                "checks": snap.node_checks(&a.node_name).0.len().to_string(),
            },
            "raft": {
                "applied_index": snap.last_index().to_string(),
                "leader": (leader.leader_addr.as_deref() == Some(a.raft_addr.as_str())).to_string(),
                "known_leader": leader.known_leader.to_string(),
                "leader_addr": leader.leader_addr.unwrap_or_default(),
                "last_contact_ms": leader.last_contact_ms.to_string(),
                "num_peers": st.cluster.peers().len().to_string(),
            },
            "catalog": {
                "nodes": snap.nodes().0.len().to_string(),
                "services": snap.service_names().0.len().to_string(),
            },
        },
    });
    Ok(([("content-type", "application/json")], body.to_string()).into_response())
}

async fn agent_reload(State(st): State<ApiState>) -> ApiResult {
    let (tx, rx) = oneshot::channel();
    st.control.send(AgentControl::Reload(tx)).await.map_err(|_| ApiError::Internal("agent is shutting down".into()))?;
    match rx.await {
        Ok(Ok(_)) => Ok(empty_ok()),
        Ok(Err(e)) => Err(ApiError::Internal(format!("reload failed: {e}"))),
        Err(_) => Err(ApiError::Internal("agent is shutting down".into())),
    }
}

async fn agent_join(State(st): State<ApiState>, Path(address): Path<String>) -> ApiResult {
    let (tx, rx) = oneshot::channel();
    st.control
        .send(AgentControl::Join(address.clone(), tx))
        .await
        .map_err(|_| ApiError::Internal("agent is shutting down".into()))?;
    match rx.await {
        Ok(Ok(_)) => Ok(empty_ok()),
        Ok(Err(e)) => Err(ApiError::Internal(format!("Failed to join {address}: {e}"))),
        Err(_) => Err(ApiError::Internal("agent is shutting down".into())),
    }
}

/// Consul's force-leave: the node and everything registered on it leave the catalog.
async fn agent_force_leave(State(st): State<ApiState>, Path(node): Path<String>) -> ApiResult {
    if st.catalog.snapshot().node(&node).is_none() {
        return Err(ApiError::NotFound(format!("Unknown node {node:?}: no member has that name")));
    }
    st.cluster.write(Command::DeregisterNode { node }).await?;
    Ok(empty_ok())
}

/// `?enable=` of the maintenance endpoints.
fn maintenance_flag(p: &Params) -> Result<bool, ApiError> {
    match p.get("enable") {
        None | Some("") => Err(ApiError::BadRequest("Missing value for enable".into())),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Ok(true),
            "0" | "f" | "false" => Ok(false),
            _ => Err(ApiError::BadRequest(format!("Invalid value for enable: {v:?}"))),
        },
    }
}

/// The critical check that holds a node or service in maintenance.
fn maintenance_check(
    node: &str,
    service: Option<&catalog::model::Service>,
    reason: &str,
) -> catalog::model::HealthCheck {
    let (check_id, name, what) = match service {
        None => ("_node_maintenance".to_string(), "Node Maintenance Mode", "node"),
        Some(s) => (format!("_service_maintenance:{}", s.id), "Service Maintenance Mode", "service"),
    };
    let notes = if reason.is_empty() {
        format!("Maintenance mode is enabled for this {what}, but no reason was provided. This is a default message.")
    } else {
        reason.to_string()
    };
    catalog::model::HealthCheck {
        node: node.to_string(),
        check_id,
        name: name.into(),
        status: CheckStatus::Critical,
        notes,
        service_id: service.map(|s| s.id.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

async fn set_maintenance(
    st: &ApiState,
    service: Option<catalog::model::Service>,
    enable: bool,
    reason: &str,
) -> ApiResult {
    let node = st.agent.node_name.clone();
    let check = maintenance_check(&node, service.as_ref(), reason);
    let cmd = if enable {
        Command::Register {
            node: st.agent.self_node(),
            service: None,
            checks: vec![check],
            skip_node_update: true,
            replace_service_checks: false,
        }
    } else {
        Command::DeregisterCheck { node, check_id: check.check_id }
    };
    write(st, cmd).await?;
    Ok(empty_ok())
}

/// `PUT /v1/agent/maintenance?enable=&reason=`: the node leaves every pool and DNS answer.
async fn agent_maintenance(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    let enable = maintenance_flag(&p)?;
    set_maintenance(&st, None, enable, p.get("reason").unwrap_or_default()).await
}

/// `PUT /v1/agent/service/maintenance/:id?enable=&reason=`: one instance leaves.
async fn agent_service_maintenance(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    let enable = maintenance_flag(&p)?;
    let Some(service) = st.catalog.snapshot().service(&st.agent.node_name, &id).cloned() else {
        return Err(ApiError::NotFound(format!("Unknown service ID {id:?}")));
    };
    set_maintenance(&st, Some(service), enable, p.get("reason").unwrap_or_default()).await
}

async fn agent_leave(State(st): State<ApiState>) -> ApiResult {
    let (tx, rx) = oneshot::channel();
    st.control.send(AgentControl::Leave(tx)).await.map_err(|_| ApiError::Internal("agent is shutting down".into()))?;
    let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
    Ok(empty_ok())
}

// ----------------------------------------------------------------- catalog --

async fn catalog_services(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (names, index) = blocking_read(&st, &q, |s| s.service_names()).await?;
    Ok(json_response(&st, index, &q, json!(names)))
}

async fn catalog_service(State(st): State<ApiState>, Path(name): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    let (p, q) = read_opts(&st, &raw)?;
    let tags = p.all("tag");
    let (list, index) = blocking_read(&st, &q, |s| s.service_instances(&name, &tags)).await?;
    let body = Value::Array(list.iter().map(|(n, svc)| views::catalog_service(n, svc)).collect());
    Ok(json_response(&st, index, &q, body))
}

async fn catalog_nodes(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (nodes, index) = blocking_read(&st, &q, |s| s.nodes()).await?;
    Ok(json_response(&st, index, &q, Value::Array(nodes.iter().map(views::node).collect())))
}

async fn catalog_node(State(st): State<ApiState>, Path(node): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (found, index) = blocking_read(&st, &q, |s| s.node_services(&node)).await?;
    let body = match found {
        None => Value::Null,
        Some((n, services)) => json!({
            "Node": views::node(&n),
            "Services": services.iter().map(|s| (s.id.clone(), views::node_service(s))).collect::<serde_json::Map<_, _>>(),
        }),
    };
    Ok(json_response(&st, index, &q, body))
}

async fn catalog_datacenters(State(st): State<ApiState>) -> ApiResult {
    Ok(([("content-type", "application/json")], json!([st.agent.datacenter]).to_string()).into_response())
}

async fn catalog_register(State(st): State<ApiState>, body: Bytes) -> ApiResult {
    let reg: CatalogRegistration = decode_body(&body).map_err(ApiError::BadRequest)?;
    if !reg.datacenter.is_empty() && reg.datacenter != st.agent.datacenter {
        return Err(ApiError::Internal(format!("No path to datacenter {:?}", reg.datacenter)));
    }
    let rec = reg.into_records(&st.agent.datacenter).map_err(ApiError::BadRequest)?;
    write(
        &st,
        Command::Register {
            node: rec.node,
            service: rec.service,
            checks: rec.checks,
            skip_node_update: rec.skip_node_update,
            replace_service_checks: false,
        },
    )
    .await?;
    Ok(json_bool(true))
}

async fn catalog_deregister(State(st): State<ApiState>, body: Bytes) -> ApiResult {
    let req: CatalogDeregistration = decode_body(&body).map_err(ApiError::BadRequest)?;
    if req.node.trim().is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    let cmd = if !req.service_id.is_empty() {
        Command::DeregisterService { node: req.node, service_id: req.service_id }
    } else if !req.check_id.is_empty() {
        Command::DeregisterCheck { node: req.node, check_id: req.check_id }
    } else {
        Command::DeregisterNode { node: req.node }
    };
    write(&st, cmd).await?;
    Ok(json_bool(true))
}

// ------------------------------------------------------------------ health --

async fn health_service(State(st): State<ApiState>, Path(name): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    let (p, q) = read_opts(&st, &raw)?;
    let tags = p.all("tag");
    let passing = p.flag("passing")?;
    let (list, index) = blocking_read(&st, &q, |s| s.service_health(&name, &tags, passing)).await?;
    Ok(json_response(&st, index, &q, Value::Array(list.iter().map(views::health_entry).collect())))
}

async fn health_checks(State(st): State<ApiState>, Path(name): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (list, index) = blocking_read(&st, &q, |s| s.service_checks(&name)).await?;
    Ok(json_response(&st, index, &q, views::checks(&list)))
}

async fn health_state(State(st): State<ApiState>, Path(state): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let filter = match state.as_str() {
        "any" => None,
        other => Some(CheckStatus::parse(other).ok_or_else(|| {
            ApiError::BadRequest(format!("Invalid check state {other:?}: use any, passing, warning or critical"))
        })?),
    };
    let (list, index) = blocking_read(&st, &q, |s| s.checks_in_state(filter)).await?;
    Ok(json_response(&st, index, &q, views::checks(&list)))
}

async fn health_node(State(st): State<ApiState>, Path(node): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (list, index) = blocking_read(&st, &q, |s| s.node_checks(&node)).await?;
    Ok(json_response(&st, index, &q, views::checks(&list)))
}

// ---------------------------------------------------------------------- kv --

async fn kv_get(st: ApiState, key: String, raw: Option<String>) -> ApiResult {
    let (p, q) = read_opts(&st, &raw)?;
    let not_found =
        |index: u64| -> Response { (StatusCode::NOT_FOUND, meta_headers(&st, index, None), "").into_response() };
    let ok = |index: u64, body: Value| -> Response {
        let mut h = meta_headers(&st, index, None);
        h.insert("content-type", HeaderValue::from_static("application/json"));
        (StatusCode::OK, h, body.to_string()).into_response()
    };
    if p.flag("keys")? {
        let sep = p.get("separator").or_else(|| p.get("seperator")).map(str::to_string);
        let (keys, index) = blocking_read(&st, &q, |s| s.kv_keys(&key, sep.as_deref())).await?;
        if keys.is_empty() && !key.is_empty() {
            return Ok(not_found(index));
        }
        return Ok(ok(index, json!(keys)));
    }
    if p.flag("recurse")? {
        let (list, index) = blocking_read(&st, &q, |s| s.kv_list(&key)).await?;
        if list.is_empty() {
            return Ok(not_found(index));
        }
        return Ok(ok(index, Value::Array(list.iter().map(views::kv_entry).collect())));
    }
    if key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    let (entry, index) = blocking_read(&st, &q, |s| s.kv_get(&key)).await?;
    let Some(entry) = entry else {
        return Ok(not_found(index));
    };
    if p.flag("raw")? {
        let mut h = meta_headers(&st, index, None);
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        return Ok((StatusCode::OK, h, entry.value).into_response());
    }
    Ok(ok(index, json!([views::kv_entry(&entry)])))
}

async fn kv_put(st: ApiState, key: String, raw: Option<String>, body: Bytes) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    check_dc(&st, &p)?;
    if key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    let flags = p.uint("flags", "flags")?.unwrap_or(0);
    let cas = p.uint("cas", "cas index")?;
    if body.len() > MAX_KV_VALUE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "Value too large: {} bytes, max size: {MAX_KV_VALUE_BYTES} bytes",
            body.len()
        )));
    }
    let (acquire, release) = (p.get("acquire"), p.get("release"));
    if let Some(session) = acquire.or(release) {
        if acquire.is_some() && release.is_some() {
            return Err(ApiError::BadRequest("Conflicting flags: ?acquire and ?release cannot be combined".into()));
        }
        if cas.is_some() {
            return Err(ApiError::BadRequest(
                "Conflicting flags: ?cas cannot be combined with ?acquire or ?release".into(),
            ));
        }
        if session.is_empty() {
            return Err(ApiError::BadRequest("Missing session ID for ?acquire or ?release".into()));
        }
        // Consul checks the lock delay before the write, on the leader; here on the agent
        // the request reached, which applied the invalidation at the same index.
        if acquire.is_some() && session::in_lock_delay(&st, &key) {
            return Ok(json_bool(false));
        }
        let cmd = Command::KvLock {
            key,
            value: body.to_vec(),
            flags,
            session: session.to_string(),
            acquire: acquire.is_some(),
        };
        let w = write(&st, cmd).await.map_err(|e| match e {
            ApiError::BadRequest(m) => ApiError::Internal(m),
            other => other,
        })?;
        return Ok(written_bool(&w));
    }
    let w = write(&st, Command::KvSet { key, value: body.to_vec(), flags, cas }).await?;
    Ok(written_bool(&w))
}

async fn kv_delete(st: ApiState, key: String, raw: Option<String>) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    check_dc(&st, &p)?;
    let recurse = p.flag("recurse")?;
    let cas = p.uint("cas", "cas index")?;
    if recurse && cas.is_some() {
        return Err(ApiError::BadRequest("Conflicting flags: ?recurse and ?cas cannot be combined".into()));
    }
    if key.is_empty() && !recurse {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    let w = write(&st, Command::KvDelete { key, recurse, cas }).await?;
    Ok(written_bool(&w))
}

async fn kv_get_key(State(st): State<ApiState>, Path(key): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    kv_get(st, key, raw).await
}
async fn kv_get_root(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    kv_get(st, String::new(), raw).await
}
async fn kv_put_key(
    State(st): State<ApiState>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult {
    kv_put(st, key, raw, body).await
}
async fn kv_put_root(State(st): State<ApiState>, RawQuery(raw): RawQuery, body: Bytes) -> ApiResult {
    kv_put(st, String::new(), raw, body).await
}
async fn kv_delete_key(State(st): State<ApiState>, Path(key): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    kv_delete(st, key, raw).await
}
async fn kv_delete_root(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    kv_delete(st, String::new(), raw).await
}

// ------------------------------------------------------------------ status --

async fn status_leader(State(st): State<ApiState>) -> ApiResult {
    let leader = st.cluster.leader_status().leader_addr.unwrap_or_default();
    Ok(([("content-type", "application/json")], json!(leader).to_string()).into_response())
}

async fn status_peers(State(st): State<ApiState>) -> ApiResult {
    Ok(([("content-type", "application/json")], json!(st.cluster.peers()).to_string()).into_response())
}

/// The catalog's own metrics plus every registered subsystem's, as Prometheus text.
fn prometheus_text(st: &ApiState) -> String {
    use std::fmt::Write;
    let snap = st.catalog.snapshot();
    let leader = st.cluster.leader_status();
    let mut out = String::new();
    let _ = writeln!(out, "# HELP wharf_raft_applied_index Last Raft log index applied to the catalog.");
    let _ = writeln!(out, "# TYPE wharf_raft_applied_index gauge\nwharf_raft_applied_index {}", snap.last_index());
    let _ = writeln!(out, "# HELP wharf_raft_known_leader 1 when a leader is known.");
    let _ = writeln!(
        out,
        "# TYPE wharf_raft_known_leader gauge\nwharf_raft_known_leader {}",
        u8::from(leader.known_leader)
    );
    let _ = writeln!(out, "# HELP wharf_catalog_services Service names in the catalog.");
    let _ =
        writeln!(out, "# TYPE wharf_catalog_services gauge\nwharf_catalog_services {}", snap.service_names().0.len());
    let _ = writeln!(out, "# HELP wharf_catalog_nodes Nodes in the catalog.");
    let _ = writeln!(out, "# TYPE wharf_catalog_nodes gauge\nwharf_catalog_nodes {}", snap.nodes().0.len());
    for render in &st.metrics {
        render(&mut out);
    }
    out
}

async fn metrics(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    match p.get("format") {
        Some("prometheus") | None => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!("Unsupported metrics format {other:?}: use format=prometheus")));
        }
    }
    Ok(([("content-type", "text/plain; version=0.0.4")], prometheus_text(&st)).into_response())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("Invalid URL path: not a recognized HTTP API endpoint".into())
}

/// The Consul-compatible API router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/agent/service/register", put(agent_service_register))
        .route("/v1/agent/service/deregister/{*id}", put(agent_service_deregister))
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/service/{*id}", get(agent_service))
        .route("/v1/agent/checks", get(agent_checks))
        .route("/v1/agent/check/register", put(agent_check_register))
        .route("/v1/agent/check/deregister/{*id}", put(agent_check_deregister))
        .route("/v1/agent/check/pass/{*id}", put(agent_check_pass))
        .route("/v1/agent/check/warn/{*id}", put(agent_check_warn))
        .route("/v1/agent/check/fail/{*id}", put(agent_check_fail))
        .route("/v1/agent/check/update/{*id}", put(agent_check_update))
        .route("/v1/agent/members", get(agent_members))
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/agent/reload", put(agent_reload))
        .route("/v1/agent/leave", put(agent_leave))
        .route("/v1/agent/join/{address}", put(agent_join))
        .route("/v1/agent/maintenance", put(agent_maintenance))
        .route("/v1/agent/service/maintenance/{id}", put(agent_service_maintenance))
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{id}", put(session::destroy))
        .route("/v1/session/renew/{id}", put(session::renew))
        .route("/v1/session/info/{id}", get(session::info))
        .route("/v1/session/node/{node}", get(session::node))
        .route("/v1/session/list", get(session::list))
        .route("/v1/txn", put(txn::txn))
        .route("/v1/agent/force-leave/{node}", put(agent_force_leave))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/catalog/nodes", get(catalog_nodes))
        .route("/v1/catalog/node/{node}", get(catalog_node))
        .route("/v1/catalog/datacenters", get(catalog_datacenters))
        .route("/v1/catalog/register", put(catalog_register))
        .route("/v1/catalog/deregister", put(catalog_deregister))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/health/checks/{name}", get(health_checks))
        .route("/v1/health/state/{state}", get(health_state))
        .route("/v1/health/node/{node}", get(health_node))
        .route("/v1/kv/", get(kv_get_root).put(kv_put_root).delete(kv_delete_root))
        .route("/v1/kv/{*key}", get(kv_get_key).put(kv_put_key).delete(kv_delete_key))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .route("/v1/agent/metrics", get(metrics))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_KV_VALUE_BYTES * 2))
        .with_state(state)
}
