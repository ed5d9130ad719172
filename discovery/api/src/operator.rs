//! `/v1/operator/raft/*`: the Raft configuration and removing a server from it, as
//! `consul operator raft list-peers | remove-peer` use them.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use serde_json::{Value, json};

use crate::ApiState;
use crate::error::ApiError;
use crate::query::Params;
use crate::respond::*;
use catalog::RaftPeer;
use catalog::state::CatalogState;

/// The catalog node of a Raft member (its node meta names its Raft address).
fn node_of<'a>(s: &'a CatalogState, address: &str) -> Option<&'a catalog::model::Node> {
    s.nodes_with_meta("wharf-raft-addr", address).into_iter().next()
}

fn server_view(s: &CatalogState, p: &RaftPeer) -> Value {
    let node = node_of(s, &p.address);
    json!({
        "ID": node.map(|n| n.id.clone()).unwrap_or_else(|| p.id.to_string()),
        "Node": node.map(|n| n.node.clone()).unwrap_or_default(),
        "Address": p.address,
        "Leader": p.leader,
        "Voter": p.voter,
        "ProtocolVersion": "3",
    })
}

pub(crate) async fn configuration(State(st): State<ApiState>) -> ApiResult {
    let snap = st.catalog.snapshot();
    let mut peers = st.cluster.raft_peers();
    peers.sort_by(|a, b| (!a.voter, &a.address).cmp(&(!b.voter, &b.address)));
    let servers: Vec<Value> = peers.iter().map(|p| server_view(&snap, p)).collect();
    let body = json!({ "Servers": servers, "Index": snap.last_index() });
    Ok(([("content-type", "application/json")], body.to_string()).into_response())
}

/// `DELETE /v1/operator/raft/peer?id=ID` or `?address=IP:PORT`.
pub(crate) async fn remove_peer(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    let peers = st.cluster.raft_peers();
    let snap = st.catalog.snapshot();
    let found = match (p.get("id"), p.get("address")) {
        (Some(id), _) if !id.is_empty() => peers.iter().find(|peer| {
            peer.id.to_string() == id || node_of(&snap, &peer.address).is_some_and(|n| n.id.eq_ignore_ascii_case(id))
        }),
        (_, Some(addr)) if !addr.is_empty() => peers.iter().find(|peer| peer.address == addr),
        _ => {
            return Err(ApiError::BadRequest(
                "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove".into(),
            ));
        }
    };
    let Some(peer) = found else {
        let what = p.get("id").or(p.get("address")).unwrap_or_default();
        return Err(ApiError::NotFound(format!("{what:?} was not found in the Raft configuration")));
    };
    st.cluster.remove_peer(peer.id).await?;
    Ok(empty_ok())
}

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/operator/raft/configuration", get(configuration))
        .route("/v1/operator/raft/peer", delete(remove_peer))
}
