//! The Raft node: opens storage, starts openraft, bootstraps or joins the cluster, and
//! implements [`Cluster`] for the API: writes go to the local Raft if it leads, otherwise
//! they are forwarded to the leader over the Raft port; a write answers once it is applied
//! locally too, so a client reads its own writes from the agent it wrote to.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot};

use crate::client::{Network, PeerClient};
use crate::commit::{Proposal, ProposeResult};
use crate::store;
use crate::types::{Node, NodeId, Raft};
use crate::wire::{ForwardedWrite, ForwardedWriteResult, JoinRequest, PeerInfo};
use catalog::command::Command;
use catalog::{Catalog, Cluster, ClusterError, LeaderStatus, Written};

/// How this node takes part in Raft.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub node_id: NodeId,
    /// The address other servers reach this node's Raft port at (`host:port`).
    pub raft_addr: String,
    pub data_dir: PathBuf,
    pub cluster_key: String,
    /// Servers expected before the cluster bootstraps; 0 means "join an existing one".
    pub bootstrap_expect: usize,
    /// Raft addresses of servers to contact for bootstrap or join.
    pub retry_join: Vec<String>,
    /// Servers vote; client agents join as learners.
    pub voter: bool,
    /// Log entries between snapshots.
    pub snapshot_threshold: u64,
    /// This node's gossip address, told to peers that ask (`/raft/info`).
    pub gossip_addr: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open Raft storage in {dir}: {error}")]
    Storage {
        dir: String,
        #[source]
        error: Box<crate::types::StorageError>,
    },
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("Raft failed to start: {0}")]
    Raft(String),
}

/// How long a write may wait to be committed. A leader cut off from the majority never
/// commits; its clients get a clear error instead of waiting for ever.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RaftNode {
    pub(crate) raft: Raft,
    proposals: mpsc::UnboundedSender<Proposal>,
    pub(crate) settings: RaftSettings,
    pub(crate) client: PeerClient,
    catalog: Catalog,
    last_leader_contact: Mutex<Option<Instant>>,
    /// Peers that introduced themselves while this node was not yet in a cluster, and when.
    heard: Mutex<BTreeMap<NodeId, (PeerInfo, Instant)>>,
    /// Join targets added at run time (`wharf join`), beside `settings.retry_join`.
    extra_joins: Mutex<Vec<String>>,
}

/// How long an introduction counts towards `bootstrap_expect`.
const HEARD_FRESH: Duration = Duration::from_secs(10);

/// How long a forwarded write may take before the client is told.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

impl RaftNode {
    /// Opens storage in `settings.data_dir` and starts Raft. Returns the node and the
    /// read handle on the catalog it replicates.
    pub async fn start(settings: RaftSettings) -> Result<(Arc<RaftNode>, Catalog), StartError> {
        let raft_dir = settings.data_dir.join("raft");
        let (log_store, sm) = store::open(&raft_dir)
            .map_err(|error| StartError::Storage { dir: raft_dir.display().to_string(), error: Box::new(error) })?;
        let catalog = Catalog::new(sm.subscribe());
        let config = Config {
            cluster_name: "wharf".into(),
            // openraft times every AppendEntries out after one heartbeat interval, and
            // heartbeats travel behind appends: appends are cut to about 1 MiB
            // (client::MAX_APPEND_BYTES), which fits well within it, and a follower waits
            // several intervals before it calls an election. openraft's leader lease is
            // election_timeout_max: a narrow window keeps the first election from being refused.
            heartbeat_interval: 400,
            election_timeout_min: 1500,
            election_timeout_max: 2000,
            max_payload_entries: 64,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_threshold.max(1)),
            // A follower further behind than this catches up by snapshot (entries may be
            // up to 1 MiB each: the log kept after a snapshot stays small).
            max_in_snapshot_log_to_keep: 128,
            purge_batch_size: 32,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let client = PeerClient::new(&settings.cluster_key);
        let network = Network { client: client.clone() };
        let raft = Raft::new(settings.node_id, Arc::new(config), network, log_store, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let (proposals, rx) = mpsc::unbounded_channel();
        tokio::spawn(crate::commit::group_commit(raft.clone(), rx));
        let node = Arc::new(RaftNode {
            raft,
            proposals,
            settings,
            client,
            catalog: catalog.clone(),
            last_leader_contact: Mutex::new(None),
            heard: Mutex::new(BTreeMap::new()),
            extra_joins: Mutex::new(Vec::new()),
        });
        Ok((node, catalog))
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn cluster_key(&self) -> &str {
        &self.settings.cluster_key
    }

    pub fn raft_addr(&self) -> &str {
        &self.settings.raft_addr
    }

    /// Called by the Raft server on every append/snapshot from the leader.
    pub fn note_leader_contact(&self) {
        if let Ok(mut t) = self.last_leader_contact.lock() {
            *t = Some(Instant::now());
        }
    }

    pub(crate) fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
    }

    pub(crate) fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.settings.node_id) && m.state == ServerState::Leader
    }

    /// Proposes on this node through the group-commit loop; if it is not the leader, says
    /// where the leader is.
    async fn propose(&self, cmd: Command) -> ProposeResult {
        let (tx, mut rx) = oneshot::channel();
        self.proposals.send((cmd, tx)).map_err(|_| ClusterError::Raft("raft node is shutting down".into()))?;
        // A write may wait behind others as long as commits go on; a leader that commits
        // nothing for COMMIT_TIMEOUT (cut off from the majority) gives up.
        let mut last = self.raft.metrics().borrow().last_applied.map(|l| l.index);
        loop {
            match tokio::time::timeout(COMMIT_TIMEOUT, &mut rx).await {
                Ok(answer) => return answer.map_err(|_| ClusterError::Raft("raft node is shutting down".into()))?,
                Err(_) => {
                    let now = self.raft.metrics().borrow().last_applied.map(|l| l.index);
                    if now == last {
                        return Err(ClusterError::NoLeader(format!(
                            "nothing was committed for {}s: this server cannot reach a majority of the servers \
                             (the write may still be applied if the cluster recovers)",
                            COMMIT_TIMEOUT.as_secs()
                        )));
                    }
                    last = now;
                }
            }
        }
    }

    /// A write from another server's forwarding: only the leader answers it.
    pub async fn write_local(&self, cmd: Command) -> Result<Written, ClusterError> {
        match self.propose(cmd).await? {
            Ok(w) => Ok(w),
            Err(leader) => Err(ClusterError::NoLeader(match leader {
                Some(l) => format!("this server is not the leader any more (leader is {l})"),
                None => "this server is not the leader and knows none".to_string(),
            })),
        }
    }

    /// The leader's answer to "up to which index must I apply for a linearizable read".
    pub async fn local_read_index(&self) -> Result<u64, ClusterError> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(ClusterError::NoLeader("this server is not the leader".into()))
            }
            Err(e) => Err(ClusterError::Raft(e.to_string())),
        }
    }

    /// Adds a server (voter) or client agent (learner) to the cluster; forwarded to the
    /// leader when this node does not lead.
    pub async fn accept_join(&self, req: JoinRequest) -> Result<(), ClusterError> {
        if !self.is_leader() {
            let leader =
                self.leader_addr().ok_or_else(|| ClusterError::NoLeader("no leader to join through".into()))?;
            if leader == self.settings.raft_addr {
                return Err(ClusterError::NoLeader("leadership is changing".into()));
            }
            return self
                .client
                .post::<_, bool>(&leader, "/raft/join", &req, FORWARD_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|e| ClusterError::Forward { leader, reason: e.to_string() });
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let known = membership.get_node(&req.node_id).map(|n| n.addr.clone());
        let is_voter = membership.voter_ids().any(|v| v == req.node_id);
        if known.as_deref() != Some(req.raft_addr.as_str()) {
            self.raft
                .add_learner(req.node_id, Node::new(req.raft_addr.clone()), true)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        if req.voter && !is_voter {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.node_id])), true)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        tracing::info!(node_id = req.node_id, addr = %req.raft_addr, voter = req.voter, "member joined");
        Ok(())
    }

    pub async fn peer_info(&self) -> PeerInfo {
        PeerInfo {
            node_id: self.settings.node_id,
            raft_addr: self.settings.raft_addr.clone(),
            initialized: self.raft.is_initialized().await.unwrap_or(false),
            leader_addr: self.leader_addr(),
            voter: self.settings.voter,
            bootstrap_expect: self.settings.bootstrap_expect,
            gossip_addr: self.settings.gossip_addr.clone(),
        }
    }

    /// Asks the node at `raft_addr` (`host:port`) who it is.
    pub async fn ask_info(&self, raft_addr: &str) -> Result<PeerInfo, String> {
        self.client.get::<PeerInfo>(raft_addr, "/raft/info", Duration::from_secs(2)).await.map_err(|e| e.to_string())
    }

    /// Where this node looks for its cluster: the join addresses and every Raft member.
    pub fn contact_addrs(&self) -> Vec<String> {
        let mut out = self.settings.retry_join.clone();
        out.extend(self.extra_joins.lock().map(|j| j.clone()).unwrap_or_default());
        out.extend(self.member_addrs());
        out.retain(|a| *a != self.settings.raft_addr);
        out.sort();
        out.dedup();
        out
    }

    /// Raft addresses of every member, voters and learners.
    pub fn member_addrs(&self) -> Vec<String> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.membership_config.membership().nodes().map(|(_, n)| n.addr.clone()).collect()
    }

    /// The leader's Raft address, when one is known.
    pub fn current_leader_addr(&self) -> Option<String> {
        self.leader_addr()
    }

    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Records a peer's introduction (see `/raft/hello`).
    pub fn heard_from(&self, from: PeerInfo) {
        if from.node_id == self.settings.node_id {
            return;
        }
        if let Ok(mut heard) = self.heard.lock() {
            heard.retain(|_, (_, at)| at.elapsed() < HEARD_FRESH);
            heard.insert(from.node_id, (from, Instant::now()));
        }
    }

    /// Adds a join target at run time; the bootstrap loop contacts it from now on.
    pub fn add_join_target(&self, addr: String) {
        if let Ok(mut extra) = self.extra_joins.lock()
            && !extra.contains(&addr)
        {
            extra.push(addr);
        }
    }

    fn join_targets(&self) -> Vec<String> {
        let mut all = self.settings.retry_join.clone();
        if let Ok(extra) = self.extra_joins.lock() {
            all.extend(extra.iter().filter(|a| !self.settings.retry_join.contains(a)).cloned());
        }
        all.retain(|a| *a != self.settings.raft_addr);
        all
    }

    /// Bootstraps a new cluster or joins an existing one, as configured. Runs until this
    /// node is part of an initialized cluster; retries with a pause on every failure.
    pub async fn bootstrap_or_join(self: Arc<Self>) {
        let me = Node::new(self.settings.raft_addr.clone());
        loop {
            if self.raft.is_initialized().await.unwrap_or(false) {
                return;
            }
            match self.try_bootstrap(&me).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!("cluster bootstrap/join: {e}; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn try_bootstrap(&self, me: &Node) -> Result<bool, String> {
        let s = &self.settings;
        if s.bootstrap_expect == 1 {
            let members = BTreeMap::from([(s.node_id, me.clone())]);
            return match self.raft.initialize(members).await {
                Ok(()) => Ok(true),
                Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(true),
                Err(e) => Err(e.to_string()),
            };
        }
        // Introduce this node to every join target and learn who they are; add the peers
        // that introduced themselves here.
        let mine = self.peer_info().await;
        let mut peers = vec![mine.clone()];
        for addr in self.join_targets() {
            match self.client.post::<_, PeerInfo>(&addr, "/raft/hello", &mine, Duration::from_secs(2)).await {
                Ok(info) => peers.push(info),
                Err(e) => tracing::debug!("peer {addr}: {e}"),
            }
        }
        if let Ok(heard) = self.heard.lock() {
            peers.extend(heard.values().filter(|(_, at)| at.elapsed() < HEARD_FRESH).map(|(p, _)| p.clone()));
        }
        let mut seen = BTreeSet::new();
        peers.retain(|p| seen.insert(p.node_id));
        // An existing cluster: join it.
        if let Some(existing) = peers.iter().find(|p| p.initialized) {
            let req = JoinRequest { node_id: s.node_id, raft_addr: s.raft_addr.clone(), voter: s.voter };
            self.client
                .post::<_, bool>(&existing.raft_addr, "/raft/join", &req, FORWARD_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(true);
        }
        let Some(members) = bootstrap_members(s.node_id, s.bootstrap_expect, &peers) else {
            return Ok(false);
        };
        tracing::info!(servers = ?members.values().map(|n| n.addr.clone()).collect::<Vec<_>>(), "bootstrapping the cluster");
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(true),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Removes this server from the voters (a graceful leave), through the leader.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let metrics = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        if voters.len() <= 1 || !voters.contains(&self.settings.node_id) {
            return Ok(());
        }
        // Through the leader, wherever it is.
        self.remove_peer_via_leader(self.settings.node_id).await
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }

    async fn write_via_cluster(&self, cmd: Command) -> Result<Written, ClusterError> {
        let leader = match self.propose(cmd.clone()).await? {
            Ok(w) => return Ok(w),
            Err(Some(leader)) => leader,
            Err(None) => {
                // Election in progress: wait briefly for a leader rather than failing.
                let mut m = self.raft.metrics();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    if m.borrow().current_leader.is_some() {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, m.changed()).await.is_err() {
                        return Err(ClusterError::NoLeader("no leader elected within 5s".into()));
                    }
                }
                match self.propose(cmd.clone()).await? {
                    Ok(w) => return Ok(w),
                    Err(Some(leader)) => leader,
                    Err(None) => return Err(ClusterError::NoLeader("no leader known".into())),
                }
            }
        };
        let request = ForwardedWrite { command: cmd };
        let forward = self.client.post::<_, ForwardedWriteResult>(&leader, "/raft/write", &request, FORWARD_TIMEOUT);
        // Cut off from the leader, this node's election timer fires and it drops the leader
        // (a request on a dead connection would otherwise wait for its timeout): say so then.
        let lost = async {
            let mut m = self.raft.metrics();
            while self.leader_addr().as_deref() == Some(leader.as_str()) {
                if m.changed().await.is_err() {
                    break;
                }
            }
        };
        let res = tokio::select! {
            r = forward => r.map_err(|e| ClusterError::Forward { leader: leader.clone(), reason: e.to_string() })?,
            _ = lost => return Err(ClusterError::NoLeader(format!(
                "this server lost contact with the leader {leader} while forwarding the write (it may still be applied)"
            ))),
        };
        // Read-your-writes on this agent: wait until the entry is applied here too.
        if tokio::time::timeout(FORWARD_TIMEOUT, self.catalog.wait_applied(res.index)).await.is_err() {
            return Err(ClusterError::Forward {
                leader,
                reason: "write committed but not replicated here in time".into(),
            });
        }
        Ok(Written { index: res.index, outcome: res.outcome })
    }

    async fn linearize_via_cluster(&self) -> Result<(), ClusterError> {
        let index = match self.local_read_index().await {
            Ok(i) => i,
            Err(ClusterError::NoLeader(_)) => {
                let leader = self.leader_addr().ok_or_else(|| ClusterError::NoLeader("no leader known".into()))?;
                self.client
                    .post::<_, u64>(&leader, "/raft/read-index", &(), FORWARD_TIMEOUT)
                    .await
                    .map_err(|e| ClusterError::Forward { leader, reason: e.to_string() })?
            }
            Err(e) => return Err(e),
        };
        self.catalog.wait_applied(index).await;
        Ok(())
    }
}

impl Cluster for RaftNode {
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<Written, ClusterError>> {
        Box::pin(self.write_via_cluster(cmd))
    }

    fn linearize(&self) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(self.linearize_via_cluster())
    }

    fn leader_status(&self) -> LeaderStatus {
        let m = self.raft.metrics().borrow().clone();
        let leader_addr =
            m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        let last_contact_ms = if m.state == ServerState::Leader {
            0
        } else {
            self.last_leader_contact.lock().ok().and_then(|t| t.map(|t| t.elapsed().as_millis() as u64)).unwrap_or(0)
        };
        LeaderStatus { known_leader: m.current_leader.is_some(), last_contact_ms, leader_addr }
    }

    fn peers(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone())).collect()
    }

    fn raft_peers(&self) -> Vec<catalog::RaftPeer> {
        self.configuration()
    }

    fn remove_peer(&self, id: u64) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(self.remove_peer_via_leader(id))
    }
}

/// Who bootstraps the cluster, and with whom: once at least `expect` servers (voters) are
/// known, the one with the lowest address among those that expect a count bootstraps all
/// known servers, so exactly one initial membership is ever proposed. `None` when this node
/// should not bootstrap (yet).
fn bootstrap_members(me: NodeId, expect: usize, peers: &[PeerInfo]) -> Option<BTreeMap<NodeId, Node>> {
    let mut voters: Vec<&PeerInfo> = peers.iter().filter(|p| p.voter).collect();
    if expect == 0 || voters.len() < expect {
        return None;
    }
    voters.sort_by(|a, b| a.raft_addr.cmp(&b.raft_addr));
    let leader = voters.iter().find(|p| p.bootstrap_expect > 0)?;
    if leader.node_id != me {
        return None;
    }
    Some(voters.iter().map(|p| (p.node_id, Node::new(p.raft_addr.clone()))).collect())
}

#[cfg(test)]
mod bootstrap_tests {
    use super::*;

    fn peer(id: NodeId, addr: &str, voter: bool, expect: usize) -> PeerInfo {
        PeerInfo {
            node_id: id,
            raft_addr: addr.into(),
            initialized: false,
            leader_addr: None,
            voter,
            bootstrap_expect: expect,
            gossip_addr: None,
        }
    }

    #[test]
    fn only_the_lowest_expecting_server_bootstraps_once_enough_are_known() {
        // Seed 003: node1 expects 3, node2 and node3 only join it, node4 is a client.
        let peers = [
            peer(1, "10.0.0.4:8300", true, 3),
            peer(2, "10.0.0.2:8300", true, 0),
            peer(3, "10.0.0.3:8300", true, 0),
            peer(4, "10.0.0.1:8300", false, 0),
        ];
        let members = bootstrap_members(1, 3, &peers).expect("node1 bootstraps");
        assert_eq!(members.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3], "the client is not a voter");
        assert_eq!(bootstrap_members(2, 0, &peers), None, "a server that only joins never bootstraps");
        assert_eq!(bootstrap_members(1, 3, &peers[..2]), None, "two servers known: wait");
        // Three servers that all expect 3: only the lowest address bootstraps.
        let all =
            [peer(1, "10.0.0.3:8300", true, 3), peer(2, "10.0.0.1:8300", true, 3), peer(3, "10.0.0.2:8300", true, 3)];
        assert_eq!(bootstrap_members(1, 3, &all), None);
        assert_eq!(bootstrap_members(2, 3, &all).map(|m| m.len()), Some(3));
    }
}
