//! Group commit: the loop that gathers concurrent writes into log entries and proposes
//! them to openraft, answering each writer with its own outcome.

use std::sync::Arc;

use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::types::{Node, NodeId, Raft};
use catalog::command::{Command, Outcome};
use catalog::{ClusterError, Written};

/// A write waiting for the group-commit loop, with where to send its result.
pub(crate) type Proposal = (Command, oneshot::Sender<ProposeResult>);
/// `Ok(Err(leader))`: this node does not lead; `leader` is where to forward.
pub(crate) type ProposeResult = Result<Result<Written, Option<String>>, ClusterError>;

/// Where openraft says the leader is.
pub(crate) fn forward_target(e: &ForwardToLeader<NodeId, Node>) -> Option<String> {
    e.leader_node.as_ref().map(|n| n.addr.clone())
}

/// Most commands committed in one log entry.
const MAX_BATCH: usize = 512;
/// Entries proposed and not yet committed, at most.
const MAX_IN_FLIGHT: usize = 4;
/// Most bytes (estimated) committed in one log entry: one entry must travel in one append
/// within openraft's append timeout (one heartbeat interval).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

async fn propose_once(raft: &Raft, cmd: Command) -> ProposeResult {
    match raft.client_write(cmd).await {
        Ok(resp) => Ok(Ok(Written { index: resp.log_id.index, outcome: resp.data })),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Ok(Err(forward_target(&f))),
        Err(RaftError::APIError(e)) => Err(ClusterError::Raft(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(ClusterError::Raft(e.to_string())),
    }
}

/// Group commit: commands that arrive while earlier entries are being committed are
/// gathered into the next entry, so many writers share one fsync; up to MAX_IN_FLIGHT
/// entries are in flight at once (openraft pipelines their appends). Concurrent writers
/// have no order between them, so entries may commit in any order; one writer waits for
/// its answer before its next write.
pub(crate) async fn group_commit(raft: Raft, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a slot first: commands that arrive meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut bytes = first.0.approx_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.0.approx_bytes();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit_batch(&raft, batch).await;
            drop(permit);
        });
    }
}

/// Proposes one batch as one log entry and answers each of its writers.
async fn commit_batch(raft: &Raft, batch: Vec<Proposal>) {
    if batch.len() == 1 {
        for (cmd, reply) in batch {
            let _ = reply.send(propose_once(raft, cmd).await);
        }
        return;
    }
    let (cmds, replies): (Vec<Command>, Vec<oneshot::Sender<ProposeResult>>) = batch.into_iter().unzip();
    let n = cmds.len();
    match propose_once(raft, Command::Batch(cmds)).await {
        Ok(Ok(Written { index, outcome: Outcome::Batch(outcomes) })) if outcomes.len() == n => {
            for (outcome, reply) in outcomes.into_iter().zip(replies) {
                let _ = reply.send(Ok(Ok(Written { index, outcome })));
            }
        }
        Ok(Ok(other)) => {
            for reply in replies {
                let _ = reply.send(Err(ClusterError::Raft(format!("batch of {n} answered {:?}", other.outcome))));
            }
        }
        Ok(Err(leader)) => {
            for reply in replies {
                let _ = reply.send(Ok(Err(leader.clone())));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(ClusterError::Raft(msg.clone())));
            }
        }
    }
}
