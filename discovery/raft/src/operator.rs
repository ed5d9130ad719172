//! Raft operations (`wharf operator raft list-peers | remove-peer`, a server's leave): the
//! configuration as this node sees it, and removing a server, done by the leader wherever
//! it is asked.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;

use crate::node::RaftNode;
use crate::types::NodeId;
use catalog::{ClusterError, RaftPeer};

impl RaftNode {
    /// Every server and client agent in the Raft configuration.
    pub fn configuration(&self) -> Vec<RaftPeer> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| RaftPeer {
                id: *id,
                address: n.addr.clone(),
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
            })
            .collect()
    }

    /// Removes `id` from the configuration (first as a voter, then as a node). Asked of a
    /// follower, the leader does it.
    pub async fn remove_peer_via_leader(&self, id: NodeId) -> Result<(), ClusterError> {
        if self.is_leader() {
            return self.remove_peer_here(id).await;
        }
        let leader = self.leader_addr().ok_or_else(|| ClusterError::NoLeader("no leader known".into()))?;
        self.client
            .post::<_, bool>(&leader, "/raft/remove-peer", &id, Duration::from_secs(30))
            .await
            .map_err(|e| ClusterError::Forward { leader, reason: e.to_string() })?;
        Ok(())
    }

    /// On the leader: the removal itself.
    pub async fn remove_peer_here(&self, id: NodeId) -> Result<(), ClusterError> {
        if !self.is_leader() {
            return Err(ClusterError::NoLeader("this server is not the leader".into()));
        }
        let known = self.configuration();
        let Some(peer) = known.iter().find(|p| p.id == id) else {
            return Err(ClusterError::Raft(format!("no server with Raft ID {id} in the configuration")));
        };
        let ids = BTreeSet::from([id]);
        if peer.voter {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        // A voter removed above is a learner now; a learner leaves the node set.
        if self.is_leader() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(ids), false)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        tracing::info!(id, address = %peer.address, "removed from the Raft configuration");
        Ok(())
    }
}
