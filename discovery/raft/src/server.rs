//! The server half of the Raft transport: the Raft port's router, answering append, vote
//! and snapshot RPCs, forwarded writes, linearizable-read requests, joins and introductions
//! from other servers. Every route requires the cluster key.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, extract::Request};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use crate::node::RaftNode;
use crate::types::{NodeId, TypeConfig};
use crate::wire::{ForwardedWrite, ForwardedWriteResult, JoinRequest, KEY_HEADER, PeerInfo};

/// Compares in time independent of where the first difference is.
fn keys_match(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn require_key(State(node): State<Arc<RaftNode>>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let given = headers.get(KEY_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !keys_match(given, node.cluster_key().as_bytes()) {
        return (
            StatusCode::FORBIDDEN,
            "cluster key missing or wrong: every server and agent must use the same --cluster-key",
        )
            .into_response();
    }
    next.run(req).await
}

async fn append(
    State(node): State<Arc<RaftNode>>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    node.note_leader_contact();
    Json(node.raft().append_entries(req).await)
}

async fn vote(
    State(node): State<Arc<RaftNode>>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(node.raft().vote(req).await)
}

async fn snapshot(
    State(node): State<Arc<RaftNode>>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    node.note_leader_contact();
    Json(node.raft().install_snapshot(req).await)
}

async fn forwarded_write(State(node): State<Arc<RaftNode>>, Json(req): Json<ForwardedWrite>) -> Response {
    match node.write_local(req.command).await {
        Ok(w) => Json(ForwardedWriteResult { index: w.index, outcome: w.outcome }).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn read_index(State(node): State<Arc<RaftNode>>) -> Response {
    match node.local_read_index().await {
        Ok(index) => Json(index).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn join(State(node): State<Arc<RaftNode>>, Json(req): Json<JoinRequest>) -> Response {
    match node.accept_join(req).await {
        Ok(()) => Json(true).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// A server removal forwarded by a follower (`remove-peer`, a server's leave).
async fn remove_peer(State(node): State<Arc<RaftNode>>, Json(id): Json<u64>) -> Response {
    match node.remove_peer_here(id).await {
        Ok(()) => Json(true).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn info(State(node): State<Arc<RaftNode>>) -> Json<PeerInfo> {
    Json(node.peer_info().await)
}

/// A peer that is bootstrapping or joining introduces itself, so a server waiting for
/// `bootstrap_expect` servers learns of the ones that were told to join it.
async fn hello(State(node): State<Arc<RaftNode>>, Json(from): Json<PeerInfo>) -> Json<PeerInfo> {
    node.heard_from(from);
    Json(node.peer_info().await)
}

/// The Raft port's router. Every route requires the cluster key.
pub fn router(node: Arc<RaftNode>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/write", post(forwarded_write))
        .route("/raft/read-index", post(read_index))
        .route("/raft/join", post(join))
        .route("/raft/remove-peer", post(remove_peer))
        .route("/raft/hello", post(hello))
        .route("/raft/info", get(info))
        .layer(middleware::from_fn_with_state(node.clone(), require_key))
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(node)
}

#[cfg(test)]
mod tests {
    use super::keys_match;

    #[test]
    fn key_comparison() {
        assert!(keys_match(b"secret", b"secret"));
        assert!(!keys_match(b"secreT", b"secret"));
        assert!(!keys_match(b"", b"secret"));
    }
}
