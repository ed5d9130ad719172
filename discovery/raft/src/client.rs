//! The client half of the Raft transport: JSON over HTTP to other servers' Raft port
//! (default 8300), every request carrying the cluster key. [`PeerClient`] sends forwarded
//! writes, joins and introductions; [`Network`] implements openraft's network traits on it.

use std::sync::Arc;
use std::time::Duration;

use openraft::AnyError;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{Node, NodeId, TypeConfig};
use crate::wire::KEY_HEADER;

/// HTTP client side shared by Raft RPCs and forwarding.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    key: Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {addr} unreachable: {error}")]
    Unreachable {
        addr: String,
        #[source]
        error: reqwest::Error,
    },
    #[error("peer {addr} answered {status}: {body}")]
    Status { addr: String, status: u16, body: String },
    #[error("peer {addr} sent an unreadable answer: {error}")]
    Decode {
        addr: String,
        #[source]
        error: serde_json::Error,
    },
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
            .map_err(|e| PeerError::Unreachable { addr: addr.to_string(), error: e })?;
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
            .map_err(|e| PeerError::Unreachable { addr: addr.to_string(), error: e })?;
        Self::decode(addr, resp).await
    }

    async fn decode<Resp: DeserializeOwned>(addr: &str, resp: reqwest::Response) -> Result<Resp, PeerError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| PeerError::Unreachable { addr: addr.to_string(), error: e })?;
        if !status.is_success() {
            return Err(PeerError::Status {
                addr: addr.to_string(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).trim().to_string(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| PeerError::Decode { addr: addr.to_string(), error: e })
    }
}

/// The most bytes (estimated) one AppendEntries carries when it holds more than one entry:
/// openraft gives an append one heartbeat interval, and a follower must receive, decode and
/// fsync it in that time, or replication retries the same append for ever.
pub const MAX_APPEND_BYTES: usize = 1024 * 1024;

/// How many of `entries`, from the first, fit in `limit` bytes (at least one).
fn entries_within(entries: &[openraft::Entry<TypeConfig>], limit: usize) -> usize {
    let mut total = 0;
    for (i, e) in entries.iter().enumerate() {
        total += match &e.payload {
            openraft::EntryPayload::Normal(cmd) => cmd.approx_bytes(),
            _ => 256,
        };
        if total > limit {
            return i.max(1);
        }
    }
    entries.len()
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
    /// One RPC. `entries`: how many log entries it carries, so that a body over the peer's
    /// limit (413) makes openraft retry with half as many (down to one).
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
        entries: Option<u64>,
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
            Err(PeerError::Status { status: 413, .. }) if entries.is_some_and(|n| n > 1) => {
                let n = entries.unwrap_or(2);
                tracing::info!(peer = %self.addr, entries = n, "append over the peer's size limit; splitting it");
                Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(n / 2)))
            }
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
        let fit = entries_within(&rpc.entries, MAX_APPEND_BYTES);
        if fit < rpc.entries.len() {
            // openraft resends the first `fit` entries, and the rest in later appends.
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit as u64)));
        }
        let entries = rpc.entries.len() as u64;
        self.call("/raft/append", &rpc, &option, Some(entries)).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        self.call("/raft/snapshot", &rpc, &option, None).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call("/raft/vote", &rpc, &option, None).await
    }
}
