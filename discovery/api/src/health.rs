//! `/v1/health/*`: services with their checks, checks by service, node and state.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use serde_json::Value;

use crate::error::ApiError;
use catalog::model::CheckStatus;

use crate::respond::*;
use crate::{ApiState, views};

pub(crate) async fn health_service(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let (p, q) = read_opts(&st, &raw)?;
    let tags = p.all("tag");
    let passing = p.flag("passing")?;
    let (list, index) = blocking_read(&st, &q, |s| s.service_health(&name, &tags, passing)).await?;
    Ok(json_response(&st, index, &q, Value::Array(list.iter().map(views::health_entry).collect())))
}

pub(crate) async fn health_checks(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (list, index) = blocking_read(&st, &q, |s| s.service_checks(&name)).await?;
    Ok(json_response(&st, index, &q, views::checks(&list)))
}

pub(crate) async fn health_state(
    State(st): State<ApiState>,
    Path(state): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
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

pub(crate) async fn health_node(
    State(st): State<ApiState>,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (list, index) = blocking_read(&st, &q, |s| s.node_checks(&node)).await?;
    Ok(json_response(&st, index, &q, views::checks(&list)))
}

/// The `health` endpoints' routes.
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/health/checks/{name}", get(health_checks))
        .route("/v1/health/state/{state}", get(health_state))
        .route("/v1/health/node/{node}", get(health_node))
}
