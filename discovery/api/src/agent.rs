//! `/v1/agent/*`: the local agent's services and checks (register, deregister, TTL
//! updates, maintenance), its members, self, reload, join, leave and force-leave.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::query::Params;
use catalog::command::Command;
use catalog::decode::{CheckRegistration, ServiceRegistration, decode_body};
use catalog::model::CheckStatus;

use crate::respond::*;
use crate::{AgentControl, ApiState, MemberRecord, views};

pub(crate) async fn agent_service_register(
    State(st): State<ApiState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult {
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

pub(crate) async fn agent_service_deregister(State(st): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    if st.catalog.snapshot().service(&st.agent.node_name, &id).is_none() {
        return Err(ApiError::NotFound(format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        )));
    }
    write(&st, Command::DeregisterService { node: st.agent.node_name.clone(), service_id: id }).await?;
    Ok(empty_ok())
}

pub(crate) async fn agent_services(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
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

pub(crate) async fn agent_service(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
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

pub(crate) async fn agent_checks(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
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

pub(crate) async fn agent_check_register(State(st): State<ApiState>, body: Bytes) -> ApiResult {
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

pub(crate) fn unknown_check(id: &str) -> ApiError {
    ApiError::NotFound(format!("Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."))
}

pub(crate) async fn agent_check_deregister(State(st): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    if st.catalog.snapshot().check(&st.agent.node_name, &id).is_none() {
        return Err(unknown_check(&id));
    }
    write(&st, Command::DeregisterCheck { node: st.agent.node_name.clone(), check_id: id }).await?;
    Ok(empty_ok())
}

pub(crate) async fn set_ttl_status(st: &ApiState, id: String, status: CheckStatus, output: String) -> ApiResult {
    let snap = st.catalog.snapshot();
    let Some(check) = snap.check(&st.agent.node_name, &id) else {
        return Err(unknown_check(&id));
    };
    if check.kind != catalog::model::CheckKind::Ttl {
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

pub(crate) async fn agent_check_status(
    st: ApiState,
    id: String,
    raw: Option<String>,
    status: CheckStatus,
) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    let note = p.get("note").unwrap_or_default().to_string();
    set_ttl_status(&st, id, status, note).await
}

pub(crate) async fn agent_check_pass(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    agent_check_status(st, id, raw, CheckStatus::Passing).await
}

pub(crate) async fn agent_check_warn(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    agent_check_status(st, id, raw, CheckStatus::Warning).await
}

pub(crate) async fn agent_check_fail(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    agent_check_status(st, id, raw, CheckStatus::Critical).await
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct CheckUpdate {
    status: String,
    output: String,
}

pub(crate) async fn agent_check_update(State(st): State<ApiState>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let upd: CheckUpdate = decode_body(&body).map_err(ApiError::BadRequest)?;
    let status = CheckStatus::parse(&upd.status)
        .ok_or_else(|| ApiError::BadRequest(format!("Invalid check status: '{}'", upd.status)))?;
    set_ttl_status(&st, id, status, upd.output).await
}

pub(crate) fn member_view(m: &MemberRecord) -> Value {
    json!({
        "Name": m.name,
        "Addr": m.addr,
        "Port": m.port,
        "Tags": {
            "role": if m.server { "consul" } else { "node" },
            "dc": m.datacenter,
            "id": m.id,
            "build": m.build,
            "port": m.raft_port.to_string(),
            "segment": "",
            "vsn": "2",
        },
        "Status": m.status,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

/// The gossip pool's members (Consul's Serf view: alive, failed and left members, not the
/// catalog's nodes).
pub(crate) async fn agent_members(State(st): State<ApiState>) -> ApiResult {
    let list: Vec<Value> = st.members.members().iter().map(member_view).collect();
    Ok(([("content-type", "application/json")], Value::Array(list).to_string()).into_response())
}

pub(crate) async fn agent_self(State(st): State<ApiState>) -> ApiResult {
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
        "Member": st.members.members().iter().find(|m| m.name == a.node_name).map(member_view),
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

pub(crate) async fn agent_reload(State(st): State<ApiState>) -> ApiResult {
    let (tx, rx) = oneshot::channel();
    st.control.send(AgentControl::Reload(tx)).await.map_err(|_| ApiError::Internal("agent is shutting down".into()))?;
    match rx.await {
        Ok(Ok(_)) => Ok(empty_ok()),
        Ok(Err(e)) => Err(ApiError::Internal(format!("reload failed: {e}"))),
        Err(_) => Err(ApiError::Internal("agent is shutting down".into())),
    }
}

pub(crate) async fn agent_join(State(st): State<ApiState>, Path(address): Path<String>) -> ApiResult {
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

/// Consul's force-leave: a failed member moves to left on every member, and its node and
/// everything registered on it leave the catalog. A node registered only in the catalog
/// (`/v1/catalog/register`) is deregistered.
pub(crate) async fn agent_force_leave(State(st): State<ApiState>, Path(node): Path<String>) -> ApiResult {
    let in_catalog = st.catalog.snapshot().node(&node).is_some();
    match st.members.force_leave(&node).await {
        Ok(()) => {}
        Err(Some(why)) => return Err(ApiError::BadRequest(format!("cannot force-leave {node:?}: {why}"))),
        Err(None) if !in_catalog => {
            return Err(ApiError::NotFound(format!("Unknown node {node:?}: no member has that name")));
        }
        Err(None) => {}
    }
    if in_catalog {
        st.cluster.write(Command::DeregisterNode { node }).await?;
    }
    Ok(empty_ok())
}

/// `?enable=` of the maintenance endpoints.
pub(crate) fn maintenance_flag(p: &Params) -> Result<bool, ApiError> {
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
pub(crate) fn maintenance_check(
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

pub(crate) async fn set_maintenance(
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
pub(crate) async fn agent_maintenance(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    let enable = maintenance_flag(&p)?;
    set_maintenance(&st, None, enable, p.get("reason").unwrap_or_default()).await
}

/// `PUT /v1/agent/service/maintenance/:id?enable=&reason=`: one instance leaves.
pub(crate) async fn agent_service_maintenance(
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

pub(crate) async fn agent_leave(State(st): State<ApiState>) -> ApiResult {
    let (tx, rx) = oneshot::channel();
    st.control.send(AgentControl::Leave(tx)).await.map_err(|_| ApiError::Internal("agent is shutting down".into()))?;
    let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
    Ok(empty_ok())
}

/// The `agent` endpoints' routes.
pub(crate) fn routes() -> Router<ApiState> {
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
        .route("/v1/agent/force-leave/{node}", put(agent_force_leave))
}
