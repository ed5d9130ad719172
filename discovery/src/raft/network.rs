//! The Raft transport: JSON over HTTP on the Raft port (default 8300), every request
//! carrying the cluster key. The client half implements openraft's network traits; the
//! server half (`router`) answers append/vote/snapshot, forwarded writes, linearizable-read
//! requests and joins from other servers.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, extract::Request};
use openraft::AnyError;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::command::{Command, Outcome};
use crate::raft::node::RaftNode;
use crate::raft::types::{Node, NodeId, TypeConfig};

/// The header carrying the cluster key.
pub const KEY_HEADER: &str = "x-wharf-cluster-key";

/// A forwarded write, answered by the leader.
#[derive(Serialize, Deserialize)]
pub struct ForwardedWrite {
    pub command: Command,
}

#[derive(Serialize, Deserialize)]
pub struct ForwardedWriteResult {
    pub index: u64,
    pub outcome: Outcome,
}

/// A server asking to join the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: NodeId,
    pub raft_addr: String,
    /// Voters take part in elections; learners (client agents) only replicate.
    pub voter: bool,
}

/// What a node tells a peer during bootstrap (`/raft/info`, and both ways on `/raft/hello`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerInfo {
    pub node_id: NodeId,
    pub raft_addr: String,
    pub initialized: bool,
    pub leader_addr: Option<String>,
    /// A server (a Raft voter once joined).
    #[serde(default)]
    pub voter: bool,
    /// The servers it waits for before bootstrapping; 0 = it only joins.
    #[serde(default)]
    pub bootstrap_expect: usize,
}

/// HTTP client side shared by Raft RPCs and forwarding.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    key: Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("peer {addr} answered {status}: {body}")]
    Status { addr: String, status: u16, body: String },
    #[error("peer {addr} sent an unreadable answer: {reason}")]
    Decode { addr: String, reason: String },
}

impl PeerClient {
    pub fn new(key: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        PeerClient { http, key: Arc::from(key) }
    }

    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let url = format!("http://{addr}{path}");
        let resp = self
            .http
            .post(&url)
            .header(KEY_HEADER, &*self.key)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| PeerError::Unreachable { addr: addr.to_string(), reason: e.to_string() })?;
        Self::decode(addr, resp).await
    }

    pub async fn get<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let resp = self
            .http
            .get(format!("http://{addr}{path}"))
            .header(KEY_HEADER, &*self.key)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| PeerError::Unreachable { addr: addr.to_string(), reason: e.to_string() })?;
        Self::decode(addr, resp).await
    }

    async fn decode<Resp: DeserializeOwned>(addr: &str, resp: reqwest::Response) -> Result<Resp, PeerError> {
        let status = resp.status();
        let bytes =
            resp.bytes().await.map_err(|e| PeerError::Unreachable { addr: addr.to_string(), reason: e.to_string() })?;
        if !status.is_success() {
            return Err(PeerError::Status {
                addr: addr.to_string(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).trim().to_string(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| PeerError::Decode { addr: addr.to_string(), reason: e.to_string() })
    }
}

/// openraft's network factory: one [`PeerConnection`] per target.
#[derive(Clone)]
pub struct Network {
    pub client: PeerClient,
}

pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        PeerConnection { client: self.client.clone(), target, addr: node.addr.clone() }
    }
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Result<Resp, RaftError<NodeId, E>>, PeerError> =
            self.client.post(&self.addr, path, req, option.hard_ttl()).await;
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(e @ PeerError::Unreachable { .. }) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::from(AnyError::error(e.to_string())))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        self.call("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call("/raft/vote", &rpc, &option).await
    }
}

// ------------------------------------------------------------------ server --

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
