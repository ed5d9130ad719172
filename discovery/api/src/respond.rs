//! What every endpoint family shares: blocking reads, the `X-Consul-*` headers and JSON
//! answers, datacenter and query-option checks, replicated writes and check-output limits.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;
use crate::query::{Params, QueryOptions};
use catalog::Written;
use catalog::command::{Command, Outcome};
use catalog::state::CatalogState;

use crate::ApiState;

/// Refuses checks this agent will not run.
pub(crate) fn check_allowed(st: &ApiState, checks: &[catalog::model::HealthCheck]) -> Result<(), ApiError> {
    st.local.admit(checks).map_err(ApiError::BadRequest)
}

pub(crate) type ApiResult = Result<Response, ApiError>;

/// Evaluates `f` on the committed state, blocking per Consul's rules when `?index` is set.
pub(crate) async fn blocking_read<T>(
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

pub(crate) fn meta_headers(st: &ApiState, index: u64, consistency: Option<&str>) -> HeaderMap {
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

pub(crate) fn json_response(st: &ApiState, index: u64, q: &QueryOptions, body: Value) -> Response {
    let mut headers = meta_headers(st, index, Some(q.consistency()));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, body.to_string()).into_response()
}

pub(crate) fn empty_ok() -> Response {
    StatusCode::OK.into_response()
}

pub(crate) fn json_bool(b: bool) -> Response {
    ([("content-type", "application/json")], if b { "true" } else { "false" }).into_response()
}

/// A write's answer, carrying the Raft index it was committed at (a wharf extension:
/// Consul sends no index on writes; clients that do not look for it are unaffected).
pub(crate) fn written_bool(w: &Written) -> Response {
    let mut r = json_bool(w.outcome == Outcome::Applied);
    r.headers_mut().insert("x-consul-index", HeaderValue::from(w.index));
    r
}

pub(crate) fn check_dc(st: &ApiState, p: &Params) -> Result<(), ApiError> {
    match p.get("dc") {
        Some(dc) if !dc.is_empty() && dc != st.agent.datacenter => {
            Err(ApiError::Internal(format!("No path to datacenter {dc:?}")))
        }
        _ => Ok(()),
    }
}

pub(crate) fn read_opts(st: &ApiState, raw: &Option<String>) -> Result<(Params, QueryOptions), ApiError> {
    let p = Params::parse(raw.as_deref());
    check_dc(st, &p)?;
    let q = QueryOptions::from_params(&p)?;
    Ok((p, q))
}

pub(crate) async fn write(st: &ApiState, cmd: Command) -> Result<Written, ApiError> {
    let w = st.cluster.write(cmd).await?;
    if let Outcome::Rejected(msg) = &w.outcome {
        return Err(ApiError::BadRequest(msg.clone()));
    }
    Ok(w)
}

pub(crate) use catalog::model::truncate_output;
