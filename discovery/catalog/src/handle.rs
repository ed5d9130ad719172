//! The seam between the catalog's readers and its replicated writer.
//!
//! Readers (API, later DNS, proxy, templates) hold a [`Catalog`]: the latest committed
//! [`CatalogState`] published by the state machine on a `watch` channel. Taking a snapshot
//! is one `Arc` clone; waiting for change is `changed().await`. Writers go through the
//! [`Cluster`] trait, which the Raft node implements (and forwards to the leader).

use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;
use tokio::sync::watch;

use crate::command::{Command, Outcome};
use crate::state::CatalogState;

/// A boxed future that can move between threads, as the [`Cluster`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Read handle on the committed catalog.
#[derive(Clone)]
pub struct Catalog {
    rx: watch::Receiver<Arc<CatalogState>>,
}

impl Catalog {
    pub fn new(rx: watch::Receiver<Arc<CatalogState>>) -> Self {
        Catalog { rx }
    }

    /// The latest committed state.
    pub fn snapshot(&self) -> Arc<CatalogState> {
        self.rx.borrow().clone()
    }

    /// A receiver that wakes on every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CatalogState>> {
        self.rx.clone()
    }

    /// Waits until the local state has applied at least `index`.
    pub async fn wait_applied(&self, index: u64) -> Arc<CatalogState> {
        let mut rx = self.rx.clone();
        loop {
            let snap = rx.borrow_and_update().clone();
            if snap.last_index() >= index {
                return snap;
            }
            if rx.changed().await.is_err() {
                return snap;
            }
        }
    }
}

/// A committed write: its Raft log index and what applying it did.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    pub index: u64,
    pub outcome: Outcome,
}

/// What a reader needs to fill Consul's leader headers.
#[derive(Clone, Debug, Default)]
pub struct LeaderStatus {
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-LastContact`, in milliseconds (0 on the leader).
    pub last_contact_ms: u64,
    /// The leader's Raft address (`/v1/status/leader`).
    pub leader_addr: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known right now (election in progress, quorum lost).
    #[error("No cluster leader: {0}; retry once a leader is elected")]
    NoLeader(String),
    /// Forwarding to the leader failed.
    #[error("Forwarding to leader {leader} failed: {reason}")]
    Forward { leader: String, reason: String },
    /// The local Raft node failed (storage error, shut down).
    #[error("Raft error: {0}")]
    Raft(String),
}

/// The replicated write side. The API never touches Raft directly.
pub trait Cluster: Send + Sync + 'static {
    /// Proposes `cmd`; returns once it is committed and applied locally.
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<Written, ClusterError>>;
    /// Returns once a read of the local state is linearizable (`?consistent`).
    fn linearize(&self) -> BoxFuture<'_, Result<(), ClusterError>>;
    fn leader_status(&self) -> LeaderStatus;
    /// Raft addresses of the voting members (`/v1/status/peers`).
    fn peers(&self) -> Vec<String>;
    /// The Raft configuration (`/v1/operator/raft/configuration`).
    fn raft_peers(&self) -> Vec<RaftPeer>;
    /// Removes a server from the Raft configuration (`/v1/operator/raft/peer`).
    fn remove_peer(&self, id: u64) -> BoxFuture<'_, Result<(), ClusterError>>;
}

/// A member of the Raft configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftPeer {
    pub id: u64,
    pub address: String,
    pub voter: bool,
    pub leader: bool,
}
