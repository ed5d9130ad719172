//! The messages servers exchange on the Raft port, besides openraft's own RPCs: forwarded
//! writes, joins and peer introductions, and the header carrying the cluster key.

use serde::{Deserialize, Serialize};

use catalog::command::{Command, Outcome};

use crate::types::NodeId;

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
    /// Where its gossip (membership) is received, so a join address naming a Raft port
    /// also finds the gossip pool.
    #[serde(default)]
    pub gossip_addr: Option<String>,
}
