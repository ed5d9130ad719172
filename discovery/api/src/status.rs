//! `/v1/status/*` and metrics: the leader, the Raft peers, and Prometheus text for the
//! catalog and every subsystem that registered a renderer.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::error::ApiError;
use crate::query::Params;

use crate::ApiState;
use crate::respond::*;

pub(crate) async fn status_leader(State(st): State<ApiState>) -> ApiResult {
    let leader = st.cluster.leader_status().leader_addr.unwrap_or_default();
    Ok(([("content-type", "application/json")], json!(leader).to_string()).into_response())
}

pub(crate) async fn status_peers(State(st): State<ApiState>) -> ApiResult {
    Ok(([("content-type", "application/json")], json!(st.cluster.peers()).to_string()).into_response())
}

/// The catalog's own metrics plus every registered subsystem's, as Prometheus text.
pub(crate) fn prometheus_text(st: &ApiState) -> String {
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

pub(crate) async fn metrics(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    match p.get("format") {
        Some("prometheus") | None => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!("Unsupported metrics format {other:?}: use format=prometheus")));
        }
    }
    Ok(([("content-type", "text/plain; version=0.0.4")], prometheus_text(&st)).into_response())
}

/// The `status` endpoints' routes.
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .route("/v1/agent/metrics", get(metrics))
        .route("/metrics", get(metrics))
}
