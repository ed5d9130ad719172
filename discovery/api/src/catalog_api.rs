//! `/v1/catalog/*`: the cluster-wide registry of nodes and services, read with blocking
//! queries and written through the leader.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use serde_json::{Value, json};

use crate::error::ApiError;
use catalog::command::Command;
use catalog::decode::{CatalogDeregistration, CatalogRegistration, decode_body};

use crate::respond::*;
use crate::{ApiState, views};

pub(crate) async fn catalog_services(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (names, index) = blocking_read(&st, &q, |s| s.service_names()).await?;
    Ok(json_response(&st, index, &q, json!(names)))
}

pub(crate) async fn catalog_service(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let (p, q) = read_opts(&st, &raw)?;
    let tags = p.all("tag");
    let (list, index) = blocking_read(&st, &q, |s| s.service_instances(&name, &tags)).await?;
    let body = Value::Array(list.iter().map(|(n, svc)| views::catalog_service(n, svc)).collect());
    Ok(json_response(&st, index, &q, body))
}

pub(crate) async fn catalog_nodes(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (nodes, index) = blocking_read(&st, &q, |s| s.nodes()).await?;
    Ok(json_response(&st, index, &q, Value::Array(nodes.iter().map(views::node).collect())))
}

pub(crate) async fn catalog_node(
    State(st): State<ApiState>,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
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

pub(crate) async fn catalog_datacenters(State(st): State<ApiState>) -> ApiResult {
    Ok(([("content-type", "application/json")], json!([st.agent.datacenter]).to_string()).into_response())
}

pub(crate) async fn catalog_register(State(st): State<ApiState>, body: Bytes) -> ApiResult {
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

pub(crate) async fn catalog_deregister(State(st): State<ApiState>, body: Bytes) -> ApiResult {
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

/// The `catalog` endpoints' routes.
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/catalog/nodes", get(catalog_nodes))
        .route("/v1/catalog/node/{node}", get(catalog_node))
        .route("/v1/catalog/datacenters", get(catalog_datacenters))
        .route("/v1/catalog/register", put(catalog_register))
        .route("/v1/catalog/deregister", put(catalog_deregister))
}
